// A row reduction of float values in the CPU Reduce layer's order (backends/cpu/reduction.cpp,
// its contiguous-tail path): sums and products accumulate in f64 in four interleaved partials
// (element j goes to partial j % 4) merged as (p0 . p1) . (p2 . p3); max and min propagate NaN
// the same way. A FusedPointwise row reduction (kReduce) calls this, so a fused norm gives the
// bits of the Reduce layer it replaced.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "ember/engine/layers.h"

namespace ember::engine::semantics {

namespace detail {

template <typename Acc, typename Combine, typename Merge>
Acc reduce_four_ways(const float* x, int64_t n, Acc init, Combine combine, Merge merge) {
  Acc a0 = init, a1 = init, a2 = init, a3 = init;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    a0 = combine(a0, x[j]);
    a1 = combine(a1, x[j + 1]);
    a2 = combine(a2, x[j + 2]);
    a3 = combine(a3, x[j + 3]);
  }
  for (; j < n; ++j) a0 = combine(a0, x[j]);
  return merge(merge(a0, a1), merge(a2, a3));
}

inline float nan_max(float m, float v) { return (v > m || std::isnan(v)) && !std::isnan(m) ? v : m; }
inline float nan_min(float m, float v) { return (v < m || std::isnan(v)) && !std::isnan(m) ? v : m; }

}  // namespace detail

/// `op` over x[0 .. n), as a Reduce layer over one contiguous axis of length n computes it
/// (before rounding to the layer's dtype). n = 0: sum 0, prod 1, avg NaN; max/min are the
/// caller's to refuse.
inline float reduce_row(ReduceOp op, const float* x, int64_t n) {
  const auto add = [](double a, float v) { return a + static_cast<double>(v); };
  const auto add2 = [](double a, double b) { return a + b; };
  switch (op) {
    case ReduceOp::kSum:
      return static_cast<float>(detail::reduce_four_ways(x, n, 0.0, add, add2));
    case ReduceOp::kAvg:
      return static_cast<float>(detail::reduce_four_ways(x, n, 0.0, add, add2) /
                                static_cast<double>(n));
    case ReduceOp::kProd:
      return static_cast<float>(detail::reduce_four_ways(
          x, n, 1.0, [](double a, float v) { return a * static_cast<double>(v); },
          [](double a, double b) { return a * b; }));
    case ReduceOp::kMax:
      return detail::reduce_four_ways(x, n, -std::numeric_limits<float>::infinity(),
                                      detail::nan_max, detail::nan_max);
    case ReduceOp::kMin:
      return detail::reduce_four_ways(x, n, std::numeric_limits<float>::infinity(),
                                      detail::nan_min, detail::nan_min);
  }
  return 0.0f;
}

}  // namespace ember::engine::semantics
