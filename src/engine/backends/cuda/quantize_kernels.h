// Kernels of the quantization family that other CUDA files launch (quantize.cu defines them).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ember/engine/layers.h"
#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// out[i, j] = acc[i, j] * a_scale[0] * b_scale[per_column ? j : 0] for an m x n row-major int32
/// accumulator, stored as `out_dtype` (f32, f16 or bf16). Enqueued on `stream`.
void launch_scale_int32_accumulator(const int32_t* acc, void* out, DataType out_dtype, int64_t m,
                                    int64_t n, const float* a_scale, const float* b_scale,
                                    bool per_column, cudaStream_t stream);

/// A QuantizedConvolution as its kernels see it: spatial dims padded to three with leading 1s
/// (1-d and 2-d convolutions are 3-d ones of depth and height 1), NCHW int8 x and KCRS int8 w.
struct QConvGeometry {
  int64_t batch = 0, in_channels = 0, out_channels = 0, groups = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0}, dilation[3] = {1, 1, 1};
};

/// What happens to each output after its int32 sum (layers.h, QuantizedConvolution): scales,
/// epilogue scale, bias (of the output dtype, nullptr for none), rounding, activation.
struct QConvEpilogue {
  const float* x_scale = nullptr;  ///< One element (device).
  const float* w_scale = nullptr;  ///< One element or one per output channel (device).
  bool per_channel = false;
  float scale = 1.0f;
  const void* bias = nullptr;
  bool activation = false;
  ActivationType type = ActivationType::kRelu;
  float alpha = 0.0f, beta = 0.0f;
};

/// Copies NCHW int8 x [N, C, H, W] (geometry dims 1 and 2) into NHWC [N, Hp, Wp, c4] with
/// Hp = H + pad_top + pad_bottom, Wp likewise (the padding written as zeros) and the channels
/// zero-filled up to c4: a padded quantized zero is a real zero (symmetric quantization), so
/// cuDNN then convolves without padding and with channels a multiple of 4.
void launch_qconv_pack_input(const int8_t* x, int8_t* packed, const QConvGeometry& g, int64_t hp,
                             int64_t wp, int64_t c4, cudaStream_t stream);
/// Copies KCRS int8 w into KRSC [k4, R, S, c4], zero-filled beyond K and C.
void launch_qconv_pack_weight(const int8_t* w, int8_t* packed, const QConvGeometry& g,
                              int64_t k4, int64_t c4, cudaStream_t stream);
/// out (NCHW, `out_dtype`) from cuDNN's f32 NHWC sums y [N, OH, OW, k4], through `e`.
void launch_qconv_epilogue(const float* y, void* out, DataType out_dtype, const QConvGeometry& g,
                           int64_t k4, const QConvEpilogue& e, cudaStream_t stream);
/// The whole convolution in one direct kernel (int32 sums, then `e`): any geometry, groups and
/// channel count; what runs where cuDNN's int8 convolution does not.
void launch_qconv_direct(const int8_t* x, const int8_t* w, void* out, DataType out_dtype,
                         const QConvGeometry& g, const QConvEpilogue& e, cudaStream_t stream);

}  // namespace ember::engine::cuda
