// Attention: aten::scaled_dot_product_attention and the flash/efficient/cuDNN ops PyTorch
// lowers it to. Rank-4 operands whose batch and head dims line up (and a mask that broadcasts
// to the scores without widening them) become one fused Attention layer; anything else is
// written out as softmax(q @ k^T * scale + mask) @ v with MatrixMultiply, ElementWise, Select
// and SoftMax layers. The CPU flash op's logsumexp output, when read, also takes the long form.
//
// Like PyTorch, a row whose scores are all masked out (-inf) gives zeros, not NaN.
#include <cmath>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::ReduceOp;
using engine::Tensor;

/// scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
/// is_causal=False, *, scale=None, enable_gqa=False).
struct SdpaArgs {
  enum {
    query = 0,
    key = 1,
    value = 2,
    attn_mask = 3,
    dropout_p = 4,
    is_causal = 5,
    scale = 6,
    enable_gqa = 7
  };
};
/// _scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p=0.0,
/// is_causal=False, *, attn_mask=None, scale=None) -> (output, logsumexp).
struct FlashCpuArgs {
  enum { query = 0, key = 1, value = 2, dropout_p = 3, is_causal = 4, attn_mask = 5, scale = 6 };
};

/// The CUDA kernels' ops (what attention lowers to when exported or compiled on a GPU):
/// _scaled_dot_product_flash_attention(query, key, value, dropout_p=0.0, is_causal=False,
///     return_debug_mask=False, *, scale=None);
/// _scaled_dot_product_efficient_attention(query, key, value, attn_bias, compute_log_sumexp,
///     dropout_p=0.0, is_causal=False, *, scale=None);
/// _scaled_dot_product_cudnn_attention(query, key, value, attn_bias, compute_log_sumexp,
///     dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None).
/// Only output 0 (the attention) is converted for these: the others (logsumexp padded to the
/// kernel's block size, RNG state, sequence bookkeeping) serve the backward pass.
struct FlashCudaArgs {
  enum { dropout_p = 3, is_causal = 4, scale = 6 };
};
struct EfficientArgs {
  enum { attn_bias = 3, dropout_p = 5, is_causal = 6, scale = 7 };
};
struct CudnnArgs {
  enum { attn_bias = 3, dropout_p = 5, is_causal = 6, scale = 8 };
};
/// A position past every argument: the op has no mask (arg_optional_tensor gives nullptr).
constexpr size_t kNoArg = 64;

bool is_gpu_kernel_op(const Node& node) {
  return node.op() == "aten::_scaled_dot_product_flash_attention" ||
         node.op() == "aten::_scaled_dot_product_efficient_attention" ||
         node.op() == "aten::_scaled_dot_product_cudnn_attention";
}

/// The argument positions of whichever op the node is.
struct AttentionSpec {
  size_t attn_mask, dropout_p, is_causal, scale;
};
AttentionSpec spec_of(const Node& node) {
  if (node.op() == "aten::scaled_dot_product_attention") {
    return {SdpaArgs::attn_mask, SdpaArgs::dropout_p, SdpaArgs::is_causal, SdpaArgs::scale};
  }
  if (node.op() == "aten::_scaled_dot_product_flash_attention") {
    return {kNoArg, FlashCudaArgs::dropout_p, FlashCudaArgs::is_causal, FlashCudaArgs::scale};
  }
  if (node.op() == "aten::_scaled_dot_product_efficient_attention") {
    return {EfficientArgs::attn_bias, EfficientArgs::dropout_p, EfficientArgs::is_causal,
            EfficientArgs::scale};
  }
  if (node.op() == "aten::_scaled_dot_product_cudnn_attention") {
    return {CudnnArgs::attn_bias, CudnnArgs::dropout_p, CudnnArgs::is_causal, CudnnArgs::scale};
  }
  return {FlashCpuArgs::attn_mask, FlashCpuArgs::dropout_p, FlashCpuArgs::is_causal,
          FlashCpuArgs::scale};
}

Reason validate_attention(const Node& node, const CompileSettings&) {
  const AttentionSpec s = spec_of(node);
  for (size_t i = 0; i < 3; ++i) {
    const Value* v = node.arg_tensor(i);
    if (!scalar_type_is_float(v->dtype())) {
      return std::string("attention needs float query/key/value, got ") +
             scalar_type_name(v->dtype());
    }
    if (v->rank() < 2) return "attention needs query/key/value of rank >= 2";
  }
  if (node.arg_double_or(s.dropout_p, 0.0) != 0.0) {
    return "attention with dropout_p > 0 is not supported in inference engines";
  }
  const Value* q = node.arg_tensor(0);
  if (node.arg_is_none(s.scale) && !q->shape().back().is_constant()) {
    return "attention without an explicit scale needs a static head dim (got " +
           q->shape().back().to_string() + ")";
  }
  if (const Value* m = node.arg_optional_tensor(s.attn_mask)) {
    if (m->dtype() != ScalarType::kBool && !scalar_type_is_float(m->dtype())) {
      return std::string("attention masks must be bool or float, got ") +
             scalar_type_name(m->dtype());
    }
    if (node.arg_bool_or(s.is_causal, false)) return "attn_mask together with is_causal";
  }
  if (is_gpu_kernel_op(node)) {
    for (size_t i = 1; i < node.outputs().size(); ++i) {
      if (node.output_is_read(i)) {
        return "only output 0 of " + node.op() + " is converted; output " + std::to_string(i) +
               " (logsumexp or kernel bookkeeping) is used";
      }
    }
  }
  if (node.op() == "aten::scaled_dot_product_attention" &&
      node.arg_bool_or(SdpaArgs::enable_gqa, false)) {
    for (size_t i = 1; i < 3; ++i) {
      const Value* kv = node.arg_tensor(i);
      if (q->rank() < 3 || kv->rank() != q->rank()) {
        return "grouped-query attention needs query/key/value of one rank >= 3";
      }
      const DimExpr& hq = q->shape()[q->rank() - 3];
      const DimExpr& hk = kv->shape()[kv->rank() - 3];
      if (hq == hk) continue;
      if (!hq.is_constant() || !hk.is_constant() || hq.constant() % hk.constant() != 0) {
        return "grouped-query attention needs static head counts, query heads a multiple of "
               "key/value heads";
      }
    }
  }
  return std::nullopt;
}

Tensor* elementwise(ConversionContext& ctx, const Node& node, Tensor* a, Tensor* b,
                    ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

/// Grouped-query attention: key/value [.., Hk, S, E] with each head repeated for the
/// Hq / Hk query heads that share it (repeat_interleave on the head dim), as
/// [.., Hk, 1, S, E] broadcast to [.., Hk, G, S, E] and merged back into Hq heads.
Tensor* repeat_heads(ConversionContext& ctx, const Node& node, Tensor* t, const DimExpr& hq) {
  const int r = t->rank();
  const DimExpr& hk = t->shape()[r - 3];
  if (hk == hq) return t;
  const int64_t groups = hq.constant() / hk.constant();
  engine::Shape split = t->shape(), wide = t->shape(), merged = t->shape();
  split.insert(split.begin() + (r - 2), DimExpr(1));
  wide.insert(wide.begin() + (r - 2), DimExpr(groups));
  merged[r - 3] = hq;
  auto& net = ctx.net();
  Tensor* x = net.add_reshape(t, split, ctx.layer_name(node, "gqa"))->output();
  engine::FillParams all;
  all.shape = wide;
  all.dtype = DataType::kBool;
  all.value = 1.0;
  Tensor* mask = net.add_fill(all, ctx.layer_name(node, "gqa"))->output();
  x = net.add_select(mask, x, x, ctx.layer_name(node, "gqa"))->output();
  return net.add_reshape(x, merged, ctx.layer_name(node, "gqa"))->output();
}

/// The causal mask "key position > query position" [L, S] (true = masked out), built from
/// aranges so that it works for dynamic sequence lengths.
Tensor* causal_masked(ConversionContext& ctx, const Node& node, const DimExpr& l,
                      const DimExpr& s) {
  auto arange = [&](const DimExpr& n, const engine::Shape& shape) {
    engine::FillParams p;
    p.op = engine::FillOp::kArange;
    p.shape = {n};
    p.dtype = DataType::kI32;
    Tensor* t = ctx.net().add_fill(p, ctx.layer_name(node, "arange"))->output();
    return ctx.net().add_reshape(t, shape, ctx.layer_name(node))->output();
  };
  Tensor* row = arange(l, {l, 1});
  Tensor* col = arange(s, {1, s});
  return elementwise(ctx, node, col, row, ElementWiseOp::kGreater);
}

/// Whether the fused Attention layer computes this node exactly as the long form would: rank-4
/// operands with one batch dim, key/value heads that divide the query heads (grouped-query
/// attention, or a single shared head that the long form would broadcast), and a mask of rank
/// <= 4 whose every dim is 1 or the scores' dim.
bool fits_attention_layer(const Node& node, const AttentionSpec& spec, const Tensor* q,
                          const Tensor* k, const Tensor* v) {
  if (node.op() == "aten::_scaled_dot_product_flash_attention_for_cpu" &&
      node.outputs().size() > 1 && node.output_is_read(1)) {
    return false;  // the logsumexp comes from the long form's scores
  }
  if (q->rank() != 4 || k->rank() != 4 || v->rank() != 4) return false;
  const engine::Shape &qs = q->shape(), &ks = k->shape(), &vs = v->shape();
  if (!(qs[0] == ks[0]) || !(qs[0] == vs[0]) || !(ks[1] == vs[1]) || !(ks[2] == vs[2]) ||
      !(qs[3] == ks[3])) {
    return false;
  }
  if (!(qs[1] == ks[1])) {
    const bool gqa = node.op() == "aten::scaled_dot_product_attention" &&
                     node.arg_bool_or(SdpaArgs::enable_gqa, false);
    if (!qs[1].is_constant() || !ks[1].is_constant() || ks[1].constant() <= 0 ||
        qs[1].constant() % ks[1].constant() != 0 || !(gqa || ks[1].constant() == 1)) {
      return false;
    }
  }
  if (const Value* m = node.arg_optional_tensor(spec.attn_mask)) {
    if (m->rank() > 4) return false;
    const engine::Shape scores = {qs[0], qs[1], qs[2], ks[2]};
    for (int i = 0; i < m->rank(); ++i) {
      const DimExpr& d = m->shape()[i];
      const DimExpr& want = scores[4 - m->rank() + i];
      if (!(d == want) && !(d.is_constant() && d.constant() == 1)) return false;
    }
  }
  return true;
}

}  // namespace

EMBER_CONVERTER(attention,
                ({"aten::scaled_dot_product_attention",
                  "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention",
                  "aten::_scaled_dot_product_efficient_attention",
                  "aten::_scaled_dot_product_cudnn_attention"}),
                true, validate_attention) {
  const AttentionSpec spec = spec_of(node);
  auto& net = ctx.net();
  const DataType dt = ctx.engine_dtype(node.output(0)->dtype());
  Tensor* q = ctx.cast(ctx.input(node, 0), dt);
  Tensor* k = ctx.cast(ctx.input(node, 1), dt);
  Tensor* v = ctx.cast(ctx.input(node, 2), dt);
  const double scale = node.arg_is_none(spec.scale)
                           ? 1.0 / std::sqrt(static_cast<double>(q->shape().back().constant()))
                           : node.arg_double(spec.scale);
  if (fits_attention_layer(node, spec, q, k, v)) {
    engine::AttentionParams ap;
    ap.scale = scale;
    ap.causal = node.arg_bool_or(spec.is_causal, false);
    std::vector<Tensor*> inputs = {q, k, v};
    if (const Value* m = node.arg_optional_tensor(spec.attn_mask)) {
      Tensor* mask = ctx.tensor(m);
      inputs.push_back(mask->dtype() == DataType::kBool ? mask : ctx.cast(mask, dt));
    }
    ctx.set_output(node, 0, net.add_layer(ap, inputs, ctx.layer_name(node))->output());
    return;
  }
  if (node.op() == "aten::scaled_dot_product_attention" &&
      node.arg_bool_or(SdpaArgs::enable_gqa, false)) {
    const DimExpr hq = q->shape()[q->rank() - 3];
    k = repeat_heads(ctx, node, k, hq);
    v = repeat_heads(ctx, node, v, hq);
  }

  Tensor* scores = net.add_matrix_multiply(q, false, k, true, ctx.layer_name(node, "qk"))->output();
  const int rank = scores->rank();
  scores = elementwise(ctx, node, scores, ctx.scalar(scale, dt, rank), ElementWiseOp::kProd);
  Tensor* neg_inf = ctx.scalar(-INFINITY, dt, rank);
  bool may_mask_rows = false;
  if (const Value* m = node.arg_optional_tensor(spec.attn_mask)) {
    Tensor* mask = ctx.tensor(m);
    if (mask->dtype() == DataType::kBool) {
      scores = net.add_select(mask, scores, neg_inf, ctx.layer_name(node, "mask"))->output();
    } else {
      scores = elementwise(ctx, node, scores, ctx.cast(mask, dt), ElementWiseOp::kSum);
    }
    may_mask_rows = true;
  } else if (node.arg_bool_or(spec.is_causal, false)) {
    // Causal masks keep key 0 for every query: no row is fully masked.
    const engine::Shape& s = scores->shape();
    Tensor* masked = causal_masked(ctx, node, s[rank - 2], s[rank - 1]);
    scores = net.add_select(masked, neg_inf, scores, ctx.layer_name(node, "causal"))->output();
  }

  // A query whose keys are all masked gets zeros (PyTorch's CPU and math kernels), not NaN.
  engine::SoftMaxParams sp;
  sp.axis = rank - 1;
  sp.zero_masked_rows = may_mask_rows;
  Tensor* probs = net.add_layer(sp, {scores}, ctx.layer_name(node))->output();
  ctx.set_output(
      node, 0,
      net.add_matrix_multiply(probs, false, v, false, ctx.layer_name(node, "pv"))->output());

  if (node.op() == "aten::_scaled_dot_product_flash_attention_for_cpu" &&
      node.outputs().size() > 1) {
    // logsumexp [.., L] in f32: max + log(sum(exp(s - max))); 0 for fully masked rows.
    Tensor* s32 = ctx.cast(scores, DataType::kF32);
    Tensor* mx =
        net.add_reduce(s32, ReduceOp::kMax, {rank - 1}, true, ctx.layer_name(node))->output();
    Tensor* e = net.add_unary(elementwise(ctx, node, s32, mx, ElementWiseOp::kSub),
                              engine::UnaryOp::kExp, ctx.layer_name(node))
                    ->output();
    Tensor* sum =
        net.add_reduce(e, ReduceOp::kSum, {rank - 1}, true, ctx.layer_name(node))->output();
    Tensor* lse = elementwise(
        ctx, node, mx, net.add_unary(sum, engine::UnaryOp::kLog, ctx.layer_name(node))->output(),
        ElementWiseOp::kSum);
    if (may_mask_rows) {  // rows whose scores are all -inf: logsumexp 0
      Tensor* dead = elementwise(ctx, node, mx, ctx.scalar(-INFINITY, DataType::kF32, rank),
                                 ElementWiseOp::kEqual);
      lse = net.add_select(dead, ctx.scalar(0.0, DataType::kF32, rank), lse, ctx.layer_name(node))
                ->output();
    }
    engine::Shape shape = lse->shape();
    shape.pop_back();
    ctx.set_output(node, 1, net.add_reshape(lse, shape, ctx.layer_name(node))->output());
  }
}

}  // namespace ember::compiler
