// CUDA kernels of the quantization family: Quantize and Dequantize, one grid-stride pointwise
// pass each, and the scaling pass after the INT8 product's int32 GEMM (quantized_matmul.cpp).
// The arithmetic is backends/semantics/quantize.h (the CPU reference's); FP8 conversions are
// cuda_fp8.h's saturating round-to-nearest-even ones, which match half.h's f32_to_f8e4m3.
#include <cuda_fp8.h>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/quantize_kernels.h"
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

template <typename TI, QKind K>
__global__ void quantize_kernel(const TI* __restrict__ x, uint8_t* __restrict__ y, int64_t n,
                                Channels ch, float lo, float hi) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t c = ch.of(i);
    const float inv = semantics::quant_inv_scale(ch.scale[c]);
    const float v = Num<TI>::load(x[i]);
    if constexpr (K == QKind::kF8) {
      y[i] = __nv_cvt_float_to_fp8(v * inv, __NV_SATFINITE, __NV_E4M3);
    } else {
      const float zp = ch.zero_point ? static_cast<float>(ch.zero_point[c]) : 0.0f;
      const int r = static_cast<int>(semantics::quant_round_clamp(v, inv, zp, lo, hi));
      y[i] =
          K == QKind::kI8 ? static_cast<uint8_t>(static_cast<int8_t>(r)) : static_cast<uint8_t>(r);
    }
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

template <typename TO>
__global__ void scale_int32_kernel(const int32_t* __restrict__ acc, TO* __restrict__ out,
                                   int64_t total, int64_t n, const float* __restrict__ a_scale,
                                   const float* __restrict__ b_scale, bool per_column) {
  const float sa = a_scale[0];
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const float sb = b_scale[per_column ? i % n : 0];
    out[i] = Num<TO>::store(static_cast<float>(acc[i]) * sa * sb);
  }
}

}  // namespace

void launch_scale_int32_accumulator(const int32_t* acc, void* out, DataType out_dtype, int64_t m,
                                    int64_t n, const float* a_scale, const float* b_scale,
                                    bool per_column, cudaStream_t stream) {
  const int64_t total = m * n;
  dispatch_float_storage(out_dtype, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    scale_int32_kernel<TO><<<grid_for(total), kThreads, 0, stream>>>(
        acc, static_cast<TO*>(out), total, n, a_scale, b_scale, per_column);
  });
  check(cudaGetLastError(), "scale_int32_kernel");
}

void run(const QuantizeParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  DeviceTensor& out = a.out();
  const int64_t n = x.numel();
  if (n == 0) return;
  const Channels ch = channels_of(a, x.dims, p.per_channel, p.axis);
  const float lo = static_cast<float>(p.quant_min), hi = static_cast<float>(p.quant_max);
  auto* y = static_cast<uint8_t*>(out.data);
  dispatch_float_storage(x.dtype, [&](auto* tag) {
    using TI = std::remove_pointer_t<decltype(tag)>;
    const auto* xi = static_cast<const TI*>(x.data);
    switch (qkind(p.to)) {
      case QKind::kI8:
        quantize_kernel<TI, QKind::kI8>
            <<<grid_for(n), kThreads, 0, a.stream()>>>(xi, y, n, ch, lo, hi);
        break;
      case QKind::kU8:
        quantize_kernel<TI, QKind::kU8>
            <<<grid_for(n), kThreads, 0, a.stream()>>>(xi, y, n, ch, lo, hi);
        break;
      case QKind::kF8:
        quantize_kernel<TI, QKind::kF8>
            <<<grid_for(n), kThreads, 0, a.stream()>>>(xi, y, n, ch, lo, hi);
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

}  // namespace ember::engine::cuda
