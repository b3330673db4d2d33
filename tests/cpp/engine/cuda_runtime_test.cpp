// CUDA graphs of an ExecutionContext: the first call of a shape runs layer by layer, later calls
// replay a captured graph that follows new input data, new addresses (through the staged graph,
// no new capture) and new shapes, and set_cuda_graphs(false) turns replay off. Skipped (visibly)
// without a CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <vector>

#include "backends/cuda/conv_graph.h"
#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

/// y = relu(x @ w + b) * 2 + x[:, :4], fused by the builder into a few layers.
struct GraphNet {
  Network net;
  GraphNet() {
    const DimExpr n = DimExpr::symbol("n");
    Tensor* x = net.add_input("x", DataType::kF32, {n, 4});
    const TestTensor w = TestTensor::random(DataType::kF32, {4, 4}, 1);
    const TestTensor b = TestTensor::random(DataType::kF32, {4}, 2);
    Tensor* wt = net.add_constant(Weights::copy(DataType::kF32, {4, 4}, w.bytes.data()), "w")->output();
    Tensor* bt = net.add_constant(Weights::copy(DataType::kF32, {4}, b.bytes.data()), "b")->output();
    Tensor* y = net.add_matrix_multiply(x, false, wt, false, "mm")->output();
    y = net.add_elementwise(y, bt, ElementWiseOp::kSum, "bias")->output();
    y = net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output();
    const TestTensor two = TestTensor::floats(DataType::kF32, {1}, {2.0f});
    y = net.add_elementwise(
             y, net.add_constant(Weights::copy(DataType::kF32, {1}, two.bytes.data()), "two")->output(),
             ElementWiseOp::kProd, "scale")->output();
    y = net.add_elementwise(y, x, ElementWiseOp::kSum, "skip")->output();
    net.mark_output(y, "y");
  }
  /// The plan for "cuda", batch n in [1, 16].
  std::vector<uint8_t> plan() const {
    BuilderConfig config;
    config.backend = "cuda";
    config.profiles = {OptimizationProfile().set_range("n", 1, 8, 16)};
    return Builder(config).build(net);
  }
};

/// Device buffers for one call: input copied in, output allocated.
struct Buffers {
  void* x = nullptr;
  void* y = nullptr;
  int64_t rows = 0;
  Buffers(const TestTensor& in, int64_t n) : rows(n) {
    test::cuda_ok(cudaMalloc(&x, in.bytes.size()), "cudaMalloc");
    test::cuda_ok(cudaMalloc(&y, static_cast<size_t>(n) * 4 * sizeof(float)), "cudaMalloc");
    load(in);
  }
  void load(const TestTensor& in) {
    test::cuda_ok(cudaMemcpy(x, in.bytes.data(), in.bytes.size(), cudaMemcpyHostToDevice), "copy in");
  }
  ~Buffers() {
    cudaFree(x);
    cudaFree(y);
  }
  TestTensor run(ExecutionContext& ctx) {
    ctx.set_input_shape("x", {rows, 4});
    ctx.set_tensor_address("x", x);
    ctx.set_tensor_address("y", y);
    ctx.enqueue(nullptr);
    test::cuda_ok(cudaStreamSynchronize(nullptr), "sync");
    TestTensor out;
    out.dims = {rows, 4};
    out.bytes.resize(static_cast<size_t>(rows) * 4 * sizeof(float));
    test::cuda_ok(cudaMemcpy(out.bytes.data(), y, out.bytes.size(), cudaMemcpyDeviceToHost), "copy out");
    return out;
  }
};

TEST(CudaGraphs, ReplayFollowsDataAddressesAndShapes) {
  EMBER_SKIP_WITHOUT_CUDA();
  GraphNet g;
  const auto plan = g.plan();
  const auto engine = Runtime().deserialize(plan.data(), plan.size());
  auto ctx = engine->create_execution_context();
  auto check = [&](const TestTensor& in, const TestTensor& out, const char* what) {
    test::expect_matches_cpu(g.net, {in}, {out}, what);
  };

  const TestTensor in1 = TestTensor::random(DataType::kF32, {8, 4}, 10);
  Buffers a(in1, 8);
  check(in1, a.run(*ctx), "first call (layer by layer)");
  EXPECT_EQ(ctx->cuda_graph_stats().captures, 0);
  check(in1, a.run(*ctx), "second call, same addresses (zero-copy capture)");
  EXPECT_EQ(ctx->cuda_graph_stats().captures, 1);
  const TestTensor in2 = TestTensor::random(DataType::kF32, {8, 4}, 11);
  a.load(in2);
  check(in2, a.run(*ctx), "replay with new input data");
  EXPECT_EQ(ctx->cuda_graph_stats().replays, 1);
  EXPECT_EQ(ctx->cuda_graph_stats().staged_replays, 0);

  Buffers b(in1, 8);  // same shape, other addresses: the staged graph, copies in and out
  check(in1, b.run(*ctx), "new addresses (staged capture)");
  EXPECT_EQ(ctx->cuda_graph_stats().captures, 2);
  Buffers c(in2, 8);
  check(in2, c.run(*ctx), "other new addresses (staged replay)");
  EXPECT_EQ(ctx->cuda_graph_stats().captures, 2);
  EXPECT_EQ(ctx->cuda_graph_stats().staged_replays, 1);
  check(in2, a.run(*ctx), "back to the first addresses (zero-copy replay)");
  EXPECT_EQ(ctx->cuda_graph_stats().replays, 3);
  EXPECT_EQ(ctx->cuda_graph_stats().staged_replays, 1);

  const TestTensor in3 = TestTensor::random(DataType::kF32, {3, 4}, 12);
  Buffers d(in3, 3);  // a new shape signature: layer by layer first
  check(in3, d.run(*ctx), "new shape");
  check(in3, d.run(*ctx), "new shape, captured");
  EXPECT_EQ(ctx->cuda_graph_stats().captures, 3);
  EXPECT_FALSE(ctx->cuda_graph_stats().disabled);
  EXPECT_EQ(ctx->cuda_graph_stats().reason, "");
  EXPECT_EQ(ctx->take_cuda_graph_warning(), "");

  ctx->set_cuda_graphs(false);
  check(in2, a.run(*ctx), "graphs off");
  EXPECT_EQ(ctx->cuda_graph_stats().replays, 3);
  EXPECT_TRUE(ctx->cuda_graph_stats().disabled);
  EXPECT_NE(ctx->cuda_graph_stats().reason.find("cuda_graphs=False"), std::string::npos);
  EXPECT_EQ(ctx->take_cuda_graph_warning(), "");  // off by setting: nothing to warn about
}

TEST(CudaGraphs, ServingLoopReplaysWithoutRecapture) {
  EMBER_SKIP_WITHOUT_CUDA();
  // A serving loop: inputs from a rotating pool of 4 tensors, a new output tensor each call,
  // every output kept. One staged capture, then replays only; no kept output is overwritten.
  GraphNet g;
  const auto plan = g.plan();
  const auto engine = Runtime().deserialize(plan.data(), plan.size());
  auto ctx = engine->create_execution_context();
  std::vector<TestTensor> pool;
  std::vector<void*> inputs;
  for (int i = 0; i < 4; ++i) {
    pool.push_back(TestTensor::random(DataType::kF32, {8, 4}, 20 + i));
    void* p = nullptr;
    test::cuda_ok(cudaMalloc(&p, pool.back().bytes.size()), "cudaMalloc");
    test::cuda_ok(cudaMemcpy(p, pool.back().bytes.data(), pool.back().bytes.size(),
                             cudaMemcpyHostToDevice), "copy in");
    inputs.push_back(p);
  }
  constexpr int kCalls = 24;
  const size_t out_bytes = 8 * 4 * sizeof(float);
  std::vector<void*> outputs;
  for (int call = 0; call < kCalls; ++call) {
    void* y = nullptr;
    test::cuda_ok(cudaMalloc(&y, out_bytes), "cudaMalloc");
    outputs.push_back(y);
    ctx->set_input_shape("x", {8, 4});
    ctx->set_tensor_address("x", inputs[call % 4]);
    ctx->set_tensor_address("y", y);
    ctx->enqueue(nullptr);
  }
  test::cuda_ok(cudaStreamSynchronize(nullptr), "sync");
  for (int call = 0; call < kCalls; ++call) {
    TestTensor out;
    out.dims = {8, 4};
    out.bytes.resize(out_bytes);
    test::cuda_ok(cudaMemcpy(out.bytes.data(), outputs[call], out_bytes, cudaMemcpyDeviceToHost),
                  "copy out");
    test::expect_matches_cpu(g.net, {pool[call % 4]}, {out}, "kept output");
  }
  const auto st = ctx->cuda_graph_stats();
  EXPECT_EQ(st.captures, 1);
  EXPECT_EQ(st.replays, kCalls - 2);
  EXPECT_EQ(st.staged_replays, kCalls - 2);
  EXPECT_FALSE(st.disabled);
  for (void* p : inputs) cudaFree(p);
  for (void* p : outputs) cudaFree(p);
}

TEST(CudaGraphs, FormerHostKindsAreCaptured) {
  EMBER_SKIP_WITHOUT_CUDA();
  // Scatter, Resize, TopK and Cumulative ran through the host fallback until they got device
  // kernels; a plan with all four is now captured and replayed.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 8});
  Tensor* idx = net.add_input("idx", DataType::kI64, {2, 3});
  Tensor* upd = net.add_input("upd", DataType::kF32, {2, 3});
  Tensor* s = net.add_scatter(x, idx, upd, ScatterParams{1, ScatterReduction::kSum})->output();
  ResizeParams rp;
  rp.mode = ResizeMode::kLinear;
  rp.coordinate = ResizeCoordinate::kHalfPixel;
  rp.output = {2, 16};
  Tensor* r = net.add_resize(s, rp)->output();
  CumulativeParams cp;
  cp.axis = 1;
  Tensor* c = net.add_cumulative(r, cp)->output();
  Layer* top = net.add_topk(c, TopKOp::kMax, 3, 1, "top");
  net.mark_output(top->output(0), "v");
  net.mark_output(top->output(1), "i");
  const std::vector<TestTensor> in = {TestTensor::random(DataType::kF32, {2, 8}, 3),
                                      TestTensor::ints(DataType::kI64, {2, 3}, {0, 7, 7, -1, 2, 2}),
                                      TestTensor::random(DataType::kF32, {2, 3}, 4)};
  test::CudaRunner runner(net, in);
  EXPECT_EQ(runner.inspect_json().find("cuda.host"), std::string::npos) << runner.inspect_json();
  for (int i = 0; i < 3; ++i) test::expect_matches_cpu(net, in, runner.run(in), "former host kinds");
  // CudaRunner allocates buffers per call (cudaMalloc may hand back the same addresses, which
  // makes a zero-copy graph, or others, which the staged graph serves): one capture either way.
  EXPECT_EQ(runner.context().cuda_graph_stats().captures, 1);
  EXPECT_EQ(runner.context().cuda_graph_stats().replays, 1);
  EXPECT_FALSE(runner.context().cuda_graph_stats().disabled);
}

TEST(CudaGraphs, HostFallbackCallsRunLayerByLayer) {
  EMBER_SKIP_WITHOUT_CUDA();
  // No kind runs through the host fallback as a whole any more, but a kernel may call it for a
  // case it does not cover: here TopK with k > 128 over rows too long to sort in shared memory.
  // That call synchronizes, so its capture fails and the context runs layer by layer from then
  // on, with correct results.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 5000});
  net.mark_output(net.add_topk(x, TopKOp::kMax, 200, 1, "top")->output(0), "v");
  const TestTensor in = TestTensor::random(DataType::kF32, {2, 5000}, 3);
  test::CudaRunner runner(net, {in});
  for (int i = 0; i < 3; ++i) test::expect_matches_cpu(net, {in}, runner.run({in}), "topk");
  EXPECT_EQ(runner.context().cuda_graph_stats().captures, 0);
  EXPECT_TRUE(runner.context().cuda_graph_stats().disabled);
  EXPECT_NE(runner.context().cuda_graph_stats().reason.find("capturing"), std::string::npos)
      << runner.context().cuda_graph_stats().reason;
  // Said once: the embedder warns the first time it asks, not on every call.
  EXPECT_NE(runner.context().take_cuda_graph_warning(), "");
  EXPECT_EQ(runner.context().take_cuda_graph_warning(), "");
}

/// Records every block it hands out (cudaMalloc underneath) and what is still live.
class CountingAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    test::cuda_ok(cudaMalloc(&p, bytes), "cudaMalloc (CountingAllocator)");
    live[p] = bytes;
    ++allocations;
    return p;
  }
  void deallocate(void* p) noexcept override {
    live.erase(p);
    cudaFree(p);
  }
  size_t live_bytes() const {
    size_t n = 0;
    for (const auto& [p, b] : live) n += b;
    return n;
  }
  std::map<void*, size_t> live;
  int allocations = 0;
};

class FailingAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t) override { throw std::runtime_error("out of test memory"); }
  void deallocate(void*) noexcept override {}
};

// The weights, the arena and the library workspace come from the runtime's allocator, and go
// back to it with the context (the arena, the workspace) and the engine (the weights).
TEST(CudaDeviceAllocator, WeightsArenaAndWorkspaceComeFromTheAllocator) {
  EMBER_SKIP_WITHOUT_CUDA();
  GraphNet g;
  const auto plan = g.plan();
  auto allocator = std::make_shared<CountingAllocator>();
  Runtime runtime;
  runtime.set_device_allocator(allocator);
  auto engine = runtime.deserialize(plan.data(), plan.size());
  const TestTensor in = TestTensor::random(DataType::kF32, {8, 4}, 5);
  {
    auto ctx = engine->create_execution_context();
    // Weights and arena at once (the workspace comes with the first matmul).
    EXPECT_GE(allocator->allocations, engine->arena_bytes() > 0 ? 2 : 1);
    EXPECT_GE(allocator->live_bytes(), static_cast<size_t>(engine->arena_bytes()));
    Buffers buf(in, 8);
    for (int call = 0; call < 3; ++call) {  // layer by layer, capture, replay
      const TestTensor out = buf.run(*ctx);
      test::expect_matches_cpu(g.net, {in}, {out}, "allocator-backed context");
    }
    EXPECT_GE(allocator->allocations, 3) << "the cuBLASLt workspace did not use the allocator";
  }
  // The context is gone: only the engine's weights remain.
  EXPECT_EQ(allocator->live.size(), 1u);
  engine.reset();
  EXPECT_TRUE(allocator->live.empty()) << allocator->live.size() << " blocks leaked";
}

TEST(CudaDeviceAllocator, AFailingAllocatorIsAnErrorThatNamesTheMemory) {
  EMBER_SKIP_WITHOUT_CUDA();
  GraphNet g;
  const auto plan = g.plan();
  Runtime runtime;
  runtime.set_device_allocator(std::make_shared<FailingAllocator>());
  const auto engine = runtime.deserialize(plan.data(), plan.size());
  test::expect_error([&] { engine->create_execution_context(); },
                     {"device allocator failed for the engine weights", "out of test memory"});
}

TEST(CudaPrepared, LayerByLayerCallsKeepDescriptorsAcrossAddressesAndShapes) {
  EMBER_SKIP_WITHOUT_CUDA();
  // With graphs off every call runs layer by layer; a convolution (bias and relu fused) and a
  // GEMM (bias epilogue) keep their descriptors and algorithm from one call to the next
  // (Resources::prepared) and must remake them when a shape changes. Each call gets new buffer
  // addresses (CudaRunner allocates afresh), and shapes go A, A, B, A.
  for (DataType t : {DataType::kF32, DataType::kF16}) {
    Network net;
    const DimExpr n = DimExpr::symbol("n"), h = DimExpr::symbol("h");
    Tensor* x = net.add_input("x", t, {n, 3, h, 10});
    Tensor* v = net.add_input("v", t, {n, 16});
    const TestTensor w = TestTensor::random(t, {4, 3, 3, 3}, 41, -0.5f, 0.5f);
    const TestTensor b = TestTensor::random(t, {4}, 42);
    const TestTensor m = TestTensor::random(t, {16, 8}, 43, -0.5f, 0.5f);
    const TestTensor mb = TestTensor::random(t, {8}, 44);
    auto constant = [&](const TestTensor& c, const char* name) {
      return net.add_constant(Weights::copy(t, c.dims, c.bytes.data()), name)->output();
    };
    ConvolutionParams p;
    p.stride = {1, 1};
    p.padding_begin = p.padding_end = {1, 1};
    p.dilation = {1, 1};
    p.groups = 1;
    Tensor* y = net.add_convolution(x, constant(w, "w"), constant(b, "b"), p)->output();
    net.mark_output(net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output(), "y");
    Tensor* z = net.add_matrix_multiply(v, false, constant(m, "m"), false, "mm")->output();
    net.mark_output(net.add_elementwise(z, constant(mb, "mb"), ElementWiseOp::kSum, "bias")->output(),
                    "z");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("n", 1, 2, 4);
    profiles[0].set_range("h", 4, 8, 16);
    test::CudaRunner runner(net, {}, profiles);
    runner.context().set_cuda_graphs(false);
    const cuda::ConvGraphCounters before = cuda::conv_graph_counters();
    uint32_t seed = 50;
    for (auto [batch, height] : {std::pair<int64_t, int64_t>{2, 8}, {2, 8}, {3, 13}, {2, 8}}) {
      const std::vector<TestTensor> in = {TestTensor::random(t, {batch, 3, height, 10}, seed++),
                                          TestTensor::random(t, {batch, 16}, seed++)};
      test::expect_matches_cpu(net, in, runner.run(in),
                               std::string(dtype_name(t)) + " n=" + std::to_string(batch) +
                                   " h=" + std::to_string(height));
    }
    EXPECT_EQ(runner.context().cuda_graph_stats().replays, 0);
    if (cuda::conv_graph_selected()) {
      // The convolution on cuDNN's graph API: one plan per shape (A, B), A's kept across B.
      const cuda::ConvGraphCounters after = cuda::conv_graph_counters();
      EXPECT_EQ(after.preparations - before.preparations, 2) << dtype_name(t);
      EXPECT_EQ(after.executions - before.executions, 4) << dtype_name(t);
    }
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
