"""Matrix products (mm, bmm, matmul, mv, dot, linear, addmm, addmv, baddbmm, t) against eager."""

import pytest
import torch
from torch import nn

from fallback import check_fallback
from harness import DTYPES_FLOAT, check_op

BATCH = torch.export.Dim("batch", min=2, max=8)



def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_mm(dtype):
    check_op(torch.mm, [_r(3, 5, dtype=dtype), _r(5, 4, dtype=dtype)], expect_ops={"aten::mm"})


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_bmm(dtype):
    check_op(torch.bmm, [_r(2, 3, 5, dtype=dtype), _r(2, 5, 4, dtype=dtype)],
             expect_ops={"aten::bmm"})


@pytest.mark.parametrize("shapes", [
    ((3, 5), (5, 4)),
    ((2, 3, 5), (5, 4)),
    ((5,), (2, 5, 4)),
    ((2, 3, 5), (5,)),
    ((2, 1, 3, 5), (4, 5, 2)),
    ((5,), (5,)),
])
def test_matmul(shapes):
    check_op(torch.matmul, [_r(*shapes[0]), _r(*shapes[1])], expect_ops={"aten::matmul"})


def test_mv_dot():
    check_op(torch.mv, [_r(3, 5), _r(5)])
    check_op(torch.dot, [_r(5), _r(5)])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(dtype, bias):
    torch.manual_seed(0)
    m = nn.Linear(6, 4, bias=bias).to(dtype)
    check_op(m, [_r(2, 3, 6, dtype=dtype)], expect_ops={"aten::linear"})


def test_linear_dynamic_batch():
    torch.manual_seed(0)
    m = nn.Linear(6, 4)
    check_op(m, [_r(3, 6)], dynamic_shapes=({0: BATCH},), extra_inputs=[[_r(7, 6)], [_r(2, 6)]])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("beta,alpha", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.5)])
def test_addmm(dtype, beta, alpha):
    check_op(lambda s, a, b: torch.addmm(s, a, b, beta=beta, alpha=alpha),
             [_r(4, dtype=dtype), _r(3, 5, dtype=dtype), _r(5, 4, dtype=dtype)],
             expect_ops={"aten::addmm"})


def test_addmm_beta_zero_ignores_nan():
    s = torch.full((3, 4), float("nan"))
    check_op(lambda s, a, b: torch.addmm(s, a, b, beta=0.0), [s, _r(3, 5), _r(5, 4)])


@pytest.mark.parametrize("beta,alpha", [(1.0, 1.0), (0.5, 2.0)])
def test_baddbmm_addmv(beta, alpha):
    check_op(lambda s, a, b: torch.baddbmm(s, a, b, beta=beta, alpha=alpha),
             [_r(2, 3, 4), _r(2, 3, 5), _r(2, 5, 4)])
    check_op(lambda s, a, b: torch.addmv(s, a, b, beta=beta, alpha=alpha),
             [_r(3), _r(3, 5), _r(5)])


def test_t():
    check_op(lambda a, b: torch.mm(a.t(), b), [_r(5, 3), _r(5, 4)])


def test_matmul_dynamic():
    seq = torch.export.Dim("seq", min=2, max=16)
    check_op(torch.matmul, [_r(2, 5, 8), _r(8, 3)], dynamic_shapes=(({0: BATCH, 1: seq}, None),),
             extra_inputs=[[_r(4, 9, 8), _r(8, 3)]])


def test_integer_matmul_falls_back():
    """Integer products are not converted: the node runs in PyTorch instead."""
    a = torch.randint(-5, 5, (3, 4))
    b = torch.randint(-5, 5, (4, 2))
    check_fallback(lambda a, b: torch.mm(a, b) + 1, [a, b], "mm")
