// The TorchScript importer: a lowered method graph -> the compiler IR.
//
// Every node is evaluated at compile time on example inputs, once per "run": one run when all
// inputs are static, else 1 + (number of symbols) + 1 runs with each dynamic dim set to different
// values. From the runs:
//   - a node whose results depend only on static facts (constants, sizes, dtypes, devices, lists
//     and arithmetic of them) is an evaluator (seed 002): it never becomes an IR node. An int that
//     differs between runs is fitted as c + sum(a * symbol) and enters the IR as a symbolic dim
//     (aten::size of a dynamic dim is the symbol itself);
//   - a node producing tensors from the inputs' data is an IR node keyed by its schema
//     ("aten::add.Tensor"), its arguments in schema order, its output shapes fitted the same way;
//   - anything else (control flow, mutation, data-dependent scalars, unknown ops) is opaque:
//     an IR node "torchscript::<kind>" without a converter, so the partitioner sees its tensor
//     dependencies and the segments around it still become engines.
// Evaluating on real example tensors (rather than meta tensors) is what lets control flow and
// data-dependent ops report their result shapes; data-dependent values are never treated as
// static (a value derived from a tensor's data is "data", only metadata reads are not).
#include <ATen/ATen.h>
#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/runtime/interpreter.h>
#include <torch/csrc/jit/runtime/operator.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cctype>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "ember/compiler/conversion.h"
#include "torchscript_internal.h"

namespace ember::torchscript {

using compiler::Arg;
using compiler::DimExpr;
using compiler::ScalarType;

std::string ts_op_key(const jit::Node* node) {
  if (const c10::FunctionSchema* s = node->maybeSchema()) {
    return s->overload_name().empty() ? s->name() : s->name() + "." + s->overload_name();
  }
  return node->kind().toQualString();
}

namespace {

std::optional<ScalarType> ir_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return ScalarType::kF32;
    case c10::ScalarType::Half: return ScalarType::kF16;
    case c10::ScalarType::BFloat16: return ScalarType::kBF16;
    case c10::ScalarType::Char: return ScalarType::kI8;
    case c10::ScalarType::Byte: return ScalarType::kU8;
    case c10::ScalarType::Int: return ScalarType::kI32;
    case c10::ScalarType::Long: return ScalarType::kI64;
    case c10::ScalarType::Bool: return ScalarType::kBool;
    case c10::ScalarType::Double: return ScalarType::kF64;
    case c10::ScalarType::Short: return ScalarType::kI16;
    case c10::ScalarType::Float8_e4m3fn: return ScalarType::kF8E4M3;
    default: return std::nullopt;
  }
}

c10::ScalarType torch_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::kF32: return c10::ScalarType::Float;
    case ScalarType::kF16: return c10::ScalarType::Half;
    case ScalarType::kBF16: return c10::ScalarType::BFloat16;
    case ScalarType::kI8: return c10::ScalarType::Char;
    case ScalarType::kU8: return c10::ScalarType::Byte;
    case ScalarType::kI32: return c10::ScalarType::Int;
    case ScalarType::kI64: return c10::ScalarType::Long;
    case ScalarType::kBool: return c10::ScalarType::Bool;
    case ScalarType::kF64: return c10::ScalarType::Double;
    case ScalarType::kI16: return c10::ScalarType::Short;
    case ScalarType::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
  }
  return c10::ScalarType::Float;
}

// Ops that read only a tensor's metadata: their results are static even for data tensors.
bool is_metadata_op(const jit::Node* n) {
  static const std::set<std::string> kOps = {
      "aten::size", "aten::size.int", "aten::dim", "aten::len.Tensor", "prim::dtype",
      "prim::device", "aten::numel", "prim::layout", "aten::is_floating_point", "prim::is_cuda",
      "aten::__is__", "aten::__isnot__", "prim::shape", "aten::sym_size", "aten::sym_size.int",
      "aten::sym_numel"};
  return kOps.count(ts_op_key(n)) != 0 || kOps.count(n->kind().toQualString()) != 0;
}


bool ivalues_equal(const c10::IValue& a, const c10::IValue& b) {
  if (a.isTensor() && b.isTensor()) {
    const at::Tensor& x = a.toTensor();
    const at::Tensor& y = b.toTensor();
    if (!x.defined() || !y.defined()) return x.defined() == y.defined();
    return x.sizes() == y.sizes() && x.dtype() == y.dtype() && x.device() == y.device() &&
           (x.is_same(y) || at::equal(x, y));
  }
  if (a.isList() && b.isList()) {
    auto x = a.toListRef();
    auto y = b.toListRef();
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!ivalues_equal(x[i], y[i])) return false;
    }
    return true;
  }
  if (a.isTuple() && b.isTuple()) {
    const auto& x = a.toTupleRef().elements();
    const auto& y = b.toTupleRef().elements();
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!ivalues_equal(x[i], y[i])) return false;
    }
    return true;
  }
  if (a.isDevice() && b.isDevice()) return a.toDevice() == b.toDevice();
  if (a.isNone() || b.isNone()) return a.isNone() && b.isNone();
  if (a.isInt() && b.isInt()) return a.toInt() == b.toInt();
  if (a.isDouble() && b.isDouble()) return a.toDouble() == b.toDouble();
  if (a.isBool() && b.isBool()) return a.toBool() == b.toBool();
  if (a.isString() && b.isString()) return a.toStringRef() == b.toStringRef();
  if (a.isObject() && b.isObject()) return a.toObjectRef().type() == b.toObjectRef().type() && a.is(b);
  return a.isSameIdentity(b);
}

std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

struct Val {
  std::vector<c10::IValue> runs;
  bool known = false;
  bool data = false;
  /// Depends on a dynamic dim (differs between runs, or computed from something that does).
  bool varies = false;
};

// Static ops whose result depends on a tensor's rank or type only, never on its sizes.
bool is_rank_op(const jit::Node* n) {
  static const std::set<std::string> kOps = {"aten::dim", "aten::len.t", "aten::len.Tensor",
                                             "prim::dtype", "prim::device", "aten::is_floating_point",
                                             "prim::is_cuda", "prim::layout"};
  return kOps.count(ts_op_key(n)) != 0;
}

// "x.1" -> "x", any other character than [A-Za-z0-9_] -> "_".
std::string clean_name(const std::string& hint);

class Importer {
 public:
  Importer(const std::shared_ptr<jit::Graph>& graph, const std::vector<Input>& inputs)
      : g_(graph), inputs_(inputs), alias_(graph) {}

  ImportResult run();

 private:
  // ---- runs and fitting
  void make_symbols();
  std::optional<Affine> fit(const std::vector<int64_t>& xs) const;
  DimExpr to_dim(const Affine& a) const;

  // ---- evaluation
  void evaluate(jit::Node* n);
  bool is_random(jit::Node* n);
  jit::Node* inline_if(jit::Node* n, bool cond);
  bool run_node(jit::Node* n, size_t k, std::vector<c10::IValue>* outs, std::string* err);

  // ---- import
  void classify(jit::Node* n);
  jit::Node* unpacked_list_producer(jit::Node* n);
  std::optional<std::string> import_node(jit::Node* n, jit::Node* unpack = nullptr);
  void import_opaque(jit::Node* n, const std::string& reason);
  std::optional<compiler::TensorType> tensor_type(const jit::Value* v, std::string* why) const;
  compiler::Value* tensor_arg(jit::Value* v, std::string* why, bool narrow_f64_scalar = false);
  std::optional<Arg> scalar_arg(jit::Value* v, const c10::Argument& arg, std::string* why);
  std::string unique_name(const std::string& hint);
  void set_module(compiler::Node* node, const jit::Node* n) const;

  std::shared_ptr<jit::Graph> g_;
  std::vector<Input> inputs_;
  jit::AliasDb alias_;
  ImportResult out_;
  std::unordered_map<const jit::Value*, Val> vals_;
  // Per symbol: the value in run 0 (v), its own run (w) and the last run (u).
  struct Sym {
    int64_t v, w, u;
  };
  std::vector<Sym> syms_;
  size_t num_runs_ = 1;
  std::set<std::string> names_;
  bool clone_constants_ = false;
  struct Subgraph {
    std::shared_ptr<jit::Code> code;
    std::vector<jit::Value*> inputs;
  };
  std::unordered_map<const jit::Node*, Subgraph> subgraphs_;
};

void Importer::make_symbols() {
  const auto& gin = g_->inputs();
  if (gin.size() != inputs_.size() + 1) {
    throw compiler::Error("ember.ts: the method takes " + std::to_string(gin.size() - 1) +
                          " inputs but " + std::to_string(inputs_.size()) +
                          " input specs were given (pass one ember.Input or tensor per input)");
  }
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const Input& in = inputs_[i];
    if (!gin[i + 1]->type()->cast<c10::TensorType>()) {
      throw compiler::Error("ember.ts: method input " + std::to_string(i) + " ('" +
                            gin[i + 1]->debugName() + "') is a " + gin[i + 1]->type()->str() +
                            "; only tensor inputs can be compiled (wrap the module so that it "
                            "takes tensors)");
    }
    if (in.min_shape.size() != in.opt_shape.size() || in.opt_shape.size() != in.max_shape.size()) {
      throw compiler::Error("ember.ts: input " + std::to_string(i) +
                            ": min, opt and max shapes must have the same rank");
    }
    for (size_t d = 0; d < in.min_shape.size(); ++d) {
      const int64_t lo = in.min_shape[d], opt = in.opt_shape[d], hi = in.max_shape[d];
      if (!(0 <= lo && lo <= opt && opt <= hi)) {
        throw compiler::Error("ember.ts: input " + std::to_string(i) + " dim " + std::to_string(d) +
                              ": needs 0 <= min <= opt <= max, got " + std::to_string(lo) + ", " +
                              std::to_string(opt) + ", " + std::to_string(hi));
      }
      if (lo == hi) continue;
      // Never 1 when avoidable: size-1 dims broadcast and squeeze differently.
      const int64_t v = std::clamp<int64_t>(opt, std::max<int64_t>(lo, 2), hi);
      const int64_t w = v + 1 <= hi ? v + 1 : v - 1;
      int64_t u = v + 2 <= hi ? v + 2 : (v - 2 >= std::max<int64_t>(lo, 1) ? v - 2 : w);
      if (u == w && v + 1 <= hi && v - 1 >= std::max<int64_t>(lo, 1)) u = v - 1;
      std::string name = clean_name(gin[i + 1]->debugName()) + "_d" + std::to_string(d);
      for (const auto& other : out_.symbols) {
        if (other.name == name) name += "_" + std::to_string(out_.symbols.size());
      }
      out_.symbols.push_back({name, static_cast<int>(i), static_cast<int>(d)});
      syms_.push_back({v, w, u});
      out_.graph.symbols().push_back({name, compiler::SymbolRange{lo, opt, hi}});
    }
  }
  num_runs_ = syms_.empty() ? 1 : syms_.size() + 2;
}

std::optional<Affine> Importer::fit(const std::vector<int64_t>& xs) const {
  Affine a;
  a.c = xs[0];
  if (std::all_of(xs.begin(), xs.end(), [&](int64_t x) { return x == xs[0]; })) return a;
  int64_t base = xs[0];
  for (size_t i = 0; i < syms_.size(); ++i) {
    const int64_t dx = xs[i + 1] - xs[0];
    const int64_t ds = syms_[i].w - syms_[i].v;
    if (dx % ds != 0) return std::nullopt;
    const int64_t coef = dx / ds;
    if (coef != 0) {
      a.terms.push_back({static_cast<int>(i), coef});
      base -= coef * syms_[i].v;
    }
  }
  a.c = base;
  int64_t check = a.c;
  for (const auto& [s, coef] : a.terms) check += coef * syms_[s].u;
  if (check != xs.back()) return std::nullopt;
  return a;
}

DimExpr Importer::to_dim(const Affine& a) const {
  DimExpr e(a.c);
  for (const auto& [s, coef] : a.terms) {
    DimExpr sym = DimExpr::symbol(out_.symbols[s].name);
    e = e + (coef == 1 ? sym : DimExpr(coef) * sym);
  }
  return e;
}

bool Importer::run_node(jit::Node* n, size_t k, std::vector<c10::IValue>* outs,
                        std::string* err) {
  try {
    if (n->kind() == c10::prim::Constant) {
      auto iv = jit::toIValue(n->output());
      c10::IValue v = iv ? *iv : c10::IValue();
      if (clone_constants_ && v.isTensor()) v = v.toTensor().clone();
      outs->assign(1, v);
      return true;
    }
    jit::Stack stack;
    if (n->blocks().empty() && n->kind().ns() == c10::namespaces::aten) {
      for (jit::Value* v : n->inputs()) stack.push_back(vals_.at(v).runs[k]);
      n->getOperation()(stack);
    } else {
      // Control flow and the interpreter's own instructions (list and tuple literals, ...): a
      // one-node graph over the node's free values, run by the interpreter.
      auto& sub = subgraphs_[n];
      if (!sub.code) {
        auto g = std::make_shared<jit::Graph>();
        std::unordered_map<jit::Value*, jit::Value*> map;
        for (jit::Value* v : free_values(n)) {
          map[v] = g->addInput()->setType(v->type());
          sub.inputs.push_back(v);
        }
        jit::Node* copy = g->insertNode(g->createClone(n, [&](jit::Value* v) { return map.at(v); }));
        for (jit::Value* o : copy->outputs()) g->registerOutput(o);
        sub.code = std::make_shared<jit::Code>(g, "ember_evaluate");
      }
      for (jit::Value* v : sub.inputs) stack.push_back(vals_.at(v).runs[k]);
      jit::InterpreterState(*sub.code).run(stack);
    }
    if (stack.size() < n->outputs().size()) {
      *err = "evaluation returned too few values";
      return false;
    }
    outs->assign(stack.end() - static_cast<std::ptrdiff_t>(n->outputs().size()), stack.end());
    return true;
  } catch (const std::exception& e) {
    *err = first_line(e.what());
    if (err->empty()) *err = std::string(e.what()).substr(0, 400);
    return false;
  }
}

void Importer::evaluate(jit::Node* n) {
  bool inputs_known = true, data = false, varies = false;
  for (jit::Value* v : free_values(n)) {
    const Val& in = vals_[v];
    inputs_known = inputs_known && in.known;
    data = data || in.data;
    varies = varies || in.varies;
  }
  if (is_metadata_op(n)) data = false;
  if (is_random(n)) data = true;
  const bool effect_only = n->outputs().empty() && n->hasSideEffects();
  std::vector<std::vector<c10::IValue>> results(num_runs_);
  bool known = inputs_known && !effect_only;
  std::string err;
  for (size_t k = 0; known && k < num_runs_; ++k) known = run_node(n, k, &results[k], &err);
  if (!known && inputs_known && !effect_only) {
    out_.reason[n] = "cannot be evaluated on example inputs: " + err;
    if (std::getenv("EMBER_TS_DEBUG") != nullptr) {
      std::fprintf(stderr, "[ember.ts] %s: %s\n", ts_op_key(n).c_str(), err.c_str());
    }
  }
  for (size_t i = 0; i < n->outputs().size(); ++i) {
    Val& v = vals_[n->outputs()[i]];
    v.known = known;
    v.data = data || alias_.hasWriters(n->outputs()[i]);
    if (known) {
      for (size_t k = 0; k < num_runs_; ++k) v.runs.push_back(results[k][i]);
    }
    bool differs = false;
    for (const auto& r : v.runs) differs = differs || !ivalues_equal(r, v.runs[0]);
    v.varies = differs || (varies && !is_rank_op(n));
  }
}

bool Importer::is_random(jit::Node* n) {
  if (!n->isNondeterministic()) return false;
  // Dropout-like ops are random only when dropout is on: dropout_p > 0, or train = true.
  const c10::FunctionSchema* schema = n->maybeSchema();
  if (schema == nullptr) return true;
  for (size_t i = 0; i < schema->arguments().size() && i < n->inputs().size(); ++i) {
    const std::string& name = schema->arguments()[i].name();
    const Val& v = vals_[n->inputs()[i]];
    if (!v.known || v.data || v.varies) continue;
    const c10::IValue& x = v.runs[0];
    if (name == "dropout_p" && x.isDouble()) return x.toDouble() != 0.0;
    if (name == "train" && x.isBool()) return x.toBool();
  }
  return true;
}

jit::Node* Importer::inline_if(jit::Node* n, bool cond) {
  // The condition is static and the same for every input size: the taken branch is the program.
  jit::Block* block = n->blocks()[cond ? 0 : 1];
  std::vector<jit::Node*> inner(block->nodes().begin(), block->nodes().end());
  for (jit::Node* m : inner) m->moveBefore(n);
  for (size_t i = 0; i < n->outputs().size(); ++i) {
    n->outputs()[i]->replaceAllUsesWith(block->outputs()[i]);
  }
  jit::Node* next = inner.empty() ? n->next() : inner.front();
  n->destroy();
  return next;
}

std::string clean_name(const std::string& hint) {
  // TorchScript's "x.1" is the user's x.
  std::string h = hint;
  const size_t dot = h.rfind('.');
  if (dot != std::string::npos && dot > 0 && dot + 1 < h.size() &&
      std::all_of(h.begin() + dot + 1, h.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
    h = h.substr(0, dot);
  }
  std::string base;
  for (char c : h) base += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  if (base.empty() || std::isdigit(static_cast<unsigned char>(base[0]))) base = "v" + base;
  return base;
}

std::string Importer::unique_name(const std::string& hint) {
  std::string base = clean_name(hint);
  if (base.empty() || std::isdigit(static_cast<unsigned char>(base[0]))) base = "v" + base;
  std::string name = base;
  for (int i = 1; names_.count(name) != 0; ++i) name = base + "_" + std::to_string(i);
  names_.insert(name);
  return name;
}

void Importer::set_module(compiler::Node* node, const jit::Node* n) const {
  // Scripted modules: the inlined call stack names each module instance and its class.
  auto cs = n->callstack();
  if (!cs) return;
  std::string path;
  std::vector<std::string> types;
  for (const auto& entry : (*cs)->vec()) {
    const auto& info = std::get<jit::kModuleInstanceInfo>(entry);
    if (!info || !info->class_type()) continue;
    std::string type = info->class_type()->name() ? info->class_type()->name()->qualifiedName() : "";
    // "__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d" -> "torch.nn.modules.conv.Conv2d"
    if (type.rfind("__torch__.", 0) == 0) type = type.substr(10);
    std::string clean;
    size_t pos = 0;
    while (pos <= type.size()) {
      const size_t dot = type.find('.', pos);
      const std::string part = type.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
      if (part.rfind("___torch_mangle", 0) != 0) clean += (clean.empty() ? "" : ".") + part;
      if (dot == std::string::npos) break;
      pos = dot + 1;
    }
    types.push_back(clean);
    const std::string& inst = info->instance_name();
    if (!inst.empty() && inst != "self") path += (path.empty() ? "" : ".") + inst;
  }
  node->set_module(path, types);
}

std::optional<compiler::TensorType> Importer::tensor_type(const jit::Value* v,
                                                          std::string* why) const {
  const Val& val = vals_.at(v);
  if (!val.known) {
    *why = "its shape is unknown";
    return std::nullopt;
  }
  const c10::IValue& r0 = val.runs[0];
  if (!r0.isTensor() || !r0.toTensor().defined()) {
    *why = "not a tensor";
    return std::nullopt;
  }
  const at::Tensor& t0 = r0.toTensor();
  auto dt = ir_dtype(t0.scalar_type());
  if (!dt) {
    *why = std::string("dtype ") + c10::toString(t0.scalar_type()) + " has no engine type";
    return std::nullopt;
  }
  compiler::TensorType out;
  out.dtype = *dt;
  for (int64_t d = 0; d < t0.dim(); ++d) {
    std::vector<int64_t> xs;
    for (const c10::IValue& r : val.runs) {
      const at::Tensor& t = r.toTensor();
      if (t.dim() != t0.dim() || t.scalar_type() != t0.scalar_type()) {
        *why = "its rank or dtype depends on the input sizes";
        return std::nullopt;
      }
      xs.push_back(t.size(d));
    }
    auto a = fit(xs);
    if (!a) {
      *why = "dim " + std::to_string(d) + " is not an affine function of the dynamic input dims";
      return std::nullopt;
    }
    out.shape.push_back(to_dim(*a));
  }
  return out;
}

compiler::Value* Importer::tensor_arg(jit::Value* v, std::string* why, bool narrow_f64_scalar) {
  auto it = out_.value_name.find(v);
  if (it != out_.value_name.end()) return out_.graph.find_value(it->second);
  const Val& val = vals_[v];
  if (val.data || !val.known) {
    *why = "input '" + v->debugName() + "' is computed in TorchScript";
    return nullptr;
  }
  // A static tensor (a frozen weight, or computed from constants only): an IR constant.
  for (const c10::IValue& r : val.runs) {
    if (!ivalues_equal(r, val.runs[0])) {
      *why = "input '" + v->debugName() + "' is static but differs between input sizes";
      return nullptr;
    }
  }
  auto type = tensor_type(v, why);
  if (!type) return nullptr;
  at::Tensor host = val.runs[0].toTensor().detach().to(at::kCPU).contiguous();
  // A traced Python float is a 0-d f64 tensor; an op whose result is not f64 computes with it
  // in the result's precision anyway (0-d tensors do not promote), so f32 is exact here.
  if (narrow_f64_scalar && host.dim() == 0 && host.scalar_type() == at::kDouble) {
    host = host.to(at::kFloat);
    type->dtype = ScalarType::kF32;
  }
  auto keep = std::make_shared<at::Tensor>(host);
  compiler::ConstantData data{std::shared_ptr<const void>(keep, keep->data_ptr()),
                              static_cast<size_t>(host.numel()) * host.element_size()};
  const std::string name = unique_name(v->debugName());
  compiler::Value* c = out_.graph.add_constant(name, type->dtype, type->shape, std::move(data));
  c->set_fx_name(name);
  if (host.scalar_type() == val.runs[0].toTensor().scalar_type()) {
    out_.value_name[v] = name;
    out_.ts_value[name] = v;
  }
  return c;
}

std::optional<Arg> Importer::scalar_arg(jit::Value* v, const c10::Argument& arg, std::string* why) {
  const Val& val = vals_[v];
  if (!val.known || val.data) {
    *why = "argument '" + arg.name() + "' depends on tensor data";
    return std::nullopt;
  }
  const auto& runs = val.runs;
  if (runs[0].isNone()) {
    for (const auto& r : runs) {
      if (!r.isNone()) {
        *why = "argument '" + arg.name() + "' is None for some input sizes only";
        return std::nullopt;
      }
    }
    return Arg(compiler::NoneArg{});
  }
  auto same = [&] {
    for (const auto& r : runs) {
      if (!ivalues_equal(r, runs[0])) return false;
    }
    return true;
  };
  auto fit_ints = [&](const std::vector<int64_t>& xs) -> std::optional<DimExpr> {
    auto a = fit(xs);
    if (!a) return std::nullopt;
    return to_dim(*a);
  };
  c10::TypePtr real = arg.real_type();
  if (auto opt = real->cast<c10::OptionalType>()) real = opt->getElementType();
  switch (real->kind()) {
    case c10::TypeKind::ScalarTypeType: {
      auto t = ir_dtype(static_cast<c10::ScalarType>(runs[0].toInt()));
      if (!t) {
        *why = "dtype argument has no engine type";
        return std::nullopt;
      }
      return Arg(*t);
    }
    case c10::TypeKind::LayoutType:
      return Arg(std::string(runs[0].toInt() == 0 ? "torch.strided" : "torch.sparse"));
    case c10::TypeKind::MemoryFormatType: {
      static const char* kNames[] = {"torch.contiguous_format", "torch.preserve_format",
                                     "torch.channels_last", "torch.channels_last_3d"};
      const int64_t i = runs[0].toInt();
      return Arg(std::string(i >= 0 && i < 4 ? kNames[i] : "torch.contiguous_format"));
    }
    case c10::TypeKind::DeviceObjType:
      return Arg(runs[0].toDevice().str());
    default:
      break;
  }
  auto changes = [&]() -> std::optional<Arg> {
    *why = "argument '" + arg.name() + "' changes with the input sizes in a way the IR cannot hold";
    return std::nullopt;
  };
  const c10::IValue& r0 = runs[0];
  if (r0.isBool()) {
    if (!same()) return changes();
    return Arg(r0.toBool());
  }
  if (r0.isInt()) {
    std::vector<int64_t> xs;
    for (const auto& r : runs) xs.push_back(r.toInt());
    auto d = fit_ints(xs);
    if (!d) return changes();
    if (d->is_constant()) return Arg(d->constant());
    return Arg(*d);
  }
  if (r0.isDouble()) {
    if (!same()) return changes();
    return Arg(r0.toDouble());
  }
  if (r0.isString()) return Arg(r0.toStringRef());
  if (r0.isIntList()) {
    const size_t n = r0.toIntList().size();
    std::vector<DimExpr> dims;
    for (size_t i = 0; i < n; ++i) {
      std::vector<int64_t> xs;
      for (const auto& r : runs) {
        if (!r.isIntList() || r.toIntList().size() != n) return changes();
        xs.push_back(r.toIntList().get(i));
      }
      auto d = fit_ints(xs);
      if (!d) return changes();
      dims.push_back(*d);
    }
    return Arg(dims);
  }
  if (r0.isDoubleList()) {
    if (!same()) return changes();
    return Arg(std::vector<double>(r0.toDoubleList().vec()));
  }
  if (r0.isBoolList()) {
    if (!same()) return changes();
    std::vector<bool> b;
    for (bool x : r0.toBoolList()) b.push_back(x);
    return Arg(b);
  }
  *why = "argument '" + arg.name() + "' of type " + real->str() + " has no IR form";
  return std::nullopt;
}

std::optional<std::string> Importer::import_node(jit::Node* n, jit::Node* unpack) {
  // With `unpack` (a prim::ListUnpack of n's Tensor[] result), n and the unpack are one IR node
  // whose outputs are the unpacked tensors: aten::split.Tensor -> ListUnpack, as the FX graph's
  // split -> getitem.
  jit::Node* owner = unpack != nullptr ? unpack : n;
  // aten ops, and ops of other namespaces that a converter is registered for (custom ops with an
  // out-of-tree converter, docs/adding_a_converter.md).
  if (n->kind().ns() != c10::namespaces::aten &&
      !compiler::ConverterRegistry::instance().has(ts_op_key(n))) {
    return "not an aten op, and no converter is registered for " + ts_op_key(n);
  }
  const c10::FunctionSchema* schema = n->maybeSchema();
  if (schema == nullptr) return "no registered schema";
  if (schema->is_mutable()) return "mutates its input in place (kept in TorchScript)";
  if (is_random(n)) return "random op";
  for (jit::Value* v : n->inputs()) {
    if (v->type()->cast<c10::TensorType>() && alias_.hasWriters(v)) {
      return "reads '" + v->debugName() + "', which is mutated in place";
    }
  }
  std::string op = ts_op_key(n);
  std::vector<jit::Value*> ins(n->inputs().begin(), n->inputs().end());
  std::vector<c10::Argument> sargs = schema->arguments();
  std::vector<Arg> args;
  std::string why;
  bool produces_f64 = false;
  for (jit::Value* o : owner->outputs()) {
    const Val& ov = vals_[o];
    produces_f64 = produces_f64 || !ov.known || !ov.runs[0].isTensor() ||
                   ov.runs[0].toTensor().scalar_type() == at::kDouble;
  }
  // TorchScript spellings that need the other tensor's dtype: cast to it.
  if (op == "aten::type_as" || op == "aten::to.other") {
    std::string w;
    auto other = tensor_type(ins[1], &w);
    compiler::Value* self = tensor_arg(ins[0], &why);
    if (!other || self == nullptr) return why.empty() ? w : why;
    op = "aten::to.dtype";
    args = {self, other->dtype, false, false, compiler::NoneArg{}};
  } else {
    for (size_t i = 0; i < ins.size() && i < sargs.size(); ++i) {
      jit::Value* v = ins[i];
      c10::TypePtr t = sargs[i].type();
      if (auto o = t->cast<c10::OptionalType>()) t = o->getElementType();
      if (t->kind() == c10::TypeKind::TensorType) {
        if (vals_[v].known && vals_[v].runs[0].isNone()) {
          args.push_back(compiler::NoneArg{});
          continue;
        }
        compiler::Value* x = tensor_arg(v, &why, !produces_f64);
        if (x == nullptr) return why;
        args.push_back(x);
        continue;
      }
      if (auto lt = t->cast<c10::ListType>()) {
        c10::TypePtr el = lt->getElementType();
        if (auto o = el->cast<c10::OptionalType>()) el = o->getElementType();
        if (el->kind() == c10::TypeKind::TensorType) {
          if (v->node()->kind() != c10::prim::ListConstruct) {
            return "tensor list argument '" + sargs[i].name() + "' is not a list literal";
          }
          std::vector<compiler::Value*> list;
          for (jit::Value* e : v->node()->inputs()) {
            if (vals_[e].known && vals_[e].runs[0].isNone()) {
              list.push_back(nullptr);
              continue;
            }
            compiler::Value* x = tensor_arg(e, &why);
            if (x == nullptr) return why;
            list.push_back(x);
          }
          args.push_back(list);
          continue;
        }
      }
      auto a = scalar_arg(v, sargs[i], &why);
      if (!a) return why;
      args.push_back(*a);
    }
  }
  std::vector<compiler::TensorType> types;
  std::vector<std::string> names;
  for (jit::Value* o : owner->outputs()) {
    auto t = tensor_type(o, &why);
    if (!t) return "output '" + o->debugName() + "': " + why;
    types.push_back(*t);
    names.push_back(unique_name(o->debugName()));
  }
  compiler::Node* node = nullptr;
  try {
    node = out_.graph.add_node(op, std::move(args), types, names);
  } catch (const std::exception& e) {
    for (const auto& nm : names) names_.erase(nm);
    return first_line(e.what());
  }
  const std::string node_name = names[0];
  node->set_fx_name(node_name);
  set_module(node, n);
  for (size_t i = 0; i < owner->outputs().size(); ++i) {
    jit::Value* o = owner->outputs()[i];
    // Outputs nobody reads stay unnamed (Node::output_is_read).
    if (o->hasUses() || std::find(g_->outputs().begin(), g_->outputs().end(), o) != g_->outputs().end()) {
      node->output(i)->set_fx_name(names[i]);
      out_.value_name[o] = names[i];
      out_.ts_value[names[i]] = o;
    }
  }
  out_.role[owner] = NodeRole::kImported;
  out_.node_name[owner] = node_name;
  return std::nullopt;
}

void Importer::import_opaque(jit::Node* n, const std::string& reason) {
  out_.reason[n] = reason;
  // Its IR inputs: the IR tensors it reads, directly or through TorchScript nodes outside the IR
  // (a list that aten::split made from an engine's output), so the partitioner never puts a
  // producer and a consumer of this node into one engine.
  std::vector<Arg> args;
  std::set<const jit::Value*> seen;
  std::vector<jit::Value*> work = free_values(n);
  while (!work.empty()) {
    jit::Value* v = work.back();
    work.pop_back();
    if (!seen.insert(v).second) continue;
    if (auto it = out_.value_name.find(v); it != out_.value_name.end()) {
      args.push_back(out_.graph.find_value(it->second));
      continue;
    }
    // Constants and size arithmetic on the inputs do not wait for any engine.
    if (out_.constant.count(v) != 0 || out_.affine.count(v) != 0) continue;
    for (jit::Value* w : free_values(v->node())) work.push_back(w);
  }
  std::vector<compiler::TensorType> types;
  std::vector<std::string> names;
  std::vector<jit::Value*> outs;
  for (jit::Value* o : n->outputs()) {
    std::string why;
    if (!o->type()->cast<c10::TensorType>()) continue;
    auto t = tensor_type(o, &why);
    if (!t) continue;
    types.push_back(*t);
    names.push_back(unique_name(o->debugName()));
    outs.push_back(o);
  }
  if (outs.empty()) {
    out_.role[n] = NodeRole::kTorchScript;
    return;
  }
  std::string kind = n->kind().toQualString();
  std::replace(kind.begin(), kind.end(), ':', '_');
  compiler::Node* node = out_.graph.add_node("torchscript::" + kind, std::move(args), types, names);
  node->set_fx_name(names[0]);
  set_module(node, n);
  for (size_t i = 0; i < outs.size(); ++i) {
    node->output(i)->set_fx_name(names[i]);
    out_.value_name[outs[i]] = names[i];
    out_.ts_value[names[i]] = outs[i];
  }
  out_.role[n] = NodeRole::kOpaque;
  out_.node_name[n] = names[0];
}

jit::Node* Importer::unpacked_list_producer(jit::Node* n) {
  // A ListUnpack whose list is the only use of an aten op's Tensor[] result.
  if (n->kind() != c10::prim::ListUnpack) return nullptr;
  jit::Value* list = n->input(0);
  jit::Node* p = list->node();
  if (list->uses().size() != 1 || p->kind().ns() != c10::namespaces::aten || p->outputs().size() != 1) {
    return nullptr;
  }
  auto lt = list->type()->cast<c10::ListType>();
  if (!lt || lt->getElementType()->kind() != c10::TypeKind::TensorType) return nullptr;
  return p;
}

void Importer::classify(jit::Node* n) {
  bool any_tensor_out = false, all_static = true;
  for (jit::Value* o : n->outputs()) {
    const Val& v = vals_[o];
    if (!v.known || v.data) all_static = false;
    if (v.known && v.runs[0].isTensor()) any_tensor_out = true;
    if (o->type()->cast<c10::TensorType>()) any_tensor_out = true;
  }
  const bool effects = n->hasSideEffects() || n->outputs().empty();
  if (!effects && all_static && !n->outputs().empty()) {
    // Evaluated. A static tensor that differs between runs (arange(x.size(0))) must be computed
    // by the engine instead: import it.
    bool same_everywhere = true;
    for (jit::Value* o : n->outputs()) {
      const Val& v = vals_[o];
      for (const auto& r : v.runs) same_everywhere = same_everywhere && ivalues_equal(r, v.runs[0]);
    }
    if (!(any_tensor_out && !same_everywhere)) {
      out_.role[n] = NodeRole::kStatic;
      for (jit::Value* o : n->outputs()) {
        const Val& v = vals_[o];
        bool same = true;
        for (const auto& r : v.runs) same = same && ivalues_equal(r, v.runs[0]);
        if (same) {
          out_.constant[o] = v.runs[0];
          continue;
        }
        // Symbolic ints and int lists: kept as affine forms for the embedder.
        std::vector<Affine> forms;
        bool ok = true, is_list = v.runs[0].isIntList();
        if (v.runs[0].isInt() || is_list) {
          const size_t count = is_list ? v.runs[0].toIntList().size() : 1;
          for (size_t i = 0; ok && i < count; ++i) {
            std::vector<int64_t> xs;
            for (const auto& r : v.runs) {
              if (is_list && (!r.isIntList() || r.toIntList().size() != count)) {
                ok = false;
                break;
              }
              xs.push_back(is_list ? r.toIntList().get(i) : r.toInt());
            }
            if (!ok) break;
            auto a = fit(xs);
            if (!a) ok = false;
            else forms.push_back(*a);
          }
        } else {
          ok = false;
        }
        if (ok) out_.affine[o] = {is_list, forms};
      }
      return;
    }
  }
  if (!any_tensor_out) {
    out_.role[n] = NodeRole::kTorchScript;
    if (!out_.reason.count(n)) {
      out_.reason[n] = effects ? "has side effects" : "its results are not tensors";
    }
    return;
  }
  std::string why;
  if (!effects && all_static && !n->outputs().empty()) {
    // A static tensor that changes with the input sizes: an engine computes it when it is an
    // aten op the IR holds, else it is recomputed in TorchScript where needed.
    if (!import_node(n)) return;
    out_.role[n] = NodeRole::kStatic;
    return;
  }
  if (!n->blocks().empty()) {
    why = "control flow runs in TorchScript";
  } else if (out_.reason.count(n)) {
    why = out_.reason[n];
  } else if (auto err = import_node(n, nullptr); err && !unpacked_list_producer(n)) {
    why = *err;
  } else if (err) {
    auto fused = import_node(unpacked_list_producer(n), n);
    if (!fused) return;
    why = *err + "; as one node with its list's producer: " + *fused;
  } else {
    return;
  }
  import_opaque(n, why);
}

ImportResult Importer::run() {
  make_symbols();
  // Real example tensors: run 0 at the symbols' v values, run 1+i with symbol i at w, the last
  // run at u. Ints are drawn from [0, 3) so they are valid indices into any embedding.
  for (jit::Node* n : g_->nodes()) {
    if (const c10::FunctionSchema* s = n->maybeSchema(); s != nullptr && s->is_mutable()) {
      clone_constants_ = true;
    }
  }
  jit::Value* self = g_->inputs()[0];
  Val& sv = vals_[self];
  sv.known = true;
  sv.runs.assign(num_runs_, c10::IValue());
  at::manual_seed(0);
  // The example tensors live where the module's weights do (the frozen graph's tensor
  // constants): a module moved to CUDA is evaluated on CUDA, as it will run.
  c10::Device device(c10::kCPU);
  for (jit::Node* n : g_->nodes()) {
    if (n->kind() != c10::prim::Constant || !n->output()->type()->cast<c10::TensorType>()) continue;
    const std::optional<c10::IValue> v = jit::toIValue(n->output());
    if (v && v->isTensor() && v->toTensor().device() != c10::Device(c10::kCPU)) {
      device = v->toTensor().device();
      break;
    }
  }
  for (size_t i = 0; i < inputs_.size(); ++i) {
    jit::Value* v = g_->inputs()[i + 1];
    Val& val = vals_[v];
    val.known = true;
    val.data = true;
    for (size_t k = 0; k < num_runs_; ++k) {
      std::vector<int64_t> shape = inputs_[i].opt_shape;
      size_t s = 0;
      for (const auto& info : out_.symbols) {
        if (info.input == static_cast<int>(i)) {
          const Sym& sym = syms_[s];
          shape[info.dim] = k == 0 ? sym.v : (k == num_runs_ - 1 ? sym.u : (k == s + 1 ? sym.w : sym.v));
        }
        ++s;
      }
      const c10::ScalarType dt = torch_dtype(inputs_[i].dtype);
      at::Tensor t;
      if (at::isFloatingType(dt)) t = at::randn(shape, at::TensorOptions().dtype(dt));
      else if (dt == c10::ScalarType::Bool) t = at::randint(0, 2, shape).to(at::kBool);
      else t = at::randint(0, 3, shape, at::TensorOptions().dtype(dt));
      // Drawn on the CPU (the same values whatever the device), then moved.
      val.runs.push_back(device.is_cpu() ? t : t.to(device));
    }
    const std::string name = unique_name(v->debugName());
    std::string why;
    auto type = tensor_type(v, &why);
    if (!type) throw compiler::Error("ember.ts: input " + std::to_string(i) + ": " + why);
    // The declared symbols, not the fitted ones: a dim of range [1, 2] fits poorly.
    type->shape.clear();
    size_t s = 0;
    for (size_t d = 0; d < inputs_[i].opt_shape.size(); ++d) {
      type->shape.push_back(DimExpr(inputs_[i].opt_shape[d]));
    }
    for (const auto& info : out_.symbols) {
      if (info.input == static_cast<int>(i)) type->shape[info.dim] = DimExpr::symbol(info.name);
      ++s;
    }
    compiler::Value* in = out_.graph.add_input(name, type->dtype, type->shape);
    in->set_fx_name(name);
    out_.value_name[v] = name;
    out_.ts_value[name] = v;
  }
  {
    at::NoGradGuard no_grad;
    for (jit::Node* n = g_->nodes().front(); n != g_->return_node();) {
      if (n->kind() == c10::prim::If) {
        const Val& c = vals_[n->input(0)];
        if (c.known && !c.data && !c.varies && c.runs[0].isBool()) {
          n = inline_if(n, c.runs[0].toBool());
          continue;
        }
      }
      evaluate(n);
      classify(n);
      n = n->next();
    }
  }
  std::vector<compiler::Value*> outs;
  for (const std::string& name : values_read_by_torchscript(g_, out_)) {
    outs.push_back(out_.graph.find_value(name));
  }
  out_.graph.set_outputs(outs);
  return std::move(out_);
}

}  // namespace

std::vector<jit::Value*> free_values(jit::Node* n) {
  std::vector<jit::Value*> out;
  std::set<jit::Value*> seen;
  std::function<void(jit::Node*)> visit = [&](jit::Node* m) {
    for (jit::Value* v : m->inputs()) {
      // Defined outside n: its node is not n and not nested inside n.
      jit::Node* def = v->node();
      bool inside = false;
      for (jit::Node* p = def; p != nullptr; p = p->owningBlock() ? p->owningBlock()->owningNode() : nullptr) {
        if (p == n) {
          inside = true;
          break;
        }
      }
      if (!inside && seen.insert(v).second) out.push_back(v);
    }
    for (jit::Block* b : m->blocks()) {
      for (jit::Node* c : b->nodes()) visit(c);
      visit(b->return_node());
    }
  };
  visit(n);
  return out;
}

bool absorbed_by_ir(const jit::Node* n, const ImportResult& imported) {
  // A list literal that imported nodes read is part of their arguments; a Tensor[] op whose
  // ListUnpack was imported is part of that IR node. Neither is a TorchScript read.
  if (n->outputs().empty()) return false;
  for (const jit::Value* o : n->outputs()) {
    if (!o->hasUses()) return false;
    for (const jit::Use& u : o->uses()) {
      auto r = imported.role.find(u.user);
      if (r == imported.role.end() || r->second != NodeRole::kImported) return false;
    }
  }
  return true;
}

std::vector<std::string> values_read_by_torchscript(const std::shared_ptr<jit::Graph>& graph,
                                                    const ImportResult& imported) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto add = [&](const jit::Value* v) {
    auto it = imported.value_name.find(v);
    if (it != imported.value_name.end() && seen.insert(it->second).second) out.push_back(it->second);
  };
  auto role = [&](const jit::Node* n) {
    auto it = imported.role.find(n);
    return it == imported.role.end() ? NodeRole::kTorchScript : it->second;
  };
  for (jit::Node* n : graph->nodes()) {
    if (role(n) != NodeRole::kTorchScript) continue;
    if (absorbed_by_ir(n, imported)) continue;
    for (jit::Value* v : free_values(n)) add(v);
  }
  for (jit::Value* v : graph->outputs()) add(v);
  return out;
}

ImportResult import_graph(const std::shared_ptr<jit::Graph>& graph,
                          const std::vector<Input>& inputs) {
  return Importer(graph, inputs).run();
}

}  // namespace ember::torchscript
