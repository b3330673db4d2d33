// Activation functions and (log-)softmax.
//
// One engine Activation layer each where the engine has the function (computed in f32 and
// rounded once, as PyTorch does for f16/bf16); hardswish, prelu and threshold are composed.
// Activation layers take floats; an integer input is cast to the output dtype first (sigmoid of
// an int tensor is a float in PyTorch), except relu, which keeps integers.
#include <cmath>
#include <string>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::ActivationType;
using engine::DataType;
using engine::ElementWiseOp;
using engine::Tensor;

struct UnaryArgs {
  enum { self = 0 };
};
struct GeluArgs {
  enum { self = 0, approximate = 1 };
};
struct HardtanhArgs {
  enum { self = 0, min_val = 1, max_val = 2 };
};
struct LeakyReluArgs {
  enum { self = 0, negative_slope = 1 };
};
struct EluArgs {
  enum { self = 0, alpha = 1, scale = 2, input_scale = 3 };
};
struct SoftplusArgs {
  enum { self = 0, beta = 1, threshold = 2 };
};
struct ThresholdArgs {
  enum { self = 0, threshold = 1, value = 2 };
};
struct PreluArgs {
  enum { self = 0, weight = 1 };
};
/// _softmax(self, dim, half_to_float) and softmax.int(self, dim, dtype).
struct SoftmaxArgs {
  enum { self = 0, dim = 1, half_to_float = 2, dtype = 2 };
};

DataType out_dtype(ConversionContext& ctx, const Node& node) {
  return ctx.engine_dtype(node.output(0)->dtype());
}

/// The dtype multi-layer float math runs in (torch's opmath type).
DataType opmath(DataType t) {
  return t == DataType::kF16 || t == DataType::kBF16 ? DataType::kF32 : t;
}

/// Input `i` cast to `t`.
Tensor* input_as(ConversionContext& ctx, const Node& node, size_t i, DataType t) {
  return ctx.cast(ctx.input(node, i), t);
}

Tensor* activation(ConversionContext& ctx, const Node& node, Tensor* x, ActivationType type,
                   double alpha = 0.0, double beta = 0.0) {
  return ctx.net().add_activation(x, type, alpha, beta, ctx.layer_name(node))->output();
}

Tensor* ew(ConversionContext& ctx, const Node& node, Tensor* a, Tensor* b, ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

/// One activation layer on the input cast to the (float) output dtype.
void convert_simple(ConversionContext& ctx, const Node& node, ActivationType type,
                    double alpha = 0.0, double beta = 0.0) {
  Tensor* x = input_as(ctx, node, UnaryArgs::self, out_dtype(ctx, node));
  ctx.set_output(node, 0, activation(ctx, node, x, type, alpha, beta));
}

Reason validate_float_output(const Node& node, const CompileSettings&) {
  if (!scalar_type_is_float(node.output(0)->dtype())) {
    return node.op() + " with a " + scalar_type_name(node.output(0)->dtype()) +
           " result is not supported (float results only)";
  }
  for (size_t i = 1; i < node.num_args(); ++i) {
    if (std::holds_alternative<DimExpr>(node.args()[i])) {
      return "argument " + std::to_string(i) + " is a symbolic size; it must be a constant";
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- relu family

Reason validate_relu(const Node& node, const CompileSettings&) {
  if (node.output(0)->dtype() == ScalarType::kBool) return "relu of a bool tensor";
  return std::nullopt;
}

EMBER_CONVERTER(relu, ({"aten::relu"}), true, validate_relu) {
  Tensor* x = ctx.input(node, UnaryArgs::self);
  if (engine::dtype_is_float(x->dtype())) {
    return ctx.set_output(node, 0, activation(ctx, node, x, ActivationType::kRelu));
  }
  ctx.set_output(node, 0, ew(ctx, node, x, ctx.scalar(0.0, x->dtype()), ElementWiseOp::kMax));
}

EMBER_CONVERTER(relu6, ({"aten::relu6"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kClip, 0.0, 6.0);
}

EMBER_CONVERTER(hardtanh, ({"aten::hardtanh"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kClip, node.arg_double_or(HardtanhArgs::min_val, -1.0),
                 node.arg_double_or(HardtanhArgs::max_val, 1.0));
}

EMBER_CONVERTER(leaky_relu, ({"aten::leaky_relu"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kLeakyRelu,
                 node.arg_double_or(LeakyReluArgs::negative_slope, 0.01));
}

EMBER_CONVERTER(threshold, ({"aten::threshold"}), true, validate_float_output) {
  // x > threshold ? x : value.
  const DataType out = out_dtype(ctx, node);
  Tensor* x = input_as(ctx, node, ThresholdArgs::self, out);
  Tensor* keep = ew(ctx, node, x, ctx.scalar(node.arg_double(ThresholdArgs::threshold), out),
                    ElementWiseOp::kGreater);
  ctx.set_output(node, 0, ctx.net()
                              .add_select(keep, x, ctx.scalar(node.arg_double(ThresholdArgs::value), out),
                                          ctx.layer_name(node))
                              ->output());
}

Reason validate_prelu(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_output(node, s)) return r;
  const Value* x = node.arg_tensor(PreluArgs::self);
  const Value* w = node.arg_tensor(PreluArgs::weight);
  if (node.op() == "aten::prelu") {
    if (w->rank() != 1) return "prelu weight must be 1-d";
    if (x->rank() < 2 && !(w->shape()[0] == DimExpr(1))) {
      return "prelu of a rank < 2 input takes a single weight";
    }
  }
  return std::nullopt;
}

EMBER_CONVERTER(prelu, ({"aten::prelu", "aten::_prelu_kernel"}), true, validate_prelu) {
  // x > 0 ? x : w * x. aten::prelu's weight [C] (or [1]) applies along dim 1; _prelu_kernel's
  // weight already broadcasts.
  const DataType out = out_dtype(ctx, node);
  Tensor* x = input_as(ctx, node, PreluArgs::self, out);
  Tensor* w = input_as(ctx, node, PreluArgs::weight, out);
  if (node.op() == "aten::prelu" && x->rank() >= 2) {
    engine::Shape shape(static_cast<size_t>(x->rank() - 1), DimExpr(1));
    shape[0] = w->shape()[0];
    w = ctx.net().add_reshape(w, shape, ctx.layer_name(node, "weight"))->output();
  }
  Tensor* positive = ew(ctx, node, x, ctx.scalar(0.0, out), ElementWiseOp::kGreater);
  ctx.set_output(node, 0, ctx.net()
                              .add_select(positive, x, ew(ctx, node, x, w, ElementWiseOp::kProd),
                                          ctx.layer_name(node))
                              ->output());
}

// ---------------------------------------------------------------- smooth activations

EMBER_CONVERTER(sigmoid, ({"aten::sigmoid"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kSigmoid);
}

EMBER_CONVERTER(tanh, ({"aten::tanh"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kTanh);
}

EMBER_CONVERTER(silu, ({"aten::silu"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kSilu);
}

Reason validate_gelu(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_output(node, s)) return r;
  if (node.arg_is_none(GeluArgs::approximate)) return std::nullopt;
  const std::string& a = node.arg_string(GeluArgs::approximate);
  if (a != "none" && a != "tanh") return "gelu approximate='" + a + "' is unknown";
  return std::nullopt;
}

EMBER_CONVERTER(gelu, ({"aten::gelu"}), true, validate_gelu) {
  const bool tanh = !node.arg_is_none(GeluArgs::approximate) &&
                    node.arg_string(GeluArgs::approximate) == "tanh";
  convert_simple(ctx, node, tanh ? ActivationType::kGeluTanh : ActivationType::kGeluErf);
}

Reason validate_elu(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_output(node, s)) return r;
  if (node.arg_double_or(EluArgs::input_scale, 1.0) != 1.0) {
    return "elu with input_scale != 1 is not supported";
  }
  return std::nullopt;
}

EMBER_CONVERTER(elu, ({"aten::elu"}), true, validate_elu) {
  // scale * (x > 0 ? x : alpha * (exp(x) - 1)) is the engine's selu form.
  convert_simple(ctx, node, ActivationType::kSelu, node.arg_double_or(EluArgs::alpha, 1.0),
                 node.arg_double_or(EluArgs::scale, 1.0));
}

EMBER_CONVERTER(selu, ({"aten::selu"}), true, validate_float_output) {
  convert_simple(ctx, node, ActivationType::kSelu, 1.6732632423543772848170429916717,
                 1.0507009873554804934193349852946);
}

Reason validate_softplus(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_output(node, s)) return r;
  const double beta = node.arg_double_or(SoftplusArgs::beta, 1.0);
  if (beta == 0.0 || !std::isfinite(beta)) return "softplus beta must be finite and nonzero";
  return std::nullopt;
}

EMBER_CONVERTER(softplus, ({"aten::softplus"}), true, validate_softplus) {
  convert_simple(ctx, node, ActivationType::kSoftplus, node.arg_double_or(SoftplusArgs::beta, 1.0),
                 node.arg_double_or(SoftplusArgs::threshold, 20.0));
}

EMBER_CONVERTER(hardsigmoid, ({"aten::hardsigmoid"}), true, validate_float_output) {
  // relu6(x + 3) / 6 == clip(x / 6 + 1/2, 0, 1).
  convert_simple(ctx, node, ActivationType::kHardSigmoid, 1.0 / 6.0, 0.5);
}

EMBER_CONVERTER(hardswish, ({"aten::hardswish"}), true, validate_float_output) {
  // x * hardsigmoid(x), in f32 for half types so the product is rounded once.
  Tensor* x = input_as(ctx, node, UnaryArgs::self, opmath(out_dtype(ctx, node)));
  Tensor* g = activation(ctx, node, x, ActivationType::kHardSigmoid, 1.0 / 6.0, 0.5);
  ctx.set_output(node, 0, ew(ctx, node, x, g, ElementWiseOp::kProd));
}

// ---------------------------------------------------------------- softmax

Reason validate_softmax(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_output(node, s)) return r;
  if (node.arg_tensor(SoftmaxArgs::self)->rank() == 0) return "softmax of a 0-d tensor";
  const bool internal = node.op() == "aten::_softmax" || node.op() == "aten::_log_softmax";
  if (internal && node.arg_bool_or(SoftmaxArgs::half_to_float, false)) {
    return "half_to_float=True is not supported";
  }
  return std::nullopt;
}

void softmax_impl(ConversionContext& ctx, const Node& node, bool log) {
  // softmax.int's dtype argument casts the input first; the output dtype says to what.
  Tensor* x = input_as(ctx, node, SoftmaxArgs::self, out_dtype(ctx, node));
  const int64_t axis = normalize_dim(node.arg_int(SoftmaxArgs::dim), x->rank(), node);
  ctx.set_output(node, 0, ctx.net().add_softmax(x, axis, log, ctx.layer_name(node))->output());
}

EMBER_CONVERTER(softmax, ({"aten::_softmax", "aten::softmax.int"}), true, validate_softmax) {
  softmax_impl(ctx, node, false);
}

EMBER_CONVERTER(log_softmax, ({"aten::_log_softmax", "aten::log_softmax.int"}), true,
                validate_softmax) {
  softmax_impl(ctx, node, true);
}

}  // namespace

}  // namespace ember::compiler
