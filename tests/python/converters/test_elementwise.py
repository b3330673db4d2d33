"""Binary pointwise converters (elementwise.cpp) against PyTorch eager."""

import pytest
import torch

from harness import DTYPES_FLOAT, DTYPES_INT, check_op

BATCH = torch.export.Dim("batch", min=1, max=16)


def dyn(*specs):
    """dynamic_shapes for a lambda (its inputs arrive as *args)."""
    return (tuple(specs),)


def randn(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


def nonzero(*shape, dtype=torch.float32):
    """Values away from 0 (divisors)."""
    x = torch.rand(*shape) * 2 + 0.5
    sign = torch.where(torch.rand(*shape) < 0.5, -1.0, 1.0)
    return (x * sign).to(dtype)


def ints(*shape, dtype=torch.int32, low=-20, high=20):
    return torch.randint(low, high, shape, dtype=dtype)


def int_divisors(*shape, dtype=torch.int32):
    x = torch.randint(1, 7, shape, dtype=dtype)
    return torch.where(torch.rand(*shape) < 0.5, -x, x)


# ---------------------------------------------------------------- arithmetic

BINARY = {
    "add": (lambda a, b: a + b, "aten::add.Tensor"),
    "sub": (lambda a, b: a - b, "aten::sub.Tensor"),
    "mul": (lambda a, b: a * b, "aten::mul.Tensor"),
    "div": (lambda a, b: a / b, "aten::div.Tensor"),
    "div_trunc": (lambda a, b: torch.div(a, b, rounding_mode="trunc"), "aten::div.Tensor_mode"),
    "div_floor": (lambda a, b: torch.div(a, b, rounding_mode="floor"), "aten::div.Tensor_mode"),
    "floor_divide": (lambda a, b: a // b, "aten::floor_divide"),
    "remainder": (lambda a, b: a % b, "aten::remainder.Tensor"),
    "fmod": (lambda a, b: torch.fmod(a, b), "aten::fmod.Tensor"),
    "maximum": (lambda a, b: torch.maximum(a, b), "aten::maximum"),
    "minimum": (lambda a, b: torch.minimum(a, b), "aten::minimum"),
    "atan2": (lambda a, b: torch.atan2(a, b), "aten::atan2"),
}


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_float(op, dtype):
    fn, key = BINARY[op]
    check_op(fn, [randn(2, 3, 4, dtype=dtype), nonzero(3, 4, dtype=dtype)], expect_ops={key})


@pytest.mark.parametrize("dtype", DTYPES_INT + [torch.int8, torch.uint8])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "div_trunc", "div_floor",
                                "floor_divide", "remainder", "fmod", "maximum", "minimum"])
def test_binary_int(op, dtype):
    fn, key = BINARY[op]
    if dtype == torch.uint8:
        a, b = ints(4, 5, dtype=dtype, low=0, high=100), torch.randint(1, 9, (5,), dtype=dtype)
    else:
        a, b = ints(4, 5, dtype=dtype), int_divisors(5, dtype=dtype)
    check_op(fn, [a, b], expect_ops={key})


def test_binary_dynamic_batch():
    check_op(lambda a, b: a * b + a, [randn(4, 3), randn(4, 3)],
             dynamic_shapes=dyn({0: BATCH}, {0: BATCH}), extra_inputs=[[randn(9, 3), randn(9, 3)]])


def test_broadcast_both_sides():
    check_op(lambda a, b: a - b, [randn(4, 1, 3), randn(5, 1)], expect_ops={"aten::sub.Tensor"})


def test_broadcast_dynamic():
    check_op(lambda a, b: a / b, [randn(4, 3, 2), nonzero(3, 1)], dynamic_shapes=dyn({0: BATCH}, None),
             extra_inputs=[[randn(7, 3, 2), nonzero(3, 1)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("case", ["add", "sub", "mul", "div", "rsub", "radd", "pow", "rpow",
                                  "floordiv", "remainder", "fmod"])
def test_scalar_operand(case, dtype):
    fns = {
        "add": lambda x: x + 0.1,
        "sub": lambda x: x - 3,
        "mul": lambda x: x * 2.5,
        "div": lambda x: x / 3.0,
        "rsub": lambda x: 1.7 - x,
        "radd": lambda x: 2 + x,
        "pow": lambda x: x.abs() ** 1.5,
        "rpow": lambda x: 2 ** x,
        "floordiv": lambda x: x // 0.7,
        "remainder": lambda x: x % 1.5,
        "fmod": lambda x: torch.fmod(x, -0.75),
    }
    check_op(fns[case], [randn(3, 5, dtype=dtype)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
def test_add_sub_alpha(dtype):
    a = randn(3, 4, dtype=dtype) if dtype.is_floating_point else ints(3, 4, dtype=dtype)
    b = randn(4, dtype=dtype) if dtype.is_floating_point else ints(4, dtype=dtype)
    check_op(lambda x, y: torch.add(x, y, alpha=2) - torch.sub(x, y, alpha=3), [a, b],
             expect_ops={"aten::add.Tensor", "aten::sub.Tensor"})


def test_rsub_alpha():
    check_op(lambda x: torch.rsub(x, 2.0, alpha=3), [randn(3, 4)], expect_ops={"aten::rsub.Scalar"})


@pytest.mark.parametrize("case", ["int_plus_float", "int_times_float", "int_div_int", "int_pow",
                                  "float_tensor_int_tensor", "half_plus_float_0d", "int_div_scalar"])
def test_type_promotion(case):
    i = ints(3, 4, dtype=torch.int32)
    fns = {
        "int_plus_float": (lambda x: x + 1.5, [i]),
        "int_times_float": (lambda x: x * 0.25, [i]),
        "int_div_int": (lambda x, y: x / y, [i, int_divisors(4)]),
        "int_pow": (lambda x: x.abs() ** 2, [i]),
        "float_tensor_int_tensor": (lambda x, y: x * y, [randn(3, 4), i]),
        "half_plus_float_0d": (lambda x, y: x + y, [randn(3, 4, dtype=torch.float16), randn()]),
        "int_div_scalar": (lambda x: torch.div(x, 3, rounding_mode="floor"), [i]),
    }
    fn, inputs = fns[case]
    check_op(fn, inputs)


def test_bool_add_mul():
    a, b = torch.rand(3, 4) > 0.5, torch.rand(3, 4) > 0.5
    check_op(lambda x, y: (x + y) | (x * y), [a, b])


def test_int_pow_tensor():
    check_op(lambda x, y: x ** y, [ints(3, 4, dtype=torch.int64, low=-4, high=5),
                                   torch.randint(0, 4, (3, 4))], expect_ops={"aten::pow.Tensor_Tensor"})


def test_remainder_signs():
    a = torch.tensor([5.0, -5.0, 5.0, -5.0, 0.0, 4.5, -4.5, 7.25])
    b = torch.tensor([3.0, 3.0, -3.0, -3.0, 2.0, 1.5, 1.5, -2.0])
    check_op(lambda x, y: x % y, [a, b])
    check_op(lambda x, y: torch.fmod(x, y), [a, b])


# ---------------------------------------------------------------- comparisons

COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare_tensor(op, dtype):
    # Small integers so equality happens.
    a = torch.randint(-2, 3, (3, 4)).to(dtype)
    b = torch.randint(-2, 3, (4,)).to(dtype)
    check_op(COMPARE[op], [a, b], expect_ops={f"aten::{op}.Tensor"})


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare_scalar(op):
    x = torch.tensor([[-1.0, 0.0, 0.5, 1.0], [2.0, 0.5, -0.5, 3.0]])
    check_op(lambda a: COMPARE[op](a, 0.5), [x], expect_ops={f"aten::{op}.Scalar"})


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare_int_tensor_float_scalar(op):
    # An int tensor against 1.5 compares in float (torch.result_type).
    check_op(lambda a: COMPARE[op](a, 1.5), [ints(3, 4)])


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare_nan(op):
    x = torch.tensor([float("nan"), 1.0, 2.0, float("inf")])
    y = torch.tensor([float("nan"), float("nan"), 2.0, float("inf")])
    check_op(COMPARE[op], [x, y])


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare_bool(op):
    a, b = torch.rand(8) > 0.5, torch.rand(8) > 0.5
    check_op(COMPARE[op], [a, b])


def test_compare_mixed_dtypes():
    check_op(lambda a, b: a < b, [randn(3, 4, dtype=torch.float16), randn(3, 4)])
    check_op(lambda a, b: a == b, [ints(3, 4, dtype=torch.int32, low=0, high=3),
                                   torch.randint(0, 3, (3, 4), dtype=torch.uint8)])


# ---------------------------------------------------------------- logical and bitwise

@pytest.mark.parametrize("op", ["and", "or", "xor"])
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int32])
def test_logical(op, dtype):
    fn = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[op]
    a = torch.randint(0, 2, (3, 4)).to(dtype)
    b = torch.randint(0, 2, (4,)).to(dtype)
    check_op(fn, [a, b], expect_ops={f"aten::logical_{op}"})


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int64])
def test_logical_not(dtype):
    check_op(torch.logical_not, [torch.randint(0, 2, (3, 4)).to(dtype)],
             expect_ops={"aten::logical_not"})


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.int64, torch.uint8, torch.int8])
def test_bitwise_not(dtype):
    x = torch.randint(0, 2, (3, 4)).bool() if dtype == torch.bool else ints(3, 4, dtype=dtype, low=0, high=100)
    check_op(lambda a: ~a, [x], expect_ops={"aten::bitwise_not"})


@pytest.mark.parametrize("op", ["&", "|", "^"])
def test_bitwise_bool(op):
    fn = {"&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b}[op]
    check_op(fn, [torch.rand(3, 4) > 0.5, torch.rand(4) > 0.5])


# ---------------------------------------------------------------- where, masked_fill, clamp

@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
def test_where(dtype):
    x = randn(3, 4).to(dtype)
    y = randn(4).to(dtype)
    check_op(lambda c, a, b: torch.where(c, a, b), [torch.rand(3, 1) > 0.5, x, y],
             expect_ops={"aten::where.self"})


def test_where_scalar_other():
    check_op(lambda a: torch.where(a > 0, a, 0.0), [randn(3, 4)], expect_ops={"aten::where.ScalarOther"})


def test_where_promotes():
    check_op(lambda a, b: torch.where(a > 0, a, b), [randn(3, 4, dtype=torch.float16), randn(3, 4)])


def test_where_dynamic():
    check_op(lambda a, b: torch.where(a > b, a, b), [randn(4, 3), randn(4, 3)],
             dynamic_shapes=dyn({0: BATCH}, {0: BATCH}), extra_inputs=[[randn(11, 3), randn(11, 3)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT + [torch.bool])
def test_masked_fill_scalar(dtype):
    x = torch.randint(-5, 5, (3, 4)).to(dtype)
    check_op(lambda a, m: a.masked_fill(m, 1), [x, torch.rand(3, 4) > 0.5],
             expect_ops={"aten::masked_fill.Scalar"})


def test_masked_fill_broadcast_mask_float_value():
    check_op(lambda a, m: a.masked_fill(m, float("-inf")), [randn(2, 3, 4), torch.rand(4) > 0.5])


def test_masked_fill_tensor():
    check_op(lambda a, m, v: a.masked_fill(m, v), [randn(3, 4), torch.rand(3, 4) > 0.5, randn()],
             expect_ops={"aten::masked_fill.Tensor"})


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
@pytest.mark.parametrize("bounds", [(-0.5, 0.5), (None, 0.3), (0.2, None), (1.0, -1.0)])
def test_clamp(bounds, dtype):
    lo, hi = bounds
    if not dtype.is_floating_point:
        lo = None if lo is None else int(lo * 4)
        hi = None if hi is None else int(hi * 4)
    x = randn(3, 4, dtype=dtype) if dtype.is_floating_point else ints(3, 4, dtype=dtype, low=-6, high=6)
    check_op(lambda a: torch.clamp(a, lo, hi), [x], expect_ops={"aten::clamp"})


def test_clamp_nan():
    check_op(lambda a: a.clamp(-1, 1), [torch.tensor([float("nan"), -3.0, 0.5, 3.0])])


def test_clamp_int_with_float_bound():
    check_op(lambda a: a.clamp(min=0.5), [ints(3, 4)])


@pytest.mark.parametrize("case", ["both", "min", "max", "min_only_method", "max_only_method"])
def test_clamp_tensor(case):
    fns = {
        "both": lambda a, lo, hi: torch.clamp(a, lo, hi),
        "min": lambda a, lo, hi: torch.clamp(a, min=lo),
        "max": lambda a, lo, hi: torch.clamp(a, max=hi),
        "min_only_method": lambda a, lo, hi: torch.clamp_min(a, lo),
        "max_only_method": lambda a, lo, hi: torch.clamp_max(a, hi),
    }
    check_op(fns[case], [randn(3, 4), randn(4) - 0.5, randn(3, 1) + 0.5])


def test_clamp_min_max_scalar():
    check_op(lambda a: a.clamp_min(0.1) + a.clamp_max(-0.2), [randn(3, 4)],
             expect_ops={"aten::clamp_min", "aten::clamp_max"})


def test_clamp_dynamic():
    check_op(lambda a: a.clamp(-0.5, 0.5), [randn(4, 3)], dynamic_shapes=dyn({0: BATCH}),
             extra_inputs=[[randn(13, 3)]])


def test_atan2_quadrants():
    y = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 2.0, -2.0, 0.0, 0.5])
    x = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 3.0])
    check_op(torch.atan2, [y, x], expect_ops={"aten::atan2"})


def test_truncate_double():
    check_op(lambda a, b, i: (a * b + 1.5, a > b, i * 3 + i // 2), [torch.randn(3, 4, dtype=torch.float64),
                                                                     torch.randn(4, dtype=torch.float64),
                                                                     torch.randint(-9, 9, (3, 4))],
             truncate_double=True)


def test_max_min_other():
    check_op(lambda a, b: (torch.max(a, b), torch.min(a, b)), [randn(3, 4), randn(4)])
