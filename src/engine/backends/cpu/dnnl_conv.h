// Convolution through oneDNN (the CPU back end's fast path when the build found oneDNN, Debian's
// libdnnl-dev): the same library PyTorch's CPU convolutions use, with the epilogue fused as
// oneDNN post-ops and the weights reordered into oneDNN's blocked layout once per context.
#pragma once

#include "backends/cpu/kernels.h"

namespace ember::engine::cpu {

/// Runs `p` through oneDNN when it can (2-d NCHW, unit epilogue scale, oneDNN present) and
/// returns true; false leaves the layer to the reference kernel. The result, in f32, goes to
/// `y_f32` (the output's own memory when it is f32) with the bias and the residual added, and
/// the activation applied when `activation_fused` comes back true (f32 outputs; the caller
/// applies it otherwise). `a.cache`, when set, keeps the primitive and the reordered weights
/// for the next call of the same layer and shape.
bool dnnl_convolution(const ConvolutionParams& p, const KernelArgs& a, float* y_f32,
                      bool& activation_fused);

/// Whether this build has the oneDNN path (for logs and tests).
bool dnnl_available();

}  // namespace ember::engine::cpu
