// Shape and type inference of Plugin layers: the plugin reports its outputs (plugin.h).
#include "ember/engine/plugin.h"
#include "network/infer.h"

namespace ember::engine {

void infer(const PluginParams& p, InferContext& ctx) {
  const std::string who = "plugin '" + p.creator + "' version '" + p.version + "'";
  InferContext::require(p.plugin != nullptr, who + " has no instance (add it with "
                                                   "Network::add_plugin or add_layer)");
  std::vector<PluginTensorDesc> ins;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    InferContext::require(ctx.has(i), "input " + std::to_string(i) +
                                          " is missing (plugin inputs are never optional)");
    ins.push_back({ctx.dtype(i), ctx.shape(i)});
  }
  std::vector<PluginTensorDesc> outs;
  try {
    outs = p.plugin->infer_outputs(ins);
  } catch (const std::exception& e) {
    throw Error(who + ": " + e.what());
  }
  InferContext::require(!outs.empty(), who + " reported no outputs (a plugin has at least one)");
  for (PluginTensorDesc& o : outs) ctx.add_output(o.dtype, std::move(o.shape));
}

}  // namespace ember::engine
