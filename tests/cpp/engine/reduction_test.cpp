// Tests of the reduction family (Reduce, TopK, SoftMax, Normalization, Cumulative) against naive
// reference loops written here. References compute in double from the already-rounded inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

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

/// Row-major multi-index of flat index i.
std::vector<int64_t> unravel(int64_t i, const std::vector<int64_t>& dims) {
  std::vector<int64_t> idx(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    idx[d] = i % dims[d];
    i /= dims[d];
  }
  return idx;
}

int64_t ravel(const std::vector<int64_t>& idx, const std::vector<int64_t>& dims) {
  int64_t i = 0;
  for (size_t d = 0; d < dims.size(); ++d) i = i * dims[d] + idx[d];
  return i;
}

/// Wraps v to what storing it as `t` and reading it back gives (two's complement).
int64_t wrap_to(DataType t, int64_t v) {
  switch (t) {
    case DataType::kI8: return static_cast<int8_t>(v);
    case DataType::kU8: return static_cast<uint8_t>(v);
    case DataType::kI32: return static_cast<int32_t>(v);
    default: return v;
  }
}

int64_t wrapping_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
int64_t wrapping_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

const char* reduce_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kProd: return "prod";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kAvg: return "avg";
  }
  return "?";
}

// ---------------------------------------------------------------- Reduce

/// Output dims of a reduction (keep_dims keeps reduced axes as 1).
std::vector<int64_t> reduced_dims(const std::vector<int64_t>& dims, const std::vector<int64_t>& axes,
                                  bool keep_dims) {
  std::vector<int64_t> out;
  for (size_t d = 0; d < dims.size(); ++d) {
    const bool r = std::find(axes.begin(), axes.end(), static_cast<int64_t>(d)) != axes.end();
    if (!r) out.push_back(dims[d]);
    else if (keep_dims) out.push_back(1);
  }
  return out;
}

/// Maps each input element to its output element (keep_dims layout; same linear order).
std::vector<int64_t> reduce_targets(const std::vector<int64_t>& dims, const std::vector<int64_t>& axes) {
  const std::vector<int64_t> out_dims = reduced_dims(dims, axes, true);
  std::vector<int64_t> target(static_cast<size_t>(dims_numel(dims)));
  for (int64_t i = 0; i < dims_numel(dims); ++i) {
    std::vector<int64_t> idx = unravel(i, dims);
    for (int64_t a : axes) idx[a] = 0;
    target[i] = ravel(idx, out_dims);
  }
  return target;
}

std::vector<float> reduce_ref_float(const std::vector<float>& x, const std::vector<int64_t>& dims,
                                    ReduceOp op, const std::vector<int64_t>& axes) {
  const int64_t n_out = dims_numel(reduced_dims(dims, axes, true));
  const std::vector<int64_t> target = reduce_targets(dims, axes);
  int64_t count = 1;
  for (int64_t a : axes) count *= dims[a];
  std::vector<double> acc(static_cast<size_t>(n_out));
  const double init = op == ReduceOp::kProd  ? 1.0
                      : op == ReduceOp::kMax ? -INFINITY
                      : op == ReduceOp::kMin ? INFINITY
                                             : 0.0;
  std::fill(acc.begin(), acc.end(), init);
  for (size_t i = 0; i < x.size(); ++i) {
    double& a = acc[target[i]];
    const double v = x[i];
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: a += v; break;
      case ReduceOp::kProd: a *= v; break;
      case ReduceOp::kMax: a = (std::isnan(a) || std::isnan(v)) ? NAN : std::max(a, v); break;
      case ReduceOp::kMin: a = (std::isnan(a) || std::isnan(v)) ? NAN : std::min(a, v); break;
    }
  }
  std::vector<float> out(acc.size());
  for (size_t i = 0; i < acc.size(); ++i) {
    out[i] = static_cast<float>(op == ReduceOp::kAvg ? acc[i] / static_cast<double>(count) : acc[i]);
  }
  return out;
}

std::vector<int64_t> reduce_ref_int(const std::vector<int64_t>& x, const std::vector<int64_t>& dims,
                                    ReduceOp op, const std::vector<int64_t>& axes, DataType t) {
  const int64_t n_out = dims_numel(reduced_dims(dims, axes, true));
  const std::vector<int64_t> target = reduce_targets(dims, axes);
  const int64_t init = op == ReduceOp::kProd  ? 1
                       : op == ReduceOp::kMax ? std::numeric_limits<int64_t>::min()
                       : op == ReduceOp::kMin ? std::numeric_limits<int64_t>::max()
                                              : 0;
  std::vector<int64_t> acc(static_cast<size_t>(n_out), init);
  for (size_t i = 0; i < x.size(); ++i) {
    int64_t& a = acc[target[i]];
    switch (op) {
      case ReduceOp::kSum: a = wrapping_add(a, x[i]); break;
      case ReduceOp::kProd: a = wrapping_mul(a, x[i]); break;
      case ReduceOp::kMax: a = std::max(a, x[i]); break;
      case ReduceOp::kMin: a = std::min(a, x[i]); break;
      case ReduceOp::kAvg: break;
    }
  }
  for (int64_t& a : acc) a = wrap_to(t, a);
  return acc;
}

/// Builds x -> reduce -> output and runs it (through the reference executor only when
/// `direct`).
TestTensor run_reduce(const TestTensor& x, ReduceOp op, const std::vector<int64_t>& axes,
                      bool keep_dims, bool direct = false) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_from_dims(x.dims));
  net.mark_output(net.add_reduce(in, op, axes, keep_dims, "reduce")->output());
  return (direct ? test::run_network_direct(net, {x}) : test::run_network(net, {x})).at(0);
}

TEST(ReduceLayer, FloatOpsOverAxisSets) {
  const std::vector<int64_t> dims = {2, 3, 4, 5};
  const std::vector<std::vector<int64_t>> axis_sets = {{0},    {1},    {3},    {0, 2},      {1, 3},
                                                       {0, 3}, {1, 2}, {2, 3}, {0, 1, 2, 3}, {0, 1, 3}};
  const ReduceOp ops[] = {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMax, ReduceOp::kMin,
                          ReduceOp::kAvg};
  uint32_t seed = 1;
  for (DataType t : kFloatTypes) {
    for (ReduceOp op : ops) {
      // prod over up to 120 elements: keep factors near 1 so results stay in range.
      const TestTensor x = op == ReduceOp::kProd ? TestTensor::random(t, dims, seed++, 0.7f, 1.4f)
                                                 : TestTensor::random(t, dims, seed++, -2.0f, 2.0f);
      for (const auto& axes : axis_sets) {
        for (bool keep : {false, true}) {
          const std::string what = std::string(dtype_name(t)) + " " + reduce_name(op) + " axes " +
                                   dims_to_string(axes) + (keep ? " keep_dims" : "");
          const TestTensor y = run_reduce(x, op, axes, keep);
          EXPECT_EQ(y.dims, reduced_dims(dims, axes, keep)) << what;
          EXPECT_EQ(y.dtype, t) << what;
          test::expect_close(y, reduce_ref_float(x.to_floats(), dims, op, axes), t, what);
        }
      }
    }
  }
}

TEST(ReduceLayer, IntegerOpsKeepDtype) {
  const std::vector<int64_t> dims = {3, 4, 5};
  const std::vector<std::vector<int64_t>> axis_sets = {{1}, {0, 2}, {2}, {0, 1, 2}};
  const ReduceOp ops[] = {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMax, ReduceOp::kMin};
  uint32_t seed = 100;
  for (DataType t : kIntTypes) {
    const float lo = t == DataType::kU8 ? 0.0f : -9.0f;
    const TestTensor x = TestTensor::random(t, dims, seed++, lo, 10.0f);
    for (ReduceOp op : ops) {
      for (const auto& axes : axis_sets) {
        for (bool keep : {false, true}) {
          const std::string what = std::string(dtype_name(t)) + " " + reduce_name(op) + " axes " +
                                   dims_to_string(axes);
          const TestTensor y = run_reduce(x, op, axes, keep);
          EXPECT_EQ(y.dtype, t) << what;
          EXPECT_EQ(y.dims, reduced_dims(dims, axes, keep)) << what;
          test::expect_equal_ints(y, reduce_ref_int(x.to_ints(), dims, op, axes, t), what);
        }
      }
    }
  }
}

TEST(ReduceLayer, InterleavedAxesOfRankFive) {
  // Three separate reduced runs with and without a trailing kept run.
  const std::vector<int64_t> dims = {2, 3, 4, 3, 5};
  const TestTensor x = TestTensor::random(DataType::kF32, dims, 50);
  const TestTensor xi = TestTensor::random(DataType::kI64, dims, 51, -50.0f, 50.0f);
  for (const std::vector<int64_t>& axes : {std::vector<int64_t>{0, 2, 4}, std::vector<int64_t>{1, 3},
                                           std::vector<int64_t>{0, 2}, std::vector<int64_t>{0, 1, 3, 4}}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kAvg}) {
      const std::string what = std::string(reduce_name(op)) + " axes " + dims_to_string(axes);
      test::expect_close(run_reduce(x, op, axes, true), reduce_ref_float(x.to_floats(), dims, op, axes),
                         DataType::kF32, what);
      if (op == ReduceOp::kAvg) continue;
      test::expect_equal_ints(run_reduce(xi, op, axes, false),
                              reduce_ref_int(xi.to_ints(), dims, op, axes, DataType::kI64), "i64 " + what);
    }
  }
}

TEST(ReduceLayer, IntegerSumWrapsLikeTheInputType) {
  const TestTensor x = TestTensor::ints(DataType::kI8, {2, 2}, {100, 100, -100, -100});
  test::expect_equal_ints(run_reduce(x, ReduceOp::kSum, {1}, false), {-56, 56}, "i8 sum wraps");
  const TestTensor big = TestTensor::ints(DataType::kI64, {2}, {std::numeric_limits<int64_t>::max(), 1});
  test::expect_equal_ints(run_reduce(big, ReduceOp::kSum, {0}, false),
                          {std::numeric_limits<int64_t>::min()}, "i64 sum wraps");
}

TEST(ReduceLayer, LargeReductionsStayAccurate) {
  // A long contiguous row (one output) and a strided middle-axis reduction large enough to be
  // split across threads.
  const TestTensor row = TestTensor::random(DataType::kF32, {1, 200000}, 7, 0.0f, 1.0f);
  test::expect_close(run_reduce(row, ReduceOp::kSum, {1}, false),
                     reduce_ref_float(row.to_floats(), row.dims, ReduceOp::kSum, {1}),
                     DataType::kF32, "sum of 200000");
  test::expect_close(run_reduce(row, ReduceOp::kAvg, {0, 1}, true),
                     reduce_ref_float(row.to_floats(), row.dims, ReduceOp::kAvg, {0, 1}),
                     DataType::kF32, "avg of 200000");
  const TestTensor mid = TestTensor::random(DataType::kF32, {64, 300, 16}, 8);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
    test::expect_close(run_reduce(mid, op, {1}, false),
                       reduce_ref_float(mid.to_floats(), mid.dims, op, {1}), DataType::kF32,
                       std::string("middle axis ") + reduce_name(op));
  }
}

TEST(ReduceLayer, MaxMinPropagateNanAndKeepInfinities) {
  const float inf = std::numeric_limits<float>::infinity();
  const TestTensor x =
      TestTensor::floats(DataType::kF32, {3, 3}, {1, NAN, 3, -inf, -inf, -inf, inf, 2, inf});
  test::expect_close(run_reduce(x, ReduceOp::kMax, {1}, false), {NAN, -inf, inf}, DataType::kF32, "max");
  test::expect_close(run_reduce(x, ReduceOp::kMin, {1}, false), {NAN, -inf, 2}, DataType::kF32, "min");
}

TEST(ReduceLayer, SizeOneAxesAndRankOne) {
  const TestTensor x = TestTensor::random(DataType::kF32, {1, 4, 1}, 11);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
    test::expect_close(run_reduce(x, op, {0, 2}, false), x.to_floats(), DataType::kF32,
                       std::string("size-1 axes ") + reduce_name(op));
  }
  const TestTensor v = TestTensor::random(DataType::kF16, {7}, 12);
  const TestTensor y = run_reduce(v, ReduceOp::kSum, {0}, false);
  EXPECT_TRUE(y.dims.empty());
  test::expect_close(y, reduce_ref_float(v.to_floats(), v.dims, ReduceOp::kSum, {0}), DataType::kF16,
                     "rank-1 full sum");
}

TEST(ReduceLayer, EmptyReductionGivesTheIdentity) {
  // torch: sum of nothing is 0, prod is 1, mean is NaN. Run directly: the runtime refuses the
  // null address of an empty input buffer.
  const TestTensor x = TestTensor::floats(DataType::kF32, {2, 0}, {});
  test::expect_close(run_reduce(x, ReduceOp::kSum, {1}, false, true), {0, 0}, DataType::kF32, "empty sum");
  test::expect_close(run_reduce(x, ReduceOp::kProd, {1}, true, true), {1, 1}, DataType::kF32, "empty prod");
  test::expect_close(run_reduce(x, ReduceOp::kAvg, {1}, false, true), {NAN, NAN}, DataType::kF32, "empty avg");
  const TestTensor xi = TestTensor::ints(DataType::kI32, {0, 3}, {});
  test::expect_equal_ints(run_reduce(xi, ReduceOp::kProd, {0}, false, true), {1, 1, 1}, "empty int prod");
  // max/min have no identity: a constant empty dim fails when the layer is added.
  Network net;
  Tensor* in = net.add_input("x", DataType::kF32, {2, 0});
  expect_error([&] { net.add_reduce(in, ReduceOp::kMax, {1}, false, "max_empty"); },
               {"Reduce 'max_empty'", "empty dim"});
}

// ---------------------------------------------------------------- TopK

/// Reference TopK: a stable sort by value (NaN largest) keeps lower indices first among ties.
void topk_ref(const std::vector<double>& x, const std::vector<int64_t>& dims, TopKOp op, int64_t k,
              int64_t axis, std::vector<double>& values, std::vector<int64_t>& indices) {
  std::vector<int64_t> out_dims = dims;
  out_dims[axis] = k;
  values.assign(static_cast<size_t>(dims_numel(out_dims)), 0.0);
  indices.assign(values.size(), 0);
  const auto before = [op](double a, double b) {
    if (op == TopKOp::kMax) return std::isnan(a) ? !std::isnan(b) : (!std::isnan(b) && a > b);
    return !std::isnan(a) && (std::isnan(b) || a < b);
  };
  for (int64_t o = 0; o < dims_numel(out_dims); ++o) {
    std::vector<int64_t> idx = unravel(o, out_dims);
    if (idx[axis] != 0) continue;
    std::vector<std::pair<double, int64_t>> row;
    for (int64_t j = 0; j < dims[axis]; ++j) {
      idx[axis] = j;
      row.emplace_back(x[ravel(idx, dims)], j);
    }
    std::stable_sort(row.begin(), row.end(),
                     [&](const auto& a, const auto& b) { return before(a.first, b.first); });
    for (int64_t t = 0; t < k; ++t) {
      idx[axis] = t;
      values[ravel(idx, out_dims)] = row[t].first;
      indices[ravel(idx, out_dims)] = row[t].second;
    }
  }
}

/// Runs TopK and checks both outputs against the reference.
void check_topk(const TestTensor& x, TopKOp op, int64_t k, int64_t axis, DataType index_dtype,
                const std::string& what) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_from_dims(x.dims));
  TopKParams p;
  p.op = op;
  p.k = k;
  p.axis = axis;
  p.index_dtype = index_dtype;
  Layer* l = net.add_layer(p, {in}, "topk");
  net.mark_output(l->output(0));
  net.mark_output(l->output(1));
  const auto outs = test::run_network(net, {x});
  std::vector<double> xs;
  if (dtype_is_float(x.dtype)) {
    for (float v : x.to_floats()) xs.push_back(v);
  } else {
    for (int64_t v : x.to_ints()) xs.push_back(static_cast<double>(v));
  }
  std::vector<double> values;
  std::vector<int64_t> indices;
  topk_ref(xs, x.dims, op, k, axis, values, indices);
  std::vector<int64_t> out_dims = x.dims;
  out_dims[axis] = k;
  EXPECT_EQ(outs[0].dims, out_dims) << what;
  EXPECT_EQ(outs[1].dims, out_dims) << what;
  EXPECT_EQ(outs[0].dtype, x.dtype) << what;
  EXPECT_EQ(outs[1].dtype, index_dtype) << what;
  if (dtype_is_float(x.dtype)) {
    // Values are copies of inputs, so they match exactly.
    const std::vector<float> got = outs[0].to_floats();
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_TRUE(got[i] == values[i] || (std::isnan(got[i]) && std::isnan(values[i])))
          << what << ": value " << i << " is " << got[i] << ", expected " << values[i];
    }
  } else {
    std::vector<int64_t> iv(values.begin(), values.end());
    test::expect_equal_ints(outs[0], iv, what + " values");
  }
  test::expect_equal_ints(outs[1], indices, what + " indices");
}

TEST(TopKLayer, MaxMinOverEveryAxisAndK) {
  const std::vector<int64_t> dims = {3, 5, 4};
  uint32_t seed = 200;
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kBF16, DataType::kI32,
                     DataType::kI8, DataType::kI64}) {
    // Integers in [-3, 3) tie often, exercising the lower-index-first rule.
    const TestTensor x = dtype_is_float(t) ? TestTensor::random(t, dims, seed++)
                                           : TestTensor::random(t, dims, seed++, -3.0f, 3.0f);
    for (int64_t axis = 0; axis < 3; ++axis) {
      for (int64_t k : {int64_t{1}, int64_t{2}, dims[axis]}) {
        for (TopKOp op : {TopKOp::kMax, TopKOp::kMin}) {
          for (DataType idx : {DataType::kI64, DataType::kI32}) {
            check_topk(x, op, k, axis, idx,
                       std::string(dtype_name(t)) + (op == TopKOp::kMax ? " max" : " min") +
                           " k=" + std::to_string(k) + " axis " + std::to_string(axis) + " " +
                           dtype_name(idx));
          }
        }
      }
    }
  }
}

TEST(TopKLayer, TiesKeepLowerIndexFirst) {
  const TestTensor x = TestTensor::floats(DataType::kF32, {2, 6}, {1, 3, 3, 0, 3, 1,  //
                                                                   2, 2, 2, 2, 2, 2});
  check_topk(x, TopKOp::kMax, 4, 1, DataType::kI64, "ties max");
  check_topk(x, TopKOp::kMin, 4, 1, DataType::kI64, "ties min");
  check_topk(x, TopKOp::kMax, 6, 1, DataType::kI32, "ties k=dim");

  Network net;
  Tensor* in = net.add_input("x", DataType::kF32, {2, 6});
  Layer* l = net.add_topk(in, TopKOp::kMax, 3, 1, "topk");
  net.mark_output(l->output(0));
  net.mark_output(l->output(1));
  const auto outs = test::run_network(net, {x});
  test::expect_equal_ints(outs[1], {1, 2, 4, 0, 1, 2}, "explicit tie order");
}

TEST(TopKLayer, ArgMaxArgMinWithTiesAndNan) {
  // ArgMax/ArgMin are TopK with k = 1; the first of equal values wins, NaN counts as largest.
  const TestTensor x = TestTensor::floats(DataType::kF32, {3, 4}, {5, 1, 5, 1,  //
                                                                   -2, -7, 0, -7,  //
                                                                   1, NAN, 9, NAN});
  for (TopKOp op : {TopKOp::kMax, TopKOp::kMin}) {
    Network net;
    Tensor* in = net.add_input("x", DataType::kF32, {3, 4});
    Layer* l = net.add_topk(in, op, 1, 1, "arg");
    net.mark_output(l->output(1));
    const auto outs = test::run_network(net, {x});
    EXPECT_EQ(outs[0].dims, (std::vector<int64_t>{3, 1}));
    test::expect_equal_ints(outs[0], op == TopKOp::kMax ? std::vector<int64_t>{0, 2, 1}
                                                        : std::vector<int64_t>{1, 1, 0},
                            op == TopKOp::kMax ? "argmax" : "argmin");
  }
  check_topk(x, TopKOp::kMax, 3, 1, DataType::kI64, "nan sorts first for max");
  check_topk(x, TopKOp::kMin, 4, 1, DataType::kI64, "nan sorts last for min");
}

TEST(TopKLayer, LongRowsAcrossThreads) {
  const TestTensor x = TestTensor::random(DataType::kF32, {96, 1000}, 210);
  check_topk(x, TopKOp::kMax, 5, 1, DataType::kI64, "long rows k=5");
  check_topk(x, TopKOp::kMin, 1, 1, DataType::kI32, "long rows argmin");
  const TestTensor cols = TestTensor::random(DataType::kBF16, {500, 70}, 211);
  check_topk(cols, TopKOp::kMax, 3, 0, DataType::kI64, "strided axis 0");
}

// ---------------------------------------------------------------- SoftMax

std::vector<float> softmax_ref(const std::vector<float>& x, const std::vector<int64_t>& dims,
                               int64_t axis, bool log) {
  std::vector<float> out(x.size());
  for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i) {
    std::vector<int64_t> idx = unravel(i, dims);
    if (idx[axis] != 0) continue;
    double m = -INFINITY;
    for (int64_t j = 0; j < dims[axis]; ++j) {
      idx[axis] = j;
      m = std::max<double>(m, x[ravel(idx, dims)]);
    }
    double sum = 0;
    for (int64_t j = 0; j < dims[axis]; ++j) {
      idx[axis] = j;
      sum += std::exp(x[ravel(idx, dims)] - m);
    }
    for (int64_t j = 0; j < dims[axis]; ++j) {
      idx[axis] = j;
      const double s = x[ravel(idx, dims)] - m;
      out[ravel(idx, dims)] = static_cast<float>(log ? s - std::log(sum) : std::exp(s) / sum);
    }
  }
  return out;
}

TestTensor run_softmax(const TestTensor& x, int64_t axis, bool log) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_from_dims(x.dims));
  net.mark_output(net.add_softmax(in, axis, log, "softmax")->output());
  return test::run_network(net, {x}).at(0);
}

TEST(SoftMaxLayer, EveryAxisSoftmaxAndLog) {
  const std::vector<int64_t> dims = {2, 3, 4, 5};
  uint32_t seed = 300;
  for (DataType t : kFloatTypes) {
    const TestTensor x = TestTensor::random(t, dims, seed++, -4.0f, 4.0f);
    for (int64_t axis = 0; axis < 4; ++axis) {
      for (bool log : {false, true}) {
        const std::string what = std::string(dtype_name(t)) + (log ? " log_softmax" : " softmax") +
                                 " axis " + std::to_string(axis);
        const TestTensor y = run_softmax(x, axis, log);
        EXPECT_EQ(y.dims, dims) << what;
        test::expect_close(y, softmax_ref(x.to_floats(), dims, axis, log), t, what);
      }
    }
  }
}

TEST(SoftMaxLayer, LargeLogitsAreStable) {
  // exp(1000) overflows f32: only a max-shifted softmax gets these right.
  const TestTensor x = TestTensor::floats(DataType::kF32, {2, 3}, {1000, 999, 998, -1000, -1001, -1e4});
  for (bool log : {false, true}) {
    const TestTensor y = run_softmax(x, 1, log);
    test::expect_close(y, softmax_ref(x.to_floats(), x.dims, 1, log), DataType::kF32,
                       log ? "stable log_softmax" : "stable softmax");
  }
}

TEST(SoftMaxLayer, ZeroMaskedRowsGivesZerosForAllMinusInfinityRows) {
  const float inf = std::numeric_limits<float>::infinity();
  // rows of [3, 4] along axis 1, and the same data along axis 0 (a strided axis)
  const TestTensor x = TestTensor::floats(DataType::kF32, {3, 4},
                                          {-inf, -inf, -inf, -inf, 0, 1, -inf, 2, 1, 1, 1, 1});
  for (int64_t axis : {0, 1}) {
    Network net;
    Tensor* in = net.add_input("x", DataType::kF32, {3, 4});
    SoftMaxParams p;
    p.axis = axis;
    p.zero_masked_rows = true;
    net.mark_output(net.add_layer(p, {in}, "softmax")->output());
    const TestTensor y = test::run_network(net, {x}).at(0);
    std::vector<float> ref = softmax_ref(x.to_floats(), x.dims, axis, false);
    if (axis == 1) {
      for (int j = 0; j < 4; ++j) ref[j] = 0.0f;  // the all -inf row; NaN without the flag
    }
    test::expect_close(y, ref, DataType::kF32, "zero_masked_rows axis " + std::to_string(axis));
  }
}

TEST(SoftMaxLayer, LongRowsAndWideInnerAcrossThreads) {
  const TestTensor rows = TestTensor::random(DataType::kF32, {64, 3000}, 310, -5.0f, 5.0f);
  test::expect_close(run_softmax(rows, 1, false), softmax_ref(rows.to_floats(), rows.dims, 1, false),
                     DataType::kF32, "softmax long rows");
  const TestTensor cols = TestTensor::random(DataType::kF16, {2, 50, 4000}, 311, -5.0f, 5.0f);
  test::expect_close(run_softmax(cols, 1, true), softmax_ref(cols.to_floats(), cols.dims, 1, true),
                     DataType::kF16, "log_softmax strided axis");
}

// ---------------------------------------------------------------- Normalization

/// Reference normalization over blocks: `group_of(i)` names the block of element i and
/// `param_of(i)` its scale/bias index.
std::vector<float> norm_ref(const std::vector<float>& x, const std::vector<int64_t>& group_of,
                            int64_t num_blocks, const std::vector<int64_t>& param_of,
                            const std::vector<float>* scale, const std::vector<float>* bias,
                            double eps, bool rms = false) {
  std::vector<double> sum(num_blocks, 0.0), sq(num_blocks, 0.0), cnt(num_blocks, 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    if (!rms) sum[group_of[i]] += x[i];  // an RMS norm: mean 0
    cnt[group_of[i]] += 1;
  }
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = x[i] - sum[group_of[i]] / cnt[group_of[i]];
    sq[group_of[i]] += d * d;
  }
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const int64_t g = group_of[i];
    const double mean = sum[g] / cnt[g], var = sq[g] / cnt[g];
    double r = (x[i] - mean) / std::sqrt(var + eps);
    if (scale) r *= (*scale)[param_of[i]];
    if (bias) r += (*bias)[param_of[i]];
    out[i] = static_cast<float>(r);
  }
  return out;
}

struct NormCase {
  NormalizationParams params;
  bool with_scale;
  bool with_bias;
};

/// Runs a normalization with optional scale/bias network inputs; checks against norm_ref.
void check_norm(const TestTensor& x, const NormCase& c, const std::string& what) {
  const NormalizationParams& p = c.params;
  const std::vector<int64_t>& dims = x.dims;
  std::vector<int64_t> param_dims;
  std::vector<int64_t> group_of(static_cast<size_t>(x.numel())), param_of(group_of.size());
  int64_t num_blocks = 0;
  if (p.type == NormalizationType::kLayer || p.type == NormalizationType::kRms) {
    param_dims.assign(dims.begin() + p.axis, dims.end());
    const int64_t row = dims_numel(param_dims);
    num_blocks = x.numel() / row;
    for (int64_t i = 0; i < x.numel(); ++i) {
      group_of[i] = i / row;
      param_of[i] = i % row;
    }
  } else {
    const int64_t c_dim = dims[1];
    const int64_t groups = p.type == NormalizationType::kGroup ? p.num_groups : c_dim;
    const int64_t spatial = x.numel() / (dims[0] * c_dim);
    param_dims = {c_dim};
    num_blocks = dims[0] * groups;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t n = i / (c_dim * spatial), ch = (i / spatial) % c_dim;
      group_of[i] = n * groups + ch / (c_dim / groups);
      param_of[i] = ch;
    }
  }
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_from_dims(dims));
  std::vector<TestTensor> inputs = {x};
  Tensor* scale = nullptr;
  Tensor* bias = nullptr;
  if (c.with_scale) {
    scale = net.add_input("scale", x.dtype, shape_from_dims(param_dims));
    inputs.push_back(TestTensor::random(x.dtype, param_dims, 400, 0.5f, 2.0f));
  }
  if (c.with_bias) {
    bias = net.add_input("bias", x.dtype, shape_from_dims(param_dims));
    inputs.push_back(TestTensor::random(x.dtype, param_dims, 401));
  }
  net.mark_output(net.add_normalization(in, scale, bias, p, "norm")->output());
  const TestTensor y = test::run_network(net, inputs).at(0);
  EXPECT_EQ(y.dims, dims) << what;
  const std::vector<float> s = c.with_scale ? inputs[1].to_floats() : std::vector<float>{};
  const std::vector<float> b = c.with_bias ? inputs.back().to_floats() : std::vector<float>{};
  test::expect_close(y,
                     norm_ref(x.to_floats(), group_of, num_blocks, param_of,
                              c.with_scale ? &s : nullptr, c.with_bias ? &b : nullptr, p.epsilon,
                              p.type == NormalizationType::kRms),
                     x.dtype, what);
}

TEST(NormalizationLayer, LayerAndRmsNormLastDims) {
  // Layer norm, and the RMS norm (x / sqrt(mean(x^2) + eps): no centering, so the offset rows
  // keep their mean), over the last one, two and three dims.
  const std::vector<int64_t> dims = {2, 3, 4, 6};
  uint32_t seed = 500;
  for (NormalizationType type : {NormalizationType::kLayer, NormalizationType::kRms}) {
    const char* kind = type == NormalizationType::kLayer ? " layer norm" : " RMS norm";
    for (DataType t : kFloatTypes) {
      const TestTensor x = TestTensor::random(t, dims, seed++, -1.0f, 3.0f);
      for (int64_t axis : {3, 2, 1}) {
        for (bool sc : {false, true}) {
          for (bool bi : {false, true}) {
            NormCase c{{}, sc, bi};
            c.params.type = type;
            c.params.axis = axis;
            c.params.epsilon = 1e-5;
            check_norm(x, c,
                       std::string(dtype_name(t)) + kind + " axis " + std::to_string(axis) +
                           (sc ? " scale" : "") + (bi ? " bias" : ""));
          }
        }
      }
    }
  }
}

TEST(NormalizationLayer, LayerNormLargeOffsetIsNumericallyCareful) {
  // Mean 1000 with unit spread: a one-pass E[x^2] - E[x]^2 in f32 would lose most digits.
  std::vector<float> v = TestTensor::random(DataType::kF32, {8, 4096}, 510).to_floats();
  for (float& f : v) f += 1000.0f;
  const TestTensor x = TestTensor::floats(DataType::kF32, {8, 4096}, v);
  NormCase c{{}, true, true};
  c.params.type = NormalizationType::kLayer;
  c.params.axis = 1;
  check_norm(x, c, "layer norm offset 1000");
  const TestTensor x4 = TestTensor::floats(DataType::kF32, {2, 4, 64, 64}, v);
  NormCase g{{}, true, true};
  g.params.type = NormalizationType::kGroup;
  g.params.num_groups = 2;
  check_norm(x4, g, "group norm offset 1000");
}

TEST(NormalizationLayer, GroupNorm) {
  uint32_t seed = 520;
  for (DataType t : kFloatTypes) {
    const TestTensor x = TestTensor::random(t, {2, 6, 3, 4}, seed++, -2.0f, 2.0f);
    for (int64_t groups : {1, 2, 3, 6}) {
      for (bool affine : {false, true}) {
        NormCase c{{}, affine, affine};
        c.params.type = NormalizationType::kGroup;
        c.params.num_groups = groups;
        c.params.epsilon = 1e-3;
        check_norm(x, c, std::string(dtype_name(t)) + " group norm groups " + std::to_string(groups) +
                             (affine ? " affine" : ""));
      }
    }
  }
  const TestTensor wide = TestTensor::random(DataType::kF32, {2, 32, 64, 64}, 529);
  NormCase c{{}, true, false};
  c.params.type = NormalizationType::kGroup;
  c.params.num_groups = 8;
  check_norm(wide, c, "group norm across threads");
}

TEST(NormalizationLayer, InstanceNorm) {
  uint32_t seed = 540;
  for (DataType t : kFloatTypes) {
    for (const std::vector<int64_t>& dims : {std::vector<int64_t>{2, 3, 5},
                                             std::vector<int64_t>{2, 3, 4, 4},
                                             std::vector<int64_t>{1, 2, 2, 3, 2}}) {
      const TestTensor x = TestTensor::random(t, dims, seed++, -2.0f, 2.0f);
      for (bool sc : {false, true}) {
        NormCase c{{}, sc, true};
        c.params.type = NormalizationType::kInstance;
        check_norm(x, c, std::string(dtype_name(t)) + " instance norm " + dims_to_string(dims) +
                             (sc ? " scale" : ""));
      }
    }
  }
}

// ---------------------------------------------------------------- Cumulative

TestTensor run_cumsum(const TestTensor& x, int64_t axis, bool exclusive, bool reverse) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_from_dims(x.dims));
  CumulativeParams p;
  p.axis = axis;
  p.exclusive = exclusive;
  p.reverse = reverse;
  net.mark_output(net.add_cumulative(in, p, "cumsum")->output());
  return test::run_network(net, {x}).at(0);
}

/// Reference cumulative sum on doubles (exact for the small integers used here).
std::vector<double> cumsum_ref(const std::vector<double>& x, const std::vector<int64_t>& dims,
                               int64_t axis, bool exclusive, bool reverse) {
  std::vector<double> out(x.size());
  for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i) {
    std::vector<int64_t> idx = unravel(i, dims);
    if (idx[axis] != 0) continue;
    double acc = 0;
    for (int64_t step = 0; step < dims[axis]; ++step) {
      idx[axis] = reverse ? dims[axis] - 1 - step : step;
      const int64_t at = ravel(idx, dims);
      if (exclusive) {
        out[at] = acc;
        acc += x[at];
      } else {
        acc += x[at];
        out[at] = acc;
      }
    }
  }
  return out;
}

TEST(CumulativeLayer, SumForwardExclusiveReverse) {
  const std::vector<int64_t> dims = {3, 4, 5};
  uint32_t seed = 600;
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kBF16, DataType::kI32,
                     DataType::kI64, DataType::kI8, DataType::kU8}) {
    const bool fl = dtype_is_float(t);
    const TestTensor x = fl ? TestTensor::random(t, dims, seed++)
                            : TestTensor::random(t, dims, seed++, t == DataType::kU8 ? 0.0f : -5.0f, 6.0f);
    std::vector<double> xs;
    if (fl) {
      for (float v : x.to_floats()) xs.push_back(v);
    } else {
      for (int64_t v : x.to_ints()) xs.push_back(static_cast<double>(v));
    }
    for (int64_t axis = 0; axis < 3; ++axis) {
      for (bool exclusive : {false, true}) {
        for (bool reverse : {false, true}) {
          const std::string what = std::string(dtype_name(t)) + " cumsum axis " +
                                   std::to_string(axis) + (exclusive ? " exclusive" : "") +
                                   (reverse ? " reverse" : "");
          const TestTensor y = run_cumsum(x, axis, exclusive, reverse);
          EXPECT_EQ(y.dims, dims) << what;
          EXPECT_EQ(y.dtype, t) << what;
          const std::vector<double> ref = cumsum_ref(xs, dims, axis, exclusive, reverse);
          if (fl) {
            test::expect_close(y, std::vector<float>(ref.begin(), ref.end()), t, what);
          } else {
            std::vector<int64_t> iref;
            for (double r : ref) iref.push_back(wrap_to(t, static_cast<int64_t>(r)));
            test::expect_equal_ints(y, iref, what);
          }
        }
      }
    }
  }
}

TEST(CumulativeLayer, LongAxesAcrossThreads) {
  const TestTensor rows = TestTensor::random(DataType::kF32, {16, 20000}, 610, 0.0f, 1.0f);
  const std::vector<float> rv = rows.to_floats();
  const std::vector<double> xs(rv.begin(), rv.end());
  const auto ref = cumsum_ref(xs, rows.dims, 1, false, false);
  test::expect_close(run_cumsum(rows, 1, false, false), std::vector<float>(ref.begin(), ref.end()),
                     DataType::kF32, "cumsum long rows");
  const TestTensor cols = TestTensor::random(DataType::kI32, {300, 3000}, 611, -100.0f, 100.0f);
  std::vector<double> cs;
  for (int64_t v : cols.to_ints()) cs.push_back(static_cast<double>(v));
  std::vector<int64_t> cref;
  for (double r : cumsum_ref(cs, cols.dims, 0, true, true)) cref.push_back(static_cast<int64_t>(r));
  test::expect_equal_ints(run_cumsum(cols, 0, true, true), cref, "cumsum axis 0 exclusive reverse");
}

// ---------------------------------------------------------------- dynamic shapes

TEST(ReductionFamily, SymbolicBatchRunsAtTwoSizes) {
  // One network with a symbolic batch: every layer of the family, run at n = 2 and n = 5.
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF32, {n, 6, 4});
  Layer* reduce = net.add_reduce(x, ReduceOp::kAvg, {1, 2}, true, "reduce");
  Layer* top = net.add_topk(x, TopKOp::kMax, 2, 1, "topk");
  Layer* soft = net.add_softmax(x, 2, false, "softmax");
  NormalizationParams gp;
  gp.type = NormalizationType::kGroup;
  gp.num_groups = 3;
  Layer* norm = net.add_normalization(x, nullptr, nullptr, gp, "norm");
  CumulativeParams cp;
  cp.axis = 0;
  Layer* cum = net.add_cumulative(x, cp, "cumsum");
  EXPECT_EQ(shape_to_string(reduce->output()->shape()), shape_to_string({n, 1, 1}));
  EXPECT_EQ(shape_to_string(top->output(1)->shape()), shape_to_string({n, 2, 4}));
  for (Layer* l : {reduce, top, soft, norm, cum}) net.mark_output(l->output(0));
  net.mark_output(top->output(1));

  RunOptions options;
  options.profiles.emplace_back().set_range("n", 1, 4, 8);
  for (int64_t batch : {2, 5}) {
    const std::vector<int64_t> dims = {batch, 6, 4};
    const TestTensor in = TestTensor::random(DataType::kF32, dims, 700 + static_cast<uint32_t>(batch));
    const std::vector<float> xs = in.to_floats();
    const auto outs = test::run_network(net, {in}, options);
    ASSERT_EQ(outs.size(), 6u);
    const std::string at = " at n=" + std::to_string(batch);
    EXPECT_EQ(outs[0].dims, (std::vector<int64_t>{batch, 1, 1})) << at;
    test::expect_close(outs[0], reduce_ref_float(xs, dims, ReduceOp::kAvg, {1, 2}), DataType::kF32,
                       "reduce" + at);
    std::vector<double> xd(xs.begin(), xs.end()), values;
    std::vector<int64_t> indices;
    topk_ref(xd, dims, TopKOp::kMax, 2, 1, values, indices);
    test::expect_close(outs[1], std::vector<float>(values.begin(), values.end()), DataType::kF32,
                       "topk" + at);
    test::expect_equal_ints(outs[5], indices, "topk indices" + at);
    test::expect_close(outs[2], softmax_ref(xs, dims, 2, false), DataType::kF32, "softmax" + at);
    std::vector<int64_t> group_of(xs.size()), param_of(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) group_of[i] = static_cast<int64_t>(i) / 8;
    test::expect_close(outs[3], norm_ref(xs, group_of, batch * 3, param_of, nullptr, nullptr, 1e-5),
                       DataType::kF32, "group norm" + at);
    const auto cref = cumsum_ref(xd, dims, 0, false, false);
    test::expect_close(outs[4], std::vector<float>(cref.begin(), cref.end()), DataType::kF32,
                       "cumsum" + at);
  }
}

TEST(ReductionFamily, SymbolicTopKBoundIsCheckedAtRunTime) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, DimExpr::symbol("m")});
  Layer* top = net.add_topk(x, TopKOp::kMax, 3, 1, "top");
  ASSERT_EQ(top->shape_checks().size(), 1u);
  net.mark_output(top->output(0));
  const auto ok = test::run_network_direct(net, {TestTensor::random(DataType::kF32, {2, 3}, 1)});
  EXPECT_EQ(ok[0].dims, (std::vector<int64_t>{2, 3}));
  expect_error([&] { test::run_network_direct(net, {TestTensor::random(DataType::kF32, {2, 2}, 1)}); },
               {"TopK 'top'", "k must be <="});
}

// ---------------------------------------------------------------- invalid layers

TEST(ReductionFamily, InvalidParamsNameTheLayer) {
  Network net;
  Tensor* f = net.add_input("f", DataType::kF32, {2, 6, 4});
  Tensor* i = net.add_input("i", DataType::kI32, {2, 6, 4});
  Tensor* b = net.add_input("b", DataType::kBool, {2, 6});
  Tensor* h = net.add_input("h", DataType::kF16, {6, 4});
  Tensor* s = net.add_input("s", DataType::kF32, {DimExpr::symbol("s")});

  // Reduce
  expect_error([&] { net.add_reduce(i, ReduceOp::kAvg, {1}, false, "avg_int"); },
               {"Reduce 'avg_int'", "average of i32"});
  expect_error([&] { net.add_reduce(b, ReduceOp::kSum, {1}, false, "sum_bool"); },
               {"Reduce 'sum_bool'", "bool"});
  expect_error([&] { net.add_reduce(f, ReduceOp::kSum, {2, 1}, false, "unsorted"); },
               {"Reduce 'unsorted'", "sorted"});
  expect_error([&] { net.add_reduce(f, ReduceOp::kSum, {1, 1}, false, "dup"); },
               {"Reduce 'dup'", "distinct"});
  expect_error([&] { net.add_reduce(f, ReduceOp::kMax, {3}, false, "range"); },
               {"Reduce 'range'", "out of range"});
  expect_error([&] { net.add_reduce(f, ReduceOp::kMax, {-1}, false, "negative"); },
               {"Reduce 'negative'", "out of range"});
  expect_error([&] { net.add_reduce(f, ReduceOp::kSum, {}, false, "empty"); },
               {"Reduce 'empty'", "axes is empty"});
  expect_error([&] { net.add_layer(ReduceParams{static_cast<ReduceOp>(9), {0}, false}, {f}, "op"); },
               {"Reduce 'op'", "unknown reduce op"});

  // TopK
  expect_error([&] { net.add_topk(f, TopKOp::kMax, 7, 1, "k_big"); }, {"TopK 'k_big'", "k must be <="});
  expect_error([&] { net.add_topk(f, TopKOp::kMax, 0, 1, "k_zero"); }, {"TopK 'k_zero'", "k must be >= 1"});
  expect_error([&] { net.add_topk(f, TopKOp::kMin, 1, 3, "axis"); }, {"TopK 'axis'", "out of range"});
  expect_error([&] { net.add_topk(b, TopKOp::kMax, 1, 1, "bool"); }, {"TopK 'bool'", "bool"});
  {
    TopKParams p;
    p.index_dtype = DataType::kF32;
    expect_error([&] { net.add_layer(p, {f}, "idx"); }, {"TopK 'idx'", "index_dtype"});
  }

  // SoftMax
  expect_error([&] { net.add_softmax(i, 1, false, "int_soft"); }, {"SoftMax 'int_soft'", "f32, f16 or bf16"});
  expect_error([&] { net.add_softmax(f, 3, true, "soft_axis"); }, {"SoftMax 'soft_axis'", "out of range"});

  // Normalization
  NormalizationParams ln;
  ln.type = NormalizationType::kLayer;
  ln.axis = 1;
  expect_error([&] { net.add_normalization(f, h, nullptr, ln, "ln_dtype"); },
               {"Normalization 'ln_dtype'", "one dtype"});
  Tensor* wrong = net.add_input("wrong", DataType::kF32, {4});
  expect_error([&] { net.add_normalization(f, wrong, nullptr, ln, "ln_scale"); },
               {"Normalization 'ln_scale'", "scale", "input[1:]"});
  Tensor* wrong2 = net.add_input("wrong2", DataType::kF32, {6, 5});
  expect_error([&] { net.add_normalization(f, nullptr, wrong2, ln, "ln_bias"); },
               {"Normalization 'ln_bias'", "bias dim 1"});
  expect_error([&] { net.add_normalization(i, nullptr, nullptr, ln, "ln_int"); },
               {"Normalization 'ln_int'", "f32, f16 or bf16"});
  ln.axis = 3;
  expect_error([&] { net.add_normalization(f, nullptr, nullptr, ln, "ln_axis"); },
               {"Normalization 'ln_axis'", "out of range"});
  ln.axis = 1;
  ln.epsilon = -1.0;
  expect_error([&] { net.add_normalization(f, nullptr, nullptr, ln, "ln_eps"); },
               {"Normalization 'ln_eps'", "epsilon"});
  NormalizationParams gn;
  gn.type = NormalizationType::kGroup;
  gn.num_groups = 4;
  expect_error([&] { net.add_normalization(f, nullptr, nullptr, gn, "gn_div"); },
               {"Normalization 'gn_div'", "divisible by num_groups"});
  gn.num_groups = 0;
  expect_error([&] { net.add_normalization(f, nullptr, nullptr, gn, "gn_zero"); },
               {"Normalization 'gn_zero'", "num_groups must be >= 1"});
  gn.num_groups = 2;
  expect_error([&] { net.add_normalization(f, wrong, nullptr, gn, "gn_scale"); },
               {"Normalization 'gn_scale'", "scale", "[C]"});
  expect_error([&] { net.add_normalization(s, nullptr, nullptr, gn, "gn_rank"); },
               {"Normalization 'gn_rank'", "rank >= 2"});
  NormalizationParams in;
  in.type = NormalizationType::kInstance;
  expect_error([&] { net.add_normalization(f, nullptr, wrong2, in, "in_bias"); },
               {"Normalization 'in_bias'", "bias", "[C]"});

  // Cumulative
  CumulativeParams cp;
  cp.axis = 3;
  expect_error([&] { net.add_cumulative(f, cp, "cum_axis"); }, {"Cumulative 'cum_axis'", "out of range"});
  cp.axis = 0;
  expect_error([&] { net.add_cumulative(b, cp, "cum_bool"); }, {"Cumulative 'cum_bool'", "bool"});

  // Symbolic dims defer the checks instead of failing.
  EXPECT_NO_THROW(net.add_topk(s, TopKOp::kMax, 5, 0, "k_symbolic"));
  EXPECT_NO_THROW(net.add_reduce(s, ReduceOp::kMax, {0}, false, "max_symbolic"));
}

}  // namespace
}  // namespace ember::engine
