// The process-wide plugin registry (plugin.h) and the loader of plugin libraries. It lives in
// libember.so, the one copy of the engine in a process, so creators registered by a library that
// Python loaded are seen by the runtime inside libember_torch.so and by ember._C alike.
#include <dlfcn.h>

#include <map>
#include <mutex>
#include <set>

#include "ember/engine/plugin.h"

namespace ember::engine {

namespace {

constexpr size_t kMaxPluginNameBytes = 256;

struct Registry {
  std::mutex mutex;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<const PluginCreator>> creators;
  std::set<std::string> loaded_paths;
};

Registry& registry() {
  // Never destroyed: static initializers of plugin libraries may register before this object
  // would be constructed, and creators may be looked up while other statics are torn down.
  static Registry* r = new Registry();
  return *r;
}

}  // namespace

void register_plugin_creator(std::shared_ptr<const PluginCreator> creator, bool replace) {
  if (!creator) throw Error("register_plugin_creator: the creator is null");
  const std::string name = creator->name();
  const std::string version = creator->version();
  if (name.empty() || name.size() > kMaxPluginNameBytes || version.empty() ||
      version.size() > kMaxPluginNameBytes) {
    throw Error("register_plugin_creator: plugin name '" + name + "' and version '" + version +
                "' must be non-empty and at most 256 bytes");
  }
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto key = std::make_pair(name, version);
  if (!replace && r.creators.count(key) != 0) {
    throw Error("register_plugin_creator: a creator of plugin '" + name + "' version '" +
                version + "' is already registered (pass replace=true to replace it)");
  }
  r.creators[key] = std::move(creator);
}

bool deregister_plugin_creator(const std::string& name, const std::string& version) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.creators.erase({name, version}) != 0;
}

std::shared_ptr<const PluginCreator> find_plugin_creator(const std::string& name,
                                                         const std::string& version) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.creators.find({name, version});
  return it == r.creators.end() ? nullptr : it->second;
}

std::vector<std::pair<std::string, std::string>> plugin_creators() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [key, creator] : r.creators) out.push_back(key);
  return out;
}

std::shared_ptr<const Plugin> create_plugin(const std::string& name, const std::string& version,
                                            const std::vector<uint8_t>& attributes) {
  const std::shared_ptr<const PluginCreator> creator = find_plugin_creator(name, version);
  if (!creator) {
    std::string others;
    for (const auto& [n, v] : plugin_creators()) {
      if (n == name) others += (others.empty() ? "" : ", ") + v;
    }
    throw Error(
        "plugin '" + name + "' version '" + version + "' is not registered in this process" +
        (others.empty() ? std::string() : " (registered versions of it: " + others + ")") +
        ". Register it before building or loading: load the library that defines it "
        "(ember.load_plugins(path) in Python; ember::engine::load_library(path) or linking the "
        "library in C++); for a PyTorch custom op, define the op (import the module that "
        "registers it with torch.library) and call ember.dynamo.plugin(op)");
  }
  std::shared_ptr<const Plugin> plugin;
  try {
    plugin = creator->create(attributes);
  } catch (const std::exception& e) {
    throw Error("plugin '" + name + "' version '" + version + "' rejected its attributes (" +
                std::to_string(attributes.size()) + " bytes): " + e.what());
  }
  if (!plugin) {
    throw Error("plugin '" + name + "' version '" + version + "': its creator returned null");
  }
  return plugin;
}

void load_library(const std::string& path) {
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    if (r.loaded_paths.count(path) != 0) return;
  }
  // RTLD_GLOBAL: the library's symbols (a custom op's, a converter's) resolve for libraries
  // loaded after it. Its static initializers register its creators (they take the lock).
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* err = dlerror();
    throw Error("load_library('" + path + "'): " + (err ? err : "dlopen failed") +
                " (build the library against libember.so and pass its full path)");
  }
  std::lock_guard<std::mutex> lock(r.mutex);
  r.loaded_paths.insert(path);
}

}  // namespace ember::engine
