// Forward convolution through cuDNN's graph (backend) API; see conv_graph.h for why and when.
//
// One layer's graph: tensors x, w, y (and bias, residual) with Ember's NCHW or channels-last
// strides in cuDNN's logical [N, C, *spatial] order, one CONVOLUTION_FORWARD op, and with a
// fused epilogue the pointwise chain ADD(bias) -> ADD(residual) -> RELU_FWD on virtual f32
// tensors, the last op writing y. Groups need no attribute: cuDNN reads them from x's C over
// w's C. 1-d convolutions get H = 1, as on the legacy path. A quantized convolution
// (run_quantized_conv_graph: INT8 or FP8 x and w) has only the fused graph, whose chain starts
// with MUL(x_scale) -> MUL(w_scale) and may end with DIV(out_scale) into an int8 or FP8 y
// (epilogue_steps; into int8 through a clamp and an explicit round-half-even, see there). Both
// kinds of call share the per-layer state and the choice below (run_call).
//
// Precision, as on the legacy path: accumulation and the epilogue in f32 (the conv's compute type
// and the pointwise ops' math precision); engines whose numerical notes say tensor cores (TF32
// for f32 data), down-converted inputs, FFT or Winograd transforms are skipped for f32, and
// reduced-precision reductions for every dtype.
//
// Choice (mirrors the legacy Find policy): without a timing cache, the heuristic's (mode A)
// first engine configuration that finalizes; with one, on the eager first call of a problem,
// up to kTimedCandidates finalized plans of the fused graph and of the unfused one are timed on
// the real operands (two launches behind the stream gate after a warm-up) and the fastest is
// stored as {fused, heuristic mode, rank, engine index}; a stored choice is rebuilt from the same
// heuristic list and used when its engine matches.
#include "backends/cuda/conv_graph.h"
#include "backends/cuda/dnn_types.h"

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/linear_kernels.h"

namespace ember::engine::cuda {

namespace {

std::atomic<int64_t> g_preparations{0}, g_plans{0}, g_executions{0}, g_refusals{0};

/// Plans of each graph (fused, unfused) timed on a problem's first eager call.
constexpr int kTimedCandidates = 4;

/// The Resources slot of this path's per-layer state (the legacy path keeps its own in slot 0).
constexpr int kSlot = 1;

/// Problems (shapes, epilogue operands, alignments) whose plans one layer keeps. More than one,
/// so that a context alternating between a few shapes does not rebuild plans, and so that the
/// CUDA graphs captured for each shape keep launching kernels of plans that are still alive.
constexpr size_t kProblemsPerLayer = 8;

/// A backend call that failed while a layer's graph or plan was built: what, and cuDNN's status.
struct GraphError {
  cudnnStatus_t status;
  std::string what;
  std::string text() const { return what + " returned " + cudnnGetErrorString(status); }
};

void ok(cudnnStatus_t s, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS) throw GraphError{s, what};
}

/// Owns one backend descriptor (cudnnBackendDestroyDescriptor on destruction).
class Desc {
 public:
  Desc() = default;
  Desc(cudnnBackendDescriptorType_t type, const char* what) {
    ok(cudnnBackendCreateDescriptor(type, &d_), what);
  }
  ~Desc() { reset(); }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    if (this != &o) {
      reset();
      d_ = std::exchange(o.d_, nullptr);
    }
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }
  void reset() noexcept {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
    d_ = nullptr;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

void set(const Desc& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
         int64_t count, const void* values, const char* what) {
  ok(cudnnBackendSetAttribute(d.get(), name, type, count, values), what);
}
void set_i64(const Desc& d, cudnnBackendAttributeName_t name, int64_t v, const char* what) {
  set(d, name, CUDNN_TYPE_INT64, 1, &v, what);
}
void set_i64s(const Desc& d, cudnnBackendAttributeName_t name, const std::vector<int64_t>& v,
              const char* what) {
  set(d, name, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data(), what);
}
void set_desc(const Desc& d, cudnnBackendAttributeName_t name, const Desc& v, const char* what) {
  cudnnBackendDescriptor_t raw = v.get();
  set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw, what);
}
void set_type(const Desc& d, cudnnBackendAttributeName_t name, cudnnDataType_t t,
              const char* what) {
  set(d, name, CUDNN_TYPE_DATA_TYPE, 1, &t, what);
}
void set_float(const Desc& d, cudnnBackendAttributeName_t name, float v, const char* what) {
  set(d, name, CUDNN_TYPE_FLOAT, 1, &v, what);
}
void set_handle(const Desc& d, cudnnBackendAttributeName_t name, cudnnHandle_t h,
                const char* what) {
  set(d, name, CUDNN_TYPE_HANDLE, 1, &h, what);
}
void finalize(const Desc& d, const char* what) { ok(cudnnBackendFinalize(d.get()), what); }

// ---- the operation graph

/// Unique ids of the graph's tensors (the variant pack names the real ones by these).
/// Virtual ones from 101: the convolution's sums, then one per epilogue step (kStepOut + i).
enum Uid : int64_t {
  kX = 1, kW, kY, kBias, kResidual, kXScale, kWScale, kOutScale,
  kRoundMagic,     ///< By value: 1.5 * 2^23 (epilogue_steps)
  kResidualScale,  ///< An int8 residual's scale
  kConvOut = 101, kStepOut = 102,
  kResidualValue = 150  ///< An int8 residual times its scale, in the float type
};

/// 1.5 * 2^23: adding it to an f32 |v| <= 2^22 leaves v rounded to an integer (half to even,
/// the add's own rounding) in the low bits; subtracting it gives that integer back exactly.
const float kRoundMagicValue = 12582912.0f;

/// Row-major (NCHW) strides of `dims`.
std::vector<int64_t> packed_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size());
  int64_t st = 1;
  for (size_t i = dims.size(); i-- > 0;) {
    s[i] = st;
    st *= std::max<int64_t>(dims[i], 1);
  }
  return s;
}

/// Strides of logical [N, C, *spatial] dims stored channels last ([N, *spatial, C]).
std::vector<int64_t> channels_last_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size());
  int64_t st = 1;
  s[1] = st;
  st *= std::max<int64_t>(dims[1], 1);
  for (size_t i = dims.size(); i-- > 2;) {
    s[i] = st;
    st *= std::max<int64_t>(dims[i], 1);
  }
  s[0] = st;
  return s;
}

/// Ember's dims of x, w or y in cuDNN's logical order: [N, C, *spatial] (a channels-last 4-d
/// tensor [N, H, W, C] becomes [N, C, H, W]; a 1-d one gets H = 1 before its length).
std::vector<int64_t> logical_dims(const std::vector<int64_t>& dims, bool channels_last) {
  std::vector<int64_t> d = dims;
  if (channels_last) return {d[0], d[3], d[1], d[2]};
  if (d.size() == 3) d.insert(d.end() - 1, 1);
  return d;
}

/// A tensor of the graph: dims and strides as cuDNN takes them, the byte alignment of its data
/// (the plan may rely on it: part of the layer's key), virtual for the epilogue's intermediates.
Desc make_tensor(int64_t uid, cudnnDataType_t type, const std::vector<int64_t>& dims,
                 const std::vector<int64_t>& strides, int64_t alignment, bool is_virtual,
                 bool by_value = false) {
  Desc d(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "cudnnBackendCreateDescriptor(TENSOR)");
  set_type(d, CUDNN_ATTR_TENSOR_DATA_TYPE, type, "set CUDNN_ATTR_TENSOR_DATA_TYPE");
  set_i64s(d, CUDNN_ATTR_TENSOR_DIMENSIONS, dims, "set CUDNN_ATTR_TENSOR_DIMENSIONS");
  set_i64s(d, CUDNN_ATTR_TENSOR_STRIDES, strides, "set CUDNN_ATTR_TENSOR_STRIDES");
  set_i64(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, uid, "set CUDNN_ATTR_TENSOR_UNIQUE_ID");
  set_i64(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, alignment, "set CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT");
  if (is_virtual) {
    const bool v = true;
    set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v,
        "set CUDNN_ATTR_TENSOR_IS_VIRTUAL");
  }
  if (by_value) {  // a scalar the variant pack passes as a host pointer to its value
    const bool v = true;
    set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &v,
        "set CUDNN_ATTR_TENSOR_IS_BY_VALUE");
  }
  finalize(d, "cudnnBackendFinalize(TENSOR)");
  return d;
}

/// One pointwise op y = mode(x[, b]) computed in f32; a RELU_FWD with `clip` is
/// clamp(x, clip[0], clip[1]) (cuDNN's lower and upper clip, the slope below left at 0).
Desc make_pointwise(std::vector<Desc>& keep, cudnnPointwiseMode_t mode, const Desc& x,
                    const Desc* b, const Desc& y, const float* clip = nullptr) {
  Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "cudnnBackendCreateDescriptor(POINTWISE)");
  set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode,
      "set CUDNN_ATTR_POINTWISE_MODE");
  set_type(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_DATA_FLOAT,
           "set CUDNN_ATTR_POINTWISE_MATH_PREC");
  if (clip != nullptr) {
    set_float(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP, clip[0],
              "set CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP");
    set_float(pw, CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP, clip[1],
              "set CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP");
  }
  finalize(pw, "cudnnBackendFinalize(POINTWISE)");
  Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR,
          "cudnnBackendCreateDescriptor(OPERATION_POINTWISE)");
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw,
           "set CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR");
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "set CUDNN_ATTR_OPERATION_POINTWISE_XDESC");
  if (b != nullptr) {
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b,
             "set CUDNN_ATTR_OPERATION_POINTWISE_BDESC");
  }
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "set CUDNN_ATTR_OPERATION_POINTWISE_YDESC");
  // Unscaled operands (cuDNN's default, said explicitly): the epilogue's scale is the conv's alpha.
  set_float(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, 1.0f,
            "set CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1");
  if (b != nullptr) {
    set_float(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, 1.0f,
              "set CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2");
  }
  finalize(op, "cudnnBackendFinalize(OPERATION_POINTWISE)");
  keep.push_back(std::move(pw));
  return op;
}

/// What one layer's graph is built from (everything the layer's key names).
struct Problem {
  DataType dtype = DataType::kF32;      ///< x and w
  DataType out_dtype = DataType::kF32;  ///< y
  DataType epilogue_dtype = DataType::kF32;  ///< The bias and the residual.
  bool channels_last = false;
  std::vector<int64_t> x, w, y;  // logical [N, C, *spatial]
  std::vector<int64_t> pre_pad, post_pad, stride, dilation;
  float scale = 1.0f;
  bool bias = false, residual = false, relu = false;
  /// A quantized convolution (INT8 or FP8 x and w): its sums are scaled by x_scale and w_scale
  /// (per output channel when w_per_channel) before the epilogue, and divided by out_scale
  /// after it when it requantizes (y is then int8 or FP8).
  bool quantized = false, w_per_channel = false, requantize = false;
  /// An int8 requantization's range (y int8): [quant_min, quant_max].
  float quant_min = -128.0f, quant_max = 127.0f;
  /// The residual is int8, read as residual * residual_scale rounded to the epilogue type.
  bool residual_int8 = false;
  /// INT8 only: the convolution's output as a virtual int32 tensor (cuDNN's int8 samples)
  /// instead of f32; the second graph tried when the first finds no engine.
  bool int32_sums = false;
  int64_t align_x = 16, align_w = 16, align_y = 16, align_bias = 16, align_residual = 16;
};

/// cuDNN's type of an operand: the float types, and the quantized ones this path takes.
cudnnDataType_t graph_type(DataType t) {
  if (t == DataType::kF8E4M3) return CUDNN_DATA_FP8_E4M3;
  if (t == DataType::kI8) return CUDNN_DATA_INT8;
  return dnn_type(t, "Convolution");
}

/// A finalized operation graph and every descriptor it refers to (kept alive with it).
struct Graph {
  bool fused = false;
  std::vector<Desc> keep;  // tensors, the convolution and pointwise descriptors, the ops
  Desc graph;
  std::vector<int64_t> uids;  // the non-virtual tensors, in the variant pack's order
};

/// One pointwise step of a fused epilogue: y = mode(in[, operand]).
struct Step {
  cudnnPointwiseMode_t mode;
  int64_t operand = 0;  ///< The operand's uid; 0: none (relu).
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  enum class Dims { kScalar, kChannel, kFull } dims = Dims::kFull;
  int64_t align = 16;
  bool clip = false;  ///< RELU_FWD as a clamp to [clip_lo, clip_hi]
  float clip_lo = 0.0f, clip_hi = 0.0f;
  bool by_value = false;  ///< The operand is a scalar passed by value (kRoundMagic)
  /// Nonzero: the operand (int8) is first multiplied by this scalar operand into a virtual
  /// tensor of `value_type` (an int8 residual read as the Dequantize it replaces).
  int64_t operand_scale = 0;
  cudnnDataType_t value_type = CUDNN_DATA_FLOAT;
};

/// The epilogue chain of `pb`, in order: the quantized scales, the bias, the residual, the
/// relu, the requantization. Into int8, the reference (semantics::quant_round_clamp) rounds half
/// to even and clamps to [quant_min, quant_max]; cuDNN's own float-to-int8 conversion rounds
/// otherwise (an H100, 2026-12-07: the "relu + requantize" case differed), so the chain clamps
/// (a clipped RELU_FWD) and rounds itself (+ then - 1.5 * 2^23, which |v| <= 128 allows) and
/// hands the conversion an exact integer in range. Clamping before rounding is the same as
/// after, the bounds being integers.
std::vector<Step> epilogue_steps(const Problem& pb) {
  std::vector<Step> steps;
  const cudnnDataType_t et = graph_type(pb.epilogue_dtype);
  if (pb.quantized) {
    steps.push_back({CUDNN_POINTWISE_MUL, kXScale, CUDNN_DATA_FLOAT, Step::Dims::kScalar, 4});
    steps.push_back({CUDNN_POINTWISE_MUL, kWScale, CUDNN_DATA_FLOAT,
                     pb.w_per_channel ? Step::Dims::kChannel : Step::Dims::kScalar, 4});
  }
  if (pb.bias) {
    steps.push_back({CUDNN_POINTWISE_ADD, kBias, et, Step::Dims::kChannel, pb.align_bias});
  }
  if (pb.residual && pb.residual_int8) {
    Step add{CUDNN_POINTWISE_ADD, kResidual, CUDNN_DATA_INT8, Step::Dims::kFull,
             pb.align_residual};
    add.operand_scale = kResidualScale;
    add.value_type = et;
    steps.push_back(add);
  } else if (pb.residual) {
    steps.push_back({CUDNN_POINTWISE_ADD, kResidual, et, Step::Dims::kFull, pb.align_residual});
  }
  if (pb.relu) steps.push_back({CUDNN_POINTWISE_RELU_FWD});
  if (pb.requantize) {
    steps.push_back({CUDNN_POINTWISE_DIV, kOutScale, CUDNN_DATA_FLOAT, Step::Dims::kScalar, 4});
    if (pb.out_dtype == DataType::kI8) {
      Step clamp{CUDNN_POINTWISE_RELU_FWD};
      clamp.clip = true;
      clamp.clip_lo = pb.quant_min;
      clamp.clip_hi = pb.quant_max;
      steps.push_back(clamp);
      Step add{CUDNN_POINTWISE_ADD, kRoundMagic, CUDNN_DATA_FLOAT, Step::Dims::kScalar, 4};
      add.by_value = true;
      Step sub = add;
      sub.mode = CUDNN_POINTWISE_SUB;
      steps.push_back(add);
      steps.push_back(sub);
    }
  }
  return steps;
}

/// Builds the graph of `pb`: fused = its epilogue (epilogue_steps) as pointwise ops on virtual
/// f32 tensors, the last one writing y; unfused = the convolution alone, writing y.
std::unique_ptr<Graph> build_graph(const Problem& pb, bool fused, cudnnHandle_t handle) {
  auto g = std::make_unique<Graph>();
  g->fused = fused;
  const cudnnDataType_t type = graph_type(pb.dtype);
  auto strides = [&](const std::vector<int64_t>& dims) {
    return pb.channels_last ? channels_last_strides(dims) : packed_strides(dims);
  };
  const std::vector<int64_t> y_strides = strides(pb.y);
  g->keep.push_back(make_tensor(kX, type, pb.x, strides(pb.x), pb.align_x, false));
  const size_t x_at = g->keep.size() - 1;
  g->keep.push_back(make_tensor(kW, type, pb.w, strides(pb.w), pb.align_w, false));
  const size_t w_at = g->keep.size() - 1;
  g->keep.push_back(
      make_tensor(kY, graph_type(pb.out_dtype), pb.y, y_strides, pb.align_y, false));
  const size_t y_at = g->keep.size() - 1;
  g->uids = {kX, kW, kY};

  const auto nsp = static_cast<int64_t>(pb.stride.size());
  Desc conv(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, "cudnnBackendCreateDescriptor(CONVOLUTION)");
  set_i64(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, nsp, "set CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS");
  // Sums in f32 (int32 for INT8: exact).
  set_type(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
           pb.dtype == DataType::kI8 ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT,
           "set CUDNN_ATTR_CONVOLUTION_COMP_TYPE");
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;  // PyTorch's convolution
  set(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode,
      "set CUDNN_ATTR_CONVOLUTION_CONV_MODE");
  set_i64s(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, pb.dilation,
           "set CUDNN_ATTR_CONVOLUTION_DILATIONS");
  set_i64s(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, pb.stride,
           "set CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES");
  set_i64s(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, pb.pre_pad,
           "set CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS");
  set_i64s(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, pb.post_pad,
           "set CUDNN_ATTR_CONVOLUTION_POST_PADDINGS");
  finalize(conv, "cudnnBackendFinalize(CONVOLUTION)");

  // The convolution writes y itself, or a virtual tensor the epilogue chain reads.
  const std::vector<Step> steps = fused ? epilogue_steps(pb) : std::vector<Step>{};
  size_t conv_out_at = y_at;
  if (!steps.empty()) {
    g->keep.push_back(make_tensor(kConvOut, pb.int32_sums ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT,
                                  pb.y, y_strides, 16, true));
    conv_out_at = g->keep.size() - 1;
  }
  Desc op(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
          "cudnnBackendCreateDescriptor(OPERATION_CONVOLUTION_FORWARD)");
  set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, g->keep[x_at],
           "set CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X");
  set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, g->keep[w_at],
           "set CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W");
  set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, g->keep[conv_out_at],
           "set CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y");
  set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, conv,
           "set CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC");
  // y = alpha conv(x, w) + beta y: the epilogue's scale is alpha; y is not read (beta = 0).
  set_float(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, pb.scale,
            "set CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA");
  set_float(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, 0.0f,
            "set CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA");
  finalize(op, "cudnnBackendFinalize(OPERATION_CONVOLUTION_FORWARD)");
  std::vector<cudnnBackendDescriptor_t> ops = {op.get()};
  g->keep.push_back(std::move(conv));
  g->keep.push_back(std::move(op));

  // Each step's output is virtual f32 except the last, which is y (rounded once to its type,
  // as the legacy fused call does).
  size_t in_at = conv_out_at;
  std::vector<std::pair<int64_t, size_t>> operand_tensors;  // uid -> its entry in keep
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& st = steps[i];
    size_t operand_at = 0;  // 0: none (the graph's first entry is x, never an operand)
    if (st.operand != 0) {
      // An operand used twice (the rounding constant) is one tensor of the graph.
      for (const auto& [uid, at] : operand_tensors) {
        if (uid == st.operand) operand_at = at;
      }
      if (operand_at == 0) {
        std::vector<int64_t> dims(pb.y.size(), 1);
        if (st.dims == Step::Dims::kChannel) dims[1] = pb.y[1];
        if (st.dims == Step::Dims::kFull) dims = pb.y;
        g->keep.push_back(make_tensor(st.operand, st.type, dims,
                                      st.dims == Step::Dims::kFull ? y_strides : strides(dims),
                                      st.align, false, st.by_value));
        operand_at = g->keep.size() - 1;
        operand_tensors.emplace_back(st.operand, operand_at);
        g->uids.push_back(st.operand);
      }
      if (st.operand_scale != 0) {
        // value = MUL(operand, scale), a virtual tensor of the float type (the rounding the
        // Dequantize it replaces does), which the step then reads as its operand.
        const std::vector<int64_t> one(pb.y.size(), 1);
        g->keep.push_back(make_tensor(st.operand_scale, CUDNN_DATA_FLOAT, one, strides(one), 4,
                                      false));
        const size_t scale_at = g->keep.size() - 1;
        g->uids.push_back(st.operand_scale);
        g->keep.push_back(
            make_tensor(kResidualValue, st.value_type, pb.y, y_strides, 16, true));
        const size_t value_at = g->keep.size() - 1;
        Desc mul = make_pointwise(g->keep, CUDNN_POINTWISE_MUL, g->keep[operand_at],
                                  &g->keep[scale_at], g->keep[value_at]);
        ops.push_back(mul.get());
        g->keep.push_back(std::move(mul));
        operand_at = value_at;
      }
    }
    size_t out_at = y_at;
    if (i + 1 < steps.size()) {
      // The value a requantization reads is rounded to the float type first, as the reference
      // (and quantize.cu's epilogue) rounds it to the layer's output type before quantizing.
      const bool before_requantize = steps[i + 1].operand == kOutScale;
      g->keep.push_back(make_tensor(
          kStepOut + static_cast<int64_t>(i),
          before_requantize ? graph_type(pb.epilogue_dtype) : CUDNN_DATA_FLOAT, pb.y, y_strides,
          16, true));
      out_at = g->keep.size() - 1;
    }
    const float clip[2] = {st.clip_lo, st.clip_hi};
    Desc pw = make_pointwise(g->keep, st.mode, g->keep[in_at],
                             operand_at != 0 ? &g->keep[operand_at] : nullptr, g->keep[out_at],
                             st.clip ? clip : nullptr);
    ops.push_back(pw.get());
    g->keep.push_back(std::move(pw));
    in_at = out_at;
  }

  g->graph = Desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR,
                  "cudnnBackendCreateDescriptor(OPERATIONGRAPH)");
  set_handle(g->graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle,
             "set CUDNN_ATTR_OPERATIONGRAPH_HANDLE");
  set(g->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
      static_cast<int64_t>(ops.size()), ops.data(), "set CUDNN_ATTR_OPERATIONGRAPH_OPS");
  finalize(g->graph, "cudnnBackendFinalize(OPERATIONGRAPH)");
  return g;
}

// ---- engine configurations and plans

/// One engine configuration from the heuristic, and its plan once finalized.
struct Candidate {
  const Graph* graph = nullptr;
  cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  int rank = 0;         // position in the heuristic's list for `mode`
  int64_t engine = -1;  // the engine's global index
  Desc cfg, plan;
  int64_t workspace = 0;
};

/// The heuristic's engine configurations for `g` (empty when the heuristic has none: an
/// unsupported graph makes its finalization fail, which is not an error here).
std::vector<Desc> heuristic_configs(const Graph& g, cudnnBackendHeurMode_t mode,
                                    GraphError* last) {
  std::vector<Desc> cfgs;
  try {
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "cudnnBackendCreateDescriptor(ENGINEHEUR)");
    set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, g.graph,
             "set CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH");
    set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode,
        "set CUDNN_ATTR_ENGINEHEUR_MODE");
    finalize(heur, "cudnnBackendFinalize(ENGINEHEUR)");
    int64_t count = 0;
    ok(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
       "get CUDNN_ATTR_ENGINEHEUR_RESULTS (count)");
    if (count <= 0) return cfgs;
    // The getter fills descriptors the caller created.
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
                        "cudnnBackendCreateDescriptor(ENGINECFG)");
      raw.push_back(cfgs.back().get());
    }
    int64_t returned = 0;
    ok(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned, raw.data()),
       "get CUDNN_ATTR_ENGINEHEUR_RESULTS");
    cfgs.resize(static_cast<size_t>(std::clamp<int64_t>(returned, 0, count)));
  } catch (const GraphError& e) {
    *last = e;
    cfgs.clear();
  }
  return cfgs;
}

/// What the heuristic's configuration says about its engine.
struct EngineInfo {
  int64_t index = -1;              // global index; -1: the engine breaks the precision rules
  bool runtime_compiled = false;   // its plan compiles kernels (NVRTC) when finalized
};

/// Which numerical notes a problem's engines may carry (see the file comment).
enum class Precision {
  kF32,        ///< No tensor cores, down-conversion, FFT, Winograd or reduced-precision sums.
  kHalf,       ///< No reduced-precision sums.
  kQuantized,  ///< Any: INT8 sums are exact, and FP8 tensor cores sum as their GEMMs do.
};

/// The engine of `cfg`: index -1 when its numerical notes break Ember's precision rules (see the
/// file comment) or cannot be read (such an engine is not trusted).
EngineInfo engine_info(const Desc& cfg, Precision precision) {
  const bool is_f32 = precision == Precision::kF32;
  EngineInfo info;
  try {
    Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "cudnnBackendCreateDescriptor(ENGINE)");
    cudnnBackendDescriptor_t raw = engine.get();
    int64_t n = 0;
    ok(cudnnBackendGetAttribute(cfg.get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                                CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &raw),
       "get CUDNN_ATTR_ENGINECFG_ENGINE");
    std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
    ok(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
                                CUDNN_TYPE_NUMERICAL_NOTE, static_cast<int64_t>(notes.size()), &n,
                                notes.data()),
       "get CUDNN_ATTR_ENGINE_NUMERICAL_NOTE");
    for (int64_t i = 0; i < std::min<int64_t>(n, static_cast<int64_t>(notes.size())); ++i) {
      switch (notes[static_cast<size_t>(i)]) {
        case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
          if (precision != Precision::kQuantized) return info;
          break;
        case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
        case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
        case CUDNN_NUMERICAL_NOTE_FFT:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13:
          if (is_f32) return info;
          break;
        default: break;
      }
    }
    std::array<cudnnBackendBehaviorNote_t, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT> behavior{};
    ok(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
                                CUDNN_TYPE_BEHAVIOR_NOTE, static_cast<int64_t>(behavior.size()),
                                &n, behavior.data()),
       "get CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE");
    for (int64_t i = 0; i < std::min<int64_t>(n, static_cast<int64_t>(behavior.size())); ++i) {
      if (behavior[static_cast<size_t>(i)] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) {
        info.runtime_compiled = true;
      }
    }
    int64_t index = -1;
    ok(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1,
                                &n, &index),
       "get CUDNN_ATTR_ENGINE_GLOBAL_INDEX");
    info.index = index;
  } catch (const GraphError&) {
    info.index = -1;
  }
  return info;
}

/// Finalizes the plan of `c.cfg`; false (with `last` set) when cuDNN refuses it or it needs more
/// workspace than allowed.
bool finalize_plan(Candidate& c, cudnnHandle_t handle, size_t max_workspace, GraphError* last) {
  try {
    Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
              "cudnnBackendCreateDescriptor(EXECUTION_PLAN)");
    set_handle(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle,
               "set CUDNN_ATTR_EXECUTION_PLAN_HANDLE");
    set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, c.cfg,
             "set CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG");
    finalize(plan, "cudnnBackendFinalize(EXECUTION_PLAN)");
    int64_t n = 0, ws = 0;
    ok(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                CUDNN_TYPE_INT64, 1, &n, &ws),
       "get CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE");
    ++g_plans;
    if (ws < 0 || static_cast<size_t>(ws) > max_workspace) {
      *last = GraphError{CUDNN_STATUS_NOT_SUPPORTED,
                         "plan workspace of " + std::to_string(ws) + " bytes (over the limit)"};
      return false;
    }
    c.plan = std::move(plan);
    c.workspace = ws;
    return true;
  } catch (const GraphError& e) {
    *last = e;
    return false;
  }
}

/// Up to `limit` finalized plans of `g`, in the heuristic's order (mode A, then the fallback
/// list when mode A gives none). `only` >= 0: just the configuration at that rank of `mode_only`.
/// At most one runtime-compiled engine is tried per call: its finalization compiles kernels
/// (hundreds of milliseconds each), which several candidates per layer would multiply.
std::vector<Candidate> plans_of(const Graph& g, Precision precision, cudnnHandle_t handle,
                                size_t max_workspace, int limit, GraphError* last,
                                int only = -1, cudnnBackendHeurMode_t mode_only = CUDNN_HEUR_MODE_A) {
  std::vector<Candidate> out;
  bool compiled_tried = false;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    if (only >= 0 && mode != mode_only) continue;
    std::vector<Desc> cfgs = heuristic_configs(g, mode, last);
    for (size_t i = 0; i < cfgs.size() && static_cast<int>(out.size()) < limit; ++i) {
      if (only >= 0 && static_cast<int>(i) != only) continue;
      Candidate c;
      c.graph = &g;
      c.mode = mode;
      c.rank = static_cast<int>(i);
      const EngineInfo info = engine_info(cfgs[i], precision);
      c.engine = info.index;
      if (c.engine < 0) {
        *last = GraphError{CUDNN_STATUS_NOT_SUPPORTED,
                           "the engine configurations' numerical notes (no engine keeps the "
                           "precision rules)"};
        continue;
      }
      if (info.runtime_compiled) {
        if (compiled_tried && only < 0) continue;
        compiled_tried = true;
      }
      c.cfg = std::move(cfgs[i]);
      if (finalize_plan(c, handle, max_workspace, last)) out.push_back(std::move(c));
    }
    if (!out.empty() || only >= 0) break;
  }
  return out;
}

/// A finalized variant pack: the operands of one call by the graph's uids, and the workspace.
Desc make_pack(const std::vector<int64_t>& uids, const std::vector<void*>& ptrs, void* ws) {
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "cudnnBackendCreateDescriptor(VARIANT_PACK)");
  set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
      static_cast<int64_t>(uids.size()), uids.data(), "set CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS");
  set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
      static_cast<int64_t>(ptrs.size()), ptrs.data(), "set CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS");
  set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws,
      "set CUDNN_ATTR_VARIANT_PACK_WORKSPACE");
  finalize(pack, "cudnnBackendFinalize(VARIANT_PACK)");
  return pack;
}

/// Runs `plan` once with a variant pack made for these operands (tactic timing, first calls).
cudnnStatus_t execute_once(cudnnHandle_t handle, const Desc& plan,
                           const std::vector<int64_t>& uids, const std::vector<void*>& ptrs,
                           void* ws) {
  try {
    const Desc pack = make_pack(uids, ptrs, ws);
    return cudnnBackendExecute(handle, plan.get(), pack.get());
  } catch (const GraphError& e) {
    return e.status;
  }
}

// ---- the per-layer state

/// Largest power of two up to 16 dividing `p`'s address (16 for an absent operand): the
/// alignment a plan is built for.
int64_t align16(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int64_t a = 16;
  while (v % static_cast<uintptr_t>(a) != 0) a /= 2;
  return a;
}

/// The device operands of one call, by role.
struct Operands {
  const void* x = nullptr;
  const void* w = nullptr;
  void* y = nullptr;
  const void* bias = nullptr;
  const void* residual = nullptr;
  const void* x_scale = nullptr;
  const void* w_scale = nullptr;
  const void* out_scale = nullptr;
  const void* residual_scale = nullptr;
};

/// What a kept problem is besides its dims: which operands are present, their alignments, and
/// (quantized) per-channel weight scales and requantization. Unused entries stay 0.
using ProblemFlags = std::array<int64_t, 9>;

/// The float path's epilogue pass after an unfused plan (bias, residual, activation in one
/// kernel over y, seen as [outer, channels, plane]); `p` null: none (the quantized path has
/// only fused plans).
struct EpiloguePass {
  const ConvolutionParams* p = nullptr;
  DeviceTensor* y = nullptr;
  const void* bias = nullptr;
  const void* residual = nullptr;
  int64_t channels = 0, plane = 0;
  cudaStream_t stream = nullptr;
  void operator()() const {
    if (p != nullptr) {
      launch_epilogue(y->dtype, y->data, bias, channels, plane, residual, &p->epilogue,
                      y->numel(), stream);
    }
  }
};

/// A layer's graph-path state for one problem (dims, epilogue operands and operand alignment),
/// kept in the context's Resources: the chosen plan and what it refers to, or why the layer
/// runs on the legacy path. Descriptors are destroyed in reverse order of declaration.
struct ConvGraphPrep : PreparedLaunch {
  enum class State { kGraph, kLegacy, kRefused } state = State::kGraph;
  std::vector<int64_t> x_dims, w_dims, y_dims;
  ProblemFlags flags{};         // which operands are present, and the operands' alignments
  std::string why;             // kRefused: the failing call and cuDNN's status
  std::unique_ptr<Graph> graph;
  Desc cfg, plan;
  bool fused = false;
  size_t workspace = 0;
  // The variant pack of the last call, reused while the addresses repeat (the layer-by-layer
  // path's common case: arena addresses are fixed), so a call is one cudnnBackendExecute.
  Desc pack;
  std::vector<void*> pack_ptrs;
  void* pack_ws = nullptr;

  bool matches(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
               const std::vector<int64_t>& y, const ProblemFlags& f) const {
    return f == flags && x == x_dims && y == y_dims && w == w_dims;
  }
};

/// The graph path's state of one layer: its problems, most recently used first.
struct ConvGraphLayer : PreparedLaunch {
  std::vector<std::unique_ptr<ConvGraphPrep>> problems;
};

/// Drops a problem's state. A plan may own kernels (runtime-compiled ones in modules of their
/// own) that queued launches and captured CUDA graphs still use: the stream is waited for and
/// the context's captures are marked stale before such a plan is destroyed.
void retire(std::unique_ptr<ConvGraphPrep> prep, Resources& res, cudaStream_t stream) {
  if (prep == nullptr || prep->plan.get() == nullptr) return;
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (retiring a cuDNN plan)");
  res.invalidate_captures();
  prep.reset();
}

/// The operand addresses of one call, in the order of `uids`.
std::vector<void*> operand_ptrs(const std::vector<int64_t>& uids, const Operands& o) {
  std::vector<void*> ptrs;
  ptrs.reserve(uids.size());
  for (int64_t uid : uids) {
    const void* p = nullptr;  // virtual tensors live inside the plan, never in a variant pack
    switch (uid) {
      case kX: p = o.x; break;
      case kW: p = o.w; break;
      case kY: p = o.y; break;
      case kBias: p = o.bias; break;
      case kResidual: p = o.residual; break;
      case kXScale: p = o.x_scale; break;
      case kWScale: p = o.w_scale; break;
      case kOutScale: p = o.out_scale; break;
      case kRoundMagic: p = &kRoundMagicValue; break;  // by value: a host pointer
      case kResidualScale: p = o.residual_scale; break;
      default: break;
    }
    ptrs.push_back(const_cast<void*>(p));
  }
  return ptrs;
}

/// Runs the kept plan: one cudnnBackendExecute with a variant pack made (or kept) for these
/// addresses. Capturable: the pack's addresses are baked into the captured kernels, and the
/// workspace's address is part of Ember's graph key (Resources::workspace_generation).
cudnnStatus_t run_kept(ConvGraphPrep& prep, cudnnHandle_t handle, std::vector<void*> ptrs,
                       void* ws) {
  if (prep.pack.get() == nullptr || ws != prep.pack_ws || ptrs != prep.pack_ptrs) {
    prep.pack.reset();
    try {
      prep.pack = make_pack(prep.graph->uids, ptrs, ws);
    } catch (const GraphError& e) {
      return e.status;
    }
    prep.pack_ptrs = std::move(ptrs);
    prep.pack_ws = ws;
  }
  return cudnnBackendExecute(handle, prep.plan.get(), prep.pack.get());
}

const char* mode_name(cudnnBackendHeurMode_t m) {
  return m == CUDNN_HEUR_MODE_A ? "A" : m == CUDNN_HEUR_MODE_FALLBACK ? "fallback" : "other";
}

/// One call of a layer on the graph path: its operands and key (set on every call, without
/// allocating), and for a new problem what its graph is built from (set by the caller's `fill`
/// only then).
struct Call {
  Operands ops;
  // The layer's own dims, and the rest of the key, matched against the kept problems.
  const std::vector<int64_t>* x_dims = nullptr;
  const std::vector<int64_t>* w_dims = nullptr;
  const std::vector<int64_t>* y_dims = nullptr;
  ProblemFlags flags{};
  EpiloguePass epilogue_pass;  ///< After an unfused plan.
  // Filled for a new problem only:
  Problem pb;
  bool fusable = false;  ///< The fused graph may run.
  bool unfused = true;   ///< The unfused graph may run (then `epilogue_pass` finishes it).
  bool force_fused = false;  ///< Only the fused graph is timed when it has plans.
  /// INT8: the fused graph is also tried with int32 sums (Problem::int32_sums) when the f32 one
  /// finds no plan.
  bool int32_retry = false;
  Precision precision = Precision::kHalf;
};

/// The graph path of one layer call: the kept plan of this problem, or a new one chosen (from
/// the timing cache, by timing, or by the heuristic) and kept. For a new problem `fill(call)`
/// sets the problem and the graphs allowed, and returns false when this path does not take it
/// (EMBER_CUDNN_CONV=legacy, a shape it does not cover), which is then kept as the other
/// path's.
template <class Fill>
ConvGraphStatus run_call(Call& call, Fill&& fill, const CudaArgs& a,
                         const ConvGraphOptions& options, std::string* why) {
  using State = ConvGraphPrep::State;
  auto handle = static_cast<cudnnHandle_t>(a.res->cudnn());

  // The common case: this layer's plan for this problem is kept.
  auto* layer_state = static_cast<ConvGraphLayer*>(a.res->prepared(a.layer, kSlot));
  ConvGraphPrep* prep = nullptr;
  if (layer_state != nullptr) {
    auto& kept = layer_state->problems;
    for (size_t i = 0; i < kept.size(); ++i) {
      if (!kept[i]->matches(*call.x_dims, *call.w_dims, *call.y_dims, call.flags)) continue;
      if (i > 0) std::rotate(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(i),
                             kept.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      prep = kept[0].get();
      break;
    }
  }
  if (prep != nullptr) {
    switch (prep->state) {
      case State::kLegacy: return ConvGraphStatus::kNotCovered;
      case State::kRefused: *why = prep->why; return ConvGraphStatus::kRefused;
      case State::kGraph: break;
    }
    void* ws = prep->workspace > 0 ? a.res->workspace(prep->workspace) : nullptr;
    const cudnnStatus_t s =
        run_kept(*prep, handle, operand_ptrs(prep->graph->uids, call.ops), ws);
    if (s != CUDNN_STATUS_SUCCESS) {
      throw Error("Convolution (cuda): cudnnBackendExecute of the layer's kept plan failed: " +
                  std::string(cudnnGetErrorString(s)));
    }
    ++g_executions;
    if (!prep->fused) call.epilogue_pass();
    return ConvGraphStatus::kRan;
  }

  // A new problem for this layer: decide the path, and on the graph path build the plan.
  auto fresh = std::make_unique<ConvGraphPrep>();
  fresh->x_dims = *call.x_dims;
  fresh->w_dims = *call.w_dims;
  fresh->y_dims = *call.y_dims;
  fresh->flags = call.flags;
  auto keep_as = [&](State state) {
    fresh->state = state;
    if (layer_state == nullptr) {
      a.res->set_prepared(a.layer, kSlot, std::make_unique<ConvGraphLayer>());
      layer_state = static_cast<ConvGraphLayer*>(a.res->prepared(a.layer, kSlot));
    }
    if (layer_state == nullptr) {  // EMBER_CUDA_PREPARED=0: nothing is kept
      retire(std::move(fresh), *a.res, a.stream());
      return;
    }
    auto& kept = layer_state->problems;
    kept.insert(kept.begin(), std::move(fresh));
    if (kept.size() > kProblemsPerLayer) {
      std::unique_ptr<ConvGraphPrep> oldest = std::move(kept.back());
      kept.pop_back();
      retire(std::move(oldest), *a.res, a.stream());
    }
  };
  // Nothing is prepared or retired inside a stream capture: heuristic queries and plan
  // finalization may load or compile kernels, and retiring a plan synchronizes. The other path
  // serves a capture that comes before any eager call of the problem.
  if (capturing(a.stream())) return ConvGraphStatus::kNotCovered;
  if (!fill(call)) {
    keep_as(State::kLegacy);
    return ConvGraphStatus::kNotCovered;
  }
  ++g_preparations;

  GraphError last{CUDNN_STATUS_NOT_SUPPORTED, "the engine heuristics (no configuration)"};
  // Declared before the candidates, which refer to them.
  std::unique_ptr<Graph> graphs[2];  // [fused]
  auto graph_of = [&](bool fused) -> const Graph* {
    if (graphs[fused] == nullptr) {
      try {
        graphs[fused] = build_graph(call.pb, fused, handle);
      } catch (const GraphError& e) {
        last = e;
        return nullptr;
      }
    }
    return graphs[fused].get();
  };
  auto plans = [&](bool fused, int limit, int only, cudnnBackendHeurMode_t mode) {
    const Graph* g = graph_of(fused);
    std::vector<Candidate> c =
        g == nullptr ? std::vector<Candidate>{}
                     : plans_of(*g, call.precision, handle, options.max_workspace, limit, &last,
                                only, mode);
    // (Not with an epilogue scale: the convolution's alpha would then scale integer sums.)
    if (c.empty() && fused && call.int32_retry && !call.pb.int32_sums && call.pb.scale == 1.0f) {
      call.pb.int32_sums = true;  // the second form of an INT8 graph, kept from here on
      graphs[1].reset();
      g = graph_of(true);
      if (g != nullptr) {
        c = plans_of(*g, call.precision, handle, options.max_workspace, limit, &last, only, mode);
      }
    }
    return c;
  };

  const Problem& pb = call.pb;
  TimingCache* cache = a.res->timing_cache();
  std::string problem;
  if (cache != nullptr) {
    problem = "cudnn-graph " + (options.problem ? options.problem() : std::string()) +
              "align=" + std::to_string(pb.align_x) + "," + std::to_string(pb.align_w) + "," +
              std::to_string(pb.align_y) + "," + std::to_string(pb.align_bias) + "," +
              std::to_string(pb.align_residual) + ";fusable=" + (call.fusable ? "1" : "0") +
              ";" + (call.force_fused ? "fusion=force;" : "");
  }
  std::vector<Candidate> chosen;  // the choice, when made
  const char* how = "heuristic";
  // 1. A choice stored in the timing cache: {fused, heuristic mode, rank, engine index}, used when
  //    the same heuristic list still has that engine at that rank and its plan finalizes.
  if (cache != nullptr) {
    bool checked = false;
    const auto bytes = cache->lookup(timing_device_key(), problem, &checked);
    if (bytes && bytes->size() == 16) {
      int32_t v[4];
      std::memcpy(v, bytes->data(), sizeof v);
      const bool fused = v[0] == 1;
      const auto mode = static_cast<cudnnBackendHeurMode_t>(v[1]);
      if (((v[0] == 0 && call.unfused) || (v[0] == 1 && call.fusable)) && v[2] >= 0 &&
          (mode == CUDNN_HEUR_MODE_A || mode == CUDNN_HEUR_MODE_FALLBACK)) {
        std::vector<Candidate> c = plans(fused, 1, v[2], mode);
        if (!c.empty() && c[0].engine == v[3]) {
          chosen = std::move(c);
          how = "timing cache";
          if (!checked) cache->mark_checked(timing_device_key(), problem);
        }
      }
    }
  }
  // 2. Tactic timing (the eager first call of a problem the cache lacks): up to kTimedCandidates
  //    plans of the fused graph and of the unfused one (its epilogue pass included), on the real
  //    operands. y is overwritten by each run and written afresh below; the other operands are
  //    only read.
  if (chosen.empty() && cache != nullptr) {
    std::vector<Candidate> cands;
    if (call.fusable) cands = plans(true, kTimedCandidates, -1, CUDNN_HEUR_MODE_A);
    if (call.unfused && (cands.empty() || !call.force_fused)) {
      for (Candidate& c : plans(false, kTimedCandidates, -1, CUDNN_HEUR_MODE_A)) {
        cands.push_back(std::move(c));
      }
    }
    if (!cands.empty()) {
      TacticTimer timer;
      size_t max_ws = 0;
      for (const Candidate& c : cands) max_ws = std::max(max_ws, static_cast<size_t>(c.workspace));
      if (max_ws > 0) {
        timer.scratch = DeviceBuffer(a.res->allocator(), max_ws, "convolution tactic timing scratch");
      }
      if (options.log) {
        std::fprintf(stderr, "[ember tactic] %s: %zu graph plans\n", problem.c_str(), cands.size());
      }
      int best = -1;
      float best_ms = -1.0f;
      for (size_t i = 0; i < cands.size(); ++i) {
        const Candidate& c = cands[i];
        const std::vector<void*> ptrs = operand_ptrs(c.graph->uids, call.ops);
        auto launch = [&] {
          if (execute_once(handle, c.plan, c.graph->uids, ptrs, timer.scratch.get()) !=
              CUDNN_STATUS_SUCCESS) {
            return false;
          }
          if (!c.graph->fused) call.epilogue_pass();
          return true;
        };
        const float ms = launch() ? time_launches(timer, a.stream(), launch) : -1.0f;
        if (options.log) {
          std::fprintf(stderr,
                       "[ember tactic]   %s engine %lld mode %s rank %d ws %lld: %s%.4f\n",
                       c.graph->fused ? "fused" : "unfused", static_cast<long long>(c.engine),
                       mode_name(c.mode), c.rank, static_cast<long long>(c.workspace),
                       ms < 0.0f ? "launch refused " : "2 runs ms ", ms < 0.0f ? 0.0 : ms);
        }
        if (ms >= 0.0f && (best < 0 || ms < best_ms)) {
          best = static_cast<int>(i);
          best_ms = ms;
        }
      }
      if (best >= 0) {
        const Candidate& c = cands[static_cast<size_t>(best)];
        const int32_t v[4] = {c.graph->fused ? 1 : 0, static_cast<int32_t>(c.mode), c.rank,
                              static_cast<int32_t>(c.engine)};
        const auto* b = reinterpret_cast<const uint8_t*>(v);
        cache->store(timing_device_key(), problem, std::vector<uint8_t>(b, b + sizeof v));
        cache->note_timed();
        chosen.push_back(std::move(cands[static_cast<size_t>(best)]));
        how = "timed";
      } else {
        last = GraphError{CUDNN_STATUS_EXECUTION_FAILED,
                          "cudnnBackendExecute of every timed plan"};
      }
    }
  }
  // 3. No timing: the heuristic's first plan that finalizes, fused first.
  if (chosen.empty() && cache == nullptr) {
    if (call.fusable) chosen = plans(true, 1, -1, CUDNN_HEUR_MODE_A);
    if (chosen.empty() && call.unfused) chosen = plans(false, 1, -1, CUDNN_HEUR_MODE_A);
  }
  auto refuse = [&](const GraphError& e) {
    fresh->why = e.text();
    *why = fresh->why;
    ++g_refusals;
    keep_as(State::kRefused);
    return ConvGraphStatus::kRefused;
  };
  if (chosen.empty()) return refuse(last);

  Candidate& c = chosen[0];
  fresh->fused = c.graph->fused;
  fresh->graph = std::move(graphs[fresh->fused]);
  fresh->cfg = std::move(c.cfg);
  fresh->plan = std::move(c.plan);
  fresh->workspace = static_cast<size_t>(c.workspace);
  if (options.log) {
    std::fprintf(stderr, "[ember tactic] %s -> cudnn graph %s engine %lld (mode %s rank %d, %s)\n",
                 problem.empty() ? "convolution" : problem.c_str(),
                 fresh->fused ? "fused" : "unfused", static_cast<long long>(c.engine),
                 mode_name(c.mode), c.rank, how);
  }
  void* ws = fresh->workspace > 0 ? a.res->workspace(fresh->workspace) : nullptr;
  const cudnnStatus_t s = run_kept(*fresh, handle, operand_ptrs(fresh->graph->uids, call.ops), ws);
  if (s != CUDNN_STATUS_SUCCESS) return refuse(GraphError{s, "cudnnBackendExecute"});
  ++g_executions;
  if (!fresh->fused) call.epilogue_pass();
  keep_as(State::kGraph);
  return ConvGraphStatus::kRan;
}

/// The geometry fields of a Problem from a layer's stride, padding and dilation (a 1-d one as
/// [N, C, 1, L]).
void set_geometry(Problem& pb, size_t nsp, const std::vector<int64_t>& begin,
                  const std::vector<int64_t>& end, const std::vector<int64_t>& stride,
                  const std::vector<int64_t>& dilation) {
  if (nsp == 1) {
    pb.pre_pad = {0, begin[0]};
    pb.post_pad = {0, end[0]};
    pb.stride = {1, stride[0]};
    pb.dilation = {1, dilation[0]};
  } else {
    pb.pre_pad = begin;
    pb.post_pad = end;
    pb.stride = stride;
    pb.dilation = dilation;
  }
}

/// The operands' alignments of a Problem from its key (entries 2 to 6: x, w, y, bias,
/// residual).
void set_alignments(Problem& pb, const ProblemFlags& flags) {
  pb.align_x = flags[2];
  pb.align_w = flags[3];
  pb.align_y = flags[4];
  pb.align_bias = flags[5];
  pb.align_residual = flags[6];
}

}  // namespace

ConvGraphStatus run_conv_graph(const ConvolutionParams& p, const CudaArgs& a, const void* bias,
                               const void* residual, const ConvGraphOptions& options,
                               std::string* why) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& y = a.out();
  // The legacy fused call documents z = y (in place); the graph API does not: legacy path.
  if (residual != nullptr && overlaps(residual, y.data, y.nbytes())) {
    return ConvGraphStatus::kNotCovered;
  }
  Call call;
  call.ops.x = x.data;
  call.ops.w = w.data;
  call.ops.y = y.data;
  call.ops.bias = bias;
  call.ops.residual = residual;
  call.x_dims = &x.dims;
  call.w_dims = &w.dims;
  call.y_dims = &y.dims;
  call.flags = {bias != nullptr, residual != nullptr, align16(x.data), align16(w.data),
                align16(y.data), align16(bias),       align16(residual)};
  // The epilogue pass sees y as [outer, channels, plane]: NHWC is [N*H*W, C, 1].
  call.epilogue_pass.p = &p;
  call.epilogue_pass.y = &y;
  call.epilogue_pass.bias = bias;
  call.epilogue_pass.residual = residual;
  call.epilogue_pass.channels = p.channels_last ? y.dims.at(3) : y.dims.at(1);
  call.epilogue_pass.plane =
      p.channels_last ? 1 : y.numel() / (y.dims[0] * call.epilogue_pass.channels);
  call.epilogue_pass.stream = a.stream();
  auto fill = [&](Call& c) {
    const size_t nsp = p.stride.size();
    const bool shapes_ok = nsp >= 1 && nsp <= 3 && x.dims.size() == nsp + 2 &&
                           w.dims.size() == nsp + 2 && y.dims.size() == nsp + 2 &&
                           (!p.channels_last || nsp == 2);
    if (!conv_graph_selected() || !shapes_ok) return false;
    Problem& pb = c.pb;
    pb.dtype = pb.out_dtype = pb.epilogue_dtype = x.dtype;
    pb.channels_last = p.channels_last;
    pb.x = logical_dims(x.dims, p.channels_last);
    pb.w = logical_dims(w.dims, p.channels_last);
    pb.y = logical_dims(y.dims, p.channels_last);
    set_geometry(pb, nsp, p.padding_begin, p.padding_end, p.stride, p.dilation);
    pb.scale = static_cast<float>(p.epilogue.scale);
    pb.bias = bias != nullptr;
    pb.residual = residual != nullptr;
    pb.relu = p.epilogue.fused_activation && p.epilogue.activation == ActivationType::kRelu;
    set_alignments(pb, c.flags);
    c.precision = x.dtype == DataType::kF32 ? Precision::kF32 : Precision::kHalf;
    // The fused graph takes what cudnnConvolutionBiasActivationForward takes on the legacy
    // path: a bias, and relu or no activation.
    c.fusable = options.fusion != ConvGraphOptions::Fusion::kOff && bias != nullptr &&
                (!p.epilogue.fused_activation || pb.relu);
    c.force_fused = options.fusion == ConvGraphOptions::Fusion::kForce;
    return true;
  };
  return run_call(call, fill, a, options, why);
}

ConvGraphStatus run_quantized_conv_graph(const QuantizedConvolutionParams& p,
                                         const ProductEpilogue& e, const CudaArgs& a,
                                         const ConvGraphOptions& options, std::string* why) {
  const DeviceTensor& x = a.in(0);
  const DeviceTensor& w = a.in(1);
  DeviceTensor& y = a.out();
  if (e.residual != nullptr && overlaps(e.residual, y.data, y.nbytes())) {
    return ConvGraphStatus::kNotCovered;
  }
  Call call;
  call.ops = {x.data,    w.data,    y.data,      e.bias,          e.residual,
              e.x_scale, e.w_scale, e.out_scale, e.residual_scale};
  call.x_dims = &x.dims;
  call.w_dims = &w.dims;
  call.y_dims = &y.dims;
  call.flags = {e.bias != nullptr,    e.residual != nullptr, align16(x.data),
                align16(w.data),      align16(y.data),       align16(e.bias),
                align16(e.residual),  e.per_channel,         e.out_scale != nullptr};
  auto fill = [&](Call& c) {
    if (!conv_graph_selected()) return false;
    Problem& pb = c.pb;
    pb.dtype = x.dtype;
    pb.out_dtype = y.dtype;
    pb.epilogue_dtype = p.out;
    pb.channels_last = true;
    pb.x = logical_dims(x.dims, true);
    pb.w = logical_dims(w.dims, true);
    pb.y = logical_dims(y.dims, true);
    set_geometry(pb, 2, p.padding_begin, p.padding_end, p.stride, p.dilation);
    pb.scale = e.scale;
    pb.bias = e.bias != nullptr;
    pb.residual = e.residual != nullptr;
    pb.relu = e.activation;
    pb.quantized = true;
    pb.w_per_channel = e.per_channel;
    pb.requantize = e.out_scale != nullptr;
    pb.quant_min = e.quant_min;
    pb.quant_max = e.quant_max;
    pb.residual_int8 = e.residual_scale != nullptr;
    set_alignments(pb, c.flags);
    c.precision = Precision::kQuantized;
    c.fusable = true;
    c.unfused = false;  // the scales need the epilogue: the fused graph or none
    c.force_fused = true;
    c.int32_retry = x.dtype == DataType::kI8;
    return true;
  };
  return run_call(call, fill, a, options, why);
}

bool conv_graph_selected() {
  const char* e = std::getenv("EMBER_CUDNN_CONV");
  return e == nullptr || std::string(e) != "legacy";
}

ConvGraphCounters conv_graph_counters() {
  ConvGraphCounters c;
  c.preparations = g_preparations.load();
  c.plans = g_plans.load();
  c.executions = g_executions.load();
  c.refusals = g_refusals.load();
  return c;
}

}  // namespace ember::engine::cuda
