// The quantization arithmetic both back ends run (host and device), written once: PyTorch's
// quantized_decomposed math (x * (1 / scale), round half to even, + zero_point, clamp).
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define EMBER_HD __host__ __device__ __forceinline__
#else
#define EMBER_HD inline
#endif

namespace ember::engine {

/// 1 / scale, correctly rounded in f32 (PyTorch's per-channel `1.0 / scales`; its per-tensor
/// path rounds the double 1.0 / scale to f32 instead, which agrees but for one-in-a-billion
/// double-rounding cases). f32, so the device kernels need no double division per element.
EMBER_HD float quant_inv_scale(float scale) { return 1.0f / scale; }

/// clamp(round_half_even(v * inv_scale) + zero_point, lo, hi), in f32 (integer valued).
EMBER_HD float quant_round_clamp(float v, float inv_scale, float zero_point, float lo, float hi) {
  const float r = nearbyintf(v * inv_scale) + zero_point;
  // NaN clamps to lo (PyTorch's clamp keeps NaN and the cast to int is then undefined; a defined
  // value is kinder than garbage).
  return r >= lo ? (r <= hi ? r : hi) : lo;
}

}  // namespace ember::engine

#undef EMBER_HD
