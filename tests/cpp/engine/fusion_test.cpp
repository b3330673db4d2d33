// The builder's fuse_epilogues pass: what it fuses (layer counts in the built plan) and that the
// fused engine computes what the unfused network computes (run_network compares the built plan
// with the reference executor running the network as written).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <tuple>
#include <limits>

#include "ember/engine/builder.h"
#include "ember/engine/runtime.h"
#include "plan/plan.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

/// How many layers of type `kind` the built plan has.
int count_layers(const Network& net, const std::string& kind,
                 std::vector<OptimizationProfile> profiles = {}) {
  BuilderConfig config;
  config.profiles = std::move(profiles);
  const auto plan = Builder(config).build(net);
  const std::string json = Runtime().deserialize(plan.data(), plan.size())->inspect_json();
  const std::string key = "\"type\": \"" + kind + "\"";
  int n = 0;
  for (size_t at = json.find(key); at != std::string::npos; at = json.find(key, at + 1)) ++n;
  return n;
}

Tensor* constant(Network& net, DataType dt, std::vector<int64_t> dims, uint32_t seed,
                 const std::string& name, float lo = -1.0f, float hi = 1.0f) {
  const TestTensor t = TestTensor::random(dt, dims, seed, lo, hi);
  return net.add_constant(Weights::copy(dt, dims, t.bytes.data()), name)->output();
}

/// conv -> *scale -> +shift (batch norm) -> +skip -> relu, as the converters emit ResNet blocks.
void build_conv_block(Network& net, DataType dt) {
  Tensor* x = net.add_input("x", dt, {2, 3, 6, 6});
  Tensor* skip = net.add_input("skip", dt, {2, 4, 6, 6});
  ConvolutionParams p;
  p.stride = {1, 1};
  p.padding_begin = p.padding_end = {1, 1};
  p.dilation = {1, 1};
  Tensor* w = constant(net, dt, {4, 3, 3, 3}, 1, "w");
  Tensor* y = net.add_convolution(x, w, nullptr, p, "conv")->output();
  y = net.add_elementwise(y, constant(net, dt, {1, 4, 1, 1}, 2, "scale", 0.5f, 1.5f),
                          ElementWiseOp::kProd, "bn_scale")->output();
  y = net.add_elementwise(y, constant(net, dt, {1, 4, 1, 1}, 3, "shift"), ElementWiseOp::kSum,
                          "bn_shift")->output();
  y = net.add_elementwise(skip, y, ElementWiseOp::kSum, "residual")->output();
  y = net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output();
  net.mark_output(y, "y");
}

TEST(FuseEpilogues, ConvBatchNormResidualReluBecomeOneConvolution) {
  for (DataType dt : {DataType::kF32, DataType::kF16}) {
    Network net;
    build_conv_block(net, dt);
    EXPECT_EQ(count_layers(net, "Convolution"), 1);
    EXPECT_EQ(count_layers(net, "ElementWise"), 0) << dtype_name(dt);
    EXPECT_EQ(count_layers(net, "Activation"), 0) << dtype_name(dt);
    const auto out = test::run_network(net, {TestTensor::random(dt, {2, 3, 6, 6}, 7),
                                             TestTensor::random(dt, {2, 4, 6, 6}, 8)});
    EXPECT_EQ(out.size(), 1u);
  }
}

TEST(FuseEpilogues, MatMulBiasActivationAndResidualBehindAReshape) {
  // [n, 8] x [8, 6] + bias[6] -> gelu ; [n, 6] x [6, 8] + bias -> reshape [1, n, 8] + x3
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF32, {n, 8});
  Tensor* x3 = net.add_input("x3", DataType::kF32, {1, n, 8});
  Tensor* h = net.add_matrix_multiply(x, false, constant(net, DataType::kF32, {8, 6}, 1, "w1"),
                                      false, "fc1")->output();
  h = net.add_elementwise(h, constant(net, DataType::kF32, {6}, 2, "b1"), ElementWiseOp::kSum,
                          "fc1_bias")->output();
  h = net.add_activation(h, ActivationType::kGeluErf, 0, 0, "gelu")->output();
  Tensor* o = net.add_matrix_multiply(h, false, constant(net, DataType::kF32, {6, 8}, 3, "w2"),
                                      false, "fc2")->output();
  o = net.add_elementwise(o, constant(net, DataType::kF32, {1, 8}, 4, "b2"), ElementWiseOp::kSum,
                          "fc2_bias")->output();
  o = net.add_reshape(o, {1, n, 8}, "view")->output();
  o = net.add_elementwise(x3, o, ElementWiseOp::kSum, "residual")->output();
  net.mark_output(o, "y");
  test::RunOptions opts;
  opts.profiles = {OptimizationProfile().set_range("n", 1, 5, 9)};
  EXPECT_EQ(count_layers(net, "MatrixMultiply", opts.profiles), 2);
  EXPECT_EQ(count_layers(net, "ElementWise", opts.profiles), 0);
  EXPECT_EQ(count_layers(net, "Activation", opts.profiles), 0);
  for (int64_t rows : {1, 5, 9}) {
    test::run_network(net, {TestTensor::random(DataType::kF32, {rows, 8}, 5),
                            TestTensor::random(DataType::kF32, {1, rows, 8}, 6)}, opts);
  }
}

TEST(FuseEpilogues, AnActivationTheGemmCannotRunJoinsThePointwiseLayerThatReadsIt) {
  // SwiGLU: silu(x Wg) * (x Wu). On the CPU the SiLU runs inside the product (an epilogue);
  // for CUDA (cuBLASLt has no SiLU epilogue) it stays out and joins the product by the up
  // projection in one FusedPointwise layer. A ReLU (cuBLASLt has it) goes into the GEMM there
  // too.
  auto build = [](Network& net, ActivationType act) {
    Tensor* x = net.add_input("x", DataType::kF16, {4, 8});
    Tensor* g = net.add_matrix_multiply(x, false, constant(net, DataType::kF16, {8, 16}, 1, "wg"),
                                        false, "gate")->output();
    Tensor* u = net.add_matrix_multiply(x, false, constant(net, DataType::kF16, {8, 16}, 2, "wu"),
                                        false, "up")->output();
    g = net.add_activation(g, act, 0, 0, "act")->output();
    net.mark_output(net.add_elementwise(g, u, ElementWiseOp::kProd, "gated")->output(), "y");
  };
  auto kinds = [](const Network& net, const std::string& backend) {
    BuilderConfig config;
    config.backend = backend;
    BuildReport report;
    const auto plan = Builder(config).build(net, &report);
    const PlanModel model = plan_read(plan.data(), plan.size());  // no GPU needed to read
    std::string line;
    for (const std::string& l : report.pass_log) {
      if (l.rfind("fuse_epilogues:", 0) == 0) line = l;
    }
    auto n = [&](LayerKind kind) {
      int c = 0;
      for (const Layer* l : model.network.layers()) c += l->kind() == kind ? 1 : 0;
      return c;
    };
    return std::make_tuple(n(LayerKind::kFusedPointwise), n(LayerKind::kElementWise),
                           n(LayerKind::kActivation), line);
  };
  // (back end, activation) -> FusedPointwise and ElementWise layers left, and the log's words.
  auto expect = [&](const std::string& backend, ActivationType act, int fused, int elementwise,
                    const std::string& logged) {
    SCOPED_TRACE(backend);
    Network net;
    build(net, act);
    const auto [f, e, a, line] = kinds(net, backend);
    EXPECT_EQ(f, fused);
    EXPECT_EQ(e, elementwise);
    EXPECT_EQ(a, 0);  // in a product's epilogue or in the fused layer, never on its own
    EXPECT_NE(line.find(logged), std::string::npos) << line;
    if (backend == "cpu") test::run_network(net, {TestTensor::random(DataType::kF16, {4, 8}, 3)});
  };
  expect("cpu", ActivationType::kSilu, 0, 1, "1 activations,");
  const auto backends = available_backends();
  if (std::find(backends.begin(), backends.end(), "cuda") == backends.end()) return;
  expect("cuda", ActivationType::kSilu, 1, 0,
         "0 activations, 0 requantizations, 1 activations left to fuse_pointwise");
  expect("cuda", ActivationType::kRelu, 0, 1, "1 activations,");
}

TEST(FuseEpilogues, AttentionScoreScaleBecomesTheMatMulScale) {
  Network net;
  Tensor* q = net.add_input("q", DataType::kF32, {2, 5, 8});
  Tensor* k = net.add_input("k", DataType::kF32, {2, 6, 8});
  Tensor* s = net.add_matrix_multiply(q, false, k, true, "qk")->output();
  const TestTensor c = TestTensor::floats(DataType::kF32, {1, 1, 1}, {0.35355339f});
  s = net.add_elementwise(
           s, net.add_constant(Weights::copy(DataType::kF32, {1, 1, 1}, c.bytes.data()), "c")->output(),
           ElementWiseOp::kProd, "scale")->output();
  net.mark_output(net.add_softmax(s, 2, false, "softmax")->output(), "p");
  EXPECT_EQ(count_layers(net, "ElementWise"), 0);
  test::run_network(net, {TestTensor::random(DataType::kF32, {2, 5, 8}, 1),
                          TestTensor::random(DataType::kF32, {2, 6, 8}, 2)});
}

TEST(FuseEpilogues, ColumnScaleAfterAProductFoldsIntoItsWeightAndBias) {
  // linear -> * layer_scale[N] -> + residual (ConvNeXt's block end once channels_last moved
  // its permutes): the scale goes into the weight's columns and the bias, the residual joins
  // the epilogue, and no ElementWise is left. Both weight layouts ([N, K] read transposed, and
  // [K, N]), f32 and f16; a scalar scale with a bias folds the same way.
  for (DataType dt : {DataType::kF32, DataType::kF16}) {
    for (bool transpose_b : {true, false}) {
      for (bool scalar : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (transpose_b ? " [N, K]" : " [K, N]") +
                     (scalar ? " scalar" : ""));
        Network net;
        Tensor* x = net.add_input("x", dt, {2, 3, 3, 16});
        Tensor* r = net.add_input("r", dt, {2, 3, 3, 8});
        Tensor* w = constant(net, dt, transpose_b ? std::vector<int64_t>{8, 16}
                                                  : std::vector<int64_t>{16, 8}, 1, "w");
        Tensor* y = net.add_matrix_multiply(x, false, w, transpose_b, "mm")->output();
        y = net.add_elementwise(y, constant(net, dt, {8}, 2, "b"), ElementWiseOp::kSum, "bias")
                ->output();
        y = net.add_elementwise(constant(net, dt, scalar ? std::vector<int64_t>{1}
                                                         : std::vector<int64_t>{1, 1, 1, 8},
                                         3, "layer_scale", 0.1f, 0.9f),
                                y, ElementWiseOp::kProd, "scale")
                ->output();
        net.mark_output(net.add_elementwise(y, r, ElementWiseOp::kSum, "residual")->output(), "y");
        EXPECT_EQ(count_layers(net, "ElementWise"), 0);
        EXPECT_EQ(count_layers(net, "FusedPointwise"), 0);
        EXPECT_EQ(count_layers(net, "MatrixMultiply"), 1);
        EXPECT_TRUE(test::build_logs(net, 3, "fuse_epilogues: 1 scale/shift folds"));
        test::run_network(net, {TestTensor::random(dt, {2, 3, 3, 16}, 4),
                                TestTensor::random(dt, {2, 3, 3, 8}, 5)});
      }
    }
  }
  // A scale along another dim stays an ElementWise layer.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 16});
  Tensor* y = net.add_matrix_multiply(x, false, constant(net, DataType::kF32, {8, 16}, 1, "w"),
                                      true, "mm")->output();
  y = net.add_elementwise(y, constant(net, DataType::kF32, {8}, 2, "b"), ElementWiseOp::kSum)
          ->output();
  net.mark_output(net.add_elementwise(y, constant(net, DataType::kF32, {4, 1}, 3, "rows"),
                                      ElementWiseOp::kProd)->output(), "y");
  EXPECT_EQ(count_layers(net, "ElementWise"), 1);
  test::run_network(net, {TestTensor::random(DataType::kF32, {4, 16}, 6)});
}

TEST(FuseEpilogues, LeavesProductsReadTwiceAndNonConstantScales) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 8});
  Tensor* s = net.add_input("s", DataType::kF32, {4, 6});
  Tensor* mm = net.add_matrix_multiply(x, false, constant(net, DataType::kF32, {8, 6}, 1, "w"),
                                       false, "mm")->output();
  Tensor* a = net.add_activation(mm, ActivationType::kRelu, 0, 0, "relu")->output();
  Tensor* b = net.add_elementwise(mm, s, ElementWiseOp::kProd, "scaled")->output();
  net.mark_output(a, "a");
  net.mark_output(b, "b");
  EXPECT_EQ(count_layers(net, "Activation"), 1);
  EXPECT_EQ(count_layers(net, "ElementWise"), 1);
  test::run_network(net, {TestTensor::random(DataType::kF32, {4, 8}, 2),
                          TestTensor::random(DataType::kF32, {4, 6}, 3)});
}

TEST(FuseEpilogues, NoBiasForAMatrixTimesVector) {
  // W [4, 8] @ v [8] + c [4]: the output's last dim is W's rows, and cuBLASLt's bias runs along
  // b's columns, which a vector lacks: the add stays a layer, and the epilogue input refuses it.
  Network net;
  Tensor* v = net.add_input("v", DataType::kF32, {8});
  Tensor* y = net.add_matrix_multiply(constant(net, DataType::kF32, {4, 8}, 1, "w"), false, v,
                                      false, "mv")->output();
  y = net.add_elementwise(y, constant(net, DataType::kF32, {4}, 2, "c"), ElementWiseOp::kSum,
                          "add")->output();
  net.mark_output(y, "y");
  EXPECT_EQ(count_layers(net, "ElementWise"), 1);
  test::run_network(net, {TestTensor::random(DataType::kF32, {8}, 3)});
  Network bad;
  Tensor* b = bad.add_input("b", DataType::kF32, {4});
  try {
    bad.add_layer(MatrixMultiplyParams{},
                  {bad.add_input("a", DataType::kF32, {4, 8}), bad.add_input("x", DataType::kF32, {8}), b});
    ADD_FAILURE() << "a bias with a vector b was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("b (input 1) of rank >= 2"), std::string::npos) << e.what();
  }
}

TEST(PlanMemory, ReshapesShareTheirInputsSlot) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 6});
  Tensor* r = net.add_activation(x, ActivationType::kRelu, 0, 0, "relu")->output();
  Tensor* v = net.add_reshape(r, {2, 12}, "view")->output();
  Tensor* y = net.add_activation(v, ActivationType::kSigmoid, 0, 0, "sig")->output();
  y = net.add_elementwise(y, net.add_reshape(r, {2, 12}, "view2")->output(), ElementWiseOp::kSum,
                          "sum")->output();
  net.mark_output(y, "y");
  BuilderConfig config;
  config.fuse_pointwise = false;  // sig and sum would become one layer, their tensor none
  BuildReport report;
  Builder(config).build(net, &report);
  bool logged = false;
  for (const auto& line : report.pass_log) {
    logged = logged || line.find("2 reshapes share their input's slot") != std::string::npos;
  }
  EXPECT_TRUE(logged);
  // relu, sig: two 96-byte tensors (256-byte slots); the views cost nothing.
  EXPECT_EQ(report.arena_bytes, 2 * 256);
  test::run_network(net, {TestTensor::random(DataType::kF32, {4, 6}, 9)});
}

// ---------------------------------------------------------------- simplify_attention

/// The built plan's inspector JSON (profiles for a network with symbolic dims).
std::string built_json_with(const Network& net, const std::vector<OptimizationProfile>& profiles) {
  BuilderConfig config;
  config.profiles = profiles;
  const auto plan = Builder(config).build(net);
  return Runtime().deserialize(plan.data(), plan.size())->inspect_json();
}

std::string built_json(const Network& net) { return built_json_with(net, {}); }

/// The simplify_attention line of the build log.
std::string simplify_attention_log(const Network& net,
                                   const std::vector<OptimizationProfile>& profiles) {
  BuilderConfig config;
  config.profiles = profiles;
  BuildReport report;
  Builder(config).build(net, &report);
  for (const auto& line : report.pass_log) {
    if (line.rfind("simplify_attention:", 0) == 0) return line;
  }
  return "";
}

/// q, k, v [b, 5, 3, 8] (seq-major, as a model holds them) -> transpose(1, 2) -> Attention with
/// a bool mask -> (transpose(1, 2) when transpose_out) -> reshape [b, 5, 24]. `rope`: q and k
/// are multiplied by themselves after their transposes (where a decoder applies RoPE).
Network attention_block(bool transpose_out, bool rope = false) {
  Network net;
  const DimExpr b = DimExpr::symbol("b");
  std::vector<Tensor*> heads;
  for (const char* name : {"q", "k", "v"}) {
    Tensor* x = net.add_input(name, DataType::kF16, {b, 5, 3, 8});
    Tensor* t = net.add_transpose(x, {0, 2, 1, 3}, std::string(name) + "_t")->output();
    if (rope && std::string(name) != "v") {
      t = net.add_elementwise(t, t, ElementWiseOp::kProd, std::string(name) + "_rope")->output();
    }
    heads.push_back(t);
  }
  heads.push_back(net.add_input("mask", DataType::kBool, {b, 1, 5, 5}));
  AttentionParams p;
  p.scale = 0.25;
  Tensor* o = net.add_layer(p, heads, "attn")->output();
  if (transpose_out) o = net.add_transpose(o, {0, 2, 1, 3}, "o_t")->output();
  net.mark_output(net.add_reshape(o, {b, 5, 24}, "merge")->output(), "y");
  return net;
}

TEST(SimplifyAttention, TransposesAroundAttentionBecomeTheSeqMajorLayout) {
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("b", 1, 2, 4);
  Network folded = attention_block(true);
  EXPECT_EQ(count_layers(folded, "Attention", profiles), 1);
  EXPECT_EQ(count_layers(folded, "Shuffle", profiles), 1) << "only the final reshape is left";
  // Without the output transpose the inputs are still read in place (seq_major_operands);
  // the output stays head-major.
  Network kept = attention_block(false);
  EXPECT_EQ(count_layers(kept, "Shuffle", profiles), 1);
  EXPECT_NE(simplify_attention_log(kept, profiles)
                .find("0 attention layers read and write [B, L, H, E] in place (1 more some of "
                      "their operands)"),
            std::string::npos)
      << simplify_attention_log(kept, profiles);
  // RoPE after the transposes: q and k stay head-major, v and the output go in place.
  Network decoder = attention_block(true, true);
  EXPECT_EQ(count_layers(decoder, "Shuffle", profiles), 3) << "q_t, k_t and the reshape";
  const std::string json = built_json_with(decoder, profiles);
  EXPECT_NE(json.find("\"seq_major_operands\": 12"), std::string::npos) << json;
  test::RunOptions options;
  options.profiles = profiles;
  std::vector<int64_t> flags(3 * 25);
  for (size_t i = 0; i < flags.size(); ++i) flags[i] = (i * 7) % 5 != 0;
  const std::vector<TestTensor> in = {TestTensor::random(DataType::kF16, {3, 5, 3, 8}, 1),
                                      TestTensor::random(DataType::kF16, {3, 5, 3, 8}, 2),
                                      TestTensor::random(DataType::kF16, {3, 5, 3, 8}, 3),
                                      TestTensor::ints(DataType::kBool, {3, 1, 5, 5}, flags)};
  // run_network compares the built (folded) plan with the network as written.
  EXPECT_EQ(test::run_network(folded, in, options).at(0).dims, (std::vector<int64_t>{3, 5, 24}));
  test::run_network(kept, in, options);
  test::run_network(decoder, in, options);
}

/// q, k, v [2, 3, 6, 8] and a constant mask of `dims` (values from `value(i, j)` per query i and
/// key j, the same for every batch/head) -> Attention.
Network masked_attention(DataType mask_dtype, const std::vector<int64_t>& dims,
                         const std::function<float(int64_t, int64_t)>& value,
                         DataType qkv_dtype = DataType::kF32) {
  Network net;
  std::vector<Tensor*> in;
  for (const char* name : {"q", "k", "v"}) in.push_back(net.add_input(name, qkv_dtype, {2, 3, 6, 8}));
  const TestTensor shape_only = TestTensor::random(DataType::kF32, dims, 1);
  std::vector<float> v(static_cast<size_t>(shape_only.numel()));
  const int64_t cols = dims.back(), rows = dims.size() >= 2 ? dims[dims.size() - 2] : 1;
  for (size_t n = 0; n < v.size(); ++n) v[n] = value((n / cols) % rows, n % cols);
  const TestTensor m = TestTensor::floats(mask_dtype, dims, v);
  in.push_back(net.add_constant(Weights::copy(mask_dtype, dims, m.bytes.data()), "mask")->output());
  net.mark_output(net.add_layer(AttentionParams{}, in, "attn")->output(), "y");
  return net;
}

TEST(SimplifyAttention, ConstantCausalAndKeepAllMasksAreDropped) {
  const float inf = std::numeric_limits<float>::infinity();
  const auto causal_bool = [](int64_t i, int64_t j) { return j <= i ? 1.0f : 0.0f; };
  const auto causal_float = [inf](int64_t i, int64_t j) { return j <= i ? 0.0f : -inf; };
  const auto keep_all = [](int64_t, int64_t) { return 1.0f; };
  const auto bias = [](int64_t i, int64_t j) { return j <= i ? 0.0f : -1.0f; };
  const auto anti = [](int64_t i, int64_t j) { return j >= i ? 1.0f : 0.0f; };
  // HF's eager attention writes torch.finfo(dtype).min, not -inf, for the dropped keys.
  const float f32_min = std::numeric_limits<float>::lowest();
  const auto causal_f32_min = [f32_min](int64_t i, int64_t j) { return j <= i ? 0.0f : f32_min; };
  const auto causal_f16_min = [](int64_t i, int64_t j) { return j <= i ? 0.0f : -65504.0f; };
  // -65504 is only "drop" in an f16 mask: in an f32 mask it is a (large) bias, kept.
  struct Expect {
    Network net;
    bool masked, causal;
    DataType qkv = DataType::kF32;
  };
  std::vector<Expect> cases;
  cases.push_back({masked_attention(DataType::kBool, {2, 1, 6, 6}, causal_bool), false, true});
  cases.push_back({masked_attention(DataType::kF32, {6, 6}, causal_float), false, true});
  cases.push_back({masked_attention(DataType::kBool, {2, 1, 1, 6}, keep_all), false, false});
  cases.push_back({masked_attention(DataType::kF32, {6, 6}, bias), true, false});  // a real bias
  cases.push_back({masked_attention(DataType::kBool, {6, 6}, anti), true, false});
  cases.push_back({masked_attention(DataType::kF32, {1, 1, 6, 6}, causal_f32_min), false, true});
  cases.push_back({masked_attention(DataType::kF16, {6, 6}, causal_f16_min, DataType::kF16),
                   false, true, DataType::kF16});
  cases.push_back({masked_attention(DataType::kF32, {6, 6}, causal_f16_min), true, false});
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const std::string json = built_json(cases[c].net);
    EXPECT_EQ(json.find("\"mask\"") != std::string::npos, cases[c].masked) << json;
    EXPECT_EQ(json.find("\"causal\": true") != std::string::npos, cases[c].causal) << json;
    // The rewritten engine computes what the network as written computes.
    const DataType t = cases[c].qkv;
    test::run_network(cases[c].net, {TestTensor::random(t, {2, 3, 6, 8}, 1),
                                     TestTensor::random(t, {2, 3, 6, 8}, 2),
                                     TestTensor::random(t, {2, 3, 6, 8}, 3)});
  }
}

TEST(SimplifyAttention, ThirdsOfOneProjectionAreReadInPlace) {
  // GPT-2's attention: x [b, 5, 72] -> split into three [b, 5, 24] -> view [b, 5, 3, 8] ->
  // transpose(1, 2) -> Attention (constant causal mask) -> transpose(1, 2) -> view [b, 5, 24].
  Network net;
  const DimExpr b = DimExpr::symbol("b");
  Tensor* x = net.add_input("x", DataType::kF16, {b, 5, 72});
  std::vector<Tensor*> heads;
  for (int part = 0; part < 3; ++part) {
    Tensor* t = net.add_slice(x, {0, 0, 24 * part}, {b, 5, 24}, {1, 1, 1})->output();
    t = net.add_reshape(t, {b, 5, 3, 8})->output();
    heads.push_back(net.add_transpose(t, {0, 2, 1, 3})->output());
  }
  std::vector<uint8_t> tril(25);
  for (int i = 0; i < 25; ++i) tril[i] = i % 5 <= i / 5;
  heads.push_back(
      net.add_constant(Weights::from_vector<uint8_t>(DataType::kBool, {1, 1, 5, 5}, tril), "tril")
          ->output());
  AttentionParams p;
  p.scale = 0.3;
  Tensor* o = net.add_layer(p, heads, "attn")->output();
  o = net.add_transpose(o, {0, 2, 1, 3})->output();
  net.mark_output(net.add_reshape(o, {b, 5, 24})->output(), "y");
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("b", 1, 2, 4);
  EXPECT_EQ(count_layers(net, "Slice", profiles), 0);
  EXPECT_EQ(count_layers(net, "Shuffle", profiles), 1) << "only the final reshape is left";
  EXPECT_EQ(count_layers(net, "Constant", profiles), 0) << "the causal mask became a flag";
  test::RunOptions options;
  options.profiles = profiles;
  test::run_network(net, {TestTensor::random(DataType::kF16, {3, 5, 72}, 4)}, options);
}

/// torch.nn.MultiheadAttention as torch.export writes it (ViT's encoder): the in-projection
/// [L, B, 3 E] -> unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2) -> [3, L, B, E]
/// -> select q, k, v -> view [L, B H, hd] -> transpose(0, 1) -> view [B, H, L, hd] -> Attention
/// -> permute(2, 0, 1, 3) -> view [L B, E]. L = 5, B = 2, H = 3, hd = 8.
Network multihead_attention(bool causal) {
  Network net;
  const int64_t L = 5, B = 2, H = 3, hd = 8, E = H * hd;
  Tensor* x = net.add_input("proj", DataType::kF32, {L, B, 3 * E});
  Tensor* t = net.add_reshape(x, {L, B, 3, E})->output();
  t = net.add_reshape(t, {1, L, B, 3, E})->output();
  t = net.add_transpose(t, {3, 1, 2, 0, 4})->output();  // [3, L, B, 1, E]
  t = net.add_reshape(t, {3, L, B, E})->output();
  std::vector<Tensor*> heads;
  for (int64_t i = 0; i < 3; ++i) {
    Tensor* s = net.add_slice(t, {i, 0, 0, 0}, {1, L, B, E}, {1, 1, 1, 1})->output();
    s = net.add_reshape(s, {L, B, E})->output();
    s = net.add_reshape(s, {L, B * H, hd})->output();
    s = net.add_transpose(s, {1, 0, 2})->output();
    heads.push_back(net.add_reshape(s, {B, H, L, hd})->output());
  }
  AttentionParams p;
  p.scale = 0.35;
  p.causal = causal;
  Tensor* o = net.add_layer(p, heads, "attn")->output();
  o = net.add_transpose(o, {2, 0, 1, 3})->output();  // [L, B, H, hd]
  net.mark_output(net.add_reshape(o, {L * B, E})->output(), "y");
  return net;
}

TEST(SimplifyAttention, MultiheadAttentionCopiesBecomeStridedViews) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    const Network net = multihead_attention(causal);
    EXPECT_EQ(count_layers(net, "Attention"), 1);
    EXPECT_EQ(count_layers(net, "Shuffle"), 0) << "every transpose and reshape is in the views";
    EXPECT_EQ(count_layers(net, "Slice"), 0);
    EXPECT_NE(simplify_attention_log(net, {}).find("1 read or write strided views"),
              std::string::npos)
        << simplify_attention_log(net, {});
    const std::string json = built_json(net);
    // q, k, v: offsets 0, E, 2 E; batch stride 3 E, head stride hd, sequence stride B * 3 E.
    // The output [L B, E]: batch stride E, head stride hd, sequence stride B * E.
    EXPECT_NE(json.find("\"views\": [2, 3, 3, 5, 5, 8, 8, 0, 72, 8, 144, 24, 72, 8, 144, 48, 72, "
                        "8, 144, 0, 24, 8, 48]"),
              std::string::npos)
        << json;
    // run_network compares the built plan with the network as written (its copies).
    EXPECT_EQ(test::run_network(net, {TestTensor::random(DataType::kF32, {5, 2, 72}, 11)}).at(0).dims,
              (std::vector<int64_t>{10, 24}));
  }
}

TEST(SimplifyAttention, StridedViewsSwitchOff) {
  // EMBER_ATTENTION_VIEWS=0 (the A/B switch) keeps every copy and says so in the build log.
  const Network net = multihead_attention(false);
  setenv("EMBER_ATTENTION_VIEWS", "0", 1);
  const int shuffles = count_layers(net, "Shuffle");
  const std::string log = simplify_attention_log(net, {});
  unsetenv("EMBER_ATTENTION_VIEWS");
  EXPECT_GT(shuffles, 0);
  EXPECT_NE(log.find("0 read or write strided views instead of copies (off: "
                     "EMBER_ATTENTION_VIEWS=0)"),
            std::string::npos)
      << log;
  EXPECT_EQ(count_layers(net, "Shuffle"), 0);
}

/// The whole torch.nn.MultiheadAttention module, batch_first=True: x [B, L, E] -> transpose(0, 1)
/// -> in-projection -> (the chain of multihead_attention) -> Attention -> (its chain) ->
/// out-projection -> view [L, B, E] -> transpose(0, 1); with `residual`, + x (ViT's encoder).
/// L = 5, B = 2, H = 3, hd = 8.
Network multihead_attention_module(bool residual) {
  const int64_t L = 5, B = 2, H = 3, hd = 8, E = H * hd;
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {B, L, E});
  Tensor* t = net.add_transpose(x, {1, 0, 2})->output();
  const TestTensor w_in = TestTensor::random(DataType::kF32, {3 * E, E}, 21);
  const TestTensor w_out = TestTensor::random(DataType::kF32, {E, E}, 22);
  MatrixMultiplyParams mm;
  mm.transpose_b = true;
  Tensor* win = net.add_constant(Weights::copy(DataType::kF32, {3 * E, E}, w_in.bytes.data()),
                                 "w_in")->output();
  t = net.add_layer(mm, {t, win}, "in_proj")->output();  // [L, B, 3 E]
  t = net.add_reshape(t, {L, B, 3, E})->output();
  t = net.add_reshape(t, {1, L, B, 3, E})->output();
  t = net.add_transpose(t, {3, 1, 2, 0, 4})->output();
  t = net.add_reshape(t, {3, L, B, E})->output();
  std::vector<Tensor*> heads;
  for (int64_t i = 0; i < 3; ++i) {
    Tensor* s = net.add_slice(t, {i, 0, 0, 0}, {1, L, B, E}, {1, 1, 1, 1})->output();
    s = net.add_reshape(s, {L, B * H, hd})->output();
    s = net.add_transpose(s, {1, 0, 2})->output();
    heads.push_back(net.add_reshape(s, {B, H, L, hd})->output());
  }
  AttentionParams p;
  p.scale = 0.35;
  Tensor* o = net.add_layer(p, heads, "attn")->output();
  o = net.add_transpose(o, {2, 0, 1, 3})->output();
  o = net.add_reshape(o, {L * B, E})->output();
  Tensor* wout = net.add_constant(Weights::copy(DataType::kF32, {E, E}, w_out.bytes.data()),
                                  "w_out")->output();
  o = net.add_layer(mm, {o, wout}, "out_proj")->output();
  o = net.add_reshape(o, {L, B, E})->output();
  o = net.add_transpose(o, {1, 0, 2})->output();
  if (residual) o = net.add_elementwise(x, o, ElementWiseOp::kSum, "residual")->output();
  net.mark_output(o, "y");
  return net;
}

TEST(SimplifyAttention, MultiheadAttentionProjectionsTakeTheirTransposesIntoTheViews) {
  // The transposes move across the products (which treat rows on their own), where the views
  // take them: no copy is left.
  const int64_t L = 5, B = 2, E = 24;
  const Network net = multihead_attention_module(false);
  EXPECT_EQ(count_layers(net, "Shuffle"), 0);
  EXPECT_EQ(count_layers(net, "Slice"), 0);
  EXPECT_EQ(count_layers(net, "MatrixMultiply"), 2);
  const std::string json = built_json(net);
  // q, k, v in the in-projection's output [B, L, 3 E]: batch stride L 3 E, head stride hd,
  // sequence stride 3 E; the output [B, L, E] the out-projection reads.
  EXPECT_NE(json.find("\"views\": [2, 3, 3, 5, 5, 8, 8, 0, 360, 8, 72, 24, 360, 8, 72, 48, 360, "
                      "8, 72, 0, 120, 8, 24]"),
            std::string::npos)
      << json;
  EXPECT_EQ(test::run_network(net, {TestTensor::random(DataType::kF32, {B, L, E}, 23)}).at(0).dims,
            (std::vector<int64_t>{B, L, E}));
}

TEST(SimplifyAttention, TheResidualAfterTheOutProjectionJoinsItsEpilogue) {
  // ViT's x + attention(x): before simplify_attention a transpose stands between the
  // out-projection and the add; once it has moved into the attention's output view,
  // fuse_epilogues_after_attention gives the product the residual (no ElementWise left).
  const Network net = multihead_attention_module(true);
  BuildReport report;
  Builder(BuilderConfig()).build(net, &report);
  std::string first, second;
  for (const std::string& line : report.pass_log) {
    if (line.rfind("fuse_epilogues:", 0) == 0) first = line;
    if (line.rfind("fuse_epilogues_after_attention:", 0) == 0) second = line;
  }
  EXPECT_NE(first.find(" 0 residual adds"), std::string::npos) << first;
  EXPECT_NE(second.find(" 1 residual adds"), std::string::npos) << second;
  EXPECT_EQ(count_layers(net, "ElementWise"), 0);
  EXPECT_EQ(count_layers(net, "Shuffle"), 0);
  EXPECT_EQ(count_layers(net, "MatrixMultiply"), 2);
  EXPECT_EQ(test::run_network(net, {TestTensor::random(DataType::kF32, {2, 5, 24}, 24)}).at(0).dims,
            (std::vector<int64_t>{2, 5, 24}));
}

TEST(SimplifyAttention, StridedViewsStopWhereAReshapeWouldMoveElements) {
  // q: [2, 5, 24] -> view [2, 5, 3, 8] -> transpose(1, 2) -> reshape [2, 5, 3, 8] (not a view of
  // the transposed tensor: its dims 3 and 5 do not deal out as 5 and 3, PyTorch copies) ->
  // transpose(1, 2). Rewrite 2 takes the last transpose (q seq-major); the views stop at the
  // reshape, so q keeps the first three layers. k and v are plain head-major inputs; the output
  // goes through a permute and a reshape, which the views take.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 5, 24});
  Tensor* q = net.add_reshape(x, {2, 5, 3, 8})->output();
  q = net.add_transpose(q, {0, 2, 1, 3})->output();
  q = net.add_reshape(q, {2, 5, 3, 8})->output();
  q = net.add_transpose(q, {0, 2, 1, 3})->output();
  Tensor* k = net.add_input("k", DataType::kF32, {2, 3, 5, 8});
  Tensor* v = net.add_input("v", DataType::kF32, {2, 3, 5, 8});
  AttentionParams p;
  p.scale = 0.3;
  Tensor* o = net.add_layer(p, {q, k, v}, "attn")->output();
  o = net.add_transpose(o, {2, 0, 1, 3})->output();
  net.mark_output(net.add_reshape(o, {10, 24})->output(), "y");
  EXPECT_EQ(count_layers(net, "Shuffle"), 3) << "q's view, transpose and merging reshape stay";
  EXPECT_NE(simplify_attention_log(net, {}).find("1 read or write strided views"),
            std::string::npos);
  test::run_network(net, {TestTensor::random(DataType::kF32, {2, 5, 24}, 12),
                          TestTensor::random(DataType::kF32, {2, 3, 5, 8}, 13),
                          TestTensor::random(DataType::kF32, {2, 3, 5, 8}, 14)});
}

TEST(SimplifyAttention, SymbolicShapesKeepTheirCopies) {
  // The views are constants: with a symbolic batch, rewrite 5 leaves the chain as written.
  Network net;
  const DimExpr b = DimExpr::symbol("b");
  Tensor* x = net.add_input("x", DataType::kF32, {5, b, 24});
  Tensor* q = net.add_reshape(x, {5, b * 3, 8})->output();
  q = net.add_transpose(q, {1, 0, 2})->output();
  q = net.add_reshape(q, {b, 3, 5, 8})->output();
  AttentionParams p;
  Tensor* o = net.add_layer(p, {q, q, q}, "attn")->output();
  net.mark_output(o, "y");
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("b", 1, 2, 4);
  EXPECT_NE(simplify_attention_log(net, profiles).find("0 read or write strided views"),
            std::string::npos)
      << simplify_attention_log(net, profiles);
  test::RunOptions options;
  options.profiles = profiles;
  test::run_network(net, {TestTensor::random(DataType::kF32, {5, 3, 24}, 15)}, options);
}

TEST(SimplifyAttention, StaticMaskOnSymbolicLengthsKeepsItsCheck) {
  // A keep-all constant mask [6, 6] on a layer whose lengths are symbolic also says "the
  // lengths are 6". The rewrite only drops masks whose dims it can prove from the shapes, so
  // this one stays (with its shape check) even where the profile pins n to 6.
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  std::vector<Tensor*> in;
  for (const char* name : {"q", "k", "v"}) in.push_back(net.add_input(name, DataType::kF32, {1, 2, n, 4}));
  in.push_back(net.add_constant(
                      Weights::from_vector<uint8_t>(DataType::kBool, {6, 6}, std::vector<uint8_t>(36, 1)),
                      "mask")
                   ->output());
  net.mark_output(net.add_layer(AttentionParams{}, in, "attn")->output(), "y");
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("n", 6, 6, 6);
  EXPECT_EQ(count_layers(net, "Constant", profiles), 1);
}

/// BERT's attention: x [b, 5, 24] -> three linears (q, k, v; constant weights and biases) ->
/// view [b, 5, 3, 8] -> transpose(1, 2) -> Attention -> transpose(1, 2) -> view [b, 5, 24].
/// `gelu_on_k` gives the key projection a different epilogue (no merge then).
Network bert_attention(DataType dt, bool transpose_b, bool gelu_on_k) {
  Network net;
  const DimExpr b = DimExpr::symbol("b");
  Tensor* x = net.add_input("x", dt, {b, 5, 24});
  std::vector<Tensor*> heads;
  for (uint32_t part = 0; part < 3; ++part) {
    // Small weights keep the scores small: the reference runs the bias add unfused (one more
    // f16 rounding), and large scores would amplify that difference through the softmax.
    Tensor* w = constant(net, dt, {24, 24}, 10 + part, "w" + std::to_string(part), -0.2f, 0.2f);
    Tensor* y = net.add_matrix_multiply(x, false, w, transpose_b, "proj" + std::to_string(part))
                    ->output();
    y = net.add_elementwise(y, constant(net, dt, {24}, 20 + part, "b" + std::to_string(part)),
                            ElementWiseOp::kSum, "bias" + std::to_string(part))
            ->output();
    if (gelu_on_k && part == 1) y = net.add_activation(y, ActivationType::kGeluErf, 0, 0)->output();
    y = net.add_reshape(y, {b, 5, 3, 8})->output();
    heads.push_back(net.add_transpose(y, {0, 2, 1, 3})->output());
  }
  AttentionParams p;
  p.scale = 0.35;
  Tensor* o = net.add_layer(p, heads, "attn")->output();
  o = net.add_transpose(o, {0, 2, 1, 3})->output();
  net.mark_output(net.add_reshape(o, {b, 5, 24})->output(), "y");
  return net;
}

TEST(SimplifyAttention, ThreeProjectionsOfOneInputMergeIntoOnePackedProduct) {
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("b", 1, 2, 4);
  test::RunOptions options;
  options.profiles = profiles;
  for (DataType dt : {DataType::kF32, DataType::kF16}) {
    for (bool transpose_b : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (transpose_b ? " transpose_b" : ""));
      Network net = bert_attention(dt, transpose_b, false);
      EXPECT_EQ(count_layers(net, "MatrixMultiply", profiles), 1);
      EXPECT_EQ(count_layers(net, "Slice", profiles), 0);
      EXPECT_EQ(count_layers(net, "Shuffle", profiles), 1) << "only the final reshape is left";
      // run_network compares the merged engine with the network as written.
      test::run_network(net, {TestTensor::random(dt, {3, 5, 24}, 5)}, options);
    }
  }
  // Projections with different epilogues stay apart (and the attention reads their reshapes).
  Network apart = bert_attention(DataType::kF32, true, true);
  EXPECT_EQ(count_layers(apart, "MatrixMultiply", profiles), 3);
  test::run_network(apart, {TestTensor::random(DataType::kF32, {3, 5, 24}, 6)}, options);
}

/// One of quantized_attention's three projections.
struct QuantizedProjection {
  std::vector<float> weight_scale = {0.005f};  ///< One element (per-tensor) or 32 (per channel).
  float a_scale = 0.02f;  ///< The product's a_scale (its own constant; x is quantized at 0.02).
  double epilogue_scale = 1.0;
};

/// The per-channel weight scales 0.004 + 0.0002 j (+ `shift`) of a [32, 32] projection.
std::vector<float> per_channel_scales(float shift) {
  std::vector<float> s;
  for (int j = 0; j < 32; ++j) s.push_back(0.004f + 0.0002f * static_cast<float>(j) + shift);
  return s;
}

/// What fuse_quantized makes of BERT's attention in an INT8/FP8 model: x [2, 5, 32] -> Quantize
/// (per-tensor, to `q`: i8 or f8e4m3, scale 0.02) -> three QuantizedMatrixMultiply projections
/// (weights [N = 32, K = 32] of `q`, different per projection, and a bias; `out`) -> view
/// [2, 5, 4, 8] -> transpose(1, 2) -> Attention -> transpose(1, 2) -> view [2, 5, 32].
Network quantized_attention(DataType q, DataType out,
                            const std::vector<QuantizedProjection>& proj) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 5, 32});
  const auto scale = [&net](const std::vector<float>& s, const std::string& name) {
    return net
        .add_constant(Weights::from_vector(DataType::kF32, {static_cast<int64_t>(s.size())}, s),
                      name)
        ->output();
  };
  QuantizeParams qp;
  qp.to = q;
  Tensor* xq = net.add_quantize(x, scale({0.02f}, "x_scale"), nullptr, qp, "quantize")->output();
  std::vector<Tensor*> heads;
  for (uint32_t part = 0; part < 3; ++part) {
    const std::string s = std::to_string(part);
    // int8 weights are whole numbers in [-40, 40); FP8 ones E4M3 values in [-2, 2).
    Tensor* w = nullptr;
    if (q == DataType::kI8) {
      w = constant(net, q, {32, 32}, 40 + part, "w" + s, -40.0f, 40.0f);
    } else {
      const std::vector<float> v =
          TestTensor::random(DataType::kF32, {32, 32}, 40 + part, -2.0f, 2.0f).to_floats();
      const TestTensor e4m3 = TestTensor::floats(q, {32, 32}, v);
      w = net.add_constant(Weights::copy(q, {32, 32}, e4m3.bytes.data()), "w" + s)->output();
    }
    QuantizedMatrixMultiplyParams p;
    p.out = out;
    p.epilogue.scale = proj[part].epilogue_scale;
    Tensor* y = net.add_layer(p,
                              {xq, w, scale({proj[part].a_scale}, "a_scale" + s),
                               scale(proj[part].weight_scale, "w_scale" + s),
                               constant(net, out, {32}, 50 + part, "b" + s, -0.5f, 0.5f)},
                              "proj" + s)
                    ->output();
    y = net.add_reshape(y, {2, 5, 4, 8})->output();
    heads.push_back(net.add_transpose(y, {0, 2, 1, 3})->output());
  }
  AttentionParams p;
  p.scale = 0.35;
  Tensor* o = net.add_layer(p, heads, "attn")->output();
  o = net.add_transpose(o, {0, 2, 1, 3})->output();
  net.mark_output(net.add_reshape(o, {2, 5, 32})->output(), "y");
  return net;
}

/// Checks how many products the built `net` keeps (1: merged and read packed) and that its
/// output is the network's as written (run_network: the reference executor) and the output of
/// the plan built without simplify_attention (optimization level 1).
void expect_quantized_projections(const Network& net, DataType out, int products) {
  EXPECT_EQ(count_layers(net, "QuantizedMatrixMultiply"), products);
  EXPECT_EQ(count_layers(net, "MatrixMultiply"), 0);
  EXPECT_EQ(count_layers(net, "Attention"), 1);
  EXPECT_EQ(count_layers(net, "Slice"), 0);
  const std::string json = built_json(net);
  const std::string log = simplify_attention_log(net, {});
  if (products == 1) {
    EXPECT_EQ(count_layers(net, "Shuffle"), 1) << "only the final reshape is left";
    EXPECT_NE(json.find("\"packed_heads\": 4"), std::string::npos) << json;
    EXPECT_NE(log.find("1 read q, k and v from one packed projection (1 of them merged from "
                       "three)"),
              std::string::npos)
        << log;
  } else {
    EXPECT_EQ(json.find("\"packed_heads\": 4"), std::string::npos) << json;
    EXPECT_NE(log.find("0 read q, k and v from one packed projection"), std::string::npos) << log;
  }
  const std::vector<TestTensor> in = {
      TestTensor::random(DataType::kF32, {2, 5, 32}, 60, -2.0f, 2.0f)};
  test::RunOptions plain;
  plain.optimization_level = 1;
  const auto rewritten = test::run_network(net, in);
  const auto unrewritten = test::run_network(net, in, plain);
  ASSERT_EQ(rewritten.size(), 1u);
  ASSERT_EQ(unrewritten.size(), 1u);
  EXPECT_EQ(rewritten[0].dims, (std::vector<int64_t>{2, 5, 32}));
  test::expect_close(rewritten[0], unrewritten[0].to_floats(), out, "rewritten vs level 1");
}

TEST(SimplifyAttention, Int8ProjectionsMergeWithTheirWeightScalesSideBySide) {
  const std::vector<std::vector<QuantizedProjection>> cases = {
      // Per-channel, per-tensor (repeated per channel) and other per-channel scales.
      {{per_channel_scales(0.0f)}, {{0.006f}}, {per_channel_scales(0.001f)}},
      // Three different per-tensor scales: int8 takes them as per-channel ones.
      {{{0.004f}}, {{0.005f}}, {{0.007f}}},
      // One equal per-tensor scale (three constants of the same value) stays per-tensor.
      {{{0.005f}}, {{0.005f}}, {{0.005f}}},
  };
  for (DataType out : {DataType::kF32, DataType::kF16}) {
    for (size_t c = 0; c < cases.size(); ++c) {
      SCOPED_TRACE(std::string(dtype_name(out)) + " case " + std::to_string(c));
      expect_quantized_projections(quantized_attention(DataType::kI8, out, cases[c]), out, 1);
    }
  }
}

TEST(SimplifyAttention, Fp8ProjectionsMergeOnlyWithOneEqualWeightScale) {
  // An FP8 product takes one per-tensor weight scale: three different ones stay three products.
  for (DataType out : {DataType::kF32, DataType::kF16}) {
    SCOPED_TRACE(dtype_name(out));
    expect_quantized_projections(
        quantized_attention(DataType::kF8E4M3, out, {{{0.05f}}, {{0.05f}}, {{0.05f}}}), out, 1);
    expect_quantized_projections(
        quantized_attention(DataType::kF8E4M3, out, {{{0.04f}}, {{0.05f}}, {{0.06f}}}), out, 3);
  }
}

TEST(SimplifyAttention, QuantizedProjectionsThatCannotShareOneProductStayApart) {
  QuantizedProjection other_a_scale;
  other_a_scale.a_scale = 0.025f;
  QuantizedProjection other_epilogue;
  other_epilogue.epilogue_scale = 0.5;
  for (const QuantizedProjection& k : {other_a_scale, other_epilogue}) {
    SCOPED_TRACE(k.a_scale != 0.02f ? "a_scale" : "epilogue scale");
    expect_quantized_projections(
        quantized_attention(DataType::kI8, DataType::kF32, {{per_channel_scales(0.0f)}, k, {}}),
        DataType::kF32, 3);
  }
}

/// How the key and value heads reach a grouped-query Attention layer in gqa_attention.
enum class Repeat {
  kRepeatKv,           ///< HF's repeat_kv: [b, 2, 1, n, 8] -> [b, 2, 3, n, 8] -> [b, 6, n, 8]
  kTile,               ///< torch's repeat order: [b, 1, 2, n, 8] -> [b, 3, 2, n, 8] (head h % 2)
  kRepeatKvFromRank5,  ///< repeat_kv on a [b, 2, 1, n, 8] network input (no unsqueeze to skip)
};

/// q [b, 6, n, 8] and k, v with 2 heads, repeated to 6 as `how` says, into a head-major
/// Attention (causal and/or with a bool mask input [b, 1, n, n]); b and n symbolic.
/// `expand_read_elsewhere` also marks k's expanded copy as a network output.
Network gqa_attention(Repeat how, bool causal, bool masked, bool expand_read_elsewhere = false) {
  Network net;
  const DimExpr b = DimExpr::symbol("b"), n = DimExpr::symbol("n");
  std::vector<Tensor*> in = {net.add_input("q", DataType::kF32, {b, 6, n, 8})};
  for (const char* name : {"k", "v"}) {
    const std::string s = name;
    Shape one, wide;
    Tensor* x = nullptr;
    if (how == Repeat::kTile) {
      x = net.add_input(s, DataType::kF32, {b, 2, n, 8});
      x = net.add_reshape(x, {b, 1, 2, n, 8}, s + "_unsqueeze")->output();
      wide = {b, 3, 2, n, 8};
    } else {
      x = how == Repeat::kRepeatKv ? net.add_input(s, DataType::kF32, {b, 2, n, 8}) : nullptr;
      x = x != nullptr ? net.add_reshape(x, {b, 2, 1, n, 8}, s + "_unsqueeze")->output()
                       : net.add_input(s, DataType::kF32, {b, 2, 1, n, 8});
      wide = {b, 2, 3, n, 8};
    }
    // What the expand converter emits: Select(true, x, x) broadcasts x.
    FillParams all;
    all.shape = wide;
    all.dtype = DataType::kBool;
    all.value = 1.0;
    Tensor* t = net.add_fill(all, s + "_all")->output();
    Tensor* e = net.add_select(t, x, x, s + "_expand")->output();
    if (expand_read_elsewhere && s == "k") net.mark_output(e, "k_expanded");
    in.push_back(net.add_reshape(e, {b, 6, n, 8}, s + "_merge")->output());
  }
  if (masked) in.push_back(net.add_input("mask", DataType::kBool, {b, 1, n, n}));
  AttentionParams p;
  p.scale = 0.3;
  p.causal = causal;
  net.mark_output(net.add_layer(p, in, "attn")->output(), "y");
  return net;
}

/// Inputs for gqa_attention at b = 2, n = 5.
std::vector<TestTensor> gqa_inputs(Repeat how, bool masked) {
  const std::vector<int64_t> kv =
      how == Repeat::kRepeatKvFromRank5 ? std::vector<int64_t>{2, 2, 1, 5, 8}
                                        : std::vector<int64_t>{2, 2, 5, 8};
  std::vector<TestTensor> in = {TestTensor::random(DataType::kF32, {2, 6, 5, 8}, 31, -2.0f, 2.0f),
                                TestTensor::random(DataType::kF32, kv, 32, -2.0f, 2.0f),
                                TestTensor::random(DataType::kF32, kv, 33)};
  if (masked) {
    std::vector<int64_t> flags(2 * 25);
    for (size_t i = 0; i < flags.size(); ++i) flags[i] = (i * 5) % 7 != 0;
    in.push_back(TestTensor::ints(DataType::kBool, {2, 1, 5, 5}, flags));
  }
  return in;
}

std::vector<OptimizationProfile> b_n_profile() {
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("b", 1, 2, 4);
  profiles[0].set_range("n", 1, 5, 16);
  return profiles;
}

/// Runs `net` built at optimization level 1 (no simplify_attention) and at level 3; both are
/// checked against the reference executor, and their outputs must agree bit for bit (the
/// rewrite changes which memory the layer reads, not what it computes).
void expect_same_as_unrewritten(const Network& net, const std::vector<TestTensor>& in) {
  test::RunOptions plain, rewritten;
  plain.profiles = rewritten.profiles = b_n_profile();
  plain.optimization_level = 1;
  const auto a = test::run_network(net, in, plain);
  const auto b = test::run_network(net, in, rewritten);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].dims, b[i].dims) << "output " << i;
    EXPECT_EQ(a[i].bytes, b[i].bytes) << "output " << i << " differs from the unrewritten plan";
  }
}

TEST(SimplifyAttention, RepeatedKeyValueHeadsAreReadUnrepeated) {
  const auto profiles = b_n_profile();
  for (bool causal : {false, true}) {
    for (bool masked : {false, true}) {
      SCOPED_TRACE(std::string(causal ? "causal" : "") + (masked ? " masked" : ""));
      Network net = gqa_attention(Repeat::kRepeatKv, causal, masked);
      EXPECT_EQ(count_layers(net, "Select", profiles), 0);
      EXPECT_EQ(count_layers(net, "Fill", profiles), 0);
      // Both unsqueeze reshapes had the un-repeated tensor as input: nothing is left but the layer.
      EXPECT_EQ(count_layers(net, "Shuffle", profiles), 0);
      EXPECT_EQ(count_layers(net, "Attention", profiles), 1);
      EXPECT_NE(simplify_attention_log(net, profiles)
                    .find(", 1 read grouped key/value heads without their repeat_kv copies"),
                std::string::npos);
      expect_same_as_unrewritten(net, gqa_inputs(Repeat::kRepeatKv, masked));
    }
  }
  // Static shapes: fold_constants turns the Fill into a constant all-true condition first.
  Network fixed;
  std::vector<Tensor*> in = {fixed.add_input("q", DataType::kF32, {1, 4, 3, 8})};
  for (const char* name : {"k", "v"}) {
    Tensor* x = fixed.add_input(name, DataType::kF32, {1, 1, 3, 8});
    x = fixed.add_reshape(x, {1, 1, 1, 3, 8})->output();
    FillParams all;
    all.shape = {1, 1, 4, 3, 8};
    all.dtype = DataType::kBool;
    all.value = 1.0;
    x = fixed.add_select(fixed.add_fill(all)->output(), x, x)->output();
    in.push_back(fixed.add_reshape(x, {1, 4, 3, 8})->output());
  }
  fixed.mark_output(fixed.add_layer(AttentionParams{}, in, "attn")->output(), "y");
  EXPECT_EQ(count_layers(fixed, "Select"), 0);
  EXPECT_EQ(count_layers(fixed, "Constant"), 0);
  test::run_network(fixed, {TestTensor::random(DataType::kF32, {1, 4, 3, 8}, 41),
                            TestTensor::random(DataType::kF32, {1, 1, 3, 8}, 42),
                            TestTensor::random(DataType::kF32, {1, 1, 3, 8}, 43)});
}

TEST(SimplifyAttention, RepeatedHeadsInAnotherOrderStay) {
  // torch's repeat/tile order gives head h the kv head h % 2, not h / 3: not the layer's
  // grouping, so the copies stay and the layer reads them as 6 heads.
  const auto profiles = b_n_profile();
  Network net = gqa_attention(Repeat::kTile, true, true);
  EXPECT_EQ(count_layers(net, "Select", profiles), 2);
  EXPECT_EQ(count_layers(net, "Shuffle", profiles), 4);
  EXPECT_NE(simplify_attention_log(net, profiles)
                .find(", 0 read grouped key/value heads without their repeat_kv copies"),
            std::string::npos);
  test::RunOptions options;
  options.profiles = profiles;
  test::run_network(net, gqa_inputs(Repeat::kTile, true), options);
}

TEST(SimplifyAttention, RepeatedHeadsReadElsewhereKeepTheirCopy) {
  // k's expanded copy is also a network output: it stays for that reader, the layer reads k.
  const auto profiles = b_n_profile();
  Network net = gqa_attention(Repeat::kRepeatKv, false, false, true);
  EXPECT_EQ(count_layers(net, "Select", profiles), 1);
  EXPECT_NE(simplify_attention_log(net, profiles).find(", 1 read grouped key/value heads"),
            std::string::npos);
  expect_same_as_unrewritten(net, gqa_inputs(Repeat::kRepeatKv, false));
  // repeat_kv on a rank-5 input: the layer reads a new reshape of it (which shares its memory).
  Network rank5 = gqa_attention(Repeat::kRepeatKvFromRank5, true, false);
  EXPECT_EQ(count_layers(rank5, "Select", profiles), 0);
  EXPECT_EQ(count_layers(rank5, "Shuffle", profiles), 2);
  expect_same_as_unrewritten(rank5, gqa_inputs(Repeat::kRepeatKvFromRank5, false));
}

TEST(SimplifyAttention, RepeatsOnTheModelLayoutGoSeqMajor) {
  // The repeats made on [b, n, 2, 8] (head dim 2), then transpose(1, 2) into a head-major layer
  // whose output is transposed back: rewrite 2 makes it seq-major, then rewrite 4 drops the
  // repeats it now reads directly.
  Network net;
  const DimExpr b = DimExpr::symbol("b"), n = DimExpr::symbol("n");
  Tensor* q = net.add_input("q", DataType::kF32, {b, n, 6, 8});
  std::vector<Tensor*> in = {net.add_transpose(q, {0, 2, 1, 3}, "q_t")->output()};
  for (const char* name : {"k", "v"}) {
    Tensor* x = net.add_input(name, DataType::kF32, {b, n, 2, 8});
    x = net.add_reshape(x, {b, n, 2, 1, 8})->output();
    FillParams all;
    all.shape = {b, n, 2, 3, 8};
    all.dtype = DataType::kBool;
    all.value = 1.0;
    x = net.add_select(net.add_fill(all)->output(), x, x)->output();
    x = net.add_reshape(x, {b, n, 6, 8})->output();
    in.push_back(net.add_transpose(x, {0, 2, 1, 3})->output());
  }
  AttentionParams p;
  p.causal = true;
  Tensor* o = net.add_layer(p, in, "attn")->output();
  net.mark_output(net.add_transpose(o, {0, 2, 1, 3}, "o_t")->output(), "y");
  const auto profiles = b_n_profile();
  EXPECT_EQ(count_layers(net, "Select", profiles), 0);
  EXPECT_EQ(count_layers(net, "Shuffle", profiles), 0);
  const std::string log = simplify_attention_log(net, profiles);
  EXPECT_NE(log.find(", 1 attention layers read and write [B, L, H, E] in place"),
            std::string::npos) << log;
  EXPECT_NE(log.find(", 1 read grouped key/value heads"), std::string::npos) << log;
  expect_same_as_unrewritten(net, {TestTensor::random(DataType::kF32, {2, 5, 6, 8}, 51),
                                   TestTensor::random(DataType::kF32, {2, 5, 2, 8}, 52),
                                   TestTensor::random(DataType::kF32, {2, 5, 2, 8}, 53)});
}

}  // namespace
}  // namespace ember::engine
