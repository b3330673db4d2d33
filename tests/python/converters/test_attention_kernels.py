"""The CUDA attention kernels' aten ops (_scaled_dot_product_flash_attention,
_efficient_attention, _cudnn_attention), which programs exported or compiled on a GPU contain.

PyTorch has no CPU kernels for them, so these tests export with fake tensors (meta kernels),
compile on the CPU back end and compare output 0 with scaled_dot_product_attention in eager.
"""

import pytest
import torch
import torch.nn.functional as F

import ember
from harness import DTYPES_FLOAT, _Wrap, assert_close

aten = torch.ops.aten


def _qkv(dtype, b=1, h=2, l=4, s=5, e=8):
    return [torch.randn(b, h, l, e, dtype=dtype), torch.randn(b, h, s, e, dtype=dtype),
            torch.randn(b, h, s, e, dtype=dtype)]


def _compile(fn, inputs, dynamic_shapes=None, require_full=True):
    ep = torch.export.export(_Wrap(fn).eval(), tuple(inputs), dynamic_shapes=dynamic_shapes)
    report = ember.dynamo.CompilationReport()
    compiled = ember.dynamo.compile(ep, list(inputs), device="cpu", min_block_size=1,
                                    require_full_compilation=require_full, report=report)
    return compiled, report


def _reference(q, k, v, mask=None, is_causal=False, scale=None):
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                         None if mask is None else mask.float(),
                                         is_causal=is_causal, scale=scale)
    return out.to(q.dtype)


def _check(fn, ref, inputs, **kw):
    compiled, report = _compile(fn, inputs, **kw)
    assert report.engines and not report.fallback, str(report)
    with torch.no_grad():
        assert_close(compiled(*inputs), ref(*inputs))
    return compiled


@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_flash_attention(dtype, is_causal, scale):
    _check(lambda q, k, v: aten._scaled_dot_product_flash_attention(
               q, k, v, 0.0, is_causal, False, scale=scale)[0],
           lambda q, k, v: _reference(q, k, v, is_causal=is_causal, scale=scale), _qkv(dtype, s=4))


@pytest.mark.parametrize("is_causal,with_bias", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_efficient_attention(dtype, is_causal, with_bias):
    inputs = _qkv(dtype, s=4 if is_causal else 5)
    if with_bias:
        inputs.append(torch.randn(1, 2, 4, 5, dtype=dtype))
        fn = lambda q, k, v, m: aten._scaled_dot_product_efficient_attention(q, k, v, m, False)[0]
        ref = lambda q, k, v, m: _reference(q, k, v, mask=m)
    else:
        fn = lambda q, k, v: aten._scaled_dot_product_efficient_attention(
            q, k, v, None, False, 0.0, is_causal)[0]
        ref = lambda q, k, v: _reference(q, k, v, is_causal=is_causal)
    _check(fn, ref, inputs)


@pytest.mark.parametrize("compute_log_sumexp", [False, True])
@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_cudnn_attention(dtype, compute_log_sumexp):
    _check(lambda q, k, v: aten._scaled_dot_product_cudnn_attention(
               q, k, v, None, compute_log_sumexp, scale=0.25)[0],
           lambda q, k, v: _reference(q, k, v, scale=0.25), _qkv(dtype))


def test_efficient_attention_dynamic_seq():
    seq = torch.export.Dim("seq", min=2, max=16)
    compiled = _check(lambda q, k, v: aten._scaled_dot_product_efficient_attention(
                          q, k, v, None, False)[0],
                      lambda q, k, v: _reference(q, k, v), _qkv(torch.float32, l=4, s=4),
                      dynamic_shapes=(({2: seq}, {2: seq}, {2: seq}),))
    for n in (2, 11, 16):
        q, k, v = _qkv(torch.float32, l=n, s=n)
        assert_close(compiled(q, k, v), _reference(q, k, v))


def test_flash_attention_logsumexp_used_falls_back():
    # logsumexp (and the kernels' bookkeeping) are not converted: a node that uses them stays
    # in PyTorch, with the reason in the report.
    def fn(q, k, v):
        out = aten._scaled_dot_product_flash_attention(q, k, v)
        return out[0] * 2, out[1]
    _, report = _compile(fn, _qkv(torch.float32, s=4), require_full=False)
    assert any("flash_attention" in str(e) and "only output 0" in str(e) for e in report.fallback), (
        str(report))
