// GELU recognition: the tanh approximation written out as arithmetic (GPT-2's NewGELU, many
// "gelu_new" implementations),
//
//   0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3))))
//
// becomes one aten::gelu(x, approximate="tanh"): one Activation layer instead of eight pointwise
// layers, which the builder can then fuse into the MatrixMultiply that produces x.
#include <cmath>
#include <optional>
#include <string>

#include "ember/compiler/lowering.h"

namespace ember::compiler {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubicCoefficient = 0.044715;

bool near(double a, double b) { return std::abs(a - b) <= 1e-6 * std::abs(b); }

/// Whether argument i is a number (a double or an integer; not a symbolic size, which
/// arg_double cannot read).
bool is_number(const Node* n, size_t i) {
  const Arg& a = n->args().at(i);
  return std::holds_alternative<double>(a) || std::holds_alternative<int64_t>(a);
}

/// A tensor argument (not a number, not a symbolic size, not None).
bool is_tensor(const Node* n, size_t i) { return std::holds_alternative<Value*>(n->args().at(i)); }

/// The producer of `v` when it is `op`, else nullptr.
Node* producer_is(const Value* v, const char* op) {
  Node* p = v != nullptr ? v->producer() : nullptr;
  return p != nullptr && p->op() == op ? p : nullptr;
}

/// For a binary node `op`(tensor, scalar) in either order: the tensor operand when the scalar
/// is `scalar` (or any scalar when `scalar` is nullopt), else nullptr.
Value* tensor_times_scalar(const Node* n, std::optional<double> scalar) {
  if (n == nullptr || n->num_args() < 2) return nullptr;
  for (size_t t = 0; t < 2; ++t) {
    const size_t s = 1 - t;
    if (!is_number(n, s) || !is_tensor(n, t)) continue;
    if (scalar && !near(n->arg_double(s), *scalar)) continue;
    return n->arg_tensor(t);
  }
  return nullptr;
}

/// aten::add.Tensor(a, b) or (b, a) with alpha 1: the operand that is not `known`.
Value* other_addend(const Node* add, const Value* known) {
  if (add == nullptr || add->num_args() < 2 || !is_tensor(add, 0) || !is_tensor(add, 1)) {
    return nullptr;
  }
  if (add->num_args() > 2 && !(is_number(add, 2) && add->arg_double(2) == 1.0)) return nullptr;
  if (add->arg_tensor(0) == known) return add->arg_tensor(1);
  if (add->arg_tensor(1) == known) return add->arg_tensor(0);
  return nullptr;
}

/// x when `inner` computes x + 0.044715 * pow(x, 3) (x * x * x is not matched).
Value* cubic_argument(Value* inner) {
  Node* add = producer_is(inner, "aten::add.Tensor");
  if (add == nullptr || add->num_args() < 2) return nullptr;
  for (size_t i = 0; i < 2; ++i) {
    if (!is_tensor(add, i)) return nullptr;
    Value* x = add->arg_tensor(i);
    Value* term = other_addend(add, x);
    Value* cube = tensor_times_scalar(producer_is(term, "aten::mul.Tensor"), kCubicCoefficient);
    Node* pow = producer_is(cube, "aten::pow.Tensor_Scalar");
    if (pow != nullptr && is_tensor(pow, 0) && pow->arg_tensor(0) == x && is_number(pow, 1) &&
        pow->arg_double(1) == 3.0) {
      return x;
    }
  }
  return nullptr;
}

/// The GELU input when `mul` is the final product 0.5 * x * (1 + tanh(...)), else nullptr.
Value* match(const Node* mul) {
  if (mul->op() != "aten::mul.Tensor" || mul->num_args() != 2 || !is_tensor(mul, 0) ||
      !is_tensor(mul, 1)) {
    return nullptr;
  }
  for (size_t h = 0; h < 2; ++h) {
    Value* half_x = tensor_times_scalar(producer_is(mul->arg_tensor(h), "aten::mul.Tensor"), 0.5);
    Node* one_plus = producer_is(mul->arg_tensor(1 - h), "aten::add.Tensor");
    if (half_x == nullptr || one_plus == nullptr) continue;
    // 1 + tanh(t): the scalar 1 in either position.
    Value* th = tensor_times_scalar(one_plus, 1.0);
    if (one_plus->num_args() > 2 && !(is_number(one_plus, 2) && one_plus->arg_double(2) == 1.0)) {
      continue;
    }
    Node* tanh = producer_is(th, "aten::tanh");
    if (tanh == nullptr) continue;
    Value* scaled = tensor_times_scalar(producer_is(tanh->arg_tensor(0), "aten::mul.Tensor"),
                                        kSqrt2OverPi);
    if (scaled == nullptr) continue;
    Value* x = cubic_argument(scaled);
    if (x != nullptr && x == half_x) return x;
  }
  return nullptr;
}

}  // namespace

int lower_recognize_gelu(Graph& g) {
  int rewritten = 0;
  for (Node* node : g.nodes()) {
    Value* x = match(node);
    if (x == nullptr || !scalar_type_is_float(x->dtype()) || x->dtype() != node->output()->dtype()) {
      continue;
    }
    Value* out = node->output();
    Node* gelu = g.insert_node_before(node, "aten::gelu", {x, std::string("tanh")},
                                      {TensorType{out->dtype(), out->shape()}},
                                      {g.fresh_name(out->name())});
    gelu->set_fx_name(node->fx_name());
    gelu->set_module(node->module_path(), node->module_types());
    g.replace_all_uses(out, gelu->output());
    g.remove_node(node);  // the rest of the formula is dead now: remove_dead_code takes it
    ++rewritten;
  }
  return rewritten;
}

}  // namespace ember::compiler
