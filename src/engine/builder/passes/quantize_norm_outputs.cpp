// quantize_norm_outputs: a layer (or RMS) norm read by a per-tensor symmetric Quantize writes
// the quantized tensor itself (layers.h, NormalizationQuantize).
//
//   LayerNorm(x) -> Quantize(scale)                 => LayerNorm(x; quantize, float_output off)
//   LayerNorm(x) -> Quantize(scale), other readers  => LayerNorm(x; quantize): outputs y and q
//
// In a quantized transformer every product's activation is quantized, and the activation of the
// first product of each attention block and MLP is a layer norm's output: a pre-LN model
// (GPT-2) reads that output only through the Quantize; a post-LN one (BERT) also adds it to the
// block's output as the residual. The Quantize pass re-read the whole f16 tensor (2 bytes an
// element) to write one byte; the norm now writes that byte from the value it already holds.
// BERT-base FP8 has 25 such norms (24 of them before a quantized product).
//
// The Quantize must be symmetric (no zero point; PT2E's asymmetric u8 activations keep theirs)
// to i8 or f8e4m3, per tensor. Several such Quantizes of one norm with one scale tensor and
// the same parameters are all replaced; a second scale keeps its own Quantize.
// EMBER_QUANTIZE_NORM_OUTPUTS=0 leaves every norm as it is (A/B timing: bench/variants.py's
// fp8_plain_norms and int8_plain_norms).
#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// True when `l` is a Quantize the norm's quantized output can stand for.
bool takes(const Layer* l, const Tensor* norm_out) {
  if (l->kind() != LayerKind::kQuantize || l->input(0) != norm_out) return false;
  if (l->inputs().size() > 2 && l->input(2) != nullptr) return false;  // a zero point
  const auto& q = l->params_as<QuantizeParams>();
  return !q.per_channel && (q.to == DataType::kI8 || q.to == DataType::kF8E4M3);
}

bool same_quantization(const Layer* a, const Layer* b) {
  const auto& p = a->params_as<QuantizeParams>();
  const auto& q = b->params_as<QuantizeParams>();
  return a->input(1) == b->input(1) && p.to == q.to && p.quant_min == q.quant_min &&
         p.quant_max == q.quant_max;
}

/// Rewrites norm `l` when a Quantize reads it; true when it did.
bool rewrite(Network& net, Layer* l) {
  const auto& p = l->params_as<NormalizationParams>();
  if ((p.type != NormalizationType::kLayer && p.type != NormalizationType::kRms) ||
      p.quantize.enabled) {
    return false;
  }
  Tensor* y = l->output();
  std::vector<Layer*> quantizes;
  bool other_readers = y->is_output();
  for (Layer* c : net.consumers(y)) {
    if (takes(c, y) && (quantizes.empty() || same_quantization(quantizes[0], c))) {
      quantizes.push_back(c);
    } else {
      other_readers = true;
    }
  }
  if (quantizes.empty()) return false;
  const auto& qp = quantizes[0]->params_as<QuantizeParams>();
  NormalizationParams np = p;
  np.quantize.enabled = true;
  np.quantize.to = qp.to;
  np.quantize.quant_min = qp.quant_min;
  np.quantize.quant_max = qp.quant_max;
  np.quantize.float_output = other_readers;
  std::vector<Tensor*> inputs = l->inputs();
  inputs.resize(3, nullptr);
  inputs.push_back(quantizes[0]->input(1));
  Layer* fused = net.add_layer(np, inputs, unique_layer_name(net, l->name() + "+quantize"));
  Tensor* q = fused->outputs().back();
  for (Layer* c : quantizes) net.replace_all_uses(c->output(), q);
  if (other_readers) net.replace_all_uses(y, fused->outputs()[0]);
  return true;
}

}  // namespace

int quantize_norm_outputs(Network& net) {
  int rewritten = 0;
  for (Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kNormalization && rewrite(net, l)) ++rewritten;
  }
  remove_unreachable_layers(net);
  return rewritten;
}

void pass_quantize_norm_outputs(BuildState& s) {
  if (switched_off_by_env("EMBER_QUANTIZE_NORM_OUTPUTS")) {
    s.log.push_back("quantize_norm_outputs: off (EMBER_QUANTIZE_NORM_OUTPUTS=0)");
    return;
  }
  const int n = quantize_norm_outputs(s.plan.network);
  s.log.push_back("quantize_norm_outputs: " + std::to_string(n) +
                  " layer norms write their quantized output");
}

}  // namespace ember::engine
