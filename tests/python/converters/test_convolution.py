"""aten::convolution (1d/2d/3d, transposed, grouped, with and without bias) against eager."""

import pytest
import torch
from torch import nn

from harness import DEVICE, DTYPES_FLOAT, check_op

BATCH = torch.export.Dim("batch", min=2, max=8)


def _conv(nd: int, transposed: bool, dtype, **kw) -> nn.Module:
    cls = {(1, False): nn.Conv1d, (2, False): nn.Conv2d, (3, False): nn.Conv3d,
           (1, True): nn.ConvTranspose1d, (2, True): nn.ConvTranspose2d,
           (3, True): nn.ConvTranspose3d}[(nd, transposed)]
    torch.manual_seed(0)
    return cls(**kw).to(dtype).eval()


def _input(nd: int, batch: int, channels: int, size: int, dtype) -> torch.Tensor:
    return torch.randn(batch, channels, *([size] * nd), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv(nd, dtype):
    m = _conv(nd, False, dtype, in_channels=4, out_channels=6, kernel_size=3, padding=1)
    check_op(m, [_input(nd, 2, 4, 6, dtype)], expect_ops={f"aten::conv{nd}d"})


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_stride_dilation_groups(dtype, bias):
    m = _conv(2, False, dtype, in_channels=6, out_channels=9, kernel_size=(3, 2), stride=(2, 1),
              padding=(1, 2), dilation=(1, 2), groups=3, bias=bias)
    check_op(m, [_input(2, 2, 6, 9, dtype)], expect_ops={"aten::conv2d"})


def test_conv2d_depthwise():
    m = _conv(2, False, torch.float32, in_channels=8, out_channels=8, kernel_size=3, groups=8)
    check_op(m, [_input(2, 1, 8, 7, torch.float32)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_transpose(nd, dtype):
    m = _conv(nd, True, dtype, in_channels=4, out_channels=3, kernel_size=3, stride=2, padding=1,
              output_padding=1)
    op = "aten::conv_transpose1d" if nd == 1 else f"aten::conv_transpose{nd}d.input"
    check_op(m, [_input(nd, 2, 4, 5, dtype)], expect_ops={op})


@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_groups_dilation(bias):
    m = _conv(2, True, torch.float32, in_channels=4, out_channels=6, kernel_size=2, stride=(2, 3),
              padding=(0, 1), dilation=2, groups=2, bias=bias)
    check_op(m, [_input(2, 2, 4, 5, torch.float32)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_aten_convolution(dtype, transposed, bias):
    """The core op itself, as TorchScript and other frontends hand it over."""
    # [C_out, C_in/groups, k] or [C_in, C_out/groups, k]; captured, so made on the test device.
    w = torch.randn(4, 2, 3, 3, dtype=dtype).to(DEVICE)
    b = torch.randn(4, dtype=dtype).to(DEVICE) if bias else None

    def fn(x):
        return torch.ops.aten.convolution(x, w, b, [2, 1], [1, 0], [1, 2], transposed,
                                          [1, 0] if transposed else [0, 0], 2)

    check_op(fn, [torch.randn(2, 4, 7, 8, dtype=dtype)], expect_ops={"aten::convolution"})


def test_conv_weight_as_input():
    """A weight that is a graph input, not a parameter, still converts."""
    check_op(lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=1),
             [torch.randn(2, 3, 8, 8), torch.randn(5, 3, 3, 3), torch.randn(5)])


@pytest.mark.parametrize("nd", [1, 2])
def test_conv_dynamic_batch(nd):
    m = _conv(nd, False, torch.float32, in_channels=3, out_channels=4, kernel_size=3, stride=2)
    check_op(m, [_input(nd, 2, 3, 9, torch.float32)], dynamic_shapes=({0: BATCH},),
             extra_inputs=[[_input(nd, 5, 3, 9, torch.float32)],
                           [_input(nd, 8, 3, 9, torch.float32)]])


def test_conv_dynamic_spatial():
    size = torch.export.Dim("size", min=4, max=32)
    m = _conv(2, False, torch.float32, in_channels=3, out_channels=4, kernel_size=3, padding=1)
    check_op(m, [torch.randn(1, 3, 8, 8)], dynamic_shapes=({2: size, 3: size},),
             extra_inputs=[[torch.randn(1, 3, 17, 17)]])


def test_conv_transpose_dynamic_batch():
    m = _conv(2, True, torch.float32, in_channels=3, out_channels=2, kernel_size=4, stride=2,
              padding=1)
    check_op(m, [_input(2, 2, 3, 5, torch.float32)], dynamic_shapes=({0: BATCH},),
             extra_inputs=[[_input(2, 7, 3, 5, torch.float32)]])


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_unbatched(transposed):
    m = _conv(2, transposed, torch.float32, in_channels=3, out_channels=4, kernel_size=3)
    check_op(m, [torch.randn(3, 6, 7)])
    m = _conv(1, transposed, torch.float32, in_channels=3, out_channels=4, kernel_size=3)
    check_op(m, [torch.randn(3, 6)])
