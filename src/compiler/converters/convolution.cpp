// Convolution family: aten::convolution (1d/2d/3d, transposed, grouped), aten::_convolution and
// the conv1d/2d/3d, conv_transpose1d/2d/3d entry points that survive when a frontend does not
// decompose them. All become one Convolution or Deconvolution layer.
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;

/// aten::convolution(input, weight, bias?, stride, padding, dilation, transposed,
/// output_padding, groups); aten::_convolution has the same leading arguments.
struct ConvArgs {
  enum {
    input = 0,
    weight = 1,
    bias = 2,
    stride = 3,
    padding = 4,
    dilation = 5,
    transposed = 6,
    output_padding = 7,
    groups = 8
  };
};
/// aten::conv{1,2,3}d(input, weight, bias?, stride, padding, dilation, groups).
struct ConvNdArgs {
  enum { input = 0, weight = 1, bias = 2, stride = 3, padding = 4, dilation = 5, groups = 6 };
};
/// aten::conv_transpose{1,2,3}d.input(input, weight, bias?, stride, padding, output_padding,
/// groups, dilation).
struct ConvTransposeNdArgs {
  enum {
    input = 0,
    weight = 1,
    bias = 2,
    stride = 3,
    padding = 4,
    output_padding = 5,
    groups = 6,
    dilation = 7
  };
};

/// Everything a (de)convolution layer needs, read from whichever schema the node has.
struct ConvSpec {
  bool transposed = false;
  std::vector<int64_t> stride, padding, dilation, output_padding;
  int64_t groups = 1;
};

/// An int-list argument with one value per spatial dim: PyTorch lets a single value stand for
/// all of them, and an absent argument takes `fallback`.
std::vector<int64_t> per_spatial(const Node& node, size_t i, size_t nsp, int64_t fallback) {
  std::vector<int64_t> v = node.arg_is_none(i) ? std::vector<int64_t>{} : node.arg_ints(i);
  if (v.empty()) v.push_back(fallback);
  if (v.size() == 1) v.resize(nsp, v[0]);
  if (v.size() != nsp) {
    throw Error(node.describe() + ": argument " + std::to_string(i) + " has " +
                std::to_string(v.size()) + " values for " + std::to_string(nsp) + " spatial dims");
  }
  return v;
}

ConvSpec conv_spec(const Node& node) {
  const size_t nsp = static_cast<size_t>(node.arg_tensor(1)->rank() - 2);
  ConvSpec s;
  const std::string& op = node.op();
  if (op == "aten::convolution" || op == "aten::_convolution") {
    s.transposed = node.arg_bool(ConvArgs::transposed);
    s.stride = per_spatial(node, ConvArgs::stride, nsp, 1);
    s.padding = per_spatial(node, ConvArgs::padding, nsp, 0);
    s.dilation = per_spatial(node, ConvArgs::dilation, nsp, 1);
    s.output_padding = per_spatial(node, ConvArgs::output_padding, nsp, 0);
    s.groups = node.arg_int_or(ConvArgs::groups, 1);
  } else if (op.rfind("aten::conv_transpose", 0) == 0) {
    s.transposed = true;
    s.stride = per_spatial(node, ConvTransposeNdArgs::stride, nsp, 1);
    s.padding = per_spatial(node, ConvTransposeNdArgs::padding, nsp, 0);
    s.output_padding = per_spatial(node, ConvTransposeNdArgs::output_padding, nsp, 0);
    s.groups = node.arg_int_or(ConvTransposeNdArgs::groups, 1);
    s.dilation = per_spatial(node, ConvTransposeNdArgs::dilation, nsp, 1);
  } else {
    s.stride = per_spatial(node, ConvNdArgs::stride, nsp, 1);
    s.padding = per_spatial(node, ConvNdArgs::padding, nsp, 0);
    s.dilation = per_spatial(node, ConvNdArgs::dilation, nsp, 1);
    s.output_padding.assign(nsp, 0);
    s.groups = node.arg_int_or(ConvNdArgs::groups, 1);
  }
  return s;
}

Reason validate_conv(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(ConvArgs::input);
  const Value* w = node.arg_tensor(ConvArgs::weight);
  if (!scalar_type_is_float(x->dtype()) || !scalar_type_is_float(w->dtype())) {
    return std::string("convolution needs float input and weight, got ") +
           scalar_type_name(x->dtype()) + " and " + scalar_type_name(w->dtype());
  }
  // An unbatched input [C, *spatial] has one dim less than the weight.
  if (w->rank() < 3 || w->rank() > 5 || (x->rank() != w->rank() && x->rank() != w->rank() - 1)) {
    return "convolution needs an input [N, C, *spatial] or [C, *spatial] with 1 to 3 spatial "
           "dims and a weight [K, C/groups, *kernel], got input rank " +
           std::to_string(x->rank()) + " and weight rank " + std::to_string(w->rank());
  }
  // conv2d.padding (padding="same"/"valid") has a string where the ints go.
  const size_t padding = node.op().rfind("aten::conv_transpose", 0) == 0
                             ? static_cast<size_t>(ConvTransposeNdArgs::padding)
                             : static_cast<size_t>(ConvArgs::padding);
  if (padding < node.num_args() && std::holds_alternative<std::string>(node.args()[padding])) {
    return "string padding (\"same\"/\"valid\") is not supported; export with decompositions";
  }
  for (size_t i : {static_cast<size_t>(ConvArgs::stride), padding}) {
    if (i < node.num_args() && !node.arg_is_none(i)) {
      for (const DimExpr& d : node.arg_dims(i)) {
        if (!d.is_constant()) return "convolution stride/padding must be constant ints";
      }
    }
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(convolution,
                ({"aten::convolution", "aten::_convolution", "aten::conv1d", "aten::conv2d",
                  "aten::conv3d", "aten::conv_transpose1d", "aten::conv_transpose2d",
                  "aten::conv_transpose3d", "aten::conv_transpose1d.input",
                  "aten::conv_transpose2d.input", "aten::conv_transpose3d.input"}),
                true, validate_conv) {
  const ConvSpec s = conv_spec(node);
  // The layer takes one dtype for all inputs: compute in the output's dtype.
  const DataType dt = ctx.engine_dtype(node.output(0)->dtype());
  engine::Tensor* x = ctx.cast(ctx.input(node, ConvArgs::input), dt);
  engine::Tensor* w = ctx.cast(ctx.input(node, ConvArgs::weight), dt);
  const bool unbatched = x->rank() == w->rank() - 1;
  if (unbatched) x = ctx.broadcast_rank(x, w->rank());
  const Value* b = node.arg_optional_tensor(ConvArgs::bias);
  engine::Tensor* bias = b != nullptr ? ctx.cast(ctx.tensor(b), dt) : nullptr;
  engine::Layer* layer = nullptr;
  if (s.transposed) {
    engine::DeconvolutionParams p;
    p.stride = s.stride;
    p.padding_begin = s.padding;
    p.padding_end = s.padding;
    p.dilation = s.dilation;
    p.output_padding = s.output_padding;
    p.groups = s.groups;
    layer = ctx.net().add_deconvolution(x, w, bias, p, ctx.layer_name(node));
  } else {
    engine::ConvolutionParams p;
    p.stride = s.stride;
    p.padding_begin = s.padding;
    p.padding_end = s.padding;
    p.dilation = s.dilation;
    p.groups = s.groups;
    layer = ctx.net().add_convolution(x, w, bias, p, ctx.layer_name(node));
  }
  engine::Tensor* y = layer->output();
  if (unbatched) {
    const engine::Shape shape(y->shape().begin() + 1, y->shape().end());
    y = ctx.net().add_reshape(y, shape, ctx.layer_name(node, "unbatch"))->output();
  }
  ctx.set_output(node, 0, y);
}

}  // namespace ember::compiler
