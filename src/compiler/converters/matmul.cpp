// Matrix products: mm, bmm, matmul, mv, dot, linear, addmm, addmv, baddbmm, and aten::t.
// All become one MatrixMultiply layer (numpy.matmul semantics, like torch.matmul), plus the
// scaling and bias of the add* forms.
#include <string>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

using engine::DataType;
using engine::ElementWiseOp;

/// mm/bmm/matmul/mv/dot(self, other).
struct ProductArgs {
  enum { a = 0, b = 1 };
};
/// addmm/addmv/baddbmm(self, mat1, mat2, *, beta=1, alpha=1).
struct AddProductArgs {
  enum { self = 0, a = 1, b = 2, beta = 3, alpha = 4 };
};
/// linear(input, weight, bias=None).
struct LinearArgs {
  enum { input = 0, weight = 1, bias = 2 };
};

/// The engine's matrix product takes floats only; PyTorch also multiplies integers.
Reason validate_float_tensors(const Node& node, const CompileSettings&) {
  for (const Value* v : node.input_values()) {
    if (!scalar_type_is_float(v->dtype())) {
      return std::string("matrix products run in engines for float tensors only, got ") +
             scalar_type_name(v->dtype()) + " (input %" + v->name() + ")";
    }
  }
  return std::nullopt;
}

/// Operand `i` cast to the output's engine dtype.
engine::Tensor* operand(ConversionContext& ctx, const Node& node, size_t i) {
  return ctx.cast(ctx.input(node, i), ctx.engine_dtype(node.output(0)->dtype()));
}

engine::Tensor* matmul(ConversionContext& ctx, const Node& node, engine::Tensor* a,
                       engine::Tensor* b, bool transpose_b = false) {
  return ctx.net().add_matrix_multiply(a, false, b, transpose_b, ctx.layer_name(node))->output();
}

engine::Tensor* elementwise(ConversionContext& ctx, const Node& node, engine::Tensor* a,
                            engine::Tensor* b, ElementWiseOp op) {
  return ctx.net().add_elementwise(a, b, op, ctx.layer_name(node))->output();
}

}  // namespace

EMBER_CONVERTER(matmul, ({"aten::mm", "aten::bmm", "aten::matmul", "aten::mv", "aten::dot"}), true,
                validate_float_tensors) {
  ctx.set_output(
      node, 0,
      matmul(ctx, node, operand(ctx, node, ProductArgs::a), operand(ctx, node, ProductArgs::b)));
}

// beta * self + alpha * (mat1 @ mat2); with beta == 0, self is ignored (nan and inf too), as in
// PyTorch.
EMBER_CONVERTER(add_matmul, ({"aten::addmm", "aten::addmv", "aten::baddbmm"}), true,
                validate_float_tensors) {
  const DataType dt = ctx.engine_dtype(node.output(0)->dtype());
  const double beta = node.arg_double_or(AddProductArgs::beta, 1.0);
  const double alpha = node.arg_double_or(AddProductArgs::alpha, 1.0);
  engine::Tensor* prod = matmul(ctx, node, operand(ctx, node, AddProductArgs::a),
                                operand(ctx, node, AddProductArgs::b));
  if (alpha != 1.0) {
    prod = elementwise(ctx, node, prod, ctx.scalar(alpha, dt, prod->rank()), ElementWiseOp::kProd);
  }
  if (beta != 0.0) {
    engine::Tensor* self = operand(ctx, node, AddProductArgs::self);
    if (beta != 1.0) {
      self = elementwise(ctx, node, self, ctx.scalar(beta, dt, self->rank()), ElementWiseOp::kProd);
    }
    prod = elementwise(ctx, node, prod, self, ElementWiseOp::kSum);
  } else if (prod->rank() < node.output(0)->rank()) {
    prod = ctx.broadcast_rank(prod, node.output(0)->rank());
  }
  ctx.set_output(node, 0, prod);
}

// input @ weight^T (+ bias): the transpose is a flag of the product, not a layer.
EMBER_CONVERTER(linear, {"aten::linear"}, true, validate_float_tensors) {
  engine::Tensor* out = matmul(ctx, node, operand(ctx, node, LinearArgs::input),
                               operand(ctx, node, LinearArgs::weight), /*transpose_b=*/true);
  if (node.arg_optional_tensor(LinearArgs::bias) != nullptr) {
    out = elementwise(ctx, node, out, operand(ctx, node, LinearArgs::bias), ElementWiseOp::kSum);
  }
  ctx.set_output(node, 0, out);
}

// aten::t: transposes a 2-d tensor; 0-d and 1-d tensors are returned as they are.
EMBER_CONVERTER(t, {"aten::t"}, true, nullptr) {
  engine::Tensor* x = ctx.input(node, 0);
  if (x->rank() == 2) {
    x = ctx.net().add_transpose(x, {1, 0}, ctx.layer_name(node))->output();
  } else if (x->rank() > 2) {
    throw Error(node.describe() + ": aten::t expects a tensor of rank <= 2, got rank " +
                std::to_string(x->rank()));
  }
  ctx.set_output(node, 0, x);
}

}  // namespace ember::compiler
