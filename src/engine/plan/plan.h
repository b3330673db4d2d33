// The plan: what the builder hands the runtime, in memory and as bytes (private to the engine).
//
// Byte layout (little-endian), version 8 (version 1 had no Convolution/MatrixMultiply epilogue,
// version 2 no timing section, version 3 no channels_last flag on Convolution and Pooling,
// version 4 no build target, version 5 no Plugin, Quantize, Dequantize or
// QuantizedMatrixMultiply layer kind and no f8e4m3 dtype, version 6 no QuantizedConvolution and
// only the `out` field of QuantizedMatrixMultiply (no epilogue or requantization fields, read as
// their defaults), version 7 no FusedPointwise; versions 5 to 8 are read):
//   header   magic "EMBRPLAN" (8) | format version u32 | flags u32 (0) | payload size u64 |
//            checksum u64 | weights offset u64 | weights size u64                   (48 bytes)
//   payload  back end name | arena size i64 | build target | profiles | inputs | layers | outputs |
//            timing
//   padding  zeros up to the weights offset (the payload end rounded up to 256)
//   weights  constant bytes, each constant aligned to 256 bytes from the start of the file, so a
//            plan loaded at an aligned address can be uploaded to a device without repacking;
//            the file ends with the weight section.
// The checksum covers everything after the header (payload, padding, weights): FNV-1a's step
// over 64-bit words in four lanes from version 13, byte-wise FNV-1a 64 before (plan_checksum in
// serialize.h).
// Payload encodings: strings u32 length + bytes (at most 64 KiB); lists u32 count + entries;
// enums and bools one byte; shapes a list of DimExpr::to_string texts.
//   target    string: "sm_<major><minor>" of the GPU a cuda plan was built (and timed) on, or ""
//             (cpu plans, and cuda plans built without a GPU)
//   profiles  list of profiles, each a list of (symbol, min i64, opt i64, max i64), sorted by symbol
//   tensor    dtype u8 | shape | arena offset i64 (-1: not in the arena)
//   inputs    list of (name, tensor)
//   layers    list of (kind u8 | name | implementation | input tensor ids i32 (-1: omitted
//             optional input) | params through their fields() lists | list of output tensors)
//   outputs   list of (tensor id i32, name)
//   timing    the timing-cache entries of the plan's problems (write_timing_entries in
//             serialize.h): list of (device | problem | choice: u32 length + bytes); empty when
//             the build did not time (no GPU, "cpu" back end)
// A Plugin layer's params are its creator name and version (strings) and its attributes (u32
// length + bytes); reading the layer creates the plugin through the process's plugin registry, so
// a plan naming a plugin the process has not registered fails there, naming the plugin.
// Tensor ids count in canonical order: inputs, then layer outputs in layer order (the order
// Network::clone() produces, which PlanModel's placements follow). A Weights field is stored as
// offset u64 into the weight section | byte size u64 | dtype u8 | dims (list of i64).
// Every field is validated on read: sizes against the remaining bytes, enums against their
// counts, tensor ids against the table, and the network is rebuilt through Network::add_layer,
// so every layer's parameters pass the same checks as at build time; the rebuilt outputs must
// match the recorded dtypes and shapes, and arena slots must hold their tensors at the largest
// size any profile allows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"
#include "ember/engine/timing_cache.h"

namespace ember::engine {

inline constexpr char kPlanMagic[8] = {'E', 'M', 'B', 'R', 'P', 'L', 'A', 'N'};
inline constexpr uint32_t kPlanFormatVersion = 18;  // 2: fused epilogues, 3: timing section,
                                                   // 4: channels_last, 5: build target,
                                                   // 6: Plugin, Quantize/Dequantize, f8e4m3,
                                                   // 7: QuantizedConvolution, quantized
                                                   //    epilogues and requantization,
                                                   // 8: FusedPointwise (program + kernel),
                                                   // 9: QuantizedConvolution channels_last,
                                                   // 10: FusedPointwise row reductions
                                                   //     and input views,
                                                   // 11: Attention seq_major_operands,
                                                   //     FusedPointwise isinf/isnan steps,
                                                   // 12: Attention views and out_dims,
                                                   // 13: the word-wise checksum,
                                                   // 14: requantize_to (FP8 requantization),
                                                   // 15: Normalization's quantized output,
                                                   // 16: Padding's input_permutation,
                                                   // 17: Padding's input_shape,
                                                   // 18: FusedPointwise slices
/// The oldest version this build still reads: versions 6 and 7 added layer kinds (Plugin,
/// Quantize, Dequantize, QuantizedMatrixMultiply; QuantizedConvolution) and the f8e4m3 dtype,
/// and 7 the epilogue fields of QuantizedMatrixMultiply (read only from version 7 on), so version
/// 5 and 6 plans read with the same code; 8 added the FusedPointwise kind only; 9 the
/// channels_last field of QuantizedConvolution (read only from version 9 on; NCHW before); 10
/// the kReduce steps of FusedPointwise programs (refused in older plans) and its `views` field
/// (read only from version 10 on; no views before); 11 Attention's seq_major_operands (read
/// only from version 11 on; 0 before); 12 Attention's views and out_dims (read only from
/// version 12 on; none before); 13 the checksum only; 14 requantize_to of the quantized
/// products (read only from version 14 on; i8 before); 15 Normalization's quantize fields
/// (read only from version 15 on; no quantized output before); 16 Padding's input_permutation
/// (read only from version 16 on; none before); 17 Padding's input_shape (read only from version
/// 17 on; none before); 18 FusedPointwise's slices (read only from version 18 on; none before).
inline constexpr uint32_t kPlanMinReadableVersion = 5;
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
  /// "sm_90": the compute capability of the GPU a cuda plan was built on; "" when unknown (cpu
  /// plans, cuda plans built without a GPU). A GPU of a lower capability refuses the plan.
  std::string target;
  std::vector<TimingEntry> timing;            ///< Tactic choices for the plan's problems.
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
