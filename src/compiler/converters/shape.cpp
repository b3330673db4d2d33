// Shape and data-movement family: views and reshapes, permutes, expand, squeeze/unsqueeze,
// concatenation and splitting, slicing and selecting, repeat/tile/flip/roll, pixel shuffle,
// gathers (index_select, gather, embedding, single-tensor indexing), scatters, padding and
// upsampling.
//
// Shapes are computed with DimExpr arithmetic from the engine tensors' own shapes, so the same
// layers serve every size of a dynamic dim; symbols are never evaluated here.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::Shape;
using engine::Tensor;

// ---------------------------------------------------------------------------------------------
// Argument positions

/// view/reshape/_unsafe_view(self, size); expand(self, size, implicit=False).
struct ViewArgs {
  enum { self = 0, size = 1 };
};
/// permute(self, dims); flip(self, dims).
struct DimsArgs {
  enum { self = 0, dims = 1 };
};
/// transpose.int(self, dim0, dim1).
struct TransposeArgs {
  enum { self = 0, dim0 = 1, dim1 = 2 };
};
/// unsqueeze/squeeze.dim/squeeze.dims/unbind.int/select.int(self, dim[, index]).
struct DimArgs {
  enum { self = 0, dim = 1, index = 2 };
};
/// flatten.using_ints(self, start_dim=0, end_dim=-1).
struct FlattenArgs {
  enum { self = 0, start_dim = 1, end_dim = 2 };
};
/// unflatten.int(self, dim, sizes).
struct UnflattenArgs {
  enum { self = 0, dim = 1, sizes = 2 };
};
/// cat/stack(tensors, dim=0).
struct CatArgs {
  enum { tensors = 0, dim = 1 };
};
/// split.Tensor(self, split_size, dim=0); split_with_sizes(self, split_sizes, dim=0);
/// chunk(self, chunks, dim=0).
struct SplitArgs {
  enum { self = 0, size = 1, dim = 2 };
};
/// slice.Tensor(self, dim=0, start=None, end=None, step=1).
struct SliceArgs {
  enum { self = 0, dim = 1, start = 2, end = 3, step = 4 };
};
/// slice_scatter(self, src, dim=0, start=None, end=None, step=1).
struct SliceScatterArgs {
  enum { self = 0, src = 1, dim = 2, start = 3, end = 4, step = 5 };
};
/// narrow(self, dim, start, length).
struct NarrowArgs {
  enum { self = 0, dim = 1, start = 2, length = 3 };
};
/// roll(self, shifts, dims=[]).
struct RollArgs {
  enum { self = 0, shifts = 1, dims = 2 };
};
/// index_select(self, dim, index); gather(self, dim, index, sparse_grad=False).
struct IndexDimArgs {
  enum { self = 0, dim = 1, index = 2 };
};
/// embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False).
struct EmbeddingArgs {
  enum { weight = 0, indices = 1 };
};
/// index.Tensor(self, indices: Tensor?[]).
struct IndexArgs {
  enum { self = 0, indices = 1 };
};
/// scatter.src/.value(self, dim, index, src|value); scatter_add(self, dim, index, src);
/// scatter_reduce.two(self, dim, index, src, reduce, include_self=True).
struct ScatterArgs {
  enum { self = 0, dim = 1, index = 2, src = 3, reduce = 4, include_self = 5 };
};
/// constant_pad_nd(self, pad, value=0); reflection/replication_pad{1,2,3}d(self, padding).
struct PadArgs {
  enum { self = 0, pad = 1, value = 2 };
};

// ---------------------------------------------------------------------------------------------
// Helpers

Tensor* reshape(ConversionContext& ctx, const Node& node, Tensor* x, const Shape& shape) {
  return ctx.net().add_reshape(x, shape, ctx.layer_name(node, "reshape"))->output();
}

Tensor* transpose(ConversionContext& ctx, const Node& node, Tensor* x, std::vector<int64_t> perm) {
  return ctx.net().add_transpose(x, std::move(perm), ctx.layer_name(node, "transpose"))->output();
}

Tensor* concat(ConversionContext& ctx, const Node& node, std::vector<Tensor*> xs, int64_t axis) {
  if (xs.size() == 1) return xs[0];
  return ctx.net().add_concatenation(std::move(xs), axis, ctx.layer_name(node))->output();
}

/// x[..., start : start + size (: stride), ...] along `axis`. A slice that is empty for certain
/// starts at 0: the Slice layer needs its start inside the dim even when reading nothing, and
/// PyTorch's clamped start may be the dim itself (x[:, n:]).
Tensor* slice_axis(ConversionContext& ctx, const Node& node, Tensor* x, int64_t axis,
                   const DimExpr& start, const DimExpr& size, int64_t stride = 1) {
  const size_t rank = static_cast<size_t>(x->rank());
  Shape out = x->shape();
  out[axis] = size;
  const bool empty = size.is_constant() && size.constant() == 0;
  Shape begin(rank, DimExpr(0));
  begin[axis] = empty ? DimExpr(0) : start;
  std::vector<int64_t> strides(rank, 1);
  strides[axis] = stride;
  return ctx.net().add_slice(x, begin, out, strides, ctx.layer_name(node, "slice"))->output();
}

/// `x` broadcast to `shape` (numpy rules, x right-aligned): Select(true, x, x) broadcasts any
/// dtype exactly, where x + 0 would not (bool, -0.0).
Tensor* broadcast_to(ConversionContext& ctx, const Node& node, Tensor* x, const Shape& shape) {
  if (x->shape() == shape) return x;
  engine::FillParams p;
  p.shape = shape;
  p.dtype = DataType::kBool;
  p.value = 1.0;
  Tensor* all = ctx.net().add_fill(p, ctx.layer_name(node, "expand_mask"))->output();
  return ctx.net().add_select(all, x, x, ctx.layer_name(node, "expand"))->output();
}

/// `x`'s shape without dim `axis`.
Shape without_axis(const Tensor* x, int64_t axis) {
  Shape s = x->shape();
  s.erase(s.begin() + axis);
  return s;
}

int64_t dim_arg(const Node& node, size_t i, int rank, int64_t fallback = 0) {
  return normalize_dim(node.arg_int_or(i, fallback), rank, node);
}

bool is_integer_index(const Value* v) {
  return v->dtype() == ScalarType::kI64 || v->dtype() == ScalarType::kI32;
}

/// A python-style index (negative counts from the end) clamped to [0, size], as slicing does.
DimExpr clamp_index(const DimExpr& i, const DimExpr& size) {
  if (i.is_constant()) {
    const int64_t v = i.constant();
    if (v == 0) return 0;
    if (v < 0)
      return size.is_constant() ? DimExpr(std::max<int64_t>(size.constant() + v, 0))
                                : max(size + i, DimExpr(0));
    if (v >= std::numeric_limits<int64_t>::max() / 2) return size;  // "to the end"
  }
  if (i == size) return size;
  return min(i, size);
}

// ---------------------------------------------------------------------------------------------
// Validators

Reason validate_static_list(const Node& node, size_t i, const char* what) {
  for (const DimExpr& d : node.arg_dims(i)) {
    if (!d.is_constant()) return std::string(what) + " must be constant ints, got " + d.to_string();
  }
  return std::nullopt;
}

Reason validate_repeat(const Node& node, const CompileSettings&) {
  if (Reason r = validate_static_list(node, 1, "repeat counts")) return r;
  for (int64_t r : node.arg_ints(1)) {
    if (r < 1) return "repeat counts must be >= 1 (an empty result is not supported)";
  }
  if (node.op() == "aten::repeat" &&
      node.arg_ints(1).size() < static_cast<size_t>(node.arg_tensor(0)->rank())) {
    return "repeat needs at least one count per dim";
  }
  return std::nullopt;
}

Reason validate_roll(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(RollArgs::self);
  std::vector<int64_t> dims =
      node.arg_is_none(RollArgs::dims) ? std::vector<int64_t>{} : node.arg_ints(RollArgs::dims);
  if (dims.empty()) {
    if (!engine::shape_is_static(x->shape())) return "roll without dims needs a static shape";
    return std::nullopt;
  }
  if (dims.size() != node.arg_ints(RollArgs::shifts).size()) {
    return "roll needs one shift per dim";
  }
  for (int64_t d : dims) {
    if (!x->shape()[normalize_dim(d, x->rank(), node)].is_constant()) {
      return "roll of a dynamic dim is not supported";
    }
  }
  return std::nullopt;
}

Reason validate_index_input(const Node& node, size_t index) {
  const Value* idx = node.arg_tensor(index);
  if (!is_integer_index(idx)) {
    return std::string("indices must be i32 or i64, got ") + scalar_type_name(idx->dtype());
  }
  return std::nullopt;
}
Reason validate_index_select(const Node& node, const CompileSettings&) {
  return validate_index_input(node, IndexDimArgs::index);
}
Reason validate_embedding(const Node& node, const CompileSettings&) {
  return validate_index_input(node, EmbeddingArgs::indices);
}

Reason validate_index(const Node& node, const CompileSettings&) {
  const std::vector<Value*> indices = node.arg_tensor_list(IndexArgs::indices);
  int count = 0;
  for (const Value* v : indices) {
    if (v == nullptr) continue;
    ++count;
    if (!is_integer_index(v)) {
      return std::string("indexing with a ") + scalar_type_name(v->dtype()) +
             " tensor is not supported (boolean masks have data-dependent shapes)";
    }
  }
  if (count != 1) {
    return "indexing with " + std::to_string(count) +
           " index tensors is not supported (only one, as in x[:, idx])";
  }
  return std::nullopt;
}

Reason validate_scatter(const Node& node, const CompileSettings&) {
  if (Reason r = validate_index_input(node, ScatterArgs::index)) return r;
  if (node.op() == "aten::scatter_reduce.two") {
    const std::string& reduce = node.arg_string(ScatterArgs::reduce);
    if (reduce != "sum" && reduce != "prod" && reduce != "amax" && reduce != "amin") {
      return "scatter_reduce with reduce='" + reduce + "' is not supported";
    }
    if (!node.arg_bool_or(ScatterArgs::include_self, true)) {
      return "scatter_reduce with include_self=False is not supported";
    }
  }
  return std::nullopt;
}

Reason validate_slice_scatter(const Node& node, const CompileSettings&) {
  const int64_t step = node.arg_int_or(SliceScatterArgs::step, 1);
  if (step < 1) return "slice_scatter step must be positive";
  if (step > 1 && !node.arg_is_none(SliceScatterArgs::start)) {
    const DimExpr start = node.arg_dim(SliceScatterArgs::start);
    const DimExpr& n = node.arg_tensor(SliceScatterArgs::self)
                           ->shape()[normalize_dim(node.arg_int_or(SliceScatterArgs::dim, 0),
                                                   node.arg_tensor(0)->rank(), node)];
    if (!clamp_index(start, n).is_constant()) {
      return "slice_scatter with step > 1 needs a start that does not depend on a dynamic dim";
    }
  }
  return std::nullopt;
}

Reason validate_constant_pad(const Node& node, const CompileSettings&) {
  if (Reason r = validate_static_list(node, PadArgs::pad, "pads")) return r;
  const std::vector<int64_t> pad = node.arg_ints(PadArgs::pad);
  if (pad.size() % 2 != 0 || pad.size() / 2 > static_cast<size_t>(node.arg_tensor(0)->rank())) {
    return "pad needs an even number of values, two per padded dim";
  }
  if (node.op() != "aten::constant_pad_nd") {
    for (int64_t p : pad) {
      if (p < 0) return "negative reflection/replication padding is not supported";
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Split helpers: every output of the node gets a slice.

void set_split_outputs(ConversionContext& ctx, const Node& node, Tensor* x, int64_t axis,
                       const std::vector<DimExpr>& sizes) {
  if (sizes.size() != node.outputs().size()) {
    throw Error(node.describe() + ": " + std::to_string(sizes.size()) + " pieces for " +
                std::to_string(node.outputs().size()) + " outputs");
  }
  DimExpr start = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    ctx.set_output(node, i, slice_axis(ctx, node, x, axis, start, sizes[i]));
    start = start + sizes[i];
  }
}

/// Pieces of `piece` elements along a dim of size `size`; the last takes the rest.
std::vector<DimExpr> even_pieces(const DimExpr& size, const DimExpr& piece, size_t count) {
  std::vector<DimExpr> sizes;
  for (size_t i = 0; i + 1 < count; ++i) sizes.push_back(piece);
  if (count > 0) sizes.push_back(size - piece * DimExpr(static_cast<int64_t>(count - 1)));
  return sizes;
}

/// repeat: x (padded with leading 1-dims to len(repeats)) as [1, d0, 1, d1, ...], broadcast to
/// [r0, d0, r1, d1, ...], reshaped to [r0*d0, r1*d1, ...].
Tensor* repeat(ConversionContext& ctx, const Node& node, Tensor* x,
               const std::vector<int64_t>& repeats) {
  const int n = static_cast<int>(repeats.size());
  x = ctx.broadcast_rank(x, n);
  if (std::all_of(repeats.begin(), repeats.end(), [](int64_t r) { return r == 1; })) return x;
  Shape interleaved, expanded, out;
  for (int d = 0; d < n; ++d) {
    const DimExpr& dim = x->shape()[d];
    interleaved.insert(interleaved.end(), {DimExpr(1), dim});
    expanded.insert(expanded.end(), {DimExpr(repeats[d]), dim});
    out.push_back(DimExpr(repeats[d]) * dim);
  }
  Tensor* t = broadcast_to(ctx, node, reshape(ctx, node, x, interleaved), expanded);
  return reshape(ctx, node, t, out);
}

/// Rolls static dim `axis` by `shift`: the last `shift` elements move to the front.
Tensor* roll_axis(ConversionContext& ctx, const Node& node, Tensor* x, int64_t axis,
                  int64_t shift) {
  const int64_t n = x->shape()[axis].constant();
  if (n == 0) return x;
  const int64_t s = ((shift % n) + n) % n;
  if (s == 0) return x;
  return concat(
      ctx, node,
      {slice_axis(ctx, node, x, axis, n - s, s), slice_axis(ctx, node, x, axis, 0, n - s)}, axis);
}

/// PyTorch's pad list (before/after pairs from the last dim backward) as a Padding layer for
/// the positive entries and a Slice that crops for the negative ones.
Tensor* pad(ConversionContext& ctx, const Node& node, Tensor* x, const std::vector<int64_t>& pads,
            engine::PaddingMode mode, double value) {
  const size_t rank = static_cast<size_t>(x->rank());
  engine::PaddingParams p;
  p.mode = mode;
  p.value = value;
  p.pre.assign(rank, 0);
  p.post.assign(rank, 0);
  std::vector<int64_t> pre(rank, 0), post(rank, 0);
  for (size_t i = 0; i < pads.size() / 2; ++i) {
    const size_t d = rank - 1 - i;
    pre[d] = pads[2 * i];
    post[d] = pads[2 * i + 1];
    p.pre[d] = std::max<int64_t>(pre[d], 0);
    p.post[d] = std::max<int64_t>(post[d], 0);
  }
  if (p.pre != std::vector<int64_t>(rank, 0) || p.post != std::vector<int64_t>(rank, 0)) {
    x = ctx.net().add_padding(x, p, ctx.layer_name(node))->output();
  }
  for (size_t d = 0; d < rank; ++d) {
    if (pre[d] >= 0 && post[d] >= 0) continue;
    const int64_t crop_begin = std::max<int64_t>(-pre[d], 0);
    const int64_t crop_end = std::max<int64_t>(-post[d], 0);
    x = slice_axis(ctx, node, x, static_cast<int64_t>(d), crop_begin,
                   x->shape()[d] - DimExpr(crop_begin + crop_end));
  }
  return x;
}

/// Number of spatial dims of an upsample/pad op from its name ("..._bilinear2d.vec" -> 2).
size_t spatial_dims(const Node& node) {
  for (const char* tag : {"1d", "2d", "3d"}) {
    if (node.op().find(tag) != std::string::npos) return static_cast<size_t>(tag[0] - '0');
  }
  throw Error(node.describe() + ": cannot tell the number of spatial dims from the op name");
}

// ---------------------------------------------------------------------------------------------
// Upsampling

/// What an upsample node asks for, from either schema form:
///   *.vec(input, output_size?, [align_corners,] scale_factors?)
///   upsample_*{1,2,3}d(input, output_size, [align_corners,] scales_d?...)
struct UpsampleSpec {
  engine::ResizeMode mode = engine::ResizeMode::kNearest;
  bool exact = false;  ///< nearest-exact
  bool align_corners = false;
  std::vector<DimExpr> output_size;  ///< Spatial sizes, or empty.
  std::vector<double> scales;        ///< Spatial scale factors, or empty.
};

UpsampleSpec upsample_spec(const Node& node) {
  UpsampleSpec s;
  const std::string& op = node.op();
  const bool vec = op.size() > 4 && op.compare(op.size() - 4, 4, ".vec") == 0;
  const size_t nsp = spatial_dims(node);
  if (op.find("nearest") == std::string::npos) {
    s.mode = op.find("bicubic") != std::string::npos ? engine::ResizeMode::kCubic
                                                     : engine::ResizeMode::kLinear;
  }
  s.exact = op.find("nearest_exact") != std::string::npos;
  const bool has_align = s.mode != engine::ResizeMode::kNearest;
  if (has_align) s.align_corners = node.arg_bool(2);
  const size_t scales_at = has_align ? 3 : 2;
  if (!node.arg_is_none(1)) s.output_size = node.arg_dims(1);
  if (vec) {
    if (!node.arg_is_none(scales_at)) {
      const Arg& a = node.args()[scales_at];
      if (const auto* v = std::get_if<std::vector<double>>(&a)) {
        s.scales = *v;
      } else {
        for (int64_t i : node.arg_ints(scales_at)) s.scales.push_back(static_cast<double>(i));
      }
    }
  } else {
    bool any = false;
    for (size_t d = 0; d < nsp; ++d) any = any || !node.arg_is_none(scales_at + d);
    if (any) {
      for (size_t d = 0; d < nsp; ++d) s.scales.push_back(node.arg_double_or(scales_at + d, 0.0));
    }
  }
  if (s.scales.size() == 1) s.scales.resize(nsp, s.scales[0]);
  return s;
}

Reason validate_upsample(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(0);
  const size_t nsp = spatial_dims(node);
  if (x->rank() != static_cast<int>(nsp) + 2) {
    return "upsampling needs an input [N, C, *spatial] of rank " + std::to_string(nsp + 2);
  }
  const UpsampleSpec s = upsample_spec(node);
  if (s.mode != engine::ResizeMode::kNearest && !scalar_type_is_float(x->dtype())) {
    return "linear/cubic upsampling needs a float input";
  }
  if (s.output_size.empty()) {
    if (s.scales.size() != nsp) return "upsampling needs output_size or one scale per dim";
    for (size_t d = 0; d < nsp; ++d) {
      if (!(s.scales[d] > 0)) return "upsampling scales must be > 0";  // 0: a missing scale
      const DimExpr& in = x->shape()[2 + d];
      if (!in.is_constant() && s.scales[d] != std::floor(s.scales[d])) {
        return "a fractional scale factor over a dynamic dim is not supported";
      }
    }
  } else if (s.output_size.size() != nsp) {
    return "upsampling needs one output size per spatial dim";
  } else if (!s.scales.empty() &&
             std::any_of(s.scales.begin(), s.scales.end(), [](double v) { return !(v > 0); })) {
    return "upsampling with scale factors for some spatial dims only is not supported";
  }
  return std::nullopt;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Views

EMBER_CONVERTER(view, ({"aten::view", "aten::reshape", "aten::_unsafe_view"}), true, nullptr) {
  ctx.set_output(
      node, 0, reshape(ctx, node, ctx.input(node, ViewArgs::self), node.arg_dims(ViewArgs::size)));
}

EMBER_CONVERTER(permute, {"aten::permute"}, true, nullptr) {
  Tensor* x = ctx.input(node, DimsArgs::self);
  std::vector<int64_t> perm;
  for (int64_t d : node.arg_ints(DimsArgs::dims)) perm.push_back(normalize_dim(d, x->rank(), node));
  ctx.set_output(node, 0, x->rank() == 0 ? x : transpose(ctx, node, x, perm));
}

EMBER_CONVERTER(transpose, {"aten::transpose.int"}, true, nullptr) {
  Tensor* x = ctx.input(node, TransposeArgs::self);
  if (x->rank() < 2) {
    ctx.set_output(node, 0, x);
    return;
  }
  std::vector<int64_t> perm(static_cast<size_t>(x->rank()));
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
  std::swap(perm[dim_arg(node, TransposeArgs::dim0, x->rank())],
            perm[dim_arg(node, TransposeArgs::dim1, x->rank())]);
  ctx.set_output(node, 0, transpose(ctx, node, x, perm));
}

EMBER_CONVERTER(expand, ({"aten::expand", "aten::expand_as"}), true, nullptr) {
  Tensor* x = ctx.input(node, ViewArgs::self);
  Shape target;
  if (node.op() == "aten::expand_as") {
    target = ctx.input(node, 1)->shape();
  } else {
    target = node.arg_dims(ViewArgs::size);
    const int lead = static_cast<int>(target.size()) - x->rank();
    for (int d = lead; d < static_cast<int>(target.size()); ++d) {
      if (target[d].is_constant() && target[d].constant() == -1) target[d] = x->shape()[d - lead];
    }
  }
  ctx.set_output(node, 0, broadcast_to(ctx, node, x, target));
}

EMBER_CONVERTER(unsqueeze, {"aten::unsqueeze"}, true, nullptr) {
  Tensor* x = ctx.input(node, DimArgs::self);
  Shape s = x->shape();
  s.insert(s.begin() + dim_arg(node, DimArgs::dim, x->rank() + 1), DimExpr(1));
  ctx.set_output(node, 0, reshape(ctx, node, x, s));
}

// Removes the listed dims (all dims for aten::squeeze) that have size 1; PyTorch leaves other
// dims in place.
EMBER_CONVERTER(squeeze, ({"aten::squeeze", "aten::squeeze.dim", "aten::squeeze.dims"}), true,
                nullptr) {
  Tensor* x = ctx.input(node, DimArgs::self);
  const int rank = x->rank();
  std::vector<bool> listed(static_cast<size_t>(rank), node.op() == "aten::squeeze");
  if (node.op() != "aten::squeeze") {
    for (int64_t d : node.arg_ints(DimArgs::dim)) listed[normalize_dim(d, rank, node)] = true;
  }
  Shape s;
  for (int d = 0; d < rank; ++d) {
    const DimExpr& n = x->shape()[d];
    if (!(listed[d] && n.is_constant() && n.constant() == 1)) s.push_back(n);
  }
  ctx.set_output(node, 0, static_cast<int>(s.size()) == rank ? x : reshape(ctx, node, x, s));
}

EMBER_CONVERTER(flatten, {"aten::flatten.using_ints"}, true, nullptr) {
  Tensor* x = ctx.input(node, FlattenArgs::self);
  if (x->rank() == 0) {
    ctx.set_output(node, 0, reshape(ctx, node, x, {1}));
    return;
  }
  const int64_t start = dim_arg(node, FlattenArgs::start_dim, x->rank(), 0);
  const int64_t end = dim_arg(node, FlattenArgs::end_dim, x->rank(), -1);
  Shape s(x->shape().begin(), x->shape().begin() + start);
  DimExpr n = 1;
  for (int64_t d = start; d <= end; ++d) n = n * x->shape()[d];
  s.push_back(n);
  s.insert(s.end(), x->shape().begin() + end + 1, x->shape().end());
  ctx.set_output(node, 0, reshape(ctx, node, x, s));
}

EMBER_CONVERTER(unflatten, {"aten::unflatten.int"}, true, nullptr) {
  Tensor* x = ctx.input(node, UnflattenArgs::self);
  const int64_t dim = dim_arg(node, UnflattenArgs::dim, x->rank());
  const std::vector<DimExpr> sizes = node.arg_dims(UnflattenArgs::sizes);
  Shape s(x->shape().begin(), x->shape().begin() + dim);
  // A -1 among sizes is inferred from the unflattened dim, not from the whole tensor.
  DimExpr known = 1;
  for (const DimExpr& d : sizes) {
    if (!(d.is_constant() && d.constant() == -1)) known = known * d;
  }
  for (const DimExpr& d : sizes) {
    s.push_back(d.is_constant() && d.constant() == -1 ? floor_div(x->shape()[dim], known) : d);
  }
  s.insert(s.end(), x->shape().begin() + dim + 1, x->shape().end());
  ctx.set_output(node, 0, reshape(ctx, node, x, s));
}

// ---------------------------------------------------------------------------------------------
// Concatenation and splitting

EMBER_CONVERTER(cat, ({"aten::cat", "aten::concat", "aten::concatenate"}), true, nullptr) {
  const DataType dt = ctx.engine_dtype(node.output(0)->dtype());
  const int rank = node.output(0)->rank();
  const int64_t axis = dim_arg(node, CatArgs::dim, rank);
  std::vector<Tensor*> xs;
  for (const Value* v : node.arg_tensor_list(CatArgs::tensors)) {
    // PyTorch skips 1-d empty tensors of any other shape (legacy behavior).
    if (rank != 1 && v->rank() == 1 && v->shape()[0] == DimExpr(0)) continue;
    xs.push_back(ctx.cast(ctx.tensor(v), dt));
  }
  if (xs.empty()) throw Error(node.describe() + ": nothing to concatenate");
  ctx.set_output(node, 0, concat(ctx, node, xs, axis));
}

EMBER_CONVERTER(stack, {"aten::stack"}, true, nullptr) {
  const DataType dt = ctx.engine_dtype(node.output(0)->dtype());
  const int64_t axis = dim_arg(node, CatArgs::dim, node.output(0)->rank());
  std::vector<Tensor*> xs;
  for (const Value* v : node.arg_tensor_list(CatArgs::tensors)) {
    Tensor* x = ctx.cast(ctx.tensor(v), dt);
    Shape s = x->shape();
    s.insert(s.begin() + axis, DimExpr(1));
    xs.push_back(reshape(ctx, node, x, s));
  }
  ctx.set_output(node, 0, concat(ctx, node, xs, axis));
}

EMBER_CONVERTER(split,
                ({"aten::split.Tensor", "aten::split_with_sizes", "aten::split.sizes",
                  "aten::chunk", "aten::unsafe_split.Tensor", "aten::unsafe_split_with_sizes"}),
                true, nullptr) {
  Tensor* x = ctx.input(node, SplitArgs::self);
  const int64_t axis = dim_arg(node, SplitArgs::dim, x->rank());
  const DimExpr& n = x->shape()[axis];
  const size_t count = node.outputs().size();
  const std::string& op = node.op();
  std::vector<DimExpr> sizes;
  if (op == "aten::split_with_sizes" || op == "aten::split.sizes" ||
      op == "aten::unsafe_split_with_sizes") {
    sizes = node.arg_dims(SplitArgs::size);
  } else if (op == "aten::chunk") {
    const int64_t chunks = node.arg_int(SplitArgs::size);
    sizes = even_pieces(n, floor_div(n + DimExpr(chunks - 1), DimExpr(chunks)), count);
  } else {
    sizes = even_pieces(n, node.arg_dim(SplitArgs::size), count);
  }
  set_split_outputs(ctx, node, x, axis, sizes);
}

EMBER_CONVERTER(unbind, {"aten::unbind.int"}, true, nullptr) {
  Tensor* x = ctx.input(node, DimArgs::self);
  const int64_t axis = dim_arg(node, DimArgs::dim, x->rank());
  const Shape out = without_axis(x, axis);
  for (size_t i = 0; i < node.outputs().size(); ++i) {
    Tensor* s = slice_axis(ctx, node, x, axis, static_cast<int64_t>(i), 1);
    ctx.set_output(node, i, reshape(ctx, node, s, out));
  }
}

// ---------------------------------------------------------------------------------------------
// Slicing

EMBER_CONVERTER(slice, {"aten::slice.Tensor"}, true, nullptr) {
  Tensor* x = ctx.input(node, SliceArgs::self);
  const int64_t axis = dim_arg(node, SliceArgs::dim, x->rank());
  const int64_t step = node.arg_int_or(SliceArgs::step, 1);
  if (step < 1) throw Error(node.describe() + ": slice step must be positive");
  const DimExpr& n = x->shape()[axis];
  const DimExpr start = node.arg_is_none(SliceArgs::start)
                            ? DimExpr(0)
                            : clamp_index(node.arg_dim(SliceArgs::start), n);
  const DimExpr end =
      node.arg_is_none(SliceArgs::end) ? n : clamp_index(node.arg_dim(SliceArgs::end), n);
  DimExpr size = floor_div(end - start + DimExpr(step - 1), DimExpr(step));
  if (!size.is_constant() && !(start == DimExpr(0))) size = max(size, DimExpr(0));
  if (size.is_constant() && size.constant() < 0) size = 0;
  if (start == DimExpr(0) && size == n && step == 1) {
    ctx.set_output(node, 0, x);
    return;
  }
  ctx.set_output(node, 0, slice_axis(ctx, node, x, axis, start, size, step));
}

// self with self[..., start:end:step, ...] = src. Step 1 concatenates the untouched head and
// tail around src (any start, dynamic too); other steps scatter src along the axis at the
// indices start, start + step, ... (an arange broadcast to src's shape).
EMBER_CONVERTER(slice_scatter, {"aten::slice_scatter"}, true, validate_slice_scatter) {
  Tensor* x = ctx.input(node, SliceScatterArgs::self);
  Tensor* src = ctx.cast(ctx.input(node, SliceScatterArgs::src), x->dtype());
  const int64_t axis = dim_arg(node, SliceScatterArgs::dim, x->rank());
  const int64_t step = node.arg_int_or(SliceScatterArgs::step, 1);
  const DimExpr& n = x->shape()[axis];
  const DimExpr& len = src->shape()[axis];
  const DimExpr start = node.arg_is_none(SliceScatterArgs::start)
                            ? DimExpr(0)
                            : clamp_index(node.arg_dim(SliceScatterArgs::start), n);
  if (len.is_constant() && len.constant() == 0) {
    ctx.set_output(node, 0, x);
    return;
  }
  if (step == 1) {
    const DimExpr end = start + len;
    std::vector<Tensor*> pieces;
    if (!(start.is_constant() && start.constant() == 0)) {
      pieces.push_back(slice_axis(ctx, node, x, axis, DimExpr(0), start));
    }
    pieces.push_back(src);
    if (!(end == n)) pieces.push_back(slice_axis(ctx, node, x, axis, end, n - end));
    ctx.set_output(node, 0, concat(ctx, node, pieces, axis));
    return;
  }
  engine::FillParams f;
  f.op = engine::FillOp::kArange;
  f.shape = {len};
  f.dtype = DataType::kI64;
  f.start = static_cast<double>(start.constant());
  f.delta = static_cast<double>(step);
  Tensor* idx = ctx.net().add_fill(f, ctx.layer_name(node, "indices"))->output();
  Shape along(static_cast<size_t>(x->rank()), DimExpr(1));
  along[axis] = len;
  idx = broadcast_to(ctx, node, reshape(ctx, node, idx, along), src->shape());
  engine::ScatterParams p;
  p.axis = axis;
  ctx.set_output(node, 0, ctx.net().add_scatter(x, idx, src, p, ctx.layer_name(node))->output());
}

EMBER_CONVERTER(narrow, {"aten::narrow"}, true, nullptr) {
  Tensor* x = ctx.input(node, NarrowArgs::self);
  const int64_t axis = dim_arg(node, NarrowArgs::dim, x->rank());
  DimExpr start = node.arg_dim(NarrowArgs::start);
  if (start.is_constant() && start.constant() < 0) start = x->shape()[axis] + start;
  ctx.set_output(node, 0, slice_axis(ctx, node, x, axis, start, node.arg_dim(NarrowArgs::length)));
}

EMBER_CONVERTER(select, {"aten::select.int"}, true, nullptr) {
  Tensor* x = ctx.input(node, DimArgs::self);
  const int64_t axis = dim_arg(node, DimArgs::dim, x->rank());
  DimExpr index = node.arg_dim(DimArgs::index);
  if (index.is_constant() && index.constant() < 0) index = x->shape()[axis] + index;
  Tensor* s = slice_axis(ctx, node, x, axis, index, 1);
  ctx.set_output(node, 0, reshape(ctx, node, s, without_axis(x, axis)));
}

// ---------------------------------------------------------------------------------------------
// Repeat, flip, roll, pixel shuffle

EMBER_CONVERTER(repeat, ({"aten::repeat", "aten::tile"}), true, validate_repeat) {
  Tensor* x = ctx.input(node, 0);
  std::vector<int64_t> repeats = node.arg_ints(1);
  if (repeats.size() < static_cast<size_t>(x->rank())) {  // tile: missing counts are 1
    repeats.insert(repeats.begin(), static_cast<size_t>(x->rank()) - repeats.size(), 1);
  }
  ctx.set_output(node, 0, repeat(ctx, node, x, repeats));
}

EMBER_CONVERTER(flip, {"aten::flip"}, true, nullptr) {
  Tensor* x = ctx.input(node, DimsArgs::self);
  const size_t rank = static_cast<size_t>(x->rank());
  Shape start(rank, DimExpr(0));
  std::vector<int64_t> stride(rank, 1);
  bool any = false;
  for (int64_t d : node.arg_ints(DimsArgs::dims)) {
    const int64_t a = normalize_dim(d, x->rank(), node);
    start[a] = x->shape()[a] - DimExpr(1);
    stride[a] = -1;
    any = true;
  }
  if (!any || rank == 0) {
    ctx.set_output(node, 0, x);
    return;
  }
  ctx.set_output(node, 0,
                 ctx.net().add_slice(x, start, x->shape(), stride, ctx.layer_name(node))->output());
}

EMBER_CONVERTER(roll, {"aten::roll"}, true, validate_roll) {
  Tensor* x = ctx.input(node, RollArgs::self);
  const std::vector<int64_t> shifts = node.arg_ints(RollArgs::shifts);
  const std::vector<int64_t> dims =
      node.arg_is_none(RollArgs::dims) ? std::vector<int64_t>{} : node.arg_ints(RollArgs::dims);
  if (dims.empty()) {  // roll of the flattened tensor
    const Shape shape = x->shape();
    Tensor* flat = reshape(ctx, node, x, {engine::shape_numel(shape)});
    ctx.set_output(node, 0, reshape(ctx, node, roll_axis(ctx, node, flat, 0, shifts.at(0)), shape));
    return;
  }
  for (size_t i = 0; i < dims.size(); ++i) {
    x = roll_axis(ctx, node, x, normalize_dim(dims[i], x->rank(), node), shifts[i]);
  }
  ctx.set_output(node, 0, x);
}

// pixel_shuffle: [*, C*r*r, H, W] -> [*, C, H*r, W*r]; pixel_unshuffle is the inverse.
EMBER_CONVERTER(pixel_shuffle, ({"aten::pixel_shuffle", "aten::pixel_unshuffle"}), true, nullptr) {
  Tensor* x = ctx.input(node, 0);
  const int64_t r = node.arg_int(1);
  const int k = x->rank() - 3;
  if (k < 0) throw Error(node.describe() + ": needs an input of rank >= 3");
  const Shape& s = x->shape();
  const Shape lead(s.begin(), s.begin() + k);
  const DimExpr c = s[k], h = s[k + 1], w = s[k + 2];
  const DimExpr rr(r);
  std::vector<int64_t> perm;
  for (int64_t d = 0; d < k; ++d) perm.push_back(d);
  Shape split = lead, out = lead;
  if (node.op() == "aten::pixel_shuffle") {
    const DimExpr co = floor_div(c, rr * rr);
    split.insert(split.end(), {co, rr, rr, h, w});
    for (int64_t d : {0, 3, 1, 4, 2}) perm.push_back(k + d);
    out.insert(out.end(), {co, h * rr, w * rr});
  } else {
    const DimExpr ho = floor_div(h, rr), wo = floor_div(w, rr);
    split.insert(split.end(), {c, ho, rr, wo, rr});
    for (int64_t d : {0, 2, 4, 1, 3}) perm.push_back(k + d);
    out.insert(out.end(), {c * rr * rr, ho, wo});
  }
  Tensor* t = transpose(ctx, node, reshape(ctx, node, x, split), perm);
  ctx.set_output(node, 0, reshape(ctx, node, t, out));
}

// ---------------------------------------------------------------------------------------------
// Gathers and scatters

EMBER_CONVERTER(index_select, {"aten::index_select"}, true, validate_index_select) {
  Tensor* x = ctx.input(node, IndexDimArgs::self);
  Tensor* idx = ctx.input(node, IndexDimArgs::index);
  if (idx->rank() == 0) idx = reshape(ctx, node, idx, {1});
  engine::GatherParams p;
  p.axis = dim_arg(node, IndexDimArgs::dim, x->rank());
  ctx.set_output(node, 0, ctx.net().add_gather(x, idx, p, ctx.layer_name(node))->output());
}

EMBER_CONVERTER(gather, {"aten::gather"}, true, validate_index_select) {
  Tensor* x = ctx.input(node, IndexDimArgs::self);
  engine::GatherParams p;
  p.mode = engine::GatherMode::kElement;
  p.axis = dim_arg(node, IndexDimArgs::dim, x->rank());
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_gather(x, ctx.input(node, IndexDimArgs::index), p, ctx.layer_name(node))
                     ->output());
}

EMBER_CONVERTER(embedding, {"aten::embedding"}, true, validate_embedding) {
  engine::GatherParams p;
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_gather(ctx.input(node, EmbeddingArgs::weight),
                                 ctx.input(node, EmbeddingArgs::indices), p, ctx.layer_name(node))
                     ->output());
}

// x[..., idx, ...] with one index tensor at position k: numpy.take along k.
EMBER_CONVERTER(index, {"aten::index.Tensor"}, true, validate_index) {
  const std::vector<Value*> indices = node.arg_tensor_list(IndexArgs::indices);
  engine::GatherParams p;
  for (size_t k = 0; k < indices.size(); ++k) {
    if (indices[k] != nullptr) p.axis = static_cast<int64_t>(k);
  }
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_gather(ctx.input(node, IndexArgs::self), ctx.tensor(indices[p.axis]), p,
                                 ctx.layer_name(node))
                     ->output());
}

EMBER_CONVERTER(scatter,
                ({"aten::scatter.src", "aten::scatter.value", "aten::scatter_add",
                  "aten::scatter_reduce.two"}),
                true, validate_scatter) {
  Tensor* x = ctx.input(node, ScatterArgs::self);
  Tensor* idx = ctx.input(node, ScatterArgs::index);
  engine::ScatterParams p;
  p.axis = dim_arg(node, ScatterArgs::dim, x->rank());
  Tensor* updates = nullptr;
  if (node.op() == "aten::scatter.value") {
    engine::FillParams f;
    f.shape = idx->shape();
    f.dtype = x->dtype();
    f.value = node.arg_double(ScatterArgs::src);
    updates = ctx.net().add_fill(f, ctx.layer_name(node, "value"))->output();
  } else {
    updates = ctx.cast(ctx.input(node, ScatterArgs::src), x->dtype());
    if (updates->shape() != idx->shape()) {  // only src[:index.shape] is read
      updates =
          ctx.net()
              .add_slice(updates, Shape(idx->shape().size(), DimExpr(0)), idx->shape(),
                         std::vector<int64_t>(idx->shape().size(), 1), ctx.layer_name(node, "src"))
              ->output();
    }
  }
  if (node.op() == "aten::scatter_add") {
    p.reduction = engine::ScatterReduction::kSum;
  } else if (node.op() == "aten::scatter_reduce.two") {
    const std::string& r = node.arg_string(ScatterArgs::reduce);
    p.reduction = r == "sum"    ? engine::ScatterReduction::kSum
                  : r == "prod" ? engine::ScatterReduction::kProd
                  : r == "amax" ? engine::ScatterReduction::kMax
                                : engine::ScatterReduction::kMin;
  }
  ctx.set_output(node, 0,
                 ctx.net().add_scatter(x, idx, updates, p, ctx.layer_name(node))->output());
}

// ---------------------------------------------------------------------------------------------
// Padding

EMBER_CONVERTER(constant_pad, {"aten::constant_pad_nd"}, true, validate_constant_pad) {
  ctx.set_output(node, 0,
                 pad(ctx, node, ctx.input(node, PadArgs::self), node.arg_ints(PadArgs::pad),
                     engine::PaddingMode::kConstant, node.arg_double_or(PadArgs::value, 0.0)));
}

EMBER_CONVERTER(reflect_pad,
                ({"aten::reflection_pad1d", "aten::reflection_pad2d", "aten::reflection_pad3d",
                  "aten::replication_pad1d", "aten::replication_pad2d", "aten::replication_pad3d"}),
                true, validate_constant_pad) {
  const bool reflect = node.op().find("reflection") != std::string::npos;
  ctx.set_output(
      node, 0,
      pad(ctx, node, ctx.input(node, PadArgs::self), node.arg_ints(PadArgs::pad),
          reflect ? engine::PaddingMode::kReflect : engine::PaddingMode::kReplicate, 0.0));
}

// ---------------------------------------------------------------------------------------------
// Upsampling

EMBER_CONVERTER(
    upsample,
    ({"aten::upsample_nearest1d.vec", "aten::upsample_nearest2d.vec",
      "aten::upsample_nearest3d.vec", "aten::_upsample_nearest_exact1d.vec",
      "aten::_upsample_nearest_exact2d.vec", "aten::_upsample_nearest_exact3d.vec",
      "aten::upsample_linear1d.vec", "aten::upsample_bilinear2d.vec",
      "aten::upsample_trilinear3d.vec", "aten::upsample_bicubic2d.vec", "aten::upsample_nearest1d",
      "aten::upsample_nearest2d", "aten::upsample_nearest3d", "aten::upsample_linear1d",
      "aten::upsample_bilinear2d", "aten::upsample_trilinear3d", "aten::upsample_bicubic2d"}),
    true, validate_upsample) {
  Tensor* x = ctx.input(node, 0);
  const UpsampleSpec s = upsample_spec(node);
  const size_t nsp = spatial_dims(node);
  engine::ResizeParams p;
  p.mode = s.mode;
  if (s.mode == engine::ResizeMode::kNearest) {
    p.coordinate =
        s.exact ? engine::ResizeCoordinate::kHalfPixel : engine::ResizeCoordinate::kAsymmetric;
    p.rounding = s.exact ? engine::ResizeRounding::kHalfUp : engine::ResizeRounding::kFloor;
  } else {
    p.coordinate = s.align_corners ? engine::ResizeCoordinate::kAlignCorners
                                   : engine::ResizeCoordinate::kHalfPixel;
  }
  p.output = {x->shape()[0], x->shape()[1]};
  for (size_t d = 0; d < nsp; ++d) {
    const DimExpr& in = x->shape()[2 + d];
    if (!s.output_size.empty()) {
      p.output.push_back(s.output_size[d]);
    } else if (in.is_constant()) {
      p.output.push_back(
          static_cast<int64_t>(std::floor(static_cast<double>(in.constant()) * s.scales[d])));
    } else {
      p.output.push_back(in * DimExpr(static_cast<int64_t>(s.scales[d])));
    }
  }
  // PyTorch maps coordinates with the given scale factors (not the size ratio) unless
  // align_corners is set.
  if (!s.scales.empty() && !s.align_corners) {
    p.scales = {1.0, 1.0};
    p.scales.insert(p.scales.end(), s.scales.begin(), s.scales.end());
  }
  ctx.set_output(node, 0, ctx.net().add_resize(x, p, ctx.layer_name(node))->output());
}

}  // namespace ember::compiler
