// Strided views that are not plain slices: aten::diagonal (a strided slice over the two
// diagonal dims flattened into one) and aten::as_strided (static shapes: a Gather over the
// flattened input with a constant index tensor computed here), plus circular padding
// (aten::_pad_circular; the other paddings are in shape.cpp).
#include <algorithm>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {
namespace {

using engine::DataType;
using engine::Shape;
using engine::Tensor;

/// diagonal(self, offset=0, dim1=0, dim2=1).
struct DiagonalArgs {
  enum { self = 0, offset = 1, dim1 = 2, dim2 = 3 };
};
/// as_strided(self, size, stride, storage_offset=None).
struct AsStridedArgs {
  enum { self = 0, size = 1, stride = 2, storage_offset = 3 };
};
/// _pad_circular(self, pad).
struct PadArgs {
  enum { self = 0, pad = 1 };
};

/// Largest index tensor as_strided builds (elements).
constexpr int64_t kMaxAsStridedElements = int64_t{1} << 24;

Reason validate_diagonal(const Node& node, const CompileSettings&) {
  const int rank = node.arg_tensor(DiagonalArgs::self)->rank();
  if (rank < 2) return "diagonal needs a tensor of rank >= 2";
  const int64_t d1 = normalize_dim(node.arg_int_or(DiagonalArgs::dim1, 0), rank, node);
  const int64_t d2 = normalize_dim(node.arg_int_or(DiagonalArgs::dim2, 1), rank, node);
  if (d1 == d2) return "diagonal dimensions cannot be identical";
  return std::nullopt;
}

}  // namespace

// The two dims are moved last and flattened: element (i, i + offset) of an [n, m] matrix is at
// i * (m + 1) + offset of its flattening, so the diagonal is one strided slice.
EMBER_CONVERTER(diagonal, {"aten::diagonal"}, true, validate_diagonal) {
  auto& net = ctx.net();
  Tensor* x = ctx.input(node, DiagonalArgs::self);
  const int rank = x->rank();
  const int64_t offset = node.arg_int_or(DiagonalArgs::offset, 0);
  const int64_t d1 = normalize_dim(node.arg_int_or(DiagonalArgs::dim1, 0), rank, node);
  const int64_t d2 = normalize_dim(node.arg_int_or(DiagonalArgs::dim2, 1), rank, node);
  std::vector<int64_t> perm;
  Shape lead;
  for (int64_t d = 0; d < rank; ++d) {
    if (d != d1 && d != d2) {
      perm.push_back(d);
      lead.push_back(x->shape()[d]);
    }
  }
  perm.push_back(d1);
  perm.push_back(d2);
  const DimExpr n = x->shape()[d1], m = x->shape()[d2];
  bool identity = true;
  for (size_t i = 0; i < perm.size(); ++i)
    identity = identity && perm[i] == static_cast<int64_t>(i);
  if (!identity) x = net.add_transpose(x, perm, ctx.layer_name(node))->output();
  Shape flat = lead;
  flat.push_back(n * m);
  x = net.add_reshape(x, flat, ctx.layer_name(node))->output();
  DimExpr length = offset >= 0 ? min(n, m - DimExpr(offset)) : min(n + DimExpr(offset), m);
  length = length.is_constant() ? DimExpr(std::max<int64_t>(length.constant(), 0))
                                : max(length, DimExpr(0));
  const bool empty = length.is_constant() && length.constant() == 0;
  Shape start(flat.size(), DimExpr(0)), size = flat;
  if (!empty) start.back() = offset >= 0 ? DimExpr(offset) : DimExpr(-offset) * m;
  size.back() = length;
  std::vector<int64_t> stride(flat.size(), 1);
  // A stride of m + 1 needs a constant m; a symbolic m walks the diagonal with a gather instead.
  if (m.is_constant()) {
    stride.back() = m.constant() + 1;
    ctx.set_output(node, 0, net.add_slice(x, start, size, stride, ctx.layer_name(node))->output());
    return;
  }
  const DataType it = ctx.engine_dtype(ScalarType::kI64);
  engine::FillParams p;
  p.op = engine::FillOp::kArange;
  p.shape = {length};
  p.dtype = it;
  Tensor* i = net.add_fill(p, ctx.layer_name(node, "rows"))->output();
  Tensor* mm = ctx.cast(
      net.add_shape(ctx.input(node, DiagonalArgs::self), ctx.layer_name(node))->output(), it);
  mm = net.add_slice(mm, {DimExpr(d2)}, {DimExpr(1)}, {1}, ctx.layer_name(node))->output();
  Tensor* step = net.add_elementwise(mm, ctx.scalar(1, it, 1), engine::ElementWiseOp::kSum,
                                     ctx.layer_name(node))
                     ->output();
  Tensor* first = offset >= 0
                      ? ctx.scalar(static_cast<double>(offset), it, 1)
                      : net.add_elementwise(mm, ctx.scalar(static_cast<double>(-offset), it, 1),
                                            engine::ElementWiseOp::kProd, ctx.layer_name(node))
                            ->output();
  i = net.add_elementwise(i, step, engine::ElementWiseOp::kProd, ctx.layer_name(node))->output();
  i = net.add_elementwise(i, first, engine::ElementWiseOp::kSum, ctx.layer_name(node))->output();
  engine::GatherParams g;
  g.axis = static_cast<int64_t>(flat.size()) - 1;
  ctx.set_output(node, 0, net.add_gather(x, i, g, ctx.layer_name(node))->output());
}

// ---------------------------------------------------------------------------------------------
// as_strided

namespace {

/// Ops whose result is a view with non-trivial strides or a storage offset: as_strided of their
/// result reads the base tensor's storage in PyTorch, which an engine does not have.
bool is_strided_view(const std::string& op) {
  static const char* const kViews[] = {
      "aten::slice.Tensor",     "aten::select.int", "aten::transpose.int",
      "aten::permute",          "aten::t",          "aten::expand",
      "aten::narrow",           "aten::diagonal",   "aten::split.Tensor",
      "aten::split_with_sizes", "aten::unbind.int", "aten::chunk",
      "aten::as_strided",       "aten::unfold",     "aten::expand_as"};
  return std::find(std::begin(kViews), std::end(kViews), op) != std::end(kViews);
}

Reason validate_as_strided(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(AsStridedArgs::self);
  if (!engine::shape_is_static(x->shape())) return "as_strided needs a static input shape";
  if (x->producer() != nullptr && is_strided_view(x->producer()->op())) {
    return "as_strided of a strided view (" + x->producer()->op() +
           ") reads the base tensor's storage; only contiguous inputs are supported";
  }
  std::vector<int64_t> size, stride;
  try {
    size = node.arg_ints(AsStridedArgs::size);
    stride = node.arg_ints(AsStridedArgs::stride);
    (void)node.arg_int_or(AsStridedArgs::storage_offset, 0);
  } catch (const std::exception&) {
    return "as_strided needs constant sizes, strides and storage offset";
  }
  if (size.size() != stride.size()) return "as_strided needs one stride per size";
  const int64_t numel = engine::shape_numel(x->shape()).constant();
  int64_t last = node.arg_int_or(AsStridedArgs::storage_offset, 0), count = 1;
  for (size_t d = 0; d < size.size(); ++d) {
    if (size[d] < 0 || stride[d] < 0) return "as_strided needs non-negative sizes and strides";
    count *= size[d];
    if (size[d] > 0) last += (size[d] - 1) * stride[d];
  }
  if (count > kMaxAsStridedElements) return "as_strided output is too large for a constant index";
  if (count > 0 && (last >= numel || last < 0)) {
    return "as_strided reads past the end of its input (" + std::to_string(numel) + " elements)";
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(as_strided, {"aten::as_strided"}, false, validate_as_strided) {
  auto& net = ctx.net();
  Tensor* x = ctx.input(node, AsStridedArgs::self);
  const std::vector<int64_t> size = node.arg_ints(AsStridedArgs::size);
  const std::vector<int64_t> stride = node.arg_ints(AsStridedArgs::stride);
  const int64_t base = node.arg_int_or(AsStridedArgs::storage_offset, 0);
  // Flat index of every output element, row-major over `size`.
  std::vector<int64_t> index{base};
  for (size_t d = 0; d < size.size(); ++d) {
    std::vector<int64_t> next;
    next.reserve(index.size() * static_cast<size_t>(size[d]));
    for (int64_t i : index) {
      for (int64_t j = 0; j < size[d]; ++j) next.push_back(i + j * stride[d]);
    }
    index = std::move(next);
  }
  Tensor* flat =
      net.add_reshape(x, {engine::shape_numel(x->shape())}, ctx.layer_name(node))->output();
  Tensor* idx = ctx.int_vector(index, ctx.engine_dtype(ScalarType::kI64));
  engine::GatherParams g;
  Tensor* out = net.add_gather(flat, idx, g, ctx.layer_name(node))->output();
  ctx.set_output(
      node, 0, net.add_reshape(out, engine::shape_from_dims(size), ctx.layer_name(node))->output());
}

// ---------------------------------------------------------------------------------------------
// Circular padding

namespace {

Reason validate_pad_circular(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(PadArgs::self);
  std::vector<int64_t> pad;
  try {
    pad = node.arg_ints(PadArgs::pad);
  } catch (const std::exception&) {
    return "circular padding needs constant pads";
  }
  if (pad.size() % 2 != 0 || pad.size() / 2 > static_cast<size_t>(x->rank())) {
    return "pad needs an even number of values, two per padded dim";
  }
  for (size_t i = 0; i < pad.size(); ++i) {
    if (pad[i] < 0) return "negative circular padding is not supported";
    const DimExpr& n = x->shape()[x->rank() - 1 - static_cast<int>(i / 2)];
    if (!n.is_constant()) return "circular padding needs static sizes of the padded dims";
    if (pad[i] > n.constant()) return "circular padding larger than the padded dim";
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(pad_circular, {"aten::_pad_circular"}, true, validate_pad_circular) {
  Tensor* x = ctx.input(node, PadArgs::self);
  const std::vector<int64_t> pads = node.arg_ints(PadArgs::pad);
  engine::PaddingParams p;
  p.mode = engine::PaddingMode::kCircular;
  p.pre.assign(static_cast<size_t>(x->rank()), 0);
  p.post.assign(static_cast<size_t>(x->rank()), 0);
  for (size_t i = 0; i < pads.size() / 2; ++i) {
    const size_t d = static_cast<size_t>(x->rank()) - 1 - i;
    p.pre[d] = pads[2 * i];
    p.post[d] = pads[2 * i + 1];
  }
  ctx.set_output(node, 0, ctx.net().add_padding(x, p, ctx.layer_name(node))->output());
}

}  // namespace ember::compiler
