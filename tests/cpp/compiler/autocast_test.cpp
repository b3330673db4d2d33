// The autocast lowering pass (lowering/passes/autocast.cpp) as before/after IR text: which nodes
// stay f32 under each setting, where casts go, and that redundant cast pairs vanish.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "ember/compiler/ir.h"
#include "ember/compiler/lowering.h"

namespace ember::compiler {
namespace {

std::string canonical(const std::string& text) { return Graph::parse(text).to_string(); }

CompileSettings autocast_on() {
  CompileSettings s;
  s.enable_autocast = true;
  return s;
}

// Runs autocast on `before`, compares with `after`, returns the report.
AutocastReport expect_autocast(const std::string& before, const CompileSettings& s,
                               const std::string& after) {
  Graph g = Graph::parse(before);
  AutocastReport r = lower_autocast(g, s);
  EXPECT_EQ(g.to_string(), canonical(after));
  EXPECT_EQ(Graph::parse(g.to_string()).to_string(), g.to_string());
  return r;
}

// conv -> relu -> linear -> softmax: the compute runs in f16, softmax stays f32 by the rule
// table, the graph input and output keep f32, the weights become f16 constants.
const char* kConvNet = R"(
graph(%x: f32[2, 3, 8, 8]):
  constant %w: f32[4, 3, 3, 3]
  constant %fw: f32[10, 256]
  %conv = aten::convolution(%x, %w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) : f32[2, 4, 8, 8]
  %relu = aten::relu(%conv) : f32[2, 4, 8, 8]
  %flat = aten::view(%relu, [2, 256]) : f32[2, 256]
  %fc = aten::linear(%flat, %fw, None) : f32[2, 10]
  %sm = aten::_softmax(%fc, 1, False) : f32[2, 10]
  return (%sm)
)";

TEST(LowerAutocast, ComputeInF16SoftmaxStaysF32) {
  const AutocastReport r = expect_autocast(kConvNet, autocast_on(), R"(
graph(%x: f32[2, 3, 8, 8]):
  constant %w: f32[4, 3, 3, 3]
  constant %fw: f32[10, 256]
  %x_f16 = aten::_to_copy(%x, dtype(f16), None, None, None, False, None) : f16[2, 3, 8, 8]
  constant %w_f16: f16[4, 3, 3, 3]
  %conv = aten::convolution(%x_f16, %w_f16, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) : f16[2, 4, 8, 8]
  %relu = aten::relu(%conv) : f16[2, 4, 8, 8]
  %flat = aten::view(%relu, [2, 256]) : f16[2, 256]
  constant %fw_f16: f16[10, 256]
  %fc = aten::linear(%flat, %fw_f16, None) : f16[2, 10]
  %fc_f32 = aten::_to_copy(%fc, dtype(f32), None, None, None, False, None) : f32[2, 10]
  %sm = aten::_softmax(%fc_f32, 1, False) : f32[2, 10]
  return (%sm)
)");
  EXPECT_EQ(r.lowered, 4);  // conv, relu, view (follows), linear
  EXPECT_EQ(r.casts, 2);
  ASSERT_EQ(r.kept.size(), 1u);
  EXPECT_EQ(r.kept[0].op, "aten::_softmax");
  EXPECT_NE(r.kept[0].reason.find("rule table (softmax)"), std::string::npos) << r.kept[0].reason;
}

TEST(LowerAutocast, Bf16AndGraphOutputsKeepTheirDtype) {
  CompileSettings s = autocast_on();
  s.autocast_low_precision_type = "bf16";
  expect_autocast(R"(
graph(%x: f32[4], %y: f32[4]):
  %a = aten::mul.Tensor(%x, %y) : f32[4]
  %b = aten::relu(%a) : f32[4]
  return (%b, %a)
)",
                  s, R"(
graph(%x: f32[4], %y: f32[4]):
  %x_bf16 = aten::_to_copy(%x, dtype(bf16), None, None, None, False, None) : bf16[4]
  %y_bf16 = aten::_to_copy(%y, dtype(bf16), None, None, None, False, None) : bf16[4]
  %a = aten::mul.Tensor(%x_bf16, %y_bf16) : bf16[4]
  %b = aten::relu(%a) : bf16[4]
  %b_f32 = aten::_to_copy(%b, dtype(f32), None, None, None, False, None) : f32[4]
  %a_f32 = aten::_to_copy(%a, dtype(f32), None, None, None, False, None) : f32[4]
  return (%b_f32, %a_f32)
)");
}

TEST(LowerAutocast, ExcludedNodesMatchNameOrModulePath) {
  Graph g = Graph::parse(kConvNet);
  for (Node* n : g.nodes()) {
    n->set_fx_name(n->output()->name());
    if (n->op() == "aten::linear") n->set_module("head.fc", {"torch.nn.modules.linear.Linear"});
  }
  CompileSettings s = autocast_on();
  s.autocast_excluded_nodes = {"^conv$", "^head\\."};
  const AutocastReport r = lower_autocast(g, s);
  // conv and fc stay f32; relu and the view between them run in f16.
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%x: f32[2, 3, 8, 8]):
  constant %w: f32[4, 3, 3, 3]
  constant %fw: f32[10, 256]
  %conv = aten::convolution(%x, %w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) : f32[2, 4, 8, 8] {fx="conv", out_fx=[""]}
  %conv_f16 = aten::_to_copy(%conv, dtype(f16), None, None, None, False, None) : f16[2, 4, 8, 8]
  %relu = aten::relu(%conv_f16) : f16[2, 4, 8, 8] {fx="relu", out_fx=[""]}
  %flat = aten::view(%relu, [2, 256]) : f16[2, 256] {fx="flat", out_fx=[""]}
  %flat_f32 = aten::_to_copy(%flat, dtype(f32), None, None, None, False, None) : f32[2, 256]
  %fc = aten::linear(%flat_f32, %fw, None) : f32[2, 10] {fx="fc", module="head.fc", module_types=["torch.nn.modules.linear.Linear"], out_fx=[""]}
  %sm = aten::_softmax(%fc, 1, False) : f32[2, 10] {fx="sm", out_fx=[""]}
  return (%sm)
)"));
  ASSERT_EQ(r.kept.size(), 3u);
  EXPECT_EQ(r.kept[0].node, "conv");
  EXPECT_EQ(r.kept[0].reason, "autocast_excluded_nodes: '^conv$' matches 'conv'");
  EXPECT_EQ(r.kept[1].node, "fc");
  EXPECT_EQ(r.kept[1].reason, "autocast_excluded_nodes: '^head\\.' matches 'head.fc'");
  EXPECT_EQ(r.kept[2].node, "sm");
}

TEST(LowerAutocast, ExcludedOpsByNameOrOverload) {
  const std::string before = R"(
graph(%x: f32[4], %y: f32[4]):
  %a = aten::add.Tensor(%x, %y) : f32[4]
  %m = aten::mul.Tensor(%a, %y) : f32[4]
  return (%m)
)";
  for (const std::string pattern : {"aten::add", "aten::add.Tensor"}) {
    CompileSettings s = autocast_on();
    s.autocast_excluded_ops = {pattern};
    const AutocastReport r = expect_autocast(before, s, R"(
graph(%x: f32[4], %y: f32[4]):
  %a = aten::add.Tensor(%x, %y) : f32[4]
  %a_f16 = aten::_to_copy(%a, dtype(f16), None, None, None, False, None) : f16[4]
  %y_f16 = aten::_to_copy(%y, dtype(f16), None, None, None, False, None) : f16[4]
  %m = aten::mul.Tensor(%a_f16, %y_f16) : f16[4]
  %m_f32 = aten::_to_copy(%m, dtype(f32), None, None, None, False, None) : f32[4]
  return (%m_f32)
)");
    ASSERT_EQ(r.kept.size(), 1u);
    EXPECT_EQ(r.kept[0].reason, "autocast_excluded_ops: '" + pattern + "'");
  }
  // Another overload of the op is not excluded by an overload pattern.
  CompileSettings s = autocast_on();
  s.autocast_excluded_ops = {"aten::add.Scalar"};
  Graph g = Graph::parse(before);
  EXPECT_TRUE(lower_autocast(g, s).kept.empty());
}

TEST(LowerAutocast, MaxDepthOfReduction) {
  const std::string before = R"(
graph(%a: f32[s0, 64], %b: f32[s0, 4096]):
  constant %w1: f32[8, 64]
  constant %w2: f32[8, 4096]
  %p = aten::linear(%a, %w1, None) : f32[s0, 8]
  %q = aten::linear(%b, %w2, None) : f32[s0, 8]
  %r = aten::mean.dim(%b, [1], False, None) : f32[s0]
  return (%p, %q, %r)
)";
  CompileSettings s = autocast_on();
  s.autocast_max_depth_of_reduction = 1024;
  Graph g = Graph::parse(before);
  g.symbols().push_back({"s0", SymbolRange{1, 4, 64}});
  const AutocastReport r = lower_autocast(g, s);
  ASSERT_EQ(r.kept.size(), 2u);
  EXPECT_EQ(r.kept[0].op, "aten::linear");
  EXPECT_EQ(r.kept[0].reason, "reduces over 4096 elements > autocast_max_depth_of_reduction 1024");
  EXPECT_EQ(r.kept[1].op, "aten::mean.dim");
  EXPECT_EQ(r.lowered, 1);  // the 64-deep linear
  // Without the limit every one of them runs in f16.
  Graph g2 = Graph::parse(before);
  EXPECT_EQ(lower_autocast(g2, autocast_on()).lowered, 3);
}

TEST(LowerAutocast, CalibratedMagnitudeThreshold) {
  const std::string before = R"(
graph(%x: f32[4]):
  %big = aten::mul.Tensor(%x, 1000.0) : f32[4]
  %small = aten::div.Tensor(%big, 1000.0) : f32[4]
  %out = aten::relu(%small) : f32[4]
  return (%out)
)";
  Graph g = Graph::parse(before);
  for (Node* n : g.nodes()) n->output()->set_fx_name(n->output()->name());
  g.inputs()[0]->set_fx_name("x");
  CompileSettings s = autocast_on();
  s.autocast_output_magnitudes = {{"x", 3.0}, {"big", 3000.0}, {"small", 3.0}, {"out", 3.0}};
  const AutocastReport r = lower_autocast(g, s);
  // mul writes 3000 > 512 and div reads it: both stay f32; relu runs in f16.
  // Each cast carries the fx name of the value it copies (engine boundaries name it).
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%x: f32[4] {fx="x"}):
  %big = aten::mul.Tensor(%x, 1000.0) : f32[4] {out_fx=["big"]}
  %small = aten::div.Tensor(%big, 1000.0) : f32[4] {out_fx=["small"]}
  %small_f16 = aten::_to_copy(%small, dtype(f16), None, None, None, False, None) : f16[4] {out_fx=["small"]}
  %out = aten::relu(%small_f16) : f16[4] {out_fx=["out"]}
  %out_f32 = aten::_to_copy(%out, dtype(f32), None, None, None, False, None) : f32[4] {out_fx=["out"]}
  return (%out_f32)
)"));
  ASSERT_EQ(r.kept.size(), 2u);
  EXPECT_EQ(r.kept[0].reason,
            "max |x| of output 'big' on the calibration inputs is 3000 > "
            "autocast_max_output_threshold 512");
  EXPECT_EQ(r.kept[1].reason,
            "max |x| of input 'big' on the calibration inputs is 3000 > "
            "autocast_max_output_threshold 512");
  // A higher threshold lowers all three.
  Graph g2 = Graph::parse(before);
  for (Node* n : g2.nodes()) n->output()->set_fx_name(n->output()->name());
  s.autocast_max_output_threshold = 4000;
  EXPECT_EQ(lower_autocast(g2, s).lowered, 3);
}

TEST(LowerAutocast, TorchDtypeAndFxNamesSurviveForBoundaries) {
  Graph g = Graph::parse(R"(
graph(%x: f32[4]):
  %a = aten::relu(%x) : f32[4]
  %e = aten::exp(%a) : f32[4]
  return (%e)
)");
  g.inputs()[0]->set_fx_name("x");
  for (Node* n : g.nodes()) {
    n->set_fx_name(n->output()->name());
    n->output()->set_fx_name(n->output()->name());
  }
  lower_autocast(g, autocast_on());
  const Value* a = g.find_value("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype(), ScalarType::kF16);
  EXPECT_EQ(a->torch_dtype(), ScalarType::kF32);  // an engine output casts back for PyTorch
  EXPECT_EQ(a->fx_name(), "a");
  EXPECT_EQ(g.find_value("x_f16")->fx_name(), "x");
  EXPECT_EQ(g.find_value("a_f32")->fx_name(), "a");
  EXPECT_EQ(g.find_value("e")->dtype(), ScalarType::kF32);
}

TEST(LowerAutocast, RedundantCastPairsAreBypassed) {
  // The model computes in f16 itself and widens for a sum: autocast would cast the widened
  // value back to f16 for the relu; it reads the f16 original instead.
  expect_autocast(R"(
graph(%h: f16[4]):
  %w = aten::_to_copy(%h, dtype(f32), None, None, None, False, None) : f32[4]
  %r = aten::relu(%w) : f32[4]
  return (%r)
)",
                  autocast_on(), R"(
graph(%h: f16[4]):
  %w = aten::_to_copy(%h, dtype(f32), None, None, None, False, None) : f32[4]
  %r = aten::relu(%h) : f16[4]
  %r_f32 = aten::_to_copy(%r, dtype(f32), None, None, None, False, None) : f32[4]
  return (%r_f32)
)");
  // The standalone pass: f16 -> f32 -> f16 is the identity; f32 -> f16 -> f32 is not.
  Graph g = Graph::parse(R"(
graph(%h: f16[4], %f: f32[4]):
  %w = aten::_to_copy(%h, dtype(f32), None, None, None, False, None) : f32[4]
  %back = aten::_to_copy(%w, dtype(f16), None, None, None, False, None) : f16[4]
  %n = aten::_to_copy(%f, dtype(f16), None, None, None, False, None) : f16[4]
  %up = aten::_to_copy(%n, dtype(f32), None, None, None, False, None) : f32[4]
  return (%back, %up)
)");
  EXPECT_EQ(lower_remove_cast_pairs(g), 1);
  lower_remove_dead_code(g);
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%h: f16[4], %f: f32[4]):
  %n = aten::_to_copy(%f, dtype(f16), None, None, None, False, None) : f16[4]
  %up = aten::_to_copy(%n, dtype(f32), None, None, None, False, None) : f32[4]
  return (%h, %up)
)"));
}

TEST(LowerAutocast, IntegerNodesAndModelDtypesAreLeftAlone) {
  const std::string text = R"(
graph(%i: i64[4], %x: f32[4]):
  %j = aten::add.Tensor(%i, %i) : i64[4]
  %f = aten::_to_copy(%j, dtype(f32), None, None, None, False, None) : f32[4]
  %g = aten::gt.Scalar(%x, 0.0) : bool[4]
  return (%f, %g)
)";
  const AutocastReport r = expect_autocast(text, autocast_on(), text);
  EXPECT_EQ(r.lowered, 0);
  EXPECT_TRUE(r.kept.empty());
}

TEST(LowerAutocast, PipelineRunsItAfterTheRounds) {
  Graph g = Graph::parse(kConvNet);
  const LoweringReport r = lower(g, autocast_on());
  ASSERT_GE(r.log.size(), 3u);
  EXPECT_EQ(r.log[r.log.size() - 3],
            "autocast: 4 nodes in f16, 1 kept in f32, 2 casts inserted, 0 redundant cast pairs "
            "bypassed");
  EXPECT_EQ(r.autocast.kept.size(), 1u);
  // Off: the pipeline does not touch precision.
  Graph off = Graph::parse(kConvNet);
  lower(off, CompileSettings{});
  EXPECT_EQ(off.find_value("conv")->dtype(), ScalarType::kF32);
}

TEST(LowerAutocast, BadSettingsAreClearErrors) {
  Graph g = Graph::parse(kConvNet);
  CompileSettings s = autocast_on();
  s.autocast_low_precision_type = "i8";
  EXPECT_THROW(
      {
        try {
          lower_autocast(g, s);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("must be f16 or bf16, got 'i8'"), std::string::npos);
          throw;
        }
      },
      Error);
  s = autocast_on();
  s.autocast_excluded_nodes = {"conv("};
  EXPECT_THROW(
      {
        try {
          lower_autocast(g, s);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("'conv(' is not a valid regular expression"),
                    std::string::npos);
          throw;
        }
      },
      Error);
}

TEST(LowerAutocast, RuleTableHasOneRowPerOp) {
  std::set<std::string> seen;
  for (const AutocastRule& r : autocast_rules()) {
    EXPECT_TRUE(seen.insert(r.op).second) << r.op << " listed twice";
    EXPECT_EQ(r.op.find('.'), std::string::npos) << r.op << ": rules name ops, not overloads";
    EXPECT_FALSE(r.why.empty());
  }
  EXPECT_TRUE(seen.count("aten::_softmax") && seen.count("aten::native_layer_norm") &&
              seen.count("aten::exp") && seen.count("aten::sum"));
}

}  // namespace
}  // namespace ember::compiler
