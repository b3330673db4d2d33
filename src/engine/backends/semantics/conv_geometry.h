// A quantized convolution's geometry as both back ends' int8 loops read it: the CPU's reference
// (cpu/quantize.cpp) and the CUDA direct kernel and packing kernels (cuda/quantize.cu), so the
// index math that reads x and w is fed the same numbers on both.
#pragma once

#include <stdint.h>

#include <vector>

#include "ember/engine/layers.h"

namespace ember::engine::semantics {

/// Spatial dims padded to three with leading 1s (1-d and 2-d convolutions are 3-d ones of depth
/// and height 1), so one loop nest serves them all; NC... x and KC... w, or (channels_last,
/// 2-d only) NHWC x, KRSC w and an NHWC output. `pad` is the begin padding: the end padding
/// only shortens the output, which `out` already says.
struct ConvGeometry {
  int64_t batch = 0, in_channels = 0, out_channels = 0, groups = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0}, dilation[3] = {1, 1, 1};
  bool channels_last = false;
};

/// The geometry of `p` for input, weight and output dims `x`, `w`, `out` (host only).
inline ConvGeometry conv_geometry(const QuantizedConvolutionParams& p, const std::vector<int64_t>& x,
                                  const std::vector<int64_t>& w,
                                  const std::vector<int64_t>& out) {
  ConvGeometry g;
  g.channels_last = p.channels_last;
  // Where the channels and the first spatial dim are: NC... or N...C (KRSC w likewise).
  const size_t c_at = p.channels_last ? x.size() - 1 : 1, sp_at = p.channels_last ? 1 : 2;
  g.batch = x[0];
  g.in_channels = x[c_at];
  g.out_channels = w[0];
  g.groups = p.groups;
  const size_t nsp = x.size() - 2, skip = 3 - nsp;
  for (size_t d = 0; d < nsp; ++d) {
    g.in[skip + d] = x[sp_at + d];
    g.out[skip + d] = out[sp_at + d];
    g.kernel[skip + d] = w[sp_at + d];
    g.stride[skip + d] = p.stride[d];
    g.pad[skip + d] = p.padding_begin[d];
    g.dilation[skip + d] = p.dilation[d];
  }
  return g;
}

}  // namespace ember::engine::semantics
