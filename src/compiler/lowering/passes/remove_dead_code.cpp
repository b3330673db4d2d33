// Dead-code removal: exported programs are functional, so a node whose outputs nobody reads
// (no node, not a graph output) can go, and so can the constants that only it read.
#include "ember/compiler/lowering.h"

namespace ember::compiler {

int lower_remove_dead_code(Graph& g) {
  int removed = 0;
  // Walking backwards removes whole dead chains in one sweep: by the time a producer is
  // visited, its dead consumers are already gone.
  std::vector<Node*> nodes = g.nodes();
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    Node* node = *it;
    bool used = false;
    for (const Value* v : node->outputs()) used = used || g.is_used(v);
    if (used) continue;
    g.remove_node(node);
    ++removed;
  }
  g.compact();
  return removed;
}

}  // namespace ember::compiler
