// Captured memset and copy nodes rewritten as kernel nodes (graph_nodes.cu): the rewritten graph
// writes the same bytes in the same order, and the nodes it cannot rewrite (a host copy) stay.
// Skipped (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::cuda_ok;

std::map<cudaGraphNodeType, int> node_types(cudaGraph_t g) {
  size_t n = 0;
  cuda_ok(cudaGraphGetNodes(g, nullptr, &n), "cudaGraphGetNodes");
  std::vector<cudaGraphNode_t> nodes(n);
  cuda_ok(cudaGraphGetNodes(g, nodes.data(), &n), "cudaGraphGetNodes");
  std::map<cudaGraphNodeType, int> out;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType t;
    cuda_ok(cudaGraphNodeGetType(node, &t), "cudaGraphNodeGetType");
    ++out[t];
  }
  return out;
}

std::vector<uint8_t> read(const void* p, size_t n) {
  std::vector<uint8_t> h(n);
  cuda_ok(cudaMemcpy(h.data(), p, n, cudaMemcpyDeviceToHost), "cudaMemcpy");
  return h;
}

TEST(CudaGraphNodes, MemsetsAndDeviceCopiesBecomeKernelsThatWriteTheSameBytes) {
  EMBER_SKIP_WITHOUT_CUDA();
  constexpr size_t kBytes = 4096, kPitch = 256;
  uint8_t *a = nullptr, *b = nullptr, *c = nullptr, *d = nullptr;
  for (uint8_t** p : {&a, &b, &c, &d}) cuda_ok(cudaMalloc(reinterpret_cast<void**>(p), kBytes), "cudaMalloc");
  std::vector<uint8_t> host(kBytes);
  for (size_t i = 0; i < kBytes; ++i) host[i] = static_cast<uint8_t>(i * 7 + 3);
  for (uint8_t* p : {a, b, c, d}) cuda_ok(cudaMemset(p, 0, kBytes), "cudaMemset");
  cuda_ok(cudaMemcpy(b, host.data(), kBytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  uint8_t* pinned = nullptr;
  cuda_ok(cudaMallocHost(reinterpret_cast<void**>(&pinned), 64), "cudaMallocHost");
  for (int i = 0; i < 64; ++i) pinned[i] = 0x5a;

  cudaStream_t s = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  cuda_ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  cudaMemsetAsync(a, 0x7f, 37, s);                       // bytes, odd count
  cudaMemsetAsync(a + 64, 0, 4, s);                      // the 4-byte workspace kind
  cudaMemset2DAsync(a + 1024, kPitch, 0x11, 10, 3, s);   // pitched: 3 rows of 10 bytes
  cudaMemsetAsync(a + 2051, 0x3c, 1000, s);  // unaligned start: head bytes, 16-byte words, tail
  cudaMemcpyAsync(c, a, kBytes, cudaMemcpyDeviceToDevice, s);  // after the memsets: edges kept
  cudaMemcpyAsync(d + 1, b + 3, 101, cudaMemcpyDefault, s);    // unaligned, kind Default
  cudaMemcpyAsync(d + 2048, b, 2048, cudaMemcpyDeviceToDevice, s);
  cudaMemcpyAsync(d + 1024, pinned, 64, cudaMemcpyHostToDevice, s);  // stays a copy
  cudaGraph_t graph = nullptr;
  cuda_ok(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");

  const auto before = node_types(graph);
  EXPECT_EQ(before.at(cudaGraphNodeTypeMemset), 4);
  EXPECT_EQ(before.at(cudaGraphNodeTypeMemcpy), 4);
  EXPECT_EQ(cuda::kernelize_graph_nodes(graph), 7);
  const auto after = node_types(graph);
  EXPECT_EQ(after.count(cudaGraphNodeTypeMemset), 0u);
  EXPECT_EQ(after.at(cudaGraphNodeTypeMemcpy), 1);  // the host copy
  EXPECT_EQ(after.at(cudaGraphNodeTypeKernel), 7);

  cudaGraphExec_t exec = nullptr;
  cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cuda_ok(cudaGraphLaunch(exec, s), "cudaGraphLaunch");
  cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize");

  std::vector<uint8_t> want_a(kBytes, 0);
  for (size_t i = 0; i < 37; ++i) want_a[i] = 0x7f;
  for (size_t r = 0; r < 3; ++r) {
    for (size_t i = 0; i < 10; ++i) want_a[1024 + r * kPitch + i] = 0x11;
  }
  for (size_t i = 0; i < 1000; ++i) want_a[2051 + i] = 0x3c;
  std::vector<uint8_t> want_d(kBytes, 0);
  for (size_t i = 0; i < 101; ++i) want_d[1 + i] = host[3 + i];
  for (size_t i = 0; i < 64; ++i) want_d[1024 + i] = 0x5a;
  for (size_t i = 0; i < 2048; ++i) want_d[2048 + i] = host[i];
  EXPECT_EQ(read(a, kBytes), want_a);
  EXPECT_EQ(read(c, kBytes), want_a);  // copied after the memsets ran
  EXPECT_EQ(read(d, kBytes), want_d);

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  for (uint8_t* p : {a, b, c, d}) cudaFree(p);
  cudaFreeHost(pinned);
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
