// The builder's merge_sibling_products pass: products that read one input with constant weights
// and feed only pointwise layers become one product whose parts fuse_pointwise reads in place
// (SwiGLU's gate and up projections); what one product cannot compute for all, or what would
// leave a part to be copied, stays as it is.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "builder/passes/passes.h"
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

/// silu(x Wg^T) * (x Wu^T + bu) over x [rows, 5, 16]: the SiLU in the gate's epilogue (where
/// the CPU's fuse_epilogues puts it), a bias on the up projection only.
void swiglu(Network& net, DataType dt, DimExpr rows = DimExpr(2)) {
  Tensor* x = net.add_input("x", dt, {rows, DimExpr(5), DimExpr(16)});
  const ActivationType silu = ActivationType::kSilu;
  Tensor* g = linear(net, x, 24, 1, "gate", 0, &silu);
  Tensor* u = linear(net, x, 24, 2, "up", 3);
  net.mark_output(net.add_elementwise(g, u, ElementWiseOp::kProd, "gated")->output(), "out");
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
    EXPECT_EQ(merge_sibling_products(merged), 2);
    EXPECT_EQ(products(merged), 1);
    EXPECT_EQ(count(merged, LayerKind::kSlice), 2);
    EXPECT_EQ(count(merged, LayerKind::kActivation), 1);  // the gate's SiLU, on its part
    for (const Layer* l : merged.layers()) {
      if (l->kind() != LayerKind::kMatrixMultiply) continue;
      EXPECT_FALSE(l->params_as<MatrixMultiplyParams>().epilogue.fused_activation);
      EXPECT_EQ(l->output()->shape().back().constant(), 48);
      ASSERT_NE(l->input(2), nullptr);  // the up projection's bias, zeros for the gate's part
      const auto bias = constant_of(l->input(2));
      ASSERT_NE(bias, nullptr);
      EXPECT_EQ(bias->dims(), (std::vector<int64_t>{48}));
      const TestTensor b{bias->dtype(), bias->dims(),
                         std::vector<uint8_t>(static_cast<const uint8_t*>(bias->data()),
                                              static_cast<const uint8_t*>(bias->data()) +
                                                  bias->nbytes())};
      const std::vector<float> v = b.to_floats();
      for (size_t j = 0; j < 24; ++j) EXPECT_EQ(v[j], 0.0f) << j;
    }
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 5, 16}, 7)};
    expect_same_outputs(net, merged, ins, "merged");
    // fuse_pointwise reads both parts in place: no slice copy is left.
    fuse_pointwise_layers(merged, nullptr, nullptr);
    EXPECT_EQ(count(merged, LayerKind::kSlice), 0);
    EXPECT_EQ(count(merged, LayerKind::kFusedPointwise), 1);
    EXPECT_EQ(count(merged, LayerKind::kElementWise) + count(merged, LayerKind::kActivation), 0);
    expect_same_outputs(net, merged, ins, "merged and fused");
    // The builder runs the pass; the plan matches the reference.
    EXPECT_TRUE(test::build_logs(net, 2, "merge_sibling_products: 2 products"));
    test::run_network(net, ins);
  }
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
    // q and k merge (their parts are read as heads, through RoPE's views); v's reader is not
    // pointwise, so it stays a product of its own.
    EXPECT_EQ(merge_sibling_products(merged), 2);
    EXPECT_EQ(products(merged), 3);  // q+k, v and the kv product
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 5, 32}, 7),
                                         TestTensor::random(dt, {5, 8}, 8),
                                         TestTensor::random(dt, {5, 8}, 9)};
    expect_same_outputs(net, merged, ins, "merged");
    fuse_pointwise_layers(merged, nullptr, nullptr);
    EXPECT_EQ(count(merged, LayerKind::kSlice), 0);
    EXPECT_EQ(count(merged, LayerKind::kGather), 0);
    EXPECT_EQ(count(merged, LayerKind::kFusedPointwise), 2);
    expect_same_outputs(net, merged, ins, "merged and fused");
    EXPECT_TRUE(test::build_logs(net, 2, "merge_sibling_products: 2 products"));
    test::run_network(net, ins);
  }
}

TEST(MergeSiblingProducts, APartReadAsHeadsMustStartOnAHead) {
  // q read as heads of 16, and a pointwise sibling 8 wide: merged, the part after the sibling
  // would start inside a head, so the sibling stays out, whichever comes first; a second
  // sibling 16 wide still merges with q.
  for (const bool narrow_first : {false, true}) {
    for (const bool third : {false, true}) {
      SCOPED_TRACE(std::string(narrow_first ? "narrow first" : "q first") +
                   (third ? ", a 16-wide sibling" : ""));
      Network net;
      Tensor* x = net.add_input("x", DataType::kF32, {2, 16});
      auto narrow = [&] {
        Tensor* p = linear(net, x, 8, 2, "p");
        net.mark_output(net.add_activation(p, ActivationType::kRelu, 0, 0, "rp")->output(), "p");
      };
      if (narrow_first) narrow();
      Tensor* q = linear(net, x, 32, 1, "q");
      Tensor* h = net.add_reshape(q, {DimExpr(2), DimExpr(2), DimExpr(16)}, "heads")->output();
      net.mark_output(net.add_activation(h, ActivationType::kRelu, 0, 0, "rh")->output(), "h");
      if (!narrow_first) narrow();
      if (third) {
        Tensor* w = linear(net, x, 16, 3, "w");
        net.mark_output(net.add_activation(w, ActivationType::kTanh, 0, 0, "tw")->output(), "w");
      }
      Network merged = net.clone();
      EXPECT_EQ(merge_sibling_products(merged), third ? 2 : 0);
      const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF32, {2, 16}, 3)};
      expect_same_outputs(net, merged, ins, "merged");
      fuse_pointwise_layers(merged, nullptr, nullptr);
      EXPECT_EQ(count(merged, LayerKind::kSlice), 0);
    }
  }
}

TEST(MergeSiblingProducts, SymbolicRowsAndAWeightNotTransposed) {
  // [n, 16] x [16, 8] and [n, 16] x [16, 16] (weights [K, N]), their parts added: merged, run
  // at several row counts through the builder.
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF16, {n, DimExpr(16)});
  Tensor* a = net.add_matrix_multiply(x, false, constant(net, DataType::kF16, {16, 8}, 1, "wa"),
                                      false, "a")->output();
  Tensor* b = net.add_matrix_multiply(x, false, constant(net, DataType::kF16, {16, 16}, 2, "wb"),
                                      false, "b")->output();
  Tensor* b0 = fused_cases::last_dim_slice(net, b, 0, 8, "b_head");  // a slice read in place too
  Tensor* s = net.add_elementwise(a, b0, ElementWiseOp::kSum, "sum")->output();
  net.mark_output(net.add_activation(s, ActivationType::kRelu, 0, 0, "relu")->output(), "out");
  Network merged = net.clone();
  // b's reader is a Slice, not a pointwise layer: only products read by pointwise layers merge.
  EXPECT_EQ(merge_sibling_products(merged), 0);

  Network net2;
  Tensor* x2 = net2.add_input("x", DataType::kF16, {n, DimExpr(16)});
  Tensor* a2 = net2.add_matrix_multiply(x2, false, constant(net2, DataType::kF16, {16, 8}, 1, "wa"),
                                        false, "a")->output();
  Tensor* c2 = net2.add_matrix_multiply(x2, false, constant(net2, DataType::kF16, {16, 8}, 2, "wc"),
                                        false, "c")->output();
  Tensor* s2 = net2.add_elementwise(a2, c2, ElementWiseOp::kSub, "diff")->output();
  net2.mark_output(net2.add_activation(s2, ActivationType::kRelu, 0, 0, "relu")->output(), "out");
  Network merged2 = net2.clone();
  EXPECT_EQ(merge_sibling_products(merged2), 2);
  EXPECT_EQ(products(merged2), 1);
  for (int64_t rows : {1, 6, 19}) {
    const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF16, {rows, 16}, 9)};
    expect_same_outputs(net2, merged2, ins, "rows " + std::to_string(rows));
    OptimizationProfile p;
    p.set_range("n", 1, rows, 32);
    test::run_network(net2, ins, {{p}});
  }
}

TEST(MergeSiblingProducts, ASharedActivationStaysInTheMergedEpilogue) {
  // Three siblings with the same ReLU epilogue, summed: one product with the ReLU, no
  // Activation layer.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {3, 16});
  const ActivationType relu = ActivationType::kRelu;
  Tensor* a = linear(net, x, 8, 1, "a", 4, &relu);
  Tensor* b = linear(net, x, 8, 2, "b", 5, &relu);
  Tensor* c = linear(net, x, 16, 3, "c", 6, &relu);
  Tensor* c0 = net.add_activation(c, ActivationType::kSigmoid, 0, 0, "gate")->output();
  Tensor* s = net.add_elementwise(a, b, ElementWiseOp::kSum, "sum")->output();
  Tensor* t = net.add_concatenation({s, s}, 1, "twice")->output();
  net.mark_output(net.add_elementwise(t, c0, ElementWiseOp::kProd, "out_prod")->output(), "out");
  Network merged = net.clone();
  EXPECT_EQ(merge_sibling_products(merged), 3);
  EXPECT_EQ(products(merged), 1);
  EXPECT_EQ(count(merged, LayerKind::kActivation), 1);  // the sigmoid, as written
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
  struct Case {
    std::string name;
    std::function<Tensor*(Network&, Tensor*)> second;  ///< the sibling of x Wa^T (N = 8)
  };
  auto first = [](Network& net, Tensor* x) { return linear(net, x, 8, 1, "a"); };
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
      {"a weight that is an input",
       [](Network& net, Tensor* x) {
         Tensor* w = net.add_input("w", DataType::kF32, {8, 16});
         return net.add_matrix_multiply(x, false, w, true, "b")->output();
       }},
      {"read by a reshape (attention heads): the part would be a copy",
       [](Network& net, Tensor* x) {
         Tensor* b = linear(net, x, 8, 2, "b");
         return net.add_reshape(b, {DimExpr(2), DimExpr(4), DimExpr(2), DimExpr(4)}, "heads")
             ->output();
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {2, 4, 16});
    Tensor* a = first(net, x);
    Tensor* b = c.second(net, x);
    Tensor* s = b->shape().size() == a->shape().size() && b->shape() == a->shape()
                    ? net.add_elementwise(a, b, ElementWiseOp::kSum, "sum")->output()
                    : nullptr;
    if (s == nullptr) {
      net.mark_output(net.add_activation(a, ActivationType::kRelu, 0, 0, "ra")->output(), "a");
      net.mark_output(b, "b");
    } else {
      net.mark_output(s, "out");
    }
    const int before = products(net);
    EXPECT_EQ(merge_sibling_products(net), 0);
    EXPECT_EQ(products(net), before);
  }
  // A product that is a network output itself stays too; so do parts whose width is not a
  // whole vector (their reads would leave the vectorized path).
  for (int64_t width : {8, 6}) {
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {2, 16});
    Tensor* a = linear(net, x, width, 1, "a");
    Tensor* b = linear(net, x, width, 2, "b");
    if (width == 8) net.mark_output(a, "a");
    net.mark_output(net.add_elementwise(a, b, ElementWiseOp::kSum, "sum")->output(), "out");
    EXPECT_EQ(merge_sibling_products(net), 0) << width;
  }
}

TEST(MergeSiblingProducts, OffWithoutFusePointwiseOrByItsSwitch) {
  Network net;
  swiglu(net, DataType::kF32);
  BuildState s;
  s.plan.network = net.clone();
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
