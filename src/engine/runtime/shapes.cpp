#include "runtime/shapes.h"

namespace ember::engine {

SymbolBindings bind_input_shapes(const Network& net,
                                 const std::vector<std::vector<int64_t>>& input_dims) {
  const auto& inputs = net.inputs();
  if (input_dims.size() != inputs.size()) {
    throw Error("expected " + std::to_string(inputs.size()) + " inputs, got " +
                std::to_string(input_dims.size()));
  }
  SymbolBindings b;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = *inputs[i];
    const auto& dims = input_dims[i];
    if (dims.size() != t.shape().size()) {
      throw Error("input '" + t.name() + "': expected rank " + std::to_string(t.rank()) + " " +
                  shape_to_string(t.shape()) + ", got dims " + dims_to_string(dims));
    }
    for (size_t d = 0; d < dims.size(); ++d) {
      const DimExpr& e = t.shape()[d];
      if (dims[d] < 0) {
        throw Error("input '" + t.name() + "' dim " + std::to_string(d) + " is negative");
      }
      if (e.is_constant()) {
        if (e.constant() != dims[d]) {
          throw Error("input '" + t.name() + "' dim " + std::to_string(d) + " must be " +
                      std::to_string(e.constant()) + ", got " + std::to_string(dims[d]));
        }
        continue;
      }
      const auto [it, inserted] = b.emplace(e.symbol_name(), dims[d]);
      if (!inserted && it->second != dims[d]) {
        throw Error("input '" + t.name() + "' dim " + std::to_string(d) + " is symbol '" +
                    e.symbol_name() + "' = " + std::to_string(dims[d]) +
                    ", but another input binds it to " + std::to_string(it->second));
      }
    }
  }
  return b;
}

void check_shape_check(const Layer& layer, const ShapeCheck& c, const SymbolBindings& b) {
  const int64_t a = c.a.evaluate(b), v = c.b.evaluate(b);
  bool ok = false;
  const char* rel = "";
  switch (c.kind) {
    case ShapeCheck::Kind::kEqual: ok = a == v; rel = " == "; break;
    case ShapeCheck::Kind::kBroadcastable: ok = a == v || a == 1 || v == 1; rel = " broadcasts with "; break;
    case ShapeCheck::Kind::kLessEqual: ok = a <= v; rel = " <= "; break;
  }
  if (!ok) {
    throw Error(layer.describe() + ": shape check failed: " + c.what + " (" + c.a.to_string() +
                " = " + std::to_string(a) + rel + c.b.to_string() + " = " + std::to_string(v) +
                " does not hold)");
  }
}

std::vector<std::vector<int64_t>> evaluate_all_shapes(const Network& net, const SymbolBindings& b) {
  const auto tensors = net.tensors();
  std::vector<std::vector<int64_t>> dims(tensors.size());
  for (const Tensor* t : net.inputs()) dims[t->id()] = shape_evaluate(t->shape(), b);
  for (const Layer* l : net.layers()) {
    for (const ShapeCheck& c : l->shape_checks()) check_shape_check(*l, c, b);
    for (const Tensor* t : l->outputs()) {
      try {
        dims[t->id()] = shape_evaluate(t->shape(), b);
      } catch (const Error& e) {
        throw Error(l->describe() + ": output '" + t->name() + "': " + e.what());
      }
      for (size_t d = 0; d < dims[t->id()].size(); ++d) {
        if (dims[t->id()][d] < 0) {
          throw Error(l->describe() + ": output '" + t->name() + "' dim " + std::to_string(d) +
                      " = " + t->shape()[d].to_string() + " is negative (" +
                      std::to_string(dims[t->id()][d]) + ") for these input shapes");
        }
      }
    }
  }
  return dims;
}

}  // namespace ember::engine
