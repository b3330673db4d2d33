// CPU kernels of the data-movement family: Constant, Shuffle, Concatenation, Slice, Gather,
// Scatter, Padding, Resize, Fill, Shape and Identity.
//
// Most of these only move bytes, so they work on element sizes rather than dtypes: one strided
// copy (coalesced into long memcpy rows where the layout allows) serves transposes, slices and
// concatenation, and one "copy through per-dim index maps" serves padding and nearest resize.
// Index operands are loaded and validated before any parallel section, so a bad index throws
// Error on the calling thread and never reaches memory.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "backends/cpu/kernels.h"
#include "backends/semantics/padding.h"
#include "backends/semantics/resize.h"
#include "backends/slice_walk.h"

namespace ember::engine::cpu {

namespace {

// ---------------------------------------------------------------- byte-level helpers

const uint8_t* bytes(const HostTensor& t) { return static_cast<const uint8_t*>(t.data); }
uint8_t* mutable_bytes(const HostTensor& t) { return static_cast<uint8_t*>(t.data); }
int64_t elem_size(const HostTensor& t) { return static_cast<int64_t>(dtype_size(t.dtype)); }

/// Calls fn(std::integral_constant<int64_t, N>) for the element size N, so per-element copies
/// compile to plain loads and stores.
template <typename Fn>
void dispatch_elem_size(int64_t elem, Fn&& fn) {
  switch (elem) {
    case 1:
      fn(std::integral_constant<int64_t, 1>{});
      return;
    case 2:
      fn(std::integral_constant<int64_t, 2>{});
      return;
    case 4:
      fn(std::integral_constant<int64_t, 4>{});
      return;
    case 8:
      fn(std::integral_constant<int64_t, 8>{});
      return;
    default:
      throw Error("unsupported element size " + std::to_string(elem));
  }
}

/// Copies a whole buffer unless source and destination are the same memory.
void copy_bytes(void* dst, const void* src, size_t n) {
  if (dst != src && n > 0) std::memcpy(dst, src, n);
}

int64_t product(const std::vector<int64_t>& dims, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t i = begin; i < end; ++i) n *= dims[i];
  return n;
}

/// Converts to int64 without undefined behavior: NaN becomes 0, out-of-range values saturate.
int64_t saturating_int64(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 9.2233720368547758e18) return INT64_MAX;
  if (v < -9.2233720368547758e18) return INT64_MIN;
  return static_cast<int64_t>(v);
}

/// The bytes of one element of dtype `t` holding `v` (floats round; integers truncate).
std::vector<uint8_t> scalar_bytes(DataType t, double v) {
  std::vector<uint8_t> b(dtype_size(t));
  if (dtype_is_float(t)) {
    store_float(t, b.data(), 0, static_cast<float>(v));
  } else {
    store_int(t, b.data(), 0, saturating_int64(v));
  }
  return b;
}

/// Fills n elements of `elem` bytes each with the element `value`.
void fill_elements(uint8_t* dst, int64_t n, int64_t elem, const uint8_t* value) {
  dispatch_elem_size(elem, [&](auto size) {
    constexpr int64_t kN = decltype(size)::value;
    for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * kN, value, kN);
  });
}

// ---------------------------------------------------------------- strided copy

/// A copy of a `dims`-shaped block between two strided views (strides in elements; negative
/// strides walk backward from the base pointers).
struct StridedCopy {
  std::vector<int64_t> dims;
  std::vector<int64_t> src_strides;
  std::vector<int64_t> dst_strides;
};

/// Drops size-1 dims and merges neighbours that are contiguous in both views, so concatenation
/// blocks and unit-stride slices become a few long memcpy rows.
void coalesce(StridedCopy& c) {
  StridedCopy out;
  for (size_t d = 0; d < c.dims.size(); ++d) {
    if (c.dims[d] == 1) continue;
    if (!out.dims.empty() && out.src_strides.back() == c.src_strides[d] * c.dims[d] &&
        out.dst_strides.back() == c.dst_strides[d] * c.dims[d]) {
      out.dims.back() *= c.dims[d];
      out.src_strides.back() = c.src_strides[d];
      out.dst_strides.back() = c.dst_strides[d];
      continue;
    }
    out.dims.push_back(c.dims[d]);
    out.src_strides.push_back(c.src_strides[d]);
    out.dst_strides.push_back(c.dst_strides[d]);
  }
  c = std::move(out);
}

/// Copies n elements from src (stride ss) to dst (stride ds).
void copy_row(int64_t elem, uint8_t* dst, int64_t ds, const uint8_t* src, int64_t ss, int64_t n) {
  if (ds == 1 && ss == 1) {
    std::memcpy(dst, src, static_cast<size_t>(n * elem));
    return;
  }
  dispatch_elem_size(elem, [&](auto size) {
    constexpr int64_t kN = decltype(size)::value;
    for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * ds * kN, src + i * ss * kN, kN);
  });
}

void strided_copy(int64_t elem, StridedCopy c, const uint8_t* src, uint8_t* dst) {
  for (int64_t d : c.dims) {
    if (d == 0) return;
  }
  coalesce(c);
  const size_t r = c.dims.size();
  if (r == 0) {
    std::memcpy(dst, src, static_cast<size_t>(elem));
    return;
  }
  const int64_t inner = c.dims[r - 1];
  const int64_t rows = product(c.dims, 0, r - 1);
  parallel_for(rows, inner, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(r - 1, 0);
    int64_t so = 0, dof = 0;
    int64_t rem = begin;
    for (size_t d = r - 1; d-- > 0;) {
      idx[d] = rem % c.dims[d];
      rem /= c.dims[d];
      so += idx[d] * c.src_strides[d];
      dof += idx[d] * c.dst_strides[d];
    }
    for (int64_t row = begin; row < end; ++row) {
      copy_row(elem, dst + dof * elem, c.dst_strides[r - 1], src + so * elem, c.src_strides[r - 1],
               inner);
      for (size_t d = r - 1; d-- > 0;) {  // odometer step over the outer dims
        so += c.src_strides[d];
        dof += c.dst_strides[d];
        if (++idx[d] < c.dims[d]) break;
        so -= c.src_strides[d] * c.dims[d];
        dof -= c.dst_strides[d] * c.dims[d];
        idx[d] = 0;
      }
    }
  });
}

bool is_identity(const std::vector<int64_t>& perm) {
  for (size_t i = 0; i < perm.size(); ++i) {
    if (perm[i] != static_cast<int64_t>(i)) return false;
  }
  return true;
}

/// dst = permute(src, perm) with torch.permute's meaning (output dim i is input dim perm[i]).
void transpose(int64_t elem, const std::vector<int64_t>& in_dims, const std::vector<int64_t>& perm,
               const uint8_t* src, uint8_t* dst) {
  const std::vector<int64_t> in_strides = contiguous_strides(in_dims);
  StridedCopy c;
  for (int64_t p : perm) {
    c.dims.push_back(in_dims[p]);
    c.src_strides.push_back(in_strides[p]);
  }
  c.dst_strides = contiguous_strides(c.dims);
  strided_copy(elem, std::move(c), src, dst);
}

// ---------------------------------------------------------------- copy through index maps

/// A run of the innermost output dim: `len` elements from source position `src` onward, or
/// the fill value when src < 0.
struct Segment {
  int64_t dst;
  int64_t src;
  int64_t len;
};

/// out[c] = in[maps[0][c0], maps[1][c1], ...], or `fill` where any map entry is < 0. Serves
/// padding (every mode) and nearest resize. Every non-negative map entry must be < the input
/// dim (the callers build them so).
void copy_through_maps(const HostTensor& in, const HostTensor& out,
                       const std::vector<std::vector<int64_t>>& maps, const uint8_t* fill) {
  const int64_t elem = elem_size(in);
  const size_t r = out.dims.size();
  if (out.numel() == 0) return;
  if (r == 0) {
    copy_bytes(out.data, in.data, static_cast<size_t>(elem));
    return;
  }
  std::vector<Segment> segments;
  for (int64_t o = 0; o < out.dims[r - 1]; ++o) {
    const int64_t s = maps[r - 1][o];
    if (!segments.empty()) {
      Segment& last = segments.back();
      if ((s < 0 && last.src < 0) || (s >= 0 && last.src >= 0 && s == last.src + last.len)) {
        ++last.len;
        continue;
      }
    }
    segments.push_back({o, s, 1});
  }
  const std::vector<int64_t> in_strides = contiguous_strides(in.dims);
  const int64_t inner = out.dims[r - 1];
  const int64_t rows = product(out.dims, 0, r - 1);
  const uint8_t* src = bytes(in);
  uint8_t* dst = mutable_bytes(out);
  dispatch_elem_size(elem, [&](auto size) {
    constexpr int64_t kN = decltype(size)::value;
    parallel_for(rows, inner, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> idx(r - 1, 0);
      int64_t rem = begin;
      for (size_t d = r - 1; d-- > 0;) {
        idx[d] = rem % out.dims[d];
        rem /= out.dims[d];
      }
      for (int64_t row = begin; row < end; ++row) {
        uint8_t* drow = dst + row * inner * kN;
        int64_t base = 0;
        bool filled = false;
        for (size_t d = 0; d + 1 < r; ++d) {
          const int64_t m = maps[d][idx[d]];
          if (m < 0) {
            filled = true;
            break;
          }
          base += m * in_strides[d];
        }
        if (filled) {
          for (int64_t i = 0; i < inner; ++i) std::memcpy(drow + i * kN, fill, kN);
        } else {
          const uint8_t* srow = src + base * kN;
          for (const Segment& s : segments) {
            if (s.src < 0) {
              for (int64_t i = 0; i < s.len; ++i) std::memcpy(drow + (s.dst + i) * kN, fill, kN);
            } else if (s.len == 1) {
              std::memcpy(drow + s.dst * kN, srow + s.src * kN, kN);
            } else {
              std::memcpy(drow + s.dst * kN, srow + s.src * kN, static_cast<size_t>(s.len * kN));
            }
          }
        }
        for (size_t d = r - 1; d-- > 0;) {
          if (++idx[d] < out.dims[d]) break;
          idx[d] = 0;
        }
      }
    });
  });
}

// ---------------------------------------------------------------- indices

/// Loads an index tensor as int64 with negative values wrapped, checking each against its bound:
/// element i is an index into a dim of size bounds[i % bounds.size()]. Throws Error naming the
/// first bad index (before any parallel section runs).
std::vector<int64_t> load_indices(const HostTensor& indices, const std::vector<int64_t>& bounds,
                                  const std::vector<int64_t>& bound_dims) {
  const int64_t n = indices.numel();
  std::vector<int64_t> out(static_cast<size_t>(n));
  const int64_t k = static_cast<int64_t>(bounds.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = load_int(indices.dtype, indices.data, i);
    const int64_t bound = bounds[i % k];
    const int64_t w = v < 0 ? v + bound : v;
    if (w < 0 || w >= bound) {
      throw Error("index " + std::to_string(v) + " at flat position " + std::to_string(i) +
                  " of the indices is out of range for data dim " +
                  std::to_string(bound_dims[i % k]) + " of size " + std::to_string(bound) +
                  " (valid: [" + std::to_string(-bound) + ", " + std::to_string(bound) + "))");
    }
    out[i] = w;
  }
  return out;
}

// ---------------------------------------------------------------- resize helpers

// The coordinate arithmetic (source coordinates, nearest indices, interpolation taps and
// weights) is semantics/resize.h's, shared with the CUDA kernels.
using semantics::resize_coordinate_scale;
using semantics::resize_size_ratio;
using semantics::resize_source_coordinate;

/// Source index along one dim for each output index of a nearest resize. The two PyTorch modes
/// follow torch's own arithmetic exactly (nearest_idx and nearest_neighbor_exact_compute_source_
/// index, including their shortcuts), so results match torch bit for bit.
std::vector<int64_t> nearest_map(const ResizeParams& p, size_t d, int64_t in, int64_t out) {
  std::vector<int64_t> m(static_cast<size_t>(out));
  const float ratio = resize_size_ratio(p, d, in, out);
  const float scale = resize_coordinate_scale(p, d, in, out);
  for (int64_t j = 0; j < out; ++j) {
    m[j] = semantics::resize_nearest_index(p.coordinate, p.rounding, ratio, scale, in, out, j);
  }
  return m;
}

/// Source indices and weights of one separable interpolation pass: output j reads
/// index[j * taps + t] with weight[j * taps + t].
struct Taps {
  int64_t taps = 0;
  std::vector<int64_t> index;
  std::vector<float> weight;
};

Taps linear_taps(const ResizeParams& p, size_t d, int64_t in, int64_t out) {
  Taps taps{2, std::vector<int64_t>(static_cast<size_t>(2 * out)),
            std::vector<float>(static_cast<size_t>(2 * out))};
  const float scale = resize_coordinate_scale(p, d, in, out);
  for (int64_t j = 0; j < out; ++j) {
    const float real = resize_source_coordinate(p.coordinate, scale, j, true);
    int64_t i0;
    float l1;
    semantics::resize_floor_fraction(real, in, i0, l1);
    i0 = std::max<int64_t>(i0, 0);
    taps.index[2 * j] = i0;
    taps.index[2 * j + 1] = i0 + (i0 < in - 1 ? 1 : 0);
    taps.weight[2 * j] = 1.0f - l1;
    taps.weight[2 * j + 1] = l1;
  }
  return taps;
}

Taps cubic_taps(const ResizeParams& p, size_t d, int64_t in, int64_t out) {
  Taps taps{4, std::vector<int64_t>(static_cast<size_t>(4 * out)),
            std::vector<float>(static_cast<size_t>(4 * out))};
  const float scale = resize_coordinate_scale(p, d, in, out);
  const float a = static_cast<float>(p.cubic_coeff);
  for (int64_t j = 0; j < out; ++j) {
    const float real = resize_source_coordinate(p.coordinate, scale, j, false);
    int64_t i;
    float t;
    semantics::resize_floor_fraction(real, in, i, t);
    semantics::resize_cubic_weights(t, a, &taps.weight[4 * j]);
    for (int64_t k = 0; k < 4; ++k) {
      taps.index[4 * j + k] = std::min(std::max<int64_t>(i - 1 + k, 0), in - 1);
    }
  }
  return taps;
}

/// One separable pass: resamples dim d of `src` (dims `dims`) to `taps`' output size.
std::vector<float> resize_pass(const std::vector<float>& src, const std::vector<int64_t>& dims,
                               size_t d, int64_t out_d, const Taps& taps) {
  const int64_t outer = product(dims, 0, d);
  const int64_t inner = product(dims, d + 1, dims.size());
  const int64_t in_d = dims[d];
  std::vector<float> dst(static_cast<size_t>(outer * out_d * inner));
  parallel_for(outer * out_d, inner * taps.taps, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t o = row / out_d, j = row % out_d;
      float* drow = dst.data() + row * inner;
      for (int64_t t = 0; t < taps.taps; ++t) {
        const float w = taps.weight[j * taps.taps + t];
        const float* srow = src.data() + (o * in_d + taps.index[j * taps.taps + t]) * inner;
        if (t == 0) {
          for (int64_t k = 0; k < inner; ++k) drow[k] = w * srow[k];
        } else {
          for (int64_t k = 0; k < inner; ++k) drow[k] += w * srow[k];
        }
      }
    }
  });
  return dst;
}

/// Linear or cubic resize, one dim at a time from the innermost (torch interpolates width
/// before height too), in f32.
void resize_interpolate(const ResizeParams& p, const HostTensor& in, const HostTensor& out) {
  std::vector<float> cur = to_float_vector(in);
  std::vector<int64_t> dims = in.dims;
  const size_t r = dims.size();
  for (size_t d = r; d-- > 0;) {
    const int64_t in_d = in.dims[d], out_d = out.dims[d];
    if (p.mode == ResizeMode::kLinear) {
      if (in_d == out_d) continue;  // torch copies a dim whose size does not change
      cur = resize_pass(cur, dims, d, out_d, linear_taps(p, d, in_d, out_d));
    } else {
      const bool unit_ratio =
          p.scales.empty() || p.scales[d] == 1.0 || p.coordinate == ResizeCoordinate::kAlignCorners;
      if (in_d == out_d && (d + 2 < r || unit_ratio)) continue;
      if (d + 2 < r) {
        throw Error("cubic resize changes dim " + std::to_string(d) +
                    " (only the last two dims may change)");
      }
      cur = resize_pass(cur, dims, d, out_d, cubic_taps(p, d, in_d, out_d));
    }
    dims[d] = out_d;
  }
  HostTensor o = out;
  from_float_vector(cur, o);
}

}  // namespace

// ---------------------------------------------------------------- Constant, Identity, Shape

void run(const ConstantParams& p, const KernelArgs& a) {
  const HostTensor& out = a.out();
  if (p.weights.nbytes() != out.nbytes()) {
    throw Error("constant of " + std::to_string(p.weights.nbytes()) +
                " bytes does not fit its output of " + std::to_string(out.nbytes()) + " bytes");
  }
  copy_bytes(out.data, p.weights.data(), out.nbytes());
}

void run(const IdentityParams& /*p*/, const KernelArgs& a) {
  copy_bytes(a.out().data, a.in(0).data, a.out().nbytes());
}

void run(const ShapeParams& /*p*/, const KernelArgs& a) {
  const HostTensor& in = a.in(0);
  for (size_t i = 0; i < in.dims.size(); ++i) {
    store_int(DataType::kI64, a.out().data, static_cast<int64_t>(i), in.dims[i]);
  }
}

// ---------------------------------------------------------------- Shuffle

void run(const ShuffleParams& p, const KernelArgs& a) {
  const HostTensor& in = a.in(0);
  const HostTensor& out = a.out();
  const int64_t elem = elem_size(in);
  const bool first_identity = is_identity(p.first_transpose);
  const bool second_identity = is_identity(p.second_transpose);
  if (first_identity && second_identity) {  // a pure reshape: row-major order is unchanged
    copy_bytes(out.data, in.data, out.nbytes());
    return;
  }
  if (first_identity) {
    // The reshape is free: view the input as the reshaped dims, then permute into the output.
    std::vector<int64_t> reshaped(out.dims.size());
    for (size_t i = 0; i < p.second_transpose.size(); ++i) {
      reshaped[p.second_transpose[i]] = out.dims[i];
    }
    transpose(elem, reshaped, p.second_transpose, bytes(in), mutable_bytes(out));
    return;
  }
  if (second_identity) {
    transpose(elem, in.dims, p.first_transpose, bytes(in), mutable_bytes(out));
    return;
  }
  if (!p.has_reshape) {  // two permutations compose into one
    std::vector<int64_t> perm(p.second_transpose.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = p.first_transpose[p.second_transpose[i]];
    transpose(elem, in.dims, perm, bytes(in), mutable_bytes(out));
    return;
  }
  std::vector<uint8_t> tmp(in.nbytes());
  transpose(elem, in.dims, p.first_transpose, bytes(in), tmp.data());
  std::vector<int64_t> reshaped(out.dims.size());
  for (size_t i = 0; i < p.second_transpose.size(); ++i)
    reshaped[p.second_transpose[i]] = out.dims[i];
  transpose(elem, reshaped, p.second_transpose, tmp.data(), mutable_bytes(out));
}

// ---------------------------------------------------------------- Concatenation

void run(const ConcatenationParams& p, const KernelArgs& a) {
  const HostTensor& out = a.out();
  const int64_t elem = elem_size(out);
  const std::vector<int64_t> out_strides = contiguous_strides(out.dims);
  int64_t offset = 0;  // position along the axis
  for (const HostTensor* in : a.inputs) {
    StridedCopy c{in->dims, contiguous_strides(in->dims), out_strides};
    strided_copy(elem, std::move(c), bytes(*in),
                 mutable_bytes(out) + offset * out_strides[p.axis] * elem);
    offset += in->dims[p.axis];
  }
}

// ---------------------------------------------------------------- Slice

void run(const SliceParams& p, const KernelArgs& a) {
  const HostTensor& in = a.in(0);
  const HostTensor& out = a.out();
  if (out.numel() == 0) return;
  const int64_t elem = elem_size(in);
  SliceWalk w = slice_walk(p, in.dims, out.dims, a.symbols);
  StridedCopy c{out.dims, std::move(w.strides), contiguous_strides(out.dims)};
  strided_copy(elem, std::move(c), bytes(in) + w.base * elem, mutable_bytes(out));
}

// ---------------------------------------------------------------- Gather

namespace {

void gather_default(const GatherParams& p, const HostTensor& data, const HostTensor& indices,
                    const HostTensor& out) {
  const size_t axis = static_cast<size_t>(p.axis);
  const int64_t axis_dim = data.dims[axis];
  const std::vector<int64_t> idx = load_indices(indices, {axis_dim}, {p.axis});
  const int64_t elem = elem_size(data);
  const int64_t outer = product(data.dims, 0, axis);
  const int64_t inner = product(data.dims, axis + 1, data.dims.size());
  const int64_t n = static_cast<int64_t>(idx.size());
  const int64_t block = inner * elem;
  const uint8_t* src = bytes(data);
  uint8_t* dst = mutable_bytes(out);
  parallel_for(outer * n, inner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = i / n, j = i % n;
      std::memcpy(dst + i * block, src + (o * axis_dim + idx[j]) * block,
                  static_cast<size_t>(block));
    }
  });
}

void gather_element(const GatherParams& p, const HostTensor& data, const HostTensor& indices,
                    const HostTensor& out) {
  const size_t axis = static_cast<size_t>(p.axis);
  const std::vector<int64_t> idx = load_indices(indices, {data.dims[axis]}, {p.axis});
  const size_t r = indices.dims.size();
  if (idx.empty()) return;
  const std::vector<int64_t> ds = contiguous_strides(data.dims);
  const int64_t inner = indices.dims[r - 1];
  const int64_t rows = product(indices.dims, 0, r - 1);
  const uint8_t* src = bytes(data);
  uint8_t* dst = mutable_bytes(out);
  dispatch_elem_size(elem_size(data), [&](auto size) {
    constexpr int64_t kN = decltype(size)::value;
    parallel_for(rows, inner, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> c(r - 1, 0);
      int64_t rem = begin;
      for (size_t d = r - 1; d-- > 0;) {
        c[d] = rem % indices.dims[d];
        rem /= indices.dims[d];
      }
      for (int64_t row = begin; row < end; ++row) {
        int64_t base = 0;  // the row's data offset, without the axis coordinate
        for (size_t d = 0; d + 1 < r; ++d) {
          if (d != axis) base += c[d] * ds[d];
        }
        const int64_t* iv = idx.data() + row * inner;
        uint8_t* drow = dst + row * inner * kN;
        if (axis == r - 1) {
          for (int64_t k = 0; k < inner; ++k)
            std::memcpy(drow + k * kN, src + (base + iv[k]) * kN, kN);
        } else {
          for (int64_t k = 0; k < inner; ++k) {
            std::memcpy(drow + k * kN, src + (base + k * ds[r - 1] + iv[k] * ds[axis]) * kN, kN);
          }
        }
        for (size_t d = r - 1; d-- > 0;) {
          if (++c[d] < indices.dims[d]) break;
          c[d] = 0;
        }
      }
    });
  });
}

void gather_nd(const GatherParams& p, const HostTensor& data, const HostTensor& indices,
               const HostTensor& out) {
  const size_t b = static_cast<size_t>(p.num_batch_dims);
  const size_t q = indices.dims.size();
  const int64_t k = indices.dims[q - 1];
  std::vector<int64_t> bounds, bound_dims;
  for (int64_t t = 0; t < k; ++t) {
    bounds.push_back(data.dims[b + t]);
    bound_dims.push_back(static_cast<int64_t>(b) + t);
  }
  const std::vector<int64_t> idx = load_indices(indices, bounds, bound_dims);
  const std::vector<int64_t> ds = contiguous_strides(data.dims);
  const int64_t elem = elem_size(data);
  const int64_t batch = product(data.dims, 0, b);
  const int64_t batch_stride = product(data.dims, b, data.dims.size());
  const int64_t tuples = product(indices.dims, b, q - 1);  // index tuples per batch entry
  const int64_t block = product(data.dims, b + k, data.dims.size()) * elem;
  const uint8_t* src = bytes(data);
  uint8_t* dst = mutable_bytes(out);
  parallel_for(batch * tuples, block / std::max<int64_t>(elem, 1) + k,
               [&](int64_t begin, int64_t end) {
                 for (int64_t i = begin; i < end; ++i) {
                   int64_t off = (i / tuples) * batch_stride;
                   for (int64_t t = 0; t < k; ++t) off += idx[i * k + t] * ds[b + t];
                   std::memcpy(dst + i * block, src + off * elem, static_cast<size_t>(block));
                 }
               });
}

}  // namespace

void run(const GatherParams& p, const KernelArgs& a) {
  const HostTensor& data = a.in(0);
  const HostTensor& indices = a.in(1);
  const HostTensor& out = a.out();
  switch (p.mode) {
    case GatherMode::kDefault:
      gather_default(p, data, indices, out);
      return;
    case GatherMode::kElement:
      gather_element(p, data, indices, out);
      return;
    case GatherMode::kNd:
      gather_nd(p, data, indices, out);
      return;
  }
  throw Error("unknown gather mode " + std::to_string(static_cast<int>(p.mode)));
}

// ---------------------------------------------------------------- Scatter

namespace {

/// Integer reductions wrap like C casts (two's complement), never overflow signed arithmetic.
int64_t reduce_int(ScatterReduction r, int64_t acc, int64_t v) {
  switch (r) {
    case ScatterReduction::kNone:
      return v;
    case ScatterReduction::kSum:
      return static_cast<int64_t>(static_cast<uint64_t>(acc) + static_cast<uint64_t>(v));
    case ScatterReduction::kProd:
      return static_cast<int64_t>(static_cast<uint64_t>(acc) * static_cast<uint64_t>(v));
    case ScatterReduction::kMax:
      return std::max(acc, v);
    case ScatterReduction::kMin:
      return std::min(acc, v);
  }
  return v;
}

float reduce_float(ScatterReduction r, float acc, float v) {
  switch (r) {
    case ScatterReduction::kNone:
      return v;
    case ScatterReduction::kSum:
      return acc + v;
    case ScatterReduction::kProd:
      return acc * v;
    // torch propagates NaN through scatter_reduce amax/amin.
    case ScatterReduction::kMax:
      return std::isnan(acc) || std::isnan(v) ? std::numeric_limits<float>::quiet_NaN()
                                              : std::max(acc, v);
    case ScatterReduction::kMin:
      return std::isnan(acc) || std::isnan(v) ? std::numeric_limits<float>::quiet_NaN()
                                              : std::min(acc, v);
  }
  return v;
}

}  // namespace

void run(const ScatterParams& p, const KernelArgs& a) {
  const HostTensor& data = a.in(0);
  const HostTensor& indices = a.in(1);
  const HostTensor& updates = a.in(2);
  const HostTensor& out = a.out();
  const size_t axis = static_cast<size_t>(p.axis);
  const std::vector<int64_t> idx = load_indices(indices, {data.dims[axis]}, {p.axis});
  copy_bytes(out.data, data.data, out.nbytes());
  if (idx.empty()) return;
  const size_t r = indices.dims.size();
  const std::vector<int64_t> ds = contiguous_strides(data.dims);
  // Destination offset of every update, in row-major order of indices (later updates win for
  // kNone, which makes duplicate indices deterministic).
  std::vector<int64_t> dst_off(idx.size());
  std::vector<int64_t> c(r, 0);
  for (size_t i = 0; i < idx.size(); ++i) {
    int64_t off = 0;
    for (size_t d = 0; d < r; ++d) off += (d == axis ? idx[i] : c[d]) * ds[d];
    dst_off[i] = off;
    for (size_t d = r; d-- > 0;) {
      if (++c[d] < indices.dims[d]) break;
      c[d] = 0;
    }
  }
  const int64_t n = static_cast<int64_t>(idx.size());
  if (p.reduction == ScatterReduction::kNone) {
    const int64_t elem = elem_size(data);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(mutable_bytes(out) + dst_off[i] * elem, bytes(updates) + i * elem,
                  static_cast<size_t>(elem));
    }
    return;
  }
  if (dtype_is_float(data.dtype)) {
    // Reduce in f32 and round once, so f16/bf16 results do not drift with every update.
    std::vector<float> acc = to_float_vector(out);
    for (int64_t i = 0; i < n; ++i) {
      acc[dst_off[i]] =
          reduce_float(p.reduction, acc[dst_off[i]], load_float(updates.dtype, updates.data, i));
    }
    HostTensor o = out;
    from_float_vector(acc, o);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t cur = load_int(out.dtype, out.data, dst_off[i]);
    store_int(out.dtype, out.data, dst_off[i],
              reduce_int(p.reduction, cur, load_int(updates.dtype, updates.data, i)));
  }
}

// ---------------------------------------------------------------- Padding

void run(const PaddingParams& p, const KernelArgs& a) {
  const HostTensor& out = a.out();
  // With an input permutation, the transposed input is made first (the reference's way; the
  // CUDA kernel reads through permuted strides instead).
  HostTensor in = a.in(0);
  in.dims = semantics::padding_input_dims(p, in.dims);  // the view: the same bytes
  std::vector<uint8_t> transposed;
  if (!p.input_permutation.empty() && !is_identity(p.input_permutation)) {
    transposed.resize(in.nbytes());
    transpose(elem_size(in), in.dims, p.input_permutation, bytes(in), transposed.data());
    std::vector<int64_t> dims;
    for (const int64_t d : p.input_permutation) dims.push_back(in.dims[static_cast<size_t>(d)]);
    in.dims = dims;
    in.data = transposed.data();
  }
  std::vector<std::vector<int64_t>> maps(in.dims.size());
  for (size_t d = 0; d < in.dims.size(); ++d) {
    const int64_t n = in.dims[d];
    std::vector<int64_t>& m = maps[d];
    m.resize(static_cast<size_t>(out.dims[d]));
    for (int64_t o = 0; o < out.dims[d]; ++o) {
      const int64_t i = o - p.pre[d];
      if (i >= 0 && i < n) {
        m[o] = i;
        continue;
      }
      if (n == 0 && p.mode != PaddingMode::kConstant) {
        throw Error("cannot pad empty dim " + std::to_string(d) + " in this mode");
      }
      // infer() guarantees n > pad for reflect, n >= pad for circular and n >= 1 for replicate
      // whenever a pad is non-zero, so each of these lands in [0, n).
      switch (p.mode) {
        case PaddingMode::kConstant:
          m[o] = -1;
          break;
        case PaddingMode::kReflect:
          m[o] = i < 0 ? -i : 2 * (n - 1) - i;
          break;
        case PaddingMode::kReplicate:
          m[o] = i < 0 ? 0 : n - 1;
          break;
        case PaddingMode::kCircular:
          m[o] = ((i % n) + n) % n;
          break;
      }
      if (m[o] >= n || (m[o] < 0 && p.mode != PaddingMode::kConstant)) {
        throw Error("padding of dim " + std::to_string(d) + " (size " + std::to_string(n) +
                    ") by " + std::to_string(p.pre[d]) + "/" + std::to_string(p.post[d]) +
                    " is too large for this mode");
      }
    }
  }
  const std::vector<uint8_t> fill = scalar_bytes(out.dtype, p.value);
  copy_through_maps(in, out, maps, fill.data());
}

// ---------------------------------------------------------------- Resize

void run(const ResizeParams& p, const KernelArgs& a) {
  const HostTensor& in = a.in(0);
  const HostTensor& out = a.out();
  if (out.numel() == 0) return;
  for (size_t d = 0; d < in.dims.size(); ++d) {
    if (in.dims[d] == 0) {
      throw Error("cannot resize empty input dim " + std::to_string(d) + " to " +
                  std::to_string(out.dims[d]));
    }
  }
  if (p.mode == ResizeMode::kNearest) {
    std::vector<std::vector<int64_t>> maps;
    for (size_t d = 0; d < in.dims.size(); ++d)
      maps.push_back(nearest_map(p, d, in.dims[d], out.dims[d]));
    copy_through_maps(in, out, maps, nullptr);
    return;
  }
  resize_interpolate(p, in, out);
}

// ---------------------------------------------------------------- Fill

void run(const FillParams& p, const KernelArgs& a) {
  const HostTensor& out = a.out();
  const int64_t n = out.numel();
  switch (p.op) {
    case FillOp::kConstant: {
      const std::vector<uint8_t> v = scalar_bytes(out.dtype, p.value);
      fill_elements(mutable_bytes(out), n, elem_size(out), v.data());
      return;
    }
    case FillOp::kArange: {
      const bool whole = std::floor(p.start) == p.start && std::floor(p.delta) == p.delta &&
                         std::fabs(p.start) < 9e18 && std::fabs(p.delta) < 9e18;
      if (!dtype_is_float(out.dtype) && whole) {
        // Integer arange in wrapping int64 arithmetic, as torch computes integer ranges.
        const auto start = static_cast<uint64_t>(static_cast<int64_t>(p.start));
        const auto delta = static_cast<uint64_t>(static_cast<int64_t>(p.delta));
        for (int64_t i = 0; i < n; ++i) {
          store_int(out.dtype, out.data, i,
                    static_cast<int64_t>(start + static_cast<uint64_t>(i) * delta));
        }
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        const double v = p.start + static_cast<double>(i) * p.delta;  // torch accumulates in double
        if (dtype_is_float(out.dtype)) {
          store_float(out.dtype, out.data, i, static_cast<float>(v));
        } else {
          store_int(out.dtype, out.data, i, saturating_int64(v));
        }
      }
      return;
    }
  }
  throw Error("unknown fill op " + std::to_string(static_cast<int>(p.op)));
}

}  // namespace ember::engine::cpu
