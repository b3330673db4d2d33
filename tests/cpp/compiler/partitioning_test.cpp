// Partitioner: support decisions, segment shapes, min_block_size, exclusions, reports.
#include <gtest/gtest.h>

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
