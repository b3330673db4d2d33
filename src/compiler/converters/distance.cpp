// Distance family: pairwise p-norm distances (aten::_cdist_forward, what torch.cdist lowers to)
// and the 3-vector cross product (aten::linalg_cross, aten::cross).
//
// cdist is computed directly, |x1[i] - x2[j]|_p over a [*, P, R, M] difference tensor, in f32:
// exact for every p (PyTorch switches to a matmul expansion for large p=2 inputs, which is
// less accurate, not more). Memory is P*R*M per batch: fine for the sizes cdist is used at.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {
namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::ReduceOp;
using engine::Shape;
using engine::Tensor;
using engine::UnaryOp;

/// _cdist_forward(x1, x2, p, compute_mode).
struct CdistArgs {
  enum { x1 = 0, x2 = 1, p = 2, compute_mode = 3 };
};
/// linalg_cross(self, other, *, dim=-1); cross(self, other, dim=None).
struct CrossArgs {
  enum { self = 0, other = 1, dim = 2 };
};

Reason validate_cdist(const Node& node, const CompileSettings&) {
  for (size_t i : {CdistArgs::x1, CdistArgs::x2}) {
    const Value* v = node.arg_tensor(i);
    if (!scalar_type_is_float(v->dtype())) {
      return std::string("cdist takes float tensors, got ") + scalar_type_name(v->dtype());
    }
    if (v->rank() < 2) return "cdist needs inputs of rank >= 2 ([*, P, M] and [*, R, M])";
  }
  const double p = node.arg_double(CdistArgs::p);
  if (!(p >= 0)) return "cdist needs p >= 0";
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(cdist, {"aten::_cdist_forward"}, true, validate_cdist) {
  auto& net = ctx.net();
  Tensor* a = ctx.cast(ctx.input(node, CdistArgs::x1), DataType::kF32);
  Tensor* b = ctx.cast(ctx.input(node, CdistArgs::x2), DataType::kF32);
  const int rank = std::max(a->rank(), b->rank());
  a = ctx.broadcast_rank(a, rank);
  b = ctx.broadcast_rank(b, rank);
  // a [*, P, 1, M] - b [*, 1, R, M] -> [*, P, R, M].
  Shape sa = a->shape(), sb = b->shape();
  sa.insert(sa.end() - 1, DimExpr(1));
  sb.insert(sb.end() - 2, DimExpr(1));
  a = net.add_reshape(a, sa, ctx.layer_name(node, "x1"))->output();
  b = net.add_reshape(b, sb, ctx.layer_name(node, "x2"))->output();
  Tensor* d = net.add_elementwise(a, b, ElementWiseOp::kSub, ctx.layer_name(node))->output();
  d = net.add_unary(d, UnaryOp::kAbs, ctx.layer_name(node))->output();
  const double p = node.arg_double(CdistArgs::p);
  const std::vector<int64_t> last{rank};
  auto reduce = [&](Tensor* t, ReduceOp op) {
    return net.add_reduce(t, op, last, false, ctx.layer_name(node))->output();
  };
  Tensor* out = nullptr;
  if (p == 0) {  // the number of differing coordinates
    Tensor* nz = net.add_elementwise(d, ctx.scalar(0, DataType::kF32, rank + 1),
                                     ElementWiseOp::kGreater, ctx.layer_name(node))
                     ->output();
    out = reduce(ctx.cast(nz, DataType::kF32), ReduceOp::kSum);
  } else if (std::isinf(p)) {
    out = reduce(d, ReduceOp::kMax);
  } else if (p == 1) {
    out = reduce(d, ReduceOp::kSum);
  } else if (p == 2) {
    Tensor* sq = net.add_elementwise(d, d, ElementWiseOp::kProd, ctx.layer_name(node))->output();
    out = net.add_unary(reduce(sq, ReduceOp::kSum), UnaryOp::kSqrt, ctx.layer_name(node))->output();
  } else {
    Tensor* pw = net.add_elementwise(d, ctx.scalar(p, DataType::kF32, rank + 1),
                                     ElementWiseOp::kPow, ctx.layer_name(node))
                     ->output();
    out = net.add_elementwise(reduce(pw, ReduceOp::kSum), ctx.scalar(1.0 / p, DataType::kF32, rank),
                              ElementWiseOp::kPow, ctx.layer_name(node))
              ->output();
  }
  ctx.set_output(node, 0, out);
}

// ---------------------------------------------------------------------------------------------
// Cross product

namespace {

/// The dim the cross product runs along, in the broadcast rank of both operands; -1 when none.
int64_t cross_dim(const Node& node) {
  const Value* a = node.arg_tensor(CrossArgs::self);
  const Value* b = node.arg_tensor(CrossArgs::other);
  const int rank = std::max(a->rank(), b->rank());
  if (!node.arg_is_none(CrossArgs::dim))
    return normalize_dim(node.arg_int(CrossArgs::dim), rank, node);
  // aten::cross without dim: the first dim of size 3 (of the broadcast shape).
  for (int d = 0; d < rank; ++d) {
    const int da = d - (rank - a->rank()), db = d - (rank - b->rank());
    const bool three_a = da >= 0 && a->shape()[da] == DimExpr(3);
    const bool three_b = db >= 0 && b->shape()[db] == DimExpr(3);
    if (three_a || three_b) return d;
  }
  return -1;
}

Reason validate_cross(const Node& node, const CompileSettings&) {
  const Value* a = node.arg_tensor(CrossArgs::self);
  const Value* b = node.arg_tensor(CrossArgs::other);
  if (a->dtype() == ScalarType::kBool) return "cross of bool tensors";
  if (a->dtype() != b->dtype()) return "cross needs operands of one dtype";
  const int64_t d = cross_dim(node);
  if (d < 0) return "cross without dim needs a dim of size 3";
  const int rank = std::max(a->rank(), b->rank());
  for (const Value* v : {a, b}) {
    const int dv = static_cast<int>(d) - (rank - v->rank());
    if (dv < 0 || !(v->shape()[dv] == DimExpr(3))) {
      return "cross needs both operands to have size 3 in dim " + std::to_string(d);
    }
  }
  return std::nullopt;
}

}  // namespace

EMBER_CONVERTER(cross, ({"aten::linalg_cross", "aten::cross"}), true, validate_cross) {
  auto& net = ctx.net();
  const int64_t dim = cross_dim(node);
  const DataType dt = ctx.engine_dtype(node.output(0)->dtype());
  Tensor* a = ctx.cast(ctx.input(node, CrossArgs::self), dt);
  Tensor* b = ctx.cast(ctx.input(node, CrossArgs::other), dt);
  const int rank = std::max(a->rank(), b->rank());
  a = ctx.broadcast_rank(a, rank);
  b = ctx.broadcast_rank(b, rank);
  auto component = [&](Tensor* t, int64_t i) {
    Shape start(static_cast<size_t>(rank), DimExpr(0)), size = t->shape();
    start[dim] = i;
    size[dim] = 1;
    return net
        .add_slice(t, start, size, std::vector<int64_t>(static_cast<size_t>(rank), 1),
                   ctx.layer_name(node))
        ->output();
  };
  Tensor* ac[3] = {component(a, 0), component(a, 1), component(a, 2)};
  Tensor* bc[3] = {component(b, 0), component(b, 1), component(b, 2)};
  std::vector<Tensor*> parts;
  for (int i = 0; i < 3; ++i) {
    const int j = (i + 1) % 3, k = (i + 2) % 3;
    Tensor* l =
        net.add_elementwise(ac[j], bc[k], ElementWiseOp::kProd, ctx.layer_name(node))->output();
    Tensor* r =
        net.add_elementwise(ac[k], bc[j], ElementWiseOp::kProd, ctx.layer_name(node))->output();
    parts.push_back(net.add_elementwise(l, r, ElementWiseOp::kSub, ctx.layer_name(node))->output());
  }
  ctx.set_output(node, 0, net.add_concatenation(parts, dim, ctx.layer_name(node))->output());
}

}  // namespace ember::compiler
