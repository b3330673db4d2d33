// The epilogue of a fused low-precision product, element by element (ProductEpilogue,
// quantize_kernels.h): shared by the epilogue pass over a library's sums (quantize.cu) and the
// kernels that finish their own sums (qconv_implicit_gemm.cu), so both round as the CPU
// reference does (backends/semantics/quantize.h).
#pragma once

#include <cuda_fp8.h>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/quantize_kernels.h"
#include "backends/semantics/activation.h"
#include "backends/semantics/quantize.h"

namespace ember::engine::cuda {

/// The value of a fused product's output element of channel `channel` from its sum, through `e`
/// (layers.h): scales and bias in f32, rounding to TO, activation. Before requantization.
/// `act` is e's activation (ActivationFn, or a StaticActivationFn of the same type).
/// The scale multiplier of channel `channel` (x_scale * w_scale), and its bias as f32.
__device__ __forceinline__ float product_multiplier(int64_t channel, const ProductEpilogue& e) {
  return e.x_scale[0] * e.w_scale[e.per_channel ? channel : 0];
}
template <typename TO>
__device__ __forceinline__ float product_bias(int64_t channel, const ProductEpilogue& e) {
  return e.bias != nullptr ? Num<TO>::load(static_cast<const TO*>(e.bias)[channel]) : 0.0f;
}

/// product_value_with from the channel's multiplier and bias already read (a kernel that
/// finishes many rows of one channel reads them once).
template <typename TO, typename Act>
__device__ __forceinline__ TO product_value_from(float multiplier, float bias, float sum,
                                                 const ProductEpilogue& e, float residual,
                                                 const Act& act) {
  TO v = Num<TO>::store(
      semantics::quantized_product_value(sum, multiplier, e.scale, bias, residual));
  if (e.activation) v = Num<TO>::store(act(Num<TO>::load(v)));
  return v;
}

template <typename TO, typename Act>
__device__ __forceinline__ TO product_value_with(int64_t channel, float sum,
                                                 const ProductEpilogue& e, float residual,
                                                 const Act& act) {
  return product_value_from<TO>(product_multiplier(channel, e), product_bias<TO>(channel, e),
                                sum, e, residual, act);
}

template <typename TO>
__device__ __forceinline__ TO product_value(int64_t channel, float sum, const ProductEpilogue& e,
                                            float residual = 0.0f) {
  return product_value_with<TO>(channel, sum, e, residual, ActivationFn{e.type, e.alpha, e.beta});
}

/// An int8 residual element read as the Dequantize it replaces (layers.h): q * residual_scale,
/// rounded to TO.
template <typename TO>
__device__ __forceinline__ float dequantized_residual(int8_t q, const ProductEpilogue& e) {
  return Num<TO>::load(Num<TO>::store(static_cast<float>(q) * e.residual_scale[0]));
}

/// Element i (in the output's layout) of a fused product's residual as f32 (0 without one): a
/// TO value, or an int8 one (e.residual_scale set).
template <typename TO>
__device__ __forceinline__ float residual_at(const ProductEpilogue& e, int64_t i) {
  if (e.residual == nullptr) return 0.0f;
  if (e.residual_scale != nullptr) {
    return dequantized_residual<TO>(static_cast<const int8_t*>(e.residual)[i], e);
  }
  return Num<TO>::load(static_cast<const TO*>(e.residual)[i]);
}

/// product_value requantized (e.out_scale set): to int8, or to f8e4m3 (e.fp8_out; the byte
/// returned as int8_t) as the Quantize kernel does; `inv` is quant_inv_scale(*e.out_scale).
template <typename TO>
__device__ __forceinline__ int8_t product_requantized_with(TO v, float inv,
                                                           const ProductEpilogue& e) {
  if (e.fp8_out) {
    return static_cast<int8_t>(
        __nv_cvt_float_to_fp8(Num<TO>::load(v) * inv, __NV_SATFINITE, __NV_E4M3));
  }
  return static_cast<int8_t>(
      semantics::quant_round_clamp(Num<TO>::load(v), inv, 0.0f, e.quant_min, e.quant_max));
}

/// product_requantized_with, reading e.out_scale.
template <typename TO>
__device__ __forceinline__ int8_t product_requantized(TO v, const ProductEpilogue& e) {
  return product_requantized_with<TO>(v, semantics::quant_inv_scale(e.out_scale[0]), e);
}

/// Finishes output element `i` (output channel `channel`) of a fused product from its sum.
template <typename TO>
__device__ __forceinline__ void product_store(void* out, int64_t i, int64_t channel, float sum,
                                              const ProductEpilogue& e) {
  const TO v = product_value<TO>(channel, sum, e, residual_at<TO>(e, i));
  if (e.out_scale != nullptr) {
    static_cast<int8_t*>(out)[i] = product_requantized<TO>(v, e);
  } else {
    static_cast<TO*>(out)[i] = v;
  }
}

/// The exact sum of an int32 accumulator element, with the zero-point correction when `e`
/// carries one (ProductEpilogue).
__device__ __forceinline__ float corrected_sum(int32_t acc, int64_t channel,
                                               const ProductEpilogue& e) {
  if (e.weight_sums == nullptr) return static_cast<float>(acc);
  const int64_t zp = (e.zero_point != nullptr ? e.zero_point[0] : 0) - e.zero_point_offset;
  return static_cast<float>(static_cast<int64_t>(acc) - zp * e.weight_sums[channel]);
}
/// An f32 accumulator element: FP8 sums (symmetric, no correction) as they are, and cuDNN's f32
/// sums of int8 products (integers, exact below 2^24) corrected as int32 when `e` carries a
/// zero point.
__device__ __forceinline__ float corrected_sum(float acc, int64_t channel,
                                               const ProductEpilogue& e) {
  if (e.weight_sums == nullptr) return acc;
  return corrected_sum(static_cast<int32_t>(acc), channel, e);
}

}  // namespace ember::engine::cuda
