// CPU reference kernels (private to the engine).
//
// One `run(const XParams&, const KernelArgs&)` overload per layer kind, defined in the file of
// its family (src/engine/backends/cpu/<family>.cpp). `run_layer` dispatches with std::visit, so a
// kind without a kernel is a compile error.
//
// Contract: a kernel gets tensors whose dims are the layer's inferred shapes evaluated for the
// current input shapes, and parameters that passed the layer's infer(). Kernels never read or
// write out of bounds for any such input (the plan fuzzer relies on it); data-dependent errors
// (an index out of range, integer division by zero) throw Error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ember/engine/half.h"
#include "ember/engine/layers.h"
#include "ember/engine/types.h"

namespace ember::engine::cpu {

/// A dense row-major tensor in host memory.
struct HostTensor {
  DataType dtype = DataType::kF32;
  std::vector<int64_t> dims;
  void* data = nullptr;
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

/// Per-context state kernels may keep between calls of the same layer (prepared library
/// primitives, weights in a library's layout), keyed by the layer and a kernel-chosen text
/// (shapes). Owned by the CPU execution context; never shared between threads.
struct KernelCache {
  struct Entry {
    virtual ~Entry() = default;
  };
  std::map<std::pair<const void*, std::string>, std::unique_ptr<Entry>> entries;
  /// Layers this context already reported as run by a reference kernel instead of the library
  /// (dnnl_refused), so each is reported once.
  std::set<const void*> fallback_reported;
  /// Reports not yet taken by ExecutionContext::take_warnings.
  std::vector<std::string> warnings;
};

/// Inputs (nullptr for absent optional ones) and outputs of one kernel call.
struct KernelArgs {
  std::vector<const HostTensor*> inputs;
  std::vector<HostTensor*> outputs;
  const HostTensor& in(size_t i) const { return *inputs.at(i); }
  bool has(size_t i) const { return i < inputs.size() && inputs[i] != nullptr; }
  HostTensor& out(size_t i = 0) const { return *outputs.at(i); }
  /// Values of the network's symbols for the current input shapes, for parameters that are
  /// DimExprs a kernel must evaluate (a Slice start such as `n - 3`). nullptr when unknown.
  const SymbolBindings* symbols = nullptr;
  /// The layer being run and its context's cache (both nullptr outside a runtime context:
  /// constant folding, the test oracle). Kernels that cache must work without them.
  const void* layer = nullptr;
  KernelCache* cache = nullptr;
};

// ---- element access shared by kernels ----

/// Reads element i of a float-typed buffer as float.
inline float load_float(DataType t, const void* p, int64_t i) {
  switch (t) {
    case DataType::kF32: return static_cast<const float*>(p)[i];
    case DataType::kF16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DataType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DataType::kI8: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
    case DataType::kU8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    case DataType::kI32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case DataType::kI64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
    case DataType::kBool: return static_cast<const uint8_t*>(p)[i] ? 1.0f : 0.0f;
    case DataType::kF8E4M3: return f8e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
  }
  return 0.0f;
}

/// Writes element i of a float-typed buffer, rounding to its precision.
inline void store_float(DataType t, void* p, int64_t i, float v) {
  switch (t) {
    case DataType::kF32: static_cast<float*>(p)[i] = v; return;
    case DataType::kF16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); return;
    case DataType::kBF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); return;
    case DataType::kI8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); return;
    case DataType::kU8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); return;
    case DataType::kI32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); return;
    case DataType::kI64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); return;
    case DataType::kBool: static_cast<uint8_t*>(p)[i] = v != 0.0f; return;
    case DataType::kF8E4M3: static_cast<uint8_t*>(p)[i] = f32_to_f8e4m3(v); return;
  }
}

/// Reads element i of an integer or bool buffer as int64 (floats truncate toward zero).
int64_t load_int(DataType t, const void* p, int64_t i);
/// Writes element i of an integer or bool buffer (wrapping like a C cast).
void store_int(DataType t, void* p, int64_t i, int64_t v);

/// Converts a whole buffer to f32 (any dtype in).
std::vector<float> to_float_vector(const HostTensor& t);
/// Stores f32 values into a float-typed (or any) tensor with rounding.
void from_float_vector(const std::vector<float>& v, HostTensor& t);

/// Row-major strides of dims.
std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& dims);
/// Strides for reading `in_dims` broadcast to `out_dims` (numpy, right-aligned): 0 on
/// broadcast dims. out_dims.size() >= in_dims.size().
std::vector<int64_t> broadcast_strides(const std::vector<int64_t>& in_dims,
                                       const std::vector<int64_t>& out_dims);

/// Runs fn(begin, end) over [0, n) split across the worker threads when n*cost_per_item is
/// large enough to pay for them (at most 2 workers on CI machines).
template <typename Fn>
void parallel_for(int64_t n, int64_t cost_per_item, Fn&& fn);

// ---- the kernels ----
// data_movement.cpp
void run(const ConstantParams& p, const KernelArgs& a);
void run(const ShuffleParams& p, const KernelArgs& a);
void run(const ConcatenationParams& p, const KernelArgs& a);
void run(const SliceParams& p, const KernelArgs& a);
void run(const GatherParams& p, const KernelArgs& a);
void run(const ScatterParams& p, const KernelArgs& a);
void run(const PaddingParams& p, const KernelArgs& a);
void run(const ResizeParams& p, const KernelArgs& a);
void run(const FillParams& p, const KernelArgs& a);
void run(const ShapeParams& p, const KernelArgs& a);
void run(const IdentityParams& p, const KernelArgs& a);
// pointwise.cpp
void run(const ActivationParams& p, const KernelArgs& a);
void run(const ElementWiseParams& p, const KernelArgs& a);
void run(const UnaryParams& p, const KernelArgs& a);
void run(const SelectParams& p, const KernelArgs& a);
void run(const CastParams& p, const KernelArgs& a);
// linear.cpp
void run(const ConvolutionParams& p, const KernelArgs& a);
void run(const DeconvolutionParams& p, const KernelArgs& a);
void run(const PoolingParams& p, const KernelArgs& a);
void run(const MatrixMultiplyParams& p, const KernelArgs& a);
// reduction.cpp
void run(const ReduceParams& p, const KernelArgs& a);
void run(const TopKParams& p, const KernelArgs& a);
void run(const SoftMaxParams& p, const KernelArgs& a);
void run(const NormalizationParams& p, const KernelArgs& a);
void run(const CumulativeParams& p, const KernelArgs& a);
// attention.cpp
void run(const AttentionParams& p, const KernelArgs& a);
// plugin.cpp
void run(const PluginParams& p, const KernelArgs& a);
// quantize.cpp
void run(const QuantizeParams& p, const KernelArgs& a);
void run(const DequantizeParams& p, const KernelArgs& a);
void run(const QuantizedMatrixMultiplyParams& p, const KernelArgs& a);
void run(const QuantizedConvolutionParams& p, const KernelArgs& a);
// fused_pointwise.cpp
void run(const FusedPointwiseParams& p, const KernelArgs& a);

/// Runs the kernel for `params`.
inline void run_layer(const LayerParams& params, const KernelArgs& args) {
  std::visit([&args](const auto& p) { run(p, args); }, params);
}

}  // namespace ember::engine::cpu

#include "backends/cpu/parallel.h"  // parallel_for's definition
