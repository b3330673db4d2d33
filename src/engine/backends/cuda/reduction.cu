// CUDA kernels of the reduction family: Reduce, TopK, SoftMax, Normalization and Cumulative.
//
// Numerics follow the CPU back end (src/engine/backends/cpu/reduction.cpp) step for step, so the
// two agree to rounding: float sums, products and moments accumulate in double, max/min keep the
// input's values (NaN propagates), integers accumulate in int64 with wrap-around and wrap again on
// store; f16/bf16 are computed in f32 (or double) and rounded once on store, through f32 exactly
// where the CPU rounds through f32.
//
// Work split: a "row" (the elements combined into one result) is handled by a group of threads —
// a warp for short rows, a whole block for long ones — when the row is contiguous; when the kept
// dims have a contiguous inner run, one thread per output walks the reduced dims, so a warp's loads
// are coalesced across the inner run. Every grid is a grid-stride loop and every index is int64.
// TopK sorts each row in shared memory (one block per row; ties keep the lower index first, NaN
// is the largest value) or, for k == 1 and for small k over rows too long to sort, selects k
// times; Cumulative scans a column per thread or a row per block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math_constants.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/device_common.cuh"
#include "backends/semantics/quantize.h"

namespace ember::engine::cuda {

namespace {

// ---------------------------------------------------------------- element access

/// Loads element i of a buffer of storage type T as the accumulator domain: double for floats,
/// int64 for integers (both exact for every value of T).
__device__ __forceinline__ double load_acc(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load_acc(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ double load_acc(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ int64_t load_acc(const int8_t* p, int64_t i) { return p[i]; }
__device__ __forceinline__ int64_t load_acc(const uint8_t* p, int64_t i) { return p[i]; }
__device__ __forceinline__ int64_t load_acc(const int32_t* p, int64_t i) { return p[i]; }
__device__ __forceinline__ int64_t load_acc(const int64_t* p, int64_t i) { return p[i]; }

/// Stores a result: floats go double -> f32 -> T (the CPU's static_cast<float> then store);
/// integers wrap like a C cast.
__device__ __forceinline__ void store_acc(float* p, int64_t i, double v) {
  p[i] = static_cast<float>(v);
}
__device__ __forceinline__ void store_acc(__half* p, int64_t i, double v) {
  p[i] = __float2half_rn(static_cast<float>(v));
}
__device__ __forceinline__ void store_acc(__nv_bfloat16* p, int64_t i, double v) {
  p[i] = __float2bfloat16_rn(static_cast<float>(v));
}
template <typename T>
__device__ __forceinline__ void store_acc(T* p, int64_t i, int64_t v) {
  p[i] = static_cast<T>(v);
}

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

/// Accumulator type of storage type T.
template <typename T>
struct AccOf {
  using type = int64_t;
};
template <>
struct AccOf<float> {
  using type = double;
};
template <>
struct AccOf<__half> {
  using type = double;
};
template <>
struct AccOf<__nv_bfloat16> {
  using type = double;
};

// ---------------------------------------------------------------- reduce ops

__device__ __forceinline__ bool is_nan(double v) { return v != v; }
__device__ __forceinline__ bool is_nan(int64_t) { return false; }

// Integer sums and products wrap (two's complement, computed unsigned so overflow is defined).
__device__ __forceinline__ double op_add(double a, double b) { return a + b; }
__device__ __forceinline__ int64_t op_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
__device__ __forceinline__ double op_mul(double a, double b) { return a * b; }
__device__ __forceinline__ int64_t op_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

/// Joins two partial results of `op` (also folds one element in). The op is a run-time value,
/// uniform across the grid, so the branch costs nothing next to the loads and keeps one
/// instantiation per dtype.
template <typename Acc>
__device__ __forceinline__ Acc combine(ReduceOp op, Acc a, Acc v) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return op_add(a, v);
    case ReduceOp::kProd: return op_mul(a, v);
    case ReduceOp::kMax: return (v > a || is_nan(v)) && !is_nan(a) ? v : a;
    case ReduceOp::kMin: return (v < a || is_nan(v)) && !is_nan(a) ? v : a;
  }
  return a;
}

template <typename Acc>
__device__ __forceinline__ Acc identity(ReduceOp op);
template <>
__device__ __forceinline__ double identity<double>(ReduceOp op) {
  switch (op) {
    case ReduceOp::kProd: return 1.0;
    case ReduceOp::kMax: return -CUDART_INF;
    case ReduceOp::kMin: return CUDART_INF;
    default: return 0.0;
  }
}
template <>
__device__ __forceinline__ int64_t identity<int64_t>(ReduceOp op) {
  switch (op) {
    case ReduceOp::kProd: return 1;
    case ReduceOp::kMax: return LLONG_MIN;
    case ReduceOp::kMin: return LLONG_MAX;
    default: return 0;
  }
}

/// The stored value of a finished accumulator: avg divides by the count in double.
__device__ __forceinline__ double finish(ReduceOp op, double a, int64_t count) {
  return op == ReduceOp::kAvg ? a / static_cast<double>(count) : a;
}
__device__ __forceinline__ int64_t finish(ReduceOp, int64_t a, int64_t) { return a; }

/// Combines `v` across the lanes of a warp (every lane gets the result).
template <typename Acc>
__device__ __forceinline__ Acc warp_combine(ReduceOp op, Acc v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v = combine(op, v, static_cast<Acc>(__shfl_xor_sync(0xffffffffu, v, offset)));
  }
  return v;
}

/// Combines `v` across the block (every thread gets the result). `scratch` holds one Acc per
/// warp; the trailing barrier lets the caller reuse it.
template <typename Acc>
__device__ Acc block_combine(ReduceOp op, Acc v, Acc* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_combine(op, v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Acc r = scratch[0];
  for (int w = 1; w < warps; ++w) r = combine(op, r, scratch[w]);
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------- reduce layout

constexpr int kMaxGroups = 8;

/// A reduction as [outer kept groups] x [reduced groups] x [inner kept run] (the CPU's
/// ReduceLayout): adjacent dims of one kind merged, size-1 dims dropped. Passed by value.
struct ReduceLayout {
  int num_outer_groups = 0;
  int num_reduced_groups = 0;
  int64_t outer_size[kMaxGroups];
  int64_t outer_stride[kMaxGroups];
  int64_t reduced_size[kMaxGroups];
  int64_t reduced_stride[kMaxGroups];
  int64_t inner = 1;
  int64_t num_outer = 1;
  int64_t num_reduced = 1;
};

/// Input offset of index `i` of the groups (row-major over them, last fastest).
__device__ __forceinline__ int64_t group_offset(int64_t i, int n, const int64_t* size,
                                                const int64_t* stride) {
  int64_t off = 0;
  for (int g = n - 1; g >= 0; --g) {
    off += (i % size[g]) * stride[g];
    i /= size[g];
  }
  return off;
}

/// Builds the layout on the host; false when it needs more than kMaxGroups groups per kind.
bool make_reduce_layout(const std::vector<int64_t>& dims, const std::vector<int64_t>& axes,
                        ReduceLayout& l) {
  std::vector<bool> is_reduced(dims.size(), false);
  for (int64_t a : axes) is_reduced.at(static_cast<size_t>(a)) = true;
  std::vector<int64_t> strides(dims.size(), 1);
  for (size_t d = dims.size(); d-- > 1;) strides[d - 1] = strides[d] * dims[d];
  struct Run {
    bool reduced;
    int64_t size;
    int64_t stride;
  };
  std::vector<Run> runs;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == is_reduced[d]) {
      runs.back().size *= dims[d];
      runs.back().stride = strides[d];
    } else {
      runs.push_back({is_reduced[d], dims[d], strides[d]});
    }
  }
  if (!runs.empty() && !runs.back().reduced) {
    l.inner = runs.back().size;
    runs.pop_back();
  }
  for (const Run& r : runs) {
    int& n = r.reduced ? l.num_reduced_groups : l.num_outer_groups;
    if (n == kMaxGroups) return false;
    (r.reduced ? l.reduced_size : l.outer_size)[n] = r.size;
    (r.reduced ? l.reduced_stride : l.outer_stride)[n] = r.stride;
    ++n;
    (r.reduced ? l.num_reduced : l.num_outer) *= r.size;
  }
  return true;
}

/// Reduce with the reduced elements of one output contiguous-or-strided but no inner run
/// (inner == 1): a group of `threads_per_row` threads (32, or the whole block) per output,
/// grid-stride over outputs. Output o is at out[o].
template <typename T>
__global__ void reduce_rows_kernel(const T* __restrict__ in, T* __restrict__ out, ReduceLayout l,
                                   ReduceOp op, int threads_per_row) {
  using Acc = typename AccOf<T>::type;
  __shared__ Acc scratch[32];
  const int rows_per_block = blockDim.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block +
                        threadIdx.x / threads_per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * rows_per_block;
  // Rows of one block finish in lockstep (block_combine has barriers): iterate over the block's
  // row slots until every slot is past the end.
  const int64_t block_first = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  for (int64_t base = block_first; base < l.num_outer; base += step) {
    const int64_t o = first + (base - block_first);
    Acc acc = identity<Acc>(op);
    if (o < l.num_outer) {
      const T* row = in + group_offset(o, l.num_outer_groups, l.outer_size, l.outer_stride);
      if (l.num_reduced_groups == 1) {
        const int64_t s = l.reduced_stride[0];
        for (int64_t r = lane; r < l.num_reduced; r += threads_per_row) {
          acc = combine(op, acc, load_acc(row, r * s));
        }
      } else {
        for (int64_t r = lane; r < l.num_reduced; r += threads_per_row) {
          const int64_t off =
              group_offset(r, l.num_reduced_groups, l.reduced_size, l.reduced_stride);
          acc = combine(op, acc, load_acc(row, off));
        }
      }
    }
    acc = threads_per_row == 32 ? warp_combine(op, acc) : block_combine(op, acc, scratch);
    if (o < l.num_outer && lane == 0) store_acc(out, o, finish(op, acc, l.num_reduced));
  }
}

/// Reduce with an inner kept run: one thread per output (o, i), walking the reduced groups;
/// neighbouring threads read neighbouring inner elements. Output (o, i) is at out[o*inner + i].
template <typename T>
__global__ void reduce_columns_kernel(const T* __restrict__ in, T* __restrict__ out,
                                      ReduceLayout l, ReduceOp op) {
  using Acc = typename AccOf<T>::type;
  const int64_t total = l.num_outer * l.inner;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = idx / l.inner, i = idx % l.inner;
    const T* base = in + group_offset(o, l.num_outer_groups, l.outer_size, l.outer_stride) + i;
    Acc acc = identity<Acc>(op);
    for (int64_t r = 0; r < l.num_reduced; ++r) {
      const int64_t off = group_offset(r, l.num_reduced_groups, l.reduced_size, l.reduced_stride);
      acc = combine(op, acc, load_acc(base, off));
    }
    store_acc(out, idx, finish(op, acc, l.num_reduced));
  }
}

/// Few long rows (a whole tensor into one value: T5's fp16 `isinf(x).any()` after each of its
/// 30 sublayers, over [B, L, 512]): reduce_rows_kernel gives each row one block, so one SM
/// reads the whole tensor while the others idle. Here each row's reduced range is cut into
/// `chunks` slices of `chunk` elements, a block each (grid = rows * chunks); every block writes
/// its partial accumulator (not finished: avg still a sum) to `partial[block]`.
template <typename T>
__global__ void reduce_rows_split_kernel(const T* __restrict__ in,
                                         typename AccOf<T>::type* __restrict__ partial,
                                         ReduceLayout l, ReduceOp op, int64_t chunk,
                                         int64_t chunks) {
  using Acc = typename AccOf<T>::type;
  __shared__ Acc scratch[32];
  const int64_t o = blockIdx.x / chunks;
  const int64_t begin = (blockIdx.x % chunks) * chunk;
  const int64_t end = begin + chunk < l.num_reduced ? begin + chunk : l.num_reduced;
  const T* row = in + group_offset(o, l.num_outer_groups, l.outer_size, l.outer_stride);
  Acc acc = identity<Acc>(op);
  if (l.num_reduced_groups == 1) {
    const int64_t s = l.reduced_stride[0];
    for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) {
      acc = combine(op, acc, load_acc(row, r * s));
    }
  } else {
    for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) {
      acc = combine(op, acc,
                    load_acc(row, group_offset(r, l.num_reduced_groups, l.reduced_size,
                                               l.reduced_stride)));
    }
  }
  acc = block_combine(op, acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/// The second pass of the split: a warp per row combines its `chunks` partials and stores the
/// finished result (avg divides once, by the row's full `count`).
template <typename T>
__global__ void reduce_partials_kernel(const typename AccOf<T>::type* __restrict__ partial,
                                       T* __restrict__ out, int64_t rows, int64_t chunks,
                                       ReduceOp op, int64_t count) {
  using Acc = typename AccOf<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  // o is the same for every lane of a warp, so the loop (and its shuffles) stays warp-uniform.
  for (int64_t o = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; o < rows;
       o += warps) {
    Acc acc = identity<Acc>(op);
    for (int64_t c = lane; c < chunks; c += 32) acc = combine(op, acc, partial[o * chunks + c]);
    acc = warp_combine(op, acc);
    if (lane == 0) store_acc(out, o, finish(op, acc, count));
  }
}

/// How a Reduce with inner == 1 splits its rows: `chunks` slices of `chunk` elements per row, or
/// chunks 1 (reduce_rows_kernel) when the rows already fill the GPU or are short.
struct RowSplit {
  int64_t chunk = 0;
  int64_t chunks = 1;
};

RowSplit row_split(const ReduceLayout& l) {
  RowSplit s;
  constexpr int64_t kMinChunk = 4096;  // elements a block reads at least (256 threads x 16)
  const int64_t sms = sm_count();
  if (!parallel_reductions_enabled() || l.inner != 1 || l.num_outer >= sms ||
      l.num_reduced < 2 * kMinChunk) {
    return s;
  }
  // About two blocks per SM over all rows, no chunk shorter than kMinChunk.
  const int64_t want = std::max<int64_t>(1, 2 * sms / l.num_outer);
  const int64_t most = (l.num_reduced + kMinChunk - 1) / kMinChunk;
  const int64_t chunks = std::min(want, most);
  if (chunks < 2) return s;
  s.chunk = (l.num_reduced + chunks - 1) / chunks;
  s.chunks = (l.num_reduced + s.chunk - 1) / s.chunk;
  return s;
}

/// Blocks for a grid-stride loop over `items` with `per_block` items per block (capped; the
/// loops cover the rest).
unsigned grid_for(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

/// `split`: row_split(l); `scratch`: its partials, l.num_outer * split.chunks accumulators of T
/// (nullptr without a split).
template <typename T>
void launch_reduce(const DeviceTensor& x, DeviceTensor& y, const ReduceLayout& l, ReduceOp op,
                   const RowSplit& split, void* scratch, cudaStream_t stream) {
  const auto* in = static_cast<const T*>(x.data);
  auto* out = static_cast<T*>(y.data);
  if (split.chunks > 1) {
    auto* partial = static_cast<typename AccOf<T>::type*>(scratch);
    reduce_rows_split_kernel<T><<<static_cast<unsigned>(l.num_outer * split.chunks), 256, 0,
                                  stream>>>(in, partial, l, op, split.chunk, split.chunks);
    check(cudaGetLastError(), "reduce_rows_split_kernel");
    reduce_partials_kernel<T><<<grid_for(l.num_outer, 8), 256, 0, stream>>>(
        partial, out, l.num_outer, split.chunks, op, l.num_reduced);
    check(cudaGetLastError(), "reduce_partials_kernel");
    return;
  }
  if (l.inner == 1) {
    // Long rows get a whole block each; short ones a warp, eight rows per block.
    const int threads_per_row = l.num_reduced >= 2048 ? 256 : 32;
    const int64_t rows_per_block = 256 / threads_per_row;
    reduce_rows_kernel<T><<<grid_for(l.num_outer, rows_per_block), 256, 0, stream>>>(
        in, out, l, op, threads_per_row);
    check(cudaGetLastError(), "reduce_rows_kernel");
  } else {
    reduce_columns_kernel<T><<<grid_for(l.num_outer * l.inner, 256), 256, 0, stream>>>(in, out, l,
                                                                                      op);
    check(cudaGetLastError(), "reduce_columns_kernel");
  }
}

// ---------------------------------------------------------------- softmax

/// Softmax over contiguous rows [rows, n]: a group of `threads_per_row` threads per row, three
/// passes (max, sum of exp in double, write). Mirrors the CPU: the max skips NaN (a NaN still
/// poisons the sum), exp in f32 of the f32 shifted value, the factor 1/sum or log(sum) in double
/// rounded to f32.
template <typename T>
__global__ void softmax_rows_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows,
                                    int64_t n, bool log_softmax, bool zero_masked,
                                    int threads_per_row) {
  __shared__ double scratch_d[32];
  __shared__ float scratch_f[32];
  const int rows_per_block = blockDim.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t block_first = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t step = static_cast<int64_t>(gridDim.x) * rows_per_block;
  const bool whole_block = threads_per_row != 32;
  for (int64_t base = block_first; base < rows; base += step) {
    const int64_t r = base + threadIdx.x / threads_per_row;
    const bool active = r < rows;
    const T* src = in + (active ? r : 0) * n;
    float row_max = -CUDART_INF_F;
    if (active) {
      for (int64_t j = lane; j < n; j += threads_per_row) row_max = fmaxf(row_max, to_f32(src[j]));
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, offset));
    }
    if (whole_block) {
      if (threadIdx.x % 32 == 0) scratch_f[warp] = row_max;
      __syncthreads();
      row_max = scratch_f[0];
      for (int w = 1; w < warps; ++w) row_max = fmaxf(row_max, scratch_f[w]);
    }
    double sum = 0.0;
    if (active) {
      for (int64_t j = lane; j < n; j += threads_per_row) sum += expf(to_f32(src[j]) - row_max);
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (whole_block) {
      if (threadIdx.x % 32 == 0) scratch_d[warp] = sum;
      __syncthreads();
      sum = scratch_d[0];
      for (int w = 1; w < warps; ++w) sum += scratch_d[w];
      __syncthreads();  // scratch is rewritten by the next row
    }
    const float f = static_cast<float>(log_softmax ? log(sum) : 1.0 / sum);
    const bool dead = zero_masked && row_max == -CUDART_INF_F;
    if (active) {
      T* dst = out + r * n;
      for (int64_t j = lane; j < n; j += threads_per_row) {
        const float shifted = to_f32(src[j]) - row_max;
        dst[j] = from_f32<T>(dead ? 0.0f : log_softmax ? shifted - f : expf(shifted) * f);
      }
    }
  }
}

/// Softmax along a strided axis of [outer, n, inner]: one thread per (outer, inner) column,
/// neighbouring threads on neighbouring inner elements (coalesced), same numerics as above.
template <typename T>
__global__ void softmax_columns_kernel(const T* __restrict__ in, T* __restrict__ out,
                                       int64_t outer, int64_t n, int64_t inner, bool log_softmax,
                                       bool zero_masked) {
  const int64_t total = outer * inner;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = idx / inner, i = idx % inner;
    const int64_t base = o * n * inner + i;
    float row_max = -CUDART_INF_F;
    for (int64_t j = 0; j < n; ++j) row_max = fmaxf(row_max, to_f32(in[base + j * inner]));
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += expf(to_f32(in[base + j * inner]) - row_max);
    const float f = static_cast<float>(log_softmax ? log(sum) : 1.0 / sum);
    const bool dead = zero_masked && row_max == -CUDART_INF_F;
    for (int64_t j = 0; j < n; ++j) {
      const float shifted = to_f32(in[base + j * inner]) - row_max;
      out[base + j * inner] =
          from_f32<T>(dead ? 0.0f : log_softmax ? shifted - f : expf(shifted) * f);
    }
  }
}

template <typename T>
void launch_softmax(const DeviceTensor& x, DeviceTensor& y, int64_t outer, int64_t n,
                    int64_t inner, bool log_softmax, bool zero_masked, cudaStream_t stream) {
  const auto* in = static_cast<const T*>(x.data);
  auto* out = static_cast<T*>(y.data);
  if (inner == 1) {
    const int threads_per_row = n >= 2048 ? 256 : 32;
    softmax_rows_kernel<T><<<grid_for(outer, 256 / threads_per_row), 256, 0, stream>>>(
        in, out, outer, n, log_softmax, zero_masked, threads_per_row);
    check(cudaGetLastError(), "softmax_rows_kernel");
  } else {
    softmax_columns_kernel<T><<<grid_for(outer * inner, 256), 256, 0, stream>>>(
        in, out, outer, n, inner, log_softmax, zero_masked);
    check(cudaGetLastError(), "softmax_columns_kernel");
  }
}

// ---------------------------------------------------------------- normalization

/// A layer norm's quantized output (layers.h, NormalizationQuantize): byte i is the Quantize
/// layer's value (quantize.cu's math) of output element i as stored in T. `q` nullptr: none.
struct NormQuant {
  uint8_t* q = nullptr;
  const float* scale = nullptr;  ///< Device, one element.
  bool fp8 = false;
  float lo = -128.0f, hi = 127.0f;
  __device__ __forceinline__ float inv_scale() const {
    return q != nullptr ? semantics::quant_inv_scale(*scale) : 0.0f;
  }
  __device__ __forceinline__ uint8_t of(float y, float inv) const {
    if (fp8) return __nv_cvt_float_to_fp8(y * inv, __NV_SATFINITE, __NV_E4M3);
    return static_cast<uint8_t>(
        static_cast<int8_t>(semantics::quant_round_clamp(y, inv, 0.0f, lo, hi)));
  }
};

/// Normalizes contiguous blocks of `block` elements, one CUDA block per normalized block
/// (grid-stride). Two passes for the moments in double (mean stays double, as on the CPU; an RMS
/// norm, `centered` false, has mean 0 and skips the first), then
/// out = f32(x - mean) * rstd [* scale] [+ bias] with scale/bias per element (layer norm,
/// per_channel false) or per channel of `spatial` elements (group/instance norm: channel
/// c0 + j / spatial, c0 = (b % channel_blocks) * channels_per_block).
template <typename T>
__global__ void normalization_kernel(const T* __restrict__ in, T* __restrict__ out,
                                     const T* __restrict__ scale, const T* __restrict__ bias,
                                     int64_t blocks, int64_t block, int64_t spatial,
                                     bool per_channel, int64_t channels_per_block,
                                     int64_t channel_blocks, double epsilon, bool centered,
                                     NormQuant nq) {
  __shared__ double scratch[32];
  const float inv_q = nq.inv_scale();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const auto block_sum = [&](double v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double r = 0.0;
    for (int w = 0; w < warps; ++w) r += scratch[w];
    __syncthreads();
    return r;
  };
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const T* src = in + b * block;
    double s = 0.0;
    if (centered) {
      for (int64_t j = threadIdx.x; j < block; j += blockDim.x) s += to_f32(src[j]);
    }
    const double mean = centered ? block_sum(s) / static_cast<double>(block) : 0.0;
    double q = 0.0;
    for (int64_t j = threadIdx.x; j < block; j += blockDim.x) {
      const double d = to_f32(src[j]) - mean;
      q += d * d;
    }
    const double var = block_sum(q) / static_cast<double>(block);
    const float rstd = static_cast<float>(1.0 / sqrt(var + epsilon));
    const int64_t c0 = per_channel ? (b % channel_blocks) * channels_per_block : 0;
    for (int64_t j = threadIdx.x; j < block; j += blockDim.x) {
      const float d = static_cast<float>(to_f32(src[j]) - mean);
      float r;
      if (per_channel) {
        const int64_t c = c0 + j / spatial;
        // As the CPU: the scale folds into the factor, then one multiply-add.
        const float g = scale != nullptr ? __fmul_rn(rstd, to_f32(scale[c])) : rstd;
        r = __fadd_rn(__fmul_rn(d, g), bias != nullptr ? to_f32(bias[c]) : 0.0f);
      } else {
        r = __fmul_rn(d, rstd);
        if (scale != nullptr) r = __fmul_rn(r, to_f32(scale[j]));
        if (bias != nullptr) r = __fadd_rn(r, to_f32(bias[j]));
      }
      const T stored = from_f32<T>(r);
      if (out != nullptr) out[b * block + j] = stored;
      if (nq.q != nullptr) nq.q[b * block + j] = nq.of(to_f32(stored), inv_q);
    }
  }
}

/// Layer norm of rows of at most 32 * kPerLane (<= 1024) elements: one warp per row, the row,
/// its scale and its bias held in registers (kPerLane per lane, all loads issued before any
/// arithmetic), the moments by warp shuffles alone. Same numerics as normalization_kernel:
/// moments in double, rstd and the affine in f32 with explicit rounding.
template <typename T, int kPerLane>
__global__ void layer_norm_warp_kernel(const T* __restrict__ in, T* __restrict__ out,
                                       const T* __restrict__ scale, const T* __restrict__ bias,
                                       int64_t rows, int block, double epsilon, bool centered,
                                       NormQuant nq) {
  const int lane = threadIdx.x % 32;
  const float inv_q = nq.inv_scale();
  const int64_t warps_per_block = blockDim.x / 32;
  // The affine parameters are read per row (L1 hits), not held in registers across rows: held,
  // they took 2 * kPerLane registers more (193 a lane for 1024-wide rows).
  for (int64_t r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const T* src = in + r * block;
    float v[kPerLane];
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + k * 32;
      v[k] = j < block ? to_f32(src[j]) : 0.0f;
    }
    double s = 0.0;
    if (centered) {
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) s += v[k];
      for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    }
    const double mean = s / static_cast<double>(block);
    double q = 0.0;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const double d = v[k] - mean;
      q += lane + k * 32 < block ? d * d : 0.0;
    }
    for (int offset = 16; offset > 0; offset /= 2) q += __shfl_xor_sync(0xffffffffu, q, offset);
    const float rstd = static_cast<float>(1.0 / sqrt(q / static_cast<double>(block) + epsilon));
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + k * 32;
      if (j >= block) continue;
      float y = __fmul_rn(static_cast<float>(v[k] - mean), rstd);
      if (scale != nullptr) y = __fmul_rn(y, to_f32(scale[j]));
      if (bias != nullptr) y = __fadd_rn(y, to_f32(bias[j]));
      const T stored = from_f32<T>(y);
      if (out != nullptr) out[r * block + j] = stored;
      if (nq.q != nullptr) nq.q[r * block + j] = nq.of(to_f32(stored), inv_q);
    }
  }
}

/// layer_norm_warp_kernel for 2-byte types with rows, scale and bias in 16-byte chunks (block
/// % 8 == 0, every base 16-byte aligned): lane l holds chunks l, l + 32, ... (kChunks of 8
/// elements), so a 768-wide row is 3 vector loads per lane instead of 24 scalar ones. The
/// moments in f32 (the scalar kernel's are in double; see below), the affine as the scalar
/// kernel's. 63 registers a lane for rows up to 1024 (4 blocks of 256 threads per SM).
template <typename T, int kChunks, bool kQuant>
__global__ void __launch_bounds__(256)
    layer_norm_warp_vec_kernel(const T* __restrict__ in, T* __restrict__ out,
                               const T* __restrict__ scale, const T* __restrict__ bias,
                               int64_t rows, int block, double epsilon, bool centered,
                               NormQuant nq) {
  static_assert(sizeof(T) == 2, "16-byte chunks of 8 elements");
  // kQuant: the quantized output is written (a separate instance: the plain kernel keeps its
  // registers).
  [[maybe_unused]] const float inv_q = kQuant ? nq.inv_scale() : 0.0f;
  constexpr int kPerLane = kChunks * 8;
  const int lane = threadIdx.x % 32;
  const int chunks = block / 8;
  const int64_t warps_per_block = blockDim.x / 32;
  // The scale and bias are read per row (the same few KB for every row: L1 hits) rather than
  // held in registers across rows: with them held, a 768-wide row took 142 registers a lane,
  // one 256-thread block per SM, and the kernel ran at about 40% of the bandwidth (GPT-2,
  // BERT, Swin-T profiles on an H100).
  for (int64_t r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const Vec<T, 8>* src = reinterpret_cast<const Vec<T, 8>*>(in + r * block);
    float v[kPerLane];
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int c = lane + k * 32;
      Vec<T, 8> x;
      if (c < chunks) x = src[c];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[k * 8 + e] = c < chunks ? to_f32(x.v[e]) : 0.0f;
    }
    // The moments in f32 (two passes: the mean, then the squared deviations from it), as
    // PyTorch's own CUDA layer norm for 16-bit inputs: with them in double (the CPU
    // reference's), the lane kept each element as a double too and needed 92 registers for a
    // 768-wide row. The difference is far inside the 16-bit types' tolerance.
    // (An RMS norm sums too, then takes mean 0: a branch here cost registers.)
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) s += v[k];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    const float mean = centered ? s / static_cast<float>(block) : 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      v[k] = lane + (k / 8) * 32 < chunks ? v[k] - mean : 0.0f;
    }
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) q = fmaf(v[k], v[k], q);
    for (int offset = 16; offset > 0; offset /= 2) q += __shfl_xor_sync(0xffffffffu, q, offset);
    const float rstd = 1.0f / sqrtf(q / static_cast<float>(block) + static_cast<float>(epsilon));
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int c = lane + k * 32;
      if (c >= chunks) continue;
      Vec<T, 8> gv, bv, y;
      if (scale != nullptr) gv = reinterpret_cast<const Vec<T, 8>*>(scale)[c];
      if (bias != nullptr) bv = reinterpret_cast<const Vec<T, 8>*>(bias)[c];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float t = __fmul_rn(v[k * 8 + e], rstd);
        if (scale != nullptr) t = __fmul_rn(t, to_f32(gv.v[e]));
        if (bias != nullptr) t = __fadd_rn(t, to_f32(bv.v[e]));
        y.v[e] = from_f32<T>(t);
      }
      if (!kQuant || out != nullptr) reinterpret_cast<Vec<T, 8>*>(out + r * block)[c] = y;
      if constexpr (kQuant) {  // 8 bytes a chunk (the launch checked their alignment)
        Vec<uint8_t, 8> qv;
#pragma unroll
        for (int e = 0; e < 8; ++e) qv.v[e] = nq.of(to_f32(y.v[e]), inv_q);
        reinterpret_cast<Vec<uint8_t, 8>*>(nq.q + r * block)[c] = qv;
      }
    }
  }
}

/// Launches layer_norm_warp_kernel with the fewest registers per lane that hold a row.
template <typename T>
void launch_layer_norm_warp(const T* in, T* out, const T* scale, const T* bias, int64_t rows,
                            int block, double epsilon, bool centered, const NormQuant& nq,
                            cudaStream_t stream) {
  const unsigned grid = grid_for(rows, 8);
  if constexpr (sizeof(T) == 2) {
    const bool vec = block % 8 == 0 && aligned(in, 16) && (out == nullptr || aligned(out, 16)) &&
                     (scale == nullptr || aligned(scale, 16)) &&
                     (bias == nullptr || aligned(bias, 16)) && (nq.q == nullptr || aligned(nq.q, 8));
    if (vec) {
      const auto go = [&](auto chunks) {
        constexpr int kChunks = decltype(chunks)::value;
        if (nq.q != nullptr) {
          layer_norm_warp_vec_kernel<T, kChunks, true>
              <<<grid, 256, 0, stream>>>(in, out, scale, bias, rows, block, epsilon, centered, nq);
        } else {
          layer_norm_warp_vec_kernel<T, kChunks, false>
              <<<grid, 256, 0, stream>>>(in, out, scale, bias, rows, block, epsilon, centered, nq);
        }
      };
      if (block <= 256) {
        go(std::integral_constant<int, 1>{});
      } else if (block <= 512) {
        go(std::integral_constant<int, 2>{});
      } else if (block <= 768) {
        go(std::integral_constant<int, 3>{});
      } else {
        go(std::integral_constant<int, 4>{});
      }
      check(cudaGetLastError(), "layer_norm_warp_vec_kernel");
      return;
    }
  }
  if (block <= 256) {
    layer_norm_warp_kernel<T, 8><<<grid, 256, 0, stream>>>(in, out, scale, bias, rows, block, epsilon, centered, nq);
  } else if (block <= 512) {
    layer_norm_warp_kernel<T, 16><<<grid, 256, 0, stream>>>(in, out, scale, bias, rows, block, epsilon, centered, nq);
  } else if (block <= 768) {
    layer_norm_warp_kernel<T, 24><<<grid, 256, 0, stream>>>(in, out, scale, bias, rows, block, epsilon, centered, nq);
  } else {
    layer_norm_warp_kernel<T, 32><<<grid, 256, 0, stream>>>(in, out, scale, bias, rows, block, epsilon, centered, nq);
  }
  check(cudaGetLastError(), "layer_norm_warp_kernel");
}

/// Device pointer of optional input i as T, checking its element count (a plan whose shapes
/// slipped past inference must not make the kernel read out of bounds).
template <typename T>
const T* affine_operand(const CudaArgs& a, size_t i, int64_t expected, const char* role) {
  if (!a.has(i)) return nullptr;
  const DeviceTensor& t = a.in(i);
  if (t.numel() != expected || t.dtype != a.in(0).dtype) {
    throw Error(std::string("Normalization kernel (cuda): ") + role + " has " +
                std::to_string(t.numel()) + " elements of " + dtype_name(t.dtype) + ", expected " +
                std::to_string(expected) + " of " + dtype_name(a.in(0).dtype));
  }
  return static_cast<const T*>(t.data);
}

/// Splits dims around `axis` into outer, n and inner sizes; throws on a bad axis.
void split_at(const std::vector<int64_t>& dims, int64_t axis, const char* layer, int64_t& outer,
              int64_t& n, int64_t& inner) {
  if (axis < 0 || axis >= static_cast<int64_t>(dims.size())) {
    throw Error(std::string(layer) + " kernel (cuda): axis " + std::to_string(axis) +
                " is out of range for dims " + dims_to_string(dims));
  }
  outer = 1;
  inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= dims[static_cast<size_t>(d)];
  n = dims[static_cast<size_t>(axis)];
  for (size_t d = static_cast<size_t>(axis) + 1; d < dims.size(); ++d) inner *= dims[d];
}

// ---------------------------------------------------------------- topk

/// "a comes before b" in TopK order (the CPU's topk_before): NaN counts as the largest value.
template <typename C>
__device__ __forceinline__ bool topk_before(bool max, C a, C b) {
  if (max) return is_nan(a) ? !is_nan(b) : (!is_nan(b) && a > b);
  return !is_nan(a) && (is_nan(b) || a < b);
}

/// The total order of TopK entries: TopK order of the values, then the lower index first.
template <typename C>
__device__ __forceinline__ bool topk_entry_before(bool max, C a, int64_t ia, C b, int64_t ib) {
  if (topk_before(max, a, b)) return true;
  if (topk_before(max, b, a)) return false;
  return ia < ib;
}

/// Rows of a TopK: row r = (o, i) reads in[(o * n + j) * inner + i] for j < n and writes entry t
/// at [(o * k + t) * inner + i].
struct TopKRows {
  int64_t rows = 0, n = 0, inner = 1, k = 1;
  bool max = true;
};

/// One block per row: the row (values in the compute type, indices) is bitonic-sorted in shared
/// memory, padded to a power of two `n_pow2` with entries that sort last; the first k are written.
template <typename T, typename I>
__global__ void topk_sort_kernel(const T* __restrict__ in, T* __restrict__ values,
                                 I* __restrict__ indices, TopKRows g, int n_pow2) {
  using C = typename Num<T>::C;
  extern __shared__ __align__(16) unsigned char topk_smem[];
  C* key = reinterpret_cast<C*>(topk_smem);
  int* idx = reinterpret_cast<int*>(key + n_pow2);
  const int n = static_cast<int>(g.n);
  // Entry a before entry b; padding (index >= n) after every real entry.
  const auto before = [&](int a, int b) {
    if (idx[a] >= n) return false;
    if (idx[b] >= n) return true;
    return topk_entry_before(g.max, key[a], idx[a], key[b], idx[b]);
  };
  for (int64_t r = blockIdx.x; r < g.rows; r += gridDim.x) {
    const int64_t o = r / g.inner, i = r % g.inner;
    const T* src = in + o * g.n * g.inner + i;
    for (int j = threadIdx.x; j < n_pow2; j += blockDim.x) {
      idx[j] = j;
      key[j] = j < n ? Num<T>::load(src[j * g.inner]) : C{};
    }
    __syncthreads();
    for (int size = 2; size <= n_pow2; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = threadIdx.x; t < n_pow2 / 2; t += blockDim.x) {
          const int lo = 2 * t - (t & (stride - 1));
          const int hi = lo + stride;
          const bool ascending = (lo & size) == 0;
          if (before(hi, lo) == ascending) {
            const C kv = key[lo];
            key[lo] = key[hi];
            key[hi] = kv;
            const int iv = idx[lo];
            idx[lo] = idx[hi];
            idx[hi] = iv;
          }
        }
        __syncthreads();
      }
    }
    const int64_t dst = o * g.k * g.inner + i;
    for (int t = threadIdx.x; t < g.k; t += blockDim.x) {
      values[dst + t * g.inner] = Num<T>::store(key[t]);
      indices[dst + t * g.inner] = static_cast<I>(idx[t]);
    }
    __syncthreads();
  }
}

/// One block per row, k passes: pass t finds the first entry, in TopK order, after the one pass
/// t - 1 found (a block-wide arg-best over the row). O(k * n) loads per row: for k == 1
/// (argmax/argmin) and small k over rows too long to sort in shared memory.
template <typename T, typename I>
__global__ void topk_select_kernel(const T* __restrict__ in, T* __restrict__ values,
                                   I* __restrict__ indices, TopKRows g) {
  using C = typename Num<T>::C;
  __shared__ C best_key[32];
  __shared__ int64_t best_idx[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t r = blockIdx.x; r < g.rows; r += gridDim.x) {
    const int64_t o = r / g.inner, i = r % g.inner;
    const T* src = in + o * g.n * g.inner + i;
    const int64_t dst = o * g.k * g.inner + i;
    C prev{};
    int64_t prev_j = -1;  // nothing taken yet
    for (int64_t t = 0; t < g.k; ++t) {
      C best{};
      int64_t best_j = -1;
      for (int64_t j = threadIdx.x; j < g.n; j += blockDim.x) {
        const C v = Num<T>::load(src[j * g.inner]);
        if (prev_j >= 0 && !topk_entry_before(g.max, prev, prev_j, v, j)) continue;  // taken
        if (best_j < 0 || topk_entry_before(g.max, v, j, best, best_j)) {
          best = v;
          best_j = j;
        }
      }
      for (int offset = 16; offset > 0; offset /= 2) {
        const C ov = __shfl_down_sync(0xffffffffu, best, offset);
        const int64_t oj = __shfl_down_sync(0xffffffffu, best_j, offset);
        if (oj >= 0 && (best_j < 0 || topk_entry_before(g.max, ov, oj, best, best_j))) {
          best = ov;
          best_j = oj;
        }
      }
      if (lane == 0) {
        best_key[warp] = best;
        best_idx[warp] = best_j;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < warps; ++w) {
          if (best_idx[w] >= 0 &&
              (best_j < 0 || topk_entry_before(g.max, best_key[w], best_idx[w], best, best_j))) {
            best = best_key[w];
            best_j = best_idx[w];
          }
        }
        values[dst + t * g.inner] = Num<T>::store(best);
        indices[dst + t * g.inner] = static_cast<I>(best_j);
        best_key[0] = best;
        best_idx[0] = best_j;
      }
      __syncthreads();
      prev = best_key[0];
      prev_j = best_idx[0];
      __syncthreads();
    }
  }
}

/// Longest row topk_sort_kernel sorts (its shared memory: 4096 x 12 bytes for int64 values).
constexpr int64_t kTopKSortMax = 4096;
/// Largest k topk_select_kernel takes for rows longer than kTopKSortMax.
constexpr int64_t kTopKSelectMaxK = 128;

/// Threads for one block per row of n elements: whole warps, at most 1024.
unsigned row_block_threads(int64_t n) {
  const int64_t t = (n + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > 1024 ? 1024 : t));
}

/// One block per row, the rows split over at most 65535 blocks (grid-stride).
unsigned row_grid(int64_t rows) { return static_cast<unsigned>(rows < 65535 ? rows : 65535); }

template <typename T, typename I>
void launch_topk(const DeviceTensor& x, DeviceTensor& values, DeviceTensor& indices,
                 const TopKRows& g, bool sort, cudaStream_t stream) {
  const auto* in = static_cast<const T*>(x.data);
  auto* v = static_cast<T*>(values.data);
  auto* ix = static_cast<I*>(indices.data);
  if (sort) {
    int n_pow2 = 1;
    while (n_pow2 < g.n) n_pow2 *= 2;
    const size_t smem = static_cast<size_t>(n_pow2) * (sizeof(typename Num<T>::C) + sizeof(int));
    topk_sort_kernel<T, I><<<row_grid(g.rows), row_block_threads(n_pow2 / 2), smem, stream>>>(
        in, v, ix, g, n_pow2);
    check(cudaGetLastError(), "topk_sort_kernel");
    return;
  }
  topk_select_kernel<T, I><<<row_grid(g.rows), row_block_threads(g.n), 0, stream>>>(in, v, ix, g);
  check(cudaGetLastError(), "topk_select_kernel");
}

// ---------------------------------------------------------------- cumulative

/// One thread per (outer, inner) position walks the axis in order, accumulating like the CPU
/// (double for floats, wrapping int64 for integers): loads are coalesced across the inner run.
template <typename T>
__global__ void cumulative_columns_kernel(const T* __restrict__ in, T* __restrict__ out,
                                          int64_t rows, int64_t n, int64_t inner, bool exclusive,
                                          bool reverse) {
  using Acc = typename AccOf<T>::type;
  for (int64_t r = global_thread(); r < rows; r += grid_threads()) {
    const int64_t base = (r / inner) * n * inner + r % inner;
    Acc acc = 0;
    for (int64_t step = 0; step < n; ++step) {
      const int64_t off = base + (reverse ? n - 1 - step : step) * inner;
      const Acc v = load_acc(in, off);
      if (exclusive) {
        store_acc(out, off, acc);
        acc = op_add(acc, v);
      } else {
        acc = op_add(acc, v);
        store_acc(out, off, acc);
      }
    }
  }
}

/// One block per row for long rows: tiles of blockDim elements, each an inclusive warp scan plus
/// a scan of the warp totals, carried from tile to tile (same accumulator types as the CPU; the
/// float association differs, far below f32 rounding since it is in double).
template <typename T>
__global__ void cumulative_rows_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows,
                                       int64_t n, int64_t inner, bool exclusive, bool reverse) {
  using Acc = typename AccOf<T>::type;
  __shared__ Acc warp_total[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = (r / inner) * n * inner + r % inner;
    Acc carry = 0;
    for (int64_t tile = 0; tile < n; tile += blockDim.x) {
      const int64_t step = tile + threadIdx.x;
      const bool live = step < n;
      const int64_t off = base + (reverse ? n - 1 - step : step) * inner;
      const Acc v = live ? load_acc(in, off) : Acc(0);
      Acc x = v;  // inclusive scan within the warp
      for (int d = 1; d < 32; d *= 2) {
        const Acc y = __shfl_up_sync(0xffffffffu, x, d);
        if (lane >= d) x = op_add(x, y);
      }
      Acc before_lane = __shfl_up_sync(0xffffffffu, x, 1);  // exclusive within the warp
      if (lane == 0) before_lane = 0;
      if (lane == 31) warp_total[warp] = x;
      __syncthreads();
      if (warp == 0) {
        Acc s = lane < warps ? warp_total[lane] : Acc(0);
        for (int d = 1; d < 32; d *= 2) {
          const Acc y = __shfl_up_sync(0xffffffffu, s, d);
          if (lane >= d) s = op_add(s, y);
        }
        if (lane < warps) warp_total[lane] = s;  // inclusive prefix of the warp totals
      }
      __syncthreads();
      const Acc prefix = op_add(carry, warp > 0 ? warp_total[warp - 1] : Acc(0));
      if (live) store_acc(out, off, exclusive ? op_add(prefix, before_lane) : op_add(prefix, x));
      carry = op_add(carry, warp_total[warps - 1]);
      __syncthreads();
    }
  }
}

template <typename T>
void launch_cumulative(const DeviceTensor& x, DeviceTensor& y, int64_t outer, int64_t n,
                       int64_t inner, bool exclusive, bool reverse, cudaStream_t stream) {
  const auto* in = static_cast<const T*>(x.data);
  auto* out = static_cast<T*>(y.data);
  const int64_t rows = outer * inner;
  // Enough independent columns to fill the GPU, or rows too short to share: a thread each.
  if ((inner > 1 && rows >= 4096) || n <= 32) {
    cumulative_columns_kernel<T><<<grid_for(rows, 256), 256, 0, stream>>>(in, out, rows, n, inner,
                                                                          exclusive, reverse);
    check(cudaGetLastError(), "cumulative_columns_kernel");
    return;
  }
  cumulative_rows_kernel<T><<<row_grid(rows), row_block_threads(n), 0, stream>>>(
      in, out, rows, n, inner, exclusive, reverse);
  check(cudaGetLastError(), "cumulative_rows_kernel");
}

}  // namespace

void run(const ReduceParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& y = a.out(0);
  int64_t count = 1;
  for (int64_t axis : p.axes) {
    if (axis < 0 || axis >= static_cast<int64_t>(x.dims.size())) {
      throw Error("Reduce kernel (cuda): axis " + std::to_string(axis) +
                  " is out of range for dims " + dims_to_string(x.dims));
    }
    count *= x.dims[static_cast<size_t>(axis)];
  }
  if (y.numel() == 0) return;
  if (count == 0 && (p.op == ReduceOp::kMax || p.op == ReduceOp::kMin)) {
    throw Error("Reduce kernel (cuda): max/min over an empty dim of input " +
                dims_to_string(x.dims));
  }
  ReduceLayout l;
  if (!make_reduce_layout(x.dims, p.axes, l)) {
    host_fallback(a);  // more than kMaxGroups alternating kept/reduced runs: rank > 16
    return;
  }
  const RowSplit split = row_split(l);
  // An empty reduction runs the same kernels with no elements: identity, and avg = 0/0 = NaN.
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    void* scratch = split.chunks > 1
                        ? a.res->workspace(static_cast<size_t>(l.num_outer * split.chunks) *
                                           sizeof(typename AccOf<T>::type))
                        : nullptr;
    launch_reduce<T>(x, y, l, p.op, split, scratch, a.stream());
  };
  switch (x.dtype) {
    case DataType::kF32: return launch(float{});
    case DataType::kF16: return launch(__half{});
    case DataType::kBF16: return launch(__nv_bfloat16{});
    case DataType::kI8: return launch(int8_t{});
    case DataType::kU8: return launch(uint8_t{});
    case DataType::kI32: return launch(int32_t{});
    case DataType::kI64: return launch(int64_t{});
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string("Reduce kernel (cuda): dtype ") + dtype_name(x.dtype) +
              " is not supported");
}

void run(const SoftMaxParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& y = a.out(0);
  int64_t outer, n, inner;
  split_at(x.dims, p.axis, "SoftMax", outer, n, inner);
  if (x.numel() == 0) return;
  switch (x.dtype) {
    case DataType::kF32:
      launch_softmax<float>(x, y, outer, n, inner, p.log, p.zero_masked_rows, a.stream());
      return;
    case DataType::kF16:
      launch_softmax<__half>(x, y, outer, n, inner, p.log, p.zero_masked_rows, a.stream());
      return;
    case DataType::kBF16:
      launch_softmax<__nv_bfloat16>(x, y, outer, n, inner, p.log, p.zero_masked_rows, a.stream());
      return;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string("SoftMax kernel (cuda): dtype ") + dtype_name(x.dtype) +
              " is not supported");
}

void run(const NormalizationParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  // With a quantized output (layers.h, NormalizationQuantize): the float output when there is
  // one, then the quantized one.
  const NormalizationQuantize& pq = p.quantize;
  void* y_data = !pq.enabled || pq.float_output ? a.out(0).data : nullptr;
  NormQuant nq;
  if (pq.enabled) {
    if (p.type != NormalizationType::kLayer && p.type != NormalizationType::kRms) {
      throw Error(
          "Normalization kernel (cuda): a quantized output is taken by layer and RMS norms only");
    }
    nq.q = static_cast<uint8_t*>(a.out(pq.float_output ? 1 : 0).data);
    nq.scale = static_cast<const float*>(a.in(3).data);
    nq.fp8 = pq.to == DataType::kF8E4M3;
    nq.lo = static_cast<float>(pq.quant_min);
    nq.hi = static_cast<float>(pq.quant_max);
  }
  // Each normalized block is contiguous (see the CPU kernel): a row of [axis:] for layer norm,
  // the channels of one group times the spatial size for group/instance norm.
  int64_t block = 0, spatial = 1, num_params = 0;
  bool per_channel = false;
  switch (p.type) {
    case NormalizationType::kLayer:
    case NormalizationType::kRms: {
      int64_t outer, n, inner;
      split_at(x.dims, p.axis, "Normalization", outer, n, inner);
      block = n * inner;
      num_params = block;
      break;
    }
    case NormalizationType::kGroup:
    case NormalizationType::kInstance: {
      if (x.dims.size() < 2) {
        throw Error("Normalization kernel (cuda): group/instance norm needs [N, C, *], got " +
                    dims_to_string(x.dims));
      }
      const int64_t channels = x.dims[1];
      const int64_t groups = p.type == NormalizationType::kGroup ? p.num_groups : channels;
      if (groups < 1 || channels % groups != 0) {
        if (channels == 0) break;
        throw Error("Normalization kernel (cuda): " + std::to_string(channels) +
                    " channels do not split into " + std::to_string(groups) + " groups");
      }
      for (size_t d = 2; d < x.dims.size(); ++d) spatial *= x.dims[d];
      block = channels / groups * spatial;
      num_params = channels;
      per_channel = true;
      break;
    }
  }
  const int64_t numel = x.numel();
  const bool centered = p.type != NormalizationType::kRms;  // an RMS norm's mean is 0
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    const T* scale = affine_operand<T>(a, 1, num_params, "scale");
    const T* bias = affine_operand<T>(a, 2, num_params, "bias");
    if (numel == 0 || block == 0) return;
    const int64_t blocks = numel / block;
    const int64_t channels_per_block = per_channel ? block / spatial : 0;
    const int64_t channel_blocks = per_channel ? num_params / channels_per_block : 1;
    if (!per_channel && block <= 1024) {  // layer norm over short rows: a warp per row
      launch_layer_norm_warp<T>(static_cast<const T*>(x.data), static_cast<T*>(y_data), scale,
                                bias, blocks, static_cast<int>(block), p.epsilon, centered, nq,
                                a.stream());
      return;
    }
    normalization_kernel<T><<<grid_for(blocks, 1), 256, 0, a.stream()>>>(
        static_cast<const T*>(x.data), static_cast<T*>(y_data), scale, bias, blocks, block,
        spatial, per_channel, channels_per_block, channel_blocks, p.epsilon, centered, nq);
    check(cudaGetLastError(), "normalization_kernel");
  };
  switch (x.dtype) {
    case DataType::kF32: launch(float{}); return;
    case DataType::kF16: launch(__half{}); return;
    case DataType::kBF16: launch(__nv_bfloat16{}); return;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string("Normalization kernel (cuda): dtype ") + dtype_name(x.dtype) +
              " is not supported");
}


void run(const TopKParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& values = a.out(0);
  DeviceTensor& indices = a.out(1);
  int64_t outer, n, inner;
  split_at(x.dims, p.axis, "TopK", outer, n, inner);
  if (p.k < 1 || p.k > n) {
    throw Error("TopK kernel (cuda): k " + std::to_string(p.k) + " must be in [1, " +
                std::to_string(n) + "] for input " + dims_to_string(x.dims) + " along axis " +
                std::to_string(p.axis));
  }
  if (p.index_dtype == DataType::kI32 && n > INT_MAX) {
    throw Error("TopK kernel (cuda): axis size " + std::to_string(n) + " does not fit i32 indices");
  }
  expect_device(indices.dtype == p.index_dtype &&
                    (p.index_dtype == DataType::kI32 || p.index_dtype == DataType::kI64),
                "topk", "indices output is not of index_dtype i32/i64");
  TopKRows g;
  g.rows = outer * inner;
  g.n = n;
  g.inner = inner;
  g.k = p.k;
  g.max = p.op == TopKOp::kMax;
  if (g.rows == 0) return;
  const bool sort = n <= kTopKSortMax && p.k > 1;
  if (!sort && p.k > kTopKSelectMaxK) {
    // A long row with a large k: neither kernel fits (shared memory, k passes). Explicitly the
    // CPU kernel on host copies, which keeps this call correct (and this plan out of graphs).
    host_fallback(a);
    return;
  }
  const bool is64 = p.index_dtype == DataType::kI64;
  const bool supported = dispatch_numeric(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    if (is64) {
      launch_topk<T, int64_t>(x, values, indices, g, sort, a.stream());
    } else {
      launch_topk<T, int32_t>(x, values, indices, g, sort, a.stream());
    }
  });
  if (!supported) {
    throw Error(std::string("TopK kernel (cuda): dtype ") + dtype_name(x.dtype) +
                " is not supported");
  }
}

void run(const CumulativeParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& y = a.out(0);
  int64_t outer, n, inner;
  split_at(x.dims, p.axis, "Cumulative", outer, n, inner);
  if (p.op != CumulativeOp::kSum) {
    throw Error("Cumulative kernel (cuda): unknown op " + std::to_string(static_cast<int>(p.op)));
  }
  if (x.numel() == 0) return;
  const bool supported = dispatch_numeric(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    launch_cumulative<T>(x, y, outer, n, inner, p.exclusive, p.reverse, a.stream());
  });
  if (!supported) {
    throw Error(std::string("Cumulative kernel (cuda): dtype ") + dtype_name(x.dtype) +
                " is not supported");
  }
}

}  // namespace ember::engine::cuda
