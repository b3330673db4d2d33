// Attention recognition: attention written out by hand, as Hugging Face's
// attn_implementation="eager" paths and T5-style position-bias attention write it,
//
//   scores = matmul(q [* c], transpose(k, -1, -2)) [* c | / c]
//   scores = scores + mask_or_bias [+ ...]    (optional: additive float masks or biases;
//                                               the last may be added through a 5-d view,
//                                               as Swin's shifted-window mask is)
//      or    where(bool_mask, scores, -big)   (optional: GPT-2's causal mask)
//      or    scores.masked_fill(drop, -big)   (optional: the inverse bool mask)
//   probs  = softmax(scores, dim=-1)          (dropout in eval and clones are gone already;
//                                               or softmax in f32 and back, for f16/bf16)
//   out    = matmul(probs, v)
//
// becomes one aten::scaled_dot_product_attention(q, k, v, mask, scale=c): one Attention layer
// (cuDNN's flash attention on the CUDA back end) instead of two GEMMs, a softmax and the
// pointwise layers between them, and no [B, H, L, S] score tensor in memory.
//
// The rewrite keeps the math: the scale is applied to q.k before the mask is added (a mask
// added before the scale is a different formula and is left alone), the softmax is over the
// last dim, every intermediate has no other reader, q/k/v are rank-4 float tensors of one dtype.
// A bool mask's fill must be <= -1e4 (finfo.min in practice): softmax then gives those keys
// zero weight in the engine's f32 arithmetic, as the Attention layer does.
#include <cmath>
#include <cstring>
#include <optional>
#include <string>

#include "ember/compiler/lowering.h"
#include "ember/engine/half.h"

namespace ember::compiler {

namespace {

/// The bool-mask fill below which a where() counts as masking a key out.
constexpr double kMaskFillLimit = -1e4;

Node* producer_is(const Value* v, const char* op) {
  Node* p = v != nullptr ? v->producer() : nullptr;
  return p != nullptr && p->op() == op ? p : nullptr;
}

bool is_tensor(const Node* n, size_t i) {
  return i < n->num_args() && std::holds_alternative<Value*>(n->args().at(i));
}

/// The value of a one-element constant tensor with data, or nullopt.
std::optional<double> constant_scalar(const Value* v) {
  if (v == nullptr || !v->is_constant() || v->constant().data == nullptr) return std::nullopt;
  const void* p = v->constant().data.get();
  const size_t n = v->constant().nbytes;
  switch (v->dtype()) {
    case ScalarType::kF32:
      if (n == sizeof(float)) return *static_cast<const float*>(p);
      break;
    case ScalarType::kF64:
      if (n == sizeof(double)) return *static_cast<const double*>(p);
      break;
    case ScalarType::kF16:
      if (n == 2) return engine::f16_to_f32(*static_cast<const uint16_t*>(p));
      break;
    case ScalarType::kBF16:
      if (n == 2) return engine::bf16_to_f32(*static_cast<const uint16_t*>(p));
      break;
    default:
      break;
  }
  return std::nullopt;
}

/// Argument i as a number: a double or int argument, or a one-element float constant.
std::optional<double> number_arg(const Node* n, size_t i) {
  if (i >= n->num_args()) return std::nullopt;
  const Arg& a = n->args()[i];
  if (std::holds_alternative<double>(a)) return std::get<double>(a);
  if (std::holds_alternative<int64_t>(a)) return static_cast<double>(std::get<int64_t>(a));
  if (std::holds_alternative<Value*>(a)) return constant_scalar(std::get<Value*>(a));
  return std::nullopt;
}

/// True when `v` has exactly one reader and is not a graph output: the rewrite then removes
/// the node that makes it instead of computing both forms.
bool single_use(const Graph& g, const Value* v) {
  if (g.users(v).size() != 1) return false;
  for (const Value* o : g.outputs()) {
    if (o == v) return false;
  }
  return true;
}

/// For `x * c` or `x / c` (c a number, in either position for mul): x, with `scale` multiplied
/// by c or 1/c. nullptr when `n` is neither.
Value* strip_scale(const Node* n, double& scale) {
  if (n == nullptr || n->num_args() != 2) return nullptr;
  if (n->op() == "aten::mul.Tensor") {
    for (size_t t = 0; t < 2; ++t) {
      auto c = number_arg(n, 1 - t);
      if (is_tensor(n, t) && c && !(n->arg_tensor(t)->is_constant())) {
        scale *= *c;
        return n->arg_tensor(t);
      }
    }
  } else if (n->op() == "aten::div.Tensor" && is_tensor(n, 0)) {
    auto c = number_arg(n, 1);
    if (c && *c != 0.0) {
      scale /= *c;
      return n->arg_tensor(0);
    }
  }
  return nullptr;
}

/// What one matched attention reads.
struct Match {
  Value* q = nullptr;
  Value* k = nullptr;
  Value* v = nullptr;
  /// Masks added to the scaled scores, outermost first (or one bool mask).
  std::vector<Value*> masks;
  /// For masks[i] added through a 5-d view of the scores (Swin's shifted windows): the sizes
  /// it is expanded to ([B / W, W, 1 or H, L, S]) and then viewed as ([B, 1 or H, L, S]);
  /// empty for a mask used as it is.
  std::vector<std::pair<std::vector<DimExpr>, std::vector<DimExpr>>> window_views;
  /// The bool mask marks keys to drop (masked_fill), not keys to keep (where).
  bool invert_bool_mask = false;
  /// masks holds one bool mask from where() or masked_fill(), not additive masks.
  bool bool_mask = false;
  double scale = 1.0;
};

/// k when `kt` is transpose(k) over its last two dims (after canonicalize: a permute).
Value* untransposed_key(const Value* kt) {
  Node* p = producer_is(kt, "aten::permute");
  if (p == nullptr || !is_tensor(p, 0)) return nullptr;
  Value* k = p->arg_tensor(0);
  const int r = k->rank();
  std::vector<int64_t> perm;
  try {
    perm = p->arg_ints(1);
  } catch (const Error&) {
    return nullptr;
  }
  if (r < 2 || static_cast<int>(perm.size()) != r) return nullptr;
  for (int i = 0; i < r; ++i) {
    const int64_t want = i == r - 2 ? r - 1 : i == r - 1 ? r - 2 : i;
    const int64_t got = perm[i] < 0 ? perm[i] + r : perm[i];
    if (got != want) return nullptr;
  }
  return k;
}

bool is_one_dim(const DimExpr& d) { return d.is_constant() && d.constant() == 1; }

/// Swin's shifted-window mask (torchvision's shifted_window_attention):
///   view(view(s, [B / W, W, H, L, S]) + m, [B, H, L, S])
/// with m broadcasting over the 5-d view from [1, W, 1 or H, L, S]: the scores s (rank 4, of
/// the same shape as the result) and, in `m`, `mask` and the expand/view sizes that make it a
/// 4-d mask [B, 1 or H, L, S] (window b % W's mask for batch row b). nullptr otherwise.
Value* window_mask(const Graph& g, Node* outer, Value*& mask,
                   std::pair<std::vector<DimExpr>, std::vector<DimExpr>>& sizes) {
  if (outer == nullptr || outer->op() != "aten::view" || !is_tensor(outer, 0)) return nullptr;
  const Shape& scores = outer->output()->shape();
  Value* sum = outer->arg_tensor(0);
  Node* add = sum->producer();
  if (scores.size() != 4 || sum->rank() != 5 || add == nullptr || !single_use(g, sum) ||
      add->op() != "aten::add.Tensor" || !is_tensor(add, 0) || !is_tensor(add, 1) ||
      (add->num_args() > 2 && number_arg(add, 2) != std::optional<double>(1.0))) {
    return nullptr;
  }
  const Shape& five = sum->shape();
  for (size_t s = 0; s < 2; ++s) {
    Node* inner = add->arg_tensor(s)->producer();
    Value* m = add->arg_tensor(1 - s);
    if (inner == nullptr || inner->op() != "aten::view" || !is_tensor(inner, 0) ||
        add->arg_tensor(s)->shape() != five || !single_use(g, add->arg_tensor(s)) ||
        inner->arg_tensor(0)->shape() != scores || m->rank() > 5) {
      continue;
    }
    // [B / W, W, H, L, S] splits only the batch dim; m is 1 along B / W and along H or full.
    if (!(five[2] == scores[1]) || !(five[3] == scores[2]) || !(five[4] == scores[3]) ||
        !(five[0] * five[1] == scores[0])) {
      continue;
    }
    Shape m5(5 - static_cast<size_t>(m->rank()), DimExpr(1));
    for (const DimExpr& d : m->shape()) m5.push_back(d);
    if (!is_one_dim(m5[0]) || !(is_one_dim(m5[2]) || m5[2] == five[2])) continue;
    bool fits = true;
    for (size_t d = 1; d < 5; ++d) fits = fits && (is_one_dim(m5[d]) || m5[d] == five[d]);
    if (!fits) continue;
    const DimExpr heads = is_one_dim(m5[2]) ? DimExpr(1) : five[2];
    sizes.first = {five[0], five[1], heads, five[3], five[4]};
    sizes.second = {scores[0], heads, scores[2], scores[3]};
    mask = m;
    return inner->arg_tensor(0);
  }
  return nullptr;
}

std::optional<Match> match(const Graph& g, const Node* out) {
  if (out->op() != "aten::matmul" || !is_tensor(out, 0) || !is_tensor(out, 1)) return std::nullopt;
  Match m;
  m.v = out->arg_tensor(1);
  Value* probs = out->arg_tensor(0);
  if (!single_use(g, probs)) return std::nullopt;

  // softmax over the last dim: aten::softmax.int(x, dim[, dtype]) or aten::_softmax(x, dim, 0).
  Node* sm = probs->producer();
  if (sm == nullptr || !is_tensor(sm, 0)) return std::nullopt;
  // Hugging Face's eager paths on f16/bf16 models: softmax(x, dtype=torch.float32).to(x.dtype).
  // The Attention layer computes its softmax in f32 too, so the round trip is its own.
  bool widened = false;
  if (sm->op() == "aten::_to_copy" && (sm->num_args() < 4 || sm->arg_is_none(3))) {
    Value* wide = sm->arg_tensor(0);
    Node* inner = wide->producer();
    if (inner == nullptr || !single_use(g, wide) || !is_tensor(inner, 0) ||
        inner->arg_tensor(0)->dtype() != probs->dtype() || wide->dtype() != ScalarType::kF32) {
      return std::nullopt;
    }
    sm = inner;
    widened = true;
  }
  if (sm->op() == "aten::softmax.int") {
    // softmax(x, -1, dtype=torch.float32) on f32 scores changes nothing; widened above is the
    // f32 round trip; any other dtype would change the result.
    if (sm->num_args() > 2 && !sm->arg_is_none(2) && !widened &&
        sm->arg_scalar_type(2) != std::optional<ScalarType>(sm->arg_tensor(0)->dtype())) {
      return std::nullopt;
    }
  } else if (sm->op() == "aten::_softmax") {
    // half_to_float: the f32 result of f16 scores, only as part of the round trip.
    if (sm->num_args() > 2 && sm->arg_bool_or(2, false) && !widened) return std::nullopt;
  } else {
    return std::nullopt;
  }
  Value* scores = sm->arg_tensor(0);
  const int rank = scores->rank();
  int64_t dim = 0;
  try {
    dim = sm->arg_int(1);
  } catch (const Error&) {
    return std::nullopt;
  }
  if (rank != 4 || (dim != -1 && dim != rank - 1) || !single_use(g, scores)) return std::nullopt;

  // Optional masks: additive masks or biases (T5 adds its position bias, then the padding
  // mask), or one bool mask through where().
  Node* sn = scores->producer();
  if (sn == nullptr) return std::nullopt;
  // Swin's shifted-window mask, added through a 5-d view of the scores.
  {
    Value* mask = nullptr;
    std::pair<std::vector<DimExpr>, std::vector<DimExpr>> sizes;
    if (Value* inner = window_mask(g, sn, mask, sizes)) {
      if (!single_use(g, inner)) return std::nullopt;
      m.masks.push_back(mask);
      m.window_views.resize(m.masks.size());
      m.window_views.back() = std::move(sizes);
      scores = inner;
      sn = scores->producer();
    }
  }
  while (sn != nullptr && sn->op() == "aten::add.Tensor" && is_tensor(sn, 0) && is_tensor(sn, 1)) {
    if (sn->num_args() > 2 && number_arg(sn, 2) != std::optional<double>(1.0)) {
      return std::nullopt;  // alpha != 1
    }
    // The scores are the operand a matmul, a scale or another add produced.
    Value* next = nullptr;
    for (size_t s = 0; s < 2 && next == nullptr; ++s) {
      Node* p = sn->arg_tensor(s)->producer();
      if (p == nullptr) continue;
      const bool from_scores =
          p->op() == "aten::matmul" || p->op() == "aten::add.Tensor" ||
          ((p->op() == "aten::mul.Tensor" || p->op() == "aten::div.Tensor") && p->num_args() == 2);
      if (!from_scores || sn->arg_tensor(s)->shape() != scores->shape()) continue;
      m.masks.push_back(sn->arg_tensor(1 - s));
      next = sn->arg_tensor(s);
    }
    if (next == nullptr || !single_use(g, next)) return std::nullopt;
    scores = next;
    sn = scores->producer();
  }
  if (sn != nullptr && m.masks.empty() && sn->op() == "aten::where.self" && is_tensor(sn, 0) &&
      is_tensor(sn, 1)) {
    auto fill = number_arg(sn, 2);
    if (!fill || *fill > kMaskFillLimit || sn->arg_tensor(0)->dtype() != ScalarType::kBool) {
      return std::nullopt;
    }
    m.masks.push_back(sn->arg_tensor(0));
    m.bool_mask = true;
    scores = sn->arg_tensor(1);
    if (!single_use(g, scores)) return std::nullopt;
  } else if (sn != nullptr && m.masks.empty() &&
             (sn->op() == "aten::masked_fill.Scalar" || sn->op() == "aten::masked_fill.Tensor") &&
             is_tensor(sn, 0) && is_tensor(sn, 1)) {
    // scores.masked_fill(cond, -big): cond marks the keys to drop, the inverse of SDPA's mask.
    auto fill = number_arg(sn, 2);
    if (!fill || *fill > kMaskFillLimit || sn->arg_tensor(1)->dtype() != ScalarType::kBool) {
      return std::nullopt;
    }
    m.masks.push_back(sn->arg_tensor(1));
    m.invert_bool_mask = true;
    m.bool_mask = true;
    scores = sn->arg_tensor(0);
    if (!single_use(g, scores)) return std::nullopt;
  }

  // Optional scale after the first matmul.
  Node* qk = scores->producer();
  if (qk != nullptr && qk->op() != "aten::matmul") {
    Value* inner = strip_scale(qk, m.scale);
    if (inner == nullptr || !single_use(g, inner)) return std::nullopt;
    qk = inner->producer();
  }
  if (qk == nullptr || qk->op() != "aten::matmul" || !is_tensor(qk, 0) || !is_tensor(qk, 1)) {
    return std::nullopt;
  }
  m.k = untransposed_key(qk->arg_tensor(1));
  if (m.k == nullptr) return std::nullopt;
  // Optional scale before it, on q (a scale on both sides multiplies).
  m.q = qk->arg_tensor(0);
  if (Node* qs = m.q->producer(); qs != nullptr && single_use(g, m.q)) {
    double s = m.scale;
    if (Value* inner = strip_scale(qs, s)) {
      m.q = inner;
      m.scale = s;
    }
  }

  for (const Value* t : {m.q, m.k, m.v}) {
    if (t->rank() != 4 || !scalar_type_is_float(t->dtype()) || t->dtype() != m.q->dtype()) {
      return std::nullopt;
    }
  }
  if (out->output()->dtype() != m.q->dtype()) return std::nullopt;
  m.window_views.resize(m.masks.size());
  for (size_t i = 0; i < m.masks.size(); ++i) {
    const Value* mask = m.masks[i];
    if (mask->rank() > 4 && m.window_views[i].first.empty()) return std::nullopt;
    // An added mask in another dtype would change the rounding, and an added bool adds 0 or 1
    // in PyTorch where the Attention layer would read it as keys to keep.
    if (m.bool_mask ? mask->dtype() != ScalarType::kBool : mask->dtype() != m.q->dtype()) {
      return std::nullopt;
    }
  }
  if (!std::isfinite(m.scale) || m.scale == 0.0) return std::nullopt;
  return m;
}

/// One additive mask from several (their sum, made before `before`), broadcast over the scores
/// [B, H, L, S]: a dim is 1 where every mask has 1 there.
Value* combined_mask(Graph& g, Node* before, const std::vector<Value*>& masks) {
  Value* sum = masks.front();
  for (size_t i = 1; i < masks.size(); ++i) {
    const Value* a = sum;
    const Value* b = masks[i];
    const Shape& scores = before->arg_tensor(0)->shape();
    Shape shape(scores.size(), DimExpr(1));
    for (size_t d = 0; d < scores.size(); ++d) {
      for (const Value* x : {a, b}) {
        const int off = static_cast<int>(scores.size()) - x->rank();
        const int k = static_cast<int>(d) - off;
        if (k >= 0 && !(x->shape()[k].is_constant() && x->shape()[k].constant() == 1)) {
          shape[d] = scores[d];
        }
      }
    }
    Node* add = g.insert_node_before(before, "aten::add.Tensor", {sum, masks[i], int64_t{1}},
                                     {TensorType{a->dtype(), shape}}, {g.fresh_name("attn_mask")});
    add->set_module(before->module_path(), before->module_types());
    sum = add->output();
  }
  return sum;
}

}  // namespace

int lower_recognize_attention(Graph& g) {
  int rewritten = 0;
  for (Node* node : g.nodes()) {
    std::optional<Match> m = match(g, node);
    if (!m) continue;
    Value* out = node->output();
    Arg mask = NoneArg{};
    if (m->invert_bool_mask) {
      Value* c = m->masks.front();
      Node* keep = g.insert_node_before(node, "aten::logical_not", {c},
                                        {TensorType{ScalarType::kBool, c->shape()}},
                                        {g.fresh_name("attn_keep")});
      keep->set_module(node->module_path(), node->module_types());
      mask = keep->output();
    } else if (!m->masks.empty()) {
      // A window mask becomes [B, 1 or H, L, S]: expanded over the batch's window groups,
      // then viewed with the batch dim whole.
      m->window_views.resize(m->masks.size());
      for (size_t i = 0; i < m->masks.size(); ++i) {
        auto& [expanded, viewed] = m->window_views[i];
        if (expanded.empty()) continue;
        Value* c = m->masks[i];
        Node* e = g.insert_node_before(node, "aten::expand", {c, expanded, false},
                                       {TensorType{c->dtype(), Shape(expanded)}},
                                       {g.fresh_name("attn_window_mask")});
        e->set_module(node->module_path(), node->module_types());
        Node* v = g.insert_node_before(node, "aten::reshape", {e->output(), viewed},
                                       {TensorType{c->dtype(), Shape(viewed)}},
                                       {g.fresh_name("attn_window_mask")});
        v->set_module(node->module_path(), node->module_types());
        m->masks[i] = v->output();
      }
      mask = combined_mask(g, node, m->masks);
    }
    Node* sdpa =
        g.insert_node_before(node, "aten::scaled_dot_product_attention",
                             {m->q, m->k, m->v, mask, 0.0, false, m->scale, false},
                             {TensorType{out->dtype(), out->shape()}}, {g.fresh_name(out->name())});
    sdpa->set_fx_name(node->fx_name());
    sdpa->set_module(node->module_path(), node->module_types());
    g.replace_all_uses(out, sdpa->output());
    g.remove_node(node);  // the scores, softmax and scale are dead now: remove_dead_code
    ++rewritten;
  }
  return rewritten;
}

}  // namespace ember::compiler
