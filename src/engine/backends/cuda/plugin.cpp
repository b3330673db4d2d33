// Plugin layers on the CUDA back end: the plugin's enqueue on device buffers, on the context's
// stream, with the context's workspace. A plugin with several tactics on "cuda" has them timed
// on the GPU on the first eager call of each problem (the builder's time_tactics run, or an
// engine's first call where the plan's timing section lacks the problem), and the fastest is
// kept in the timing cache and the plan like a cuBLASLt or cuDNN choice.
#include <cuda_runtime_api.h>

#include <cstring>

#include "backends/cuda/cuda_backend.h"
#include "ember/engine/plugin.h"
#include "plan/serialize.h"

namespace ember::engine::cuda {

namespace {

constexpr int kTimingWarmups = 1;
constexpr int kTimingRepeats = 5;

std::string who(const PluginParams& p) {
  return "plugin '" + p.creator + "' version '" + p.version + "'";
}

// The timing-cache key of one plugin call: creator, version, attributes (hashed) and the
// operands' dtypes and dims; a tactic timed for one shape is not assumed best for another.
std::string plugin_problem(const PluginParams& p, const std::vector<PluginTensor>& ins,
                           const std::vector<PluginTensor>& outs) {
  char hash[24];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(fnv1a64(p.attributes.data(), p.attributes.size())));
  std::string s = "plugin:" + p.creator + ":" + p.version + ";attributes=" + hash + ";";
  for (const auto* list : {&ins, &outs}) {
    s += list == &ins ? "in=" : "out=";
    for (const PluginTensor& t : *list) s += std::string(dtype_name(t.dtype)) + dims_to_string(t.dims);
    s += ";";
  }
  return s;
}

// Median-free best-of timing: each tactic runs kTimingWarmups times, then kTimingRepeats times
// between two events; the fastest average wins. Outputs are overwritten by every run, and the
// last run of the winner is not assumed: the caller runs the chosen tactic once more.
int time_tactics(const PluginParams& p, const std::vector<PluginTensor>& ins,
                 const std::vector<PluginTensor>& outs, PluginRunContext ctx, int num_tactics) {
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "cudaEventCreate (plugin tactic timing)");
  if (cudaEventCreate(&stop) != cudaSuccess) {
    cudaEventDestroy(start);
    check(cudaGetLastError(), "cudaEventCreate (plugin tactic timing)");
  }
  int best = 0;
  float best_ms = -1.0f;
  try {
    for (int t = 0; t < num_tactics; ++t) {
      ctx.tactic = t;
      for (int i = 0; i < kTimingWarmups; ++i) p.plugin->enqueue(ins, outs, ctx);
      check(cudaEventRecord(start, stream), "cudaEventRecord (plugin tactic timing)");
      for (int i = 0; i < kTimingRepeats; ++i) p.plugin->enqueue(ins, outs, ctx);
      check(cudaEventRecord(stop, stream), "cudaEventRecord (plugin tactic timing)");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize (plugin tactic timing)");
      float ms = 0.0f;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime (plugin tactic timing)");
      if (best_ms < 0.0f || ms < best_ms) {
        best = t;
        best_ms = ms;
      }
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

// The tactic for this call: from the timing cache, timed now on an eager call that misses it,
// or 0 while capturing (a capture never times; the eager first call of a signature did).
int choose_tactic(const PluginParams& p, const std::vector<PluginTensor>& ins,
                  const std::vector<PluginTensor>& outs, const PluginRunContext& ctx,
                  const CudaArgs& a) {
  const int n = p.plugin->num_tactics("cuda");
  TimingCache* cache = a.res->timing_cache();
  if (n <= 1 || cache == nullptr) return 0;
  const std::string problem = plugin_problem(p, ins, outs);
  bool checked = false;
  if (auto choice = cache->lookup(timing_device_key(), problem, &checked)) {
    int32_t t = -1;
    if (choice->size() == sizeof t) std::memcpy(&t, choice->data(), sizeof t);
    if (t >= 0 && t < n) {
      if (!checked) cache->mark_checked(timing_device_key(), problem);
      return t;
    }
    // A choice from another version of the plugin (fewer tactics now): time again.
  }
  if (ctx.capturing) return 0;
  const int32_t best = time_tactics(p, ins, outs, ctx, n);
  const auto* b = reinterpret_cast<const uint8_t*>(&best);
  cache->store(timing_device_key(), problem, std::vector<uint8_t>(b, b + sizeof best));
  cache->note_timed();
  return best;
}

}  // namespace

void run(const PluginParams& p, const CudaArgs& a) {
  if (!p.plugin) throw Error(who(p) + " has no instance");
  std::vector<PluginTensor> ins;
  std::vector<PluginTensor> outs;
  for (const DeviceTensor* t : a.inputs) ins.push_back({t->data, t->dtype, t->dims});
  for (const DeviceTensor* t : a.outputs) outs.push_back({t->data, t->dtype, t->dims});
  PluginRunContext ctx;
  ctx.backend = "cuda";
  ctx.stream = a.stream();
  ctx.capturing = capturing(a.stream());
  try {
    ctx.workspace_bytes = p.plugin->workspace_size(ins, outs);
    ctx.workspace = ctx.workspace_bytes > 0 ? a.res->workspace(ctx.workspace_bytes) : nullptr;
    ctx.tactic = choose_tactic(p, ins, outs, ctx, a);
    p.plugin->enqueue(ins, outs, ctx);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(who(p) + ": " + e.what());
  }
}

}  // namespace ember::engine::cuda
