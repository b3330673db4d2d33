// Partitioner: support decisions, segment shapes, min_block_size, exclusions, reports.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace ember::compiler
