// channels_last: the layer flag (shape inference, CPU kernels, plan round trip) and the builder
// pass that moves regions of 2-d convolutions to NHWC. The pass runs here on f32 networks on the
// CPU (rewrite_channels_last with f16_bf16_only = false): with and without it, after
// fuse_epilogues, the reference executor must give the same outputs within the f32 tolerance.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "builder/passes/passes.h"
#include "ember/engine/builder.h"
#include "ember/engine/half.h"
#include "ember/engine/runtime.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

Shape shape_of(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

Tensor* constant(Network& net, std::vector<int64_t> dims, uint32_t seed, const std::string& name,
                 float lo = -1.0f, float hi = 1.0f) {
  const TestTensor t = TestTensor::random(DataType::kF32, dims, seed, lo, hi);
  return net.add_constant(Weights::copy(DataType::kF32, dims, t.bytes.data()), name)->output();
}

ConvolutionParams conv_params(int64_t stride = 1, int64_t pad = 0, int64_t dilation = 1,
                              int64_t groups = 1) {
  ConvolutionParams p;
  p.stride = {stride, stride};
  p.padding_begin = p.padding_end = {pad, pad};
  p.dilation = {dilation, dilation};
  p.groups = groups;
  return p;
}

PoolingParams pool_params(PoolingType type, int64_t window, int64_t stride, int64_t pad) {
  PoolingParams p;
  p.type = type;
  p.window = {window, window};
  p.stride = {stride, stride};
  p.padding_begin = p.padding_end = {pad, pad};
  p.dilation = {1, 1};
  return p;
}

/// conv (constant weights) -> batch norm (per-channel * and +) -> optional relu, as the
/// converters emit it; fuse_epilogues folds it into one Convolution.
Tensor* conv_bn(Network& net, Tensor* x, int64_t out_channels, int64_t kernel,
                const ConvolutionParams& p, bool relu, const std::string& name, uint32_t seed) {
  const int64_t in_per_group = x->shape()[1].constant() / p.groups;
  Tensor* w = constant(net, {out_channels, in_per_group, kernel, kernel}, seed, name + "_w");
  Tensor* y = net.add_convolution(x, w, nullptr, p, name)->output();
  y = net.add_elementwise(y, constant(net, {1, out_channels, 1, 1}, seed + 1, name + "_s", 0.5f,
                                      1.5f),
                          ElementWiseOp::kProd, name + "_bn_scale")->output();
  y = net.add_elementwise(y, constant(net, {1, out_channels, 1, 1}, seed + 2, name + "_b"),
                          ElementWiseOp::kSum, name + "_bn_shift")->output();
  if (relu) y = net.add_activation(y, ActivationType::kRelu, 0, 0, name + "_relu")->output();
  return y;
}

/// What the builder does before the pass (fuse_epilogues), then the pass when `nhwc`.
Network prepared(const Network& net, bool nhwc, std::string* summary = nullptr) {
  BuildState s;
  s.plan.network = net.clone();
  pass_fuse_epilogues(s);
  if (nhwc) {
    const std::string line = rewrite_channels_last(s.plan.network, false);
    if (summary != nullptr) *summary = line;
  }
  return std::move(s.plan.network);
}

int count_kind(const Network& net, LayerKind kind) {
  int n = 0;
  for (const Layer* l : net.layers()) n += l->kind() == kind ? 1 : 0;
  return n;
}

bool is_transpose(const Layer* l) {
  return l != nullptr && l->kind() == LayerKind::kShuffle && !is_pure_reshape(l);
}

/// No transpose reads the output of another transpose (ins and outs cancel, never stack).
void expect_no_stacked_transposes(const Network& net, const std::string& what) {
  for (const Layer* l : net.layers()) {
    if (!is_transpose(l)) continue;
    const Layer* producer = l->input(0)->producer();
    EXPECT_FALSE(is_transpose(producer))
        << what << ": " << l->describe() << " reads " << producer->describe();
  }
}

/// Every 2-d convolution and pooling of `net` is channels_last.
void expect_all_channels_last(const Network& net, const std::string& what) {
  for (const Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kConvolution) {
      EXPECT_TRUE(l->params_as<ConvolutionParams>().channels_last) << what << ": " << l->describe();
    } else if (l->kind() == LayerKind::kPooling) {
      EXPECT_TRUE(l->params_as<PoolingParams>().channels_last) << what << ": " << l->describe();
    }
  }
}

/// Runs `net` fused with and without the pass (reference executor) and compares every output
/// within the f32 tolerance; also builds and runs the rewritten network through a CPU plan.
/// Returns the rewritten network for further checks.
Network expect_pass_keeps_results(const Network& net, const std::vector<TestTensor>& inputs,
                                  const std::string& what) {
  const Network nchw = prepared(net, false);
  std::string summary;
  Network nhwc = prepared(net, true, &summary);
  SCOPED_TRACE(what + ": " + summary);
  expect_all_channels_last(nhwc, what);
  expect_no_stacked_transposes(nhwc, what);
  const auto expected = test::run_network_direct(nchw, inputs);
  const auto actual = test::run_network(nhwc, inputs);  // plan round trip, checked vs direct
  EXPECT_EQ(expected.size(), actual.size()) << what;
  for (size_t i = 0; i < expected.size() && i < actual.size(); ++i) {
    EXPECT_EQ(expected[i].dims, actual[i].dims) << what << " output " << i;
    test::expect_close(actual[i], expected[i].to_floats(), DataType::kF32,
                       what + " output " + std::to_string(i));
  }
  return nhwc;
}

// ---------------------------------------------------------------- the layer flag

TEST(ChannelsLast, ShapeInference) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 9, 7, 6});   // [N, H, W, C]
  Tensor* w = net.add_input("w", DataType::kF32, {8, 3, 3, 3});   // [K, R, S, C/groups]
  ConvolutionParams p = conv_params(2, 1, 1, 2);
  p.channels_last = true;
  Tensor* y = net.add_convolution(x, w, nullptr, p, "conv")->output();
  EXPECT_EQ(shape_to_string(y->shape()), shape_to_string(shape_of({2, 5, 4, 8})));
  PoolingParams pp = pool_params(PoolingType::kMax, 3, 2, 1);
  pp.channels_last = true;
  Tensor* z = net.add_pooling(y, pp, "pool")->output();
  EXPECT_EQ(shape_to_string(z->shape()), shape_to_string(shape_of({2, 3, 2, 8})));
}

TEST(ChannelsLast, ShapeErrorsNameTheNhwcDims) {
  Network net;
  Tensor* x3 = net.add_input("x3", DataType::kF32, {2, 7, 6});
  Tensor* x = net.add_input("x", DataType::kF32, {2, 7, 7, 6});
  Tensor* w = net.add_input("w", DataType::kF32, {8, 3, 3, 4});
  ConvolutionParams p = conv_params();
  p.channels_last = true;
  test::expect_error([&] { net.add_convolution(x, w, nullptr, p, "c1"); },
                     {"c1", "weight dim 3 (4) times groups (1) must equal input dim 3 (6)"});
  ConvolutionParams p1 = p;
  p1.stride = {1};
  p1.padding_begin = p1.padding_end = {0};
  p1.dilation = {1};
  Tensor* w1 = net.add_input("w1", DataType::kF32, {8, 3, 6});
  test::expect_error([&] { net.add_convolution(x3, w1, nullptr, p1, "c2"); },
                     {"c2", "channels_last needs a 2-d input of rank 4", "got rank 3"});
  PoolingParams pp = pool_params(PoolingType::kMax, 2, 2, 0);
  pp.channels_last = true;
  pp.window = {2};
  pp.stride = {2};
  pp.padding_begin = pp.padding_end = {0};
  pp.dilation = {1};
  test::expect_error([&] { net.add_pooling(x3, pp, "p1"); },
                     {"p1", "channels_last pooling needs a 2-d window"});
}

TEST(ChannelsLast, LayersRunOnTheCpuAndSurviveThePlan) {
  // An NHWC conv (bias, residual, relu) and pooling against the same NCHW layers wrapped in
  // explicit transposes; run_network also round-trips the plan and compares it with the
  // reference executor.
  const std::vector<int64_t> to_nhwc{0, 2, 3, 1}, to_nchw{0, 3, 1, 2};
  auto build = [&](Network& net, bool flag) {
    Tensor* x = net.add_input("x", DataType::kF32, {2, 6, 6, 4});  // NHWC either way
    Tensor* r = net.add_input("r", DataType::kF32, {2, 3, 3, 6});
    Tensor* w = constant(net, {6, 4, 3, 3}, 1, "w");               // KCRS
    Tensor* b = constant(net, {6}, 2, "b");
    ConvolutionParams p = conv_params(2, 1);
    p.epilogue.fused_activation = true;
    PoolingParams pp = pool_params(PoolingType::kAverage, 3, 1, 1);
    pp.count_include_pad = false;
    Tensor* y;
    if (flag) {
      p.channels_last = pp.channels_last = true;
      Tensor* w_krsc = net.add_transpose(w, to_nhwc)->output();
      y = net.add_layer(p, {x, w_krsc, b, r}, "conv")->output();
      y = net.add_pooling(y, pp, "pool")->output();
    } else {
      Tensor* xc = net.add_transpose(x, to_nchw)->output();
      Tensor* rc = net.add_transpose(r, to_nchw)->output();
      y = net.add_layer(p, {xc, w, b, rc}, "conv")->output();
      y = net.add_pooling(y, pp, "pool")->output();
      y = net.add_transpose(y, to_nhwc)->output();
    }
    net.mark_output(y, "y");
  };
  Network nchw, nhwc;
  build(nchw, false);
  build(nhwc, true);
  const std::vector<TestTensor> in{TestTensor::random(DataType::kF32, {2, 6, 6, 4}, 3),
                                   TestTensor::random(DataType::kF32, {2, 3, 3, 6}, 4)};
  const auto expected = test::run_network_direct(nchw, in);
  const auto actual = test::run_network(nhwc, in);
  test::expect_close(actual[0], expected[0].to_floats(), DataType::kF32, "nhwc conv+pool");

  BuilderConfig config;
  config.optimization_level = 0;
  const auto plan = Builder(config).build(nhwc);
  const std::string json = Runtime().deserialize(plan.data(), plan.size())->inspect_json();
  EXPECT_NE(json.find("\"channels_last\": true"), std::string::npos) << json;
}

// ---------------------------------------------------------------- the pass

TEST(ChannelsLastPass, ConvBiasRelu) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8, 8});
  Tensor* y = net.add_convolution(x, constant(net, {5, 3, 3, 3}, 1, "w"),
                                  constant(net, {5}, 2, "b"), conv_params(1, 1), "conv")
                  ->output();
  y = net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output();
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 8, 8}, 3)}, "conv+bias+relu");
  // One transpose in, one out, one fused convolution.
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 2);
  EXPECT_EQ(count_kind(nhwc, LayerKind::kActivation), 0);
  EXPECT_EQ(count_kind(nhwc, LayerKind::kConvolution), 1);
}

TEST(ChannelsLastPass, StridedPaddedDilatedGroupedDepthwise) {
  struct Case {
    const char* what;
    int64_t in_c, out_c, kernel;
    ConvolutionParams p;
  };
  const std::vector<Case> cases = {
      {"strided", 3, 4, 3, conv_params(2, 0)},
      {"padded", 3, 4, 5, conv_params(1, 2)},
      {"dilated", 4, 6, 3, conv_params(1, 2, 2)},
      {"grouped", 6, 4, 3, conv_params(1, 1, 1, 2)},
      {"depthwise", 4, 8, 3, conv_params(2, 1, 1, 4)},
      {"1x1", 4, 6, 1, conv_params()},
  };
  uint32_t seed = 10;
  for (const Case& c : cases) {
    Network net;
    Tensor* x = net.add_input("x", DataType::kF32, {2, c.in_c, 9, 9});
    Tensor* y = conv_bn(net, x, c.out_c, c.kernel, c.p, true, "conv", seed);
    net.mark_output(y, "y");
    expect_pass_keeps_results(net, {TestTensor::random(DataType::kF32, {2, c.in_c, 9, 9}, seed)},
                              c.what);
    seed += 5;
  }
}

TEST(ChannelsLastPass, ConvMaxPoolConvIsOneRegion) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 12, 12});
  Tensor* y = conv_bn(net, x, 8, 3, conv_params(2, 1), true, "conv1", 1);
  y = net.add_pooling(y, pool_params(PoolingType::kMax, 3, 2, 1), "pool")->output();
  y = conv_bn(net, y, 6, 3, conv_params(1, 1), true, "conv2", 5);
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 12, 12}, 9)}, "conv-maxpool-conv");
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 2);  // in at x, out at y
}

/// A ResNet basic block with a downsampling shortcut: both branches and the residual add.
Tensor* basic_block(Network& net, Tensor* x, int64_t out_c, int64_t stride, const std::string& name,
                    uint32_t seed) {
  Tensor* h = conv_bn(net, x, out_c, 3, conv_params(stride, 1), true, name + "_c1", seed);
  h = conv_bn(net, h, out_c, 3, conv_params(1, 1), false, name + "_c2", seed + 3);
  Tensor* shortcut = x;
  if (stride != 1 || x->shape()[1].constant() != out_c) {
    shortcut = conv_bn(net, x, out_c, 1, conv_params(stride, 0), false, name + "_down", seed + 6);
  }
  Tensor* y = net.add_elementwise(h, shortcut, ElementWiseOp::kSum, name + "_add")->output();
  return net.add_activation(y, ActivationType::kRelu, 0, 0, name + "_relu")->output();
}

TEST(ChannelsLastPass, ResidualBlocksKeepTheirFusedResidual) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 4, 10, 10});
  Tensor* y = basic_block(net, x, 4, 1, "b1", 1);   // identity shortcut: residual is the input
  y = basic_block(net, y, 8, 2, "b2", 20);          // downsampling shortcut
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 4, 10, 10}, 7)}, "residual blocks");
  int residuals = 0;
  for (const Layer* l : nhwc.layers()) {
    if (l->kind() == LayerKind::kConvolution && l->input(3) != nullptr) ++residuals;
  }
  EXPECT_EQ(residuals, 2);
  EXPECT_EQ(count_kind(nhwc, LayerKind::kElementWise), 0);
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 2);
}

TEST(ChannelsLastPass, RegionOutputToFlattenMatMulAndNetworkOutput) {
  // conv -> (network output) and conv -> global average pool -> flatten -> linear: the pool
  // joins the region, and its [N, 1, 1, C] output leaves through a free reshape.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 7, 7});
  Tensor* f = conv_bn(net, x, 6, 3, conv_params(1, 1), true, "conv", 1);
  net.mark_output(f, "features");
  Tensor* g = net.add_pooling(f, pool_params(PoolingType::kAverage, 7, 7, 0), "gap")->output();
  g = net.add_reshape(g, {2, 6}, "flatten")->output();
  g = net.add_matrix_multiply(g, false, constant(net, {6, 5}, 9, "fc_w"), false, "fc")->output();
  net.mark_output(g, "logits");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 7, 7}, 4)}, "flatten+matmul");
  // Shuffles: x in (transpose), features out (transpose), gap out (reshape), flatten.
  int transposes = 0;
  for (const Layer* l : nhwc.layers()) transposes += is_transpose(l) ? 1 : 0;
  EXPECT_EQ(transposes, 2);
  ASSERT_NE(nhwc.find_tensor("features"), nullptr);
}

/// Input "x" [2, 3, 6, 6] through a 3x3 convolution "c1" to 4 channels: a region's start.
Tensor* first_conv(Network& net) {
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 6, 6});
  return net.add_convolution(x, constant(net, {4, 3, 3, 3}, 1, "w1"), nullptr, conv_params(1, 1),
                             "c1")->output();
}

TEST(ChannelsLastPass, PointwiseBetweenConvolutionsJoins) {
  // conv -> sigmoid -> * [1, C, 1, 1] constant -> max with a full-shape input -> abs ->
  // squeeze-and-excitation -> conv: one region.
  Network net;
  Tensor* y = first_conv(net);
  Tensor* skip = net.add_input("skip", DataType::kF32, {2, 4, 6, 6});
  const ConvolutionParams p = conv_params(1, 1);
  y = net.add_activation(y, ActivationType::kSigmoid, 0, 0, "sig")->output();
  y = net.add_elementwise(y, constant(net, {1, 4, 1, 1}, 2, "gain"), ElementWiseOp::kProd,
                          "gain_mul")->output();
  y = net.add_elementwise(y, skip, ElementWiseOp::kMax, "max_skip")->output();
  y = net.add_unary(y, UnaryOp::kAbs, "abs")->output();
  // Squeeze-and-excitation: a pooled [N, C, 1, 1] region tensor broadcasts over the region.
  Tensor* se = net.add_pooling(y, pool_params(PoolingType::kAverage, 6, 6, 0), "se_pool")->output();
  se = net.add_activation(se, ActivationType::kSigmoid, 0, 0, "se_sig")->output();
  y = net.add_elementwise(y, se, ElementWiseOp::kProd, "se_mul")->output();
  y = net.add_convolution(y, constant(net, {5, 4, 3, 3}, 3, "w2"), nullptr, p, "c2")->output();
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net,
      {TestTensor::random(DataType::kF32, {2, 3, 6, 6}, 5),
       TestTensor::random(DataType::kF32, {2, 4, 6, 6}, 6)},
      "pointwise region");
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 3);  // x and skip in, y out
}

TEST(ChannelsLastPass, CastsAndSelectsBetweenConvolutionsJoin) {
  // A half model's hardswish is computed in f32 between two casts (the converter's opmath),
  // and MobileNetV3 follows it with squeeze-and-excitation: conv -> cast to f16 -> x * relu6
  // (x + 3) / 6 -> cast back -> pool -> gate -> select -> conv. All of it is one region: a
  // cast left outside cut MobileNetV3's region at every hardswish (46 transposes on an H100).
  Network net;
  Tensor* y = first_conv(net);
  Tensor* keep = net.add_input("keep", DataType::kBool, {2, 4, 6, 6});
  const ConvolutionParams p = conv_params(1, 1);
  Tensor* h = net.add_cast(y, DataType::kF16, "in_cast")->output();
  Tensor* g = net.add_activation(h, ActivationType::kHardSigmoid, 1.0 / 6.0, 0.5, "hsig")
                  ->output();
  h = net.add_elementwise(h, g, ElementWiseOp::kProd, "hswish")->output();
  y = net.add_cast(h, DataType::kF32, "out_cast")->output();
  Tensor* se = net.add_pooling(y, pool_params(PoolingType::kAverage, 6, 6, 0), "se_pool")->output();
  se = net.add_activation(se, ActivationType::kSigmoid, 0, 0, "se_sig")->output();
  Tensor* gated = net.add_elementwise(y, se, ElementWiseOp::kProd, "se_mul")->output();
  y = net.add_layer(SelectParams{}, {keep, gated, y}, "select")->output();
  y = net.add_convolution(y, constant(net, {5, 4, 3, 3}, 3, "w2"), nullptr, p, "c2")->output();
  net.mark_output(y, "y");
  TestTensor keep_values = TestTensor::random(DataType::kBool, {2, 4, 6, 6}, 7);
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 6, 6}, 5), keep_values}, "cast region");
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 3);  // x and keep in, y out
  for (const Layer* l : nhwc.layers()) {
    if (l->kind() == LayerKind::kCast) EXPECT_EQ(l->output()->shape()[3], DimExpr(4));
  }
}

TEST(ChannelsLastPass, AsppConcatenationAndUpsamplingJoin) {
  // DeepLabV3's head: conv -> {1x1 conv, 3x3 dilated conv, global pool -> 1x1 conv -> bilinear
  // upsample} -> concatenation over channels -> conv -> bilinear upsample to the image size
  // (a network output). The concatenation and the pooled branch's upsample join the region;
  // the last upsample stays NCHW, so the smaller tensor before it leaves.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 6, 6});
  Tensor* f = net.add_convolution(x, constant(net, {4, 3, 3, 3}, 1, "w0"), nullptr,
                                  conv_params(1, 1), "backbone")->output();
  Tensor* b1 = net.add_convolution(f, constant(net, {4, 4, 1, 1}, 2, "w1"), nullptr,
                                   conv_params(), "b1")->output();
  Tensor* b2 = net.add_convolution(f, constant(net, {4, 4, 3, 3}, 3, "w2"), nullptr,
                                   conv_params(1, 2, 2), "b2")->output();
  Tensor* pooled = net.add_pooling(f, pool_params(PoolingType::kAverage, 6, 6, 0), "pool")
                       ->output();
  pooled = net.add_convolution(pooled, constant(net, {4, 4, 1, 1}, 4, "w3"), nullptr,
                               conv_params(), "b3")->output();
  ResizeParams up;
  up.mode = ResizeMode::kLinear;
  up.coordinate = ResizeCoordinate::kHalfPixel;
  up.output = {DimExpr(2), DimExpr(4), DimExpr(6), DimExpr(6)};
  Tensor* b3 = net.add_layer(up, {pooled}, "up_pool")->output();
  ConcatenationParams cat;
  cat.axis = 1;
  Tensor* y = net.add_layer(cat, {b1, b2, b3}, "cat")->output();
  y = net.add_convolution(y, constant(net, {5, 12, 1, 1}, 5, "w4"), nullptr, conv_params(),
                          "project")->output();
  ResizeParams out = up;
  out.output = {DimExpr(2), DimExpr(5), DimExpr(11), DimExpr(13)};
  net.mark_output(net.add_layer(out, {y}, "up_image")->output(), "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 6, 6}, 6)}, "aspp");
  int transposes = 0;
  for (const Layer* l : nhwc.layers()) {
    transposes += is_transpose(l) ? 1 : 0;
    if (l->kind() == LayerKind::kConcatenation) {
      EXPECT_EQ(l->params_as<ConcatenationParams>().axis, 3);
    }
    if (l->kind() == LayerKind::kResize) {
      const bool image = l->output()->shape()[3] == DimExpr(13);
      // The pooled branch's upsample is NHWC [2, 6, 6, 4]; the image's stays NCHW.
      EXPECT_EQ(l->output()->shape()[1], image ? DimExpr(5) : DimExpr(6)) << l->describe();
    }
  }
  EXPECT_EQ(transposes, 2);  // x in, the projection out to the last upsample
}

TEST(ChannelsLastPass, PerTensorFakeQuantizationBetweenConvolutionsJoins) {
  // conv -> Quantize (FP8, per tensor) -> Dequantize -> conv, as an FP8-quantized model's float
  // convolutions are: the pair is the same in every layout, so it joins the region instead of
  // being wrapped in two transposes.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 6, 6});
  Tensor* y = conv_bn(net, x, 4, 3, conv_params(1, 1), true, "c1", 1);
  Tensor* scale = net.add_constant(Weights::from_vector(DataType::kF32, {1},
                                                         std::vector<float>{0.05f}))->output();
  QuantizeParams qp;
  qp.to = DataType::kF8E4M3;
  y = net.add_quantize(y, scale, nullptr, qp, "q")->output();
  DequantizeParams dp;
  dp.to = DataType::kF32;
  y = net.add_dequantize(y, scale, nullptr, dp, "dq")->output();
  y = conv_bn(net, y, 5, 3, conv_params(1, 1), false, "c2", 4);
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 6, 6}, 8)}, "conv-q-dq-conv");
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 2);  // in at x, out at y
  EXPECT_EQ(count_kind(nhwc, LayerKind::kQuantize), 1);
}

/// A QuantizedConvolution of `x` (int8, uint8 or FP8 by x's dtype) with a constant weight
/// [k, C / groups, r, r], per-channel (int8) or per-tensor (FP8) weight scales, a bias and a
/// relu; requantized to int8 through `out_scale` when given, else `out` values.
Tensor* qconv(Network& net, Tensor* x, int64_t k, int64_t r, int64_t stride, int64_t pad,
              int64_t groups, Tensor* x_scale, Tensor* out_scale, Tensor* zero_point,
              const std::string& name, uint32_t seed, Tensor* residual = nullptr) {
  const bool fp8 = x->dtype() == DataType::kF8E4M3;
  const int64_t cg = x->shape()[1].constant() / groups;
  const std::vector<int64_t> wd{k, cg, r, r};
  const TestTensor wf = TestTensor::random(DataType::kF32, wd, seed, -100.0f, 100.0f);
  std::vector<int8_t> w8;
  std::vector<uint8_t> w_fp8;
  for (float v : wf.to_floats()) {
    w8.push_back(static_cast<int8_t>(v));
    w_fp8.push_back(f32_to_f8e4m3(v));
  }
  Tensor* w = net.add_constant(fp8 ? Weights::from_vector(DataType::kF8E4M3, wd, w_fp8)
                                   : Weights::from_vector(DataType::kI8, wd, w8),
                               name + "_w")->output();
  std::vector<float> ws;
  for (int64_t j = 0; j < (fp8 ? 1 : k); ++j) ws.push_back(0.001f * static_cast<float>(j % 3 + 1));
  Tensor* w_scale = net.add_constant(Weights::from_vector(DataType::kF32,
                                                          {static_cast<int64_t>(ws.size())}, ws),
                                     name + "_ws")->output();
  QuantizedConvolutionParams p;
  p.stride = {stride, stride};
  p.padding_begin = p.padding_end = {pad, pad};
  p.dilation = {1, 1};
  p.groups = groups;
  p.epilogue.fused_activation = true;
  p.epilogue.activation = ActivationType::kRelu;
  p.requantize.enabled = out_scale != nullptr;
  std::vector<Tensor*> inputs{x, w, x_scale, w_scale, constant(net, {k}, seed + 1, name + "_b"),
                              out_scale, zero_point, residual};
  return net.add_layer(p, inputs, name)->output();
}

TEST(ChannelsLastPass, QuantizedConvolutionsJoinAndKeepTheirSums) {
  // Quantize -> int8 3x3 (requantized to int8) -> int8 1x1 -> f32, an FP8 3x3/2, a uint8 stem
  // with a zero point and C = 3, and a grouped one that stays NCHW: the NHWC region gives the
  // same sums in the same order, so the outputs are the same.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 8, 9, 9});
  Tensor* img = net.add_input("img", DataType::kF32, {2, 3, 7, 7});
  const auto scalar = [&](float v, const std::string& name) {
    return net.add_constant(Weights::from_vector(DataType::kF32, {1}, std::vector<float>{v}),
                            name)->output();
  };
  Tensor* s = scalar(0.05f, "x_scale");
  Tensor* q = net.add_quantize(x, s, nullptr, QuantizeParams{}, "q")->output();
  Tensor* y = qconv(net, q, 16, 3, 1, 1, 1, s, scalar(0.2f, "y_scale"), nullptr, "c3x3", 1);
  y = qconv(net, y, 12, 1, 1, 0, 1, scalar(0.2f, "y_scale2"), nullptr, nullptr, "c1x1", 2);
  net.mark_output(y, "int8_chain");
  QuantizeParams f8;
  f8.to = DataType::kF8E4M3;
  Tensor* qf = net.add_quantize(x, s, nullptr, f8, "q_fp8")->output();
  net.mark_output(qconv(net, qf, 16, 3, 2, 1, 1, s, nullptr, nullptr, "fp8_3x3", 3), "fp8");
  QuantizeParams u8;
  u8.to = DataType::kU8;
  u8.quant_min = 0;
  u8.quant_max = 255;
  Tensor* zp = net.add_constant(Weights::from_vector(DataType::kI32, {1},
                                                     std::vector<int32_t>{131}), "zp")->output();
  Tensor* qi = net.add_quantize(img, s, zp, u8, "q_u8")->output();
  net.mark_output(qconv(net, qi, 8, 3, 2, 1, 1, s, nullptr, zp, "u8_stem", 4), "u8");
  net.mark_output(qconv(net, q, 8, 3, 1, 1, 2, s, nullptr, nullptr, "grouped", 5), "grouped");
  const Network nhwc = expect_pass_keeps_results(
      net,
      {TestTensor::random(DataType::kF32, {2, 8, 9, 9}, 6, -6.0f, 6.0f),
       TestTensor::random(DataType::kF32, {2, 3, 7, 7}, 7, -6.0f, 6.0f)},
      "quantized convolutions");
  int nhwc_qconvs = 0, nchw_qconvs = 0;
  for (const Layer* l : nhwc.layers()) {
    if (l->kind() != LayerKind::kQuantizedConvolution) continue;
    const auto& p = l->params_as<QuantizedConvolutionParams>();
    (p.channels_last ? nhwc_qconvs : nchw_qconvs) += 1;
    EXPECT_EQ(p.channels_last, p.groups == 1) << l->describe();
  }
  EXPECT_EQ(nhwc_qconvs, 4);
  EXPECT_EQ(nchw_qconvs, 1);
}

TEST(ChannelsLastPass, QuantizedConvolutionResidualMovesWithItsOutput) {
  // int8 3x3 with an f32 output + a residual (ResNet's shortcut: another int8 convolution
  // of the same input, 1x1), then relu: the residual is read in the output's NHWC layout, so the
  // region has one entry (x) and one exit (y), and the results are the NCHW network's.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 8, 9, 9});
  Tensor* s = net.add_constant(Weights::from_vector(DataType::kF32, {1},
                                                    std::vector<float>{0.05f}), "s")->output();
  Tensor* q = net.add_quantize(x, s, nullptr, QuantizeParams{}, "q")->output();
  Tensor* shortcut = qconv(net, q, 16, 1, 1, 0, 1, s, nullptr, nullptr, "shortcut", 11);
  Tensor* y = qconv(net, q, 16, 3, 1, 1, 1, s, nullptr, nullptr, "main", 12, shortcut);
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 8, 9, 9}, 13, -6.0f, 6.0f)},
      "quantized convolution with a residual");
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 2);  // in at x, out at y
  for (const Layer* l : nhwc.layers()) {
    if (l->kind() == LayerKind::kQuantizedConvolution) {
      EXPECT_TRUE(l->params_as<QuantizedConvolutionParams>().channels_last) << l->describe();
    }
  }
}

TEST(ChannelsLastPass, TransposedInputEntersWithoutATranspose) {
  // A model that takes NHWC and permutes to NCHW itself: the region reads the input directly.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 6, 6, 3});
  Tensor* xc = net.add_transpose(x, {0, 3, 1, 2}, "to_nchw")->output();
  Tensor* y = conv_bn(net, xc, 4, 3, conv_params(1, 1), true, "conv", 1);
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 6, 6, 3}, 2)}, "transposed input");
  EXPECT_EQ(count_kind(nhwc, LayerKind::kShuffle), 1);  // only the exit
}

/// A layer norm over the last dim (C of an NHWC view), with a constant scale and bias.
Tensor* norm_last_dim(Network& net, Tensor* x, const std::string& name, uint32_t seed) {
  const int64_t c = x->shape()[3].constant();
  NormalizationParams p;
  p.axis = 3;
  return net.add_normalization(x, constant(net, {c}, seed, name + "_s"),
                               constant(net, {c}, seed + 1, name + "_b"), p, name)
      ->output();
}

/// ConvNeXt's block as torchvision writes it: depthwise conv (NCHW) -> permute to NHWC ->
/// layer norm -> linear -> GELU -> linear -> permute back -> * layer scale [C, 1, 1] -> + input.
Tensor* convnext_block(Network& net, Tensor* x, const std::string& name, uint32_t seed) {
  const int64_t c = x->shape()[1].constant();
  Tensor* h = net.add_convolution(x, constant(net, {c, 1, 3, 3}, seed, name + "_dw"),
                                  constant(net, {c}, seed + 1, name + "_dwb"),
                                  conv_params(1, 1, 1, c), name + "_dwconv")
                  ->output();
  h = net.add_transpose(h, {0, 2, 3, 1}, name + "_to_nhwc")->output();
  h = norm_last_dim(net, h, name + "_ln", seed + 2);
  h = net.add_matrix_multiply(h, false, constant(net, {c, 2 * c}, seed + 4, name + "_w1"), false,
                              name + "_fc1")
          ->output();
  h = net.add_activation(h, ActivationType::kGeluErf, 0, 0, name + "_gelu")->output();
  h = net.add_matrix_multiply(h, false, constant(net, {2 * c, c}, seed + 5, name + "_w2"), false,
                              name + "_fc2")
          ->output();
  h = net.add_transpose(h, {0, 3, 1, 2}, name + "_to_nchw")->output();
  h = net.add_elementwise(h, constant(net, {c, 1, 1}, seed + 6, name + "_gamma"),
                          ElementWiseOp::kProd, name + "_scale")
          ->output();
  return net.add_elementwise(h, x, ElementWiseOp::kSum, name + "_add")->output();
}

TEST(ChannelsLastPass, ConvNextBlocksStayNhwcThroughTheirOwnPermutes) {
  // stem conv -> LayerNorm2d (permute, norm, permute) -> two blocks -> conv: the model's four
  // permutes per block cancel against the region's exits and entries; one transpose in at x,
  // one out at y.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3, 8, 8});
  Tensor* y = net.add_convolution(x, constant(net, {8, 3, 2, 2}, 1, "stem_w"),
                                  constant(net, {8}, 2, "stem_b"), conv_params(2, 0), "stem")
                  ->output();
  y = net.add_transpose(y, {0, 2, 3, 1}, "stem_to_nhwc")->output();
  y = norm_last_dim(net, y, "stem_ln", 3);
  y = net.add_transpose(y, {0, 3, 1, 2}, "stem_to_nchw")->output();
  y = convnext_block(net, y, "b1", 10);
  y = convnext_block(net, y, "b2", 20);
  y = net.add_convolution(y, constant(net, {5, 8, 1, 1}, 30, "head_w"), nullptr, conv_params(),
                          "head")
          ->output();
  net.mark_output(y, "y");
  const Network nhwc = expect_pass_keeps_results(
      net, {TestTensor::random(DataType::kF32, {2, 3, 8, 8}, 4)}, "convnext blocks");
  int transposes = 0;
  for (const Layer* l : nhwc.layers()) transposes += is_transpose(l) ? 1 : 0;
  EXPECT_EQ(transposes, 2);
  EXPECT_EQ(count_kind(nhwc, LayerKind::kElementWise), 4);  // both scales and adds, in NHWC
}

TEST(ChannelsLastPass, ModelPermutesThatWouldAddTransposesStayOutside) {
  // A pointwise layer reading a permute to NCHW and a plain NCHW input does not join: the
  // input would need a transpose in. A permute to NHWC that is a network output is the
  // region's tensor under the output's name.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 4, 5, 5});
  Tensor* other = net.add_input("other", DataType::kF32, {2, 4, 5, 5});
  Tensor* h = net.add_convolution(x, constant(net, {4, 4, 3, 3}, 1, "w"), nullptr,
                                  conv_params(1, 1), "conv")
                  ->output();
  Tensor* t = net.add_transpose(h, {0, 2, 3, 1}, "to_nhwc")->output();
  net.mark_output(t, "nhwc_out");
  Tensor* m = net.add_unary(t, UnaryOp::kAbs, "abs")->output();
  Tensor* back = net.add_transpose(m, {0, 3, 1, 2}, "to_nchw")->output();
  net.mark_output(net.add_elementwise(back, other, ElementWiseOp::kSum, "add")->output(), "y");
  const Network nhwc = expect_pass_keeps_results(
      net,
      {TestTensor::random(DataType::kF32, {2, 4, 5, 5}, 2),
       TestTensor::random(DataType::kF32, {2, 4, 5, 5}, 3)},
      "permutes that stay");
  ASSERT_NE(nhwc.find_layer("add"), nullptr) << "the add stays NCHW";
  ASSERT_NE(nhwc.find_tensor("nhwc_out"), nullptr);
  int transposes = 0;
  for (const Layer* l : nhwc.layers()) transposes += is_transpose(l) ? 1 : 0;
  EXPECT_EQ(transposes, 2);  // x in, and the model's own to_nchw before the add
}

TEST(ChannelsLastPass, BuilderRunsItOnRequest) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {1, 3, 6, 6});
  net.mark_output(conv_bn(net, x, 4, 3, conv_params(1, 1), true, "conv", 1), "y");
  // The default (kAuto, as kHalf) and kHalf skip the CPU back end.
  for (const ChannelsLast mode : {ChannelsLast::kAuto, ChannelsLast::kHalf}) {
    BuilderConfig config;
    config.channels_last = mode;
    BuildReport report;
    Builder(config).build(net, &report);
    bool logged = false;
    for (const std::string& line : report.pass_log) {
      if (line.rfind("channels_last", 0) == 0) {
        logged = true;
        EXPECT_NE(line.find("skipped"), std::string::npos) << line;
      }
    }
    EXPECT_TRUE(logged);
  }
  // For CUDA, only f16/bf16 convolutions move: an f32 network is left alone.
  for (const DataType dt : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    Network typed;
    Tensor* xt = typed.add_input("x", dt, {1, 3, 6, 6});
    ConvolutionParams p = conv_params(1, 1);
    p.epilogue.fused_activation = true;  // as fuse_epilogues leaves it
    Tensor* w = typed.add_constant(Weights::zeros(dt, {4, 3, 3, 3}), "w")->output();
    typed.mark_output(typed.add_convolution(xt, w, nullptr, p, "conv")->output(), "y");
    BuildState s;
    s.config.backend = "cuda";
    s.plan.network = typed.clone();
    const bool half = dt != DataType::kF32;
    const std::string expected =
        half ? "channels_last: 1 convolutions" : "channels_last: 0 convolutions";
    // The default (kAuto) and kHalf move exactly the f16/bf16 convolution.
    for (const ChannelsLast mode : {ChannelsLast::kAuto, ChannelsLast::kHalf}) {
      s.plan.network = typed.clone();
      s.log.clear();
      s.config.channels_last = mode;
      pass_channels_last(s);
      ASSERT_EQ(s.log.size(), 1u);
      EXPECT_EQ(s.log[0].rfind(expected, 0), 0u) << s.log[0];
      for (const Layer* l : s.plan.network.layers()) {
        if (l->kind() == LayerKind::kConvolution) {
          EXPECT_EQ(l->params_as<ConvolutionParams>().channels_last, half) << dtype_name(dt);
        }
      }
    }
    // Forced off, nothing moves; forced on, f32 moves too, on any back end.
    s.plan.network = typed.clone();
    s.config.channels_last = ChannelsLast::kOff;
    pass_channels_last(s);
    EXPECT_EQ(s.log.back(), "channels_last: off");
    s.config.backend = "cpu";
    s.config.channels_last = ChannelsLast::kOn;
    pass_channels_last(s);
    EXPECT_EQ(s.log.back().rfind("channels_last: 1 convolutions", 0), 0u) << s.log.back();
  }
  // Deconvolution and 1-d convolutions stay NCHW.
  Network other;
  Tensor* a = other.add_input("a", DataType::kF32, {1, 4, 5, 5});
  DeconvolutionParams dp;
  dp.stride = {2, 2};
  dp.padding_begin = dp.padding_end = {0, 0};
  dp.dilation = {1, 1};
  dp.output_padding = {0, 0};
  other.mark_output(
      other.add_deconvolution(a, constant(other, {4, 2, 2, 2}, 1, "dw"), nullptr, dp, "deconv")
          ->output(),
      "d");
  Tensor* s = other.add_input("s", DataType::kF32, {1, 3, 9});
  ConvolutionParams p1;
  p1.stride = p1.dilation = {1};
  p1.padding_begin = p1.padding_end = {0};
  other.mark_output(
      other.add_convolution(s, constant(other, {2, 3, 3}, 2, "w1d"), nullptr, p1, "conv1d")
          ->output(),
      "c");
  EXPECT_EQ(rewrite_channels_last(other, false).rfind("0 convolutions", 0), 0u);
  EXPECT_EQ(count_kind(other, LayerKind::kShuffle), 0);
}

}  // namespace
// ---------------------------------------------------------------- pad_conv_channels

/// A back end that wants convolution inputs in multiples of 8 channels for f16 (as CUDA does),
/// so the pass runs on any build.
class EightChannelBackend final : public Backend {
 public:
  std::string name() const override { return "eight"; }
  int64_t conv_channel_multiple(DataType dtype) const override {
    return dtype == DataType::kF16 ? 8 : 1;
  }
  std::unique_ptr<BackendContext> create_context(const Engine&) const override { return nullptr; }
};

TEST(PadConvChannels, ThreeChannelStemReadsEightChannelsWithTheSameResult) {
  // An f16 image stem (C = 3, 7x7 stride 2 with bias, relu and a residual) and a second
  // convolution with C = 8; after channels_last only the stem is padded: its input through a
  // Padding of the channel dim to 8 (which takes over the image's NCHW -> NHWC transpose), its
  // KRSC weight with 5 zero channels. The sums gain only
  // zero products, so both networks give the same values on the CPU reference.
  const DataType t = DataType::kF16;
  Network net;
  Tensor* x = net.add_input("x", t, {2, 3, 16, 16});
  Tensor* r = net.add_input("r", t, {2, 8, 8, 8});
  ConvolutionParams p = conv_params(2, 3);
  p.epilogue.fused_activation = true;
  const TestTensor w = TestTensor::random(t, {8, 3, 7, 7}, 11, -0.3f, 0.3f);
  const TestTensor b = TestTensor::random(t, {8}, 12);
  Tensor* y = net.add_layer(p,
                            {x, net.add_constant(Weights::copy(t, {8, 3, 7, 7}, w.bytes.data()))
                                    ->output(),
                             net.add_constant(Weights::copy(t, {8}, b.bytes.data()))->output(), r},
                            "stem")
                  ->output();
  const TestTensor w2 = TestTensor::random(t, {4, 8, 1, 1}, 13);
  y = net.add_convolution(y, net.add_constant(Weights::copy(t, {4, 8, 1, 1}, w2.bytes.data()))
                                 ->output(),
                          nullptr, conv_params(), "conv2")
          ->output();
  net.mark_output(y, "y");
  Network nhwc = net.clone();
  rewrite_channels_last(nhwc, true);
  Network padded = nhwc.clone();
  setenv("EMBER_SPACE_TO_DEPTH", "0", 1);  // the channel padding alone (blocks: the next test)
  const PadConvCounts n = pad_conv_channels(padded, EightChannelBackend(), 0);
  unsetenv("EMBER_SPACE_TO_DEPTH");
  EXPECT_EQ(n.padded, 1);
  EXPECT_EQ(n.as_blocks, 0);
  int convs = 0;
  for (const Layer* l : padded.layers()) {
    if (l->kind() != LayerKind::kConvolution) continue;
    ++convs;
    const Tensor* in = l->input(0);
    EXPECT_EQ(in->shape()[3].constant() % 8, 0) << l->describe();
    if (l->input(1)->shape()[1].constant() == 7) {  // the stem: [8, 7, 7, 8]
      ASSERT_NE(in->producer(), nullptr);
      ASSERT_EQ(in->producer()->kind(), LayerKind::kPadding) << l->describe();
      // The image's entry transpose is folded into the Padding, which reads x itself.
      EXPECT_EQ(in->producer()->input(0)->name(), "x");
      EXPECT_EQ(in->producer()->params_as<PaddingParams>().input_permutation,
                (std::vector<int64_t>{0, 2, 3, 1}));
      const Weights* wp = constant_of(l->input(1));
      ASSERT_NE(wp, nullptr);
      EXPECT_EQ(wp->dims(), (std::vector<int64_t>{8, 7, 7, 8}));
      const std::vector<float> v = to_floats(*wp);
      for (size_t i = 0; i < v.size(); ++i) {
        if (i % 8 >= 3) EXPECT_EQ(v[i], 0.0f) << "padded weight channel at " << i;
      }
    }
  }
  EXPECT_EQ(convs, 2);
  EXPECT_EQ(count_kind(padded, LayerKind::kShuffle), count_kind(nhwc, LayerKind::kShuffle) - 1);
  const std::vector<TestTensor> in{TestTensor::random(t, {2, 3, 16, 16}, 14),
                                   TestTensor::random(t, {2, 8, 8, 8}, 15)};
  const auto expected = test::run_network_direct(nhwc, in);
  const auto actual = test::run_network(padded, in);
  ASSERT_EQ(actual.size(), 1u);
  EXPECT_EQ(actual[0].dims, expected[0].dims);
  test::expect_close(actual[0], expected[0].to_floats(), t, "padded stem");

  // Left alone: f32 (the multiple is 1), grouped layers, a back end that pads nothing.
  Network f32;
  Tensor* xf = f32.add_input("x", DataType::kF32, {1, 3, 8, 8});
  f32.mark_output(f32.add_convolution(xf, constant(f32, {4, 3, 3, 3}, 1, "w"), nullptr,
                                      conv_params(1, 1), "c")
                      ->output(),
                  "y");
  rewrite_channels_last(f32, false);
  EXPECT_EQ(pad_conv_channels(f32, EightChannelBackend(), 0).padded, 0);
  Network grouped;
  Tensor* xg = grouped.add_input("x", t, {1, 6, 8, 8});
  grouped.mark_output(
      grouped.add_convolution(xg, grouped.add_constant(Weights::zeros(t, {6, 3, 3, 3}))->output(),
                              nullptr, conv_params(1, 1, 1, 2), "g")
          ->output(),
      "y");
  rewrite_channels_last(grouped, true);
  EXPECT_EQ(pad_conv_channels(grouped, EightChannelBackend(), 0).padded, 0);
  Network wide;  // C = 12: wider than the multiple, left alone
  Tensor* xw = wide.add_input("x", t, {1, 12, 8, 8});
  wide.mark_output(
      wide.add_convolution(xw, wide.add_constant(Weights::zeros(t, {4, 12, 3, 3}))->output(),
                           nullptr, conv_params(1, 1), "c")
          ->output(),
      "y");
  rewrite_channels_last(wide, true);
  EXPECT_EQ(pad_conv_channels(wide, EightChannelBackend(), 0).padded, 0);
  Network cpu = nhwc.clone();
  EXPECT_EQ(pad_conv_channels(cpu, *find_backend("cpu"), 0).padded, 0);
  if (const Backend* cuda = find_backend("cuda")) {
    EXPECT_EQ(cuda->conv_channel_multiple(DataType::kF16), 8);
    EXPECT_EQ(cuda->conv_channel_multiple(DataType::kBF16), 8);
    EXPECT_EQ(cuda->conv_channel_multiple(DataType::kF32), 1);
  }
}

TEST(PadConvChannels, StrideTwoStemsBecomeStrideOneLayersOverTwoByTwoBlocks) {
  // Space-to-depth: a stride-2 stem that alone reads its image becomes a Padding that views the
  // image as 2x2 blocks (through the NCHW entry transpose, or from NHWC), a view merging each
  // block's 2 x 2 x C' values into channels, and a stride-1 convolution over blocks with no
  // padding. Odd paddings shift the taps by one; every geometry gives the unpadded layer's
  // values (bias, relu and a residual riding along).
  struct Case {
    int64_t c, k, pad, h, w;
    bool nhwc_input;  // an NHWC network input instead of channels_last's transpose of NCHW
    int64_t taps, cb;
  };
  const DataType t = DataType::kF16;
  for (const Case& g : {Case{3, 7, 3, 16, 16, false, 4, 4}, Case{3, 7, 3, 12, 10, true, 4, 4},
                        Case{1, 5, 2, 10, 14, false, 3, 2}, Case{4, 3, 1, 8, 8, false, 2, 4},
                        Case{2, 4, 0, 8, 12, false, 2, 2}, Case{3, 2, 0, 6, 6, true, 1, 4}}) {
    const std::string what = "C " + std::to_string(g.c) + ", " + std::to_string(g.k) + "x" +
                             std::to_string(g.k) + " pad " + std::to_string(g.pad) + " on " +
                             std::to_string(g.h) + "x" + std::to_string(g.w) +
                             (g.nhwc_input ? " (NHWC input)" : "");
    const int64_t oh = (g.h + 2 * g.pad - g.k) / 2 + 1, ow = (g.w + 2 * g.pad - g.k) / 2 + 1;
    Network net;
    ConvolutionParams p = conv_params(2, g.pad);
    p.epilogue.fused_activation = true;
    const TestTensor w = TestTensor::random(t, {8, g.c, g.k, g.k}, 31, -0.3f, 0.3f);
    const TestTensor b = TestTensor::random(t, {8}, 32);
    std::vector<TestTensor> in;
    Tensor* x = nullptr;
    Tensor* wt = nullptr;
    if (g.nhwc_input) {  // build the NHWC layer directly: KRSC weight, NHWC residual
      p.channels_last = true;
      x = net.add_input("x", t, {2, g.h, g.w, g.c});
      std::vector<uint8_t> krsc(w.bytes.size());
      for (int64_t k = 0; k < 8; ++k)
        for (int64_t c = 0; c < g.c; ++c)
          for (int64_t r = 0; r < g.k * g.k; ++r)
            std::memcpy(&krsc[static_cast<size_t>(((k * g.k * g.k + r) * g.c + c) * 2)],
                        &w.bytes[static_cast<size_t>(((k * g.c + c) * g.k * g.k + r) * 2)], 2);
      wt = net.add_constant(Weights::copy(t, {8, g.k, g.k, g.c}, krsc.data()))->output();
      in = {TestTensor::random(t, {2, g.h, g.w, g.c}, 33), TestTensor::random(t, {2, oh, ow, 8}, 34)};
    } else {
      x = net.add_input("x", t, {2, g.c, g.h, g.w});
      wt = net.add_constant(Weights::copy(t, {8, g.c, g.k, g.k}, w.bytes.data()))->output();
      in = {TestTensor::random(t, {2, g.c, g.h, g.w}, 33), TestTensor::random(t, {2, 8, oh, ow}, 34)};
    }
    Tensor* r = net.add_input("r", t, Shape(in[1].dims.begin(), in[1].dims.end()));
    Tensor* bias = net.add_constant(Weights::copy(t, {8}, b.bytes.data()))->output();
    net.mark_output(net.add_layer(p, {x, wt, bias, r}, "stem")->output(), "y");
    Network nhwc = net.clone();
    if (!g.nhwc_input) rewrite_channels_last(nhwc, true);
    Network blocks = nhwc.clone();
    const PadConvCounts n = pad_conv_channels(blocks, EightChannelBackend(), 0);
    EXPECT_EQ(n.padded, 1) << what;
    EXPECT_EQ(n.as_blocks, 1) << what;
    const Layer* conv = nullptr;
    for (const Layer* l : blocks.layers()) {
      if (l->kind() == LayerKind::kConvolution) conv = l;
    }
    ASSERT_NE(conv, nullptr) << what;
    const auto& cp = conv->params_as<ConvolutionParams>();
    EXPECT_EQ(cp.stride, (std::vector<int64_t>{1, 1})) << what;
    EXPECT_EQ(cp.padding_begin, (std::vector<int64_t>{0, 0})) << what;
    EXPECT_EQ(cp.padding_end, (std::vector<int64_t>{0, 0})) << what;
    EXPECT_EQ(constant_of(conv->input(1))->dims(),
              (std::vector<int64_t>{8, g.taps, g.taps, 4 * g.cb}))
        << what;
    const Layer* view = conv->input(0)->producer();
    ASSERT_NE(view, nullptr);
    ASSERT_EQ(view->kind(), LayerKind::kShuffle) << what;
    const Layer* pad = view->input(0)->producer();
    ASSERT_NE(pad, nullptr);
    ASSERT_EQ(pad->kind(), LayerKind::kPadding) << what;
    EXPECT_EQ(pad->input(0)->name(), "x") << what << ": the Padding reads the image itself";
    EXPECT_EQ(pad->params_as<PaddingParams>().input_permutation,
              (g.nhwc_input ? std::vector<int64_t>{0, 1, 3, 2, 4, 5}
                            : std::vector<int64_t>{0, 2, 4, 3, 5, 1}))
        << what;
    // The block view is new; the image's entry transpose (if any) is gone.
    EXPECT_EQ(count_kind(blocks, LayerKind::kShuffle),
              count_kind(nhwc, LayerKind::kShuffle) + (g.nhwc_input ? 1 : 0))
        << what;
    const auto expected = test::run_network_direct(nhwc, in);
    const auto actual = test::run_network(blocks, in);
    ASSERT_EQ(actual.size(), 1u);
    EXPECT_EQ(actual[0].dims, expected[0].dims) << what;
    test::expect_close(actual[0], expected[0].to_floats(), t, what);
  }

  // Left to the channel padding: an odd H, C = 5 (4C above twice the multiple), stride 1,
  // dilation 2, an image that two layers read, and EMBER_SPACE_TO_DEPTH=0.
  const auto blocks_of = [&](int64_t c, int64_t h, ConvolutionParams p, int readers) {
    Network net;
    Tensor* x = net.add_input("x", t, {1, c, h, 8});
    for (int i = 0; i < readers; ++i) {
      net.mark_output(net.add_convolution(x, net.add_constant(Weights::zeros(t, {4, c, 3, 3}))
                                                 ->output(),
                                          nullptr, p, "c" + std::to_string(i))
                          ->output(),
                      "y" + std::to_string(i));
    }
    rewrite_channels_last(net, true);
    const PadConvCounts n = pad_conv_channels(net, EightChannelBackend(), 0);
    EXPECT_EQ(n.padded, c < 8 ? readers : 0);
    return n.as_blocks;
  };
  EXPECT_EQ(blocks_of(3, 8, conv_params(2, 1), 1), 1);
  EXPECT_EQ(blocks_of(3, 9, conv_params(2, 1), 1), 0) << "odd H";
  EXPECT_EQ(blocks_of(5, 8, conv_params(2, 1), 1), 0) << "C = 5";
  EXPECT_EQ(blocks_of(3, 8, conv_params(1, 1), 1), 0) << "stride 1";
  EXPECT_EQ(blocks_of(3, 8, conv_params(2, 2, 2), 1), 0) << "dilation 2";
  EXPECT_EQ(blocks_of(3, 8, conv_params(2, 1), 2), 0) << "two readers";
  setenv("EMBER_SPACE_TO_DEPTH", "0", 1);
  EXPECT_EQ(blocks_of(3, 8, conv_params(2, 1), 1), 0) << "switched off";
  unsetenv("EMBER_SPACE_TO_DEPTH");
}

TEST(PadConvChannels, ConvolutionsReadingOneImageShareItsPadding) {
  // Two convolutions read the image: one Padding serves both. The image's entry transpose, which
  // both read, stays (the fold needs a sole reader), and the Padding reads its output.
  const DataType t = DataType::kF16;
  Network net;
  Tensor* x = net.add_input("x", t, {1, 3, 8, 8});
  for (const std::string name : {"a", "b"}) {
    const TestTensor w = TestTensor::random(t, {4, 3, 3, 3}, name == "a" ? 21 : 22);
    net.mark_output(
        net.add_convolution(x, net.add_constant(Weights::copy(t, {4, 3, 3, 3}, w.bytes.data()))
                                   ->output(),
                            nullptr, conv_params(1, 1), name)
            ->output(),
        name);
  }
  Network nhwc = net.clone();
  rewrite_channels_last(nhwc, true);
  Network padded = nhwc.clone();
  EXPECT_EQ(pad_conv_channels(padded, EightChannelBackend(), 0).padded, 2);
  EXPECT_EQ(count_kind(padded, LayerKind::kPadding), 1);
  const std::vector<TestTensor> in{TestTensor::random(t, {1, 3, 8, 8}, 23)};
  const auto expected = test::run_network_direct(nhwc, in);
  const auto actual = test::run_network(padded, in);
  ASSERT_EQ(actual.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    test::expect_close(actual[i], expected[i].to_floats(), t, "shared padding " + std::to_string(i));
  }
}

TEST(PadConvChannels, LightLayersStayUnpadded) {
  // R * S * K below kPadConvMinWorkPerPixel: MobileNetV3's stem (3x3, K = 16) stays as it is,
  // ResNet's (7x7, K = 64) and ConvNeXt's (4x4, K = 96) are padded.
  const DataType t = DataType::kF16;
  const auto padded = [&](int64_t k, int64_t r) {
    Network net;
    Tensor* x = net.add_input("x", t, {1, 3, 16, 16});
    net.mark_output(
        net.add_convolution(x, net.add_constant(Weights::zeros(t, {k, 3, r, r}))->output(),
                            nullptr, conv_params(2, 0), "stem")
            ->output(),
        "y");
    rewrite_channels_last(net, true);
    return pad_conv_channels(net, EightChannelBackend()).padded;
  };
  EXPECT_EQ(padded(16, 3), 0) << "MobileNetV3";
  EXPECT_EQ(padded(32, 3), 0) << "EfficientNet-B0";
  EXPECT_EQ(padded(64, 7), 1) << "ResNet";
  EXPECT_EQ(padded(96, 4), 1) << "ConvNeXt";
  EXPECT_EQ(padded(113, 3), 0) << "1017, just below the threshold";
  EXPECT_EQ(padded(114, 3), 1) << "1026, just above";
}

TEST(PadConvChannels, BuilderPadsOnlyForABackEndThatAsksAndCanBeSwitchedOff) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF16, {1, 3, 8, 8});
  net.mark_output(net.add_convolution(x, net.add_constant(Weights::zeros(DataType::kF16,
                                                                         {128, 3, 3, 3}))
                                             ->output(),
                                      nullptr, conv_params(1, 1), "c")
                      ->output(),
                  "y");
  auto log_of = [&](const std::string& backend) {
    BuildState s;
    s.config.backend = backend;
    s.plan.network = net.clone();
    s.config.channels_last = ChannelsLast::kOn;
    pass_channels_last(s);
    pass_pad_conv_channels(s);
    return s.log.back();
  };
  EXPECT_EQ(log_of("cpu").rfind("pad_conv_channels: 0 convolutions", 0), 0u)
      << "the CPU back end pads nothing: " << log_of("cpu");
  if (find_backend("cuda") != nullptr) {
    EXPECT_EQ(log_of("cuda").rfind("pad_conv_channels: 1 convolutions", 0), 0u) << log_of("cuda");
  }
  setenv("EMBER_PAD_CONV_CHANNELS", "0", 1);
  EXPECT_EQ(log_of("cpu"), "pad_conv_channels: off (EMBER_PAD_CONV_CHANNELS=0)");
  unsetenv("EMBER_PAD_CONV_CHANNELS");
}

}  // namespace ember::engine
