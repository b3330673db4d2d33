// time_tactics: for a "cuda" build on a machine with a GPU, runs the finished plan once at the
// first profile's opt shapes so that every matmul and (de)convolution problem is timed, and puts
// the winning algorithms into the plan's timing section. A deserialized engine starts from
// them, so its first call times nothing where the GPU and the library versions match.
//
// The builder runs the engine through the ordinary runtime (same library: the plan is written,
// read back into an Engine, and executed), so what is timed is exactly what will run. Inputs are
// zeros: timing does not depend on the values, and zero is a valid index for integer inputs.
#include <algorithm>

#include "builder/passes/passes.h"

#include "ember/engine/runtime.h"
#ifdef EMBER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "backends/cuda/cuda_backend.h"
#endif

namespace ember::engine {

namespace {

bool has_timed_layers(const Network& net) {
  for (const Layer* l : net.layers()) {
    const LayerKind k = l->kind();
    if (k == LayerKind::kMatrixMultiply || k == LayerKind::kConvolution ||
        k == LayerKind::kDeconvolution) {
      return true;
    }
  }
  return false;
}

#ifdef EMBER_WITH_CUDA
/// Device buffers freed on scope exit (the build may stop on an error half way).
struct DeviceBuffers {
  std::vector<void*> ptrs;
  void* alloc(size_t bytes) {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess || cudaMemset(p, 0, bytes) != cudaSuccess) {
      cudaGetLastError();
      if (p != nullptr) cudaFree(p);
      throw Error("cannot allocate " + std::to_string(bytes) + " bytes of device memory");
    }
    ptrs.push_back(p);
    return p;
  }
  ~DeviceBuffers() {
    for (void* p : ptrs) cudaFree(p);
  }
};
#endif

}  // namespace

void pass_time_tactics(BuildState& s) {
  if (s.plan.backend != "cuda") return;
#ifdef EMBER_WITH_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    s.log.push_back("time_tactics: skipped (no GPU); the first call of each problem times it");
    return;
  }
  // The plan is built for this GPU: its choices are timed here, and a GPU of a lower compute
  // capability refuses it at load (check_device_for_plan).
  s.plan.target = cuda::device_target();
  if (!has_timed_layers(s.plan.network)) {
    s.log.push_back("time_tactics: no matmul or convolution to time");
    return;
  }
  const std::vector<uint8_t> bytes = plan_write(s.plan);
  const std::shared_ptr<const Engine> engine = Runtime().deserialize(bytes.data(), bytes.size());
  TimingCache& cache = engine->timing_cache();
  if (s.config.timing_cache) cache.insert(s.config.timing_cache->entries());
  std::string stopped;
  try {
    DeviceBuffers buffers;
    auto ctx = engine->create_execution_context();
    ctx->set_cuda_graphs(false);  // one eager run: that is where timing happens
    const SymbolBindings opt =
        s.plan.profiles.empty() ? SymbolBindings{} : s.plan.profiles[0].at_opt();
    for (const IOTensorInfo& io : engine->io_tensors()) {
      if (!io.is_input) continue;
      const std::vector<int64_t> dims = shape_evaluate(io.shape, opt);
      ctx->set_input_shape(io.name, dims);
      ctx->set_tensor_address(
          io.name, buffers.alloc(static_cast<size_t>(dims_numel(dims)) * dtype_size(io.dtype)));
    }
    for (const IOTensorInfo& io : engine->io_tensors()) {
      if (io.is_input) continue;
      const std::vector<int64_t> dims = ctx->tensor_shape(io.name);
      ctx->set_tensor_address(
          io.name, buffers.alloc(static_cast<size_t>(dims_numel(dims)) * dtype_size(io.dtype)));
    }
    ctx->execute();
  } catch (const Error& e) {
    // A data-dependent check can fail on zeros (an integer division); what was timed up to the
    // failing layer is kept, the rest is timed on the engine's first call.
    cudaGetLastError();
    stopped = std::string(", stopped early: ") + e.what();
  }
  s.plan.timing = cache.entries(/*used_only=*/true);
  s.timed_problems = cache.timed_problems();
  if (s.config.timing_cache) {
    for (const TimingEntry& e : s.plan.timing) {
      s.config.timing_cache->store(e.device, e.problem, e.choice);
    }
  }
  const auto problems = static_cast<int64_t>(s.plan.timing.size());
  s.log.push_back("time_tactics: " + std::to_string(problems) + " problems, " +
                  std::to_string(s.timed_problems) + " timed, " +
                  std::to_string(std::max<int64_t>(0, problems - s.timed_problems)) +
                  " from the timing cache" + stopped);
#endif
}

}  // namespace ember::engine
