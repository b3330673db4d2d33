// torch.classes.ember.Engine (TorchBind) and torch.ops.ember.execute_engine: the only code that
// includes libtorch. The state format and its validation live torch-free in engine_state.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <map>
#include <mutex>
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

  /// The state list this engine was made from (pickling and __obj_flatten__ return it).
  const std::vector<std::string>& state() const { return loaded_.state; }
  const EngineMetadata& metadata() const { return loaded_.metadata; }
  const engine::Engine& engine() const { return *loaded_.engine; }
  /// How many times execute() ran to completion.
  int64_t num_runs() const { return num_runs_.load(); }

  /// Runs the engine: checks count, devices and dtypes of `inputs` against the metadata, casts
  /// them to the engine dtypes, executes, and returns outputs in their PyTorch dtypes.
  /// CUDA graph statistics summed over the idle contexts: [replays, captures, contexts that
  /// run layer by layer (graphs off, or a plan that cannot be captured)].
  std::vector<int64_t> cuda_graph_stats();
  std::vector<at::Tensor> execute(const std::vector<at::Tensor>& inputs);

 private:
  // Contexts are pooled per stream: a context whose work is still queued on a stream is only
  // handed out again on that stream, where stream order makes reusing its arena safe.
  std::unique_ptr<engine::ExecutionContext> acquire_context(void* stream);
  void release_context(void* stream, std::unique_ptr<engine::ExecutionContext> ctx);

  LoadedEngineState loaded_;
  std::vector<c10::ScalarType> input_torch_types_, input_engine_types_;
  std::vector<c10::ScalarType> output_torch_types_, output_engine_types_;
  c10::DeviceType device_type_ = c10::DeviceType::CPU;
  std::mutex mutex_;  // guards idle_contexts_
  std::map<void*, std::vector<std::unique_ptr<engine::ExecutionContext>>> idle_contexts_;
  std::atomic<int64_t> num_runs_{0};
};

}  // namespace ember::bridge
