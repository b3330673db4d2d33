// Embedding bags: aten::_embedding_bag / _embedding_bag_forward_only (what
// nn.functional.embedding_bag lowers to) with mode sum, mean or max, 1-d indices with offsets,
// include_last_offset, per_sample_weights (sum) and padding_idx.
//
// The rows are gathered ([L, D]), a [B, L] membership mask says which bag each index belongs
// to (offsets[b] <= j < offsets[b + 1], padding indices left out), and each bag is a masked
// reduction over L. Memory is B*L*D, computed in f32. Empty bags give zeros, as in PyTorch.
//
// Only the first output (the bags) is converted: offset2bag, bag_size and max_indices are
// PyTorch's bookkeeping for the backward pass, and the validator rejects nodes that use them.
#include <cmath>
#include <string>

#include "ember/compiler/conversion.h"

namespace ember::compiler {
namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::ReduceOp;
using engine::Shape;
using engine::Tensor;

/// _embedding_bag(weight, indices, offsets, scale_grad_by_freq=False, mode=0, sparse=False,
/// per_sample_weights=None, include_last_offset=False, padding_idx=-1).
struct EmbeddingBagArgs {
  enum {
    weight = 0,
    indices = 1,
    offsets = 2,
    scale_grad_by_freq = 3,
    mode = 4,
    sparse = 5,
    per_sample_weights = 6,
    include_last_offset = 7,
    padding_idx = 8
  };
};
enum EmbeddingBagMode : int64_t { kSum = 0, kMean = 1, kMax = 2 };

bool is_index(ScalarType t) { return t == ScalarType::kI64 || t == ScalarType::kI32; }

Reason validate_embedding_bag(const Node& node, const CompileSettings&) {
  const Value* w = node.arg_tensor(EmbeddingBagArgs::weight);
  const Value* idx = node.arg_tensor(EmbeddingBagArgs::indices);
  const Value* off = node.arg_optional_tensor(EmbeddingBagArgs::offsets);
  if (!scalar_type_is_float(w->dtype()) || w->rank() != 2) {
    return "embedding_bag needs a 2-d float weight";
  }
  if (idx->rank() != 1 || !is_index(idx->dtype())) {
    return "embedding_bag needs 1-d i32/i64 indices (2-d inputs are flattened by PyTorch first)";
  }
  if (off == nullptr || off->rank() != 1 || !is_index(off->dtype())) {
    return "embedding_bag needs 1-d i32/i64 offsets";
  }
  const int64_t mode = node.arg_int_or(EmbeddingBagArgs::mode, kSum);
  if (mode != kSum && mode != kMean && mode != kMax) {
    return "embedding_bag mode " + std::to_string(mode) + " is not sum (0), mean (1) or max (2)";
  }
  if (const Value* psw = node.arg_optional_tensor(EmbeddingBagArgs::per_sample_weights)) {
    if (mode != kSum) return "per_sample_weights are only supported with mode='sum'";
    if (psw->rank() != 1 || !scalar_type_is_float(psw->dtype())) {
      return "embedding_bag per_sample_weights must be a 1-d float tensor";
    }
  }
  for (size_t i = 1; i < node.outputs().size(); ++i) {
    if (node.output_is_read(i)) {
      return "only the first output of embedding_bag is converted; output " + std::to_string(i) +
             " (offset2bag/bag_size/max_indices) is used";
    }
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(embedding_bag, ({"aten::_embedding_bag", "aten::_embedding_bag_forward_only"}),
                true, validate_embedding_bag) {
  auto& net = ctx.net();
  const DataType it = ctx.engine_dtype(ScalarType::kI64);
  auto name = [&](const char* s) { return ctx.layer_name(node, s); };
  auto ew = [&](Tensor* a, Tensor* b, ElementWiseOp op) {
    return net.add_elementwise(a, b, op, name("bag"))->output();
  };
  Tensor* weight = ctx.cast(ctx.input(node, EmbeddingBagArgs::weight), DataType::kF32);
  Tensor* idx = ctx.cast(ctx.input(node, EmbeddingBagArgs::indices), it);
  Tensor* off = ctx.cast(ctx.input(node, EmbeddingBagArgs::offsets), it);
  const int64_t mode = node.arg_int_or(EmbeddingBagArgs::mode, kSum);
  const bool last_offset = node.arg_bool_or(EmbeddingBagArgs::include_last_offset, false);
  const int64_t padding_idx = node.arg_int_or(EmbeddingBagArgs::padding_idx, -1);

  const DimExpr l = idx->shape()[0];
  const DimExpr nb = off->shape()[0];
  const DimExpr b = last_offset ? nb - DimExpr(1) : nb;
  // Bag b covers [starts[b], ends[b]): the next offset, or L for the last bag without
  // include_last_offset.
  Tensor* starts = net.add_slice(off, {DimExpr(0)}, {b}, {1}, name("starts"))->output();
  Tensor* ends = nullptr;
  if (last_offset) {
    ends = net.add_slice(off, {DimExpr(1)}, {b}, {1}, name("ends"))->output();
  } else {
    ends = ctx.cast(net.add_shape(idx, name("length"))->output(), it);
    // (A Slice must start inside its input even when empty: one bag has no next offset.)
    if (!(b == DimExpr(1))) {
      Tensor* next =
          net.add_slice(off, {DimExpr(1)}, {b - DimExpr(1)}, {1}, name("ends"))->output();
      ends = net.add_concatenation({next, ends}, 0, name("ends"))->output();
    }
  }
  engine::FillParams ar;
  ar.op = engine::FillOp::kArange;
  ar.shape = {l};
  ar.dtype = it;
  Tensor* pos = net.add_reshape(net.add_fill(ar, name("positions"))->output(), {DimExpr(1), l},
                                name("positions"))
                    ->output();
  starts = net.add_reshape(starts, {b, DimExpr(1)}, name("starts"))->output();
  ends = net.add_reshape(ends, {b, DimExpr(1)}, name("ends"))->output();
  Tensor* before = ew(pos, starts, ElementWiseOp::kLess);
  Tensor* inside = ew(net.add_unary(before, engine::UnaryOp::kNot, name("bag"))->output(),
                      ew(pos, ends, ElementWiseOp::kLess), ElementWiseOp::kAnd);  // [B, L]
  if (padding_idx >= 0) {
    Tensor* pad =
        ew(idx, ctx.scalar(static_cast<double>(padding_idx), it, 1), ElementWiseOp::kEqual);
    pad = net.add_reshape(net.add_unary(pad, engine::UnaryOp::kNot, name("padding"))->output(),
                          {DimExpr(1), l}, name("padding"))
              ->output();
    inside = ew(inside, pad, ElementWiseOp::kAnd);
  }

  engine::GatherParams g;
  Tensor* rows = net.add_gather(weight, idx, g, name("rows"))->output();  // [L, D]
  if (const Value* psw = node.arg_optional_tensor(EmbeddingBagArgs::per_sample_weights)) {
    Tensor* s = ctx.cast(ctx.tensor(psw), DataType::kF32);
    rows = ew(rows, net.add_reshape(s, {l, DimExpr(1)}, name("weights"))->output(),
              ElementWiseOp::kProd);
  }
  const DimExpr d = weight->shape()[1];
  rows = net.add_reshape(rows, {DimExpr(1), l, d}, name("rows"))->output();
  Tensor* mask = net.add_reshape(inside, {b, l, DimExpr(1)}, name("mask"))->output();
  Tensor* out = nullptr;
  if (mode == kMax) {
    Tensor* masked =
        net.add_select(mask, rows, ctx.scalar(-INFINITY, DataType::kF32, 3), name("max"))->output();
    out = net.add_reduce(masked, ReduceOp::kMax, {1}, false, name("max"))->output();
    Tensor* any = net.add_reduce(ctx.cast(inside, DataType::kF32), ReduceOp::kMax, {1}, true,
                                 name("nonempty"))
                      ->output();  // [B, 1]
    Tensor* empty = ew(any, ctx.scalar(0, DataType::kF32, 2), ElementWiseOp::kEqual);
    out = net.add_select(empty, ctx.scalar(0, DataType::kF32, 2), out, name("empty"))->output();
  } else {
    Tensor* masked =
        net.add_select(mask, rows, ctx.scalar(0, DataType::kF32, 3), name("sum"))->output();
    out = net.add_reduce(masked, ReduceOp::kSum, {1}, false, name("sum"))->output();
    if (mode == kMean) {
      Tensor* count =
          net.add_reduce(ctx.cast(inside, DataType::kF32), ReduceOp::kSum, {1}, true, name("count"))
              ->output();
      count = ew(count, ctx.scalar(1, DataType::kF32, 2), ElementWiseOp::kMax);
      out = ew(out, count, ElementWiseOp::kDiv);
    }
  }
  ctx.set_output(node, 0, out);
}

}  // namespace ember::compiler
