// A small plugin for the engine tests: "test::affine_twice" version "1".
//
// Attributes: two little-endian f32, scale and shift. Input: one f32 tensor x [..., k].
// Outputs: 0 = scale * x + shift (x's shape), 1 = x twice along the last dim ([..., 2k], a
// symbolic output shape). It asks for a workspace (the affine result goes through it) and has two
// tactics on the CPU that compute the same thing (tactic 1 walks backwards).
#pragma once

#include <cstring>

#include "ember/engine/plugin.h"

namespace ember::engine::test {

inline constexpr const char* kTestPluginName = "test::affine_twice";
inline constexpr const char* kTestPluginVersion = "1";

inline std::vector<uint8_t> affine_attributes(float scale, float shift) {
  std::vector<uint8_t> a(8);
  std::memcpy(a.data(), &scale, 4);
  std::memcpy(a.data() + 4, &shift, 4);
  return a;
}

class AffineTwicePlugin final : public Plugin {
 public:
  AffineTwicePlugin(float scale, float shift) : scale_(scale), shift_(shift) {}

  std::vector<PluginTensorDesc> infer_outputs(
      const std::vector<PluginTensorDesc>& in) const override {
    if (in.size() != 1) throw Error("takes 1 input, got " + std::to_string(in.size()));
    if (in[0].dtype != DataType::kF32) throw Error("takes f32 only");
    if (in[0].shape.empty()) throw Error("takes rank >= 1");
    Shape twice = in[0].shape;
    twice.back() = twice.back() * 2;
    return {{DataType::kF32, in[0].shape}, {DataType::kF32, twice}};
  }
  int num_tactics(const std::string&) const override { return 2; }
  size_t workspace_size(const std::vector<PluginTensor>& in,
                        const std::vector<PluginTensor>&) const override {
    return in[0].nbytes();
  }
  void enqueue(const std::vector<PluginTensor>& in, const std::vector<PluginTensor>& out,
               const PluginRunContext& ctx) const override {
    if (ctx.backend != "cpu") throw Error("runs on the CPU only");
    if (ctx.workspace_bytes < in[0].nbytes()) throw Error("workspace too small");
    const auto* x = static_cast<const float*>(in[0].data);
    auto* ws = static_cast<float*>(ctx.workspace);
    const int64_t n = in[0].numel();
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = ctx.tactic == 1 ? n - 1 - j : j;
      ws[i] = scale_ * x[i] + shift_;
    }
    std::memcpy(out[0].data, ws, in[0].nbytes());
    const int64_t k = in[0].dims.back();
    auto* y = static_cast<float*>(out[1].data);
    for (int64_t r = 0; k > 0 && r < n / k; ++r) {
      std::memcpy(y + r * 2 * k, x + r * k, k * sizeof(float));
      std::memcpy(y + r * 2 * k + k, x + r * k, k * sizeof(float));
    }
  }

 private:
  float scale_, shift_;
};

class AffineTwiceCreator final : public PluginCreator {
 public:
  std::string name() const override { return kTestPluginName; }
  std::string version() const override { return kTestPluginVersion; }
  std::shared_ptr<const Plugin> create(const std::vector<uint8_t>& a) const override {
    if (a.size() != 8) throw Error("expects 8 bytes (scale, shift), got " + std::to_string(a.size()));
    float scale, shift;
    std::memcpy(&scale, a.data(), 4);
    std::memcpy(&shift, a.data() + 4, 4);
    return std::make_shared<AffineTwicePlugin>(scale, shift);
  }
};

/// Registers the test plugin (idempotent).
inline void register_test_plugins() {
  register_plugin_creator(std::make_shared<AffineTwiceCreator>(), /*replace=*/true);
}

}  // namespace ember::engine::test
