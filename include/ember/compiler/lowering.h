// Lowering: graph-to-graph passes run after import and before partitioning. Each pass is a
// function of the graph (and settings) and reports what it changed; each is tested alone as
// before/after IR text (tests/cpp/compiler/lowering_test.cpp).
#pragma once

#include <string>
#include <vector>

#include "ember/compiler/ir.h"
#include "ember/compiler/settings.h"

namespace ember::compiler {

/// One line per pass run: "remove_noops: removed 3 nodes".
struct LoweringReport {
  std::vector<std::string> log;
};

/// Removes nodes whose outputs are unused (aten ops are side-effect free in exported programs).
int lower_remove_dead_code(Graph& g);
/// Removes nodes that compute their input unchanged: dropout in eval (p = 0 or train = false),
/// detach, alias, clone, contiguous, lift_fresh_copy, identity-dtype _to_copy, no-op
/// expand/view/reshape to the same shape. Their outputs are replaced by their inputs.
int lower_remove_noops(Graph& g);
/// Evaluates nodes whose inputs are all constants (with data) on the engine's CPU back end and
/// replaces their outputs by new constants, up to `max_bytes` per constant.
int lower_fold_constants(Graph& g, const CompileSettings& settings, size_t max_bytes = 64 << 20);
/// Rewrites ops into the forms converters expect: e.g. aten::linear is kept, aten::t becomes
/// aten::permute, scalar-overload aliases (aten::add.Scalar) become their Tensor forms.
int lower_canonicalize(Graph& g);

/// Runs every pass above in order until nothing changes.
LoweringReport lower(Graph& g, const CompileSettings& settings);

}  // namespace ember::compiler
