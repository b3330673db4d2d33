// Partitioning: splits the lowered graph into engine segments (converted and built) and PyTorch
// fallback segments, from what the converter registry says it supports.
#pragma once

#include <string>
#include <vector>

#include "ember/compiler/ir.h"
#include "ember/compiler/settings.h"

namespace ember::compiler {

/// The op of an IR node that stands for a PyTorch node the importer could not represent:
/// arguments (original target, reason, inputs); it never runs in an engine.
inline constexpr const char* kPyTorchOp = "ember::pytorch";

/// Whether one node can run in an engine, and why not.
struct NodeSupport {
  bool supported = false;
  std::string reason;  ///< Empty when supported.
};

/// Asks the registry and the settings (torch_executed_ops / torch_executed_modules) about `node`.
NodeSupport node_support(const Node& node, const CompileSettings& settings);

/// A group of nodes that runs together.
struct Segment {
  bool engine = false;           ///< True: converted into one engine. False: runs in PyTorch.
  std::vector<Node*> nodes;      ///< In graph order.
  std::vector<Value*> inputs;    ///< Values read but not produced here (constants excluded).
  std::vector<Value*> outputs;   ///< Values produced here and read elsewhere (or graph outputs).
  /// Compute nodes (the ones min_block_size counts: not views or reshapes).
  int compute_nodes = 0;
};

/// The partitioner's answer.
struct PartitionResult {
  std::vector<Segment> segments;  ///< Topologically ordered.
  /// Each node that falls back, with its reason ("no converter for aten::foo", "in
  /// torch_executed_ops", "segment of 2 compute nodes is below min_block_size 5").
  std::vector<std::pair<const Node*, std::string>> fallback;
  /// A readable report: segments, node counts, each fallback node and why.
  std::string report() const;
};

/// True for ops that only move or view data (not counted by min_block_size).
bool is_shape_only_op(const std::string& op);

/// Partitions `g`. `global` merges non-adjacent supported nodes into one segment where that
/// creates no cycle; otherwise segments are maximal runs of adjacent supported nodes. Throws
/// Error listing every unsupported node when settings.require_full_compilation is set and
/// anything falls back.
PartitionResult partition(const Graph& g, const CompileSettings& settings, bool global = true);

}  // namespace ember::compiler
