// CUDA conformance of FusedPointwise (the fuse_pointwise pass's layer, run by its NVRTC-compiled
// kernel): each chain of fused_pointwise_cases.h is built for "cuda" with the pass on and off,
// run on device buffers (layer by layer, then from a CUDA graph) and compared with the CPU
// reference executor under tolerance_for(dtype); plus the kernel stored in the plan, the
// recompilation of a plan built for another GPU, and the vectorized and generic paths.
// Skipped (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends/codegen/pointwise_codegen.h"
#include "backends/cuda/cuda_backend.h"
#include "backends/semantics/fused_pointwise.h"
#include "cuda_test_util.h"
#include "fused_pointwise_cases.h"
#include "plan/plan.h"

namespace ember::engine {
namespace {

using namespace fused_cases;  // NOLINT: the shared chains
using test::TestTensor;

/// Sets EMBER_FUSE_POINTWISE for one scope.
/// Pointwise fusion on or off for the builds in its scope; on includes the row reductions,
/// which the CUDA back end leaves out by default, so that the row kernel is tested too.
struct FuseSwitch {
  explicit FuseSwitch(bool on) {
    setenv("EMBER_FUSE_POINTWISE", on ? "1" : "0", 1);
    setenv("EMBER_FUSE_ROW_REDUCTIONS", on ? "1" : "0", 1);
  }
  ~FuseSwitch() {
    unsetenv("EMBER_FUSE_POINTWISE");
    unsetenv("EMBER_FUSE_ROW_REDUCTIONS");
  }
};

int count_json(const std::string& json, const std::string& kind) {
  const std::string key = "\"type\": \"" + kind + "\"";
  int n = 0;
  for (size_t at = json.find(key); at != std::string::npos; at = json.find(key, at + 1)) ++n;
  return n;
}

TEST(CudaFusedPointwise, ChainsMatchUnfusedAndCpuPerDtype) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (const Chain& c : chains()) {
    for (DataType dt : kFloatTypes) {
      const std::string what = c.name + " " + dtype_name(dt);
      SCOPED_TRACE(what);
      Network net;
      c.build(net, dt);
      const auto ins = inputs_for(net, c);
      std::vector<TestTensor> fused_out;
      {
        FuseSwitch on(true);
        test::CudaRunner fused(net, ins, {}, /*optimization_level=*/2);
        const std::string json = fused.inspect_json();
        EXPECT_EQ(count_json(json, "FusedPointwise"), c.fused_layers) << json;
        EXPECT_EQ(json.find("cuda.host"), std::string::npos) << json;
        fused_out = fused.run(ins);
        test::expect_matches_cpu(net, ins, fused_out, what + " fused");
        test::expect_matches_cpu(net, ins, fused.run(ins), what + " fused (CUDA graph)");
        EXPECT_TRUE(fused.context().take_warnings().empty());
      }
      FuseSwitch off(false);
      test::CudaRunner unfused(net, ins, {}, 2);
      EXPECT_EQ(count_json(unfused.inspect_json(), "FusedPointwise"), 0);
      const auto unfused_out = unfused.run(ins);
      ASSERT_EQ(unfused_out.size(), fused_out.size());
      for (size_t i = 0; i < fused_out.size(); ++i) {
        test::expect_close(fused_out[i], unfused_out[i].to_floats(), fused_out[i].dtype,
                           what + " fused vs unfused output " + std::to_string(i));
      }
    }
  }
}

TEST(CudaFusedPointwise, OddSizesAndBroadcastsTakeTheGenericPath) {
  EMBER_SKIP_WITHOUT_CUDA();
  // 3 * 5 * 7 elements (no multiple of 4: no vectorized path), a broadcast in the middle dim,
  // and a large tensor where the grid-stride loop wraps.
  for (const std::vector<int64_t>& dims :
       {std::vector<int64_t>{3, 5, 7}, std::vector<int64_t>{64, 129, 257}}) {
    for (DataType dt : kFloatTypes) {
      Network net;
      Tensor* x = net.add_input("x", dt, Shape(dims.begin(), dims.end()));
      Tensor* g = net.add_input("g", dt, {dims[0], 1, dims[2]});
      Tensor* t = net.add_elementwise(x, g, ElementWiseOp::kProd, "mul")->output();
      t = net.add_activation(t, ActivationType::kGeluTanh, 0, 0, "gelu")->output();
      net.mark_output(net.add_unary(t, UnaryOp::kNeg, "neg")->output(), "out");
      const std::vector<TestTensor> ins = {TestTensor::random(dt, dims, 1, -3.0f, 3.0f),
                                           TestTensor::random(dt, {dims[0], 1, dims[2]}, 2)};
      test::CudaRunner runner(net, ins, {}, 2);
      EXPECT_EQ(count_json(runner.inspect_json(), "FusedPointwise"), 1);
      test::expect_matches_cpu(net, ins, runner.run(ins), dtype_name(dt));
    }
  }
}

TEST(CudaFusedPointwise, RowAndPlaneBroadcastsTakeTheStridedVectorPath) {
  // Broadcasts whose last dim steps by 1 or 0 with every length a multiple of 4: the strided
  // vectorized path (offsets walked once per 4 elements). ConvNeXt's layer scale and residual
  // over NHWC rows, a squeeze-and-excitation gate [N, 1, 1, C] over NHWC, a [C, 1, 1] scale and
  // shift over NCHW planes of 16, and a [C] row of 8 over a 3-d tensor. The path is the
  // default, so the setting is left unset here.
  EMBER_SKIP_WITHOUT_CUDA();
  struct Case {
    std::vector<int64_t> x, g;
    bool residual;
  };
  const std::vector<Case> cases = {{{2, 6, 6, 96}, {96}, true},
                                   {{2, 5, 5, 24}, {2, 1, 1, 24}, false},
                                   {{2, 8, 4, 4}, {8, 1, 1}, true},
                                   {{3, 40, 8}, {8}, false}};
  for (const Case& c : cases) {
    for (DataType dt : kFloatTypes) {
      Network net;
      Tensor* x = net.add_input("x", dt, Shape(c.x.begin(), c.x.end()));
      Tensor* g = net.add_input("g", dt, Shape(c.g.begin(), c.g.end()));
      Tensor* t = net.add_activation(g, ActivationType::kSigmoid, 0, 0, "gate")->output();
      t = net.add_elementwise(x, t, ElementWiseOp::kProd, "mul")->output();
      std::vector<TestTensor> ins = {TestTensor::random(dt, c.x, 3, -3.0f, 3.0f),
                                     TestTensor::random(dt, c.g, 4)};
      if (c.residual) {
        Tensor* r = net.add_input("r", dt, Shape(c.x.begin(), c.x.end()));
        t = net.add_elementwise(t, r, ElementWiseOp::kSum, "add")->output();
        ins.push_back(TestTensor::random(dt, c.x, 5));
      }
      net.mark_output(net.add_unary(t, UnaryOp::kNeg, "neg")->output(), "out");
      test::CudaRunner runner(net, ins, {}, 2);
      EXPECT_GE(count_json(runner.inspect_json(), "FusedPointwise"), 1);
      const std::string what = dims_to_string(c.x) + " by " + dims_to_string(c.g) + " " +
                               dtype_name(dt);
      test::expect_matches_cpu(net, ins, runner.run(ins), what);
      test::expect_matches_cpu(net, ins, runner.run(ins), what + " (CUDA graph)");
    }
  }
}

TEST(CudaFusedPointwise, KernelIsCompiledAtBuildTimeAndStoredInThePlan) {
  EMBER_SKIP_WITHOUT_CUDA();
  Network net;
  chains()[1].build(net, DataType::kF16);
  BuilderConfig config;
  config.backend = "cuda";
  const std::vector<uint8_t> bytes = Builder(config).build(net);
  const PlanModel plan = plan_read(bytes.data(), bytes.size());
  int fused = 0;
  for (const Layer* l : plan.network.layers()) {
    if (l->kind() != LayerKind::kFusedPointwise) continue;
    ++fused;
    const auto& p = l->params_as<FusedPointwiseParams>();
    EXPECT_EQ(p.kernel_target, cuda::device_target());
    EXPECT_NE(p.kernel_source.find(codegen::kPointwiseKernelName), std::string::npos);
    ASSERT_GE(p.kernel_image.size(), 4u);
    EXPECT_EQ(std::memcmp(p.kernel_image.data(), "\x7f" "ELF", 4), 0);
  }
  EXPECT_EQ(fused, 1);
}

TEST(CudaFusedPointwise, APlanForAnotherGpuRecompilesFromSourceAndSaysSo) {
  EMBER_SKIP_WITHOUT_CUDA();
  // The layer as a plan built on another GPU holds it: its source, that GPU's target and an
  // image this GPU must not load.
  FusedPointwiseParams p;
  semantics::FusedStep relu;
  relu.family = FusedOpFamily::kActivation;
  relu.code = static_cast<int>(ActivationType::kRelu);
  relu.operands[0] = 0;
  semantics::fused_append(p, relu);
  append_elementwise(p, ElementWiseOp::kSum, 2, 1);
  p.outputs = {3};
  p.kernel_source = codegen::pointwise_kernel_source(p, {DataType::kF32, DataType::kF32});
  p.kernel_target = cuda::device_target() == "sm_80" ? "sm_90" : "sm_80";
  p.kernel_image = {1, 2, 3, 4};
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 32});
  Tensor* y = net.add_input("y", DataType::kF32, {32});
  net.mark_output(net.add_layer(p, {x, y}, "fused")->output(), "out");
  const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF32, {4, 32}, 1),
                                       TestTensor::random(DataType::kF32, {32}, 2)};
  test::CudaRunner runner(net, ins, {}, 0);
  test::expect_matches_cpu(net, ins, runner.run(ins), "recompiled");
  const auto warnings = runner.context().take_warnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("recompiled from the plan's source with NVRTC"), std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find(p.kernel_target), std::string::npos) << warnings[0];
}

TEST(CudaFusedPointwise, IdenticalChainsCompileOnce) {
  EMBER_SKIP_WITHOUT_CUDA();
  // Two engines of the same chain: the second build reuses the first's compiled kernel.
  Network net;
  chains()[0].build(net, DataType::kBF16);
  const auto ins = inputs_for(net, chains()[0]);
  test::CudaRunner first(net, ins, {}, 2);
  const int after_first = cuda::pointwise_kernel_compilations();
  test::CudaRunner second(net, ins, {}, 2);
  EXPECT_EQ(cuda::pointwise_kernel_compilations(), after_first);
  test::expect_matches_cpu(net, ins, second.run(ins), "second engine");
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
