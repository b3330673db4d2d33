"""diagonal, as_strided and circular padding against eager."""

import pytest
import torch
import torch.nn.functional as F

from fallback import check_fallback
from harness import DTYPES_FLOAT, check_op, dynamic as _dyn, random_tensor as _r

DTYPES_ALL = DTYPES_FLOAT + [torch.int32, torch.int64, torch.bool]


# ---- diagonal ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_diagonal(dtype):
    check_op(lambda x: torch.diagonal(x), [_r(4, 4, dtype=dtype)], expect_ops={"aten::diagonal"})


@pytest.mark.parametrize("offset", [0, 1, 2, -1, -2])
@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
def test_diagonal_offset(shape, offset):
    check_op(lambda x: torch.diagonal(x, offset) + 1, [_r(*shape)])


@pytest.mark.parametrize("dims,offset", [((0, 1), 0), ((1, 0), 1), ((0, 2), -1), ((2, 0), 1),
                                         ((1, 2), -1), ((-1, -2), 1), ((-3, -1), 0), ((2, 1), 2)])
def test_diagonal_dims(dims, offset):
    check_op(lambda x: torch.diagonal(x, offset, *dims) * 2, [_r(2, 3, 4)])


def test_diagonal_4d():
    check_op(lambda x: torch.diagonal(x, 0, 1, 3), [_r(2, 3, 2, 4)])


def test_diagonal_dynamic_other_dim():
    b = torch.export.Dim("b", min=1, max=8)
    check_op(lambda x: torch.diagonal(x, 1, 1, 2), [_r(3, 4, 4)], dynamic_shapes=_dyn({0: b}),
             extra_inputs=[[_r(8, 4, 4)], [_r(1, 4, 4)]])


@pytest.mark.parametrize("offset", [0, 1, -1])
def test_diagonal_dynamic_matrix(offset):
    n = torch.export.Dim("n", min=3, max=9)
    check_op(lambda x: torch.diagonal(x, offset), [_r(4, 4)], dynamic_shapes=_dyn({0: n, 1: n}),
             extra_inputs=[[_r(3, 3)], [_r(9, 9)]])


def test_diagonal_dynamic_rows():
    n = torch.export.Dim("n", min=2, max=9)
    check_op(lambda x: torch.diagonal(x), [_r(4, 5)], dynamic_shapes=_dyn({0: n}),
             extra_inputs=[[_r(2, 5)], [_r(9, 5)]])


def test_diagonal_dynamic_cols():
    n = torch.export.Dim("n", min=2, max=9)
    check_op(lambda x: torch.diagonal(x, -1), [_r(4, 5)], dynamic_shapes=_dyn({1: n}),
             extra_inputs=[[_r(4, 2)], [_r(4, 9)]])


# ---- as_strided ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_as_strided(dtype):
    check_op(lambda x: torch.as_strided(x, (2, 2), (1, 2)), [_r(4, 4, dtype=dtype)],
             expect_ops={"aten::as_strided"})


@pytest.mark.parametrize("size,stride,offset", [
    ((3, 3), (1, 1), 0),          # overlapping sliding windows
    ((2, 3), (3, 1), 2),          # storage offset
    ((4,), (4,), 1),              # a column of a 4x4
    ((2, 2, 2), (8, 4, 1), 0),
    ((3, 2), (0, 1), 5),          # stride 0 repeats
    ((), (), 7),                  # one element, 0-d
])
def test_as_strided_variants(size, stride, offset):
    check_op(lambda x: torch.as_strided(x, size, stride, offset) + 0, [_r(4, 4)])


def test_as_strided_of_computed_tensor():
    check_op(lambda x: torch.as_strided(x * 2 + 1, (3, 2), (2, 3)), [_r(3, 4)])


def test_as_strided_of_view_fallback():
    # as_strided of a transposed view reads x's storage in PyTorch: runs in PyTorch.
    check_fallback(lambda x: torch.as_strided(x.transpose(0, 1), (2, 2), (1, 2)) * 2, [_r(3, 4)],
                   "as_strided")


def test_as_strided_dynamic_fallback():
    n = torch.export.Dim("n", min=2, max=8)
    check_op(lambda x: torch.as_strided(x, (2, 2), (1, 2)) * 2, [_r(4, 4)],
             dynamic_shapes=_dyn({0: n}), require_full=False, extra_inputs=[[_r(6, 4)]])


# ---- circular padding ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_pad_circular(dtype):
    check_op(lambda x: F.pad(x, (1, 2), mode="circular"), [_r(1, 2, 5, dtype=dtype)],
             expect_ops={"aten::_pad_circular"})


@pytest.mark.parametrize("pad", [(0, 0), (2, 0), (0, 3), (3, 3), (4, 4)])
def test_pad_circular_1d(pad):
    check_op(lambda x: F.pad(x, pad, mode="circular"), [_r(2, 3, 4)])


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (0, 2, 1, 0), (3, 0, 0, 2), (1, 2, 3, 4)])
def test_pad_circular_2d(pad):
    check_op(lambda x: F.pad(x, pad, mode="circular"), [_r(1, 2, 4, 5)])


@pytest.mark.parametrize("pad", [(1, 1, 1, 1, 1, 1), (0, 1, 2, 0, 1, 2)])
def test_pad_circular_3d(pad):
    check_op(lambda x: F.pad(x, pad, mode="circular"), [_r(1, 1, 3, 3, 4)])


def test_pad_circular_dynamic_batch():
    b = torch.export.Dim("b", min=1, max=8)
    check_op(lambda x: F.pad(x, (1, 2, 2, 1), mode="circular"), [_r(2, 3, 4, 4)],
             dynamic_shapes=_dyn({0: b}), extra_inputs=[[_r(7, 3, 4, 4)], [_r(1, 3, 4, 4)]])


def test_pad_circular_conv():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    check_op(conv, [_r(1, 2, 5, 5)])


def test_pad_circular_negative_fallback():
    check_fallback(lambda x: F.pad(x, (-1, 2), mode="circular") * 2, [_r(1, 2, 5)], "pad_circular")
