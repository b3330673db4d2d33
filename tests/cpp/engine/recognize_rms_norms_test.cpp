// The builder's recognize_rms_norms pass: RMSNorm written out as layers (Hugging Face's T5 and
// Qwen2 forms, and a plain f32 one) becomes one Normalization of type kRms whose result is
// within one rounding of the written-out network's; near misses are left alone.
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

Tensor* scalar(Network& net, float v) {
  return net.add_constant(Weights::from_vector(DataType::kF32, {}, std::vector<float>{v}))
      ->output();
}

Tensor* weight(Network& net, DataType t, int64_t d) {
  std::vector<float> w;
  for (int64_t i = 0; i < d; ++i) w.push_back(0.5f + 0.0625f * static_cast<float>(i % 9));
  return net.add_constant(from_floats(t, {d}, w), "w")->output();
}

enum class Form {
  kT5,     ///< cast up, pow 2, mean, + eps, rsqrt, x' * r (x' a second cast), cast down, w * y
  kQwen2,  ///< cast up, pow 2, mean, + eps, rsqrt, c * r, cast down, w * y
  kPlain,  ///< an f32 model: x * x, mean, + eps, rsqrt, r * x, y * w
};

/// x [3, 5, 32] of `t` -> RMSNorm written out as `form` -> out.
Network written_out(Form form, DataType t, bool with_weight = true) {
  Network net;
  Tensor* x = net.add_input("x", t, {3, 5, 32});
  Tensor* c = form == Form::kPlain ? x : net.add_cast(x, DataType::kF32, "up")->output();
  Tensor* sq = form == Form::kPlain
                   ? net.add_elementwise(c, c, ElementWiseOp::kProd, "sq")->output()
                   : net.add_elementwise(c, scalar(net, 2.0f), ElementWiseOp::kPow, "pow")->output();
  Tensor* ms = net.add_reduce(sq, ReduceOp::kAvg, {2}, true, "mean")->output();
  Tensor* r = net.add_unary(net.add_elementwise(ms, scalar(net, 1e-6f), ElementWiseOp::kSum,
                                                "add_eps")
                                ->output(),
                            UnaryOp::kRsqrt, "rsqrt")
                  ->output();
  Tensor* c2 = form == Form::kT5 ? net.add_cast(x, DataType::kF32, "up2")->output() : c;
  Tensor* y = form == Form::kPlain
                  ? net.add_elementwise(r, c2, ElementWiseOp::kProd, "scaled")->output()
                  : net.add_elementwise(c2, r, ElementWiseOp::kProd, "scaled")->output();
  if (form != Form::kPlain) y = net.add_cast(y, t, "down")->output();
  if (with_weight) {
    y = form == Form::kPlain
            ? net.add_elementwise(y, weight(net, t, 32), ElementWiseOp::kProd, "w_mul")->output()
            : net.add_elementwise(weight(net, t, 32), y, ElementWiseOp::kProd, "w_mul")->output();
  }
  net.mark_output(y, "y");
  return net;
}

TEST(RecognizeRmsNorms, HuggingFaceFormsBecomeOneNormalization) {
  struct Case {
    Form form;
    DataType t;
    bool with_weight;
    std::string what;
  };
  for (const Case& c : std::vector<Case>{{Form::kT5, DataType::kF16, true, "T5 f16"},
                                         {Form::kQwen2, DataType::kF16, true, "Qwen2 f16"},
                                         {Form::kQwen2, DataType::kBF16, true, "Qwen2 bf16"},
                                         {Form::kQwen2, DataType::kF16, false, "no weight"},
                                         {Form::kPlain, DataType::kF32, true, "f32"},
                                         {Form::kT5, DataType::kF32, true, "T5 f32"}}) {
    SCOPED_TRACE(c.what);
    const Network net = written_out(c.form, c.t, c.with_weight);
    Network rewritten = net.clone();
    EXPECT_EQ(recognize_rms_norms(rewritten), 1);
    EXPECT_EQ(count(rewritten, LayerKind::kReduce), 0);
    EXPECT_EQ(count(rewritten, LayerKind::kElementWise), 0);
    EXPECT_EQ(count(rewritten, LayerKind::kUnary), 0);
    ASSERT_EQ(count(rewritten, LayerKind::kNormalization), 1);
    for (const Layer* l : rewritten.layers()) {
      if (l->kind() != LayerKind::kNormalization) continue;
      const auto& p = l->params_as<NormalizationParams>();
      EXPECT_EQ(p.type, NormalizationType::kRms);
      EXPECT_EQ(p.axis, 2);
      EXPECT_FLOAT_EQ(static_cast<float>(p.epsilon), 1e-6f);
      EXPECT_EQ(l->input(1) != nullptr, c.with_weight);
    }
    EXPECT_EQ(rewritten.outputs()[0]->dtype(), c.t);
    const std::vector<TestTensor> ins = {TestTensor::random(c.t, {3, 5, 32}, 61, -2.0f, 3.0f)};
    const auto want = test::run_network_direct(net, ins);
    const auto got = test::run_network_direct(rewritten, ins);
    test::expect_close(got[0], want[0].to_floats(), c.t, "one norm against the written-out form");
    // Through the builder: the pass, then absorb_casts moves the f32 norm onto the 16-bit
    // tensor (no cast left).
    EXPECT_TRUE(test::build_logs(net, 3, "recognize_rms_norms: 1 "));
    test::run_network(net, ins);
  }
}

TEST(RecognizeRmsNorms, NearMissesAreLeftAlone) {
  auto build = [](bool keep_dims, std::vector<int64_t> axes, float exponent, bool eps_input) {
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {3, 5, 32});
    Tensor* e = eps_input ? net.add_input("eps", DataType::kF32, {1}) : scalar(net, 1e-6f);
    Tensor* sq =
        net.add_elementwise(x, scalar(net, exponent), ElementWiseOp::kPow, "pow")->output();
    Tensor* ms = net.add_reduce(sq, ReduceOp::kAvg, axes, keep_dims, "mean")->output();
    Tensor* r =
        net.add_unary(net.add_elementwise(ms, e, ElementWiseOp::kSum, "add")->output(),
                      UnaryOp::kRsqrt, "rsqrt")
            ->output();
    net.mark_output(net.add_elementwise(x, r, ElementWiseOp::kProd, "scaled")->output(), "y");
    return net;
  };
  Network good = build(true, {2}, 2.0f, false);
  EXPECT_EQ(recognize_rms_norms(good), 1);
  Network cube = build(true, {2}, 3.0f, false);  // mean of cubes
  EXPECT_EQ(recognize_rms_norms(cube), 0);
  Network middle = build(true, {1}, 2.0f, false);  // not the trailing dims
  EXPECT_EQ(recognize_rms_norms(middle), 0);
  Network computed_eps = build(true, {2}, 2.0f, true);
  EXPECT_EQ(recognize_rms_norms(computed_eps), 0);
  // The squares also read elsewhere: the mean's input is not the pass's to take.
  Network shared;
  Tensor* x = shared.add_input("x", DataType::kF32, {3, 5, 32});
  Tensor* sq = shared.add_elementwise(x, x, ElementWiseOp::kProd, "sq")->output();
  Tensor* ms = shared.add_reduce(sq, ReduceOp::kAvg, {2}, true, "mean")->output();
  Tensor* r = shared.add_unary(shared.add_elementwise(ms, scalar(shared, 1e-6f),
                                                      ElementWiseOp::kSum, "add")
                                   ->output(),
                               UnaryOp::kRsqrt, "rsqrt")
                  ->output();
  shared.mark_output(shared.add_elementwise(x, r, ElementWiseOp::kProd, "scaled")->output(), "y");
  shared.mark_output(sq, "squares");
  EXPECT_EQ(recognize_rms_norms(shared), 0);
  // The product by the rsqrt reads another tensor than the one squared.
  Network other;
  Tensor* a = other.add_input("a", DataType::kF32, {3, 5, 32});
  Tensor* b = other.add_input("b", DataType::kF32, {3, 5, 32});
  Tensor* msa = other.add_reduce(other.add_elementwise(a, a, ElementWiseOp::kProd)->output(),
                                 ReduceOp::kAvg, {2}, true, "mean")
                    ->output();
  Tensor* ra = other.add_unary(other.add_elementwise(msa, scalar(other, 1e-6f),
                                                     ElementWiseOp::kSum)
                                   ->output(),
                               UnaryOp::kRsqrt)
                   ->output();
  other.mark_output(other.add_elementwise(b, ra, ElementWiseOp::kProd)->output(), "y");
  EXPECT_EQ(recognize_rms_norms(other), 0);
}

}  // namespace
}  // namespace ember::engine
