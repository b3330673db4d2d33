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
  float first_ms = -1.0f;  ///< First pass, per launch, graph nodes included; < 0: did not run.
  float ms = -1.0f;        ///< Second pass (the fastest few only); < 0: not timed again.
  int extra_nodes = 0;     ///< Memset and copy nodes one launch puts in a graph.
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

/// The wide search's bounds: candidates in all; configurations asked of each algorithm id; the
/// fastest of the first pass whose variants are tried; and the fastest timed again,
/// kWideRefineLaunches launches a round in two interleaved rounds (the lower per-launch time of
/// the two counts).
constexpr size_t kWideMaxCandidates = 1536;
constexpr int kWidePerAlgoId = 16;
constexpr size_t kWideVariantBases = 24;
constexpr size_t kWideRefine = 6;
constexpr int kWideRefineLaunches = 10;

/// Adds `algo` unless it is already there, the workspace does not hold it, or the list is full.
void add_candidate(std::vector<LtCandidate>& list, const cublasLtMatmulAlgo_t& algo,
                   size_t workspace, LtSource source, size_t workspace_limit) {
  if (list.size() >= kWideMaxCandidates || workspace > workspace_limit) return;
  for (const LtCandidate& c : list) {
    if (same_algo(c.algo, algo)) return;
  }
  LtCandidate c;
  c.algo = algo;
  c.workspace = workspace;
  c.source = source;
  list.push_back(c);
}

/// Every algorithm id's best configurations for the problem: cuBLASLt's heuristic limited to
/// that id (CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID). The preference's search mode is put back.
void add_algo_id_candidates(const LtCall& call, cublasLtMatmulPreference_t pref,
                            std::vector<LtCandidate>& list) {
  LtTypes t{};
  if (!read_types(call, t)) return;
  std::vector<int> ids(256);
  int n_ids = 0;
  if (cublasLtMatmulAlgoGetIds(call.handle, t.compute, t.scale, t.a, t.b, t.cd, t.cd,
                               static_cast<int>(ids.size()), ids.data(),
                               &n_ids) != CUBLAS_STATUS_SUCCESS ||
      n_ids <= 0) {
    return;
  }
  uint32_t mode = CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID;
  if (cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &mode,
                                           sizeof mode) != CUBLAS_STATUS_SUCCESS) {
    return;
  }
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

/// `base` with other cluster shapes, CTA swizzles and split-K counts (the attributes the
/// heuristic sets per problem rather than per kernel) that cublasLtMatmulAlgoCheck accepts.
void add_variants(const LtCall& call, const cublasLtMatmulAlgo_t& base,
                  std::vector<LtCandidate>& list) {
  static constexpr uint16_t kClusters[] = {
      CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
      CUBLASLT_CLUSTER_SHAPE_1x2x1, CUBLASLT_CLUSTER_SHAPE_2x2x1};
  static constexpr int32_t kSplits[] = {1, 2, 4};
  size_t written = 0;
  int32_t splitk_support = 0;
  uint32_t scheme_mask = 0, swizzle_support = 0;
  cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_support,
                                    sizeof splitk_support, &written);
  cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &scheme_mask,
                                    sizeof scheme_mask, &written);
  cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT,
                                    &swizzle_support, sizeof swizzle_support, &written);
  // The first split-K reduction the algorithm supports: in place, in the compute type, in the
  // output type.
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
    for (uint32_t swizzle = 0; swizzle <= (swizzle_support != 0 ? 1u : 0u); ++swizzle) {
      for (int32_t split : kSplits) {
        if (split > 1 && (splitk_support == 0 || scheme == CUBLASLT_REDUCTION_SCHEME_NONE)) {
          continue;
        }
        cublasLtMatmulAlgo_t v = base;
        const uint32_t reduction =
            split > 1 ? scheme : uint32_t{CUBLASLT_REDUCTION_SCHEME_NONE};
        const auto set = [&](cublasLtMatmulAlgoConfigAttributes_t attr, const void* value,
                             size_t size) {
          return cublasLtMatmulAlgoConfigSetAttribute(&v, attr, value, size) ==
                 CUBLAS_STATUS_SUCCESS;
        };
        if (!set(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster) ||
            !set(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof swizzle) ||
            !set(CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split) ||
            !set(CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof reduction)) {
          continue;
        }
        LtResult checked{};
        if (cublasLtMatmulAlgoCheck(call.handle, call.op, call.first, call.second, call.out,
                                    call.out, &v, &checked) == CUBLAS_STATUS_SUCCESS) {
          add_candidate(list, v, checked.workspaceSize, LtSource::kVariant, call.workspace_bytes);
        }
      }
    }
  }
}

/// First pass over list[from..]: one warm-up and two launches each (time_candidate), into `d`.
void time_first_pass(const LtCall& call, void* d, TacticTimer& timer, cudaStream_t side,
                     std::vector<LtCandidate>& list, size_t from) {
  for (size_t i = from; i < list.size(); ++i) {
    LtCandidate& c = list[i];
    const float timed = time_candidate(call, c.algo, d, timer);
    if (timed < 0.0f) continue;
    LtCall on_side = call;
    on_side.stream = side;
    c.extra_nodes = non_kernel_nodes(side, [&] {
      return on_side.run(c.algo, d) == CUBLAS_STATUS_SUCCESS;
    });
    c.first_ms = timed / 2.0f + non_kernel_node_ms() * static_cast<float>(c.extra_nodes);
  }
}

/// Indices of the candidates that ran, fastest first pass first.
std::vector<size_t> by_first_pass(const std::vector<LtCandidate>& list) {
  std::vector<size_t> order;
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].first_ms >= 0.0f) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return list[a].first_ms < list[b].first_ms; });
  return order;
}

void log_wide(const LtProblem& p, const std::vector<LtCandidate>& list,
              const std::vector<size_t>& refine, size_t ran, int winner) {
  size_t counts[3] = {0, 0, 0};
  for (const LtCandidate& c : list) ++counts[static_cast<int>(c.source)];
  std::fprintf(stderr,
               "[ember tactic] %s: wide search timed %zu candidates (%zu from the heuristic's "
               "list, %zu from algorithm ids, %zu variants), %zu ran\n",
               p.key.c_str(), list.size(), counts[0], counts[1], counts[2], ran);
  float heuristic_ms = -1.0f;
  for (size_t i : refine) {
    const LtCandidate& c = list[i];
    if (c.source == LtSource::kHeuristic && c.ms >= 0.0f &&
        (heuristic_ms < 0.0f || c.ms < heuristic_ms)) {
      heuristic_ms = c.ms;
    }
    int32_t algo_id = -1, splits = -1;
    uint32_t tile = 0, stages = 0, swizzle = 0;
    uint16_t cluster = 0;
    size_t w = 0;
    const auto get = [&](cublasLtMatmulAlgoConfigAttributes_t attr, void* value, size_t size) {
      cublasLtMatmulAlgoConfigGetAttribute(&c.algo, attr, value, size, &w);
    };
    get(CUBLASLT_ALGO_CONFIG_ID, &algo_id, sizeof algo_id);
    get(CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile);
    get(CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages);
    get(CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof splits);
    get(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster);
    get(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof swizzle);
    std::fprintf(stderr,
                 "[ember tactic] %s:   %s%.4f ms a launch (first pass %.4f): id %d tile %u "
                 "stages %u split-K %d cluster %u swizzle %u, %d memset/copy node(s), "
                 "workspace %zu B, from %s\n",
                 p.key.c_str(), static_cast<int>(i) == winner ? "chosen " : "", c.ms, c.first_ms,
                 algo_id, tile, stages, splits, static_cast<unsigned>(cluster), swizzle,
                 c.extra_nodes, c.workspace, source_name(c.source));
  }
  if (winner >= 0 && heuristic_ms > 0.0f) {
    const float chosen = list[static_cast<size_t>(winner)].ms;
    std::fprintf(stderr,
                 "[ember tactic] %s: wide choice %.4f ms against the heuristic list's best %.4f "
                 "ms (%+.1f%%)\n",
                 p.key.c_str(), chosen, heuristic_ms, 100.0f * (chosen / heuristic_ms - 1.0f));
  }
}

/// The default search: every candidate of the heuristic's list timed once (time_first_pass),
/// the fastest kept. Returns its index in `list`, or -1 when none ran.
int heuristic_search(const LtCall& call, const LtProblem& p, void* d, TacticTimer& timer,
                     std::vector<LtCandidate>& list) {
  const SideStream side_stream;
  time_first_pass(call, d, timer, side_stream.s, list, 0);
  const std::vector<size_t> order = by_first_pass(list);
  const int winner = order.empty() ? -1 : static_cast<int>(order.front());
  if (tactic_log()) {
    for (size_t i = 0; i < list.size(); ++i) {
      std::fprintf(stderr,
                   "[ember tactic] %s: candidate %zu of %zu: %.4f ms a launch, %d memset/copy "
                   "node(s), workspace %zu B%s\n",
                   p.key.c_str(), i, list.size(), list[i].first_ms, list[i].extra_nodes,
                   list[i].workspace, list[i].first_ms < 0.0f ? " (failed to launch)" : "");
    }
    if (winner >= 0) {
      std::fprintf(stderr, "[ember tactic] %s: chose candidate %d (%.4f ms; the heuristic's "
                   "first: 0)\n",
                   p.key.c_str(), winner, list[static_cast<size_t>(winner)].first_ms);
    }
  }
  return winner;
}

/// The wide search over `list` (the heuristic's usable candidates on entry): each algorithm
/// id's configurations are added and timed, then the variants of the kWideVariantBases fastest,
/// then the kWideRefine fastest and the heuristic list's fastest (what the default search would
/// take) are timed again. Returns the winner's index in `list`, or -1 when none ran.
int wide_search(const LtCall& call, cublasLtMatmulPreference_t pref, const LtProblem& p,
                void* d, TacticTimer& timer, std::vector<LtCandidate>& list) {
  const SideStream side_stream;
  add_algo_id_candidates(call, pref, list);
  time_first_pass(call, d, timer, side_stream.s, list, 0);
  const std::vector<size_t> fastest = by_first_pass(list);
  const size_t before_variants = list.size();
  for (size_t k = 0; k < fastest.size() && k < kWideVariantBases; ++k) {
    const cublasLtMatmulAlgo_t base = list[fastest[k]].algo;  // list may grow below
    add_variants(call, base, list);
  }
  time_first_pass(call, d, timer, side_stream.s, list, before_variants);
  const std::vector<size_t> order = by_first_pass(list);
  if (order.empty()) return -1;
  std::vector<size_t> refine(order.begin(), order.begin() + std::min(order.size(), kWideRefine));
  for (size_t i : order) {
    if (list[i].source == LtSource::kHeuristic) {
      if (std::find(refine.begin(), refine.end(), i) == refine.end()) refine.push_back(i);
      break;
    }
  }
  for (int round = 0; round < 2; ++round) {
    for (size_t i : refine) {
      LtCandidate& c = list[i];
      const float ms = time_launches(timer, call.stream, [&] {
        for (int k = 0; k < kWideRefineLaunches / 2; ++k) {
          if (call.run(c.algo, d) != CUBLAS_STATUS_SUCCESS) return false;
        }
        return true;
      });
      if (ms < 0.0f) continue;
      const float per_launch = ms / static_cast<float>(kWideRefineLaunches) +
                               non_kernel_node_ms() * static_cast<float>(c.extra_nodes);
      if (c.ms < 0.0f || per_launch < c.ms) c.ms = per_launch;
    }
  }
  int winner = -1;
  for (size_t i : refine) {
    if (list[i].ms >= 0.0f &&
        (winner < 0 || list[i].ms < list[static_cast<size_t>(winner)].ms)) {
      winner = static_cast<int>(i);
    }
  }
  if (tactic_log()) log_wide(p, list, refine, order.size(), winner);
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
  const int wanted =
      !timing ? kLtCandidates : wide ? std::max(lt_candidates(), 32) : lt_candidates();
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
  std::vector<LtCandidate> list;  // the usable candidates, in the heuristic's order
  for (int i = first; i < returned; ++i) {
    if (usable(i)) {
      add_candidate(list, results[i].algo, results[i].workspaceSize, LtSource::kHeuristic,
                    call.workspace_bytes);
    }
  }
  int winner = 0;  // a single candidate is taken untimed (unless the search is wide)
  if (wide || list.size() > 1) {
    TacticTimer timer;
    void* d = timing_target(call, p, args, timer);
    winner = wide ? wide_search(call, pref, p, d, timer, list)
                  : heuristic_search(call, p, d, timer, list);
    // Nothing was enqueued by a candidate that failed to launch: the caller may still take
    // another path (the quantized products' f32 sums or direct kernel).
    if (winner < 0) {
      return no_algorithm(std::string("none of the ") + (wide ? "wide search's " : "heuristic's ") +
                          std::to_string(list.size()) + " candidates ran");
    }
  }
  const cublasLtMatmulAlgo_t& algo = list[static_cast<size_t>(winner)].algo;
  const auto* bytes = reinterpret_cast<const uint8_t*>(&algo);
  cache->store(*device, p.key, std::vector<uint8_t>(bytes, bytes + sizeof(cublasLtMatmulAlgo_t)));
  cache->note_timed();
  return algo;
}

}  // namespace ember::engine::cuda
