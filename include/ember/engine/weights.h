// Constant data for Constant layers: typed, shaped, and shared rather than copied.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ember/engine/types.h"

namespace ember::engine {

/// An immutable constant tensor. The bytes are shared: copying Weights never copies data, and
/// `borrow` lets a caller (the PyTorch bridge) hand over memory it keeps alive through `owner`.
class Weights {
 public:
  Weights() = default;
  /// Copies `numel(dims) * dtype_size(dtype)` bytes from `data`.
  static Weights copy(DataType dtype, std::vector<int64_t> dims, const void* data);
  /// Uses `data` in place; `owner` keeps it alive as long as any copy of these Weights lives.
  static Weights borrow(DataType dtype, std::vector<int64_t> dims, const void* data,
                        std::shared_ptr<const void> owner);
  /// Builds weights from host values of type T (float, int32_t, int64_t, uint8_t, ...).
  /// T must match dtype's storage (uint16_t for f16/bf16 bit patterns, uint8_t for bool).
  template <typename T>
  static Weights from_vector(DataType dtype, std::vector<int64_t> dims, const std::vector<T>& v) {
    check_vector(dtype, dims, sizeof(T), v.size());
    return copy(dtype, std::move(dims), v.data());
  }
  /// A zero-filled tensor.
  static Weights zeros(DataType dtype, std::vector<int64_t> dims);

  DataType dtype() const { return dtype_; }
  const std::vector<int64_t>& dims() const { return dims_; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  const void* data() const { return data_.get(); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data_.get());
  }

 private:
  static void check_vector(DataType dtype, const std::vector<int64_t>& dims, size_t elem_size,
                           size_t count);
  DataType dtype_ = DataType::kF32;
  std::vector<int64_t> dims_;
  std::shared_ptr<const void> data_;
};

}  // namespace ember::engine
