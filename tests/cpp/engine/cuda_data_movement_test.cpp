// CUDA conformance of the data-movement family (Shuffle, Concatenation, Slice, Gather, Scatter,
// Padding, Resize, Fill, Shape, Identity): each network is built for "cuda", run on device buffers
// and compared with the CPU reference executor. Skipped (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

// One dtype per element size, plus bool.
const std::vector<DataType> kMoveTypes = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                          DataType::kI8, DataType::kI64, DataType::kBool};

const DimExpr kN = DimExpr::symbol("n");

Shape shape_of(const std::vector<int64_t>& d) { return Shape(d.begin(), d.end()); }

TestTensor random_of(DataType t, std::vector<int64_t> dims, uint32_t seed) {
  if (t == DataType::kBool) return TestTensor::random(t, std::move(dims), seed, 0.0f, 2.0f);
  return TestTensor::random(t, std::move(dims), seed, -100.0f, 100.0f);
}

/// Indices covering [-bound, bound) in a fixed pattern, bound per position i % bounds.size().
TestTensor indices_of(DataType t, std::vector<int64_t> dims, const std::vector<int64_t>& bounds) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t bound = bounds[static_cast<size_t>(j) % bounds.size()];
    v[j] = (j * 7 + j / 3) % (2 * bound) - bound;
  }
  return TestTensor::ints(t, std::move(dims), v);
}

std::string label(const std::string& what, DataType t) { return what + " " + dtype_name(t); }

TEST(CudaDataMovement, IdentityAndShape) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kMoveTypes) {
    Network net;
    Tensor* x = net.add_input("x", t, {3, 1, 7});
    net.mark_output(net.add_identity(x)->output(), "y");
    net.mark_output(net.add_shape(x)->output(), "s");
    test::check_cuda_matches_cpu(net, {random_of(t, {3, 1, 7}, 1)}, label("identity+shape", t));
  }
  // Dynamic: the Shape layer reports the bound sizes.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {kN, 5});
  net.mark_output(net.add_shape(x)->output(), "s");
  test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 1, 4, 100)});
  for (int64_t n : {2, 77}) {
    const std::vector<TestTensor> in = {random_of(DataType::kF32, {n, 5}, 2)};
    test::expect_matches_cpu(net, in, runner.run(in), "shape n=" + std::to_string(n));
  }
}

TEST(CudaDataMovement, ShuffleTransposeReshapeTranspose) {
  EMBER_SKIP_WITHOUT_CUDA();
  struct Case {
    std::vector<int64_t> in;
    ShuffleParams p;
  };
  auto params = [](std::vector<int64_t> first, bool has_reshape, std::vector<int64_t> reshape,
                   std::vector<int64_t> second) {
    ShuffleParams p;
    p.first_transpose = std::move(first);
    p.has_reshape = has_reshape;
    p.reshape = shape_of(reshape);
    p.second_transpose = std::move(second);
    return p;
  };
  const std::vector<Case> cases = {
      {{2, 3, 4, 5}, params({3, 1, 0, 2}, false, {}, {})},           // one transpose
      {{2, 3, 4, 5}, params({}, true, {6, 20}, {})},                  // pure reshape
      {{4, 6, 5}, params({2, 0, 1}, true, {10, 12}, {1, 0})},          // both sides of a reshape
      {{4, 6, 5}, params({}, true, {24, 5}, {1, 0})},                  // reshape then transpose
      {{4, 6, 5}, params({1, 2, 0}, true, {30, 4}, {})},               // transpose then reshape
      {{3, 4, 5}, params({1, 2, 0}, false, {}, {2, 0, 1})},            // two transposes
      {{1, 257, 1, 129}, params({3, 1, 2, 0}, false, {}, {})},         // odd sizes, unit dims
      {{64, 3, 515}, params({2, 0, 1}, true, {515, 192}, {1, 0})},     // large two-stage map
  };
  for (DataType t : kMoveTypes) {
    for (size_t c = 0; c < cases.size(); ++c) {
      Network net;
      Tensor* x = net.add_input("x", t, shape_of(cases[c].in));
      net.mark_output(net.add_shuffle(x, cases[c].p)->output(), "y");
      test::check_cuda_matches_cpu(net, {random_of(t, cases[c].in, static_cast<uint32_t>(c))},
                                   label("shuffle case " + std::to_string(c), t));
    }
  }
}

TEST(CudaDataMovement, ShuffleSymbolicShapesAtTwoSizes) {
  EMBER_SKIP_WITHOUT_CUDA();
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {kN, 3, 4});
  net.mark_output(net.add_transpose(x, {2, 0, 1})->output(), "t");
  net.mark_output(net.add_reshape(x, {kN * 2, 6})->output(), "r");
  ShuffleParams p;
  p.first_transpose = {1, 0, 2};
  p.has_reshape = true;
  p.reshape = {3, kN * 4};
  p.second_transpose = {1, 0};
  net.mark_output(net.add_shuffle(x, p)->output(), "s");
  test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 1, 8, 50000)});
  for (int64_t n : {3, 40001}) {
    const std::vector<TestTensor> in = {random_of(DataType::kF16, {n, 3, 4}, 5)};
    test::expect_matches_cpu(net, in, runner.run(in), "shuffle n=" + std::to_string(n));
  }
}

TEST(CudaDataMovement, ConcatenationEveryAxis) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kMoveTypes) {
    for (int64_t axis = 0; axis < 3; ++axis) {
      std::vector<std::vector<int64_t>> dims = {{2, 3, 4}, {2, 3, 4}, {2, 3, 4}};
      dims[1][axis] = 1;
      dims[2][axis] = 5;
      Network net;
      std::vector<Tensor*> xs;
      std::vector<TestTensor> in;
      for (size_t i = 0; i < dims.size(); ++i) {
        xs.push_back(net.add_input("x" + std::to_string(i), t, shape_of(dims[i])));
        in.push_back(random_of(t, dims[i], static_cast<uint32_t>(i + 1)));
      }
      net.mark_output(net.add_concatenation(xs, axis)->output(), "y");
      test::check_cuda_matches_cpu(net, in, label("concat axis " + std::to_string(axis), t));
    }
  }
  // Dynamic: [n, 3] ++ [n, 5] along axis 1 at two sizes.
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {kN, 3});
  Tensor* b = net.add_input("b", DataType::kF32, {kN, 5});
  net.mark_output(net.add_concatenation({a, b}, 1)->output(), "y");
  test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 1, 4, 200000)});
  for (int64_t n : {1, 100003}) {
    const std::vector<TestTensor> in = {random_of(DataType::kF32, {n, 3}, 1),
                                        random_of(DataType::kF32, {n, 5}, 2)};
    test::expect_matches_cpu(net, in, runner.run(in), "concat n=" + std::to_string(n));
  }
}

TEST(CudaDataMovement, SlicePositiveNegativeAndSymbolicStarts) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kMoveTypes) {
    Network net;
    Tensor* x = net.add_input("x", t, {6, 7, 9});
    net.mark_output(net.add_slice(x, {1, 0, 2}, {2, 4, 3}, {2, 2, 3})->output(), "a");
    net.mark_output(net.add_slice(x, {5, 6, 8}, {6, 3, 9}, {-1, -3, -1})->output(), "b");
    net.mark_output(net.add_slice(x, {0, 0, 0}, {6, 7, 9}, {1, 1, 1})->output(), "all");
    test::check_cuda_matches_cpu(net, {random_of(t, {6, 7, 9}, 3)}, label("slice", t));
  }
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {kN, 3});
  net.mark_output(net.add_slice(x, {kN - 2, 0}, {2, 3}, {1, 1})->output(), "tail");
  net.mark_output(net.add_slice(x, {kN - 1, 2}, {kN, 3}, {-1, -1})->output(), "reversed");
  test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 2, 8, 300000)});
  for (int64_t n : {2, 250001}) {
    const std::vector<TestTensor> in = {random_of(DataType::kF32, {n, 3}, 4)};
    test::expect_matches_cpu(net, in, runner.run(in), "slice n=" + std::to_string(n));
  }
}

TEST(CudaDataMovement, GatherEveryModeAndIndexType) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kMoveTypes) {
    for (DataType it : {DataType::kI32, DataType::kI64}) {
      const std::string what = label("gather", t) + " indices " + dtype_name(it);
      // default mode, axis 1 of [4, 5, inner] with [2, 6] indices: rows of 3 elements (moved
      // element by element), and of 2, 4 and 8 (moved in 4-, 8- or 16-byte units where their
      // bytes allow).
      for (int64_t inner : {3, 2, 4, 8}) {
        Network net;
        Tensor* d = net.add_input("data", t, {4, 5, inner});
        Tensor* i = net.add_input("indices", it, {2, 6});
        net.mark_output(net.add_gather(d, i, GatherParams{GatherMode::kDefault, 1, 0})->output(),
                        "y");
        test::check_cuda_matches_cpu(
            net, {random_of(t, {4, 5, inner}, 1), indices_of(it, {2, 6}, {5})},
            what + " default, rows of " + std::to_string(inner));
      }
      {  // element mode, axis 0 and the last axis
        for (int64_t axis : {0, 2}) {
          Network net;
          Tensor* d = net.add_input("data", t, {4, 5, 6});
          Tensor* i = net.add_input("indices", it, {3, 5, 2});
          net.mark_output(
              net.add_gather(d, i, GatherParams{GatherMode::kElement, axis, 0})->output(), "y");
          const int64_t bound = axis == 0 ? 4 : 6;
          test::check_cuda_matches_cpu(
              net, {random_of(t, {4, 5, 6}, 2), indices_of(it, {3, 5, 2}, {bound})},
              what + " element axis " + std::to_string(axis));
        }
      }
      {  // nd mode without and with batch dims
        struct Case {
          std::vector<int64_t> data, idx, bounds;
          int64_t batch;
        };
        for (const Case& c : {Case{{3, 4, 2}, {5, 2}, {3, 4}, 0}, Case{{2, 4, 3}, {2, 3, 1}, {4}, 1},
                              Case{{2, 3, 4}, {2, 2}, {2, 3}, 0}}) {
          Network net;
          Tensor* d = net.add_input("data", t, shape_of(c.data));
          Tensor* i = net.add_input("indices", it, shape_of(c.idx));
          net.mark_output(
              net.add_gather(d, i, GatherParams{GatherMode::kNd, 0, c.batch})->output(), "y");
          test::check_cuda_matches_cpu(net, {random_of(t, c.data, 3), indices_of(it, c.idx, c.bounds)},
                                       what + " nd data " + dims_to_string(c.data));
        }
      }
    }
  }
  // A large embedding-style gather.
  Network net;
  Tensor* d = net.add_input("table", DataType::kBF16, {1000, 257});
  Tensor* i = net.add_input("ids", DataType::kI64, {3, 999});
  net.mark_output(net.add_gather(d, i, GatherParams{})->output(), "y");
  test::check_cuda_matches_cpu(
      net, {random_of(DataType::kBF16, {1000, 257}, 9), indices_of(DataType::kI64, {3, 999}, {1000})},
      "large gather");
}

TEST(CudaDataMovement, GatherIndexOutOfRangeIsAnError) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (GatherMode mode : {GatherMode::kDefault, GatherMode::kElement, GatherMode::kNd}) {
    Network net;
    Tensor* d = net.add_input("data", DataType::kF32, {3, 3});
    const std::vector<int64_t> idx_dims =
        mode == GatherMode::kDefault ? std::vector<int64_t>{2} : std::vector<int64_t>{2, 1};
    Tensor* i = net.add_input("indices", DataType::kI64, shape_of(idx_dims));
    GatherParams p;
    p.mode = mode;
    net.mark_output(net.add_gather(d, i, p, "pick")->output(), "y");
    const TestTensor data = random_of(DataType::kF32, {3, 3}, 1);
    const TestTensor good = TestTensor::ints(DataType::kI64, idx_dims, {0, -3});
    test::CudaRunner runner(net, {data, good});
    for (int64_t bad : {3, -4}) {
      const TestTensor idx = TestTensor::ints(DataType::kI64, idx_dims, {0, bad});
      try {
        runner.run({data, idx});
        ADD_FAILURE() << "no error for index " << bad;
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("Gather 'pick'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
      }
    }
    // The context still works after the error.
    test::expect_matches_cpu(net, {data, good}, runner.run({data, good}), "after error");
  }
  // Constant indices are checked on the host copy (no kernel): in range they gather, out of
  // range they are the same error.
  for (int64_t bad : {1, 3, -4}) {
    Network net;
    Tensor* d = net.add_input("data", DataType::kF32, {3, 4});
    Tensor* i = net.add_constant(Weights::from_vector(DataType::kI32, {2},
                                                      std::vector<int32_t>{0, static_cast<int32_t>(bad)}))
                    ->output();
    net.mark_output(net.add_gather(d, i, GatherParams{}, "pick")->output(), "y");
    const TestTensor data = random_of(DataType::kF32, {3, 4}, 2);
    if (bad == 1) {
      test::check_cuda_matches_cpu(net, {data}, "constant indices");
      continue;
    }
    try {
      test::CudaRunner runner(net, {data});
      runner.run({data});
      ADD_FAILURE() << "no error for constant index " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------- Scatter

const std::vector<ScatterReduction> kScatterReductions = {
    ScatterReduction::kNone, ScatterReduction::kSum, ScatterReduction::kProd,
    ScatterReduction::kMax, ScatterReduction::kMin};

/// A scatter of updates [3, 4, 5] into data [4, 5, 6] along `axis` (every axis: the indices are
/// smaller than data on the other dims). Values in [-4, 4] keep float sums and products of the
/// few updates per destination exact to well inside the tolerance in any order (the device
/// combines them with atomics).
void check_scatter(DataType t, DataType it, int64_t axis, ScatterReduction r,
                   const TestTensor& idx, const std::string& what) {
  const std::vector<int64_t> data_dims = {4, 5, 6};
  const std::vector<int64_t> idx_dims = idx.dims;
  Network net;
  Tensor* d = net.add_input("data", t, shape_of(data_dims));
  Tensor* i = net.add_input("indices", it, shape_of(idx_dims));
  Tensor* u = net.add_input("updates", t, shape_of(idx_dims));
  net.mark_output(net.add_scatter(d, i, u, ScatterParams{axis, r})->output(), "y");
  const float lo = t == DataType::kBool ? 0.0f : (t == DataType::kU8 ? 0.0f : -4.0f);
  const float hi = t == DataType::kBool ? 2.0f : 4.0f;
  test::check_cuda_matches_cpu(net,
                               {TestTensor::random(t, data_dims, 21, lo, hi), idx,
                                TestTensor::random(t, idx_dims, 22, lo, hi)},
                               what + " axis " + std::to_string(axis) + " reduction " +
                                   std::to_string(static_cast<int>(r)));
}

TEST(CudaDataMovement, ScatterEveryReductionDtypeAndAxis) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<DataType> numeric = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                         DataType::kI8,  DataType::kU8,  DataType::kI32,
                                         DataType::kI64};
  const std::vector<int64_t> data_dims = {4, 5, 6};
  const std::vector<int64_t> idx_dims = {3, 4, 5};
  for (DataType t : numeric) {
    for (DataType it : {DataType::kI32, DataType::kI64}) {
      for (int64_t axis = 0; axis < 3; ++axis) {
        const int64_t bound = data_dims[axis];
        // A spread of positive and negative indices (some destinations hit more than once) ...
        const TestTensor spread = indices_of(it, idx_dims, {bound});
        // ... and every update of a line onto one destination (torch leaves the winner of
        // duplicates unspecified without a reduction; the device picks the last, as the CPU).
        const TestTensor same =
            TestTensor::ints(it, idx_dims, std::vector<int64_t>(60, axis == 1 ? -2 : 1));
        for (ScatterReduction r : kScatterReductions) {
          const std::string what = label("scatter", t) + " indices " + dtype_name(it);
          check_scatter(t, it, axis, r, spread, what + " spread");
          check_scatter(t, it, axis, r, same, what + " duplicates");
        }
      }
    }
  }
  // Bool: reduction none only.
  check_scatter(DataType::kBool, DataType::kI64, 1, ScatterReduction::kNone,
                indices_of(DataType::kI64, idx_dims, {5}), "scatter bool");
  // NaN propagates through max and min.
  for (ScatterReduction r : {ScatterReduction::kMax, ScatterReduction::kMin, ScatterReduction::kSum}) {
    Network net;
    Tensor* d = net.add_input("data", DataType::kF32, {2, 3});
    Tensor* i = net.add_input("indices", DataType::kI64, {2, 3});
    Tensor* u = net.add_input("updates", DataType::kF32, {2, 3});
    net.mark_output(net.add_scatter(d, i, u, ScatterParams{1, r})->output(), "y");
    const float nan = std::numeric_limits<float>::quiet_NaN();
    test::check_cuda_matches_cpu(
        net,
        {TestTensor::floats(DataType::kF32, {2, 3}, {1, nan, 3, 4, 5, 6}),
         TestTensor::ints(DataType::kI64, {2, 3}, {0, 0, 2, 1, 1, 1}),
         TestTensor::floats(DataType::kF32, {2, 3}, {nan, 2, -1, 7, nan, -7})},
        "scatter nan reduction " + std::to_string(static_cast<int>(r)));
  }
  // A large one: 100000 updates onto 1000 rows of 64 (many duplicates per destination).
  for (ScatterReduction r : {ScatterReduction::kNone, ScatterReduction::kSum, ScatterReduction::kMax}) {
    Network net;
    Tensor* d = net.add_input("data", DataType::kF32, {1000, 64});
    Tensor* i = net.add_input("indices", DataType::kI64, {1600, 64});
    Tensor* u = net.add_input("updates", DataType::kF32, {1600, 64});
    net.mark_output(net.add_scatter(d, i, u, ScatterParams{0, r})->output(), "y");
    test::check_cuda_matches_cpu(net,
                                 {TestTensor::random(DataType::kF32, {1000, 64}, 1, -1.0f, 1.0f),
                                  indices_of(DataType::kI64, {1600, 64}, {1000}),
                                  TestTensor::random(DataType::kF32, {1600, 64}, 2, -1.0f, 1.0f)},
                                 "large scatter reduction " + std::to_string(static_cast<int>(r)));
  }
}

TEST(CudaDataMovement, ScatterIndexOutOfRangeIsAnError) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (ScatterReduction r : {ScatterReduction::kNone, ScatterReduction::kSum}) {
    Network net;
    Tensor* d = net.add_input("data", DataType::kF32, {3, 3});
    Tensor* i = net.add_input("indices", DataType::kI64, {2, 1});
    Tensor* u = net.add_input("updates", DataType::kF32, {2, 1});
    net.mark_output(net.add_scatter(d, i, u, ScatterParams{0, r}, "put")->output(), "y");
    const TestTensor data = random_of(DataType::kF32, {3, 3}, 1);
    const TestTensor upd = random_of(DataType::kF32, {2, 1}, 2);
    const TestTensor good = TestTensor::ints(DataType::kI64, {2, 1}, {0, -3});
    test::CudaRunner runner(net, {data, good, upd});
    for (int64_t bad : {3, -4}) {
      const TestTensor idx = TestTensor::ints(DataType::kI64, {2, 1}, {0, bad});
      try {
        runner.run({data, idx, upd});
        ADD_FAILURE() << "no error for index " << bad;
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("Scatter 'put'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
      }
    }
    // The context still works after the error, through a captured graph too.
    test::expect_matches_cpu(net, {data, good, upd}, runner.run({data, good, upd}), "after error");
    test::expect_matches_cpu(net, {data, good, upd}, runner.run({data, good, upd}),
                             "after error (CUDA graph)");
  }
}

// ---------------------------------------------------------------- Resize

ResizeParams resize_params(ResizeMode mode, ResizeCoordinate coordinate, ResizeRounding rounding,
                           const std::vector<int64_t>& output, std::vector<double> scales = {}) {
  ResizeParams p;
  p.mode = mode;
  p.coordinate = coordinate;
  p.rounding = rounding;
  p.output = shape_of(output);
  p.scales = std::move(scales);
  return p;
}

void check_resize(DataType t, const std::vector<int64_t>& in, const ResizeParams& p,
                  const std::string& what) {
  Network net;
  Tensor* x = net.add_input("x", t, shape_of(in));
  net.mark_output(net.add_resize(x, p)->output(), "y");
  test::check_cuda_matches_cpu(
      net, {random_of(t, in, 7)},
      label(what + " mode " + std::to_string(static_cast<int>(p.mode)) + " coordinate " +
                std::to_string(static_cast<int>(p.coordinate)) + " rounding " +
                std::to_string(static_cast<int>(p.rounding)) + " " + dims_to_string(in) + " -> " +
                shape_to_string(p.output),
            t));
}

TEST(CudaDataMovement, ResizeNearestEveryCoordinateAndRounding) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<ResizeCoordinate> coordinates = {
      ResizeCoordinate::kAlignCorners, ResizeCoordinate::kHalfPixel, ResizeCoordinate::kAsymmetric};
  for (DataType t : kMoveTypes) {
    for (ResizeCoordinate c : coordinates) {
      for (ResizeRounding r : {ResizeRounding::kFloor, ResizeRounding::kHalfUp}) {
        // Up, down, doubled (torch's shortcut) and unchanged dims at once.
        check_resize(t, {2, 3, 5, 7}, resize_params(ResizeMode::kNearest, c, r, {2, 6, 3, 14}),
                     "resize");
        check_resize(t, {3, 4, 6}, resize_params(ResizeMode::kNearest, c, r, {5, 9, 6},
                                                 {1.7, 2.3, 1.0}),
                     "resize scales");
      }
    }
  }
}

TEST(CudaDataMovement, ResizeLinearAndCubicEveryCoordinate) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<ResizeCoordinate> coordinates = {
      ResizeCoordinate::kAlignCorners, ResizeCoordinate::kHalfPixel, ResizeCoordinate::kAsymmetric};
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    for (ResizeCoordinate c : coordinates) {
      const ResizeRounding fl = ResizeRounding::kFloor;
      // Linear: bilinear (up and down), trilinear, a leading dim only, and with scales.
      check_resize(t, {2, 3, 5, 7}, resize_params(ResizeMode::kLinear, c, fl, {2, 3, 9, 4}),
                   "resize");
      check_resize(t, {1, 2, 4, 5, 6}, resize_params(ResizeMode::kLinear, c, fl, {1, 2, 7, 3, 11}),
                   "resize");
      check_resize(t, {4, 5, 6}, resize_params(ResizeMode::kLinear, c, fl, {9, 5, 6}), "resize");
      // Bilinear over the middle dims (NHWC's H and W, channels inner), and from 1x1.
      check_resize(t, {2, 5, 7, 3}, resize_params(ResizeMode::kLinear, c, fl, {2, 9, 4, 3}),
                   "resize nhwc");
      check_resize(t, {2, 1, 1, 8}, resize_params(ResizeMode::kLinear, c, fl, {2, 6, 5, 8}),
                   "resize nhwc from 1x1");
      check_resize(t, {1, 3, 4, 6},
                   resize_params(ResizeMode::kLinear, c, fl, {1, 3, 7, 15}, {1.0, 1.0, 1.9, 2.5}),
                   "resize scales");
      // Cubic over the last two dims; with a scale that resamples a dim of unchanged size.
      check_resize(t, {2, 3, 5, 7}, resize_params(ResizeMode::kCubic, c, fl, {2, 3, 11, 4}),
                   "resize");
      check_resize(t, {1, 2, 4, 4},
                   resize_params(ResizeMode::kCubic, c, fl, {1, 2, 4, 8}, {1.0, 1.0, 1.5, 2.0}),
                   "resize scales");
    }
  }
  // Large: a 64-channel feature map upsampled 2x, bilinear and bicubic.
  for (ResizeMode m : {ResizeMode::kLinear, ResizeMode::kCubic}) {
    check_resize(DataType::kF16, {2, 64, 33, 47},
                 resize_params(m, ResizeCoordinate::kHalfPixel, ResizeRounding::kFloor,
                               {2, 64, 66, 94}),
                 "large resize");
  }
}

TEST(CudaDataMovement, PaddingEveryMode) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (PaddingMode mode : {PaddingMode::kConstant, PaddingMode::kReflect, PaddingMode::kReplicate,
                           PaddingMode::kCircular}) {
    for (DataType t : kMoveTypes) {
      Network net;
      Tensor* x = net.add_input("x", t, {2, 3, 5, 4});
      net.mark_output(
          net.add_padding(x, PaddingParams{mode, {0, 1, 3, 2}, {1, 0, 2, 3}, -1.5})->output(), "y");
      test::check_cuda_matches_cpu(net, {random_of(t, {2, 3, 5, 4}, 6)},
                                   label("pad mode " + std::to_string(static_cast<int>(mode)), t));
    }
  }
  // Dynamic and large: reflect-pad the last dim of [n, 1031].
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {kN, 1031});
  net.mark_output(
      net.add_padding(x, PaddingParams{PaddingMode::kReflect, {0, 5}, {0, 7}, 0.0})->output(), "y");
  test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 1, 8, 1000)});
  for (int64_t n : {1, 999}) {
    const std::vector<TestTensor> in = {random_of(DataType::kF32, {n, 1031}, 7)};
    test::expect_matches_cpu(net, in, runner.run(in), "pad n=" + std::to_string(n));
  }
}

TEST(CudaDataMovement, PaddingThroughAnInputPermutation) {
  // pad_conv_channels' Padding: an NCHW f16/bf16/f32 image read as NHWC with its channels
  // padded to 8 (the 16-byte-word kernel; a batch of 4 224x224 images and an odd small one,
  // C = 1 and 3), a channel pad at both ends (words too), every mode through another
  // permutation (the element kernel), and the space-to-depth view of NCHW and NHWC images
  // (input_shape + input_permutation) in 1-, 2- and 4-byte types, with an output that is not
  // whole words (the element kernel).
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<int64_t> to_nhwc = {0, 2, 3, 1};
  for (DataType t : {DataType::kF16, DataType::kBF16, DataType::kF32}) {
    for (const std::vector<int64_t>& dims : std::vector<std::vector<int64_t>>{
             {4, 3, 224, 224}, {3, 3, 7, 5}, {2, 1, 9, 11}}) {
      Network net;
      Tensor* x = net.add_input("x", t, Shape(dims.begin(), dims.end()));
      const PaddingParams p{PaddingMode::kConstant, {0, 0, 0, 0}, {0, 0, 0, 8 - dims[1]}, 0.0,
                            to_nhwc};
      net.mark_output(net.add_padding(x, p)->output(), "y");
      test::check_cuda_matches_cpu(net, {random_of(t, dims, 9)},
                                   label("NCHW image to 8 NHWC channels " +
                                             std::to_string(dims[0]) + "x" + std::to_string(dims[1]),
                                         t));
    }
    Network front;
    Tensor* x = front.add_input("x", t, {2, 3, 5, 4});
    front.mark_output(front.add_padding(x, PaddingParams{PaddingMode::kConstant, {0, 0, 0, 2},
                                                         {0, 0, 0, 3}, 1.0, to_nhwc})
                          ->output(),
                      "y");
    test::check_cuda_matches_cpu(front, {random_of(t, {2, 3, 5, 4}, 10)},
                                 label("channel pad at both ends", t));
  }
  for (PaddingMode mode : {PaddingMode::kConstant, PaddingMode::kReflect, PaddingMode::kReplicate,
                           PaddingMode::kCircular}) {
    Network net;
    Tensor* x = net.add_input("x", DataType::kF16, {3, 4, 5});
    net.mark_output(
        net.add_padding(x, PaddingParams{mode, {1, 0, 2}, {2, 2, 0}, -2.0, {2, 0, 1}})->output(),
        "y");
    test::check_cuda_matches_cpu(net, {random_of(DataType::kF16, {3, 4, 5}, 11)},
                                 label("permuted pad mode " + std::to_string(static_cast<int>(mode)),
                                       DataType::kF16));
  }
  // 16-bit NCHW images as blocks run in space_to_depth_kernel (4 channels out, and 2 for C = 1),
  // the other types and the NHWC image in the word kernel.
  struct Blocks {
    std::vector<int64_t> dims;
    PaddingParams p;
    const char* what;
  };
  const std::vector<Blocks> blocks = {
      {{4, 3, 224, 224},  // ResNet's stem: [N, 3, 224, 224] -> [N, 115, 115, 2, 2, 4]
       {PaddingMode::kConstant, {0, 2, 2, 0, 0, 0}, {0, 1, 1, 0, 0, 1}, 0.0, {0, 2, 4, 3, 5, 1},
        {-1, 3, 112, 2, 112, 2}},
       "NCHW image as 2x2 blocks of 4 channels"},
      {{2, 1, 10, 14},  // C = 1: [2, 7, 9, 2, 2, 2], uneven block padding, fill 0.5
       {PaddingMode::kConstant, {0, 1, 0, 0, 0, 0}, {0, 1, 2, 0, 0, 1}, 0.5, {0, 2, 4, 3, 5, 1},
        {-1, 1, 5, 2, 7, 2}},
       "NCHW image as 2x2 blocks of 2 channels"},
      {{2, 10, 12, 3},
       {PaddingMode::kConstant, {0, 1, 0, 0, 0, 0}, {0, 0, 1, 0, 0, 1}, 0.0, {0, 1, 3, 2, 4, 5},
        {-1, 5, 2, 6, 2, 3}},
       "NHWC image as 2x2 blocks"}};
  for (DataType t : {DataType::kF16, DataType::kBF16, DataType::kF32, DataType::kI8}) {
    for (const Blocks& b : blocks) {
      Network net;
      Tensor* x = net.add_input("x", t, Shape(b.dims.begin(), b.dims.end()));
      net.mark_output(net.add_padding(x, b.p)->output(), "y");
      test::check_cuda_matches_cpu(net, {random_of(t, b.dims, 12)}, label(b.what, t));
    }
  }
  Network odd;  // 3 x 3 x 3 f16 outputs: not whole 16-byte words
  Tensor* x = odd.add_input("x", DataType::kF16, {3, 6});
  odd.mark_output(odd.add_padding(x, PaddingParams{PaddingMode::kConstant, {0, 0, 0}, {0, 1, 0},
                                                   0.5, {1, 0, 2}, {2, 3, 3}})
                      ->output(),
                  "y");
  test::check_cuda_matches_cpu(odd, {random_of(DataType::kF16, {3, 6}, 13)},
                               label("a view with an output of part words", DataType::kF16));
}

TEST(CudaDataMovement, FillConstantAndArange) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<DataType> all = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                     DataType::kI8,  DataType::kU8,  DataType::kI32,
                                     DataType::kI64, DataType::kBool};
  for (DataType t : all) {
    // The fill shape follows the input's symbol, so the builder cannot fold it.
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {kN});
    FillParams c;
    c.op = FillOp::kConstant;
    c.shape = {kN, 7};
    c.dtype = t;
    c.value = -3.75;
    FillParams r;
    r.op = FillOp::kArange;
    r.shape = {kN * 50};
    r.dtype = t;
    r.start = -3.0;
    r.delta = 2.0;
    FillParams f = r;
    f.start = 0.5;
    f.delta = 0.25;
    net.mark_output(net.add_identity(x)->output(), "x_copy");
    net.mark_output(net.add_fill(c)->output(), "constant");
    if (t != DataType::kBool) {  // arange does not create bool tensors
      net.mark_output(net.add_fill(r)->output(), "arange_int");
      net.mark_output(net.add_fill(f)->output(), "arange_frac");
    }
    test::CudaRunner runner(net, {}, {OptimizationProfile().set_range("n", 1, 8, 100000)});
    for (int64_t n : {3, 90001}) {
      const std::vector<TestTensor> in = {random_of(DataType::kF32, {n}, 1)};
      test::expect_matches_cpu(net, in, runner.run(in),
                               label("fill n=" + std::to_string(n), t));
    }
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
