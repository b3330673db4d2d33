// Kernels of the quantization family that other CUDA files launch (quantize.cu defines them).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// out[i, j] = acc[i, j] * a_scale[0] * b_scale[per_column ? j : 0] for an m x n row-major int32
/// accumulator, stored as `out_dtype` (f32, f16 or bf16). Enqueued on `stream`.
void launch_scale_int32_accumulator(const int32_t* acc, void* out, DataType out_dtype, int64_t m,
                                    int64_t n, const float* a_scale, const float* b_scale,
                                    bool per_column, cudaStream_t stream);

}  // namespace ember::engine::cuda
