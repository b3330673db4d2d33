// Hand-written kernels of the linear family (linear_kernels.cu), called from linear.cpp where
// cuBLASLt/cuDNN do the heavy lifting.
#pragma once

#include <cstdint>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

/// Sets every plane of out [batch, channels, plane] (f32/f16/bf16) to its channel's bias
/// (same dtype), so a library call can accumulate onto it with beta = 1 and round only once.
void launch_fill_channel_bias(DataType dtype, void* out, const void* bias, int64_t batch,
                              int64_t channels, int64_t plane, cudaStream_t stream);

/// The fused epilogue on a finished product y (f32/f16/bf16), in place:
/// y = act(y + bias[(i / plane) % channels] + residual[i]) (y as [outer, channels, plane]; plane
/// 1 for a matrix product with the bias along its rows). bias, residual and activation
/// (used when activation->fused_activation) may each be absent (nullptr).
void launch_epilogue(DataType dtype, void* y, const void* bias, int64_t channels, int64_t plane,
                     const void* residual, const Epilogue* activation, int64_t total,
                     cudaStream_t stream);

}  // namespace ember::engine::cuda
