// The C++ TorchScript API (include/ember/torch/torchscript.h) from a C++ program: modules
// defined in TorchScript source here, compiled, run against libtorch's own result, saved and
// loaded; input specs; operator support; one-engine conversion and embedding.
#include <gtest/gtest.h>

#include <torch/csrc/jit/serialization/import.h>
#include <torch/script.h>

#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <vector>

#include "backends/cpu/dnnl_fallback.h"
#include "ember/torch/torchscript.h"

namespace {

namespace ts = ember::torchscript;

torch::jit::Module make_module(const std::string& source) {
  torch::jit::Module m("TestModule");
  m.register_parameter("w", torch::randn({8, 8}), false);
  m.register_parameter("b", torch::randn({8}), false);
  m.define(source);
  m.eval();
  return m;
}

const char* kMlp = R"(
def forward(self, x):
    y = torch.relu(torch.matmul(x, self.w) + self.b)
    return torch.sigmoid(y * 2.0 + 1.0).view(x.size(0), 2, 4)
)";

const char* kControlFlow = R"(
def forward(self, x):
    y = torch.relu(torch.matmul(x, self.w) + self.b) * 2.0 + 1.0
    if bool(y.sum() > 0.0):
        y = y * 3.0
    return torch.tanh(y - 1.0) + 0.5
)";

int count_kind(const torch::jit::Module& m, const std::string& kind) {
  int n = 0;
  for (const torch::jit::Node* node : m.get_method("forward").graph()->nodes()) {
    n += node->kind().toQualString() == kind;
  }
  return n;
}

void expect_close(const at::Tensor& a, const at::Tensor& b) {
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_TRUE(at::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
}

TEST(TorchScript, CompileDynamicBatchSaveLoad) {
  torch::manual_seed(0);
  torch::jit::Module m = make_module(kMlp);
  ts::CompileSpec spec;
  spec.inputs.push_back(ts::Input::range({1, 8}, {4, 8}, {16, 8}));
  spec.settings.min_block_size = 1;
  ts::CompileReport report;
  torch::jit::Module compiled = ts::compile(m, spec, &report);
  EXPECT_EQ(report.num_engines, 1);
  EXPECT_TRUE(report.fallback.empty());
  EXPECT_EQ(count_kind(compiled, "ember::execute_engine"), 1);
  for (int64_t b : {1, 5, 16}) {
    at::Tensor x = torch::randn({b, 8});
    expect_close(compiled.forward({x}).toTensor(), m.forward({x}).toTensor());
  }
  const std::string path = ::testing::TempDir() + "/ember_ts_test.ts";
  compiled.save(path);
  torch::jit::Module loaded = torch::jit::load(path);
  at::Tensor x = torch::randn({3, 8});
  expect_close(loaded.forward({x}).toTensor(), m.forward({x}).toTensor());
  std::remove(path.c_str());
  // Out of the profile: the message names the input, the dim and the range.
  try {
    compiled.forward({torch::randn({17, 8})});
    FAIL() << "batch 17 ran";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("outside the optimization profile range [1, 16]"),
              std::string::npos) << e.what();
  }
}

TEST(TorchScript, ControlFlowStaysInTorchScript) {
  torch::manual_seed(0);
  torch::jit::Module m = make_module(kControlFlow);
  ts::CompileSpec spec;
  spec.inputs.push_back(ts::Input::fixed({2, 8}));
  spec.settings.min_block_size = 1;
  torch::jit::Module compiled = ts::compile(m, spec);
  EXPECT_EQ(count_kind(compiled, "prim::If"), 1);
  EXPECT_EQ(count_kind(compiled, "ember::execute_engine"), 2);
  for (double shift : {-10.0, 10.0}) {
    at::Tensor x = torch::randn({2, 8}) + shift;
    expect_close(compiled.forward({x}).toTensor(), m.forward({x}).toTensor());
  }
  spec.settings.require_full_compilation = true;
  try {
    ts::compile(m, spec);
    FAIL() << "require_full_compilation accepted control flow";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("prim::If"), std::string::npos) << e.what();
  }
}

// The metadata JSON of the module's engine attribute `name` (torch.classes.ember.Engine).
std::string engine_metadata(const torch::jit::Module& m, const std::string& name) {
  c10::IValue engine = m.attr(name);
  std::vector<c10::IValue> stack{engine};
  engine.toObject()->type()->getMethod("metadata_json").run(stack);
  return stack.back().toStringRef();
}

TEST(TorchScript, CudaGraphsAndPartitionerSettings) {
  torch::manual_seed(0);
  torch::jit::Module m = make_module(kControlFlow);
  ts::CompileSpec spec;
  spec.inputs.push_back(ts::Input::fixed({2, 8}));
  spec.settings.min_block_size = 1;
  torch::jit::Module on = ts::compile(m, spec);
  EXPECT_NE(engine_metadata(on, "_ember_engine_0").find("\"cuda_graphs\": true"),
            std::string::npos);
  spec.cuda_graphs = false;
  spec.use_global_partitioner = false;
  ts::CompileReport report;
  torch::jit::Module off = ts::compile(m, spec, &report);
  ASSERT_EQ(report.num_engines, 2);
  for (const char* name : {"_ember_engine_0", "_ember_engine_1"}) {
    EXPECT_NE(engine_metadata(off, name).find("\"cuda_graphs\": false"), std::string::npos)
        << engine_metadata(off, name);
  }
  at::Tensor x = torch::randn({2, 8});
  expect_close(off.forward({x}).toTensor(), m.forward({x}).toTensor());
}

TEST(TorchScript, OperatorSupport) {
  EXPECT_TRUE(ts::check_method_operator_support(make_module(kMlp), "forward").empty());
  auto unsupported = ts::check_method_operator_support(make_module(kControlFlow), "forward");
  ASSERT_EQ(unsupported.size(), 1u);
  EXPECT_EQ(unsupported[0], "prim::If: control flow runs in TorchScript");
  EXPECT_THROW(ts::check_method_operator_support(make_module(kMlp), "nope"), std::exception);
}

TEST(TorchScript, ConvertMethodToEngineAndEmbed) {
  torch::manual_seed(0);
  torch::jit::Module m = make_module(kMlp);
  ts::CompileSpec spec;
  spec.inputs.push_back(ts::Input::fixed({3, 8}));
  std::vector<uint8_t> plan = ts::convert_method_to_engine(m, "forward", spec);
  ASSERT_GT(plan.size(), 100u);
  torch::jit::Module embedded = ts::embed_engine_in_new_module(plan);
  at::Tensor x = torch::randn({3, 8});
  expect_close(embedded.forward({x}).toTensor(), m.forward({x}).toTensor());
  EXPECT_THROW(ts::convert_method_to_engine(make_module(kControlFlow), "forward", spec),
               std::exception);
}

TEST(TorchScript, InputParse) {
  ts::Input a = ts::Input::parse("[(1,3,224,224);(4,3,224,224);(8,3,224,224)]@f16");
  EXPECT_EQ(a.min_shape, (std::vector<int64_t>{1, 3, 224, 224}));
  EXPECT_EQ(a.max_shape, (std::vector<int64_t>{8, 3, 224, 224}));
  EXPECT_EQ(a.dtype, ember::compiler::ScalarType::kF16);
  EXPECT_EQ(a.to_string(), "[(1,3,224,224);(4,3,224,224);(8,3,224,224)]@f16");
  ts::Input b = ts::Input::parse("(2, 5)");
  EXPECT_EQ(b.opt_shape, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(b.dtype, ember::compiler::ScalarType::kF32);
  for (const char* bad : {"1x3", "[(1,2);(3,4)]", "(1,a)", "(1,2)@f99", "[(4,2);(2,2);(8,2)]"}) {
    try {
      ts::Input::parse(bad);
      FAIL() << bad << " parsed";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

// The warnings c10::warn raises while it is alive (the bridge's channel for slow paths).
class CapturedWarnings : public c10::WarningHandler {
 public:
  CapturedWarnings() : guard_(this) {}
  void process(const c10::Warning& w) override { messages.push_back(w.msg()); }
  std::vector<std::string> messages;

 private:
  c10::WarningUtils::WarningHandlerGuard guard_;
};

TEST(TorchScript, OneDnnRunsEveryCallNextToLibtorch) {
  // Regression: this binary loads libtorch_cpu (which carries its own oneDNN) next to
  // libdnnl. Linked with libtorch_cpu first, libdnnl's GEMM set-up bound to torch's copy of
  // the same template code, its JIT GEMM kernels were never made, and every oneDNN matmul
  // failed with "unimplemented" and ran on the reference kernel. Two engines, several calls
  // each: no layer may fall back, and nothing is reported.
  torch::manual_seed(0);
  const int64_t before = ember::engine::cpu::dnnl_fallback_count();
  CapturedWarnings warnings;
  for (int engine = 0; engine < 2; ++engine) {
    torch::jit::Module m = make_module(kMlp);
    ts::CompileSpec spec;
    spec.inputs.push_back(ts::Input::fixed({4, 8}));
    torch::jit::Module compiled = ts::compile(m, spec);
    for (int call = 0; call < 3; ++call) {
      at::Tensor x = torch::randn({4, 8});
      expect_close(compiled.forward({x}).toTensor(), m.forward({x}).toTensor());
    }
  }
  EXPECT_EQ(ember::engine::cpu::dnnl_fallback_count(), before);
  EXPECT_TRUE(warnings.messages.empty()) << warnings.messages.front();
}

TEST(TorchScript, OneDnnFallbackIsAWarningOncePerLayer) {
  // A layer oneDNN refuses still runs (the reference kernel), and the bridge says so once per
  // engine with the layer and oneDNN's reason, not only under EMBER_LAYER_PROFILE.
  struct Refuse {
    Refuse() { ember::engine::cpu::dnnl_refuse_for_testing(true); }
    ~Refuse() { ember::engine::cpu::dnnl_refuse_for_testing(false); }
  };
  torch::manual_seed(0);
  torch::jit::Module m = make_module(kMlp);
  ts::CompileSpec spec;
  spec.inputs.push_back(ts::Input::fixed({4, 8}));
  torch::jit::Module compiled = ts::compile(m, spec);
  const int64_t before = ember::engine::cpu::dnnl_fallback_count();
  CapturedWarnings warnings;
  {
    const Refuse refuse;
    for (int call = 0; call < 3; ++call) {
      at::Tensor x = torch::randn({4, 8});
      expect_close(compiled.forward({x}).toTensor(), m.forward({x}).toTensor());
    }
  }
  if (ember::engine::cpu::dnnl_fallback_count() == before) {
    GTEST_SKIP() << "this build has no oneDNN: nothing falls back";
  }
  EXPECT_EQ(ember::engine::cpu::dnnl_fallback_count(), before + 3);  // counted on every call
  ASSERT_EQ(warnings.messages.size(), 1u);                            // said once
  const std::string& w = warnings.messages[0];
  EXPECT_NE(w.find("ember: the CPU back end runs MatrixMultiply '"), std::string::npos) << w;
  EXPECT_NE(w.find("reference kernel"), std::string::npos) << w;
  EXPECT_NE(w.find("oneDNN matmul refused it at creation (refused by dnnl_refuse_for_testing, "
                   "status unimplemented)"),
            std::string::npos)
      << w;
}

}  // namespace
