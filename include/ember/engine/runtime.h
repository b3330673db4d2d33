// The runtime: plans become Engines (immutable, shared by threads), and Engines make
// ExecutionContexts (one per thread or stream) that bind shapes and addresses and execute.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/timing_cache.h"
#include "ember/engine/types.h"

namespace ember::engine {

class ExecutionContext;
struct PlanModel;

/// Where the CUDA back end gets its device memory: the engine's weights, each context's
/// activation arena and its library workspace (TensorRT's IGpuAllocator). Without one, Ember
/// calls cudaMalloc/cudaFree. Ember synchronizes the stream that last used a block before it
/// deallocates it, so an allocator need not track streams. The PyTorch bridge installs one
/// that draws from PyTorch's caching allocator, so Ember's memory shows in
/// torch.cuda.memory_allocated() and returns to PyTorch's pool when a context is released.
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  /// `bytes` (> 0) of device memory on the current device, aligned to at least 256 bytes.
  /// Throws (any std::exception) when it cannot; Ember adds what the memory was for.
  virtual void* allocate(size_t bytes) = 0;
  /// Gives back memory returned by allocate. Must not throw.
  virtual void deallocate(void* ptr) noexcept = 0;
};

/// One input or output of an engine.
struct IOTensorInfo {
  std::string name;
  DataType dtype = DataType::kF32;
  Shape shape;          ///< Symbolic shape.
  bool is_input = true;
};

/// A deserialized plan. Immutable: any number of threads may create contexts from one Engine.
class Engine : public std::enable_shared_from_this<Engine> {
 public:
  ~Engine();
  /// Inputs first (in network order), then outputs.
  const std::vector<IOTensorInfo>& io_tensors() const { return io_; }
  /// The I/O tensor called `name`; throws Error listing the valid names when there is none.
  const IOTensorInfo& io_tensor(const std::string& name) const;
  /// The back end this plan was built for ("cpu", "cuda").
  const std::string& backend() const;
  /// Symbol ranges of profile `index`.
  std::map<std::string, Interval, std::less<>> profile_ranges(size_t index = 0) const;
  size_t num_profiles() const;
  /// Bytes of activation memory one context needs.
  int64_t arena_bytes() const;
  /// Per-layer information as JSON: name, type, implementation, input/output names, dtypes and
  /// (symbolic) shapes, parameters, and the layer's least work ("flops" of its products and
  /// "bytes" it must move; null where a shape is symbolic), summed at the top level.
  std::string inspect_json() const;
  /// A new context. Contexts are independent; each owns its activation memory.
  std::unique_ptr<ExecutionContext> create_execution_context() const;

  /// The engine's timing cache, shared by its contexts: seeded from the plan's timing section,
  /// and filled by the first (layer-by-layer) call of each problem the plan did not cover (a
  /// plan built without a GPU, or on another GPU or library version).
  TimingCache& timing_cache() const { return *timing_; }

  /// The plan (engine-internal).
  const PlanModel& plan() const { return *plan_; }
  /// Where device memory comes from (engine-internal; nullptr: cudaMalloc).
  const std::shared_ptr<DeviceAllocator>& device_allocator() const { return allocator_; }
  /// State a back end shares between the engine's contexts (the CUDA back end's device
  /// weights), made by `make` on the first call and kept for the engine's life
  /// (engine-internal; thread-safe).
  template <class Make>
  std::shared_ptr<void> shared_backend_state(Make make) const {
    std::lock_guard<std::mutex> lock(backend_state_mutex_);
    if (!backend_state_) backend_state_ = make();
    return backend_state_;
  }

 private:
  friend class Runtime;
  friend class ExecutionContext;
  Engine() = default;
  std::unique_ptr<PlanModel> plan_;
  std::vector<IOTensorInfo> io_;
  std::shared_ptr<DeviceAllocator> allocator_;  // nullptr: cudaMalloc
  std::shared_ptr<TimingCache> timing_ = std::make_shared<TimingCache>();
  mutable std::mutex backend_state_mutex_;
  mutable std::shared_ptr<void> backend_state_;
};

/// The plan format version this build writes and reads: part of every cache key that stores
/// plans (python/ember/_engine_cache.py), so a format change never loads an old entry.
uint32_t plan_format_version();

/// Deserializes plans.
class Runtime {
 public:
  /// Validates and loads a plan. Throws Error ("plan: ...") for a truncated, corrupted,
  /// wrong-version or wrong-back-end plan; never crashes on bad bytes.
  std::shared_ptr<const Engine> deserialize(const void* data, size_t size) const;
  /// Reads a plan file; errors name the path.
  std::shared_ptr<const Engine> deserialize_file(const std::string& path) const;
  /// The device memory source of the engines this runtime deserializes from now on ("cuda"
  /// plans; nullptr, the default, means cudaMalloc). Engines keep it alive.
  void set_device_allocator(std::shared_ptr<DeviceAllocator> allocator) {
    allocator_ = std::move(allocator);
  }

 private:
  std::shared_ptr<DeviceAllocator> allocator_;
};

/// Per-thread execution state: input shapes, tensor addresses and activation memory.
class ExecutionContext {
 public:
  ~ExecutionContext();
  /// Selects the optimization profile that input shapes are checked against (default 0).
  void set_optimization_profile(size_t index);
  /// Sets the concrete shape of input `name`. Throws Error naming the input, the dim and the
  /// profile range when the shape is outside the profile, or the rank is wrong.
  void set_input_shape(const std::string& name, const std::vector<int64_t>& dims);
  /// The concrete shape of any I/O tensor once every input shape is set.
  std::vector<int64_t> tensor_shape(const std::string& name);
  /// Sets the memory of an input or output (host memory for "cpu", device memory for "cuda").
  void set_tensor_address(const std::string& name, void* data);
  /// As above, and checks that the caller's buffer holds `dtype` (throws Error on a mismatch,
  /// naming the tensor and both dtypes). Bridges that know their buffers' types use this form.
  void set_tensor_address(const std::string& name, void* data, DataType dtype);
  /// Runs synchronously. Throws Error when an input shape or an address is missing.
  void execute();
  /// Enqueues on `stream` (a cudaStream_t for "cuda"; the CPU back end runs synchronously).
  /// "cuda" contexts replay a CUDA graph per shape signature from the second call of a
  /// signature on (see set_cuda_graphs).
  void enqueue(void* stream);
  /// CUDA graphs on (the default) or off for this context. With graphs on, the first call of a
  /// shape signature runs layer by layer (it also times and caches library algorithms); the
  /// second captures the layers once into a graph, and later calls replay it, so the launch
  /// cost is paid once. Replays do not depend on the caller's addresses: the graph of a
  /// signature reads and writes the context's own I/O buffers, and a replay copies the inputs in
  /// and the outputs out (a serving loop with new input tensors and kept outputs replays; it
  /// never captures again). When a call passes the same addresses as the call before it, a
  /// second graph is captured on those addresses and replayed without copies whenever they come
  /// again. A plan with a layer that cannot be captured (host fallback), or a context that keeps
  /// capturing for ever new shape signatures, runs layer by layer from then on, with the reason
  /// in cuda_graph_stats(); so does a call on a stream that is itself being captured (the
  /// layers join the caller's graph). Data-dependent checks that read a result back (an index
  /// out of range, an integer division by zero) run on the first call of each shape only:
  /// replays clamp such indices instead of failing. Turning graphs on again clears a failure.
  /// No effect on "cpu" plans.
  void set_cuda_graphs(bool enabled);
  /// Graph statistics of this context.
  struct GraphStats {
    int64_t replays = 0;         ///< Launches served by a replay (staged or zero-copy).
    int64_t staged_replays = 0;  ///< Replays that copied I/O through the context's buffers.
    int64_t captures = 0;        ///< Graphs captured.
    bool disabled = false;       ///< Off by setting, or because capture failed or kept missing.
    std::string reason;          ///< Why disabled ("" when graphs are on).
  };
  GraphStats cuda_graph_stats() const;
  /// The reason graphs were switched off for this context by a failure (not by the setting),
  /// the first time it is asked after that happened; "" otherwise. Embedders call it after each
  /// run to say so once (the PyTorch bridge raises a warning).
  std::string take_cuda_graph_warning();
  /// Slow paths this context took since the last call, one message each, said once per
  /// context: today the CPU back end's layers that oneDNN refused, run by the reference kernels
  /// instead (the layer and oneDNN's reason). Embedders call it after each run to report them
  /// (the PyTorch bridge raises a warning per message, once per engine).
  std::vector<std::string> take_warnings();

 private:
  friend class Engine;
  explicit ExecutionContext(std::shared_ptr<const Engine> engine);
  void prepare();  // binds symbols and evaluates shapes for a new shape signature
  void run(void* stream);  // prepare, check addresses, run/enqueue every layer
  struct State;
  std::shared_ptr<const Engine> engine_;
  std::unique_ptr<State> state_;
};

/// Where an embedder's run-time warnings go (ExecutionContext::take_warnings messages the
/// PyTorch bridge raises): the Python extension installs one that writes to the "ember"
/// logger; nullptr removes it. Process-wide; the sink may be called from any thread.
void set_warning_sink(std::function<void(const std::string&)> sink);

/// Gives `message` to the installed warning sink and returns true; false when none is
/// installed (the caller then reports it its own way, e.g. c10::warn in a C++ program).
bool emit_warning(const std::string& message);

}  // namespace ember::engine
