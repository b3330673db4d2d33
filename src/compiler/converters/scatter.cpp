// Scatter family: ops that write values into a copy of a tensor.
//
// - select_scatter: src written into one index of a dim (slice_scatter is in shape.cpp);
// - index_put with one index tensor (x[..., idx, ...] = v, accumulate or not; index_copy
//   decomposes to it);
// - copy(self, src): src broadcast to self's shape and cast to its dtype.
//
// Each becomes one Scatter layer along the written dim (copy: a broadcast and a cast), with
// indices built from Fill and Shape layers, so the same layers serve every size of a dynamic dim.
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {
namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::Shape;
using engine::Tensor;

/// select_scatter(self, src, dim, index).
struct SelectScatterArgs {
  enum { self = 0, src = 1, dim = 2, index = 3 };
};
/// index_put(self, indices: Tensor?[], values, accumulate=False).
struct IndexPutArgs {
  enum { self = 0, indices = 1, values = 2, accumulate = 3 };
};
/// copy(self, src, non_blocking=False).
struct CopyArgs {
  enum { self = 0, src = 1 };
};

/// `t` broadcast to `shape` (numpy rules): a Select whose all-true condition has that shape.
Tensor* broadcast_to(ConversionContext& ctx, const Node& node, Tensor* t, const Shape& shape) {
  if (t->shape() == shape) return t;
  t = ctx.broadcast_rank(t, static_cast<int>(shape.size()));
  engine::FillParams all;
  all.shape = shape;
  all.dtype = DataType::kBool;
  all.value = 1.0;
  Tensor* mask = ctx.net().add_fill(all, ctx.layer_name(node, "broadcast"))->output();
  return ctx.net().add_select(mask, t, t, ctx.layer_name(node, "broadcast"))->output();
}

Tensor* scatter(ConversionContext& ctx, const Node& node, Tensor* data, Tensor* idx,
                Tensor* updates, int64_t axis, bool accumulate) {
  engine::ScatterParams p;
  p.axis = axis;
  p.reduction = accumulate ? engine::ScatterReduction::kSum : engine::ScatterReduction::kNone;
  return ctx.net()
      .add_scatter(data, idx, ctx.cast(updates, data->dtype()), p, ctx.layer_name(node))
      ->output();
}

/// Rejects a symbolic value at argument i (None and constant ints pass).
Reason constant_int(const Node& node, size_t i, const char* what) {
  if (node.arg_is_none(i)) return std::nullopt;
  try {
    (void)node.arg_int(i);
  } catch (const std::exception&) {
    return std::string(what) + " must be a constant int, not a symbolic size";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// select_scatter

Reason validate_select_scatter(const Node& node, const CompileSettings&) {
  if (Reason r = constant_int(node, SelectScatterArgs::index, "index"))
    return "select_scatter " + *r;
  const Value* self = node.arg_tensor(SelectScatterArgs::self);
  const int64_t axis = normalize_dim(node.arg_int(SelectScatterArgs::dim), self->rank(), node);
  if (node.arg_int(SelectScatterArgs::index) < 0 && !self->shape()[axis].is_constant()) {
    return "select_scatter with a negative index needs a static size of the selected dim";
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(select_scatter, {"aten::select_scatter"}, true, validate_select_scatter) {
  Tensor* x = ctx.input(node, SelectScatterArgs::self);
  Tensor* src = ctx.input(node, SelectScatterArgs::src);
  const int64_t axis = normalize_dim(node.arg_int(SelectScatterArgs::dim), x->rank(), node);
  int64_t index = node.arg_int(SelectScatterArgs::index);
  if (index < 0) index += x->shape()[axis].constant();
  Shape shape = src->shape();
  shape.insert(shape.begin() + axis, DimExpr(1));
  src = ctx.net().add_reshape(src, shape, ctx.layer_name(node, "unsqueeze"))->output();
  engine::FillParams p;
  p.shape = shape;
  p.dtype = ctx.engine_dtype(ScalarType::kI64);
  p.value = static_cast<double>(index);
  Tensor* idx = ctx.net().add_fill(p, ctx.layer_name(node, "index"))->output();
  ctx.set_output(node, 0, scatter(ctx, node, x, idx, src, axis, false));
}

// ---------------------------------------------------------------------------------------------
// index_put

namespace {

Reason validate_index_put(const Node& node, const CompileSettings&) {
  const std::vector<Value*> idx = node.arg_tensor_list(IndexPutArgs::indices);
  const Value* self = node.arg_tensor(IndexPutArgs::self);
  int count = 0;
  for (const Value* v : idx) {
    if (v == nullptr) continue;
    ++count;
    if (v->dtype() == ScalarType::kBool || v->dtype() == ScalarType::kU8) {
      return "index_put with a boolean mask index (x[mask] = v) is not supported";
    }
    if (v->dtype() != ScalarType::kI64 && v->dtype() != ScalarType::kI32) {
      return std::string("index_put index tensors must be i32 or i64, got ") +
             scalar_type_name(v->dtype());
    }
  }
  if (count != 1) return "index_put takes exactly one index tensor (x[..., idx] = v)";
  if (static_cast<int>(idx.size()) > self->rank()) return "index_put: more indices than dims";
  if (node.arg_bool_or(IndexPutArgs::accumulate, false) && self->dtype() == ScalarType::kBool) {
    return "index_put with accumulate=True on a bool tensor";
  }
  return std::nullopt;
}

}  // namespace

// x[..., idx, ...] = v with the index tensor at position k: v is broadcast to the indexing
// result's shape x[:k] + idx.shape + x[k+1:], idx is flattened (with v's matching dims), negative
// indices are wrapped, and one Scatter writes (or, with accumulate, adds) along k.
EMBER_CONVERTER(index_put, {"aten::index_put"}, true, validate_index_put) {
  Tensor* x = ctx.input(node, IndexPutArgs::self);
  const std::vector<Value*> indices = node.arg_tensor_list(IndexPutArgs::indices);
  int64_t k = 0;
  for (size_t j = 0; j < indices.size(); ++j) {
    if (indices[j] != nullptr) k = static_cast<int64_t>(j);
  }
  auto& net = ctx.net();
  const DataType it = ctx.engine_dtype(ScalarType::kI64);
  Tensor* idx = ctx.cast(ctx.tensor(indices[k]), it);
  const Shape& xs = x->shape();
  // The shape v broadcasts to, then the same with the index dims flattened into one.
  Shape indexed(xs.begin(), xs.begin() + k), flat(xs.begin(), xs.begin() + k);
  indexed.insert(indexed.end(), idx->shape().begin(), idx->shape().end());
  const DimExpr m = engine::shape_numel(idx->shape());
  flat.push_back(m);
  indexed.insert(indexed.end(), xs.begin() + k + 1, xs.end());
  flat.insert(flat.end(), xs.begin() + k + 1, xs.end());
  Tensor* v =
      broadcast_to(ctx, node, ctx.cast(ctx.input(node, IndexPutArgs::values), x->dtype()), indexed);
  v = net.add_reshape(v, flat, ctx.layer_name(node, "values"))->output();

  idx = net.add_reshape(idx, {m}, ctx.layer_name(node, "index"))->output();
  Tensor* n = ctx.cast(net.add_shape(x, ctx.layer_name(node))->output(), it);
  n = net.add_slice(n, {DimExpr(k)}, {DimExpr(1)}, {1}, ctx.layer_name(node))->output();
  Tensor* negative =
      net.add_elementwise(idx, ctx.scalar(0, it, 1), ElementWiseOp::kLess, ctx.layer_name(node))
          ->output();
  Tensor* wrapped =
      net.add_elementwise(idx, n, ElementWiseOp::kSum, ctx.layer_name(node))->output();
  idx = net.add_select(negative, wrapped, idx, ctx.layer_name(node))->output();
  Shape col(flat.size(), DimExpr(1));
  col[k] = m;
  idx = broadcast_to(ctx, node, net.add_reshape(idx, col, ctx.layer_name(node))->output(), flat);
  ctx.set_output(
      node, 0, scatter(ctx, node, x, idx, v, k, node.arg_bool_or(IndexPutArgs::accumulate, false)));
}

// ---------------------------------------------------------------------------------------------
// copy

EMBER_CONVERTER(copy, {"aten::copy"}, true, nullptr) {
  Tensor* x = ctx.input(node, CopyArgs::self);
  Tensor* src = ctx.cast(ctx.input(node, CopyArgs::src), x->dtype());
  Tensor* out = broadcast_to(ctx, node, src, x->shape());
  if (out == src) out = ctx.net().add_identity(src, ctx.layer_name(node))->output();
  ctx.set_output(node, 0, out);
}

}  // namespace ember::compiler
