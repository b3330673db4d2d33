"""scaled_dot_product_attention (masks, causal, scale) against eager."""

import math

import pytest
import torch
import torch.nn.functional as F

from fallback import check_fallback
from harness import DEVICE, DTYPES_FLOAT, check_op, dynamic as _dyn

BATCH = torch.export.Dim("batch", min=2, max=8)
SEQ = torch.export.Dim("seq", min=2, max=32)


def _qkv(b=2, h=3, lq=5, lk=6, e=8, ev=8, dtype=torch.float32):
    return [torch.randn(b, h, lq, e, dtype=dtype), torch.randn(b, h, lk, e, dtype=dtype),
            torch.randn(b, h, lk, ev, dtype=dtype)]


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_sdpa(dtype):
    check_op(F.scaled_dot_product_attention, _qkv(dtype=dtype),
             expect_ops={"aten::scaled_dot_product_attention"})


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_sdpa_causal(dtype):
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
             _qkv(lq=6, lk=6, dtype=dtype))
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
             _qkv(lq=4, lk=7, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_sdpa_bool_mask(dtype):
    mask = torch.rand(5, 6) > 0.3
    # A fully masked row gives zeros (PyTorch's CPU and math kernels; its CUDA f16/bf16 kernels
    # give other values, so that row is compared on the CPU only).
    if DEVICE == "cpu":
        mask[2] = False
    check_op(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
             _qkv(dtype=dtype) + [mask])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_sdpa_float_mask(dtype):
    mask = torch.randn(2, 1, 5, 6, dtype=dtype)
    mask[0, 0, 1] = float("-inf")
    check_op(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
             _qkv(dtype=dtype) + [mask])


def test_sdpa_scale_and_value_dim():
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3),
             _qkv(e=4, ev=7))
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(2)),
             [torch.randn(5, 4), torch.randn(6, 4), torch.randn(6, 3)])


def test_sdpa_dynamic():
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
             _qkv(lq=6, lk=6),
             dynamic_shapes=_dyn({0: BATCH, 2: SEQ}, {0: BATCH, 2: SEQ}, {0: BATCH, 2: SEQ}),
             extra_inputs=[_qkv(b=5, lq=17, lk=17), _qkv(b=2, lq=2, lk=2)])


def test_sdpa_dynamic_bool_mask():
    check_op(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
             _qkv(lq=6, lk=6) + [torch.rand(6, 6) > 0.3],
             dynamic_shapes=_dyn({2: SEQ}, {2: SEQ}, {2: SEQ}, {0: SEQ, 1: SEQ}),
             extra_inputs=[_qkv(lq=11, lk=11) + [torch.rand(11, 11) > 0.3]])


@pytest.mark.skipif(DEVICE == "cuda", reason="a CPU-only op: eager CUDA cannot run it")
def test_flash_attention_for_cpu():
    """The op torch lowers SDPA to on CPU, with its logsumexp output."""
    def fn(q, k, v):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    check_op(fn, _qkv(lq=6, lk=6))


def test_sdpa_dropout_falls_back():
    check_fallback(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5) * 0 + 1,
                   _qkv(), "scaled_dot_product_attention")


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_sdpa_grouped_query(dtype):
    q = torch.randn(2, 6, 5, 8, dtype=dtype)
    k = torch.randn(2, 2, 7, 8, dtype=dtype)
    v = torch.randn(2, 2, 7, 4, dtype=dtype)
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
             [q, k, v])
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                            enable_gqa=True), [q, k, v])


class _SelfAttention(torch.nn.Module):
    """The transformer layout: [B, L, D] -> heads [B, L, H, E] -> transpose(1, 2) -> SDPA ->
    transpose back -> [B, L, D] (what HF BERT and GPT-2 do)."""

    def __init__(self, d=32, heads=4, causal=False):
        super().__init__()
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.heads, self.causal = heads, causal

    def forward(self, x, mask=None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return o.transpose(1, 2).reshape(b, n, d)


def _folded(compiled) -> list[str]:
    """The build-log lines saying the transposes folded and q, k, v come from the packed
    projection in place."""
    return [line for e in compiled.ember_report.engines for line in e["build_log"]
            if line.startswith("simplify_attention:") and ", 1 attention layers read" in line
            and ", 1 read q, k and v from one packed projection" in line]


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_sdpa_in_model_layout_reads_heads_in_place(dtype):
    """The fused layer reads the heads straight from the QKV projection: the three slices and
    four transposes fold away."""
    x = torch.randn(2, 9, 32, dtype=dtype)
    mask = torch.rand(2, 1, 9, 9) > 0.2
    compiled = check_op(_SelfAttention().to(dtype), [x, mask])
    assert _folded(compiled), compiled.ember_report.engines[0]["build_log"]
    compiled = check_op(_SelfAttention(causal=True).to(dtype), [x],
                        dynamic_shapes=({1: SEQ},), extra_inputs=[[torch.randn(2, 17, 32, dtype=dtype)]])
    assert _folded(compiled), compiled.ember_report.engines[0]["build_log"]


class _SeparateProjections(torch.nn.Module):
    """BERT's layout: query, key and value are three linears of one input."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))
        self.heads = heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v)
        return o.transpose(1, 2).reshape(b, n, d)


def test_sdpa_three_projections_merge_into_one():
    """The three projections become one matmul whose output the attention reads in place."""
    compiled = check_op(_SeparateProjections(), [torch.randn(2, 9, 32)])
    logs = [line for e in compiled.ember_report.engines for line in e["build_log"]]
    assert any("(1 of them merged from three)" in line for line in logs), logs
