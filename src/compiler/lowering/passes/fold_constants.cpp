// Constant folding: a node whose tensor inputs are all constants with data is evaluated once,
// at compile time, on the engine's CPU back end, through the same converter the node would get
// inside an engine (so folding never disagrees with conversion). Its outputs become constants
// that own the computed data.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ember/compiler/compile.h"
#include "ember/compiler/conversion.h"
#include "ember/compiler/lowering.h"
#include "ember/compiler/partitioning.h"
#include "ember/engine/builder.h"
#include "ember/engine/runtime.h"

namespace ember::compiler {

namespace {

// Ops whose result is not a function of their arguments (random sampling, uninitialized
// memory): folding them would freeze one draw into the program.
bool is_nondeterministic(const std::string& op) {
  std::string_view name = op;
  if (const size_t ns = name.find("::"); ns != std::string_view::npos) name.remove_prefix(ns + 2);
  name = name.substr(0, name.find('.'));
  if (name.find("rand") != std::string_view::npos ||
      name.find("dropout") != std::string_view::npos) {
    return true;
  }
  static const char* const kOps[] = {
      "bernoulli",  "normal",        "uniform",          "multinomial",
      "poisson",    "exponential",   "geometric",        "cauchy",
      "log_normal", "rrelu",         "rrelu_with_noise", "empty",
      "empty_like", "empty_strided", "new_empty",        "new_empty_strided"};
  for (const char* o : kOps) {
    if (name == o || (name.size() == std::string_view(o).size() + 1 && name.back() == '_' &&
                      name.substr(0, name.size() - 1) == o)) {
      return true;
    }
  }
  return false;
}

// Dequantization of a constant (a quantized weight) stays a node: folded, the weight would be
// an f32 constant (4x the bytes), and the engine builder could no longer fuse it into an int8 or
// FP8 product (fuse_quantized looks for Dequantize of a constant).
bool is_dequantize(const std::string& op) {
  return op.rfind("quantized_decomposed::dequantize", 0) == 0 || op == "ember::dequantize_fp8";
}

// Bytes of a static-shaped value in its engine dtype; 0 when it cannot be folded (symbolic
// shape, a dtype the engine lacks, or no elements).
size_t foldable_bytes(const Value* v) {
  if (!engine::shape_is_static(v->shape())) return 0;
  const auto dtype = to_engine_dtype(v->dtype());
  if (!dtype) return 0;
  const int64_t numel = engine::dims_numel(engine::shape_evaluate(v->shape(), {}));
  return static_cast<size_t>(numel) * engine::dtype_size(*dtype);
}

bool can_fold(const Graph& g, const Node& node, const CompileSettings& settings, size_t max_bytes) {
  if (node.outputs().empty() || is_nondeterministic(node.op()) || is_dequantize(node.op())) {
    return false;
  }
  // Cheap checks first: most nodes read a non-constant.
  for (const Value* in : node.input_values()) {
    if (!in->is_constant() || in->constant().data == nullptr) return false;
  }
  bool used = false;
  const std::vector<Value*>& graph_outputs = g.outputs();
  for (const Value* out : node.outputs()) {
    const size_t bytes = foldable_bytes(out);
    if (bytes == 0 || bytes > max_bytes) return false;
    // A graph output must be materialized on every call anyway; folded, PyTorch would have to
    // make it (outside the engines), so the node stays and its engine produces it.
    if (std::find(graph_outputs.begin(), graph_outputs.end(), out) != graph_outputs.end()) {
      return false;
    }
    used = used || g.is_used(out);
  }
  // Dead nodes are dead-code removal's job; evaluating them would be wasted work.
  if (!used) return false;
  try {
    return ConverterRegistry::instance().find(node, settings) != nullptr;
  } catch (const std::exception&) {
    return false;  // a validator that throws on odd arguments rejects the node
  }
}

// Evaluates `node` and returns one buffer per output; throws Error when conversion, building
// or execution fails.
std::vector<ConstantData> evaluate(const Graph& g, Node* node, const CompileSettings& settings,
                                   size_t max_bytes) {
  Segment segment;
  segment.engine = true;
  segment.nodes = {node};
  segment.outputs = node->outputs();
  const engine::Network net = convert_segment(g, segment, settings);

  engine::BuilderConfig config;
  config.backend = "cpu";
  config.optimization_level = 0;  // one node: build time matters, speed does not
  config.max_folded_constant_bytes = static_cast<int64_t>(max_bytes);
  const std::vector<uint8_t> plan = engine::Builder(config).build(net);
  const auto engine = engine::Runtime().deserialize(plan.data(), plan.size());
  auto context = engine->create_execution_context();

  std::vector<ConstantData> results;
  for (size_t i = 0; i < node->outputs().size(); ++i) {
    const Value* v = node->output(i);
    const std::string name = "output_" + std::to_string(i);
    const engine::DataType want = *to_engine_dtype(v->dtype());
    // The converter could produce another dtype (i32 for i64, say); the constant must hold
    // exactly the IR type's bytes.
    if (engine->io_tensor(name).dtype != want) {
      throw Error("folding " + node->describe() + ": engine output " + name + " is " +
                  engine::dtype_name(engine->io_tensor(name).dtype) + ", the IR value is " +
                  scalar_type_name(v->dtype()));
    }
    const size_t bytes = foldable_bytes(v);
    auto buffer = std::make_shared<std::vector<uint8_t>>(bytes);
    context->set_tensor_address(name, buffer->data(), want);
    results.push_back(ConstantData{std::shared_ptr<const void>(buffer, buffer->data()), bytes});
  }
  context->execute();
  return results;
}

}  // namespace

int lower_fold_constants(Graph& g, const CompileSettings& settings, size_t max_bytes) {
  // Folding runs on the CPU whatever the target, and keeps i64 as i64: the folded constant
  // has to hold the IR type exactly.
  CompileSettings fold_settings = settings;
  fold_settings.backend = "cpu";
  fold_settings.truncate_double = false;

  int folded = 0;
  // Topological order lets a node fold on constants that folding just made.
  for (Node* node : g.nodes()) {
    if (!can_fold(g, *node, fold_settings, max_bytes)) continue;
    std::vector<ConstantData> data;
    try {
      data = evaluate(g, node, fold_settings, max_bytes);
    } catch (const std::exception&) {
      continue;  // the node stays; partitioning and conversion see it as usual
    }
    for (size_t i = 0; i < data.size(); ++i) {
      Value* out = node->output(i);
      Value* c = g.add_constant(g.fresh_name("fold"), out->dtype(), out->shape(), data[i]);
      g.replace_all_uses(out, c);
    }
    g.remove_node(node);
    ++folded;
  }
  return folded;
}

}  // namespace ember::compiler
