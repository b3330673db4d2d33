// CPU kernels of the pointwise layers: Activation, ElementWise, Unary, Select, Cast.
//
// Every kernel is one loop template instantiated per dtype (and per op), so the f32 path reads and
// writes floats directly and f16/bf16 convert only at load and store. Broadcasting goes through
// BroadcastLoop, which merges dims that can be walked as one and hands the op contiguous runs of
// the innermost dim, so the common cases (same shapes, a scalar, a per-channel bias) become tight
// loops the compiler can vectorize.
//
// Numeric conventions (all chosen to match torch where torch defines the result):
// - Integer arithmetic runs in int64 with wrap-around (no signed-overflow UB), and the result is
//   stored with a C cast, so i8/u8/i32 wrap like torch's.
// - Integer div truncates and floor_div floors; a zero divisor is an Error (checked before any
//   worker thread starts). INT64_MIN / -1 wraps to INT64_MIN.
// - Integer pow with a negative exponent is an Error, as in torch.
// - Float floor_div follows torch/Python (computed through fmod, so 1 // 0.1 == 9); x // 0 is
//   x / 0.
// - max/min propagate NaN (torch.maximum/minimum).
// - round is half to even; sign(0) = 0 and sign(NaN) = 0 (torch).
// - Cast float -> integer truncates toward zero; NaN becomes 0; values beyond the int64 range
//   (and +-inf) saturate to INT64_MIN/INT64_MAX; the int64 is then narrowed with a C cast (so
//   -1.0 -> u8 is 255 and 300.0 -> u8 is 44, as torch gives on x86). Anything -> bool is x != 0
//   (NaN -> true).
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "backends/cpu/kernels.h"
#include "backends/semantics/activation.h"
#include "backends/semantics/pointwise.h"

namespace ember::engine::cpu {

namespace {

// ---------------------------------------------------------------- element types

/// Storage type T and compute type C of one dtype, with the conversions between them.
template <DataType D>
struct Elem;

template <>
struct Elem<DataType::kF32> {
  using T = float;
  using C = float;
  static C load(T v) { return v; }
  static T store(C v) { return v; }
};
template <>
struct Elem<DataType::kF16> {
  using T = uint16_t;
  using C = float;
  static C load(T v) { return f16_to_f32(v); }
  static T store(C v) { return f32_to_f16(v); }
};
template <>
struct Elem<DataType::kBF16> {
  using T = uint16_t;
  using C = float;
  static C load(T v) { return bf16_to_f32(v); }
  static T store(C v) { return f32_to_bf16(v); }
};

/// Integers compute in int64 and narrow with a C cast on store (wrap-around).
template <typename Storage>
struct IntElem {
  using T = Storage;
  using C = int64_t;
  static C load(T v) { return static_cast<C>(v); }
  static T store(C v) { return static_cast<T>(v); }
};
template <>
struct Elem<DataType::kI8> : IntElem<int8_t> {};
template <>
struct Elem<DataType::kU8> : IntElem<uint8_t> {};
template <>
struct Elem<DataType::kI32> : IntElem<int32_t> {};
template <>
struct Elem<DataType::kI64> : IntElem<int64_t> {};
template <>
struct Elem<DataType::kBool> {
  using T = uint8_t;
  using C = bool;
  static C load(T v) { return v != 0; }
  static T store(C v) { return v ? 1 : 0; }
};

template <DataType D>
using Tag = std::integral_constant<DataType, D>;

[[noreturn]] void unsupported(const char* what, DataType t) {
  // Unreachable for layers that passed infer(); kept so a bug is an Error, not memory corruption.
  throw Error(std::string(what) + ": unsupported dtype " + dtype_name(t) +
              " (the layer should have been rejected by shape inference)");
}

/// Checks what infer() guarantees (dtypes, shapes) once per call, so a bug elsewhere (a wrong
/// plan, a missed shape check) surfaces as an Error instead of an out-of-bounds access.
void expect_kernel(bool cond, const char* what, const std::string& detail) {
  if (!cond) {
    throw Error(std::string(what) + ": " + detail +
                " (inconsistent with shape inference; the plan may be corrupt)");
  }
}

void expect_same_dims(const HostTensor& in, const HostTensor& out, const char* what) {
  expect_kernel(in.dims == out.dims, what,
                "input dims " + dims_to_string(in.dims) + " differ from output dims " +
                    dims_to_string(out.dims));
}

void expect_out_dtype(const HostTensor& out, DataType t, const char* what) {
  expect_kernel(
      out.dtype == t, what,
      std::string("output dtype ") + dtype_name(out.dtype) + ", expected " + dtype_name(t));
}

template <typename Fn>
void dispatch_float(DataType t, const char* what, Fn&& fn) {
  switch (t) {
    case DataType::kF32:
      return fn(Tag<DataType::kF32>{});
    case DataType::kF16:
      return fn(Tag<DataType::kF16>{});
    case DataType::kBF16:
      return fn(Tag<DataType::kBF16>{});
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool:
      break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  unsupported(what, t);
}

template <typename Fn>
void dispatch_int(DataType t, const char* what, Fn&& fn) {
  switch (t) {
    case DataType::kI8:
      return fn(Tag<DataType::kI8>{});
    case DataType::kU8:
      return fn(Tag<DataType::kU8>{});
    case DataType::kI32:
      return fn(Tag<DataType::kI32>{});
    case DataType::kI64:
      return fn(Tag<DataType::kI64>{});
    case DataType::kF32:
    case DataType::kF16:
    case DataType::kBF16:
    case DataType::kBool:
      break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  unsupported(what, t);
}

template <typename Fn>
void dispatch_all(DataType t, Fn&& fn) {
  switch (t) {
    case DataType::kF32:
      return fn(Tag<DataType::kF32>{});
    case DataType::kF16:
      return fn(Tag<DataType::kF16>{});
    case DataType::kBF16:
      return fn(Tag<DataType::kBF16>{});
    case DataType::kI8:
      return fn(Tag<DataType::kI8>{});
    case DataType::kU8:
      return fn(Tag<DataType::kU8>{});
    case DataType::kI32:
      return fn(Tag<DataType::kI32>{});
    case DataType::kI64:
      return fn(Tag<DataType::kI64>{});
    case DataType::kBool:
      return fn(Tag<DataType::kBool>{});
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  unsupported("cast", t);
}

// ---------------------------------------------------------------- loops

/// Work units per element handed to parallel_for: cheap arithmetic vs. libm calls.
constexpr int64_t kCheapCost = 1;
constexpr int64_t kMathCost = 16;

/// Applies out[i] = f(in[i]) over a same-shaped contiguous tensor.
template <typename EI, typename EO, typename F>
void unary_loop(const HostTensor& in, HostTensor& out, int64_t cost, F f) {
  expect_same_dims(in, out, "pointwise");
  const auto* x = in.as<const typename EI::T>();
  auto* y = out.as<typename EO::T>();
  parallel_for(out.numel(), cost, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = EO::store(f(EI::load(x[i])));
  });
}

/// Walks an output of `out_dims` together with N inputs broadcast to it (numpy rules).
///
/// Dims of size 1 are dropped and neighbouring dims merged wherever every operand can step
/// through both as one (both contiguous, or both broadcast), so a same-shape operation becomes a
/// single run and `x[N, C, H, W] + bias[1, C, 1, 1]` becomes runs of H*W with a stride-0 bias.
template <size_t N>
class BroadcastLoop {
 public:
  using Offsets = std::array<int64_t, N>;

  BroadcastLoop(const std::array<const std::vector<int64_t>*, N>& in_dims,
                const std::vector<int64_t>& out_dims) {
    std::array<std::vector<int64_t>, N> in_strides;
    for (size_t k = 0; k < N; ++k) {
      const std::vector<int64_t>& in = *in_dims[k];
      bool ok = in.size() <= out_dims.size();
      for (size_t d = 0; ok && d < in.size(); ++d) {
        const int64_t o = out_dims[out_dims.size() - in.size() + d];
        ok = in[d] == o || in[d] == 1;
      }
      expect_kernel(ok, "broadcast",
                    "input " + std::to_string(k) + " dims " + dims_to_string(in) +
                        " do not broadcast to output dims " + dims_to_string(out_dims));
      in_strides[k] = broadcast_strides(in, out_dims);
    }
    for (size_t d = 0; d < out_dims.size(); ++d) {
      if (out_dims[d] == 1) continue;
      Offsets s;
      for (size_t k = 0; k < N; ++k) s[k] = in_strides[k][d];
      if (!dims_.empty()) {
        bool mergeable = true;
        for (size_t k = 0; k < N; ++k) mergeable &= strides_.back()[k] == s[k] * out_dims[d];
        if (mergeable) {
          dims_.back() *= out_dims[d];
          strides_.back() = s;
          continue;
        }
      }
      dims_.push_back(out_dims[d]);
      strides_.push_back(s);
    }
    if (dims_.empty()) {  // a scalar or all-ones output
      dims_.push_back(1);
      strides_.push_back(Offsets{});
    }
  }

  /// Calls fn(out_offset, in_offsets, inner_strides, count) for runs of consecutive output
  /// elements; in run j, element i of the run reads input k at in_offsets[k] + i *
  /// inner_strides[k]. Runs are split over worker threads; fn must not throw.
  template <typename Fn>
  void run(int64_t cost, Fn&& fn) const {
    int64_t total = 1;
    for (int64_t d : dims_) total *= d;
    if (total == 0) return;
    const size_t rank = dims_.size();
    const int64_t inner = dims_.back();
    const Offsets inner_strides = strides_.back();
    parallel_for(total, cost, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> idx(rank, 0);
      Offsets off{};
      int64_t rem = begin;
      for (size_t d = rank; d-- > 0;) {
        idx[d] = rem % dims_[d];
        rem /= dims_[d];
        for (size_t k = 0; k < N; ++k) off[k] += idx[d] * strides_[d][k];
      }
      int64_t pos = begin;
      while (pos < end) {
        const int64_t n = std::min(inner - idx[rank - 1], end - pos);
        fn(pos, off, inner_strides, n);
        pos += n;
        if (pos >= end) break;
        // Finished a run of the inner dim: rewind it and carry into the outer dims.
        for (size_t k = 0; k < N; ++k) off[k] -= idx[rank - 1] * inner_strides[k];
        idx[rank - 1] = 0;
        for (size_t d = rank - 1; d-- > 0;) {
          for (size_t k = 0; k < N; ++k) off[k] += strides_[d][k];
          if (++idx[d] < dims_[d]) break;
          for (size_t k = 0; k < N; ++k) off[k] -= idx[d] * strides_[d][k];
          idx[d] = 0;
        }
      }
    });
  }

 private:
  std::vector<int64_t> dims_;
  std::vector<Offsets> strides_;
};

/// out = f(a, b) with broadcasting; EA/EB/EO describe the dtypes.
template <typename EA, typename EB, typename EO, typename F>
void binary_loop(const HostTensor& a, const HostTensor& b, HostTensor& out, int64_t cost, F f) {
  const auto* pa = a.as<const typename EA::T>();
  const auto* pb = b.as<const typename EB::T>();
  auto* po = out.as<typename EO::T>();
  BroadcastLoop<2>({&a.dims, &b.dims}, out.dims)
      .run(cost, [&](int64_t o, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st,
                     int64_t n) {
        const auto* x = pa + off[0];
        const auto* y = pb + off[1];
        auto* z = po + o;
        // The three shapes that cover nearly all traffic get their own vectorizable loops.
        if (st[0] == 1 && st[1] == 1) {
          for (int64_t i = 0; i < n; ++i) z[i] = EO::store(f(EA::load(x[i]), EB::load(y[i])));
        } else if (st[0] == 1 && st[1] == 0) {
          const auto yv = EB::load(*y);
          for (int64_t i = 0; i < n; ++i) z[i] = EO::store(f(EA::load(x[i]), yv));
        } else if (st[0] == 0 && st[1] == 1) {
          const auto xv = EA::load(*x);
          for (int64_t i = 0; i < n; ++i) z[i] = EO::store(f(xv, EB::load(y[i])));
        } else {
          for (int64_t i = 0; i < n; ++i) {
            z[i] = EO::store(f(EA::load(x[i * st[0]]), EB::load(y[i * st[1]])));
          }
        }
      });
}

// ---------------------------------------------------------------- integer helpers

/// Two's-complement wrap-around arithmetic without signed-overflow UB.
int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
int64_t wrap_sub(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}
int64_t wrap_neg(int64_t a) { return static_cast<int64_t>(0 - static_cast<uint64_t>(a)); }

/// Truncating division; b != 0 (checked by the caller). INT64_MIN / -1 wraps.
int64_t int_div(int64_t a, int64_t b) { return b == -1 ? wrap_neg(a) : a / b; }

/// Flooring division; b != 0.
int64_t int_floor_div(int64_t a, int64_t b) {
  if (b == -1) return wrap_neg(a);
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/// a ** e for e >= 0 by squaring, wrapping like repeated multiplication.
int64_t int_pow(int64_t a, int64_t e) {
  uint64_t result = 1, base = static_cast<uint64_t>(a);
  for (uint64_t u = static_cast<uint64_t>(e); u != 0; u >>= 1) {
    if (u & 1u) result *= base;
    base *= base;
  }
  return static_cast<int64_t>(result);
}

/// Throws (before any worker starts) when the divisor tensor holds a zero or the exponent tensor
/// a negative value. Every element of b reaches the output unless the output is empty.
template <typename E>
void check_int_operand(const HostTensor& b, const HostTensor& out, ElementWiseOp op) {
  if (out.numel() == 0) return;
  const auto* p = b.as<const typename E::T>();
  const int64_t n = b.numel();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = E::load(p[i]);
    if (op == ElementWiseOp::kPow && v < 0) {
      throw Error("pow: integer base raised to a negative exponent (" + std::to_string(v) +
                  " at element " + std::to_string(i) +
                  " of the exponent); cast the base to a float dtype first");
    }
    if (op != ElementWiseOp::kPow && v == 0) {
      throw Error(std::string(op == ElementWiseOp::kDiv ? "div" : "floor_div") +
                  ": integer division by zero (element " + std::to_string(i) +
                  " of the divisor); check the divisor or cast to a float dtype");
    }
  }
}

// ---------------------------------------------------------------- float helpers

using semantics::float_floor_div;
using semantics::nan_max;
using semantics::nan_min;

using semantics::param_to_float;

// ---------------------------------------------------------------- elementwise

template <typename Float, typename Int>
void elementwise_numeric(const HostTensor& a, const HostTensor& b, HostTensor& out,
                         ElementWiseOp op, int64_t cost, Float ff, Int fi) {
  if (dtype_is_float(a.dtype)) {
    dispatch_float(a.dtype, "elementwise", [&](auto tag) {
      using E = Elem<decltype(tag)::value>;
      binary_loop<E, E, E>(a, b, out, cost, ff);
    });
    return;
  }
  dispatch_int(a.dtype, "elementwise", [&](auto tag) {
    using E = Elem<decltype(tag)::value>;
    if (op == ElementWiseOp::kDiv || op == ElementWiseOp::kFloorDiv || op == ElementWiseOp::kPow) {
      check_int_operand<E>(b, out, op);
    }
    binary_loop<E, E, E>(a, b, out, cost, fi);
  });
}

template <typename F>
void elementwise_compare(const HostTensor& a, const HostTensor& b, HostTensor& out, F f) {
  using EO = Elem<DataType::kBool>;
  dispatch_all(a.dtype, [&](auto tag) {
    using E = Elem<decltype(tag)::value>;
    binary_loop<E, E, EO>(a, b, out, kCheapCost, f);
  });
}

template <typename F>
void elementwise_logic(const HostTensor& a, const HostTensor& b, HostTensor& out, F f) {
  using E = Elem<DataType::kBool>;
  if (a.dtype != DataType::kBool) unsupported("elementwise logic", a.dtype);
  binary_loop<E, E, E>(a, b, out, kCheapCost, f);
}

// ---------------------------------------------------------------- unary

template <typename F>
void unary_float(const HostTensor& in, HostTensor& out, int64_t cost, F f) {
  dispatch_float(in.dtype, "unary", [&](auto tag) {
    using E = Elem<decltype(tag)::value>;
    unary_loop<E, E>(in, out, cost, f);
  });
}

template <typename Float, typename Int>
void unary_numeric(const HostTensor& in, HostTensor& out, Float ff, Int fi) {
  if (dtype_is_float(in.dtype)) {
    unary_float(in, out, kCheapCost, ff);
    return;
  }
  dispatch_int(in.dtype, "unary", [&](auto tag) {
    using E = Elem<decltype(tag)::value>;
    unary_loop<E, E>(in, out, kCheapCost, fi);
  });
}

template <typename F>
void unary_float_to_bool(const HostTensor& in, HostTensor& out, F f) {
  dispatch_float(in.dtype, "unary", [&](auto tag) {
    using E = Elem<decltype(tag)::value>;
    unary_loop<E, Elem<DataType::kBool>>(in, out, kCheapCost, f);
  });
}

// ---------------------------------------------------------------- cast

/// Float to int64: truncation toward zero, NaN -> 0, saturation beyond the int64 range.
int64_t float_to_int64(float v) {
  if (v != v) return 0;
  if (v >= 0x1p63f) return std::numeric_limits<int64_t>::max();
  if (v <= -0x1p63f) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(v);
}

template <DataType From, DataType To>
typename Elem<To>::T convert(typename Elem<From>::T v) {
  using EF = Elem<From>;
  using ET = Elem<To>;
  const auto x = EF::load(v);
  if constexpr (To == DataType::kBool) {
    return ET::store(x != 0);
  } else if constexpr (std::is_same_v<typename ET::C, float>) {
    return ET::store(static_cast<float>(x));
  } else if constexpr (std::is_same_v<typename EF::C, float>) {
    return ET::store(float_to_int64(x));
  } else {
    return ET::store(static_cast<int64_t>(x));
  }
}

}  // namespace

// ---------------------------------------------------------------- kernels

void run(const ActivationParams& p, const KernelArgs& args) {
  const HostTensor& in = args.in(0);
  HostTensor& out = args.out();
  expect_out_dtype(out, in.dtype, "activation");
  const float alpha = param_to_float(p.alpha);
  const float beta = param_to_float(p.beta);
  dispatch_float(in.dtype, "activation", [&](auto tag) {
    using E = Elem<decltype(tag)::value>;
    auto go = [&](int64_t cost, auto f) { unary_loop<E, E>(in, out, cost, f); };
    // One loop per type, each calling the shared formula with its type as a constant.
    using semantics::activation;
#define EMBER_ACTIVATION_CASE(T, COST)                                                        \
  case ActivationType::T:                                                                      \
    return go(COST, [alpha, beta](float x) { return activation(ActivationType::T, x, alpha, beta); });
    switch (p.type) {
      EMBER_ACTIVATION_CASE(kRelu, kCheapCost)
      EMBER_ACTIVATION_CASE(kSigmoid, kMathCost)
      EMBER_ACTIVATION_CASE(kTanh, kMathCost)
      EMBER_ACTIVATION_CASE(kLeakyRelu, kCheapCost)
      EMBER_ACTIVATION_CASE(kElu, kMathCost)
      EMBER_ACTIVATION_CASE(kSelu, kMathCost)
      EMBER_ACTIVATION_CASE(kSoftsign, kCheapCost)
      EMBER_ACTIVATION_CASE(kSoftplus, kMathCost)
      EMBER_ACTIVATION_CASE(kClip, kCheapCost)
      EMBER_ACTIVATION_CASE(kHardSigmoid, kCheapCost)
      EMBER_ACTIVATION_CASE(kGeluErf, kMathCost)
      EMBER_ACTIVATION_CASE(kGeluTanh, kMathCost)
      EMBER_ACTIVATION_CASE(kSilu, kMathCost)
    }
#undef EMBER_ACTIVATION_CASE
    throw Error("activation: unknown type " + std::to_string(static_cast<int>(p.type)));
  });
}

void run(const ElementWiseParams& p, const KernelArgs& args) {
  const HostTensor& a = args.in(0);
  const HostTensor& b = args.in(1);
  HostTensor& out = args.out();
  expect_kernel(a.dtype == b.dtype, "elementwise", "inputs have different dtypes");
  const bool compare = p.op == ElementWiseOp::kEqual || p.op == ElementWiseOp::kGreater ||
                       p.op == ElementWiseOp::kLess;
  expect_out_dtype(out, compare ? DataType::kBool : a.dtype, "elementwise");
  using I = int64_t;
  switch (p.op) {
    case ElementWiseOp::kSum:
      return elementwise_numeric(
          a, b, out, p.op, kCheapCost, [](float x, float y) { return x + y; },
          [](I x, I y) { return wrap_add(x, y); });
    case ElementWiseOp::kProd:
      return elementwise_numeric(
          a, b, out, p.op, kCheapCost, [](float x, float y) { return x * y; },
          [](I x, I y) { return wrap_mul(x, y); });
    case ElementWiseOp::kMax:
      return elementwise_numeric(
          a, b, out, p.op, kCheapCost, [](float x, float y) { return nan_max(x, y); },
          [](I x, I y) { return x > y ? x : y; });
    case ElementWiseOp::kMin:
      return elementwise_numeric(
          a, b, out, p.op, kCheapCost, [](float x, float y) { return nan_min(x, y); },
          [](I x, I y) { return x < y ? x : y; });
    case ElementWiseOp::kSub:
      return elementwise_numeric(
          a, b, out, p.op, kCheapCost, [](float x, float y) { return x - y; },
          [](I x, I y) { return wrap_sub(x, y); });
    case ElementWiseOp::kDiv:
      return elementwise_numeric(
          a, b, out, p.op, kCheapCost, [](float x, float y) { return x / y; },
          [](I x, I y) { return int_div(x, y); });
    case ElementWiseOp::kPow:
      return elementwise_numeric(
          a, b, out, p.op, kMathCost, [](float x, float y) { return std::pow(x, y); },
          [](I x, I y) { return int_pow(x, y); });
    case ElementWiseOp::kFloorDiv:
      return elementwise_numeric(
          a, b, out, p.op, kMathCost, [](float x, float y) { return float_floor_div(x, y); },
          [](I x, I y) { return int_floor_div(x, y); });
    case ElementWiseOp::kAnd:
      return elementwise_logic(a, b, out, [](bool x, bool y) { return x && y; });
    case ElementWiseOp::kOr:
      return elementwise_logic(a, b, out, [](bool x, bool y) { return x || y; });
    case ElementWiseOp::kXor:
      return elementwise_logic(a, b, out, [](bool x, bool y) { return x != y; });
    case ElementWiseOp::kEqual:
      return elementwise_compare(a, b, out, [](auto x, auto y) { return x == y; });
    case ElementWiseOp::kGreater:
      return elementwise_compare(a, b, out, [](auto x, auto y) { return x > y; });
    case ElementWiseOp::kLess:
      return elementwise_compare(a, b, out, [](auto x, auto y) { return x < y; });
  }
  throw Error("elementwise: unknown op " + std::to_string(static_cast<int>(p.op)));
}

void run(const UnaryParams& p, const KernelArgs& args) {
  const HostTensor& in = args.in(0);
  HostTensor& out = args.out();
  const bool classify = p.op == UnaryOp::kIsInf || p.op == UnaryOp::kIsNan;
  expect_out_dtype(out, classify ? DataType::kBool : in.dtype, "unary");
  using I = int64_t;
  auto math = [&](auto f) { unary_float(in, out, kMathCost, f); };
  auto cheap = [&](auto f) { unary_float(in, out, kCheapCost, f); };
  switch (p.op) {
    case UnaryOp::kExp:
      return math([](float x) { return std::exp(x); });
    case UnaryOp::kLog:
      return math([](float x) { return std::log(x); });
    case UnaryOp::kSqrt:
      return cheap([](float x) { return std::sqrt(x); });
    case UnaryOp::kRsqrt:
      return cheap([](float x) { return 1.0f / std::sqrt(x); });
    case UnaryOp::kReciprocal:
      return cheap([](float x) { return 1.0f / x; });
    case UnaryOp::kAbs:
      return unary_numeric(
          in, out, [](float x) { return std::fabs(x); },
          [](I x) { return x < 0 ? wrap_neg(x) : x; });
    case UnaryOp::kNeg:
      return unary_numeric(
          in, out, [](float x) { return -x; }, [](I x) { return wrap_neg(x); });
    case UnaryOp::kSin:
      return math([](float x) { return std::sin(x); });
    case UnaryOp::kCos:
      return math([](float x) { return std::cos(x); });
    case UnaryOp::kTan:
      return math([](float x) { return std::tan(x); });
    case UnaryOp::kAsin:
      return math([](float x) { return std::asin(x); });
    case UnaryOp::kAcos:
      return math([](float x) { return std::acos(x); });
    case UnaryOp::kAtan:
      return math([](float x) { return std::atan(x); });
    case UnaryOp::kSinh:
      return math([](float x) { return std::sinh(x); });
    case UnaryOp::kCosh:
      return math([](float x) { return std::cosh(x); });
    case UnaryOp::kAsinh:
      return math([](float x) { return std::asinh(x); });
    case UnaryOp::kAcosh:
      return math([](float x) { return std::acosh(x); });
    case UnaryOp::kAtanh:
      return math([](float x) { return std::atanh(x); });
    case UnaryOp::kCeil:
      return cheap([](float x) { return std::ceil(x); });
    case UnaryOp::kFloor:
      return cheap([](float x) { return std::floor(x); });
    // nearbyint rounds half to even in the default rounding mode, without raising FE_INEXACT.
    case UnaryOp::kRound:
      return cheap([](float x) { return std::nearbyint(x); });
    case UnaryOp::kErf:
      return math([](float x) { return std::erf(x); });
    case UnaryOp::kNot: {
      using E = Elem<DataType::kBool>;
      if (in.dtype != DataType::kBool) unsupported("not", in.dtype);
      return unary_loop<E, E>(in, out, kCheapCost, [](bool x) { return !x; });
    }
    case UnaryOp::kSign:
      return unary_numeric(
          in, out, [](float x) { return static_cast<float>((0.0f < x) - (x < 0.0f)); },
          [](I x) { return static_cast<I>((0 < x) - (x < 0)); });
    case UnaryOp::kIsInf:
      return unary_float_to_bool(in, out, [](float x) { return std::isinf(x); });
    case UnaryOp::kIsNan:
      return unary_float_to_bool(in, out, [](float x) { return x != x; });
  }
  throw Error("unary: unknown op " + std::to_string(static_cast<int>(p.op)));
}

void run(const SelectParams&, const KernelArgs& args) {
  const HostTensor& cond = args.in(0);
  const HostTensor& a = args.in(1);
  const HostTensor& b = args.in(2);
  HostTensor& out = args.out();
  if (cond.dtype != DataType::kBool) unsupported("select condition", cond.dtype);
  expect_kernel(a.dtype == b.dtype, "select", "a and b have different dtypes");
  expect_out_dtype(out, a.dtype, "select");
  // Select only moves elements, so one instantiation per element size serves every dtype.
  auto go = [&](auto zero) {
    using T = decltype(zero);
    const auto* c = cond.as<const uint8_t>();
    const auto* x = a.as<const T>();
    const auto* y = b.as<const T>();
    auto* z = out.as<T>();
    BroadcastLoop<3>({&cond.dims, &a.dims, &b.dims}, out.dims)
        .run(kCheapCost, [&](int64_t o, const std::array<int64_t, 3>& off,
                             const std::array<int64_t, 3>& st, int64_t n) {
          const uint8_t* cc = c + off[0];
          const T* xx = x + off[1];
          const T* yy = y + off[2];
          T* zz = z + o;
          if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
            for (int64_t i = 0; i < n; ++i) zz[i] = cc[i] ? xx[i] : yy[i];
          } else {
            for (int64_t i = 0; i < n; ++i) {
              zz[i] = cc[i * st[0]] ? xx[i * st[1]] : yy[i * st[2]];
            }
          }
        });
  };
  switch (dtype_size(a.dtype)) {
    case 1:
      return go(uint8_t{});
    case 2:
      return go(uint16_t{});
    case 4:
      return go(uint32_t{});
    case 8:
      return go(uint64_t{});
    default:
      unsupported("select", a.dtype);
  }
}

void run(const CastParams& p, const KernelArgs& args) {
  const HostTensor& in = args.in(0);
  HostTensor& out = args.out();
  expect_out_dtype(out, p.to, "cast");
  expect_same_dims(in, out, "cast");
  if (in.dtype == out.dtype) {
    if (in.data != out.data) std::memcpy(out.data, in.data, out.nbytes());
    return;
  }
  dispatch_all(in.dtype, [&](auto from) {
    dispatch_all(out.dtype, [&](auto to) {
      constexpr DataType kFrom = decltype(from)::value;
      constexpr DataType kTo = decltype(to)::value;
      const auto* x = in.as<const typename Elem<kFrom>::T>();
      auto* y = out.as<typename Elem<kTo>::T>();
      parallel_for(out.numel(), kCheapCost, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) y[i] = convert<kFrom, kTo>(x[i]);
      });
    });
  });
}

}  // namespace ember::engine::cpu
