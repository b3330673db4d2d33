// ember::torchscript: compile, check_method_operator_support, convert_method_to_engine,
// embed_engine_in_new_module, and the torch.ops.ember.ts_* operators the Python layer
// (ember/ts.py) and emberc call with file paths (a ScriptModule crosses the Python/C++ line as a
// file, so this library needs no libtorch_python).
#include <ATen/ATen.h>
#include <torch/csrc/jit/ir/irparser.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <set>
#include <sstream>
#include <tuple>

#include "engine_class.h"
#include "engine_state.h"
#include "ember/compiler/compile.h"
#include "ember/compiler/conversion.h"
#include "ember/compiler/lowering.h"
#include "ember/engine/runtime.h"
#include "torchscript_internal.h"

namespace ember::torchscript {

// ---------------------------------------------------------------------------------------------
// Input

Input Input::fixed(std::vector<int64_t> shape, compiler::ScalarType dtype) {
  return Input{shape, shape, shape, dtype};
}

Input Input::range(std::vector<int64_t> min_shape, std::vector<int64_t> opt_shape,
                   std::vector<int64_t> max_shape, compiler::ScalarType dtype) {
  return Input{std::move(min_shape), std::move(opt_shape), std::move(max_shape), dtype};
}

namespace {

const char* kInputForm =
    "expected '(1,3,224,224)' or '[(1,3,224,224);(4,3,224,224);(8,3,224,224)]' (min;opt;max), "
    "optionally followed by '@f32', '@f16', '@bf16', '@i32', '@i64', '@bool'";

std::vector<int64_t> parse_shape_text(const std::string& text, const std::string& whole) {
  auto bad = [&](const std::string& what) {
    return compiler::Error("input spec '" + whole + "': " + what + "; " + kInputForm);
  };
  std::string s;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) s += c;
  }
  if (s.size() < 2 || s.front() != '(' || s.back() != ')') throw bad("a shape must be in parentheses");
  s = s.substr(1, s.size() - 2);
  std::vector<int64_t> out;
  if (s.empty()) return out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty() || !std::all_of(item.begin(), item.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      throw bad("'" + item + "' is not a size");
    }
    out.push_back(std::stoll(item));
  }
  return out;
}

compiler::ScalarType parse_dtype_text(const std::string& name, const std::string& whole) {
  static const std::vector<std::pair<std::string, compiler::ScalarType>> kAliases = {
      {"float", compiler::ScalarType::kF32},   {"float32", compiler::ScalarType::kF32},
      {"half", compiler::ScalarType::kF16},    {"float16", compiler::ScalarType::kF16},
      {"bfloat16", compiler::ScalarType::kBF16}, {"int32", compiler::ScalarType::kI32},
      {"int", compiler::ScalarType::kI32},     {"int64", compiler::ScalarType::kI64},
      {"long", compiler::ScalarType::kI64},    {"int8", compiler::ScalarType::kI8},
      {"uint8", compiler::ScalarType::kU8},    {"float64", compiler::ScalarType::kF64},
      {"double", compiler::ScalarType::kF64}};
  if (auto t = compiler::scalar_type_from_name(name)) return *t;
  for (const auto& [alias, t] : kAliases) {
    if (alias == name) return t;
  }
  throw compiler::Error("input spec '" + whole + "': unknown dtype '" + name + "'; " + kInputForm);
}

}  // namespace

Input Input::parse(const std::string& text) {
  std::string shapes = text;
  compiler::ScalarType dtype = compiler::ScalarType::kF32;
  if (const size_t at = text.rfind('@'); at != std::string::npos) {
    shapes = text.substr(0, at);
    dtype = parse_dtype_text(text.substr(at + 1), text);
  }
  std::string s;
  for (char c : shapes) {
    if (!std::isspace(static_cast<unsigned char>(c))) s += c;
  }
  if (!s.empty() && s.front() == '[') {
    if (s.back() != ']') {
      throw compiler::Error("input spec '" + text + "': missing ']'; " + kInputForm);
    }
    std::vector<std::string> parts;
    std::stringstream ss(s.substr(1, s.size() - 2));
    std::string part;
    while (std::getline(ss, part, ';')) parts.push_back(part);
    if (parts.size() == 1) return fixed(parse_shape_text(parts[0], text), dtype);
    if (parts.size() != 3) {
      throw compiler::Error("input spec '" + text + "': a range needs three shapes (min;opt;max); " +
                            kInputForm);
    }
    Input in{parse_shape_text(parts[0], text), parse_shape_text(parts[1], text),
             parse_shape_text(parts[2], text), dtype};
    if (in.min_shape.size() != in.opt_shape.size() || in.opt_shape.size() != in.max_shape.size()) {
      throw compiler::Error("input spec '" + text + "': min, opt and max have different ranks");
    }
    for (size_t d = 0; d < in.min_shape.size(); ++d) {
      if (!(in.min_shape[d] <= in.opt_shape[d] && in.opt_shape[d] <= in.max_shape[d])) {
        throw compiler::Error("input spec '" + text + "': dim " + std::to_string(d) +
                              " needs min <= opt <= max");
      }
    }
    return in;
  }
  return fixed(parse_shape_text(s, text), dtype);
}

std::string Input::to_string() const {
  auto shape = [](const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
    return out + ")";
  };
  std::string body = min_shape == max_shape
                         ? shape(opt_shape)
                         : "[" + shape(min_shape) + ";" + shape(opt_shape) + ";" + shape(max_shape) + "]";
  return body + "@" + compiler::scalar_type_name(dtype);
}

namespace {

// ---------------------------------------------------------------------------------------------
// Compilation

bool is_output_glue(const jit::Node* n) {
  const auto k = n->kind();
  return k == c10::prim::TupleConstruct || k == c10::prim::ListConstruct ||
         k == c10::prim::TupleUnpack || k == c10::prim::ListUnpack || k == c10::prim::TupleIndex ||
         k == c10::prim::DictConstruct;
}

std::string describe(const jit::Node* n) {
  std::string outs;
  for (const jit::Value* o : n->outputs()) outs += (outs.empty() ? "%" : ", %") + o->debugName();
  return ts_op_key(n) + (outs.empty() ? "" : " (" + outs + ")");
}

bridge::BridgeIO bridge_io(const compiler::EngineIO& e) {
  return bridge::BridgeIO{e.name, compiler::scalar_type_name(e.torch_dtype), e.engine_dtype,
                          e.shape};
}

// A torch.classes.ember.Engine; loading its state validates the plan against the metadata.
c10::IValue make_engine(const std::vector<uint8_t>& plan, const bridge::EngineMetadata& md) {
  std::vector<std::string> state = {bridge::kEngineStateTag,
                                    bridge::base64_encode(plan.data(), plan.size()),
                                    bridge::metadata_to_json(md)};
  return c10::IValue(c10::make_intrusive<bridge::TorchEngine>(std::move(state)));
}

struct Compiled {
  LoweredMethod lowered;
  ImportResult imported;
  compiler::PartitionResult partition;
};

// Lowering, import, the compiler's lowering and partitioning. Errors for
// require_full_compilation list every node that would run in TorchScript, with why.
Compiled analyze(const jit::Module& module, const CompileSpec& spec, CompileReport* report) {
  Compiled c{lower_module(module, spec.method), {}, {}};
  c.imported = import_graph(c.lowered.graph, spec.inputs);
  compiler::CompileSettings settings = spec.settings;
  const bool full = settings.require_full_compilation;
  settings.require_full_compilation = false;
  auto log = compiler::lower(c.imported.graph, settings).log;
  c.partition = compiler::partition(c.imported.graph, settings, spec.use_global_partitioner);

  std::vector<std::string> fallback;
  std::map<std::string, const jit::Node*> by_name;
  for (const auto& [n, name] : c.imported.node_name) by_name[name] = n;
  for (const auto& [node, why] : c.partition.fallback) {
    auto it = by_name.find(node->fx_name());
    std::string reason = why;
    if (it != by_name.end()) {
      if (auto r = c.imported.reason.find(it->second); r != c.imported.reason.end()) reason = r->second;
      fallback.push_back(describe(it->second) + ": " + reason);
    } else {
      fallback.push_back(node->describe() + ": " + reason);
    }
  }
  for (jit::Node* n : c.lowered.graph->nodes()) {
    auto role = c.imported.role.find(n);
    if (role == c.imported.role.end() || role->second != NodeRole::kTorchScript) continue;
    if (is_output_glue(n) || absorbed_by_ir(n, c.imported)) continue;
    auto r = c.imported.reason.find(n);
    fallback.push_back(describe(n) + ": " + (r != c.imported.reason.end() ? r->second : "runs in TorchScript"));
  }
  if (report != nullptr) {
    report->partition_report = c.partition.report();
    report->fallback = fallback;
    report->log = c.lowered.log;
    report->log.insert(report->log.end(), log.begin(), log.end());
  }
  if (full && !fallback.empty()) {
    std::string msg = "ember.ts: require_full_compilation is set but " +
                      std::to_string(fallback.size()) + " node(s) would run in TorchScript:";
    for (const auto& f : fallback) msg += "\n  " + f;
    msg += "\nRemove require_full_compilation to let them run in TorchScript, or change the model.";
    throw compiler::Error(msg);
  }
  return c;
}

jit::Module new_module(const std::string& method) {
  auto cu = std::make_shared<jit::CompilationUnit>();
  jit::Module out(c10::QualifiedName("__torch__.ember.CompiledModule"), cu, /*shouldMangle=*/true);
  out.register_attribute("training", c10::BoolType::get(), false);
  (void)method;
  return out;
}

void add_method(jit::Module& module, const std::string& method, std::shared_ptr<jit::Graph> graph) {
  auto* fn = module._ivalue()->compilation_unit()->create_function(
      c10::QualifiedName(*module.type()->name(), method), std::move(graph));
  module.type()->addMethod(fn);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Compilation

Compilation::Compilation(const jit::Module& module, const CompileSpec& spec) : spec_(spec) {
  Compiled c = analyze(module, spec, &report_);
  lowered_ = std::move(c.lowered);
  imported_ = std::move(c.imported);
  partition_ = std::move(c.partition);
  for (size_t k = 0; k < partition_.segments.size(); ++k) {
    const compiler::Segment& seg = partition_.segments[k];
    if (!seg.engine) continue;
    // The embedder wires engine I/O to TorchScript values by fx name; a value the compiler made
    // (no fx name, or an autocast copy whose fx name is the f32 original's: see
    // compiler::convert's outputs) has no TorchScript value to read or write.
    bool mapped = true;
    for (const compiler::Value* v : seg.inputs) {
      mapped = mapped && imported_.ts_value.count(v->fx_name()) != 0;
    }
    for (const compiler::Value* v : seg.outputs) {
      const compiler::Node* p = v->producer();
      const bool copy = p != nullptr && p->fx_name().empty() && v->dtype() != v->torch_dtype();
      mapped = mapped && !copy && imported_.ts_value.count(v->fx_name()) != 0;
    }
    if (!mapped) {
      report_.fallback.push_back("engine segment of " + std::to_string(seg.nodes.size()) +
                                 " nodes reads or writes a value the compiler made; it runs in "
                                 "TorchScript");
      continue;
    }
    engine_segments_.push_back(k);
  }
}

size_t Compilation::segment_size(size_t k) const { return partition_.segments.at(k).nodes.size(); }

compiler::SegmentFingerprint Compilation::fingerprint(size_t k) const {
  return compiler::segment_fingerprint(imported_.graph, partition_.segments.at(k));
}

compiler::SegmentEngine Compilation::build(size_t k) const {
  return compiler::build_segment(imported_.graph, partition_.segments.at(k), spec_.settings,
                                 timing_cache);
}

bridge::EngineMetadata Compilation::metadata(const compiler::SegmentEngine& built) const {
  bridge::EngineMetadata md;
  md.backend = spec_.settings.backend;
  md.cuda_graphs = spec_.cuda_graphs;
  for (const auto& e : built.inputs) md.inputs.push_back(bridge_io(e));
  for (const auto& e : built.outputs) md.outputs.push_back(bridge_io(e));
  return md;
}

void Compilation::add_engine(size_t k, std::vector<uint8_t> plan,
                             const bridge::EngineMetadata& io) {
  if (std::find(engine_segments_.begin(), engine_segments_.end(), k) == engine_segments_.end()) {
    throw compiler::Error("ember.ts: segment " + std::to_string(k) + " is not an engine segment");
  }
  const compiler::Segment& seg = partition_.segments[k];
  if (io.inputs.size() != seg.inputs.size() || io.outputs.size() != seg.outputs.size()) {
    throw compiler::Error("ember.ts: the plan for segment " + std::to_string(k) + " has " +
                          std::to_string(io.inputs.size()) + " inputs and " +
                          std::to_string(io.outputs.size()) + " outputs; the segment has " +
                          std::to_string(seg.inputs.size()) + " and " +
                          std::to_string(seg.outputs.size()));
  }
  bridge::EngineMetadata md = io;
  md.backend = spec_.settings.backend;
  md.cuda_graphs = spec_.cuda_graphs;
  BuiltEngine e;
  // Engine I/O i is segment I/O i (compiler::convert), whatever the plan's tensors are named.
  for (const compiler::Value* v : seg.inputs) e.inputs.push_back(v->fx_name());
  for (const compiler::Value* v : seg.outputs) e.outputs.push_back(v->fx_name());
  for (const compiler::Node* n : seg.nodes) e.nodes.push_back(n->fx_name());
  e.engine = make_engine(plan, md);
  engines_[k] = std::move(e);
}

void Compilation::add_failure(size_t k, const std::string& why) {
  report_.fallback.push_back("engine segment of " + std::to_string(segment_size(k)) +
                             " nodes failed to build and runs in TorchScript: " + why);
}

jit::Module Compilation::finish() {
  if (finished_) throw compiler::Error("ember.ts: Compilation::finish called twice");
  finished_ = true;
  jit::Module out = new_module(spec_.method);
  std::vector<BuiltEngine> engines;
  for (auto& [k, e] : engines_) {  // segment order
    out.register_attribute("_ember_engine_" + std::to_string(engines.size()), e.engine.type(),
                           e.engine);
    engines.push_back(std::move(e));
  }
  report_.num_engines = static_cast<int>(engines.size());
  add_method(out, spec_.method, embed_graph(lowered_.graph, imported_, engines, out.type()));
  return out;
}

torch::jit::Module compile(const torch::jit::Module& module, const CompileSpec& spec,
                           CompileReport* report) {
  Compilation c(module, spec);
  for (size_t k : c.engine_segments()) {
    compiler::SegmentEngine built;
    try {
      built = c.build(k);
    } catch (const std::exception& e) {
      c.add_failure(k, e.what());
      continue;
    }
    const bridge::EngineMetadata md = c.metadata(built);
    c.add_engine(k, std::move(built.plan), md);
  }
  jit::Module out = c.finish();
  if (report != nullptr) *report = c.report();
  return out;
}

std::vector<std::string> check_method_operator_support(const torch::jit::Module& module,
                                                       const std::string& method) {
  LoweredMethod lowered = lower_module(module, method);
  auto& registry = compiler::ConverterRegistry::instance();
  std::vector<std::string> out;
  std::set<std::string> seen;
  std::function<void(jit::Block*)> visit = [&](jit::Block* block) {
    for (jit::Node* n : block->nodes()) {
      const std::string key = ts_op_key(n);
      std::string why;
      bool tensor_out = false;
      for (const jit::Value* o : n->outputs()) tensor_out = tensor_out || o->type()->cast<c10::TensorType>();
      if (!n->blocks().empty()) {
        why = "control flow runs in TorchScript";
      } else if (n->kind().ns() == c10::namespaces::prim || !tensor_out) {
        continue;  // evaluated at compile time (constants, lists, sizes, scalar arithmetic)
      } else if (n->kind().ns() != c10::namespaces::aten && !registry.has(key)) {
        why = "not an aten op, and no converter is registered for it";
      } else if (const c10::FunctionSchema* s = n->maybeSchema(); s != nullptr && s->is_mutable()) {
        why = "in-place op whose result another alias observes";
      } else if (key != "aten::type_as" && key != "aten::to.other" && !registry.has(key)) {
        why = "no converter";
      }
      if (!why.empty() && seen.insert(key).second) out.push_back(key + ": " + why);
      for (jit::Block* b : n->blocks()) visit(b);
    }
  };
  visit(lowered.graph->block());
  return out;
}

std::vector<uint8_t> convert_method_to_engine(const torch::jit::Module& module,
                                              const std::string& method, const CompileSpec& spec) {
  CompileSpec s = spec;
  s.method = method;
  s.settings.require_full_compilation = true;
  s.settings.min_block_size = 1;
  Compiled c = analyze(module, s, nullptr);
  std::vector<const compiler::Segment*> engines;
  for (const auto& seg : c.partition.segments) {
    if (seg.engine) engines.push_back(&seg);
  }
  if (engines.size() != 1) {
    throw compiler::Error("ember.ts.convert_method_to_engine: the method became " +
                          std::to_string(engines.size()) +
                          " engines, not one (its outputs or inputs are not all tensors in one "
                          "graph); use ember.ts.compile instead");
  }
  return compiler::build_segment(c.imported.graph, *engines[0], s.settings).plan;
}

torch::jit::Module embed_engine_in_new_module(const std::vector<uint8_t>& plan) {
  auto engine = engine::Runtime().deserialize(plan.data(), plan.size());
  compiler::SegmentEngine built;
  built.plan = plan;
  for (const auto& io : engine->io_tensors()) {
    compiler::EngineIO e{io.name, io.name, io.name, compiler::from_engine_dtype(io.dtype), io.dtype,
                         engine::shape_to_string(io.shape)};
    (io.is_input ? built.inputs : built.outputs).push_back(e);
  }
  bridge::EngineMetadata md;
  md.backend = engine->backend();
  for (const auto& e : built.inputs) md.inputs.push_back(bridge_io(e));
  for (const auto& e : built.outputs) md.outputs.push_back(bridge_io(e));
  c10::IValue obj = make_engine(plan, md);
  jit::Module out = new_module("forward");
  out.register_attribute("_ember_engine_0", obj.type(), obj);
  auto g = std::make_shared<jit::Graph>();
  jit::Value* self = g->addInput("self")->setType(out.type());
  std::vector<jit::Value*> ins;
  for (const auto& io : built.inputs) {
    std::string name;
    for (char ch : io.name) name += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
    if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) name = "input_" + name;
    ins.push_back(g->addInput(name)->setType(c10::TensorType::get()));
  }
  jit::Value* list = g->insertNode(g->createList(c10::TensorType::get(), ins))->output();
  jit::Value* eng = g->insertGetAttr(self, "_ember_engine_0");
  jit::Value* result = g->insert(c10::Symbol::fromQualString("ember::execute_engine"), {list, eng});
  jit::Node* unpack = g->insertNode(g->createListUnpack(result, built.outputs.size()));
  if (built.outputs.size() == 1) {
    g->registerOutput(unpack->output(0));
  } else {
    std::vector<jit::Value*> outs(unpack->outputs().begin(), unpack->outputs().end());
    g->registerOutput(g->insertNode(g->createTuple(outs))->output());
  }
  add_method(out, "forward", g);
  return out;
}

// ---------------------------------------------------------------------------------------------
// torch.ops.ember.ts_* (Python and emberc)

namespace {

compiler::CompileSettings parse_settings(const std::vector<std::string>& items) {
  compiler::CompileSettings s;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) throw compiler::Error("setting '" + item + "' is not key=value");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    auto as_bool = [&] { return value == "1" || value == "true" || value == "True"; };
    if (key == "min_block_size") s.min_block_size = std::stoll(value);
    else if (key == "torch_executed_ops") s.torch_executed_ops.push_back(value);
    else if (key == "torch_executed_modules") s.torch_executed_modules.push_back(value);
    else if (key == "require_full_compilation") s.require_full_compilation = as_bool();
    else if (key == "truncate_double") s.truncate_double = as_bool();
    else if (key == "optimization_level") s.optimization_level = std::stoi(value);
    else if (key == "backend") s.backend = value;
    else if (key == "channels_last") s.channels_last = value;
    else if (key == "debug") s.debug = as_bool();
    else if (key == "enable_autocast") s.enable_autocast = as_bool();
    else if (key == "autocast_low_precision_type") s.autocast_low_precision_type = value;
    else if (key == "autocast_excluded_nodes") s.autocast_excluded_nodes.push_back(value);
    else if (key == "autocast_excluded_ops") s.autocast_excluded_ops.push_back(value);
    else if (key == "autocast_max_output_threshold") s.autocast_max_output_threshold = std::stod(value);
    else if (key == "autocast_max_depth_of_reduction") s.autocast_max_depth_of_reduction = std::stoll(value);
    else if (key == "use_fp32_acc") s.use_fp32_acc = as_bool();
    else throw compiler::Error("unknown compiler setting '" + key + "'");
  }
  return s;
}

CompileSpec make_spec(const std::string& method, const std::vector<std::string>& inputs,
                      const std::vector<std::string>& settings) {
  CompileSpec spec;
  spec.method = method;
  for (const auto& text : inputs) spec.inputs.push_back(Input::parse(text));
  // The TorchScript path's own settings; the rest are the compiler's.
  std::vector<std::string> compiler_items;
  for (const std::string& item : settings) {
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
    const bool on = value == "1" || value == "true" || value == "True";
    if (key == "use_global_partitioner")
      spec.use_global_partitioner = on;
    else if (key == "cuda_graphs")
      spec.cuda_graphs = on;
    else
      compiler_items.push_back(item);
  }
  spec.settings = parse_settings(compiler_items);
  return spec;
}

jit::Module load_module(const std::string& path) {
  try {
    return jit::load(path);
  } catch (const std::exception& e) {
    throw compiler::Error("'" + path + "' is not a TorchScript file torch.jit.load can read: " +
                          std::string(e.what()).substr(0, 300));
  }
}

// compiler::Error -> RuntimeError in Python with the message alone.
template <class F>
auto guarded(F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    throw std::runtime_error(e.what_without_backtrace());
  }
}

std::vector<std::string> report_lines(const CompileReport& report) {
  std::vector<std::string> out = {"engines=" + std::to_string(report.num_engines),
                                  "report=" + report.partition_report};
  for (const auto& f : report.fallback) out.push_back("fallback=" + f);
  for (const auto& l : report.log) out.push_back("log=" + l);
  return out;
}

at::Tensor bytes_tensor(const std::vector<uint8_t>& bytes) {
  at::Tensor t = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  std::copy(bytes.begin(), bytes.end(), t.data_ptr<uint8_t>());
  return t;
}

std::vector<uint8_t> tensor_bytes(const at::Tensor& t) {
  at::Tensor p = t.contiguous().to(at::kByte);
  return std::vector<uint8_t>(p.data_ptr<uint8_t>(), p.data_ptr<uint8_t>() + p.numel());
}

// torch.classes.ember.TSCompilation: the stages of Compilation for ember/ts.py, which builds or
// loads each engine through the engine cache (python/ember/engine_cache.py).
class TorchCompilation : public torch::CustomClassHolder {
 public:
  TorchCompilation(std::string path, std::string method, std::vector<std::string> inputs,
                   std::vector<std::string> settings)
      : c_(guarded([&] {
          return std::make_unique<Compilation>(load_module(path),
                                               make_spec(method, inputs, settings));
        })) {}

  std::vector<int64_t> engine_segments() const {
    return std::vector<int64_t>(c_->engine_segments().begin(), c_->engine_segments().end());
  }
  int64_t segment_size(int64_t k) const { return static_cast<int64_t>(c_->segment_size(k)); }

  // (canonical text, constants' data): what ember._C.segment_fingerprint returns on the dynamo
  // path. The tensors view the constants without copying and keep them alive.
  std::tuple<std::string, std::vector<at::Tensor>> fingerprint(int64_t k) const {
    return guarded([&] {
      compiler::SegmentFingerprint f = c_->fingerprint(k);
      std::vector<at::Tensor> data;
      for (const compiler::Value* v : f.constants) {
        const compiler::ConstantData& d = v->constant();
        if (d.data == nullptr) {
          data.push_back(at::empty({0}, at::kByte));
          continue;
        }
        std::shared_ptr<const void> keep = d.data;
        data.push_back(at::from_blob(
            const_cast<void*>(d.data.get()), {static_cast<int64_t>(d.nbytes)},
            [keep](void*) mutable { keep.reset(); }, at::kByte));
      }
      return std::make_tuple(std::move(f.text), std::move(data));
    });
  }

  // (plan, I/O metadata JSON as torch.classes.ember.Engine stores it, build log, seconds).
  std::tuple<at::Tensor, std::string, std::vector<std::string>, double> build(int64_t k) const {
    compiler::SegmentEngine built = guarded([&] { return c_->build(k); });
    return std::make_tuple(bytes_tensor(built.plan), bridge::metadata_to_json(c_->metadata(built)),
                           built.build_log, built.build_seconds);
  }

  void add_engine(int64_t k, at::Tensor plan, std::string io_json) {
    guarded([&] {
      c_->add_engine(k, tensor_bytes(plan), bridge::metadata_from_json(io_json));
      return 0;
    });
  }

  void add_failure(int64_t k, std::string why) { c_->add_failure(k, why); }

  void set_timing_cache(at::Tensor bytes) {
    const std::vector<uint8_t> b = tensor_bytes(bytes);
    c_->timing_cache =
        guarded([&] { return engine::TimingCache::deserialize(b.data(), b.size()); });
  }

  at::Tensor timing_cache() const {
    return c_->timing_cache ? bytes_tensor(c_->timing_cache->serialize())
                            : at::empty({0}, at::kByte);
  }

  std::vector<std::string> finish(std::string out_path) {
    return guarded([&] {
      c_->finish().save(out_path);
      return report_lines(c_->report());
    });
  }

 private:
  std::unique_ptr<Compilation> c_;
};

std::vector<std::string> op_check_support(std::string path, std::string method) {
  return guarded([&] { return check_method_operator_support(load_module(path), method); });
}

at::Tensor op_convert_to_engine(std::string path, std::string method,
                                std::vector<std::string> inputs, std::vector<std::string> settings) {
  return guarded([&] {
    auto plan = convert_method_to_engine(load_module(path), method, make_spec(method, inputs, settings));
    at::Tensor t = at::empty({static_cast<int64_t>(plan.size())}, at::kByte);
    std::copy(plan.begin(), plan.end(), t.data_ptr<uint8_t>());
    return t;
  });
}

void op_embed_engine(at::Tensor plan, std::string out_path) {
  guarded([&] {
    at::Tensor p = plan.contiguous().to(at::kByte);
    std::vector<uint8_t> bytes(p.data_ptr<uint8_t>(), p.data_ptr<uint8_t>() + p.numel());
    embed_engine_in_new_module(bytes).save(out_path);
    return 0;
  });
}

std::string op_lower_ir(std::string ir) {
  auto g = std::make_shared<jit::Graph>();
  jit::parseIR(ir, g.get());
  std::vector<std::string> log;
  lower_graph(g, &log);
  return g->toString(false);
}

std::string op_import_ir(std::string ir, std::vector<std::string> inputs) {
  return guarded([&] {
    auto g = std::make_shared<jit::Graph>();
    jit::parseIR(ir, g.get());
    std::vector<Input> specs;
    for (const auto& t : inputs) specs.push_back(Input::parse(t));
    ImportResult r = import_graph(g, specs);
    std::string out = r.graph.to_string();
    // The evaluators' results and each node's role, for tests.
    for (jit::Node* n : g->nodes()) {
      auto role = r.role.find(n);
      if (role == r.role.end()) continue;
      const char* names[] = {"imported", "opaque", "static", "torchscript"};
      out += "# " + describe(n) + ": " + names[static_cast<int>(role->second)];
      if (auto why = r.reason.find(n); why != r.reason.end() && role->second != NodeRole::kImported) {
        out += " (" + why->second + ")";
      }
      out += "\n";
    }
    return out;
  });
}

}  // namespace

}  // namespace ember::torchscript

TORCH_LIBRARY_FRAGMENT(ember, m) {
  using ember::torchscript::TorchCompilation;
  m.class_<TorchCompilation>("TSCompilation")
      .def(torch::init<std::string, std::string, std::vector<std::string>,
                       std::vector<std::string>>())
      .def("engine_segments", &TorchCompilation::engine_segments)
      .def("segment_size", &TorchCompilation::segment_size)
      .def("fingerprint", &TorchCompilation::fingerprint)
      .def("build", &TorchCompilation::build)
      .def("add_engine", &TorchCompilation::add_engine)
      .def("add_failure", &TorchCompilation::add_failure)
      .def("set_timing_cache", &TorchCompilation::set_timing_cache)
      .def("timing_cache", &TorchCompilation::timing_cache)
      .def("finish", &TorchCompilation::finish);
  m.def("ts_check_support(str path, str method) -> str[]", &ember::torchscript::op_check_support);
  m.def("ts_convert_to_engine(str path, str method, str[] inputs, str[] settings) -> Tensor",
        &ember::torchscript::op_convert_to_engine);
  m.def("ts_embed_engine(Tensor plan, str out_path) -> ()", &ember::torchscript::op_embed_engine);
  m.def("ts_lower_ir(str ir) -> str", &ember::torchscript::op_lower_ir);
  // The registry of this library's compiler (TorchScript path), user converters included.
  m.def("converter_ops() -> str[]", [] { return ember::compiler::ConverterRegistry::instance().ops(); });
  m.def("ts_import_ir(str ir, str[] inputs) -> str", &ember::torchscript::op_import_ir);
}
