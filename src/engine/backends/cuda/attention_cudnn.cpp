// Attention through cuDNN's fused SDPA; see attention_cudnn.h for why and when.
//
// One problem's graph, through the cuDNN frontend's graph API: tensors Q [B, H, L, E],
// K [B, Hkv, S, E], V [B, Hkv, S, Ev] and O [B, H, L, Ev] with the strides of the layer's
// AttentionGeometry (features contiguous: a view of a packed projection or of a seq-major
// tensor needs no copy), one sdpa node (inference: no softmax statistics; the scale; top-left
// causal masking, PyTorch's is_causal), f32 intermediates and accumulation. The plan is the
// heuristic's first engine that builds. The frontend's namespace is renamed here (see the include).
//
// State: plans live in the context (Resources), one per problem, shared by every layer of that
// problem (BERT's twelve layers build one plan: cuDNN compiles its attention kernels at plan
// time). Each layer keeps its last problem and the choice made for it (cuDNN or Ember's kernel),
// so a call compares a few integers and enqueues.
#include "backends/cuda/attention_cudnn.h"
#include "runtime/iostreams_check.h"

#include <atomic>
#include <cstdlib>
#include <string>

#if defined(EMBER_WITH_CUDNN_FRONTEND)
// The frontend is header-only, and PyTorch's libraries carry another version of it with
// exported symbols. Under its own namespace name (and hidden visibility, see CMakeLists.txt) no
// symbol of this copy can be bound to theirs: with the same names the dynamic linker did, and
// the first plan build inside Python crashed (H100, 2026-12-06).
#define cudnn_frontend ember_cudnn_frontend
#include <cudnn_frontend.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "backends/cuda/linear_kernels.h"
#endif

namespace ember::engine::cuda {

namespace {

std::atomic<int64_t> g_plans{0}, g_refusals{0}, g_timed{0}, g_own_faster{0}, g_executions{0};

/// EMBER_CUDNN_ATTENTION (read on each call): unset, "timed" or "1" (the default: cuDNN where it
/// covers a problem and measures faster), "0" or "off" (Ember's kernels only), "force" (cuDNN
/// whenever it builds a plan, without timing: tests and A/B runs). Any mode but off is refused
/// where iostreams do not work in the process (runtime/iostreams_check.h): the frontend writes
/// numbers to streams, and crashed there.
enum class Mode { kOff, kTimed, kForce };

Mode requested_mode() {
  const char* e = std::getenv("EMBER_CUDNN_ATTENTION");
  if (e == nullptr || *e == '\0') return Mode::kTimed;
  const std::string v(e);
  if (v == "0" || v == "off") return Mode::kOff;
  if (v == "timed" || v == "1") return Mode::kTimed;
  if (v == "force") return Mode::kForce;
  throw Error("EMBER_CUDNN_ATTENTION='" + v +
              "' is not a setting: expected timed (or 1, the default), off (or 0) or force");
}

[[maybe_unused]] Mode mode() {
  const Mode requested = requested_mode();  // a bad setting is an error either way
  // The iostreams check only when the path may run: off touches no stream.
  if (requested == Mode::kOff) return Mode::kOff;
  return iostreams_work() ? requested : Mode::kOff;
}

[[maybe_unused]] bool switched_off() { return mode() == Mode::kOff; }

}  // namespace

CudnnAttentionCounters cudnn_attention_counters() {
  CudnnAttentionCounters c;
  c.plans = g_plans.load();
  c.refusals = g_refusals.load();
  c.timed = g_timed.load();
  c.own_faster = g_own_faster.load();
  c.executions = g_executions.load();
  return c;
}

#if !defined(EMBER_WITH_CUDNN_FRONTEND)

bool cudnn_attention_enabled() { return false; }

CudnnAttentionStatus run_attention_cudnn(const AttentionParams&, const CudaArgs&,
                                         const AttentionGeometry&, const std::function<void()>&) {
  (void)requested_mode();  // a bad setting is an error in every build
  return CudnnAttentionStatus::kOwnKernel;
}

#else

namespace fe = cudnn_frontend;

namespace {

/// Unique ids of the graph's tensors (the variant pack names the real ones by these).
constexpr int64_t kQ = 1, kK = 2, kV = 3, kO = 4;

/// Resources slot of a layer's state (the layer's own, keyed by its address) and of the
/// context's plans (keyed by kPlansKey's address).
constexpr int kSlot = 0;
alignas(8) const char kPlansKey = 0;

/// Problems a context keeps plans for; beyond that the least recently built goes (retired as
/// conv_graph.cpp retires its plans: the stream is waited for and captures marked stale).
constexpr size_t kPlansPerContext = 32;

/// What identifies a problem: dtype, causal, the scale's bits, the sizes and the strides (the
/// operands' addresses are checked for alignment before, and are not part of it).
using Signature = std::array<int64_t, 22>;

Signature signature(const AttentionParams& p, DataType dtype, const AttentionGeometry& g) {
  int64_t scale_bits = 0;
  const double scale = p.scale;
  std::memcpy(&scale_bits, &scale, sizeof scale_bits);
  return {static_cast<int64_t>(dtype), p.causal ? 1 : 0, scale_bits, g.B, g.H, g.Hkv, g.L, g.S,
          g.E, g.Ev, g.q.batch, g.q.heads, g.q.seq, g.k.batch, g.k.heads, g.k.seq, g.v.batch,
          g.v.heads, g.v.seq, g.out.batch, g.out.heads, g.out.seq};
}

std::string text(const Signature& s) {
  std::string t = "cudnn-sdpa ";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? "," : "") + std::to_string(s[i]);
  return t;
}

/// One problem's plan (or why there is none).
struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;  ///< Null when cuDNN refused the problem.
  int64_t workspace = 0;
  std::string why;  ///< The refusal, for the tactic log.
};

/// The context's plans, most recently built last.
struct ContextPlans : PreparedLaunch {
  std::vector<std::pair<Signature, std::shared_ptr<Plan>>> plans;
};

/// A layer's last problem and what runs it.
struct LayerChoice : PreparedLaunch {
  Signature sig;
  std::shared_ptr<Plan> plan;  ///< Null: Ember's kernel.
};

std::shared_ptr<Plan> build_plan(const Signature& s, cudnnHandle_t handle) {
  auto plan = std::make_shared<Plan>();
  const auto dtype = static_cast<DataType>(s[0]);
  const int64_t B = s[3], H = s[4], Hkv = s[5], L = s[6], S = s[7], E = s[8], Ev = s[9];
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(dtype == DataType::kBF16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto tensor = [&](const char* name, int64_t uid, std::vector<int64_t> dims, const int64_t* st) {
    return g->tensor(fe::graph::Tensor_attributes()
                         .set_name(name)
                         .set_uid(uid)
                         .set_dim(std::move(dims))
                         .set_stride({st[0], st[1], st[2], 1}));
  };
  const int64_t qs[3] = {s[10], s[11], s[12]}, ks[3] = {s[13], s[14], s[15]},
                vs[3] = {s[16], s[17], s[18]}, os[3] = {s[19], s[20], s[21]};
  double scale = 0.0;
  std::memcpy(&scale, &s[2], sizeof scale);
  try {
    auto q = tensor("Q", kQ, {B, H, L, E}, qs);
    auto k = tensor("K", kK, {B, Hkv, S, E}, ks);
    auto v = tensor("V", kV, {B, Hkv, S, Ev}, vs);
    auto options = fe::graph::SDPA_attributes()
                       .set_name("ember_attention")
                       .set_generate_stats(false)
                       .set_attn_scale(static_cast<float>(scale))
                       // The composite SDPA graph (cuDNN's Hopper flash-attention engines, what
                       // PyTorch's cuDNN back end builds). Left to the frontend, it picked its
                       // unified SDPA node inside Python and crashed validating it (H100,
                       // 2026-12-06).
                       .set_implementation(fe::AttentionImplementation_t::COMPOSITE);
    if (s[1] != 0) options.set_causal_mask(true);
    auto outputs = g->sdpa(q, k, v, std::move(options));
    outputs[0]->set_output(true).set_uid(kO).set_dim({B, H, L, Ev}).set_stride(
        {os[0], os[1], os[2], 1});
    fe::error_t e = g->validate();
    if (e.is_good()) e = g->build_operation_graph(handle);
    if (e.is_good()) e = g->create_execution_plans({fe::HeurMode_t::A});
    if (e.is_good()) e = g->check_support(handle);
    if (e.is_good()) e = g->build_plans(handle, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
    int64_t ws = 0;
    if (e.is_good()) e = g->get_workspace_size(ws);
    if (!e.is_good()) {
      plan->why = e.get_message();
      return plan;
    }
    plan->graph = std::move(g);
    plan->workspace = ws;
  } catch (const std::exception& ex) {  // the frontend throws when no implementation applies
    plan->why = ex.what();
  }
  return plan;
}

/// Enqueues the plan on the handle's stream; false when cuDNN refused the launch.
bool execute(const Plan& plan, cudnnHandle_t handle, const void* q, const void* k, const void* v,
             void* o, void* workspace) {
  std::unordered_map<int64_t, void*> pack = {{kQ, const_cast<void*>(q)},
                                             {kK, const_cast<void*>(k)},
                                             {kV, const_cast<void*>(v)},
                                             {kO, o}};
  return plan.graph->execute(handle, pack, workspace).is_good();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

/// Whether the loaded cuDNN has the major and minor version of the headers this file was compiled
/// against. The frontend compiled on 9.14 headers crashed inside cudnnBackendGetAttribute with
/// PyTorch's 9.19 library loaded (H100, 2026-12-06): the path is kept to matching versions.
bool library_matches_headers() {
  static const bool matches = cudnnGetVersion() / 100 == CUDNN_VERSION / 100;
  return matches;
}

}  // namespace

bool cudnn_attention_enabled() { return !switched_off() && library_matches_headers(); }

CudnnAttentionStatus run_attention_cudnn(const AttentionParams& p, const CudaArgs& a,
                                         const AttentionGeometry& geo,
                                         const std::function<void()>& own) {
  using Status = CudnnAttentionStatus;
  // iostreams broken in this process: the path is switched off, and that is reported once
  // (unless EMBER_CUDNN_ATTENTION=off asked for it).
  static std::atomic<bool> broken_reported{false};
  if (requested_mode() != Mode::kOff && !broken_reported.load() && !iostreams_work() &&
      !broken_reported.exchange(true)) {
    a.res->warn_once(a.layer, "cuDNN's fused attention is off (EMBER_CUDNN_ATTENTION is "
                              "ignored): libstdc++'s iostreams do not work inside libember.so in "
                              "this process (a number written to a stream gave '" +
                              iostreams_probe() + "'; see runtime/iostreams_check.h), and cuDNN's "
                              "frontend needs them; attention runs on Ember's kernels");
  }
  const DataType dtype = a.in(0).dtype;
  if (switched_off() || a.has(3) || (dtype != DataType::kF16 && dtype != DataType::kBF16) ||
      geo.L <= 0 || geo.S <= 0 || !a.res->keeps_prepared()) {
    return Status::kOwnKernel;
  }
  const size_t esz = dtype_size(dtype);
  const auto* q = static_cast<const uint8_t*>(a.in(0).data) + geo.q.offset * esz;
  const auto* k = static_cast<const uint8_t*>(a.in(1).data) + geo.k.offset * esz;
  const auto* v = static_cast<const uint8_t*>(a.in(2).data) + geo.v.offset * esz;
  auto* o = static_cast<uint8_t*>(a.out(0).data) + geo.out.offset * esz;
  const int64_t strides = geo.q.batch | geo.q.heads | geo.q.seq | geo.k.batch | geo.k.heads |
                          geo.k.seq | geo.v.batch | geo.v.heads | geo.v.seq | geo.out.batch |
                          geo.out.heads | geo.out.seq | geo.E | geo.Ev;
  if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(o) || strides % 8 != 0) {
    return Status::kOwnKernel;
  }
  if (!library_matches_headers()) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      a.res->warn_once(a.layer, "cuDNN attention is off: Ember was compiled against cuDNN " +
                                    std::to_string(CUDNN_VERSION) + " headers but loaded cuDNN " +
                                    std::to_string(cudnnGetVersion()) +
                                    " (rebuild against the loaded one); attention runs on "
                                    "Ember's kernels");
    }
    return Status::kOwnKernel;
  }
  const Signature sig = signature(p, dtype, geo);
  auto handle = static_cast<cudnnHandle_t>(a.res->cudnn());
  auto run_plan = [&](const Plan& plan) {
    void* ws = plan.workspace > 0 ? a.res->workspace(static_cast<size_t>(plan.workspace)) : nullptr;
    return execute(plan, handle, q, k, v, o, ws);
  };

  // The common case: the layer's last problem.
  auto* layer = static_cast<LayerChoice*>(a.res->prepared(a.layer, kSlot));
  if (layer != nullptr && layer->sig == sig) {
    if (layer->plan == nullptr) return Status::kOwnKernel;
    if (!run_plan(*layer->plan)) {
      throw Error("Attention (cuda): cuDNN's SDPA plan, which ran before, refused a launch");
    }
    ++g_executions;
    return Status::kRan;
  }
  // A new problem for this layer. Plans are not built inside a stream capture (cuDNN compiles
  // kernels then): Ember's kernel serves a capture that comes before any eager call.
  if (capturing(a.stream())) return Status::kOwnKernel;

  // The context's plan for the problem, built once.
  auto* ctx = static_cast<ContextPlans*>(a.res->prepared(&kPlansKey, kSlot));
  if (ctx == nullptr) {
    a.res->set_prepared(&kPlansKey, kSlot, std::make_unique<ContextPlans>());
    ctx = static_cast<ContextPlans*>(a.res->prepared(&kPlansKey, kSlot));
  }
  std::shared_ptr<Plan> plan;
  for (const auto& [s, kept] : ctx->plans) {
    if (s == sig) plan = kept;
  }
  const bool log = tactic_log();
  const std::string problem = text(sig);
  // The timing cache's choice for the problem (true: cuDNN), looked up once; none with
  // EMBER_CUDNN_ATTENTION=force or without a cache.
  TimingCache* cache = a.res->timing_cache();
  const bool timed = cache != nullptr && mode() != Mode::kForce;
  // 1: cuDNN, 0: Ember's kernel, -1: no stored choice.
  const std::optional<bool> stored = timed ? lookup_choice(cache, problem) : std::nullopt;
  const int stored_cudnn = stored.has_value() ? (*stored ? 1 : 0) : -1;
  if (plan == nullptr && stored_cudnn == 0) {
    // Given to Ember's kernel: no plan is built (cuDNN compiles kernels when it builds one; an
    // engine that measured Ember's kernel faster should not pay that in every new context).
    auto choice = std::make_unique<LayerChoice>();
    choice->sig = sig;
    a.res->set_prepared(a.layer, kSlot, std::move(choice));
    return Status::kOwnKernel;
  }
  if (plan == nullptr) {
    plan = build_plan(sig, handle);
    if (plan->graph != nullptr) {
      ++g_plans;
    } else {
      ++g_refusals;
      if (log) {
        std::fprintf(stderr, "[ember tactic] %s: cuDNN built no plan (%s); Ember's kernel\n",
                     problem.c_str(), plan->why.c_str());
      }
    }
    if (ctx->plans.size() >= kPlansPerContext) {
      // Kernels of the oldest plan may still be queued or captured: wait, and mark captures
      // stale. A refusal (cuDNN built no plan: no kernels) goes without either.
      if (ctx->plans.front().second->graph != nullptr) {
        check(cudaStreamSynchronize(a.stream()), "cudaStreamSynchronize (retiring a cuDNN plan)");
        a.res->invalidate_captures();
      }
      ctx->plans.erase(ctx->plans.begin());
    }
    ctx->plans.emplace_back(sig, plan);
  }

  // Which runs it: the timing cache's choice, else measured (when the context has a cache),
  // else cuDNN; always cuDNN with EMBER_CUDNN_ATTENTION=force.
  bool use_cudnn = plan->graph != nullptr;
  if (use_cudnn && timed) {
    if (stored_cudnn >= 0) {
      use_cudnn = stored_cudnn == 1;
    } else {
      // Both on the real operands, each after a warm-up, the best of three pairs of launches
      // (the output is written again below).
      TacticTimer timer;
      if (plan->workspace > 0) {
        timer.scratch = DeviceBuffer(a.res->allocator(), static_cast<size_t>(plan->workspace),
                                     "attention tactic timing scratch");
      }
      auto cudnn_launch = [&] { return execute(*plan, handle, q, k, v, o, timer.scratch.get()); };
      auto own_launch = [&] {
        own();
        return true;
      };
      float cudnn_ms = cudnn_launch() ? 1e30f : -1.0f;
      own();
      float own_ms = 1e30f;
      for (int rep = 0; rep < 3 && cudnn_ms >= 0.0f; ++rep) {
        const float c = time_launches(timer, a.stream(), cudnn_launch);
        cudnn_ms = c < 0.0f ? -1.0f : std::min(cudnn_ms, c);
        own_ms = std::min(own_ms, time_launches(timer, a.stream(), own_launch));
      }
      // The memset cuDNN puts before its SDPA kernel (GPT-2 b32's 12 layers, 2026-12-07) costs
      // a replayed graph more than its run (non_kernel_node_ms()); Ember's kernels make none.
      int extra = 0;
      cudaStream_t original = nullptr;
      const SideStream side;
      if (cudnn_ms >= 0.0f && side.s != nullptr &&
          cudnnGetStream(handle, &original) == CUDNN_STATUS_SUCCESS) {
        if (cudnnSetStream(handle, side.s) == CUDNN_STATUS_SUCCESS) {
          extra = non_kernel_nodes(side.s, cudnn_launch);
        }
        cudnnSetStream(handle, original);
      }
      cudaGetLastError();
      if (cudnn_ms >= 0.0f) cudnn_ms += 2.0f * non_kernel_node_ms() * static_cast<float>(extra);
      use_cudnn = cudnn_ms >= 0.0f && cudnn_ms < own_ms;
      ++g_timed;
      if (!use_cudnn) ++g_own_faster;
      if (log) {
        std::fprintf(stderr,
                     "[ember tactic] %s: cuDNN %.4f ms (with %d memset/copy node(s)), Ember "
                     "%.4f ms (2 runs) -> %s\n",
                     problem.c_str(), cudnn_ms, extra, own_ms, use_cudnn ? "cuDNN" : "Ember");
      }
      store_choice(cache, problem, use_cudnn);
    }
  }
  if (use_cudnn && !run_plan(*plan)) {  // a plan that built but does not launch: Ember's kernel
    use_cudnn = false;
    ++g_refusals;
    if (log) {
      std::fprintf(stderr, "[ember tactic] %s: cuDNN's plan refused its launch; Ember's kernel\n",
                   problem.c_str());
    }
  }
  auto choice = std::make_unique<LayerChoice>();
  choice->sig = sig;
  if (use_cudnn) choice->plan = plan;
  a.res->set_prepared(a.layer, kSlot, std::move(choice));
  if (!use_cudnn) return Status::kOwnKernel;
  ++g_executions;
  return Status::kRan;
}

#endif  // EMBER_WITH_CUDNN_FRONTEND

}  // namespace ember::engine::cuda
