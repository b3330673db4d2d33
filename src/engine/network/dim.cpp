// DimExpr: symbolic dimension expressions. Simplification happens once, on construction, so
// every consumer (equality, to_string, plans) sees one canonical tree; evaluation and interval
// bounds then walk that tree. The parser is a small recursive-descent parser with hard limits
// on length and nesting, because plans read from disk feed it untrusted text.
#include "ember/engine/dim.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "ember/engine/types.h"

namespace ember::engine {

/// One immutable tree node. Leaves leave lhs/rhs empty (null nodes).
struct DimExpr::Node {
  Op op = Op::kConst;
  int64_t value = 0;  // kConst
  std::string name;   // kSymbol
  DimExpr lhs{std::shared_ptr<const Node>()};
  DimExpr rhs{std::shared_ptr<const Node>()};

  /// The node of `e`; a moved-from (null) DimExpr reads as the constant 0.
  static const Node& of(const DimExpr& e);
  /// Wraps a node (the DimExpr constructor taking a node is private).
  static DimExpr wrap(std::shared_ptr<const Node> n) { return DimExpr(std::move(n)); }
};

namespace {

using Node = DimExpr::Node;
using Op = DimExpr::Op;

constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// Parser limits: real shape expressions are a few dozen characters; the limits only keep
// hostile input (fuzzed plans) from exhausting the stack or building huge trees.
constexpr size_t kMaxParseLength = 4096;
constexpr int kMaxParseDepth = 64;

// Small constants are shared so that `Shape{1, 3, 224}` and DimExpr() do not allocate.
constexpr int64_t kCachedConstLo = -1;
constexpr int64_t kCachedConstHi = 256;

const std::vector<std::shared_ptr<const Node>>& const_cache() {
  // Leaked on purpose: DimExprs in other static objects may outlive any destructor order.
  static const auto* cache = [] {
    auto* c = new std::vector<std::shared_ptr<const Node>>();
    for (int64_t v = kCachedConstLo; v <= kCachedConstHi; ++v) {
      auto n = std::make_shared<Node>();
      n->value = v;
      c->push_back(std::move(n));
    }
    return c;
  }();
  return *cache;
}

std::shared_ptr<const Node> const_node(int64_t value) {
  if (value >= kCachedConstLo && value <= kCachedConstHi) {
    return const_cache()[static_cast<size_t>(value - kCachedConstLo)];
  }
  auto n = std::make_shared<Node>();
  n->value = value;
  return n;
}

bool is_binary_op(Op op) {
  switch (op) {
    case Op::kConst:
    case Op::kSymbol:
      return false;
    case Op::kAdd:
    case Op::kSub:
    case Op::kMul:
    case Op::kFloorDiv:
    case Op::kMod:
    case Op::kMin:
    case Op::kMax:
      return true;
  }
  return false;  // out-of-range enumerator (e.g. from a corrupt plan)
}

bool is_identifier_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_identifier_char(char c) { return is_identifier_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool is_identifier(std::string_view s) {
  return !s.empty() && is_identifier_start(s[0]) &&
         std::all_of(s.begin(), s.end(), is_identifier_char);
}

// ---------------------------------------------------------------- integer arithmetic

enum class Status { kOk, kOverflow, kDivByZero };

int64_t floor_div_unchecked(int64_t a, int64_t b) {  // b != 0, not (kInt64Min, -1)
  int64_t q = a / b;
  if (a % b != 0 && ((a < 0) != (b < 0))) --q;
  return q;
}

// One binary op on concrete values with Python floor semantics and int64 overflow detection.
Status apply(Op op, int64_t a, int64_t b, int64_t& out) {
  switch (op) {
    case Op::kAdd:
      return __builtin_add_overflow(a, b, &out) ? Status::kOverflow : Status::kOk;
    case Op::kSub:
      return __builtin_sub_overflow(a, b, &out) ? Status::kOverflow : Status::kOk;
    case Op::kMul:
      return __builtin_mul_overflow(a, b, &out) ? Status::kOverflow : Status::kOk;
    case Op::kFloorDiv:
      if (b == 0) return Status::kDivByZero;
      if (a == kInt64Min && b == -1) return Status::kOverflow;
      out = floor_div_unchecked(a, b);
      return Status::kOk;
    case Op::kMod:
      if (b == 0) return Status::kDivByZero;
      if (b == -1) {  // kInt64Min % -1 is undefined behaviour in C++
        out = 0;
        return Status::kOk;
      }
      out = a % b;
      if (out != 0 && ((out < 0) != (b < 0))) out += b;
      return Status::kOk;
    case Op::kMin:
      out = std::min(a, b);
      return Status::kOk;
    case Op::kMax:
      out = std::max(a, b);
      return Status::kOk;
    case Op::kConst:
    case Op::kSymbol:
      break;
  }
  return Status::kOverflow;  // not a binary op; callers never get here
}

// Saturating arithmetic for interval bounds: a saturated endpoint is still sound, because
// evaluate() throws instead of returning a value outside int64.
int64_t sat_add(int64_t a, int64_t b) {
  int64_t r = 0;
  if (!__builtin_add_overflow(a, b, &r)) return r;
  return b > 0 ? kInt64Max : kInt64Min;
}
int64_t sat_sub(int64_t a, int64_t b) {
  int64_t r = 0;
  if (!__builtin_sub_overflow(a, b, &r)) return r;
  return b < 0 ? kInt64Max : kInt64Min;
}
int64_t sat_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  if (!__builtin_mul_overflow(a, b, &r)) return r;
  return (a < 0) != (b < 0) ? kInt64Min : kInt64Max;
}
int64_t sat_floor_div(int64_t a, int64_t b) {  // b != 0
  if (a == kInt64Min && b == -1) return kInt64Max;
  return floor_div_unchecked(a, b);
}

// ---------------------------------------------------------------- structure

// A total order on trees: by op, then value / name, then operands. Equality is order 0.
int compare(const DimExpr& a, const DimExpr& b) {
  const Node& x = Node::of(a);
  const Node& y = Node::of(b);
  if (&x == &y) return 0;
  if (x.op != y.op) return x.op < y.op ? -1 : 1;
  switch (x.op) {
    case Op::kConst:
      return x.value < y.value ? -1 : (x.value > y.value ? 1 : 0);
    case Op::kSymbol: {
      const int c = x.name.compare(y.name);
      return c < 0 ? -1 : (c > 0 ? 1 : 0);
    }
    case Op::kAdd:
    case Op::kSub:
    case Op::kMul:
    case Op::kFloorDiv:
    case Op::kMod:
    case Op::kMin:
    case Op::kMax:
      break;
  }
  const int c = compare(x.lhs, y.lhs);
  return c != 0 ? c : compare(x.rhs, y.rhs);
}

// Operand order inside a commutative op: a chain of the same op goes left (so a+(b+c) and
// (b+c)+a agree and print as "b+c+a"), otherwise the structural order decides.
int operand_order(Op op, const DimExpr& a, const DimExpr& b) {
  const bool a_chain = a.op() == op;
  const bool b_chain = b.op() == op;
  if (a_chain != b_chain) return a_chain ? -1 : 1;
  return compare(a, b);
}

DimExpr make_node(Op op, const DimExpr& lhs, const DimExpr& rhs) {
  auto n = std::make_shared<Node>();
  n->op = op;
  n->lhs = lhs;
  n->rhs = rhs;
  return Node::wrap(std::move(n));
}

bool is_const(const DimExpr& e, int64_t value) { return e.is_constant() && e.constant() == value; }

// True when `e` is op(x, constant), e.g. x+2 for kAdd.
bool has_const_rhs(const DimExpr& e, Op op) { return e.op() == op && e.rhs().is_constant(); }

DimExpr simplify(Op op, DimExpr l, DimExpr r);

// Like terms: a*c1 + a*c2 == a*(c1+c2) (and the same for -), where a bare `a` counts as a*1.
// Keeps sums such as a concat of many equal dims flat ("seq*12", not "seq+seq+...").
// Returns false (leaving `out` alone) when the terms differ or the coefficients overflow.
bool merge_like_terms(Op op, const DimExpr& l, const DimExpr& r, DimExpr& out) {
  const bool l_scaled = has_const_rhs(l, Op::kMul);
  const bool r_scaled = has_const_rhs(r, Op::kMul);
  const DimExpr& l_term = l_scaled ? l.lhs() : l;
  const DimExpr& r_term = r_scaled ? r.lhs() : r;
  if (l_term != r_term) return false;
  int64_t coefficient = 0;
  if (apply(op, l_scaled ? l.rhs().constant() : 1, r_scaled ? r.rhs().constant() : 1,
            coefficient) != Status::kOk) {
    return false;
  }
  out = simplify(Op::kMul, l_term, DimExpr(coefficient));
  return true;
}

// min(min(a, b), b) == min(a, b) (and for max): keeps chains of broadcasts between the same
// dims from growing.
bool absorbs(Op op, const DimExpr& chain, const DimExpr& e) {
  return chain.op() == op && (chain.lhs() == e || chain.rhs() == e);
}

[[noreturn]] void throw_fold_error(Status s, Op op, const DimExpr& lhs, const DimExpr& rhs) {
  const std::string text = make_node(op, lhs, rhs).to_string();
  if (s == Status::kDivByZero) {
    throw Error("division by zero in dimension expression " + text);
  }
  throw Error("dimension expression " + text + " overflows int64");
}

// Builds op(l, r) in canonical form. Canonical trees are a fixed point: rebuilding a canonical
// node from its (canonical) operands returns an equal node, which parse(to_string(e)) relies on.
DimExpr simplify(Op op, DimExpr l, DimExpr r) {
  if (l.is_constant() && r.is_constant()) {
    int64_t v = 0;
    const Status s = apply(op, l.constant(), r.constant(), v);
    if (s != Status::kOk) throw_fold_error(s, op, l, r);
    return DimExpr(v);
  }
  switch (op) {
    case Op::kSub:
      if (is_const(r, 0)) return l;
      if (l == r) return DimExpr(0);
      // x - c becomes x + (-c) so that constants fold with neighbouring additions.
      if (r.is_constant() && r.constant() != kInt64Min) {
        return simplify(Op::kAdd, std::move(l), DimExpr(-r.constant()));
      }
      if (DimExpr merged;
          !l.is_constant() && !r.is_constant() && merge_like_terms(op, l, r, merged)) {
        return merged;
      }
      return make_node(op, l, r);
    case Op::kFloorDiv:
    case Op::kMod:
      if (r.is_constant()) {
        const int64_t c = r.constant();
        if (c == 0) throw_fold_error(Status::kDivByZero, op, l, r);
        if (op == Op::kFloorDiv && c == 1) return l;
        if (op == Op::kMod && (c == 1 || c == -1)) return DimExpr(0);
        // (x*m) // c == x*(m/c) and (x*m) % c == 0 exactly when c divides m.
        if (c != -1 && has_const_rhs(l, Op::kMul) && l.rhs().constant() % c == 0) {
          if (op == Op::kMod) return DimExpr(0);
          return simplify(Op::kMul, l.lhs(), DimExpr(l.rhs().constant() / c));
        }
      }
      return make_node(op, l, r);
    case Op::kAdd:
    case Op::kMul:
    case Op::kMin:
    case Op::kMax:
      break;
    case Op::kConst:
    case Op::kSymbol:
      throw Error("DimExpr::binary: op " + std::to_string(static_cast<int>(op)) +
                  " is not a binary operation");
  }

  // Commutative and associative ops.
  if (l.is_constant()) std::swap(l, r);
  if (r.is_constant()) {
    const int64_t c = r.constant();
    if (op == Op::kAdd && c == 0) return l;
    if (op == Op::kMul && c == 1) return l;
    if (op == Op::kMul && c == 0) return DimExpr(0);
    // (x op c2) op c == x op (c2 op c); left unfolded when c2 op c overflows, since the
    // expression may still evaluate fine for some x.
    if (has_const_rhs(l, op)) {
      int64_t v = 0;
      if (apply(op, l.rhs().constant(), c, v) == Status::kOk) {
        return simplify(op, l.lhs(), DimExpr(v));
      }
    }
    return make_node(op, l, r);
  }
  if (op == Op::kMin || op == Op::kMax) {
    if (l == r || absorbs(op, l, r)) return l;
    if (absorbs(op, r, l)) return r;
  }
  if (DimExpr merged; op == Op::kAdd && merge_like_terms(op, l, r, merged)) return merged;
  // Float constants outwards: (x+c)+y == (x+y)+c, so they can meet and fold.
  if (has_const_rhs(l, op)) return simplify(op, simplify(op, l.lhs(), r), l.rhs());
  if (has_const_rhs(r, op)) return simplify(op, simplify(op, l, r.lhs()), r.rhs());
  if (operand_order(op, l, r) > 0) std::swap(l, r);
  return make_node(op, l, r);
}

// ---------------------------------------------------------------- printing

// Binding strength of a node when printed; an operand is parenthesized when weaker than its
// position requires. Negative constants always get parentheses inside infix expressions.
int precedence(const Node& n) {
  switch (n.op) {
    case Op::kConst:
      return n.value < 0 ? 0 : 3;
    case Op::kAdd:
    case Op::kSub:
      return 1;
    case Op::kMul:
      return 2;
    case Op::kSymbol:
    case Op::kFloorDiv:
    case Op::kMod:
    case Op::kMin:
    case Op::kMax:
      return 3;
  }
  return 3;
}

void print(const DimExpr& e, int required, std::string& out) {
  const Node& n = Node::of(e);
  const bool parens = precedence(n) < required;
  if (parens) out += '(';
  const char* function = nullptr;
  switch (n.op) {
    case Op::kConst:
      out += std::to_string(n.value);
      break;
    case Op::kSymbol:
      out += n.name;
      break;
    case Op::kAdd:
      print(n.lhs, 1, out);
      // x + (-3) prints as "x-3" (parse folds it back to the same tree).
      if (n.rhs.is_constant() && n.rhs.constant() < 0 && n.rhs.constant() != kInt64Min) {
        out += '-';
        out += std::to_string(-n.rhs.constant());
      } else {
        out += '+';
        // Operands print left-associatively, so a right operand of the same strength
        // needs parentheses to keep its tree shape.
        print(n.rhs, 2, out);
      }
      break;
    case Op::kSub:
      print(n.lhs, 1, out);
      out += '-';
      print(n.rhs, 2, out);
      break;
    case Op::kMul:
      print(n.lhs, 2, out);
      out += '*';
      print(n.rhs, 3, out);
      break;
    case Op::kFloorDiv:
      function = "floordiv(";
      break;
    case Op::kMod:
      function = "mod(";
      break;
    case Op::kMin:
      function = "min(";
      break;
    case Op::kMax:
      function = "max(";
      break;
  }
  if (function != nullptr) {
    out += function;
    print(n.lhs, 0, out);
    out += ", ";
    print(n.rhs, 0, out);
    out += ')';
  }
  if (parens) out += ')';
}

// ---------------------------------------------------------------- evaluation and bounds

int64_t evaluate_node(const DimExpr& e, const SymbolBindings& bindings, const DimExpr& root) {
  const Node& n = Node::of(e);
  switch (n.op) {
    case Op::kConst:
      return n.value;
    case Op::kSymbol: {
      const auto it = bindings.find(n.name);
      if (it == bindings.end()) {
        throw Error("dimension " + root.to_string() + ": symbol '" + n.name +
                    "' has no value; bind it through an input shape that uses it");
      }
      return it->second;
    }
    case Op::kAdd:
    case Op::kSub:
    case Op::kMul:
    case Op::kFloorDiv:
    case Op::kMod:
    case Op::kMin:
    case Op::kMax:
      break;
  }
  const int64_t a = evaluate_node(n.lhs, bindings, root);
  const int64_t b = evaluate_node(n.rhs, bindings, root);
  int64_t v = 0;
  switch (apply(n.op, a, b, v)) {
    case Status::kOk:
      return v;
    case Status::kDivByZero:
      throw Error("dimension " + root.to_string() + ": division by zero in " + e.to_string() +
                  " (" + n.rhs.to_string() + " is 0 for these input shapes)");
    case Status::kOverflow:
      break;
  }
  throw Error("dimension " + root.to_string() + ": " + e.to_string() + " overflows int64 (" +
              std::to_string(a) + " and " + std::to_string(b) + ")");
}

Interval hull(const Interval& a, const Interval& b) {
  return {std::min(a.lo, b.lo), std::max(a.hi, b.hi)};
}

// floor_div over a divisor range of one sign (0 excluded). For a fixed divisor sign the
// quotient is monotone in each operand, so the extremes sit at the corners.
Interval floor_div_same_sign(const Interval& a, const Interval& b) {
  const int64_t q[4] = {sat_floor_div(a.lo, b.lo), sat_floor_div(a.lo, b.hi),
                        sat_floor_div(a.hi, b.lo), sat_floor_div(a.hi, b.hi)};
  return {*std::min_element(q, q + 4), *std::max_element(q, q + 4)};
}

// Python mod over a divisor range of one sign (0 excluded): the result has the divisor's sign,
// is smaller in magnitude than the divisor, and no larger in magnitude than a same-signed `a`.
Interval mod_same_sign(const Interval& a, const Interval& b) {
  if (b.lo > 0) {
    if (a.lo >= 0 && a.hi < b.lo) return a;  // a % b == a
    Interval r{0, b.hi - 1};
    if (a.lo >= 0) r.hi = std::min(r.hi, a.hi);
    return r;
  }
  if (a.hi <= 0 && a.lo > b.hi) return a;  // a % b == a
  Interval r{b.lo + 1, 0};
  if (a.hi <= 0) r.lo = std::max(r.lo, a.lo);
  return r;
}

// Applies `f` to the negative and the positive part of the divisor range b. A divisor of 0
// makes evaluate() throw, so 0 contributes no values; a divisor that is always 0 is an Error.
template <typename F>
Interval over_nonzero_divisors(const Interval& a, const Interval& b, const DimExpr& e,
                               const DimExpr& root, F f) {
  if (b.lo == 0 && b.hi == 0) {
    throw Error("dimension " + root.to_string() + ": division by zero in " + e.to_string() +
                " (the divisor is 0 for every shape in the ranges)");
  }
  bool any = false;
  Interval r{};
  if (b.lo < 0) {
    r = f(a, Interval{b.lo, std::min<int64_t>(b.hi, -1)});
    any = true;
  }
  if (b.hi > 0) {
    const Interval p = f(a, Interval{std::max<int64_t>(b.lo, 1), b.hi});
    r = any ? hull(r, p) : p;
  }
  return r;
}

Interval bounds_node(const DimExpr& e, const SymbolRanges& ranges, const DimExpr& root) {
  const Node& n = Node::of(e);
  switch (n.op) {
    case Op::kConst:
      return {n.value, n.value};
    case Op::kSymbol: {
      const auto it = ranges.find(n.name);
      if (it == ranges.end()) {
        throw Error("dimension " + root.to_string() + ": symbol '" + n.name +
                    "' has no range; give it one in the optimization profile");
      }
      if (it->second.lo > it->second.hi) {
        throw Error("dimension " + root.to_string() + ": symbol '" + n.name + "' has range [" +
                    std::to_string(it->second.lo) + ", " + std::to_string(it->second.hi) +
                    "] with min > max");
      }
      return it->second;
    }
    case Op::kAdd:
    case Op::kSub:
    case Op::kMul:
    case Op::kFloorDiv:
    case Op::kMod:
    case Op::kMin:
    case Op::kMax:
      break;
  }
  const Interval a = bounds_node(n.lhs, ranges, root);
  const Interval b = bounds_node(n.rhs, ranges, root);
  switch (n.op) {
    case Op::kAdd:
      return {sat_add(a.lo, b.lo), sat_add(a.hi, b.hi)};
    case Op::kSub:
      return {sat_sub(a.lo, b.hi), sat_sub(a.hi, b.lo)};
    case Op::kMul: {
      const int64_t p[4] = {sat_mul(a.lo, b.lo), sat_mul(a.lo, b.hi), sat_mul(a.hi, b.lo),
                            sat_mul(a.hi, b.hi)};
      return {*std::min_element(p, p + 4), *std::max_element(p, p + 4)};
    }
    case Op::kFloorDiv:
      return over_nonzero_divisors(a, b, e, root, floor_div_same_sign);
    case Op::kMod:
      return over_nonzero_divisors(a, b, e, root, mod_same_sign);
    case Op::kMin:
      return {std::min(a.lo, b.lo), std::min(a.hi, b.hi)};
    case Op::kMax:
      return {std::max(a.lo, b.lo), std::max(a.hi, b.hi)};
    case Op::kConst:
    case Op::kSymbol:
      break;
  }
  return a;  // unreachable: leaves returned above
}

void collect_node_symbols(const DimExpr& e, std::set<std::string>& out) {
  const Node& n = Node::of(e);
  if (n.op == Op::kSymbol) {
    out.insert(n.name);
  } else if (n.op != Op::kConst) {
    collect_node_symbols(n.lhs, out);
    collect_node_symbols(n.rhs, out);
  }
}

// ---------------------------------------------------------------- parsing

// Grammar (whitespace anywhere between tokens):
//   expr    := term (('+' | '-') term)*
//   term    := unary (('*' | '//' | '%') unary)*
//   unary   := '-' unary | primary          ('-' before digits is a negative literal)
//   primary := number | symbol | func '(' expr ',' expr ')' | '(' expr ')'
//   func    := floordiv | mod | min | max
class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  DimExpr parse_all() {
    if (text_.size() > kMaxParseLength) {
      fail("text is " + std::to_string(text_.size()) + " characters, more than the limit of " +
           std::to_string(kMaxParseLength));
    }
    DimExpr e = expr(0);
    skip_space();
    if (!at_end()) fail("unexpected " + describe_current() + " after a complete expression");
    return e;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error("cannot parse dimension expression \"" + excerpt() + "\" at offset " +
                std::to_string(pos_) + ": " + what);
  }

  // The input for error messages: bounded length, non-printable bytes escaped.
  std::string excerpt() const {
    constexpr size_t kMaxShown = 80;
    std::string s;
    for (size_t i = 0; i < text_.size() && i < kMaxShown; ++i) {
      const auto c = static_cast<unsigned char>(text_[i]);
      if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
        s += static_cast<char>(c);
      } else {
        static const char kHex[] = "0123456789abcdef";
        s += "\\x";
        s += kHex[c >> 4];
        s += kHex[c & 15];
      }
    }
    if (text_.size() > kMaxShown) s += "...";
    return s;
  }

  std::string describe_current() const {
    if (at_end()) return "end of text";
    const auto c = static_cast<unsigned char>(text_[pos_]);
    if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    return "byte " + std::to_string(c);
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void skip_space() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                         text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool eat(char c) {
    skip_space();
    if (peek() != c) return false;
    ++pos_;
    return true;
  }

  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "', found " + describe_current());
  }

  void check_depth(int depth) const {
    if (depth > kMaxParseDepth) {
      fail("nesting is deeper than " + std::to_string(kMaxParseDepth) + " levels");
    }
  }

  // Folding errors (overflow, division by a constant 0) get the parse position attached.
  DimExpr combine(Op op, const DimExpr& a, const DimExpr& b) const {
    try {
      return DimExpr::binary(op, a, b);
    } catch (const Error& e) {
      fail(e.what());
    }
  }

  DimExpr expr(int depth) {
    check_depth(depth);
    DimExpr lhs = term(depth);
    for (;;) {
      if (eat('+')) {
        lhs = combine(Op::kAdd, lhs, term(depth));
      } else if (eat('-')) {
        lhs = combine(Op::kSub, lhs, term(depth));
      } else {
        return lhs;
      }
    }
  }

  DimExpr term(int depth) {
    DimExpr lhs = unary(depth);
    for (;;) {
      skip_space();
      if (eat('*')) {
        lhs = combine(Op::kMul, lhs, unary(depth));
      } else if (text_.substr(pos_, 2) == "//") {
        pos_ += 2;
        lhs = combine(Op::kFloorDiv, lhs, unary(depth));
      } else if (eat('%')) {
        lhs = combine(Op::kMod, lhs, unary(depth));
      } else {
        return lhs;
      }
    }
  }

  DimExpr unary(int depth) {
    if (!eat('-')) return primary(depth);
    skip_space();
    if (is_digit(peek())) return DimExpr(number(/*negative=*/true));
    check_depth(depth + 1);
    return combine(Op::kSub, DimExpr(0), unary(depth + 1));
  }

  DimExpr primary(int depth) {
    skip_space();
    const char c = peek();
    if (is_digit(c)) return DimExpr(number(/*negative=*/false));
    if (c == '(') {
      ++pos_;
      DimExpr e = expr(depth + 1);
      expect(')');
      return e;
    }
    if (!at_end() && is_identifier_start(c)) {
      const size_t start = pos_;
      while (!at_end() && is_identifier_char(text_[pos_])) ++pos_;
      const std::string_view name = text_.substr(start, pos_ - start);
      skip_space();
      if (peek() != '(') return DimExpr::symbol(std::string(name));
      Op op = Op::kConst;
      if (name == "floordiv") {
        op = Op::kFloorDiv;
      } else if (name == "mod") {
        op = Op::kMod;
      } else if (name == "min") {
        op = Op::kMin;
      } else if (name == "max") {
        op = Op::kMax;
      } else {
        pos_ = start;
        fail("unknown function '" + std::string(name) + "' (known: floordiv, mod, min, max)");
      }
      ++pos_;  // '('
      const DimExpr a = expr(depth + 1);
      expect(',');
      const DimExpr b = expr(depth + 1);
      expect(')');
      return combine(op, a, b);
    }
    fail("expected a number, a symbol, a function or '(', found " + describe_current());
  }

  // Digits at pos_; a negative literal may reach -2^63, a positive one 2^63 - 1.
  int64_t number(bool negative) {
    const uint64_t limit = negative ? uint64_t{1} << 63 : static_cast<uint64_t>(kInt64Max);
    const size_t start = pos_;
    uint64_t magnitude = 0;
    while (!at_end() && is_digit(text_[pos_])) {
      const auto digit = static_cast<uint64_t>(text_[pos_] - '0');
      if (magnitude > (limit - digit) / 10) {
        pos_ = start;
        fail("number is out of the int64 range");
      }
      magnitude = magnitude * 10 + digit;
      ++pos_;
    }
    if (!negative) return static_cast<int64_t>(magnitude);
    if (magnitude == uint64_t{1} << 63) return kInt64Min;
    return -static_cast<int64_t>(magnitude);
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

// ---------------------------------------------------------------- DimExpr

const DimExpr::Node& DimExpr::Node::of(const DimExpr& e) {
  return e.node_ ? *e.node_ : *const_cache()[static_cast<size_t>(-kCachedConstLo)];
}

DimExpr::DimExpr(int64_t value) : node_(const_node(value)) {}

DimExpr DimExpr::symbol(std::string name) {
  if (!is_identifier(name)) {
    throw Error("invalid dimension symbol name '" + name +
                "': names must match [A-Za-z_][A-Za-z0-9_]*");
  }
  auto n = std::make_shared<Node>();
  n->op = Op::kSymbol;
  n->name = std::move(name);
  return DimExpr(std::shared_ptr<const Node>(std::move(n)));
}

DimExpr DimExpr::binary(Op op, const DimExpr& lhs, const DimExpr& rhs) {
  if (!is_binary_op(op)) {
    throw Error("DimExpr::binary: op " + std::to_string(static_cast<int>(op)) +
                " is not a binary operation");
  }
  return simplify(op, lhs, rhs);
}

DimExpr::Op DimExpr::op() const { return Node::of(*this).op; }

int64_t DimExpr::constant() const {
  const Node& n = Node::of(*this);
  if (n.op != Op::kConst) throw Error("dimension " + to_string() + " is not a constant");
  return n.value;
}

const std::string& DimExpr::symbol_name() const {
  const Node& n = Node::of(*this);
  if (n.op != Op::kSymbol) throw Error("dimension " + to_string() + " is not a symbol");
  return n.name;
}

const DimExpr& DimExpr::lhs() const {
  const Node& n = Node::of(*this);
  if (!is_binary_op(n.op)) throw Error("dimension " + to_string() + " has no operands");
  return n.lhs;
}

const DimExpr& DimExpr::rhs() const {
  const Node& n = Node::of(*this);
  if (!is_binary_op(n.op)) throw Error("dimension " + to_string() + " has no operands");
  return n.rhs;
}

int64_t DimExpr::evaluate(const SymbolBindings& bindings) const {
  return evaluate_node(*this, bindings, *this);
}

Interval DimExpr::bounds(const SymbolRanges& ranges) const {
  return bounds_node(*this, ranges, *this);
}

void DimExpr::collect_symbols(std::set<std::string>& out) const {
  collect_node_symbols(*this, out);
}

std::string DimExpr::to_string() const {
  std::string out;
  print(*this, 0, out);
  return out;
}

DimExpr DimExpr::parse(std::string_view text) { return Parser(text).parse_all(); }

bool operator==(const DimExpr& a, const DimExpr& b) { return compare(a, b) == 0; }

DimExpr operator+(const DimExpr& a, const DimExpr& b) {
  return DimExpr::binary(DimExpr::Op::kAdd, a, b);
}
DimExpr operator-(const DimExpr& a, const DimExpr& b) {
  return DimExpr::binary(DimExpr::Op::kSub, a, b);
}
DimExpr operator*(const DimExpr& a, const DimExpr& b) {
  return DimExpr::binary(DimExpr::Op::kMul, a, b);
}
DimExpr floor_div(const DimExpr& a, const DimExpr& b) {
  return DimExpr::binary(DimExpr::Op::kFloorDiv, a, b);
}
DimExpr mod(const DimExpr& a, const DimExpr& b) { return DimExpr::binary(DimExpr::Op::kMod, a, b); }
DimExpr min(const DimExpr& a, const DimExpr& b) { return DimExpr::binary(DimExpr::Op::kMin, a, b); }
DimExpr max(const DimExpr& a, const DimExpr& b) { return DimExpr::binary(DimExpr::Op::kMax, a, b); }

// ---------------------------------------------------------------- shapes

std::string shape_to_string(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    print(shape[i], 0, out);
  }
  out += ']';
  return out;
}

bool shape_is_static(const Shape& shape) {
  return std::all_of(shape.begin(), shape.end(), [](const DimExpr& d) { return d.is_constant(); });
}

std::vector<int64_t> shape_evaluate(const Shape& shape, const SymbolBindings& bindings) {
  std::vector<int64_t> dims;
  dims.reserve(shape.size());
  for (const DimExpr& d : shape) dims.push_back(d.evaluate(bindings));
  return dims;
}

Shape shape_from_dims(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

DimExpr shape_numel(const Shape& shape) {
  DimExpr n(1);
  for (const DimExpr& d : shape) n = n * d;
  return n;
}

int64_t dims_numel(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (const int64_t d : dims) {
    if (__builtin_mul_overflow(n, d, &n)) {
      throw Error("element count of shape " + dims_to_string(dims) + " overflows int64");
    }
  }
  return n;
}

std::string dims_to_string(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims[i]);
  }
  out += ']';
  return out;
}

}  // namespace ember::engine
