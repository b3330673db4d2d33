#include "backends/attention_geometry.h"

namespace ember::engine {

namespace {

/// A contiguous rank-4 operand [B, H, S, F] (head-major) or [B, S, H, F] (seq-major).
AttentionOperand unpacked(const std::vector<int64_t>& d, bool seq_major) {
  AttentionOperand o;
  o.batch = d[1] * d[2] * d[3];
  o.heads = seq_major ? d[3] : d[2] * d[3];
  o.seq = seq_major ? d[2] * d[3] : d[3];
  return o;
}

/// Third `t` (q, k or v) of a packed [B, S, 3 * heads * F] operand.
AttentionOperand packed(const std::vector<int64_t>& d, int64_t heads, int t) {
  AttentionOperand o;
  const int64_t third = d[2] / 3;
  o.offset = t * third;
  o.batch = d[1] * d[2];
  o.seq = d[2];
  o.heads = third / heads;
  return o;
}

}  // namespace

AttentionGeometry attention_geometry(const AttentionParams& p, const std::vector<int64_t>& q,
                                     const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                                     const std::vector<int64_t>& out,
                                     const std::vector<int64_t>* mask_dims) {
  AttentionGeometry g;
  if (!p.views.empty()) {  // sizes and strides as the builder computed them (infer checked them)
    const std::vector<int64_t>& w = p.views;
    g.B = w[0];
    g.H = w[1];
    g.Hkv = w[2];
    g.L = w[3];
    g.S = w[4];
    g.E = w[5];
    g.Ev = w[6];
    AttentionOperand* ops[] = {&g.q, &g.k, &g.v, &g.out};
    for (size_t i = 0; i < 4; ++i) {
      const size_t at = AttentionParams::kViewSizes + 4 * i;
      *ops[i] = AttentionOperand{w[at], w[at + 1], w[at + 2], w[at + 3]};
    }
  } else if (p.packed_heads > 0) {
    g.B = q[0];
    g.H = g.Hkv = p.packed_heads;
    g.L = q[1];
    g.S = k[1];
    g.E = q[2] / 3 / p.packed_heads;
    g.Ev = v[2] / 3 / p.packed_heads;
    g.q = packed(q, p.packed_heads, 0);
    g.k = packed(k, p.packed_heads, 1);
    g.v = packed(v, p.packed_heads, 2);
    g.out = unpacked(out, true);
  } else {
    const bool qs = p.seq_major_at(AttentionParams::kQ);
    const bool ks = p.seq_major_at(AttentionParams::kK);
    g.B = q[0];
    g.H = q[qs ? 2 : 1];
    g.L = q[qs ? 1 : 2];
    g.E = q[3];
    g.Hkv = k[ks ? 2 : 1];
    g.S = k[ks ? 1 : 2];
    g.Ev = v[3];
    g.q = unpacked(q, qs);
    g.k = unpacked(k, ks);
    g.v = unpacked(v, p.seq_major_at(AttentionParams::kV));
    g.out = unpacked(out, p.seq_major_at(AttentionParams::kOut));
  }
  if (mask_dims != nullptr) {
    int64_t stride = 1;
    const int rank = static_cast<int>(mask_dims->size());
    for (int d = rank - 1; d >= 0; --d) {
      g.mask[4 - rank + d] = (*mask_dims)[d] == 1 ? 0 : stride;
      stride *= (*mask_dims)[d];
    }
  }
  return g;
}

}  // namespace ember::engine
