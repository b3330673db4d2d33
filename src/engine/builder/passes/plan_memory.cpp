#include <algorithm>
#include <map>

#include "builder/passes/passes.h"

namespace ember::engine {
namespace {

constexpr int64_t kArenaAlignment = 256;

int64_t align_up(int64_t v) { return (v + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }

}  // namespace

void pass_plan_memory(BuildState& s) {
  // Canonical order first, so that placements index tensors the way the plan stores them.
  s.plan.network = s.plan.network.clone();
  const Network& net = s.plan.network;
  const auto layers = net.layers();
  const auto tensors = net.tensors();
  // Liveness in layer positions: [def, last use]; an output is live until its last consumer.
  std::vector<int64_t> def(tensors.size(), -1), last(tensors.size(), -1);
  for (size_t li = 0; li < layers.size(); ++li) {
    for (const Tensor* t : layers[li]->outputs()) def[t->id()] = last[t->id()] = static_cast<int64_t>(li);
    for (const Tensor* t : layers[li]->inputs()) {
      if (t != nullptr) last[t->id()] = static_cast<int64_t>(li);
    }
  }
  struct Block {
    int64_t offset, size, last;
    int root;  // the tensor the slot was allocated for (aliases extend its life)
  };
  std::vector<Block> live;
  s.plan.placements.assign(tensors.size(), TensorPlacement{});
  int64_t arena = 0, placed = 0, naive = 0, aliased = 0;
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer* l = layers[li];
    if (l->kind() == LayerKind::kConstant) continue;
    // Blocks whose last use is before this layer are free again.
    live.erase(std::remove_if(live.begin(), live.end(),
                              [&](const Block& b) { return b.last < static_cast<int64_t>(li); }),
               live.end());
    if (is_pure_reshape(l) && !l->output()->is_output()) {
      const Tensor* in = l->input(0);
      const int64_t in_offset = s.plan.placements[in->id()].arena_offset;
      auto block = std::find_if(live.begin(), live.end(), [&](const Block& b) {
        return in_offset >= 0 && b.offset == in_offset;
      });
      // The bounds of the two shapes come from interval arithmetic and can differ (a reshape
      // to floordiv(...) dims): share only when the output's bound fits the slot.
      if (block != live.end() &&
          align_up(std::max<int64_t>(max_tensor_bytes(*l->output(), s.plan.profiles), 1)) <=
              block->size) {
        block->last = std::max(block->last, last[l->output()->id()]);
        s.plan.placements[l->output()->id()].arena_offset = in_offset;
        ++aliased;
        continue;
      }
    }
    for (const Tensor* t : l->outputs()) {
      if (t->is_output()) continue;  // written straight into the caller's memory
      const int64_t size = align_up(std::max<int64_t>(max_tensor_bytes(*t, s.plan.profiles), 1));
      std::sort(live.begin(), live.end(), [](const Block& a, const Block& b) { return a.offset < b.offset; });
      int64_t offset = 0;
      for (const Block& b : live) {
        if (offset + size <= b.offset) break;
        offset = std::max(offset, b.offset + b.size);
      }
      live.push_back({offset, size, last[t->id()], t->id()});
      s.plan.placements[t->id()].arena_offset = offset;
      arena = std::max(arena, offset + size);
      naive += size;
      ++placed;
    }
  }
  s.plan.arena_bytes = arena;
  if (s.config.memory_limit > 0 && arena > s.config.memory_limit) {
    throw Error("activation memory needs " + std::to_string(arena) + " bytes, above memory_limit " +
                std::to_string(s.config.memory_limit));
  }
  s.log.push_back("plan_memory: " + std::to_string(placed) + " tensors in a " +
                  std::to_string(arena) + "-byte arena (" + std::to_string(naive) +
                  " bytes without reuse); " + std::to_string(aliased) +
                  " reshapes share their input's slot");
}

}  // namespace ember::engine
