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
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ember/engine/layers.h"
#include "ember/engine/network.h"
#include "ember/engine/runtime.h"
#include "ember/engine/timing_cache.h"
#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// Owns one library descriptor (cuBLASLt, cuDNN) and destroys it with `Destroy`.
template <typename Handle, auto Destroy>
struct Owned {
  Handle h = nullptr;
  Owned() = default;
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() {
    if (h != nullptr) Destroy(h);
  }
};

/// Throws Error naming the call and the CUDA error when `status` is not cudaSuccess.
void check(cudaError_t status, const char* what);
/// The number of SMs of the current device (queried once per device; executor.cpp): grids that
/// should fill the GPU size themselves by it.
int sm_count();
/// True unless EMBER_PARALLEL_REDUCTIONS=0 (read on each call): reductions with little output
/// and much input (a Reduce with fewer rows than SMs, a global average pooling) split their
/// input over many blocks and combine partials in a second kernel. T5-small b32 on an H100:
/// 8.85 ms without, 1.98 ms with (its whole-tensor isinf().any() guards; 2026-12-06).
bool parallel_reductions_enabled();

/// EMBER_TACTIC_LOG=1: the tactic timings (cuBLASLt candidates, cuDNN convolution engines,
/// cuDNN attention against Ember's kernel) are printed to stderr as they are measured.
bool tactic_log();

/// The identity a timing-cache choice is valid for on the current device: GPU name, SM count,
/// compute capability, and the CUDA runtime, cuBLASLt and cuDNN versions.
const std::string& timing_device_key();

/// Whether two byte ranges of length `bytes` starting at p and q overlap (a residual that
/// shares the output's memory: repeated launches would add it again and again).
inline bool overlaps(const void* p, const void* q, size_t bytes) {
  const auto* a = static_cast<const uint8_t*>(p);
  const auto* b = static_cast<const uint8_t*>(q);
  return a < b + bytes && b < a + bytes;
}

/// A two-way tactic choice (one byte, 0 or 1: cuDNN's attention against Ember's kernel, Ember's
/// depthwise kernel against cuDNN) in `cache` for `problem` on this device, or nothing (no
/// cache, none stored, or bytes that are not such a choice: timed again). A choice loaded from a
/// plan is marked checked on its first lookup.
std::optional<bool> lookup_choice(TimingCache* cache, const std::string& problem);
/// Stores a two-way choice this process timed (no-op without a cache) and counts it as timed.
void store_choice(TimingCache* cache, const std::string& problem, bool choice);

/// "sm_<major><minor>" of the current GPU (what a plan built here records), or "" without one.
std::string device_target();

/// Throws Error, naming the GPU and both capabilities, when the current GPU cannot run a plan
/// built for `target` (a plan for a newer GPU than this one) or when this build's kernels have
/// no image for it: a clear error at context creation instead of a failed launch later.
void check_device_for_plan(const std::string& target);

/// cudaFuncGetAttributes of one of the back end's kernels: cudaErrorNoKernelImageForDevice when
/// the library was compiled for other GPU architectures than the current one.
cudaError_t probe_kernel_image();

/// Whether `stream` is being captured into a CUDA graph. Work that must synchronize (cuDNN's
/// Find, data-dependent checks read back to the host) cannot run then: it runs on the eager
/// first call of each shape signature, and captures skip it.
bool capturing(cudaStream_t stream);

/// Rewrites the memset nodes and the flat device-to-device copy nodes of a captured `graph` as
/// kernel nodes with the same edges (graph_nodes.cu says why); returns how many it rewrote.
/// Nodes it cannot rewrite (pitched or host copies, edges with port data) stay as they are.
int kernelize_graph_nodes(cudaGraph_t graph);
/// False when EMBER_GRAPH_NODE_KERNELS=0 (the A/B switch): engines' graphs keep those nodes.
bool graph_node_kernels_enabled();

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

/// What a kernel prepares on a layer's first call and reuses on later ones while the layer's
/// shapes stay the same (library descriptors, the chosen algorithm, its workspace need): the
/// layer-by-layer path then skips descriptor creation, problem text and timing-cache lookups.
struct PreparedLaunch {
  virtual ~PreparedLaunch() = default;
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
  /// Increases whenever the workspace moves or invalidate_captures is called (captured graphs
  /// that point at it, or at what was freed, are stale).
  uint64_t workspace_generation() const { return workspace_generation_; }
  /// Marks every CUDA graph this context captured so far stale (they are dropped before the next
  /// replay), as a workspace move does: for a kernel owner (a cuDNN execution plan) that is
  /// about to be freed while captured graphs may still launch its kernels.
  void invalidate_captures() { ++workspace_generation_; }
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
  /// The state prepared for slot `slot` (< 8) of `layer` by its kernel, or nullptr (also always
  /// nullptr with EMBER_CUDA_PREPARED=0, for A/B timing of what preparing saves).
  PreparedLaunch* prepared(const void* layer, int slot) const;
  /// False with EMBER_CUDA_PREPARED=0: set_prepared then drops what it is given, so a kernel
  /// should not allocate state for it.
  bool keeps_prepared() const;
  /// Keeps `p` for (layer, slot), replacing what was there.
  void set_prepared(const void* layer, int slot, std::unique_ptr<PreparedLaunch> p);
  /// Notes, once per context and `layer`, that the layer runs correctly but degraded (e.g. a
  /// convolution cuDNN's graph API refused, which then takes the legacy API): take_warnings
  /// hands the sentence to the embedder, which reports it.
  void warn_once(const void* layer, std::string message);
  /// The sentences noted by warn_once since the last call.
  std::vector<std::string> take_warnings();

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
  // Keyed by the layer's address plus the slot (layers are at least 8-byte aligned).
  std::unordered_map<uintptr_t, std::unique_ptr<PreparedLaunch>> prepared_;
  std::unordered_set<const void*> warned_;  // layers warn_once has noted
  std::vector<std::string> warnings_;       // not yet taken
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
void run(const PluginParams& p, const CudaArgs& a);
void run(const QuantizeParams& p, const CudaArgs& a);
void run(const DequantizeParams& p, const CudaArgs& a);
void run(const QuantizedMatrixMultiplyParams& p, const CudaArgs& a);
void run(const QuantizedConvolutionParams& p, const CudaArgs& a);
void run(const FusedPointwiseParams& p, const CudaArgs& a);

/// Compiles a generated FusedPointwise kernel's CUDA C `source` with NVRTC to a CUBIN for
/// `target` ("sm_90"); needs no GPU. Throws Error with NVRTC's log on failure
/// (fused_pointwise.cpp).
std::vector<uint8_t> compile_pointwise_kernel(const std::string& source, const std::string& target);
/// compile_pointwise_kernel through the process's kernel cache (keyed by a hash of source and
/// target): identical kernels compile once per process.
std::vector<uint8_t> cached_pointwise_kernel(const std::string& source, const std::string& target);
/// How many NVRTC compilations the process's kernel cache has done (tests).
int pointwise_kernel_compilations();

/// cuBLASLt's workspace for int8_gemm_tn (quantized_matmul.cpp).
inline constexpr size_t kInt8GemmWorkspaceBytes = size_t{32} << 20;
/// acc[m, n] (int32, row-major) = act[m, k] w[n, k]^T, both int8 and K-contiguous, through
/// cuBLASLt's IMMA ("TN") kernels, enqueued on a's stream with `ws` (kInt8GemmWorkspaceBytes) as
/// its workspace. False, with nothing enqueued, when cuBLASLt takes no such problem (k or n not a
/// multiple of 4, operands not 16-byte aligned, no algorithm). Shared by the quantized matrix
/// product and the im2col path of the quantized convolution.
bool int8_gemm_tn(const CudaArgs& a, const void* act, const void* w, int64_t m, int64_t n,
                  int64_t k, int32_t* acc, void* ws);

/// acc[m, n] (f32, row-major) = act[m, k] w[n, k]^T with both E4M3 and K-contiguous, through
/// cuBLASLt's FP8 GEMM (unit scales: the caller's epilogue applies them). False, with nothing
/// enqueued, when cuBLASLt takes no such problem (k or n not a multiple of 16, a GPU below
/// sm_89, no algorithm).
bool fp8_gemm_tn(const CudaArgs& a, const void* act, const void* w, int64_t m, int64_t n,
                 int64_t k, float* acc, void* ws);

/// Why a QuantizedConvolution runs in the direct int8 kernel instead of cuDNN's int8
/// convolution (3-d, grouped), or "" when cuDNN's path applies (quantized_conv.cpp).
std::string qconv_direct_reason(const QuantizedConvolutionParams& p);

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

/// The CUDA graphs of one context (see enqueue_network). Two kinds of entry, both per shape
/// signature and workspace generation:
///  - staged: captured against the context's own I/O buffers (`staging`). A replay copies the
///    caller's inputs in, launches, and copies the outputs out, so it serves any caller
///    addresses: a serving loop (new input tensors, outputs kept) never captures again;
///  - zero-copy: captured against one set of caller addresses (`io`), replayed only when the
///    caller passes exactly those again. Safe by construction: the graph then reads and writes
///    the very buffers the caller handed over, as a layer-by-layer run would. Captured only when
///    a call repeats the previous call's addresses (the benchmark pattern: one input tensor
///    reused, each output dropped so the allocator hands its block out again).
struct GraphCache {
  struct Entry {
    std::vector<std::vector<int64_t>> signature;
    std::vector<void*> io;             ///< Zero-copy: the caller addresses baked in.
    bool staged = false;
    DeviceBuffer staging;              ///< Staged: the I/O buffers the graph reads and writes.
    std::vector<size_t> staging_offsets;  ///< Per io_ids entry, byte offset in `staging`.
    uint64_t workspace_generation = 0;
    void* exec = nullptr;  // cudaGraphExec_t
    uint64_t last_use = 0;
  };
  bool enabled = true;
  /// Why graphs are off for this context ("" while they are on): set once, never cleared
  /// except by set_cuda_graphs(true).
  std::string disabled_reason;
  bool reported = false;          ///< disabled_reason has been handed to the embedder once.
  std::vector<Entry> entries;
  std::vector<std::vector<std::vector<int64_t>>> warm;  // signatures run once layer by layer
  /// Signatures whose zero-copy capture failed (the caller's addresses did not suit a kernel):
  /// they use the staged graph only.
  std::vector<std::vector<std::vector<int64_t>>> no_zero_copy;
  /// The last few calls' (signature, caller addresses), to spot addresses that come again (a
  /// loop that keeps the previous output alive alternates between two output blocks).
  std::vector<std::pair<std::vector<std::vector<int64_t>>, std::vector<void*>>> recent;
  uint64_t clock = 0;
  uint64_t generation_seen = 0;   // workspace generation of the entries kept
  int64_t replays = 0, captures = 0;
  int64_t staged_replays = 0;     ///< Replays that copied I/O through the staging buffers.
  /// Captures and replays since the workspace last moved (or graphs were turned on): what the
  /// thrash check weighs, so captures forced by a growing workspace do not count against it.
  int64_t window_replays = 0, window_captures = 0;
  void* capture_stream = nullptr;  // cudaStream_t, created on first capture
  void* last_stream = nullptr;     // cudaStream_t of the last launch (synchronized before a
                                   // staged entry's buffers are freed)
  GraphCache() = default;
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;
  ~GraphCache();
  /// Drops every entry; waits for the last launch first when an entry owns staging buffers
  /// (a caching allocator hands them out again at once).
  void clear();
  /// Turns graphs off for good with `reason` (kept for cuda_graph_stats), dropping every entry.
  void disable(std::string reason);
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

/// execute_layers through the context's CUDA graphs (see GraphCache): replays a zero-copy graph
/// of (`signature`, the caller addresses of the `io_ids` tensors) when there is one, else the
/// signature's staged graph with copies in and out; captures on the second call of a signature;
/// runs layer by layer on the first call of a signature, with graphs off, or when the plan
/// cannot be captured (`not_capturable`, the reason, not empty; it is then kept in the cache).
/// `num_inputs` is how many of `io_ids` are inputs (the rest are outputs).
void enqueue_network(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                     const std::vector<void*>& addrs, const SymbolBindings* symbols,
                     const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                     const std::vector<std::vector<int64_t>>& signature,
                     const std::vector<int>& io_ids, size_t num_inputs,
                     const std::string& not_capturable);

}  // namespace ember::engine::cuda
