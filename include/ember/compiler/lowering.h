// Lowering: graph-to-graph passes run after import and before partitioning. Each pass is a
// function of the graph (and settings) and reports what it changed; each is tested alone as
// before/after IR text (tests/cpp/compiler/lowering_test.cpp).
#pragma once

#include <string>
#include <vector>

#include "ember/compiler/ir.h"
#include "ember/compiler/settings.h"

namespace ember::compiler {

/// A node autocast left in f32, and the rule that kept it there.
struct AutocastDecision {
  std::string node;    ///< fx node name ("" for compiler-made nodes).
  std::string op;      ///< "aten::_softmax".
  std::string reason;  ///< "rule table: softmax (...)", "autocast_excluded_nodes '^fc$'", ...
};

/// What the autocast pass did.
struct AutocastReport {
  int lowered = 0;                      ///< Nodes now running in the low-precision type.
  int casts = 0;                        ///< Cast nodes inserted.
  int pairs_removed = 0;                ///< Redundant cast pairs bypassed.
  std::vector<AutocastDecision> kept;   ///< f32 nodes kept in f32, in graph order.
};

/// One line per pass run: "remove_noops: removed 3 nodes". `autocast` is filled when
/// settings.enable_autocast is set.
struct LoweringReport {
  std::vector<std::string> log;
  AutocastReport autocast;
};

/// One row of autocast's rule table: ops that lose accuracy in f16/bf16 and stay f32.
struct AutocastRule {
  std::string op;        ///< Op name without overload ("aten::_softmax"): every overload.
  /// "softmax", "normalization", "exp/log", "reduction", "distance" or "loss".
  std::string category;
  std::string why;       ///< One sentence: what goes wrong in low precision.
};

/// The rule table (the one place it lives; docs/precision.md shows it).
const std::vector<AutocastRule>& autocast_rules();

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
/// Replaces attention written out by hand, matmul(softmax(matmul(q [*c], k^T) [*c|/c]
/// [+ mask | where(bool_mask, ., -big)], dim=-1), v), by one aten::scaled_dot_product_attention
/// with the combined scale (Hugging Face's eager attention, GPT-2's causal where(), T5's
/// position bias). Only rank-4 float q/k/v of one dtype, a scale applied before the mask, a
/// softmax over the last dim and intermediates with no other reader qualify; a bool mask's fill
/// must be <= -1e4. The replaced nodes are left for remove_dead_code. Returns the number of
/// rewrites.
int lower_recognize_attention(Graph& g);

/// Autocast (Torch-TensorRT's enable_autocast): runs f32 nodes in the low-precision type
/// (settings.autocast_low_precision_type), inserting casts where a low-precision value meets an
/// f32 reader and the reverse. A node stays f32 when, in this order: its name or module path
/// matches autocast_excluded_nodes; its op is in autocast_excluded_ops; its op is in the rule
/// table (autocast_rules()); it reduces over more than autocast_max_depth_of_reduction
/// elements; a value it reads or writes has a measured max |x| above
/// autocast_max_output_threshold; no converter takes it (it runs in PyTorch) or its converter
/// refuses the low-precision version. View and copy ops follow their input. Nodes with no f32
/// output are left as they are. Graph inputs and outputs keep their dtypes. The rebuilt node
/// keeps its output names (now low precision); an f32 copy of a lowered value is
/// "%<name>_f32", a low copy of an f32 value "%<name>_f16" (or "_bf16"); both carry the fx
/// name, and torch_dtype() records PyTorch's dtype so engine boundaries cast back. A cast of a
/// value that widens a low-precision value (f16 -> f32) is bypassed rather than cast back (a
/// redundant pair). Throws Error on an invalid regex or low-precision type.
AutocastReport lower_autocast(Graph& g, const CompileSettings& settings);
/// Bypasses cast pairs that return their input exactly: a widening cast (f16 -> f32, bf16 ->
/// f32, i32 -> i64, ...) followed by a cast back to the original type. Returns the number of
/// pairs bypassed (the casts themselves are left for remove_dead_code).
int lower_remove_cast_pairs(Graph& g);

/// Runs remove_noops, canonicalize, recognize_gelu, fold_constants, recognize_attention and
/// remove_dead_code in that order, for at
/// most 4 rounds, until a round changes nothing. The report has one line per pass run and a
/// last line saying how many rounds it took. With settings.enable_autocast, autocast then runs
/// once (it converts weight constants itself), followed by remove_cast_pairs and
/// remove_dead_code.
LoweringReport lower(Graph& g, const CompileSettings& settings);

}  // namespace ember::compiler
