// The Padding layer's input view (PaddingParams::input_shape), the one definition both back ends
// use: the dims the padding reads its input as, with the -1 entry resolved from the element
// count. Shape inference checked the view symbolically; this is the run-time value.
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

#include "ember/engine/types.h"
#include "ember/engine/layers.h"

namespace ember::engine::semantics {

/// The dims of the padding's input as it reads them: `in_dims` itself without a view, else the
/// view with its -1 entry resolved (throws when the view does not keep the element count).
inline std::vector<int64_t> padding_input_dims(const PaddingParams& p,
                                               const std::vector<int64_t>& in_dims) {
  if (p.input_shape.empty()) return in_dims;
  int64_t numel = 1, known = 1;
  for (const int64_t d : in_dims) numel *= d;
  std::vector<int64_t> dims = p.input_shape;
  int64_t* inferred = nullptr;
  for (int64_t& d : dims) {
    if (d == -1) {
      inferred = &d;
    } else {
      known *= d;
    }
  }
  if (inferred != nullptr && known != 0) *inferred = numel / known;
  int64_t viewed = 1;
  for (const int64_t d : dims) viewed *= d;
  if (viewed != numel) {
    throw Error("padding: input_shape does not keep the input's " + std::to_string(numel) +
                " elements (the plan may be corrupt)");
  }
  return dims;
}

}  // namespace ember::engine::semantics
