// The builder's gather_slices pass: rotate_half (a concatenation of negated and plain last-dim
// slices of one tensor) becomes one Gather and a +-1 product with the same bits, and the
// product joins the RoPE's pointwise layers in fuse_pointwise; a roll along other dims becomes
// a Gather per dim; concatenations that are not such slices stay as they are.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "builder/passes/passes.h"
#include "fused_pointwise_cases.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using fused_cases::count;
using test::TestTensor;

/// x[..., start : start + size] of a rank-3 tensor with last dim `width`.
Tensor* last_slice(Network& net, Tensor* x, int64_t start, int64_t size, const std::string& name) {
  const Shape& s = x->shape();
  return net.add_slice(x, {DimExpr(0), DimExpr(0), DimExpr(start)}, {s[0], s[1], DimExpr(size)},
                       {1, 1, 1}, name)->output();
}

/// q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q[..., h:], q[..., :h]).
void rope(Network& net, DataType dt, int64_t width) {
  Tensor* q = net.add_input("q", dt, {2, 5, width});
  Tensor* c = net.add_input("cos", dt, {5, width});
  Tensor* s = net.add_input("sin", dt, {5, width});
  const int64_t h = width / 2;
  Tensor* x1 = last_slice(net, q, 0, h, "x1");
  Tensor* x2 = last_slice(net, q, h, h, "x2");
  Tensor* neg = net.add_unary(x2, UnaryOp::kNeg, "neg")->output();
  Tensor* rot = net.add_concatenation({neg, x1}, 2, "cat")->output();
  Tensor* a = net.add_elementwise(q, c, ElementWiseOp::kProd, "q_cos")->output();
  Tensor* b = net.add_elementwise(rot, s, ElementWiseOp::kProd, "rot_sin")->output();
  net.mark_output(net.add_elementwise(a, b, ElementWiseOp::kSum, "rope")->output(), "out");
}

std::vector<TestTensor> rope_inputs(DataType dt, int64_t width) {
  return {TestTensor::random(dt, {2, 5, width}, 1, -2, 2), TestTensor::random(dt, {5, width}, 2),
          TestTensor::random(dt, {5, width}, 3)};
}

TEST(GatherSlices, RotateHalfBecomesOneGatherWithTheSameBits) {
  for (DataType dt : fused_cases::kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Network net;
    rope(net, dt, 16);
    Network rewritten = net.clone();
    int identities = -1;
    EXPECT_EQ(gather_slices(rewritten, &identities), 1);
    EXPECT_EQ(identities, 0);
    EXPECT_EQ(count(rewritten, LayerKind::kGather), 1);
    EXPECT_EQ(count(rewritten, LayerKind::kSlice), 0);
    EXPECT_EQ(count(rewritten, LayerKind::kConcatenation), 0);
    EXPECT_EQ(count(rewritten, LayerKind::kUnary), 0);
    const auto ins = rope_inputs(dt, 16);
    const auto want = test::run_network_direct(net, ins);
    EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes == want[0].bytes);
    // The +-1 product joins the RoPE's products in one FusedPointwise layer.
    fuse_pointwise_layers(rewritten, nullptr, nullptr);
    EXPECT_EQ(count(rewritten, LayerKind::kFusedPointwise), 1);
    EXPECT_EQ(count(rewritten, LayerKind::kElementWise), 0);
    EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes == want[0].bytes);
    test::run_network(net, ins);  // through the builder (the pass on) against the reference
  }
}

TEST(GatherSlices, RollsAlongMiddleDimsBecomeGathers) {
  // torch.roll(x, (-3, -2), (1, 2)) as exported (Swin's cyclic shift over [B, H, W, C]): per
  // dim, two slices and a concatenation. Each becomes one Gather along that dim, same bits.
  for (DataType dt : fused_cases::kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Network net;
    Tensor* x = net.add_input("x", dt, {2, 7, 6, 4});
    auto roll = [&](Tensor* t, size_t dim, int64_t shift, const std::string& name) {
      const Shape& s = t->shape();
      const int64_t n = s[dim].constant();
      std::vector<DimExpr> start(4, DimExpr(0)), head(s.begin(), s.end()), tail(s.begin(), s.end());
      start[dim] = DimExpr(shift);
      head[dim] = DimExpr(n - shift);
      tail[dim] = DimExpr(shift);
      Tensor* a = net.add_slice(t, start, head, {1, 1, 1, 1}, name + "_a")->output();
      Tensor* b = net.add_slice(t, std::vector<DimExpr>(4, DimExpr(0)), tail, {1, 1, 1, 1},
                                name + "_b")->output();
      return net.add_concatenation({a, b}, static_cast<int64_t>(dim), name)->output();
    };
    Tensor* y = roll(roll(x, 1, 3, "roll_h"), 2, 2, "roll_w");
    net.mark_output(net.add_unary(y, UnaryOp::kExp, "exp")->output(), "out");
    Network rewritten = net.clone();
    EXPECT_EQ(gather_slices(rewritten), 2);
    EXPECT_EQ(count(rewritten, LayerKind::kGather), 2);
    EXPECT_EQ(count(rewritten, LayerKind::kSlice), 0);
    EXPECT_EQ(count(rewritten, LayerKind::kConcatenation), 0);
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 7, 6, 4}, 1)};
    EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes ==
                test::run_network_direct(net, ins)[0].bytes);
    test::run_network(net, ins);  // through the builder (the pass on) against the reference
  }
}

TEST(GatherSlices, PiecesThatRebuildTheTensorAreTheTensor) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8});
  Tensor* cat = net.add_concatenation({last_slice(net, x, 0, 3, "a"), last_slice(net, x, 3, 5, "b")},
                                      2, "cat")->output();
  net.mark_output(net.add_unary(cat, UnaryOp::kExp, "exp")->output(), "out");
  int identities = 0;
  EXPECT_EQ(gather_slices(net, &identities), 1);
  EXPECT_EQ(identities, 1);
  EXPECT_EQ(count(net, LayerKind::kGather), 0);
  EXPECT_EQ(count(net, LayerKind::kSlice), 0);
  EXPECT_EQ(net.layers().back()->input(0), x);
}

TEST(GatherSlices, OtherConcatenationsStay) {
  auto unchanged = [](const std::string& what, auto build) {
    SCOPED_TRACE(what);
    Network net;
    build(net);
    const size_t before = net.layers().size();
    EXPECT_EQ(gather_slices(net), 0);
    EXPECT_EQ(net.layers().size(), before);
  };
  unchanged("slices of two tensors", [](Network& net) {
    Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8});
    Tensor* y = net.add_input("y", DataType::kF32, {2, 3, 8});
    net.mark_output(net.add_concatenation({last_slice(net, x, 0, 4, "a"),
                                           last_slice(net, y, 4, 4, "b")}, 2, "cat")->output(), "o");
  });
  unchanged("a strided slice", [](Network& net) {
    Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8});
    Tensor* a = net.add_slice(x, {DimExpr(0), DimExpr(0), DimExpr(0)},
                              {DimExpr(2), DimExpr(3), DimExpr(4)}, {1, 1, 2}, "a")->output();
    net.mark_output(net.add_concatenation({a, last_slice(net, x, 0, 4, "b")}, 2, "cat")->output(),
                    "o");
  });
  unchanged("a slice that cuts another dim", [](Network& net) {
    Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8});
    Tensor* a = net.add_slice(x, {DimExpr(0), DimExpr(1), DimExpr(0)},
                              {DimExpr(2), DimExpr(2), DimExpr(4)}, {1, 1, 1}, "a")->output();
    Tensor* b = net.add_slice(x, {DimExpr(0), DimExpr(0), DimExpr(4)},
                              {DimExpr(2), DimExpr(2), DimExpr(4)}, {1, 1, 1}, "b")->output();
    net.mark_output(net.add_concatenation({a, b}, 2, "cat")->output(), "o");
  });
  unchanged("a concatenation along another dim", [](Network& net) {
    Tensor* x = net.add_input("x", DataType::kF32, {2, 4, 8});
    Tensor* a = net.add_slice(x, {DimExpr(0), DimExpr(0), DimExpr(0)},
                              {DimExpr(2), DimExpr(4), DimExpr(8)}, {1, 1, 1}, "a")->output();
    net.mark_output(net.add_concatenation({a, x}, 1, "cat")->output(), "o");
  });
  unchanged("a plain input among the pieces", [](Network& net) {
    Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8});
    Tensor* y = net.add_input("y", DataType::kF32, {2, 3, 4});
    net.mark_output(net.add_concatenation({last_slice(net, x, 0, 4, "a"), y}, 2, "cat")->output(),
                    "o");
  });
}

TEST(GatherSlices, TheBuilderRunsItAtLevelTwo) {
  Network net;
  rope(net, DataType::kF16, 8);
  EXPECT_TRUE(test::build_logs(net, 2, "gather_slices: 1 concatenations"));
  test::run_network(net, rope_inputs(DataType::kF16, 8));
}

}  // namespace
}  // namespace ember::engine
