// layer_cost (cost.h): FLOPs of the products from their shapes, bytes from the tensors a layer
// must read and write.
#include "runtime/cost.h"

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "backends/semantics/fused_pointwise.h"

namespace ember::engine {
namespace {

/// A static shape's dims, or nothing.
std::optional<std::vector<int64_t>> dims_of(const Tensor* t) {
  if (t == nullptr || !shape_is_static(t->shape())) return std::nullopt;
  return shape_evaluate(t->shape(), {});
}

double numel(const std::vector<int64_t>& d) { return static_cast<double>(dims_numel(d)); }

double bytes_of(const Tensor* t, const std::vector<int64_t>& d) {
  return numel(d) * static_cast<double>(dtype_size(t->dtype()));
}

/// Pairs (query, key) a causal attention scores: query i sees keys 0..i (top-left aligned).
double causal_pairs(int64_t l, int64_t s) {
  const int64_t full = std::min(l, s);  // queries 0..full-1 see i + 1 keys, the rest all s
  return static_cast<double>(full) * static_cast<double>(full + 1) / 2.0 +
         static_cast<double>(l - full) * static_cast<double>(s);
}

/// Multiply-adds of a product's output element: the reduced dim of operand a.
double matmul_inner(const std::vector<int64_t>& a, bool transpose_a) {
  if (a.empty()) return 0.0;
  if (a.size() == 1) return static_cast<double>(a[0]);
  return static_cast<double>(transpose_a ? a[a.size() - 2] : a.back());
}

/// The product of w's dims after the first: a convolution's multiply-adds per output element
/// (w [K, C/groups, *kernel], or KRSC under channels_last), a deconvolution's per input element
/// (w [C, K/groups, *kernel]).
double conv_inner(const std::vector<int64_t>& w) {
  double n = 1.0;
  for (size_t i = 1; i < w.size(); ++i) n *= static_cast<double>(w[i]);
  return n;
}

/// Attention's FLOPs: 2 * pairs * (E + Ev) for each batch and head (scores, then values).
std::optional<double> attention_flops(const AttentionParams& p,
                                      const std::vector<std::vector<int64_t>>& in,
                                      const std::vector<int64_t>& out) {
  int64_t bh = 0, lq = 0, s = 0, e = 0, ev = 0;
  if (!p.views.empty()) {
    if (p.views.size() < AttentionParams::kViewSizes) return std::nullopt;
    const auto& v = p.views;  // {B, H, Hkv, L, S, E, Ev}
    bh = v[0] * v[1], lq = v[3], s = v[4], e = v[5], ev = v[6];
  } else if (p.packed_heads > 0) {
    if (in[0].size() != 3 || in[1].size() != 3) return std::nullopt;
    lq = in[0][1], s = in[1][1];
    e = ev = in[0][2] / (3 * p.packed_heads);
    bh = in[0][0] * p.packed_heads;
  } else {
    if (in[0].size() != 4 || in[1].size() != 4 || in[2].size() != 4) return std::nullopt;
    e = in[0][3], ev = in[2][3];
    lq = p.seq_major_at(AttentionParams::kQ) ? in[0][1] : in[0][2];
    s = p.seq_major_at(AttentionParams::kK) ? in[1][1] : in[1][2];
    bh = lq > 0 && ev > 0 ? dims_numel(out) / ev / lq : 0;  // the output is B * H * L * Ev
  }
  const double pairs = p.causal ? causal_pairs(lq, s)
                                : static_cast<double>(lq) * static_cast<double>(s);
  return 2.0 * static_cast<double>(bh) * pairs * static_cast<double>(e + ev);
}

}  // namespace

std::optional<LayerCost> layer_cost(const Layer& layer, bool aliased) {
  if (layer.kind() == LayerKind::kConstant) return LayerCost{};
  std::vector<std::vector<int64_t>> in(layer.inputs().size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (layer.input(i) == nullptr) continue;
    auto d = dims_of(layer.input(i));
    if (!d) return std::nullopt;
    in[i] = std::move(*d);
  }
  std::vector<std::vector<int64_t>> out;
  for (const Tensor* t : layer.outputs()) {
    auto d = dims_of(t);
    if (!d) return std::nullopt;
    out.push_back(std::move(*d));
  }
  LayerCost cost;
  if (aliased) return cost;  // its output is its input's memory: nothing moves
  for (size_t i = 0; i < out.size(); ++i) cost.bytes += bytes_of(layer.output(i), out[i]);
  // Reads: each distinct input once; a Gather's or Slice's data only as much as it outputs; a
  // packed attention input the thirds of it that q, k and v read from it.
  const bool partial_data =
      layer.kind() == LayerKind::kGather || layer.kind() == LayerKind::kSlice;
  const bool packed = layer.kind() == LayerKind::kAttention &&
                      layer.params_as<AttentionParams>().packed_heads > 0;
  // A fused pointwise layer's sliced inputs (FusedPointwiseParams::slices): per tensor, the
  // fraction each distinct slice of it covers, summed up to the whole (SwiGLU's halves of one
  // product; RoPE reads q and its rotation through one slice, which counts once).
  std::map<const Tensor*, std::map<std::vector<int64_t>, double>> parts;
  std::vector<semantics::InputView> views;
  if (layer.kind() == LayerKind::kFusedPointwise &&
      !layer.params_as<FusedPointwiseParams>().slices.empty() &&
      semantics::fused_input_views(layer.params_as<FusedPointwiseParams>(), in.size(), views)) {
    for (size_t i = 0; i < in.size(); ++i) {
      double f = 1.0;
      for (size_t t = 0; t + 2 < views[i].slice.size(); t += 3) {
        const auto d = static_cast<size_t>(views[i].slice[t]);
        if (d < in[i].size() && in[i][d] > 0) {
          f *= static_cast<double>(views[i].slice[t + 2]) / static_cast<double>(in[i][d]);
        }
      }
      parts[layer.input(i)][views[i].slice] = f;
    }
  }
  std::set<const Tensor*> seen;
  for (size_t i = 0; i < in.size(); ++i) {
    const Tensor* t = layer.input(i);
    if (t == nullptr || !seen.insert(t).second) continue;
    if (partial_data && i == 0 && !out.empty()) {
      cost.bytes += numel(out[0]) * static_cast<double>(dtype_size(t->dtype()));
    } else if (packed && i < 3) {
      const auto& qkv = layer.inputs();
      const auto thirds = std::count(qkv.begin(), qkv.begin() + 3, t);
      cost.bytes += bytes_of(t, in[i]) * static_cast<double>(thirds) / 3.0;
    } else if (const auto it = parts.find(t); it != parts.end()) {
      double f = 0.0;
      for (const auto& [slice, fraction] : it->second) f += fraction;
      cost.bytes += bytes_of(t, in[i]) * std::min(1.0, f);
    } else {
      cost.bytes += bytes_of(t, in[i]);
    }
  }
  if (out.empty()) return cost;
  const std::vector<int64_t>& y = out[0];
  switch (layer.kind()) {
    case LayerKind::kMatrixMultiply:
      cost.flops = 2.0 * numel(y) *
                   matmul_inner(in[0], layer.params_as<MatrixMultiplyParams>().transpose_a);
      break;
    case LayerKind::kQuantizedMatrixMultiply:
      cost.flops = 2.0 * numel(y) * matmul_inner(in[0], false);
      break;
    case LayerKind::kConvolution:
    case LayerKind::kQuantizedConvolution:
      cost.flops = 2.0 * numel(y) * conv_inner(in[1]);
      break;
    case LayerKind::kDeconvolution:
      cost.flops = 2.0 * numel(in[0]) * conv_inner(in[1]);
      break;
    case LayerKind::kAttention: {
      const auto f = attention_flops(layer.params_as<AttentionParams>(), in, y);
      if (!f) return std::nullopt;
      cost.flops = *f;
      break;
    }
    default:
      break;
  }
  return cost;
}

}  // namespace ember::engine
