"""cdist (aten::_cdist_forward) and cross products (linalg_cross, cross) against eager."""

import pytest
import torch

import ember
from harness import DTYPES_FLOAT, DTYPES_INT, _Wrap, assert_close, check_op
from harness import dynamic as _dyn

P_VALUES = [0.0, 1.0, 2.0, 3.0, 0.5, float("inf")]


def _r(*shape, dtype=torch.float32):
    if not dtype.is_floating_point:
        return torch.randint(-9, 9, shape, dtype=dtype)
    return torch.randn(*shape, dtype=dtype)


# ---- cdist ----

@pytest.mark.parametrize("p", P_VALUES)
def test_cdist(p):
    check_op(lambda a, b: torch.cdist(a, b, p=p), [_r(3, 4), _r(5, 4)],
             expect_ops={"aten::_cdist_forward"})


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cdist_half(p, dtype):
    # PyTorch has no CPU cdist for f16/bf16 (CUDA has): compare with f32 eager rounded to dtype.
    a, b = _r(3, 4, dtype=dtype), _r(5, 4, dtype=dtype)
    module = _Wrap(lambda x, y: torch.cdist(x, y, p=p)).eval()
    ep = torch.export.export(module, (a, b))
    report = ember.dynamo.CompilationReport()
    compiled = ember.dynamo.compile(ep, [a, b], device="cpu", min_block_size=1,
                                    require_full_compilation=True, report=report)
    assert report.engines and not report.fallback, str(report)
    with torch.no_grad():
        assert_close(compiled(a, b), torch.cdist(a.float(), b.float(), p=p).to(dtype))


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 5, 4)), ((2, 3, 4), (5, 4)),
                                    ((1, 3, 2), (3, 4, 2)), ((2, 1, 3, 2), (1, 2, 4, 2))])
def test_cdist_batch_broadcast(p, shapes):
    a, b = shapes
    check_op(lambda x, y: torch.cdist(x, y, p=p), [_r(*a), _r(*b)])


def test_cdist_duplicate_rows():
    # Equal rows give exact zeros (sqrt of 0, not of a rounding error).
    x = _r(4, 3)
    check_op(lambda a, b: torch.cdist(a, b), [x, x.clone()])


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_cdist_dynamic(p):
    n = torch.export.Dim("n", min=2, max=16)
    m = torch.export.Dim("m", min=2, max=16)
    check_op(lambda a, b: torch.cdist(a, b, p=p), [_r(3, 4), _r(5, 4)],
             dynamic_shapes=_dyn({0: n}, {0: m}),
             extra_inputs=[[_r(7, 4), _r(2, 4)], [_r(16, 4), _r(16, 4)]])


def test_cdist_batch_dynamic():
    b = torch.export.Dim("b", min=1, max=6)
    check_op(lambda x, y: torch.cdist(x, y), [_r(2, 3, 4), _r(2, 5, 4)],
             dynamic_shapes=_dyn({0: b}, {0: b}), extra_inputs=[[_r(5, 3, 4), _r(5, 5, 4)]])


def test_cdist_f64_truncated():
    check_op(lambda a, b: torch.cdist(a, b), [_r(3, 4).double(), _r(2, 4).double()],
             truncate_double=True)


# ---- cross ----

@pytest.mark.parametrize("dtype", DTYPES_FLOAT + DTYPES_INT)
def test_linalg_cross(dtype):
    check_op(lambda a, b: torch.linalg.cross(a, b), [_r(4, 3, dtype=dtype), _r(4, 3, dtype=dtype)],
             expect_ops={"aten::linalg_cross"})


@pytest.mark.parametrize("dim,shape", [(0, (3, 2, 4)), (1, (2, 3, 4)), (-2, (2, 3, 4)),
                                       (-3, (3, 2, 4)), (2, (2, 4, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_cross_dim(dim, shape, dtype):
    check_op(lambda a, b: torch.linalg.cross(a, b, dim=dim),
             [_r(*shape, dtype=dtype), _r(*shape, dtype=dtype)])


@pytest.mark.parametrize("shapes", [((4, 3), (1, 3)), ((1, 3), (5, 3)), ((2, 1, 3), (1, 4, 3)),
                                    ((3,), (3,))])
def test_cross_broadcast(shapes):
    a, b = shapes
    check_op(lambda x, y: torch.linalg.cross(x, y), [_r(*a), _r(*b)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_cross_default_dim(dtype):
    # aten::cross without dim: the first dim of size 3.
    check_op(lambda a, b: torch.ops.aten.cross(a, b), [_r(2, 3, 3, dtype=dtype), _r(2, 3, 3, dtype=dtype)],
             expect_ops={"aten::cross"})
    check_op(lambda a, b: torch.cross(a, b, dim=1), [_r(4, 3, dtype=dtype), _r(4, 3, dtype=dtype)])


def test_cross_dynamic():
    n = torch.export.Dim("n", min=1, max=16)
    check_op(lambda a, b: torch.linalg.cross(a, b), [_r(4, 3), _r(4, 3)],
             dynamic_shapes=_dyn({0: n}, {0: n}),
             extra_inputs=[[_r(1, 3), _r(1, 3)], [_r(16, 3), _r(16, 3)]])
