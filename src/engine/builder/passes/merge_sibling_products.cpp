// merge_sibling_products: matrix products that read one input with constant weights (siblings)
// become one product with the weights side by side, whose parts the pointwise layers after
// them read in place:
//
//   g = act(x W_g^T)    u = x W_u^T    h = g * u        (SwiGLU: Llama, Qwen2, Mistral's MLP)
//   =>  y = x [W_g; W_u]^T
//       h = act(y[..., :N_g]) * y[..., N_g:]            (one fused kernel reads both parts)
//
// One larger GEMM instead of two (one launch and one wave tail less per layer, and a wider
// grid), and the same bytes: the parts are not copied, because fuse_pointwise (which runs next)
// reads a last-dim slice as a view of the merged output. That is why a sibling is taken only
// when every reader of its output is a pointwise layer fuse_pointwise groups, at the output's
// shape: a part read by anything else (a reshape to attention heads, another product) would be
// a copy, and the merge would cost bytes. Attention's q/k/v projections are simplify_attention's
// (read packed in place by the attention kernels), which runs before this.
//
// Siblings must agree on what one product can do for all of them: the transposes, the weight's
// dtype and K, the epilogue's scale, and no residual input. Biases go side by side (zeros for a
// sibling without one). An activation in a sibling's epilogue (fuse_epilogues put SwiGLU's SiLU
// into the gate projection) moves to an Activation layer on its part, which joins the fused
// kernel; one activation shared by all siblings stays in the merged epilogue. Each part starts
// at a multiple of kPartAlign elements, so the fused kernel's vector loads stay aligned.
//
// Runs after the epilogue fusions and before fuse_pointwise (level >= 2), only when
// fuse_pointwise runs too. EMBER_MERGE_SIBLING_PRODUCTS=0 turns it off (A/B timing).
#include <map>
#include <string>
#include <vector>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// A part's width (and so its offset in the merged output) must be a multiple of this many
/// elements: 16 bytes of f16/bf16, the fused kernels' vector.
constexpr int64_t kPartAlign = 8;

/// Whether `mm` can be merged with siblings: a MatrixMultiply with a constant rank-2 weight, a
/// constant bias or none, no residual, a known output width that is a multiple of kPartAlign,
/// and an output that is not a network output and is read only by fusable pointwise layers of
/// its shape.
bool mergeable(const Network& net, const Layer* mm) {
  if (mm->kind() != LayerKind::kMatrixMultiply || mm->input(3) != nullptr) return false;
  const Weights* w = constant_of(mm->input(1));
  if (w == nullptr || w->dims().size() != 2) return false;
  if (mm->input(2) != nullptr) {
    const Weights* b = constant_of(mm->input(2));
    if (b == nullptr || b->dims().size() != 1) return false;
  }
  const Tensor* y = mm->output();
  const Shape& ys = y->shape();
  if (y->is_output() || ys.size() < 2 || !ys.back().is_constant() ||
      ys.back().constant() % kPartAlign != 0) {
    return false;
  }
  const std::vector<Layer*> readers = net.consumers(y);
  if (readers.empty()) return false;
  for (const Layer* r : readers) {
    if (!is_fusable_pointwise(r) || !(r->output()->shape() == ys)) return false;
  }
  return true;
}

/// Whether `b` can share one product with `a` (both mergeable): the same input read the same
/// way, weights of one dtype and K, the same scale, outputs alike but for the last dim.
bool siblings(const Layer* a, const Layer* b) {
  const auto& pa = a->params_as<MatrixMultiplyParams>();
  const auto& pb = b->params_as<MatrixMultiplyParams>();
  const Weights* wa = constant_of(a->input(1));
  const Weights* wb = constant_of(b->input(1));
  const size_t k_axis = pa.transpose_b ? 1 : 0;  // [N, K] or [K, N]
  if (a->input(0) != b->input(0) || pa.transpose_a != pb.transpose_a ||
      pa.transpose_b != pb.transpose_b || pa.epilogue.scale != pb.epilogue.scale ||
      wa->dtype() != wb->dtype() || wa->dims()[k_axis] != wb->dims()[k_axis] ||
      a->output()->dtype() != b->output()->dtype()) {
    return false;
  }
  const Weights* ba = constant_of(a->input(2));
  const Weights* bb = constant_of(b->input(2));
  if (ba != nullptr && bb != nullptr && ba->dtype() != bb->dtype()) return false;
  const Shape& sa = a->output()->shape();
  const Shape& sb = b->output()->shape();
  if (sa.size() != sb.size()) return false;
  for (size_t d = 0; d + 1 < sa.size(); ++d) {
    if (!(sa[d] == sb[d])) return false;
  }
  return true;
}

bool same_activation(const Epilogue& a, const Epilogue& b) {
  return a.fused_activation == b.fused_activation &&
         (!a.fused_activation ||
          (a.activation == b.activation && a.alpha == b.alpha && a.beta == b.beta));
}

/// The biases of `group` side by side ([sum N]), zeros for a product without one; nullptr when
/// none has one.
Tensor* merged_bias(Network& net, const std::vector<Layer*>& group, const std::string& name) {
  const Weights* any = nullptr;
  for (const Layer* m : group) {
    if (const Weights* b = constant_of(m->input(2))) any = b;
  }
  if (any == nullptr) return nullptr;
  const size_t elem = dtype_size(any->dtype());
  std::vector<uint8_t> bytes;
  int64_t n = 0;
  for (const Layer* m : group) {
    const int64_t width = m->output()->shape().back().constant();
    if (const Weights* b = constant_of(m->input(2))) {
      const auto* d = static_cast<const uint8_t*>(b->data());
      bytes.insert(bytes.end(), d, d + b->nbytes());
    } else {
      bytes.insert(bytes.end(), static_cast<size_t>(width) * elem, uint8_t{0});  // +0.0
    }
    n += width;
  }
  return net.add_constant(Weights::copy(any->dtype(), {n}, bytes.data()),
                          unique_layer_name(net, name + "/bias"))
      ->output();
}

/// Replaces `group` (two or more siblings, in network order) by one product; each output
/// becomes a slice of the merged one (with its own activation after it, where the merged
/// epilogue does not have it).
void merge(Network& net, const std::vector<Layer*>& group) {
  const auto& p0 = group[0]->params_as<MatrixMultiplyParams>();
  std::string name = group[0]->name();
  for (size_t i = 1; i < group.size(); ++i) name += "+" + group[i]->name();
  std::vector<const Weights*> ws;
  for (const Layer* m : group) ws.push_back(constant_of(m->input(1)));
  bool shared_activation = true;
  for (const Layer* m : group) {
    shared_activation = shared_activation &&
                        same_activation(m->params_as<MatrixMultiplyParams>().epilogue, p0.epilogue);
  }
  MatrixMultiplyParams p = p0;
  if (!shared_activation) p.epilogue.fused_activation = false;
  Tensor* w = net.add_constant(concat_product_weights(ws, p.transpose_b),
                               unique_layer_name(net, name + "/weight"))
                  ->output();
  Tensor* bias = merged_bias(net, group, name);
  std::vector<Tensor*> inputs{group[0]->input(0), w};
  if (bias != nullptr) inputs.push_back(bias);
  Tensor* y = net.add_layer(p, inputs, unique_layer_name(net, name))->output();
  int64_t offset = 0;
  for (Layer* m : group) {
    const Shape& part = m->output()->shape();
    Shape start(part.size(), DimExpr(0));
    start.back() = DimExpr(offset);
    Tensor* t = net.add_slice(y, start, part, std::vector<int64_t>(part.size(), 1),
                              unique_layer_name(net, m->name() + "/part"))
                    ->output();
    const Epilogue& e = m->params_as<MatrixMultiplyParams>().epilogue;
    if (!shared_activation && e.fused_activation) {
      t = net.add_activation(t, e.activation, e.alpha, e.beta,
                             unique_layer_name(net, m->name() + "/activation"))
              ->output();
    }
    net.replace_all_uses(m->output(), t);
    offset += part.back().constant();
  }
}

}  // namespace

int merge_sibling_products(Network& net) {
  // Candidates by the tensor they read, in network order (never by address: the plan must not
  // depend on where tensors were allocated).
  std::vector<Tensor*> order;
  std::map<const Tensor*, std::vector<Layer*>> by_input;
  for (Layer* l : net.layers()) {
    if (!mergeable(net, l)) continue;
    auto [it, added] = by_input.emplace(l->input(0), std::vector<Layer*>{});
    if (added) order.push_back(l->input(0));
    it->second.push_back(l);
  }
  int merged = 0;
  for (const Tensor* x : order) {
    std::vector<Layer*> rest = by_input.at(x);
    while (rest.size() >= 2) {
      std::vector<Layer*> group{rest[0]}, others;
      for (size_t i = 1; i < rest.size(); ++i) {
        (siblings(rest[0], rest[i]) ? group : others).push_back(rest[i]);
      }
      if (group.size() >= 2) {
        merge(net, group);
        merged += static_cast<int>(group.size());
      }
      rest = std::move(others);
    }
  }
  if (merged > 0) remove_unreachable_layers(net);
  return merged;
}

void pass_merge_sibling_products(BuildState& s) {
  if (switched_off_by_env("EMBER_MERGE_SIBLING_PRODUCTS")) {
    s.log.push_back("merge_sibling_products: off (EMBER_MERGE_SIBLING_PRODUCTS=0)");
    return;
  }
  if (!fuse_pointwise_enabled(s.config)) {
    // Without fuse_pointwise the parts would be copies: the merge would cost bytes.
    s.log.push_back("merge_sibling_products: off (fuse_pointwise is off)");
    return;
  }
  const int n = merge_sibling_products(s.plan.network);
  s.log.push_back("merge_sibling_products: " + std::to_string(n) +
                  " products merged with siblings that read the same input");
}

}  // namespace ember::engine
