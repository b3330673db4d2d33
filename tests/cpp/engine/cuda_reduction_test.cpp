// CUDA conformance of the reduction family's device kernels (Reduce, SoftMax, Normalization):
// each network is built for "cuda", run on device buffers and compared with the CPU reference
// executor under tolerance_for(dtype). Skipped (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

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

std::string label(const std::string& what, DataType t) { return what + " " + dtype_name(t); }

Shape shape_of(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

std::string axes_to_string(const std::vector<int64_t>& axes) {
  std::string s = "{";
  for (int64_t a : axes) s += std::to_string(a) + ",";
  return s + "}";
}

// ---------------------------------------------------------------- reduce

void check_reduce(const TestTensor& x, ReduceOp op, const std::vector<int64_t>& axes,
                  bool keep_dims) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_of(x.dims));
  net.mark_output(net.add_reduce(in, op, axes, keep_dims)->output(), "out");
  test::check_cuda_matches_cpu(net, {x},
                               label("reduce op " + std::to_string(static_cast<int>(op)) + " " +
                                         dims_to_string(x.dims) + " axes " + axes_to_string(axes),
                                     x.dtype));
}

const std::vector<std::vector<int64_t>> kAxisSets = {{0},    {1},    {3},       {0, 2},
                                                     {1, 3}, {2, 3}, {0, 1, 3}, {0, 1, 2, 3}};

TEST(CudaReduce, FloatOpsOverAxisSets) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    const TestTensor x = TestTensor::random(t, {3, 5, 4, 7}, 1, 0.5f, 1.5f);  // prod stays finite
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMax, ReduceOp::kMin,
                        ReduceOp::kAvg}) {
      for (const auto& axes : kAxisSets) check_reduce(x, op, axes, false);
      check_reduce(x, op, {1, 2}, true);
    }
  }
}

TEST(CudaReduce, IntegerOpsWrap) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kIntTypes) {
    const TestTensor x = TestTensor::random(t, {4, 6, 9}, 2, -100.0f, 100.0f);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMax, ReduceOp::kMin}) {
      for (const std::vector<int64_t>& axes :
           std::vector<std::vector<int64_t>>{{0}, {1}, {2}, {0, 2}, {0, 1, 2}}) {
        check_reduce(x, op, axes, true);
      }
    }
  }
}

TEST(CudaReduce, LongRowsNanAndEmpty) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    // Rows of 5000: a whole block per row; and a column reduction over 5000.
    check_reduce(TestTensor::random(t, {3, 5000}, 3), ReduceOp::kSum, {1}, false);
    check_reduce(TestTensor::random(t, {3, 5000}, 4), ReduceOp::kAvg, {1}, false);
    check_reduce(TestTensor::random(t, {5000, 3}, 5), ReduceOp::kSum, {0}, false);
    check_reduce(TestTensor::random(t, {1 << 20}, 6), ReduceOp::kMax, {0}, false);
    std::vector<float> v(2 * 40);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 9) - 4.0f;
    v[13] = std::numeric_limits<float>::quiet_NaN();
    const TestTensor xn = TestTensor::floats(t, {2, 40}, v);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      check_reduce(xn, op, {1}, false);
      check_reduce(xn, op, {0}, false);
    }
    // An empty reduced dim: sum 0, prod 1, avg NaN.
    const TestTensor empty = TestTensor::random(t, {3, 0, 4}, 7);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kAvg}) {
      check_reduce(empty, op, {1}, false);
    }
  }
}

TEST(CudaReduce, ManyBlocks) {
  EMBER_SKIP_WITHOUT_CUDA();
  // 700k rows of 4: warp-per-row with 8 rows per block = 87.5k blocks (> 65535).
  check_reduce(TestTensor::random(DataType::kF32, {700000, 4}, 8), ReduceOp::kSum, {1}, false);
}

// ---------------------------------------------------------------- softmax

void check_softmax(const TestTensor& x, int64_t axis, bool log, bool zero_masked = false) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_of(x.dims));
  SoftMaxParams p;
  p.axis = axis;
  p.log = log;
  p.zero_masked_rows = zero_masked;
  net.mark_output(net.add_layer(p, {in})->output(), "out");
  test::check_cuda_matches_cpu(net, {x},
                               label(std::string(log ? "log_softmax " : "softmax ") +
                                         (zero_masked ? "zero_masked_rows " : "") +
                                         dims_to_string(x.dims) + " axis " + std::to_string(axis),
                                     x.dtype));
}

TEST(CudaSoftMax, EveryAxisAndLog) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    const TestTensor x = TestTensor::random(t, {3, 7, 5, 9}, 10, -4.0f, 4.0f);
    for (int64_t axis = 0; axis < 4; ++axis) {
      check_softmax(x, axis, false);
      check_softmax(x, axis, true);
    }
    check_softmax(TestTensor::random(t, {4, 3000}, 11, -8.0f, 8.0f), 1, false);  // block per row
    check_softmax(TestTensor::random(t, {4, 3000}, 12, -8.0f, 8.0f), 1, true);
    check_softmax(TestTensor::random(t, {2, 3000, 3}, 13), 1, false);
  }
}

TEST(CudaSoftMax, NanAndInfinities) {
  EMBER_SKIP_WITHOUT_CUDA();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {1, 2, 3, std::numeric_limits<float>::quiet_NaN(),  // NaN row
                                -inf, -inf, -inf, -inf,                            // all -inf
                                -inf, 0, 1, -inf,                                  // some -inf
                                100, 100, 100, 100};
  for (DataType t : kFloatTypes) {
    check_softmax(TestTensor::floats(t, {4, 4}, v), 1, false);
    check_softmax(TestTensor::floats(t, {4, 4}, v), 1, true);
    check_softmax(TestTensor::floats(t, {4, 4}, v), 1, false, true);  // all -inf row: zeros
    check_softmax(TestTensor::floats(t, {4, 4}, v), 0, false, true);
  }
}

TEST(CudaSoftMax, SymbolicAtTwoSizes) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    Network net;
    const DimExpr n = DimExpr::symbol("n"), s = DimExpr::symbol("s");
    Tensor* x = net.add_input("x", t, {n, s, 6});
    net.mark_output(net.add_softmax(x, 1)->output(), "a");
    net.mark_output(net.add_softmax(x, 2, true)->output(), "b");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("n", 1, 2, 8);
    profiles[0].set_range("s", 1, 16, 64);
    test::CudaRunner runner(net, {}, profiles);
    for (auto [batch, seq] : {std::pair<int64_t, int64_t>{1, 3}, {5, 61}}) {
      const std::vector<TestTensor> in = {TestTensor::random(t, {batch, seq, 6}, 20)};
      test::expect_matches_cpu(net, in, runner.run(in),
                               label("softmax n=" + std::to_string(batch) + " s=" +
                                         std::to_string(seq),
                                     t));
    }
  }
}

// ---------------------------------------------------------------- normalization

void check_norm(DataType t, const std::vector<int64_t>& dims, NormalizationType type,
                int64_t axis, int64_t groups, bool scale, bool bias, uint32_t seed) {
  NormalizationParams p;
  p.type = type;
  p.axis = axis;
  p.num_groups = groups;
  p.epsilon = 1e-5;
  const std::vector<int64_t> param_dims =
      type == NormalizationType::kLayer
          ? std::vector<int64_t>(dims.begin() + axis, dims.end())
          : std::vector<int64_t>{dims[1]};
  Network net;
  Tensor* x = net.add_input("x", t, shape_of(dims));
  Tensor* s = scale ? net.add_input("scale", t, shape_of(param_dims)) : nullptr;
  Tensor* b = bias ? net.add_input("bias", t, shape_of(param_dims)) : nullptr;
  net.mark_output(net.add_normalization(x, s, b, p)->output(), "out");
  // An offset mean (3) checks that centering keeps the mean in double, as the CPU does.
  std::vector<TestTensor> in = {TestTensor::random(t, dims, seed, 2.0f, 4.0f)};
  if (scale) in.push_back(TestTensor::random(t, param_dims, seed + 1, 0.5f, 1.5f));
  if (bias) in.push_back(TestTensor::random(t, param_dims, seed + 2));
  test::check_cuda_matches_cpu(net, in,
                               label("norm type " + std::to_string(static_cast<int>(type)) + " " +
                                         dims_to_string(dims),
                                     t));
}

TEST(CudaNormalization, LayerGroupInstance) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    check_norm(t, {4, 7, 33}, NormalizationType::kLayer, 2, 1, true, true, 30);
    check_norm(t, {4, 7, 33}, NormalizationType::kLayer, 1, 1, true, false, 31);
    check_norm(t, {3, 5000}, NormalizationType::kLayer, 1, 1, false, false, 32);
    check_norm(t, {2, 6, 5, 7}, NormalizationType::kGroup, 1, 3, true, true, 33);
    check_norm(t, {2, 6, 5, 7}, NormalizationType::kGroup, 1, 2, false, true, 34);
    check_norm(t, {2, 6, 11}, NormalizationType::kInstance, 1, 1, true, true, 35);
    check_norm(t, {3, 4, 3, 3, 3}, NormalizationType::kInstance, 1, 1, false, false, 36);
  }
}

TEST(CudaNormalization, LayerNormRowWidthsOfTransformers) {
  EMBER_SKIP_WITHOUT_CUDA();
  // Rows of 64..1024 (multiples of 8: the 16-byte path for f16/bf16) and 776/1000 (not a
  // whole number of 32-lane chunks), with and without the affine.
  for (DataType t : kFloatTypes) {
    for (int64_t width : {64, 200, 512, 768, 776, 1000, 1024}) {
      check_norm(t, {3, 37, width}, NormalizationType::kLayer, 2, 1, true, true, 40);
      check_norm(t, {3, 37, width}, NormalizationType::kLayer, 2, 1, false, false, 41);
    }
  }
}

TEST(CudaNormalization, SymbolicAtTwoSizes) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    NormalizationParams p;
    p.type = NormalizationType::kLayer;
    p.axis = 2;
    Network net;
    const DimExpr n = DimExpr::symbol("n");
    Tensor* x = net.add_input("x", t, {n, 3, 40});
    Tensor* s = net.add_input("scale", t, {40});
    net.mark_output(net.add_normalization(x, s, nullptr, p)->output(), "out");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("n", 1, 2, 8);
    test::CudaRunner runner(net, {}, profiles);
    const TestTensor scale = TestTensor::random(t, {40}, 41);
    for (int64_t batch : {1, 6}) {
      const std::vector<TestTensor> in = {TestTensor::random(t, {batch, 3, 40}, 40), scale};
      test::expect_matches_cpu(net, in, runner.run(in),
                               label("layer norm n=" + std::to_string(batch), t));
    }
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
