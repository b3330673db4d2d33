// Attention problems shared by the CPU suite (attention_test.cpp, against a naive reference)
// and the CUDA suite (cuda_attention_test.cpp, against the CPU): sizes, layout and mask of one
// case, its random inputs, and the network of one Attention layer over them.
#pragma once

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "ember/engine/network.h"
#include "test_util.h"

namespace ember::engine::test {

/// One attention problem: logical sizes, layout and mask.
struct AttentionCase {
  int64_t B = 2, H = 3, Hkv = 3, L = 5, S = 7, E = 8, Ev = 8;
  bool seq_major = false;
  int64_t seq_major_operands = 0;  ///< AttentionParams' per-operand bits (with seq_major false).
  bool causal = false;
  std::vector<int64_t> mask_dims;         ///< Empty: no mask.
  DataType mask_dtype = DataType::kBool;  ///< Otherwise additive, in the inputs' dtype.
  double scale = 0.35;
};

/// Whether operand `bit` (AttentionParams::kQ, kK, kV or kOut) is seq-major in the case.
inline bool seq_major_at(const AttentionCase& c, int64_t bit) {
  return c.seq_major || (c.seq_major_operands & bit) != 0;
}

/// Dims of operand `bit` [B, heads, seq, features] in the case's layout.
inline std::vector<int64_t> operand_dims(const AttentionCase& c, int64_t bit, int64_t heads,
                                         int64_t seq, int64_t features) {
  return seq_major_at(c, bit) ? std::vector<int64_t>{c.B, seq, heads, features}
                              : std::vector<int64_t>{c.B, heads, seq, features};
}

/// Random q and k in [-2, 2), v in [-1, 1), and the mask when the case has one (bool: about
/// 2/3 true; additive: [-3, 1)), in dtype t.
inline std::vector<TestTensor> attention_inputs(const AttentionCase& c, DataType t,
                                                uint32_t seed) {
  std::vector<TestTensor> in = {
      TestTensor::random(t, operand_dims(c, AttentionParams::kQ, c.H, c.L, c.E), seed, -2.0f,
                         2.0f),
      TestTensor::random(t, operand_dims(c, AttentionParams::kK, c.Hkv, c.S, c.E), seed + 1,
                         -2.0f, 2.0f),
      TestTensor::random(t, operand_dims(c, AttentionParams::kV, c.Hkv, c.S, c.Ev), seed + 2)};
  if (c.mask_dims.empty()) return in;
  if (c.mask_dtype == DataType::kBool) {
    std::vector<int64_t> flags =
        TestTensor::random(DataType::kI32, c.mask_dims, seed + 3, 0.0f, 3.0f).to_ints();
    for (auto& f : flags) f = f != 0;
    in.push_back(TestTensor::ints(DataType::kBool, c.mask_dims, flags));
  } else {
    in.push_back(TestTensor::random(t, c.mask_dims, seed + 3, -3.0f, 1.0f));
  }
  return in;
}

/// One Attention layer "attn" (output "out") over inputs named q, k, v [, mask] shaped like
/// `inputs`.
inline Network attention_network(const AttentionCase& c, const std::vector<TestTensor>& inputs) {
  Network net;
  const char* names[] = {"q", "k", "v", "mask"};
  std::vector<Tensor*> ins;
  for (size_t i = 0; i < inputs.size(); ++i) {
    ins.push_back(net.add_input(names[i], inputs[i].dtype,
                                Shape(inputs[i].dims.begin(), inputs[i].dims.end())));
  }
  AttentionParams p;
  p.scale = c.scale;
  p.causal = c.causal;
  p.seq_major = c.seq_major;
  p.seq_major_operands = c.seq_major_operands;
  net.mark_output(net.add_layer(p, ins, "attn")->output(), "out");
  return net;
}

/// Two Attention layers over q [1, heads, L, E], k and v [1, heads, S, E]: output "a" with a bool
/// mask [L, S], output "b" with the same mask as 0 / -inf. Query 0 has every key masked out;
/// every other query keeps key S - 1 and the keys j with i + j even.
inline std::pair<Network, std::vector<TestTensor>> fully_masked_case(DataType t, int64_t heads,
                                                                     int64_t L, int64_t S,
                                                                     int64_t E) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<int64_t> keep(static_cast<size_t>(L * S));
  std::vector<float> add(keep.size());
  for (int64_t i = 0; i < L; ++i) {
    for (int64_t j = 0; j < S; ++j) {
      const bool kept = i > 0 && (j == S - 1 || (i + j) % 2 == 0);
      keep[i * S + j] = kept;
      add[i * S + j] = kept ? 0.0f : -inf;
    }
  }
  std::vector<TestTensor> in = {TestTensor::random(t, {1, heads, L, E}, 9),
                                TestTensor::random(t, {1, heads, S, E}, 10),
                                TestTensor::random(t, {1, heads, S, E}, 11),
                                TestTensor::ints(DataType::kBool, {L, S}, keep),
                                TestTensor::floats(t, {L, S}, add)};
  Network net;
  Tensor* q = net.add_input("q", t, {1, heads, L, E});
  Tensor* k = net.add_input("k", t, {1, heads, S, E});
  Tensor* v = net.add_input("v", t, {1, heads, S, E});
  Tensor* mb = net.add_input("mb", DataType::kBool, {L, S});
  Tensor* mf = net.add_input("mf", t, {L, S});
  net.mark_output(net.add_layer(AttentionParams{}, {q, k, v, mb}, "bool")->output(), "a");
  net.mark_output(net.add_layer(AttentionParams{}, {q, k, v, mf}, "float")->output(), "b");
  return {std::move(net), std::move(in)};
}

}  // namespace ember::engine::test
