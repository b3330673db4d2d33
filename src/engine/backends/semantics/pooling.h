// Average pooling's window and divisor (torch's rules), the one definition both back ends use:
// the CPU's avg_pool loop on the host and the CUDA avg_pool_kernel on the device. The sums
// themselves stay in each back end (the CUDA one uses explicitly rounded adds so that it keeps
// the CPU's order and rounding).
#pragma once

#include <stdint.h>

#include "backends/semantics/host_device.h"

namespace ember::engine::semantics {

/// The input box [lo, hi) of one output position, per spatial dim, and what its sum is
/// divided by. `empty`: no input element is in the window (torch writes 0 then).
struct AvgPoolWindow {
  int64_t lo[3], hi[3];
  int64_t divisor;
  bool empty;
};

/// The window of output position `o` (3 spatial dims, leading ones 1 for 1-d/2-d pooling) for
/// a geometry `g` with int64_t[3] fields `in`, `k`, `stride`, `pad` (begin) and `pad_end`.
/// The window is clipped to the padded input (count_include_pad counts the padding but not the
/// ceil-mode overhang past it), then to the input; `divisor_override` wins when > 0.
template <class Geometry>
EMBER_HOST_DEVICE inline AvgPoolWindow avg_pool_window(const Geometry& g, const int64_t o[3],
                                                       bool count_include_pad,
                                                       int64_t divisor_override) {
  AvgPoolWindow w{};
  int64_t padded = 1, inside = 1;
  w.empty = false;
  for (int d = 0; d < 3; ++d) {
    const int64_t start = o[d] * g.stride[d] - g.pad[d];
    const int64_t limit = g.in[d] + g.pad_end[d];
    const int64_t stop = start + g.k[d] < limit ? start + g.k[d] : limit;
    w.lo[d] = start > 0 ? start : 0;
    w.hi[d] = stop < g.in[d] ? stop : g.in[d];
    w.empty = w.empty || w.hi[d] <= w.lo[d];
    padded *= stop - start;
    inside *= w.hi[d] - w.lo[d];
  }
  w.divisor = divisor_override > 0 ? divisor_override : count_include_pad ? padded : inside;
  return w;
}

}  // namespace ember::engine::semantics
