// The CUDA back end's executor: device weights, the per-context arena and resources, and the
// layer loop.
#include <cublasLt.h>
#include <cudnn.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) + " (" +
                cudaGetErrorString(status) + ")");
  }
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

const std::string& timing_device_key() {
  static std::mutex mutex;
  static std::map<int, std::string> keys;  // per device ordinal
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mutex);
  std::string& key = keys[device];
  if (key.empty()) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    int runtime = 0;
    check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
    key = std::string(prop.name) + "|sm" + std::to_string(prop.major) +
          std::to_string(prop.minor) + "|" + std::to_string(prop.multiProcessorCount) +
          " SMs|cudart " + std::to_string(runtime) + "|cublasLt " +
          std::to_string(cublasLtGetVersion()) + "|cudnn " + std::to_string(cudnnGetVersion());
  }
  return key;
}

int64_t DeviceTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// ---------------------------------------------------------------- DeviceBuffer

DeviceBuffer::DeviceBuffer(std::shared_ptr<DeviceAllocator> allocator, size_t bytes,
                           const char* what)
    : allocator_(std::move(allocator)), bytes_(bytes) {
  if (!allocator_) {
    const cudaError_t status = cudaMalloc(&ptr_, bytes);
    if (status != cudaSuccess) {
      ptr_ = nullptr;
      bytes_ = 0;
      cudaGetLastError();  // a later check() of an unrelated launch must not report this
      throw Error(std::string("cudaMalloc failed for the ") + what + " (" +
                  std::to_string(bytes) + " bytes): " + cudaGetErrorName(status) + " (" +
                  cudaGetErrorString(status) + ")");
    }
    return;
  }
  try {
    ptr_ = allocator_->allocate(bytes);
  } catch (const std::exception& e) {
    throw Error(std::string("device allocator failed for the ") + what + " (" +
                std::to_string(bytes) + " bytes): " + e.what());
  }
  if (ptr_ == nullptr) {
    throw Error(std::string("device allocator returned no memory for the ") + what + " (" +
                std::to_string(bytes) + " bytes)");
  }
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    allocator_ = std::move(o.allocator_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reset() noexcept {
  // Errors are ignored: this runs in destructors.
  if (ptr_ != nullptr) {
    if (allocator_) {
      allocator_->deallocate(ptr_);
    } else {
      cudaFree(ptr_);
    }
  }
  ptr_ = nullptr;
  bytes_ = 0;
}

// ---------------------------------------------------------------- Resources

Resources::~Resources() {
  // Destructors must not throw: errors here are ignored (the context is going away). The
  // workspace is freed after the stream's work (ContextState's destructor synchronizes it).
  if (staging_ != nullptr) cudaFreeHost(staging_);
  if (cublaslt_ != nullptr) cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
  if (cudnn_ != nullptr) cudnnDestroy(static_cast<cudnnHandle_t>(cudnn_));
}

void* Resources::workspace(size_t bytes) {
  if (bytes > workspace_.size()) {
    // Work already enqueued may still use the old buffer.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (workspace growth)");
    // Graphs captured with the old address are stale from here on, even when the allocation
    // below fails: a caching allocator may hand the freed block to someone else at once.
    ++workspace_generation_;
    workspace_.reset();
    workspace_ = DeviceBuffer(allocator_, bytes, "library workspace");
  }
  return workspace_.get();
}

void* Resources::host_staging(size_t bytes) {
  if (bytes > staging_bytes_) {
    if (staging_ != nullptr) check(cudaFreeHost(staging_), "cudaFreeHost (staging)");
    staging_ = nullptr;
    check(cudaMallocHost(&staging_, bytes), "cudaMallocHost (staging)");
    staging_bytes_ = bytes;
  }
  return staging_;
}

void* Resources::cublaslt() {
  if (cublaslt_ == nullptr) {
    cublasLtHandle_t h = nullptr;
    if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) throw Error("cublasLtCreate failed");
    cublaslt_ = h;
  }
  return cublaslt_;
}

void* Resources::cudnn() {
  if (cudnn_ == nullptr) {
    cudnnHandle_t h = nullptr;
    const cudnnStatus_t s = cudnnCreate(&h);
    if (s != CUDNN_STATUS_SUCCESS) {
      throw Error(std::string("cudnnCreate failed: ") + cudnnGetErrorString(s));
    }
    cudnn_ = h;
  }
  cudnnSetStream(static_cast<cudnnHandle_t>(cudnn_), stream_);
  return cudnn_;
}

// ---------------------------------------------------------------- DeviceWeights

DeviceWeights::DeviceWeights(const Network& net, std::shared_ptr<DeviceAllocator> allocator) {
  constexpr int64_t kAlign = 256;
  int64_t total = 0;
  const auto tensors = net.tensors();
  offsets_.assign(tensors.size(), -1);
  for (const Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kConstant) continue;
    offsets_[l->output()->id()] = total;
    const auto& w = l->params_as<ConstantParams>().weights;
    total += (static_cast<int64_t>(w.nbytes()) + kAlign - 1) / kAlign * kAlign;
  }
  if (total == 0) return;
  base_ = DeviceBuffer(std::move(allocator), static_cast<size_t>(total), "engine weights");
  auto* base = static_cast<uint8_t*>(base_.get());
  for (const Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kConstant) continue;
    const auto& w = l->params_as<ConstantParams>().weights;
    if (w.nbytes() == 0) continue;
    check(cudaMemcpy(base + offsets_[l->output()->id()], w.data(),
                     w.nbytes(), cudaMemcpyHostToDevice),
          "cudaMemcpy (engine weights upload)");
  }
}

// The weights outlive every context of the engine (contexts hold them), and each context
// synchronizes its stream before it goes, so nothing still reads them when they are freed.
DeviceWeights::~DeviceWeights() = default;

void* DeviceWeights::address(int tensor_id) const {
  if (tensor_id < 0 || static_cast<size_t>(tensor_id) >= offsets_.size()) return nullptr;
  const int64_t off = offsets_[tensor_id];
  return off < 0 ? nullptr : static_cast<uint8_t*>(base_.get()) + off;
}

// ---------------------------------------------------------------- ContextState

ContextState::ContextState(int64_t arena_bytes, std::shared_ptr<DeviceAllocator> allocator,
                           TimingCache* timing)
    : res_(nullptr, allocator, timing) {
  if (arena_bytes > 0) {
    arena_ = DeviceBuffer(std::move(allocator), static_cast<size_t>(arena_bytes),
                          "activation arena");
  }
}

ContextState::~ContextState() {
  // The arena and workspace may go back to a caching allocator, which hands them out again at
  // once: the work queued on this context's last stream must be done first.
  cudaStreamSynchronize(res_.stream());
  graphs_.clear();
}

// ---------------------------------------------------------------- graphs

GraphCache::~GraphCache() {
  clear();
  if (capture_stream != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(capture_stream));
}

void GraphCache::clear() {
  for (Entry& e : entries) {
    if (e.exec != nullptr) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(e.exec));
  }
  entries.clear();
}

namespace {

constexpr size_t kMaxGraphs = 8;
// After this many captures, graphs stay on only while most calls are replays.
constexpr int64_t kThrashCaptures = 32;

/// Ends a capture that went wrong and clears the sticky capture error, so the context can go on
/// layer by layer.
void abandon_capture(cudaStream_t s) {
  cudaGraph_t g = nullptr;
  cudaStreamEndCapture(s, &g);
  if (g != nullptr) cudaGraphDestroy(g);
  cudaGetLastError();
}

}  // namespace

void enqueue_network(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                     const std::vector<void*>& addrs, const SymbolBindings* symbols,
                     const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                     const std::vector<std::vector<int64_t>>& signature,
                     const std::vector<int>& io_ids, bool capturable) {
  GraphCache& g = state.graphs();
  // A caller that is itself capturing (torch.cuda.graph, reduce-overhead) records our layers
  // into its graph: no graph of our own inside it.
  if (!g.enabled || g.failed || g.thrashing || !capturable || capturing(stream)) {
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }
  std::vector<void*> io;
  io.reserve(io_ids.size());
  for (int id : io_ids) io.push_back(addrs[id]);
  const uint64_t generation = state.resources().workspace_generation();
  ++g.clock;
  for (GraphCache::Entry& e : g.entries) {
    if (e.signature == signature && e.io == io && e.workspace_generation == generation) {
      e.last_use = g.clock;
      check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(e.exec), stream), "cudaGraphLaunch");
      ++g.replays;
      return;
    }
  }
  // The first call of a signature runs eagerly: it sizes the workspace and lets cuDNN time its
  // algorithms (neither may happen inside a capture).
  if (std::find(g.warm.begin(), g.warm.end(), signature) == g.warm.end()) {
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    g.warm.push_back(signature);
    return;
  }
  if (g.captures >= kThrashCaptures && g.replays < 4 * g.captures) {
    g.thrashing = true;
    g.clear();
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }
  if (g.capture_stream == nullptr) {
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate (capture)");
    g.capture_stream = s;
  }
  auto cs = static_cast<cudaStream_t>(g.capture_stream);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool captured = false;
  if (cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    try {
      execute_layers(net, dims, addrs, symbols, weights, state, cs);
      captured = cudaStreamEndCapture(cs, &graph) == cudaSuccess && graph != nullptr &&
                 state.resources().workspace_generation() == generation;
    } catch (...) {  // any exception: end the capture, or the thread stays in capture mode
      abandon_capture(cs);
    }
    state.resources().set_stream(stream);
  }
  if (captured && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
    captured = false;
    exec = nullptr;
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (!captured) {
    // Something in the plan cannot be captured (a host fallback synchronizes): layer by layer
    // from now on. A real error shows up again, with its message, in this eager run.
    cudaGetLastError();
    g.failed = true;
    g.clear();
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }
  if (g.entries.size() >= kMaxGraphs) {
    auto oldest = std::min_element(g.entries.begin(), g.entries.end(),
                                   [](const auto& a, const auto& b) { return a.last_use < b.last_use; });
    cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(oldest->exec));
    g.entries.erase(oldest);
  }
  g.entries.push_back({signature, std::move(io), generation, exec, g.clock});
  ++g.captures;
  check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
}

// ---------------------------------------------------------------- execution

void execute_layers(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                    const std::vector<void*>& addrs, const SymbolBindings* symbols,
                    const DeviceWeights& weights, ContextState& state, cudaStream_t stream) {
  std::vector<DeviceTensor> views(dims.size());
  for (const Tensor* t : net.tensors()) {
    views[t->id()] = DeviceTensor{t->dtype(), dims[t->id()], addrs[t->id()]};
  }
  state.resources().set_stream(stream);
  CudaArgs args;
  args.symbols = symbols;
  args.res = &state.resources();
  for (const Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kConstant) {
      // Constants are read in place; only a constant that is also a network output is copied.
      void* src = weights.address(l->output()->id());
      void* dst = addrs[l->output()->id()];
      const size_t n = l->params_as<ConstantParams>().weights.nbytes();
      if (dst != nullptr && dst != src && n > 0) {
        check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream),
              "cudaMemcpyAsync (constant output)");
      }
      continue;
    }
    args.layer = l;
    args.inputs.clear();
    args.outputs.clear();
    for (const Tensor* in : l->inputs()) args.inputs.push_back(in ? &views[in->id()] : nullptr);
    for (const Tensor* out : l->outputs()) args.outputs.push_back(&views[out->id()]);
    try {
      std::visit([&args](const auto& p) { run(p, args); }, l->params());
    } catch (const Error& e) {
      throw Error(l->describe() + " (cuda): " + e.what());
    }
  }
}

}  // namespace ember::engine::cuda
