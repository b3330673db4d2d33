// Plugins: user code inside engines (the role of TensorRT's IPluginV3).
//
// A plugin is an op the engine does not know, implemented by its author for one or more back
// ends. Its *creator* has a name and a version and is registered once per process in the plugin
// registry (libember.so holds the one registry, whoever links or loads Ember). A network adds a
// Plugin layer with Network::add_plugin(inputs, name, version, attributes): the layer stores the
// creator's name, its version and the plugin's serialized attributes (bytes the creator
// defines), and the plan stores the same three, so a plan runs in any process that registered
// the creator; a plan naming a creator the process lacks fails to load with an error that names
// it and says how to register it.
//
// At build time the plugin reports its output dtypes and symbolic shapes (infer_outputs), whether
// it runs on the build's back end, and how many tactics (alternative implementations) it has on
// it: on the CUDA back end the builder times every tactic on the GPU and keeps the fastest in the
// plan's timing section. The builder treats plugin layers as opaque: nothing is fused into or
// across them, and their outputs get arena slots like any layer's. At run time enqueue gets the
// buffers (host pointers on the "cpu" back end, device pointers on "cuda"), their concrete
// shapes, a workspace of the size the plugin asked for, the chosen tactic and the stream.
//
// A plugin library registers its creators from a static initializer (EMBER_REGISTER_PLUGIN) and
// is loaded with ember.load_plugins(path) from Python or load_library(path) (or by linking it)
// from C++. examples/plugin/ is a complete one; docs/extending.md has the recipe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/types.h"

namespace ember::engine {

/// The dtype and symbolic shape of a plugin input or output at build time.
struct PluginTensorDesc {
  DataType dtype = DataType::kF32;
  Shape shape;
};

/// One buffer of a plugin call: dense, row-major, of the layer's dtype and its concrete dims.
struct PluginTensor {
  /// Host memory on the "cpu" back end, device memory on "cuda". Inputs are read-only.
  void* data = nullptr;
  DataType dtype = DataType::kF32;
  std::vector<int64_t> dims;
  /// Number of elements (1 for rank 0).
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  /// Bytes of the buffer.
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

/// What a plugin's enqueue runs with besides its buffers.
struct PluginRunContext {
  /// The back end running the plan: "cpu" or "cuda".
  std::string backend;
  /// The stream to enqueue on (a cudaStream_t on "cuda"; nullptr on "cpu", where enqueue runs
  /// synchronously). Work on other streams must be joined back to it before enqueue returns.
  void* stream = nullptr;
  /// Scratch of at least workspace_size() bytes (device memory on "cuda"), or nullptr when the
  /// plugin asked for none. Valid for this call only.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  /// The tactic to run, in [0, num_tactics(backend)): the builder's choice on "cuda" (timed on
  /// the GPU), 0 elsewhere.
  int tactic = 0;
  /// True while the CUDA stream is being captured into a CUDA graph (only when the plugin says
  /// supports_cuda_graphs()): no synchronization, no host reads of device data, no allocation
  /// outside the workspace.
  bool capturing = false;
};

/// One plugin instance: a creator's plugin with its attributes. Immutable once created and shared
/// by every engine and execution context that uses the layer, so its const methods must be
/// thread-safe. Errors are thrown as ember::engine::Error (or any std::exception), which the
/// engine prefixes with the layer's name.
class Plugin {
 public:
  virtual ~Plugin() = default;

  /// The output dtypes and symbolic shapes for inputs of these dtypes and shapes. Shapes are
  /// DimExprs over the network's symbols (see dim.h): an output dim may be an input dim or an
  /// expression of them. Throw Error when the inputs do not fit (a wrong count, dtype or rank).
  virtual std::vector<PluginTensorDesc> infer_outputs(
      const std::vector<PluginTensorDesc>& inputs) const = 0;

  /// Whether this plugin runs on back end `backend` ("cpu", "cuda"). A build for a back end the
  /// plugin does not support fails, naming the layer and the plugin.
  virtual bool supports_backend(const std::string& backend) const { return backend == "cpu"; }

  /// How many tactics (alternative implementations, e.g. kernel variants) the plugin has on
  /// `backend`. On "cuda" the builder times each on the GPU when there is more than one.
  virtual int num_tactics(const std::string& backend) const { return 1; }

  /// Scratch bytes one call needs for these concrete inputs and outputs (0: none). Asked once per
  /// shape signature, before the first call with it.
  virtual size_t workspace_size(const std::vector<PluginTensor>& inputs,
                                const std::vector<PluginTensor>& outputs) const {
    return 0;
  }

  /// Whether enqueue may be captured into a CUDA graph and replayed: it only launches work on
  /// the given stream (no synchronization, no host reads of device data, no allocation) and
  /// reads no host state that changes between calls. When false, a "cuda" context with this
  /// plugin runs layer by layer (cuda_graph_stats says why).
  virtual bool supports_cuda_graphs() const { return false; }

  /// Computes the outputs from the inputs. Buffers are dense and row-major; outputs are never
  /// aliased with inputs.
  virtual void enqueue(const std::vector<PluginTensor>& inputs,
                       const std::vector<PluginTensor>& outputs,
                       const PluginRunContext& context) const = 0;
};

/// Makes plugins of one name and version from their serialized attributes.
class PluginCreator {
 public:
  virtual ~PluginCreator() = default;
  /// The name plans record, e.g. "example::soft_clip". Non-empty, at most 256 bytes.
  virtual std::string name() const = 0;
  /// The version plans record, e.g. "1". A plan needs a creator of exactly its version.
  virtual std::string version() const = 0;
  /// A plugin for `attributes` (the bytes Network::add_plugin was given; the creator defines
  /// their format). Throw Error when they are malformed: a plan with bad attributes must fail to
  /// load rather than crash.
  virtual std::shared_ptr<const Plugin> create(const std::vector<uint8_t>& attributes) const = 0;
};

/// Registers `creator` under its name and version, process-wide. Registering a second creator
/// of the same name and version replaces the first when `replace`, else throws Error.
void register_plugin_creator(std::shared_ptr<const PluginCreator> creator, bool replace = false);

/// Removes the creator of `name` and `version`; false when there was none.
bool deregister_plugin_creator(const std::string& name, const std::string& version);

/// The creator of `name` and `version`, or nullptr.
std::shared_ptr<const PluginCreator> find_plugin_creator(const std::string& name,
                                                         const std::string& version);

/// (name, version) of every registered creator, sorted.
std::vector<std::pair<std::string, std::string>> plugin_creators();

/// The plugin for a Plugin layer's name, version and attributes. Throws Error naming the
/// plugin, the versions that are registered under its name (if any) and how to register it,
/// when there is no such creator; or the creator's message when the attributes are rejected.
std::shared_ptr<const Plugin> create_plugin(const std::string& name, const std::string& version,
                                            const std::vector<uint8_t>& attributes);

/// Loads a shared library (dlopen, RTLD_NOW | RTLD_GLOBAL) so that its static initializers
/// register its plugin creators (and converters). Loading the same path again does nothing.
/// Throws Error with the loader's message when it cannot be loaded.
void load_library(const std::string& path);

/// Registers a creator from a static initializer: `static PluginRegistration r(make_creator());`
/// (EMBER_REGISTER_PLUGIN writes it for a default-constructible creator class).
class PluginRegistration {
 public:
  /// Registers `creator`, replacing a creator of the same name and version (a library loaded
  /// again under another path re-registers its creators).
  explicit PluginRegistration(std::shared_ptr<const PluginCreator> creator) {
    register_plugin_creator(std::move(creator), /*replace=*/true);
  }
};

}  // namespace ember::engine

/// Registers `CreatorClass` (a default-constructible PluginCreator) when the library that holds
/// this line is loaded.
#define EMBER_REGISTER_PLUGIN(CreatorClass)                                         \
  static const ::ember::engine::PluginRegistration ember_plugin_registration_##CreatorClass( \
      std::make_shared<CreatorClass>())
