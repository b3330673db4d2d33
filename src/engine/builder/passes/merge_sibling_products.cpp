// merge_sibling_products: matrix products that read one input with constant weights (siblings)
// become one product with the weights side by side, whose parts the pointwise layers after
// them read in place:
//
//   g = act(x W_g^T)    u = x W_u^T    h = g * u        (SwiGLU: Llama, Qwen2, Mistral's MLP)
//   =>  y = x [W_g; W_u]^T
//       h = act(y[..., :N_g]) * y[..., N_g:]            (one fused kernel reads both parts)
//
//   q = x Wq^T + bq,  k = x Wk^T + bk  -> reshape to heads -> RoPE   (GQA decoders: Qwen2, Llama)
//   =>  y = x [Wq; Wk]^T + [bq; bk];   RoPE reads y's rows of heads 0 .. Hq and Hq .. Hq + Hk
//
// One larger GEMM instead of two (one launch and one wave tail less per layer, and a wider
// grid), and the same bytes: the parts are not copied, because fuse_pointwise (which runs next)
// reads a last-dim slice as a view of the merged output, and a reshape of one into heads as a
// slice of the merged output's heads. That is why a sibling is taken only when fuse_pointwise
// will read its output in place: pointwise layers at its shape, or a reshape into heads whose
// readers are pointwise layers (through the transposes and last-dim gathers fuse_pointwise
// reads through). A part read by anything else (attention's v operand, another product) would
// be a copy, and the merge would cost bytes. Attention's q/k/v projections without RoPE are
// simplify_attention's (read packed in place by the attention kernels), which runs before this.
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
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// A part's width (and so its offset in the merged output) must be a multiple of this many
/// elements: 16 bytes of f16/bf16, the fused kernels' vector.
constexpr int64_t kPartAlign = 8;

/// Whether fuse_pointwise will read `t` in place: it is not a network output, and every reader
/// is a fusable pointwise layer, or a transpose that keeps the last dim last or a constant
/// last-dim gather (which fuse_pointwise reads through) whose own readers are such (RoPE's
/// transpose and rotate_half gather before its products).
bool read_in_place(const Network& net, const Tensor* t, int depth = 0) {
  if (t->is_output() || depth > 3) return false;
  const std::vector<Layer*> readers = net.consumers(t);
  if (readers.empty()) return false;
  for (const Layer* r : readers) {
    if (is_fusable_pointwise(r)) continue;
    bool view = false;
    if (r->kind() == LayerKind::kShuffle) {
      const auto& sp = r->params_as<ShuffleParams>();
      view = !sp.first_transpose.empty() && !sp.has_reshape && sp.second_transpose.empty() &&
             sp.first_transpose.back() == static_cast<int64_t>(sp.first_transpose.size()) - 1;
    } else if (r->kind() == LayerKind::kGather) {
      const auto& gp = r->params_as<GatherParams>();
      const int64_t rank = static_cast<int64_t>(t->rank());
      const Weights* idx = constant_of(r->input(1));
      view = r->input(0) == t && gp.mode == GatherMode::kDefault &&
             (gp.axis == rank - 1 || gp.axis == -1) && idx != nullptr && idx->dims().size() == 1;
    }
    if (!view || !read_in_place(net, r->output(), depth + 1)) return false;
  }
  return true;
}

/// How the readers of a product's output `y` would read its part of a merged product: 0 when
/// they are pointwise layers of its shape, e when it is read only by a reshape into heads of e
/// ([.., N] -> [.., N / e, e]) that fuse_pointwise reads in place (its split_slice_view: q and
/// k of a decoder, before RoPE), -1 otherwise (the part would be copied).
int64_t part_reading(const Network& net, const Tensor* y) {
  const Shape& ys = y->shape();
  const std::vector<Layer*> readers = net.consumers(y);
  if (y->is_output() || readers.empty()) return -1;
  if (readers.size() == 1 && is_pure_reshape(readers[0])) {
    const Shape& rs = readers[0]->output()->shape();
    if (rs.size() != ys.size() + 1 || !rs.back().is_constant()) return -1;
    for (size_t d = 0; d + 1 < ys.size(); ++d) {
      if (!(rs[d] == ys[d])) return -1;
    }
    const int64_t e = rs.back().constant();
    const bool heads = e > 0 && e % kPartAlign == 0 && ys.back().constant() % e == 0;
    return heads && read_in_place(net, readers[0]->output()) ? e : -1;
  }
  for (const Layer* r : readers) {
    if (!is_fusable_pointwise(r) || !(r->output()->shape() == ys)) return -1;
  }
  return 0;
}

/// Whether `mm` can be merged with siblings: a MatrixMultiply with a constant rank-2 weight, a
/// constant bias or none, no residual, a known output width that is a multiple of kPartAlign,
/// and an output that fuse_pointwise will read in place as a part (part_reading).
bool mergeable(const Network& net, const Layer* mm) {
  if (mm->kind() != LayerKind::kMatrixMultiply || mm->input(3) != nullptr) return false;
  const Weights* w = constant_of(mm->input(1));
  if (w == nullptr || w->dims().size() != 2) return false;
  if (mm->input(2) != nullptr) {
    const Weights* b = constant_of(mm->input(2));
    if (b == nullptr || b->dims().size() != 1) return false;
  }
  const Shape& ys = mm->output()->shape();
  if (ys.size() < 2 || !ys.back().is_constant() || ys.back().constant() % kPartAlign != 0) {
    return false;
  }
  return part_reading(net, mm->output()) >= 0;
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
      // A part read as heads of e must start at a multiple of e: every part's width must be
      // one (q and k of 64-wide heads: 896 and 128). When rest[0] is not, it stays alone and
      // the others try again without it; otherwise those that are not wait for another group.
      int64_t heads = 1;
      for (const Layer* m : group) heads = std::max(heads, part_reading(net, m->output()));
      auto fits = [&](const Layer* m) { return m->output()->shape().back().constant() % heads == 0; };
      if (!fits(group[0])) {
        others.insert(others.end(), group.begin() + 1, group.end());
        group.resize(1);
      }
      std::vector<Layer*> whole;
      for (Layer* m : group) (fits(m) || m == group[0] ? whole : others).push_back(m);
      group = std::move(whole);
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
