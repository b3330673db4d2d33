// Segment -> engine::Network (through the converter registry) -> plan (through the Builder).
#include <chrono>
#include <algorithm>
#include <set>

#include "ember/compiler/compile.h"
#include "ember/compiler/conversion.h"
#include "ember/engine/builder.h"

namespace ember::compiler {

namespace {

// Engine inputs take plain symbols or constants per dim: the runtime binds symbols from input
// shapes and cannot solve "2*s0 = 6". A dim that is an expression gets a fresh symbol, whose
// range is the expression's range over the graph's symbols.
struct InputShapes {
  std::vector<Shape> shapes;
  std::vector<std::pair<std::string, SymbolRange>> extra_symbols;
};

InputShapes engine_input_shapes(const Graph& g, const std::vector<Value*>& inputs) {
  engine::SymbolRanges ranges;
  engine::SymbolBindings opt;
  for (const auto& [name, r] : g.symbols()) {
    ranges[name] = engine::Interval{r.min, r.max};
    opt[name] = r.opt;
  }
  InputShapes out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Shape s = inputs[i]->shape();
    for (size_t d = 0; d < s.size(); ++d) {
      if (s[d].is_constant() || s[d].is_symbol()) continue;
      const std::string sym = "in" + std::to_string(i) + "_d" + std::to_string(d);
      const engine::Interval b = s[d].bounds(ranges);
      const int64_t o = s[d].evaluate(opt);
      out.extra_symbols.push_back({sym, SymbolRange{b.lo, o, b.hi}});
      s[d] = DimExpr::symbol(sym);
    }
    out.shapes.push_back(std::move(s));
  }
  return out;
}

EngineIO make_io(const std::string& name, const Value* v, const engine::Tensor* t) {
  return EngineIO{name, v->name(), v->fx_name(), v->torch_dtype(), t->dtype(),
                  engine::shape_to_string(t->shape())};
}

struct Converted {
  engine::Network net;
  std::vector<EngineIO> inputs;
  std::vector<EngineIO> outputs;
  std::vector<std::pair<std::string, SymbolRange>> extra_symbols;
};

Converted convert(const Graph& g, const Segment& segment, const CompileSettings& settings) {
  Converted c;
  ConversionContext ctx(c.net, settings);
  const InputShapes shapes = engine_input_shapes(g, segment.inputs);
  c.extra_symbols = shapes.extra_symbols;
  for (size_t i = 0; i < segment.inputs.size(); ++i) {
    const Value* v = segment.inputs[i];
    // Named after the PyTorch value, so run-time errors (a shape outside the profile) name the
    // tensor the user knows.
    const std::string name = v->fx_name().empty() ? "input_" + std::to_string(i) : v->fx_name();
    engine::Tensor* t = c.net.add_input(name, ctx.engine_dtype(v->dtype()), shapes.shapes[i]);
    ctx.bind(v, t);
    c.inputs.push_back(make_io(name, v, t));
  }
  auto& registry = ConverterRegistry::instance();
  for (const Node* node : segment.nodes) {
    std::string why;
    const ConverterEntry* entry = registry.find(*node, settings, &why);
    if (entry == nullptr) throw Error(node->describe() + " cannot be converted: " + why);
    try {
      entry->convert(ctx, *node);
    } catch (const std::exception& e) {
      throw ConversionError(
          "converting " + node->describe() + " (" + entry->file + "): " + e.what(),
          node->fx_name(), entry->file);
    }
  }
  std::set<const engine::Tensor*> marked;
  for (size_t i = 0; i < segment.outputs.size(); ++i) {
    const Value* v = segment.outputs[i];
    engine::Tensor* t = ctx.tensor(v);
    // Inputs cannot be renamed and one tensor cannot be two outputs: copy through Identity.
    if (t->is_input() || marked.count(t) != 0) t = c.net.add_identity(t)->output();
    marked.insert(t);
    const std::string name = "output_" + std::to_string(i);
    c.net.mark_output(t, name);
    EngineIO io = make_io(name, v, t);
    // A low-precision copy the compiler made of an f32 value (an autocast cast) carries the fx
    // name of the value it copies; PyTorch keeps that node's own tensor, and an engine that
    // reads the copy casts it again at its boundary.
    const Node* p = v->producer();
    if (p != nullptr && p->fx_name().empty() && v->dtype() != v->torch_dtype()) io.fx_name.clear();
    c.outputs.push_back(std::move(io));
  }
  return c;
}

}  // namespace

engine::Network convert_segment(const Graph& g, const Segment& segment,
                                const CompileSettings& settings) {
  return std::move(convert(g, segment, settings).net);
}

SegmentEngine build_segment(const Graph& g, const Segment& segment,
                            const CompileSettings& settings,
                            std::shared_ptr<engine::TimingCache> timing_cache) {
  const auto start = std::chrono::steady_clock::now();
  Converted c = convert(g, segment, settings);

  std::set<std::string> used;
  for (const engine::Tensor* t : c.net.inputs()) {
    for (const DimExpr& d : t->shape()) d.collect_symbols(used);
  }
  engine::OptimizationProfile profile;
  auto add_range = [&](const std::string& name, const SymbolRange& r) {
    if (used.count(name) != 0) profile.set_range(name, r.min, r.opt, r.max);
  };
  for (const auto& [name, r] : g.symbols()) add_range(name, r);
  for (const auto& [name, r] : c.extra_symbols) add_range(name, r);
  for (const std::string& s : used) {
    if (g.find_symbol(s) == nullptr &&
        std::none_of(c.extra_symbols.begin(), c.extra_symbols.end(),
                     [&](const auto& e) { return e.first == s; })) {
      throw Error("segment input uses the symbol '" + s +
                  "' but the graph gives it no range (declare it through an Input range)");
    }
  }

  engine::BuilderConfig config;
  if (!used.empty()) config.profiles.push_back(profile);
  config.optimization_level = settings.optimization_level;
  config.backend = settings.backend;
  config.timing_cache = std::move(timing_cache);
  if (settings.channels_last == "on") {
    config.channels_last = engine::ChannelsLast::kOn;
  } else if (settings.channels_last == "off") {
    config.channels_last = engine::ChannelsLast::kOff;
  } else if (settings.channels_last == "half") {
    config.channels_last = engine::ChannelsLast::kHalf;
  } else if (settings.channels_last != "auto") {
    throw Error("channels_last setting '" + settings.channels_last +
                "' is not one of auto, half, on, off");
  }
  engine::BuildReport report;
  SegmentEngine out;
  out.plan = engine::Builder(config).build(c.net, &report);
  out.inputs = std::move(c.inputs);
  out.outputs = std::move(c.outputs);
  out.build_log = report.pass_log;
  out.build_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace ember::compiler
