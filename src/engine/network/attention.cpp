// Shape and type inference of the fused Attention layer (see AttentionParams in layers.h).
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "network/infer.h"

namespace ember::engine {

namespace {

/// Logical dims of a rank-4 attention operand: [batch, heads, sequence, features].
struct HeadDims {
  DimExpr batch, heads, seq, features;
};

HeadDims head_dims(const Shape& s, bool seq_major) {
  return seq_major ? HeadDims{s[0], s[2], s[1], s[3]} : HeadDims{s[0], s[1], s[2], s[3]};
}

/// Logical dims of one third of a packed operand [B, S, 3 * heads * F].
HeadDims packed_dims(const Shape& s, int64_t heads, const char* role) {
  InferContext::require(s[2].is_constant() && s[2].constant() % (3 * heads) == 0,
                        std::string(role) + " (packed) last dim " + s[2].to_string() +
                            " must be a constant multiple of 3 * packed_heads = " +
                            std::to_string(3 * heads));
  return HeadDims{s[0], DimExpr(heads), s[1], DimExpr(s[2].constant() / 3 / heads)};
}

/// The element count of a shape whose dims are all constants, or -1.
int64_t constant_numel(const Shape& s) {
  int64_t n = 1;
  for (const DimExpr& d : s) {
    if (!d.is_constant()) return -1;
    n *= d.constant();
  }
  return n;
}

/// acc += x * y (x, y >= 0); false, with acc unspecified, when int64 would overflow (a plan's
/// numbers must not wrap past the bounds checks below).
bool add_product(int64_t& acc, int64_t x, int64_t y) {
  int64_t p = 0;
  return !__builtin_mul_overflow(x, y, &p) && !__builtin_add_overflow(acc, p, &acc);
}

/// Whether the output view writes each of its elements once: its (size, stride) pairs, smallest
/// stride first, each stride beyond everything the smaller ones reach (with the last element
/// inside size elements, that makes the view a one-to-one map onto them).
bool one_to_one(std::vector<std::pair<int64_t, int64_t>> dims) {
  std::sort(dims.begin(), dims.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  int64_t reach = 0;  // the largest offset the dims so far reach
  for (const auto& [size, stride] : dims) {
    if (size == 1) continue;
    if (stride <= reach) return false;
    if (!add_product(reach, size - 1, stride)) return false;
  }
  return true;
}

/// Checks the strided views (AttentionParams::views) against the tensors they read and the
/// output they write: every size positive, every stride and offset non-negative, the last
/// element each view reaches inside its tensor (without int64 overflow), and the output view
/// one-to-one. Returns the logical dims of q, k and v.
std::vector<HeadDims> check_views(const AttentionParams& p, InferContext& ctx) {
  const std::vector<int64_t>& w = p.views;
  InferContext::require(w.size() == AttentionParams::kViewLength,
                        "views must hold " + std::to_string(AttentionParams::kViewLength) +
                            " numbers (sizes B, H, Hkv, L, S, E, Ev and four strided views), "
                            "got " + std::to_string(w.size()));
  InferContext::require(!p.seq_major && p.packed_heads == 0 && p.seq_major_operands == 0,
                        "views replace seq_major, packed_heads and seq_major_operands, which "
                        "must be off");
  const int64_t B = w[0], H = w[1], Hkv = w[2], L = w[3], S = w[4], E = w[5], Ev = w[6];
  InferContext::require(B > 0 && H > 0 && Hkv > 0 && L > 0 && S > 0 && E > 0 && Ev > 0,
                        "view sizes B, H, Hkv, L, S, E, Ev must be positive");
  InferContext::require(H % Hkv == 0, "key/value heads (" + std::to_string(Hkv) +
                                          ") must divide query heads (" + std::to_string(H) + ")");
  const char* roles[] = {"query", "key", "value", "output"};
  const int64_t heads[] = {H, Hkv, Hkv, H}, seqs[] = {L, S, S, L}, feats[] = {E, E, Ev, Ev};
  int64_t out_numel = 1, count = 1;
  for (int64_t d : p.out_dims) {
    InferContext::require(d > 0, "out_dims must be positive");
    InferContext::require(!__builtin_mul_overflow(out_numel, d, &out_numel),
                          "out_dims overflow int64");
  }
  for (int64_t d : {B, H, L, Ev}) {
    InferContext::require(!__builtin_mul_overflow(count, d, &count),
                          "view sizes B * H * L * Ev overflow int64");
  }
  InferContext::require(!p.out_dims.empty() && out_numel == count,
                        "out_dims must hold B * H * L * Ev = " + std::to_string(count) +
                            " elements");
  for (size_t i = 0; i < 4; ++i) {
    const size_t at = AttentionParams::kViewSizes + 4 * i;
    const int64_t off = w[at], sb = w[at + 1], sh = w[at + 2], sl = w[at + 3];
    InferContext::require(off >= 0 && sb >= 0 && sh >= 0 && sl >= 0,
                          std::string(roles[i]) + " view offset and strides must be >= 0");
    const int64_t numel = i < 3 ? constant_numel(ctx.shape(i)) : out_numel;
    InferContext::require(numel >= 0, std::string(roles[i]) +
                                          " must have constant dims to be read through a view");
    int64_t last = off;
    const bool fits = add_product(last, B - 1, sb) && add_product(last, heads[i] - 1, sh) &&
                      add_product(last, seqs[i] - 1, sl) && add_product(last, feats[i], 1);
    InferContext::require(fits, std::string(roles[i]) + " view offset and strides overflow int64");
    InferContext::require(last <= numel, std::string(roles[i]) + " view reaches element " +
                                             std::to_string(last - 1) + " of a tensor of " +
                                             std::to_string(numel));
    if (i == 3) {
      InferContext::require(one_to_one({{B, sb}, {H, sh}, {L, sl}, {Ev, 1}}),
                            "output view writes some elements twice (its strides overlap)");
    }
  }
  return {HeadDims{DimExpr(B), DimExpr(H), DimExpr(L), DimExpr(E)},
          HeadDims{DimExpr(B), DimExpr(Hkv), DimExpr(S), DimExpr(E)},
          HeadDims{DimExpr(B), DimExpr(Hkv), DimExpr(S), DimExpr(Ev)}};
}

}  // namespace

void infer(const AttentionParams& p, InferContext& ctx) {
  ctx.expect_num_inputs(3, 4);
  ctx.expect_float(0, "query");
  ctx.expect_same_dtype(0, 1);
  ctx.expect_same_dtype(0, 2);
  InferContext::require(std::isfinite(p.scale), "scale must be finite");
  InferContext::require(p.packed_heads >= 0, "packed_heads must be >= 0");
  const bool packed = p.packed_heads > 0;
  InferContext::require(!packed || p.seq_major, "packed_heads needs the seq-major layout");
  InferContext::require(p.seq_major_operands >= 0 &&
                            p.seq_major_operands <= AttentionParams::kAllOperands,
                        "seq_major_operands must be a mask of kQ (1), kK (2), kV (4) and kOut "
                        "(8), got " + std::to_string(p.seq_major_operands));
  InferContext::require(!p.seq_major || p.seq_major_operands == 0,
                        "seq_major_operands must be 0 when seq_major is set (it covers all "
                        "operands)");
  const bool viewed = !p.views.empty() || !p.out_dims.empty();
  const char* roles[] = {"query", "key", "value"};
  const int64_t bits[] = {AttentionParams::kQ, AttentionParams::kK, AttentionParams::kV};
  if (!viewed) {
    for (size_t i = 0; i < 3; ++i) ctx.expect_rank(i, packed ? 3 : 4, roles[i]);
  }
  const char* layout = viewed                     ? " (strided views)"
                       : packed                   ? " (packed [B, L, 3 * H * E])"
                       : p.seq_major              ? " (seq-major [B, L, H, E])"
                       : p.seq_major_operands != 0 ? " (seq-major operands per seq_major_operands)"
                                                   : " (head-major [B, H, L, E])";
  const std::vector<HeadDims> from_views = viewed ? check_views(p, ctx) : std::vector<HeadDims>{};
  const auto dims_of = [&](size_t i) {
    return viewed   ? from_views[i]
           : packed ? packed_dims(ctx.shape(i), p.packed_heads, roles[i])
                    : head_dims(ctx.shape(i), p.seq_major_at(bits[i]));
  };
  const HeadDims q = dims_of(0), k = dims_of(1), v = dims_of(2);
  ctx.check_equal(q.batch, k.batch, std::string("key batch must equal query batch") + layout);
  ctx.check_equal(q.batch, v.batch, std::string("value batch must equal query batch") + layout);
  ctx.check_equal(q.features, k.features,
                  std::string("key features must equal query features") + layout);
  ctx.check_equal(k.heads, v.heads, std::string("key and value heads must agree") + layout);
  ctx.check_equal(k.seq, v.seq, std::string("key and value lengths must agree") + layout);
  if (q.heads.is_constant() && k.heads.is_constant()) {
    InferContext::require(k.heads.constant() > 0 && q.heads.constant() % k.heads.constant() == 0,
                          "key/value heads (" + k.heads.to_string() +
                              ") must divide query heads (" + q.heads.to_string() + ")");
  } else {
    ctx.check_equal(q.heads, k.heads,
                    std::string("symbolic key/value heads must equal query heads") + layout);
  }
  if (ctx.has(3)) {
    const DataType mt = ctx.dtype(3);
    InferContext::require(mt == DataType::kBool || mt == ctx.dtype(0),
                          std::string("mask (input 3) must be bool or the query's dtype ") +
                              dtype_name(ctx.dtype(0)) + ", got " + dtype_name(mt));
    const Shape& m = ctx.shape(3);
    InferContext::require(m.size() <= 4, "mask (input 3) must have rank <= 4, got rank " +
                                             std::to_string(m.size()));
    const Shape scores = {q.batch, q.heads, q.seq, k.seq};
    const Shape b = ctx.broadcast_shapes(m, scores);
    for (size_t i = 0; i < 4; ++i) {
      ctx.check_equal(b[i], scores[i],
                      "mask " + shape_to_string(m) + " must broadcast to the scores [B, H, L, S] " +
                          shape_to_string(scores));
    }
  }
  Shape out = p.seq_major_at(AttentionParams::kOut) ? Shape{q.batch, q.seq, q.heads, v.features}
                                                    : Shape{q.batch, q.heads, q.seq, v.features};
  if (viewed) out.assign(p.out_dims.begin(), p.out_dims.end());
  ctx.add_output(ctx.dtype(0), out);
}

}  // namespace ember::engine
