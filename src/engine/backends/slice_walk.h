// How a Slice layer reads its input, shared by the CPU and CUDA back ends: the starts resolved
// for the current symbol values, bounds-checked, as an element offset and per-dim strides.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/layers.h"

namespace ember::engine {

/// Output element (i0, i1, ...) of the slice reads input element base + sum(i_d * strides[d]).
struct SliceWalk {
  int64_t base = 0;              ///< In elements.
  std::vector<int64_t> strides;  ///< In elements, one per dim (negative for negative strides).
};

/// Resolves p.start with `symbols` and checks that every index the slice reads lies inside the
/// input (infer() proved it or left it for run time; checking again is O(rank) and keeps a
/// kernel called without that check in bounds). Throws Error naming the dim otherwise.
SliceWalk slice_walk(const SliceParams& p, const std::vector<int64_t>& in_dims,
                     const std::vector<int64_t>& out_dims, const SymbolBindings* symbols);

}  // namespace ember::engine
