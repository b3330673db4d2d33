"""Cast, copy and tensor-creation converters (casts_and_creation.cpp) against PyTorch eager."""

import pytest
import torch

from fallback import check_fallback
from harness import DEVICE, DTYPES_FLOAT, DTYPES_INT, check_op

BATCH = torch.export.Dim("batch", min=1, max=16)

ALL_DTYPES = DTYPES_FLOAT + DTYPES_INT + [torch.int8, torch.uint8, torch.bool]


def dyn(*specs):
    """dynamic_shapes for a lambda (its inputs arrive as *args)."""
    return (tuple(specs),)


def randn(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


def sample(dtype, *shape):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape) * 50).to(dtype)
    lo = 0 if dtype == torch.uint8 else -100
    return torch.randint(lo, 100, shape, dtype=dtype)


# ---------------------------------------------------------------- casts

@pytest.mark.parametrize("src,to", [(a, b) for a in ALL_DTYPES for b in ALL_DTYPES if a != b], ids=str)
def test_to_dtype(src, to):
    check_op(lambda x: x.to(to), [sample(src, 3, 4)], expect_ops={"aten::_to_copy"})


def test_to_dtype_special_float_values():
    x = torch.tensor([0.0, -0.0, 1.5, -1.5, 2.7, -2.7, 1e6])
    check_op(lambda a: (a.to(torch.int32), a.to(torch.bool), a.half()), [x])


def test_type_as_and_float_methods():
    check_op(lambda a, b: (a.type_as(b), b.float(), a.long()), [randn(3, 4), torch.randint(0, 9, (3, 4))])


def test_to_copy_dynamic():
    check_op(lambda x: x.to(torch.float16) * 2, [randn(4, 3)], dynamic_shapes=dyn({0: BATCH}),
             extra_inputs=[[randn(10, 3)]])


def test_to_with_device_and_copy():
    """A copy to the engine's own device is a cast inside the engine; to another device (a
    .to("cpu") in a CUDA program) the validator leaves it to PyTorch, where the transfer is
    real (the partitioner test covers the CPU case of this rule on CI)."""
    fn = lambda x: x.to("cpu", torch.float16, copy=True) + 1  # noqa: E731
    if DEVICE == "cpu":
        check_op(fn, [randn(3, 4)], expect_ops={"aten::_to_copy"})
    else:
        check_fallback(fn, [randn(3, 4)], "aten::_to_copy", device=DEVICE)


# ---------------------------------------------------------------- identity ops

@pytest.mark.parametrize("case", ["clone", "detach", "contiguous_channels_last", "dropout_eval",
                                  "alias"])
def test_identity_ops(case):
    fns = {
        "clone": lambda x: x.clone() * 2,
        "detach": lambda x: x.detach() + 1,
        "contiguous_channels_last": lambda x: x.contiguous(memory_format=torch.channels_last) - 1,
        "dropout_eval": lambda x: torch.nn.functional.dropout(x, 0.5, training=False) * 2,
        "alias": lambda x: torch.ops.aten.alias(x) * 3,
    }
    check_op(fns[case], [randn(1, 2, 3, 4)])


# ---------------------------------------------------------------- fills

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_full(dtype):
    value = True if dtype == torch.bool else (7 if not dtype.is_floating_point else 1.25)
    check_op(lambda x: (torch.full((2, 3), value, dtype=dtype), x + 1), [randn(2, 3)],
             expect_ops={"aten::full"})


def test_full_float_value_int_dtype():
    check_op(lambda x: x + torch.full((3,), 2.0, dtype=torch.int64), [torch.randint(0, 5, (2, 3))])


@pytest.mark.parametrize("case", ["zeros", "ones", "zeros_f16", "ones_int", "new_zeros", "new_ones",
                                  "new_full", "empty_filled", "new_empty_filled"])
def test_fill_size(case):
    fns = {
        "zeros": lambda x: x + torch.zeros(2, 3),
        "ones": lambda x: x + torch.ones(3),
        "zeros_f16": lambda x: torch.zeros(2, 3, dtype=torch.float16) + x.half(),
        "ones_int": lambda x: x * torch.ones(2, 3, dtype=torch.int32),
        "new_zeros": lambda x: x.new_zeros(2, 3) + x,
        "new_ones": lambda x: x.new_ones(3) + x,
        "new_full": lambda x: x.new_full((2, 3), -4.5) + x,
        "empty_filled": lambda x: torch.empty(2, 3).fill_(0.5) + x,
        "new_empty_filled": lambda x: x.new_empty((2, 3)).fill_(2.0) * x,
    }
    check_op(fns[case], [randn(2, 3)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
@pytest.mark.parametrize("case", ["full_like", "zeros_like", "ones_like", "fill"])
def test_fill_like(case, dtype):
    fns = {
        "full_like": lambda x: torch.full_like(x, 3),
        "zeros_like": torch.zeros_like,
        "ones_like": torch.ones_like,
        "fill": lambda x: x.clone().fill_(1),
    }
    check_op(fns[case], [sample(dtype, 3, 4)])


def test_like_with_dtype():
    check_op(lambda x: (torch.zeros_like(x, dtype=torch.int32), torch.full_like(x, 2.5, dtype=torch.float16)),
             [randn(3, 4)])


def test_fill_tensor_value():
    check_op(lambda x, v: x.clone().fill_(v), [randn(3, 4), torch.tensor(1.75)])


def test_fill_dynamic():
    check_op(lambda x: (torch.zeros(x.shape[0], 3) + x, torch.ones_like(x), torch.full_like(x, -1.0)),
             [randn(4, 3)], dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[randn(9, 3)], [randn(1, 3)]])


def test_scalar_tensor():
    check_op(lambda x: x * torch.scalar_tensor(2.5), [randn(3, 4)], expect_ops={"aten::scalar_tensor"})


# ---------------------------------------------------------------- arange

@pytest.mark.parametrize("case", ["end", "start_end", "step", "negative_step", "float_step",
                                  "int32", "float16"])
def test_arange(case):
    fns = {
        "end": lambda x: torch.arange(5) + x,
        "start_end": lambda x: torch.arange(-2, 3) * x,
        "step": lambda x: torch.arange(1, 10, 2) + x,
        "negative_step": lambda x: torch.arange(10, 0, -3) + x,
        "float_step": lambda x: torch.arange(0.5, 2.0, 0.3) + x,
        "int32": lambda x: torch.arange(4, dtype=torch.int32) + x,
        "float16": lambda x: torch.arange(0, 1, 0.25, dtype=torch.float16) + x,
    }
    fn = fns[case]
    n = fn(torch.zeros(())).shape[0]
    x = torch.randint(0, 5, (n,)) if case in ("end", "start_end", "step", "negative_step", "int32") else randn(n)
    check_op(fn, [x])


def test_arange_dynamic_end():
    check_op(lambda x: torch.arange(x.shape[0]) + x, [torch.randint(0, 9, (5,))],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[torch.randint(0, 9, (12,))]])


def test_arange_dynamic_float():
    check_op(lambda x: torch.arange(x.shape[1], dtype=torch.float32) * x, [randn(2, 6)],
             dynamic_shapes=dyn({1: BATCH}), extra_inputs=[[randn(2, 3)], [randn(2, 16)]])


# ---- linspace ----

@pytest.mark.parametrize("start,end,steps", [(0, 1, 5), (-3.5, 2.25, 8), (2, -2, 7), (0, 10, 1),
                                             (1e-3, 1e3, 33), (5, 5, 4), (0, 1, 2)])
def test_linspace(start, end, steps):
    check_op(lambda x: x + torch.linspace(start, end, steps), [randn(steps)],
             expect_ops={"aten::linspace"})


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_linspace_dtype(dtype):
    check_op(lambda x: x * torch.linspace(-1, 3, 6, dtype=dtype), [randn(2, 6, dtype=dtype)])


def test_linspace_broadcast_dynamic():
    check_op(lambda x: x * torch.linspace(0, 2, 4), [randn(3, 4)], dynamic_shapes=dyn({0: BATCH}),
             extra_inputs=[[randn(16, 4)], [randn(1, 4)]])


def test_linspace_int_fallback():
    from fallback import check_fallback
    check_fallback(lambda x: x + torch.linspace(0, 10, 4, dtype=torch.int64), [sample(torch.int64, 4)],
                   "linspace")
