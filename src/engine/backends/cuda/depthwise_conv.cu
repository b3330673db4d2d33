// A direct kernel for depthwise channels_last convolutions (groups == input channels == output
// channels): MobileNet's and EfficientNet's 3x3/5x5, ConvNeXt's 7x7. Such a convolution does
// R*S multiply-adds per output and no channel mixing, so it is memory-bound; cuDNN has no tensor-
// core algorithm for it, and which of its direct kernels it picks varies with the shape. This
// kernel is timed against cuDNN per problem (linear.cpp) and runs where it is faster.
//
// Work split: a thread owns V adjacent channels (4 where C allows: 8 or 16 bytes) of kTile
// adjacent output pixels along W; threadIdx.x runs over the block's channel vectors, so a warp's
// loads of one input pixel are one contiguous run of channels. The block's filter taps are staged
// in shared memory as [R*S][channels] once, and the block then walks its share of the pixel
// tiles. For the compiled kernel sizes (3/5/7, stride 1/2, dilation 1) one input row's
// (kTile-1)*stride + S columns are each loaded once and feed every output of the tile that
// reads them; other shapes take the generic kernel (one pixel per thread, runtime loops).
//
// Precision: products and sums in f32 in the CPU reference's order (kernel rows, then columns),
// then y = act(scale * sum + bias + residual) rounded once, the conv epilogue's formula.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/linear_kernels.h"

namespace ember::engine::cuda {

namespace {

constexpr int kBlockThreads = 256;
constexpr int kTile = 4;                         // output pixels along W per thread
constexpr size_t kMaxSharedBytes = 48 * 1024;    // the default dynamic shared memory limit

std::atomic<int64_t> g_launches{0};  // depthwise_conv_launches()

struct DwGeometry {
  int64_t n, h, w, c, oh, ow;
  int r, s, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t tiles_w;  // output tiles along W (ceil(ow / tile))
  float scale;
  bool bias, residual, act;
};

template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
  const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = Num<T>::load(v.v[e]);
}

/// y[..] = act(scale * acc + bias + residual) for one V-channel vector, rounded once.
template <typename T, int V>
__device__ __forceinline__ void store_out(T* y, const T* res, const float (&acc)[V],
                                          const float (&b)[V], const DwGeometry& g,
                                          const ActivationFn& act) {
  float r[V];
  if (g.residual) {
    load_vec<T, V>(res, r);
  }
  Vec<T, V> out;
#pragma unroll
  for (int e = 0; e < V; ++e) {
    float v = g.scale * acc[e] + b[e];
    if (g.residual) v += r[e];
    if (g.act) v = act(v);
    out.v[e] = Num<T>::store(v);
  }
  *reinterpret_cast<Vec<T, V>*>(y) = out;
}

/// Stages the block's filter taps as sw[rs * width + channel] (width = blockDim.x * V channels
/// starting at c0; channels past C read as 0). w is KRSC with one input channel per group.
template <typename T, int V>
__device__ __forceinline__ void stage_weights(const T* __restrict__ w, T* sw, int64_t c0,
                                              const DwGeometry& g) {
  const int width = static_cast<int>(blockDim.x) * V;
  const int taps = g.r * g.s;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  for (int i = tid; i < taps * width; i += nthreads) {
    const int ch = i % width, rs = i / width;
    sw[i] = c0 + ch < g.c ? w[(c0 + ch) * taps + rs] : Num<T>::store(0.0f);
  }
  __syncthreads();
}

/// A thread's channels: the first (c), the staged taps' row width and the thread's offset in
/// it, and the V biases (0 without a bias).
template <int V>
struct ThreadChannels {
  int64_t c;
  int width, lane_off;
  float bias[V];
};

/// Both kernels' prologue: stages the block's taps, then fills `tc`; false for a thread past
/// the last channel (it has no work; the block's only barrier is behind it).
template <typename T, int V>
__device__ __forceinline__ bool thread_channels(const T* __restrict__ w, const T* __restrict__ bias,
                                                T* sw, const DwGeometry& g, ThreadChannels<V>& tc) {
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * blockDim.x * V;
  stage_weights<T, V>(w, sw, c0, g);
  tc.c = c0 + static_cast<int64_t>(threadIdx.x) * V;
  if (tc.c >= g.c) return false;
  tc.width = static_cast<int>(blockDim.x) * V;
  tc.lane_off = threadIdx.x * V;
#pragma unroll
  for (int e = 0; e < V; ++e) tc.bias[e] = g.bias ? Num<T>::load(bias[tc.c + e]) : 0.0f;
  return true;
}

/// The compiled shapes: KS x KS filter, stride STRIDE, dilation 1, kTile pixels per thread.
template <typename T, int V, int KS, int STRIDE>
__global__ void __launch_bounds__(kBlockThreads)
depthwise_tiled_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                       const T* residual, T* y, DwGeometry g, ActivationFn act) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* sw = reinterpret_cast<T*>(smem);
  ThreadChannels<V> tc;
  if (!thread_channels<T, V>(w, bias, sw, g, tc)) return;
  const int64_t c = tc.c;
  const int width = tc.width, lane_off = tc.lane_off;
  const float(&b)[V] = tc.bias;
  constexpr int kCols = (kTile - 1) * STRIDE + KS;  // input columns one tile row reads
  const int64_t tiles = g.n * g.oh * g.tiles_w;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < tiles;
       t += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t tw = t % g.tiles_w;
    const int64_t oh = (t / g.tiles_w) % g.oh;
    const int64_t n = t / (g.tiles_w * g.oh);
    const int64_t ow0 = tw * kTile;
    float acc[kTile][V];
#pragma unroll
    for (int p = 0; p < kTile; ++p) {
#pragma unroll
      for (int e = 0; e < V; ++e) acc[p][e] = 0.0f;
    }
    const int64_t iw0 = ow0 * STRIDE - g.pad_w;
#pragma unroll 1
    for (int r = 0; r < KS; ++r) {
      const int64_t ih = oh * STRIDE - g.pad_h + r;
      if (ih < 0 || ih >= g.h) continue;
      // The row's columns first, all loads in flight together: a column outside the image
      // reads column 0 and is zeroed after (a branch around each load kept them one at a time,
      // 2.5x slower than cuDNN on ConvNeXt's 7x7, 2026-12-06).
      const T* xrow = x + ((n * g.h + ih) * g.w) * g.c + c;
      Vec<T, V> cols[kCols];
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int64_t iw = iw0 + j;
        const bool inside = iw >= 0 && iw < g.w;
        cols[j] = *reinterpret_cast<const Vec<T, V>*>(xrow + (inside ? iw : 0) * g.c);
        if (!inside) {
#pragma unroll
          for (int e = 0; e < V; ++e) cols[j].v[e] = Num<T>::store(0.0f);
        }
      }
      float wr[KS][V];
#pragma unroll
      for (int s = 0; s < KS; ++s) load_vec<T, V>(sw + (r * KS + s) * width + lane_off, wr[s]);
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        float xv[V];
#pragma unroll
        for (int e = 0; e < V; ++e) xv[e] = Num<T>::load(cols[j].v[e]);
#pragma unroll
        for (int p = 0; p < kTile; ++p) {
          const int s = j - p * STRIDE;  // the tap of output p that reads column j
          if (s >= 0 && s < KS) {
#pragma unroll
            for (int e = 0; e < V; ++e) acc[p][e] = fmaf(xv[e], wr[s][e], acc[p][e]);
          }
        }
      }
    }
#pragma unroll
    for (int p = 0; p < kTile; ++p) {
      const int64_t ow = ow0 + p;
      if (ow >= g.ow) break;
      const int64_t at = ((n * g.oh + oh) * g.ow + ow) * g.c + c;
      store_out<T, V>(y + at, residual + (g.residual ? at : 0), acc[p], b, g, act);
    }
  }
}

/// Every other depthwise shape: any R x S, stride, dilation and padding, one pixel per thread.
template <typename T, int V>
__global__ void __launch_bounds__(kBlockThreads)
depthwise_generic_kernel(const T* __restrict__ x, const T* __restrict__ w,
                         const T* __restrict__ bias, const T* residual, T* y, DwGeometry g,
                         ActivationFn act) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* sw = reinterpret_cast<T*>(smem);
  ThreadChannels<V> tc;
  if (!thread_channels<T, V>(w, bias, sw, g, tc)) return;
  const int64_t c = tc.c;
  const int width = tc.width, lane_off = tc.lane_off;
  const float(&b)[V] = tc.bias;
  const int64_t pixels = g.n * g.oh * g.ow;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < pixels;
       t += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t ow = t % g.ow;
    const int64_t oh = (t / g.ow) % g.oh;
    const int64_t n = t / (g.ow * g.oh);
    float acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = 0.0f;
    for (int r = 0; r < g.r; ++r) {
      const int64_t ih = oh * g.stride_h - g.pad_h + static_cast<int64_t>(r) * g.dil_h;
      if (ih < 0 || ih >= g.h) continue;
      for (int s = 0; s < g.s; ++s) {
        const int64_t iw = ow * g.stride_w - g.pad_w + static_cast<int64_t>(s) * g.dil_w;
        if (iw < 0 || iw >= g.w) continue;
        float xv[V], wv[V];
        load_vec<T, V>(x + ((n * g.h + ih) * g.w + iw) * g.c + c, xv);
        load_vec<T, V>(sw + (r * g.s + s) * width + lane_off, wv);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] = fmaf(xv[e], wv[e], acc[e]);
      }
    }
    const int64_t at = t * g.c + c;
    store_out<T, V>(y + at, residual + (g.residual ? at : 0), acc, b, g, act);
  }
}

/// The widest channel vector (4 elements, then 2, then 1) that divides C and keeps every
/// access of x, y and the residual aligned. Four, not a 16-byte eight for 16-bit types: the
/// 7x7 tiled kernel holds kTile * V accumulators and 7 * V taps in registers, and at V = 8 it
/// took 144 registers, one 256-thread block per SM (too few loads in flight for a memory-bound
/// kernel).
template <typename T>
int vector_width(const DwGeometry& g, const void* x, const void* y, const void* residual) {
  for (int v : {4, 2, 1}) {
    const size_t bytes = sizeof(T) * v;
    if (g.c % v == 0 && aligned(x, bytes) && aligned(y, bytes) &&
        (residual == nullptr || aligned(residual, bytes))) {
      return v;
    }
  }
  return 1;
}

/// Channel vectors per block: all of C's up to 32 (a warp), fewer when the staged taps would
/// not fit in shared memory; 0 when even one vector's do not.
int block_vectors(int64_t vectors, int v, int taps, size_t elem) {
  int bx = static_cast<int>(std::min<int64_t>(vectors, 32));
  while (bx > 0 && static_cast<size_t>(taps) * bx * v * elem > kMaxSharedBytes) bx /= 2;
  return bx;
}

template <typename T, int V, int KS, int STRIDE>
void launch_tiled(dim3 grid, dim3 block, size_t shared, cudaStream_t stream, const void* x,
                  const void* w, const void* bias, const void* residual, void* y,
                  const DwGeometry& g, const ActivationFn& act) {
  depthwise_tiled_kernel<T, V, KS, STRIDE><<<grid, block, shared, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
      static_cast<const T*>(residual), static_cast<T*>(y), g, act);
}

template <typename T, int V>
void launch_v(const DwGeometry& g, const void* x, const void* w, const void* bias,
              const void* residual, void* y, const ActivationFn& act, cudaStream_t stream) {
  const int taps = g.r * g.s;
  const int64_t vectors = g.c / V;
  const int bx = block_vectors(vectors, V, taps, sizeof(T));
  const int by = kBlockThreads / bx;
  const auto cblocks = static_cast<unsigned>((vectors + bx - 1) / bx);
  const size_t shared = static_cast<size_t>(taps) * bx * V * sizeof(T);
  const bool tiled = g.r == g.s && (g.r == 3 || g.r == 5 || g.r == 7) && g.stride_h == g.stride_w &&
                     (g.stride_h == 1 || g.stride_h == 2) && g.dil_h == 1 && g.dil_w == 1;
  const int64_t items = tiled ? g.n * g.oh * g.tiles_w : g.n * g.oh * g.ow;
  // Enough blocks for a few per SM over all channel blocks; each walks its share of the pixels
  // (the staged taps are then read once per block, not once per few pixels).
  const int64_t wanted = std::max<int64_t>(1, int64_t{sm_count()} * 16 / cblocks);
  const auto pblocks = static_cast<unsigned>(std::clamp<int64_t>((items + by - 1) / by, 1, wanted));
  const dim3 grid(pblocks, cblocks), block(bx, by);
  if (!tiled) {
    depthwise_generic_kernel<T, V><<<grid, block, shared, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
        static_cast<const T*>(residual), static_cast<T*>(y), g, act);
    return;
  }
  const int key = g.r * 10 + g.stride_h;
  switch (key) {
    case 31: launch_tiled<T, V, 3, 1>(grid, block, shared, stream, x, w, bias, residual, y, g, act); break;
    case 32: launch_tiled<T, V, 3, 2>(grid, block, shared, stream, x, w, bias, residual, y, g, act); break;
    case 51: launch_tiled<T, V, 5, 1>(grid, block, shared, stream, x, w, bias, residual, y, g, act); break;
    case 52: launch_tiled<T, V, 5, 2>(grid, block, shared, stream, x, w, bias, residual, y, g, act); break;
    case 71: launch_tiled<T, V, 7, 1>(grid, block, shared, stream, x, w, bias, residual, y, g, act); break;
    default: launch_tiled<T, V, 7, 2>(grid, block, shared, stream, x, w, bias, residual, y, g, act); break;
  }
}

template <typename T>
void launch_t(const DwGeometry& g, const void* x, const void* w, const void* bias,
              const void* residual, void* y, const ActivationFn& act, cudaStream_t stream) {
  const int v = vector_width<T>(g, x, y, residual);
  if (v == 4) {
    launch_v<T, 4>(g, x, w, bias, residual, y, act, stream);
  } else if (v == 2) {
    launch_v<T, 2>(g, x, w, bias, residual, y, act, stream);
  } else {
    launch_v<T, 1>(g, x, w, bias, residual, y, act, stream);
  }
}

}  // namespace

bool depthwise_conv_covers(const ConvolutionParams& p, const DeviceTensor& x,
                           const DeviceTensor& w, const DeviceTensor& y) {
  if (!p.channels_last || x.dims.size() != 4 || w.dims.size() != 4 || y.dims.size() != 4) {
    return false;
  }
  if (x.dtype != DataType::kF32 && x.dtype != DataType::kF16 && x.dtype != DataType::kBF16) {
    return false;
  }
  const int64_t c = x.dims[3];
  if (p.groups != c || w.dims[0] != c || w.dims[3] != 1 || y.dims[3] != c || c < 1) return false;
  if (x.numel() == 0 || y.numel() == 0 || x.numel() > INT64_MAX / 2) return false;
  // The staged taps of one channel vector must fit in shared memory; past ~1000 taps a
  // depthwise filter is not a shape this kernel is for.
  const int64_t taps = w.dims[1] * w.dims[2];
  if (taps > 1024 || p.stride.size() != 2 || p.dilation.size() != 2) return false;
  // Channel blocks are gridDim.y (at most 65535), counted for the narrowest vector (V = 1).
  const int bx = block_vectors(c, 1, static_cast<int>(taps), dtype_size(x.dtype));
  return bx > 0 && (c + bx - 1) / bx <= 65535;
}

void launch_depthwise_conv(const ConvolutionParams& p, const DeviceTensor& x,
                           const DeviceTensor& w, DeviceTensor& y, const void* bias,
                           const void* residual, cudaStream_t stream) {
  DwGeometry g{};
  g.n = x.dims[0];
  g.h = x.dims[1];
  g.w = x.dims[2];
  g.c = x.dims[3];
  g.oh = y.dims[1];
  g.ow = y.dims[2];
  g.r = static_cast<int>(w.dims[1]);
  g.s = static_cast<int>(w.dims[2]);
  g.stride_h = static_cast<int>(p.stride[0]);
  g.stride_w = static_cast<int>(p.stride[1]);
  g.pad_h = static_cast<int>(p.padding_begin[0]);
  g.pad_w = static_cast<int>(p.padding_begin[1]);
  g.dil_h = static_cast<int>(p.dilation[0]);
  g.dil_w = static_cast<int>(p.dilation[1]);
  g.tiles_w = (g.ow + kTile - 1) / kTile;
  g.scale = static_cast<float>(p.epilogue.scale);
  g.bias = bias != nullptr;
  g.residual = residual != nullptr;
  g.act = p.epilogue.fused_activation;
  const ActivationFn act{p.epilogue.activation, static_cast<float>(p.epilogue.alpha),
                         static_cast<float>(p.epilogue.beta)};
  switch (x.dtype) {
    case DataType::kF32: launch_t<float>(g, x.data, w.data, bias, residual, y.data, act, stream); break;
    case DataType::kF16: launch_t<__half>(g, x.data, w.data, bias, residual, y.data, act, stream); break;
    case DataType::kBF16:
      launch_t<__nv_bfloat16>(g, x.data, w.data, bias, residual, y.data, act, stream);
      break;
    default:
      throw Error(std::string("Convolution (cuda): the depthwise kernel takes float types, not ") +
                  dtype_name(x.dtype));
  }
  check(cudaGetLastError(), "depthwise convolution kernel");
  g_launches.fetch_add(1, std::memory_order_relaxed);
}

int64_t depthwise_conv_launches() { return g_launches.load(std::memory_order_relaxed); }

}  // namespace ember::engine::cuda
