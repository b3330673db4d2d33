// Shape and type inference of FusedPointwise (made by the builder's fuse_pointwise pass). A
// plan read from disk is rebuilt through this function, so every step of the program is checked
// here with the rules of the layer it stands for: float dtypes only, each step's dtype the one
// its layer would give, operands that name earlier values, known enum codes. A row reduction
// (kReduce) reduces over the output's last dim. An empty row (a last dim of 0) gives an empty
// output: the Reduce layer's own check that a max or min has something to reduce is not made.
#include <cmath>
#include <set>
#include <string>

#include "backends/semantics/fused_pointwise.h"
#include "backends/semantics/pointwise.h"
#include "network/infer.h"

namespace ember::engine {

void infer(const FusedPointwiseParams& p, InferContext& ctx) {
  using semantics::FusedStep;
  const size_t n_in = ctx.num_inputs();
  InferContext::require(n_in >= 1 && n_in <= FusedPointwiseParams::kMaxInputs,
                        "expects 1 to " + std::to_string(FusedPointwiseParams::kMaxInputs) +
                            " inputs, got " + std::to_string(n_in));
  std::vector<DataType> value_dtype;
  for (size_t i = 0; i < n_in; ++i) {
    const DataType t = ctx.dtype(i);
    InferContext::require(dtype_is_float(t) || semantics::fused_bool_or_integer(t),
                          "input " + std::to_string(i) + " must be float, bool or integer, got " +
                              dtype_name(t));
    value_dtype.push_back(t);
  }
  InferContext::require(p.program.size() % FusedPointwiseParams::kStride == 0,
                        "program has " + std::to_string(p.program.size()) +
                            " entries, not a multiple of " +
                            std::to_string(FusedPointwiseParams::kStride));
  const int64_t n_steps = p.num_steps();
  InferContext::require(n_steps >= 1 && n_steps <= FusedPointwiseParams::kMaxSteps,
                        "program has " + std::to_string(n_steps) + " steps, expected 1 to " +
                            std::to_string(FusedPointwiseParams::kMaxSteps));
  InferContext::require(p.attrs.size() == static_cast<size_t>(2 * n_steps),
                        "attrs has " + std::to_string(p.attrs.size()) + " entries, expected " +
                            std::to_string(2 * n_steps) + " (two per step)");
  // Codes first (fused_steps casts them to enums, so check the raw numbers).
  for (int64_t i = 0; i < n_steps; ++i) {
    const int64_t* s = p.program.data() + FusedPointwiseParams::kStride * i;
    const std::string where = "step " + std::to_string(i);
    InferContext::require(s[0] >= 0 && s[0] < kNumFusedOpFamilies,
                          where + ": unknown family " + std::to_string(s[0]) +
                              "; the plan is corrupt or from a newer Ember");
    InferContext::require(s[2] >= 0 && s[2] < kNumDataTypes,
                          where + ": unknown dtype " + std::to_string(s[2]));
    const auto family = static_cast<FusedOpFamily>(s[0]);
    int64_t limit = 1;
    if (family == FusedOpFamily::kActivation) limit = kNumActivationTypes;
    if (family == FusedOpFamily::kElementWise) limit = kNumElementWiseOps;
    if (family == FusedOpFamily::kUnary) limit = kNumUnaryOps;
    if (family == FusedOpFamily::kReduce) limit = kNumReduceOps;
    InferContext::require(s[1] >= 0 && s[1] < limit,
                          where + ": unknown op code " + std::to_string(s[1]));
  }
  const std::vector<FusedStep> steps = semantics::fused_steps(p);
  for (size_t i = 0; i < steps.size(); ++i) {
    const FusedStep& st = steps[i];
    const std::string where = "step " + std::to_string(i);
    const int used = semantics::fused_num_operands(st.family);
    for (int k = 0; k < 3; ++k) {
      const int64_t o = st.operands[k];
      if (k >= used) {
        InferContext::require(o == -1, where + ": operand " + std::to_string(k) +
                                           " must be -1 (unused), got " + std::to_string(o));
        continue;
      }
      InferContext::require(o >= 0 && o < static_cast<int64_t>(n_in + i),
                            where + ": operand " + std::to_string(k) + " is value " +
                                std::to_string(o) + ", not one of the " +
                                std::to_string(n_in + i) + " values defined before it");
    }
    // Float values everywhere but Casts (which read any value and may make a bool), the
    // classifications isinf/isnan (a bool of a float) and the condition of a Select (a bool).
    const bool classify = st.family == FusedOpFamily::kUnary &&
                          semantics::unary_is_classification(static_cast<UnaryOp>(st.code));
    const bool to_bool =
        (st.family == FusedOpFamily::kCast || classify) && st.dtype == DataType::kBool;
    InferContext::require(dtype_is_float(st.dtype) || to_bool,
                          where + ": dtype must be f32, f16 or bf16 (bool for a cast or for "
                                  "isinf/isnan), got " + dtype_name(st.dtype));
    for (int k = 0; k < used; ++k) {
      const DataType d = value_dtype[static_cast<size_t>(st.operands[k])];
      const bool any = st.family == FusedOpFamily::kCast;
      const bool cond = st.family == FusedOpFamily::kSelect && k == 0;
      if (cond) {
        InferContext::require(d == DataType::kBool, where + ": a select's condition must be bool, got " +
                                                        dtype_name(d));
      } else if (!any) {
        InferContext::require(dtype_is_float(d), where + ": operand " + std::to_string(k) +
                                                     " is " + dtype_name(d) +
                                                     "; this step reads float values only");
      }
    }
    const DataType a = used > 0 ? value_dtype[static_cast<size_t>(
                                      st.operands[st.family == FusedOpFamily::kSelect ? 1 : 0])]
                                : st.dtype;
    switch (st.family) {
      case FusedOpFamily::kScalar:
        break;
      case FusedOpFamily::kActivation:
        InferContext::require(!std::isnan(st.alpha) && !std::isnan(st.beta),
                              where + ": activation alpha and beta must not be NaN");
        if (static_cast<ActivationType>(st.code) == ActivationType::kSoftplus) {
          InferContext::require(std::isfinite(st.alpha) && st.alpha != 0.0,
                                where + ": softplus alpha must be finite and nonzero");
        }
        break;
      case FusedOpFamily::kElementWise: {
        InferContext::require(
            semantics::elementwise_is_float_arithmetic(static_cast<ElementWiseOp>(st.code)),
            where + ": elementwise op " + std::to_string(st.code) +
                " is not float arithmetic (sum, prod, max, min, sub, div, pow, floor_div)");
        const DataType b = value_dtype[static_cast<size_t>(st.operands[1])];
        InferContext::require(a == b, where + ": operands have dtypes " +
                                          std::string(dtype_name(a)) + " and " + dtype_name(b));
        break;
      }
      case FusedOpFamily::kUnary:
        InferContext::require(semantics::unary_is_float_math(static_cast<UnaryOp>(st.code)) ||
                                  classify,
                              where + ": unary op " + std::to_string(st.code) +
                                  " is neither float math nor isinf/isnan");
        InferContext::require(!classify || st.dtype == DataType::kBool,
                              where + ": isinf/isnan make a bool, not " +
                                  std::string(dtype_name(st.dtype)));
        break;
      case FusedOpFamily::kCast:
      case FusedOpFamily::kReduce:  // any float op of ReduceOp (the code check above)
        break;
      case FusedOpFamily::kSelect: {
        const DataType b = value_dtype[static_cast<size_t>(st.operands[2])];
        InferContext::require(a == b, where + ": the select's values have dtypes " +
                                          std::string(dtype_name(a)) + " and " + dtype_name(b));
        break;
      }
    }
    if (st.family != FusedOpFamily::kScalar && st.family != FusedOpFamily::kCast && !classify) {
      InferContext::require(st.dtype == a, where + ": dtype " + std::string(dtype_name(st.dtype)) +
                                               " differs from its operand's " + dtype_name(a));
    }
    value_dtype.push_back(st.dtype);
  }
  InferContext::require(!p.outputs.empty() &&
                            p.outputs.size() <= FusedPointwiseParams::kMaxInputs,
                        "the program has " + std::to_string(p.outputs.size()) +
                            " outputs, expected 1 to " +
                            std::to_string(FusedPointwiseParams::kMaxInputs));
  std::set<int64_t> seen;
  for (int64_t o : p.outputs) {
    InferContext::require(o >= static_cast<int64_t>(n_in) &&
                              o < static_cast<int64_t>(value_dtype.size()) && seen.insert(o).second,
                          "output value " + std::to_string(o) +
                              " is not a distinct step result (values " + std::to_string(n_in) +
                              " to " + std::to_string(value_dtype.size() - 1) + ")");
    InferContext::require(dtype_is_float(value_dtype[static_cast<size_t>(o)]),
                          "output value " + std::to_string(o) + " is " +
                              dtype_name(value_dtype[static_cast<size_t>(o)]) +
                              "; the outputs are float");
  }
  InferContext::require(p.kernel_image.empty() || !p.kernel_target.empty(),
                        "a kernel image needs its target architecture");
  InferContext::require(p.kernel_target.empty() || !p.kernel_source.empty(),
                        "a kernel target needs the kernel's source (to recompile elsewhere)");
  // Each input as the program reads it: through its slice and view (a transpose, a last-dim
  // gather).
  std::vector<semantics::InputView> views;
  InferContext::require(semantics::fused_views(p, n_in, views),
                        "views has " + std::to_string(p.views.size()) +
                            " entries that do not encode one {n, perm, m, indices} per input");
  InferContext::require(semantics::fused_slices(p, views),
                        "slices has " + std::to_string(p.slices.size()) +
                            " entries that do not encode one {n, n (dim, start, size)} per input");
  auto view_shape = [&](size_t i) {
    Shape s = ctx.shape(i);
    const semantics::InputView& v = views[i];
    const std::string where = "input " + std::to_string(i) + "'s view";
    std::vector<bool> sliced(s.size(), false);
    for (size_t t = 0; t + 2 < v.slice.size(); t += 3) {
      const int64_t d = v.slice[t], start = v.slice[t + 1], size = v.slice[t + 2];
      InferContext::require(d >= 0 && d < static_cast<int64_t>(s.size()) &&
                                !sliced[static_cast<size_t>(d)],
                            where + ": slice dim " + std::to_string(d) +
                                " is not a dim of the rank-" + std::to_string(s.size()) +
                                " input, or is sliced twice");
      const DimExpr& dim = s[static_cast<size_t>(d)];
      InferContext::require(dim.is_constant() && start >= 0 && size >= 1 &&
                                start <= dim.constant() - size,
                            where + ": the slice [" + std::to_string(start) + ", " +
                                std::to_string(start) + " + " + std::to_string(size) +
                                ") of dim " + std::to_string(d) + " is not inside its " +
                                dim.to_string() + " elements");
      sliced[static_cast<size_t>(d)] = true;
      s[static_cast<size_t>(d)] = DimExpr(size);
    }
    if (!v.perm.empty()) {
      InferContext::require(v.perm.size() == s.size(),
                            where + ": a transpose of " + std::to_string(v.perm.size()) +
                                " dims for a rank-" + std::to_string(s.size()) + " input");
      std::vector<bool> seen(s.size(), false);
      Shape t;
      for (int64_t d : v.perm) {
        InferContext::require(d >= 0 && d < static_cast<int64_t>(s.size()) && !seen[d],
                              where + ": the transpose is not a permutation of the input's dims");
        seen[d] = true;
        t.push_back(s[static_cast<size_t>(d)]);
      }
      s = t;
    }
    if (!v.gather.empty()) {
      InferContext::require(!s.empty() && s.back().is_constant(),
                            where + ": a gather needs a last dim of known size");
      InferContext::require(v.gather.size() >= 2,
                            where + ": a gather of one index (a slice) is not a view");
      const int64_t width = s.back().constant();
      for (int64_t g : v.gather) {
        InferContext::require(g >= 0 && g < width, where + ": gather index " + std::to_string(g) +
                                                       " is outside the last dim of " +
                                                       std::to_string(width));
      }
      s.back() = DimExpr(static_cast<int64_t>(v.gather.size()));
    }
    return s;
  };
  Shape shape = view_shape(0);
  for (size_t i = 1; i < n_in; ++i) shape = ctx.broadcast_shapes(shape, view_shape(i));
  for (int64_t o : p.outputs) ctx.add_output(value_dtype[static_cast<size_t>(o)], shape);
}

}  // namespace ember::engine
