// Hand-written kernels of the linear family (linear_kernels.cu), called from linear.cpp and
// conv_graph.cpp where cuBLASLt/cuDNN do the heavy lifting, and the tactic timer both cuDNN paths
// and cuBLASLt time their candidates with.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

/// Sets every plane of out [batch, channels, plane] (f32/f16/bf16) to its channel's bias
/// (same dtype), so a library call can accumulate onto it with beta = 1 and round only once.
void launch_fill_channel_bias(DataType dtype, void* out, const void* bias, int64_t batch,
                              int64_t channels, int64_t plane, cudaStream_t stream);

/// The fused epilogue on a finished product y (f32/f16/bf16), in place:
/// y = act(y + bias[(i / plane) % channels] + residual[i]) (y as [outer, channels, plane]; plane
/// 1 for a matrix product with the bias along its rows). bias, residual and activation
/// (used when activation->fused_activation) may each be absent (nullptr).
void launch_epilogue(DataType dtype, void* y, const void* bias, int64_t channels, int64_t plane,
                     const void* residual, const Epilogue* activation, int64_t total,
                     cudaStream_t stream);

/// True when the direct depthwise kernel (depthwise_conv.cu) covers a Convolution: 2-d
/// channels_last, float types, groups == input channels == output channels, x and y non-empty.
bool depthwise_conv_covers(const ConvolutionParams& p, const DeviceTensor& x,
                           const DeviceTensor& w, const DeviceTensor& y);

/// y = act(scale * conv(x, w) + bias + residual) for a depthwise convolution the kernel covers
/// (bias [C] and residual [N, OH, OW, C] optional, nullptr when absent), rounded once.
void launch_depthwise_conv(const ConvolutionParams& p, const DeviceTensor& x,
                           const DeviceTensor& w, DeviceTensor& y, const void* bias,
                           const void* residual, cudaStream_t stream);

/// Launches of the direct depthwise kernel in this process (for tests: which path ran).
int64_t depthwise_conv_launches();

/// Holds a stream while tactic timing enqueues its launches: hold() queues a one-thread kernel
/// that spins on a host-mapped flag until release() (or 200 ms, so that a library call that
/// synchronizes while the stream is held, or a forgotten release, cannot hang the device). Launches queued behind it then run back to back, and events around
/// them measure GPU time: without it, a library call whose host cost exceeds its kernel time
/// (cuDNN's legacy API spends tens of microseconds per call) is timed by the host's pace, which
/// on 2026-12-04 picked cuDNN's slow implicit_convolve_sgemm for 10 of ResNet-50's convolutions.
class StreamGate {
 public:
  StreamGate();
  ~StreamGate();
  StreamGate(const StreamGate&) = delete;
  StreamGate& operator=(const StreamGate&) = delete;
  void hold(cudaStream_t stream);
  void release();

 private:
  volatile int* host_flag_ = nullptr;
  int* device_flag_ = nullptr;
  cudaStream_t held_ = nullptr;  // the last stream held (waited for before the flag is freed)
  bool held_any_ = false;        // held_ is meaningful (the null stream is a valid stream)
};

/// Owns the CUDA events, the stream gate (see StreamGate) and, for a GEMM, the scratch output of
/// one tactic-timing run.
struct TacticTimer {
  cudaEvent_t start = nullptr, stop = nullptr;
  DeviceBuffer scratch;
  // Declared after scratch so that it is destroyed first: its destructor waits for the stream it
  // held, so the scratch is not freed under queued launches even when a launch threw.
  StreamGate gate;
  TacticTimer() {
    check(cudaEventCreate(&start), "cudaEventCreate (tactic timing)");
    check(cudaEventCreate(&stop), "cudaEventCreate (tactic timing)");
  }
  TacticTimer(const TacticTimer&) = delete;
  TacticTimer& operator=(const TacticTimer&) = delete;
  ~TacticTimer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
};

/// Milliseconds of GPU time of two calls of `launch` (true when it launched) queued behind the
/// stream gate, or a negative value when a call fails (the candidate is then skipped).
template <typename Launch>
float time_launches(TacticTimer& t, cudaStream_t stream, Launch launch) {
  t.gate.hold(stream);
  check(cudaEventRecord(t.start, stream), "cudaEventRecord (tactic timing)");
  const bool ran = launch() && launch();
  const cudaError_t recorded = cudaEventRecord(t.stop, stream);
  t.gate.release();
  check(recorded, "cudaEventRecord (tactic timing)");
  check(cudaEventSynchronize(t.stop), "cudaEventSynchronize (tactic timing)");
  if (!ran) return -1.0f;
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, t.start, t.stop), "cudaEventElapsedTime (tactic timing)");
  return ms;
}

/// A graph node that is not a kernel (a memset, a copy) costs more than its own run: in GPT-2
/// b32's replay on an H100 (bench/kernel_profile.py --sequence, 2026-12-07) each of the 36
/// memsets cuBLASLt and cuDNN's SDPA put before their kernels took 0.7 us, with ~1.3 us idle
/// before it and ~2.2 us more idle before the kernel after it than between two kernels. Tactic
/// timing adds this per such node to a candidate's time (engines replay their layers as CUDA
/// graphs), so a memset-free candidate within ~4 us wins.
inline constexpr float kNonKernelNodeMs = 0.004f;
/// The same node rewritten as a kernel node (graph_nodes.cu): a small kernel's run and launch
/// gap, ~1.5 us. An estimate from the small kernels of the same sequences (1-2 us), not yet
/// measured for the rewritten nodes themselves.
inline constexpr float kKernelizedNodeMs = 0.0015f;

/// What tactic timing adds per memset or copy node: kKernelizedNodeMs while engines rewrite
/// such nodes (the default), kNonKernelNodeMs under EMBER_GRAPH_NODE_KERNELS=0.
inline float non_kernel_node_ms() {
  return graph_node_kernels_enabled() ? kKernelizedNodeMs : kNonKernelNodeMs;
}

/// A stream of its own for non_kernel_nodes' captures, destroyed on every path out (a timing
/// launch may throw); null when none could be made (candidates are then judged by time alone).
struct SideStream {
  cudaStream_t s = nullptr;
  SideStream() {
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
      cudaGetLastError();
      s = nullptr;
    }
  }
  ~SideStream() {
    if (s != nullptr) cudaStreamDestroy(s);
  }
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
};

/// The memset and copy nodes one call of `launch` makes, captured on `stream` (which the launch
/// must enqueue on: a stream of the caller's own, not one in use, so nothing runs); 0 when the
/// capture fails (the candidate is then judged by its time alone).
template <typename Launch>
int non_kernel_nodes(cudaStream_t stream, Launch launch) {
  if (stream == nullptr ||
      cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  bool ran = false;
  try {
    ran = launch();
  } catch (...) {
    ran = false;
  }
  cudaGraph_t graph = nullptr;
  const bool ended = cudaStreamEndCapture(stream, &graph) == cudaSuccess;
  int extra = 0;
  size_t n = 0;
  if (ran && ended && graph != nullptr && cudaGraphGetNodes(graph, nullptr, &n) == cudaSuccess) {
    std::vector<cudaGraphNode_t> nodes(n);
    if (n > 0 && cudaGraphGetNodes(graph, nodes.data(), &n) == cudaSuccess) {
      for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType type;
        if (cudaGraphNodeGetType(node, &type) == cudaSuccess &&
            (type == cudaGraphNodeTypeMemset || type == cudaGraphNodeTypeMemcpy)) {
          ++extra;
        }
      }
    }
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaGetLastError();
  return extra;
}

}  // namespace ember::engine::cuda
