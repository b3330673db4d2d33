// The Activation layer's formulas: the one definition both back ends evaluate (the CPU
// kernels on the host, the CUDA Activation kernel and the fused epilogues of Convolution and
// MatrixMultiply on the device). In f32, with NaN passing through as torch does.
#pragma once

#include <math.h>

#include "ember/engine/layers.h"

#include "backends/semantics/host_device.h"

namespace ember::engine::semantics {

/// y = f(x) for an Activation layer of `type` with its parameters `alpha` and `beta` (their
/// meaning per type is documented at ActivationType). With a constant `type` the switch folds
/// away, so the CPU's per-type loops call this directly.
EMBER_HOST_DEVICE inline float activation(ActivationType type, float x, float alpha, float beta) {
  switch (type) {
    case ActivationType::kRelu: return x < 0.0f ? 0.0f : x;  // NaN stays NaN
    case ActivationType::kSigmoid: return 1.0f / (1.0f + expf(-x));
    case ActivationType::kTanh: return tanhf(x);
    case ActivationType::kLeakyRelu: return x >= 0.0f ? x : alpha * x;
    case ActivationType::kElu: return x > 0.0f ? x : alpha * expm1f(x);
    case ActivationType::kSelu: return beta * (x > 0.0f ? x : alpha * expm1f(x));
    case ActivationType::kSoftsign: return x / (1.0f + fabsf(x));
    case ActivationType::kSoftplus: return x * alpha > beta ? x : log1pf(expf(alpha * x)) / alpha;
    case ActivationType::kClip:
      if (x != x) return x;  // NaN passes through (torch.clamp); fmin/fmax would drop it
      return fminf(fmaxf(x, alpha), beta);
    case ActivationType::kHardSigmoid: {
      const float y = alpha * x + beta;
      if (y != y) return y;
      return fmaxf(0.0f, fminf(1.0f, y));
    }
    case ActivationType::kGeluErf: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case ActivationType::kGeluTanh: {
      const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + tanhf(inner));
    }
    case ActivationType::kSilu: return x / (1.0f + expf(-x));
  }
  return x;
}

}  // namespace ember::engine::semantics
