// CUDA conformance of the fused Attention layer against the CPU reference executor, every case
// twice: on Ember's kernels (EMBER_CUDNN_ATTENTION=0) and with cuDNN's fused SDPA taking every
// problem it covers (=force; attention_cudnn.h). Ember's kernels: the tensor-core flash kernel (f16/bf16, head sizes <= 128, several query/key tiles, partial
// tiles, strided seq-major operands) and the row kernel (f32, head sizes > 128), with causal,
// bool and additive masks and grouped-query heads; the key-split kernel for small grids and the
// 64-query one on both sides of the rule that picks between them. Skipped (visibly) without a
// CUDA device.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include <cstdlib>
#include <functional>

#include "attention_cases.h"
#include "backends/cuda/attention_cudnn.h"
#include "backends/cuda/attention_split.h"
#include "cuda_test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

/// Sets EMBER_CUDNN_ATTENTION for its lifetime (the path reads it on every call).
class CudnnSetting : public test::ScopedEnv {
 public:
  explicit CudnnSetting(const char* value) : ScopedEnv("EMBER_CUDNN_ATTENTION", value) {}
};

/// Runs `body` on Ember's kernels and again with cuDNN forced, its label saying which.
void on_both_paths(const std::function<void(const std::string&)>& body) {
  {
    CudnnSetting off("0");
    body(" [Ember kernels]");
  }
  CudnnSetting force("force");
  body(" [cuDNN where covered]");
}

/// GPT-2's shape family: the packed thirds of one projection x [B, L, 3 * H * 64] read in place
/// (B = 2, H = 4; L = 130 covers partial query and key tiles).
Network packed_thirds(DataType t, bool causal) {
  Network net;
  Tensor* x = net.add_input("x", t, {2, 130, 3 * 4 * 64});
  AttentionParams p;
  p.scale = 0.125;
  p.causal = causal;
  p.seq_major = true;
  p.packed_heads = 4;
  net.mark_output(net.add_layer(p, {x, x, x}, "attn")->output(), "out");
  return net;
}

void check_both(const Network& net, const std::vector<TestTensor>& in, const std::string& what) {
  on_both_paths([&](const std::string& path) { test::check_cuda_matches_cpu(net, in, what + path); });
}

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};

using Case = test::AttentionCase;

void check(const Case& c, DataType t, uint32_t seed) {
  const std::string what = std::string(dtype_name(t)) + " B" + std::to_string(c.B) + " H" +
                           std::to_string(c.H) + "/" + std::to_string(c.Hkv) + " L" +
                           std::to_string(c.L) + " S" + std::to_string(c.S) + " E" +
                           std::to_string(c.E) + " Ev" + std::to_string(c.Ev) +
                           (c.seq_major ? " seq-major" : "") +
                           (c.seq_major_operands != 0
                                ? " operands " + std::to_string(c.seq_major_operands)
                                : "") +
                           (c.causal ? " causal" : "") +
                           (c.mask_dims.empty()                    ? ""
                            : c.mask_dtype == DataType::kBool ? " bool mask"
                                                              : " add mask");
  const std::vector<TestTensor> in = test::attention_inputs(c, t, seed);
  check_both(test::attention_network(c, in), in, what);
}

TEST(CudaAttention, FlashKernelTilesAndLayouts) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    for (bool seq_major : {false, true}) {
      Case c;
      c.E = c.Ev = 16;
      c.seq_major = seq_major;
      check(c, t, 1);  // one partial tile each way
      c.L = 130;
      c.S = 200;  // three query blocks, four key tiles, partial at both ends
      c.E = c.Ev = 64;
      check(c, t, 2);
      c.causal = true;
      check(c, t, 3);
      c.E = c.Ev = 128;  // the D = 128 instantiation
      c.L = c.S = 128;
      check(c, t, 4);
      c.E = 40;  // padded features, value features differ
      c.Ev = 72;
      check(c, t, 5);
    }
  }
}

TEST(CudaAttention, FlashKernelLargeGrids) {
  EMBER_SKIP_WITHOUT_CUDA();
  // 4 * 12 * ceil(200 / 64) = 192 and 96 blocks of 64 queries: more and fewer than an H100/H200
  // has SMs (the 64-query and the key-split mma.sync kernels; with EMBER_ATTENTION_KERNEL=wmma,
  // the WMMA kernel's 4- and 2-warp blocks).
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    for (int64_t batch : {4, 2}) {
      Case c;
      c.B = batch;
      c.H = c.Hkv = 12;
      c.L = c.S = 200;
      c.E = c.Ev = 64;
      c.seq_major = true;
      c.causal = true;
      check(c, t, 50);
      c.causal = false;
      c.mask_dims = {batch, 1, 200, 200};
      check(c, t, 51);
    }
  }
}

TEST(CudaAttention, FlashKernelEdgeCases) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    Case c;
    c.E = c.Ev = 36;  // not a multiple of 8: element-wise tile loads
    c.L = 70;
    c.S = 90;
    check(c, t, 60);
    c.E = c.Ev = 64;
    c.causal = true;  // more queries than keys: query blocks that start past the last key
    c.L = 150;
    c.S = 40;
    check(c, t, 61);
    c.L = c.S = 100;  // causal and a mask together
    c.mask_dims = {2, 1, 100, 100};
    check(c, t, 62);
    Case big;  // head size 128 with 4-warp blocks (the largest shared-memory layout)
    big.B = 4;
    big.H = big.Hkv = 12;
    big.L = big.S = 200;
    big.E = big.Ev = 128;
    big.seq_major = true;
    check(big, t, 63);
  }
}

// Batch 1 and few heads: grids far below the SM count, so the key-split kernel runs (unless
// EMBER_ATTENTION_SPLIT=0 forces the 64-query one). Every pair of query and key lengths from 1
// to 300 (one partial 16-query block, one warp's 16 keys, whole and partial 64-key tiles,
// warps with no keys in the last tile), each with a different mix of causal, bool or additive
// mask (broadcast differently), grouped-query heads, head size 64 or 128, value size != E, and
// both layouts.
TEST(CudaAttention, SplitKernelSmallGrids) {
  EMBER_SKIP_WITHOUT_CUDA();
  const std::vector<int64_t> lengths = {1, 7, 64, 100, 128, 129, 300};
  uint32_t seed = 100;
  int n = 0;
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    for (int64_t L : lengths) {
      for (int64_t S : lengths) {
        ++n;
        Case c;
        c.B = 1;
        c.H = 2;
        c.Hkv = n % 3 == 0 ? 1 : 2;  // grouped-query heads on every third case
        c.L = L;
        c.S = S;
        c.E = n % 4 == 1 ? 128 : 64;
        c.Ev = n % 5 == 2 ? (c.E == 64 ? 40 : 96) : c.E;  // padded value features
        c.seq_major = n % 2 == 0;
        c.causal = n % 3 != 1;
        switch (n % 4) {
          case 0: break;  // no mask
          case 1: c.mask_dims = {1, 1, L, S}; break;
          case 2: c.mask_dims = {1, c.H, L, S}; break;
          default: c.mask_dims = {S}; break;
        }
        if (n % 8 >= 4) c.mask_dtype = t;  // additive
        check(c, t, seed++);
      }
    }
  }
}

// Head size 36 (not a multiple of 8: element-wise tile loads, vec off) and misaligned
// strides in the split kernel, and the fully masked rows of a causal block with more queries
// than keys (their warps skip every tile).
TEST(CudaAttention, SplitKernelUnalignedAndEmptyRows) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    Case c;
    c.B = 1;
    c.H = 3;
    c.Hkv = 3;
    c.E = c.Ev = 36;
    c.L = 70;
    c.S = 90;
    c.seq_major = true;
    check(c, t, 200);
    c.causal = true;
    c.mask_dims = {1, 1, 70, 90};
    check(c, t, 201);
    c.E = c.Ev = 64;
    c.L = 150;  // queries past the last key under the causal mask
    c.S = 40;
    c.mask_dims.clear();
    check(c, t, 202);
    // Two 16-query blocks, two key tiles; query 0 has every key masked out.
    const auto [net, in] = test::fully_masked_case(t, 2, 20, 70, 64);
    check_both(net, in, std::string("split, fully masked ") + dtype_name(t));
  }
}

// The same problem family on both sides of the rule (attention_split_keys with this GPU's SM
// count): batch 1 (split: 36 blocks of 64 queries) and batch 8 (the 64-query kernel: 288),
// head size 64 and 128, causal and with a padding mask, so a model's two batch sizes are both
// checked.
TEST(CudaAttention, BothSidesOfTheSplitRule) {
  EMBER_SKIP_WITHOUT_CUDA();
  int device = 0, sms = 0;
  test::cuda_ok(cudaGetDevice(&device), "cudaGetDevice");
  test::cuda_ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                "cudaDeviceGetAttribute");
  const auto blocks64 = [](const Case& c) { return c.B * c.H * ((c.L + 63) / 64); };
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    for (int64_t batch : {1, 8}) {
      for (int64_t e : {64, 128}) {
        Case c;
        c.B = batch;
        c.H = c.Hkv = 12;
        c.L = c.S = 129;
        c.E = c.Ev = e;
        c.seq_major = true;
        const bool split =
            cuda::attention_split_keys(blocks64(c), sms, cuda::AttentionSplit::kAuto);
        EXPECT_EQ(split, batch == 1) << "batch " << batch << " on " << sms << " SMs";
        c.causal = true;
        check(c, t, 300 + static_cast<uint32_t>(batch + e));
        c.causal = false;
        c.mask_dims = {batch, 1, 1, 129};
        check(c, t, 400 + static_cast<uint32_t>(batch + e));
      }
    }
  }
}

TEST(CudaAttention, MasksAndGroupedHeads) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    for (const std::vector<int64_t>& md :
         {std::vector<int64_t>{2, 1, 70, 90}, {2, 6, 70, 90}, {90}, {2, 1, 1, 90}}) {
      Case c;
      c.H = 6;
      c.Hkv = 2;
      c.L = 70;
      c.S = 90;
      c.E = c.Ev = 64;
      c.mask_dims = md;
      check(c, t, 6);
      c.mask_dtype = t;  // additive
      c.seq_major = true;
      check(c, t, 7);
    }
  }
}

// Qwen2.5-0.5B's grouped-query geometry (14 query heads over 2 key/value heads, head size 64),
// what the builder's repeat_kv rewrite hands the kernels: batch 8 runs the 64-query kernel
// (8 * 14 * 3 = 336 blocks of 64 queries, more than an H100/H200 has SMs), batch 1 the
// key-split one, in both layouts, causal and with a padding mask.
TEST(CudaAttention, GroupedHeadsOnBothSidesOfTheSplitRule) {
  EMBER_SKIP_WITHOUT_CUDA();
  int device = 0, sms = 0;
  test::cuda_ok(cudaGetDevice(&device), "cudaGetDevice");
  test::cuda_ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                "cudaDeviceGetAttribute");
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    for (int64_t batch : {1, 8}) {
      // Head-major, seq-major, and the decoder's mix (q and k head-major after RoPE, v and the
      // output seq-major).
      for (int layout : {0, 1, 2}) {
        Case c;
        c.B = batch;
        c.H = 14;
        c.Hkv = 2;
        c.L = c.S = 129;
        c.E = c.Ev = 64;
        c.seq_major = layout == 1;
        c.seq_major_operands = layout == 2 ? AttentionParams::kV | AttentionParams::kOut : 0;
        const int64_t blocks64 = c.B * c.H * ((c.L + 63) / 64);
        EXPECT_EQ(cuda::attention_split_keys(blocks64, sms, cuda::AttentionSplit::kAuto),
                  batch == 1)
            << "batch " << batch << " on " << sms << " SMs";
        c.causal = true;
        check(c, t, 500 + static_cast<uint32_t>(batch));
        c.causal = false;
        c.mask_dims = {batch, 1, 1, 129};
        check(c, t, 600 + static_cast<uint32_t>(batch));
      }
    }
  }
}

TEST(CudaAttention, FullyMaskedRowsGiveZerosOnBothKernels) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    const auto [net, in] = test::fully_masked_case(t, 2, 3, 4, 16);
    check_both(net, in, std::string("fully masked ") + dtype_name(t));
  }
}

TEST(CudaAttention, RowKernelForF32AndLargeHeads) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    Case c;
    c.E = 160;  // beyond the flash kernel's 128
    c.Ev = 200;
    c.L = 33;
    c.S = 70;
    c.causal = true;
    check(c, t, 12);
    c.causal = false;
    c.mask_dims = {33, 70};
    check(c, t, 13);
  }
  Case c;
  c.L = 100;
  c.S = 150;
  c.E = c.Ev = 64;
  c.seq_major = true;
  check(c, DataType::kF32, 14);
}

TEST(CudaAttention, SymbolicSequenceAtTwoLengths) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    Network net;
    const DimExpr s = DimExpr::symbol("s");
    Tensor* q = net.add_input("q", t, {2, s, 4, 64});
    Tensor* k = net.add_input("k", t, {2, s, 4, 64});
    Tensor* v = net.add_input("v", t, {2, s, 4, 64});
    AttentionParams p;
    p.seq_major = true;
    p.causal = true;
    p.scale = 0.125;
    net.mark_output(net.add_layer(p, {q, k, v}, "attn")->output(), "out");
    std::vector<OptimizationProfile> profiles(1);
    profiles[0].set_range("s", 1, 64, 160);
    on_both_paths([&](const std::string& path) {
      test::CudaRunner runner(net, {}, profiles);
      for (int64_t len : {1, 37, 160}) {
        const std::vector<TestTensor> in = {TestTensor::random(t, {2, len, 4, 64}, 20),
                                            TestTensor::random(t, {2, len, 4, 64}, 21),
                                            TestTensor::random(t, {2, len, 4, 64}, 22)};
        test::expect_matches_cpu(
            net, in, runner.run(in),
            std::string("s=") + std::to_string(len) + " " + dtype_name(t) + path);
      }
    });
  }
}

TEST(CudaAttention, PackedQkvThirdsOfOneProjection) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (DataType t : kFloatTypes) {
    for (bool causal : {false, true}) {
      const Network net = packed_thirds(t, causal);
      check_both(
          net, {TestTensor::random(t, {2, 130, 3 * 4 * 64}, 40, -2.0f, 2.0f)},
          std::string("packed ") + dtype_name(t) + (causal ? " causal" : ""));
    }
  }
}

TEST(CudaAttention, StridedViewsOfOneProjection) {
  EMBER_SKIP_WITHOUT_CUDA();
  // torch.nn.MultiheadAttention's in-projection [L, B, 3 H hd] read through views (batch second)
  // and the output written as [L, B, H hd]. Head size 64 (16-byte aligned: cp.async tiles), 40
  // (aligned, padded to the D = 64 kernel) and 20 (k's offset 40 elements is not 16-byte
  // aligned: the plain-load path); L = 130 covers partial query and key tiles. Batch 3 takes the
  // key-split kernel, batch 24 the 64-query one (B H ceil(L / 64) = 144 blocks).
  for (DataType t : kFloatTypes) {
    for (int64_t hd : {64, 40, 20}) {
      for (int64_t B : {3, 24}) {
        const bool causal = B == 24 ? hd != 40 : hd == 40;
        const int64_t L = 130, H = 2, E = H * hd, width = 3 * E;
        Network net;
        Tensor* x = net.add_input("x", t, {L, B, width});
        AttentionParams p;
        p.scale = 0.125;
        p.causal = causal;
        p.views = {B, H, H, L, L, hd, hd,
                   0, width, hd, B * width,
                   E, width, hd, B * width,
                   2 * E, width, hd, B * width,
                   0, E, hd, B * E};
        p.out_dims = {L, B, E};
        net.mark_output(net.add_layer(p, {x, x, x}, "attn")->output(), "out");
        check_both(
            net, {TestTensor::random(t, {L, B, width}, 41, -2.0f, 2.0f)},
            std::string("views hd=") + std::to_string(hd) + " B=" + std::to_string(B) + " " +
                dtype_name(t) + (causal ? " causal" : ""));
      }
    }
  }
}

// Which problems cuDNN's SDPA takes (EMBER_CUDNN_ATTENTION=force, so no timing decides): the
// unmasked f16/bf16 ones with 16-byte aligned operands, in every layout Ember hands it (head-
// and seq-major, grouped heads, head size 128, the packed thirds of one projection, strided
// views), each checked against the CPU and counted as a cuDNN execution; masked, f32 and
// misaligned ones stay on Ember's kernels (no execution counted, still correct).
TEST(CudaAttention, CudnnSdpaTakesTheUnmaskedAlignedProblems) {
  EMBER_SKIP_WITHOUT_CUDA();
  CudnnSetting force("force");
  if (!cuda::cudnn_attention_enabled()) {
    GTEST_SKIP() << "built without the cuDNN frontend, or the loaded cuDNN is not the one its "
                    "headers are from";
  }
  const auto executions = [] { return cuda::cudnn_attention_counters().executions; };
  const auto expect_path = [&](const Network& net, const std::vector<TestTensor>& in,
                               bool cudnn, const std::string& what) {
    const int64_t before = executions();
    test::check_cuda_matches_cpu(net, in, what);
    // Two runs (layer by layer, then captured); a replayed graph counts nothing.
    if (cudnn) {
      EXPECT_GE(executions() - before, 1) << what << ": cuDNN did not run it";
    } else {
      EXPECT_EQ(executions(), before) << what << ": cuDNN ran a problem it does not cover";
    }
  };
  for (DataType t : {DataType::kF16, DataType::kBF16}) {
    const std::string ts = dtype_name(t);
    auto run_case = [&](const Case& c, bool cudnn, const std::string& what, uint32_t seed) {
      const std::vector<TestTensor> in = test::attention_inputs(c, t, seed);
      expect_path(test::attention_network(c, in), in, cudnn, what + " " + ts);
    };
    Case bert;  // BERT-base's attention, head-major
    bert.B = 2;
    bert.H = bert.Hkv = 12;
    bert.L = bert.S = 128;
    bert.E = bert.Ev = 64;
    run_case(bert, true, "bert", 700);
    Case gpt = bert;  // causal, seq-major, partial tiles, more keys than queries
    gpt.seq_major = true;
    gpt.causal = true;
    gpt.L = 130;
    gpt.S = 200;
    run_case(gpt, true, "causal seq-major", 701);
    Case gqa;  // Qwen2's grouped heads, the decoder's operand mix, batch 1
    gqa.B = 1;
    gqa.H = 14;
    gqa.Hkv = 2;
    gqa.L = gqa.S = 129;
    gqa.E = gqa.Ev = 64;
    gqa.causal = true;
    gqa.seq_major_operands = AttentionParams::kV | AttentionParams::kOut;
    run_case(gqa, true, "grouped heads", 702);
    Case wide;  // head size 128
    wide.B = 2;
    wide.H = wide.Hkv = 4;
    wide.L = wide.S = 200;
    wide.E = wide.Ev = 128;
    wide.causal = true;
    run_case(wide, true, "head size 128", 703);
    Case masked = bert;  // a mask input: Ember's kernel
    masked.mask_dims = {2, 1, 1, 128};
    run_case(masked, false, "masked", 704);
    Case odd = bert;  // head size 36: strides not multiples of 8
    odd.E = odd.Ev = 36;
    run_case(odd, false, "head size 36", 705);

    const Network packed = packed_thirds(t, true);
    expect_path(packed, {TestTensor::random(t, {2, 130, 3 * 4 * 64}, 706, -2.0f, 2.0f)}, true,
                "packed thirds " + ts);

    // torch.nn.MultiheadAttention's views of [L, B, 3 H hd] (batch stride 3 H hd, sequence
    // stride B 3 H hd).
    const int64_t L = 70, B = 3, H = 2, hd = 64, E = H * hd, width = 3 * E;
    Network views;
    Tensor* y = views.add_input("x", t, {L, B, width});
    AttentionParams pv;
    pv.scale = 0.125;
    pv.views = {B, H, H, L, L, hd, hd, 0, width, hd, B * width, E, width, hd, B * width,
                2 * E, width, hd, B * width, 0, E, hd, B * E};
    pv.out_dims = {L, B, E};
    views.mark_output(views.add_layer(pv, {y, y, y}, "attn")->output(), "out");
    expect_path(views, {TestTensor::random(t, {L, B, width}, 707, -2.0f, 2.0f)}, true,
                "strided views " + ts);
  }
  Case f32;
  f32.E = f32.Ev = 64;
  const std::vector<TestTensor> in = test::attention_inputs(f32, DataType::kF32, 708);
  expect_path(test::attention_network(f32, in), in, false, "f32");
}

// EMBER_CUDNN_ATTENTION=timed, and unset (timed is the default): the build times cuDNN's plan
// against Ember's kernel on the problem and keeps the faster (either way the output matches);
// the choice is in the plan's timing cache, so a second context of the engine times nothing.
TEST(CudaAttention, CudnnSdpaIsTimedAgainstEmbersKernel) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (const char* setting : {"timed", static_cast<const char*>(nullptr)}) {
    const std::string label = setting == nullptr ? "unset" : setting;
    CudnnSetting timed(setting);
    if (!cuda::cudnn_attention_enabled()) {
      GTEST_SKIP() << "built without the cuDNN frontend, or the loaded cuDNN is not the one its "
                      "headers are from";
    }
    for (DataType t : {DataType::kF16, DataType::kBF16}) {
      Case c;
      c.B = 4;
      c.H = c.Hkv = 12;
      c.L = c.S = 128;
      c.E = c.Ev = 64;
      c.seq_major = true;
      const std::string what = label + " " + dtype_name(t);
      const std::vector<TestTensor> in = test::attention_inputs(c, t, 710);
      const Network net = test::attention_network(c, in);
      const int64_t before = cuda::cudnn_attention_counters().timed;
      test::CudaRunner runner(net, in);
      EXPECT_EQ(cuda::cudnn_attention_counters().timed, before + 1) << what;
      test::expect_matches_cpu(net, in, runner.run(in), "timed " + what);
      test::CudaRunner second(net, runner.engine().shared_from_this());
      test::expect_matches_cpu(net, in, second.run(in), "second context " + what);
      EXPECT_EQ(cuda::cudnn_attention_counters().timed, before + 1) << what;
    }
  }
}

// attention_bench.py's problem (32x12x128x64, head-major, f16) through the builder, forced and
// timed: larger than the other cases, and the benchmark's (it passed on an H100, 2026-12-06).
TEST(CudaAttention, CudnnSdpaRunsTheBenchmarksProblem) {
  EMBER_SKIP_WITHOUT_CUDA();
  for (const char* mode : {"force", "timed"}) {
    CudnnSetting setting(mode);
    if (!cuda::cudnn_attention_enabled()) GTEST_SKIP() << "cuDNN attention is not available";
    Case c;
    c.B = 32;
    c.H = c.Hkv = 12;
    c.L = c.S = 128;
    c.E = c.Ev = 64;
    const std::vector<TestTensor> in = test::attention_inputs(c, DataType::kF16, 711);
    const Network net = test::attention_network(c, in);
    const cuda::CudnnAttentionCounters before = cuda::cudnn_attention_counters();
    test::CudaRunner runner(net, in);
    test::expect_matches_cpu(net, in, runner.run(in), mode);
    const cuda::CudnnAttentionCounters after = cuda::cudnn_attention_counters();
    if (std::string(mode) == "force") {
      EXPECT_GT(after.executions, before.executions) << mode;  // cuDNN ran it
    } else {
      EXPECT_EQ(after.timed, before.timed + 1) << mode;  // timed once against Ember's kernel
    }
  }
}

TEST(CudaAttention, BadCudnnSettingIsAnError) {
  EMBER_SKIP_WITHOUT_CUDA();
  Case c;
  c.E = c.Ev = 64;
  const std::vector<TestTensor> in = test::attention_inputs(c, DataType::kF16, 709);
  const Network net = test::attention_network(c, in);
  test::CudaRunner runner(net, in);
  CudnnSetting bad("fastest");
  try {
    runner.run(in);
    ADD_FAILURE() << "EMBER_CUDNN_ATTENTION=fastest ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("EMBER_CUDNN_ATTENTION='fastest'"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
