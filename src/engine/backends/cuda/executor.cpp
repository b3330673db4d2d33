// The CUDA back end's executor: device weights, the per-context arena and resources, and the
// layer loop.
#include <cublasLt.h>
#include <cudnn.h>

#include <cstring>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) + " (" +
                cudaGetErrorString(status) + ")");
  }
}

int64_t DeviceTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// ---------------------------------------------------------------- Resources

Resources::~Resources() {
  // Destructors must not throw: errors here are ignored (the context is going away).
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (staging_ != nullptr) cudaFreeHost(staging_);
  if (cublaslt_ != nullptr) cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
  if (cudnn_ != nullptr) cudnnDestroy(static_cast<cudnnHandle_t>(cudnn_));
}

void* Resources::workspace(size_t bytes) {
  if (bytes > workspace_bytes_) {
    // Work already enqueued may still use the old buffer.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (workspace growth)");
    if (workspace_ != nullptr) check(cudaFree(workspace_), "cudaFree (workspace)");
    workspace_ = nullptr;
    check(cudaMalloc(&workspace_, bytes), "cudaMalloc (workspace)");
    workspace_bytes_ = bytes;
  }
  return workspace_;
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

DeviceWeights::DeviceWeights(const Network& net) {
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
  check(cudaMalloc(&base_, static_cast<size_t>(total)), "cudaMalloc (engine weights)");
  for (const Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kConstant) continue;
    const auto& w = l->params_as<ConstantParams>().weights;
    if (w.nbytes() == 0) continue;
    check(cudaMemcpy(static_cast<uint8_t*>(base_) + offsets_[l->output()->id()], w.data(),
                     w.nbytes(), cudaMemcpyHostToDevice),
          "cudaMemcpy (engine weights upload)");
  }
}

DeviceWeights::~DeviceWeights() {
  if (base_ != nullptr) cudaFree(base_);
}

void* DeviceWeights::address(int tensor_id) const {
  if (tensor_id < 0 || static_cast<size_t>(tensor_id) >= offsets_.size()) return nullptr;
  const int64_t off = offsets_[tensor_id];
  return off < 0 ? nullptr : static_cast<uint8_t*>(base_) + off;
}

// ---------------------------------------------------------------- ContextState

ContextState::ContextState(int64_t arena_bytes) {
  if (arena_bytes > 0) {
    check(cudaMalloc(&arena_, static_cast<size_t>(arena_bytes)), "cudaMalloc (activation arena)");
  }
}

ContextState::~ContextState() {
  if (arena_ != nullptr) cudaFree(arena_);
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
