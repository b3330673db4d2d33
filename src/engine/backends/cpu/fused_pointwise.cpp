// The CPU kernel of FusedPointwise: interprets the layer's program over blocks of output
// elements. Each step runs over the whole block (one switch per step and block, not per
// element), reading its operands' values and rounding its result to its dtype, exactly as the
// separate layer would store it (f16/bf16 steps round through their storage type). The formulas
// are the separate layers' own (backends/semantics/), so the fused layer gives the unfused
// chain's bits. A program with row reductions (kReduce) runs over blocks of whole rows (the
// output's last dim), each reduction filling its row with semantics::reduce_row's result.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backends/cpu/kernels.h"
#include "backends/semantics/activation.h"
#include "backends/semantics/fused_pointwise.h"
#include "backends/semantics/pointwise.h"
#include "backends/semantics/reduce.h"

namespace ember::engine::cpu {

namespace {

/// Elements per block: the values of every step for one block stay in the L1/L2 cache.
constexpr int64_t kBlock = 512;

/// v rounded to dtype t's precision (what storing and reloading it gives).
inline float round_to(DataType t, float v) {
  if (t == DataType::kF16) return f16_to_f32(f32_to_f16(v));
  if (t == DataType::kBF16) return bf16_to_f32(f32_to_bf16(v));
  return v;
}

/// How an input is read: all of it in the output's order (same dims), one element for every
/// output element, or through its broadcast strides.
enum class Access { kWhole, kOne, kStrided };

/// x[j] = element begin + j of a float buffer, for j < n (one dtype switch per run).
void load_run(DataType t, const void* p, int64_t begin, int64_t n, float* x) {
  switch (t) {
    case DataType::kF32: {
      const float* f = static_cast<const float*>(p) + begin;
      std::copy(f, f + n, x);
      return;
    }
    case DataType::kF16: {
      const uint16_t* h = static_cast<const uint16_t*>(p) + begin;
      for (int64_t j = 0; j < n; ++j) x[j] = f16_to_f32(h[j]);
      return;
    }
    case DataType::kBF16: {
      const uint16_t* h = static_cast<const uint16_t*>(p) + begin;
      for (int64_t j = 0; j < n; ++j) x[j] = bf16_to_f32(h[j]);
      return;
    }
    default:
      for (int64_t j = 0; j < n; ++j) x[j] = load_float(t, p, begin + j);
  }
}

// One loop per op with the op a constant, so the switch runs once per step and block and the
// simple loops vectorize (the formulas are still the semantics/ ones the separate layers call).

void activation_run(ActivationType type, const float* a, float* y, int64_t n, float alpha,
                    float beta) {
  switch (type) {
#define EMBER_CASE(T)                                                                       \
  case ActivationType::T:                                                                   \
    for (int64_t j = 0; j < n; ++j) y[j] = semantics::activation(ActivationType::T, a[j], alpha, beta); \
    return;
    EMBER_CASE(kRelu) EMBER_CASE(kSigmoid) EMBER_CASE(kTanh) EMBER_CASE(kLeakyRelu)
    EMBER_CASE(kElu) EMBER_CASE(kSelu) EMBER_CASE(kSoftsign) EMBER_CASE(kSoftplus)
    EMBER_CASE(kClip) EMBER_CASE(kHardSigmoid) EMBER_CASE(kGeluErf) EMBER_CASE(kGeluTanh)
    EMBER_CASE(kSilu)
#undef EMBER_CASE
  }
}

void elementwise_run(ElementWiseOp op, const float* a, const float* b, float* y, int64_t n) {
  switch (op) {
#define EMBER_CASE(T)                                                                    \
  case ElementWiseOp::T:                                                                 \
    for (int64_t j = 0; j < n; ++j) y[j] = semantics::elementwise(ElementWiseOp::T, a[j], b[j]); \
    return;
    EMBER_CASE(kSum) EMBER_CASE(kProd) EMBER_CASE(kMax) EMBER_CASE(kMin) EMBER_CASE(kSub)
    EMBER_CASE(kDiv) EMBER_CASE(kPow) EMBER_CASE(kFloorDiv)
#undef EMBER_CASE
    default:
      break;  // not float arithmetic: rejected by shape inference
  }
}

void unary_run(UnaryOp op, const float* a, float* y, int64_t n) {
  switch (op) {
#define EMBER_CASE(T)                                                          \
  case UnaryOp::T:                                                             \
    for (int64_t j = 0; j < n; ++j) y[j] = semantics::unary(UnaryOp::T, a[j]); \
    return;
    EMBER_CASE(kExp) EMBER_CASE(kLog) EMBER_CASE(kSqrt) EMBER_CASE(kRsqrt) EMBER_CASE(kReciprocal)
    EMBER_CASE(kAbs) EMBER_CASE(kNeg) EMBER_CASE(kSin) EMBER_CASE(kCos) EMBER_CASE(kTan)
    EMBER_CASE(kAsin) EMBER_CASE(kAcos) EMBER_CASE(kAtan) EMBER_CASE(kSinh) EMBER_CASE(kCosh)
    EMBER_CASE(kAsinh) EMBER_CASE(kAcosh) EMBER_CASE(kAtanh) EMBER_CASE(kCeil) EMBER_CASE(kFloor)
    EMBER_CASE(kRound) EMBER_CASE(kErf) EMBER_CASE(kSign)
#undef EMBER_CASE
    case UnaryOp::kIsInf:  // bool values are 0 and 1
      for (int64_t j = 0; j < n; ++j) y[j] = std::isinf(a[j]) ? 1.0f : 0.0f;
      return;
    case UnaryOp::kIsNan:
      for (int64_t j = 0; j < n; ++j) y[j] = std::isnan(a[j]) ? 1.0f : 0.0f;
      return;
    default:
      break;  // not float math: rejected by shape inference
  }
}

void fail(const std::string& what) {
  throw Error("fused pointwise: " + what + " (inconsistent with shape inference; the plan may be corrupt)");
}

}  // namespace

void run(const FusedPointwiseParams& p, const KernelArgs& args) {
  using semantics::FusedStep;
  const std::vector<FusedStep> steps = semantics::fused_steps(p);
  const size_t n_in = args.inputs.size();
  if (args.outputs.size() != p.outputs.size()) fail("output count differs from the program's");
  const std::vector<int64_t>& out_dims = args.out(0).dims;
  std::vector<DataType> value_dtype;
  for (size_t k = 0; k < n_in; ++k) value_dtype.push_back(args.in(k).dtype);
  for (const FusedStep& s : steps) value_dtype.push_back(s.dtype);
  for (size_t o = 0; o < p.outputs.size(); ++o) {
    if (args.out(o).dims != out_dims) fail("outputs have different dims");
    if (args.out(o).dtype != value_dtype[static_cast<size_t>(p.outputs[o])]) {
      fail("output " + std::to_string(o) + " dtype differs from its step's");
    }
  }
  // Per input: its strides over the output's dims (0 where it broadcasts), through its view.
  const size_t rank = out_dims.size();
  std::vector<semantics::InputView> views;
  if (!semantics::fused_input_views(p, n_in, views)) fail("the input views do not parse");
  bool gathers = false;
  std::vector<std::vector<int64_t>> strides(n_in);
  std::vector<int64_t> base(n_in, 0);  // where a sliced input's part starts
  for (size_t k = 0; k < n_in; ++k) {
    gathers = gathers || !views[k].gather.empty();
    if (!semantics::view_strides(args.in(k).dims, views[k], out_dims, strides[k], base[k])) {
      fail("input " + std::to_string(k) + " dims " + dims_to_string(args.in(k).dims) +
           " do not broadcast to " + dims_to_string(out_dims) + " through its view");
    }
  }
  // Dims of size 1 dropped and neighbours merged where every input steps through both as one
  // (as the unfused kernels' BroadcastLoop), so the walk below moves in long runs. A gathered
  // last dim stays a dim of its own (its indices run along it), even of size 1.
  std::vector<int64_t> mdims;
  std::vector<std::vector<int64_t>> mstrides;
  semantics::merge_walk_dims(out_dims, strides, gathers && rank > 0, mdims, mstrides);
  if (mdims.empty()) {
    mdims.push_back(1);
    for (size_t k = 0; k < n_in; ++k) mstrides[k].push_back(0);
  }
  const size_t mrank = mdims.size();
  const int64_t total_elements = args.out(0).numel();
  std::vector<Access> access(n_in, Access::kStrided);
  for (size_t k = 0; k < n_in; ++k) {
    const int64_t m = args.in(k).numel();
    access[k] = views[k].any()        ? Access::kStrided  // through a view: walk it
                : m == total_elements ? Access::kWhole
                : m == 1              ? Access::kOne
                                      : Access::kStrided;
  }
  // A half-precision step rounds where a later step reads it; a result only stored rounds in
  // the store (the same rounding, once).
  std::vector<char> rounds(steps.size(), 0);
  for (size_t i = 0; i < steps.size(); ++i) {
    for (const int64_t o : steps[i].operands) {
      if (o >= static_cast<int64_t>(n_in)) {
        const size_t k = static_cast<size_t>(o) - n_in;
        rounds[k] = steps[k].dtype != DataType::kF32;
      }
    }
  }
  std::vector<float> alpha(steps.size()), beta(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    alpha[i] = semantics::param_to_float(steps[i].alpha);
    beta[i] = semantics::param_to_float(steps[i].beta);
  }
  const int64_t total = total_elements;
  if (total == 0) return;
  // With row reductions a block is whole rows (at least one, however long).
  const bool by_rows = semantics::fused_has_reduction(p);
  const int64_t row = by_rows && rank > 0 ? out_dims.back() : 1;
  const int64_t block = by_rows ? std::max<int64_t>(1, kBlock / row) * row : kBlock;
  const int64_t cost = 1 + static_cast<int64_t>(steps.size());
  const size_t n_values = n_in + steps.size();
  parallel_for((total + block - 1) / block, cost * block, [&](int64_t block_begin,
                                                               int64_t block_end) {
    std::vector<float> values(n_values * block);
    std::vector<int64_t> idx(mrank), offset(n_in);
    std::vector<const float*> value(n_values);  // where each value of the block is
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
      const int64_t begin = blk * block;
      const int64_t n = std::min(block, total - begin);
      // Whole inputs (the output's size) and single elements load directly; the rest walk the
      // block's multi-index with their broadcast strides.
      bool walk = false;
      for (size_t v = 0; v < n_values; ++v) value[v] = values.data() + v * block;
      for (size_t k = 0; k < n_in; ++k) {
        float* x = values.data() + k * block;
        if (access[k] == Access::kWhole && value_dtype[k] == DataType::kF32) {
          value[k] = args.in(k).as<const float>() + begin;  // read in place, no copy
        } else if (access[k] == Access::kWhole) {
          load_run(value_dtype[k], args.in(k).data, begin, n, x);
        } else if (access[k] == Access::kOne) {
          std::fill(x, x + n, load_float(value_dtype[k], args.in(k).data, 0));
        } else {
          walk = true;
        }
      }
      if (walk) {
        // Runs along the innermost merged dim: a contiguous input copies, a broadcast one
        // fills, any other steps through its stride.
        const size_t last = mrank - 1;
        int64_t rem = begin;
        std::copy(base.begin(), base.end(), offset.begin());
        for (size_t d = mrank; d-- > 0;) {
          idx[d] = rem % mdims[d];
          rem /= mdims[d];
          for (size_t k = 0; k < n_in; ++k) offset[k] += idx[d] * mstrides[k][d];
        }
        for (int64_t j = 0; j < n;) {
          const int64_t len = std::min(mdims[last] - idx[last], n - j);
          for (size_t k = 0; k < n_in; ++k) {
            if (access[k] != Access::kStrided) continue;
            float* x = values.data() + k * block + j;
            const int64_t st = mstrides[k][last];
            if (!views[k].gather.empty()) {
              // The last dim through its indices (it is the innermost merged dim, unmerged).
              const int64_t row_base = offset[k] - idx[last] * st;
              const int64_t* g = views[k].gather.data() + idx[last];
              for (int64_t t = 0; t < len; ++t) {
                x[t] = load_float(value_dtype[k], args.in(k).data, row_base + g[t] * st);
              }
            } else if (st == 1) {
              load_run(value_dtype[k], args.in(k).data, offset[k], len, x);
            } else if (st == 0) {
              std::fill(x, x + len, load_float(value_dtype[k], args.in(k).data, offset[k]));
            } else {
              for (int64_t t = 0; t < len; ++t) {
                x[t] = load_float(value_dtype[k], args.in(k).data, offset[k] + t * st);
              }
            }
          }
          j += len;
          if (j >= n) break;
          // The run ended with its row: back to the row's start, then carry outwards.
          for (size_t k = 0; k < n_in; ++k) offset[k] -= idx[last] * mstrides[k][last];
          idx[last] = 0;
          for (size_t d = last; d-- > 0;) {
            for (size_t k = 0; k < n_in; ++k) offset[k] += mstrides[k][d];
            if (++idx[d] < mdims[d]) break;
            for (size_t k = 0; k < n_in; ++k) offset[k] -= idx[d] * mstrides[k][d];
            idx[d] = 0;
          }
        }
      }
      for (size_t i = 0; i < steps.size(); ++i) {
        const FusedStep& s = steps[i];
        float* y = values.data() + (n_in + i) * block;
        const float* a = s.operands[0] >= 0 ? value[s.operands[0]] : nullptr;
        const float* b = s.operands[1] >= 0 ? value[s.operands[1]] : nullptr;
        switch (s.family) {
          case FusedOpFamily::kScalar: {
            const float v = round_to(s.dtype, static_cast<float>(s.alpha));
            std::fill(y, y + n, v);
            break;
          }
          case FusedOpFamily::kActivation:
            activation_run(static_cast<ActivationType>(s.code), a, y, n, alpha[i], beta[i]);
            break;
          case FusedOpFamily::kElementWise:
            elementwise_run(static_cast<ElementWiseOp>(s.code), a, b, y, n);
            break;
          case FusedOpFamily::kUnary:
            unary_run(static_cast<UnaryOp>(s.code), a, y, n);
            break;
          case FusedOpFamily::kCast:
            if (s.dtype == DataType::kBool) {
              for (int64_t j = 0; j < n; ++j) y[j] = a[j] != 0.0f ? 1.0f : 0.0f;  // NaN: true
            } else {
              std::copy(a, a + n, y);  // float values, or integers and bools as floats
            }
            break;
          case FusedOpFamily::kSelect: {
            const float* c = value[s.operands[2]];
            for (int64_t j = 0; j < n; ++j) y[j] = a[j] != 0.0f ? b[j] : c[j];
            break;
          }
          case FusedOpFamily::kReduce:
            for (int64_t r = 0; r < n; r += row) {
              std::fill(y + r, y + r + row,
                        semantics::reduce_row(static_cast<ReduceOp>(s.code), a + r, row));
            }
            break;
        }
        if (rounds[i]) {
          for (int64_t j = 0; j < n; ++j) y[j] = round_to(s.dtype, y[j]);
        }
      }
      for (size_t o = 0; o < p.outputs.size(); ++o) {
        const float* v = value[p.outputs[o]];
        HostTensor& out = args.out(o);
        if (out.dtype == DataType::kF32) {
          std::copy(v, v + n, out.as<float>() + begin);
        } else if (out.dtype == DataType::kF16) {
          uint16_t* h = out.as<uint16_t>() + begin;
          for (int64_t j = 0; j < n; ++j) h[j] = f32_to_f16(v[j]);
        } else {
          for (int64_t j = 0; j < n; ++j) store_float(out.dtype, out.data, begin + j, v[j]);
        }
      }
    }
  });
}

}  // namespace ember::engine::cpu
