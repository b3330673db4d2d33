#include <set>

#include "builder/passes/passes.h"

namespace ember::engine {

int remove_unreachable_layers(Network& net) {
  // Mark what reaches an output, walking backwards from the outputs.
  std::set<const Layer*> live;
  std::vector<const Tensor*> work(net.outputs().begin(), net.outputs().end());
  while (!work.empty()) {
    const Tensor* t = work.back();
    work.pop_back();
    const Layer* p = t->producer();
    if (p == nullptr || !live.insert(p).second) continue;
    for (const Tensor* in : p->inputs()) {
      if (in != nullptr) work.push_back(in);
    }
  }
  const auto layers = net.layers();
  int removed = 0;
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    if (live.count(*it) == 0) {
      net.remove_layer(*it);
      ++removed;
    }
  }
  return removed;
}

void pass_remove_dead_layers(BuildState& s) {
  const int removed = remove_unreachable_layers(s.plan.network);
  s.log.push_back("remove_dead_layers: removed " + std::to_string(removed) + " layers");
}

}  // namespace ember::engine
