// CPU kernels of the reduction family: Reduce, TopK, SoftMax, Normalization and Cumulative.
//
// Numerics (chosen once for the whole family):
// - Float sums (reduce sum/avg/prod, softmax denominators, normalization moments, cumulative
//   sums) accumulate in double. That costs little next to the memory traffic, makes the
//   summation order (partial sums, thread split) invisible at f32 precision, and keeps long f32
//   reductions well inside the f32 test tolerance without Kahan bookkeeping. Max/min work in the input's own precision.
// - Integers accumulate in int64 with wrap-around (two's complement, computed in uint64 so an
//   overflow is never undefined behaviour) and wrap again on store, like a C cast.
// - NaN propagates through max/min and sorts as the largest value in TopK (as torch does).
//
// Every kernel is a loop over independent rows (outer x [reduced or axis] x inner) split across
// threads with parallel_for; anything that can throw is checked before the parallel section.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "backends/cpu/kernels.h"
#include "backends/semantics/quantize.h"

namespace ember::engine::cpu {

namespace {

// ---------------------------------------------------------------- element access

/// Per-dtype storage type (T), compute type (Value) and conversions; one specialization per
/// numeric DataType so inner loops compile to direct loads instead of a dtype switch.
template <DataType D>
struct Elem;

template <>
struct Elem<DataType::kF32> {
  using T = float;
  using Value = float;
  static float load(T v) { return v; }
  static T store(float v) { return v; }
};
template <>
struct Elem<DataType::kF16> {
  using T = uint16_t;
  using Value = float;
  static float load(T v) { return f16_to_f32(v); }
  static T store(float v) { return f32_to_f16(v); }
};
template <>
struct Elem<DataType::kBF16> {
  using T = uint16_t;
  using Value = float;
  static float load(T v) { return bf16_to_f32(v); }
  static T store(float v) { return f32_to_bf16(v); }
};

template <typename Storage>
struct IntElem {
  using T = Storage;
  using Value = int64_t;
  static int64_t load(T v) { return static_cast<int64_t>(v); }
  static T store(int64_t v) { return static_cast<T>(v); }  // wraps like store_int
};
template <>
struct Elem<DataType::kI8> : IntElem<int8_t> {};
template <>
struct Elem<DataType::kU8> : IntElem<uint8_t> {};
template <>
struct Elem<DataType::kI32> : IntElem<int32_t> {};
template <>
struct Elem<DataType::kI64> : IntElem<int64_t> {};

/// Calls fn(Elem<D>{}) for a float dtype; throws for others (infer rejects them first).
template <typename Fn>
void visit_float(DataType t, const char* layer, Fn&& fn) {
  switch (t) {
    case DataType::kF32: fn(Elem<DataType::kF32>{}); return;
    case DataType::kF16: fn(Elem<DataType::kF16>{}); return;
    case DataType::kBF16: fn(Elem<DataType::kBF16>{}); return;
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string(layer) + " kernel: dtype " + dtype_name(t) + " is not supported");
}

/// Calls fn(Elem<D>{}) for a float or integer dtype; throws for bool.
template <typename Fn>
void visit_numeric(DataType t, const char* layer, Fn&& fn) {
  switch (t) {
    case DataType::kI8: fn(Elem<DataType::kI8>{}); return;
    case DataType::kU8: fn(Elem<DataType::kU8>{}); return;
    case DataType::kI32: fn(Elem<DataType::kI32>{}); return;
    case DataType::kI64: fn(Elem<DataType::kI64>{}); return;
    case DataType::kF32:
    case DataType::kF16:
    case DataType::kBF16: visit_float(t, layer, std::forward<Fn>(fn)); return;
    case DataType::kBool: break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string(layer) + " kernel: dtype " + dtype_name(t) + " is not supported");
}

/// The accumulator of sums and products: double for floats, int64 for integers.
template <typename Value>
using SumT = std::conditional_t<std::is_floating_point_v<Value>, double, int64_t>;

inline double add(double a, double b) { return a + b; }
inline double mul(double a, double b) { return a * b; }
inline int64_t add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
inline int64_t mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

inline bool is_nan(float v) { return std::isnan(v); }
inline bool is_nan(int64_t) { return false; }

/// Product of dims[begin, end).
int64_t product(const std::vector<int64_t>& dims, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t i = begin; i < end; ++i) n *= dims[i];
  return n;
}

/// Splits dims around `axis` into outer (before), n (the axis) and inner (after).
struct AxisSplit {
  int64_t outer = 1;
  int64_t n = 1;
  int64_t inner = 1;
};
AxisSplit split_at(const std::vector<int64_t>& dims, int64_t axis, const char* layer) {
  if (axis < 0 || axis >= static_cast<int64_t>(dims.size())) {
    throw Error(std::string(layer) + " kernel: axis " + std::to_string(axis) +
                " is out of range for dims " + dims_to_string(dims));
  }
  const auto a = static_cast<size_t>(axis);
  return {product(dims, 0, a), dims[a], product(dims, a + 1, dims.size())};
}

// ---------------------------------------------------------------- Reduce

/// A reduction seen as [outer kept dims] x [reduced dims] x [inner kept run]: adjacent dims of
/// one kind are merged and size-1 dims dropped, so "reduce H, W of NCHW" becomes one outer group
/// (N*C) and one contiguous reduced group (H*W), and "reduce C" keeps H*W as the inner run that
/// the innermost loop vectorizes over.
struct ReduceLayout {
  struct Group {
    int64_t size;
    int64_t stride;  ///< Input stride of the group's innermost dim.
  };
  std::vector<Group> outer;    ///< Kept groups before the inner run, outermost first.
  std::vector<Group> reduced;  ///< Reduced groups, outermost first.
  int64_t inner = 1;           ///< Size of the trailing kept run (contiguous in input and output).
  int64_t num_outer = 1;       ///< Product of outer sizes.
  int64_t num_reduced = 1;     ///< Elements combined into each output.
};

ReduceLayout make_reduce_layout(const std::vector<int64_t>& dims, const std::vector<int64_t>& axes) {
  std::vector<bool> is_reduced(dims.size(), false);
  for (int64_t a : axes) is_reduced.at(static_cast<size_t>(a)) = true;
  const std::vector<int64_t> strides = contiguous_strides(dims);

  struct Run {
    bool reduced;
    int64_t size;
    int64_t stride;
  };
  std::vector<Run> runs;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == is_reduced[d]) {
      runs.back().size *= dims[d];
      runs.back().stride = strides[d];
    } else {
      runs.push_back({is_reduced[d], dims[d], strides[d]});
    }
  }
  ReduceLayout l;
  if (!runs.empty() && !runs.back().reduced) {
    l.inner = runs.back().size;
    runs.pop_back();
  }
  for (const Run& r : runs) {
    (r.reduced ? l.reduced : l.outer).push_back({r.size, r.stride});
    (r.reduced ? l.num_reduced : l.num_outer) *= r.size;
  }
  return l;
}

/// Input offset of outer index o (row-major over l.outer).
int64_t outer_offset(const ReduceLayout& l, int64_t o) {
  int64_t off = 0;
  for (size_t g = l.outer.size(); g-- > 0;) {
    off += (o % l.outer[g].size) * l.outer[g].stride;
    o /= l.outer[g].size;
  }
  return off;
}

/// Calls fn(offset) for every index of `groups` (an odometer; no offset table, so a reduction
/// over a huge tensor needs no extra memory).
template <typename Fn>
void for_each_offset(const std::vector<ReduceLayout::Group>& groups, size_t count, Fn&& fn) {
  // The common shapes (one or no odometer group) skip the index vector: this runs per output.
  if (count == 0) {
    fn(int64_t{0});
    return;
  }
  if (count == 1) {
    for (int64_t i = 0; i < groups[0].size; ++i) fn(i * groups[0].stride);
    return;
  }
  std::vector<int64_t> idx(count, 0);
  int64_t off = 0;
  while (true) {
    fn(off);
    // Advance the odometer: bump the innermost group, carrying into outer ones.
    size_t g = count - 1;
    off += groups[g].stride;
    while (++idx[g] == groups[g].size) {
      off -= groups[g].stride * groups[g].size;
      idx[g] = 0;
      if (g == 0) return;
      --g;
      off += groups[g].stride;
    }
  }
}

/// Reduces with combine(Acc, Value) -> Acc from `init`, then stores finish(Acc). merge(Acc, Acc)
/// joins partial results: contiguous runs keep four independent partials so the loop is not
/// bound by the latency of one dependency chain.
template <typename E, typename Acc, typename Combine, typename Merge, typename Finish>
void reduce_rows(const ReduceLayout& l, const HostTensor& x, HostTensor& y, Acc init,
                 Combine combine, Merge merge, Finish finish) {
  using T = typename E::T;
  const T* in = x.as<const T>();
  T* out = y.as<T>();
  const int64_t inner = l.inner;
  // With no inner run the innermost reduced group is contiguous: fold it in a tight loop.
  const bool contiguous_tail = inner == 1 && !l.reduced.empty();
  const size_t odometer_groups = l.reduced.size() - (contiguous_tail ? 1 : 0);
  const int64_t tail = contiguous_tail ? l.reduced.back().size : 1;
  parallel_for(l.num_outer, l.num_reduced * inner, [&](int64_t begin, int64_t end) {
    std::vector<Acc> acc(static_cast<size_t>(inner));
    for (int64_t o = begin; o < end; ++o) {
      const T* base = in + outer_offset(l, o);
      std::fill(acc.begin(), acc.end(), init);
      if (contiguous_tail) {
        Acc a0 = init, a1 = init, a2 = init, a3 = init;
        for_each_offset(l.reduced, odometer_groups, [&](int64_t off) {
          const T* p = base + off;
          int64_t j = 0;
          for (; j + 4 <= tail; j += 4) {
            a0 = combine(a0, E::load(p[j]));
            a1 = combine(a1, E::load(p[j + 1]));
            a2 = combine(a2, E::load(p[j + 2]));
            a3 = combine(a3, E::load(p[j + 3]));
          }
          for (; j < tail; ++j) a0 = combine(a0, E::load(p[j]));
        });
        acc[0] = merge(merge(a0, a1), merge(a2, a3));
      } else {
        for_each_offset(l.reduced, odometer_groups, [&](int64_t off) {
          const T* p = base + off;
          for (int64_t i = 0; i < inner; ++i) acc[i] = combine(acc[i], E::load(p[i]));
        });
      }
      T* dst = out + o * inner;
      for (int64_t i = 0; i < inner; ++i) dst[i] = E::store(finish(acc[i]));
    }
  });
}

}  // namespace

void run(const ReduceParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  HostTensor& y = a.out(0);
  for (int64_t axis : p.axes) split_at(x.dims, axis, "Reduce");  // range check only
  if (y.numel() == 0) return;
  int64_t count = 1;
  for (int64_t axis : p.axes) count *= x.dims[static_cast<size_t>(axis)];
  if (count == 0 && (p.op == ReduceOp::kMax || p.op == ReduceOp::kMin)) {
    throw Error("Reduce kernel: max/min over an empty dim of input " + dims_to_string(x.dims));
  }
  const ReduceLayout l = make_reduce_layout(x.dims, p.axes);
  visit_numeric(x.dtype, "Reduce", [&](auto elem) {
    using E = decltype(elem);
    using Value = typename E::Value;
    using Sum = SumT<Value>;
    if (count == 0) {
      // An empty reduction leaves every output at the op's identity: sum 0, prod 1, and avg
      // 0/0 = NaN (torch.mean of an empty tensor).
      Value fill = p.op == ReduceOp::kProd ? Value(1) : Value(0);
      if constexpr (std::is_floating_point_v<Value>) {
        if (p.op == ReduceOp::kAvg) fill = std::numeric_limits<Value>::quiet_NaN();
      }
      std::fill_n(y.as<typename E::T>(), y.numel(), E::store(fill));
      return;
    }
    // -inf / +inf for floats so rows of infinities reduce to themselves.
    constexpr Value kLowest = std::numeric_limits<Value>::has_infinity
                                  ? -std::numeric_limits<Value>::infinity()
                                  : std::numeric_limits<Value>::lowest();
    constexpr Value kHighest = std::numeric_limits<Value>::has_infinity
                                   ? std::numeric_limits<Value>::infinity()
                                   : std::numeric_limits<Value>::max();
    const auto identity = [](Value v) { return v; };
    const auto sum = [](Sum a, Value v) { return add(a, static_cast<Sum>(v)); };
    const auto sum_merge = [](Sum a, Sum b) { return add(a, b); };
    const auto max = [](Value m, Value v) { return (v > m || is_nan(v)) && !is_nan(m) ? v : m; };
    const auto min = [](Value m, Value v) { return (v < m || is_nan(v)) && !is_nan(m) ? v : m; };
    switch (p.op) {
      case ReduceOp::kSum:
        reduce_rows<E>(l, x, y, Sum(0), sum, sum_merge, [](Sum a) { return static_cast<Value>(a); });
        return;
      case ReduceOp::kProd:
        reduce_rows<E>(
            l, x, y, Sum(1), [](Sum a, Value v) { return mul(a, static_cast<Sum>(v)); },
            [](Sum a, Sum b) { return mul(a, b); }, [](Sum a) { return static_cast<Value>(a); });
        return;
      case ReduceOp::kAvg: {
        const double n = static_cast<double>(count);
        reduce_rows<E>(l, x, y, Sum(0), sum, sum_merge,
                       [n](Sum a) { return static_cast<Value>(static_cast<double>(a) / n); });
        return;
      }
      case ReduceOp::kMax: reduce_rows<E>(l, x, y, kLowest, max, max, identity); return;
      case ReduceOp::kMin: reduce_rows<E>(l, x, y, kHighest, min, min, identity); return;
    }
    throw Error("Reduce kernel: unknown op " + std::to_string(static_cast<int>(p.op)));
  });
}

// ---------------------------------------------------------------- TopK

namespace {

/// "a comes before b" in TopK order, NaN counting as the largest value; ties (neither before
/// the other) are broken by index by the caller.
template <typename Value>
bool topk_before(TopKOp op, Value a, Value b) {
  if (op == TopKOp::kMax) return is_nan(a) ? !is_nan(b) : (!is_nan(b) && a > b);
  return !is_nan(a) && (is_nan(b) || a < b);
}

}  // namespace

void run(const TopKParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  HostTensor& values = a.out(0);
  HostTensor& indices = a.out(1);
  const AxisSplit s = split_at(x.dims, p.axis, "TopK");
  const int64_t k = p.k;
  if (k < 1 || k > s.n) {
    throw Error("TopK kernel: k " + std::to_string(k) + " must be in [1, " + std::to_string(s.n) +
                "] for input " + dims_to_string(x.dims) + " along axis " + std::to_string(p.axis));
  }
  if (p.index_dtype == DataType::kI32 && s.n > std::numeric_limits<int32_t>::max()) {
    throw Error("TopK kernel: axis size " + std::to_string(s.n) + " does not fit i32 indices");
  }
  const int64_t rows = s.outer * s.inner;
  if (rows == 0) return;
  visit_numeric(x.dtype, "TopK", [&](auto elem) {
    using E = decltype(elem);
    using T = typename E::T;
    using Value = typename E::Value;
    const T* in = x.as<const T>();
    T* out_v = values.as<T>();
    const TopKOp op = p.op;
    const auto before = [op](const std::pair<Value, int64_t>& l, const std::pair<Value, int64_t>& r) {
      if (topk_before(op, l.first, r.first)) return true;
      if (topk_before(op, r.first, l.first)) return false;
      return l.second < r.second;
    };
    const int64_t sort_cost = s.n * (k == 1 ? 1 : 4);
    parallel_for(rows, sort_cost, [&](int64_t begin, int64_t end) {
      std::vector<std::pair<Value, int64_t>> row(static_cast<size_t>(k == 1 ? 0 : s.n));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t o = r / s.inner, i = r % s.inner;
        const T* src = in + o * s.n * s.inner + i;
        const int64_t dst = o * k * s.inner + i;
        if (k == 1) {  // argmax/argmin: one scan, the first best wins
          Value best = E::load(src[0]);
          int64_t best_j = 0;
          for (int64_t j = 1; j < s.n; ++j) {
            const Value v = E::load(src[j * s.inner]);
            if (topk_before(op, v, best)) {
              best = v;
              best_j = j;
            }
          }
          out_v[dst] = E::store(best);
          store_int(p.index_dtype, indices.data, dst, best_j);
          continue;
        }
        for (int64_t j = 0; j < s.n; ++j) row[j] = {E::load(src[j * s.inner]), j};
        std::partial_sort(row.begin(), row.begin() + k, row.end(), before);
        for (int64_t t = 0; t < k; ++t) {
          out_v[dst + t * s.inner] = E::store(row[t].first);
          store_int(p.index_dtype, indices.data, dst + t * s.inner, row[t].second);
        }
      }
    });
  });
}

// ---------------------------------------------------------------- SoftMax

namespace {

/// Items are (outer row, a chunk of inner positions): the inner positions of one chunk are
/// processed side by side so strided (non-last-axis) softmax still streams through memory,
/// while the scratch buffer stays within kScratchFloats.
constexpr int64_t kScratchFloats = 1 << 15;

int64_t inner_chunk(int64_t n, int64_t inner) {
  return std::clamp<int64_t>(kScratchFloats / std::max<int64_t>(n, 1), 1, std::max<int64_t>(inner, 1));
}

}  // namespace

void run(const SoftMaxParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  HostTensor& y = a.out(0);
  const AxisSplit s = split_at(x.dims, p.axis, "SoftMax");
  if (x.numel() == 0) return;
  const int64_t chunk = inner_chunk(s.n, s.inner);
  const int64_t chunks = (s.inner + chunk - 1) / chunk;
  const bool log = p.log;
  const bool zero_masked = p.zero_masked_rows;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  visit_float(x.dtype, "SoftMax", [&](auto elem) {
    using E = decltype(elem);
    using T = typename E::T;
    const T* in = x.as<const T>();
    T* out = y.as<T>();
    if (s.inner == 1) {  // the usual last-axis softmax: contiguous rows, scalars in registers
      parallel_for(s.outer, s.n * 8, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(static_cast<size_t>(s.n));
        for (int64_t r = begin; r < end; ++r) {
          const T* src = in + r * s.n;
          T* dst = out + r * s.n;
          float row_max = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < s.n; ++j) {
            scratch[j] = E::load(src[j]);
            row_max = std::max(row_max, scratch[j]);  // NaN is skipped here but poisons the sum
          }
          if (zero_masked && row_max == kNegInf) {
            for (int64_t j = 0; j < s.n; ++j) dst[j] = E::store(0.0f);
            continue;
          }
          double sum = 0.0;
          for (int64_t j = 0; j < s.n; ++j) {
            const float shifted = scratch[j] - row_max;
            const float e = std::exp(shifted);
            sum += e;
            scratch[j] = log ? shifted : e;
          }
          const float f = static_cast<float>(log ? std::log(sum) : 1.0 / sum);
          for (int64_t j = 0; j < s.n; ++j) dst[j] = E::store(log ? scratch[j] - f : scratch[j] * f);
        }
      });
      return;
    }
    parallel_for(s.outer * chunks, s.n * chunk * 8, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(s.n * chunk));
      std::vector<float> row_max(static_cast<size_t>(chunk));
      std::vector<double> row_sum(static_cast<size_t>(chunk));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t o = item / chunks;
        const int64_t i0 = (item % chunks) * chunk;
        const int64_t w = std::min(chunk, s.inner - i0);
        const int64_t base = o * s.n * s.inner + i0;
        std::fill(row_max.begin(), row_max.begin() + w, -std::numeric_limits<float>::infinity());
        std::fill(row_sum.begin(), row_sum.begin() + w, 0.0);
        for (int64_t j = 0; j < s.n; ++j) {
          const T* src = in + base + j * s.inner;
          float* sc = scratch.data() + j * w;
          for (int64_t t = 0; t < w; ++t) {
            const float v = E::load(src[t]);
            sc[t] = v;
            // std::max skips NaN here; a NaN still turns the row's sum, and so the row, into NaN.
            row_max[t] = std::max(row_max[t], v);
          }
        }
        // Shift by the row max so exp never overflows; an all -inf row gives NaN like torch.
        for (int64_t j = 0; j < s.n; ++j) {
          float* sc = scratch.data() + j * w;
          for (int64_t t = 0; t < w; ++t) {
            const float shifted = sc[t] - row_max[t];
            const float e = std::exp(shifted);
            row_sum[t] += e;
            sc[t] = log ? shifted : e;
          }
        }
        for (int64_t t = 0; t < w; ++t) {
          row_sum[t] = log ? std::log(row_sum[t]) : 1.0 / row_sum[t];
        }
        for (int64_t j = 0; j < s.n; ++j) {
          const float* sc = scratch.data() + j * w;
          T* dst = out + base + j * s.inner;
          for (int64_t t = 0; t < w; ++t) {
            const float f = static_cast<float>(row_sum[t]);
            const bool dead = zero_masked && row_max[t] == kNegInf;
            dst[t] = E::store(dead ? 0.0f : log ? sc[t] - f : sc[t] * f);
          }
        }
      }
    });
  });
}

// ---------------------------------------------------------------- Normalization

namespace {

/// Mean and 1/sqrt(biased variance + epsilon) of v[0, n), two passes in double. The mean stays
/// double: rounding it to f32 would cost ~1 ulp of |mean| in every (x - mean), which is most of
/// the signal when |mean| is large next to the spread (activations offset by 1000).
struct Moments {
  double mean;
  float rstd;
};
/// The mean (0 for an RMS norm: `centered` false) and 1 / sqrt(the mean squared deviation from
/// it + epsilon), in double.
Moments moments(const float* v, int64_t n, double epsilon, bool centered = true) {
  // Four partial sums per pass break the add-latency chain (see reduce_rows).
  double s[4] = {0, 0, 0, 0};
  int64_t j = 0;
  if (centered) {
    for (; j + 4 <= n; j += 4) {
      for (int k = 0; k < 4; ++k) s[k] += v[j + k];
    }
    for (; j < n; ++j) s[0] += v[j];
  }
  const double mean = (s[0] + s[1] + s[2] + s[3]) / static_cast<double>(n);
  double q[4] = {0, 0, 0, 0};
  for (j = 0; j + 4 <= n; j += 4) {
    for (int k = 0; k < 4; ++k) {
      const double d = v[j + k] - mean;
      q[k] += d * d;
    }
  }
  for (; j < n; ++j) q[0] += (v[j] - mean) * (v[j] - mean);
  const double var = (q[0] + q[1] + q[2] + q[3]) / static_cast<double>(n);
  return {mean, static_cast<float>(1.0 / std::sqrt(var + epsilon))};
}

/// Optional affine operand as floats; empty when absent. Its size is checked against `expected`
/// so a plan whose shapes slipped past inference cannot make the kernel read out of bounds.
std::vector<float> affine_operand(const KernelArgs& a, size_t i, int64_t expected, const char* role) {
  if (!a.has(i)) return {};
  const HostTensor& t = a.in(i);
  if (t.numel() != expected) {
    throw Error(std::string("Normalization kernel: ") + role + " has " + std::to_string(t.numel()) +
                " elements, expected " + std::to_string(expected));
  }
  return to_float_vector(t);
}

}  // namespace

void run(const NormalizationParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  // With a quantized output (layers.h, NormalizationQuantize): the float output, when there is
  // one, then the quantized one.
  const NormalizationQuantize& nq = p.quantize;
  HostTensor* y = !nq.enabled || nq.float_output ? &a.out(0) : nullptr;
  HostTensor* qy = nq.enabled ? &a.out(nq.float_output ? 1 : 0) : nullptr;
  if (nq.enabled && p.type != NormalizationType::kLayer && p.type != NormalizationType::kRms) {
    throw Error("Normalization kernel: a quantized output is taken by layer and RMS norms only");
  }
  const float inv_q = nq.enabled ? semantics::quant_inv_scale(a.in(3).as<const float>()[0]) : 1.0f;
  const float q_lo = static_cast<float>(nq.quant_min), q_hi = static_cast<float>(nq.quant_max);
  const int64_t numel = x.numel();
  // Each normalized block is contiguous: a row of [axis:] for layer norm, the channels of one
  // group times the spatial size for group/instance norm. Layer norm has one scale/bias per
  // block element; group/instance norm one per channel, repeated over `spatial` elements.
  int64_t block = 0, spatial = 1, num_params = 0;
  bool per_channel = false;
  switch (p.type) {
    case NormalizationType::kLayer:
    case NormalizationType::kRms: {
      const AxisSplit s = split_at(x.dims, p.axis, "Normalization");
      block = s.n * s.inner;
      num_params = block;
      break;
    }
    case NormalizationType::kGroup:
    case NormalizationType::kInstance: {
      if (x.dims.size() < 2) {
        throw Error("Normalization kernel: group/instance norm needs [N, C, *], got " +
                    dims_to_string(x.dims));
      }
      const int64_t channels = x.dims[1];
      const int64_t groups = p.type == NormalizationType::kGroup ? p.num_groups : channels;
      if (groups < 1 || channels % groups != 0) {
        if (channels == 0) break;  // instance norm of zero channels: nothing to do
        throw Error("Normalization kernel: " + std::to_string(channels) +
                    " channels do not split into " + std::to_string(groups) + " groups");
      }
      spatial = product(x.dims, 2, x.dims.size());
      block = channels / groups * spatial;
      num_params = channels;
      per_channel = true;
      break;
    }
  }
  const std::vector<float> scale = affine_operand(a, 1, num_params, "scale");
  const std::vector<float> bias = affine_operand(a, 2, num_params, "bias");
  if (numel == 0 || block == 0) return;
  const int64_t blocks = numel / block;
  const int64_t channels_per_block = per_channel ? block / spatial : 0;
  const int64_t channel_blocks = per_channel ? num_params / channels_per_block : 1;
  visit_float(x.dtype, "Normalization", [&](auto elem) {
    using E = decltype(elem);
    using T = typename E::T;
    const T* in = x.as<const T>();
    T* out = y != nullptr ? y->as<T>() : nullptr;
    parallel_for(blocks, block * 4, [&](int64_t begin, int64_t end) {
      std::vector<float> v(static_cast<size_t>(block));
      for (int64_t b = begin; b < end; ++b) {
        const T* src = in + b * block;
        T* dst = out != nullptr ? out + b * block : nullptr;
        for (int64_t j = 0; j < block; ++j) v[j] = E::load(src[j]);
        const Moments m = moments(v.data(), block, p.epsilon, p.type != NormalizationType::kRms);
        if (!per_channel) {
          for (int64_t j = 0; j < block; ++j) {
            float r = static_cast<float>(v[j] - m.mean) * m.rstd;
            if (!scale.empty()) r *= scale[j];
            if (!bias.empty()) r += bias[j];
            const T stored = E::store(r);
            if (out != nullptr) dst[j] = stored;
            if (qy == nullptr) continue;
            // The Quantize layer's math on the value output 0 holds (cpu/quantize.cpp).
            const float t = E::load(stored);
            const int64_t i = b * block + j;
            if (nq.to == DataType::kF8E4M3) {
              qy->as<uint8_t>()[i] = f32_to_f8e4m3(t * inv_q);
            } else {
              qy->as<int8_t>()[i] = static_cast<int8_t>(
                  semantics::quant_round_clamp(t, inv_q, 0.0f, q_lo, q_hi));
            }
          }
          continue;
        }
        const int64_t c0 = (b % channel_blocks) * channels_per_block;
        for (int64_t c = 0; c < channels_per_block; ++c) {
          // Scale folds into the normalization factor: one multiply-add after centering.
          const float g = scale.empty() ? m.rstd : m.rstd * scale[c0 + c];
          const float sh = bias.empty() ? 0.0f : bias[c0 + c];
          for (int64_t j = c * spatial; j < (c + 1) * spatial; ++j) {
            dst[j] = E::store(static_cast<float>(v[j] - m.mean) * g + sh);
          }
        }
      }
    });
  });
}

// ---------------------------------------------------------------- Cumulative

void run(const CumulativeParams& p, const KernelArgs& a) {
  const HostTensor& x = a.in(0);
  HostTensor& y = a.out(0);
  const AxisSplit s = split_at(x.dims, p.axis, "Cumulative");
  if (x.numel() == 0) return;
  // Items are (outer row, chunk of inner positions) walking the axis together, which keeps the
  // loads contiguous for a cumsum over a leading axis and still parallelizes a single row set.
  constexpr int64_t kChunk = 1024;
  const int64_t chunk = std::min(kChunk, s.inner);
  const int64_t chunks = (s.inner + chunk - 1) / chunk;
  visit_numeric(x.dtype, "Cumulative", [&](auto elem) {
    using E = decltype(elem);
    using T = typename E::T;
    using Value = typename E::Value;
    using Sum = SumT<Value>;
    const T* in = x.as<const T>();
    T* out = y.as<T>();
    parallel_for(s.outer * chunks, s.n * chunk, [&](int64_t begin, int64_t end) {
      std::vector<Sum> acc(static_cast<size_t>(chunk));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t o = item / chunks;
        const int64_t i0 = (item % chunks) * chunk;
        const int64_t w = std::min(chunk, s.inner - i0);
        std::fill(acc.begin(), acc.begin() + w, Sum(0));
        for (int64_t step = 0; step < s.n; ++step) {
          const int64_t j = p.reverse ? s.n - 1 - step : step;
          const int64_t off = (o * s.n + j) * s.inner + i0;
          for (int64_t t = 0; t < w; ++t) {
            const Sum v = static_cast<Sum>(E::load(in[off + t]));
            if (p.exclusive) {
              out[off + t] = E::store(static_cast<Value>(acc[t]));
              acc[t] = add(acc[t], v);
            } else {
              acc[t] = add(acc[t], v);
              out[off + t] = E::store(static_cast<Value>(acc[t]));
            }
          }
        }
      }
    });
  });
}

}  // namespace ember::engine::cpu
