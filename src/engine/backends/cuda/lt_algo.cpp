// cuBLASLt's algorithm choice (see lt_algo.h).
#include "backends/cuda/lt_algo.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backends/cuda/linear_kernels.h"

namespace ember::engine::cuda {

namespace {

void pref_check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("cuBLASLt (cuda): ") + what +
                " failed: " + cublasLtGetStatusString(status));
  }
}

/// Milliseconds of two launches of `algo` after one warm-up, or a negative value when a launch
/// fails (the candidate is then skipped).
float time_candidate(const LtCall& call, const cublasLtMatmulAlgo_t& algo, void* d,
                     TacticTimer& t) {
  if (call.run(algo, d) != CUBLAS_STATUS_SUCCESS) return -1.0f;
  return time_launches(t, call.stream, [&] { return call.run(algo, d) == CUBLAS_STATUS_SUCCESS; });
}

}  // namespace

int lt_candidates() {
  const char* v = std::getenv("EMBER_LT_CANDIDATES");
  if (v == nullptr) return kLtCandidates;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || n < 1 || n > 64) {
    throw Error(std::string("EMBER_LT_CANDIDATES='") + v + "': expected a count from 1 to 64");
  }
  return static_cast<int>(n);
}

LtPreference::LtPreference(uint64_t workspace_bytes, uint32_t align_a, uint32_t align_b,
                           uint32_t align_cd) {
  pref_check(cublasLtMatmulPreferenceCreate(&h), "cublasLtMatmulPreferenceCreate");
  const auto set = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* v, size_t size,
                       const char* what) {
    const cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(h, attr, v, size);
    if (st != CUBLAS_STATUS_SUCCESS) {
      cublasLtMatmulPreferenceDestroy(h);
      h = nullptr;
      pref_check(st, what);
    }
  };
  set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof workspace_bytes,
      "set workspace preference");
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a, "set alignment A");
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b, "set alignment B");
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_cd, sizeof align_cd, "set alignment C");
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_cd, sizeof align_cd, "set alignment D");
}

LtPreference::~LtPreference() {
  if (h != nullptr) cublasLtMatmulPreferenceDestroy(h);
}

std::optional<cublasLtMatmulAlgo_t> choose_lt_algo(const LtCall& call,
                                                   cublasLtMatmulPreference_t pref,
                                                   const LtProblem& p, const CudaArgs& args,
                                                   std::string* why) {
  TimingCache* cache = p.key.empty() ? nullptr : args.res->timing_cache();
  const std::string* device = cache != nullptr ? &timing_device_key() : nullptr;
  if (cache != nullptr) {
    bool checked = false;
    const auto choice = cache->lookup(*device, p.key, &checked);
    if (choice && choice->size() == sizeof(cublasLtMatmulAlgo_t)) {
      cublasLtMatmulAlgo_t algo;
      std::memcpy(&algo, choice->data(), sizeof algo);
      if (checked) return algo;
      cublasLtMatmulHeuristicResult_t result{};
      if (cublasLtMatmulAlgoCheck(call.handle, call.op, call.first, call.second, call.out, call.out,
                                  &algo, &result) == CUBLAS_STATUS_SUCCESS &&
          result.workspaceSize <= call.workspace_bytes) {
        cache->mark_checked(*device, p.key);
        return algo;
      }
      // Another library version or corrupt bytes: time the problem again below.
    }
  }
  // Timing needs the whole list; a capture or a call without a cache takes the first usable one.
  const bool timing = cache != nullptr && !capturing(call.stream);
  const int wanted = timing ? lt_candidates() : kLtCandidates;
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(wanted));
  int returned = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(call.handle, call.op, call.first, call.second, call.out,
                                     call.out, pref, wanted, results.data(), &returned);
  const auto no_algorithm = [&](std::string reason) -> std::optional<cublasLtMatmulAlgo_t> {
    if (tactic_log()) {
      std::fprintf(stderr, "[ember tactic] %s: no algorithm: %s\n",
                   (p.key.empty() ? p.what : p.key).c_str(), reason.c_str());
    }
    if (why != nullptr) *why = std::move(reason);
    return std::nullopt;
  };
  if (st != CUBLAS_STATUS_SUCCESS) {
    return no_algorithm(std::string("heuristic: ") + cublasLtGetStatusString(st));
  }
  if (returned == 0) return no_algorithm("the heuristic offers none");
  const auto usable = [&](int i) {
    return results[i].state == CUBLAS_STATUS_SUCCESS &&
           results[i].workspaceSize <= call.workspace_bytes;
  };
  int first = 0;
  while (first < returned && !usable(first)) ++first;
  if (first == returned) {
    return no_algorithm("none of the heuristic's " + std::to_string(returned) +
                        " candidates fits the workspace");
  }
  if (!timing) return results[first].algo;
  int best = first;
  if (returned > 1) {
    TacticTimer timer;
    // D = alpha AB + beta C: repeated launches are harmless unless C is read and overlaps D
    // (an in-place residual), which would accumulate; time into scratch then.
    void* d = p.d;
    const auto* c0 = static_cast<const uint8_t*>(call.c);
    const auto* d0 = static_cast<const uint8_t*>(p.d);
    if (p.reads_c && c0 < d0 + p.d_bytes && d0 < c0 + p.d_bytes) {
      timer.scratch = DeviceBuffer(args.res->allocator(), p.d_bytes, "tactic timing scratch");
      d = timer.scratch.get();
    }
    float best_ms = -1.0f;
    best = -1;
    const bool log = tactic_log();
    const SideStream side_stream;
    cudaStream_t side = side_stream.s;
    for (int i = first; i < returned; ++i) {
      if (!usable(i)) continue;
      const float timed = time_candidate(call, results[i].algo, d, timer);
      LtCall on_side = call;
      on_side.stream = side;
      const int extra = timed < 0.0f ? 0 : non_kernel_nodes(side, [&] {
        return on_side.run(results[i].algo, d) == CUBLAS_STATUS_SUCCESS;
      });
      // time_candidate times two launches: two launches' extra nodes.
      const float ms = timed < 0.0f ? timed : timed + 2.0f * non_kernel_node_ms() * extra;
      if (log) {
        std::fprintf(stderr,
                     "[ember tactic] %s: candidate %d of %d: %.4f ms, %d memset/copy node(s), "
                     "workspace %zu B%s\n",
                     p.key.c_str(), i, returned, ms, extra, results[i].workspaceSize,
                     timed < 0.0f ? " (failed to launch)" : "");
      }
      if (ms >= 0.0f && (best < 0 || ms < best_ms)) {
        best = i;
        best_ms = ms;
      }
    }
    if (log && best >= 0) {
      std::fprintf(stderr, "[ember tactic] %s: chose candidate %d (%.4f ms; the heuristic's first: "
                   "%d)\n", p.key.c_str(), best, best_ms, first);
    }
    // Nothing was enqueued by a candidate that failed to launch: the caller may still take
    // another path (the quantized products' f32 sums or direct kernel).
    if (best < 0) {
      return no_algorithm("none of the heuristic's " + std::to_string(returned) +
                          " candidates ran");
    }
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(&results[best].algo);
  cache->store(*device, p.key, std::vector<uint8_t>(bytes, bytes + sizeof(cublasLtMatmulAlgo_t)));
  cache->note_timed();
  return results[best].algo;
}

}  // namespace ember::engine::cuda
