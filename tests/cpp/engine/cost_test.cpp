// layer_cost (runtime/cost.h) and the costs Engine::inspect_json reports: FLOPs of products
// counted by hand, bytes of each distinct tensor read or written, null for symbolic shapes.
#include <gtest/gtest.h>

#include "ember/engine/builder.h"
#include "ember/engine/runtime.h"
#include "runtime/cost.h"

namespace ember::engine {
namespace {

Tensor* zeros(Network& net, DataType t, std::vector<int64_t> dims) {
  return net.add_constant(Weights::zeros(t, std::move(dims)))->output();
}

LayerCost cost_of(const Layer* l) {
  const auto c = layer_cost(*l);
  EXPECT_TRUE(c.has_value()) << l->describe();
  return c.value_or(LayerCost{});
}

TEST(LayerCost, MatrixMultiplyCountsTwoFlopsPerMultiplyAdd) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {4, 8});
  const Layer* mm = net.add_matrix_multiply(a, false, zeros(net, DataType::kF32, {8, 16}),
                                            false, "mm");
  const LayerCost c = cost_of(mm);
  EXPECT_DOUBLE_EQ(c.flops, 2.0 * 4 * 16 * 8);
  EXPECT_DOUBLE_EQ(c.bytes, (4 * 8 + 8 * 16 + 4 * 16) * 4.0);  // a, the weight, the output
  // transpose_a: a is [8, 4], its reduced dim the first.
  Tensor* at = net.add_input("at", DataType::kF16, {8, 4});
  const Layer* mt = net.add_matrix_multiply(at, true, zeros(net, DataType::kF16, {8, 16}),
                                            false, "mt");
  EXPECT_DOUBLE_EQ(cost_of(mt).flops, 2.0 * 4 * 16 * 8);
  EXPECT_DOUBLE_EQ(cost_of(mt).bytes, (8 * 4 + 8 * 16 + 4 * 16) * 2.0);
}

TEST(LayerCost, ConvolutionsCountTheirKernelTaps) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8, 8});
  ConvolutionParams p;
  p.stride = {1, 1};
  p.padding_begin = p.padding_end = {1, 1};
  p.dilation = {1, 1};
  const Layer* conv = net.add_convolution(x, zeros(net, DataType::kF32, {5, 3, 3, 3}),
                                          zeros(net, DataType::kF32, {5}), p, "conv");
  // y [2, 5, 8, 8]: 27 multiply-adds an element.
  EXPECT_DOUBLE_EQ(cost_of(conv).flops, 2.0 * (2 * 5 * 8 * 8) * 27);
  EXPECT_DOUBLE_EQ(cost_of(conv).bytes, (2 * 3 * 8 * 8 + 5 * 27 + 5 + 2 * 5 * 8 * 8) * 4.0);
  // Grouped: w [6, 1, 3, 3] with groups = 3 on 3 channels (two outputs a group).
  ConvolutionParams g = p;
  g.groups = 3;
  const Layer* grouped =
      net.add_convolution(x, zeros(net, DataType::kF32, {6, 1, 3, 3}), nullptr, g, "grouped");
  EXPECT_DOUBLE_EQ(cost_of(grouped).flops, 2.0 * (2 * 6 * 8 * 8) * 9);
  // Transposed: each input element meets K * taps weights (w [C, K, 3, 3]).
  DeconvolutionParams d;
  d.stride = {2, 2};
  d.padding_begin = d.padding_end = {0, 0};
  d.dilation = {1, 1};
  d.output_padding = {0, 0};
  const Layer* deconv = net.add_deconvolution(x, zeros(net, DataType::kF32, {3, 4, 3, 3}),
                                              nullptr, d, "deconv");
  EXPECT_DOUBLE_EQ(cost_of(deconv).flops, 2.0 * (2 * 3 * 8 * 8) * (4 * 9));
}

TEST(LayerCost, AttentionCountsScoresAndValuesAndHalvesCausal) {
  Network net;
  Tensor* q = net.add_input("q", DataType::kF16, {2, 3, 16, 8});  // B, H, L, E
  Tensor* k = net.add_input("k", DataType::kF16, {2, 3, 16, 8});
  Tensor* v = net.add_input("v", DataType::kF16, {2, 3, 16, 8});
  AttentionParams p;
  p.scale = 0.125;
  const Layer* full = net.add_layer(p, {q, k, v}, "full");
  EXPECT_DOUBLE_EQ(cost_of(full).flops, 2.0 * 6 * (16 * 16) * (8 + 8));
  EXPECT_DOUBLE_EQ(cost_of(full).bytes, 4 * (2 * 3 * 16 * 8) * 2.0);  // q, k, v, out
  p.causal = true;  // query i sees i + 1 keys: 16 * 17 / 2 pairs
  const Layer* causal = net.add_layer(p, {q, k, v}, "causal");
  EXPECT_DOUBLE_EQ(cost_of(causal).flops, 2.0 * 6 * (16 * 17 / 2) * (8 + 8));
  // One tensor read three times is read once.
  const Layer* self = net.add_layer(p, {q, q, q}, "self");
  EXPECT_DOUBLE_EQ(cost_of(self).bytes, 2 * (2 * 3 * 16 * 8) * 2.0);
}

TEST(LayerCost, GatherReadsOnlyTheRowsItOutputs) {
  Network net;
  Tensor* ids = net.add_input("ids", DataType::kI64, {10});
  GatherParams p;
  const Layer* g = net.add_gather(zeros(net, DataType::kF32, {1000, 64}), ids, p, "embed");
  const LayerCost c = cost_of(g);
  EXPECT_DOUBLE_EQ(c.flops, 0.0);
  EXPECT_DOUBLE_EQ(c.bytes, 10 * 64 * 4.0 + 10 * 8.0 + 10 * 64 * 4.0);  // rows, ids, output
}

TEST(LayerCost, AnAliasedLayerMovesNothing) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {4, 8});
  Layer* r = net.add_reshape(x, {32}, "flat");
  EXPECT_DOUBLE_EQ(cost_of(r).bytes, 2 * 32 * 2.0);  // a copy: read and written
  EXPECT_DOUBLE_EQ(layer_cost(*r, /*aliased=*/true).value().bytes, 0.0);
}

TEST(LayerCost, PackedAttentionReadsTheThirdsItUses) {
  Network net;
  // [B, L, 3 * heads * E] with 2 heads of E = 8: q, k and v side by side.
  Tensor* qkv = net.add_input("qkv", DataType::kF16, {2, 16, 48});
  AttentionParams p;
  p.packed_heads = 2;
  p.seq_major = true;
  const Layer* one = net.add_layer(p, {qkv, qkv, qkv}, "one");
  const double qkv_bytes = 2 * 16 * 48 * 2.0, out_bytes = 2 * 16 * 2 * 8 * 2.0;
  EXPECT_DOUBLE_EQ(cost_of(one).bytes, qkv_bytes + out_bytes);
  EXPECT_DOUBLE_EQ(cost_of(one).flops, 2.0 * (2 * 2) * (16 * 16) * (8 + 8));
  Tensor* other = net.add_input("other", DataType::kF16, {2, 16, 48});
  const Layer* two = net.add_layer(p, {qkv, other, other}, "two");
  // q's third of qkv, k's and v's thirds of other.
  EXPECT_DOUBLE_EQ(cost_of(two).bytes, qkv_bytes / 3 + 2 * qkv_bytes / 3 + out_bytes);
}

TEST(LayerCost, SymbolicShapesHaveNoCost) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {DimExpr::symbol("n"), 8});
  const Layer* mm = net.add_matrix_multiply(a, false, zeros(net, DataType::kF32, {8, 4}), false);
  EXPECT_FALSE(layer_cost(*mm).has_value());
}

std::shared_ptr<const Engine> build(const Network& net,
                                    const std::vector<OptimizationProfile>& profiles = {}) {
  BuilderConfig config;
  config.profiles = profiles;
  const auto plan = Builder(config).build(net);
  return Runtime().deserialize(plan.data(), plan.size());
}

TEST(LayerCost, InspectorReportsEachLayerAndTheTotal) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kF32, {4, 8});
  Tensor* y = net.add_matrix_multiply(a, false, zeros(net, DataType::kF32, {8, 16}), false, "mm")
                  ->output();
  net.mark_output(y, "y");
  const std::string json = build(net)->inspect_json();
  // One layer (the product): its cost is the engine's.
  EXPECT_NE(json.find("\"flops\": 1024, \"bytes\": 896"), std::string::npos) << json;
  EXPECT_NE(json.find("], \"flops\": 1024, \"bytes\": 896}"), std::string::npos) << json;

  // A reshape between two layers shares its input's slot (plan_memory): it moves nothing.
  Network chain;
  Tensor* c = chain.add_input("c", DataType::kF32, {4, 8});
  Tensor* h = chain.add_activation(c, ActivationType::kRelu, 0, 0, "relu")->output();
  h = chain.add_reshape(h, {32}, "flat")->output();
  h = chain.add_unary(h, UnaryOp::kAbs, "abs")->output();
  chain.mark_output(h, "y");
  BuilderConfig level0;
  level0.optimization_level = 0;  // keep the layers as written
  const auto plan = Builder(level0).build(chain);
  const std::string chain_json = Runtime().deserialize(plan.data(), plan.size())->inspect_json();
  EXPECT_NE(chain_json.find("\"name\": \"flat\""), std::string::npos) << chain_json;
  const size_t flat = chain_json.find("\"name\": \"flat\"");
  EXPECT_NE(chain_json.find("\"flops\": 0, \"bytes\": 0", flat), std::string::npos);
  EXPECT_LT(chain_json.find("\"flops\": 0, \"bytes\": 0", flat),
            chain_json.find("\"name\": \"abs\"")) << chain_json;

  Network dyn;
  Tensor* x = dyn.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 8});
  dyn.mark_output(
      dyn.add_matrix_multiply(x, false, zeros(dyn, DataType::kF32, {8, 16}), false)->output(),
      "y");
  const std::string dyn_json =
      build(dyn, {OptimizationProfile().set_range("n", 1, 4, 8)})->inspect_json();
  EXPECT_NE(dyn_json.find("], \"flops\": null, \"bytes\": null}"), std::string::npos)
      << dyn_json;
}

TEST(LayerCost, AFusedLayerReadsOnlyTheSlicesOfItsInputs) {
  // y [2, 3, 8, 16] read as two parts of 4 heads (merge_sibling_products' q and k): the whole
  // of y once; read as one part of 2 heads, twice through the same slice (RoPE reads q and its
  // rotation): a quarter of y.
  auto sum_of = [](Network& net, Tensor* y, std::vector<int64_t> slices, const std::string& name) {
    FusedPointwiseParams p;
    p.program = {static_cast<int64_t>(FusedOpFamily::kElementWise),
                 static_cast<int64_t>(ElementWiseOp::kSum), static_cast<int64_t>(DataType::kF32),
                 0, 1, -1};
    p.attrs = {0.0, 0.0};
    p.outputs = {2};
    p.slices = std::move(slices);
    return net.add_layer(p, {y, y}, name);
  };
  Network net;
  Tensor* y = net.add_input("y", DataType::kF32, {2, 3, 8, 16});
  const Layer* halves = sum_of(net, y, {1, 2, 0, 4, 1, 2, 4, 4}, "halves");
  EXPECT_EQ(halves->output()->shape(), (Shape{2, 3, 4, 16}));
  EXPECT_DOUBLE_EQ(cost_of(halves).bytes, (2 * 3 * 8 * 16 + 2 * 3 * 4 * 16) * 4.0);
  const Layer* quarter = sum_of(net, y, {1, 2, 6, 2, 1, 2, 6, 2}, "quarter");
  EXPECT_DOUBLE_EQ(cost_of(quarter).bytes, (2 * 3 * 2 * 16 + 2 * 3 * 2 * 16) * 4.0);
}

}  // namespace
}  // namespace ember::engine
