// FusedPointwise on the GPU: the layer's generated kernel (backends/codegen/pointwise_codegen.cpp)
// compiled with NVRTC to a CUBIN for the device's architecture, loaded with the driver API and
// launched with cuLaunchKernel on the context's stream (so CUDA graphs capture it like any
// other kernel).
//
// Where the kernel comes from: the plan stores the source and, when it was built on a GPU, the
// CUBIN for that GPU's architecture. On a GPU of that architecture the CUBIN loads as it is; on
// another one (or when the build had no GPU) the source is compiled here, once per process for
// each distinct source and architecture (compiled images are cached in-process by a hash of the
// source and the architecture), and a plan whose image was for another GPU says so once through
// ExecutionContext::take_warnings. A failed compilation is an Error naming NVRTC's log.
//
// The driver API is reached through cudaGetDriverEntryPointByVersion, not by linking libcuda:
// a CUDA build must still load on a machine without a GPU driver (CI), where libcuda.so.1 does
// not exist and a link-time dependency on it would stop every binary from starting.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <nvrtc.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/codegen/pointwise_codegen.h"
#include "backends/semantics/fused_pointwise.h"
#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

namespace {

/// The four driver entry points the kernels need, looked up once.
struct Driver {
  PFN_cuGetErrorString_v6000 get_error_string = nullptr;
  PFN_cuModuleLoadData_v2000 module_load_data = nullptr;
  PFN_cuModuleGetFunction_v2000 module_get_function = nullptr;
  PFN_cuLaunchKernel_v4000 launch_kernel = nullptr;
};

const Driver& driver() {
  static const Driver d = [] {
    Driver r;
    auto get = [](const char* name, unsigned version, auto& fn) {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult status{};
      if (cudaGetDriverEntryPointByVersion(name, &p, version, cudaEnableDefault, &status) !=
              cudaSuccess ||
          status != cudaDriverEntryPointSuccess || p == nullptr) {
        cudaGetLastError();
        throw Error(std::string("fused pointwise: the CUDA driver has no ") + name +
                    " (update the NVIDIA driver, or build with EMBER_FUSE_POINTWISE=0)");
      }
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
    };
    get("cuGetErrorString", 6000, r.get_error_string);
    get("cuModuleLoadData", 2000, r.module_load_data);
    get("cuModuleGetFunction", 2000, r.module_get_function);
    get("cuLaunchKernel", 4000, r.launch_kernel);
    return r;
  }();
  return d;
}

void check_cu(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* s = nullptr;
  driver().get_error_string(r, &s);
  throw Error(std::string(what) + ": " + (s != nullptr ? s : "unknown CUDA driver error"));
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// Process-wide caches: compiled images by hash(source + target), loaded functions by device
/// and that hash. Modules stay loaded for the process's lifetime (a few KiB each).
struct KernelCache {
  std::mutex mu;
  std::map<std::string, std::vector<uint8_t>> images;
  std::map<std::string, CUfunction> functions;
  int compilations = 0;
};

KernelCache& kernel_cache() {
  static KernelCache* c = new KernelCache;  // never destroyed: modules outlive static teardown
  return *c;
}

std::string cache_key(const std::string& source, const std::string& target) {
  return hex(codegen::source_hash(source + '\n' + target)) + ":" + target;
}

struct PreparedFused final : PreparedLaunch {
  CUfunction fn = nullptr;
};

/// The layer's kernel on the current device, compiled and loaded on first use.
CUfunction fused_function(const FusedPointwiseParams& p, const CudaArgs& a) {
  if (PreparedLaunch* prep = a.res->prepared(a.layer, 0)) {
    return static_cast<PreparedFused*>(prep)->fn;
  }
  const std::string target = device_target();
  if (target.empty()) throw Error("fused pointwise: no current CUDA device");
  std::string source = p.kernel_source;
  if (source.empty()) {
    std::vector<DataType> dtypes;
    for (const DeviceTensor* t : a.inputs) dtypes.push_back(t->dtype);
    source = codegen::pointwise_kernel_source(p, dtypes);
  }
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::string key = cache_key(source, target);
  const std::string fn_key = std::to_string(device) + ":" + key;
  CUfunction fn = nullptr;
  {
    KernelCache& c = kernel_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.functions.find(fn_key);
    if (it != c.functions.end()) {
      fn = it->second;
    } else {
      const std::vector<uint8_t>* image = nullptr;
      if (!p.kernel_image.empty() && p.kernel_target == target) {
        image = &p.kernel_image;
      } else {
        auto img = c.images.find(key);
        if (img == c.images.end()) {
          img = c.images.emplace(key, compile_pointwise_kernel(source, target)).first;
          ++c.compilations;
        }
        image = &img->second;
      }
      // The runtime API made the device's primary context current; the module lives there.
      check(cudaFree(nullptr), "cudaFree(nullptr) (context initialization)");
      CUmodule module = nullptr;
      check_cu(driver().module_load_data(&module, image->data()), "cuModuleLoadData (fused pointwise kernel)");
      check_cu(driver().module_get_function(&fn, module, codegen::kPointwiseKernelName),
               "cuModuleGetFunction (fused pointwise kernel)");
      c.functions.emplace(fn_key, fn);
    }
  }
  if (!p.kernel_target.empty() && p.kernel_target != target) {
    a.res->warn_once(a.layer, a.layer->describe() + ": the plan's kernel was compiled for " +
                                  p.kernel_target + ", this GPU is " + target +
                                  "; recompiled from the plan's source with NVRTC");
  }
  auto prep = std::make_unique<PreparedFused>();
  prep->fn = fn;
  a.res->set_prepared(a.layer, 0, std::move(prep));
  return fn;
}

}  // namespace

std::vector<uint8_t> compile_pointwise_kernel(const std::string& source, const std::string& target) {
  nvrtcProgram prog = nullptr;
  nvrtcResult r = nvrtcCreateProgram(&prog, source.c_str(), "ember_fused_pointwise.cu", 0, nullptr,
                                     nullptr);
  if (r != NVRTC_SUCCESS) {
    throw Error(std::string("NVRTC: nvrtcCreateProgram failed: ") + nvrtcGetErrorString(r));
  }
  const std::string arch = "--gpu-architecture=" + target;  // sm_XX: a CUBIN, not PTX
  // No FMA contraction: each step rounds as the CPU reference computes it (a multiply and an
  // add stay two roundings), and the kernel is memory-bound, so contraction would buy nothing.
  const char* options[] = {arch.c_str(), "--std=c++17", "--fmad=false"};
  r = nvrtcCompileProgram(prog, 3, options);
  std::string log;
  size_t log_size = 0;
  if (nvrtcGetProgramLogSize(prog, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    nvrtcGetProgramLog(prog, log.data());
    log.resize(log_size - 1);
  }
  if (r != NVRTC_SUCCESS) {
    nvrtcDestroyProgram(&prog);
    throw Error(std::string("NVRTC could not compile the fused pointwise kernel for ") + target +
                ": " + nvrtcGetErrorString(r) + "\n" + log +
                "\n(build with EMBER_FUSE_POINTWISE=0 to keep these layers unfused, and please "
                "report this with the log)");
  }
  size_t size = 0;
  std::vector<uint8_t> cubin;
  r = nvrtcGetCUBINSize(prog, &size);
  if (r == NVRTC_SUCCESS) {
    cubin.resize(size);
    r = nvrtcGetCUBIN(prog, reinterpret_cast<char*>(cubin.data()));
  }
  nvrtcDestroyProgram(&prog);
  if (r != NVRTC_SUCCESS || cubin.empty()) {
    throw Error(std::string("NVRTC: no CUBIN for ") + target + ": " + nvrtcGetErrorString(r));
  }
  return cubin;
}

int pointwise_kernel_compilations() {
  KernelCache& c = kernel_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.compilations;
}

std::vector<uint8_t> cached_pointwise_kernel(const std::string& source, const std::string& target) {
  KernelCache& c = kernel_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const std::string key = cache_key(source, target);
  auto it = c.images.find(key);
  if (it == c.images.end()) {
    it = c.images.emplace(key, compile_pointwise_kernel(source, target)).first;
    ++c.compilations;
  }
  return it->second;
}

namespace {

/// The strided vectorized path unless EMBER_POINTWISE_STRIDED_VECTORS=0 (read on each call).
bool strided_vectors_enabled() {
  const char* e = std::getenv("EMBER_POINTWISE_STRIDED_VECTORS");
  return e == nullptr || std::string(e) != "0";
}

/// 32-bit offset walks where they fit unless EMBER_POINTWISE_INDEX32=0 (read on each call).
bool index32_enabled() {
  const char* e = std::getenv("EMBER_POINTWISE_INDEX32");
  return e == nullptr || std::string(e) != "0";
}

}  // namespace

void run(const FusedPointwiseParams& p, const CudaArgs& a) {
  std::vector<codegen::PointwiseOperand> ins, outs;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    ins.push_back({a.in(i).data, &a.in(i).dims, a.in(i).dtype});
  }
  for (size_t o = 0; o < a.outputs.size(); ++o) {
    outs.push_back({a.out(o).data, &a.out(o).dims, a.out(o).dtype});
  }
  codegen::PointwiseLaunchOptions options;
  options.strided_vectors = strided_vectors_enabled();
  options.index32 = index32_enabled();
  codegen::PointwiseLaunch launch;
  try {
    launch = codegen::plan_pointwise_launch(p, ins, outs, options, "");
  } catch (const Error& e) {  // the layer's name only when there is an error to report
    throw Error(a.layer->describe() + e.what());
  }
  switch (launch.path) {
    case codegen::PointwiseLaunch::Path::kEmpty: return;
    case codegen::PointwiseLaunch::Path::kTooManyDims:
      host_fallback(a);  // more dims than the kernel walks, even merged: the reference, on the host
      return;
    case codegen::PointwiseLaunch::Path::kRows: {
      // One warp per row, kRowKernelThreads / 32 rows a block.
      constexpr int64_t kRowsPerBlock = codegen::kRowKernelThreads / 32;
      const int64_t blocks = std::max<int64_t>(
          1, std::min<int64_t>((launch.work + kRowsPerBlock - 1) / kRowsPerBlock,
                               static_cast<int64_t>(sm_count()) * 16));
      CUfunction fn = fused_function(p, a);
      void* params[] = {&launch.args};
      check_cu(driver().launch_kernel(fn, static_cast<unsigned>(blocks), 1, 1,
                                      codegen::kRowKernelThreads, 1, 1, 0,
                                      reinterpret_cast<CUstream>(a.stream()), params, nullptr),
               "cuLaunchKernel (fused pointwise row kernel)");
      return;
    }
    case codegen::PointwiseLaunch::Path::kElements: break;
  }
  constexpr int kThreads = 256;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>((launch.work + kThreads - 1) / kThreads,
                           static_cast<int64_t>(sm_count()) * 16));
  CUfunction fn = fused_function(p, a);
  void* params[] = {&launch.args};
  check_cu(driver().launch_kernel(fn, static_cast<unsigned>(blocks), 1, 1, kThreads, 1, 1, 0,
                                  reinterpret_cast<CUstream>(a.stream()), params, nullptr),
           "cuLaunchKernel (fused pointwise kernel)");
}

}  // namespace ember::engine::cuda
