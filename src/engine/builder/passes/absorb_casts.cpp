// absorb_casts: a Normalization or SoftMax computed in f32 between a cast up from f16/bf16 and a
// cast back down to the same type runs on the low-precision tensors instead:
//
//   Cast(x16 -> f32) -> Normalization(f32, f32 scale/bias) [-> Shuffle | Slice]* -> Cast(-> f16)
//     => Normalization(x16, scale/bias rounded to f16) [-> Shuffle | Slice]*  (all f16)
//
// Autocast (the compiler's lowering, docs/precision.md) keeps norms and softmaxes in f32 by rule,
// so an autocast transformer has this pattern around every layer norm: two cast kernels, and the
// norm reading and writing f32, where a hand-.half() model runs one norm kernel on f16. Both back
// ends' norm and softmax kernels load each element to f32 and keep the moments, sums and
// arithmetic in f32 or double whatever the tensor type, and the up-cast is exact, so the
// rewritten layer computes what the f32 layer computed and rounds once on store, as the
// down-cast did (a softmax bit for bit; a norm up to the order of its double sums, which the CUDA
// back end's vectorized 16-bit layer-norm kernel adds in another order). The one real difference
// is a norm's scale and bias, rounded to the low-precision type (as in a hand-.half() model): a
// relative 2^-11 (f16) or 2^-8 (bf16) on the affine step; a value out of the type's range keeps
// the layer in f32. Norm here is the Normalization layer (layer, group and instance norm; RMS
// norms are reduce and pointwise layers, which fuse_pointwise handles). The
// data-movement layers between the norm and the down-cast (reshapes, transposes, slices: GPT-2's
// view, the transposes of torch.nn.MultiheadAttention, BERT's pooler slice) move the
// low-precision tensor instead (exact), so simplify_attention can still read them as views.
//
// Only when every tensor on the way has one consumer and is not a network output; the up-cast
// stays when something else reads its output. Runs before fuse_epilogues (level >= 2), so a
// residual add that fed the up-cast can join its GEMM's epilogue.
#include <cmath>
#include <string>
#include <vector>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

bool low_precision(DataType t) { return t == DataType::kF16 || t == DataType::kBF16; }

/// The low-precision tensor `t` was cast up from, when a Cast to f32 produced it.
Tensor* cast_up_source(const Tensor* t) {
  const Layer* c = t->producer();
  if (c == nullptr || c->kind() != LayerKind::kCast || t->dtype() != DataType::kF32) return nullptr;
  Tensor* src = c->input(0);
  return low_precision(src->dtype()) ? src : nullptr;
}

/// `t` as a constant of `dtype` (a new Constant layer), or nullptr when `t` is absent. False in
/// `ok` when `t` is present but not a constant, or a value leaves `dtype`'s range (a scale of
/// 1e5 would become inf in f16).
Tensor* narrowed_constant(Network& net, const Tensor* t, DataType dtype, const std::string& name,
                          bool& ok) {
  if (t == nullptr) return nullptr;
  const Weights* w = constant_of(t);
  if (w == nullptr || w->dtype() != DataType::kF32) {
    ok = false;
    return nullptr;
  }
  Weights narrowed = from_floats(dtype, w->dims(), to_floats(*w));
  for (float v : to_floats(narrowed)) {
    if (!std::isfinite(v)) {
      ok = false;
      return nullptr;
    }
  }
  return net.add_constant(std::move(narrowed), unique_layer_name(net, name))->output();
}

/// Rewrites `l` (a Normalization or SoftMax) when the pattern holds; true when it did.
bool rewrite(Network& net, Layer* l) {
  if (l->outputs().size() != 1 || l->output()->dtype() != DataType::kF32) return false;
  Tensor* x = cast_up_source(l->input(0));
  if (x == nullptr) return false;
  const DataType low = x->dtype();
  // The way down: data movement with one consumer each, ending at a Cast back to `low`.
  std::vector<Layer*> moves;
  Layer* down = nullptr;
  for (const Tensor* t = l->output();;) {
    Layer* next = sole_consumer(net, t);
    if (next == nullptr) return false;
    if (next->kind() == LayerKind::kCast) {
      if (next->params_as<CastParams>().to != low) return false;
      down = next;
      break;
    }
    if (next->kind() != LayerKind::kShuffle && next->kind() != LayerKind::kSlice) return false;
    moves.push_back(next);  // (both take exactly one input: their sizes are parameters)
    t = next->output();
  }
  const std::string suffix = std::string("/") + dtype_name(low);
  Tensor* y = nullptr;
  if (l->kind() == LayerKind::kNormalization) {
    bool ok = true;
    Tensor* scale = narrowed_constant(net, l->inputs().size() > 1 ? l->input(1) : nullptr, low,
                                      l->name() + "/scale" + suffix, ok);
    Tensor* bias = narrowed_constant(net, l->inputs().size() > 2 ? l->input(2) : nullptr, low,
                                     l->name() + "/bias" + suffix, ok);
    if (!ok) return false;  // computed scale/bias: left as they are (the new constants are dead)
    y = net.add_normalization(x, scale, bias, l->params_as<NormalizationParams>(),
                              unique_layer_name(net, l->name() + suffix))->output();
  } else {
    const auto& sp = l->params_as<SoftMaxParams>();
    y = net.add_layer(sp, {x}, unique_layer_name(net, l->name() + suffix))->output();
  }
  for (const Layer* m : moves) {
    y = net.add_layer(m->params(), {y}, unique_layer_name(net, m->name() + suffix))->output();
  }
  net.replace_all_uses(down->output(), y);
  return true;
}

}  // namespace

int absorb_casts(Network& net) {
  int rewritten = 0;
  for (Layer* l : net.layers()) {
    if ((l->kind() == LayerKind::kNormalization || l->kind() == LayerKind::kSoftMax) &&
        rewrite(net, l)) {
      ++rewritten;
    }
  }
  remove_unreachable_layers(net);
  return rewritten;
}

void pass_absorb_casts(BuildState& s) {
  const int n = absorb_casts(s.plan.network);
  s.log.push_back("absorb_casts: " + std::to_string(n) +
                  " f32 norms/softmaxes between casts run on their f16/bf16 tensors");
}

}  // namespace ember::engine
