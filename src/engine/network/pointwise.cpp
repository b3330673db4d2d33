// Shape and type inference of the pointwise layers: Activation, ElementWise, Unary, Select, Cast.
//
// These layers never change the element order, so their output shape is the input shape or the
// numpy broadcast of the input shapes. The interesting part is the dtype rules, which are
// spelled out per op below; a plan read from disk is re-validated through these functions, so
// every enum value and parameter is checked, not just the ones the compiler produces.
#include <cmath>
#include <string>

#include "network/infer.h"

namespace ember::engine {

namespace {

const char* activation_type_name(ActivationType t) {
  switch (t) {
    case ActivationType::kRelu:
      return "relu";
    case ActivationType::kSigmoid:
      return "sigmoid";
    case ActivationType::kTanh:
      return "tanh";
    case ActivationType::kLeakyRelu:
      return "leaky_relu";
    case ActivationType::kElu:
      return "elu";
    case ActivationType::kSelu:
      return "selu";
    case ActivationType::kSoftsign:
      return "softsign";
    case ActivationType::kSoftplus:
      return "softplus";
    case ActivationType::kClip:
      return "clip";
    case ActivationType::kHardSigmoid:
      return "hard_sigmoid";
    case ActivationType::kGeluErf:
      return "gelu_erf";
    case ActivationType::kGeluTanh:
      return "gelu_tanh";
    case ActivationType::kSilu:
      return "silu";
  }
  return "invalid";
}

const char* elementwise_op_name(ElementWiseOp op) {
  switch (op) {
    case ElementWiseOp::kSum:
      return "sum";
    case ElementWiseOp::kProd:
      return "prod";
    case ElementWiseOp::kMax:
      return "max";
    case ElementWiseOp::kMin:
      return "min";
    case ElementWiseOp::kSub:
      return "sub";
    case ElementWiseOp::kDiv:
      return "div";
    case ElementWiseOp::kPow:
      return "pow";
    case ElementWiseOp::kFloorDiv:
      return "floor_div";
    case ElementWiseOp::kAnd:
      return "and";
    case ElementWiseOp::kOr:
      return "or";
    case ElementWiseOp::kXor:
      return "xor";
    case ElementWiseOp::kEqual:
      return "equal";
    case ElementWiseOp::kGreater:
      return "greater";
    case ElementWiseOp::kLess:
      return "less";
  }
  return "invalid";
}

const char* unary_op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::kExp:
      return "exp";
    case UnaryOp::kLog:
      return "log";
    case UnaryOp::kSqrt:
      return "sqrt";
    case UnaryOp::kRsqrt:
      return "rsqrt";
    case UnaryOp::kReciprocal:
      return "reciprocal";
    case UnaryOp::kAbs:
      return "abs";
    case UnaryOp::kNeg:
      return "neg";
    case UnaryOp::kSin:
      return "sin";
    case UnaryOp::kCos:
      return "cos";
    case UnaryOp::kTan:
      return "tan";
    case UnaryOp::kAsin:
      return "asin";
    case UnaryOp::kAcos:
      return "acos";
    case UnaryOp::kAtan:
      return "atan";
    case UnaryOp::kSinh:
      return "sinh";
    case UnaryOp::kCosh:
      return "cosh";
    case UnaryOp::kAsinh:
      return "asinh";
    case UnaryOp::kAcosh:
      return "acosh";
    case UnaryOp::kAtanh:
      return "atanh";
    case UnaryOp::kCeil:
      return "ceil";
    case UnaryOp::kFloor:
      return "floor";
    case UnaryOp::kRound:
      return "round";
    case UnaryOp::kErf:
      return "erf";
    case UnaryOp::kNot:
      return "not";
    case UnaryOp::kSign:
      return "sign";
    case UnaryOp::kIsInf:
      return "isinf";
    case UnaryOp::kIsNan:
      return "isnan";
  }
  return "invalid";
}

/// Throws when an enum read from a plan is outside its declared range.
void expect_enum(int value, int count, const char* what) {
  InferContext::require(value >= 0 && value < count,
                        std::string("unknown ") + what + " " + std::to_string(value) +
                            " (expected 0 to " + std::to_string(count - 1) +
                            "); the plan is corrupt or from a newer Ember");
}

/// The dtype classes the pointwise ops accept, for one rule per op instead of one per dtype.
enum class Accepts { kFloat, kNumeric, kBool, kAny, kNonBool };

bool accepts(Accepts a, DataType t) {
  switch (a) {
    case Accepts::kFloat:
      return dtype_is_float(t);
    case Accepts::kNumeric:
    case Accepts::kNonBool:
      return dtype_is_float(t) || dtype_is_integer(t);
    case Accepts::kBool:
      return t == DataType::kBool;
    case Accepts::kAny:
      return true;
  }
  return false;
}

const char* accepts_text(Accepts a) {
  switch (a) {
    case Accepts::kFloat:
      return "a float dtype (f32, f16, bf16)";
    case Accepts::kNumeric:
    case Accepts::kNonBool:
      return "a float or integer dtype (not bool)";
    case Accepts::kBool:
      return "bool";
    case Accepts::kAny:
      return "any dtype";
  }
  return "?";
}

Accepts elementwise_accepts(ElementWiseOp op) {
  switch (op) {
    case ElementWiseOp::kSum:
    case ElementWiseOp::kProd:
    case ElementWiseOp::kMax:
    case ElementWiseOp::kMin:
    case ElementWiseOp::kSub:
    case ElementWiseOp::kDiv:
    case ElementWiseOp::kPow:
    case ElementWiseOp::kFloorDiv:
      return Accepts::kNumeric;
    case ElementWiseOp::kAnd:
    case ElementWiseOp::kOr:
    case ElementWiseOp::kXor:
      return Accepts::kBool;
    case ElementWiseOp::kEqual:
      return Accepts::kAny;
    case ElementWiseOp::kGreater:
    case ElementWiseOp::kLess:
      return Accepts::kNonBool;
  }
  return Accepts::kAny;
}

bool elementwise_is_comparison(ElementWiseOp op) {
  return op == ElementWiseOp::kEqual || op == ElementWiseOp::kGreater || op == ElementWiseOp::kLess;
}

Accepts unary_accepts(UnaryOp op) {
  switch (op) {
    case UnaryOp::kAbs:
    case UnaryOp::kNeg:
    case UnaryOp::kSign:
      return Accepts::kNumeric;
    case UnaryOp::kNot:
      return Accepts::kBool;
    case UnaryOp::kExp:
    case UnaryOp::kLog:
    case UnaryOp::kSqrt:
    case UnaryOp::kRsqrt:
    case UnaryOp::kReciprocal:
    case UnaryOp::kSin:
    case UnaryOp::kCos:
    case UnaryOp::kTan:
    case UnaryOp::kAsin:
    case UnaryOp::kAcos:
    case UnaryOp::kAtan:
    case UnaryOp::kSinh:
    case UnaryOp::kCosh:
    case UnaryOp::kAsinh:
    case UnaryOp::kAcosh:
    case UnaryOp::kAtanh:
    case UnaryOp::kCeil:
    case UnaryOp::kFloor:
    case UnaryOp::kRound:
    case UnaryOp::kErf:
    case UnaryOp::kIsInf:
    case UnaryOp::kIsNan:
      return Accepts::kFloat;
  }
  return Accepts::kFloat;
}

}  // namespace

void infer(const ActivationParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  expect_enum(static_cast<int>(p.type), kNumActivationTypes, "activation type");
  const std::string name = activation_type_name(p.type);
  ctx.expect_float(0, name + " input");
  // Infinite bounds are meaningful (a one-sided clip); NaN never is.
  InferContext::require(!std::isnan(p.alpha) && !std::isnan(p.beta),
                        name + ": alpha and beta must not be NaN");
  if (p.type == ActivationType::kSoftplus) {
    // alpha is torch's beta and divides the result.
    InferContext::require(std::isfinite(p.alpha) && p.alpha != 0.0,
                          "softplus: alpha (torch's beta) must be finite and nonzero, got " +
                              std::to_string(p.alpha));
  }
  ctx.add_output(ctx.dtype(0), ctx.shape(0));
}

void infer(const ElementWiseParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(2, 2);
  expect_enum(static_cast<int>(p.op), kNumElementWiseOps, "elementwise op");
  const std::string name = elementwise_op_name(p.op);
  ctx.expect_same_dtype(0, 1);
  const Accepts rule = elementwise_accepts(p.op);
  InferContext::require(accepts(rule, ctx.dtype(0)), name + " needs " + accepts_text(rule) +
                                                         ", got " + dtype_name(ctx.dtype(0)) +
                                                         " (insert a Cast layer)");
  Shape out = ctx.broadcast_shapes(ctx.shape(0), ctx.shape(1));
  ctx.add_output(elementwise_is_comparison(p.op) ? DataType::kBool : ctx.dtype(0), std::move(out));
}

void infer(const UnaryParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  expect_enum(static_cast<int>(p.op), kNumUnaryOps, "unary op");
  const std::string name = unary_op_name(p.op);
  const Accepts rule = unary_accepts(p.op);
  InferContext::require(accepts(rule, ctx.dtype(0)), name + " needs " + accepts_text(rule) +
                                                         ", got " + dtype_name(ctx.dtype(0)) +
                                                         " (insert a Cast layer)");
  const bool to_bool = p.op == UnaryOp::kIsInf || p.op == UnaryOp::kIsNan;
  ctx.add_output(to_bool ? DataType::kBool : ctx.dtype(0), ctx.shape(0));
}

void infer(const SelectParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(3, 3);
  ctx.expect_dtype(0, DataType::kBool, "condition");
  ctx.expect_same_dtype(1, 2);
  Shape out = ctx.broadcast_shapes(ctx.broadcast_shapes(ctx.shape(0), ctx.shape(1)), ctx.shape(2));
  ctx.add_output(ctx.dtype(1), std::move(out));
}

void infer(const CastParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  expect_enum(static_cast<int>(p.to), kNumDataTypes, "cast target dtype");
  ctx.add_output(p.to, ctx.shape(0));
}

}  // namespace ember::engine
