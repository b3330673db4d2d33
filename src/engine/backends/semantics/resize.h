// Resize's coordinate arithmetic (torch's upsample rules), the one definition both back ends
// use: the CPU's nearest maps and interpolation taps on the host, and the CUDA resize kernels on
// the device. The float operations are explicitly rounded on the device (no fused multiply-add),
// so the source indices and weights are the same bits on both. The resampling sums themselves
// stay in each back end.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/semantics/host_device.h"
#include "ember/engine/layers.h"

namespace ember::engine::semantics {

/// a * b, a + b, a - b rounded once each (nvcc would otherwise fuse a multiply and an add).
EMBER_HOST_DEVICE inline float resize_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
EMBER_HOST_DEVICE inline float resize_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
EMBER_HOST_DEVICE inline float resize_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
EMBER_HOST_DEVICE inline double resize_dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

/// PyTorch's compute_scales_value: the input/output ratio of dim d, 1/scale when the layer
/// gives scales (host: the CUDA back end computes it before the launch).
inline float resize_size_ratio(const ResizeParams& p, size_t d, int64_t in, int64_t out) {
  if (!p.scales.empty()) return static_cast<float>(1.0 / p.scales[d]);
  return static_cast<float>(in) / static_cast<float>(out);
}

/// PyTorch's area_pixel_compute_scale: the factor the coordinate mapping multiplies by (host).
inline float resize_coordinate_scale(const ResizeParams& p, size_t d, int64_t in, int64_t out) {
  if (p.coordinate == ResizeCoordinate::kAlignCorners) {
    return out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.0f;
  }
  return resize_size_ratio(p, d, in, out);
}

/// A floored source coordinate clamped into [0, n - 1] (NaN to 0) before converting, so no
/// float-to-int conversion overflows.
EMBER_HOST_DEVICE inline int64_t resize_clamp_index(float v, int64_t n) {
  if (!(v > 0.0f)) return 0;
  if (v >= static_cast<float>(n - 1)) return n - 1;
  const auto i = static_cast<int64_t>(v);
  return i < n - 1 ? i : n - 1;
}

/// PyTorch's area_pixel_compute_source_index, extended with the asymmetric mapping: the real
/// source coordinate of output index j. Half-pixel coordinates below 0 clamp to 0 when
/// `clamp_negative` (linear; torch's cubic does not clamp).
EMBER_HOST_DEVICE inline float resize_source_coordinate(ResizeCoordinate c, float scale,
                                                        int64_t j, bool clamp_negative) {
  if (c == ResizeCoordinate::kHalfPixel) {
    const float s =
        resize_sub(resize_mul(scale, resize_add(static_cast<float>(j), 0.5f)), 0.5f);
    return clamp_negative && s < 0.0f ? 0.0f : s;
  }
  return resize_mul(scale, static_cast<float>(j));  // align-corners and asymmetric
}

/// The source index of output index j of a nearest resize along a dim of `in` -> `out`, with
/// that dim's size ratio and coordinate scale. torch's two modes (nearest: asymmetric + floor;
/// nearest-exact: half-pixel + round half up) follow torch's own arithmetic, shortcuts
/// included, so they match torch bit for bit.
EMBER_HOST_DEVICE inline int64_t resize_nearest_index(ResizeCoordinate c, ResizeRounding r,
                                                      float ratio, float scale, int64_t in,
                                                      int64_t out, int64_t j) {
  if (c == ResizeCoordinate::kAsymmetric && r == ResizeRounding::kFloor) {
    if (in == out) return j;
    if (out == 2 * in) return j >> 1;
    return resize_clamp_index(floorf(resize_mul(static_cast<float>(j), ratio)), in);
  }
  if (c == ResizeCoordinate::kHalfPixel && r == ResizeRounding::kHalfUp) {
    const double x = resize_dmul(static_cast<double>(j) + 0.5, static_cast<double>(ratio));
    return resize_clamp_index(floorf(static_cast<float>(x)), in);
  }
  const float src = resize_source_coordinate(c, scale, j, false);
  return resize_clamp_index(
      r == ResizeRounding::kFloor ? floorf(src) : floorf(resize_add(src, 0.5f)), in);
}

/// PyTorch's guard_index_and_lambda: the floor index of `real` (at least -1, at most n - 1; a
/// NaN coordinate gives -1 rather than an undefined conversion) and the fraction past it,
/// clamped to [0, 1] as torch's std::max / std::min do (a -0 or a NaN passes through).
EMBER_HOST_DEVICE inline void resize_floor_fraction(float real, int64_t n, int64_t& index,
                                                    float& t) {
  float f = floorf(real);
  if (!(f >= -1.0f)) f = -1.0f;  // clamped before converting: no overflow, NaN included
  index = f >= static_cast<float>(n - 1) ? n - 1 : static_cast<int64_t>(f);
  const float d = resize_sub(real, static_cast<float>(index));
  const float lo = d < 0.0f ? 0.0f : d;
  t = 1.0f < lo ? 1.0f : lo;
}

/// Keys cubic convolution weights (torch's get_cubic_upsample_coefficients, coefficient `a`)
/// of the four taps around fraction t, rounded step by step.
EMBER_HOST_DEVICE inline void resize_cubic_weights(float t, float a, float w[4]) {
  const auto near = [a](float x) {
    const float p = resize_sub(resize_mul(resize_add(a, 2.0f), x), resize_add(a, 3.0f));
    return resize_add(resize_mul(resize_mul(p, x), x), 1.0f);
  };
  const auto far = [a](float x) {
    const float p = resize_sub(resize_mul(a, x), resize_mul(5.0f, a));
    const float q = resize_add(resize_mul(p, x), resize_mul(8.0f, a));
    return resize_sub(resize_mul(q, x), resize_mul(4.0f, a));
  };
  const float u = resize_sub(1.0f, t);
  w[0] = far(resize_add(t, 1.0f));
  w[1] = near(t);
  w[2] = near(u);
  w[3] = far(resize_add(u, 1.0f));
}

}  // namespace ember::engine::semantics
