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

std::string device_target() {
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return "sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
}

void check_device_for_plan(const std::string& target) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const int have = prop.major * 10 + prop.minor;
  const std::string here = std::string("GPU ") + std::to_string(device) + " (" + prop.name +
                           ") is sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
  if (!target.empty()) {
    const int want = std::stoi(target.substr(3));  // the plan reader checked the form
    if (have < want) {
      throw Error("this plan was built for " + target + " but " + here +
                  ": a plan runs on the GPU generation it was built for or a newer one; "
                  "rebuild the engine on this GPU");
    }
  }
  const cudaError_t image = probe_kernel_image();
  if (image != cudaSuccess) {
    cudaGetLastError();
    throw Error("this build of Ember's CUDA kernels cannot run on " + here + " (" +
                cudaGetErrorString(image) +
                "); rebuild Ember with CMAKE_CUDA_ARCHITECTURES including " +
                std::to_string(prop.major) + std::to_string(prop.minor));
  }
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
  entries.clear();  // staging buffers go too: ContextState synchronized the stream before
}

void GraphCache::disable(std::string reason) {
  if (disabled_reason.empty()) disabled_reason = std::move(reason);
  clear();
}

namespace {

// Graphs kept per context (LRU): each signature has at most one staged graph and
// kZeroCopyPerSignature zero-copy ones.
constexpr size_t kMaxGraphs = 16;
constexpr size_t kZeroCopyPerSignature = 2;
// After this many captures, graphs stay on only while most calls are replays: a workload with
// more live shape signatures than kMaxGraphs would otherwise capture on every call.
constexpr int64_t kThrashCaptures = 64;
constexpr size_t kStagingAlign = 256;
constexpr size_t kMaxWarmSignatures = 256;

/// Ends a capture that went wrong and clears the sticky capture error, so the context can go on
/// layer by layer.
void abandon_capture(cudaStream_t s) {
  cudaGraph_t g = nullptr;
  cudaStreamEndCapture(s, &g);
  if (g != nullptr) cudaGraphDestroy(g);
  cudaGetLastError();
}

/// Bytes of each `io_ids` tensor for the current dims.
std::vector<size_t> io_sizes(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                             const std::vector<int>& io_ids) {
  const auto tensors = net.tensors();
  std::vector<size_t> out;
  out.reserve(io_ids.size());
  for (int id : io_ids) {
    out.push_back(static_cast<size_t>(dims_numel(dims[id])) * dtype_size(tensors[id]->dtype()));
  }
  return out;
}

/// Captures `net` on the cache's capture stream with `addrs` and instantiates it; nullptr when
/// the plan cannot be captured (a host fallback synchronizes) or the workspace moved meanwhile.
cudaGraphExec_t capture(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                        const std::vector<void*>& addrs, const SymbolBindings* symbols,
                        const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                        uint64_t generation) {
  GraphCache& g = state.graphs();
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
  if (captured && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) exec = nullptr;
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (!captured || exec == nullptr) {
    cudaGetLastError();
    return nullptr;
  }
  return exec;
}

/// Makes room for one more entry: drops the least recently used one.
void evict_one(GraphCache& g) {
  if (g.entries.size() < kMaxGraphs) return;
  auto oldest = std::min_element(g.entries.begin(), g.entries.end(),
                                 [](const auto& a, const auto& b) { return a.last_use < b.last_use; });
  cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(oldest->exec));
  g.entries.erase(oldest);
}

/// Copies between the caller's I/O buffers and a staged entry's (inputs before the launch when
/// `inputs`, outputs after it otherwise), on `stream`.
void copy_staged(const std::vector<size_t>& sizes, const std::vector<void*>& addrs,
                 const std::vector<int>& io_ids, size_t num_inputs, GraphCache::Entry& e,
                 cudaStream_t stream, bool inputs) {
  auto* base = static_cast<uint8_t*>(e.staging.get());
  const size_t begin = inputs ? 0 : num_inputs, end = inputs ? num_inputs : io_ids.size();
  for (size_t i = begin; i < end; ++i) {
    const int id = io_ids[i];
    const size_t n = sizes[i];
    if (n == 0) continue;
    void* staged = base + e.staging_offsets[i];
    void* caller = addrs[id];
    check(cudaMemcpyAsync(inputs ? staged : caller, inputs ? caller : staged, n,
                          cudaMemcpyDeviceToDevice, stream),
          inputs ? "cudaMemcpyAsync (graph input staging)" : "cudaMemcpyAsync (graph output)");
  }
}

}  // namespace

void enqueue_network(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                     const std::vector<void*>& addrs, const SymbolBindings* symbols,
                     const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                     const std::vector<std::vector<int64_t>>& signature,
                     const std::vector<int>& io_ids, size_t num_inputs, bool capturable) {
  GraphCache& g = state.graphs();
  if (g.enabled && g.disabled_reason.empty() && !capturable) {
    g.disable("the plan has a layer that runs through the host fallback (cuda.host), which "
              "synchronizes and cannot be captured");
  }
  // A caller that is itself capturing (torch.cuda.graph, reduce-overhead) records our layers
  // into its graph: no graph of our own inside it.
  if (!g.enabled || !g.disabled_reason.empty() || capturing(stream)) {
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }
  std::vector<void*> io;
  io.reserve(io_ids.size());
  for (int id : io_ids) io.push_back(addrs[id]);
  const uint64_t generation = state.resources().workspace_generation();
  if (generation != g.generation_seen) {
    // Every graph captured so far points at the old workspace.
    g.clear();
    g.generation_seen = generation;
  }
  ++g.clock;
  const bool repeat = signature == g.last_signature && io == g.last_io;
  g.last_signature = signature;
  g.last_io = io;

  const std::vector<size_t> sizes = io_sizes(net, dims, io_ids);
  GraphCache::Entry* staged = nullptr;
  size_t zero_copy = 0;
  for (GraphCache::Entry& e : g.entries) {
    if (e.signature != signature) continue;
    if (!e.staged && e.io == io) {
      e.last_use = g.clock;
      check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(e.exec), stream), "cudaGraphLaunch");
      ++g.replays;
      return;
    }
    if (e.staged) staged = &e;
    if (!e.staged) ++zero_copy;
  }
  // The first call of a signature runs eagerly: it sizes the workspace and lets cuDNN time its
  // algorithms (neither may happen inside a capture).
  if (std::find(g.warm.begin(), g.warm.end(), signature) == g.warm.end()) {
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    // Bounded: a workload with ever new shapes forgets the oldest (they run eagerly once more).
    if (g.warm.size() >= kMaxWarmSignatures) g.warm.erase(g.warm.begin());
    g.warm.push_back(signature);
    return;
  }
  const bool capture_zero_copy = repeat && zero_copy < kZeroCopyPerSignature;
  if (staged != nullptr && !capture_zero_copy) {
    staged->last_use = g.clock;
    copy_staged(sizes, addrs, io_ids, num_inputs, *staged, stream, /*inputs=*/true);
    check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(staged->exec), stream), "cudaGraphLaunch");
    copy_staged(sizes, addrs, io_ids, num_inputs, *staged, stream, /*inputs=*/false);
    ++g.replays;
    ++g.staged_replays;
    return;
  }
  if (g.captures >= kThrashCaptures && g.replays < 4 * g.captures) {
    g.disable("captured " + std::to_string(g.captures) + " graphs but replayed only " +
              std::to_string(g.replays) + " times: more shape signatures are live than the " +
              std::to_string(kMaxGraphs) + " graphs a context keeps");
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }

  GraphCache::Entry entry;
  entry.signature = signature;
  entry.workspace_generation = generation;
  entry.last_use = g.clock;
  std::vector<void*> capture_addrs = addrs;
  if (capture_zero_copy) {
    entry.io = std::move(io);
  } else {
    // The graph reads and writes the context's own I/O buffers, sized for this signature. A
    // tensor listed twice (an input that is also an output) gets one buffer.
    entry.staged = true;
    entry.staging_offsets.assign(io_ids.size(), 0);
    size_t total = 0;
    for (size_t i = 0; i < io_ids.size(); ++i) {
      const auto first = std::find(io_ids.begin(), io_ids.end(), io_ids[i]) - io_ids.begin();
      if (static_cast<size_t>(first) < i) {
        entry.staging_offsets[i] = entry.staging_offsets[first];
        continue;
      }
      entry.staging_offsets[i] = total;
      total += (sizes[i] + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
    }
    if (total > 0) {
      entry.staging = DeviceBuffer(state.resources().allocator(), total, "CUDA graph I/O buffers");
    }
    auto* base = static_cast<uint8_t*>(entry.staging.get());
    for (size_t i = 0; i < io_ids.size(); ++i) {
      capture_addrs[io_ids[i]] =
          sizes[i] == 0 ? addrs[io_ids[i]] : base + entry.staging_offsets[i];
    }
  }
  cudaGraphExec_t exec =
      capture(net, dims, capture_addrs, symbols, weights, state, stream, generation);
  if (exec == nullptr) {
    // Something in the plan cannot be captured (a kernel that falls back to the host for this
    // shape synchronizes): layer by layer from now on. A real error shows up again, with its
    // message, in this eager run.
    g.disable("capturing the layers into a CUDA graph failed (a layer synchronizes, e.g. a "
              "host fallback for this shape)");
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }
  evict_one(g);
  entry.exec = exec;
  g.entries.push_back(std::move(entry));
  ++g.captures;
  GraphCache::Entry& e = g.entries.back();
  if (e.staged) copy_staged(sizes, addrs, io_ids, num_inputs, e, stream, /*inputs=*/true);
  check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  if (e.staged) copy_staged(sizes, addrs, io_ids, num_inputs, e, stream, /*inputs=*/false);
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
