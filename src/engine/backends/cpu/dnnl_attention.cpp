// The fused Attention layer through oneDNN (see dnnl_matmul.h).
//
// Three steps per call, all over every (batch, head) at once:
//   1. scores[b, h, i, j] = scale * q[b, h, i, :] . k[b, g, j, :], one batched oneDNN matmul;
//   2. the mask (added, or -inf where a bool mask is false) and the causal limit, a loop of
//      ours, then oneDNN's softmax over j; a row with every key masked becomes zeros (the
//      reference's and PyTorch's math kernel's rule), not NaN;
//   3. out[b, h, i, :] = sum_j p[b, h, i, j] v[b, g, j, :], a second batched matmul.
// The heads are described as [Hkv, group] (g = h / group), so grouped-query attention is
// oneDNN's batch broadcasting (k and v have a size-1 group dim). q, k, v and an f32 output
// are strided views of the tensors as they are (packed QKV, seq-major or head-major): nothing
// is transposed or copied. The scores buffer is kept in the context's cache entry.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backends/attention_geometry.h"
#include "backends/cpu/dnnl_matmul.h"
#include "backends/cpu/parallel.h"

#ifdef EMBER_WITH_DNNL
#include "backends/cpu/dnnl_common.h"
#endif

namespace ember::engine::cpu {

#ifdef EMBER_WITH_DNNL

namespace {

using dnnl::memory;
constexpr auto kF32 = memory::data_type::f32;

struct DnnlAttention final : KernelCache::Entry {
  dnnl::matmul scores_prim, values_prim;
  dnnl::softmax_forward softmax_prim;
  memory::desc q_md, k_md, scores_md, v_md, out_md, rows_md;
  std::vector<float> scores;   // [B, H, L, S]
  std::vector<float> out_tmp;  // [B, H, L, Ev] when the output is not f32
  std::vector<uint8_t> dead;   // per (b, h, i): every key masked out
};

/// [B, Hkv, group, rows, cols] view of an operand read through `o` (features contiguous).
/// `per_head` false: the operand has one head per group (k, v): its group dim is size 1.
memory::desc view_md(const AttentionOperand& o, int64_t B, int64_t Hkv, int64_t group,
                     int64_t rows, int64_t cols, bool per_head, bool transposed) {
  const int64_t g = per_head ? group : 1;
  const int64_t head_stride = per_head ? o.heads * group : o.heads;
  memory::dims dims{B, Hkv, g, rows, cols};
  memory::dims strides{o.batch, head_stride, per_head ? o.heads : 1, o.seq, 1};
  if (transposed) {  // k^T: [.., E, S] read from [.., S, E]
    dims = {B, Hkv, g, cols, rows};
    strides = {o.batch, head_stride, per_head ? o.heads : 1, 1, o.seq};
  }
  return memory::desc(dims, kF32, strides);
}

std::string problem_key(const KernelArgs& a, bool f32_out) {
  std::string k;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    if (!a.has(i)) continue;
    for (const int64_t d : a.in(i).dims) k += std::to_string(d) + ",";
    k += "|";
  }
  for (const int64_t d : a.out().dims) k += std::to_string(d) + ",";
  return k + (f32_out ? "f" : "h");
}

std::unique_ptr<DnnlAttention> prepare(const AttentionParams& p, const AttentionGeometry& geo,
                                       bool f32_out) {
  auto c = std::make_unique<DnnlAttention>();
  const int64_t B = geo.B, Hkv = std::max<int64_t>(geo.Hkv, 1), group = geo.H / Hkv;
  const int64_t L = geo.L, S = geo.S, E = geo.E, Ev = geo.Ev;
  const dnnl::engine& eng = dnnl_cpu_engine();
  c->q_md = view_md(geo.q, B, Hkv, group, L, E, true, false);
  c->k_md = view_md(geo.k, B, Hkv, group, S, E, false, true);
  c->scores_md = memory::desc({B, Hkv, group, L, S}, kF32, memory::format_tag::abcde);
  c->v_md = view_md(geo.v, B, Hkv, group, S, Ev, false, false);
  if (f32_out) {
    c->out_md = view_md(geo.out, B, Hkv, group, L, Ev, true, false);
  } else {
    c->out_md = memory::desc({B, Hkv, group, L, Ev}, kF32, memory::format_tag::abcde);
    c->out_tmp.resize(static_cast<size_t>(B * geo.H * L * Ev));
  }
  dnnl::primitive_attr scaled;
  scaled.set_output_scales(0, {static_cast<float>(p.scale)});
  c->scores_prim = dnnl::matmul(dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(c->q_md, c->k_md, c->scores_md), scaled, eng));
  c->values_prim = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(c->scores_md, c->v_md, c->out_md), eng));
  c->rows_md = memory::desc({B * geo.H * L, S}, kF32, memory::format_tag::ab);
  c->softmax_prim = dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(
      dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, c->rows_md, 1), eng));
  c->scores.resize(static_cast<size_t>(B * geo.H * L * S));
  c->dead.resize(static_cast<size_t>(B * geo.H * L));
  return c;
}

/// Steps 1-3 with a prepared entry; throws dnnl::error when oneDNN fails.
void run_prepared(const AttentionParams& p, const AttentionGeometry& geo, const KernelArgs& a,
                  DnnlAttention& c, float* q, float* k, float* v, bool f32_out) {
  const HostTensor* mt = a.has(3) ? &a.in(3) : nullptr;
  HostTensor& out = a.out(0);
  const dnnl::engine& eng = dnnl_cpu_engine();
  const memory scores(c.scores_md, eng, c.scores.data());
  dnnl_execute(c.scores_prim, {{DNNL_ARG_SRC, memory(c.q_md, eng, q + geo.q.offset)},
                                {DNNL_ARG_WEIGHTS, memory(c.k_md, eng, k + geo.k.offset)},
                                {DNNL_ARG_DST, scores}});

  // The mask and the causal limit; rows with no visible key are remembered.
  const int64_t H = geo.H, L = geo.L, S = geo.S;
  const std::vector<float> mask = mt != nullptr ? to_float_vector(*mt) : std::vector<float>{};
  const bool bool_mask = mt != nullptr && mt->dtype == DataType::kBool;
  const int64_t* ms = geo.mask;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  bool any_dead = false;
  if (mt != nullptr || p.causal) {
    std::fill(c.dead.begin(), c.dead.end(), uint8_t{0});
    parallel_for(geo.B * H * L, S, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % L, h = (row / L) % H, b = row / (L * H);
        float* s = c.scores.data() + row * S;
        if (mt != nullptr) {
          const float* m = mask.data() + b * ms[0] + h * ms[1] + i * ms[2];
          const int64_t mj = ms[3];
          if (bool_mask) {
            for (int64_t j = 0; j < S; ++j) s[j] = m[j * mj] != 0.0f ? s[j] : kNegInf;
          } else {
            for (int64_t j = 0; j < S; ++j) s[j] += m[j * mj];
          }
        }
        if (p.causal) std::fill(s + std::min(i + 1, S), s + S, kNegInf);
        float row_max = kNegInf;
        for (int64_t j = 0; j < S; ++j) row_max = std::max(row_max, s[j]);
        c.dead[static_cast<size_t>(row)] = row_max == kNegInf;
      }
    });
    any_dead = std::find(c.dead.begin(), c.dead.end(), uint8_t{1}) != c.dead.end();
  }
  const memory rows(c.rows_md, eng, c.scores.data());
  dnnl_execute(c.softmax_prim, {{DNNL_ARG_SRC, rows}, {DNNL_ARG_DST, rows}});
  if (any_dead) {
    for (size_t row = 0; row < c.dead.size(); ++row) {
      if (c.dead[row]) std::fill_n(c.scores.data() + row * S, S, 0.0f);
    }
  }

  float* dst = f32_out ? out.as<float>() + geo.out.offset : c.out_tmp.data();
  dnnl_execute(c.values_prim, {{DNNL_ARG_SRC, scores},
                                {DNNL_ARG_WEIGHTS, memory(c.v_md, eng, v + geo.v.offset)},
                                {DNNL_ARG_DST, memory(c.out_md, eng, dst)}});
  if (!f32_out) {
    // out_tmp is [B, H, L, Ev]; the output is read through its geometry.
    const int64_t Ev = geo.Ev;
    const AttentionOperand& os = geo.out;
    for (int64_t b = 0; b < geo.B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < L; ++i) {
          const float* src = c.out_tmp.data() + ((b * H + h) * L + i) * Ev;
          const int64_t at = os.offset + b * os.batch + h * os.heads + i * os.seq;
          for (int64_t e = 0; e < Ev; ++e) store_float(out.dtype, out.data, at + e, src[e]);
        }
      }
    }
  }
}

}  // namespace

bool dnnl_attention(const AttentionParams& p, const KernelArgs& a) {
  if (!dnnl_enabled()) return false;
  const HostTensor& qt = a.in(0);
  const HostTensor& kt = a.in(1);
  const HostTensor& vt = a.in(2);
  HostTensor& out = a.out(0);
  const HostTensor* mt = a.has(3) ? &a.in(3) : nullptr;
  const AttentionGeometry geo = attention_geometry(p, qt.dims, kt.dims, vt.dims, out.dims,
                                                   mt != nullptr ? &mt->dims : nullptr);
  if (geo.S == 0 || geo.E == 0) return false;  // no keys: the reference writes zeros
  const bool f32_out = out.dtype == DataType::kF32;
  std::unique_ptr<DnnlAttention> local;
  DnnlAttention* c = nullptr;
  try {
    c = dnnl_cached(a, problem_key(a, f32_out), local, [&] { return prepare(p, geo, f32_out); });
  } catch (const dnnl::error& e) {
    dnnl_refused(a, "attention", "creation", e);
    return false;
  }
  // Packed layers read one tensor three times: convert it once.
  const auto same_as_q = [&qt](const HostTensor& t) {
    return t.data == qt.data && t.numel() == qt.numel();
  };
  std::vector<float> q_copy, k_copy, v_copy;
  float* q = dnnl_f32_view(qt, q_copy);
  float* k = same_as_q(kt) ? q : dnnl_f32_view(kt, k_copy);
  float* v = same_as_q(vt) ? q : dnnl_f32_view(vt, v_copy);
  try {
    run_prepared(p, geo, a, *c, q, k, v, f32_out);
  } catch (const dnnl::error& e) {
    dnnl_refused(a, "attention", "execution", e);
    return false;  // the reference kernel recomputes the whole output
  }
  return true;
}

#else  // no oneDNN in this build

bool dnnl_attention(const AttentionParams&, const KernelArgs&) { return false; }

#endif

}  // namespace ember::engine::cpu
