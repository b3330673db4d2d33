// time_tactics: the back end's tactic timing (Backend::time_tactics). For "cuda" on a machine
// with a GPU it runs the finished plan once so that every matmul and (de)convolution problem is
// timed, records the GPU's compute capability as the plan's build target, and puts the winning
// algorithms into the plan's timing section (backends/cuda/backend.cpp). The CPU back end has no
// tactics to time.
#include "backends/backend.h"
#include "builder/passes/passes.h"

namespace ember::engine {

void pass_time_tactics(BuildState& s) {
  const Backend* backend = find_backend(s.plan.backend);
  if (backend != nullptr) backend->time_tactics(s);  // validate() refused unknown back ends
}

}  // namespace ember::engine
