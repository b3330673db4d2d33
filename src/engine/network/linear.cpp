// Shape and type inference of the linear family: Convolution, Deconvolution, Pooling and
// MatrixMultiply, with PyTorch's semantics (see layers.h).
//
// Decisions this file makes beyond layers.h (kernels in backends/cpu/linear.cpp rely on them):
// - Every per-spatial-dim vector has exactly one entry per spatial dim (no empty = default), and
//   window-like parameters (stride, dilation, padding, window, output_padding) are at most 2^30,
//   so output-size arithmetic cannot overflow.
// - Convolution/Deconvolution take x [N, C, *spatial] with 1 to 3 spatial dims; the weight has
//   x's rank; every kernel dim, channel count and output dim is >= 1 (symbolic dims become
//   run-time checks). Deconvolution also needs every input spatial dim >= 1.
// - channels_last (Convolution, Pooling) needs rank 4 (2-d, batched): x [N, H, W, C], weight
//   [K, R, S, C/groups]. The checks run on the NCHW view of those shapes, and their messages
//   name the actual (NHWC) dim positions.
// - Pooling takes [N, C, *spatial] or unbatched [C, *spatial] input. As torch requires, each
//   padding is at most window/2, so every window overlaps the input; ceil_mode drops a last
//   window that would start inside the end padding. Average pooling needs dilation all ones;
//   divisor_override (> 0) is for average pooling only. Max pooling also takes integers (not
//   bool).
// - MatrixMultiply: a transpose flag on a rank-1 operand has no effect (a vector has one layout).
#include <string>
#include <vector>

#include <cmath>

#include "network/infer.h"

namespace ember::engine {

namespace {

/// Input positions of Convolution and Deconvolution.
struct ConvInputs {
  enum : size_t { kX = 0, kWeight = 1, kBias = 2, kResidual = 3 };
};
/// Input positions of MatrixMultiply.
struct MatMulInputs {
  enum : size_t { kA = 0, kB = 1, kBias = 2, kResidual = 3 };
};

/// "input dim 2 (h)" for check messages.
std::string dim_label(const char* role, size_t axis, const DimExpr& d) {
  return std::string(role) + " dim " + std::to_string(axis) + " (" + d.to_string() + ")";
}

/// Checks a fused epilogue's residual input (same dtype and shape as the output `out`) and its
/// activation parameters.
void expect_epilogue(const Epilogue& e, InferContext& ctx, size_t residual, size_t like,
                     const Shape& out) {
  if (ctx.has(residual)) {
    ctx.expect_same_dtype(like, residual);
    const Shape& r = ctx.shape(residual);
    InferContext::require(r.size() == out.size(),
                          "epilogue residual (input " + std::to_string(residual) +
                              ") must have the output's rank " + std::to_string(out.size()) +
                              ", got " + std::to_string(r.size()));
    for (size_t d = 0; d < out.size(); ++d) {
      ctx.check_equal(r[d], out[d], dim_label("epilogue residual", d, r[d]) +
                                        " must equal output dim " + out[d].to_string());
    }
  }
  InferContext::require(static_cast<int>(e.activation) < kNumActivationTypes,
                        "epilogue activation type is out of range");
  InferContext::require(std::isfinite(e.scale), "epilogue scale must be finite");
}

/// NCHW dim position -> NHWC position (0 -> 0, 1 -> 3, 2 -> 1, 3 -> 2); also KCRS -> KRSC.
size_t nhwc_axis(size_t nchw) { return nchw == 0 ? 0 : nchw == 1 ? 3 : nchw - 1; }

/// The NCHW (KCRS) view of a channels-last shape, or the shape itself.
Shape nchw_view(const Shape& s, bool channels_last) {
  return channels_last ? Shape{s[0], s[3], s[1], s[2]} : s;
}

/// The channels-last form of an NCHW shape, or the shape itself.
Shape nhwc_form(const Shape& s, bool channels_last) {
  return channels_last ? Shape{s[0], s[2], s[3], s[1]} : s;
}

/// Requires rank 4 of input `i` when `channels_last` is set.
void expect_channels_last_rank(InferContext& ctx, bool channels_last, size_t i, const char* what) {
  if (!channels_last) return;
  InferContext::require(ctx.rank(i) == 4,
                        std::string("channels_last needs a 2-d ") + what + " of rank 4 (" +
                            (i == 0 ? "[N, H, W, C]" : "[K, R, S, C/groups]") + "), got rank " +
                            std::to_string(ctx.rank(i)));
}

/// Upper bound on stride, dilation, padding, window and output_padding values.
constexpr int64_t kMaxWindowParam = int64_t{1} << 30;

/// Requires `v` to have one entry per spatial dim, each in [lo, kMaxWindowParam].
void expect_per_dim(const std::vector<int64_t>& v, const char* name, size_t spatial_rank,
                    int64_t lo) {
  InferContext::require(v.size() == spatial_rank,
                        std::string(name) + " needs one value per spatial dim (" +
                            std::to_string(spatial_rank) + "), got " + std::to_string(v.size()));
  for (size_t d = 0; d < v.size(); ++d) {
    InferContext::require(v[d] >= lo && v[d] <= kMaxWindowParam,
                          std::string(name) + "[" + std::to_string(d) +
                              "] = " + std::to_string(v[d]) + " is out of range [" +
                              std::to_string(lo) + ", 2^30]");
  }
}


/// Validates what Convolution and Deconvolution share: input count, float dtypes, ranks, bias
/// rank, groups. Returns the number of spatial dims.
size_t expect_conv_inputs(InferContext& ctx, int64_t groups, size_t max_inputs = 3) {
  ctx.expect_num_inputs(2, max_inputs);
  ctx.expect_float(ConvInputs::kX, "input");
  ctx.expect_same_dtype(ConvInputs::kX, ConvInputs::kWeight);
  ctx.expect_rank_between(ConvInputs::kX, 3, 5, "input [N, C, *spatial]");
  ctx.expect_rank(ConvInputs::kWeight, ctx.rank(ConvInputs::kX), "weight");
  if (ctx.has(ConvInputs::kBias)) {
    ctx.expect_same_dtype(ConvInputs::kX, ConvInputs::kBias);
    ctx.expect_rank(ConvInputs::kBias, 1, "bias");
  }
  InferContext::require(groups >= 1 && groups <= kMaxWindowParam,
                        "groups = " + std::to_string(groups) + " must be in [1, 2^30]");
  return static_cast<size_t>(ctx.rank(ConvInputs::kX) - 2);
}

}  // namespace

Shape infer_convolution_shape(const ConvolutionParams& p, InferContext& ctx) {
  ctx.expect_rank_between(ConvInputs::kX, 3, 5, "input [N, C, *spatial]");
  ctx.expect_rank(ConvInputs::kWeight, ctx.rank(ConvInputs::kX), "weight");
  InferContext::require(p.groups >= 1 && p.groups <= kMaxWindowParam,
                        "groups = " + std::to_string(p.groups) + " must be in [1, 2^30]");
  if (ctx.has(ConvInputs::kBias)) ctx.expect_rank(ConvInputs::kBias, 1, "bias");
  const auto nsp = static_cast<size_t>(ctx.rank(ConvInputs::kX) - 2);
  expect_channels_last_rank(ctx, p.channels_last, ConvInputs::kX, "input");
  expect_channels_last_rank(ctx, p.channels_last, ConvInputs::kWeight, "weight");
  expect_per_dim(p.stride, "stride", nsp, 1);
  expect_per_dim(p.padding_begin, "padding_begin", nsp, 0);
  expect_per_dim(p.padding_end, "padding_end", nsp, 0);
  expect_per_dim(p.dilation, "dilation", nsp, 1);

  const Shape x = nchw_view(ctx.shape(ConvInputs::kX), p.channels_last);
  const Shape w = nchw_view(ctx.shape(ConvInputs::kWeight), p.channels_last);
  // Messages name the dims where they are: NHWC / KRSC positions under channels_last.
  const auto at = [&](size_t d) { return p.channels_last ? nhwc_axis(d) : d; };
  const DimExpr groups(p.groups);
  ctx.check_less_equal(1, w[0],
                       dim_label("weight", at(0), w[0]) + " (output channels) must be >= 1");
  ctx.check_less_equal(1, w[1],
                       dim_label("weight", at(1), w[1]) +
                           " (input channels per group) must be >= 1");
  ctx.check_equal(w[1] * groups, x[1],
                  dim_label("weight", at(1), w[1]) + " times groups (" + std::to_string(p.groups) +
                      ") must equal " + dim_label("input", at(1), x[1]) + " (input channels)");
  ctx.check_equal(mod(w[0], groups), 0,
                  dim_label("weight", at(0), w[0]) +
                      " (output channels) must be divisible by groups (" +
                      std::to_string(p.groups) + ")");
  if (ctx.has(ConvInputs::kBias)) {
    const Shape& b = ctx.shape(ConvInputs::kBias);
    ctx.check_equal(b[0], w[0],
                    dim_label("bias", 0, b[0]) + " must equal " + dim_label("weight", at(0), w[0]) +
                        " (output channels)");
  }
  Shape out{x[0], w[0]};
  for (size_t d = 0; d < nsp; ++d) {
    const DimExpr& k = w[2 + d];
    ctx.check_less_equal(1, k, dim_label("weight", at(2 + d), k) + " (kernel size) must be >= 1");
    const DimExpr extent = DimExpr(p.dilation[d]) * (k - 1) + 1;
    const DimExpr padded = x[2 + d] + p.padding_begin[d] + p.padding_end[d];
    ctx.check_less_equal(extent, padded,
                         "dilated kernel extent along spatial dim " + std::to_string(d) +
                             " must fit in the padded " + dim_label("input", at(2 + d), x[2 + d]) +
                             "; reduce the kernel or dilation, or pad more");
    out.push_back(floor_div(padded - extent, p.stride[d]) + 1);
  }
  return nhwc_form(out, p.channels_last);
}

void infer(const ConvolutionParams& p, InferContext& ctx) {
  expect_conv_inputs(ctx, p.groups, 4);
  Shape out = infer_convolution_shape(p, ctx);
  expect_epilogue(p.epilogue, ctx, ConvInputs::kResidual, ConvInputs::kX, out);
  ctx.add_output(ctx.dtype(ConvInputs::kX), std::move(out));
}

void infer(const DeconvolutionParams& p, InferContext& ctx) {
  const size_t nsp = expect_conv_inputs(ctx, p.groups);
  expect_per_dim(p.stride, "stride", nsp, 1);
  expect_per_dim(p.padding_begin, "padding_begin", nsp, 0);
  expect_per_dim(p.padding_end, "padding_end", nsp, 0);
  expect_per_dim(p.dilation, "dilation", nsp, 1);
  expect_per_dim(p.output_padding, "output_padding", nsp, 0);
  for (size_t d = 0; d < nsp; ++d) {
    InferContext::require(p.output_padding[d] < std::max(p.stride[d], p.dilation[d]),
                          "output_padding[" + std::to_string(d) +
                              "] = " + std::to_string(p.output_padding[d]) +
                              " must be smaller than stride or dilation (as in PyTorch)");
  }

  const Shape& x = ctx.shape(ConvInputs::kX);
  const Shape& w = ctx.shape(ConvInputs::kWeight);
  const DimExpr groups(p.groups);
  ctx.check_less_equal(1, x[1], dim_label("input", 1, x[1]) + " (channels) must be >= 1");
  ctx.check_less_equal(1, w[1],
                       dim_label("weight", 1, w[1]) + " (output channels per group) must be >= 1");
  ctx.check_equal(w[0], x[1],
                  dim_label("weight", 0, w[0]) + " must equal " + dim_label("input", 1, x[1]) +
                      " (input channels)");
  ctx.check_equal(mod(x[1], groups), 0,
                  dim_label("input", 1, x[1]) + " (channels) must be divisible by groups (" +
                      std::to_string(p.groups) + ")");
  const DimExpr out_channels = w[1] * groups;
  if (ctx.has(ConvInputs::kBias)) {
    const Shape& b = ctx.shape(ConvInputs::kBias);
    ctx.check_equal(b[0], out_channels,
                    dim_label("bias", 0, b[0]) + " must equal weight dim 1 times groups (" +
                        out_channels.to_string() + ", output channels)");
  }
  Shape out{x[0], out_channels};
  for (size_t d = 0; d < nsp; ++d) {
    const DimExpr& in = x[2 + d];
    const DimExpr& k = w[2 + d];
    ctx.check_less_equal(1, in, dim_label("input", 2 + d, in) + " must be >= 1");
    ctx.check_less_equal(1, k, dim_label("weight", 2 + d, k) + " (kernel size) must be >= 1");
    const DimExpr size = (in - 1) * p.stride[d] - p.padding_begin[d] - p.padding_end[d] +
                         DimExpr(p.dilation[d]) * (k - 1) + p.output_padding[d] + 1;
    ctx.check_less_equal(1, size,
                         "output spatial dim " + std::to_string(d) + " (" + size.to_string() +
                             ") must be >= 1; reduce the padding");
    out.push_back(size);
  }
  ctx.add_output(ctx.dtype(ConvInputs::kX), std::move(out));
}

void infer(const PoolingParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  InferContext::require(static_cast<int>(p.type) < kNumPoolingTypes,
                        "unknown pooling type " + std::to_string(static_cast<int>(p.type)));
  const bool average = p.type == PoolingType::kAverage;
  const DataType t = ctx.dtype(0);
  InferContext::require(dtype_is_float(t) || (!average && dtype_is_integer(t)),
                        std::string("input (input 0) must be ") +
                            (average ? "f32, f16 or bf16" : "a float or integer type") + " for " +
                            (average ? "average" : "max") + " pooling, got " + dtype_name(t));
  const size_t nsp = p.window.size();
  InferContext::require(
      nsp >= 1 && nsp <= 3,
      "window must have 1 to 3 entries (spatial dims), got " + std::to_string(nsp));
  ctx.expect_rank_between(0, static_cast<int>(nsp) + 1, static_cast<int>(nsp) + 2,
                          "input [N, C, *spatial] or [C, *spatial]");
  InferContext::require(!p.channels_last || nsp == 2,
                        "channels_last pooling needs a 2-d window, got " + std::to_string(nsp) +
                            " entries");
  expect_channels_last_rank(ctx, p.channels_last, 0, "input");
  expect_per_dim(p.window, "window", nsp, 1);
  expect_per_dim(p.stride, "stride", nsp, 1);
  expect_per_dim(p.padding_begin, "padding_begin", nsp, 0);
  expect_per_dim(p.padding_end, "padding_end", nsp, 0);
  expect_per_dim(p.dilation, "dilation", nsp, 1);
  for (size_t d = 0; d < nsp; ++d) {
    InferContext::require(
        p.padding_begin[d] <= p.window[d] / 2 && p.padding_end[d] <= p.window[d] / 2,
        "padding along spatial dim " + std::to_string(d) + " (" +
            std::to_string(p.padding_begin[d]) + ", " + std::to_string(p.padding_end[d]) +
            ") must be at most half the window (" + std::to_string(p.window[d]) +
            "), as in PyTorch");
    InferContext::require(!average || p.dilation[d] == 1,
                          "average pooling has no dilation; dilation[" + std::to_string(d) +
                              "] = " + std::to_string(p.dilation[d]) + " must be 1");
  }
  InferContext::require(p.divisor_override >= 0 && p.divisor_override <= kMaxWindowParam,
                        "divisor_override = " + std::to_string(p.divisor_override) +
                            " must be in [0, 2^30] (0 = none)");
  InferContext::require(average || p.divisor_override == 0,
                        "divisor_override applies to average pooling only; set it to 0");

  const Shape x = nchw_view(ctx.shape(0), p.channels_last);
  const auto at = [&](size_t d) { return p.channels_last ? nhwc_axis(d) : d; };
  const size_t first = x.size() - nsp;
  Shape out(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(first));
  for (size_t d = 0; d < nsp; ++d) {
    const DimExpr& in = x[first + d];
    const int64_t s = p.stride[d];
    const DimExpr extent = DimExpr(p.dilation[d]) * (p.window[d] - 1) + 1;
    const DimExpr span = in + p.padding_begin[d] + p.padding_end[d] - extent;
    DimExpr size = floor_div(span + (p.ceil_mode ? s - 1 : 0), s) + 1;
    if (p.ceil_mode) {
      // PyTorch drops the last window when it would start at or past in + padding_begin (in the
      // end padding): subtract 1 exactly when (size - 1) * s - (in + padding_begin) >= 0.
      const DimExpr past = (size - 1) * s - (in + p.padding_begin[d]);
      size = size - min(max(past + 1, 0), 1);
    }
    ctx.check_less_equal(1, size,
                         "output spatial dim " + std::to_string(d) + " (" + size.to_string() +
                             ") must be >= 1: the window does not fit in the padded " +
                             dim_label("input", at(first + d), in));
    out.push_back(size);
  }
  ctx.add_output(t, nhwc_form(out, p.channels_last));
}

void infer(const MatrixMultiplyParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(2, 4);
  ctx.expect_float(MatMulInputs::kA, "a");
  ctx.expect_same_dtype(MatMulInputs::kA, MatMulInputs::kB);
  const Shape& a = ctx.shape(MatMulInputs::kA);
  const Shape& b = ctx.shape(MatMulInputs::kB);
  InferContext::require(!a.empty(), "a (input 0) must have rank >= 1, got a scalar");
  InferContext::require(!b.empty(), "b (input 1) must have rank >= 1, got a scalar");
  const size_t ra = a.size(), rb = b.size();
  // Rows and columns after the transpose flags; a vector a is one row, a vector b one column.
  const DimExpr a_inner = ra == 1 ? a[0] : (p.transpose_a ? a[ra - 2] : a[ra - 1]);
  const DimExpr b_inner = rb == 1 ? b[0] : (p.transpose_b ? b[rb - 1] : b[rb - 2]);
  ctx.check_equal(
      a_inner, b_inner,
      "the contracted dims must agree: a's " + std::string(ra == 1 ? "length" : "columns") + " (" +
          a_inner.to_string() + ") vs b's " + std::string(rb == 1 ? "length" : "rows") + " (" +
          b_inner.to_string() + ") with transpose_a=" + (p.transpose_a ? "true" : "false") +
          ", transpose_b=" + (p.transpose_b ? "true" : "false"));
  const Shape a_batch(a.begin(), a.end() - std::min<size_t>(ra, 2));
  const Shape b_batch(b.begin(), b.end() - std::min<size_t>(rb, 2));
  Shape out = ctx.broadcast_shapes(a_batch, b_batch);
  if (ra >= 2) out.push_back(p.transpose_a ? a[ra - 1] : a[ra - 2]);
  if (rb >= 2) out.push_back(p.transpose_b ? b[rb - 2] : b[rb - 1]);
  if (ctx.has(MatMulInputs::kBias)) {
    // Along the columns of b: a vector b has none (its output's last dim belongs to a).
    InferContext::require(rb >= 2, "an epilogue bias needs b (input 1) of rank >= 2");
    ctx.expect_same_dtype(MatMulInputs::kA, MatMulInputs::kBias);
    ctx.expect_rank(MatMulInputs::kBias, 1, "epilogue bias");
    InferContext::require(!out.empty(), "an epilogue bias needs an output of rank >= 1");
    ctx.check_equal(ctx.shape(MatMulInputs::kBias)[0], out.back(),
                    "epilogue bias length must equal the output's last dim " +
                        out.back().to_string());
  }
  expect_epilogue(p.epilogue, ctx, MatMulInputs::kResidual, MatMulInputs::kA, out);
  ctx.add_output(ctx.dtype(MatMulInputs::kA), std::move(out));
}

}  // namespace ember::engine
