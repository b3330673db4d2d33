// simplify_attention: five rewrites of Attention layers.
//
// 1. Constant masks that say nothing or say "causal". Exported models often carry their mask as
//    a constant (torch.export materializes HF's causal mask for a static sequence length). A
//    mask that keeps every key is dropped; one that keeps exactly the keys j <= i (bool true /
//    float 0 there, bool false / float -inf or the mask type's lowest finite value elsewhere)
//    becomes `causal`, which the kernels evaluate without reading memory and which lets them
//    skip key tiles past the diagonal. The lowest finite value is what HF's eager attention
//    writes (torch.finfo(dtype).min); it is exact to treat it as -inf for a causal pattern:
//    every row keeps its diagonal key, so exp(score + lowest - row max) underflows to 0 as
//    exp(-inf) does.
//
// 2. Transposes. Attention models keep activations as [B, L, H, E] and transpose them to
//    [B, H, L, E] only for the attention itself:
//
//   q' = transpose(q, 1, 2)   k' = ...   v' = ...     (Shuffle {0, 2, 1, 3}, a copy each)
//   o  = Attention(q', k', v' [, mask])               (head-major)
//   o' = transpose(o, 1, 2)                           (a copy)
//   =>  o' = Attention(q, k, v [, mask], seq_major)   (reads and writes [B, L, H, E] in place)
//
//    The mask keeps its [B, H, L, S] logical order in both layouts. With all four transposes
//    the layer gets the one seq_major flag (which rewrite 3 needs); with some of them, the
//    operands they touch are marked in seq_major_operands. That is the decoder case: HF's
//    Llama/Qwen2 apply RoPE to q and k after their transposes, so only v's and the output's
//    transposes are plain copies, and those two are dropped.
//
// 3. Packed projections. When q, k and v of a seq-major layer are reshaped thirds (slices along
//    the last dim) of one [B, L, 3 * H * E] tensor, the layer reads them from it in place
//    (packed_heads = H) and the three slice copies disappear. When they come from three
//    projections of one input instead (three MatrixMultiply layers with constant weights and the
//    same settings), those merge first into one product with the weights side by side: one
//    larger GEMM instead of three, and its output is read in place. An INT8/FP8 model's three
//    QuantizedMatrixMultiply projections merge the same way when their scales allow one
//    product (int8: per-channel weight scales side by side; FP8: one equal per-tensor scale).
//
// 4. Repeated key/value heads. HF's grouped-query models (Llama, Mistral, Qwen2) copy each key
//    and value head n_rep times before SDPA (repeat_kv; torch.repeat_interleave(x, n_rep, dim=1)
//    exports to the same three ops):
//
//   x5 = reshape(k, [B, Hkv, 1, S, E])                        (unsqueeze(2))
//   xe = Select(all true, x5, x5)  [B, Hkv, n_rep, S, E]      (expand, a copy)
//   k' = reshape(xe, [B, Hkv * n_rep, S, E])                  (head h = kv head h / n_rep)
//   o  = Attention(q, k', v' [, mask])
//   =>  o = Attention(q, k, v [, mask])                       (g = h / (H / Hkv): the same)
//
//    The element order is what makes it exact: the repeat dim must sit right after the Hkv dim,
//    so that the row-major merge puts kv head g's copies at heads g * n_rep .. g * n_rep + n_rep
//    - 1; any other order (torch's repeat/tile: head h reads kv head h % Hkv) stays as written.
//    Batch, sequence and feature dims are compared as DimExprs (symbolic ones included); only
//    the head counts must be constants, as the layer's grouped-query attention needs. Key and
//    value are rewritten together or not at all (the layer needs their head counts equal). It
//    runs before rewrite 2, so that a model whose q is a plain transpose can still turn
//    seq-major, and again after it, for a seq-major layer that reads repeats made on the
//    [B, S, Hkv, E] tensor (the same chain with the head dim at 2). A packed layer has no
//    separate k and v to rewrite. An expand that other layers also read stays for them.
//
// 5. Strided views (last, constant shapes only). What is still a chain of transposes, slices
//    and reshapes between a tensor and an operand (or between the output and the tensor the
//    next real layer reads) becomes the operand's view of that tensor: an element offset and
//    batch, head and sequence strides (AttentionParams::views), which both back ends' kernels
//    read through attention_geometry as they read the layouts above. Transposes of rows around
//    a product that treats rows on their own (the projections) move across it first, where the
//    views can take them. torch.nn.MultiheadAttention is the case (read_strided_views below:
//    ten copies a layer, none left); the rewrites above keep symbolic shapes.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "backends/attention_geometry.h"
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
  const Weights* constant = constant_of(mask);
  if (constant == nullptr) return MaskMeaning::kOther;
  const Weights& w = *constant;
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
  // The mask type's lowest finite value (torch.finfo(dtype).min), which HF writes for "drop".
  const float lowest = w.dtype() == DataType::kF16    ? -65504.0f
                       : w.dtype() == DataType::kBF16 ? -3.38953139e38f
                                                      : std::numeric_limits<float>::lowest();
  for (int64_t n = 0; n < w.numel() && (keep_all || causal); ++n) {
    const float v = cpu::load_float(w.dtype(), w.data(), n);
    const bool keep = is_bool ? v != 0.0f : v == 0.0f;
    const bool drop = is_bool ? v == 0.0f : (std::isinf(v) && v < 0.0f) || v <= lowest;
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
    const bool qsm = p.seq_major_at(AttentionParams::kQ);
    const bool ksm = p.seq_major_at(AttentionParams::kK);
    const Shape scores = {qs[0], p.packed_heads > 0 ? DimExpr(p.packed_heads) : qs[qsm ? 2 : 1],
                          qs[qsm ? 1 : 2], ks[ksm ? 1 : 2]};
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
  if (!is_pure_reshape(r) || t->rank() != 4) return nullptr;
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

/// The MatrixMultiply behind a reshape-only Shuffle that produces `t`, when the product feeds
/// only that reshape and has a constant rank-2 weight, a constant bias or none, no residual.
Layer* projection_of(const Network& net, const Tensor* t) {
  const Layer* r = t->producer();
  if (!is_pure_reshape(r)) return nullptr;
  Layer* mm = r->input(0)->producer();
  if (mm == nullptr || mm->kind() != LayerKind::kMatrixMultiply || mm->output()->rank() != 3 ||
      sole_consumer(net, mm->output()) != r || mm->input(3) != nullptr) {
    return nullptr;
  }
  const Weights* w = constant_of(mm->input(1));
  const bool bias_ok = mm->input(2) == nullptr || constant_of(mm->input(2)) != nullptr;
  return w != nullptr && w->dims().size() == 2 && bias_ok ? mm : nullptr;
}

/// The lengths of rank-1 biases.
std::vector<int64_t> widths_of(const std::vector<const Weights*>& bs) {
  std::vector<int64_t> n;
  for (const Weights* b : bs) n.push_back(b->dims()[0]);
  return n;
}

/// The three projections `of` finds behind attn's q, k and v, when all three are there and
/// distinct.
bool three_projections(const Network& net, const Layer* attn,
                       Layer* (*of)(const Network&, const Tensor*), Layer* (&mm)[3]) {
  for (size_t t = 0; t < 3; ++t) {
    mm[t] = of(net, attn->input(t));
    if (mm[t] == nullptr) return false;
  }
  return mm[0] != mm[1] && mm[1] != mm[2] && mm[0] != mm[2];
}

/// Replaces each projection's output [B, L, N] by its third of the merged product y
/// [B, L, 3 N], as a slice (which rewrite 3 then reads in place).
void read_back_thirds(Network& net, Tensor* y, Layer* const (&mm)[3]) {
  const Shape& part = mm[0]->output()->shape();
  const int64_t n = part[2].constant();
  for (int64_t t = 0; t < 3; ++t) {
    Tensor* third = net.add_slice(y, {DimExpr(0), DimExpr(0), DimExpr(t * n)}, part, {1, 1, 1},
                                  mm[t]->name() + "/third")
                        ->output();
    net.replace_all_uses(mm[t]->output(), third);
  }
}

/// Rewrite 3a: q, k and v projected from one input by three MatrixMultiply layers with the same
/// settings (BERT's query/key/value linears) become one product with the weights and biases
/// side by side, read back as three slices (which rewrite 3 then reads in place). Returns
/// whether it merged.
bool merge_float_projections(Network& net, Layer* attn) {
  Layer* mm[3];
  if (!three_projections(net, attn, projection_of, mm)) return false;
  const auto& p0 = mm[0]->params_as<MatrixMultiplyParams>();
  std::vector<const Weights*> ws, bs;
  for (Layer* m : mm) {
    const auto& p = m->params_as<MatrixMultiplyParams>();
    if (m->input(0) != mm[0]->input(0) || p.transpose_a != p0.transpose_a ||
        p.transpose_b != p0.transpose_b || !same_epilogue(p.epilogue, p0.epilogue) ||
        (m->input(2) == nullptr) != (mm[0]->input(2) == nullptr) ||
        !(m->output()->shape() == mm[0]->output()->shape())) {
      return false;
    }
    ws.push_back(constant_of(m->input(1)));
    if (m->input(2) != nullptr) bs.push_back(constant_of(m->input(2)));
  }
  for (const Weights* w : ws) {
    if (w->dtype() != ws[0]->dtype() || w->dims() != ws[0]->dims()) return false;
  }
  const std::string name = mm[0]->name() + "+" + mm[1]->name() + "+" + mm[2]->name();
  Tensor* w = net.add_constant(concat_product_weights(ws, p0.transpose_b), name + "/weight")->output();
  Tensor* bias = concat_biases(net, bs, widths_of(bs), name + "/bias");
  read_back_thirds(net, net.add_layer(p0, {mm[0]->input(0), w, bias}, name)->output(), mm);
  return true;
}


/// The QuantizedMatrixMultiply behind a reshape-only Shuffle that produces `t`, when the product
/// feeds only that reshape, has a constant rank-2 weight and weight scale, a constant bias or
/// none, no residual, and does not requantize (fuse_quantized's products of an INT8/FP8 model).
Layer* quantized_projection_of(const Network& net, const Tensor* t) {
  const Layer* r = t->producer();
  if (!is_pure_reshape(r)) return nullptr;
  Layer* mm = r->input(0)->producer();
  if (mm == nullptr || mm->kind() != LayerKind::kQuantizedMatrixMultiply ||
      mm->output()->rank() != 3 || sole_consumer(net, mm->output()) != r ||
      mm->params_as<QuantizedMatrixMultiplyParams>().requantize.enabled ||
      mm->input(7) != nullptr) {
    return nullptr;
  }
  const Weights* w = constant_of(mm->input(1));
  const bool bias_ok = mm->input(4) == nullptr || constant_of(mm->input(4)) != nullptr;
  return w != nullptr && w->dims().size() == 2 && constant_of(mm->input(3)) != nullptr && bias_ok
             ? mm
             : nullptr;
}

/// The same tensor, or two constants with the same dtype, dims and bytes (or both absent).
bool same_value(const Tensor* a, const Tensor* b) {
  if (a == b) return true;
  const Weights* wa = constant_of(a);
  const Weights* wb = constant_of(b);
  return wa != nullptr && wb != nullptr && wa->dtype() == wb->dtype() &&
         wa->dims() == wb->dims() && std::memcmp(wa->data(), wb->data(), wa->nbytes()) == 0;
}

/// Rewrite 3a for an INT8/FP8 model: three QuantizedMatrixMultiply projections of one quantized
/// activation (same a_scale and zero point, same settings) merge like the float ones. The weight
/// scales must allow one product: int8 weights take per-channel scales, so theirs are laid side
/// by side (a per-tensor one repeated per channel: exact); FP8 products take one per-tensor
/// scale, so they merge only when the three are equal. Returns whether it merged.
bool merge_quantized_projections(Network& net, Layer* attn) {
  Layer* mm[3];
  if (!three_projections(net, attn, quantized_projection_of, mm)) return false;
  const auto& p0 = mm[0]->params_as<QuantizedMatrixMultiplyParams>();
  std::vector<const Weights*> ws, scales, bs;
  for (Layer* m : mm) {
    const auto& p = m->params_as<QuantizedMatrixMultiplyParams>();
    if (m->input(0) != mm[0]->input(0) || p.out != p0.out ||
        !same_epilogue(p.epilogue, p0.epilogue) || !same_value(m->input(2), mm[0]->input(2)) ||
        !same_value(m->input(6), mm[0]->input(6)) ||
        (m->input(4) == nullptr) != (mm[0]->input(4) == nullptr) ||
        !(m->output()->shape() == mm[0]->output()->shape())) {
      return false;
    }
    ws.push_back(constant_of(m->input(1)));
    scales.push_back(constant_of(m->input(3)));
    if (m->input(4) != nullptr) bs.push_back(constant_of(m->input(4)));
  }
  for (const Weights* w : ws) {
    if (w->dtype() != ws[0]->dtype() || w->dims() != ws[0]->dims()) return false;
  }
  const int64_t n = ws[0]->dims()[0];  // [N, K]
  const std::string name = mm[0]->name() + "+" + mm[1]->name() + "+" + mm[2]->name();
  Tensor* scale = nullptr;
  const Tensor* s0 = mm[0]->input(3);
  if (same_value(s0, mm[1]->input(3)) && same_value(s0, mm[2]->input(3)) &&
      scales[0]->numel() == 1) {
    scale = mm[0]->input(3);
  } else {
    if (ws[0]->dtype() != DataType::kI8) return false;  // FP8: per-tensor scales only
    std::vector<float> per_channel;
    for (const Weights* sc : scales) {
      if (sc->dtype() != DataType::kF32 || (sc->numel() != 1 && sc->numel() != n)) return false;
      for (int64_t j = 0; j < n; ++j) {
        per_channel.push_back(
            cpu::load_float(DataType::kF32, sc->data(), sc->numel() == 1 ? 0 : j));
      }
    }
    scale = net.add_constant(Weights::from_vector(DataType::kF32, {3 * n}, per_channel),
                             unique_layer_name(net, name + "/weight_scale"))
                ->output();
  }
  Tensor* w = net.add_constant(concat_product_weights(ws, /*transpose_b=*/true),
                               unique_layer_name(net, name + "/weight"))
                  ->output();
  Tensor* bias = concat_biases(net, bs, widths_of(bs), name + "/bias");
  std::vector<Tensor*> inputs{mm[0]->input(0), w, mm[0]->input(2), scale, bias, nullptr,
                              mm[0]->input(6)};
  while (inputs.back() == nullptr) inputs.pop_back();  // optional inputs: absent at the end
  read_back_thirds(net, net.add_layer(p0, inputs, unique_layer_name(net, name))->output(), mm);
  return true;
}

/// Rewrite 3a, float or quantized projections.
bool merge_projections(Network& net, Layer* attn) {
  return merge_float_projections(net, attn) || merge_quantized_projections(net, attn);
}

/// Rewrite 3: a seq-major Attention whose q, k and v are the three thirds of one fused QKV
/// projection X [B, L, 3 * H * E] (slice + reshape each, what GPT-2's split does) reads them
/// from X in place (packed_heads = H), so the three slice copies disappear.
int read_packed_qkv(Network& net, int& merged) {
  int packed = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention) continue;
    AttentionParams p = l->params_as<AttentionParams>();
    if (!p.seq_major || p.packed_heads > 0) continue;
    const auto source = [l]() -> Tensor* {
      Tensor* x = packed_source(l->input(0), 0);
      return x != nullptr && packed_source(l->input(1), 1) == x &&
                     packed_source(l->input(2), 2) == x
                 ? x
                 : nullptr;
    };
    Tensor* x = source();
    if (x == nullptr && merge_projections(net, l)) {
      ++merged;
      x = source();
    }
    if (x == nullptr) continue;
    p.packed_heads = l->input(0)->shape()[2].constant();
    std::vector<Tensor*> inputs = {x, x, x};
    if (l->input(3) != nullptr) inputs.push_back(l->input(3));
    Layer* fused = net.add_layer(p, inputs, l->name() + "+qkv");
    net.replace_all_uses(l->output(), fused->output());
    ++packed;
  }
  return packed;
}

/// Whether every element of `t` is true: a bool Fill of a nonzero value, or a bool Constant
/// without a false element (fold_constants has folded the Fill when its shape is static).
bool all_true(const Tensor* t) {
  if (t->dtype() != DataType::kBool || t->producer() == nullptr) return false;
  const Layer* l = t->producer();
  if (l->kind() == LayerKind::kFill) {
    const auto& p = l->params_as<FillParams>();
    return p.op == FillOp::kConstant && p.value != 0.0;
  }
  const Weights* w = constant_of(t);
  if (w == nullptr) return false;
  for (int64_t n = 0; n < w->numel(); ++n) {
    if (cpu::load_float(w->dtype(), w->data(), n) == 0.0f) return false;
  }
  return true;
}

/// The kv tensor behind one repeat_kv chain (rewrite 4).
struct Unrepeated {
  Tensor* expanded_input = nullptr;  ///< The Select's broadcast input [.., Hkv, 1, ..].
  Shape shape;                       ///< The un-repeated tensor's shape [.., Hkv, ..].
  int64_t kv_heads = 0;
};

/// When rank-4 `t` (an Attention key or value whose head dim is `hd`: 1 head-major, 2
/// seq-major) is reshape(Select(all true, x5, _)) with the Select's output `t`'s dims but the
/// head dim split into [Hkv, n_rep] (in that order, both constants, n_rep >= 2) and x5 that
/// with n_rep = 1, then head h of `t` is head h / n_rep of x5 without its unit dim.
std::optional<Unrepeated> repeated_heads(const Tensor* t, int hd) {
  const Layer* merge = t->producer();
  if (!is_pure_reshape(merge) || t->rank() != 4) return std::nullopt;
  const Tensor* xe = merge->input(0);
  const Layer* sel = xe->producer();
  if (sel == nullptr || sel->kind() != LayerKind::kSelect || xe->rank() != 5 ||
      !all_true(sel->input(0))) {
    return std::nullopt;
  }
  Tensor* x5 = sel->input(1);
  const Shape& ts = t->shape();
  const Shape& es = xe->shape();
  const Shape& xs = x5->shape();
  const DimExpr& hkv = es[hd];
  const DimExpr& rep = es[hd + 1];
  if (xs.size() != 5 || !hkv.is_constant() || !rep.is_constant() || !ts[hd].is_constant() ||
      rep.constant() < 2 || ts[hd].constant() != hkv.constant() * rep.constant() ||
      xs[hd + 1] != DimExpr(1)) {
    return std::nullopt;
  }
  Unrepeated u{x5, ts, hkv.constant()};
  u.shape[hd] = hkv;
  for (int i = 0, j = 0; i < 5; ++i) {
    if (i == hd + 1) continue;  // the repeat dim: n_rep in the expand, 1 in its input
    if (es[i] != xs[i] || (i != hd && es[i] != ts[j])) return std::nullopt;
    ++j;
  }
  return u;
}

/// Rewrite 4 on every unpacked Attention layer whose key and value both come from repeat_kv
/// chains with the same Hkv: the layer reads the un-repeated [.., Hkv, ..] tensors (the input of
/// the unsqueeze reshape when there is one of the right shape, else a new reshape, which shares
/// its input's memory). Returns how many layers changed.
int read_unrepeated_kv(Network& net) {
  int count = 0;
  std::map<const Tensor*, Tensor*> made;  // a Select's input -> its un-repeated view
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention) continue;
    AttentionParams p = l->params_as<AttentionParams>();
    if (p.packed_heads > 0) continue;
    const auto k = repeated_heads(l->input(1), p.seq_major_at(AttentionParams::kK) ? 2 : 1);
    const auto v = repeated_heads(l->input(2), p.seq_major_at(AttentionParams::kV) ? 2 : 1);
    if (!k || !v || k->kv_heads != v->kv_heads) continue;
    std::vector<Tensor*> inputs = l->inputs();
    for (const Unrepeated* u : {&*k, &*v}) {
      Tensor*& view = made[u->expanded_input];
      if (view == nullptr) {
        const Layer* unsqueeze = u->expanded_input->producer();
        if (is_pure_reshape(unsqueeze) && unsqueeze->input(0)->shape() == u->shape) {
          view = unsqueeze->input(0);
        } else {
          const std::string name =
              unique_layer_name(net, l->name() + (u == &*k ? "/k_heads" : "/v_heads"));
          view = net.add_reshape(u->expanded_input, u->shape, name)->output();
        }
      }
      inputs[u == &*k ? 1 : 2] = view;
    }
    Layer* fused = net.add_layer(p, inputs, l->name() + "+kv");
    net.replace_all_uses(l->output(), fused->output());
    ++count;
  }
  return count;
}

// ---- rewrite 5: strided views

/// One factor of a view's dim: `size` indices `stride` elements apart.
struct Atom {
  int64_t size, stride;
};

/// A strided view of a tensor's row-major elements: per dim, its factors outermost first (a
/// dim of size 1 has none), and the element offset of index 0. Keeping factors apart lets a
/// view go through what no single stride per dim can: torch.nn.MultiheadAttention merges batch
/// and heads ([L, B, E] -> [L, B H, hd]) of a tensor whose batch and features are not
/// adjacent, then splits them again ([B H, L, hd] -> [B, H, L, hd]).
struct View {
  std::vector<std::vector<Atom>> dims;
  int64_t offset = 0;
};

std::optional<std::vector<int64_t>> constant_dims(const Tensor* t) {
  std::vector<int64_t> d;
  for (const DimExpr& x : t->shape()) {
    if (!x.is_constant() || x.constant() <= 0) return std::nullopt;
    d.push_back(x.constant());
  }
  return d;
}

View contiguous(const std::vector<int64_t>& dims) {
  View v;
  v.dims.resize(dims.size());
  int64_t stride = 1;
  for (size_t i = dims.size(); i-- > 0;) {
    if (dims[i] > 1) v.dims[i] = {Atom{dims[i], stride}};
    stride *= dims[i];
  }
  return v;
}

int64_t dim_size(const std::vector<Atom>& d) {
  int64_t n = 1;
  for (const Atom& a : d) n *= a.size;
  return n;
}

/// A dim's factors as one stride, when they are adjacent (each stride the next one's times its
/// size); 0 for a dim of size 1.
std::optional<int64_t> single_stride(const std::vector<Atom>& d) {
  if (d.empty()) return 0;
  for (size_t i = 0; i + 1 < d.size(); ++i) {
    if (d[i].stride != d[i + 1].stride * d[i + 1].size) return std::nullopt;
  }
  return d.back().stride;
}

/// Output dim i is input dim perm[i] (a Shuffle's transpose; empty: none).
View permuted(const View& v, const std::vector<int64_t>& perm) {
  if (perm.empty()) return v;
  View out{{}, v.offset};
  for (int64_t p : perm) out.dims.push_back(v.dims[static_cast<size_t>(p)]);
  return out;
}

std::vector<int64_t> inverse(const std::vector<int64_t>& perm) {
  std::vector<int64_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
  return inv;
}

/// `v` reshaped to `dims` over the same elements: the factors, outermost first, are dealt to
/// the new dims in order, a factor split in two where a dim ends inside it (size a b at stride
/// s: a at stride b s, then b at stride s). Fails when a dim ends where no factor splits evenly.
std::optional<View> reshaped(const View& v, const std::vector<int64_t>& dims) {
  std::vector<Atom> atoms;
  for (const auto& d : v.dims) atoms.insert(atoms.end(), d.begin(), d.end());
  View out{std::vector<std::vector<Atom>>(dims.size()), v.offset};
  size_t next = 0;
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t left = dims[i];
    while (left > 1) {
      if (next == atoms.size()) return std::nullopt;
      Atom& a = atoms[next];
      if (a.size <= left) {
        if (left % a.size != 0) return std::nullopt;
        out.dims[i].push_back(a);
        left /= a.size;
        ++next;
      } else {
        if (a.size % left != 0) return std::nullopt;
        out.dims[i].push_back(Atom{left, a.stride * (a.size / left)});
        a.size /= left;  // the inner part stays for the next dim
        left = 1;
      }
    }
  }
  if (next != atoms.size()) return std::nullopt;
  return out;
}

/// The dims `dims` had before permutation `perm` made them (out dim i = in dim perm[i]).
std::vector<int64_t> unpermuted(const std::vector<int64_t>& dims, const std::vector<int64_t>& perm) {
  if (perm.empty()) return dims;
  std::vector<int64_t> in(dims.size());
  for (size_t i = 0; i < perm.size(); ++i) in[static_cast<size_t>(perm[i])] = dims[i];
  return in;
}

/// The view of the input that a Shuffle, or a Slice with constant starts and positive steps,
/// makes of view `v` of its input: nullopt when its output is not such a view (a reshape that
/// would move elements, a partial slice of a dim whose factors are not adjacent) or a shape is
/// not constant.
std::optional<View> through(const Layer* l, const View& v) {
  const std::optional<std::vector<int64_t>> out = constant_dims(l->output());
  if (!out) return std::nullopt;
  if (l->kind() == LayerKind::kSlice) {
    const auto& sp = l->params_as<SliceParams>();
    if (sp.start.size() != v.dims.size() || sp.stride.size() != v.dims.size() ||
        out->size() != v.dims.size()) {
      return std::nullopt;
    }
    View s = v;
    for (size_t d = 0; d < v.dims.size(); ++d) {
      if (!sp.start[d].is_constant() || sp.stride[d] <= 0) return std::nullopt;
      const int64_t start = sp.start[d].constant(), size = (*out)[d];
      if (start == 0 && sp.stride[d] == 1 && size == dim_size(v.dims[d])) continue;  // whole
      const std::optional<int64_t> stride = single_stride(v.dims[d]);
      if (!stride) return std::nullopt;
      s.offset += start * *stride;
      s.dims[d].clear();
      if (size > 1) s.dims[d].push_back(Atom{size, *stride * sp.stride[d]});
    }
    return s;
  }
  // The transposes are permutations of the right rank: the layer's shape inference checked.
  const auto& sp = l->params_as<ShuffleParams>();
  std::optional<View> s = permuted(v, sp.first_transpose);
  if (sp.has_reshape) s = reshaped(*s, unpermuted(*out, sp.second_transpose));
  if (s) s = permuted(*s, sp.second_transpose);
  if (!s || s->dims.size() != out->size()) return std::nullopt;
  for (size_t d = 0; d < out->size(); ++d) {
    if (dim_size(s->dims[d]) != (*out)[d]) return std::nullopt;
  }
  return s;
}

/// through() backwards: given `v`, the Shuffle's output as a view of some tensor's elements,
/// the Shuffle's input as a view of the same elements (nullopt when a reshape would move them).
std::optional<View> back_through(const Layer* l, const View& v) {
  const std::optional<std::vector<int64_t>> in = constant_dims(l->input(0));
  if (!in || l->kind() != LayerKind::kShuffle) return std::nullopt;
  const auto& sp = l->params_as<ShuffleParams>();  // permutations checked by its inference
  std::optional<View> s = sp.second_transpose.empty() ? v : permuted(v, inverse(sp.second_transpose));
  if (sp.has_reshape) {
    std::vector<int64_t> mid = *in;  // the dims after the first transpose
    if (!sp.first_transpose.empty()) {
      for (size_t i = 0; i < mid.size(); ++i) {
        mid[i] = (*in)[static_cast<size_t>(sp.first_transpose[i])];
      }
    }
    s = reshaped(*s, mid);
  }
  if (s && !sp.first_transpose.empty()) s = permuted(*s, inverse(sp.first_transpose));
  if (!s || s->dims.size() != in->size()) return std::nullopt;
  for (size_t d = 0; d < in->size(); ++d) {
    if (dim_size(s->dims[d]) != (*in)[d]) return std::nullopt;
  }
  return s;
}

bool is_view_layer(const Layer* l) {
  return l != nullptr && (l->kind() == LayerKind::kShuffle || l->kind() == LayerKind::kSlice);
}

/// Tensor `t` as a view of the tensor its chain of Shuffle and Slice producers starts from (or
/// the nearest one whose reshape would move elements); `copies` counts the layers of the chain
/// that are copies (all but pure reshapes). Returns t itself, contiguous, when there is none.
std::pair<Tensor*, View> view_source(Tensor* t, int& copies) {
  std::vector<const Layer*> chain;
  for (const Layer* l = t->producer(); is_view_layer(l) && constant_dims(l->input(0));
       l = l->input(0)->producer()) {
    chain.push_back(l);
  }
  Tensor* base = chain.empty() ? t : chain.back()->input(0);
  View v = contiguous(*constant_dims(base));
  copies = 0;
  for (size_t i = chain.size(); i-- > 0;) {
    std::optional<View> next = through(chain[i], v);
    if (next) {
      copies += is_pure_reshape(chain[i]) ? 0 : 1;
      v = *next;
    } else {  // this layer's output must stay as it is: start again from it
      base = chain[i]->output();
      v = contiguous(*constant_dims(base));
      copies = 0;
    }
  }
  return {base, v};
}

/// `o` as a view of the last tensor of `chain` (Shuffles, each reading the one before's output,
/// the first reading `o`), or of the last tensor of the longest prefix of it that is a view:
/// that tensor and the view, or `o` itself (contiguous) when no prefix is.
std::pair<Tensor*, View> sink_view(Tensor* o, std::vector<const Layer*> chain, int& copies) {
  while (!chain.empty()) {
    View v = contiguous(*constant_dims(chain.back()->output()));
    copies = 0;
    size_t failed = chain.size();
    for (size_t i = chain.size(); i-- > 0;) {
      std::optional<View> next = back_through(chain[i], v);
      if (!next) {
        failed = i;
        break;
      }
      copies += is_pure_reshape(chain[i]) ? 0 : 1;
      v = *next;
    }
    if (failed == chain.size()) return {chain.back()->output(), v};
    chain.resize(failed);  // only the layers before the one that is not a view
  }
  copies = 0;
  return {o, contiguous(*constant_dims(o))};
}

/// The chain of Shuffles below `t`, each the sole reader of the tensor before it.
std::vector<const Layer*> shuffles_below(const Network& net, const Tensor* t) {
  std::vector<const Layer*> chain;
  for (Layer* l = sole_consumer(net, t); l != nullptr && l->kind() == LayerKind::kShuffle &&
                                         constant_dims(l->output());
       l = sole_consumer(net, l->output())) {
    chain.push_back(l);
  }
  return chain;
}

/// A MatrixMultiply that treats every row of A on its own (A not transposed, B rank 2, no
/// residual): a transpose or reshape of A's leading dims commutes with it.
bool row_wise(const Layer* m) {
  if (m == nullptr || m->kind() != LayerKind::kMatrixMultiply) return false;
  const auto& p = m->params_as<MatrixMultiplyParams>();
  return !p.transpose_a && m->input(0)->rank() >= 2 && m->input(1)->rank() == 2 &&
         (m->inputs().size() < 4 || m->input(3) == nullptr);
}

/// A Shuffle that moves or regroups only the leading dims of rows: the last dim stays last,
/// with its size.
bool keeps_rows(const Layer* l) {
  if (l == nullptr || l->kind() != LayerKind::kShuffle) return false;
  const auto& p = l->params_as<ShuffleParams>();
  const auto last_stays = [](const std::vector<int64_t>& perm) {
    return perm.empty() || perm.back() == static_cast<int64_t>(perm.size()) - 1;
  };
  const Shape &in = l->input(0)->shape(), &out = l->output()->shape();
  return last_stays(p.first_transpose) && last_stays(p.second_transpose) && !in.empty() &&
         !out.empty() && in.back().is_constant() && in.back() == out.back();
}

/// `l`'s params with the row (the last dim) of its reshape, if any, set to `row`.
ShuffleParams with_row(const Layer* l, int64_t row) {
  ShuffleParams p = l->params_as<ShuffleParams>();
  if (p.has_reshape && !p.reshape.empty()) p.reshape.back() = DimExpr(row);
  return p;
}

/// Input side: when `base`, the tensor an operand is a view of, is the output of a row-wise
/// product whose A is a transpose of rows (torch.nn.MultiheadAttention's x.transpose(0, 1)
/// before its in-projection), the product reads x itself and the transpose moves after it,
/// where the operands' views take it. Returns false, changing nothing, unless all three
/// operands then view the new product's output.
bool hoist_input_transpose(Network& net, Layer* attn, const Tensor* base) {
  Layer* m = base->producer();
  if (!row_wise(m) || base->is_output()) return false;
  Layer* t = m->input(0)->producer();
  if (!keeps_rows(t) || t->params_as<ShuffleParams>().has_reshape ||
      sole_consumer(net, t->output()) != m) {
    return false;
  }
  std::vector<Tensor*> inputs = m->inputs();
  inputs[0] = t->input(0);
  Layer* moved = net.add_layer(m->params(), inputs, m->name() + "+rows");
  Layer* after = net.add_layer(t->params(), {moved->output()}, t->name() + "+after");
  net.replace_all_uses(m->output(), after->output());
  for (size_t i = 0; i < 3; ++i) {
    int copies = 0;
    if (view_source(attn->input(i), copies).first != moved->output()) {
      net.replace_all_uses(after->output(), m->output());  // as it was; the new layers go unread
      return false;
    }
  }
  return true;
}

/// Output side: when the tensor the output's views end in is the A of a row-wise product whose
/// output goes through Shuffles of rows (torch.nn.MultiheadAttention's out-projection, then
/// view(L, B, E).transpose(0, 1)), those Shuffles move before the product, where the output's
/// views take them. Returns the new sink, or `sink` unchanged.
std::pair<Tensor*, View> sink_through_product(Network& net, Tensor* o,
                                              std::vector<const Layer*> chain,
                                              std::pair<Tensor*, View> sink, int& copies) {
  Layer* m = sole_consumer(net, sink.first);
  if (!row_wise(m) || m->input(0) != sink.first || !sink.first->shape().back().is_constant()) {
    return sink;
  }
  std::vector<const Layer*> after;
  for (const Layer* l : shuffles_below(net, m->output())) {
    if (!keeps_rows(l)) break;
    after.push_back(l);
  }
  if (after.empty()) return sink;
  // The part of `chain` the views took (up to sink.first), then the same Shuffles on the rows
  // of the product's input.
  while (!chain.empty() && chain.back()->output() != sink.first) chain.pop_back();
  const int64_t row = sink.first->shape().back().constant();
  Tensor* x = sink.first;
  for (const Layer* l : after) {
    const Layer* moved = net.add_layer(with_row(l, row), {x}, l->name() + "+rows");
    chain.push_back(moved);
    x = moved->output();
  }
  int extended = 0;
  std::pair<Tensor*, View> longer = sink_view(o, chain, extended);
  if (longer.first != x) return sink;  // the new Shuffles go unread
  std::vector<Tensor*> inputs = m->inputs();
  inputs[0] = x;
  Layer* product = net.add_layer(m->params(), inputs, m->name() + "+rows");
  net.replace_all_uses(after.back()->output(), product->output());
  copies = extended;
  return longer;
}

/// Rewrite 5: an Attention layer whose operands come through transposes, slices and reshapes
/// of other tensors (or whose output goes through transposes and reshapes before anything
/// else reads it) reads and writes those tensors through strided views instead, when every
/// shape involved is constant and the copies it saves are more than pure reshapes.
/// torch.nn.MultiheadAttention (ViT, ...) is the case: with batch_first its input goes through
/// transpose(0, 1) before the in-projection [L, B, 3 E], which reaches SDPA as q, k, v =
/// proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2)[i], each
/// .view(L, B * H, hd).transpose(0, 1).view(B, H, L, hd); its output goes back through
/// permute(2, 0, 1, 3).view(L * B, E), the out-projection, view(L, B, E) and transpose(0, 1):
/// ten copies a layer, none left (the in-projection reads x [B, L, E] and the out-projection
/// reads [B, L, E], both in place).
int read_strided_views(Network& net) {
  int rewritten = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention) continue;
    const AttentionParams& cur = l->params_as<AttentionParams>();
    if (!cur.views.empty() || cur.packed_heads > 0) continue;
    std::vector<std::vector<int64_t>> dims;
    for (size_t i = 0; i < 3; ++i) {
      if (auto d = constant_dims(l->input(i))) dims.push_back(*d);
    }
    const std::optional<std::vector<int64_t>> out_dims = constant_dims(l->output());
    if (dims.size() != 3 || !out_dims) continue;
    const AttentionGeometry geo = attention_geometry(cur, dims[0], dims[1], dims[2], *out_dims,
                                                     nullptr);
    AttentionParams p = cur;
    p.seq_major = false;
    p.seq_major_operands = 0;
    p.views = {geo.B, geo.H, geo.Hkv, geo.L, geo.S, geo.E, geo.Ev};
    // First, a transpose before the projection the operands come from moves after it (once:
    // the same product feeds all three); then every operand is read from the layer afresh.
    for (size_t i = 0; i < 3; ++i) {
      int copies = 0;
      if (hoist_input_transpose(net, l, view_source(l->input(i), copies).first)) break;
    }
    std::vector<Tensor*> inputs = l->inputs();
    int saved = 0;
    const int64_t bits[] = {AttentionParams::kQ, AttentionParams::kK, AttentionParams::kV,
                            AttentionParams::kOut};
    std::pair<Tensor*, View> sink;
    for (size_t i = 0; i < 4; ++i) {
      int copies = 0;
      std::pair<Tensor*, View> src;
      if (i < 3) {
        src = view_source(inputs[i], copies);
      } else {
        const std::vector<const Layer*> chain = shuffles_below(net, l->output());
        src = sink_view(l->output(), chain, copies);
        src = sink_through_product(net, l->output(), chain, src, copies);
      }
      // The operand's logical [batch, heads, seq] dims among its tensor's four, each one
      // stride; features contiguous.
      const bool seq = cur.seq_major_at(bits[i]);
      const auto strides = [&](const View& w) -> std::optional<std::vector<int64_t>> {
        std::vector<int64_t> st;
        for (size_t d : {size_t{0}, size_t{seq ? 2u : 1u}, size_t{seq ? 1u : 2u}, size_t{3}}) {
          const std::optional<int64_t> x = single_stride(w.dims[d]);
          if (!x) return std::nullopt;
          st.push_back(*x);
        }
        if (!w.dims[3].empty() && st[3] != 1) return std::nullopt;
        return st;
      };
      std::optional<std::vector<int64_t>> st = strides(src.second);
      if (copies == 0 || !st) {
        src = {i < 3 ? inputs[i] : l->output(), contiguous(i < 3 ? dims[i] : *out_dims)};
        st = strides(src.second);
        copies = 0;
      }
      p.views.insert(p.views.end(), {src.second.offset, (*st)[0], (*st)[1], (*st)[2]});
      saved += copies;
      if (i < 3) {
        inputs[i] = src.first;
      } else {
        sink = src;
      }
    }
    if (saved == 0) continue;
    p.out_dims = *constant_dims(sink.first);
    Layer* fused = net.add_layer(p, inputs, l->name() + "+views");
    net.replace_all_uses(sink.first, fused->output());
    ++rewritten;
  }
  return rewritten;
}

}  // namespace

void pass_simplify_attention(BuildState& s) {
  Network& net = s.plan.network;
  int as_causal = 0;
  // Each rewrite leaves the layer it replaced unread; removing those between the steps keeps
  // the next step from rewriting (and counting) them again.
  const int dropped = drop_constant_masks(net, as_causal);
  int removed = dropped > 0 ? remove_unreachable_layers(net) : 0;
  int unrepeated = read_unrepeated_kv(net);
  removed += unrepeated > 0 ? remove_unreachable_layers(net) : 0;
  int folded = 0, partly = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() != LayerKind::kAttention) continue;
    AttentionParams p = l->params_as<AttentionParams>();
    if (p.seq_major || p.packed_heads > 0) continue;
    std::vector<Tensor*> inputs = l->inputs();
    std::string name = l->name();
    const int64_t bits[] = {AttentionParams::kQ, AttentionParams::kK, AttentionParams::kV};
    for (size_t i = 0; i < 3; ++i) {
      Tensor* in_place = p.seq_major_at(bits[i]) ? nullptr : untransposed(inputs[i]);
      if (in_place == nullptr) continue;
      inputs[i] = in_place;
      p.seq_major_operands |= bits[i];
    }
    Layer* after = sole_consumer(net, l->output());
    const bool out_in_place = !p.seq_major_at(AttentionParams::kOut) && after != nullptr &&
                              untransposed(after->output()) == l->output();
    if (out_in_place) {
      p.seq_major_operands |= AttentionParams::kOut;
      name += "+" + after->name();
    }
    if (p.seq_major_operands == l->params_as<AttentionParams>().seq_major_operands) continue;
    if (p.seq_major_operands == AttentionParams::kAllOperands) {  // the one flag rewrite 3 reads
      p.seq_major = true;
      p.seq_major_operands = 0;
      ++folded;
    } else {
      ++partly;
      name += "+layout";
    }
    Layer* fused = net.add_layer(p, inputs, name);
    net.replace_all_uses(out_in_place ? after->output() : l->output(), fused->output());
  }
  removed += folded + partly > 0 ? remove_unreachable_layers(net) : 0;
  // Seq-major layers that rewrite 2 just made can read repeats made on [B, S, Hkv, E].
  const int unrepeated_seq_major = folded + partly > 0 ? read_unrepeated_kv(net) : 0;
  removed += unrepeated_seq_major > 0 ? remove_unreachable_layers(net) : 0;
  unrepeated += unrepeated_seq_major;
  int merged = 0;
  const int packed = read_packed_qkv(net, merged);
  removed += packed > 0 ? remove_unreachable_layers(net) : 0;
  // EMBER_ATTENTION_VIEWS=0 leaves rewrite 5 out (read per build, for A/B timing).
  const char* views_env = std::getenv("EMBER_ATTENTION_VIEWS");
  const bool views_off = views_env != nullptr && std::strcmp(views_env, "0") == 0;
  const int viewed = views_off ? 0 : read_strided_views(net);
  removed += viewed > 0 ? remove_unreachable_layers(net) : 0;
  s.log.push_back("simplify_attention: " + std::to_string(dropped) + " constant masks dropped (" +
                  std::to_string(as_causal) + " as causal), " + std::to_string(folded) +
                  " attention layers read and write [B, L, H, E] in place (" +
                  std::to_string(partly) + " more some of their operands), " +
                  std::to_string(packed) + " read q, k and v from one packed projection (" +
                  std::to_string(merged) + " of them merged from three), " +
                  std::to_string(unrepeated) +
                  " read grouped key/value heads without their repeat_kv copies, " +
                  std::to_string(viewed) + " read or write strided views instead of copies" +
                  (views_off ? " (off: EMBER_ATTENTION_VIEWS=0)" : "") + " (" +
                  std::to_string(removed) + " layers removed)");
}

}  // namespace ember::engine
