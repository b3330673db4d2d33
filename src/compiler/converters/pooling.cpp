// Pooling family: max_pool{1,2,3}d (and the *_with_indices forms torch.export produces),
// avg_pool{1,2,3}d, adaptive average and max pooling.
//
// Indices: the engine's Pooling layer does not produce argmax indices, so the converters of
// max_pool*_with_indices and adaptive_max_pool* set output 0 only. Models in inference read
// only the values (torch.export keeps the indices output because the op has it). The FX
// importer names each output of a multi-output op by the getitem node that reads it and leaves
// unread outputs unnamed, so the validator rejects a node whose indices output has a name
// (someone reads it) and the node runs in PyTorch.
//
// Adaptive pooling: when every spatial size divides by its output size, one Pooling layer with
// window = stride = in / out; when every output size is 1, one Reduce layer (dynamic sizes
// allowed); otherwise, with static sizes, each spatial dim is pooled separately by slicing
// PyTorch's windows [floor(i*in/out), ceil((i+1)*in/out)) and concatenating (exact, since a
// mean or max over a box is the mean or max over its rows of the per-row mean or max).
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::PoolingType;
using engine::ReduceOp;
using engine::Tensor;

/// max_pool{1,2,3}d[_with_indices](input, kernel_size, stride=[], padding=0, dilation=1,
/// ceil_mode=False).
struct MaxPoolArgs {
  enum { input = 0, kernel_size = 1, stride = 2, padding = 3, dilation = 4, ceil_mode = 5 };
};
/// avg_pool{1,2,3}d(input, kernel_size, stride=[], padding=0, ceil_mode=False,
/// count_include_pad=True, divisor_override=None); avg_pool1d has no divisor_override.
struct AvgPoolArgs {
  enum {
    input = 0,
    kernel_size = 1,
    stride = 2,
    padding = 3,
    ceil_mode = 4,
    count_include_pad = 5,
    divisor_override = 6
  };
};
/// [_]adaptive_{avg,max}_pool{1,2,3}d(input, output_size).
struct AdaptiveArgs {
  enum { input = 0, output_size = 1 };
};

/// Number of spatial dims from the op name ("aten::max_pool2d_with_indices" -> 2).
size_t spatial_dims(const Node& node) {
  for (const char* tag : {"1d", "2d", "3d"}) {
    if (node.op().find(tag) != std::string::npos) return static_cast<size_t>(tag[0] - '0');
  }
  throw Error(node.describe() + ": cannot tell the number of spatial dims from the op name");
}

/// An int-list argument with one value per spatial dim (a single value stands for all; absent
/// or empty gives `fallback`).
std::vector<int64_t> per_spatial(const Node& node, size_t i, size_t nsp,
                                 const std::vector<int64_t>& fallback) {
  std::vector<int64_t> v = node.arg_is_none(i) ? std::vector<int64_t>{} : node.arg_ints(i);
  if (v.empty()) return fallback;
  if (v.size() == 1) v.resize(nsp, v[0]);
  if (v.size() != nsp) {
    throw Error(node.describe() + ": argument " + std::to_string(i) + " has " +
                std::to_string(v.size()) + " values for " + std::to_string(nsp) + " spatial dims");
  }
  return v;
}

Reason validate_pool_input(const Node& node, bool allow_integers) {
  const Value* x = node.arg_tensor(0);
  const size_t nsp = spatial_dims(node);
  if (x->rank() != static_cast<int>(nsp) + 1 && x->rank() != static_cast<int>(nsp) + 2) {
    return "pooling over " + std::to_string(nsp) + " spatial dims needs an input of rank " +
           std::to_string(nsp + 1) + " or " + std::to_string(nsp + 2) + ", got " +
           std::to_string(x->rank());
  }
  const bool ok =
      scalar_type_is_float(x->dtype()) || (allow_integers && x->dtype() != ScalarType::kBool);
  if (!ok) {
    return std::string(allow_integers ? "max pooling needs a numeric input"
                                      : "average pooling needs a float input") +
           ", got " + scalar_type_name(x->dtype());
  }
  return std::nullopt;
}

/// Rejects nodes whose indices output (output 1) is read: see the note at the top of the file.
Reason validate_indices_unused(const Node& node) {
  if (node.output_is_read(1)) {
    return "the indices output of max pooling (read by '" + node.output(1)->fx_name() +
           "') is not supported; only the values can run in an engine";
  }
  return std::nullopt;
}

Reason validate_max_pool(const Node& node, const CompileSettings&) {
  if (Reason r = validate_indices_unused(node)) return r;
  return validate_pool_input(node, true);
}
Reason validate_avg_pool(const Node& node, const CompileSettings&) {
  return validate_pool_input(node, false);
}

bool is_max(const Node& node) { return node.op().find("max_pool") != std::string::npos; }

Reason validate_adaptive(const Node& node, const CompileSettings&) {
  if (Reason r = validate_indices_unused(node)) return r;
  if (Reason r = validate_pool_input(node, is_max(node))) return r;
  const Value* x = node.arg_tensor(AdaptiveArgs::input);
  const size_t nsp = spatial_dims(node);
  const std::vector<DimExpr> out = node.arg_dims(AdaptiveArgs::output_size);
  if (out.size() != nsp) return "adaptive pooling needs one output size per spatial dim";
  for (size_t d = 0; d < nsp; ++d) {
    const DimExpr& in = x->shape()[x->rank() - nsp + d];
    if (!out[d].is_constant()) return "adaptive pooling needs constant output sizes";
    if (out[d].constant() != 1 && !in.is_constant()) {
      return "adaptive pooling to output size " + out[d].to_string() +
             " needs a static input size (got " + in.to_string() +
             "); only output size 1 works with dynamic sizes";
    }
  }
  return std::nullopt;
}

Tensor* pool(ConversionContext& ctx, const Node& node, Tensor* x, engine::PoolingParams p) {
  return ctx.net().add_pooling(x, std::move(p), ctx.layer_name(node))->output();
}

/// 1-d adaptive pooling of static axis `axis` from `in` to `out` elements by slicing.
Tensor* adaptive_axis(ConversionContext& ctx, const Node& node, Tensor* x, int64_t axis, int64_t in,
                      int64_t out, ReduceOp op) {
  std::vector<Tensor*> parts;
  const size_t rank = static_cast<size_t>(x->rank());
  for (int64_t i = 0; i < out; ++i) {
    const int64_t begin = (i * in) / out;
    const int64_t end = ((i + 1) * in + out - 1) / out;
    engine::Shape start(rank, DimExpr(0));
    engine::Shape size = x->shape();
    start[axis] = begin;
    size[axis] = end - begin;
    Tensor* s = ctx.net()
                    .add_slice(x, start, size, std::vector<int64_t>(rank, 1),
                               ctx.layer_name(node, "window"))
                    ->output();
    parts.push_back(ctx.net().add_reduce(s, op, {axis}, true, ctx.layer_name(node))->output());
  }
  if (parts.size() == 1) return parts[0];
  return ctx.net().add_concatenation(parts, axis, ctx.layer_name(node))->output();
}

}  // namespace

EMBER_CONVERTER(max_pool,
                ({"aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d",
                  "aten::max_pool2d_with_indices", "aten::max_pool3d_with_indices"}),
                true, validate_max_pool) {
  using A = MaxPoolArgs;
  const size_t nsp = spatial_dims(node);
  engine::PoolingParams p;
  p.type = PoolingType::kMax;
  p.window = per_spatial(node, A::kernel_size, nsp, {});
  p.stride = per_spatial(node, A::stride, nsp, p.window);
  p.padding_begin = per_spatial(node, A::padding, nsp, std::vector<int64_t>(nsp, 0));
  p.padding_end = p.padding_begin;
  p.dilation = per_spatial(node, A::dilation, nsp, std::vector<int64_t>(nsp, 1));
  p.ceil_mode = node.arg_bool_or(A::ceil_mode, false);
  // Output 1 (indices) is left unset: the validator made sure nothing reads it.
  ctx.set_output(node, 0, pool(ctx, node, ctx.input(node, A::input), p));
}

EMBER_CONVERTER(avg_pool, ({"aten::avg_pool1d", "aten::avg_pool2d", "aten::avg_pool3d"}), true,
                validate_avg_pool) {
  using A = AvgPoolArgs;
  const size_t nsp = spatial_dims(node);
  engine::PoolingParams p;
  p.type = PoolingType::kAverage;
  p.window = per_spatial(node, A::kernel_size, nsp, {});
  p.stride = per_spatial(node, A::stride, nsp, p.window);
  p.padding_begin = per_spatial(node, A::padding, nsp, std::vector<int64_t>(nsp, 0));
  p.padding_end = p.padding_begin;
  p.dilation.assign(nsp, 1);
  p.ceil_mode = node.arg_bool_or(A::ceil_mode, false);
  p.count_include_pad = node.arg_bool_or(A::count_include_pad, true);
  p.divisor_override = node.arg_int_or(A::divisor_override, 0);
  ctx.set_output(node, 0, pool(ctx, node, ctx.input(node, A::input), p));
}

EMBER_CONVERTER(adaptive_pool,
                ({"aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d",
                  "aten::adaptive_avg_pool3d", "aten::_adaptive_avg_pool2d",
                  "aten::_adaptive_avg_pool3d", "aten::adaptive_max_pool1d",
                  "aten::adaptive_max_pool2d", "aten::adaptive_max_pool3d"}),
                true, validate_adaptive) {
  const bool max = is_max(node);
  const size_t nsp = spatial_dims(node);
  Tensor* x = ctx.input(node, AdaptiveArgs::input);
  const int64_t first = x->rank() - static_cast<int64_t>(nsp);
  const std::vector<int64_t> out = node.arg_ints(AdaptiveArgs::output_size);

  bool all_one = true;
  bool divisible = true;
  std::vector<int64_t> window;
  for (size_t d = 0; d < nsp; ++d) {
    const DimExpr& in = x->shape()[first + d];
    all_one = all_one && out[d] == 1;
    divisible = divisible && in.is_constant() && in.constant() % out[d] == 0;
    if (divisible) window.push_back(in.constant() / out[d]);
  }
  const ReduceOp op = max ? ReduceOp::kMax : ReduceOp::kAvg;
  Tensor* y = nullptr;
  if (divisible) {
    engine::PoolingParams p;
    p.type = max ? PoolingType::kMax : PoolingType::kAverage;
    p.window = window;
    p.stride = window;
    p.padding_begin.assign(nsp, 0);
    p.padding_end.assign(nsp, 0);
    p.dilation.assign(nsp, 1);
    y = pool(ctx, node, x, p);
  } else if (all_one) {
    std::vector<int64_t> axes;
    for (size_t d = 0; d < nsp; ++d) axes.push_back(first + static_cast<int64_t>(d));
    y = ctx.net().add_reduce(x, op, axes, true, ctx.layer_name(node))->output();
  } else {
    // Averages of averages are exact in f32; half types would round in between.
    y = max ? x : ctx.cast(x, DataType::kF32);
    for (size_t d = 0; d < nsp; ++d) {
      const int64_t axis = first + static_cast<int64_t>(d);
      if (out[d] == 1) {  // the only case the validator lets through with a dynamic size
        y = ctx.net().add_reduce(y, op, {axis}, true, ctx.layer_name(node))->output();
        continue;
      }
      const int64_t in = x->shape()[axis].constant();
      if (in != out[d]) y = adaptive_axis(ctx, node, y, axis, in, out[d], op);
    }
  }
  // Output 1 of adaptive_max_pool (indices) is left unset: the validator made sure nothing
  // reads it.
  ctx.set_output(node, 0, y);
}

}  // namespace ember::compiler
