// Binary pointwise aten ops: arithmetic, comparisons, logical ops, where/masked_fill, clamp.
//
// Type promotion: every output Value carries the dtype PyTorch computed, so arithmetic casts its
// operands to the output's engine dtype and works there. Comparisons output bool, so their
// compute dtype is torch.result_type of the operands, recomputed here (a Python scalar does not
// promote a tensor of its own category; a 0-d tensor promotes only across categories).
//
// Precision: PyTorch computes f16/bf16 ops in f32 and rounds once. One engine layer does the
// same, so single-layer ops stay in the half type; ops built from several layers (alpha,
// remainder, atan2, ...) and ops with a scalar the half type cannot hold exactly run in f32 and
// round once at the end (set_output casts).
#include <cmath>
#include <limits>

#include "ember/compiler/conversion.h"
#include "ember/engine/half.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::Tensor;
using engine::UnaryOp;

/// Argument positions shared by the binary schemas: (self, other[, alpha]).
struct BinaryArgs {
  enum { self = 0, other = 1, alpha = 2 };
};
struct DivModeArgs {
  enum { self = 0, other = 1, rounding_mode = 2 };
};
struct WhereArgs {
  enum { condition = 0, self = 1, other = 2 };
};
struct MaskedFillArgs {
  enum { self = 0, mask = 1, value = 2 };
};
struct ClampArgs {
  enum { self = 0, min = 1, max = 2 };
};
struct ClampOneArgs {
  enum { self = 0, bound = 1 };
};

DataType out_dtype(ConversionContext& ctx, const Node& node) {
  return ctx.engine_dtype(node.output(0)->dtype());
}

bool is_half(DataType t) { return t == DataType::kF16 || t == DataType::kBF16; }

/// The dtype multi-layer float math runs in (torch's opmath type).
DataType opmath(DataType t) { return is_half(t) ? DataType::kF32 : t; }

/// True when `v` survives a round trip through `t` (only half types can lose a scalar that
/// torch would keep in f32).
bool scalar_exact_in(double v, DataType t) {
  const auto f = static_cast<float>(v);
  if (t == DataType::kF16) return engine::f16_to_f32(engine::f32_to_f16(f)) == f;
  if (t == DataType::kBF16) return engine::bf16_to_f32(engine::f32_to_bf16(f)) == f;
  return true;
}

/// The dtype a single-layer op with output dtype `out` computes in: `out`, or f32 for a half
/// output when a scalar argument would be rounded by the half type.
DataType single_op_dtype(const Node& node, DataType out, std::initializer_list<size_t> args) {
  if (!is_half(out)) return out;
  for (size_t i : args) {
    if (node.arg_is_scalar(i) && !scalar_exact_in(node.arg_double(i), out)) return DataType::kF32;
  }
  return out;
}

Tensor* ew(ConversionContext& ctx, const Node& node, Tensor* a, Tensor* b, ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

Tensor* un(ConversionContext& ctx, const Node& node, Tensor* x, UnaryOp op) {
  return ctx.net().add_unary(x, op, ctx.layer_name(node))->output();
}

Tensor* select(ConversionContext& ctx, const Node& node, Tensor* cond, Tensor* a, Tensor* b) {
  return ctx.net().add_select(cond, a, b, ctx.layer_name(node))->output();
}

/// Rejects scalar arguments that are symbolic sizes (their value exists only at run time) and
/// the dtypes of `accepts`.
Reason no_symbolic_scalars(const Node& node) {
  for (size_t i = 0; i < node.num_args(); ++i) {
    if (std::holds_alternative<DimExpr>(node.args()[i])) {
      return "argument " + std::to_string(i) + " is a symbolic size (" +
             arg_to_string(node.args()[i]) + "); scalars must be constants";
    }
  }
  return std::nullopt;
}

Reason validate_numeric(const Node& node, const CompileSettings&) {
  if (node.output(0)->dtype() == ScalarType::kBool) {
    return node.op() + " with a bool result is not supported";
  }
  return no_symbolic_scalars(node);
}

Reason validate_any(const Node& node, const CompileSettings&) { return no_symbolic_scalars(node); }

// ---------------------------------------------------------------- type promotion

int category(ScalarType t) {
  if (t == ScalarType::kBool) return 0;
  return scalar_type_is_float(t) ? 2 : 1;
}

int int_width(ScalarType t) {
  switch (t) {
    case ScalarType::kI8:
    case ScalarType::kU8:
      return 1;
    case ScalarType::kI16:
      return 2;
    case ScalarType::kI32:
      return 4;
    default:
      return 8;
  }
}

/// torch.promote_types for the dtypes the IR has.
ScalarType promote(ScalarType a, ScalarType b) {
  if (a == b) return a;
  if (category(a) != category(b)) return category(a) > category(b) ? a : b;
  if (category(a) == 2) {
    if (a == ScalarType::kF64 || b == ScalarType::kF64) return ScalarType::kF64;
    return ScalarType::kF32;  // f16 with bf16, or either with f32
  }
  // Two different integer types.
  if ((a == ScalarType::kU8 && b == ScalarType::kI8) || (a == ScalarType::kI8 && b == ScalarType::kU8)) {
    return ScalarType::kI16;
  }
  if (a == ScalarType::kU8) return b;
  if (b == ScalarType::kU8) return a;
  return int_width(a) > int_width(b) ? a : b;
}

/// c10's combine_categories: a lower-priority class only matters when it is of a higher
/// category (or the higher one is bool).
std::optional<ScalarType> combine(std::optional<ScalarType> higher,
                                  std::optional<ScalarType> lower) {
  if (!higher) return lower;
  if (!lower) return higher;
  if (scalar_type_is_float(*higher)) return higher;
  if (*higher == ScalarType::kBool || scalar_type_is_float(*lower)) return promote(*higher, *lower);
  return higher;
}

/// torch.result_type over the node arguments at `args` (tensors or Python scalars).
ScalarType result_type(const Node& node, std::initializer_list<size_t> args) {
  std::optional<ScalarType> dim, zero_dim, wrapped;
  auto update = [](std::optional<ScalarType>& slot, ScalarType t) {
    slot = slot ? promote(*slot, t) : t;
  };
  for (size_t i : args) {
    const Arg& a = node.args().at(i);
    if (const auto* v = std::get_if<Value*>(&a)) {
      update((*v)->rank() > 0 ? dim : zero_dim, (*v)->dtype());
    } else if (std::holds_alternative<bool>(a)) {
      update(wrapped, ScalarType::kBool);
    } else if (std::holds_alternative<double>(a)) {
      update(wrapped, ScalarType::kF32);  // the default dtype
    } else {
      update(wrapped, ScalarType::kI64);
    }
  }
  return *combine(dim, combine(zero_dim, wrapped));
}

// ---------------------------------------------------------------- arithmetic

/// a + sign * alpha * b (add, sub) or b' - alpha * a' (rsub, with operands swapped by the caller).
void convert_add_sub(ConversionContext& ctx, const Node& node, size_t lhs, size_t rhs, bool sub) {
  const DataType out = out_dtype(ctx, node);
  const double alpha = node.arg_double_or(BinaryArgs::alpha, 1.0);
  if (out == DataType::kBool) {
    // bool + bool is logical or (alpha is a bool: False makes it the identity).
    Tensor* a = ctx.operand(node, lhs, out, 0);
    if (alpha == 0.0) return ctx.set_output(node, 0, ctx.net().add_identity(a)->output());
    return ctx.set_output(node, 0, ew(ctx, node, a, ctx.operand(node, rhs, out, 0),
                                      ElementWiseOp::kOr));
  }
  const DataType t = alpha != 1.0 ? opmath(out) : single_op_dtype(node, out, {lhs, rhs});
  Tensor* a = ctx.operand(node, lhs, t, 0);
  Tensor* b = ctx.operand(node, rhs, t, 0);
  if (alpha != 1.0) b = ew(ctx, node, b, ctx.scalar(alpha, t), ElementWiseOp::kProd);
  ctx.set_output(node, 0, ew(ctx, node, a, b, sub ? ElementWiseOp::kSub : ElementWiseOp::kSum));
}

EMBER_CONVERTER(add, ({"aten::add.Tensor", "aten::add.Scalar"}), true, validate_any) {
  convert_add_sub(ctx, node, BinaryArgs::self, BinaryArgs::other, false);
}

EMBER_CONVERTER(sub, ({"aten::sub.Tensor", "aten::sub.Scalar"}), true, validate_numeric) {
  convert_add_sub(ctx, node, BinaryArgs::self, BinaryArgs::other, true);
}

EMBER_CONVERTER(rsub, ({"aten::rsub.Tensor", "aten::rsub.Scalar"}), true, validate_numeric) {
  convert_add_sub(ctx, node, BinaryArgs::other, BinaryArgs::self, true);
}

EMBER_CONVERTER(mul, ({"aten::mul.Tensor", "aten::mul.Scalar"}), true, validate_any) {
  const DataType out = out_dtype(ctx, node);
  const DataType t = single_op_dtype(node, out, {BinaryArgs::self, BinaryArgs::other});
  const ElementWiseOp op = out == DataType::kBool ? ElementWiseOp::kAnd : ElementWiseOp::kProd;
  ctx.set_output(node, 0, ew(ctx, node, ctx.operand(node, BinaryArgs::self, t, 0),
                             ctx.operand(node, BinaryArgs::other, t, 0), op));
}

/// Floats: trunc(x) as floor for x >= 0 and ceil below (the engine has no trunc).
Tensor* float_trunc(ConversionContext& ctx, const Node& node, Tensor* x) {
  Tensor* negative = ew(ctx, node, x, ctx.scalar(0.0, x->dtype()), ElementWiseOp::kLess);
  return select(ctx, node, negative, un(ctx, node, x, UnaryOp::kCeil),
                un(ctx, node, x, UnaryOp::kFloor));
}

Reason validate_div(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_numeric(node, s)) return r;
  if (node.op().find("_mode") == std::string::npos || node.arg_is_none(DivModeArgs::rounding_mode)) {
    return std::nullopt;
  }
  const std::string& mode = node.arg_string(DivModeArgs::rounding_mode);
  if (mode != "trunc" && mode != "floor") return "unknown rounding_mode '" + mode + "'";
  return std::nullopt;
}

EMBER_CONVERTER(div, ({"aten::div.Tensor", "aten::div.Scalar", "aten::div.Tensor_mode",
                       "aten::div.Scalar_mode"}),
                true, validate_div) {
  const DataType out = out_dtype(ctx, node);
  const std::string mode = node.op().find("_mode") == std::string::npos ||
                                   node.arg_is_none(DivModeArgs::rounding_mode)
                               ? ""
                               : node.arg_string(DivModeArgs::rounding_mode);
  const bool integer = engine::dtype_is_integer(out);
  if (mode == "trunc" && !integer) {
    const DataType t = opmath(out);
    Tensor* q = ew(ctx, node, ctx.operand(node, DivModeArgs::self, t, 0),
                   ctx.operand(node, DivModeArgs::other, t, 0), ElementWiseOp::kDiv);
    return ctx.set_output(node, 0, float_trunc(ctx, node, q));
  }
  // True division (a float output), integer truncation ("trunc": the engine's integer kDiv), or
  // floor division: each one layer.
  const ElementWiseOp op = mode == "floor" ? ElementWiseOp::kFloorDiv : ElementWiseOp::kDiv;
  const DataType t = single_op_dtype(node, out, {DivModeArgs::self, DivModeArgs::other});
  ctx.set_output(node, 0, ew(ctx, node, ctx.operand(node, DivModeArgs::self, t, 0),
                             ctx.operand(node, DivModeArgs::other, t, 0), op));
}

EMBER_CONVERTER(floor_divide, ({"aten::floor_divide", "aten::floor_divide.Scalar"}), true,
                validate_numeric) {
  const DataType t = single_op_dtype(node, out_dtype(ctx, node), {0, 1});
  ctx.set_output(node, 0, ew(ctx, node, ctx.operand(node, BinaryArgs::self, t, 0),
                             ctx.operand(node, BinaryArgs::other, t, 0),
                             ElementWiseOp::kFloorDiv));
}

/// remainder (sign of the divisor) and fmod (sign of the dividend). Both start from
/// r = a - floor_div(a, b) * b; the engine's float floor_div is torch's fmod-based one, so r is
/// torch's remainder up to the rounding of one product.
void convert_mod(ConversionContext& ctx, const Node& node, size_t lhs, size_t rhs, bool fmod) {
  const DataType out = out_dtype(ctx, node);
  const DataType t = opmath(out);
  Tensor* a = ctx.operand(node, lhs, t, 0);
  Tensor* b = ctx.operand(node, rhs, t, 0);
  if (fmod && engine::dtype_is_integer(t)) {
    // Integer fmod: a - trunc_div(a, b) * b, exact.
    Tensor* q = ew(ctx, node, a, b, ElementWiseOp::kDiv);
    return ctx.set_output(node, 0, ew(ctx, node, a, ew(ctx, node, q, b, ElementWiseOp::kProd),
                                      ElementWiseOp::kSub));
  }
  Tensor* q = ew(ctx, node, a, b, ElementWiseOp::kFloorDiv);
  Tensor* r = ew(ctx, node, a, ew(ctx, node, q, b, ElementWiseOp::kProd), ElementWiseOp::kSub);
  if (fmod) {
    // Where r != 0 and its sign differs from a's, fmod = r - b.
    Tensor* zero = ctx.scalar(0.0, t);
    Tensor* nonzero = un(ctx, node, ew(ctx, node, r, zero, ElementWiseOp::kEqual), UnaryOp::kNot);
    Tensor* flips = ew(ctx, node, ew(ctx, node, r, zero, ElementWiseOp::kLess),
                       ew(ctx, node, a, zero, ElementWiseOp::kLess), ElementWiseOp::kXor);
    Tensor* fix = ew(ctx, node, nonzero, flips, ElementWiseOp::kAnd);
    r = select(ctx, node, fix, ew(ctx, node, r, b, ElementWiseOp::kSub), r);
  }
  ctx.set_output(node, 0, r);
}

EMBER_CONVERTER(remainder, ({"aten::remainder.Tensor", "aten::remainder.Scalar",
                             "aten::remainder.Scalar_Tensor"}),
                true, validate_numeric) {
  convert_mod(ctx, node, BinaryArgs::self, BinaryArgs::other, false);
}

EMBER_CONVERTER(fmod, ({"aten::fmod.Tensor", "aten::fmod.Scalar"}), true, validate_numeric) {
  convert_mod(ctx, node, BinaryArgs::self, BinaryArgs::other, true);
}

Reason validate_pow(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_numeric(node, s)) return r;
  if (!scalar_type_is_float(node.output(0)->dtype()) && node.arg_is_scalar(BinaryArgs::other) &&
      node.arg_double(BinaryArgs::other) < 0) {
    return "integer pow with a negative exponent (PyTorch raises for it)";
  }
  return std::nullopt;
}

EMBER_CONVERTER(pow, ({"aten::pow.Tensor_Tensor", "aten::pow.Tensor_Scalar", "aten::pow.Scalar"}),
                true, validate_pow) {
  const DataType t = single_op_dtype(node, out_dtype(ctx, node), {0, 1});
  ctx.set_output(node, 0, ew(ctx, node, ctx.operand(node, BinaryArgs::self, t, 0),
                             ctx.operand(node, BinaryArgs::other, t, 0), ElementWiseOp::kPow));
}

void convert_max_min(ConversionContext& ctx, const Node& node, bool max) {
  const DataType out = out_dtype(ctx, node);
  ElementWiseOp op = max ? ElementWiseOp::kMax : ElementWiseOp::kMin;
  if (out == DataType::kBool) op = max ? ElementWiseOp::kOr : ElementWiseOp::kAnd;
  ctx.set_output(node, 0, ew(ctx, node, ctx.operand(node, BinaryArgs::self, out, 0),
                             ctx.operand(node, BinaryArgs::other, out, 0), op));
}

EMBER_CONVERTER(maximum, ({"aten::maximum", "aten::max.other"}), true, validate_any) {
  convert_max_min(ctx, node, true);
}

EMBER_CONVERTER(minimum, ({"aten::minimum", "aten::min.other"}), true, validate_any) {
  convert_max_min(ctx, node, false);
}

EMBER_CONVERTER(atan2, ({"aten::atan2"}), true, validate_numeric) {
  // atan(y / x), moved by +-pi into the left half plane; x == 0 gives atan(+-inf) = +-pi/2.
  const DataType t = opmath(out_dtype(ctx, node));
  Tensor* y = ctx.operand(node, BinaryArgs::self, t, 0);
  Tensor* x = ctx.operand(node, BinaryArgs::other, t, 0);
  Tensor* zero = ctx.scalar(0.0, t);
  Tensor* r = un(ctx, node, ew(ctx, node, y, x, ElementWiseOp::kDiv), UnaryOp::kAtan);
  Tensor* shift = select(ctx, node, ew(ctx, node, y, zero, ElementWiseOp::kLess),
                         ctx.scalar(-M_PI, t), ctx.scalar(M_PI, t));
  r = select(ctx, node, ew(ctx, node, x, zero, ElementWiseOp::kLess),
             ew(ctx, node, r, shift, ElementWiseOp::kSum), r);
  Tensor* both_zero = ew(ctx, node, ew(ctx, node, x, zero, ElementWiseOp::kEqual),
                         ew(ctx, node, y, zero, ElementWiseOp::kEqual), ElementWiseOp::kAnd);
  ctx.set_output(node, 0, select(ctx, node, both_zero, zero, r));
}

// ---------------------------------------------------------------- comparisons

enum class Compare { kEq, kNe, kGt, kGe, kLt, kLe };

void convert_compare(ConversionContext& ctx, const Node& node, Compare cmp) {
  const ScalarType common = result_type(node, {BinaryArgs::self, BinaryArgs::other});
  DataType t;
  if (common == ScalarType::kI16) {
    t = DataType::kI32;  // u8 vs i8: a wider integer compares the same
  } else if (common == ScalarType::kBool && cmp != Compare::kEq && cmp != Compare::kNe) {
    t = DataType::kI32;  // ordering of bools: compare as 0/1
  } else {
    t = ctx.engine_dtype(common);
  }
  Tensor* a = ctx.operand(node, BinaryArgs::self, t, 0);
  Tensor* b = ctx.operand(node, BinaryArgs::other, t, 0);
  Tensor* r = nullptr;
  // ge/le are gt|eq and lt|eq (not "not lt"), so NaN compares false as in PyTorch.
  switch (cmp) {
    case Compare::kEq:
      r = ew(ctx, node, a, b, ElementWiseOp::kEqual);
      break;
    case Compare::kNe:
      r = un(ctx, node, ew(ctx, node, a, b, ElementWiseOp::kEqual), UnaryOp::kNot);
      break;
    case Compare::kGt:
      r = ew(ctx, node, a, b, ElementWiseOp::kGreater);
      break;
    case Compare::kLt:
      r = ew(ctx, node, a, b, ElementWiseOp::kLess);
      break;
    case Compare::kGe:
    case Compare::kLe:
      r = ew(ctx, node,
             ew(ctx, node, a, b, cmp == Compare::kGe ? ElementWiseOp::kGreater : ElementWiseOp::kLess),
             ew(ctx, node, a, b, ElementWiseOp::kEqual), ElementWiseOp::kOr);
      break;
  }
  ctx.set_output(node, 0, r);
}

EMBER_CONVERTER(eq, ({"aten::eq.Tensor", "aten::eq.Scalar"}), true, validate_any) {
  convert_compare(ctx, node, Compare::kEq);
}
EMBER_CONVERTER(ne, ({"aten::ne.Tensor", "aten::ne.Scalar"}), true, validate_any) {
  convert_compare(ctx, node, Compare::kNe);
}
EMBER_CONVERTER(gt, ({"aten::gt.Tensor", "aten::gt.Scalar"}), true, validate_any) {
  convert_compare(ctx, node, Compare::kGt);
}
EMBER_CONVERTER(ge, ({"aten::ge.Tensor", "aten::ge.Scalar"}), true, validate_any) {
  convert_compare(ctx, node, Compare::kGe);
}
EMBER_CONVERTER(lt, ({"aten::lt.Tensor", "aten::lt.Scalar"}), true, validate_any) {
  convert_compare(ctx, node, Compare::kLt);
}
EMBER_CONVERTER(le, ({"aten::le.Tensor", "aten::le.Scalar"}), true, validate_any) {
  convert_compare(ctx, node, Compare::kLe);
}

// ---------------------------------------------------------------- logical and bitwise

void convert_logical(ConversionContext& ctx, const Node& node, ElementWiseOp op) {
  Tensor* a = ctx.operand(node, BinaryArgs::self, DataType::kBool, 0);
  Tensor* b = ctx.operand(node, BinaryArgs::other, DataType::kBool, 0);
  ctx.set_output(node, 0, ew(ctx, node, a, b, op));
}

EMBER_CONVERTER(logical_and, ({"aten::logical_and"}), true, validate_any) {
  convert_logical(ctx, node, ElementWiseOp::kAnd);
}
EMBER_CONVERTER(logical_or, ({"aten::logical_or"}), true, validate_any) {
  convert_logical(ctx, node, ElementWiseOp::kOr);
}
EMBER_CONVERTER(logical_xor, ({"aten::logical_xor"}), true, validate_any) {
  convert_logical(ctx, node, ElementWiseOp::kXor);
}

EMBER_CONVERTER(logical_not, ({"aten::logical_not"}), true, nullptr) {
  ctx.set_output(node, 0, un(ctx, node, ctx.cast(ctx.input(node, 0), DataType::kBool),
                             UnaryOp::kNot));
}

/// Bitwise and/or/xor are the logical ops on bool tensors (integers need bit ops the engine
/// does not have).
Reason validate_bool_result(const Node& node, const CompileSettings&) {
  for (size_t i = 0; i < node.num_args(); ++i) {
    const Arg& a = node.args()[i];
    if (const auto* v = std::get_if<Value*>(&a); v && (*v)->dtype() != ScalarType::kBool) {
      return node.op() + " is supported for bool tensors only, got " +
             scalar_type_name((*v)->dtype());
    }
    if (!std::holds_alternative<Value*>(a) && !std::holds_alternative<bool>(a)) {
      return node.op() + " is supported for bool operands only";
    }
  }
  return std::nullopt;
}

EMBER_CONVERTER(bitwise_and, ({"aten::bitwise_and.Tensor", "aten::bitwise_and.Scalar"}), true,
                validate_bool_result) {
  convert_logical(ctx, node, ElementWiseOp::kAnd);
}
EMBER_CONVERTER(bitwise_or, ({"aten::bitwise_or.Tensor", "aten::bitwise_or.Scalar"}), true,
                validate_bool_result) {
  convert_logical(ctx, node, ElementWiseOp::kOr);
}
EMBER_CONVERTER(bitwise_xor, ({"aten::bitwise_xor.Tensor", "aten::bitwise_xor.Scalar"}), true,
                validate_bool_result) {
  convert_logical(ctx, node, ElementWiseOp::kXor);
}

Reason validate_bitwise_not(const Node& node, const CompileSettings&) {
  if (scalar_type_is_float(node.output(0)->dtype())) {
    return "bitwise_not of a float tensor (PyTorch rejects it)";
  }
  return std::nullopt;
}

EMBER_CONVERTER(bitwise_not, ({"aten::bitwise_not"}), true, validate_bitwise_not) {
  Tensor* x = ctx.input(node, 0);
  if (x->dtype() == DataType::kBool) return ctx.set_output(node, 0, un(ctx, node, x, UnaryOp::kNot));
  // Two's complement: ~x == -x - 1, with the engine's wrap-around integer arithmetic.
  ctx.set_output(node, 0, ew(ctx, node, un(ctx, node, x, UnaryOp::kNeg),
                             ctx.scalar(1.0, x->dtype()), ElementWiseOp::kSub));
}

// ---------------------------------------------------------------- selection

EMBER_CONVERTER(where, ({"aten::where.self", "aten::where.ScalarSelf", "aten::where.ScalarOther",
                         "aten::where.Scalar"}),
                true, validate_any) {
  const DataType out = out_dtype(ctx, node);
  Tensor* cond = ctx.cast(ctx.input(node, WhereArgs::condition), DataType::kBool);
  ctx.set_output(node, 0, select(ctx, node, cond, ctx.operand(node, WhereArgs::self, out, 0),
                                 ctx.operand(node, WhereArgs::other, out, 0)));
}

EMBER_CONVERTER(masked_fill, ({"aten::masked_fill.Scalar", "aten::masked_fill.Tensor"}), true,
                validate_any) {
  const DataType out = out_dtype(ctx, node);
  Tensor* mask = ctx.cast(ctx.input(node, MaskedFillArgs::mask), DataType::kBool);
  ctx.set_output(node, 0, select(ctx, node, mask, ctx.operand(node, MaskedFillArgs::value, out, 0),
                                 ctx.operand(node, MaskedFillArgs::self, out, 0)));
}

/// min(max(x, lo), hi) with optional bounds; NaN in x propagates (engine max/min do), and
/// lo > hi gives hi, as torch.clamp.
void clamp_between(ConversionContext& ctx, const Node& node, std::optional<size_t> lo,
                   std::optional<size_t> hi) {
  const DataType out = out_dtype(ctx, node);
  Tensor* x = ctx.operand(node, ClampArgs::self, out, 0);
  if (lo && !node.arg_is_none(*lo)) {
    x = ew(ctx, node, x, ctx.operand(node, *lo, out, 0), ElementWiseOp::kMax);
  }
  if (hi && !node.arg_is_none(*hi)) {
    x = ew(ctx, node, x, ctx.operand(node, *hi, out, 0), ElementWiseOp::kMin);
  }
  ctx.set_output(node, 0, x);
}

Reason validate_clamp(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_numeric(node, s)) return r;
  if (node.op().rfind("aten::clamp.", 0) == 0 || node.op() == "aten::clamp") {
    if (node.arg_is_none(ClampArgs::min) && node.arg_is_none(ClampArgs::max)) {
      return "clamp needs at least one of min and max";
    }
  }
  return std::nullopt;
}

EMBER_CONVERTER(clamp, ({"aten::clamp", "aten::clamp.Tensor"}), true, validate_clamp) {
  clamp_between(ctx, node, ClampArgs::min, ClampArgs::max);
}
EMBER_CONVERTER(clamp_min, ({"aten::clamp_min", "aten::clamp_min.Tensor"}), true, validate_clamp) {
  clamp_between(ctx, node, ClampOneArgs::bound, std::nullopt);
}
EMBER_CONVERTER(clamp_max, ({"aten::clamp_max", "aten::clamp_max.Tensor"}), true, validate_clamp) {
  clamp_between(ctx, node, std::nullopt, ClampOneArgs::bound);
}

}  // namespace

}  // namespace ember::compiler
