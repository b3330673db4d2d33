"""Activation and softmax converters (activations.cpp) against PyTorch eager."""

import pytest
import torch
import torch.nn.functional as F

from harness import DTYPES_FLOAT, DTYPES_INT, check_op

BATCH = torch.export.Dim("batch", min=1, max=16)


def dyn(*specs):
    """dynamic_shapes for a lambda (its inputs arrive as *args)."""
    return (tuple(specs),)


def randn(*shape, dtype=torch.float32):
    return (torch.randn(shape) * 3).to(dtype)


ACTIVATIONS = {
    "relu": (F.relu, "aten::relu"),
    "relu6": (F.relu6, None),
    "sigmoid": (torch.sigmoid, "aten::sigmoid"),
    "tanh": (torch.tanh, "aten::tanh"),
    "gelu": (F.gelu, "aten::gelu"),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), "aten::gelu"),
    "silu": (F.silu, None),
    "hardtanh": (F.hardtanh, "aten::hardtanh"),
    "hardtanh_range": (lambda x: F.hardtanh(x, -2.0, 0.5), "aten::hardtanh"),
    "hardswish": (F.hardswish, None),
    "hardsigmoid": (F.hardsigmoid, None),
    "leaky_relu": (F.leaky_relu, "aten::leaky_relu"),
    "leaky_relu_slope": (lambda x: F.leaky_relu(x, 0.2), "aten::leaky_relu"),
    "elu": (F.elu, "aten::elu"),
    "elu_alpha": (lambda x: F.elu(x, alpha=0.5), "aten::elu"),
    "selu": (F.selu, None),
    "softplus": (F.softplus, None),
    "softplus_beta": (lambda x: F.softplus(x, beta=2.0, threshold=5.0), None),
    "mish": (F.mish, None),
    "threshold": (lambda x: F.threshold(x, 0.5, -1.0), None),
}


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation(op, dtype):
    fn, key = ACTIVATIONS[op]
    check_op(fn, [randn(2, 3, 8, dtype=dtype)], expect_ops={key} if key else None)


def test_activation_dynamic():
    check_op(lambda x: F.gelu(x) + torch.sigmoid(x) * F.silu(x), [randn(4, 6)],
             dynamic_shapes=dyn({0: BATCH}), extra_inputs=[[randn(15, 6)], [randn(1, 6)]])


@pytest.mark.parametrize("dtype", DTYPES_INT)
def test_relu_int(dtype):
    check_op(F.relu, [torch.randint(-5, 5, (3, 4), dtype=dtype)], expect_ops={"aten::relu"})


@pytest.mark.parametrize("dtype", DTYPES_INT)
def test_sigmoid_tanh_of_int(dtype):
    check_op(lambda x: (torch.sigmoid(x), torch.tanh(x)), [torch.randint(-3, 3, (3, 4), dtype=dtype)])


@pytest.mark.parametrize("num_parameters", [1, 3])
@pytest.mark.parametrize("rank", [2, 4])
def test_prelu(num_parameters, rank):
    m = torch.nn.PReLU(num_parameters)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.1, 0.5, num_parameters))
    shape = (2, 3) if rank == 2 else (2, 3, 4, 5)
    check_op(m, [randn(*shape)])


def test_nan_passes_through():
    x = torch.tensor([float("nan"), -1.0, 0.0, 2.0])
    check_op(lambda a: (F.relu(a), F.hardtanh(a), torch.sigmoid(a), F.gelu(a)), [x])


# The decomposition table decides between softmax.int and _softmax; both are converted.
SOFTMAX = {
    "softmax": lambda x, d: torch.softmax(x, d),
    "log_softmax": lambda x, d: torch.log_softmax(x, d),
}


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("op", sorted(SOFTMAX))
def test_softmax(op, dim, dtype):
    fn = SOFTMAX[op]
    check_op(lambda x: fn(x, dim), [randn(3, 4, 5, dtype=dtype)])


@pytest.mark.parametrize("op", sorted(SOFTMAX))
def test_softmax_with_dtype(op):
    # softmax(dtype=f32) of an f16 input: cast first, then softmax in f32.
    fn = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}[op]
    check_op(lambda x: fn(x, -1, dtype=torch.float32), [randn(3, 6, dtype=torch.float16)])


def test_softmax_dynamic():
    seq = torch.export.Dim("seq", min=2, max=32)
    check_op(lambda x: torch.softmax(x, -1), [randn(2, 8)], dynamic_shapes=dyn({0: BATCH, 1: seq}),
             extra_inputs=[[randn(5, 17)], [randn(1, 2)]])


def test_softmax_large_values():
    check_op(lambda x: torch.softmax(x, -1), [torch.tensor([[1000.0, 1001.0, -1000.0], [0.0, 0.0, 0.0]])])
