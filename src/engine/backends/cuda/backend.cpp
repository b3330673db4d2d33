// The CUDA back end behind the Backend interface: per-context device state (arena, library
// handles, CUDA graphs, see executor.cpp), the engine's weights uploaded once and shared by its
// contexts, and the builder's tactic timing.
#include <algorithm>
#include <mutex>

#include "backends/backend.h"
#include "backends/codegen/pointwise_codegen.h"
#include "backends/cuda/attention_cudnn.h"
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/lt_algo.h"
#include "builder/passes/passes.h"
#include "ember/engine/plugin.h"
#include "plan/plan.h"

namespace ember::engine {

namespace {

using cuda::check;

class CudaContext final : public BackendContext {
 public:
  explicit CudaContext(const Engine& engine) {
    const PlanModel& p = engine.plan();
    // Refuse a GPU that cannot run the plan before anything is uploaded or launched.
    cuda::check_device_for_plan(p.target);
    weights_ = engine.shared_backend_state([&engine, &p]() -> std::shared_ptr<void> {
      return std::make_shared<cuda::DeviceWeights>(p.network, engine.device_allocator());
    });
    state_ = std::make_unique<cuda::ContextState>(p.arena_bytes, engine.device_allocator(),
                                                  &engine.timing_cache());
    for (const Tensor* t : p.network.inputs()) io_ids_.push_back(t->id());
    for (const Tensor* t : p.network.outputs()) io_ids_.push_back(t->id());
    num_inputs_ = p.network.inputs().size();
    for (const std::string& impl : p.impls) {
      if (impl.rfind("cuda.host", 0) == 0) {
        capturable_ = false;
        not_capturable_ = "the plan has a layer that runs through the host fallback (cuda.host), "
                          "which synchronizes and cannot be captured";
      }
    }
    // A plugin whose enqueue may not be captured keeps the whole plan layer by layer.
    for (const Layer* l : p.network.layers()) {
      if (l->kind() != LayerKind::kPlugin) continue;
      const PluginParams& pp = l->params_as<PluginParams>();
      if (!pp.plugin->supports_cuda_graphs() && capturable_) {
        capturable_ = false;
        not_capturable_ = l->describe() + " (plugin '" + pp.creator + "' version '" + pp.version +
                          "') does not support CUDA graphs (its supports_cuda_graphs says no)";
      }
    }
  }

  uint8_t* arena() override { return state_->arena(); }
  void* constant_address(const Tensor& t) override { return weights().address(t.id()); }

  void run(const RunRequest& r, void* stream) override {
    cuda::enqueue_network(*r.net, *r.dims, *r.addrs, r.symbols, weights(), *state_,
                          static_cast<cudaStream_t>(stream), *r.signature, io_ids_, num_inputs_,
                          capturable_ ? std::string() : not_capturable_);
  }

  void synchronize(void* stream) override {
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)),
          "cudaStreamSynchronize (execute)");
  }

  void set_cuda_graphs(bool enabled) override {
    cuda::GraphCache& g = state_->graphs();
    g.enabled = enabled;
    g.clear();
    // Turning graphs on again starts afresh: a capture that failed is tried again.
    g.disabled_reason.clear();
    g.reported = false;
    g.window_captures = g.window_replays = 0;
    g.no_zero_copy.clear();
  }

  ExecutionContext::GraphStats cuda_graph_stats() const override {
    const cuda::GraphCache& g = state_->graphs();
    ExecutionContext::GraphStats st;
    st.replays = g.replays;
    st.staged_replays = g.staged_replays;
    st.captures = g.captures;
    st.disabled = !g.enabled || !g.disabled_reason.empty() || !capturable_;
    if (!g.enabled) {
      st.reason = "CUDA graphs are off for this context (cuda_graphs=False)";
    } else if (!g.disabled_reason.empty()) {
      st.reason = g.disabled_reason;
    } else if (!capturable_) {
      st.reason = not_capturable_;
    }
    return st;
  }

  std::string take_cuda_graph_warning() override {
    cuda::GraphCache& g = state_->graphs();
    if (g.enabled && !g.disabled_reason.empty() && !g.reported) {
      g.reported = true;
      return g.disabled_reason;
    }
    return {};
  }

  std::vector<std::string> take_warnings() override {
    return state_->resources().take_warnings();
  }

 private:
  const cuda::DeviceWeights& weights() const {
    return *static_cast<const cuda::DeviceWeights*>(weights_.get());
  }

  std::shared_ptr<void> weights_;  // the engine's cuda::DeviceWeights, shared by its contexts
  std::unique_ptr<cuda::ContextState> state_;
  std::vector<int> io_ids_;  // tensor ids of the inputs, then the outputs
  size_t num_inputs_ = 0;
  bool capturable_ = true;   // no layer runs through the host fallback or blocks capture
  std::string not_capturable_;  // why not, when !capturable_
};

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

bool has_timed_layers(const Network& net) {
  for (const Layer* l : net.layers()) {
    const LayerKind k = l->kind();
    // Quantized products and convolutions time their cuBLASLt algorithm too (lt_algo.h).
    if (k == LayerKind::kMatrixMultiply || k == LayerKind::kConvolution ||
        k == LayerKind::kDeconvolution || k == LayerKind::kQuantizedMatrixMultiply ||
        k == LayerKind::kQuantizedConvolution) {
      return true;
    }
    if (k == LayerKind::kPlugin && l->params_as<PluginParams>().plugin->num_tactics("cuda") > 1) {
      return true;  // the plugin's tactics are timed like library algorithms
    }
    // f16/bf16 attention: cuDNN's SDPA against Ember's kernel (attention_cudnn.h).
    if (k == LayerKind::kAttention && l->output(0)->dtype() != DataType::kF32 &&
        cuda::cudnn_attention_enabled()) {
      return true;
    }
  }
  return false;
}

class CudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda"; }

  std::string implementation(const Layer& layer) const override {
    // Kinds without a device kernel run through the host fallback, which synchronizes: the
    // runtime never captures such plans into CUDA graphs.
    std::string impl = std::string(cuda::has_device_kernel(layer.kind()) ? "cuda." : "cuda.host.") +
                       layer_kind_name(layer.kind());
    if (!degradation(layer).empty()) impl += ".direct";
    return impl;
  }

  std::string degradation(const Layer& layer) const override {
    if (layer.kind() == LayerKind::kQuantizedConvolution) {
      return cuda::qconv_direct_reason(layer.params_as<QuantizedConvolutionParams>());
    }
    return {};
  }

  // Measured slower (H100, 2026-12-06, bench/results/2026-12-06-h100-session25.md): at
  // batch 1 the warp-per-row kernel took Qwen2-0.5B from 2.150 to 2.354 ms and T5-small from
  // 1.182 to 1.259 ms against the Reduce layers and the pointwise kernels around them. Off by
  // default until a faster row kernel measures better; EMBER_FUSE_ROW_REDUCTIONS=1 turns it on.
  bool row_reductions_in_generated_kernels() const override { return false; }
  // MobileNetV3 b32 on an H100 (2026-12-06): its 8 squeeze-and-excitation multiplies took
  // 0.157 ms in broadcast2_kernel, about 15% of the bandwidth.
  // EMBER_FUSE_LONE_BROADCASTS=0 (read at build time) leaves them to the ElementWise kernel.
  bool fuse_lone_broadcasts() const override {
    const char* e = std::getenv("EMBER_FUSE_LONE_BROADCASTS");
    return e == nullptr || std::string(e) != "0";
  }
  // cuDNN's tensor-core kernels for 16-bit NHWC convolutions take C in multiples of 8; others
  // run in an indexed kernel without shared-memory staging (ResNet-50's stem, C = 3: 0.194 of
  // 1.247 ms at b32 on an H200, 2026-12-07).
  int64_t conv_channel_multiple(DataType dtype) const override {
    return dtype == DataType::kF16 || dtype == DataType::kBF16 ? 8 : 1;
  }
  bool product_activation_in_kernel(ActivationType type) const override {
    // cuBLASLt's epilogues (linear.cpp); every other activation is a pass after the GEMM.
    return type == ActivationType::kRelu || type == ActivationType::kGeluTanh;
  }

  // The generated kernel's source always goes into the plan; on a machine with a GPU it is
  // compiled here too (NVRTC, for this GPU's architecture), so loading the plan on the same
  // kind of GPU compiles nothing. Without a GPU the source alone is stored and the first run
  // compiles it. An NVRTC failure fails the build with NVRTC's log (never a silent fallback).
  void prepare_fused_pointwise(FusedPointwiseParams& p, const std::vector<DataType>& input_dtypes,
                               std::vector<std::string>* notes) const override {
    p.kernel_source = codegen::pointwise_kernel_source(p, input_dtypes);
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      cudaGetLastError();
      return;
    }
    p.kernel_target = cuda::device_target();
    p.kernel_image = cuda::cached_pointwise_kernel(p.kernel_source, p.kernel_target);
  }

  std::unique_ptr<BackendContext> create_context(const Engine& engine) const override {
    return std::make_unique<CudaContext>(engine);
  }

  // On a machine with a GPU: runs the finished plan once at the first profile's opt shapes so
  // that every matmul and (de)convolution problem is timed, and puts the winning algorithms into
  // the plan's timing section; a deserialized engine starts from them, so its first call times
  // nothing where the GPU and the library versions match. The plan runs through the ordinary
  // runtime (written, read back, executed), so what is timed is exactly what will run. Inputs
  // are zeros: timing does not depend on the values, and zero is a valid index for integer
  // inputs.
  void time_tactics(BuildState& s) const override {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      cudaGetLastError();
      s.log.push_back("time_tactics: skipped (no GPU); the first call of each problem times it");
      return;
    }
    // The tactic settings are read at each timing, and an error inside the run below only
    // stops timing early: a bad value must fail the build here, by name, instead.
    cuda::lt_candidates();
    cuda::lt_search();
    // The plan is built for this GPU: its choices are timed here, and a GPU of a lower compute
    // capability refuses it at load (check_device_for_plan).
    s.plan.target = cuda::device_target();
    if (!has_timed_layers(s.plan.network)) {
      s.log.push_back(
          "time_tactics: no matmul, convolution (float or quantized), f16/bf16 attention or "
          "multi-tactic plugin to time");
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
  }
};

}  // namespace

const Backend& cuda_backend() {
  static const CudaBackend backend;
  return backend;
}

}  // namespace ember::engine
