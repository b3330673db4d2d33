// torch.classes.ember.Engine (TorchBind) and torch.ops.ember.execute_engine: the only code that
// includes libtorch. The state format and its validation live torch-free in engine_state.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <map>
#include <utility>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include "engine_state.h"

namespace ember::bridge {

/// A deserialized plan with its PyTorch-side I/O metadata. Immutable after construction except
/// for the pool of idle execution contexts and the run counter, so one object may be used by
/// many threads at once.
class TorchEngine : public torch::CustomClassHolder {
 public:
  /// Validates and loads a state list [tag, plan base64, metadata JSON]; throws c10::Error
  /// (RuntimeError in Python) saying which part is wrong.
  explicit TorchEngine(std::vector<std::string> state);
  /// The same from a plan's bytes and its metadata JSON (torch.ops.ember.engine_from_plan:
  /// the compiler's way in, without base64 and its copies of the plan).
  TorchEngine(const uint8_t* plan, size_t size, std::string metadata_json);

  /// The state list this engine was made from (pickling and __obj_flatten__ return it).
  const std::vector<std::string>& state() const { return loaded_.state; }
  const EngineMetadata& metadata() const { return loaded_.metadata; }
  const engine::Engine& engine() const { return *loaded_.engine; }
  /// How many times execute() ran to completion.
  int64_t num_runs() const { return num_runs_.load(); }

  /// CUDA graph statistics of every context this engine has run (idle ones and those already
  /// retired from the pool): [replays, captures, contexts that run layer by layer (graphs off,
  /// or a plan that cannot be captured), replays that staged their I/O through the context's
  /// buffers].
  std::vector<int64_t> cuda_graph_stats();
  /// Why contexts run layer by layer, one line per distinct reason ("" when none does).
  std::string cuda_graph_disabled_reasons();
  /// The GPU a cuda engine is bound to (-1 until its first run when the metadata names none).
  int64_t device_index() const { return bound_device_.load(); }
  /// Idle execution contexts held in the pool (each holds its activation memory).
  int64_t pooled_contexts();
  /// Runs the engine: checks count, devices and dtypes of `inputs` against the metadata, casts
  /// them to the engine dtypes, executes, and returns outputs in their PyTorch dtypes.
  std::vector<at::Tensor> execute(const std::vector<at::Tensor>& inputs);

  /// Idle contexts kept per (device, stream); more are freed when released. Enough for a few
  /// threads sharing a stream without creating a context per call.
  static constexpr size_t kMaxIdlePerStream = 8;
  /// Idle contexts kept in all (a process that ran on many streams does not keep them all).
  static constexpr size_t kMaxIdle = 32;

 private:
  // Contexts are pooled per (device, stream): a context whose work is still queued on a stream
  // is only handed out again on that stream, where stream order makes reusing its arena safe.
  // The device is part of the key because every device's default stream has the same handle.
  using PoolKey = std::pair<int64_t, void*>;
  std::unique_ptr<engine::ExecutionContext> acquire_context(const PoolKey& key);
  void release_context(const PoolKey& key, std::unique_ptr<engine::ExecutionContext> ctx);
  /// The dtype tables and the device type, from loaded_ (both constructors).
  void init_from_loaded();
  /// Adds a retired context's graph statistics to the totals (caller holds mutex_).
  void retire_stats(const engine::ExecutionContext& ctx);

  LoadedEngineState loaded_;
  std::vector<c10::ScalarType> input_torch_types_, input_engine_types_;
  std::vector<c10::ScalarType> output_torch_types_, output_engine_types_;
  c10::DeviceType device_type_ = c10::DeviceType::CPU;
  std::mutex mutex_;  // guards idle_contexts_, idle_count_, retired_, reasons_ and warned_
  std::map<PoolKey, std::vector<std::unique_ptr<engine::ExecutionContext>>> idle_contexts_;
  size_t idle_count_ = 0;
  std::vector<int64_t> retired_{0, 0, 0, 0};  // cuda_graph_stats of contexts freed
  std::vector<std::string> reasons_;          // distinct reasons graphs went off
  std::set<std::string> warned_;  // ExecutionContext::take_warnings messages already raised
  std::atomic<int64_t> bound_device_{-1};
  std::atomic<int64_t> num_runs_{0};
  std::atomic<bool> graph_warning_given_{false};
};

}  // namespace ember::bridge
