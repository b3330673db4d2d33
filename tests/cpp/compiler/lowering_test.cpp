// Lowering passes, each tested alone as before/after IR text, then the whole pipeline.
#include "ember/compiler/lowering.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "ember/compiler/conversion.h"
#include "ember/compiler/ir.h"

namespace ember::compiler {
namespace {

// The canonical text of a hand-written graph (comments, blank lines and spacing normalized).
std::string canonical(const std::string& text) { return Graph::parse(text).to_string(); }

// Parses `before`, runs `pass` and compares the result with `after`; returns the pass's count.
template <class Pass>
int expect_pass(const std::string& before, Pass pass, const std::string& after) {
  Graph g = Graph::parse(before);
  const int changed = pass(g);
  EXPECT_EQ(g.to_string(), canonical(after));
  // The result is itself valid IR text.
  EXPECT_EQ(Graph::parse(g.to_string()).to_string(), g.to_string());
  return changed;
}

// A constant owning a copy of `values`.
Value* add_float_constant(Graph& g, const std::string& name, const std::vector<float>& values) {
  auto data = std::make_shared<std::vector<float>>(values);
  return g.add_constant(
      name, ScalarType::kF32, {static_cast<int64_t>(values.size())},
      ConstantData{std::shared_ptr<const void>(data, data->data()), values.size() * sizeof(float)});
}

std::vector<float> constant_floats(const Value* v) {
  const auto* p = static_cast<const float*>(v->constant().data.get());
  return std::vector<float>(p, p + v->constant().nbytes / sizeof(float));
}

bool have_converters(const std::vector<std::string>& ops) {
  for (const std::string& op : ops) {
    if (!ConverterRegistry::instance().has(op)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// remove_dead_code

TEST(LowerRemoveDeadCode, RemovesUnusedChainsAndTheirConstants) {
  const int removed = expect_pass(R"(
graph(%x: f32[2]):
  constant %w: f32[2]
  constant %v: f32[2]
  %a = aten::add.Tensor(%x, %w, 1) : f32[2]
  %b = aten::mul.Tensor(%a, %v) : f32[2]      # dead, and so is %a through it
  %c = aten::relu(%b) : f32[2]                # dead
  %d = aten::relu(%x) : f32[2]
  %m, %i = aten::max.dim(%d, 0, False) : f32[], i64[]   # kept: %m is used
  ember::side_effect_free(%x)                 # no outputs: nothing reads it
  return (%d, %m, %x)
)",
                                  lower_remove_dead_code, R"(
graph(%x: f32[2]):
  %d = aten::relu(%x) : f32[2]
  %m, %i = aten::max.dim(%d, 0, False) : f32[], i64[]
  return (%d, %m, %x)
)");
  EXPECT_EQ(removed, 4);
}

TEST(LowerRemoveDeadCode, LeavesLiveGraphsAlone) {
  const std::string text = R"(
graph(%x: f32[2]):
  constant %w: f32[2]
  %a = aten::add.Tensor(%x, %w, 1) : f32[2]
  return (%a)
)";
  EXPECT_EQ(expect_pass(text, lower_remove_dead_code, text), 0);
}

// ---------------------------------------------------------------------------------------------
// recognize_gelu

TEST(LowerRecognizeGelu, TanhFormulaBecomesOneGelu) {
  // GPT-2's NewGELU as torch.export writes it; the formula's nodes become dead.
  const int rewritten = expect_pass(R"(
graph(%x: f16[s0, 8]):
  %h = aten::mul.Tensor(%x, 0.5) : f16[s0, 8]
  %p = aten::pow.Tensor_Scalar(%x, 3.0) : f16[s0, 8]
  %c = aten::mul.Tensor(%p, 0.044715) : f16[s0, 8]
  %i = aten::add.Tensor(%x, %c) : f16[s0, 8]
  %s = aten::mul.Tensor(%i, 0.7978845608028654) : f16[s0, 8]
  %t = aten::tanh(%s) : f16[s0, 8]
  %o = aten::add.Tensor(%t, 1.0) : f16[s0, 8]
  %y = aten::mul.Tensor(%h, %o) : f16[s0, 8]
  return (%y)
)",
                                    lower_recognize_gelu, R"(
graph(%x: f16[s0, 8]):
  %h = aten::mul.Tensor(%x, 0.5) : f16[s0, 8]
  %p = aten::pow.Tensor_Scalar(%x, 3.0) : f16[s0, 8]
  %c = aten::mul.Tensor(%p, 0.044715) : f16[s0, 8]
  %i = aten::add.Tensor(%x, %c) : f16[s0, 8]
  %s = aten::mul.Tensor(%i, 0.7978845608028654) : f16[s0, 8]
  %t = aten::tanh(%s) : f16[s0, 8]
  %o = aten::add.Tensor(%t, 1.0) : f16[s0, 8]
  %y_0 = aten::gelu(%x, "tanh") : f16[s0, 8]
  return (%y_0)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeGelu, OtherConstantsOrOperandsAreLeftAlone) {
  // 0.04 instead of 0.044715, and a half of another tensor: neither is GELU.
  const std::string text = R"(
graph(%x: f32[4], %z: f32[4]):
  %h = aten::mul.Tensor(%x, 0.5) : f32[4]
  %p = aten::pow.Tensor_Scalar(%x, 3.0) : f32[4]
  %c = aten::mul.Tensor(%p, 0.04) : f32[4]
  %i = aten::add.Tensor(%x, %c) : f32[4]
  %s = aten::mul.Tensor(%i, 0.7978845608028654) : f32[4]
  %t = aten::tanh(%s) : f32[4]
  %o = aten::add.Tensor(%t, 1.0) : f32[4]
  %y = aten::mul.Tensor(%h, %o) : f32[4]
  %h2 = aten::mul.Tensor(%z, 0.5) : f32[4]
  %y2 = aten::mul.Tensor(%h2, %o) : f32[4]
  return (%y, %y2)
)";
  EXPECT_EQ(expect_pass(text, lower_recognize_gelu, text), 0);
}

TEST(LowerRecognizeGelu, SymbolicSizeOperandsAreNotNumbers) {
  // x * x.size(0): the operand is a symbolic size, not a number the pattern could compare.
  const std::string text = R"(
graph(%x: f32[s0], %y: f32[s0]):
  %a = aten::mul.Tensor(%x, sym(s0)) : f32[s0]
  %b = aten::mul.Tensor(%a, %y) : f32[s0]
  return (%b)
)";
  EXPECT_EQ(expect_pass(text, lower_recognize_gelu, text), 0);
}

// ---------------------------------------------------------------------------------------------
// recognize_attention

TEST(LowerRecognizeAttention, BertStyleScaleAfterMatmulWithAdditiveMask) {
  // BERT's eager attention after canonicalize: the transpose is a permute, dropout is gone.
  const int rewritten = expect_pass(R"(
graph(%q: f32[s0, 4, 8, 16], %k: f32[s0, 4, 8, 16], %v: f32[s0, 4, 8, 16], %m: f32[s0, 1, 1, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[s0, 4, 16, 8]
  %s = aten::matmul(%q, %kt) : f32[s0, 4, 8, 8]
  %d = aten::div.Tensor(%s, 4.0) : f32[s0, 4, 8, 8]
  %a = aten::add.Tensor(%d, %m, 1) : f32[s0, 4, 8, 8]
  %p = aten::softmax.int(%a, -1, None) : f32[s0, 4, 8, 8]
  %o = aten::matmul(%p, %v) : f32[s0, 4, 8, 16]
  return (%o)
)",
                                    lower_recognize_attention, R"(
graph(%q: f32[s0, 4, 8, 16], %k: f32[s0, 4, 8, 16], %v: f32[s0, 4, 8, 16], %m: f32[s0, 1, 1, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[s0, 4, 16, 8]
  %s = aten::matmul(%q, %kt) : f32[s0, 4, 8, 8]
  %d = aten::div.Tensor(%s, 4.0) : f32[s0, 4, 8, 8]
  %a = aten::add.Tensor(%d, %m, 1) : f32[s0, 4, 8, 8]
  %p = aten::softmax.int(%a, -1, None) : f32[s0, 4, 8, 8]
  %o_0 = aten::scaled_dot_product_attention(%q, %k, %v, %m, 0.0, False, 0.25, False) : f32[s0, 4, 8, 16]
  return (%o_0)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeAttention, T5StyleScaleOnQueryWithPositionBias) {
  const int rewritten = expect_pass(R"(
graph(%q: f16[2, 4, 8, 16], %k: f16[2, 4, 8, 16], %v: f16[2, 4, 8, 16], %b: f16[1, 4, 8, 8]):
  %qs = aten::mul.Tensor(%q, 0.125) : f16[2, 4, 8, 16]
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f16[2, 4, 16, 8]
  %s = aten::matmul(%qs, %kt) : f16[2, 4, 8, 8]
  %a = aten::add.Tensor(%b, %s, 1) : f16[2, 4, 8, 8]
  %p = aten::_softmax(%a, 3, False) : f16[2, 4, 8, 8]
  %o = aten::matmul(%p, %v) : f16[2, 4, 8, 16]
  return (%o)
)",
                                    lower_recognize_attention, R"(
graph(%q: f16[2, 4, 8, 16], %k: f16[2, 4, 8, 16], %v: f16[2, 4, 8, 16], %b: f16[1, 4, 8, 8]):
  %qs = aten::mul.Tensor(%q, 0.125) : f16[2, 4, 8, 16]
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f16[2, 4, 16, 8]
  %s = aten::matmul(%qs, %kt) : f16[2, 4, 8, 8]
  %a = aten::add.Tensor(%b, %s, 1) : f16[2, 4, 8, 8]
  %p = aten::_softmax(%a, 3, False) : f16[2, 4, 8, 8]
  %o_0 = aten::scaled_dot_product_attention(%q, %k, %v, %b, 0.0, False, 0.125, False) : f16[2, 4, 8, 16]
  return (%o_0)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeAttention, NoMaskNoScale) {
  const int rewritten = expect_pass(R"(
graph(%q: f32[1, 2, 5, 8], %k: f32[1, 2, 6, 8], %v: f32[1, 2, 6, 3]):
  %kt = aten::permute(%k, [0, 1, -1, -2]) : f32[1, 2, 8, 6]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 5, 6]
  %p = aten::softmax.int(%s, 3, None) : f32[1, 2, 5, 6]
  %o = aten::matmul(%p, %v) : f32[1, 2, 5, 3]
  return (%o)
)",
                                    lower_recognize_attention, R"(
graph(%q: f32[1, 2, 5, 8], %k: f32[1, 2, 6, 8], %v: f32[1, 2, 6, 3]):
  %kt = aten::permute(%k, [0, 1, -1, -2]) : f32[1, 2, 8, 6]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 5, 6]
  %p = aten::softmax.int(%s, 3, None) : f32[1, 2, 5, 6]
  %o_0 = aten::scaled_dot_product_attention(%q, %k, %v, None, 0.0, False, 1.0, False) : f32[1, 2, 5, 3]
  return (%o_0)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeAttention, Gpt2CausalWhereWithConstantScaleAndFill) {
  // GPT-2: the scale and the fill are 0-d constants (torch.full folded), the causal mask a
  // folded bool constant; where() keeps the scores where the mask is true.
  Graph g = Graph::parse(R"(
graph(%q: f32[2, 4, 8, 16], %k: f32[2, 4, 8, 16], %v: f32[2, 4, 8, 16], %c: bool[1, 1, 8, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[2, 4, 16, 8]
  %s = aten::matmul(%q, %kt) : f32[2, 4, 8, 8]
  return (%s)
)");
  auto scalar = [&g](const std::string& name, float value) {
    auto data = std::make_shared<float>(value);
    return g.add_constant(name, ScalarType::kF32, {}, ConstantData{data, sizeof(float)});
  };
  Value* four = scalar("four", 4.0f);
  Value* fill = scalar("fill", -3.4028234663852886e+38f);
  Value* s = g.find_value("s");
  const TensorType scores{ScalarType::kF32, s->shape()};
  Node* d = g.add_node("aten::div.Tensor", {s, four}, {scores}, {"d"});
  Node* w = g.add_node("aten::where.self", {g.find_value("c"), d->output(), fill}, {scores},
                       {"w"});
  Node* p = g.add_node("aten::softmax.int", {w->output(), int64_t{-1}, NoneArg{}}, {scores},
                       {"p"});
  Node* o = g.add_node("aten::matmul", {p->output(), g.find_value("v")},
                       {TensorType{ScalarType::kF32, g.find_value("q")->shape()}}, {"o"});
  g.set_outputs({o->output()});
  EXPECT_EQ(lower_recognize_attention(g), 1);
  lower_remove_dead_code(g);
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%q: f32[2, 4, 8, 16], %k: f32[2, 4, 8, 16], %v: f32[2, 4, 8, 16], %c: bool[1, 1, 8, 8]):
  %o_0 = aten::scaled_dot_product_attention(%q, %k, %v, %c, 0.0, False, 0.25, False) : f32[2, 4, 8, 16]
  return (%o_0)
)"));
}

TEST(LowerRecognizeAttention, T5PositionBiasThenPaddingMaskAreSummed) {
  // T5: scores * 1.0, + position bias, + padding mask; softmax with dtype=f32 on f32 scores.
  const int rewritten = expect_pass(R"(
graph(%q: f32[2, 4, 8, 16], %k: f32[2, 4, 8, 16], %v: f32[2, 4, 8, 16], %b: f32[1, 4, 8, 8], %m: f32[2, 1, 1, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[2, 4, 16, 8]
  %s = aten::matmul(%q, %kt) : f32[2, 4, 8, 8]
  %u = aten::mul.Tensor(%s, 1.0) : f32[2, 4, 8, 8]
  %a = aten::add.Tensor(%u, %b, 1) : f32[2, 4, 8, 8]
  %c = aten::add.Tensor(%a, %m, 1) : f32[2, 4, 8, 8]
  %p = aten::softmax.int(%c, -1, dtype(f32)) : f32[2, 4, 8, 8]
  %o = aten::matmul(%p, %v) : f32[2, 4, 8, 16]
  return (%o)
)",
                                    lower_recognize_attention, R"(
graph(%q: f32[2, 4, 8, 16], %k: f32[2, 4, 8, 16], %v: f32[2, 4, 8, 16], %b: f32[1, 4, 8, 8], %m: f32[2, 1, 1, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[2, 4, 16, 8]
  %s = aten::matmul(%q, %kt) : f32[2, 4, 8, 8]
  %u = aten::mul.Tensor(%s, 1.0) : f32[2, 4, 8, 8]
  %a = aten::add.Tensor(%u, %b, 1) : f32[2, 4, 8, 8]
  %c = aten::add.Tensor(%a, %m, 1) : f32[2, 4, 8, 8]
  %p = aten::softmax.int(%c, -1, dtype(f32)) : f32[2, 4, 8, 8]
  %attn_mask_0 = aten::add.Tensor(%m, %b, 1) : f32[2, 4, 8, 8]
  %o_1 = aten::scaled_dot_product_attention(%q, %k, %v, %attn_mask_0, 0.0, False, 1.0, False) : f32[2, 4, 8, 16]
  return (%o_1)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeAttention, HalfModelsSoftmaxInF32AndBack) {
  // Llama/T5 eager on f16: softmax(x, dtype=torch.float32).to(torch.float16).
  const int rewritten = expect_pass(R"(
graph(%q: f16[1, 2, 4, 8], %k: f16[1, 2, 4, 8], %v: f16[1, 2, 4, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f16[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f16[1, 2, 4, 4]
  %d = aten::mul.Tensor(%s, 0.5) : f16[1, 2, 4, 4]
  %w = aten::softmax.int(%d, -1, dtype(f32)) : f32[1, 2, 4, 4]
  %p = aten::_to_copy(%w, dtype(f16), None, None, None, False, None) : f16[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f16[1, 2, 4, 8]
  return (%o)
)",
                                    lower_recognize_attention, R"(
graph(%q: f16[1, 2, 4, 8], %k: f16[1, 2, 4, 8], %v: f16[1, 2, 4, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f16[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f16[1, 2, 4, 4]
  %d = aten::mul.Tensor(%s, 0.5) : f16[1, 2, 4, 4]
  %w = aten::softmax.int(%d, -1, dtype(f32)) : f32[1, 2, 4, 4]
  %p = aten::_to_copy(%w, dtype(f16), None, None, None, False, None) : f16[1, 2, 4, 4]
  %o_0 = aten::scaled_dot_product_attention(%q, %k, %v, None, 0.0, False, 0.5, False) : f16[1, 2, 4, 8]
  return (%o_0)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeAttention, MaskedFillBecomesTheInverseBoolMask) {
  const int rewritten = expect_pass(R"(
graph(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8], %drop: bool[1, 1, 1, 4]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 4, 4]
  %d = aten::div.Tensor(%s, 2.0) : f32[1, 2, 4, 4]
  %f = aten::masked_fill.Scalar(%d, %drop, -inf) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%f, -1, None) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o)
)",
                                    lower_recognize_attention, R"(
graph(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8], %drop: bool[1, 1, 1, 4]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 4, 4]
  %d = aten::div.Tensor(%s, 2.0) : f32[1, 2, 4, 4]
  %f = aten::masked_fill.Scalar(%d, %drop, -inf) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%f, -1, None) : f32[1, 2, 4, 4]
  %attn_keep_0 = aten::logical_not(%drop) : bool[1, 1, 1, 4]
  %o_1 = aten::scaled_dot_product_attention(%q, %k, %v, %attn_keep_0, 0.0, False, 0.5, False) : f32[1, 2, 4, 8]
  return (%o_1)
)");
  EXPECT_EQ(rewritten, 1);
}

TEST(LowerRecognizeAttention, NearMissesAreLeftAlone) {
  // The mask added before the scale (a different formula), a softmax over another dim, a key
  // that is not transposed, scores read elsewhere, a bool mask with a mild fill: no rewrite.
  const std::vector<std::string> texts = {R"(
graph(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8], %m: f32[1, 1, 1, 4]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 4, 4]
  %a = aten::add.Tensor(%s, %m, 1) : f32[1, 2, 4, 4]
  %d = aten::div.Tensor(%a, 4.0) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%d, -1, None) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o)
)", R"(
graph(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%s, -2, None) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o)
)", R"(
graph(%q: f32[1, 2, 4, 4], %k: f32[1, 2, 4, 4], %v: f32[1, 2, 4, 8]):
  %s = aten::matmul(%q, %k) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%s, -1, None) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o)
)", R"(
graph(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%s, -1, None) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o, %p)
)", R"(
graph(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8], %c: bool[1, 1, 4, 4]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f32[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f32[1, 2, 4, 4]
  %w = aten::where.self(%c, %s, -10.0) : f32[1, 2, 4, 4]
  %p = aten::softmax.int(%w, -1, None) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o)
)", R"(
graph(%q: f16[1, 2, 4, 8], %k: f16[1, 2, 4, 8], %v: f32[1, 2, 4, 8]):
  %kt = aten::permute(%k, [0, 1, 3, 2]) : f16[1, 2, 8, 4]
  %s = aten::matmul(%q, %kt) : f16[1, 2, 4, 4]
  %p = aten::softmax.int(%s, -1, dtype(f32)) : f32[1, 2, 4, 4]
  %o = aten::matmul(%p, %v) : f32[1, 2, 4, 8]
  return (%o)
)"};
  for (const std::string& text : texts) {
    EXPECT_EQ(expect_pass(text, lower_recognize_attention, text), 0) << text;
  }
}

// ---------------------------------------------------------------------------------------------
// remove_noops

TEST(LowerRemoveNoops, BypassesIdentityOps) {
  const int removed = expect_pass(R"(
graph(%x: f32[s0, 4]):
  %d0 = aten::dropout(%x, 0.5, False) : f32[s0, 4]
  %d1 = aten::dropout(%d0, 0.0, True) : f32[s0, 4]
  %a = aten::detach(%d1) : f32[s0, 4]
  %b = aten::alias(%a) : f32[s0, 4]
  %c = aten::clone(%b, None) : f32[s0, 4]
  %e = aten::contiguous(%c, 0) : f32[s0, 4]
  %f = aten::lift_fresh_copy(%e) : f32[s0, 4]
  %g = aten::_to_copy(%f, dtype(f32), None, None, None, False, None) : f32[s0, 4]
  %h = aten::to.dtype(%g, dtype(f32), False, False, None) : f32[s0, 4]
  %i = aten::view(%h, [s0, 4]) : f32[s0, 4]
  %j = aten::reshape(%i, [-1, 4]) : f32[s0, 4]
  %k = aten::expand(%j, [s0, 4], False) : f32[s0, 4]
  %r = aten::relu(%k) : f32[s0, 4]
  %o = aten::clone(%r, None) : f32[s0, 4]
  return (%o, %c)
)",
                                  lower_remove_noops, R"(
graph(%x: f32[s0, 4]):
  %c = aten::clone(%x, None) : f32[s0, 4]
  %r = aten::relu(%c) : f32[s0, 4]
  %o = aten::clone(%r, None) : f32[s0, 4]
  return (%o, %c)
)");
  EXPECT_EQ(removed, 11);
}

TEST(LowerRemoveNoops, KeepsOpsThatChangeValues) {
  const std::string text = R"(
graph(%x: f32[2, 2], %y: f32[s0]):
  %d = aten::dropout(%x, 0.5, True) : f32[2, 2]
  %n, %mask = aten::native_dropout(%x, 0.5, False) : f32[2, 2], bool[2, 2]
  %h = aten::_to_copy(%x, dtype(f16), None, None, None, False, None) : f16[2, 2]
  %dev = aten::_to_copy(%x, None, None, "cuda:0", None, False, None) : f32[2, 2]
  %v = aten::view(%x, [4]) : f32[4]
  %e = aten::expand(%y, [2, s0], False) : f32[2, s0]
  %p = aten::permute(%x, [1, 0]) : f32[2, 2]
  return (%d, %n, %h, %dev, %v, %e, %p)
)";
  EXPECT_EQ(expect_pass(text, lower_remove_noops, text), 0);
}

// A no-op whose result is a graph output stays: bypassed, PyTorch would have to re-run it
// outside the engines to make that output.
TEST(LowerRemoveNoops, KeepsNoopsThatMakeGraphOutputs) {
  const std::string text = R"(
graph(%x: f32[3]):
  %c = aten::clone(%x, None) : f32[3]
  %v = aten::view(%c, [3]) : f32[3]
  return (%v)
)";
  EXPECT_EQ(expect_pass(text, lower_remove_noops, R"(
graph(%x: f32[3]):
  %v = aten::view(%x, [3]) : f32[3]
  return (%v)
)"),
            1);
}

// ---------------------------------------------------------------------------------------------
// canonicalize

TEST(LowerCanonicalize, TransposesBecomePermutes) {
  const int rewritten = expect_pass(R"(
graph(%x: f32[s0, 3], %v: f32[5], %y: f32[2, 3, 4]):
  %t = aten::t(%x) : f32[3, s0] {fx="t", module="fc"}
  %t1 = aten::t(%v) : f32[5]
  %tr = aten::transpose.int(%y, -1, 0) : f32[4, 3, 2]
  %same = aten::transpose.int(%y, 1, -2) : f32[2, 3, 4]
  %sw = aten::swapaxes(%y, 0, 1) : f32[3, 2, 4]
  return (%t, %t1, %tr, %same, %sw)
)",
                                    lower_canonicalize, R"(
graph(%x: f32[s0, 3], %v: f32[5], %y: f32[2, 3, 4]):
  %t_0 = aten::permute(%x, [1, 0]) : f32[3, s0] {fx="t", module="fc"}
  %tr_1 = aten::permute(%y, [2, 1, 0]) : f32[4, 3, 2]
  %sw_2 = aten::permute(%y, [1, 0, 2]) : f32[3, 2, 4]
  return (%t_0, %v, %tr_1, %y, %sw_2)
)");
  EXPECT_EQ(rewritten, 5);
}

TEST(LowerCanonicalize, SqueezeFlattenAndFullReductions) {
  const int rewritten = expect_pass(R"(
graph(%x: f32[1, s0, 1, 3], %y: f32[s0, 3, 4, 5], %z: f32[]):
  %sq = aten::squeeze(%x) : f32[s0, 3]
  %f0 = aten::flatten.using_ints(%y, 1, -1) : f32[s0, 60]
  %f1 = aten::flatten.using_ints(%y, 0, 1) : f32[s0*3, 4, 5]
  %f2 = aten::flatten.using_ints(%z, 0, -1) : f32[1]
  %m = aten::mean(%y) : f32[]
  %s = aten::sum(%y, dtype(f32)) : f32[]
  return (%sq, %f0, %f1, %f2, %m, %s)
)",
                                    lower_canonicalize, R"(
graph(%x: f32[1, s0, 1, 3], %y: f32[s0, 3, 4, 5], %z: f32[]):
  %sq_0 = aten::squeeze.dims(%x, [0, 2]) : f32[s0, 3]
  %f0_1 = aten::view(%y, [s0, 60]) : f32[s0, 60]
  %f1_2 = aten::view(%y, [s0*3, 4, 5]) : f32[s0*3, 4, 5]
  %f2_3 = aten::view(%z, [1]) : f32[1]
  %m_4 = aten::mean.dim(%y, [0, 1, 2, 3], False, None) : f32[]
  %s_5 = aten::sum.dim_IntList(%y, [0, 1, 2, 3], False, dtype(f32)) : f32[]
  return (%sq_0, %f0_1, %f1_2, %f2_3, %m_4, %s_5)
)");
  EXPECT_EQ(rewritten, 6);
}

TEST(LowerCanonicalize, ScalarOverloadsBecomeTensorOverloads) {
  EXPECT_EQ(expect_pass(R"(
graph(%x: f32[2]):
  %a = aten::add.Scalar(%x, 2, 1) : f32[2]
  %m = aten::mul.Scalar(%a, 0.5) : f32[2]
  %e = aten::eq.Scalar(%m, 1.0) : bool[2]
  return (%e)
)",
                        lower_canonicalize, R"(
graph(%x: f32[2]):
  %a_0 = aten::add.Tensor(%x, 2, 1) : f32[2]
  %m_1 = aten::mul.Tensor(%a_0, 0.5) : f32[2]
  %e_2 = aten::eq.Tensor(%m_1, 1.0) : bool[2]
  return (%e_2)
)"),
            3);
}

TEST(LowerCanonicalize, LeavesMalformedOrCanonicalNodesAlone) {
  const std::string text = R"(
graph(%x: f32[s0, 3], %y: f32[2, 3]):
  %bad = aten::transpose.int(%x, 0, 5) : f32[3, s0]
  %sym = aten::transpose.int(%x, sym(s0), 1) : f32[3, s0]
  %sq = aten::squeeze(%x) : f32[3]
  %p = aten::permute(%y, [1, 0]) : f32[3, 2]
  %a = aten::add.Tensor(%y, 1.0, 1) : f32[2, 3]
  return (%bad, %sym, %sq, %p, %a)
)";
  EXPECT_EQ(expect_pass(text, lower_canonicalize, text), 0);
}

// ---------------------------------------------------------------------------------------------
// fold_constants

// Two constants -> add -> relu, feeding a node that also reads an input: add and relu fold into
// one constant holding relu(a + b); the node reading the input stays.
TEST(LowerFoldConstants, FoldsChainsOfConstantNodes) {
  if (!have_converters({"aten::add.Tensor", "aten::relu", "aten::mul.Tensor"})) {
    GTEST_SKIP() << "converters for add/relu/mul are not registered yet";
  }
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {4});
  Value* a = add_float_constant(g, "a", {1.0f, -2.0f, 3.0f, -4.0f});
  Value* b = add_float_constant(g, "b", {0.5f, 0.5f, 0.5f, 0.5f});
  Node* add =
      g.add_node("aten::add.Tensor", {a, b, int64_t{1}}, {{ScalarType::kF32, {4}}}, {"add"});
  Node* relu = g.add_node("aten::relu", {add->output()}, {{ScalarType::kF32, {4}}}, {"relu"});
  relu->output()->set_fx_name("relu");
  Node* mul =
      g.add_node("aten::mul.Tensor", {relu->output(), x}, {{ScalarType::kF32, {4}}}, {"mul"});
  g.set_outputs({mul->output()});

  EXPECT_EQ(lower_fold_constants(g, CompileSettings{}), 2);
  EXPECT_EQ(lower_remove_dead_code(g), 0);  // folding removed the nodes; compact drops a, b
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%x: f32[4]):
  constant %fold_1: f32[4] {fx="relu"}
  %mul = aten::mul.Tensor(%fold_1, %x) : f32[4]
  return (%mul)
)"));
  const Value* folded = g.find_value("fold_1");
  ASSERT_NE(folded, nullptr);
  EXPECT_EQ(constant_floats(folded), (std::vector<float>{1.5f, 0.0f, 3.5f, 0.0f}));
}

TEST(LowerFoldConstants, RespectsTheSizeLimit) {
  if (!have_converters({"aten::add.Tensor"})) GTEST_SKIP() << "no aten::add.Tensor converter";
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Value* a = add_float_constant(g, "a", {1.0f, 2.0f});
  Node* add =
      g.add_node("aten::add.Tensor", {a, a, int64_t{1}}, {{ScalarType::kF32, {2}}}, {"add"});
  Node* use = g.add_node("aten::add.Tensor", {x, add->output(), int64_t{1}},
                         {{ScalarType::kF32, {2}}}, {"use"});
  g.set_outputs({use->output()});
  EXPECT_EQ(lower_fold_constants(g, CompileSettings{}, /*max_bytes=*/4), 0);
  EXPECT_EQ(lower_fold_constants(g, CompileSettings{}, /*max_bytes=*/8), 1);
  EXPECT_EQ(constant_floats(g.nodes()[0]->arg_tensor(1)), (std::vector<float>{2.0f, 4.0f}));
}

// What must not fold: constants without data (parsed text), inputs, symbolic shapes, dead
// nodes, ops without a converter and random ops.
TEST(LowerFoldConstants, SkipsWhatCannotOrMustNotFold) {
  const std::string text = R"(
graph(%x: f32[s0]):
  constant %c: f32[2]
  %a = aten::add.Tensor(%c, %c, 1) : f32[2]
  %b = aten::add.Tensor(%x, %x, 1) : f32[s0]
  return (%a, %b)
)";
  EXPECT_EQ(expect_pass(
                text, [](Graph& g) { return lower_fold_constants(g, CompileSettings{}); }, text),
            0);

  Graph g;
  Value* a = add_float_constant(g, "a", {1.0f, 2.0f});
  Node* unknown = g.add_node("ember::no_such_op", {a}, {{ScalarType::kF32, {2}}}, {"u"});
  Node* rand = g.add_node("aten::rand_like", {a, NoneArg{}}, {{ScalarType::kF32, {2}}}, {"r"});
  Node* drop = g.add_node("aten::dropout", {a, 0.5, true}, {{ScalarType::kF32, {2}}}, {"d"});
  g.add_node("aten::relu", {a}, {{ScalarType::kF32, {2}}}, {"dead"});
  g.set_outputs({unknown->output(), rand->output(), drop->output()});
  EXPECT_EQ(lower_fold_constants(g, CompileSettings{}), 0);
  EXPECT_EQ(g.num_nodes(), 4u);
}

// Test-only converters (op names no real program uses) pin down the skip rules independently
// of the real converter set: a converter that throws, and an identity under a random-looking name.
void register_test_converters() {
  static const bool registered = [] {
    auto identity = [](ConversionContext& ctx, const Node& node) {
      ctx.set_output(node, 0, ctx.net().add_identity(ctx.input(node, 0))->output());
    };
    auto& registry = ConverterRegistry::instance();
    registry.add(ConverterEntry{"ember_test::identity", identity, nullptr, 0, true, __FILE__});
    registry.add(ConverterEntry{"ember_test::randish", identity, nullptr, 0, true, __FILE__});
    registry.add(ConverterEntry{"ember_test::throws",
                                [](ConversionContext&, const Node& node) {
                                  throw Error(node.describe() + ": converter failed on purpose");
                                },
                                nullptr, 0, true, __FILE__});
    return true;
  }();
  (void)registered;
}

TEST(LowerFoldConstants, SkipsFailedConversionsAndRandomOps) {
  register_test_converters();
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Value* a = add_float_constant(g, "a", {1.0f, 2.0f});
  Node* id = g.add_node("ember_test::identity", {a}, {{ScalarType::kF32, {2}}}, {"id"});
  Node* thr = g.add_node("ember_test::throws", {a}, {{ScalarType::kF32, {2}}}, {"thr"});
  Node* rnd = g.add_node("ember_test::randish", {a}, {{ScalarType::kF32, {2}}}, {"rnd"});
  std::vector<Value*> outs;
  for (Node* n : {id, thr, rnd}) {
    outs.push_back(g.add_node("aten::add.Tensor", {x, n->output(), int64_t{1}},
                              {{ScalarType::kF32, {2}}}, {"sum_" + n->output()->name()})
                       ->output());
  }
  g.set_outputs(outs);
  EXPECT_EQ(lower_fold_constants(g, CompileSettings{}), 1);
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%x: f32[2]):
  constant %a: f32[2]
  constant %fold_0: f32[2]
  %thr = ember_test::throws(%a) : f32[2]
  %rnd = ember_test::randish(%a) : f32[2]
  %sum_id = aten::add.Tensor(%x, %fold_0, 1) : f32[2]
  %sum_thr = aten::add.Tensor(%x, %thr, 1) : f32[2]
  %sum_rnd = aten::add.Tensor(%x, %rnd, 1) : f32[2]
  return (%sum_id, %sum_thr, %sum_rnd)
)"));
  EXPECT_EQ(constant_floats(g.find_value("fold_0")), (std::vector<float>{1.0f, 2.0f}));
}

// A node whose result is a graph output stays: folded, PyTorch would have to produce the
// output outside the engines on every call.
TEST(LowerFoldConstants, LeavesGraphOutputsToTheEngine) {
  Graph g;
  Value* a = add_float_constant(g, "a", {1.0f, -2.0f});
  Node* relu = g.add_node("aten::relu", {a}, {{ScalarType::kF32, {2}}}, {"r"});
  g.set_outputs({relu->output()});
  EXPECT_EQ(lower_fold_constants(g, CompileSettings{}), 0);
  EXPECT_EQ(g.num_nodes(), 1u);
}

// ---------------------------------------------------------------------------------------------
// The pipeline

TEST(Lower, RunsPassesUntilNothingChanges) {
  Graph g = Graph::parse(R"(
graph(%x: f32[2, 3]):
  constant %w: f32[3, 2]
  %c = aten::clone(%x, None) : f32[2, 3]
  %t = aten::t(%c) : f32[3, 2]
  %s = aten::add.Scalar(%t, 1, 1) : f32[3, 2]
  %dead = aten::mul.Tensor(%s, %w) : f32[3, 2]
  %f = aten::flatten.using_ints(%s, 0, -1) : f32[6]
  return (%f)
)");
  const LoweringReport report = lower(g, CompileSettings{});
  EXPECT_EQ(g.to_string(), canonical(R"(
graph(%x: f32[2, 3]):
  %t_0 = aten::permute(%x, [1, 0]) : f32[3, 2]
  %s_1 = aten::add.Tensor(%t_0, 1, 1) : f32[3, 2]
  %f_2 = aten::view(%s_1, [6]) : f32[6]
  return (%f_2)
)"));
  const std::vector<std::string> expected_log = {
      "remove_noops: removed 1 node",   "canonicalize: rewrote 3 nodes",
      "recognize_gelu: rewrote 0 nodes", "fold_constants: folded 0 nodes",
      "recognize_attention: rewrote 0 nodes",
      "remove_dead_code: removed 1 node", "remove_noops: removed 0 nodes",
      "canonicalize: rewrote 0 nodes",  "recognize_gelu: rewrote 0 nodes",
      "fold_constants: folded 0 nodes", "recognize_attention: rewrote 0 nodes",
      "remove_dead_code: removed 0 nodes",
      "lower: done after 2 rounds",
  };
  EXPECT_EQ(report.log, expected_log);
}

TEST(Lower, FoldsConstantSubgraphsExposedByOtherPasses) {
  if (!have_converters({"aten::add.Tensor", "aten::relu", "aten::mul.Tensor"})) {
    GTEST_SKIP() << "converters for add/relu/mul are not registered yet";
  }
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Value* a = add_float_constant(g, "a", {1.0f, -3.0f});
  Value* b = add_float_constant(g, "b", {2.0f, 1.0f});
  Node* clone = g.add_node("aten::clone", {a, NoneArg{}}, {{ScalarType::kF32, {2}}}, {"c"});
  Node* add = g.add_node("aten::add.Scalar", {clone->output(), 1.0, int64_t{1}},
                         {{ScalarType::kF32, {2}}}, {"s"});
  Node* mul = g.add_node("aten::mul.Tensor", {add->output(), b}, {{ScalarType::kF32, {2}}}, {"m"});
  Node* relu = g.add_node("aten::relu", {mul->output()}, {{ScalarType::kF32, {2}}}, {"r"});
  Node* out =
      g.add_node("aten::mul.Tensor", {relu->output(), x}, {{ScalarType::kF32, {2}}}, {"out"});
  g.set_outputs({out->output()});
  lower(g, CompileSettings{});
  ASSERT_EQ(g.num_nodes(), 1u);
  const Value* folded = g.nodes()[0]->arg_tensor(0);
  ASSERT_TRUE(folded->is_constant());
  EXPECT_EQ(constant_floats(folded), (std::vector<float>{4.0f, 0.0f}));  // relu((a+1)*b)
  EXPECT_EQ(g.constants().size(), 1u);
}

}  // namespace
}  // namespace ember::compiler
