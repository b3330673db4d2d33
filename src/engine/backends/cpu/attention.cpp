// CPU kernel of the fused Attention layer: oneDNN when the build has it (dnnl_attention.cpp),
// otherwise this reference: one query row at a time, scores, softmax
// and the value sum in f32 (the output rounds once to the layer's dtype). Operands are read
// through attention_geometry (shared with the CUDA back end), so every layout is one loop.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/attention_geometry.h"
#include "backends/cpu/dnnl_matmul.h"
#include "backends/cpu/kernels.h"
#include "backends/cpu/parallel.h"

namespace ember::engine::cpu {

void run(const AttentionParams& p, const KernelArgs& a) {
  const HostTensor& qt = a.in(0);
  const HostTensor& kt = a.in(1);
  const HostTensor& vt = a.in(2);
  HostTensor& out = a.out(0);
  if (out.numel() == 0) return;
  if (dnnl_attention(p, a)) return;  // oneDNN's batched products when the build has it
  const HostTensor* mt = a.has(3) ? &a.in(3) : nullptr;
  const AttentionGeometry geo = attention_geometry(p, qt.dims, kt.dims, vt.dims, out.dims,
                                                   mt != nullptr ? &mt->dims : nullptr);
  const int64_t H = geo.H, L = geo.L, S = geo.S, E = geo.E, Ev = geo.Ev;
  const int64_t group = H / std::max<int64_t>(geo.Hkv, 1);
  const AttentionOperand &qs = geo.q, &ks = geo.k, &vs = geo.v, &os = geo.out;
  // Packed layers read one tensor three times: convert it once.
  const auto same_as_q = [&qt](const HostTensor& t) {
    return t.data == qt.data && t.numel() == qt.numel();
  };
  const std::vector<float> q = to_float_vector(qt);
  const std::vector<float> k_own = same_as_q(kt) ? std::vector<float>{} : to_float_vector(kt);
  const std::vector<float> v_own = same_as_q(vt) ? std::vector<float>{} : to_float_vector(vt);
  const std::vector<float>& k = same_as_q(kt) ? q : k_own;
  const std::vector<float>& v = same_as_q(vt) ? q : v_own;
  const std::vector<float> mask_values =
      mt != nullptr ? to_float_vector(*mt) : std::vector<float>{};  // bool: 0/1
  const int64_t* mst = geo.mask;
  const bool bool_mask = mt != nullptr && mt->dtype == DataType::kBool;
  const float scale = static_cast<float>(p.scale);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  parallel_for(geo.B * H * L, S * (E + Ev) * 2, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(S));
    std::vector<float> acc(static_cast<size_t>(Ev));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % L, h = (row / L) % H, b = row / (L * H), g = h / group;
      const float* qi = q.data() + qs.offset + b * qs.batch + h * qs.heads + i * qs.seq;
      float row_max = kNegInf;
      for (int64_t j = 0; j < S; ++j) {
        float s = kNegInf;
        const bool causal_out = p.causal && j > i;
        const float m = mt != nullptr
                            ? mask_values[b * mst[0] + h * mst[1] + i * mst[2] + j * mst[3]]
                            : 0.0f;
        if (!causal_out && !(bool_mask && m == 0.0f)) {
          const float* kj = k.data() + ks.offset + b * ks.batch + g * ks.heads + j * ks.seq;
          float dot = 0.0f;
          for (int64_t e = 0; e < E; ++e) dot += qi[e] * kj[e];
          s = dot * scale + (bool_mask ? 0.0f : m);
        }
        scores[j] = s;
        row_max = std::max(row_max, s);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      if (row_max != kNegInf) {  // a fully masked row stays zero
        double sum = 0.0;
        for (int64_t j = 0; j < S; ++j) {
          scores[j] = std::exp(scores[j] - row_max);
          sum += scores[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = 0; j < S; ++j) {
          const float w = scores[j] * inv;
          if (w == 0.0f) continue;
          const float* vj = v.data() + vs.offset + b * vs.batch + g * vs.heads + j * vs.seq;
          for (int64_t e = 0; e < Ev; ++e) acc[e] += w * vj[e];
        }
      }
      const int64_t dst = os.offset + b * os.batch + h * os.heads + i * os.seq;
      for (int64_t e = 0; e < Ev; ++e) store_float(out.dtype, out.data, dst + e, acc[e]);
    }
  });
}

}  // namespace ember::engine::cpu
