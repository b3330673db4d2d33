// What a layer costs at least, for rooflines: its matrix-engine FLOPs and the bytes it must move.
// Engine::inspect_json reports both per layer and summed; bench/bench.py and
// bench/kernel_profile.py turn them into the fraction of the roofline a row reaches.
#pragma once

#include <optional>

#include "ember/engine/network.h"

namespace ember::engine {

/// A layer's least work, counted from its shapes:
/// - flops: the multiply-adds of its products, two FLOPs each (MatrixMultiply, Convolution,
///   Deconvolution, Attention and their quantized forms; a causal attention counts the half of
///   its scores it needs). Every other layer counts 0: pointwise layers, norms, softmax and
///   data movement are bound by their bytes, and their arithmetic runs on the CUDA cores.
/// - bytes: each distinct input tensor read once (weights included) plus each output written
///   once; a Gather or Slice reads only the part of its data it outputs, and an attention
///   with packed heads the thirds of each packed input that its q, k and v read. Constant layers count nothing
///   (their readers count them), nor does a layer whose output shares its input's memory
///   (`aliased`: a reshape the memory plan placed on its input's slot).
/// The counts are the built engine's work: a convolution whose channels the builder padded
/// (pad_conv_channels: the RGB stem's 3 to 8, or its 2x2 space-to-depth) counts the padded
/// multiply-adds too, so such a layer's bound is above the model's own.
/// bench/bench.py, bench/variants.py and bench/kernel_profile.py read them through
/// Engine::inspect_json (bench/roofline.py).
struct LayerCost {
  double flops = 0.0;
  double bytes = 0.0;
};

/// The layer's cost, or nothing when a shape it depends on is symbolic (a dynamic dimension).
std::optional<LayerCost> layer_cost(const Layer& layer, bool aliased = false);

}  // namespace ember::engine
