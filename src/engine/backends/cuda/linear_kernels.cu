// Hand-written kernels of the linear family: Pooling (every case, one code path) and the
// per-channel bias fill that convolution/deconvolution accumulate onto.
//
// Pooling is a direct kernel rather than cuDNN's: cuDNN's legacy pooling has no dilation,
// ceil_mode, divisor_override, asymmetric padding or integer max pooling, and a direct loop is
// already memory-bound, so one kernel that mirrors the CPU reference (same window clipping, same
// summation order in f32, same NaN rule) serves every case exactly.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <limits>
#include <string>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/linear_kernels.h"
#include "backends/semantics/pooling.h"

namespace ember::engine::cuda {

namespace {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store_f32(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(__half* p, int64_t i, float v) {
  p[i] = __float2half_rn(v);
}
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

unsigned grid_for(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

/// out[(i * channels + c) * plane + j] = bias[c]: one thread per element, grid-stride.
template <typename T>
__global__ void fill_channel_bias_kernel(T* __restrict__ out, const T* __restrict__ bias,
                                         int64_t total, int64_t channels, int64_t plane) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = bias[(i / plane) % channels];
  }
}

/// One N-element chunk of the fused epilogue: y = act(y + b + residual) in f32, rounded once.
/// b is the chunk's bias (per element) and residual its residual chunk (when present).
template <typename T, int N, bool kResidual, bool kAct, typename Act>
__device__ __forceinline__ void epilogue_chunk(T* y, const float (&b)[N], const T* residual,
                                               const Act& act) {
  Vec<T, N> out = *reinterpret_cast<const Vec<T, N>*>(y);
  Vec<T, N> res;
  if constexpr (kResidual) res = *reinterpret_cast<const Vec<T, N>*>(residual);
#pragma unroll
  for (int e = 0; e < N; ++e) {
    float v = Num<T>::load(out.v[e]) + b[e];
    if constexpr (kResidual) v += Num<T>::load(res.v[e]);
    if constexpr (kAct) v = act(v);
    out.v[e] = Num<T>::store(v);
  }
  *reinterpret_cast<Vec<T, N>*>(y) = out;
}

/// y = act(y + bias[c] + residual) over y viewed as [outer, channels, plane]; bias and residual
/// optional. One block per (outer, channel) plane (a conv output channel), threads along the
/// plane in N-element chunks (plane % N == 0, aligned): the channel is known per block, so the
/// loop does no division (64-bit division per element made this kernel compute-bound).
template <typename T, int N, bool kBias, bool kResidual, bool kAct, typename Act>
__global__ void epilogue_planes_kernel(T* __restrict__ y, const T* __restrict__ bias,
                                       const T* __restrict__ residual, int64_t planes,
                                       int64_t channels, int64_t plane, Act act) {
  for (int64_t pl = blockIdx.x; pl < planes; pl += gridDim.x) {
    float b[N];
    const float channel_bias = kBias ? Num<T>::load(bias[pl % channels]) : 0.0f;
#pragma unroll
    for (int e = 0; e < N; ++e) b[e] = channel_bias;
    T* row = y + pl * plane;
    const T* res = kResidual ? residual + pl * plane : nullptr;
    for (int64_t j = threadIdx.x * N; j < plane; j += blockDim.x * N) {
      epilogue_chunk<T, N, kResidual, kAct, Act>(row + j, b, kResidual ? res + j : nullptr, act);
    }
  }
}

/// The same over rows [rows, channels] with the bias along the row (plane 1: a matrix product,
/// or an NHWC convolution whose rows are pixels): threadIdx.x runs along a row in N-element
/// chunks, threadIdx.y over blockDim.y rows, so short rows (64 channels) still fill a block.
template <typename T, int N, bool kBias, bool kResidual, bool kAct, typename Act>
__global__ void epilogue_rows_kernel(T* __restrict__ y, const T* __restrict__ bias,
                                     const T* __restrict__ residual, int64_t rows,
                                     int64_t channels, Act act) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    T* row = y + r * channels;
    const T* res = kResidual ? residual + r * channels : nullptr;
    for (int64_t c = threadIdx.x * N; c < channels; c += blockDim.x * N) {
      float b[N];
#pragma unroll
      for (int e = 0; e < N; ++e) b[e] = kBias ? Num<T>::load(bias[c + e]) : 0.0f;
      epilogue_chunk<T, N, kResidual, kAct, Act>(row + c, b, kResidual ? res + c : nullptr, act);
    }
  }
}

template <typename T, int N, bool kBias, bool kResidual, bool kAct, typename Act>
void launch_epilogue_n(T* y, const T* bias, const T* residual, int64_t total, int64_t channels,
                       int64_t plane, const Act& f, cudaStream_t stream) {
  const int64_t run = plane == 1 ? channels : plane;  // contiguous elements per block
  const int64_t chunks = run / N;
  if (plane == 1) {
    const int64_t rows = total / run;
    const int tx = chunks >= 256 ? 256 : static_cast<int>(chunks);
    const int ty = 256 / tx;
    const auto grid =
        static_cast<unsigned>(std::min<int64_t>((rows + ty - 1) / ty, int64_t{1} << 20));
    epilogue_rows_kernel<T, N, kBias, kResidual, kAct, Act><<<grid, dim3(tx, ty), 0, stream>>>(
        y, bias, residual, rows, channels, f);
  } else {
    const int threads = chunks >= 256 ? 256 : static_cast<int>((chunks + 31) / 32 * 32);
    const auto grid = static_cast<unsigned>(std::min<int64_t>(total / run, int64_t{1} << 20));
    epilogue_planes_kernel<T, N, kBias, kResidual, kAct, Act><<<grid, threads, 0, stream>>>(
        y, bias, residual, total / run, channels, plane, f);
  }
}

/// Picks the widest chunk (16 bytes, then 8, then one element) that divides each block's run
/// and keeps every access aligned.
template <typename T, bool kBias, bool kResidual, bool kAct, typename Act>
void launch_epilogue_kernel(T* y, const T* bias, const T* residual, int64_t total,
                            int64_t channels, int64_t plane, const Act& f,
                            cudaStream_t stream) {
  const int64_t run = plane == 1 ? channels : plane;
  const auto fits = [&](int n) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(n);
    // The bias is read element by element: only y and the residual move in chunks.
    return run % n == 0 && aligned(y, bytes) && (!kResidual || aligned(residual, bytes));
  };
  constexpr int kWide = 16 / sizeof(T);
  if (fits(kWide)) {
    launch_epilogue_n<T, kWide, kBias, kResidual, kAct, Act>(y, bias, residual, total, channels, plane, f, stream);
  } else if constexpr (kWide > 2) {
    if (fits(kWide / 2)) {
      launch_epilogue_n<T, kWide / 2, kBias, kResidual, kAct, Act>(y, bias, residual, total, channels, plane, f, stream);
      return;
    }
    launch_epilogue_n<T, 1, kBias, kResidual, kAct, Act>(y, bias, residual, total, channels, plane, f, stream);
  } else {
    launch_epilogue_n<T, 1, kBias, kResidual, kAct, Act>(y, bias, residual, total, channels, plane, f, stream);
  }
}

template <typename T>
void launch_epilogue_t(T* y, const T* bias, const T* residual, int64_t total, int64_t channels,
                       int64_t plane, const ActivationFn* act, cudaStream_t stream) {
  const ActivationFn f = act != nullptr ? *act : ActivationFn{ActivationType::kRelu, 0.f, 0.f};
  const int key = (bias != nullptr ? 4 : 0) | (residual != nullptr ? 2 : 0) | (act != nullptr ? 1 : 0);
  switch (key) {
// With an activation, the common types get kernels of their own (with_static_activation).
#define EMBER_EPILOGUE_CASE(K, B, R, A)                                                      \
  case K:                                                                                   \
    if constexpr (A) {                                                                      \
      with_static_activation(f, [&](const auto& fn) {                                       \
        launch_epilogue_kernel<T, B, R, A>(y, bias, residual, total, channels, plane, fn,   \
                                           stream);                                         \
      });                                                                                   \
    } else {                                                                                \
      launch_epilogue_kernel<T, B, R, A>(y, bias, residual, total, channels, plane, f,      \
                                         stream);                                           \
    }                                                                                       \
    break;
    EMBER_EPILOGUE_CASE(1, false, false, true)
    EMBER_EPILOGUE_CASE(2, false, true, false)
    EMBER_EPILOGUE_CASE(3, false, true, true)
    EMBER_EPILOGUE_CASE(4, true, false, false)
    EMBER_EPILOGUE_CASE(5, true, false, true)
    EMBER_EPILOGUE_CASE(6, true, true, false)
    EMBER_EPILOGUE_CASE(7, true, true, true)
#undef EMBER_EPILOGUE_CASE
    default: return;  // nothing to do
  }
  check(cudaGetLastError(), "epilogue kernel");
}

// ---------------------------------------------------------------- pooling

/// Pooling geometry right-aligned to three spatial dims (the CPU's Geometry): missing leading
/// dims have size 1, a unit window and no padding. channels_last > 0 is the channel count of an
/// [N, H, W, C] tensor (then a "plane" is one image and elements step by C); 0 for [planes, ...].
struct PoolGeometry {
  int64_t channels_last;
  int64_t in[3];
  int64_t out[3];
  int64_t k[3];
  int64_t stride[3];
  int64_t pad[3];
  int64_t pad_end[3];
  int64_t dil[3];
};

/// The window taps t in [0, count) with 0 <= t * step + offset < limit, as [lo, hi).
__device__ __forceinline__ void valid_range(int64_t count, int64_t step, int64_t offset,
                                            int64_t limit, int64_t& lo, int64_t& hi) {
  lo = offset >= 0 ? 0 : (-offset + step - 1) / step;
  hi = limit - offset <= 0 ? 0 : (limit - offset - 1) / step + 1;
  hi = hi < count ? hi : count;
  lo = lo < hi ? lo : hi;
}

/// Distance between spatial neighbours of one channel: C for channels-last, else 1.
__device__ __forceinline__ int64_t element_step(const PoolGeometry& g) {
  return g.channels_last > 0 ? g.channels_last : 1;
}

/// Output element (plane, od, oh, ow) of a flat output index; `channel` is the channel of a
/// channels-last element (0 otherwise).
__device__ __forceinline__ void unravel_output(int64_t idx, const PoolGeometry& g, int64_t& plane,
                                               int64_t& channel, int64_t o[3]) {
  channel = 0;
  if (g.channels_last > 0) {
    channel = idx % g.channels_last;
    idx /= g.channels_last;
  }
  o[2] = idx % g.out[2];
  idx /= g.out[2];
  o[1] = idx % g.out[1];
  idx /= g.out[1];
  o[0] = idx % g.out[0];
  plane = idx / g.out[0];
}

/// Max pooling of float storage T in f32, x/out [planes, *in] / [planes, *out]; padded taps never
/// win and NaN propagates (as torch and the CPU kernel).
template <typename T>
__global__ void max_pool_float_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t total,
                                      PoolGeometry g) {
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, channel, o[3], lo[3], hi[3], start[3];
    unravel_output(idx, g, plane, channel, o);
    for (int d = 0; d < 3; ++d) {
      start[d] = o[d] * g.stride[d] - g.pad[d];
      valid_range(g.k[d], g.dil[d], start[d], g.in[d], lo[d], hi[d]);
    }
    const int64_t step = element_step(g);
    const T* xp = x + plane * in_plane * step + channel;
    float best = -INFINITY;
    for (int64_t kd = lo[0]; kd < hi[0]; ++kd) {
      for (int64_t kh = lo[1]; kh < hi[1]; ++kh) {
        const int64_t row =
            ((start[0] + kd * g.dil[0]) * g.in[1] + start[1] + kh * g.dil[1]) * g.in[2] + start[2];
        for (int64_t kw = lo[2]; kw < hi[2]; ++kw) {
          const float v = to_f32(xp[(row + kw * g.dil[2]) * step]);
          if (v > best || v != v) best = v;
        }
      }
    }
    store_f32(out, idx, best);
  }
}

/// 2-d channels-last max pooling for 2-byte floats with C % 8 == 0: one thread per output pixel
/// and 8 channels, 16-byte loads and stores, 32-bit index math (the generic kernel's 64-bit
/// divisions per element made ResNet-50's one max pool 22% of its NHWC GPU time, 0.29 ms at
/// batch 32 on 2026-12-04). Same rules as max_pool_float_kernel: NaN wins, padding never does.
struct Pool2d {
  int c8, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
__global__ void max_pool_nhwc8_kernel(const T* __restrict__ x, T* __restrict__ out, int total8,
                                      Pool2d g) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total8;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int t = static_cast<int>(idx);  // < total8 <= INT_MAX
    const int cv = t % g.c8;
    t /= g.c8;
    const int ox = t % g.ow;
    t /= g.ow;
    const int oy = t % g.oh;
    const int n = t / g.oh;
    float best[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) best[k] = -INFINITY;
    const int y0 = oy * g.sh - g.ph, x0 = ox * g.sw - g.pw;
    for (int i = 0; i < g.kh; ++i) {
      const int yy = y0 + i * g.dh;
      if (yy < 0 || yy >= g.ih) continue;
      for (int j = 0; j < g.kw; ++j) {
        const int xx = x0 + j * g.dw;
        if (xx < 0 || xx >= g.iw) continue;
        const int64_t pixel = (static_cast<int64_t>(n) * g.ih + yy) * g.iw + xx;
        const uint4 v = *reinterpret_cast<const uint4*>(x + (pixel * g.c8 + cv) * 8);
        const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float f = to_f32(e[k]);
          if (f > best[k] || f != f) best[k] = f;
        }
      }
    }
    uint4 o;
    T* oe = reinterpret_cast<T*>(&o);
#pragma unroll
    for (int k = 0; k < 8; ++k) store_f32(oe, k, best[k]);
    *reinterpret_cast<uint4*>(out + static_cast<int64_t>(idx) * 8) = o;
  }
}

/// Max pooling of integer storage T (no NaN; an all-padding window gives T's lowest value).
template <typename T>
__global__ void max_pool_int_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t total,
                                    PoolGeometry g, T lowest) {
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, channel, o[3], lo[3], hi[3], start[3];
    unravel_output(idx, g, plane, channel, o);
    for (int d = 0; d < 3; ++d) {
      start[d] = o[d] * g.stride[d] - g.pad[d];
      valid_range(g.k[d], g.dil[d], start[d], g.in[d], lo[d], hi[d]);
    }
    const int64_t step = element_step(g);
    const T* xp = x + plane * in_plane * step + channel;
    T best = lowest;
    for (int64_t kd = lo[0]; kd < hi[0]; ++kd) {
      for (int64_t kh = lo[1]; kh < hi[1]; ++kh) {
        const int64_t row =
            ((start[0] + kd * g.dil[0]) * g.in[1] + start[1] + kh * g.dil[1]) * g.in[2] + start[2];
        for (int64_t kw = lo[2]; kw < hi[2]; ++kw) {
          const T v = xp[(row + kw * g.dil[2]) * step];
          best = v > best ? v : best;
        }
      }
    }
    out[idx] = best;
  }
}

/// Average pooling in f32 with torch's divisor rules: the window is clipped to the padded input
/// (count_include_pad counts padding but not the ceil-mode overhang), then to the input; an
/// empty window writes 0; divisor_override wins when > 0. Sums in the CPU's order (d, h, w).
template <typename T>
__global__ void avg_pool_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t total,
                                PoolGeometry g, bool count_include_pad, int64_t divisor_override) {
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, channel, o[3];
    unravel_output(idx, g, plane, channel, o);
    const semantics::AvgPoolWindow w =
        semantics::avg_pool_window(g, o, count_include_pad, divisor_override);
    if (w.empty) {
      store_f32(out, idx, 0.0f);
      continue;
    }
    const int64_t step = element_step(g);
    const T* xp = x + plane * in_plane * step + channel;
    float sum = 0.0f;
    for (int64_t id = w.lo[0]; id < w.hi[0]; ++id) {
      for (int64_t ih = w.lo[1]; ih < w.hi[1]; ++ih) {
        const T* row = xp + (id * g.in[1] + ih) * g.in[2] * step;
        for (int64_t iw = w.lo[2]; iw < w.hi[2]; ++iw) sum = __fadd_rn(sum, to_f32(row[iw * step]));
      }
    }
    store_f32(out, idx, __fdiv_rn(sum, static_cast<float>(w.divisor)));
  }
}

template <typename T>
void launch_max_int(const DeviceTensor& x, DeviceTensor& y, int64_t total, const PoolGeometry& g,
                    cudaStream_t stream) {
  max_pool_int_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(
      static_cast<const T*>(x.data), static_cast<T*>(y.data), total, g,
      std::numeric_limits<T>::lowest());
  check(cudaGetLastError(), "max_pool_int_kernel");
}

/// Launches max_pool_nhwc8_kernel when every size of the geometry fits its int math; false
/// (nothing launched) otherwise.
template <typename T>
bool launch_max_pool_nhwc8(const T* in, T* out, int64_t total, const PoolGeometry& g,
                           cudaStream_t stream) {
  Pool2d q{};
  q.c8 = static_cast<int>(g.channels_last / 8);
  const int64_t v[12] = {g.in[1],     g.in[2],     g.out[1], g.out[2], g.k[1],   g.k[2],
                         g.stride[1], g.stride[2], g.pad[1], g.pad[2], g.dil[1], g.dil[2]};
  int* f[12] = {&q.ih, &q.iw, &q.oh, &q.ow, &q.kh, &q.kw, &q.sh, &q.sw, &q.ph, &q.pw, &q.dh, &q.dw};
  for (int i = 0; i < 12; ++i) {
    if (v[i] > INT_MAX) return false;
    *f[i] = static_cast<int>(v[i]);
  }
  // Every tap offset the kernel forms (oy * sh - ph + i * dh) must stay in int.
  for (int d = 1; d <= 2; ++d) {
    if ((g.out[d] - 1) * g.stride[d] + (g.k[d] - 1) * g.dil[d] + g.in[d] + g.pad[d] > INT_MAX) {
      return false;
    }
  }
  const int64_t total8 = total / 8;
  max_pool_nhwc8_kernel<T><<<grid_for(total8, 256), 256, 0, stream>>>(
      in, out, static_cast<int>(total8), q);
  check(cudaGetLastError(), "max_pool_nhwc8_kernel");
  return true;
}

// ---------------------------------------------------------------- global average pooling

/// Global average pooling: one output position per plane whose window is the whole input (the
/// squeeze-and-excitation pools of MobileNetV3 and EfficientNet, classifier heads).
/// avg_pool_kernel gives each output one thread walking the whole plane: EfficientNet-B0's
/// first SE pool at b1 is 32 threads of 12544 steps. By default (EMBER_PARALLEL_REDUCTIONS=0
/// keeps that kernel) the plane's positions are cut into `splits` slices instead, a block each per group of channels:
/// channels-last, 32 channels a block (threadIdx.x) and 8 position rows (threadIdx.y); NCHW, a
/// warp per plane. Partial f32 sums go to scratch [n, splits, c]; a second kernel adds a
/// channel's partials in order and divides. The summation order differs from the CPU's
/// sequential one (strided f32 partials, then a tree): within f32 rounding of the sum.
struct GlobalPool {
  int64_t n;          ///< Images (channels-last), or 1 (NCHW: every plane is a "channel").
  int64_t c;          ///< Channels (channels-last), or N * C planes (NCHW).
  int64_t positions;  ///< Elements of a plane (D * H * W).
  int64_t splits, chunk;
  bool nhwc;
};

template <typename T>
__global__ void global_avg_pool_partial_kernel(const T* __restrict__ x, float* __restrict__ partial,
                                               GlobalPool g) {
  __shared__ float sums[8][33];
  const int64_t n = blockIdx.x / g.splits, s = blockIdx.x % g.splits;
  const int64_t begin = s * g.chunk;
  const int64_t end = begin + g.chunk < g.positions ? begin + g.chunk : g.positions;
  const int tx = threadIdx.x, ty = threadIdx.y;  // blockDim (32, 8)
  float acc = 0.0f;
  if (g.nhwc) {
    const int64_t c = static_cast<int64_t>(blockIdx.y) * 32 + tx;
    if (c < g.c) {
      const T* base = x + n * g.positions * g.c + c;
      for (int64_t p = begin + ty; p < end; p += 8) acc = __fadd_rn(acc, to_f32(base[p * g.c]));
    }
    sums[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < g.c) {
      float t = sums[0][tx];
      for (int i = 1; i < 8; ++i) t = __fadd_rn(t, sums[i][tx]);
      partial[(n * g.splits + s) * g.c + c] = t;
    }
  } else {
    // A warp per plane (ty is uniform across a warp, so the shuffles below are too).
    const int64_t c = static_cast<int64_t>(blockIdx.y) * 8 + ty;
    if (c < g.c) {
      const T* base = x + (n * g.c + c) * g.positions;
      for (int64_t p = begin + tx; p < end; p += 32) acc = __fadd_rn(acc, to_f32(base[p]));
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      acc = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, offset));
    }
    if (tx == 0 && c < g.c) partial[(n * g.splits + s) * g.c + c] = acc;
  }
}

template <typename T>
__global__ void global_avg_pool_finish_kernel(const float* __restrict__ partial,
                                              T* __restrict__ out, GlobalPool g, float divisor) {
  const int64_t total = g.n * g.c;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / g.c, c = i % g.c;
    float sum = 0.0f;
    for (int64_t s = 0; s < g.splits; ++s) sum = __fadd_rn(sum, partial[(n * g.splits + s) * g.c + c]);
    store_f32(out, i, __fdiv_rn(sum, divisor));  // out [N, C] in either layout: index n * C + c
  }
}

/// The split of a global average pooling of `g` (and its divisor), or false when the pooling
/// is not global (more than one output position, or a window that leaves out part of the
/// input), the switch is off, or the plane is too small to be worth a second kernel.
bool global_pool_plan(const PoolingParams& p, const PoolGeometry& g, int64_t total,
                      GlobalPool& gp, float& divisor) {
  if (!parallel_reductions_enabled() || p.type != PoolingType::kAverage) return false;
  const int64_t o[3] = {0, 0, 0};
  const semantics::AvgPoolWindow w =
      semantics::avg_pool_window(g, o, p.count_include_pad, p.divisor_override);
  if (w.empty) return false;
  for (int d = 0; d < 3; ++d) {
    if (g.out[d] != 1 || w.lo[d] != 0 || w.hi[d] != g.in[d]) return false;
  }
  gp.positions = g.in[0] * g.in[1] * g.in[2];
  if (gp.positions < 64) return false;
  gp.nhwc = g.channels_last > 0;
  gp.c = gp.nhwc ? g.channels_last : total;
  gp.n = gp.nhwc ? total / g.channels_last : 1;
  const int64_t blocks_y = gp.nhwc ? (gp.c + 31) / 32 : (gp.c + 7) / 8;
  if (blocks_y > 65535) return false;
  // About two blocks per SM; a slice has at least 8 positions per thread row.
  const int64_t min_chunk = gp.nhwc ? 64 : 256;
  const int64_t want = std::max<int64_t>(1, 2 * sm_count() / (gp.n * blocks_y));
  const int64_t most = std::max<int64_t>(1, (gp.positions + min_chunk - 1) / min_chunk);
  gp.splits = std::min(want, most);
  gp.chunk = (gp.positions + gp.splits - 1) / gp.splits;
  gp.splits = (gp.positions + gp.chunk - 1) / gp.chunk;
  divisor = static_cast<float>(w.divisor);
  return gp.n * gp.splits <= INT_MAX;
}

template <typename T>
void launch_global_avg_pool(const DeviceTensor& x, DeviceTensor& y, const GlobalPool& gp,
                            float divisor, float* partial, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(gp.n * gp.splits),
                  static_cast<unsigned>(gp.nhwc ? (gp.c + 31) / 32 : (gp.c + 7) / 8));
  global_avg_pool_partial_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(
      static_cast<const T*>(x.data), partial, gp);
  check(cudaGetLastError(), "global_avg_pool_partial_kernel");
  global_avg_pool_finish_kernel<T><<<grid_for(gp.n * gp.c, 256), 256, 0, stream>>>(
      partial, static_cast<T*>(y.data), gp, divisor);
  check(cudaGetLastError(), "global_avg_pool_finish_kernel");
}

template <typename T>
void launch_float_pool(const PoolingParams& p, const DeviceTensor& x, DeviceTensor& y,
                       int64_t total, const PoolGeometry& g, cudaStream_t stream) {
  const auto* in = static_cast<const T*>(x.data);
  auto* out = static_cast<T*>(y.data);
  if (p.type == PoolingType::kMax) {
    const int64_t c = g.channels_last;
    const bool aligned = reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(out) % 16 == 0;
    if constexpr (sizeof(T) == 2) {
      if (c > 0 && c % 8 == 0 && aligned && g.in[0] == 1 && g.out[0] == 1 && g.k[0] == 1 &&
          total / 8 <= INT_MAX && x.numel() / 8 <= INT_MAX &&
          launch_max_pool_nhwc8(in, out, total, g, stream)) {
        return;
      }
    }
    max_pool_float_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(in, out, total, g);
    check(cudaGetLastError(), "max_pool_float_kernel");
  } else {
    avg_pool_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(in, out, total, g,
                                                                 p.count_include_pad,
                                                                 p.divisor_override);
    check(cudaGetLastError(), "avg_pool_kernel");
  }
}

}  // namespace

namespace {

/// Spins until *flag is set by the host, at most `limit_ns` of the global timer.
__global__ void hold_kernel(const volatile int* flag, uint64_t limit_ns) {
  uint64_t start = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    if (*flag != 0) return;
    uint64_t now = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > limit_ns) return;
    __nanosleep(1000);
  }
}

}  // namespace

StreamGate::StreamGate() {
  void* host = nullptr;
  check(cudaHostAlloc(&host, sizeof(int), cudaHostAllocMapped), "cudaHostAlloc (stream gate)");
  host_flag_ = static_cast<volatile int*>(host);
  *host_flag_ = 0;
  const cudaError_t e = cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_flag_), host, 0);
  if (e != cudaSuccess) {
    cudaFreeHost(host);
    check(e, "cudaHostGetDevicePointer (stream gate)");
  }
}

StreamGate::~StreamGate() {
  release();
  // A hold kernel reads the flag until it sees the release: wait for it before freeing.
  if (held_any_) cudaStreamSynchronize(held_);
  cudaFreeHost(const_cast<int*>(host_flag_));
}

void StreamGate::hold(cudaStream_t stream) {
  *host_flag_ = 0;
  held_ = stream;
  held_any_ = true;
  hold_kernel<<<1, 1, 0, stream>>>(device_flag_, 200'000'000ull);
  check(cudaGetLastError(), "hold_kernel launch (stream gate)");
}

void StreamGate::release() { *host_flag_ = 1; }

void launch_fill_channel_bias(DataType dtype, void* out, const void* bias, int64_t batch,
                              int64_t channels, int64_t plane, cudaStream_t stream) {
  const int64_t total = batch * channels * plane;
  if (total == 0) return;
  const unsigned grid = grid_for(total, 256);
  switch (dtype) {
    case DataType::kF32:
      fill_channel_bias_kernel<float><<<grid, 256, 0, stream>>>(
          static_cast<float*>(out), static_cast<const float*>(bias), total, channels, plane);
      break;
    case DataType::kF16:
    case DataType::kBF16:  // both 2-byte: the fill copies bits
      fill_channel_bias_kernel<uint16_t><<<grid, 256, 0, stream>>>(
          static_cast<uint16_t*>(out), static_cast<const uint16_t*>(bias), total, channels, plane);
      break;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kF8E4M3:
    case DataType::kBool:
      throw Error(std::string("bias fill (cuda): dtype ") + dtype_name(dtype) +
                  " is not supported");
  }
  check(cudaGetLastError(), "fill_channel_bias_kernel");
}

void launch_epilogue(DataType dtype, void* y, const void* bias, int64_t channels, int64_t plane,
                     const void* residual, const Epilogue* activation, int64_t total,
                     cudaStream_t stream) {
  if (total == 0) return;
  ActivationFn act{ActivationType::kRelu, 0.f, 0.f};
  const ActivationFn* actp = nullptr;
  if (activation != nullptr && activation->fused_activation) {
    act = ActivationFn{activation->activation, static_cast<float>(activation->alpha),
                       static_cast<float>(activation->beta)};
    actp = &act;
  }
  switch (dtype) {
    case DataType::kF32:
      return launch_epilogue_t(static_cast<float*>(y), static_cast<const float*>(bias),
                               static_cast<const float*>(residual), total, channels, plane, actp,
                               stream);
    case DataType::kF16:
      return launch_epilogue_t(static_cast<__half*>(y), static_cast<const __half*>(bias),
                               static_cast<const __half*>(residual), total, channels, plane, actp,
                               stream);
    case DataType::kBF16:
      return launch_epilogue_t(static_cast<__nv_bfloat16*>(y),
                               static_cast<const __nv_bfloat16*>(bias),
                               static_cast<const __nv_bfloat16*>(residual), total, channels,
                               plane, actp, stream);
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string("epilogue (cuda): dtype ") + dtype_name(dtype) + " is not supported");
}

void run(const PoolingParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& y = a.out(0);
  const size_t nsp = p.window.size();
  if (nsp < 1 || nsp > 3 || x.dims.size() < nsp || y.dims.size() != x.dims.size() ||
      p.stride.size() != nsp || p.padding_begin.size() != nsp || p.padding_end.size() != nsp ||
      p.dilation.size() != nsp || (p.channels_last && (nsp != 2 || x.dims.size() != 4))) {
    throw Error("Pooling kernel (cuda): parameters do not match input " + dims_to_string(x.dims));
  }
  PoolGeometry g;
  g.channels_last = p.channels_last ? x.dims[3] : 0;
  // Channels-last spatial dims sit before the channel dim.
  const size_t last = p.channels_last ? x.dims.size() - 1 : x.dims.size();
  for (int d = 0; d < 3; ++d) {
    g.in[d] = g.out[d] = g.k[d] = g.stride[d] = g.dil[d] = 1;
    g.pad[d] = g.pad_end[d] = 0;
  }
  const size_t off = 3 - nsp;
  for (size_t d = 0; d < nsp; ++d) {
    g.in[off + d] = x.dims[last - nsp + d];
    g.out[off + d] = y.dims[last - nsp + d];
    g.k[off + d] = p.window[d];
    g.stride[off + d] = p.stride[d];
    g.pad[off + d] = p.padding_begin[d];
    g.pad_end[off + d] = p.padding_end[d];
    g.dil[off + d] = p.dilation[d];
  }
  const int64_t total = y.numel();
  if (total == 0) return;
  GlobalPool gp{};
  float divisor = 1.0f;
  if (dtype_is_float(x.dtype) && global_pool_plan(p, g, total, gp, divisor)) {
    auto* partial = static_cast<float*>(
        a.res->workspace(static_cast<size_t>(gp.n * gp.splits * gp.c) * sizeof(float)));
    switch (x.dtype) {
      case DataType::kF32: return launch_global_avg_pool<float>(x, y, gp, divisor, partial, a.stream());
      case DataType::kF16: return launch_global_avg_pool<__half>(x, y, gp, divisor, partial, a.stream());
      case DataType::kBF16:
        return launch_global_avg_pool<__nv_bfloat16>(x, y, gp, divisor, partial, a.stream());
      default: break;
    }
  }
  switch (x.dtype) {
    case DataType::kF32: launch_float_pool<float>(p, x, y, total, g, a.stream()); return;
    case DataType::kF16: launch_float_pool<__half>(p, x, y, total, g, a.stream()); return;
    case DataType::kBF16: launch_float_pool<__nv_bfloat16>(p, x, y, total, g, a.stream()); return;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  if (p.type == PoolingType::kMax) {
    switch (x.dtype) {
      case DataType::kI8: launch_max_int<int8_t>(x, y, total, g, a.stream()); return;
      case DataType::kU8: launch_max_int<uint8_t>(x, y, total, g, a.stream()); return;
      case DataType::kI32: launch_max_int<int32_t>(x, y, total, g, a.stream()); return;
      case DataType::kI64: launch_max_int<int64_t>(x, y, total, g, a.stream()); return;
      case DataType::kF32:
      case DataType::kF16:
      case DataType::kBF16:
      case DataType::kBool: break;
      case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
    }
  }
  throw Error(std::string("Pooling kernel (cuda): ") +
              (p.type == PoolingType::kMax ? "max" : "average") + " pooling of " +
              dtype_name(x.dtype) + " is not supported");
}

}  // namespace ember::engine::cuda
