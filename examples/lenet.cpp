// LeNet through the engine API: define the network, build a plan, serialize it to a file, load
// it back with the Runtime and run it — the seed documents' LeNet (conv-relu-maxpool twice,
// flatten, three linear layers with relu), with deterministic pseudo-random weights.
//
//   lenet [--batch N] [--plan PATH] [--iters K]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"
#include "ember/engine/runtime.h"

using namespace ember::engine;

namespace {

// Kaiming-uniform-like weights, as torch.nn initializes them.
Tensor* random_constant(Network& net, std::vector<int64_t> dims, int64_t fan_in, std::mt19937& gen,
                        const std::string& name) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  std::uniform_real_distribution<float> dist(-bound, bound);
  std::vector<float> v(static_cast<size_t>(dims_numel(dims)));
  for (float& x : v) x = dist(gen);
  return net.add_constant(Weights::from_vector(DataType::kF32, std::move(dims), v), name)->output();
}

Tensor* conv_relu_pool(Network& net, Tensor* x, int64_t cin, int64_t cout, std::mt19937& gen,
                       const std::string& name) {
  Tensor* w = random_constant(net, {cout, cin, 3, 3}, cin * 9, gen, name + ".weight");
  Tensor* b = random_constant(net, {cout}, cin * 9, gen, name + ".bias");
  ConvolutionParams conv;
  conv.stride = {1, 1};
  conv.padding_begin = conv.padding_end = {0, 0};
  conv.dilation = {1, 1};
  Tensor* y = net.add_convolution(x, w, b, conv, name)->output();
  y = net.add_activation(y, ActivationType::kRelu, 0, 0, name + ".relu")->output();
  PoolingParams pool;
  pool.type = PoolingType::kMax;
  pool.window = pool.stride = {2, 2};
  pool.padding_begin = pool.padding_end = {0, 0};
  pool.dilation = {1, 1};
  return net.add_pooling(y, pool, name + ".pool")->output();
}

Tensor* linear(Network& net, Tensor* x, int64_t in, int64_t out, bool relu, std::mt19937& gen,
               const std::string& name) {
  Tensor* w = random_constant(net, {out, in}, in, gen, name + ".weight");
  Tensor* b = random_constant(net, {1, out}, in, gen, name + ".bias");
  Tensor* y = net.add_matrix_multiply(x, false, w, true, name)->output();
  y = net.add_elementwise(y, b, ElementWiseOp::kSum, name + ".add_bias")->output();
  if (relu) y = net.add_activation(y, ActivationType::kRelu, 0, 0, name + ".relu")->output();
  return y;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 1, iters = 100;
  std::string plan_path = "lenet.plan";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--batch") batch = std::stoll(argv[i + 1]);
    else if (a == "--plan") plan_path = argv[i + 1];
    else if (a == "--iters") iters = std::stoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s (use --batch N, --plan PATH, --iters K)\n", a.c_str());
      return 2;
    }
  }
  try {
    // 1. Define: input [batch, 1, 32, 32] with a dynamic batch dim.
    std::mt19937 gen(0);
    Network net;
    const DimExpr n = DimExpr::symbol("batch");
    Tensor* x = net.add_input("input", DataType::kF32, {n, 1, 32, 32});
    Tensor* y = conv_relu_pool(net, x, 1, 6, gen, "feat.conv1");      // [n, 6, 15, 15]
    y = conv_relu_pool(net, y, 6, 16, gen, "feat.conv2");             // [n, 16, 6, 6]
    y = net.add_reshape(y, {n, 16 * 6 * 6}, "flatten")->output();     // [n, 576]
    y = linear(net, y, 576, 120, true, gen, "classifier.fc1");
    y = linear(net, y, 120, 84, true, gen, "classifier.fc2");
    y = linear(net, y, 84, 10, false, gen, "classifier.fc3");
    net.mark_output(y, "logits");

    // 2. Build for batch 1..64, optimized for `batch`.
    BuilderConfig config;
    config.backend = "cpu";
    config.profiles.push_back(OptimizationProfile().set_range("batch", 1, batch, std::max<int64_t>(64, batch)));
    const auto t0 = std::chrono::steady_clock::now();
    BuildReport report;
    const std::vector<uint8_t> plan = Builder(config).build(net, &report);
    const auto t1 = std::chrono::steady_clock::now();
    for (const auto& line : report.pass_log) std::printf("  [build] %s\n", line.c_str());
    std::printf("built LeNet: %d layers, %zu-byte plan, %lld-byte arena, %.1f ms\n", report.num_layers,
                plan.size(), static_cast<long long>(report.arena_bytes),
                std::chrono::duration<double, std::milli>(t1 - t0).count());

    // 3. Serialize to a file and load it back, as a deployment would.
    {
      std::ofstream f(plan_path, std::ios::binary);
      f.write(reinterpret_cast<const char*>(plan.data()), static_cast<std::streamsize>(plan.size()));
      if (!f) throw Error("cannot write " + plan_path);
    }
    const auto engine = Runtime().deserialize_file(plan_path);
    std::printf("loaded %s: back end %s\n", plan_path.c_str(), engine->backend().c_str());

    // 4. Run.
    auto ctx = engine->create_execution_context();
    std::vector<float> in(static_cast<size_t>(batch * 32 * 32));
    std::mt19937 igen(1);
    std::normal_distribution<float> nd;
    for (float& v : in) v = nd(igen);
    ctx->set_input_shape("input", {batch, 1, 32, 32});
    const auto out_dims = ctx->tensor_shape("logits");
    std::vector<float> out(static_cast<size_t>(dims_numel(out_dims)));
    ctx->set_tensor_address("input", in.data());
    ctx->set_tensor_address("logits", out.data());
    ctx->execute();  // warm-up
    std::vector<double> ms;
    for (int64_t i = 0; i < iters; ++i) {
      const auto a = std::chrono::steady_clock::now();
      ctx->execute();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("output %s, sample 0 logits:", dims_to_string(out_dims).c_str());
    for (int i = 0; i < 10; ++i) std::printf(" %.4f", out[i]);
    std::printf("\nCPU back end, batch %lld: median %.3f ms over %lld runs (min %.3f ms)\n",
                static_cast<long long>(batch), ms[ms.size() / 2], static_cast<long long>(iters), ms[0]);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "lenet: %s\n", e.what());
    return 1;
  }
}
