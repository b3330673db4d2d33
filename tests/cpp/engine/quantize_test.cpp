// The quantization family (Quantize, Dequantize) on the CPU reference back end, against the
// formulas written out here: PyTorch's quantized_decomposed math (x * (1 / scale), round half to
// even, + zero_point, clamp) and FP8 E4M3 with saturation. Every case runs through the builder
// and a plan round trip (test::run_network).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/half.h"
#include "builder/passes/passes.h"
#include "plan/plan.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

Tensor* scales(Network& net, const std::vector<float>& s) {
  return net
      .add_constant(Weights::from_vector(DataType::kF32, {static_cast<int64_t>(s.size())}, s))
      ->output();
}

Tensor* zero_points(Network& net, const std::vector<int32_t>& z) {
  return net
      .add_constant(Weights::from_vector(DataType::kI32, {static_cast<int64_t>(z.size())}, z))
      ->output();
}

/// PyTorch's quantize_per_tensor written out.
int64_t reference_quantize(float x, float scale, int32_t zp, int64_t lo, int64_t hi) {
  const float r = std::nearbyint(x * (1.0f / scale)) + static_cast<float>(zp);
  return static_cast<int64_t>(
      std::fmin(std::fmax(r, static_cast<float>(lo)), static_cast<float>(hi)));
}

TEST(Fp8E4M3, EveryCodeRoundTripsAndNeighboursRoundToNearestEven) {
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<uint8_t>(c);
    const float v = f8e4m3_to_f32(code);
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    EXPECT_EQ(f32_to_f8e4m3(v), code) << "code " << c << " value " << v;
    // Halfway to the next code up (same sign) rounds to the even code of the two.
    if ((c & 0x7f) < 0x7e) {
      const float next = f8e4m3_to_f32(static_cast<uint8_t>(c + 1));
      const float mid = 0.5f * (v + next);
      const uint8_t even = (c & 1) == 0 ? code : static_cast<uint8_t>(c + 1);
      EXPECT_EQ(f32_to_f8e4m3(mid), even) << "between codes " << c << " and " << c + 1;
      EXPECT_EQ(f32_to_f8e4m3(std::nextafter(mid, 0.0f)), code) << "just below that midpoint";
    }
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), 1.0f / 512.0f);  // smallest subnormal
  EXPECT_EQ(f32_to_f8e4m3(1e6f), 0x7e);           // saturates
  EXPECT_EQ(f32_to_f8e4m3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(1.0f / 1024.0f), 0x00);  // half the smallest subnormal: ties to 0
  EXPECT_EQ(f32_to_f8e4m3(3.0f / 2048.0f), 0x01);  // 0.75 subnormal steps: rounds up to 1
  EXPECT_EQ(f32_to_f8e4m3(3.0f / 1024.0f), 0x02);  // 1.5 subnormal steps: ties to even (2)
  EXPECT_EQ(f32_to_f8e4m3(5.0f / 1024.0f), 0x02);  // 2.5 subnormal steps: ties to even (2)
}

TEST(Quantize, PerTensorInt8RoundsHalfToEvenAndSaturates) {
  const std::vector<float> x = {0.5f,  1.5f,   2.5f,    -0.5f, -1.5f,  -2.5f,
                                0.24f, 300.0f, -300.0f, 63.7f, -64.2f, 0.0f};
  for (const float scale : {1.0f, 0.5f, 0.1f}) {
    Network net;
    Tensor* in = net.add_input("x", DataType::kF32, {static_cast<int64_t>(x.size())});
    QuantizeParams p;
    net.mark_output(net.add_quantize(in, scales(net, {scale}), nullptr, p)->output(), "q");
    const auto out = test::run_network(net, {TestTensor::floats(DataType::kF32, {12}, x)});
    ASSERT_EQ(out[0].dtype, DataType::kI8);
    std::vector<int64_t> want;
    for (float v : x) want.push_back(reference_quantize(v, scale, 0, -128, 127));
    test::expect_equal_ints(out[0], want, "scale " + std::to_string(scale));
  }
  // The ties at scale 1 spelled out: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (not away from zero).
  EXPECT_EQ(reference_quantize(2.5f, 1.0f, 0, -128, 127), 2);
}

TEST(Quantize, PerTensorUint8WithZeroPointAndNarrowRange) {
  Network net;
  Tensor* in = net.add_input("x", DataType::kF32, {2, 3});
  QuantizeParams p;
  p.to = DataType::kU8;
  p.quant_min = 0;
  p.quant_max = 200;
  Layer* q = net.add_quantize(in, scales(net, {0.25f}), zero_points(net, {100}), p);
  net.mark_output(q->output(), "q");
  const std::vector<float> x = {-30.0f, -1.0f, 0.125f, 0.375f, 20.0f, 70.0f};
  const auto out = test::run_network(net, {TestTensor::floats(DataType::kF32, {2, 3}, x)});
  std::vector<int64_t> want;
  for (float v : x) want.push_back(reference_quantize(v, 0.25f, 100, 0, 200));
  EXPECT_EQ(want, (std::vector<int64_t>{0, 96, 100, 102, 180, 200}));
  test::expect_equal_ints(out[0], want, "u8");
}

TEST(Quantize, PerChannelAlongEachAxisOfHalfAndFloatInputs) {
  const std::vector<int64_t> dims = {2, 3, 4};
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    for (int64_t axis = 0; axis < 3; ++axis) {
      std::vector<float> s;
      std::vector<int32_t> z;
      for (int64_t c = 0; c < dims[axis]; ++c) {
        s.push_back(0.01f * static_cast<float>(c + 1));
        z.push_back(static_cast<int32_t>(c) - 1);
      }
      Network net;
      Tensor* in = net.add_input("x", t, {2, 3, 4});
      QuantizeParams p;
      p.per_channel = true;
      p.axis = axis;
      net.mark_output(net.add_quantize(in, scales(net, s), zero_points(net, z), p)->output(), "q");
      const TestTensor xt = TestTensor::random(t, dims, 7 + static_cast<uint32_t>(axis));
      const auto out = test::run_network(net, {xt});
      const std::vector<float> x = xt.to_floats();
      std::vector<int64_t> want;
      for (int64_t i = 0; i < 24; ++i) {
        const int64_t inner = axis == 0 ? 12 : axis == 1 ? 4 : 1;
        const int64_t c = (i / inner) % dims[axis];
        want.push_back(reference_quantize(x[i], s[c], z[c], -128, 127));
      }
      test::expect_equal_ints(out[0], want,
                              std::string(dtype_name(t)) + " axis " + std::to_string(axis));
    }
  }
}

TEST(Dequantize, PerTensorAndPerChannelToEachFloatType) {
  const std::vector<int64_t> q = {-128, -3, 0, 1, 127, 64};
  for (DataType to : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    {
      Network net;
      Tensor* in = net.add_input("q", DataType::kI8, {6});
      DequantizeParams p;
      p.to = to;
      net.mark_output(
          net.add_dequantize(in, scales(net, {0.05f}), zero_points(net, {2}), p)->output(), "y");
      const auto out = test::run_network(net, {TestTensor::ints(DataType::kI8, {6}, q)});
      std::vector<float> want;
      for (int64_t v : q) want.push_back((static_cast<float>(v) - 2.0f) * 0.05f);
      test::expect_close(out[0], want, to, std::string("per-tensor to ") + dtype_name(to));
    }
    {
      Network net;
      Tensor* in = net.add_input("q", DataType::kI8, {3, 2});
      DequantizeParams p;
      p.to = to;
      p.per_channel = true;
      p.axis = 0;
      net.mark_output(
          net.add_dequantize(in, scales(net, {0.5f, 0.25f, 2.0f}), nullptr, p)->output(), "y");
      const auto out = test::run_network(net, {TestTensor::ints(DataType::kI8, {3, 2}, q)});
      const std::vector<float> s = {0.5f, 0.25f, 2.0f};
      std::vector<float> want;
      for (size_t i = 0; i < q.size(); ++i) want.push_back(static_cast<float>(q[i]) * s[i / 2]);
      test::expect_close(out[0], want, to, std::string("per-channel to ") + dtype_name(to));
    }
  }
}

TEST(Quantize, Fp8PerTensorScalesRoundsAndSaturatesThenDequantizes) {
  Network net;
  const std::vector<float> x = {0.0f, 1.0f, -3.3f, 0.013f, 1000.0f, -5000.0f, 17.5f, 0.0009f};
  Tensor* in = net.add_input("x", DataType::kF32, {8});
  QuantizeParams qp;
  qp.to = DataType::kF8E4M3;
  Tensor* s = scales(net, {2.0f});
  Layer* q = net.add_quantize(in, s, nullptr, qp);
  DequantizeParams dp;
  net.mark_output(q->output(), "q");
  net.mark_output(net.add_dequantize(q->output(), s, nullptr, dp)->output(), "y");
  const auto out = test::run_network(net, {TestTensor::floats(DataType::kF32, {8}, x)});
  ASSERT_EQ(out[0].dtype, DataType::kF8E4M3);
  std::vector<float> want_q, want_y;
  for (float v : x) {
    const uint8_t code = f32_to_f8e4m3(v * 0.5f);
    want_q.push_back(f8e4m3_to_f32(code));
    want_y.push_back(f8e4m3_to_f32(code) * 2.0f);
  }
  EXPECT_EQ(want_q[4], 448.0f);  // 500 saturates
  EXPECT_EQ(want_q[5], -448.0f);
  EXPECT_EQ(want_q[6], 9.0f);  // 8.75: steps of 1 between 8 and 16
  EXPECT_EQ(want_q[7], 0.0f);  // 0.00045: under half the smallest subnormal
  test::expect_close(out[0], want_q, DataType::kF8E4M3, "fp8 codes");
  test::expect_close(out[1], want_y, DataType::kF32, "fp8 dequantized");
}

TEST(Quantize, QuantizeDequantizeIsWithinHalfAStep) {
  Network net;
  Tensor* in = net.add_input("x", DataType::kF32, {64});
  Tensor* s = scales(net, {0.02f});
  Layer* q = net.add_quantize(in, s, nullptr, QuantizeParams{});
  net.mark_output(net.add_dequantize(q->output(), s, nullptr, DequantizeParams{})->output(), "y");
  const TestTensor xt = TestTensor::random(DataType::kF32, {64}, 3, -2.5f, 2.5f);
  const auto out = test::run_network(net, {xt});
  const auto x = xt.to_floats(), y = out[0].to_floats();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_LE(std::fabs(x[i] - y[i]), 0.01f + 1e-6f) << i;
}

TEST(Quantize, BadParametersAreRefusedWithTheReason) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  Tensor* two = scales(net, {1.0f, 2.0f});
  test::expect_error([&] { net.add_quantize(x, two, nullptr, QuantizeParams{}); },
                     {"Quantize", "per-tensor scale has one element", "per_channel"});
  QuantizeParams pc;
  pc.per_channel = true;
  pc.axis = 1;
  test::expect_error([&] { net.add_quantize(x, two, nullptr, pc); },
                     {"per-channel scale length equals the input's dim 1", "2 != 3"});
  pc.axis = 2;
  test::expect_error([&] { net.add_quantize(x, two, nullptr, pc); },
                     {"per-channel axis 2 is out of range"});
  QuantizeParams range;
  range.quant_min = -200;
  test::expect_error([&] { net.add_quantize(x, scales(net, {1.0f}), nullptr, range); },
                     {"quant range [-200, 127]", "outside i8's [-128, 127]"});
  QuantizeParams to_i32;
  to_i32.to = DataType::kI32;
  test::expect_error([&] { net.add_quantize(x, scales(net, {1.0f}), nullptr, to_i32); },
                     {"quantizes to i8, u8 or f8e4m3, not i32"});
  QuantizeParams f8;
  f8.to = DataType::kF8E4M3;
  test::expect_error([&] { net.add_quantize(x, scales(net, {1.0f}), zero_points(net, {0}), f8); },
                     {"f8e4m3 quantization is symmetric"});
  Tensor* xi = net.add_input("xi", DataType::kI32, {2, 3});
  test::expect_error([&] { net.add_quantize(xi, scales(net, {1.0f}), nullptr, QuantizeParams{}); },
                     {"input (input 0) must be f32, f16 or bf16, got i32"});
  test::expect_error(
      [&] { net.add_dequantize(x, scales(net, {1.0f}), nullptr, DequantizeParams{}); },
      {"Dequantize", "must be i8, u8 or f8e4m3, got f32"});
  Tensor* q8 = net.add_quantize(x, scales(net, {1.0f}), nullptr, f8)->output();
  test::expect_error([&] { net.add_elementwise(q8, q8, ElementWiseOp::kSum); },
                     {"f8e4m3 tensors go only through Quantize, Dequantize", "dequantize first"});
  test::expect_error([&] { net.add_cast(x, DataType::kF8E4M3); }, {"f8e4m3 tensors go only"});
  // A reshape of FP8 codes is fine (bytes move, no arithmetic).
  EXPECT_NO_THROW(net.add_reshape(q8, {3, 2}));
}

/// The layer kinds of the plan the CPU builder makes of `net` at `level`.
std::vector<LayerKind> built_kinds(const Network& net, int level) {
  BuilderConfig config;
  config.optimization_level = level;
  const std::vector<uint8_t> bytes = Builder(config).build(net);
  const PlanModel plan = plan_read(bytes.data(), bytes.size());  // outlives the loop's layers
  std::vector<LayerKind> kinds;
  for (const Layer* l : plan.network.layers()) {
    kinds.push_back(l->kind());
  }
  return kinds;
}

bool has_kind(const std::vector<LayerKind>& kinds, LayerKind k) {
  return std::find(kinds.begin(), kinds.end(), k) != kinds.end();
}

/// x -> Q/DQ (per-tensor) -> [reshape] -> MatrixMultiply with DQ(constant weight) -> out.
/// weight_kn stores the weight [K, N] (per-channel axis 1) behind no transpose; otherwise it is
/// [N, K] (axis 0), read through transpose_b or through an explicit transpose layer.
struct QdqProduct {
  DataType q = DataType::kI8;
  bool per_channel = true;
  bool weight_kn = false;
  bool explicit_transpose = false;
  bool reshape_input = false;
  DataType out = DataType::kF32;
};

Network qdq_product(const QdqProduct& c, int64_t n, int64_t k) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, k});
  Tensor* sa = scales(net, {0.02f});
  QuantizeParams qp;
  qp.to = c.q;
  qp.quant_min = -127;
  Tensor* q = net.add_quantize(x, sa, nullptr, qp, "qa")->output();
  DequantizeParams dp;
  dp.to = c.out;
  Tensor* a = net.add_dequantize(q, sa, nullptr, dp, "dqa")->output();
  if (c.reshape_input) a = net.add_reshape(a, {6, k}, "flatten")->output();
  std::vector<int8_t> w8(static_cast<size_t>(n * k));
  std::vector<uint8_t> f8(w8.size());
  for (size_t i = 0; i < w8.size(); ++i) {
    w8[i] = static_cast<int8_t>((static_cast<int>(i) * 37) % 255 - 127);
    f8[i] = f32_to_f8e4m3(static_cast<float>(w8[i]) * 0.5f);
  }
  const std::vector<int64_t> wdims =
      c.weight_kn ? std::vector<int64_t>{k, n} : std::vector<int64_t>{n, k};
  Tensor* wq =
      net.add_constant(c.q == DataType::kI8 ? Weights::from_vector(DataType::kI8, wdims, w8)
                                            : Weights::from_vector(DataType::kF8E4M3, wdims, f8),
                       "wq")
          ->output();
  DequantizeParams wp;
  wp.to = c.out;
  std::vector<float> sb;
  if (c.per_channel) {
    wp.per_channel = true;
    wp.axis = c.weight_kn ? 1 : 0;
    for (int64_t j = 0; j < n; ++j) sb.push_back(0.001f * static_cast<float>(j + 1));
  } else {
    sb.push_back(0.003f);
  }
  Tensor* w = net.add_dequantize(wq, scales(net, sb), nullptr, wp, "dqw")->output();
  bool transpose_b = !c.weight_kn;
  if (c.explicit_transpose) {
    w = net.add_transpose(w, {1, 0}, "wt")->output();
    transpose_b = false;
  }
  net.mark_output(net.add_matrix_multiply(a, false, w, transpose_b, "mm")->output(), "y");
  return net;
}

TEST(QuantizedMatrixMultiply, FusedProductEqualsTheUnfusedQdqGraph) {
  const std::vector<QdqProduct> cases = {
      {DataType::kI8, true, false, false, false, DataType::kF32},
      {DataType::kI8, true, true, false, true, DataType::kF32},   // [K, N] weight, flatten
      {DataType::kI8, true, false, true, false, DataType::kF32},  // linear's permute + mm
      {DataType::kI8, false, false, false, false, DataType::kF16},
      {DataType::kF8E4M3, false, false, false, true, DataType::kF32},
      {DataType::kF8E4M3, false, true, false, false, DataType::kBF16},
  };
  const TestTensor x = TestTensor::random(DataType::kF32, {2, 3, 32}, 11, -2.0f, 2.0f);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const Network net = qdq_product(cases[i], 8, 32);
    EXPECT_TRUE(has_kind(built_kinds(net, 3), LayerKind::kQuantizedMatrixMultiply));
    EXPECT_FALSE(has_kind(built_kinds(net, 3), LayerKind::kMatrixMultiply));
    EXPECT_FALSE(has_kind(built_kinds(net, 0), LayerKind::kQuantizedMatrixMultiply));
    // run_network compares the built (fused) engine with the layer-by-layer reference run of
    // the unfused network under tolerance_for(out); check the level-0 engine the same way.
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    test::expect_close(fused[0], unfused[0].to_floats(), cases[i].out, "fused vs unfused");
  }
}

TEST(QuantizedMatrixMultiply, Uint8ActivationsWithAZeroPointFuse) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 16});
  QuantizeParams qp;
  qp.to = DataType::kU8;
  qp.quant_min = 0;
  qp.quant_max = 255;
  Tensor* sa = scales(net, {0.05f});
  Tensor* za = zero_points(net, {128});
  Tensor* q = net.add_quantize(x, sa, za, qp)->output();
  Tensor* a = net.add_dequantize(q, sa, za, DequantizeParams{})->output();
  Tensor* wq =
      net.add_constant(Weights::from_vector(DataType::kI8, {8, 16}, std::vector<int8_t>(128, 3)))
          ->output();
  Tensor* w = net.add_dequantize(wq, scales(net, {0.1f}), nullptr, DequantizeParams{})->output();
  net.mark_output(net.add_matrix_multiply(a, false, w, true)->output(), "y");
  // PT2E's uint8 activations: the product sums (a - zero_point) * b exactly in int32.
  EXPECT_TRUE(has_kind(built_kinds(net, 3), LayerKind::kQuantizedMatrixMultiply));
  EXPECT_FALSE(has_kind(built_kinds(net, 3), LayerKind::kMatrixMultiply));
  // run_network checks the fused engine against the unfused network's reference run.
  const auto out = test::run_network(net, {TestTensor::random(DataType::kF32, {4, 16}, 5)});
  EXPECT_EQ(out[0].dims, (std::vector<int64_t>{4, 8}));
  // An asymmetric weight (a zero point on the constant) is not fused.
  Network wz;
  Tensor* x2 = wz.add_input("x", DataType::kF32, {4, 16});
  Tensor* s2 = scales(wz, {0.05f});
  Tensor* a2 = wz.add_dequantize(wz.add_quantize(x2, s2, nullptr, QuantizeParams{})->output(),
                                 s2, nullptr, DequantizeParams{})
                   ->output();
  Tensor* w2q =
      wz.add_constant(Weights::from_vector(DataType::kI8, {8, 16}, std::vector<int8_t>(128, 3)))
          ->output();
  Tensor* w2 = wz.add_dequantize(w2q, scales(wz, {0.1f}), zero_points(wz, {1}),
                                 DequantizeParams{})
                   ->output();
  wz.mark_output(wz.add_matrix_multiply(a2, false, w2, true)->output(), "y");
  EXPECT_FALSE(has_kind(built_kinds(wz, 3), LayerKind::kQuantizedMatrixMultiply));
}

TEST(QuantizedMatrixMultiply, LayerChecksItsOperands) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kI8, {4, 16});
  Tensor* b8 = net.add_input("b", DataType::kI8, {8, 12});
  Tensor* s = scales(net, {1.0f});
  test::expect_error(
      [&] {
        net.add_layer(QuantizedMatrixMultiplyParams{}, {a, b8, s, s});
      },
      {"QuantizedMatrixMultiply", "a's last dim (K) equals b's dim 1 (K)", "16 != 12"});
  Tensor* bf = net.add_input("bf", DataType::kF32, {8, 16});
  test::expect_error(
      [&] {
        net.add_layer(QuantizedMatrixMultiplyParams{}, {a, bf, s, s});
      },
      {"b (an int8 product's weight) (input 1) must be i8, got f32"});
  // A zero point is i32 with one element, and FP8 products take none.
  test::expect_error(
      [&] {
        net.add_layer(QuantizedMatrixMultiplyParams{},
                      {a, net.add_input("b16", DataType::kI8, {8, 16}), s, s, nullptr, nullptr, s});
      },
      {"x_zero_point (input 6) must be i32, got f32"});
  Tensor* a8 = net.add_input("a8", DataType::kF8E4M3, {4, 16});
  Tensor* b8f = net.add_input("b8f", DataType::kF8E4M3, {8, 16});
  test::expect_error(
      [&] {
        net.add_layer(QuantizedMatrixMultiplyParams{},
                      {a8, b8f, s, s, nullptr, nullptr, zero_points(net, {0})});
      },
      {"f8e4m3 products are symmetric"});
}

// ---------------------------------------------------------------- QuantizedConvolution

/// One quantized convolution case: geometry, scales, bias, output type and epilogue.
struct QConvCase {
  std::vector<int64_t> x_dims;       ///< [N, C, *spatial]
  std::vector<int64_t> w_dims;       ///< [K, C/groups, *kernel]
  std::vector<int64_t> stride, pad_begin, pad_end, dilation;
  int64_t groups = 1;
  bool per_channel = true;
  bool bias = true;
  DataType out = DataType::kF32;
  bool relu = false;
  double scale = 1.0;
  int32_t zero_point = -1;  ///< >= 0: x is u8 with this zero point (input 6)
};

int64_t numel_of(const std::vector<int64_t>& d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
}

std::vector<int64_t> int8_values(int64_t n, int seed) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = (i * 37 + seed * 11 + (i * i) % 7) % 255 - 127;
  return v;
}

/// The layer's formula written out (layers.h): exact integer sums, then the scales, the bias,
/// rounding to the output type and the activation.
std::vector<float> reference_qconv(const QConvCase& c, const std::vector<int64_t>& x,
                                   const std::vector<int64_t>& w, float xs,
                                   const std::vector<float>& ws, const std::vector<float>& bias,
                                   std::vector<int64_t>& out_dims) {
  const size_t nsp = c.x_dims.size() - 2;
  const int64_t n = c.x_dims[0], ch = c.x_dims[1], k = c.w_dims[0];
  const int64_t cg = ch / c.groups, kg = k / c.groups;
  out_dims = {n, k};
  for (size_t d = 0; d < nsp; ++d) {
    const int64_t extent = c.dilation[d] * (c.w_dims[2 + d] - 1) + 1;
    out_dims.push_back((c.x_dims[2 + d] + c.pad_begin[d] + c.pad_end[d] - extent) / c.stride[d] +
                       1);
  }
  const std::vector<int64_t> osp(out_dims.begin() + 2, out_dims.end());
  const std::vector<int64_t> ksp(c.w_dims.begin() + 2, c.w_dims.end());
  const std::vector<int64_t> isp(c.x_dims.begin() + 2, c.x_dims.end());
  const int64_t out_plane = numel_of(osp), taps = numel_of(ksp), in_plane = numel_of(isp);
  std::vector<float> out;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t oc = 0; oc < k; ++oc) {
      for (int64_t o = 0; o < out_plane; ++o) {
        int64_t acc = 0;
        for (int64_t ic = 0; ic < cg; ++ic) {
          for (int64_t t = 0; t < taps; ++t) {
            int64_t in_index = 0;
            bool inside = true;
            int64_t orest = o, trest = t;
            std::vector<int64_t> opos(nsp), tpos(nsp);
            for (size_t d = nsp; d-- > 0;) {
              opos[d] = orest % osp[d];
              orest /= osp[d];
              tpos[d] = trest % ksp[d];
              trest /= ksp[d];
            }
            for (size_t d = 0; d < nsp; ++d) {
              const int64_t pos = opos[d] * c.stride[d] - c.pad_begin[d] + tpos[d] * c.dilation[d];
              inside = inside && pos >= 0 && pos < isp[d];
              in_index = in_index * isp[d] + pos;
            }
            if (!inside) continue;
            const int64_t xi = (b * ch + (oc / kg) * cg + ic) * in_plane + in_index;
            const int64_t zp = c.zero_point >= 0 ? c.zero_point : 0;
            acc += (x[static_cast<size_t>(xi)] - zp) *
                   w[static_cast<size_t>((oc * cg + ic) * taps + t)];
          }
        }
        float v = static_cast<float>(acc) * (xs * ws[c.per_channel ? oc : 0]);
        v *= static_cast<float>(c.scale);
        if (c.bias) v += bias[static_cast<size_t>(oc)];
        v = test::TestTensor::floats(c.out, {1}, {v}).to_floats()[0];  // rounded to `out`
        if (c.relu) v = std::fmax(v, 0.0f);
        out.push_back(v);
      }
    }
  }
  return out;
}

TEST(QuantizedConvolution, MatchesTheWrittenOutFormula) {
  std::vector<QConvCase> cases;
  // 2-d, stride and dilation, asymmetric padding, per-channel scales, f32 bias.
  cases.push_back({{2, 3, 7, 6}, {5, 3, 3, 2}, {2, 1}, {1, 0}, {0, 1}, {1, 2}});
  // 1-d, per-tensor, no bias, f16 output with relu and an epilogue scale.
  QConvCase c1{{1, 4, 9}, {4, 4, 3}, {1}, {1}, {1}, {1}};
  c1.per_channel = false;
  c1.bias = false;
  c1.out = DataType::kF16;
  c1.relu = true;
  c1.scale = 0.5;
  cases.push_back(c1);
  // Grouped (depthwise) 2-d with a bf16 bias.
  QConvCase c2{{1, 4, 5, 5}, {4, 1, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 4};
  c2.out = DataType::kBF16;
  cases.push_back(c2);
  // 3-d.
  cases.push_back({{1, 2, 3, 4, 4}, {3, 2, 2, 2, 3}, {1, 1, 2}, {0, 1, 1}, {0, 0, 1}, {1, 1, 1}});
  // uint8 x with a zero point, padding on every side (padded taps add nothing).
  QConvCase c4{{1, 3, 5, 5}, {4, 3, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
  c4.zero_point = 130;
  cases.push_back(c4);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const QConvCase& c = cases[i];
    const int64_t k = c.w_dims[0];
    auto xv = int8_values(numel_of(c.x_dims), 1 + static_cast<int>(i));
    const bool u8 = c.zero_point >= 0;
    if (u8) {
      for (int64_t& v : xv) v += 128;  // uint8 values
    }
    const auto wv = int8_values(numel_of(c.w_dims), 7 + static_cast<int>(i));
    std::vector<float> ws, bias;
    for (int64_t j = 0; j < (c.per_channel ? k : 1); ++j) {
      ws.push_back(0.002f * static_cast<float>(j + 1));
    }
    for (int64_t j = 0; j < k; ++j) bias.push_back(0.25f * static_cast<float>(j) - 0.5f);
    const float xs = 0.03f;
    Network net;
    const DataType xdt = u8 ? DataType::kU8 : DataType::kI8;
    Tensor* x = net.add_input("x", xdt, Shape(c.x_dims.begin(), c.x_dims.end()));
    std::vector<int8_t> w8(wv.begin(), wv.end());
    Tensor* w = net.add_constant(Weights::from_vector(DataType::kI8, c.w_dims, w8))->output();
    std::vector<Tensor*> inputs{x, w, scales(net, {xs}), scales(net, ws)};
    if (c.bias) {
      const TestTensor b = TestTensor::floats(c.out, {k}, bias);
      inputs.push_back(
          net.add_constant(Weights::copy(c.out, {k}, b.bytes.data()))->output());
      bias = b.to_floats();  // as stored
    }
    QuantizedConvolutionParams p;
    p.stride = c.stride;
    p.padding_begin = c.pad_begin;
    p.padding_end = c.pad_end;
    p.dilation = c.dilation;
    p.groups = c.groups;
    p.out = c.out;
    p.epilogue.scale = c.scale;
    p.epilogue.fused_activation = c.relu;
    if (u8) {
      inputs.resize(6, nullptr);
      inputs.push_back(zero_points(net, {c.zero_point}));
    }
    net.mark_output(net.add_layer(p, inputs, "qconv")->output(), "y");
    std::vector<int64_t> out_dims;
    const auto want = reference_qconv(c, xv, wv, xs, ws, bias, out_dims);
    const auto out = test::run_network(net, {TestTensor::ints(xdt, c.x_dims, xv)});
    ASSERT_EQ(out[0].dims, out_dims);
    ASSERT_EQ(out[0].dtype, c.out);
    test::expect_close(out[0], want, c.out, "quantized convolution");
  }
}

/// The built plan's layers of `kind`.
std::vector<const Layer*> layers_of(const PlanModel& plan, LayerKind kind) {
  std::vector<const Layer*> out;
  for (const Layer* l : plan.network.layers()) {
    if (l->kind() == kind) out.push_back(l);
  }
  return out;
}

PlanModel built_plan(const Network& net) {
  BuilderConfig config;
  config.optimization_level = 3;
  const std::vector<uint8_t> bytes = Builder(config).build(net);
  return plan_read(bytes.data(), bytes.size());
}

/// x -> Q/DQ (per-tensor int8) -> Convolution(DQ(constant int8 weight), bias) [-> relu] -> out.
struct QdqConv {
  bool per_channel = true;
  bool bias = true;
  DataType dtype = DataType::kF32;
  int64_t groups = 1;
  bool asymmetric_x = false;    ///< uint8 x with a zero point (fused, with input 6).
  bool fp8 = false;             ///< FP8 E4M3 operands (per-tensor scales to fuse).
  bool weight_axis_1 = false;   ///< Per-channel along the weight's input channels: not fused.
  bool relu = false;
  bool requantize = false;      ///< A per-tensor Quantize (of x's kind) -> Dequantize after.
  bool residual = false;        ///< + r (input "r", the output's shape) before the relu.
};

Network qdq_conv(const QdqConv& c) {
  Network net;
  Tensor* x = net.add_input("x", c.dtype, {2, 4, 6, 6});
  Tensor* sx = scales(net, {0.02f});
  QuantizeParams qp;
  qp.to = c.fp8 ? DataType::kF8E4M3 : c.asymmetric_x ? DataType::kU8 : DataType::kI8;
  if (c.asymmetric_x) {
    qp.quant_min = 0;
    qp.quant_max = 255;
  }
  Tensor* zx = c.asymmetric_x ? zero_points(net, {128}) : nullptr;
  Tensor* q = net.add_quantize(x, sx, zx, qp, "qx")->output();
  DequantizeParams dp;
  dp.to = c.dtype;
  Tensor* xd = net.add_dequantize(q, sx, zx, dp, "dqx")->output();
  const std::vector<int64_t> wdims = {8, 4 / c.groups, 3, 3};
  std::vector<int8_t> w8(static_cast<size_t>(numel_of(wdims)));
  std::vector<uint8_t> f8(w8.size());
  for (size_t i = 0; i < w8.size(); ++i) {
    w8[i] = static_cast<int8_t>((static_cast<int>(i) * 53) % 255 - 127);
    f8[i] = f32_to_f8e4m3(static_cast<float>(w8[i]) * 0.5f);
  }
  Tensor* wq = net.add_constant(c.fp8 ? Weights::from_vector(DataType::kF8E4M3, wdims, f8)
                                      : Weights::from_vector(DataType::kI8, wdims, w8),
                                "wq")
                   ->output();
  DequantizeParams wp;
  wp.to = c.dtype;
  std::vector<float> sw;
  if (c.per_channel) {
    wp.per_channel = true;
    wp.axis = c.weight_axis_1 ? 1 : 0;
    for (int64_t j = 0; j < wdims[wp.axis]; ++j) sw.push_back(0.001f * static_cast<float>(j + 1));
  } else {
    sw.push_back(0.004f);
  }
  Tensor* w = net.add_dequantize(wq, scales(net, sw), nullptr, wp, "dqw")->output();
  Tensor* b = nullptr;
  if (c.bias) {
    std::vector<float> bv;
    for (int j = 0; j < 8; ++j) bv.push_back(0.1f * static_cast<float>(j) - 0.3f);
    const TestTensor bt = TestTensor::floats(c.dtype, {8}, bv);
    b = net.add_constant(Weights::copy(c.dtype, {8}, bt.bytes.data()), "bias")->output();
  }
  ConvolutionParams cp;
  cp.stride = {1, 2};
  cp.padding_begin = {1, 1};
  cp.padding_end = {1, 0};
  cp.dilation = {1, 1};
  cp.groups = c.groups;
  Tensor* y = net.add_convolution(xd, w, b, cp, "conv")->output();
  if (c.residual) {
    Tensor* r = net.add_input("r", c.dtype, {2, 8, 6, 3});
    y = net.add_elementwise(y, r, ElementWiseOp::kSum, "add_residual")->output();
  }
  if (c.relu) y = net.add_activation(y, ActivationType::kRelu, 0.0, 0.0, "relu")->output();
  if (c.requantize) {
    QuantizeParams oq = qp;
    Tensor* so = scales(net, {0.05f});
    Tensor* zo = c.asymmetric_x ? zero_points(net, {128}) : nullptr;
    y = net.add_dequantize(net.add_quantize(y, so, zo, oq, "q_out")->output(), so, zo, dp,
                           "dq_out")->output();
  }
  net.mark_output(y, "y");
  return net;
}

TEST(QuantizedConvolution, FusedConvolutionEqualsTheUnfusedQdqGraph) {
  // No bf16 case here: the unfused graph dequantizes into bf16 (8 significant bits, fewer than
  // an int8 value times its scale needs), so it drifts from the exact fused sums by more than
  // bf16's tolerance; the formula test above covers bf16 outputs.
  std::vector<QdqConv> cases(5);
  cases[1].per_channel = false;
  cases[1].bias = false;
  cases[2].dtype = DataType::kF16;
  cases[2].relu = true;
  cases[3].groups = 2;
  cases[4].dtype = DataType::kF16;
  cases[4].groups = 4;
  cases[4].per_channel = false;
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const Network net = qdq_conv(cases[i]);
    const auto kinds = built_kinds(net, 3);
    EXPECT_TRUE(has_kind(kinds, LayerKind::kQuantizedConvolution));
    EXPECT_FALSE(has_kind(kinds, LayerKind::kConvolution));
    EXPECT_FALSE(has_kind(kinds, LayerKind::kDequantize));  // both operands stay int8
    EXPECT_FALSE(has_kind(built_kinds(net, 0), LayerKind::kQuantizedConvolution));
    const TestTensor x = TestTensor::random(cases[i].dtype, {2, 4, 6, 6}, 13, -2.0f, 2.0f);
    // run_network checks each engine against the unfused network's reference run.
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    test::expect_close(fused[0], unfused[0].to_floats(), cases[i].dtype, "fused vs unfused");
  }
}

TEST(QuantizedConvolution, Uint8ActivationsWithAZeroPointFuse) {
  // PT2E's default: uint8 activations with a zero point. The padding is a real zero (q = zp),
  // which the fused layer gets by summing (x - zp) * w over the taps inside the input.
  for (const bool bias : {true, false}) {
    QdqConv c;
    c.asymmetric_x = true;
    c.bias = bias;
    const Network net = qdq_conv(c);
    const auto kinds = built_kinds(net, 3);
    EXPECT_TRUE(has_kind(kinds, LayerKind::kQuantizedConvolution));
    EXPECT_FALSE(has_kind(kinds, LayerKind::kConvolution));
    const TestTensor x = TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 23, -2.0f, 2.0f);
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    test::expect_close(fused[0], unfused[0].to_floats(), DataType::kF32, "fused vs unfused");
  }
}

TEST(QuantizedConvolution, Fp8ConvolutionsFuseAndEqualTheUnfusedQdqGraph) {
  // FP8 E4M3 operands with per-tensor scales (what ember.quantize makes): one
  // QuantizedConvolution summing the exact E4M3 products in f32.
  for (const bool relu : {false, true}) {
    QdqConv c;
    c.fp8 = true;
    c.per_channel = false;
    c.relu = relu;
    const Network net = qdq_conv(c);
    const auto kinds = built_kinds(net, 3);
    EXPECT_TRUE(has_kind(kinds, LayerKind::kQuantizedConvolution));
    EXPECT_FALSE(has_kind(kinds, LayerKind::kConvolution));
    EXPECT_FALSE(has_kind(kinds, LayerKind::kDequantize));
    const TestTensor x = TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 17, -2.0f, 2.0f);
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    test::expect_close(fused[0], unfused[0].to_floats(), DataType::kF32, "fp8 fused vs unfused");
  }
  // Then a per-tensor FP8 Quantize (the next convolution's input): the layer requantizes to
  // FP8 and equals the unfused graph (the same f32 math in the same order on the CPU).
  QdqConv requant;
  requant.fp8 = true;
  requant.per_channel = false;
  requant.relu = true;
  requant.requantize = true;
  const Network rnet = qdq_conv(requant);
  const PlanModel plan = built_plan(rnet);
  const auto qc = layers_of(plan, LayerKind::kQuantizedConvolution);
  ASSERT_EQ(qc.size(), 1u);
  const auto& rp = qc[0]->params_as<QuantizedConvolutionParams>();
  EXPECT_TRUE(rp.requantize.enabled);
  EXPECT_EQ(rp.requantize.to, DataType::kF8E4M3);
  EXPECT_EQ(qc[0]->output()->dtype(), DataType::kF8E4M3);
  const TestTensor x = TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 17, -2.0f, 2.0f);
  EXPECT_EQ(test::run_network(rnet, {x}, {{}, 3})[0].bytes,
            test::run_network(rnet, {x}, {{}, 0})[0].bytes);
  // A per-channel FP8 weight scale is not an FP8 convolution's (per tensor): unfused.
  QdqConv per_channel;
  per_channel.fp8 = true;
  EXPECT_FALSE(has_kind(built_kinds(qdq_conv(per_channel), 3), LayerKind::kQuantizedConvolution));
}

TEST(QuantizedConvolution, NearMissesAreNotFused) {
  QdqConv axis1;
  axis1.weight_axis_1 = true;
  for (const QdqConv& c : {axis1}) {
    const Network net = qdq_conv(c);
    const auto kinds = built_kinds(net, 3);
    EXPECT_FALSE(has_kind(kinds, LayerKind::kQuantizedConvolution));
    EXPECT_TRUE(has_kind(kinds, LayerKind::kConvolution));
    const auto out =
        test::run_network(net, {TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 3, -1.0f, 1.0f)});
    EXPECT_EQ(out[0].dims, (std::vector<int64_t>{2, 8, 6, 3}));
  }
  // A weight that is not a constant (a network input) stays unfused too.
  Network net;
  Tensor* x = net.add_input("x", DataType::kI8, {1, 4, 5, 5});
  Tensor* wq = net.add_input("w", DataType::kI8, {4, 4, 1, 1});
  Tensor* s = scales(net, {0.1f});
  Tensor* xd = net.add_dequantize(x, s, nullptr, DequantizeParams{})->output();
  Tensor* wd = net.add_dequantize(wq, s, nullptr, DequantizeParams{})->output();
  ConvolutionParams cp;
  cp.stride = cp.dilation = {1, 1};
  cp.padding_begin = cp.padding_end = {0, 0};
  net.mark_output(net.add_convolution(xd, wd, nullptr, cp)->output(), "y");
  EXPECT_FALSE(has_kind(built_kinds(net, 3), LayerKind::kQuantizedConvolution));
}

TEST(QuantizedConvolution, LayerChecksItsOperands) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kI8, {1, 4, 5, 5});
  Tensor* w = net.add_input("w", DataType::kI8, {8, 4, 3, 3});
  Tensor* s = scales(net, {1.0f});
  QuantizedConvolutionParams p;
  p.stride = p.dilation = {1, 1};
  p.padding_begin = p.padding_end = {0, 0};
  Tensor* xf = net.add_input("xf", DataType::kF32, {1, 4, 5, 5});
  test::expect_error([&] { net.add_layer(p, {xf, w, s, s}); },
                     {"QuantizedConvolution", "x (input 0) must be i8, u8 or f8e4m3, got f32"});
  test::expect_error([&] { net.add_layer(p, {x, w, s, scales(net, {1.0f, 2.0f})}); },
                     {"w_scale length equals w's dim 0 (K)", "2 != 8"});
  Tensor* b16 = net.add_input("b", DataType::kF16, {8});
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, b16}); },
                     {"bias (the output's dtype)", "must be f32, got f16"});
  Tensor* w5 = net.add_input("w5", DataType::kI8, {8, 5, 3, 3});
  test::expect_error([&] { net.add_layer(p, {x, w5, s, s}); },
                     {"times groups (1) must equal input dim 1"});
  p.stride = {1};
  test::expect_error([&] { net.add_layer(p, {x, w, s, s}); },
                     {"stride needs one value per spatial dim (2), got 1"});
}

TEST(QuantizedConvolution, CudaBackEndLogsTheConvolutionsCudnnCannotTake) {
  // Building needs no GPU: the CUDA back end names each layer's implementation from its
  // parameters, and a grouped or 3-d int8 convolution (the direct kernel, not cuDNN) is logged
  // as a degradation, which the Python layer turns into a warning.
  const auto backends = available_backends();
  if (std::find(backends.begin(), backends.end(), "cuda") == backends.end()) {
    GTEST_SKIP() << "this build has no CUDA back end";
  }
  Network net;
  Tensor* x = net.add_input("x", DataType::kI8, {1, 8, 6, 6});
  Tensor* s = scales(net, {0.1f});
  QuantizedConvolutionParams p;
  p.stride = p.dilation = {1, 1};
  p.padding_begin = p.padding_end = {1, 1};
  Tensor* w = net.add_constant(Weights::from_vector(DataType::kI8, {8, 8, 3, 3},
                                                    std::vector<int8_t>(576, 1)))
                  ->output();
  net.mark_output(net.add_layer(p, {x, w, s, s}, "plain")->output(), "a");
  p.groups = 4;
  Tensor* wg = net.add_constant(Weights::from_vector(DataType::kI8, {8, 2, 3, 3},
                                                     std::vector<int8_t>(144, 1)))
                   ->output();
  net.mark_output(net.add_layer(p, {x, wg, s, s}, "grouped")->output(), "b");
  // uint8 activations with a zero point: cuDNN's path too (shifted into int8, corrected).
  Tensor* xu = net.add_input("xu", DataType::kU8, {1, 8, 6, 6});
  p.groups = 1;
  net.mark_output(net.add_layer(p, {xu, w, s, s, nullptr, nullptr, zero_points(net, {128})},
                                "asymmetric")
                      ->output(),
                  "c");
  BuilderConfig config;
  config.backend = "cuda";
  BuildReport report;
  const std::vector<uint8_t> bytes = Builder(config).build(net, &report);
  const PlanModel plan = plan_read(bytes.data(), bytes.size());
  std::map<std::string, std::string> impl;
  const auto layers = plan.network.layers();
  for (size_t i = 0; i < layers.size(); ++i) impl[layers[i]->name()] = plan.impls[i];
  EXPECT_EQ(impl["plain"], "cuda.QuantizedConvolution");
  EXPECT_EQ(impl["grouped"], "cuda.QuantizedConvolution.direct");
  EXPECT_EQ(impl["asymmetric"], "cuda.QuantizedConvolution");
  std::vector<std::string> degraded;
  for (const std::string& line : report.pass_log) {
    if (line.rfind("degraded: ", 0) == 0) degraded.push_back(line);
  }
  ASSERT_EQ(degraded.size(), 1u);
  EXPECT_NE(degraded[0].find("'grouped'"), std::string::npos) << degraded[0];
  EXPECT_NE(degraded[0].find("groups = 4"), std::string::npos) << degraded[0];
  EXPECT_NE(degraded[0].find("cuda.QuantizedConvolution.direct"), std::string::npos);
}

// ---------------------------------------------------------------- epilogues of the fused products

/// What follows a Q/DQ product in an epilogue test.
struct Tail {
  bool bias = false;                 ///< + constant [N] (matrix product; the conv has its own)
  std::optional<ActivationType> act;
  bool requantize = false;           ///< Quantize (per-tensor int8) -> Dequantize -> output
  bool per_channel_quantize = false; ///< near miss: a per-channel Quantize after
  bool asymmetric_quantize = false;  ///< near miss: a zero point on the Quantize after
  bool product_is_also_output = false;  ///< near miss: the product has a second reader
};

/// Appends `t` to product `y` [.., N] (channel axis `axis`) and marks the output.
void add_tail(Network& net, Tensor* y, int64_t n, int64_t axis, const Tail& t) {
  if (t.product_is_also_output) net.mark_output(y, "product");
  if (t.bias) {
    std::vector<float> b;
    for (int64_t j = 0; j < n; ++j) b.push_back(0.05f * static_cast<float>(j) - 0.2f);
    y = net.add_elementwise(y, scales(net, b), ElementWiseOp::kSum, "add_bias")->output();
  }
  if (t.act) y = net.add_activation(y, *t.act, 0.0, 0.0, "act")->output();
  if (t.requantize || t.per_channel_quantize || t.asymmetric_quantize) {
    QuantizeParams qp;
    qp.quant_min = -127;
    Tensor* s = scales(net, {0.01f});
    Tensor* z = nullptr;
    if (t.per_channel_quantize) {
      qp.per_channel = true;
      qp.axis = axis;
      s = scales(net, std::vector<float>(static_cast<size_t>(n), 0.01f));
    }
    if (t.asymmetric_quantize) z = zero_points(net, {3});
    DequantizeParams dp;
    dp.per_channel = qp.per_channel;
    dp.axis = qp.axis;
    Tensor* q = net.add_quantize(y, s, z, qp, "q_out")->output();
    y = net.add_dequantize(q, s, z, dp, "dq_out")->output();
  }
  net.mark_output(y, "y");
}

TEST(QuantizedEpilogues, MatrixProductTakesBiasActivationAndRequantization) {
  struct Case {
    Tail tail;
    bool fuses_bias, fuses_act, fuses_requantize;
  };
  Tail bias_relu{true, ActivationType::kRelu};
  Tail gelu{false, ActivationType::kGeluErf};
  Tail requant{};
  requant.requantize = true;
  Tail all{true, ActivationType::kGeluTanh};
  all.requantize = true;
  const std::vector<Case> cases = {{bias_relu, true, true, false},
                                   {gelu, false, true, false},
                                   {requant, false, false, true},
                                   {all, true, true, true}};
  const TestTensor x = TestTensor::random(DataType::kF32, {6, 32}, 21, -2.0f, 2.0f);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const Tail& t = cases[i].tail;
    Network net;
    Tensor* in = net.add_input("x", DataType::kF32, {6, 32});
    Tensor* sa = scales(net, {0.02f});
    QuantizeParams qp;
    qp.quant_min = -127;
    Tensor* a = net.add_dequantize(net.add_quantize(in, sa, nullptr, qp)->output(), sa, nullptr,
                                   DequantizeParams{})
                    ->output();
    std::vector<int8_t> w8(8 * 32);
    for (size_t j = 0; j < w8.size(); ++j) {
      w8[j] = static_cast<int8_t>((static_cast<int>(j) * 37) % 255 - 127);
    }
    Tensor* wq = net.add_constant(Weights::from_vector(DataType::kI8, {8, 32}, w8))->output();
    DequantizeParams wp;
    wp.per_channel = true;
    std::vector<float> sb;
    for (int j = 0; j < 8; ++j) sb.push_back(0.001f * static_cast<float>(j + 1));
    Tensor* w = net.add_dequantize(wq, scales(net, sb), nullptr, wp)->output();
    add_tail(net, net.add_matrix_multiply(a, false, w, true, "mm")->output(), 8, 1, t);
    const PlanModel plan = built_plan(net);
    const auto q = layers_of(plan, LayerKind::kQuantizedMatrixMultiply);
    ASSERT_EQ(q.size(), 1u);
    const auto& p = q[0]->params_as<QuantizedMatrixMultiplyParams>();
    EXPECT_EQ(q[0]->input(4) != nullptr, cases[i].fuses_bias);
    EXPECT_EQ(p.epilogue.fused_activation, cases[i].fuses_act);
    EXPECT_EQ(p.requantize.enabled, cases[i].fuses_requantize);
    if (cases[i].fuses_requantize) {
      EXPECT_EQ(q[0]->output()->dtype(), DataType::kI8);
      EXPECT_EQ(p.requantize.quant_min, -127);
      EXPECT_TRUE(layers_of(plan, LayerKind::kQuantize).size() == 1u);  // only the input's
    }
    EXPECT_TRUE(layers_of(plan, LayerKind::kActivation).empty());
    EXPECT_TRUE(layers_of(plan, LayerKind::kElementWise).empty());
    // run_network checks the fused engine against the unfused network's reference run.
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    test::expect_close(fused[0], unfused[0].to_floats(), DataType::kF32, "fused vs unfused");
  }
}

/// x [6, 32] (f32 input) quantized to `q` (int8 or FP8, scale 0.02) times a constant [8, 32]
/// weight of `q` (per-tensor scale 0.004), through Q/DQ and a MatrixMultiply: the product.
Tensor* qdq_linear(Network& net, DataType q) {
  Tensor* in = net.add_input("x", DataType::kF32, {6, 32});
  Tensor* sa = scales(net, {0.02f});
  QuantizeParams qp;
  qp.to = q;
  if (q == DataType::kI8) qp.quant_min = -127;
  Tensor* a = net.add_dequantize(net.add_quantize(in, sa, nullptr, qp)->output(), sa, nullptr,
                                 DequantizeParams{})
                  ->output();
  std::vector<int8_t> w8(8 * 32);
  std::vector<uint8_t> wf(w8.size());
  for (size_t j = 0; j < w8.size(); ++j) {
    w8[j] = static_cast<int8_t>((static_cast<int>(j) * 37) % 255 - 127);
    wf[j] = f32_to_f8e4m3(0.125f * static_cast<float>(w8[j]));
  }
  Tensor* wq = net.add_constant(q == DataType::kI8 ? Weights::from_vector(q, {8, 32}, w8)
                                                   : Weights::from_vector(q, {8, 32}, wf))
                   ->output();
  Tensor* w = net.add_dequantize(wq, scales(net, {0.004f}), nullptr, DequantizeParams{})->output();
  return net.add_matrix_multiply(a, false, w, true, "mm")->output();
}

TEST(QuantizedEpilogues, MatrixProductTakesAResidualAdd) {
  // product + bias + r (a computed tensor of the output's shape; BERT's residual stream): the
  // bias and the residual join the product (input 7), no ElementWise is left, and the engine
  // equals the unfused network (on the CPU here; cuda_quantize_test.cpp runs the GPU's paths).
  // A Quantize after the sum (the next layer's input) then stays a layer of its own: the
  // product takes no requantization with a residual.
  const TestTensor x = TestTensor::random(DataType::kF32, {6, 32}, 21, -2.0f, 2.0f);
  const TestTensor r = TestTensor::random(DataType::kF32, {6, 8}, 22, -1.0f, 1.0f);
  for (DataType q : {DataType::kI8, DataType::kF8E4M3}) {
    for (const bool then_quantize : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(q)) + (then_quantize ? " then quantize" : ""));
      Network net;
      Tensor* y = qdq_linear(net, q);
      std::vector<float> b;
      for (int64_t j = 0; j < 8; ++j) b.push_back(0.05f * static_cast<float>(j) - 0.2f);
      y = net.add_elementwise(y, scales(net, b), ElementWiseOp::kSum, "add_bias")->output();
      Tensor* rin = net.add_input("r", DataType::kF32, {6, 8});
      y = net.add_elementwise(rin, y, ElementWiseOp::kSum, "add_residual")->output();
      if (then_quantize) {
        QuantizeParams oq;
        oq.to = q;
        Tensor* so = scales(net, {0.05f});
        y = net.add_dequantize(net.add_quantize(y, so, nullptr, oq, "q_out")->output(), so,
                               nullptr, DequantizeParams{}, "dq_out")
                ->output();
      }
      net.mark_output(y, "y");
      const PlanModel plan = built_plan(net);
      const auto qm = layers_of(plan, LayerKind::kQuantizedMatrixMultiply);
      ASSERT_EQ(qm.size(), 1u);
      EXPECT_NE(qm[0]->input(4), nullptr);  // the bias
      ASSERT_NE(qm[0]->input(7), nullptr);  // the residual
      EXPECT_EQ(qm[0]->input(7)->name(), "r");
      EXPECT_FALSE(qm[0]->params_as<QuantizedMatrixMultiplyParams>().requantize.enabled);
      EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(), then_quantize ? 2u : 1u);
      EXPECT_TRUE(layers_of(plan, LayerKind::kElementWise).empty());
      const auto fused = test::run_network(net, {x, r}, {{}, 3});
      const auto unfused = test::run_network(net, {x, r}, {{}, 0});
      test::expect_close(fused[0], unfused[0].to_floats(), DataType::kF32, "fused vs unfused");
    }
  }
}

TEST(QuantizedEpilogues, Fp8ProductTakesAnFp8Quantize) {
  // FP8 product -> bias -> erf GELU -> per-tensor FP8 Quantize (BERT's intermediate product
  // under ember.quantize(dtype=float8_e4m3fn)): one layer that outputs the FP8 tensor, equal
  // byte for byte to the unfused network's (the same f32 math in the same order on the CPU).
  // An int8 product keeps its FP8 Quantize (a layer requantizes to FP8 from FP8 sums only).
  const TestTensor x = TestTensor::random(DataType::kF32, {6, 32}, 21, -2.0f, 2.0f);
  for (DataType q : {DataType::kF8E4M3, DataType::kI8}) {
    SCOPED_TRACE(dtype_name(q));
    Network net;
    Tensor* y = qdq_linear(net, q);
    std::vector<float> b;
    for (int64_t j = 0; j < 8; ++j) b.push_back(0.05f * static_cast<float>(j) - 0.2f);
    y = net.add_elementwise(y, scales(net, b), ElementWiseOp::kSum, "add_bias")->output();
    y = net.add_activation(y, ActivationType::kGeluErf, 0.0, 0.0, "gelu")->output();
    QuantizeParams f8;
    f8.to = DataType::kF8E4M3;
    Tensor* so = scales(net, {0.05f});
    Tensor* yq = net.add_quantize(y, so, nullptr, f8, "q_out")->output();
    net.mark_output(yq, "y_fp8");
    net.mark_output(net.add_dequantize(yq, so, nullptr, DequantizeParams{}, "dq_out")->output(),
                    "y");
    const PlanModel plan = built_plan(net);
    const auto qm = layers_of(plan, LayerKind::kQuantizedMatrixMultiply);
    ASSERT_EQ(qm.size(), 1u);
    const auto& p = qm[0]->params_as<QuantizedMatrixMultiplyParams>();
    EXPECT_TRUE(p.epilogue.fused_activation);
    const bool fp8 = q == DataType::kF8E4M3;
    EXPECT_EQ(p.requantize.enabled, fp8);
    EXPECT_EQ(qm[0]->output()->dtype(), fp8 ? DataType::kF8E4M3 : DataType::kF32);
    EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(), fp8 ? 1u : 2u);  // + the input's
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    EXPECT_EQ(fused[0].bytes, unfused[0].bytes);
  }
}

TEST(QuantizedEpilogues, ConvolutionTakesActivationAndRequantization) {
  Tail relu{false, ActivationType::kRelu};
  Tail relu_requant{false, ActivationType::kRelu};
  relu_requant.requantize = true;
  Tail gelu_requant{false, ActivationType::kGeluErf};
  gelu_requant.requantize = true;
  const TestTensor x = TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 17, -2.0f, 2.0f);
  for (const Tail& t : {relu, relu_requant, gelu_requant}) {
    Network net;
    Tensor* in = net.add_input("x", DataType::kF32, {2, 4, 6, 6});
    Tensor* sx = scales(net, {0.02f});
    Tensor* xd = net.add_dequantize(net.add_quantize(in, sx, nullptr, QuantizeParams{})->output(),
                                    sx, nullptr, DequantizeParams{})
                     ->output();
    std::vector<int8_t> w8(8 * 4 * 3 * 3);
    for (size_t j = 0; j < w8.size(); ++j) {
      w8[j] = static_cast<int8_t>((static_cast<int>(j) * 53) % 255 - 127);
    }
    Tensor* wq = net.add_constant(Weights::from_vector(DataType::kI8, {8, 4, 3, 3}, w8))->output();
    Tensor* wd = net.add_dequantize(wq, scales(net, {0.004f}), nullptr, DequantizeParams{})
                     ->output();
    ConvolutionParams cp;
    cp.stride = cp.dilation = {1, 1};
    cp.padding_begin = cp.padding_end = {1, 1};
    Tensor* b = scales(net, {0.1f, -0.1f, 0.2f, 0.0f, 0.3f, -0.3f, 0.05f, 0.0f});
    add_tail(net, net.add_convolution(xd, wd, b, cp, "conv")->output(), 8, 1, t);
    const PlanModel plan = built_plan(net);
    const auto q = layers_of(plan, LayerKind::kQuantizedConvolution);
    ASSERT_EQ(q.size(), 1u);
    const auto& p = q[0]->params_as<QuantizedConvolutionParams>();
    EXPECT_TRUE(p.epilogue.fused_activation);
    EXPECT_EQ(p.epilogue.activation, *t.act);
    EXPECT_EQ(p.requantize.enabled, t.requantize);
    EXPECT_EQ(q[0]->output()->dtype(), t.requantize ? DataType::kI8 : DataType::kF32);
    EXPECT_TRUE(layers_of(plan, LayerKind::kActivation).empty());
    const auto fused = test::run_network(net, {x}, {{}, 3});
    const auto unfused = test::run_network(net, {x}, {{}, 0});
    test::expect_close(fused[0], unfused[0].to_floats(), DataType::kF32, "fused vs unfused");
  }
}

TEST(QuantizedEpilogues, ConvolutionTakesAResidualAdd) {
  // conv + r -> relu (ResNet's block end, r the shortcut) for INT8 and FP8: the residual joins
  // the convolution (input 7) before its relu, no ElementWise or Activation is left, and the
  // engine equals the unfused network (on the CPU here; cuda_quantize_test.cpp runs the GPU's
  // paths). A Quantize after it (the next block's input) joins an INT8 convolution as its
  // requantization; an FP8 convolution takes no requantization with a residual.
  const TestTensor x = TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 17, -2.0f, 2.0f);
  const TestTensor r = TestTensor::random(DataType::kF32, {2, 8, 6, 3}, 23, -1.0f, 1.0f);
  for (const bool fp8 : {false, true}) {
    for (const bool then_quantize : {false, true}) {
      SCOPED_TRACE(std::string(fp8 ? "fp8" : "int8") + (then_quantize ? " then quantize" : ""));
      QdqConv c;
      c.fp8 = fp8;
      c.per_channel = !fp8;
      c.relu = true;
      c.residual = true;
      c.requantize = then_quantize;
      const Network net = qdq_conv(c);
      const PlanModel plan = built_plan(net);
      const auto qc = layers_of(plan, LayerKind::kQuantizedConvolution);
      ASSERT_EQ(qc.size(), 1u);
      ASSERT_NE(qc[0]->input(7), nullptr);
      EXPECT_EQ(qc[0]->input(7)->name(), "r");
      const auto& p = qc[0]->params_as<QuantizedConvolutionParams>();
      EXPECT_TRUE(p.epilogue.fused_activation);
      const bool requantized = then_quantize && !fp8;
      EXPECT_EQ(p.requantize.enabled, requantized);
      EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(),
                then_quantize && !requantized ? 2u : 1u);
      EXPECT_TRUE(layers_of(plan, LayerKind::kElementWise).empty());
      EXPECT_TRUE(layers_of(plan, LayerKind::kActivation).empty());
      const auto fused = test::run_network(net, {x, r}, {{}, 3});
      const auto unfused = test::run_network(net, {x, r}, {{}, 0});
      test::expect_close(fused[0], unfused[0].to_floats(), DataType::kF32, "fused vs unfused");
    }
  }
}

TEST(QuantizedEpilogues, Int8ConvolutionReadsAnInt8ShortcutAndRequantizes) {
  // ResNet's block end as ember.quantize writes it (quantize_residuals): conv + DQ(q_r) -> relu
  // -> Q, the shortcut q_r the int8 tensor the previous block made. The convolution takes q_r
  // as an i8 residual (input 7) with its scale (input 8), and the Quantize as its
  // requantization: no Dequantize of the shortcut, no ElementWise, Activation or output Quantize
  // is left, and the engine's values are the unfused network's. In f32 (the fused sum adds the
  // product and the shortcut in the unfused add's order); in f16 the unfused network rounds the
  // product before the add, so a value on a requantization tie may move a step (the f16 paths
  // run in cuda_quantize_test.cpp against the layer's reference).
  {
    const DataType dt = DataType::kF32;
    Network net;
    Tensor* in = net.add_input("x", dt, {2, 4, 6, 6});
    Tensor* rin = net.add_input("r", dt, {2, 8, 6, 6});
    Tensor* sx = scales(net, {0.02f});
    Tensor* sr = scales(net, {0.03f});
    DequantizeParams dp;
    dp.to = dt;
    Tensor* xd = net.add_dequantize(net.add_quantize(in, sx, nullptr, QuantizeParams{})->output(),
                                    sx, nullptr, dp)
                     ->output();
    Tensor* qr = net.add_quantize(rin, sr, nullptr, QuantizeParams{}, "q_shortcut")->output();
    Tensor* rd = net.add_dequantize(qr, sr, nullptr, dp, "dq_shortcut")->output();
    std::vector<int8_t> w8(8 * 4 * 3 * 3);
    for (size_t j = 0; j < w8.size(); ++j) {
      w8[j] = static_cast<int8_t>((static_cast<int>(j) * 53) % 255 - 127);
    }
    Tensor* wq = net.add_constant(Weights::from_vector(DataType::kI8, {8, 4, 3, 3}, w8))->output();
    DequantizeParams wdp;
    wdp.to = dt;
    Tensor* wd = net.add_dequantize(wq, scales(net, {0.004f}), nullptr, wdp)->output();
    ConvolutionParams cp;
    cp.stride = cp.dilation = {1, 1};
    cp.padding_begin = cp.padding_end = {1, 1};
    Tensor* y = net.add_convolution(xd, wd, nullptr, cp, "conv")->output();
    y = net.add_elementwise(y, rd, ElementWiseOp::kSum, "add_shortcut")->output();
    y = net.add_activation(y, ActivationType::kRelu, 0.0, 0.0, "relu")->output();
    Tensor* so = scales(net, {0.05f});
    y = net.add_dequantize(net.add_quantize(y, so, nullptr, QuantizeParams{}, "q_out")->output(),
                           so, nullptr, dp, "dq_out")
            ->output();
    net.mark_output(y, "y");
    const PlanModel plan = built_plan(net);
    const auto qc = layers_of(plan, LayerKind::kQuantizedConvolution);
    ASSERT_EQ(qc.size(), 1u);
    ASSERT_NE(qc[0]->input(7), nullptr);
    EXPECT_EQ(qc[0]->input(7)->dtype(), DataType::kI8);
    EXPECT_EQ(qc[0]->input(7)->producer()->name(), "q_shortcut");
    ASSERT_NE(qc[0]->input(8), nullptr);
    const auto& p = qc[0]->params_as<QuantizedConvolutionParams>();
    EXPECT_TRUE(p.epilogue.fused_activation);
    EXPECT_TRUE(p.requantize.enabled);
    EXPECT_EQ(qc[0]->output()->dtype(), DataType::kI8);
    EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(), 2u);    // x's and the shortcut's
    EXPECT_EQ(layers_of(plan, LayerKind::kDequantize).size(), 1u);  // the output's
    EXPECT_TRUE(layers_of(plan, LayerKind::kElementWise).empty());
    EXPECT_TRUE(layers_of(plan, LayerKind::kActivation).empty());
    const TestTensor x = TestTensor::random(dt, {2, 4, 6, 6}, 17, -2.0f, 2.0f);
    const TestTensor r = TestTensor::random(dt, {2, 8, 6, 6}, 23, -3.0f, 3.0f);
    const auto fused = test::run_network(net, {x, r}, {{}, 3});
    const auto unfused = test::run_network(net, {x, r}, {{}, 0});
    EXPECT_EQ(fused[0].bytes, unfused[0].bytes);
  }
}

TEST(QuantizedEpilogues, ConvolutionResidualIsCheckedOnTheLayer) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kI8, {2, 4, 6, 6});
  Tensor* w = net.add_input("w", DataType::kI8, {8, 4, 3, 3});
  Tensor* s = scales(net, {1.0f});
  QuantizedConvolutionParams p;
  p.stride = p.dilation = {1, 1};
  p.padding_begin = p.padding_end = {1, 1};
  Tensor* r = net.add_input("r", DataType::kF32, {2, 8, 6, 6});
  Tensor* r_small = net.add_input("r_small", DataType::kF32, {2, 8, 6, 5});
  Tensor* r_half = net.add_input("r_half", DataType::kF16, {2, 8, 6, 6});
  EXPECT_EQ(net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r})->output()->dtype(),
            DataType::kF32);
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r_small}); },
                     {"QuantizedConvolution",
                      "residual (input 7) shape [2, 8, 6, 5] differs from the output's "
                      "[2, 8, 6, 6]"});
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r_half}); },
                     {"residual (the float type, or i8 with residual_scale)"});
  // An int8 convolution's residual may be i8 with its scale (input 8), and it may requantize.
  Tensor* r8 = net.add_input("r8", DataType::kI8, {2, 8, 6, 6});
  EXPECT_EQ(net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r8, s})->output()->dtype(),
            DataType::kF32);
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r8}); },
                     {"an i8 residual (input 7) needs its residual_scale (input 8)"});
  test::expect_error(
      [&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, nullptr, s}); },
      {"residual_scale (input 8) is given without a residual (input 7)"});
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r, s}); },
                     {"residual_scale (input 8) goes with an i8 residual only"});
  Tensor* two = scales(net, {1.0f, 2.0f});
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r8, two}); },
                     {"residual_scale (input 8) must have one element, got shape [2]"});
  test::expect_error([&] { net.add_layer(p, {x, w, s, s, nullptr, nullptr, nullptr, r8, r8}); },
                     {"residual_scale"});
  QuantizedConvolutionParams requant = p;
  requant.requantize.enabled = true;
  EXPECT_EQ(net.add_layer(requant, {x, w, s, s, nullptr, s, nullptr, r})->output()->dtype(),
            DataType::kI8);
  EXPECT_EQ(net.add_layer(requant, {x, w, s, s, nullptr, s, nullptr, r8, s})->output()->dtype(),
            DataType::kI8);
  // An FP8 convolution keeps the residual to its float output.
  Tensor* x8 = net.add_input("x8", DataType::kF8E4M3, {2, 4, 6, 6});
  Tensor* w8 = net.add_input("w8", DataType::kF8E4M3, {8, 4, 3, 3});
  requant.requantize.to = DataType::kF8E4M3;
  test::expect_error([&] { net.add_layer(requant, {x8, w8, s, s, nullptr, s, nullptr, r}); },
                     {"a residual (input 7) is not taken with requantize on"});
  test::expect_error([&] { net.add_layer(p, {x8, w8, s, s, nullptr, nullptr, nullptr, r8, s}); },
                     {"residual_scale (input 8) goes with an i8 residual only"});
  test::expect_error([&] { net.add_layer(p, {x8, w8, s, s, nullptr, nullptr, nullptr, r8}); },
                     {"residual (the output's dtype)"});
}

TEST(QuantizedEpilogues, NearMissesAreNotFused) {
  // A per-channel or asymmetric Quantize after the product stays a Quantize layer; a product
  // that is also a network output keeps its activation outside (both readers need the float
  // product).
  Tail per_channel{false, ActivationType::kRelu};
  per_channel.per_channel_quantize = true;
  Tail asymmetric{false, ActivationType::kRelu};
  asymmetric.asymmetric_quantize = true;
  Tail shared{false, ActivationType::kRelu};
  shared.product_is_also_output = true;
  const TestTensor x = TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 5, -2.0f, 2.0f);
  for (const Tail& t : {per_channel, asymmetric, shared}) {
    Network net;
    Tensor* in = net.add_input("x", DataType::kF32, {2, 4, 6, 6});
    Tensor* sx = scales(net, {0.02f});
    Tensor* xd = net.add_dequantize(net.add_quantize(in, sx, nullptr, QuantizeParams{})->output(),
                                    sx, nullptr, DequantizeParams{})
                     ->output();
    Tensor* wq = net.add_constant(Weights::from_vector(DataType::kI8, {8, 4, 1, 1},
                                                       std::vector<int8_t>(32, 5)))
                     ->output();
    Tensor* wd = net.add_dequantize(wq, scales(net, {0.01f}), nullptr, DequantizeParams{})
                     ->output();
    ConvolutionParams cp;
    cp.stride = cp.dilation = {1, 1};
    cp.padding_begin = cp.padding_end = {0, 0};
    add_tail(net, net.add_convolution(xd, wd, nullptr, cp, "conv")->output(), 8, 1, t);
    const PlanModel plan = built_plan(net);
    const auto q = layers_of(plan, LayerKind::kQuantizedConvolution);
    ASSERT_EQ(q.size(), 1u);
    const auto& p = q[0]->params_as<QuantizedConvolutionParams>();
    EXPECT_FALSE(p.requantize.enabled);
    EXPECT_EQ(q[0]->output()->dtype(), DataType::kF32);
    EXPECT_EQ(p.epilogue.fused_activation, !t.product_is_also_output);
    if (!t.product_is_also_output) EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(), 2u);
    test::run_network(net, {x});
  }
}

TEST(QuantizedEpilogues, RequantizationIsCheckedOnTheLayer) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kI8, {4, 16});
  Tensor* b = net.add_input("b", DataType::kI8, {8, 16});
  Tensor* s = scales(net, {1.0f});
  QuantizedMatrixMultiplyParams p;
  p.requantize.enabled = true;
  test::expect_error([&] { net.add_layer(p, {a, b, s, s}); },
                     {"QuantizedMatrixMultiply", "requantize needs out_scale (input 5)"});
  p.requantize.quant_min = -129;
  test::expect_error([&] { net.add_layer(p, {a, b, s, s, nullptr, s}); },
                     {"requantize range [-129, 127]"});
  QuantizedMatrixMultiplyParams plain;
  test::expect_error([&] { net.add_layer(plain, {a, b, s, s, nullptr, s}); },
                     {"out_scale) is only taken with requantize on"});
  test::expect_error([&] { net.add_layer(plain, {a, b, s, s, scales(net, {1, 2, 3})}); },
                     {"bias length equals the output channels (8)", "3 != 8"});
  p.requantize.quant_min = -128;
  EXPECT_EQ(net.add_layer(p, {a, b, s, s, nullptr, s})->output()->dtype(), DataType::kI8);
  // FP8 requantization: from FP8 sums only; a residual: the output's dtype and shape, and not
  // with requantize on.
  QuantizedMatrixMultiplyParams to8 = p;
  to8.requantize.to = DataType::kF8E4M3;
  test::expect_error([&] { net.add_layer(to8, {a, b, s, s, nullptr, s}); },
                     {"requantizes to f8e4m3", "only from f8e4m3 operands"});
  Tensor* a8 = net.add_input("a8", DataType::kF8E4M3, {4, 16});
  Tensor* b8 = net.add_input("b8", DataType::kF8E4M3, {8, 16});
  EXPECT_EQ(net.add_layer(to8, {a8, b8, s, s, nullptr, s})->output()->dtype(),
            DataType::kF8E4M3);
  to8.requantize.to = DataType::kBF16;
  test::expect_error([&] { net.add_layer(to8, {a8, b8, s, s, nullptr, s}); },
                     {"requantizes to bf16: only i8 and f8e4m3 are taken"});
  Tensor* r = net.add_input("r", DataType::kF32, {4, 8});
  Tensor* r_short = net.add_input("r_short", DataType::kF32, {4, 7});
  Tensor* r_half = net.add_input("r_half", DataType::kF16, {4, 8});
  EXPECT_EQ(net.add_layer(plain, {a, b, s, s, nullptr, nullptr, nullptr, r})->output()->dtype(),
            DataType::kF32);
  test::expect_error([&] { net.add_layer(plain, {a, b, s, s, nullptr, nullptr, nullptr, r_short}); },
                     {"residual (input 7) shape [4, 7] differs from the output's [4, 8]"});
  test::expect_error([&] { net.add_layer(plain, {a, b, s, s, nullptr, nullptr, nullptr, r_half}); },
                     {"residual (the output's dtype)"});
  test::expect_error([&] { net.add_layer(p, {a, b, s, s, nullptr, s, nullptr, r}); },
                     {"a residual (input 7) is not taken with requantize on"});
}

/// The layer norm of x [6, 40] (`dtype`, constant scale and bias of it) over its last dim.
Tensor* layer_norm(Network& net, Tensor* x, DataType dtype, const std::string& name = "ln") {
  std::vector<float> g, b;
  for (int64_t j = 0; j < 40; ++j) {
    g.push_back(0.5f + 0.03f * static_cast<float>(j));
    b.push_back(0.02f * static_cast<float>(j % 7) - 0.05f);
  }
  Tensor* gt = net.add_constant(from_floats(dtype, {40}, g))->output();
  Tensor* bt = net.add_constant(from_floats(dtype, {40}, b))->output();
  NormalizationParams p;
  p.axis = 1;
  return net.add_normalization(x, gt, bt, p, name)->output();
}

TEST(QuantizeNormOutputs, LayerNormWritesTheQuantizedTensorItself) {
  // LayerNorm -> per-tensor Quantize (a quantized transformer's norm before its next product):
  // the norm writes the quantized bytes, the Quantize layer goes, and the bytes equal the
  // unfused network's (the Quantize's math on the value the norm's output holds). A norm whose
  // output something else reads too (BERT's post-LN residual) keeps that output beside it.
  for (DataType dtype : {DataType::kF32, DataType::kF16}) {
    for (DataType q : {DataType::kI8, DataType::kF8E4M3}) {
      for (const bool other_reader : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " to " + dtype_name(q) +
                     (other_reader ? ", with another reader" : ""));
        Network net;
        Tensor* x = net.add_input("x", dtype, {6, 40});
        Tensor* y = layer_norm(net, x, dtype);
        QuantizeParams qp;
        qp.to = q;
        if (q == DataType::kI8) qp.quant_min = -127;
        Tensor* sq = scales(net, {0.015f});
        Tensor* yq = net.add_quantize(y, sq, nullptr, qp, "q")->output();
        net.mark_output(yq, "y_q");
        if (other_reader) {
          net.mark_output(net.add_elementwise(y, x, ElementWiseOp::kSum, "residual")->output(),
                          "y_plus_x");
        }
        const PlanModel plan = built_plan(net);
        const auto norms = layers_of(plan, LayerKind::kNormalization);
        ASSERT_EQ(norms.size(), 1u);
        const auto& nq = norms[0]->params_as<NormalizationParams>().quantize;
        EXPECT_TRUE(nq.enabled);
        EXPECT_EQ(nq.to, q);
        EXPECT_EQ(nq.quant_min, qp.quant_min);
        EXPECT_EQ(nq.float_output, other_reader);
        ASSERT_EQ(norms[0]->outputs().size(), other_reader ? 2u : 1u);
        EXPECT_EQ(norms[0]->outputs().back()->dtype(), q);
        EXPECT_TRUE(layers_of(plan, LayerKind::kQuantize).empty());
        EXPECT_TRUE(test::build_logs(net, 3, "quantize_norm_outputs: 1 layer norms"));
        const TestTensor xv = TestTensor::random(dtype, {6, 40}, 41, -3.0f, 3.0f);
        const auto fused = test::run_network(net, {xv}, {{}, 3});
        const auto unfused = test::run_network(net, {xv}, {{}, 0});
        ASSERT_EQ(fused.size(), unfused.size());
        for (size_t i = 0; i < fused.size(); ++i) {
          EXPECT_EQ(fused[i].bytes, unfused[i].bytes) << "output " << i;
        }
      }
    }
  }
}

TEST(QuantizeNormOutputs, NearMissesKeepTheirQuantize) {
  const TestTensor xv = TestTensor::random(DataType::kF32, {6, 40}, 42, -3.0f, 3.0f);
  struct Case {
    std::string what;
    bool zero_point = false;
    bool per_channel = false;
    bool group_norm = false;
  };
  for (const Case& c : std::vector<Case>{{"an asymmetric uint8 Quantize", true, false, false},
                                         {"a per-channel Quantize", false, true, false},
                                         {"a group norm", false, false, true}}) {
    SCOPED_TRACE(c.what);
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {6, 40});
    Tensor* y = nullptr;
    if (c.group_norm) {
      NormalizationParams gp;
      gp.type = NormalizationType::kGroup;
      gp.num_groups = 2;
      y = net.add_normalization(x, nullptr, nullptr, gp, "gn")->output();
    } else {
      y = layer_norm(net, x, DataType::kF32);
    }
    QuantizeParams qp;
    Tensor* zp = nullptr;
    Tensor* s = scales(net, {0.015f});
    if (c.zero_point) {
      qp.to = DataType::kU8;
      qp.quant_min = 0;
      qp.quant_max = 255;
      zp = zero_points(net, {128});
    }
    if (c.per_channel) {
      qp.per_channel = true;
      qp.axis = 0;
      s = scales(net, {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f});
    }
    net.mark_output(net.add_quantize(y, s, zp, qp, "q")->output(), "y_q");
    const PlanModel plan = built_plan(net);
    EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(), 1u);
    for (const Layer* n : layers_of(plan, LayerKind::kNormalization)) {
      EXPECT_FALSE(n->params_as<NormalizationParams>().quantize.enabled);
    }
    test::run_network(net, {xv}, {{}, 3});  // checks the engine against the reference run
  }
  // Two Quantizes of one norm: one with the norm's quantized output's scale goes, the other
  // (another scale) stays.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {6, 40});
  Tensor* y = layer_norm(net, x, DataType::kF32);
  QuantizeParams qp;
  net.mark_output(net.add_quantize(y, scales(net, {0.015f}), nullptr, qp, "q1")->output(), "a");
  net.mark_output(net.add_quantize(y, scales(net, {0.03f}), nullptr, qp, "q2")->output(), "b");
  const PlanModel plan = built_plan(net);
  EXPECT_EQ(layers_of(plan, LayerKind::kQuantize).size(), 1u);
  const auto fused = test::run_network(net, {xv}, {{}, 3});
  const auto unfused = test::run_network(net, {xv}, {{}, 0});
  EXPECT_EQ(fused[0].bytes, unfused[0].bytes);
  EXPECT_EQ(fused[1].bytes, unfused[1].bytes);
}

TEST(QuantizeNormOutputs, QuantizedOutputIsCheckedOnTheLayer) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {6, 40});
  Tensor* s = scales(net, {0.015f});
  NormalizationParams p;
  p.quantize.enabled = true;
  p.quantize.to = DataType::kF8E4M3;
  const Layer* both = net.add_layer(p, {x, nullptr, nullptr, s}, "both");
  ASSERT_EQ(both->outputs().size(), 2u);
  EXPECT_EQ(both->outputs()[0]->dtype(), DataType::kF16);
  EXPECT_EQ(both->outputs()[1]->dtype(), DataType::kF8E4M3);
  NormalizationParams only = p;
  only.quantize.float_output = false;
  const Layer* one = net.add_layer(only, {x, nullptr, nullptr, s}, "one");
  ASSERT_EQ(one->outputs().size(), 1u);
  EXPECT_EQ(one->output()->dtype(), DataType::kF8E4M3);
  test::expect_error([&] { net.add_layer(p, {x, nullptr, nullptr}); },
                     {"quantize needs its scale (input 3)"});
  Tensor* s2 = scales(net, {0.01f, 0.02f});
  test::expect_error([&] { net.add_layer(p, {x, nullptr, nullptr, s2}); },
                     {"quantize scale (input 3) must have one element, got shape [2]"});
  Tensor* sx = net.add_input("s_half", DataType::kF16, {1});
  test::expect_error([&] { net.add_layer(p, {x, nullptr, nullptr, sx}); }, {"quantize scale"});
  NormalizationParams u8 = p;
  u8.quantize.to = DataType::kU8;
  test::expect_error([&] { net.add_layer(u8, {x, nullptr, nullptr, s}); },
                     {"quantize_to must be i8 or f8e4m3, got u8"});
  NormalizationParams wide = p;
  wide.quantize.to = DataType::kI8;
  wide.quantize.quant_max = 200;
  test::expect_error([&] { net.add_layer(wide, {x, nullptr, nullptr, s}); },
                     {"quantize range [-128, 200]"});
  NormalizationParams group = p;
  group.type = NormalizationType::kGroup;
  test::expect_error([&] { net.add_layer(group, {x, nullptr, nullptr, s}); },
                     {"a quantized output is taken by layer and RMS norms only"});
  NormalizationParams no_q;
  no_q.quantize.float_output = false;
  test::expect_error([&] { net.add_layer(no_q, {x, nullptr, nullptr}); },
                     {"float_output off needs quantize on"});
  test::expect_error([&] { net.add_layer(NormalizationParams{}, {x, nullptr, nullptr, s}); },
                     {"expects 1 to 3 inputs, got 4"});
}

}  // namespace
}  // namespace ember::engine
