// The CUDA back end (private to the engine; compiled when EMBER_WITH_CUDA is defined).
//
// Mirrors the CPU back end: one `run(const XParams&, const CudaArgs&)` overload per layer kind,
// dispatched with std::visit so a kind without a case is a compile error. A kind whose device
// kernel does not exist yet says so explicitly by calling host_fallback(), which runs the CPU
// reference kernel on host copies (correct, slow; the inspector shows "cuda.host").
//
// Memory: activations live in one device arena per ExecutionContext (offsets from the builder's
// memory plan); constants are uploaded once per Engine (DeviceWeights); inputs and outputs are
// the caller's device buffers. Everything is enqueued on the context's stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ember/engine/layers.h"
#include "ember/engine/network.h"
#include "ember/engine/runtime.h"
#include "ember/engine/timing_cache.h"
#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// Throws Error naming the call and the CUDA error when `status` is not cudaSuccess.
void check(cudaError_t status, const char* what);

/// The identity a timing-cache choice is valid for on the current device: GPU name, SM count,
/// compute capability, and the CUDA runtime, cuBLASLt and cuDNN versions.
const std::string& timing_device_key();

/// Whether `stream` is being captured into a CUDA graph. Work that must synchronize (cuDNN's
/// Find, data-dependent checks read back to the host) cannot run then: it runs on the eager
/// first call of each shape signature, and captures skip it.
bool capturing(cudaStream_t stream);

/// A dense row-major tensor in device memory.
struct DeviceTensor {
  DataType dtype = DataType::kF32;
  std::vector<int64_t> dims;
  void* data = nullptr;
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

/// A block of device memory from a DeviceAllocator, or from cudaMalloc when there is none.
/// Whoever frees it synchronizes the streams that used it first (cudaFree does so implicitly; a
/// caching allocator would hand the block out again at once).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// `bytes` > 0; errors name `what` (e.g. "activation arena").
  DeviceBuffer(std::shared_ptr<DeviceAllocator> allocator, size_t bytes, const char* what);
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  void* get() const { return ptr_; }
  size_t size() const { return bytes_; }
  void reset() noexcept;

 private:
  std::shared_ptr<DeviceAllocator> allocator_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// Library handles and scratch memory of one context (created on first use).
class Resources {
 public:
  Resources(cudaStream_t stream, std::shared_ptr<DeviceAllocator> allocator,
            TimingCache* timing = nullptr)
      : stream_(stream), allocator_(std::move(allocator)), timing_(timing) {}
  ~Resources();
  Resources(const Resources&) = delete;
  Resources& operator=(const Resources&) = delete;
  cudaStream_t stream() const { return stream_; }
  void set_stream(cudaStream_t s) { stream_ = s; }
  /// Device scratch of at least `bytes`, valid until the next call (stream-ordered reuse).
  void* workspace(size_t bytes);
  /// Increases whenever the workspace moves (captured graphs that point at it are stale).
  uint64_t workspace_generation() const { return workspace_generation_; }
  /// Pinned host staging buffer of at least `bytes` (host fallback).
  void* host_staging(size_t bytes);
  /// cublasLtHandle_t / cudnnHandle_t, created lazily (void* keeps their headers out of here).
  void* cublaslt();
  void* cudnn();
  /// Where device memory comes from (nullptr: cudaMalloc), for other scratch (tactic timing).
  const std::shared_ptr<DeviceAllocator>& allocator() const { return allocator_; }
  /// The engine's timing cache (algorithm choices per problem), or nullptr: then every problem
  /// is chosen afresh and nothing is kept.
  TimingCache* timing_cache() const { return timing_; }

 private:
  cudaStream_t stream_;
  std::shared_ptr<DeviceAllocator> allocator_;
  DeviceBuffer workspace_;
  TimingCache* timing_ = nullptr;
  uint64_t workspace_generation_ = 0;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  void* cublaslt_ = nullptr;
  void* cudnn_ = nullptr;
};

/// Inputs (nullptr for absent optional ones) and outputs of one kernel call.
struct CudaArgs {
  std::vector<const DeviceTensor*> inputs;
  std::vector<DeviceTensor*> outputs;
  const Layer* layer = nullptr;
  const SymbolBindings* symbols = nullptr;
  Resources* res = nullptr;
  const DeviceTensor& in(size_t i) const { return *inputs.at(i); }
  bool has(size_t i) const { return i < inputs.size() && inputs[i] != nullptr; }
  DeviceTensor& out(size_t i = 0) const { return *outputs.at(i); }
  cudaStream_t stream() const { return res->stream(); }
};

/// Runs the CPU reference kernel for `a.layer` on host copies of its inputs, then copies the
/// outputs back (synchronizes the stream).
void host_fallback(const CudaArgs& a);

// ---- the kernels, one per layer kind (files by family) ----
void run(const ConstantParams& p, const CudaArgs& a);
void run(const ShuffleParams& p, const CudaArgs& a);
void run(const ConcatenationParams& p, const CudaArgs& a);
void run(const SliceParams& p, const CudaArgs& a);
void run(const GatherParams& p, const CudaArgs& a);
void run(const ScatterParams& p, const CudaArgs& a);
void run(const PaddingParams& p, const CudaArgs& a);
void run(const ResizeParams& p, const CudaArgs& a);
void run(const FillParams& p, const CudaArgs& a);
void run(const ShapeParams& p, const CudaArgs& a);
void run(const IdentityParams& p, const CudaArgs& a);
void run(const ActivationParams& p, const CudaArgs& a);
void run(const ElementWiseParams& p, const CudaArgs& a);
void run(const UnaryParams& p, const CudaArgs& a);
void run(const SelectParams& p, const CudaArgs& a);
void run(const CastParams& p, const CudaArgs& a);
void run(const ConvolutionParams& p, const CudaArgs& a);
void run(const DeconvolutionParams& p, const CudaArgs& a);
void run(const PoolingParams& p, const CudaArgs& a);
void run(const MatrixMultiplyParams& p, const CudaArgs& a);
void run(const ReduceParams& p, const CudaArgs& a);
void run(const TopKParams& p, const CudaArgs& a);
void run(const SoftMaxParams& p, const CudaArgs& a);
void run(const NormalizationParams& p, const CudaArgs& a);
void run(const CumulativeParams& p, const CudaArgs& a);
void run(const AttentionParams& p, const CudaArgs& a);

/// True when the layer kind has a device kernel in this build ("cuda.<Kind>"), false when it
/// runs through host_fallback ("cuda.host.<Kind>"): what select_implementations records.
bool has_device_kernel(LayerKind kind);

/// The constants of one Engine on the device: uploaded once, shared by its contexts.
class DeviceWeights {
 public:
  /// Uploads every Constant layer's weights of `net` (synchronously, on the current device),
  /// into memory from `allocator` (cudaMalloc when null).
  DeviceWeights(const Network& net, std::shared_ptr<DeviceAllocator> allocator);
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;
  /// Device address of the output of a Constant layer (by tensor id), or nullptr.
  void* address(int tensor_id) const;

 private:
  DeviceBuffer base_;
  std::vector<int64_t> offsets_;  // per tensor id, -1 when not a constant
};

/// The CUDA graphs of one context, keyed by shape signature and I/O addresses (LRU).
struct GraphCache {
  struct Entry {
    std::vector<std::vector<int64_t>> signature;
    std::vector<void*> io;
    uint64_t workspace_generation = 0;
    void* exec = nullptr;  // cudaGraphExec_t
    uint64_t last_use = 0;
  };
  bool enabled = true;
  bool failed = false;            // a capture failed: this plan cannot be captured
  bool thrashing = false;         // addresses change on nearly every call
  std::vector<Entry> entries;
  std::vector<std::vector<std::vector<int64_t>>> warm;  // signatures run once layer by layer
  uint64_t clock = 0;
  int64_t replays = 0, captures = 0;
  void* capture_stream = nullptr;  // cudaStream_t, created on first capture
  ~GraphCache();
  void clear();
};

/// Per-context device state: the activation arena, the library resources and the graphs.
class ContextState {
 public:
  /// `timing` is the engine's timing cache (it outlives the context).
  ContextState(int64_t arena_bytes, std::shared_ptr<DeviceAllocator> allocator,
               TimingCache* timing);
  ~ContextState();
  ContextState(const ContextState&) = delete;
  ContextState& operator=(const ContextState&) = delete;
  uint8_t* arena() const { return static_cast<uint8_t*>(arena_.get()); }
  Resources& resources() { return res_; }
  GraphCache& graphs() { return graphs_; }

 private:
  DeviceBuffer arena_;
  Resources res_;
  GraphCache graphs_;
};

/// Enqueues every layer of `net` on `stream`. `dims` and `addrs` are indexed by
/// tensor id (device addresses). Errors name the layer.
void execute_layers(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                    const std::vector<void*>& addrs, const SymbolBindings* symbols,
                    const DeviceWeights& weights, ContextState& state, cudaStream_t stream);

/// execute_layers through the context's CUDA graphs: replays the graph of (`signature`, the
/// addresses of the `io_ids` tensors) when there is one, captures it when the signature has
/// run before, and runs layer by layer otherwise (first call, graphs off, capture impossible).
void enqueue_network(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                     const std::vector<void*>& addrs, const SymbolBindings* symbols,
                     const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                     const std::vector<std::vector<int64_t>>& signature,
                     const std::vector<int>& io_ids, bool capturable);

}  // namespace ember::engine::cuda
