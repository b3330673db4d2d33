// A FusedPointwise layer's program as steps (FusedPointwiseParams documents the encoding): what
// shape inference validates, the CPU interpreter runs and the CUDA code generator compiles.
// Decoding does not validate; the layer's infer() did (network/fused_pointwise.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ember/engine/layers.h"

namespace ember::engine::semantics {

/// One step of a FusedPointwise program.
struct FusedStep {
  FusedOpFamily family = FusedOpFamily::kScalar;
  int code = 0;                    ///< ActivationType / ElementWiseOp / UnaryOp by family.
  DataType dtype = DataType::kF32; ///< The step's result is rounded to this dtype.
  int64_t operands[3] = {-1, -1, -1};
  double alpha = 0.0;              ///< kScalar: the value; kActivation: its alpha.
  double beta = 0.0;
};

/// A dtype a FusedPointwise value may have besides f32/f16/bf16: bools and integers, which
/// only Casts and Select conditions read (FusedPointwiseParams).
inline bool fused_bool_or_integer(DataType t) {
  return t == DataType::kBool || t == DataType::kI8 || t == DataType::kU8 ||
         t == DataType::kI32 || t == DataType::kI64;
}

/// How many operands a step of `family` reads.
inline int fused_num_operands(FusedOpFamily family) {
  switch (family) {
    case FusedOpFamily::kScalar: return 0;
    case FusedOpFamily::kElementWise: return 2;
    case FusedOpFamily::kSelect: return 3;
    case FusedOpFamily::kActivation:
    case FusedOpFamily::kUnary:
    case FusedOpFamily::kCast:
    case FusedOpFamily::kReduce: return 1;
  }
  return 0;
}

/// True when `p` has a row reduction (a kReduce step): the back ends then run it row by row.
inline bool fused_has_reduction(const FusedPointwiseParams& p) {
  for (int64_t i = 0; i < p.num_steps(); ++i) {
    if (p.program[FusedPointwiseParams::kStride * i] ==
        static_cast<int64_t>(FusedOpFamily::kReduce)) {
      return true;
    }
  }
  return false;
}

/// The steps of `p` (program and attrs as stored; sizes already validated).
inline std::vector<FusedStep> fused_steps(const FusedPointwiseParams& p) {
  std::vector<FusedStep> steps(static_cast<size_t>(p.num_steps()));
  for (size_t i = 0; i < steps.size(); ++i) {
    const int64_t* s = p.program.data() + FusedPointwiseParams::kStride * i;
    FusedStep& st = steps[i];
    st.family = static_cast<FusedOpFamily>(s[0]);
    st.code = static_cast<int>(s[1]);
    st.dtype = static_cast<DataType>(s[2]);
    for (int k = 0; k < 3; ++k) st.operands[k] = s[3 + k];
    if (2 * i + 1 < p.attrs.size()) {
      st.alpha = p.attrs[2 * i];
      st.beta = p.attrs[2 * i + 1];
    }
  }
  return steps;
}

/// How a FusedPointwise input is read (FusedPointwiseParams::slices and views): a slice of some
/// dims, then a transpose, then a gather of its last dim.
struct InputView {
  std::vector<int64_t> slice;   ///< (dim, start, size) triples over the input's dims; empty: whole.
  std::vector<int64_t> perm;    ///< Empty: not transposed.
  std::vector<int64_t> gather;  ///< Empty: the last dim whole.
  bool any() const { return !slice.empty() || !perm.empty() || !gather.empty(); }
};

/// The views of `p`'s `n_in` inputs (all plain when p.views is empty). Returns false when the
/// encoding does not parse (infer() reports it; the kernels never see such a layer).
inline bool fused_views(const FusedPointwiseParams& p, size_t n_in, std::vector<InputView>& out) {
  out.assign(n_in, InputView{});
  if (p.views.empty()) return true;
  size_t at = 0;
  auto take = [&](std::vector<int64_t>& into) {
    if (at >= p.views.size() || p.views[at] < 0 ||
        static_cast<size_t>(p.views[at]) > p.views.size() - at - 1) {
      return false;
    }
    const auto n = static_cast<size_t>(p.views[at]);
    into.assign(p.views.begin() + static_cast<std::ptrdiff_t>(at + 1),
                p.views.begin() + static_cast<std::ptrdiff_t>(at + 1 + n));
    at += 1 + n;
    return true;
  };
  for (InputView& v : out) {
    if (!take(v.perm) || !take(v.gather)) return false;
  }
  return at == p.views.size();
}

/// The slices of `p`'s `n_in` inputs into `out` (fused_views' result; none when p.slices is
/// empty): per input {n, n triples}. False when the encoding does not parse.
inline bool fused_slices(const FusedPointwiseParams& p, std::vector<InputView>& out) {
  if (p.slices.empty()) return true;
  size_t at = 0;
  for (InputView& v : out) {
    if (at >= p.slices.size() || p.slices[at] < 0 ||
        static_cast<size_t>(p.slices[at]) > (p.slices.size() - at - 1) / 3) {
      return false;
    }
    const auto n = 3 * static_cast<size_t>(p.slices[at]);
    v.slice.assign(p.slices.begin() + static_cast<std::ptrdiff_t>(at + 1),
                   p.slices.begin() + static_cast<std::ptrdiff_t>(at + 1 + n));
    at += 1 + n;
  }
  return at == p.slices.size();
}

/// fused_views and fused_slices together: every input's whole view.
inline bool fused_input_views(const FusedPointwiseParams& p, size_t n_in,
                              std::vector<InputView>& out) {
  return fused_views(p, n_in, out) && fused_slices(p, out);
}

/// Whether a last-dim gather keeps runs of `v` consecutive outputs on `v` consecutive, aligned
/// source elements: every run starting at a multiple of `v` maps to one starting at a multiple
/// of `v` and stepping by 1 (rotate_half's table over a last dim whose half is a multiple of
/// `v`). A kernel can then read the run as one vector from the gathered index of its first
/// element.
inline bool gather_keeps_vectors(const std::vector<int64_t>& gather, int64_t v) {
  if (v <= 0 || gather.empty() || gather.size() % static_cast<size_t>(v) != 0) return false;
  for (size_t j = 0; j < gather.size(); j += static_cast<size_t>(v)) {
    if (gather[j] % v != 0) return false;
    for (int64_t l = 1; l < v; ++l) {
      if (gather[j + static_cast<size_t>(l)] != gather[j] + l) return false;
    }
  }
  return true;
}

/// Sets `p.views` and `p.slices` from `views` (each empty when no input has one).
inline void fused_set_views(FusedPointwiseParams& p, const std::vector<InputView>& views) {
  p.views.clear();
  p.slices.clear();
  bool sliced = false;
  for (const InputView& v : views) sliced = sliced || !v.slice.empty();
  if (sliced) {
    for (const InputView& v : views) {
      p.slices.push_back(static_cast<int64_t>(v.slice.size() / 3));
      p.slices.insert(p.slices.end(), v.slice.begin(), v.slice.end());
    }
  }
  bool any = false;
  for (const InputView& v : views) any = any || !v.perm.empty() || !v.gather.empty();
  if (!any) return;
  for (const InputView& v : views) {
    p.views.push_back(static_cast<int64_t>(v.perm.size()));
    p.views.insert(p.views.end(), v.perm.begin(), v.perm.end());
    p.views.push_back(static_cast<int64_t>(v.gather.size()));
    p.views.insert(p.views.end(), v.gather.begin(), v.gather.end());
  }
}

/// The element strides of a contiguous input of `dims`, read through `v`, over the output's
/// `out_dims` (0 where it broadcasts; a gathered last dim's stride is the one its indices
/// multiply), and in `offset` the element where its slice starts (0 without one). False when
/// the view does not broadcast to `out_dims` (shape inference refused such a layer; the kernels
/// say so).
inline bool view_strides(const std::vector<int64_t>& dims, const InputView& v,
                         const std::vector<int64_t>& out_dims, std::vector<int64_t>& strides,
                         int64_t& offset) {
  std::vector<int64_t> contiguous(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) contiguous[i - 1] = contiguous[i] * dims[i];
  std::vector<int64_t> sliced = dims;  // the slice's sizes
  offset = 0;
  for (size_t t = 0; t + 2 < v.slice.size(); t += 3) {
    const auto d = static_cast<size_t>(v.slice[t]);
    if (d >= sliced.size()) continue;  // infer() refused it
    offset += v.slice[t + 1] * contiguous[d];
    sliced[d] = v.slice[t + 2];
  }
  std::vector<int64_t> view_dims = sliced, st = contiguous;
  for (size_t i = 0; i < v.perm.size() && v.perm.size() == dims.size(); ++i) {
    view_dims[i] = sliced[static_cast<size_t>(v.perm[i])];
    st[i] = contiguous[static_cast<size_t>(v.perm[i])];
  }
  if (!v.gather.empty() && !view_dims.empty()) {
    view_dims.back() = static_cast<int64_t>(v.gather.size());
  }
  const size_t rank = out_dims.size();
  if (view_dims.size() > rank) return false;
  strides.assign(rank, 0);
  for (size_t i = 0; i < view_dims.size(); ++i) {
    const size_t od = rank - view_dims.size() + i;
    if (view_dims[i] != out_dims[od] && view_dims[i] != 1) return false;
    strides[od] = view_dims[i] == 1 && out_dims[od] != 1 ? 0 : st[i];
  }
  return true;
}

/// The output's `dims` and every input's `strides` over them (view_strides) with the dims of
/// size 1 dropped and neighbours merged wherever every input steps through both as one, so a
/// walk moves in long runs (the CPU interpreter's loop and the generated kernels' launch). With
/// `keep_last` (a rank > 0 output) the last dim stays a dim of its own, even of size 1: a row
/// reduction's row, or a gathered input's indexed dim. An output of no dims left gets none.
inline void merge_walk_dims(const std::vector<int64_t>& dims,
                            const std::vector<std::vector<int64_t>>& strides, bool keep_last,
                            std::vector<int64_t>& mdims,
                            std::vector<std::vector<int64_t>>& mstrides) {
  const size_t n_in = strides.size();
  const size_t merged_rank = keep_last ? dims.size() - 1 : dims.size();
  mdims.clear();
  mstrides.assign(n_in, {});
  for (size_t d = 0; d < merged_rank; ++d) {
    if (dims[d] == 1) continue;
    bool merge = !mdims.empty();
    for (size_t i = 0; merge && i < n_in; ++i) {
      merge = mstrides[i].back() == strides[i][d] * dims[d];
    }
    if (merge) {
      mdims.back() *= dims[d];
      for (size_t i = 0; i < n_in; ++i) mstrides[i].back() = strides[i][d];
      continue;
    }
    mdims.push_back(dims[d]);
    for (size_t i = 0; i < n_in; ++i) mstrides[i].push_back(strides[i][d]);
  }
  if (keep_last) {
    mdims.push_back(dims.back());
    for (size_t i = 0; i < n_in; ++i) mstrides[i].push_back(strides[i].back());
  }
}

/// Appends `step` to `p` (the builder's pass and tests write programs through this).
inline void fused_append(FusedPointwiseParams& p, const FusedStep& step) {
  p.program.insert(p.program.end(),
                   {static_cast<int64_t>(step.family), static_cast<int64_t>(step.code),
                    static_cast<int64_t>(step.dtype), step.operands[0], step.operands[1],
                    step.operands[2]});
  p.attrs.push_back(step.alpha);
  p.attrs.push_back(step.beta);
}

}  // namespace ember::engine::semantics
