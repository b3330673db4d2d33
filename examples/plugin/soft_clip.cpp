// An out-of-tree plugin library: the plugin "example::soft_clip" (version 1), y = t * tanh(x / t)
// for f32 tensors of any shape, with its threshold t as the plugin's attributes (4 bytes,
// little-endian f32), and a converter that puts it into engines for the PyTorch custom op
// example::soft_clip(Tensor x, float t) -> Tensor (whatever defines that op: torch.library in
// Python, TORCH_LIBRARY in C++).
//
// Loading this library (ember.load_plugins(path) in Python, ember::engine::load_library(path) or
// linking it in C++) registers both in the process-wide registries of libember.so
// (docs/extending.md, "Plugins").
#include <cmath>
#include <cstring>

#include "ember/compiler/conversion.h"
#include "ember/engine/plugin.h"

namespace {

using ember::engine::DataType;
using ember::engine::Error;
using ember::engine::Plugin;
using ember::engine::PluginCreator;
using ember::engine::PluginRunContext;
using ember::engine::PluginTensor;
using ember::engine::PluginTensorDesc;

class SoftClip final : public Plugin {
 public:
  explicit SoftClip(float threshold) : t_(threshold) {}

  // One output of the input's dtype and (symbolic) shape.
  std::vector<PluginTensorDesc> infer_outputs(
      const std::vector<PluginTensorDesc>& in) const override {
    if (in.size() != 1) throw Error("soft_clip takes one input, got " + std::to_string(in.size()));
    if (in[0].dtype != DataType::kF32) {
      throw Error(std::string("soft_clip takes f32, got ") + ember::engine::dtype_name(in[0].dtype));
    }
    return {in[0]};
  }

  // Two tactics: a plain loop and one unrolled by four. On the CPU the engine runs tactic 0; a
  // CUDA plugin's tactics are timed by the builder (this example has no CUDA kernel).
  int num_tactics(const std::string&) const override { return 2; }

  void enqueue(const std::vector<PluginTensor>& in, const std::vector<PluginTensor>& out,
               const PluginRunContext& ctx) const override {
    const auto* x = static_cast<const float*>(in[0].data);
    auto* y = static_cast<float*>(out[0].data);
    const int64_t n = in[0].numel();
    const float inv = 1.0f / t_;
    int64_t i = 0;
    if (ctx.tactic == 1) {
      for (; i + 4 <= n; i += 4) {
        for (int k = 0; k < 4; ++k) y[i + k] = t_ * std::tanh(x[i + k] * inv);
      }
    }
    for (; i < n; ++i) y[i] = t_ * std::tanh(x[i] * inv);
  }

 private:
  float t_;
};

class SoftClipCreator final : public PluginCreator {
 public:
  std::string name() const override { return "example::soft_clip"; }
  std::string version() const override { return "1"; }
  std::shared_ptr<const Plugin> create(const std::vector<uint8_t>& attributes) const override {
    float t = 0.0f;
    if (attributes.size() != sizeof t) {
      throw Error("example::soft_clip expects 4 attribute bytes (the threshold), got " +
                  std::to_string(attributes.size()));
    }
    std::memcpy(&t, attributes.data(), sizeof t);
    if (!(t > 0.0f)) throw Error("example::soft_clip threshold must be > 0, got " + std::to_string(t));
    return std::make_shared<SoftClip>(t);
  }
};

}  // namespace

EMBER_REGISTER_PLUGIN(SoftClipCreator);

// ---- the converter of the custom op example::soft_clip(Tensor x, float t) -> Tensor
namespace {

struct SoftClipArgs {
  enum { x = 0, threshold = 1 };
};

ember::compiler::Reason validate_soft_clip(const ember::compiler::Node& node,
                                           const ember::compiler::CompileSettings&) {
  if (node.arg_tensor(SoftClipArgs::x)->dtype() != ember::compiler::ScalarType::kF32) {
    return "example::soft_clip: the plugin takes f32 only";
  }
  if (!(node.arg_double(SoftClipArgs::threshold) > 0.0)) return "example::soft_clip: threshold <= 0";
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(example_soft_clip, ({"example::soft_clip"}), /*dynamic=*/true, validate_soft_clip) {
  const float t = static_cast<float>(node.arg_double(SoftClipArgs::threshold));
  std::vector<uint8_t> attributes(sizeof t);
  std::memcpy(attributes.data(), &t, sizeof t);
  ember::engine::Layer* layer =
      ctx.net().add_plugin({ctx.input(node, SoftClipArgs::x)}, "example::soft_clip", "1",
                           std::move(attributes), ctx.layer_name(node, "soft_clip"));
  ctx.set_output(node, 0, layer->output());
}
