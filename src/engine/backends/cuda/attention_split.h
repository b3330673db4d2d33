// Which f16/bf16 flash-attention kernel of the CUDA back end runs (attention.cu): the one that
// gives each warp of a block its own 16 queries (64 per block), or the key-split one that gives
// the four warps of a block the same 16 queries and a quarter of every key tile each (4x the
// blocks, for grids that would leave SMs idle). Host-only and free of CUDA headers, so the rule
// is unit-tested on machines without a GPU (tests/cpp/engine/attention_test.cpp).
#pragma once

#include <cstdint>
#include <string>

#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// The EMBER_ATTENTION_SPLIT setting: unset (the grid-size rule), 0 (never) or 1 (always).
enum class AttentionSplit { kAuto, kOff, kOn };

/// Parses EMBER_ATTENTION_SPLIT (nullptr or "" when unset). Anything but 0 or 1 is an error: a
/// mistyped switch silently timing the wrong kernel would make an A/B meaningless.
inline AttentionSplit parse_attention_split(const char* value) {
  if (value == nullptr || value[0] == '\0') return AttentionSplit::kAuto;
  const std::string v(value);
  if (v == "0") return AttentionSplit::kOff;
  if (v == "1") return AttentionSplit::kOn;
  throw Error("EMBER_ATTENTION_SPLIT=" + v +
              " is not a valid setting: use 1 (always the key-split attention kernel), 0 (never) "
              "or leave it unset (chosen by grid size)");
}

/// True when the key-split kernel runs for a problem whose 64-query kernel would launch
/// `blocks64` blocks (B * H * ceil(L / 64)) on a GPU with `sms` SMs: when those blocks leave
/// SMs idle (fewer blocks than SMs), or when the setting forces it either way.
inline bool attention_split_keys(int64_t blocks64, int sms, AttentionSplit setting) {
  if (setting == AttentionSplit::kOn) return true;
  if (setting == AttentionSplit::kOff) return false;
  return blocks64 < static_cast<int64_t>(sms);
}

}  // namespace ember::engine::cuda
