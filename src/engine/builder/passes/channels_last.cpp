// channels_last: moves connected regions of 2-d convolutions and poolings to the NHWC layout.
//
// Tensor-core convolution (cuDNN) wants NHWC activations and KRSC filters; PyTorch models are
// NCHW. Converting each convolution alone would wrap it in two transposes, so the pass converts
// regions:
//
//   - Every wanted 2-d Convolution joins (the builder: f16/bf16 on the CUDA back end). Its
//     constant weight is permuted to KRSC here (a computed weight gets a transpose), its bias
//     stays, and a fused residual joins the region with it (it must share the output's layout).
//     So does every 2-d QuantizedConvolution with groups = 1 and a wanted output type (the
//     float type its epilogue rounds to): its int8 or FP8 weight moves to KRSC the same way, so
//     the GPU's GEMM path reads NHWC activations as they are (no transpose in, none out; a 1x1
//     layer's input is its GEMM operand) instead of transposing around every layer.
//   - A 2-d Pooling, Activation, Unary, ElementWise, Cast, Select, or per-tensor Quantize or
//     Dequantize (the fake quantization between the float convolutions of an FP8 model) joins
//     when one of its inputs comes from the region. (Casts matter: a half model's hardswish is
//     computed in f32 between two casts, and a cast left outside cut MobileNetV3's region at
//     every hardswish: 46 transposes, 47% of its GPU time at b32 on an H100.) Broadcasting
//     is per dim, so it survives permuting every operand the same way: an ElementWise operand
//     must have rank 4 (or be one element along every dim, which is the same in every
//     layout); a constant one is permuted here ([1, C, 1, 1] becomes [1, 1, 1, C]).
//   - A Concatenation of rank-4 tensors with an input from the region joins (its axis moves
//     with the dims), and so does a nearest or linear Resize of a region tensor whose readers
//     all can join (its sizes and scales move with the dims): DeepLabV3's ASPP head, whose
//     branches left the region for the concatenation (7 transposes, 0.67 ms of 8.5 at b8 on an
//     H100).
//   - Inside the region, tensors are NHWC: their logical dims become [N, H, W, C].
//   - A tensor enters through one Shuffle {0, 2, 3, 1} (shared by its readers), and a region
//     tensor leaves through one Shuffle {0, 3, 1, 2} to every reader outside the region,
//     network outputs included. When H = W = 1 both are reshapes instead, which the memory
//     planner makes free (ResNet's pooled [N, 2048, 1, 1] before its flatten).
//   - A tensor that is itself a transpose {0, 3, 1, 2} of an NHWC tensor enters as that tensor,
//     so the pass never leaves two transposes back to back. A pointwise layer (of a wanted
//     type) that is the only reader of such a transpose joins even without a region input,
//     when its other operands cost no transpose (region tensors, constants, layout-free
//     tensors): ConvNeXt's `gamma * permute(x, 0, 3, 1, 2) + residual` after its MLP (written
//     in NHWC by the model).
//   - A reader outside the region that is itself a transpose {0, 2, 3, 1} (the model going to
//     NHWC for a layer norm over channels: ConvNeXt, Swin's patch merging) reads the region's
//     NHWC tensor instead: the exit and that transpose would cancel.
//   - A constant operand of rank below 4 broadcasts from the right (a [C, 1, 1] scale): it is
//     read as [1, C, 1, 1] and permuted like the others.
//
// It runs after fuse_epilogues, so batch norm, bias, residual add and activation are already
// inside the convolutions. Deconvolution stays NCHW.
#include <cstring>
#include <map>
#include <set>

#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

const std::vector<int64_t> kToNhwc = {0, 2, 3, 1};
const std::vector<int64_t> kToNchw = {0, 3, 1, 2};

bool is_float(DataType t) {
  return t == DataType::kF32 || t == DataType::kF16 || t == DataType::kBF16;
}

bool is_one(const DimExpr& d) { return d.is_constant() && d.constant() == 1; }

/// Every dim 1: the same value in every layout.
bool layout_free(const Tensor* t) {
  for (const DimExpr& d : t->shape()) {
    if (!is_one(d)) return false;
  }
  return true;
}

/// NCHW -> NHWC bytes of a constant of rank <= 4 (for a weight: KCRS -> KRSC); a lower rank
/// is first read as rank 4 with leading 1s, as broadcasting reads it.
Weights to_nhwc_constant(const Weights& w) {
  std::vector<int64_t> d = w.dims();
  while (d.size() < 4) d.insert(d.begin(), 1);
  const int64_t k = d[0], c = d[1], r = d[2], s = d[3];
  Weights out = Weights::zeros(w.dtype(), {k, r, s, c});
  const size_t e = dtype_size(w.dtype());
  const auto* src = static_cast<const uint8_t*>(w.data());
  auto* dst = static_cast<uint8_t*>(const_cast<void*>(out.data()));  // fresh, not shared yet
  for (int64_t ko = 0; ko < k; ++ko) {
    for (int64_t ci = 0; ci < c; ++ci) {
      for (int64_t ri = 0; ri < r; ++ri) {
        for (int64_t si = 0; si < s; ++si) {
          const int64_t from = ((ko * c + ci) * r + ri) * s + si;
          const int64_t to = ((ko * r + ri) * s + si) * c + ci;
          std::memcpy(dst + to * e, src + from * e, e);
        }
      }
    }
  }
  return out;
}

struct Rewriter {
  Rewriter(Network& n, bool half_only) : net(n), f16_bf16_only(half_only) {}

  Network& net;
  bool f16_bf16_only;
  std::set<const Layer*> converted;       ///< Original layers that move to NHWC.
  std::map<const Tensor*, Tensor*> nhwc;  ///< Original NCHW tensor -> its NHWC version.
  int convs = 0, pools = 0, pointwise = 0, others = 0, entries = 0, exits = 0, cancelled = 0;

  bool in_region(const Tensor* t) const {
    return t != nullptr && t->producer() != nullptr && converted.count(t->producer()) > 0;
  }

  bool wanted_conv(const Layer* l) const {
    if (l->kind() != LayerKind::kConvolution || l->input(0)->rank() != 4) return false;
    if (l->params_as<ConvolutionParams>().channels_last) return false;
    const DataType t = l->output()->dtype();
    return f16_bf16_only ? (t == DataType::kF16 || t == DataType::kBF16) : is_float(t);
  }

  /// A transpose {0, 3, 1, 2} of an [N, H, W, C] tensor: it enters the region as that tensor.
  static bool nhwc_source(const Tensor* t) {
    return t->rank() == 4 && is_pure_transpose(t->producer(), kToNchw);
  }

  /// Whether pointwise layer `l` (output rank 4) can join: every input of rank 4, layout-free
  /// or a constant of lower rank; and one input from the region, or one nhwc_source read by
  /// `l` alone (so that transpose goes away) with the rest from the region, constants or
  /// layout-free (so none comes in), in a wanted type.
  bool pointwise_joins(const Layer* l) const {
    if (l->output()->rank() != 4) return false;
    bool from_region = false, from_source = false, free = true;
    for (const Tensor* in : l->inputs()) {
      if (in == nullptr) continue;
      const bool constant = constant_of(in) != nullptr;
      if (in->rank() != 4 && !layout_free(in) && !(constant && in->rank() < 4)) return false;
      if (in_region(in)) {
        from_region = true;
      } else if (nhwc_source(in) && !in->is_output() && net.consumers(in).size() == 1) {
        from_source = true;
      } else if (!constant && !layout_free(in)) {
        free = false;  // would enter through a transpose
      }
    }
    const DataType t = l->output()->dtype();
    const bool wanted_type = f16_bf16_only ? (t == DataType::kF16 || t == DataType::kBF16)
                                           : is_float(t);
    return from_region || (from_source && free && wanted_type);
  }

  /// A Concatenation of rank-4 tensors with one input from the region (DeepLabV3's ASPP
  /// branches): the others enter through a transpose, as a pointwise layer's would.
  bool concat_joins(const Layer* l) const {
    if (l->output()->rank() != 4 || !is_float(l->output()->dtype())) return false;
    bool from_region = false;
    for (const Tensor* in : l->inputs()) {
      if (in->rank() != 4) return false;
      from_region = from_region || in_region(in);
    }
    return from_region;
  }

  /// A nearest or linear Resize of a region tensor that keeps N and C, whose result only
  /// layers of kinds that can be in the region read (DeepLabV3's ASPP pooling upsampled for the
  /// concatenation; the kinds only: a reader that then stays out, such as an f32 convolution
  /// of a half-only rewrite, gets the NCHW tensor back through an exit). Its sizes and scales
  /// are permuted like the dims. One read by anything else (a network output: a segmentation
  /// head's upsampling to the image size) stays NCHW, so that the smaller tensor before it is
  /// what leaves the region. Cubic resizes stay: they work on the last two dims.
  bool resize_joins(const Layer* l) const {
    const auto& p = l->params_as<ResizeParams>();
    if (p.mode == ResizeMode::kCubic || l->output()->rank() != 4 || !in_region(l->input(0))) {
      return false;
    }
    const Shape& in = l->input(0)->shape();
    if (!(p.output[0] == in[0]) || !(p.output[1] == in[1]) || l->output()->is_output()) {
      return false;
    }
    const std::vector<Layer*> readers = net.consumers(l->output());
    for (const Layer* r : readers) {
      switch (r->kind()) {
        case LayerKind::kConvolution:
        case LayerKind::kConcatenation:
        case LayerKind::kPooling:
        case LayerKind::kActivation:
        case LayerKind::kUnary:
        case LayerKind::kElementWise:
        case LayerKind::kCast:
        case LayerKind::kSelect:
          break;
        default:
          return false;
      }
    }
    return !readers.empty();
  }

  /// A 2-d QuantizedConvolution with groups = 1 (what the GPU's GEMM path takes; grouped ones
  /// run in the direct kernel, NCHW) and, like a float convolution, a wanted output type.
  bool wanted_qconv(const Layer* l) const {
    if (l->kind() != LayerKind::kQuantizedConvolution || l->input(0)->rank() != 4) return false;
    const auto& p = l->params_as<QuantizedConvolutionParams>();
    if (p.channels_last || p.groups != 1) return false;
    return !f16_bf16_only || p.out == DataType::kF16 || p.out == DataType::kBF16;
  }

  bool joins(const Layer* l) const {
    switch (l->kind()) {
      case LayerKind::kConvolution:
        return wanted_conv(l);
      case LayerKind::kQuantizedConvolution:
        return wanted_qconv(l);
      case LayerKind::kPooling:
        return l->input(0)->rank() == 4 && in_region(l->input(0)) &&
               !l->params_as<PoolingParams>().channels_last;
      case LayerKind::kActivation:
      case LayerKind::kUnary:
      case LayerKind::kElementWise:
      case LayerKind::kCast:  // a half model's f32 opmath (hardswish, SiLU) casts in and out
      case LayerKind::kSelect:
        return pointwise_joins(l);
      case LayerKind::kConcatenation:
        return concat_joins(l);
      case LayerKind::kResize:
        return resize_joins(l);
      case LayerKind::kQuantize:  // per tensor: the same in every layout
        return !l->params_as<QuantizeParams>().per_channel && pointwise_joins(l);
      case LayerKind::kDequantize:
        return !l->params_as<DequantizeParams>().per_channel && pointwise_joins(l);
      default:
        return false;
    }
  }

  /// NCHW <-> NHWC of `t` by `perm`: a reshape when H = W = 1 (same bytes), else a transpose.
  Tensor* relayout(Tensor* t, const std::vector<int64_t>& perm, const std::string& name) {
    const Shape& s = t->shape();
    Shape to;
    for (const int64_t d : perm) to.push_back(s[static_cast<size_t>(d)]);
    // H and W are dims 2, 3 of an NCHW tensor and 1, 2 of an NHWC one.
    const bool hw_one =
        perm == kToNhwc ? is_one(s[2]) && is_one(s[3]) : is_one(s[1]) && is_one(s[2]);
    if (hw_one) return net.add_reshape(t, to, name)->output();
    return net.add_transpose(t, perm, name)->output();
  }

  /// The NHWC version of NCHW tensor `t` (for a weight: KRSC): the region's own, a constant
  /// permuted here, or one entry shared by its readers.
  Tensor* to_nhwc(Tensor* t) {
    const auto it = nhwc.find(t);
    if (it != nhwc.end()) return it->second;
    Tensor* v = nullptr;
    if (const Weights* c = constant_of(t)) {
      v = net.add_constant(to_nhwc_constant(*c), t->name() + "/nhwc")->output();
    } else if (is_pure_transpose(t->producer(), kToNchw)) {
      v = t->producer()->input(0);  // undo a transpose instead of adding its inverse
    } else {
      v = relayout(t, kToNhwc, t->name() + "/to_nhwc");
      ++entries;
    }
    nhwc[t] = v;
    return v;
  }

  Layer* convert(const Layer* l) {
    const std::string name = l->name() + "/nhwc";
    std::vector<Tensor*> inputs = l->inputs();
    switch (l->kind()) {
      case LayerKind::kConvolution: {
        auto p = l->params_as<ConvolutionParams>();
        p.channels_last = true;
        inputs[0] = to_nhwc(inputs[0]);
        inputs[1] = to_nhwc(inputs[1]);  // KCRS -> KRSC is the same permutation
        if (inputs.size() > 3 && inputs[3] != nullptr) inputs[3] = to_nhwc(inputs[3]);
        ++convs;
        return net.add_layer(p, inputs, name);
      }
      case LayerKind::kQuantizedConvolution: {
        // x and w move (the constant int8 or FP8 weight to KRSC here), and a fused residual
        // (input 7) with the output; the scales, the bias, the output scale and the zero point
        // are per channel or one element.
        auto p = l->params_as<QuantizedConvolutionParams>();
        p.channels_last = true;
        inputs[0] = to_nhwc(inputs[0]);
        inputs[1] = to_nhwc(inputs[1]);
        if (inputs.size() > 7 && inputs[7] != nullptr) inputs[7] = to_nhwc(inputs[7]);
        ++convs;
        return net.add_layer(p, inputs, name);
      }
      case LayerKind::kPooling: {
        auto p = l->params_as<PoolingParams>();
        p.channels_last = true;
        inputs[0] = to_nhwc(inputs[0]);
        ++pools;
        return net.add_layer(p, inputs, name);
      }
      case LayerKind::kConcatenation: {
        auto p = l->params_as<ConcatenationParams>();
        const int64_t axis = p.axis;  // in [0, 4): add_layer refuses others
        for (int64_t j = 0; j < 4; ++j) {
          if (kToNhwc[static_cast<size_t>(j)] == axis) p.axis = j;  // NCHW dim -> NHWC position
        }
        for (Tensor*& in : inputs) in = to_nhwc(in);
        ++others;
        return net.add_layer(p, inputs, name);
      }
      case LayerKind::kResize: {
        auto p = l->params_as<ResizeParams>();
        Shape out;
        for (const int64_t d : kToNhwc) out.push_back(p.output[static_cast<size_t>(d)]);
        p.output = out;
        if (!p.scales.empty()) {
          std::vector<double> scales;
          for (const int64_t d : kToNhwc) scales.push_back(p.scales[static_cast<size_t>(d)]);
          p.scales = scales;
        }
        inputs[0] = to_nhwc(inputs[0]);
        ++others;
        return net.add_layer(p, inputs, name);
      }
      default:
        break;
    }
    // Pointwise: every rank-4 operand moves (constants at build time).
    for (Tensor*& in : inputs) {
      if (in != nullptr && (in_region(in) || !layout_free(in))) in = to_nhwc(in);
    }
    ++pointwise;
    return net.add_layer(l->params(), inputs, name);
  }

  void run() {
    const std::vector<Layer*> original = net.layers();
    std::vector<const Layer*> order;
    for (const Layer* l : original) {
      if (!joins(l)) continue;
      converted.insert(l);
      order.push_back(l);
    }
    for (const Layer* l : order) nhwc[l->output()] = convert(l)->output();
    // Readers outside the region (and network outputs) get the NCHW tensor back, once each;
    // a reader that transposes it to NHWC itself reads the NHWC tensor instead.
    for (const Layer* l : order) {
      Tensor* old = l->output();
      bool leaves = old->is_output();
      for (const Layer* user : net.consumers(old)) {
        if (converted.count(user) > 0) continue;
        if (is_pure_transpose(user, kToNhwc)) {  // a network output keeps its name (see Network)
          net.replace_all_uses(user->output(), nhwc[old]);
          ++cancelled;
          continue;
        }
        leaves = true;
      }
      if (!leaves) continue;
      Tensor* exit = relayout(nhwc[old], kToNchw, l->name() + "/to_nchw");
      net.replace_all_uses(old, exit);
      ++exits;
    }
    remove_unreachable_layers(net);
  }
};

}  // namespace

std::string rewrite_channels_last(Network& net, bool f16_bf16_only) {
  Rewriter r(net, f16_bf16_only);
  r.run();
  return std::to_string(r.convs) + " convolutions, " + std::to_string(r.pools) + " poolings, " +
         std::to_string(r.pointwise) + " pointwise layers, " + std::to_string(r.others) +
         " concatenations and resizes to NHWC; " + std::to_string(r.entries) +
         " transposes in, " + std::to_string(r.exits) + " out, " + std::to_string(r.cancelled) +
         " of the model's own to NHWC read the region's tensor";
}

void pass_channels_last(BuildState& s) {
  switch (s.config.channels_last) {
    case ChannelsLast::kOff:
      s.log.push_back("channels_last: off");
      return;
    case ChannelsLast::kOn:
      s.log.push_back("channels_last: " + rewrite_channels_last(s.plan.network, false));
      return;
    case ChannelsLast::kAuto:  // as kHalf (see ChannelsLast::kAuto for why)
    case ChannelsLast::kHalf:
      break;
  }
  if (s.config.backend != "cuda") {
    s.log.push_back("channels_last: skipped (back end " + s.config.backend + " keeps NCHW)");
    return;
  }
  s.log.push_back("channels_last: " + rewrite_channels_last(s.plan.network, true));
}

}  // namespace ember::engine
