// Reductions: sum/mean/prod/amax/amin/any/all, max/min (values and indices), argmax/argmin,
// cumsum, topk, sort/argsort, var/std (and var_mean/std_mean), linalg_vector_norm.
//
// Ranks follow PyTorch exactly: a full reduction without keepdim is 0-d, and reductions of a
// 0-d tensor are the identity. Integer and bool sums/products promote to i64 (the output dtype
// says so), so the input is cast to the output dtype before reducing. The engine's reduce and
// topk layers take no bool: max/min/topk of bool tensors run on i32 0/1 values.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::ReduceOp;
using engine::Tensor;
using engine::TopKOp;

/// sum.dim_IntList, mean.dim, prod.dim_int, amax/amin, any/all.dim(s): (self, dim, keepdim, dtype).
struct ReduceArgs {
  enum { self = 0, dim = 1, keepdim = 2, dtype = 3 };
};
struct TopKArgs {
  enum { self = 0, k = 1, dim = 2, largest = 3, sorted = 4 };
};
/// sort(self, dim, descending) and argsort(self, dim, descending).
struct SortArgs {
  enum { self = 0, dim = 1, descending = 2 };
};
/// sort.stable(self, *, stable, dim, descending) and argsort.stable.
struct SortStableArgs {
  enum { self = 0, stable = 1, dim = 2, descending = 3 };
};
/// var/std(_mean).correction(self, dim, *, correction, keepdim).
struct VarArgs {
  enum { self = 0, dim = 1, correction = 2, keepdim = 3 };
};
struct NormArgs {
  enum { self = 0, ord = 1, dim = 2, keepdim = 3, dtype = 4 };
};
struct CumsumArgs {
  enum { self = 0, dim = 1, dtype = 2 };
};

DataType out_dtype(ConversionContext& ctx, const Node& node, size_t i = 0) {
  return ctx.engine_dtype(node.output(i)->dtype());
}

/// The dtype multi-layer float math runs in (torch's opmath type).
DataType opmath(DataType t) {
  return t == DataType::kF16 || t == DataType::kBF16 ? DataType::kF32 : t;
}

/// A dtype the engine's max/min/topk take: bool runs as i32.
DataType orderable(DataType t) { return t == DataType::kBool ? DataType::kI32 : t; }

bool is_full_reduction(const Node& node) {
  const std::string& op = node.op();
  return op == "aten::sum" || op == "aten::mean" || op == "aten::prod" || op == "aten::any" ||
         op == "aten::all" || op == "aten::max" || op == "aten::min";
}

/// Every axis of a rank-`rank` tensor.
std::vector<int64_t> all_axes(int rank) {
  std::vector<int64_t> axes;
  for (int d = 0; d < rank; ++d) axes.push_back(d);
  return axes;
}

/// Sorted distinct axes of the dim-list argument `arg`; None or [] mean every dim. Empty for a
/// 0-d input (whose reductions are the identity).
std::vector<int64_t> reduce_axes(const Node& node, size_t arg, int rank) {
  if (rank == 0) return {};
  std::vector<int64_t> axes;
  if (!node.arg_is_none(arg)) {
    for (int64_t d : node.arg_ints(arg)) axes.push_back(normalize_dim(d, rank, node));
  }
  if (axes.empty()) return all_axes(rank);
  std::sort(axes.begin(), axes.end());
  axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
  return axes;
}

/// The reduction axes of `node` (full reductions take every dim).
std::vector<int64_t> node_axes(const Node& node, size_t arg, int rank) {
  return is_full_reduction(node) ? all_axes(rank) : reduce_axes(node, arg, rank);
}

bool node_keepdim(const Node& node, size_t arg) {
  return !is_full_reduction(node) && node.arg_bool_or(arg, false);
}

Tensor* reduce(ConversionContext& ctx, const Node& node, Tensor* x, ReduceOp op,
               const std::vector<int64_t>& axes, bool keep) {
  if (axes.empty()) return x;  // 0-d input
  return ctx.net().add_reduce(x, op, axes, keep, ctx.layer_name(node))->output();
}

Tensor* ew(ConversionContext& ctx, const Node& node, Tensor* a, Tensor* b, ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

/// `t` without its dim `axis` (which has size 1).
Tensor* squeeze_axis(ConversionContext& ctx, const Node& node, Tensor* t, int64_t axis) {
  engine::Shape shape = t->shape();
  shape.erase(shape.begin() + axis);
  return ctx.net().add_reshape(t, shape, ctx.layer_name(node, "squeeze"))->output();
}

Tensor* negate(ConversionContext& ctx, const Node& node, Tensor* x) {
  return ctx.net().add_unary(x, engine::UnaryOp::kNeg, ctx.layer_name(node))->output();
}

/// TopK ranks NaN largest, so a TopK min skips NaN, while torch.min/argmin return it. For floats
/// a min is therefore a max of -x (exact), which picks NaN. Returns the op to use; `x` is
/// negated when needed and `negated` says so.
TopKOp nan_aware(ConversionContext& ctx, const Node& node, TopKOp op, Tensor*& x, bool& negated) {
  negated = op == TopKOp::kMin && engine::dtype_is_float(x->dtype());
  if (!negated) return op;
  x = negate(ctx, node, x);
  return TopKOp::kMax;
}

Reason reject_symbolic_args(const Node& node) {
  for (size_t i = 1; i < node.num_args(); ++i) {
    if (std::holds_alternative<DimExpr>(node.args()[i])) {
      return "argument " + std::to_string(i) + " is a symbolic size; it must be a constant";
    }
  }
  return std::nullopt;
}

Reason validate_reduce(const Node& node, const CompileSettings&) { return reject_symbolic_args(node); }

// ---------------------------------------------------------------- sum, mean, prod, amax, amin

/// Reduces the input, cast to the output dtype (or to `compute` when given), over the node's
/// axes.
void convert_reduce(ConversionContext& ctx, const Node& node, ReduceOp op,
                    std::optional<DataType> compute = std::nullopt) {
  Tensor* x = ctx.cast(ctx.input(node, ReduceArgs::self), compute.value_or(out_dtype(ctx, node)));
  ctx.set_output(node, 0, reduce(ctx, node, x, op, node_axes(node, ReduceArgs::dim, x->rank()),
                                 node_keepdim(node, ReduceArgs::keepdim)));
}

EMBER_CONVERTER(sum, ({"aten::sum.dim_IntList", "aten::sum"}), true, validate_reduce) {
  convert_reduce(ctx, node, ReduceOp::kSum);
}

Reason validate_mean(const Node& node, const CompileSettings& s) {
  if (!scalar_type_is_float(node.output(0)->dtype())) return "mean of a non-float result";
  return validate_reduce(node, s);
}

EMBER_CONVERTER(mean, ({"aten::mean.dim", "aten::mean"}), true, validate_mean) {
  convert_reduce(ctx, node, ReduceOp::kAvg);
}

EMBER_CONVERTER(prod, ({"aten::prod.dim_int", "aten::prod"}), true, validate_reduce) {
  convert_reduce(ctx, node, ReduceOp::kProd);
}

EMBER_CONVERTER(amax, ({"aten::amax", "aten::max"}), true, validate_reduce) {
  convert_reduce(ctx, node, ReduceOp::kMax, orderable(out_dtype(ctx, node)));
}

EMBER_CONVERTER(amin, ({"aten::amin", "aten::min"}), true, validate_reduce) {
  convert_reduce(ctx, node, ReduceOp::kMin, orderable(out_dtype(ctx, node)));
}

// ---------------------------------------------------------------- any, all

/// any = sum of (x != 0) > 0 and all = product of (x != 0), both on f32 0/1 values: empty
/// reductions give False and True as in PyTorch. f32 rather than i32 so that the 0/1 cast can
/// join the pointwise layers before it in one generated kernel (T5's isinf(x).any()); the
/// result stays exact in meaning: a sum of ones is >= 1 as soon as one element is nonzero (past
/// 2^24 it stops growing, never reaches 0), and a product of zeros and ones is 0 or 1.
void convert_any_all(ConversionContext& ctx, const Node& node, bool all) {
  Tensor* x = ctx.cast(ctx.cast(ctx.input(node, ReduceArgs::self), DataType::kBool), DataType::kF32);
  Tensor* r = reduce(ctx, node, x, all ? ReduceOp::kProd : ReduceOp::kSum,
                     node_axes(node, ReduceArgs::dim, x->rank()),
                     node_keepdim(node, ReduceArgs::keepdim));
  ctx.set_output(node, 0, ctx.cast(r, DataType::kBool));
}

EMBER_CONVERTER(any, ({"aten::any", "aten::any.dim", "aten::any.dims"}), true, validate_reduce) {
  convert_any_all(ctx, node, false);
}

EMBER_CONVERTER(all, ({"aten::all", "aten::all.dim", "aten::all.dims"}), true, validate_reduce) {
  convert_any_all(ctx, node, true);
}

// ---------------------------------------------------------------- max/min with indices, arg*

Reason validate_indexed(const Node& node, const CompileSettings& s) {
  if (node.arg_tensor(0)->rank() == 0) return node.op() + " of a 0-d tensor is not supported";
  return validate_reduce(node, s);
}

/// max.dim / min.dim: (values, indices) through TopK with k = 1.
void convert_max_min_dim(ConversionContext& ctx, const Node& node, TopKOp op) {
  Tensor* x = ctx.cast(ctx.input(node, ReduceArgs::self), orderable(out_dtype(ctx, node)));
  const int64_t axis = normalize_dim(node.arg_int(ReduceArgs::dim), x->rank(), node);
  bool negated = false;
  op = nan_aware(ctx, node, op, x, negated);
  engine::TopKParams p{op, 1, axis, ctx.engine_dtype(ScalarType::kI64)};
  engine::Layer* topk = ctx.net().add_layer(p, {x}, ctx.layer_name(node));
  Tensor* values = negated ? negate(ctx, node, topk->output(0)) : topk->output(0);
  Tensor* indices = topk->output(1);
  if (!node.arg_bool_or(ReduceArgs::keepdim, false)) {
    values = squeeze_axis(ctx, node, values, axis);
    indices = squeeze_axis(ctx, node, indices, axis);
  }
  ctx.set_output(node, 0, values);
  ctx.set_output(node, 1, indices);
}

EMBER_CONVERTER(max_dim, ({"aten::max.dim"}), true, validate_indexed) {
  convert_max_min_dim(ctx, node, TopKOp::kMax);
}

EMBER_CONVERTER(min_dim, ({"aten::min.dim"}), true, validate_indexed) {
  convert_max_min_dim(ctx, node, TopKOp::kMin);
}

/// argmax/argmin(self, dim?, keepdim): TopK k = 1; without dim over the flattened input.
void convert_arg(ConversionContext& ctx, const Node& node, TopKOp op) {
  Tensor* x = ctx.input(node, ReduceArgs::self);
  x = ctx.cast(x, orderable(x->dtype()));
  bool negated = false;
  op = nan_aware(ctx, node, op, x, negated);
  const bool keep = node.arg_bool_or(ReduceArgs::keepdim, false);
  const DataType index = ctx.engine_dtype(ScalarType::kI64);
  if (node.arg_is_none(ReduceArgs::dim)) {
    const int rank = x->rank();
    Tensor* flat = ctx.net()
                       .add_reshape(x, {engine::shape_numel(x->shape())}, ctx.layer_name(node, "flat"))
                       ->output();
    engine::TopKParams p{op, 1, 0, index};
    Tensor* i = ctx.net().add_layer(p, {flat}, ctx.layer_name(node))->output(1);
    const engine::Shape shape(keep ? static_cast<size_t>(rank) : 0, DimExpr(1));
    return ctx.set_output(node, 0, ctx.net().add_reshape(i, shape, ctx.layer_name(node))->output());
  }
  const int64_t axis = normalize_dim(node.arg_int(ReduceArgs::dim), x->rank(), node);
  engine::TopKParams p{op, 1, axis, index};
  Tensor* i = ctx.net().add_layer(p, {x}, ctx.layer_name(node))->output(1);
  ctx.set_output(node, 0, keep ? i : squeeze_axis(ctx, node, i, axis));
}

EMBER_CONVERTER(argmax, ({"aten::argmax"}), true, validate_indexed) {
  convert_arg(ctx, node, TopKOp::kMax);
}

EMBER_CONVERTER(argmin, ({"aten::argmin"}), true, validate_indexed) {
  convert_arg(ctx, node, TopKOp::kMin);
}

// ---------------------------------------------------------------- topk, sort, argsort

Reason validate_topk(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_indexed(node, s)) return r;
  if (node.arg_int(TopKArgs::k) < 1) return "topk with k < 1 is not supported";
  return std::nullopt;
}

EMBER_CONVERTER(topk, ({"aten::topk"}), true, validate_topk) {
  // sorted=False leaves the order to the implementation; sorted is a valid order.
  Tensor* x = ctx.input(node, TopKArgs::self);
  x = ctx.cast(x, orderable(x->dtype()));
  const int64_t axis = normalize_dim(node.arg_int_or(TopKArgs::dim, -1), x->rank(), node);
  const TopKOp op = node.arg_bool_or(TopKArgs::largest, true) ? TopKOp::kMax : TopKOp::kMin;
  engine::TopKParams p{op, node.arg_int(TopKArgs::k), axis, ctx.engine_dtype(ScalarType::kI64)};
  engine::Layer* topk = ctx.net().add_layer(p, {x}, ctx.layer_name(node));
  ctx.set_output(node, 0, topk->output(0));
  ctx.set_output(node, 1, topk->output(1));
}

bool is_stable_variant(const Node& node) {
  return node.op() == "aten::sort.stable" || node.op() == "aten::argsort.stable";
}

size_t sort_dim_arg(const Node& node) {
  return is_stable_variant(node) ? size_t{SortStableArgs::dim} : size_t{SortArgs::dim};
}

size_t sort_descending_arg(const Node& node) {
  return is_stable_variant(node) ? size_t{SortStableArgs::descending}
                                 : size_t{SortArgs::descending};
}

Reason validate_sort(const Node& node, const CompileSettings& s) {
  if (Reason r = validate_indexed(node, s)) return r;
  const Value* x = node.arg_tensor(SortArgs::self);
  const int64_t axis = normalize_dim(node.arg_int_or(sort_dim_arg(node), -1), x->rank(), node);
  const DimExpr& n = x->shape()[axis];
  if (!n.is_constant()) return "sort along the dynamic dim " + n.to_string() + " is not supported";
  if (n.constant() < 1) return "sort along an empty dim is not supported";
  return std::nullopt;
}

/// sort as TopK with k = the dim size. TopK breaks ties by lower index, which is what a stable
/// sort does in either direction.
void sort_impl(ConversionContext& ctx, const Node& node, bool values_too) {
  Tensor* x = ctx.input(node, SortArgs::self);
  x = ctx.cast(x, orderable(x->dtype()));
  const int64_t axis = normalize_dim(node.arg_int_or(sort_dim_arg(node), -1), x->rank(), node);
  const TopKOp op =
      node.arg_bool_or(sort_descending_arg(node), false) ? TopKOp::kMax : TopKOp::kMin;
  engine::TopKParams p{op, x->shape()[axis].constant(), axis, ctx.engine_dtype(ScalarType::kI64)};
  engine::Layer* topk = ctx.net().add_layer(p, {x}, ctx.layer_name(node));
  if (values_too) {
    ctx.set_output(node, 0, topk->output(0));
    ctx.set_output(node, 1, topk->output(1));
  } else {
    ctx.set_output(node, 0, topk->output(1));
  }
}

EMBER_CONVERTER(sort, ({"aten::sort", "aten::sort.stable"}), true, validate_sort) {
  sort_impl(ctx, node, true);
}

EMBER_CONVERTER(argsort, ({"aten::argsort", "aten::argsort.stable"}), true, validate_sort) {
  sort_impl(ctx, node, false);
}

// ---------------------------------------------------------------- cumsum

EMBER_CONVERTER(cumsum, ({"aten::cumsum"}), true, validate_reduce) {
  Tensor* x = ctx.cast(ctx.input(node, CumsumArgs::self), out_dtype(ctx, node));
  if (x->rank() == 0) return ctx.set_output(node, 0, x);
  engine::CumulativeParams p;
  p.axis = normalize_dim(node.arg_int(CumsumArgs::dim), x->rank(), node);
  ctx.set_output(node, 0, ctx.net().add_cumulative(x, p, ctx.layer_name(node))->output());
}

// ---------------------------------------------------------------- var, std

/// The number of elements over `axes` of `x`, as a 0-d tensor of `t` (from the shape at run
/// time when a reduced dim is symbolic).
Tensor* element_count(ConversionContext& ctx, const Node& node, Tensor* x,
                      const std::vector<int64_t>& axes, DataType t) {
  DimExpr n(1);
  for (int64_t a : axes) n = n * x->shape()[a];
  if (n.is_constant()) return ctx.scalar(static_cast<double>(n.constant()), t);
  Tensor* shape = ctx.net().add_shape(x, ctx.layer_name(node, "shape"))->output();
  engine::GatherParams g;
  Tensor* dims = ctx.net()
                     .add_gather(shape, ctx.int_vector(axes, DataType::kI64), g,
                                 ctx.layer_name(node, "dims"))
                     ->output();
  Tensor* count = ctx.net().add_reduce(dims, ReduceOp::kProd, {0}, false, ctx.layer_name(node))->output();
  return ctx.cast(count, t);
}

Reason validate_var(const Node& node, const CompileSettings& s) {
  if (!scalar_type_is_float(node.output(0)->dtype())) return node.op() + " of a non-float tensor";
  if (node.arg_tensor(VarArgs::self)->rank() == 0) return node.op() + " of a 0-d tensor";
  return validate_reduce(node, s);
}

/// var = sum((x - mean)^2) / max(N - correction, 0), in f32 for half types; std = sqrt(var).
/// The *_mean variants also output the mean.
void var_impl(ConversionContext& ctx, const Node& node, bool sqrt, bool with_mean) {
  const DataType t = opmath(out_dtype(ctx, node));
  Tensor* x = ctx.cast(ctx.input(node, VarArgs::self), t);
  const std::vector<int64_t> axes = reduce_axes(node, VarArgs::dim, x->rank());
  const bool keep = node.arg_bool_or(VarArgs::keepdim, false);
  const double correction = node.arg_double_or(VarArgs::correction, 1.0);
  Tensor* mean = reduce(ctx, node, x, ReduceOp::kAvg, axes, true);
  Tensor* d = ew(ctx, node, x, mean, ElementWiseOp::kSub);
  Tensor* ss = reduce(ctx, node, ew(ctx, node, d, d, ElementWiseOp::kProd), ReduceOp::kSum, axes, keep);
  Tensor* denom = ew(ctx, node, element_count(ctx, node, x, axes, t), ctx.scalar(correction, t),
                     ElementWiseOp::kSub);
  denom = ew(ctx, node, denom, ctx.scalar(0.0, t), ElementWiseOp::kMax);
  Tensor* var = ew(ctx, node, ss, denom, ElementWiseOp::kDiv);
  if (sqrt) var = ctx.net().add_unary(var, engine::UnaryOp::kSqrt, ctx.layer_name(node))->output();
  ctx.set_output(node, 0, var);
  if (with_mean) {
    ctx.set_output(node, 1, keep ? mean : reduce(ctx, node, x, ReduceOp::kAvg, axes, false));
  }
}

EMBER_CONVERTER(var, ({"aten::var.correction"}), true, validate_var) {
  var_impl(ctx, node, false, false);
}
EMBER_CONVERTER(std, ({"aten::std.correction"}), true, validate_var) {
  var_impl(ctx, node, true, false);
}
EMBER_CONVERTER(var_mean, ({"aten::var_mean.correction"}), true, validate_var) {
  var_impl(ctx, node, false, true);
}
EMBER_CONVERTER(std_mean, ({"aten::std_mean.correction"}), true, validate_var) {
  var_impl(ctx, node, true, true);
}

// ---------------------------------------------------------------- vector norm

Reason validate_norm(const Node& node, const CompileSettings& s) {
  if (!scalar_type_is_float(node.output(0)->dtype())) return "norm of a non-float tensor";
  if (node.arg_tensor(NormArgs::self)->rank() == 0) return "norm of a 0-d tensor";
  return validate_reduce(node, s);
}

EMBER_CONVERTER(linalg_vector_norm, ({"aten::linalg_vector_norm"}), true, validate_norm) {
  // In f32 for half types, rounded once at the end as PyTorch does.
  const DataType t = opmath(out_dtype(ctx, node));
  Tensor* x = ctx.cast(ctx.input(node, NormArgs::self), t);
  const std::vector<int64_t> axes = reduce_axes(node, NormArgs::dim, x->rank());
  const bool keep = node.arg_bool_or(NormArgs::keepdim, false);
  const double ord = node.arg_double_or(NormArgs::ord, 2.0);
  auto& net = ctx.net();
  Tensor* a = net.add_unary(x, engine::UnaryOp::kAbs, ctx.layer_name(node))->output();
  Tensor* r = nullptr;
  if (ord == std::numeric_limits<double>::infinity()) {
    r = reduce(ctx, node, a, ReduceOp::kMax, axes, keep);
  } else if (ord == -std::numeric_limits<double>::infinity()) {
    r = reduce(ctx, node, a, ReduceOp::kMin, axes, keep);
  } else if (ord == 0.0) {
    Tensor* nonzero = ctx.cast(ctx.cast(a, DataType::kBool), t);
    r = reduce(ctx, node, nonzero, ReduceOp::kSum, axes, keep);
  } else if (ord == 1.0) {
    r = reduce(ctx, node, a, ReduceOp::kSum, axes, keep);
  } else if (ord == 2.0) {
    r = reduce(ctx, node, ew(ctx, node, x, x, ElementWiseOp::kProd), ReduceOp::kSum, axes, keep);
    r = net.add_unary(r, engine::UnaryOp::kSqrt, ctx.layer_name(node))->output();
  } else {
    Tensor* p = ew(ctx, node, a, ctx.scalar(ord, t), ElementWiseOp::kPow);
    r = reduce(ctx, node, p, ReduceOp::kSum, axes, keep);
    r = ew(ctx, node, r, ctx.scalar(1.0 / ord, t), ElementWiseOp::kPow);
  }
  ctx.set_output(node, 0, r);
}

}  // namespace

}  // namespace ember::compiler
