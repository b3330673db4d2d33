#include "builder/passes/passes.h"
#ifdef EMBER_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace ember::engine {

void pass_select_implementations(BuildState& s) {
  // The CPU back end has one reference kernel per kind; the CUDA back end times its candidates
  // here (tactic selection) and records the winner.
  s.plan.backend = s.config.backend;
  s.plan.impls.clear();
  for (const Layer* l : s.plan.network.layers()) {
    std::string impl = s.config.backend + ".";
#ifdef EMBER_WITH_CUDA
    // Kinds without a device kernel run through the host fallback, which synchronizes: the
    // runtime never captures such plans into CUDA graphs.
    if (s.config.backend == "cuda" && !cuda::has_device_kernel(l->kind())) impl += "host.";
#endif
    s.plan.impls.push_back(impl + layer_kind_name(l->kind()));
  }
  s.log.push_back("select_implementations: " + std::to_string(s.plan.impls.size()) + " layers on " +
                  s.config.backend);
}

}  // namespace ember::engine
