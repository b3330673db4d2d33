// merge_sibling_products: matrix products that read one input with constant weights (siblings),
// and whose outputs only fused pointwise kernels read, become one product with the weights side
// by side, and those kernels read their parts of it in place:
//
//   g = x Wg^T    u = x Wu^T    h = FusedPointwise[silu(g) * u]    (SwiGLU: Llama, Qwen2)
//   =>  y = x [Wg; Wu]^T        h = FusedPointwise[silu(y[.., :Ng]) * y[.., Ng:]]
//
//   q = x Wq^T + bq   k = x Wk^T + bk   each reshaped into heads, rotated by a FusedPointwise
//   (RoPE) before attention (grouped-query decoders: q and k differ in width, so
//   simplify_attention's packing of three equal projections does not apply)
//   =>  y = x [Wq; Wk]^T + [bq; bk]; each RoPE kernel reads its heads of y's rows of heads
//
// One larger GEMM instead of two (one launch and one wave tail less per layer, and a wider
// grid), and the same bytes: the parts are never copied. A fused kernel reads a part through a
// slice view (FusedPointwiseParams::slices: its address moves to the part's start, its strides
// stay the merged tensor's), on the last dim, or on the heads dim of the merged tensor's rows of
// heads when the part was read through a reshape into heads. The kernel's source does not
// change: the slice is in the launch's address and strides only.
//
// The pass runs after fuse_pointwise, so that it knows exactly who reads each product: a
// sibling is taken only when every reader of its output is a FusedPointwise layer (directly, or
// through one reshape into heads that only FusedPointwise layers read). A part read by anything
// else (attention's v operand, another product, a pointwise layer left alone) would be a copy,
// and the merge would cost bytes.
//
// Siblings must agree on what one product computes for all of them: the transposes, the
// weight's dtype and K, the epilogue's scale and activation, the output dtype, and no residual
// input. Biases go side by side (zeros for a sibling without one). Each part's width must be a
// multiple of kPartAlign elements (the fused kernels' vectors stay aligned) and of every head
// size a sibling is read as (each part read as heads starts on a head).
//
// Level >= 2, only when fuse_pointwise ran. EMBER_MERGE_SIBLING_PRODUCTS=0 turns it off.
#include <algorithm>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "backends/semantics/fused_pointwise.h"
#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// A part's width (and so its offset in the merged output) must be a multiple of this many
/// elements: 16 bytes of f16/bf16, the fused kernels' vector.
constexpr int64_t kPartAlign = 8;

/// How the fused kernels read a product's output: directly (heads = 0) or through `reshape`
/// into heads of `heads` elements.
struct Reading {
  int64_t heads = 0;
  const Layer* reshape = nullptr;
};

bool only_fused_readers(const Network& net, const Tensor* t) {
  const std::vector<Layer*> readers = net.consumers(t);
  if (t->is_output() || readers.empty()) return false;
  for (const Layer* r : readers) {
    if (r->kind() != LayerKind::kFusedPointwise) return false;
  }
  return true;
}

/// How `y` (a product's output [.., N]) is read, when only fused kernels read it, directly or
/// through one reshape into heads [.., N / e, e].
std::optional<Reading> reading_of(const Network& net, const Tensor* y) {
  if (only_fused_readers(net, y)) return Reading{};
  const std::vector<Layer*> readers = net.consumers(y);
  if (y->is_output() || readers.size() != 1 || !is_pure_reshape(readers[0])) return std::nullopt;
  const Shape& ys = y->shape();
  const Shape& rs = readers[0]->output()->shape();
  if (rs.size() != ys.size() + 1 || !rs.back().is_constant()) return std::nullopt;
  for (size_t d = 0; d + 1 < ys.size(); ++d) {
    if (!(rs[d] == ys[d])) return std::nullopt;
  }
  const int64_t e = rs.back().constant();
  if (e <= 0 || ys.back().constant() % e != 0 ||
      !only_fused_readers(net, readers[0]->output())) {
    return std::nullopt;
  }
  return Reading{e, readers[0]};
}

/// Whether `mm` can be merged with siblings: a MatrixMultiply with a constant rank-2 weight, a
/// constant bias or none, no residual, a known output width that is a multiple of kPartAlign,
/// read only by fused kernels (reading_of).
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
  return reading_of(net, mm->output()).has_value();
}

/// Whether `b` can share one product with `a` (both mergeable): the same input read the same
/// way, weights of one dtype and K, the same epilogue, outputs alike but for the last dim.
bool siblings(const Layer* a, const Layer* b) {
  const auto& pa = a->params_as<MatrixMultiplyParams>();
  const auto& pb = b->params_as<MatrixMultiplyParams>();
  const Weights* wa = constant_of(a->input(1));
  const Weights* wb = constant_of(b->input(1));
  const size_t k_axis = pa.transpose_b ? 1 : 0;  // [N, K] or [K, N]
  if (a->input(0) != b->input(0) || pa.transpose_a != pb.transpose_a ||
      pa.transpose_b != pb.transpose_b || !same_epilogue(pa.epilogue, pb.epilogue) ||
      wa->dtype() != wb->dtype() ||
      wa->dims()[k_axis] != wb->dims()[k_axis] || a->output()->dtype() != b->output()->dtype()) {
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

int64_t width_of(const Layer* mm) { return mm->output()->shape().back().constant(); }

/// One input of a fused layer to read from the merged product instead: `source`, sliced along
/// `dim` from `start` for `size` elements.
struct Redirect {
  size_t input = 0;
  Tensor* source = nullptr;
  int64_t dim = 0, start = 0, size = 0;
};

/// Adds the slice (dim, start, size) to a view that may already slice that dim (a model's own
/// chunk of the part): the two compose.
void add_slice(semantics::InputView& v, int64_t dim, int64_t start, int64_t size) {
  for (size_t t = 0; t + 2 < v.slice.size(); t += 3) {
    if (v.slice[t] == dim) {
      v.slice[t + 1] += start;
      return;
    }
  }
  v.slice.insert(v.slice.end(), {dim, start, size});
}

/// Replaces `group` (two or more siblings, in network order) by one product, and every fused
/// layer that read them by one that reads their parts of it.
void merge(Network& net, const std::vector<Layer*>& group) {
  const auto& p0 = group[0]->params_as<MatrixMultiplyParams>();
  std::string name = group[0]->name();
  for (size_t i = 1; i < group.size(); ++i) name += "+" + group[i]->name();
  std::vector<const Weights*> ws;
  for (const Layer* m : group) ws.push_back(constant_of(m->input(1)));
  Tensor* w = net.add_constant(concat_product_weights(ws, p0.transpose_b),
                               unique_layer_name(net, name + "/weight"))
                  ->output();
  std::vector<const Weights*> biases;
  std::vector<int64_t> widths;
  for (const Layer* m : group) {
    biases.push_back(constant_of(m->input(2)));
    widths.push_back(width_of(m));
  }
  Tensor* bias = concat_biases(net, biases, widths, name + "/bias");
  std::vector<Tensor*> inputs{group[0]->input(0), w};
  if (bias != nullptr) inputs.push_back(bias);
  Tensor* y = net.add_layer(p0, inputs, unique_layer_name(net, name))->output();

  // Per fused reader, in network order, the inputs it now reads from y.
  std::vector<Layer*> readers;
  std::map<const Layer*, std::vector<Redirect>> redirects;
  int64_t offset = 0;
  for (const Layer* m : group) {
    const Reading r = *reading_of(net, m->output());
    const int64_t n = width_of(m);
    const Tensor* read = r.reshape != nullptr ? r.reshape->output() : m->output();
    Tensor* source = r.heads > 0 ? rows_of_heads(net, y, r.heads) : y;
    const int64_t dim = static_cast<int64_t>(source->rank()) - (r.heads > 0 ? 2 : 1);
    const int64_t start = r.heads > 0 ? offset / r.heads : offset;
    const int64_t size = r.heads > 0 ? n / r.heads : n;
    for (Layer* f : net.consumers(read)) {
      if (redirects.count(f) == 0) readers.push_back(f);
      for (size_t k = 0; k < f->inputs().size(); ++k) {
        if (f->input(k) == read) redirects[f].push_back({k, source, dim, start, size});
      }
    }
    offset += n;
  }
  for (Layer* f : readers) {
    FusedPointwiseParams p = f->params_as<FusedPointwiseParams>();
    std::vector<semantics::InputView> views;
    semantics::fused_input_views(p, f->inputs().size(), views);  // infer() checked them
    std::vector<Tensor*> ins = f->inputs();
    for (const Redirect& r : redirects.at(f)) {
      ins[r.input] = r.source;
      add_slice(views[r.input], r.dim, r.start, r.size);
    }
    semantics::fused_set_views(p, views);
    Layer* g = net.add_layer(std::move(p), ins, unique_layer_name(net, f->name()));
    for (size_t o = 0; o < f->outputs().size(); ++o) {
      net.replace_all_uses(f->output(o), g->output(o));
    }
    net.remove_layer(f);  // now, so that later groups see only live readers
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
      // rest[0] and its siblings; a part read as heads must start on a head, so every width
      // must be a multiple of every head size in the group (their lcm). When rest[0]'s is not,
      // it stays alone and the others try again without it; otherwise those whose width is
      // not wait for another group.
      std::vector<Layer*> group, others;
      for (size_t i = 1; i < rest.size(); ++i) {
        (siblings(rest[0], rest[i]) ? group : others).push_back(rest[i]);
      }
      int64_t heads = std::max<int64_t>(1, reading_of(net, rest[0]->output())->heads);
      for (const Layer* m : group) {
        heads = std::lcm(heads, std::max<int64_t>(1, reading_of(net, m->output())->heads));
      }
      std::vector<Layer*> whole{rest[0]};
      for (Layer* m : group) {
        (width_of(rest[0]) % heads == 0 && width_of(m) % heads == 0 ? whole : others)
            .push_back(m);
      }
      if (whole.size() >= 2) {
        merge(net, whole);
        merged += static_cast<int>(whole.size());
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
    // Its parts are read in place by fused kernels only.
    s.log.push_back("merge_sibling_products: off (fuse_pointwise is off)");
    return;
  }
  const int n = merge_sibling_products(s.plan.network);
  s.log.push_back("merge_sibling_products: " + std::to_string(n) +
                  " products merged with siblings that read the same input");
}

}  // namespace ember::engine
