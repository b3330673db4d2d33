"""select_scatter, index_put (and index_copy, which decomposes to it) and copy against eager."""

import pytest
import torch

from fallback import check_fallback
from harness import DTYPES_FLOAT, check_op, dynamic as _dyn, random_tensor as _r

DTYPES_ALL = DTYPES_FLOAT + [torch.int32, torch.int64, torch.bool]
DTYPES_NUM = DTYPES_FLOAT + [torch.int32, torch.int64]
BATCH = torch.export.Dim("batch", min=2, max=8)


def _i(*values):
    return torch.tensor(values, dtype=torch.int64)


# ---- select_scatter ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_select_scatter(dtype):
    check_op(lambda x, s: torch.select_scatter(x, s, 1, 2), [_r(3, 5, dtype=dtype), _r(3, dtype=dtype)],
             expect_ops={"aten::select_scatter"})


@pytest.mark.parametrize("dim,index", [(0, 0), (0, -1), (1, -2), (-1, 3), (2, 1), (-3, 1)])
def test_select_scatter_dims(dim, index):
    shape = (2, 3, 4)
    src_shape = tuple(s for d, s in enumerate(shape) if d != dim % 3)
    check_op(lambda x, s: torch.select_scatter(x, s, dim, index), [_r(*shape), _r(*src_shape)])


def test_select_scatter_dynamic():
    check_op(lambda x, s: torch.select_scatter(x, s, 1, 1), [_r(3, 4), _r(3)],
             dynamic_shapes=_dyn({0: BATCH}, {0: BATCH}), extra_inputs=[[_r(8, 4), _r(8)]])


def test_select_scatter_negative_index_dynamic_dim_fallback():
    n = torch.export.Dim("n", min=2, max=8)
    check_op(lambda x, s: torch.select_scatter(x, s, 0, -1), [_r(4, 3), _r(3)],
             dynamic_shapes=_dyn({0: n}, None), require_full=False,
             extra_inputs=[[_r(6, 3), _r(3)]])


# ---- index_put ----

@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", DTYPES_NUM)
def test_index_put(accumulate, dtype):
    idx = _i(0, 3, 1) if not accumulate else _i(0, 3, 0, 1, 3)
    check_op(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=accumulate),
             [_r(5, 3, dtype=dtype), idx, _r(len(idx), 3, dtype=dtype)],
             expect_ops={"aten::index_put"})


def test_index_put_bool_data():
    check_op(lambda x, i, v: torch.index_put(x, (i,), v), [_r(5, 3, dtype=torch.bool), _i(4, 1),
                                                          _r(2, 3, dtype=torch.bool)])


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_negative_indices(accumulate):
    check_op(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=accumulate),
             [_r(6, 2), _i(-1, 0, -3), _r(3, 2)])


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("values_shape", [(), (1,), (3,), (2, 1), (2, 3)])
def test_index_put_broadcast_values(accumulate, values_shape):
    check_op(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=accumulate),
             [_r(4, 3), _i(2, 0), _r(*values_shape)])


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_int32_index(accumulate):
    check_op(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=accumulate),
             [_r(4, 3), torch.tensor([3, 1], dtype=torch.int32), _r(2, 3)])


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_2d_index(accumulate):
    check_op(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=accumulate),
             [_r(7, 2), torch.tensor([[0, 2], [5, 6]]), _r(2, 2, 2)])


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("position", [1, 2])
def test_index_put_inner_dim(accumulate, position):
    # x[:, i] = v and x[:, :, i] = v: None entries before the index tensor.
    def fn(x, i, v):
        idx = [None] * position + [i]
        return torch.ops.aten.index_put(x, idx, v, accumulate)
    shape = [2, 3, 4]
    vshape = list(shape)
    vshape[position] = 2
    check_op(fn, [_r(*shape), _i(0, -1), _r(*vshape)])


def test_index_put_setitem():
    def fn(x, i, v):
        y = x.clone()
        y[i] = v
        return y
    check_op(fn, [_r(5, 3), _i(4, 2), _r(2, 3)])


def test_index_put_dynamic():
    k = torch.export.Dim("k", min=1, max=6)
    check_op(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=True), [_r(5, 3), _i(1, 1), _r(2, 3)],
             dynamic_shapes=_dyn({0: BATCH}, {0: k}, {0: k}),
             extra_inputs=[[_r(8, 3), _i(7, 0, -1, 7, 2, 2), _r(6, 3)], [_r(2, 3), _i(0), _r(1, 3)]])


def test_index_put_mask_fallback():
    check_fallback(lambda x, m, v: torch.index_put(x, (m,), v) * 2,
                   [_r(4, 3), torch.tensor([True, False, True, False]), _r(3)], "index_put")


def test_index_put_two_indices_fallback():
    check_fallback(lambda x, i, j, v: torch.index_put(x, (i, j), v) * 2,
                   [_r(4, 3), _i(0, 2), _i(1, 1), _r(2)], "index_put")


# ---- index_copy ----

@pytest.mark.parametrize("dtype", DTYPES_NUM)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_index_copy(dim, dtype):
    x = _r(4, 5, dtype=dtype)
    n = x.shape[dim]
    src_shape = list(x.shape)
    src_shape[dim] = 2
    check_op(lambda a, i, s: a.index_copy(dim, i, s), [x, _i(n - 1, 1), _r(*src_shape, dtype=dtype)])


# ---- copy ----

@pytest.mark.parametrize("dtype,src_dtype", [
    (torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
    (torch.int64, torch.int64), (torch.bool, torch.bool), (torch.float32, torch.float16),
    (torch.float16, torch.float32), (torch.bfloat16, torch.int32), (torch.int32, torch.float32),
    (torch.int64, torch.bool), (torch.bool, torch.float32), (torch.float32, torch.int64)])
def test_copy_dtypes(dtype, src_dtype):
    check_op(lambda a, b: torch.ops.aten.copy(a, b), [_r(2, 3, dtype=dtype), _r(2, 3, dtype=src_dtype)],
             expect_ops={"aten::copy"})


@pytest.mark.parametrize("src_shape", [(), (1,), (3,), (2, 1), (1, 2, 3)])
def test_copy_broadcast(src_shape):
    check_op(lambda a, b: torch.ops.aten.copy(a, b), [_r(1, 2, 3), _r(*src_shape)])


def test_copy_inplace_method():
    def fn(a, b):
        y = a * 2
        y.copy_(b)
        return y + 1
    check_op(fn, [_r(2, 3), _r(3)])


def test_copy_dynamic():
    check_op(lambda a, b: torch.ops.aten.copy(a, b), [_r(3, 4), _r(3, 1, dtype=torch.int64)],
             dynamic_shapes=_dyn({0: BATCH}, {0: BATCH}),
             extra_inputs=[[_r(8, 4), _r(8, 1, dtype=torch.int64)]])
