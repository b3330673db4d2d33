// Dtype conversions, copies that are no-ops inside an engine, and tensor creation (full, zeros,
// ones, arange, scalar_tensor, ...).
//
// Inside an engine a tensor has no device, layout or strides, so _to_copy/to are Casts (to the
// dtype PyTorch computed for the output) and clone/alias/detach/eval-mode dropout are the
// identity. Creation ops become Fill layers; their shapes may be symbolic. `empty` has undefined
// contents in PyTorch, so zeros are a valid (and deterministic) value for it.
#include <cmath>
#include <string>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::FillOp;
using engine::Tensor;

/// _to_copy(self, dtype, layout, device, ...) and to.dtype_layout (same positions);
/// to.device(self, device, dtype, ...) is ToDeviceArgs.
struct ToCopyArgs {
  enum { self = 0, dtype = 1, layout = 2, device = 3 };
};
struct ToDeviceArgs {
  enum { self = 0, device = 1 };
};
struct DropoutArgs {
  enum { input = 0, p = 1, train = 2 };
};
/// full(size, fill_value, ...), zeros/ones/empty(size, ...).
struct SizeArgs {
  enum { size = 0, fill_value = 1 };
};
/// full_like(self, fill_value, ...), fill.Scalar/Tensor(self, value).
struct LikeArgs {
  enum { self = 0, fill_value = 1 };
};
/// new_full(self, size, fill_value, ...), new_zeros/new_ones/new_empty(self, size, ...).
struct NewArgs {
  enum { self = 0, size = 1, fill_value = 2 };
};
struct ScalarTensorArgs {
  enum { s = 0 };
};
/// arange(end), arange.start(start, end), arange.start_step(start, end, step).
struct ArangeArgs {
  enum { start = 0, end = 1, step = 2 };
};

DataType out_dtype(ConversionContext& ctx, const Node& node) {
  return ctx.engine_dtype(node.output(0)->dtype());
}

Reason reject_symbolic(const Node& node, size_t i) {
  if (i < node.num_args() && std::holds_alternative<DimExpr>(node.args()[i])) {
    return "argument " + std::to_string(i) + " is the symbolic value " +
           arg_to_string(node.args()[i]) + "; it must be a constant";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- casts and copies

// A copy to another device than the engine's: inside an engine every tensor lives on the
// engine's device, so the copy would silently not happen (a .to("cpu") in a CUDA engine would
// return a CUDA tensor). Such a node runs in PyTorch, where the transfer is real. The device
// arrives as torch's text ("cpu", "cuda:0"); only its type is compared, since the engine's
// device index is chosen at build time.
Reason check_device(const Node& node, size_t position, const CompileSettings& settings) {
  if (position >= node.num_args() || node.arg_is_none(position)) return std::nullopt;
  const std::string device = node.arg_string(position);
  const std::string type = device.substr(0, device.find(':'));
  if (type == settings.backend) return std::nullopt;
  return "a copy to device '" + device + "', but the engine runs on the " + settings.backend +
         " back end (the transfer runs in PyTorch)";
}

Reason validate_to_copy(const Node& node, const CompileSettings& settings) {
  if (node.op() == "aten::to.dtype") return std::nullopt;
  if (node.op() == "aten::to.device") return check_device(node, ToDeviceArgs::device, settings);
  // _to_copy and to.dtype_layout name the layout at position 2 and the device at 3.
  if (!node.arg_is_none(ToCopyArgs::layout) && node.arg_string(ToCopyArgs::layout) != "torch.strided") {
    return "a copy to layout " + node.arg_string(ToCopyArgs::layout) + " (engines hold strided tensors)";
  }
  return check_device(node, ToCopyArgs::device, settings);
}

EMBER_CONVERTER(to_copy, ({"aten::_to_copy", "aten::to.dtype", "aten::to.dtype_layout",
                           "aten::to.device"}),
                true, validate_to_copy) {
  // The validator kept only copies to the engine's own device; the memory format does not
  // change values.
  ctx.set_output(node, 0, ctx.cast(ctx.input(node, ToCopyArgs::self), out_dtype(ctx, node),
                                   ctx.layer_name(node)));
}

EMBER_CONVERTER(identity, ({"aten::clone", "aten::alias", "aten::detach", "aten::lift_fresh_copy",
                            "aten::contiguous"}),
                true, nullptr) {
  ctx.set_output(node, 0, ctx.input(node, 0));
}

Reason validate_dropout(const Node& node, const CompileSettings&) {
  if (node.arg_bool_or(DropoutArgs::train, false) && node.arg_double(DropoutArgs::p) != 0.0) {
    return "dropout in training mode (train=True) is random; export the model in eval mode";
  }
  return std::nullopt;
}

EMBER_CONVERTER(dropout, ({"aten::dropout"}), true, validate_dropout) {
  ctx.set_output(node, 0, ctx.input(node, DropoutArgs::input));
}

EMBER_CONVERTER(native_dropout, ({"aten::native_dropout"}), true, validate_dropout) {
  // (output, mask): everything kept.
  Tensor* x = ctx.input(node, DropoutArgs::input);
  engine::FillParams p;
  p.shape = x->shape();
  p.dtype = DataType::kBool;
  p.value = 1.0;
  ctx.set_output(node, 0, x);
  ctx.set_output(node, 1, ctx.net().add_fill(p, ctx.layer_name(node, "mask"))->output());
}

// ---------------------------------------------------------------- constant fills

/// A Fill of `shape` with `value` converted as torch converts a Python number to `dtype`.
Tensor* fill(ConversionContext& ctx, const Node& node, const engine::Shape& shape, double value,
             DataType dtype) {
  engine::FillParams p;
  p.op = FillOp::kConstant;
  p.shape = shape;
  p.dtype = dtype;
  if (dtype == DataType::kBool) {
    p.value = value != 0.0 ? 1.0 : 0.0;
  } else if (!engine::dtype_is_float(dtype)) {
    p.value = std::trunc(value);
  } else {
    p.value = value;
  }
  return ctx.net().add_fill(p, ctx.layer_name(node))->output();
}

Reason validate_fill_value(const Node& node, size_t value_arg) {
  if (Reason r = reject_symbolic(node, value_arg)) return r;
  if (!node.arg_is_scalar(value_arg)) return std::nullopt;  // a tensor value (fill.Tensor)
  const double v = node.arg_double(value_arg);
  if (!scalar_type_is_float(node.output(0)->dtype()) && node.output(0)->dtype() != ScalarType::kBool &&
      !std::isfinite(v)) {
    return "fill value " + std::to_string(v) + " does not fit an integer tensor";
  }
  return std::nullopt;
}

Reason validate_full(const Node& node, const CompileSettings&) {
  return validate_fill_value(node, SizeArgs::fill_value);
}

EMBER_CONVERTER(full, ({"aten::full"}), true, validate_full) {
  ctx.set_output(node, 0, fill(ctx, node, node.output(0)->shape(),
                               node.arg_double(SizeArgs::fill_value), out_dtype(ctx, node)));
}

/// zeros/ones/empty(size, ...): a constant fill of the output's shape.
void convert_fill_size(ConversionContext& ctx, const Node& node, double value) {
  ctx.set_output(node, 0, fill(ctx, node, node.output(0)->shape(), value, out_dtype(ctx, node)));
}

EMBER_CONVERTER(zeros, ({"aten::zeros", "aten::empty.memory_format", "aten::new_zeros",
                         "aten::new_empty"}),
                true, nullptr) {
  convert_fill_size(ctx, node, 0.0);
}

EMBER_CONVERTER(ones, ({"aten::ones", "aten::new_ones"}), true, nullptr) {
  convert_fill_size(ctx, node, 1.0);
}

Reason validate_new_full(const Node& node, const CompileSettings&) {
  return validate_fill_value(node, NewArgs::fill_value);
}

EMBER_CONVERTER(new_full, ({"aten::new_full"}), true, validate_new_full) {
  convert_fill_size(ctx, node, node.arg_double(NewArgs::fill_value));
}

/// *_like: the shape comes from the input's engine tensor, so it uses the engine's symbols.
void convert_fill_like(ConversionContext& ctx, const Node& node, double value) {
  ctx.set_output(node, 0, fill(ctx, node, ctx.input(node, LikeArgs::self)->shape(), value,
                               out_dtype(ctx, node)));
}

Reason validate_full_like(const Node& node, const CompileSettings&) {
  return validate_fill_value(node, LikeArgs::fill_value);
}

EMBER_CONVERTER(full_like, ({"aten::full_like", "aten::fill.Scalar"}), true, validate_full_like) {
  convert_fill_like(ctx, node, node.arg_double(LikeArgs::fill_value));
}

EMBER_CONVERTER(zeros_like, ({"aten::zeros_like", "aten::empty_like"}), true, nullptr) {
  convert_fill_like(ctx, node, 0.0);
}

EMBER_CONVERTER(ones_like, ({"aten::ones_like"}), true, nullptr) {
  convert_fill_like(ctx, node, 1.0);
}

EMBER_CONVERTER(fill_tensor, ({"aten::fill.Tensor"}), true, nullptr) {
  // The 0-d value broadcast to self's shape: select(True, value, self).
  const DataType out = out_dtype(ctx, node);
  Tensor* self = ctx.cast(ctx.input(node, LikeArgs::self), out);
  Tensor* value = ctx.cast(ctx.input(node, LikeArgs::fill_value), out);
  ctx.set_output(node, 0, ctx.net()
                              .add_select(ctx.scalar(1.0, DataType::kBool), value, self,
                                          ctx.layer_name(node))
                              ->output());
}

Reason validate_scalar_tensor(const Node& node, const CompileSettings&) {
  return validate_fill_value(node, ScalarTensorArgs::s);
}

EMBER_CONVERTER(scalar_tensor, ({"aten::scalar_tensor"}), true, validate_scalar_tensor) {
  ctx.set_output(node, 0, fill(ctx, node, {}, node.arg_double(ScalarTensorArgs::s),
                               out_dtype(ctx, node)));
}

// ---------------------------------------------------------------- arange

Reason validate_arange(const Node& node, const CompileSettings&) {
  if (node.output(0)->dtype() == ScalarType::kBool) return "arange of bool";
  // The length (from end) may be symbolic: it is the output's shape. start and step are values.
  if (node.op() != "aten::arange") {
    if (Reason r = reject_symbolic(node, ArangeArgs::start)) return r;
  }
  if (node.op() == "aten::arange.start_step") {
    if (Reason r = reject_symbolic(node, ArangeArgs::step)) return r;
  }
  return std::nullopt;
}

EMBER_CONVERTER(arange, ({"aten::arange", "aten::arange.start", "aten::arange.start_step"}), true,
                validate_arange) {
  engine::FillParams p;
  p.op = FillOp::kArange;
  p.shape = node.output(0)->shape();
  p.dtype = out_dtype(ctx, node);
  p.start = node.op() == "aten::arange" ? 0.0 : node.arg_double(ArangeArgs::start);
  p.delta = node.op() == "aten::arange.start_step" ? node.arg_double_or(ArangeArgs::step, 1.0) : 1.0;
  ctx.set_output(node, 0, ctx.net().add_fill(p, ctx.layer_name(node))->output());
}

// ---------------------------------------------------------------- linspace

/// linspace(start, end, steps, *, dtype=None, ...).
struct LinspaceArgs {
  enum { start = 0, end = 1, steps = 2 };
};

Reason validate_linspace(const Node& node, const CompileSettings&) {
  if (!scalar_type_is_float(node.output(0)->dtype())) {
    return "linspace with an integer dtype (PyTorch rounds through a float step)";
  }
  for (size_t i : {LinspaceArgs::start, LinspaceArgs::end, LinspaceArgs::steps}) {
    if (Reason r = reject_symbolic(node, i)) return r;
  }
  return std::nullopt;
}

// PyTorch's kernel: the first half counts up from start, the second half down from end, so both
// ends are exact: start + i*step for i < steps/2, end - (steps-1-i)*step after.
EMBER_CONVERTER(linspace, ({"aten::linspace"}), true, validate_linspace) {
  const double start = node.arg_double(LinspaceArgs::start);
  const double end = node.arg_double(LinspaceArgs::end);
  const int64_t steps = node.arg_int(LinspaceArgs::steps);
  const double step = steps > 1 ? (end - start) / static_cast<double>(steps - 1) : 0.0;
  const int64_t half = steps / 2;
  auto range = [&](int64_t n, double first) {
    engine::FillParams p;
    p.op = FillOp::kArange;
    p.shape = {DimExpr(n)};
    p.dtype = out_dtype(ctx, node);
    p.start = first;
    p.delta = step;
    return ctx.net().add_fill(p, ctx.layer_name(node))->output();
  };
  if (half == 0) {
    ctx.set_output(node, 0, range(steps, start));
    return;
  }
  Tensor* lo = range(half, start);
  Tensor* hi = range(steps - half, end - static_cast<double>(steps - 1 - half) * step);
  ctx.set_output(node, 0, ctx.net().add_concatenation({lo, hi}, 0, ctx.layer_name(node))->output());
}

}  // namespace

}  // namespace ember::compiler
