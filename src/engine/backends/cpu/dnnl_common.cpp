// Shared pieces of the oneDNN kernels (see dnnl_common.h).
#include "backends/cpu/dnnl_fallback.h"

#include <atomic>

#ifdef EMBER_WITH_DNNL

#include "backends/cpu/dnnl_common.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>

#ifdef EMBER_WITH_OPENMP
#include <omp.h>
#endif

#include "backends/cpu/parallel.h"
#include "backends/cpu/profile.h"
#include "ember/engine/network.h"

namespace ember::engine::cpu {

dnnl::engine& dnnl_cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

/// On by default; EMBER_CPU_DNNL=0 turns the oneDNN paths off (A/B timing, bisecting a
/// difference; the reference-kernel tests set it).
bool dnnl_enabled() {
  const char* e = std::getenv("EMBER_CPU_DNNL");
  return e == nullptr || std::string(e) != "0";
}

bool dnnl_eltwise_for(ActivationType t, double alpha, double beta, dnnl::algorithm& alg,
                      float& a, float& b) {
  a = 0.0f;
  b = 0.0f;
  switch (t) {
    case ActivationType::kRelu: alg = dnnl::algorithm::eltwise_relu; return true;
    case ActivationType::kLeakyRelu:
      alg = dnnl::algorithm::eltwise_relu;
      a = static_cast<float>(alpha);
      return true;
    case ActivationType::kSigmoid: alg = dnnl::algorithm::eltwise_logistic; return true;
    case ActivationType::kTanh: alg = dnnl::algorithm::eltwise_tanh; return true;
    case ActivationType::kClip:
      alg = dnnl::algorithm::eltwise_clip;
      a = static_cast<float>(alpha);
      b = static_cast<float>(beta);
      return true;
    case ActivationType::kGeluErf: alg = dnnl::algorithm::eltwise_gelu_erf; return true;
    case ActivationType::kGeluTanh: alg = dnnl::algorithm::eltwise_gelu_tanh; return true;
    case ActivationType::kSilu:
      alg = dnnl::algorithm::eltwise_swish;
      a = 1.0f;
      return true;
    case ActivationType::kElu:
    case ActivationType::kSelu:
    case ActivationType::kSoftsign:
    case ActivationType::kSoftplus:
    case ActivationType::kHardSigmoid:
      return false;  // run by the reference activation afterwards
  }
  return false;
}

OmpThreadsScope::OmpThreadsScope() {
#ifdef EMBER_WITH_OPENMP
  saved_ = omp_get_max_threads();
  const int want = num_threads();
  if (want != saved_) {
    omp_set_num_threads(want);
  } else {
    saved_ = 0;
  }
#endif
}

OmpThreadsScope::~OmpThreadsScope() {
#ifdef EMBER_WITH_OPENMP
  if (saved_ > 0) omp_set_num_threads(saved_);
#endif
}

void dnnl_execute(const dnnl::primitive& prim, const std::unordered_map<int, dnnl::memory>& args) {
  const OmpThreadsScope threads;
  dnnl::stream stream(dnnl_cpu_engine());
  prim.execute(stream, args);
  stream.wait();
}

void dnnl_reorder(const dnnl::memory& from, const dnnl::memory& to) {
  const OmpThreadsScope threads;
  dnnl::stream stream(dnnl_cpu_engine());
  dnnl::memory src = from, dst = to;  // handles: the copies share the buffers
  dnnl::reorder(src, dst).execute(stream, src, dst);
  stream.wait();
}

namespace {

std::atomic<int64_t> g_fallbacks{0};

const char* status_name(dnnl_status_t s) {
  switch (s) {
    case dnnl_out_of_memory: return "out_of_memory";
    case dnnl_invalid_arguments: return "invalid_arguments";
    case dnnl_unimplemented: return "unimplemented";
    case dnnl_runtime_error: return "runtime_error";
    case dnnl_not_required: return "not_required";
    default: return "error";
  }
}

}  // namespace

void dnnl_refused(const KernelArgs& a, const char* kernel, const char* stage, const dnnl::error& e) {
  g_fallbacks.fetch_add(1);
  const std::string what =
      a.layer != nullptr ? static_cast<const Layer*>(a.layer)->describe() : std::string("a layer");
  std::string msg = "the CPU back end runs " + what + " with its reference kernel (slower): oneDNN " +
                    kernel + " refused it at " + stage + " (" + e.what() + ", status " +
                    status_name(e.status) + ")";
  if (e.status == dnnl_unimplemented && std::string(stage) == "execution") {
    // A primitive oneDNN created but cannot run: the known cause is a program that loads
    // libtorch_cpu before libdnnl (docs/engine.md).
    msg += "; in a C++ program linked with libtorch, link libdnnl before libtorch_cpu "
           "(docs/engine.md, 'oneDNN next to libtorch')";
  }
  if (a.cache != nullptr && a.layer != nullptr && a.cache->fallback_reported.insert(a.layer).second) {
    a.cache->warnings.push_back(msg);
  }
  if (!profiling_enabled()) return;
  static std::mutex mutex;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(mutex);
  if (!seen.insert(msg).second) return;
  std::fprintf(stderr, "[ember profile] %s\n", msg.c_str());
}

float* dnnl_f32_view(const HostTensor& t, std::vector<float>& storage) {
  if (t.dtype == DataType::kF32) return t.as<float>();
  storage = to_float_vector(t);
  return storage.data();
}

int64_t dnnl_fallback_count() { return g_fallbacks.load(); }

}  // namespace ember::engine::cpu

#endif  // EMBER_WITH_DNNL

namespace ember::engine::cpu {

namespace {
std::atomic<bool> g_refuse_for_testing{false};
}  // namespace

void dnnl_refuse_for_testing(bool on) { g_refuse_for_testing.store(on); }
bool dnnl_refusing_for_testing() { return g_refuse_for_testing.load(); }

#ifndef EMBER_WITH_DNNL
int64_t dnnl_fallback_count() { return 0; }
#endif

}  // namespace ember::engine::cpu
