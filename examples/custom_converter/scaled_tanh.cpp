// An out-of-tree converter library: a custom PyTorch op (my_ops::scaled_tanh, defined here with
// TORCH_LIBRARY) and Ember converters for it, registered with EMBER_CONVERTER exactly as Ember's
// own converters are (src/compiler/converters/). Loading this library (ember.load_converters /
// torch.ops.load_library in Python, or linking it into a C++ program) makes the op run inside
// engines on the TorchScript path (docs/adding_a_converter.md, "Out-of-tree converters").
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ember/compiler/conversion.h"

// ---- the op: alpha * tanh(x), with a CPU kernel PyTorch runs when the op is not in an engine.
namespace {

at::Tensor scaled_tanh_cpu(const at::Tensor& x, double alpha) { return at::tanh(x) * alpha; }

}  // namespace

TORCH_LIBRARY(my_ops, m) { m.def("scaled_tanh(Tensor x, float alpha) -> Tensor"); }
TORCH_LIBRARY_IMPL(my_ops, CPU, m) { m.impl("scaled_tanh", &scaled_tanh_cpu); }

// ---- its converters.
namespace {

using ember::compiler::ConversionContext;
using ember::compiler::Node;
using ember::compiler::Reason;
using ember::compiler::CompileSettings;

struct ScaledTanhArgs {
  enum { x = 0, alpha = 1 };
};

// The validator: engines take float tensors only (the partitioner leaves the rest to PyTorch).
Reason validate_scaled_tanh(const Node& node, const CompileSettings&) {
  if (!ember::compiler::scalar_type_is_float(node.arg_tensor(ScaledTanhArgs::x)->dtype())) {
    return "my_ops::scaled_tanh: only float inputs";
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(my_scaled_tanh, ({"my_ops::scaled_tanh"}), /*dynamic=*/true, validate_scaled_tanh) {
  ember::engine::Tensor* x = ctx.input(node, ScaledTanhArgs::x);
  auto& net = ctx.net();
  ember::engine::Tensor* t =
      net.add_activation(x, ember::engine::ActivationType::kTanh, 0.0, 0.0,
                         ctx.layer_name(node, "my_tanh"))->output();
  ember::engine::Tensor* alpha =
      ctx.scalar(node.arg_double(ScaledTanhArgs::alpha), t->dtype(), t->rank());
  ctx.set_output(node, 0,
                 net.add_elementwise(t, alpha, ember::engine::ElementWiseOp::kProd,
                                     ctx.layer_name(node, "my_scale"))->output());
}

namespace {

// A converter that takes precedence over a built-in one (priority 10 > 0), for the nodes its
// validator accepts: hardtanh(-2.5, 2.5) becomes one Clip layer named after this library.
Reason validate_hardtanh_25(const Node& node, const CompileSettings&) {
  if (node.arg_double_or(1, -1.0) != -2.5 || node.arg_double_or(2, 1.0) != 2.5) {
    return "my_ops: only hardtanh(-2.5, 2.5)";
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER_P(my_hardtanh_25, ({"aten::hardtanh"}), /*dynamic=*/true, validate_hardtanh_25,
                  /*priority=*/10) {
  ember::engine::Tensor* x = ctx.input(node, 0);
  ctx.set_output(node, 0,
                 ctx.net().add_activation(x, ember::engine::ActivationType::kClip, -2.5, 2.5,
                                          ctx.layer_name(node, "my_ops_clip"))->output());
}
