// What the CPU back end's oneDNN kernels (dnnl_conv.cpp, dnnl_matmul.cpp, attention.cpp) share:
// the engine, the switch, the activation mapping and the thread count. Only included where the
// build has oneDNN (EMBER_WITH_DNNL).
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <string>
#include <unordered_map>
#include <vector>

#include "backends/cpu/dnnl_fallback.h"
#include "backends/cpu/kernels.h"
#include "backends/cpu/parallel.h"

namespace ember::engine::cpu {

/// The process's oneDNN CPU engine.
dnnl::engine& dnnl_cpu_engine();

/// False when EMBER_CPU_DNNL=0 (read on every call, so a test can switch it).
bool dnnl_enabled();

/// oneDNN's eltwise algorithm and its alpha/beta for an activation, when oneDNN has the same
/// formula; false for the ones the reference activation must run.
bool dnnl_eltwise_for(ActivationType t, double alpha, double beta, dnnl::algorithm& alg,
                      float& a, float& b);

/// Sizes the calling thread's OpenMP team (which oneDNN's OpenMP runtime uses) to
/// num_threads() for one scope, and restores it. Inside PyTorch the OpenMP runtime is torch's,
/// so without EMBER_CPU_THREADS this changes nothing: oneDNN then uses torch.get_num_threads().
class OmpThreadsScope {
 public:
  OmpThreadsScope();
  ~OmpThreadsScope();
  OmpThreadsScope(const OmpThreadsScope&) = delete;
  OmpThreadsScope& operator=(const OmpThreadsScope&) = delete;

 private:
  int saved_ = 0;
};

/// Runs `prim` on a fresh stream and waits, with oneDNN's OpenMP team sized to num_threads()
/// (EMBER_CPU_THREADS may ask for fewer threads than the process's OpenMP setting).
void dnnl_execute(const dnnl::primitive& prim, const std::unordered_map<int, dnnl::memory>& args);

/// A reorder from `from` to `to` (layout changes), run like dnnl_execute.
void dnnl_reorder(const dnnl::memory& from, const dnnl::memory& to);

/// A float pointer to `t`'s values: the tensor's memory when it is f32, otherwise `storage`
/// filled with the converted values.
float* dnnl_f32_view(const HostTensor& t, std::vector<float>& storage);

/// Notes that oneDNN refused a layer (the reference kernel then runs it): counted
/// (dnnl_fallback_count), reported once per layer and context through the context's warnings
/// (ExecutionContext::take_warnings; the PyTorch bridge raises them as warnings) with oneDNN's
/// reason, and printed to stderr under EMBER_LAYER_PROFILE. `stage` is "creation" or
/// "execution".
void dnnl_refused(const KernelArgs& a, const char* kernel, const char* stage, const dnnl::error& e);

/// The cache entry of (`a.layer`, `key`) in `a.cache`, made by `make()` when missing; with no
/// cache (constant folding, the test oracle) a fresh entry owned by `local`. The cache is
/// bounded (dynamic shapes make one entry per shape) and cleared when full. A oneDNN primitive
/// must run with the thread count it was created for (its work split is fixed then; another
/// count fails with "unimplemented"), so the count is part of the key and `make()` runs with
/// the team sized as dnnl_execute sizes it.
template <class T, class Make>
T* dnnl_cached(const KernelArgs& a, const std::string& key, std::unique_ptr<T>& local, Make make) {
  constexpr size_t kMaxCached = 512;
  if (dnnl_refusing_for_testing()) {
    throw dnnl::error(dnnl_unimplemented, "refused by dnnl_refuse_for_testing");
  }
  const OmpThreadsScope threads;
  if (a.cache == nullptr || a.layer == nullptr) {
    local = make();
    return local.get();
  }
  auto k = std::make_pair(a.layer, key + "#t" + std::to_string(num_threads()));
  auto it = a.cache->entries.find(k);
  if (it == a.cache->entries.end()) {
    if (a.cache->entries.size() >= kMaxCached) a.cache->entries.clear();
    it = a.cache->entries.emplace(k, make()).first;
  }
  return static_cast<T*>(it->second.get());
}

}  // namespace ember::engine::cpu
