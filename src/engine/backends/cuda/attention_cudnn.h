// Attention through cuDNN's fused scaled-dot-product attention (the SDPA graph of the cuDNN
// frontend; attention_cudnn.cpp), beside Ember's own kernels (attention.cu).
//
// Why: on an H100 (2026-12-06, bench/attention_bench.py) cuDNN's SDPA ran BERT's attention
// (32x12x128x64) in 10.7 us against 22.3 us for Ember's 64-query kernel, and the long causal rows
// 2.5 to 3.2x faster: its Hopper kernels use wgmma and TMA, which Ember's mma.sync kernels do not.
//
// Which runs: by default (EMBER_CUDNN_ATTENTION unset, timed or 1), attention.cu asks this path
// first for every f16/bf16 Attention layer. It takes a problem when cuDNN covers it (no mask
// input, 16-byte aligned operands with strides that are multiples of 8 elements, cuDNN builds a
// plan for it) and, with a timing cache (every "cuda" build on a GPU has one), when cuDNN's plan
// measures faster than Ember's kernel on the real operands; the choice is stored in the cache,
// so the plan keeps it. =force takes cuDNN for every covered problem without timing (tests, A/B
// timing). 0 or off: Ember's kernels only. Any other value is an error.
// With EMBER_CUDA_PREPARED=0 (nothing kept per layer) the path is off too.
//
// Measured inside Python on an H100 (2026-12-06, bench/variants.py half against
// half_cudnn_timed, b32): BERT 2.067 -> 1.978 ms, GPT-2 1.803 -> 1.726, ViT-B/16 3.675 -> 3.354.
//
// iostreams: the GPU machine's compiler links libstdc++ statically, and the copy inside
// libember.so, its symbols once exported, was half-bound to the system's libstdc++.so.6 that
// torch had loaded; the frontend's `tag << engineId` crashed in the locale code. The copy's
// symbols are local (ember_private_runtime in CMakeLists.txt), and the path switches itself off,
// with a warning, where iostreams still fail (runtime/iostreams_check.h).
//
// No cuDNN header here: the tests include this file for the counters below.
#pragma once

#include <cstdint>
#include <functional>

#include "backends/attention_geometry.h"
#include "backends/cuda/cuda_backend.h"

// attention_cudnn.cpp is compiled with hidden visibility (see CMakeLists.txt): what code outside
// libember.so calls is marked visible.
#define EMBER_ATTENTION_CUDNN_API __attribute__((visibility("default")))

namespace ember::engine::cuda {

/// Whether this build has the path (compiled with the cuDNN frontend's headers) and
/// EMBER_CUDNN_ATTENTION does not turn it off. Read on each call, so one process can compare
/// the settings.
EMBER_ATTENTION_CUDNN_API bool cudnn_attention_enabled();

/// What run_attention_cudnn did.
enum class CudnnAttentionStatus {
  kRan,         ///< cuDNN's plan is enqueued: the output is written.
  kOwnKernel,   ///< The caller runs Ember's kernel: not covered, refused, or measured slower.
};

/// Runs one Attention layer (`geo` from attention_geometry, inputs as CudaArgs hold them) through
/// cuDNN when it covers and was chosen for the problem. `own` enqueues Ember's kernel for the same
/// call; it is used for tactic timing only (the caller runs it on kOwnKernel).
/// The first call of a problem builds cuDNN's plan (outside stream captures; a capture before any
/// eager call takes Ember's kernel) and shares it with the context's other layers of the same
/// problem; later calls compare the problem with the layer's last one and enqueue.
CudnnAttentionStatus run_attention_cudnn(const AttentionParams& p, const CudaArgs& a,
                                         const AttentionGeometry& geo,
                                         const std::function<void()>& own);

/// Process-wide counts of this path's work, for tests and profiling.
struct CudnnAttentionCounters {
  int64_t plans = 0;       ///< cuDNN SDPA plans built (one per context and problem).
  int64_t refusals = 0;    ///< Problems cuDNN built no plan for (Ember's kernel runs them).
  int64_t timed = 0;       ///< Problems timed against Ember's kernel.
  int64_t own_faster = 0;  ///< Of those, problems where Ember's kernel measured faster.
  int64_t executions = 0;  ///< Layer calls cuDNN ran (timing excluded).
};

/// The counters so far (atomic reads; they only grow).
EMBER_ATTENTION_CUDNN_API CudnnAttentionCounters cudnn_attention_counters();

}  // namespace ember::engine::cuda
