// Symbolic dimensions: a dimension is a constant or an expression over named input-dimension
// symbols ("batch", "seq"), so a reshape can say "batch * 12" and stay valid for every shape of
// an optimization profile.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ember::engine {

/// Values bound to symbols when the runtime sees actual input shapes.
using SymbolBindings = std::map<std::string, int64_t, std::less<>>;

/// A closed integer interval [lo, hi].
struct Interval {
  int64_t lo = 0;
  int64_t hi = 0;
};

/// The range of every symbol over an optimization profile.
using SymbolRanges = std::map<std::string, Interval, std::less<>>;

/// An immutable dimension expression. Cheap to copy (shares its tree).
///
/// Constants fold on construction (`DimExpr(2) * 3` is the constant 6) and trivial identities
/// simplify (`x * 1`, `x + 0`), so equal expressions built the same way compare equal.
/// floor_div and mod follow Python (floor) semantics; dividing by zero is an Error.
class DimExpr {
 public:
  /// Expression kinds, in serialization order.
  enum class Op : uint8_t { kConst, kSymbol, kAdd, kSub, kMul, kFloorDiv, kMod, kMin, kMax };
  /// Number of Op enumerators.
  static constexpr int kNumOps = 9;

  /// The constant `value` (implicit, so `Shape{1, 3, DimExpr::symbol("h")}` reads naturally).
  DimExpr(int64_t value = 0);  // NOLINT(google-explicit-constructor)
  /// The named symbol. Names are non-empty identifiers ([A-Za-z_][A-Za-z0-9_]*).
  static DimExpr symbol(std::string name);
  /// Builds op(lhs, rhs) for a binary op, folding and simplifying.
  static DimExpr binary(Op op, const DimExpr& lhs, const DimExpr& rhs);

  Op op() const;
  bool is_constant() const { return op() == Op::kConst; }
  bool is_symbol() const { return op() == Op::kSymbol; }
  /// The constant value; throws Error when not constant.
  int64_t constant() const;
  /// The symbol name; throws Error when not a symbol.
  const std::string& symbol_name() const;
  /// Operands of a binary expression; throws Error on leaves.
  const DimExpr& lhs() const;
  const DimExpr& rhs() const;

  /// Evaluates with every symbol bound; throws Error naming an unbound symbol or a division by 0.
  int64_t evaluate(const SymbolBindings& bindings) const;
  /// Sound bounds over all symbol values in `ranges` (interval arithmetic); throws Error
  /// naming a symbol without a range.
  Interval bounds(const SymbolRanges& ranges) const;
  /// Adds every symbol used to `out`.
  void collect_symbols(std::set<std::string>& out) const;

  /// Human- and parser-readable text: "batch*12", "floordiv(seq+1, 2)", "min(a, b)".
  std::string to_string() const;
  /// Parses the text to_string produces (and the usual infix forms with + - * and parentheses).
  /// Throws Error on malformed text; never recurses deeper than a fixed limit.
  static DimExpr parse(std::string_view text);

  /// Structural equality (after the simplification done on construction).
  friend bool operator==(const DimExpr& a, const DimExpr& b);
  friend bool operator!=(const DimExpr& a, const DimExpr& b) { return !(a == b); }

  struct Node;

 private:
  explicit DimExpr(std::shared_ptr<const Node> node) : node_(std::move(node)) {}
  std::shared_ptr<const Node> node_;
};

DimExpr operator+(const DimExpr& a, const DimExpr& b);
DimExpr operator-(const DimExpr& a, const DimExpr& b);
DimExpr operator*(const DimExpr& a, const DimExpr& b);
/// Floor division (Python's //).
DimExpr floor_div(const DimExpr& a, const DimExpr& b);
/// Floor modulo (Python's %).
DimExpr mod(const DimExpr& a, const DimExpr& b);
DimExpr min(const DimExpr& a, const DimExpr& b);
DimExpr max(const DimExpr& a, const DimExpr& b);

/// A tensor shape: one DimExpr per dimension (rank 0 is a scalar).
using Shape = std::vector<DimExpr>;

/// "[1, 3, batch*2]".
std::string shape_to_string(const Shape& shape);
/// True when every dimension is a constant.
bool shape_is_static(const Shape& shape);
/// Evaluates every dimension.
std::vector<int64_t> shape_evaluate(const Shape& shape, const SymbolBindings& bindings);
/// A constant shape from concrete dims.
Shape shape_from_dims(const std::vector<int64_t>& dims);
/// Product of the dimensions (1 for rank 0).
DimExpr shape_numel(const Shape& shape);
/// Product of concrete dims (1 for rank 0).
int64_t dims_numel(const std::vector<int64_t>& dims);
/// "[1, 3, 224]".
std::string dims_to_string(const std::vector<int64_t>& dims);

}  // namespace ember::engine
