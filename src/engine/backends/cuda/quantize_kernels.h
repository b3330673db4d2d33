// Kernels of the quantization family that other CUDA files launch (quantize.cu defines them).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "backends/semantics/conv_geometry.h"
#include "ember/engine/layers.h"
#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// What happens to each output of a fused low-precision product after its sum (layers.h,
/// QuantizedMatrixMultiply and QuantizedConvolution): the scales, the epilogue scale, the bias
/// (of the float type, nullptr for none), a residual (input 7 of either), rounding
/// to the float type, the activation, and the requantization to int8 or f8e4m3 when out_scale
/// is set.
struct ProductEpilogue {
  const float* x_scale = nullptr;  ///< One element (device): a_scale / x_scale.
  const float* w_scale = nullptr;  ///< One element or one per output channel (device).
  bool per_channel = false;
  float scale = 1.0f;
  const void* bias = nullptr;
  bool activation = false;
  ActivationType type = ActivationType::kRelu;
  float alpha = 0.0f, beta = 0.0f;
  const float* out_scale = nullptr;  ///< Requantize when set (device, one element).
  bool fp8_out = false;  ///< The requantization is to f8e4m3 (else int8 in [quant_min, quant_max]).
  float quant_min = -128.0f, quant_max = 127.0f;
  /// The layer's residual (input 7; the float type, in the output's shape and layout: row-major
  /// m x n for a product, NCHW or NHWC for a convolution), added in f32 with the bias; nullptr:
  /// none.
  const void* residual = nullptr;
  /// An int8 residual's scale (device, one element; QuantizedConvolution input 8): the residual
  /// is then int8 and reads as q * residual_scale rounded to the float type. nullptr: the
  /// residual is in the float type.
  const float* residual_scale = nullptr;
  /// Asymmetric activations: the library summed x' * w with x' = x - zero_point_offset (uint8
  /// shifted into int8: offset 128; int8: 0), so the true sum over (x - zero_point) * w is the
  /// library's minus (zero_point - offset) * weight_sums[channel]. nullptr: no correction.
  const int32_t* weight_sums = nullptr;
  const int32_t* zero_point = nullptr;  ///< Device, one element; nullptr: 0.
  int32_t zero_point_offset = 0;
};

/// The activation of an asymmetric int8 product as int8: uint8 shifted by -128 (x ^ 0x80).
void launch_shift_u8_to_s8(const uint8_t* x, int8_t* y, int64_t n, cudaStream_t stream);
/// sums[r] = sum of the `cols` int8 values of row r of the row-major `rows` x `cols` w: a
/// weight's per-output-channel sums for the zero-point correction.
void launch_weight_row_sums(const int8_t* w, int64_t rows, int64_t cols, int32_t* sums,
                            cudaStream_t stream);

struct CudaArgs;
/// The ProductEpilogue of a fused product layer: both kinds take x_scale, w_scale, the
/// optional bias and the optional out_scale as inputs 2 to 5 (quantized_matmul.cpp).
ProductEpilogue product_epilogue_of(const Epilogue& e, const Requantize& r, const CudaArgs& a);

/// The epilogue of a matrix product from its m x n row-major accumulator (int32 for INT8,
/// f32 for FP8), into `out`: `float_type` (f32, f16 or bf16) values, or int8 when the epilogue
/// requantizes. Enqueued on `stream`.
void launch_product_epilogue(const void* acc, bool int32_acc, void* out, DataType float_type,
                             int64_t m, int64_t n, const ProductEpilogue& e, cudaStream_t stream);

/// dst[0, n) = *scalar (a device scalar), on `stream`: the activation's per-tensor scale spread
/// into the vector cuBLASLt's outer-vector scale mode wants (one scale per row of the product).
void launch_fill_from_scalar(float* dst, const float* scalar, int64_t n, cudaStream_t stream);

/// FP8 E4M3 with per-tensor scales: out[m, n] (`float_type`, row-major) = the
/// product of act[m, k] and w[n, k]^T (both E4M3, K-contiguous) through cuBLASLt, which applies
/// e's scales (device pointers), the epilogue scale (alpha), e.bias and a relu in its own
/// epilogue and adds e.residual as its C; another activation of e then runs in place (the
/// layer's `epilogue`). One rounding to the output type, no f32 sums in memory. False, with
/// nothing enqueued, when cuBLASLt takes no such problem or `e` needs what this path does not do
/// (per-channel scales, requantization, zero-point corrections, an f32 output with a bias, an
/// activation or a residual). `ws`:
/// kInt8GemmWorkspaceBytes of cuBLASLt workspace (quantized_matmul.cpp).
/// Per-channel weight scales (a convolution with a batch norm folded into its scales) are taken
/// when `row_scales` is given (m floats of scratch, 16-byte aligned): the activation's scale is
/// spread into it and cuBLASLt applies both in its outer-vector scale mode (a vector per
/// operand). Without it, or where cuBLASLt has no such kernel, per-channel scales return false;
/// the spread then wrote only `row_scales`.
bool fp8_gemm_to_output(const CudaArgs& a, const void* act, const void* w, int64_t m, int64_t n,
                        int64_t k, void* out, DataType float_type, const ProductEpilogue& e,
                        const Epilogue& epilogue, void* ws, float* row_scales = nullptr);

/// FP8 E4M3 with per-tensor scales into a layer that requantizes (to int8 or FP8): cuBLASLt
/// writes the 16-bit value (scales, alpha, bias, relu and a residual in its epilogue, as
/// fp8_gemm_to_output) into `value` (m * n elements of `float_type`, scratch), then one pass
/// (launch_product_finish) applies another activation and the quantization into `out`. BERT's
/// erf-GELU products, read by FP8 Quantizes, write 2 + 2 + 1 bytes an element where f32 sums
/// and the epilogue pass write 4 + 4 + 1. False, with nothing enqueued, when cuBLASLt takes no
/// such problem or `e` is not of this kind (a 16-bit float type, per-tensor scales, no zero
/// point). `ws`: kInt8GemmWorkspaceBytes of cuBLASLt workspace. `row_scales`: as for
/// fp8_gemm_to_output.
bool fp8_gemm_requantized(const CudaArgs& a, const void* act, const void* w, int64_t m,
                          int64_t n, int64_t k, void* value, void* out, DataType float_type,
                          const ProductEpilogue& e, void* ws, float* row_scales = nullptr);

/// The rest of `e` after a library wrote the product's value y (`total` elements of
/// `float_type`, already scaled, biased and rounded; e.g. cuBLASLt's FP8 GEMM with a 16-bit
/// output): the activation when e.activation (rounded to the float type again), then the
/// requantization when e.out_scale is set, into `out` (the float type, or int8 / f8e4m3 bytes).
/// y and out may be the same buffer only without requantization.
void launch_product_finish(const void* y, void* out, DataType float_type, int64_t total,
                           const ProductEpilogue& e, cudaStream_t stream);

/// The m x n row-major sums of a[m, k] b[n, k]^T without cuBLASLt, for the shapes it refuses
/// (INT8: k or n not a multiple of 4; FP8: not of 16, e.g. an ImageNet classifier's n = 1000):
/// one warp per output element, coalesced along k. INT8 (a int8, or uint8 when `u8`, shifted by
/// -128 as run_int8 does; b int8) into int32 `acc`; FP8 (`fp8`: both E4M3) into f32 `acc`.
/// Exact for INT8; for FP8 the f32 sum in another order than cuBLASLt's. A fallback that stays
/// on the device (and in CUDA graphs), where these shapes once took the host.
void launch_quantized_product_direct(const void* a, bool u8, bool fp8, const void* b, int64_t m,
                                     int64_t n, int64_t k, void* acc, cudaStream_t stream);

/// A QuantizedConvolution as its kernels see it (backends/semantics/conv_geometry.h).
using QConvGeometry = semantics::ConvGeometry;

/// Copies NCHW int8 x [N, C, H, W] (geometry dims 1 and 2) into NHWC [N, Hp, Wp, c4] with
/// Hp = H + pad_top + pad_bottom, Wp likewise (the padding written as zeros) and the channels
/// zero-filled up to c4: a padded quantized zero is a real zero (symmetric quantization), so
/// cuDNN then convolves without padding and with channels a multiple of 4.
/// Asymmetric activations (`u8`, or a `zero_point`): uint8 values are shifted by -128 and the
/// spatial padding holds zero_point - offset, the value whose correction makes it a real zero.
void launch_qconv_pack_input(const void* x, bool u8, const int32_t* zero_point, int8_t* packed,
                             const QConvGeometry& g, int64_t hp, int64_t wp, int64_t c4,
                             cudaStream_t stream);
/// Copies KCRS int8 (or FP8: bytes) w, or KRSC w under g.channels_last, into KRSC
/// [k4, R, S, c4], zero-filled beyond K and C.
void launch_qconv_pack_weight(const int8_t* w, int8_t* packed, const QConvGeometry& g,
                              int64_t k4, int64_t c4, cudaStream_t stream);
/// NCHW x [N, C, H, W] (geometry dims 1 and 2; int8, uint8 or FP8 bytes) as NHWC int8
/// [N, H, W, cp], uint8 shifted by -128 (as the GEMM sums x - 128), channels beyond C zero;
/// no spatial padding. `cp` >= C is the padded channel count (4 for the INT8 GEMM, 16 for FP8).
/// A 1x1 convolution with stride 1 and no padding takes this as its GEMM operand directly.
void launch_qconv_to_nhwc(const void* x, bool u8, int8_t* y, const QConvGeometry& g, int64_t cp,
                          cudaStream_t stream);
/// NHWC x [rows, C] (int8, uint8 or FP8 bytes) as int8 [rows, cp], uint8 shifted by -128, the
/// channels beyond C zero: what launch_qconv_to_nhwc makes from NCHW, for a channels_last x.
void launch_qconv_pad_channels(const void* x, bool u8, int8_t* y, int64_t rows, int64_t channels,
                               int64_t cp, cudaStream_t stream);
/// The im2col matrix of a 2-d (or 1-d) convolution for a GEMM from launch_qconv_to_nhwc's x:
/// row-major col [N * OH * OW, R * S * cp], row (n, oh, ow) holding the taps (r, s, c) of that
/// output position in KRSC order (qconv_pack_weight's), taps in the padding as
/// qconv_pack_input writes them (zero, or the shifted zero point for asymmetric activations).
/// Copies 16 bytes per thread when cp is a multiple of 16, else 4. False (nothing enqueued)
/// when cp is not a multiple of 4 or an index would not fit 32 bits.
bool launch_qconv_im2col_nhwc(const int8_t* x, bool u8, const int32_t* zero_point, int8_t* col,
                              const QConvGeometry& g, int64_t cp, cudaStream_t stream);
/// out (NCHW, or NHWC under g.channels_last; `float_type` values or int8, see ProductEpilogue)
/// from NHWC sums y [N, OH, OW, k4] through `e`: cuDNN's f32 sums, or the INT8 GEMM's int32
/// ones (`int32_acc`).
void launch_qconv_epilogue(const void* y, bool int32_acc, void* out, DataType float_type,
                           const QConvGeometry& g, int64_t k4, const ProductEpilogue& e,
                           cudaStream_t stream);
/// The whole convolution in one direct kernel (int32 sums, or f32 ones for FP8, then `e`): any
/// geometry, groups and channel count; what runs where the libraries' paths do not.
/// x is int8, or uint8 when `u8`, its zero point (device, nullptr: 0) subtracted in the sum, and
/// w int8; or (`fp8`) x and w are both E4M3.
void launch_qconv_direct(const void* x, bool u8, bool fp8, const int32_t* zero_point,
                         const void* w, void* out, DataType float_type, const QConvGeometry& g,
                         const ProductEpilogue& e, cudaStream_t stream);

/// Why the INT8 implicit-GEMM kernel (qconv_implicit_gemm.cu) does not take a convolution of
/// geometry `g` with activations of `x_type` (`zero_point`: it has one) at x and w; empty when
/// it does: NHWC 2-d, groups = 1, symmetric int8, C % 16 == 0, 16-byte aligned operands, sizes
/// within 32-bit indices.
std::string igemm_covers(const QConvGeometry& g, DataType x_type, bool zero_point, const void* x,
                         const void* w);
/// The convolution of NHWC int8 x and KRSC int8 w into NHWC `out` through `e` (the float type's
/// values, or int8 when e requantizes) in one kernel: exact int32 sums on the tensor cores, the
/// epilogue pass's arithmetic on them in registers. Only for what igemm_covers accepts.
void launch_qconv_igemm(const void* x, const void* w, void* out, DataType float_type,
                        const QConvGeometry& g, const ProductEpilogue& e, cudaStream_t stream);
/// launch_qconv_igemm's launches so far in this process (tests check which path ran).
int64_t igemm_launches();

}  // namespace ember::engine::cuda
