// fuse_epilogues: folds what follows a Convolution or MatrixMultiply into it.
//
//   Conv(x, W, b) -> x * c  (c constant, per output channel or scalar)  => Conv(x, W*c, b*c)
//   Conv(x, W, b) -> x + c / x - c                                      => Conv(x, W, b +/- c)
//   MatMul(a, B)  -> x * c  (c a one-element constant)                  => epilogue scale c
//   MatMul(a, B)  -> x + c  (c constant, broadcast along the last dim)  => MatMul bias c
//   MatMul(a, B, b) -> x * c (B, b constant; c constant along the last dim) => B's columns
//                                                                          and b times c
//   Conv/MatMul   -> x + r  (r a tensor of the output's shape)          => epilogue residual r
//   MatMul -> reshape -> x + r  (r of the reshaped shape)               => the same, with r
//                                                                          reshaped back (free)
//   Conv/MatMul   -> Activation (MatMul: also behind a reshape)         => epilogue activation
//
// The fused low-precision products (QuantizedConvolution, QuantizedMatrixMultiply; made by
// fuse_quantized) take the same bias (matrix product) and activation rewrites, and these:
//   QConv -> x * c / x + c / x - c  (c per output channel or scalar)   => w_scale * c, bias * c
//                                                                          +/- c (a batch norm
//                                                                          after an int8 conv)
//   QConv/QMatMul -> x + r  (r a tensor of the output's shape)          => residual input 7
//                    (ResNet's shortcut after an INT8/FP8 convolution)
//   INT8 QConv -> x + Dequantize(q, s)  (q i8, per tensor, symmetric)   => residual q, input 8
//                    s (the shortcut read from the int8 tensor the previous block wrote; the
//                    Dequantize goes when nothing else reads it)
//   QConv/QMatMul -> Quantize (per-tensor, symmetric, int8)             => requantize: the
//                                                                          layer outputs int8
//                    (an INT8 QConv with a residual too: ResNet's block output, once the next
//                    block's shortcut reads the int8 tensor)
//   FP8 QConv/QMatMul -> Quantize (per-tensor, f8e4m3)                  => requantize to FP8
//                    (BERT's erf GELU: the GELU and the quantization in one pass after the
//                    GEMM, instead of a GELU pass in place and a Quantize pass)
//
// Each rewrite needs the product to have that one consumer and not be a network output; the
// epilogue's order (bias, residual, activation) is the order rewrites are tried in, so a
// product gains a residual only before its activation. Batch-norm folding changes the weights
// (computed in f32, rounded to the weights' dtype once), which is what TensorRT does too.
//
// The pass runs three times: before simplify_attention, and again after it on matrix products
// only (fuse_epilogues_after_attention). Attention's rewrites move transposes off the product
// that follows an attention (torch.nn.MultiheadAttention's out-projection), after which the
// residual add beside it can join its epilogue; before them a transpose stood between the two.
// compose_row_moves then moves row gathers off products the same way (Swin-T's reverse roll),
// and the third run (fuse_epilogues_after_row_moves) gives those products their residuals.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "backends/cpu/kernels.h"
#include "backends/backend.h"
#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

bool is_float(DataType t) {
  return t == DataType::kF32 || t == DataType::kF16 || t == DataType::kBF16;
}

/// The values of constant `c` as one value per entry of output dim `axis` (size `n`) of a
/// tensor of rank `rank`, when `c` broadcasts that way (every other dim 1); nullopt otherwise.
std::optional<std::vector<float>> per_axis(const Weights& c, int rank, int axis, int64_t n) {
  const auto& d = c.dims();
  if (static_cast<int>(d.size()) > rank) return std::nullopt;
  const int lead = rank - static_cast<int>(d.size());
  int64_t along = 1;
  for (int i = 0; i < static_cast<int>(d.size()); ++i) {
    if (d[i] == 1) continue;
    if (i + lead != axis || d[i] != n) return std::nullopt;
    along = n;
  }
  const std::vector<float> v = to_floats(c);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) out[k] = v[along == 1 ? 0 : k];
  return out;
}

bool shapes_equal(const Shape& a, const Shape& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i])) return false;
  }
  return true;
}

/// The other operand of a two-input layer that reads `t`.
Tensor* other_input(const Layer& l, const Tensor* t) {
  return l.input(0) == t ? l.input(1) : l.input(0);
}

/// "conv+add+relu": the fused layer is named after the layers it replaces.
std::string fused_name(const Layer& prod, const Layer& absorbed) {
  return prod.name() + "+" + absorbed.name();
}

/// Replaces `absorbed`'s output by a new layer of `prod`'s kind with `params` and `inputs`.
Layer* rebuild(Network& net, Layer* prod, Layer* absorbed, LayerParams params,
               std::vector<Tensor*> inputs) {
  Layer* l = net.add_layer(std::move(params), std::move(inputs), fused_name(*prod, *absorbed));
  net.replace_all_uses(absorbed->output(), l->output());
  return l;
}

struct Fuser {
  Network& net;
  const Backend* backend = nullptr;  ///< The plan's back end (null in tests of the pass alone).
  bool fuse_pointwise = true;        ///< Whether fuse_pointwise runs after this pass.
  bool products_only = false;        ///< Matrix products only (the second run).
  int folded_scales = 0, scales = 0, biases = 0, residuals = 0, activations = 0,
      requantizations = 0, left_to_pointwise = 0;

  /// Conv followed by x*c, x+c or x-c with c a per-channel constant, into new weights/bias.
  bool fold_conv_affine(Layer* conv) {
    const auto& p = conv->params_as<ConvolutionParams>();
    if (p.epilogue.fused_activation || conv->input(3) != nullptr) return false;
    const Weights* w = constant_of(conv->input(1));
    const Tensor* bias_t = conv->input(2);
    const Weights* b = constant_of(bias_t);
    if (w == nullptr || (bias_t != nullptr && b == nullptr) || !is_float(w->dtype())) return false;
    Layer* next = sole_consumer(net, conv->output());
    if (next == nullptr || next->kind() != LayerKind::kElementWise) return false;
    const ElementWiseOp op = next->params_as<ElementWiseParams>().op;
    const bool conv_first = next->input(0) == conv->output();
    if (!(op == ElementWiseOp::kProd || op == ElementWiseOp::kSum ||
          (op == ElementWiseOp::kSub && conv_first))) {
      return false;
    }
    const Weights* c = constant_of(other_input(*next, conv->output()));
    if (c == nullptr || c->dtype() != w->dtype() ||
        next->output()->dtype() != conv->output()->dtype() ||
        !shapes_equal(next->output()->shape(), conv->output()->shape())) {
      return false;
    }
    const int64_t k = w->dims()[0];
    const auto per_channel = per_axis(*c, conv->output()->rank(), p.channels_last ? 3 : 1, k);
    if (!per_channel) return false;
    std::vector<float> wv = to_floats(*w);
    std::vector<float> bv = b != nullptr ? to_floats(*b) : std::vector<float>(k, 0.0f);
    const int64_t per_filter = w->numel() / std::max<int64_t>(k, 1);
    for (int64_t o = 0; o < k; ++o) {
      const float s = (*per_channel)[o];
      if (op == ElementWiseOp::kProd) {
        for (int64_t i = 0; i < per_filter; ++i) wv[o * per_filter + i] *= s;
        bv[o] *= s;
      } else {
        bv[o] += op == ElementWiseOp::kSum ? s : -s;
      }
    }
    for (float v : wv) {
      if (!std::isfinite(v)) return false;  // the rounded weights would overflow: leave it
    }
    Tensor* nw = net.add_constant(from_floats(w->dtype(), w->dims(), wv),
                                  conv->name() + "/folded_w")->output();
    Tensor* nb = net.add_constant(from_floats(w->dtype(), {k}, bv),
                                  conv->name() + "/folded_b")->output();
    rebuild(net, conv, next, p, {conv->input(0), nw, nb});
    ++folded_scales;
    return true;
  }

  /// QuantizedConvolution followed by x*c, x+c or x-c with c a per-channel (or one-element)
  /// constant of the output's dtype: the batch norm that follows a convolution quantized before
  /// its folding (ember.quantize, PT2E without folding). The weight scale (input 3) and the bias
  /// (input 4) absorb it: out = scale * x_scale * (w_scale[k] c[k]) acc + (bias[k] c[k]), or
  /// bias[k] +/- c[k]; the int8 weights stay as they are.
  bool fold_qconv_affine(Layer* qc) {
    const auto& p = qc->params_as<QuantizedConvolutionParams>();
    if (p.epilogue.fused_activation || p.requantize.enabled || qc->input(7) != nullptr) {
      return false;
    }
    const Weights* ws = constant_of(qc->input(3));
    const Tensor* bias_t = qc->input(4);
    const Weights* b = constant_of(bias_t);
    if (ws == nullptr || ws->dtype() != DataType::kF32 || (bias_t != nullptr && b == nullptr)) {
      return false;
    }
    Layer* next = sole_consumer(net, qc->output());
    if (next == nullptr || next->kind() != LayerKind::kElementWise) return false;
    const ElementWiseOp op = next->params_as<ElementWiseParams>().op;
    if (!(op == ElementWiseOp::kProd || op == ElementWiseOp::kSum ||
          (op == ElementWiseOp::kSub && next->input(0) == qc->output()))) {
      return false;
    }
    const DataType out = qc->output()->dtype();
    const Weights* c = constant_of(other_input(*next, qc->output()));
    if (c == nullptr || c->dtype() != out || next->output()->dtype() != out ||
        !shapes_equal(next->output()->shape(), qc->output()->shape())) {
      return false;
    }
    const int64_t k = qc->input(1)->shape()[0].is_constant() ? qc->input(1)->shape()[0].constant()
                                                              : -1;
    if (k <= 0 || (ws->numel() != 1 && ws->numel() != k)) return false;
    const auto per_channel = per_axis(*c, qc->output()->rank(), 1, k);
    if (!per_channel) return false;
    const std::vector<float> wv0 = to_floats(*ws);
    std::vector<float> wv(static_cast<size_t>(k));
    for (int64_t o = 0; o < k; ++o) wv[o] = wv0[ws->numel() == 1 ? 0 : o];
    std::vector<float> bv = b != nullptr ? to_floats(*b) : std::vector<float>(k, 0.0f);
    for (int64_t o = 0; o < k; ++o) {
      const float v = (*per_channel)[o];
      if (op == ElementWiseOp::kProd) {
        wv[o] *= v;
        bv[o] *= v;
      } else {
        bv[o] += op == ElementWiseOp::kSum ? v : -v;
      }
      if (!std::isfinite(wv[o]) || !std::isfinite(bv[o])) return false;
    }
    std::vector<Tensor*> inputs = qc->inputs();
    if (inputs.size() < 5) inputs.resize(5, nullptr);
    inputs[3] = net.add_constant(from_floats(DataType::kF32, {k}, wv),
                                 qc->name() + "/folded_w_scale")->output();
    inputs[4] = net.add_constant(from_floats(out, {k}, bv), qc->name() + "/folded_b")->output();
    rebuild(net, qc, next, p, inputs);
    ++folded_scales;
    return true;
  }

  /// The sole consumer of `out` when it is an ElementWise `op` keeping `out`'s shape whose other
  /// operand is a constant of `out`'s dtype (returned in `c`); nullptr otherwise.
  Layer* constant_elementwise_after(const Tensor* out, ElementWiseOp op, const Weights*& c) {
    Layer* next = sole_consumer(net, out);
    if (next == nullptr || next->kind() != LayerKind::kElementWise ||
        next->params_as<ElementWiseParams>().op != op ||
        !shapes_equal(next->output()->shape(), out->shape())) {
      return nullptr;
    }
    c = constant_of(other_input(*next, out));
    return c != nullptr && c->dtype() == out->dtype() ? next : nullptr;
  }

  /// MatMul followed by x * c with c a one-element constant, into the epilogue scale (the
  /// 1/sqrt(d) of attention scores: cuBLASLt's alpha).
  bool fuse_matmul_scale(Layer* mm) {
    const auto& p = mm->params_as<MatrixMultiplyParams>();
    if (mm->input(2) != nullptr || mm->input(3) != nullptr || p.epilogue.fused_activation ||
        p.epilogue.scale != 1.0) {
      return false;
    }
    const Tensor* out = mm->output();
    const Weights* c = nullptr;
    Layer* next = constant_elementwise_after(out, ElementWiseOp::kProd, c);
    if (next == nullptr || c->numel() != 1) return false;
    const float value = to_floats(*c)[0];
    if (!std::isfinite(value)) return false;
    MatrixMultiplyParams scaled = p;
    scaled.epilogue.scale = value;
    rebuild(net, mm, next, scaled, mm->inputs());
    ++scales;
    return true;
  }

  /// MatMul with a constant rank-2 weight followed by x * c, c a constant along the last dim
  /// (one value per output column, or one for all when a bias rules out the epilogue scale),
  /// into the weight's columns and the bias: A (B c) + b c. ConvNeXt's layer scale after its
  /// MLP's second product, once channels_last has moved the permute between them; its residual
  /// add then joins the product too. The new weights are computed in f32 and rounded to their
  /// dtype once, as a convolution's folded batch norm.
  bool fold_matmul_column_scale(Layer* mm) {
    const auto& p = mm->params_as<MatrixMultiplyParams>();
    if (mm->input(3) != nullptr || p.epilogue.fused_activation || p.transpose_a) return false;
    const Weights* w = constant_of(mm->input(1));
    const Tensor* bias_t = mm->input(2);
    const Weights* b = constant_of(bias_t);
    if (w == nullptr || w->dims().size() != 2 || !is_float(w->dtype()) ||
        (bias_t != nullptr && b == nullptr)) {
      return false;
    }
    const Tensor* out = mm->output();
    const Weights* c = nullptr;
    Layer* next = constant_elementwise_after(out, ElementWiseOp::kProd, c);
    if (next == nullptr || (c->numel() == 1 && bias_t == nullptr)) return false;  // scale rule
    const int64_t n = p.transpose_b ? w->dims()[0] : w->dims()[1];
    const int64_t k = p.transpose_b ? w->dims()[1] : w->dims()[0];
    const auto per_col = per_axis(*c, out->rank(), out->rank() - 1, n);
    if (!per_col) return false;
    std::vector<float> wv = to_floats(*w);
    for (int64_t col = 0; col < n; ++col) {
      for (int64_t i = 0; i < k; ++i) wv[p.transpose_b ? col * k + i : i * n + col] *= (*per_col)[col];
    }
    std::vector<float> bv = b != nullptr ? to_floats(*b) : std::vector<float>();
    for (size_t col = 0; col < bv.size(); ++col) bv[col] *= (*per_col)[col % static_cast<size_t>(n)];
    for (float v : wv) {
      if (!std::isfinite(v)) return false;  // the rounded weights would overflow: leave it
    }
    std::vector<Tensor*> inputs = mm->inputs();
    inputs[1] = net.add_constant(from_floats(w->dtype(), w->dims(), wv),
                                 unique_layer_name(net, mm->name() + "/scaled_w"))
                    ->output();
    if (b != nullptr) {
      inputs[2] = net.add_constant(from_floats(b->dtype(), b->dims(), bv),
                                   unique_layer_name(net, mm->name() + "/scaled_b"))
                      ->output();
    }
    rebuild(net, mm, next, p, inputs);
    ++folded_scales;
    return true;
  }

  /// MatMul followed by x + c with c constant along the last dim, into the bias input (input 2;
  /// input 4 of a QuantizedMatrixMultiply).
  bool fuse_matmul_bias(Layer* mm) {
    const bool quantized = mm->kind() == LayerKind::kQuantizedMatrixMultiply;
    const size_t bias_index = quantized ? 4 : 2;
    if (quantized) {
      const auto& q = mm->params_as<QuantizedMatrixMultiplyParams>();
      if (mm->input(4) != nullptr || mm->input(7) != nullptr || q.epilogue.fused_activation ||
          q.requantize.enabled) {
        return false;
      }
    } else {
      const auto& p = mm->params_as<MatrixMultiplyParams>();
      if (mm->input(2) != nullptr || mm->input(3) != nullptr || p.epilogue.fused_activation) {
        return false;
      }
    }
    const Tensor* out = mm->output();
    // The bias runs along b's columns: a vector b has none.
    if (mm->input(1)->rank() < 2 || out->rank() < 1 || !out->shape().back().is_constant()) {
      return false;
    }
    const Weights* c = nullptr;
    Layer* next = constant_elementwise_after(out, ElementWiseOp::kSum, c);
    if (next == nullptr) return false;
    const int64_t n = out->shape().back().constant();
    const auto per_col = per_axis(*c, out->rank(), out->rank() - 1, n);
    if (!per_col) return false;
    Tensor* bias = net.add_constant(from_floats(c->dtype(), {n}, *per_col),
                                    mm->name() + "/bias")->output();
    std::vector<Tensor*> inputs = mm->inputs();
    if (inputs.size() <= bias_index) inputs.resize(bias_index + 1, nullptr);
    inputs[bias_index] = bias;
    rebuild(net, mm, next, mm->params(), inputs);
    ++biases;
    return true;
  }

  /// A fused low-precision product followed by a per-tensor symmetric int8 Quantize (for a
  /// matrix product also behind a reshape), into its requantization: the layer then outputs
  /// the int8 tensor the Quantize made, and the float product is never stored. An FP8 product
  /// takes a per-tensor f8e4m3 Quantize the same way.
  bool fuse_requantize(Layer* prod) {
    LayerParams params = prod->params();
    Requantize* r = prod->kind() == LayerKind::kQuantizedConvolution
                        ? &std::get<QuantizedConvolutionParams>(params).requantize
                        : &std::get<QuantizedMatrixMultiplyParams>(params).requantize;
    // A residual stays the float output's, except in an int8 convolution (layers.h): the layer
    // takes no requantization with one.
    const bool int8_conv = prod->kind() == LayerKind::kQuantizedConvolution &&
                           prod->input(0)->dtype() != DataType::kF8E4M3;
    if (r->enabled || (prod->input(7) != nullptr && !int8_conv)) return false;
    Layer* reshape = nullptr;
    Layer* next = next_through_reshape(prod, reshape);
    if (next == nullptr || next->kind() != LayerKind::kQuantize || next->input(2) != nullptr) {
      return false;
    }
    const auto& qp = next->params_as<QuantizeParams>();
    const bool fp8_product = prod->input(0)->dtype() == DataType::kF8E4M3;
    if (qp.per_channel || !(qp.to == DataType::kI8 ||
                            (qp.to == DataType::kF8E4M3 && fp8_product))) {
      return false;
    }
    r->enabled = true;
    r->to = qp.to;
    r->quant_min = qp.quant_min;
    r->quant_max = qp.quant_max;
    std::vector<Tensor*> inputs = prod->inputs();  // the zero point (input 6) stays
    if (inputs.size() < 6) inputs.resize(6, nullptr);
    inputs[5] = next->input(1);
    replace_through_reshape(net.add_layer(params, inputs, fused_name(*prod, *next)), next,
                            reshape);
    ++requantizations;
    return true;
  }

  /// The layer reading `prod`'s output: its sole consumer, or for a MatMul the sole consumer of
  /// a reshape-only Shuffle in between (then returned in `reshape`). nullptr when neither.
  Layer* next_through_reshape(Layer* prod, Layer*& reshape) {
    reshape = nullptr;
    Layer* next = sole_consumer(net, prod->output());
    if (next != nullptr && next->kind() == LayerKind::kShuffle &&
        (prod->kind() == LayerKind::kMatrixMultiply ||
         prod->kind() == LayerKind::kQuantizedMatrixMultiply)) {
      if (!is_pure_reshape(next)) return nullptr;
      reshape = next;
      next = sole_consumer(net, reshape->output());
    }
    return next;
  }

  /// Makes the readers of `absorbed` read `fused` instead, reshaped back to `absorbed`'s shape
  /// when a reshape sat between the product and `absorbed`.
  void replace_through_reshape(Layer* fused, Layer* absorbed, const Layer* reshape) {
    Tensor* result = fused->output();
    if (reshape != nullptr) {
      result = net.add_reshape(result, absorbed->output()->shape(), reshape->name() + "+")->output();
    }
    net.replace_all_uses(absorbed->output(), result);
  }

  /// Conv/MatMul followed by x + r, r a computed tensor of the output's shape (directly, or
  /// after a reshape of a MatMul's output), into the residual input. An int8
  /// QuantizedConvolution whose r is a per-tensor symmetric Dequantize(q, s) of an i8 q takes q
  /// as the residual and s as its scale (input 8): the shortcut is read as one byte an element,
  /// and the Dequantize goes when nothing else reads it (remove_dead_layers).
  bool fuse_residual(Layer* prod, const Epilogue& e, size_t residual_index) {
    if (e.fused_activation || prod->input(residual_index) != nullptr) return false;
    Tensor* out = prod->output();
    Layer* reshape = nullptr;
    Layer* next = next_through_reshape(prod, reshape);
    if (next == nullptr || next->kind() != LayerKind::kElementWise ||
        next->params_as<ElementWiseParams>().op != ElementWiseOp::kSum) {
      return false;
    }
    const Tensor* sum_in = reshape != nullptr ? reshape->output() : out;
    Tensor* r = other_input(*next, sum_in);
    if (r == nullptr || constant_of(r) != nullptr || r->dtype() != out->dtype() ||
        !shapes_equal(r->shape(), sum_in->shape()) ||
        !shapes_equal(next->output()->shape(), sum_in->shape())) {
      return false;
    }
    if (reshape != nullptr) {
      r = net.add_reshape(r, out->shape(), next->name() + "/residual")->output();
    }
    Tensor* residual_scale = nullptr;
    if (const Layer* dq = r->producer();
        prod->kind() == LayerKind::kQuantizedConvolution &&
        prod->input(0)->dtype() != DataType::kF8E4M3 && dq != nullptr &&
        dq->kind() == LayerKind::kDequantize && dq->input(2) == nullptr &&
        !dq->params_as<DequantizeParams>().per_channel &&
        dq->input(0)->dtype() == DataType::kI8) {
      r = dq->input(0);
      residual_scale = dq->input(1);
    }
    std::vector<Tensor*> inputs = prod->inputs();
    inputs.resize(residual_index + (residual_scale != nullptr ? 2 : 1), nullptr);
    inputs[residual_index] = r;
    if (residual_scale != nullptr) inputs[residual_index + 1] = residual_scale;
    replace_through_reshape(net.add_layer(prod->params(), inputs, fused_name(*prod, *next)), next,
                            reshape);
    ++residuals;
    return true;
  }

  /// Conv/MatMul followed by an Activation (for a MatMul also behind a reshape), into the
  /// epilogue.
  bool fuse_activation(Layer* prod) {
    Layer* reshape = nullptr;
    Layer* next = next_through_reshape(prod, reshape);
    if (next == nullptr || next->kind() != LayerKind::kActivation ||
        next->output()->dtype() != prod->output()->dtype()) {
      return false;
    }
    const auto& ap = next->params_as<ActivationParams>();
    // An activation the back end would run as a pass of its own after a float product, read
    // by a pointwise layer (SwiGLU's silu(gate) * up): fuse_pointwise puts it into that
    // layer's kernel instead, one kernel and one round trip fewer.
    if (prod->kind() == LayerKind::kMatrixMultiply && fuse_pointwise && backend != nullptr &&
        !backend->product_activation_in_kernel(ap.type) && !next->output()->is_output()) {
      const Layer* reader = sole_consumer(net, next->output());
      if (reader != nullptr && is_fusable_pointwise(reader)) {
        ++left_to_pointwise;
        return false;
      }
    }
    LayerParams params = prod->params();
    Epilogue* e = nullptr;
    if (auto* c = std::get_if<ConvolutionParams>(&params)) e = &c->epilogue;
    if (auto* m = std::get_if<MatrixMultiplyParams>(&params)) e = &m->epilogue;
    if (auto* qc = std::get_if<QuantizedConvolutionParams>(&params)) {
      if (qc->requantize.enabled) return false;  // the activation comes before it
      e = &qc->epilogue;
    }
    if (auto* qm = std::get_if<QuantizedMatrixMultiplyParams>(&params)) {
      if (qm->requantize.enabled) return false;
      e = &qm->epilogue;
    }
    if (e == nullptr || e->fused_activation) return false;
    e->fused_activation = true;
    e->activation = ap.type;
    e->alpha = ap.alpha;
    e->beta = ap.beta;
    replace_through_reshape(net.add_layer(params, prod->inputs(), fused_name(*prod, *next)), next,
                            reshape);
    ++activations;
    return true;
  }

  bool try_layer(Layer* l) {
    if (products_only && l->kind() != LayerKind::kMatrixMultiply) return false;
    if (l->kind() == LayerKind::kConvolution) {
      const auto& e = l->params_as<ConvolutionParams>().epilogue;
      return fold_conv_affine(l) || fuse_residual(l, e, 3) || fuse_activation(l);
    }
    if (l->kind() == LayerKind::kMatrixMultiply && is_float(l->output()->dtype())) {
      const auto& e = l->params_as<MatrixMultiplyParams>().epilogue;
      return fuse_matmul_scale(l) || fold_matmul_column_scale(l) || fuse_matmul_bias(l) ||
             fuse_residual(l, e, 3) || fuse_activation(l);
    }
    if (l->kind() == LayerKind::kQuantizedMatrixMultiply && is_float(l->output()->dtype())) {
      const auto& e = l->params_as<QuantizedMatrixMultiplyParams>().epilogue;
      return fuse_matmul_bias(l) || fuse_residual(l, e, 7) || fuse_activation(l) ||
             fuse_requantize(l);
    }
    if (l->kind() == LayerKind::kQuantizedConvolution && is_float(l->output()->dtype())) {
      const auto& e = l->params_as<QuantizedConvolutionParams>().epilogue;
      return fold_qconv_affine(l) || fuse_residual(l, e, 7) || fuse_activation(l) ||
             fuse_requantize(l);
    }
    return false;
  }
};

}  // namespace

namespace {

void run_fuser(BuildState& s, bool products_only, const char* name) {
  Network& net = s.plan.network;
  Fuser f{net};
  f.backend = find_backend(s.config.backend);
  f.fuse_pointwise = fuse_pointwise_enabled(s.config);
  f.products_only = products_only;
  // Each success replaces layers, so restart the walk; every rewrite removes a layer from the
  // live graph, which bounds the loop.
  bool changed = true;
  while (changed) {
    changed = false;
    for (Layer* l : net.layers()) {
      if (f.try_layer(l)) {
        changed = true;
        remove_unreachable_layers(net);  // what the rewrite left behind
        break;
      }
    }
  }
  s.log.push_back(std::string(name) + ": " + std::to_string(f.folded_scales) +
                  " scale/shift folds into convolution or matmul weights or scales, " + std::to_string(f.scales) +
                  " matmul scales, " + std::to_string(f.biases) +
                  " matmul biases, " + std::to_string(f.residuals) + " residual adds, " +
                  std::to_string(f.activations) + " activations, " +
                  std::to_string(f.requantizations) + " requantizations" +
                  (f.left_to_pointwise > 0
                       ? ", " + std::to_string(f.left_to_pointwise) +
                             " activations left to fuse_pointwise (a pass of their own here)"
                       : std::string()));
}

}  // namespace

void pass_fuse_epilogues(BuildState& s) { run_fuser(s, false, "fuse_epilogues"); }

void pass_fuse_epilogues_after_attention(BuildState& s) {
  run_fuser(s, true, "fuse_epilogues_after_attention");
}

void pass_fuse_epilogues_after_row_moves(BuildState& s) {
  run_fuser(s, true, "fuse_epilogues_after_row_moves");
}

}  // namespace ember::engine
