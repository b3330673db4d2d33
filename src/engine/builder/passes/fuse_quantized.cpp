// fuse_quantized: turns Dequantize -> MatrixMultiply and Dequantize -> Convolution chains into
// one low-precision product each.
//
//   MatrixMultiply(Dequantize(qa, sa[, za]), Dequantize(Constant qb, sb))
//     => QuantizedMatrixMultiply(qa, qb', sa, sb)
//
// where qa and qb are both i8 or both f8e4m3 (or qa u8 with qb i8), qa may have a zero point
// (int8/uint8 only; it becomes the layer's input 6), sa has one element, and sb has one element or
// one per output column (the per-channel axis of the weight's N dim). The weight may reach the
// product through a 2-d transpose (PyTorch's linear decomposes to permute + mm); the fused layer
// wants it [N, K], so a [K, N] constant is transposed here once (it is a constant). The
// activation may reach it through a reshape (flatten before a linear): the reshape moves to
// the quantized tensor. Runs before fold_constants, which would otherwise fold the weight's
// Dequantize into an f32 constant and lose the int8 weight.
//
//   Convolution(Dequantize(qx, sx[, zx]), Dequantize(Constant qw, sw), bias)
//     => QuantizedConvolution(qx, qw, sx, sw, bias)
//
// where qx is i8 or u8, with or without a zero point zx (then the layer's input 6), and qw is
// i8 and symmetric, sx has one element and sw one element or one per output channel (axis 0 of
// the [K, C/groups, *kernel] weight); or qx and qw are both f8e4m3, symmetric, with one-element
// scales (FP8 convolutions, as ember.quantize makes them). The convolution must be a plain one
// (NCHW, no epilogue yet: fuse_epilogues runs later).
//
// The result equals the unfused Q/DQ math up to f32 rounding: sum_k (qa sa)(qb sb) is
// sa sb sum_k qa qb, and the int8 sum is exact in int32.
#include <string>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// A symmetric per-tensor or per-channel Dequantize feeding `t`, or nullptr.
const Layer* symmetric_dequantize(const Tensor* t) {
  const Layer* l = t == nullptr ? nullptr : t->producer();
  if (l == nullptr || l->kind() != LayerKind::kDequantize || l->input(2) != nullptr) {
    return nullptr;
  }
  const DataType q = l->input(0)->dtype();
  return q == DataType::kI8 || q == DataType::kF8E4M3 ? l : nullptr;
}

/// A per-tensor int8 or uint8 Dequantize feeding `t`, with or without a zero point (an
/// activation's), or nullptr.
const Layer* activation_dequantize(const Tensor* t) {
  const Layer* l = t == nullptr ? nullptr : t->producer();
  if (l == nullptr || l->kind() != LayerKind::kDequantize ||
      l->params_as<DequantizeParams>().per_channel) {
    return nullptr;
  }
  const DataType q = l->input(0)->dtype();
  return q == DataType::kI8 || q == DataType::kU8 ? l : nullptr;
}

/// The fused layer's inputs: `first` (0 to 3), then nullptr for the bias and out_scale slots,
/// and the activation's zero point as input 6 when it has one.
std::vector<Tensor*> fused_inputs(std::vector<Tensor*> first, Tensor* bias, Tensor* zero_point) {
  first.push_back(bias);
  if (zero_point != nullptr) {
    first.resize(6, nullptr);
    first.push_back(zero_point);
  }
  while (!first.empty() && first.back() == nullptr) first.pop_back();
  return first;
}

/// True for a Shuffle that only swaps the two dims of a rank-2 tensor.
bool is_transpose_2d(const Layer* l) {
  if (l == nullptr || l->kind() != LayerKind::kShuffle || l->output()->rank() != 2) return false;
  const auto& p = l->params_as<ShuffleParams>();
  const bool first = p.first_transpose == std::vector<int64_t>{1, 0};
  return !p.has_reshape &&
         ((first && p.second_transpose.empty()) ||
          (p.first_transpose.empty() && p.second_transpose == std::vector<int64_t>{1, 0}));
}

/// The bytes of a rank-2 constant transposed.
Weights transposed(const Weights& w) {
  const int64_t r = w.dims()[0], c = w.dims()[1];
  const size_t e = dtype_size(w.dtype());
  std::vector<uint8_t> out(static_cast<size_t>(r * c) * e);
  const auto* in = static_cast<const uint8_t*>(w.data());
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) {
      std::copy_n(in + static_cast<size_t>(i * c + j) * e, e,
                  out.data() + static_cast<size_t>(j * r + i) * e);
    }
  }
  return Weights::copy(w.dtype(), {c, r}, out.data());
}

/// Fuses one product if it matches; true when it did.
bool fuse(Network& net, Layer* mm) {
  const auto& mp = mm->params_as<MatrixMultiplyParams>();
  if (mp.transpose_a || mm->input(2) != nullptr || mm->input(3) != nullptr ||
      mp.epilogue.fused_activation || mp.epilogue.scale != 1.0) {
    return false;
  }
  // The activation side: Dequantize, optionally behind a reshape.
  const Tensor* a = mm->input(0);
  const Layer* a_reshape = nullptr;
  if (is_pure_reshape(a->producer()) && a->producer()->params_as<ShuffleParams>().has_reshape) {
    a_reshape = a->producer();
    a = a_reshape->input(0);
  }
  // int8/uint8 activations may carry a zero point (PT2E's uint8 default); FP8 is symmetric.
  const Layer* dqa = activation_dequantize(a);
  if (dqa == nullptr) dqa = symmetric_dequantize(a);
  if (dqa == nullptr || dqa->params_as<DequantizeParams>().per_channel || a->rank() < 2) {
    return false;
  }
  // The weight side: Dequantize of a rank-2 constant, optionally behind a 2-d transpose.
  const Tensor* b = mm->input(1);
  bool trans_b = mp.transpose_b;
  if (is_transpose_2d(b->producer())) {
    b = b->producer()->input(0);
    trans_b = !trans_b;
  }
  const Layer* dqb = symmetric_dequantize(b);
  if (dqb == nullptr || b->rank() != 2) return false;
  const Weights* wq = constant_of(dqb->input(0));
  const bool fp8 = dqa->input(0)->dtype() == DataType::kF8E4M3;
  if (wq == nullptr || dqb->input(0)->dtype() != (fp8 ? DataType::kF8E4M3 : DataType::kI8)) {
    return false;
  }
  const auto& bp = dqb->params_as<DequantizeParams>();
  // The weight's N axis: dim 0 of a [N, K] weight (trans_b), dim 1 of a [K, N] one.
  if (bp.per_channel && (fp8 || bp.axis != (trans_b ? 0 : 1))) return false;
  Tensor* qb = dqb->input(0);
  if (!trans_b) {
    qb = net.add_constant(transposed(*wq), mm->name() + "/weight_nk")->output();
  }
  Tensor* qa = dqa->input(0);
  if (a_reshape != nullptr) {
    ShuffleParams rp = a_reshape->params_as<ShuffleParams>();
    qa = net.add_shuffle(qa, rp, mm->name() + "/quantized_reshape")->output();
  }
  if (qa->rank() < 2) return false;
  QuantizedMatrixMultiplyParams qp;
  qp.out = mm->output()->dtype();
  Layer* fused = net.add_layer(
      qp, fused_inputs({qa, qb, dqa->input(1), dqb->input(1)}, nullptr, dqa->input(2)),
      mm->name() + "/" + (fp8 ? "fp8" : "int8"));
  net.replace_all_uses(mm->output(), fused->output());
  return true;
}

/// Fuses one convolution if it matches: the fused layer's operand type (kI8 or kF8E4M3) when `conv` was fused, else kF32.
DataType fuse_convolution(Network& net, Layer* conv) {
  const auto& cp = conv->params_as<ConvolutionParams>();
  if (cp.channels_last || cp.epilogue.fused_activation || cp.epilogue.scale != 1.0 ||
      conv->input(3) != nullptr) {
    return DataType::kF32;
  }
  const Layer* dqx = activation_dequantize(conv->input(0));
  const Layer* fp8x = symmetric_dequantize(conv->input(0));
  const bool fp8 = dqx == nullptr && fp8x != nullptr &&
                   fp8x->input(0)->dtype() == DataType::kF8E4M3 &&
                   !fp8x->params_as<DequantizeParams>().per_channel;
  if (fp8) dqx = fp8x;
  if (dqx == nullptr) return DataType::kF32;
  const Layer* dqw = symmetric_dequantize(conv->input(1));
  if (dqw == nullptr || dqw->input(0)->dtype() != (fp8 ? DataType::kF8E4M3 : DataType::kI8) ||
      constant_of(dqw->input(0)) == nullptr) {
    return DataType::kF32;
  }
  const auto& wp = dqw->params_as<DequantizeParams>();
  // One weight scale per output channel (int8), or one.
  if (wp.per_channel && (fp8 || wp.axis != 0)) return DataType::kF32;
  QuantizedConvolutionParams qp;
  qp.stride = cp.stride;
  qp.padding_begin = cp.padding_begin;
  qp.padding_end = cp.padding_end;
  qp.dilation = cp.dilation;
  qp.groups = cp.groups;
  qp.out = conv->output()->dtype();
  Layer* fused = net.add_layer(
      qp,
      fused_inputs({dqx->input(0), dqw->input(0), dqx->input(1), dqw->input(1)}, conv->input(2),
                   dqx->input(2)),
      conv->name() + (fp8 ? "/fp8" : "/int8"));
  net.replace_all_uses(conv->output(), fused->output());
  return fp8 ? DataType::kF8E4M3 : DataType::kI8;
}

}  // namespace

void pass_fuse_quantized(BuildState& s) {
  Network& net = s.plan.network;
  int products = 0, convolutions = 0, fp8_convolutions = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kMatrixMultiply && fuse(net, l)) ++products;
    if (l->kind() == LayerKind::kConvolution) {
      const DataType fused = fuse_convolution(net, l);
      if (fused == DataType::kF8E4M3) ++fp8_convolutions;
      if (fused == DataType::kI8) ++convolutions;
    }
  }
  const int removed = remove_unreachable_layers(net);
  s.log.push_back("fuse_quantized: " + std::to_string(products) +
                  " low-precision products (int8/fp8), " + std::to_string(convolutions) +
                  " int8 convolutions, " + std::to_string(fp8_convolutions) +
                  " fp8 convolutions, " + std::to_string(removed) + " layers removed");
}

}  // namespace ember::engine
