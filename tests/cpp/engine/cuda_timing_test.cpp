// Tactic timing on the GPU: a "cuda" build times every matmul and (de)convolution problem and
// stores the choices in the plan and in the BuilderConfig's timing cache; a second build with the
// saved cache times nothing; a deserialized engine's first call times nothing; loaded choices
// that the library rejects (corrupt bytes) or that belong to another GPU are timed again, not
// trusted. Results are compared with the CPU reference under tolerance_for(dtype). Skipped
// (visibly) without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/lt_algo.h"
#include "cuda_test_util.h"
#include "ember/engine/half.h"
#include "ember/engine/timing_cache.h"
#include "plan/plan.h"

namespace ember::engine {
namespace {

using test::TestTensor;

// A convolution, a deconvolution and a matmul with a bias and relu epilogue: three libraries'
// worth of problems in one plan.
struct Case {
  Network net;
  std::vector<TestTensor> inputs;
};

std::unique_ptr<Case> make_case(DataType t) {
  auto c = std::make_unique<Case>();
  Network& net = c->net;
  Tensor* x = net.add_input("x", t, {2, 3, 9, 9});
  Tensor* w = net.add_input("w", t, {8, 3, 3, 3});
  ConvolutionParams cp;
  cp.stride = {1, 1};
  cp.padding_begin = cp.padding_end = {1, 1};
  cp.dilation = {1, 1};
  net.mark_output(net.add_convolution(x, w, nullptr, cp)->output(), "conv");
  Tensor* dx = net.add_input("dx", t, {2, 4, 5, 5});
  Tensor* dw = net.add_input("dw", t, {4, 3, 3, 3});
  DeconvolutionParams dp;
  dp.stride = {2, 2};
  dp.padding_begin = dp.padding_end = {1, 1};
  dp.dilation = {1, 1};
  dp.output_padding = {0, 0};
  net.mark_output(net.add_layer(dp, {dx, dw, nullptr}, "deconv")->output(), "deconv");
  Tensor* a = net.add_input("a", t, {3, 40, 64});
  Tensor* b = net.add_input("b", t, {64, 48});
  Tensor* bias = net.add_input("bias", t, {48});
  MatrixMultiplyParams mp;
  mp.epilogue.fused_activation = true;
  mp.epilogue.activation = ActivationType::kRelu;
  net.mark_output(net.add_layer(mp, {a, b, bias, nullptr}, "mm")->output(), "mm");
  uint32_t seed = 70;
  for (const Tensor* in : net.inputs()) {
    std::vector<int64_t> dims;
    for (const DimExpr& d : in->shape()) dims.push_back(d.constant());
    c->inputs.push_back(TestTensor::random(t, dims, seed++, -0.5f, 0.5f));
  }
  return c;
}

std::vector<uint8_t> build(const Case& c, std::shared_ptr<TimingCache> cache, BuildReport* report) {
  BuilderConfig config;
  config.backend = "cuda";
  config.optimization_level = 0;
  config.timing_cache = std::move(cache);
  OptimizationProfile p;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    p.set_dimensions(c.net.inputs()[i]->name(), c.inputs[i].dims, c.inputs[i].dims,
                     c.inputs[i].dims);
  }
  config.profiles.push_back(p);
  return Builder(config).build(c.net, report);
}

std::shared_ptr<const Engine> load(const std::vector<uint8_t>& plan) {
  return Runtime().deserialize(plan.data(), plan.size());
}

// Runs twice (layer by layer, then a captured graph) and compares with the CPU both times.
void run_and_check(const Case& c, std::shared_ptr<const Engine> engine, const std::string& what) {
  test::CudaRunner runner(c.net, std::move(engine));
  test::expect_matches_cpu(c.net, c.inputs, runner.run(c.inputs), what);
  test::expect_matches_cpu(c.net, c.inputs, runner.run(c.inputs), what + " (CUDA graph)");
}

const std::vector<DataType> kTypes = {DataType::kF32, DataType::kF16};

TEST(CudaTiming, BuildFillsTheCacheAndThePlan) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kTypes) {
    const auto c = make_case(t);
    auto cache = std::make_shared<TimingCache>();
    BuildReport report;
    const auto plan = build(*c, cache, &report);
    EXPECT_GE(report.timing_entries, 3) << dtype_name(t);  // conv, deconv, matmul
    EXPECT_EQ(report.timed_problems, report.timing_entries) << dtype_name(t);
    EXPECT_EQ(static_cast<int64_t>(cache->size()), report.timing_entries) << dtype_name(t);
    EXPECT_EQ(static_cast<int64_t>(plan_read(plan.data(), plan.size()).timing.size()),
              report.timing_entries);
    const auto engine = load(plan);
    run_and_check(*c, engine, std::string("timed plan ") + dtype_name(t));
    // The plan carried every choice: the first call timed nothing.
    EXPECT_EQ(engine->timing_cache().timed_problems(), 0) << dtype_name(t);
  }
}

TEST(CudaTiming, SecondBuildWithTheSavedCacheTimesNothing) {
  EMBER_SKIP_WITHOUT_CUDA();
  const auto c = make_case(DataType::kF16);
  auto first = std::make_shared<TimingCache>();
  BuildReport r1;
  const auto plan1 = build(*c, first, &r1);
  ASSERT_GT(r1.timed_problems, 0);
  // Saved and loaded, as ember.compile's timing_cache file does.
  const std::vector<uint8_t> saved = first->serialize();
  auto second = TimingCache::deserialize(saved.data(), saved.size());
  BuildReport r2;
  const auto plan2 = build(*c, second, &r2);
  EXPECT_EQ(r2.timed_problems, 0);
  EXPECT_EQ(r2.timing_entries, r1.timing_entries);
  const auto t1 = plan_read(plan1.data(), plan1.size()).timing;
  const auto t2 = plan_read(plan2.data(), plan2.size()).timing;
  ASSERT_EQ(t1.size(), t2.size());
  for (size_t i = 0; i < t1.size(); ++i) {
    EXPECT_EQ(t1[i].problem, t2[i].problem);
    EXPECT_EQ(t1[i].choice, t2[i].choice) << t1[i].problem;
  }
  run_and_check(*c, load(plan2), "plan built from a saved cache");
  // Without a cache, the build times again.
  BuildReport r3;
  build(*c, nullptr, &r3);
  EXPECT_EQ(r3.timed_problems, r1.timed_problems);
}

// Rewrites the plan's timing section with `edit` applied to every entry.
template <class Edit>
std::vector<uint8_t> edited_plan(const std::vector<uint8_t>& plan, Edit edit, size_t* entries) {
  PlanModel m = plan_read(plan.data(), plan.size());
  for (TimingEntry& e : m.timing) edit(e);
  *entries = m.timing.size();
  return plan_write(m);
}

TEST(CudaTiming, CorruptChoicesAreTimedAgainNotTrusted) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kTypes) {
    const auto c = make_case(t);
    const auto plan = build(*c, nullptr, nullptr);
    size_t n = 0;
    // Every byte 0xff: no cuBLASLt algorithm id, and cuDNN algorithm -1.
    const auto bad = edited_plan(plan, [](TimingEntry& e) { std::fill(e.choice.begin(), e.choice.end(), 0xff); }, &n);
    ASSERT_GE(n, 3u);
    const auto engine = load(bad);
    run_and_check(*c, engine, std::string("corrupt choices ") + dtype_name(t));
    EXPECT_EQ(engine->timing_cache().timed_problems(), static_cast<int64_t>(n)) << dtype_name(t);
    // A choice of the wrong length is timed again too.
    const auto short_plan = edited_plan(plan, [](TimingEntry& e) { e.choice.resize(3); }, &n);
    const auto engine2 = load(short_plan);
    run_and_check(*c, engine2, std::string("short choices ") + dtype_name(t));
    EXPECT_EQ(engine2->timing_cache().timed_problems(), static_cast<int64_t>(n)) << dtype_name(t);
  }
}

TEST(CudaTiming, ChoicesOfAnotherGpuAreIgnored) {
  EMBER_SKIP_WITHOUT_CUDA();
  const auto c = make_case(DataType::kF16);
  const auto plan = build(*c, nullptr, nullptr);
  size_t n = 0;
  const auto foreign = edited_plan(
      plan, [](TimingEntry& e) { e.device = "NVIDIA A100-SXM4-40GB|sm80|108 SMs|" + e.device; }, &n);
  const auto engine = load(foreign);
  run_and_check(*c, engine, "foreign choices");
  EXPECT_EQ(engine->timing_cache().timed_problems(), static_cast<int64_t>(n));
  // The foreign entries stay (harmless); this GPU's choices are added beside them.
  EXPECT_EQ(engine->timing_cache().size(), 2 * n);
}

// An INT8 or FP8 QuantizedMatrixMultiply [64, 128] x [48, 128]^T with a bias, to f16.
std::unique_ptr<Case> make_quantized_case(DataType q) {
  auto c = std::make_unique<Case>();
  Network& net = c->net;
  const int64_t m = 64, n = 48, k = 128;
  Tensor* a = net.add_input("a", q, {m, k});
  std::vector<uint8_t> w(static_cast<size_t>(n * k));
  for (size_t i = 0; i < w.size(); ++i) {
    const int v = static_cast<int>(i * 29 % 255) - 127;
    w[i] = q == DataType::kI8 ? static_cast<uint8_t>(static_cast<int8_t>(v))
                              : f32_to_f8e4m3(static_cast<float>(v) * 0.25f);
  }
  auto scalar = [&net](float v) {
    return net.add_constant(Weights::from_vector(DataType::kF32, {1}, std::vector<float>{v}))
        ->output();
  };
  std::vector<float> bias(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) bias[static_cast<size_t>(j)] = 0.25f * static_cast<float>(j % 5);
  const TestTensor bt = TestTensor::floats(DataType::kF16, {n}, bias);
  QuantizedMatrixMultiplyParams p;
  p.out = DataType::kF16;
  Tensor* y = net.add_layer(p, {a, net.add_constant(Weights::copy(q, {n, k}, w.data()))->output(),
                                scalar(0.02f), scalar(0.004f),
                                net.add_constant(Weights::copy(DataType::kF16, {n}, bt.bytes.data()))
                                    ->output()})
                  ->output();
  net.mark_output(y, "y");
  if (q == DataType::kI8) {
    c->inputs.push_back(TestTensor::random(q, {m, k}, 81, -127.0f, 128.0f));
  } else {
    TestTensor at;
    at.dtype = q;
    at.dims = {m, k};
    for (float v : TestTensor::random(DataType::kF32, {m, k}, 81, -300.0f, 300.0f).to_floats()) {
      at.bytes.push_back(f32_to_f8e4m3(v));
    }
    c->inputs.push_back(at);
  }
  return c;
}

// The quantized GEMMs choose their cuBLASLt algorithm as the float ones do: timed at build,
// stored in the plan under a key naming the quantized problem, looked up (not timed) after a load.
TEST(CudaTiming, QuantizedProductsAreTimedAndTheirChoicesKept) {
  EMBER_SKIP_WITHOUT_CUDA();
  int dev = 0, major = 0, minor = 0;
  test::cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  test::cuda_ok(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cc");
  test::cuda_ok(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cc");
  std::vector<std::pair<DataType, std::string>> kinds = {{DataType::kI8, "cublasLt i8 tn "}};
  if (major * 10 + minor >= 89) kinds.emplace_back(DataType::kF8E4M3, "cublasLt f8e4m3 tn ");
  for (const auto& [q, prefix] : kinds) {
    const auto c = make_quantized_case(q);
    BuildReport report;
    const auto plan = build(*c, nullptr, &report);
    const auto timing = plan_read(plan.data(), plan.size()).timing;
    int quantized = 0;
    for (const TimingEntry& e : timing) quantized += e.problem.rfind(prefix, 0) == 0 ? 1 : 0;
    EXPECT_EQ(quantized, 1) << prefix << "(entries: " << timing.size() << ")";
    EXPECT_EQ(report.timed_problems, report.timing_entries) << prefix;
    const auto engine = load(plan);
    run_and_check(*c, engine, prefix + "timed plan");
    EXPECT_EQ(engine->timing_cache().timed_problems(), 0) << prefix;
  }
}

TEST(CudaTiming, NewShapesAreTimedOnTheirFirstCallOnly) {
  EMBER_SKIP_WITHOUT_CUDA();
  const DataType t = DataType::kF16;
  Network net;
  Tensor* a = net.add_input("a", t, {DimExpr::symbol("m"), 64});
  Tensor* b = net.add_input("b", t, {64, 32});
  net.mark_output(net.add_matrix_multiply(a, false, b, false)->output(), "out");
  BuilderConfig config;
  config.backend = "cuda";
  config.optimization_level = 0;
  OptimizationProfile p;
  p.set_range("m", 1, 16, 256);
  config.profiles.push_back(p);
  BuildReport report;
  const auto plan = Builder(config).build(net, &report);
  EXPECT_EQ(report.timing_entries, 1);  // the opt shape
  test::CudaRunner runner(net, load(plan));
  const std::vector<TestTensor> at_opt{TestTensor::random(t, {16, 64}, 1),
                                       TestTensor::random(t, {64, 32}, 2)};
  const std::vector<TestTensor> other{TestTensor::random(t, {200, 64}, 3),
                                      TestTensor::random(t, {64, 32}, 4)};
  test::expect_matches_cpu(net, at_opt, runner.run(at_opt), "m=16");
  EXPECT_EQ(runner.engine().timing_cache().timed_problems(), 0);
  test::expect_matches_cpu(net, other, runner.run(other), "m=200");
  EXPECT_EQ(runner.engine().timing_cache().timed_problems(), 1);
  test::expect_matches_cpu(net, other, runner.run(other), "m=200 again");
  EXPECT_EQ(runner.engine().timing_cache().timed_problems(), 1);
}

// EMBER_LT_SEARCH=wide: the plan times the same problems (more candidates each), its choices
// run and match the CPU, a saved cache rebuilds without timing; a bad value is refused by name.
TEST(CudaTiming, WideCublasLtSearchChoosesAlgorithmsThatRunAndAreKept) {
  EMBER_SKIP_WITHOUT_CUDA();
  {
    const test::ScopedEnv wide("EMBER_LT_SEARCH", "wide");
    for (DataType t : kTypes) {
      const auto c = make_case(t);
      // A product big enough for cuBLASLt's multi-tile, cluster and split-K kernels, with a
      // residual read as C (timing must not accumulate into it).
      Network& net = c->net;
      Tensor* a = net.add_input("wa", t, {512, 256});
      Tensor* b = net.add_input("wb", t, {256, 384});
      Tensor* bias = net.add_input("wbias", t, {384});
      Tensor* r = net.add_input("wr", t, {512, 384});
      MatrixMultiplyParams mp;
      net.mark_output(net.add_layer(mp, {a, b, bias, r}, "wide_mm")->output(), "wide_mm");
      uint32_t seed = 90;
      for (size_t i = c->inputs.size(); i < net.inputs().size(); ++i) {
        std::vector<int64_t> dims;
        for (const DimExpr& d : net.inputs()[i]->shape()) dims.push_back(d.constant());
        c->inputs.push_back(TestTensor::random(t, dims, seed++, -0.5f, 0.5f));
      }
      auto cache = std::make_shared<TimingCache>();
      BuildReport report;
      const auto plan = build(*c, cache, &report);
      EXPECT_GE(report.timing_entries, 4) << dtype_name(t);  // conv, deconv, two matmuls
      EXPECT_EQ(report.timed_problems, report.timing_entries) << dtype_name(t);
      run_and_check(*c, load(plan), std::string("wide search ") + dtype_name(t));
      const std::vector<uint8_t> saved = cache->serialize();
      BuildReport again;
      build(*c, TimingCache::deserialize(saved.data(), saved.size()), &again);
      EXPECT_EQ(again.timed_problems, 0) << dtype_name(t);
    }
  }
  const test::ScopedEnv bad("EMBER_LT_SEARCH", "widest");
  const auto c = make_case(DataType::kF16);
  try {
    build(*c, std::make_shared<TimingCache>(), nullptr);
    ADD_FAILURE() << "EMBER_LT_SEARCH=widest built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("EMBER_LT_SEARCH='widest'"), std::string::npos)
        << e.what();
  }
}

// The setting itself is host code: checked without a GPU (CI runs it).
TEST(CudaTiming, LtSearchSettingIsParsedAndABadValueNamed) {
  {
    const test::ScopedEnv unset("EMBER_LT_SEARCH", nullptr);
    EXPECT_EQ(cuda::lt_search(), cuda::LtSearch::kHeuristic);
  }
  {
    const test::ScopedEnv wide("EMBER_LT_SEARCH", "wide");
    EXPECT_EQ(cuda::lt_search(), cuda::LtSearch::kWide);
  }
  {
    const test::ScopedEnv heuristic("EMBER_LT_SEARCH", "heuristic");
    EXPECT_EQ(cuda::lt_search(), cuda::LtSearch::kHeuristic);
  }
  const test::ScopedEnv bad("EMBER_LT_SEARCH", "Wide");
  try {
    cuda::lt_search();
    ADD_FAILURE() << "EMBER_LT_SEARCH=Wide was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("EMBER_LT_SEARCH='Wide': expected 'heuristic' or 'wide'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
