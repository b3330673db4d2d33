// CUDA conformance of channels_last (NHWC) Convolution and Pooling, and of the builder's
// channels_last pass on a ResNet-style network, against the CPU back end with the CPU
// tolerances. Skips without a GPU.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "builder/passes/passes.h"
#include "backends/cuda/linear_kernels.h"
#include "ember/engine/timing_cache.h"
#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};

std::string label(const std::string& what, DataType t) { return what + " " + dtype_name(t); }

Shape shape_of(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

ConvolutionParams nhwc_conv(int64_t stride, int64_t pad, int64_t dilation, int64_t groups) {
  ConvolutionParams p;
  p.stride = {stride, stride};
  p.padding_begin = p.padding_end = {pad, pad};
  p.dilation = {dilation, dilation};
  p.groups = groups;
  p.channels_last = true;
  return p;
}

PoolingParams nhwc_pool(PoolingType type, int64_t window, int64_t stride, int64_t pad,
                        int64_t dilation = 1, bool ceil_mode = false,
                        bool count_include_pad = true) {
  PoolingParams p;
  p.type = type;
  p.window = {window, window};
  p.stride = {stride, stride};
  p.padding_begin = p.padding_end = {pad, pad};
  p.dilation = {dilation, dilation};
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  p.channels_last = true;
  return p;
}

/// x [N, H, W, C], w [K, R, S, C/groups] (both inputs), optional bias.
void check_nhwc_conv(DataType t, std::vector<int64_t> x, std::vector<int64_t> w,
                     const ConvolutionParams& p, bool bias, uint32_t seed) {
  Network net;
  Tensor* xt = net.add_input("x", t, shape_of(x));
  Tensor* wt = net.add_input("w", t, shape_of(w));
  Tensor* bt = bias ? net.add_input("b", t, shape_of({w[0]})) : nullptr;
  net.mark_output(net.add_convolution(xt, wt, bt, p, "conv")->output(), "out");
  std::vector<TestTensor> in = {TestTensor::random(t, x, seed),
                                TestTensor::random(t, w, seed + 1, -0.5f, 0.5f)};
  if (bias) in.push_back(TestTensor::random(t, {w[0]}, seed + 2));
  test::check_cuda_matches_cpu(
      net, in, label("nhwc conv x" + dims_to_string(x) + " w" + dims_to_string(w), t));
}

TEST(CudaChannelsLast, Convolution) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    check_nhwc_conv(t, {2, 9, 9, 8}, {16, 3, 3, 8}, nhwc_conv(1, 1, 1, 1), true, 1);    // 3x3
    check_nhwc_conv(t, {2, 10, 10, 8}, {8, 3, 3, 8}, nhwc_conv(2, 1, 1, 1), false, 2);  // strided
    check_nhwc_conv(t, {1, 11, 11, 16}, {8, 3, 3, 16}, nhwc_conv(1, 2, 2, 1), true, 3); // dilated
    check_nhwc_conv(t, {2, 8, 8, 16}, {16, 3, 3, 8}, nhwc_conv(1, 1, 1, 2), true, 4);   // grouped
    check_nhwc_conv(t, {2, 8, 8, 16}, {16, 3, 3, 1}, nhwc_conv(2, 1, 1, 16), true, 5);  // depthwise
    check_nhwc_conv(t, {4, 7, 7, 32}, {16, 1, 1, 32}, nhwc_conv(1, 0, 1, 1), true, 6);  // 1x1
    check_nhwc_conv(t, {1, 14, 14, 3}, {8, 7, 7, 3}, nhwc_conv(2, 3, 1, 1), true, 7);   // stem, C=3
  }
}

TEST(CudaChannelsLast, ConvolutionEpilogue) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    for (int mask = 0; mask < 8; ++mask) {
      const bool bias = mask & 1, residual = mask & 2, act = mask & 4;
      Network net;
      Tensor* x = net.add_input("x", t, {2, 7, 7, 8});
      Tensor* w = net.add_input("w", t, {8, 3, 3, 8});
      std::vector<TestTensor> inputs{TestTensor::random(t, {2, 7, 7, 8}, 50),
                                     TestTensor::random(t, {8, 3, 3, 8}, 51, -0.5f, 0.5f)};
      std::vector<Tensor*> ins{x, w, nullptr, nullptr};
      if (bias) {
        ins[2] = net.add_input("bias", t, {8});
        inputs.push_back(TestTensor::random(t, {8}, 52));
      }
      if (residual) {
        ins[3] = net.add_input("res", t, {2, 4, 4, 8});
        inputs.push_back(TestTensor::random(t, {2, 4, 4, 8}, 53));
      }
      ConvolutionParams p = nhwc_conv(2, 1, 1, 1);
      p.epilogue.scale = mask == 5 ? 0.5 : 1.0;  // cuDNN's alpha
      p.epilogue.fused_activation = act;
      p.epilogue.activation = mask == 7 ? ActivationType::kSilu : ActivationType::kRelu;
      net.mark_output(net.add_layer(p, ins, "conv")->output(), "out");
      test::check_cuda_matches_cpu(net, inputs,
                                   label("nhwc conv epilogue mask " + std::to_string(mask), t));
    }
  }
}

TEST(CudaChannelsLast, Pooling) {
  EMBER_SKIP_WITHOUT_CUDA();
  const PoolingType kMax = PoolingType::kMax, kAvg = PoolingType::kAverage;
  const std::vector<std::pair<std::string, PoolingParams>> cases = {
      {"max 3/2/1", nhwc_pool(kMax, 3, 2, 1)},
      {"max dilated", nhwc_pool(kMax, 3, 1, 1, 2)},
      {"max ceil", nhwc_pool(kMax, 2, 2, 0, 1, true)},
      {"avg 3/1/1", nhwc_pool(kAvg, 3, 1, 1)},
      {"avg no pad count", nhwc_pool(kAvg, 3, 2, 1, 1, true, false)},
      {"avg global", nhwc_pool(kAvg, 9, 9, 0)},
  };
  for (DataType t : kFloatTypes) {
    for (const auto& [what, p] : cases) {
      // 16 channels take the 8-channel vectorized max pool for f16/bf16; 6 the generic one.
      for (int64_t c : {6, 16}) {
        Network net;
        Tensor* x = net.add_input("x", t, {2, 9, 9, c});
        net.mark_output(net.add_pooling(x, p, "pool")->output(), "out");
        test::check_cuda_matches_cpu(net, {TestTensor::random(t, {2, 9, 9, c}, 60)},
                                     label("nhwc pool " + what + " C=" + std::to_string(c), t));
      }
    }
  }
  // Global average pools split over blocks (EMBER_PARALLEL_REDUCTIONS=1): 32 channels at
  // 112 x 112 (EfficientNet's first SE), 72 at 28 x 28 over a batch (MobileNetV3's), and a
  // channel count that is not a multiple of the block's 32.
  {
    test::ScopedEnv parallel("EMBER_PARALLEL_REDUCTIONS", "1");
    for (DataType t : kFloatTypes) {
      for (const std::vector<int64_t>& dims : std::vector<std::vector<int64_t>>{
               {1, 112, 112, 32}, {32, 28, 28, 72}, {3, 15, 15, 45}}) {
        Network g;
        Tensor* gx = g.add_input("x", t, shape_of(dims));
        g.mark_output(g.add_pooling(gx, nhwc_pool(kAvg, dims[1], 1, 0), "gap")->output(), "out");
        test::check_cuda_matches_cpu(g, {TestTensor::random(t, dims, 62)},
                                     label("nhwc global avg " + dims_to_string(dims), t));
      }
    }
  }
  Network net;
  Tensor* x = net.add_input("x", DataType::kI32, {2, 5, 5, 3});
  net.mark_output(net.add_pooling(x, nhwc_pool(kMax, 2, 2, 1), "pool")->output(), "out");
  test::check_cuda_matches_cpu(net, {TestTensor::random(DataType::kI32, {2, 5, 5, 3}, 61, -50, 50)},
                               "nhwc max pool i32");
}

/// A depthwise NHWC convolution x [N, H, W, C] with a [C, k, k2, 1] filter and the given
/// epilogue operands, checked against the CPU (both calls: layer by layer, then a graph).
void check_depthwise(DataType t, std::vector<int64_t> x, int64_t k, int64_t k2,
                     ConvolutionParams p, bool bias, bool residual, uint32_t seed,
                     const std::string& what) {
  const int64_t c = x[3];
  p.groups = c;
  Network net;
  Tensor* xt = net.add_input("x", t, shape_of(x));
  Tensor* wt = net.add_input("w", t, shape_of({c, k, k2, 1}));
  std::vector<TestTensor> in = {TestTensor::random(t, x, seed),
                                TestTensor::random(t, {c, k, k2, 1}, seed + 1, -0.5f, 0.5f)};
  std::vector<Tensor*> ins{xt, wt, nullptr, nullptr};
  if (bias) {
    ins[2] = net.add_input("b", t, shape_of({c}));
    in.push_back(TestTensor::random(t, {c}, seed + 2));
  }
  Tensor* y = net.add_layer(p, ins, "dw")->output();
  if (residual) {
    // The output's shape, from shape inference, for the residual input.
    std::vector<int64_t> out;
    for (const DimExpr& d : y->shape()) out.push_back(d.constant());
    Network with;
    Tensor* xr = with.add_input("x", t, shape_of(x));
    Tensor* wr = with.add_input("w", t, shape_of({c, k, k2, 1}));
    Tensor* br = bias ? with.add_input("b", t, shape_of({c})) : nullptr;
    Tensor* rr = with.add_input("res", t, shape_of(out));
    in.push_back(TestTensor::random(t, out, seed + 3));
    with.mark_output(with.add_layer(p, {xr, wr, br, rr}, "dw")->output(), "out");
    test::check_cuda_matches_cpu(with, in, label(what, t));
    return;
  }
  net.mark_output(y, "out");
  test::check_cuda_matches_cpu(net, in, label(what, t));
}

TEST(CudaChannelsLast, DepthwiseKernel) {
  // The direct depthwise kernel (EMBER_DEPTHWISE_CONV=force) on every path it has: the tiled
  // kernels (3/5/7, stride 1/2) and the generic one (dilation, a non-square filter), 4-channel
  // vectors (C % 4 == 0), pairs and single channels,
  // more channels than one block takes (C = 264), padding that clips and that does not.
  EMBER_SKIP_WITHOUT_CUDA();
  test::ScopedEnv force("EMBER_DEPTHWISE_CONV", "force");
  const int64_t launched = cuda::depthwise_conv_launches();
  struct Shape2 {
    int64_t k, k2, stride, pad, dilation;
  };
  const std::vector<Shape2> shapes = {{3, 3, 1, 1, 1}, {3, 3, 2, 1, 1}, {5, 5, 1, 2, 1},
                                      {5, 5, 2, 2, 1}, {7, 7, 1, 3, 1}, {7, 7, 2, 3, 1},
                                      {3, 3, 1, 2, 2}, {3, 5, 1, 1, 1}, {3, 3, 1, 0, 1}};
  for (DataType t : kFloatTypes) {
    for (const Shape2& s : shapes) {
      for (int64_t c : {16, 6, 5, 264}) {
        ConvolutionParams p = nhwc_conv(s.stride, s.pad, s.dilation, 1);
        if (s.k != s.k2) p.padding_begin = p.padding_end = {s.pad, s.pad + 1};
        const std::string what = "depthwise " + std::to_string(s.k) + "x" + std::to_string(s.k2) +
                                 " s" + std::to_string(s.stride) + " p" + std::to_string(s.pad) +
                                 " d" + std::to_string(s.dilation) + " C=" + std::to_string(c);
        check_depthwise(t, {2, 11, 13, c}, s.k, s.k2, p, true, false, 80, what);
      }
    }
    // Images narrower than a tile row's columns, 1 x 1 images under a 7x7 filter, padding
    // wider than the image (outputs that read no pixel at all).
    check_depthwise(t, {1, 1, 1, 8}, 7, 7, nhwc_conv(1, 3, 1, 1), true, false, 86, "depthwise 1x1 image");
    check_depthwise(t, {2, 3, 2, 8}, 5, 5, nhwc_conv(2, 2, 1, 1), true, false, 87, "depthwise 3x2 image");
    check_depthwise(t, {1, 2, 3, 12}, 3, 3, nhwc_conv(1, 4, 1, 1), true, false, 88, "depthwise pad 4");
    // Asymmetric padding (the end pad only shortens the output) and the epilogue: scale,
    // residual, activation.
    ConvolutionParams asym = nhwc_conv(2, 1, 1, 1);
    asym.padding_end = {0, 2};
    check_depthwise(t, {1, 10, 10, 24}, 3, 3, asym, false, false, 90, "depthwise asymmetric pad");
    ConvolutionParams rect = nhwc_conv(1, 1, 1, 1);
    rect.padding_begin = {1, 0};
    rect.padding_end = {2, 3};
    check_depthwise(t, {2, 7, 9, 8}, 3, 5, rect, true, false, 89, "depthwise 3x5 asymmetric pad");
    for (int mask = 0; mask < 8; ++mask) {
      ConvolutionParams p = nhwc_conv(1, 3, 1, 1);
      p.epilogue.scale = mask == 5 ? 0.5 : 1.0;
      p.epilogue.fused_activation = (mask & 4) != 0;
      p.epilogue.activation = mask == 7 ? ActivationType::kSilu : ActivationType::kRelu;
      check_depthwise(t, {2, 9, 9, 32}, 7, 7, p, mask & 1, mask & 2, 91 + mask,
                      "depthwise epilogue mask " + std::to_string(mask));
    }
  }
  // Every case above ran the direct kernel (a miss of depthwise_conv_covers would have passed
  // silently through cuDNN): at least one launch per check, of which there are 3 x 49.
  EXPECT_GE(cuda::depthwise_conv_launches() - launched, 147);
}

TEST(CudaChannelsLast, DepthwiseTimedAgainstCudnn) {
  // EMBER_DEPTHWISE_CONV=timed: the direct kernel and cuDNN are timed on the first call; the
  // winner's choice is in the engine's timing cache under a "depthwise" problem, and the output
  // matches.
  EMBER_SKIP_WITHOUT_CUDA();
  test::ScopedEnv timed("EMBER_DEPTHWISE_CONV", "timed");
  for (DataType t : {DataType::kF16, DataType::kF32}) {
    Network net;
    const std::vector<int64_t> x{4, 28, 28, 96};
    Tensor* xt = net.add_input("x", t, shape_of(x));
    Tensor* wt = net.add_input("w", t, shape_of({96, 7, 7, 1}));
    net.mark_output(net.add_convolution(xt, wt, nullptr, nhwc_conv(1, 3, 1, 96), "dw")->output(),
                    "out");
    const std::vector<TestTensor> in = {TestTensor::random(t, x, 95),
                                        TestTensor::random(t, {96, 7, 7, 1}, 96, -0.5f, 0.5f)};
    test::CudaRunner runner(net, in);
    int depthwise_entries = 0;
    for (const TimingEntry& e : runner.engine().timing_cache().entries()) {
      if (e.problem.rfind("depthwise ", 0) == 0) {
        ++depthwise_entries;
        ASSERT_EQ(e.choice.size(), 1u);
        EXPECT_LE(e.choice[0], 1) << e.problem;
      }
    }
    EXPECT_EQ(depthwise_entries, 1) << dtype_name(t);
    test::expect_matches_cpu(net, in, runner.run(in), label("depthwise timed", t));
    test::expect_matches_cpu(net, in, runner.run(in), label("depthwise timed (CUDA graph)", t));
  }
}

Tensor* constant(Network& net, DataType t, std::vector<int64_t> dims, uint32_t seed,
                 const std::string& name, float lo, float hi) {
  const TestTensor v = TestTensor::random(t, dims, seed, lo, hi);
  return net.add_constant(Weights::copy(t, dims, v.bytes.data()), name)->output();
}

/// conv -> batch norm -> optional relu (NCHW, as the converters emit ResNet).
Tensor* conv_bn(Network& net, Tensor* x, int64_t out_c, int64_t kernel, int64_t stride, bool relu,
                const std::string& name, uint32_t seed) {
  const DataType t = x->dtype();
  const int64_t in_c = x->shape()[1].constant();
  ConvolutionParams p;
  p.stride = {stride, stride};
  p.padding_begin = p.padding_end = {kernel / 2, kernel / 2};
  p.dilation = {1, 1};
  const float bound = 1.0f / static_cast<float>(kernel * kernel * in_c);
  Tensor* y = net.add_convolution(
      x, constant(net, t, {out_c, in_c, kernel, kernel}, seed, name + "_w", -3 * bound, 3 * bound),
      nullptr, p, name)->output();
  y = net.add_elementwise(y, constant(net, t, {1, out_c, 1, 1}, seed + 1, name + "_s", 0.5f, 1.5f),
                          ElementWiseOp::kProd, name + "_bn_scale")->output();
  y = net.add_elementwise(y, constant(net, t, {1, out_c, 1, 1}, seed + 2, name + "_b", -0.5f, 0.5f),
                          ElementWiseOp::kSum, name + "_bn_shift")->output();
  if (relu) y = net.add_activation(y, ActivationType::kRelu, 0, 0, name + "_relu")->output();
  return y;
}

TEST(CudaChannelsLast, ResNetBlockWithThePass) {
  // stem conv -> maxpool -> basic block with a downsampling shortcut -> global average pool ->
  // flatten -> linear, built for cuda at level 3 (fusion + channels_last on) against the CPU
  // reference running the same fused network in NCHW (batch norm folded into the weights in
  // the storage dtype, as the builder does), so the comparison isolates the layout and the
  // stem's zero-padded channels.
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    Network net;
    Tensor* x = net.add_input("x", t, {2, 3, 16, 16});
    Tensor* y = conv_bn(net, x, 32, 7, 2, true, "stem", 1);  // heavy enough to be padded
    PoolingParams mp;
    mp.type = PoolingType::kMax;
    mp.window = {3, 3};
    mp.stride = {2, 2};
    mp.padding_begin = mp.padding_end = {1, 1};
    mp.dilation = {1, 1};
    y = net.add_pooling(y, mp, "maxpool")->output();
    Tensor* h = conv_bn(net, y, 32, 3, 2, true, "c1", 10);
    h = conv_bn(net, h, 32, 3, 1, false, "c2", 20);
    Tensor* shortcut = conv_bn(net, y, 32, 1, 2, false, "down", 30);
    y = net.add_elementwise(h, shortcut, ElementWiseOp::kSum, "add")->output();
    y = net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output();
    PoolingParams gap;
    gap.type = PoolingType::kAverage;
    gap.window = gap.stride = {2, 2};
    gap.padding_begin = gap.padding_end = {0, 0};
    gap.dilation = {1, 1};
    y = net.add_pooling(y, gap, "gap")->output();
    y = net.add_reshape(y, {2, 32}, "flatten")->output();
    y = net.add_matrix_multiply(y, false, constant(net, t, {32, 10}, 40, "fc_w", -0.2f, 0.2f),
                                false, "fc")->output();
    net.mark_output(y, "logits");
    const std::vector<TestTensor> in{TestTensor::random(t, {2, 3, 16, 16}, 41)};
    // kHalf, as the default (kAuto) today, named so the test keeps covering the layout.
    test::CudaRunner runner(net, in, {}, /*optimization_level=*/3, ChannelsLast::kHalf);
    const std::string json = runner.inspect_json();
    EXPECT_NE(json.find("\"channels_last\": true"), std::string::npos) << json;
    EXPECT_EQ(json.find("cuda.host"), std::string::npos) << json;
    // The 3-channel stem reads its input as 2x2 blocks of 16 channels (pad_conv_channels).
    EXPECT_NE(json.find("cuda.Padding"), std::string::npos) << json;
    BuildState fused;
    fused.plan.network = net.clone();
    pass_fuse_epilogues(fused);
    test::expect_matches_cpu(fused.plan.network, in, runner.run(in), label("resnet block", t));
    test::expect_matches_cpu(fused.plan.network, in, runner.run(in),
                             label("resnet block (CUDA graph)", t));
  }
}

TEST(CudaChannelsLast, ImageStemReadsEightPaddedChannels) {
  // ResNet's stem geometry (7x7, stride 2, padding 3, bias and relu folded, C = 3, K = 32) on a 2 x 3 x
  // 40 x 36 image, three ways: as pad_conv_channels builds it by default (space-to-depth: one
  // Padding views the NCHW image as 2x2 blocks, 16 channels, and a 4x4 stride-1 layer reads a
  // view of it), with EMBER_SPACE_TO_DEPTH=0 (the image's NCHW -> NHWC entry becomes a Padding
  // to 8 channels, the 16-byte-word kernel, and the weight gets 5 zero channels), and with
  // EMBER_PAD_CONV_CHANNELS=0 (the transpose and C = 3 stay). Each matches the CPU reference of
  // the unpadded NCHW network, eagerly and in a CUDA graph.
  EMBER_SKIP_WITHOUT_CUDA();
  struct Mode {
    const char* name;
    const char* env;  // switched off while the engine builds
    bool padding;
    int shuffles;  // the output's exit transpose, plus the entry transpose or the block view
  };
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    Network net;
    Tensor* x = net.add_input("x", t, {2, 3, 40, 36});
    net.mark_output(conv_bn(net, x, 32, 7, 2, true, "stem", 51), "y");  // R * S * K 1568
    const std::vector<TestTensor> in{TestTensor::random(t, {2, 3, 40, 36}, 52)};
    BuildState fused;
    fused.plan.network = net.clone();
    pass_fuse_epilogues(fused);
    for (const Mode& m : {Mode{"stem as 2x2 blocks", nullptr, true, 2},
                          Mode{"stem on 8 padded channels", "EMBER_SPACE_TO_DEPTH", true, 1},
                          Mode{"unpadded stem", "EMBER_PAD_CONV_CHANNELS", false, 2}}) {
      if (m.env != nullptr) setenv(m.env, "0", 1);
      test::CudaRunner runner(net, in, {}, /*optimization_level=*/3, ChannelsLast::kHalf);
      if (m.env != nullptr) unsetenv(m.env);
      const std::string json = runner.inspect_json();
      EXPECT_EQ(json.find("cuda.Padding") != std::string::npos, m.padding) << json;
      int shuffles = 0;
      for (size_t at = json.find("cuda.Shuffle"); at != std::string::npos;
           at = json.find("cuda.Shuffle", at + 1)) {
        ++shuffles;
      }
      EXPECT_EQ(shuffles, m.shuffles) << m.name << ": " << json;
      const std::string what = label(m.name, t);
      test::expect_matches_cpu(fused.plan.network, in, runner.run(in), what);
      test::expect_matches_cpu(fused.plan.network, in, runner.run(in), what + " (CUDA graph)");
    }
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
