// Unary pointwise aten ops: math functions, rounding, sign and the float classification tests.
//
// Math functions of an integer tensor return the default float dtype in PyTorch; the output
// Value says which, so the input is cast to the output dtype first. Ops the engine has no layer
// for (expm1, log1p, log2, log10, trunc) are composed in f32 for half types (torch's opmath) so
// the result is rounded once.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::Tensor;
using engine::UnaryOp;

struct UnaryArgs {
  enum { self = 0 };
};
struct RoundArgs {
  enum { self = 0, decimals = 1 };
};

DataType out_dtype(ConversionContext& ctx, const Node& node) {
  return ctx.engine_dtype(node.output(0)->dtype());
}

/// The dtype multi-layer float math runs in (torch's opmath type).
DataType opmath(DataType t) {
  return t == DataType::kF16 || t == DataType::kBF16 ? DataType::kF32 : t;
}

Tensor* un(ConversionContext& ctx, const Node& node, Tensor* x, UnaryOp op) {
  return ctx.net().add_unary(x, op, ctx.layer_name(node))->output();
}

Tensor* ew(ConversionContext& ctx, const Node& node, Tensor* a, Tensor* b, ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

Tensor* select(ConversionContext& ctx, const Node& node, Tensor* cond, Tensor* a, Tensor* b) {
  return ctx.net().add_select(cond, a, b, ctx.layer_name(node))->output();
}

Tensor* equals(ConversionContext& ctx, const Node& node, Tensor* x, double v) {
  return ew(ctx, node, x, ctx.scalar(v, x->dtype()), ElementWiseOp::kEqual);
}

/// The input cast to the output dtype: a float for math functions of integer tensors.
Tensor* input_as_output(ConversionContext& ctx, const Node& node, DataType t) {
  return ctx.cast(ctx.input(node, UnaryArgs::self), t);
}

Reason validate_float_output(const Node& node, const CompileSettings&) {
  if (!scalar_type_is_float(node.output(0)->dtype())) {
    return node.op() + " with a " + scalar_type_name(node.output(0)->dtype()) +
           " result is not supported (float results only)";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- one-layer math functions

const std::vector<std::pair<std::string, UnaryOp>>& float_unary_ops() {
  static const std::vector<std::pair<std::string, UnaryOp>> ops = {
      {"aten::exp", UnaryOp::kExp},         {"aten::log", UnaryOp::kLog},
      {"aten::sqrt", UnaryOp::kSqrt},       {"aten::rsqrt", UnaryOp::kRsqrt},
      {"aten::reciprocal", UnaryOp::kReciprocal},
      {"aten::sin", UnaryOp::kSin},         {"aten::cos", UnaryOp::kCos},
      {"aten::tan", UnaryOp::kTan},         {"aten::asin", UnaryOp::kAsin},
      {"aten::acos", UnaryOp::kAcos},       {"aten::atan", UnaryOp::kAtan},
      {"aten::sinh", UnaryOp::kSinh},       {"aten::cosh", UnaryOp::kCosh},
      {"aten::asinh", UnaryOp::kAsinh},     {"aten::acosh", UnaryOp::kAcosh},
      {"aten::atanh", UnaryOp::kAtanh},     {"aten::erf", UnaryOp::kErf},
  };
  return ops;
}

std::vector<std::string> float_unary_keys() {
  std::vector<std::string> keys;
  for (const auto& [op, u] : float_unary_ops()) keys.push_back(op);
  return keys;
}

void convert_float_unary(ConversionContext& ctx, const Node& node) {
  for (const auto& [op, u] : float_unary_ops()) {
    if (op == node.op()) {
      return ctx.set_output(node, 0, un(ctx, node, input_as_output(ctx, node, out_dtype(ctx, node)), u));
    }
  }
  throw Error(node.describe() + ": not a float unary op");
}

const ConverterRegistration register_float_unary(float_unary_keys(), &convert_float_unary,
                                                 validate_float_output, true, 0, __FILE__);

// ---------------------------------------------------------------- composed math functions

EMBER_CONVERTER(expm1, ({"aten::expm1"}), true, validate_float_output) {
  // Kahan: with u = exp(x), expm1(x) = (u - 1) * x / log(u); exact where u - 1 cancels.
  Tensor* x = input_as_output(ctx, node, opmath(out_dtype(ctx, node)));
  Tensor* u = un(ctx, node, x, UnaryOp::kExp);
  Tensor* d = ew(ctx, node, u, ctx.scalar(1.0, x->dtype()), ElementWiseOp::kSub);
  // d * (x / log(u)): the quotient is near 1, so nothing overflows before d does.
  Tensor* r = ew(ctx, node, d,
                 ew(ctx, node, x, un(ctx, node, u, UnaryOp::kLog), ElementWiseOp::kDiv),
                 ElementWiseOp::kProd);
  r = select(ctx, node, equals(ctx, node, d, 0.0), x, r);    // u == 1: expm1(x) = x
  r = select(ctx, node, equals(ctx, node, d, -1.0), d, r);   // u == 0: -1
  r = select(ctx, node, un(ctx, node, u, UnaryOp::kIsInf), u, r);  // overflow: inf
  ctx.set_output(node, 0, r);
}

EMBER_CONVERTER(log1p, ({"aten::log1p"}), true, validate_float_output) {
  // Goldberg: with u = 1 + x, log1p(x) = log(u) * x / (u - 1); exact where 1 + x rounds.
  Tensor* x = input_as_output(ctx, node, opmath(out_dtype(ctx, node)));
  Tensor* u = ew(ctx, node, x, ctx.scalar(1.0, x->dtype()), ElementWiseOp::kSum);
  Tensor* lu = un(ctx, node, u, UnaryOp::kLog);
  // lu * (x / (u - 1)): the quotient is near 1, so large x does not overflow.
  Tensor* r = ew(ctx, node, lu,
                 ew(ctx, node, x, ew(ctx, node, u, ctx.scalar(1.0, x->dtype()), ElementWiseOp::kSub),
                    ElementWiseOp::kDiv),
                 ElementWiseOp::kProd);
  r = select(ctx, node, equals(ctx, node, u, 1.0), x, r);
  r = select(ctx, node, un(ctx, node, u, UnaryOp::kIsInf), lu, r);  // x = +inf
  ctx.set_output(node, 0, r);
}

void convert_log_base(ConversionContext& ctx, const Node& node, double base) {
  Tensor* x = input_as_output(ctx, node, opmath(out_dtype(ctx, node)));
  ctx.set_output(node, 0, ew(ctx, node, un(ctx, node, x, UnaryOp::kLog),
                             ctx.scalar(std::log(base), x->dtype()), ElementWiseOp::kDiv));
}

EMBER_CONVERTER(log2, ({"aten::log2"}), true, validate_float_output) {
  convert_log_base(ctx, node, 2.0);
}

EMBER_CONVERTER(log10, ({"aten::log10"}), true, validate_float_output) {
  convert_log_base(ctx, node, 10.0);
}

EMBER_CONVERTER(exp2, ({"aten::exp2"}), true, validate_float_output) {
  Tensor* x = input_as_output(ctx, node, out_dtype(ctx, node));
  ctx.set_output(node, 0, ew(ctx, node, ctx.scalar(2.0, x->dtype()), x, ElementWiseOp::kPow));
}

// ---------------------------------------------------------------- sign, abs, neg, square

Reason validate_not_bool(const Node& node, const CompileSettings&) {
  if (node.arg_tensor(UnaryArgs::self)->dtype() == ScalarType::kBool) {
    return node.op() + " of a bool tensor is not supported";
  }
  return std::nullopt;
}

EMBER_CONVERTER(abs, ({"aten::abs"}), true, validate_not_bool) {
  ctx.set_output(node, 0, un(ctx, node, ctx.input(node, UnaryArgs::self), UnaryOp::kAbs));
}

EMBER_CONVERTER(neg, ({"aten::neg"}), true, validate_not_bool) {
  ctx.set_output(node, 0, un(ctx, node, ctx.input(node, UnaryArgs::self), UnaryOp::kNeg));
}

EMBER_CONVERTER(sign, ({"aten::sign", "aten::sgn"}), true, nullptr) {
  Tensor* x = ctx.input(node, UnaryArgs::self);
  // sign of a bool is the bool itself.
  ctx.set_output(node, 0, x->dtype() == DataType::kBool ? ctx.net().add_identity(x)->output()
                                                        : un(ctx, node, x, UnaryOp::kSign));
}

EMBER_CONVERTER(square, ({"aten::square"}), true, nullptr) {
  // square of a bool is an i64 (the output dtype says so).
  Tensor* x = input_as_output(ctx, node, out_dtype(ctx, node));
  ctx.set_output(node, 0, ew(ctx, node, x, x, ElementWiseOp::kProd));
}

// ---------------------------------------------------------------- rounding

/// Rounding of an integer tensor is the identity in PyTorch.
bool passes_through(ConversionContext& ctx, const Node& node) {
  Tensor* x = ctx.input(node, UnaryArgs::self);
  if (engine::dtype_is_float(x->dtype())) return false;
  ctx.set_output(node, 0, ctx.net().add_identity(x, ctx.layer_name(node))->output());
  return true;
}

Reason validate_round(const Node& node, const CompileSettings& s) {
  if (node.op() == "aten::round.decimals" && node.arg_int_or(RoundArgs::decimals, 0) != 0) {
    return "round with decimals != 0 is not supported";
  }
  return validate_not_bool(node, s);
}

EMBER_CONVERTER(ceil, ({"aten::ceil"}), true, validate_not_bool) {
  if (!passes_through(ctx, node)) {
    ctx.set_output(node, 0, un(ctx, node, ctx.input(node, UnaryArgs::self), UnaryOp::kCeil));
  }
}

EMBER_CONVERTER(floor, ({"aten::floor"}), true, validate_not_bool) {
  if (!passes_through(ctx, node)) {
    ctx.set_output(node, 0, un(ctx, node, ctx.input(node, UnaryArgs::self), UnaryOp::kFloor));
  }
}

EMBER_CONVERTER(round, ({"aten::round", "aten::round.decimals"}), true, validate_round) {
  if (!passes_through(ctx, node)) {
    ctx.set_output(node, 0, un(ctx, node, ctx.input(node, UnaryArgs::self), UnaryOp::kRound));
  }
}

/// trunc(x) = x < 0 ? ceil(x) : floor(x) (exact, so no opmath needed).
Tensor* float_trunc(ConversionContext& ctx, const Node& node, Tensor* x) {
  Tensor* negative = ew(ctx, node, x, ctx.scalar(0.0, x->dtype()), ElementWiseOp::kLess);
  return select(ctx, node, negative, un(ctx, node, x, UnaryOp::kCeil),
                un(ctx, node, x, UnaryOp::kFloor));
}

EMBER_CONVERTER(trunc, ({"aten::trunc", "aten::fix"}), true, validate_not_bool) {
  if (!passes_through(ctx, node)) {
    ctx.set_output(node, 0, float_trunc(ctx, node, ctx.input(node, UnaryArgs::self)));
  }
}

EMBER_CONVERTER(frac, ({"aten::frac"}), true, validate_float_output) {
  Tensor* x = ctx.input(node, UnaryArgs::self);
  ctx.set_output(node, 0, ew(ctx, node, x, float_trunc(ctx, node, x), ElementWiseOp::kSub));
}

// ---------------------------------------------------------------- classification

/// The input as a float tensor: integers are never inf or NaN, and f32 holds every one finitely.
Tensor* as_float(ConversionContext& ctx, const Node& node) {
  Tensor* x = ctx.input(node, UnaryArgs::self);
  return engine::dtype_is_float(x->dtype()) ? x : ctx.cast(x, DataType::kF32);
}

EMBER_CONVERTER(isinf, ({"aten::isinf"}), true, nullptr) {
  ctx.set_output(node, 0, un(ctx, node, as_float(ctx, node), UnaryOp::kIsInf));
}

EMBER_CONVERTER(isnan, ({"aten::isnan"}), true, nullptr) {
  ctx.set_output(node, 0, un(ctx, node, as_float(ctx, node), UnaryOp::kIsNan));
}

EMBER_CONVERTER(isfinite, ({"aten::isfinite"}), true, nullptr) {
  Tensor* x = as_float(ctx, node);
  Tensor* bad = ew(ctx, node, un(ctx, node, x, UnaryOp::kIsInf), un(ctx, node, x, UnaryOp::kIsNan),
                   ElementWiseOp::kOr);
  ctx.set_output(node, 0, un(ctx, node, bad, UnaryOp::kNot));
}

}  // namespace

}  // namespace ember::compiler
