"""embedding_bag (aten::_embedding_bag_forward_only / _embedding_bag) against eager."""

import pytest
import torch
import torch.nn.functional as F

from fallback import check_fallback
from harness import DTYPES_FLOAT, check_op, dynamic as _dyn

MODES = ["sum", "mean", "max"]


def _i(*values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype)


def _w(dtype=torch.float32):
    return torch.randn(10, 3, dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_embedding_bag(mode, dtype):
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode),
             [_w(dtype), _i(1, 2, 4, 5, 4, 7), _i(0, 2, 3)],
             expect_ops={"aten::_embedding_bag_forward_only"})


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_empty_bags(mode):
    # Bags 1 and 3 are empty: zeros, as in PyTorch.
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode),
             [_w(), _i(3, 1, 4, 1, 5), _i(0, 2, 2, 5)])


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_include_last_offset(mode):
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode, include_last_offset=True),
             [_w(), _i(9, 0, 3, 3, 8), _i(0, 1, 4, 5)])


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_single_bag(mode):
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode), [_w(), _i(2, 6, 6), _i(0)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_idx", [0, 4, -1])
def test_embedding_bag_padding_idx(mode, padding_idx):
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode, padding_idx=padding_idx),
             [_w(), _i(0, 4, 9, 4, 4, 1, 0), _i(0, 3, 4)])


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_2d_input(mode):
    # A [B, L] input: fixed-size bags, PyTorch makes the offsets.
    check_op(lambda w, i: F.embedding_bag(i, w, mode=mode), [_w(), torch.randint(0, 10, (3, 4))])


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_int32(mode):
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode),
             [_w(), _i(1, 2, 4, 5, dtype=torch.int32), _i(0, 1, dtype=torch.int32)])


@pytest.mark.parametrize("include_last_offset", [False, True])
def test_embedding_bag_per_sample_weights(include_last_offset):
    offsets = _i(0, 2, 5) if include_last_offset else _i(0, 2)
    check_op(lambda w, i, o, s: F.embedding_bag(i, w, o, mode="sum", per_sample_weights=s,
                                                include_last_offset=include_last_offset),
             [_w(), _i(1, 2, 3, 2, 0), offsets, torch.rand(5)])


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_module(mode):
    bag = torch.nn.EmbeddingBag(12, 4, mode=mode)
    check_op(bag, [torch.randint(0, 12, (7,)), _i(0, 3, 3)])


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_dynamic(mode):
    n = torch.export.Dim("n", min=2, max=32)
    b = torch.export.Dim("b", min=2, max=8)
    check_op(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode),
             [_w(), _i(1, 2, 4, 5, 4, 7), _i(0, 2, 3)],
             dynamic_shapes=_dyn(None, {0: n}, {0: b}),
             extra_inputs=[[_w(), torch.randint(0, 10, (20,)), _i(0, 5, 5, 9, 19)],
                           [_w(), _i(3, 3), _i(0, 1)]])


def test_embedding_bag_used_offset2bag_fallback():
    def fn(w, i, o):
        out, offset2bag, _, _ = torch.ops.aten._embedding_bag(w, i, o, False, 1)
        return out * 2, offset2bag + 1
    check_fallback(fn, [_w(), _i(1, 2, 4), _i(0, 1)], "embedding_bag")
