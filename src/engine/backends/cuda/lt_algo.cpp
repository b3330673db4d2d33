// cuBLASLt's algorithm choice (see lt_algo.h).
#include "backends/cuda/lt_algo.h"

#include <algorithm>
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

/// Where timing launches write D. Repeated launches are harmless unless C is read and overlaps
/// D (an in-place residual), which would accumulate: then to scratch held by `timer`.
void* timing_target(const LtCall& call, const LtProblem& p, const CudaArgs& args,
                    TacticTimer& timer) {
  const auto* c0 = static_cast<const uint8_t*>(call.c);
  const auto* d0 = static_cast<const uint8_t*>(p.d);
  if (p.reads_c && c0 < d0 + p.d_bytes && d0 < c0 + p.d_bytes) {
    timer.scratch = DeviceBuffer(args.res->allocator(), p.d_bytes, "tactic timing scratch");
    return timer.scratch.get();
  }
  return p.d;
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


LtSearch lt_search() {
  const char* v = std::getenv("EMBER_LT_SEARCH");
  if (v == nullptr || std::strcmp(v, "heuristic") == 0) return LtSearch::kHeuristic;
  if (std::strcmp(v, "wide") == 0) return LtSearch::kWide;
  throw Error(std::string("EMBER_LT_SEARCH='") + v + "': expected 'heuristic' or 'wide'");
}

namespace {

using LtResult = cublasLtMatmulHeuristicResult_t;

/// Where a wide search's candidate came from (logged with the choice).
enum class LtSource { kHeuristic, kAlgoId, kVariant };
const char* source_name(LtSource s) {
  switch (s) {
    case LtSource::kHeuristic: return "the heuristic's list";
    case LtSource::kAlgoId: return "an algorithm id's configurations";
    case LtSource::kVariant: return "a variant";
  }
  return "?";
}

struct LtCandidate {
  cublasLtMatmulAlgo_t algo;
  size_t workspace = 0;
  LtSource source = LtSource::kHeuristic;
  float ms = -1.0f;  ///< Per launch, memset nodes included; negative: did not run.
};

bool same_algo(const cublasLtMatmulAlgo_t& a, const cublasLtMatmulAlgo_t& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

/// The problem's types as cublasLtMatmulAlgoGetIds and cublasLtMatmulAlgoInit take them, read
/// back from the call's descriptors (C and D share the `out` layout).
struct LtTypes {
  cublasComputeType_t compute;
  cudaDataType_t scale, a, b, cd;
};

bool read_types(const LtCall& call, LtTypes& t) {
  int32_t compute = 0, scale = 0;
  uint32_t a = 0, b = 0, cd = 0;
  size_t written = 0;
  const bool ok =
      cublasLtMatmulDescGetAttribute(call.op, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &compute,
                                     sizeof compute, &written) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescGetAttribute(call.op, CUBLASLT_MATMUL_DESC_SCALE_TYPE, &scale,
                                     sizeof scale, &written) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutGetAttribute(call.first, CUBLASLT_MATRIX_LAYOUT_TYPE, &a, sizeof a,
                                       &written) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutGetAttribute(call.second, CUBLASLT_MATRIX_LAYOUT_TYPE, &b, sizeof b,
                                       &written) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutGetAttribute(call.out, CUBLASLT_MATRIX_LAYOUT_TYPE, &cd, sizeof cd,
                                       &written) == CUBLAS_STATUS_SUCCESS;
  t = {static_cast<cublasComputeType_t>(compute), static_cast<cudaDataType_t>(scale),
       static_cast<cudaDataType_t>(a), static_cast<cudaDataType_t>(b),
       static_cast<cudaDataType_t>(cd)};
  return ok;
}

/// Most candidates a wide search times (the heuristic's list first, then each algorithm id's
/// configurations, then variants), and the configurations asked of each algorithm id.
constexpr size_t kWideMaxCandidates = 1536;
constexpr int kWidePerAlgoId = 16;
/// The fastest of the first timing pass that are timed again, kWideRefineLaunches launches a
/// round, in two interleaved rounds (the per-launch minimum of the two counts).
constexpr size_t kWideRefine = 6;
constexpr int kWideRefineLaunches = 10;

/// Adds `algo` unless it is already there, the workspace does not hold it, or the list is full.
void add_candidate(std::vector<LtCandidate>& list, const cublasLtMatmulAlgo_t& algo,
                   size_t workspace, LtSource source, size_t workspace_limit) {
  if (list.size() >= kWideMaxCandidates || workspace > workspace_limit) return;
  for (const LtCandidate& c : list) {
    if (same_algo(c.algo, algo)) return;
  }
  list.push_back({algo, workspace, source, -1.0f});
}

/// The wide search's additions to `list` (which holds the heuristic's usable candidates):
/// every algorithm id's best configurations (the heuristic limited to that id), then each
/// candidate so far with other cluster shapes, CTA swizzles and split-K counts that
/// cublasLtMatmulAlgoCheck accepts. The preference's search mode is put back on every path.
void add_wide_candidates(const LtCall& call, cublasLtMatmulPreference_t pref,
                         std::vector<LtCandidate>& list) {
  LtTypes t{};
  if (!read_types(call, t)) return;
  std::vector<int> ids(256);
  int n_ids = 0;
  if (cublasLtMatmulAlgoGetIds(call.handle, t.compute, t.scale, t.a, t.b, t.cd, t.cd,
                               static_cast<int>(ids.size()), ids.data(),
                               &n_ids) != CUBLAS_STATUS_SUCCESS) {
    n_ids = 0;
  }
  uint32_t mode = CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID;
  if (n_ids > 0 && cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE,
                                                        &mode, sizeof mode) ==
                       CUBLAS_STATUS_SUCCESS) {
    for (int i = 0; i < n_ids; ++i) {
      cublasLtMatmulAlgo_t init;
      if (cublasLtMatmulAlgoInit(call.handle, t.compute, t.scale, t.a, t.b, t.cd, t.cd, ids[i],
                                 &init) != CUBLAS_STATUS_SUCCESS) {
        continue;
      }
      std::vector<LtResult> r(kWidePerAlgoId);
      for (LtResult& x : r) x.algo = init;
      int returned = 0;
      if (cublasLtMatmulAlgoGetHeuristic(call.handle, call.op, call.first, call.second, call.out,
                                         call.out, pref, kWidePerAlgoId, r.data(),
                                         &returned) != CUBLAS_STATUS_SUCCESS) {
        continue;
      }
      for (int j = 0; j < returned; ++j) {
        if (r[j].state == CUBLAS_STATUS_SUCCESS) {
          add_candidate(list, r[j].algo, r[j].workspaceSize, LtSource::kAlgoId,
                        call.workspace_bytes);
        }
      }
    }
    mode = CUBLASLT_SEARCH_BEST_FIT;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &mode,
                                         sizeof mode);
  }
  // Variants of what was found: the attributes the heuristic sets per problem rather than per
  // kernel. A variant the library rejects fails cublasLtMatmulAlgoCheck and is not timed.
  static constexpr uint16_t kClusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                                           CUBLASLT_CLUSTER_SHAPE_2x1x1,
                                           CUBLASLT_CLUSTER_SHAPE_1x2x1,
                                           CUBLASLT_CLUSTER_SHAPE_2x2x1};
  static constexpr uint32_t kSwizzles[] = {0, 1};
  static constexpr int32_t kSplits[] = {1, 2, 4};
  const size_t bases = list.size();
  for (size_t i = 0; i < bases && list.size() < kWideMaxCandidates; ++i) {
    const cublasLtMatmulAlgo_t base = list[i].algo;
    uint32_t scheme_mask = 0;
    size_t written = 0;
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK,
                                      &scheme_mask, sizeof scheme_mask, &written);
    // The first split-K reduction the algorithm supports (in place, then in the compute type,
    // then in the output type).
    uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
    for (uint32_t s : {uint32_t{CUBLASLT_REDUCTION_SCHEME_INPLACE},
                       uint32_t{CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE},
                       uint32_t{CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE}}) {
      if ((scheme_mask & s) != 0) {
        scheme = s;
        break;
      }
    }
    for (uint16_t cluster : kClusters) {
      for (uint32_t swizzle : kSwizzles) {
        for (int32_t split : kSplits) {
          if (split > 1 && scheme == CUBLASLT_REDUCTION_SCHEME_NONE) continue;
          cublasLtMatmulAlgo_t v = base;
          const uint32_t reduction = split > 1 ? scheme : uint32_t{CUBLASLT_REDUCTION_SCHEME_NONE};
          if (cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                                   &cluster, sizeof cluster) !=
                  CUBLAS_STATUS_SUCCESS ||
              cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
                                                   &swizzle, sizeof swizzle) !=
                  CUBLAS_STATUS_SUCCESS ||
              cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split,
                                                   sizeof split) != CUBLAS_STATUS_SUCCESS ||
              cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                                   &reduction, sizeof reduction) !=
                  CUBLAS_STATUS_SUCCESS) {
            continue;
          }
          LtResult checked{};
          if (cublasLtMatmulAlgoCheck(call.handle, call.op, call.first, call.second, call.out,
                                      call.out, &v, &checked) == CUBLAS_STATUS_SUCCESS) {
            add_candidate(list, v, checked.workspaceSize, LtSource::kVariant,
                          call.workspace_bytes);
          }
        }
      }
    }
  }
}

/// Times every candidate of a wide search into `d` (one warm-up, two launches), then the
/// fastest kWideRefine and the heuristic list's fastest again over kWideRefineLaunches launches
/// in two interleaved rounds; each candidate's ms becomes its per-launch time with its memset
/// and copy nodes' cost added. Returns the winner's index, or -1 when none ran.
int time_wide(const LtCall& call, const LtProblem& p, void* d, TacticTimer& timer,
              std::vector<LtCandidate>& list) {
  const SideStream side_stream;
  std::vector<int> extra(list.size(), 0);
  for (size_t i = 0; i < list.size(); ++i) {
    LtCandidate& c = list[i];
    const float timed = time_candidate(call, c.algo, d, timer);
    if (timed < 0.0f) continue;
    LtCall on_side = call;
    on_side.stream = side_stream.s;
    extra[i] = non_kernel_nodes(side_stream.s, [&] {
      return on_side.run(c.algo, d) == CUBLAS_STATUS_SUCCESS;
    });
    c.ms = timed / 2.0f + non_kernel_node_ms() * static_cast<float>(extra[i]);
  }
  std::vector<float> first_pass(list.size());
  std::vector<size_t> order;
  for (size_t i = 0; i < list.size(); ++i) {
    first_pass[i] = list[i].ms;
    if (list[i].ms >= 0.0f) order.push_back(i);
  }
  if (order.empty()) return -1;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return list[a].ms < list[b].ms; });
  std::vector<size_t> refine(order.begin(), order.begin() + std::min(order.size(), kWideRefine));
  for (size_t i : order) {  // the heuristic list's fastest: what the default search would take
    if (list[i].source == LtSource::kHeuristic) {
      if (std::find(refine.begin(), refine.end(), i) == refine.end()) refine.push_back(i);
      break;
    }
  }
  std::vector<float> best(list.size(), -1.0f);
  for (int round = 0; round < 2; ++round) {
    for (size_t i : refine) {
      const float ms = time_launches(timer, call.stream, [&] {
        for (int k = 0; k < kWideRefineLaunches / 2; ++k) {
          if (call.run(list[i].algo, d) != CUBLAS_STATUS_SUCCESS) return false;
        }
        return true;
      });
      if (ms < 0.0f) continue;
      const float per_launch = ms / static_cast<float>(kWideRefineLaunches) +
                               non_kernel_node_ms() * static_cast<float>(extra[i]);
      if (best[i] < 0.0f || per_launch < best[i]) best[i] = per_launch;
    }
  }
  int winner = -1;
  for (size_t i : refine) {
    if (best[i] < 0.0f) continue;
    list[i].ms = best[i];
    if (winner < 0 || best[i] < list[static_cast<size_t>(winner)].ms) winner = static_cast<int>(i);
  }
  if (tactic_log()) {
    size_t counts[3] = {0, 0, 0};
    for (const LtCandidate& c : list) ++counts[static_cast<int>(c.source)];
    std::fprintf(stderr,
                 "[ember tactic] %s: wide search timed %zu candidates (%zu from the heuristic's "
                 "list, %zu from algorithm ids, %zu variants), %zu ran\n",
                 p.key.c_str(), list.size(), counts[0], counts[1], counts[2], order.size());
    float heuristic_ms = -1.0f;
    for (size_t i : refine) {
      if (list[i].source == LtSource::kHeuristic && best[i] >= 0.0f &&
          (heuristic_ms < 0.0f || best[i] < heuristic_ms)) {
        heuristic_ms = best[i];
      }
    }
    for (size_t i : refine) {
      int32_t algo_id = -1, tile = -1, stages = -1, splits = -1;
      uint16_t cluster = 0;
      uint32_t swizzle = 0;
      size_t w = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&list[i].algo, CUBLASLT_ALGO_CONFIG_ID, &algo_id,
                                           sizeof algo_id, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&list[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                           sizeof tile, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&list[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages,
                                           sizeof stages, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&list[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits,
                                           sizeof splits, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&list[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                           &cluster, sizeof cluster, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&list[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
                                           &swizzle, sizeof swizzle, &w);
      std::fprintf(stderr,
                   "[ember tactic] %s:   %s%.4f ms a launch (first pass %.4f): id %d tile %d "
                   "stages %d split-K %d cluster %u swizzle %u, %d memset/copy node(s), from %s\n",
                   p.key.c_str(), static_cast<int>(i) == winner ? "chosen " : "", best[i],
                   first_pass[i], algo_id, tile, stages, splits, cluster, swizzle, extra[i],
                   source_name(list[i].source));
    }
    if (winner >= 0 && heuristic_ms > 0.0f) {
      std::fprintf(stderr,
                   "[ember tactic] %s: wide choice %.4f ms against the heuristic list's best "
                   "%.4f ms (%+.1f%%)\n",
                   p.key.c_str(), list[static_cast<size_t>(winner)].ms, heuristic_ms,
                   100.0f * (list[static_cast<size_t>(winner)].ms / heuristic_ms - 1.0f));
    }
  }
  return winner;
}

}  // namespace

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
  const bool wide = timing && lt_search() == LtSearch::kWide;
  const int wanted = !timing ? kLtCandidates : wide ? std::max(lt_candidates(), 32) : lt_candidates();
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
  if (wide) {
    std::vector<LtCandidate> list;
    for (int i = first; i < returned; ++i) {
      if (usable(i)) list.push_back({results[i].algo, results[i].workspaceSize, LtSource::kHeuristic});
    }
    add_wide_candidates(call, pref, list);
    TacticTimer timer;
    void* d = timing_target(call, p, args, timer);
    const int winner = time_wide(call, p, d, timer, list);
    if (winner < 0) {
      return no_algorithm("none of the wide search's " + std::to_string(list.size()) +
                          " candidates ran");
    }
    const cublasLtMatmulAlgo_t& algo = list[static_cast<size_t>(winner)].algo;
    const auto* bytes = reinterpret_cast<const uint8_t*>(&algo);
    cache->store(*device, p.key, std::vector<uint8_t>(bytes, bytes + sizeof(cublasLtMatmulAlgo_t)));
    cache->note_timed();
    return algo;
  }
  int best = first;
  if (returned > 1) {
    TacticTimer timer;
    void* d = timing_target(call, p, args, timer);
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
