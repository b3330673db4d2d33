// The builder's merge_sibling_products pass, which runs after fuse_pointwise: products that read
// one input with constant weights and feed only fused pointwise kernels become one product whose
// parts those kernels read in place through slice views (SwiGLU's gate and up, q and k before
// RoPE); what one product cannot compute for all, or a part something else reads, stays.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "backends/semantics/fused_pointwise.h"
#include "builder/passes/passes.h"
#include "ember/engine/builder.h"
#include "plan/plan.h"
#include "fused_pointwise_cases.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using fused_cases::count;
using fused_cases::kFloatTypes;
using test::TestTensor;

Tensor* constant(Network& net, DataType dt, std::vector<int64_t> dims, uint32_t seed,
                 const std::string& name) {
  const TestTensor t = TestTensor::random(dt, dims, seed);
  return net.add_constant(Weights::copy(dt, dims, t.bytes.data()), name)->output();
}

/// x [.., K] W^T with W [n, K] (transpose_b, as torch's Linear), a bias when `bias_seed`, and
/// the epilogue's activation when `act` (fuse_epilogues' work, written directly).
Tensor* linear(Network& net, Tensor* x, int64_t n, uint32_t seed, const std::string& name,
               uint32_t bias_seed = 0, const ActivationType* act = nullptr) {
  const DataType dt = x->dtype();
  const int64_t k = x->shape().back().constant();
  MatrixMultiplyParams p;
  p.transpose_b = true;
  if (act != nullptr) {
    p.epilogue.fused_activation = true;
    p.epilogue.activation = *act;
  }
  std::vector<Tensor*> in{x, constant(net, dt, {n, k}, seed, name + "/w")};
  if (bias_seed != 0) in.push_back(constant(net, dt, {n}, bias_seed, name + "/b"));
  return net.add_layer(p, in, name)->output();
}

/// silu(x Wg^T) * (x Wu^T + bu) over x [2, 5, 16], the SiLU a layer of its own (as the CUDA
/// back end leaves it: cuBLASLt has no SiLU epilogue), a bias on the up projection only.
void swiglu(Network& net, DataType dt) {
  Tensor* x = net.add_input("x", dt, {2, 5, 16});
  Tensor* g = linear(net, x, 24, 1, "gate");
  Tensor* u = linear(net, x, 24, 2, "up", 3);
  g = net.add_activation(g, ActivationType::kSilu, 0, 0, "silu")->output();
  net.mark_output(net.add_elementwise(g, u, ElementWiseOp::kProd, "gated")->output(), "out");
}

/// fuse_pointwise, then the pass (the builder's order); returns what the pass merged.
int fuse_and_merge(Network& net) {
  fuse_pointwise_layers(net, nullptr, nullptr);
  return merge_sibling_products(net);
}

/// The (dim, start, size) triples of every input of `net`'s FusedPointwise layers, in order.
std::vector<std::vector<int64_t>> fused_slices(const Network& net) {
  std::vector<std::vector<int64_t>> out;
  for (const Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kFusedPointwise) continue;
    std::vector<semantics::InputView> views;
    EXPECT_TRUE(semantics::fused_input_views(l->params_as<FusedPointwiseParams>(),
                                             l->inputs().size(), views));
    for (const auto& v : views) out.push_back(v.slice);
  }
  return out;
}

int products(const Network& net) { return count(net, LayerKind::kMatrixMultiply); }

void expect_same_outputs(const Network& a, const Network& b, const std::vector<TestTensor>& ins,
                         const std::string& what) {
  const auto want = test::run_network_direct(a, ins);
  const auto got = test::run_network_direct(b, ins);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    test::expect_close(got[i], want[i].to_floats(), got[i].dtype, what);
  }
}

TEST(MergeSiblingProducts, SwiGluProjectionsBecomeOneProductReadInPlace) {
  for (DataType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Network net;
    swiglu(net, dt);
    Network merged = net.clone();
    EXPECT_EQ(fuse_and_merge(merged), 2);
    EXPECT_EQ(products(merged), 1);
    EXPECT_EQ(count(merged, LayerKind::kSlice), 0);
    EXPECT_EQ(count(merged, LayerKind::kFusedPointwise), 1);
    EXPECT_EQ(count(merged, LayerKind::kElementWise) + count(merged, LayerKind::kActivation), 0);
    // The fused kernel reads the merged product twice: its first 24 and its last 24 columns.
    EXPECT_EQ(fused_slices(merged),
              (std::vector<std::vector<int64_t>>{{2, 0, 24}, {2, 24, 24}}));
    for (const Layer* l : merged.layers()) {
      if (l->kind() != LayerKind::kMatrixMultiply) continue;
      EXPECT_EQ(l->output()->shape().back().constant(), 48);
      ASSERT_NE(l->input(2), nullptr);  // the up projection's bias, zeros for the gate's part
      const Weights* bias = constant_of(l->input(2));
      ASSERT_NE(bias, nullptr);
      EXPECT_EQ(bias->dims(), (std::vector<int64_t>{48}));
      const auto* bytes = static_cast<const uint8_t*>(bias->data());
      const TestTensor b{bias->dtype(), bias->dims(),
                         std::vector<uint8_t>(bytes, bytes + bias->nbytes())};
      const TestTensor up_bias = TestTensor::random(dt, {24}, 3);
      const std::vector<float> v = b.to_floats(), want = up_bias.to_floats();
      for (size_t j = 0; j < 24; ++j) {
        EXPECT_EQ(v[j], 0.0f) << j;
        EXPECT_EQ(v[24 + j], want[j]) << j;
      }
    }
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 5, 16}, 7)};
    expect_same_outputs(net, merged, ins, "merged");
  }
  // Through the builder on the CPU (whose products take the SiLU into their epilogue, so this
  // gated form has none: tanh(x Wg^T * x Wu^T)), a plan that matches the reference.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {2, 5, 16});
  Tensor* g = linear(net, x, 24, 1, "gate", 4);
  Tensor* u = linear(net, x, 24, 2, "up", 3);
  Tensor* h = net.add_elementwise(g, u, ElementWiseOp::kProd, "gated")->output();
  net.mark_output(net.add_activation(h, ActivationType::kTanh, 0, 0, "tanh")->output(), "out");
  EXPECT_TRUE(test::build_logs(net, 2, "merge_sibling_products: 2 products"));
  test::run_network(net, {TestTensor::random(DataType::kF16, {2, 5, 16}, 7)});
  // A CUDA plan (built without a GPU: nothing is timed) of SwiGLU as written, the SiLU after the
  // gate projection: fuse_epilogues leaves the SiLU to the fused kernel there, so the two
  // projections merge into one GEMM.
  const auto backends = available_backends();
  if (std::find(backends.begin(), backends.end(), "cuda") == backends.end()) return;
  Network written;
  Tensor* xw = written.add_input("x", DataType::kF16, {2, 5, 16});
  Tensor* gw = written.add_matrix_multiply(xw, false, constant(written, DataType::kF16, {24, 16}, 1,
                                                               "wg"), true, "gate")->output();
  Tensor* uw = written.add_matrix_multiply(xw, false, constant(written, DataType::kF16, {24, 16}, 2,
                                                               "wu"), true, "up")->output();
  gw = written.add_activation(gw, ActivationType::kSilu, 0, 0, "silu")->output();
  written.mark_output(written.add_elementwise(gw, uw, ElementWiseOp::kProd, "gated")->output(),
                      "out");
  BuilderConfig config;
  config.backend = "cuda";
  const auto plan = Builder(config).build(written);
  const PlanModel model = plan_read(plan.data(), plan.size());
  EXPECT_EQ(products(model.network), 1);
  EXPECT_EQ(count(model.network, LayerKind::kFusedPointwise), 1);
  EXPECT_EQ(count(model.network, LayerKind::kSlice), 0);
}

/// x [2, 5, 32] -> q (4 heads of 8), k and v (2 heads of 8 each), biased; q and k are
/// reshaped into heads and rotated (RoPE: a transpose, rotate_half's gather, products with
/// cos and sin), v is reshaped and read by a product (attention's stand-in).
void decoder_projections(Network& net, DataType dt) {
  Tensor* x = net.add_input("x", dt, {2, 5, 32});
  Tensor* cs = net.add_input("cos", dt, {5, 8});
  Tensor* sn = net.add_input("sin", dt, {5, 8});
  std::vector<int32_t> rot{4, 5, 6, 7, 0, 1, 2, 3};
  Tensor* idx = net.add_constant(Weights::copy(DataType::kI32, {8}, rot.data()), "rot")->output();
  auto heads = [&](Tensor* t, int64_t h, const std::string& name) {
    return net.add_reshape(t, {DimExpr(2), DimExpr(5), DimExpr(h), DimExpr(8)}, name)->output();
  };
  auto rope = [&](Tensor* t, const std::string& name) {
    Tensor* tt = net.add_transpose(t, {0, 2, 1, 3}, name + "/transpose")->output();
    GatherParams gp;
    gp.axis = 3;
    Tensor* r = net.add_gather(tt, idx, gp, name + "/rotate")->output();
    Tensor* a = net.add_elementwise(tt, cs, ElementWiseOp::kProd, name + "/cos")->output();
    Tensor* b = net.add_elementwise(r, sn, ElementWiseOp::kProd, name + "/sin")->output();
    return net.add_elementwise(a, b, ElementWiseOp::kSum, name)->output();
  };
  Tensor* q = rope(heads(linear(net, x, 32, 1, "q", 4), 4, "q_heads"), "q_rope");
  Tensor* k = rope(heads(linear(net, x, 16, 2, "k", 5), 2, "k_heads"), "k_rope");
  Tensor* v = heads(linear(net, x, 16, 3, "v", 6), 2, "v_heads");
  net.mark_output(q, "q");
  net.mark_output(k, "k");
  net.mark_output(net.add_matrix_multiply(k, false, net.add_transpose(v, {0, 2, 3, 1}, "vt")
                                                        ->output(), false, "kv")->output(),
                  "kv");
}

TEST(MergeSiblingProducts, QueryAndKeyBeforeRopeBecomeOneProductReadAsHeads) {
  for (DataType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Network net;
    decoder_projections(net, dt);
    Network merged = net.clone();
    // q and k merge (RoPE's kernels read their heads); v's reader is a product, not a fused
    // kernel, so it stays a product of its own.
    EXPECT_EQ(fuse_and_merge(merged), 2);
    EXPECT_EQ(products(merged), 3);  // q+k, v and the kv product
    EXPECT_EQ(count(merged, LayerKind::kSlice), 0);
    EXPECT_EQ(count(merged, LayerKind::kGather), 0);
    EXPECT_EQ(count(merged, LayerKind::kFusedPointwise), 2);
    // Each RoPE kernel reads q (heads 0..3) or k (heads 4..5) of the [2, 5, 6, 8] rows of heads,
    // twice (the value and its rotation).
    std::vector<std::vector<int64_t>> slices = fused_slices(merged);
    std::sort(slices.begin(), slices.end());
    EXPECT_EQ(slices, (std::vector<std::vector<int64_t>>{
                          {}, {}, {}, {}, {2, 0, 4}, {2, 0, 4}, {2, 4, 2}, {2, 4, 2}}));
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 5, 32}, 7),
                                         TestTensor::random(dt, {5, 8}, 8),
                                         TestTensor::random(dt, {5, 8}, 9)};
    expect_same_outputs(net, merged, ins, "merged and fused");
    EXPECT_TRUE(test::build_logs(net, 2, "merge_sibling_products: 2 products"));
    test::run_network(net, ins);
  }
}

TEST(MergeSiblingProducts, APartReadAsHeadsMustStartOnAHead) {
  // q read as heads of 16 (relu then tanh on the heads: one fused kernel), and a sibling 8 wide
  // read by a fused kernel: merged, a part would start inside a head, so the narrow sibling
  // stays out, whichever comes first; a third sibling 16 wide still merges with q.
  for (const bool narrow_first : {false, true}) {
    for (const bool third : {false, true}) {
      SCOPED_TRACE(std::string(narrow_first ? "narrow first" : "q first") +
                   (third ? ", a 16-wide sibling" : ""));
      Network net;
      Tensor* x = net.add_input("x", DataType::kF32, {2, 16});
      auto fused_out = [&](Tensor* t, const std::string& name) {
        t = net.add_activation(t, ActivationType::kRelu, 0, 0, name + "_relu")->output();
        net.mark_output(net.add_activation(t, ActivationType::kTanh, 0, 0, name)->output(), name);
      };
      auto narrow = [&] { fused_out(linear(net, x, 8, 2, "p"), "p_out"); };
      if (narrow_first) narrow();
      Tensor* q = linear(net, x, 32, 1, "q");
      fused_out(net.add_reshape(q, {DimExpr(2), DimExpr(2), DimExpr(16)}, "heads")->output(),
                "h_out");
      if (!narrow_first) narrow();
      if (third) fused_out(linear(net, x, 16, 3, "w"), "w_out");
      Network merged = net.clone();
      EXPECT_EQ(fuse_and_merge(merged), third ? 2 : 0);
      EXPECT_EQ(products(merged), third ? 2 : 2);
      const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF32, {2, 16}, 3)};
      expect_same_outputs(net, merged, ins, "merged");
    }
  }
}

TEST(MergeSiblingProducts, SymbolicRowsAndAWeightNotTransposed) {
  // [n, 16] x [16, 8] twice (weights [K, N]), their difference through a ReLU: merged, run at
  // several row counts directly and through the builder.
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF16, {n, DimExpr(16)});
  Tensor* a = net.add_matrix_multiply(x, false, constant(net, DataType::kF16, {16, 8}, 1, "wa"),
                                      false, "a")->output();
  Tensor* c = net.add_matrix_multiply(x, false, constant(net, DataType::kF16, {16, 8}, 2, "wc"),
                                      false, "c")->output();
  Tensor* s = net.add_elementwise(a, c, ElementWiseOp::kSub, "diff")->output();
  net.mark_output(net.add_activation(s, ActivationType::kRelu, 0, 0, "relu")->output(), "out");
  Network merged = net.clone();
  EXPECT_EQ(fuse_and_merge(merged), 2);
  EXPECT_EQ(products(merged), 1);
  for (int64_t rows : {1, 6, 19}) {
    const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF16, {rows, 16}, 9)};
    expect_same_outputs(net, merged, ins, "rows " + std::to_string(rows));
    OptimizationProfile p;
    p.set_range("n", 1, rows, 32);
    test::run_network(net, ins, {{p}});
  }
}

TEST(MergeSiblingProducts, ASharedActivationStaysInTheMergedEpilogue) {
  // Three siblings with the same ReLU epilogue, read by one fused kernel: one product with the
  // ReLU.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {3, 16});
  const ActivationType relu = ActivationType::kRelu;
  Tensor* a = linear(net, x, 8, 1, "a", 4, &relu);
  Tensor* b = linear(net, x, 8, 2, "b", 5, &relu);
  Tensor* c = linear(net, x, 8, 3, "c", 6, &relu);
  Tensor* g = net.add_activation(c, ActivationType::kSigmoid, 0, 0, "gate")->output();
  Tensor* t = net.add_elementwise(a, b, ElementWiseOp::kSum, "sum")->output();
  net.mark_output(net.add_elementwise(t, g, ElementWiseOp::kProd, "out_prod")->output(), "out");
  Network merged = net.clone();
  EXPECT_EQ(fuse_and_merge(merged), 3);
  EXPECT_EQ(products(merged), 1);
  for (const Layer* l : merged.layers()) {
    if (l->kind() == LayerKind::kMatrixMultiply) {
      const Epilogue& e = l->params_as<MatrixMultiplyParams>().epilogue;
      EXPECT_TRUE(e.fused_activation);
      EXPECT_EQ(e.activation, ActivationType::kRelu);
    }
  }
  const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF32, {3, 16}, 8)};
  expect_same_outputs(net, merged, ins, "merged");
  test::run_network(net, ins);
}

TEST(MergeSiblingProducts, WhatOneProductCannotComputeOrWouldCopyStays) {
  // x Wa^T (N = 8) and a second product, each read by one fused kernel (relu then tanh) unless
  // the case says otherwise: nothing merges.
  struct Case {
    std::string name;
    std::function<Tensor*(Network&, Tensor*)> second;
  };
  const ActivationType relu = ActivationType::kRelu;
  const std::vector<Case> cases = {
      {"another input",
       [](Network& net, Tensor*) {
         Tensor* y = net.add_input("y", DataType::kF32, {2, 4, 16});
         return linear(net, y, 8, 2, "b");
       }},
      {"another transpose of the weight",
       [](Network& net, Tensor* x) {
         return net.add_matrix_multiply(x, false, constant(net, DataType::kF32, {16, 8}, 2, "b/w"),
                                        false, "b")->output();
       }},
      {"a residual input",
       [](Network& net, Tensor* x) {
         MatrixMultiplyParams p;
         p.transpose_b = true;
         Tensor* r = net.add_input("r", DataType::kF32, {2, 4, 8});
         return net.add_layer(p, {x, constant(net, DataType::kF32, {8, 16}, 2, "b/w"), nullptr, r},
                              "b")->output();
       }},
      {"another scale",
       [](Network& net, Tensor* x) {
         MatrixMultiplyParams p;
         p.transpose_b = true;
         p.epilogue.scale = 0.5;
         return net.add_layer(p, {x, constant(net, DataType::kF32, {8, 16}, 2, "b/w")}, "b")
             ->output();
       }},
      {"another activation in the epilogue",
       [relu](Network& net, Tensor* x) { return linear(net, x, 8, 2, "b", 0, &relu); }},
      {"a weight that is an input",
       [](Network& net, Tensor* x) {
         Tensor* w = net.add_input("w", DataType::kF32, {8, 16});
         return net.add_matrix_multiply(x, false, w, true, "b")->output();
       }},
      {"a width that is not a whole vector",
       [](Network& net, Tensor* x) { return linear(net, x, 6, 2, "b"); }},
      {"read as heads by a product (attention's v): the part would be a copy",
       [](Network& net, Tensor* x) {
         Tensor* b = linear(net, x, 8, 2, "b");
         Tensor* h = net.add_reshape(b, {DimExpr(2), DimExpr(4), DimExpr(2), DimExpr(4)}, "heads")
                         ->output();
         return net.add_matrix_multiply(h, false, h, true, "scores")->output();
       }},
      {"read by a pointwise layer left alone (no fused kernel)",
       [](Network& net, Tensor* x) {
         Tensor* b = linear(net, x, 8, 2, "b");
         return net.add_elementwise(b, b, ElementWiseOp::kProd, "square")->output();
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {2, 4, 16});
    Tensor* a = linear(net, x, 8, 1, "a");
    a = net.add_activation(a, ActivationType::kRelu, 0, 0, "ra")->output();
    net.mark_output(net.add_activation(a, ActivationType::kTanh, 0, 0, "ta")->output(), "a");
    Tensor* b = c.second(net, x);
    if (b->producer()->kind() == LayerKind::kMatrixMultiply) {
      b = net.add_activation(b, ActivationType::kRelu, 0, 0, "rb")->output();
      b = net.add_activation(b, ActivationType::kTanh, 0, 0, "tb")->output();
    }
    net.mark_output(b, "b");
    const int before = products(net);
    EXPECT_EQ(fuse_and_merge(net), 0);
    EXPECT_EQ(products(net), before);
  }
  // A product that is a network output itself stays too.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 16});
  Tensor* a = linear(net, x, 8, 1, "a");
  Tensor* b = linear(net, x, 8, 2, "b");
  net.mark_output(a, "a");
  Tensor* t = net.add_elementwise(a, b, ElementWiseOp::kSum, "sum")->output();
  net.mark_output(net.add_activation(t, ActivationType::kRelu, 0, 0, "r")->output(), "out");
  EXPECT_EQ(fuse_and_merge(net), 0);
}

TEST(MergeSiblingProducts, OffWithoutFusePointwiseOrByItsSwitch) {
  Network net;
  swiglu(net, DataType::kF32);
  BuildState s;
  s.plan.network = net.clone();
  fuse_pointwise_layers(s.plan.network, nullptr, nullptr);
  s.config.fuse_pointwise = false;
  pass_merge_sibling_products(s);
  EXPECT_EQ(products(s.plan.network), 2);
  ASSERT_FALSE(s.log.empty());
  EXPECT_NE(s.log.back().find("off (fuse_pointwise is off)"), std::string::npos) << s.log.back();
  s.config.fuse_pointwise = true;
  setenv("EMBER_MERGE_SIBLING_PRODUCTS", "0", 1);
  pass_merge_sibling_products(s);
  unsetenv("EMBER_MERGE_SIBLING_PRODUCTS");
  EXPECT_EQ(products(s.plan.network), 2);
  EXPECT_NE(s.log.back().find("EMBER_MERGE_SIBLING_PRODUCTS=0"), std::string::npos);
  pass_merge_sibling_products(s);
  EXPECT_EQ(products(s.plan.network), 1);
}

}  // namespace
}  // namespace ember::engine
