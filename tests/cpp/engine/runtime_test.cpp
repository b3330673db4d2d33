// Runtime, Engine and ExecutionContext: dynamic shapes, errors, concurrency, inspection.
#include <gtest/gtest.h>

#include <thread>

#include "backends/cpu/dnnl_conv.h"
#include "backends/cpu/dnnl_fallback.h"
#include "ember/engine/runtime.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// y = relu(x @ W + b) with x [n, 8], W [8, 4]; built for n in [1, 16].
struct SmallMlp {
  Network net;
  std::vector<float> w, b;
  SmallMlp() {
    for (int i = 0; i < 32; ++i) w.push_back(0.1f * static_cast<float>(i % 7) - 0.3f);
    for (int i = 0; i < 4; ++i) b.push_back(0.05f * static_cast<float>(i));
    Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 8});
    Tensor* wt = net.add_constant(Weights::from_vector(DataType::kF32, {8, 4}, w), "w")->output();
    Tensor* bt = net.add_constant(Weights::from_vector(DataType::kF32, {1, 4}, b), "b")->output();
    Tensor* y = net.add_matrix_multiply(x, false, wt, false, "mm")->output();
    y = net.add_elementwise(y, bt, ElementWiseOp::kSum, "bias")->output();
    y = net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output();
    net.mark_output(y, "y");
  }
  std::vector<float> reference(const std::vector<float>& x, int64_t n) const {
    std::vector<float> out(static_cast<size_t>(n * 4));
    for (int64_t i = 0; i < n; ++i) {
      for (int j = 0; j < 4; ++j) {
        double acc = b[j];
        for (int k = 0; k < 8; ++k) acc += static_cast<double>(x[i * 8 + k]) * w[k * 4 + j];
        out[i * 4 + j] = static_cast<float>(std::max(acc, 0.0));
      }
    }
    return out;
  }
  std::shared_ptr<const Engine> build() const {
    BuilderConfig config;
    config.profiles.push_back(OptimizationProfile().set_range("n", 1, 4, 16));
    const auto plan = Builder(config).build(net);
    return Runtime().deserialize(plan.data(), plan.size());
  }
};

std::vector<float> run(ExecutionContext& ctx, const std::vector<float>& x, int64_t n) {
  ctx.set_input_shape("x", {n, 8});
  std::vector<float> y(static_cast<size_t>(n * 4));
  ctx.set_tensor_address("x", const_cast<float*>(x.data()), DataType::kF32);
  ctx.set_tensor_address("y", y.data(), DataType::kF32);
  ctx.execute();
  return y;
}

TEST(Runtime, DynamicShapesRunWithoutRebuilding) {
  SmallMlp m;
  const auto engine = m.build();
  auto ctx = engine->create_execution_context();
  for (int64_t n : {1, 5, 16, 3}) {
    const auto x = TestTensor::random(DataType::kF32, {n, 8}, static_cast<uint32_t>(n)).to_floats();
    ctx->set_input_shape("x", {n, 8});
    EXPECT_EQ(ctx->tensor_shape("y"), (std::vector<int64_t>{n, 4}));
    const auto y = run(*ctx, x, n);
    const auto ref = m.reference(x, n);
    for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], ref[i], 1e-5) << "n=" << n << " i=" << i;
  }
}

TEST(Runtime, OneDnnFallbackIsReportedOncePerLayerAndContext) {
  // A layer oneDNN refuses runs on the reference kernel (same result) and the context reports
  // it once, naming the layer and oneDNN's reason; a context where oneDNN runs everything
  // reports nothing and counts no fallback.
  if (!cpu::dnnl_available()) GTEST_SKIP() << "built without oneDNN (or EMBER_CPU_DNNL=0)";
  SmallMlp m;
  const auto engine = m.build();
  const auto x = TestTensor::random(DataType::kF32, {5, 8}, 7).to_floats();
  const auto ref = m.reference(x, 5);
  const auto expect_ref = [&](const std::vector<float>& y) {
    for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], ref[i], 1e-5) << i;
  };
  {
    auto ctx = engine->create_execution_context();
    const int64_t before = cpu::dnnl_fallback_count();
    expect_ref(run(*ctx, x, 5));
    expect_ref(run(*ctx, x, 5));
    EXPECT_EQ(cpu::dnnl_fallback_count(), before);
    EXPECT_TRUE(ctx->take_warnings().empty());
  }
  cpu::dnnl_refuse_for_testing(true);
  auto ctx = engine->create_execution_context();
  const int64_t before = cpu::dnnl_fallback_count();
  expect_ref(run(*ctx, x, 5));
  const std::vector<std::string> w = ctx->take_warnings();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("the CPU back end runs MatrixMultiply '"), std::string::npos) << w[0];
  EXPECT_NE(w[0].find("with its reference kernel (slower): oneDNN matmul refused it at creation "
                      "(refused by dnnl_refuse_for_testing, status unimplemented)"),
            std::string::npos)
      << w[0];
  expect_ref(run(*ctx, x, 5));
  EXPECT_TRUE(ctx->take_warnings().empty());  // once per layer and context
  EXPECT_EQ(cpu::dnnl_fallback_count(), before + 2);
  auto other = engine->create_execution_context();
  expect_ref(run(*other, x, 5));
  EXPECT_EQ(other->take_warnings().size(), 1u);  // each context says it once
  cpu::dnnl_refuse_for_testing(false);
}

TEST(Runtime, OutOfProfileShapesAreRejectedWithTheRange) {
  SmallMlp m;
  auto ctx = m.build()->create_execution_context();
  std::string e = error_of([&] { ctx->set_input_shape("x", {17, 8}); });
  EXPECT_NE(e.find("input 'x' dim 0"), std::string::npos) << e;
  EXPECT_NE(e.find("[1, 16]"), std::string::npos) << e;
  e = error_of([&] { ctx->set_input_shape("x", {2, 9}); });
  EXPECT_NE(e.find("built for 8"), std::string::npos) << e;
  e = error_of([&] { ctx->set_input_shape("x", {2}); });
  EXPECT_NE(e.find("rank"), std::string::npos) << e;
  e = error_of([&] { ctx->set_input_shape("nope", {2, 8}); });
  EXPECT_NE(e.find("it has: x, y"), std::string::npos) << e;
}

TEST(Runtime, MissingShapeAddressOrDtypeMismatchIsAnError) {
  SmallMlp m;
  auto ctx = m.build()->create_execution_context();
  EXPECT_NE(error_of([&] { ctx->execute(); }).find("has no shape"), std::string::npos);
  ctx->set_input_shape("x", {2, 8});
  std::vector<float> x(16), y(8);
  ctx->set_tensor_address("x", x.data());
  EXPECT_NE(error_of([&] { ctx->execute(); }).find("output 'y' has no address"), std::string::npos);
  std::vector<int32_t> wrong(8);
  const std::string e = error_of([&] { ctx->set_tensor_address("y", wrong.data(), DataType::kI32); });
  EXPECT_NE(e.find("'y' is f32"), std::string::npos) << e;
  ctx->set_tensor_address("y", y.data());
  ctx->execute();
}

TEST(Runtime, NullAddressIsOnlyAcceptedForEmptyTensors) {
  // PyTorch hands out null data pointers for empty tensors: an empty batch runs, a null buffer
  // for a tensor with elements is an error naming it.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 4});
  net.mark_output(net.add_activation(x, ActivationType::kRelu)->output(), "y");
  BuilderConfig config;
  config.profiles.push_back(OptimizationProfile().set_range("n", 0, 2, 8));
  const auto plan = Builder(config).build(net);
  auto ctx = Runtime().deserialize(plan.data(), plan.size())->create_execution_context();
  ctx->set_input_shape("x", {0, 4});
  ctx->set_tensor_address("x", nullptr);
  ctx->set_tensor_address("y", nullptr);
  ctx->execute();
  ctx->set_input_shape("x", {2, 4});
  const std::string e = error_of([&] { ctx->execute(); });
  EXPECT_NE(e.find("input 'x' has a null address"), std::string::npos) << e;
}

TEST(Runtime, ContextsRunConcurrently) {
  SmallMlp m;
  const auto engine = m.build();
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto ctx = engine->create_execution_context();
      const int64_t n = 1 + t * 5;
      const auto x = TestTensor::random(DataType::kF32, {n, 8}, 100u + t).to_floats();
      const auto ref = m.reference(x, n);
      bool good = true;
      for (int rep = 0; rep < 20; ++rep) {
        const auto y = run(*ctx, x, n);
        for (size_t i = 0; i < y.size(); ++i) good = good && std::abs(y[i] - ref[i]) <= 1e-5;
      }
      ok[t] = good ? 1 : 0;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok, (std::vector<int>{1, 1, 1, 1}));
}

TEST(Runtime, InspectorListsLayers) {
  SmallMlp m;
  const auto engine = m.build();
  const std::string json = engine->inspect_json();
  EXPECT_NE(json.find("\"name\": \"mm+bias+relu\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"type\": \"MatrixMultiply\""), std::string::npos);
  EXPECT_NE(json.find("\"implementation\": \"cpu.MatrixMultiply\""), std::string::npos);
  EXPECT_NE(json.find("\"shape\": \"[n, 4]\""), std::string::npos) << json;
  EXPECT_EQ(engine->backend(), "cpu");
  EXPECT_EQ(engine->io_tensors().size(), 2u);
}

TEST(Runtime, ConstantOutputsAreCopiedToTheCaller) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2});
  net.mark_output(net.add_identity(x, "id")->output(), "copy");
  Layer* c = net.add_constant(Weights::from_vector<int32_t>(DataType::kI32, {3}, {7, 8, 9}), "c");
  net.mark_output(c->output(), "const");
  const auto outs = test::run_network(net, {TestTensor::floats(DataType::kF32, {2}, {1.5f, -2})});
  test::expect_close(outs[0], {1.5f, -2}, DataType::kF32, "identity");
  test::expect_equal_ints(outs[1], {7, 8, 9}, "constant output");
}

TEST(Runtime, CorruptPlanFileIsAClearError) {
  const std::string path = ::testing::TempDir() + "/not_a_plan.plan";
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fputs("hello", f);
  std::fclose(f);
  const std::string e = error_of([&] { Runtime().deserialize_file(path); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("plan"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { Runtime().deserialize_file(path + ".missing"); }).find("cannot be opened"),
            std::string::npos);
}

}  // namespace
}  // namespace ember::engine
