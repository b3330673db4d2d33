// The plan: what the builder hands the runtime, in memory and as bytes (private to the engine).
//
// Byte layout (little-endian), version 1:
//   header   magic "EMBRPLAN" (8) | format version u32 | flags u32 | payload size u64 |
//            checksum u64 (FNV-1a 64 over the payload) | weights offset u64 | weights size u64
//   payload  backend name, profiles, symbols, tensors (name, dtype, shape exprs, role, arena offset,
//            weights range), layers (kind, name, impl, input/output tensor ids, params through
//            their fields() lists), network inputs/outputs, arena size
//   weights  constant bytes, each constant aligned to 256 bytes from the start of the file, so a
//            plan loaded at an aligned address can be uploaded to a device without repacking.
// Every field is validated on read: sizes against the remaining bytes, enums against their
// counts, tensor ids against the table, and the network is rebuilt through Network::add_layer,
// so every layer's parameters pass the same checks as at build time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"

namespace ember::engine {

inline constexpr char kPlanMagic[8] = {'E', 'M', 'B', 'R', 'P', 'L', 'A', 'N'};
inline constexpr uint32_t kPlanFormatVersion = 1;
inline constexpr size_t kPlanWeightAlignment = 256;

/// Where a tensor lives at run time.
struct TensorPlacement {
  int64_t arena_offset = -1;  ///< Byte offset in the activation arena; -1 for I/O and constants.
};

/// A built engine in memory.
struct PlanModel {
  std::string backend;                        ///< "cpu" or "cuda".
  Network network;                            ///< The optimized network.
  std::vector<std::string> impls;             ///< Chosen implementation per layer (layers() order).
  std::vector<OptimizationProfile> profiles;  ///< Resolved profiles (symbol ranges).
  std::vector<TensorPlacement> placements;    ///< Per tensor (tensors() order).
  int64_t arena_bytes = 0;                    ///< Size of the activation arena.
};

/// Options for plan_read.
struct PlanReadOptions {
  bool verify_checksum = true;  ///< The fuzzer turns this off to reach the field validation.
};

/// Serializes a plan.
std::vector<uint8_t> plan_write(const PlanModel& plan);
/// Parses and validates a plan. Throws Error("plan: ...") describing the first problem found;
/// never reads outside [data, data + size).
PlanModel plan_read(const void* data, size_t size, const PlanReadOptions& options = {});

}  // namespace ember::engine
