// Shape and type inference of the quantization family: Quantize, Dequantize and the fused
// QuantizedMatrixMultiply and QuantizedConvolution.
//
// Decisions this file makes beyond layers.h (kernels in backends/*/quantize.* rely on them):
// - scale is f32 with one element (rank 0 or [1]) per-tensor, or rank 1 of exactly x's dim
//   `axis` per-channel; zero_point, when given, is i32 of scale's shape.
// - f8e4m3 takes no zero_point: FP8 quantization is symmetric (TensorRT and cuBLASLt's FP8
//   scales have no offset).
// - quant_min <= quant_max, both inside the integer output type's range.
#include <cmath>
#include <string>

#include "network/infer.h"

namespace ember::engine {

namespace {

/// The value range of an integer quantized type.
std::pair<int64_t, int64_t> quantized_range(DataType t) {
  return t == DataType::kU8 ? std::pair<int64_t, int64_t>{0, 255}
                            : std::pair<int64_t, int64_t>{-128, 127};
}

/// Checks inputs 1 (scale) and 2 (zero_point) against input 0's shape.
void infer_scales(bool per_channel, int64_t axis, DataType quantized, InferContext& ctx) {
  ctx.expect_num_inputs(2, 3);
  ctx.expect_dtype(1, DataType::kF32, "scale");
  const Shape& s = ctx.shape(1);
  if (per_channel) {
    InferContext::expect_axis(axis, ctx.rank(0), "per-channel axis");
    ctx.expect_rank(1, 1, "per-channel scale");
    ctx.check_equal(s[0], ctx.shape(0)[axis],
                    "per-channel scale length equals the input's dim " + std::to_string(axis));
  } else {
    InferContext::require(
        s.empty() || (s.size() == 1 && s[0].is_constant() && s[0].constant() == 1),
        "a per-tensor scale has one element (shape [] or [1]), got " + shape_to_string(s) +
            " (set per_channel and axis for one scale per channel)");
  }
  if (ctx.has(2)) {
    InferContext::require(quantized != DataType::kF8E4M3,
                          "f8e4m3 quantization is symmetric: it takes no zero_point");
    ctx.expect_dtype(2, DataType::kI32, "zero_point");
    InferContext::require(ctx.shape(2) == s, "zero_point shape " + shape_to_string(ctx.shape(2)) +
                                                 " differs from scale shape " + shape_to_string(s));
  }
}

/// Checks what a fused low-precision product (QuantizedMatrixMultiply, QuantizedConvolution)
/// has after its sum: the optional bias (input `bias_index`, `out`'s dtype, [n]), the epilogue,
/// and the requantization with its out_scale (input bias_index + 1; to i8, or to f8e4m3 where
/// `fp8_to_ok`). Returns the output dtype.
DataType expect_product_epilogue(const Epilogue& e, const Requantize& r, DataType out,
                                 size_t bias_index, const DimExpr& n, bool fp8_to_ok,
                                 InferContext& ctx) {
  if (ctx.has(bias_index)) {
    ctx.expect_dtype(bias_index, out, "bias (the output's dtype)");
    ctx.expect_rank(bias_index, 1, "bias");
    ctx.check_equal(ctx.shape(bias_index)[0], n,
                    "bias length equals the output channels (" + n.to_string() + ")");
  }
  InferContext::require(static_cast<int>(e.activation) < kNumActivationTypes,
                        "epilogue activation type is out of range");
  InferContext::require(std::isfinite(e.scale), "epilogue scale must be finite");
  const size_t scale_index = bias_index + 1;
  if (!r.enabled) {
    InferContext::require(!ctx.has(scale_index),
                          "input " + std::to_string(scale_index) +
                              " (out_scale) is only taken with requantize on");
    return out;
  }
  InferContext::require(
      r.to == DataType::kI8 || (r.to == DataType::kF8E4M3 && fp8_to_ok),
      std::string("requantizes to ") +
          (static_cast<int>(r.to) < kNumDataTypes ? dtype_name(r.to) : "an unknown dtype") +
          (fp8_to_ok ? ": only i8 and f8e4m3 are taken"
                     : ": only i8 is taken here (f8e4m3 only from f8e4m3 operands)"));
  if (r.to == DataType::kI8) {
    InferContext::require(
        -128 <= r.quant_min && r.quant_min <= r.quant_max && r.quant_max <= 127,
        "requantize range [" + std::to_string(r.quant_min) + ", " + std::to_string(r.quant_max) +
            "] is empty or outside i8's [-128, 127]");
  }
  InferContext::require(ctx.has(scale_index), "requantize needs out_scale (input " +
                                                  std::to_string(scale_index) + ")");
  ctx.expect_dtype(scale_index, DataType::kF32, "out_scale");
  InferContext::require(one_element(ctx.shape(scale_index)),
                        "out_scale must have one element, got shape " +
                            shape_to_string(ctx.shape(scale_index)));
  return r.to;
}

/// Checks a fused product's optional activation zero point (input 6: i32, one element, for
/// i8/u8 activations only).
void expect_activation_zero_point(DataType activation, InferContext& ctx) {
  constexpr size_t kZeroPoint = 6;
  if (!ctx.has(kZeroPoint)) return;
  InferContext::require(activation != DataType::kF8E4M3,
                        "f8e4m3 products are symmetric: they take no zero point (input 6)");
  ctx.expect_dtype(kZeroPoint, DataType::kI32, "x_zero_point");
  InferContext::require(one_element(ctx.shape(kZeroPoint)),
                        "x_zero_point (input 6) must have one element, got shape " +
                            shape_to_string(ctx.shape(kZeroPoint)));
}

/// A fused product's optional residual (input 7): the output's shape `out`, in the float type
/// `out_dtype`, with no requantization (the residual stays the float output's). An int8
/// convolution (`int8_conv`) also takes an i8 residual with its scale (input 8, f32, one
/// element), and a requantization with either.
void expect_product_residual(const Requantize& r, DataType out_dtype, const Shape& out,
                             bool int8_conv, InferContext& ctx) {
  constexpr size_t kResidual = 7, kResidualScale = 8;
  if (!ctx.has(kResidual)) {
    InferContext::require(!ctx.has(kResidualScale),
                          "residual_scale (input 8) is given without a residual (input 7)");
    return;
  }
  InferContext::require(int8_conv || !r.enabled,
                        "a residual (input 7) is not taken with requantize on (an int8 "
                        "convolution's is)");
  if (int8_conv && ctx.dtype(kResidual) == DataType::kI8) {
    InferContext::require(ctx.has(kResidualScale),
                          "an i8 residual (input 7) needs its residual_scale (input 8)");
    ctx.expect_dtype(kResidualScale, DataType::kF32, "residual_scale");
    InferContext::require(one_element(ctx.shape(kResidualScale)),
                          "residual_scale (input 8) must have one element, got shape " +
                              shape_to_string(ctx.shape(kResidualScale)));
  } else {
    InferContext::require(!ctx.has(kResidualScale),
                          "residual_scale (input 8) goes with an i8 residual only");
    ctx.expect_dtype(kResidual, out_dtype,
                     int8_conv ? "residual (the float type, or i8 with residual_scale)"
                               : "residual (the output's dtype)");
  }
  InferContext::require(ctx.shape(kResidual) == out,
                        "residual (input 7) shape " + shape_to_string(ctx.shape(kResidual)) +
                            " differs from the output's " + shape_to_string(out));
}

}  // namespace

void infer(const QuantizeParams& p, InferContext& ctx) {
  InferContext::require(
      dtype_is_quantized(p.to),
      std::string("quantizes to i8, u8 or f8e4m3, not ") +
          (static_cast<int>(p.to) < kNumDataTypes ? dtype_name(p.to) : "an unknown dtype"));
  ctx.expect_float(0, "input");
  if (p.to != DataType::kF8E4M3) {
    const auto [lo, hi] = quantized_range(p.to);
    InferContext::require(lo <= p.quant_min && p.quant_min <= p.quant_max && p.quant_max <= hi,
                          "quant range [" + std::to_string(p.quant_min) + ", " +
                              std::to_string(p.quant_max) + "] is empty or outside " +
                              dtype_name(p.to) + "'s [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + "]");
  }
  infer_scales(p.per_channel, p.axis, p.to, ctx);
  ctx.add_output(p.to, ctx.shape(0));
}

void infer(const DequantizeParams& p, InferContext& ctx) {
  InferContext::require(static_cast<int>(p.to) < kNumDataTypes && dtype_is_float(p.to),
                        "dequantizes to f32, f16 or bf16");
  InferContext::require(
      dtype_is_quantized(ctx.dtype(0)),
      std::string("input (input 0) must be i8, u8 or f8e4m3, got ") + dtype_name(ctx.dtype(0)));
  infer_scales(p.per_channel, p.axis, ctx.dtype(0), ctx);
  ctx.add_output(p.to, ctx.shape(0));
}

void infer(const QuantizedMatrixMultiplyParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(4, 8);
  InferContext::require(static_cast<int>(p.out) < kNumDataTypes && dtype_is_float(p.out),
                        "the output type must be f32, f16 or bf16");
  const DataType q = ctx.dtype(0);
  InferContext::require(q == DataType::kI8 || q == DataType::kU8 || q == DataType::kF8E4M3,
                        std::string("a (input 0) must be i8, u8 or f8e4m3, got ") + dtype_name(q));
  if (q == DataType::kF8E4M3) {
    ctx.expect_same_dtype(0, 1);
  } else {
    ctx.expect_dtype(1, DataType::kI8, "b (an int8 product's weight)");
  }
  expect_activation_zero_point(q, ctx);
  InferContext::require(ctx.rank(0) >= 2, "a (input 0) must have rank >= 2, got shape " +
                                              shape_to_string(ctx.shape(0)));
  ctx.expect_rank(1, 2, "b");
  ctx.expect_dtype(2, DataType::kF32, "a_scale");
  ctx.expect_dtype(3, DataType::kF32, "b_scale");
  auto one = [](const Shape& s) {
    return s.empty() || (s.size() == 1 && s[0].is_constant() && s[0].constant() == 1);
  };
  InferContext::require(one(ctx.shape(2)), "a_scale must have one element, got shape " +
                                               shape_to_string(ctx.shape(2)));
  const Shape& a = ctx.shape(0);
  const Shape& b = ctx.shape(1);
  if (!one(ctx.shape(3))) {
    InferContext::require(q != DataType::kF8E4M3, "f8e4m3 products take a one-element b_scale");
    ctx.expect_rank(3, 1, "per-column b_scale");
    ctx.check_equal(ctx.shape(3)[0], b[0], "b_scale length equals b's dim 0 (N)");
  }
  ctx.check_equal(a[a.size() - 1], b[1], "a's last dim (K) equals b's dim 1 (K)");
  Shape out(a.begin(), a.end() - 1);
  out.push_back(b[0]);
  expect_product_residual(p.requantize, p.out, out, /*int8_conv=*/false, ctx);
  ctx.add_output(expect_product_epilogue(p.epilogue, p.requantize, p.out, 4, b[0],
                                         q == DataType::kF8E4M3, ctx),
                 std::move(out));
}

void infer(const QuantizedConvolutionParams& p, InferContext& ctx) {
  enum : size_t { kX = 0, kW = 1, kXScale = 2, kWScale = 3, kBias = 4 };
  ctx.expect_num_inputs(4, 9);
  InferContext::require(static_cast<int>(p.out) < kNumDataTypes && dtype_is_float(p.out),
                        "the output type must be f32, f16 or bf16");
  const DataType q = ctx.dtype(kX);
  InferContext::require(q == DataType::kI8 || q == DataType::kU8 || q == DataType::kF8E4M3,
                        std::string("x (input 0) must be i8, u8 or f8e4m3, got ") +
                            dtype_name(q));
  expect_activation_zero_point(q, ctx);
  if (q == DataType::kF8E4M3) {
    ctx.expect_dtype(kW, DataType::kF8E4M3, "w (an f8e4m3 convolution's weight)");
  } else {
    ctx.expect_dtype(kW, DataType::kI8, "w (an int8 convolution's weight)");
  }
  ctx.expect_dtype(kXScale, DataType::kF32, "x_scale");
  ctx.expect_dtype(kWScale, DataType::kF32, "w_scale");
  InferContext::require(one_element(ctx.shape(kXScale)),
                        "x_scale must have one element, got shape " +
                            shape_to_string(ctx.shape(kXScale)));
  const DataType out_dtype = expect_product_epilogue(p.epilogue, p.requantize, p.out, kBias,
                                                     ctx.shape(kW)[0], q == DataType::kF8E4M3,
                                                     ctx);
  // The geometry is Convolution's; the bias sits at input 2 there.
  std::vector<const Tensor*> geometry_inputs{&ctx.in(kX), &ctx.in(kW)};
  if (ctx.has(kBias)) geometry_inputs.push_back(&ctx.in(kBias));
  InferContext geometry(std::move(geometry_inputs));
  Shape out = infer_convolution_shape(convolution_of(p), geometry);
  for (ShapeCheck& c : geometry.checks()) ctx.checks().push_back(std::move(c));
  const Shape& ws = ctx.shape(kWScale);
  if (!one_element(ws)) {
    ctx.expect_rank(kWScale, 1, "per-channel w_scale");
    ctx.check_equal(ws[0], ctx.shape(kW)[0], "w_scale length equals w's dim 0 (K)");
  }
  expect_product_residual(p.requantize, p.out, out, q != DataType::kF8E4M3, ctx);
  ctx.add_output(out_dtype, std::move(out));
}

}  // namespace ember::engine
