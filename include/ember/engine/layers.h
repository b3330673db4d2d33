// The engine's closed set of layer kinds and their parameters.
//
// One parameter struct per LayerKind, in the same order: `LayerParams` is a std::variant whose
// index *is* the LayerKind, so a layer's kind can never disagree with its parameters. Each struct
// lists its fields once in `fields(v)`; the plan writer/reader and the JSON inspector all visit
// those lists, so adding a field touches one place.
//
// Conventions shared by all layers:
// - Shapes are row-major; dimension 0 is the outermost. Negative axes are not accepted here
//   (the compiler normalizes them); every axis must be in [0, rank).
// - Inputs of one layer have one dtype unless a layer says otherwise (strong typing: there is no
//   implicit promotion; use a Cast layer).
// - f16/bf16 are computed in f32 and rounded on store by the reference back end.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/types.h"
#include "ember/engine/weights.h"

namespace ember::engine {

class Plugin;

/// Every layer kind. Values are the indices of LayerParams.
enum class LayerKind : uint8_t {
  kConstant,
  kConvolution,
  kDeconvolution,
  kPooling,
  kActivation,
  kElementWise,
  kUnary,
  kReduce,
  kTopK,
  kSoftMax,
  kMatrixMultiply,
  kShuffle,
  kConcatenation,
  kSlice,
  kGather,
  kScatter,
  kSelect,
  kCast,
  kNormalization,
  kResize,
  kPadding,
  kCumulative,
  kFill,
  kShape,
  kIdentity,
  kAttention,
  kPlugin,
  kQuantize,
  kDequantize,
  kQuantizedMatrixMultiply,
  kQuantizedConvolution,
  kFusedPointwise,
};
inline constexpr int kNumLayerKinds = 32;
/// "Convolution", "ElementWise", ...
const char* layer_kind_name(LayerKind kind);

/// Output = input values of a Weights blob. Inputs: none. Output: weights' dtype and dims.
struct ConstantParams {
  Weights weights;
  template <class V> void fields(V& v) { v("weights", weights); }
};

enum class ActivationType : uint8_t {
  kRelu,         ///< max(x, 0)
  kSigmoid,      ///< 1 / (1 + exp(-x))
  kTanh,
  kLeakyRelu,    ///< x >= 0 ? x : alpha * x
  kElu,          ///< x > 0 ? x : alpha * (exp(x) - 1)
  kSelu,         ///< beta * (x > 0 ? x : alpha * (exp(x) - 1))
  kSoftsign,     ///< x / (1 + |x|)
  kSoftplus,     ///< alpha = beta_torch, beta = threshold: x*a > b ? x : log1p(exp(a*x)) / a
  kClip,         ///< min(max(x, alpha), beta)
  kHardSigmoid,  ///< max(0, min(1, alpha * x + beta))
  kGeluErf,      ///< 0.5 x (1 + erf(x / sqrt 2))
  kGeluTanh,     ///< 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  kSilu,         ///< x * sigmoid(x)
};
inline constexpr int kNumActivationTypes = 13;

/// A fused epilogue of Convolution and MatrixMultiply, set by the builder's fusion passes
/// (converters leave it off): out = act(scale * product + bias + residual), where the residual
/// is an optional extra input of the output's shape and act the activation when
/// `fused_activation`. Computed in f32; where a library returns the product in the output
/// dtype first (cuDNN, cuBLASLt before a separate activation pass), f16/bf16 round twice.
struct Epilogue {
  double scale = 1.0;
  bool fused_activation = false;
  ActivationType activation = ActivationType::kRelu;
  double alpha = 0.0;
  double beta = 0.0;
  template <class V> void fields(V& v) {
    v("scale", scale); v("fused_activation", fused_activation); v("activation", activation);
    v("activation_alpha", alpha); v("activation_beta", beta);
  }
};

/// N-d convolution (1d/2d/3d), cross-correlation as in PyTorch.
/// Inputs: x [N, C, *spatial], w [K, C/groups, *kernel], optional bias [K] (nullptr to omit),
/// optional residual [N, K, *out] (the epilogue's; nullptr to omit).
/// Output: [N, K, *out] with out = floor((in + pad_begin + pad_end - dilation*(k-1) - 1)/stride)+1.
/// Types: float; all inputs one dtype. Accumulation in f32.
/// channels_last (2-d only; set by the builder's channels_last pass): x is [N, H, W, C], w is
/// [K, R, S, C/groups] (KRSC), and the output and residual are [N, OH, OW, K].
struct ConvolutionParams {
  std::vector<int64_t> stride;        ///< One per spatial dim, >= 1.
  std::vector<int64_t> padding_begin; ///< One per spatial dim, >= 0.
  std::vector<int64_t> padding_end;   ///< One per spatial dim, >= 0.
  std::vector<int64_t> dilation;      ///< One per spatial dim, >= 1.
  int64_t groups = 1;
  Epilogue epilogue;
  bool channels_last = false;
  template <class V> void fields(V& v) {
    v("stride", stride); v("padding_begin", padding_begin); v("padding_end", padding_end);
    v("dilation", dilation); v("groups", groups); epilogue.fields(v);
    v("channels_last", channels_last);
  }
};

/// N-d transposed convolution (PyTorch conv_transpose semantics).
/// Inputs: x [N, C, *spatial], w [C, K/groups, *kernel], optional bias [K].
/// Output: [N, K, *out], out = (in-1)*stride - pad_begin - pad_end + dilation*(k-1) + output_padding + 1.
struct DeconvolutionParams {
  std::vector<int64_t> stride;
  std::vector<int64_t> padding_begin;
  std::vector<int64_t> padding_end;
  std::vector<int64_t> dilation;
  std::vector<int64_t> output_padding;  ///< One per spatial dim, < max(stride, dilation).
  int64_t groups = 1;
  template <class V> void fields(V& v) {
    v("stride", stride); v("padding_begin", padding_begin); v("padding_end", padding_end);
    v("dilation", dilation); v("output_padding", output_padding); v("groups", groups);
  }
};

enum class PoolingType : uint8_t { kMax, kAverage };
inline constexpr int kNumPoolingTypes = 2;

/// Max or average pooling over the trailing `window.size()` dims (1 to 3) of x [N, C, *spatial].
/// Output size as convolution; with ceil_mode the division rounds up, but a window may not start
/// inside the end padding (PyTorch's rule). Padded elements never win a max; for average,
/// count_include_pad counts padding (not the ceil-mode overhang) in the divisor.
/// Types: float, plus integers for max.
/// channels_last (2-d only; set by the builder's channels_last pass): x is [N, H, W, C] and the
/// output [N, OH, OW, C].
struct PoolingParams {
  PoolingType type = PoolingType::kMax;
  std::vector<int64_t> window;
  std::vector<int64_t> stride;
  std::vector<int64_t> padding_begin;
  std::vector<int64_t> padding_end;
  std::vector<int64_t> dilation;  ///< Max pooling only (all ones for average).
  bool ceil_mode = false;
  bool count_include_pad = true;
  int64_t divisor_override = 0;   ///< When > 0, average divides by this instead.
  bool channels_last = false;
  template <class V> void fields(V& v) {
    v("type", type); v("window", window); v("stride", stride); v("padding_begin", padding_begin);
    v("padding_end", padding_end); v("dilation", dilation); v("ceil_mode", ceil_mode);
    v("count_include_pad", count_include_pad); v("divisor_override", divisor_override);
    v("channels_last", channels_last);
  }
};


/// Pointwise activation. Input and output one float dtype, same shape.
struct ActivationParams {
  ActivationType type = ActivationType::kRelu;
  double alpha = 0.0;
  double beta = 0.0;
  template <class V> void fields(V& v) { v("type", type); v("alpha", alpha); v("beta", beta); }
};

enum class ElementWiseOp : uint8_t {
  kSum, kProd, kMax, kMin, kSub,
  kDiv,       ///< Floats: true division. Integers: truncation toward zero (x/0 is an error on CPU).
  kPow,
  kFloorDiv,  ///< floor(a / b); integers round toward negative infinity.
  kAnd, kOr, kXor,              ///< bool inputs only.
  kEqual, kGreater, kLess,      ///< bool output.
};
inline constexpr int kNumElementWiseOps = 14;

/// Binary op with numpy broadcasting (shapes aligned at the right; a dim of 1 stretches).
/// Inputs: a, b of one dtype. Output: that dtype, or bool for comparisons.
struct ElementWiseParams {
  ElementWiseOp op = ElementWiseOp::kSum;
  template <class V> void fields(V& v) { v("op", op); }
};

enum class UnaryOp : uint8_t {
  kExp, kLog, kSqrt, kRsqrt, kReciprocal, kAbs, kNeg, kSin, kCos, kTan, kAsin, kAcos, kAtan,
  kSinh, kCosh, kAsinh, kAcosh, kAtanh, kCeil, kFloor,
  kRound,  ///< Half to even, as torch.round.
  kErf,
  kNot,    ///< bool only.
  kSign,
  kIsInf,  ///< float in, bool out.
  kIsNan,  ///< float in, bool out.
};
inline constexpr int kNumUnaryOps = 26;

/// Pointwise unary op. Math functions take floats; abs, neg and sign also integers; not takes bool.
struct UnaryParams {
  UnaryOp op = UnaryOp::kExp;
  template <class V> void fields(V& v) { v("op", op); }
};

enum class ReduceOp : uint8_t { kSum, kProd, kMax, kMin, kAvg };
inline constexpr int kNumReduceOps = 5;

/// Reduction over `axes` (distinct, sorted). keep_dims keeps them as size 1.
/// Types: float and integer (avg: float only). An empty reduction of max/min is an error.
struct ReduceParams {
  ReduceOp op = ReduceOp::kSum;
  std::vector<int64_t> axes;
  bool keep_dims = false;
  template <class V> void fields(V& v) { v("op", op); v("axes", axes); v("keep_dims", keep_dims); }
};

enum class TopKOp : uint8_t { kMax, kMin };
inline constexpr int kNumTopKOps = 2;

/// The k largest (kMax) or smallest (kMin) values along `axis`, sorted, with their indices.
/// ArgMax/ArgMin are TopK with k = 1. Ties keep the lower index first.
/// Outputs: values (input dtype), indices (index_dtype: i32 or i64), both with dim axis = k.
struct TopKParams {
  TopKOp op = TopKOp::kMax;
  int64_t k = 1;
  int64_t axis = 0;
  DataType index_dtype = DataType::kI64;
  template <class V> void fields(V& v) {
    v("op", op); v("k", k); v("axis", axis); v("index_dtype", index_dtype);
  }
};

/// Softmax (or log-softmax when `log`) along `axis`. Float only.
/// zero_masked_rows: a row whose inputs are all -inf gives zeros instead of NaN (attention with
/// a mask that hides every key of a query; not with `log`).
struct SoftMaxParams {
  int64_t axis = 0;
  bool log = false;
  bool zero_masked_rows = false;
  template <class V> void fields(V& v) {
    v("axis", axis); v("log", log); v("zero_masked_rows", zero_masked_rows);
  }
};

/// Batched matrix product with numpy.matmul semantics: operands of rank >= 2 multiply their
/// last two dims and broadcast the rest; a rank-1 operand is a vector (its dim is dropped from
/// the output). transpose_a/b swap the last two dims of a rank >= 2 operand first.
/// Types: float, both one dtype; f32 accumulation.
/// Fused epilogue (builder only): optional input 2 bias [N] (added along the output's last dim)
/// and optional input 3 residual of the output's shape, then the epilogue's activation.
struct MatrixMultiplyParams {
  bool transpose_a = false;
  bool transpose_b = false;
  Epilogue epilogue;
  template <class V> void fields(V& v) {
    v("transpose_a", transpose_a); v("transpose_b", transpose_b); epilogue.fields(v);
  }
};

/// Transpose, reshape, transpose (TensorRT's shuffle). Any dtype.
/// first_transpose/second_transpose: permutations (empty = identity).
/// reshape: new shape (when has_reshape); one dim may be -1 (inferred); numel must match.
struct ShuffleParams {
  std::vector<int64_t> first_transpose;
  bool has_reshape = false;
  Shape reshape;
  std::vector<int64_t> second_transpose;
  template <class V> void fields(V& v) {
    v("first_transpose", first_transpose); v("has_reshape", has_reshape); v("reshape", reshape);
    v("second_transpose", second_transpose);
  }
};

/// Concatenation of >= 1 inputs of one dtype and rank along `axis`; other dims must agree.
struct ConcatenationParams {
  int64_t axis = 0;
  template <class V> void fields(V& v) { v("axis", axis); }
};

/// Strided slice: output[i] = input[start + i * stride] per dim. stride != 0 (negative walks
/// backward); every index touched must be inside the input. Any dtype.
struct SliceParams {
  Shape start;
  Shape size;
  std::vector<int64_t> stride;
  template <class V> void fields(V& v) { v("start", start); v("size", size); v("stride", stride); }
};

enum class GatherMode : uint8_t {
  kDefault,  ///< numpy.take along axis: out shape = data[:axis] + indices + data[axis+1:].
  kElement,  ///< torch.gather: indices has data's rank; out[i..] = data[.. idx[i..] at axis ..].
  kNd,       ///< gather_nd with num_batch_dims leading batch dims.
};
inline constexpr int kNumGatherModes = 3;

/// Gather. Inputs: data (any dtype), indices (i32 or i64). Negative indices count from the end;
/// out-of-range indices are an error (CPU back end) .
struct GatherParams {
  GatherMode mode = GatherMode::kDefault;
  int64_t axis = 0;
  int64_t num_batch_dims = 0;
  template <class V> void fields(V& v) { v("mode", mode); v("axis", axis); v("num_batch_dims", num_batch_dims); }
};

enum class ScatterReduction : uint8_t { kNone, kSum, kProd, kMax, kMin };
inline constexpr int kNumScatterReductions = 5;

/// Elementwise scatter (torch.scatter / scatter_reduce with include_self=True).
/// Inputs: data, indices (i32/i64, data's rank, dims <= data's), updates (indices' shape).
/// Output: a copy of data with data[.. idx ..] = (or combined with) updates.
struct ScatterParams {
  int64_t axis = 0;
  ScatterReduction reduction = ScatterReduction::kNone;
  template <class V> void fields(V& v) { v("axis", axis); v("reduction", reduction); }
};

/// Where: condition (bool) ? a : b, numpy broadcasting over all three. a and b one dtype.
struct SelectParams {
  template <class V> void fields(V&) {}
};

/// Converts to `to`. float->int truncates toward zero; anything->bool is (x != 0);
/// bool->number is 0/1.
struct CastParams {
  DataType to = DataType::kF32;
  template <class V> void fields(V& v) { v("to", to); }
};

enum class NormalizationType : uint8_t {
  kLayer,     ///< Normalize over dims [axis, rank); scale/bias have shape input[axis:].
  kGroup,     ///< x [N, C, *]: C split in num_groups groups; scale/bias [C].
  kInstance,  ///< Group norm with one group per channel; scale/bias [C].
  kRms,       ///< RMSNorm over dims [axis, rank) (plan format 15): no centering; scale/bias as
              ///< kLayer.
};
inline constexpr int kNumNormalizationTypes = 4;

/// The output quantization of a Normalization (set by the builder's quantize_norm_outputs pass
/// when a per-tensor symmetric Quantize reads a layer or RMS norm; plan format 15): the normalized
/// value, rounded to x's dtype as output 0 is, quantized as a Quantize layer to `to` would with
/// the scale of input 3 (f32, one element): i8, q = clamp(round_half_even(y * (1 / scale)),
/// quant_min, quant_max); f8e4m3, q = E4M3(y * (1 / scale)), saturating. A pre-LN transformer's
/// norm feeds only the quantized product after it (`float_output` false: the quantized tensor
/// is the layer's one output); a post-LN one's also feeds the next residual add (both outputs).
struct NormalizationQuantize {
  bool enabled = false;
  DataType to = DataType::kI8;  ///< i8 or f8e4m3.
  int64_t quant_min = -128;
  int64_t quant_max = 127;
  bool float_output = true;  ///< Output 0 is the float value; false: only the quantized one.
  template <class V> void fields(V& v) {
    v("quantize", enabled); v("quantize_to", to); v("quantize_min", quant_min);
    v("quantize_max", quant_max); v("float_output", float_output);
  }
};

/// (x - mean) / sqrt(var + epsilon) * scale + bias, biased variance, computed in f32; kRms:
/// x / sqrt(mean(x^2) + epsilon) * scale + bias.
/// Inputs: x, optional scale, optional bias (nullptr to omit), all one float dtype; with
/// `quantize` (layer and RMS norms only), 3 the quantization scale.
/// Outputs: y (x's dtype and shape), then with `quantize` the quantized y (`quantize.to`), or
/// the quantized y alone when `quantize.float_output` is false.
struct NormalizationParams {
  NormalizationType type = NormalizationType::kLayer;
  int64_t axis = 1;
  int64_t num_groups = 1;
  double epsilon = 1e-5;
  NormalizationQuantize quantize;
  template <class V> void fields(V& v) {
    v("type", type); v("axis", axis); v("num_groups", num_groups); v("epsilon", epsilon);
    quantize.fields(v);
  }
};

enum class ResizeMode : uint8_t { kNearest, kLinear, kCubic };
inline constexpr int kNumResizeModes = 3;
enum class ResizeCoordinate : uint8_t {
  kAlignCorners,  ///< in = out * (in_size - 1) / (out_size - 1)
  kHalfPixel,     ///< in = (out + 0.5) / scale - 0.5  (linear/cubic with align_corners=False)
  kAsymmetric,    ///< in = out / scale                (PyTorch "nearest")
};
inline constexpr int kNumResizeCoordinates = 3;
enum class ResizeRounding : uint8_t {
  kFloor,       ///< PyTorch "nearest".
  kHalfUp,      ///< round(x) with .5 up: PyTorch "nearest-exact" with kHalfPixel.
};
inline constexpr int kNumResizeRoundings = 2;

/// Resize to `output` shape (same rank as input). Linear interpolates over each dim whose size
/// changes (bilinear for 2, trilinear for 3); cubic uses the Keys kernel with cubic_coeff over
/// the last two dims. `scales` (optional, one per dim) override in/out size ratios for coordinate
/// mapping, as PyTorch does when given scale_factor. Types: float (nearest: any).
struct ResizeParams {
  ResizeMode mode = ResizeMode::kNearest;
  ResizeCoordinate coordinate = ResizeCoordinate::kAsymmetric;
  ResizeRounding rounding = ResizeRounding::kFloor;
  Shape output;
  std::vector<double> scales;
  double cubic_coeff = -0.75;
  template <class V> void fields(V& v) {
    v("mode", mode); v("coordinate", coordinate); v("rounding", rounding); v("output", output);
    v("scales", scales); v("cubic_coeff", cubic_coeff);
  }
};

enum class PaddingMode : uint8_t { kConstant, kReflect, kReplicate, kCircular };
inline constexpr int kNumPaddingModes = 4;

/// Pads every dim by pre[d] before and post[d] after (one entry per input dim, >= 0).
/// Reflect needs pad < dim; circular needs pad <= dim. Any dtype.
/// input_permutation (empty: none) pads the input transposed by it (output dim d is input dim
/// input_permutation[d], torch.permute's meaning, padded by pre[d] and post[d]): one pass
/// instead of a transpose and a padding (the builder's pad_conv_channels moves an image from
/// NCHW to NHWC and pads its 3 channels to 8 at once). Plan format 16.
/// input_shape (empty: none) reads the input as this row-major shape first (a view: the same
/// element count; one entry may be -1, inferred), before the permutation; pre, post and the
/// permutation then have its rank. With both, one pass rearranges an image into 2x2 blocks
/// (space-to-depth: pad_conv_channels' stride-2 stems). Plan format 17.
struct PaddingParams {
  PaddingMode mode = PaddingMode::kConstant;
  std::vector<int64_t> pre;
  std::vector<int64_t> post;
  double value = 0.0;
  std::vector<int64_t> input_permutation;
  std::vector<int64_t> input_shape;
  template <class V> void fields(V& v) {
    v("mode", mode); v("pre", pre); v("post", post); v("value", value);
    v("input_permutation", input_permutation); v("input_shape", input_shape);
  }
};

enum class CumulativeOp : uint8_t { kSum };
inline constexpr int kNumCumulativeOps = 1;

/// Running reduction along axis (inclusive unless exclusive; reverse runs from the end).
/// Types: float and integer.
struct CumulativeParams {
  CumulativeOp op = CumulativeOp::kSum;
  int64_t axis = 0;
  bool exclusive = false;
  bool reverse = false;
  template <class V> void fields(V& v) {
    v("op", op); v("axis", axis); v("exclusive", exclusive); v("reverse", reverse);
  }
};

enum class FillOp : uint8_t {
  kConstant,  ///< Every element = value.
  kArange,    ///< Rank 1: element i = start + i * delta.
};
inline constexpr int kNumFillOps = 2;

/// Creates a tensor of `shape` and `dtype`. No inputs.
struct FillParams {
  FillOp op = FillOp::kConstant;
  Shape shape;
  DataType dtype = DataType::kF32;
  double value = 0.0;
  double start = 0.0;
  double delta = 1.0;
  template <class V> void fields(V& v) {
    v("op", op); v("shape", shape); v("dtype", dtype); v("value", value); v("start", start);
    v("delta", delta);
  }
};

/// Output: the input's dims as a 1-D i64 tensor of length rank.
struct ShapeParams {
  template <class V> void fields(V&) {}
};

/// Output = input (a copy).
struct IdentityParams {
  template <class V> void fields(V&) {}
};

/// Fused scaled dot-product attention: per batch b, head h and query i,
///   out[b,h,i,:] = sum_j softmax_j(scale * (q[b,h,i,:] . k[b,g,j,:]) + mask[b,h,i,j]) v[b,g,j,:]
/// with g = h / (H / Hkv): grouped-query heads share a key/value head (Hkv divides H).
/// Inputs: 0 query, 1 key, 2 value, optional 3 mask; rank 4, one float dtype, f32 accumulation.
/// Layout: head-major (seq_major = false) q [B, H, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev],
/// output [B, H, L, Ev]; seq-major (seq_major = true, a model's tensors before its
/// transpose(1, 2)) swaps the head and sequence dims of q, k, v and the output.
/// seq_major_operands (with seq_major = false): the same per operand, one bit each (kQ, kK, kV,
/// kOut), for a model whose q and k are computed head-major (RoPE applied after the transpose)
/// while v and the output are read and written in place.
/// mask (either layout): bool (true = attend) or the inputs' dtype (added to the scaled
/// scores), broadcastable to [B, H, L, S]. causal: query i attends keys j <= i (PyTorch's
/// is_causal, aligned top-left); it may be combined with a mask.
/// A query whose keys are all masked out gets zeros (PyTorch's math kernel), not NaN.
/// packed_heads > 0 (seq-major, the builder's rewrite of a split fused QKV projection): inputs
/// 0-2 are rank 3, [B, L, 3 * packed_heads * E], each holding q, k and v side by side along its
/// last dim; the layer reads q from the first third of input 0, k from the second third of
/// input 1 and v from the last third of input 2 (usually one tensor three times). Output
/// [B, L, packed_heads, E].
/// views (non-empty: seq_major, packed_heads and seq_major_operands off; the builder's rewrite
/// for operands that reach the layer through transposes, reshapes and slices of one tensor,
/// such as torch.nn.MultiheadAttention's in-projection [L, B, 3 E]; constant shapes only):
/// kViewLength numbers, the sizes {B, H, Hkv, L, S, E, Ev}, then for q, k, v and the output in
/// turn {element offset, batch stride, head stride, sequence stride} into that tensor's
/// row-major elements (features contiguous). The inputs may then have any rank, and the output
/// has dims out_dims (B * H * L * Ev elements, each written once).
struct AttentionParams {
  double scale = 1.0;
  bool causal = false;
  bool seq_major = false;
  int64_t packed_heads = 0;
  int64_t seq_major_operands = 0;  ///< Bits kQ | kK | kV | kOut; 0 when seq_major.
  std::vector<int64_t> views;      ///< Sizes and strided views (see above); empty: none.
  std::vector<int64_t> out_dims;   ///< The output's dims when views is set.
  static constexpr int64_t kQ = 1, kK = 2, kV = 4, kOut = 8, kAllOperands = 15;
  static constexpr size_t kViewSizes = 7, kViewLength = kViewSizes + 4 * 4;
  /// Whether operand `bit` (kQ, kK, kV or kOut) is seq-major [B, L, H, E].
  bool seq_major_at(int64_t bit) const {
    return seq_major || packed_heads > 0 || (seq_major_operands & bit) != 0;
  }
  template <class V> void fields(V& v) {
    v("scale", scale); v("causal", causal); v("seq_major", seq_major);
    v("packed_heads", packed_heads); v("seq_major_operands", seq_major_operands);
    v("views", views); v("out_dims", out_dims);
  }
};

/// User code (see plugin.h): the plugin made by the registered creator `creator` of `version`
/// from `attributes`. Inputs: any number of tensors (none optional); outputs: what the plugin's
/// infer_outputs reports. The plan stores the three fields; `plugin`, the instance, is made from
/// them when the layer is added (Network::add_layer resolves it through the plugin registry) and
/// is shared by copies of the layer. The builder never fuses into or across a plugin layer.
struct PluginParams {
  std::string creator;
  std::string version;
  std::vector<uint8_t> attributes;
  /// The instance (not serialized); null until the layer is added to a network.
  std::shared_ptr<const Plugin> plugin;
  template <class V> void fields(V& v) {
    v("creator", creator); v("version", version); v("attributes", attributes);
  }
};

/// Quantization: q = saturate(round_half_even(x * (1 / scale)) + zero_point), the math of
/// PyTorch's quantize_per_tensor / quantize_per_channel (x * (1 / scale) in f32, as they do).
/// Inputs: 0 x (f32/f16/bf16, computed in f32), 1 scale (f32: one element for per-tensor; rank 1
/// of x's dim `axis` for per-channel), optional 2 zero_point (i32, scale's shape; integer
/// outputs only, nullptr for a symmetric quantization).
/// Output: `to` (i8, u8 or f8e4m3), x's shape. Integers saturate to [quant_min, quant_max]
/// (inside the type's range). f8e4m3 has no rounding to integers: x / scale is rounded to the
/// nearest E4M3 value and saturates at +-448 (quant_min/quant_max are ignored).
struct QuantizeParams {
  DataType to = DataType::kI8;
  bool per_channel = false;
  int64_t axis = 0;  ///< The channel axis when per_channel, in [0, rank).
  int64_t quant_min = -128;
  int64_t quant_max = 127;
  template <class V> void fields(V& v) {
    v("to", to); v("per_channel", per_channel); v("axis", axis); v("quant_min", quant_min);
    v("quant_max", quant_max);
  }
};

/// Dequantization: y = (q - zero_point) * scale, computed in f32 and rounded to `to`.
/// Inputs: 0 q (i8, u8 or f8e4m3), 1 scale and optional 2 zero_point as for Quantize.
/// Output: `to` (f32, f16 or bf16), q's shape.
struct DequantizeParams {
  DataType to = DataType::kF32;
  bool per_channel = false;
  int64_t axis = 0;
  template <class V> void fields(V& v) {
    v("to", to); v("per_channel", per_channel); v("axis", axis);
  }
};

/// The output requantization of a fused low-precision product (set by the builder's
/// fuse_epilogues pass when a per-tensor symmetric Quantize reads the product): the product's
/// value y, finished in the layer's float type `out` (epilogue included), is quantized as a
/// Quantize layer to `to` would: i8, q = clamp(round_half_even(y * (1 / out_scale)), quant_min,
/// quant_max); f8e4m3 (plan format 14), q = E4M3(y * (1 / out_scale)), saturating, round to
/// nearest even (quant_min and quant_max unused). The layer outputs `to`. out_scale is input 5
/// (f32, one element).
struct Requantize {
  bool enabled = false;
  int64_t quant_min = -128;
  int64_t quant_max = 127;
  DataType to = DataType::kI8;  ///< i8 or f8e4m3 (an f8e4m3 product's only).
  template <class V> void fields(V& v) {
    v("requantize", enabled); v("requantize_min", quant_min); v("requantize_max", quant_max);
    v("requantize_to", to);
  }
};

/// A low-precision matrix product, made by the builder's fuse_quantized pass from
/// Dequantize -> MatrixMultiply chains (converters do not add it):
///   out[..., m, n] = act(epilogue.scale * (sum_k a[..., m, k] * b[n, k]) * a_scale * b_scale[n]
///                        + bias[n])
/// Inputs: 0 a (i8, u8 or f8e4m3, rank >= 2, [..., M, K]), 1 b (i8, or f8e4m3 with an f8e4m3 a;
/// [N, K]: the weight
/// already transposed), 2 a_scale (f32, one element), 3 b_scale (f32, one element or [N]; f8e4m3:
/// one element), optional 4 bias (`out`'s dtype, [N]), 5 out_scale (with requantize only),
/// 6 a_zero_point (i32, one element; int8 products only): a may then be u8 (PT2E's asymmetric
/// activations) and the sum is over (a - a_zero_point) * b, exact in int32; optional
/// 7 residual (`out`'s dtype, the output's shape; set by fuse_epilogues from a residual add,
/// not with requantize): out = act(... + bias[n] + residual[..., m, n]).
/// Output: `out` (f32, f16 or bf16), [..., M, N], or requantize.to when requantize is on.
/// Accumulation in int32 for i8 (exact), in f32 for f8e4m3 (on the CUDA back end, an FP8
/// product with an f16/bf16 output accumulates in the tensor cores' fast mode, which promotes
/// its partial sums to f32 less often: EMBER_FP8_FAST_ACCUM=0 turns that off, see
/// docs/precision.md); the scales, the bias and the
/// residual apply once, in f32, after the sum; the value is rounded to `out`, then the
/// activation applies (when epilogue.fused_activation, set by fuse_epilogues), then the
/// requantization.
struct QuantizedMatrixMultiplyParams {
  DataType out = DataType::kF32;
  Epilogue epilogue;
  Requantize requantize;
  template <class V> void fields(V& v) {
    v("out", out); epilogue.fields(v); requantize.fields(v);
  }
};

/// A low-precision convolution, made by the builder's fuse_quantized pass from Dequantize ->
/// Convolution chains with int8 or FP8 E4M3 operands (converters do not add it):
///   out[n, k, *o] = act(epilogue.scale * x_scale * w_scale[k] * acc[n, k, *o] + bias[k])
///   acc[n, k, *o] = sum over the group's channels c and kernel taps t inside the input of
///                   (x[n, c, *i] - x_zero_point) * w[k, c, *t]
/// with Convolution's geometry (cross-correlation; taps in the padding add nothing: the
/// padding is a real zero). Inputs: 0 x (i8, u8 or f8e4m3, [N, C, *spatial], 1 to 3 spatial
/// dims), 1 w (i8, or f8e4m3 with an f8e4m3 x; [K, C/groups, *kernel]), 2 x_scale (f32, one
/// element), 3 w_scale (f32, one element or [K]: per output channel), optional 4 bias (`out`'s
/// dtype, [K]; nullptr to omit), 5 out_scale (with requantize only), 6 x_zero_point (i32, one
/// element; absent: 0; int8 only), optional 7 residual (the output's shape and layout; set by
/// fuse_epilogues from a residual add): `out`'s dtype, added with the bias; or, for i8/u8 x, an
/// i8 tensor with 8 residual_scale (f32, one element), read as the Dequantize it replaces:
/// rounded to `out` from residual * residual_scale (ResNet's shortcut through the int8 tensor
/// the previous block wrote; a reader older than this input refuses the layer's ninth input).
/// An FP8 layer takes no requantization with a residual.
/// Output: `out` (f32, f16 or bf16), [N, K, *out] as Convolution, or requantize.to (i8, or
/// f8e4m3 for f8e4m3 operands) when requantize is on.
/// Accumulation in int32 for int8 (exact), in f32 for f8e4m3 (each product of two E4M3 values
/// is exact in f32; the sum rounds as a float convolution's); the scales, the bias and the
/// residual apply once, in f32, then the value is rounded to `out`, the epilogue's activation
/// (when fused_activation, set by fuse_epilogues) applies, then the requantization.
struct QuantizedConvolutionParams {
  std::vector<int64_t> stride;        ///< As ConvolutionParams.
  std::vector<int64_t> padding_begin;
  std::vector<int64_t> padding_end;
  std::vector<int64_t> dilation;
  int64_t groups = 1;
  DataType out = DataType::kF32;
  Epilogue epilogue;
  Requantize requantize;
  /// x [N, H, W, C], w [K, R, S, C] and the output [N, OH, OW, K] (2-d, groups = 1; set by the
  /// builder's channels_last pass, plan format 9), as ConvolutionParams::channels_last.
  bool channels_last = false;
  template <class V> void fields(V& v) {
    v("stride", stride); v("padding_begin", padding_begin); v("padding_end", padding_end);
    v("dilation", dilation); v("groups", groups); v("out", out); epilogue.fields(v);
    requantize.fields(v); v("channels_last", channels_last);
  }
};

/// The float Convolution with `q`'s geometry, epilogue and layout: what a quantized convolution
/// computes on the dequantized operands.
inline ConvolutionParams convolution_of(const QuantizedConvolutionParams& q) {
  ConvolutionParams c;
  c.stride = q.stride;
  c.padding_begin = q.padding_begin;
  c.padding_end = q.padding_end;
  c.dilation = q.dilation;
  c.groups = q.groups;
  c.epilogue = q.epilogue;
  c.channels_last = q.channels_last;
  return c;
}

/// What one step of a FusedPointwise program computes (FusedPointwiseParams::program).
enum class FusedOpFamily : uint8_t {
  kScalar,       ///< A constant: attrs[0] (already rounded to the step's dtype). No operands.
  kActivation,   ///< code: ActivationType; attrs: its alpha, beta. One operand.
  kElementWise,  ///< code: ElementWiseOp (kSum..kFloorDiv, float arithmetic). Two operands.
  kUnary,        ///< code: UnaryOp: float math, or kIsInf/kIsNan (a bool step). One operand.
  kCast,         ///< A Cast to the step's dtype (float or bool) of any value. One operand.
  kReduce,       ///< code: ReduceOp; a row reduction (see FusedPointwiseParams). One operand.
  kSelect,       ///< operand 0 (bool) ? operand 1 : operand 2 (float, the step's dtype).
};
inline constexpr int kNumFusedOpFamilies = 7;

/// A chain or DAG of pointwise layers run as one layer, made by the builder's fuse_pointwise
/// pass (converters do not add it). Inputs: 1 to kMaxInputs tensors, each broadcast (numpy
/// rules) to the output shape, which is the broadcast of all of them; float (f32/f16/bf16), or
/// bool and integer ones that only Casts and Select conditions read. Steps compute in f32; a
/// bool step (a Cast to bool, x != 0, plan format 10; isinf/isnan, format 11) holds 0 or 1 and
/// only Select conditions and Casts read it; the outputs are float.
/// Values are numbered inputs first (0 .. n_inputs - 1), then one per step (n_inputs + i).
/// Step i is `program[kStride * i .. + kStride)` = {family, code, dtype, operand 0, 1, 2}
/// (operands are earlier values, -1 when unused) with attrs[2 i], attrs[2 i + 1]. Every step
/// computes in f32 from its operands' values and rounds its result to its dtype, exactly as
/// the layer it replaces stores its output, so the fused layer gives the unfused chain's bits.
/// `outputs` lists the values the layer outputs (the chain's results read outside it).
/// Row reductions (kReduce, plan format 10): every value is defined at every element of the
/// output shape; a kReduce step's value at an element is its operand reduced over the element's
/// row (the output's last dim, as a Reduce layer over that axis with keep_dims computes it: sums
/// and products in f64, four interleaved partial sums merged pairwise, avg = sum / row length
/// in f64; max/min propagate NaN), the same for the whole row. A norm or a softmax written as
/// pointwise layers around Reduce layers (RMSNorm: x * rsqrt(mean(x * x) + eps) * w) is then
/// one layer: the GPU runs it one warp per row.
/// `views` (plan format 10; empty: none) lets an input be read through a transpose and a gather
/// of its last dim instead of a copy made by a layer before it: per input, in order,
/// {n, perm[0..n), m, index[0..m)}; the input is read as transpose(input, perm) (n = 0: as it
/// is), then its last dim through the constant indices (m = 0: whole), and broadcast as usual.
/// `slices` (plan format 18; empty: none) reads a part of an input before that: per input, in
/// order, {n, then n triples (dim, start, size)}: the input is read as its slice starting at
/// `start` with `size` elements along each listed dim (unit stride, the other dims whole),
/// then through its view. A product's part inside a merged product (merge_sibling_products:
/// q and k from one GEMM) is read this way in place.
/// kernel_*: the CUDA back end's generated kernel (empty for other back ends): its CUDA C
/// source, the architecture it was compiled for ("sm_90") and the CUBIN image; a GPU of another
/// architecture recompiles the source when the plan is loaded.
struct FusedPointwiseParams {
  static constexpr int kStride = 6;
  static constexpr int kMaxInputs = 16;
  static constexpr int kMaxSteps = 128;
  std::vector<int64_t> program;
  std::vector<double> attrs;
  std::vector<int64_t> outputs;
  std::string kernel_source;
  std::string kernel_target;
  std::vector<uint8_t> kernel_image;
  std::vector<int64_t> views;
  std::vector<int64_t> slices;
  int64_t num_steps() const { return static_cast<int64_t>(program.size()) / kStride; }
  template <class V> void fields(V& v) {
    v("program", program); v("attrs", attrs); v("outputs", outputs);
    v("kernel_source", kernel_source); v("kernel_target", kernel_target);
    v("kernel_image", kernel_image); v("views", views); v("slices", slices);
  }
};

/// The parameters of a layer; the active alternative's index is the layer's LayerKind.
using LayerParams =
    std::variant<ConstantParams, ConvolutionParams, DeconvolutionParams, PoolingParams,
                 ActivationParams, ElementWiseParams, UnaryParams, ReduceParams, TopKParams,
                 SoftMaxParams, MatrixMultiplyParams, ShuffleParams, ConcatenationParams,
                 SliceParams, GatherParams, ScatterParams, SelectParams, CastParams,
                 NormalizationParams, ResizeParams, PaddingParams, CumulativeParams, FillParams,
                 ShapeParams, IdentityParams, AttentionParams, PluginParams, QuantizeParams,
                 DequantizeParams, QuantizedMatrixMultiplyParams, QuantizedConvolutionParams,
                 FusedPointwiseParams>;
static_assert(std::variant_size_v<LayerParams> == kNumLayerKinds,
              "one LayerParams alternative per LayerKind, in enum order");

}  // namespace ember::engine
