// The plan format: round trips, weight alignment, and the corrupted-plan corpus (truncations,
// bit flips, crafted files, fuzzer finds). Every rejection must be an ember::engine::Error and
// nothing may crash; the CI runs this suite under AddressSanitizer (`asan` preset).
#include "plan/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ember/engine/half.h"
#include "ember/engine/network.h"
#include "ember/engine/runtime.h"
#include "plan/serialize.h"
#include "test_plugin.h"

namespace ember::engine {
namespace {

namespace fs = std::filesystem;
using test::affine_attributes;
using test::kTestPluginName;
using test::kTestPluginVersion;
using test::register_test_plugins;

// ---------------------------------------------------------------- helpers

int64_t max_bytes(const Tensor& t, const std::vector<OptimizationProfile>& profiles) {
  int64_t best = 0;
  for (const auto& p : profiles)
    best = std::max(best, shape_numel(t.shape()).bounds(p.intervals()).hi);
  return best * static_cast<int64_t>(dtype_size(t.dtype()));
}

// A plan as the builder would make it, without the builder: every tensor the runtime keeps in
// the arena gets its own 256-aligned slot.
PlanModel make_plan(const Network& net, std::vector<OptimizationProfile> profiles) {
  PlanModel p;
  p.backend = "cpu";
  p.network = net.clone();
  p.profiles = std::move(profiles);
  for (const Layer* l : p.network.layers())
    p.impls.push_back(std::string("cpu.") + layer_kind_name(l->kind()));
  for (const Tensor* t : p.network.tensors()) {
    TensorPlacement placement;
    const Layer* producer = t->producer();
    if (producer != nullptr && producer->kind() != LayerKind::kConstant && !t->is_output()) {
      placement.arena_offset = p.arena_bytes;
      p.arena_bytes += (std::max<int64_t>(max_bytes(*t, p.profiles), 1) + 255) / 256 * 256;
    }
    p.placements.push_back(placement);
  }
  return p;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Recomputes the checksum after a deliberate edit, so the edit reaches the field validation.
void reseal(std::vector<uint8_t>& b) {
  const uint32_t version = static_cast<uint32_t>(b[8]) | static_cast<uint32_t>(b[9]) << 8 |
                           static_cast<uint32_t>(b[10]) << 16 |
                           static_cast<uint32_t>(b[11]) << 24;
  const uint64_t h = plan_checksum(b.data() + kPlanHeaderBytes, b.size() - kPlanHeaderBytes,
                                   version);
  for (int i = 0; i < 8; ++i) b[kPlanChecksumPos + i] = static_cast<uint8_t>(h >> (8 * i));
}

uint64_t get_u64(const std::vector<uint8_t>& b, size_t pos) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(b[pos + i]) << (8 * i);
  return v;
}

void put_le(std::vector<uint8_t>& b, size_t pos, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b[pos + i] = static_cast<uint8_t>(v >> (8 * i));
}

// Position of the `nth` occurrence of `pattern` in `b`.
size_t find_bytes(const std::vector<uint8_t>& b, const std::vector<uint8_t>& pattern, int nth = 0) {
  for (size_t i = 0; i + pattern.size() <= b.size(); ++i) {
    if (std::memcmp(b.data() + i, pattern.data(), pattern.size()) == 0 && nth-- == 0) return i;
  }
  ADD_FAILURE() << "pattern not found in the plan";
  return 0;
}

// `current` as an older format `version` wrote it: the `n` bytes of a field that version lacks,
// at `at`, cut out of the payload (the payload then ends n bytes earlier; the file keeps its
// size and alignment with n zero bytes after it), the header updated and resealed.
std::vector<uint8_t> without_field(const std::vector<uint8_t>& current, size_t at, size_t n,
                                   uint32_t version) {
  std::vector<uint8_t> b = current;
  b.erase(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + n));
  const uint64_t payload = get_u64(current, kPlanPayloadSizePos);
  b.insert(b.begin() + static_cast<std::ptrdiff_t>(kPlanHeaderBytes + payload - n), n, 0);
  put_le(b, kPlanPayloadSizePos, payload - n, 8);
  put_le(b, 8, version, 4);
  reseal(b);
  return b;
}

// A length-prefixed string as the plan stores it.
std::vector<uint8_t> encoded(const std::string& s) {
  std::vector<uint8_t> v(4);
  put_le(v, 0, s.size(), 4);
  v.insert(v.end(), s.begin(), s.end());
  return v;
}

// Everything about one params struct as text, through its fields() list, independent of the
// plan encoding.
class ParamsText {
 public:
  void operator()(const char* name, const int64_t& v) { os_ << name << "=" << v << ";"; }
  void operator()(const char* name, const bool& v) { os_ << name << "=" << v << ";"; }
  void operator()(const char* name, const double& v) { os_ << name << "=" << hex(v) << ";"; }
  void operator()(const char* name, const std::vector<int64_t>& v) {
    os_ << name << "=" << dims_to_string(v) << ";";
  }
  void operator()(const char* name, const std::vector<double>& v) {
    os_ << name << "=[";
    for (double x : v) os_ << hex(x) << ",";
    os_ << "];";
  }
  void operator()(const char* name, const Shape& v) {
    os_ << name << "=" << shape_to_string(v) << ";";
  }
  void operator()(const char* name, const std::string& v) { os_ << name << "='" << v << "';"; }
  void operator()(const char* name, const std::vector<uint8_t>& v) {
    os_ << name << "=";
    for (uint8_t b : v) os_ << static_cast<int>(b) << ",";
    os_ << ";";
  }
  void operator()(const char* name, const Weights& w) {
    os_ << name << "=" << dtype_name(w.dtype()) << dims_to_string(w.dims()) << ":";
    const auto* p = static_cast<const uint8_t*>(w.data());
    for (size_t i = 0; i < w.nbytes(); ++i) os_ << static_cast<int>(p[i]) << ",";
    os_ << ";";
  }
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  void operator()(const char* name, const E& v) {
    os_ << name << "=" << static_cast<int>(v) << ";";
  }
  std::string str() const { return os_.str(); }

 private:
  static std::string hex(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%a", v);
    return buf;
  }
  std::ostringstream os_;
};

std::string params_text(const Layer& l) {
  LayerParams p = l.params();
  ParamsText text;
  visit_layer_fields(p, text);
  return text.str();
}

// One network with every layer kind, non-default parameters, several dtypes, a shared constant,
// an omitted optional input and a symbolic batch dim "n".
Network all_kinds_network() {
  Network net;
  const DimExpr n = DimExpr::symbol("n");
  Tensor* x = net.add_input("x", DataType::kF32, {n, 4, 8, 8});
  Tensor* idx = net.add_input("idx", DataType::kI64, {n, 4, 2, 8});

  std::vector<float> wv(4 * 2 * 3 * 3);
  for (size_t i = 0; i < wv.size(); ++i) wv[i] = 0.25f * static_cast<float>(i) - 3.0f;
  const Weights conv_w = Weights::from_vector<float>(DataType::kF32, {4, 2, 3, 3}, wv);
  Tensor* w = net.add_constant(conv_w, "conv_w")->output();
  Tensor* b =
      net.add_constant(Weights::from_vector<float>(DataType::kF32, {4}, {1, -2, 3, -4}), "conv_b")
          ->output();
  ConvolutionParams cp;
  cp.stride = {2, 1};
  cp.padding_begin = {1, 0};
  cp.padding_end = {0, 1};
  cp.dilation = {1, 2};
  cp.groups = 2;
  Tensor* conv = net.add_convolution(x, w, b, cp, "conv")->output();

  Tensor* dw = net.add_constant(Weights::from_vector<float>(DataType::kF32, {4, 1, 2, 2},
                                                            std::vector<float>(16, 0.5f)),
                                "deconv_w")
                   ->output();
  DeconvolutionParams dp;
  dp.stride = {2, 2};
  dp.padding_begin = {1, 0};
  dp.padding_end = {0, 1};
  dp.dilation = {1, 1};
  dp.output_padding = {1, 0};
  dp.groups = 2;
  Tensor* deconv = net.add_deconvolution(conv, dw, nullptr, dp, "deconv")->output();

  PoolingParams pp;
  pp.type = PoolingType::kAverage;
  pp.window = {2, 3};
  pp.stride = {1, 2};
  pp.padding_begin = {1, 1};
  pp.padding_end = {0, 1};
  pp.dilation = {1, 1};
  pp.ceil_mode = true;
  pp.count_include_pad = false;
  pp.divisor_override = 3;
  Tensor* pool = net.add_pooling(conv, pp, "pool")->output();
  Tensor* act = net.add_activation(pool, ActivationType::kLeakyRelu, 0.125, 0.5, "act")->output();
  Tensor* ew = net.add_elementwise(act, act, ElementWiseOp::kSub, "sub")->output();
  Tensor* un = net.add_unary(x, UnaryOp::kSin, "sin")->output();
  Tensor* red = net.add_reduce(un, ReduceOp::kMax, {2, 3}, true, "max")->output();
  TopKParams tp;
  tp.op = TopKOp::kMin;
  tp.k = 2;
  tp.axis = 1;
  tp.index_dtype = DataType::kI32;
  Layer* topk = net.add_layer(tp, {x}, "topk");
  Tensor* sm = net.add_softmax(x, 3, true, "logsoftmax")->output();
  Tensor* mm = net.add_matrix_multiply(sm, false, x, true, "mm")->output();
  ShuffleParams sp;
  sp.first_transpose = {0, 2, 1, 3};
  sp.has_reshape = true;
  sp.reshape = {n, 8, 32};
  sp.second_transpose = {0, 2, 1};
  Tensor* shuf = net.add_shuffle(x, sp, "shuffle")->output();
  Tensor* cat = net.add_concatenation({x, un}, 1, "cat")->output();
  Tensor* slice = net.add_slice(x, {0, 1, 0, 2}, {n, 2, 3, 2}, {1, 2, 2, -1}, "slice")->output();
  GatherParams gp;
  gp.mode = GatherMode::kElement;
  gp.axis = 2;
  Tensor* gat = net.add_gather(x, idx, gp, "gather")->output();
  ScatterParams scp;
  scp.axis = 2;
  scp.reduction = ScatterReduction::kSum;
  Tensor* sc = net.add_scatter(x, idx, gat, scp, "scatter")->output();
  Tensor* gt = net.add_elementwise(x, sm, ElementWiseOp::kGreater, "gt")->output();
  Tensor* sel = net.add_select(gt, x, sc, "select")->output();
  Tensor* cast = net.add_cast(sel, DataType::kF16, "cast")->output();
  Tensor* gs =
      net.add_constant(Weights::from_vector<float>(DataType::kF32, {4}, {1, 2, 3, 4}), "gn_scale")
          ->output();
  Tensor* gb =
      net.add_constant(Weights::from_vector<float>(DataType::kF32, {4}, {0, 1, 0, 1}), "gn_bias")
          ->output();
  NormalizationParams np;
  np.type = NormalizationType::kGroup;
  np.num_groups = 2;
  np.epsilon = 1e-3;
  Tensor* norm = net.add_normalization(x, gs, gb, np, "groupnorm")->output();
  ResizeParams rp;
  rp.mode = ResizeMode::kLinear;
  rp.coordinate = ResizeCoordinate::kHalfPixel;
  rp.rounding = ResizeRounding::kHalfUp;
  rp.output = {n, 4, 16, 12};
  rp.scales = {1.0, 1.0, 2.0, 1.5};
  rp.cubic_coeff = -0.5;
  Tensor* rs = net.add_resize(x, rp, "resize")->output();
  PaddingParams pdp;
  pdp.mode = PaddingMode::kReflect;
  pdp.pre = {0, 0, 1, 2};
  pdp.post = {0, 0, 2, 1};
  pdp.value = 0.5;
  pdp.input_permutation = {1, 0, 2, 3};
  Tensor* pad = net.add_padding(x, pdp, "pad")->output();
  CumulativeParams cup;
  cup.axis = 3;
  cup.exclusive = true;
  cup.reverse = true;
  Tensor* cum = net.add_cumulative(x, cup, "cumsum")->output();
  FillParams fp;
  fp.op = FillOp::kArange;
  fp.shape = {n * 2};
  fp.dtype = DataType::kI32;
  fp.value = 7.0;
  fp.start = 2.0;
  fp.delta = 3.0;
  Tensor* fill = net.add_fill(fp, "arange")->output();
  Tensor* shp = net.add_shape(x, "shape")->output();
  Tensor* id = net.add_identity(x, "identity")->output();
  AttentionParams ap;
  ap.scale = 0.125;
  ap.causal = true;
  Tensor* attn = net.add_layer(ap, {x, x, x, gt}, "attention")->output();
  // Quantization: per-channel int8 with zero points, FP8, and the fused low-precision product.
  Tensor* qs = net.add_constant(Weights::from_vector<float>(DataType::kF32, {4},
                                                            {0.5f, 0.25f, 1.0f, 2.0f}),
                                "q_scale")
                   ->output();
  Tensor* qz =
      net.add_constant(Weights::from_vector<int32_t>(DataType::kI32, {4}, {0, 1, -1, 2}), "q_zero")
          ->output();
  QuantizeParams qp;
  qp.per_channel = true;
  qp.axis = 1;
  qp.quant_min = -100;
  qp.quant_max = 100;
  Tensor* q = net.add_quantize(x, qs, qz, qp, "quantize")->output();
  DequantizeParams dqp;
  dqp.to = DataType::kF16;
  dqp.per_channel = true;
  dqp.axis = 1;
  Tensor* dq = net.add_dequantize(q, qs, qz, dqp, "dequantize")->output();
  Tensor* s1 =
      net.add_constant(Weights::from_vector<float>(DataType::kF32, {1}, {0.125f}), "s1")->output();
  QuantizeParams f8;
  f8.to = DataType::kF8E4M3;
  Tensor* q8 = net.add_quantize(x, s1, nullptr, f8, "quantize_fp8")->output();
  std::vector<int8_t> wqv(24);
  for (size_t i = 0; i < wqv.size(); ++i) wqv[i] = static_cast<int8_t>(static_cast<int>(i) * 11 - 120);
  Tensor* wq = net.add_constant(Weights::from_vector<int8_t>(DataType::kI8, {3, 8}, wqv), "wq")
                   ->output();
  Tensor* ws = net.add_constant(Weights::from_vector<float>(DataType::kF32, {3}, {0.1f, 0.2f, 0.3f}),
                                "wq_scale")
                   ->output();
  QuantizedMatrixMultiplyParams qmp;
  qmp.out = DataType::kBF16;
  qmp.epilogue.fused_activation = true;
  qmp.epilogue.activation = ActivationType::kGeluErf;
  qmp.requantize.enabled = true;
  qmp.requantize.quant_min = -127;
  Tensor* qmm_bias =
      net.add_constant(Weights::from_vector<uint16_t>(DataType::kBF16, {3}, {0x3f80, 0, 0xbf80}),
                       "qmm_bias")
          ->output();
  Tensor* qmm = net.add_layer(qmp, {q, wq, s1, ws, qmm_bias, s1}, "qmm")->output();
  // FP8 products (plan format 14): one requantized to FP8, one with a residual (input 7).
  std::vector<uint8_t> w8v(24);
  for (size_t i = 0; i < w8v.size(); ++i) {
    w8v[i] = f32_to_f8e4m3(0.25f * static_cast<float>(static_cast<int>(i) - 12));
  }
  Tensor* w8 =
      net.add_constant(Weights::from_vector<uint8_t>(DataType::kF8E4M3, {3, 8}, w8v), "w_fp8")
          ->output();
  QuantizedMatrixMultiplyParams q8p;
  q8p.out = DataType::kF16;
  q8p.requantize.enabled = true;
  q8p.requantize.to = DataType::kF8E4M3;
  Tensor* qmm8 = net.add_layer(q8p, {q8, w8, s1, s1, nullptr, s1}, "qmm_fp8")->output();
  DequantizeParams dq8p;
  dq8p.to = DataType::kF16;
  Tensor* res8 = net.add_dequantize(qmm8, s1, nullptr, dq8p, "dequantize_fp8")->output();
  QuantizedMatrixMultiplyParams r8p;
  r8p.out = DataType::kF16;
  Tensor* qmm8r = net.add_layer(r8p, {q8, w8, s1, s1, nullptr, nullptr, nullptr, res8},
                                "qmm_fp8_residual")
                      ->output();
  // The fused int8 convolution: grouped, asymmetric padding, per-channel scales, an f16 bias
  // and an activation in its epilogue.
  std::vector<int8_t> cwv(2 * 2 * 3 * 3);
  for (size_t i = 0; i < cwv.size(); ++i) {
    cwv[i] = static_cast<int8_t>(static_cast<int>(i) * 7 - 60);
  }
  Tensor* cwq =
      net.add_constant(Weights::from_vector<int8_t>(DataType::kI8, {2, 2, 3, 3}, cwv), "qconv_w")
          ->output();
  Tensor* cws = net.add_constant(Weights::from_vector<float>(DataType::kF32, {2}, {0.5f, 0.25f}),
                                 "qconv_w_scale")
                    ->output();
  Tensor* cb = net.add_constant(Weights::from_vector<uint16_t>(DataType::kF16, {2},
                                                               {0x3c00, 0xbc00}),
                                "qconv_bias")
                   ->output();
  QuantizedConvolutionParams qcp;
  qcp.stride = {1, 2};
  qcp.padding_begin = {1, 0};
  qcp.padding_end = {0, 1};
  qcp.dilation = {1, 1};
  qcp.groups = 2;
  qcp.out = DataType::kF16;
  qcp.epilogue.scale = 0.5;
  qcp.epilogue.fused_activation = true;
  qcp.epilogue.activation = ActivationType::kGeluTanh;
  Tensor* qconv = net.add_layer(qcp, {q, cwq, s1, cws, cb}, "qconv")->output();
  // A layer norm that also writes its output as FP8 (plan format 15).
  NormalizationParams qnp;
  qnp.axis = 3;
  qnp.quantize.enabled = true;
  qnp.quantize.to = DataType::kF8E4M3;
  Layer* qnorm = net.add_layer(qnp, {x, nullptr, nullptr, s1}, "qnorm");
  // Other dtypes, an empty constant, and a constant sharing conv_w's bytes (stored once).
  Tensor* half =
      net.add_constant(
             Weights::from_vector<uint16_t>(DataType::kF16, {3}, {0x3c00, 0xc000, 0x7bff}), "half")
          ->output();
  Tensor* i64 =
      net.add_constant(Weights::from_vector<int64_t>(DataType::kI64, {2}, {-1, int64_t{1} << 40}),
                       "i64")
          ->output();
  Tensor* flags =
      net.add_constant(Weights::from_vector<uint8_t>(DataType::kBool, {5}, {1, 0, 1, 1, 0}),
                       "flags")
          ->output();
  Tensor* empty = net.add_constant(Weights::zeros(DataType::kF32, {0, 3}), "empty")->output();
  Tensor* again = net.add_constant(conv_w, "conv_w_again")->output();
  // A fused pointwise program, relu(x) * 2, with a kernel (source, target, image bytes).
  FusedPointwiseParams fpp;
  fpp.program = {static_cast<int64_t>(FusedOpFamily::kActivation), 0, 0, 0, -1, -1,
                static_cast<int64_t>(FusedOpFamily::kScalar), 0, 0, -1, -1, -1,
                static_cast<int64_t>(FusedOpFamily::kElementWise),
                static_cast<int64_t>(ElementWiseOp::kProd), 0, 1, 2, -1};
  fpp.attrs = {0.0, 0.0, 2.0, 0.0, 0.0, 0.0};
  fpp.outputs = {3};
  fpp.kernel_source = "extern \"C\" __global__ void ember_fused_pointwise() {}\n";
  fpp.kernel_target = "sm_90";
  fpp.kernel_image = {0x7f, 'E', 'L', 'F', 1, 2, 3};
  Tensor* fused = net.add_layer(fpp, {x}, "fused")->output();
  // A plugin (its creator name, version and attribute bytes are the params).
  register_test_plugins();
  Layer* plugin = net.add_plugin({x}, kTestPluginName, kTestPluginVersion,
                                 affine_attributes(2.0f, -1.0f), "plugin");

  const std::vector<std::pair<Tensor*, std::string>> outputs = {{deconv, "deconv_out"},
                                                                {ew, "sub_out"},
                                                                {red, "max_out"},
                                                                {topk->output(0), "topk_values"},
                                                                {topk->output(1), ""},
                                                                {mm, "mm_out"},
                                                                {shuf, ""},
                                                                {cat, "cat_out"},
                                                                {slice, "slice_out"},
                                                                {cast, "cast_out"},
                                                                {norm, "norm_out"},
                                                                {rs, "resize_out"},
                                                                {pad, "pad_out"},
                                                                {cum, "cum_out"},
                                                                {fill, "arange_out"},
                                                                {shp, "shape_out"},
                                                                {id, "id_out"},
                                                                {attn, "attn_out"},
                                                                {dq, "dq_out"},
                                                                {q8, "fp8_out"},
                                                                {qmm, "qmm_out"},
                                                                {qmm8r, "qmm_fp8_out"},
                                                                {qconv, "qconv_out"},
                                                                {qnorm->output(0), "qnorm_out"},
                                                                {qnorm->output(1), "qnorm_fp8"},
                                                                {half, "half_out"},
                                                                {i64, ""},
                                                                {flags, "flags_out"},
                                                                {empty, "empty_out"},
                                                                {again, "again_out"},
                                                                {fused, "fused_out"},
                                                                {plugin->output(0), "plugin_out"},
                                                                {plugin->output(1), ""}};
  for (const auto& [t, name] : outputs) net.mark_output(t, name);
  return net;
}

std::vector<OptimizationProfile> two_profiles() {
  std::vector<OptimizationProfile> p(2);
  p[0].set_range("n", 1, 2, 4);
  p[1].set_range("n", 3, 6, 8);
  return p;
}

const std::vector<uint8_t>& all_kinds_plan() {
  static const std::vector<uint8_t> bytes =
      plan_write(make_plan(all_kinds_network(), two_profiles()));
  return bytes;
}

// The smallest interesting plan: x [n, 2] + constant -> intermediate (in the arena) -> identity.
Network tiny_network() {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {DimExpr::symbol("n"), 2});
  Tensor* c =
      net.add_constant(Weights::from_vector<float>(DataType::kF32, {2}, {1, 2}), "c")->output();
  Tensor* s = net.add_elementwise(x, c, ElementWiseOp::kSum, "add")->output();
  net.mark_output(net.add_identity(s, "ident")->output(), "y");
  return net;
}

std::vector<uint8_t> tiny_plan() {
  std::vector<OptimizationProfile> p(1);
  p[0].set_range("n", 1, 2, 3);
  return plan_write(make_plan(tiny_network(), p));
}

// Reads `b` and expects an Error (never another exception, never a crash); returns its message.
std::string expect_rejected(const std::vector<uint8_t>& b, size_t size, bool verify,
                            const std::string& what) {
  PlanReadOptions options;
  options.verify_checksum = verify;
  try {
    plan_read(b.data(), size, options);
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("plan: ", 0), 0u) << what << ": " << m;
    return m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-Error exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << what << ": was accepted";
  return "";
}

// Reads `b`; either outcome is fine as long as a failure is an Error.
bool load_or_error(const uint8_t* data, size_t size, bool verify, const std::string& what) {
  PlanReadOptions options;
  options.verify_checksum = verify;
  try {
    plan_read(data, size, options);
    return true;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("plan: ", 0), 0u) << what << ": " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-Error exception: " << e.what();
  }
  return false;
}

// ---------------------------------------------------------------- round trips

TEST(PlanFormat, RoundTripEveryLayerKindIsByteIdentical) {
  const PlanModel original = make_plan(all_kinds_network(), two_profiles());
  std::set<LayerKind> kinds;
  for (const Layer* l : original.network.layers()) kinds.insert(l->kind());
  ASSERT_EQ(kinds.size(), static_cast<size_t>(kNumLayerKinds))
      << "the test network must use every kind";

  const std::vector<uint8_t> bytes = plan_write(original);
  const PlanModel read = plan_read(bytes.data(), bytes.size());
  EXPECT_EQ(plan_write(read), bytes);

  EXPECT_EQ(read.backend, "cpu");
  EXPECT_EQ(read.arena_bytes, original.arena_bytes);
  EXPECT_EQ(read.impls, original.impls);
  ASSERT_EQ(read.profiles.size(), 2u);
  EXPECT_EQ(read.profiles[1].ranges().at("n").opt, 6);
  EXPECT_EQ(read.profiles[1].ranges().at("n").max, 8);
  const auto la = original.network.layers(), lb = read.network.layers();
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    SCOPED_TRACE(la[i]->describe());
    EXPECT_EQ(lb[i]->name(), la[i]->name());
    EXPECT_EQ(lb[i]->kind(), la[i]->kind());
    EXPECT_EQ(params_text(*lb[i]), params_text(*la[i]));
    ASSERT_EQ(lb[i]->inputs().size(), la[i]->inputs().size());
    for (size_t j = 0; j < la[i]->inputs().size(); ++j) {
      const Tensor* ta = la[i]->inputs()[j];
      const Tensor* tb = lb[i]->inputs()[j];
      ASSERT_EQ(ta == nullptr, tb == nullptr);
      if (ta != nullptr) {
        EXPECT_EQ(tb->id(), ta->id());
      }
    }
    ASSERT_EQ(lb[i]->outputs().size(), la[i]->outputs().size());
    for (size_t j = 0; j < la[i]->outputs().size(); ++j) {
      EXPECT_EQ(lb[i]->output(j)->dtype(), la[i]->output(j)->dtype());
      EXPECT_EQ(shape_to_string(lb[i]->output(j)->shape()),
                shape_to_string(la[i]->output(j)->shape()));
    }
  }
  const auto ta = original.network.tensors(), tb = read.network.tensors();
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(read.placements[i].arena_offset, original.placements[i].arena_offset) << i;
    EXPECT_EQ(tb[i]->is_output(), ta[i]->is_output());
    if (ta[i]->is_input() || ta[i]->is_output()) {
      EXPECT_EQ(tb[i]->name(), ta[i]->name());
    }
  }
  ASSERT_EQ(read.network.outputs().size(), original.network.outputs().size());
  for (size_t i = 0; i < original.network.outputs().size(); ++i) {
    EXPECT_EQ(read.network.outputs()[i]->name(), original.network.outputs()[i]->name());
  }
  // Symbolic shapes survive as expressions.
  EXPECT_EQ(shape_to_string(read.network.find_tensor("arange_out")->shape()),
            shape_to_string(original.network.find_tensor("arange_out")->shape()));
  EXPECT_FALSE(shape_is_static(read.network.find_tensor("arange_out")->shape()));
}

TEST(PlanFormat, WeightsAreAlignedTo256InTheFileAndInMemory) {
  const PlanModel original = make_plan(all_kinds_network(), two_profiles());
  const std::vector<uint8_t>& bytes = all_kinds_plan();
  const uint64_t weights_offset = get_u64(bytes, kPlanWeightsOffsetPos);
  EXPECT_EQ(weights_offset % kPlanWeightAlignment, 0u);
  EXPECT_EQ(weights_offset + get_u64(bytes, kPlanWeightsSizePos), bytes.size());
  for (const Layer* l : original.network.layers()) {
    if (l->kind() != LayerKind::kConstant) continue;
    const Weights& w = l->params_as<ConstantParams>().weights;
    if (w.nbytes() == 0) continue;
    bool found = false;
    for (size_t pos = weights_offset; !found && pos + w.nbytes() <= bytes.size();
         pos += kPlanWeightAlignment) {
      found = std::memcmp(bytes.data() + pos, w.data(), w.nbytes()) == 0;
    }
    EXPECT_TRUE(found) << l->describe() << " is not stored at a 256-aligned file offset";
  }
  const PlanModel read = plan_read(bytes.data(), bytes.size());
  for (const Layer* l : read.network.layers()) {
    if (l->kind() != LayerKind::kConstant) continue;
    const auto addr = reinterpret_cast<uintptr_t>(l->params_as<ConstantParams>().weights.data());
    EXPECT_EQ(addr % kPlanWeightAlignment, 0u) << l->describe();
  }
  // A constant used twice is stored once and shared again after reading.
  EXPECT_EQ(read.network.find_layer("conv_w")->params_as<ConstantParams>().weights.data(),
            read.network.find_layer("conv_w_again")->params_as<ConstantParams>().weights.data());
}

TEST(PlanFormat, WriterCanonicalizesTensorOrder) {
  // An input added after a layer: tensors() is not in canonical order, the plan is.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  Tensor* r = net.add_activation(x, ActivationType::kRelu, 0, 0, "relu")->output();
  Tensor* y = net.add_input("y", DataType::kF32, {2, 3});
  net.mark_output(net.add_elementwise(r, y, ElementWiseOp::kProd, "mul")->output(), "out");
  PlanModel p;
  p.backend = "cpu";
  p.network = std::move(net);
  p.profiles.emplace_back();
  p.impls = {"cpu.Activation", "cpu.ElementWise"};
  p.placements.resize(4);
  p.placements[r->id()].arena_offset = 256;  // r is tensor 1 here, tensor 2 in canonical order
  p.arena_bytes = 512;
  const auto bytes = plan_write(p);
  const PlanModel read = plan_read(bytes.data(), bytes.size());
  EXPECT_EQ(read.network.tensors()[1]->name(), "y");
  EXPECT_EQ(read.placements[2].arena_offset, 256);
  EXPECT_EQ(read.placements[1].arena_offset, -1);
  EXPECT_EQ(plan_write(read), bytes);
}

TEST(PlanFormat, WriterRejectsInconsistentModels) {
  PlanModel p = make_plan(tiny_network(), {});
  p.impls.pop_back();
  EXPECT_NE(error_of([&] { plan_write(p); }).find("implementations"), std::string::npos);
  PlanModel q = make_plan(tiny_network(), {});
  q.placements.push_back({});
  EXPECT_NE(error_of([&] { plan_write(q); }).find("placements"), std::string::npos);
}

TEST(PlanFormat, ReaderChecksArenaPlacementsAgainstProfiles) {
  std::vector<OptimizationProfile> profiles(1);
  profiles[0].set_range("n", 1, 2, 3);
  PlanModel p = make_plan(tiny_network(), profiles);
  // The intermediate [n, 2] f32 needs 24 bytes at n = 3.
  p.arena_bytes = 23;
  auto bytes = plan_write(p);
  EXPECT_NE(error_of([&] { plan_read(bytes.data(), bytes.size()); }).find("past the 23-byte arena"),
            std::string::npos);
  p.arena_bytes = 24;
  bytes = plan_write(p);
  EXPECT_NO_THROW(plan_read(bytes.data(), bytes.size()));
  // An intermediate without a slot would leave the runtime without memory for it.
  p.placements[p.network.find_layer("add")->output()->id()].arena_offset = -1;
  bytes = plan_write(p);
  EXPECT_NE(error_of([&] { plan_read(bytes.data(), bytes.size()); }).find("no place in the arena"),
            std::string::npos);
}

// ---------------------------------------------------------------- corrupted plans

TEST(PlanFormatCorrupt, EveryTruncationIsRejected) {
  for (const auto& bytes : {tiny_plan(), all_kinds_plan()}) {
    for (size_t len = 0; len < bytes.size(); ++len) {
      expect_rejected(bytes, len, true, "truncated to " + std::to_string(len));
      expect_rejected(bytes, len, false, "truncated to " + std::to_string(len) + " (no checksum)");
    }
  }
}

TEST(PlanFormatCorrupt, TruncatedPayloadsWithAConsistentHeaderAreRejected) {
  // Cut the payload and fix the header around it, so the cursor itself must notice the missing
  // bytes: at every length for the tiny plan, at every 4th for the plan with every layer kind.
  for (const auto& [bytes, stride] :
       {std::pair{tiny_plan(), size_t{1}}, {all_kinds_plan(), size_t{4}}}) {
    const size_t payload = get_u64(bytes, kPlanPayloadSizePos);
    const size_t woff = get_u64(bytes, kPlanWeightsOffsetPos);
    for (size_t len = 0; len < payload; len += stride) {
      std::vector<uint8_t> b(bytes.begin(), bytes.begin() + kPlanHeaderBytes + len);
      const size_t new_woff = (b.size() + 255) / 256 * 256;
      b.resize(new_woff, 0);
      b.insert(b.end(), bytes.begin() + woff, bytes.end());
      put_le(b, kPlanPayloadSizePos, len, 8);
      put_le(b, kPlanWeightsOffsetPos, new_woff, 8);
      reseal(b);
      const std::string m =
          expect_rejected(b, b.size(), true, "payload cut at " + std::to_string(len));
      EXPECT_NE(m.find(" at byte "), std::string::npos) << m;
    }
  }
}

// Every bit of the tiny plan. Of the plan with every layer kind: one bit of every header byte,
// of every 3rd payload byte and of every 64th weight byte (a flipped weight only changes a
// value), cycling through the bit positions: every kind of field is hit, fast enough for ASan.
template <class F>
void for_each_bit_flip(std::vector<uint8_t> b, bool every_bit, F&& check) {
  const size_t weights = get_u64(b, kPlanWeightsOffsetPos);
  auto step = [&](size_t i) -> size_t {
    if (every_bit || i < kPlanHeaderBytes) return 1;
    return i < weights ? 3 : 64;
  };
  for (size_t i = 0; i < b.size(); i += step(i)) {
    for (int k = 0; k < (every_bit ? 8 : 1); ++k) {
      const int bit = every_bit ? k : static_cast<int>(i % 8);
      b[i] ^= static_cast<uint8_t>(1u << bit);
      check(b, "bit " + std::to_string(bit) + " of byte " + std::to_string(i));
      b[i] ^= static_cast<uint8_t>(1u << bit);
    }
  }
}

TEST(PlanFormat, ChecksumPerVersion) {
  // Before version 13 the checksum is byte-wise FNV-1a 64; from 13 the word-wise lanes, which
  // a change to any one byte (in each lane's words and in the tail) also changes.
  std::vector<uint8_t> bytes(32 * 5 + 7);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 37 + 11);
  EXPECT_EQ(plan_checksum(bytes.data(), bytes.size(), 12), fnv1a64(bytes.data(), bytes.size()));
  const uint64_t base = plan_checksum(bytes.data(), bytes.size(), 13);
  EXPECT_NE(base, fnv1a64(bytes.data(), bytes.size()));
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; bit += 7) {
      bytes[i] ^= static_cast<uint8_t>(1u << bit);
      EXPECT_NE(plan_checksum(bytes.data(), bytes.size(), 13), base) << "byte " << i;
      bytes[i] ^= static_cast<uint8_t>(1u << bit);
    }
  }
  // Two equal words swapped between lanes, and a shorter input, change it too.
  std::swap(bytes[0], bytes[8]);
  EXPECT_NE(plan_checksum(bytes.data(), bytes.size(), 13), base);
  std::swap(bytes[0], bytes[8]);
  EXPECT_NE(plan_checksum(bytes.data(), bytes.size() - 1, 13), base);
  EXPECT_EQ(plan_format_version(), 18u);
  for (uint32_t v = 14; v <= 18; ++v) {  // 14 to 18 keep 13's
    EXPECT_EQ(plan_checksum(bytes.data(), bytes.size(), v), base) << v;
  }
}

TEST(PlanFormatCorrupt, EverySingleBitFlipIsCaughtByTheChecksum) {
  auto check = [](const std::vector<uint8_t>& b, const std::string& what) {
    // The version field sits outside the checksum, and older readable versions share the
    // layout: a flip to one of them is a valid older plan when the plan holds no newer kind
    // (the tiny plan), and is rejected naming the kind otherwise (the all-kinds plan).
    const uint32_t version = static_cast<uint32_t>(b[8]) | static_cast<uint32_t>(b[9]) << 8 |
                             static_cast<uint32_t>(b[10]) << 16 |
                             static_cast<uint32_t>(b[11]) << 24;
    if (version != kPlanFormatVersion && version >= kPlanMinReadableVersion &&
        version < kPlanFormatVersion && load_or_error(b.data(), b.size(), true, what)) {
      return;
    }
    expect_rejected(b, b.size(), true, what);
  };
  for_each_bit_flip(tiny_plan(), true, check);
  for_each_bit_flip(all_kinds_plan(), false, check);
}

TEST(PlanFormatCorrupt, BitFlipsWithoutChecksumLoadOrFailCleanly) {
  // Past the checksum every field is validated on its own; a flip either makes another valid
  // plan (a weight value, a double parameter) or is rejected with an Error.
  int loaded = 0;
  auto check = [&](const std::vector<uint8_t>& b, const std::string& what) {
    loaded += load_or_error(b.data(), b.size(), false, what);
  };
  for_each_bit_flip(tiny_plan(), true, check);
  for_each_bit_flip(all_kinds_plan(), false, check);
  EXPECT_GT(loaded, 0);  // weight bytes at least
}

TEST(PlanFormatCorrupt, WrongMagic) {
  auto b = tiny_plan();
  b[0] = 'X';
  EXPECT_NE(expect_rejected(b, b.size(), true, "magic").find("not an Ember plan"),
            std::string::npos);
}

TEST(PlanFormatCorrupt, WrongVersionSaysWhichVersions) {
  auto b = tiny_plan();
  put_le(b, 8, 99, 4);
  const std::string m = expect_rejected(b, b.size(), true, "version");
  EXPECT_NE(m.find("format version 99"), std::string::npos) << m;
  EXPECT_NE(m.find("reads versions 5 to " + std::to_string(kPlanFormatVersion)),
            std::string::npos)
      << m;
}

TEST(PlanFormat, Version5PlansStillLoad) {
  // Version 6 added layer kinds and a dtype, not fields: a version-5 plan reads as it did.
  const auto current = tiny_plan();
  auto b = current;
  put_le(b, 8, 5, 4);
  reseal(b);  // older versions have the byte-wise checksum
  const PlanModel m = plan_read(b.data(), b.size());
  const PlanModel want = plan_read(current.data(), current.size());
  EXPECT_EQ(m.network.layers().size(), want.network.layers().size());
  put_le(b, 8, 4, 4);
  EXPECT_NE(expect_rejected(b, b.size(), true, "version").find("format version 4"),
            std::string::npos);
}

/// One NCHW 1x1 QuantizedConvolution (int8, per-tensor scales, no bias): the plan-version tests'
/// network.
Network one_qconv_network() {
  Network net;
  Tensor* x = net.add_input("x", DataType::kI8, {1, 4, 5, 5});
  Tensor* w = net.add_constant(Weights::from_vector(DataType::kI8, {4, 4, 1, 1},
                                                    std::vector<int8_t>(16, 1)),
                               "w")
                  ->output();
  Tensor* s = net.add_constant(Weights::from_vector<float>(DataType::kF32, {1}, {0.5f}), "s")
                  ->output();
  QuantizedConvolutionParams p;
  p.stride = p.dilation = {1, 1};
  p.padding_begin = p.padding_end = {0, 0};
  net.mark_output(net.add_layer(p, {x, w, s, s}, "qconv")->output(), "y");
  return net;
}

TEST(PlanFormat, Version6PlansLoadButCannotHoldAQuantizedConvolution) {
  // Version 7 added the QuantizedConvolution kind only: a version-6 plan without one reads as
  // it did, and one that claims to hold it is refused, naming the version that added it.
  const auto current = tiny_plan();
  auto b = current;
  put_le(b, 8, 6, 4);
  reseal(b);  // older versions have the byte-wise checksum
  EXPECT_EQ(plan_read(b.data(), b.size()).network.layers().size(),
            plan_read(current.data(), current.size()).network.layers().size());
  auto plan = plan_write(make_plan(one_qconv_network(), std::vector<OptimizationProfile>(1)));
  put_le(plan, 8, 6, 4);
  reseal(plan);  // older versions have the byte-wise checksum
  const std::string m =
      expect_rejected(plan, plan.size(), false, "version 6 with a QuantizedConvolution");
  EXPECT_NE(m.find("is a QuantizedConvolution layer, which format version 6 does not have "
                   "(version 7 added it)"),
            std::string::npos)
      << m;
}

/// One int8 QuantizedMatrixMultiply [2, 8] x [4, 8]^T to f16 (per-tensor scales, no bias),
/// requantized or not: the plan-version tests' network.
Network one_qmm_network(bool requantize) {
  Network net;
  Tensor* a = net.add_input("a", DataType::kI8, {2, 8});
  Tensor* b = net.add_constant(Weights::from_vector(DataType::kI8, {4, 8},
                                                    std::vector<int8_t>(32, 3)),
                               "b")
                  ->output();
  Tensor* s = net.add_constant(Weights::from_vector<float>(DataType::kF32, {1}, {0.5f}), "s")
                  ->output();
  QuantizedMatrixMultiplyParams p;
  p.out = DataType::kF16;
  p.requantize.enabled = requantize;
  std::vector<Tensor*> inputs{a, b, s, s};
  if (requantize) inputs.insert(inputs.end(), {nullptr, s});
  net.mark_output(net.add_layer(p, inputs, "qmm")->output(), "y");
  return net;
}

TEST(PlanFormat, Version6QuantizedMatrixMultiplyReadsWithoutItsEpilogueFields) {
  // Version 6 stored a QuantizedMatrixMultiply's output type only; version 7 added its epilogue
  // and requantization fields. Cutting those (the defaults) out of a current plan gives the
  // version-6 bytes, which must read back to the same network: written again, the current plan.
  const std::vector<uint8_t> current =
      plan_write(make_plan(one_qmm_network(false), std::vector<OptimizationProfile>(1)));
  // The layer's params follow its implementation name and its four input ids; `out` is 1 byte,
  // then the epilogue (f64, bool, enum, f64, f64) and the requantization (bool, i64, i64, and
  // from version 14 its `to`, an enum).
  constexpr size_t kNewFieldBytes = 8 + 1 + 1 + 8 + 8 + 1 + 8 + 8 + 1;
  const size_t params_at = find_bytes(current, encoded("cpu.QuantizedMatrixMultiply")) + 4 +
                           std::string("cpu.QuantizedMatrixMultiply").size() + 4 + 4 * 4;
  std::vector<uint8_t> v6 = current;
  v6.erase(v6.begin() + static_cast<std::ptrdiff_t>(params_at + 1),
           v6.begin() + static_cast<std::ptrdiff_t>(params_at + 1 + kNewFieldBytes));
  // The payload shrinks; zeros keep the weights where they were.
  const size_t payload_end = kPlanHeaderBytes + get_u64(current, kPlanPayloadSizePos) -
                             kNewFieldBytes;
  v6.insert(v6.begin() + static_cast<std::ptrdiff_t>(payload_end), kNewFieldBytes, 0);
  put_le(v6, kPlanPayloadSizePos, get_u64(current, kPlanPayloadSizePos) - kNewFieldBytes, 8);
  put_le(v6, 8, 6, 4);
  reseal(v6);
  const PlanModel read = plan_read(v6.data(), v6.size());
  EXPECT_EQ(plan_write(read), current);
}

TEST(PlanFormat, Version8QuantizedConvolutionReadsWithoutChannelsLast) {
  // Version 9 added a QuantizedConvolution's channels_last (its last field), version 14 the
  // requantization's `to` just before it. Cutting both (i8 and false) out of a current plan
  // gives the version-8 bytes, cutting `to` alone the version-13 ones; both must read back to
  // the same network: written again, the current plan.
  const std::vector<uint8_t> current =
      plan_write(make_plan(one_qconv_network(), std::vector<OptimizationProfile>(1)));
  // After the implementation name and the four input ids: four 2-element int64 vectors
  // (4 + 16 bytes each), groups (8), out (1), the epilogue (f64, bool, enum, f64, f64), the
  // requantization (bool, i64, i64, enum `to`), then channels_last (1).
  const std::string impl = "cpu.QuantizedConvolution";
  const size_t params_at = find_bytes(current, encoded(impl)) + 4 + impl.size() + 4 + 4 * 4;
  const size_t to_at = params_at + 4 * 20 + 8 + 1 + (8 + 1 + 1 + 8 + 8) + (1 + 8 + 8);
  ASSERT_EQ(current[to_at], static_cast<uint8_t>(DataType::kI8));
  ASSERT_EQ(current[to_at + 1], 0);
  const std::vector<uint8_t> v8 = without_field(current, to_at, 2, 8);
  EXPECT_EQ(plan_write(plan_read(v8.data(), v8.size())), current);
  const std::vector<uint8_t> v13 = without_field(current, to_at, 1, 13);
  EXPECT_EQ(plan_write(plan_read(v13.data(), v13.size())), current);
}

TEST(PlanFormat, Version13QuantizedMatrixMultiplyReadsWithoutRequantizeTo) {
  // Version 14 added the requantization's `to` (FP8 requantization; the product's last field).
  // Cutting it (i8) out of a current plan gives the version-13 bytes, which read back to the
  // same network.
  const std::vector<uint8_t> current =
      plan_write(make_plan(one_qmm_network(true), std::vector<OptimizationProfile>(1)));
  // out (1), the epilogue (f64, bool, enum, f64, f64), the requantization (bool, i64, i64),
  // then `to`, after the implementation name and the six input ids.
  const std::string impl = "cpu.QuantizedMatrixMultiply";
  const size_t to_at = find_bytes(current, encoded(impl)) + 4 + impl.size() + 4 + 6 * 4 + 1 +
                       (8 + 1 + 1 + 8 + 8) + (1 + 8 + 8);
  ASSERT_EQ(current[to_at], static_cast<uint8_t>(DataType::kI8));
  const std::vector<uint8_t> v13 = without_field(current, to_at, 1, 13);
  const PlanModel read = plan_read(v13.data(), v13.size());
  EXPECT_EQ(read.network.outputs()[0]->dtype(), DataType::kI8);
  EXPECT_EQ(plan_write(read), current);
}

TEST(PlanFormat, Version14NormalizationReadsWithoutItsQuantizeFields) {
  // Version 15 added a Normalization's quantized output (its last five fields). Cutting them
  // (off, i8, -128, 127, true) out of a current plan gives the version-14 bytes, which read
  // back to the same network.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 8});
  NormalizationParams p;
  net.mark_output(net.add_normalization(x, nullptr, nullptr, p, "ln")->output(), "y");
  const std::vector<uint8_t> current =
      plan_write(make_plan(net, std::vector<OptimizationProfile>(1)));
  // After the implementation name and the three input ids: type (1), axis (8), num_groups (8),
  // epsilon (8), then quantize (1), quantize_to (1), quantize_min (8), quantize_max (8) and
  // float_output (1).
  const std::string impl = "cpu.Normalization";
  const size_t at = find_bytes(current, encoded(impl)) + 4 + impl.size() + 4 + 3 * 4 + 1 + 8 +
                    8 + 8;
  ASSERT_EQ(current[at], 0);                                      // quantize off
  ASSERT_EQ(current[at + 1], static_cast<uint8_t>(DataType::kI8));  // quantize_to
  ASSERT_EQ(current[at + 18], 1);                                 // float_output
  const std::vector<uint8_t> v14 = without_field(current, at, 19, 14);
  const PlanModel read = plan_read(v14.data(), v14.size());
  EXPECT_EQ(read.network.outputs()[0]->dtype(), DataType::kF32);
  EXPECT_EQ(plan_write(read), current);
}

TEST(PlanFormat, Version15And16PaddingsReadWithoutTheirInputPermutationAndView) {
  // Version 16 added a Padding's input permutation, version 17 its input view (its last two
  // fields, int64 lists). Cutting the empty view (its 4-byte count) out of a current plan gives
  // the version-16 bytes, and cutting the permutation's count too the version-15 bytes; both
  // read back to the same network.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  PaddingParams p;
  p.pre = {0, 1};
  p.post = {2, 0};
  net.mark_output(net.add_padding(x, p, "pad")->output(), "y");
  const std::vector<uint8_t> current =
      plan_write(make_plan(net, std::vector<OptimizationProfile>(1)));
  // After the implementation name and the one input id: mode (1), pre and post (4 + 16 each),
  // value (8), then the permutation's and the view's counts (4 each).
  const std::string impl = "cpu.Padding";
  const size_t at = find_bytes(current, encoded(impl)) + 4 + impl.size() + 4 + 4 + 1 + 20 + 20 + 8;
  for (size_t i = 0; i < 8; ++i) ASSERT_EQ(current[at + i], 0) << i;
  for (const auto& [version, bytes] : {std::pair<uint32_t, size_t>{16, 4}, {15, 8}}) {
    const std::vector<uint8_t> old = without_field(current, at + 8 - bytes, bytes, version);
    const PlanModel read = plan_read(old.data(), old.size());
    EXPECT_EQ(read.network.outputs()[0]->shape(), (Shape{4, 4})) << version;
    EXPECT_EQ(plan_write(read), current) << version;
  }
}

TEST(PlanFormat, Version9And17FusedPointwiseReadWithoutViewsAndSlices) {
  // Version 10 added a FusedPointwise layer's input views, version 18 its slices (its last two
  // fields, int64 lists). Cutting the empty slices (a 4-byte count) out of a current plan gives
  // the version-17 bytes, and cutting the views' count too the version-9 bytes; both must read
  // back to the same network: written again, the current plan.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 3});
  FusedPointwiseParams fp;  // relu(x): one step
  fp.program = {static_cast<int64_t>(FusedOpFamily::kActivation),
                static_cast<int64_t>(ActivationType::kRelu), static_cast<int64_t>(DataType::kF32),
                0, -1, -1};
  fp.attrs = {0.0, 0.0};
  fp.outputs = {1};
  net.mark_output(net.add_layer(fp, {x}, "fused")->output(), "y");
  const std::vector<uint8_t> current =
      plan_write(make_plan(net, std::vector<OptimizationProfile>(1)));
  // After the implementation name and the one input id: program (4 + 48), attrs (4 + 16),
  // outputs (4 + 8), an empty kernel source, target and image (4 each), then the views' and
  // the slices' counts (4 each).
  const std::string impl = "cpu.FusedPointwise";
  const size_t params_at = find_bytes(current, encoded(impl)) + 4 + impl.size() + 4 + 4;
  const size_t views_at = params_at + 52 + 20 + 12 + 12;
  ASSERT_EQ(get_u64(current, views_at), 0u);
  for (const auto& [version, bytes] : {std::pair<uint32_t, size_t>{17, 4}, {9, 8}}) {
    const std::vector<uint8_t> old = without_field(current, views_at + 8 - bytes, bytes, version);
    const PlanModel read = plan_read(old.data(), old.size());
    EXPECT_EQ(plan_write(read), current) << version;
  }
}

TEST(PlanFormat, Version10AttentionReadsWithoutSeqMajorOperands) {
  // Version 11 added Attention's seq_major_operands (an int64), version 12 the views and
  // out_dims after it (two empty lists: two u32 counts). Cutting the 0 and the two counts out of
  // a current plan gives the version-10 bytes, which must read back to the same network.
  Network net;
  Tensor* q = net.add_input("q", DataType::kF32, {1, 2, 3, 4});
  net.mark_output(net.add_layer(AttentionParams{}, {q, q, q}, "attn")->output(), "y");
  const std::vector<uint8_t> current =
      plan_write(make_plan(net, std::vector<OptimizationProfile>(1)));
  // After the implementation name and the three input ids: scale (8), causal (1), seq_major
  // (1), packed_heads (8), then seq_major_operands (8).
  const std::string impl = "cpu.Attention";
  const size_t params_at = find_bytes(current, encoded(impl)) + 4 + impl.size() + 4 + 3 * 4;
  const size_t field_at = params_at + 8 + 1 + 1 + 8;
  ASSERT_EQ(get_u64(current, field_at), 0u);
  ASSERT_EQ(get_u64(current, field_at + 8), 0u);  // the two counts
  const std::vector<uint8_t> v10 = without_field(current, field_at, 8 + 4 + 4, 10);
  const PlanModel read = plan_read(v10.data(), v10.size());
  EXPECT_EQ(plan_write(read), current);
  // Version 11: seq_major_operands stays, the views and out_dims go.
  const std::vector<uint8_t> v11 = without_field(current, field_at + 8, 4 + 4, 11);
  const PlanModel read11 = plan_read(v11.data(), v11.size());
  EXPECT_EQ(plan_write(read11), current);
}

TEST(PlanFormat, AttentionViewsRoundTrip) {
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {5, 2, 24});  // [L, B, 3 H E], H = 2, E = 4
  AttentionParams p;
  p.views = {2, 2, 2, 5, 5, 4, 4, 0, 24, 4, 48, 8, 24, 4, 48, 16, 24, 4, 48, 0, 8, 4, 16};
  p.out_dims = {5, 2, 8};
  net.mark_output(net.add_layer(p, {x, x, x}, "attn")->output(), "y");
  const std::vector<uint8_t> bytes = plan_write(make_plan(net, std::vector<OptimizationProfile>(1)));
  const PlanModel read = plan_read(bytes.data(), bytes.size());
  EXPECT_EQ(plan_write(read), bytes);
  const Layer* l = read.network.layers().back();
  ASSERT_EQ(l->kind(), LayerKind::kAttention);
  EXPECT_EQ(l->params_as<AttentionParams>().views, p.views);
  EXPECT_EQ(l->output()->shape(), (Shape{DimExpr(5), DimExpr(2), DimExpr(8)}));
}

TEST(PlanFormat, BuildTargetIsValidated) {
  std::vector<OptimizationProfile> p(1);
  p[0].set_range("n", 1, 2, 3);
  PlanModel m = make_plan(tiny_network(), p);
  m.target = "sm_90";  // a cpu plan: no target allowed
  auto b = plan_write(m);
  std::string e = expect_rejected(b, b.size(), true, "cpu plan with a target");
  EXPECT_NE(e.find("a 'cpu' plan has build target 'sm_90'; only cuda plans have one"),
            std::string::npos) << e;
  m.target = "gpu_9";
  b = plan_write(m);
  e = expect_rejected(b, b.size(), true, "malformed target");
  EXPECT_NE(e.find("build target 'gpu_9' is not of the form sm_<digits>"), std::string::npos) << e;
  const auto backends = available_backends();
  if (std::find(backends.begin(), backends.end(), "cuda") != backends.end()) {
    m.backend = "cuda";
    for (std::string& impl : m.impls) impl.replace(0, 3, "cuda");
    m.target = "sm_90";
    b = plan_write(m);
    const PlanModel read = plan_read(b.data(), b.size());
    EXPECT_EQ(read.target, "sm_90");
    EXPECT_EQ(plan_write(read), b);
  }
}

TEST(PlanFormatCorrupt, UnknownBackend) {
  auto b = tiny_plan();
  const size_t pos = find_bytes(b, encoded("cpu"));
  b[pos + 4] = 't';
  reseal(b);
  const std::string m = expect_rejected(b, b.size(), true, "backend");
  EXPECT_NE(m.find("back end 'tpu'"), std::string::npos) << m;
  EXPECT_NE(m.find("available: cpu"), std::string::npos) << m;
}

TEST(PlanFormatCorrupt, HugeCountsAreRejectedBeforeAllocating) {
  const auto original = tiny_plan();
  // Profile list count, right after the back end name, the arena size and the (empty) target.
  const size_t profiles_at = kPlanHeaderBytes + 4 + 3 + 8 + 4;
  // Layer count: the u32 before the first layer record (kind 0, name "c").
  std::vector<uint8_t> first_layer{0};
  for (uint8_t c : encoded("c")) first_layer.push_back(c);
  const size_t layers_at = find_bytes(original, first_layer) - 4;
  // A dims count inside the constant's weights record (after offset, size, dtype).
  const size_t impl_at = find_bytes(original, encoded("cpu.Constant"));
  const size_t dims_at = impl_at + 4 + 12 + 4 + 8 + 8 + 1;
  for (const size_t pos : {profiles_at, layers_at, dims_at}) {
    for (const uint32_t count : {0xffffffffu, 0x10000000u, 1000u}) {
      auto b = original;
      put_le(b, pos, count, 4);
      reseal(b);
      const std::string m = expect_rejected(b, b.size(), true, "count at " + std::to_string(pos));
      EXPECT_NE(m.find("claims " + std::to_string(count) + " entries"), std::string::npos) << m;
    }
  }
  // A string length far beyond the limit.
  auto b = original;
  put_le(b, kPlanHeaderBytes, 0xfffffff0u, 4);
  reseal(b);
  EXPECT_NE(expect_rejected(b, b.size(), true, "string length").find("the limit is"),
            std::string::npos);
}

// ---------------------------------------------------------------- timing section

const char* const kThisGpu = "NVIDIA H100 80GB HBM3|sm90|132 SMs|cudart 13000|cublasLt 1|cudnn 1";
const char* const kOtherGpu = "NVIDIA A100|sm80|108 SMs|cudart 13000|cublasLt 1|cudnn 1";

// The tiny plan with a timing section built by hand (as a GPU build would fill it).
PlanModel timing_model() {
  std::vector<OptimizationProfile> p(1);
  p[0].set_range("n", 1, 2, 3);
  PlanModel m = make_plan(tiny_network(), p);
  m.timing = {{kThisGpu, "cublasLt f16 m=2 n=2 k=2", std::vector<uint8_t>(64, 0xab)},
              {kThisGpu, "cudnn fwd f32 x=[1, 3, 4, 4]", {1, 0, 0, 0, 3, 0, 0, 0}},
              {kOtherGpu, "cublasLt f16 m=2 n=2 k=2", std::vector<uint8_t>(64, 0xcd)}};
  return m;
}
std::vector<uint8_t> timing_plan() { return plan_write(timing_model()); }

TEST(PlanFormatTiming, SectionRoundTripsByteIdentical) {
  const PlanModel original = timing_model();
  const std::vector<uint8_t> b = plan_write(original);
  const PlanModel loaded = plan_read(b.data(), b.size());
  ASSERT_EQ(loaded.timing.size(), original.timing.size());
  for (size_t i = 0; i < original.timing.size(); ++i) {
    EXPECT_EQ(loaded.timing[i].device, original.timing[i].device);
    EXPECT_EQ(loaded.timing[i].problem, original.timing[i].problem);
    EXPECT_EQ(loaded.timing[i].choice, original.timing[i].choice);
  }
  EXPECT_EQ(plan_write(loaded), b);
}

TEST(PlanFormatTiming, LoadingSeedsTheEngineCacheForItsGpuOnly) {
  const std::vector<uint8_t> b = timing_plan();
  const auto engine = Runtime().deserialize(b.data(), b.size());
  TimingCache& cache = engine->timing_cache();
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.timed_problems(), 0);
  bool checked = true;
  const auto hit = cache.lookup(kThisGpu, "cublasLt f16 m=2 n=2 k=2", &checked);
  ASSERT_TRUE(hit);
  EXPECT_EQ(*hit, std::vector<uint8_t>(64, 0xab));
  EXPECT_FALSE(checked);  // loaded choices are checked against the library before use
  // The choice for another GPU is kept apart: never returned for this one.
  EXPECT_FALSE(cache.lookup(kThisGpu, "cudnn fwd f32 x=[9, 9]"));
  EXPECT_FALSE(cache.lookup("some third GPU", "cublasLt f16 m=2 n=2 k=2"));
  EXPECT_EQ(*cache.lookup(kOtherGpu, "cublasLt f16 m=2 n=2 k=2"), std::vector<uint8_t>(64, 0xcd));
}

TEST(PlanFormatTiming, CpuBuildHasAnEmptySection) {
  BuilderConfig config;
  OptimizationProfile p;
  p.set_range("n", 1, 2, 3);
  config.profiles.push_back(p);
  config.timing_cache = std::make_shared<TimingCache>();
  BuildReport report;
  const std::vector<uint8_t> b = Builder(config).build(tiny_network(), &report);
  EXPECT_TRUE(plan_read(b.data(), b.size()).timing.empty());
  EXPECT_EQ(report.timing_entries, 0);
  EXPECT_EQ(report.timed_problems, 0);
  EXPECT_EQ(config.timing_cache->size(), 0u);
  for (const std::string& line : report.pass_log) {
    EXPECT_EQ(line.find("time_tactics"), std::string::npos) << line;
  }
}

TEST(PlanFormatTiming, CorruptSectionSaysWhatAndWhere) {
  const std::vector<uint8_t> good = tiny_plan();
  // The (empty) section's entry count is the payload's last four bytes.
  const size_t count_at = kPlanHeaderBytes + get_u64(good, kPlanPayloadSizePos) - 4;
  {
    auto b = good;
    put_le(b, count_at, 0x10000000u, 4);
    reseal(b);
    const std::string m = expect_rejected(b, b.size(), true, "timing count");
    EXPECT_NE(m.find("timing entry list claims 268435456 entries"), std::string::npos) << m;
    EXPECT_NE(m.find("at byte " + std::to_string(count_at)), std::string::npos) << m;
  }
  {
    PlanModel m = timing_model();
    m.timing.push_back(m.timing[0]);
    const auto b = plan_write(m);
    const std::string e = expect_rejected(b, b.size(), true, "repeated entry");
    EXPECT_NE(e.find("timing entry 3 repeats the problem 'cublasLt f16 m=2 n=2 k=2'"),
              std::string::npos)
        << e;
  }
  {
    // A choice length larger than what follows.
    auto b = timing_plan();
    const std::vector<uint8_t> choice(64, 0xab);
    std::vector<uint8_t> len_and_choice(4);
    put_le(len_and_choice, 0, 64, 4);
    len_and_choice.insert(len_and_choice.end(), choice.begin(), choice.end());
    const size_t at = find_bytes(b, len_and_choice);
    put_le(b, at, 5000, 4);
    reseal(b);
    const std::string m = expect_rejected(b, b.size(), true, "choice length");
    EXPECT_NE(m.find("timing entry choice"), std::string::npos) << m;
  }
  // Truncating the section anywhere is an error (the payload size is fixed up each time).
  const auto full = timing_plan();
  const size_t payload = get_u64(full, kPlanPayloadSizePos);
  for (size_t cut = 1; cut < 60; ++cut) {
    auto b = full;
    const size_t end = kPlanHeaderBytes + payload - cut;
    const size_t woff = (end + kPlanWeightAlignment - 1) / kPlanWeightAlignment * kPlanWeightAlignment;
    std::vector<uint8_t> c(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(end));
    c.resize(woff, 0);
    const size_t old_woff = get_u64(b, kPlanWeightsOffsetPos);
    c.insert(c.end(), b.begin() + static_cast<std::ptrdiff_t>(old_woff), b.end());
    put_le(c, kPlanPayloadSizePos, payload - cut, 8);
    put_le(c, kPlanWeightsOffsetPos, woff, 8);
    reseal(c);
    expect_rejected(c, c.size(), true, "section cut by " + std::to_string(cut));
  }
}

// ---------------------------------------------------------------- crafted corpus

struct CraftedPlan {
  const char* file;
  const char* expected;                             ///< A substring of the rejection message.
  std::function<void(std::vector<uint8_t>&)> edit;  ///< Applied to tiny_plan(); resealed after.
};

std::vector<CraftedPlan> crafted_plans() {
  auto after = [](const std::vector<uint8_t>& b, const std::string& s, int nth = 0) {
    return find_bytes(b, encoded(s), nth) + 4 + s.size();
  };
  return {
      {"empty.plan", "truncated: magic", [](auto& b) { b.clear(); }},
      {"short_header.plan", "truncated: payload size", [](auto& b) { b.resize(20); }},
      {"bad_magic.plan", "not an Ember plan", [](auto& b) { b[3] = 'X'; }},
      {"version_99.plan", "format version 99", [](auto& b) { put_le(b, 8, 99, 4); }},
      {"unknown_flags.plan", "unknown flags", [](auto& b) { put_le(b, 12, 1, 4); }},
      {"huge_payload_size.plan", "truncated: the header announces",
       [](auto& b) { put_le(b, kPlanPayloadSizePos, ~uint64_t{0}, 8); }},
      {"weights_offset_wrong.plan", "weight section offset",
       [](auto& b) {
         put_le(b, kPlanWeightsOffsetPos, get_u64(b, kPlanWeightsOffsetPos) + 256, 8);
       }},
      {"trailing_bytes.plan", "truncated or padded", [](auto& b) { b.push_back(0); }},
      {"unknown_backend.plan", "back end 'gpu'",
       [&](auto& b) { b[find_bytes(b, encoded("cpu")) + 4] = 'g'; }},
      {"negative_arena.plan", "arena size -1",
       [](auto& b) { put_le(b, kPlanHeaderBytes + 7, ~uint64_t{0}, 8); }},
      {"arena_too_small.plan", "past the 1-byte arena",
       [](auto& b) { put_le(b, kPlanHeaderBytes + 7, 1, 8); }},
      {"profile_min_above_max.plan", "min <= opt <= max",
       [&](auto& b) { put_le(b, after(b, "n"), 9, 8); }},
      {"huge_layer_count.plan", "claims 4294967295 entries",
       [&](auto& b) { put_le(b, after(b, "x") + 1 + 4 + 5 + 5 + 8, 0xffffffffu, 4); }},
      {"bad_layer_kind.plan", "layer kind has value 200",
       [&](auto& b) { b[find_bytes(b, encoded("ident")) - 1] = 200; }},
      {"bad_elementwise_op.plan", "op has value 99",
       [&](auto& b) { b[after(b, "cpu.ElementWise") + 4 + 8] = 99; }},
      {"tensor_id_out_of_range.plan", "input tensor id 7",
       [&](auto& b) { put_le(b, after(b, "cpu.ElementWise") + 4 + 4, 7, 4); }},
      {"bad_dim_text.plan", "is not a dimension expression",
       [&](auto& b) { b[find_bytes(b, encoded("n"), 1) + 4] = '('; }},
      {"input_symbol_without_range.plan", "which has no range",
       [&](auto& b) { b[find_bytes(b, encoded("n")) + 4] = 'm'; }},
      {"weights_out_of_range.plan", "outside the",
       [&](auto& b) { put_le(b, after(b, "cpu.Constant") + 4, 1 << 20, 8); }},
      {"weights_misaligned.plan", "not a multiple of 256",
       [&](auto& b) { put_le(b, after(b, "cpu.Constant") + 4, 4, 8); }},
      {"weights_size_mismatch.plan", "the plan gives it",
       [&](auto& b) { put_le(b, after(b, "cpu.Constant") + 4 + 8, 4, 8); }},
      {"output_shape_mismatch.plan", "when rebuilt",
       [&](auto& b) { b[find_bytes(b, encoded("2"), 1) + 4] = '3'; }},
      {"output_is_input.plan", "is network input",
       [&](auto& b) { put_le(b, find_bytes(b, encoded("y")) - 4, 0, 4); }},
      {"trailing_payload.plan", "unexpected bytes after the timing section",
       [](auto& b) {
         // One more payload byte: shift the weights by a whole alignment unit when needed.
         const size_t end = kPlanHeaderBytes + get_u64(b, kPlanPayloadSizePos);
         put_le(b, kPlanPayloadSizePos, get_u64(b, kPlanPayloadSizePos) + 1, 8);
         b[end] = 0x5a;
       }},
  };
}

fs::path corpus_dir() { return fs::path(EMBER_TEST_DATA_DIR) / "plan_corpus"; }

std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::vector<uint8_t>& b) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> craft(const CraftedPlan& c) {
  auto b = tiny_plan();
  c.edit(b);
  if (b.size() >= kPlanHeaderBytes) reseal(b);
  return b;
}

TEST(PlanFormatCorpus, CraftedPlansAreRejectedWithTheirReason) {
  for (const CraftedPlan& c : crafted_plans()) {
    const auto b = craft(c);
    for (const bool verify : {true, false}) {
      const std::string m = expect_rejected(b, b.size(), verify, c.file);
      EXPECT_NE(m.find(c.expected), std::string::npos) << c.file << ": " << m;
    }
  }
}

TEST(PlanFormatCorpus, CheckedInFilesMatchTheGenerator) {
  for (const CraftedPlan& c : crafted_plans()) {
    const fs::path path = corpus_dir() / c.file;
    ASSERT_TRUE(fs::exists(path)) << path << " is missing; run the DISABLED_Regenerate test";
    EXPECT_EQ(read_file(path), craft(c)) << path << " is stale; run the DISABLED_Regenerate test";
  }
}

TEST(PlanFormatCorpus, EveryCorpusFileLoadsOrFailsCleanly) {
  // Crafted files and fuzzer finds (crash-*): with the checksum off they reach the field
  // validation; nothing may crash.
  std::map<std::string, std::string> expected;
  for (const CraftedPlan& c : crafted_plans()) expected[c.file] = c.expected;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus_dir())) {
    const auto b = read_file(entry.path());
    const std::string name = entry.path().filename().string();
    ++files;
    const auto it = expected.find(name);
    if (it != expected.end()) {
      const std::string m = expect_rejected(b, b.size(), false, name);
      EXPECT_NE(m.find(it->second), std::string::npos) << name << ": " << m;
    } else {
      load_or_error(b.data(), b.size(), false, name);
      load_or_error(b.data(), b.size(), true, name);
    }
  }
  EXPECT_GE(files, static_cast<int>(expected.size()));
}

// Writes the crafted corpus files and the fuzzer's seed plans (run ember_engine_tests with
// --gtest_also_run_disabled_tests --gtest_filter='PlanFormatCorpus.DISABLED_Regenerate').
TEST(PlanFormatCorpus, DISABLED_Regenerate) {
  for (const CraftedPlan& c : crafted_plans()) write_file(corpus_dir() / c.file, craft(c));
  const fs::path seeds = fs::path(EMBER_TEST_DATA_DIR) / ".." / ".." / ".." / "fuzz" / "corpus";
  write_file(seeds / "seed_tiny.plan", tiny_plan());
  write_file(seeds / "seed_all_kinds.plan", all_kinds_plan());
  write_file(seeds / "seed_timing.plan", timing_plan());
}

}  // namespace
}  // namespace ember::engine
