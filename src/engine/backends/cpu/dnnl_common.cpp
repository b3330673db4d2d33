// Shared pieces of the oneDNN kernels (see dnnl_common.h).
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

void dnnl_refused(const KernelArgs& a, const char* kernel, const dnnl::error& e) {
  if (!profiling_enabled()) return;
  static std::mutex mutex;
  static std::set<const void*> seen;
  std::lock_guard<std::mutex> lock(mutex);
  if (!seen.insert(a.layer).second) return;
  const std::string what =
      a.layer != nullptr ? static_cast<const Layer*>(a.layer)->describe() : std::string("a layer");
  std::fprintf(stderr, "[ember profile] oneDNN %s refused %s (%s); the reference kernel runs it\n",
               kernel, what.c_str(), e.what());
}

float* dnnl_f32_view(const HostTensor& t, std::vector<float>& storage) {
  if (t.dtype == DataType::kF32) return t.as<float>();
  storage = to_float_vector(t);
  return storage.data();
}

}  // namespace ember::engine::cpu

#endif  // EMBER_WITH_DNNL
