// fuse_pointwise: replaces each group of two or more connected pointwise layers (Activation,
// float ElementWise arithmetic, float Unary math, Cast, Select, Identity) of one output shape
// (and, below, the row reductions and scalars they read) by one FusedPointwise layer, whose
// program lists the steps in order; so does a lone layer that reads a last-dim gather or slice
// (read in place, the copy goes away) and, on a back end that asks for it (CUDA), one that
// broadcasts an operand. Without it, every
// such layer is a kernel of its own on the GPU, with a round trip of its output through memory.
//
// Grouping: a layer joins the pointwise layers of its output shape that read its output; when
// something else reads it too (a matmul's residual input, say) or it is a network output, it
// becomes one of the group's outputs, stored by the fused kernel, and its pointwise readers
// still compute with it in registers (T5's f16 clamp and the RMSNorm after it: one kernel). The
// groups are the connected components of those joins. A group's outputs are the results read
// outside it (or marked as network outputs). A group that an outside path
// leaves and re-enters (a result read by a matmul or a reduction whose output comes back into
// the group) cannot become one layer without a cycle: it splits before the re-entry, and each
// part is fused on its own. Inputs from outside broadcast to
// the group's shape (numpy rules, each on its own); one-element float constants become inline
// scalar steps, larger constants stay inputs.
//
// Row reductions: a Reduce layer over the last dim with keep_dims (a mean, sum, max...) joins
// too, when what it reads and what reads it are in the group: the result [.., 1] is a value
// broadcast along each row, and the pointwise layers that compute with it at [.., 1] shape
// (RMSNorm's rsqrt(mean + eps)) join the layers of the full shape [.., D] that read them. A
// norm or softmax written as pointwise layers and reductions becomes one layer (one kernel,
// one pass over each row). Such a group must reduce over its own rows (every Reduce reads the
// full shape) and have only full-shape results; otherwise its layers group as they would
// without reductions.
//
// Runs after fuse_epilogues (bias, activation and residual adds go to the GEMM/convolution
// epilogue first: that costs nothing at all), channels_last (which moves the pointwise layers
// next to NHWC convolutions) and simplify_attention. Off with BuilderConfig::fuse_pointwise =
// false or EMBER_FUSE_POINTWISE=0 (A/B timing). Row reductions join by the back end's default
// (Backend::row_reductions_in_generated_kernels: the CPU yes, CUDA no, measured slower);
// EMBER_FUSE_ROW_REDUCTIONS=1 or 0 overrides it.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <string>

#include "backends/backend.h"
#include "backends/semantics/fused_pointwise.h"
#include "backends/semantics/pointwise.h"
#include "builder/passes/passes.h"
#include "ember/engine/half.h"

namespace ember::engine {

namespace {

using semantics::FusedStep;

bool shapes_equal(const Shape& a, const Shape& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i])) return false;
  }
  return true;
}

/// The longest row a group with row reductions may have (a known last dim).
constexpr int64_t kMaxRow = 65536;

/// True when `row` is `full` with its last dim 1 and `full`'s last dim is not (a value per row
/// of `full`, broadcast along it).
bool is_row_of(const Shape& row, const Shape& full) {
  if (row.empty() || row.size() != full.size() || !(row.back() == DimExpr(1)) ||
      full.back() == DimExpr(1)) {
    return false;
  }
  for (size_t i = 0; i + 1 < row.size(); ++i) {
    if (!(row[i] == full[i])) return false;
  }
  return true;
}

/// True when `value` is one element broadcast over `full` (all its dims 1, no more of them)
/// and `full` has more: a scalar the layers of `full`'s shape read.
bool is_scalar_of(const Shape& value, const Shape& full) {
  if (value.size() > full.size() || shapes_equal(value, full)) return false;
  for (const DimExpr& d : value) {
    if (!(d == DimExpr(1))) return false;
  }
  return true;
}

/// The step `l` computes (operands left at -1), when it is a layer the pass fuses.
std::optional<FusedStep> step_of(const Layer* l) {
  if (l->outputs().size() != 1) return std::nullopt;
  for (const Tensor* in : l->inputs()) {
    if (in == nullptr) return std::nullopt;
  }
  FusedStep s;
  s.dtype = l->output()->dtype();
  // Casts read any number or bool and make a float or a bool; a Select takes a bool condition.
  if (l->kind() == LayerKind::kCast) {
    const DataType from = l->input(0)->dtype();
    if ((dtype_is_float(s.dtype) || s.dtype == DataType::kBool) &&
        (dtype_is_float(from) || semantics::fused_bool_or_integer(from))) {
      s.family = FusedOpFamily::kCast;
      return s;
    }
    return std::nullopt;
  }
  if (l->kind() == LayerKind::kSelect) {
    if (!dtype_is_float(s.dtype) || l->input(0)->dtype() != DataType::kBool ||
        l->input(1)->dtype() != s.dtype || l->input(2)->dtype() != s.dtype) {
      return std::nullopt;
    }
    s.family = FusedOpFamily::kSelect;
    return s;
  }
  // isinf/isnan: a bool of a float.
  if (l->kind() == LayerKind::kUnary &&
      semantics::unary_is_classification(l->params_as<UnaryParams>().op)) {
    if (s.dtype != DataType::kBool || !dtype_is_float(l->input(0)->dtype())) return std::nullopt;
    s.family = FusedOpFamily::kUnary;
    s.code = static_cast<int>(l->params_as<UnaryParams>().op);
    return s;
  }
  if (!dtype_is_float(s.dtype)) return std::nullopt;
  for (const Tensor* in : l->inputs()) {
    if (!dtype_is_float(in->dtype())) return std::nullopt;
  }
  switch (l->kind()) {
    case LayerKind::kActivation: {
      const auto& p = l->params_as<ActivationParams>();
      s.family = FusedOpFamily::kActivation;
      s.code = static_cast<int>(p.type);
      s.alpha = p.alpha;
      s.beta = p.beta;
      return s;
    }
    case LayerKind::kElementWise: {
      const auto op = l->params_as<ElementWiseParams>().op;
      if (!semantics::elementwise_is_float_arithmetic(op)) return std::nullopt;
      s.family = FusedOpFamily::kElementWise;
      s.code = static_cast<int>(op);
      return s;
    }
    case LayerKind::kUnary: {
      const auto op = l->params_as<UnaryParams>().op;
      if (!semantics::unary_is_float_math(op)) return std::nullopt;
      s.family = FusedOpFamily::kUnary;
      s.code = static_cast<int>(op);
      return s;
    }
    case LayerKind::kIdentity:  // a copy: a cast to its own dtype
      s.family = FusedOpFamily::kCast;
      return s;
    case LayerKind::kReduce: {  // over the last dim, kept as size 1: a row reduction
      const auto& p = l->params_as<ReduceParams>();
      const size_t rank = l->input(0)->rank();
      if (rank == 0 || !p.keep_dims || p.axes != std::vector<int64_t>{static_cast<int64_t>(rank) - 1} ||
          l->input(0)->dtype() != s.dtype) {
        return std::nullopt;
      }
      s.family = FusedOpFamily::kReduce;
      s.code = static_cast<int>(p.op);
      return s;
    }
    default:
      return std::nullopt;
  }
}

/// The value of a one-element float constant, when `t` is one that can become an inline scalar
/// of a group of rank `rank` (its rank may not exceed the group's, or it would widen the shape).
std::optional<double> inline_scalar(const Tensor* t, size_t rank) {
  const Weights* w = constant_of(t);
  if (w == nullptr || w->numel() != 1 || w->dims().size() > rank) return std::nullopt;
  switch (w->dtype()) {
    case DataType::kF32: return static_cast<const float*>(w->data())[0];
    case DataType::kF16: return f16_to_f32(static_cast<const uint16_t*>(w->data())[0]);
    case DataType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(w->data())[0]);
    default: return std::nullopt;
  }
}

struct UnionFind {
  std::map<const Layer*, const Layer*> parent;  ///< Every member is its own parent at first.
  const Layer* find(const Layer* l) {
    while (parent.at(l) != l) l = parent[l] = parent.at(parent.at(l));
    return l;
  }
  void join(const Layer* a, const Layer* b) { parent[find(a)] = find(b); }
};

/// "a+b+c": every member's name, as the other fusions name their layers (and TensorRT its
/// pointwise ones), so the inspector and error messages say which layers a kernel holds.
std::string group_name(const std::vector<Layer*>& members) {
  std::string s;
  for (const Layer* l : members) s += (s.empty() ? "" : "+") + l->name();
  // A lone layer's kernel is added while the layer still exists: it needs a name of its own.
  return members.size() == 1 ? s + "/fused" : s;
}

/// The members of `group` that a path leaving the group reaches again (and everything in the
/// group after them): fusing the group as one layer would put a cycle through that path.
std::set<const Layer*> reentered(const Network& net, const std::set<const Layer*>& group) {
  std::vector<const Layer*> work;
  std::set<const Layer*> seen, hit;
  for (const Layer* l : group) {
    for (Layer* c : net.consumers(l->output())) {
      if (group.count(c) == 0 && seen.insert(c).second) work.push_back(c);
    }
  }
  while (!work.empty()) {
    const Layer* l = work.back();
    work.pop_back();
    for (const Tensor* t : l->outputs()) {
      for (Layer* c : net.consumers(t)) {
        if (group.count(c) != 0) hit.insert(c);
        if (seen.insert(c).second) work.push_back(c);
      }
    }
  }
  return hit;
}

/// True when only layers of `readers` read `t` (and it is no network output).
bool only_read_by(const Network& net, const Tensor* t, const std::set<const Layer*>& readers) {
  if (t->is_output()) return false;
  for (const Layer* c : net.consumers(t)) {
    if (readers.count(c) == 0) return false;
  }
  return true;
}

/// The constant last-dim indices of `g` (normalized to [0, width)) when it is a Gather of its
/// data's last dim by a constant 1-d index list of at least two entries.
std::optional<std::vector<int64_t>> last_dim_gather(const Layer* g) {
  if (g == nullptr || g->kind() != LayerKind::kGather) return std::nullopt;
  const auto& gp = g->params_as<GatherParams>();
  const Shape& ds = g->input(0)->shape();
  const int64_t rank = static_cast<int64_t>(ds.size());
  const Weights* idx = constant_of(g->input(1));
  if (gp.mode != GatherMode::kDefault || rank == 0 || (gp.axis != rank - 1 && gp.axis != -1) ||
      idx == nullptr || idx->dims().size() != 1 || idx->numel() < 2 ||
      !ds.back().is_constant()) {
    return std::nullopt;
  }
  const int64_t width = ds.back().constant();
  std::vector<int64_t> out;
  for (int64_t i = 0; i < idx->numel(); ++i) {
    int64_t v = 0;
    if (idx->dtype() == DataType::kI32) {
      v = static_cast<const int32_t*>(idx->data())[i];
    } else if (idx->dtype() == DataType::kI64) {
      v = static_cast<const int64_t*>(idx->data())[i];
    } else {
      return std::nullopt;
    }
    if (v < 0) v += width;
    if (v < 0 || v >= width) return std::nullopt;
    out.push_back(v);
  }
  return out;
}

/// (start, size) of `l` when it is a unit-stride Slice of its input's last dim (of known size)
/// that keeps every other dim whole: a fused kernel reads it in place, as a slice of that dim
/// (FusedPointwiseParams::slices; the parts of a product that chunk() splits).
std::optional<std::pair<int64_t, int64_t>> last_dim_slice(const Layer* l) {
  if (l == nullptr || l->kind() != LayerKind::kSlice) return std::nullopt;
  const auto& sp = l->params_as<SliceParams>();
  const Shape& xs = l->input(0)->shape();
  const size_t rank = xs.size();
  if (rank == 0 || sp.start.size() != rank || sp.size.size() != rank ||
      sp.stride.size() != rank || !xs.back().is_constant() || !sp.start.back().is_constant() ||
      !sp.size.back().is_constant()) {
    return std::nullopt;
  }
  for (size_t d = 0; d < rank; ++d) {
    if (sp.stride[d] != 1) return std::nullopt;
    if (d + 1 < rank && (!(sp.start[d] == DimExpr(0)) || !(sp.size[d] == xs[d]))) {
      return std::nullopt;
    }
  }
  const int64_t start = sp.start.back().constant();
  const int64_t size = sp.size.back().constant();
  if (start < 0 || size < 1 || start + size > xs.back().constant()) return std::nullopt;
  return std::make_pair(start, size);
}

/// A reshape of a last-dim slice into heads, as a slice of the sliced tensor's rows of heads.
struct SplitSlice {
  Tensor* y = nullptr;          ///< the tensor sliced
  int64_t e = 0;                ///< the head size
  std::vector<int64_t> slice;   ///< (dim, start, size) over y's rows of e
};

/// When `t` is a reshape that splits the last dim of a last-dim slice y[..., s : s + n] into
/// [.., n / e, e] (q or k cut from a model's fused qkv projection), and nothing but `readers`
/// reads the reshape and nothing else the slice: y, e, and the slice of y's rows of e
/// (rows_of_heads) that `t` is, (dim, s / e, n / e). Needs s, n and y's width to be multiples
/// of e.
std::optional<SplitSlice> split_slice_of(const Network& net, const Tensor* t,
                                         const std::set<const Layer*>& readers) {
  const Layer* r = t->producer();
  if (!is_pure_reshape(r) || !only_read_by(net, t, readers)) return std::nullopt;
  const Tensor* part = r->input(0);
  const Layer* sl = part->producer();
  const auto cut = last_dim_slice(sl);
  if (!cut || !only_read_by(net, part, {r})) return std::nullopt;
  Tensor* y = sl->input(0);
  const Shape& ps = part->shape();
  const Shape& ts = t->shape();
  if (ts.size() != ps.size() + 1 || !ts.back().is_constant() || !ts[ts.size() - 2].is_constant()) {
    return std::nullopt;
  }
  for (size_t d = 0; d + 1 < ps.size(); ++d) {
    if (!(ts[d] == ps[d])) return std::nullopt;
  }
  const int64_t e = ts.back().constant();
  const auto [start, n] = *cut;
  const int64_t width = y->shape().back().constant();
  if (e <= 0 || start % e != 0 || n % e != 0 || width % e != 0 ||
      ts[ts.size() - 2].constant() != n / e) {
    return std::nullopt;
  }
  return SplitSlice{y, e, {static_cast<int64_t>(ts.size()) - 2, start / e, n / e}};
}

/// Whether `l` reads a last-dim gather or slice, or a reshape of a slice into heads, that
/// nothing else reads: fused alone, it reads that through a view and the copy goes away.
bool reads_a_last_dim_view(const Network& net, const Layer* l) {
  const std::set<const Layer*> self{l};
  for (const Tensor* in : l->inputs()) {
    if (in == nullptr || !only_read_by(net, in, self)) continue;
    if (last_dim_gather(in->producer()) || last_dim_slice(in->producer()) ||
        split_slice_of(net, in, self)) {
      return true;
    }
  }
  return false;
}

/// The tensors a group reads its `inputs` from, each through `views[k]`: a last-dim gather or
/// slice, then a transpose that keeps the last dim (a Shuffle with only its first transpose),
/// then a reshape of a last-dim slice into heads (split_slice_of: read as a slice of the whole
/// tensor's rows of heads), each looked through when nothing but the group (and the layers
/// looked through) reads its result.
std::vector<Tensor*> input_views(Network& net, const std::vector<Tensor*>& inputs,
                                 const std::set<const Layer*>& in_group,
                                 std::vector<semantics::InputView>& views) {
  std::vector<Tensor*> sources = inputs;
  std::set<const Layer*> readers = in_group;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Layer* g = inputs[k]->producer();
    if (!only_read_by(net, inputs[k], in_group)) continue;
    if (auto idx = last_dim_gather(g)) {
      views[k].gather = *idx;
    } else if (auto cut = last_dim_slice(g)) {
      // A slice of the last dim, which a transpose below keeps last: the same dim before it.
      views[k].slice = {static_cast<int64_t>(inputs[k]->rank()) - 1, cut->first, cut->second};
    } else {
      continue;
    }
    sources[k] = g->input(0);
    readers.insert(g);
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Layer* t = sources[k]->producer();
    if (t == nullptr || t->kind() != LayerKind::kShuffle) continue;
    const auto& sp = t->params_as<ShuffleParams>();
    // Only transposes that keep the last dim last: the kernel's neighbouring threads then
    // still read neighbouring elements. One that moves it (NHWC <-> NCHW) stays a tiled
    // transpose, which reads and writes whole cache lines.
    if (sp.first_transpose.empty() || sp.has_reshape || !sp.second_transpose.empty() ||
        sp.first_transpose.back() != static_cast<int64_t>(sp.first_transpose.size()) - 1 ||
        !only_read_by(net, sources[k], readers)) {
      continue;
    }
    views[k].perm = sp.first_transpose;
    sources[k] = t->input(0);
    readers.insert(t);
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    if (auto split = split_slice_of(net, sources[k], readers)) {
      sources[k] = rows_of_heads(net, split->y, split->e);
      views[k].slice.insert(views[k].slice.end(), split->slice.begin(), split->slice.end());
    }
  }
  return sources;
}

/// Why `members` (a group joined through row reductions or row values) cannot be one layer, or
/// nothing when it can (then `reductions` is its number of Reduce layers). Its full shape is the
/// shape of any member whose last dim is not 1; every member's output must be that or its row
/// shape, every Reduce must read the full shape, and every result read outside must have it.
std::optional<std::string> row_group_problem(const Network& net, const std::vector<Layer*>& members,
                                             const std::set<const Layer*>& in_group,
                                             const std::map<const Layer*, FusedStep>& steps,
                                             int& reductions) {
  reductions = 0;
  const Shape* full = nullptr;
  bool mixed = false;
  for (const Layer* l : members) {
    const Shape& s = l->output()->shape();
    if (steps.at(l).family == FusedOpFamily::kReduce) ++reductions;
    if (!(s.empty() || s.back() == DimExpr(1)) && full == nullptr) full = &s;
    mixed = mixed || !shapes_equal(s, members.front()->output()->shape());
  }
  if (reductions == 0 && !mixed) return std::nullopt;  // a plain group
  if (full == nullptr) return "no member has the full shape";
  // The kernels hold a whole row of every value (the CPU per thread, the GPU re-reads it per
  // pass): rows this long keep their Reduce layers.
  if (reductions > 0 && full->back().is_constant() && full->back().constant() > kMaxRow) {
    return "rows of " + std::to_string(full->back().constant()) + " elements, more than " +
           std::to_string(kMaxRow);
  }
  for (const Layer* l : members) {
    const Shape& s = l->output()->shape();
    if (!shapes_equal(s, *full) && !is_row_of(s, *full) && !is_scalar_of(s, *full)) {
      return l->name() + " has another shape";
    }
    if (steps.at(l).family == FusedOpFamily::kReduce && !shapes_equal(l->input(0)->shape(), *full)) {
      return l->name() + " reduces rows of another shape";
    }
    bool outside = l->output()->is_output();
    for (const Layer* c : net.consumers(l->output())) outside = outside || in_group.count(c) == 0;
    if (outside && !shapes_equal(s, *full)) return l->name() + "'s row values are read outside";
  }
  return std::nullopt;
}

/// A non-reduction step with an operand (not a one-element constant, which becomes an inline
/// scalar) of another shape than its output: a broadcast.
bool broadcasts_an_operand(const Layer* l, const std::map<const Layer*, FusedStep>& steps) {
  if (steps.at(l).family == FusedOpFamily::kReduce) return false;
  for (const Tensor* in : l->inputs()) {
    if (in == nullptr || shapes_equal(in->shape(), l->output()->shape())) continue;
    const Weights* c = constant_of(in);
    if (c == nullptr || c->numel() != 1) return true;
  }
  return false;
}

}  // namespace

bool is_fusable_pointwise(const Layer* l) {
  const std::optional<FusedStep> s = step_of(l);
  return s && s->family != FusedOpFamily::kReduce;
}

int fuse_pointwise_layers(Network& net, const Backend* backend, std::vector<std::string>* notes,
                          bool row_reductions) {
  const std::vector<Layer*> layers = net.layers();
  std::map<const Layer*, FusedStep> steps;
  UnionFind uf;
  for (Layer* l : layers) {
    if (l->kind() == LayerKind::kReduce && !row_reductions) continue;
    // A bool is only ever an intermediate: one that a non-step or the caller reads stays out.
    if (l->outputs().size() == 1 && l->output()->dtype() == DataType::kBool) {
      bool inside = !l->output()->is_output();
      for (const Layer* c : net.consumers(l->output())) {
        const std::optional<FusedStep> cs = step_of(c);
        inside = inside && cs && (cs->family == FusedOpFamily::kCast ||
                                  (cs->family == FusedOpFamily::kSelect && c->input(0) == l->output()));
      }
      if (!inside) continue;
    }
    if (auto s = step_of(l)) {
      steps[l] = *s;
      uf.parent[l] = l;
    }
  }
  // Two groupings: `uf` with row reductions (a Reduce reading the layer, a layer of the full
  // shape reading a row value or a scalar), `plain` without them (pointwise layers of one
  // shape): a group of `uf` that cannot be one layer falls back to its `plain` groups. Every
  // member is in its union-find before any join (a join reaches the readers, later layers).
  UnionFind plain;
  for (const auto& [l, s] : steps) {
    if (s.family != FusedOpFamily::kReduce) plain.parent[l] = l;
  }
  auto is_reduce = [&](const Layer* l) { return steps.at(l).family == FusedOpFamily::kReduce; };
  for (Layer* l : layers) {
    if (steps.count(l) == 0) continue;
    const std::vector<Layer*> readers = net.consumers(l->output());
    const Shape& out = l->output()->shape();
    // Same-shape pointwise readers join whoever else reads the output (it is then stored as a
    // group output). Joins through a reduction, a row value or a scalar need every reader in
    // the group: a row value or a Reduce's result read outside cannot be one layer's output.
    bool all = !readers.empty() && !l->output()->is_output();
    for (const Layer* r : readers) {
      const bool step = steps.count(r) != 0;
      const bool same_shape = step && !is_reduce(r) && shapes_equal(r->output()->shape(), out);
      if (same_shape && !is_reduce(l)) {
        plain.join(l, r);
        uf.join(l, r);
      }
      all = all && (same_shape || (step && is_reduce(r)) ||
                    (step && !is_reduce(r) && (is_row_of(out, r->output()->shape()) ||
                                                is_scalar_of(out, r->output()->shape()))));
    }
    if (all) {
      for (const Layer* r : readers) uf.join(l, r);
    }
  }
  // Groups in the order of their first layer, members in topological order (never by address:
  // the plan must not depend on where layers were allocated).
  auto group_by = [&](UnionFind& u, const std::vector<Layer*>& of) {
    std::map<const Layer*, size_t> group_of;
    std::vector<std::vector<Layer*>> out;
    for (Layer* l : of) {
      if (u.parent.count(l) == 0) continue;
      auto [it, added] = group_of.emplace(u.find(l), out.size());
      if (added) out.emplace_back();
      out[it->second].push_back(l);
    }
    return out;
  };
  std::vector<std::vector<Layer*>> groups = group_by(uf, layers);
  const bool lone_broadcasts = backend != nullptr && backend->fuse_lone_broadcasts();
  int split = 0, reductions = 0, absorbed_views = 0;
  int fused = 0;
  // A group that a path leaves and re-enters (RMSNorm: x -> pow -> mean -> rsqrt -> x * r)
  // splits in two: the members that path reaches (and what follows them) and the rest, each
  // tried again; the rest cannot be re-entered any more, the reached part may split further.
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const std::vector<Layer*> members = groups[gi];
    // A lone layer becomes a fused one where that saves a copy (it reads a last-dim gather or
    // slice in place), and on a back end that asks for it, where it broadcasts.
    if (members.size() < 2 &&
        !(members.size() == 1 &&
          ((lone_broadcasts && broadcasts_an_operand(members[0], steps)) ||
           (steps.at(members[0]).family != FusedOpFamily::kReduce &&
            reads_a_last_dim_view(net, members[0]))))) {
      continue;
    }
    const std::set<const Layer*> in_group(members.begin(), members.end());
    const std::string name = group_name(members);
    if (const std::set<const Layer*> hit = reentered(net, in_group); !hit.empty()) {
      std::vector<Layer*> before, after;
      for (Layer* l : members) (hit.count(l) != 0 ? after : before).push_back(l);
      groups.push_back(std::move(before));
      groups.push_back(std::move(after));
      ++split;
      continue;
    }
    // A group with row reductions (or row values read at the full shape) is one layer only
    // when its rows are the full shape's and only full-shape values leave it.
    int group_reductions = 0;
    // When a group cannot be one layer (here or at any check below), its plain groups are
    // tried instead (a group joined through reductions, row values or scalars falls apart into
    // them); a plain group that fails (too many inputs, steps or results for one kernel) is
    // tried as its first and second half in topological order. Each part is smaller, so this
    // ends; a part's paths cannot leave and re-enter it where the whole group's could not.
    auto fall_back = [&] {
      if (members.size() < 2) return;  // a lone layer that cannot be one stays as it is
      std::vector<std::vector<Layer*>> parts = group_by(plain, members);
      if (parts.size() == 1 && parts.front().size() == members.size()) {
        const auto mid = members.begin() + static_cast<std::ptrdiff_t>(members.size() / 2);
        parts = {std::vector<Layer*>(members.begin(), mid),
                 std::vector<Layer*>(mid, members.end())};
      }
      for (std::vector<Layer*>& part : parts) groups.push_back(std::move(part));
    };
    if (const std::optional<std::string> why = row_group_problem(net, members, in_group, steps,
                                                                 group_reductions)) {
      if (notes) notes->push_back(name + ": not fused with its row reductions (" + *why + ")");
      fall_back();
      continue;
    }
    size_t rank = 0;  // of the group's full shape (a scalar member may have fewer dims)
    for (const Layer* l : members) rank = std::max(rank, l->output()->shape().size());
    // Outside inputs first (their values are numbered before the steps).
    std::vector<Tensor*> inputs;
    std::map<const Tensor*, int64_t> value;
    // Scalars in the order the group first reads them (not by address: the program, and so
    // the kernel source the cache keys on, must not depend on where tensors were allocated).
    std::vector<std::pair<const Tensor*, double>> scalars;
    auto is_scalar = [&](const Tensor* t) {
      for (const auto& sc : scalars) {
        if (sc.first == t) return true;
      }
      return false;
    };
    for (const Layer* l : members) {
      for (Tensor* t : l->inputs()) {
        if ((t->producer() != nullptr && in_group.count(t->producer()) != 0) ||
            value.count(t) != 0 || is_scalar(t)) {
          continue;
        }
        if (auto v = inline_scalar(t, rank)) {
          scalars.emplace_back(t, *v);
          continue;
        }
        value[t] = static_cast<int64_t>(inputs.size());
        inputs.push_back(t);
      }
    }
    if (inputs.empty() || inputs.size() > FusedPointwiseParams::kMaxInputs) {
      if (notes) {
        notes->push_back(name + ": not fused (" + std::to_string(inputs.size()) +
                         " tensor inputs; 1 to " +
                         std::to_string(FusedPointwiseParams::kMaxInputs) + " fit one kernel)");
      }
      fall_back();
      continue;
    }
    FusedPointwiseParams p;
    int64_t next = static_cast<int64_t>(inputs.size());
    for (const auto& [t, v] : scalars) {
      FusedStep s;
      s.family = FusedOpFamily::kScalar;
      s.dtype = t->dtype();
      s.alpha = v;
      semantics::fused_append(p, s);
      value[t] = next++;
    }
    for (const Layer* l : members) {
      FusedStep s = steps.at(l);
      for (size_t k = 0; k < l->inputs().size(); ++k) s.operands[k] = value.at(l->input(k));
      semantics::fused_append(p, s);
      value[l->output()] = next++;
    }
    if (p.num_steps() > FusedPointwiseParams::kMaxSteps) {
      if (notes) notes->push_back(name + ": not fused (" + std::to_string(p.num_steps()) +
                                  " steps, more than one kernel takes)");
      fall_back();
      continue;
    }
    std::vector<Tensor*> results;
    for (Layer* l : members) {
      bool outside = l->output()->is_output();
      for (const Layer* c : net.consumers(l->output())) outside = outside || in_group.count(c) == 0;
      if (outside) {
        results.push_back(l->output());
        p.outputs.push_back(value.at(l->output()));
      }
    }
    if (results.empty()) continue;  // dead: remove_dead_layers already dropped such groups
    if (p.outputs.size() > FusedPointwiseParams::kMaxInputs) {
      if (notes) notes->push_back(name + ": not fused (" + std::to_string(p.outputs.size()) +
                                  " results read outside; 16 fit one kernel)");
      fall_back();
      continue;
    }
    // Inputs made by a transpose or a last-dim gather that only this group reads are read
    // through a view of the tensor before it: the copy layer goes away.
    std::vector<semantics::InputView> views(inputs.size());
    std::vector<Tensor*> sources = input_views(net, inputs, in_group, views);
    semantics::fused_set_views(p, views);
    int group_views = 0;
    for (const semantics::InputView& v : views) group_views += v.any() ? 1 : 0;
    std::vector<DataType> dtypes;
    for (const Tensor* t : sources) dtypes.push_back(t->dtype());
    if (backend != nullptr) backend->prepare_fused_pointwise(p, dtypes, notes);
    Layer* f = nullptr;
    try {
      f = net.add_layer(std::move(p), sources, name);
    } catch (const Error& e) {
      // The group's layers passed these checks one by one; a failure here is a bug of the
      // pass, and the layers as they are still compute the right thing: say so and keep them.
      if (notes) notes->push_back(name + ": not fused (" + e.what() + ")");
      fall_back();
      continue;
    }
    bool same = true;
    for (size_t o = 0; o < results.size(); ++o) {
      same = same && shapes_equal(f->output(o)->shape(), results[o]->shape());
    }
    if (!same) {
      // An input broadcast the group's shape further than the layers did (their shape checks
      // differ from the broadcast of all inputs): keep the layers.
      if (notes) notes->push_back(name + ": not fused (the inputs broadcast to another shape)");
      net.remove_layer(f);
      fall_back();
      continue;
    }
    for (size_t o = 0; o < results.size(); ++o) net.replace_all_uses(results[o], f->output(o));
    fused += static_cast<int>(members.size());
    reductions += group_reductions;
    absorbed_views += group_views;
    // The replaced layers go now, so the next groups see only live readers of their results.
    remove_unreachable_layers(net);
  }
  remove_unreachable_layers(net);
  if (notes && absorbed_views > 0) {
    notes->push_back(std::to_string(absorbed_views) +
                     " inputs read through their transpose, last-dim gather or slice "
                     "(no copy)");
  }
  if (notes && reductions > 0) {
    notes->push_back(std::to_string(reductions) + " row reductions fused with their pointwise layers");
  }
  if (notes && split > 0) {
    notes->push_back(std::to_string(split) +
                     " groups split where a path left and re-entered them (through a reduction, "
                     "a matmul)");
  }
  return fused;
}

void pass_fuse_pointwise(BuildState& s) {
  if (switched_off_by_env("EMBER_FUSE_POINTWISE")) {
    s.log.push_back("fuse_pointwise: off (EMBER_FUSE_POINTWISE=0)");
    return;
  }
  if (!s.config.fuse_pointwise) {
    s.log.push_back("fuse_pointwise: off (BuilderConfig::fuse_pointwise)");
    return;
  }
  Network& net = s.plan.network;
  const int before = static_cast<int>(net.layers().size());
  std::vector<std::string> notes;
  // Row reductions: the back end's default, or EMBER_FUSE_ROW_REDUCTIONS=1 / 0 (A/B timing).
  const Backend* backend = find_backend(s.config.backend);
  const char* rows = std::getenv("EMBER_FUSE_ROW_REDUCTIONS");
  const bool by_default = backend == nullptr || backend->row_reductions_in_generated_kernels();
  const bool row_reductions = rows != nullptr ? std::strcmp(rows, "0") != 0 : by_default;
  if (!row_reductions) {
    notes.push_back(rows != nullptr ? "row reductions left out (EMBER_FUSE_ROW_REDUCTIONS=0)"
                                    : "row reductions left out (the back end's default; "
                                      "EMBER_FUSE_ROW_REDUCTIONS=1 takes them)");
  }
  const int fused = fuse_pointwise_layers(net, backend, &notes, row_reductions);
  int made = 0;
  for (const Layer* l : net.layers()) made += l->kind() == LayerKind::kFusedPointwise ? 1 : 0;
  std::string line = "fuse_pointwise: " + std::to_string(fused) + " pointwise layers into " +
                     std::to_string(made) + " FusedPointwise layers (" + std::to_string(before) +
                     " -> " + std::to_string(net.layers().size()) + " layers)";
  for (const std::string& n : notes) line += "; " + n;
  s.log.push_back(line);
}

}  // namespace ember::engine
