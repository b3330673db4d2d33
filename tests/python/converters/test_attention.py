"""scaled_dot_product_attention (masks, causal, scale) against eager."""

import math

import pytest
import torch
import torch.nn.functional as F

import ember
from fallback import check_fallback
from harness import DEVICE, DTYPES_FLOAT, assert_close, check_op, dynamic as _dyn

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


def _repeat_kv(x, n_rep):
    """HF's repeat_kv (Llama, Mistral, Qwen2): each key/value head n_rep times in a row."""
    b, hkv, s, e = x.shape
    return x[:, :, None, :, :].expand(b, hkv, n_rep, s, e).reshape(b, hkv * n_rep, s, e)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _GroupedQueryAttention(torch.nn.Module):
    """A decoder's attention written the HF way: q/k/v projections to 4 query and 2 key/value
    heads, (optionally) rotary embeddings on q and k, the key/value heads repeated for the query
    heads (`repeat`: "repeat_kv", "repeat_interleave", or "tile", torch's other order, which is
    not grouped-query attention) and F.scaled_dot_product_attention."""

    def __init__(self, repeat="repeat_kv", rope=True, causal=True, d=32, heads=4, kv_heads=2):
        super().__init__()
        self.e = d // heads
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, kv_heads * self.e)
        self.v = torch.nn.Linear(d, kv_heads * self.e)
        self.o = torch.nn.Linear(d, d, bias=False)
        self.heads, self.kv_heads, self.repeat, self.rope, self.causal = (
            heads, kv_heads, repeat, rope, causal)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, self.e, 2) / self.e))

    def forward(self, x, mask=None):
        b, n, d = x.shape
        # HF's view(*input_shape, -1, head_dim): on a dynamic batch the head counts are only
        # constants when the engine cancels the batch out of the inferred dim.
        q = self.q(x).view(b, n, -1, self.e).transpose(1, 2)
        k = self.k(x).view(b, n, -1, self.e).transpose(1, 2)
        v = self.v(x).view(b, n, -1, self.e).transpose(1, 2)
        if self.rope:
            positions = torch.arange(n, device=x.device).float()
            angles = (self.inv_freq.float()[:, None] @ positions[None, :]).transpose(0, 1)
            angles = torch.cat((angles, angles), dim=-1)
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        n_rep = self.heads // self.kv_heads
        if self.repeat == "repeat_kv":
            k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
        elif self.repeat == "repeat_interleave":
            k, v = (torch.repeat_interleave(t, n_rep, dim=1) for t in (k, v))
        else:
            k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           is_causal=self.causal and mask is None)
        return self.o(o.transpose(1, 2).reshape(b, n, d))


def _engine_layers(compiled) -> list[dict]:
    import json
    layers = []
    for attr in sorted(n for n in dir(compiled) if n.startswith("_ember_engine_")):
        layers += json.loads(getattr(compiled, attr).inspect())["layers"]
    return layers


def _unrepeated(compiled) -> int:
    """How many Attention layers the build log says read un-repeated key/value heads."""
    import re
    total = 0
    for e in compiled.ember_report.engines:
        for line in e["build_log"]:
            m = re.search(r", (\d+) read grouped key/value heads", line)
            total += int(m.group(1)) if m and line.startswith("simplify_attention:") else 0
    return total


def _check_dynamic_batch_and_seq(module, dtype):
    """`module` on [b, n, 32] inputs, b in [1, 4] and n in [2, 32], compiled once: zero
    fallback, and matches eager at four shapes of the range. The export uses Dim.DYNAMIC:
    torch.export rejects a bounded Dim on the sequence of repeat_kv's reshape (its constraint
    solver cannot prove the guard min(8*n, 16*n) == 8*n it generates there), so the ranges come
    from ember.Input instead."""
    dyn = torch.export.Dim.DYNAMIC
    ep = torch.export.export(module.eval(), (torch.randn(2, 9, 32, dtype=dtype),),
                             dynamic_shapes=({0: dyn, 1: dyn},))
    spec = ember.Input(min_shape=(1, 2, 32), opt_shape=(2, 9, 32), max_shape=(4, 32, 32),
                       dtype=dtype)
    report = ember.dynamo.CompilationReport()
    compiled = ember.dynamo.compile(ep, [spec], device=DEVICE, min_block_size=1,
                                    require_full_compilation=True, report=report)
    assert not report.fallback and len(report.engines) == 1, str(report)
    for b, n in [(2, 9), (3, 17), (1, 2), (4, 32)]:
        x = torch.randn(b, n, 32, dtype=dtype, device=DEVICE)
        with torch.no_grad():
            assert_close(compiled(x), module.to(DEVICE)(x), where=f"b={b}, n={n}")
    return compiled


@pytest.mark.parametrize("dtype,repeat", [(dtype, "repeat_kv") for dtype in DTYPES_FLOAT] +
                         [(torch.float32, "repeat_interleave")])
def test_hf_grouped_query_attention_reads_unrepeated_heads(dtype, repeat):
    """The copies of repeat_kv (and repeat_interleave, which exports to the same ops) disappear:
    the Attention layer reads the 2 key/value heads itself, with is_causal, with a bool and an
    additive mask, with and without rotary embeddings (without, q is a plain transpose and the
    layer also goes seq-major; with, v and the output still do), and on dynamic batch and sequence lengths (symbolic DimExprs in
    the rewrite)."""
    x = torch.randn(2, 9, 32, dtype=dtype)
    bool_mask = torch.rand(2, 1, 9, 9) > 0.3
    bool_mask[:, :, :, 0] = True  # every query keeps a key: eager's f16/bf16 NaN rows aside
    add_mask = torch.randn(2, 1, 9, 9, dtype=dtype)
    cases = [(_GroupedQueryAttention(repeat), [x]),
             (_GroupedQueryAttention(repeat, rope=False), [x]),
             (_GroupedQueryAttention(repeat), [x, bool_mask]),
             (_GroupedQueryAttention(repeat, rope=False), [x, add_mask]),
             (_GroupedQueryAttention(repeat), None),  # dynamic batch and sequence
             (_GroupedQueryAttention(repeat, rope=False), None)]
    for module, inputs in cases:
        module = module.to(dtype)
        if inputs is None:
            compiled = _check_dynamic_batch_and_seq(module, dtype)
        else:
            compiled = check_op(module, inputs)  # zero fallback, matches eager
        layers = _engine_layers(compiled)
        kinds = [layer["type"] for layer in layers]
        assert "Select" not in kinds, kinds
        attention = [layer for layer in layers if layer["type"] == "Attention"]
        assert len(attention) == 1, kinds
        assert _unrepeated(compiled) == 1, compiled.ember_report.engines[0]["build_log"]
        params = attention[0]["params"]
        # Without RoPE every transpose goes (one layout flag). With it, q and k are computed
        # after their transposes and stay head-major; v and the output are read and written in
        # place (seq_major_operands kV | kOut = 12).
        assert params["seq_major"] == (not module.rope), attention[0]
        assert params["seq_major_operands"] == (12 if module.rope else 0), attention[0]
        for i, kv_bit in ((1, 2), (2, 4)):
            sm = params["seq_major"] or params["seq_major_operands"] & kv_bit
            shape = attention[0]["inputs"][i]["shape"].strip("[]").split(", ")
            assert shape[2 if sm else 1] == "2", attention[0]


def test_repeated_heads_in_tile_order_stay():
    """Tensor.repeat puts head h on key/value head h % 2, not h // 2: that is not what the
    layer's grouped-query heads compute, so the copies stay (and the output still matches)."""
    compiled = check_op(_GroupedQueryAttention("tile"), [torch.randn(2, 9, 32)])
    assert _unrepeated(compiled) == 0
    attention = [layer for layer in _engine_layers(compiled) if layer["type"] == "Attention"]
    assert attention[0]["inputs"][1]["shape"].startswith("[2, 4,"), attention[0]
