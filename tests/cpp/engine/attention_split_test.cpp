// The CUDA back end's choice between its two f16/bf16 flash-attention kernels
// (backends/cuda/attention_split.h): the grid-size rule and the EMBER_ATTENTION_SPLIT switch.
// Host-only, so it runs without a GPU; the kernels on both sides of the rule are checked against
// the CPU reference in cuda_attention_test.cpp.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "backends/cuda/attention_split.h"

namespace ember::engine {
namespace {

using cuda::AttentionSplit;
using cuda::attention_split_keys;
using cuda::parse_attention_split;

/// Blocks of the 64-query kernel for batch b, h heads and l queries.
int64_t blocks64(int64_t b, int64_t h, int64_t l) { return b * h * ((l + 63) / 64); }

TEST(AttentionSplitRule, SplitsOnlyGridsThatLeaveSmsIdle) {
  const int h100 = 132;
  // BERT-base / GPT-2 at batch 1, seq 128: 24 blocks on 132 SMs.
  EXPECT_TRUE(attention_split_keys(blocks64(1, 12, 128), h100, AttentionSplit::kAuto));
  // Decoding (one query): one block per head.
  EXPECT_TRUE(attention_split_keys(blocks64(1, 12, 1), h100, AttentionSplit::kAuto));
  // Batch 32 at seq 128: 768 blocks fill the GPU as they are.
  EXPECT_FALSE(attention_split_keys(blocks64(32, 12, 128), h100, AttentionSplit::kAuto));
  // The boundary: fewer blocks than SMs split, as many do not.
  EXPECT_TRUE(attention_split_keys(131, h100, AttentionSplit::kAuto));
  EXPECT_FALSE(attention_split_keys(132, h100, AttentionSplit::kAuto));
  // A smaller GPU moves the boundary: 96 blocks fill an 80-SM part.
  EXPECT_FALSE(attention_split_keys(blocks64(2, 12, 200), 80, AttentionSplit::kAuto));
  EXPECT_TRUE(attention_split_keys(blocks64(2, 12, 200), h100, AttentionSplit::kAuto));
}

TEST(AttentionSplitRule, SwitchForcesEitherKernel) {
  EXPECT_TRUE(attention_split_keys(blocks64(32, 12, 128), 132, AttentionSplit::kOn));
  EXPECT_FALSE(attention_split_keys(blocks64(1, 12, 128), 132, AttentionSplit::kOff));
}

TEST(AttentionSplitRule, ParsesTheEnvironmentSetting) {
  EXPECT_EQ(parse_attention_split(nullptr), AttentionSplit::kAuto);
  EXPECT_EQ(parse_attention_split(""), AttentionSplit::kAuto);
  EXPECT_EQ(parse_attention_split("0"), AttentionSplit::kOff);
  EXPECT_EQ(parse_attention_split("1"), AttentionSplit::kOn);
  for (const char* bad : {"yes", "2", "on", " 1"}) {
    try {
      parse_attention_split(bad);
      ADD_FAILURE() << "EMBER_ATTENTION_SPLIT=" << bad << " was accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::string("EMBER_ATTENTION_SPLIT=") + bad), std::string::npos) << msg;
      EXPECT_NE(msg.find("use 1"), std::string::npos) << msg;
    }
  }
}

}  // namespace
}  // namespace ember::engine
