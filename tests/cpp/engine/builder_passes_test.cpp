// Each builder pass alone, on a BuildState prepared by hand.
#include <gtest/gtest.h>

#include "builder/passes/passes.h"
#include "test_util.h"

namespace ember::engine {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

BuildState state_for(const Network& net, std::vector<OptimizationProfile> profiles = {}) {
  BuildState s;
  s.config.profiles = std::move(profiles);
  s.plan.network = net.clone();
  return s;
}

TEST(BuilderPasses, ValidateNeedsOutputsProfilesAndKnownBackend) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 4});
  Layer* r = net.add_activation(x, ActivationType::kRelu, 0, 0, "r");
  {
    BuildState s = state_for(net);
    EXPECT_NE(error_of([&] { pass_validate(s); }).find("no outputs"), std::string::npos);
  }
  net.mark_output(r->output(), "y");
  {
    BuildState s = state_for(net);
    const std::string e = error_of([&] { pass_validate(s); });
    EXPECT_NE(e.find("no optimization profile"), std::string::npos) << e;
  }
  {
    BuildState s = state_for(net, {OptimizationProfile().set_range("m", 1, 2, 3)});
    const std::string e = error_of([&] { pass_validate(s); });
    EXPECT_NE(e.find("symbol 'n'"), std::string::npos) << e;
  }
  {
    BuildState s = state_for(net, {OptimizationProfile().set_dimensions("x", {1, 5}, {2, 5}, {3, 5})});
    const std::string e = error_of([&] { pass_validate(s); });
    EXPECT_NE(e.find("dim 1 is the constant 4"), std::string::npos) << e;
  }
  {
    BuildState s = state_for(net, {OptimizationProfile().set_range("n", 1, 2, 3)});
    s.config.backend = "tpu";
    EXPECT_NE(error_of([&] { pass_validate(s); }).find("'tpu' is not built"), std::string::npos);
  }
  BuildState s = state_for(net, {OptimizationProfile().set_dimensions("x", {1, 4}, {8, 4}, {16, 4})});
  pass_validate(s);
  EXPECT_EQ(s.plan.profiles[0].ranges().at("n").max, 16);
}

TEST(BuilderPasses, InferShapesProvesOrKeepsChecksAndRejectsBadProfiles) {
  Network net;
  const DimExpr a = DimExpr::symbol("a"), b = DimExpr::symbol("b");
  Tensor* x = net.add_input("x", DataType::kF32, {a, 4});
  Tensor* y = net.add_input("y", DataType::kF32, {b, 4});
  Layer* add = net.add_elementwise(x, y, ElementWiseOp::kSum, "add");
  net.mark_output(add->output(), "z");
  ASSERT_EQ(add->shape_checks().size(), 1u);  // a and b must broadcast: unknown until run time
  {
    // a in [2, 8], b in [3, 8]: at the min corner 2 vs 3 do not broadcast.
    BuildState s = state_for(net, {OptimizationProfile().set_range("a", 2, 4, 8).set_range("b", 3, 4, 8)});
    pass_validate(s);
    const std::string e = error_of([&] { pass_infer_shapes(s); });
    EXPECT_NE(e.find("ElementWise 'add'"), std::string::npos) << e;
    EXPECT_NE(e.find("profile 0"), std::string::npos) << e;
  }
  {
    BuildState s = state_for(net, {OptimizationProfile().set_range("a", 4, 4, 8).set_range("b", 4, 4, 8)});
    pass_validate(s);
    pass_infer_shapes(s);
    EXPECT_NE(s.log.back().find("1 left for run time"), std::string::npos) << s.log.back();
  }
}

TEST(BuilderPasses, InferShapesRejectsNegativeDims) {
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF32, {n});
  Layer* sl = net.add_slice(x, {0}, {n - 3}, {1}, "tail");
  net.mark_output(sl->output(), "y");
  BuildState s = state_for(net, {OptimizationProfile().set_range("n", 1, 8, 16)});
  pass_validate(s);
  const std::string e = error_of([&] { pass_infer_shapes(s); });
  EXPECT_NE(e.find("Slice 'tail'"), std::string::npos) << e;
  EXPECT_NE(e.find("negative"), std::string::npos) << e;
}

TEST(BuilderPasses, FoldConstantsReplacesConstantSubgraphs) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 2});
  Layer* c1 = net.add_constant(Weights::from_vector<float>(DataType::kF32, {2, 2}, {1, 2, 3, 4}), "c1");
  Layer* c2 = net.add_constant(Weights::from_vector<float>(DataType::kF32, {2, 2}, {10, 20, 30, 40}), "c2");
  Layer* sum = net.add_elementwise(c1->output(), c2->output(), ElementWiseOp::kSum, "csum");
  Layer* neg = net.add_unary(sum->output(), UnaryOp::kNeg, "cneg");
  Layer* shp = net.add_shape(x, "xshape");
  Layer* out = net.add_elementwise(x, neg->output(), ElementWiseOp::kProd, "out");
  net.mark_output(out->output(), "y");
  net.mark_output(shp->output(), "s");
  BuildState s = state_for(net);
  pass_validate(s);
  pass_infer_shapes(s);
  pass_fold_constants(s);
  pass_remove_dead_layers(s);
  const Network& n = s.plan.network;
  EXPECT_EQ(n.find_layer("csum"), nullptr);
  EXPECT_EQ(n.find_layer("cneg"), nullptr);
  EXPECT_EQ(n.find_layer("xshape"), nullptr);
  const Layer* folded = n.find_layer("cneg#folded");
  ASSERT_NE(folded, nullptr);
  const Weights& w = folded->params_as<ConstantParams>().weights;
  ASSERT_EQ(w.numel(), 4);
  EXPECT_FLOAT_EQ(w.as<float>()[0], -11.0f);
  EXPECT_FLOAT_EQ(w.as<float>()[3], -44.0f);
  // The whole network still computes the same thing.
  const auto in = test::TestTensor::floats(DataType::kF32, {2, 2}, {1, 1, 2, 2});
  const auto outs = test::run_network(net, {in});
  test::expect_close(outs[0], {-11, -22, -66, -88}, DataType::kF32, "folded network");
  test::expect_equal_ints(outs[1], {2, 2}, "folded shape");
}

TEST(BuilderPasses, RemoveDeadLayersKeepsOnlyWhatReachesOutputs) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  Layer* used = net.add_activation(x, ActivationType::kRelu, 0, 0, "used");
  Layer* dead1 = net.add_activation(x, ActivationType::kTanh, 0, 0, "dead1");
  net.add_unary(dead1->output(), UnaryOp::kExp, "dead2");
  net.mark_output(used->output(), "y");
  BuildState s = state_for(net);
  pass_remove_dead_layers(s);
  EXPECT_EQ(s.plan.network.layers().size(), 1u);
  EXPECT_NE(s.plan.network.find_layer("used"), nullptr);
}

TEST(BuilderPasses, PlanMemoryReusesMemoryWithoutOverlappingLiveTensors) {
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF32, {n, 64});
  Tensor* t = x;
  for (int i = 0; i < 6; ++i) t = net.add_activation(t, ActivationType::kRelu, 0, 0, "r" + std::to_string(i))->output();
  Tensor* skip = net.add_activation(x, ActivationType::kSigmoid, 0, 0, "skip")->output();
  t = net.add_elementwise(t, skip, ElementWiseOp::kSum, "join")->output();
  net.mark_output(t, "y");
  BuildState s = state_for(net, {OptimizationProfile().set_range("n", 1, 4, 8)});
  pass_validate(s);
  pass_infer_shapes(s);
  pass_plan_memory(s);
  const Network& pn = s.plan.network;
  const auto layers = pn.layers();
  // Liveness by layer position, then pairwise: live at the same time => disjoint bytes.
  struct Range { int64_t def, last, off, size; };
  std::vector<Range> ranges;
  for (size_t li = 0; li < layers.size(); ++li) {
    for (const Tensor* o : layers[li]->outputs()) {
      const int64_t off = s.plan.placements[o->id()].arena_offset;
      if (o->is_output()) {
        EXPECT_EQ(off, -1);
        continue;
      }
      int64_t last = static_cast<int64_t>(li);
      for (size_t lj = li; lj < layers.size(); ++lj) {
        for (const Tensor* in : layers[lj]->inputs()) {
          if (in == o) last = static_cast<int64_t>(lj);
        }
      }
      ranges.push_back({static_cast<int64_t>(li), last, off, max_tensor_bytes(*o, s.plan.profiles)});
      EXPECT_EQ(ranges.back().size, 8 * 64 * 4);
      EXPECT_LE(off + ranges.back().size, s.plan.arena_bytes);
    }
  }
  for (size_t i = 0; i < ranges.size(); ++i) {
    for (size_t j = i + 1; j < ranges.size(); ++j) {
      const bool time_overlap = ranges[i].def <= ranges[j].last && ranges[j].def <= ranges[i].last;
      const bool byte_overlap = ranges[i].off < ranges[j].off + ranges[j].size &&
                                ranges[j].off < ranges[i].off + ranges[i].size;
      EXPECT_FALSE(time_overlap && byte_overlap) << "tensors " << i << " and " << j;
    }
  }
  // 7 intermediate tensors, but at most 3 are live at once (skip + two in the chain).
  EXPECT_LE(s.plan.arena_bytes, 3 * 8 * 64 * 4);
  s.config.memory_limit = 1024;
  EXPECT_NE(error_of([&] { pass_plan_memory(s); }).find("memory_limit"), std::string::npos);
}

TEST(BuilderPasses, BuilderRunsAllPassesAndReports) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  net.mark_output(net.add_activation(x, ActivationType::kRelu, 0, 0, "r")->output(), "y");
  BuildReport report;
  BuilderConfig config;
  const auto plan = Builder(config).build(net, &report);
  EXPECT_FALSE(plan.empty());
  ASSERT_GE(report.pass_log.size(), 6u);
  EXPECT_EQ(report.pass_log.front().rfind("validate", 0), 0u);
  EXPECT_EQ(report.pass_log.back().rfind("emit", 0), 0u);
  config.optimization_level = 9;
  EXPECT_NE(error_of([&] { Builder(config).build(net); }).find("optimization_level"), std::string::npos);
}

#ifdef EMBER_WITH_CUDA
TEST(BuilderPasses, SelectImplementationsNamesDeviceKernelsOfCudaPlans) {
  // Building a "cuda" plan needs no GPU. Every layer kind has a device kernel ("cuda.<Kind>");
  // a kind without one would be named "cuda.host.<Kind>" and its plans never captured into CUDA
  // graphs. The four kinds that were host-only until recently:
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 8});
  Tensor* idx = net.add_input("idx", DataType::kI64, {2, 3});
  Tensor* upd = net.add_input("upd", DataType::kF32, {2, 3});
  Tensor* s1 = net.add_scatter(x, idx, upd, ScatterParams{1, ScatterReduction::kNone})->output();
  ResizeParams rp;
  rp.output = {2, 16};
  Tensor* r = net.add_resize(s1, rp)->output();
  Tensor* c = net.add_cumulative(r, CumulativeParams{})->output();
  net.mark_output(net.add_topk(c, TopKOp::kMax, 3, 1, "top")->output(0), "v");
  BuildState s = state_for(net);
  s.config.backend = "cuda";
  pass_validate(s);
  pass_infer_shapes(s);
  pass_select_implementations(s);
  EXPECT_EQ(s.plan.impls,
            (std::vector<std::string>{"cuda.Scatter", "cuda.Resize", "cuda.Cumulative", "cuda.TopK"}));
}
#endif

}  // namespace
}  // namespace ember::engine
