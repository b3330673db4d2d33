// Whole networks: a ResNet-50-shaped network at 224x224 (BatchNorm folded into convolution
// biases, as the compiler will do) must build, round-trip through a plan and run in seconds on
// the CPU reference back end.
#include <gtest/gtest.h>

#include <cstdlib>

#include <chrono>
#include <cstring>
#include <cmath>
#include <random>

#include "ember/engine/runtime.h"
#include "test_util.h"

namespace ember::engine {
namespace {

class ResNetBuilder {
 public:
  explicit ResNetBuilder(Network& net) : net_(net), gen_(42) {}

  Tensor* conv(Tensor* x, int64_t cin, int64_t cout, int64_t k, int64_t stride, bool relu) {
    const float bound = std::sqrt(2.0f / static_cast<float>(cin * k * k));  // He init: keeps scale
    std::normal_distribution<float> dist(0.0f, bound);
    std::vector<float> w(static_cast<size_t>(cout * cin * k * k)), b(static_cast<size_t>(cout));
    for (float& v : w) v = dist(gen_);
    for (float& v : b) v = 0.01f * dist(gen_);
    Tensor* wt = net_.add_constant(Weights::from_vector(DataType::kF32, {cout, cin, k, k}, w))->output();
    Tensor* bt = net_.add_constant(Weights::from_vector(DataType::kF32, {cout}, b))->output();
    ConvolutionParams p;
    p.stride = {stride, stride};
    p.padding_begin = p.padding_end = {k / 2, k / 2};
    p.dilation = {1, 1};
    Tensor* y = net_.add_convolution(x, wt, bt, p)->output();
    return relu ? net_.add_activation(y, ActivationType::kRelu)->output() : y;
  }

  Tensor* bottleneck(Tensor* x, int64_t cin, int64_t width, int64_t stride) {
    const int64_t cout = width * 4;
    Tensor* y = conv(x, cin, width, 1, 1, true);
    y = conv(y, width, width, 3, stride, true);
    y = conv(y, width, cout, 1, 1, false);
    Tensor* skip = (stride != 1 || cin != cout) ? conv(x, cin, cout, 1, stride, false) : x;
    y = net_.add_elementwise(y, skip, ElementWiseOp::kSum)->output();
    return net_.add_activation(y, ActivationType::kRelu)->output();
  }

  Tensor* resnet50(Tensor* x) {
    Tensor* y = conv(x, 3, 64, 7, 2, true);
    PoolingParams pool;
    pool.window = {3, 3};
    pool.stride = {2, 2};
    pool.padding_begin = pool.padding_end = {1, 1};
    pool.dilation = {1, 1};
    y = net_.add_pooling(y, pool)->output();
    int64_t cin = 64;
    const int64_t blocks[4] = {3, 4, 6, 3}, widths[4] = {64, 128, 256, 512};
    for (int stage = 0; stage < 4; ++stage) {
      for (int64_t i = 0; i < blocks[stage]; ++i) {
        y = bottleneck(y, cin, widths[stage], (i == 0 && stage > 0) ? 2 : 1);
        cin = widths[stage] * 4;
      }
    }
    y = net_.add_reduce(y, ReduceOp::kAvg, {2, 3}, false)->output();  // global average pool
    std::normal_distribution<float> dist(0.0f, 0.02f);
    std::vector<float> w(2048 * 1000);
    for (float& v : w) v = dist(gen_);
    Tensor* fc = net_.add_constant(Weights::from_vector(DataType::kF32, {2048, 1000}, w))->output();
    return net_.add_matrix_multiply(y, false, fc, false, "fc")->output();
  }

 private:
  Network& net_;
  std::mt19937 gen_;
};

TEST(Models, ResNet50At224RunsInSecondsOnCpu) {
  // The reference kernels, plan against direct execution: both then sum in the same order, so
  // the f32 tolerance holds over 50 layers. (oneDNN's convolutions, the default, sum in another
  // order; the per-layer conformance suites check them against the reference.)
  ::setenv("EMBER_CPU_DNNL", "0", 1);
  struct Restore {
    ~Restore() { ::unsetenv("EMBER_CPU_DNNL"); }
  } restore;
  Network net;
  Tensor* x = net.add_input("image", DataType::kF32, {DimExpr::symbol("batch"), 3, 224, 224});
  net.mark_output(ResNetBuilder(net).resnet50(x), "logits");
  EXPECT_EQ(net.layers().size() > 150, true);

  BuilderConfig config;
  config.profiles.push_back(OptimizationProfile().set_range("batch", 1, 1, 2));
  const auto plan = Builder(config).build(net);
  const auto engine = Runtime().deserialize(plan.data(), plan.size());
  auto ctx = engine->create_execution_context();
  const auto in = test::TestTensor::random(DataType::kF32, {1, 3, 224, 224}, 7);
  std::vector<float> out(1000);
  ctx->set_input_shape("image", {1, 3, 224, 224});
  ctx->set_tensor_address("image", const_cast<uint8_t*>(in.bytes.data()));
  ctx->set_tensor_address("logits", out.data());
  ctx->execute();  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  ctx->execute();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ ResNet-50 ] 224x224 batch 1 on the CPU back end: %.3f s, arena %lld bytes\n",
              seconds, static_cast<long long>(engine->arena_bytes()));
  EXPECT_LT(seconds, 10.0) << "the reference back end must run real models in seconds";

  // The plan computes what the network says.
  const auto direct = test::run_network_direct(net, {in});
  test::TestTensor got{DataType::kF32, {1, 1000}, {}};
  got.bytes.resize(4000);
  std::memcpy(got.bytes.data(), out.data(), 4000);
  test::expect_close(got, direct[0].to_floats(), DataType::kF32, "resnet50 plan vs direct");
  double norm = 0;
  for (float v : out) {
    ASSERT_TRUE(std::isfinite(v));
    norm += static_cast<double>(v) * v;
  }
  EXPECT_GT(norm, 0.0);
}

}  // namespace
}  // namespace ember::engine
