// The serialized state of a torch.classes.ember.Engine, torch-free so it compiles fast:
//
//   [0] format tag "ember-engine-v1"
//   [1] the plan, base64 (RFC 4648, with padding)
//   [2] metadata JSON: {"backend": "cpu", "cuda_graphs": true (optional, default true),
//                       "device_index": 0 (optional; cuda: the GPU the engine is bound to),
//                       "inputs":  [{"name": "input_0", "torch_dtype": "f64",
//                                    "engine_dtype": "f32", "shape": "[s0, 3]"}, ...],
//                       "outputs": [...same keys...]}
//
// torch_dtype uses the compiler's ScalarType names (f32 f16 bf16 i8 u8 i32 i64 bool f64 i16);
// engine_dtype the engine's DataType names. Loading validates every part and that the metadata
// agrees with the plan; errors say which part is wrong and what to do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ember/engine/runtime.h"

namespace ember::bridge {

/// The format tag of state element 0. A change of layout means a new tag.
inline constexpr const char* kEngineStateTag = "ember-engine-v1";
/// Number of strings in a state list.
inline constexpr size_t kEngineStateSize = 3;

/// One engine input or output as PyTorch sees it.
struct BridgeIO {
  std::string name;          ///< Engine tensor name ("input_0").
  std::string torch_dtype;   ///< Compiler ScalarType name on the PyTorch side ("f64").
  engine::DataType engine_dtype = engine::DataType::kF32;  ///< dtype inside the engine.
  std::string shape;         ///< Symbolic shape text ("[s0, 3]"); the plan's when not given.
};

/// The metadata element of the state.
struct EngineMetadata {
  std::string backend;
  bool cuda_graphs = true;  ///< Optional key "cuda_graphs" (default true): replay CUDA graphs.
  /// Optional key "device_index": the GPU a cuda engine is bound to (-1, or no key: the GPU of
  /// the inputs of its first run; from then on it is bound to that one).
  int64_t device_index = -1;
  std::vector<BridgeIO> inputs;
  std::vector<BridgeIO> outputs;
};

/// A validated state: the engine, its metadata and the exact strings it came from.
struct LoadedEngineState {
  std::shared_ptr<const engine::Engine> engine;
  EngineMetadata metadata;
  std::vector<std::string> state;
};

/// Standard base64 with '=' padding.
std::string base64_encode(const void* data, size_t size);
/// Decodes standard base64 (padding required, no whitespace). Throws std::runtime_error naming
/// the offending character position.
std::vector<uint8_t> base64_decode(std::string_view text);

/// Parses the metadata JSON. Unknown keys are ignored (the compiler may add "value",
/// "fx_name"); missing or mistyped keys and unknown dtype names are errors.
EngineMetadata metadata_from_json(std::string_view json);
/// The JSON form metadata_from_json reads.
std::string metadata_to_json(const EngineMetadata& metadata);

/// Checks that `metadata` describes `engine`: same back end, same input and output names in
/// order, same engine dtypes, same ranks; fills in missing shapes from the plan.
void metadata_check(EngineMetadata& metadata, const engine::Engine& engine);

/// Validates a state list (tag, base64, JSON, agreement) and deserializes the plan, whose device
/// memory (cuda plans) comes from `allocator` (cudaMalloc when null). Throws
/// std::runtime_error ("ember.Engine state: ...") on any problem.
LoadedEngineState engine_state_load(std::vector<std::string> state,
                                    std::shared_ptr<engine::DeviceAllocator> allocator = nullptr);

/// The same from the plan's bytes and the metadata JSON (what the compiler has in hand): no
/// base64 on the way in; the state list (with the plan in base64, for pickling) is made here.
LoadedEngineState engine_plan_load(const uint8_t* plan, size_t size, std::string metadata_json,
                                   std::shared_ptr<engine::DeviceAllocator> allocator = nullptr);

/// True for the compiler's ScalarType names ("f32" ... "f64", "i16").
bool is_torch_dtype_name(std::string_view name);

}  // namespace ember::bridge
