// QuantizedMatrixMultiply on the GPU: INT8 and FP8 E4M3 GEMMs through cuBLASLt.
//
// Both use cuBLASLt's "TN" form, the one its INT8 (IMMA) and FP8 kernels require: row-major
// out[M, N] = a[M, K] b[N, K]^T is, column-major, out^T [N, M] = op_T(b) op_N(a) with both
// operands K-contiguous, which is how the fused layer stores them (the builder transposed the
// weight to [N, K]).
// - INT8: int32 accumulation into scratch (CUBLAS_COMPUTE_32I), then one pointwise pass (the
//   product epilogue of quantize.cu) that applies a_scale * b_scale[n] (per output column for
//   per-channel weights), the epilogue scale and bias in f32, rounds to the float type, applies
//   the activation and, when the layer requantizes, quantizes to int8. cuBLASLt's own BIAS /
//   RELU_BIAS / GELU_BIAS epilogues take no int32 output, and the requantization has no
//   cuBLASLt epilogue at all, so that pass is ours.
// - FP8 with per-tensor scales, a 16-bit output and no requantization: the scales through
//   CUBLASLT_MATMUL_DESC_A/B_SCALE_POINTER (device pointers, read at run time, so graphs stay
//   valid), the epilogue scale as alpha, the bias and relu in cuBLASLt's BIAS / RELU_BIAS
//   epilogue, f32 accumulation, the output type written directly (one rounding; f32 sums in
//   cuBLASLt's order); a residual as cuBLASLt's C (beta 1); another activation (erf GELU) in
//   place after it, or, when the layer requantizes (to FP8 or int8), the 16-bit value into
//   scratch and one pass for the activation and the quantization. Per-channel weight scales
//   (a convolution's folded batch norm) take the same two forms in cuBLASLt's outer-vector
//   scale mode when the caller gives scratch for the activation's scale spread over the rows
//   (quantized_conv.cpp does). Otherwise (per-channel scales without it, or an epilogue or
//   scale mode cuBLASLt refuses): the f32 sum into scratch, then the same epilogue pass as INT8
//   (one rounding, the CPU reference's order).
// Both take their algorithm from lt_algo.h: the fastest of cuBLASLt's candidates timed on the
// first eager call and kept in the timing cache, as the float GEMMs do (the heuristic's first
// candidate was taken before 2026-12-06). FP8 accumulates in the tensor cores' fast mode
// (CUBLASLT_MATMUL_DESC_FAST_ACCUM; EMBER_FP8_FAST_ACCUM=0 turns it off).
// Shapes cuBLASLt refuses (INT8 needs K and the leading dims multiples of 4, FP8 multiples of
// 16, FP8 needs sm_89+; an ImageNet classifier's N = 1000 is one) run in quantize.cu's direct
// kernel, then the same epilogue pass: on the device, so the engine's CUDA graph still captures
// (the host fallback they once took synchronized, which switched graphs off for the whole
// engine). Reported once per context and layer as a degradation.
#include <cublasLt.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/linear_kernels.h"
#include "backends/cuda/lt_algo.h"
#include "backends/cuda/quantize_kernels.h"

namespace ember::engine::cuda {

namespace {

constexpr size_t kWorkspaceBytes = kInt8GemmWorkspaceBytes;

/// Throws naming the call when a cuBLASLt status is an error.
void qlt_check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("QuantizedMatrixMultiply (cuda): ") + what +
                " failed: " + cublasLtGetStatusString(status));
  }
}

using Desc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;

/// FP8 GEMMs with a 16-bit output accumulate in the tensor cores' own (fast) mode unless EMBER_FP8_FAST_ACCUM=0
/// (or off) asks for cuBLASLt's periodic promotion of the sums to the f32 cores, which costs
/// throughput. E4M3's 3-bit mantissa loses far more in the quantization than the fast mode
/// loses in the sums (Transformer Engine runs its forward GEMMs the same way). Any other value
/// than unset, 1, on, 0 and off is an error naming the setting.
bool fp8_fast_accumulation() {
  static const bool on = [] {
    const char* v = std::getenv("EMBER_FP8_FAST_ACCUM");
    const std::string s = v == nullptr ? "1" : v;
    if (s == "1" || s == "on") return true;
    if (s == "0" || s == "off") return false;
    throw Error("EMBER_FP8_FAST_ACCUM='" + s + "': expected 1, on, 0 or off");
  }();
  return on;
}

cudaDataType_t out_type(DataType t) {
  switch (t) {
    case DataType::kF32:
      return CUDA_R_32F;
    case DataType::kF16:
      return CUDA_R_16F;
    case DataType::kBF16:
      return CUDA_R_16BF;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool:
    case DataType::kF8E4M3:
      break;
  }
  throw Error(std::string("QuantizedMatrixMultiply (cuda): output dtype ") + dtype_name(t) +
              " (the layer should have been rejected by shape inference)");
}

bool aligned_to(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

void set_tn(cublasLtMatmulDesc_t op) {
  const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  qlt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)),
            "set TRANSA");
  qlt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)),
            "set TRANSB");
}

/// EMBER_QMATMUL=igemm: symmetric INT8 products run in Ember's implicit-GEMM kernel
/// (qconv_implicit_gemm.cu) as the 1x1 convolution they are (m pixels of k channels, n output
/// channels), the epilogue in the same kernel: no int32 sums in memory. Read per call.
bool igemm_products() {
  const char* v = std::getenv("EMBER_QMATMUL");
  return v != nullptr && std::strcmp(v, "igemm") == 0;
}

/// The product as igemm's 1x1 convolution; false (nothing enqueued) where the kernel does not
/// cover it (igemm_covers: symmetric int8, k % 16 == 0, aligned operands, sizes).
bool run_int8_igemm(const CudaArgs& a, int64_t m, int64_t n, int64_t k, DataType float_type,
                    const ProductEpilogue& e) {
  QConvGeometry g;
  g.channels_last = true;
  g.batch = m;
  g.in_channels = k;
  g.out_channels = n;
  if (!igemm_covers(g, a.in(0).dtype, a.has(6), a.in(0).data, a.in(1).data).empty()) return false;
  launch_qconv_igemm(a.in(0).data, a.in(1).data, a.out().data, float_type, g, e, a.stream());
  return true;
}

/// INT8: returns false when cuBLASLt cannot take the problem.
bool run_int8(const CudaArgs& a, int64_t m, int64_t n, int64_t k, DataType float_type,
              ProductEpilogue e) {
  const DeviceTensor& qa = a.in(0);
  const DeviceTensor& qb = a.in(1);
  if (igemm_products() && run_int8_igemm(a, m, n, k, float_type, e)) return true;
  if (k % 4 != 0 || n % 4 != 0 || !aligned_to(qa.data, 16) || !aligned_to(qb.data, 16)) {
    return false;
  }
  // Asymmetric activations: uint8 is shifted into int8 (IMMA takes int8 only) and the epilogue
  // subtracts (zero_point - shift) * sum_k b[n, k] (ProductEpilogue).
  const bool u8 = qa.dtype == DataType::kU8;
  const bool asymmetric = u8 || a.has(6);
  // Workspace first, then the int32 accumulator, then (asymmetric) the shifted activation and
  // the weight's row sums, each 256-byte aligned.
  auto round256 = [](size_t b) { return (b + 255) / 256 * 256; };
  const size_t acc_bytes = round256(static_cast<size_t>(m * n) * sizeof(int32_t));
  const size_t shifted_bytes = u8 ? round256(static_cast<size_t>(m * k)) : 0;
  const size_t sums_bytes = asymmetric ? round256(static_cast<size_t>(n) * sizeof(int32_t)) : 0;
  auto* base = static_cast<uint8_t*>(
      a.res->workspace(kWorkspaceBytes + acc_bytes + shifted_bytes + sums_bytes));
  auto* acc = reinterpret_cast<int32_t*>(base + kWorkspaceBytes);
  const void* activation = qa.data;
  if (u8) {
    auto* shifted = reinterpret_cast<int8_t*>(base + kWorkspaceBytes + acc_bytes);
    launch_shift_u8_to_s8(static_cast<const uint8_t*>(qa.data), shifted, m * k, a.stream());
    activation = shifted;
  }
  if (asymmetric) {
    auto* sums =
        reinterpret_cast<int32_t*>(base + kWorkspaceBytes + acc_bytes + shifted_bytes);
    launch_weight_row_sums(static_cast<const int8_t*>(qb.data), n, k, sums, a.stream());
    e.weight_sums = sums;
    e.zero_point = a.has(6) ? static_cast<const int32_t*>(a.in(6).data) : nullptr;
    e.zero_point_offset = u8 ? 128 : 0;
  }
  // The shift and the sums wrote only workspace: a refusal here leaves nothing behind.
  if (!int8_gemm_tn(a, activation, qb.data, m, n, k, acc, base)) return false;
  launch_product_epilogue(acc, /*int32_acc=*/true, a.out().data, float_type, m, n, e,
                          a.stream());
  return true;
}

/// The one cuBLASLt "TN" call behind every quantized GEMM: d[m, n] (row-major) =
/// act[m, k] w[n, k]^T, both K-contiguous. INT8 (`fp8` false): int32 sums, `d_type` CUDA_R_32I.
/// FP8 E4M3: f32 compute, d in `d_type`; `w_scale` and `act_scale` (device pointers, read at run
/// time so graphs stay valid) scale the product, or nullptr for the raw f32 sums. False, with
/// nothing enqueued, when cuBLASLt takes no such problem (INT8 needs k and n multiples of 4, FP8
/// of 16 and sm_89+; 16-byte aligned operands; an algorithm).
/// `lib` (FP8 only): a bias (of d's type) added by cuBLASLt's own BIAS or RELU_BIAS epilogue,
/// and `alpha` (the layer's epilogue scale); nullptr: no bias, no relu, alpha 1.
struct LibEpilogue {
  const void* bias = nullptr;
  bool relu = false;
  float alpha = 1.0f;
  const void* residual = nullptr;  ///< C (d's type and layout), added with beta 1; or none.
};

/// `outer_vectors` (FP8 only): w_scale is a vector of n scales (one per output column) and
/// act_scale one of m (one per row), in cuBLASLt's outer-vector scale mode.
bool gemm_tn(const CudaArgs& a, bool fp8, const void* act, const void* w, int64_t m, int64_t n,
             int64_t k, void* d, cudaDataType_t d_type, const void* w_scale,
             const void* act_scale, void* ws, const LibEpilogue* lib = nullptr,
             bool outer_vectors = false) {
  const int64_t multiple = fp8 ? 16 : 4;
  if (k % multiple != 0 || n % multiple != 0 || !aligned_to(act, 16) || !aligned_to(w, 16) ||
      !aligned_to(d, 16)) {
    return false;
  }
  auto handle = static_cast<cublasLtHandle_t>(a.res->cublaslt());
  Desc op;
  qlt_check(cublasLtMatmulDescCreate(&op.h, fp8 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32I,
                                     fp8 ? CUDA_R_32F : CUDA_R_32I),
            "cublasLtMatmulDescCreate");
  set_tn(op.h);
  if (outer_vectors && (!fp8 || w_scale == nullptr || act_scale == nullptr)) return false;
  if (outer_vectors) {
    // One scale per row of the library's A (our n) and per column of its B (our m); the two
    // modes go together. A cuBLASLt without the attribute refuses here: no such path then.
    const cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    if (cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode,
                                       sizeof(mode)) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode,
                                       sizeof(mode)) != CUBLAS_STATUS_SUCCESS) {
      return false;
    }
  }
  if (w_scale != nullptr) {
    // The library's A is our w (the weight) and its B our act (the activation).
    qlt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                             &w_scale, sizeof(w_scale)),
              "set A scale pointer");
    qlt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                             &act_scale, sizeof(act_scale)),
              "set B scale pointer");
  }
  if (lib != nullptr && (lib->bias != nullptr || lib->relu)) {
    // The bias runs along the library's rows (our n: out^T is [n, m]), as a per-channel bias.
    const cublasLtEpilogue_t epi = lib->bias == nullptr ? CUBLASLT_EPILOGUE_RELU
                                   : lib->relu          ? CUBLASLT_EPILOGUE_RELU_BIAS
                                                        : CUBLASLT_EPILOGUE_BIAS;
    qlt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                             sizeof(epi)),
              "set epilogue");
    if (lib->bias != nullptr) {
      qlt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                               &lib->bias, sizeof(lib->bias)),
                "set bias pointer");
      qlt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                               &d_type, sizeof(d_type)),
                "set bias type");
    }
  }
  int8_t fast = 0;
  if (fp8) {
    // Only where the result is rounded to 16 bits anyway: f32 sums (the epilogue pass's input,
    // f32 outputs) keep cuBLASLt's promotion to f32.
    fast = fp8_fast_accumulation() && d_type != CUDA_R_32F ? 1 : 0;
    qlt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast,
                                             sizeof(fast)),
              "set fast accumulation");
  }
  // Column-major, that is out^T [n, m] = op_T(w) op_N(act).
  const cudaDataType_t q = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_8I;
  Layout first, second, out;
  qlt_check(cublasLtMatrixLayoutCreate(&first.h, q, k, n, k), "layout b");
  qlt_check(cublasLtMatrixLayoutCreate(&second.h, q, k, m, k), "layout a");
  qlt_check(cublasLtMatrixLayoutCreate(&out.h, d_type, n, m, n), "layout out");
  // The scale type is the compute type's: f32 for FP8, int32 for INT8. A residual is C with
  // beta 1 (FP8 only: D = alpha * scales * sum + C, then the bias and relu epilogue), in D's
  // type and layout, which is what cuBLASLt's FP8 kernels take for a 16-bit D.
  const void* residual = lib != nullptr ? lib->residual : nullptr;
  if (residual != nullptr && (!fp8 || !aligned_to(residual, 16))) return false;
  const float f_one = lib != nullptr ? lib->alpha : 1.0f;
  const float f_beta = residual != nullptr ? 1.0f : 0.0f;
  const int32_t i_one = 1, i_zero = 0;
  const void* alpha = fp8 ? static_cast<const void*>(&f_one) : &i_one;
  const void* beta = fp8 ? static_cast<const void*>(&f_beta) : &i_zero;
  const void* c = residual != nullptr ? residual : d;
  const size_t d_size = d_type == CUDA_R_32F || d_type == CUDA_R_32I ? 4 : 2;
  // The pointers' alignments (the leading dims are the shape's business: K and N multiples of
  // 4 or 16 were checked above).
  const uint32_t align_w = alignment_of({reinterpret_cast<uint64_t>(w)});
  const uint32_t align_act = alignment_of({reinterpret_cast<uint64_t>(act)});
  const uint32_t align_out =
      alignment_of({reinterpret_cast<uint64_t>(d), reinterpret_cast<uint64_t>(residual)});
  const LtPreference pref(kWorkspaceBytes, align_w, align_act, align_out);
  const LtCall call{handle, op.h, first.h, second.h, out.h, alpha, beta, w, act, c, ws,
                    kWorkspaceBytes, a.stream()};
  LtProblem problem;
  problem.what = std::string("cuBLASLt ") + (fp8 ? "FP8" : "INT8") + " GEMM (cuda) m=" +
                 std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                 (a.layer != nullptr ? " of " + a.layer->describe() : std::string());
  if (a.res->timing_cache() != nullptr) {
    const int epi = lib == nullptr ? 0 : (lib->bias != nullptr ? 1 : 0) + (lib->relu ? 2 : 0);
    problem.key = std::string("cublasLt ") + (fp8 ? "f8e4m3" : "i8") + " tn m=" +
                  std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                  " d=" + std::to_string(static_cast<int>(d_type)) + " scales=" +
                  (outer_vectors ? std::string("vectors") : std::to_string(w_scale != nullptr)) +
                  " epilogue=" + std::to_string(epi) +
                  " residual=" + std::to_string(residual != nullptr) + " fast=" +
                  std::to_string(fast) + " align=" + std::to_string(align_w) + "," +
                  std::to_string(align_act) + "," + std::to_string(align_out) +
                  " workspace=" + std::to_string(kWorkspaceBytes);
  }
  problem.d = d;
  problem.d_bytes = static_cast<size_t>(m * n) * d_size;
  problem.reads_c = residual != nullptr;
  const auto algo = choose_lt_algo(call, pref.h, problem, a);
  if (!algo) return false;
  const cublasStatus_t st = call.run(*algo, d);
  // The outer-vector scale mode is newer than the rest: a cuBLASLt that lists an algorithm but
  // refuses the call (its check runs before any launch) leaves the caller its other paths.
  if (outer_vectors &&
      (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE)) {
    return false;
  }
  qlt_check(st, fp8 ? "cublasLtMatmul (fp8)" : "cublasLtMatmul (int8)");
  return true;
}

/// FP8 E4M3: returns false when cuBLASLt cannot take the problem (or the GPU has no FP8).
/// Per-tensor scales, a 16-bit output and no requantization: the GEMM writes the output itself
/// (fp8_gemm_to_output: scales, alpha, bias or relu in cuBLASLt's epilogue, a residual as C;
/// another activation in place after it). With a requantization: the 16-bit value into scratch,
/// then one pass for the activation and the quantization (launch_product_finish). Everything
/// else (per-channel weight scales, an f32 output with a bias or activation, an epilogue
/// cuBLASLt refuses): the f32 sums go to scratch and the epilogue pass (the INT8 one) finishes
/// them. For BERT-base at b32 the first form spares all 73 products a round trip of f32 sums
/// through memory (8 bytes an output element; its 12 erf-GELU products pay 4 for the pass).
bool run_fp8(const CudaArgs& a, int64_t m, int64_t n, int64_t k, DataType float_type,
             const ProductEpilogue& e, const Epilogue& epilogue) {
  if (k % 16 != 0 || n % 16 != 0) return false;  // before growing the workspace for it
  const bool half = float_type == DataType::kF16 || float_type == DataType::kBF16;
  if (e.out_scale == nullptr) {
    auto* base = static_cast<uint8_t*>(a.res->workspace(kWorkspaceBytes));
    if (fp8_gemm_to_output(a, a.in(0).data, a.in(1).data, m, n, k, a.out().data, float_type, e,
                           epilogue, base)) {
      return true;
    }
  } else if (!e.per_channel && half) {
    const size_t value_bytes =
        (static_cast<size_t>(m * n) * dtype_size(float_type) + 255) / 256 * 256;
    auto* base = static_cast<uint8_t*>(a.res->workspace(kWorkspaceBytes + value_bytes));
    if (fp8_gemm_requantized(a, a.in(0).data, a.in(1).data, m, n, k, base + kWorkspaceBytes,
                             a.out().data, float_type, e, base)) {
      return true;
    }
  }
  // The f32 sums in scratch, 256-byte aligned after the workspace.
  const size_t sum_bytes = static_cast<size_t>(m * n) * sizeof(float);
  auto* base = static_cast<uint8_t*>(a.res->workspace(kWorkspaceBytes + sum_bytes));
  void* d = base + kWorkspaceBytes;
  if (!gemm_tn(a, /*fp8=*/true, a.in(0).data, a.in(1).data, m, n, k, d, CUDA_R_32F, nullptr,
               nullptr, base)) {
    return false;
  }
  launch_product_epilogue(d, /*int32_acc=*/false, a.out().data, float_type, m, n, e, a.stream());
  return true;
}

/// The direct kernel (quantize_kernels.h) and the epilogue pass, for what cuBLASLt refused.
void run_direct(const CudaArgs& a, int64_t m, int64_t n, int64_t k, DataType float_type,
                ProductEpilogue e) {
  const DeviceTensor& qa = a.in(0);
  const DeviceTensor& qb = a.in(1);
  const bool fp8 = qa.dtype == DataType::kF8E4M3;
  const bool u8 = qa.dtype == DataType::kU8;
  const bool asymmetric = !fp8 && (u8 || a.has(6));
  auto round256 = [](size_t b) { return (b + 255) / 256 * 256; };
  const size_t acc_bytes = round256(static_cast<size_t>(m * n) * 4);  // int32 or f32
  const size_t sums_bytes = asymmetric ? round256(static_cast<size_t>(n) * sizeof(int32_t)) : 0;
  auto* base = static_cast<uint8_t*>(a.res->workspace(acc_bytes + sums_bytes));
  if (asymmetric) {
    auto* sums = reinterpret_cast<int32_t*>(base + acc_bytes);
    launch_weight_row_sums(static_cast<const int8_t*>(qb.data), n, k, sums, a.stream());
    e.weight_sums = sums;
    e.zero_point = a.has(6) ? static_cast<const int32_t*>(a.in(6).data) : nullptr;
    e.zero_point_offset = u8 ? 128 : 0;
  }
  launch_quantized_product_direct(qa.data, u8, fp8, qb.data, m, n, k, base, a.stream());
  launch_product_epilogue(base, /*int32_acc=*/!fp8, a.out().data, float_type, m, n, e,
                          a.stream());
  a.res->warn_once(a.layer,
                   (a.layer != nullptr ? a.layer->describe()
                                       : std::string("a QuantizedMatrixMultiply")) +
                       ": cuBLASLt's " + (fp8 ? "FP8" : "INT8") + " GEMM does not take [" +
                       std::to_string(m) + ", " + std::to_string(k) + "] x [" +
                       std::to_string(n) + ", " + std::to_string(k) + "]^T (" +
                       (fp8 ? "FP8 needs K and N multiples of 16 and sm_89+"
                            : "INT8 needs K and N multiples of 4") +
                       "), so it runs in Ember's direct kernel (exact sums, slower)");
}

}  // namespace

bool int8_gemm_tn(const CudaArgs& a, const void* act, const void* w, int64_t m, int64_t n,
                  int64_t k, int32_t* acc, void* ws) {
  return gemm_tn(a, /*fp8=*/false, act, w, m, n, k, acc, CUDA_R_32I, nullptr, nullptr, ws);
}

bool fp8_gemm_tn(const CudaArgs& a, const void* act, const void* w, int64_t m, int64_t n,
                 int64_t k, float* acc, void* ws) {
  return gemm_tn(a, /*fp8=*/true, act, w, m, n, k, acc, CUDA_R_32F, nullptr, nullptr, ws);
}

namespace {

/// The outer-vector problems cuBLASLt refused (no algorithm, or the call refused), by device,
/// shape, output type and epilogue: asked once per process, so a library without such kernels
/// costs no spread of the activation scale and no heuristic query on later calls.
struct OuterVectorRefusals {
  std::mutex mutex;
  std::set<std::string> refused;
};

OuterVectorRefusals& outer_vector_refusals() {
  static OuterVectorRefusals r;
  return r;
}

std::string outer_vector_kind(int64_t m, int64_t n, int64_t k, DataType float_type,
                              const ProductEpilogue& e, bool requantized) {
  const int device = [] {
    int d = 0;
    cudaGetDevice(&d);
    return d;
  }();
  return std::to_string(device) + "/m" + std::to_string(m) + "n" + std::to_string(n) + "k" +
         std::to_string(k) + "/" + dtype_name(float_type) + "/bias" +
         std::to_string(e.bias != nullptr) + "/relu" +
         std::to_string(e.activation && e.type == ActivationType::kRelu) + "/residual" +
         std::to_string(e.residual != nullptr) + "/requantized" + std::to_string(requantized);
}

bool outer_vectors_refused(const std::string& kind) {
  OuterVectorRefusals& r = outer_vector_refusals();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.refused.count(kind) > 0;
}

void refuse_outer_vectors(const std::string& kind) {
  OuterVectorRefusals& r = outer_vector_refusals();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.refused.insert(kind);
}

/// The activation scale cuBLASLt reads for `e`: e.x_scale, or, for per-channel weight scales,
/// `row_scales` filled with it (nullptr when per-channel scales have no such vector, or
/// cuBLASLt refused this kind of outer-vector problem before).
const void* activation_scale(const CudaArgs& a, const ProductEpilogue& e, int64_t m,
                             float* row_scales, const std::string& kind) {
  if (!e.per_channel) return e.x_scale;
  if (row_scales == nullptr || !aligned_to(row_scales, 16) || outer_vectors_refused(kind)) {
    return nullptr;
  }
  launch_fill_from_scalar(row_scales, e.x_scale, m, a.stream());
  return row_scales;
}

/// The FP8 GEMM into `d` (`float_type`, 16-bit or f32) with e's scales (scalars, or outer
/// vectors for per-channel ones), alpha, bias, relu and residual in cuBLASLt's epilogue.
/// False, with at most `row_scales` written, when cuBLASLt takes no such problem (a refused
/// outer-vector problem is remembered).
bool fp8_gemm_lib_epilogue(const CudaArgs& a, const void* act, const void* w, int64_t m,
                           int64_t n, int64_t k, void* d, DataType float_type,
                           const ProductEpilogue& e, void* ws, float* row_scales,
                           bool requantized) {
  const std::string kind = e.per_channel
                               ? outer_vector_kind(m, n, k, float_type, e, requantized)
                               : std::string();
  const void* act_scale = activation_scale(a, e, m, row_scales, kind);
  if (act_scale == nullptr) return false;
  const bool lib_relu = e.activation && e.type == ActivationType::kRelu;
  const LibEpilogue lib{e.bias, lib_relu, e.scale, e.residual};
  // The library's A is our w, its B our act: A's scale is w's.
  if (!gemm_tn(a, /*fp8=*/true, act, w, m, n, k, d, out_type(float_type), e.w_scale, act_scale,
               ws, &lib, /*outer_vectors=*/e.per_channel)) {
    if (e.per_channel) refuse_outer_vectors(kind);
    return false;
  }
  return true;
}

}  // namespace

bool fp8_gemm_to_output(const CudaArgs& a, const void* act, const void* w, int64_t m, int64_t n,
                        int64_t k, void* out, DataType float_type, const ProductEpilogue& e,
                        const Epilogue& epilogue, void* ws, float* row_scales) {
  const bool half = float_type == DataType::kF16 || float_type == DataType::kBF16;
  // An f32 output takes no bias (it would need cuBLASLt's bf16 bias), activation or residual.
  const bool f32_plain = float_type == DataType::kF32 && e.bias == nullptr && !e.activation &&
                         e.residual == nullptr;
  if (!(half || f32_plain) || e.out_scale != nullptr || e.weight_sums != nullptr ||
      (e.per_channel && row_scales == nullptr)) {
    return false;
  }
  if (!fp8_gemm_lib_epilogue(a, act, w, m, n, k, out, float_type, e, ws, row_scales,
                             /*requantized=*/false)) {
    return false;
  }
  const bool lib_relu = e.activation && e.type == ActivationType::kRelu;
  if (e.activation && !lib_relu) {
    launch_epilogue(float_type, out, nullptr, n, 1, nullptr, &epilogue, m * n, a.stream());
  }
  return true;
}

bool fp8_gemm_requantized(const CudaArgs& a, const void* act, const void* w, int64_t m,
                          int64_t n, int64_t k, void* value, void* out, DataType float_type,
                          const ProductEpilogue& e, void* ws, float* row_scales) {
  const bool half = float_type == DataType::kF16 || float_type == DataType::kBF16;
  if (!half || e.out_scale == nullptr || e.weight_sums != nullptr ||
      (e.per_channel && row_scales == nullptr)) {
    return false;
  }
  if (!fp8_gemm_lib_epilogue(a, act, w, m, n, k, value, float_type, e, ws, row_scales,
                             /*requantized=*/true)) {
    return false;
  }
  ProductEpilogue rest = e;
  rest.activation = e.activation && e.type != ActivationType::kRelu;
  launch_product_finish(value, out, float_type, m * n, rest, a.stream());
  return true;
}

ProductEpilogue product_epilogue_of(const Epilogue& ep, const Requantize& r, const CudaArgs& a) {
  ProductEpilogue e;
  e.x_scale = static_cast<const float*>(a.in(2).data);
  e.w_scale = static_cast<const float*>(a.in(3).data);
  e.per_channel = a.in(3).numel() > 1;
  e.scale = static_cast<float>(ep.scale);
  e.bias = a.has(4) ? a.in(4).data : nullptr;
  e.activation = ep.fused_activation;
  e.type = ep.activation;
  e.alpha = static_cast<float>(ep.alpha);
  e.beta = static_cast<float>(ep.beta);
  e.residual = a.has(7) ? a.in(7).data : nullptr;  // in the output's shape and layout
  // An int8 convolution's int8 residual (input 8: its scale).
  e.residual_scale = a.has(8) ? static_cast<const float*>(a.in(8).data) : nullptr;
  if (r.enabled) {
    e.out_scale = static_cast<const float*>(a.in(5).data);
    e.fp8_out = r.to == DataType::kF8E4M3;
    e.quant_min = static_cast<float>(r.quant_min);
    e.quant_max = static_cast<float>(r.quant_max);
  }
  return e;
}

void run(const QuantizedMatrixMultiplyParams& p, const CudaArgs& a) {
  const DeviceTensor& qa = a.in(0);
  const int64_t k = qa.dims.back();
  const int64_t n = a.in(1).dims[0];
  const int64_t m = k == 0 ? 0 : qa.numel() / k;
  if (m == 0 || n == 0 || k == 0) {
    host_fallback(a);  // empty products (zeros) are not worth a kernel
    return;
  }
  const ProductEpilogue e = product_epilogue_of(p.epilogue, p.requantize, a);
  const bool done = qa.dtype != DataType::kF8E4M3 ? run_int8(a, m, n, k, p.out, e)
                                                  : run_fp8(a, m, n, k, p.out, e, p.epilogue);
  if (!done) run_direct(a, m, n, k, p.out, e);
}

}  // namespace ember::engine::cuda
