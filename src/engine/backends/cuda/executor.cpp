// The CUDA back end's executor: device weights, the per-context arena and resources, and the
// layer loop.
#include <cublasLt.h>
#include <cudnn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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

int sm_count() {
  static std::atomic<int> counts[64] = {};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::atomic<int>& slot = counts[device % 64];
  int n = slot.load();
  if (n == 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute");
    slot.store(n);
  }
  return n;
}

bool parallel_reductions_enabled() {
  const char* e = std::getenv("EMBER_PARALLEL_REDUCTIONS");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

bool tactic_log() {
  static const bool on = [] {
    const char* e = std::getenv("EMBER_TACTIC_LOG");
    return e != nullptr && std::strcmp(e, "1") == 0;
  }();
  return on;
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

std::optional<bool> lookup_choice(TimingCache* cache, const std::string& problem) {
  if (cache == nullptr) return std::nullopt;
  bool checked = false;
  const auto stored = cache->lookup(timing_device_key(), problem, &checked);
  if (!stored || stored->size() != 1 || (*stored)[0] > 1) return std::nullopt;
  if (!checked) cache->mark_checked(timing_device_key(), problem);
  return (*stored)[0] == 1;
}

void store_choice(TimingCache* cache, const std::string& problem, bool choice) {
  if (cache == nullptr) return;
  cache->store(timing_device_key(), problem, std::vector<uint8_t>{static_cast<uint8_t>(choice ? 1 : 0)});
  cache->note_timed();
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
  // Per device, once: contexts are created on a pool's miss, which should stay cheap.
  static std::mutex mutex;
  static std::map<int, std::pair<cudaDeviceProp, cudaError_t>> known;
  cudaDeviceProp prop{};
  cudaError_t image = cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = known.find(device);
    if (it == known.end()) {
      check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
      image = probe_kernel_image();
      cudaGetLastError();
      it = known.emplace(device, std::make_pair(prop, image)).first;
    }
    prop = it->second.first;
    image = it->second.second;
  }
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
  if (image != cudaSuccess) {
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
  // Prepared states may hold cuDNN execution plans made with the handle: freed before it.
  prepared_.clear();
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
    // Grow by at least 2x (a power of two): each move drops the context's CUDA graphs, so a
    // warm-up over growing shapes should move it a few times, not once per shape.
    size_t grown = size_t{1} << 20;
    while (grown < bytes || grown < 2 * workspace_.size()) grown <<= 1;
    workspace_.reset();
    workspace_ = DeviceBuffer(allocator_, grown, "library workspace");
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

namespace {
bool prepared_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("EMBER_CUDA_PREPARED");
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}
uintptr_t prepared_key(const void* layer, int slot) {
  return reinterpret_cast<uintptr_t>(layer) + static_cast<uintptr_t>(slot);
}
}  // namespace

bool Resources::keeps_prepared() const { return prepared_enabled(); }

PreparedLaunch* Resources::prepared(const void* layer, int slot) const {
  if (!prepared_enabled()) return nullptr;
  const auto it = prepared_.find(prepared_key(layer, slot));
  return it == prepared_.end() ? nullptr : it->second.get();
}

void Resources::set_prepared(const void* layer, int slot, std::unique_ptr<PreparedLaunch> p) {
  if (!prepared_enabled() || p == nullptr) return;
  prepared_[prepared_key(layer, slot)] = std::move(p);
}

void Resources::warn_once(const void* layer, std::string message) {
  if (warned_.insert(layer).second) warnings_.push_back(std::move(message));
}

std::vector<std::string> Resources::take_warnings() { return std::exchange(warnings_, {}); }

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
  bool staged_buffers = false;
  for (Entry& e : entries) {
    if (e.exec != nullptr) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(e.exec));
    staged_buffers = staged_buffers || e.staging.get() != nullptr;
  }
  // The last replay's copies may still read or write the staging buffers.
  if (staged_buffers) cudaStreamSynchronize(static_cast<cudaStream_t>(last_stream));
  entries.clear();
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

/// How a capture ended.
enum class Capture { kDone, kWorkspaceMoved, kFailed };

/// Captures `net` on the cache's capture stream with `addrs` and instantiates it into `exec`.
/// kWorkspaceMoved: a layer grew the workspace meanwhile (try again on a later call);
/// kFailed: the plan cannot be captured with these addresses (a layer synchronizes).
Capture capture(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                const std::vector<void*>& addrs, const SymbolBindings* symbols,
                const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                uint64_t generation, cudaGraphExec_t& exec) {
  GraphCache& g = state.graphs();
  exec = nullptr;
  if (g.capture_stream == nullptr) {
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate (capture)");
    g.capture_stream = s;
  }
  auto cs = static_cast<cudaStream_t>(g.capture_stream);
  cudaGraph_t graph = nullptr;
  bool captured = false;
  if (cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    try {
      execute_layers(net, dims, addrs, symbols, weights, state, cs);
      captured = cudaStreamEndCapture(cs, &graph) == cudaSuccess && graph != nullptr;
    } catch (...) {  // any exception: end the capture, or the thread stays in capture mode
      abandon_capture(cs);
    }
    state.resources().set_stream(stream);
  }
  const bool moved = state.resources().workspace_generation() != generation;
  if (captured && !moved && graph_node_kernels_enabled()) kernelize_graph_nodes(graph);
  if (captured && !moved && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) exec = nullptr;
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (exec == nullptr) cudaGetLastError();
  if (moved) {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    exec = nullptr;
    return Capture::kWorkspaceMoved;
  }
  return exec != nullptr ? Capture::kDone : Capture::kFailed;
}

/// Makes room for one more entry once there are `limit`: drops the least recently used one.
void evict_lru(GraphCache& g, size_t limit) {
  if (g.entries.size() < limit) return;
  auto oldest = std::min_element(g.entries.begin(), g.entries.end(),
                                 [](const auto& a, const auto& b) { return a.last_use < b.last_use; });
  if (oldest->staging.get() != nullptr) {
    cudaStreamSynchronize(static_cast<cudaStream_t>(g.last_stream));  // its copies may run still
  }
  cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(oldest->exec));
  g.entries.erase(oldest);
}

/// Copies between the caller's I/O buffers and a staged entry's (inputs before the launch when
/// `inputs`, outputs after it otherwise), on `stream`. cudaMemcpyDefault: the caller's memory
/// may be managed or host-mapped, which layer-by-layer runs accept too.
void copy_staged(const std::vector<size_t>& sizes, const std::vector<void*>& addrs,
                 const std::vector<int>& io_ids, size_t num_inputs, GraphCache::Entry& e,
                 cudaStream_t stream, bool inputs) {
  auto* base = static_cast<uint8_t*>(e.staging.get());
  const size_t begin = inputs ? 0 : num_inputs, end = inputs ? num_inputs : io_ids.size();
  for (size_t i = begin; i < end; ++i) {
    const size_t n = sizes[i];
    if (n == 0) continue;
    void* staged = base + e.staging_offsets[i];
    void* caller = addrs[io_ids[i]];
    check(cudaMemcpyAsync(inputs ? staged : caller, inputs ? caller : staged, n, cudaMemcpyDefault,
                          stream),
          inputs ? "cudaMemcpyAsync (graph input staging)" : "cudaMemcpyAsync (graph output)");
  }
}

// Addresses equal to one of the last two calls' (a loop holding its previous output alternates
// between two output blocks) are worth a zero-copy graph.
constexpr size_t kRecentCalls = 2;

}  // namespace

void enqueue_network(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                     const std::vector<void*>& addrs, const SymbolBindings* symbols,
                     const DeviceWeights& weights, ContextState& state, cudaStream_t stream,
                     const std::vector<std::vector<int64_t>>& signature,
                     const std::vector<int>& io_ids, size_t num_inputs,
                     const std::string& not_capturable) {
  GraphCache& g = state.graphs();
  if (g.enabled && g.disabled_reason.empty() && !not_capturable.empty()) {
    g.disable(not_capturable);
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
    g.window_captures = g.window_replays = 0;
  }
  ++g.clock;
  // Addresses seen in one of the last few calls of this signature: worth a zero-copy graph.
  bool repeat = false;
  for (const auto& [sig, addresses] : g.recent) repeat = repeat || (sig == signature && addresses == io);
  g.recent.emplace_back(signature, io);
  if (g.recent.size() > kRecentCalls) g.recent.erase(g.recent.begin());
  g.last_stream = stream;

  GraphCache::Entry* staged = nullptr;
  size_t zero_copy = 0;
  for (GraphCache::Entry& e : g.entries) {
    if (e.signature != signature) continue;
    if (!e.staged) ++zero_copy;
    if (!e.staged && e.io == io) {
      e.last_use = g.clock;
      check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(e.exec), stream), "cudaGraphLaunch");
      ++g.replays;
      ++g.window_replays;
      return;
    }
    if (e.staged) staged = &e;
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
  // Byte sizes of the I/O for the staging copies (not needed by a zero-copy replay above).
  const std::vector<size_t> sizes = io_sizes(net, dims, io_ids);
  // At most kZeroCopyPerSignature, never replaced: addresses that rotate through more sets
  // than that would otherwise capture on every call. The staged graph serves the rest.
  const bool capture_zero_copy =
      repeat && zero_copy < kZeroCopyPerSignature &&
      std::find(g.no_zero_copy.begin(), g.no_zero_copy.end(), signature) == g.no_zero_copy.end();
  if (staged != nullptr && !capture_zero_copy) {
    staged->last_use = g.clock;
    copy_staged(sizes, addrs, io_ids, num_inputs, *staged, stream, /*inputs=*/true);
    check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(staged->exec), stream), "cudaGraphLaunch");
    copy_staged(sizes, addrs, io_ids, num_inputs, *staged, stream, /*inputs=*/false);
    ++g.replays;
    ++g.window_replays;
    ++g.staged_replays;
    return;
  }
  if (g.window_captures >= kThrashCaptures && g.window_replays < 4 * g.window_captures) {
    g.disable("captured " + std::to_string(g.window_captures) + " graphs but replayed only " +
              std::to_string(g.window_replays) + " times: more shape signatures are live than " +
              "the " + std::to_string(kMaxGraphs) + " graphs a context keeps");
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }

  GraphCache::Entry entry;
  entry.signature = signature;
  entry.workspace_generation = generation;
  entry.last_use = g.clock;
  std::vector<void*> capture_addrs = addrs;
  if (capture_zero_copy) {
    entry.io = io;
  } else {
    // The graph reads and writes the context's own I/O buffers, sized for this signature.
    entry.staged = true;
    entry.staging_offsets.assign(io_ids.size(), 0);
    size_t total = 0;
    for (size_t i = 0; i < io_ids.size(); ++i) {
      entry.staging_offsets[i] = total;
      total += (sizes[i] + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
    }
    if (total > 0) {
      try {
        entry.staging =
            DeviceBuffer(state.resources().allocator(), total, "CUDA graph I/O buffers");
      } catch (const Error& e) {
        g.disable(std::string("the CUDA graph I/O buffers could not be allocated: ") + e.what());
        execute_layers(net, dims, addrs, symbols, weights, state, stream);
        return;
      }
    }
    auto* base = static_cast<uint8_t*>(entry.staging.get());
    for (size_t i = 0; i < io_ids.size(); ++i) {
      capture_addrs[io_ids[i]] = sizes[i] == 0 ? addrs[io_ids[i]] : base + entry.staging_offsets[i];
    }
  }
  cudaGraphExec_t exec = nullptr;
  const Capture result =
      capture(net, dims, capture_addrs, symbols, weights, state, stream, generation, exec);
  if (result != Capture::kDone) {
    if (result == Capture::kFailed) {
      if (capture_zero_copy) {
        // These addresses do not suit some kernel; the staged graph may still do.
        g.no_zero_copy.push_back(signature);
      } else {
        // Something in the plan cannot be captured (a kernel that falls back to the host for
        // this shape synchronizes): layer by layer from now on.
        g.disable("capturing the layers into a CUDA graph failed (a layer synchronizes, e.g. "
                  "a host fallback for this shape)");
      }
    }
    // A real error shows up again, with its message, in this eager run.
    execute_layers(net, dims, addrs, symbols, weights, state, stream);
    return;
  }
  evict_lru(g, kMaxGraphs);
  entry.exec = exec;
  g.entries.push_back(std::move(entry));
  ++g.captures;
  ++g.window_captures;
  GraphCache::Entry& e = g.entries.back();
  if (e.staged) copy_staged(sizes, addrs, io_ids, num_inputs, e, stream, /*inputs=*/true);
  check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  if (e.staged) copy_staged(sizes, addrs, io_ids, num_inputs, e, stream, /*inputs=*/false);
}

// ---------------------------------------------------------------- execution

namespace {

/// EMBER_LAYER_PROFILE=1: host time spent enqueueing each layer kind on the layer-by-layer
/// path (descriptors, lookups, launches; the GPU work itself is asynchronous), summed over the
/// process and printed to stderr at exit. It answers "where does a call that cannot replay a
/// graph spend its host time".
class HostProfile {
 public:
  static HostProfile* get() {
    static HostProfile* p = [] {
      const char* e = std::getenv("EMBER_LAYER_PROFILE");
      return e != nullptr && e[0] == '1' ? new HostProfile() : nullptr;
    }();
    return p;
  }
  void add(LayerKind kind, double us) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& [total, count] = totals_[kind];
    total += us;
    ++count;
  }
  void add_call(double us) {
    std::lock_guard<std::mutex> lock(mu_);
    call_us_ += us;
    ++calls_;
  }

 private:
  HostProfile() { std::atexit([] { get()->print(); }); }
  void print() {
    std::lock_guard<std::mutex> lock(mu_);
    if (calls_ == 0) return;
    std::fprintf(stderr, "[ember layer profile] %lld layer-by-layer calls, %.1f us host time each\n",
                 static_cast<long long>(calls_), call_us_ / static_cast<double>(calls_));
    std::vector<std::pair<double, LayerKind>> order;
    for (const auto& [kind, tc] : totals_) order.emplace_back(tc.first, kind);
    std::sort(order.rbegin(), order.rend());
    for (const auto& [total, kind] : order) {
      const int64_t n = totals_[kind].second;
      std::fprintf(stderr, "[ember layer profile]   %-22s %8.1f us/call  %6.2f us/layer  %5.1f layers/call\n",
                   layer_kind_name(kind), total / static_cast<double>(calls_),
                   total / static_cast<double>(n),
                   static_cast<double>(n) / static_cast<double>(calls_));
    }
  }
  std::mutex mu_;
  std::map<LayerKind, std::pair<double, int64_t>> totals_;
  double call_us_ = 0.0;
  int64_t calls_ = 0;
};

double micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void execute_layers(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                    const std::vector<void*>& addrs, const SymbolBindings* symbols,
                    const DeviceWeights& weights, ContextState& state, cudaStream_t stream) {
  std::vector<DeviceTensor> views(dims.size());
  for (const Tensor* t : net.tensors()) {
    views[t->id()] = DeviceTensor{t->dtype(), dims[t->id()], addrs[t->id()]};
  }
  HostProfile* profile = capturing(stream) ? nullptr : HostProfile::get();
  const auto call_start = std::chrono::steady_clock::now();
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
    const auto layer_start = std::chrono::steady_clock::now();
    try {
      std::visit([&args](const auto& p) { run(p, args); }, l->params());
    } catch (const Error& e) {
      throw Error(l->describe() + " (cuda): " + e.what());
    }
    if (profile != nullptr) profile->add(l->kind(), micros_since(layer_start));
  }
  if (profile != nullptr) profile->add_call(micros_since(call_start));
}

}  // namespace ember::engine::cuda
