// CUDA kernels of the quantization family: Quantize and Dequantize, one grid-stride pointwise
// pass each, the epilogue pass after a low-precision GEMM (scales, bias, activation,
// requantization; quantized_matmul.cpp), and the INT8 convolution's packing, epilogue and direct
// kernels (quantized_conv.cpp).
// The arithmetic is backends/semantics/quantize.h (the CPU reference's); FP8 conversions are
// cuda_fp8.h's saturating round-to-nearest-even ones, which match half.h's f32_to_f8e4m3.
#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/product_epilogue.cuh"
#include "backends/cuda/quantize_kernels.h"
#include "backends/semantics/activation.h"
#include "backends/semantics/quantize.h"

namespace ember::engine::cuda {

namespace {

/// The quantized storage a kernel writes or reads.
enum class QKind { kI8, kU8, kF8 };

QKind qkind(DataType t) {
  switch (t) {
    case DataType::kI8:
      return QKind::kI8;
    case DataType::kU8:
      return QKind::kU8;
    case DataType::kF8E4M3:
      return QKind::kF8;
    case DataType::kF32:
    case DataType::kF16:
    case DataType::kBF16:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool:
      break;
  }
  throw Error(std::string("quantize: unsupported quantized dtype ") + dtype_name(t) +
              " (the layer should have been rejected by shape inference)");
}

/// Where element i's scale and zero point are: channel (i / inner) % channels.
struct Channels {
  const float* scale;
  const int32_t* zero_point;  // nullptr: symmetric
  int64_t inner;
  int64_t channels;
  __device__ __forceinline__ int64_t of(int64_t i) const {
    return channels == 1 ? 0 : (i / inner) % channels;
  }
};

/// Element x of channel c, quantized.
template <QKind K>
__device__ __forceinline__ uint8_t quantize_one(float v, int64_t c, const Channels& ch, float lo,
                                                float hi) {
  const float inv = semantics::quant_inv_scale(ch.scale[c]);
  if constexpr (K == QKind::kF8) {
    return __nv_cvt_float_to_fp8(v * inv, __NV_SATFINITE, __NV_E4M3);
  } else {
    const float zp = ch.zero_point ? static_cast<float>(ch.zero_point[c]) : 0.0f;
    const int r = static_cast<int>(semantics::quant_round_clamp(v, inv, zp, lo, hi));
    return K == QKind::kI8 ? static_cast<uint8_t>(static_cast<int8_t>(r)) : static_cast<uint8_t>(r);
  }
}

template <typename TI, QKind K>
__global__ void quantize_kernel(const TI* __restrict__ x, uint8_t* __restrict__ y, int64_t n,
                                Channels ch, float lo, float hi) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    y[i] = quantize_one<K>(Num<TI>::load(x[i]), ch.of(i), ch, lo, hi);
  }
}

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

/// quantize_kernel four elements a thread (one vector load, one 4-byte store), for n % 4 == 0,
/// aligned operands and groups of four that share a channel (per tensor, or inner % 4 == 0).
/// Element by element it ran at about a third of the bandwidth (ResNet-50 int8 b32 on an H100:
/// 0.41 ms for 18 calls).
template <typename TI, QKind K>
__global__ void quantize_vec4_kernel(const TI* __restrict__ x, uint8_t* __restrict__ y,
                                     int64_t groups, Channels ch, float lo, float hi) {
  for (int64_t g = global_thread(); g < groups; g += grid_threads()) {
    const Vec4<TI> a = reinterpret_cast<const Vec4<TI>*>(x)[g];
    const int64_t c = ch.of(g * 4);
    Vec4<uint8_t> q;
#pragma unroll
    for (int k = 0; k < 4; ++k) q.v[k] = quantize_one<K>(Num<TI>::load(a.v[k]), c, ch, lo, hi);
    reinterpret_cast<Vec4<uint8_t>*>(y)[g] = q;
  }
}

template <typename TO, QKind K>
__global__ void dequantize_kernel(const uint8_t* __restrict__ q, TO* __restrict__ y, int64_t n,
                                  Channels ch) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t c = ch.of(i);
    float v;
    if constexpr (K == QKind::kF8) {
      v = __half2float(__half(__nv_cvt_fp8_to_halfraw(q[i], __NV_E4M3)));
    } else if constexpr (K == QKind::kI8) {
      v = static_cast<float>(static_cast<int8_t>(q[i]));
    } else {
      v = static_cast<float>(q[i]);
    }
    const float zp = ch.zero_point ? static_cast<float>(ch.zero_point[c]) : 0.0f;
    y[i] = Num<TO>::store((v - zp) * ch.scale[c]);
  }
}

Channels channels_of(const CudaArgs& a, const std::vector<int64_t>& dims, bool per_channel,
                     int64_t axis) {
  Channels ch{static_cast<const float*>(a.in(1).data),
              a.has(2) ? static_cast<const int32_t*>(a.in(2).data) : nullptr, 1, 1};
  if (per_channel) {
    ch.channels = dims[axis];
    for (size_t d = static_cast<size_t>(axis) + 1; d < dims.size(); ++d) ch.inner *= dims[d];
  }
  return ch;
}

/// Calls fn(static_cast<T*>(nullptr)) with the storage type T of f32/f16/bf16.
template <typename Fn>
void dispatch_float_storage(DataType t, Fn&& fn) {
  switch (t) {
    case DataType::kF32:
      return fn(static_cast<float*>(nullptr));
    case DataType::kF16:
      return fn(static_cast<__half*>(nullptr));
    case DataType::kBF16:
      return fn(static_cast<__nv_bfloat16*>(nullptr));
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool:
    case DataType::kF8E4M3:
      break;
  }
  throw Error(std::string("quantize: unsupported float dtype ") + dtype_name(t) +
              " (the layer should have been rejected by shape inference)");
}

}  // namespace

namespace {

/// residual_at for the four elements of group g (one 4- or 8-byte load).
template <typename TO>
__device__ __forceinline__ void residual_group(const ProductEpilogue& e, int64_t g, float r[4]) {
  if (e.residual == nullptr) {
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = 0.0f;
  } else if (e.residual_scale != nullptr) {
    const Vec4<int8_t> q = reinterpret_cast<const Vec4<int8_t>*>(e.residual)[g];
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = dequantized_residual<TO>(q.v[k], e);
  } else {
    const Vec4<TO> v = reinterpret_cast<const Vec4<TO>*>(e.residual)[g];
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = Num<TO>::load(v.v[k]);
  }
}

/// Stores four finished values as output group `g`: requantized (int8 or FP8 bytes) when e
/// says so, else as they are.
template <typename TO>
__device__ __forceinline__ void store_group(void* out, int64_t g, const Vec4<TO>& v,
                                            const ProductEpilogue& e) {
  if (e.out_scale != nullptr) {
    Vec4<int8_t> q;
#pragma unroll
    for (int k = 0; k < 4; ++k) q.v[k] = product_requantized<TO>(v.v[k], e);
    reinterpret_cast<Vec4<int8_t>*>(out)[g] = q;
  } else {
    reinterpret_cast<Vec4<TO>*>(out)[g] = v;
  }
}

template <typename TA, typename TO>
__global__ void product_epilogue_kernel(const TA* __restrict__ acc, void* out, int64_t total,
                                        int64_t n, ProductEpilogue e) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    product_store<TO>(out, i, i % n, corrected_sum(acc[i], i % n, e), e);
  }
}

/// product_epilogue_kernel four elements at a time, for rows of a multiple of 4 (n % 4 == 0,
/// 16-byte aligned accumulators, outputs aligned to 4 elements): one 16-byte load of sums, one
/// vector store, and one channel division per four elements. The epilogue kernel is memory-bound
/// (4 bytes in, 2 out per element for f16) and ran at about half the bandwidth element by
/// element (BERT-base b32 int8 on an H100: 1.48 ms of 3.88).
template <typename TA, typename TO, typename Act>
__global__ void product_epilogue_vec4_kernel(const TA* __restrict__ acc, void* out,
                                             int64_t groups, int64_t n, ProductEpilogue e,
                                             Act act) {
  for (int64_t g = global_thread(); g < groups; g += grid_threads()) {
    const int64_t c = (g * 4) % n;  // the four share a row: n % 4 == 0
    const Vec4<TA> a = reinterpret_cast<const Vec4<TA>*>(acc)[g];
    float r[4];
    residual_group<TO>(e, g, r);
    Vec4<TO> v;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v.v[k] = product_value_with<TO>(c + k, corrected_sum(a.v[k], c + k, e), e, r[k], act);
    }
    store_group<TO>(out, g, v, e);
  }
}

/// launch_product_finish's kernel, four elements a thread (`vec`: total % 4 == 0 and aligned
/// buffers) or one.
template <typename TO, typename Act>
__global__ void product_finish_kernel(const TO* __restrict__ y, void* out, int64_t total,
                                      bool vec, ProductEpilogue e, Act act) {
  auto finish = [&](TO v) {
    if (e.activation) v = Num<TO>::store(act(Num<TO>::load(v)));
    return v;
  };
  if (vec) {
    for (int64_t g = global_thread(); g < total / 4; g += grid_threads()) {
      const Vec4<TO> a = reinterpret_cast<const Vec4<TO>*>(y)[g];
      Vec4<TO> v;
#pragma unroll
      for (int k = 0; k < 4; ++k) v.v[k] = finish(a.v[k]);
      store_group<TO>(out, g, v, e);
    }
    return;
  }
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const TO v = finish(y[i]);
    if (e.out_scale != nullptr) {
      static_cast<int8_t*>(out)[i] = product_requantized<TO>(v, e);
    } else {
      static_cast<TO*>(out)[i] = v;
    }
  }
}

__global__ void shift_u8_kernel(const uint8_t* __restrict__ x, int8_t* __restrict__ y,
                                int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    y[i] = static_cast<int8_t>(static_cast<int32_t>(x[i]) - 128);
  }
}

__global__ void weight_row_sums_kernel(const int8_t* __restrict__ w, int64_t rows, int64_t cols,
                                       int32_t* __restrict__ sums) {
  for (int64_t r = global_thread(); r < rows; r += grid_threads()) {
    int32_t s = 0;
    for (int64_t c = 0; c < cols; ++c) s += w[r * cols + c];
    sums[r] = s;
  }
}

}  // namespace

__global__ void fill_from_scalar_kernel(float* __restrict__ dst, const float* __restrict__ scalar,
                                        int64_t n) {
  const float v = *scalar;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dst[i] = v;
}

void launch_fill_from_scalar(float* dst, const float* scalar, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  fill_from_scalar_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, scalar, n);
  check(cudaGetLastError(), "fill_from_scalar_kernel");
}

void launch_shift_u8_to_s8(const uint8_t* x, int8_t* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  shift_u8_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
  check(cudaGetLastError(), "shift_u8_kernel");
}

void launch_weight_row_sums(const int8_t* w, int64_t rows, int64_t cols, int32_t* sums,
                            cudaStream_t stream) {
  if (rows == 0) return;
  weight_row_sums_kernel<<<grid_for(rows), kThreads, 0, stream>>>(w, rows, cols, sums);
  check(cudaGetLastError(), "weight_row_sums_kernel");
}

namespace {

/// Element j of an int8 (or uint8, shifted by -128 into int8) activation.
__device__ __forceinline__ int32_t activation_at(const void* x, bool u8, int64_t j) {
  return u8 ? static_cast<int32_t>(static_cast<const uint8_t*>(x)[j]) - 128
            : static_cast<int32_t>(static_cast<const int8_t*>(x)[j]);
}

template <bool kFp8>
__global__ void quantized_product_direct_kernel(const void* __restrict__ a, bool u8,
                                                const void* __restrict__ b, int64_t m, int64_t n,
                                                int64_t k, void* __restrict__ acc) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t warps = grid_threads() / 32;
  for (int64_t o = global_thread() / 32; o < m * n; o += warps) {
    const int64_t row = o / n, col = o % n;
    if constexpr (kFp8) {
      const auto* qa = static_cast<const __nv_fp8_storage_t*>(a) + row * k;
      const auto* qb = static_cast<const __nv_fp8_storage_t*>(b) + col * k;
      float s = 0.0f;
      for (int64_t j = lane; j < k; j += 32) {
        s += __half2float(__half(__nv_cvt_fp8_to_halfraw(qa[j], __NV_E4M3))) *
             __half2float(__half(__nv_cvt_fp8_to_halfraw(qb[j], __NV_E4M3)));
      }
      for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) static_cast<float*>(acc)[o] = s;
    } else {
      const auto* qb = static_cast<const int8_t*>(b) + col * k;
      int32_t s = 0;
      for (int64_t j = lane; j < k; j += 32) s += activation_at(a, u8, row * k + j) * qb[j];
      for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) static_cast<int32_t*>(acc)[o] = s;
    }
  }
}

}  // namespace

void launch_quantized_product_direct(const void* a, bool u8, bool fp8, const void* b, int64_t m,
                                     int64_t n, int64_t k, void* acc, cudaStream_t stream) {
  const int64_t threads = m * n * 32;
  if (threads == 0) return;
  if (fp8) {
    quantized_product_direct_kernel<true><<<grid_for(threads), kThreads, 0, stream>>>(
        a, u8, b, m, n, k, acc);
  } else {
    quantized_product_direct_kernel<false><<<grid_for(threads), kThreads, 0, stream>>>(
        a, u8, b, m, n, k, acc);
  }
  check(cudaGetLastError(), "quantized_product_direct_kernel");
}

void launch_product_finish(const void* y, void* out, DataType float_type, int64_t total,
                           const ProductEpilogue& e, cudaStream_t stream) {
  if (total == 0) return;
  dispatch_float_storage(float_type, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    const size_t out_align = e.out_scale != nullptr ? 4 : 4 * sizeof(TO);
    const bool vec = total % 4 == 0 && reinterpret_cast<uintptr_t>(y) % (4 * sizeof(TO)) == 0 &&
                     reinterpret_cast<uintptr_t>(out) % out_align == 0;
    with_static_activation(ActivationFn{e.type, e.alpha, e.beta}, [&](const auto& act) {
      using Act = std::decay_t<decltype(act)>;
      product_finish_kernel<TO, Act><<<grid_for(vec ? total / 4 : total), kThreads, 0, stream>>>(
          static_cast<const TO*>(y), out, total, vec, e, act);
    });
  });
  check(cudaGetLastError(), "product_finish_kernel");
}

void launch_product_epilogue(const void* acc, bool int32_acc, void* out, DataType float_type,
                             int64_t m, int64_t n, const ProductEpilogue& e, cudaStream_t stream) {
  const int64_t total = m * n;
  if (total == 0) return;
  dispatch_float_storage(float_type, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    const size_t out_align = e.out_scale != nullptr ? 4 : 4 * sizeof(TO);
    const bool residual_aligned =
        e.residual == nullptr ||
        reinterpret_cast<uintptr_t>(e.residual) %
                (4 * (e.residual_scale != nullptr ? sizeof(int8_t) : sizeof(TO))) ==
            0;
    if (n % 4 == 0 && reinterpret_cast<uintptr_t>(acc) % 16 == 0 && residual_aligned &&
        reinterpret_cast<uintptr_t>(out) % out_align == 0) {
      const int64_t groups = total / 4;
      with_static_activation(ActivationFn{e.type, e.alpha, e.beta}, [&](const auto& act) {
        using Act = std::decay_t<decltype(act)>;
        if (int32_acc) {
          product_epilogue_vec4_kernel<int32_t, TO, Act>
              <<<grid_for(groups), kThreads, 0, stream>>>(static_cast<const int32_t*>(acc), out,
                                                          groups, n, e, act);
        } else {
          product_epilogue_vec4_kernel<float, TO, Act><<<grid_for(groups), kThreads, 0, stream>>>(
              static_cast<const float*>(acc), out, groups, n, e, act);
        }
      });
      return;
    }
    if (int32_acc) {
      product_epilogue_kernel<int32_t, TO><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const int32_t*>(acc), out, total, n, e);
    } else {
      product_epilogue_kernel<float, TO><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const float*>(acc), out, total, n, e);
    }
  });
  check(cudaGetLastError(), "product_epilogue_kernel");
}

void run(const QuantizeParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& out = a.out();
  const int64_t n = x.numel();
  if (n == 0) return;
  const Channels ch = channels_of(a, x.dims, p.per_channel, p.axis);
  const float lo = static_cast<float>(p.quant_min), hi = static_cast<float>(p.quant_max);
  auto* y = static_cast<uint8_t*>(out.data);
  // Four elements a thread when every group of four shares a channel and the operands align.
  const bool vec4 = n % 4 == 0 && (ch.channels == 1 || ch.inner % 4 == 0) &&
                    reinterpret_cast<uintptr_t>(x.data) % (4 * dtype_size(x.dtype)) == 0 &&
                    reinterpret_cast<uintptr_t>(y) % 4 == 0;
  dispatch_float_storage(x.dtype, [&](auto* tag) {
    using TI = std::remove_pointer_t<decltype(tag)>;
    const auto* xi = static_cast<const TI*>(x.data);
    const auto launch = [&](auto kind) {
      constexpr QKind K = decltype(kind)::value;
      if (vec4) {
        quantize_vec4_kernel<TI, K><<<grid_for(n / 4), kThreads, 0, a.stream()>>>(xi, y, n / 4, ch,
                                                                                  lo, hi);
      } else {
        quantize_kernel<TI, K><<<grid_for(n), kThreads, 0, a.stream()>>>(xi, y, n, ch, lo, hi);
      }
    };
    switch (qkind(p.to)) {
      case QKind::kI8:
        launch(std::integral_constant<QKind, QKind::kI8>{});
        break;
      case QKind::kU8:
        launch(std::integral_constant<QKind, QKind::kU8>{});
        break;
      case QKind::kF8:
        launch(std::integral_constant<QKind, QKind::kF8>{});
        break;
    }
  });
  check(cudaGetLastError(), "quantize_kernel");
}

void run(const DequantizeParams& p, const CudaArgs& a) {
  const DeviceTensor& q = a.in(0);
  DeviceTensor& out = a.out();
  const int64_t n = q.numel();
  if (n == 0) return;
  const Channels ch = channels_of(a, q.dims, p.per_channel, p.axis);
  const auto* qi = static_cast<const uint8_t*>(q.data);
  dispatch_float_storage(p.to, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    auto* y = static_cast<TO*>(out.data);
    switch (qkind(q.dtype)) {
      case QKind::kI8:
        dequantize_kernel<TO, QKind::kI8><<<grid_for(n), kThreads, 0, a.stream()>>>(qi, y, n, ch);
        break;
      case QKind::kU8:
        dequantize_kernel<TO, QKind::kU8><<<grid_for(n), kThreads, 0, a.stream()>>>(qi, y, n, ch);
        break;
      case QKind::kF8:
        dequantize_kernel<TO, QKind::kF8><<<grid_for(n), kThreads, 0, a.stream()>>>(qi, y, n, ch);
        break;
    }
  });
  check(cudaGetLastError(), "dequantize_kernel");
}

// ---------------------------------------------------------------- QuantizedConvolution

namespace {


__global__ void qconv_pack_input_kernel(const void* __restrict__ x, bool u8,
                                        const int32_t* __restrict__ zero_point,
                                        int8_t* __restrict__ packed, int64_t total,
                                        QConvGeometry g, int64_t hp, int64_t wp, int64_t c4) {
  const int64_t h = g.in[1], w = g.in[2];
  // The padding holds the (shifted) zero point: after the correction it adds nothing.
  const int32_t pad = (zero_point != nullptr ? zero_point[0] : 0) - (u8 ? 128 : 0);
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t c = i % c4;
    const int64_t col = (i / c4) % wp - g.pad[2];
    const int64_t row = (i / (c4 * wp)) % hp - g.pad[1];
    const int64_t n = i / (c4 * wp * hp);
    const bool spatial = row >= 0 && row < h && col >= 0 && col < w;
    int32_t v = 0;  // channels beyond C meet zero weights
    if (c < g.in_channels) {
      v = spatial ? activation_at(x, u8, ((n * g.in_channels + c) * h + row) * w + col) : pad;
    }
    packed[i] = static_cast<int8_t>(v);
  }
}

__global__ void qconv_pack_weight_kernel(const int8_t* __restrict__ w, int8_t* __restrict__ packed,
                                         int64_t total, QConvGeometry g, int64_t c4) {
  const int64_t r = g.kernel[1], s = g.kernel[2], cg = g.in_channels / g.groups;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t c = i % c4;
    const int64_t sx = (i / c4) % s;
    const int64_t ry = (i / (c4 * s)) % r;
    const int64_t k = i / (c4 * s * r);
    const bool inside = c < cg && k < g.out_channels;
    // KCRS, or KRSC already under channels_last (then only the channels are padded).
    const int64_t from = g.channels_last ? ((k * r + ry) * s + sx) * cg + c
                                         : ((k * cg + c) * r + ry) * s + sx;
    packed[i] = inside ? w[from] : int8_t{0};
  }
}

/// NHWC x [rows, C] (int8, uint8 shifted by -128, or FP8 bytes) as int8 [rows, cp], the
/// channels beyond C zero: a channels_last convolution's GEMM operand when C is not already a
/// multiple of the GEMM's (the RGB stem's C = 3) or the activations are uint8.
__global__ void qconv_pad_channels_kernel(const void* __restrict__ x, bool u8,
                                          int8_t* __restrict__ y, int64_t total,
                                          int64_t channels, int64_t cp) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t c = i % cp;
    y[i] = c < channels ? static_cast<int8_t>(activation_at(x, u8, (i / cp) * channels + c))
                        : int8_t{0};
  }
}

template <typename TA, typename TO>
__global__ void qconv_epilogue_kernel(const TA* __restrict__ y, void* out, int64_t total,
                                      QConvGeometry g, int64_t k4, ProductEpilogue e) {
  const int64_t plane = g.out[0] * g.out[1] * g.out[2];
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    // The sums' row (n, p) and channel k of output element i, NCHW or NHWC.
    int64_t row, k;
    if (g.channels_last) {
      k = i % g.out_channels;
      row = i / g.out_channels;
    } else {
      const int64_t p = i % plane;
      k = (i / plane) % g.out_channels;
      row = (i / (plane * g.out_channels)) * plane + p;
    }
    product_store<TO>(out, i, k, corrected_sum(y[row * k4 + k], k, e), e);
  }
}

/// qconv_epilogue_kernel through a (32 channels x 64 positions) shared-memory tile: the NHWC
/// sums are read 4 channels (16 bytes) a thread, and the NCHW output written 4 positions a
/// thread (one vector store when the plane is a multiple of 4), both coalesced. The tile holds
/// the finished values (the output type's, or the requantized int8, as floats: exact).
/// One element a thread each way (the first version) reached about a third of the bandwidth:
/// ResNet-50 b32, 1.72 ms for about 2 GB. Grid: (positions / 64, channels / 32, batch),
/// 256 threads. Needs k4 % 4 == 0 and 16-byte aligned sums.
template <typename TA, typename TO>
__global__ void __launch_bounds__(256)
    qconv_epilogue_tiled_kernel(const TA* __restrict__ y, void* out, int64_t plane,
                                QConvGeometry g, int64_t k4, ProductEpilogue e) {
  __shared__ float tile[32][65];  // [channel][position]; 65: conflict-free column reads
  const int64_t n = blockIdx.z;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * 64;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * 32;
  const int t = static_cast<int>(threadIdx.x);
  const bool requantize = e.out_scale != nullptr;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int q = t / 8 + 32 * j, kw = 4 * (t % 8);  // position in the tile, first channel
    const int64_t p = p0 + q, k = k0 + kw;
    if (p < plane && k < g.out_channels) {
      const Vec4<TA> a = *reinterpret_cast<const Vec4<TA>*>(y + (n * plane + p) * k4 + k);
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        if (k + b >= g.out_channels) break;
        const TO v = product_value<TO>(k + b, corrected_sum(a.v[b], k + b, e), e);
        tile[kw + b][q] = requantize ? static_cast<float>(product_requantized<TO>(v, e))
                                     : Num<TO>::load(v);
      }
    }
  }
  __syncthreads();
  const bool vec = plane % 4 == 0;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int kr = t / 16 + 16 * j, q = 4 * (t % 16);  // channel in the tile, first position
    const int64_t k = k0 + kr, p = p0 + q;
    if (k >= g.out_channels || p >= plane) continue;
    const int64_t i = (n * g.out_channels + k) * plane + p;
    if (requantize) {
      if (vec) {
        Vec4<int8_t> r;
#pragma unroll
        for (int b = 0; b < 4; ++b) r.v[b] = static_cast<int8_t>(tile[kr][q + b]);
        *reinterpret_cast<Vec4<int8_t>*>(static_cast<int8_t*>(out) + i) = r;
      } else {
        for (int b = 0; b < 4 && p + b < plane; ++b) {
          static_cast<int8_t*>(out)[i + b] = static_cast<int8_t>(tile[kr][q + b]);
        }
      }
    } else if (vec) {
      Vec4<TO> r;
#pragma unroll
      for (int b = 0; b < 4; ++b) r.v[b] = Num<TO>::store(tile[kr][q + b]);
      *reinterpret_cast<Vec4<TO>*>(static_cast<TO*>(out) + i) = r;
    } else {
      for (int b = 0; b < 4 && p + b < plane; ++b) {
        static_cast<TO*>(out)[i + b] = Num<TO>::store(tile[kr][q + b]);
      }
    }
  }
}

/// NCHW x [N, C, P] (int8, uint8 shifted by -128, or FP8 bytes) -> NHWC [N, P, cp] int8, the
/// channels beyond C zero: through a (32 channels x 128 positions) tile in shared memory, read
/// as 4-byte words along the positions (when P % 4 == 0; bytes otherwise) and written as 4-byte
/// words of 4 channels (cp % 4 == 0), so both sides move whole 32-byte sectors. A byte per
/// thread each way (the first version) ran at a seventh of that: ResNet-50 b32, 1.63 ms for
/// 0.7 GB. Grid: (P / 128, cp / 32, batch, grid-strided), 256 threads.
__global__ void __launch_bounds__(256)
    qconv_to_nhwc_kernel(const void* __restrict__ x, bool u8, bool words,
                         int8_t* __restrict__ y, int64_t batch, int64_t channels, int64_t plane,
                         int64_t cp) {
  __shared__ uint32_t tile[32][33];  // [channel][position word]: 4 positions a word
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * 128;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * 32;
  const int t = static_cast<int>(threadIdx.x);
  const auto* xb = static_cast<const uint8_t*>(x);
  for (int64_t n = blockIdx.z; n < batch; n += gridDim.z) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = t / 32 + 8 * j, col = t % 32;
      const int64_t c = c0 + row, p = p0 + 4 * col;
      uint32_t word = 0;  // channels beyond C meet zero weights
      if (c < channels && p < plane) {
        const uint8_t* src = xb + (n * channels + c) * plane + p;
        if (words) {
          word = *reinterpret_cast<const uint32_t*>(src);
        } else {
          for (int b = 0; b < 4 && p + b < plane; ++b) word |= uint32_t{src[b]} << (8 * b);
        }
        if (u8) word ^= 0x80808080u;  // x - 128 in each byte
      }
      tile[row][col] = word;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int q = t / 8 + 32 * j, cw = t % 8;  // position in the tile, channel word
      const int64_t p = p0 + q, c = c0 + 4 * cw;
      if (p < plane && c < cp) {
        uint32_t word = 0;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          word |= ((tile[4 * cw + b][q / 4] >> (8 * (q % 4))) & 0xffu) << (8 * b);
        }
        *reinterpret_cast<uint32_t*>(y + (n * plane + p) * cp + c) = word;
      }
    }
    __syncthreads();  // the tile is refilled for the next batch item
  }
}

/// The geometry of qconv_im2col_nhwc_kernel in 32-bit (the caller checks that every index fits:
/// the GEMM path's scratch is capped at 2 GiB).
struct Im2colGeometry {
  uint32_t h, w, oh, ow, r, s, stride_h, stride_w, dil_h, dil_w, words;
  int32_t pad_h, pad_w;
};

/// col [N * OH * OW, R * S * cp] from NHWC x [N, H, W, cp], one Word (4 or 16 bytes of
/// channels) per thread: row (n, oh, ow), tap (r, s), channel word c is x's word at
/// (n, oh * stride - pad + r * dilation, ...), or the padding word outside the input.
template <typename Word>
__global__ void qconv_im2col_nhwc_kernel(const Word* __restrict__ x, Word* __restrict__ col,
                                         uint32_t total, Im2colGeometry g, bool u8,
                                         const int32_t* __restrict__ zero_point) {
  // The padding holds the (shifted) zero point, in every byte of the word.
  const int32_t pad = (zero_point != nullptr ? zero_point[0] : 0) - (u8 ? 128 : 0);
  const uint32_t b = static_cast<uint8_t>(static_cast<int8_t>(pad)) * 0x01010101u;
  Word pad_word;
  if constexpr (sizeof(Word) == 4) {
    pad_word = static_cast<Word>(b);
  } else {
    pad_word = make_int4(static_cast<int>(b), static_cast<int>(b), static_cast<int>(b),
                         static_cast<int>(b));
  }
  const uint32_t stride = blockDim.x * gridDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    uint32_t t = i / g.words;
    const uint32_t c = i - t * g.words;
    const uint32_t s = t % g.s;
    t /= g.s;
    const uint32_t r = t % g.r;
    t /= g.r;
    const uint32_t ow = t % g.ow;
    t /= g.ow;
    const uint32_t oh = t % g.oh;
    const uint32_t n = t / g.oh;
    const int32_t row = static_cast<int32_t>(oh * g.stride_h + r * g.dil_h) - g.pad_h;
    const int32_t cw = static_cast<int32_t>(ow * g.stride_w + s * g.dil_w) - g.pad_w;
    const bool inside = row >= 0 && row < static_cast<int32_t>(g.h) && cw >= 0 &&
                        cw < static_cast<int32_t>(g.w);
    col[i] = inside ? x[((n * g.h + static_cast<uint32_t>(row)) * g.w +
                         static_cast<uint32_t>(cw)) * g.words + c]
                    : pad_word;
  }
}

/// Element j of an FP8 E4M3 tensor as f32.
__device__ __forceinline__ float fp8_at(const void* x, int64_t j) {
  return __half2float(
      __half(__nv_cvt_fp8_to_halfraw(static_cast<const __nv_fp8_storage_t*>(x)[j], __NV_E4M3)));
}

template <typename TO, bool kFp8>
__global__ void qconv_direct_kernel(const void* __restrict__ x, bool u8,
                                    const int32_t* __restrict__ zero_point,
                                    const void* __restrict__ w, void* out, int64_t total,
                                    QConvGeometry g, ProductEpilogue e) {
  // x - zero_point over the taps inside the input; the padding adds nothing (a real zero).
  const int32_t zp = (zero_point != nullptr ? zero_point[0] : 0) - (u8 ? 128 : 0);
  const int64_t plane = g.out[0] * g.out[1] * g.out[2];
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  const int64_t taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const int64_t cg = g.in_channels / g.groups, kg = g.out_channels / g.groups;
  // Element strides of a channel and of a spatial position (x) or tap (w): NCHW and KCRS, or
  // NHWC and KRSC under channels_last (the CPU reference's, cpu/quantize.cpp).
  const bool cl = g.channels_last;
  const int64_t x_c = cl ? 1 : in_plane, x_sp = cl ? g.in_channels : 1;
  const int64_t w_c = cl ? 1 : taps, w_t = cl ? cg : 1;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t p = cl ? (i / g.out_channels) % plane : i % plane;
    const int64_t k = cl ? i % g.out_channels : (i / plane) % g.out_channels;
    const int64_t n = i / (plane * g.out_channels);
    const int64_t o0 = p / (g.out[1] * g.out[2]), o1 = (p / g.out[2]) % g.out[1];
    const int64_t o2 = p % g.out[2];
    const int64_t c0 = (k / kg) * cg;
    // int8: exact, as the CPU reference's; FP8: f32, each product exact.
    std::conditional_t<kFp8, float, int32_t> acc = 0;
    for (int64_t c = 0; c < cg; ++c) {
      const int64_t xc = n * g.in_channels * in_plane + (c0 + c) * x_c;
      const int64_t wc = k * cg * taps + c * w_c;
      for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
        const int64_t i0 = o0 * g.stride[0] - g.pad[0] + t0 * g.dilation[0];
        if (i0 < 0 || i0 >= g.in[0]) continue;
        for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
          const int64_t i1 = o1 * g.stride[1] - g.pad[1] + t1 * g.dilation[1];
          if (i1 < 0 || i1 >= g.in[1]) continue;
          for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2) {
            const int64_t i2 = o2 * g.stride[2] - g.pad[2] + t2 * g.dilation[2];
            if (i2 < 0 || i2 >= g.in[2]) continue;
            const int64_t xi = xc + ((i0 * g.in[1] + i1) * g.in[2] + i2) * x_sp;
            const int64_t wi = wc + ((t0 * g.kernel[1] + t1) * g.kernel[2] + t2) * w_t;
            if constexpr (kFp8) {
              acc += fp8_at(x, xi) * fp8_at(w, wi);
            } else {
              acc += (activation_at(x, u8, xi) - zp) *
                     int32_t{static_cast<const int8_t*>(w)[wi]};
            }
          }
        }
      }
    }
    product_store<TO>(out, i, k, static_cast<float>(acc), e);
  }
}

}  // namespace

void launch_qconv_pack_input(const void* x, bool u8, const int32_t* zero_point, int8_t* packed,
                             const QConvGeometry& g, int64_t hp, int64_t wp, int64_t c4,
                             cudaStream_t stream) {
  const int64_t total = g.batch * hp * wp * c4;
  if (total == 0) return;
  qconv_pack_input_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, u8, zero_point, packed,
                                                                     total, g, hp, wp, c4);
  check(cudaGetLastError(), "qconv_pack_input_kernel");
}

void launch_qconv_pack_weight(const int8_t* w, int8_t* packed, const QConvGeometry& g,
                              int64_t k4, int64_t c4, cudaStream_t stream) {
  const int64_t total = k4 * g.kernel[1] * g.kernel[2] * c4;
  if (total == 0) return;
  qconv_pack_weight_kernel<<<grid_for(total), kThreads, 0, stream>>>(w, packed, total, g, c4);
  check(cudaGetLastError(), "qconv_pack_weight_kernel");
}

void launch_qconv_pad_channels(const void* x, bool u8, int8_t* y, int64_t rows, int64_t channels,
                               int64_t cp, cudaStream_t stream) {
  const int64_t total = rows * cp;
  if (total == 0) return;
  qconv_pad_channels_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, u8, y, total, channels,
                                                                      cp);
  check(cudaGetLastError(), "qconv_pad_channels_kernel");
}

void launch_qconv_epilogue(const void* y, bool int32_acc, void* out, DataType float_type,
                           const QConvGeometry& g, int64_t k4, const ProductEpilogue& e,
                           cudaStream_t stream) {
  const int64_t total = g.batch * g.out_channels * g.out[0] * g.out[1] * g.out[2];
  if (total == 0) return;
  dispatch_float_storage(float_type, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    const int64_t plane = g.out[0] * g.out[1] * g.out[2];
    // channels_last: the sums' rows are the output's, so with no padded channels it is the
    // matrix product's epilogue (four elements a thread where it can).
    if (g.channels_last && k4 == g.out_channels) {
      launch_product_epilogue(y, int32_acc, out, float_type, g.batch * plane, k4, e, stream);
      return;
    }
    // The tiled kernel's vector loads: 4 channels of 16-byte aligned sums, and 4-aligned
    // outputs for its vector stores (it checks the plane itself).
    // A residual (NCHW, like the output) is read by the one-element kernel: the tiled one
    // finishes values at NHWC positions, before the transpose.
    const bool tiled = !g.channels_last && e.residual == nullptr && g.batch <= 65535 &&
                       (g.out_channels + 31) / 32 <= 65535 && k4 % 4 == 0 &&
                       reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
    if (tiled) {
      const dim3 grid(static_cast<unsigned>((plane + 63) / 64),
                      static_cast<unsigned>((g.out_channels + 31) / 32),
                      static_cast<unsigned>(g.batch));
      if (int32_acc) {
        qconv_epilogue_tiled_kernel<int32_t, TO><<<grid, 256, 0, stream>>>(
            static_cast<const int32_t*>(y), out, plane, g, k4, e);
      } else {
        qconv_epilogue_tiled_kernel<float, TO><<<grid, 256, 0, stream>>>(
            static_cast<const float*>(y), out, plane, g, k4, e);
      }
    } else if (int32_acc) {
      qconv_epilogue_kernel<int32_t, TO><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const int32_t*>(y), out, total, g, k4, e);
    } else {
      qconv_epilogue_kernel<float, TO><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const float*>(y), out, total, g, k4, e);
    }
  });
  check(cudaGetLastError(), "qconv_epilogue_kernel");
}

void launch_qconv_to_nhwc(const void* x, bool u8, int8_t* y, const QConvGeometry& g, int64_t cp,
                          cudaStream_t stream) {
  const int64_t plane = g.in[1] * g.in[2];
  if (g.batch * plane * cp == 0) return;
  const dim3 grid(static_cast<unsigned>((plane + 127) / 128),
                  static_cast<unsigned>((cp + 31) / 32),
                  static_cast<unsigned>(std::min<int64_t>(g.batch, 65535)));
  // 4-byte loads: every row of 4-aligned length from a 4-aligned base.
  const bool words = plane % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 4 == 0;
  qconv_to_nhwc_kernel<<<grid, 256, 0, stream>>>(x, u8, words, y, g.batch, g.in_channels, plane,
                                                 cp);
  check(cudaGetLastError(), "qconv_to_nhwc_kernel");
}

bool launch_qconv_im2col_nhwc(const int8_t* x, bool u8, const int32_t* zero_point, int8_t* col,
                              const QConvGeometry& g, int64_t cp, cudaStream_t stream) {
  const int64_t word = cp % 16 == 0 ? 16 : 4;
  const int64_t total = g.batch * g.out[1] * g.out[2] * g.kernel[1] * g.kernel[2] * (cp / word);
  const int64_t x_words = g.batch * g.in[1] * g.in[2] * (cp / word);
  if (cp % 4 != 0 || total >= (int64_t{1} << 31) || x_words >= (int64_t{1} << 31)) return false;
  if (total == 0) return true;
  const auto u = [](int64_t v) { return static_cast<uint32_t>(v); };
  const Im2colGeometry ig{u(g.in[1]), u(g.in[2]), u(g.out[1]), u(g.out[2]), u(g.kernel[1]),
                          u(g.kernel[2]), u(g.stride[1]), u(g.stride[2]), u(g.dilation[1]),
                          u(g.dilation[2]), u(cp / word), static_cast<int32_t>(g.pad[1]),
                          static_cast<int32_t>(g.pad[2])};
  if (word == 16) {
    qconv_im2col_nhwc_kernel<int4><<<grid_for(total), kThreads, 0, stream>>>(
        reinterpret_cast<const int4*>(x), reinterpret_cast<int4*>(col), u(total), ig, u8,
        zero_point);
  } else {
    qconv_im2col_nhwc_kernel<int32_t><<<grid_for(total), kThreads, 0, stream>>>(
        reinterpret_cast<const int32_t*>(x), reinterpret_cast<int32_t*>(col), u(total), ig, u8,
        zero_point);
  }
  check(cudaGetLastError(), "qconv_im2col_nhwc_kernel");
  return true;
}

void launch_qconv_direct(const void* x, bool u8, bool fp8, const int32_t* zero_point,
                         const void* w, void* out, DataType float_type, const QConvGeometry& g,
                         const ProductEpilogue& e, cudaStream_t stream) {
  const int64_t total = g.batch * g.out_channels * g.out[0] * g.out[1] * g.out[2];
  if (total == 0) return;
  dispatch_float_storage(float_type, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    if (fp8) {
      qconv_direct_kernel<TO, true><<<grid_for(total), kThreads, 0, stream>>>(
          x, false, nullptr, w, out, total, g, e);
    } else {
      qconv_direct_kernel<TO, false><<<grid_for(total), kThreads, 0, stream>>>(
          x, u8, zero_point, w, out, total, g, e);
    }
  });
  check(cudaGetLastError(), "qconv_direct_kernel");
}

}  // namespace ember::engine::cuda
