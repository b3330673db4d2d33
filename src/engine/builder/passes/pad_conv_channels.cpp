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
// With C' = 8 the layer does 8/3 the multiply-adds in a kernel that runs them ~10x faster.
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
// not measured. Convolutions reading one tensor share its Padding. EMBER_PAD_CONV_CHANNELS=0 leaves every
// layer as it is (A/B timing: bench/variants.py's half_unpadded_channels).
#include <cstring>
#include <map>

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

/// The padded channel count for convolution `l`, or 0 when it is left alone.
int64_t padded_channels(const Layer* l, const Backend& backend) {
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
  return m;
}

}  // namespace

int pad_conv_channels(Network& net, const Backend& backend) {
  int padded = 0;
  std::map<const Tensor*, Tensor*> padded_inputs;  // one Padding for convolutions sharing x
  const std::vector<Layer*> original = net.layers();  // the loop adds layers
  for (Layer* l : original) {
    const int64_t to = padded_channels(l, backend);
    if (to == 0) continue;
    std::vector<Tensor*> inputs = l->inputs();
    Tensor* x = inputs[0];
    const int64_t c = x->shape()[3].constant();
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
    ++padded;
  }
  remove_unreachable_layers(net);
  return padded;
}

void pass_pad_conv_channels(BuildState& s) {
  const Backend* backend = find_backend(s.config.backend);
  if (backend == nullptr) return;
  if (switched_off_by_env("EMBER_PAD_CONV_CHANNELS")) {
    s.log.push_back("pad_conv_channels: off (EMBER_PAD_CONV_CHANNELS=0)");
    return;
  }
  const int n = pad_conv_channels(s.plan.network, *backend);
  s.log.push_back("pad_conv_channels: " + std::to_string(n) +
                  " convolutions read zero-padded input channels (a multiple the back end's "
                  "fast kernels take)");
}

}  // namespace ember::engine
