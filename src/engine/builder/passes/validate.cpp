#include <algorithm>
#include <set>

#include "builder/passes/passes.h"
#include "ember/engine/plugin.h"

namespace ember::engine {

void pass_validate(BuildState& s) {
  const Network& net = s.plan.network;
  const auto backends = available_backends();
  if (std::find(backends.begin(), backends.end(), s.config.backend) == backends.end()) {
    std::string names;
    for (const auto& b : backends) names += (names.empty() ? "" : ", ") + b;
    throw Error("back end '" + s.config.backend + "' is not built into this library (available: " +
                names + ")");
  }
  if (s.config.optimization_level < 0 || s.config.optimization_level > kMaxOptimizationLevel) {
    throw Error("optimization_level must be 0.." + std::to_string(kMaxOptimizationLevel) +
                " (each level adds passes; there is nothing above " +
                std::to_string(kMaxOptimizationLevel) + "), got " +
                std::to_string(s.config.optimization_level));
  }
  if (net.outputs().empty()) {
    throw Error("the network has no outputs: call mark_output on the tensors to return");
  }
  std::set<std::string> names;
  for (const Tensor* t : net.tensors()) {
    if (!names.insert(t->name()).second) throw Error("two tensors are named '" + t->name() + "'");
  }
  for (const Tensor* t : net.outputs()) {
    if (t->is_input()) {
      throw Error("network input '" + t->name() +
                  "' is marked as an output; add an Identity layer to return a copy");
    }
  }
  for (const Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kPlugin) continue;
    const PluginParams& p = l->params_as<PluginParams>();
    if (!p.plugin->supports_backend(s.config.backend)) {
      throw Error(l->describe() + ": plugin '" + p.creator + "' version '" + p.version +
                  "' does not run on back end '" + s.config.backend +
                  "' (its supports_backend says no); build for a back end it supports");
    }
    if (p.plugin->num_tactics(s.config.backend) < 1) {
      throw Error(l->describe() + ": plugin '" + p.creator + "' reports " +
                  std::to_string(p.plugin->num_tactics(s.config.backend)) +
                  " tactics on back end '" + s.config.backend + "' (at least 1)");
    }
  }
  std::set<std::string> symbols;
  for (const Tensor* in : net.inputs()) {
    for (const DimExpr& d : in->shape()) d.collect_symbols(symbols);
  }
  if (s.config.profiles.empty()) {
    if (!symbols.empty()) {
      throw Error("the network has symbolic input dims (" + *symbols.begin() +
                  ", ...) but the config has no optimization profile");
    }
    s.config.profiles.emplace_back();
  }
  for (size_t i = 0; i < s.config.profiles.size(); ++i) {
    try {
      s.config.profiles[i].resolve(net);
    } catch (const Error& e) {
      throw Error("optimization profile " + std::to_string(i) + ": " + e.what());
    }
  }
  s.plan.profiles = s.config.profiles;
  s.log.push_back("validate: " + std::to_string(net.layers().size()) + " layers, " +
                  std::to_string(symbols.size()) + " symbols, " +
                  std::to_string(s.config.profiles.size()) + " profile(s)");
}

}  // namespace ember::engine
