// Partitioner: support decisions, segment shapes, min_block_size, exclusions, reports.
#include <gtest/gtest.h>

#include "ember/compiler/compile.h"
#include <cstdint>
#include <memory>
#include <vector>

#include "ember/compiler/conversion.h"
#include "ember/compiler/partitioning.h"

namespace ember::compiler {
namespace {

TEST(Partitioning, UnknownOpIsUnsupportedWithReason) {
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2, 3});
  Node* n = g.add_node("aten::definitely_not_an_op", {x}, {{ScalarType::kF32, {2, 3}}}, {"y"});
  const NodeSupport s = node_support(*n, CompileSettings{});
  EXPECT_FALSE(s.supported);
  EXPECT_NE(s.reason.find("no converter for aten::definitely_not_an_op"), std::string::npos)
      << s.reason;
}

// Converters registered at run time (as Python converters are): priority, validator, removal,
// and a failure that names its node.
TEST(ConverterRegistry, RuntimeEntriesTakePriorityAndCanBeRemoved) {
  auto& r = ConverterRegistry::instance();
  auto identity = [](ConversionContext& ctx, const Node& node) {
    ctx.set_output(node, 0, ctx.net().add_identity(ctx.input(node, 0))->output());
  };
  auto reject_rank1 = [](const Node& node, const CompileSettings&) -> Reason {
    if (node.arg_tensor(0)->rank() == 1) return std::string("rank 1 rejected");
    return std::nullopt;
  };
  r.add(ConverterEntry{"ember_test::rt", identity, nullptr, 0, true, "python:low"});
  r.add(ConverterEntry{"ember_test::rt", identity, reject_rank1, 5, true, "python:high"});
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2, 3});
  Value* v = g.add_input("v", ScalarType::kF32, {3});
  Node* a = g.add_node("ember_test::rt", {x}, {{ScalarType::kF32, {2, 3}}}, {"a"});
  Node* b = g.add_node("ember_test::rt", {v}, {{ScalarType::kF32, {3}}}, {"b"});
  EXPECT_EQ(r.find(*a, CompileSettings{})->file, "python:high");
  EXPECT_EQ(r.find(*b, CompileSettings{})->file, "python:low");  // the validator declined
  EXPECT_EQ(r.remove("ember_test::rt", "python:low"), 1u);
  std::string why;
  EXPECT_EQ(r.find(*b, CompileSettings{}, &why), nullptr);
  EXPECT_EQ(why, "rank 1 rejected");
  EXPECT_EQ(r.remove("ember_test::rt", "python:high"), 1u);
  EXPECT_FALSE(r.has("ember_test::rt"));
}

TEST(Partitioning, TorchExecutedNodesSendOneNodeToPyTorchWithItsReason) {
  auto& r = ConverterRegistry::instance();
  auto identity = [](ConversionContext& ctx, const Node& node) {
    ctx.set_output(node, 0, ctx.net().add_identity(ctx.input(node, 0))->output());
  };
  r.add(ConverterEntry{"ember_test::nodes", identity, nullptr, 0, true, "python:nodes"});
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Node* a = g.add_node("ember_test::nodes", {x}, {{ScalarType::kF32, {2}}}, {"a"});
  a->set_fx_name("a");
  Node* b = g.add_node("ember_test::nodes", {a->output()}, {{ScalarType::kF32, {2}}}, {"b"});
  b->set_fx_name("b");
  CompileSettings s;
  s.torch_executed_nodes = {{"b", "converter failed: no kernel"}};
  EXPECT_TRUE(node_support(*a, s).supported);
  const NodeSupport sb = node_support(*b, s);
  EXPECT_FALSE(sb.supported);
  EXPECT_EQ(sb.reason, "converter failed: no kernel");
  r.remove("ember_test::nodes", "python:nodes");
}

TEST(Conversion, AFailingConverterNamesItsNodeAndConverter) {
  auto& r = ConverterRegistry::instance();
  r.add(ConverterEntry{"ember_test::fails",
                       [](ConversionContext&, const Node&) { throw Error("no kernel"); },
                       nullptr, 0, true, "python:mod.fails"});
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Node* a = g.add_node("ember_test::fails", {x}, {{ScalarType::kF32, {2}}}, {"a"});
  a->set_fx_name("fails_1");
  g.set_outputs({a->output()});
  const PartitionResult p = partition(g, CompileSettings{.min_block_size = 1}, true);
  ASSERT_EQ(p.segments.size(), 1u);
  try {
    convert_segment(g, p.segments[0], CompileSettings{});
    ADD_FAILURE() << "conversion should fail";
  } catch (const ConversionError& e) {
    EXPECT_EQ(e.node(), "fails_1");
    EXPECT_EQ(e.converter(), "python:mod.fails");
    const std::string want = "ember_test::fails 'fails_1' (python:mod.fails): no kernel";
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos)
        << e.what();
  }
  r.remove("ember_test::fails", "python:mod.fails");
}

// A _to_copy naming another device than the engine's back end would silently not move the
// tensor inside an engine: the validator leaves it to PyTorch.
TEST(Partitioning, CopyToAnotherDeviceRunsInPyTorch) {
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2, 3});
  auto copy_to = [&](const std::string& device, const std::string& name) {
    return g.add_node("aten::_to_copy", {x, ScalarType::kF16, NoneArg{}, device},
                      {{ScalarType::kF16, {2, 3}}}, {name});
  };
  Node* to_cpu = copy_to("cpu", "a");
  Node* to_gpu = copy_to("cuda:0", "b");
  CompileSettings cuda;
  cuda.backend = "cuda";
  const NodeSupport s = node_support(*to_cpu, cuda);
  EXPECT_FALSE(s.supported);
  EXPECT_NE(s.reason.find("a copy to device 'cpu'"), std::string::npos) << s.reason;
  EXPECT_TRUE(node_support(*to_gpu, cuda).supported);
  CompileSettings cpu;
  EXPECT_TRUE(node_support(*to_cpu, cpu).supported);
  EXPECT_FALSE(node_support(*to_gpu, cpu).supported);
}

// truncate_double narrows i64 to i32 in engines: a constant that does not fit keeps its node in
// PyTorch (in i64) with a reason naming the value, instead of wrapping silently.
TEST(Partitioning, TruncateDoubleKeepsWideI64ConstantsInPyTorch) {
  auto wide = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{1, int64_t{1} << 40});
  auto narrow = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{1, -7});
  Graph g;
  Value* x = g.add_input("x", ScalarType::kI64, {2});
  Value* cw = g.add_constant("w", ScalarType::kI64, {2},
                             ConstantData{std::shared_ptr<const void>(wide, wide->data()), 16});
  Value* cn = g.add_constant("n", ScalarType::kI64, {2},
                             ConstantData{std::shared_ptr<const void>(narrow, narrow->data()), 16});
  Node* add_wide = g.add_node("aten::add.Tensor", {x, cw, int64_t{1}}, {{ScalarType::kI64, {2}}},
                              {"y"});
  Node* add_narrow = g.add_node("aten::add.Tensor", {x, cn, int64_t{1}},
                                {{ScalarType::kI64, {2}}}, {"z"});
  CompileSettings truncate;
  truncate.truncate_double = true;
  const NodeSupport s = node_support(*add_wide, truncate);
  EXPECT_FALSE(s.supported);
  EXPECT_NE(s.reason.find("1099511627776"), std::string::npos) << s.reason;
  EXPECT_NE(s.reason.find("outside int32"), std::string::npos) << s.reason;
  EXPECT_TRUE(node_support(*add_narrow, truncate).supported) << node_support(*add_narrow, truncate).reason;
  EXPECT_TRUE(node_support(*add_wide, CompileSettings{}).supported);
}

}  // namespace
}  // namespace ember::compiler
