// No-op removal: nodes whose single output equals their first input (same dtype, same
// symbolic shape, same values) are bypassed, so the partitioner and the converters never see
// them. In the IR every tensor is a value: copies, aliases and contiguity changes are all the
// identity.
#include <algorithm>
#include <string>
#include <unordered_set>

#include "ember/compiler/lowering.h"

namespace ember::compiler {

namespace {

// Ops that return their input's values whenever dtype and shape are unchanged.
const std::unordered_set<std::string>& identity_ops() {
  static const std::unordered_set<std::string> ops = {
      "aten::detach",          "aten::detach_copy", "aten::alias",
      "aten::alias_copy",      "aten::clone",       "aten::contiguous",
      "aten::lift_fresh_copy", "aten::lift_fresh",  "aten::type_as",
  };
  return ops;
}

// Shape ops that are the identity exactly when the output shape equals the input shape: a
// row-major reinterpretation, broadcast, squeeze, flatten, full slice or repeat that leaves
// every dim as it was moves nothing. (A permute can keep the shape and still move data, so it
// is not here.)
const std::unordered_set<std::string>& same_shape_identity_ops() {
  static const std::unordered_set<std::string> ops = {
      "aten::view",         "aten::view_copy",
      "aten::reshape",      "aten::_unsafe_view",
      "aten::expand",       "aten::expand_copy",
      "aten::squeeze",      "aten::squeeze.dim",
      "aten::squeeze.dims", "aten::flatten.using_ints",
      "aten::slice.Tensor", "aten::slice_copy.Tensor",
      "aten::repeat",
  };
  return ops;
}

// Dropout variants (input, p, train): the identity in eval mode or with p = 0. The
// multi-output aten::native_dropout also returns a mask and is left alone.
bool is_inactive_dropout(const Node& node) {
  const std::string& op = node.op();
  if (op != "aten::dropout" && op != "aten::feature_dropout" && op != "aten::alpha_dropout" &&
      op != "aten::feature_alpha_dropout") {
    return false;
  }
  try {
    return !node.arg_bool_or(2, true) || node.arg_double_or(1, 0.5) == 0.0;
  } catch (const Error&) {
    return false;  // unexpected arguments: keep the node and let conversion report it
  }
}

// dtype conversions: the identity when the dtype is unchanged and no device is named. A named
// device may be a real transfer for a PyTorch fallback segment, so those stay.
bool is_same_dtype_copy(const Node& node) {
  const std::string& op = node.op();
  // Position of the device argument in each schema (-1: the schema has none).
  int device_arg = -1;
  if (op == "aten::_to_copy" || op == "aten::to.dtype_layout") {
    device_arg = 3;
  } else if (op != "aten::to.dtype") {
    return false;
  }
  return device_arg < 0 || node.arg_is_none(static_cast<size_t>(device_arg));
}

bool is_noop(const Node& node) {
  if (node.outputs().size() != 1 || node.num_args() == 0) return false;
  const Value* const* in = std::get_if<Value*>(&node.args()[0]);
  if (in == nullptr) return false;
  const Value* out = node.output();
  // The types must match whatever the op: this is what makes the bypass safe.
  if ((*in)->dtype() != out->dtype() || (*in)->shape() != out->shape()) return false;
  const std::string& op = node.op();
  return identity_ops().count(op) > 0 || same_shape_identity_ops().count(op) > 0 ||
         is_inactive_dropout(node) || is_same_dtype_copy(node);
}

}  // namespace

int lower_remove_noops(Graph& g) {
  int removed = 0;
  const std::vector<Value*>& outputs = g.outputs();
  for (Node* node : g.nodes()) {
    if (!is_noop(*node)) continue;
    // A no-op that makes a graph output stays: bypassed, the output's FX node would have no IR
    // value, and PyTorch would re-run it outside the engines (docs/guide.md, fallback
    // accounting). Its engine produces the output instead (a copy at most).
    if (std::find(outputs.begin(), outputs.end(), node->output()) != outputs.end()) continue;
    g.replace_all_uses(node->output(), node->arg_tensor(0));
    g.remove_node(node);
    ++removed;
  }
  return removed;
}

}  // namespace ember::compiler
