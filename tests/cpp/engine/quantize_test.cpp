// The quantization family (Quantize, Dequantize) on the CPU reference back end, against the
// formulas written out here: PyTorch's quantized_decomposed math (x * (1 / scale), round half to
// even, + zero_point, clamp) and FP8 E4M3 with saturation. Every case runs through the builder
// and a plan round trip (test::run_network).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/half.h"
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

TEST(QuantizedMatrixMultiply, AsymmetricOrUint8ChainsAreNotFused) {
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
  EXPECT_FALSE(has_kind(built_kinds(net, 3), LayerKind::kQuantizedMatrixMultiply));
  const auto out = test::run_network(net, {TestTensor::random(DataType::kF32, {4, 16}, 5)});
  EXPECT_EQ(out[0].dims, (std::vector<int64_t>{4, 8}));
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
      {"one dtype", "i8 and f32"});
}

}  // namespace
}  // namespace ember::engine
