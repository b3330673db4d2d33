// The float formulas of the ElementWise and Unary layers: one definition the CPU kernels of the
// separate layers (cpu/pointwise.cpp) and the FusedPointwise interpreter (cpu/fused_pointwise.cpp)
// both call, so a fused chain computes each step exactly as the layer it replaces. The CUDA
// code generator (backends/codegen/pointwise_codegen.cpp) spells the same formulas in CUDA C.
// All in f32; NaN handling as torch's (documented per op at ElementWiseOp/UnaryOp).
#pragma once

#include <math.h>

#include <limits>

#include "ember/engine/layers.h"

#include "backends/semantics/host_device.h"

namespace ember::engine::semantics {

/// A double parameter (an activation's alpha/beta) as float; magnitudes beyond float's range
/// become +-inf (a plain cast would be undefined behaviour there). Host only.
inline float param_to_float(double v) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (v > kMax) return std::numeric_limits<float>::infinity();
  if (v < -kMax) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(v);
}

/// torch's div_floor_floating: Python's // for floats, exact where floor(a / b) would round.
EMBER_HOST_DEVICE inline float float_floor_div(float a, float b) {
  if (b == 0.0f) return a / b;
  const float m = fmodf(a, b);
  float div = (a - m) / b;
  if (m != 0.0f && ((b < 0.0f) != (m < 0.0f))) div -= 1.0f;
  if (div == 0.0f) return copysignf(0.0f, a / b);
  float floored = floorf(div);
  if (div - floored > 0.5f) floored += 1.0f;
  return floored;
}

/// max/min that propagate NaN (torch.maximum/minimum).
EMBER_HOST_DEVICE inline float nan_max(float a, float b) {
  return (a != a) ? a : (b != b) ? b : (a > b ? a : b);
}
EMBER_HOST_DEVICE inline float nan_min(float a, float b) {
  return (a != a) ? a : (b != b) ? b : (a < b ? a : b);
}

/// True for the ElementWise ops that are float arithmetic (float in, same float out).
inline bool elementwise_is_float_arithmetic(ElementWiseOp op) {
  return static_cast<int>(op) <= static_cast<int>(ElementWiseOp::kFloorDiv);
}

/// x op y for the float arithmetic ops (elementwise_is_float_arithmetic).
EMBER_HOST_DEVICE inline float elementwise(ElementWiseOp op, float x, float y) {
  switch (op) {
    case ElementWiseOp::kSum: return x + y;
    case ElementWiseOp::kProd: return x * y;
    case ElementWiseOp::kMax: return nan_max(x, y);
    case ElementWiseOp::kMin: return nan_min(x, y);
    case ElementWiseOp::kSub: return x - y;
    case ElementWiseOp::kDiv: return x / y;
    case ElementWiseOp::kPow: return powf(x, y);
    case ElementWiseOp::kFloorDiv: return float_floor_div(x, y);
    default: return 0.0f;  // not float arithmetic: callers check first
  }
}

/// True for the Unary ops that are float math (float in, same float out).
inline bool unary_is_float_math(UnaryOp op) {
  return op != UnaryOp::kNot && op != UnaryOp::kIsInf && op != UnaryOp::kIsNan;
}

/// True for the Unary ops that classify a float (float in, bool out): isinf, isnan.
inline bool unary_is_classification(UnaryOp op) {
  return op == UnaryOp::kIsInf || op == UnaryOp::kIsNan;
}

/// f(x) for the float math ops (unary_is_float_math).
EMBER_HOST_DEVICE inline float unary(UnaryOp op, float x) {
  switch (op) {
    case UnaryOp::kExp: return expf(x);
    case UnaryOp::kLog: return logf(x);
    case UnaryOp::kSqrt: return sqrtf(x);
    case UnaryOp::kRsqrt: return 1.0f / sqrtf(x);
    case UnaryOp::kReciprocal: return 1.0f / x;
    case UnaryOp::kAbs: return fabsf(x);
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kSin: return sinf(x);
    case UnaryOp::kCos: return cosf(x);
    case UnaryOp::kTan: return tanf(x);
    case UnaryOp::kAsin: return asinf(x);
    case UnaryOp::kAcos: return acosf(x);
    case UnaryOp::kAtan: return atanf(x);
    case UnaryOp::kSinh: return sinhf(x);
    case UnaryOp::kCosh: return coshf(x);
    case UnaryOp::kAsinh: return asinhf(x);
    case UnaryOp::kAcosh: return acoshf(x);
    case UnaryOp::kAtanh: return atanhf(x);
    case UnaryOp::kCeil: return ceilf(x);
    case UnaryOp::kFloor: return floorf(x);
    // nearbyint rounds half to even in the default rounding mode, without raising FE_INEXACT.
    case UnaryOp::kRound: return nearbyintf(x);
    case UnaryOp::kErf: return erff(x);
    case UnaryOp::kSign: return static_cast<float>((0.0f < x) - (x < 0.0f));
    default: return 0.0f;  // not float math: callers check first
  }
}

}  // namespace ember::engine::semantics
