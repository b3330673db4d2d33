// The builder's compose_row_moves pass: Swin's cyclic shift (two gathers) and window partition
// (reshape, transpose, reshape), and the way back, each become one Gather of rows with the same
// bytes; a chain that keeps every row becomes a reshape; one copy alone, moves of the last dim
// and symbolic shapes stay as they are.
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

Tensor* index_constant(Network& net, const std::vector<int32_t>& v) {
  return net.add_constant(Weights::from_vector(DataType::kI32, {static_cast<int64_t>(v.size())}, v))
      ->output();
}

/// torch.roll(t, shift, dim) as gather_slices leaves it: one Gather along `dim`.
Tensor* roll(Network& net, Tensor* t, int64_t dim, int64_t shift, const std::string& name) {
  const int64_t n = t->shape()[static_cast<size_t>(dim)].constant();
  std::vector<int32_t> idx;
  for (int64_t i = 0; i < n; ++i) idx.push_back(static_cast<int32_t>(((i - shift) % n + n) % n));
  GatherParams gp;
  gp.axis = dim;
  return net.add_gather(t, index_constant(net, idx), gp, name)->output();
}

Tensor* reshape(Network& net, Tensor* t, const std::vector<int64_t>& dims, const std::string& name) {
  return net.add_reshape(t, Shape(dims.begin(), dims.end()), name)->output();
}

/// A shifted Swin block's data movement around a stand-in for the attention (exp):
/// x [B, 8, 8, C] -> roll(-2, -2) -> 4x4 windows [B * 4, 16, C] -> exp -> windows back -> roll
/// (2, 2) -> out.
Network swin_block(DataType dt, int64_t b, int64_t c) {
  Network net;
  Tensor* x = net.add_input("x", dt, {b, 8, 8, c});
  Tensor* t = roll(net, roll(net, x, 1, -2, "roll_h"), 2, -2, "roll_w");
  t = reshape(net, t, {b, 2, 4, 2, 4, c}, "view");
  t = net.add_transpose(t, {0, 1, 3, 2, 4, 5}, "partition")->output();
  t = reshape(net, t, {b * 4, 16, c}, "windows");
  t = net.add_unary(t, UnaryOp::kExp, "attention")->output();
  t = reshape(net, t, {b, 2, 2, 4, 4, c}, "view_back");
  t = net.add_transpose(t, {0, 1, 3, 2, 4, 5}, "reverse")->output();
  t = reshape(net, t, {b, 8, 8, c}, "image");
  t = roll(net, roll(net, t, 1, 2, "unroll_h"), 2, 2, "unroll_w");
  net.mark_output(t, "out");
  return net;
}

TEST(ComposeRowMoves, SwinShiftAndWindowsBecomeOneGatherEachWay) {
  for (DataType dt : fused_cases::kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Network net = swin_block(dt, 2, 4);
    Network rewritten = net.clone();
    int kept = -1;
    EXPECT_EQ(compose_row_moves(rewritten, &kept), 2);
    EXPECT_EQ(kept, 0);
    EXPECT_EQ(count(rewritten, LayerKind::kGather), 2);
    // Only reshapes are left around the gathers: no transposes.
    for (const Layer* l : rewritten.layers()) {
      if (l->kind() == LayerKind::kShuffle) EXPECT_TRUE(is_pure_reshape(l)) << l->name();
      if (l->kind() == LayerKind::kGather) {
        // The same table for every image: along dim 1 of [B, 64, C], 64 entries.
        EXPECT_EQ(l->params_as<GatherParams>().axis, 1) << l->name();
        EXPECT_EQ(constant_of(l->input(1))->numel(), 64) << l->name();
      }
    }
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 8, 8, 4}, 1, -2, 2)};
    EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes ==
                test::run_network_direct(net, ins)[0].bytes);
    test::run_network(net, ins);  // through the builder (the pass on) against the reference
  }
}

TEST(ComposeRowMoves, ChainsThatKeepEveryRowBecomeAReshape) {
  // Swin's last stage: one 7x7 window over a 7x7 map, so the partition's transpose swaps two
  // dims of size 1 and moves no row.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {2, 7, 7, 8});
  Tensor* t = reshape(net, x, {2, 1, 7, 1, 7, 8}, "view");
  t = net.add_transpose(t, {0, 1, 3, 2, 4, 5}, "partition")->output();
  t = reshape(net, t, {2, 49, 8}, "windows");
  net.mark_output(net.add_unary(t, UnaryOp::kExp, "exp")->output(), "out");
  Network rewritten = net.clone();
  int kept = -1;
  EXPECT_EQ(compose_row_moves(rewritten, &kept), 1);
  EXPECT_EQ(kept, 1);
  EXPECT_EQ(count(rewritten, LayerKind::kGather), 0);
  for (const Layer* l : rewritten.layers()) {
    if (l->kind() == LayerKind::kShuffle) EXPECT_TRUE(is_pure_reshape(l)) << l->name();
  }
  const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF16, {2, 7, 7, 8}, 2)};
  EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes ==
              test::run_network_direct(net, ins)[0].bytes);
}

TEST(ComposeRowMoves, RowsAcrossTheLeadingDimTakeOneTable) {
  // A gather along dim 0 then a transpose of the first two dims: the rows do not repeat per
  // image, so one table over all rows (dim 0 of [rows, C]).
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {3, 5, 4});
  Tensor* t = roll(net, x, 0, 1, "roll_b");
  t = net.add_transpose(t, {1, 0, 2}, "swap")->output();
  net.mark_output(net.add_unary(t, UnaryOp::kExp, "exp")->output(), "out");
  Network rewritten = net.clone();
  EXPECT_EQ(compose_row_moves(rewritten), 1);
  ASSERT_EQ(count(rewritten, LayerKind::kGather), 1);
  for (const Layer* l : rewritten.layers()) {
    if (l->kind() != LayerKind::kGather) continue;
    EXPECT_EQ(l->params_as<GatherParams>().axis, 0);
    EXPECT_EQ(constant_of(l->input(1))->numel(), 15);
  }
  const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF32, {3, 5, 4}, 3)};
  EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes ==
              test::run_network_direct(net, ins)[0].bytes);
}

TEST(ComposeRowMoves, OneCopyLastDimMovesAndSymbolicShapesStay) {
  auto unchanged = [](Network& net, const std::string& what) {
    const size_t layers = net.layers().size();
    EXPECT_EQ(compose_row_moves(net), 0) << what;
    EXPECT_EQ(net.layers().size(), layers) << what;
  };
  {  // a window partition alone: one transpose, a copy either way
    Network net;
    Tensor* x = net.add_input("x", DataType::kF16, {2, 8, 8, 4});
    Tensor* t = reshape(net, x, {2, 2, 4, 2, 4, 4}, "view");
    t = net.add_transpose(t, {0, 1, 3, 2, 4, 5}, "partition")->output();
    net.mark_output(reshape(net, t, {8, 16, 4}, "windows"), "out");
    unchanged(net, "one transpose");
  }
  {  // a roll, then a transpose that moves the last dim: not a row move, so one copy each
    Network net;
    Tensor* x = net.add_input("x", DataType::kF16, {2, 8, 4});
    Tensor* t = roll(net, x, 1, 3, "roll");
    net.mark_output(net.add_transpose(t, {0, 2, 1}, "to_channels")->output(), "out");
    unchanged(net, "last dim moved");
  }
  {  // the roll's result is also a network output: the chain stops there
    Network net;
    Tensor* x = net.add_input("x", DataType::kF16, {2, 8, 8, 4});
    Tensor* t = roll(net, x, 1, 3, "roll_h");
    net.mark_output(t, "rolled");
    net.mark_output(roll(net, t, 2, 3, "roll_w"), "out");
    unchanged(net, "output in the middle");
  }
  {  // symbolic batch
    Network net;
    Tensor* x = net.add_input("x", DataType::kF16, {DimExpr::symbol("n"), 8, 8, 4});
    Tensor* t = roll(net, roll(net, x, 1, 3, "roll_h"), 2, 3, "roll_w");
    net.mark_output(t, "out");
    unchanged(net, "symbolic batch");
  }
}

/// Swin's shifted block around a linear stand-in for its out-projection: x [B, 8, 8, C] into
/// 4x4 windows [B * 4, 16, C] (a transpose), a matrix product to D columns, the windows back and
/// the reverse roll, then + r (the residual) -> out.
Network swin_projection(DataType dt, int64_t b, int64_t c, int64_t d) {
  Network net;
  Tensor* x = net.add_input("x", dt, {b, 8, 8, c});
  Tensor* t = reshape(net, x, {b, 2, 4, 2, 4, c}, "view");
  t = net.add_transpose(t, {0, 1, 3, 2, 4, 5}, "partition")->output();
  t = reshape(net, t, {b * 4, 16, c}, "windows");
  const TestTensor w = TestTensor::random(dt, {c, d}, 9, -0.5f, 0.5f);
  Tensor* wt = net.add_constant(Weights::copy(dt, {c, d}, w.bytes.data()), "w")->output();
  t = net.add_matrix_multiply(t, false, wt, false, "proj")->output();
  t = reshape(net, t, {b, 2, 2, 4, 4, d}, "view_back");
  t = net.add_transpose(t, {0, 1, 3, 2, 4, 5}, "reverse")->output();
  t = reshape(net, t, {b, 8, 8, d}, "image");
  t = roll(net, roll(net, t, 1, 2, "unroll_h"), 2, 2, "unroll_w");
  Tensor* r = net.add_input("r", dt, {b, 8, 8, d});
  net.mark_output(net.add_elementwise(t, r, ElementWiseOp::kSum, "residual")->output(), "out");
  return net;
}

TEST(ComposeRowMoves, RowMovesAfterAProductMoveBeforeIt) {
  // The reverse windows and roll after the product join the partition before it (one gather of
  // C-wide rows instead of a transpose before the product and three moves of D-wide rows after
  // it), and the residual add then follows the product directly.
  for (DataType dt : {DataType::kF32, DataType::kF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Network net = swin_projection(dt, 2, 8, 12);
    Network rewritten = net.clone();
    int kept = 0, sunk = 0;
    EXPECT_EQ(compose_row_moves(rewritten, &kept, &sunk), 1);
    EXPECT_EQ(sunk, 1);
    EXPECT_EQ(kept, 0);
    EXPECT_EQ(count(rewritten, LayerKind::kGather), 1);
    for (const Layer* l : rewritten.layers()) {  // no transposes left
      if (l->kind() == LayerKind::kShuffle) EXPECT_TRUE(is_pure_reshape(l)) << l->name();
    }
    const Layer* add = nullptr;
    for (const Layer* l : rewritten.layers()) {
      if (l->kind() == LayerKind::kElementWise) add = l;
    }
    ASSERT_NE(add, nullptr);
    const Layer* before = add->input(0)->producer();
    while (before != nullptr && is_pure_reshape(before)) before = before->input(0)->producer();
    ASSERT_NE(before, nullptr);
    EXPECT_EQ(before->kind(), LayerKind::kMatrixMultiply);  // the add follows the product
    const std::vector<TestTensor> ins{TestTensor::random(dt, {2, 8, 8, 8}, 5),
                                      TestTensor::random(dt, {2, 8, 8, 12}, 6)};
    const auto got = test::run_network_direct(rewritten, ins);
    const auto want = test::run_network_direct(net, ins);
    test::expect_close(got[0], want[0].to_floats(), dt, "rows moved before the product");
  }
  // Through the builder: the residual joins the product (fuse_epilogues_after_row_moves).
  const Network net = swin_projection(DataType::kF16, 3, 8, 16);
  EXPECT_TRUE(test::build_logs(net, 2,
                               "fuse_epilogues_after_row_moves: 0 scale/shift folds into "
                               "convolution or matmul weights or scales, 0 matmul scales, 0 matmul "
                               "biases, "
                               "1 residual adds"));
  test::run_network(net, {TestTensor::random(DataType::kF16, {3, 8, 8, 8}, 7),
                          TestTensor::random(DataType::kF16, {3, 8, 8, 16}, 8)});
}

TEST(ComposeRowMoves, ProductsStayWhenNothingBeforeThemMovesRows) {
  // The product's input is a network input (no row move before it): the roll after it stays
  // after it (moving it would add a copy of the input's rows, not join one).
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {2, 8, 8});
  const TestTensor w = TestTensor::random(DataType::kF16, {8, 8}, 9);
  Tensor* wt = net.add_constant(Weights::copy(DataType::kF16, {8, 8}, w.bytes.data()))->output();
  Tensor* t = net.add_matrix_multiply(x, false, wt, false, "proj")->output();
  net.mark_output(roll(net, roll(net, t, 1, 2, "roll_a"), 1, 3, "roll_b"), "out");
  int kept = 0, sunk = 0;
  EXPECT_EQ(compose_row_moves(net, &kept, &sunk), 1);  // the two rolls still compose
  EXPECT_EQ(sunk, 0);
  // Behind a reshape alone (no copy to join) the rolls stay after the product too.
  Network behind_reshape;
  Tensor* y = behind_reshape.add_input("y", DataType::kF16, {2, 4, 2, 8});
  Tensor* wy =
      behind_reshape.add_constant(Weights::copy(DataType::kF16, {8, 8}, w.bytes.data()))->output();
  Tensor* u = reshape(behind_reshape, y, {2, 8, 8}, "flat");
  u = behind_reshape.add_matrix_multiply(u, false, wy, false, "proj")->output();
  behind_reshape.mark_output(
      roll(behind_reshape, roll(behind_reshape, u, 1, 2, "roll_a"), 1, 3, "roll_b"), "out");
  EXPECT_EQ(compose_row_moves(behind_reshape, &kept, &sunk), 1);
  EXPECT_EQ(sunk, 0);
}

TEST(ComposeRowMoves, TheBuilderRunsItAtLevelTwo) {
  const Network net = swin_block(DataType::kF16, 3, 8);
  EXPECT_TRUE(test::build_logs(net, 2, "compose_row_moves: 2 chains"));
  test::run_network(net, {TestTensor::random(DataType::kF16, {3, 8, 8, 8}, 4)});
}

}  // namespace
}  // namespace ember::engine
