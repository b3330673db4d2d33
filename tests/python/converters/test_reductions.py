"""Reduction converters (reductions.cpp) against PyTorch eager."""

import pytest
import torch

from harness import DTYPES_FLOAT, DTYPES_INT, check_op

BATCH = torch.export.Dim("batch", min=1, max=16)


def dyn(*specs):
    """dynamic_shapes for a lambda (its inputs arrive as *args)."""
    return (tuple(specs),)


def randn(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


def distinct(*shape, dtype=torch.float32):
    """Values without ties (so index outputs are unambiguous)."""
    n = 1
    for s in shape:
        n *= s
    return (torch.randperm(n).reshape(shape).float() - n / 2).to(dtype)


DIMS = [None, 0, -1, (0, 2), (-1, 1)]


def dim_id(d):
    return "all" if d is None else str(d)


def call(fn, x, dim, keepdim, **kw):
    return fn(x, **kw) if dim is None else fn(x, dim=dim, keepdim=keepdim, **kw)


# ---------------------------------------------------------------- sum, mean, prod, amax, amin

@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=dim_id)
@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin"])
def test_reduce_float(op, dim, keepdim, dtype):
    fn = getattr(torch, op)
    check_op(lambda x: call(fn, x, dim, keepdim), [randn(2, 3, 4, dtype=dtype)])


@pytest.mark.parametrize("dtype", DTYPES_INT + [torch.bool])
@pytest.mark.parametrize("dim", [None, 1, (0, 1)], ids=dim_id)
@pytest.mark.parametrize("op", ["sum", "amax", "amin"])
def test_reduce_int_and_bool(op, dim, dtype):
    fn = getattr(torch, op)
    x = torch.randint(-5, 5, (3, 4, 2)).to(dtype)
    check_op(lambda a: call(fn, a, dim, False), [x])


def test_sum_dtype_and_mean_dtype():
    check_op(lambda x: (x.sum(1, dtype=torch.float32), x.mean(dtype=torch.float32)),
             [randn(3, 4, dtype=torch.float16)])
    check_op(lambda x: x.mean(1, dtype=torch.float32), [torch.randint(0, 9, (3, 4))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32, torch.int64])
@pytest.mark.parametrize("dim", [None, 1, -1])
def test_prod(dim, dtype):
    x = (torch.rand(3, 4) + 0.5).to(dtype) if dtype.is_floating_point else torch.randint(-3, 4, (3, 4), dtype=dtype)
    fn = (lambda a: a.prod()) if dim is None else (lambda a: a.prod(dim))
    check_op(fn, [x], expect_ops={"aten::prod" if dim is None else "aten::prod.dim_int"})


def test_reduce_0d():
    check_op(lambda x: (x.sum(), x.sum(0), x.amax(), x.mean(-1, keepdim=True)), [torch.tensor(1.5)])


def test_reduce_dynamic():
    check_op(lambda x: (x.sum(0), x.mean(-1), x.amax(1, keepdim=True)), [randn(4, 5)],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[randn(9, 5)], [randn(1, 5)]])


def test_reduce_nan_and_inf():
    x = torch.tensor([[1.0, float("nan"), 2.0], [float("-inf"), 0.0, 5.0]])
    check_op(lambda a: (a.amax(1), a.amin(1), a.sum(1)), [x])


# ---------------------------------------------------------------- max/min with indices, arg*

@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_dim(op, dim, keepdim, dtype):
    fn = getattr(torch, op)
    check_op(lambda x: tuple(fn(x, dim, keepdim=keepdim)), [distinct(3, 4, 5, dtype=dtype)],
             expect_ops={f"aten::{op}.dim"})


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT + [torch.bool])
@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_all(op, dtype):
    x = torch.randint(0, 2, (3, 4)).bool() if dtype == torch.bool else distinct(3, 4, dtype=dtype)
    check_op(lambda a: getattr(a, op)(), [x])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [None, 0, -1])
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_argmax_argmin(op, dim, keepdim, dtype):
    fn = getattr(torch, op)
    check_op(lambda x: fn(x, dim=dim, keepdim=keepdim), [distinct(3, 4, 5, dtype=dtype)],
             expect_ops={f"aten::{op}"})


def test_argmax_ties_pick_first():
    check_op(lambda x: (x.argmax(1), x.argmin(1), x.max(1).indices),
             [torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])])


def test_argmax_dynamic():
    check_op(lambda x: (x.argmax(), x.argmax(0), x.max(-1)[1]), [distinct(4, 6)],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[distinct(11, 6)], [distinct(1, 6)]])


# ---------------------------------------------------------------- any, all

@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int32])
@pytest.mark.parametrize("dim", [None, 1, (0, 2)], ids=dim_id)
@pytest.mark.parametrize("op", ["any", "all"])
def test_any_all(op, dim, dtype):
    fn = getattr(torch, op)
    # Mostly-true and mostly-false rows so both answers occur.
    x = (torch.rand(3, 4, 2) < torch.tensor([0.1, 0.5, 0.95]).reshape(3, 1, 1)).to(dtype)
    check_op(lambda a: call(fn, a, dim, False), [x])


def test_any_all_keepdim():
    check_op(lambda a: (a.any(1, keepdim=True), a.all(0, keepdim=True)), [torch.rand(3, 4) > 0.3])


def test_any_all_uint8_keeps_dtype():
    check_op(lambda a: (a.any(), a.all(1)), [torch.randint(0, 3, (3, 4), dtype=torch.uint8)])


@pytest.mark.parametrize("has_inf", [False, True])
def test_isinf_any_clamp_as_t5_writes_it(has_inf):
    """T5's f16 guard: clamp to finfo.max - 1000 when any element is inf, else to finfo.max.
    The 0/1 values the any() reduces are floats, so isinf and that cast are one generated
    kernel before the Reduce, and the scalar test joins the clamp's kernel after it."""
    import json

    def t5_clamp(x):
        big = torch.finfo(torch.float16).max
        c = torch.where(torch.isinf(x).any(), big - 1000, big)
        return torch.clamp(x, min=-c, max=c)

    x = torch.randn(2, 5, 16).to(torch.float16)
    if has_inf:
        x[1, 3, 7] = float("inf")
    compiled = check_op(t5_clamp, [x])
    layers = [layer for attr in sorted(dir(compiled)) if attr.startswith("_ember_engine_")
              for layer in json.loads(getattr(compiled, attr).inspect())["layers"]]
    kinds = [layer["type"] for layer in layers if layer["type"] != "Constant"]
    assert kinds == ["FusedPointwise", "Reduce", "FusedPointwise"], kinds


# ---------------------------------------------------------------- cumsum

@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT + [torch.bool])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum(dim, dtype):
    x = torch.randint(-3, 4, (3, 4, 5)).to(dtype)
    if dtype.is_floating_point:
        x = randn(3, 4, 5, dtype=dtype)
    check_op(lambda a: torch.cumsum(a, dim), [x], expect_ops={"aten::cumsum"})


def test_cumsum_dtype_and_dynamic():
    check_op(lambda a: torch.cumsum(a, 1, dtype=torch.float32), [randn(4, 6, dtype=torch.float16)],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[randn(13, 6, dtype=torch.float16)]])


# ---------------------------------------------------------------- topk, sort

@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("dim", [0, -1])
def test_topk(dim, largest, dtype):
    check_op(lambda x: tuple(torch.topk(x, 3, dim=dim, largest=largest)), [distinct(4, 6, dtype=dtype)],
             expect_ops={"aten::topk"})


def test_topk_dynamic_batch():
    check_op(lambda x: tuple(torch.topk(x, 2)), [distinct(4, 6)], dynamic_shapes=dyn({0: BATCH}),
             extra_inputs=[[distinct(9, 6)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("dim", [0, -1])
def test_sort(dim, descending, dtype):
    check_op(lambda x: tuple(torch.sort(x, dim=dim, descending=descending)),
             [distinct(4, 6, dtype=dtype)])


@pytest.mark.parametrize("descending", [False, True])
def test_sort_stable_ties(descending):
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    check_op(lambda a: tuple(torch.sort(a, dim=-1, descending=descending, stable=True)), [x])


def test_argsort():
    check_op(lambda x: torch.argsort(x, dim=1, descending=True), [distinct(3, 5)])


def test_sort_dynamic_batch():
    check_op(lambda x: tuple(torch.sort(x, -1)), [distinct(4, 6)], dynamic_shapes=dyn({0: BATCH}),
             extra_inputs=[[distinct(7, 6)]])


# ---------------------------------------------------------------- var, std, norm

@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("correction", [0, 1, 2])
@pytest.mark.parametrize("dim", [None, 1, (0, 2)], ids=dim_id)
@pytest.mark.parametrize("op", ["var", "std"])
def test_var_std(op, dim, correction, dtype):
    fn = getattr(torch, op)
    check_op(lambda x: fn(x, dim=dim, correction=correction), [randn(3, 4, 5, dtype=dtype) + 2],
             expect_ops={f"aten::{op}.correction"})


def test_var_mean_std_mean():
    check_op(lambda x: (*torch.var_mean(x, 1), *torch.std_mean(x, (0, 1), keepdim=True)), [randn(3, 4, 5)])


def test_var_dynamic():
    check_op(lambda x: (torch.var(x, 0), torch.std(x, 1, keepdim=True)), [randn(4, 6)],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[randn(13, 6)], [randn(2, 6)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("ord", [2, 1, float("inf"), float("-inf"), 0, 3])
def test_vector_norm(ord, dtype):
    check_op(lambda x: torch.linalg.vector_norm(x, ord, dim=-1), [randn(3, 5, dtype=dtype)])


def test_norm_keepdim_dynamic():
    check_op(lambda x: x.norm(dim=1, keepdim=True), [randn(4, 6)], dynamic_shapes=dyn({0: BATCH}),
             extra_inputs=[[randn(10, 6)]])


def test_truncate_double_int64():
    # i64 runs as i32 inside the engine; indices and integer sums come back as i64.
    x = torch.randperm(24).reshape(4, 6) - 12  # no ties: topk's tie order is unspecified in torch
    check_op(lambda a: (a.sum(1), a.argmax(1), torch.topk(a.float(), 2)[1], a.cumsum(0)), [x],
             truncate_double=True)


def test_truncate_double_float64():
    check_op(lambda a: (a.sum(0), a.mean(), a.var(1)), [torch.randn(4, 6, dtype=torch.float64)],
             truncate_double=True)


def test_max_min_arg_with_nan():
    # torch.max/min/argmax/argmin return the NaN (topk/sort put it last instead).
    x = torch.tensor([[1.0, float("nan"), -2.0, 0.5], [3.0, -1.0, 2.0, -4.0]])
    check_op(lambda a: (*a.max(1), *a.min(1), a.argmax(1), a.argmin(1), a.argmin()), [x])
