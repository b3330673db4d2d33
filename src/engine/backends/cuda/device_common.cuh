// Device-side helpers shared by the pointwise and data-movement kernels (CUDA sources only):
// launch geometry, element types with their f32/int64 compute types, vector access, and the
// small by-value index-map structs that describe strided / broadcast walks of up to kMaxRank dims.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/semantics/activation.h"
#include "backends/semantics/fused_pointwise.h"

namespace ember::engine::cuda {

/// Largest rank a kernel's index map takes after coalescing (callers fall back to the host
/// kernel beyond it).
inline constexpr int kMaxRank = 8;
inline constexpr int kThreads = 256;

/// Blocks for a grid-stride loop over n work items: enough to fill every SM several times over,
/// never more than needed, never 0 (so a launch with n == 0 is still valid; callers skip it).
inline unsigned grid_for(int64_t n) {
  constexpr int64_t kMaxBlocks = 132 * 16;  // a few waves on H100/H200; the loop covers the rest
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b > kMaxBlocks) b = kMaxBlocks;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

/// The storage of a bool element (distinct from u8 so overloads can tell them apart).
struct Bool8 {
  uint8_t v;
};

/// Storage type T -> compute type C: floats compute in f32 (rounded to T on store), integers in
/// int64 (narrowed with a C cast, i.e. wrap-around), bool as bool.
template <typename T>
struct Num;
template <>
struct Num<float> {
  using C = float;
  __device__ static C load(float v) { return v; }
  __device__ static float store(C v) { return v; }
};
template <>
struct Num<__half> {
  using C = float;
  __device__ static C load(__half v) { return __half2float(v); }
  __device__ static __half store(C v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using C = float;
  __device__ static C load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(C v) { return __float2bfloat16_rn(v); }
};
template <typename S>
struct IntNum {
  using C = int64_t;
  __device__ static C load(S v) { return static_cast<C>(v); }
  __device__ static S store(C v) { return static_cast<S>(v); }
};
template <>
struct Num<int8_t> : IntNum<int8_t> {};
template <>
struct Num<uint8_t> : IntNum<uint8_t> {};
template <>
struct Num<int32_t> : IntNum<int32_t> {};
template <>
struct Num<int64_t> : IntNum<int64_t> {};
template <>
struct Num<Bool8> {
  using C = bool;
  __device__ static C load(Bool8 v) { return v.v != 0; }
  __device__ static Bool8 store(C v) { return Bool8{static_cast<uint8_t>(v ? 1 : 0)}; }
};

/// Calls fn(T{}) with the storage type T of a float or integer dtype (f16/bf16 as __half /
/// __nv_bfloat16); returns false, calling nothing, for bool.
template <typename Fn>
bool dispatch_numeric(DataType t, Fn&& fn) {
  switch (t) {
    case DataType::kF32: fn(float{}); return true;
    case DataType::kF16: fn(__half{}); return true;
    case DataType::kBF16: fn(__nv_bfloat16{}); return true;
    case DataType::kI8: fn(int8_t{}); return true;
    case DataType::kU8: fn(uint8_t{}); return true;
    case DataType::kI32: fn(int32_t{}); return true;
    case DataType::kI64: fn(int64_t{}); return true;
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  return false;
}

/// N elements moved as one aligned access (16 bytes for the input side of a pointwise kernel).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

/// True when p is aligned to `bytes`.
inline bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

/// Row-major strides of dims (host).
inline std::vector<int64_t> row_major_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
  return s;
}

/// A walk over `rank` dims (row-major over dims) with N operand strides per dim, passed by value.
template <int N>
struct IndexMap {
  int rank = 0;
  int64_t dims[kMaxRank];
  int64_t strides[N][kMaxRank];

  /// The N operand offsets of flat position i of the walk.
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    if (rank == 1) {  // the common coalesced case: no division
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] = i * strides[k][0];
      return;
    }
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t c = i % dims[d];
      i /= dims[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += c * strides[k][d];
    }
  }
};

/// Builds an IndexMap from per-operand strides over `dims`: drops size-1 dims and merges
/// neighbours that every operand steps through as one, so common cases collapse to rank 1-2.
/// Returns false when more than kMaxRank dims remain.
template <int N>
bool make_index_map(const std::vector<int64_t>& dims,
                    const std::vector<std::vector<int64_t>>& strides, IndexMap<N>& m) {
  std::vector<int64_t> md;
  std::vector<std::vector<int64_t>> ms;
  semantics::merge_walk_dims(dims, strides, /*keep_last=*/false, md, ms);
  if (md.size() > static_cast<size_t>(kMaxRank)) return false;
  m.rank = static_cast<int>(md.size());
  for (int d = 0; d < m.rank; ++d) {
    m.dims[d] = md[d];
    for (int k = 0; k < N; ++k) m.strides[k][d] = ms[k][d];
  }
  return true;
}

/// Strides for reading `in` broadcast to `out` (numpy, right-aligned): 0 on broadcast dims.
inline std::vector<int64_t> broadcast_strides_of(const std::vector<int64_t>& in,
                                                 const std::vector<int64_t>& out) {
  std::vector<int64_t> s(out.size(), 0);
  const std::vector<int64_t> in_s = row_major_strides(in);
  const size_t off = out.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i) s[off + i] = (in[i] == 1 && out[off + i] != 1) ? 0 : in_s[i];
  return s;
}

/// Throws Error when `cond` fails: shapes or dtypes that shape inference should have ruled out.
inline void expect_device(bool cond, const char* what, const std::string& detail) {
  if (!cond) {
    throw Error(std::string(what) + ": " + detail +
                " (inconsistent with shape inference; the plan may be corrupt)");
  }
}

/// A device int that kernels set to non-zero when they meet a data-dependent error (a bad index,
/// an integer division by zero); zeroed on the stream before the kernel runs.
inline int* error_flag(const CudaArgs& a) {
  int* flag = static_cast<int*>(a.res->workspace(sizeof(int)));
  check(cudaMemsetAsync(flag, 0, sizeof(int), a.stream()), "cudaMemsetAsync (error flag)");
  return flag;
}

/// Reads the flag back after the kernels that set it (synchronizes the stream: a data-dependent
/// error must surface as an Error from this layer, as on the CPU back end). Inside a CUDA graph
/// capture nothing can be read back: the eager first call of each shape signature checked, and
/// replays go on as the kernels do (gather clamps indices; integer division does not trap), so
/// callers skip the check (flag and kernel) when capturing.
inline int read_error_flag(const int* flag, const CudaArgs& a) {
  if (capturing(a.stream())) return 0;
  int host = 0;
  check(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, a.stream()),
        "cudaMemcpyAsync (error flag)");
  check(cudaStreamSynchronize(a.stream()), "cudaStreamSynchronize (error flag)");
  return host;
}

/// The Activation layer's function in f32 (shared by the Activation kernel and the fused
/// epilogues of Convolution and MatrixMultiply).
struct ActivationFn {
  ActivationType type;
  float alpha, beta;
  __device__ float operator()(float x) const {
    return semantics::activation(type, x, alpha, beta);
  }
};

/// ActivationFn with the type a compile-time constant: semantics::activation's switch folds
/// away and the formula inlines, so a kernel's loop over a vector of elements unrolls with the
/// formulas interleaved. With the runtime type, each element went through the switch (an
/// indirect branch) in turn: the erf-GELU pass after BERT's, ViT's, Swin's and ConvNeXt's MLP
/// GEMMs reached about 56% of the H100's bandwidth (2026-12-06 profiles).
template <ActivationType kType>
struct StaticActivationFn {
  float alpha, beta;
  __device__ __forceinline__ float operator()(float x) const {
    return semantics::activation(kType, x, alpha, beta);
  }
};

/// Calls `launch(fn)` with `fn` a StaticActivationFn for the activations models fuse most
/// (relu, both GELUs, SiLU), else with `f` itself (the runtime switch): one instantiation of a
/// kernel per listed type instead of one for all.
template <typename Launch>
void with_static_activation(const ActivationFn& f, Launch&& launch) {
  switch (f.type) {
    case ActivationType::kRelu:
      return launch(StaticActivationFn<ActivationType::kRelu>{f.alpha, f.beta});
    case ActivationType::kGeluErf:
      return launch(StaticActivationFn<ActivationType::kGeluErf>{f.alpha, f.beta});
    case ActivationType::kGeluTanh:
      return launch(StaticActivationFn<ActivationType::kGeluTanh>{f.alpha, f.beta});
    case ActivationType::kSilu:
      return launch(StaticActivationFn<ActivationType::kSilu>{f.alpha, f.beta});
    default:
      return launch(f);
  }
}

}  // namespace ember::engine::cuda
