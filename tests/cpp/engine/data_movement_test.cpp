// Tests of the data-movement layers (Constant, Shuffle, Concatenation, Slice, Gather, Scatter,
// Padding, Resize, Fill, Shape, Identity) against naive references written here.
//
// Layers that only move elements are checked byte for byte: the reference names, for every
// output coordinate, the input element it must hold (or the fill value), so one helper covers
// every dtype. Resize is checked against PyTorch's formulas evaluated directly (not separably)
// in double, plus tables of values PyTorch prints for small inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "backends/cpu/kernels.h"
#include "ember/engine/network.h"
#include "test_util.h"

namespace ember::engine::test {
namespace {

using Coord = std::vector<int64_t>;

Coord unravel(int64_t flat, const std::vector<int64_t>& dims) {
  Coord c(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    c[d] = flat % dims[d];
    flat /= dims[d];
  }
  return c;
}

int64_t ravel(const Coord& c, const std::vector<int64_t>& dims) {
  int64_t flat = 0;
  for (size_t d = 0; d < dims.size(); ++d) flat = flat * dims[d] + c[d];
  return flat;
}

/// The expected result of a pure data-movement layer: the element at output coordinate c is
/// src's element src_of(c), or `fill` (one element of src's dtype) when that is < 0.
TestTensor move_reference(const TestTensor& src, const std::vector<int64_t>& out_dims,
                          const std::function<int64_t(const Coord&)>& src_of,
                          const TestTensor* fill = nullptr) {
  TestTensor out;
  out.dtype = src.dtype;
  out.dims = out_dims;
  const size_t e = dtype_size(src.dtype);
  out.bytes.resize(static_cast<size_t>(out.numel()) * e);
  for (int64_t i = 0; i < out.numel(); ++i) {
    const int64_t s = src_of(unravel(i, out_dims));
    const uint8_t* from = s < 0 ? fill->bytes.data() : src.bytes.data() + s * e;
    std::memcpy(out.bytes.data() + i * e, from, e);
  }
  return out;
}

/// Exact equality of dtype, dims and bytes; reports the first differing elements.
void expect_same(const TestTensor& actual, const TestTensor& expected, const std::string& what) {
  ASSERT_EQ(actual.dtype, expected.dtype) << what;
  ASSERT_EQ(actual.dims, expected.dims) << what;
  ASSERT_EQ(actual.bytes.size(), expected.bytes.size()) << what;
  const size_t e = dtype_size(actual.dtype);
  int reported = 0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    if (std::memcmp(actual.bytes.data() + i * e, expected.bytes.data() + i * e, e) != 0 &&
        reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " (" << dims_to_string(unravel(i, actual.dims))
                    << ") is " << actual.to_floats()[i] << ", expected " << expected.to_floats()[i];
    }
  }
}

/// Runs `fn` and returns the message of the Error it throws ("" and a failure when none).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an Error";
  return "";
}

#define EXPECT_ERROR_WITH(statement, text)                                        \
  do {                                                                            \
    const std::string message_ = error_of([&] { statement; });                    \
    EXPECT_NE(message_.find(text), std::string::npos) << "message: " << message_; \
  } while (0)

/// Every dtype a pure data-movement layer takes.
const std::vector<DataType> kAllTypes = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                         DataType::kI8,  DataType::kU8,  DataType::kI32,
                                         DataType::kI64, DataType::kBool};

TestTensor random_of(DataType t, const std::vector<int64_t>& dims, uint32_t seed) {
  return TestTensor::random(t, dims, seed, -100.0f, 100.0f);
}

TestTensor run_one(const Network& net, const std::vector<TestTensor>& inputs) {
  auto outs = run_network(net, inputs);
  EXPECT_EQ(outs.size(), 1u);
  return outs.empty() ? TestTensor{} : outs[0];
}

/// The single-layer network `make(net, x)` over one input of `dims` (may be symbolic).
Network one_input(DataType t, const Shape& shape,
                  const std::function<Layer*(Network&, Tensor*)>& make) {
  Network net;
  Tensor* x = net.add_input("x", t, shape);
  net.mark_output(make(net, x)->output());
  return net;
}

const DimExpr kN = DimExpr::symbol("n");
const DimExpr kM = DimExpr::symbol("m");

// ================================================================ Constant, Identity, Shape

TEST(ConstantLayer, OutputsItsWeightsInEveryDtype) {
  for (DataType t : kAllTypes) {
    const TestTensor w = random_of(t, {2, 3}, 7);
    Network net;
    Tensor* x = net.add_input("x", t, {2, 3});
    Layer* c = net.add_constant(Weights::copy(t, {2, 3}, w.bytes.data()), "table");
    EXPECT_EQ(c->output()->dtype(), t);
    Layer* cat = net.add_concatenation({x, c->output()}, 0);
    net.mark_output(cat->output());
    const TestTensor xin = random_of(t, {2, 3}, 8);
    const TestTensor out = run_one(net, {xin});
    TestTensor expected = xin;
    expected.dims = {4, 3};
    expected.bytes.insert(expected.bytes.end(), w.bytes.begin(), w.bytes.end());
    expect_same(out, expected, std::string("constant ") + dtype_name(t));
  }
}

TEST(ConstantLayer, AsNetworkOutput) {
  const std::vector<int64_t> values = {5, -3, 1LL << 40};
  Network net;
  net.mark_output(
      net.add_constant(Weights::from_vector(DataType::kI64, {3}, values), "table")->output());
  const auto outs = run_network(net, {});
  ASSERT_EQ(outs.size(), 1u);
  expect_equal_ints(outs[0], values, "constant output");
}

TEST(ConstantLayer, RejectsInputs) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2});
  EXPECT_ERROR_WITH(net.add_layer(ConstantParams{Weights::zeros(DataType::kF32, {2})}, {x}),
                    "Constant");
}

TEST(IdentityLayer, CopiesEveryDtype) {
  for (DataType t : kAllTypes) {
    const TestTensor x = random_of(t, {3, 5}, 11);
    const Network net =
        one_input(t, {3, 5}, [](Network& n, Tensor* in) { return n.add_identity(in); });
    expect_same(run_one(net, {x}), x, std::string("identity ") + dtype_name(t));
  }
}

TEST(ShapeLayer, ReportsDynamicDims) {
  const Network net = one_input(DataType::kBool, {kN, 3, kM},
                                [](Network& n, Tensor* in) { return n.add_shape(in); });
  EXPECT_EQ(net.outputs()[0]->dtype(), DataType::kI64);
  EXPECT_EQ(net.outputs()[0]->shape(), (Shape{3}));
  for (const auto& dims : {std::vector<int64_t>{2, 3, 7}, std::vector<int64_t>{5, 3, 1}}) {
    const TestTensor out = run_one(net, {random_of(DataType::kBool, dims, 1)});
    expect_equal_ints(out, dims, "shape of " + dims_to_string(dims));
  }
}

TEST(ShapeLayer, ScalarHasEmptyShape) {
  const Network net =
      one_input(DataType::kF32, {}, [](Network& n, Tensor* in) { return n.add_shape(in); });
  // Empty outputs go through the direct executor: an empty buffer has no address to hand the
  // runtime.
  const auto outs = run_network_direct(net, {TestTensor::floats(DataType::kF32, {}, {1.5f})});
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].dims, (std::vector<int64_t>{0}));
}

// ================================================================ Shuffle

/// Reference for transpose -> reshape -> transpose.
TestTensor shuffle_reference(const TestTensor& x, const std::vector<int64_t>& perm1,
                             const std::vector<int64_t>& reshape,
                             const std::vector<int64_t>& perm2) {
  std::vector<int64_t> t1 = x.dims;
  if (!perm1.empty()) {
    for (size_t i = 0; i < perm1.size(); ++i) t1[i] = x.dims[perm1[i]];
  }
  const std::vector<int64_t> r = reshape.empty() ? t1 : reshape;
  std::vector<int64_t> out = r;
  if (!perm2.empty()) {
    for (size_t i = 0; i < perm2.size(); ++i) out[i] = r[perm2[i]];
  }
  return move_reference(x, out, [&](const Coord& c) {
    Coord rc = c;
    if (!perm2.empty()) {
      for (size_t i = 0; i < perm2.size(); ++i) rc[perm2[i]] = c[i];
    }
    const Coord tc = unravel(ravel(rc, r), t1);
    Coord s = tc;
    if (!perm1.empty()) {
      for (size_t i = 0; i < perm1.size(); ++i) s[perm1[i]] = tc[i];
    }
    return ravel(s, x.dims);
  });
}

TEST(ShuffleLayer, TransposeEveryDtype) {
  for (DataType t : kAllTypes) {
    const TestTensor x = random_of(t, {2, 3, 4}, 3);
    const Network net = one_input(t, {2, 3, 4}, [](Network& n, Tensor* in) {
      return n.add_transpose(in, {2, 0, 1});
    });
    EXPECT_EQ(net.outputs()[0]->shape(), (Shape{4, 2, 3}));
    expect_same(run_one(net, {x}), shuffle_reference(x, {2, 0, 1}, {}, {}),
                std::string("transpose ") + dtype_name(t));
  }
}

TEST(ShuffleLayer, TransposeNchwToNhwc) {
  const TestTensor x = random_of(DataType::kF32, {2, 8, 9, 10}, 4);
  const Network net = one_input(DataType::kF32, {2, 8, 9, 10}, [](Network& n, Tensor* in) {
    return n.add_transpose(in, {0, 2, 3, 1});
  });
  expect_same(run_one(net, {x}), shuffle_reference(x, {0, 2, 3, 1}, {}, {}), "nchw -> nhwc");
}

TEST(ShuffleLayer, LargeTransposesSplitAcrossThreads) {
  // Big enough for parallel_for to use several workers (where the machine has them).
  const TestTensor x = random_of(DataType::kF16, {2, 64, 40, 33}, 4);
  for (const std::vector<int64_t>& perm : {std::vector<int64_t>{0, 2, 3, 1}, {3, 1, 2, 0}}) {
    const Network net = one_input(DataType::kF16, {2, 64, 40, 33}, [&](Network& n, Tensor* in) {
      return n.add_transpose(in, perm);
    });
    expect_same(run_one(net, {x}), shuffle_reference(x, perm, {}, {}),
                "large transpose " + dims_to_string(perm));
  }
}

TEST(ShuffleLayer, TransposeReshapeTranspose) {
  for (DataType t : {DataType::kF16, DataType::kI64, DataType::kBool}) {
    const TestTensor x = random_of(t, {2, 3, 4}, 5);
    ShuffleParams p;
    p.first_transpose = {1, 0, 2};
    p.has_reshape = true;
    p.reshape = {-1, 4};
    p.second_transpose = {1, 0};
    const Network net =
        one_input(t, {2, 3, 4}, [&](Network& n, Tensor* in) { return n.add_shuffle(in, p); });
    EXPECT_EQ(net.outputs()[0]->shape(), (Shape{4, 6}));
    expect_same(run_one(net, {x}), shuffle_reference(x, {1, 0, 2}, {6, 4}, {1, 0}),
                std::string("shuffle ") + dtype_name(t));
  }
}

TEST(ShuffleLayer, TwoTransposesWithoutReshape) {
  const TestTensor x = random_of(DataType::kI32, {2, 3, 4, 5}, 6);
  ShuffleParams p;
  p.first_transpose = {3, 1, 0, 2};
  p.second_transpose = {2, 0, 3, 1};
  const Network net = one_input(DataType::kI32, {2, 3, 4, 5},
                                [&](Network& n, Tensor* in) { return n.add_shuffle(in, p); });
  expect_same(run_one(net, {x}), shuffle_reference(x, {3, 1, 0, 2}, {}, {2, 0, 3, 1}),
              "two transposes");
}

TEST(ShuffleLayer, ReshapeThenTranspose) {
  const TestTensor x = random_of(DataType::kBF16, {6, 4}, 9);
  ShuffleParams p;
  p.has_reshape = true;
  p.reshape = {2, 3, 4};
  p.second_transpose = {2, 0, 1};
  const Network net = one_input(DataType::kBF16, {6, 4},
                                [&](Network& n, Tensor* in) { return n.add_shuffle(in, p); });
  expect_same(run_one(net, {x}), shuffle_reference(x, {}, {2, 3, 4}, {2, 0, 1}),
              "reshape then transpose");
}

TEST(ShuffleLayer, DynamicReshapeWithSymbolicDims) {
  // [n, 12] -> [n * 3, 4] and [n, 12] -> [-1, 6], run at two sizes.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {kN, 12});
  Layer* a = net.add_reshape(x, {kN * 3, 4});
  Layer* b = net.add_reshape(x, {-1, 6});
  Layer* c = net.add_reshape(a->output(), {kN, 2, -1});
  net.mark_output(a->output());
  net.mark_output(b->output());
  net.mark_output(c->output());
  for (int64_t n : {2, 5}) {
    const TestTensor in = random_of(DataType::kF32, {n, 12}, static_cast<uint32_t>(n));
    const auto outs = run_network(net, {in});
    ASSERT_EQ(outs.size(), 3u);
    TestTensor e = in;
    e.dims = {n * 3, 4};
    expect_same(outs[0], e, "reshape to [n*3, 4], n = " + std::to_string(n));
    e.dims = {n * 2, 6};
    expect_same(outs[1], e, "reshape to [-1, 6], n = " + std::to_string(n));
    e.dims = {n, 2, 6};
    expect_same(outs[2], e, "reshape to [n, 2, -1], n = " + std::to_string(n));
  }
}

TEST(ShuffleLayer, InferredDimCancelsSharedSymbolicFactors) {
  // HF's q/k/v view(b, s, -1, head_dim) on a symbolic batch: the heads come out as the constant
  // 2 (what Attention needs for grouped-query heads), not floordiv(b*s*512, b*s*256).
  Network net;
  const DimExpr s = DimExpr::symbol("s");
  Tensor* x = net.add_input("x", DataType::kF32, {kN, s, 32});
  Tensor* heads = net.add_reshape(x, {kN, s, -1, 16})->output();
  EXPECT_EQ(heads->shape(), (Shape{kN, s, 2, 16}));
  // Constants that do not cancel stay in the product; n*s*32 / 16.
  EXPECT_EQ(net.add_reshape(x, {-1, 16})->output()->shape(), (Shape{kN * s * 2, 16}));
  net.mark_output(heads);
  for (int64_t n : {1, 3}) {
    const TestTensor in = random_of(DataType::kF32, {n, 4, 32}, static_cast<uint32_t>(n));
    TestTensor e = in;
    e.dims = {n, 4, 2, 16};
    expect_same(run_network(net, {in})[0], e, "view [n, s, -1, 16], n = " + std::to_string(n));
  }
  // Factors with nothing to cancel against keep the division (and its run-time check).
  Network other;
  Tensor* y = other.add_input("y", DataType::kF32, {kN, 6});
  EXPECT_EQ(other.add_reshape(y, {s, -1})->output()->shape()[1], floor_div(kN * 6, s));
}

TEST(ShuffleLayer, RejectsBadParameters) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 4});
  EXPECT_ERROR_WITH(net.add_transpose(x, {0, 0, 1}), "Shuffle");
  EXPECT_ERROR_WITH(net.add_transpose(x, {0, 0, 1}), "not a permutation");
  EXPECT_ERROR_WITH(net.add_transpose(x, {0, 1}), "one entry per dim");
  EXPECT_ERROR_WITH(net.add_transpose(x, {0, 1, 3}), "not a permutation");
  EXPECT_ERROR_WITH(net.add_reshape(x, {-1, -1}), "more than one -1");
  EXPECT_ERROR_WITH(net.add_reshape(x, {5, 5}), "element count");
  EXPECT_ERROR_WITH(net.add_reshape(x, {-2, 12}), "-1 (inferred)");
  EXPECT_ERROR_WITH(net.add_reshape(x, {0, -1}), "multiply to 0");
  ShuffleParams p;
  p.has_reshape = true;
  p.reshape = {24};
  p.second_transpose = {1, 0};
  EXPECT_ERROR_WITH(net.add_shuffle(x, p), "second_transpose");
}

TEST(ShuffleLayer, DynamicReshapeMismatchFailsAtRunTime) {
  // [n, 12] -> [n, 5, -1]: n*12 is not divisible by n*5, caught when shapes are known.
  const Network net = one_input(DataType::kF32, {kN, 12}, [](Network& n, Tensor* in) {
    return n.add_reshape(in, {kN, 5, -1});
  });
  EXPECT_ERROR_WITH(run_network(net, {random_of(DataType::kF32, {2, 12}, 1)}), "Shuffle");
}

// ================================================================ Concatenation

TestTensor concat_reference(const std::vector<TestTensor>& xs, int64_t axis) {
  std::vector<int64_t> dims = xs[0].dims;
  dims[axis] = 0;
  for (const auto& x : xs) dims[axis] += x.dims[axis];
  TestTensor out;
  out.dtype = xs[0].dtype;
  out.dims = dims;
  const size_t e = dtype_size(out.dtype);
  out.bytes.resize(static_cast<size_t>(out.numel()) * e);
  for (int64_t i = 0; i < out.numel(); ++i) {
    Coord c = unravel(i, dims);
    size_t k = 0;
    while (c[axis] >= xs[k].dims[axis]) c[axis] -= xs[k++].dims[axis];
    std::memcpy(out.bytes.data() + i * e, xs[k].bytes.data() + ravel(c, xs[k].dims) * e, e);
  }
  return out;
}

TEST(ConcatenationLayer, ThreeInputsEveryAxisAndDtype) {
  for (DataType t : kAllTypes) {
    for (int64_t axis = 0; axis < 3; ++axis) {
      std::vector<TestTensor> xs;
      Network net;
      std::vector<Tensor*> ins;
      for (int64_t k = 0; k < 3; ++k) {
        std::vector<int64_t> dims = {2, 3, 4};
        dims[axis] = k + 1;
        xs.push_back(random_of(t, dims, static_cast<uint32_t>(10 * axis + k)));
        ins.push_back(net.add_input("x" + std::to_string(k), t, shape_from_dims(dims)));
      }
      net.mark_output(net.add_concatenation(ins, axis)->output());
      expect_same(run_one(net, xs), concat_reference(xs, axis),
                  std::string("concat ") + dtype_name(t) + " axis " + std::to_string(axis));
    }
  }
}

TEST(ConcatenationLayer, DynamicShapes) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF16, {kN, 2});
  Tensor* b = net.add_input("b", DataType::kF16, {kN, 3});
  Tensor* c = net.add_input("c", DataType::kF16, {2, 5});
  Layer* wide = net.add_concatenation({a, b}, 1);
  Layer* tall = net.add_concatenation({wide->output(), c}, 0);
  net.mark_output(tall->output());
  EXPECT_EQ(tall->output()->shape()[1], DimExpr(5));
  for (int64_t n : {1, 4}) {
    const std::vector<TestTensor> xs = {random_of(DataType::kF16, {n, 2}, 1),
                                        random_of(DataType::kF16, {n, 3}, 2),
                                        random_of(DataType::kF16, {2, 5}, 3)};
    const TestTensor expected = concat_reference({concat_reference({xs[0], xs[1]}, 1), xs[2]}, 0);
    expect_same(run_one(net, xs), expected, "dynamic concat n = " + std::to_string(n));
  }
}

TEST(ConcatenationLayer, RejectsMismatchedInputs) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {2, 3});
  Tensor* b = net.add_input("b", DataType::kF32, {2, 4});
  Tensor* c = net.add_input("c", DataType::kI32, {2, 3});
  Tensor* d = net.add_input("d", DataType::kF32, {2, 3, 1});
  EXPECT_ERROR_WITH(net.add_concatenation({a, b}, 0), "Concatenation");
  EXPECT_ERROR_WITH(net.add_concatenation({a, c}, 0), "one dtype");
  EXPECT_ERROR_WITH(net.add_concatenation({a, d}, 0), "one rank");
  EXPECT_ERROR_WITH(net.add_concatenation({a, b}, 2), "out of range");
  EXPECT_ERROR_WITH(net.add_concatenation({}, 0), "at least one input");
}

// ================================================================ Slice

TestTensor slice_reference(const TestTensor& x, const Coord& start,
                           const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
  return move_reference(x, size, [&](const Coord& c) {
    Coord s(c.size());
    for (size_t d = 0; d < c.size(); ++d) s[d] = start[d] + c[d] * stride[d];
    return ravel(s, x.dims);
  });
}

TEST(SliceLayer, PositiveAndNegativeStrides) {
  struct Case {
    Coord start;
    std::vector<int64_t> size, stride;
  };
  const std::vector<Case> cases = {
      {{0, 1, 0}, {3, 2, 5}, {1, 1, 1}},     // contiguous inner block
      {{1, 0, 1}, {2, 4, 2}, {1, 1, 2}},     // strided inner dim
      {{2, 3, 4}, {3, 4, 5}, {-1, -1, -1}},  // full reversal
      {{2, 3, 4}, {2, 2, 3}, {-2, -2, -2}},  // stride -2
      {{0, 3, 0}, {3, 2, 0}, {1, -3, 1}},    // empty result
  };
  for (DataType t :
       {DataType::kF32, DataType::kBF16, DataType::kI64, DataType::kBool, DataType::kU8}) {
    const TestTensor x = random_of(t, {3, 4, 5}, 21);
    for (const Case& k : cases) {
      const Network net = one_input(t, {3, 4, 5}, [&](Network& n, Tensor* in) {
        return n.add_slice(in, shape_from_dims(k.start), shape_from_dims(k.size), k.stride);
      });
      // Empty outputs go through the direct executor (an empty buffer has no address).
      const TestTensor out =
          dims_numel(k.size) == 0 ? run_network_direct(net, {x}).at(0) : run_one(net, {x});
      expect_same(out, slice_reference(x, k.start, k.size, k.stride),
                  std::string("slice ") + dtype_name(t) + " start " + dims_to_string(k.start) +
                      " stride " + dims_to_string(k.stride));
    }
  }
}

TEST(SliceLayer, DynamicSizeAndReversal) {
  // x[1:, ::2] and x[::-1] on [n, 6].
  Network net;
  Tensor* x = net.add_input("x", DataType::kI32, {kN, 6});
  Layer* tail = net.add_slice(x, {1, 0}, {kN - 1, 3}, {1, 2});
  net.mark_output(tail->output());
  for (int64_t n : {3, 5}) {
    const TestTensor in = random_of(DataType::kI32, {n, 6}, static_cast<uint32_t>(n));
    expect_same(run_one(net, {in}), slice_reference(in, {1, 0}, {n - 1, 3}, {1, 2}),
                "x[1:, ::2] n = " + std::to_string(n));
  }
}

TEST(SliceLayer, SymbolicStart) {
  // x[-2:] and x[::-1, ::-1] on [n, 3]: the starts are n - 2 and n - 1. The kernel evaluates
  // them from the symbol bindings the executor and the runtime pass.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {kN, 3});
  net.mark_output(net.add_slice(x, {kN - 2, 0}, {2, 3}, {1, 1})->output());
  net.mark_output(net.add_slice(x, {kN - 1, 2}, {kN, 3}, {-1, -1})->output());
  for (int64_t n : {2, 6}) {
    const TestTensor in = random_of(DataType::kF32, {n, 3}, static_cast<uint32_t>(n));
    const auto outs = run_network(net, {in});
    ASSERT_EQ(outs.size(), 2u);
    expect_same(outs[0], slice_reference(in, {n - 2, 0}, {2, 3}, {1, 1}), "x[-2:]");
    expect_same(outs[1], slice_reference(in, {n - 1, 2}, {n, 3}, {-1, -1}), "x[::-1, ::-1]");
  }
}

TEST(SliceLayer, KernelWithoutBindingsRejectsSymbolicStart) {
  std::vector<float> in(6, 1.0f), out(3, 0.0f);
  cpu::HostTensor x{DataType::kF32, {2, 3}, in.data()};
  cpu::HostTensor y{DataType::kF32, {1, 3}, out.data()};
  cpu::KernelArgs args;
  args.inputs = {&x};
  args.outputs = {&y};
  const SliceParams p{{kN - 1, 0}, {1, 3}, {1, 1}};
  EXPECT_ERROR_WITH(cpu::run(p, args), "symbol bindings");
  const SymbolBindings b = {{"n", 2}};
  args.symbols = &b;
  cpu::run(p, args);
  EXPECT_EQ(out, (std::vector<float>{1.0f, 1.0f, 1.0f}));
}

TEST(SliceLayer, RejectsOutOfRangeParameters) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 5});
  EXPECT_ERROR_WITH(net.add_slice(x, {0, 0}, {5, 5}, {1, 1}), "Slice");
  EXPECT_ERROR_WITH(net.add_slice(x, {0, 0}, {5, 5}, {1, 1}), "highest index");
  EXPECT_ERROR_WITH(net.add_slice(x, {-1, 0}, {2, 5}, {1, 1}), "lowest index");
  EXPECT_ERROR_WITH(net.add_slice(x, {3, 0}, {3, 5}, {-2, 1}), "lowest index");
  EXPECT_ERROR_WITH(net.add_slice(x, {4, 0}, {1, 5}, {-1, 1}), "highest index");
  EXPECT_ERROR_WITH(net.add_slice(x, {0, 0}, {2, 5}, {0, 1}), "stride of dim 0 is 0");
  EXPECT_ERROR_WITH(net.add_slice(x, {0, 0}, {-1, 5}, {1, 1}), "must be >= 0");
  EXPECT_ERROR_WITH(net.add_slice(x, {0}, {4}, {1}), "one entry per input dim");
}

TEST(SliceLayer, DynamicOutOfRangeFailsAtRunTime) {
  // x[0:3] on [n, 4] needs n >= 3.
  const Network net = one_input(DataType::kF32, {kN, 4}, [](Network& n, Tensor* in) {
    return n.add_slice(in, {0, 0}, {3, 4}, {1, 1});
  });
  const TestTensor ok = random_of(DataType::kF32, {3, 4}, 1);
  expect_same(run_one(net, {ok}), ok, "x[0:3] with n = 3");
  EXPECT_ERROR_WITH(run_network(net, {random_of(DataType::kF32, {2, 4}, 1)}), "Slice");
}

// ================================================================ Gather

int64_t wrap(int64_t v, int64_t n) { return v < 0 ? v + n : v; }

TEST(GatherLayer, DefaultModeWithNegativeIndices) {
  const std::vector<int64_t> idx_values = {2, -1, 0, -4, 1, 3};
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kI64, DataType::kBool}) {
    for (DataType it : {DataType::kI32, DataType::kI64}) {
      for (int64_t axis = 0; axis < 3; ++axis) {
        const std::vector<int64_t> dims = {4, 4, 4};
        const TestTensor data = random_of(t, dims, 31);
        const TestTensor idx = TestTensor::ints(it, {2, 3}, idx_values);
        Network net;
        Tensor* d = net.add_input("data", t, shape_from_dims(dims));
        Tensor* i = net.add_input("indices", it, {2, 3});
        GatherParams p;
        p.axis = axis;
        net.mark_output(net.add_gather(d, i, p)->output());
        std::vector<int64_t> out_dims(dims.begin(), dims.begin() + axis);
        out_dims.insert(out_dims.end(), {2, 3});
        out_dims.insert(out_dims.end(), dims.begin() + axis + 1, dims.end());
        const TestTensor expected = move_reference(data, out_dims, [&](const Coord& c) {
          Coord s(c.begin(), c.begin() + axis);
          s.push_back(wrap(idx_values[c[axis] * 3 + c[axis + 1]], 4));
          s.insert(s.end(), c.begin() + axis + 2, c.end());
          return ravel(s, dims);
        });
        expect_same(run_one(net, {data, idx}), expected,
                    std::string("gather ") + dtype_name(t) + " indices " + dtype_name(it) +
                        " axis " + std::to_string(axis));
      }
    }
  }
}

TEST(GatherLayer, DefaultModeScalarIndexAndDynamicShapes) {
  // data [n, 5], indices [m] gathering rows; and a scalar index selecting one column.
  Network net;
  Tensor* d = net.add_input("data", DataType::kBF16, {kN, 5});
  Tensor* i = net.add_input("rows", DataType::kI64, {kM});
  Tensor* s = net.add_input("col", DataType::kI32, {});
  GatherParams rows;
  GatherParams col;
  col.axis = 1;
  net.mark_output(net.add_gather(d, i, rows)->output());
  net.mark_output(net.add_gather(d, s, col)->output());
  EXPECT_EQ(net.outputs()[1]->shape(), (Shape{kN}));
  for (int64_t n : {2, 6}) {
    const TestTensor data = random_of(DataType::kBF16, {n, 5}, static_cast<uint32_t>(n));
    const std::vector<int64_t> iv = {n - 1, -n, 0};
    const auto outs = run_network(net, {data, TestTensor::ints(DataType::kI64, {3}, iv),
                                        TestTensor::ints(DataType::kI32, {}, {-2})});
    ASSERT_EQ(outs.size(), 2u);
    expect_same(outs[0],
                move_reference(data, {3, 5},
                               [&](const Coord& c) {
                                 return ravel({wrap(iv[c[0]], n), c[1]}, {n, 5});
                               }),
                "rows, n = " + std::to_string(n));
    expect_same(outs[1],
                move_reference(data, {n},
                               [&](const Coord& c) {
                                 return ravel({c[0], 3}, {n, 5});
                               }),
                "column -2, n = " + std::to_string(n));
  }
}

TEST(GatherLayer, LargeDefaultAndElementGathers) {
  const std::vector<int64_t> dims = {64, 50, 48};
  const TestTensor data = random_of(DataType::kI32, dims, 33);
  std::vector<int64_t> iv;
  for (int64_t i = 0; i < 2 * 50 * 48; ++i) iv.push_back((i * 37) % 128 - 64);
  // Default: rows picked along axis 0 by 100 indices; element: indices [2, 50, 48] along axis 0.
  const TestTensor rows = TestTensor::ints(DataType::kI64, {100}, {iv.begin(), iv.begin() + 100});
  const TestTensor elems = TestTensor::ints(DataType::kI64, {2, 50, 48}, iv);
  Network net;
  Tensor* d = net.add_input("data", DataType::kI32, shape_from_dims(dims));
  Tensor* r = net.add_input("rows", DataType::kI64, {100});
  Tensor* e = net.add_input("elems", DataType::kI64, {2, 50, 48});
  net.mark_output(net.add_gather(d, r, GatherParams{})->output());
  net.mark_output(net.add_gather(d, e, GatherParams{GatherMode::kElement, 0, 0})->output());
  const auto outs = run_network(net, {data, rows, elems});
  ASSERT_EQ(outs.size(), 2u);
  expect_same(outs[0],
              move_reference(data, {100, 50, 48},
                             [&](const Coord& c) {
                               return ravel({wrap(iv[c[0]], 64), c[1], c[2]}, dims);
                             }),
              "large default gather");
  expect_same(
      outs[1],
      move_reference(data, {2, 50, 48},
                     [&](const Coord& c) {
                       return ravel({wrap(iv[ravel(c, {2, 50, 48})], 64), c[1], c[2]}, dims);
                     }),
      "large element gather");
}

TEST(GatherLayer, ElementModeWithNegativeIndices) {
  // torch.gather: indices may be smaller than data in the non-axis dims.
  const std::vector<int64_t> data_dims = {3, 4};
  for (int64_t axis = 0; axis < 2; ++axis) {
    for (DataType t : {DataType::kF32, DataType::kI8, DataType::kF16}) {
      const TestTensor data = random_of(t, data_dims, 41);
      const std::vector<int64_t> idx_dims = {2, 3};
      const int64_t bound = data_dims[axis];
      std::vector<int64_t> iv = {0, -1, 1, -bound, bound - 1, 1};
      const TestTensor idx = TestTensor::ints(DataType::kI64, idx_dims, iv);
      Network net;
      Tensor* d = net.add_input("data", t, shape_from_dims(data_dims));
      Tensor* i = net.add_input("indices", DataType::kI64, shape_from_dims(idx_dims));
      GatherParams p;
      p.mode = GatherMode::kElement;
      p.axis = axis;
      net.mark_output(net.add_gather(d, i, p)->output());
      const TestTensor expected = move_reference(data, idx_dims, [&](const Coord& c) {
        Coord s = c;
        s[axis] = wrap(iv[ravel(c, idx_dims)], bound);
        return ravel(s, data_dims);
      });
      expect_same(run_one(net, {data, idx}), expected,
                  std::string("element gather ") + dtype_name(t) + " axis " + std::to_string(axis));
    }
  }
}

TEST(GatherLayer, NdModeWithBatchDims) {
  struct Case {
    std::vector<int64_t> data_dims, idx_dims;
    int64_t batch_dims;
  };
  for (const Case& k : {Case{{3, 4, 2}, {5, 2}, 0}, Case{{3, 4, 2}, {2, 1}, 0},
                        Case{{2, 4, 3}, {2, 3, 1}, 1}, Case{{2, 3, 4}, {2, 2}, 1}}) {
    const TestTensor data = random_of(DataType::kI32, k.data_dims, 51);
    const int64_t q = static_cast<int64_t>(k.idx_dims.size());
    const int64_t tuple = k.idx_dims.back();
    const int64_t b = k.batch_dims;
    std::vector<int64_t> iv(static_cast<size_t>(dims_numel(k.idx_dims)));
    for (size_t j = 0; j < iv.size(); ++j) {
      const int64_t bound = k.data_dims[b + static_cast<int64_t>(j) % tuple];
      iv[j] = (static_cast<int64_t>(j * 7) % (2 * bound)) - bound;  // covers [-bound, bound)
    }
    Network net;
    Tensor* d = net.add_input("data", DataType::kI32, shape_from_dims(k.data_dims));
    Tensor* i = net.add_input("indices", DataType::kI32, shape_from_dims(k.idx_dims));
    GatherParams p;
    p.mode = GatherMode::kNd;
    p.num_batch_dims = b;
    net.mark_output(net.add_gather(d, i, p)->output());
    std::vector<int64_t> out_dims(k.idx_dims.begin(), k.idx_dims.end() - 1);
    out_dims.insert(out_dims.end(), k.data_dims.begin() + b + tuple, k.data_dims.end());
    const TestTensor expected = move_reference(data, out_dims, [&](const Coord& c) {
      Coord s(c.begin(), c.begin() + b);
      Coord ic(c.begin(), c.begin() + (q - 1));
      ic.push_back(0);
      for (int64_t t = 0; t < tuple; ++t) {
        ic[q - 1] = t;
        s.push_back(wrap(iv[ravel(ic, k.idx_dims)], k.data_dims[b + t]));
      }
      s.insert(s.end(), c.begin() + (q - 1), c.end());
      return ravel(s, k.data_dims);
    });
    expect_same(run_one(net, {data, TestTensor::ints(DataType::kI32, k.idx_dims, iv)}), expected,
                "gather_nd data " + dims_to_string(k.data_dims) + " indices " +
                    dims_to_string(k.idx_dims) + " batch " + std::to_string(b));
  }
}

TEST(GatherLayer, IndexOutOfRangeFailsAtRunTime) {
  for (GatherMode mode : {GatherMode::kDefault, GatherMode::kElement, GatherMode::kNd}) {
    Network net;
    Tensor* d = net.add_input("data", DataType::kF32, {3, 3});
    const std::vector<int64_t> idx_dims =
        mode == GatherMode::kDefault ? std::vector<int64_t>{2} : std::vector<int64_t>{2, 1};
    Tensor* i = net.add_input("indices", DataType::kI64, shape_from_dims(idx_dims));
    GatherParams p;
    p.mode = mode;
    net.mark_output(net.add_gather(d, i, p, "pick")->output());
    const TestTensor data = random_of(DataType::kF32, {3, 3}, 1);
    for (int64_t bad : {3, -4}) {
      const std::string msg = error_of([&] {
        run_network(net, {data, TestTensor::ints(DataType::kI64, idx_dims, {0, bad})});
      });
      EXPECT_NE(msg.find("Gather 'pick'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
    }
  }
}

TEST(GatherLayer, RejectsBadParameters) {
  Network net;
  Tensor* d = net.add_input("data", DataType::kF32, {3, 4});
  Tensor* fi = net.add_input("float_indices", DataType::kF32, {2});
  Tensor* i1 = net.add_input("i1", DataType::kI64, {2});
  Tensor* i2 = net.add_input("i2", DataType::kI64, {2, 5});
  Tensor* i3 = net.add_input("i3", DataType::kI64, {2, 3});
  GatherParams p;
  EXPECT_ERROR_WITH(net.add_gather(d, fi, p), "i32 or i64");
  p.axis = 2;
  EXPECT_ERROR_WITH(net.add_gather(d, i1, p), "Gather");
  p.axis = 0;
  p.num_batch_dims = 1;
  EXPECT_ERROR_WITH(net.add_gather(d, i1, p), "num_batch_dims");
  p = GatherParams{GatherMode::kElement, 0, 0};
  EXPECT_ERROR_WITH(net.add_gather(d, i1, p), "rank");
  EXPECT_ERROR_WITH(net.add_gather(d, i2, p), "must be <=");
  p = GatherParams{GatherMode::kNd, 0, 0};
  EXPECT_ERROR_WITH(net.add_gather(d, i3, p), "last indices dim");
}

// ================================================================ Scatter

/// Naive scatter: walks indices in row-major order; float math in double, integers in int64.
std::vector<double> scatter_reference(const TestTensor& data, const TestTensor& idx,
                                      const TestTensor& upd, int64_t axis, ScatterReduction r) {
  std::vector<double> out;
  const bool is_float = dtype_is_float(data.dtype);
  for (int64_t i = 0; i < data.numel(); ++i) {
    out.push_back(is_float ? data.to_floats()[i] : static_cast<double>(data.to_ints()[i]));
  }
  const auto iv = idx.to_ints();
  const auto uf = upd.to_floats();
  const auto ui = upd.to_ints();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    Coord c = unravel(i, idx.dims);
    c[axis] = wrap(iv[i], data.dims[axis]);
    double& o = out[ravel(c, data.dims)];
    const double u = is_float ? uf[i] : static_cast<double>(ui[i]);
    switch (r) {
      case ScatterReduction::kNone:
        o = u;
        break;
      case ScatterReduction::kSum:
        o += u;
        break;
      case ScatterReduction::kProd:
        o *= u;
        break;
      case ScatterReduction::kMax:
        o = std::max(o, u);
        break;
      case ScatterReduction::kMin:
        o = std::min(o, u);
        break;
    }
  }
  return out;
}

TEST(ScatterLayer, EveryReductionWithDuplicateAndNegativeIndices) {
  const std::vector<int64_t> data_dims = {3, 4};
  const std::vector<int64_t> idx_dims = {2, 3};
  for (int64_t axis = 0; axis < 2; ++axis) {
    const int64_t n = data_dims[axis];
    // Duplicates along the axis in both rows, and negative aliases of positive indices.
    const std::vector<int64_t> iv = {0, -1, n - 1, 1, 1 - n, -n};
    for (DataType t : {DataType::kF32, DataType::kF16, DataType::kI32, DataType::kI64}) {
      for (ScatterReduction r :
           {ScatterReduction::kNone, ScatterReduction::kSum, ScatterReduction::kProd,
            ScatterReduction::kMax, ScatterReduction::kMin}) {
        const TestTensor data = TestTensor::random(t, data_dims, 61, -4.0f, 4.0f);
        const TestTensor upd = TestTensor::random(t, idx_dims, 62, -4.0f, 4.0f);
        const TestTensor idx = TestTensor::ints(DataType::kI32, idx_dims, iv);
        Network net;
        Tensor* d = net.add_input("data", t, shape_from_dims(data_dims));
        Tensor* i = net.add_input("indices", DataType::kI32, shape_from_dims(idx_dims));
        Tensor* u = net.add_input("updates", t, shape_from_dims(idx_dims));
        net.mark_output(net.add_scatter(d, i, u, ScatterParams{axis, r})->output());
        const TestTensor out = run_one(net, {data, idx, upd});
        const std::vector<double> e = scatter_reference(data, idx, upd, axis, r);
        const std::string what = std::string("scatter ") + dtype_name(t) + " axis " +
                                 std::to_string(axis) + " reduction " +
                                 std::to_string(static_cast<int>(r));
        if (dtype_is_float(t)) {
          expect_close(out, std::vector<float>(e.begin(), e.end()), t, what);
        } else {
          expect_equal_ints(out, std::vector<int64_t>(e.begin(), e.end()), what);
        }
      }
    }
  }
}

TEST(ScatterLayer, BoolOverwriteAndDynamicShape) {
  Network net;
  Tensor* d = net.add_input("data", DataType::kBool, {kN, 2});
  Tensor* i = net.add_input("indices", DataType::kI64, {1, 2});
  Tensor* u = net.add_input("updates", DataType::kBool, {1, 2});
  net.mark_output(net.add_scatter(d, i, u, ScatterParams{0, ScatterReduction::kNone})->output());
  for (int64_t n : {2, 5}) {
    std::vector<int64_t> dv(static_cast<size_t>(2 * n), 0);
    const auto outs = run_network(net, {TestTensor::ints(DataType::kBool, {n, 2}, dv),
                                        TestTensor::ints(DataType::kI64, {1, 2}, {-1, 0}),
                                        TestTensor::ints(DataType::kBool, {1, 2}, {1, 1})});
    dv[2 * (n - 1)] = 1;  // [n - 1, 0]
    dv[1] = 1;            // [0, 1]
    expect_equal_ints(outs[0], dv, "bool scatter n = " + std::to_string(n));
  }
}

TEST(ScatterLayer, IndexOutOfRangeFailsAtRunTime) {
  Network net;
  Tensor* d = net.add_input("data", DataType::kF32, {2, 2});
  Tensor* i = net.add_input("indices", DataType::kI64, {1, 2});
  Tensor* u = net.add_input("updates", DataType::kF32, {1, 2});
  net.mark_output(net.add_scatter(d, i, u, ScatterParams{1, ScatterReduction::kSum})->output());
  const std::string msg = error_of([&] {
    run_network(net, {random_of(DataType::kF32, {2, 2}, 1),
                      TestTensor::ints(DataType::kI64, {1, 2}, {0, 2}),
                      random_of(DataType::kF32, {1, 2}, 2)});
  });
  EXPECT_NE(msg.find("Scatter"), std::string::npos) << msg;
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
}

TEST(ScatterLayer, RejectsBadParameters) {
  Network net;
  Tensor* d = net.add_input("data", DataType::kF32, {3, 4});
  Tensor* b = net.add_input("flags", DataType::kBool, {3, 4});
  Tensor* i = net.add_input("indices", DataType::kI64, {2, 4});
  Tensor* big = net.add_input("big", DataType::kI64, {2, 5});
  Tensor* u = net.add_input("updates", DataType::kF32, {2, 4});
  Tensor* ub = net.add_input("bool_updates", DataType::kBool, {2, 4});
  Tensor* u3 = net.add_input("updates3", DataType::kF32, {2, 3});
  Tensor* u5 = net.add_input("updates5", DataType::kF32, {2, 5});
  EXPECT_ERROR_WITH(net.add_scatter(d, i, ub, ScatterParams{0, ScatterReduction::kNone}),
                    "Scatter");
  EXPECT_ERROR_WITH(net.add_scatter(d, i, u3, ScatterParams{0, ScatterReduction::kNone}),
                    "updates");
  EXPECT_ERROR_WITH(net.add_scatter(d, big, u5, ScatterParams{0, ScatterReduction::kNone}), "<=");
  EXPECT_ERROR_WITH(net.add_scatter(b, i, ub, ScatterParams{0, ScatterReduction::kSum}), "bool");
  EXPECT_ERROR_WITH(net.add_scatter(d, u, u, ScatterParams{0, ScatterReduction::kNone}),
                    "i32 or i64");
  EXPECT_ERROR_WITH(net.add_scatter(d, i, u, ScatterParams{2, ScatterReduction::kNone}), "axis");
}

// ================================================================ Padding

/// Source index of output position o along a dim of size n padded by `pre`, per mode, written
/// the way PyTorch documents each mode (-1: the constant).
int64_t pad_source(PaddingMode mode, int64_t o, int64_t pre, int64_t n) {
  int64_t i = o - pre;
  switch (mode) {
    case PaddingMode::kConstant:
      return i >= 0 && i < n ? i : -1;
    case PaddingMode::kReflect:
      while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
      return i;
    case PaddingMode::kReplicate:
      return std::min(std::max<int64_t>(i, 0), n - 1);
    case PaddingMode::kCircular:
      return ((i % n) + n) % n;
  }
  return -1;
}

TestTensor pad_reference(const TestTensor& x, const PaddingParams& p) {
  std::vector<int64_t> out_dims = x.dims;
  for (size_t d = 0; d < out_dims.size(); ++d) out_dims[d] += p.pre[d] + p.post[d];
  const TestTensor fill = TestTensor::floats(x.dtype, {}, {static_cast<float>(p.value)});
  return move_reference(
      x, out_dims,
      [&](const Coord& c) -> int64_t {
        Coord s(c.size());
        for (size_t d = 0; d < c.size(); ++d) {
          s[d] = pad_source(p.mode, c[d], p.pre[d], x.dims[d]);
          if (s[d] < 0) return -1;
        }
        return ravel(s, x.dims);
      },
      &fill);
}

TEST(PaddingLayer, OneDimHandChecked) {
  // torch.nn.functional.pad(tensor([1., 2., 3., 4.]), (2, 1), mode) prints these.
  const TestTensor x = TestTensor::floats(DataType::kF32, {1, 4}, {1, 2, 3, 4});
  const std::vector<std::pair<PaddingMode, std::vector<float>>> cases = {
      {PaddingMode::kConstant, {9, 9, 1, 2, 3, 4, 9}},
      {PaddingMode::kReflect, {3, 2, 1, 2, 3, 4, 3}},
      {PaddingMode::kReplicate, {1, 1, 1, 2, 3, 4, 4}},
      {PaddingMode::kCircular, {3, 4, 1, 2, 3, 4, 1}},
  };
  for (const auto& [mode, expected] : cases) {
    const Network net = one_input(DataType::kF32, {1, 4}, [mode = mode](Network& n, Tensor* in) {
      return n.add_padding(in, PaddingParams{mode, {0, 2}, {0, 1}, 9.0});
    });
    const TestTensor out = run_one(net, {x});
    EXPECT_EQ(out.dims, (std::vector<int64_t>{1, 7}));
    expect_close(out, expected, DataType::kF32,
                 "pad mode " + std::to_string(static_cast<int>(mode)));
  }
}

TEST(PaddingLayer, EveryModeEveryDimSeveralDtypes) {
  for (PaddingMode mode : {PaddingMode::kConstant, PaddingMode::kReflect, PaddingMode::kReplicate,
                           PaddingMode::kCircular}) {
    for (DataType t : {DataType::kF32, DataType::kF16, DataType::kI64, DataType::kBool}) {
      const TestTensor x = random_of(t, {2, 3, 4}, 71);
      const PaddingParams p{mode, {1, 2, 0}, {0, 1, 3}, 1.0};
      const Network net =
          one_input(t, {2, 3, 4}, [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
      expect_same(
          run_one(net, {x}), pad_reference(x, p),
          std::string("pad ") + dtype_name(t) + " mode " + std::to_string(static_cast<int>(mode)));
    }
  }
}

TEST(PaddingLayer, LargeInputsSplitAcrossThreads) {
  const TestTensor x = random_of(DataType::kF32, {4, 32, 30, 30}, 72);
  for (PaddingMode mode : {PaddingMode::kConstant, PaddingMode::kReflect}) {
    const PaddingParams p{mode, {0, 1, 3, 2}, {1, 0, 2, 3}, -1.0};
    const Network net = one_input(DataType::kF32, {4, 32, 30, 30},
                                  [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
    expect_same(run_one(net, {x}), pad_reference(x, p),
                "large pad mode " + std::to_string(static_cast<int>(mode)));
  }
}

/// x transposed by perm (output dim d is input dim perm[d]).
TestTensor permute_reference(const TestTensor& x, const std::vector<int64_t>& perm) {
  std::vector<int64_t> dims;
  for (const int64_t d : perm) dims.push_back(x.dims[static_cast<size_t>(d)]);
  return move_reference(x, dims, [&](const Coord& c) -> int64_t {
    Coord s(c.size());
    for (size_t d = 0; d < c.size(); ++d) s[static_cast<size_t>(perm[d])] = c[d];
    return ravel(s, x.dims);
  });
}

TEST(PaddingLayer, InputPermutationPadsTheTransposedInput) {
  // An NCHW image read as NHWC with its 3 channels padded to 8 (pad_conv_channels' use), and
  // every mode on another permutation, against a transpose followed by the padding.
  for (DataType t : {DataType::kF32, DataType::kF16}) {
    const TestTensor x = random_of(t, {2, 3, 5, 6}, 73);
    PaddingParams p{PaddingMode::kConstant, {0, 0, 0, 0}, {0, 0, 0, 5}, 0.0, {0, 2, 3, 1}};
    const Network net =
        one_input(t, {2, 3, 5, 6}, [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
    EXPECT_EQ(net.outputs()[0]->shape(), (Shape{2, 5, 6, 8}));
    PaddingParams plain = p;
    plain.input_permutation.clear();
    expect_same(run_one(net, {x}), pad_reference(permute_reference(x, p.input_permutation), plain),
                std::string("NCHW image to NHWC, 8 channels ") + dtype_name(t));
  }
  for (PaddingMode mode : {PaddingMode::kConstant, PaddingMode::kReflect, PaddingMode::kReplicate,
                           PaddingMode::kCircular}) {
    const TestTensor x = random_of(DataType::kF32, {3, 4, 5}, 74);
    const PaddingParams p{mode, {1, 0, 2}, {2, 2, 0}, -2.0, {2, 0, 1}};
    const Network net = one_input(DataType::kF32, {3, 4, 5},
                                  [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
    PaddingParams plain = p;
    plain.input_permutation.clear();
    expect_same(run_one(net, {x}), pad_reference(permute_reference(x, p.input_permutation), plain),
                "permuted pad mode " + std::to_string(static_cast<int>(mode)));
  }
  Network bad;
  Tensor* y = bad.add_input("y", DataType::kF32, {2, 3});
  EXPECT_ERROR_WITH(
      bad.add_padding(y, PaddingParams{PaddingMode::kConstant, {0, 0}, {0, 0}, 0.0, {0, 0}}),
      "not a permutation");
  EXPECT_ERROR_WITH(
      bad.add_padding(y, PaddingParams{PaddingMode::kConstant, {0, 0}, {0, 0}, 0.0, {1, 0, 2}}),
      "one entry per dim");
  // The pads apply to the permuted dims: reflect by 3 on output dim 0 pads input dim 1 (3).
  EXPECT_ERROR_WITH(
      bad.add_padding(y, PaddingParams{PaddingMode::kReflect, {3, 0}, {0, 0}, 0.0, {1, 0}}),
      "reflect needs pad < dim");
}

TEST(PaddingLayer, InputShapeViewsTheInputBeforeThePermutation) {
  // An NCHW image read as 2x2 blocks [N, H/2, W/2, 2, 2, C] (pad_conv_channels' space-to-depth)
  // with block padding and C padded from 3 to 4, in f32 and f16, against a reshape, a transpose
  // and the padding; a dynamic batch takes the view's -1; reflect applies to the viewed dims.
  for (DataType t : {DataType::kF32, DataType::kF16}) {
    const TestTensor x = random_of(t, {2, 3, 6, 8}, 75);
    PaddingParams p{PaddingMode::kConstant, {0, 1, 1, 0, 0, 0}, {0, 1, 0, 0, 0, 1}, 0.0,
                    {0, 2, 4, 3, 5, 1}, {-1, 3, 3, 2, 4, 2}};
    const Network net =
        one_input(t, {kN, 3, 6, 8}, [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
    EXPECT_EQ(net.outputs()[0]->shape(), (Shape{kN, 5, 5, 2, 2, 4}));
    TestTensor viewed = x;
    viewed.dims = {2, 3, 3, 2, 4, 2};
    PaddingParams plain = p;
    plain.input_permutation.clear();
    plain.input_shape.clear();
    expect_same(run_one(net, {x}), pad_reference(permute_reference(viewed, p.input_permutation), plain),
                std::string("image as 2x2 blocks ") + dtype_name(t));
  }
  const TestTensor x = random_of(DataType::kF32, {4, 6}, 76);
  const PaddingParams p{PaddingMode::kReflect, {1, 0, 1}, {0, 1, 1}, 0.0, {1, 0, 2}, {2, 2, 6}};
  const Network net =
      one_input(DataType::kF32, {4, 6}, [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
  TestTensor viewed = x;
  viewed.dims = {2, 2, 6};
  PaddingParams plain = p;
  plain.input_permutation.clear();
  plain.input_shape.clear();
  expect_same(run_one(net, {x}), pad_reference(permute_reference(viewed, p.input_permutation), plain),
              "reflect through a view");
  Network bad;
  Tensor* y = bad.add_input("y", DataType::kF32, {2, 6});
  const auto view = [&](std::vector<int64_t> shape) {
    std::vector<int64_t> zeros(shape.size(), 0);
    return bad.add_padding(y, PaddingParams{PaddingMode::kConstant, zeros, zeros, 0.0, {}, shape});
  };
  EXPECT_ERROR_WITH(view({2, 2, 2}), "input_shape [2, 2, 2] must keep the element count");
  EXPECT_ERROR_WITH(view({-1, -1, 3}), "more than one -1");
  EXPECT_ERROR_WITH(view({-2, 6}), "dims must be >= 0 or -1");
  EXPECT_ERROR_WITH(bad.add_padding(y, PaddingParams{PaddingMode::kConstant, {0, 0}, {0, 0}, 0.0,
                                                      {}, {3, 2, 2}}),
                    "pre and post need one entry per input dim (3)");
}

TEST(PaddingLayer, DynamicReflectChecksSizeAtRunTime) {
  // Reflect by 2 on a dim of size n needs n >= 3.
  const PaddingParams p{PaddingMode::kReflect, {2, 1}, {1, 0}, 0.0};
  const Network net = one_input(DataType::kF32, {kN, 3},
                                [&](Network& n, Tensor* in) { return n.add_padding(in, p); });
  EXPECT_EQ(net.outputs()[0]->shape()[0], DimExpr(2) + kN + DimExpr(1));
  for (int64_t n : {3, 6}) {
    const TestTensor x = random_of(DataType::kF32, {n, 3}, static_cast<uint32_t>(n));
    expect_same(run_one(net, {x}), pad_reference(x, p), "reflect n = " + std::to_string(n));
  }
  EXPECT_ERROR_WITH(run_network(net, {random_of(DataType::kF32, {2, 3}, 1)}), "Padding");
}

TEST(PaddingLayer, RejectsBadParameters) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  Tensor* i = net.add_input("i", DataType::kI32, {2, 3});
  EXPECT_ERROR_WITH(net.add_padding(x, PaddingParams{PaddingMode::kReflect, {0, 3}, {0, 0}, 0.0}),
                    "Padding");
  EXPECT_ERROR_WITH(net.add_padding(x, PaddingParams{PaddingMode::kReflect, {0, 0}, {0, 3}, 0.0}),
                    "reflect needs pad < dim");
  EXPECT_ERROR_WITH(net.add_padding(x, PaddingParams{PaddingMode::kCircular, {0, 4}, {0, 0}, 0.0}),
                    "circular needs pad <= dim");
  EXPECT_ERROR_WITH(net.add_padding(x, PaddingParams{PaddingMode::kConstant, {0, -1}, {0, 0}, 0.0}),
                    ">= 0");
  EXPECT_ERROR_WITH(net.add_padding(x, PaddingParams{PaddingMode::kConstant, {0}, {0}, 0.0}),
                    "one entry per input dim");
  EXPECT_ERROR_WITH(net.add_padding(i, PaddingParams{PaddingMode::kConstant, {0, 1}, {0, 0}, NAN}),
                    "cannot be stored");
}

// ================================================================ Resize

ResizeParams resize_params(ResizeMode mode, ResizeCoordinate coord, ResizeRounding rounding,
                           const Shape& output, std::vector<double> scales = {}) {
  ResizeParams p;
  p.mode = mode;
  p.coordinate = coord;
  p.rounding = rounding;
  p.output = output;
  p.scales = std::move(scales);
  return p;
}

TestTensor resize_run(const TestTensor& x, const ResizeParams& p) {
  const Network net = one_input(x.dtype, shape_from_dims(x.dims),
                                [&](Network& n, Tensor* in) { return n.add_resize(in, p); });
  return run_one(net, {x});
}

TestTensor arange_tensor(DataType t, const std::vector<int64_t>& dims) {
  std::vector<float> v(static_cast<size_t>(dims_numel(dims)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i + 1);
  return TestTensor::floats(t, dims, v);
}

TEST(ResizeLayer, NearestMatchesTorchTables) {
  // F.interpolate(torch.arange(5.).view(1, 1, 5), size=3, mode=m): nearest [0, 1, 3],
  // nearest-exact [0, 2, 4].
  const TestTensor x = TestTensor::floats(DataType::kF32, {1, 1, 5}, {0, 1, 2, 3, 4});
  expect_close(resize_run(x, resize_params(ResizeMode::kNearest, ResizeCoordinate::kAsymmetric,
                                           ResizeRounding::kFloor, {1, 1, 3})),
               {0, 1, 3}, DataType::kF32, "nearest 5 -> 3");
  expect_close(resize_run(x, resize_params(ResizeMode::kNearest, ResizeCoordinate::kHalfPixel,
                                           ResizeRounding::kHalfUp, {1, 1, 3})),
               {0, 2, 4}, DataType::kF32, "nearest-exact 5 -> 3");
  // Size 4 with scale_factor 1.7 -> 6: torch maps with 1/1.7, not 4/6.
  const TestTensor y = TestTensor::floats(DataType::kF32, {1, 4}, {0, 1, 2, 3});
  expect_close(resize_run(y, resize_params(ResizeMode::kNearest, ResizeCoordinate::kAsymmetric,
                                           ResizeRounding::kFloor, {1, 6}, {1.0, 1.7})),
               {0, 0, 1, 1, 2, 2}, DataType::kF32, "nearest 4 -> 6 with scale 1.7");
  expect_close(resize_run(y, resize_params(ResizeMode::kNearest, ResizeCoordinate::kAsymmetric,
                                           ResizeRounding::kFloor, {1, 6})),
               {0, 0, 1, 2, 2, 3}, DataType::kF32, "nearest 4 -> 6 by sizes");
  // 2x2 -> 4x4 nearest repeats each value in a 2x2 block.
  expect_close(resize_run(arange_tensor(DataType::kF32, {1, 1, 2, 2}),
                          resize_params(ResizeMode::kNearest, ResizeCoordinate::kAsymmetric,
                                        ResizeRounding::kFloor, {1, 1, 4, 4})),
               {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}, DataType::kF32, "nearest 2x");
}

TEST(ResizeLayer, NearestIntegerDtypesDynamicShape) {
  // Nearest 2x upsampling of [1, c, h, w] with symbolic h and w, for i64 and bool.
  const DimExpr h = DimExpr::symbol("h"), w = DimExpr::symbol("w");
  for (DataType t : {DataType::kI64, DataType::kBool, DataType::kBF16}) {
    const ResizeParams p = resize_params(ResizeMode::kNearest, ResizeCoordinate::kAsymmetric,
                                         ResizeRounding::kFloor, {1, 2, h * 2, w * 3});
    const Network net =
        one_input(t, {1, 2, h, w}, [&](Network& n, Tensor* in) { return n.add_resize(in, p); });
    for (const auto& [hv, wv] : {std::pair<int64_t, int64_t>{2, 3}, {3, 1}}) {
      const TestTensor x = random_of(t, {1, 2, hv, wv}, 81);
      const std::vector<int64_t> od = {1, 2, hv * 2, wv * 3};
      expect_same(run_one(net, {x}),
                  move_reference(x, od,
                                 [&](const Coord& c) {
                                   return ravel({0, c[1], c[2] / 2, c[3] / 3}, x.dims);
                                 }),
                  std::string("nearest ") + dtype_name(t) + " h = " + std::to_string(hv));
    }
  }
}

TEST(ResizeLayer, NearestHalfPixelExactDownsample) {
  // nearest-exact 6 -> 2 picks the centers 1 and 4; 6 -> 4 picks floor((j + .5) * 1.5) = 0,2,3,5.
  const TestTensor x = TestTensor::floats(DataType::kF16, {6}, {0, 1, 2, 3, 4, 5});
  expect_close(resize_run(x, resize_params(ResizeMode::kNearest, ResizeCoordinate::kHalfPixel,
                                           ResizeRounding::kHalfUp, {2})),
               {1, 4}, DataType::kF16, "nearest-exact 6 -> 2");
  expect_close(resize_run(x, resize_params(ResizeMode::kNearest, ResizeCoordinate::kHalfPixel,
                                           ResizeRounding::kHalfUp, {4})),
               {0, 2, 3, 5}, DataType::kF16, "nearest-exact 6 -> 4");
  // Align-corners nearest (ONNX): 6 -> 3 maps 0, 2.5, 5; half-up rounds 2.5 to 3.
  expect_close(resize_run(x, resize_params(ResizeMode::kNearest, ResizeCoordinate::kAlignCorners,
                                           ResizeRounding::kHalfUp, {3})),
               {0, 3, 5}, DataType::kF16, "nearest align-corners 6 -> 3");
}

TEST(ResizeLayer, BilinearMatchesTorchTables) {
  // F.interpolate(tensor([[1., 2.], [3., 4.]])[None, None], size=4, mode="bilinear", ...).
  const TestTensor x = arange_tensor(DataType::kF32, {1, 1, 2, 2});
  expect_close(resize_run(x, resize_params(ResizeMode::kLinear, ResizeCoordinate::kHalfPixel,
                                           ResizeRounding::kFloor, {1, 1, 4, 4})),
               {1.00f, 1.25f, 1.75f, 2.00f, 1.50f, 1.75f, 2.25f, 2.50f,  //
                2.50f, 2.75f, 3.25f, 3.50f, 3.00f, 3.25f, 3.75f, 4.00f},
               DataType::kF32, "bilinear align_corners=False");
  const float t = 1.0f / 3.0f;
  expect_close(resize_run(x, resize_params(ResizeMode::kLinear, ResizeCoordinate::kAlignCorners,
                                           ResizeRounding::kFloor, {1, 1, 4, 4})),
               {1, 1 + t, 1 + 2 * t, 2, 1 + 2 * t, 2, 2 + t, 2 + 2 * t,  //
                2 + t, 2 + 2 * t, 3, 3 + t, 3, 3 + t, 3 + 2 * t, 4},
               DataType::kF32, "bilinear align_corners=True");
}

TEST(ResizeLayer, BicubicMatchesTorchTable) {
  // F.interpolate(tensor([[1., 2.], [3., 4.]])[None, None], size=4, mode="bicubic") (A = -0.75).
  const TestTensor x = arange_tensor(DataType::kF32, {1, 1, 2, 2});
  expect_close(resize_run(x, resize_params(ResizeMode::kCubic, ResizeCoordinate::kHalfPixel,
                                           ResizeRounding::kFloor, {1, 1, 4, 4})),
               {0.68359375f, 1.015625f, 1.5625f, 1.89453125f,  //
                1.34765625f, 1.6796875f, 2.2265625f, 2.55859375f, 2.44140625f, 2.7734375f,
                3.3203125f, 3.65234375f, 3.10546875f, 3.4375f, 3.984375f, 4.31640625f},
               DataType::kF32, "bicubic align_corners=False");
}

// ---- direct (non-separable) evaluation of PyTorch's linear and cubic formulas, in double

struct Tap {
  int64_t index;
  double weight;
};

/// The input positions and weights output j reads along one dim (torch's upsample kernels).
std::vector<Tap> reference_taps(const ResizeParams& p, size_t d, int64_t in, int64_t out,
                                int64_t j) {
  const bool cubic = p.mode == ResizeMode::kCubic;
  if (!cubic && in == out) return {{j, 1.0}};
  double scale;
  if (p.coordinate == ResizeCoordinate::kAlignCorners) {
    scale = out > 1 ? static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0;
  } else {
    scale =
        p.scales.empty() ? static_cast<double>(in) / static_cast<double>(out) : 1.0 / p.scales[d];
  }
  double real = p.coordinate == ResizeCoordinate::kHalfPixel ? scale * (j + 0.5) - 0.5 : scale * j;
  if (!cubic && real < 0) real = 0;
  const int64_t i0 = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
  const double t = std::min(std::max(real - static_cast<double>(i0), 0.0), 1.0);
  const auto clampi = [in](int64_t i) { return std::min(std::max<int64_t>(i, 0), in - 1); };
  if (!cubic) return {{i0, 1.0 - t}, {clampi(i0 + 1), t}};
  const double a = p.cubic_coeff;
  const auto w_near = [a](double x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };
  const auto w_far = [a](double x) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; };
  return {{clampi(i0 - 1), w_far(t + 1)},
          {clampi(i0), w_near(t)},
          {clampi(i0 + 1), w_near(1 - t)},
          {clampi(i0 + 2), w_far(2 - t)}};
}

std::vector<float> interpolate_reference(const TestTensor& x, const ResizeParams& p,
                                         const std::vector<int64_t>& out_dims) {
  const std::vector<float> xv = x.to_floats();
  std::vector<float> out;
  const size_t r = out_dims.size();
  for (int64_t i = 0; i < dims_numel(out_dims); ++i) {
    const Coord c = unravel(i, out_dims);
    std::vector<std::vector<Tap>> taps(r);
    for (size_t d = 0; d < r; ++d) {
      const bool interpolated = p.mode == ResizeMode::kLinear || d + 2 >= r;
      taps[d] = interpolated ? reference_taps(p, d, x.dims[d], out_dims[d], c[d])
                             : std::vector<Tap>{{c[d], 1.0}};
    }
    // Sum over every combination of taps (the tensor product of the 1-D kernels).
    double sum = 0;
    Coord pick(r, 0);
    while (true) {
      double w = 1;
      Coord s(r);
      for (size_t d = 0; d < r; ++d) {
        w *= taps[d][pick[d]].weight;
        s[d] = taps[d][pick[d]].index;
      }
      sum += w * xv[ravel(s, x.dims)];
      size_t d = r;
      while (d-- > 0) {
        if (++pick[d] < static_cast<int64_t>(taps[d].size())) break;
        pick[d] = 0;
      }
      if (d == static_cast<size_t>(-1)) break;
    }
    out.push_back(static_cast<float>(sum));
  }
  return out;
}

TEST(ResizeLayer, LinearAndCubicAgainstDirectFormulas) {
  struct Case {
    ResizeMode mode;
    ResizeCoordinate coord;
    std::vector<int64_t> in, out;
    std::vector<double> scales;
  };
  const std::vector<Case> cases = {
      {ResizeMode::kLinear, ResizeCoordinate::kHalfPixel, {2, 3, 5, 4}, {2, 3, 7, 9}, {}},
      {ResizeMode::kLinear, ResizeCoordinate::kHalfPixel, {1, 2, 8, 8}, {1, 2, 3, 5}, {}},
      {ResizeMode::kLinear, ResizeCoordinate::kAlignCorners, {1, 2, 5, 4}, {1, 2, 9, 3}, {}},
      {ResizeMode::kLinear, ResizeCoordinate::kAlignCorners, {1, 1, 5, 4}, {1, 1, 1, 6}, {}},
      {ResizeMode::kLinear, ResizeCoordinate::kAsymmetric, {1, 1, 3, 4}, {1, 1, 7, 5}, {}},
      {ResizeMode::kLinear, ResizeCoordinate::kHalfPixel, {1, 1, 4}, {1, 1, 6}, {1, 1, 1.7}},
      {ResizeMode::kLinear, ResizeCoordinate::kHalfPixel, {1, 1, 2, 3, 2}, {1, 1, 3, 5, 4}, {}},
      {ResizeMode::kLinear, ResizeCoordinate::kAlignCorners, {1, 1, 2, 2, 3}, {1, 1, 4, 3, 5}, {}},
      {ResizeMode::kCubic, ResizeCoordinate::kHalfPixel, {1, 2, 5, 6}, {1, 2, 9, 4}, {}},
      {ResizeMode::kCubic, ResizeCoordinate::kAlignCorners, {2, 1, 4, 5}, {2, 1, 7, 8}, {}},
      {ResizeMode::kCubic,
       ResizeCoordinate::kHalfPixel,
       {1, 1, 4, 4},
       {1, 1, 6, 8},
       {1, 1, 1.6, 2.0}},
      {ResizeMode::kCubic, ResizeCoordinate::kAsymmetric, {1, 1, 3, 4}, {1, 1, 5, 4}, {}},
  };
  for (DataType t : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    for (const Case& k : cases) {
      const TestTensor x = TestTensor::random(t, k.in, 91);
      const ResizeParams p =
          resize_params(k.mode, k.coord, ResizeRounding::kFloor, shape_from_dims(k.out), k.scales);
      expect_close(resize_run(x, p), interpolate_reference(x, p, k.out), t,
                   std::string(k.mode == ResizeMode::kLinear ? "linear " : "cubic ") +
                       dtype_name(t) + " coord " + std::to_string(static_cast<int>(k.coord)) + " " +
                       dims_to_string(k.in) + " -> " + dims_to_string(k.out));
    }
  }
}

TEST(ResizeLayer, DynamicBilinear) {
  const DimExpr h = DimExpr::symbol("h");
  const ResizeParams p = resize_params(ResizeMode::kLinear, ResizeCoordinate::kHalfPixel,
                                       ResizeRounding::kFloor, {1, 1, h * 2, 6});
  const Network net = one_input(DataType::kF32, {1, 1, h, 3},
                                [&](Network& n, Tensor* in) { return n.add_resize(in, p); });
  for (int64_t hv : {2, 5}) {
    const TestTensor x = TestTensor::random(DataType::kF32, {1, 1, hv, 3}, 92);
    expect_close(run_one(net, {x}), interpolate_reference(x, p, {1, 1, hv * 2, 6}), DataType::kF32,
                 "dynamic bilinear h = " + std::to_string(hv));
  }
}

TEST(ResizeLayer, RejectsBadParameters) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {1, 1, 4, 4});
  Tensor* i = net.add_input("i", DataType::kI32, {1, 1, 4, 4});
  Tensor* e = net.add_input("e", DataType::kF32, {1, 0});
  const auto nearest = [](const Shape& out) {
    return resize_params(ResizeMode::kNearest, ResizeCoordinate::kAsymmetric,
                         ResizeRounding::kFloor, out);
  };
  EXPECT_ERROR_WITH(net.add_resize(x, nearest({1, 8, 8})), "Resize");
  EXPECT_ERROR_WITH(net.add_resize(x, nearest({1, 1, -8, 8})), ">= 0");
  EXPECT_ERROR_WITH(net.add_resize(e, nearest({1, 3})), "empty");
  ResizeParams p = nearest({1, 1, 8, 8});
  p.scales = {1, 1, 2};
  EXPECT_ERROR_WITH(net.add_resize(x, p), "one entry per dim");
  p.scales = {1, 1, 0, 2};
  EXPECT_ERROR_WITH(net.add_resize(x, p), "> 0");
  p = resize_params(ResizeMode::kLinear, ResizeCoordinate::kHalfPixel, ResizeRounding::kFloor,
                    {1, 1, 8, 8});
  EXPECT_ERROR_WITH(net.add_resize(i, p), "f32, f16 or bf16");
  p = resize_params(ResizeMode::kCubic, ResizeCoordinate::kHalfPixel, ResizeRounding::kFloor,
                    {1, 2, 8, 8});
  EXPECT_ERROR_WITH(net.add_resize(x, p), "cubic resize keeps leading");
}

// ================================================================ Fill

TEST(FillLayer, ConstantEveryDtype) {
  for (DataType t : kAllTypes) {
    Network net;
    net.mark_output(net.add_fill(FillParams{FillOp::kConstant, {2, 3}, t, 3.0, 0, 1})->output());
    const auto outs = run_network(net, {});
    ASSERT_EQ(outs.size(), 1u);
    const std::vector<int64_t> expected(6, t == DataType::kBool ? 1 : 3);
    expect_equal_ints(outs[0], expected, std::string("fill ") + dtype_name(t));
  }
  Network net;
  net.mark_output(
      net.add_fill(FillParams{FillOp::kConstant, {4}, DataType::kF16, -2.5, 0, 1})->output());
  expect_close(run_network(net, {})[0], {-2.5f, -2.5f, -2.5f, -2.5f}, DataType::kF16, "fill f16");
}

TEST(FillLayer, ArangeWithSymbolicLength) {
  // arange(n) style fills whose length comes from an input's symbolic dim.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {kN});
  net.mark_output(net.add_identity(x)->output());
  net.mark_output(
      net.add_fill(FillParams{FillOp::kArange, {kN}, DataType::kI64, 0, 3, -2})->output());
  net.mark_output(
      net.add_fill(FillParams{FillOp::kArange, {kN * 2}, DataType::kF32, 0, 0.5, 0.25})->output());
  net.mark_output(
      net.add_fill(FillParams{FillOp::kArange, {kN}, DataType::kI32, 0, 1.0, 1.5})->output());
  for (int64_t n : {3, 7}) {
    const auto outs = run_network(net, {random_of(DataType::kF32, {n}, 1)});
    ASSERT_EQ(outs.size(), 4u);
    std::vector<int64_t> ints, trunc;
    std::vector<float> floats;
    for (int64_t i = 0; i < n; ++i) {
      ints.push_back(3 - 2 * i);
      trunc.push_back(static_cast<int64_t>(1.0 + 1.5 * static_cast<double>(i)));
    }
    for (int64_t i = 0; i < 2 * n; ++i) floats.push_back(0.5f + 0.25f * static_cast<float>(i));
    expect_equal_ints(outs[1], ints, "arange i64 n = " + std::to_string(n));
    expect_close(outs[2], floats, DataType::kF32, "arange f32 n = " + std::to_string(n));
    expect_equal_ints(outs[3], trunc, "arange i32 with fractional step n = " + std::to_string(n));
  }
}

TEST(FillLayer, RejectsBadParameters) {
  Network net;
  EXPECT_ERROR_WITH(net.add_fill(FillParams{FillOp::kArange, {2, 3}, DataType::kF32, 0, 0, 1}),
                    "Fill");
  EXPECT_ERROR_WITH(net.add_fill(FillParams{FillOp::kArange, {2, 3}, DataType::kF32, 0, 0, 1}),
                    "rank-1");
  EXPECT_ERROR_WITH(net.add_fill(FillParams{FillOp::kArange, {3}, DataType::kBool, 0, 0, 1}),
                    "bool");
  EXPECT_ERROR_WITH(net.add_fill(FillParams{FillOp::kArange, {3}, DataType::kF32, 0, INFINITY, 1}),
                    "finite");
  EXPECT_ERROR_WITH(net.add_fill(FillParams{FillOp::kConstant, {3}, DataType::kI32, NAN, 0, 1}),
                    "cannot be stored");
  EXPECT_ERROR_WITH(net.add_fill(FillParams{FillOp::kConstant, {-3}, DataType::kF32, 0, 0, 1}),
                    ">= 0");
}

}  // namespace
}  // namespace ember::engine::test
