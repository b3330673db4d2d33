// CUDA kernels of the pointwise layers: Activation, ElementWise, Unary, Select, Cast.
//
// Semantics follow the CPU reference (src/engine/backends/cpu/pointwise.cpp) exactly: f16/bf16
// compute in f32 and round to nearest even on store; integers compute in int64 with wrap-around
// and narrow with a C cast; max/min propagate NaN; round is half to even; float->int casts
// truncate, NaN -> 0, saturate beyond int64; integer div/floor_div by zero and integer pow with a
// negative exponent are Errors (checked on the device, read back before the layer returns).
//
// Kernels are templated on storage types only; the op is a run-time field of a small functor
// (warp-uniform switch), which keeps the number of instantiations, and nvcc's time, small.
// Same-shape operands take a flat kernel with 16-byte vector loads; broadcasting walks a
// coalesced IndexMap passed by value.
#include <array>
#include <cmath>
#include <string>
#include <type_traits>

#include "backends/cuda/device_common.cuh"
#include "backends/semantics/pointwise.h"

namespace ember::engine::cuda {

namespace {

// ---------------------------------------------------------------- scalar math (device)

__device__ __forceinline__ int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
__device__ __forceinline__ int64_t wrap_sub(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
__device__ __forceinline__ int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}
__device__ __forceinline__ int64_t wrap_neg(int64_t a) {
  return static_cast<int64_t>(0 - static_cast<uint64_t>(a));
}

// b == 0 was rejected before launch; the guards only keep a racing bug from faulting.
__device__ __forceinline__ int64_t int_div(int64_t a, int64_t b) {
  if (b == 0) return 0;
  return b == -1 ? wrap_neg(a) : a / b;
}
__device__ __forceinline__ int64_t int_floor_div(int64_t a, int64_t b) {
  if (b == 0) return 0;
  if (b == -1) return wrap_neg(a);
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int64_t int_pow(int64_t a, int64_t e) {
  uint64_t result = 1, base = static_cast<uint64_t>(a);
  for (uint64_t u = static_cast<uint64_t>(e); u != 0; u >>= 1) {
    if (u & 1u) result *= base;
    base *= base;
  }
  return static_cast<int64_t>(result);
}

/// Float to int64: truncation toward zero, NaN -> 0, saturation beyond the int64 range.
__device__ __forceinline__ int64_t float_to_int64(float v) {
  if (v != v) return 0;
  if (v >= 0x1p63f) return INT64_MAX;
  if (v <= -0x1p63f) return INT64_MIN;
  return static_cast<int64_t>(v);
}

// ---------------------------------------------------------------- op functors (compute types)

/// Float arithmetic: semantics/pointwise.h's formulas, the CPU kernels' and the fused
/// interpreter's, so every back end and path computes the same values.
struct FloatBinary {
  ElementWiseOp op;
  __device__ float operator()(float x, float y) const {
    return semantics::elementwise(op, x, y);  // logic and comparisons take other functors
  }
};

struct IntBinary {
  ElementWiseOp op;
  __device__ int64_t operator()(int64_t x, int64_t y) const {
    switch (op) {
      case ElementWiseOp::kSum: return wrap_add(x, y);
      case ElementWiseOp::kProd: return wrap_mul(x, y);
      case ElementWiseOp::kMax: return x > y ? x : y;
      case ElementWiseOp::kMin: return x < y ? x : y;
      case ElementWiseOp::kSub: return wrap_sub(x, y);
      case ElementWiseOp::kDiv: return int_div(x, y);
      case ElementWiseOp::kPow: return int_pow(x, y);
      case ElementWiseOp::kFloorDiv: return int_floor_div(x, y);
      default: return 0;
    }
  }
};

/// Comparisons in the compute type (f32 for floats, int64 for integers, bool for bool).
template <typename C>
struct Compare {
  ElementWiseOp op;
  __device__ bool operator()(C x, C y) const {
    switch (op) {
      case ElementWiseOp::kEqual: return x == y;
      case ElementWiseOp::kGreater: return x > y;
      default: return x < y;  // kLess
    }
  }
};

struct Logic {
  ElementWiseOp op;
  __device__ bool operator()(bool x, bool y) const {
    switch (op) {
      case ElementWiseOp::kAnd: return x && y;
      case ElementWiseOp::kOr: return x || y;
      default: return x != y;  // kXor
    }
  }
};

/// Float math: semantics/pointwise.h's formulas (1 / sqrt, not rsqrtf's 2 ulp; round half to
/// even; sign(NaN) = 0).
struct FloatUnary {
  UnaryOp op;
  __device__ float operator()(float x) const {
    return semantics::unary(op, x);  // not, isinf, isnan take other functors
  }
};

struct IntUnary {
  UnaryOp op;
  __device__ int64_t operator()(int64_t x) const {
    switch (op) {
      case UnaryOp::kAbs: return x < 0 ? wrap_neg(x) : x;
      case UnaryOp::kNeg: return wrap_neg(x);
      default: return static_cast<int64_t>((0 < x) - (x < 0));  // kSign
    }
  }
};

struct Classify {
  bool is_nan;
  __device__ bool operator()(float x) const { return is_nan ? x != x : isinf(x); }
};

struct Not {
  __device__ bool operator()(bool x) const { return !x; }
};


// ---------------------------------------------------------------- kernels

/// y[i] = f(x[i]) over contiguous same-shaped x and y; 16-byte vectors of x when `vec`, then a
/// scalar tail. TI/TO are storage types; f works on their compute types.
template <typename TI, typename TO, typename F>
__global__ void map1_kernel(const TI* __restrict__ x, TO* __restrict__ y, int64_t n, bool vec,
                            F f) {
  constexpr int kV = 16 / sizeof(TI);
  const int64_t nvec = vec ? n / kV : 0;
  for (int64_t v = global_thread(); v < nvec; v += grid_threads()) {
    const Vec<TI, kV> in = reinterpret_cast<const Vec<TI, kV>*>(x)[v];
    Vec<TO, kV> out;
#pragma unroll
    for (int k = 0; k < kV; ++k) out.v[k] = Num<TO>::store(f(Num<TI>::load(in.v[k])));
    reinterpret_cast<Vec<TO, kV>*>(y)[v] = out;
  }
  for (int64_t i = nvec * kV + global_thread(); i < n; i += grid_threads()) {
    y[i] = Num<TO>::store(f(Num<TI>::load(x[i])));
  }
}

/// y[i] = f(a[i], b[i]) over contiguous same-shaped operands, vectorized as map1_kernel.
template <typename T, typename TO, typename F>
__global__ void map2_kernel(const T* __restrict__ a, const T* __restrict__ b, TO* __restrict__ y,
                            int64_t n, bool vec, F f) {
  constexpr int kV = 16 / sizeof(T);
  const int64_t nvec = vec ? n / kV : 0;
  for (int64_t v = global_thread(); v < nvec; v += grid_threads()) {
    const Vec<T, kV> va = reinterpret_cast<const Vec<T, kV>*>(a)[v];
    const Vec<T, kV> vb = reinterpret_cast<const Vec<T, kV>*>(b)[v];
    Vec<TO, kV> out;
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      out.v[k] = Num<TO>::store(f(Num<T>::load(va.v[k]), Num<T>::load(vb.v[k])));
    }
    reinterpret_cast<Vec<TO, kV>*>(y)[v] = out;
  }
  for (int64_t i = nvec * kV + global_thread(); i < n; i += grid_threads()) {
    y[i] = Num<TO>::store(f(Num<T>::load(a[i]), Num<T>::load(b[i])));
  }
}

/// y[i] = f(a[off_a(i)], b[off_b(i)]) with numpy broadcasting; y contiguous, offsets from `m`.
template <typename T, typename TO, typename F>
__global__ void broadcast2_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                  TO* __restrict__ y, int64_t n, IndexMap<2> m, F f) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[2];
    m.offsets(i, off);
    y[i] = Num<TO>::store(f(Num<T>::load(a[off[0]]), Num<T>::load(b[off[1]])));
  }
}

/// Sets *flag when an integer divisor is 0 (or, for pow, an exponent is negative).
template <typename T>
__global__ void int_operand_check_kernel(const T* __restrict__ b, int64_t n, bool pow, int* flag) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t v = static_cast<int64_t>(b[i]);
    if (pow ? v < 0 : v == 0) *flag = 1;  // any writer wins; only "some element is bad" matters
  }
}

/// y[i] = cond[i] ? a[i] : b[i] with broadcasting over all three (S: storage of the element size).
template <typename S>
__global__ void select_kernel(const uint8_t* __restrict__ cond, const S* __restrict__ a,
                              const S* __restrict__ b, S* __restrict__ y, int64_t n,
                              IndexMap<3> m) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[3];
    m.offsets(i, off);
    y[i] = cond[off[0]] ? a[off[1]] : b[off[2]];
  }
}

/// One element of a cast (CPU reference's convert<From, To>).
template <typename TT, typename TF>
__device__ __forceinline__ TT convert(TF v) {
  const auto x = Num<TF>::load(v);
  using CF = typename Num<TF>::C;
  using CT = typename Num<TT>::C;
  if constexpr (std::is_same_v<TT, Bool8>) {
    return Num<TT>::store(x != 0);
  } else if constexpr (std::is_same_v<CT, float>) {
    return Num<TT>::store(static_cast<float>(x));
  } else if constexpr (std::is_same_v<CF, float>) {
    return Num<TT>::store(float_to_int64(x));
  } else {
    return Num<TT>::store(static_cast<int64_t>(x));
  }
}

template <typename TT, typename TF>
__device__ __forceinline__ void cast_loop(const TF* __restrict__ x, void* y_, int64_t n) {
  TT* y = static_cast<TT*>(y_);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) y[i] = convert<TT>(x[i]);
}

/// y = cast(x) elementwise; the source storage type is a template, the target a run-time switch.
template <typename TF>
__global__ void cast_kernel(const TF* __restrict__ x, void* __restrict__ y, int64_t n,
                            DataType to) {
  switch (to) {
    case DataType::kF32: return cast_loop<float>(x, y, n);
    case DataType::kF16: return cast_loop<__half>(x, y, n);
    case DataType::kBF16: return cast_loop<__nv_bfloat16>(x, y, n);
    case DataType::kI8: return cast_loop<int8_t>(x, y, n);
    case DataType::kU8: return cast_loop<uint8_t>(x, y, n);
    case DataType::kI32: return cast_loop<int32_t>(x, y, n);
    case DataType::kI64: return cast_loop<int64_t>(x, y, n);
    case DataType::kBool: return cast_loop<Bool8>(x, y, n);
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
}

// ---------------------------------------------------------------- host helpers

[[noreturn]] void unsupported(const char* what, DataType t) {
  throw Error(std::string(what) + ": unsupported dtype " + dtype_name(t) +
              " (the layer should have been rejected by shape inference)");
}

template <typename T>
struct TypeTag {
  using type = T;
};

/// Calls fn(TypeTag<storage>) for a float dtype.
template <typename Fn>
void dispatch_float(DataType t, const char* what, Fn&& fn) {
  switch (t) {
    case DataType::kF32: return fn(TypeTag<float>{});
    case DataType::kF16: return fn(TypeTag<__half>{});
    case DataType::kBF16: return fn(TypeTag<__nv_bfloat16>{});
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kF8E4M3:
    case DataType::kBool:
      break;
  }
  unsupported(what, t);
}

/// Calls fn(TypeTag<storage>) for an integer dtype.
template <typename Fn>
void dispatch_int(DataType t, const char* what, Fn&& fn) {
  switch (t) {
    case DataType::kI8: return fn(TypeTag<int8_t>{});
    case DataType::kU8: return fn(TypeTag<uint8_t>{});
    case DataType::kI32: return fn(TypeTag<int32_t>{});
    case DataType::kI64: return fn(TypeTag<int64_t>{});
    case DataType::kF32:
    case DataType::kF16:
    case DataType::kBF16:
    case DataType::kF8E4M3:
    case DataType::kBool:
      break;
  }
  unsupported(what, t);
}

/// Calls fn(TypeTag<storage>) for any dtype.
template <typename Fn>
void dispatch_all(DataType t, Fn&& fn) {
  switch (t) {
    case DataType::kF32: return fn(TypeTag<float>{});
    case DataType::kF16: return fn(TypeTag<__half>{});
    case DataType::kBF16: return fn(TypeTag<__nv_bfloat16>{});
    case DataType::kI8: return fn(TypeTag<int8_t>{});
    case DataType::kU8: return fn(TypeTag<uint8_t>{});
    case DataType::kI32: return fn(TypeTag<int32_t>{});
    case DataType::kI64: return fn(TypeTag<int64_t>{});
    case DataType::kBool: return fn(TypeTag<Bool8>{});
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  unsupported("cast", t);
}

void expect_same_dims(const DeviceTensor& in, const DeviceTensor& out, const char* what) {
  expect_device(in.dims == out.dims, what,
                "input dims " + dims_to_string(in.dims) + " differ from output dims " +
                    dims_to_string(out.dims));
}

void expect_out_dtype(const DeviceTensor& out, DataType t, const char* what) {
  expect_device(out.dtype == t, what,
                std::string("output dtype ") + dtype_name(out.dtype) + ", expected " +
                    dtype_name(t));
}

/// Launches out = f(in) over a same-shaped contiguous tensor.
template <typename TI, typename TO, typename F>
void launch_map1(const DeviceTensor& in, DeviceTensor& out, F f, const CudaArgs& a,
                 const char* what) {
  expect_same_dims(in, out, what);
  const int64_t n = out.numel();
  if (n == 0) return;
  constexpr int kV = 16 / sizeof(TI);
  const bool vec = aligned(in.data, 16) && aligned(out.data, sizeof(TO) * kV);
  map1_kernel<TI, TO><<<grid_for(vec ? n / kV + 1 : n), kThreads, 0, a.stream()>>>(
      static_cast<const TI*>(in.data), static_cast<TO*>(out.data), n, vec, f);
  check(cudaGetLastError(), what);
}

/// The index map of `ins` broadcast to `out_dims`; false when it needs more than kMaxRank dims.
template <int N>
bool broadcast_map(const std::array<const DeviceTensor*, N>& ins,
                   const std::vector<int64_t>& out_dims, IndexMap<N>& m, const char* what) {
  std::vector<std::vector<int64_t>> strides;
  for (int k = 0; k < N; ++k) {
    const std::vector<int64_t>& d = ins[k]->dims;
    bool ok = d.size() <= out_dims.size();
    for (size_t i = 0; ok && i < d.size(); ++i) {
      const int64_t o = out_dims[out_dims.size() - d.size() + i];
      ok = d[i] == o || d[i] == 1;
    }
    expect_device(ok, what,
                  "input " + std::to_string(k) + " dims " + dims_to_string(d) +
                      " do not broadcast to output dims " + dims_to_string(out_dims));
    strides.push_back(broadcast_strides_of(d, out_dims));
  }
  return make_index_map<N>(out_dims, strides, m);
}

/// Launches out = f(a, b) with broadcasting: the flat vector kernel for same-shaped operands,
/// the IndexMap kernel otherwise. Returns false (nothing launched) when the broadcast needs more
/// than kMaxRank dims.
template <typename T, typename TO, typename F>
bool launch_binary(const DeviceTensor& x, const DeviceTensor& y, DeviceTensor& out, F f,
                   const CudaArgs& a) {
  const int64_t n = out.numel();
  IndexMap<2> m;
  if (!broadcast_map<2>({&x, &y}, out.dims, m, "elementwise")) return false;
  if (n == 0) return true;
  const T* pa = static_cast<const T*>(x.data);
  const T* pb = static_cast<const T*>(y.data);
  TO* po = static_cast<TO*>(out.data);
  if (x.dims == out.dims && y.dims == out.dims) {
    constexpr int kV = 16 / sizeof(T);
    const bool vec = aligned(pa, 16) && aligned(pb, 16) && aligned(po, sizeof(TO) * kV);
    map2_kernel<T, TO><<<grid_for(vec ? n / kV + 1 : n), kThreads, 0, a.stream()>>>(pa, pb, po, n,
                                                                                     vec, f);
  } else {
    broadcast2_kernel<T, TO><<<grid_for(n), kThreads, 0, a.stream()>>>(pa, pb, po, n, m, f);
  }
  check(cudaGetLastError(), "elementwise kernel");
  return true;
}

/// Throws when an integer divisor holds 0 or an integer exponent a negative value (the CPU
/// reference's check_int_operand). Every element of b reaches a non-empty output.
template <typename T>
void check_int_operand(const DeviceTensor& b, const DeviceTensor& out, ElementWiseOp op,
                       const CudaArgs& a) {
  if (out.numel() == 0 || b.numel() == 0) return;
  if (capturing(a.stream())) return;  // unread in a capture (see read_error_flag): no replay cost
  int* flag = error_flag(a);
  const bool pow = op == ElementWiseOp::kPow;
  int_operand_check_kernel<T><<<grid_for(b.numel()), kThreads, 0, a.stream()>>>(
      static_cast<const T*>(b.data), b.numel(), pow, flag);
  check(cudaGetLastError(), "int_operand_check_kernel");
  if (read_error_flag(flag, a) == 0) return;
  if (pow) {
    throw Error(
        "pow: integer base raised to a negative exponent; cast the base to a float dtype first");
  }
  throw Error(std::string(op == ElementWiseOp::kDiv ? "div" : "floor_div") +
              ": integer division by zero; check the divisor or cast to a float dtype");
}

}  // namespace

// ---------------------------------------------------------------- layers

void run(const ActivationParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  expect_out_dtype(out, in.dtype, "activation");
  const ActivationFn f{p.type, semantics::param_to_float(p.alpha),
                       semantics::param_to_float(p.beta)};
  dispatch_float(in.dtype, "activation", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_static_activation(f, [&](const auto& fn) {
      launch_map1<T, T>(in, out, fn, a, "activation kernel");
    });
  });
}

void run(const ElementWiseParams& p, const CudaArgs& a) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& y = a.in(1);
  DeviceTensor& out = a.out();
  expect_device(x.dtype == y.dtype, "elementwise", "inputs have different dtypes");
  const ElementWiseOp op = p.op;
  const bool compare =
      op == ElementWiseOp::kEqual || op == ElementWiseOp::kGreater || op == ElementWiseOp::kLess;
  const bool logic = op == ElementWiseOp::kAnd || op == ElementWiseOp::kOr || op == ElementWiseOp::kXor;
  expect_out_dtype(out, compare ? DataType::kBool : x.dtype, "elementwise");
  bool launched = false;
  if (compare) {
    dispatch_all(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      launched = launch_binary<T, Bool8>(x, y, out, Compare<typename Num<T>::C>{op}, a);
    });
  } else if (logic) {
    if (x.dtype != DataType::kBool) unsupported("elementwise logic", x.dtype);
    launched = launch_binary<Bool8, Bool8>(x, y, out, Logic{op}, a);
  } else if (dtype_is_float(x.dtype)) {
    dispatch_float(x.dtype, "elementwise", [&](auto tag) {
      using T = typename decltype(tag)::type;
      launched = launch_binary<T, T>(x, y, out, FloatBinary{op}, a);
    });
  } else {
    dispatch_int(x.dtype, "elementwise", [&](auto tag) {
      using T = typename decltype(tag)::type;
      if (op == ElementWiseOp::kDiv || op == ElementWiseOp::kFloorDiv || op == ElementWiseOp::kPow) {
        check_int_operand<T>(y, out, op, a);
      }
      launched = launch_binary<T, T>(x, y, out, IntBinary{op}, a);
    });
  }
  // Broadcasts that stay above kMaxRank dims after coalescing are rare enough for the host.
  if (!launched) host_fallback(a);
}

void run(const UnaryParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  const UnaryOp op = p.op;
  const char* what = "unary kernel";
  if (op == UnaryOp::kIsInf || op == UnaryOp::kIsNan) {
    expect_out_dtype(out, DataType::kBool, "unary");
    dispatch_float(in.dtype, "unary", [&](auto tag) {
      using T = typename decltype(tag)::type;
      launch_map1<T, Bool8>(in, out, Classify{op == UnaryOp::kIsNan}, a, what);
    });
    return;
  }
  expect_out_dtype(out, in.dtype, "unary");
  if (op == UnaryOp::kNot) {
    if (in.dtype != DataType::kBool) unsupported("not", in.dtype);
    launch_map1<Bool8, Bool8>(in, out, Not{}, a, what);
    return;
  }
  const bool int_ok = op == UnaryOp::kAbs || op == UnaryOp::kNeg || op == UnaryOp::kSign;
  if (int_ok && dtype_is_integer(in.dtype)) {
    dispatch_int(in.dtype, "unary", [&](auto tag) {
      using T = typename decltype(tag)::type;
      launch_map1<T, T>(in, out, IntUnary{op}, a, what);
    });
    return;
  }
  dispatch_float(in.dtype, "unary", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_map1<T, T>(in, out, FloatUnary{op}, a, what);
  });
}

void run(const SelectParams&, const CudaArgs& a) {
  const DeviceTensor& cond = a.in(0);
  const DeviceTensor& x = a.in(1);
  const DeviceTensor& y = a.in(2);
  DeviceTensor& out = a.out();
  if (cond.dtype != DataType::kBool) unsupported("select condition", cond.dtype);
  expect_device(x.dtype == y.dtype, "select", "a and b have different dtypes");
  expect_out_dtype(out, x.dtype, "select");
  IndexMap<3> m;
  if (!broadcast_map<3>({&cond, &x, &y}, out.dims, m, "select")) return host_fallback(a);
  const int64_t n = out.numel();
  if (n == 0) return;
  // Select only moves elements: one instantiation per element size serves every dtype.
  auto go = [&](auto zero) {
    using S = decltype(zero);
    select_kernel<S><<<grid_for(n), kThreads, 0, a.stream()>>>(
        static_cast<const uint8_t*>(cond.data), static_cast<const S*>(x.data),
        static_cast<const S*>(y.data), static_cast<S*>(out.data), n, m);
    check(cudaGetLastError(), "select_kernel");
  };
  switch (dtype_size(x.dtype)) {
    case 1: return go(uint8_t{});
    case 2: return go(uint16_t{});
    case 4: return go(uint32_t{});
    case 8: return go(uint64_t{});
    default: unsupported("select", x.dtype);
  }
}

void run(const CastParams& p, const CudaArgs& a) {
  const DeviceTensor& in = a.in(0);
  DeviceTensor& out = a.out();
  expect_out_dtype(out, p.to, "cast");
  expect_same_dims(in, out, "cast");
  const int64_t n = out.numel();
  if (n == 0) return;
  if (in.dtype == out.dtype) {
    if (in.data != out.data) {
      check(cudaMemcpyAsync(out.data, in.data, out.nbytes(), cudaMemcpyDeviceToDevice, a.stream()),
            "cudaMemcpyAsync (cast to the same dtype)");
    }
    return;
  }
  dispatch_all(in.dtype, [&](auto tag) {
    using TF = typename decltype(tag)::type;
    cast_kernel<TF><<<grid_for(n), kThreads, 0, a.stream()>>>(static_cast<const TF*>(in.data),
                                                               out.data, n, p.to);
    check(cudaGetLastError(), "cast_kernel");
  });
}

namespace {
__global__ void probe_kernel() {}
}  // namespace

cudaError_t probe_kernel_image() {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, probe_kernel);
}

}  // namespace ember::engine::cuda
