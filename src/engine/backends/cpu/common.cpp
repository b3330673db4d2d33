// Element access and threading helpers shared by the CPU kernels.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "backends/cpu/kernels.h"

#ifdef EMBER_WITH_OPENMP
#include <omp.h>
#endif

namespace ember::engine::cpu {

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

int64_t load_int(DataType t, const void* p, int64_t i) {
  switch (t) {
    case DataType::kF32: return static_cast<int64_t>(static_cast<const float*>(p)[i]);
    case DataType::kF16: return static_cast<int64_t>(f16_to_f32(static_cast<const uint16_t*>(p)[i]));
    case DataType::kBF16:
      return static_cast<int64_t>(bf16_to_f32(static_cast<const uint16_t*>(p)[i]));
    case DataType::kI8: return static_cast<const int8_t*>(p)[i];
    case DataType::kU8: return static_cast<const uint8_t*>(p)[i];
    case DataType::kI32: return static_cast<const int32_t*>(p)[i];
    case DataType::kI64: return static_cast<const int64_t*>(p)[i];
    case DataType::kBool: return static_cast<const uint8_t*>(p)[i] != 0;
    case DataType::kF8E4M3:
      return static_cast<int64_t>(f8e4m3_to_f32(static_cast<const uint8_t*>(p)[i]));
  }
  return 0;
}

void store_int(DataType t, void* p, int64_t i, int64_t v) {
  switch (t) {
    case DataType::kF32: static_cast<float*>(p)[i] = static_cast<float>(v); return;
    case DataType::kF16: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); return;
    case DataType::kBF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); return;
    case DataType::kI8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); return;
    case DataType::kU8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); return;
    case DataType::kI32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); return;
    case DataType::kI64: static_cast<int64_t*>(p)[i] = v; return;
    case DataType::kBool: static_cast<uint8_t*>(p)[i] = v != 0; return;
    case DataType::kF8E4M3:
      static_cast<uint8_t*>(p)[i] = f32_to_f8e4m3(static_cast<float>(v));
      return;
  }
}

std::vector<float> to_float_vector(const HostTensor& t) {
  const int64_t n = t.numel();
  std::vector<float> v(static_cast<size_t>(n));
  if (t.dtype == DataType::kF32) {
    std::copy_n(t.as<const float>(), n, v.data());
    return v;
  }
  for (int64_t i = 0; i < n; ++i) v[i] = load_float(t.dtype, t.data, i);
  return v;
}

void from_float_vector(const std::vector<float>& v, HostTensor& t) {
  const int64_t n = std::min<int64_t>(t.numel(), static_cast<int64_t>(v.size()));
  if (t.dtype == DataType::kF32) {
    std::copy_n(v.data(), n, t.as<float>());
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_float(t.dtype, t.data, i, v[i]);
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (int64_t i = static_cast<int64_t>(dims.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * dims[i + 1];
  return s;
}

std::vector<int64_t> broadcast_strides(const std::vector<int64_t>& in_dims,
                                       const std::vector<int64_t>& out_dims) {
  std::vector<int64_t> s(out_dims.size(), 0);
  const std::vector<int64_t> in_s = contiguous_strides(in_dims);
  const size_t off = out_dims.size() - in_dims.size();
  for (size_t i = 0; i < in_dims.size(); ++i) {
    s[off + i] = (in_dims[i] == 1 && out_dims[off + i] != 1) ? 0 : in_s[i];
  }
  return s;
}

int num_threads() {
  static const int from_env = [] {
    const char* env = std::getenv("EMBER_CPU_THREADS");
    const int v = env != nullptr ? std::atoi(env) : 0;
    return v > 0 ? v : 0;
  }();
  if (from_env > 0) return from_env;
#ifdef EMBER_WITH_OPENMP
  return std::max(1, omp_get_max_threads());
#else
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
#endif
}

}  // namespace ember::engine::cpu
