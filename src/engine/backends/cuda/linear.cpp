// CUDA kernels of the linear family through the vendor libraries: MatrixMultiply on cuBLASLt,
// Convolution on cuDNN 9's graph API (conv_graph.cpp) with its legacy convolution API as the
// fallback (EMBER_CUDNN_CONV=legacy, or a layer the graph API refuses), Deconvolution on the
// legacy API. Pooling and the bias fill are hand-written (linear_kernels.cu).
//
// A channels_last Convolution (the builder's channels_last pass) describes x and y as
// CUDNN_TENSOR_NHWC tensors and the KRSC weight as an NHWC filter, the layout of cuDNN's
// tensor-core kernels (NCHW f16 makes cuDNN transpose in its workspace or pick slower kernels).
// Its epilogue then runs along the last dim: bias index i % C (launch_epilogue with plane 1).
//
// Precision: f32 stays f32 end to end (cuBLASLt CUBLAS_COMPUTE_32F without TF32, cuDNN
// CUDNN_FMA_MATH and no FFT/Winograd algorithms, whose transforms lose more than the f32
// tolerance); f16/bf16 run on tensor cores with f32 accumulation. A bias is written into the
// output first and accumulated onto with beta = 1, so the result is rounded once, as on the CPU.
//
// Algorithm choice (tactics): cuBLASLt's candidates are timed on a problem's first eager call
// (lt_algo.h, shared with the quantized GEMMs), cuDNN's through its Find; the winners go into
// the engine's TimingCache under keys naming the problem, not the layer.
//
// Row-major matrices are column-major transposes, so C = A B is computed as C^T = B^T A^T with
// the operands swapped; no data moves.
#include <cublasLt.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/conv_graph.h"
#include "backends/cuda/dnn_types.h"
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/linear_kernels.h"
#include "backends/cuda/lt_algo.h"

namespace ember::engine::cuda {

namespace {

/// Library scratch for one call: cuBLASLt's recommended maximum.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
// cuDNN's tensor-core algorithms for NCHW half tensors transform the operands to NHWC in the
// workspace: at batch 32 a ResNet activation alone is ~50 MB, so convolutions may use more.
constexpr size_t kConvWorkspaceBytes = size_t{256} << 20;

void lt_check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("MatrixMultiply (cuda): ") + what + " failed: " +
                cublasLtGetStatusString(status));
  }
}

void dnn_check(cudnnStatus_t status, const char* layer, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) {
    throw Error(std::string(layer) + " (cuda): " + what + " failed: " +
                cudnnGetErrorString(status));
  }
}

int64_t product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t d : v) n *= d;
  return n;
}

// ---------------------------------------------------------------- cuBLASLt GEMM

cudaDataType_t lt_type(DataType t) {
  switch (t) {
    case DataType::kF32: return CUDA_R_32F;
    case DataType::kF16: return CUDA_R_16F;
    case DataType::kBF16: return CUDA_R_16BF;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string("MatrixMultiply (cuda): dtype ") + dtype_name(t) +
              " is not supported (float types only)");
}

/// One row-major (strided-batched) GEMM: C_i[m x n] = op(A_i)[m x k] op(B_i)[k x n] for
/// i < batch, A_i = a + i * stride_a (elements; 0 broadcasts), likewise B and C.
struct Gemm {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int64_t batch = 1;
  // Epilogue: bias along the output's columns, a residual read as C (beta = 1, same layout
  // as the output), an activation after both.
  const void* bias = nullptr;
  const void* residual = nullptr;
  enum class Act { kNone, kRelu, kGeluTanh } act = Act::kNone;
  float scale = 1.0f;  // alpha
};

using LtLayout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;

/// A column-major layout of `rows` x `cols` with leading dim `ld`, strided-batched.
void make_layout(LtLayout& l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
  lt_check(cublasLtMatrixLayoutCreate(&l.h, type, static_cast<uint64_t>(rows),
                                      static_cast<uint64_t>(cols), ld),
           "cublasLtMatrixLayoutCreate");
  if (batch > 1) {
    const auto count = static_cast<int32_t>(batch);
    lt_check(cublasLtMatrixLayoutSetAttribute(l.h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                              sizeof(count)),
             "set batch count");
    lt_check(cublasLtMatrixLayoutSetAttribute(l.h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                              &stride, sizeof(stride)),
             "set batch stride");
  }
}

/// A GEMM layer's cuBLASLt descriptors and algorithm, kept in the context's Resources between
/// calls while the problem (everything but the operand addresses) stays the same.
struct GemmPrep : PreparedLaunch {
  std::array<int64_t, 20> key{};
  Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> op;
  LtLayout first, second, out;
  cublasLtMatmulAlgo_t algo{};
};

/// Runs `g`. `reusable`: the layer runs exactly this one GEMM per call, so its descriptors and
/// algorithm may be kept for the next call (a layer that splits into several GEMMs makes them
/// afresh each time).
void run_gemm(const Gemm& g, DataType dtype, const CudaArgs& args, bool reusable) {
  auto handle = static_cast<cublasLtHandle_t>(args.res->cublaslt());
  const cudaDataType_t type = lt_type(dtype);
  const size_t esize = dtype_size(dtype);
  const uint32_t align_first = alignment_of({reinterpret_cast<uint64_t>(g.b),
                                             static_cast<uint64_t>(g.stride_b) * esize});
  const uint32_t align_second = alignment_of({reinterpret_cast<uint64_t>(g.a),
                                              static_cast<uint64_t>(g.stride_a) * esize});
  const uint32_t align_out = alignment_of({reinterpret_cast<uint64_t>(g.c),
                                           reinterpret_cast<uint64_t>(g.residual),
                                           static_cast<uint64_t>(g.stride_c) * esize});
  const float alpha = g.scale, beta = g.residual != nullptr ? 1.0f : 0.0f;
  uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &g.scale, sizeof scale_bits);
  const std::array<int64_t, 20> key = {
      g.trans_a, g.trans_b, g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.stride_a, g.stride_b,
      g.stride_c, g.batch, static_cast<int64_t>(reinterpret_cast<uintptr_t>(g.bias)),
      g.residual != nullptr, static_cast<int64_t>(g.act), scale_bits, align_first, align_second,
      align_out, static_cast<int64_t>(dtype)};
  auto* kept = reusable ? static_cast<GemmPrep*>(args.res->prepared(args.layer, 0)) : nullptr;
  if (kept != nullptr && kept->key == key) {
    const LtCall call{handle, kept->op.h, kept->first.h, kept->second.h, kept->out.h, &alpha,
                      &beta, g.b, g.a, g.residual != nullptr ? g.residual : g.c,
                      args.res->workspace(kWorkspaceBytes), kWorkspaceBytes, args.stream()};
    lt_check(call.run(kept->algo, g.c), "cublasLtMatmul");
    return;
  }
  auto prep = std::make_unique<GemmPrep>();
  prep->key = key;
  auto& op = prep->op;
  lt_check(cublasLtMatmulDescCreate(&op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F),
           "cublasLtMatmulDescCreate");
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                          sizeof(op_first)),
           "set TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                          sizeof(op_second)),
           "set TRANSB");
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  switch (g.act) {
    case Gemm::Act::kNone:
      epilogue = g.bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
      break;
    case Gemm::Act::kRelu:
      epilogue = g.bias != nullptr ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
      break;
    case Gemm::Act::kGeluTanh:
      epilogue = g.bias != nullptr ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
      break;
  }
  if (g.bias != nullptr) {
    lt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                            sizeof(g.bias)),
             "set bias pointer");
  }
  if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    lt_check(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                            sizeof(epilogue)),
             "set epilogue");
  }
  LtLayout& first = prep->first;
  LtLayout& second = prep->second;
  LtLayout& out = prep->out;
  if (g.trans_b) {
    make_layout(first, type, g.k, g.n, g.ldb, g.batch, g.stride_b);
  } else {
    make_layout(first, type, g.n, g.k, g.ldb, g.batch, g.stride_b);
  }
  if (g.trans_a) {
    make_layout(second, type, g.m, g.k, g.lda, g.batch, g.stride_a);
  } else {
    make_layout(second, type, g.k, g.m, g.lda, g.batch, g.stride_a);
  }
  make_layout(out, type, g.n, g.m, g.ldc, g.batch, g.stride_c);

  // The heuristic assumes 256-byte aligned operands unless told otherwise; arena offsets and
  // batch entries can be less aligned, and an algorithm that needs more would fault.
  const LtPreference pref(kWorkspaceBytes, align_first, align_second, align_out);
  const LtCall call{handle, op.h, first.h, second.h, out.h, &alpha, &beta, g.b, g.a,
                    g.residual != nullptr ? g.residual : g.c,
                    args.res->workspace(kWorkspaceBytes), kWorkspaceBytes, args.stream()};
  LtProblem problem;
  problem.what = "MatrixMultiply (cuda): m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                 " k=" + std::to_string(g.k) + " batch=" + std::to_string(g.batch) + " of " +
                 dtype_name(dtype);
  if (args.res->timing_cache() != nullptr) {
    problem.key = "cublasLt " + std::string(dtype_name(dtype)) + " ta=" + std::to_string(g.trans_a) +
                  " tb=" + std::to_string(g.trans_b) + " m=" + std::to_string(g.m) +
                  " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
                  " ld=" + std::to_string(g.lda) + "," + std::to_string(g.ldb) + "," +
                  std::to_string(g.ldc) + " batch=" + std::to_string(g.batch) +
                  " strides=" + std::to_string(g.stride_a) + "," + std::to_string(g.stride_b) + "," +
                  std::to_string(g.stride_c) + " epilogue=" + std::to_string(epilogue) +
                  " residual=" + std::to_string(g.residual != nullptr) +
                  " align=" + std::to_string(align_first) + "," + std::to_string(align_second) + "," +
                  std::to_string(align_out) + " workspace=" + std::to_string(kWorkspaceBytes);
  }
  problem.d = g.c;
  problem.d_bytes =
      static_cast<size_t>((g.batch - 1) * g.stride_c + (g.m - 1) * g.ldc + g.n) * esize;
  problem.reads_c = g.residual != nullptr;
  std::string why;
  const auto chosen = choose_lt_algo(call, pref.h, problem, args, &why);
  if (!chosen) throw Error(problem.what + ": cuBLASLt has no algorithm (" + why + ")");
  const cublasLtMatmulAlgo_t algo = *chosen;
  lt_check(call.run(algo, g.c), "cublasLtMatmul");
  // Kept unless the algorithm is a capture's untimed heuristic guess.
  if (reusable && !capturing(args.stream())) {
    prep->algo = algo;
    args.res->set_prepared(args.layer, 0, std::move(prep));
  }
}

// ---------------------------------------------------------------- cuDNN convolution


using TensorDesc = Owned<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor>;
using FilterDesc = Owned<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor>;
using ConvDesc = Owned<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor>;
using ActivationDesc = Owned<cudnnActivationDescriptor_t, cudnnDestroyActivationDescriptor>;

/// Dims as cuDNN takes them: 1d becomes 2d with H = 1 (cuDNN needs at least 4-d tensors).
/// False when a dim or a contiguous stride does not fit cuDNN's int.
bool dnn_dims(const std::vector<int64_t>& dims, size_t nsp, std::vector<int>& out,
              std::vector<int>& strides) {
  std::vector<int64_t> d(dims.begin(), dims.end());
  if (nsp == 1) d.insert(d.end() - 1, 1);
  out.assign(d.size(), 0);
  strides.assign(d.size(), 0);
  int64_t stride = 1;
  for (size_t i = d.size(); i-- > 0;) {
    if (d[i] > INT_MAX || stride > INT_MAX) return false;
    out[i] = static_cast<int>(d[i]);
    strides[i] = static_cast<int>(stride);
    stride *= d[i];
  }
  return stride <= INT_MAX;
}

/// The descriptors of one (de)convolution: x is the convolution's input side, y its output
/// side (for deconvolution: y = the deconvolution's input, x = its output).
struct ConvSetup {
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  bool is_f32 = true;
};

/// Fills `s`; false when cuDNN's legacy API cannot express the problem (asymmetric padding,
/// sizes beyond int), in which case the caller falls back to the host.
bool make_conv_setup(ConvSetup& s, const char* layer, DataType dtype,
                     const std::vector<int64_t>& x_dims, const std::vector<int64_t>& w_dims,
                     const std::vector<int64_t>& y_dims, const std::vector<int64_t>& stride,
                     const std::vector<int64_t>& pad_begin, const std::vector<int64_t>& pad_end,
                     const std::vector<int64_t>& dilation, int64_t groups,
                     bool channels_last = false) {
  const size_t nsp = stride.size();
  if (nsp < 1 || nsp > 3 || pad_begin != pad_end || groups > INT_MAX) return false;
  if (channels_last && (nsp != 2 || x_dims.size() != 4)) return false;
  std::vector<int> xd, xs, yd, ys, wd, ws;
  if (!dnn_dims(x_dims, nsp, xd, xs) || !dnn_dims(y_dims, nsp, yd, ys) ||
      !dnn_dims(w_dims, nsp, wd, ws)) {
    return false;
  }
  if (channels_last) {
    // cuDNN takes NCHW-ordered dims with the NHWC format (filters: KCRS order, KRSC memory).
    for (std::vector<int>* d : {&xd, &yd, &wd}) *d = {(*d)[0], (*d)[3], (*d)[1], (*d)[2]};
  }
  std::vector<int> pads, strides, dils;
  if (nsp == 1) {
    pads.push_back(0);
    strides.push_back(1);
    dils.push_back(1);
  }
  for (size_t d = 0; d < nsp; ++d) {
    if (pad_begin[d] > INT_MAX || stride[d] > INT_MAX || dilation[d] > INT_MAX) return false;
    pads.push_back(static_cast<int>(pad_begin[d]));
    strides.push_back(static_cast<int>(stride[d]));
    dils.push_back(static_cast<int>(dilation[d]));
  }
  s.type = dnn_type(dtype, layer);
  s.is_f32 = dtype == DataType::kF32;
  const int nb = static_cast<int>(xd.size());
  dnn_check(cudnnCreateTensorDescriptor(&s.x.h), layer, "cudnnCreateTensorDescriptor");
  dnn_check(cudnnCreateTensorDescriptor(&s.y.h), layer, "cudnnCreateTensorDescriptor");
  if (channels_last) {
    dnn_check(cudnnSetTensorNdDescriptorEx(s.x.h, CUDNN_TENSOR_NHWC, s.type, nb, xd.data()), layer,
              "cudnnSetTensorNdDescriptorEx (x, NHWC)");
    dnn_check(cudnnSetTensorNdDescriptorEx(s.y.h, CUDNN_TENSOR_NHWC, s.type, nb, yd.data()), layer,
              "cudnnSetTensorNdDescriptorEx (y, NHWC)");
  } else {
    dnn_check(cudnnSetTensorNdDescriptor(s.x.h, s.type, nb, xd.data(), xs.data()), layer,
              "cudnnSetTensorNdDescriptor (x)");
    dnn_check(cudnnSetTensorNdDescriptor(s.y.h, s.type, nb, yd.data(), ys.data()), layer,
              "cudnnSetTensorNdDescriptor (y)");
  }
  dnn_check(cudnnCreateFilterDescriptor(&s.w.h), layer, "cudnnCreateFilterDescriptor");
  dnn_check(cudnnSetFilterNdDescriptor(s.w.h, s.type,
                                       channels_last ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, nb,
                                       wd.data()),
            layer, "cudnnSetFilterNdDescriptor");
  dnn_check(cudnnCreateConvolutionDescriptor(&s.conv.h), layer,
            "cudnnCreateConvolutionDescriptor");
  dnn_check(cudnnSetConvolutionNdDescriptor(s.conv.h, static_cast<int>(pads.size()), pads.data(),
                                            strides.data(), dils.data(), CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT),
            layer, "cudnnSetConvolutionNdDescriptor");
  dnn_check(cudnnSetConvolutionGroupCount(s.conv.h, static_cast<int>(groups)), layer,
            "cudnnSetConvolutionGroupCount");
  // f32 must not silently become TF32 (cuDNN's default math on Ampere and later).
  dnn_check(cudnnSetConvolutionMathType(s.conv.h, s.is_f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH),
            layer, "cudnnSetConvolutionMathType");
  return true;
}

/// A chosen algorithm, the math type it was timed with, and whether it runs through
/// cudnnConvolutionBiasActivationForward (bias, residual and relu fused into the convolution).
struct ConvChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  bool fused = false;
};

/// Whether a found algorithm is acceptable: it ran, fits the workspace, and for f32 keeps f32
/// accuracy (no tensor-core math, no FFT/Winograd transforms).
template <typename Perf>
bool acceptable(const Perf& perf, bool is_f32, bool lossy_transform) {
  if (perf.status != CUDNN_STATUS_SUCCESS || perf.memory > kConvWorkspaceBytes) return false;
  if (!is_f32) return true;
  return perf.mathType != CUDNN_TENSOR_OP_MATH &&
         perf.mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && !lossy_transform;
}

bool lossy(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
bool lossy(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}

/// Picks the first acceptable entry of cuDNN's ranked list (fastest first).
template <typename Perf>
bool pick(const Perf* perf, int count, bool is_f32, ConvChoice& choice) {
  for (int i = 0; i < count; ++i) {
    if (acceptable(perf[i], is_f32, lossy(perf[i].algo))) {
      choice = {static_cast<int>(perf[i].algo), perf[i].mathType};
      return true;
    }
  }
  return false;
}

// EMBER_TACTIC_LOG=1 (tactic_log) prints every convolution tactic timing to stderr: Find's
// entries (algo, math type, status, Find's ms, workspace) with the re-timed ms or why one was
// skipped.

/// Times every acceptable entry of Find's list again (one warm-up launch, then two timed ones
/// behind the stream gate, see time_launches) and keeps in `choice` the fastest that beats
/// `best_ms` (negative: nothing yet). `launch(algo, math)` sets the math type and runs the
/// algorithm once, false when cuDNN refuses it; `fused` says which call it makes.
///
/// Find's own ranking is not used: like any event timing around back-to-back calls, it is
/// paced by the host when the legacy API's tens of microseconds per call exceed the kernel's
/// time. On ResNet-50 it ranked the slow implicit_convolve_sgemm first for 13 to 25 of the 53
/// convolutions (2026-11-23), 57-76% of the GPU time.
template <typename Perf, typename Launch>
void pick_timed(const Perf* perf, int count, bool is_f32, cudaStream_t stream, bool fused,
                Launch launch, ConvChoice& choice, float& best_ms, const std::string& problem) {
  TacticTimer t;
  if (tactic_log()) {
    std::fprintf(stderr, "[ember tactic] %s%s: %d entries\n", problem.c_str(),
                 fused ? " (fused call)" : "", count);
  }
  for (int i = 0; i < count; ++i) {
    float ms = -1.0f;
    const char* skipped = nullptr;
    if (!acceptable(perf[i], is_f32, lossy(perf[i].algo))) {
      skipped = "not acceptable";
    } else if (!launch(perf[i].algo, perf[i].mathType)) {
      skipped = "launch refused";
    } else {
      ms = time_launches(t, stream, [&] { return launch(perf[i].algo, perf[i].mathType); });
      if (ms < 0.0f) skipped = "launch refused";
    }
    if (tactic_log()) {
      std::fprintf(stderr, "[ember tactic]   algo %d math %d status %d find %.4f ms ws %zu: %s%.4f\n",
                   static_cast<int>(perf[i].algo), static_cast<int>(perf[i].mathType),
                   static_cast<int>(perf[i].status), perf[i].time, perf[i].memory,
                   skipped != nullptr ? skipped : "2 runs ms ", skipped != nullptr ? 0.0 : ms);
    }
    if (ms >= 0.0f && (best_ms < 0.0f || ms < best_ms)) {
      best_ms = ms;
      choice = {static_cast<int>(perf[i].algo), perf[i].mathType, fused};
    }
  }
}


// ---- the timing cache's conv problems and choices

/// Appends every field of a params struct to a problem key as "name=value;", so that a field
/// added to the params later is part of the key without a change here.
struct ProblemText {
  std::string& s;
  void put(const char* name, const std::string& v) { s += std::string(name) + "=" + v + ";"; }
  void operator()(const char* name, const int64_t& v) { put(name, std::to_string(v)); }
  void operator()(const char* name, const bool& v) { put(name, v ? "1" : "0"); }
  void operator()(const char* name, const double& v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    put(name, buf);
  }
  void operator()(const char* name, const std::vector<int64_t>& v) { put(name, dims_to_string(v)); }
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  void operator()(const char* name, const E& v) {
    put(name, std::to_string(static_cast<int>(v)));
  }
};

/// The problem key of a (de)convolution: direction, dtype, the x/w/y dims of the layer, and
/// every field of its params, channels_last included (a copy: fields() is not const).
template <class Params>
std::string conv_problem(const char* direction, DataType dtype, const std::vector<int64_t>& x,
                         const std::vector<int64_t>& w, const std::vector<int64_t>& y, Params p) {
  std::string s = std::string("cudnn ") + direction + " " + dtype_name(dtype) +
                  " x=" + dims_to_string(x) + " w=" + dims_to_string(w) +
                  " y=" + dims_to_string(y) + " ";
  ProblemText text{s};
  p.fields(text);
  return s;
}

bool known_math(int m) {
  return m == CUDNN_DEFAULT_MATH || m == CUDNN_TENSOR_OP_MATH ||
         m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION || m == CUDNN_FMA_MATH;
}

/// The cached choice of `problem` in `choice`. A choice loaded from bytes must be well formed,
/// keep the precision rules and pass `valid` (cuDNN reports a workspace size for it on this
/// problem) before it is used; one that fails is not trusted, and the caller finds again.
template <class Algo, class Valid>
bool conv_lookup(TimingCache* cache, const std::string& problem, int algo_count, bool is_f32,
                 ConvChoice& choice, Valid valid) {
  if (cache == nullptr) return false;
  bool checked = false;
  const auto bytes = cache->lookup(timing_device_key(), problem, &checked);
  // 8 bytes {algo, math} (unfused; older caches) or 12 bytes {algo, math, fused}.
  if (!bytes || (bytes->size() != 8 && bytes->size() != 12)) return false;
  int32_t algo = 0, math = 0, fused = 0;
  std::memcpy(&algo, bytes->data(), 4);
  std::memcpy(&math, bytes->data() + 4, 4);
  if (bytes->size() == 12) std::memcpy(&fused, bytes->data() + 8, 4);
  if (algo < 0 || algo >= algo_count || !known_math(math) || (fused != 0 && fused != 1)) {
    return false;
  }
  choice = {algo, static_cast<cudnnMathType_t>(math), fused == 1};
  if (checked) return true;
  if (is_f32 && (lossy(static_cast<Algo>(algo)) || choice.math == CUDNN_TENSOR_OP_MATH ||
                 choice.math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)) {
    return false;
  }
  if (!valid(static_cast<Algo>(algo), choice.math)) return false;
  cache->mark_checked(timing_device_key(), problem);
  return true;
}

/// Stores a choice found by timing (Find) and counts the problem as timed.
void conv_store(TimingCache* cache, const std::string& problem, const ConvChoice& choice) {
  if (cache == nullptr) return;
  const int32_t v[3] = {choice.algo, static_cast<int32_t>(choice.math), choice.fused ? 1 : 0};
  const auto* b = reinterpret_cast<const uint8_t*>(v);
  cache->store(timing_device_key(), problem, std::vector<uint8_t>(b, b + sizeof v));
  cache->note_timed();
}

/// The bias, checked against the output channel count and dtype, or nullptr.
const void* conv_bias(const CudaArgs& a, int64_t channels, DataType dtype, const char* layer) {
  if (!a.has(2)) return nullptr;
  const DeviceTensor& b = a.in(2);
  if (b.numel() != channels || b.dtype != dtype) {
    throw Error(std::string(layer) + " (cuda): bias has " + std::to_string(b.numel()) +
                " elements of " + dtype_name(b.dtype) + ", expected " + std::to_string(channels) +
                " of " + dtype_name(dtype));
  }
  return b.data;
}

/// Output = bias per channel (or zeros): the starting value the library accumulates onto, and
/// the whole result when the input or the weights are empty. A channels-last output has its
/// channels along the last dim.
void init_output(DeviceTensor& out, const void* bias, cudaStream_t stream,
                 bool channels_last = false) {
  if (bias == nullptr) {
    if (out.nbytes() > 0) {
      check(cudaMemsetAsync(out.data, 0, out.nbytes(), stream), "cudaMemsetAsync (conv output)");
    }
    return;
  }
  if (channels_last) {
    const int64_t channels = out.dims.back();
    launch_fill_channel_bias(out.dtype, out.data, bias, channels == 0 ? 0 : out.numel() / channels,
                             channels, 1, stream);
    return;
  }
  const int64_t batch = out.dims[0], channels = out.dims[1];
  const int64_t plane = batch * channels == 0 ? 0 : out.numel() / (batch * channels);
  launch_fill_channel_bias(out.dtype, out.data, bias, batch, channels, plane, stream);
}

/// The epilogue residual input `index` (nullptr when absent); it must match the output.
const void* epilogue_residual(const CudaArgs& a, size_t index, const char* layer) {
  if (!a.has(index)) return nullptr;
  const DeviceTensor& r = a.in(index);
  if (r.dims != a.out().dims || r.dtype != a.out().dtype) {
    throw Error(std::string(layer) + " (cuda): epilogue residual " + dims_to_string(r.dims) + " " +
                dtype_name(r.dtype) + " does not match the output " +
                dims_to_string(a.out().dims) + " " + dtype_name(a.out().dtype));
  }
  return r.data;
}

void check_same_dtype(const CudaArgs& a, const char* layer) {
  const DataType t = a.in(0).dtype;
  if (a.in(1).dtype != t || a.out().dtype != t) {
    throw Error(std::string(layer) + " (cuda): input, weights and output must share one dtype, got " +
                dtype_name(t) + ", " + dtype_name(a.in(1).dtype) + ", " +
                dtype_name(a.out().dtype));
  }
}

/// How a convolution's epilogue may run: timed against the separate pass (default), never fused
/// (EMBER_CONV_FUSED_EPILOGUE=0, for A/B comparisons), or fused whenever cuDNN takes it
/// (=force, so that tests reach the fused call on shapes where it would lose). Read once.
enum class ConvFusion { kTimed, kOff, kForce };
ConvFusion conv_fusion_mode() {
  static const ConvFusion mode = [] {
    const char* e = std::getenv("EMBER_CONV_FUSED_EPILOGUE");
    const std::string v = e != nullptr ? e : "";
    return v == "0" ? ConvFusion::kOff : v == "force" ? ConvFusion::kForce : ConvFusion::kTimed;
  }();
  return mode;
}

/// The descriptors cudnnConvolutionBiasActivationForward takes beyond a ConvSetup's: the bias as
/// [1, C, 1, ...] and the activation (relu, or identity when the epilogue has none).
struct FusedConvSetup {
  TensorDesc bias;
  ActivationDesc act;
};

void make_fused_setup(FusedConvSetup& f, const ConvSetup& s, int64_t channels, size_t rank,
                      bool relu, const char* layer) {
  std::vector<int> dims(std::max<size_t>(rank, 4), 1), strides(dims.size(), 1);
  dims[1] = static_cast<int>(channels);
  strides[0] = static_cast<int>(channels);
  dnn_check(cudnnCreateTensorDescriptor(&f.bias.h), layer, "cudnnCreateTensorDescriptor (bias)");
  dnn_check(cudnnSetTensorNdDescriptor(f.bias.h, s.type, static_cast<int>(dims.size()),
                                       dims.data(), strides.data()),
            layer, "cudnnSetTensorNdDescriptor (bias)");
  dnn_check(cudnnCreateActivationDescriptor(&f.act.h), layer, "cudnnCreateActivationDescriptor");
  dnn_check(cudnnSetActivationDescriptor(f.act.h,
                                         relu ? CUDNN_ACTIVATION_RELU : CUDNN_ACTIVATION_IDENTITY,
                                         CUDNN_PROPAGATE_NAN, 0.0),
            layer, "cudnnSetActivationDescriptor");
}

/// A convolution's workspace. While algorithms are found and timed (the eager first call of a
/// problem the timing cache lacks), a temporary scratch of kConvWorkspaceBytes, so that every
/// candidate may run; for the chosen algorithm, the context's workspace grown to what that
/// algorithm needs. A context thus keeps the largest need among the algorithms it uses (and the
/// GEMMs' kWorkspaceBytes when the plan has a MatrixMultiply), rather than kConvWorkspaceBytes.
struct ConvWorkspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer scratch;
  cudaStream_t stream = nullptr;
  explicit ConvWorkspace(cudaStream_t s) : stream(s) {}
  ConvWorkspace(const ConvWorkspace&) = delete;
  ConvWorkspace& operator=(const ConvWorkspace&) = delete;
  /// Timing scratch for Find and the timed launches (not inside a capture).
  void use_scratch(const std::shared_ptr<DeviceAllocator>& allocator) {
    scratch = DeviceBuffer(allocator, kConvWorkspaceBytes, "convolution tactic timing scratch");
    ptr = scratch.get();
    bytes = kConvWorkspaceBytes;
  }
  /// The context's workspace for the chosen algorithm's `needed` bytes; the scratch goes once
  /// the timed launches are done.
  void settle(Resources& res, size_t needed) {
    release_scratch();
    ptr = needed > 0 ? res.workspace(needed) : nullptr;
    bytes = needed;
  }
  void release_scratch() noexcept {
    if (scratch.get() == nullptr) return;
    cudaStreamSynchronize(stream);  // the timed launches still read it
    scratch.reset();
  }
  ~ConvWorkspace() { release_scratch(); }
};

/// A convolution layer's descriptors, chosen algorithm and workspace need, kept in the
/// context's Resources between calls while the shapes and the epilogue operands stay the same.
struct ConvPrep : PreparedLaunch {
  std::vector<int64_t> x_dims, y_dims;
  bool bias = false, residual = false;
  ConvSetup s;
  FusedConvSetup f;
  ConvChoice choice;
  size_t needed = 0;
  bool matches(const std::vector<int64_t>& x, const std::vector<int64_t>& y, const void* b,
               const void* r) const {
    return x == x_dims && y == y_dims && bias == (b != nullptr) && residual == (r != nullptr);
  }
};

}  // namespace

cudnnDataType_t dnn_type(DataType t, const char* layer) {
  switch (t) {
    case DataType::kF32: return CUDNN_DATA_FLOAT;
    case DataType::kF16: return CUDNN_DATA_HALF;
    case DataType::kBF16: return CUDNN_DATA_BFLOAT16;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string(layer) + " (cuda): dtype " + dtype_name(t) +
              " is not supported (float types only)");
}

namespace {

/// A forward convolution's problem text with its epilogue operands (which tactics are timed
/// with): cuDNN's graph and legacy calls and the depthwise choice all key on it.
std::string conv_fwd_problem(const ConvolutionParams& p, const DeviceTensor& x,
                             const DeviceTensor& w, const DeviceTensor& y, const void* bias,
                             const void* residual) {
  return conv_problem("fwd", x.dtype, x.dims, w.dims, y.dims, p) + "bias=" +
         (bias != nullptr ? "1" : "0") + ";residual=" + (residual != nullptr ? "1" : "0") + ";";
}

/// A Convolution through cuDNN (x, w and y non-empty; bias and residual checked by the caller).
/// False when it ran on the host instead (host_fallback: synchronizes).
bool run_cudnn_conv(const ConvolutionParams& p, const CudaArgs& a, const void* bias,
                    const void* residual) {
  constexpr const char* kLayer = "Convolution";
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& y = a.out();
  // The epilogue sees y as [outer, channels, plane]: NHWC is [N*H*W, C, 1].
  const int64_t channels = p.channels_last ? y.dims.at(3) : y.dims.at(1);
  const int64_t plane = p.channels_last ? 1 : y.numel() / (y.dims[0] * channels);
  // cuDNN's graph API first (conv_graph.cpp): its plan is built once per layer and problem, so
  // a call costs one cudnnBackendExecute instead of the legacy API's per-call rebuild.
  ConvGraphOptions graph_options;
  switch (conv_fusion_mode()) {
    case ConvFusion::kTimed: graph_options.fusion = ConvGraphOptions::Fusion::kTimed; break;
    case ConvFusion::kOff: graph_options.fusion = ConvGraphOptions::Fusion::kOff; break;
    case ConvFusion::kForce: graph_options.fusion = ConvGraphOptions::Fusion::kForce; break;
  }
  graph_options.max_workspace = kConvWorkspaceBytes;
  graph_options.log = tactic_log();
  graph_options.problem = [&] { return conv_fwd_problem(p, x, w, y, bias, residual); };
  std::string refused;
  switch (run_conv_graph(p, a, bias, residual, graph_options, &refused)) {
    case ConvGraphStatus::kRan: return true;
    case ConvGraphStatus::kNotCovered: break;
    case ConvGraphStatus::kRefused:
      // Correct but slower on the layer-by-layer path: said once per context and layer.
      a.res->warn_once(a.layer,
                       (a.layer != nullptr ? a.layer->describe() : std::string("a Convolution")) +
                           ": cuDNN's graph API built no plan for it (" + refused +
                           "); it runs through cuDNN's legacy convolution API instead (more "
                           "host time per call)");
      break;
  }
  // The legacy API. The descriptors and the choice of this layer's last call, when its shapes
  // and epilogue operands are the same again (the layer-by-layer path's common case); else made
  // afresh.
  auto* prep = static_cast<ConvPrep*>(a.res->prepared(a.layer, 0));
  const bool reuse = prep != nullptr && prep->matches(x.dims, y.dims, bias, residual);
  std::unique_ptr<ConvPrep> fresh;
  if (!reuse) {
    fresh = std::make_unique<ConvPrep>();
    prep = fresh.get();
    prep->x_dims = x.dims;
    prep->y_dims = y.dims;
    prep->bias = bias != nullptr;
    prep->residual = residual != nullptr;
    if (!make_conv_setup(prep->s, kLayer, x.dtype, x.dims, w.dims, y.dims, p.stride,
                         p.padding_begin, p.padding_end, p.dilation, p.groups,
                         p.channels_last)) {
      host_fallback(a);  // asymmetric padding or sizes beyond cuDNN's int
      return false;
    }
  }
  ConvSetup& s = prep->s;
  FusedConvSetup& f = prep->f;
  // cuDNN's fused call computes y = act(alpha1 conv(x) + alpha2 z + bias) in f32 and rounds
  // once: the epilogue exactly when it has a bias and its activation is relu or none.
  const bool relu = p.epilogue.fused_activation && p.epilogue.activation == ActivationType::kRelu;
  const bool fusable = conv_fusion_mode() != ConvFusion::kOff && bias != nullptr &&
                       (!p.epilogue.fused_activation || relu);
  if (fusable && !reuse) make_fused_setup(f, s, channels, y.dims.size(), relu, kLayer);
  auto handle = static_cast<cudnnHandle_t>(a.res->cudnn());
  ConvWorkspace ws(a.stream());
  const float alpha = static_cast<float>(p.epilogue.scale), zero = 0.0f, one = 1.0f;
  // One fused launch (the caller passes z and alpha2).
  auto launch_fused = [&](cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math, const void* z,
                          const float* alpha2) {
    return cudnnSetConvolutionMathType(s.conv.h, math) == CUDNN_STATUS_SUCCESS &&
           cudnnConvolutionBiasActivationForward(
               handle, &alpha, s.x.h, x.data, s.w.h, w.data, s.conv.h, algo, ws.ptr,
               ws.bytes, alpha2, s.y.h, z, f.bias.h, bias, f.act.h, s.y.h,
               y.data) == CUDNN_STATUS_SUCCESS;
  };
  // One plain launch, then bias, residual and activation in one pass over the output.
  auto launch_plain = [&](cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math) {
    cudnnStatus_t status = cudnnSetConvolutionMathType(s.conv.h, math);
    if (status == CUDNN_STATUS_SUCCESS) {
      status = cudnnConvolutionForward(handle, &alpha, s.x.h, x.data, s.w.h, w.data, s.conv.h,
                                       algo, ws.ptr, ws.bytes, &zero, s.y.h, y.data);
    }
    if (status == CUDNN_STATUS_SUCCESS) {
      launch_epilogue(y.dtype, y.data, bias, channels, plane, residual, &p.epilogue, y.numel(),
                      a.stream());
    }
    return status;
  };
  if (reuse) {
    ws.settle(*a.res, prep->needed);
    const ConvChoice& choice = prep->choice;
    const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo);
    if (choice.fused && launch_fused(algo, choice.math, residual != nullptr ? residual : y.data,
                                     residual != nullptr ? &one : &zero)) {
      return true;
    }
    dnn_check(launch_plain(algo, choice.math), kLayer, "cudnnConvolutionForward");
    return true;
  }
  TimingCache* cache = a.res->timing_cache();
  // The key names the epilogue's operands and the fusion mode too: the stored choice says
  // whether the call is fused, which was timed with exactly these operands.
  std::string problem = conv_fwd_problem(p, x, w, y, bias, residual);
  if (conv_fusion_mode() != ConvFusion::kTimed) {
    problem += conv_fusion_mode() == ConvFusion::kOff ? "fusion=off;" : "fusion=force;";
  }
  ConvChoice choice;
  const bool found = conv_lookup<cudnnConvolutionFwdAlgo_t>(
      cache, problem, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, s.is_f32, choice,
      [&](cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math) {
        size_t bytes = 0;
        return cudnnSetConvolutionMathType(s.conv.h, math) == CUDNN_STATUS_SUCCESS &&
               cudnnGetConvolutionForwardWorkspaceSize(handle, s.x.h, s.w.h, s.conv.h, s.y.h,
                                                       algo, &bytes) == CUDNN_STATUS_SUCCESS &&
               bytes <= kConvWorkspaceBytes;
      });
  // A fused choice must be one the fused call takes: relu, or identity with the one algorithm
  // cuDNN documents for it (other algorithms are not guaranteed to refuse).
  if (found && choice.fused &&
      (!fusable || (!relu && choice.algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM))) {
    choice.fused = false;
  }
  if (!found) {
    constexpr int kMaxAlgos = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
    int count = 0;
    const bool eager = !capturing(a.stream());
    if (eager) ws.use_scratch(a.res->allocator());
    if (!eager) {
      dnn_check(cudnnGetConvolutionForwardAlgorithm_v7(handle, s.x.h, s.w.h, s.conv.h, s.y.h,
                                                       kMaxAlgos, &count, perf),
                kLayer, "cudnnGetConvolutionForwardAlgorithm_v7");
    } else if (cudnnFindConvolutionForwardAlgorithmEx(
                   handle, s.x.h, x.data, s.w.h, w.data, s.conv.h, s.y.h, y.data, kMaxAlgos,
                   &count, perf, ws.ptr, ws.bytes) != CUDNN_STATUS_SUCCESS) {
      // Find runs real launches on y (overwritten below) with our workspace. A configuration
      // cuDNN does not support (some bf16 cases) fails here: host fallback below.
      count = 0;
    }
    bool picked = false;
    if (eager) {
      // The fused call and the plain one followed by the epilogue pass are timed alike, on the
      // real operands, and the faster wins (identity activation limits the fused call to one
      // algorithm). A residual sharing y's memory would be consumed by the first timed fused
      // launch, so timing then reads z = y with alpha2 = 0 instead.
      float best_ms = -1.0f;
      if (fusable) {
        const bool overlap = residual != nullptr && overlaps(residual, y.data, y.nbytes());
        const void* z = residual != nullptr && !overlap ? residual : y.data;
        const float* alpha2 = residual != nullptr && !overlap ? &one : &zero;
        pick_timed(perf, count, s.is_f32, a.stream(), /*fused=*/true,
                   [&](cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math) {
                     // Identity activation: cuDNN documents only IMPLICIT_PRECOMP_GEMM.
                     return (relu || algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) &&
                            launch_fused(algo, math, z, alpha2);
                   },
                   choice, best_ms, problem);
      }
      if (best_ms < 0.0f || conv_fusion_mode() != ConvFusion::kForce) {
        pick_timed(perf, count, s.is_f32, a.stream(), /*fused=*/false,
                   [&](cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math) {
                     return launch_plain(algo, math) == CUDNN_STATUS_SUCCESS;
                   },
                   choice, best_ms, problem);
      }
      picked = best_ms >= 0.0f;
    } else {
      picked = pick(perf, count, s.is_f32, choice);
    }
    if (!picked) {
      host_fallback(a);  // no algorithm meets the precision and workspace limits
      return false;
    }
    if (eager) conv_store(cache, problem, choice);  // a capture's heuristic guess is not kept
  }
  if (tactic_log()) {
    std::fprintf(stderr, "[ember tactic] %s -> algo %d math %d%s (%s)\n", problem.c_str(),
                 choice.algo, static_cast<int>(choice.math), choice.fused ? " fused" : "",
                 found ? "timing cache" : capturing(a.stream()) ? "heuristic, capturing" : "timed");
  }
  const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo);
  size_t needed = kConvWorkspaceBytes;  // when cuDNN cannot say, what the choice was made with
  if (cudnnSetConvolutionMathType(s.conv.h, choice.math) != CUDNN_STATUS_SUCCESS ||
      cudnnGetConvolutionForwardWorkspaceSize(handle, s.x.h, s.w.h, s.conv.h, s.y.h, algo,
                                              &needed) != CUDNN_STATUS_SUCCESS) {
    needed = kConvWorkspaceBytes;
  }
  ws.settle(*a.res, needed);
  // z = y with alpha2 = 0 when there is no residual: a zero scale means z is not read (cuDNN's
  // scaling-parameter rule), so y's stale contents do not matter. A fused call refused for a
  // choice loaded from a plan made elsewhere runs the plain path below instead.
  if (!(choice.fused && launch_fused(algo, choice.math, residual != nullptr ? residual : y.data,
                                     residual != nullptr ? &one : &zero))) {
    dnn_check(launch_plain(algo, choice.math), kLayer, "cudnnConvolutionForward");
  }
  // Kept for the next call (after the launches: `s` and `f` live in `fresh`, which the
  // Resources may free at once when reuse is off) unless the choice is a capture's untimed
  // heuristic guess.
  if (found || !capturing(a.stream())) {
    prep->choice = choice;
    prep->needed = needed;
    a.res->set_prepared(a.layer, 0, std::move(fresh));
  }
  return true;
}

/// EMBER_DEPTHWISE_CONV (read when a layer's choice is made): "timed" or "1", the direct
/// depthwise kernel (depthwise_conv.cu) and cuDNN are timed per problem and the faster runs;
/// "force" runs the direct kernel wherever it covers the layer; unset, "off" or "0" keeps cuDNN.
/// Off by default: its first version lost to cuDNN on every MobileNetV3 and ConvNeXt problem
/// (H100, 2026-12-06), and the version that issues a row's loads together has not run on a GPU.
enum class DepthwiseMode { kTimed, kOff, kForce };
DepthwiseMode depthwise_mode() {
  const char* e = std::getenv("EMBER_DEPTHWISE_CONV");
  const std::string v = e != nullptr ? e : "";
  return v == "timed" || v == "1" ? DepthwiseMode::kTimed
         : v == "force"           ? DepthwiseMode::kForce
                                  : DepthwiseMode::kOff;
}

/// A layer's depthwise choice, kept while its shapes and epilogue operands stay the same.
struct DepthwiseChoice : PreparedLaunch {
  std::vector<int64_t> x_dims;
  bool bias = false, residual = false, own = false;
};
constexpr int kDepthwiseSlot = 2;  // slot 0 is the legacy API's, 1 the graph API's

/// Runs a depthwise channels_last Convolution on the direct kernel when that is the choice:
/// the layer's kept one, else the timing cache's, else timed here against cuDNN (eager calls
/// only; a capture or a residual that shares y's memory keeps cuDNN, untimed). False when cuDNN
/// should run it.
bool run_depthwise(const ConvolutionParams& p, const CudaArgs& a, const void* bias,
                   const void* residual) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& y = a.out();
  auto* kept = static_cast<DepthwiseChoice*>(a.res->prepared(a.layer, kDepthwiseSlot));
  const bool same = kept != nullptr && kept->x_dims == x.dims &&
                    kept->bias == (bias != nullptr) && kept->residual == (residual != nullptr);
  auto own = [&] {
    launch_depthwise_conv(p, x, w, y, bias, residual, a.stream());
    return true;
  };
  if (same) return kept->own && own();
  const DepthwiseMode mode = depthwise_mode();
  if (mode == DepthwiseMode::kOff || !depthwise_conv_covers(p, x, w, y)) return false;
  if (mode == DepthwiseMode::kForce) return own();
  const std::string problem = "depthwise " + conv_fwd_problem(p, x, w, y, bias, residual);
  TimingCache* cache = a.res->timing_cache();
  std::optional<bool> use_own = lookup_choice(cache, problem);
  if (!use_own) {
    // Repeated launches would add a residual that is y's own memory again and again.
    if (capturing(a.stream()) ||
        (residual != nullptr && overlaps(residual, y.data, y.nbytes()))) {
      return false;
    }
    // cuDNN's first call makes its own choices (and plan); then each side, on the real
    // operands, the best of three pairs of launches behind the stream gate. cuDNN on the host
    // (host_fallback) is no contender, and one that synchronizes on every call (no prepared
    // state kept) cannot be timed behind the gate: both give the direct kernel the layer.
    const bool cudnn_on_device = run_cudnn_conv(p, a, bias, residual);
    own();
    TacticTimer timer;
    float cudnn_ms = cudnn_on_device && a.res->keeps_prepared() ? 1e30f : -1.0f;
    float own_ms = 1e30f;
    for (int rep = 0; rep < 3 && cudnn_ms >= 0.0f; ++rep) {
      const float c = time_launches(timer, a.stream(), [&] {
        return run_cudnn_conv(p, a, bias, residual);
      });
      cudnn_ms = c < 0.0f ? -1.0f : std::min(cudnn_ms, c);
      own_ms = std::min(own_ms, time_launches(timer, a.stream(), own));
    }
    use_own = cudnn_ms < 0.0f || own_ms < cudnn_ms;
    if (tactic_log()) {
      std::fprintf(stderr, "[ember tactic] %s: cuDNN %.4f ms, depthwise kernel %.4f ms (2 runs) -> %s\n",
                   problem.c_str(), cudnn_ms, own_ms, *use_own ? "depthwise kernel" : "cuDNN");
    }
    store_choice(cache, problem, *use_own);
  }
  if (a.res->keeps_prepared()) {
    auto choice = std::make_unique<DepthwiseChoice>();
    choice->x_dims = x.dims;
    choice->bias = bias != nullptr;
    choice->residual = residual != nullptr;
    choice->own = *use_own;
    a.res->set_prepared(a.layer, kDepthwiseSlot, std::move(choice));
  }
  return *use_own && own();
}

}  // namespace

void run(const ConvolutionParams& p, const CudaArgs& a) {
  constexpr const char* kLayer = "Convolution";
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& y = a.out();
  check_same_dtype(a, kLayer);
  // The epilogue sees y as [outer, channels, plane]: NHWC is [N*H*W, C, 1].
  const int64_t channels = p.channels_last ? y.dims.at(3) : y.dims.at(1);
  const void* bias = conv_bias(a, channels, y.dtype, kLayer);
  const void* residual = epilogue_residual(a, 3, kLayer);
  if (y.numel() == 0) return;
  if (x.numel() == 0 || w.numel() == 0) {
    const int64_t plane = p.channels_last ? 1 : y.numel() / (y.dims[0] * channels);
    init_output(y, bias, a.stream(), p.channels_last);
    launch_epilogue(y.dtype, y.data, nullptr, channels, plane, residual, &p.epilogue, y.numel(),
                    a.stream());
    return;
  }
  if (p.channels_last && p.groups > 1 && run_depthwise(p, a, bias, residual)) return;
  (void)run_cudnn_conv(p, a, bias, residual);
}

void run(const DeconvolutionParams& p, const CudaArgs& a) {
  constexpr const char* kLayer = "Deconvolution";
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& y = a.out();
  check_same_dtype(a, kLayer);
  const void* bias = conv_bias(a, y.dims.at(1), y.dtype, kLayer);
  if (y.numel() == 0) return;
  if (x.numel() == 0 || w.numel() == 0) {
    init_output(y, bias, a.stream());
    return;
  }
  // Deconvolution is the data gradient of the convolution from its output (y here) to its input
  // (x here); output_padding lives only in y's size. cuDNN derives x's size from y's by the
  // convolution rule, which holds exactly when output_padding < stride: otherwise (allowed when
  // dilation is larger) fall back.
  const size_t nsp = p.stride.size();
  bool expressible = x.dims.size() == nsp + 2 && y.dims.size() == nsp + 2 &&
                     w.dims.size() == nsp + 2;
  for (size_t d = 0; expressible && d < nsp; ++d) {
    const int64_t out = y.dims[2 + d], in = x.dims[2 + d], k = w.dims[2 + d];
    expressible = (out + p.padding_begin[d] + p.padding_end[d] - p.dilation[d] * (k - 1) - 1) /
                          p.stride[d] + 1 == in;
  }
  ConvSetup s;
  if (!expressible || !make_conv_setup(s, kLayer, x.dtype, y.dims, w.dims, x.dims, p.stride,
                                       p.padding_begin, p.padding_end, p.dilation, p.groups)) {
    host_fallback(a);
    return;
  }
  auto handle = static_cast<cudnnHandle_t>(a.res->cudnn());
  ConvWorkspace ws(a.stream());
  TimingCache* cache = a.res->timing_cache();
  const std::string problem = conv_problem("bwd_data", x.dtype, x.dims, w.dims, y.dims, p);
  ConvChoice choice;
  const bool found = conv_lookup<cudnnConvolutionBwdDataAlgo_t>(
      cache, problem, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, s.is_f32, choice,
      [&](cudnnConvolutionBwdDataAlgo_t algo, cudnnMathType_t math) {
        size_t bytes = 0;
        return cudnnSetConvolutionMathType(s.conv.h, math) == CUDNN_STATUS_SUCCESS &&
               cudnnGetConvolutionBackwardDataWorkspaceSize(handle, s.w.h, s.y.h, s.conv.h,
                                                            s.x.h, algo, &bytes) ==
                   CUDNN_STATUS_SUCCESS &&
               bytes <= kConvWorkspaceBytes;
      });
  if (!found) {
    constexpr int kMaxAlgos = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMaxAlgos];
    int count = 0;
    const bool eager = !capturing(a.stream());
    if (eager) ws.use_scratch(a.res->allocator());
    if (!eager) {
      dnn_check(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, s.w.h, s.y.h, s.conv.h, s.x.h,
                                                            kMaxAlgos, &count, perf),
                kLayer, "cudnnGetConvolutionBackwardDataAlgorithm_v7");
    } else if (cudnnFindConvolutionBackwardDataAlgorithmEx(
                   handle, s.w.h, w.data, s.y.h, x.data, s.conv.h, s.x.h, y.data, kMaxAlgos,
                   &count, perf, ws.ptr, ws.bytes) != CUDNN_STATUS_SUCCESS) {
      count = 0;  // unsupported configuration: host fallback below
    }
    const float zero = 0.0f, one = 1.0f;  // y is written afresh below, after the choice
    bool picked = false;
    if (eager) {
      float best_ms = -1.0f;
      pick_timed(perf, count, s.is_f32, a.stream(), /*fused=*/false,
                 [&](cudnnConvolutionBwdDataAlgo_t algo, cudnnMathType_t math) {
                   return cudnnSetConvolutionMathType(s.conv.h, math) == CUDNN_STATUS_SUCCESS &&
                          cudnnConvolutionBackwardData(handle, &one, s.w.h, w.data, s.y.h, x.data,
                                                       s.conv.h, algo, ws.ptr, ws.bytes,
                                                       &zero, s.x.h,
                                                       y.data) == CUDNN_STATUS_SUCCESS;
                 },
                 choice, best_ms, problem);
      picked = best_ms >= 0.0f;
    } else {
      picked = pick(perf, count, s.is_f32, choice);
    }
    if (!picked) {
      host_fallback(a);
      return;
    }
    if (eager) conv_store(cache, problem, choice);
  }
  dnn_check(cudnnSetConvolutionMathType(s.conv.h, choice.math), kLayer,
            "cudnnSetConvolutionMathType");
  const auto algo = static_cast<cudnnConvolutionBwdDataAlgo_t>(choice.algo);
  size_t needed = kConvWorkspaceBytes;
  if (cudnnGetConvolutionBackwardDataWorkspaceSize(handle, s.w.h, s.y.h, s.conv.h, s.x.h, algo,
                                                   &needed) != CUDNN_STATUS_SUCCESS) {
    needed = kConvWorkspaceBytes;
  }
  ws.settle(*a.res, needed);
  init_output(y, bias, a.stream());
  const float alpha = 1.0f, beta = bias != nullptr ? 1.0f : 0.0f;
  dnn_check(cudnnConvolutionBackwardData(handle, &alpha, s.w.h, w.data, s.y.h, x.data, s.conv.h,
                                         algo, ws.ptr, ws.bytes, &beta, s.x.h, y.data),
            kLayer, "cudnnConvolutionBackwardData");
}

void run(const MatrixMultiplyParams& p, const CudaArgs& a) {
  const DeviceTensor& at = a.in(0);
  const DeviceTensor& bt = a.in(1);
  DeviceTensor& ot = a.out();
  if (at.dtype != bt.dtype || ot.dtype != at.dtype) {
    throw Error(std::string("MatrixMultiply (cuda): operands and output must share one dtype, got ") +
                dtype_name(at.dtype) + ", " + dtype_name(bt.dtype) + ", " + dtype_name(ot.dtype));
  }
  const size_t ra = at.dims.size(), rb = bt.dims.size();
  // A vector a is one row [1, K]; a vector b one column [K, 1]; their flags have no effect.
  const bool ta = ra >= 2 && p.transpose_a, tb = rb >= 2 && p.transpose_b;
  const int64_t m = ra >= 2 ? at.dims[ra - (ta ? 1 : 2)] : 1;
  const int64_t k = ra >= 2 ? at.dims[ra - (ta ? 2 : 1)] : at.dims[0];
  const int64_t n = rb >= 2 ? bt.dims[rb - (tb ? 2 : 1)] : 1;
  const std::vector<int64_t> a_batch(at.dims.begin(), at.dims.end() - std::min<size_t>(ra, 2));
  const std::vector<int64_t> b_batch(bt.dims.begin(), bt.dims.end() - std::min<size_t>(rb, 2));
  const size_t out_batch_rank = ot.dims.size() - (ra >= 2 ? 1 : 0) - (rb >= 2 ? 1 : 0);
  const std::vector<int64_t> out_batch(
      ot.dims.begin(), ot.dims.begin() + static_cast<std::ptrdiff_t>(out_batch_rank));
  const int64_t batch = product(out_batch);
  if (ot.numel() == 0) return;
  const void* bias = nullptr;
  if (a.has(2)) {
    const DeviceTensor& b = a.in(2);
    if (b.dtype != ot.dtype || b.dims.size() != 1 || ot.dims.empty() || b.dims[0] != ot.dims.back()) {
      throw Error("MatrixMultiply (cuda): epilogue bias " + dims_to_string(b.dims) +
                  " does not match the output's last dim of " + dims_to_string(ot.dims));
    }
    bias = b.data;
  }
  const void* residual = epilogue_residual(a, 3, "MatrixMultiply");
  const Epilogue& e = p.epilogue;
  // cuBLASLt applies the bias, and relu or tanh-approximated GELU, itself (only without a
  // residual, whose order against C is not specified; its GELU epilogue is the tanh form, which
  // CudaLinear.MatmulGeluTanhEpilogue checks against the CPU reference); anything else (the erf
  // GELU included) runs as one epilogue pass afterwards.
  Gemm::Act lt_act = Gemm::Act::kNone;
  if (e.fused_activation && residual == nullptr) {
    if (e.activation == ActivationType::kRelu) lt_act = Gemm::Act::kRelu;
    if (e.activation == ActivationType::kGeluTanh) lt_act = Gemm::Act::kGeluTanh;
  }
  const bool act_after = e.fused_activation && lt_act == Gemm::Act::kNone;
  const int64_t cols = ot.dims.empty() ? 1 : ot.dims.back();
  if (k == 0) {  // an empty sum: zeros (all-zero bits in every float dtype)
    check(cudaMemsetAsync(ot.data, 0, ot.nbytes(), a.stream()), "cudaMemsetAsync (matmul k=0)");
    launch_epilogue(ot.dtype, ot.data, bias, cols, 1, residual, &e, ot.numel(), a.stream());
    return;
  }
  Gemm g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = at.data;
  g.lda = ra >= 2 ? at.dims[ra - 1] : k;
  g.b = bt.data;
  // A vector b is a [K, 1] column: leading dim 1.
  g.ldb = rb >= 2 ? bt.dims[rb - 1] : 1;
  g.c = ot.data;
  g.ldc = n;
  g.bias = bias;
  g.residual = residual;
  g.act = lt_act;
  g.scale = static_cast<float>(e.scale);
  // The activation cuBLASLt does not apply, once every GEMM below is enqueued.
  auto finish = [&] {
    if (act_after) {
      launch_epilogue(ot.dtype, ot.data, nullptr, cols, 1, nullptr, &e, ot.numel(), a.stream());
    }
  };
  const int64_t a_count = product(a_batch), b_count = product(b_batch);
  if (!ta && ra >= 2 && b_count == 1) {
    // One shared b: a's batch entries are consecutive row blocks of one [batch*M, K] matrix.
    g.m = batch * m;
    run_gemm(g, at.dtype, a, /*reusable=*/true);
    finish();
    return;
  }
  // Each operand's batch is either broadcast whole (stride 0) or equal to the output's (a
  // broadcast-compatible batch with the output's element count is the output's batch): one
  // strided-batched call, in chunks of what cuBLASLt's int32 batch count holds.
  if ((a_count == 1 || a_count == batch) && (b_count == 1 || b_count == batch)) {
    const size_t esize = dtype_size(at.dtype);
    g.stride_a = a_count == 1 ? 0 : m * k;
    g.stride_b = b_count == 1 ? 0 : k * n;
    g.stride_c = m * n;
    for (int64_t first = 0; first < batch; first += INT_MAX) {
      Gemm chunk = g;
      chunk.batch = std::min<int64_t>(batch - first, INT_MAX);
      chunk.a = static_cast<const uint8_t*>(at.data) + first * g.stride_a * esize;
      chunk.b = static_cast<const uint8_t*>(bt.data) + first * g.stride_b * esize;
      chunk.c = static_cast<uint8_t*>(ot.data) + first * g.stride_c * esize;
      if (residual != nullptr) {
        chunk.residual = static_cast<const uint8_t*>(residual) + first * g.stride_c * esize;
      }
      run_gemm(chunk, at.dtype, a, /*reusable=*/batch <= INT_MAX);
    }
    finish();
    return;
  }
  // Mixed broadcasting ([2, 1] x [1, 3] batches): one GEMM per output batch entry, walking the
  // operands' broadcast offsets like the CPU kernel.
  const size_t esize = dtype_size(at.dtype);
  const size_t rank = out_batch.size();
  std::vector<int64_t> as(rank, 0), bs(rank, 0);
  {
    int64_t sa = 1, sb = 1;
    for (size_t d = rank; d-- > 0;) {
      const size_t oa = rank - d, ob = rank - d;  // distance from the end
      if (oa <= a_batch.size()) {
        const int64_t dim = a_batch[a_batch.size() - oa];
        as[d] = dim == 1 ? 0 : sa;
        sa *= dim;
      }
      if (ob <= b_batch.size()) {
        const int64_t dim = b_batch[b_batch.size() - ob];
        bs[d] = dim == 1 ? 0 : sb;
        sb *= dim;
      }
    }
  }
  for (int64_t i = 0; i < batch; ++i) {
    int64_t rem = i, a_off = 0, b_off = 0;  // in matrices
    for (size_t d = rank; d-- > 0;) {
      const int64_t idx = rem % out_batch[d];
      rem /= out_batch[d];
      a_off += idx * as[d];
      b_off += idx * bs[d];
    }
    Gemm one = g;
    one.a = static_cast<const uint8_t*>(at.data) + a_off * m * k * esize;
    one.b = static_cast<const uint8_t*>(bt.data) + b_off * k * n * esize;
    one.c = static_cast<uint8_t*>(ot.data) + i * m * n * esize;
    if (residual != nullptr) one.residual = static_cast<const uint8_t*>(residual) + i * m * n * esize;
    run_gemm(one, at.dtype, a, /*reusable=*/false);
  }
  finish();
}

}  // namespace ember::engine::cuda
