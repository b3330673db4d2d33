// Shape and type inference of the fused Attention layer (see AttentionParams in layers.h).
#include <cmath>
#include <string>

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
  const char* roles[] = {"query", "key", "value"};
  const int64_t bits[] = {AttentionParams::kQ, AttentionParams::kK, AttentionParams::kV};
  for (size_t i = 0; i < 3; ++i) ctx.expect_rank(i, packed ? 3 : 4, roles[i]);
  const char* layout = packed                     ? " (packed [B, L, 3 * H * E])"
                       : p.seq_major              ? " (seq-major [B, L, H, E])"
                       : p.seq_major_operands != 0 ? " (seq-major operands per seq_major_operands)"
                                                   : " (head-major [B, H, L, E])";
  const auto dims_of = [&](size_t i) {
    return packed ? packed_dims(ctx.shape(i), p.packed_heads, roles[i])
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
  const Shape out = p.seq_major_at(AttentionParams::kOut)
                        ? Shape{q.batch, q.seq, q.heads, v.features}
                        : Shape{q.batch, q.heads, q.seq, v.features};
  ctx.add_output(ctx.dtype(0), out);
}

}  // namespace ember::engine
