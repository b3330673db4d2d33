// A FusedPointwise layer's program as steps (FusedPointwiseParams documents the encoding): what
// shape inference validates, the CPU interpreter runs and the CUDA code generator compiles.
// Decoding does not validate; the layer's infer() did (network/fused_pointwise.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "ember/engine/layers.h"

namespace ember::engine::semantics {

/// One step of a FusedPointwise program.
struct FusedStep {
  FusedOpFamily family = FusedOpFamily::kScalar;
  int code = 0;                    ///< ActivationType / ElementWiseOp / UnaryOp by family.
  DataType dtype = DataType::kF32; ///< The step's result is rounded to this dtype.
  int64_t operands[3] = {-1, -1, -1};
  double alpha = 0.0;              ///< kScalar: the value; kActivation: its alpha.
  double beta = 0.0;
};

/// How many operands a step of `family` reads.
inline int fused_num_operands(FusedOpFamily family) {
  switch (family) {
    case FusedOpFamily::kScalar: return 0;
    case FusedOpFamily::kElementWise: return 2;
    case FusedOpFamily::kActivation:
    case FusedOpFamily::kUnary:
    case FusedOpFamily::kCast:
    case FusedOpFamily::kReduce: return 1;
  }
  return 0;
}

/// True when `p` has a row reduction (a kReduce step): the back ends then run it row by row.
inline bool fused_has_reduction(const FusedPointwiseParams& p) {
  for (int64_t i = 0; i < p.num_steps(); ++i) {
    if (p.program[FusedPointwiseParams::kStride * i] ==
        static_cast<int64_t>(FusedOpFamily::kReduce)) {
      return true;
    }
  }
  return false;
}

/// The steps of `p` (program and attrs as stored; sizes already validated).
inline std::vector<FusedStep> fused_steps(const FusedPointwiseParams& p) {
  std::vector<FusedStep> steps(static_cast<size_t>(p.num_steps()));
  for (size_t i = 0; i < steps.size(); ++i) {
    const int64_t* s = p.program.data() + FusedPointwiseParams::kStride * i;
    FusedStep& st = steps[i];
    st.family = static_cast<FusedOpFamily>(s[0]);
    st.code = static_cast<int>(s[1]);
    st.dtype = static_cast<DataType>(s[2]);
    for (int k = 0; k < 3; ++k) st.operands[k] = s[3 + k];
    if (2 * i + 1 < p.attrs.size()) {
      st.alpha = p.attrs[2 * i];
      st.beta = p.attrs[2 * i + 1];
    }
  }
  return steps;
}

/// Appends `step` to `p` (the builder's pass and tests write programs through this).
inline void fused_append(FusedPointwiseParams& p, const FusedStep& step) {
  p.program.insert(p.program.end(),
                   {static_cast<int64_t>(step.family), static_cast<int64_t>(step.code),
                    static_cast<int64_t>(step.dtype), step.operands[0], step.operands[1],
                    step.operands[2]});
  p.attrs.push_back(step.alpha);
  p.attrs.push_back(step.beta);
}

}  // namespace ember::engine::semantics
