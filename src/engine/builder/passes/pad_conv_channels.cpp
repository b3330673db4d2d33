// pad_conv_channels: a channels_last convolution whose input channel count the back end's fast
// kernels cannot take gets zero channels added to its input and its weight.
//
//   y = Conv(x [N, H, W, C], w [K, R, S, C])             (C not a multiple of m)
//     => y = Conv(Padding(x; C -> C'), w' [K, R, S, C'])  (C' = C rounded up to m; w' zeros
//                                                          in the added channels)
//
// cuDNN's tensor-core convolutions for 16-bit NHWC tensors need C to be a multiple of 8; other
// counts run in an "indexed" kernel without shared-memory staging. A network's first layer
// reads an image with C = 3: ResNet-50's 7x7 stem took 0.194 of 1.247 ms of GPU time at b32 on
// an H200 (2026-12-07, 39 TFLOP/s) in that kernel, the heaviest single layer of the model.
// With C' = 8 a layer may take a tensor-core kernel (ConvNeXt-T's 4x4 stride-4 stem: the model
// 0.07 ms faster at b32 on an H100); the 7x7 stride-2 stem did not (below).
// When the input is channels_last's transpose of the NCHW image, read by this layer alone, the
// Padding reads the image through that permutation (PaddingParams::input_permutation) and the
// transpose goes: one pass (the CUDA back end writes each 8-channel pixel as one 16-byte word)
// where the transpose alone took 0.036 ms.
//
// The added products are zeros times zeros, so the sums are those of the unpadded layer (adding
// +0 changes no f32 sum). The multiple comes from the back end (Backend::conv_channel_multiple:
// 8 for 16-bit tensors on CUDA, 1 elsewhere, which turns the pass off). Only narrow inputs
// (C below the multiple: an image) of groups = 1 layers with a constant weight and a static C
// are padded; a wider C (12, ShuffleNet's 58) would pay a copy of a whole activation for a gain
// not measured. Light layers (R * S * K below kPadConvMinWorkPerPixel, passes.h: MobileNetV3's
// and EfficientNet's 3x3 stems) stay as they are: the Padding's pass over the image cost more
// than the layer saved. Convolutions reading one tensor share its Padding.
// EMBER_PAD_CONV_CHANNELS=0 leaves every layer as it is (A/B timing: bench/variants.py's
// half_unpadded_channels).
//
// A stride-2 stem read by nothing else goes further (space-to-depth): the image is rearranged
// into 2x2 blocks, [N, H, W, C] -> [N, H/2, W/2, 2*2*C'], and the layer becomes a stride-1
// convolution over blocks with a kernel of ceil(R/2) x ceil(S/2) blocks:
//
//   y = Conv(x, w [K, R, S, C]; stride 2, padding p)
//     => y = Conv(Padding(x viewed as 2x2 blocks; block padding, C -> C'), w' [K, R', S', 4C'];
//                 stride 1, no padding)
//
// w' holds w's taps at their block positions, zeros elsewhere (an odd p shifts the taps by one
// row or column so the block padding is whole blocks). Why: with C' = 8 the 7x7 stem still ran
// in cuDNN's indexed kernel on an H100 (0.165 of 1.296 ms at b32, 2026-12-07); as a 4x4 stride-1
// layer over 16 channels it is an ordinary implicit GEMM (K = 256). The Padding does the
// rearrangement and the NCHW -> NHWC transpose in one pass (PaddingParams::input_shape views
// the image as [N, C, H/2, 2, W/2, 2], input_permutation orders it [N, H/2, W/2, 2, 2, C]).
// The sums are the same products plus zeros. ResNet-50 b32 on an H100: 1.243 ms, against 1.317
// with 8 channels and 1.347 unpadded. EMBER_SPACE_TO_DEPTH=0 keeps the channel padding alone
// (bench/variants.py's half_no_space_to_depth).
#include <cstring>
#include <map>
#include <optional>

#include "backends/backend.h"
#include "builder/passes/passes.h"

namespace ember::engine {

namespace {

/// KRSC weight `w` with its last dim zero-padded to `to` channels.
Weights pad_last_dim(const Weights& w, int64_t to) {
  std::vector<int64_t> dims = w.dims();
  const int64_t c = dims.back();
  const int64_t rows = w.numel() / c;
  dims.back() = to;
  Weights out = Weights::zeros(w.dtype(), dims);
  const size_t e = dtype_size(w.dtype());
  const auto* src = static_cast<const uint8_t*>(w.data());
  auto* dst = static_cast<uint8_t*>(const_cast<void*>(out.data()));  // fresh, not shared yet
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + static_cast<size_t>(r * to) * e, src + static_cast<size_t>(r * c) * e,
                static_cast<size_t>(c) * e);
  }
  return out;
}

/// A stride-2 convolution as a stride-1 one over 2x2 blocks (see the file comment), per spatial
/// dim i: `shift` zero taps before the kernel (an odd padding made even), a kernel of `taps`
/// blocks, the block padding `pre`/`post`; `cb` channels per pixel of a block (C padded).
struct Blocks {
  int64_t shift[2], taps[2], pre[2], post[2];
  int64_t cb;
};

/// The block form of convolution `l` (channels_last, groups 1, constant weight, C below the
/// back end's multiple `m`), or nothing when it does not fit: stride 2, dilation 1, static even
/// H and W, 4C at most 2m, and an output the blocks cover without cropping.
std::optional<Blocks> block_form(const Layer* l, int64_t m) {
  const auto& p = l->params_as<ConvolutionParams>();
  const Shape& in = l->input(0)->shape();
  const Shape& out = l->output()->shape();
  const std::vector<int64_t>& w = constant_of(l->input(1))->dims();
  if (p.stride != std::vector<int64_t>{2, 2} || p.dilation != std::vector<int64_t>{1, 1} ||
      m % 4 != 0 || 4 * in[3].constant() > 2 * m) {
    return std::nullopt;
  }
  Blocks b{};
  b.cb = (4 * in[3].constant() + m - 1) / m * m / 4;
  for (int i = 0; i < 2; ++i) {
    const DimExpr& h = in[1 + i];
    const DimExpr& o = out[1 + i];
    if (!h.is_constant() || !o.is_constant() || h.constant() % 2 != 0) return std::nullopt;
    const int64_t pad = p.padding_begin[i];
    b.shift[i] = pad % 2;
    b.taps[i] = (w[1 + i] + b.shift[i] + 1) / 2;
    b.pre[i] = (pad + b.shift[i]) / 2;
    b.post[i] = o.constant() - 1 + b.taps[i] - h.constant() / 2 - b.pre[i];
    if (b.post[i] < 0) return std::nullopt;
  }
  return b;
}

/// KRSC weight `w` [K, R, S, C] rearranged for the block form: [K, taps0, taps1, 2 * 2 * cb],
/// tap (r, s) at block (r', s') = ((r + shift0) / 2, (s + shift1) / 2), position
/// ((r + shift0) % 2, (s + shift1) % 2) in the block, zeros elsewhere.
Weights block_weight(const Weights& w, const Blocks& b) {
  const std::vector<int64_t>& d = w.dims();
  const int64_t k = d[0], r = d[1], s = d[2], c = d[3];
  Weights out = Weights::zeros(w.dtype(), {k, b.taps[0], b.taps[1], 4 * b.cb});
  const size_t e = dtype_size(w.dtype());
  const auto* src = static_cast<const uint8_t*>(w.data());
  auto* dst = static_cast<uint8_t*>(const_cast<void*>(out.data()));  // fresh, not shared yet
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t rr = 0; rr < r; ++rr) {
      for (int64_t ss = 0; ss < s; ++ss) {
        const int64_t y = rr + b.shift[0], x = ss + b.shift[1];
        const int64_t at = (((kk * b.taps[0] + y / 2) * b.taps[1] + x / 2) * 2 + y % 2) * 2 + x % 2;
        std::memcpy(dst + static_cast<size_t>(at * b.cb) * e,
                    src + static_cast<size_t>(((kk * r + rr) * s + ss) * c) * e,
                    static_cast<size_t>(c) * e);
      }
    }
  }
  return out;
}

/// The padded channel count for convolution `l`, or 0 when it is left alone.
int64_t padded_channels(const Layer* l, const Backend& backend, int64_t min_work_per_pixel) {
  if (l->kind() != LayerKind::kConvolution) return 0;
  const auto& p = l->params_as<ConvolutionParams>();
  if (!p.channels_last || p.groups != 1 || l->input(0)->rank() != 4) return 0;
  const DimExpr& c = l->input(0)->shape()[3];
  const Weights* w = constant_of(l->input(1));
  if (!c.is_constant() || w == nullptr || w->dims().size() != 4) return 0;
  // Narrow inputs only (an image): wider ones would pay a copy of a whole activation for a
  // gain not measured.
  const int64_t m = backend.conv_channel_multiple(l->input(0)->dtype());
  if (m <= 1 || c.constant() >= m) return 0;
  // The Padding is one more pass over the image; the gain grows with the layer's work per
  // output pixel, R * S * K. On an H100 at b32 (2026-12-07): ResNet-50's 7x7 stem (3136) gained
  // 0.10 ms, ConvNeXt-T's 4x4 one (1536) 0.07 ms, EfficientNet-B0's 3x3 (288) nothing, and
  // MobileNetV3's 3x3 with K = 16 (144) lost 0.011 ms. Below min_work_per_pixel (the pass
  // uses kPadConvMinWorkPerPixel) the layer stays.
  const std::vector<int64_t>& wd = w->dims();
  if (wd[0] * wd[1] * wd[2] < min_work_per_pixel) return 0;
  return m;
}

/// Replaces stride-2 convolution `l` (read through x, its sole reader) by its block form `b`.
void rewrite_as_blocks(Network& net, Layer* l, const Blocks& b) {
  std::vector<Tensor*> inputs = l->inputs();
  Tensor* x = inputs[0];
  const int64_t h = x->shape()[1].constant(), w = x->shape()[2].constant();
  const int64_t c = x->shape()[3].constant();
  PaddingParams pad;
  Tensor* source = x;
  const std::vector<int64_t> to_nhwc = {0, 2, 3, 1};
  if (is_pure_transpose(x->producer(), to_nhwc)) {
    // The NCHW image behind channels_last's entry transpose, read as [N, C, H/2, 2, W/2, 2].
    source = x->producer()->input(0);
    pad.input_shape = {-1, c, h / 2, 2, w / 2, 2};
    pad.input_permutation = {0, 2, 4, 3, 5, 1};
  } else {  // NHWC, read as [N, H/2, 2, W/2, 2, C]
    pad.input_shape = {-1, h / 2, 2, w / 2, 2, c};
    pad.input_permutation = {0, 1, 3, 2, 4, 5};
  }
  pad.pre = {0, b.pre[0], b.pre[1], 0, 0, 0};
  pad.post = {0, b.post[0], b.post[1], 0, 0, b.cb - c};
  Tensor* blocks =
      net.add_padding(source, pad, unique_layer_name(net, l->name() + "/space_to_depth"))->output();
  ShuffleParams merge;  // [N, H', W', 2, 2, cb] -> [N, H', W', 4 cb]: a view
  merge.has_reshape = true;
  merge.reshape = {-1, blocks->shape()[1], blocks->shape()[2], 4 * b.cb};
  inputs[0] = net.add_shuffle(blocks, merge, unique_layer_name(net, l->name() + "/blocks"))->output();
  inputs[1] = net.add_constant(block_weight(*constant_of(inputs[1]), b),
                               unique_layer_name(net, l->name() + "/w_blocks"))
                  ->output();
  ConvolutionParams p = l->params_as<ConvolutionParams>();
  p.stride = {1, 1};
  p.padding_begin = p.padding_end = {0, 0};
  Tensor* y = net.add_layer(p, inputs, unique_layer_name(net, l->name() + "/blocks_conv"))->output();
  net.replace_all_uses(l->output(), y);
}

}  // namespace

PadConvCounts pad_conv_channels(Network& net, const Backend& backend, int64_t min_work_per_pixel) {
  PadConvCounts counts;
  const bool blocks = !switched_off_by_env("EMBER_SPACE_TO_DEPTH");
  std::map<const Tensor*, Tensor*> padded_inputs;  // one Padding for convolutions sharing x
  const std::vector<Layer*> original = net.layers();  // the loop adds layers
  for (Layer* l : original) {
    const int64_t to = padded_channels(l, backend, min_work_per_pixel);
    if (to == 0) continue;
    std::vector<Tensor*> inputs = l->inputs();
    Tensor* x = inputs[0];
    const int64_t c = x->shape()[3].constant();
    if (blocks && sole_consumer(net, x) == l) {
      if (const std::optional<Blocks> b = block_form(l, to)) {
        rewrite_as_blocks(net, l, *b);
        ++counts.padded;
        ++counts.as_blocks;
        continue;
      }
    }
    inputs[1] = net.add_constant(pad_last_dim(*constant_of(inputs[1]), to),
                                 unique_layer_name(net, l->name() + "/w_padded"))
                    ->output();
    if (const auto it = padded_inputs.find(x); it != padded_inputs.end()) {
      inputs[0] = it->second;
    } else {
      PaddingParams pad;
      pad.pre = {0, 0, 0, 0};
      pad.post = {0, 0, 0, to - c};
      // The image's entry into the NHWC region (channels_last's transpose), read by this layer
      // alone: the Padding reads the NCHW tensor through the permutation instead, one pass.
      Tensor* source = x;
      const std::vector<int64_t> to_nhwc = {0, 2, 3, 1};
      if (is_pure_transpose(x->producer(), to_nhwc) && sole_consumer(net, x) == l) {
        pad.input_permutation = to_nhwc;
        source = x->producer()->input(0);
      }
      inputs[0] =
          net.add_padding(source, pad, unique_layer_name(net, l->name() + "/pad_channels"))
              ->output();
      padded_inputs[x] = inputs[0];
    }
    Tensor* y = net.add_layer(l->params(), inputs, unique_layer_name(net, l->name() + "/padded"))
                    ->output();
    net.replace_all_uses(l->output(), y);
    ++counts.padded;
  }
  remove_unreachable_layers(net);
  return counts;
}

void pass_pad_conv_channels(BuildState& s) {
  const Backend* backend = find_backend(s.config.backend);
  if (backend == nullptr) return;
  if (switched_off_by_env("EMBER_PAD_CONV_CHANNELS")) {
    s.log.push_back("pad_conv_channels: off (EMBER_PAD_CONV_CHANNELS=0)");
    return;
  }
  const PadConvCounts n = pad_conv_channels(s.plan.network, *backend);
  s.log.push_back("pad_conv_channels: " + std::to_string(n.padded) +
                  " convolutions read zero-padded input channels (a multiple the back end's "
                  "fast kernels take), " + std::to_string(n.as_blocks) +
                  " of them stride-2 stems as stride-1 layers over 2x2 blocks (space-to-depth" +
                  (switched_off_by_env("EMBER_SPACE_TO_DEPTH") ? ": off, EMBER_SPACE_TO_DEPTH=0)"
                                                               : ")"));
}

}  // namespace ember::engine
