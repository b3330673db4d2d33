// CPU reference kernels of the quantization family: Quantize, Dequantize and the fused
// QuantizedMatrixMultiply and QuantizedConvolution.
//
// The math is PyTorch's quantized_decomposed ops (torch/ao/quantization/fx/_decomposed.py), so an
// engine built from a PT2E program gives the bytes PyTorch gives: x * (1 / scale) in f32, round
// half to even (std::nearbyint in the default rounding mode, as torch.round), + zero_point,
// clamp, convert; and (q - zero_point) * scale in f32.
#include "backends/semantics/conv_geometry.h"
#include "backends/semantics/quantize.h"

#include "backends/semantics/activation.h"

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

/// `v` rounded to the float type `t` (f32, f16 or bf16).
float rounded(DataType t, float v) {
  alignas(8) uint8_t tmp[8];  // room for any dtype store_float handles
  store_float(t, tmp, 0, v);
  return load_float(t, tmp, 0);
}

/// What a fused product does with each value after its scales and bias (layers.h): round to
/// the float type `out`, apply the epilogue's activation (rounding again), then requantize to
/// i8 or f8e4m3, or store the float.
struct ProductFinish {
  DataType out = DataType::kF32;
  bool activation = false;
  ActivationType type = ActivationType::kRelu;
  float alpha = 0.0f, beta = 0.0f;
  bool requantize = false;
  DataType requantize_to = DataType::kI8;
  float inv_out_scale = 1.0f, lo = -128.0f, hi = 127.0f;

  ProductFinish(DataType out_type, const Epilogue& e, const Requantize& r, const KernelArgs& a,
                size_t out_scale_index)
      : out(out_type),
        activation(e.fused_activation),
        type(e.activation),
        alpha(static_cast<float>(e.alpha)),
        beta(static_cast<float>(e.beta)),
        requantize(r.enabled),
        requantize_to(r.to),
        lo(static_cast<float>(r.quant_min)),
        hi(static_cast<float>(r.quant_max)) {
    if (requantize) {
      inv_out_scale = semantics::quant_inv_scale(a.in(out_scale_index).as<const float>()[0]);
    }
  }

  void store(void* data, int64_t i, float v) const {
    float y = rounded(out, v);
    if (activation) y = rounded(out, semantics::activation(type, y, alpha, beta));
    if (requantize && requantize_to == DataType::kF8E4M3) {
      static_cast<uint8_t*>(data)[i] = f32_to_f8e4m3(y * inv_out_scale);  // Quantize's FP8 math
    } else if (requantize) {
      static_cast<int8_t*>(data)[i] =
          static_cast<int8_t>(semantics::quant_round_clamp(y, inv_out_scale, 0.0f, lo, hi));
    } else {
      store_float(out, data, i, y);
    }
  }
};

/// The int8 product's activation (input 0: i8 or u8) minus its zero point (input 6, 0 when
/// absent), as int16 (|x - zp| <= 383): what the exact integer sums multiply.
std::vector<int16_t> centered_activation(const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  const int32_t zp = a.has(6) ? a.in(6).as<const int32_t>()[0] : 0;
  std::vector<int16_t> out(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int32_t v = x.dtype == DataType::kU8 ? int32_t{x.as<const uint8_t>()[i]}
                                               : int32_t{x.as<const int8_t>()[i]};
    out[static_cast<size_t>(i)] = static_cast<int16_t>(v - zp);
  }
  return out;
}

/// The bias of a fused product (input `index`, `n` values of the output's float type) as f32,
/// or zeros when absent.
std::vector<float> product_bias(const KernelArgs& a, size_t index, int64_t n) {
  std::vector<float> bias(static_cast<size_t>(n), 0.0f);
  if (a.has(index)) {
    for (int64_t j = 0; j < n; ++j) bias[j] = load_float(a.in(index).dtype, a.in(index).data, j);
  }
  return bias;
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
  const std::vector<float> bias = product_bias(a, 4, n);
  const ProductFinish finish(p.out, p.epilogue, p.requantize, a, 5);
  const auto scale = static_cast<float>(p.epilogue.scale);
  const HostTensor* residual = a.has(7) ? &a.in(7) : nullptr;  // [..., M, N] like the output
  auto store = [&](int64_t i, int64_t j, float sum) {
    const float r = residual != nullptr ? load_float(residual->dtype, residual->data, i * n + j)
                                        : 0.0f;
    finish.store(out.data, i * n + j,
                 semantics::quantized_product_value(sum, sa * sb[per_column ? j : 0], scale,
                                                    bias[static_cast<size_t>(j)], r));
  };
  if (at.dtype != DataType::kF8E4M3) {
    const std::vector<int16_t> centered = centered_activation(a);
    const int16_t* qa = centered.data();
    const auto* qb = bt.as<const int8_t>();
    parallel_for(m, n * k + 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          int32_t acc = 0;  // |sum| <= 383 * 128 * k: exact for k < 2^15
          for (int64_t t = 0; t < k; ++t) acc += int32_t{qa[i * k + t]} * int32_t{qb[j * k + t]};
          store(i, j, static_cast<float>(acc));
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
        store(i, j, acc);
      }
    }
  });
}


namespace {

/// The sums of a quantized convolution over `x` and `w` (int16 centered int8 values and int8
/// weights into an int32 Acc, or f32 values of FP8 ones into an f32 Acc), each output element
/// handed to store(flat output index, output channel, sum). NCHW x, KCRS w and an NCHW output,
/// or (s.channels_last) NHWC, KRSC and NHWC: the same sums in the same order, only the strides
/// differ, so both layouts give the same bits.
template <typename Acc, typename X, typename W, typename Store>
void qconv_sums(const semantics::ConvGeometry& s, const X* x, const W* w, Store&& store) {
  const int64_t cg = s.in_channels / s.groups, kg = s.out_channels / s.groups;
  const int64_t in_plane = s.in[0] * s.in[1] * s.in[2];
  const int64_t out_plane = s.out[0] * s.out[1] * s.out[2];
  const int64_t taps = s.kernel[0] * s.kernel[1] * s.kernel[2];
  const bool cl = s.channels_last;
  // Element strides of a channel and of a spatial position (x) or tap (w).
  const int64_t x_c = cl ? 1 : in_plane, x_sp = cl ? s.in_channels : 1;
  const int64_t w_c = cl ? 1 : taps, w_t = cl ? cg : 1;
  // One (n, k) output plane per work item.
  parallel_for(s.batch * s.out_channels, out_plane * cg * taps + 1,
               [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / s.out_channels, k = item % s.out_channels;
      const int64_t c0 = (k / kg) * cg;
      const W* wk = w + k * cg * taps;
      for (int64_t o = 0; o < out_plane; ++o) {
        const int64_t o0 = o / (s.out[1] * s.out[2]);
        const int64_t o1 = (o / s.out[2]) % s.out[1];
        const int64_t o2 = o % s.out[2];
        // int8: |sum| <= 383 * 128 * cg * taps, exact for cg * taps < 2^15.
        Acc acc = 0;
        for (int64_t c = 0; c < cg; ++c) {
          const X* xc = x + n * s.in_channels * in_plane + (c0 + c) * x_c;
          const W* wc = wk + c * w_c;
          for (int64_t t0 = 0; t0 < s.kernel[0]; ++t0) {
            const int64_t i0 = o0 * s.stride[0] - s.pad[0] + t0 * s.dilation[0];
            if (i0 < 0 || i0 >= s.in[0]) continue;
            for (int64_t t1 = 0; t1 < s.kernel[1]; ++t1) {
              const int64_t i1 = o1 * s.stride[1] - s.pad[1] + t1 * s.dilation[1];
              if (i1 < 0 || i1 >= s.in[1]) continue;
              const X* xrow = xc + (i0 * s.in[1] + i1) * s.in[2] * x_sp;
              const W* wrow = wc + (t0 * s.kernel[1] + t1) * s.kernel[2] * w_t;
              for (int64_t t2 = 0; t2 < s.kernel[2]; ++t2) {
                const int64_t i2 = o2 * s.stride[2] - s.pad[2] + t2 * s.dilation[2];
                if (i2 < 0 || i2 >= s.in[2]) continue;
                acc += static_cast<Acc>(xrow[i2 * x_sp]) * static_cast<Acc>(wrow[t2 * w_t]);
              }
            }
          }
        }
        const int64_t at = cl ? (n * out_plane + o) * s.out_channels + k : item * out_plane + o;
        store(at, k, static_cast<float>(acc));
      }
    }
  });
}

std::vector<float> f8_values(const HostTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = f8e4m3_to_f32(t.as<const uint8_t>()[i]);
  return v;
}

}  // namespace

void run(const QuantizedConvolutionParams& p, const KernelArgs& a) {
  const HostTensor& xt = a.in(0);
  const HostTensor& wt = a.in(1);
  HostTensor& ot = a.out();
  const semantics::ConvGeometry s = semantics::conv_geometry(p, xt.dims, wt.dims, ot.dims);
  const float xs = a.in(2).as<const float>()[0];
  const HostTensor& wst = a.in(3);
  const float* ws = wst.as<const float>();
  const bool per_channel = wst.numel() > 1;
  const std::vector<float> bias = product_bias(a, 4, s.out_channels);
  const ProductFinish finish(p.out, p.epilogue, p.requantize, a, 5);
  const auto scale = static_cast<float>(p.epilogue.scale);
  const HostTensor* residual = a.has(7) ? &a.in(7) : nullptr;  // the output's shape and layout
  // An i8 residual reads as the Dequantize it replaces: residual * residual_scale, rounded to
  // the float type.
  const float residual_scale = a.has(8) ? a.in(8).as<const float>()[0] : 0.0f;
  auto store = [&](int64_t i, int64_t k, float sum) {
    float r = 0.0f;
    if (residual != nullptr && residual->dtype == DataType::kI8) {
      r = rounded(p.out, static_cast<float>(residual->as<const int8_t>()[i]) * residual_scale);
    } else if (residual != nullptr) {
      r = load_float(residual->dtype, residual->data, i);
    }
    finish.store(ot.data, i,
                 semantics::quantized_product_value(sum, xs * ws[per_channel ? k : 0], scale,
                                                    bias[static_cast<size_t>(k)], r));
  };
  if (xt.dtype == DataType::kF8E4M3) {
    // Products of two E4M3 values are exact in f32; the sum rounds as an f32 convolution's.
    const std::vector<float> x = f8_values(xt), w = f8_values(wt);
    qconv_sums<float>(s, x.data(), w.data(), store);
    return;
  }
  const std::vector<int16_t> centered = centered_activation(a);  // x - x_zero_point
  qconv_sums<int32_t>(s, centered.data(), wt.as<const int8_t>(), store);
}

}  // namespace ember::engine::cpu
