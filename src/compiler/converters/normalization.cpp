// Normalization family: batch norm (inference forms), instance norm (through the batch-norm
// op PyTorch lowers it to, and aten::instance_norm), layer norm and group norm.
//
// Batch norm with running statistics is x * scale + shift per channel, with scale and shift
// computed from the statistics by layers the builder folds when they are constants. Layer,
// group and instance norm use the engine's Normalization layer. The statistics outputs of the
// native_* ops (mean, rstd) are computed with Reduce layers; the builder drops them when
// nothing reads them.
#include <cmath>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::NormalizationType;
using engine::ReduceOp;
using engine::Tensor;
using engine::UnaryOp;

/// aten::_native_batch_norm_legit_no_training(input, weight?, bias?, running_mean,
/// running_var, momentum, eps) -> (out, save_mean, save_rstd).
struct BatchNormNoTrainingArgs {
  enum {
    input = 0,
    weight = 1,
    bias = 2,
    running_mean = 3,
    running_var = 4,
    momentum = 5,
    eps = 6
  };
};
/// aten::native_batch_norm / aten::batch_norm(input, weight?, bias?, running_mean?,
/// running_var?, training, momentum, eps[, cudnn_enabled]).
struct BatchNormArgs {
  enum {
    input = 0,
    weight = 1,
    bias = 2,
    running_mean = 3,
    running_var = 4,
    training = 5,
    momentum = 6,
    eps = 7
  };
};
/// aten::_native_batch_norm_legit.no_stats(input, weight?, bias?, training, momentum, eps):
/// batch statistics, no running ones (what instance norm lowers to).
struct BatchNormNoStatsArgs {
  enum { input = 0, weight = 1, bias = 2, training = 3, momentum = 4, eps = 5 };
};
/// aten::instance_norm(input, weight?, bias?, running_mean?, running_var?, use_input_stats,
/// momentum, eps, cudnn_enabled).
struct InstanceNormArgs {
  enum {
    input = 0,
    weight = 1,
    bias = 2,
    running_mean = 3,
    running_var = 4,
    use_input_stats = 5,
    momentum = 6,
    eps = 7
  };
};
/// aten::native_layer_norm / aten::layer_norm(input, normalized_shape, weight?, bias?, eps).
struct LayerNormArgs {
  enum { input = 0, normalized_shape = 1, weight = 2, bias = 3, eps = 4 };
};
/// aten::rms_norm(input, normalized_shape, weight?, eps?).
struct RmsNormArgs {
  enum { input = 0, normalized_shape = 1, weight = 2, eps = 3 };
};
/// aten::native_group_norm(input, weight?, bias?, N, C, HxW, group, eps).
struct NativeGroupNormArgs {
  enum { input = 0, weight = 1, bias = 2, n = 3, c = 4, hxw = 5, group = 6, eps = 7 };
};
/// aten::group_norm(input, num_groups, weight?, bias?, eps, cudnn_enabled).
struct GroupNormArgs {
  enum { input = 0, num_groups = 1, weight = 2, bias = 3, eps = 4 };
};

Reason validate_float_input(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(0);
  if (!scalar_type_is_float(x->dtype())) {
    return std::string("normalization needs a float input, got ") + scalar_type_name(x->dtype());
  }
  if (x->rank() < 2) return "normalization needs an input of rank >= 2";
  return std::nullopt;
}

Tensor* elementwise(ConversionContext& ctx, const Node& node, Tensor* a, Tensor* b,
                    ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

/// Optional tensor argument `i` cast to `dt`, or nullptr when None.
Tensor* optional_input(ConversionContext& ctx, const Node& node, size_t i, DataType dt) {
  const Value* v = node.arg_optional_tensor(i);
  return v == nullptr ? nullptr : ctx.cast(ctx.tensor(v), dt);
}

/// A per-channel vector [C] reshaped to [C, 1, ..., 1] so it broadcasts against x [N, C, *].
Tensor* per_channel(ConversionContext& ctx, const Node& node, Tensor* v, int x_rank) {
  engine::Shape shape{v->shape()[0]};
  shape.resize(static_cast<size_t>(x_rank - 1), DimExpr(1));
  return ctx.net().add_reshape(v, shape, ctx.layer_name(node, "per_channel"))->output();
}

/// Every axis of a rank-`rank` tensor from `first` on.
std::vector<int64_t> axes_from(int64_t first, int rank) {
  std::vector<int64_t> axes;
  for (int64_t a = first; a < rank; ++a) axes.push_back(a);
  return axes;
}

/// Mean and 1/sqrt(var + eps) of f32 `x` over `axes` (kept as size-1 dims), biased variance.
struct Moments {
  Tensor* mean;
  Tensor* rstd;
};
Moments moments(ConversionContext& ctx, const Node& node, Tensor* x,
                const std::vector<int64_t>& axes, double eps) {
  auto& net = ctx.net();
  Tensor* mean =
      net.add_reduce(x, ReduceOp::kAvg, axes, true, ctx.layer_name(node, "mean"))->output();
  Tensor* d = elementwise(ctx, node, x, mean, ElementWiseOp::kSub);
  Tensor* var = net.add_reduce(elementwise(ctx, node, d, d, ElementWiseOp::kProd), ReduceOp::kAvg,
                               axes, true, ctx.layer_name(node, "var"))
                    ->output();
  var = elementwise(ctx, node, var, ctx.scalar(eps, DataType::kF32, var->rank()),
                    ElementWiseOp::kSum);
  Tensor* rstd = net.add_unary(var, UnaryOp::kRsqrt, ctx.layer_name(node, "rstd"))->output();
  return {mean, rstd};
}

/// Sets output `i` when the node has it (the statistics outputs are optional in some forms).
void set_stat_output(ConversionContext& ctx, const Node& node, size_t i, Tensor* t) {
  if (i < node.outputs().size()) ctx.set_output(node, i, t);
}

/// Sets output `i` (when present) to an empty tensor: PyTorch returns empty save_mean/save_rstd
/// from inference-mode batch norm.
void set_empty_output(ConversionContext& ctx, const Node& node, size_t i) {
  if (i >= node.outputs().size()) return;
  const Value* v = node.output(i);
  // Nothing reads it (the importer names only outputs that are read): no layer needed. This
  // matters on CUDA, where PyTorch's meta function gives these outputs shape [C], not [0].
  if (!node.output_is_read(i)) return;
  const DimExpr numel = engine::shape_numel(v->shape());
  if (!numel.is_constant() || numel.constant() != 0) {
    throw Error(node.describe() + ": output " + std::to_string(i) + " has shape " +
                engine::shape_to_string(v->shape()) + " where an empty tensor was expected");
  }
  engine::FillParams p;
  p.shape = v->shape();
  p.dtype = ctx.engine_dtype(v->dtype());
  ctx.set_output(node, i, ctx.net().add_fill(p, ctx.layer_name(node, "empty"))->output());
}

/// Inference batch norm: (x - mean) / sqrt(var + eps) * w + b as x * scale + shift. scale and
/// shift are computed in f32 (constants fold) and applied in x's dtype, so that half-precision
/// activations are not cast around and the builder can fuse the affine into the producer.
Tensor* batch_norm_eval(ConversionContext& ctx, const Node& node, size_t weight, size_t bias,
                        size_t mean, size_t var, double eps) {
  const DataType f32 = DataType::kF32;
  Tensor* x = ctx.input(node, 0);
  Tensor* rstd = elementwise(ctx, node, ctx.cast(ctx.input(node, var), f32),
                             ctx.scalar(eps, f32, 1), ElementWiseOp::kSum);
  rstd = ctx.net().add_unary(rstd, UnaryOp::kRsqrt, ctx.layer_name(node, "rstd"))->output();
  Tensor* scale = rstd;
  if (Tensor* w = optional_input(ctx, node, weight, f32)) {
    scale = elementwise(ctx, node, w, rstd, ElementWiseOp::kProd);
  }
  Tensor* shift =
      elementwise(ctx, node, ctx.cast(ctx.input(node, mean), f32), scale, ElementWiseOp::kProd);
  if (Tensor* b = optional_input(ctx, node, bias, f32)) {
    shift = elementwise(ctx, node, b, shift, ElementWiseOp::kSub);
  } else {
    shift = ctx.net().add_unary(shift, UnaryOp::kNeg, ctx.layer_name(node))->output();
  }
  scale = per_channel(ctx, node, ctx.cast(scale, x->dtype()), x->rank());
  shift = per_channel(ctx, node, ctx.cast(shift, x->dtype()), x->rank());
  Tensor* y = elementwise(ctx, node, x, scale, ElementWiseOp::kProd);
  return elementwise(ctx, node, y, shift, ElementWiseOp::kSum);
}

/// Normalization with statistics over every dim but the channel dim 1 (batch norm in training
/// mode, i.e. with batch statistics; instance norm reaches it as a [1, N*C, *] view). Returns
/// the output and the per-channel mean and rstd [C].
struct Normalized {
  Tensor* out;
  Tensor* mean;
  Tensor* rstd;
};
Normalized batch_stats_norm(ConversionContext& ctx, const Node& node, size_t weight, size_t bias,
                            double eps) {
  const DataType f32 = DataType::kF32;
  Tensor* x = ctx.cast(ctx.input(node, 0), f32);
  std::vector<int64_t> axes{0};
  for (int64_t a = 2; a < x->rank(); ++a) axes.push_back(a);
  const Moments m = moments(ctx, node, x, axes, eps);
  Tensor* y = elementwise(ctx, node, elementwise(ctx, node, x, m.mean, ElementWiseOp::kSub), m.rstd,
                          ElementWiseOp::kProd);
  if (Tensor* w = optional_input(ctx, node, weight, f32)) {
    y = elementwise(ctx, node, y, per_channel(ctx, node, w, x->rank()), ElementWiseOp::kProd);
  }
  if (Tensor* b = optional_input(ctx, node, bias, f32)) {
    y = elementwise(ctx, node, y, per_channel(ctx, node, b, x->rank()), ElementWiseOp::kSum);
  }
  const engine::Shape channels{x->shape()[1]};
  auto flat = [&](Tensor* t) {
    return ctx.net().add_reshape(t, channels, ctx.layer_name(node, "stat"))->output();
  };
  return {y, flat(m.mean), flat(m.rstd)};
}

Reason validate_batch_norm_eval(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_input(node, s)) return r;
  if (node.arg_bool_or(BatchNormArgs::training, false)) {
    return "batch norm in training mode (batch statistics, running-stat updates) is not "
           "supported; call model.eval() before compiling";
  }
  if (node.arg_optional_tensor(BatchNormArgs::running_mean) == nullptr ||
      node.arg_optional_tensor(BatchNormArgs::running_var) == nullptr) {
    return "batch norm without running statistics is not supported";
  }
  return std::nullopt;
}

Reason validate_no_stats(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_input(node, s)) return r;
  if (!node.arg_bool_or(BatchNormNoStatsArgs::training, true)) {
    return "batch norm without statistics needs training=True (batch statistics)";
  }
  return std::nullopt;
}

Reason validate_instance_norm(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_float_input(node, s)) return r;
  if (!node.arg_bool(InstanceNormArgs::use_input_stats) &&
      (node.arg_optional_tensor(InstanceNormArgs::running_mean) == nullptr ||
       node.arg_optional_tensor(InstanceNormArgs::running_var) == nullptr)) {
    return "instance norm with use_input_stats=False needs running statistics";
  }
  return std::nullopt;
}

Reason validate_layer_norm(const Node& node, const CompileSettings& s) {
  const Value* x = node.arg_tensor(0);
  if (!scalar_type_is_float(x->dtype())) {
    return std::string("layer norm needs a float input, got ") + scalar_type_name(x->dtype());
  }
  const size_t n = node.arg_dims(LayerNormArgs::normalized_shape).size();
  if (n == 0 || static_cast<int>(n) > x->rank()) {
    return "layer norm needs 1 to rank(input) normalized dims, got " + std::to_string(n);
  }
  return std::nullopt;
}

/// torch.finfo(t).eps, rms_norm's default epsilon.
double machine_epsilon(ScalarType t) {
  switch (t) {
    case ScalarType::kF16:
      return 0.0009765625;
    case ScalarType::kBF16:
      return 0.0078125;
    case ScalarType::kF64:
      return 2.220446049250313e-16;
    default:
      return 1.1920928955078125e-07;
  }
}

}  // namespace

EMBER_CONVERTER(batch_norm_no_training, {"aten::_native_batch_norm_legit_no_training"}, true,
                validate_float_input) {
  using A = BatchNormNoTrainingArgs;
  ctx.set_output(node, 0,
                 batch_norm_eval(ctx, node, A::weight, A::bias, A::running_mean, A::running_var,
                                 node.arg_double(A::eps)));
  set_empty_output(ctx, node, 1);
  set_empty_output(ctx, node, 2);
}

EMBER_CONVERTER(batch_norm, ({"aten::native_batch_norm", "aten::batch_norm"}), true,
                validate_batch_norm_eval) {
  using A = BatchNormArgs;
  ctx.set_output(node, 0,
                 batch_norm_eval(ctx, node, A::weight, A::bias, A::running_mean, A::running_var,
                                 node.arg_double(A::eps)));
  set_empty_output(ctx, node, 1);
  set_empty_output(ctx, node, 2);
}

EMBER_CONVERTER(batch_norm_no_stats, {"aten::_native_batch_norm_legit.no_stats"}, true,
                validate_no_stats) {
  using A = BatchNormNoStatsArgs;
  const Normalized n = batch_stats_norm(ctx, node, A::weight, A::bias, node.arg_double(A::eps));
  ctx.set_output(node, 0, n.out);
  set_stat_output(ctx, node, 1, n.mean);
  set_stat_output(ctx, node, 2, n.rstd);
}

EMBER_CONVERTER(instance_norm, {"aten::instance_norm"}, true, validate_instance_norm) {
  using A = InstanceNormArgs;
  const double eps = node.arg_double(A::eps);
  if (!node.arg_bool(A::use_input_stats)) {
    ctx.set_output(
        node, 0,
        batch_norm_eval(ctx, node, A::weight, A::bias, A::running_mean, A::running_var, eps));
    return;
  }
  engine::NormalizationParams p;
  p.type = NormalizationType::kInstance;
  p.epsilon = eps;
  Tensor* x = ctx.input(node, A::input);
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_normalization(x, optional_input(ctx, node, A::weight, x->dtype()),
                                        optional_input(ctx, node, A::bias, x->dtype()), p,
                                        ctx.layer_name(node))
                     ->output());
}

EMBER_CONVERTER(layer_norm, ({"aten::native_layer_norm", "aten::layer_norm"}), true,
                validate_layer_norm) {
  using A = LayerNormArgs;
  Tensor* x = ctx.input(node, A::input);
  const int rank = x->rank();
  const int64_t axis = rank - static_cast<int64_t>(node.arg_dims(A::normalized_shape).size());
  const double eps = node.arg_double_or(A::eps, 1e-5);
  engine::NormalizationParams p;
  p.type = NormalizationType::kLayer;
  p.axis = axis;
  p.epsilon = eps;
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_normalization(x, optional_input(ctx, node, A::weight, x->dtype()),
                                        optional_input(ctx, node, A::bias, x->dtype()), p,
                                        ctx.layer_name(node))
                     ->output());
  if (node.outputs().size() > 1) {
    // mean and rstd have the input's shape with the normalized dims kept as 1.
    const Moments m = moments(ctx, node, ctx.cast(x, DataType::kF32), axes_from(axis, rank), eps);
    set_stat_output(ctx, node, 1, m.mean);
    set_stat_output(ctx, node, 2, m.rstd);
  }
}

EMBER_CONVERTER(group_norm, ({"aten::native_group_norm", "aten::group_norm"}), true,
                validate_float_input) {
  const bool native = node.op() == "aten::native_group_norm";
  const size_t weight =
      native ? size_t{NativeGroupNormArgs::weight} : size_t{GroupNormArgs::weight};
  const size_t bias = native ? size_t{NativeGroupNormArgs::bias} : size_t{GroupNormArgs::bias};
  const int64_t groups =
      native ? node.arg_int(NativeGroupNormArgs::group) : node.arg_int(GroupNormArgs::num_groups);
  const double eps = native ? node.arg_double(NativeGroupNormArgs::eps)
                            : node.arg_double_or(GroupNormArgs::eps, 1e-5);
  Tensor* x = ctx.input(node, 0);
  engine::NormalizationParams p;
  p.type = NormalizationType::kGroup;
  p.num_groups = groups;
  p.epsilon = eps;
  ctx.set_output(
      node, 0,
      ctx.net()
          .add_normalization(x, optional_input(ctx, node, weight, x->dtype()),
                             optional_input(ctx, node, bias, x->dtype()), p, ctx.layer_name(node))
          ->output());
  if (node.outputs().size() > 1) {
    // mean and rstd are [N, groups]: statistics of x viewed as [N, groups, -1].
    Tensor* g = ctx.net()
                    .add_reshape(ctx.cast(x, DataType::kF32), {x->shape()[0], groups, -1},
                                 ctx.layer_name(node, "groups"))
                    ->output();
    const Moments m = moments(ctx, node, g, {2}, eps);
    const engine::Shape stat_shape{x->shape()[0], groups};
    auto flat = [&](Tensor* t) {
      return ctx.net().add_reshape(t, stat_shape, ctx.layer_name(node, "stat"))->output();
    };
    set_stat_output(ctx, node, 1, flat(m.mean));
    set_stat_output(ctx, node, 2, flat(m.rstd));
  }
}

// x / sqrt(mean(x^2 over the normalized dims) + eps) * weight: one Normalization of type kRms
// on the input in its own type (the layer computes in f32 and rounds once, as the layer norm).
EMBER_CONVERTER(rms_norm, {"aten::rms_norm"}, true, validate_layer_norm) {
  using A = RmsNormArgs;
  const Value* in = node.arg_tensor(A::input);
  Tensor* x = ctx.input(node, A::input);
  const int rank = x->rank();
  engine::NormalizationParams p;
  p.type = NormalizationType::kRms;
  p.axis = rank - static_cast<int64_t>(node.arg_dims(A::normalized_shape).size());
  p.epsilon = node.arg_double_or(A::eps, machine_epsilon(in->dtype()));
  ctx.set_output(node, 0,
                 ctx.net()
                     .add_normalization(x, optional_input(ctx, node, A::weight, x->dtype()),
                                        nullptr, p, ctx.layer_name(node))
                     ->output());
}

}  // namespace ember::compiler
