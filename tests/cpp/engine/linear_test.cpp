// Tests of the linear family (Convolution, Deconvolution, Pooling, MatrixMultiply) against naive
// reference loops written here from PyTorch's definitions, through builder -> plan -> runtime.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backends/cpu/kernels.h"
#include "ember/engine/network.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;
using test::expect_error;

constexpr DataType kFloatTypes[] = {DataType::kF32, DataType::kF16, DataType::kBF16};

// ---------------------------------------------------------------- index helpers

int64_t numel(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

/// Multi-index of flat index i in row-major dims.
std::vector<int64_t> unravel(int64_t i, const std::vector<int64_t>& dims) {
  std::vector<int64_t> idx(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    idx[d] = i % dims[d];
    i /= dims[d];
  }
  return idx;
}

/// Every multi-index of dims, in row-major order.
std::vector<std::vector<int64_t>> all_indices(const std::vector<int64_t>& dims) {
  std::vector<std::vector<int64_t>> v;
  for (int64_t i = 0; i < numel(dims); ++i) v.push_back(unravel(i, dims));
  return v;
}

std::vector<int64_t> tail(const std::vector<int64_t>& v, size_t from) {
  return std::vector<int64_t>(v.begin() + static_cast<std::ptrdiff_t>(from), v.end());
}

/// Expects a float result: dims equal and values close for the output dtype.
void expect_result(const TestTensor& actual, const std::vector<int64_t>& dims,
                   const std::vector<float>& expected, const std::string& what) {
  ASSERT_EQ(actual.dims, dims) << what;
  test::expect_close(actual, expected, actual.dtype, what);
}

// ---------------------------------------------------------------- convolution reference

/// PyTorch conv output size with asymmetric padding.
int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t pb, int64_t pe, int64_t d) {
  return (in + pb + pe - d * (k - 1) - 1) / s + 1;
}

std::vector<int64_t> conv_out_dims(const std::vector<int64_t>& xd, const std::vector<int64_t>& wd,
                                   const ConvolutionParams& p) {
  std::vector<int64_t> od{xd[0], wd[0]};
  for (size_t d = 0; d + 2 < xd.size(); ++d) {
    od.push_back(conv_out(xd[2 + d], wd[2 + d], p.stride[d], p.padding_begin[d], p.padding_end[d],
                          p.dilation[d]));
  }
  return od;
}

/// out[n, k, o] = bias[k] + sum_{c, t} x[n, g*Cg + c, o*s - pb + t*d] * w[k, c, t].
std::vector<float> ref_conv(const std::vector<float>& x, const std::vector<int64_t>& xd,
                            const std::vector<float>& w, const std::vector<int64_t>& wd,
                            const std::vector<float>* bias, const ConvolutionParams& p) {
  const std::vector<int64_t> od = conv_out_dims(xd, wd, p);
  const size_t nsp = xd.size() - 2;
  const std::vector<int64_t> xs = tail(xd, 2), ks = tail(wd, 2), os = tail(od, 2);
  const int64_t cg = wd[1], kg = wd[0] / p.groups;
  const std::vector<std::vector<int64_t>> taps = all_indices(ks);
  std::vector<float> out(static_cast<size_t>(numel(od)));
  for (int64_t i = 0; i < numel(od); ++i) {
    const int64_t n = i / (od[1] * numel(os)), k = (i / numel(os)) % od[1];
    const std::vector<int64_t> o = unravel(i % numel(os), os);
    double acc = bias ? (*bias)[k] : 0.0;
    const int64_t g = k / kg;
    for (int64_t c = 0; c < cg; ++c) {
      for (int64_t t = 0; t < numel(ks); ++t) {
        const std::vector<int64_t>& tap = taps[t];
        int64_t xi = n * xd[1] + g * cg + c;
        bool inside = true;
        for (size_t d = 0; d < nsp; ++d) {
          const int64_t pos = o[d] * p.stride[d] - p.padding_begin[d] + tap[d] * p.dilation[d];
          inside = inside && pos >= 0 && pos < xs[d];
          xi = xi * xs[d] + pos;
        }
        if (inside) acc += static_cast<double>(x[xi]) * w[(k * cg + c) * numel(ks) + t];
      }
    }
    out[i] = static_cast<float>(acc);
  }
  return out;
}

ConvolutionParams conv_params(std::vector<int64_t> stride, std::vector<int64_t> pb,
                              std::vector<int64_t> pe, std::vector<int64_t> dil, int64_t groups) {
  ConvolutionParams p;
  p.stride = std::move(stride);
  p.padding_begin = std::move(pb);
  p.padding_end = std::move(pe);
  p.dilation = std::move(dil);
  p.groups = groups;
  return p;
}

/// Runs one convolution (weights and bias as network inputs, or as constants) and checks it
/// against the reference.
void check_conv(DataType dt, const std::vector<int64_t>& xd, const std::vector<int64_t>& wd,
                bool with_bias, const ConvolutionParams& p, const std::string& what,
                bool constant_weights = false) {
  const TestTensor x = TestTensor::random(dt, xd, 1);
  const TestTensor w = TestTensor::random(dt, wd, 2);
  const TestTensor b = TestTensor::random(dt, {wd[0]}, 3);
  Network net;
  Tensor* xi = net.add_input("x", dt, shape_from_dims(xd));
  std::vector<TestTensor> inputs{x};
  Tensor* wi;
  Tensor* bi = nullptr;
  if (constant_weights) {
    wi = net.add_constant(Weights::copy(dt, wd, w.bytes.data()))->output();
    if (with_bias) bi = net.add_constant(Weights::copy(dt, {wd[0]}, b.bytes.data()))->output();
  } else {
    wi = net.add_input("w", dt, shape_from_dims(wd));
    inputs.push_back(w);
    if (with_bias) {
      bi = net.add_input("b", dt, Shape{wd[0]});
      inputs.push_back(b);
    }
  }
  net.mark_output(net.add_convolution(xi, wi, bi, p, "conv")->output());
  const auto out = test::run_network(net, inputs);
  const std::vector<float> bf = b.to_floats();
  expect_result(out[0], conv_out_dims(xd, wd, p),
                ref_conv(x.to_floats(), xd, w.to_floats(), wd, with_bias ? &bf : nullptr, p),
                what + " " + dtype_name(dt));
}

// ---------------------------------------------------------------- deconvolution reference

DeconvolutionParams deconv_params(std::vector<int64_t> stride, std::vector<int64_t> pb,
                                  std::vector<int64_t> pe, std::vector<int64_t> dil,
                                  std::vector<int64_t> output_padding, int64_t groups) {
  DeconvolutionParams p;
  p.stride = std::move(stride);
  p.padding_begin = std::move(pb);
  p.padding_end = std::move(pe);
  p.dilation = std::move(dil);
  p.output_padding = std::move(output_padding);
  p.groups = groups;
  return p;
}

std::vector<int64_t> deconv_out_dims(const std::vector<int64_t>& xd, const std::vector<int64_t>& wd,
                                     const DeconvolutionParams& p) {
  std::vector<int64_t> od{xd[0], wd[1] * p.groups};
  for (size_t d = 0; d + 2 < xd.size(); ++d) {
    od.push_back((xd[2 + d] - 1) * p.stride[d] - p.padding_begin[d] - p.padding_end[d] +
                 p.dilation[d] * (wd[2 + d] - 1) + p.output_padding[d] + 1);
  }
  return od;
}

/// Scatter form: out[n, g*Kg + k, i*s - pb + t*d] += x[n, c, i] * w[c, k, t].
std::vector<float> ref_deconv(const std::vector<float>& x, const std::vector<int64_t>& xd,
                              const std::vector<float>& w, const std::vector<int64_t>& wd,
                              const std::vector<float>* bias, const DeconvolutionParams& p) {
  const std::vector<int64_t> od = deconv_out_dims(xd, wd, p);
  const size_t nsp = xd.size() - 2;
  const std::vector<int64_t> xs = tail(xd, 2), ks = tail(wd, 2), os = tail(od, 2);
  const int64_t cg = xd[1] / p.groups, kg = wd[1];
  const std::vector<std::vector<int64_t>> taps = all_indices(ks);
  std::vector<double> acc(static_cast<size_t>(numel(od)), 0.0);
  for (int64_t i = 0; i < numel(od); ++i) acc[i] = bias ? (*bias)[(i / numel(os)) % od[1]] : 0.0;
  for (int64_t i = 0; i < numel(xd); ++i) {
    const int64_t n = i / (xd[1] * numel(xs)), c = (i / numel(xs)) % xd[1];
    const std::vector<int64_t> in = unravel(i % numel(xs), xs);
    const int64_t g = c / cg;
    for (int64_t k = 0; k < kg; ++k) {
      for (int64_t t = 0; t < numel(ks); ++t) {
        const std::vector<int64_t>& tap = taps[t];
        int64_t oi = n * od[1] + g * kg + k;
        bool inside = true;
        for (size_t d = 0; d < nsp; ++d) {
          const int64_t pos = in[d] * p.stride[d] - p.padding_begin[d] + tap[d] * p.dilation[d];
          inside = inside && pos >= 0 && pos < os[d];
          oi = oi * os[d] + pos;
        }
        if (inside) acc[oi] += static_cast<double>(x[i]) * w[(c * kg + k) * numel(ks) + t];
      }
    }
  }
  return std::vector<float>(acc.begin(), acc.end());
}

void check_deconv(DataType dt, const std::vector<int64_t>& xd, const std::vector<int64_t>& wd,
                  bool with_bias, const DeconvolutionParams& p, const std::string& what) {
  const TestTensor x = TestTensor::random(dt, xd, 4);
  const TestTensor w = TestTensor::random(dt, wd, 5);
  const TestTensor b = TestTensor::random(dt, {wd[1] * p.groups}, 6);
  Network net;
  Tensor* xi = net.add_input("x", dt, shape_from_dims(xd));
  Tensor* wi = net.add_input("w", dt, shape_from_dims(wd));
  Tensor* bi = with_bias ? net.add_input("b", dt, shape_from_dims(b.dims)) : nullptr;
  net.mark_output(net.add_deconvolution(xi, wi, bi, p, "deconv")->output());
  std::vector<TestTensor> inputs{x, w};
  if (with_bias) inputs.push_back(b);
  const auto out = test::run_network(net, inputs);
  const std::vector<float> bf = b.to_floats();
  expect_result(out[0], deconv_out_dims(xd, wd, p),
                ref_deconv(x.to_floats(), xd, w.to_floats(), wd, with_bias ? &bf : nullptr, p),
                what + " " + dtype_name(dt));
}

// ---------------------------------------------------------------- pooling reference

PoolingParams pool_params(PoolingType type, std::vector<int64_t> window,
                          std::vector<int64_t> stride, std::vector<int64_t> pb,
                          std::vector<int64_t> pe, std::vector<int64_t> dil = {}) {
  PoolingParams p;
  p.type = type;
  p.window = std::move(window);
  p.stride = std::move(stride);
  p.padding_begin = std::move(pb);
  p.padding_end = std::move(pe);
  p.dilation = dil.empty() ? std::vector<int64_t>(p.window.size(), 1) : std::move(dil);
  return p;
}

/// torch's pooling_output_shape, with pad_l + pad_r for 2 * pad.
int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t pl, int64_t pr, int64_t d, bool ceil) {
  const int64_t num = in + pl + pr - d * (k - 1) - 1 + (ceil ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil && (out - 1) * s >= in + pl) --out;
  return out;
}

std::vector<int64_t> pool_out_dims(const std::vector<int64_t>& xd, const PoolingParams& p) {
  const size_t nsp = p.window.size(), first = xd.size() - nsp;
  std::vector<int64_t> od(xd.begin(), xd.begin() + static_cast<std::ptrdiff_t>(first));
  for (size_t d = 0; d < nsp; ++d) {
    od.push_back(pool_out(xd[first + d], p.window[d], p.stride[d], p.padding_begin[d],
                          p.padding_end[d], p.dilation[d], p.ceil_mode));
  }
  return od;
}

/// Max: NaN wins, padding never does. Average: torch's avg_pool (hend = min(hstart + k,
/// in + pad_end) sets the count_include_pad divisor before clipping to the input).
std::vector<double> ref_pool(const std::vector<double>& x, const std::vector<int64_t>& xd,
                             const PoolingParams& p) {
  const std::vector<int64_t> od = pool_out_dims(xd, p);
  const size_t nsp = p.window.size(), first = xd.size() - nsp;
  const std::vector<int64_t> xs = tail(xd, first), os = tail(od, first);
  std::vector<double> out(static_cast<size_t>(numel(od)));
  for (int64_t i = 0; i < numel(od); ++i) {
    const int64_t plane = i / numel(os);
    const std::vector<int64_t> o = unravel(i % numel(os), os);
    double best = -std::numeric_limits<double>::infinity(), sum = 0;
    int64_t padded_count = 1, valid_count = 0;
    for (size_t d = 0; d < nsp; ++d) {
      const int64_t start = o[d] * p.stride[d] - p.padding_begin[d];
      padded_count *= std::min(start + p.window[d], xs[d] + p.padding_end[d]) - start;
    }
    for (int64_t t = 0; t < numel(p.window); ++t) {
      const std::vector<int64_t> tap = unravel(t, p.window);
      int64_t xi = plane;
      bool inside = true;
      for (size_t d = 0; d < nsp; ++d) {
        const int64_t pos = o[d] * p.stride[d] - p.padding_begin[d] + tap[d] * p.dilation[d];
        inside = inside && pos >= 0 && pos < xs[d];
        xi = xi * xs[d] + pos;
      }
      if (!inside) continue;
      const double v = x[xi];
      if (v > best || std::isnan(v)) best = v;
      sum += v;
      ++valid_count;
    }
    if (p.type == PoolingType::kMax) {
      out[i] = best;
    } else {
      const int64_t div = p.divisor_override > 0 ? p.divisor_override
                          : p.count_include_pad  ? padded_count
                                                 : valid_count;
      out[i] = sum / static_cast<double>(div);
    }
  }
  return out;
}

TestTensor run_pool(const TestTensor& x, const PoolingParams& p) {
  Network net;
  Tensor* xi = net.add_input("x", x.dtype, shape_from_dims(x.dims));
  net.mark_output(net.add_pooling(xi, p, "pool")->output());
  return test::run_network(net, {x})[0];
}

void check_pool(DataType dt, const std::vector<int64_t>& xd, const PoolingParams& p,
                const std::string& what) {
  const TestTensor x = TestTensor::random(dt, xd, 7, -4.0f, 4.0f);
  const TestTensor out = run_pool(x, p);
  const std::vector<float> xf = x.to_floats();
  const std::vector<double> ref = ref_pool(std::vector<double>(xf.begin(), xf.end()), xd, p);
  expect_result(out, pool_out_dims(xd, p), std::vector<float>(ref.begin(), ref.end()),
                what + " " + dtype_name(dt));
}

// ---------------------------------------------------------------- matmul reference

/// numpy.matmul of a and b after the transpose flags (rank >= 2 operands only).
std::vector<float> ref_matmul(const std::vector<float>& a, const std::vector<int64_t>& ad, bool ta,
                              const std::vector<float>& b, const std::vector<int64_t>& bd, bool tb,
                              std::vector<int64_t>* out_dims) {
  const size_t ra = ad.size(), rb = bd.size();
  const int64_t m = ra == 1 ? 1 : ad[ra - (ta ? 1 : 2)];
  const int64_t k = ra == 1 ? ad[0] : ad[ra - (ta ? 2 : 1)];
  const int64_t n = rb == 1 ? 1 : bd[rb - (tb ? 2 : 1)];
  std::vector<int64_t> abatch(ad.begin(), ad.end() - std::min<size_t>(ra, 2));
  std::vector<int64_t> bbatch(bd.begin(), bd.end() - std::min<size_t>(rb, 2));
  const size_t r = std::max(abatch.size(), bbatch.size());
  abatch.insert(abatch.begin(), r - abatch.size(), 1);
  bbatch.insert(bbatch.begin(), r - bbatch.size(), 1);
  std::vector<int64_t> batch(r);
  for (size_t d = 0; d < r; ++d) batch[d] = std::max(abatch[d], bbatch[d]);
  *out_dims = batch;
  if (ra >= 2) out_dims->push_back(m);
  if (rb >= 2) out_dims->push_back(n);
  std::vector<float> out;
  for (int64_t bi = 0; bi < numel(batch); ++bi) {
    const std::vector<int64_t> idx = unravel(bi, batch);
    int64_t ai = 0, bj = 0;
    for (size_t d = 0; d < r; ++d) {
      ai = ai * abatch[d] + (abatch[d] == 1 ? 0 : idx[d]);
      bj = bj * bbatch[d] + (bbatch[d] == 1 ? 0 : idx[d]);
    }
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t q = 0; q < k; ++q) {
          const float av = ra == 1 ? a[q]
                           : ta    ? a[ai * m * k + q * m + i]
                                   : a[ai * m * k + i * k + q];
          const float bv = rb == 1 ? b[q]
                           : tb    ? b[bj * k * n + j * k + q]
                                   : b[bj * k * n + q * n + j];
          acc += static_cast<double>(av) * bv;
        }
        out.push_back(static_cast<float>(acc));
      }
    }
  }
  return out;
}

void check_matmul(DataType dt, const std::vector<int64_t>& ad, bool ta,
                  const std::vector<int64_t>& bd, bool tb, const std::string& what) {
  const TestTensor a = TestTensor::random(dt, ad, 8);
  const TestTensor b = TestTensor::random(dt, bd, 9);
  Network net;
  Tensor* ai = net.add_input("a", dt, shape_from_dims(ad));
  Tensor* bi = net.add_input("b", dt, shape_from_dims(bd));
  net.mark_output(net.add_matrix_multiply(ai, ta, bi, tb, "mm")->output());
  const auto out = test::run_network(net, {a, b});
  std::vector<int64_t> od;
  const std::vector<float> ref = ref_matmul(a.to_floats(), ad, ta, b.to_floats(), bd, tb, &od);
  expect_result(out[0], od, ref, what + " " + dtype_name(dt));
}

// ================================================================ Convolution

TEST(ConvolutionLayer, Conv2dBasic) {
  check_conv(DataType::kF32, {2, 3, 7, 6}, {4, 3, 3, 3}, true,
             conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1), "conv2d 3x3 pad 1");
  check_conv(DataType::kF32, {2, 3, 7, 6}, {4, 3, 3, 3}, false,
             conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 1), "conv2d 3x3 no pad, no bias");
}

TEST(ConvolutionLayer, Conv2dStridePaddingDilationAsymmetric) {
  check_conv(DataType::kF32, {1, 3, 9, 10}, {5, 3, 3, 2}, true,
             conv_params({2, 3}, {1, 0}, {2, 1}, {2, 1}, 1), "conv2d asymmetric");
  check_conv(DataType::kF32, {2, 2, 8, 8}, {3, 2, 3, 3}, false,
             conv_params({3, 2}, {0, 2}, {1, 0}, {1, 3}, 1), "conv2d dilation 3");
}

TEST(ConvolutionLayer, Conv1d) {
  check_conv(DataType::kF32, {2, 4, 11}, {6, 4, 3}, false, conv_params({2}, {1}, {0}, {2}, 1),
             "conv1d");
  check_conv(DataType::kF32, {1, 2, 5}, {3, 2, 5}, true, conv_params({1}, {0}, {0}, {1}, 1),
             "conv1d kernel = input");
}

TEST(ConvolutionLayer, Conv3d) {
  check_conv(DataType::kF32, {1, 2, 5, 6, 4}, {3, 2, 2, 3, 2}, true,
             conv_params({1, 2, 1}, {1, 0, 1}, {0, 1, 0}, {1, 1, 2}, 1), "conv3d");
  check_conv(DataType::kF32, {2, 4, 3, 4, 5}, {4, 2, 1, 1, 1}, false,
             conv_params({1, 1, 1}, {0, 0, 0}, {0, 0, 0}, {1, 1, 1}, 2), "conv3d 1x1x1 groups 2");
}

TEST(ConvolutionLayer, Groups) {
  // Many channels per group: per-group GEMMs.
  check_conv(DataType::kF32, {2, 20, 6, 5}, {16, 10, 3, 3}, true,
             conv_params({1, 2}, {1, 1}, {0, 1}, {1, 1}, 2), "groups 2 (gemm)");
  // Few channels per group: the direct loop.
  check_conv(DataType::kF32, {2, 6, 7, 7}, {9, 2, 3, 3}, true,
             conv_params({2, 1}, {1, 0}, {1, 2}, {1, 2}, 3), "groups 3 (direct)");
}

TEST(ConvolutionLayer, Depthwise) {
  check_conv(DataType::kF32, {2, 8, 9, 9}, {8, 1, 3, 3}, true,
             conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 8), "depthwise stride 1");
  check_conv(DataType::kF32, {1, 8, 10, 9}, {16, 1, 3, 3}, false,
             conv_params({2, 2}, {1, 1}, {0, 1}, {1, 1}, 8), "depthwise multiplier 2 stride 2");
  check_conv(DataType::kF32, {1, 4, 12}, {4, 1, 5}, true, conv_params({1}, {4}, {0}, {2}, 4),
             "depthwise 1d causal dilated");
}

TEST(ConvolutionLayer, Pointwise) {
  check_conv(DataType::kF32, {2, 8, 5, 5}, {6, 8, 1, 1}, true,
             conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 1), "1x1");
  check_conv(DataType::kF32, {2, 8, 5, 6}, {6, 8, 1, 1}, false,
             conv_params({2, 2}, {0, 0}, {0, 0}, {1, 1}, 1), "1x1 stride 2");
  check_conv(DataType::kF32, {1, 4, 3, 3}, {2, 4, 1, 1}, true,
             conv_params({1, 1}, {1, 0}, {0, 1}, {1, 1}, 1), "1x1 padded");
}

TEST(ConvolutionLayer, LargeChunked) {
  // 64*9 rows x 100*100 columns exceeds the kernel's column budget: several GEMM chunks.
  check_conv(DataType::kF32, {1, 64, 100, 100}, {4, 64, 3, 3}, true,
             conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1), "chunked");
}

TEST(ConvolutionLayer, HalfTypes) {
  for (DataType dt : {DataType::kF16, DataType::kBF16}) {
    check_conv(dt, {2, 3, 6, 7}, {4, 3, 3, 3}, true, conv_params({2, 1}, {1, 1}, {1, 0}, {1, 1}, 1),
               "conv2d");
    check_conv(dt, {1, 6, 5, 5}, {6, 1, 3, 3}, true, conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 6),
               "depthwise");
    check_conv(dt, {1, 4, 9}, {2, 4, 3}, false, conv_params({1}, {0}, {0}, {1}, 1), "conv1d");
  }
}

TEST(ConvolutionLayer, ConstantWeights) {
  for (DataType dt : kFloatTypes) {
    check_conv(dt, {1, 3, 8, 8}, {8, 3, 3, 3}, true, conv_params({2, 2}, {1, 1}, {1, 1}, {1, 1}, 1),
               "constant weights", /*constant_weights=*/true);
  }
}

TEST(ConvolutionLayer, DynamicBatchAndSpatial) {
  const ConvolutionParams p = conv_params({2, 1}, {1, 1}, {0, 1}, {1, 1}, 1);
  Network net;
  Tensor* x =
      net.add_input("x", DataType::kF32, Shape{DimExpr::symbol("n"), 3, DimExpr::symbol("h"), 6});
  Tensor* w = net.add_input("w", DataType::kF32, Shape{4, 3, 3, 2});
  Layer* conv = net.add_convolution(x, w, nullptr, p, "conv");
  net.mark_output(conv->output());
  EXPECT_FALSE(shape_is_static(conv->output()->shape()));
  test::RunOptions opts;
  opts.profiles.push_back(
      OptimizationProfile().set_dimensions("x", {1, 3, 4, 6}, {2, 3, 8, 6}, {4, 3, 12, 6}));
  const TestTensor wt = TestTensor::random(DataType::kF32, {4, 3, 3, 2}, 11);
  for (const std::vector<int64_t>& xd :
       {std::vector<int64_t>{1, 3, 7, 6}, std::vector<int64_t>{3, 3, 12, 6}}) {
    const TestTensor xt = TestTensor::random(DataType::kF32, xd, 12);
    const auto out = test::run_network(net, {xt, wt}, opts);
    expect_result(out[0], conv_out_dims(xd, wt.dims, p),
                  ref_conv(xt.to_floats(), xd, wt.to_floats(), wt.dims, nullptr, p),
                  "dynamic n=" + std::to_string(xd[0]));
  }
}

TEST(ConvolutionLayer, RejectsBadInputs) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, Shape{1, 4, 8, 8});
  Tensor* w = net.add_input("w", DataType::kF32, Shape{6, 3, 3, 3});
  Tensor* w4 = net.add_input("w4", DataType::kF32, Shape{6, 4, 3, 3});
  Tensor* w2 = net.add_input("w2", DataType::kF32, Shape{6, 2, 3, 3});
  Tensor* big = net.add_input("big", DataType::kF32, Shape{6, 4, 9, 3});
  Tensor* xi = net.add_input("xi", DataType::kI32, Shape{1, 4, 8, 8});
  Tensor* wi = net.add_input("wi", DataType::kI32, Shape{6, 4, 3, 3});
  Tensor* xh = net.add_input("xh", DataType::kF16, Shape{1, 4, 8, 8});
  Tensor* b5 = net.add_input("b5", DataType::kF32, Shape{5});
  Tensor* x1 = net.add_input("x1", DataType::kF32, Shape{4, 8});
  const ConvolutionParams ok = conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 1);
  expect_error([&] { net.add_convolution(x, w, nullptr, ok, "c1"); },
               {"Convolution 'c1'", "input channels"});
  ConvolutionParams bad_stride = ok;
  bad_stride.stride = {1, 0};
  expect_error([&] { net.add_convolution(x, w4, nullptr, bad_stride, "c2"); },
               {"Convolution 'c2'", "stride[1]"});
  ConvolutionParams short_pad = ok;
  short_pad.padding_begin = {0};
  expect_error([&] { net.add_convolution(x, w4, nullptr, short_pad, "c3"); },
               {"Convolution 'c3'", "padding_begin"});
  ConvolutionParams neg_pad = ok;
  neg_pad.padding_end = {0, -1};
  expect_error([&] { net.add_convolution(x, w4, nullptr, neg_pad, "c4"); },
               {"Convolution 'c4'", "padding_end[1]"});
  ConvolutionParams zero_dil = ok;
  zero_dil.dilation = {0, 1};
  expect_error([&] { net.add_convolution(x, w4, nullptr, zero_dil, "c5"); },
               {"Convolution 'c5'", "dilation[0]"});
  expect_error([&] { net.add_convolution(xi, wi, nullptr, ok, "c6"); },
               {"Convolution 'c6'", "i32"});
  expect_error([&] { net.add_convolution(xh, w4, nullptr, ok, "c7"); },
               {"Convolution 'c7'", "dtype"});
  expect_error([&] { net.add_convolution(x, w4, b5, ok, "c8"); }, {"Convolution 'c8'", "bias"});
  expect_error([&] { net.add_convolution(x, big, nullptr, ok, "c9"); },
               {"Convolution 'c9'", "kernel"});
  expect_error([&] { net.add_convolution(x1, w4, nullptr, ok, "c10"); },
               {"Convolution 'c10'", "rank"});
  ConvolutionParams groups3 = ok;
  groups3.groups = 3;  // 6 output channels divide, but 2 * 3 != 4 input channels
  expect_error([&] { net.add_convolution(x, w2, nullptr, groups3, "c11"); },
               {"Convolution 'c11'", "groups"});
  ConvolutionParams groups0 = ok;
  groups0.groups = 0;
  expect_error([&] { net.add_convolution(x, w4, nullptr, groups0, "c12"); },
               {"Convolution 'c12'", "groups"});
  ConvolutionParams groups4 = ok;
  groups4.groups = 4;  // 4 * 1 input channels fit, but 6 output channels do not divide by 4
  Tensor* w1 = net.add_input("w1", DataType::kF32, Shape{6, 1, 3, 3});
  expect_error([&] { net.add_convolution(x, w1, nullptr, groups4, "c13"); },
               {"Convolution 'c13'", "divisible"});
  EXPECT_NO_THROW(
      net.add_convolution(x, w2, nullptr, conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 2), "good"));
}

TEST(ConvolutionLayer, SymbolicChannelMismatchFailsAtRunTime) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, Shape{1, DimExpr::symbol("c"), 5, 5});
  Tensor* w = net.add_input("w", DataType::kF32, Shape{2, 3, 3, 3});
  net.mark_output(
      net.add_convolution(x, w, nullptr, conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 1), "conv")
          ->output());
  const TestTensor wt = TestTensor::random(DataType::kF32, {2, 3, 3, 3}, 1);
  const TestTensor good = TestTensor::random(DataType::kF32, {1, 3, 5, 5}, 2);
  EXPECT_EQ(test::run_network(net, {good, wt})[0].dims, (std::vector<int64_t>{1, 2, 3, 3}));
  const TestTensor bad = TestTensor::random(DataType::kF32, {1, 4, 5, 5}, 2);
  EXPECT_THROW(test::run_network(net, {bad, wt}), Error);
}

/// Times the kernel on a ResNet-sized layer (run with --gtest_also_run_disabled_tests).
TEST(ConvolutionLayer, DISABLED_Timing224) {
  const std::vector<int64_t> xd{1, 64, 224, 224}, wd{64, 64, 3, 3}, od{1, 64, 224, 224};
  TestTensor x = TestTensor::random(DataType::kF32, xd, 1);
  TestTensor w = TestTensor::random(DataType::kF32, wd, 2);
  std::vector<float> out(static_cast<size_t>(numel(od)));
  cpu::HostTensor xt{DataType::kF32, xd, x.bytes.data()}, wt{DataType::kF32, wd, w.bytes.data()};
  cpu::HostTensor ot{DataType::kF32, od, out.data()};
  cpu::KernelArgs args{{&xt, &wt, nullptr}, {&ot}};
  const ConvolutionParams p = conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1);
  cpu::run(p, args);  // warm up
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    cpu::run(p, args);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("conv 64->64 3x3 224x224 f32 batch 1: %.1f ms (%.1f GFLOP/s)\n", ms,
                2.0 * 64 * 64 * 9 * 224 * 224 / ms / 1e6);
  }
}

// ================================================================ Deconvolution

TEST(DeconvolutionLayer, Deconv2dStrideOutputPadding) {
  check_deconv(DataType::kF32, {2, 4, 5, 6}, {4, 3, 3, 3}, true,
               deconv_params({2, 2}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1),
               "stride 2 output_padding 1");
  check_deconv(DataType::kF32, {1, 3, 4, 4}, {3, 2, 4, 4}, false,
               deconv_params({2, 2}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 1),
               "4x4 stride 2 (upsample x2)");
  check_deconv(DataType::kF32, {1, 2, 3, 3}, {2, 2, 2, 2}, true,
               deconv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, {0, 0}, 1), "stride 1");
}

TEST(DeconvolutionLayer, GroupsDilationAsymmetricPadding) {
  check_deconv(DataType::kF32, {1, 4, 4, 5}, {4, 2, 3, 2}, true,
               deconv_params({2, 1}, {1, 0}, {0, 1}, {1, 2}, {1, 1}, 2), "groups 2");
  check_deconv(DataType::kF32, {2, 6, 3, 3}, {6, 1, 3, 3}, false,
               deconv_params({3, 2}, {2, 0}, {0, 0}, {1, 1}, {2, 1}, 6), "depthwise");
}

TEST(DeconvolutionLayer, Deconv1dAnd3d) {
  check_deconv(DataType::kF32, {2, 3, 7}, {3, 4, 3}, true,
               deconv_params({3}, {1}, {2}, {2}, {1}, 1), "1d");
  check_deconv(DataType::kF32, {1, 2, 3, 2, 4}, {2, 3, 2, 3, 2}, true,
               deconv_params({2, 1, 2}, {0, 1, 1}, {1, 0, 0}, {1, 1, 1}, {1, 0, 0}, 1), "3d");
}

TEST(DeconvolutionLayer, LargeChunked) {
  check_deconv(DataType::kF32, {1, 8, 100, 100}, {8, 64, 3, 3}, false,
               deconv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 1), "chunked");
}

TEST(DeconvolutionLayer, HalfTypes) {
  for (DataType dt : {DataType::kF16, DataType::kBF16}) {
    check_deconv(dt, {1, 4, 4, 4}, {4, 2, 3, 3}, true,
                 deconv_params({2, 2}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 2), "groups 2");
  }
}

TEST(DeconvolutionLayer, DynamicBatch) {
  const DeconvolutionParams p = deconv_params({2, 2}, {1, 0}, {0, 1}, {1, 1}, {1, 0}, 1);
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, Shape{DimExpr::symbol("n"), 3, 4, 5});
  Tensor* w = net.add_input("w", DataType::kF32, Shape{3, 2, 3, 3});
  net.mark_output(net.add_deconvolution(x, w, nullptr, p, "deconv")->output());
  test::RunOptions opts;
  opts.profiles.push_back(
      OptimizationProfile().set_dimensions("x", {1, 3, 4, 5}, {2, 3, 4, 5}, {3, 3, 4, 5}));
  const TestTensor wt = TestTensor::random(DataType::kF32, {3, 2, 3, 3}, 13);
  for (int64_t n : {1, 3}) {
    const std::vector<int64_t> xd{n, 3, 4, 5};
    const TestTensor xt = TestTensor::random(DataType::kF32, xd, 14);
    const auto out = test::run_network(net, {xt, wt}, opts);
    expect_result(out[0], deconv_out_dims(xd, wt.dims, p),
                  ref_deconv(xt.to_floats(), xd, wt.to_floats(), wt.dims, nullptr, p),
                  "dynamic n=" + std::to_string(n));
  }
}

TEST(DeconvolutionLayer, RejectsBadInputs) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, Shape{1, 4, 5, 5});
  Tensor* w = net.add_input("w", DataType::kF32, Shape{4, 2, 3, 3});
  Tensor* w3 = net.add_input("w3", DataType::kF32, Shape{3, 2, 3, 3});
  Tensor* b3 = net.add_input("b3", DataType::kF32, Shape{3});
  const DeconvolutionParams ok = deconv_params({2, 2}, {0, 0}, {0, 0}, {1, 1}, {0, 0}, 1);
  EXPECT_NO_THROW(net.add_deconvolution(x, w, nullptr, ok, "good"));
  expect_error([&] { net.add_deconvolution(x, w3, nullptr, ok, "d1"); },
               {"Deconvolution 'd1'", "input channels"});
  DeconvolutionParams big_op = ok;
  big_op.output_padding = {2, 0};
  expect_error([&] { net.add_deconvolution(x, w, nullptr, big_op, "d2"); },
               {"Deconvolution 'd2'", "output_padding[0]"});
  DeconvolutionParams groups3 = ok;
  groups3.groups = 3;
  expect_error([&] { net.add_deconvolution(x, w, nullptr, groups3, "d3"); },
               {"Deconvolution 'd3'", "groups"});
  expect_error([&] { net.add_deconvolution(x, w, b3, ok, "d4"); }, {"Deconvolution 'd4'", "bias"});
  DeconvolutionParams huge_pad = ok;
  huge_pad.padding_begin = {6, 0};
  huge_pad.padding_end = {6, 0};
  expect_error([&] { net.add_deconvolution(x, w, nullptr, huge_pad, "d5"); },
               {"Deconvolution 'd5'", "padding"});
  DeconvolutionParams no_op = ok;
  no_op.output_padding = {};
  expect_error([&] { net.add_deconvolution(x, w, nullptr, no_op, "d6"); },
               {"Deconvolution 'd6'", "output_padding"});
}

// ================================================================ Pooling

TEST(PoolingLayer, MaxPool2d) {
  check_pool(DataType::kF32, {2, 3, 9, 9},
             pool_params(PoolingType::kMax, {3, 3}, {2, 2}, {1, 1}, {1, 1}), "3x3 s2 p1");
  check_pool(DataType::kF32, {1, 2, 7, 8},
             pool_params(PoolingType::kMax, {2, 3}, {1, 2}, {1, 0}, {0, 1}), "asymmetric");
  check_pool(DataType::kF32, {1, 2, 9, 8},
             pool_params(PoolingType::kMax, {2, 3}, {1, 2}, {1, 1}, {1, 0}, {3, 2}), "dilation");
}

TEST(PoolingLayer, MaxPool1dAnd3d) {
  check_pool(DataType::kF32, {2, 3, 10}, pool_params(PoolingType::kMax, {3}, {2}, {1}, {1}), "1d");
  check_pool(DataType::kF32, {1, 2, 5, 6, 7},
             pool_params(PoolingType::kMax, {2, 3, 2}, {2, 1, 2}, {1, 1, 0}, {0, 1, 1}), "3d");
}

TEST(PoolingLayer, MaxPool2dCeilMode) {
  PoolingParams p = pool_params(PoolingType::kMax, {3, 3}, {2, 2}, {0, 0}, {0, 0});
  p.ceil_mode = true;
  EXPECT_EQ(pool_out_dims({1, 1, 6, 7}, p), (std::vector<int64_t>{1, 1, 3, 3}));
  check_pool(DataType::kF32, {1, 2, 6, 7}, p, "ceil 6x7 k3 s2");
  // in 5, k 2, s 2, pad 1: ceil gives 4 windows, but the last would start in the end padding
  // (6 >= 5 + 1), so PyTorch keeps 3.
  PoolingParams q = pool_params(PoolingType::kMax, {2, 2}, {2, 2}, {1, 1}, {1, 1});
  q.ceil_mode = true;
  EXPECT_EQ(pool_out_dims({1, 1, 5, 5}, q), (std::vector<int64_t>{1, 1, 3, 3}));
  check_pool(DataType::kF32, {2, 2, 5, 4}, q, "ceil last window dropped");
  PoolingParams r = pool_params(PoolingType::kMax, {3}, {3}, {1}, {0}, {2});
  r.ceil_mode = true;
  check_pool(DataType::kF32, {1, 3, 11}, r, "ceil 1d dilated");
}

TEST(PoolingLayer, MaxPoolIntegersAndNan) {
  for (DataType dt : {DataType::kI8, DataType::kU8, DataType::kI32, DataType::kI64}) {
    const std::vector<int64_t> xd{1, 2, 5, 6};
    const TestTensor x =
        TestTensor::random(dt, xd, 3, dt == DataType::kU8 ? 0.0f : -100.0f, 100.0f);
    PoolingParams p = pool_params(PoolingType::kMax, {3, 2}, {2, 2}, {1, 1}, {1, 0});
    p.ceil_mode = true;
    const TestTensor out = run_pool(x, p);
    std::vector<double> xv;
    for (int64_t v : x.to_ints()) xv.push_back(static_cast<double>(v));
    std::vector<int64_t> expected;
    for (double v : ref_pool(xv, xd, p)) expected.push_back(static_cast<int64_t>(v));
    ASSERT_EQ(out.dims, pool_out_dims(xd, p));
    test::expect_equal_ints(out, expected, std::string("max pool ") + dtype_name(dt));
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const TestTensor x = TestTensor::floats(DataType::kF32, {1, 1, 1, 4}, {1.0f, nan, 3.0f, 2.0f});
  const TestTensor out =
      run_pool(x, pool_params(PoolingType::kMax, {1, 2}, {1, 2}, {0, 0}, {0, 0}));
  const std::vector<float> v = out.to_floats();
  ASSERT_EQ(v.size(), 2u);
  EXPECT_TRUE(std::isnan(v[0]));
  EXPECT_EQ(v[1], 3.0f);
}

TEST(PoolingLayer, AvgPool2dCountIncludePad) {
  for (bool include : {true, false}) {
    PoolingParams p = pool_params(PoolingType::kAverage, {3, 3}, {2, 2}, {1, 1}, {1, 1});
    p.count_include_pad = include;
    check_pool(DataType::kF32, {2, 3, 8, 7}, p, include ? "include pad" : "exclude pad");
    p.ceil_mode = true;  // the overhang past the padding never counts
    check_pool(DataType::kF32, {1, 2, 8, 6}, p, include ? "ceil include pad" : "ceil exclude pad");
    PoolingParams q = pool_params(PoolingType::kAverage, {2, 3}, {2, 2}, {1, 0}, {0, 1});
    q.count_include_pad = include;
    q.ceil_mode = true;
    check_pool(DataType::kF32, {1, 2, 6, 7}, q,
               include ? "asymmetric include" : "asymmetric exclude");
  }
}

TEST(PoolingLayer, AvgPoolDivisorOverride) {
  PoolingParams p = pool_params(PoolingType::kAverage, {2, 2}, {2, 2}, {1, 1}, {1, 1});
  p.divisor_override = 3;
  p.ceil_mode = true;
  check_pool(DataType::kF32, {1, 2, 5, 5}, p, "divisor 3");
}

TEST(PoolingLayer, AvgPool1dAnd3dUnbatched) {
  check_pool(DataType::kF32, {2, 3, 10}, pool_params(PoolingType::kAverage, {4}, {3}, {2}, {1}),
             "1d");
  check_pool(DataType::kF32, {2, 4, 5, 6},
             pool_params(PoolingType::kAverage, {2, 2, 3}, {1, 2, 2}, {1, 0, 1}, {0, 1, 1}),
             "3d unbatched [C, D, H, W]");
  check_pool(DataType::kF32, {3, 7, 7},
             pool_params(PoolingType::kMax, {3, 3}, {2, 2}, {1, 1}, {1, 1}), "2d unbatched");
}

TEST(PoolingLayer, HalfTypes) {
  for (DataType dt : {DataType::kF16, DataType::kBF16}) {
    PoolingParams avg = pool_params(PoolingType::kAverage, {3, 3}, {2, 2}, {1, 1}, {1, 1});
    avg.count_include_pad = false;
    avg.ceil_mode = true;
    check_pool(dt, {1, 3, 8, 7}, avg, "avg");
    check_pool(dt, {1, 3, 8, 7}, pool_params(PoolingType::kMax, {2, 2}, {2, 2}, {0, 0}, {0, 0}),
               "max");
  }
}

TEST(PoolingLayer, GlobalAverage) {
  check_pool(DataType::kF32, {2, 16, 7, 7},
             pool_params(PoolingType::kAverage, {7, 7}, {1, 1}, {0, 0}, {0, 0}), "global 7x7");
}

TEST(PoolingLayer, DynamicShapeCeilMode) {
  // The ceil-mode drop rule is a DimExpr here; run where it drops a window (5) and where not (6).
  PoolingParams p = pool_params(PoolingType::kMax, {2, 3}, {2, 2}, {1, 1}, {1, 1});
  p.ceil_mode = true;
  Network net;
  Tensor* x =
      net.add_input("x", DataType::kF32,
                    Shape{DimExpr::symbol("n"), 2, DimExpr::symbol("h"), DimExpr::symbol("w")});
  net.mark_output(net.add_pooling(x, p, "pool")->output());
  test::RunOptions opts;
  opts.profiles.push_back(
      OptimizationProfile().set_dimensions("x", {1, 2, 3, 3}, {1, 2, 5, 5}, {3, 2, 9, 9}));
  for (const std::vector<int64_t>& xd :
       {std::vector<int64_t>{1, 2, 5, 6}, std::vector<int64_t>{3, 2, 6, 5}}) {
    const TestTensor xt = TestTensor::random(DataType::kF32, xd, 15);
    const auto out = test::run_network(net, {xt}, opts);
    const std::vector<float> xf = xt.to_floats();
    const std::vector<double> ref = ref_pool(std::vector<double>(xf.begin(), xf.end()), xd, p);
    expect_result(out[0], pool_out_dims(xd, p), std::vector<float>(ref.begin(), ref.end()),
                  "dynamic " + dims_to_string(xd));
  }
}

TEST(PoolingLayer, RejectsBadParams) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, Shape{1, 2, 6, 6});
  Tensor* xb = net.add_input("xb", DataType::kBool, Shape{1, 2, 6, 6});
  Tensor* xi = net.add_input("xi", DataType::kI32, Shape{1, 2, 6, 6});
  const PoolingParams ok = pool_params(PoolingType::kMax, {3, 3}, {2, 2}, {1, 1}, {1, 1});
  EXPECT_NO_THROW(net.add_pooling(x, ok, "good"));
  EXPECT_NO_THROW(net.add_pooling(xi, ok, "good_int"));
  PoolingParams big_pad = ok;
  big_pad.padding_end = {1, 2};
  expect_error([&] { net.add_pooling(x, big_pad, "p1"); }, {"Pooling 'p1'", "half the window"});
  PoolingParams zero_stride = ok;
  zero_stride.stride = {0, 2};
  expect_error([&] { net.add_pooling(x, zero_stride, "p2"); }, {"Pooling 'p2'", "stride[0]"});
  PoolingParams avg_dil = ok;
  avg_dil.type = PoolingType::kAverage;
  avg_dil.dilation = {2, 1};
  expect_error([&] { net.add_pooling(x, avg_dil, "p3"); }, {"Pooling 'p3'", "dilation"});
  PoolingParams max_div = ok;
  max_div.divisor_override = 2;
  expect_error([&] { net.add_pooling(x, max_div, "p4"); }, {"Pooling 'p4'", "divisor_override"});
  PoolingParams avg = ok;
  avg.type = PoolingType::kAverage;
  expect_error([&] { net.add_pooling(xi, avg, "p5"); }, {"Pooling 'p5'", "i32"});
  expect_error([&] { net.add_pooling(xb, ok, "p6"); }, {"Pooling 'p6'", "bool"});
  PoolingParams four =
      pool_params(PoolingType::kMax, {1, 1, 1, 1}, {1, 1, 1, 1}, {0, 0, 0, 0}, {0, 0, 0, 0});
  expect_error([&] { net.add_pooling(x, four, "p7"); }, {"Pooling 'p7'", "window"});
  PoolingParams too_big = pool_params(PoolingType::kMax, {8, 2}, {1, 1}, {0, 0}, {0, 0});
  expect_error([&] { net.add_pooling(x, too_big, "p8"); }, {"Pooling 'p8'", "must be >= 1"});
  PoolingParams three = pool_params(PoolingType::kMax, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0});
  Tensor* x2 = net.add_input("x2", DataType::kF32, Shape{6, 6});
  expect_error([&] { net.add_pooling(x2, three, "p9"); }, {"Pooling 'p9'", "rank"});
  PoolingParams bad_type = ok;
  bad_type.type = static_cast<PoolingType>(7);
  expect_error([&] { net.add_pooling(x, bad_type, "p10"); }, {"Pooling 'p10'", "pooling type"});
}

// ================================================================ MatrixMultiply

TEST(MatrixMultiplyLayer, TwoDimensionalAndTransposes) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const std::vector<int64_t> ad = ta ? std::vector<int64_t>{4, 3} : std::vector<int64_t>{3, 4};
      const std::vector<int64_t> bd = tb ? std::vector<int64_t>{5, 4} : std::vector<int64_t>{4, 5};
      check_matmul(DataType::kF32, ad, ta, bd, tb,
                   std::string("2d ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0"));
    }
  }
}

TEST(MatrixMultiplyLayer, Batched) {
  check_matmul(DataType::kF32, {2, 3, 4}, false, {2, 4, 5}, false, "batched");
  check_matmul(DataType::kF32, {2, 4, 3}, true, {2, 5, 4}, true, "batched transposes");
  check_matmul(DataType::kF32, {2, 3, 4}, false, {4, 5}, false, "shared b (folded)");
  check_matmul(DataType::kF32, {2, 3, 6, 4}, false, {5, 4}, true, "shared transposed b (folded)");
  check_matmul(DataType::kF32, {2, 4, 3}, true, {4, 5}, false, "shared b, transposed a");
  check_matmul(DataType::kF32, {3, 4}, false, {2, 4, 5}, false, "shared a");
}

TEST(MatrixMultiplyLayer, BroadcastBatch) {
  check_matmul(DataType::kF32, {2, 1, 3, 4}, false, {5, 4, 2}, false, "broadcast [2,1] x [5]");
  check_matmul(DataType::kF32, {1, 3, 3, 4}, false, {2, 1, 4, 2}, false, "broadcast both");
  check_matmul(DataType::kF32, {1, 1, 3, 4}, false, {4, 2}, false, "size-1 batch, shared b");
  check_matmul(DataType::kF32, {3, 2, 4}, true, {1, 3, 2}, true, "broadcast with transposes");
}

TEST(MatrixMultiplyLayer, VectorOperands) {
  check_matmul(DataType::kF32, {4}, false, {4, 5}, false, "vector x matrix");
  check_matmul(DataType::kF32, {3, 4}, false, {4}, false, "matrix x vector");
  check_matmul(DataType::kF32, {4}, false, {4}, false, "dot");
  check_matmul(DataType::kF32, {2, 3, 4}, false, {4}, false, "batched matrix x vector");
  check_matmul(DataType::kF32, {4}, false, {2, 4, 5}, false, "vector x batched matrix");
  check_matmul(DataType::kF32, {4}, true, {5, 4}, true, "vector flag ignored, transposed b");
  check_matmul(DataType::kF32, {4, 3}, true, {4}, true, "transposed a x vector");
}

TEST(MatrixMultiplyLayer, HalfTypes) {
  for (DataType dt : {DataType::kF16, DataType::kBF16}) {
    check_matmul(dt, {2, 3, 8}, false, {2, 8, 5}, false, "batched");
    check_matmul(dt, {8, 3}, true, {8}, false, "matrix x vector");
    check_matmul(dt, {2, 3, 8}, false, {5, 8}, true, "shared b");
  }
}

TEST(MatrixMultiplyLayer, DynamicBatch) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, Shape{DimExpr::symbol("n"), 3, 4});
  Tensor* b = net.add_input("b", DataType::kF32, Shape{DimExpr::symbol("n"), 4, 2});
  Tensor* c = net.add_input("c", DataType::kF32, Shape{4, 6});
  net.mark_output(net.add_matrix_multiply(a, false, b, false, "ab")->output());
  net.mark_output(net.add_matrix_multiply(a, false, c, false, "ac")->output());
  test::RunOptions opts;
  opts.profiles.push_back(OptimizationProfile()
                              .set_dimensions("a", {1, 3, 4}, {2, 3, 4}, {4, 3, 4})
                              .set_dimensions("b", {1, 4, 2}, {2, 4, 2}, {4, 4, 2}));
  const TestTensor ct = TestTensor::random(DataType::kF32, {4, 6}, 16);
  for (int64_t n : {1, 4}) {
    const TestTensor at = TestTensor::random(DataType::kF32, {n, 3, 4}, 17);
    const TestTensor bt = TestTensor::random(DataType::kF32, {n, 4, 2}, 18);
    const auto out = test::run_network(net, {at, bt, ct}, opts);
    std::vector<int64_t> od;
    const auto ab = ref_matmul(at.to_floats(), at.dims, false, bt.to_floats(), bt.dims, false, &od);
    expect_result(out[0], od, ab, "dynamic ab n=" + std::to_string(n));
    const auto ac = ref_matmul(at.to_floats(), at.dims, false, ct.to_floats(), ct.dims, false, &od);
    expect_result(out[1], od, ac, "dynamic ac n=" + std::to_string(n));
  }
}

/// Runs the CPU back end's reference kernels (no oneDNN) while in scope.
struct ReferenceKernelsOnly {
  ReferenceKernelsOnly() { ::setenv("EMBER_CPU_DNNL", "0", 1); }
  ~ReferenceKernelsOnly() { ::unsetenv("EMBER_CPU_DNNL"); }
};

TEST(MatrixMultiplyLayer, ReferenceKernelWithoutDnnl) {
  // oneDNN runs the products by default; the im2col/BLAS reference stays what
  // EMBER_CPU_DNNL=0 (and a build without oneDNN) runs.
  const ReferenceKernelsOnly reference;
  check_matmul(DataType::kF32, {4, 3}, true, {5, 4}, true, "2d transposes");
  check_matmul(DataType::kF32, {2, 3, 6, 4}, false, {5, 4}, true, "shared transposed b (folded)");
  check_matmul(DataType::kF32, {1, 3, 3, 4}, false, {2, 1, 4, 2}, false, "broadcast both");
  check_matmul(DataType::kF16, {2, 3, 8}, false, {5, 8}, true, "f16 shared b");
}

TEST(MatrixMultiplyLayer, FusedEpilogueScaleBiasResidualActivation) {
  // y = act(scale * a b^T + bias + residual), the epilogue the builder fuses into a product:
  // oneDNN's output scale, bias (a binary add when there is a scale), sum and eltwise
  // post-ops, against the formula, for f32 and f16 (whose activation runs after rounding),
  // with oneDNN and with the reference kernel.
  for (bool dnnl : {true, false}) {
    std::unique_ptr<ReferenceKernelsOnly> reference;
    if (!dnnl) reference = std::make_unique<ReferenceKernelsOnly>();
    for (DataType dt : {DataType::kF32, DataType::kF16}) {
      for (double scale : {1.0, 0.5}) {
        for (bool residual : {false, true}) {
          const std::vector<int64_t> ad{2, 3, 8}, bd{5, 8}, od{2, 3, 5};
          const TestTensor at = TestTensor::random(dt, ad, 31);
          const TestTensor bt = TestTensor::random(dt, bd, 32);
          const TestTensor bias = TestTensor::random(dt, {5}, 33);
          const TestTensor res = TestTensor::random(dt, od, 34);
          Network net;
          Tensor* a = net.add_input("a", dt, shape_from_dims(ad));
          Tensor* b = net.add_input("b", dt, shape_from_dims(bd));
          Tensor* bi = net.add_input("bias", dt, shape_from_dims({5}));
          Tensor* r = net.add_input("residual", dt, shape_from_dims(od));
          MatrixMultiplyParams p;
          p.transpose_b = true;
          p.epilogue.scale = scale;
          p.epilogue.fused_activation = true;
          p.epilogue.activation = ActivationType::kGeluErf;
          net.mark_output(
              net.add_layer(p, {a, b, bi, residual ? r : nullptr}, "mm")->output());
          const auto out = test::run_network(net, {at, bt, bias, res});
          std::vector<int64_t> shape;
          std::vector<float> want =
              ref_matmul(at.to_floats(), ad, false, bt.to_floats(), bd, true, &shape);
          const std::vector<float> bv = bias.to_floats(), rv = res.to_floats();
          for (size_t i = 0; i < want.size(); ++i) {
            float v = static_cast<float>(scale) * want[i] + bv[i % 5] + (residual ? rv[i] : 0.0f);
            want[i] = 0.5f * v * (1.0f + std::erf(v / std::sqrt(2.0f)));
          }
          expect_result(out[0], od, want,
                        std::string(dnnl ? "oneDNN" : "reference") + " " + dtype_name(dt) +
                            " scale " + std::to_string(scale) + (residual ? " residual" : ""));
        }
      }
    }
  }
}

TEST(MatrixMultiplyLayer, RejectsBadInputs) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, Shape{3, 4});
  Tensor* b = net.add_input("b", DataType::kF32, Shape{5, 6});
  Tensor* b2 = net.add_input("b2", DataType::kF32, Shape{2, 4, 6});
  Tensor* a3 = net.add_input("a3", DataType::kF32, Shape{3, 3, 4});
  Tensor* s = net.add_input("s", DataType::kF32, Shape{});
  Tensor* ai = net.add_input("ai", DataType::kI64, Shape{3, 4});
  Tensor* bi = net.add_input("bi", DataType::kI64, Shape{4, 5});
  Tensor* bh = net.add_input("bh", DataType::kF16, Shape{4, 5});
  expect_error([&] { net.add_matrix_multiply(a, false, b, false, "m1"); },
               {"MatrixMultiply 'm1'", "contracted"});
  expect_error([&] { net.add_matrix_multiply(a, true, b2, false, "m2"); },
               {"MatrixMultiply 'm2'", "contracted"});
  expect_error([&] { net.add_matrix_multiply(a3, false, b2, false, "m3"); },
               {"MatrixMultiply 'm3'"});
  expect_error([&] { net.add_matrix_multiply(s, false, a, false, "m4"); },
               {"MatrixMultiply 'm4'", "scalar"});
  expect_error([&] { net.add_matrix_multiply(ai, false, bi, false, "m5"); },
               {"MatrixMultiply 'm5'", "i64"});
  expect_error([&] { net.add_matrix_multiply(a, false, bh, false, "m6"); },
               {"MatrixMultiply 'm6'", "dtype"});
  EXPECT_NO_THROW(net.add_matrix_multiply(a, false, b2, false, "good"));
}

}  // namespace
}  // namespace ember::engine
