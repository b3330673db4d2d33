// Graph, Node and Value: construction, typed argument access and mutation for passes.
// The text form (to_string / parse) lives in text.cpp.
#include <algorithm>
#include <array>
#include <set>

#include "ember/compiler/ir.h"

namespace ember::compiler {

namespace {

constexpr std::array<const char*, kNumScalarTypes> kScalarTypeNames = {
    "f32", "f16", "bf16", "i8", "u8", "i32", "i64", "bool", "f64", "i16", "f8e4m3"};

const char* arg_type_name(const Arg& a) {
  switch (a.index()) {
    case 0: return "None";
    case 1: return "bool";
    case 2: return "int";
    case 3: return "float";
    case 4: return "str";
    case 5: return "dtype";
    case 6: return "SymInt";
    case 7: return "int[]";
    case 8: return "float[]";
    case 9: return "bool[]";
    case 10: return "Tensor";
    case 11: return "Tensor[]";
    default: return "?";
  }
}

}  // namespace

const char* scalar_type_name(ScalarType t) { return kScalarTypeNames.at(static_cast<size_t>(t)); }

std::optional<ScalarType> scalar_type_from_name(std::string_view name) {
  for (size_t i = 0; i < kScalarTypeNames.size(); ++i) {
    if (name == kScalarTypeNames[i]) return static_cast<ScalarType>(i);
  }
  return std::nullopt;
}

bool scalar_type_is_float(ScalarType t) {
  return t == ScalarType::kF32 || t == ScalarType::kF16 || t == ScalarType::kBF16 ||
         t == ScalarType::kF64;
}

std::optional<engine::DataType> to_engine_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::kF32: return engine::DataType::kF32;
    case ScalarType::kF16: return engine::DataType::kF16;
    case ScalarType::kBF16: return engine::DataType::kBF16;
    case ScalarType::kI8: return engine::DataType::kI8;
    case ScalarType::kU8: return engine::DataType::kU8;
    case ScalarType::kI32: return engine::DataType::kI32;
    case ScalarType::kI64: return engine::DataType::kI64;
    case ScalarType::kBool: return engine::DataType::kBool;
    case ScalarType::kF64: return std::nullopt;
    case ScalarType::kI16: return std::nullopt;
    case ScalarType::kF8E4M3: return engine::DataType::kF8E4M3;
  }
  return std::nullopt;
}

ScalarType from_engine_dtype(engine::DataType t) {
  switch (t) {
    case engine::DataType::kF32: return ScalarType::kF32;
    case engine::DataType::kF16: return ScalarType::kF16;
    case engine::DataType::kBF16: return ScalarType::kBF16;
    case engine::DataType::kI8: return ScalarType::kI8;
    case engine::DataType::kU8: return ScalarType::kU8;
    case engine::DataType::kI32: return ScalarType::kI32;
    case engine::DataType::kI64: return ScalarType::kI64;
    case engine::DataType::kBool: return ScalarType::kBool;
    case engine::DataType::kF8E4M3: return ScalarType::kF8E4M3;
  }
  return ScalarType::kF32;
}

// ---------------------------------------------------------------------------------------------
// Node

std::vector<Value*> Node::input_values() const {
  std::vector<Value*> out;
  for (const Arg& a : args_) {
    if (const auto* v = std::get_if<Value*>(&a)) {
      out.push_back(*v);
    } else if (const auto* l = std::get_if<std::vector<Value*>>(&a)) {
      for (Value* x : *l) {
        if (x != nullptr) out.push_back(x);
      }
    }
  }
  return out;
}

std::string Node::describe() const {
  const std::string name = fx_name_.empty() && !outputs_.empty() ? outputs_[0]->name() : fx_name_;
  return op_ + " '" + name + "'";
}

const Arg& Node::arg_at(size_t i, const char* want) const {
  if (i >= args_.size()) {
    throw Error(describe() + ": argument " + std::to_string(i) + " (" + want +
                ") is missing; the node has " + std::to_string(args_.size()) + " arguments");
  }
  return args_[i];
}

namespace {
[[noreturn]] void wrong_arg(const Node& n, size_t i, const char* want, const Arg& got) {
  throw Error(n.describe() + ": argument " + std::to_string(i) + " should be " + want +
              ", got " + arg_type_name(got) + " " + arg_to_string(got));
}
}  // namespace

bool Node::arg_is_none(size_t i) const {
  return i >= args_.size() || std::holds_alternative<NoneArg>(args_[i]);
}

Value* Node::arg_tensor(size_t i) const {
  const Arg& a = arg_at(i, "Tensor");
  if (const auto* v = std::get_if<Value*>(&a)) return *v;
  wrong_arg(*this, i, "a Tensor", a);
}

Value* Node::arg_optional_tensor(size_t i) const {
  if (arg_is_none(i)) return nullptr;
  return arg_tensor(i);
}

std::vector<Value*> Node::arg_tensor_list(size_t i) const {
  const Arg& a = arg_at(i, "Tensor[]");
  if (const auto* l = std::get_if<std::vector<Value*>>(&a)) return *l;
  if (const auto* v = std::get_if<Value*>(&a)) return {*v};
  wrong_arg(*this, i, "a Tensor list", a);
}

DimExpr Node::arg_dim(size_t i) const {
  const Arg& a = arg_at(i, "int");
  if (const auto* v = std::get_if<int64_t>(&a)) return DimExpr(*v);
  if (const auto* d = std::get_if<DimExpr>(&a)) return *d;
  if (const auto* b = std::get_if<bool>(&a)) return DimExpr(*b ? 1 : 0);
  wrong_arg(*this, i, "an int", a);
}

int64_t Node::arg_int(size_t i) const {
  const DimExpr d = arg_dim(i);
  if (!d.is_constant()) {
    throw Error(describe() + ": argument " + std::to_string(i) + " is the symbolic size " +
                d.to_string() + " where a constant int is needed");
  }
  return d.constant();
}

int64_t Node::arg_int_or(size_t i, int64_t fallback) const {
  return arg_is_none(i) ? fallback : arg_int(i);
}

std::vector<DimExpr> Node::arg_dims(size_t i) const {
  const Arg& a = arg_at(i, "int[]");
  if (const auto* l = std::get_if<std::vector<DimExpr>>(&a)) return *l;
  if (std::holds_alternative<int64_t>(a) || std::holds_alternative<DimExpr>(a)) {
    return {arg_dim(i)};
  }
  wrong_arg(*this, i, "an int list", a);
}

std::vector<int64_t> Node::arg_ints(size_t i) const {
  std::vector<int64_t> out;
  for (const DimExpr& d : arg_dims(i)) {
    if (!d.is_constant()) {
      throw Error(describe() + ": argument " + std::to_string(i) + " holds the symbolic size " +
                  d.to_string() + " where constant ints are needed");
    }
    out.push_back(d.constant());
  }
  return out;
}

double Node::arg_double(size_t i) const {
  const Arg& a = arg_at(i, "float");
  if (const auto* d = std::get_if<double>(&a)) return *d;
  if (const auto* v = std::get_if<int64_t>(&a)) return static_cast<double>(*v);
  if (const auto* b = std::get_if<bool>(&a)) return *b ? 1.0 : 0.0;
  wrong_arg(*this, i, "a number", a);
}

double Node::arg_double_or(size_t i, double fallback) const {
  return arg_is_none(i) ? fallback : arg_double(i);
}

bool Node::arg_bool(size_t i) const {
  const Arg& a = arg_at(i, "bool");
  if (const auto* b = std::get_if<bool>(&a)) return *b;
  if (const auto* v = std::get_if<int64_t>(&a)) return *v != 0;
  wrong_arg(*this, i, "a bool", a);
}

bool Node::arg_bool_or(size_t i, bool fallback) const {
  return arg_is_none(i) ? fallback : arg_bool(i);
}

const std::string& Node::arg_string(size_t i) const {
  const Arg& a = arg_at(i, "str");
  if (const auto* s = std::get_if<std::string>(&a)) return *s;
  wrong_arg(*this, i, "a string", a);
}

std::optional<ScalarType> Node::arg_scalar_type(size_t i) const {
  if (arg_is_none(i)) return std::nullopt;
  const Arg& a = args_[i];
  if (const auto* t = std::get_if<ScalarType>(&a)) return *t;
  wrong_arg(*this, i, "a dtype", a);
}

bool Node::arg_is_scalar(size_t i) const {
  if (i >= args_.size()) return false;
  const Arg& a = args_[i];
  return std::holds_alternative<bool>(a) || std::holds_alternative<int64_t>(a) ||
         std::holds_alternative<double>(a) || std::holds_alternative<DimExpr>(a);
}

// ---------------------------------------------------------------------------------------------
// Graph

Graph::~Graph() = default;

Value* Graph::new_value(Value::Kind kind, const std::string& name, ScalarType dtype, Shape shape) {
  if (name.empty()) throw Error("graph: a value needs a name");
  if (find_value(name) != nullptr) throw Error("graph: a value named '" + name + "' already exists");
  auto v = std::make_unique<Value>();
  v->kind_ = kind;
  v->name_ = name;
  v->dtype_ = dtype;
  v->shape_ = std::move(shape);
  v->id_ = static_cast<int>(values_.size());
  by_name_[name] = v.get();
  values_.push_back(std::move(v));
  return values_.back().get();
}

Value* Graph::add_input(const std::string& name, ScalarType dtype, Shape shape) {
  Value* v = new_value(Value::Kind::kInput, name, dtype, std::move(shape));
  inputs_.push_back(v);
  return v;
}

Value* Graph::add_constant(const std::string& name, ScalarType dtype, Shape shape,
                           ConstantData data) {
  if (!engine::shape_is_static(shape)) {
    throw Error("graph: constant '" + name + "' has the symbolic shape " +
                engine::shape_to_string(shape) + "; constants need static shapes");
  }
  Value* v = new_value(Value::Kind::kConstant, name, dtype, std::move(shape));
  v->constant_ = std::move(data);
  return v;
}

namespace {
void check_args_exist(const Graph& g, const std::string& op, const std::vector<Arg>& args) {
  for (const Arg& a : args) {
    auto check = [&](const Value* v) {
      if (v != nullptr && g.find_value(v->name()) != v) {
        throw Error("graph: node " + op + " reads a value that is not in this graph");
      }
    };
    if (const auto* v = std::get_if<Value*>(&a)) {
      if (*v == nullptr) throw Error("graph: node " + op + " has a null tensor argument");
      check(*v);
    } else if (const auto* l = std::get_if<std::vector<Value*>>(&a)) {
      for (const Value* x : *l) check(x);
    }
  }
}
}  // namespace

Node* Graph::add_node(const std::string& op, std::vector<Arg> args,
                      const std::vector<TensorType>& output_types,
                      const std::vector<std::string>& output_names) {
  return insert_node_before(nullptr, op, std::move(args), output_types, output_names);
}

Node* Graph::insert_node_before(Node* before, const std::string& op, std::vector<Arg> args,
                                const std::vector<TensorType>& output_types,
                                const std::vector<std::string>& output_names) {
  if (op.empty()) throw Error("graph: a node needs an op");
  if (output_types.size() != output_names.size()) {
    throw Error("graph: node " + op + " has " + std::to_string(output_types.size()) +
                " output types but " + std::to_string(output_names.size()) + " names");
  }
  check_args_exist(*this, op, args);
  auto n = std::make_unique<Node>();
  n->op_ = op;
  n->args_ = std::move(args);
  Node* node = n.get();
  for (size_t i = 0; i < output_types.size(); ++i) {
    Value* v = new_value(Value::Kind::kNodeOutput, output_names[i], output_types[i].dtype,
                         output_types[i].shape);
    v->producer_ = node;
    v->output_index_ = static_cast<int>(i);
    node->outputs_.push_back(v);
  }
  if (before == nullptr) {
    // Appending (the importer's case) keeps every other index: no renumbering.
    node->index_ = static_cast<int>(nodes_.size());
    nodes_.push_back(std::move(n));
  } else {
    auto it = std::find_if(nodes_.begin(), nodes_.end(),
                           [&](const auto& p) { return p.get() == before; });
    if (it == nodes_.end()) throw Error("graph: insert_node_before: node not in this graph");
    nodes_.insert(it, std::move(n));
    renumber();
  }
  return node;
}

void Graph::set_outputs(std::vector<Value*> outputs) {
  for (const Value* v : outputs) {
    if (v == nullptr || find_value(v->name()) != v) {
      throw Error("graph: an output is not a value of this graph");
    }
  }
  outputs_ = std::move(outputs);
}

std::vector<Value*> Graph::constants() const {
  std::vector<Value*> out;
  for (const auto& v : values_) {
    if (v->is_constant()) out.push_back(v.get());
  }
  return out;
}

std::vector<Node*> Graph::nodes() const {
  std::vector<Node*> out;
  out.reserve(nodes_.size());
  for (const auto& n : nodes_) out.push_back(n.get());
  return out;
}

std::vector<Value*> Graph::values() const {
  std::vector<Value*> out;
  out.reserve(values_.size());
  for (const auto& v : values_) out.push_back(v.get());
  return out;
}

Value* Graph::find_value(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second;
}

const SymbolRange* Graph::find_symbol(std::string_view symbol) const {
  for (const auto& [name, range] : symbols_) {
    if (name == symbol) return &range;
  }
  return nullptr;
}

void Graph::replace_all_uses(Value* from, Value* to) {
  if (from == to) return;
  for (auto& n : nodes_) {
    for (Arg& a : n->args_) {
      if (auto* v = std::get_if<Value*>(&a)) {
        if (*v == from) *v = to;
      } else if (auto* l = std::get_if<std::vector<Value*>>(&a)) {
        std::replace(l->begin(), l->end(), from, to);
      }
    }
  }
  std::replace(outputs_.begin(), outputs_.end(), from, to);
  if (to->fx_name_.empty()) to->fx_name_ = from->fx_name_;
}

std::vector<Node*> Graph::users(const Value* v) const {
  std::vector<Node*> out;
  for (const auto& n : nodes_) {
    const auto ins = n->input_values();
    if (std::find(ins.begin(), ins.end(), v) != ins.end()) out.push_back(n.get());
  }
  return out;
}

bool Graph::is_used(const Value* v) const {
  if (std::find(outputs_.begin(), outputs_.end(), v) != outputs_.end()) return true;
  return !users(v).empty();
}

void Graph::remove_node(Node* node) {
  for (const Value* v : node->outputs_) {
    if (is_used(v)) {
      throw Error("graph: cannot remove " + node->describe() + ": its output %" + v->name() +
                  " is still used");
    }
  }
  auto it = std::find_if(nodes_.begin(), nodes_.end(),
                         [&](const auto& p) { return p.get() == node; });
  if (it == nodes_.end()) throw Error("graph: remove_node: node not in this graph");
  std::vector<const Value*> dead(node->outputs_.begin(), node->outputs_.end());
  for (const Value* v : dead) by_name_.erase(v->name_);
  nodes_.erase(it);
  values_.erase(std::remove_if(values_.begin(), values_.end(),
                               [&](const auto& v) {
                                 return std::find(dead.begin(), dead.end(), v.get()) != dead.end();
                               }),
                values_.end());
  renumber();
}

void Graph::compact() {
  std::set<const Value*> used(outputs_.begin(), outputs_.end());
  for (const auto& n : nodes_) {
    for (const Value* v : n->input_values()) used.insert(v);
  }
  std::vector<const Value*> unused;
  for (const auto& v : values_) {
    if (v->is_constant() && used.count(v.get()) == 0) unused.push_back(v.get());
  }
  for (const Value* v : unused) by_name_.erase(v->name_);
  values_.erase(std::remove_if(values_.begin(), values_.end(),
                               [&](const auto& v) {
                                 return std::find(unused.begin(), unused.end(), v.get()) !=
                                        unused.end();
                               }),
                values_.end());
  renumber();
}

std::string Graph::fresh_name(const std::string& prefix) {
  for (;;) {
    std::string name = prefix + "_" + std::to_string(fresh_counter_++);
    if (find_value(name) == nullptr) return name;
  }
}

void Graph::renumber() {
  for (size_t i = 0; i < values_.size(); ++i) values_[i]->id_ = static_cast<int>(i);
  for (size_t i = 0; i < nodes_.size(); ++i) nodes_[i]->index_ = static_cast<int>(i);
}

}  // namespace ember::compiler
