// The CPU kernel of FusedPointwise: interprets the layer's program over blocks of output
// elements. Each step runs over the whole block (one switch per step and block, not per
// element), reading its operands' values and rounding its result to its dtype, exactly as the
// separate layer would store it (f16/bf16 steps round through their storage type). The formulas
// are the separate layers' own (backends/semantics/), so the fused layer gives the unfused
// chain's bits.
#include <algorithm>
#include <string>
#include <vector>

#include "backends/cpu/kernels.h"
#include "backends/semantics/activation.h"
#include "backends/semantics/fused_pointwise.h"
#include "backends/semantics/pointwise.h"

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
  // Per input: its strides over the output's dims (0 where it broadcasts).
  const size_t rank = out_dims.size();
  std::vector<std::vector<int64_t>> strides(n_in);
  for (size_t k = 0; k < n_in; ++k) {
    const std::vector<int64_t>& d = args.in(k).dims;
    bool ok = d.size() <= rank;
    for (size_t i = 0; ok && i < d.size(); ++i) {
      ok = d[i] == out_dims[rank - d.size() + i] || d[i] == 1;
    }
    if (!ok) {
      fail("input " + std::to_string(k) + " dims " + dims_to_string(d) +
           " do not broadcast to " + dims_to_string(out_dims));
    }
    strides[k] = broadcast_strides(d, out_dims);
  }
  const int64_t total_elements = args.out(0).numel();
  std::vector<Access> access(n_in, Access::kStrided);
  for (size_t k = 0; k < n_in; ++k) {
    const int64_t m = args.in(k).numel();
    access[k] = m == total_elements ? Access::kWhole : m == 1 ? Access::kOne : Access::kStrided;
  }
  std::vector<float> alpha(steps.size()), beta(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    alpha[i] = semantics::param_to_float(steps[i].alpha);
    beta[i] = semantics::param_to_float(steps[i].beta);
  }
  const int64_t total = total_elements;
  if (total == 0) return;
  const int64_t cost = 1 + static_cast<int64_t>(steps.size());
  const size_t n_values = n_in + steps.size();
  parallel_for((total + kBlock - 1) / kBlock, cost * kBlock, [&](int64_t block_begin,
                                                                  int64_t block_end) {
    std::vector<float> values(n_values * kBlock);
    std::vector<int64_t> idx(rank), offset(n_in);
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
      const int64_t begin = blk * kBlock;
      const int64_t n = std::min(kBlock, total - begin);
      // Whole inputs (the output's size) and single elements load directly; the rest walk the
      // block's multi-index with their broadcast strides.
      bool walk = false;
      for (size_t k = 0; k < n_in; ++k) {
        float* x = values.data() + k * kBlock;
        if (access[k] == Access::kWhole) {
          load_run(value_dtype[k], args.in(k).data, begin, n, x);
        } else if (access[k] == Access::kOne) {
          std::fill(x, x + n, load_float(value_dtype[k], args.in(k).data, 0));
        } else {
          walk = true;
        }
      }
      if (walk) {
        int64_t rem = begin;
        std::fill(offset.begin(), offset.end(), 0);
        for (size_t d = rank; d-- > 0;) {
          idx[d] = rem % out_dims[d];
          rem /= out_dims[d];
          for (size_t k = 0; k < n_in; ++k) offset[k] += idx[d] * strides[k][d];
        }
        for (int64_t j = 0; j < n; ++j) {
          for (size_t k = 0; k < n_in; ++k) {
            if (access[k] == Access::kStrided) {
              values[k * kBlock + j] = load_float(value_dtype[k], args.in(k).data, offset[k]);
            }
          }
          for (size_t d = rank; d-- > 0;) {
            for (size_t k = 0; k < n_in; ++k) offset[k] += strides[k][d];
            if (++idx[d] < out_dims[d]) break;
            for (size_t k = 0; k < n_in; ++k) offset[k] -= idx[d] * strides[k][d];
            idx[d] = 0;
          }
        }
      }
      for (size_t i = 0; i < steps.size(); ++i) {
        const FusedStep& s = steps[i];
        float* y = values.data() + (n_in + i) * kBlock;
        const float* a = s.operands[0] >= 0 ? values.data() + s.operands[0] * kBlock : nullptr;
        const float* b = s.operands[1] >= 0 ? values.data() + s.operands[1] * kBlock : nullptr;
        switch (s.family) {
          case FusedOpFamily::kScalar: {
            const float v = round_to(s.dtype, static_cast<float>(s.alpha));
            std::fill(y, y + n, v);
            break;
          }
          case FusedOpFamily::kActivation: {
            const auto type = static_cast<ActivationType>(s.code);
            for (int64_t j = 0; j < n; ++j) {
              y[j] = semantics::activation(type, a[j], alpha[i], beta[i]);
            }
            break;
          }
          case FusedOpFamily::kElementWise: {
            const auto op = static_cast<ElementWiseOp>(s.code);
            for (int64_t j = 0; j < n; ++j) y[j] = semantics::elementwise(op, a[j], b[j]);
            break;
          }
          case FusedOpFamily::kUnary: {
            const auto op = static_cast<UnaryOp>(s.code);
            for (int64_t j = 0; j < n; ++j) y[j] = semantics::unary(op, a[j]);
            break;
          }
          case FusedOpFamily::kCast:
            std::copy(a, a + n, y);
            break;
        }
        if (s.dtype != DataType::kF32) {
          for (int64_t j = 0; j < n; ++j) y[j] = round_to(s.dtype, y[j]);
        }
      }
      for (size_t o = 0; o < p.outputs.size(); ++o) {
        const float* v = values.data() + p.outputs[o] * kBlock;
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
