// Autocast: an f32 program runs in f16 or bf16 except where low precision loses accuracy.
//
// The engine is strongly typed, so precision is a graph transformation: each node is classified
// (low precision, kept in f32 with a reason, a view that follows its input, or untouched), then
// the graph is rebuilt with casts where a low-precision value meets an f32 reader or the
// reverse. Casts are made lazily, once per value and direction, so no cast is inserted that
// nothing reads; weight constants are converted directly (a low-precision constant, no cast
// node), so the builder's fusions (conv + batch norm + relu, matmul + bias + GELU) see one
// low-precision chain. Graph inputs and outputs keep their dtypes: a compiled program is a
// drop-in replacement.
//
// Values that PyTorch may see at a segment boundary must still name their fx node: a lowered
// node keeps its output names and fx names (its outputs are now low precision, and
// Value::torch_dtype() keeps f32 so the engine casts at the boundary), and every cast carries
// the fx name of the value it copies.
//
// The rule table below is the one place that says which ops stay in f32 whatever the data;
// docs/precision.md shows it (a test keeps the two in step).
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ember/compiler/lowering.h"
#include "ember/compiler/partitioning.h"
#include "ember/engine/half.h"

namespace ember::compiler {

namespace {

constexpr const char* kSoftmaxWhy =
    "exp of logits above 11 overflows f16, and the normalizing sum drops small terms";
constexpr const char* kNormWhy =
    "mean and variance over many elements: squares overflow f16 and small variances round away";
constexpr const char* kExpLogWhy =
    "exp/pow overflow the f16 range (65504); log, rsqrt and reciprocal of small values lose "
    "their relative precision";
constexpr const char* kReductionWhy =
    "a sum of many terms overflows f16 and drops addends below its last digit";
constexpr const char* kDistanceWhy =
    "squared differences summed over a dimension overflow f16 or cancel";
constexpr const char* kLossWhy = "losses average log-probabilities or squared errors over a batch";

}  // namespace

const std::vector<AutocastRule>& autocast_rules() {
  static const std::vector<AutocastRule> rules = [] {
    std::vector<AutocastRule> r;
    auto add = [&](const char* category, const char* why, std::initializer_list<const char*> ops) {
      for (const char* op : ops) r.push_back({op, category, why});
    };
    add("softmax", kSoftmaxWhy,
        {"aten::_softmax", "aten::softmax", "aten::_log_softmax", "aten::log_softmax",
         "aten::_safe_softmax"});
    add("normalization", kNormWhy,
        {"aten::native_layer_norm", "aten::layer_norm", "aten::native_group_norm",
         "aten::group_norm", "aten::rms_norm", "aten::_fused_rms_norm", "aten::instance_norm",
         "aten::norm", "aten::linalg_vector_norm", "aten::renorm"});
    add("exp/log", kExpLogWhy,
        {"aten::exp",    "aten::exp2",     "aten::expm1",     "aten::log",        "aten::log2",
         "aten::log10",  "aten::log1p",    "aten::pow",       "aten::reciprocal", "aten::rsqrt",
         "aten::sinh",   "aten::cosh",     "aten::tan",       "aten::acos",       "aten::asin",
         "aten::erfinv", "aten::softplus", "aten::logsumexp", "aten::logit",      "aten::xlogy"});
    add("reduction", kReductionWhy,
        {"aten::sum", "aten::prod", "aten::cumsum", "aten::cumprod", "aten::logcumsumexp",
         "aten::var", "aten::std", "aten::var_mean", "aten::std_mean"});
    add("distance", kDistanceWhy,
        {"aten::cdist", "aten::_cdist_forward", "aten::dist", "aten::pdist", "aten::_pdist_forward",
         "aten::cosine_similarity", "aten::pairwise_distance"});
    add("loss", kLossWhy,
        {"aten::mse_loss", "aten::l1_loss", "aten::smooth_l1_loss", "aten::huber_loss",
         "aten::nll_loss", "aten::nll_loss_forward", "aten::nll_loss2d_forward",
         "aten::binary_cross_entropy", "aten::binary_cross_entropy_with_logits", "aten::kl_div",
         "aten::cross_entropy_loss", "aten::poisson_nll_loss", "aten::cosine_embedding_loss",
         "aten::margin_ranking_loss", "aten::soft_margin_loss", "aten::hinge_embedding_loss",
         "aten::multi_margin_loss", "aten::triplet_margin_loss"});
    return r;
  }();
  return rules;
}

namespace {

/// "aten::sum.dim_IntList" -> "aten::sum".
std::string op_base(const std::string& op) {
  const size_t colons = op.find("::");
  const size_t dot = op.find('.', colons == std::string::npos ? 0 : colons + 2);
  return dot == std::string::npos ? op : op.substr(0, dot);
}

/// As torch_executed_ops spells ops (the partitioner's rule): "aten::add" names every overload
/// of aten::add, "aten::add.Tensor" one overload.
bool op_matches(const std::string& op, const std::string& pattern) {
  if (op == pattern) return true;
  return op.size() > pattern.size() && op.compare(0, pattern.size(), pattern) == 0 &&
         op[pattern.size()] == '.';
}

const AutocastRule* find_rule(const std::string& op) {
  const std::string base = op_base(op);
  for (const AutocastRule& r : autocast_rules()) {
    if (r.op == base) return &r;
  }
  return nullptr;
}

/// dtype conversions: _to_copy / to.dtype without a device.
bool is_cast(const Node& n) {
  if (n.outputs().size() != 1 || n.num_args() < 2) return false;
  if (n.op() == "aten::_to_copy") return n.arg_is_none(3);
  return n.op() == "aten::to.dtype";
}

/// True when every value of `from` is exactly representable in `to` (a widening cast).
bool widens_exactly(ScalarType from, ScalarType to) {
  using T = ScalarType;
  switch (from) {
    case T::kF16:
    case T::kBF16:
      return to == T::kF32 || to == T::kF64;
    case T::kF32:
      return to == T::kF64;
    case T::kI8:
    case T::kU8:
      // |x| <= 255 needs 8 significant bits: f16 has 11, bf16 8.
      return to == T::kI16 || to == T::kI32 || to == T::kI64 || to == T::kF32 || to == T::kF64 ||
             to == T::kF16 || to == T::kBF16;
    case T::kI16:
      return to == T::kI32 || to == T::kI64 || to == T::kF32 || to == T::kF64;
    case T::kI32:
      return to == T::kI64 || to == T::kF64;
    case T::kF8E4M3:  // 3 mantissa bits, exponents 2^-9 .. 2^8
      return to == T::kF16 || to == T::kBF16 || to == T::kF32 || to == T::kF64;
    case T::kBool:
    case T::kI64:
    case T::kF64:
      return false;
  }
  return false;
}

/// The cast's source when `v` is a widening cast of a value of type `want` (so casting `v`
/// back to `want` returns that source exactly), else nullptr.
Value* widened_from(const Value* v, ScalarType want) {
  const Node* p = v->producer();
  if (p == nullptr || !is_cast(*p)) return nullptr;
  const auto* src = std::get_if<Value*>(&p->args()[0]);
  if (src == nullptr || *src == nullptr || (*src)->dtype() != want) return nullptr;
  return widens_exactly(want, v->dtype()) ? *src : nullptr;
}

bool has_dtype_arg(const Node& n) {
  return std::any_of(n.args().begin(), n.args().end(),
                     [](const Arg& a) { return std::holds_alternative<ScalarType>(a); });
}

/// Views, copies and concatenation: no arithmetic, so they run in whatever precision their
/// input has (a cast before a view would only move the cast).
bool follows_input(const std::string& op) {
  return is_shape_only_op(op) || op == "aten::cat" || op == "aten::stack";
}

int64_t dim_max(const DimExpr& d, const engine::SymbolRanges& ranges) {
  return d.is_constant() ? d.constant() : d.bounds(ranges).hi;
}

int64_t numel_max(const Shape& s, const engine::SymbolRanges& ranges, size_t from = 0) {
  int64_t n = 1;
  for (size_t i = from; i < s.size(); ++i) n *= dim_max(s[i], ranges);
  return n;
}

/// Normalizes a possibly negative dim.
size_t norm_dim(int64_t d, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  if (d < -r || d >= std::max<int64_t>(r, 1)) throw Error("dim out of range");
  return static_cast<size_t>(d < 0 ? d + r : d);
}

/// How many elements one output element of `n` sums over (matmul/convolution inner size,
/// reduction extent, softmax/norm extent), or nullopt for ops that reduce nothing.
std::optional<int64_t> reduction_depth(const Node& n, const engine::SymbolRanges& ranges) {
  const std::string base = op_base(n.op());
  auto last = [&](size_t i) -> int64_t {
    const Shape& s = n.arg_tensor(i)->shape();
    return s.empty() ? 1 : dim_max(s.back(), ranges);
  };
  try {
    if (base == "aten::mm" || base == "aten::bmm" || base == "aten::matmul" ||
        base == "aten::linear") {
      return last(0);
    }
    if (base == "aten::addmm" || base == "aten::baddbmm" || base == "aten::addbmm") {
      return last(1);
    }
    if (base == "aten::convolution") {
      const Shape& w = n.arg_tensor(1)->shape();
      if (w.size() < 2) return std::nullopt;
      const int64_t kernel = numel_max(w, ranges, 2);
      const bool transposed = n.arg_bool_or(6, false);
      const int64_t groups = std::max<int64_t>(n.arg_int_or(8, 1), 1);
      return (transposed ? dim_max(w[0], ranges) / groups : dim_max(w[1], ranges)) * kernel;
    }
    if (base.rfind("aten::_scaled_dot_product", 0) == 0 ||
        base == "aten::scaled_dot_product_attention") {
      const Shape& k = n.arg_tensor(1)->shape();
      const int64_t keys = k.size() >= 2 ? dim_max(k[k.size() - 2], ranges) : 1;
      return std::max(last(0), keys);
    }
    if (base == "aten::_softmax" || base == "aten::softmax" || base == "aten::_log_softmax" ||
        base == "aten::log_softmax" || base == "aten::_safe_softmax") {
      const Shape& s = n.arg_tensor(0)->shape();
      if (s.empty()) return 1;
      return dim_max(s[norm_dim(n.arg_int(1), s.size())], ranges);
    }
    if (base == "aten::native_layer_norm" || base == "aten::layer_norm") {
      int64_t d = 1;
      for (int64_t x : n.arg_ints(1)) d *= x;
      return d;
    }
    if (base == "aten::native_group_norm") {
      const Shape& s = n.arg_tensor(0)->shape();
      const int64_t groups = std::max<int64_t>(n.arg_int(6), 1);
      return numel_max(s, ranges, 1) / groups;
    }
    static const std::unordered_set<std::string> kReduce = {
        "aten::sum",    "aten::mean",      "aten::amax",     "aten::amin",
        "aten::var",    "aten::std",       "aten::var_mean", "aten::std_mean",
        "aten::prod",   "aten::logsumexp", "aten::norm",     "aten::linalg_vector_norm",
        "aten::cumsum", "aten::cumprod"};
    if (kReduce.count(base) != 0) {
      const Shape& s = n.arg_tensor(0)->shape();
      if (n.num_args() < 2 || n.arg_is_none(1)) return numel_max(s, ranges);
      const Arg& a = n.args()[1];
      if (std::holds_alternative<int64_t>(a)) {
        return s.empty() ? 1 : dim_max(s[norm_dim(std::get<int64_t>(a), s.size())], ranges);
      }
      if (const auto* dims = std::get_if<std::vector<DimExpr>>(&a)) {
        if (dims->empty()) return numel_max(s, ranges);
        int64_t d = 1;
        for (const DimExpr& x : *dims) {
          if (!x.is_constant()) return std::nullopt;
          d *= s.empty() ? 1 : dim_max(s[norm_dim(x.constant(), s.size())], ranges);
        }
        return d;
      }
      return std::nullopt;  // a norm's p in position 1: the reduced dims follow; be quiet
    }
  } catch (const Error&) {
    return std::nullopt;  // arguments this rule cannot read: conversion reports them
  }
  return std::nullopt;
}

std::string format_number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}

enum class Kind { kUntouched, kHigh, kLow, kFollow };

struct Decision {
  Kind kind = Kind::kUntouched;
  std::string reason;  // kHigh only
};

struct Rules {
  const CompileSettings& s;
  std::vector<std::pair<std::string, std::regex>> node_patterns;
  engine::SymbolRanges ranges;
};

Decision classify(const Node& n, const Rules& r,
                  const std::unordered_map<const Node*, std::string>& forced) {
  const bool has_f32_output = std::any_of(n.outputs().begin(), n.outputs().end(),
                                          [](Value* v) { return v->dtype() == ScalarType::kF32; });
  if (!has_f32_output) return {Kind::kUntouched, ""};
  if (auto it = forced.find(&n); it != forced.end()) return {Kind::kHigh, it->second};
  for (const auto& [text, re] : r.node_patterns) {
    for (const std::string* name : {&n.fx_name(), &n.module_path()}) {
      if (!name->empty() && std::regex_search(*name, re)) {
        return {Kind::kHigh, "autocast_excluded_nodes: '" + text + "' matches '" + *name + "'"};
      }
    }
  }
  for (const std::string& p : r.s.autocast_excluded_ops) {
    if (op_matches(n.op(), p)) return {Kind::kHigh, "autocast_excluded_ops: '" + p + "'"};
  }
  // The model names a dtype here (a cast, arange/full with dtype=): its choice stands.
  if (has_dtype_arg(n)) return {Kind::kUntouched, ""};
  if (const AutocastRule* rule = find_rule(n.op())) {
    return {Kind::kHigh, "rule table (" + rule->category + "): " + rule->why};
  }
  if (r.s.autocast_max_depth_of_reduction >= 0) {
    const auto depth = reduction_depth(n, r.ranges);
    if (depth && *depth > r.s.autocast_max_depth_of_reduction) {
      return {Kind::kHigh, "reduces over " + std::to_string(*depth) +
                               " elements > autocast_max_depth_of_reduction " +
                               std::to_string(r.s.autocast_max_depth_of_reduction)};
    }
  }
  if (r.s.autocast_max_output_threshold >= 0 && !r.s.autocast_output_magnitudes.empty()) {
    auto check = [&](const Value* v, const char* role) -> std::optional<std::string> {
      if (v == nullptr || v->is_constant() || v->dtype() != ScalarType::kF32) return std::nullopt;
      auto it = r.s.autocast_output_magnitudes.find(v->fx_name());
      if (it == r.s.autocast_output_magnitudes.end() ||
          !(it->second > r.s.autocast_max_output_threshold)) {
        return std::nullopt;
      }
      return std::string("max |x| of ") + role + " '" + v->fx_name() + "' on the calibration " +
             "inputs is " + format_number(it->second) + " > autocast_max_output_threshold " +
             format_number(r.s.autocast_max_output_threshold);
    };
    for (const Value* v : n.outputs()) {
      if (auto why = check(v, "output")) return {Kind::kHigh, *why};
    }
    for (const Value* v : n.input_values()) {
      if (auto why = check(v, "input")) return {Kind::kHigh, *why};
    }
  }
  const NodeSupport support = node_support(n, r.s);
  if (!support.supported) return {Kind::kHigh, "runs in PyTorch: " + support.reason};
  if (follows_input(n.op())) return {Kind::kFollow, ""};
  return {Kind::kLow, ""};
}

/// Rebuilds the graph into `ng` following the decisions.
class Rebuild {
 public:
  Rebuild(const Graph& g, Graph& ng, ScalarType low) : g_(g), ng_(ng), low_(low) {}

  void run(const std::unordered_map<const Node*, Decision>& decisions) {
    ng_.symbols() = g_.symbols();
    for (Value* v : g_.values()) {
      Value* nv = nullptr;
      if (v->is_input()) {
        nv = ng_.add_input(v->name(), v->dtype(), v->shape());
      } else if (v->is_constant()) {
        nv = ng_.add_constant(v->name(), v->dtype(), v->shape(), v->constant());
      } else {
        continue;
      }
      copy_names(v, nv);
      hi_[v] = nv;
    }
    for (const Node* n : g_.nodes()) {
      const Decision& d = decisions.at(n);
      bool low = d.kind == Kind::kLow;
      if (d.kind == Kind::kFollow) {
        // Low only when every f32 tensor it reads already is (constants can be converted).
        int f32_inputs = 0, low_inputs = 0;
        for (const Value* v : n->input_values()) {
          if (v == nullptr || v->is_constant() || v->dtype() != ScalarType::kF32) continue;
          ++f32_inputs;
          low_inputs += produced_low_.count(v) != 0 ? 1 : 0;
        }
        low = f32_inputs > 0 && low_inputs == f32_inputs;
      }
      add(*n, low);
      if (low) ++lowered_;
    }
    std::vector<Value*> outs;
    for (const Value* v : g_.outputs()) outs.push_back(hi(v));
    ng_.set_outputs(outs);
  }

  /// The new node of each original node that now runs in low precision.
  const std::unordered_map<const Node*, Node*>& low_nodes() const { return low_nodes_; }
  int lowered() const { return lowered_; }
  int casts() const { return casts_; }
  int pairs() const { return pairs_; }

 private:
  static void copy_names(const Value* from, Value* to) {
    to->set_fx_name(from->fx_name());
    to->set_torch_dtype(from->torch_dtype());
  }

  std::string unique(const std::string& name) {
    std::string out = name;
    for (int i = 1; g_.find_value(out) != nullptr || ng_.find_value(out) != nullptr; ++i) {
      out = name + "_" + std::to_string(i);
    }
    return out;
  }

  Value* add_cast(Value* src, ScalarType to, const Value* original, const std::string& name) {
    const std::vector<Arg> args = {src, to, NoneArg{}, NoneArg{}, NoneArg{}, false, NoneArg{}};
    Node* c = ng_.add_node("aten::_to_copy", args, {TensorType{to, src->shape()}}, {name});
    copy_names(original, c->output());
    ++casts_;
    return c->output();
  }

  /// The f32 (original-precision) version of original value `v`.
  Value* hi(const Value* v) {
    if (auto it = hi_.find(v); it != hi_.end()) return it->second;
    Value* low = lo_.at(v);  // produced in low precision: an f32 copy
    Value* out = add_cast(low, v->dtype(), v, unique(v->name() + "_f32"));
    hi_[v] = out;
    return out;
  }

  /// The low-precision version of original value `v` (unchanged when `v` is not f32).
  Value* lo(const Value* v) {
    if (v->dtype() != ScalarType::kF32) return hi(v);
    if (auto it = lo_.find(v); it != lo_.end()) return it->second;
    Value* out = nullptr;
    if (Value* src = widened_from(v, low_)) {
      out = hi(src);  // f16 -> f32 -> f16 is f16 itself: a redundant pair
      ++pairs_;
    } else if (v->is_constant()) {
      out = low_constant(v);
    } else {
      out = add_cast(hi(v), low_, v, unique(v->name() + "_" + scalar_type_name(low_)));
    }
    lo_[v] = out;
    return out;
  }

  /// A weight converted to the low-precision type (no data in graphs parsed from text).
  Value* low_constant(const Value* v) {
    ConstantData data;
    const ConstantData& src = v->constant();
    if (src.data != nullptr) {
      const size_t n = src.nbytes / sizeof(float);
      auto buf = std::make_shared<std::vector<uint16_t>>(n);
      const auto* f = static_cast<const float*>(src.data.get());
      for (size_t i = 0; i < n; ++i) {
        (*buf)[i] =
            low_ == ScalarType::kBF16 ? engine::f32_to_bf16(f[i]) : engine::f32_to_f16(f[i]);
      }
      data = ConstantData{std::shared_ptr<const void>(buf, buf->data()), n * sizeof(uint16_t)};
    }
    Value* out = ng_.add_constant(unique(v->name() + "_" + scalar_type_name(low_)), low_,
                                  v->shape(), std::move(data));
    copy_names(v, out);
    return out;
  }

  Arg map_arg(const Arg& a, bool low) {
    if (const auto* v = std::get_if<Value*>(&a)) {
      if (*v == nullptr) return a;
      return low ? lo(*v) : hi(*v);
    }
    if (const auto* l = std::get_if<std::vector<Value*>>(&a)) {
      std::vector<Value*> out;
      for (const Value* v : *l) out.push_back(v == nullptr ? nullptr : low ? lo(v) : hi(v));
      return out;
    }
    return a;
  }

  void add(const Node& n, bool low) {
    std::vector<Arg> args;
    for (const Arg& a : n.args()) args.push_back(map_arg(a, low));
    std::vector<TensorType> types;
    std::vector<std::string> names;
    for (const Value* o : n.outputs()) {
      const bool lowered = low && o->dtype() == ScalarType::kF32;
      types.push_back({lowered ? low_ : o->dtype(), o->shape()});
      names.push_back(o->name());
    }
    Node* nn = ng_.add_node(n.op(), std::move(args), types, names);
    nn->set_fx_name(n.fx_name());
    nn->set_module(n.module_path(), n.module_types());
    for (size_t i = 0; i < n.outputs().size(); ++i) {
      const Value* o = n.output(i);
      copy_names(o, nn->output(i));
      if (low && o->dtype() == ScalarType::kF32) {
        lo_[o] = nn->output(i);
        produced_low_.insert(o);
      } else {
        hi_[o] = nn->output(i);
      }
    }
    if (low) low_nodes_[&n] = nn;
  }

  const Graph& g_;
  Graph& ng_;
  ScalarType low_;
  std::unordered_map<const Value*, Value*> hi_, lo_;
  std::unordered_set<const Value*> produced_low_;
  std::unordered_map<const Node*, Node*> low_nodes_;
  int lowered_ = 0, casts_ = 0, pairs_ = 0;
};

}  // namespace

AutocastReport lower_autocast(Graph& g, const CompileSettings& settings) {
  AutocastReport report;
  if (!settings.enable_autocast) return report;
  const auto low = scalar_type_from_name(settings.autocast_low_precision_type);
  if (!low || (*low != ScalarType::kF16 && *low != ScalarType::kBF16)) {
    throw Error("autocast_low_precision_type must be f16 or bf16, got '" +
                settings.autocast_low_precision_type + "'");
  }
  Rules rules{settings, {}, {}};
  for (const std::string& p : settings.autocast_excluded_nodes) {
    try {
      rules.node_patterns.emplace_back(p, std::regex(p, std::regex::ECMAScript));
    } catch (const std::regex_error& e) {
      throw Error("autocast_excluded_nodes: '" + p + "' is not a valid regular expression (" +
                  e.what() + ")");
    }
  }
  for (const auto& [name, r] : g.symbols()) rules.ranges[name] = engine::Interval{r.min, r.max};

  // A lowered node whose converter refuses the low-precision version is kept in f32 and the
  // graph rebuilt; each round only adds such nodes, so this ends (a few rounds at most).
  std::unordered_map<const Node*, std::string> forced;
  for (int round = 0;; ++round) {
    std::unordered_map<const Node*, Decision> decisions;
    for (const Node* n : g.nodes()) decisions[n] = classify(*n, rules, forced);
    Graph ng;
    Rebuild rebuild(g, ng, *low);
    rebuild.run(decisions);
    bool refused = false;
    for (const auto& [old, nn] : rebuild.low_nodes()) {
      const NodeSupport s = node_support(*nn, settings);
      if (!s.supported) {
        forced[old] =
            std::string("its converter refuses ") + scalar_type_name(*low) + ": " + s.reason;
        refused = true;
      }
    }
    if (refused && round < 8) continue;
    for (const Node* n : g.nodes()) {
      const Decision& d = decisions[n];
      if (d.kind == Kind::kHigh) report.kept.push_back({n->fx_name(), n->op(), d.reason});
    }
    report.lowered = rebuild.lowered();
    report.casts = rebuild.casts();
    report.pairs_removed = rebuild.pairs();
    g = std::move(ng);
    return report;
  }
}

int lower_remove_cast_pairs(Graph& g) {
  int removed = 0;
  for (Node* n : g.nodes()) {
    if (!is_cast(*n)) continue;
    const auto* in = std::get_if<Value*>(&n->args()[0]);
    if (in == nullptr || *in == nullptr) continue;
    Value* src = widened_from(*in, n->output()->dtype());
    if (src == nullptr || src->shape() != n->output()->shape()) continue;
    g.replace_all_uses(n->output(), src);
    ++removed;
  }
  return removed;
}

}  // namespace ember::compiler
