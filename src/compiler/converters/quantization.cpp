// Quantization family: PyTorch's quantized_decomposed ops (what PT2E's convert_pt2e leaves in a
// torch.export program) and Ember's own FP8 ops (ember.quantize's FP8 graphs) become the
// engine's Quantize and Dequantize layers.
//
// quantized_decomposed's math is the Quantize layer's (x * (1 / scale), round half to even,
// + zero_point, clamp), except for its float8 outputs: PyTorch rounds x / scale to an integer
// before the cast to float8 (torch/ao/quantization/fx/_decomposed.py), so those nodes become a
// Round + Clip ahead of an FP8 Quantize with scale 1, which gives PyTorch's bytes. ember's own
// ember::quantize_fp8 skips the integer rounding (x / scale to the nearest E4M3 value, as
// TensorRT and cuBLASLt's FP8 scaling do).
//
// Scales and zero points that are constants (PT2E's are) become f32 / i32 constants; an
// all-zero zero point becomes no zero point, which is what the builder's low-precision fusion
// looks for. A computed scale (quantize_per_tensor.tensor after a dynamic observer) stays a
// tensor input of the layer.
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::Tensor;

/// quantized_decomposed::quantize_per_tensor(input, scale, zero_point, quant_min, quant_max,
/// dtype) and dequantize_per_tensor(..., dtype, *, out_dtype=None); the .tensor overloads take
/// scale and zero_point as tensors.
struct PerTensorArgs {
  enum {
    input = 0,
    scale = 1,
    zero_point = 2,
    quant_min = 3,
    quant_max = 4,
    dtype = 5,
    out_dtype = 6
  };
};
/// quantized_decomposed::quantize_per_channel(input, scales, zero_points, axis, quant_min,
/// quant_max, dtype) and dequantize_per_channel(input, scales, zero_points?, axis, quant_min,
/// quant_max, dtype, *, out_dtype=None).
struct PerChannelArgs {
  enum {
    input = 0,
    scales = 1,
    zero_points = 2,
    axis = 3,
    quant_min = 4,
    quant_max = 5,
    dtype = 6,
    out_dtype = 7
  };
};
/// ember::quantize_fp8(input, scale) and ember::dequantize_fp8(input, scale, out_dtype).
struct EmberFp8Args {
  enum { input = 0, scale = 1, out_dtype = 2 };
};

/// The values of a constant of a float or integer IR type, as doubles.
std::vector<double> constant_values(const Value* v) {
  const auto dims = engine::shape_evaluate(v->shape(), {});
  const int64_t n = engine::dims_numel(dims);
  const void* p = v->constant().data.get();
  if (p == nullptr) throw Error("constant %" + v->name() + " has no data");
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (v->dtype()) {
      case ScalarType::kF32:
        out[i] = static_cast<const float*>(p)[i];
        break;
      case ScalarType::kF64:
        out[i] = static_cast<const double*>(p)[i];
        break;
      case ScalarType::kI32:
        out[i] = static_cast<const int32_t*>(p)[i];
        break;
      case ScalarType::kI64:
        out[i] = static_cast<double>(static_cast<const int64_t*>(p)[i]);
        break;
      case ScalarType::kF16:
      case ScalarType::kBF16:
      case ScalarType::kI8:
      case ScalarType::kU8:
      case ScalarType::kBool:
      case ScalarType::kI16:
      case ScalarType::kF8E4M3:
        throw Error("constant %" + v->name() + " of type " + scalar_type_name(v->dtype()) +
                    " cannot be a quantization scale or zero point (f32, f64, i32 or i64)");
    }
  }
  return out;
}

/// The scale operand as an f32 tensor of `rank` 0 (per-tensor) or 1 (per-channel).
Tensor* scale_operand(ConversionContext& ctx, const Node& node, size_t i, int rank) {
  std::vector<float> values;
  std::vector<int64_t> dims;
  if (node.arg_is_scalar(i)) {
    values.push_back(static_cast<float>(node.arg_double(i)));
  } else {
    const Value* v = node.arg_tensor(i);
    if (!v->is_constant()) {
      Tensor* t = ctx.cast(ctx.tensor(v), DataType::kF32, ctx.layer_name(node, "scale"));
      if (rank == 0 && t->rank() != 0) {
        t = ctx.net().add_reshape(t, {}, ctx.layer_name(node, "scale"))->output();
      }
      return t;
    }
    for (double d : constant_values(v)) values.push_back(static_cast<float>(d));
  }
  if (rank == 1) dims.push_back(static_cast<int64_t>(values.size()));
  return ctx.net()
      .add_constant(engine::Weights::from_vector(DataType::kF32, dims, values),
                    ctx.layer_name(node, "scale"))
      ->output();
}

/// The zero point as an i32 tensor shaped like the scale, or nullptr when it is absent or
/// a constant zero everywhere (a symmetric quantization).
Tensor* zero_point_operand(ConversionContext& ctx, const Node& node, size_t i, int rank) {
  if (node.arg_is_none(i)) return nullptr;
  std::vector<int32_t> values;
  if (node.arg_is_scalar(i)) {
    values.push_back(static_cast<int32_t>(node.arg_int(i)));
  } else {
    const Value* v = node.arg_tensor(i);
    if (!v->is_constant()) {
      Tensor* t = ctx.cast(ctx.tensor(v), DataType::kI32, ctx.layer_name(node, "zero_point"));
      if (rank == 0 && t->rank() != 0) {
        t = ctx.net().add_reshape(t, {}, ctx.layer_name(node, "zero_point"))->output();
      }
      return t;
    }
    for (double d : constant_values(v)) values.push_back(static_cast<int32_t>(d));
  }
  bool all_zero = true;
  for (int32_t z : values) all_zero = all_zero && z == 0;
  if (all_zero) return nullptr;
  std::vector<int64_t> dims;
  if (rank == 1) dims.push_back(static_cast<int64_t>(values.size()));
  return ctx.net()
      .add_constant(engine::Weights::from_vector(DataType::kI32, dims, values),
                    ctx.layer_name(node, "zero_point"))
      ->output();
}

/// Why a scale or zero-point argument cannot be converted, if it cannot.
Reason check_param(const Node& node, size_t i, const char* what) {
  if (node.arg_is_none(i) || node.arg_is_scalar(i)) return std::nullopt;
  const Value* v = node.arg_tensor(i);
  const ScalarType t = v->dtype();
  if (v->is_constant()) {
    if (t == ScalarType::kF32 || t == ScalarType::kF64 || t == ScalarType::kI32 ||
        t == ScalarType::kI64) {
      return std::nullopt;
    }
    return std::string(what) + " is a " + scalar_type_name(t) + " constant (f32, f64, i32 or i64)";
  }
  if (t == ScalarType::kF64 || t == ScalarType::kI16 || t == ScalarType::kF8E4M3) {
    return std::string("a computed ") + what + " of type " + scalar_type_name(t) +
           " (f32 or an integer type; make it a constant or f32)";
  }
  return std::nullopt;
}

/// The quantized engine type of the node's `dtype` argument, if the engine has it.
Reason check_quantized_dtype(const Node& node, size_t i) {
  const auto t = node.arg_scalar_type(i);
  if (t && (*t == ScalarType::kI8 || *t == ScalarType::kU8 || *t == ScalarType::kF8E4M3)) {
    return std::nullopt;
  }
  return std::string("quantized dtype ") + (t ? scalar_type_name(*t) : "?") +
         " (Ember's Quantize/Dequantize layers take int8, uint8 and float8_e4m3fn)";
}

Reason validate_per_tensor(const Node& node, const CompileSettings&) {
  using A = PerTensorArgs;
  if (auto r = check_quantized_dtype(node, A::dtype)) return r;
  if (auto r = check_param(node, A::scale, "scale")) return r;
  if (auto r = check_param(node, A::zero_point, "zero_point")) return r;
  return std::nullopt;
}

Reason validate_per_channel(const Node& node, const CompileSettings&) {
  using A = PerChannelArgs;
  if (auto r = check_quantized_dtype(node, A::dtype)) return r;
  if (node.arg_scalar_type(A::dtype) == ScalarType::kF8E4M3) {
    return std::string("per-channel float8 quantization (FP8 scales are per-tensor)");
  }
  if (auto r = check_param(node, A::scales, "scales")) return r;
  if (auto r = check_param(node, A::zero_points, "zero_points")) return r;
  return std::nullopt;
}

/// The channel axis, negative values counted from the end as PyTorch does.
int64_t channel_axis(const Node& node, int rank) {
  int64_t axis = node.arg_int(PerChannelArgs::axis);
  if (axis < 0) axis += rank;
  return axis;
}

/// Adds the Quantize layer of a quantized_decomposed node. For float8, PyTorch's integer
/// rounding and clamp come first (see the file comment).
Tensor* quantize(ConversionContext& ctx, const Node& node, Tensor* x, Tensor* scale,
                 Tensor* zero_point, engine::QuantizeParams p) {
  auto& net = ctx.net();
  if (p.to != DataType::kF8E4M3) {
    return net.add_quantize(x, scale, zero_point, p, ctx.layer_name(node))->output();
  }
  x = ctx.cast(x, DataType::kF32, ctx.layer_name(node, "f32"));
  Tensor* inv =
      net.add_unary(scale, engine::UnaryOp::kReciprocal, ctx.layer_name(node, "inv"))->output();
  if (p.per_channel) {
    engine::Shape shape(static_cast<size_t>(x->rank()), engine::DimExpr(1));
    shape[p.axis] = inv->shape()[0];
    inv = net.add_reshape(inv, shape, ctx.layer_name(node, "inv"))->output();
  }
  Tensor* t = net.add_elementwise(x, inv, engine::ElementWiseOp::kProd, ctx.layer_name(node, "div"))
                  ->output();
  t = net.add_unary(t, engine::UnaryOp::kRound, ctx.layer_name(node, "round"))->output();
  t = net.add_activation(t, engine::ActivationType::kClip, static_cast<double>(p.quant_min),
                         static_cast<double>(p.quant_max), ctx.layer_name(node, "clamp"))
          ->output();
  engine::QuantizeParams cast = p;
  cast.per_channel = false;
  cast.axis = 0;
  return net.add_quantize(t, ctx.scalar(1.0, DataType::kF32), nullptr, cast, ctx.layer_name(node))
      ->output();
}

DataType out_dtype(ConversionContext& ctx, const Node& node, size_t i) {
  if (node.arg_is_none(i)) return DataType::kF32;
  return ctx.engine_dtype(*node.arg_scalar_type(i));
}

}  // namespace

EMBER_CONVERTER(quantize_per_tensor,
                ({"quantized_decomposed::quantize_per_tensor",
                  "quantized_decomposed::quantize_per_tensor.tensor"}),
                true, validate_per_tensor) {
  using A = PerTensorArgs;
  engine::QuantizeParams p;
  p.to = ctx.engine_dtype(*node.arg_scalar_type(A::dtype));
  p.quant_min = node.arg_int(A::quant_min);
  p.quant_max = node.arg_int(A::quant_max);
  Tensor* x = ctx.input(node, A::input);
  Tensor* zp = zero_point_operand(ctx, node, A::zero_point, 0);
  if (p.to == DataType::kF8E4M3 && zp != nullptr) {
    throw Error(node.describe() +
                ": a float8 quantization with a nonzero zero_point (FP8 "
                "quantization is symmetric)");
  }
  ctx.set_output(node, 0, quantize(ctx, node, x, scale_operand(ctx, node, A::scale, 0), zp, p));
}

EMBER_CONVERTER(dequantize_per_tensor,
                ({"quantized_decomposed::dequantize_per_tensor",
                  "quantized_decomposed::dequantize_per_tensor.tensor"}),
                true, validate_per_tensor) {
  using A = PerTensorArgs;
  engine::DequantizeParams p;
  p.to = out_dtype(ctx, node, A::out_dtype);
  Tensor* q = ctx.input(node, A::input);
  Tensor* zp = zero_point_operand(ctx, node, A::zero_point, 0);
  if (q->dtype() == DataType::kF8E4M3 && zp != nullptr) {
    throw Error(node.describe() + ": a float8 dequantization with a nonzero zero_point");
  }
  ctx.set_output(
      node, 0,
      ctx.net()
          .add_dequantize(q, scale_operand(ctx, node, A::scale, 0), zp, p, ctx.layer_name(node))
          ->output());
}

EMBER_CONVERTER(quantize_per_channel, {"quantized_decomposed::quantize_per_channel"}, true,
                validate_per_channel) {
  using A = PerChannelArgs;
  Tensor* x = ctx.input(node, A::input);
  engine::QuantizeParams p;
  p.to = ctx.engine_dtype(*node.arg_scalar_type(A::dtype));
  p.per_channel = true;
  p.axis = channel_axis(node, x->rank());
  p.quant_min = node.arg_int(A::quant_min);
  p.quant_max = node.arg_int(A::quant_max);
  ctx.set_output(node, 0,
                 quantize(ctx, node, x, scale_operand(ctx, node, A::scales, 1),
                          zero_point_operand(ctx, node, A::zero_points, 1), p));
}

EMBER_CONVERTER(dequantize_per_channel, {"quantized_decomposed::dequantize_per_channel"}, true,
                validate_per_channel) {
  using A = PerChannelArgs;
  Tensor* q = ctx.input(node, A::input);
  engine::DequantizeParams p;
  p.to = out_dtype(ctx, node, A::out_dtype);
  p.per_channel = true;
  p.axis = channel_axis(node, q->rank());
  ctx.set_output(
      node, 0,
      ctx.net()
          .add_dequantize(q, scale_operand(ctx, node, A::scales, 1),
                          zero_point_operand(ctx, node, A::zero_points, 1), p, ctx.layer_name(node))
          ->output());
}

EMBER_CONVERTER(quantize_fp8, {"ember::quantize_fp8"}, true, nullptr) {
  using A = EmberFp8Args;
  engine::QuantizeParams p;
  p.to = DataType::kF8E4M3;
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_quantize(ctx.input(node, A::input), scale_operand(ctx, node, A::scale, 0),
                                   nullptr, p, ctx.layer_name(node))
                     ->output());
}

EMBER_CONVERTER(dequantize_fp8, {"ember::dequantize_fp8"}, true, nullptr) {
  using A = EmberFp8Args;
  engine::DequantizeParams p;
  p.to = out_dtype(ctx, node, A::out_dtype);
  ctx.set_output(
      node, 0,
      ctx.net()
          .add_dequantize(ctx.input(node, A::input), scale_operand(ctx, node, A::scale, 0), nullptr,
                          p, ctx.layer_name(node))
          ->output());
}

}  // namespace ember::compiler
