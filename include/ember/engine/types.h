// Basic engine vocabulary: data types and the error type every engine API throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ember::engine {

/// The element type of a tensor. Precision changes only through Cast layers, and into or out of
/// the quantized types through Quantize and Dequantize layers. kF8E4M3 is FP8 E4M3 "fn" (no
/// infinities, max 448, as torch.float8_e4m3fn); it is appended last so that serialized values
/// of the older types keep their numbers.
enum class DataType : uint8_t { kF32, kF16, kBF16, kI8, kU8, kI32, kI64, kBool, kF8E4M3 };

/// Number of DataType enumerators (for validation of serialized values).
inline constexpr int kNumDataTypes = 9;

/// Size of one element in bytes.
size_t dtype_size(DataType t);
/// Short lower-case name ("f32", "bf16", "bool").
const char* dtype_name(DataType t);
/// Parses a name produced by dtype_name; nullopt when unknown.
std::optional<DataType> dtype_from_name(std::string_view name);
/// True for f32, f16 and bf16.
bool dtype_is_float(DataType t);
/// True for i8, u8, i32 and i64.
bool dtype_is_integer(DataType t);
/// True for the types a Quantize layer produces: i8, u8 and f8e4m3.
bool dtype_is_quantized(DataType t);

/// The one exception type of the engine. Messages say what was wrong and where.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ember::engine
