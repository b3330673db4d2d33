// CUDA conformance of the linear family (MatrixMultiply, Convolution, Deconvolution, Pooling):
// each network is built for "cuda", run on device buffers and compared with the CPU reference
// executor under tolerance_for(dtype). Skipped (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "backends/cuda/conv_graph.h"
#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};

std::string label(const std::string& what, DataType t) { return what + " " + dtype_name(t); }

Shape shape_of(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

// ---------------------------------------------------------------- matrix multiply

void check_matmul(DataType t, const std::vector<int64_t>& da, bool ta,
                  const std::vector<int64_t>& db, bool tb, uint32_t seed) {
  Network net;
  Tensor* a = net.add_input("a", t, shape_of(da));
  Tensor* b = net.add_input("b", t, shape_of(db));
  net.mark_output(net.add_matrix_multiply(a, ta, b, tb)->output(), "out");
  const std::string what = label("matmul " + dims_to_string(da) + (ta ? "^T" : "") + " x " +
                                     dims_to_string(db) + (tb ? "^T" : ""),
                                 t);
  test::check_cuda_matches_cpu(
      net, {TestTensor::random(t, da, seed), TestTensor::random(t, db, seed + 1)}, what);
}

/// A MatrixMultiply with a fused epilogue (as the builder's fuse_epilogues makes it): optional
/// bias [N], optional residual of the output's shape, optional activation.
void check_matmul_epilogue(DataType t, const std::vector<int64_t>& da, const std::vector<int64_t>& db,
                           bool bias, bool residual, bool act, ActivationType type, uint32_t seed) {
  Network net;
  Tensor* a = net.add_input("a", t, shape_of(da));
  Tensor* b = net.add_input("b", t, shape_of(db));
  const Shape out_shape = net.add_matrix_multiply(a, false, b, false, "probe")->output()->shape();
  std::vector<TestTensor> inputs{TestTensor::random(t, da, seed), TestTensor::random(t, db, seed + 1)};
  std::vector<Tensor*> ins{a, b, nullptr, nullptr};
  if (bias) {
    const int64_t n = db.back();
    ins[2] = net.add_input("bias", t, {n});
    inputs.push_back(TestTensor::random(t, {n}, seed + 2));
  }
  if (residual) {
    std::vector<int64_t> od;
    for (const DimExpr& d : out_shape) od.push_back(d.constant());
    ins[3] = net.add_input("res", t, out_shape);
    inputs.push_back(TestTensor::random(t, od, seed + 3));
  }
  MatrixMultiplyParams p;
  p.epilogue.scale = 0.75;  // cuBLASLt's alpha
  p.epilogue.fused_activation = act;
  p.epilogue.activation = type;
  net.mark_output(net.add_layer(p, ins, "mm")->output(), "out");
  test::check_cuda_matches_cpu(net, inputs,
                               label("matmul epilogue " + dims_to_string(da) + " x " +
                                         dims_to_string(db) + (bias ? " +bias" : "") +
                                         (residual ? " +residual" : "") + (act ? " +act" : ""),
                                     t));
}

TEST(CudaEpilogue, MatrixMultiplyBiasResidualActivation) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    for (int mask = 1; mask < 8; ++mask) {
      const bool bias = mask & 1, residual = mask & 2, act = mask & 4;
      check_matmul_epilogue(t, {6, 16}, {16, 8}, bias, residual, act, ActivationType::kRelu, 40);
      check_matmul_epilogue(t, {2, 3, 8, 16}, {16, 24}, bias, residual, act,
                            ActivationType::kGeluErf, 41);                       // shared b
      check_matmul_epilogue(t, {3, 8, 16}, {3, 16, 8}, bias, residual, act,
                            ActivationType::kGeluTanh, 42);                      // batched
      check_matmul_epilogue(t, {2, 1, 4, 8}, {3, 8, 8}, bias, residual, act,
                            ActivationType::kRelu, 43);                          // mixed
    }
  }
}

// cuBLASLt's GELU epilogue runs the tanh-approximated GELU layers (without a residual). Its
// formula is not documented: the pre-activations here span about [-6, 6], where the erf and tanh
// forms differ by far more than the f32 tolerance, so this pins it to the tanh form.
TEST(CudaEpilogue, MatmulGeluTanhEpilogue) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    for (bool bias : {false, true}) {
      Network net;
      Tensor* a = net.add_input("a", t, {64, 32});
      Tensor* b = net.add_input("b", t, {32, 48});
      std::vector<TestTensor> inputs{TestTensor::random(t, {64, 32}, 60, -1.0f, 1.0f),
                                     TestTensor::random(t, {32, 48}, 61, -1.0f, 1.0f)};
      std::vector<Tensor*> ins{a, b, nullptr, nullptr};
      if (bias) {
        ins[2] = net.add_input("bias", t, {48});
        inputs.push_back(TestTensor::random(t, {48}, 62, -2.0f, 2.0f));
      }
      MatrixMultiplyParams p;
      p.epilogue.fused_activation = true;
      p.epilogue.activation = ActivationType::kGeluTanh;
      net.mark_output(net.add_layer(p, ins, "mm")->output(), "out");
      test::check_cuda_matches_cpu(net, inputs,
                                   label(std::string("matmul gelu-tanh epilogue") +
                                             (bias ? " +bias" : ""), t));
    }
  }
}

TEST(CudaEpilogue, ConvolutionBiasResidualActivation) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    for (int mask = 0; mask < 8; ++mask) {
      const bool bias = mask & 1, residual = mask & 2, act = mask & 4;
      Network net;
      Tensor* x = net.add_input("x", t, {2, 3, 7, 7});
      Tensor* w = net.add_input("w", t, {4, 3, 3, 3});
      std::vector<TestTensor> inputs{TestTensor::random(t, {2, 3, 7, 7}, 50),
                                     TestTensor::random(t, {4, 3, 3, 3}, 51)};
      std::vector<Tensor*> ins{x, w, nullptr, nullptr};
      if (bias) {
        ins[2] = net.add_input("bias", t, {4});
        inputs.push_back(TestTensor::random(t, {4}, 52));
      }
      if (residual) {
        ins[3] = net.add_input("res", t, {2, 4, 4, 4});
        inputs.push_back(TestTensor::random(t, {2, 4, 4, 4}, 53));
      }
      ConvolutionParams p;
      p.stride = {2, 2};
      p.padding_begin = p.padding_end = {1, 1};
      p.dilation = {1, 1};
      p.epilogue.scale = mask == 5 ? 0.5 : 1.0;  // cuDNN's alpha
      p.epilogue.fused_activation = act;
      p.epilogue.activation = ActivationType::kRelu;
      net.mark_output(net.add_layer(p, ins, "conv")->output(), "out");
      test::check_cuda_matches_cpu(net, inputs, label("conv epilogue mask " + std::to_string(mask), t));
    }
  }
}

TEST(CudaMatrixMultiply, PlainAndTransposed) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    check_matmul(t, {5, 7}, false, {7, 3}, false, 1);
    check_matmul(t, {7, 5}, true, {7, 3}, false, 3);
    check_matmul(t, {5, 7}, false, {3, 7}, true, 5);
    check_matmul(t, {7, 5}, true, {3, 7}, true, 7);
    check_matmul(t, {33, 300}, false, {300, 17}, false, 9);  // long K: f32 accumulation
    check_matmul(t, {1, 1}, false, {1, 1}, false, 11);
  }
}

TEST(CudaMatrixMultiply, BatchedAndBroadcast) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    check_matmul(t, {3, 4, 6}, false, {3, 6, 5}, false, 21);        // equal batches
    check_matmul(t, {2, 3, 4, 6}, false, {6, 5}, false, 23);        // shared b: folded rows
    check_matmul(t, {2, 3, 6, 4}, true, {6, 5}, false, 25);         // shared b, a transposed
    check_matmul(t, {4, 6}, false, {2, 3, 6, 5}, false, 27);        // shared a: stride 0
    check_matmul(t, {2, 1, 4, 6}, false, {3, 5, 6}, true, 29);      // mixed: per-entry loop
    check_matmul(t, {1, 3, 4, 6}, false, {2, 1, 6, 5}, false, 31);  // mixed, both broadcast
  }
}

TEST(CudaMatrixMultiply, Vectors) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    check_matmul(t, {6}, false, {6, 5}, false, 41);
    check_matmul(t, {6}, false, {2, 6, 5}, false, 43);
    check_matmul(t, {2, 4, 6}, false, {6}, false, 45);
    check_matmul(t, {6, 4}, true, {6}, false, 47);
    check_matmul(t, {6}, false, {5, 6}, true, 49);
    check_matmul(t, {6}, false, {6}, false, 51);
  }
}

TEST(CudaMatrixMultiply, SymbolicBatchAtTwoSizes) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    Network net;
    const DimExpr n = DimExpr::symbol("n");
    Tensor* a = net.add_input("a", t, {n, 5, 8});
    Tensor* b = net.add_input("b", t, {8, 3});
    Tensor* c = net.add_input("c", t, {n, 3, 4});
    Layer* ab = net.add_matrix_multiply(a, false, b, false);
    net.mark_output(net.add_matrix_multiply(ab->output(), false, c, false)->output(), "out");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("n", 1, 4, 8);
    const TestTensor bt = TestTensor::random(t, {8, 3}, 61);
    test::CudaRunner runner(net, {}, profiles);
    for (int64_t batch : {2, 7}) {
      const std::vector<TestTensor> in = {TestTensor::random(t, {batch, 5, 8}, 62), bt,
                                          TestTensor::random(t, {batch, 3, 4}, 63)};
      test::expect_matches_cpu(net, in, runner.run(in),
                               label("matmul n=" + std::to_string(batch), t));
    }
  }
}

// ---------------------------------------------------------------- convolution

struct ConvCase {
  std::vector<int64_t> x;  ///< [N, C, *spatial]
  std::vector<int64_t> w;  ///< [K, C/groups, *kernel]
  ConvolutionParams p;
  bool bias;
};

ConvolutionParams conv_params(std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                              std::vector<int64_t> pad_end, std::vector<int64_t> dilation,
                              int64_t groups) {
  ConvolutionParams p;
  p.stride = std::move(stride);
  p.padding_begin = std::move(pad_begin);
  p.padding_end = std::move(pad_end);
  p.dilation = std::move(dilation);
  p.groups = groups;
  return p;
}

void check_conv(DataType t, const ConvCase& c, uint32_t seed) {
  Network net;
  Tensor* x = net.add_input("x", t, shape_of(c.x));
  Tensor* w = net.add_input("w", t, shape_of(c.w));
  Tensor* b = c.bias ? net.add_input("b", t, shape_of({c.w[0]})) : nullptr;
  net.mark_output(net.add_convolution(x, w, b, c.p)->output(), "out");
  std::vector<TestTensor> in = {TestTensor::random(t, c.x, seed),
                                TestTensor::random(t, c.w, seed + 1, -0.5f, 0.5f)};
  if (c.bias) in.push_back(TestTensor::random(t, {c.w[0]}, seed + 2));
  test::check_cuda_matches_cpu(
      net, in, label("conv x" + dims_to_string(c.x) + " w" + dims_to_string(c.w), t));
}

TEST(CudaConvolution, OneTwoThreeD) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<ConvCase> cases = {
      {{2, 3, 17}, {4, 3, 3}, conv_params({1}, {1}, {1}, {1}, 1), true},
      {{2, 4, 19}, {6, 2, 5}, conv_params({2}, {2}, {2}, {2}, 2), false},
      {{2, 3, 9, 11}, {5, 3, 3, 3}, conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1), true},
      {{1, 4, 13, 10}, {8, 4, 3, 2}, conv_params({2, 3}, {1, 0}, {1, 0}, {2, 1}, 1), true},
      {{2, 6, 8, 8}, {6, 1, 3, 3}, conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 6), true},  // dw
      {{2, 8, 7, 7}, {4, 2, 1, 1}, conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 4), false},
      {{1, 16, 12, 12}, {32, 16, 3, 3}, conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1), true},
      {{1, 2, 5, 6, 7}, {3, 2, 2, 3, 3}, conv_params({1, 2, 1}, {0, 1, 1}, {0, 1, 1},
                                                     {1, 1, 2}, 1), true},
  };
  for (DataType t : kFloatTypes) {
    for (size_t i = 0; i < cases.size(); ++i) check_conv(t, cases[i], 100 + 10 * i);
  }
}

TEST(CudaConvolution, AsymmetricPaddingFallsBackCorrectly) {
  EMBER_SKIP_WITHOUT_CUDA();
  const ConvCase c = {{1, 3, 9, 9}, {4, 3, 3, 3}, conv_params({1, 1}, {0, 1}, {2, 1}, {1, 1}, 1),
                      true};
  for (DataType t : kFloatTypes) check_conv(t, c, 200);
}

TEST(CudaConvolution, SymbolicBatchAndHeight) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    Network net;
    const DimExpr n = DimExpr::symbol("n"), h = DimExpr::symbol("h");
    Tensor* x = net.add_input("x", t, {n, 3, h, 10});
    Tensor* w = net.add_input("w", t, {4, 3, 3, 3});
    Tensor* b = net.add_input("b", t, {4});
    net.mark_output(
        net.add_convolution(x, w, b, conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1))->output(),
        "out");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("n", 1, 2, 4);
    profiles[0].set_range("h", 4, 8, 16);
    test::CudaRunner runner(net, {}, profiles);
    for (auto [batch, height] : {std::pair<int64_t, int64_t>{1, 5}, {3, 13}}) {
      const std::vector<TestTensor> in = {TestTensor::random(t, {batch, 3, height, 10}, 300),
                                          TestTensor::random(t, {4, 3, 3, 3}, 301),
                                          TestTensor::random(t, {4}, 302)};
      test::expect_matches_cpu(net, in, runner.run(in),
                               label("conv n=" + std::to_string(batch) + " h=" +
                                         std::to_string(height),
                                     t));
    }
  }
}

// ---------------------------------------------------------------- convolution: graph vs legacy

/// Sets EMBER_CUDNN_CONV for a scope (unset for nullptr) and restores the previous value. The
/// back end reads it when a layer's state is prepared, i.e. on each new engine's first call.
class CudnnConvMode : public test::ScopedEnv {
 public:
  explicit CudnnConvMode(const char* value) : ScopedEnv("EMBER_CUDNN_CONV", value) {}
};

/// The epilogue variants the convolution layer knows: which operands, which activation, scale.
struct ConvEpilogueCase {
  const char* name;
  bool bias, residual, act;
  ActivationType type;
  double scale;
};

const std::vector<ConvEpilogueCase> kConvEpilogues = {
    {"plain", false, false, false, ActivationType::kRelu, 1.0},
    {"bias", true, false, false, ActivationType::kRelu, 1.0},                  // fused graph
    {"bias+relu", true, false, true, ActivationType::kRelu, 1.0},              // fused graph
    {"bias+residual", true, true, false, ActivationType::kRelu, 1.0},          // fused graph
    {"bias+residual+relu", true, true, true, ActivationType::kRelu, 1.0},      // fused graph
    {"0.5*conv+bias+relu", true, false, true, ActivationType::kRelu, 0.5},     // alpha
    {"residual+relu", false, true, true, ActivationType::kRelu, 1.0},          // epilogue pass
    {"bias+gelu", true, false, true, ActivationType::kGeluErf, 1.0},           // epilogue pass
};

/// A convolution geometry in Ember's layout (channels_last: x [N, H, W, C], w [K, R, S, C/g]).
struct GraphConvCase {
  std::string name;
  std::vector<int64_t> x, w;
  ConvolutionParams p;
  /// The graph path must build a plan (no fallback to the legacy API): the common layers.
  bool must_take_graph;
};

/// The output dims of `c` (PyTorch's rule), in the layer's layout.
std::vector<int64_t> conv_out_dims(const GraphConvCase& c) {
  const size_t nsp = c.p.stride.size();
  std::vector<int64_t> out = {c.x[0], c.w[0]};
  for (size_t d = 0; d < nsp; ++d) {
    const int64_t in = c.p.channels_last ? c.x[1 + d] : c.x[2 + d];
    const int64_t k = c.p.channels_last ? c.w[1 + d] : c.w[2 + d];
    out.push_back((in + c.p.padding_begin[d] + c.p.padding_end[d] - c.p.dilation[d] * (k - 1) - 1) /
                      c.p.stride[d] + 1);
  }
  if (c.p.channels_last) out = {out[0], out[2], out[3], out[1]};
  return out;
}

/// What one case did on the graph path (counter deltas) and the warnings its context gave.
struct GraphRun {
  cuda::ConvGraphCounters delta;
  std::vector<std::string> warnings;
};

/// Builds `c` with epilogue `e` for cuda, runs it twice (layer by layer, then captured into a
/// CUDA graph) under the current EMBER_CUDNN_CONV, and compares both runs with the CPU.
GraphRun run_graph_case(DataType t, const GraphConvCase& c, const ConvEpilogueCase& e,
                        uint32_t seed) {
  Network net;
  Tensor* x = net.add_input("x", t, shape_of(c.x));
  Tensor* w = net.add_input("w", t, shape_of(c.w));
  std::vector<TestTensor> inputs{TestTensor::random(t, c.x, seed),
                                 TestTensor::random(t, c.w, seed + 1, -0.5f, 0.5f)};
  std::vector<Tensor*> ins{x, w, nullptr, nullptr};
  if (e.bias) {
    ins[2] = net.add_input("bias", t, {c.w[0]});
    inputs.push_back(TestTensor::random(t, {c.w[0]}, seed + 2));
  }
  if (e.residual) {
    const std::vector<int64_t> od = conv_out_dims(c);
    ins[3] = net.add_input("res", t, shape_of(od));
    inputs.push_back(TestTensor::random(t, od, seed + 3));
  }
  ConvolutionParams p = c.p;
  p.epilogue.scale = e.scale;
  p.epilogue.fused_activation = e.act;
  p.epilogue.activation = e.type;
  net.mark_output(net.add_layer(p, ins, "conv")->output(), "out");
  const std::string what = label(c.name + " " + e.name, t);
  // Counted from after the build: its tactic timing runs the plan once in a context of its own.
  test::CudaRunner runner(net, inputs);
  const cuda::ConvGraphCounters before = cuda::conv_graph_counters();
  test::expect_matches_cpu(net, inputs, runner.run(inputs), what);
  test::expect_matches_cpu(net, inputs, runner.run(inputs), what + " (CUDA graph)");
  const cuda::ConvGraphCounters after = cuda::conv_graph_counters();
  GraphRun r;
  r.delta.preparations = after.preparations - before.preparations;
  r.delta.plans = after.plans - before.plans;
  r.delta.executions = after.executions - before.executions;
  r.delta.refusals = after.refusals - before.refusals;
  r.warnings = runner.context().take_warnings();
  return r;
}

ConvolutionParams nhwc(ConvolutionParams p) {
  p.channels_last = true;
  return p;
}

// Every geometry and epilogue variant through cuDNN's graph API (EMBER_CUDNN_CONV unset) and
// through the legacy API (=legacy), each against the CPU reference. On the graph path the
// common layers must get a plan (no refusal, no warning); rarer geometries may be refused, and
// then must run correctly on the legacy path with exactly one warning naming the layer.
TEST(CudaConvGraph, GraphAndLegacyMatchCpu) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<GraphConvCase> all_epilogues = {
      {"nchw 3x3", {2, 8, 9, 9}, {16, 8, 3, 3}, conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1),
       true},
      {"nhwc 3x3", {2, 9, 9, 8}, {16, 3, 3, 8},
       nhwc(conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1)), true},
  };
  const std::vector<GraphConvCase> some_epilogues = {
      {"nchw groups=2 stride 2", {2, 8, 8, 8}, {8, 4, 3, 3},
       conv_params({2, 2}, {1, 1}, {1, 1}, {1, 1}, 2), true},
      {"nchw depthwise", {2, 8, 10, 10}, {8, 1, 3, 3},
       conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 8), true},
      {"nchw dilated strided 3x2", {1, 4, 13, 10}, {8, 4, 3, 2},
       conv_params({2, 3}, {1, 0}, {1, 0}, {2, 1}, 1), true},
      {"nchw 1x1", {2, 16, 7, 7}, {32, 16, 1, 1}, conv_params({1, 1}, {0, 0}, {0, 0}, {1, 1}, 1),
       true},
      {"nhwc depthwise", {2, 10, 10, 8}, {8, 3, 3, 1},
       nhwc(conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 8)), true},
      {"nhwc 1x1 stride 2", {2, 8, 8, 16}, {32, 1, 1, 16},
       nhwc(conv_params({2, 2}, {0, 0}, {0, 0}, {1, 1}, 1)), true},
      {"nchw 1d", {2, 4, 19}, {6, 2, 5}, conv_params({2}, {2}, {2}, {2}, 2), false},
      {"nchw 3d", {1, 2, 5, 6, 7}, {3, 2, 2, 3, 3},
       conv_params({1, 2, 1}, {0, 1, 1}, {0, 1, 1}, {1, 1, 2}, 1), false},
      {"nchw asymmetric padding", {1, 3, 9, 9}, {4, 3, 3, 3},
       conv_params({1, 1}, {0, 1}, {2, 1}, {1, 1}, 1), false},
  };
  const std::vector<ConvEpilogueCase> few = {kConvEpilogues[0], kConvEpilogues[4]};
  for (DataType t : kFloatTypes) {
    uint32_t seed = 800;
    auto run_both = [&](const GraphConvCase& c, const ConvEpilogueCase& e) {
      seed += 10;
      const std::string what = label(c.name + " " + e.name, t);
      {
        const CudnnConvMode graph(nullptr);
        const GraphRun r = run_graph_case(t, c, e, seed);
        EXPECT_EQ(r.delta.preparations, 1) << what << ": one plan built for the layer";
        if (r.delta.refusals == 0) {
          EXPECT_GE(r.delta.executions, 1) << what;
          EXPECT_TRUE(r.warnings.empty()) << what << ": " << r.warnings.front();
        } else {
          EXPECT_FALSE(c.must_take_graph)
              << what << ": cuDNN's graph API refused a common layer: "
              << (r.warnings.empty() ? std::string("(no warning)") : r.warnings.front());
          EXPECT_EQ(r.delta.executions, 0) << what;
          ASSERT_EQ(r.warnings.size(), 1u) << what << ": a refusal is reported once";
          EXPECT_NE(r.warnings[0].find("conv"), std::string::npos) << r.warnings[0];
          EXPECT_NE(r.warnings[0].find("CUDNN_STATUS"), std::string::npos) << r.warnings[0];
        }
      }
      {
        const CudnnConvMode legacy("legacy");
        const GraphRun r = run_graph_case(t, c, e, seed);
        EXPECT_EQ(r.delta.preparations, 0) << what << " (legacy)";
        EXPECT_EQ(r.delta.executions, 0) << what << " (legacy)";
        EXPECT_TRUE(r.warnings.empty()) << what << " (legacy)";
      }
    };
    for (const GraphConvCase& c : all_epilogues) {
      for (const ConvEpilogueCase& e : kConvEpilogues) run_both(c, e);
    }
    for (const GraphConvCase& c : some_epilogues) {
      for (const ConvEpilogueCase& e : few) run_both(c, e);
    }
  }
}

// The plan is built once per layer and problem: repeated calls (layer by layer, and the CUDA
// graph's capture) execute the kept plan; a new shape builds a new one, and going back to an
// earlier shape finds its plan still kept (up to 8 problems per layer).
TEST(CudaConvGraph, PlanBuiltOnceAndRebuiltOnNewShape) {
  EMBER_SKIP_WITHOUT_CUDA();
  const CudnnConvMode graph(nullptr);
  for (DataType t : {DataType::kF32, DataType::kF16}) {
    Network net;
    const DimExpr n = DimExpr::symbol("n");
    Tensor* x = net.add_input("x", t, {n, 8, 10, 10});
    Tensor* w = net.add_input("w", t, {16, 8, 3, 3});
    Tensor* b = net.add_input("b", t, {16});
    ConvolutionParams p = conv_params({1, 1}, {1, 1}, {1, 1}, {1, 1}, 1);
    p.epilogue.fused_activation = true;
    net.mark_output(net.add_layer(p, {x, w, b, nullptr}, "conv")->output(), "out");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("n", 1, 2, 4);
    test::CudaRunner runner(net, {}, profiles);
    auto inputs = [&](int64_t batch) {
      return std::vector<TestTensor>{TestTensor::random(t, {batch, 8, 10, 10}, 900),
                                     TestTensor::random(t, {16, 8, 3, 3}, 901),
                                     TestTensor::random(t, {16}, 902)};
    };
    const cuda::ConvGraphCounters start = cuda::conv_graph_counters();
    runner.context().set_cuda_graphs(false);
    for (int i = 0; i < 3; ++i) {
      test::expect_matches_cpu(net, inputs(2), runner.run(inputs(2)), label("n=2", t));
    }
    const cuda::ConvGraphCounters same = cuda::conv_graph_counters();
    EXPECT_EQ(same.preparations - start.preparations, 1) << dtype_name(t);
    EXPECT_EQ(same.executions - start.executions, 3) << dtype_name(t);
    EXPECT_EQ(same.refusals - start.refusals, 0) << dtype_name(t);
    // The plans finalized for the first call (timed candidates) are all that were built.
    const int64_t first_plans = same.plans - start.plans;
    EXPECT_GE(first_plans, 1) << dtype_name(t);

    test::expect_matches_cpu(net, inputs(3), runner.run(inputs(3)), label("n=3", t));
    const cuda::ConvGraphCounters other = cuda::conv_graph_counters();
    EXPECT_EQ(other.preparations - same.preparations, 1) << "a new shape builds a new plan";
    test::expect_matches_cpu(net, inputs(3), runner.run(inputs(3)), label("n=3 again", t));
    test::expect_matches_cpu(net, inputs(2), runner.run(inputs(2)), label("n=2 again", t));
    EXPECT_EQ(cuda::conv_graph_counters().preparations - other.preparations, 0)
        << "both shapes' plans are kept";
    EXPECT_EQ(cuda::conv_graph_counters().plans - other.plans, 0);

    // With CUDA graphs: the eager call and the capture share the kept plan.
    runner.context().set_cuda_graphs(true);
    const cuda::ConvGraphCounters graphs_start = cuda::conv_graph_counters();
    for (int i = 0; i < 3; ++i) {
      test::expect_matches_cpu(net, inputs(4), runner.run(inputs(4)), label("n=4 graphs", t));
    }
    EXPECT_EQ(cuda::conv_graph_counters().preparations - graphs_start.preparations, 1);
    EXPECT_TRUE(runner.context().take_warnings().empty());
  }
}

// The warning mechanism the refusals go through: once per context and layer, taken once.
TEST(CudaResources, WarnOncePerLayer) {
  cuda::Resources res(nullptr, nullptr);
  int layer_a = 0, layer_b = 0;
  res.warn_once(&layer_a, "layer a degraded");
  res.warn_once(&layer_a, "layer a degraded again");
  res.warn_once(&layer_b, "layer b degraded");
  EXPECT_EQ(res.take_warnings(), (std::vector<std::string>{"layer a degraded", "layer b degraded"}));
  EXPECT_TRUE(res.take_warnings().empty());
  res.warn_once(&layer_a, "layer a degraded a third time");
  EXPECT_TRUE(res.take_warnings().empty());
}

// ---------------------------------------------------------------- deconvolution

void check_deconv(DataType t, const std::vector<int64_t>& xd, const std::vector<int64_t>& wd,
                  const DeconvolutionParams& p, bool bias, uint32_t seed) {
  Network net;
  Tensor* x = net.add_input("x", t, shape_of(xd));
  Tensor* w = net.add_input("w", t, shape_of(wd));
  const int64_t out_channels = wd[1] * p.groups;
  Tensor* b = bias ? net.add_input("b", t, shape_of({out_channels})) : nullptr;
  net.mark_output(net.add_deconvolution(x, w, b, p)->output(), "out");
  std::vector<TestTensor> in = {TestTensor::random(t, xd, seed),
                                TestTensor::random(t, wd, seed + 1, -0.5f, 0.5f)};
  if (bias) in.push_back(TestTensor::random(t, {out_channels}, seed + 2));
  test::check_cuda_matches_cpu(
      net, in, label("deconv x" + dims_to_string(xd) + " w" + dims_to_string(wd), t));
}

DeconvolutionParams deconv_params(std::vector<int64_t> stride, std::vector<int64_t> pad,
                                  std::vector<int64_t> dilation, std::vector<int64_t> out_pad,
                                  int64_t groups) {
  DeconvolutionParams p;
  p.stride = std::move(stride);
  p.padding_begin = pad;
  p.padding_end = std::move(pad);
  p.dilation = std::move(dilation);
  p.output_padding = std::move(out_pad);
  p.groups = groups;
  return p;
}

TEST(CudaDeconvolution, StridesGroupsOutputPadding) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    check_deconv(t, {2, 3, 9}, {3, 4, 3}, deconv_params({2}, {1}, {1}, {1}, 1), true, 400);
    check_deconv(t, {2, 4, 5, 6}, {4, 3, 3, 3}, deconv_params({2, 2}, {1, 1}, {1, 1}, {1, 0}, 1),
                 true, 410);
    check_deconv(t, {1, 4, 6, 5}, {4, 2, 4, 4}, deconv_params({2, 2}, {1, 1}, {1, 1}, {0, 0}, 2),
                 false, 420);
    check_deconv(t, {1, 2, 5, 5}, {2, 3, 3, 3}, deconv_params({1, 1}, {2, 2}, {2, 2}, {0, 0}, 1),
                 true, 430);
    check_deconv(t, {1, 2, 3, 4, 4}, {2, 3, 2, 3, 3},
                 deconv_params({2, 1, 2}, {0, 1, 1}, {1, 1, 1}, {1, 0, 1}, 1), true, 440);
    // output_padding >= stride (allowed below dilation): cuDNN cannot express it, host runs it.
    check_deconv(t, {1, 2, 5, 5}, {2, 2, 3, 3}, deconv_params({1, 1}, {0, 0}, {3, 3}, {1, 1}, 1),
                 true, 450);
  }
}

// ---------------------------------------------------------------- pooling

PoolingParams pool_params(PoolingType type, std::vector<int64_t> window, std::vector<int64_t> stride,
                          std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                          std::vector<int64_t> dilation, bool ceil_mode = false,
                          bool count_include_pad = true, int64_t divisor_override = 0) {
  PoolingParams p;
  p.type = type;
  p.window = std::move(window);
  p.stride = std::move(stride);
  p.padding_begin = std::move(pad_begin);
  p.padding_end = std::move(pad_end);
  p.dilation = std::move(dilation);
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override;
  return p;
}

void check_pool(const TestTensor& x, const PoolingParams& p, const std::string& what) {
  Network net;
  Tensor* in = net.add_input("x", x.dtype, shape_of(x.dims));
  net.mark_output(net.add_pooling(in, p)->output(), "out");
  test::check_cuda_matches_cpu(net, {x}, label(what, x.dtype));
}

TEST(CudaPooling, MaxAndAverageCases) {
  EMBER_SKIP_WITHOUT_CUDA();
  const PoolingType kMax = PoolingType::kMax, kAvg = PoolingType::kAverage;
  const std::vector<std::pair<std::string, PoolingParams>> cases = {
      {"max 2d", pool_params(kMax, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1})},
      {"max 2d ceil", pool_params(kMax, {3, 2}, {2, 2}, {0, 1}, {0, 1}, {1, 1}, true)},
      {"max 2d dilated", pool_params(kMax, {2, 3}, {1, 2}, {1, 1}, {1, 1}, {2, 2})},
      {"avg 2d", pool_params(kAvg, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1})},
      {"avg 2d exclude pad", pool_params(kAvg, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}, false, false)},
      {"avg 2d ceil", pool_params(kAvg, {2, 2}, {2, 2}, {1, 0}, {1, 0}, {1, 1}, true, true)},
      {"avg 2d divisor", pool_params(kAvg, {2, 3}, {1, 2}, {0, 1}, {0, 1}, {1, 1}, false, true, 5)},
  };
  for (DataType t : kFloatTypes) {
    const TestTensor x = TestTensor::random(t, {2, 3, 11, 10}, 500);
    for (const auto& [what, p] : cases) check_pool(x, p, what);
  }
  for (DataType t : kFloatTypes) {
    const TestTensor x1 = TestTensor::random(t, {2, 5, 23}, 510);
    check_pool(x1, pool_params(kMax, {4}, {3}, {2}, {2}, {1}, true), "max 1d ceil");
    check_pool(x1, pool_params(kAvg, {3}, {2}, {1}, {1}, {1}, true, false), "avg 1d ceil");
    const TestTensor x3 = TestTensor::random(t, {1, 2, 6, 7, 8}, 520);
    check_pool(x3, pool_params(kMax, {2, 2, 3}, {2, 2, 2}, {0, 1, 1}, {0, 1, 1}, {1, 1, 1}),
               "max 3d");
    check_pool(x3, pool_params(kAvg, {3, 2, 2}, {1, 2, 2}, {1, 0, 1}, {1, 0, 1}, {1, 1, 1}),
               "avg 3d");
  }
}

TEST(CudaPooling, IntegerMaxAndNan) {
  EMBER_SKIP_WITHOUT_CUDA();
  const PoolingParams p = pool_params(PoolingType::kMax, {2, 2}, {2, 2}, {1, 1}, {1, 1}, {1, 1});
  for (DataType t : {DataType::kI8, DataType::kU8, DataType::kI32, DataType::kI64}) {
    check_pool(TestTensor::random(t, {2, 3, 7, 6}, 600, -100.0f, 100.0f), p, "int max");
  }
  std::vector<float> v(2 * 1 * 4 * 4);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 7) - 3.0f;
  v[5] = std::numeric_limits<float>::quiet_NaN();
  v[20] = -std::numeric_limits<float>::infinity();
  for (DataType t : kFloatTypes) {
    check_pool(TestTensor::floats(t, {2, 1, 4, 4}, v), p, "max with NaN");
  }
}

// Global average pooling (the window is the whole plane) with EMBER_PARALLEL_REDUCTIONS=1:
// each plane's positions split over blocks, partial sums combined by a second kernel. NCHW
// planes of 12544 (EfficientNet's first squeeze-and-excitation), odd sizes, a divisor
// override, a padded window still covering the input, 1-d and 3-d; and the cases that stay on
// the one-thread kernel (a window short of the plane, planes under 64 positions).
TEST(CudaPooling, GlobalAverageSplitOverBlocks) {
  EMBER_SKIP_WITHOUT_CUDA();
  test::ScopedEnv parallel("EMBER_PARALLEL_REDUCTIONS", "1");
  const PoolingType kAvg = PoolingType::kAverage;
  for (DataType t : kFloatTypes) {
    check_pool(TestTensor::random(t, {1, 32, 112, 112}, 710),
               pool_params(kAvg, {112, 112}, {1, 1}, {0, 0}, {0, 0}, {1, 1}), "global 112");
    check_pool(TestTensor::random(t, {3, 5, 37, 29}, 711),
               pool_params(kAvg, {37, 29}, {37, 29}, {0, 0}, {0, 0}, {1, 1}), "global odd");
    check_pool(TestTensor::random(t, {2, 3, 20, 20}, 712),
               pool_params(kAvg, {20, 20}, {1, 1}, {0, 0}, {0, 0}, {1, 1}, false, true, 7),
               "global divisor override");
    check_pool(TestTensor::random(t, {2, 3, 20, 20}, 713),
               pool_params(kAvg, {22, 22}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, false, true),
               "global padded, pad counted");
    check_pool(TestTensor::random(t, {2, 4, 300}, 714),
               pool_params(kAvg, {300}, {1}, {0}, {0}, {1}), "global 1d");
    check_pool(TestTensor::random(t, {1, 2, 4, 9, 9}, 715),
               pool_params(kAvg, {4, 9, 9}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, {1, 1, 1}),
               "global 3d");
    check_pool(TestTensor::random(t, {2, 3, 20, 20}, 716),
               pool_params(kAvg, {19, 20}, {1, 1}, {0, 0}, {0, 0}, {1, 1}), "not global");
    check_pool(TestTensor::random(t, {2, 3, 7, 7}, 717),
               pool_params(kAvg, {7, 7}, {1, 1}, {0, 0}, {0, 0}, {1, 1}), "small plane");
  }
}

TEST(CudaPooling, ManyBlocks) {
  EMBER_SKIP_WITHOUT_CUDA();
  // 2 x 64 x 512 x 512 outputs = 33.5M: more than 65535 blocks of 256 threads.
  const TestTensor x = TestTensor::random(DataType::kF16, {2, 64, 512, 512}, 700);
  check_pool(x, pool_params(PoolingType::kAverage, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}),
             "avg many blocks");
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
