// A segment's canonical text: the engine cache keys built plans by it
// (python/ember/engine_cache.py, on every path). Names carry no meaning for the engine, so they are
// replaced by positions (values by their order in the segment, symbols by their order in the
// graph's symbol table, which both importers fill in input order); everything the converters and
// the builder read (ops, arguments, types, symbol ranges, constant types) stays.
#include <map>
#include <string>

#include "ember/compiler/compile.h"

namespace ember::compiler {

namespace {

// `e` with every symbol of `names` renamed.
DimExpr renamed(const DimExpr& e, const std::map<std::string, std::string>& names) {
  switch (e.op()) {
    case DimExpr::Op::kConst:
      return e;
    case DimExpr::Op::kSymbol: {
      auto it = names.find(e.symbol_name());
      return it == names.end() ? e : DimExpr::symbol(it->second);
    }
    case DimExpr::Op::kAdd:
    case DimExpr::Op::kSub:
    case DimExpr::Op::kMul:
    case DimExpr::Op::kFloorDiv:
    case DimExpr::Op::kMod:
    case DimExpr::Op::kMin:
    case DimExpr::Op::kMax:
      return DimExpr::binary(e.op(), renamed(e.lhs(), names), renamed(e.rhs(), names));
  }
  return e;
}

class Namer {
 public:
  Namer(SegmentFingerprint& out, const Graph& g) : out_(out) {
    // Symbols by position too: the TorchScript importer names them after the method's
    // arguments ("x_d0"), torch.export after its own counter ("s0").
    for (const auto& [name, r] : g.symbols()) {
      symbols_.emplace(name, "_s" + std::to_string(symbols_.size()));
    }
  }

  const std::string& symbol(const std::string& name) const { return symbols_.at(name); }

  std::string type_text(const Value* v) const {
    engine::Shape shape;
    for (const DimExpr& d : v->shape()) shape.push_back(renamed(d, symbols_));
    return std::string(scalar_type_name(v->dtype())) + engine::shape_to_string(shape);
  }

  void name_input(const Value* v) { names_[v] = "%i" + std::to_string(inputs_++); }
  void name_output(const Value* v) { names_[v] = "%v" + std::to_string(outputs_++); }

  // A value an argument reads: known, or a constant seen for the first time.
  std::string ref(const Value* v) {
    if (v == nullptr) return "None";
    auto it = names_.find(v);
    if (it != names_.end()) return it->second;
    if (v->is_constant()) {
      std::string name = "%c" + std::to_string(out_.constants.size());
      out_.constants.push_back(v);
      names_[v] = name;
      return name;
    }
    // Not produced inside the segment and not one of its inputs: the partition is
    // inconsistent. Keep the key distinct rather than guess.
    return "%unknown(" + v->name() + ")";
  }

  std::string arg(const Arg& a) {
    if (auto v = std::get_if<Value*>(&a)) return ref(*v);
    if (auto l = std::get_if<std::vector<Value*>>(&a)) {
      std::string s = "[";
      for (size_t i = 0; i < l->size(); ++i) s += (i > 0 ? ", " : "") + ref((*l)[i]);
      return s + "]";
    }
    if (auto d = std::get_if<DimExpr>(&a)) return arg_to_string(Arg(renamed(*d, symbols_)));
    if (auto l = std::get_if<std::vector<DimExpr>>(&a)) {
      std::vector<DimExpr> dims;
      for (const DimExpr& d : *l) dims.push_back(renamed(d, symbols_));
      return arg_to_string(Arg(std::move(dims)));
    }
    return arg_to_string(a);  // no value or symbol names in other arguments
  }

 private:
  SegmentFingerprint& out_;
  std::map<std::string, std::string> symbols_;
  std::map<const Value*, std::string> names_;
  int inputs_ = 0;
  int outputs_ = 0;
};

}  // namespace

SegmentFingerprint segment_fingerprint(const Graph& g, const Segment& segment) {
  SegmentFingerprint out;
  Namer namer(out, g);
  std::string head = "segment(";
  for (size_t i = 0; i < segment.inputs.size(); ++i) {
    namer.name_input(segment.inputs[i]);
    head += (i > 0 ? ", " : "") + namer.ref(segment.inputs[i]) + ": " +
            namer.type_text(segment.inputs[i]);
  }
  head += "):\n";
  for (const auto& [name, r] : g.symbols()) {
    head += "  symbol " + namer.symbol(name) + " = [" + std::to_string(r.min) + ", " +
            std::to_string(r.opt) + ", " + std::to_string(r.max) + "]\n";
  }
  std::string body;
  for (const Node* n : segment.nodes) {
    std::string args;
    for (size_t i = 0; i < n->args().size(); ++i) args += (i > 0 ? ", " : "") + namer.arg(n->args()[i]);
    std::string outs, types;
    for (size_t i = 0; i < n->outputs().size(); ++i) {
      namer.name_output(n->output(i));
      outs += (i > 0 ? ", " : "") + namer.ref(n->output(i));
      types += (i > 0 ? ", " : "") + namer.type_text(n->output(i));
      // Which outputs PyTorch reads changes what converters emit (secondary outputs skipped).
      if (!n->output_is_read(i)) types += " unused";
    }
    body += "  " + (outs.empty() ? "" : outs + " = ") + n->op() + "(" + args + ")" +
            (types.empty() ? "" : " : " + types) + "\n";
  }
  std::string constants;
  for (const Value* c : out.constants) {
    constants += "  constant " + namer.ref(c) + ": " + namer.type_text(c) + "\n";
  }
  std::string ret = "  return (";
  for (size_t i = 0; i < segment.outputs.size(); ++i) {
    ret += (i > 0 ? ", " : "") + namer.ref(segment.outputs[i]);
  }
  out.text = head + constants + body + ret + ")\n";
  return out;
}

}  // namespace ember::compiler
