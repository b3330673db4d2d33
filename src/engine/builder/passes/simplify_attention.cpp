// simplify_attention: two rewrites of Attention layers.
//
// 1. Constant masks that say nothing or say "causal". Exported models often carry their mask as
//    a constant (torch.export materializes HF's causal mask for a static sequence length). A
//    mask that keeps every key is dropped; one that keeps exactly the keys j <= i (bool true /
//    float 0 there, bool false / float -inf elsewhere) becomes `causal`, which the kernels
//    evaluate without reading memory and which lets them skip key tiles past the diagonal.
//
// 2. Transposes. Attention models keep activations as [B, L, H, E] and transpose them to
//    [B, H, L, E] only for the attention itself:
//
//   q' = transpose(q, 1, 2)   k' = ...   v' = ...     (Shuffle {0, 2, 1, 3}, a copy each)
//   o  = Attention(q', k', v' [, mask])               (head-major)
//   o' = transpose(o, 1, 2)                           (a copy)
//   =>  o' = Attention(q, k, v [, mask], seq_major)   (reads and writes [B, L, H, E] in place)
//
//    The mask keeps its [B, H, L, S] logical order in both layouts. All four transposes must
//    be there: the layout flag covers the inputs and the output together.
//
// 3. Packed projections. When q, k and v of a seq-major layer are reshaped thirds (slices along
//    the last dim) of one [B, L, 3 * H * E] tensor, the layer reads them from it in place
//    (packed_heads = H) and the three slice copies disappear.
#include <cmath>
#include <vector>

#include "backends/cpu/kernels.h"
#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

const std::vector<int64_t> kSwapHeadsAndSeq = {0, 2, 1, 3};

/// The input of `t`'s producer when that producer is a pure transpose(1, 2) of a rank-4 tensor.
Tensor* untransposed(const Tensor* t) {
  const Layer* l = t->producer();
  if (l == nullptr || l->kind() != LayerKind::kShuffle) return nullptr;
  const auto& p = l->params_as<ShuffleParams>();
  const bool swap = p.first_transpose == kSwapHeadsAndSeq && !p.has_reshape &&
                    p.second_transpose.empty();
  return swap ? l->input(0) : nullptr;
}

/// What a constant mask says, judged over all its elements.
enum class MaskMeaning { kOther, kKeepAll, kCausal };

/// `scores` is the layer's [B, H, L, S]. A mask whose dims are not provably 1 or the scores'
/// (a static mask on symbolic lengths) is kOther: dropping it would drop its run-time check.
MaskMeaning mask_meaning(const Tensor* mask, const Shape& scores) {
  const Layer* l = mask->producer();
  if (l == nullptr || l->kind() != LayerKind::kConstant) return MaskMeaning::kOther;
  const Weights& w = l->params_as<ConstantParams>().weights;
  const auto& d = w.dims();
  if (d.size() > 4) return MaskMeaning::kOther;
  for (size_t i = 0; i < d.size(); ++i) {
    const DimExpr& want = scores[4 - d.size() + i];
    if (d[i] != 1 && !(want.is_constant() && want.constant() == d[i])) return MaskMeaning::kOther;
  }
  const bool is_bool = w.dtype() == DataType::kBool;
  // The mask's own query/key dims (1 when broadcast); causal needs both at full size.
  const int64_t rows = d.size() >= 2 ? d[d.size() - 2] : 1;
  const int64_t cols = d.empty() ? 1 : d.back();
  const bool full = d.size() >= 2 && scores[2].is_constant() && scores[3].is_constant() &&
                    rows == scores[2].constant() && cols == scores[3].constant() && rows > 1;
  bool keep_all = true, causal = full;
  for (int64_t n = 0; n < w.numel() && (keep_all || causal); ++n) {
    const float v = cpu::load_float(w.dtype(), w.data(), n);
    const bool keep = is_bool ? v != 0.0f : v == 0.0f;
    const bool drop = is_bool ? v == 0.0f : std::isinf(v) && v < 0.0f;
    if (!keep && !drop) return MaskMeaning::kOther;  // a real additive bias
    keep_all = keep_all && keep;
    if (causal) {
      const int64_t i = (n / cols) % rows, j = n % cols;
      causal = keep == (j <= i);
    }
  }
  if (keep_all) return MaskMeaning::kKeepAll;
  return causal ? MaskMeaning::kCausal : MaskMeaning::kOther;
}

/// Rewrite 1 on every Attention layer; returns how many masks were dropped (`as_causal` of them
/// became the causal flag).
int drop_constant_masks(Network& net, int& as_causal) {
  int dropped = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention || l->input(3) == nullptr) continue;
    AttentionParams p = l->params_as<AttentionParams>();
    const Shape& qs = l->input(0)->shape();
    const Shape& ks = l->input(1)->shape();
    const bool sm = p.seq_major || p.packed_heads > 0;
    const Shape scores = {qs[0], p.packed_heads > 0 ? DimExpr(p.packed_heads) : qs[sm ? 2 : 1],
                          qs[sm ? 1 : 2], ks[sm ? 1 : 2]};
    const MaskMeaning m = mask_meaning(l->input(3), scores);
    if (m == MaskMeaning::kOther) continue;
    if (m == MaskMeaning::kCausal) {
      p.causal = true;
      ++as_causal;
    }
    Layer* plain = net.add_layer(p, {l->input(0), l->input(1), l->input(2)}, l->name() + "+mask");
    net.replace_all_uses(l->output(), plain->output());
    ++dropped;
  }
  return dropped;
}

/// When `t` is a reshape to [B, L, H, E] of slice `third` (of three equal ones along the last
/// dim) of a rank-3 [B, L, 3 * H * E] tensor, that tensor; nullptr otherwise.
Tensor* packed_source(const Tensor* t, int third) {
  const Layer* r = t->producer();
  if (r == nullptr || r->kind() != LayerKind::kShuffle || t->rank() != 4) return nullptr;
  const auto& rp = r->params_as<ShuffleParams>();
  if (!rp.has_reshape || !rp.first_transpose.empty() || !rp.second_transpose.empty()) {
    return nullptr;
  }
  const Layer* sl = r->input(0)->producer();
  if (sl == nullptr || sl->kind() != LayerKind::kSlice) return nullptr;
  Tensor* x = sl->input(0);
  const auto& sp = sl->params_as<SliceParams>();
  const Shape& xs = x->shape();
  const Shape& ts = t->shape();
  if (xs.size() != 3 || !xs[2].is_constant() || !ts[2].is_constant() || !ts[3].is_constant()) {
    return nullptr;
  }
  const int64_t width = ts[2].constant() * ts[3].constant();  // H * E
  const bool unit = sp.stride == std::vector<int64_t>{1, 1, 1};
  const bool starts = sp.start.size() == 3 && sp.start[0] == DimExpr(0) &&
                      sp.start[1] == DimExpr(0) && sp.start[2] == DimExpr(third * width);
  const bool sizes = sp.size.size() == 3 && sp.size[0] == xs[0] && sp.size[1] == xs[1] &&
                     sp.size[2] == DimExpr(width);
  const bool rows = ts[0] == xs[0] && ts[1] == xs[1] && xs[2].constant() == 3 * width;
  return unit && starts && sizes && rows ? x : nullptr;
}

/// Rewrite 3: a seq-major Attention whose q, k and v are the three thirds of one fused QKV
/// projection X [B, L, 3 * H * E] (slice + reshape each, what GPT-2's split does) reads them
/// from X in place (packed_heads = H), so the three slice copies disappear.
int read_packed_qkv(Network& net) {
  int packed = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention) continue;
    AttentionParams p = l->params_as<AttentionParams>();
    if (!p.seq_major || p.packed_heads > 0) continue;
    Tensor* x = packed_source(l->input(0), 0);
    if (x == nullptr || packed_source(l->input(1), 1) != x || packed_source(l->input(2), 2) != x) {
      continue;
    }
    p.packed_heads = l->input(0)->shape()[2].constant();
    std::vector<Tensor*> inputs = {x, x, x};
    if (l->input(3) != nullptr) inputs.push_back(l->input(3));
    Layer* fused = net.add_layer(p, inputs, l->name() + "+qkv");
    net.replace_all_uses(l->output(), fused->output());
    ++packed;
  }
  return packed;
}

}  // namespace

void pass_simplify_attention(BuildState& s) {
  Network& net = s.plan.network;
  int as_causal = 0;
  // Each rewrite leaves the layer it replaced unread; removing those between the steps keeps
  // the next step from rewriting (and counting) them again.
  const int dropped = drop_constant_masks(net, as_causal);
  int removed = dropped > 0 ? remove_unreachable_layers(net) : 0;
  int folded = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention || l->params_as<AttentionParams>().seq_major) continue;
    Layer* after = sole_consumer(net, l->output());
    if (after == nullptr || after->kind() != LayerKind::kShuffle ||
        untransposed(after->output()) != l->output()) {
      continue;
    }
    std::vector<Tensor*> inputs = l->inputs();
    bool all = true;
    for (size_t i = 0; i < 3 && all; ++i) {
      inputs[i] = untransposed(inputs[i]);
      all = inputs[i] != nullptr;
    }
    if (!all) continue;
    AttentionParams p = l->params_as<AttentionParams>();
    p.seq_major = true;
    Layer* fused = net.add_layer(p, inputs, l->name() + "+" + after->name());
    net.replace_all_uses(after->output(), fused->output());
    ++folded;
  }
  removed += folded > 0 ? remove_unreachable_layers(net) : 0;
  const int packed = read_packed_qkv(net);
  removed += packed > 0 ? remove_unreachable_layers(net) : 0;
  s.log.push_back("simplify_attention: " + std::to_string(dropped) + " constant masks dropped (" +
                  std::to_string(as_causal) + " as causal), " + std::to_string(folded) +
                  " attention layers read and write [B, L, H, E] in place, " +
                  std::to_string(packed) + " read q, k and v from one packed projection (" +
                  std::to_string(removed) + " layers removed)");
}

}  // namespace ember::engine
