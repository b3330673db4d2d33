// cuBLASLt's algorithm choice (tactics), shared by the float GEMMs (linear.cpp) and the INT8 and
// FP8 ones (quantized_matmul.cpp, and through it the quantized convolutions' im2col GEMMs).
//
// The first eager call of a problem times up to kLtCandidates of cuBLASLt's heuristic candidates
// on the real operands, and the winner goes into the engine's TimingCache under a key naming the
// problem, not the layer; later calls, captures and engines loaded from a plan that carries the
// choice look it up. A choice loaded from bytes is checked against the library before its first
// use. A call being captured into a CUDA graph cannot synchronize: it takes the heuristic's first
// candidate and stores nothing.
//
// EMBER_LT_SEARCH=wide widens the timed set the way TensorRT's higher builder optimization
// levels do: besides the heuristic's list, the best configurations cuBLASLt's heuristic finds
// for every algorithm id it has for the problem's types, and the fastest of those with other
// cluster shapes, CTA swizzles and split-K counts (cublasLtMatmulAlgoCheck keeps those that
// run). Every candidate is timed once; the fastest few are timed again over more launches, so
// the winner is not a one-off reading among hundreds.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

/// Candidates from cuBLASLt's heuristic that are timed on a problem's first eager call, unless
/// EMBER_LT_CANDIDATES (1 to 64, read at each timing; the A/B of how far down the heuristic's
/// list the fastest algorithm sits) says otherwise.
inline constexpr int kLtCandidates = 8;
int lt_candidates();

/// How widely the first eager call of a problem searches: kHeuristic times the heuristic's first
/// lt_candidates(); kWide adds every algorithm id's configurations and their variants (see the
/// file comment). EMBER_LT_SEARCH="heuristic" (the default) or "wide", read at each timing; any
/// other value is an error.
enum class LtSearch { kHeuristic, kWide };
LtSearch lt_search();

/// Largest power of two (at most 256) dividing every one of `bytes` (0 entries ignored): the
/// alignment cuBLASLt's heuristic is told the operands have (it assumes 256 otherwise, and an
/// algorithm that needs more than the operands have would fault).
inline uint32_t alignment_of(std::initializer_list<uint64_t> bytes) {
  uint32_t a = 256;
  for (uint64_t b : bytes) {
    while (b != 0 && b % a != 0) a /= 2;
  }
  return a;
}

/// The operands and descriptors of one cuBLASLt call (C and D share the `out` layout); run()
/// launches it with one algorithm, writing D to `d`.
struct LtCall {
  cublasLtHandle_t handle;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t first, second, out;
  const void* alpha;  ///< Of the descriptor's scale type (f32, or int32 for INT8 sums).
  const void* beta;
  const void* first_data;   ///< The library's A.
  const void* second_data;  ///< The library's B.
  const void* c;
  void* workspace;
  size_t workspace_bytes;
  cudaStream_t stream;
  cublasStatus_t run(const cublasLtMatmulAlgo_t& algo, void* d) const {
    return cublasLtMatmul(handle, op, alpha, first_data, first, second_data, second, beta, c, out,
                          d, out, &algo, workspace, workspace_bytes, stream);
  }
};

/// The problem around one LtCall, as choose_lt_algo needs it.
struct LtProblem {
  std::string key;       ///< The timing-cache key (names the problem, not the layer); "": none.
  std::string what;      ///< Names the problem in errors: "MatrixMultiply (cuda): m=8 n=16 ...".
  void* d = nullptr;     ///< D. Timing writes here unless C is read and overlaps it (an in-place
  size_t d_bytes = 0;    ///< residual, which repeated launches would accumulate): then to scratch.
  bool reads_c = false;  ///< beta is not 0.
};

/// A preference with `workspace_bytes` and the four operands' alignments (alignment_of).
struct LtPreference {
  cublasLtMatmulPreference_t h = nullptr;
  LtPreference(uint64_t workspace_bytes, uint32_t align_a, uint32_t align_b, uint32_t align_cd);
  ~LtPreference();
  LtPreference(const LtPreference&) = delete;
  LtPreference& operator=(const LtPreference&) = delete;
};

/// The algorithm for `call`: the timing cache's choice, else (eager calls with a cache) the
/// fastest of up to lt_candidates() timed candidates, stored in the cache, else the heuristic's
/// first. nullopt, with nothing enqueued, when there is none to take (the heuristic's status,
/// no candidate that fits the workspace, or none of them launched: said in `*why` when given).
std::optional<cublasLtMatmulAlgo_t> choose_lt_algo(const LtCall& call,
                                                   cublasLtMatmulPreference_t pref,
                                                   const LtProblem& p, const CudaArgs& args,
                                                   std::string* why = nullptr);

}  // namespace ember::engine::cuda
