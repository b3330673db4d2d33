// CUDA conformance of the pointwise family (Activation, ElementWise, Unary, Select, Cast): each
// network is built for "cuda", run on device buffers and compared with the CPU reference
// executor under tolerance_for(dtype). Skipped (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};
const std::vector<DataType> kIntTypes = {DataType::kI8, DataType::kU8, DataType::kI32,
                                         DataType::kI64};
const std::vector<DataType> kAllTypes = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                         DataType::kI8,  DataType::kU8,  DataType::kI32,
                                         DataType::kI64, DataType::kBool};

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::string label(const char* what, DataType t) { return std::string(what) + " " + dtype_name(t); }

/// Random operand: floats in [-2, 2), integers in [lo, hi), bool 0/1.
TestTensor operand(DataType t, std::vector<int64_t> dims, uint32_t seed, float lo = -2.0f,
                   float hi = 2.0f) {
  if (t == DataType::kBool) return TestTensor::random(t, std::move(dims), seed, 0.0f, 2.0f);
  if (dtype_is_integer(t)) return TestTensor::random(t, std::move(dims), seed, lo * 20, hi * 20);
  return TestTensor::random(t, std::move(dims), seed, lo, hi);
}

void check_binary(DataType t, ElementWiseOp op, const std::vector<int64_t>& da,
                  const std::vector<int64_t>& db, const TestTensor& a, const TestTensor& b,
                  const std::string& what) {
  Network net;
  Tensor* x = net.add_input("a", t, Shape(da.begin(), da.end()));
  Tensor* y = net.add_input("b", t, Shape(db.begin(), db.end()));
  net.mark_output(net.add_elementwise(x, y, op)->output(), "out");
  test::check_cuda_matches_cpu(net, {a, b}, what);
}

std::vector<ElementWiseOp> ops_for(DataType t) {
  if (t == DataType::kBool) {
    return {ElementWiseOp::kAnd, ElementWiseOp::kOr, ElementWiseOp::kXor, ElementWiseOp::kEqual};
  }
  return {ElementWiseOp::kSum,     ElementWiseOp::kProd,     ElementWiseOp::kMax,
          ElementWiseOp::kMin,     ElementWiseOp::kSub,      ElementWiseOp::kDiv,
          ElementWiseOp::kPow,     ElementWiseOp::kFloorDiv, ElementWiseOp::kEqual,
          ElementWiseOp::kGreater, ElementWiseOp::kLess};
}

TEST(CudaPointwise, ElementWiseEveryOpAndDtypeWithBroadcasting) {
  EMBER_SKIP_WITHOUT_CUDA();
  // Same shape (vector path, odd size for the tail), a stride-0 middle dim, rank extension and
  // a scalar-like operand.
  const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> shapes = {
      {{37, 51}, {37, 51}}, {{3, 1, 5, 7}, {4, 1, 7}}, {{6, 1}, {1, 9}}, {{2, 3, 5}, {1}}};
  for (DataType t : kAllTypes) {
    for (ElementWiseOp op : ops_for(t)) {
      uint32_t seed = 1;
      for (const auto& [da, db] : shapes) {
        const TestTensor a = operand(t, da, seed++);
        // Integer div/floor_div/pow need non-zero (non-negative) right operands.
        const bool positive = dtype_is_integer(t) && (op == ElementWiseOp::kDiv ||
                                                      op == ElementWiseOp::kFloorDiv ||
                                                      op == ElementWiseOp::kPow);
        const TestTensor b = positive ? TestTensor::random(t, db, seed++, 1.0f, 5.0f)
                                      : operand(t, db, seed++);
        check_binary(t, op, da, db, a, b,
                     label("elementwise", t) + " op " + std::to_string(static_cast<int>(op)) +
                         " " + dims_to_string(da) + " x " + dims_to_string(db));
      }
    }
  }
}

TEST(CudaPointwise, ElementWiseFloatSpecialValues) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<float> av = {kNan, 1.0f, -kInf, 0.0f, -0.0f, 7.5f, -7.5f, 1.0f, 3.0f};
  const std::vector<float> bv = {1.0f, kNan, kInf, 0.0f, 0.0f, 0.1f, 2.0f, -0.0f, -2.0f};
  for (DataType t : kFloatTypes) {
    const TestTensor a = TestTensor::floats(t, {9}, av);
    const TestTensor b = TestTensor::floats(t, {9}, bv);
    for (ElementWiseOp op : ops_for(t)) {
      check_binary(t, op, {9}, {9}, a, b, label("special values", t));
    }
  }
}

TEST(CudaPointwise, ElementWiseLargeTensorUsesTheGridStrideLoop) {
  EMBER_SKIP_WITHOUT_CUDA();
  // 4M + 3 elements: far more than one grid covers, and not a multiple of the vector width.
  const std::vector<int64_t> d = {(int64_t{1} << 22) + 3};
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kI8}) {
    check_binary(t, ElementWiseOp::kSum, d, d, operand(t, d, 7), operand(t, d, 8),
                 label("large same-shape", t));
    check_binary(t, ElementWiseOp::kProd, {1024, 4099}, {4099}, operand(t, {1024, 4099}, 9),
                 operand(t, {4099}, 10), label("large broadcast", t));
  }
}

TEST(CudaPointwise, IntegerDivisionByZeroIsAnError) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (ElementWiseOp op : {ElementWiseOp::kDiv, ElementWiseOp::kFloorDiv, ElementWiseOp::kPow}) {
    Network net;
    Tensor* x = net.add_input("a", DataType::kI32, {4});
    Tensor* y = net.add_input("b", DataType::kI32, {4});
    net.mark_output(net.add_elementwise(x, y, op)->output(), "out");
    const TestTensor a = TestTensor::ints(DataType::kI32, {4}, {1, 2, 3, 4});
    const TestTensor b = TestTensor::ints(DataType::kI32, {4},
                                          {1, op == ElementWiseOp::kPow ? -1 : 0, 2, 3});
    test::CudaRunner runner(net, {a, b});
    EXPECT_THROW(runner.run({a, b}), Error) << static_cast<int>(op);
  }
}

TEST(CudaPointwise, ElementWiseSymbolicShapesAtTwoSizes) {
  EMBER_SKIP_WITHOUT_CUDA();
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {DimExpr::symbol("n"), 8});
  Tensor* y = net.add_input("y", DataType::kF16, {1, 8});
  Tensor* z = net.add_elementwise(x, y, ElementWiseOp::kSum)->output();
  z = net.add_activation(z, ActivationType::kGeluTanh)->output();
  net.mark_output(z, "z");
  const TestTensor bias = operand(DataType::kF16, {1, 8}, 3);
  test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 1, 64, 100000)});
  for (int64_t n : {5, 70001}) {
    const std::vector<TestTensor> in = {operand(DataType::kF16, {n, 8}, static_cast<uint32_t>(n)),
                                        bias};
    test::expect_matches_cpu(net, in, runner.run(in), "symbolic n=" + std::to_string(n));
  }
}

TEST(CudaPointwise, UnaryEveryOp) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<UnaryOp> float_ops = {
      UnaryOp::kExp,   UnaryOp::kLog,   UnaryOp::kSqrt,  UnaryOp::kRsqrt, UnaryOp::kReciprocal,
      UnaryOp::kAbs,   UnaryOp::kNeg,   UnaryOp::kSin,   UnaryOp::kCos,   UnaryOp::kTan,
      UnaryOp::kAsin,  UnaryOp::kAcos,  UnaryOp::kAtan,  UnaryOp::kSinh,  UnaryOp::kCosh,
      UnaryOp::kAsinh, UnaryOp::kAcosh, UnaryOp::kAtanh, UnaryOp::kCeil,  UnaryOp::kFloor,
      UnaryOp::kRound, UnaryOp::kErf,   UnaryOp::kSign,  UnaryOp::kIsInf, UnaryOp::kIsNan};
  auto check = [](DataType t, UnaryOp op, const TestTensor& in, const std::string& what) {
    Network net;
    Tensor* x = net.add_input("x", t, Shape(in.dims.begin(), in.dims.end()));
    net.mark_output(net.add_unary(x, op)->output(), "y");
    test::check_cuda_matches_cpu(net, {in}, what + " op " + std::to_string(static_cast<int>(op)));
  };
  for (DataType t : kFloatTypes) {
    for (UnaryOp op : float_ops) {
      // Inputs inside each function's domain (acosh needs >= 1), and ties for round.
      const bool acosh = op == UnaryOp::kAcosh;
      TestTensor in = TestTensor::random(t, {33, 65}, 11, acosh ? 1.0f : -0.95f,
                                         acosh ? 4.0f : 0.95f);
      check(t, op, in, label("unary", t));
    }
    const TestTensor special = TestTensor::floats(
        t, {10}, {kNan, kInf, -kInf, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 0.0f, -0.0f});
    for (UnaryOp op : {UnaryOp::kRound, UnaryOp::kSign, UnaryOp::kIsInf, UnaryOp::kIsNan,
                       UnaryOp::kAbs, UnaryOp::kCeil, UnaryOp::kFloor}) {
      check(t, op, special, label("unary special", t));
    }
  }
  for (DataType t : kIntTypes) {
    for (UnaryOp op : {UnaryOp::kAbs, UnaryOp::kNeg, UnaryOp::kSign}) {
      check(t, op, TestTensor::random(t, {1001}, 5, -100.0f, 100.0f), label("unary", t));
    }
  }
  check(DataType::kBool, UnaryOp::kNot, operand(DataType::kBool, {7, 13}, 2), "not");
}

TEST(CudaPointwise, ActivationEveryTypeWithAlphaBeta) {
  EMBER_SKIP_WITHOUT_CUDA();
  struct Case {
    ActivationType type;
    double alpha, beta;
  };
  const std::vector<Case> cases = {
      {ActivationType::kRelu, 0, 0},
      {ActivationType::kSigmoid, 0, 0},
      {ActivationType::kTanh, 0, 0},
      {ActivationType::kLeakyRelu, 0.1, 0},
      {ActivationType::kElu, 1.3, 0},
      {ActivationType::kSelu, 1.6732632423543772, 1.0507009873554805},
      {ActivationType::kSoftsign, 0, 0},
      {ActivationType::kSoftplus, 2.0, 3.0},
      {ActivationType::kClip, -0.5, 0.75},
      {ActivationType::kHardSigmoid, 1.0 / 6.0, 0.5},
      {ActivationType::kGeluErf, 0, 0},
      {ActivationType::kGeluTanh, 0, 0},
      {ActivationType::kSilu, 0, 0},
  };
  for (DataType t : kFloatTypes) {
    for (const Case& c : cases) {
      for (const std::vector<int64_t>& dims : {std::vector<int64_t>{3, 5, 67},
                                               std::vector<int64_t>{200003}}) {
        Network net;
        Tensor* x = net.add_input("x", t, Shape(dims.begin(), dims.end()));
        net.mark_output(net.add_activation(x, c.type, c.alpha, c.beta)->output(), "y");
        TestTensor in = TestTensor::random(t, dims, 17, -4.0f, 4.0f);
        test::check_cuda_matches_cpu(net, {in},
                                     label("activation", t) + " type " +
                                         std::to_string(static_cast<int>(c.type)));
      }
      Network net;
      Tensor* x = net.add_input("x", t, {4});
      net.mark_output(net.add_activation(x, c.type, c.alpha, c.beta)->output(), "y");
      test::check_cuda_matches_cpu(net, {TestTensor::floats(t, {4}, {kNan, kInf, -kInf, 0.0f})},
                                   label("activation special", t));
    }
  }
}

TEST(CudaPointwise, SelectBroadcastsAllThreeOperands) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kAllTypes) {
    Network net;
    Tensor* c = net.add_input("c", DataType::kBool, {5, 1, 7});
    Tensor* a = net.add_input("a", t, {1, 6, 7});
    Tensor* b = net.add_input("b", t, {3, 5, 6, 1});
    net.mark_output(net.add_select(c, a, b)->output(), "y");
    test::check_cuda_matches_cpu(
        net, {operand(DataType::kBool, {5, 1, 7}, 1), operand(t, {1, 6, 7}, 2),
              operand(t, {3, 5, 6, 1}, 3)},
        label("select", t));
  }
  // Same shapes, large.
  Network net;
  Tensor* c = net.add_input("c", DataType::kBool, {300001});
  Tensor* a = net.add_input("a", DataType::kF32, {300001});
  Tensor* b = net.add_input("b", DataType::kF32, {300001});
  net.mark_output(net.add_select(c, a, b)->output(), "y");
  test::check_cuda_matches_cpu(
      net, {operand(DataType::kBool, {300001}, 1), operand(DataType::kF32, {300001}, 2),
            operand(DataType::kF32, {300001}, 3)},
      "select large");
}

TEST(CudaPointwise, CastEveryDtypePair) {
  EMBER_SKIP_WITHOUT_CUDA();
  // Values that exercise truncation, wrap-around on narrowing, NaN/inf and bool conversion.
  const std::vector<float> special = {kNan,   kInf, -kInf, -1.0f, -0.5f, 0.0f, 0.7f,  1.5f,
                                      255.9f, 256.0f, 300.0f, -129.0f, 1e10f, -1e10f, 3e19f, 42.0f};
  for (DataType from : kAllTypes) {
    for (DataType to : kAllTypes) {
      const TestTensor rnd = dtype_is_float(from)
                                 ? TestTensor::random(from, {7, 131}, 4, -300.0f, 300.0f)
                                 : operand(from, {7, 131}, 4, -10.0f, 10.0f);
      std::vector<TestTensor> inputs = {rnd};
      if (dtype_is_float(from)) {
        inputs.push_back(TestTensor::floats(from, {static_cast<int64_t>(special.size())}, special));
      }
      for (const TestTensor& in : inputs) {
        Network net;
        Tensor* x = net.add_input("x", from, Shape(in.dims.begin(), in.dims.end()));
        net.mark_output(net.add_cast(x, to)->output(), "y");
        test::check_cuda_matches_cpu(
            net, {in}, std::string("cast ") + dtype_name(from) + " -> " + dtype_name(to));
      }
    }
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
