// Shape and type inference of the reduction family: Reduce, TopK, SoftMax, Normalization and
// Cumulative.
//
// Decisions this file makes beyond layers.h (kernels in backends/cpu/reduction.cpp rely on them):
// - Reduce: `axes` must be non-empty. torch's `sum(x, dim=[])` means "all dims" while an empty
//   list reads as "no dims" elsewhere, so the compiler must spell the axes out. bool is
//   rejected; the output keeps the input dtype (sum/prod of i8/u8/i32 wrap like a C cast; cast
//   to i64 first for torch's promotion).
// - TopK and Reduce max/min need at least one element along the reduced dims; symbolic dims
//   turn that into a run-time check.
// - Normalization: `axis` is read by layer and RMS norms only and `num_groups` by group norm only; group
//   and instance norm take channels from dim 1 of x [N, C, *].
#include <cmath>
#include <string>

#include "network/infer.h"

namespace ember::engine {

namespace {

/// Requires a float or integer dtype (not bool) on input 0.
void expect_numeric(const InferContext& ctx, const std::string& role) {
  const DataType t = ctx.dtype(0);
  InferContext::require(dtype_is_float(t) || dtype_is_integer(t),
                        role + " (input 0) must be a float or integer type, got " +
                            std::string(dtype_name(t)));
}

/// Requires an input of rank >= 1 (the layer works along one of its dims).
void expect_rank_at_least(const InferContext& ctx, int lo, const std::string& role) {
  InferContext::require(ctx.rank(0) >= lo, role + " (input 0) must have rank >= " +
                                               std::to_string(lo) + ", got shape " +
                                               shape_to_string(ctx.shape(0)));
}

/// "dim 2 (n)" of input 0, for check messages.
std::string dim_label(const InferContext& ctx, int64_t axis) {
  return "input dim " + std::to_string(axis) + " (" + ctx.shape(0)[axis].to_string() + ")";
}

/// Checks that an optional per-channel or per-element operand has exactly `expected` as shape
/// and x's dtype. `role` is "scale" or "bias".
void expect_affine_operand(InferContext& ctx, size_t i, const Shape& expected,
                           const std::string& role, const std::string& rule) {
  if (!ctx.has(i)) return;
  ctx.expect_same_dtype(0, i);
  const Shape& s = ctx.shape(i);
  InferContext::require(s.size() == expected.size(),
                        role + " (input " + std::to_string(i) + ") must have shape " +
                            shape_to_string(expected) + " (" + rule + "), got " +
                            shape_to_string(s));
  for (size_t d = 0; d < s.size(); ++d) {
    ctx.check_equal(s[d], expected[d],
                    role + " dim " + std::to_string(d) + " must equal " + rule + " dim " +
                        std::to_string(d));
  }
}

}  // namespace

void infer(const ReduceParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  InferContext::require(static_cast<int>(p.op) < kNumReduceOps,
                        "unknown reduce op " + std::to_string(static_cast<int>(p.op)));
  expect_numeric(ctx, "input");
  const bool avg = p.op == ReduceOp::kAvg;
  InferContext::require(!avg || dtype_is_float(ctx.dtype(0)),
                        std::string("average of ") + dtype_name(ctx.dtype(0)) +
                            " is not supported (float only); cast the input to a float type first");
  const int rank = ctx.rank(0);
  InferContext::require(!p.axes.empty(),
                        "axes is empty; list the axes to reduce (every axis for a full reduction)");
  for (size_t i = 0; i < p.axes.size(); ++i) {
    InferContext::expect_axis(p.axes[i], rank, "reduce axis");
    if (i > 0 && p.axes[i] <= p.axes[i - 1]) {
      throw Error("axes must be sorted and distinct, got " + std::to_string(p.axes[i - 1]) +
                  " before " + std::to_string(p.axes[i]));
    }
  }

  const Shape& in = ctx.shape(0);
  if (p.op == ReduceOp::kMax || p.op == ReduceOp::kMin) {
    for (int64_t a : p.axes) {
      ctx.check_less_equal(DimExpr(1), in[a],
                           std::string(p.op == ReduceOp::kMax ? "max" : "min") +
                               " over an empty dim: " + dim_label(ctx, a) + " must be >= 1");
    }
  }
  Shape out;
  size_t next = 0;
  for (int d = 0; d < rank; ++d) {
    const bool reduced = next < p.axes.size() && p.axes[next] == d;
    if (reduced) ++next;
    if (!reduced) {
      out.push_back(in[d]);
    } else if (p.keep_dims) {
      out.emplace_back(1);
    }
  }
  ctx.add_output(ctx.dtype(0), std::move(out));
}

void infer(const TopKParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  InferContext::require(static_cast<int>(p.op) < kNumTopKOps,
                        "unknown topk op " + std::to_string(static_cast<int>(p.op)));
  expect_numeric(ctx, "input");
  expect_rank_at_least(ctx, 1, "input");
  InferContext::expect_axis(p.axis, ctx.rank(0), "axis");
  InferContext::require(p.index_dtype == DataType::kI32 || p.index_dtype == DataType::kI64,
                        std::string("index_dtype must be i32 or i64, got ") +
                            (static_cast<int>(p.index_dtype) < kNumDataTypes
                                 ? dtype_name(p.index_dtype)
                                 : "an unknown dtype"));
  InferContext::require(p.k >= 1, "k must be >= 1, got " + std::to_string(p.k));
  ctx.check_less_equal(DimExpr(p.k), ctx.shape(0)[p.axis],
                       "k must be <= " + dim_label(ctx, p.axis));
  Shape out = ctx.shape(0);
  out[p.axis] = DimExpr(p.k);
  ctx.add_output(ctx.dtype(0), out);
  ctx.add_output(p.index_dtype, std::move(out));
}

void infer(const SoftMaxParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  ctx.expect_float(0, "input");
  expect_rank_at_least(ctx, 1, "input");
  InferContext::expect_axis(p.axis, ctx.rank(0), "axis");
  InferContext::require(!(p.log && p.zero_masked_rows),
                        "zero_masked_rows is for softmax, not log-softmax");
  ctx.add_output(ctx.dtype(0), ctx.shape(0));
}

void infer(const NormalizationParams& p, InferContext& ctx) {
  const NormalizationQuantize& q = p.quantize;
  ctx.expect_num_inputs(1, q.enabled ? 4 : 3);
  ctx.expect_float(0, "input");
  InferContext::require(std::isfinite(p.epsilon) && p.epsilon >= 0.0,
                        "epsilon must be finite and >= 0, got " + std::to_string(p.epsilon));
  InferContext::require(static_cast<int>(p.type) < kNumNormalizationTypes,
                        "unknown normalization type " + std::to_string(static_cast<int>(p.type)));
  const Shape& x = ctx.shape(0);
  const int rank = ctx.rank(0);
  switch (p.type) {
    case NormalizationType::kLayer:
    case NormalizationType::kRms: {
      expect_rank_at_least(ctx, 1, "input");
      InferContext::expect_axis(p.axis, rank, "axis");
      const Shape normalized(x.begin() + p.axis, x.end());
      const std::string rule = "input[" + std::to_string(p.axis) + ":]";
      expect_affine_operand(ctx, 1, normalized, "scale", rule);
      expect_affine_operand(ctx, 2, normalized, "bias", rule);
      break;
    }
    case NormalizationType::kGroup:
    case NormalizationType::kInstance: {
      const bool group = p.type == NormalizationType::kGroup;
      const std::string kind = group ? "group norm" : "instance norm";
      InferContext::require(rank >= 2, kind + " input (input 0) must be [N, C, *] with rank >= 2, got " +
                                           shape_to_string(x));
      if (group) {
        InferContext::require(p.num_groups >= 1,
                              "num_groups must be >= 1, got " + std::to_string(p.num_groups));
        ctx.check_equal(mod(x[1], DimExpr(p.num_groups)), DimExpr(0),
                        "channels " + x[1].to_string() + " must be divisible by num_groups " +
                            std::to_string(p.num_groups));
      }
      const Shape channels{x[1]};
      expect_affine_operand(ctx, 1, channels, "scale", "[C] of input");
      expect_affine_operand(ctx, 2, channels, "bias", "[C] of input");
      break;
    }
  }
  if (!q.enabled) {
    InferContext::require(q.float_output, "float_output off needs quantize on");
    ctx.add_output(ctx.dtype(0), x);
    return;
  }
  InferContext::require(p.type == NormalizationType::kLayer || p.type == NormalizationType::kRms,
                        "a quantized output is taken by layer and RMS norms only");
  InferContext::require(
      q.to == DataType::kI8 || q.to == DataType::kF8E4M3,
      std::string("quantize_to must be i8 or f8e4m3, got ") +
          (static_cast<int>(q.to) < kNumDataTypes ? dtype_name(q.to) : "an unknown dtype"));
  if (q.to == DataType::kI8) {
    InferContext::require(-128 <= q.quant_min && q.quant_min <= q.quant_max && q.quant_max <= 127,
                          "quantize range [" + std::to_string(q.quant_min) + ", " +
                              std::to_string(q.quant_max) + "] is empty or outside i8's [-128, 127]");
  }
  InferContext::require(ctx.has(3), "quantize needs its scale (input 3)");
  ctx.expect_dtype(3, DataType::kF32, "quantize scale");
  InferContext::require(one_element(ctx.shape(3)),
                        "quantize scale (input 3) must have one element, got shape " +
                            shape_to_string(ctx.shape(3)));
  if (q.float_output) ctx.add_output(ctx.dtype(0), x);
  ctx.add_output(q.to, x);
}

void infer(const CumulativeParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  InferContext::require(p.op == CumulativeOp::kSum,
                        "unknown cumulative op " + std::to_string(static_cast<int>(p.op)));
  expect_numeric(ctx, "input");
  expect_rank_at_least(ctx, 1, "input");
  InferContext::expect_axis(p.axis, ctx.rank(0), "axis");
  ctx.add_output(ctx.dtype(0), ctx.shape(0));
}

}  // namespace ember::engine
