// Tests for DimExpr: folding and simplification, equality, evaluation, interval bounds, and the
// parser (round trips and malformed input). Random tests check simplification against a naive
// evaluation of the unsimplified tree, and bounds against sampled evaluations.
#include "ember/engine/dim.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "ember/engine/types.h"

namespace ember::engine {

// Readable gtest failure output (internal linkage so no other test file can clash with it).
static void PrintTo(const DimExpr& e, std::ostream* os) { *os << e.to_string(); }

namespace {

using Op = DimExpr::Op;

constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

DimExpr sym(const char* name) { return DimExpr::symbol(name); }

// Expects `fn` to throw Error whose message contains `needle`.
template <typename F>
void expect_error(F fn, const std::string& needle, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": expected Error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << what << ": message was: " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": expected Error, got another exception: " << e.what();
  }
}

// ---------------------------------------------------------------- folding

TEST(DimExprFold, ConstantsFoldWithPythonSemantics) {
  EXPECT_EQ((DimExpr(2) * 3).constant(), 6);
  EXPECT_EQ((DimExpr(2) + 3).constant(), 5);
  EXPECT_EQ((DimExpr(2) - 3).constant(), -1);
  EXPECT_EQ(floor_div(7, 2).constant(), 3);
  EXPECT_EQ(floor_div(-7, 2).constant(), -4);
  EXPECT_EQ(floor_div(7, -2).constant(), -4);
  EXPECT_EQ(floor_div(-7, -2).constant(), 3);
  EXPECT_EQ(floor_div(-8, 2).constant(), -4);
  EXPECT_EQ(mod(7, 3).constant(), 1);
  EXPECT_EQ(mod(-7, 3).constant(), 2);
  EXPECT_EQ(mod(7, -3).constant(), -2);
  EXPECT_EQ(mod(-7, -3).constant(), -1);
  EXPECT_EQ(mod(-6, 3).constant(), 0);
  EXPECT_EQ(mod(kI64Min, -1).constant(), 0);
  EXPECT_EQ(min(3, -4).constant(), -4);
  EXPECT_EQ(max(3, -4).constant(), 3);
  EXPECT_TRUE(DimExpr().is_constant());
  EXPECT_EQ(DimExpr().constant(), 0);
  EXPECT_EQ(DimExpr(kI64Min).constant(), kI64Min);
}

TEST(DimExprFold, OverflowAndDivisionByZeroThrow) {
  expect_error([] { (void)(DimExpr(kI64Max) + 1); }, "overflows int64", "max + 1");
  expect_error([] { (void)(DimExpr(kI64Min) - 1); }, "overflows int64", "min - 1");
  expect_error([] { (void)(DimExpr(kI64Max) * 2); }, "overflows int64", "max * 2");
  expect_error([] { (void)(DimExpr(kI64Min) * -1); }, "overflows int64", "min * -1");
  expect_error([] { (void)floor_div(kI64Min, -1); }, "overflows int64", "min // -1");
  expect_error([] { (void)floor_div(3, 0); }, "division by zero", "3 // 0");
  expect_error([] { (void)mod(3, 0); }, "division by zero", "3 % 0");
  // A constant zero divisor is an error even with a symbolic dividend: it can never evaluate.
  expect_error([] { (void)floor_div(sym("x"), 0); }, "floordiv(x, 0)", "x // 0");
  expect_error([] { (void)mod(sym("x"), 0); }, "mod(x, 0)", "x % 0");
}

TEST(DimExprFold, NestedConstantsFold) {
  const DimExpr x = sym("x");
  EXPECT_EQ((x + 2) + 3, x + 5);
  EXPECT_EQ(((x + 2) + 3).to_string(), "x+5");
  EXPECT_EQ((x * 2) * 3, x * 6);
  EXPECT_EQ(((x * 2) * 3).to_string(), "x*6");
  EXPECT_EQ(3 + (x + 2), x + 5);
  EXPECT_EQ((x + 1) - 1, x);
  EXPECT_EQ((x - 1) + 1, x);
  EXPECT_EQ(x + 2 - 2 - 1, x - 1);
  EXPECT_EQ(min(min(x, 3), 5), min(x, 3));
  EXPECT_EQ(max(max(x, 3), 5), max(x, 5));
  EXPECT_EQ((x + 1) + sym("y"), (x + sym("y")) + 1);
  EXPECT_EQ(((x + 1) + (sym("y") + 2)).to_string(), "x+y+3");
  EXPECT_EQ((x * 2) * (sym("y") * 3), (x * sym("y")) * 6);
  // A nested fold that would overflow is left unfolded (x may be negative), not an error.
  const DimExpr big = (x + kI64Max) + 1;
  EXPECT_EQ(big.op(), Op::kAdd);
  EXPECT_EQ(big.evaluate({{"x", -5}}), kI64Max - 4);
}

// ---------------------------------------------------------------- simplification

TEST(DimExprSimplify, Identities) {
  const DimExpr x = sym("x");
  EXPECT_EQ(x + 0, x);
  EXPECT_EQ(DimExpr(0) + x, x);
  EXPECT_EQ(x - 0, x);
  EXPECT_EQ(x * 1, x);
  EXPECT_EQ(DimExpr(1) * x, x);
  EXPECT_EQ(x * 0, DimExpr(0));
  EXPECT_EQ(DimExpr(0) * x, DimExpr(0));
  EXPECT_EQ(floor_div(x, 1), x);
  EXPECT_EQ(mod(x, 1), DimExpr(0));
  EXPECT_EQ(mod(x, -1), DimExpr(0));
  EXPECT_EQ(x - x, DimExpr(0));
  EXPECT_EQ((x * 3 + 1) - (x * 3 + 1), DimExpr(0));
  EXPECT_EQ(min(x, x), x);
  EXPECT_EQ(max(x + 1, x + 1), x + 1);
  EXPECT_EQ(floor_div(x * 12, 12), x);
  EXPECT_EQ(floor_div(x * 12, 4), x * 3);
  EXPECT_EQ(floor_div(x * 12, -4), x * -3);
  EXPECT_EQ(mod(x * 12, 4), DimExpr(0));
  EXPECT_NE(floor_div(x * 12, 5), x * 2);
  EXPECT_EQ(x - 3, x + (-3));
  EXPECT_EQ(x - kI64Min, DimExpr::binary(Op::kSub, x, kI64Min));  // -min is not representable
}

TEST(DimExprSimplify, LikeTermsAndAbsorption) {
  const DimExpr x = sym("x"), y = sym("y");
  EXPECT_EQ(x + x, x * 2);
  EXPECT_EQ(x * 3 + x, x * 4);
  EXPECT_EQ(x + x * 3, x * 4);
  EXPECT_EQ(x * 3 - x, x * 2);
  EXPECT_EQ(x - x * 3, x * -2);
  EXPECT_EQ(x * 2 + x * -2, DimExpr(0));
  EXPECT_EQ((x + 1) + x, x * 2 + 1);
  // A concat of many equal dynamic dims stays one term.
  DimExpr sum = 0;
  for (int i = 0; i < 300; ++i) sum = sum + x;
  EXPECT_EQ(sum, x * 300);
  // Repeated broadcasts of the same dims do not grow the expression.
  DimExpr b = max(x, y);
  for (int i = 0; i < 100; ++i) b = max(max(b, y), x);
  EXPECT_EQ(b, max(x, y));
  EXPECT_EQ(min(y, min(x, y)), min(x, y));
  EXPECT_EQ(max(max(x, 3), x), max(x, 3));
  EXPECT_NE(x + y, x * 2);
}

TEST(DimExprSimplify, CommutativeOpsAreCanonical) {
  const DimExpr a = sym("a"), b = sym("b"), c = sym("c");
  EXPECT_EQ(a + b, b + a);
  EXPECT_EQ(a * b, b * a);
  EXPECT_EQ(min(a, b), min(b, a));
  EXPECT_EQ(max(a, b), max(b, a));
  EXPECT_EQ(a + (b + c), (b + c) + a);
  EXPECT_EQ(a * b * 4, 4 * (b * a));
  EXPECT_NE(a - b, b - a);
  EXPECT_NE(floor_div(a, b), floor_div(b, a));
  // The constant operand goes to the right.
  const DimExpr e = DimExpr(2) + a;
  ASSERT_EQ(e.op(), Op::kAdd);
  EXPECT_TRUE(e.rhs().is_constant());
  EXPECT_EQ(e.rhs().constant(), 2);
  EXPECT_EQ(e.lhs(), a);
  EXPECT_TRUE((DimExpr(3) * a).rhs().is_constant());
  EXPECT_TRUE(min(DimExpr(3), a).rhs().is_constant());
  EXPECT_EQ((b + a).to_string(), "a+b");
}

TEST(DimExprSimplify, ToStringForms) {
  const DimExpr x = sym("x"), batch = sym("batch"), seq = sym("seq");
  EXPECT_EQ((batch * 12).to_string(), "batch*12");
  EXPECT_EQ(floor_div(seq + 1, 2).to_string(), "floordiv(seq+1, 2)");
  EXPECT_EQ(min(sym("a"), sym("b")).to_string(), "min(a, b)");
  EXPECT_EQ(mod(x, 4).to_string(), "mod(x, 4)");
  EXPECT_EQ(max(x, 4).to_string(), "max(x, 4)");
  EXPECT_EQ((x - 3).to_string(), "x-3");
  EXPECT_EQ((x * -3).to_string(), "x*(-3)");
  EXPECT_EQ(DimExpr(-3).to_string(), "-3");
  EXPECT_EQ((DimExpr(0) - x).to_string(), "0-x");
  EXPECT_EQ(((x + 1) * 2).to_string(), "(x+1)*2");
  EXPECT_EQ((x - (seq - 1)).to_string(), "x-(seq-1)");
  EXPECT_EQ((x + kI64Min).to_string(), "x+(-9223372036854775808)");
  EXPECT_EQ(DimExpr::binary(Op::kSub, x, kI64Min).to_string(), "x-(-9223372036854775808)");
}

TEST(DimExprSimplify, AccessorsRejectWrongKinds) {
  const DimExpr x = sym("x");
  expect_error([&] { (void)x.constant(); }, "not a constant", "constant() on symbol");
  expect_error([] { (void)DimExpr(3).symbol_name(); }, "not a symbol", "symbol_name() on const");
  expect_error([&] { (void)x.lhs(); }, "no operands", "lhs() on leaf");
  expect_error([] { (void)DimExpr(1).rhs(); }, "no operands", "rhs() on leaf");
  expect_error([&] { (void)DimExpr::binary(Op::kConst, x, x); }, "not a binary", "binary(kConst)");
  expect_error([&] { (void)DimExpr::binary(static_cast<Op>(200), x, x); }, "not a binary",
               "binary(200)");
  for (const char* bad : {"", "1x", "a-b", "a b", "é", "x\n"}) {
    expect_error([&] { (void)DimExpr::symbol(bad); }, "invalid dimension symbol", bad);
  }
  EXPECT_EQ(DimExpr::symbol("_A9").symbol_name(), "_A9");
  // A moved-from DimExpr stays usable (reads as 0) instead of crashing.
  DimExpr moved = x + 1;
  DimExpr taker = std::move(moved);
  EXPECT_EQ(moved.to_string(), "0");  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(taker.to_string(), "x+1");
}

// ---------------------------------------------------------------- equality

TEST(DimExprEquality, Structural) {
  EXPECT_EQ(DimExpr(5), DimExpr(5));
  EXPECT_NE(DimExpr(5), DimExpr(6));
  EXPECT_EQ(sym("x"), sym("x"));
  EXPECT_NE(sym("x"), sym("y"));
  EXPECT_NE(sym("x"), DimExpr(0));
  EXPECT_EQ(sym("x") * 2 + 1, sym("x") * 2 + 1);
  EXPECT_NE(sym("a") + sym("b"), sym("a") * sym("b"));
  EXPECT_NE(floor_div(sym("a"), 2), mod(sym("a"), 2));
  EXPECT_NE(min(sym("a"), 2), max(sym("a"), 2));
  const DimExpr e = floor_div(sym("h") + 2 * 3 - 7, 2) + 1;
  const DimExpr copy = e;
  EXPECT_EQ(e, copy);
}

// ---------------------------------------------------------------- evaluate

TEST(DimExprEvaluate, Values) {
  const DimExpr h = sym("h"), n = sym("n");
  const SymbolBindings b{{"h", 224}, {"n", 3}};
  EXPECT_EQ(DimExpr(7).evaluate({}), 7);
  EXPECT_EQ(h.evaluate(b), 224);
  EXPECT_EQ((floor_div(h + 2 * 3 - 7, 2) + 1).evaluate(b), 112);
  EXPECT_EQ((h * n - 1).evaluate(b), 671);
  EXPECT_EQ(floor_div(n - 10, 4).evaluate(b), -2);
  EXPECT_EQ(mod(n - 10, 4).evaluate(b), 1);
  EXPECT_EQ(mod(h, n - 8).evaluate(b), -1);
  EXPECT_EQ(min(h, n).evaluate(b), 3);
  EXPECT_EQ(max(h, n).evaluate(b), 224);
  EXPECT_EQ((DimExpr(0) - n).evaluate(b), -3);
}

TEST(DimExprEvaluate, Errors) {
  const DimExpr e = floor_div(sym("a"), sym("b") - 2) + sym("c");
  expect_error(
      [&] {
        (void)e.evaluate({{"a", 1}, {"b", 2}, {"c", 0}});
      },
      "division by zero", "b - 2 == 0");
  expect_error(
      [&] {
        (void)e.evaluate({{"a", 1}, {"b", 2}, {"c", 0}});
      },
      e.to_string(), "message names the expression");
  expect_error([&] { (void)e.evaluate({{"a", 1}, {"b", 3}}); }, "'c'", "unbound c");
  expect_error(
      [&] {
        (void)mod(sym("a"), sym("b")).evaluate({{"a", 1}, {"b", 0}});
      },
      "division by zero", "mod by 0");
  expect_error(
      [&] {
        (void)(sym("a") * sym("b")).evaluate({{"a", kI64Max}, {"b", 2}});
      },
      "overflows int64", "mul overflow");
  expect_error(
      [&] {
        (void)floor_div(sym("a"), sym("b")).evaluate({{"a", kI64Min}, {"b", -1}});
      },
      "overflows int64", "min // -1");
  EXPECT_EQ(mod(sym("a"), sym("b")).evaluate({{"a", kI64Min}, {"b", -1}}), 0);
}

TEST(DimExprEvaluate, CollectSymbols) {
  std::set<std::string> s;
  (floor_div(sym("h") + sym("pad"), sym("s")) * sym("h") + 3).collect_symbols(s);
  EXPECT_EQ(s, (std::set<std::string>{"h", "pad", "s"}));
  std::set<std::string> none;
  DimExpr(4).collect_symbols(none);
  EXPECT_TRUE(none.empty());
}

// ---------------------------------------------------------------- bounds

void expect_interval(const Interval& got, int64_t lo, int64_t hi, const std::string& what) {
  EXPECT_EQ(got.lo, lo) << what;
  EXPECT_EQ(got.hi, hi) << what;
}

TEST(DimExprBounds, Arithmetic) {
  const DimExpr a = sym("a"), b = sym("b");
  const SymbolRanges r{{"a", {1, 8}}, {"b", {-3, 5}}, {"z", {0, 0}}, {"n", {-9, -2}}};
  expect_interval(DimExpr(4).bounds(r), 4, 4, "const");
  expect_interval(a.bounds(r), 1, 8, "symbol");
  expect_interval((a + b).bounds(r), -2, 13, "add");
  expect_interval((a - b).bounds(r), -4, 11, "sub");
  expect_interval((a * b).bounds(r), -24, 40, "mul mixed");
  expect_interval((b * b).bounds(r), -15, 25, "mul mixed x mixed");
  expect_interval((sym("n") * b).bounds(r), -45, 27, "mul negative x mixed");
  expect_interval(min(a, b).bounds(r), -3, 5, "min");
  expect_interval(max(a, b).bounds(r), 1, 8, "max");
  expect_interval(max(a, sym("n")).bounds(r), 1, 8, "max with negative");
}

TEST(DimExprBounds, DivisionAndModulo) {
  const DimExpr a = sym("a"), b = sym("b"), n = sym("n");
  const SymbolRanges r{{"a", {1, 8}}, {"b", {-3, 5}}, {"n", {-9, -2}},
                       {"p", {2, 4}}, {"z", {0, 0}},  {"m", {-7, 7}}};
  expect_interval(floor_div(a, 2).bounds(r), 0, 4, "a // 2");
  expect_interval(floor_div(a, -2).bounds(r), -4, -1, "a // -2");
  expect_interval(floor_div(n, 2).bounds(r), -5, -1, "n // 2");
  expect_interval(floor_div(n, sym("p")).bounds(r), -5, -1, "n // p");
  expect_interval(floor_div(sym("m"), sym("p")).bounds(r), -4, 3, "m // p");
  // Divisor range containing 0: the 0 is excluded (evaluate throws there).
  expect_interval(floor_div(a, b).bounds(r), -8, 8, "a // [-3, 5]");
  expect_interval(floor_div(n, b).bounds(r), -9, 9, "n // [-3, 5]");
  expect_interval(mod(a, 3).bounds(r), 0, 2, "a % 3");
  expect_interval(mod(a, 16).bounds(r), 1, 8, "a % 16 is a");
  expect_interval(mod(a, -3).bounds(r), -2, 0, "a % -3");
  expect_interval(mod(n, 3).bounds(r), 0, 2, "n % 3");
  expect_interval(mod(n, -4).bounds(r), -3, 0, "n % -4");
  expect_interval(mod(n, -20).bounds(r), -9, -2, "n % -20 is n");
  expect_interval(mod(a, b).bounds(r), -2, 4, "a % [-3, 5]");
  expect_interval(mod(sym("p"), sym("p")).bounds(r), 0, 3, "p % p");
  expect_error([&] { (void)floor_div(a, sym("z")).bounds(r); }, "division by zero",
               "divisor always 0");
  expect_error([&] { (void)mod(a, sym("z") * 3).bounds(r); }, "division by zero",
               "mod divisor always 0");
  expect_error([&] { (void)(a + sym("q")).bounds(r); }, "'q' has no range", "missing range");
  expect_error([&] { (void)a.bounds({{"a", {5, 1}}}); }, "min > max", "inverted range");
}

TEST(DimExprBounds, SaturatesInsteadOfOverflowing) {
  const SymbolRanges r{{"a", {kI64Min, kI64Max}}, {"b", {-1, 1}}, {"c", {kI64Min, kI64Max}}};
  const DimExpr a = sym("a");
  expect_interval((a * a).bounds(r), kI64Min, kI64Max, "a*a");
  expect_interval((a + a).bounds(r), kI64Min, kI64Max, "a+a");
  expect_interval((a - sym("c") * 2).bounds(r), kI64Min, kI64Max, "a-2c");
  expect_interval((a - a * 2).bounds(r), -kI64Max, kI64Max, "a-2a is a*-1");
  expect_interval(floor_div(a, sym("b")).bounds(r), kI64Min, kI64Max, "a // [-1, 1]");
  expect_interval(mod(a, sym("b")).bounds(r), 0, 0, "a % [-1, 1]");
}

// ---------------------------------------------------------------- random expressions

// An unsimplified expression tree, evaluated naively, as the reference for DimExpr.
struct RawExpr {
  Op op = Op::kConst;
  int64_t value = 0;
  std::string name;
  std::shared_ptr<RawExpr> lhs, rhs;
};

const char* const kSymbols[] = {"a", "b", "batch", "seq_len"};

class ExprGenerator {
 public:
  explicit ExprGenerator(uint32_t seed, bool small_constants)
      : rng_(seed), small_(small_constants) {}

  uint32_t next(uint32_t n) { return static_cast<uint32_t>(rng_() % n); }

  int64_t constant() {
    static const int64_t kSmall[] = {0, 1, -1, 2, 3, -2, 4, 7, 12, -5};
    static const int64_t kBig[] = {kI64Min,   kI64Max,      kI64Min + 1, kI64Max - 1,
                                   1LL << 40, -(1LL << 40), 1LL << 62,   3037000499LL};
    if (!small_ && next(5) == 0) return kBig[next(8)];
    return kSmall[next(10)];
  }

  std::shared_ptr<RawExpr> raw(int depth) {
    auto e = std::make_shared<RawExpr>();
    const uint32_t pick = depth <= 0 ? next(2) : next(9);
    if (pick == 0) {
      e->op = Op::kConst;
      e->value = constant();
    } else if (pick == 1) {
      e->op = Op::kSymbol;
      e->name = kSymbols[next(4)];
    } else {
      e->op = static_cast<Op>(2 + next(7));
      e->lhs = raw(depth - 1);
      // Reuse the left operand sometimes so x - x, min(x, x) etc. get exercised.
      e->rhs = next(6) == 0 ? e->lhs : raw(depth - 1);
    }
    return e;
  }

 private:
  std::mt19937 rng_;
  bool small_;
};

// Builds the DimExpr (simplifying); throws Error where constant folding fails.
DimExpr build(const RawExpr& r) {
  switch (r.op) {
    case Op::kConst:
      return DimExpr(r.value);
    case Op::kSymbol:
      return DimExpr::symbol(r.name);
    default:
      return DimExpr::binary(r.op, build(*r.lhs), build(*r.rhs));
  }
}

// Naive checked evaluation with Python semantics; nullopt on overflow or division by zero.
std::optional<int64_t> reference_eval(const RawExpr& r, const SymbolBindings& b) {
  if (r.op == Op::kConst) return r.value;
  if (r.op == Op::kSymbol) return b.at(r.name);
  const auto x = reference_eval(*r.lhs, b);
  const auto y = reference_eval(*r.rhs, b);
  if (!x || !y) return std::nullopt;
  const __int128 p = *x, q = *y;
  __int128 v = 0;
  switch (r.op) {
    case Op::kAdd:
      v = p + q;
      break;
    case Op::kSub:
      v = p - q;
      break;
    case Op::kMul:
      v = p * q;
      break;
    case Op::kFloorDiv: {
      if (q == 0) return std::nullopt;
      v = p / q;
      if (v * q != p && ((p < 0) != (q < 0))) v -= 1;
      break;
    }
    case Op::kMod: {
      if (q == 0) return std::nullopt;
      __int128 d = p / q;
      if (d * q != p && ((p < 0) != (q < 0))) d -= 1;
      v = p - d * q;
      break;
    }
    case Op::kMin:
      v = p < q ? p : q;
      break;
    case Op::kMax:
      v = p > q ? p : q;
      break;
    default:
      return std::nullopt;
  }
  if (v < kI64Min || v > kI64Max) return std::nullopt;
  return static_cast<int64_t>(v);
}

SymbolBindings random_bindings(ExprGenerator& g) {
  static const int64_t kValues[] = {0, 1, 2, 3, 5, 8, 13, -1, -4, 100, -7};
  SymbolBindings b;
  for (const char* s : kSymbols) b[s] = kValues[g.next(11)];
  return b;
}

TEST(DimExprRandom, ParseOfToStringRoundTrips) {
  ExprGenerator g(1234u, /*small_constants=*/false);
  int built = 0;
  for (int i = 0; i < 3000; ++i) {
    const auto raw = g.raw(static_cast<int>(g.next(6)));
    DimExpr e;
    try {
      e = build(*raw);
    } catch (const Error&) {
      continue;  // constant folding overflowed or divided by zero
    }
    ++built;
    const std::string text = e.to_string();
    DimExpr back;
    ASSERT_NO_THROW(back = DimExpr::parse(text)) << text;
    EXPECT_EQ(back, e) << text << " parsed back as " << back.to_string();
    EXPECT_EQ(back.to_string(), text);
    // Rebuilding a canonical tree from its own operands changes nothing.
    if (e.op() != Op::kConst && e.op() != Op::kSymbol) {
      EXPECT_EQ(DimExpr::binary(e.op(), e.lhs(), e.rhs()), e) << text;
    }
  }
  EXPECT_GT(built, 2000);
}

TEST(DimExprRandom, SimplificationPreservesValues) {
  ExprGenerator g(99u, /*small_constants=*/true);
  int compared = 0;
  for (int i = 0; i < 3000; ++i) {
    const auto raw = g.raw(static_cast<int>(g.next(6)));
    for (int k = 0; k < 4; ++k) {
      const SymbolBindings b = random_bindings(g);
      const auto want = reference_eval(*raw, b);
      if (!want) continue;
      // If the raw tree evaluates, folding cannot have failed and the value must agree.
      DimExpr e;
      ASSERT_NO_THROW(e = build(*raw));
      int64_t got = 0;
      ASSERT_NO_THROW(got = e.evaluate(b)) << e.to_string();
      EXPECT_EQ(got, *want) << e.to_string();
      ++compared;
    }
  }
  EXPECT_GT(compared, 5000);
}

TEST(DimExprRandom, BoundsContainSampledValues) {
  ExprGenerator g(7u, /*small_constants=*/true);
  int checked = 0;
  for (int i = 0; i < 1500; ++i) {
    DimExpr e;
    try {
      e = build(*g.raw(static_cast<int>(g.next(5))));
    } catch (const Error&) {
      continue;
    }
    SymbolRanges ranges;
    for (const char* s : kSymbols) {
      const int64_t lo = static_cast<int64_t>(g.next(21)) - 10;
      ranges[s] = Interval{lo, lo + static_cast<int64_t>(g.next(12))};
    }
    Interval iv{};
    try {
      iv = e.bounds(ranges);
    } catch (const Error& err) {
      // Only a divisor that is 0 everywhere may refuse bounds.
      EXPECT_NE(std::string(err.what()).find("division by zero"), std::string::npos) << err.what();
      continue;
    }
    ASSERT_LE(iv.lo, iv.hi) << e.to_string();
    for (int k = 0; k < 30; ++k) {
      SymbolBindings b;
      for (const auto& [name, r] : ranges) {
        const uint32_t span = static_cast<uint32_t>(r.hi - r.lo + 1);
        // Bias toward the range ends, where interval arithmetic is most likely to be wrong.
        const uint32_t which = g.next(4);
        b[name] = which == 0 ? r.lo : which == 1 ? r.hi : r.lo + g.next(span);
      }
      int64_t v = 0;
      try {
        v = e.evaluate(b);
      } catch (const Error&) {
        continue;  // division by zero at this point
      }
      EXPECT_GE(v, iv.lo) << e.to_string() << " at a sample point";
      EXPECT_LE(v, iv.hi) << e.to_string() << " at a sample point";
      ++checked;
    }
  }
  EXPECT_GT(checked, 10000);
}

// ---------------------------------------------------------------- parse

TEST(DimExprParse, AcceptsInfixAndFunctionForms) {
  const DimExpr x = sym("x"), y = sym("y");
  EXPECT_EQ(DimExpr::parse("42"), DimExpr(42));
  EXPECT_EQ(DimExpr::parse("  x  "), x);
  EXPECT_EQ(DimExpr::parse("x*12"), x * 12);
  EXPECT_EQ(DimExpr::parse("12 * x"), x * 12);
  EXPECT_EQ(DimExpr::parse("x + y * 2"), x + y * 2);
  EXPECT_EQ(DimExpr::parse("(x + y) * 2"), (x + y) * 2);
  EXPECT_EQ(DimExpr::parse("x - y - 1"), (x - y) - 1);
  EXPECT_EQ(DimExpr::parse("x - (y - 1)"), x - (y - 1));
  EXPECT_EQ(DimExpr::parse("floordiv(x+1, 2)"), floor_div(x + 1, 2));
  EXPECT_EQ(DimExpr::parse("(x+1)//2"), floor_div(x + 1, 2));
  EXPECT_EQ(DimExpr::parse("x % 3"), mod(x, 3));
  EXPECT_EQ(DimExpr::parse("mod(x, 3)"), mod(x, 3));
  EXPECT_EQ(DimExpr::parse("min(x,y)"), min(x, y));
  EXPECT_EQ(DimExpr::parse("max ( x , 4 )"), max(x, 4));
  EXPECT_EQ(DimExpr::parse("-5"), DimExpr(-5));
  EXPECT_EQ(DimExpr::parse("-x"), DimExpr(0) - x);
  EXPECT_EQ(DimExpr::parse("--5"), DimExpr(5));
  EXPECT_EQ(DimExpr::parse("x*-3"), x * -3);
  EXPECT_EQ(DimExpr::parse("x - -3"), x + 3);
  EXPECT_EQ(DimExpr::parse("-9223372036854775808"), DimExpr(kI64Min));
  EXPECT_EQ(DimExpr::parse("9223372036854775807"), DimExpr(kI64Max));
  EXPECT_EQ(DimExpr::parse("\tx\n+\r1"), x + 1);
  // Function names are only functions when called; alone they are ordinary symbols.
  EXPECT_EQ(DimExpr::parse("min + 1"), sym("min") + 1);
  EXPECT_EQ(DimExpr::parse("2*3+4"), DimExpr(10));
}

TEST(DimExprParse, MalformedInputThrows) {
  const std::vector<std::string> bad = {"",
                                        " ",
                                        "(",
                                        ")",
                                        "a+",
                                        "+a",
                                        "a +* b",
                                        "a b",
                                        "1 2",
                                        "(a",
                                        "a)",
                                        "()",
                                        "a,b",
                                        "1//0",
                                        "x//0",
                                        "x % 0",
                                        "mod(x, 0)",
                                        "floordiv(1, 0)",
                                        "min(a)",
                                        "min(a, b, c)",
                                        "min a, b",
                                        "min(",
                                        "min(a,",
                                        "max(,b)",
                                        "foo(a, b)",
                                        "a / b",
                                        "a ^ b",
                                        "a $ b",
                                        "9223372036854775808",
                                        "-9223372036854775809",
                                        "99999999999999999999999999",
                                        "9223372036854775807 + 1",
                                        "-9223372036854775808 - 1",
                                        "3037000500*3037000500",
                                        "x\x01",
                                        std::string("x\0y", 3),
                                        "\xff",
                                        "a.b",
                                        "1e3",
                                        "0x10",
                                        "a--",
                                        "*",
                                        "//",
                                        "%",
                                        "-",
                                        "- ",
                                        "floordiv()",
                                        "x y"};
  for (const std::string& s : bad) {
    EXPECT_THROW((void)DimExpr::parse(s), Error) << "input: '" << s << "'";
  }
}

TEST(DimExprParse, LimitsDepthAndLength) {
  // 10000 parens exceed the length limit first; 4000 (within it) hit the depth limit.
  EXPECT_THROW((void)DimExpr::parse(std::string(10000, '(')), Error);
  EXPECT_THROW((void)DimExpr::parse(std::string(10000, '(') + "x" + std::string(10000, ')')),
               Error);
  expect_error([] { (void)DimExpr::parse(std::string(4000, '(')); }, "nesting", "4000 open parens");
  expect_error([] { (void)DimExpr::parse(std::string(100, '(') + "x" + std::string(100, ')')); },
               "nesting", "100 balanced parens");
  EXPECT_THROW((void)DimExpr::parse(std::string(10000, '-') + "x"), Error);
  expect_error([] { (void)DimExpr::parse(std::string(4000, '-') + "x"); }, "nesting",
               "4000 unary minus");
  std::string nested = "x";
  for (int i = 0; i < 200; ++i) nested = "min(" + nested + ", 1)";
  expect_error([&] { (void)DimExpr::parse(nested); }, "nesting", "200 nested calls");
  // Moderate nesting is fine.
  EXPECT_EQ(DimExpr::parse(std::string(30, '(') + "x" + std::string(30, ')')), sym("x"));
  expect_error([] { (void)DimExpr::parse(std::string(100000, '1')); }, "limit", "100k digits");
  std::string long_sum = "x";
  while (long_sum.size() < 5000) long_sum += "+x";
  expect_error([&] { (void)DimExpr::parse(long_sum); }, "limit", "long sum");
  // A long (but within the limit) flat chain parses, evaluates and prints.
  std::string chain = "x";
  for (int i = 0; i < 1000; ++i) chain += "+x";
  const DimExpr e = DimExpr::parse(chain);
  EXPECT_EQ(e.evaluate({{"x", 2}}), 2002);
  EXPECT_EQ(DimExpr::parse(e.to_string()), e);
}

TEST(DimExprParse, ErrorMessagesNameTheText) {
  expect_error([] { (void)DimExpr::parse("a + * b"); }, "\"a + * b\"", "quotes input");
  expect_error([] { (void)DimExpr::parse("a + * b"); }, "offset 4", "names offset");
  expect_error([] { (void)DimExpr::parse("foo(1, 2)"); }, "unknown function 'foo'", "unknown fn");
  expect_error([] { (void)DimExpr::parse("1//0"); }, "division by zero", "1//0");
  expect_error([] { (void)DimExpr::parse("x\x01"); }, "\\x01", "escapes control bytes");
}

TEST(DimExprParse, FuzzedBytesNeverCrash) {
  // Random strings over the grammar's alphabet: each either parses (and then round trips) or
  // throws Error; nothing else may happen.
  const std::string alphabet = "()+-*/%, abx019_minaxflordvd\t";
  std::mt19937 rng(2024u);
  int parsed = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string s;
    const size_t len = rng() % 24;
    for (size_t k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
    try {
      const DimExpr e = DimExpr::parse(s);
      EXPECT_EQ(DimExpr::parse(e.to_string()), e) << s;
      ++parsed;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(parsed, 100);
}

// ---------------------------------------------------------------- shapes

TEST(DimExprShape, Helpers) {
  const Shape s{1, 3, DimExpr::symbol("h") * 2};
  EXPECT_EQ(shape_to_string(s), "[1, 3, h*2]");
  EXPECT_EQ(shape_to_string({}), "[]");
  EXPECT_FALSE(shape_is_static(s));
  EXPECT_TRUE(shape_is_static(shape_from_dims({2, 5})));
  EXPECT_TRUE(shape_is_static({}));
  EXPECT_EQ(shape_evaluate(s, {{"h", 7}}), (std::vector<int64_t>{1, 3, 14}));
  expect_error([&] { (void)shape_evaluate(s, {}); }, "'h'", "unbound in shape");
  EXPECT_EQ(shape_from_dims({2, 5}), (Shape{2, 5}));
  EXPECT_EQ(shape_numel(s), DimExpr::symbol("h") * 6);
  EXPECT_EQ(shape_numel({}), DimExpr(1));
  EXPECT_EQ(shape_numel(shape_from_dims({2, 0, 4})), DimExpr(0));
  EXPECT_EQ(dims_numel({2, 3, 4}), 24);
  EXPECT_EQ(dims_numel({}), 1);
  EXPECT_EQ(dims_numel({5, 0}), 0);
  expect_error([] { (void)dims_numel({1LL << 32, 1LL << 32}); }, "overflows", "numel overflow");
  EXPECT_EQ(dims_to_string({1, 3, 224}), "[1, 3, 224]");
  EXPECT_EQ(dims_to_string({}), "[]");
}

}  // namespace
}  // namespace ember::engine
