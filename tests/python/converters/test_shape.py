"""Views, permutes, concatenation/splitting, slicing, gathers, scatters, padding and upsampling
against eager."""

import pytest
import torch
import torch.nn.functional as F

from fallback import check_fallback
from harness import DTYPES_FLOAT, check_op, dynamic as _dyn, random_tensor as _r

BATCH = torch.export.Dim("batch", min=2, max=8)
DTYPES_ALL = DTYPES_FLOAT + [torch.int32, torch.int64, torch.bool]


# ---- views ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_view_permute_transpose(dtype):
    check_op(lambda x: x.view(2, -1, 4).permute(2, 0, 1).transpose(0, -1).reshape(-1),
             [_r(2, 3, 4, dtype=dtype)])


def test_reshape_dynamic():
    check_op(lambda x: x.reshape(x.shape[0], -1) + 1, [_r(3, 4, 5)],
             dynamic_shapes=_dyn({0: BATCH}),
             extra_inputs=[[_r(7, 4, 5)]])


def test_flatten_unflatten():
    check_op(lambda x: torch.flatten(x, 1).unflatten(1, (5, -1)) + 1, [_r(2, 5, 3, 4)])
    check_op(lambda x: torch.flatten(x) + 1, [_r(2, 3, 4)])


def test_flatten_dynamic():
    check_op(lambda x: torch.flatten(x, 0, 1) + 1, [_r(3, 4, 5)], dynamic_shapes=_dyn({0: BATCH}),
             extra_inputs=[[_r(6, 4, 5)]])


@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_squeeze_unsqueeze(dtype):
    check_op(lambda x: x.unsqueeze(-1).unsqueeze(0).squeeze(2).squeeze(),
             [_r(3, 1, 4, dtype=dtype)])


def test_squeeze_dims():
    check_op(lambda x: torch.squeeze(x, (1, 3)) + 1, [_r(2, 1, 4, 1)])


@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_expand(dtype):
    check_op(lambda x: x.expand(2, 3, -1, 4), [_r(3, 1, 1, dtype=dtype)])


def test_expand_dynamic():
    check_op(lambda x, y: x.expand(y.shape[0], -1, 5) + y, [_r(1, 3, 1), _r(4, 3, 5)],
             dynamic_shapes=_dyn({}, {0: BATCH}), extra_inputs=[[_r(1, 3, 1), _r(7, 3, 5)]])


def test_expand_as():
    check_op(lambda x, y: x.expand_as(y) * 2, [_r(3, 1), _r(3, 5)])


# ---- cat / stack / split ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dtype, dim):
    check_op(lambda a, b: torch.cat([a, b, a], dim),
             [_r(2, 3, 4, dtype=dtype), _r(2, 3, 4, dtype=dtype)])


def test_cat_mixed_dtypes():
    check_op(lambda a, b: torch.cat([a, b], 1), [_r(2, 3), _r(2, 2, dtype=torch.float16)])
    check_op(lambda a, b: torch.cat([a, b], 0), [_r(2, 3, dtype=torch.int32), _r(1, 3)])


def test_cat_dynamic():
    check_op(lambda a, b: torch.cat([a, b], 0), [_r(3, 4), _r(2, 4)],
             dynamic_shapes=_dyn({0: BATCH}, None), extra_inputs=[[_r(6, 4), _r(2, 4)]])


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim):
    check_op(lambda a, b: torch.stack([a, b], dim), [_r(2, 3), _r(2, 3)])


@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_split_chunk_unbind(dtype):
    check_op(lambda x: x.split(2, 1), [_r(2, 7, 3, dtype=dtype)])
    check_op(lambda x: x.split([1, 4, 2], -2), [_r(2, 7, 3, dtype=dtype)])
    check_op(lambda x: x.chunk(3, 0), [_r(8, 3, dtype=dtype)])
    check_op(lambda x: x.unbind(1), [_r(2, 3, 4, dtype=dtype)])


def test_split_dynamic():
    check_op(lambda x: [t * 2 for t in x.split([2, 3], 1)], [_r(3, 5)],
             dynamic_shapes=_dyn({0: BATCH}), extra_inputs=[[_r(8, 5)]])


def test_split_dynamic_dim():
    seq = torch.export.Dim("seq", min=4, max=32)
    check_op(lambda x: [t * 2 for t in x.split([2, x.shape[1] - 2], 1)], [_r(3, 6)],
             dynamic_shapes=_dyn({1: seq}), extra_inputs=[[_r(3, 13)]])


# ---- slicing ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_slice(dtype):
    check_op(lambda x: x[1:, :-1, ::2], [_r(4, 5, 7, dtype=dtype)])
    check_op(lambda x: x[:, -3:100, 1:6:3], [_r(4, 5, 7, dtype=dtype)])


def test_slice_dynamic():
    seq = torch.export.Dim("seq", min=4, max=32)
    check_op(lambda x: x[:, 1:-1] * 2, [_r(3, 6)], dynamic_shapes=_dyn({0: BATCH, 1: seq}),
             extra_inputs=[[_r(5, 13)], [_r(2, 32)]])
    check_op(lambda x: x[:, 2:] * 2, [_r(3, 6)], dynamic_shapes=_dyn({1: seq}),
             extra_inputs=[[_r(3, 4)]])
    check_op(lambda x: x[:, :3:2] * 2, [_r(3, 6)], dynamic_shapes=_dyn({1: seq}),
             extra_inputs=[[_r(3, 4)]])


def test_slice_empty():
    check_op(lambda x: torch.cat([x[:, 5:], x], 1) * 2, [_r(3, 5)])


@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_select_narrow(dtype):
    check_op(lambda x: x[:, 1], [_r(3, 4, 2, dtype=dtype)])
    check_op(lambda x: x[-1, :, -2], [_r(3, 4, 2, dtype=dtype)])
    check_op(lambda x: x.narrow(1, 1, 2), [_r(3, 4, 2, dtype=dtype)])


def test_select_dynamic():
    check_op(lambda x: x[:, -1] * 2, [_r(3, 6)], dynamic_shapes=_dyn({0: BATCH}),
             extra_inputs=[[_r(5, 6)]])


@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_slice_scatter(dtype):
    def r(*shape):
        return _r(*shape, dtype=dtype)
    check_op(lambda x, s: torch.slice_scatter(x, s, 1, 1, 3), [r(3, 5), r(3, 2)],
             expect_ops={"aten::slice_scatter"})
    check_op(lambda x, s: torch.slice_scatter(x, s, 0, -2), [r(4, 3), r(2, 3)])
    check_op(lambda x, s: torch.slice_scatter(x, s, 0, 0, 2), [r(4, 3), r(2, 3)])
    check_op(lambda x, s: torch.slice_scatter(x, s, 1), [r(2, 3), r(2, 3)])


def test_slice_scatter_step():
    check_op(lambda x, s: torch.slice_scatter(x, s, 1, 1, 6, 2), [_r(2, 7), _r(2, 3)],
             expect_ops={"aten::slice_scatter"})
    check_op(lambda x, s: torch.slice_scatter(x, s, 0, None, None, 3), [_r(7, 2), _r(3, 2)])


def test_slice_scatter_window_mask():
    """Swin's shifted-window mask: slices of a fresh tensor assigned in place."""
    def mask(x):
        m = x.new_zeros(8, 8)
        count = 0
        for h in (slice(0, -4), slice(-4, -2), slice(-2, None)):
            for w in (slice(0, -4), slice(-4, -2), slice(-2, None)):
                m[h, w] = count
                count += 1
        return x + m
    check_op(mask, [_r(2, 8, 8)], expect_ops={"aten::slice_scatter"})


def test_slice_scatter_dynamic():
    seq = torch.export.Dim("seq", min=4, max=32)
    check_op(lambda x, s: torch.slice_scatter(x, s, 1, 1, 3), [_r(3, 6), _r(3, 2)],
             dynamic_shapes=_dyn({0: BATCH, 1: seq}, {0: BATCH}),
             extra_inputs=[[_r(5, 13), _r(5, 2)], [_r(2, 4), _r(2, 2)]])
    check_op(lambda x, s: torch.slice_scatter(x, s, 0, 2), [_r(6, 3), _r(4, 3)],
             dynamic_shapes=_dyn({0: BATCH + 2}, {0: BATCH}),
             extra_inputs=[[_r(8, 3), _r(6, 3)]])


# ---- repeat, tile, flip, roll, pixel shuffle ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_repeat_tile(dtype):
    check_op(lambda x: x.repeat(2, 1, 3), [_r(3, 4, dtype=dtype)])
    check_op(lambda x: x.tile(2), [_r(3, 4, dtype=dtype)])


def test_repeat_dynamic():
    check_op(lambda x: x.repeat(2, 3) * 2, [_r(3, 4)], dynamic_shapes=_dyn({0: BATCH}),
             extra_inputs=[[_r(5, 4)]])


@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_flip(dtype):
    check_op(lambda x: x.flip(0, -1), [_r(3, 4, 5, dtype=dtype)])


def test_flip_dynamic():
    check_op(lambda x: x.flip(0) * 2, [_r(3, 4)], dynamic_shapes=_dyn({0: BATCH}),
             extra_inputs=[[_r(6, 4)]])


def test_roll():
    # torch.export decomposes roll unless Ember keeps it; either way the result must match.
    check_op(lambda x: x.roll(2, 1), [_r(3, 5)])
    check_op(lambda x: x.roll((1, -3), (0, 1)), [_r(3, 5)])
    check_op(lambda x: x.roll(4), [_r(3, 5)])


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle(r):
    check_op(lambda x: F.pixel_shuffle(x, r) * 2, [_r(2, 2 * r * r, 3, 4)])
    check_op(lambda x: F.pixel_unshuffle(x, r) * 2, [_r(2, 2, 3 * r, 2 * r)])


# ---- gathers and scatters ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_index_select(dtype):
    idx = torch.tensor([2, 0, 2])
    check_op(lambda x, i: torch.index_select(x, 1, i), [_r(3, 4, dtype=dtype), idx])


def test_gather():
    idx = torch.randint(0, 4, (3, 2, 5))
    check_op(lambda x, i: torch.gather(x, 1, i), [_r(3, 4, 5), idx])
    check_op(lambda x, i: torch.gather(x, -1, i), [_r(3, 4, 5), torch.randint(0, 5, (3, 4, 2))])


@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
def test_embedding(dtype):
    torch.manual_seed(0)
    m = torch.nn.Embedding(10, 4).to(dtype)
    check_op(m, [torch.tensor([[1, 2, 9], [0, 0, 3]])])


def test_embedding_dynamic():
    torch.manual_seed(0)
    m = torch.nn.Embedding(10, 4)
    seq = torch.export.Dim("seq", min=2, max=16)
    check_op(m, [torch.tensor([[1, 2, 9], [0, 0, 3]])], dynamic_shapes=({0: BATCH, 1: seq},),
             extra_inputs=[[torch.randint(0, 10, (5, 11))]])


def test_index_tensor():
    check_op(lambda x, i: x[:, i], [_r(3, 4, 5), torch.tensor([[3, 0], [1, -1]])])
    check_op(lambda x, i: x[i], [_r(3, 4), torch.tensor([2, 0])])
    check_op(lambda x, i: x[:, :, i], [_r(3, 4, 5), torch.tensor([4, 1])])


def test_index_bool_falls_back():
    check_fallback(lambda x, m: x[m] * 2, [_r(3, 4), torch.rand(3, 4) > 0.5], "index")


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + [torch.int64])
def test_scatter(dtype):
    idx = torch.tensor([[0, 1, 2], [2, 0, 1]])
    check_op(lambda x, i, s: x.scatter(1, i, s),
             [_r(2, 4, dtype=dtype), idx, _r(2, 3, dtype=dtype)])
    check_op(lambda x, i: x.scatter(0, i, 5), [_r(3, 3, dtype=dtype), idx])


def test_scatter_src_larger_than_index():
    idx = torch.tensor([[0, 1], [2, 0]])
    check_op(lambda x, i, s: x.scatter(1, i, s), [_r(2, 4), idx, _r(3, 5)])


def test_scatter_add_reduce():
    idx = torch.tensor([[0, 1, 0], [2, 2, 1]])
    check_op(lambda x, i, s: x.scatter_add(1, i, s), [_r(2, 4), idx, _r(2, 3)])
    for reduce in ("sum", "prod", "amax", "amin"):
        check_op(lambda x, i, s: x.scatter_reduce(1, i, s, reduce), [_r(2, 4), idx, _r(2, 3)])


# ---- padding ----

@pytest.mark.parametrize("dtype", DTYPES_ALL)
def test_constant_pad(dtype):
    value = 1 if dtype != torch.float16 else 1.5
    check_op(lambda x: F.pad(x, (1, 2, 0, 3), value=value), [_r(2, 3, 4, dtype=dtype)])


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_reflect_replicate_pad(mode, nd):
    pad = [1, 2, 2, 0, 1, 1][: 2 * nd]
    check_op(lambda x: F.pad(x, pad, mode=mode) * 2, [_r(2, 3, *([4] * nd))])


def test_pad_dynamic():
    check_op(lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect") * 2, [_r(2, 3, 4, 4)],
             dynamic_shapes=_dyn({0: BATCH}), extra_inputs=[[_r(5, 3, 4, 4)]])


# ---- upsampling ----

@pytest.mark.parametrize("dtype", DTYPES_FLOAT)
@pytest.mark.parametrize("mode,align", [("nearest", None), ("bilinear", False),
                                        ("bilinear", True), ("bicubic", False),
                                        ("nearest-exact", None)])
def test_upsample_scale(dtype, mode, align):
    check_op(lambda x: F.interpolate(x, scale_factor=2, mode=mode, align_corners=align),
             [_r(2, 3, 4, 5, dtype=dtype)])


@pytest.mark.parametrize("mode,align", [("nearest", None), ("bilinear", False),
                                        ("bilinear", True)])
def test_upsample_size(mode, align):
    check_op(lambda x: F.interpolate(x, size=(7, 3), mode=mode, align_corners=align),
             [_r(2, 3, 4, 5)])
    check_op(lambda x: F.interpolate(x, scale_factor=1.5, mode=mode, align_corners=align),
             [_r(2, 3, 4, 5)])


@pytest.mark.parametrize("mode,nd", [("nearest", 1), ("linear", 1), ("nearest", 3),
                                     ("trilinear", 3)])
def test_upsample_1d_3d(mode, nd):
    check_op(lambda x: F.interpolate(x, scale_factor=2, mode=mode), [_r(2, 3, *([4] * nd))])


def test_upsample_dynamic():
    size = torch.export.Dim("size", min=2, max=16)
    check_op(lambda x: F.interpolate(x, scale_factor=2, mode="nearest") * 2, [_r(2, 3, 4, 4)],
             dynamic_shapes=_dyn({0: BATCH, 2: size}), extra_inputs=[[_r(5, 3, 9, 4)]])


def test_constant_pad_negative():
    """Negative pads crop."""
    check_op(lambda x: F.pad(x, (-1, 2, 1, -2), value=3.0), [_r(2, 5, 6)])
