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

/// Removes nodes whose outputs are unused (aten ops are side-effect free in exported programs),
/// then drops constants no node reads. Nodes without outputs (runtime asserts such as
/// aten::_assert_scalar) count as unused: engines do not run them. Returns the number of nodes
/// removed.
int lower_remove_dead_code(Graph& g);
/// Removes nodes that compute their input unchanged: dropout in eval (p = 0 or train = false),
/// detach, alias, clone, contiguous, lift_fresh_copy, identity-dtype _to_copy, no-op
/// expand/view/reshape to the same shape. Their outputs are replaced by their inputs. Only
/// single-output nodes whose output has exactly the input's dtype and symbolic shape qualify;
/// a _to_copy that names a device stays (it may be a real transfer in a fallback segment).
/// Returns the number of nodes removed.
int lower_remove_noops(Graph& g);
/// Evaluates nodes whose inputs are all constants (with data) on the engine's CPU back end and
/// replaces their outputs by new constants, up to `max_bytes` per constant. Works node by node
/// in topological order, so chains fold. Skips (without failing) nodes that no converter takes,
/// whose conversion or build fails, with symbolic or empty outputs, with unused outputs, and
/// random or uninitialized-memory ops (rand*, dropout, bernoulli, empty, ...). Returns the
/// number of nodes folded.
int lower_fold_constants(Graph& g, const CompileSettings& settings, size_t max_bytes = 64 << 20);
/// Rewrites ops into the forms converters expect: aten::linear is kept; aten::t,
/// aten::transpose.int, swapaxes and swapdims become aten::permute (or vanish when they move
/// nothing); aten::squeeze without dims becomes aten::squeeze.dims; aten::flatten.using_ints
/// becomes aten::view with the computed symbolic shape; full aten::mean / aten::sum become
/// aten::mean.dim / aten::sum.dim_IntList over every dim; scalar overloads of binary ops
/// (aten::add.Scalar) become their Tensor forms. Replacements keep the fx name and module.
/// Nodes with arguments it cannot read are left for conversion to report. Returns the number
/// of nodes rewritten or removed.
int lower_canonicalize(Graph& g);
/// Replaces the tanh approximation of GELU written as arithmetic,
/// 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3)))), by aten::gelu(x, "tanh").
/// The formula's other nodes are left for remove_dead_code. Returns the number of rewrites.
int lower_recognize_gelu(Graph& g);

/// Runs remove_noops, canonicalize, recognize_gelu, fold_constants and remove_dead_code in that
/// order, for at
/// most 4 rounds, until a round changes nothing. The report has one line per pass run and a
/// last line saying how many rounds it took.
LoweringReport lower(Graph& g, const CompileSettings& settings);

}  // namespace ember::compiler
