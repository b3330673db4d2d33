// Dead-code removal: exported programs are functional, so a node whose outputs nobody reads
// (no node, not a graph output) can go, and so can the constants that only it read.
#include <unordered_map>

#include "ember/compiler/lowering.h"

namespace ember::compiler {

int lower_remove_dead_code(Graph& g) {
  int removed = 0;
  // Use counts gathered once (Graph::is_used scans the graph) and updated as nodes go.
  std::unordered_map<const Value*, int> uses;
  for (const Value* v : g.outputs()) ++uses[v];
  std::vector<Node*> nodes = g.nodes();
  for (const Node* node : nodes) {
    for (const Value* v : node->input_values()) ++uses[v];
  }
  // Walking backwards removes whole dead chains in one sweep: by the time a producer is
  // visited, its dead consumers are already gone.
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    Node* node = *it;
    bool used = false;
    for (const Value* v : node->outputs()) used = used || uses[v] > 0;
    if (used) continue;
    for (const Value* v : node->input_values()) --uses[v];
    g.remove_node(node);
    ++removed;
  }
  g.compact();
  return removed;
}

}  // namespace ember::compiler
