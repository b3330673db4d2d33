// parallel_for: a fork-join split over std::threads (private to the CPU back end).
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace ember::engine::cpu {

/// Number of worker threads kernels use (hardware concurrency, at least 1; EMBER_CPU_THREADS
/// overrides).
int num_threads();

template <typename Fn>
void parallel_for(int64_t n, int64_t cost_per_item, Fn&& fn) {
  constexpr int64_t kMinWorkPerThread = 1 << 16;
  const int64_t workers = std::min<int64_t>(
      num_threads(), std::max<int64_t>(1, (n * std::max<int64_t>(cost_per_item, 1)) / kMinWorkPerThread));
  if (workers <= 1 || n < 2) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + workers - 1) / workers;
  std::vector<std::thread> threads;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b < e) threads.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(int64_t{0}, std::min(n, chunk));
  for (auto& t : threads) t.join();
}

}  // namespace ember::engine::cpu
