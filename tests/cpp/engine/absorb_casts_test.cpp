// The builder's absorb_casts pass: an f32 layer norm or softmax between a cast up from f16/bf16
// and a cast back (autocast's pattern) runs on the low-precision tensors; a softmax, and a norm
// whose scale and bias the low-precision type holds exactly, give the same bits; other scale
// and bias values are rounded to that type, within its tolerance; patterns that differ are left
// alone.
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

/// x [2, 5, 16] of `low` -> Cast f32 -> LayerNorm (f32 constant scale and bias) -> reshape
/// [10, 16] -> Cast `down`. `exact`: scale and bias values that f16 and bf16 hold exactly.
void autocast_norm(Network& net, DataType low, DataType down, bool exact) {
  Tensor* x = net.add_input("x", low, {2, 5, 16});
  Tensor* up = net.add_cast(x, DataType::kF32, "up")->output();
  std::vector<float> scale(16), bias(16);
  const std::vector<float> r = TestTensor::random(DataType::kF32, {32}, 7).to_floats();
  for (int i = 0; i < 16; ++i) {
    scale[i] = exact ? 0.25f * static_cast<float>(i % 7 - 3) : r[i];
    bias[i] = exact ? 0.125f * static_cast<float>(i % 5) : r[16 + i];
  }
  Tensor* s =
      net.add_constant(Weights::from_vector(DataType::kF32, {16}, scale), "scale")->output();
  Tensor* b = net.add_constant(Weights::from_vector(DataType::kF32, {16}, bias), "bias")->output();
  NormalizationParams p;
  p.axis = 2;
  Tensor* n = net.add_normalization(up, s, b, p, "ln")->output();
  Tensor* r2 = net.add_reshape(n, {10, 16}, "view")->output();
  net.mark_output(net.add_cast(r2, down, "down")->output(), "out");
}

TEST(AbsorbCasts, AutocastLayerNormRunsOnTheLowPrecisionTensor) {
  for (DataType low : {DataType::kF16, DataType::kBF16}) {
    for (bool exact : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(low)) + (exact ? " exact scale" : " rounded scale"));
      Network net;
      autocast_norm(net, low, low, exact);
      Network rewritten = net.clone();
      EXPECT_EQ(absorb_casts(rewritten), 1);
      EXPECT_EQ(count(rewritten, LayerKind::kCast), 0);
      ASSERT_EQ(count(rewritten, LayerKind::kNormalization), 1);
      for (const Layer* l : rewritten.layers()) {
        if (l->kind() == LayerKind::kNormalization || l->kind() == LayerKind::kShuffle) {
          EXPECT_EQ(l->output()->dtype(), low) << l->name();
        }
      }
      const std::vector<TestTensor> ins = {TestTensor::random(low, {2, 5, 16}, 11, -3, 3)};
      const auto want = test::run_network_direct(net, ins);
      const auto got = test::run_network_direct(rewritten, ins);
      if (exact) {
        EXPECT_TRUE(got[0].bytes == want[0].bytes);
      } else {
        test::expect_close(got[0], want[0].to_floats(), low, "rounded scale and bias");
      }
      test::run_network(net, ins);  // through the builder (the pass on) against the reference
    }
  }
}

TEST(AbsorbCasts, SoftmaxBetweenCastsHasTheSameBits) {
  for (DataType low : {DataType::kF16, DataType::kBF16}) {
    SCOPED_TRACE(dtype_name(low));
    Network net;
    Tensor* x = net.add_input("x", low, {2, 3, 8});
    Tensor* up = net.add_cast(x, DataType::kF32, "up")->output();
    SoftMaxParams sp;
    sp.axis = 2;
    Tensor* sm = net.add_layer(sp, {up}, "softmax")->output();
    Tensor* t = net.add_transpose(sm, {0, 2, 1}, "t")->output();
    net.mark_output(net.add_cast(t, low, "down")->output(), "out");
    Network rewritten = net.clone();
    EXPECT_EQ(absorb_casts(rewritten), 1);
    EXPECT_EQ(count(rewritten, LayerKind::kCast), 0);
    const std::vector<TestTensor> ins = {TestTensor::random(low, {2, 3, 8}, 12, -4, 4)};
    EXPECT_TRUE(test::run_network_direct(rewritten, ins)[0].bytes ==
                test::run_network_direct(net, ins)[0].bytes);
    test::run_network(net, ins);
  }
}

TEST(AbsorbCasts, AnUpCastReadElsewhereStays) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {4, 16});
  Tensor* up = net.add_cast(x, DataType::kF32, "up")->output();
  NormalizationParams p;
  Tensor* n = net.add_normalization(up, nullptr, nullptr, p, "ln")->output();
  net.mark_output(net.add_cast(n, DataType::kF16, "down")->output(), "normed");
  net.mark_output(net.add_unary(up, UnaryOp::kExp, "exp")->output(), "other");
  EXPECT_EQ(absorb_casts(net), 1);
  EXPECT_EQ(count(net, LayerKind::kCast), 1);  // the up-cast, for exp
  EXPECT_EQ(net.outputs()[0]->dtype(), DataType::kF16);
  EXPECT_EQ(net.outputs()[0]->producer()->kind(), LayerKind::kNormalization);
}

// A group norm with a scale and no bias (per channel: [C]), a slice on the way down, and a
// log-softmax: each runs on the f16 tensor; the norm within f16's tolerance (its scale rounded),
// the log-softmax bit for bit.
TEST(AbsorbCasts, GroupNormWithAScaleOnlyAndLogSoftmaxThroughASlice) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {2, 4, 6});
  Tensor* up = net.add_cast(x, DataType::kF32, "up")->output();
  const std::vector<float> scale = TestTensor::random(DataType::kF32, {4}, 21).to_floats();
  Tensor* s = net.add_constant(Weights::from_vector(DataType::kF32, {4}, scale), "gamma")->output();
  NormalizationParams p;
  p.type = NormalizationType::kGroup;
  p.num_groups = 2;
  Tensor* n = net.add_normalization(up, s, nullptr, p, "gn")->output();
  Tensor* cut = net.add_slice(n, {DimExpr(0), DimExpr(1), DimExpr(0)},
                              {DimExpr(2), DimExpr(2), DimExpr(6)}, {1, 1, 1}, "cut")->output();
  net.mark_output(net.add_cast(cut, DataType::kF16, "down")->output(), "normed");
  Tensor* up2 = net.add_cast(x, DataType::kF32, "up2")->output();
  SoftMaxParams sp;
  sp.axis = 2;
  sp.log = true;
  Tensor* ls = net.add_layer(sp, {up2}, "log_softmax")->output();
  net.mark_output(net.add_cast(ls, DataType::kF16, "down2")->output(), "logp");
  Network rewritten = net.clone();
  EXPECT_EQ(absorb_casts(rewritten), 2);
  EXPECT_EQ(count(rewritten, LayerKind::kCast), 0);
  const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF16, {2, 4, 6}, 22, -3, 3)};
  const auto want = test::run_network_direct(net, ins);
  const auto got = test::run_network_direct(rewritten, ins);
  test::expect_close(got[0], want[0].to_floats(), DataType::kF16, "group norm");
  EXPECT_TRUE(got[1].bytes == want[1].bytes);
  test::run_network(net, ins);
}

// A scale that f16 cannot hold (1e5 -> inf) keeps the norm in f32.
TEST(AbsorbCasts, AScaleOutOfRangeKeepsTheNormInF32) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {4, 8});
  Tensor* up = net.add_cast(x, DataType::kF32, "up")->output();
  const std::vector<float> big(8, 1e5f);
  Tensor* s = net.add_constant(Weights::from_vector(DataType::kF32, {8}, big), "gamma")->output();
  Tensor* n = net.add_normalization(up, s, nullptr, NormalizationParams{}, "ln")->output();
  net.mark_output(net.add_cast(n, DataType::kF16, "down")->output(), "out");
  EXPECT_EQ(absorb_casts(net), 0);
  EXPECT_EQ(count(net, LayerKind::kCast), 2);
  EXPECT_EQ(count(net, LayerKind::kConstant), 1);  // no narrowed copy left behind
}

/// An f32 layer norm (no scale or bias) of an input x [4, 16] of `in`, cast up first unless f32.
Tensor* f32_norm(Network& net, DataType in) {
  Tensor* x = net.add_input("x", in, {4, 16});
  if (in != DataType::kF32) x = net.add_cast(x, DataType::kF32, "up")->output();
  return net.add_normalization(x, nullptr, nullptr, NormalizationParams{}, "ln")->output();
}

TEST(AbsorbCasts, OtherPatternsAreLeftAlone) {
  struct Case {
    const char* what;
    void (*build)(Network&);
  };
  const std::vector<Case> cases = {
      {"down to another type",
       [](Network& net) { autocast_norm(net, DataType::kF16, DataType::kBF16, true); }},
      {"an f32 input, not a cast",
       [](Network& net) {
         Tensor* n = f32_norm(net, DataType::kF32);
         net.mark_output(net.add_cast(n, DataType::kF16, "down")->output(), "out");
       }},
      {"the f32 result read twice",
       [](Network& net) {
         Tensor* n = f32_norm(net, DataType::kF16);
         net.mark_output(net.add_cast(n, DataType::kF16, "down")->output(), "out");
         net.mark_output(net.add_unary(n, UnaryOp::kExp, "exp")->output(), "f32");
       }},
      {"an f32 layer between the norm and the down-cast",
       [](Network& net) {
         Tensor* e = net.add_unary(f32_norm(net, DataType::kF16), UnaryOp::kExp, "exp")->output();
         net.mark_output(net.add_cast(e, DataType::kF16, "down")->output(), "out");
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Network net;
    c.build(net);
    const int layers = static_cast<int>(net.layers().size());
    EXPECT_EQ(absorb_casts(net), 0);
    EXPECT_EQ(static_cast<int>(net.layers().size()), layers);
  }
}

}  // namespace
}  // namespace ember::engine
