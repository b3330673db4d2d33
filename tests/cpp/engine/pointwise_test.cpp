// Tests of the pointwise family (Activation, ElementWise, Unary, Select, Cast) against naive
// reference loops written here. References compute in double from the already-rounded inputs;
// integer references compute in int64 and wrap to the result dtype.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "backends/cpu/kernels.h"
#include "ember/engine/half.h"
#include "ember/engine/network.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::RunOptions;
using test::TestTensor;
using test::expect_error;

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};
const std::vector<DataType> kIntTypes = {DataType::kI8, DataType::kU8, DataType::kI32,
                                         DataType::kI64};
const std::vector<DataType> kAllTypes = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                         DataType::kI8,  DataType::kU8,  DataType::kI32,
                                         DataType::kI64, DataType::kBool};

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr double kPi = 3.14159265358979323846;

// ---------------------------------------------------------------- helpers

/// Row-major multi-index of flat index i.
std::vector<int64_t> unravel(int64_t i, const std::vector<int64_t>& dims) {
  std::vector<int64_t> idx(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    idx[d] = i % dims[d];
    i /= dims[d];
  }
  return idx;
}

/// numpy broadcast of two concrete shapes (the test's own, independent of the engine's).
std::vector<int64_t> broadcast(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const size_t r = std::max(a.size(), b.size());
  std::vector<int64_t> out(r);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i + a.size() >= r ? a[i + a.size() - r] : 1;
    const int64_t db = i + b.size() >= r ? b[i + b.size() - r] : 1;
    out[i] = da == 1 ? db : da;
  }
  return out;
}

/// Flat index into `in` (broadcast to `out`) of output element `flat`.
int64_t source_index(int64_t flat, const std::vector<int64_t>& out,
                     const std::vector<int64_t>& in) {
  const std::vector<int64_t> idx = unravel(flat, out);
  int64_t s = 0;
  const size_t off = out.size() - in.size();
  for (size_t d = 0; d < in.size(); ++d) s = s * in[d] + (in[d] == 1 ? 0 : idx[off + d]);
  return s;
}

/// Wraps v to what storing it as `t` and reading it back gives (two's complement).
int64_t wrap_to(DataType t, int64_t v) {
  switch (t) {
    case DataType::kI8:
      return static_cast<int8_t>(v);
    case DataType::kU8:
      return static_cast<uint8_t>(v);
    case DataType::kI32:
      return static_cast<int32_t>(v);
    case DataType::kBool:
      return v != 0;
    default:
      return v;
  }
}

/// Rounds a float to dtype `t` and back (the store every float kernel ends with).
float round_to(DataType t, float v) {
  switch (t) {
    case DataType::kF16:
      return f16_to_f32(f32_to_f16(v));
    case DataType::kBF16:
      return bf16_to_f32(f32_to_bf16(v));
    default:
      return v;
  }
}

uint64_t u(int64_t v) { return static_cast<uint64_t>(v); }

/// Runs a network with one output.
TestTensor run_one(const Network& net, const std::vector<TestTensor>& inputs,
                   const RunOptions& options = {}) {
  auto outs = test::run_network(net, inputs, options);
  EXPECT_EQ(outs.size(), 1u);
  return outs.empty() ? TestTensor{} : outs.front();
}

/// Expects bit-exact float results (NaN matches NaN).
void expect_exact_floats(const TestTensor& actual, const std::vector<float>& expected,
                         const std::string& what) {
  const std::vector<float> a = actual.to_floats();
  ASSERT_EQ(a.size(), expected.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(expected[i])) {
      EXPECT_TRUE(std::isnan(a[i])) << what << " element " << i;
    } else {
      EXPECT_EQ(a[i], expected[i]) << what << " element " << i;
    }
  }
}

std::string label(DataType t, const std::string& what) { return what + " (" + dtype_name(t) + ")"; }

// ---------------------------------------------------------------- activation

struct ActivationCase {
  ActivationType type;
  const char* name;
  double alpha;
  double beta;
};

const std::vector<ActivationCase> kActivationCases = {
    {ActivationType::kRelu, "relu", 0.0, 0.0},
    {ActivationType::kSigmoid, "sigmoid", 0.0, 0.0},
    {ActivationType::kTanh, "tanh", 0.0, 0.0},
    {ActivationType::kLeakyRelu, "leaky_relu", 0.1, 0.0},
    {ActivationType::kElu, "elu", 0.7, 0.0},
    {ActivationType::kSelu, "selu", 1.6732632423543772, 1.0507009873554805},
    {ActivationType::kSoftsign, "softsign", 0.0, 0.0},
    {ActivationType::kSoftplus, "softplus", 2.0, 3.0},  // threshold reached inside [-4, 4]
    {ActivationType::kClip, "clip", -0.5, 0.7},
    {ActivationType::kHardSigmoid, "hard_sigmoid", 1.0 / 6.0, 0.5},
    {ActivationType::kGeluErf, "gelu_erf", 0.0, 0.0},
    {ActivationType::kGeluTanh, "gelu_tanh", 0.0, 0.0},
    {ActivationType::kSilu, "silu", 0.0, 0.0},
};

double activation_ref(const ActivationCase& c, double x) {
  const double a = c.alpha, b = c.beta;
  switch (c.type) {
    case ActivationType::kRelu:
      return std::max(x, 0.0);
    case ActivationType::kSigmoid:
      return 1.0 / (1.0 + std::exp(-x));
    case ActivationType::kTanh:
      return std::tanh(x);
    case ActivationType::kLeakyRelu:
      return x >= 0 ? x : a * x;
    case ActivationType::kElu:
      return x > 0 ? x : a * (std::exp(x) - 1.0);
    case ActivationType::kSelu:
      return b * (x > 0 ? x : a * (std::exp(x) - 1.0));
    case ActivationType::kSoftsign:
      return x / (1.0 + std::fabs(x));
    case ActivationType::kSoftplus:
      return x * a > b ? x : std::log1p(std::exp(a * x)) / a;
    case ActivationType::kClip:
      return std::min(std::max(x, a), b);
    case ActivationType::kHardSigmoid:
      return std::max(0.0, std::min(1.0, a * x + b));
    case ActivationType::kGeluErf:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case ActivationType::kGeluTanh:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * x * x * x)));
    case ActivationType::kSilu:
      return x / (1.0 + std::exp(-x));
  }
  return kNan;
}

TEST(ActivationLayer, EveryTypeEveryFloatDtype) {
  ASSERT_EQ(kActivationCases.size(), static_cast<size_t>(kNumActivationTypes));
  for (DataType dt : kFloatTypes) {
    // One network per dtype with every activation as an output keeps the suite fast.
    Network net;
    Tensor* x = net.add_input("x", dt, {2, 3, 17});
    for (const auto& c : kActivationCases) {
      net.mark_output(net.add_activation(x, c.type, c.alpha, c.beta, c.name)->output());
    }
    const TestTensor in = TestTensor::random(dt, {2, 3, 17}, 11, -4.0f, 4.0f);
    const auto outs = test::run_network(net, {in});
    ASSERT_EQ(outs.size(), kActivationCases.size());
    const std::vector<float> xs = in.to_floats();
    for (size_t k = 0; k < kActivationCases.size(); ++k) {
      std::vector<float> expected;
      for (float v : xs)
        expected.push_back(static_cast<float>(activation_ref(kActivationCases[k], v)));
      EXPECT_EQ(outs[k].dtype, dt);
      EXPECT_EQ(outs[k].dims, (std::vector<int64_t>{2, 3, 17}));
      test::expect_close(outs[k], expected, dt, label(dt, kActivationCases[k].name));
    }
  }
}

TEST(ActivationLayer, SpecialValues) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {5});
  net.mark_output(net.add_activation(x, ActivationType::kRelu)->output());
  net.mark_output(net.add_activation(x, ActivationType::kClip, 0.0, kInf)->output());  // one-sided
  net.mark_output(net.add_activation(x, ActivationType::kSigmoid)->output());
  const TestTensor in = TestTensor::floats(DataType::kF32, {5}, {-kInf, -200.0f, 3.0f, kInf, kNan});
  const auto outs = test::run_network(net, {in});
  ASSERT_EQ(outs.size(), 3u);
  expect_exact_floats(outs[0], {0, 0, 3, kInf, kNan}, "relu");
  expect_exact_floats(outs[1], {0, 0, 3, kInf, kNan}, "clip [0, inf)");
  expect_exact_floats(outs[2], {0, 0, static_cast<float>(1.0 / (1.0 + std::exp(-3.0))), 1, kNan},
                      "sigmoid");
}

TEST(ActivationLayer, LargeTensorRunsInParallel) {
  const std::vector<int64_t> dims = {64, 1031};
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {64, 1031});
  net.mark_output(net.add_activation(x, ActivationType::kGeluErf)->output());
  const TestTensor in = TestTensor::random(DataType::kF32, dims, 5, -3.0f, 3.0f);
  std::vector<float> expected;
  for (float v : in.to_floats())
    expected.push_back(static_cast<float>(activation_ref(kActivationCases[10], v)));
  test::expect_close(run_one(net, {in}), expected, DataType::kF32, "gelu_erf large");
}

TEST(ActivationLayer, RejectsBadInputsAndParams) {
  {
    Network net;
    Tensor* x = net.add_input("x", DataType::kI32, {3});
    expect_error([&] { net.add_activation(x, ActivationType::kRelu, 0, 0, "act_int"); },
                 {"Activation 'act_int'", "relu", "i32"});
  }
  {
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {3});
    expect_error([&] { net.add_activation(x, ActivationType::kLeakyRelu, kNan, 0, "act_nan"); },
                 {"Activation 'act_nan'", "NaN"});
    expect_error([&] { net.add_activation(x, ActivationType::kSoftplus, 0, 20, "act_sp"); },
                 {"Activation 'act_sp'", "softplus", "nonzero"});
    expect_error(
        [&] {
          net.add_layer(ActivationParams{static_cast<ActivationType>(77), 0, 0}, {x}, "act_enum");
        },
        {"Activation 'act_enum'", "unknown activation type 77"});
    Tensor* y = net.add_input("y", DataType::kF32, {3});
    expect_error(
        [&] {
          net.add_layer(ActivationParams{}, {x, y}, "act_two");
        },
        {"Activation 'act_two'", "1 inputs"});
  }
}

// ---------------------------------------------------------------- elementwise

struct BinaryCase {
  ElementWiseOp op;
  const char* name;
};

const std::vector<BinaryCase> kArithmeticOps = {
    {ElementWiseOp::kSum, "sum"}, {ElementWiseOp::kProd, "prod"},
    {ElementWiseOp::kMax, "max"}, {ElementWiseOp::kMin, "min"},
    {ElementWiseOp::kSub, "sub"}, {ElementWiseOp::kDiv, "div"},
    {ElementWiseOp::kPow, "pow"}, {ElementWiseOp::kFloorDiv, "floor_div"},
};

double float_binary_ref(ElementWiseOp op, double a, double b) {
  switch (op) {
    case ElementWiseOp::kSum:
      return a + b;
    case ElementWiseOp::kProd:
      return a * b;
    case ElementWiseOp::kMax:
      return std::max(a, b);
    case ElementWiseOp::kMin:
      return std::min(a, b);
    case ElementWiseOp::kSub:
      return a - b;
    case ElementWiseOp::kDiv:
      return a / b;
    case ElementWiseOp::kPow:
      return std::pow(a, b);
    case ElementWiseOp::kFloorDiv:
      return std::floor(a / b);
    default:
      return kNan;
  }
}

/// Computes an integer op the slow, obvious way: in 128-bit-free int64 with explicit wrapping.
int64_t int_binary_ref(ElementWiseOp op, int64_t a, int64_t b) {
  switch (op) {
    case ElementWiseOp::kSum:
      return static_cast<int64_t>(u(a) + u(b));
    case ElementWiseOp::kProd:
      return static_cast<int64_t>(u(a) * u(b));
    case ElementWiseOp::kMax:
      return std::max(a, b);
    case ElementWiseOp::kMin:
      return std::min(a, b);
    case ElementWiseOp::kSub:
      return static_cast<int64_t>(u(a) - u(b));
    case ElementWiseOp::kDiv:
      if (a == kI64Min && b == -1) return kI64Min;
      return a / b;
    case ElementWiseOp::kFloorDiv: {
      if (a == kI64Min && b == -1) return kI64Min;
      int64_t q = a / b;
      if (q * b != a && ((a < 0) != (b < 0))) --q;
      return q;
    }
    case ElementWiseOp::kPow: {
      uint64_t r = 1;
      for (int64_t i = 0; i < b; ++i) r *= u(a);
      return static_cast<int64_t>(r);
    }
    default:
      return 0;
  }
}

/// Builds a network computing `op` for each case on inputs a and b, one output per case.
Network binary_network(DataType dt, const std::vector<int64_t>& a_dims,
                       const std::vector<int64_t>& b_dims, const std::vector<BinaryCase>& cases) {
  Network net;
  Tensor* a = net.add_input("a", dt, shape_from_dims(a_dims));
  Tensor* b = net.add_input("b", dt, shape_from_dims(b_dims));
  for (const auto& c : cases) net.mark_output(net.add_elementwise(a, b, c.op, c.name)->output());
  return net;
}

TEST(ElementWiseLayer, ArithmeticFloatDtypesBroadcast) {
  const std::vector<int64_t> a_dims = {2, 3, 4}, b_dims = {3, 1}, out_dims = {2, 3, 4};
  // pow is tested alone with positive bases (FloatPowPositiveBase).
  std::vector<BinaryCase> ops;
  for (const auto& c : kArithmeticOps) {
    if (c.op != ElementWiseOp::kPow) ops.push_back(c);
  }
  for (DataType dt : kFloatTypes) {
    const Network net = binary_network(dt, a_dims, b_dims, ops);
    const TestTensor a = TestTensor::random(dt, a_dims, 1, -3.0f, 3.0f);
    // b stays away from 0 (div) and alternates sign (floor_div rounding both ways).
    std::vector<float> bv = TestTensor::random(DataType::kF32, b_dims, 2, 0.5f, 2.0f).to_floats();
    for (size_t i = 0; i < bv.size(); i += 2) bv[i] = -bv[i];
    const TestTensor b = TestTensor::floats(dt, b_dims, bv);
    const auto outs = test::run_network(net, {a, b});
    ASSERT_EQ(outs.size(), ops.size());
    const auto av = a.to_floats(), brounded = b.to_floats();
    for (size_t k = 0; k < ops.size(); ++k) {
      std::vector<float> expected;
      for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
        const double x = av[source_index(i, out_dims, a_dims)];
        const double y = brounded[source_index(i, out_dims, b_dims)];
        expected.push_back(static_cast<float>(float_binary_ref(ops[k].op, x, y)));
      }
      EXPECT_EQ(outs[k].dtype, dt);
      EXPECT_EQ(outs[k].dims, out_dims);
      test::expect_close(outs[k], expected, dt, label(dt, ops[k].name));
    }
  }
}

TEST(ElementWiseLayer, FloatPowPositiveBase) {
  for (DataType dt : kFloatTypes) {
    const Network net = binary_network(dt, {6}, {6}, {{ElementWiseOp::kPow, "pow"}});
    const TestTensor a = TestTensor::random(dt, {6}, 3, 0.1f, 3.0f);
    const TestTensor b = TestTensor::floats(dt, {6}, {-2.0f, -0.5f, 0.0f, 0.5f, 2.0f, 3.0f});
    const auto av = a.to_floats(), bv = b.to_floats();
    std::vector<float> expected;
    for (size_t i = 0; i < av.size(); ++i)
      expected.push_back(static_cast<float>(std::pow(av[i], bv[i])));
    test::expect_close(run_one(net, {a, b}), expected, dt, label(dt, "pow"));
  }
}

TEST(ElementWiseLayer, FloatEdgeCases) {
  const std::vector<BinaryCase> cases = {{ElementWiseOp::kFloorDiv, "floor_div"},
                                         {ElementWiseOp::kMax, "max"},
                                         {ElementWiseOp::kMin, "min"},
                                         {ElementWiseOp::kDiv, "div"}};
  const Network net = binary_network(DataType::kF32, {7}, {7}, cases);
  const TestTensor a =
      TestTensor::floats(DataType::kF32, {7}, {1.0f, -7.0f, 7.0f, -7.0f, 1.0f, kNan, 2.0f});
  const TestTensor b =
      TestTensor::floats(DataType::kF32, {7}, {0.1f, 2.0f, -2.0f, -2.0f, 0.0f, 1.0f, kNan});
  const auto outs = test::run_network(net, {a, b});
  ASSERT_EQ(outs.size(), 4u);
  // torch.floor_divide (Python //): 1 // 0.1 is 9 because fmod(1, 0.1) > 0; x // 0 is x / 0.
  expect_exact_floats(outs[0], {9, -4, -4, 3, kInf, kNan, kNan}, "floor_div");
  // torch.maximum/minimum propagate NaN from either side.
  expect_exact_floats(outs[1], {1, 2, 7, -2, 1, kNan, kNan}, "max");
  expect_exact_floats(outs[2], {0.1f, -7, -2, -7, 0, kNan, kNan}, "min");
  expect_exact_floats(outs[3], {1.0f / 0.1f, -3.5f, -3.5f, 3.5f, kInf, kNan, kNan}, "div");
}

TEST(ElementWiseLayer, ArithmeticIntegerDtypesBroadcast) {
  const std::vector<int64_t> a_dims = {4, 5}, b_dims = {5}, out_dims = {4, 5};
  for (DataType dt : kIntTypes) {
    const bool is_unsigned = dt == DataType::kU8;
    // Inputs large enough that i8/u8 sums and products wrap.
    const TestTensor a = TestTensor::random(dt, a_dims, 3, is_unsigned ? 0.0f : -100.0f, 100.0f);
    const std::vector<int64_t> bv = is_unsigned ? std::vector<int64_t>{1, 2, 3, 5, 200}
                                                : std::vector<int64_t>{-3, -1, 2, 7, 100};
    const TestTensor b = TestTensor::ints(dt, b_dims, bv);
    // pow gets small non-negative exponents in its own network.
    std::vector<BinaryCase> ops(kArithmeticOps.begin(), kArithmeticOps.end());
    ops.erase(ops.begin() + 6);
    const Network net_no_pow = binary_network(dt, a_dims, b_dims, ops);
    const auto outs = test::run_network(net_no_pow, {a, b});
    ASSERT_EQ(outs.size(), ops.size());
    const auto av = a.to_ints(), bw = b.to_ints();
    for (size_t k = 0; k < ops.size(); ++k) {
      std::vector<int64_t> expected;
      for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
        expected.push_back(
            wrap_to(dt, int_binary_ref(ops[k].op, av[source_index(i, out_dims, a_dims)],
                                       bw[source_index(i, out_dims, b_dims)])));
      }
      EXPECT_EQ(outs[k].dtype, dt);
      test::expect_equal_ints(outs[k], expected, label(dt, ops[k].name));
    }
    const Network pow_net = binary_network(dt, a_dims, b_dims, {{ElementWiseOp::kPow, "pow"}});
    const TestTensor base = TestTensor::random(dt, a_dims, 4, is_unsigned ? 0.0f : -6.0f, 7.0f);
    const TestTensor exponent = TestTensor::ints(dt, b_dims, {0, 1, 2, 3, 9});
    const auto bav = base.to_ints(), bev = exponent.to_ints();
    std::vector<int64_t> expected;
    for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
      expected.push_back(
          wrap_to(dt, int_binary_ref(ElementWiseOp::kPow, bav[source_index(i, out_dims, a_dims)],
                                     bev[source_index(i, out_dims, b_dims)])));
    }
    test::expect_equal_ints(run_one(pow_net, {base, exponent}), expected, label(dt, "pow"));
  }
}

TEST(ElementWiseLayer, IntegerWrapAndRounding) {
  struct Case {
    DataType dt;
    ElementWiseOp op;
    int64_t a, b, expected;
  };
  const std::vector<Case> cases = {
      {DataType::kI8, ElementWiseOp::kSum, 100, 100, -56},
      {DataType::kU8, ElementWiseOp::kSub, 3, 5, 254},
      {DataType::kI32, ElementWiseOp::kSum, 2147483647, 1, -2147483647 - 1},
      {DataType::kI64, ElementWiseOp::kSum, kI64Max, 1, kI64Min},
      {DataType::kI64, ElementWiseOp::kProd, kI64Max, 2, -2},
      {DataType::kI64, ElementWiseOp::kDiv, kI64Min, -1, kI64Min},
      {DataType::kI64, ElementWiseOp::kFloorDiv, kI64Min, -1, kI64Min},
      {DataType::kI8, ElementWiseOp::kDiv, -128, -1, -128},
      {DataType::kI32, ElementWiseOp::kDiv, -7, 2, -3},
      {DataType::kI32, ElementWiseOp::kFloorDiv, -7, 2, -4},
      {DataType::kI32, ElementWiseOp::kFloorDiv, 7, -2, -4},
      {DataType::kI32, ElementWiseOp::kFloorDiv, -7, -2, 3},
      {DataType::kI32, ElementWiseOp::kFloorDiv, 6, -2, -3},
      {DataType::kI8, ElementWiseOp::kPow, 2, 10, 0},
      {DataType::kI64, ElementWiseOp::kPow, -3, 3, -27},
      // 3^41 overflows int64: the result wraps like repeated multiplication.
      {DataType::kI64, ElementWiseOp::kPow, 3, 41, int_binary_ref(ElementWiseOp::kPow, 3, 41)},
      {DataType::kI64, ElementWiseOp::kPow, 0, 0, 1},
  };
  for (const Case& c : cases) {
    const Network net = binary_network(c.dt, {1}, {1}, {{c.op, "op"}});
    const auto out =
        run_one(net, {TestTensor::ints(c.dt, {1}, {c.a}), TestTensor::ints(c.dt, {1}, {c.b})});
    test::expect_equal_ints(
        out, {c.expected},
        label(c.dt, std::to_string(c.a) + " op" + std::to_string(static_cast<int>(c.op)) + " " +
                        std::to_string(c.b)));
  }
}

TEST(ElementWiseLayer, IntegerDivisionByZeroAndNegativePowerThrow) {
  for (ElementWiseOp op : {ElementWiseOp::kDiv, ElementWiseOp::kFloorDiv}) {
    const Network net = binary_network(DataType::kI32, {2, 3}, {3}, {{op, "int_div"}});
    expect_error(
        [&] {
          test::run_network(net, {TestTensor::ints(DataType::kI32, {2, 3}, {1, 2, 3, 4, 5, 6}),
                                  TestTensor::ints(DataType::kI32, {3}, {1, 0, 2})});
        },
        {"division by zero"});
  }
  const Network net = binary_network(DataType::kI64, {3}, {3}, {{ElementWiseOp::kPow, "int_pow"}});
  expect_error(
      [&] {
        test::run_network(net, {TestTensor::ints(DataType::kI64, {3}, {2, 2, 2}),
                                TestTensor::ints(DataType::kI64, {3}, {1, -1, 2})});
      },
      {"negative exponent"});
  // Float division by zero is IEEE, not an error.
  const Network fnet = binary_network(DataType::kF32, {1}, {1}, {{ElementWiseOp::kDiv, "fdiv"}});
  expect_exact_floats(run_one(fnet, {TestTensor::floats(DataType::kF32, {1}, {-1.0f}),
                                     TestTensor::floats(DataType::kF32, {1}, {0.0f})}),
                      {-kInf}, "float div by zero");
}

TEST(ElementWiseLayer, ComparisonsEveryDtype) {
  const std::vector<BinaryCase> all = {{ElementWiseOp::kEqual, "equal"},
                                       {ElementWiseOp::kGreater, "greater"},
                                       {ElementWiseOp::kLess, "less"}};
  const std::vector<int64_t> a_dims = {2, 3}, b_dims = {3}, out_dims = {2, 3};
  for (DataType dt : kAllTypes) {
    const bool is_bool = dt == DataType::kBool;
    const std::vector<BinaryCase> cases(all.begin(), is_bool ? all.begin() + 1 : all.end());
    const Network net = binary_network(dt, a_dims, b_dims, cases);
    // Small whole values so that equality happens.
    const TestTensor a = is_bool ? TestTensor::ints(dt, a_dims, {0, 1, 1, 0, 0, 1})
                                 : TestTensor::ints(dt, a_dims, {0, 1, 2, 3, 2, 1});
    const TestTensor b =
        is_bool ? TestTensor::ints(dt, b_dims, {0, 0, 1}) : TestTensor::ints(dt, b_dims, {2, 1, 0});
    const auto outs = test::run_network(net, {a, b});
    ASSERT_EQ(outs.size(), cases.size());
    const auto av = a.to_ints(), bv = b.to_ints();
    for (size_t k = 0; k < cases.size(); ++k) {
      std::vector<int64_t> expected;
      for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
        const int64_t x = av[source_index(i, out_dims, a_dims)];
        const int64_t y = bv[source_index(i, out_dims, b_dims)];
        expected.push_back(cases[k].op == ElementWiseOp::kEqual     ? x == y
                           : cases[k].op == ElementWiseOp::kGreater ? x > y
                                                                    : x < y);
      }
      EXPECT_EQ(outs[k].dtype, DataType::kBool);
      EXPECT_EQ(outs[k].dims, out_dims);
      test::expect_equal_ints(outs[k], expected, label(dt, cases[k].name));
    }
  }
  // NaN compares false everywhere.
  const Network net = binary_network(DataType::kF32, {2}, {2}, all);
  const auto outs = test::run_network(net, {TestTensor::floats(DataType::kF32, {2}, {kNan, kNan}),
                                            TestTensor::floats(DataType::kF32, {2}, {kNan, 1.0f})});
  for (const auto& o : outs) test::expect_equal_ints(o, {0, 0}, "NaN comparison");
}

TEST(ElementWiseLayer, BoolLogic) {
  const std::vector<BinaryCase> cases = {
      {ElementWiseOp::kAnd, "and"}, {ElementWiseOp::kOr, "or"}, {ElementWiseOp::kXor, "xor"}};
  // a [4, 1] x b [2] covers all four combinations twice, with broadcasting on both sides.
  const Network net = binary_network(DataType::kBool, {4, 1}, {2}, cases);
  const auto outs = test::run_network(net, {TestTensor::ints(DataType::kBool, {4, 1}, {0, 1, 0, 1}),
                                            TestTensor::ints(DataType::kBool, {2}, {0, 1})});
  ASSERT_EQ(outs.size(), 3u);
  test::expect_equal_ints(outs[0], {0, 0, 0, 1, 0, 0, 0, 1}, "and");
  test::expect_equal_ints(outs[1], {0, 1, 1, 1, 0, 1, 1, 1}, "or");
  test::expect_equal_ints(outs[2], {0, 1, 1, 0, 0, 1, 1, 0}, "xor");
  for (const auto& o : outs) EXPECT_EQ(o.dtype, DataType::kBool);
}

TEST(ElementWiseLayer, BroadcastShapes) {
  struct Case {
    std::vector<int64_t> a, b;
  };
  const std::vector<Case> cases = {
      {{4, 1, 3}, {2, 1}},        // different ranks, 1-dims on both sides
      {{2, 1, 4, 1}, {3, 1, 5}},  // 1-dims interleaved on both sides
      {{}, {2, 3}},               // rank-0 scalar
      {{2, 3}, {}},
      {{1}, {3, 1, 1}},
      {{2, 3, 5}, {2, 3, 5}},  // same shape (one contiguous run)
      {{2, 3, 5}, {2, 1, 5}},  // middle broadcast
      {{6, 1}, {1, 7}},        // outer product
      {{1, 1, 1}, {1, 1}},     // all ones
      {{0, 3}, {3}},           // empty
  };
  for (const Case& c : cases) {
    const std::vector<int64_t> out_dims = broadcast(c.a, c.b);
    for (DataType dt : {DataType::kF32, DataType::kBF16, DataType::kI64}) {
      const Network net = binary_network(dt, c.a, c.b, {{ElementWiseOp::kSub, "sub"}});
      const TestTensor a = TestTensor::random(dt, c.a, 7, -50.0f, 50.0f);
      const TestTensor b = TestTensor::random(dt, c.b, 8, -50.0f, 50.0f);
      // The runtime rejects null tensor addresses, which an empty std::vector may give; empty
      // shapes run through the reference executor only.
      const bool empty = dims_numel(out_dims) == 0;
      const TestTensor out =
          empty ? test::run_network_direct(net, {a, b}).at(0) : run_one(net, {a, b});
      const std::string what =
          label(dt, "sub " + dims_to_string(c.a) + " - " + dims_to_string(c.b));
      EXPECT_EQ(out.dims, out_dims) << what;
      const auto av = a.to_floats(), bv = b.to_floats();
      std::vector<float> expected;
      for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
        expected.push_back(
            static_cast<float>(static_cast<double>(av[source_index(i, out_dims, c.a)]) -
                               bv[source_index(i, out_dims, c.b)]));
      }
      test::expect_close(out, expected, dt, what);
    }
  }
}

TEST(ElementWiseLayer, LargeTensorsRunInParallel) {
  struct Case {
    std::vector<int64_t> a, b;
    DataType dt;
  };
  // Row lengths that do not divide the per-thread chunks, so workers start mid-row.
  const std::vector<Case> cases = {
      {{600, 257}, {257}, DataType::kF32},
      {{600, 1}, {600, 257}, DataType::kF32},
      {{3, 50, 1, 31}, {50, 29, 1}, DataType::kF16},
      {{1 << 18}, {1 << 18}, DataType::kI32},
  };
  for (const Case& c : cases) {
    const std::vector<int64_t> out_dims = broadcast(c.a, c.b);
    const Network net = binary_network(c.dt, c.a, c.b, {{ElementWiseOp::kSum, "sum"}});
    const TestTensor a = TestTensor::random(c.dt, c.a, 9, -9.0f, 9.0f);
    const TestTensor b = TestTensor::random(c.dt, c.b, 10, -9.0f, 9.0f);
    const auto av = a.to_floats(), bv = b.to_floats();
    std::vector<float> expected(static_cast<size_t>(dims_numel(out_dims)));
    for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
      expected[i] = static_cast<float>(static_cast<double>(av[source_index(i, out_dims, c.a)]) +
                                       bv[source_index(i, out_dims, c.b)]);
    }
    test::expect_close(run_one(net, {a, b}), expected, c.dt,
                       label(c.dt, "large sum " + dims_to_string(out_dims)));
  }
}

TEST(ElementWiseLayer, HalfPrecisionRoundsOnStore) {
  // f16: 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10): ties to even -> 1.
  // 1 + 2^-10 + 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: ties to even -> 1 + 2^-9.
  const Network net = binary_network(DataType::kF16, {2}, {2}, {{ElementWiseOp::kSum, "sum"}});
  const auto out = run_one(net, {TestTensor::floats(DataType::kF16, {2}, {1.0f, 1.0f + 0x1p-10f}),
                                 TestTensor::floats(DataType::kF16, {2}, {0x1p-11f, 0x1p-11f})});
  expect_exact_floats(out, {1.0f, 1.0f + 0x1p-9f}, "f16 sum ties to even");
  // bf16 has 8 significand bits: the same ties one binade coarser.
  const Network bnet = binary_network(DataType::kBF16, {2}, {2}, {{ElementWiseOp::kSum, "sum"}});
  const auto bout = run_one(bnet, {TestTensor::floats(DataType::kBF16, {2}, {1.0f, 1.0f + 0x1p-7f}),
                                   TestTensor::floats(DataType::kBF16, {2}, {0x1p-8f, 0x1p-8f})});
  expect_exact_floats(bout, {1.0f, 1.0f + 0x1p-6f}, "bf16 sum ties to even");
  // Overflow past the f16 range gives inf.
  const Network onet = binary_network(DataType::kF16, {1}, {1}, {{ElementWiseOp::kProd, "prod"}});
  const auto oout = run_one(onet, {TestTensor::floats(DataType::kF16, {1}, {300.0f}),
                                   TestTensor::floats(DataType::kF16, {1}, {300.0f})});
  expect_exact_floats(oout, {kInf}, "f16 overflow");
}

TEST(ElementWiseLayer, DynamicShape) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {DimExpr::symbol("n"), 3});
  Tensor* b = net.add_input("b", DataType::kF32, {1, 3});
  Layer* l = net.add_elementwise(a, b, ElementWiseOp::kProd, "prod");
  EXPECT_EQ(shape_to_string(l->output()->shape()), shape_to_string({DimExpr::symbol("n"), 3}));
  net.mark_output(l->output());
  RunOptions options;
  options.profiles.push_back(OptimizationProfile().set_range("n", 1, 4, 8));
  for (int64_t n : {2, 5}) {
    const TestTensor at = TestTensor::random(DataType::kF32, {n, 3}, 12, -2.0f, 2.0f);
    const TestTensor bt = TestTensor::random(DataType::kF32, {1, 3}, 13, -2.0f, 2.0f);
    const auto av = at.to_floats(), bv = bt.to_floats();
    std::vector<float> expected;
    for (int64_t i = 0; i < n * 3; ++i) expected.push_back(av[i] * bv[i % 3]);
    const TestTensor out = run_one(net, {at, bt}, options);
    EXPECT_EQ(out.dims, (std::vector<int64_t>{n, 3}));
    test::expect_close(out, expected, DataType::kF32, "dynamic prod n=" + std::to_string(n));
  }
}

TEST(ElementWiseLayer, DynamicBroadcastCheckedAtRunTime) {
  // [n] + [m] broadcasts only when n == m or one of them is 1: a run-time shape check.
  Network net;
  Tensor* a = net.add_input("a", DataType::kI32, {DimExpr::symbol("n")});
  Tensor* b = net.add_input("b", DataType::kI32, {DimExpr::symbol("m")});
  Layer* l = net.add_elementwise(a, b, ElementWiseOp::kSum, "sum_nm");
  EXPECT_FALSE(l->shape_checks().empty());
  net.mark_output(l->output());
  RunOptions options;
  options.profiles.push_back(OptimizationProfile().set_range("n", 1, 3, 3).set_range("m", 1, 3, 3));
  const auto out1 = run_one(net,
                            {TestTensor::ints(DataType::kI32, {3}, {1, 2, 3}),
                             TestTensor::ints(DataType::kI32, {1}, {10})},
                            options);
  EXPECT_EQ(out1.dims, (std::vector<int64_t>{3}));
  test::expect_equal_ints(out1, {11, 12, 13}, "[3] + [1]");
  const auto out2 = run_one(net,
                            {TestTensor::ints(DataType::kI32, {3}, {1, 2, 3}),
                             TestTensor::ints(DataType::kI32, {3}, {10, 20, 30})},
                            options);
  test::expect_equal_ints(out2, {11, 22, 33}, "[3] + [3]");
  expect_error(
      [&] {
        test::run_network(net,
                          {TestTensor::ints(DataType::kI32, {3}, {1, 2, 3}),
                           TestTensor::ints(DataType::kI32, {2}, {1, 2})},
                          options);
      },
      {"sum_nm"});
}

TEST(ElementWiseLayer, RejectsBadDtypesAndShapes) {
  Network net;
  Tensor* bl = net.add_input("bl", DataType::kBool, {3});
  Tensor* f = net.add_input("f", DataType::kF32, {3});
  Tensor* h = net.add_input("h", DataType::kF16, {3});
  Tensor* i = net.add_input("i", DataType::kI32, {3});
  Tensor* f23 = net.add_input("f23", DataType::kF32, {2, 3});
  Tensor* f4 = net.add_input("f4", DataType::kF32, {4});
  expect_error([&] { net.add_elementwise(bl, bl, ElementWiseOp::kSum, "bool_sum"); },
               {"ElementWise 'bool_sum'", "sum", "bool"});
  expect_error([&] { net.add_elementwise(bl, bl, ElementWiseOp::kPow, "bool_pow"); },
               {"ElementWise 'bool_pow'", "pow", "bool"});
  expect_error([&] { net.add_elementwise(bl, bl, ElementWiseOp::kGreater, "bool_gt"); },
               {"ElementWise 'bool_gt'", "greater", "bool"});
  expect_error([&] { net.add_elementwise(f, f, ElementWiseOp::kAnd, "float_and"); },
               {"ElementWise 'float_and'", "and", "f32"});
  expect_error([&] { net.add_elementwise(i, i, ElementWiseOp::kXor, "int_xor"); },
               {"ElementWise 'int_xor'", "xor", "i32"});
  expect_error([&] { net.add_elementwise(f, h, ElementWiseOp::kSum, "mixed"); },
               {"ElementWise 'mixed'", "f32", "f16", "Cast"});
  expect_error([&] { net.add_elementwise(f23, f4, ElementWiseOp::kSum, "no_bcast"); },
               {"ElementWise 'no_bcast'", "do not broadcast"});
  expect_error(
      [&] {
        net.add_layer(ElementWiseParams{static_cast<ElementWiseOp>(99)}, {f, f}, "bad_op");
      },
      {"ElementWise 'bad_op'", "unknown elementwise op 99"});
  expect_error([&] { net.add_layer(ElementWiseParams{}, {f}, "one_input"); },
               {"ElementWise 'one_input'", "2 inputs"});
  // Equal is the one op that takes bool and non-bool alike.
  EXPECT_EQ(net.add_elementwise(bl, bl, ElementWiseOp::kEqual)->output()->dtype(), DataType::kBool);
  EXPECT_EQ(net.add_elementwise(i, i, ElementWiseOp::kLess)->output()->dtype(), DataType::kBool);
}

TEST(ElementWiseLayer, KernelRejectsDimsInferenceWouldNotProduce) {
  // Kernels trust infer(), but a corrupt plan must give an Error rather than a stray write.
  std::vector<float> a(6), b(4), out(6);
  cpu::HostTensor ta{DataType::kF32, {2, 3}, a.data()};
  cpu::HostTensor tb{DataType::kF32, {4}, b.data()};
  cpu::HostTensor to{DataType::kF32, {2, 3}, out.data()};
  cpu::KernelArgs args{{&ta, &tb}, {&to}};
  expect_error([&] { cpu::run(ElementWiseParams{ElementWiseOp::kSum}, args); },
               {"do not broadcast"});
  cpu::HostTensor tu{DataType::kF32, {6}, out.data()};
  cpu::KernelArgs unary{{&ta}, {&tu}};
  expect_error([&] { cpu::run(UnaryParams{UnaryOp::kExp}, unary); }, {"differ"});
  cpu::HostTensor tbool{DataType::kBool, {2, 3}, out.data()};
  cpu::KernelArgs wrong_dtype{{&ta, &ta}, {&tbool}};
  expect_error([&] { cpu::run(ElementWiseParams{ElementWiseOp::kSum}, wrong_dtype); },
               {"output dtype bool"});
}

// ---------------------------------------------------------------- unary

struct UnaryCase {
  UnaryOp op;
  const char* name;
  float lo, hi;  // input range where the function is real and well conditioned
  double (*ref)(double);
};

const std::vector<UnaryCase> kFloatUnaryCases = {
    {UnaryOp::kExp, "exp", -4, 4, [](double x) { return std::exp(x); }},
    {UnaryOp::kLog, "log", 0.05f, 5, [](double x) { return std::log(x); }},
    {UnaryOp::kSqrt, "sqrt", 0, 5, [](double x) { return std::sqrt(x); }},
    {UnaryOp::kRsqrt, "rsqrt", 0.05f, 5, [](double x) { return 1.0 / std::sqrt(x); }},
    {UnaryOp::kReciprocal, "reciprocal", 0.2f, 5, [](double x) { return 1.0 / x; }},
    {UnaryOp::kAbs, "abs", -5, 5, [](double x) { return std::fabs(x); }},
    {UnaryOp::kNeg, "neg", -5, 5, [](double x) { return -x; }},
    {UnaryOp::kSin, "sin", -4, 4, [](double x) { return std::sin(x); }},
    {UnaryOp::kCos, "cos", -4, 4, [](double x) { return std::cos(x); }},
    {UnaryOp::kTan, "tan", -1.2f, 1.2f, [](double x) { return std::tan(x); }},
    {UnaryOp::kAsin, "asin", -0.95f, 0.95f, [](double x) { return std::asin(x); }},
    {UnaryOp::kAcos, "acos", -0.95f, 0.95f, [](double x) { return std::acos(x); }},
    {UnaryOp::kAtan, "atan", -5, 5, [](double x) { return std::atan(x); }},
    {UnaryOp::kSinh, "sinh", -3, 3, [](double x) { return std::sinh(x); }},
    {UnaryOp::kCosh, "cosh", -3, 3, [](double x) { return std::cosh(x); }},
    {UnaryOp::kAsinh, "asinh", -5, 5, [](double x) { return std::asinh(x); }},
    {UnaryOp::kAcosh, "acosh", 1.05f, 5, [](double x) { return std::acosh(x); }},
    {UnaryOp::kAtanh, "atanh", -0.9f, 0.9f, [](double x) { return std::atanh(x); }},
    {UnaryOp::kCeil, "ceil", -5, 5, [](double x) { return std::ceil(x); }},
    {UnaryOp::kFloor, "floor", -5, 5, [](double x) { return std::floor(x); }},
    {UnaryOp::kRound, "round", -5, 5, [](double x) { return std::nearbyint(x); }},
    {UnaryOp::kErf, "erf", -3, 3, [](double x) { return std::erf(x); }},
    {UnaryOp::kSign, "sign", -5, 5, [](double x) { return x > 0   ? 1.0
                                                          : x < 0 ? -1.0
                                                                  : 0.0; }},
};

TEST(UnaryLayer, EveryFloatOpEveryFloatDtype) {
  for (DataType dt : kFloatTypes) {
    for (size_t k = 0; k < kFloatUnaryCases.size(); ++k) {
      const UnaryCase& c = kFloatUnaryCases[k];
      Network net;
      Tensor* x = net.add_input("x", dt, {3, 19});
      net.mark_output(net.add_unary(x, c.op, c.name)->output());
      const TestTensor in =
          TestTensor::random(dt, {3, 19}, 20 + static_cast<uint32_t>(k), c.lo, c.hi);
      std::vector<float> expected;
      for (float v : in.to_floats()) expected.push_back(static_cast<float>(c.ref(v)));
      const TestTensor out = run_one(net, {in});
      EXPECT_EQ(out.dtype, dt);
      test::expect_close(out, expected, dt, label(dt, c.name));
    }
  }
}

TEST(UnaryLayer, RoundSignAndClassification) {
  const std::vector<float> xs = {-2.5f,  -1.5f, -0.5f, 0.5f, 1.5f,  2.5f, 0.49f,
                                 -3.75f, 0.0f,  -0.0f, kInf, -kInf, kNan};
  const std::vector<int64_t> dims = {static_cast<int64_t>(xs.size())};
  for (DataType dt : kFloatTypes) {
    Network net;
    Tensor* x = net.add_input("x", dt, shape_from_dims(dims));
    for (UnaryOp op : {UnaryOp::kRound, UnaryOp::kSign, UnaryOp::kIsInf, UnaryOp::kIsNan}) {
      net.mark_output(net.add_unary(x, op)->output());
    }
    const TestTensor in = TestTensor::floats(dt, dims, xs);
    const auto outs = test::run_network(net, {in});
    ASSERT_EQ(outs.size(), 4u);
    const auto v = in.to_floats();  // 0.49 and -3.75 round to nearby values in bf16
    std::vector<float> round_expected, sign_expected;
    std::vector<int64_t> inf_expected, nan_expected;
    for (float e : v) {
      round_expected.push_back(std::nearbyint(e));
      sign_expected.push_back(std::isnan(e) ? 0.0f : e > 0 ? 1.0f : e < 0 ? -1.0f : 0.0f);
      inf_expected.push_back(std::isinf(e));
      nan_expected.push_back(std::isnan(e));
    }
    // Half to even: -2.5 -> -2, -1.5 -> -2, -0.5 -> -0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    EXPECT_EQ(round_expected[0], -2.0f);
    EXPECT_EQ(round_expected[4], 2.0f);
    expect_exact_floats(outs[0], round_expected, label(dt, "round"));
    // sign(0) = 0 and sign(NaN) = 0 as in torch.
    expect_exact_floats(outs[1], sign_expected, label(dt, "sign"));
    EXPECT_EQ(outs[2].dtype, DataType::kBool);
    test::expect_equal_ints(outs[2], inf_expected, label(dt, "isinf"));
    EXPECT_EQ(outs[3].dtype, DataType::kBool);
    test::expect_equal_ints(outs[3], nan_expected, label(dt, "isnan"));
  }
}

TEST(UnaryLayer, IntegerAbsNegSign) {
  for (DataType dt : kIntTypes) {
    std::vector<int64_t> xs = {0, 1, -1, 5, -7, 100};
    if (dt == DataType::kI8) xs.push_back(-128);
    if (dt == DataType::kU8) xs.push_back(255);
    if (dt == DataType::kI32) xs.push_back(-2147483647 - 1);
    if (dt == DataType::kI64) xs.push_back(kI64Min);
    const std::vector<int64_t> dims = {static_cast<int64_t>(xs.size())};
    Network net;
    Tensor* x = net.add_input("x", dt, shape_from_dims(dims));
    for (UnaryOp op : {UnaryOp::kAbs, UnaryOp::kNeg, UnaryOp::kSign}) {
      net.mark_output(net.add_unary(x, op)->output());
    }
    const TestTensor in = TestTensor::ints(dt, dims, xs);
    const auto outs = test::run_network(net, {in});
    ASSERT_EQ(outs.size(), 3u);
    std::vector<int64_t> abs_e, neg_e, sign_e;
    for (int64_t v : in.to_ints()) {
      // The most negative value has no positive counterpart: abs and neg wrap to itself.
      const int64_t neg = static_cast<int64_t>(0 - u(v));
      abs_e.push_back(wrap_to(dt, v < 0 ? neg : v));
      neg_e.push_back(wrap_to(dt, neg));
      sign_e.push_back(v > 0 ? 1 : v < 0 ? -1 : 0);
    }
    test::expect_equal_ints(outs[0], abs_e, label(dt, "abs"));
    test::expect_equal_ints(outs[1], neg_e, label(dt, "neg"));
    test::expect_equal_ints(outs[2], sign_e, label(dt, "sign"));
    for (const auto& o : outs) EXPECT_EQ(o.dtype, dt);
  }
}

TEST(UnaryLayer, NotOnBool) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kBool, {2, 2});
  net.mark_output(net.add_unary(x, UnaryOp::kNot)->output());
  const TestTensor out = run_one(net, {TestTensor::ints(DataType::kBool, {2, 2}, {0, 1, 1, 0})});
  EXPECT_EQ(out.dtype, DataType::kBool);
  test::expect_equal_ints(out, {1, 0, 0, 1}, "not");
}

TEST(UnaryLayer, DynamicShape) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {DimExpr::symbol("batch"), 4});
  net.mark_output(net.add_unary(x, UnaryOp::kExp)->output());
  RunOptions options;
  options.profiles.push_back(OptimizationProfile().set_range("batch", 1, 2, 16));
  for (int64_t n : {1, 13}) {
    const TestTensor in = TestTensor::random(DataType::kF16, {n, 4}, 30, -2.0f, 2.0f);
    std::vector<float> expected;
    for (float v : in.to_floats()) expected.push_back(std::exp(v));
    const TestTensor out = run_one(net, {in}, options);
    EXPECT_EQ(out.dims, (std::vector<int64_t>{n, 4}));
    test::expect_close(out, expected, DataType::kF16, "dynamic exp n=" + std::to_string(n));
  }
}

TEST(UnaryLayer, RejectsBadDtypes) {
  Network net;
  Tensor* f = net.add_input("f", DataType::kF32, {3});
  Tensor* i = net.add_input("i", DataType::kI32, {3});
  Tensor* b = net.add_input("b", DataType::kBool, {3});
  expect_error([&] { net.add_unary(i, UnaryOp::kExp, "int_exp"); },
               {"Unary 'int_exp'", "exp", "i32"});
  expect_error([&] { net.add_unary(i, UnaryOp::kRound, "int_round"); },
               {"Unary 'int_round'", "round"});
  expect_error([&] { net.add_unary(i, UnaryOp::kIsNan, "int_isnan"); },
               {"Unary 'int_isnan'", "isnan"});
  expect_error([&] { net.add_unary(f, UnaryOp::kNot, "float_not"); },
               {"Unary 'float_not'", "not", "bool"});
  expect_error([&] { net.add_unary(b, UnaryOp::kAbs, "bool_abs"); },
               {"Unary 'bool_abs'", "abs", "bool"});
  expect_error([&] { net.add_unary(b, UnaryOp::kNeg, "bool_neg"); }, {"Unary 'bool_neg'", "neg"});
  expect_error([&] { net.add_layer(UnaryParams{static_cast<UnaryOp>(26)}, {f}, "bad_unary"); },
               {"Unary 'bad_unary'", "unknown unary op 26"});
  EXPECT_EQ(net.add_unary(f, UnaryOp::kIsInf)->output()->dtype(), DataType::kBool);
  EXPECT_EQ(net.add_unary(i, UnaryOp::kSign)->output()->dtype(), DataType::kI32);
}

// ---------------------------------------------------------------- select

TEST(SelectLayer, EveryDtypeBroadcastOverAllThree) {
  const std::vector<int64_t> c_dims = {2, 1, 3}, a_dims = {4, 1}, b_dims = {}, out_dims = {2, 4, 3};
  for (DataType dt : kAllTypes) {
    Network net;
    Tensor* c = net.add_input("c", DataType::kBool, shape_from_dims(c_dims));
    Tensor* a = net.add_input("a", dt, shape_from_dims(a_dims));
    Tensor* b = net.add_input("b", dt, shape_from_dims(b_dims));
    net.mark_output(net.add_select(c, a, b, "where")->output());
    const TestTensor ct = TestTensor::ints(DataType::kBool, c_dims, {1, 0, 1, 0, 0, 1});
    const TestTensor at = TestTensor::ints(dt, a_dims, {1, 2, 3, 4});
    const TestTensor bt = TestTensor::ints(dt, b_dims, {dt == DataType::kBool ? 0 : 9});
    const TestTensor out = run_one(net, {ct, at, bt});
    EXPECT_EQ(out.dtype, dt);
    EXPECT_EQ(out.dims, out_dims);
    const auto cv = ct.to_ints(), av = at.to_ints(), bv = bt.to_ints();
    std::vector<int64_t> expected;
    for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
      expected.push_back(cv[source_index(i, out_dims, c_dims)]
                             ? av[source_index(i, out_dims, a_dims)]
                             : bv[source_index(i, out_dims, b_dims)]);
    }
    test::expect_equal_ints(out, expected, label(dt, "select"));
  }
}

TEST(SelectLayer, LargeSameShapeAndDynamic) {
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* c = net.add_input("c", DataType::kBool, {n, 512});
  Tensor* a = net.add_input("a", DataType::kF32, {n, 512});
  Tensor* b = net.add_input("b", DataType::kF32, {1, 512});
  net.mark_output(net.add_select(c, a, b)->output());
  RunOptions options;
  options.profiles.push_back(OptimizationProfile().set_range("n", 1, 64, 512));
  for (int64_t rows : {3, 300}) {
    const TestTensor ct = TestTensor::random(DataType::kBool, {rows, 512}, 40);
    const TestTensor at = TestTensor::random(DataType::kF32, {rows, 512}, 41);
    const TestTensor bt = TestTensor::random(DataType::kF32, {1, 512}, 42);
    const auto cv = ct.to_ints();
    const auto av = at.to_floats(), bv = bt.to_floats();
    std::vector<float> expected;
    for (int64_t i = 0; i < rows * 512; ++i) expected.push_back(cv[i] ? av[i] : bv[i % 512]);
    expect_exact_floats(run_one(net, {ct, at, bt}, options), expected,
                        "select rows=" + std::to_string(rows));
  }
}

TEST(SelectLayer, RejectsBadInputs) {
  Network net;
  Tensor* cb = net.add_input("cb", DataType::kBool, {3});
  Tensor* cf = net.add_input("cf", DataType::kF32, {3});
  Tensor* f = net.add_input("f", DataType::kF32, {3});
  Tensor* h = net.add_input("h", DataType::kF16, {3});
  Tensor* f2 = net.add_input("f2", DataType::kF32, {2});
  expect_error([&] { net.add_select(cf, f, f, "float_cond"); },
               {"Select 'float_cond'", "condition", "bool"});
  expect_error([&] { net.add_select(cb, f, h, "mixed"); }, {"Select 'mixed'", "f32", "f16"});
  expect_error([&] { net.add_select(cb, f, f2, "no_bcast"); },
               {"Select 'no_bcast'", "do not broadcast"});
  expect_error(
      [&] {
        net.add_layer(SelectParams{}, {cb, f}, "two_inputs");
      },
      {"Select 'two_inputs'", "3 inputs"});
}

// ---------------------------------------------------------------- cast

/// What casting float value `v` to integer or bool dtype `to` gives, by the documented rules:
/// truncate toward zero, NaN -> 0, saturate at the int64 range, narrow like a C cast; bool is
/// v != 0 (NaN -> true).
int64_t cast_float_to_int_ref(double v, DataType to) {
  if (to == DataType::kBool) return v != 0;
  int64_t i;
  if (std::isnan(v)) {
    i = 0;
  } else if (v >= 0x1p63) {
    i = kI64Max;
  } else if (v <= -0x1p63) {
    i = kI64Min;
  } else {
    i = static_cast<int64_t>(std::trunc(v));
  }
  return wrap_to(to, i);
}

TEST(CastLayer, EveryDtypePair) {
  const std::vector<float> float_values = {
      0.0f,   -0.0f,   1.0f,   -1.0f,   2.5f,     -2.5f,     3.7f,  -3.7f, 0.1f, 127.0f, 128.0f,
      200.0f, -129.0f, 300.0f, 1000.5f, 65504.0f, -70000.0f, 1e10f, 3e9f,  kNan, kInf,   -kInf};
  const std::vector<int64_t> int_values = {0,
                                           1,
                                           -1,
                                           2,
                                           127,
                                           128,
                                           255,
                                           256,
                                           -128,
                                           -129,
                                           300,
                                           65504,
                                           70000,
                                           2147483647,
                                           -2147483647 - 1,
                                           (int64_t{1} << 40) + 1,
                                           (int64_t{1} << 53) + 1,
                                           kI64Max,
                                           kI64Min};
  for (DataType from : kAllTypes) {
    TestTensor in;
    if (dtype_is_float(from)) {
      in = TestTensor::floats(from, {static_cast<int64_t>(float_values.size())}, float_values);
    } else if (from == DataType::kBool) {
      in = TestTensor::ints(from, {4}, {0, 1, 1, 0});
    } else {
      in = TestTensor::ints(from, {static_cast<int64_t>(int_values.size())}, int_values);
    }
    Network net;
    Tensor* x = net.add_input("x", from, shape_from_dims(in.dims));
    for (DataType to : kAllTypes) {
      net.mark_output(net.add_cast(x, to, std::string("to_") + dtype_name(to))->output());
    }
    const auto outs = test::run_network(net, {in});
    ASSERT_EQ(outs.size(), kAllTypes.size());
    for (size_t k = 0; k < kAllTypes.size(); ++k) {
      const DataType to = kAllTypes[k];
      const std::string what = std::string("cast ") + dtype_name(from) + " -> " + dtype_name(to);
      EXPECT_EQ(outs[k].dtype, to) << what;
      EXPECT_EQ(outs[k].dims, in.dims) << what;
      if (dtype_is_float(from)) {
        if (dtype_is_float(to)) {
          std::vector<float> expected;
          for (float v : in.to_floats()) expected.push_back(round_to(to, v));
          expect_exact_floats(outs[k], expected, what);
        } else {
          std::vector<int64_t> expected;
          for (float v : in.to_floats()) expected.push_back(cast_float_to_int_ref(v, to));
          test::expect_equal_ints(outs[k], expected, what);
        }
      } else {
        const std::vector<int64_t> iv = in.to_ints();
        if (dtype_is_float(to)) {
          std::vector<float> expected;
          for (int64_t v : iv) expected.push_back(round_to(to, static_cast<float>(v)));
          expect_exact_floats(outs[k], expected, what);
        } else {
          std::vector<int64_t> expected;
          for (int64_t v : iv) expected.push_back(wrap_to(to, v));
          test::expect_equal_ints(outs[k], expected, what);
        }
      }
    }
  }
}

TEST(CastLayer, DocumentedEdgeValues) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {6});
  net.mark_output(net.add_cast(x, DataType::kU8)->output());
  net.mark_output(net.add_cast(x, DataType::kI32)->output());
  net.mark_output(net.add_cast(x, DataType::kI64)->output());
  net.mark_output(net.add_cast(x, DataType::kBool)->output());
  const auto outs = test::run_network(
      net, {TestTensor::floats(DataType::kF32, {6}, {-1.0f, 300.0f, -2.9f, kNan, kInf, -0.0f})});
  ASSERT_EQ(outs.size(), 4u);
  // Truncate toward zero into int64 (NaN -> 0, inf saturates), then narrow like a C cast.
  test::expect_equal_ints(outs[0], {255, 44, 254, 0, 255, 0}, "f32 -> u8");
  test::expect_equal_ints(outs[1], {-1, 300, -2, 0, -1, 0}, "f32 -> i32");
  test::expect_equal_ints(outs[2], {-1, 300, -2, 0, kI64Max, 0}, "f32 -> i64");
  test::expect_equal_ints(outs[3], {1, 1, 1, 1, 1, 0}, "f32 -> bool");
}

TEST(CastLayer, HalfPrecisionRounding) {
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    DataType to;
    std::vector<float> in, expected;
  };
  const std::vector<Case> cases = {
      // f16 (10 fraction bits): ties around 1.0 and 2048 go to even; 65520 is the first value
      // that overflows; 2^-25 is half the smallest subnormal (a tie, to 0).
      {DataType::kF16,
       {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-11f + 0x1p-20f, 2049.0f, 2051.0f,
        65519.0f, 65520.0f, 0x1p-25f, 1.5f * 0x1p-24f, -1.0f - 0x1p-11f},
       {1.0f, 1.0f + 0x1p-9f, 1.0f + 0x1p-10f, 2048.0f, 2052.0f, 65504.0f, inf, 0.0f, 0x1p-23f,
        -1.0f}},
      // bf16 (7 fraction bits): the same ties at 2^-8; the largest float rounds up to inf.
      {DataType::kBF16,
       {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, 2049.0f,
        std::numeric_limits<float>::max(), 1e-40f, -3.0f - 0x1p-7f},
       {1.0f, 1.0f + 0x1p-6f, 1.0f + 0x1p-7f, 2048.0f, inf, bf16_to_f32(f32_to_bf16(1e-40f)),
        -3.0f}},
  };
  for (const Case& c : cases) {
    const std::vector<int64_t> dims = {static_cast<int64_t>(c.in.size())};
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, shape_from_dims(dims));
    net.mark_output(net.add_cast(x, c.to)->output());
    expect_exact_floats(run_one(net, {TestTensor::floats(DataType::kF32, dims, c.in)}), c.expected,
                        std::string("f32 -> ") + dtype_name(c.to));
  }
}

TEST(CastLayer, DynamicShapeAndRejects) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kI64, {DimExpr::symbol("n")});
  Layer* l = net.add_cast(x, DataType::kF16, "to_half");
  EXPECT_EQ(l->output()->dtype(), DataType::kF16);
  net.mark_output(l->output());
  RunOptions options;
  options.profiles.push_back(OptimizationProfile().set_range("n", 1, 4, 8));
  for (int64_t n : {1, 7}) {
    std::vector<int64_t> v;
    std::vector<float> expected;
    for (int64_t i = 0; i < n; ++i) {
      v.push_back(i * 1001 - 3000);
      expected.push_back(round_to(DataType::kF16, static_cast<float>(i * 1001 - 3000)));
    }
    expect_exact_floats(run_one(net, {TestTensor::ints(DataType::kI64, {n}, v)}, options), expected,
                        "dynamic cast n=" + std::to_string(n));
  }
  expect_error([&] { net.add_cast(x, static_cast<DataType>(99), "bad_cast"); },
               {"Cast 'bad_cast'", "unknown cast target dtype 99"});
  expect_error(
      [&] {
        net.add_layer(CastParams{}, {x, x}, "two_casts");
      },
      {"Cast 'two_casts'", "1 inputs"});
}

}  // namespace
}  // namespace ember::engine
