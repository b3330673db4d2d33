// Shape and type inference of the data-movement family: Constant, Shuffle, Concatenation, Slice,
// Gather, Scatter, Padding, Resize, Fill, Shape and Identity.
//
// Decisions this file makes beyond layers.h (kernels in backends/cpu/data_movement.cpp rely on
// them):
// - Permutations follow torch.permute: output dim i is input dim perm[i].
// - Shuffle reshape dims are constants >= 0, the constant -1 (at most once), or expressions; 0
//   means an empty dim (not "copy the input dim" as in ONNX).
// - Slice: for every dim, start and the last index touched, start + (size - 1) * stride, must lie
//   in [0, dim); symbolic values turn this into run-time checks. An empty slice (size 0) only
//   needs its start in range as if one element were read.
// - Gather: num_batch_dims is read by kNd only and axis by kDefault/kElement only; the unused one
//   must be 0 so that one layer has one spelling. kNd takes the tuple length k from the last
//   indices dim, which must be a constant in [1, rank(data) - num_batch_dims].
// - Scatter: updates has exactly indices' shape; indices dims other than `axis` may not exceed
//   data's (torch's rule). Reductions are for float and integer types (not bool).
// - Resize: `scales` are PyTorch scale factors (output / input, one per dim, each > 0); the
//   coordinate mapping uses 1 / scale where given. Linear and cubic take float types; cubic works
//   on the last two dims and requires the leading dims to keep their sizes.
// - Fill: kArange is rank 1 and not bool. Numbers stored into integer types must be finite.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "network/infer.h"

namespace ember::engine {

namespace {

std::string to_str(int64_t v) { return std::to_string(v); }

/// Requires `t` to be a known DataType (plans read from disk may carry any byte).
void expect_valid_dtype(DataType t, const std::string& what) {
  InferContext::require(static_cast<int>(t) < kNumDataTypes,
                        what + " has unknown dtype " + std::to_string(static_cast<int>(t)));
}

/// Requires the indices operand (input i) to be i32 or i64.
void expect_index_dtype(const InferContext& ctx, size_t i) {
  const DataType t = ctx.dtype(i);
  InferContext::require(t == DataType::kI32 || t == DataType::kI64,
                        "indices (input " + std::to_string(i) + ") must be i32 or i64, got " +
                            dtype_name(t) + " (insert a Cast layer)");
}

/// Requires input i to have rank >= lo.
void expect_rank_at_least(const InferContext& ctx, size_t i, int lo, const std::string& role) {
  InferContext::require(ctx.rank(i) >= lo, role + " (input " + std::to_string(i) +
                                               ") must have rank >= " + std::to_string(lo) +
                                               ", got shape " + shape_to_string(ctx.shape(i)));
}

/// Splits a product into its constant part (multiplied into `constant`) and its other factors.
void split_factors(const DimExpr& e, int64_t& constant, std::vector<DimExpr>& factors) {
  if (e.is_constant()) {
    constant *= e.constant();
  } else if (e.op() == DimExpr::Op::kMul) {
    split_factors(e.lhs(), constant, factors);
    split_factors(e.rhs(), constant, factors);
  } else {
    factors.push_back(e);
  }
}

/// A reshape's -1 dim, numel / known. Factors the two share cancel first, so a view of
/// [b, S, Hkv * E] as [b, S, -1, E] gets the constant Hkv rather than floordiv(b*S*Hkv*E, b*S*E),
/// which later layers could not use as a head count. Only when what is left divides exactly:
/// otherwise floordiv(numel, known) stays, and the element-count check reports the mismatch. A
/// cancelled factor that is 0 at run time gives an empty tensor either way (numel 0). This is
/// here and not in DimExpr's floor_div simplification on purpose: a general floordiv(a*b, a)
/// must still fail when a is 0 at run time; only a reshape's -1 may take the empty tensor.
DimExpr inferred_dim(const DimExpr& numel, const DimExpr& known) {
  int64_t num_constant = 1, den_constant = 1;
  std::vector<DimExpr> num, den;
  split_factors(numel, num_constant, num);
  split_factors(known, den_constant, den);
  for (auto d = den.begin(); d != den.end();) {
    const auto n = std::find(num.begin(), num.end(), *d);
    if (n == num.end()) {
      ++d;
      continue;
    }
    num.erase(n);
    d = den.erase(d);
  }
  if (!den.empty() || den_constant == 0 || num_constant % den_constant != 0) {
    return floor_div(numel, known);
  }
  DimExpr out = num_constant / den_constant;
  for (const DimExpr& f : num) out = out * f;
  return out;
}

/// Requires `perm` to be empty (identity) or a permutation of [0, rank).
void expect_permutation(const std::vector<int64_t>& perm, size_t rank, const std::string& what) {
  if (perm.empty()) return;
  std::string text = "[";
  for (size_t i = 0; i < perm.size(); ++i) text += (i ? ", " : "") + to_str(perm[i]);
  text += "]";
  InferContext::require(perm.size() == rank, what + " " + text + " must have one entry per dim (" +
                                                 std::to_string(rank) + ")");
  std::vector<bool> seen(rank, false);
  for (int64_t v : perm) {
    InferContext::require(
        v >= 0 && static_cast<size_t>(v) < rank && !seen[v],
        what + " " + text + " is not a permutation of [0, " + std::to_string(rank) + ")");
    seen[v] = true;
  }
}

/// torch.permute: output dim i is input dim perm[i]. Empty = identity.
Shape permute(const Shape& s, const std::vector<int64_t>& perm) {
  if (perm.empty()) return s;
  Shape out(s.size());
  for (size_t i = 0; i < perm.size(); ++i) out[i] = s[perm[i]];
  return out;
}

/// "input dim 2 (n)" for check messages.
std::string dim_label(const InferContext& ctx, size_t input, size_t d) {
  return "input " + std::to_string(input) + " dim " + std::to_string(d) + " (" +
         ctx.shape(input)[d].to_string() + ")";
}

/// True when `v` converts to int64 without undefined behavior.
bool fits_int64(double v) {
  return std::isfinite(v) && v >= -9.2233720368547758e18 && v < 9.2233720368547758e18;
}

/// Requires a number that is stored into elements of `t` to be representable: any value for
/// float types (inf and nan included), finite and within int64 for integer types and bool.
void expect_storable(double v, DataType t, const std::string& what) {
  if (dtype_is_float(t)) return;
  InferContext::require(fits_int64(v), what + " " + std::to_string(v) + " cannot be stored as " +
                                           dtype_name(t) + " (must be finite and within int64)");
}

/// Requires every constant dim of `shape` to be >= 0.
void expect_nonnegative_dims(const Shape& shape, const std::string& what) {
  for (size_t d = 0; d < shape.size(); ++d) {
    InferContext::require(
        !shape[d].is_constant() || shape[d].constant() >= 0,
        what + " dim " + std::to_string(d) + " is " + shape[d].to_string() + "; dims must be >= 0");
  }
}

}  // namespace

// ---------------------------------------------------------------- Constant

void infer(const ConstantParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(0, 0);
  const Weights& w = p.weights;
  expect_valid_dtype(w.dtype(), "weights");
  for (size_t d = 0; d < w.dims().size(); ++d) {
    InferContext::require(w.dims()[d] >= 0, "weights dim " + std::to_string(d) + " is negative (" +
                                                to_str(w.dims()[d]) + ")");
  }
  InferContext::require(w.nbytes() == 0 || w.data() != nullptr,
                        "weights of shape " + dims_to_string(w.dims()) + " have no data");
  ctx.add_output(w.dtype(), shape_from_dims(w.dims()));
}

// ---------------------------------------------------------------- Shuffle

namespace {

/// `cur` read as the row-major shape `target` (a reshape's, or a Padding's input_shape): one
/// entry may be -1 (inferred from the element count), the others >= 0, and the element count
/// must stay. `what` names the field in errors.
Shape viewed_shape(const Shape& cur, const Shape& target, const std::string& what,
                   InferContext& ctx) {
  int inferred = -1;
  DimExpr known = 1;  // product of the dims other than -1
  for (size_t d = 0; d < target.size(); ++d) {
    const DimExpr& e = target[d];
    if (e.is_constant() && e.constant() == -1) {
      InferContext::require(inferred < 0, what + " " + shape_to_string(target) +
                                              " has more than one -1 (at most one dim is inferred)");
      inferred = static_cast<int>(d);
      continue;
    }
    InferContext::require(!e.is_constant() || e.constant() >= 0,
                          what + " dim " + std::to_string(d) + " is " + e.to_string() +
                              "; dims must be >= 0 or -1 (inferred)");
    known = known * e;
  }
  const DimExpr numel = shape_numel(cur);
  Shape out = target;
  if (inferred >= 0) {
    InferContext::require(!known.is_constant() || known.constant() != 0,
                          what + " " + shape_to_string(target) +
                              " cannot infer its -1 dim: the other dims multiply to 0");
    out[inferred] = inferred_dim(numel, known);
  }
  ctx.check_equal(shape_numel(out), numel,
                  what + " " + shape_to_string(target) + " must keep the element count of " +
                      shape_to_string(cur));
  return out;
}

}  // namespace


void infer(const ShuffleParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  const Shape& in = ctx.shape(0);
  expect_permutation(p.first_transpose, in.size(), "first_transpose");
  Shape cur = permute(in, p.first_transpose);
  if (p.has_reshape) {
    cur = viewed_shape(cur, p.reshape, "reshape", ctx);
  } else {
    InferContext::require(p.reshape.empty(),
                          "reshape dims are given but has_reshape is false; set has_reshape or "
                          "clear reshape");
  }
  expect_permutation(p.second_transpose, cur.size(), "second_transpose");
  ctx.add_output(ctx.dtype(0), permute(cur, p.second_transpose));
}

// ---------------------------------------------------------------- Concatenation

void infer(const ConcatenationParams& p, InferContext& ctx) {
  InferContext::require(ctx.num_inputs() >= 1, "needs at least one input");
  for (size_t i = 0; i < ctx.num_inputs(); ++i) ctx.in(i);  // throws on a missing input
  expect_rank_at_least(ctx, 0, 1, "input");
  const int rank = ctx.rank(0);
  InferContext::expect_axis(p.axis, rank, "axis");
  Shape out = ctx.shape(0);
  for (size_t i = 1; i < ctx.num_inputs(); ++i) {
    ctx.expect_same_dtype(0, i);
    InferContext::require(ctx.rank(i) == rank,
                          "input " + std::to_string(i) + " has shape " +
                              shape_to_string(ctx.shape(i)) + " but input 0 has shape " +
                              shape_to_string(ctx.shape(0)) + "; all inputs need one rank");
    for (int d = 0; d < rank; ++d) {
      if (d == p.axis) continue;
      ctx.check_equal(ctx.shape(i)[d], ctx.shape(0)[d],
                      dim_label(ctx, i, d) + " must equal " + dim_label(ctx, 0, d) +
                          " (only the concatenation axis " + to_str(p.axis) + " may differ)");
    }
    out[p.axis] = out[p.axis] + ctx.shape(i)[p.axis];
  }
  ctx.add_output(ctx.dtype(0), std::move(out));
}

// ---------------------------------------------------------------- Slice

void infer(const SliceParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  const Shape& in = ctx.shape(0);
  const size_t rank = in.size();
  InferContext::require(p.start.size() == rank && p.size.size() == rank && p.stride.size() == rank,
                        "start, size and stride need one entry per input dim (" +
                            std::to_string(rank) + "), got " + std::to_string(p.start.size()) +
                            ", " + std::to_string(p.size.size()) + " and " +
                            std::to_string(p.stride.size()));
  expect_nonnegative_dims(p.size, "size");
  for (size_t d = 0; d < rank; ++d) {
    const int64_t stride = p.stride[d];
    InferContext::require(stride != 0, "stride of dim " + std::to_string(d) + " is 0");
    const std::string where = "slice of " + dim_label(ctx, 0, d) + " with start " +
                              p.start[d].to_string() + ", size " + p.size[d].to_string() +
                              ", stride " + to_str(stride);
    // first = start, last = start + (size - 1) * stride; the lower of them must be >= 0 and the
    // higher < dim (the last index is written as `+ 1 <=` so that both checks are `<=`).
    const DimExpr last = p.start[d] + (p.size[d] - 1) * DimExpr(stride);
    const DimExpr& low = stride > 0 ? p.start[d] : last;
    const DimExpr& high = stride > 0 ? last : p.start[d];
    ctx.check_less_equal(0, low, where + ": the lowest index read must be >= 0");
    ctx.check_less_equal(high + 1, in[d], where + ": the highest index read must be < the dim");
  }
  ctx.add_output(ctx.dtype(0), p.size);
}

// ---------------------------------------------------------------- Gather

void infer(const GatherParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(2, 2);
  expect_index_dtype(ctx, 1);
  const Shape& data = ctx.shape(0);
  const Shape& idx = ctx.shape(1);
  const int r = ctx.rank(0);
  const int q = ctx.rank(1);
  expect_rank_at_least(ctx, 0, 1, "data");
  switch (p.mode) {
    case GatherMode::kDefault: {
      InferContext::expect_axis(p.axis, r, "axis");
      InferContext::require(
          p.num_batch_dims == 0,
          "num_batch_dims is only used by nd mode; it must be 0, got " + to_str(p.num_batch_dims));
      Shape out(data.begin(), data.begin() + p.axis);
      out.insert(out.end(), idx.begin(), idx.end());
      out.insert(out.end(), data.begin() + p.axis + 1, data.end());
      ctx.add_output(ctx.dtype(0), std::move(out));
      return;
    }
    case GatherMode::kElement: {
      InferContext::expect_axis(p.axis, r, "axis");
      InferContext::require(
          p.num_batch_dims == 0,
          "num_batch_dims is only used by nd mode; it must be 0, got " + to_str(p.num_batch_dims));
      InferContext::require(q == r, "element mode needs indices of data's rank " + to_str(r) +
                                        ", got indices shape " + shape_to_string(idx));
      for (int d = 0; d < r; ++d) {
        if (d == p.axis) continue;
        ctx.check_less_equal(
            idx[d], data[d],
            dim_label(ctx, 1, d) + " must be <= " + dim_label(ctx, 0, d) + " (element gather)");
      }
      ctx.add_output(ctx.dtype(0), idx);
      return;
    }
    case GatherMode::kNd: {
      InferContext::require(p.axis == 0,
                            "axis is not used by nd mode; it must be 0, got " + to_str(p.axis));
      const int64_t b = p.num_batch_dims;
      InferContext::require(q >= 1,
                            "nd mode needs indices of rank >= 1 (the last dim holds the "
                            "index tuples), got a scalar");
      InferContext::require(b >= 0 && b < std::min(r, q), "num_batch_dims " + to_str(b) +
                                                              " must be in [0, min(rank(data), "
                                                              "rank(indices))) = [0, " +
                                                              to_str(std::min(r, q)) + ")");
      const DimExpr& last = idx[q - 1];
      InferContext::require(last.is_constant() && last.constant() >= 1 && last.constant() <= r - b,
                            "nd mode needs the last indices dim (" + last.to_string() +
                                ") to be a constant in [1, rank(data) - num_batch_dims] = [1, " +
                                to_str(r - b) + "]");
      const int64_t k = last.constant();
      for (int64_t d = 0; d < b; ++d) {
        ctx.check_equal(idx[d], data[d],
                        "batch " + dim_label(ctx, 1, d) + " must equal " + dim_label(ctx, 0, d));
      }
      Shape out(idx.begin(), idx.end() - 1);
      out.insert(out.end(), data.begin() + b + k, data.end());
      ctx.add_output(ctx.dtype(0), std::move(out));
      return;
    }
  }
  throw Error("unknown gather mode " + std::to_string(static_cast<int>(p.mode)));
}

// ---------------------------------------------------------------- Scatter

void infer(const ScatterParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(3, 3);
  InferContext::require(
      static_cast<int>(p.reduction) < kNumScatterReductions,
      "unknown scatter reduction " + std::to_string(static_cast<int>(p.reduction)));
  expect_index_dtype(ctx, 1);
  InferContext::require(ctx.dtype(2) == ctx.dtype(0),
                        std::string("updates (input 2) must have data's dtype ") +
                            dtype_name(ctx.dtype(0)) + ", got " + dtype_name(ctx.dtype(2)) +
                            " (insert a Cast layer)");
  InferContext::require(p.reduction == ScatterReduction::kNone || ctx.dtype(0) != DataType::kBool,
                        "scatter reductions need a float or integer type, got bool");
  expect_rank_at_least(ctx, 0, 1, "data");
  const int r = ctx.rank(0);
  InferContext::expect_axis(p.axis, r, "axis");
  InferContext::require(ctx.rank(1) == r, "indices (input 1) must have data's rank " + to_str(r) +
                                              ", got shape " + shape_to_string(ctx.shape(1)));
  InferContext::require(ctx.rank(2) == r, "updates (input 2) must have indices' shape " +
                                              shape_to_string(ctx.shape(1)) + ", got " +
                                              shape_to_string(ctx.shape(2)));
  for (int d = 0; d < r; ++d) {
    ctx.check_equal(ctx.shape(2)[d], ctx.shape(1)[d],
                    dim_label(ctx, 2, d) + " must equal " + dim_label(ctx, 1, d) +
                        " (updates has indices' shape)");
    if (d == p.axis) continue;
    ctx.check_less_equal(ctx.shape(1)[d], ctx.shape(0)[d],
                         dim_label(ctx, 1, d) + " must be <= " + dim_label(ctx, 0, d));
  }
  ctx.add_output(ctx.dtype(0), ctx.shape(0));
}

// ---------------------------------------------------------------- Padding

void infer(const PaddingParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  InferContext::require(static_cast<int>(p.mode) < kNumPaddingModes,
                        "unknown padding mode " + std::to_string(static_cast<int>(p.mode)));
  // The input as the padding reads it: its own shape, or the view input_shape.
  Shape in = ctx.shape(0);
  if (!p.input_shape.empty()) {
    in = viewed_shape(in, Shape(p.input_shape.begin(), p.input_shape.end()), "input_shape", ctx);
  }
  const size_t rank = in.size();
  InferContext::require(p.pre.size() == rank && p.post.size() == rank,
                        "pre and post need one entry per input dim (" + std::to_string(rank) +
                            "), got " + std::to_string(p.pre.size()) + " and " +
                            std::to_string(p.post.size()));
  if (p.mode == PaddingMode::kConstant) expect_storable(p.value, ctx.dtype(0), "pad value");
  // Output dim d pads input dim from[d] (the permutation's entry, or d).
  std::vector<size_t> from(rank);
  for (size_t d = 0; d < rank; ++d) from[d] = d;
  expect_permutation(p.input_permutation, rank, "input_permutation");
  for (size_t d = 0; d < p.input_permutation.size(); ++d) {
    from[d] = static_cast<size_t>(p.input_permutation[d]);
  }
  Shape out(rank);
  for (size_t d = 0; d < rank; ++d) {
    const DimExpr& len = in[from[d]];
    for (const int64_t pad : {p.pre[d], p.post[d]}) {
      InferContext::require(pad >= 0, "padding of dim " + std::to_string(d) + " is " + to_str(pad) +
                                          "; pads must be >= 0 (use a Slice to crop)");
      if (pad == 0) continue;
      const std::string where =
          "padding " + to_str(pad) + " of " +
          (p.input_shape.empty() ? dim_label(ctx, 0, from[d])
                                 : "input_shape dim " + std::to_string(from[d]) + " (" +
                                       len.to_string() + ")");
      switch (p.mode) {
        case PaddingMode::kConstant:
          break;
        case PaddingMode::kReflect:
          ctx.check_less_equal(DimExpr(pad) + 1, len, where + ": reflect needs pad < dim");
          break;
        case PaddingMode::kReplicate:
          ctx.check_less_equal(1, len, where + ": replicate needs a non-empty dim");
          break;
        case PaddingMode::kCircular:
          ctx.check_less_equal(pad, len, where + ": circular needs pad <= dim");
          break;
      }
    }
    out[d] = DimExpr(p.pre[d]) + len + DimExpr(p.post[d]);
  }
  ctx.add_output(ctx.dtype(0), std::move(out));
}

// ---------------------------------------------------------------- Resize

void infer(const ResizeParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  InferContext::require(static_cast<int>(p.mode) < kNumResizeModes,
                        "unknown resize mode " + std::to_string(static_cast<int>(p.mode)));
  InferContext::require(
      static_cast<int>(p.coordinate) < kNumResizeCoordinates,
      "unknown resize coordinate mode " + std::to_string(static_cast<int>(p.coordinate)));
  InferContext::require(static_cast<int>(p.rounding) < kNumResizeRoundings,
                        "unknown resize rounding " + std::to_string(static_cast<int>(p.rounding)));
  expect_rank_at_least(ctx, 0, 1, "input");
  const Shape& in = ctx.shape(0);
  const int rank = ctx.rank(0);
  if (p.mode != ResizeMode::kNearest) ctx.expect_float(0, "input of linear/cubic resize");
  InferContext::require(p.output.size() == in.size(), "output shape " + shape_to_string(p.output) +
                                                          " must have the input's rank " +
                                                          std::to_string(rank));
  expect_nonnegative_dims(p.output, "output");
  InferContext::require(p.scales.empty() || p.scales.size() == in.size(),
                        "scales needs one entry per dim (" + std::to_string(rank) +
                            ") or none, got " + std::to_string(p.scales.size()));
  for (size_t d = 0; d < p.scales.size(); ++d) {
    InferContext::require(std::isfinite(p.scales[d]) && p.scales[d] > 0,
                          "scale of dim " + std::to_string(d) + " is " +
                              std::to_string(p.scales[d]) + "; scales must be finite and > 0");
  }
  InferContext::require(std::isfinite(p.cubic_coeff),
                        "cubic_coeff must be finite, got " + std::to_string(p.cubic_coeff));
  if (p.mode == ResizeMode::kCubic) {
    InferContext::require(rank >= 2,
                          "cubic resize works on the last two dims; the input needs "
                          "rank >= 2, got shape " +
                              shape_to_string(in));
    for (int d = 0; d < rank - 2; ++d) {
      ctx.check_equal(p.output[d], in[d], "cubic resize keeps leading " + dim_label(ctx, 0, d));
    }
  }
  for (int d = 0; d < rank; ++d) {
    // Reading from an empty dim is impossible; a symbolic empty dim is caught by the kernel.
    InferContext::require(
        !(in[d].is_constant() && in[d].constant() == 0 && p.output[d].is_constant() &&
          p.output[d].constant() > 0),
        "cannot resize empty " + dim_label(ctx, 0, d) + " to " + p.output[d].to_string());
  }
  ctx.add_output(ctx.dtype(0), p.output);
}

// ---------------------------------------------------------------- Fill

void infer(const FillParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(0, 0);
  InferContext::require(static_cast<int>(p.op) < kNumFillOps,
                        "unknown fill op " + std::to_string(static_cast<int>(p.op)));
  expect_valid_dtype(p.dtype, "output");
  expect_nonnegative_dims(p.shape, "shape");
  switch (p.op) {
    case FillOp::kConstant:
      expect_storable(p.value, p.dtype, "value");
      break;
    case FillOp::kArange:
      InferContext::require(p.shape.size() == 1, "arange creates a rank-1 tensor; shape " +
                                                     shape_to_string(p.shape) + " has rank " +
                                                     std::to_string(p.shape.size()));
      InferContext::require(p.dtype != DataType::kBool, "arange does not create bool tensors");
      InferContext::require(std::isfinite(p.start) && std::isfinite(p.delta),
                            "arange start and delta must be finite, got " +
                                std::to_string(p.start) + " and " + std::to_string(p.delta));
      break;
  }
  ctx.add_output(p.dtype, p.shape);
}

// ---------------------------------------------------------------- Shape, Identity

void infer(const ShapeParams& /*p*/, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  ctx.add_output(DataType::kI64, Shape{DimExpr(ctx.rank(0))});
}

void infer(const IdentityParams& /*p*/, InferContext& ctx) {
  ctx.expect_num_inputs(1, 1);
  ctx.add_output(ctx.dtype(0), ctx.shape(0));
}

}  // namespace ember::engine
