// Matrix products through oneDNN (the CPU back end's fast path when the build found oneDNN):
// MatrixMultiply layers with their epilogue fused as oneDNN post-ops, and the two batched
// products of the fused Attention layer. Both fall back to the reference kernels (return
// false) when oneDNN is absent, turned off (EMBER_CPU_DNNL=0) or refuses the configuration.
#pragma once

#include "backends/cpu/kernels.h"

namespace ember::engine::cpu {

/// Runs `p` through oneDNN's matmul when it can (both operands of rank >= 2) and returns
/// true; false leaves the layer to the reference kernel. The product, in f32, goes to `y_f32`
/// (the output's own memory when it is f32) with the epilogue's scale, bias and residual
/// applied, and its activation too when `activation_fused` comes back true (f32 outputs; the
/// caller applies it otherwise, after rounding, as the reference does). `a.cache`, when set,
/// keeps the primitive for the next call of the same layer and shape.
bool dnnl_matmul(const MatrixMultiplyParams& p, const KernelArgs& a, float* y_f32,
                 bool& activation_fused);

/// Runs the Attention layer as scores = scale * q k^T (a batched oneDNN matmul), the mask and
/// causal limit added, a oneDNN softmax over the keys, and out = probabilities v (a second
/// batched matmul, written straight into the output's layout when it is f32). Returns false
/// when oneDNN is absent or off, leaving the layer to the reference kernel.
bool dnnl_attention(const AttentionParams& p, const KernelArgs& a);

}  // namespace ember::engine::cpu
