// CUDA kernels of the data-movement family: Shuffle, Concatenation, Slice, Gather, Scatter,
// Padding, Resize, Fill, Shape and Identity.
//
// Most of these layers only move elements, so kernels are templated on the element size (1, 2, 4
// or 8 bytes), not the dtype. Every kernel writes a contiguous output in a grid-stride loop and
// finds its source through a small by-value map (IndexMap: coalesced dims with per-operand
// strides, negative for backward slices). Semantics match src/engine/backends/cpu/
// data_movement.cpp; gather and scatter indices are validated on the device and an out-of-range
// index is an Error, as on the CPU (the flag is read back, which synchronizes the stream).
// Scatter reductions and linear/cubic resize compute on values (f16/bf16 in f32, integers in
// int64), like the CPU kernels.
#include <math_constants.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "backends/cuda/device_common.cuh"
#include "backends/semantics/padding.h"
#include "backends/semantics/resize.h"
#include "backends/slice_walk.h"
#include "ember/engine/half.h"

namespace ember::engine::cuda {

namespace {

// ---------------------------------------------------------------- kernels

/// dst[off_dst(i)] = src[off_src(i)] for each position i of the walk `m` (strides[0]: source,
/// strides[1]: destination, in elements).
template <typename S>
__global__ void strided_copy_kernel(const S* __restrict__ src, S* __restrict__ dst, int64_t n,
                                    IndexMap<2> m) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[2];
    m.offsets(i, off);
    dst[off[1]] = src[off[0]];
  }
}

/// Shuffle with a transpose on both sides of a reshape: output position i maps through
/// `to_reshaped` to its row-major position L in the reshaped tensor, which is also its position
/// in the first-transposed input, mapped through `to_src` to the input offset.
template <typename S>
__global__ void shuffle2_kernel(const S* __restrict__ src, S* __restrict__ dst, int64_t n,
                                IndexMap<1> to_reshaped, IndexMap<1> to_src) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t l[1], off[1];
    to_reshaped.offsets(i, l);
    to_src.offsets(l[0], off);
    dst[i] = src[off[0]];
  }
}

/// Per-dim geometry of a padding: out dim d reads input coordinate (o - pre[d]) folded by mode.
struct PadGeometry {
  int rank = 0;
  int64_t out_dims[kMaxRank];
  int64_t in_dims[kMaxRank];
  int64_t in_strides[kMaxRank];
  int64_t pre[kMaxRank];
};

/// Padded copy into a contiguous output (constant/reflect/replicate/circular; the host checked
/// that every folded coordinate lands inside the input).
template <typename S>
__global__ void pad_kernel(const S* __restrict__ src, S* __restrict__ dst, int64_t n,
                           PadGeometry g, PaddingMode mode, S fill) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t rem = i, off = 0;
    bool outside = false;
    for (int d = g.rank - 1; d >= 0; --d) {
      const int64_t o = rem % g.out_dims[d];
      rem /= g.out_dims[d];
      const int64_t len = g.in_dims[d];
      int64_t x = o - g.pre[d];
      if (x < 0 || x >= len) {
        switch (mode) {
          case PaddingMode::kConstant: outside = true; break;
          case PaddingMode::kReflect: x = x < 0 ? -x : 2 * (len - 1) - x; break;
          case PaddingMode::kReplicate: x = x < 0 ? 0 : len - 1; break;
          case PaddingMode::kCircular: x = ((x % len) + len) % len; break;
        }
      }
      off += x * g.in_strides[d];
    }
    dst[i] = outside ? fill : src[off];
  }
}

/// A constant padding written in 16-byte words: each thread makes kPer = 16 / sizeof(S)
/// consecutive output elements into one word. It decodes the first element's coordinates once
/// and steps through the rest like an odometer, so each element costs a bounds test and a load
/// through the (permuted, viewed) input strides instead of a division per dim. An image padded
/// from 3 to 8 channels (pad_conv_channels) writes one pixel per word; rearranged into 2x2
/// blocks (its stride-2 stem's space-to-depth), one block row of 2 pixels x 4 channels. Index
/// type I is int32_t when both tensors have fewer than 2^31 elements: with int64_t the 64-bit
/// index arithmetic bounded the kernel (ResNet-50's b32 space-to-depth took 0.044 ms for 23 MB
/// on an H100, 2026-12-07).
template <typename S, typename I>
__global__ void pad_words_kernel(const S* __restrict__ src, uint4* __restrict__ dst,
                                 int64_t words, PadGeometry g, S fill) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(S));
  I out_dims[kMaxRank], in_dims[kMaxRank], in_strides[kMaxRank], pre[kMaxRank];
#pragma unroll
  for (int d = 0; d < kMaxRank; ++d) {
    if (d >= g.rank) continue;
    out_dims[d] = static_cast<I>(g.out_dims[d]);
    in_dims[d] = static_cast<I>(g.in_dims[d]);
    in_strides[d] = static_cast<I>(g.in_strides[d]);
    pre[d] = static_cast<I>(g.pre[d]);
  }
  for (int64_t w = global_thread(); w < words; w += grid_threads()) {
    I c[kMaxRank];
    I rem = static_cast<I>(w * kPer);
#pragma unroll
    for (int d = kMaxRank - 1; d >= 0; --d) {
      if (d >= g.rank) continue;
      c[d] = rem % out_dims[d];
      rem /= out_dims[d];
    }
    union {
      uint4 word;
      S e[kPer];
    } u;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      bool inside = true;
      I off = 0;
#pragma unroll
      for (int d = 0; d < kMaxRank; ++d) {
        if (d >= g.rank) continue;
        const I x = c[d] - pre[d];
        inside = inside && x >= 0 && x < in_dims[d];
        off += x * in_strides[d];
      }
      u.e[k] = inside ? src[off] : fill;
#pragma unroll
      for (int d = kMaxRank - 1; d >= 0; --d) {  // the next element's coordinates
        if (d >= g.rank) continue;
        if (++c[d] < out_dims[d]) break;
        c[d] = 0;
      }
    }
    dst[w] = u.word;
  }
}

/// pad_conv_channels' 2x2-block view of an NCHW 16-bit image (space-to-depth): output
/// [N, Hb, Wb, 2, 2, CB] from the image [N, C, H, W] viewed as [N, C, H/2, 2, W/2, 2] and
/// permuted to [N, H/2, W/2, 2, 2, C], with whole blocks of padding before and after (pre_h,
/// pre_w) and channels C..CB filled. One thread per block pixel: for each of its two rows and
/// each channel it loads the row's two pixels as one 32-bit word (neighbouring threads read
/// neighbouring words of a row), and stores the block as 16-byte words (CB = 4: one per row;
/// CB = 2: one for both). The generic word kernel took 0.028 ms for ResNet-50's b32 stem on an
/// H100, a quarter of the bandwidth, with 2-byte loads through six-dim index arithmetic.
template <int CB>
__global__ void space_to_depth_kernel(const uint32_t* __restrict__ src, uint4* __restrict__ dst,
                                      int pixels, int hb, int wb, int c, int h, int w, int pre_h,
                                      int pre_w, uint16_t fill) {
  const uint32_t fill2 = fill | (static_cast<uint32_t>(fill) << 16);
  const int half_w = w / 2;
  for (int pix = static_cast<int>(global_thread()); pix < pixels;
       pix += static_cast<int>(grid_threads())) {
    const int bx = pix % wb;
    const int t = pix / wb;
    const int by = t % hb;
    const int n = t / hb;
    const int y0 = (by - pre_h) * 2, x0 = (bx - pre_w) * 2;  // the block's top-left pixel
    const bool inside = y0 >= 0 && y0 < h && x0 >= 0 && x0 < w;  // whole blocks: all or none
    uint32_t v[2][CB];  // [row][channel]: (x0, x0 + 1) as low and high halves
#pragma unroll
    for (int dy = 0; dy < 2; ++dy) {
#pragma unroll
      for (int ch = 0; ch < CB; ++ch) {
        v[dy][ch] = inside && ch < c
                        ? src[(static_cast<int64_t>(n * c + ch) * h + y0 + dy) * half_w + x0 / 2]
                        : fill2;
      }
    }
    // Output order within a block: [row][column][channel].
    const auto pair = [](uint32_t a, uint32_t b, bool high) {
      return high ? (a >> 16) | (b & 0xffff0000u) : (a & 0xffffu) | (b << 16);
    };
    if constexpr (CB == 4) {
#pragma unroll
      for (int dy = 0; dy < 2; ++dy) {
        dst[static_cast<int64_t>(pix) * 2 + dy] =
            make_uint4(pair(v[dy][0], v[dy][1], false), pair(v[dy][2], v[dy][3], false),
                       pair(v[dy][0], v[dy][1], true), pair(v[dy][2], v[dy][3], true));
      }
    } else {
      dst[pix] = make_uint4(pair(v[0][0], v[0][1], false), pair(v[0][0], v[0][1], true),
                            pair(v[1][0], v[1][1], false), pair(v[1][0], v[1][1], true));
    }
  }
}

template <typename S>
__global__ void fill_kernel(S* __restrict__ dst, int64_t n, S value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dst[i] = value;
}

/// Saturating double -> int64 (NaN -> 0), the CPU reference's saturating_int64.
__host__ __device__ inline int64_t saturating_int64(double v) {
  if (v != v) return 0;
  if (v >= 9.2233720368547758e18) return INT64_MAX;
  if (v < -9.2233720368547758e18) return INT64_MIN;
  return static_cast<int64_t>(v);
}

/// Stores integer v into element i of an integer/bool buffer (C-cast narrowing).
__device__ inline void store_int(DataType t, void* p, int64_t i, int64_t v) {
  switch (t) {
    case DataType::kI8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); return;
    case DataType::kU8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); return;
    case DataType::kI32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); return;
    case DataType::kI64: static_cast<int64_t*>(p)[i] = v; return;
    case DataType::kBool: static_cast<uint8_t*>(p)[i] = v != 0; return;
    default: return;  // floats take the float branch of arange_kernel
  }
}

/// Rank-1 arange: element i = start + i * delta, in wrapping int64 for whole integer ranges,
/// else in double rounded to the dtype (floats) or saturated (integers), as the CPU reference.
__global__ void arange_kernel(void* __restrict__ dst, int64_t n, DataType t, double start,
                              double delta, bool whole_int) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    if (whole_int) {
      const auto s = static_cast<uint64_t>(static_cast<int64_t>(start));
      const auto d = static_cast<uint64_t>(static_cast<int64_t>(delta));
      store_int(t, dst, i, static_cast<int64_t>(s + static_cast<uint64_t>(i) * d));
      continue;
    }
    const double v = start + static_cast<double>(i) * delta;
    switch (t) {
      case DataType::kF32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
      case DataType::kF16:
        static_cast<__half*>(dst)[i] = __float2half_rn(static_cast<float>(v));
        break;
      case DataType::kBF16:
        static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(static_cast<float>(v));
        break;
      default: store_int(t, dst, i, saturating_int64(v)); break;
    }
  }
}

/// The input's dims, passed by value (no host buffer has to outlive the launch).
struct ShapeValues {
  int64_t v[kMaxRank];
};

__global__ void shape_kernel(int64_t* __restrict__ dst, int rank, ShapeValues dims) {
  // One thread, compile-time indices: a run-time index would copy `dims` to local memory.
  if (threadIdx.x != 0) return;
#pragma unroll
  for (int k = 0; k < kMaxRank; ++k) {
    if (k < rank) dst[k] = dims.v[k];
  }
}

/// Index i read as int64 from an i32 or i64 buffer.
__device__ __forceinline__ int64_t load_index(const void* idx, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(idx)[i]
              : static_cast<int64_t>(static_cast<const int32_t*>(idx)[i]);
}

/// Bounds of the indices: element i indexes a dim of size bound[i % count].
struct IndexBounds {
  int count = 1;
  int64_t bound[kMaxRank];
};

/// Sets *flag when an index lies outside [-bound, bound) (the CPU reference's load_indices).
__global__ void validate_indices_kernel(const void* __restrict__ idx, bool is64, int64_t n,
                                        IndexBounds b, int* flag) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t v = load_index(idx, is64, i);
    const int r = static_cast<int>(i % b.count);
    int64_t bound = b.bound[0];
#pragma unroll
    for (int k = 1; k < kMaxRank; ++k) bound = k == r ? b.bound[k] : bound;  // no local copy
    if (v < -bound || v >= bound) *flag = 1;
  }
}

/// The validated index wrapped into [0, bound) (the clamp only guards against a bug).
__device__ __forceinline__ int64_t wrap_index(int64_t v, int64_t bound) {
  const int64_t w = v < 0 ? v + bound : v;
  return w < 0 ? 0 : (w >= bound ? bound - 1 : w);
}

/// numpy.take: out[o, j, e] = data[o, idx[j], e] with out flattened as [outer, nidx, inner].
template <typename S>
__global__ void gather_default_kernel(const S* __restrict__ src, const void* __restrict__ idx,
                                      bool is64, S* __restrict__ dst, int64_t n, int64_t nidx,
                                      int64_t inner, int64_t axis_dim) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t e = i % inner;
    const int64_t t = i / inner;
    const int64_t j = t % nidx;
    const int64_t o = t / nidx;
    const int64_t w = wrap_index(load_index(idx, is64, j), axis_dim);
    dst[i] = src[(o * axis_dim + w) * inner + e];
  }
}

/// torch.gather geometry: out (and indices) dims, data strides, the axis.
struct ElementGeometry {
  int rank = 0;
  int axis = 0;
  int64_t dims[kMaxRank];
  int64_t data_strides[kMaxRank];
  int64_t axis_dim = 0;
};

/// The data offset of position i of the indices (row-major over g.dims) with its axis
/// coordinate replaced by the (validated) index stored there: torch.gather's source and
/// torch.scatter's destination.
__device__ __forceinline__ int64_t element_offset(const ElementGeometry& g, const void* idx,
                                                  bool is64, int64_t i) {
  int64_t rem = i, off = 0;
  for (int d = g.rank - 1; d >= 0; --d) {
    const int64_t c = rem % g.dims[d];
    rem /= g.dims[d];
    if (d != g.axis) off += c * g.data_strides[d];
  }
  return off + wrap_index(load_index(idx, is64, i), g.axis_dim) * g.data_strides[g.axis];
}

/// torch.gather: out[c] = data[c with c[axis] = idx[c]]; out and indices share dims.
template <typename S>
__global__ void gather_element_kernel(const S* __restrict__ src, const void* __restrict__ idx,
                                      bool is64, S* __restrict__ dst, int64_t n,
                                      ElementGeometry g) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    dst[i] = src[element_offset(g, idx, is64, i)];
  }
}

/// gather_nd geometry: k index components per tuple, their dims' sizes and strides.
struct NdGeometry {
  int k = 0;
  int64_t bounds[kMaxRank];
  int64_t strides[kMaxRank];
  int64_t batch_stride = 0;  // data elements per batch entry
  int64_t tuples = 1;        // index tuples per batch entry
  int64_t block = 1;         // data elements each tuple selects
};

/// gather_nd: out[tuple, e] = data[batch(tuple), idx[tuple, 0..k), e].
template <typename S>
__global__ void gather_nd_kernel(const S* __restrict__ src, const void* __restrict__ idx,
                                 bool is64, S* __restrict__ dst, int64_t n, NdGeometry g) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t e = i % g.block;
    const int64_t tuple = i / g.block;
    int64_t off = (tuple / g.tuples) * g.batch_stride + e;
    for (int t = 0; t < g.k; ++t) {
      off += wrap_index(load_index(idx, is64, tuple * g.k + t), g.bounds[t]) * g.strides[t];
    }
    dst[i] = src[off];
  }
}

// ---------------------------------------------------------------- scatter kernels

/// Duplicate destinations with reduction none: the update with the highest flat position in the
/// indices wins, as on the CPU (which applies updates in row-major order). Pass one records that
/// position per destination element (atomicMax on `winner`, initialised to -1); pass two lets
/// only the winner write, so the result is deterministic.
__global__ void scatter_winner_kernel(const void* __restrict__ idx, bool is64,
                                      long long* __restrict__ winner, int64_t n,
                                      ElementGeometry g) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    atomicMax(winner + element_offset(g, idx, is64, i), static_cast<long long>(i));
  }
}

template <typename S>
__global__ void scatter_assign_kernel(const S* __restrict__ updates, const void* __restrict__ idx,
                                      bool is64, const long long* __restrict__ winner,
                                      S* __restrict__ dst, int64_t n, ElementGeometry g) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t off = element_offset(g, idx, is64, i);
    if (winner[off] == static_cast<long long>(i)) dst[off] = updates[i];
  }
}

/// The CPU's reduce_float: NaN propagates through max and min (torch's scatter_reduce).
__device__ __forceinline__ float scatter_combine(ScatterReduction r, float acc, float v) {
  switch (r) {
    case ScatterReduction::kNone: return v;
    case ScatterReduction::kSum: return __fadd_rn(acc, v);
    case ScatterReduction::kProd: return __fmul_rn(acc, v);
    case ScatterReduction::kMax: return acc != acc || v != v ? CUDART_NAN_F : fmaxf(acc, v);
    case ScatterReduction::kMin: return acc != acc || v != v ? CUDART_NAN_F : fminf(acc, v);
  }
  return v;
}

/// The CPU's reduce_int: sums and products wrap (computed unsigned).
__device__ __forceinline__ int64_t scatter_combine(ScatterReduction r, int64_t acc, int64_t v) {
  switch (r) {
    case ScatterReduction::kNone: return v;
    case ScatterReduction::kSum:
      return static_cast<int64_t>(static_cast<uint64_t>(acc) + static_cast<uint64_t>(v));
    case ScatterReduction::kProd:
      return static_cast<int64_t>(static_cast<uint64_t>(acc) * static_cast<uint64_t>(v));
    case ScatterReduction::kMax: return acc > v ? acc : v;
    case ScatterReduction::kMin: return acc < v ? acc : v;
  }
  return v;
}

/// *p = combine(*p, v) atomically: the hardware's add where there is one, a compare-and-swap
/// loop on the whole 32- or 64-bit word otherwise. The loop stops once the stored bits are the
/// combined bits, so a NaN that is already there ends it.
__device__ __forceinline__ void atomic_combine(ScatterReduction r, float* p, float v) {
  if (r == ScatterReduction::kSum) {
    atomicAdd(p, v);
    return;
  }
  auto* word = reinterpret_cast<unsigned int*>(p);
  unsigned int old = *word, assumed;
  do {
    assumed = old;
    const unsigned int next = __float_as_uint(scatter_combine(r, __uint_as_float(assumed), v));
    if (next == assumed) return;
    old = atomicCAS(word, assumed, next);
  } while (old != assumed);
}
__device__ __forceinline__ void atomic_combine(ScatterReduction r, int64_t* p, int64_t v) {
  auto* word = reinterpret_cast<unsigned long long*>(p);
  switch (r) {
    case ScatterReduction::kSum: atomicAdd(word, static_cast<unsigned long long>(v)); return;
    case ScatterReduction::kMax: atomicMax(reinterpret_cast<long long*>(p), v); return;
    case ScatterReduction::kMin: atomicMin(reinterpret_cast<long long*>(p), v); return;
    case ScatterReduction::kNone:
    case ScatterReduction::kProd: break;
  }
  unsigned long long old = *word, assumed;
  do {
    assumed = old;
    const auto next = static_cast<unsigned long long>(
        scatter_combine(r, static_cast<int64_t>(assumed), v));
    if (next == assumed) return;
    old = atomicCAS(word, assumed, next);
  } while (old != assumed);
}

/// acc[dst(i)] = combine(acc[dst(i)], updates[i]) on the accumulator buffer (f32 for float types,
/// int64 for integers: the output itself for f32/i64, a scratch copy otherwise).
template <typename T>
__global__ void scatter_reduce_kernel(const T* __restrict__ updates, const void* __restrict__ idx,
                                      bool is64, typename Num<T>::C* __restrict__ acc, int64_t n,
                                      ElementGeometry g, ScatterReduction r) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    atomic_combine(r, acc + element_offset(g, idx, is64, i), Num<T>::load(updates[i]));
  }
}

/// dst[i] = Convert(src[i]) between a storage type and its compute type (both directions).
template <typename T>
__global__ void to_compute_kernel(const T* __restrict__ src, typename Num<T>::C* __restrict__ dst,
                                  int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dst[i] = Num<T>::load(src[i]);
}
template <typename T>
__global__ void from_compute_kernel(const typename Num<T>::C* __restrict__ src, T* __restrict__ dst,
                                    int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dst[i] = Num<T>::store(src[i]);
}

// ---------------------------------------------------------------- resize kernels

/// Per-dim geometry of a resize; `ratio` is the CPU's size_ratio and `scale` its
/// coordinate_scale, both computed on the host with the CPU's float arithmetic.
struct ResizeGeometry {
  int rank = 0;
  int64_t out_dims[kMaxRank];
  int64_t in_dims[kMaxRank];
  int64_t in_strides[kMaxRank];
  float ratio[kMaxRank];
  float scale[kMaxRank];
  // Dims interpolated (linear/cubic), outermost first: the CPU's passes, innermost first.
  int active = 0;
  int active_dims[kMaxRank];
  ResizeMode mode = ResizeMode::kNearest;
  ResizeCoordinate coordinate = ResizeCoordinate::kAsymmetric;
  ResizeRounding rounding = ResizeRounding::kFloor;
  float cubic_coeff = -0.75f;
};

// The coordinate arithmetic is semantics/resize.h's, the CPU's own (explicitly rounded on the
// device), so source indices and weights match the CPU bit for bit.

/// The CPU's nearest_map entry for output index j of dim d (torch's own shortcuts included).
__device__ __forceinline__ int64_t resize_nearest(const ResizeGeometry& g, int d, int64_t j) {
  return semantics::resize_nearest_index(g.coordinate, g.rounding, g.ratio[d], g.scale[d],
                                         g.in_dims[d], g.out_dims[d], j);
}

/// Nearest resize of any dtype: out[c] = in[map_0(c_0), map_1(c_1), ...].
template <typename S>
__global__ void resize_nearest_kernel(const S* __restrict__ src, S* __restrict__ dst, int64_t n,
                                      ResizeGeometry g) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t rem = i, off = 0;
    for (int d = g.rank - 1; d >= 0; --d) {
      const int64_t o = rem % g.out_dims[d];
      rem /= g.out_dims[d];
      off += resize_nearest(g, d, o) * g.in_strides[d];
    }
    dst[i] = src[off];
  }
}

/// The taps (source indices, weights) of output index j along dim d: 2 for linear, 4 for cubic
/// (the CPU's linear_taps / cubic_taps).
__device__ __forceinline__ int resize_taps(const ResizeGeometry& g, int d, int64_t j,
                                           int64_t (&index)[4], float (&weight)[4]) {
  const int64_t in = g.in_dims[d];
  if (g.mode == ResizeMode::kLinear) {
    int64_t i0;
    float l1;
    semantics::resize_floor_fraction(
        semantics::resize_source_coordinate(g.coordinate, g.scale[d], j, true), in, i0, l1);
    i0 = i0 > 0 ? i0 : 0;
    index[0] = i0;
    index[1] = i0 + (i0 < in - 1 ? 1 : 0);
    weight[0] = __fsub_rn(1.0f, l1);
    weight[1] = l1;
    return 2;
  }
  int64_t i;
  float t;
  semantics::resize_floor_fraction(
      semantics::resize_source_coordinate(g.coordinate, g.scale[d], j, false), in, i, t);
  semantics::resize_cubic_weights(t, g.cubic_coeff, weight);
  for (int k = 0; k < 4; ++k) {
    const int64_t s = i - 1 + k;
    index[k] = s < 0 ? 0 : (s > in - 1 ? in - 1 : s);
  }
  return 4;
}

/// Linear or cubic resize, one thread per output element. The CPU resamples one dim at a time,
/// innermost first, rounding each pass to f32; here each output walks the taps of its
/// interpolated dims as nested sums (innermost dim innermost), which performs the same f32
/// operations in the same order.
template <typename T>
__global__ void resize_interpolate_kernel(const T* __restrict__ src, T* __restrict__ dst,
                                          int64_t n, ResizeGeometry g) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t coord[kMaxRank];
    int64_t rem = i;
    for (int d = g.rank - 1; d >= 0; --d) {
      coord[d] = rem % g.out_dims[d];
      rem /= g.out_dims[d];
    }
    // The fixed part of the source offset: dims that are not interpolated keep their coordinate
    // (their sizes are equal).
    int64_t base = 0;
    for (int d = 0; d < g.rank; ++d) base += coord[d] * g.in_strides[d];
    int64_t index[kMaxRank][4];
    float weight[kMaxRank][4];
    int taps[kMaxRank];
    for (int l = 0; l < g.active; ++l) {
      const int d = g.active_dims[l];
      base -= coord[d] * g.in_strides[d];
      taps[l] = resize_taps(g, d, coord[d], index[l], weight[l]);
    }
    // Odometer over the taps, the last active dim fastest; acc[l] sums level l's taps.
    float acc[kMaxRank];
    int t[kMaxRank];
    for (int l = 0; l < g.active; ++l) t[l] = 0;
    float result = 0.0f;
    while (true) {
      int64_t off = base;
      for (int l = 0; l < g.active; ++l) {
        off += index[l][t[l]] * g.in_strides[g.active_dims[l]];
      }
      float v = Num<T>::load(src[off]);
      // Fold v into its level, and every level this tap completes into the one above.
      int l = g.active - 1;
      for (; l >= 0; --l) {
        const float wv = __fmul_rn(weight[l][t[l]], v);
        acc[l] = t[l] == 0 ? wv : __fadd_rn(acc[l], wv);
        if (t[l] + 1 < taps[l]) break;
        v = acc[l];
      }
      if (l < 0) {
        result = v;
        break;
      }
      ++t[l];
      for (int k = l + 1; k < g.active; ++k) t[k] = 0;
    }
    dst[i] = Num<T>::store(result);
  }
}

/// Linear resize of two adjacent dims (bilinear: NCHW's H and W with `inner` = 1, NHWC's with
/// `inner` = C), one thread per output element. The generic kernel above indexes its tap arrays
/// at run time, which puts them in local memory: DeepLabV3's two upsamplings to 520x520 took
/// 2.0 ms of 8.5 at b8 on an H100 (2026-12-06), about 3% of the bandwidth. Same taps and the
/// same f32 operations in the same order as that kernel (and the CPU): the inner resized dim's
/// two taps summed per row, then the rows weighted and summed.
template <typename T>
__global__ void resize_bilinear_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t n,
                                       int64_t inner, ResizeGeometry g) {
  const int dh = g.active_dims[0], dw = g.active_dims[1];
  const int64_t ih = g.in_dims[dh], iw = g.in_dims[dw];
  const int64_t oh = g.out_dims[dh], ow = g.out_dims[dw];
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t c = 0, rest = i;
    if (inner != 1) {
      c = i % inner;
      rest = i / inner;
    }
    const int64_t x = rest % ow;
    rest /= ow;
    const int64_t y = rest % oh;
    const T* plane = src + (rest / oh) * ih * iw * inner + c;
    int64_t ry[4], rx[4];
    float wy[4], wx[4];
    resize_taps(g, dh, y, ry, wy);
    resize_taps(g, dw, x, rx, wx);
    float rows[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const T* row = plane + ry[k] * iw * inner;
      rows[k] = __fadd_rn(__fmul_rn(wx[0], Num<T>::load(row[rx[0] * inner])),
                          __fmul_rn(wx[1], Num<T>::load(row[rx[1] * inner])));
    }
    dst[i] = Num<T>::store(__fadd_rn(__fmul_rn(wy[0], rows[0]), __fmul_rn(wy[1], rows[1])));
  }
}

// ---------------------------------------------------------------- host helpers

/// Calls fn(storage zero) for an element size of 1, 2, 4 or 8 bytes.
template <typename Fn>
void dispatch_elem_size(size_t elem, Fn&& fn) {
  switch (elem) {
    case 1: return fn(uint8_t{});
    case 2: return fn(uint16_t{});
    case 4: return fn(uint32_t{});
    case 8: return fn(uint64_t{});
    default: throw Error("unsupported element size " + std::to_string(elem));
  }
}

void copy_device(void* dst, const void* src, size_t bytes, const CudaArgs& a, const char* what) {
  if (dst == src || bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, a.stream()), what);
}

/// The strided copy in 16-, 8- or 4-byte units when the walk's innermost dim is contiguous on
/// both sides (slices along the last dim, transposes that keep it): each thread then moves
/// several elements per offset computation. Returns false when no unit fits (the caller copies
/// element by element).
bool strided_copy_wide(size_t elem, const IndexMap<2>& m, const void* src, void* dst,
                       const CudaArgs& a) {
  const int last = m.rank - 1;
  if (m.rank == 0 || m.strides[0][last] != 1 || m.strides[1][last] != 1) return false;
  for (const int64_t unit : {int64_t{16}, int64_t{8}, int64_t{4}}) {
    const auto e = static_cast<int64_t>(elem);
    if (unit <= e || (m.dims[last] * e) % unit != 0 || !aligned(src, unit) || !aligned(dst, unit)) {
      continue;
    }
    bool fits = true;
    for (int d = 0; d < last && fits; ++d) {
      fits = (m.strides[0][d] * e) % unit == 0 && (m.strides[1][d] * e) % unit == 0;
    }
    if (!fits) continue;
    const int64_t k = unit / e;  // elements per unit
    IndexMap<2> w = m;
    w.dims[last] = m.dims[last] / k;
    for (int d = 0; d < last; ++d) {
      w.strides[0][d] = m.strides[0][d] / k;
      w.strides[1][d] = m.strides[1][d] / k;
    }
    int64_t units = 1;
    for (int d = 0; d < w.rank; ++d) units *= w.dims[d];
    auto go = [&](auto zero) {
      using U = decltype(zero);
      strided_copy_kernel<U><<<grid_for(units), kThreads, 0, a.stream()>>>(
          static_cast<const U*>(src), static_cast<U*>(dst), units, w);
    };
    if (unit == 16) go(uint4{});
    else if (unit == 8) go(uint2{});
    else go(uint32_t{});
    check(cudaGetLastError(), "strided_copy_kernel (wide)");
    return true;
  }
  return false;
}

/// Launches a strided copy of a `dims` block from src (element strides ss, negative allowed)
/// to dst (strides ds). Returns false (nothing launched) when the walk needs > kMaxRank dims.
bool strided_copy(size_t elem, const std::vector<int64_t>& dims, const std::vector<int64_t>& ss,
                  const std::vector<int64_t>& ds, const void* src, void* dst, const CudaArgs& a) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  IndexMap<2> m;
  if (!make_index_map<2>(dims, {ss, ds}, m)) return false;
  if (n == 0) return true;
  if (strided_copy_wide(elem, m, src, dst, a)) return true;
  dispatch_elem_size(elem, [&](auto zero) {
    using S = decltype(zero);
    strided_copy_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
        static_cast<const S*>(src), static_cast<S*>(dst), n, m);
  });
  check(cudaGetLastError(), "strided_copy_kernel");
  return true;
}

bool is_identity(const std::vector<int64_t>& perm) {
  for (size_t i = 0; i < perm.size(); ++i) {
    if (perm[i] != static_cast<int64_t>(i)) return false;
  }
  return true;
}

/// The bits of one element of dtype t holding v (floats round; integers saturate then narrow),
/// the CPU reference's scalar_bytes, in the low bytes of a uint64.
uint64_t scalar_bits(DataType t, double v) {
  uint64_t bits = 0;
  auto put = [&bits](const auto x) { std::memcpy(&bits, &x, sizeof(x)); };
  const int64_t iv = saturating_int64(v);
  switch (t) {
    case DataType::kF32: put(static_cast<float>(v)); break;
    case DataType::kF16: put(f32_to_f16(static_cast<float>(v))); break;
    case DataType::kBF16: put(f32_to_bf16(static_cast<float>(v))); break;
    case DataType::kI8: put(static_cast<int8_t>(iv)); break;
    case DataType::kU8: put(static_cast<uint8_t>(iv)); break;
    case DataType::kI32: put(static_cast<int32_t>(iv)); break;
    case DataType::kI64: put(iv); break;
    case DataType::kBool: put(static_cast<uint8_t>(iv != 0)); break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  return bits;
}

template <typename S>
S low_bits(uint64_t bits) {
  S s;
  std::memcpy(&s, &bits, sizeof(S));
  return s;
}

int64_t product(const std::vector<int64_t>& dims, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t i = begin; i < end; ++i) n *= dims[i];
  return n;
}

/// The plan's host copy of the layer's indices (input 1) when a Constant layer makes them, with
/// the device tensor's element count and dtype; nullptr otherwise.
const Weights* constant_indices(const DeviceTensor& indices, const CudaArgs& a) {
  const Tensor* t = a.layer != nullptr ? a.layer->input(1) : nullptr;
  const Layer* p = t != nullptr ? t->producer() : nullptr;
  if (p == nullptr || p->kind() != LayerKind::kConstant) return nullptr;
  const Weights& w = p->params_as<ConstantParams>().weights;
  return w.data() != nullptr && w.numel() == indices.numel() && w.dtype() == indices.dtype
             ? &w
             : nullptr;
}

/// Validates gather/scatter indices (constant ones on the host, others on the device); throws
/// Error when one is out of range (not in CUDA graph replays, which run no host code and skip
/// the device check, see read_error_flag).
void validate_indices(const DeviceTensor& indices, const IndexBounds& b, const CudaArgs& a,
                      const char* layer = "gather") {
  const int64_t n = indices.numel();
  if (n == 0) return;
  expect_device(indices.dtype == DataType::kI32 || indices.dtype == DataType::kI64, layer,
                std::string("indices dtype ") + dtype_name(indices.dtype) + ", expected i32 or i64");
  bool bad = false;
  if (const Weights* w = constant_indices(indices, a)) {
    // Constant indices (a roll's, RoPE's rotate_half, compose_row_moves' tables) are checked on
    // the host copy: no kernel and no flag read per call (48 a forward for Qwen2's RoPE).
    const bool is64 = w->dtype() == DataType::kI64;
    for (int64_t i = 0; i < n && !bad; ++i) {
      const int64_t v = is64 ? static_cast<const int64_t*>(w->data())[i]
                             : int64_t{static_cast<const int32_t*>(w->data())[i]};
      const int64_t bound = b.bound[i % b.count];
      bad = v < -bound || v >= bound;
    }
  } else {
    // A capture could not read the flag back (read_error_flag): the eager first call of the
    // shape checked, and replays run without the check. Capturing it anyway put a memset and a
    // kernel into every replay that nothing read: ~5 us of each GPT-2 call on an H100
    // (bench/kernel_profile.py --sequence, 2026-12-07).
    if (capturing(a.stream())) return;
    int* flag = error_flag(a);
    validate_indices_kernel<<<grid_for(n), kThreads, 0, a.stream()>>>(
        indices.data, indices.dtype == DataType::kI64, n, b, flag);
    check(cudaGetLastError(), "validate_indices_kernel");
    bad = read_error_flag(flag, a) != 0;
  }
  if (!bad) return;
  std::string sizes;
  for (int i = 0; i < b.count; ++i) sizes += (i ? ", " : "") + std::to_string(b.bound[i]);
  throw Error("index out of range: an index of the indices lies outside [-size, size) for the "
              "indexed data dim (size " + sizes + "); check the indices");
}

}  // namespace

// ---------------------------------------------------------------- Identity, Shape

void run(const IdentityParams&, const CudaArgs& a) {
  copy_device(a.out().data, a.in(0).data, a.out().nbytes(), a, "cudaMemcpyAsync (identity)");
}

void run(const ShapeParams&, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  const int rank = static_cast<int>(in.dims.size());
  if (rank == 0) return;
  if (rank > kMaxRank) return host_fallback(a);
  expect_device(a.out().dtype == DataType::kI64 && a.out().numel() == rank, "shape",
                "output is not an i64 vector of the input's rank");
  ShapeValues v{};
  for (int i = 0; i < rank; ++i) v.v[i] = in.dims[i];
  shape_kernel<<<1, 1, 0, a.stream()>>>(static_cast<int64_t*>(a.out().data), rank, v);
  check(cudaGetLastError(), "shape_kernel");
}

// ---------------------------------------------------------------- Shuffle

void run(const ShuffleParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  const size_t elem = dtype_size(in.dtype);
  const int64_t n = out.numel();
  expect_device(n == in.numel(), "shuffle", "input and output element counts differ");
  const bool first_identity = is_identity(p.first_transpose);
  const bool second_identity = is_identity(p.second_transpose);
  if (first_identity && second_identity) {  // a pure reshape: row-major order is unchanged
    copy_device(out.data, in.data, out.nbytes(), a, "cudaMemcpyAsync (reshape)");
    return;
  }
  if (n == 0) return;
  const std::vector<int64_t> in_strides = row_major_strides(in.dims);
  // The first-transposed input: dims T with the input strides permuted.
  std::vector<int64_t> t_dims = in.dims, t_strides = in_strides;
  if (!first_identity) {
    for (size_t i = 0; i < p.first_transpose.size(); ++i) {
      t_dims[i] = in.dims[p.first_transpose[i]];
      t_strides[i] = in_strides[p.first_transpose[i]];
    }
  }
  // The reshaped tensor R, whose permutation by second_transpose is the output.
  std::vector<int64_t> r_dims = out.dims;
  if (!second_identity) {
    for (size_t i = 0; i < p.second_transpose.size(); ++i) {
      r_dims[p.second_transpose[i]] = out.dims[i];
    }
  }
  const std::vector<int64_t> r_strides = row_major_strides(r_dims);
  std::vector<int64_t> out_to_r(out.dims.size());  // R's strides in output dim order
  for (size_t i = 0; i < out.dims.size(); ++i) {
    out_to_r[i] = second_identity ? r_strides[i] : r_strides[p.second_transpose[i]];
  }
  const std::vector<int64_t> out_strides = row_major_strides(out.dims);
  bool launched = false;
  if (!p.has_reshape || r_dims == t_dims) {
    // R is T itself: the two permutations compose into one strided read of the input.
    std::vector<int64_t> src(out.dims.size());
    for (size_t i = 0; i < out.dims.size(); ++i) {
      src[i] = t_strides[second_identity ? i : p.second_transpose[i]];
    }
    launched = strided_copy(elem, out.dims, src, out_strides, in.data, out.data, a);
  } else if (first_identity) {
    // R's row-major position is the input offset.
    launched = strided_copy(elem, out.dims, out_to_r, out_strides, in.data, out.data, a);
  } else if (second_identity) {
    // The output's row-major position is T's: walk T and read through its strides.
    launched = strided_copy(elem, t_dims, t_strides, row_major_strides(t_dims), in.data, out.data,
                            a);
  } else {
    IndexMap<1> to_r, to_src;
    if (make_index_map<1>(out.dims, {out_to_r}, to_r) &&
        make_index_map<1>(t_dims, {t_strides}, to_src)) {
      dispatch_elem_size(elem, [&](auto zero) {
        using S = decltype(zero);
        shuffle2_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
            static_cast<const S*>(in.data), static_cast<S*>(out.data), n, to_r, to_src);
      });
      check(cudaGetLastError(), "shuffle2_kernel");
      launched = true;
    }
  }
  if (!launched) host_fallback(a);
}

// ---------------------------------------------------------------- Concatenation

void run(const ConcatenationParams& p, const CudaArgs& a) {
  DeviceTensor& out = a.out();
  const size_t elem = dtype_size(out.dtype);
  const std::vector<int64_t> out_strides = row_major_strides(out.dims);
  const auto axis = static_cast<size_t>(p.axis);
  expect_device(axis < out.dims.size(), "concatenation", "axis out of range");
  int64_t offset = 0;  // position along the axis
  for (const DeviceTensor* in : a.inputs) {
    expect_device(in->dims.size() == out.dims.size() && offset + in->dims[axis] <= out.dims[axis],
                  "concatenation", "input dims " + dims_to_string(in->dims) +
                                       " do not fit output dims " + dims_to_string(out.dims));
    auto* dst = static_cast<uint8_t*>(out.data) + offset * out_strides[axis] * elem;
    if (!strided_copy(elem, in->dims, row_major_strides(in->dims), out_strides, in->data, dst, a)) {
      // Only a rank > kMaxRank concatenation gets here, before any copy (ranks agree).
      return host_fallback(a);
    }
    offset += in->dims[axis];
  }
}

// ---------------------------------------------------------------- Slice

void run(const SliceParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  if (out.numel() == 0) return;
  const size_t elem = dtype_size(in.dtype);
  const SliceWalk w = slice_walk(p, in.dims, out.dims, a.symbols);
  const auto* src = static_cast<const uint8_t*>(in.data) + w.base * static_cast<int64_t>(elem);
  if (!strided_copy(elem, out.dims, w.strides, row_major_strides(out.dims), src, out.data, a)) {
    host_fallback(a);
  }
}

// ---------------------------------------------------------------- Gather

void run(const GatherParams& p, const CudaArgs& a) {
  const DeviceTensor& data = a.in(0);
  const DeviceTensor& indices = a.in(1);
  DeviceTensor& out = a.out();
  const size_t elem = dtype_size(data.dtype);
  const bool is64 = indices.dtype == DataType::kI64;
  const int64_t n = out.numel();
  const auto axis = static_cast<size_t>(p.axis);
  switch (p.mode) {
    case GatherMode::kDefault: {
      expect_device(axis < data.dims.size(), "gather", "axis out of range");
      IndexBounds b;
      b.bound[0] = data.dims[axis];
      validate_indices(indices, b, a);
      if (n == 0) return;
      const int64_t inner = product(data.dims, axis + 1, data.dims.size());
      // Each gathered row of `inner` elements is contiguous on both sides: moved in the widest
      // unit (16, 8 or 4 bytes) that divides it and both buffers' alignment. Element by element
      // (2 bytes for f16, with three 64-bit divisions each) a torch.roll of Swin-T's
      // [32, 56, 56, 96] activations, a Gather along dim 1 or 2, moved 2 bytes per index
      // computation; in 16-byte units it moves 16.
      int64_t unit = static_cast<int64_t>(elem);
      for (const int64_t u : {int64_t{16}, int64_t{8}, int64_t{4}}) {
        if (u > unit && (inner * static_cast<int64_t>(elem)) % u == 0 && aligned(data.data, u) && aligned(out.data, u)) {
          unit = u;
          break;
        }
      }
      const int64_t per_unit = unit / static_cast<int64_t>(elem);
      auto go = [&](auto zero) {
        using S = decltype(zero);
        gather_default_kernel<S><<<grid_for(n / per_unit), kThreads, 0, a.stream()>>>(
            static_cast<const S*>(data.data), indices.data, is64, static_cast<S*>(out.data),
            n / per_unit, indices.numel(), inner / per_unit, data.dims[axis]);
      };
      if (unit == 16) {
        go(uint4{});
      } else if (unit == 8 && elem < 8) {
        go(uint2{});
      } else {
        dispatch_elem_size(static_cast<size_t>(unit), go);
      }
      check(cudaGetLastError(), "gather_default_kernel");
      return;
    }
    case GatherMode::kElement: {
      const size_t r = indices.dims.size();
      expect_device(axis < r && r == data.dims.size() && out.dims == indices.dims, "gather",
                    "element mode needs indices of data's rank and an output of their dims");
      if (r > static_cast<size_t>(kMaxRank)) return host_fallback(a);
      IndexBounds b;
      b.bound[0] = data.dims[axis];
      validate_indices(indices, b, a);
      if (n == 0) return;
      ElementGeometry g;
      g.rank = static_cast<int>(r);
      g.axis = static_cast<int>(axis);
      g.axis_dim = data.dims[axis];
      const std::vector<int64_t> ds = row_major_strides(data.dims);
      for (size_t d = 0; d < r; ++d) {
        g.dims[d] = indices.dims[d];
        g.data_strides[d] = ds[d];
      }
      dispatch_elem_size(elem, [&](auto zero) {
        using S = decltype(zero);
        gather_element_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
            static_cast<const S*>(data.data), indices.data, is64, static_cast<S*>(out.data), n, g);
      });
      check(cudaGetLastError(), "gather_element_kernel");
      return;
    }
    case GatherMode::kNd: {
      const auto nb = static_cast<size_t>(p.num_batch_dims);
      const size_t q = indices.dims.size();
      expect_device(q >= 1 && q > nb, "gather", "nd mode needs indices of rank > num_batch_dims");
      const int64_t k = indices.dims[q - 1];
      expect_device(nb + static_cast<size_t>(k) <= data.dims.size(), "gather",
                    "nd mode: index tuples longer than data's remaining rank");
      if (k > kMaxRank) return host_fallback(a);
      IndexBounds b;
      NdGeometry g;
      const std::vector<int64_t> ds = row_major_strides(data.dims);
      b.count = k > 0 ? static_cast<int>(k) : 1;
      b.bound[0] = 0;
      g.k = static_cast<int>(k);
      for (int64_t t = 0; t < k; ++t) {
        b.bound[t] = data.dims[nb + t];
        g.bounds[t] = data.dims[nb + t];
        g.strides[t] = ds[nb + t];
      }
      if (k > 0) validate_indices(indices, b, a);
      if (n == 0) return;
      g.batch_stride = product(data.dims, nb, data.dims.size());
      g.tuples = product(indices.dims, nb, q - 1);
      g.block = product(data.dims, nb + k, data.dims.size());
      if (g.tuples == 0 || g.block == 0) return;
      dispatch_elem_size(elem, [&](auto zero) {
        using S = decltype(zero);
        gather_nd_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
            static_cast<const S*>(data.data), indices.data, is64, static_cast<S*>(out.data), n, g);
      });
      check(cudaGetLastError(), "gather_nd_kernel");
      return;
    }
  }
  throw Error("unknown gather mode " + std::to_string(static_cast<int>(p.mode)));
}

// ---------------------------------------------------------------- Scatter

void run(const ScatterParams& p, const CudaArgs& a) {
  const DeviceTensor& data = a.in(0);
  const DeviceTensor& indices = a.in(1);
  const DeviceTensor& updates = a.in(2);
  DeviceTensor& out = a.out();
  const size_t r = indices.dims.size();
  const auto axis = static_cast<size_t>(p.axis);
  expect_device(axis < r && data.dims.size() == r && updates.dims == indices.dims &&
                    out.dims == data.dims && updates.dtype == data.dtype,
                "scatter", "data, indices and updates need one rank, updates indices' dims");
  if (r > static_cast<size_t>(kMaxRank)) return host_fallback(a);
  const int64_t n = indices.numel();
  const int64_t m = out.numel();
  const bool reduce = p.reduction != ScatterReduction::kNone;
  const bool in_place = out.dtype == DataType::kF32 || out.dtype == DataType::kI64;
  // Scratch after the error flag (error_flag() puts it at the workspace's start), sized in one
  // request so that the flag does not move: the winning update of each destination (reduction
  // none), or the f32/int64 accumulator copy of an output of another dtype.
  constexpr size_t kScratchOffset = 256;
  size_t scratch = 0;
  if (!reduce) {
    scratch = static_cast<size_t>(m) * sizeof(long long);
  } else if (!in_place) {
    scratch = static_cast<size_t>(m) * (dtype_is_float(out.dtype) ? sizeof(float)
                                                                  : sizeof(int64_t));
  }
  auto* ws = static_cast<uint8_t*>(a.res->workspace(kScratchOffset + scratch));
  IndexBounds b;
  b.bound[0] = data.dims[axis];
  validate_indices(indices, b, a, "scatter");
  copy_device(out.data, data.data, out.nbytes(), a, "cudaMemcpyAsync (scatter data)");
  if (n == 0) return;
  ElementGeometry g;
  g.rank = static_cast<int>(r);
  g.axis = static_cast<int>(axis);
  g.axis_dim = data.dims[axis];
  const std::vector<int64_t> ds = row_major_strides(data.dims);
  for (size_t d = 0; d < r; ++d) {
    g.dims[d] = indices.dims[d];
    g.data_strides[d] = ds[d];
  }
  const bool is64 = indices.dtype == DataType::kI64;
  if (!reduce) {
    auto* winner = reinterpret_cast<long long*>(ws + kScratchOffset);
    check(cudaMemsetAsync(winner, 0xff, scratch, a.stream()), "cudaMemsetAsync (scatter)");
    scatter_winner_kernel<<<grid_for(n), kThreads, 0, a.stream()>>>(indices.data, is64, winner, n,
                                                                      g);
    check(cudaGetLastError(), "scatter_winner_kernel");
    dispatch_elem_size(dtype_size(out.dtype), [&](auto zero) {
      using S = decltype(zero);
      scatter_assign_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
          static_cast<const S*>(updates.data), indices.data, is64, winner,
          static_cast<S*>(out.data), n, g);
    });
    check(cudaGetLastError(), "scatter_assign_kernel");
    return;
  }
  const bool supported = dispatch_numeric(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    using C = typename Num<T>::C;
    C* acc = reinterpret_cast<C*>(in_place ? static_cast<uint8_t*>(out.data) : ws + kScratchOffset);
    if (!in_place) {
      to_compute_kernel<T><<<grid_for(m), kThreads, 0, a.stream()>>>(
          static_cast<const T*>(out.data), acc, m);
    }
    scatter_reduce_kernel<T><<<grid_for(n), kThreads, 0, a.stream()>>>(
        static_cast<const T*>(updates.data), indices.data, is64, acc, n, g, p.reduction);
    if (!in_place) {
      from_compute_kernel<T><<<grid_for(m), kThreads, 0, a.stream()>>>(acc,
                                                                         static_cast<T*>(out.data), m);
    }
  });
  if (!supported) {
    throw Error(std::string("Scatter kernel (cuda): reductions need a float or integer dtype, got ") +
                dtype_name(out.dtype));
  }
  check(cudaGetLastError(), "scatter_reduce_kernel");
}

// ---------------------------------------------------------------- Padding

namespace {

/// Runs the Padding with space_to_depth_kernel when it is that kernel's case (a 16-bit NCHW image
/// viewed as 2x2 blocks, whole-block padding, 2 or 4 channels out, 32-bit sizes); false
/// otherwise. `view` is the input's viewed dims.
bool space_to_depth(const PaddingParams& p, const CudaArgs& a, const std::vector<int64_t>& view,
                    uint64_t fill) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  if (p.mode != PaddingMode::kConstant || dtype_size(in.dtype) != 2 || view.size() != 6 ||
      p.input_permutation != std::vector<int64_t>{0, 2, 4, 3, 5, 1} || view[3] != 2 ||
      view[5] != 2 || out.dims.size() != 6) {
    return false;
  }
  const int64_t cb = out.dims[5], c = view[1];
  if ((cb != 2 && cb != 4) || c > cb || p.pre[0] != 0 || p.post[0] != 0 || p.pre[3] != 0 ||
      p.post[3] != 0 || p.pre[4] != 0 || p.post[4] != 0 || p.pre[5] != 0 ||
      in.numel() >= (int64_t{1} << 31) || out.numel() >= (int64_t{1} << 31) ||
      reinterpret_cast<uintptr_t>(out.data) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(in.data) % 4 != 0) {
    return false;
  }
  const int pixels = static_cast<int>(out.dims[0] * out.dims[1] * out.dims[2]);
  if (pixels == 0) return true;
  const auto* x = static_cast<const uint32_t*>(in.data);
  auto* y = static_cast<uint4*>(out.data);
  const int hb = static_cast<int>(out.dims[1]), wb = static_cast<int>(out.dims[2]);
  const int h = static_cast<int>(view[2] * 2), w = static_cast<int>(view[4] * 2);
  const int pre_h = static_cast<int>(p.pre[1]), pre_w = static_cast<int>(p.pre[2]);
  const auto f = static_cast<uint16_t>(fill);
  if (cb == 4) {
    space_to_depth_kernel<4><<<grid_for(pixels), kThreads, 0, a.stream()>>>(
        x, y, pixels, hb, wb, static_cast<int>(c), h, w, pre_h, pre_w, f);
  } else {
    space_to_depth_kernel<2><<<grid_for(pixels), kThreads, 0, a.stream()>>>(
        x, y, pixels, hb, wb, static_cast<int>(c), h, w, pre_h, pre_w, f);
  }
  check(cudaGetLastError(), "space_to_depth_kernel");
  return true;
}

}  // namespace

void run(const PaddingParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  const std::vector<int64_t> view = semantics::padding_input_dims(p, in.dims);
  const size_t r = view.size();
  expect_device(out.dims.size() == r && p.pre.size() == r && p.post.size() == r &&
                    (p.input_permutation.empty() || p.input_permutation.size() == r),
                "padding", "pads, permutation or output rank differ from the input rank");
  // Output dim d reads (viewed) input dim from[d] (the input permutation's entry, or d).
  const std::vector<int64_t> row_major = row_major_strides(view);
  std::vector<int64_t> in_dims(r), in_strides(r);
  for (size_t d = 0; d < r; ++d) {
    const size_t from = p.input_permutation.empty() ? d : static_cast<size_t>(p.input_permutation[d]);
    expect_device(from < r, "padding", "input_permutation entry out of range");
    in_dims[d] = view[from];
    in_strides[d] = row_major[from];
  }
  // The CPU reference's checks, on the same per-dim maps (O(sum of output dims), no data).
  for (size_t d = 0; d < r; ++d) {
    const int64_t len = in_dims[d];
    for (int64_t o = 0; o < out.dims[d]; ++o) {
      const int64_t i = o - p.pre[d];
      if (i >= 0 && i < len) continue;
      if (p.mode == PaddingMode::kConstant) continue;
      if (len == 0) throw Error("cannot pad empty dim " + std::to_string(d) + " in this mode");
      int64_t m = 0;
      switch (p.mode) {
        case PaddingMode::kConstant: break;
        case PaddingMode::kReflect: m = i < 0 ? -i : 2 * (len - 1) - i; break;
        case PaddingMode::kReplicate: m = i < 0 ? 0 : len - 1; break;
        case PaddingMode::kCircular: m = ((i % len) + len) % len; break;
      }
      if (m < 0 || m >= len) {
        throw Error("padding of dim " + std::to_string(d) + " (size " + std::to_string(len) +
                    ") by " + std::to_string(p.pre[d]) + "/" + std::to_string(p.post[d]) +
                    " is too large for this mode");
      }
    }
  }
  const int64_t n = out.numel();
  if (n == 0) return;
  if (r > static_cast<size_t>(kMaxRank)) return host_fallback(a);
  const uint64_t fill = scalar_bits(out.dtype, p.value);
  PadGeometry g;
  g.rank = static_cast<int>(r);
  for (size_t d = 0; d < r; ++d) {
    g.out_dims[d] = out.dims[d];
    g.in_dims[d] = in_dims[d];
    g.in_strides[d] = in_strides[d];
    g.pre[d] = p.pre[d];
  }
  if (space_to_depth(p, a, view, fill)) return;
  // Constant paddings whose output splits into whole 16-byte words: one word per thread.
  const int64_t per_word = 16 / static_cast<int64_t>(dtype_size(in.dtype));
  if (p.mode == PaddingMode::kConstant && n % per_word == 0 &&
      reinterpret_cast<uintptr_t>(out.data) % 16 == 0) {
    const bool narrow = n < (int64_t{1} << 31) && in.numel() < (int64_t{1} << 31);
    dispatch_elem_size(dtype_size(in.dtype), [&](auto zero) {
      using S = decltype(zero);
      const int64_t words = n / per_word;
      if (narrow) {
        pad_words_kernel<S, int32_t><<<grid_for(words), kThreads, 0, a.stream()>>>(
            static_cast<const S*>(in.data), static_cast<uint4*>(out.data), words, g,
            low_bits<S>(fill));
      } else {
        pad_words_kernel<S, int64_t><<<grid_for(words), kThreads, 0, a.stream()>>>(
            static_cast<const S*>(in.data), static_cast<uint4*>(out.data), words, g,
            low_bits<S>(fill));
      }
    });
    check(cudaGetLastError(), "pad_words_kernel");
    return;
  }
  dispatch_elem_size(dtype_size(in.dtype), [&](auto zero) {
    using S = decltype(zero);
    pad_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(static_cast<const S*>(in.data),
                                                             static_cast<S*>(out.data), n, g,
                                                             p.mode, low_bits<S>(fill));
  });
  check(cudaGetLastError(), "pad_kernel");
}

// ---------------------------------------------------------------- Resize

void run(const ResizeParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  const size_t r = in.dims.size();
  expect_device(out.dims.size() == r && (p.scales.empty() || p.scales.size() == r), "resize",
                "output or scales rank differ from the input rank");
  const int64_t n = out.numel();
  if (n == 0) return;
  for (size_t d = 0; d < r; ++d) {
    if (in.dims[d] == 0) {
      throw Error("cannot resize empty input dim " + std::to_string(d) + " to " +
                  std::to_string(out.dims[d]));
    }
  }
  if (r > static_cast<size_t>(kMaxRank)) return host_fallback(a);
  ResizeGeometry g;
  g.rank = static_cast<int>(r);
  g.mode = p.mode;
  g.coordinate = p.coordinate;
  g.rounding = p.rounding;
  g.cubic_coeff = static_cast<float>(p.cubic_coeff);
  const std::vector<int64_t> in_strides = row_major_strides(in.dims);
  for (size_t d = 0; d < r; ++d) {
    const int64_t i = in.dims[d], o = out.dims[d];
    g.in_dims[d] = i;
    g.out_dims[d] = o;
    g.in_strides[d] = in_strides[d];
    // torch's compute_scales_value and area_pixel_compute_scale, as the CPU computes them.
    g.ratio[d] = semantics::resize_size_ratio(p, d, i, o);
    g.scale[d] = semantics::resize_coordinate_scale(p, d, i, o);
  }
  if (p.mode == ResizeMode::kNearest) {
    dispatch_elem_size(dtype_size(in.dtype), [&](auto zero) {
      using S = decltype(zero);
      resize_nearest_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
          static_cast<const S*>(in.data), static_cast<S*>(out.data), n, g);
    });
    check(cudaGetLastError(), "resize_nearest_kernel");
    return;
  }
  // The dims the CPU resamples: linear every dim whose size changes; cubic the last two unless
  // one keeps its size and ratio (torch copies those).
  for (size_t dd = r; dd-- > 0;) {
    const bool same = in.dims[dd] == out.dims[dd];
    if (p.mode == ResizeMode::kLinear) {
      if (same) continue;
    } else {
      const bool unit_ratio = p.scales.empty() || p.scales[dd] == 1.0 ||
                              p.coordinate == ResizeCoordinate::kAlignCorners;
      if (same && (dd + 2 < r || unit_ratio)) continue;
      if (dd + 2 < r) {
        throw Error("cubic resize changes dim " + std::to_string(dd) +
                    " (only the last two dims may change)");
      }
    }
    g.active_dims[g.active++] = static_cast<int>(dd);
  }
  std::reverse(g.active_dims, g.active_dims + g.active);  // outermost first
  // Two adjacent resized dims (NCHW's or NHWC's H and W): the bilinear kernel.
  const bool bilinear = p.mode == ResizeMode::kLinear && g.active == 2 &&
                        g.active_dims[1] == g.active_dims[0] + 1;
  int64_t inner = 1;
  if (bilinear) {
    for (int d = g.active_dims[1] + 1; d < g.rank; ++d) inner *= g.in_dims[d];
  }
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    if (bilinear) {
      resize_bilinear_kernel<T><<<grid_for(n), kThreads, 0, a.stream()>>>(
          static_cast<const T*>(in.data), static_cast<T*>(out.data), n, inner, g);
      return;
    }
    resize_interpolate_kernel<T><<<grid_for(n), kThreads, 0, a.stream()>>>(
        static_cast<const T*>(in.data), static_cast<T*>(out.data), n, g);
  };
  switch (in.dtype) {
    case DataType::kF32: launch(float{}); break;
    case DataType::kF16: launch(__half{}); break;
    case DataType::kBF16: launch(__nv_bfloat16{}); break;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kF8E4M3:
    case DataType::kBool:
      throw Error(std::string("Resize kernel (cuda): linear and cubic resize need a float dtype, "
                              "got ") + dtype_name(in.dtype));
  }
  check(cudaGetLastError(), "resize_interpolate_kernel");
}

// ---------------------------------------------------------------- Fill

void run(const FillParams& p, const CudaArgs& a) {
  DeviceTensor& out = a.out();
  const int64_t n = out.numel();
  if (n == 0) return;
  switch (p.op) {
    case FillOp::kConstant: {
      const uint64_t bits = scalar_bits(out.dtype, p.value);
      dispatch_elem_size(dtype_size(out.dtype), [&](auto zero) {
        using S = decltype(zero);
        fill_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(static_cast<S*>(out.data), n,
                                                                  low_bits<S>(bits));
      });
      check(cudaGetLastError(), "fill_kernel");
      return;
    }
    case FillOp::kArange: {
      const bool whole = std::floor(p.start) == p.start && std::floor(p.delta) == p.delta &&
                         std::fabs(p.start) < 9e18 && std::fabs(p.delta) < 9e18;
      arange_kernel<<<grid_for(n), kThreads, 0, a.stream()>>>(
          out.data, n, out.dtype, p.start, p.delta, whole && !dtype_is_float(out.dtype));
      check(cudaGetLastError(), "arange_kernel");
      return;
    }
  }
  throw Error("unknown fill op " + std::to_string(static_cast<int>(p.op)));
}

}  // namespace ember::engine::cuda
