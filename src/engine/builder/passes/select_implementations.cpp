#include "builder/passes/passes.h"

namespace ember::engine {

void pass_select_implementations(BuildState& s) {
  // The CPU back end has one reference kernel per kind; the CUDA back end times its candidates
  // here (tactic selection) and records the winner.
  s.plan.backend = s.config.backend;
  s.plan.impls.clear();
  for (const Layer* l : s.plan.network.layers()) {
    s.plan.impls.push_back(s.config.backend + "." + layer_kind_name(l->kind()));
  }
  s.log.push_back("select_implementations: " + std::to_string(s.plan.impls.size()) + " layers on " +
                  s.config.backend);
}

}  // namespace ember::engine
