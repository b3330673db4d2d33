// CUDA C source for a FusedPointwise layer: one grid-stride elementwise kernel that loads each
// input once (f16/bf16 converted to f32), runs the program's steps in registers (each result
// rounded to its step's dtype, as the separate layers would store it) and stores the outputs.
// Plain C++ (no CUDA headers): the CPU build compiles it and unit-tests the text; the CUDA back
// end compiles the text with NVRTC (backends/cuda/fused_pointwise.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ember/engine/layers.h"

namespace ember::engine::codegen {

/// The kernel's name in the generated source (extern "C", so unmangled).
inline constexpr const char* kPointwiseKernelName = "ember_fused_pointwise";
/// Most dims of the (collapsed) output the generic path walks.
inline constexpr int kPointwiseMaxRank = 8;
/// Elements per thread and iteration on the vectorized path.
inline constexpr int kPointwiseVector = 4;
/// Threads per block of a program with row reductions (one warp per row).
inline constexpr int kRowKernelThreads = 128;

/// The kernel's one argument, passed by value; the generated source declares the same struct.
/// A program with row reductions (kReduce) gets a row kernel instead: one warp per row of the
/// last dim, `dims[rank - 1]`, which the host must keep unmerged; `vec` is 0.
/// `vec` = 0: the generic path (per-input strides over the output's dims, 0 where it
/// broadcasts). `vec` odd: the vectorized path (n a multiple of kPointwiseVector, every pointer
/// 16-byte aligned), where input k is read as one element broadcast everywhere when bit k + 1
/// is set and contiguously otherwise. `wide` non-zero (with `vec` 0): the strided vectorized
/// path (n and the last dim multiples of kPointwiseVector, every input's last stride 0 or 1,
/// a vector input's other strides multiples of kPointwiseVector, pointers 16-byte aligned): the
/// offsets are walked once per kPointwiseVector elements, and input k is one element broadcast
/// over them where its last stride is 0, else one vector. `wide` is last so that a kernel generated
/// before it (stored in an older plan) reads the fields it knows and, seeing `vec` 0, takes its
/// generic path. `index32` non-zero: n and every input's element count fit in 31 bits, so the
/// offset walks divide in 32 bits (a 64-bit division is a long software sequence on the GPU,
/// and one per dim per element, or per vector, was most of RoPE's time: Qwen2-0.5B b32 on an
/// H100, 2026-12-07). Last for the same reason as `wide`.
struct PointwiseKernelArgs {
  const void* in[FusedPointwiseParams::kMaxInputs];
  void* out[FusedPointwiseParams::kMaxInputs];
  long long n;
  int rank;
  int vec;
  long long dims[kPointwiseMaxRank];
  long long strides[FusedPointwiseParams::kMaxInputs][kPointwiseMaxRank];
  int wide;
  int index32;
};

/// One operand of a launch: its address (only its alignment is read, and a sliced input's is
/// moved to its part's start), its dims and its dtype.
struct PointwiseOperand {
  const void* data = nullptr;
  const std::vector<int64_t>* dims = nullptr;  ///< Not owned: the caller's tensor's.
  DataType dtype = DataType::kF32;
};

/// What a FusedPointwise launch needs, decided on the host: the CUDA back end
/// (backends/cuda/fused_pointwise.cpp) launches it, and the tests run the generated source on
/// the host with it (fused_pointwise_test.cpp).
struct PointwiseLaunch {
  /// kEmpty: no elements; kElements: the elementwise kernel over `work` grid-stride items
  /// (vectors of kPointwiseVector on the vectorized paths, else elements); kRows: the row
  /// kernel over `work` rows; kTooManyDims: more than kPointwiseMaxRank dims after merging (the
  /// caller runs the reference instead).
  enum class Path { kEmpty, kElements, kRows, kTooManyDims } path = Path::kEmpty;
  PointwiseKernelArgs args{};
  int64_t work = 0;
};

/// The launch's switches (the CUDA back end reads them from the environment on each call:
/// EMBER_POINTWISE_STRIDED_VECTORS, EMBER_POINTWISE_INDEX32).
struct PointwiseLaunchOptions {
  bool strided_vectors = true;  ///< May take the strided vectorized path (`wide`).
  bool index32 = true;          ///< May walk offsets in 32 bits where they fit.
};

/// Plans the launch of `p` reading `ins` and writing `outs` (the output dims are outs[0]'s):
/// each input's strides over the output's dims through its view, the dims merged where every
/// input allows, and the path. Throws Error (starting with `what`, which may be empty for the
/// caller to prepend its layer's name) when the views do not parse or an input does not
/// broadcast to the output through its view.
PointwiseLaunch plan_pointwise_launch(const FusedPointwiseParams& p,
                                      const std::vector<PointwiseOperand>& ins,
                                      const std::vector<PointwiseOperand>& outs,
                                      const PointwiseLaunchOptions& options,
                                      const std::string& what);

/// The CUDA C source of `p`'s kernel for inputs of `input_dtypes` (the layer's input tensors).
/// Deterministic: the same program gives the same text (the kernel cache keys on it).
std::string pointwise_kernel_source(const FusedPointwiseParams& p,
                                    const std::vector<DataType>& input_dtypes);

/// FNV-1a 64 of `text` (the in-process kernel cache's key of source + architecture).
uint64_t source_hash(const std::string& text);

}  // namespace ember::engine::codegen
