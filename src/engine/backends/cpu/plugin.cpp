// Plugin layers on the CPU back end: the plugin's enqueue on host buffers, synchronously.
#include "backends/cpu/kernels.h"
#include "ember/engine/plugin.h"

namespace ember::engine::cpu {

namespace {

// A plugin's workspace, kept in the context's kernel cache between calls.
struct Workspace final : KernelCache::Entry {
  std::vector<uint8_t> bytes;
};

PluginTensor plugin_tensor(const HostTensor& t) { return {t.data, t.dtype, t.dims}; }

}  // namespace

void run(const PluginParams& p, const KernelArgs& a) {
  const std::string who = "plugin '" + p.creator + "' version '" + p.version + "'";
  if (!p.plugin) throw Error(who + " has no instance");
  std::vector<PluginTensor> ins;
  std::vector<PluginTensor> outs;
  for (const HostTensor* t : a.inputs) ins.push_back(plugin_tensor(*t));
  for (const HostTensor* t : a.outputs) outs.push_back(plugin_tensor(*t));
  PluginRunContext ctx;
  ctx.backend = "cpu";
  try {
    const size_t ws_bytes = p.plugin->workspace_size(ins, outs);
    std::vector<uint8_t> local;
    std::vector<uint8_t>* ws = &local;
    if (ws_bytes > 0 && a.cache != nullptr && a.layer != nullptr) {
      auto& entry = a.cache->entries[{a.layer, "plugin.workspace"}];
      if (!entry) entry = std::make_unique<Workspace>();
      ws = &static_cast<Workspace&>(*entry).bytes;
    }
    if (ws->size() < ws_bytes) ws->resize(ws_bytes);
    ctx.workspace = ws_bytes > 0 ? ws->data() : nullptr;
    ctx.workspace_bytes = ws_bytes;
    p.plugin->enqueue(ins, outs, ctx);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(who + ": " + e.what());
  }
}

}  // namespace ember::engine::cpu
