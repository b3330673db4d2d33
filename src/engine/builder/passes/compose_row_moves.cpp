// compose_row_moves: a chain of layers that only move whole rows of a tensor (its last dim, the
// row, stays in place) becomes one Gather of rows with a constant index table:
//
//   roll (two Gathers, gather_slices' rewrite of torch.roll) -> view -> permute -> reshape
//     (Swin's cyclic shift and window partition: x[b, h, w, c] -> windows[b * nW, 49, c])
//   => reshape(x, [B, H * W, C]) -> Gather(axis 1, table[nW * 49]) -> reshape
//
// The layers that count as row moves: a Gather in default mode along a dim before the last
// with constant indices, and a Shuffle whose transposes keep the last dim where it is and whose
// reshape keeps the last dim's size (then the row-major order of the rows is unchanged). The
// chain's effect is computed by running it on the table of row numbers; when the result is
// the same for every image of the leading dim (row b * T' + t reads row b * T + table[t]), the
// gather runs along dim 1 of [B, T, C] with a T'-entry table, else along dim 0 of [rows, C].
// A chain that leaves every row where it was becomes a reshape (free), however many copies it
// had; otherwise only chains of two or more copies are rewritten (one copy stays as it is).
//
// Swin-T's shifted blocks each move the activations three times into the windows and three
// times back (two roll gathers and a transpose each way): one gather each way after this pass.
// Static shapes only (the table is a constant). Runs after gather_slices (level >= 2).
//
// First, row moves after a row-wise MatrixMultiply (A not transposed, B a matrix, no residual)
// whose A itself comes from a row move move before it, onto A's rows: a product treats each
// row on its own, so moving rows before it or after it gives the same result, and before it
// they join the moves already there (one table) instead of copying the product's output once
// more. Swin-T's shifted blocks: simplify_attention moved the window reverse before the
// out-projection, but the reverse roll (a Gather made later by gather_slices) stayed after it,
// between the product and the residual add; after this the add follows the product, and
// fuse_epilogues_after_row_moves makes it the product's residual.
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// Row numbers laid out over the dims before the last: what the chain does to the rows.
struct Rows {
  std::vector<int64_t> dims;
  std::vector<int64_t> ids;

  int64_t count() const {
    return std::accumulate(dims.begin(), dims.end(), int64_t{1}, std::multiplies<>());
  }

  /// The dims permuted by `perm` (a permutation of [0, dims.size())).
  void transpose(const std::vector<int64_t>& perm) {
    const size_t r = dims.size();
    std::vector<int64_t> out_dims(r), in_strides(r, 1), out_ids(ids.size());
    for (size_t d = r; d-- > 1;) in_strides[d - 1] = in_strides[d] * dims[d];
    for (size_t d = 0; d < r; ++d) out_dims[d] = dims[static_cast<size_t>(perm[d])];
    std::vector<int64_t> idx(r, 0);
    for (size_t o = 0; o < out_ids.size(); ++o) {
      int64_t src = 0;
      for (size_t d = 0; d < r; ++d) src += idx[d] * in_strides[static_cast<size_t>(perm[d])];
      out_ids[o] = ids[static_cast<size_t>(src)];
      for (size_t d = r; d-- > 0;) {  // the next output index, row-major
        if (++idx[d] < out_dims[d]) break;
        idx[d] = 0;
      }
    }
    dims = std::move(out_dims);
    ids = std::move(out_ids);
  }

  /// numpy.take along `axis` with in-range indices.
  void take(size_t axis, const std::vector<int64_t>& index) {
    int64_t outer = 1, inner = 1;
    for (size_t d = 0; d < axis; ++d) outer *= dims[d];
    for (size_t d = axis + 1; d < dims.size(); ++d) inner *= dims[d];
    const int64_t n = dims[axis];
    std::vector<int64_t> out;
    out.reserve(static_cast<size_t>(outer) * index.size() * static_cast<size_t>(inner));
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t j : index) {
        for (int64_t e = 0; e < inner; ++e) out.push_back(ids[static_cast<size_t>((o * n + j) * inner + e)]);
      }
    }
    dims.erase(dims.begin() + static_cast<std::ptrdiff_t>(axis));
    dims.insert(dims.begin() + static_cast<std::ptrdiff_t>(axis), static_cast<int64_t>(index.size()));
    ids = std::move(out);
  }
};

/// The static dims of `t`, or nullopt when one is symbolic.
std::optional<std::vector<int64_t>> static_dims(const Tensor* t) {
  std::vector<int64_t> d;
  for (const DimExpr& e : t->shape()) {
    if (!e.is_constant()) return std::nullopt;
    d.push_back(e.constant());
  }
  return d;
}

bool keeps_last(const std::vector<int64_t>& perm) {
  return perm.empty() || perm.back() == static_cast<int64_t>(perm.size()) - 1;
}

bool is_identity_perm(const std::vector<int64_t>& perm) {
  for (size_t i = 0; i < perm.size(); ++i) {
    if (perm[i] != static_cast<int64_t>(i)) return false;
  }
  return true;
}

constexpr int64_t kMaxRows = int64_t{1} << 22;  // index tables up to 16 MB (i32)

/// The in-range constant indices of Gather `l` along a dim of size `n`, or nullopt.
std::optional<std::vector<int64_t>> gather_indices(const Layer* l, int64_t n) {
  const Weights* w = constant_of(l->input(1));
  if (w == nullptr || w->dims().size() != 1 ||
      (w->dtype() != DataType::kI32 && w->dtype() != DataType::kI64)) {
    return std::nullopt;
  }
  std::vector<int64_t> index(static_cast<size_t>(w->numel()));
  for (int64_t i = 0; i < w->numel(); ++i) {
    int64_t v = w->dtype() == DataType::kI32 ? int64_t{static_cast<const int32_t*>(w->data())[i]}
                                             : static_cast<const int64_t*>(w->data())[i];
    if (v < 0) v += n;
    if (v < 0 || v >= n) return std::nullopt;  // the layer's own error at run time, not ours
    index[static_cast<size_t>(i)] = v;
  }
  return index;
}

/// Whether `l` moves whole rows only: static shapes of rank >= 2 with the same last dim and at
/// most kMaxRows rows on either side, and a default-mode Gather along a dim before the last with
/// in-range constant 1-d indices, or a Shuffle whose transposes keep the last dim.
bool is_row_move(const Layer* l) {
  if (l->kind() != LayerKind::kGather && l->kind() != LayerKind::kShuffle) return false;
  const auto in_dims = static_dims(l->input(0));
  const auto out_dims = static_dims(l->output());
  if (!in_dims || !out_dims || in_dims->size() < 2 || out_dims->size() < 2 ||
      in_dims->back() != out_dims->back() || in_dims->back() <= 0) {
    return false;
  }
  auto rows_of = [](const std::vector<int64_t>& d) {
    return std::accumulate(d.begin(), d.end() - 1, int64_t{1}, std::multiplies<>());
  };
  if (rows_of(*in_dims) > kMaxRows || rows_of(*out_dims) > kMaxRows) return false;
  if (l->kind() == LayerKind::kGather) {
    const auto& gp = l->params_as<GatherParams>();
    return gp.mode == GatherMode::kDefault && gp.axis >= 0 &&
           gp.axis < static_cast<int64_t>(in_dims->size()) - 1 &&
           gather_indices(l, (*in_dims)[static_cast<size_t>(gp.axis)]).has_value();
  }
  const auto& sp = l->params_as<ShuffleParams>();
  return keeps_last(sp.first_transpose) && keeps_last(sp.second_transpose);
}

/// Applies row move `l` (is_row_move) to `rows`, the rows of l's input. Returns 1 when `l`
/// moves bytes (not a pure reshape), else 0.
int apply(const Layer* l, Rows& rows) {
  if (l->kind() == LayerKind::kGather) {
    const auto axis = static_cast<size_t>(l->params_as<GatherParams>().axis);
    rows.take(axis, *gather_indices(l, rows.dims[axis]));
    return 1;
  }
  const auto& sp = l->params_as<ShuffleParams>();
  auto without_last = [](const std::vector<int64_t>& perm) {
    return std::vector<int64_t>(perm.begin(), perm.end() - 1);
  };
  if (!sp.first_transpose.empty()) rows.transpose(without_last(sp.first_transpose));
  // A reshape that keeps the last dim keeps the rows' order: only the dims change, to the
  // output's dims before the second transpose.
  if (sp.has_reshape) {
    const std::vector<int64_t> out_dims = *static_dims(l->output());
    std::vector<int64_t> shaped = out_dims;
    for (size_t d = 0; d < sp.second_transpose.size(); ++d) {
      shaped[static_cast<size_t>(sp.second_transpose[d])] = out_dims[d];
    }
    rows.dims.assign(shaped.begin(), shaped.end() - 1);
  }
  if (!sp.second_transpose.empty()) rows.transpose(without_last(sp.second_transpose));
  return !is_identity_perm(sp.first_transpose) || !is_identity_perm(sp.second_transpose) ? 1 : 0;
}

/// Rewrites the longest chain of row moves starting at `first`; true when it did.
bool rewrite_from(Network& net, Layer* first, int& gathers, int& reshapes) {
  Tensor* x = first->input(0);
  const auto x_dims = static_dims(x);
  if (!x_dims || x_dims->size() < 2) return false;
  Rows done;
  done.dims.assign(x_dims->begin(), x_dims->end() - 1);
  const int64_t r0 = done.count();
  if (r0 <= 0) return false;
  done.ids.resize(static_cast<size_t>(r0));
  std::iota(done.ids.begin(), done.ids.end(), int64_t{0});
  // Extend while the next layer is a row move that alone reads the current tensor.
  Layer* last = nullptr;
  int copies = 0;
  for (Layer* l = first; l != nullptr && is_row_move(l); l = sole_consumer(net, l->output())) {
    copies += apply(l, done);
    last = l;
  }
  if (last == nullptr) return false;
  const int64_t rk = done.count();
  const int64_t c = x_dims->back();
  const Tensor* out = last->output();
  bool identity = rk == r0;
  for (int64_t i = 0; identity && i < rk; ++i) identity = done.ids[static_cast<size_t>(i)] == i;
  if (identity) {
    if (copies == 0) return false;  // reshapes only: already free
    net.replace_all_uses(last->output(), net.add_reshape(x, out->shape(),
                                                         last->name() + "/rows_kept")->output());
    ++reshapes;
    return true;
  }
  if (copies < 2) return false;
  // Per image when the table repeats that way: the images are the leading dim of the input or
  // of the output (Swin's windows [B * nW, 49, C] go back to images [B, H, W, C]).
  auto repeats_per = [&](int64_t b) {
    if (b <= 1 || r0 % b != 0 || rk % b != 0) return false;
    const int64_t t0 = r0 / b, tk = rk / b;
    for (int64_t i = 0; i < rk; ++i) {
      const int64_t base = done.ids[static_cast<size_t>(i % tk)];
      if (base >= t0 || done.ids[static_cast<size_t>(i)] != (i / tk) * t0 + base) return false;
    }
    return true;
  };
  const auto out_dims = static_dims(out);
  int64_t b = 1;
  for (const int64_t cand : {(*x_dims)[0], out_dims ? (*out_dims)[0] : int64_t{1}}) {
    if (repeats_per(cand)) {
      b = cand;
      break;
    }
  }
  const bool per_image = b > 1;
  const int64_t t0 = r0 / b, tk = rk / b;
  std::vector<int32_t> table(static_cast<size_t>(per_image ? tk : rk));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(done.ids[i]);
  const std::string name = first->name() + "+" + last->name() + "/rows";
  Tensor* flat = net.add_reshape(x, per_image ? Shape{b, t0, c} : Shape{r0, c},
                                 name + "_in")->output();
  Tensor* idx = net.add_constant(Weights::copy(DataType::kI32,
                                               {static_cast<int64_t>(table.size())}, table.data()),
                                 name + "_table")->output();
  GatherParams gp;
  gp.axis = per_image ? 1 : 0;
  Tensor* g = net.add_gather(flat, idx, gp, name)->output();
  net.replace_all_uses(last->output(), net.add_reshape(g, out->shape(), name + "_out")->output());
  ++gathers;
  return true;
}

/// A MatrixMultiply that treats every row of A on its own: A not transposed, B a matrix, no
/// residual (its rows would have to move too), static shapes.
bool row_wise_product(const Layer* m) {
  if (m->kind() != LayerKind::kMatrixMultiply) return false;
  const auto& p = m->params_as<MatrixMultiplyParams>();
  return !p.transpose_a && m->input(0)->rank() >= 2 && m->input(1)->rank() == 2 &&
         (m->inputs().size() < 4 || m->input(3) == nullptr) && static_dims(m->input(0)) &&
         static_dims(m->output()) && m->input(0)->rank() == m->output()->rank();
}

/// `l` (a row move) applied to rows of `k` columns instead of its own: a Shuffle's reshape
/// takes `k` as its last dim; a Gather is the same.
LayerParams with_row_size(const Layer* l, int64_t k) {
  LayerParams p = l->params();
  if (auto* sp = std::get_if<ShuffleParams>(&p)) {
    if (sp->has_reshape && !sp->reshape.empty()) sp->reshape.back() = DimExpr(k);
  }
  return p;
}

/// Moves the row moves after row-wise products whose A comes from a row move to before them
/// (see the top of the file). Returns how many products it rebuilt.
int sink_row_moves_into_products(Network& net) {
  int moved = 0;
  bool changed = true;
  while (changed) {
    changed = false;
    for (Layer* m : net.layers()) {
      if (!row_wise_product(m) || m->output()->is_output()) continue;
      // A's chain of row moves (each read by the next alone) must copy, so that the moved
      // ones join a gather instead of copying K-wide rows on their own.
      if (sole_consumer(net, m->input(0)) != m) continue;
      bool copies_before = false;
      for (const Layer* pre = m->input(0)->producer(); pre != nullptr && is_row_move(pre);
           pre = pre->input(0)->producer()) {
        if (!is_pure_reshape(pre)) {
          copies_before = true;
          break;
        }
        if (sole_consumer(net, pre->input(0)) != pre) break;
      }
      if (!copies_before) continue;
      // The chain after the product, up to (not into) a network output, which keeps its
      // tensor; worth moving only when it copies (a Gather, or a Shuffle that transposes).
      std::vector<const Layer*> after;
      bool copies = false;
      for (Layer* l = sole_consumer(net, m->output()); l != nullptr && is_row_move(l);
           l = sole_consumer(net, l->output())) {
        if (l->input(0) != (after.empty() ? m->output() : after.back()->output()) ||
            l->output()->is_output()) {
          break;
        }
        after.push_back(l);
        copies = copies || !is_pure_reshape(l);
      }
      if (!copies) continue;
      const int64_t k = m->input(0)->shape().back().constant();
      Tensor* x = m->input(0);
      for (const Layer* l : after) {
        std::vector<Tensor*> inputs = l->inputs();
        inputs[0] = x;
        x = net.add_layer(with_row_size(l, k), inputs, unique_layer_name(net, l->name() + "+rows"))
                ->output();
      }
      std::vector<Tensor*> inputs = m->inputs();
      inputs[0] = x;
      Layer* product =
          net.add_layer(m->params(), inputs, unique_layer_name(net, m->name() + "+rows"));
      net.replace_all_uses(after.back()->output(), product->output());
      remove_unreachable_layers(net);
      ++moved;
      changed = true;
      break;
    }
  }
  return moved;
}

}  // namespace

int compose_row_moves(Network& net, int* kept, int* sunk) {
  const int into_products = sink_row_moves_into_products(net);
  if (sunk != nullptr) *sunk = into_products;
  int gathers = 0, reshapes = 0;
  bool changed = true;
  while (changed) {  // each rewrite replaces layers: walk again (chains only shrink the graph)
    changed = false;
    for (Layer* l : net.layers()) {
      if (!is_row_move(l)) continue;
      // A chain starts where the input does not come from a row move read by it alone (that
      // layer's chain takes this one in).
      const Layer* before = l->input(0)->producer();
      if (before != nullptr && is_row_move(before) && sole_consumer(net, l->input(0)) == l) {
        continue;
      }
      if (rewrite_from(net, l, gathers, reshapes)) {
        remove_unreachable_layers(net);
        changed = true;
        break;
      }
    }
  }
  if (kept != nullptr) *kept = reshapes;
  return gathers + reshapes;
}

void pass_compose_row_moves(BuildState& s) {
  int kept = 0, sunk = 0;
  const int n = compose_row_moves(s.plan.network, &kept, &sunk);
  s.log.push_back("compose_row_moves: " + std::to_string(n - kept) +
                  " chains of row moves into one gather each, " + std::to_string(kept) +
                  " that keep every row into a reshape, " + std::to_string(sunk) +
                  " row-move chains moved before the matrix product they followed");
}

}  // namespace ember::engine
