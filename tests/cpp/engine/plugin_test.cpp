// Plugins (ember/engine/plugin.h): the registry, Plugin layers in networks, the builder treating
// them as opaque, plans that store and re-create them, the error for a plan naming a plugin the
// process lacks, and execution on the CPU back end (workspace, tactics, arena outputs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"
#include "ember/engine/plugin.h"
#include "ember/engine/runtime.h"
#include "plan/plan.h"
#include "plan/serialize.h"
#include "test_plugin.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::affine_attributes;
using test::AffineTwiceCreator;
using test::expect_close;
using test::expect_error;
using test::kTestPluginName;
using test::kTestPluginVersion;
using test::TestTensor;

class PluginTest : public ::testing::Test {
 protected:
  void SetUp() override { test::register_test_plugins(); }
  void TearDown() override { test::register_test_plugins(); }
};

// x [n, 3] -> matmul with a constant -> plugin -> relu on output 0, output 1 returned as is.
Network plugin_network(float scale, float shift) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 3});
  Tensor* w = net.add_constant(Weights::from_vector<float>(DataType::kF32, {3, 3},
                                                           {1, 0, 0, 0, 2, 0, 0, 0, -1}),
                               "w")
                  ->output();
  Tensor* h = net.add_matrix_multiply(x, false, w, false, "mm")->output();
  Layer* p = net.add_plugin({h}, kTestPluginName, kTestPluginVersion,
                            affine_attributes(scale, shift), "affine");
  Tensor* r = net.add_activation(p->output(0), ActivationType::kRelu, 0, 0, "relu")->output();
  net.mark_output(r, "y");
  net.mark_output(p->output(1), "twice");
  return net;
}

std::vector<uint8_t> build_plugin_plan(const Network& net, BuildReport* report = nullptr) {
  BuilderConfig cfg;
  cfg.profiles.emplace_back();
  cfg.profiles[0].set_range("n", 1, 2, 4);
  return Builder(cfg).build(net, report);
}

struct Outputs {
  std::vector<float> y, twice;
};

Outputs run_plan(const std::vector<uint8_t>& plan, const std::vector<float>& x, int64_t n) {
  auto engine = Runtime().deserialize(plan.data(), plan.size());
  auto ctx = engine->create_execution_context();
  ctx->set_input_shape("x", {n, 3});
  Outputs o;
  o.y.resize(static_cast<size_t>(n) * 3);
  o.twice.resize(static_cast<size_t>(n) * 6);
  ctx->set_tensor_address("x", const_cast<float*>(x.data()));
  ctx->set_tensor_address("y", o.y.data());
  ctx->set_tensor_address("twice", o.twice.data());
  ctx->execute();
  return o;
}

TEST_F(PluginTest, RegistryFindsListsReplacesAndRemovesCreators) {
  EXPECT_NE(find_plugin_creator(kTestPluginName, kTestPluginVersion), nullptr);
  EXPECT_EQ(find_plugin_creator(kTestPluginName, "2"), nullptr);
  const auto all = plugin_creators();
  EXPECT_NE(std::find(all.begin(), all.end(),
                      std::make_pair(std::string(kTestPluginName), std::string("1"))),
            all.end());
  expect_error([] { register_plugin_creator(std::make_shared<AffineTwiceCreator>()); },
               {"already registered", kTestPluginName});
  register_plugin_creator(std::make_shared<AffineTwiceCreator>(), /*replace=*/true);
  EXPECT_TRUE(deregister_plugin_creator(kTestPluginName, kTestPluginVersion));
  EXPECT_FALSE(deregister_plugin_creator(kTestPluginName, kTestPluginVersion));
  EXPECT_EQ(find_plugin_creator(kTestPluginName, kTestPluginVersion), nullptr);
  expect_error([] { register_plugin_creator(nullptr); }, {"null"});
}

TEST_F(PluginTest, LayerInfersSymbolicOutputsFromThePlugin) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 5});
  Layer* p = net.add_plugin({x}, kTestPluginName, kTestPluginVersion, affine_attributes(1, 0));
  EXPECT_EQ(p->kind(), LayerKind::kPlugin);
  ASSERT_EQ(p->outputs().size(), 2u);
  EXPECT_EQ(shape_to_string(p->output(0)->shape()), "[n, 5]");
  EXPECT_EQ(shape_to_string(p->output(1)->shape()), "[n, 10]");
  // The plugin's own checks name the layer and the plugin.
  Tensor* i = net.add_input("i", DataType::kI64, {3});
  expect_error([&] { net.add_plugin({i}, kTestPluginName, kTestPluginVersion, affine_attributes(1, 0), "bad"); },
               {"Plugin 'bad'", kTestPluginName, "f32 only"});
  expect_error([&] { net.add_plugin({x}, kTestPluginName, kTestPluginVersion, {1, 2, 3}, "attrs"); },
               {"Plugin 'attrs'", "rejected its attributes (3 bytes)", "expects 8 bytes"});
}

TEST_F(PluginTest, UnknownPluginIsAnErrorThatSaysHowToRegisterIt) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  expect_error([&] { net.add_plugin({x}, "nobody::nothing", "3", {}, "p"); },
               {"Plugin 'p'", "plugin 'nobody::nothing' version '3' is not registered",
                "ember.load_plugins", "load_library", "ember.dynamo.plugin"});
  // A registered name with another version lists the versions there are.
  expect_error([&] { net.add_plugin({x}, kTestPluginName, "7", {}, "q"); },
               {"registered versions of it: 1"});
}

TEST_F(PluginTest, RunsOnTheCpuBackEndThroughAPlanWithArenaOutputs) {
  const Network net = plugin_network(2.0f, -1.0f);
  BuildReport report;
  const std::vector<uint8_t> plan = build_plugin_plan(net, &report);
  for (int64_t n : {1, 4}) {
    std::vector<float> x(static_cast<size_t>(n) * 3);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) * 0.5f - 1.0f;
    const Outputs o = run_plan(plan, x, n);
    std::vector<float> y, twice;
    for (int64_t r = 0; r < n; ++r) {
      const float h[3] = {x[r * 3], 2 * x[r * 3 + 1], -x[r * 3 + 2]};
      for (float v : h) y.push_back(std::max(0.0f, 2.0f * v - 1.0f));
      for (int rep = 0; rep < 2; ++rep) twice.insert(twice.end(), h, h + 3);
    }
    TestTensor ty{DataType::kF32, {n, 3}, {}}, tt{DataType::kF32, {n, 6}, {}};
    ty.bytes.resize(o.y.size() * 4);
    std::memcpy(ty.bytes.data(), o.y.data(), ty.bytes.size());
    tt.bytes.resize(o.twice.size() * 4);
    std::memcpy(tt.bytes.data(), o.twice.data(), tt.bytes.size());
    expect_close(ty, y, DataType::kF32, "y n=" + std::to_string(n));
    expect_close(tt, twice, DataType::kF32, "twice n=" + std::to_string(n));
  }
}

TEST_F(PluginTest, BuilderKeepsPluginLayersOpaque) {
  // A plugin whose input is constant is not folded, and nothing is fused into or across it: the
  // plan keeps the matmul, the plugin and the relu as three layers.
  Network net;
  Tensor* c = net.add_constant(Weights::from_vector<float>(DataType::kF32, {2}, {1.0f, -3.0f}), "c")
                  ->output();
  Layer* p = net.add_plugin({c}, kTestPluginName, kTestPluginVersion, affine_attributes(1, 1), "p");
  net.mark_output(p->output(0), "out");
  BuilderConfig cfg;
  const auto bytes = Builder(cfg).build(net);
  const PlanModel plan = plan_read(bytes.data(), bytes.size());
  int plugins = 0;
  for (const Layer* l : plan.network.layers()) plugins += l->kind() == LayerKind::kPlugin;
  EXPECT_EQ(plugins, 1);

  const auto bytes2 = build_plugin_plan(plugin_network(1, 0));
  const PlanModel plan2 = plan_read(bytes2.data(), bytes2.size());
  std::vector<std::string> kinds;
  for (const Layer* l : plan2.network.layers()) kinds.push_back(layer_kind_name(l->kind()));
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "Activation"), kinds.end())
      << "the relu after the plugin must stay a layer of its own";
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "MatrixMultiply"), kinds.end());
  const std::vector<Layer*> layers = plan2.network.layers();
  const auto mm = std::find_if(layers.begin(), layers.end(), [](const Layer* l) {
    return l->kind() == LayerKind::kMatrixMultiply;
  });
  EXPECT_FALSE((*mm)->params_as<MatrixMultiplyParams>().epilogue.fused_activation);
}

TEST_F(PluginTest, PlanStoresNameVersionAndAttributes) {
  const std::vector<uint8_t> bytes = build_plugin_plan(plugin_network(0.5f, 2.0f));
  const PlanModel plan = plan_read(bytes.data(), bytes.size());
  const Layer* p = plan.network.find_layer("affine");
  ASSERT_NE(p, nullptr);
  const PluginParams& pp = p->params_as<PluginParams>();
  EXPECT_EQ(pp.creator, kTestPluginName);
  EXPECT_EQ(pp.version, kTestPluginVersion);
  EXPECT_EQ(pp.attributes, affine_attributes(0.5f, 2.0f));
  ASSERT_NE(pp.plugin, nullptr);  // re-created from the registry on read
  EXPECT_EQ(plan_write(plan), bytes);
  const auto engine = Runtime().deserialize(bytes.data(), bytes.size());
  const std::string json = engine->inspect_json();
  EXPECT_NE(json.find("\"creator\": \"test::affine_twice\""), std::string::npos) << json;
  EXPECT_NE(json.find("{\"bytes\": 8, \"hex\""), std::string::npos) << json;
}

TEST_F(PluginTest, PlanNamingAMissingPluginFailsToLoadNamingIt) {
  const std::vector<uint8_t> bytes = build_plugin_plan(plugin_network(1, 0));
  ASSERT_TRUE(deregister_plugin_creator(kTestPluginName, kTestPluginVersion));
  expect_error([&] { Runtime().deserialize(bytes.data(), bytes.size()); },
               {"plan: ", "Plugin 'affine'", "plugin 'test::affine_twice' version '1' is not registered",
                "ember.load_plugins(path)"});
  test::register_test_plugins();
  EXPECT_NO_THROW(Runtime().deserialize(bytes.data(), bytes.size()));
}

TEST_F(PluginTest, BuildForABackEndThePluginDoesNotSupportFails) {
  struct CudaOnly final : Plugin {
    std::vector<PluginTensorDesc> infer_outputs(const std::vector<PluginTensorDesc>& in) const override {
      return {in.at(0)};
    }
    bool supports_backend(const std::string& b) const override { return b == "cuda"; }
    void enqueue(const std::vector<PluginTensor>&, const std::vector<PluginTensor>&,
                 const PluginRunContext&) const override {}
  };
  struct CudaOnlyCreator final : PluginCreator {
    std::string name() const override { return "test::cuda_only"; }
    std::string version() const override { return "1"; }
    std::shared_ptr<const Plugin> create(const std::vector<uint8_t>&) const override {
      return std::make_shared<CudaOnly>();
    }
  };
  register_plugin_creator(std::make_shared<CudaOnlyCreator>(), true);
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  net.mark_output(net.add_plugin({x}, "test::cuda_only", "1", {}, "k")->output(), "y");
  expect_error([&] { Builder(BuilderConfig{}).build(net); },
               {"Plugin 'k'", "test::cuda_only", "does not run on back end 'cpu'"});
  deregister_plugin_creator("test::cuda_only", "1");
}

TEST_F(PluginTest, VersionFivePlansStillLoadAndCannotHoldPlugins) {
  // A plan without plugins, relabelled as format version 5 (the version before Plugin layers),
  // loads; the same relabelling of a plan with a plugin is refused with the reason.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  net.mark_output(net.add_activation(x, ActivationType::kRelu)->output(), "y");
  std::vector<uint8_t> old = Builder(BuilderConfig{}).build(net);
  test::relabel_plan(old, 5);
  EXPECT_NO_THROW(Runtime().deserialize(old.data(), old.size()));
  std::vector<uint8_t> with_plugin = build_plugin_plan(plugin_network(1, 0));
  test::relabel_plan(with_plugin, 5);
  expect_error([&] { Runtime().deserialize(with_plugin.data(), with_plugin.size()); },
               {"Plugin layer", "format version 5 does not have"});
  std::vector<uint8_t> too_old = old;
  too_old[8] = 4;
  expect_error([&] { Runtime().deserialize(too_old.data(), too_old.size()); },
               {"format version 4",
                "reads versions 5 to " + std::to_string(plan_format_version())});
}

}  // namespace
}  // namespace ember::engine
