// How an Attention layer reads its operands, shared by the CPU and CUDA back ends: the sizes,
// and for q, k, v and the output an element offset and strides over [batch, heads, sequence]
// (features are contiguous) for either layout, packed or not, or as the strided views the builder
// stored (AttentionParams::views); the mask's strides over
// [B, H, L, S] with 0 on its broadcast dims.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/engine/layers.h"

namespace ember::engine {

struct AttentionOperand {
  int64_t offset = 0;  ///< Element offset of (0, 0, 0, 0).
  int64_t batch = 0, heads = 0, seq = 0;
};

struct AttentionGeometry {
  int64_t B = 0, H = 0, Hkv = 0, L = 0, S = 0, E = 0, Ev = 0;
  AttentionOperand q, k, v, out;
  int64_t mask[4] = {0, 0, 0, 0};  ///< Strides over [B, H, L, S]; 0 = broadcast.
};

/// The geometry for operand dims as infer() accepted them (mask_dims: nullptr without a mask).
AttentionGeometry attention_geometry(const AttentionParams& p, const std::vector<int64_t>& q,
                                     const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                                     const std::vector<int64_t>& out,
                                     const std::vector<int64_t>* mask_dims);

}  // namespace ember::engine
