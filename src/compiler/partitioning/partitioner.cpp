// The partitioner: which nodes run in engines, grouped into segments without cycles.
//
// Global mode assigns each supported node (in topological order) to an engine partition it can
// join without creating a cycle: a node may not join partition P when it depends on P through a
// node outside P ("P taints it"). Fast mode only extends the partition of the previous node.
// Partitions below min_block_size compute nodes fall back. Finally the units (engine
// partitions, single fallback nodes) are ordered topologically and adjacent fallback nodes are
// grouped, so the Python layer can rebuild the FX graph in segment order.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <set>
#include <unordered_map>

#include "ember/compiler/conversion.h"
#include "ember/compiler/partitioning.h"

namespace ember::compiler {

namespace {

bool op_matches(const std::string& op, const std::string& pattern) {
  if (op == pattern) return true;
  // "aten::add" names every overload of aten::add.
  return op.size() > pattern.size() && op.compare(0, pattern.size(), pattern) == 0 &&
         op[pattern.size()] == '.';
}

bool module_matches(const Node& node, const std::string& pattern) {
  const std::string& path = node.module_path();
  if (!path.empty() && (path == pattern || path.compare(0, pattern.size() + 1, pattern + ".") == 0)) {
    return true;
  }
  for (const std::string& type : node.module_types()) {
    if (type == pattern) return true;
    if (type.size() > pattern.size() &&
        type.compare(type.size() - pattern.size(), pattern.size(), pattern) == 0 &&
        type[type.size() - pattern.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

// truncate_double narrows i64 to i32 inside engines. A constant holding a value outside int32
// would change, so the node reading it runs in PyTorch, in i64, instead (the reason names the
// value). Graphs parsed from text have no constant data and pass.
std::string narrowing_problem(const Value* v) {
  const ConstantData& c = v->constant();
  if (c.data == nullptr) return "";
  const auto* data = static_cast<const int64_t*>(c.data.get());
  const size_t n = c.nbytes / sizeof(int64_t);
  for (size_t i = 0; i < n; ++i) {
    if (data[i] < INT32_MIN || data[i] > INT32_MAX) {
      return "%" + v->name() + " is an i64 constant holding " + std::to_string(data[i]) +
             " (element " + std::to_string(i) +
             "), outside int32: truncate_double=True would change it, so this node runs in "
             "PyTorch in i64";
    }
  }
  return "";
}

// A dtype check shared by every converter: each tensor must exist inside engines.
std::string dtype_problem(const Node& node, const CompileSettings& settings) {
  auto check = [&](const Value* v) -> std::string {
    if (v->dtype() == ScalarType::kI16) return "%" + v->name() + " is i16 (no engine type)";
    if (v->dtype() == ScalarType::kF64 && !settings.truncate_double) {
      return "%" + v->name() + " is f64 (set truncate_double=True to run it as f32)";
    }
    return "";
  };
  for (const Value* v : node.input_values()) {
    if (auto p = check(v); !p.empty()) return p;
    if (settings.truncate_double && v->is_constant() && v->dtype() == ScalarType::kI64) {
      if (auto p = narrowing_problem(v); !p.empty()) return p;
    }
  }
  for (const Value* v : node.outputs()) {
    if (auto p = check(v); !p.empty()) return p;
  }
  return "";
}

}  // namespace

bool is_shape_only_op(const std::string& op) {
  static const std::set<std::string> kShapeOps = {
      "aten::view", "aten::reshape", "aten::_unsafe_view", "aten::permute", "aten::transpose.int",
      "aten::t", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::squeeze.dim",
      "aten::squeeze.dims", "aten::flatten.using_ints", "aten::unflatten.int", "aten::alias",
      "aten::clone", "aten::contiguous", "aten::detach", "aten::slice.Tensor",
      "aten::select.int", "aten::split.Tensor", "aten::split_with_sizes", "aten::chunk",
      "aten::unbind.int", "aten::expand_as", "aten::view_as", "aten::sym_size.int",
      "aten::lift_fresh_copy", "aten::_to_copy", "aten::to.dtype", "aten::dropout"};
  return kShapeOps.count(op) != 0;
}

NodeSupport node_support(const Node& node, const CompileSettings& settings) {
  // A node the importer could not represent (a complex tensor, a non-tensor result): it stands
  // in the IR only so the partitioner sees what it reads and who reads it (docs/compiler_ir.md),
  // and always runs in PyTorch. Its arguments are the original target and the importer's reason.
  if (node.op() == kPyTorchOp) {
    return {false, "not imported (" + node.arg_string(0) + "): " + node.arg_string(1)};
  }
  if (!node.fx_name().empty()) {
    for (const auto& [name, why] : settings.torch_executed_nodes) {
      if (name == node.fx_name()) return {false, why};
    }
  }
  for (const std::string& p : settings.torch_executed_ops) {
    if (op_matches(node.op(), p)) return {false, "in torch_executed_ops ('" + p + "')"};
  }
  for (const std::string& p : settings.torch_executed_modules) {
    if (module_matches(node, p)) {
      return {false, "inside torch_executed_modules ('" + p + "', module '" +
                         node.module_path() + "')"};
    }
  }
  if (std::string p = dtype_problem(node, settings); !p.empty()) return {false, p};
  std::string why;
  if (ConverterRegistry::instance().find(node, settings, &why) == nullptr) return {false, why};
  return {true, ""};
}

std::string PartitionResult::report() const {
  // Plain string building (no iostreams; see Text in src/engine/runtime/inspector.cpp).
  int engines = 0;
  int engine_nodes = 0;
  int fallback_nodes = 0;
  for (const Segment& s : segments) {
    if (s.engine) {
      ++engines;
      engine_nodes += static_cast<int>(s.nodes.size());
    } else {
      fallback_nodes += static_cast<int>(s.nodes.size());
    }
  }
  const auto n = [](auto v) { return std::to_string(v); };
  std::string out = "Partition: " + n(segments.size()) + " segments (" + n(engines) + " engine, " +
                    n(segments.size() - engines) + " PyTorch); " + n(engine_nodes) +
                    " nodes in engines, " + n(fallback_nodes) + " in PyTorch\n";
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    out += "  segment " + n(i) + ": " + (s.engine ? "engine " : "pytorch") + " " +
           n(s.nodes.size()) + " nodes (" + n(s.compute_nodes) + " compute), " +
           n(s.inputs.size()) + " inputs, " + n(s.outputs.size()) + " outputs\n";
  }
  if (!fallback.empty()) {
    out += "Nodes run in PyTorch:\n";
    for (const auto& [node, why] : fallback) out += "  " + node->describe() + ": " + why + "\n";
  }
  return out;
}

PartitionResult partition(const Graph& g, const CompileSettings& settings, bool global) {
  const std::vector<Node*> nodes = g.nodes();
  const size_t n = nodes.size();
  PartitionResult result;

  // 1. Support of every node.
  std::vector<NodeSupport> support(n);
  for (size_t i = 0; i < n; ++i) support[i] = node_support(*nodes[i], settings);

  // 2. Assign supported nodes to partitions without cycles.
  std::vector<int> part(n, -1);                 // engine partition id, -1 = PyTorch
  std::vector<std::set<int>> tainted(n);        // partitions reached through an outside node
  int num_parts = 0;
  auto producer_index = [&](const Value* v) -> int {
    return v->producer() != nullptr ? v->producer()->index() : -1;
  };
  for (size_t i = 0; i < n; ++i) {
    const Node* node = nodes[i];
    std::set<int> taint_in;  // what the node is tainted by before choosing its partition
    std::vector<int> input_parts;
    for (const Value* v : node->input_values()) {
      const int p = producer_index(v);
      if (p < 0) continue;
      taint_in.insert(tainted[p].begin(), tainted[p].end());
      if (part[p] >= 0) input_parts.push_back(part[p]);
    }
    if (support[i].supported) {
      int chosen = -1;
      // Prefer an input's partition; in global mode any untainted partition (latest first).
      for (int p : input_parts) {
        if (taint_in.count(p) == 0) {
          chosen = p;
          break;
        }
      }
      if (chosen < 0) {
        if (global) {
          for (int p = num_parts - 1; p >= 0; --p) {
            if (taint_in.count(p) == 0) {
              chosen = p;
              break;
            }
          }
        } else if (i > 0 && part[i - 1] >= 0 && taint_in.count(part[i - 1]) == 0) {
          chosen = part[i - 1];
        }
      }
      if (chosen < 0) chosen = num_parts++;
      part[i] = chosen;
    }
    // Taint: a partition reached from a node outside it.
    std::set<int> t = taint_in;
    for (const Value* v : node->input_values()) {
      const int p = producer_index(v);
      if (p >= 0 && part[p] >= 0 && part[p] != part[i]) t.insert(part[p]);
    }
    tainted[i] = std::move(t);
  }

  // 3. min_block_size: count compute nodes per partition, demote small ones.
  std::vector<int> compute(num_parts, 0);
  for (size_t i = 0; i < n; ++i) {
    if (part[i] >= 0 && !is_shape_only_op(nodes[i]->op())) ++compute[part[i]];
  }
  std::vector<std::string> why(n);
  for (size_t i = 0; i < n; ++i) {
    if (part[i] < 0) {
      why[i] = support[i].reason;
    } else if (compute[part[i]] < settings.min_block_size) {
      why[i] = "its engine segment has " + std::to_string(compute[part[i]]) +
               " compute nodes, below min_block_size " + std::to_string(settings.min_block_size);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (part[i] >= 0 && compute[part[i]] < settings.min_block_size) part[i] = -1;
  }

  if (settings.require_full_compilation) {
    std::string list;
    int count = 0;
    for (size_t i = 0; i < n; ++i) {
      if (part[i] < 0 && !support[i].supported) {
        list += "\n  " + nodes[i]->describe() + ": " + why[i];
        ++count;
      }
    }
    if (count > 0) {
      throw Error("require_full_compilation=True, but " + std::to_string(count) +
                  " node(s) cannot run in an engine:" + list);
    }
    // Every node is supported: the whole graph is one engine, whatever min_block_size says.
    std::fill(part.begin(), part.end(), 0);
    std::fill(why.begin(), why.end(), std::string());
  }

  // 4. Units: each engine partition, and each PyTorch node alone. Order them topologically
  //    (Kahn, smallest first node first) and group adjacent PyTorch nodes.
  std::map<int, int> part_unit;
  std::vector<std::vector<size_t>> unit_nodes;
  std::vector<int> unit_of(n);
  for (size_t i = 0; i < n; ++i) {
    if (part[i] >= 0) {
      auto [it, fresh] = part_unit.emplace(part[i], static_cast<int>(unit_nodes.size()));
      if (fresh) unit_nodes.emplace_back();
      unit_of[i] = it->second;
    } else {
      unit_of[i] = static_cast<int>(unit_nodes.size());
      unit_nodes.emplace_back();
    }
    unit_nodes[unit_of[i]].push_back(i);
  }
  const size_t units = unit_nodes.size();
  std::vector<std::set<int>> succ(units);
  std::vector<int> indeg(units, 0);
  for (size_t i = 0; i < n; ++i) {
    for (const Value* v : nodes[i]->input_values()) {
      const int p = producer_index(v);
      if (p < 0 || unit_of[p] == unit_of[i]) continue;
      if (succ[unit_of[p]].insert(unit_of[i]).second) ++indeg[unit_of[i]];
    }
  }
  std::set<std::pair<size_t, int>> ready;  // (first node index, unit)
  for (size_t u = 0; u < units; ++u) {
    if (indeg[u] == 0) ready.insert({unit_nodes[u].front(), static_cast<int>(u)});
  }
  std::vector<int> order;
  while (!ready.empty()) {
    const int u = ready.begin()->second;
    ready.erase(ready.begin());
    order.push_back(u);
    for (int s : succ[u]) {
      if (--indeg[s] == 0) ready.insert({unit_nodes[s].front(), s});
    }
  }
  if (order.size() != units) throw Error("partitioner: internal error, segments form a cycle");

  std::vector<int> segment_of(n, -1);
  for (int u : order) {
    const bool engine = part[unit_nodes[u].front()] >= 0;
    if (engine || result.segments.empty() || result.segments.back().engine) {
      result.segments.emplace_back();
      result.segments.back().engine = engine;
    }
    Segment& s = result.segments.back();
    for (size_t i : unit_nodes[u]) {
      s.nodes.push_back(nodes[i]);
      segment_of[i] = static_cast<int>(result.segments.size()) - 1;
      if (!is_shape_only_op(nodes[i]->op())) ++s.compute_nodes;
    }
  }

  // 5. Segment inputs and outputs. Users are gathered once (Graph::users scans the graph).
  const std::vector<Value*>& graph_outputs = g.outputs();
  std::unordered_map<const Value*, std::vector<size_t>> users;
  for (size_t i = 0; i < n; ++i) {
    for (const Value* v : nodes[i]->input_values()) users[v].push_back(i);
  }
  for (size_t si = 0; si < result.segments.size(); ++si) {
    Segment& s = result.segments[si];
    std::set<const Value*> seen_in;
    for (const Node* node : s.nodes) {
      for (Value* v : node->input_values()) {
        if (v->is_constant()) continue;
        const int p = producer_index(v);
        if (p >= 0 && segment_of[p] == static_cast<int>(si)) continue;
        if (seen_in.insert(v).second) s.inputs.push_back(v);
      }
      for (Value* v : node->outputs()) {
        bool outside = std::find(graph_outputs.begin(), graph_outputs.end(), v) !=
                       graph_outputs.end();
        for (size_t user : users[v]) {
          if (segment_of[user] != static_cast<int>(si)) outside = true;
        }
        if (outside) s.outputs.push_back(v);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (part[i] < 0) result.fallback.emplace_back(nodes[i], why[i]);
  }
  return result;
}

}  // namespace ember::compiler
