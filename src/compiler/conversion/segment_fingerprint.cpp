// A segment's canonical text: the engine cache keys built plans by it (python/ember/_engine_cache.py).
// Names carry no meaning for the engine, so they are replaced by positions; everything the
// converters and the builder read (ops, arguments, types, symbol ranges, constant types) stays.
#include <map>
#include <string>

#include "ember/compiler/compile.h"

namespace ember::compiler {

namespace {

class Namer {
 public:
  explicit Namer(SegmentFingerprint& out) : out_(out) {}

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
    return arg_to_string(a);  // no value names in other arguments
  }

 private:
  SegmentFingerprint& out_;
  std::map<const Value*, std::string> names_;
  int inputs_ = 0;
  int outputs_ = 0;
};

std::string type_text(const Value* v) {
  return std::string(scalar_type_name(v->dtype())) + engine::shape_to_string(v->shape());
}

}  // namespace

SegmentFingerprint segment_fingerprint(const Graph& g, const Segment& segment) {
  SegmentFingerprint out;
  Namer namer(out);
  std::string head = "segment(";
  for (size_t i = 0; i < segment.inputs.size(); ++i) {
    namer.name_input(segment.inputs[i]);
    head += (i > 0 ? ", " : "") + namer.ref(segment.inputs[i]) + ": " + type_text(segment.inputs[i]);
  }
  head += "):\n";
  for (const auto& [name, r] : g.symbols()) {
    head += "  symbol " + name + " = [" + std::to_string(r.min) + ", " + std::to_string(r.opt) +
            ", " + std::to_string(r.max) + "]\n";
  }
  std::string body;
  for (const Node* n : segment.nodes) {
    std::string args;
    for (size_t i = 0; i < n->args().size(); ++i) args += (i > 0 ? ", " : "") + namer.arg(n->args()[i]);
    std::string outs, types;
    for (size_t i = 0; i < n->outputs().size(); ++i) {
      namer.name_output(n->output(i));
      outs += (i > 0 ? ", " : "") + namer.ref(n->output(i));
      types += (i > 0 ? ", " : "") + type_text(n->output(i));
      // Which outputs PyTorch reads changes what converters emit (secondary outputs skipped).
      if (!n->output_is_read(i)) types += " unused";
    }
    body += "  " + (outs.empty() ? "" : outs + " = ") + n->op() + "(" + args + ")" +
            (types.empty() ? "" : " : " + types) + "\n";
  }
  std::string constants;
  for (const Value* c : out.constants) {
    constants += "  constant " + namer.ref(c) + ": " + type_text(c) + "\n";
  }
  std::string ret = "  return (";
  for (size_t i = 0; i < segment.outputs.size(); ++i) {
    ret += (i > 0 ? ", " : "") + namer.ref(segment.outputs[i]);
  }
  out.text = head + constants + body + ret + ")\n";
  return out;
}

}  // namespace ember::compiler
