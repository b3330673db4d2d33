// recognize_rms_norms: RMSNorm written out in pointwise layers and a mean becomes one
// Normalization layer of type kRms.
//
//   c = x, or Cast(x -> f32)
//   r = Rsqrt(Mean(c * c  or  c ^ 2, trailing dims, keep_dims) + eps)
//   y = c' * r             (c' is c, or another Cast of the same x to f32)
//   [y = Cast(y -> t)]  [y = y * w  or  w * y  (w constant, the normalized dims' shape)]
//   [y = Cast(y -> t)]
//     => y = Cast(Normalization(c; kRms, axis, eps, scale w) -> t)
//
// That is Hugging Face's T5LayerNorm and LlamaRMSNorm/Qwen2RMSNorm (the f32 upcast, the mean of
// squares, the rsqrt, the cast back, then the weight), and aten::rms_norm as the converter
// writes it. On the CUDA back end the written-out form ran as a Reduce and one or two
// generated pointwise kernels per norm, reading the row twice; the Normalization layer is one
// warp-per-row kernel (the layer norm's). absorb_casts, which runs next, then moves a norm
// between a cast up and a cast back down onto the 16-bit tensor.
//
// Numerics: the written-out form rounds to the 16-bit type before the weight multiply (and
// again after it); the layer computes x * rsqrt * w in f32 and rounds once. The difference is
// within one 16-bit rounding of the result, as for the other fusions.
// EMBER_RECOGNIZE_RMS_NORMS=0 leaves the written-out form (A/B timing: bench/variants.py's
// half_written_rms).
#include <cmath>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

bool is_elementwise(const Layer* l, ElementWiseOp op) {
  return l != nullptr && l->kind() == LayerKind::kElementWise &&
         l->params_as<ElementWiseParams>().op == op;
}

/// The one element of a float constant `t`, when it is one.
bool scalar_constant(const Tensor* t, float& value) {
  const Weights* w = constant_of(t);
  if (w == nullptr || w->numel() != 1 || !dtype_is_float(w->dtype())) return false;
  value = to_floats(*w)[0];
  return true;
}

/// What `t` is the f32 value of: x itself for an f32 tensor, x for Cast(x -> f32) of a float x.
const Tensor* f32_source(const Tensor* t) {
  if (t->dtype() != DataType::kF32) return nullptr;
  const Layer* p = t->producer();
  if (p != nullptr && p->kind() == LayerKind::kCast && dtype_is_float(p->input(0)->dtype())) {
    return p->input(0);
  }
  return t;
}

/// The operand of `l` (a two-input layer) that is not `t`; nullptr unless exactly one is.
Tensor* other_operand(const Layer* l, const Tensor* t) {
  if (l->input(0) == t && l->input(1) != t) return l->input(1);
  if (l->input(1) == t && l->input(0) != t) return l->input(0);
  return nullptr;
}

/// One match: the layers it replaces end at `last` (its output is replaced).
struct Match {
  Tensor* c = nullptr;        ///< The f32 value normalized.
  int64_t axis = 0;
  double eps = 0.0;
  const Weights* weight = nullptr;
  Layer* last = nullptr;
  DataType out = DataType::kF32;
};

/// The mean of squares at `reduce`, when the chain from it to the product by its rsqrt holds.
bool match_from_reduce(Network& net, Layer* reduce, Match& m) {
  const auto& rp = reduce->params_as<ReduceParams>();
  const Tensor* in = reduce->input(0);
  const int rank = in->rank();
  if (rp.op != ReduceOp::kAvg || !rp.keep_dims || rp.axes.empty() || in->dtype() != DataType::kF32) {
    return false;
  }
  for (size_t i = 0; i < rp.axes.size(); ++i) {  // trailing dims only: [axis, rank)
    if (rp.axes[i] != rank - static_cast<int64_t>(rp.axes.size() - i)) return false;
  }
  // c * c, or c ^ 2.
  const Layer* sq = in->producer();
  if (sole_consumer(net, in) != reduce) return false;
  Tensor* c = nullptr;
  if (is_elementwise(sq, ElementWiseOp::kProd) && sq->input(0) == sq->input(1)) {
    c = sq->input(0);
  } else if (is_elementwise(sq, ElementWiseOp::kPow)) {
    float two = 0.0f;
    if (!scalar_constant(sq->input(1), two) || two != 2.0f) return false;
    c = sq->input(0);
  } else {
    return false;
  }
  const Tensor* x = f32_source(c);
  if (x == nullptr) return false;
  // + eps, rsqrt.
  Layer* add = sole_consumer(net, reduce->output());
  float eps = 0.0f;
  if (!is_elementwise(add, ElementWiseOp::kSum)) return false;
  const Tensor* eps_t = other_operand(add, reduce->output());
  if (eps_t == nullptr || !scalar_constant(eps_t, eps) || !std::isfinite(eps) || eps < 0.0f) {
    return false;
  }
  if (add->output()->rank() != rank) return false;  // the eps constant broadcast no further
  Layer* rsqrt = sole_consumer(net, add->output());
  if (rsqrt == nullptr || rsqrt->kind() != LayerKind::kUnary ||
      rsqrt->params_as<UnaryParams>().op != UnaryOp::kRsqrt) {
    return false;
  }
  // c' * rsqrt.
  Layer* scaled = sole_consumer(net, rsqrt->output());
  if (!is_elementwise(scaled, ElementWiseOp::kProd)) return false;
  const Tensor* c2 = other_operand(scaled, rsqrt->output());
  if (c2 == nullptr || f32_source(c2) != x || !(c2->shape() == c->shape()) ||
      !(scaled->output()->shape() == c->shape())) {
    return false;
  }
  m.c = c;
  m.axis = rp.axes[0];
  m.eps = eps;
  m.last = scaled;
  m.out = DataType::kF32;
  return true;
}

/// Extends `m` past an optional cast, an optional product by a constant weight of the
/// normalized dims' shape, and an optional cast.
void extend(Network& net, Match& m) {
  const Shape& shape = m.c->shape();
  const Shape normalized(shape.begin() + m.axis, shape.end());
  auto next_cast = [&]() -> Layer* {
    Layer* n = sole_consumer(net, m.last->output());
    if (n == nullptr || n->kind() != LayerKind::kCast ||
        !dtype_is_float(n->params_as<CastParams>().to)) {
      return nullptr;
    }
    return n;
  };
  if (Layer* cast = next_cast()) m.last = cast;
  Layer* mul = sole_consumer(net, m.last->output());
  if (is_elementwise(mul, ElementWiseOp::kProd) && m.weight == nullptr) {
    const Tensor* w = other_operand(mul, m.last->output());
    const Weights* wc = constant_of(w);
    if (wc != nullptr && dtype_is_float(wc->dtype()) && w->dtype() == m.last->output()->dtype() &&
        mul->output()->shape() == m.last->output()->shape()) {
      // The weight's dims, leading 1s dropped, must be the normalized dims.
      std::vector<int64_t> dims = wc->dims();
      while (!dims.empty() && dims.front() == 1 && dims.size() > normalized.size()) {
        dims.erase(dims.begin());
      }
      bool same = dims.size() == normalized.size();
      for (size_t i = 0; same && i < dims.size(); ++i) {
        same = normalized[i].is_constant() && normalized[i].constant() == dims[i];
      }
      if (same) {
        m.weight = wc;
        m.last = mul;
        if (Layer* cast = next_cast()) m.last = cast;
      }
    }
  }
  m.out = m.last->output()->dtype();
}

bool rewrite(Network& net, Layer* reduce) {
  Match m;
  if (!match_from_reduce(net, reduce, m)) return false;
  extend(net, m);
  const Shape& shape = m.c->shape();
  Tensor* scale = nullptr;
  if (m.weight != nullptr) {
    std::vector<int64_t> dims;
    for (int64_t d = m.axis; d < static_cast<int64_t>(shape.size()); ++d) {
      dims.push_back(shape[d].constant());
    }
    scale = net.add_constant(from_floats(DataType::kF32, dims, to_floats(*m.weight)),
                             unique_layer_name(net, m.last->name() + "/rms_scale"))
                ->output();
  }
  NormalizationParams p;
  p.type = NormalizationType::kRms;
  p.axis = m.axis;
  p.epsilon = m.eps;
  const std::string name = unique_layer_name(net, reduce->name() + "/rms_norm");
  Tensor* y = net.add_normalization(m.c, scale, nullptr, p, name)->output();
  if (m.out != DataType::kF32) y = net.add_cast(y, m.out, unique_layer_name(net, name + "/cast"))->output();
  net.replace_all_uses(m.last->output(), y);
  return true;
}

}  // namespace

int recognize_rms_norms(Network& net) {
  int n = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kReduce && rewrite(net, l)) ++n;
  }
  remove_unreachable_layers(net);
  return n;
}

void pass_recognize_rms_norms(BuildState& s) {
  if (switched_off_by_env("EMBER_RECOGNIZE_RMS_NORMS")) {
    s.log.push_back("recognize_rms_norms: off (EMBER_RECOGNIZE_RMS_NORMS=0)");
    return;
  }
  const int n = recognize_rms_norms(s.plan.network);
  s.log.push_back("recognize_rms_norms: " + std::to_string(n) +
                  " written-out RMS norms into Normalization layers");
}

}  // namespace ember::engine
