// Uses the example plugin from C++: loads the plugin library by path (as a program would load a
// vendor's plugins), builds a network with a Plugin layer, serializes the plan, deserializes it and
// runs it on the CPU back end, checking the result against the formula.
//
//   ember_plugin_example <path to libember_plugin_example.so>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"
#include "ember/engine/plugin.h"
#include "ember/engine/runtime.h"

namespace eng = ember::engine;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <libember_plugin_example.so>\n", argv[0]);
    return 2;
  }
  try {
    eng::load_library(argv[1]);  // its static initializer registers example::soft_clip
    const float threshold = 2.0f;
    std::vector<uint8_t> attributes(sizeof threshold);
    std::memcpy(attributes.data(), &threshold, sizeof threshold);

    eng::Network net;
    eng::Tensor* x = net.add_input("x", eng::DataType::kF32, {eng::DimExpr::symbol("n"), 8});
    eng::Tensor* h = net.add_activation(x, eng::ActivationType::kRelu)->output();
    eng::Layer* clip = net.add_plugin({h}, "example::soft_clip", "1", attributes, "clip");
    net.mark_output(clip->output(), "y");

    eng::BuilderConfig config;
    config.profiles.emplace_back();
    config.profiles[0].set_range("n", 1, 4, 16);
    const std::vector<uint8_t> plan = eng::Builder(config).build(net);

    auto engine = eng::Runtime().deserialize(plan.data(), plan.size());
    auto ctx = engine->create_execution_context();
    const int64_t n = 3;
    std::vector<float> in(n * 8), out(n * 8);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) * 0.25f - 2.0f;
    ctx->set_input_shape("x", {n, 8});
    ctx->set_tensor_address("x", in.data());
    ctx->set_tensor_address("y", out.data());
    ctx->execute();
    for (size_t i = 0; i < in.size(); ++i) {
      const float want = threshold * std::tanh(std::max(in[i], 0.0f) / threshold);
      if (std::fabs(out[i] - want) > 1e-6f * (1.0f + std::fabs(want))) {
        std::fprintf(stderr, "mismatch at %zu: %g != %g\n", i, out[i], want);
        return 1;
      }
    }
    std::printf("example::soft_clip ran inside an engine: %zu values match (plan %zu bytes)\n",
                out.size(), plan.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
