// CPU reference kernels of the quantization family: Quantize, Dequantize and the fused
// QuantizedMatrixMultiply.
//
// The math is PyTorch's quantized_decomposed ops (torch/ao/quantization/fx/_decomposed.py), so an
// engine built from a PT2E program gives the bytes PyTorch gives: x * (1 / scale) in f32, round
// half to even (std::nearbyint in the default rounding mode, as torch.round), + zero_point,
// clamp, convert; and (q - zero_point) * scale in f32.
#include "backends/semantics/quantize.h"

#include <cmath>

#include "backends/cpu/kernels.h"

namespace ember::engine::cpu {

namespace {

/// Channel count and the number of elements per step of the channel axis (1 per-tensor).
struct ChannelWalk {
  int64_t channels = 1;
  int64_t inner = 1;
  int64_t channel(int64_t i) const { return channels == 1 ? 0 : (i / inner) % channels; }
};

ChannelWalk channel_walk(const std::vector<int64_t>& dims, bool per_channel, int64_t axis) {
  ChannelWalk w;
  if (!per_channel) return w;
  w.channels = dims[axis];
  for (size_t d = static_cast<size_t>(axis) + 1; d < dims.size(); ++d) w.inner *= dims[d];
  return w;
}

/// The per-channel (or single) scales' reciprocals and zero points.
struct QuantParams {
  std::vector<float> inv_scale;
  std::vector<float> scale;
  std::vector<float> zero_point;
};

QuantParams read_params(const KernelArgs& a, int64_t channels) {
  QuantParams q;
  const float* s = a.in(1).as<const float>();
  for (int64_t c = 0; c < channels; ++c) {
    q.scale.push_back(s[c]);
    q.inv_scale.push_back(semantics::quant_inv_scale(s[c]));
    q.zero_point.push_back(a.has(2) ? static_cast<float>(a.in(2).as<const int32_t>()[c]) : 0.0f);
  }
  return q;
}

}  // namespace

void run(const QuantizeParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  HostTensor& out = a.out();
  const ChannelWalk w = channel_walk(x.dims, p.per_channel, p.axis);
  const QuantParams q = read_params(a, w.channels);
  const float lo = static_cast<float>(p.quant_min), hi = static_cast<float>(p.quant_max);
  parallel_for(x.numel(), 2, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = w.channel(i);
      const float v = load_float(x.dtype, x.data, i);
      if (p.to == DataType::kF8E4M3) {
        out.as<uint8_t>()[i] = f32_to_f8e4m3(v * q.inv_scale[c]);
      } else {
        const float r = semantics::quant_round_clamp(v, q.inv_scale[c], q.zero_point[c], lo, hi);
        store_int(p.to, out.data, i, static_cast<int64_t>(r));
      }
    }
  });
}

void run(const DequantizeParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  HostTensor& out = a.out();
  const ChannelWalk w = channel_walk(x.dims, p.per_channel, p.axis);
  const QuantParams q = read_params(a, w.channels);
  parallel_for(x.numel(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = w.channel(i);
      store_float(p.to, out.data, i,
                  (load_float(x.dtype, x.data, i) - q.zero_point[c]) * q.scale[c]);
    }
  });
}

void run(const QuantizedMatrixMultiplyParams& p, const KernelArgs& a) {
  const HostTensor& at = a.in(0);
  const HostTensor& bt = a.in(1);
  HostTensor& out = a.out();
  const int64_t k = at.dims.back();
  const int64_t n = bt.dims[0];
  const int64_t m = k == 0 ? out.numel() / (n == 0 ? 1 : n) : at.numel() / k;
  const float sa = a.in(2).as<const float>()[0];
  const HostTensor& sbt = a.in(3);
  const float* sb = sbt.as<const float>();
  const bool per_column = sbt.numel() > 1;
  if (at.dtype == DataType::kI8) {
    const auto* qa = at.as<const int8_t>();
    const auto* qb = bt.as<const int8_t>();
    parallel_for(m, n * k + 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          int32_t acc = 0;  // |sum| <= 128 * 128 * k: exact for k < 2^17
          for (int64_t t = 0; t < k; ++t) acc += int32_t{qa[i * k + t]} * int32_t{qb[j * k + t]};
          store_float(p.out, out.data, i * n + j,
                      static_cast<float>(acc) * sa * sb[per_column ? j : 0]);
        }
      }
    });
    return;
  }
  // f8e4m3: products of two E4M3 values are exact in f32; the sum rounds as an f32 GEMM does.
  std::vector<float> fa(static_cast<size_t>(m * k)), fb(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < m * k; ++i) fa[i] = f8e4m3_to_f32(at.as<const uint8_t>()[i]);
  for (int64_t i = 0; i < n * k; ++i) fb[i] = f8e4m3_to_f32(bt.as<const uint8_t>()[i]);
  parallel_for(m, n * k + 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int64_t t = 0; t < k; ++t) acc += fa[i * k + t] * fb[j * k + t];
        store_float(p.out, out.data, i * n + j, acc * sa * sb[0]);
      }
    }
  });
}

}  // namespace ember::engine::cpu
