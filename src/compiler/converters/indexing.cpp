// Advanced indexing with several index tensors: aten::index.Tensor(self, [i0, i1, ...]) where
// the index tensors cover the leading dims (x[i, j] with broadcasting index tensors, as
// transformers' attention-mask code writes). The one-index case is in shape.cpp; this converter
// has a higher priority and only takes nodes with two or more leading index tensors.
//
// out[b..., rest...] = x[i0[b...], i1[b...], ..., rest...]: the indices are folded into one flat
// index over the leading dims (negative indices wrapped), then one Gather on the flattened data.
#include "ember/compiler/conversion.h"

namespace ember::compiler {
namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::Tensor;

struct IndexArgs {
  enum { self = 0, indices = 1 };
};

Reason validate_leading_indices(const Node& node, const CompileSettings&) {
  const std::vector<Value*> idx = node.arg_tensor_list(IndexArgs::indices);
  const int rank = node.arg_tensor(IndexArgs::self)->rank();
  if (idx.size() < 2) return "handled by the one-index converter";
  if (static_cast<int>(idx.size()) > rank) return "more index tensors than dims";
  for (const Value* v : idx) {
    if (v == nullptr) return "index tensors must cover the leading dims without gaps (x[i, j])";
    if (v->dtype() != ScalarType::kI64 && v->dtype() != ScalarType::kI32) {
      return "index tensors must be i32 or i64 (bool masks are not supported)";
    }
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER_P(index_leading, {"aten::index.Tensor"}, true, validate_leading_indices, 1) {
  Tensor* data = ctx.input(node, IndexArgs::self);
  const std::vector<Value*> idx = node.arg_tensor_list(IndexArgs::indices);
  const size_t k = idx.size();
  auto& net = ctx.net();
  const DataType it = ctx.engine_dtype(ScalarType::kI64);
  // The sizes of the indexed dims as 1-element tensors (symbolic dims work the same way).
  Tensor* sizes = ctx.cast(net.add_shape(data)->output(), it);
  Tensor* flat = nullptr;
  for (size_t j = 0; j < k; ++j) {
    Tensor* i = ctx.cast(ctx.tensor(idx[j]), it);
    Tensor* dim = net.add_slice(sizes, {DimExpr(static_cast<int64_t>(j))}, {DimExpr(1)}, {1})
                      ->output();
    dim = ctx.broadcast_rank(dim, i->rank());
    Tensor* zero = ctx.scalar(0, it, i->rank());
    Tensor* negative = net.add_elementwise(i, zero, ElementWiseOp::kLess)->output();
    Tensor* wrapped = net.add_elementwise(i, dim, ElementWiseOp::kSum)->output();
    i = net.add_select(negative, wrapped, i)->output();
    if (flat == nullptr) {
      flat = i;
    } else {
      const int r = std::max(flat->rank(), i->rank());
      flat = net.add_elementwise(ctx.broadcast_rank(flat, r), ctx.broadcast_rank(dim, r),
                                 ElementWiseOp::kProd)->output();
      flat = net.add_elementwise(flat, ctx.broadcast_rank(i, r), ElementWiseOp::kSum)->output();
    }
  }
  // Broadcast a lone index to the full index shape: PyTorch's result has it.
  const Value* out = node.output(0);
  const int batch_rank = out->rank() - (data->rank() - static_cast<int>(k));
  if (flat->rank() < batch_rank) flat = ctx.broadcast_rank(flat, batch_rank);
  DimExpr leading(1);
  for (size_t j = 0; j < k; ++j) leading = leading * data->shape()[j];
  Shape flat_shape{leading};
  flat_shape.insert(flat_shape.end(), data->shape().begin() + static_cast<long>(k),
                    data->shape().end());
  Tensor* flat_data = net.add_reshape(data, flat_shape)->output();
  engine::GatherParams p;
  p.mode = engine::GatherMode::kDefault;
  p.axis = 0;
  ctx.set_output(node, 0, net.add_gather(flat_data, flat, p)->output());
}

}  // namespace ember::compiler
