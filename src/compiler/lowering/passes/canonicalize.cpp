// Canonicalization: rewrites ops that have several spellings into the one form the converters
// implement, so each op family needs one converter: transposes become permutes, squeeze
// without dims lists its dims, flatten becomes a view, full reductions name every dim, and
// scalar overloads of binary ops become their Tensor overloads (whose converters take numbers
// as operands, since torch.export writes `x + 2` as aten::add.Tensor(x, 2) anyway).
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "ember/compiler/lowering.h"

namespace ember::compiler {

namespace {

// A dim in [-rank, rank) made non-negative; nullopt when out of range (the node is left for
// conversion to report). Rank-0 tensors accept 0 and -1, as in PyTorch.
std::optional<int64_t> normalized_dim(int64_t dim, int64_t rank) {
  const int64_t r = rank == 0 ? 1 : rank;
  if (dim < -r || dim >= r) return std::nullopt;
  return dim < 0 ? dim + r : dim;
}

// Replaces `node` by `op(args)` with the same output type, metadata and uses.
void rewrite(Graph& g, Node* node, const std::string& op, std::vector<Arg> args) {
  Value* old_out = node->output();
  Node* n = g.insert_node_before(node, op, std::move(args),
                                 {TensorType{old_out->dtype(), old_out->shape()}},
                                 {g.fresh_name(old_out->name())});
  n->set_fx_name(node->fx_name());
  n->set_module(node->module_path(), node->module_types());
  g.replace_all_uses(old_out, n->output());
  g.remove_node(node);
}

// Bypasses `node`, whose output is its input unchanged.
void bypass(Graph& g, Node* node, Value* input) {
  g.replace_all_uses(node->output(), input);
  g.remove_node(node);
}

std::vector<DimExpr> iota_dims(int64_t n) {
  std::vector<DimExpr> dims;
  for (int64_t i = 0; i < n; ++i) dims.emplace_back(i);
  return dims;
}

// aten::t(x): permute [1, 0] for matrices, the identity below rank 2.
bool rewrite_t(Graph& g, Node* node) {
  Value* x = node->arg_tensor(0);
  if (x->rank() < 2) {
    bypass(g, node, x);
  } else {
    rewrite(g, node, "aten::permute", {x, std::vector<DimExpr>{1, 0}});
  }
  return true;
}

// transpose.int(x, dim0, dim1) (and its aliases swapaxes / swapdims): a permute that swaps two
// dims, or the identity when both name the same dim.
bool rewrite_transpose(Graph& g, Node* node) {
  Value* x = node->arg_tensor(0);
  const auto d0 = normalized_dim(node->arg_int(1), x->rank());
  const auto d1 = normalized_dim(node->arg_int(2), x->rank());
  if (!d0 || !d1) return false;
  if (*d0 == *d1 || x->rank() < 2) {
    bypass(g, node, x);
    return true;
  }
  std::vector<DimExpr> perm = iota_dims(x->rank());
  std::swap(perm[static_cast<size_t>(*d0)], perm[static_cast<size_t>(*d1)]);
  rewrite(g, node, "aten::permute", {x, std::move(perm)});
  return true;
}

// squeeze(x) without dims: squeeze.dims with every dim that is the constant 1. A symbolic dim
// could be 1 for some inputs; the output type says whether export squeezed it, and the rewrite
// is skipped when the constant dims alone do not explain the output rank.
bool rewrite_squeeze(Graph& g, Node* node) {
  Value* x = node->arg_tensor(0);
  std::vector<DimExpr> dims;
  for (int64_t i = 0; i < x->rank(); ++i) {
    const DimExpr& d = x->shape()[static_cast<size_t>(i)];
    if (d.is_constant() && d.constant() == 1) dims.emplace_back(i);
  }
  if (x->rank() - static_cast<int64_t>(dims.size()) != node->output()->rank()) return false;
  if (dims.empty()) {
    bypass(g, node, x);
  } else {
    rewrite(g, node, "aten::squeeze.dims", {x, std::move(dims)});
  }
  return true;
}

// flatten.using_ints(x, start_dim = 0, end_dim = -1): a view whose sizes are computed from
// the input's symbolic shape.
bool rewrite_flatten(Graph& g, Node* node) {
  Value* x = node->arg_tensor(0);
  const int64_t rank = x->rank();
  const auto start = normalized_dim(node->arg_int_or(1, 0), rank);
  const auto end = normalized_dim(node->arg_int_or(2, -1), rank);
  if (!start || !end || *start > *end) return false;
  std::vector<DimExpr> sizes;
  if (rank == 0) {
    sizes.emplace_back(1);  // flatten of a scalar is a 1-element vector
  } else {
    const Shape& s = x->shape();
    for (int64_t i = 0; i < *start; ++i) sizes.push_back(s[static_cast<size_t>(i)]);
    DimExpr merged(1);
    for (int64_t i = *start; i <= *end; ++i) merged = merged * s[static_cast<size_t>(i)];
    sizes.push_back(merged);
    for (int64_t i = *end + 1; i < rank; ++i) sizes.push_back(s[static_cast<size_t>(i)]);
  }
  if (static_cast<int>(sizes.size()) != node->output()->rank()) return false;
  rewrite(g, node, "aten::view", {x, std::move(sizes)});
  return true;
}

// mean(x, dtype?) / sum(x, dtype?) over everything: the dim-list forms with every dim.
bool rewrite_full_reduction(Graph& g, Node* node, const std::string& dim_op) {
  Value* x = node->arg_tensor(0);
  Arg dtype = NoneArg{};
  if (node->num_args() > 1) dtype = node->args()[1];
  rewrite(g, node, dim_op, {x, iota_dims(x->rank()), false, dtype});
  return true;
}

// Scalar overloads whose Tensor overload has the same argument list.
const std::map<std::string, std::string>& scalar_to_tensor_overloads() {
  static const std::map<std::string, std::string> ops = {
      {"aten::add.Scalar", "aten::add.Tensor"},
      {"aten::sub.Scalar", "aten::sub.Tensor"},
      {"aten::rsub.Scalar", "aten::rsub.Tensor"},
      {"aten::mul.Scalar", "aten::mul.Tensor"},
      {"aten::div.Scalar", "aten::div.Tensor"},
      {"aten::div.Scalar_mode", "aten::div.Tensor_mode"},
      {"aten::remainder.Scalar", "aten::remainder.Tensor"},
      {"aten::fmod.Scalar", "aten::fmod.Tensor"},
      {"aten::eq.Scalar", "aten::eq.Tensor"},
      {"aten::ne.Scalar", "aten::ne.Tensor"},
      {"aten::lt.Scalar", "aten::lt.Tensor"},
      {"aten::le.Scalar", "aten::le.Tensor"},
      {"aten::gt.Scalar", "aten::gt.Tensor"},
      {"aten::ge.Scalar", "aten::ge.Tensor"},
  };
  return ops;
}

// One node; true when it was rewritten or removed.
bool canonicalize_node(Graph& g, Node* node) {
  if (node->outputs().size() != 1) return false;
  const std::string& op = node->op();
  if (op == "aten::t") return rewrite_t(g, node);
  if (op == "aten::transpose.int" || op == "aten::swapaxes" || op == "aten::swapdims") {
    return rewrite_transpose(g, node);
  }
  if (op == "aten::squeeze") return rewrite_squeeze(g, node);
  if (op == "aten::flatten.using_ints") return rewrite_flatten(g, node);
  if (op == "aten::mean") return rewrite_full_reduction(g, node, "aten::mean.dim");
  if (op == "aten::sum") return rewrite_full_reduction(g, node, "aten::sum.dim_IntList");
  const auto it = scalar_to_tensor_overloads().find(op);
  if (it != scalar_to_tensor_overloads().end()) {
    rewrite(g, node, it->second, node->args());
    return true;
  }
  return false;
}

}  // namespace

int lower_canonicalize(Graph& g) {
  int rewritten = 0;
  for (Node* node : g.nodes()) {
    try {
      if (canonicalize_node(g, node)) ++rewritten;
    } catch (const Error&) {
      // Malformed arguments (a tensor where an int belongs, a symbolic dim index): the node
      // stays as it is and conversion reports it with the converter's context.
    }
  }
  return rewritten;
}

}  // namespace ember::compiler
