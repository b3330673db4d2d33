// fold_attention_transposes: attention models keep activations as [B, L, H, E] and transpose
// them to [B, H, L, E] only for the attention itself:
//
//   q' = transpose(q, 1, 2)   k' = ...   v' = ...     (Shuffle {0, 2, 1, 3}, a copy each)
//   o  = Attention(q', k', v' [, mask])               (head-major)
//   o' = transpose(o, 1, 2)                           (a copy)
//   =>  o' = Attention(q, k, v [, mask], seq_major)   (reads and writes [B, L, H, E] in place)
//
// The mask keeps its [B, H, L, S] logical order in both layouts. All four transposes must be
// there: the layout flag covers the inputs and the output together.
#include <vector>

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

}  // namespace

void pass_fold_attention_transposes(BuildState& s) {
  Network& net = s.plan.network;
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
  const int removed = folded > 0 ? remove_unreachable_layers(net) : 0;
  s.log.push_back("fold_attention_transposes: " + std::to_string(folded) +
                  " attention layers read and write [B, L, H, E] in place (" +
                  std::to_string(removed) + " layers removed)");
}

}  // namespace ember::engine
