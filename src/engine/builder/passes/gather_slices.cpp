// gather_slices: a Concatenation whose pieces are unit-stride slices of one tensor x along the
// concatenation's dim (every other dim whole), each possibly negated, becomes one Gather of x
// along that dim with constant indices, times a constant +-1 vector when a piece was negated
// (only along the last dim, where the vector broadcasts):
//
//   cat(-x[..., h:], x[..., :h], dim=-1)   (rotate_half: RoPE in Llama, Qwen2, Mistral, NeoX)
//     => Gather(x, [h .. 2h-1, 0 .. h-1], axis=-1) * [-1 x h, +1 x h]
//   cat(x[:, s:], x[:, :s], dim=1)         (torch.roll as exported: Swin's cyclic shifts)
//     => Gather(x, [s .. H-1, 0 .. s-1], axis=1)
//
// Four layers (two slice copies, a negation, the concatenation: four kernels and three
// intermediate tensors on the GPU) become one gather; the product joins the pointwise layers
// around it in fuse_pointwise (RoPE's x * cos + rotate_half(x) * sin), so it costs no kernel of
// its own. A roll's three copies become one. A concatenation that puts x back together
// unchanged is replaced by x itself. Negation as a product by -1 is exact (the same bits, up
// to a NaN's sign).
//
// Runs after simplify_attention and before fuse_pointwise (level >= 2).
#include <optional>
#include <string>
#include <vector>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// One piece of the concatenation: x[..., start : start + size], negated or not.
struct Piece {
  Tensor* x = nullptr;
  int64_t start = 0;
  int64_t size = 0;
  bool negated = false;
};

/// `t` as a piece, when its producer is a unit-stride slice along dim `axis` of a tensor (other
/// dims whole, that one's start and size constant), or a float negation of one.
std::optional<Piece> piece_of(const Tensor* t, size_t axis) {
  Piece p;
  const Layer* l = t->producer();
  if (l != nullptr && l->kind() == LayerKind::kUnary &&
      l->params_as<UnaryParams>().op == UnaryOp::kNeg && dtype_is_float(t->dtype())) {
    p.negated = true;
    l = l->input(0)->producer();
  }
  if (l == nullptr || l->kind() != LayerKind::kSlice) return std::nullopt;
  const auto& sp = l->params_as<SliceParams>();
  Tensor* x = l->input(0);
  const Shape& xs = x->shape();
  const size_t rank = xs.size();
  if (axis >= rank || sp.start.size() != rank || sp.size.size() != rank ||
      sp.stride.size() != rank || !xs[axis].is_constant()) {
    return std::nullopt;
  }
  for (size_t d = 0; d < rank; ++d) {
    if (sp.stride[d] != 1) return std::nullopt;
    if (d != axis && (!(sp.start[d] == DimExpr(0)) || !(sp.size[d] == xs[d]))) {
      return std::nullopt;
    }
  }
  if (!sp.start[axis].is_constant() || !sp.size[axis].is_constant()) return std::nullopt;
  p.x = x;
  p.start = sp.start[axis].constant();
  p.size = sp.size[axis].constant();
  if (p.start < 0 || p.size <= 0 || p.start + p.size > xs[axis].constant()) return std::nullopt;
  return p;
}

/// Rewrites `cat` when it is such a concatenation; true when it did.
bool rewrite(Network& net, Layer* cat, int& identities) {
  const Tensor* out = cat->output();
  const auto rank = static_cast<int64_t>(out->rank());
  const int64_t cat_axis = cat->params_as<ConcatenationParams>().axis;  // in [0, rank)
  if (rank == 0 || cat->inputs().size() < 2) return false;
  const auto axis = static_cast<size_t>(cat_axis);
  const bool last = cat_axis == rank - 1;
  std::vector<int32_t> indices;
  std::vector<float> signs;
  bool negated = false;
  Tensor* x = nullptr;
  for (const Tensor* in : cat->inputs()) {
    const std::optional<Piece> p = piece_of(in, axis);
    if (!p || (x != nullptr && p->x != x) || (p->negated && !last)) return false;
    x = p->x;
    negated = negated || p->negated;
    for (int64_t i = 0; i < p->size; ++i) {
      indices.push_back(static_cast<int32_t>(p->start + i));
      signs.push_back(p->negated ? -1.0f : 1.0f);
    }
  }
  const int64_t width = x->shape()[axis].constant();
  bool identity = !negated && static_cast<int64_t>(indices.size()) == width;
  for (size_t i = 0; identity && i < indices.size(); ++i) identity = indices[i] == static_cast<int32_t>(i);
  if (identity) {
    net.replace_all_uses(cat->output(), x);
    ++identities;
    return true;
  }
  const auto n = static_cast<int64_t>(indices.size());
  Tensor* idx = net.add_constant(Weights::copy(DataType::kI32, {n}, indices.data()),
                                 cat->name() + "/indices")->output();
  GatherParams gp;
  gp.axis = cat_axis;
  Tensor* result = net.add_gather(x, idx, gp, cat->name() + "/gather")->output();
  if (negated) {
    Tensor* sign = net.add_constant(from_floats(x->dtype(), {n}, signs), cat->name() + "/signs")
                       ->output();
    result = net.add_elementwise(result, sign, ElementWiseOp::kProd, cat->name() + "/negate")
                 ->output();
  }
  net.replace_all_uses(cat->output(), result);
  return true;
}

}  // namespace

int gather_slices(Network& net, int* identities) {
  int rewritten = 0, same = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kConcatenation && rewrite(net, l, same)) ++rewritten;
  }
  remove_unreachable_layers(net);
  if (identities != nullptr) *identities = same;
  return rewritten;
}

void pass_gather_slices(BuildState& s) {
  int identities = 0;
  const int n = gather_slices(s.plan.network, &identities);
  s.log.push_back("gather_slices: " + std::to_string(n - identities) +
                  " concatenations of slices into gathers, " +
                  std::to_string(identities) + " into the tensor they cut up");
}

}  // namespace ember::engine
