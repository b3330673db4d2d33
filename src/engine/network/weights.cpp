#include "ember/engine/weights.h"

#include <cstring>

#include "ember/engine/dim.h"

namespace ember::engine {
namespace {

int64_t checked_numel(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) throw Error("Weights: negative dimension in " + dims_to_string(dims));
    if (d != 0 && n > (int64_t{1} << 40) / d) {
      throw Error("Weights: " + dims_to_string(dims) + " is too large");
    }
    n *= d;
  }
  return n;
}

}  // namespace

Weights Weights::copy(DataType dtype, std::vector<int64_t> dims, const void* data) {
  Weights w;
  w.dtype_ = dtype;
  const size_t bytes = static_cast<size_t>(checked_numel(dims)) * dtype_size(dtype);
  w.dims_ = std::move(dims);
  std::shared_ptr<uint8_t[]> buf(new uint8_t[bytes == 0 ? 1 : bytes]);
  if (bytes != 0) {
    if (data == nullptr) throw Error("Weights::copy: null data for non-empty weights");
    std::memcpy(buf.get(), data, bytes);
  }
  w.data_ = std::shared_ptr<const void>(buf, buf.get());
  return w;
}

Weights Weights::borrow(DataType dtype, std::vector<int64_t> dims, const void* data,
                        std::shared_ptr<const void> owner) {
  Weights w;
  w.dtype_ = dtype;
  checked_numel(dims);
  w.dims_ = std::move(dims);
  w.data_ = std::shared_ptr<const void>(std::move(owner), data);
  return w;
}

Weights Weights::zeros(DataType dtype, std::vector<int64_t> dims) {
  const size_t bytes = static_cast<size_t>(checked_numel(dims)) * dtype_size(dtype);
  std::vector<uint8_t> z(bytes);
  return copy(dtype, std::move(dims), z.data());
}

int64_t Weights::numel() const { return dims_numel(dims_); }

void Weights::check_vector(DataType dtype, const std::vector<int64_t>& dims, size_t elem_size,
                           size_t count) {
  if (elem_size != dtype_size(dtype)) {
    throw Error(std::string("Weights::from_vector: element size ") + std::to_string(elem_size) +
                " does not match dtype " + dtype_name(dtype));
  }
  if (static_cast<int64_t>(count) != checked_numel(dims)) {
    throw Error("Weights::from_vector: " + std::to_string(count) + " values for shape " +
                dims_to_string(dims));
  }
}

}  // namespace ember::engine
