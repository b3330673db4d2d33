// The Quantize layer's arithmetic: the one definition both back ends evaluate (the CPU
// reference on the host, the CUDA Quantize kernel on the device). PyTorch's quantized_decomposed
// math: x * (1 / scale), round half to even, + zero_point, clamp, all in f32.
#pragma once

#include <math.h>

#include "backends/semantics/host_device.h"

namespace ember::engine::semantics {

/// 1 / scale, correctly rounded in f32 (PyTorch's per-channel `1.0 / scales`; its per-tensor
/// path rounds the double 1.0 / scale to f32 instead, which agrees but for one-in-a-billion
/// double-rounding cases). f32, so the device kernels need no double division per element.
EMBER_HOST_DEVICE inline float quant_inv_scale(float scale) { return 1.0f / scale; }

/// clamp(round_half_even(v * inv_scale) + zero_point, lo, hi), in f32 (integer valued).
EMBER_HOST_DEVICE inline float quant_round_clamp(float v, float inv_scale, float zero_point,
                                                 float lo, float hi) {
  // nearbyintf rounds half to even in the default rounding mode, as torch.round does.
  const float r = nearbyintf(v * inv_scale) + zero_point;
  // NaN clamps to lo (PyTorch's clamp keeps NaN and the cast to int is then undefined; a defined
  // value is kinder than garbage).
  return r >= lo ? (r <= hi ? r : hi) : lo;
}

/// A fused low-precision product's value before it is rounded to the output type (layers.h,
/// QuantizedConvolution and QuantizedMatrixMultiply): `acc` (the exact integer sum as an f32
/// value; FP8: the f32 sum) times `multiplier` (x_scale * w_scale[k], computed first), times
/// the epilogue scale, plus the bias (0 when there is none), plus the residual (a
/// QuantizedMatrixMultiply's input 7; 0 when there is none).
EMBER_HOST_DEVICE inline float quantized_product_value(float acc, float multiplier, float scale,
                                                    float bias, float residual = 0.0f) {
  float v = acc * multiplier;
  if (scale != 1.0f) v *= scale;
  return v + bias + residual;
}

}  // namespace ember::engine::semantics
