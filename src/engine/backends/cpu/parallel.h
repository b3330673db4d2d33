// parallel_for: a fork-join split of a loop over the worker threads (private to the CPU back
// end). With OpenMP (EMBER_WITH_OPENMP) it runs on the OpenMP team, the same threads oneDNN
// uses, so kernels and oneDNN primitives never compete for the cores; without it, it starts
// std::threads per call.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#ifdef EMBER_WITH_OPENMP
#include <omp.h>
#endif

namespace ember::engine::cpu {

/// Number of worker threads the kernels and oneDNN use: EMBER_CPU_THREADS when set (> 0);
/// otherwise OpenMP's count for the calling thread (OMP_NUM_THREADS, or inside PyTorch
/// torch.get_num_threads(): the process has one OpenMP runtime, torch's), or the hardware
/// concurrency in a build without OpenMP. Read on every call.
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
#ifdef EMBER_WITH_OPENMP
  // An exception must not leave an OpenMP region: the first one is kept and rethrown after it.
  std::exception_ptr error;
#pragma omp parallel num_threads(static_cast<int>(workers))
  {
    const int64_t b = omp_get_thread_num() * chunk, e = std::min(n, b + chunk);
    if (b < e) {
      try {
        fn(b, e);
      } catch (...) {
#pragma omp critical(ember_parallel_for_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
#else
  std::vector<std::thread> threads;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b < e) threads.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(int64_t{0}, std::min(n, chunk));
  for (auto& t : threads) t.join();
#endif
}

}  // namespace ember::engine::cpu
