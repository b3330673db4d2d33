#include "backends/slice_walk.h"

#include <algorithm>
#include <string>

namespace ember::engine {

SliceWalk slice_walk(const SliceParams& p, const std::vector<int64_t>& in_dims,
                     const std::vector<int64_t>& out_dims, const SymbolBindings* symbols) {
  SliceWalk w;
  std::vector<int64_t> in_strides(in_dims.size(), 1);
  for (size_t d = in_dims.size(); d-- > 1;) in_strides[d - 1] = in_strides[d] * in_dims[d];
  for (size_t d = 0; d < in_dims.size(); ++d) {
    int64_t start;
    if (p.start[d].is_constant()) {
      start = p.start[d].constant();
    } else if (symbols != nullptr) {
      start = p.start[d].evaluate(*symbols);
    } else {
      throw Error("slice start " + p.start[d].to_string() + " of dim " + std::to_string(d) +
                  " is symbolic but the executor passed no symbol bindings");
    }
    int64_t span = 0, last = 0;
    const bool overflow = __builtin_mul_overflow(out_dims[d] - 1, p.stride[d], &span) ||
                          __builtin_add_overflow(start, span, &last);
    if (overflow || std::min(start, last) < 0 || std::max(start, last) >= in_dims[d]) {
      throw Error("slice of dim " + std::to_string(d) + " (size " + std::to_string(in_dims[d]) +
                  ") from " + std::to_string(start) + " to " + std::to_string(last) +
                  " is out of range");
    }
    w.base += start * in_strides[d];
    w.strides.push_back(p.stride[d] * in_strides[d]);
  }
  return w;
}

}  // namespace ember::engine
