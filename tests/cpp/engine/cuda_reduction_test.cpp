// CUDA conformance of the reduction family's device kernels (Reduce, TopK, SoftMax,
// Normalization, Cumulative):
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

// Few long rows with EMBER_PARALLEL_REDUCTIONS=1: each row's reduced range is split over many blocks
// (partials in scratch, then one warp per row combines them). Whole tensors into one value (T5's
// isinf(x).any()), three rows, reduced dims in two strided groups, NaN inside one slice, every
// op and integer wrap-around.
TEST(CudaReduce, FewLongRowsSplitOverBlocks) {
  EMBER_SKIP_WITHOUT_CUDA();
  test::ScopedEnv split("EMBER_PARALLEL_REDUCTIONS", "1");
  for (DataType t : kFloatTypes) {
    const TestTensor x = TestTensor::random(t, {4, 128, 512}, 11, 0.999f, 1.001f);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin,
                        ReduceOp::kProd}) {
      check_reduce(x, op, {0, 1, 2}, false);  // one row of 262144
      check_reduce(x, op, {1, 2}, true);      // four rows of 65536
      check_reduce(x, op, {0, 2}, false);     // 128 rows: as many as the SMs, or close
    }
    // 100 rows of 16384: fewer rows than an H100's 132 SMs, two slices each.
    check_reduce(TestTensor::random(t, {100, 16384}, 14, 0.999f, 1.001f), ReduceOp::kAvg, {1},
                 false);
    // Reduced dims 0 and 2 of [40, 3, 1000]: two strided groups, three rows.
    check_reduce(TestTensor::random(t, {40, 3, 1000}, 12), ReduceOp::kSum, {0, 2}, false);
    // A NaN in one slice of the split reaches the result.
    std::vector<float> v(3 * 70000);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 11) - 5.0f;
    v[100000] = std::numeric_limits<float>::quiet_NaN();
    const TestTensor xn = TestTensor::floats(t, {3, 70000}, v);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      check_reduce(xn, op, {1}, false);
      check_reduce(xn, op, {0, 1}, false);
    }
  }
  for (DataType t : kIntTypes) {
    const TestTensor x = TestTensor::random(t, {2, 50000}, 13, -100.0f, 100.0f);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMax, ReduceOp::kMin}) {
      check_reduce(x, op, {1}, false);
      check_reduce(x, op, {0, 1}, true);
    }
  }
}

// ---------------------------------------------------------------- topk

void check_topk(const TestTensor& x, TopKOp op, int64_t k, int64_t axis, DataType index_dtype) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_of(x.dims));
  TopKParams p;
  p.op = op;
  p.k = k;
  p.axis = axis;
  p.index_dtype = index_dtype;
  Layer* l = net.add_layer(p, {in});
  net.mark_output(l->output(0), "values");
  net.mark_output(l->output(1), "indices");
  test::check_cuda_matches_cpu(
      net, {x},
      label(std::string(op == TopKOp::kMax ? "topk max " : "topk min ") + dims_to_string(x.dims) +
                " k " + std::to_string(k) + " axis " + std::to_string(axis) + " indices " +
                dtype_name(index_dtype),
            x.dtype));
}

/// Values with many ties: ((i * 7) % levels) - levels / 2, in dtype t.
TestTensor tied(DataType t, const std::vector<int64_t>& dims, int64_t levels) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = (i * 7) % levels - (t == DataType::kU8 ? 0 : levels / 2);
  return TestTensor::ints(t, dims, v);
}

TEST(CudaTopK, EveryDtypeAxisAndK) {
  EMBER_SKIP_WITHOUT_CUDA();
  std::vector<DataType> types = kFloatTypes;
  types.insert(types.end(), kIntTypes.begin(), kIntTypes.end());
  for (DataType t : types) {
    const TestTensor x = TestTensor::random(t, {5, 6, 7}, 11, -100.0f, 100.0f);
    const TestTensor ties = tied(t, {5, 6, 7}, 3);  // ties keep the lower index first
    for (TopKOp op : {TopKOp::kMax, TopKOp::kMin}) {
      for (int64_t axis = 0; axis < 3; ++axis) {
        const int64_t n = x.dims[static_cast<size_t>(axis)];
        for (int64_t k : {int64_t{1}, int64_t{3}, n}) {
          check_topk(x, op, k, axis, DataType::kI64);
          check_topk(ties, op, k, axis, axis == 1 ? DataType::kI32 : DataType::kI64);
        }
      }
    }
  }
}

TEST(CudaTopK, NanSortsAsLargest) {
  EMBER_SKIP_WITHOUT_CUDA();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (DataType t : kFloatTypes) {
    const TestTensor x =
        TestTensor::floats(t, {2, 6}, {1, nan, -inf, 3, nan, inf, 0, 0, -0.0f, nan, 2, -inf});
    for (TopKOp op : {TopKOp::kMax, TopKOp::kMin}) {
      for (int64_t k : {1, 2, 4, 6}) check_topk(x, op, k, 1, DataType::kI64);
    }
  }
}

TEST(CudaTopK, LongRows) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : {DataType::kF32, DataType::kBF16, DataType::kI32}) {
    // 4096: the longest row sorted in shared memory, also along a leading axis.
    const TestTensor sortable = TestTensor::random(t, {3, 4096}, 12, -1000.0f, 1000.0f);
    check_topk(sortable, TopKOp::kMax, 4096, 1, DataType::kI64);
    check_topk(sortable, TopKOp::kMin, 100, 1, DataType::kI32);
    check_topk(TestTensor::random(t, {4096, 2}, 13, -1000.0f, 1000.0f), TopKOp::kMax, 7, 0,
               DataType::kI64);
    // Longer rows: argmax and small k select in k passes (ties from a narrow integer range).
    const TestTensor rows = tied(t, {4, 100003}, 1000);
    check_topk(rows, TopKOp::kMax, 1, 1, DataType::kI64);
    check_topk(rows, TopKOp::kMin, 5, 1, DataType::kI64);
    check_topk(rows, TopKOp::kMax, 128, 1, DataType::kI32);
  }
  // Many short rows: a block per row, more rows than one grid of 65535 blocks.
  check_topk(TestTensor::random(DataType::kF16, {70000, 9}, 14), TopKOp::kMax, 3, 1,
             DataType::kI64);
}

// ---------------------------------------------------------------- cumulative

void check_cumulative(const TestTensor& x, int64_t axis, bool exclusive, bool reverse) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_of(x.dims));
  CumulativeParams p;
  p.op = CumulativeOp::kSum;
  p.axis = axis;
  p.exclusive = exclusive;
  p.reverse = reverse;
  net.mark_output(net.add_cumulative(in, p)->output(), "out");
  test::check_cuda_matches_cpu(net, {x},
                               label(std::string("cumsum ") + dims_to_string(x.dims) + " axis " +
                                         std::to_string(axis) + (exclusive ? " exclusive" : "") +
                                         (reverse ? " reverse" : ""),
                                     x.dtype));
}

TEST(CudaCumulative, EveryDtypeAxisExclusiveAndReverse) {
  EMBER_SKIP_WITHOUT_CUDA();
  std::vector<DataType> types = kFloatTypes;
  types.insert(types.end(), kIntTypes.begin(), kIntTypes.end());
  for (DataType t : types) {
    const TestTensor x = TestTensor::random(t, {4, 5, 6}, 20, -100.0f, 100.0f);  // i8/u8 wrap
    for (int64_t axis = 0; axis < 3; ++axis) {
      for (bool exclusive : {false, true}) {
        for (bool reverse : {false, true}) check_cumulative(x, axis, exclusive, reverse);
      }
    }
  }
}

TEST(CudaCumulative, LongRowsAndManyColumns) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kI8, DataType::kI64}) {
    for (bool exclusive : {false, true}) {
      for (bool reverse : {false, true}) {
        // Rows of 5000: a block per row scans tile by tile (contiguous, then strided).
        check_cumulative(TestTensor::random(t, {3, 5000}, 21, -100.0f, 100.0f), 1, exclusive, reverse);
        check_cumulative(TestTensor::random(t, {5000, 3}, 22, -100.0f, 100.0f), 0, exclusive, reverse);
        // 6000 columns: a thread per column.
        check_cumulative(TestTensor::random(t, {2, 300, 3000}, 23, -100.0f, 100.0f), 1, exclusive, reverse);
      }
    }
  }
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
      type == NormalizationType::kLayer || type == NormalizationType::kRms
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

TEST(CudaNormalization, RmsNormOnEveryRowKernel) {
  EMBER_SKIP_WITHOUT_CUDA();
  // The layer norm's three kernels without centering: the 16-bit vector kernel (widths % 8 ==
  // 0), the warp kernel (f32, and 33 / 1000) and the block kernel (5000). 896: Qwen2-0.5B's
  // hidden size, 512: T5-small's.
  for (DataType t : kFloatTypes) {
    for (int64_t width : {33, 64, 512, 768, 896, 1000, 1024, 5000}) {
      check_norm(t, {3, 37, width}, NormalizationType::kRms, 2, 1, true, false, 42);
      check_norm(t, {3, 37, width}, NormalizationType::kRms, 2, 1, false, true, 43);
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
