// Helpers for the CUDA conformance suites (compiled only with EMBER_WITH_CUDA): build a network
// for the "cuda" back end, run it on device copies of host inputs, and compare every output with
// the CPU reference executor under tolerance_for(dtype).
#pragma once

#ifdef EMBER_WITH_CUDA

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"
#include "ember/engine/runtime.h"
#include "test_util.h"

namespace ember::engine::test {

/// Sets the environment variable `name` to `value` (unsets it for nullptr) for its lifetime and
/// restores what was there: for the back end's switches, which it reads on each call or when a
/// layer's state is prepared.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  bool had_ = false;
  std::string old_;
};

/// True when a CUDA device is visible (CI has none: suites skip visibly).
inline bool cuda_device_present() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define EMBER_SKIP_WITHOUT_CUDA()                                      \
  do {                                                                 \
    if (!::ember::engine::test::cuda_device_present()) {               \
      GTEST_SKIP() << "no CUDA device";                                \
    }                                                                  \
  } while (0)

/// Throws std::runtime_error naming the call when a CUDA runtime call fails.
inline void cuda_ok(cudaError_t s, const char* what) {
  if (s != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(s));
}

/// One "cuda" engine of a network (optimization level 0 unless asked: no constant folding or
/// fusion, so every layer runs as written) and one context; run() may be called with several
/// shapes.
class CudaRunner {
 public:
  /// Builds with `profiles`, or one exact profile from `example_inputs` when profiles is empty.
  CudaRunner(const Network& net, const std::vector<TestTensor>& example_inputs,
             std::vector<OptimizationProfile> profiles = {}, int optimization_level = 0,
             ChannelsLast channels_last = ChannelsLast::kAuto)
      : net_(net) {
    BuilderConfig config;
    config.backend = "cuda";
    config.optimization_level = optimization_level;
    config.channels_last = channels_last;
    config.profiles = std::move(profiles);
    if (config.profiles.empty()) {
      OptimizationProfile p;
      for (size_t i = 0; i < example_inputs.size() && i < net.inputs().size(); ++i) {
        p.set_dimensions(net.inputs()[i]->name(), example_inputs[i].dims, example_inputs[i].dims,
                         example_inputs[i].dims);
      }
      config.profiles.push_back(p);
    }
    const std::vector<uint8_t> plan = Builder(config).build(net);
    engine_ = Runtime().deserialize(plan.data(), plan.size());
    ctx_ = engine_->create_execution_context();
  }

  /// Runs an engine already built (and deserialized) from `net`.
  CudaRunner(const Network& net, std::shared_ptr<const Engine> engine)
      : net_(net), engine_(std::move(engine)), ctx_(engine_->create_execution_context()) {}

  const Engine& engine() const { return *engine_; }
  /// The engine's per-layer JSON (to check which layers got device kernels).
  std::string inspect_json() const { return engine_->inspect_json(); }
  ExecutionContext& context() { return *ctx_; }

  /// Runs on device copies of `inputs`; returns the outputs copied back to the host.
  std::vector<TestTensor> run(const std::vector<TestTensor>& inputs) {
    std::vector<void*> buffers;
    struct Free {
      std::vector<void*>* b;
      ~Free() {
        for (void* p : *b) cudaFree(p);
      }
    } free_all{&buffers};
    auto device_alloc = [&buffers](size_t bytes) {
      void* p = nullptr;
      cuda_ok(cudaMalloc(&p, bytes > 0 ? bytes : 1), "cudaMalloc");
      buffers.push_back(p);
      return p;
    };
    for (size_t i = 0; i < inputs.size(); ++i) {
      const std::string& name = net_.inputs()[i]->name();
      ctx_->set_input_shape(name, inputs[i].dims);
      void* d = device_alloc(inputs[i].bytes.size());
      cuda_ok(cudaMemcpy(d, inputs[i].bytes.data(), inputs[i].bytes.size(), cudaMemcpyHostToDevice),
              "cudaMemcpy (input)");
      ctx_->set_tensor_address(name, d, inputs[i].dtype);
    }
    std::vector<TestTensor> outs;
    std::vector<void*> out_ptrs;
    for (const Tensor* t : net_.outputs()) {
      TestTensor o;
      o.dtype = t->dtype();
      o.dims = ctx_->tensor_shape(t->name());
      o.bytes.resize(static_cast<size_t>(o.numel()) * dtype_size(o.dtype));
      void* d = device_alloc(o.bytes.size());
      ctx_->set_tensor_address(t->name(), d, o.dtype);
      out_ptrs.push_back(d);
      outs.push_back(std::move(o));
    }
    ctx_->execute();
    cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    for (size_t i = 0; i < outs.size(); ++i) {
      cuda_ok(cudaMemcpy(outs[i].bytes.data(), out_ptrs[i], outs[i].bytes.size(),
                         cudaMemcpyDeviceToHost),
              "cudaMemcpy (output)");
    }
    return outs;
  }

 private:
  const Network& net_;
  std::shared_ptr<const Engine> engine_;
  std::unique_ptr<ExecutionContext> ctx_;
};

/// Expects `actual` (cuda) to match the CPU reference executor's outputs for `inputs`.
inline void expect_matches_cpu(const Network& net, const std::vector<TestTensor>& inputs,
                               const std::vector<TestTensor>& actual, const std::string& what) {
  const std::vector<TestTensor> ref = run_network_direct(net, inputs);
  ASSERT_EQ(ref.size(), actual.size()) << what;
  for (size_t i = 0; i < ref.size(); ++i) {
    const std::string label = what + " output " + std::to_string(i);
    ASSERT_EQ(ref[i].dims, actual[i].dims) << label;
    ASSERT_EQ(ref[i].dtype, actual[i].dtype) << label;
    if (dtype_is_float(ref[i].dtype)) {
      expect_close(actual[i], ref[i].to_floats(), ref[i].dtype, label);
    } else {
      expect_equal_ints(actual[i], ref[i].to_ints(), label);
    }
  }
}

/// Builds `net` for cuda (exact shapes of `inputs`), runs it and compares with the CPU.
/// Also expects no layer of the engine to have run through the host fallback. Runs twice: the
/// first call of a shape runs layer by layer, the second captures and replays a CUDA graph.
inline void check_cuda_matches_cpu(const Network& net, const std::vector<TestTensor>& inputs,
                                   const std::string& what) {
  CudaRunner runner(net, inputs);
  EXPECT_EQ(runner.inspect_json().find("cuda.host"), std::string::npos)
      << what << ": a layer ran through host_fallback:\n"
      << runner.inspect_json();
  expect_matches_cpu(net, inputs, runner.run(inputs), what);
  expect_matches_cpu(net, inputs, runner.run(inputs), what + " (CUDA graph)");
}

}  // namespace ember::engine::test

#endif  // EMBER_WITH_CUDA
