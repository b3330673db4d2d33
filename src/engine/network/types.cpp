#include "ember/engine/types.h"

namespace ember::engine {

size_t dtype_size(DataType t) {
  switch (t) {
    case DataType::kF32: return 4;
    case DataType::kF16: return 2;
    case DataType::kBF16: return 2;
    case DataType::kI8: return 1;
    case DataType::kU8: return 1;
    case DataType::kI32: return 4;
    case DataType::kI64: return 8;
    case DataType::kBool: return 1;
    case DataType::kF8E4M3: return 1;
  }
  throw Error("dtype_size: invalid DataType " + std::to_string(static_cast<int>(t)));
}

const char* dtype_name(DataType t) {
  switch (t) {
    case DataType::kF32: return "f32";
    case DataType::kF16: return "f16";
    case DataType::kBF16: return "bf16";
    case DataType::kI8: return "i8";
    case DataType::kU8: return "u8";
    case DataType::kI32: return "i32";
    case DataType::kI64: return "i64";
    case DataType::kBool: return "bool";
    case DataType::kF8E4M3: return "f8e4m3";
  }
  return "invalid";
}

std::optional<DataType> dtype_from_name(std::string_view name) {
  for (int i = 0; i < kNumDataTypes; ++i) {
    const auto t = static_cast<DataType>(i);
    if (name == dtype_name(t)) return t;
  }
  return std::nullopt;
}

bool dtype_is_float(DataType t) {
  return t == DataType::kF32 || t == DataType::kF16 || t == DataType::kBF16;
}

bool dtype_is_integer(DataType t) {
  return t == DataType::kI8 || t == DataType::kU8 || t == DataType::kI32 || t == DataType::kI64;
}

bool dtype_is_quantized(DataType t) {
  return t == DataType::kI8 || t == DataType::kU8 || t == DataType::kF8E4M3;
}

}  // namespace ember::engine
