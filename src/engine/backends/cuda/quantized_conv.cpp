// QuantizedConvolution on the GPU. Two paths for 1-d and 2-d convolutions with groups = 1, and
// a direct kernel for the rest (INT8 NHWC layers first try cuDNN's implicit-GEMM graph,
// run_graph below, and with EMBER_QCONV=igemm Ember's own implicit-GEMM kernel,
// qconv_implicit_gemm.cu, before that):
//
// 1. The INT8 GEMM (the default): im2col, then cuBLASLt's IMMA tensor-core GEMM, then the
//    epilogue, all kernels of quantize.cu or cuBLASLt:
//
//   x NCHW int8 --to NHWC--> [N, H, W, C4] --im2col--> col [N * OH * OW, R * S * C4] (taps in
//                the padding as zeros; a 1x1 convolution with stride 1 and no padding skips it)
//   w KCRS int8 --pack--> KRSC [K4, R * S * C4] (once per context: a prepared launch)
//   cuBLASLt: acc int32 [N * OH * OW, K4] = col w^T, exact
//   epilogue: out NCHW = act(acc * x_scale * w_scale[k] * scale + bias[k] + residual) in the
//             float type, requantized to int8 when the layer says so
//
//    On an H100, cuDNN's legacy INT8 convolution below runs CUDA-core (dp4a) kernels: ResNet-50
//    b32 spent 15.2 of 28.4 ms in them (bench/results/2026-12-05-h100-int8-fp8.md); the GEMM
//    runs on the tensor cores. EMBER_QCONV=cudnn selects path 2 instead (the A/B switch).
// 2. cuDNN's INT8 convolution (legacy API, "INT8_EXT_CONFIG": INT8 NHWC x and w, INT32
//    compute, FLOAT output), between two small kernels of quantize.cu:
//
//   x NCHW int8 --pack--> NHWC [N, H + pads, W + pads, C4], the padding written as zeros
//   w KCRS int8 --pack--> KRSC [K4, R, S, C4]
//   cuDNN: y f32 NHWC [N, OH, OW, K4] = the exact int32 sums (no padding left to apply)
//   epilogue: as above
//
// Both want channel counts that are multiples of 4 (and cuDNN symmetric padding); rather than
// refusing the RGB first layer of every image model (C = 3), the packing rounds C and K up to
// multiples of 4 with zero channels and writes the padding out as zeros, both exact because a
// quantized zero is a real zero (the quantization is symmetric). The scales stay on the device
// (read by the epilogue kernel, so CUDA graphs stay valid); the libraries' alpha is a host
// scalar and is left at 1.
//
// Asymmetric activations (uint8, or a zero point; PT2E's default): the packing shifts uint8 into
// int8 (-128) and fills the padding with the shifted zero point, and the epilogue subtracts
// (zero_point - shift) * sum_w[k], which makes the sum over (x - zero_point) * w exact with the
// padding a real zero; the direct kernel subtracts the zero point as it sums.
//
// FP8 E4M3 convolutions take path 1 with cuBLASLt's FP8 GEMM (f32 sums; channels padded to
// multiples of 16, which that GEMM wants), and the direct kernel otherwise. Under channels_last
// with K a multiple of 16 and a 16-bit output type, the GEMM writes the output itself (bias and
// relu in cuBLASLt's epilogue; fp8_gemm_to_output), or, when the layer requantizes, its 16-bit
// value for one quantizing pass (fp8_gemm_requantized). Per-channel weight scales (ResNet's
// batch norms fold into them) take cuBLASLt's outer-vector scale mode there, with the
// activation's scale spread over the rows; where cuBLASLt has no such kernel, the f32 sums.
//
// What neither path covers (3-d, grouped convolutions; a problem both libraries refuse at run
// time) runs in quantize.cu's direct int8 kernel: the same int32 sums and epilogue as the CPU
// reference, slower. The back end names such layers "cuda.QuantizedConvolution.direct" and
// says why (qconv_direct_reason), which the builder logs as a degradation; at run time each
// layer that takes the direct kernel is reported once per context (Resources::warn_once, which
// the embedder hands to the "ember" logger), the libraries' refusals included.
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "backends/cuda/conv_graph.h"
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/quantize_kernels.h"

namespace ember::engine::cuda {

namespace {

using TensorDesc = Owned<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor>;
using FilterDesc = Owned<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor>;
using ConvDesc = Owned<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor>;

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
int64_t round_up4(int64_t v) { return (v + 3) / 4 * 4; }
int64_t round_up16(int64_t v) { return (v + 15) / 16 * 16; }

/// The largest scratch (im2col matrix, packed weight, sums) the GEMM paths take for one layer;
/// beyond it (a large batch through a wide stem) the layer takes the next path instead of
/// growing the context's workspace by gigabytes.
constexpr size_t kMaxGemmScratch = size_t{2} << 30;

bool scratch_fits(size_t bytes, std::string& why) {
  if (bytes <= kMaxGemmScratch) return true;
  why = "its im2col scratch would take " + std::to_string(bytes >> 20) + " MiB (more than " +
        std::to_string(kMaxGemmScratch >> 20) + ")";
  return false;
}


bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/// The cuDNN path; false when cuDNN refuses the problem (nothing but workspace was written
/// then), with the refusal in `why`.
bool run_cudnn(const QuantizedConvolutionParams& p, const CudaArgs& a, const QConvGeometry& g,
               ProductEpilogue e, std::string& why) {
  if (g.channels_last) {
    why = "cuDNN's INT8 path here packs NCHW activations, and this layer's are NHWC";
    return false;
  }
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& out = a.out();
  const size_t nsp = x.dims.size() - 2;
  // The 2-d view (a 1-d convolution is one of height 1): geometry dims 1 and 2.
  const int64_t hp = g.in[1] + g.pad[1] + (nsp == 2 ? p.padding_end[0] : 0);
  const int64_t wp = g.in[2] + g.pad[2] + p.padding_end[nsp - 1];
  const int64_t c4 = round_up4(g.in_channels), k4 = round_up4(g.out_channels);
  for (const int64_t v : {g.batch, hp, wp, c4, k4, g.kernel[1], g.kernel[2], g.out[1], g.out[2],
                          g.stride[1], g.stride[2], g.dilation[1], g.dilation[2],
                          g.batch * hp * wp * c4, g.batch * g.out[1] * g.out[2] * k4}) {
    if (!fits_int(v)) {
      why = "a size does not fit cuDNN's int";
      return false;
    }
  }
  TensorDesc xd, yd;
  FilterDesc wd;
  ConvDesc cd;
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  if (cudnnCreateTensorDescriptor(&xd.h) != CUDNN_STATUS_SUCCESS ||
      cudnnCreateTensorDescriptor(&yd.h) != CUDNN_STATUS_SUCCESS ||
      cudnnCreateFilterDescriptor(&wd.h) != CUDNN_STATUS_SUCCESS ||
      cudnnCreateConvolutionDescriptor(&cd.h) != CUDNN_STATUS_SUCCESS ||
      cudnnSetTensor4dDescriptor(xd.h, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT8, i(g.batch), i(c4),
                                 i(hp), i(wp)) != CUDNN_STATUS_SUCCESS ||
      cudnnSetFilter4dDescriptor(wd.h, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, i(k4), i(c4),
                                 i(g.kernel[1]), i(g.kernel[2])) != CUDNN_STATUS_SUCCESS ||
      cudnnSetConvolution2dDescriptor(cd.h, 0, 0, i(g.stride[1]), i(g.stride[2]),
                                      i(g.dilation[1]), i(g.dilation[2]),
                                      CUDNN_CROSS_CORRELATION,
                                      CUDNN_DATA_INT32) != CUDNN_STATUS_SUCCESS ||
      cudnnSetConvolutionMathType(cd.h, CUDNN_TENSOR_OP_MATH) != CUDNN_STATUS_SUCCESS ||
      cudnnSetTensor4dDescriptor(yd.h, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, i(g.batch), i(k4),
                                 i(g.out[1]), i(g.out[2])) != CUDNN_STATUS_SUCCESS) {
    why = "cuDNN refused the INT8 descriptors";
    return false;
  }
  // cuDNN's output size must be the layer's (it is: the padding is in the packed input).
  int on = 0, oc = 0, oh = 0, ow = 0;
  if (cudnnGetConvolution2dForwardOutputDim(cd.h, xd.h, wd.h, &on, &oc, &oh, &ow) !=
          CUDNN_STATUS_SUCCESS ||
      oh != g.out[1] || ow != g.out[2]) {
    why = "cuDNN's output size differs from the layer's";
    return false;
  }
  auto handle = static_cast<cudnnHandle_t>(a.res->cudnn());
  // cuDNN documents IMPLICIT_PRECOMP_GEMM for INT8_EXT_CONFIG; IMPLICIT_GEMM is the spare.
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  size_t ws_bytes = 0;
  if (cudnnGetConvolutionForwardWorkspaceSize(handle, xd.h, wd.h, cd.h, yd.h, algo, &ws_bytes) !=
      CUDNN_STATUS_SUCCESS) {
    algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    const cudnnStatus_t st =
        cudnnGetConvolutionForwardWorkspaceSize(handle, xd.h, wd.h, cd.h, yd.h, algo, &ws_bytes);
    if (st != CUDNN_STATUS_SUCCESS) {
      why = std::string("no INT8 algorithm: ") + cudnnGetErrorString(st);
      return false;
    }
  }
  // Asymmetric activations: cuDNN sums the (uint8-shifted) values with the padding holding the
  // shifted zero point; the epilogue subtracts (zero_point - offset) * sum_w[k].
  const bool u8 = x.dtype == DataType::kU8;
  const auto* zp = a.has(6) ? static_cast<const int32_t*>(a.in(6).data) : nullptr;
  const bool asymmetric = u8 || zp != nullptr;
  const size_t x_bytes = aligned(static_cast<size_t>(g.batch * hp * wp * c4));
  const size_t w_bytes = aligned(static_cast<size_t>(k4 * g.kernel[1] * g.kernel[2] * c4));
  const size_t y_bytes =
      aligned(static_cast<size_t>(g.batch * g.out[1] * g.out[2] * k4) * sizeof(float));
  const size_t sums_bytes =
      asymmetric ? aligned(static_cast<size_t>(g.out_channels) * sizeof(int32_t)) : 0;
  auto* base = static_cast<uint8_t*>(
      a.res->workspace(x_bytes + w_bytes + y_bytes + sums_bytes + ws_bytes));
  auto* xp = reinterpret_cast<int8_t*>(base);
  auto* wpk = reinterpret_cast<int8_t*>(base + x_bytes);
  auto* y = reinterpret_cast<float*>(base + x_bytes + w_bytes);
  auto* sums = reinterpret_cast<int32_t*>(base + x_bytes + w_bytes + y_bytes);
  void* ws = ws_bytes > 0 ? base + x_bytes + w_bytes + y_bytes + sums_bytes : nullptr;
  launch_qconv_pack_input(x.data, u8, zp, xp, g, hp, wp, c4, a.stream());
  launch_qconv_pack_weight(static_cast<const int8_t*>(w.data), wpk, g, k4, c4, a.stream());
  if (asymmetric) {
    launch_weight_row_sums(static_cast<const int8_t*>(w.data), g.out_channels,
                           w.numel() / std::max<int64_t>(g.out_channels, 1), sums, a.stream());
    e.weight_sums = sums;
    e.zero_point = zp;
    e.zero_point_offset = u8 ? 128 : 0;
  }
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t st = cudnnConvolutionForward(handle, &one, xd.h, xp, wd.h, wpk, cd.h, algo,
                                                   ws, ws_bytes, &zero, yd.h, y);
  if (st != CUDNN_STATUS_SUCCESS) {
    // The packing kernels wrote only workspace: the direct kernel starts afresh.
    why = std::string("cudnnConvolutionForward: ") + cudnnGetErrorString(st);
    return false;
  }
  launch_qconv_epilogue(y, /*int32_acc=*/false, out.data, p.out, g, k4, e, a.stream());
  return true;
}

/// The packed weight (KRSC, channels padded) and, for asymmetric activations, its row sums of a
/// GEMM-path layer: made on the layer's first (eager) call and reused by later calls and the
/// graphs captured from them, since the weight is a constant of the engine. Before, every call
/// packed it again: 53 launches and 0.32 ms of ResNet-50's 10.4 ms at b32 (H100 profile,
/// bench/results/2026-12-05-h100-session23.md).
struct PackedWeight final : PreparedLaunch {
  const void* source = nullptr;
  int64_t kp = 0, cp = 0;
  DeviceBuffer packed, sums;
};

/// The packed weight of this call: the prepared one, or packed now and kept; nullptr when it
/// must be packed into the workspace instead (preparing off, a capture running, or a weight
/// that is not a constant of the engine, whose contents may change between calls).
const PackedWeight* packed_weight(const CudaArgs& a, const QConvGeometry& g, int64_t kp,
                                  int64_t cp, int64_t kd, bool asymmetric) {
  if (a.layer == nullptr || !a.res->keeps_prepared()) return nullptr;
  const Layer* producer = a.layer->input(1)->producer();
  if (producer == nullptr || producer->kind() != LayerKind::kConstant) return nullptr;
  const void* w = a.in(1).data;
  auto* prep = static_cast<PackedWeight*>(a.res->prepared(a.layer, 0));
  if (prep != nullptr && prep->source == w && prep->kp == kp && prep->cp == cp &&
      (prep->sums.get() != nullptr) == asymmetric) {
    return prep;
  }
  if (capturing(a.stream())) return nullptr;  // no allocation inside a capture
  if (prep != nullptr) {
    // Work already queued may read the one replaced, and captured graphs point at it: both
    // are done with it before it is freed.
    check(cudaStreamSynchronize(a.stream()), "cudaStreamSynchronize (packed weight)");
    a.res->invalidate_captures();
  }
  auto fresh = std::make_unique<PackedWeight>();
  fresh->source = w;
  fresh->kp = kp;
  fresh->cp = cp;
  fresh->packed = DeviceBuffer(a.res->allocator(), static_cast<size_t>(kp * kd),
                               "quantized convolution packed weight");
  if (asymmetric) {
    fresh->sums = DeviceBuffer(a.res->allocator(),
                               static_cast<size_t>(g.out_channels) * sizeof(int32_t),
                               "quantized convolution weight sums");
  }
  PackedWeight* made = fresh.get();
  a.res->set_prepared(a.layer, 0, std::move(fresh));
  launch_qconv_pack_weight(static_cast<const int8_t*>(w), static_cast<int8_t*>(made->packed.get()),
                           g, kp, cp, a.stream());
  if (asymmetric) {
    launch_weight_row_sums(static_cast<const int8_t*>(w), g.out_channels,
                           a.in(1).numel() / std::max<int64_t>(g.out_channels, 1),
                           static_cast<int32_t*>(made->sums.get()), a.stream());
  }
  return made;
}

/// Path 1: im2col and cuBLASLt's GEMM; false when cuBLASLt refuses (only workspace written).
/// INT8 (int8 or uint8 x) pads the channels to multiples of 4 and sums in int32; FP8 E4M3 pads
/// them to multiples of 16 (what its GEMM wants) and sums in f32. The packing kernels copy
/// bytes, so E4M3 values pass through them and byte 0 (+0) pads.
///
///   x NCHW --to_nhwc--> xn [N, H, W, cp] --im2col--> col [N * OH * OW, R * S * cp]
///
/// A 1x1 convolution with stride 1 and no padding has xn as its col. Under channels_last x is
/// NHWC already: xn is x itself when its channels are the GEMM's (no copy), and the epilogue
/// writes NHWC rows without a transpose. Before, one kernel wrote
/// col byte by byte straight from NCHW (reads strided by H * W): 6.1 of ResNet-50's 10.4 ms.
bool run_gemm(const QuantizedConvolutionParams& p, const CudaArgs& a, const QConvGeometry& g,
              ProductEpilogue e, std::string& why) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  const bool fp8 = x.dtype == DataType::kF8E4M3;
  const int64_t cp = fp8 ? round_up16(g.in_channels) : round_up4(g.in_channels);
  const int64_t kp = fp8 ? round_up16(g.out_channels) : round_up4(g.out_channels);
  const int64_t kd = g.kernel[1] * g.kernel[2] * cp;
  const int64_t m = g.batch * g.out[1] * g.out[2];
  const bool u8 = x.dtype == DataType::kU8;
  const auto* zp = a.has(6) ? static_cast<const int32_t*>(a.in(6).data) : nullptr;
  const bool asymmetric = u8 || zp != nullptr;
  const bool pointwise = g.kernel[1] == 1 && g.kernel[2] == 1 && g.stride[1] == 1 &&
                         g.stride[2] == 1 && g.pad[1] == 0 && g.pad[2] == 0 &&
                         g.out[1] == g.in[1] && g.out[2] == g.in[2];
  // An NHWC x whose channels are already the GEMM's (int8 or FP8, C a multiple of 4 or 16) is
  // its operand as it is, when 16-byte aligned (the arena's tensors are; a caller's input may
  // not be); otherwise an NHWC copy with the channels padded (and uint8 shifted).
  const bool x_ready = g.channels_last && g.in_channels == cp && !u8 &&
                       reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
  // cuBLASLt's workspace, then NHWC x (unless ready), the im2col matrix (not for a pointwise
  // layer), room for the packed weight and its row sums (used when they are not prepared),
  // and the sums (int32 or f32), each 256-byte aligned.
  const size_t xn_bytes =
      x_ready ? 0 : aligned(static_cast<size_t>(g.batch * g.in[1] * g.in[2] * cp));
  const size_t col_bytes = pointwise ? 0 : aligned(static_cast<size_t>(m * kd));
  const size_t w_bytes = aligned(static_cast<size_t>(kp * kd));
  const size_t sums_bytes =
      asymmetric ? aligned(static_cast<size_t>(g.out_channels) * sizeof(int32_t)) : 0;
  const size_t acc_bytes = aligned(static_cast<size_t>(m * kp) * 4);
  // FP8 with per-channel weight scales (a batch norm folded into them) straight into an NHWC
  // output: the activation's scale spread over the GEMM's m rows for cuBLASLt's outer-vector
  // scale mode (fp8_gemm_to_output).
  const bool direct_output = fp8 && g.channels_last && kp == g.out_channels;
  const size_t rows_bytes =
      direct_output && e.per_channel ? aligned(static_cast<size_t>(m) * sizeof(float)) : 0;
  if (!scratch_fits(xn_bytes + col_bytes + w_bytes + sums_bytes + acc_bytes + rows_bytes, why)) {
    return false;
  }
  const PackedWeight* prep = packed_weight(a, g, kp, cp, kd, asymmetric);
  auto* base = static_cast<uint8_t*>(a.res->workspace(kInt8GemmWorkspaceBytes + xn_bytes +
                                                      col_bytes + w_bytes + sums_bytes +
                                                      acc_bytes + rows_bytes));
  auto* scratch = reinterpret_cast<int8_t*>(base + kInt8GemmWorkspaceBytes);
  int8_t* xn = x_ready ? static_cast<int8_t*>(const_cast<void*>(x.data)) : scratch;
  int8_t* col = pointwise ? xn : scratch + xn_bytes;
  auto* wpk = scratch + xn_bytes + col_bytes;
  auto* sums = reinterpret_cast<int32_t*>(wpk + w_bytes);
  void* acc = wpk + w_bytes + sums_bytes;
  auto* row_scales =
      rows_bytes > 0 ? reinterpret_cast<float*>(static_cast<uint8_t*>(acc) + acc_bytes) : nullptr;
  if (!g.channels_last) {
    launch_qconv_to_nhwc(x.data, u8, xn, g, cp, a.stream());
  } else if (!x_ready) {
    launch_qconv_pad_channels(x.data, u8, xn, g.batch * g.in[1] * g.in[2], g.in_channels, cp,
                              a.stream());
  }
  if (!pointwise && !launch_qconv_im2col_nhwc(xn, u8, zp, col, g, cp, a.stream())) {
    why = "its im2col matrix has more than 2^31 words";
    return false;
  }
  if (prep != nullptr) {
    wpk = static_cast<int8_t*>(prep->packed.get());
    sums = static_cast<int32_t*>(prep->sums.get());
  } else {
    launch_qconv_pack_weight(static_cast<const int8_t*>(w.data), wpk, g, kp, cp, a.stream());
    if (asymmetric) {
      launch_weight_row_sums(static_cast<const int8_t*>(w.data), g.out_channels,
                             w.numel() / std::max<int64_t>(g.out_channels, 1), sums, a.stream());
    }
  }
  if (asymmetric) {
    e.weight_sums = sums;
    e.zero_point = zp;
    e.zero_point_offset = u8 ? 128 : 0;
  }
  // FP8 into an NHWC output whose channels are the GEMM's columns (K a multiple of 16): the
  // GEMM's rows are the output's rows, so cuBLASLt writes the finished 16-bit values itself
  // (scales, bias, relu in its epilogue) and no f32 sums go through memory: 8 bytes an output
  // element fewer (ResNet-50 b32: ~355 M of them).
  if (direct_output && fp8_gemm_to_output(a, col, wpk, m, kp, kd, a.out().data, p.out, e,
                                           p.epilogue, base, row_scales)) {
    return true;
  }
  // The same for a layer that requantizes (the next convolution's FP8 input): cuBLASLt writes
  // the 16-bit value into the sums' scratch and one pass quantizes it (2 + 2 + 1 bytes an
  // element instead of the f32 sums' 4 + 4 + 1).
  if (direct_output && fp8_gemm_requantized(a, col, wpk, m, kp, kd, acc, a.out().data, p.out, e,
                                             base, row_scales)) {
    return true;
  }
  const bool ran = fp8 ? fp8_gemm_tn(a, col, wpk, m, kp, kd, static_cast<float*>(acc), base)
                       : int8_gemm_tn(a, col, wpk, m, kp, kd, static_cast<int32_t*>(acc), base);
  if (!ran) {
    why = std::string("cuBLASLt offers no ") + (fp8 ? "FP8" : "INT8") + " GEMM for [" +
          std::to_string(m) + ", " + std::to_string(kd) + "] x [" + std::to_string(kp) + ", " +
          std::to_string(kd) + "]^T" + (fp8 ? " (FP8 needs sm_89+)" : "");
    return false;
  }
  launch_qconv_epilogue(acc, /*int32_acc=*/!fp8, a.out().data, p.out, g, kp, e, a.stream());
  return true;
}

/// The implicit-GEMM path (conv_graph.cpp's run_quantized_conv_graph): cuDNN's graph of the
/// convolution of x and w as they are, with the scales, bias, residual, relu and
/// requantization in its epilogue, one kernel writing y. No im2col matrix, no sums in memory, no
/// pass after it. Taken under channels_last, where x [N, H, W, C] and w [K, R, S, C] are the
/// operands cuDNN reads, for 2-d layers with symmetric activations whose channels are
/// multiples of 16 (FP8) or 4 (INT8) and a relu or no activation; a requantization to int8 is
/// clamped and rounded in the graph as the reference does (conv_graph.cpp's epilogue_steps),
/// and an int8 residual is read with its scale (only into an int8 output: see below).
/// FP8 layers come here only with EMBER_QCONV=graph (graph_first). False
/// (nothing enqueued) where it does not apply or cuDNN has no engine for the graph (remembered
/// per layer and problem), with `why` set in the second case.
bool run_graph(const QuantizedConvolutionParams& p, const CudaArgs& a, const QConvGeometry& g,
               const ProductEpilogue& e, std::string& why) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& out = a.out();
  const bool fp8 = x.dtype == DataType::kF8E4M3;
  const int64_t multiple = fp8 ? 16 : 4;
  const bool relu_or_none = !e.activation || e.type == ActivationType::kRelu;
  // An int8 shortcut into a float output found no cuDNN engine (an H200, cuDNN 9.19,
  // 2026-12-07: "1x1 f16 + int8 residual + relu"; with a requantization it has one), so such a
  // layer (ResNet's last block, before the pooling) takes the GEMM path without asking.
  const bool int8_residual_to_float = e.residual_scale != nullptr && e.out_scale == nullptr;
  if (!p.channels_last || x.dims.size() != 4 || x.dtype == DataType::kU8 || a.has(6) ||
      g.in_channels % multiple != 0 || g.out_channels % multiple != 0 || !relu_or_none ||
      int8_residual_to_float || (e.activation && (e.alpha != 0.0f || e.beta != 0.0f))) {
    return false;
  }
  ConvGraphOptions options;
  options.fusion = ConvGraphOptions::Fusion::kForce;
  options.max_workspace = kInt8GemmWorkspaceBytes;
  options.log = tactic_log();
  options.problem = [&] {
    std::string s = std::string("qconv ") + dtype_name(x.dtype) + "->" + dtype_name(out.dtype) +
                    " float=" + dtype_name(p.out) +
                    " x=" + dims_to_string(x.dims) + " w=" + dims_to_string(w.dims) +
                    " y=" + dims_to_string(out.dims) + " stride=" + dims_to_string(p.stride) +
                    " pad=" + dims_to_string(p.padding_begin) + dims_to_string(p.padding_end) +
                    " dilation=" + dims_to_string(p.dilation) +
                    " epilogue=" + (e.per_channel ? "k" : "1") + (e.bias ? "b" : "") +
                    (e.residual ? (e.residual_scale ? "r8" : "r") : "") +
                    (e.activation ? "a" : "") +
                    (e.out_scale ? "q" : "") + " scale=" + std::to_string(e.scale) +
                    (e.out_scale && !e.fp8_out ? " range=" + std::to_string(e.quant_min) + ":" +
                                                     std::to_string(e.quant_max)
                                               : std::string()) +
                    ";";
    return s;
  };
  switch (run_quantized_conv_graph(p, e, a, options, &why)) {
    case ConvGraphStatus::kRan: return true;
    case ConvGraphStatus::kNotCovered: why.clear(); return false;
    case ConvGraphStatus::kRefused: why = "cuDNN's graph API has no engine for it (" + why + ")";
      return false;
  }
  return false;
}

/// EMBER_QCONV=igemm: Ember's INT8 implicit-GEMM kernel (qconv_implicit_gemm.cu) first, for
/// the layers it covers (igemm_covers). Read per call, so a process (or a test) can compare it
/// with cuDNN's graph.
bool igemm_first() {
  const char* v = std::getenv("EMBER_QCONV");
  return v != nullptr && std::strcmp(v, "igemm") == 0;
}

/// EMBER_QCONV=cudnn: cuDNN's INT8 convolution first (the A/B of the GEMM path). Read per call,
/// so a process (or a test) can compare both.
bool cudnn_first() {
  const char* v = std::getenv("EMBER_QCONV");
  return v != nullptr && std::strcmp(v, "cudnn") == 0;
}

/// Whether the implicit-GEMM graph (run_graph) comes first for a layer of `x_type`. INT8: yes
/// unless EMBER_QCONV is gemm or cudnn. FP8: only with EMBER_QCONV=graph, since cuDNN's FP8
/// convolution kernels measured slower than im2col + cuBLASLt's FP8 GEMM (ResNet-50 b32 on an
/// H100, 2026-12-07: 2.555 against 1.961 ms of GPU time; bench/results/2026-12-07-h100-
/// session38.md). Read per call, so a process (or a test) can compare them.
bool graph_first(DataType x_type) {
  const char* v = std::getenv("EMBER_QCONV");
  if (v != nullptr && std::strcmp(v, "graph") == 0) return true;
  return x_type != DataType::kF8E4M3 &&
         (v == nullptr || (std::strcmp(v, "gemm") != 0 && std::strcmp(v, "cudnn") != 0));
}

}  // namespace

std::string qconv_direct_reason(const QuantizedConvolutionParams& p) {
  if (p.stride.size() == 3) {
    return "the GEMM and cuDNN paths are 2-d, so this 3-d one runs in Ember's direct kernel "
           "(the same sums, slower)";
  }
  if (p.groups != 1) {
    return "the GEMM and cuDNN paths take groups = 1, so this grouped one (groups = " +
           std::to_string(p.groups) + ") runs in Ember's direct kernel (the same sums, slower)";
  }
  return {};
}

void run(const QuantizedConvolutionParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& out = a.out();
  if (out.numel() == 0) return;
  const QConvGeometry g = semantics::conv_geometry(p, x.dims, w.dims, out.dims);
  const ProductEpilogue e = product_epilogue_of(p.epilogue, p.requantize, a);
  // Empty sums (C = 0) are the epilogue of zeros: the direct kernel's loops do that.
  if (x.numel() > 0) {
    std::string why = qconv_direct_reason(p);
    // The implicit-GEMM graph first; its refusal is kept with the layer's state (cuDNN is asked
    // once per layer and problem), printed under the tactic log on each eager call, and the
    // layer takes the paths below.
    if (why.empty() && igemm_first() &&
        igemm_covers(g, x.dtype, a.has(6), x.data, w.data).empty()) {
      launch_qconv_igemm(x.data, w.data, out.data, p.out, g, e, a.stream());
      return;
    }
    std::string graph_why;
    if (why.empty() && graph_first(x.dtype) && run_graph(p, a, g, e, graph_why)) return;
    if (!graph_why.empty() && tactic_log()) {
      std::fprintf(stderr, "[ember tactic] %s: no cuDNN graph: %s\n",
                   a.layer != nullptr ? a.layer->describe().c_str() : "QuantizedConvolution",
                   graph_why.c_str());
    }
    if (why.empty() && x.dtype == DataType::kF8E4M3) {
      if (run_gemm(p, a, g, e, why)) return;
      why = why + ", so it runs in Ember's direct FP8 kernel (slower)";
    } else if (why.empty()) {
      std::string gemm_why, cudnn_why;
      if (cudnn_first()) {
        if (run_cudnn(p, a, g, e, cudnn_why) || run_gemm(p, a, g, e, gemm_why)) return;
      } else if (run_gemm(p, a, g, e, gemm_why) || run_cudnn(p, a, g, e, cudnn_why)) {
        return;
      }
      why = "neither cuBLASLt's INT8 GEMM (" + gemm_why + ") nor cuDNN's INT8 convolution (" +
            cudnn_why + ") took it, so it runs in Ember's direct int8 kernel (exact, slower)";
    }
    // Correct but slower: said once per context and layer (the runtime's warning channel; the
    // build log already named the layers whose shape decides it).
    a.res->warn_once(a.layer, (a.layer != nullptr ? a.layer->describe()
                                                  : std::string("a QuantizedConvolution")) +
                                  ": " + why);
  }
  launch_qconv_direct(x.data, x.dtype == DataType::kU8, x.dtype == DataType::kF8E4M3,
                      a.has(6) ? static_cast<const int32_t*>(a.in(6).data) : nullptr, w.data,
                      out.data, p.out, g, e, a.stream());
}

}  // namespace ember::engine::cuda
