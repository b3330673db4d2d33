// The network definition API: naming, validation errors, cloning and mutation.
#include <gtest/gtest.h>

#include "ember/engine/network.h"
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

TEST(Network, InputNamesAreUniqueAndDimsAreConstantsOrSymbols) {
  Network net;
  net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 3});
  EXPECT_NE(error_of([&] { net.add_input("x", DataType::kF32, {1}); }).find("already exists"),
            std::string::npos);
  const std::string e =
      error_of([&] { net.add_input("y", DataType::kF32, {DimExpr::symbol("n") * 2}); });
  EXPECT_NE(e.find("plain symbols"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { net.add_input("", DataType::kF32, {1}); }), "");
}

TEST(Network, LayerErrorsNameTheLayer) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {2, 3});
  Tensor* b = net.add_input("b", DataType::kI32, {2, 3});
  const std::string e = error_of([&] { net.add_elementwise(a, b, ElementWiseOp::kSum, "my_add"); });
  EXPECT_NE(e.find("ElementWise 'my_add'"), std::string::npos) << e;
  EXPECT_NE(e.find("i32"), std::string::npos) << e;
  // A failed add leaves the network unchanged.
  EXPECT_EQ(net.layers().size(), 0u);
  EXPECT_EQ(net.find_layer("my_add"), nullptr);
}

TEST(Network, TensorOfAnotherNetworkIsRejected) {
  Network n1, n2;
  Tensor* x = n1.add_input("x", DataType::kF32, {4});
  const std::string e = error_of([&] { n2.add_activation(x, ActivationType::kRelu, 0, 0, "r"); });
  EXPECT_NE(e.find("does not belong to this network"), std::string::npos) << e;
  EXPECT_NE(e.find("Activation 'r'"), std::string::npos) << e;
}

TEST(Network, AutoNamesAreUniqueAndOutputsRename) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  Layer* r1 = net.add_activation(x, ActivationType::kRelu);
  Layer* r2 = net.add_activation(r1->output(), ActivationType::kRelu);
  EXPECT_NE(r1->name(), r2->name());
  EXPECT_EQ(r1->output()->name(), r1->name() + ":0");
  net.mark_output(r2->output(), "y");
  EXPECT_EQ(r2->output()->name(), "y");
  EXPECT_TRUE(r2->output()->is_output());
  EXPECT_NE(error_of([&] { net.mark_output(r1->output(), "x"); }).find("already exists"),
            std::string::npos);
}

TEST(Network, CloneIsDeepAndCanonical) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 4});
  Layer* c = net.add_constant(Weights::from_vector<float>(DataType::kF32, {1, 4}, {1, 2, 3, 4}), "c");
  Layer* add = net.add_elementwise(x, c->output(), ElementWiseOp::kSum, "add");
  net.mark_output(add->output(), "y");
  Network copy = net.clone();
  ASSERT_EQ(copy.layers().size(), 2u);
  EXPECT_EQ(copy.inputs()[0]->id(), 0);  // inputs first
  EXPECT_NE(copy.find_layer("add"), net.find_layer("add"));
  EXPECT_EQ(copy.outputs()[0]->name(), "y");
  EXPECT_EQ(shape_to_string(copy.outputs()[0]->shape()), shape_to_string(add->output()->shape()));
  // Weights are shared, not copied.
  EXPECT_EQ(copy.find_layer("c")->params_as<ConstantParams>().weights.data(),
            c->params_as<ConstantParams>().weights.data());
}

TEST(Network, ReplaceAllUsesKeepsTopologicalOrder) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4});
  Layer* r = net.add_activation(x, ActivationType::kRelu, 0, 0, "r");
  Layer* s = net.add_activation(r->output(), ActivationType::kSigmoid, 0, 0, "s");
  net.mark_output(s->output(), "y");
  // A replacement defined after its new consumer is moved before it.
  Layer* t = net.add_activation(x, ActivationType::kTanh, 0, 0, "t");
  net.replace_all_uses(r->output(), t->output());
  const auto layers = net.layers();
  const auto pos = [&](const std::string& n) {
    return std::find(layers.begin(), layers.end(), net.find_layer(n)) - layers.begin();
  };
  EXPECT_LT(pos("t"), pos("s"));
  EXPECT_EQ(net.find_layer("s")->input(0), t->output());
  EXPECT_NE(error_of([&] { net.remove_layer(net.find_layer("s")); }).find("still used"),
            std::string::npos);
  net.remove_layer(r);
  EXPECT_EQ(net.find_layer("r"), nullptr);
}

}  // namespace
}  // namespace ember::engine
