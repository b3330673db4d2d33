"""Batch, instance, layer and group norm against eager (inference)."""

import pytest
import torch
from torch import nn

import ember
from harness import DTYPES_FLOAT, check_op

BATCH = torch.export.Dim("batch", min=2, max=8)


def _randomize(m: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(torch.randn_like(m.running_mean))
            m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return m.eval()


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_batch_norm(nd, dtype):
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
    m = _randomize(cls(4)).to(dtype)
    x = torch.randn(2, 4, *([5] * nd), dtype=dtype)
    check_op(m, [x], expect_ops={"aten::_native_batch_norm_legit_no_training"})


def test_batch_norm_1d_flat():
    check_op(_randomize(nn.BatchNorm1d(6)), [torch.randn(3, 6)])


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_no_affine(affine):
    check_op(_randomize(nn.BatchNorm2d(3, affine=affine, eps=1e-3)), [torch.randn(2, 3, 4, 4)])


def test_batch_norm_dynamic_batch():
    m = _randomize(nn.BatchNorm2d(3))
    check_op(m, [torch.randn(2, 3, 4, 4)], dynamic_shapes=({0: BATCH},),
             extra_inputs=[[torch.randn(6, 3, 4, 4)]])


def test_batch_norm_functional_tensors():
    """Statistics and affine parameters that are graph inputs, not constants."""
    def fn(x, mean, var, w, b):
        return torch.nn.functional.batch_norm(x, mean, var, w, b, training=False, eps=1e-4)
    check_op(fn, [torch.randn(2, 3, 5), torch.randn(3), torch.rand(3) + 0.5, torch.randn(3),
                  torch.randn(3)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm(dtype, affine):
    m = _randomize(nn.InstanceNorm2d(3, affine=affine)).to(dtype)
    check_op(m, [torch.randn(2, 3, 6, 5, dtype=dtype)])


def test_instance_norm_1d_dynamic():
    m = _randomize(nn.InstanceNorm1d(4, affine=True))
    check_op(m, [torch.randn(2, 4, 7)], dynamic_shapes=({0: BATCH},),
             extra_inputs=[[torch.randn(5, 4, 7)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("shape,normalized", [((2, 5, 8), (8,)), ((2, 3, 4, 6), (4, 6)),
                                              ((4, 8), (4, 8))])
def test_layer_norm(dtype, shape, normalized):
    m = _randomize(nn.LayerNorm(normalized)).to(dtype)
    check_op(m, [torch.randn(*shape, dtype=dtype)])


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_no_affine(affine):
    m = _randomize(nn.LayerNorm(8, elementwise_affine=affine, bias=False, eps=1e-3))
    check_op(m, [torch.randn(2, 3, 8)])


def test_layer_norm_dynamic():
    seq = torch.export.Dim("seq", min=2, max=32)
    m = _randomize(nn.LayerNorm(8))
    check_op(m, [torch.randn(2, 5, 8)], dynamic_shapes=({0: BATCH, 1: seq},),
             extra_inputs=[[torch.randn(3, 17, 8)]])


def test_native_layer_norm_stats():
    """native_layer_norm's mean and rstd outputs, when the program returns them."""
    def fn(x, w, b):
        return torch.ops.aten.native_layer_norm(x, [6], w, b, 1e-5)
    check_op(fn, [torch.randn(2, 3, 6), torch.randn(6), torch.randn(6)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("groups,channels", [(1, 4), (2, 6), (6, 6)])
def test_group_norm(dtype, groups, channels):
    m = _randomize(nn.GroupNorm(groups, channels)).to(dtype)
    check_op(m, [torch.randn(2, channels, 5, 3, dtype=dtype)])


def test_group_norm_no_affine_dynamic():
    m = nn.GroupNorm(2, 4, affine=False).eval()
    check_op(m, [torch.randn(2, 4, 6)], dynamic_shapes=({0: BATCH},),
             extra_inputs=[[torch.randn(7, 4, 6)]])


def test_native_group_norm_stats():
    def fn(x, w, b):
        return torch.ops.aten.native_group_norm(x, w, b, 2, 6, 12, 3, 1e-5)
    check_op(fn, [torch.randn(2, 6, 3, 4), torch.randn(6), torch.randn(6)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_batch_norm_no_stats(dtype):
    """_native_batch_norm_legit.no_stats: batch statistics (what instance norm lowers to), with
    its per-channel mean and rstd outputs."""
    def fn(x, w, b):
        return torch.ops.aten._native_batch_norm_legit.no_stats(x, w, b, True, 0.1, 1e-5)
    check_op(fn, [torch.randn(2, 3, 4, 5, dtype=dtype), torch.randn(3, dtype=dtype),
                  torch.randn(3, dtype=dtype)])


def test_native_batch_norm_eval():
    def fn(x, w, b, mean, var):
        return torch.ops.aten.native_batch_norm(x, w, b, mean, var, False, 0.1, 1e-5)[0]
    check_op(fn, [torch.randn(2, 3, 4), torch.randn(3), torch.randn(3), torch.randn(3),
                  torch.rand(3) + 0.5])


def test_batch_norm_training_falls_back():
    """Training-mode batch norm (running-stat updates) is left to PyTorch."""
    m = _randomize(nn.BatchNorm2d(3)).train()
    x = torch.randn(2, 3, 4, 4)
    ep = torch.export.export(m, (x,))
    report = ember.dynamo.CompilationReport()
    ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1, report=report)
    assert report.fallback, f"training batch norm should fall back:\n{report}"


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("normalized,eps,affine", [((8,), None, True), ((4, 8), 1e-6, True),
                                                   ((8,), 1e-5, False)])
def test_rms_norm(dtype, normalized, eps, affine):
    m = _randomize(nn.RMSNorm(normalized, eps=eps, elementwise_affine=affine)).to(dtype)
    check_op(m, [torch.randn(2, 3, 4, 8, dtype=dtype)], expect_ops={"aten::rms_norm"})


def test_rms_norm_dynamic():
    seq = torch.export.Dim("seq", min=2, max=32)
    m = _randomize(nn.RMSNorm(8))
    check_op(m, [torch.randn(2, 5, 8)], dynamic_shapes=({0: BATCH, 1: seq},),
             extra_inputs=[[torch.randn(3, 17, 8)]])
