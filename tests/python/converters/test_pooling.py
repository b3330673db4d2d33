"""Max, average and adaptive pooling against eager."""

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from fallback import check_fallback
from harness import DEVICE, DTYPES_FLOAT, check_op

BATCH = torch.export.Dim("batch", min=2, max=8)



def _x(nd, dtype=torch.float32, batch=2, channels=3, size=9):
    return torch.randn(batch, channels, *([size] * nd), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool(nd, dtype):
    cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[nd]
    check_op(cls(3, stride=2, padding=1), [_x(nd, dtype)])


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("dilation", [1, 2])
def test_max_pool2d_variants(ceil_mode, dilation):
    check_op(nn.MaxPool2d((3, 2), stride=(2, 3), padding=(1, 0), dilation=dilation,
                          ceil_mode=ceil_mode), [_x(2, size=10)])


@pytest.mark.skipif(DEVICE == "cuda", reason="eager CUDA has no integer max_pool2d to compare with")
def test_max_pool2d_integers():
    x = torch.randint(-100, 100, (2, 3, 8, 8), dtype=torch.int32)
    check_op(nn.MaxPool2d(2), [x])


def test_max_pool2d_unbatched():
    check_op(nn.MaxPool2d(2), [torch.randn(3, 8, 8)])


def test_max_pool_indices_read_falls_back():
    """The indices output cannot run in an engine: the node runs in PyTorch."""
    def fn(x):
        v, i = F.max_pool2d(x, 2, return_indices=True)
        return v * 2, i
    check_fallback(fn, [_x(2, size=8)], "max_pool2d_with_indices")
    check_fallback(lambda x: F.adaptive_max_pool2d(x, 3, return_indices=True), [_x(2, size=9)],
                   "adaptive_max_pool2d")


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avg_pool(nd, dtype):
    if nd == 3 and dtype != torch.float32:
        pytest.skip("eager PyTorch has no half-precision avg_pool3d on CPU")
    cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[nd]
    check_op(cls(3, stride=2, padding=1), [_x(nd, dtype)])


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avg_pool2d_variants(ceil_mode, count_include_pad, divisor_override):
    m = nn.AvgPool2d((3, 2), stride=(2, 2), padding=(1, 1), ceil_mode=ceil_mode,
                     count_include_pad=count_include_pad, divisor_override=divisor_override)
    check_op(m, [_x(2, size=10)])


def test_pool_dynamic_batch():
    check_op(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2, ceil_mode=True)),
             [_x(2, size=12)], dynamic_shapes=({0: BATCH},),
             extra_inputs=[[_x(2, batch=5, size=12)], [_x(2, batch=8, size=12)]])


def test_pool_dynamic_size():
    # Stride 1: strided pooling makes torch.export guard the parity of the size.
    size = torch.export.Dim("size", min=4, max=32)
    check_op(nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.AvgPool2d(3, stride=1)),
             [_x(2, size=12)], dynamic_shapes=({0: BATCH, 2: size, 3: size},),
             extra_inputs=[[_x(2, batch=5, size=17)], [_x(2, batch=8, size=32)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("nd,out", [(1, 3), (2, (3, 1)), (2, 1), (2, (4, 6)), (2, (5, 4)),
                                    (3, 2), (3, (1, 3, 4))])
def test_adaptive_avg_pool(nd, out, dtype):
    cls = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[nd]
    check_op(cls(out), [_x(nd, dtype, size=12 if nd < 3 else 6)])


@pytest.mark.parametrize("nd,out", [(1, 5), (2, (5, 7)), (2, 7), (3, (2, 5, 3))])
def test_adaptive_pool_uneven(nd, out):
    """Output sizes that do not divide the input: PyTorch's overlapping windows."""
    for cls in ({1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[nd],
                {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[nd]):
        check_op(cls(out), [_x(nd, size=10 if nd < 3 else 7)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("out", [1, 3, (2, 6)])
def test_adaptive_max_pool2d(dtype, out):
    check_op(nn.AdaptiveMaxPool2d(out), [_x(2, dtype, size=6)])


def test_adaptive_avg_pool_global_dynamic():
    """Output size 1 works for dynamic spatial sizes (a mean over the spatial dims)."""
    size = torch.export.Dim("size", min=4, max=32)
    check_op(nn.AdaptiveAvgPool2d(1), [_x(2, size=8)],
             dynamic_shapes=({0: BATCH, 2: size, 3: size},),
             extra_inputs=[[_x(2, batch=3, size=19)]])
    check_op(nn.AdaptiveMaxPool2d((1, 1)), [_x(2, size=8)],
             dynamic_shapes=({0: BATCH, 2: size, 3: size},),
             extra_inputs=[[_x(2, batch=3, size=19)]])


def test_adaptive_avg_pool2d_direct():
    """aten::_adaptive_avg_pool2d, the form PyTorch's decompositions produce."""
    check_op(lambda x: torch.ops.aten._adaptive_avg_pool2d(x, [3, 4]), [_x(2, size=12)],
             expect_ops={"aten::_adaptive_avg_pool2d"})


@pytest.mark.parametrize("nd", [2, 3])
def test_max_pool_with_indices_values(nd):
    """max_pool{2,3}d_with_indices with only the values read (PyTorch's decomposed form)."""
    op = {2: torch.ops.aten.max_pool2d_with_indices, 3: torch.ops.aten.max_pool3d_with_indices}[nd]
    check_op(lambda x: op(x, [3] * nd, [2] * nd, [1] * nd)[0], [_x(nd, size=7)],
             expect_ops={f"aten::max_pool{nd}d_with_indices"})
