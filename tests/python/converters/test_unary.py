"""Unary pointwise converters (unary.cpp) against PyTorch eager."""

import pytest
import torch

from harness import DEVICE, DTYPES_FLOAT, DTYPES_INT, check_op

BATCH = torch.export.Dim("batch", min=1, max=16)


def dyn(*specs):
    """dynamic_shapes for a lambda (its inputs arrive as *args)."""
    return (tuple(specs),)


def uniform(lo, hi, *shape, dtype=torch.float32):
    return (torch.rand(shape) * (hi - lo) + lo).to(dtype)


# op -> (function, aten key, input domain)
FLOAT_OPS = {
    "exp": (torch.exp, "aten::exp", (-4, 4)),
    "expm1": (torch.expm1, "aten::expm1", (-3, 3)),
    "log": (torch.log, "aten::log", (0.05, 10)),
    "log2": (torch.log2, "aten::log2", (0.05, 10)),
    "log10": (torch.log10, "aten::log10", (0.05, 10)),
    "log1p": (torch.log1p, "aten::log1p", (-0.9, 5)),
    "sqrt": (torch.sqrt, "aten::sqrt", (0, 9)),
    "rsqrt": (torch.rsqrt, "aten::rsqrt", (0.1, 9)),
    "reciprocal": (torch.reciprocal, "aten::reciprocal", (0.2, 5)),
    "sin": (torch.sin, "aten::sin", (-4, 4)),
    "cos": (torch.cos, "aten::cos", (-4, 4)),
    "tan": (torch.tan, "aten::tan", (-1.2, 1.2)),
    "asin": (torch.asin, "aten::asin", (-0.95, 0.95)),
    "acos": (torch.acos, "aten::acos", (-0.95, 0.95)),
    "atan": (torch.atan, "aten::atan", (-5, 5)),
    "sinh": (torch.sinh, "aten::sinh", (-3, 3)),
    "cosh": (torch.cosh, "aten::cosh", (-3, 3)),
    "asinh": (torch.asinh, "aten::asinh", (-5, 5)),
    "acosh": (torch.acosh, "aten::acosh", (1.05, 6)),
    "atanh": (torch.atanh, "aten::atanh", (-0.9, 0.9)),
    "erf": (torch.erf, "aten::erf", (-3, 3)),
    "exp2": (torch.exp2, "aten::exp2", (-4, 4)),
    "abs": (torch.abs, "aten::abs", (-3, 3)),
    "neg": (torch.neg, "aten::neg", (-3, 3)),
    "sign": (torch.sign, "aten::sign", (-3, 3)),
    "ceil": (torch.ceil, "aten::ceil", (-3, 3)),
    "floor": (torch.floor, "aten::floor", (-3, 3)),
    "round": (torch.round, "aten::round", (-3, 3)),
    "trunc": (torch.trunc, "aten::trunc", (-3, 3)),
    "frac": (torch.frac, "aten::frac", (-3, 3)),
    "square": (torch.square, "aten::square", (-3, 3)),
}


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("op", sorted(FLOAT_OPS))
def test_float_unary(op, dtype):
    fn, key, (lo, hi) = FLOAT_OPS[op]
    check_op(fn, [uniform(lo, hi, 3, 4, 5, dtype=dtype)], expect_ops={key})


@pytest.mark.parametrize("op", ["exp", "log", "sqrt", "sin", "reciprocal", "erf", "expm1", "log2"])
@pytest.mark.parametrize("dtype", DTYPES_INT)
def test_math_of_int_is_float(op, dtype):
    fn, _, _ = FLOAT_OPS[op]
    check_op(fn, [torch.randint(1, 6, (3, 4), dtype=dtype)])


@pytest.mark.parametrize("op", ["abs", "neg", "sign", "ceil", "floor", "round", "trunc", "square"])
@pytest.mark.parametrize("dtype", DTYPES_INT + [torch.int8])
def test_int_unary(op, dtype):
    fn, _, _ = FLOAT_OPS[op]
    check_op(fn, [torch.randint(-9, 9, (3, 4), dtype=dtype)])


def test_round_half_to_even():
    check_op(torch.round, [torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, 3.51])])


def test_round_decimals_zero():
    check_op(lambda x: torch.round(x, decimals=0), [uniform(-3, 3, 4, 5)])


def test_round_decimals_rejected():
    # decimals != 0 falls back to PyTorch (and still gives the right answer).
    check_op(lambda x: torch.round(x, decimals=2) + 1, [uniform(-3, 3, 4, 5)], require_full=False)


def test_expm1_log1p_small_values():
    # Where exp(x) - 1 and log(1 + x) cancel: the converters must stay accurate.
    x = torch.tensor([1e-8, -1e-8, 1e-5, -3e-6, 1e-3, 0.0, 50.0, -30.0])
    for fn, arg in ((torch.expm1, x), (torch.log1p, x.abs())):
        compiled = check_op(fn, [arg])
        # The harness's absolute tolerance hides cancellation near 0; check relative error too.
        arg = arg.to(DEVICE)
        torch.testing.assert_close(compiled(arg), fn(arg), rtol=1e-5, atol=0)


def test_special_values():
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1.0])
    check_op(lambda a: (torch.isinf(a), torch.isnan(a), torch.isfinite(a)), [x],
             expect_ops={"aten::isinf", "aten::isnan", "aten::isfinite"})
    check_op(torch.expm1, [x])
    check_op(torch.log1p, [x])
    check_op(torch.sign, [x])
    check_op(torch.trunc, [x])


@pytest.mark.parametrize("dtype", DTYPES_INT + [torch.bool])
def test_classification_of_int(dtype):
    x = torch.randint(0, 2, (3, 4)).to(dtype)
    check_op(lambda a: (torch.isinf(a), torch.isnan(a), torch.isfinite(a)), [x])


def test_sign_bool():
    check_op(torch.sign, [torch.rand(3, 4) > 0.5])


def test_square_bool():
    check_op(torch.square, [torch.rand(3, 4) > 0.5])


def test_unary_dynamic():
    check_op(lambda x: torch.exp(x) + torch.log1p(x.abs()), [uniform(-2, 2, 4, 3)],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[uniform(-2, 2, 12, 3)], [uniform(-2, 2, 1, 3)]])


def test_unary_0d():
    check_op(lambda x: torch.sqrt(x) + torch.trunc(x), [torch.tensor(2.75)])
