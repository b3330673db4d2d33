// Tests of the fused Attention layer on the CPU reference back end against a naive double
// computation: both layouts, causal, bool and additive masks (broadcast), fully masked rows,
// grouped-query heads, f16/bf16 rounding, dynamic shapes, and the shape errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "attention_cases.h"
#include "ember/engine/network.h"
#include "test_util.h"

namespace ember::engine {
namespace {

using test::TestTensor;

Shape shape_of(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

using Case = test::AttentionCase;

constexpr int64_t kQ = AttentionParams::kQ, kK = AttentionParams::kK, kV = AttentionParams::kV,
                  kOut = AttentionParams::kOut;

/// The output's dims in the case's layout.
std::vector<int64_t> out_dims(const Case& c) {
  return test::operand_dims(c, kOut, c.H, c.L, c.Ev);
}

/// Flat index of (b, h, s, f) in operand `bit` of `heads`, `seq`, `features` in the case's
/// layout.
int64_t at(const Case& c, int64_t bit, int64_t heads, int64_t seq, int64_t features, int64_t b,
           int64_t h, int64_t s, int64_t f) {
  return test::seq_major_at(c, bit) ? ((b * seq + s) * heads + h) * features + f
                                    : ((b * heads + h) * seq + s) * features + f;
}

/// The mask value of (b, h, i, j) broadcast from mask_dims (right-aligned to [B, H, L, S]).
float mask_at(const Case& c, const std::vector<float>& m, int64_t b, int64_t h, int64_t i,
              int64_t j) {
  const int64_t full[4] = {b, h, i, j};
  const int rank = static_cast<int>(c.mask_dims.size());
  int64_t off = 0;
  for (int d = 0; d < rank; ++d) {
    const int64_t size = c.mask_dims[d];
    off = off * size + (size == 1 ? 0 : full[4 - rank + d]);
  }
  return m[off];
}

std::vector<float> reference(const Case& c, const std::vector<float>& q,
                             const std::vector<float>& k, const std::vector<float>& v,
                             const std::vector<float>& m) {
  std::vector<float> out(static_cast<size_t>(c.B * c.H * c.L * c.Ev));
  const int64_t group = c.H / c.Hkv;
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t h = 0; h < c.H; ++h) {
      for (int64_t i = 0; i < c.L; ++i) {
        std::vector<double> s(static_cast<size_t>(c.S), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < c.S; ++j) {
          if (c.causal && j > i) continue;
          double add = 0;
          if (!c.mask_dims.empty()) {
            const float mv = mask_at(c, m, b, h, i, j);
            if (c.mask_dtype == DataType::kBool) {
              if (mv == 0.0f) continue;
            } else {
              add = mv;
            }
          }
          double dot = 0;
          for (int64_t e = 0; e < c.E; ++e) {
            dot += double{q[at(c, kQ, c.H, c.L, c.E, b, h, i, e)]} *
                   k[at(c, kK, c.Hkv, c.S, c.E, b, h / group, j, e)];
          }
          s[j] = dot * c.scale + add;
          mx = std::max(mx, s[j]);
        }
        for (int64_t e = 0; e < c.Ev; ++e) {
          double acc = 0, sum = 0;
          if (mx != -INFINITY) {
            for (int64_t j = 0; j < c.S; ++j) {
              const double w = std::exp(s[j] - mx);
              sum += w;
              acc += w * v[at(c, kV, c.Hkv, c.S, c.Ev, b, h / group, j, e)];
            }
          }
          out[at(c, kOut, c.H, c.L, c.Ev, b, h, i, e)] = sum > 0 ? static_cast<float>(acc / sum) : 0.0f;
        }
      }
    }
  }
  return out;
}

/// Builds the layer for `c` in dtype `t`, runs it through the pipeline and compares.
void check(const Case& c, DataType t, uint32_t seed, const std::string& what) {
  SCOPED_TRACE(what + " " + dtype_name(t));
  const std::vector<TestTensor> in = test::attention_inputs(c, t, seed);
  const TestTensor out = test::run_network(test::attention_network(c, in), in).at(0);
  ASSERT_EQ(out.dims, out_dims(c));
  const std::vector<float> mask = in.size() > 3 ? in[3].to_floats() : std::vector<float>{};
  test::expect_close(out, reference(c, in[0].to_floats(), in[1].to_floats(), in[2].to_floats(), mask),
                     t, what);
}

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};

TEST(AttentionLayer, PlainBothLayoutsEveryFloatType) {
  for (DataType t : kFloatTypes) {
    Case c;
    check(c, t, 1, "head-major");
    c.seq_major = true;
    check(c, t, 2, "seq-major");
    c.E = 5;
    c.Ev = 3;  // value features differ from query/key features
    check(c, t, 3, "seq-major E=5 Ev=3");
  }
}

// Each operand in its own layout (seq_major_operands): the decoder case (q and k head-major
// after RoPE, v and the output seq-major) and every other mix, with grouped-query heads.
TEST(AttentionLayer, PerOperandLayouts) {
  for (DataType t : kFloatTypes) {
    for (int64_t bits = 1; bits < 16; ++bits) {
      Case c;
      c.H = 4;
      c.Hkv = 2;
      c.E = 6;
      c.Ev = 5;
      c.causal = bits % 3 == 0;
      c.seq_major_operands = bits;
      check(c, t, static_cast<uint32_t>(40 + bits), "operands " + std::to_string(bits));
    }
  }
  Network net;
  Tensor* q = net.add_input("q", DataType::kF32, {2, 3, 5, 8});
  AttentionParams p;
  p.seq_major_operands = 16;
  test::expect_error([&] { net.add_layer(p, {q, q, q}, "bits"); },
                     {"Attention 'bits'", "seq_major_operands must be a mask", "got 16"});
  p.seq_major_operands = kV;
  p.seq_major = true;
  test::expect_error([&] { net.add_layer(p, {q, q, q}, "both"); },
                     {"Attention 'both'", "seq_major_operands must be 0 when seq_major"});
  p.seq_major = false;
  Tensor* v = net.add_input("v", DataType::kF32, {2, 3, 7, 8});  // head-major, S=7: 3 != 7
  test::expect_error([&] { net.add_layer(p, {q, q, v}, "mixed"); }, {"Attention 'mixed'"});
}

// Strided views (AttentionParams::views): q, k and v read as thirds of one [L, B, 3 H E]
// tensor (torch.nn.MultiheadAttention's packed in-projection, batch second), grouped heads for
// k and v, the output written as [L, B, H Ev] (the layout its out-projection reads). Compared
// with the same attention written out with copies (slices, reshapes, transposes), run directly.
TEST(AttentionLayer, StridedViewsAgainstTheCopiesTheyReplace) {
  const int64_t L = 5, B = 2, H = 4, Hkv = 2, E = 6;
  const int64_t width = (H + 2 * Hkv) * E;  // q: H heads, k and v: Hkv heads each
  for (DataType t : kFloatTypes) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + (causal ? " causal" : ""));
      Network viewed;
      Tensor* x = viewed.add_input("x", t, {L, B, width});
      AttentionParams p;
      p.causal = causal;
      p.scale = 0.4;
      p.views = {B, H, Hkv, L, L, E, E,
                 0, width, E, B * width,              // q: columns [0, H E)
                 H * E, width, E, B * width,          // k: columns [H E, (H + Hkv) E)
                 (H + Hkv) * E, width, E, B * width,  // v: the rest
                 0, H * E, E, B * H * E};             // out: [L, B, H E]
      p.out_dims = {L, B, H * E};
      viewed.mark_output(viewed.add_layer(p, {x, x, x}, "attn")->output(), "y");

      Network copied;
      Tensor* y = copied.add_input("x", t, {L, B, width});
      const auto operand = [&](int64_t start, int64_t heads) {
        Tensor* s = copied.add_slice(y, {0, 0, start}, {L, B, heads * E}, {1, 1, 1})->output();
        s = copied.add_reshape(s, {L, B, heads, E})->output();
        return copied.add_transpose(s, {1, 2, 0, 3})->output();  // [B, heads, L, E]
      };
      AttentionParams plain;
      plain.causal = causal;
      plain.scale = 0.4;
      Tensor* o = copied.add_layer(plain, {operand(0, H), operand(H * E, Hkv),
                                           operand((H + Hkv) * E, Hkv)}, "attn")->output();
      o = copied.add_transpose(o, {2, 0, 1, 3})->output();  // [L, B, H, E]
      copied.mark_output(copied.add_reshape(o, {L, B, H * E})->output(), "y");

      const std::vector<TestTensor> in = {TestTensor::random(t, {L, B, width}, causal ? 7 : 8)};
      const TestTensor got = test::run_network(viewed, in).at(0);
      ASSERT_EQ(got.dims, (std::vector<int64_t>{L, B, H * E}));
      test::expect_close(got, test::run_network_direct(copied, in).at(0).to_floats(), t,
                         "strided views");
    }
  }
}

TEST(AttentionLayer, StridedViewsAreChecked) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {5, 2, 24});
  AttentionParams p;
  p.views = {2, 2, 2, 5, 5, 4, 4, 0, 24, 4, 48, 8, 24, 4, 48, 16, 24, 4, 48, 0, 8, 4, 16};
  p.out_dims = {5, 2, 8};
  net.add_layer(p, {x, x, x}, "fine");
  AttentionParams bad = p;
  bad.views.pop_back();
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "short"); },
                     {"Attention 'short'", "views must hold 23 numbers", "got 22"});
  bad = p;
  bad.views[7 + 8] = 17;  // v's offset: its last element lands past x's 240
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "far"); },
                     {"Attention 'far'", "value view reaches element 240 of a tensor of 240"});
  bad = p;
  bad.out_dims = {5, 2, 9};
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "dims"); },
                     {"Attention 'dims'", "out_dims must hold B * H * L * Ev = 80 elements"});
  bad = p;
  bad.seq_major = true;
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "both"); },
                     {"Attention 'both'", "views replace seq_major"});
  bad = p;
  bad.views[1] = 3;  // H = 3 over Hkv = 2
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "heads"); },
                     {"Attention 'heads'", "must divide query heads"});
  bad = p;
  bad.views[7 + 1] = std::numeric_limits<int64_t>::max();  // q's batch stride: wraps past the check
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "wrap"); },
                     {"Attention 'wrap'", "query view offset and strides overflow int64"});
  bad = p;
  bad.views[7 + 12 + 1] = 4;  // the output's batch stride equals its head stride: overlap
  test::expect_error([&] { net.add_layer(bad, {x, x, x}, "overlap"); },
                     {"Attention 'overlap'", "output view writes some elements twice"});
  Tensor* sym = net.add_input("s", DataType::kF32, {DimExpr::symbol("n"), 2, 24});
  test::expect_error([&] { net.add_layer(p, {sym, sym, sym}, "symbolic"); },
                     {"Attention 'symbolic'", "query must have constant dims"});
}

TEST(AttentionLayer, CausalIncludingMoreKeysThanQueries) {
  for (DataType t : kFloatTypes) {
    Case c;
    c.causal = true;
    check(c, t, 4, "causal L<S");
    c.L = 9;
    c.S = 4;
    c.seq_major = true;
    check(c, t, 5, "causal L>S seq-major");
  }
}

TEST(AttentionLayer, BoolAndAdditiveMasksBroadcast) {
  for (DataType t : kFloatTypes) {
    for (const std::vector<int64_t>& md :
         {std::vector<int64_t>{2, 1, 5, 7}, {2, 3, 5, 7}, {5, 7}, {7}, {2, 1, 1, 7}}) {
      Case c;
      c.mask_dims = md;
      check(c, t, 6, "bool mask");
      c.mask_dtype = t;
      check(c, t, 7, "additive mask");
      c.seq_major = true;
      c.causal = true;
      check(c, t, 8, "additive mask + causal, seq-major");
    }
  }
}

TEST(AttentionLayer, FullyMaskedRowsGiveZeros) {
  for (DataType t : kFloatTypes) {
    const auto [net, in] = test::fully_masked_case(t, 1, 2, 3, 4);
    const auto outs = test::run_network(net, in);
    for (const TestTensor& o : outs) {
      const std::vector<float> f = o.to_floats();
      for (int e = 0; e < 4; ++e) EXPECT_EQ(f[e], 0.0f) << "row 0 is fully masked";
      for (int e = 4; e < 8; ++e) EXPECT_FALSE(std::isnan(f[e])) << "row 1 has keys";
    }
    EXPECT_EQ(outs[0].to_floats(), outs[1].to_floats());
  }
}

TEST(AttentionLayer, GroupedQueryHeadsShareKeyValueHeads) {
  for (DataType t : kFloatTypes) {
    Case c;
    c.H = 6;
    c.Hkv = 2;
    check(c, t, 12, "gqa 6/2");
    c.seq_major = true;
    c.mask_dims = {2, 6, 5, 7};
    check(c, t, 13, "gqa 6/2 seq-major with a per-head mask");
  }
}

TEST(AttentionLayer, LongRowsAcrossThreads) {
  Case c;
  c.B = 2;
  c.H = c.Hkv = 4;
  c.L = 70;
  c.S = 130;
  c.E = 64;
  c.Ev = 64;
  c.causal = true;
  check(c, DataType::kF32, 14, "70x130 causal");
}

TEST(AttentionLayer, ReferenceKernelWithoutDnnl) {
  // oneDNN's batched products run the layer by default; the reference loop stays what
  // EMBER_CPU_DNNL=0 (and a build without oneDNN) runs.
  ::setenv("EMBER_CPU_DNNL", "0", 1);
  struct Restore {
    ~Restore() { ::unsetenv("EMBER_CPU_DNNL"); }
  } restore;
  for (DataType t : kFloatTypes) {
    Case c;
    c.H = 6;
    c.Hkv = 2;
    c.seq_major = true;
    c.causal = true;
    c.mask_dims = {2, 6, 5, 7};
    c.mask_dtype = t;
    check(c, t, 15, "reference: gqa, seq-major, causal, additive mask");
  }
}

TEST(AttentionLayer, DynamicSequenceLengths) {
  Network net;
  const DimExpr b = DimExpr::symbol("b"), s = DimExpr::symbol("s");
  Tensor* q = net.add_input("q", DataType::kF32, {b, s, 2, 4});
  Tensor* k = net.add_input("k", DataType::kF32, {b, s, 2, 4});
  Tensor* v = net.add_input("v", DataType::kF32, {b, s, 2, 4});
  AttentionParams p;
  p.seq_major = true;
  p.causal = true;
  p.scale = 0.5;
  net.mark_output(net.add_layer(p, {q, k, v}, "attn")->output(), "out");
  test::RunOptions options;
  options.profiles.resize(1);
  options.profiles[0].set_range("b", 1, 2, 3);
  options.profiles[0].set_range("s", 1, 4, 9);
  for (int64_t len : {1, 4, 9}) {
    Case c;
    c.B = 3;
    c.H = c.Hkv = 2;
    c.L = c.S = len;
    c.E = c.Ev = 4;
    c.seq_major = true;
    c.causal = true;
    c.scale = 0.5;
    const TestTensor qt = TestTensor::random(DataType::kF32, {3, len, 2, 4}, 15);
    const TestTensor kt = TestTensor::random(DataType::kF32, {3, len, 2, 4}, 16);
    const TestTensor vt = TestTensor::random(DataType::kF32, {3, len, 2, 4}, 17);
    const TestTensor out = test::run_network(net, {qt, kt, vt}, options).at(0);
    test::expect_close(out, reference(c, qt.to_floats(), kt.to_floats(), vt.to_floats(), {}),
                       DataType::kF32, "s=" + std::to_string(len));
  }
}

TEST(AttentionLayer, PackedQkvReadsThirdsOfOneTensor) {
  for (DataType t : kFloatTypes) {
    for (bool causal : {false, true}) {
      Case c;
      c.seq_major = true;
      c.causal = causal;
      c.L = c.S = 6;
      c.mask_dims = {2, 1, 6, 6};
      // x [B, L, 3 * H * E]: q, k and v side by side.
      const int64_t width = c.H * c.E;
      const TestTensor x = TestTensor::random(t, {c.B, c.L, 3 * width}, 30, -2.0f, 2.0f);
      const std::vector<float> xv = x.to_floats();
      std::vector<float> thirds[3];
      for (int part = 0; part < 3; ++part) {
        for (int64_t r = 0; r < c.B * c.L; ++r) {
          for (int64_t e = 0; e < width; ++e) {
            thirds[part].push_back(xv[r * 3 * width + part * width + e]);
          }
        }
      }
      std::vector<int64_t> flags(static_cast<size_t>(2 * 36));
      for (size_t i = 0; i < flags.size(); ++i) flags[i] = (i * 5) % 7 != 0;
      const TestTensor m = TestTensor::ints(DataType::kBool, c.mask_dims, flags);
      Network net;
      Tensor* xi = net.add_input("x", t, shape_of(x.dims));
      Tensor* mi = net.add_input("mask", DataType::kBool, shape_of(m.dims));
      AttentionParams p;
      p.scale = c.scale;
      p.causal = causal;
      p.seq_major = true;
      p.packed_heads = c.H;
      net.mark_output(net.add_layer(p, {xi, xi, xi, mi}, "attn")->output(), "out");
      const TestTensor out = test::run_network(net, {x, m}).at(0);
      ASSERT_EQ(out.dims, out_dims(c));
      test::expect_close(out, reference(c, thirds[0], thirds[1], thirds[2], m.to_floats()), t,
                         std::string("packed") + (causal ? " causal" : ""));
    }
  }
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 5, 40});
  AttentionParams p;
  p.seq_major = true;
  p.packed_heads = 3;  // 40 is not a multiple of 9
  test::expect_error([&] { net.add_layer(p, {x, x, x}, "packed"); },
                       {"Attention 'packed'", "multiple of 3 * packed_heads"});
  p.packed_heads = 2;
  p.seq_major = false;
  test::expect_error([&] { net.add_layer(p, {x, x, x}, "layout"); },
                       {"Attention 'layout'", "packed_heads needs the seq-major layout"});
}

TEST(AttentionLayer, BadShapesAndTypesNameTheLayer) {
  Network net;
  Tensor* q = net.add_input("q", DataType::kF32, {2, 4, 5, 8});
  Tensor* k = net.add_input("k", DataType::kF32, {2, 4, 7, 8});
  Tensor* v = net.add_input("v", DataType::kF32, {2, 4, 7, 6});
  Tensor* k3 = net.add_input("k3", DataType::kF32, {2, 3, 7, 8});
  Tensor* kbad = net.add_input("kbad", DataType::kF32, {2, 4, 7, 9});
  Tensor* qh = net.add_input("qh", DataType::kF16, {2, 4, 5, 8});
  Tensor* r3 = net.add_input("r3", DataType::kF32, {4, 5, 8});
  Tensor* mi = net.add_input("mi", DataType::kI32, {5, 7});
  Tensor* mw = net.add_input("mw", DataType::kBool, {5, 6});
  const AttentionParams p;
  test::expect_error([&] { net.add_layer(p, {q, k3, k3}, "gqa"); },
               {"Attention 'gqa'", "must divide query heads"});
  test::expect_error([&] { net.add_layer(p, {q, kbad, v}, "feat"); },
               {"Attention 'feat'", "key features must equal query features"});
  test::expect_error([&] { net.add_layer(p, {qh, k, v}, "dt"); }, {"Attention 'dt'", "dtype"});
  test::expect_error([&] { net.add_layer(p, {r3, k, v}, "rank"); }, {"Attention 'rank'", "rank 4"});
  test::expect_error([&] { net.add_layer(p, {q, k, v, mi}, "mi"); },
               {"Attention 'mi'", "mask (input 3) must be bool"});
  test::expect_error([&] { net.add_layer(p, {q, k, v, mw}, "mw"); },
               {"Attention 'mw'", "do not broadcast"});
  AttentionParams nan;
  nan.scale = std::numeric_limits<double>::quiet_NaN();
  test::expect_error([&] { net.add_layer(nan, {q, k, v}, "nan"); },
               {"Attention 'nan'", "scale must be finite"});
}

}  // namespace
}  // namespace ember::engine
