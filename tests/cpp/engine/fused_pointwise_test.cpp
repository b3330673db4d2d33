// The builder's fuse_pointwise pass and the FusedPointwise layer: which layers it groups (the
// network before and after), that the fused layer gives the unfused chain's exact bits on the
// CPU per dtype (each step rounds to its dtype as the separate layer stores it), plan round
// trips, the checks a corrupt program meets, and the CUDA source the code generator emits
// (golden substrings; compiled with NVRTC for sm_90 in CUDA builds, which needs no GPU).
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "backends/codegen/pointwise_codegen.h"
#include "backends/semantics/fused_pointwise.h"
#include "builder/passes/passes.h"
#include "ember/engine/builder.h"
#include "ember/engine/runtime.h"
#include "plan/plan.h"
#include "fused_pointwise_cases.h"
#include "test_util.h"
#ifdef EMBER_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace ember::engine {
namespace {

using test::TestTensor;

using namespace fused_cases;  // NOLINT: the shared chains

TEST(FusePointwise, GroupsEachChainAndGivesTheUnfusedBitsPerDtype) {
  for (const Chain& c : chains()) {
    for (DataType dt : kFloatTypes) {
      SCOPED_TRACE(c.name + " " + dtype_name(dt));
      Network net;
      c.build(net, dt);
      Network fused = net.clone();
      std::vector<std::string> notes;
      fuse_pointwise_layers(fused, nullptr, &notes);
      EXPECT_EQ(count(fused, LayerKind::kFusedPointwise), c.fused_layers);
      const int left = count(fused, LayerKind::kActivation) + count(fused, LayerKind::kElementWise) +
                       count(fused, LayerKind::kUnary) + count(fused, LayerKind::kCast) +
                       count(fused, LayerKind::kSelect);
      EXPECT_EQ(left, c.pointwise_left);
      EXPECT_EQ(count(fused, LayerKind::kReduce), c.reduce_left);
      // Views: every transpose, gather and slice in these chains is read in place, except the
      // transpose that is also a network output. (A reshape into rows of heads may be added:
      // it shares its input's memory.)
      const bool kept = c.name.find("read elsewhere") != std::string::npos ||
                        c.name.find("moves the last dim") != std::string::npos;
      int moves = 0;
      for (const Layer* l : fused.layers()) {
        moves += l->kind() == LayerKind::kShuffle && !is_pure_reshape(l) ? 1 : 0;
      }
      EXPECT_EQ(moves, kept ? count(net, LayerKind::kShuffle) : 0);
      if (c.name.find("into heads") != std::string::npos) {
        EXPECT_EQ(count(fused, LayerKind::kShuffle), 1);  // the rows of heads: no copy
      }
      EXPECT_EQ(count(fused, LayerKind::kGather), 0);
      EXPECT_EQ(count(fused, LayerKind::kSlice), 0);
      ASSERT_EQ(fused.outputs().size(), net.outputs().size());
      for (size_t i = 0; i < net.outputs().size(); ++i) {
        EXPECT_EQ(fused.outputs()[i]->name(), net.outputs()[i]->name());
      }
      const auto ins = inputs_for(net, c);
      const auto want = test::run_network_direct(net, ins);
      const auto got = test::run_network_direct(fused, ins);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].dtype, want[i].dtype);
        EXPECT_EQ(got[i].dims, want[i].dims);
        EXPECT_TRUE(got[i].bytes == want[i].bytes) << "output " << i << " differs in its bits";
      }
      // Through the builder, a plan on disk and the runtime (compared with the reference).
      test::run_network(net, ins);
    }
  }
}

TEST(FusePointwise, GathersThatKeepVectorsAreRecognized) {
  using semantics::gather_keeps_vectors;
  std::vector<int64_t> rotate(64);
  for (int64_t j = 0; j < 64; ++j) rotate[static_cast<size_t>(j)] = (j + 32) % 64;
  EXPECT_TRUE(gather_keeps_vectors(rotate, 4));                      // rotate_half, E = 64
  EXPECT_TRUE(gather_keeps_vectors({4, 5, 6, 7, 0, 1, 2, 3}, 4));   // E = 8
  EXPECT_FALSE(gather_keeps_vectors({3, 4, 5, 0, 1, 2}, 4));         // E = 6: not whole runs
  EXPECT_FALSE(gather_keeps_vectors({2, 3, 4, 5, 6, 7, 0, 1}, 4));   // runs start unaligned
  EXPECT_FALSE(gather_keeps_vectors({7, 6, 5, 4, 3, 2, 1, 0}, 4));   // reversed
  // A run read twice is still whole and aligned: reads may repeat.
  EXPECT_TRUE(gather_keeps_vectors({0, 1, 2, 3, 0, 1, 2, 3}, 4));
  EXPECT_FALSE(gather_keeps_vectors({}, 4));
}

TEST(FusePointwise, BuilderRunsItAfterEpilogueFusionAndCanBeSwitchedOff) {
  // matmul + bias + gelu goes to the GEMM epilogue; the pointwise tail after it is fused.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {4, 8});
  Tensor* w = constant(net, DataType::kF32, {8, 8}, 1, "w");
  Tensor* h = net.add_matrix_multiply(x, false, w, false, "fc")->output();
  h = net.add_elementwise(h, constant(net, DataType::kF32, {8}, 2, "b"), ElementWiseOp::kSum,
                          "bias")->output();
  h = net.add_activation(h, ActivationType::kGeluErf, 0, 0, "gelu")->output();
  Tensor* y = net.add_input("y", DataType::kF32, {4, 8});
  h = net.add_elementwise(h, y, ElementWiseOp::kProd, "gate")->output();
  h = net.add_unary(h, UnaryOp::kAbs, "abs")->output();
  net.mark_output(net.add_activation(h, ActivationType::kSigmoid, 0, 0, "sig")->output(), "out");
  auto build = [&](bool fuse) {
    BuilderConfig config;
    config.fuse_pointwise = fuse;
    BuildReport report;
    const auto bytes = Builder(config).build(net, &report);
    PlanModel plan = plan_read(bytes.data(), bytes.size());
    std::string log;
    for (const std::string& l : report.pass_log) log += l + "\n";
    return std::make_pair(std::move(plan), log);
  };
  const auto [on, on_log] = build(true);
  EXPECT_EQ(count(on.network, LayerKind::kMatrixMultiply), 1);
  EXPECT_EQ(count(on.network, LayerKind::kFusedPointwise), 1);
  EXPECT_EQ(count(on.network, LayerKind::kActivation), 0);  // gelu in the epilogue, sigmoid fused
  EXPECT_NE(on_log.find("fuse_pointwise: 3 pointwise layers into 1 FusedPointwise layers"),
            std::string::npos) << on_log;
  const auto [off, off_log] = build(false);
  EXPECT_EQ(count(off.network, LayerKind::kFusedPointwise), 0);
  EXPECT_EQ(count(off.network, LayerKind::kActivation), 1);
  EXPECT_NE(off_log.find("fuse_pointwise: off"), std::string::npos) << off_log;
  test::run_network(net, {TestTensor::random(DataType::kF32, {4, 8}, 3),
                          TestTensor::random(DataType::kF32, {4, 8}, 4)});
}

TEST(FusePointwise, SymbolicShapesFuseAndRunAtSeveralSizes) {
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF16, {n, 12});
  Tensor* t = net.add_elementwise(x, constant(net, DataType::kF16, {12}, 3, "b"),
                                  ElementWiseOp::kSum, "add")->output();
  t = net.add_activation(t, ActivationType::kGeluTanh, 0, 0, "gelu")->output();
  net.mark_output(net.add_elementwise(t, scalar(net, DataType::kF16, 2.0f, "two"),
                                      ElementWiseOp::kPow, "sq")->output(), "out");
  Network fused = net.clone();
  fuse_pointwise_layers(fused, nullptr, nullptr);
  EXPECT_EQ(count(fused, LayerKind::kFusedPointwise), 1);
  for (int64_t rows : {1, 5, 33}) {
    const std::vector<TestTensor> ins = {TestTensor::random(DataType::kF16, {rows, 12}, 9)};
    EXPECT_TRUE(test::run_network_direct(fused, ins)[0].bytes ==
                test::run_network_direct(net, ins)[0].bytes) << rows;
    OptimizationProfile p;
    p.set_range("n", 1, rows, 40);
    test::run_network(net, ins, {{p}});
  }
}

TEST(FusePointwise, PlanRoundTripKeepsTheProgram) {
  Network net;
  chains()[1].build(net, DataType::kBF16);
  BuilderConfig config;
  const auto bytes = Builder(config).build(net);
  const PlanModel read = plan_read(bytes.data(), bytes.size());
  ASSERT_EQ(count(read.network, LayerKind::kFusedPointwise), 1);
  EXPECT_EQ(plan_write(read), bytes);
  for (const Layer* l : read.network.layers()) {
    if (l->kind() != LayerKind::kFusedPointwise) continue;
    const auto& p = l->params_as<FusedPointwiseParams>();
    // bias, scale, erf, +1, halve, gelu and three inline scalars
    EXPECT_EQ(p.num_steps(), 9);
    EXPECT_EQ(p.outputs.size(), 1u);
    EXPECT_TRUE(p.kernel_source.empty());  // cpu plans carry no kernel
  }
  const std::string json = Runtime().deserialize(bytes.data(), bytes.size())->inspect_json();
  EXPECT_NE(json.find("\"type\": \"FusedPointwise\""), std::string::npos);
}

/// A valid two-step program on one f32 input: relu(x) * 2.
FusedPointwiseParams small_program() {
  FusedPointwiseParams p;
  semantics::FusedStep relu;
  relu.family = FusedOpFamily::kActivation;
  relu.code = static_cast<int>(ActivationType::kRelu);
  relu.operands[0] = 0;
  semantics::fused_append(p, relu);
  semantics::FusedStep two;
  two.family = FusedOpFamily::kScalar;
  two.alpha = 2.0;
  semantics::fused_append(p, two);
  append_elementwise(p, ElementWiseOp::kProd, 1, 2);
  p.outputs = {3};
  return p;
}

TEST(FusePointwise, CorruptProgramsAreRejectedWithTheirReason) {
  auto add = [](FusedPointwiseParams p, DataType in = DataType::kF32) {
    Network net;
    Tensor* x = net.add_input("x", in, {2, 3});
    net.add_layer(std::move(p), {x}, "fused");
  };
  add(small_program());  // the valid one
  auto bad = [&](std::function<void(FusedPointwiseParams&)> edit, const std::string& needle,
                 DataType in = DataType::kF32) {
    FusedPointwiseParams p = small_program();
    edit(p);
    test::expect_error([&] { add(p, in); }, {"FusedPointwise 'fused'", needle});
  };
  bad([](auto& p) { p.program[3 + FusedPointwiseParams::kStride * 2] = 7; },
      "operand 0 is value 7, not one of the 3 values defined before it");
  bad([](auto& p) { p.program[0] = 9; }, "unknown family 9");
  bad([](auto& p) { p.program[1 + FusedPointwiseParams::kStride * 2] =
                        static_cast<int64_t>(ElementWiseOp::kAnd); },
      "is not float arithmetic");
  bad([](auto& p) { p.program[2 + FusedPointwiseParams::kStride] =
                        static_cast<int64_t>(DataType::kF16); },
      "operands have dtypes f32 and f16");
  bad([](auto& p) { p.program[2] = static_cast<int64_t>(DataType::kI32); },
      "dtype must be f32, f16 or bf16");
  bad([](auto& p) { p.attrs.pop_back(); }, "attrs has 5 entries, expected 6");
  bad([](auto& p) { p.outputs = {0}; }, "output value 0 is not a distinct step result");
  bad([](auto& p) { p.program[4] = 0; }, "operand 1 must be -1 (unused)");
  bad([](auto& p) { p.kernel_image = {1, 2, 3}; }, "a kernel image needs its target");
  bad([](auto&) {}, "step 0: operand 0 is i32; this step reads float values only", DataType::kI32);
  bad([](auto&) {}, "f8e4m3 tensors go only through", DataType::kF8E4M3);
  bad([](auto& p) { p.program[2] = static_cast<int64_t>(DataType::kBool); },
      "dtype must be f32, f16 or bf16 (bool for a cast or for isinf/isnan), got bool");
  bad([](auto& p) {
        p.program[0] = static_cast<int64_t>(FusedOpFamily::kUnary);
        p.program[1] = static_cast<int64_t>(UnaryOp::kIsInf);
      },
      "step 0: isinf/isnan make a bool, not f32");
  bad([](auto& p) {
        p.program[0] = static_cast<int64_t>(FusedOpFamily::kUnary);
        p.program[1] = static_cast<int64_t>(UnaryOp::kNot);
      },
      "unary op " + std::to_string(static_cast<int>(UnaryOp::kNot)) +
          " is neither float math nor isinf/isnan");
  bad([](auto& p) { p.views = {1}; }, "do not encode one {n, perm, m, indices} per input");
  bad([](auto& p) { p.views = {3, 0, 1, 2, 0}; }, "a transpose of 3 dims for a rank-2 input");
  bad([](auto& p) { p.views = {2, 0, 0, 0}; }, "the transpose is not a permutation");
  bad([](auto& p) { p.views = {0, 2, 0, 5}; }, "gather index 5 is outside the last dim of 3");
  bad([](auto& p) { p.views = {0, 1, 2}; }, "a gather of one index (a slice) is not a view");
  bad([](auto& p) { p.slices = {1, 0, 1}; },
      "slices has 3 entries that do not encode one {n, n (dim, start, size)} per input");
  bad([](auto& p) { p.slices = {1, 2, 0, 1}; },
      "input 0's view: slice dim 2 is not a dim of the rank-2 input, or is sliced twice");
  bad([](auto& p) { p.slices = {2, 0, 0, 1, 0, 1, 1}; }, "or is sliced twice");
  bad([](auto& p) { p.slices = {1, 1, 2, 2}; },
      "input 0's view: the slice [2, 2 + 2) of dim 1 is not inside its 3 elements");
  bad([](auto& p) { p.slices = {1, 1, 0, 0}; }, "the slice [0, 0 + 0) of dim 1");
}

TEST(PointwiseCodegen, ASlicedInputsVectorsMustStayAligned) {
  // An f32 input [4, 64] read through the slice [start, start + 16) of its last dim: the
  // launch reads from the slice's start, and takes the strided vectorized path only when that
  // address keeps its 16-byte vectors aligned (x86 hosts would not catch a misaligned vector).
  FusedPointwiseParams p = small_program();
  const std::vector<int64_t> in_dims = {4, 64}, out_dims = {4, 16};
  const auto* base = reinterpret_cast<const uint8_t*>(uintptr_t{1} << 20);  // never read
  for (const int64_t start : {4, 2, 0, 48}) {
    SCOPED_TRACE(start);
    p.slices = {1, 1, start, 16};
    const codegen::PointwiseLaunch launch = codegen::plan_pointwise_launch(
        p, {{base, &in_dims, DataType::kF32}}, {{base + 65536, &out_dims, DataType::kF32}}, {},
        "sliced");
    EXPECT_EQ(launch.args.in[0], base + start * 4);
    EXPECT_EQ(launch.args.wide, start % 4 == 0 ? 1 : 0);
    EXPECT_EQ(launch.args.vec, 0);  // a view: never the contiguous path
  }
}

TEST(FusePointwise, OldPlanFormatsCannotHoldIt) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  net.mark_output(net.add_layer(small_program(), {x}, "fused")->output(), "y");
  BuilderConfig config;
  config.optimization_level = 0;
  auto bytes = Builder(config).build(net);
  plan_read(bytes.data(), bytes.size());
  test::relabel_plan(bytes, 7);
  test::expect_error([&] { plan_read(bytes.data(), bytes.size()); },
                     {"is a FusedPointwise layer, which format version 7 does not have "
                      "(version 8 added it)"});
}

TEST(FusePointwise, RowReductionsCanBeLeftOutForABTiming) {
  for (const Chain& c : chains()) {
    if (c.name.rfind("RMSNorm", 0) != 0) continue;
    Network net;
    c.build(net, DataType::kF16);
    std::vector<std::string> notes;
    fuse_pointwise_layers(net, nullptr, &notes, /*row_reductions=*/false);
    // As before row reductions: the casts and pow, then the mean, then the rest (the row
    // values' add and rsqrt still join the full-shape products that read them).
    EXPECT_EQ(count(net, LayerKind::kReduce), 1);
    EXPECT_EQ(count(net, LayerKind::kFusedPointwise), 2);
    const auto ins = inputs_for(net, c);
    Network reference;
    c.build(reference, DataType::kF16);
    EXPECT_TRUE(test::run_network_direct(net, ins)[0].bytes ==
                test::run_network_direct(reference, ins)[0].bytes);
  }
}

TEST(FusePointwise, PlansBeforeVersion10CannotHoldRowReductions) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  FusedPointwiseParams p;
  semantics::FusedStep sum;
  sum.family = FusedOpFamily::kReduce;
  sum.code = static_cast<int>(ReduceOp::kSum);
  sum.operands[0] = 0;
  semantics::fused_append(p, sum);
  p.outputs = {1};
  net.mark_output(net.add_layer(p, {x}, "fused")->output(), "y");
  BuilderConfig config;
  config.optimization_level = 0;
  auto bytes = Builder(config).build(net);
  plan_read(bytes.data(), bytes.size());
  const std::vector<TestTensor> ins = {TestTensor::floats(DataType::kF32, {2, 3}, {1, 2, 3, 4, 5, 6.5f})};
  const auto out = test::run_network_direct(net, ins);
  EXPECT_EQ(out[0].to_floats(), (std::vector<float>{6, 6, 6, 15.5f, 15.5f, 15.5f}));
  test::relabel_plan(bytes, 9);
  test::expect_error([&] { plan_read(bytes.data(), bytes.size()); },
                     {"FusedPointwise 'fused'", "has a row-reduction step, which format version 9 "
                      "does not have (version 10 added it)"});
}

// ---------------------------------------------------------------- code generation

/// The generated kernel source of every FusedPointwise layer the pass makes of chain `c`.
std::vector<std::string> sources_of(const Chain& c, DataType dt) {
  Network net;
  c.build(net, dt);
  fuse_pointwise_layers(net, nullptr, nullptr);
  std::vector<std::string> sources;
  for (const Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kFusedPointwise) continue;
    std::vector<DataType> dtypes;
    for (const Tensor* t : l->inputs()) dtypes.push_back(t->dtype());
    sources.push_back(
        codegen::pointwise_kernel_source(l->params_as<FusedPointwiseParams>(), dtypes));
  }
  return sources;
}

/// The first of them ("" when the chain fuses nothing).
std::string source_of(const Chain& c, DataType dt) {
  const std::vector<std::string> sources = sources_of(c, dt);
  return sources.empty() ? "" : sources.front();
}

TEST(PointwiseCodegen, SourceHasTheKernelTheStepsAndTheRounding) {
  const std::string f32 = source_of(chains()[1], DataType::kF32);
  const std::string f16 = source_of(chains()[1], DataType::kF16);
  EXPECT_NE(f32.find("extern \"C\" __global__ void __launch_bounds__(256) ember_fused_pointwise("
                     "EmberPointwiseArgs a)"), std::string::npos) << f32;
  EXPECT_NE(f32.find("erff("), std::string::npos);
  EXPECT_NE(f32.find("__uint_as_float(0x3f000000u)"), std::string::npos);  // the inline 0.5
  EXPECT_NE(f32.find("*(const float4*)"), std::string::npos);  // vectorized f32 loads
  EXPECT_EQ(f32.find("= ember_round_f16("), std::string::npos);  // nothing to round in f32
  EXPECT_NE(f16.find("= ember_round_f16("), std::string::npos);  // each f16 step rounds
  EXPECT_NE(f16.find("*(const uint2*)"), std::string::npos);  // 4 halves per load
  EXPECT_NE(f16.find("ember_h2f("), std::string::npos);
  EXPECT_NE(f16.find("a.strides[1][d]"), std::string::npos);  // the broadcast bias's strides
  const std::string cast = source_of(chains()[2], DataType::kF16);
  EXPECT_NE(cast.find("= ember_round_bf16("), std::string::npos);
  EXPECT_NE(cast.find("ember_f2b("), std::string::npos);  // the bf16 output's store
  const std::string clip = source_of(chains()[3], DataType::kF32);
  EXPECT_NE(clip.find("fminf(fmaxf("), std::string::npos);
  EXPECT_NE(clip.find("ember_nan_max("), std::string::npos);
  // Deterministic: the kernel cache keys on the text.
  EXPECT_EQ(source_of(chains()[1], DataType::kF32), f32);
  EXPECT_NE(codegen::source_hash(f32), codegen::source_hash(f16));
  // The generated struct's size: 1360 bytes before `wide` and `index32` (4 bytes each) were
  // appended; the host's struct and the generated one end alike.
  EXPECT_EQ(sizeof(codegen::PointwiseKernelArgs), 1368u);
  EXPECT_NE(f32.find("  int wide;\n  int index32;\n};"), std::string::npos);
  // The offset walk in 32 bits where the host says every offset fits, else in 64.
  EXPECT_NE(f16.find("if (a.index32) {\n      unsigned int rem = (unsigned int)(i);"),
            std::string::npos) << f16;
  EXPECT_NE(f16.find("const unsigned int q = rem / dim;"), std::string::npos);
  EXPECT_NE(f16.find("const long long q = rem / dim;"), std::string::npos);
  EXPECT_NE(f32.find("if (a.wide) {"), std::string::npos);  // the strided vectorized path
  EXPECT_NE(f16.find("a.strides[1][a.rank - 1] == 0"), std::string::npos);
  // The contiguous path reads a one-element input at 0, the strided one at its walked offset
  // (an H100 caught the contiguous path reading it at the output's index, past its end).
  EXPECT_NE(f16.find("if (a.vec & 4) {\n        const float s = ember_h2f(((const ember_u16*)"
                     "a.in[1])[0]);"), std::string::npos) << f16;
  EXPECT_NE(f16.find("const float s = ember_h2f(((const ember_u16*)a.in[1])[at1]);"),
            std::string::npos);
}

TEST(PointwiseCodegen, RowReductionsGetTheWarpPerRowKernel) {
  const std::vector<Chain> all = chains();
  auto find = [&](const std::string& prefix) {
    for (const Chain& c : all) {
      if (c.name.rfind(prefix, 0) == 0) return c;
    }
    ADD_FAILURE() << "no chain " << prefix;
    return all[0];
  };
  const std::string rms = source_of(find("RMSNorm"), DataType::kF16);
  EXPECT_NE(rms.find("__launch_bounds__(128) ember_fused_pointwise(EmberPointwiseArgs a)"),
            std::string::npos) << rms;
  EXPECT_NE(rms.find("const long long row_len = a.dims[a.rank - 1];"), std::string::npos);
  EXPECT_NE(rms.find("double acc"), std::string::npos);  // sums in f64, as the CPU
  EXPECT_NE(rms.find("__shfl_xor_sync(0xffffffffu, acc"), std::string::npos);
  EXPECT_NE(rms.find("/ (double)row_len)"), std::string::npos);  // the mean
  EXPECT_NE(rms.find("[r * row_len + j] = ember_f2h("), std::string::npos);  // the f16 store
  EXPECT_EQ(rms.find("ember_program("), std::string::npos);  // no elementwise kernel
  const std::string softmax = source_of(find("softmax"), DataType::kF32);
  EXPECT_NE(softmax.find("float acc"), std::string::npos);  // the max in f32
  EXPECT_NE(softmax.find("ember_nan_max(acc"), std::string::npos);
  const std::string ln = source_of(find("layer norm"), DataType::kBF16);
  size_t passes = 0;
  for (size_t at = ln.find("for (long long j = lane;"); at != std::string::npos;
       at = ln.find("for (long long j = lane;", at + 1)) {
    ++passes;
  }
  EXPECT_EQ(passes, 3u);  // two reductions, then the pass that stores
  const std::string rope = source_of(find("RoPE on a transposed"), DataType::kF16);
  EXPECT_NE(rope.find("__device__ const long long ember_g"), std::string::npos) << rope;
  EXPECT_NE(rope.find("? ember_g"), std::string::npos);  // the last dim through the indices
  const std::string norm_view = source_of(find("views in a row program"), DataType::kF32);
  EXPECT_EQ(norm_view.find("ember_g"), std::string::npos);  // a transpose needs no table
}

// ---------------------------------------------------------------- generated kernels on the host
//
// The generated source is CUDA C with no CUDA headers, so a host C++ compiler can build it with
// a small shim (the CUDA keywords as nothing, blockIdx and friends as globals, the PTX
// conversions as _Float16 and bit arithmetic). Each "thread" of the elementwise kernel's
// grid-stride loops runs in turn, which is exact for it (no shared memory, no synchronization);
// each warp of a row kernel runs as 32 host threads that meet at every shuffle. The tests below
// run every chain's kernels that way with the launch arguments the CUDA back end computes
// (codegen::plan_pointwise_launch), under every path switch, against the CPU back end's
// FusedPointwise: the generated index math (merged dims, views, gathers, the vectorized,
// strided-vector, generic and row paths, 32- and 64-bit offset walks) and the row reductions'
// warp combination are checked in CI, which has no GPU. The GPU's own math library is not.

/// The shim the generated sources are compiled with on the host.
constexpr const char* kHostShim = R"(#include <cmath>
#include <cstring>
#include <cstdint>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
using std::isfinite;
using std::isinf;
using std::isnan;
struct EmberDim3 { unsigned int x = 0, y = 0, z = 0; };
static thread_local EmberDim3 blockIdx, threadIdx;
static EmberDim3 blockDim, gridDim;
// A warp of the row kernel: 32 host threads, one a lane, meeting at each shuffle.
struct EmberWarp {
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0;
  unsigned long long generation = 0;
  unsigned char slots[32][8];
  void barrier() {
    std::unique_lock<std::mutex> lock(m);
    const unsigned long long gen = generation;
    if (++arrived == 32) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};
static thread_local EmberWarp* ember_warp = nullptr;
template <class T> T ember_exchange(T v, unsigned int from) {
  const unsigned int lane = threadIdx.x & 31u;
  std::memcpy(ember_warp->slots[lane], &v, sizeof(T));
  ember_warp->barrier();
  T r;
  std::memcpy(&r, ember_warp->slots[from & 31u], sizeof(T));
  ember_warp->barrier();
  return r;
}
template <class T> T __shfl_xor_sync(unsigned int, T v, int mask) {
  return ember_exchange(v, (threadIdx.x & 31u) ^ (unsigned int)mask);
}
template <class T> T __shfl_sync(unsigned int, T v, int lane) {
  return ember_exchange(v, (unsigned int)lane);
}
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(n)
struct float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct uint2 { unsigned int x, y; };
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
typedef unsigned short ember_u16;
inline float ember_h2f(ember_u16 h) { _Float16 v; std::memcpy(&v, &h, 2); return (float)v; }
inline ember_u16 ember_f2h(float f) { const _Float16 v = (_Float16)f; ember_u16 h; std::memcpy(&h, &v, 2); return h; }
inline ember_u16 ember_f2b(float f) {
  unsigned int u; std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (ember_u16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (ember_u16)(u >> 16);
}
)";

/// The host library of `sources`: kernel k is extern "C" ember_run_<k>(args, blocks, threads).
class HostKernels {
 public:
  explicit HostKernels(const std::vector<std::string>& sources) {
    char dir_template[] = "/tmp/ember_host_kernels_XXXXXX";
    const char* dir = mkdtemp(dir_template);
    if (dir == nullptr) {
      error_ = "mkdtemp failed";
      return;
    }
    dir_ = dir;
    std::string src = kHostShim;
    for (size_t k = 0; k < sources.size(); ++k) {
      const std::string K = std::to_string(k);
      std::string body;
      size_t at = 0;
      while (at < sources[k].size()) {  // the preamble's PTX conversions are the shim's
        size_t end = sources[k].find('\n', at);
        if (end == std::string::npos) end = sources[k].size();
        const std::string line = sources[k].substr(at, end - at);
        if (line.find("asm(") == std::string::npos) body += line + "\n";
        at = end + 1;
      }
      for (size_t c = body.find("extern \"C\" "); c != std::string::npos;
           c = body.find("extern \"C\" ")) {
        body.erase(c, 11);
      }
      // Elementwise kernels: each thread in turn. Row kernels: each warp as 32 host threads.
      src += "namespace ember_k" + K + " {\n" + body + "}\n" + "extern \"C\" void ember_run_" + K +
             "(const void* args, unsigned int blocks, unsigned int threads, int rows) {\n"
             "  const auto& a = *static_cast<const ember_k" + K + "::EmberPointwiseArgs*>(args);\n"
             "  gridDim.x = blocks; blockDim.x = threads;\n"
             "  for (unsigned int b = 0; b < blocks; ++b) {\n"
             "    if (!rows) {\n"
             "      for (unsigned int t = 0; t < threads; ++t) {\n"
             "        blockIdx.x = b; threadIdx.x = t;\n"
             "        ember_k" + K + "::ember_fused_pointwise(a);\n"
             "      }\n"
             "      continue;\n"
             "    }\n"
             "    for (unsigned int w = 0; w < threads / 32; ++w) {\n"
             "      EmberWarp warp;\n"
             "      std::vector<std::thread> lanes;\n"
             "      for (unsigned int l = 0; l < 32; ++l) {\n"
             "        lanes.emplace_back([&, l] {\n"
             "          blockIdx.x = b; threadIdx.x = w * 32 + l; ember_warp = &warp;\n"
             "          ember_k" + K + "::ember_fused_pointwise(a);\n"
             "        });\n"
             "      }\n"
             "      for (std::thread& t : lanes) t.join();\n"
             "    }\n"
             "  }\n}\n";
    }
    const std::string cpp = dir_ + "/kernels.cpp", so = dir_ + "/kernels.so",
                      log = dir_ + "/compile.log";
    FILE* f = std::fopen(cpp.c_str(), "w");
    if (f == nullptr) {
      error_ = "cannot write " + cpp;
      return;
    }
    std::fwrite(src.data(), 1, src.size(), f);
    std::fclose(f);
    const char* cxx = std::getenv("CXX");
    const std::string cmd = std::string(cxx != nullptr && *cxx != '\0' ? cxx : "c++") +
                            " -std=c++17 -O1 -fPIC -shared -pthread -o " + so + " " + cpp + " > " +
                            log +
                            " 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      error_ = "the host compiler failed: " + cmd + "\n" + read_file(log);
      return;
    }
    handle_ = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) error_ = std::string("dlopen: ") + dlerror();
  }
  ~HostKernels() {
    if (handle_ != nullptr) dlclose(handle_);
    if (!dir_.empty()) std::system(("rm -rf " + dir_).c_str());
  }
  HostKernels(const HostKernels&) = delete;
  HostKernels& operator=(const HostKernels&) = delete;

  const std::string& error() const { return error_; }
  /// Runs kernel k over `blocks` x `threads` "threads" with `args` (a row kernel: `rows`).
  void run(size_t k, const codegen::PointwiseKernelArgs& args, unsigned blocks, unsigned threads,
           bool rows) const {
    using Fn = void (*)(const void*, unsigned int, unsigned int, int);
    auto fn = reinterpret_cast<Fn>(dlsym(handle_, ("ember_run_" + std::to_string(k)).c_str()));
    ASSERT_NE(fn, nullptr) << "kernel " << k;
    fn(&args, blocks, threads, rows ? 1 : 0);
  }

 private:
  static std::string read_file(const std::string& path) {
    std::string text;
    if (FILE* f = std::fopen(path.c_str(), "r")) {
      char buf[4096];
      size_t got;
      while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
      std::fclose(f);
    }
    return text.substr(0, 8000);
  }
  std::string dir_, error_;
  void* handle_ = nullptr;
};

/// One fused layer of a chain, with the values its inputs and outputs take on the CPU.
struct FusedCase {
  std::string what;
  FusedPointwiseParams params;
  std::vector<TestTensor> inputs, outputs;
  size_t source = 0;  // index into the HostKernels' sources
};

/// The FusedPointwise layers of every chain per dtype, with their operands' values
/// from the CPU back end (the fused network run with those tensors as extra outputs).
std::vector<FusedCase> fused_cases_on_cpu(std::vector<std::string>& sources) {
  std::vector<FusedCase> cases;
  for (const Chain& c : chains()) {
    for (DataType dt : kFloatTypes) {
      Network net;
      c.build(net, dt);
      const auto ins = inputs_for(net, c);
      Network fused = net.clone();
      fuse_pointwise_layers(fused, nullptr, nullptr);
      std::vector<const Layer*> layers;
      for (const Layer* l : fused.layers()) {
        if (l->kind() == LayerKind::kFusedPointwise) layers.push_back(l);
      }
      if (layers.empty()) continue;
      // Every tensor a kept layer reads or writes, as an output (network inputs as given).
      auto value_of = [&](const Tensor* t, const std::vector<TestTensor>& outs) -> TestTensor {
        for (size_t i = 0; i < fused.inputs().size(); ++i) {
          if (fused.inputs()[i] == t) return ins[i];
        }
        for (size_t o = 0; o < fused.outputs().size(); ++o) {
          if (fused.outputs()[o] == t) return outs[o];
        }
        ADD_FAILURE() << c.name << ": a fused layer's operand is neither an input nor an output";
        return {};
      };
      for (const Layer* l : layers) {
        std::vector<Tensor*> operands(l->inputs().begin(), l->inputs().end());
        operands.push_back(l->output());
        for (size_t o = 1; o < l->outputs().size(); ++o) operands.push_back(l->output(o));
        for (Tensor* t : operands) {
          bool known = t->producer() == nullptr;  // a network input
          for (const Tensor* out : fused.outputs()) known = known || out == t;
          if (!known) fused.mark_output(t, "probe_" + std::to_string(fused.outputs().size()));
        }
      }
      const auto outs = test::run_network_direct(fused, ins);
      for (const Layer* l : layers) {
        FusedCase fc;
        fc.what = c.name + " " + dtype_name(dt) + " " + l->name();
        fc.params = l->params_as<FusedPointwiseParams>();
        std::vector<DataType> dtypes;
        for (const Tensor* t : l->inputs()) {
          fc.inputs.push_back(value_of(t, outs));
          dtypes.push_back(t->dtype());
        }
        for (size_t o = 0; o < l->outputs().size(); ++o) {
          fc.outputs.push_back(value_of(l->output(o), outs));
        }
        const std::string source = codegen::pointwise_kernel_source(fc.params, dtypes);
        fc.source = std::find(sources.begin(), sources.end(), source) - sources.begin();
        if (fc.source == sources.size()) sources.push_back(source);
        cases.push_back(std::move(fc));
      }
    }
  }
  return cases;
}

TEST(PointwiseCodegen, GeneratedKernelsRunOnTheHostAsTheCpuBackEnd) {
  std::vector<std::string> sources;
  const std::vector<FusedCase> cases = fused_cases_on_cpu(sources);
  ASSERT_FALSE(cases.empty());
  const HostKernels kernels(sources);
  ASSERT_EQ(kernels.error(), "");
  // Which paths ran, by {vec, wide, generic} x {32-bit, 64-bit walk}: each must have run.
  std::map<std::string, int> paths;
  for (const FusedCase& fc : cases) {
    for (const bool strided_vectors : {true, false}) {
      for (const bool index32 : {true, false}) {
        const std::string what = fc.what + (strided_vectors ? "" : " (no strided vectors)") +
                                  (index32 ? " (32-bit walk)" : " (64-bit walk)");
        SCOPED_TRACE(what);
        std::vector<codegen::PointwiseOperand> ins, outs;
        for (const TestTensor& t : fc.inputs) ins.push_back({t.bytes.data(), &t.dims, t.dtype});
        // Fresh output buffers, filled with NaN bytes so that an element never stored shows.
        std::vector<TestTensor> got = fc.outputs;
        for (TestTensor& t : got) {
          std::fill(t.bytes.begin(), t.bytes.end(), uint8_t{0xff});
          outs.push_back({t.bytes.data(), &t.dims, t.dtype});
        }
        codegen::PointwiseLaunchOptions options;
        options.strided_vectors = strided_vectors;
        options.index32 = index32;
        const codegen::PointwiseLaunch launch =
            codegen::plan_pointwise_launch(fc.params, ins, outs, options, what);
        const bool rows = launch.path == codegen::PointwiseLaunch::Path::kRows;
        ASSERT_TRUE(rows || launch.path == codegen::PointwiseLaunch::Path::kElements);
        const std::string path = rows                    ? "rows"
                                 : launch.args.vec != 0  ? "vec"
                                 : launch.args.wide != 0 ? "wide"
                                                         : "generic";
        ++paths[path + (path == "vec" ? "" : launch.args.index32 != 0 ? " 32" : " 64")];
        // Two blocks of 256 elementwise threads, or one of the row kernel's 4 warps (the
        // grid-stride loops wrap when the work is larger).
        kernels.run(fc.source, launch.args, rows ? 1u : 2u,
                    rows ? static_cast<unsigned>(codegen::kRowKernelThreads) : 256u, rows);
        for (size_t o = 0; o < got.size(); ++o) {
          test::expect_close(got[o], fc.outputs[o].to_floats(), got[o].dtype,
                             what + " output " + std::to_string(o) + " (" + path + ")");
        }
      }
    }
  }
  for (const char* p : {"vec", "wide 32", "wide 64", "generic 32", "generic 64", "rows 32",
                        "rows 64"}) {
    EXPECT_GT(paths[p], 0) << "no case took the " << p << " path";
  }
}

TEST(PointwiseCodegen, OffsetsWalkIn32BitsOnlyWhereEveryOffsetFits) {
  // One step, x * y with y broadcast along the last dim: no memory is touched by the planning,
  // so fake 16-byte aligned addresses serve for tensors of any size.
  FusedPointwiseParams p;
  append_elementwise(p, ElementWiseOp::kProd, 0, 1);
  p.outputs = {2};
  const auto* fake = reinterpret_cast<const void*>(uintptr_t{1} << 20);
  auto plan = [&](const std::vector<int64_t>& dims, bool index32) {
    const std::vector<int64_t> row = {dims[0], 1};
    codegen::PointwiseLaunchOptions options;
    options.index32 = index32;
    return codegen::plan_pointwise_launch(p, {{fake, &dims}, {fake, &row}}, {{fake, &dims}},
                                          options, "mul");
  };
  EXPECT_EQ(plan({1024, 1000}, true).args.index32, 1);
  EXPECT_EQ(plan({1024, 1000}, false).args.index32, 0);  // EMBER_POINTWISE_INDEX32=0
  const codegen::PointwiseLaunch large = plan({int64_t{1} << 16, (int64_t{1} << 15) + 1}, true);
  EXPECT_EQ(large.path, codegen::PointwiseLaunch::Path::kElements);
  EXPECT_EQ(large.args.index32, 0);  // 2^31 + 2^16 elements: the 64-bit walk
  EXPECT_EQ(plan({int64_t{1} << 16, int64_t{1} << 15}, true).args.index32, 0);  // n = 2^31
  EXPECT_EQ(plan({(int64_t{1} << 16) - 1, int64_t{1} << 15}, true).args.index32, 1);
  // A bad view names the layer.
  const std::vector<int64_t> dims = {4, 4}, wrong = {3, 1};
  test::expect_error(
      [&] {
        codegen::plan_pointwise_launch(p, {{fake, &dims}, {fake, &wrong}}, {{fake, &dims}}, {},
                                       "FusedPointwise 'mul'");
      },
      {"FusedPointwise 'mul': input 1 does not broadcast to the output"});
}

#ifdef EMBER_WITH_CUDA
TEST(PointwiseCodegen, NvrtcCompilesEveryChainForSm90WithoutAGpu) {
  // The cache is process-wide: on a GPU machine (sm_90) the CudaFusedPointwise tests may have
  // compiled some of these sources already. So: each source compiles at most once, and asking
  // again compiles nothing.
  for (const Chain& c : chains()) {
    for (DataType dt : kFloatTypes) {
      const std::vector<std::string> sources = sources_of(c, dt);  // every fused layer's
      for (size_t k = 0; k < sources.size(); ++k) {
        const std::string& src = sources[k];
        SCOPED_TRACE(c.name + " " + dtype_name(dt) + " layer " + std::to_string(k));
        const int before = cuda::pointwise_kernel_compilations();
        const std::vector<uint8_t> cubin = cuda::cached_pointwise_kernel(src, "sm_90");
        ASSERT_GE(cubin.size(), 4u);
        EXPECT_EQ(std::memcmp(cubin.data(), "\x7f" "ELF", 4), 0);
        const int once = cuda::pointwise_kernel_compilations();
        EXPECT_LE(once - before, 1);
        EXPECT_EQ(cuda::cached_pointwise_kernel(src, "sm_90"), cubin);  // cached: no recompile
        EXPECT_EQ(cuda::pointwise_kernel_compilations(), once);
      }
    }
  }
  test::expect_error([] { cuda::compile_pointwise_kernel("this is not CUDA", "sm_90"); },
                     {"NVRTC could not compile the fused pointwise kernel for sm_90",
                      "EMBER_FUSE_POINTWISE=0"});
}
#endif

TEST(FusePointwise, LoneBroadcastsBecomeOneLayerWhereTheBackEndAsks) {
  // A squeeze-and-excitation gate [N, 1, 1, C] times its activation [N, H, W, C], alone (its
  // gate comes from a convolution that reads a pooling of the activation, so no chain joins
  // it). The CUDA back end asks for it as a generated kernel; the CPU (nullptr) does not. A
  // lone same-shape layer and a lone multiply by a one-element constant stay as they are.
  const Backend* cuda = find_backend("cuda");
  if (cuda == nullptr) GTEST_SKIP() << "built without the CUDA back end";
  for (DataType dt : kFloatTypes) {
    Network net;
    Tensor* x = net.add_input("x", dt, {2, 3, 3, 8});
    Tensor* g = net.add_input("g", dt, {2, 1, 1, 8});
    Tensor* y = net.add_input("y", dt, {2, 3, 3, 8});
    net.mark_output(net.add_elementwise(x, g, ElementWiseOp::kProd, "gate")->output(), "gated");
    net.mark_output(net.add_elementwise(x, y, ElementWiseOp::kSum, "same")->output(), "sum");
    const TestTensor one = TestTensor::random(dt, {1}, 4);
    Tensor* c = net.add_constant(Weights::copy(dt, {1}, one.bytes.data()), "c")->output();
    net.mark_output(net.add_elementwise(y, c, ElementWiseOp::kProd, "scalar")->output(),
                    "scaled");
    SCOPED_TRACE(dtype_name(dt));
    Network cpu = net.clone(), gpu = net.clone();
    fuse_pointwise_layers(cpu, nullptr, nullptr, false);
    std::vector<std::string> notes;
    fuse_pointwise_layers(gpu, cuda, &notes, false);
    EXPECT_TRUE(notes.empty()) << notes.front();
    EXPECT_EQ(count(cpu, LayerKind::kFusedPointwise), 0);
    EXPECT_EQ(count(gpu, LayerKind::kFusedPointwise), 1);
    EXPECT_EQ(count(gpu, LayerKind::kElementWise), 2);
    const std::vector<TestTensor> ins = {TestTensor::random(dt, {2, 3, 3, 8}, 1),
                                         TestTensor::random(dt, {2, 1, 1, 8}, 2),
                                         TestTensor::random(dt, {2, 3, 3, 8}, 3)};
    const auto want = test::run_network_direct(net, ins);
    const auto got = test::run_network_direct(gpu, ins);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(got[i].bytes == want[i].bytes) << "output " << i << " differs in its bits";
    }
  }
}

}  // namespace
}  // namespace ember::engine
