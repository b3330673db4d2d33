#include "backends/backend.h"
#include "builder/passes/passes.h"

namespace ember::engine {

void pass_select_implementations(BuildState& s) {
  // Each back end names how it runs each layer (the CPU back end: one reference kernel per kind;
  // the CUDA back end: a device kernel, or "cuda.host.<Kind>" for the host fallback, which the
  // runtime never captures into a CUDA graph).
  const Backend* backend = find_backend(s.config.backend);
  if (backend == nullptr) throw Error("select_implementations: unknown back end '" + s.config.backend + "'");
  s.plan.backend = s.config.backend;
  s.plan.impls.clear();
  std::vector<std::string> degraded;
  for (const Layer* l : s.plan.network.layers()) {
    s.plan.impls.push_back(backend->implementation(*l));
    if (std::string why = backend->degradation(*l); !why.empty()) {
      degraded.push_back("degraded: " + l->describe() + " runs as " + s.plan.impls.back() + ": " +
                         why);
    }
  }
  s.log.push_back("select_implementations: " + std::to_string(s.plan.impls.size()) + " layers on " +
                  s.config.backend);
  s.log.insert(s.log.end(), degraded.begin(), degraded.end());
}

}  // namespace ember::engine
