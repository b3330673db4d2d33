// Memset and copy nodes of a captured CUDA graph rewritten as kernel nodes.
//
// cuBLASLt algorithms that take a small workspace and cuDNN's SDPA zero it with a memset, and
// reshapes and identities copy with cudaMemcpyAsync; captured, these become memset and memcpy
// nodes. In GPT-2 b32's replay on an H100 (bench/kernel_profile.py --sequence, 2026-12-07) each
// memset node ran 0.7 us, but the GPU idled ~1.3 us before it and ~2.5 us after it, where two
// kernel nodes in a row are ~0.1 us apart: 24 memsets cost ~0.1 ms of a 1.57 ms call. The same
// writes done by a kernel node keep the replay on the kernel-to-kernel path.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backends/cuda/device_common.cuh"

namespace ember::engine::cuda {

namespace {

/// What a memset node writes: `height` rows of `width` elements of `element_size` bytes, each
/// `pitch` bytes apart, every element `value` (its low bytes).
struct MemsetArgs {
  uint8_t* dst;
  size_t pitch;
  uint32_t value;
  unsigned element_size;
  size_t width, height;
};

/// The byte at offset `b` of a run of `element_size`-byte elements each `value` (little-endian).
__device__ __forceinline__ uint8_t memset_byte(const MemsetArgs& m, size_t b) {
  return static_cast<uint8_t>(m.value >> (8 * (b % m.element_size)));
}

__global__ void graph_memset_kernel(MemsetArgs m) {
  const size_t row = m.width * m.element_size;
  if (m.height == 1 || m.pitch == row) {
    // One contiguous run (what cudaMemsetAsync captures: 1-byte elements, one row): 16 bytes a
    // store from a 16-byte aligned start, the bytes before it and after the last whole word one
    // at a time. The element pattern repeats every 1, 2 or 4 bytes, so every aligned word holds
    // the same 16 bytes.
    const size_t bytes = row * m.height;
    const size_t head = (16 - reinterpret_cast<uintptr_t>(m.dst) % 16) % 16;
    const size_t lead = head < bytes ? head : bytes;
    const size_t words = (bytes - lead) / 16;
    uint32_t w = 0;
    for (int b = 3; b >= 0; --b) w = (w << 8) | memset_byte(m, lead + static_cast<size_t>(b));
    const uint4 v = make_uint4(w, w, w, w);
    auto* body = reinterpret_cast<uint4*>(m.dst + lead);
    for (int64_t i = global_thread(); i < static_cast<int64_t>(words); i += grid_threads()) {
      body[i] = v;
    }
    const size_t tail = lead + words * 16;
    for (int64_t i = global_thread(); i < static_cast<int64_t>(lead + bytes - tail);
         i += grid_threads()) {
      const size_t b = static_cast<size_t>(i) < lead ? static_cast<size_t>(i)
                                                      : tail + static_cast<size_t>(i) - lead;
      m.dst[b] = memset_byte(m, b);
    }
    return;
  }
  // Pitched rows (cudaMemset2DAsync): one element a thread.
  const int64_t n = static_cast<int64_t>(m.width * m.height);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    uint8_t* p = m.dst + static_cast<size_t>(i) / m.width * m.pitch +
                 static_cast<size_t>(i) % m.width * m.element_size;
    if (m.element_size == 4) {
      *reinterpret_cast<uint32_t*>(p) = m.value;
    } else if (m.element_size == 2) {
      *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(m.value);
    } else {
      *p = static_cast<uint8_t>(m.value);
    }
  }
}

struct CopyArgs {
  uint8_t* dst;
  const uint8_t* src;
  size_t bytes;
};

__global__ void graph_copy_kernel(CopyArgs c) {
  if ((reinterpret_cast<uintptr_t>(c.dst) | reinterpret_cast<uintptr_t>(c.src) | c.bytes) % 16 ==
      0) {
    const int64_t n = static_cast<int64_t>(c.bytes / 16);
    for (int64_t i = global_thread(); i < n; i += grid_threads()) {
      reinterpret_cast<uint4*>(c.dst)[i] = reinterpret_cast<const uint4*>(c.src)[i];
    }
    return;
  }
  const int64_t n = static_cast<int64_t>(c.bytes);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) c.dst[i] = c.src[i];
}

/// A node's incoming and outgoing edges, when all are plain (no programmatic or port data):
/// only those are moved onto the kernel node.
struct Edges {
  std::vector<cudaGraphNode_t> in, out;
};

bool plain(const std::vector<cudaGraphEdgeData>& edges) {
  for (const cudaGraphEdgeData& e : edges) {
    if (e.type != cudaGraphDependencyTypeDefault || e.from_port != 0 || e.to_port != 0) {
      return false;
    }
  }
  return true;
}

bool plain_edges(cudaGraphNode_t node, Edges& e) {
  size_t n_in = 0, n_out = 0;
  if (cudaGraphNodeGetDependencies(node, nullptr, nullptr, &n_in) != cudaSuccess ||
      cudaGraphNodeGetDependentNodes(node, nullptr, nullptr, &n_out) != cudaSuccess) {
    return false;
  }
  e.in.resize(n_in);
  e.out.resize(n_out);
  std::vector<cudaGraphEdgeData> in_data(n_in), out_data(n_out);
  if ((n_in > 0 && cudaGraphNodeGetDependencies(node, e.in.data(), in_data.data(), &n_in) !=
                       cudaSuccess) ||
      (n_out > 0 && cudaGraphNodeGetDependentNodes(node, e.out.data(), out_data.data(), &n_out) !=
                        cudaSuccess)) {
    return false;
  }
  return plain(in_data) && plain(out_data);
}

/// Puts a kernel node with `params` in `node`'s place (same edges) and removes `node`. False,
/// with the graph as it was, when a step fails.
bool replace(cudaGraph_t graph, cudaGraphNode_t node, const cudaKernelNodeParams& params) {
  Edges e;
  if (!plain_edges(node, e)) return false;
  cudaGraphNode_t k = nullptr;
  if (cudaGraphAddKernelNode(&k, graph, e.in.data(), e.in.size(), &params) != cudaSuccess) {
    return false;
  }
  if (!e.out.empty()) {
    const std::vector<cudaGraphNode_t> from(e.out.size(), k);
    if (cudaGraphAddDependencies(graph, from.data(), e.out.data(), nullptr, e.out.size()) !=
        cudaSuccess) {
      cudaGraphDestroyNode(k);
      return false;
    }
  }
  // Were this to fail, the node and its kernel would both run, writing the same bytes.
  cudaGraphDestroyNode(node);
  return true;
}

cudaKernelNodeParams kernel_params(void* func, int64_t work, void** args) {
  cudaKernelNodeParams p{};
  p.func = func;
  p.gridDim = dim3(grid_for(work));
  p.blockDim = dim3(kThreads);
  p.sharedMemBytes = 0;
  p.kernelParams = args;
  p.extra = nullptr;
  return p;
}

/// Memory of the current device (not host, managed or another GPU's memory).
bool device_memory(const void* p) {
  cudaPointerAttributes a{};
  int device = -1;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess || cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice && a.device == device;
}

bool replace_memset(cudaGraph_t graph, cudaGraphNode_t node) {
  cudaMemsetParams p{};
  if (cudaGraphMemsetNodeGetParams(node, &p) != cudaSuccess) return false;
  if (p.elementSize != 1 && p.elementSize != 2 && p.elementSize != 4) return false;
  if (p.width == 0 || p.height == 0 || !device_memory(p.dst)) return false;
  MemsetArgs m{static_cast<uint8_t*>(p.dst), p.pitch, p.value, p.elementSize, p.width, p.height};
  void* args[] = {&m};
  const int64_t work = static_cast<int64_t>(p.width * p.height);
  return replace(graph, node,
                 kernel_params(reinterpret_cast<void*>(&graph_memset_kernel), work, args));
}

/// A misaligned copy runs a byte a thread; beyond this size it keeps its copy node.
constexpr size_t kMaxByteCopy = size_t{64} << 10;

/// Only flat copies between two buffers of this device (what cudaMemcpyAsync of device memory
/// captures): arrays, pitched regions, host and peer memory keep their copy node.
bool replace_copy(cudaGraph_t graph, cudaGraphNode_t node) {
  cudaMemcpy3DParms p{};
  if (cudaGraphMemcpyNodeGetParams(node, &p) != cudaSuccess) return false;
  if (p.srcArray != nullptr || p.dstArray != nullptr) return false;
  if (p.extent.height != 1 || p.extent.depth != 1 || p.extent.width == 0) return false;
  if (p.srcPos.y != 0 || p.srcPos.z != 0 || p.dstPos.y != 0 || p.dstPos.z != 0) return false;
  // Linear memory: extent.width and pos.x are in bytes.
  auto* src = static_cast<const uint8_t*>(p.srcPtr.ptr) + p.srcPos.x;
  auto* dst = static_cast<uint8_t*>(p.dstPtr.ptr) + p.dstPos.x;
  if (p.kind != cudaMemcpyDeviceToDevice && p.kind != cudaMemcpyDefault) return false;
  if (!device_memory(src) || !device_memory(dst)) return false;
  CopyArgs c{dst, src, p.extent.width};
  const bool vectors =
      (reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | c.bytes) % 16 == 0;
  if (!vectors && c.bytes > kMaxByteCopy) return false;
  void* args[] = {&c};
  const int64_t work = static_cast<int64_t>(vectors ? c.bytes / 16 : c.bytes);
  return replace(graph, node,
                 kernel_params(reinterpret_cast<void*>(&graph_copy_kernel), work, args));
}

}  // namespace

bool graph_node_kernels_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("EMBER_GRAPH_NODE_KERNELS");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

int kernelize_graph_nodes(cudaGraph_t graph) {
  size_t n = 0;
  if (cudaGraphGetNodes(graph, nullptr, &n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return 0;
  }
  std::vector<cudaGraphNode_t> nodes(n);
  if (cudaGraphGetNodes(graph, nodes.data(), &n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  int replaced = 0;
  bool kept = false;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type;
    if (cudaGraphNodeGetType(node, &type) != cudaSuccess) {
      kept = true;
      continue;
    }
    if (type != cudaGraphNodeTypeMemset && type != cudaGraphNodeTypeMemcpy) continue;
    if ((type == cudaGraphNodeTypeMemset ? replace_memset(graph, node)
                                         : replace_copy(graph, node))) {
      ++replaced;
    } else {
      kept = true;
    }
  }
  // A node kept because a call failed left the graph as it was: clear that call's error.
  if (kept) cudaGetLastError();
  return replaced;
}

}  // namespace ember::engine::cuda
