// CPU kernels of the linear family: Convolution, Deconvolution, Pooling and MatrixMultiply.
//
// Everything computes in f32: f32 tensors are used in place, f16/bf16 ones are converted into
// f32 buffers first and rounded on store. Spatial geometry is normalized to three dims (depth,
// height, width; 1d and 2d get leading size-1 dims with a unit window), so one code path serves
// 1d/2d/3d.
//
// - Convolution: im2col of one image and channel group, for a chunk of output rows, then one
//   sgemm per chunk (weights [Kg, Cg*taps] x columns). A 1x1/stride-1/unpadded convolution reads
//   the input as the column matrix directly. Grouped convolutions with few channels per group
//   (depthwise) use a direct loop instead, parallel over output planes, because a per-group GEMM
//   of a handful of rows wastes BLAS.
// - Deconvolution is the adjoint: sgemm (weights^T x input) into columns, then col2im scatters
//   them into the output (parallel over output channels, so no two threads touch one plane).
// - MatrixMultiply: oneDNN's matmul when the build has it (dnnl_matmul.cpp, epilogue fused);
//   otherwise one sgemm per broadcast batch entry; when b has no batch and a is not
//   transposed, a's batch folds into the rows of a single sgemm.
// - Pooling: direct loops, parallel over the planes (N*C).
// - channels_last Convolution/Pooling (NHWC, KRSC weights): the reference permutes its operands
//   to NCHW, runs the kernels above and permutes the result back (correct, not fast: the CPU
//   back end never chooses this layout itself, the builder does so for the CUDA back end).
//
// oneDNN runs on the process's OpenMP threads (num_threads() of them). The reference GEMMs are
// called from the calling thread and threaded by OpenBLAS (set to num_threads());
// the memory-bound im2col/col2im/pooling loops use parallel_for.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cpu/dnnl_conv.h"
#include "backends/cpu/dnnl_matmul.h"
#include "backends/cpu/kernels.h"
#include "backends/semantics/pooling.h"

namespace ember::engine::cpu {

namespace {

// ---------------------------------------------------------------- f32 buffers

/// An f32 view of an input: the tensor's own memory when it is f32, a converted copy otherwise.
class FloatIn {
 public:
  explicit FloatIn(const HostTensor& t) {
    if (t.dtype == DataType::kF32) {
      data_ = t.as<const float>();
    } else {
      copy_ = to_float_vector(t);
      data_ = copy_.data();
    }
  }
  const float* data() const { return data_; }

 private:
  std::vector<float> copy_;
  const float* data_ = nullptr;
};

/// An f32 destination for an output: the tensor's memory when it is f32, otherwise a buffer that
/// finish() rounds into the tensor.
class FloatOut {
 public:
  explicit FloatOut(HostTensor& t) : tensor_(t) {
    if (t.dtype == DataType::kF32) {
      data_ = t.as<float>();
    } else {
      buffer_.assign(static_cast<size_t>(t.numel()), 0.0f);
      data_ = buffer_.data();
    }
  }
  float* data() const { return data_; }
  void finish() {
    if (tensor_.dtype != DataType::kF32) from_float_vector(buffer_, tensor_);
  }

 private:
  HostTensor& tensor_;
  std::vector<float> buffer_;
  float* data_ = nullptr;
};

// ---------------------------------------------------------------- GEMM

/// Converts a matrix dimension to BLAS's int, refusing sizes it cannot address.
int blas_dim(int64_t v) {
  if (v > INT_MAX) {
    throw Error("matrix dimension " + std::to_string(v) +
                " exceeds what BLAS addresses (2^31 - 1); split the layer");
  }
  return static_cast<int>(v);
}

/// C[m x n] = op(A)[m x k] * op(B)[k x n] + beta * C, row-major with leading dimensions.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS rejects leading dims of 0; the product is empty.
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      for (int64_t j = 0; j < n; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
    return;
  }
  // OpenBLAS threads the GEMM itself; keep it to the engine's thread budget (which follows the
  // process's OpenMP setting, so it is checked per call; set only when it changed).
  static std::atomic<int> blas_threads{0};
  const int want = num_threads();
  if (blas_threads.exchange(want) != want) openblas_set_num_threads(want);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, blas_dim(m), blas_dim(n), blas_dim(k), 1.0f, a,
              blas_dim(lda), b, blas_dim(ldb), beta, c, blas_dim(ldc));
}

// ---------------------------------------------------------------- spatial geometry

/// A window geometry right-aligned to three spatial dims (missing leading dims have size 1, a
/// unit window and no padding). For convolution and pooling `in` is the input and `out` the
/// output; deconvolution uses the same relation with the roles swapped.
struct Geometry {
  int64_t in[3] = {1, 1, 1};
  int64_t out[3] = {1, 1, 1};
  int64_t k[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t pad[3] = {0, 0, 0};      ///< Begin padding.
  int64_t pad_end[3] = {0, 0, 0};  ///< End padding (average pooling's divisor needs it).
  int64_t dil[3] = {1, 1, 1};
  int64_t in_plane() const { return in[0] * in[1] * in[2]; }
  int64_t out_plane() const { return out[0] * out[1] * out[2]; }
  int64_t taps() const { return k[0] * k[1] * k[2]; }
};

/// Builds a Geometry from the trailing spatial dims of `in_dims`/`out_dims` (as many as
/// `stride` has entries) and the per-dim parameters.
Geometry make_geometry(const std::vector<int64_t>& in_dims, const std::vector<int64_t>& out_dims,
                       const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                       const std::vector<int64_t>& pad_begin, const std::vector<int64_t>& pad_end,
                       const std::vector<int64_t>& dilation) {
  Geometry g;
  const size_t nsp = stride.size();
  const size_t off = 3 - nsp;
  for (size_t d = 0; d < nsp; ++d) {
    g.in[off + d] = in_dims[in_dims.size() - nsp + d];
    g.out[off + d] = out_dims[out_dims.size() - nsp + d];
    g.k[off + d] = kernel[kernel.size() - nsp + d];
    g.stride[off + d] = stride[d];
    g.pad[off + d] = pad_begin[d];
    g.pad_end[off + d] = pad_end[d];
    g.dil[off + d] = dilation[d];
  }
  return g;
}

/// A half-open index range.
struct Range {
  int64_t lo;
  int64_t hi;
};

/// The positions o in [0, count) with 0 <= o * step + offset < limit (step >= 1).
Range valid_range(int64_t count, int64_t step, int64_t offset, int64_t limit) {
  int64_t lo = offset >= 0 ? 0 : (-offset + step - 1) / step;
  int64_t hi = limit - offset <= 0 ? 0 : (limit - offset - 1) / step + 1;
  hi = std::min(hi, count);
  lo = std::min(lo, hi);
  return {lo, hi};
}

/// Bound on the im2col/col2im buffer (floats); larger problems are processed in row chunks.
constexpr int64_t kColumnBudget = int64_t{1} << 22;

/// The calling thread's im2col/col2im buffer of at least `n` floats. Kept between calls (at most
/// kColumnBudget floats plus one row) so that every convolution does not fault in fresh pages.
float* column_scratch(int64_t n) {
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < n) scratch.resize(static_cast<size_t>(n));
  return scratch.data();
}

/// Output rows (one (od, oh) pair each) per chunk, so that a chunk's columns fit the budget.
int64_t rows_per_chunk(int64_t floats_per_row, int64_t total_rows) {
  return std::clamp<int64_t>(kColumnBudget / std::max<int64_t>(floats_per_row, 1), 1,
                             std::max<int64_t>(total_rows, 1));
}

/// Writes the im2col matrix of `channels` consecutive input planes for output rows [r0, r1):
/// row (c, kd, kh, kw), column (r - r0) * out_w + ow holds the input element that tap reads, or
/// 0 in the padding.
void im2col(const float* x, int64_t channels, const Geometry& g, int64_t r0, int64_t r1,
            float* col) {
  const int64_t taps = g.taps();
  const int64_t out_w = g.out[2];
  const int64_t cols = (r1 - r0) * out_w;
  parallel_for(channels * taps, cols, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / taps, t = row % taps;
      const int64_t kd = t / (g.k[1] * g.k[2]), kh = (t / g.k[2]) % g.k[1], kw = t % g.k[2];
      const float* xc = x + c * g.in_plane();
      const int64_t w_off = kw * g.dil[2] - g.pad[2];
      const Range wr = valid_range(out_w, g.stride[2], w_off, g.in[2]);
      float* dst = col + row * cols;
      for (int64_t r = r0; r < r1; ++r, dst += out_w) {
        const int64_t id = (r / g.out[1]) * g.stride[0] + kd * g.dil[0] - g.pad[0];
        const int64_t ih = (r % g.out[1]) * g.stride[1] + kh * g.dil[1] - g.pad[1];
        if (id < 0 || id >= g.in[0] || ih < 0 || ih >= g.in[1]) {
          std::fill(dst, dst + out_w, 0.0f);
          continue;
        }
        const float* src = xc + (id * g.in[1] + ih) * g.in[2];
        std::fill(dst, dst + wr.lo, 0.0f);
        if (g.stride[2] == 1) {
          std::memcpy(dst + wr.lo, src + (wr.lo + w_off), sizeof(float) * (wr.hi - wr.lo));
        } else {
          for (int64_t ow = wr.lo; ow < wr.hi; ++ow) dst[ow] = src[ow * g.stride[2] + w_off];
        }
        std::fill(dst + wr.hi, dst + out_w, 0.0f);
      }
    }
  });
}

/// The adjoint of im2col: adds column (r - r0) * out_w + ow of row (c, kd, kh, kw) into the
/// plane element of `channels` consecutive planes that tap reads. Parallel over channels, so each
/// plane has one writer.
void col2im(const float* col, int64_t channels, const Geometry& g, int64_t r0, int64_t r1,
            float* x) {
  const int64_t taps = g.taps();
  const int64_t out_w = g.out[2];
  const int64_t cols = (r1 - r0) * out_w;
  parallel_for(channels, taps * cols, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      float* xc = x + c * g.in_plane();
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t kd = t / (g.k[1] * g.k[2]), kh = (t / g.k[2]) % g.k[1], kw = t % g.k[2];
        const int64_t w_off = kw * g.dil[2] - g.pad[2];
        const Range wr = valid_range(out_w, g.stride[2], w_off, g.in[2]);
        const float* src = col + (c * taps + t) * cols;
        for (int64_t r = r0; r < r1; ++r, src += out_w) {
          const int64_t id = (r / g.out[1]) * g.stride[0] + kd * g.dil[0] - g.pad[0];
          const int64_t ih = (r % g.out[1]) * g.stride[1] + kh * g.dil[1] - g.pad[1];
          if (id < 0 || id >= g.in[0] || ih < 0 || ih >= g.in[1]) continue;
          float* dst = xc + (id * g.in[1] + ih) * g.in[2];
          for (int64_t ow = wr.lo; ow < wr.hi; ++ow) dst[ow * g.stride[2] + w_off] += src[ow];
        }
      }
    }
  });
}

/// Sets every plane of out [N, K, plane] to its channel's bias (or 0 without bias).
void fill_bias(float* out, int64_t batch, int64_t channels, int64_t plane, const float* bias) {
  parallel_for(batch * channels, plane, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::fill(out + i * plane, out + (i + 1) * plane, bias ? bias[i % channels] : 0.0f);
    }
  });
}

/// Adds each channel's bias to its planes of out [N, K, plane].
void add_bias(float* out, int64_t batch, int64_t channels, int64_t plane, const float* bias) {
  parallel_for(batch * channels, plane, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float b = bias[i % channels];
      float* o = out + i * plane;
      for (int64_t j = 0; j < plane; ++j) o[j] += b;
    }
  });
}

// ---------------------------------------------------------------- convolution

/// The shapes of one convolution call.
struct ConvShape {
  int64_t batch;
  int64_t in_channels;
  int64_t out_channels;
  int64_t groups;
  Geometry g;
  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
};

/// Convolution through GEMM: out_g [Kg, plane] = w_g [Kg, Cg*taps] x columns [Cg*taps, plane].
void conv_gemm(const ConvShape& s, const float* x, const float* w, float* out) {
  const Geometry& g = s.g;
  const int64_t cg = s.in_per_group(), kg = s.out_per_group();
  const int64_t depth = cg * g.taps();
  bool direct_input = g.taps() == 1;  // 1x1, stride 1, no padding: the input is the column matrix.
  for (int d = 0; d < 3; ++d)
    direct_input = direct_input && g.in[d] == g.out[d] && g.stride[d] == 1 && g.pad[d] == 0;
  const int64_t rows = g.out[0] * g.out[1];
  const int64_t chunk = rows_per_chunk(depth * g.out[2], rows);
  float* col = direct_input ? nullptr : column_scratch(chunk * depth * g.out[2]);
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t grp = 0; grp < s.groups; ++grp) {
      const float* xg = x + (n * s.in_channels + grp * cg) * g.in_plane();
      const float* wg = w + grp * kg * depth;
      float* og = out + (n * s.out_channels + grp * kg) * g.out_plane();
      if (direct_input) {
        sgemm(false, false, kg, g.out_plane(), cg, wg, cg, xg, g.in_plane(), 0.0f, og,
              g.out_plane());
        continue;
      }
      for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t r1 = std::min(rows, r0 + chunk);
        const int64_t cols = (r1 - r0) * g.out[2];
        im2col(xg, cg, g, r0, r1, col);
        sgemm(false, false, kg, cols, depth, wg, depth, col, cols, 0.0f, og + r0 * g.out[2],
              g.out_plane());
      }
    }
  }
}

/// Direct convolution for groups with few channels (depthwise and similar): each output plane
/// accumulates weight * shifted input rows, parallel over the N*K planes.
void conv_direct(const ConvShape& s, const float* x, const float* w, const float* bias,
                 float* out) {
  const Geometry& g = s.g;
  const int64_t cg = s.in_per_group(), kg = s.out_per_group(), taps = g.taps();
  parallel_for(
      s.batch * s.out_channels, g.out_plane() * cg * taps, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t n = plane / s.out_channels, oc = plane % s.out_channels, grp = oc / kg;
          float* o = out + plane * g.out_plane();
          std::fill(o, o + g.out_plane(), bias ? bias[oc] : 0.0f);
          for (int64_t ci = 0; ci < cg; ++ci) {
            const float* xc = x + (n * s.in_channels + grp * cg + ci) * g.in_plane();
            const float* wk = w + (oc * cg + ci) * taps;
            for (int64_t t = 0; t < taps; ++t) {
              const int64_t kd = t / (g.k[1] * g.k[2]), kh = (t / g.k[2]) % g.k[1], kw = t % g.k[2];
              const float wv = wk[t];
              const int64_t d_off = kd * g.dil[0] - g.pad[0];
              const int64_t h_off = kh * g.dil[1] - g.pad[1];
              const int64_t w_off = kw * g.dil[2] - g.pad[2];
              const Range dr = valid_range(g.out[0], g.stride[0], d_off, g.in[0]);
              const Range hr = valid_range(g.out[1], g.stride[1], h_off, g.in[1]);
              const Range wr = valid_range(g.out[2], g.stride[2], w_off, g.in[2]);
              if (wr.lo >= wr.hi) continue;
              for (int64_t od = dr.lo; od < dr.hi; ++od) {
                const int64_t id = od * g.stride[0] + d_off;
                for (int64_t oh = hr.lo; oh < hr.hi; ++oh) {
                  const int64_t ih = oh * g.stride[1] + h_off;
                  float* orow = o + (od * g.out[1] + oh) * g.out[2];
                  const float* xrow = xc + (id * g.in[1] + ih) * g.in[2];
                  if (g.stride[2] == 1) {
                    const float* xs = xrow + (wr.lo + w_off);
                    float* os = orow + wr.lo;
                    for (int64_t j = 0, e = wr.hi - wr.lo; j < e; ++j) os[j] += wv * xs[j];
                  } else {
                    for (int64_t ow = wr.lo; ow < wr.hi; ++ow)
                      orow[ow] += wv * xrow[ow * g.stride[2] + w_off];
                  }
                }
              }
            }
          }
        }
      });
}

/// Whether the direct loop beats per-group GEMMs: grouped with few channels per group.
bool prefer_direct(const ConvShape& s) {
  return s.groups > 1 && s.in_per_group() * s.out_per_group() <= 64;
}

constexpr size_t kNoInput = static_cast<size_t>(-1);

constexpr int64_t kNhwcToNchw[] = {0, 3, 1, 2};  // NHWC -> NCHW, KRSC -> KCRS

/// `t` permuted (torch.permute's meaning) into `storage`, which the result points into.
HostTensor permuted(const HostTensor& t, const int64_t (&perm)[4], std::vector<uint8_t>& storage) {
  HostTensor out;
  out.dtype = t.dtype;
  for (const int64_t d : perm) out.dims.push_back(t.dims.at(static_cast<size_t>(d)));
  storage.resize(t.nbytes());
  out.data = storage.data();
  ShuffleParams p;
  p.first_transpose.assign(std::begin(perm), std::end(perm));
  KernelArgs a;
  a.inputs = {&t};
  a.outputs = {&out};
  run(p, a);
  return out;
}

/// Runs a channels_last layer (`p` with the flag set) through its NCHW kernel: inputs listed in
/// `nhwc_inputs` are permuted to NCHW (the others, such as a bias, pass as they are) and the
/// NCHW result is permuted back into the output.
template <class P>
void run_through_nchw(P p, const KernelArgs& a, std::initializer_list<size_t> nhwc_inputs) {
  p.channels_last = false;
  std::vector<std::vector<uint8_t>> storage(a.inputs.size() + 1);  // the last: the output
  std::vector<HostTensor> nchw(a.inputs.size());
  KernelArgs b = a;
  for (const size_t i : nhwc_inputs) {
    if (!a.has(i)) continue;
    nchw[i] = permuted(a.in(i), kNhwcToNchw, storage[i]);
    b.inputs[i] = &nchw[i];
  }
  HostTensor out;
  out.dtype = a.out().dtype;
  for (const int64_t d : kNhwcToNchw) out.dims.push_back(a.out().dims[static_cast<size_t>(d)]);
  storage.back().resize(out.nbytes());
  out.data = storage.back().data();
  b.outputs = {&out};
  run(p, b);
  ShuffleParams to_nhwc;
  to_nhwc.first_transpose = {0, 2, 3, 1};
  KernelArgs c;
  c.inputs = {&out};
  c.outputs = {&a.out()};
  run(to_nhwc, c);
}

/// Finishes a product with its fused epilogue: scales it, adds the bias along the last dim
/// (`bias_index`, MatrixMultiply only) and the residual in f32, rounds once to the output dtype,
/// then applies the activation in place.
void finish_with_epilogue(const Epilogue& e, const KernelArgs& a, size_t bias_index,
                          size_t residual_index, FloatOut& out) {
  HostTensor& ot = a.out();
  const int64_t n = ot.numel();
  float* y = out.data();
  if (e.scale != 1.0) {
    const auto s = static_cast<float>(e.scale);
    for (int64_t i = 0; i < n; ++i) y[i] *= s;
  }
  if (a.has(bias_index)) {
    const std::vector<float> bias = to_float_vector(a.in(bias_index));
    const auto cols = static_cast<int64_t>(bias.size());
    for (int64_t i = 0; i < n; ++i) y[i] += bias[static_cast<size_t>(i % cols)];
  }
  if (a.has(residual_index)) {
    const FloatIn r(a.in(residual_index));
    for (int64_t i = 0; i < n; ++i) y[i] += r.data()[i];
  }
  out.finish();
  if (e.fused_activation) {
    ActivationParams act;
    act.type = e.activation;
    act.alpha = e.alpha;
    act.beta = e.beta;
    KernelArgs in_place;
    in_place.inputs = {&ot};
    in_place.outputs = {&ot};
    run(act, in_place);
  }
}

}  // namespace

void run(const ConvolutionParams& p, const KernelArgs& a) {
  if (p.channels_last) {
    run_through_nchw(p, a, {0, 1, 3});  // x, weight (KRSC -> KCRS), residual
    return;
  }
  const HostTensor& xt = a.in(0);
  const HostTensor& wt = a.in(1);
  HostTensor& ot = a.out();
  const ConvShape s{xt.dims[0], xt.dims[1], ot.dims[1], p.groups,
                    make_geometry(xt.dims, ot.dims, wt.dims, p.stride, p.padding_begin,
                                  p.padding_end, p.dilation)};
  {
    FloatOut out(ot);
    bool activation_fused = false;
    if (dnnl_convolution(p, a, out.data(), activation_fused)) {
      Epilogue rest = p.epilogue;  // bias and residual are added; the activation may remain
      rest.fused_activation = p.epilogue.fused_activation && !activation_fused;
      finish_with_epilogue(rest, a, kNoInput, kNoInput, out);
      return;
    }
  }
  const FloatIn x(xt), w(wt);
  std::vector<float> bias;
  if (a.has(2)) bias = to_float_vector(a.in(2));
  FloatOut out(ot);
  const float* b = a.has(2) ? bias.data() : nullptr;
  // The epilogue scale multiplies the product, not the bias.
  const float scale = static_cast<float>(p.epilogue.scale);
  if (prefer_direct(s) && scale == 1.0f) {
    conv_direct(s, x.data(), w.data(), b, out.data());
  } else {
    if (prefer_direct(s)) {
      conv_direct(s, x.data(), w.data(), nullptr, out.data());
    } else {
      conv_gemm(s, x.data(), w.data(), out.data());
    }
    if (scale != 1.0f) {
      for (int64_t i = 0; i < ot.numel(); ++i) out.data()[i] *= scale;
    }
    if (b) add_bias(out.data(), s.batch, s.out_channels, s.g.out_plane(), b);
  }
  Epilogue rest = p.epilogue;
  rest.scale = 1.0;  // applied above
  finish_with_epilogue(rest, a, kNoInput, /*residual_index=*/3, out);
}

void run(const DeconvolutionParams& p, const KernelArgs& a) {
  const HostTensor& xt = a.in(0);
  const HostTensor& wt = a.in(1);
  HostTensor& ot = a.out();
  // Deconvolution is the adjoint of the convolution from its output to its input: the geometry's
  // "in" is the deconvolution output and its "out" the deconvolution input.
  const Geometry g = make_geometry(ot.dims, xt.dims, wt.dims, p.stride, p.padding_begin,
                                   p.padding_end, p.dilation);
  const int64_t batch = xt.dims[0], in_channels = xt.dims[1], out_channels = ot.dims[1];
  const int64_t cg = in_channels / p.groups, kg = out_channels / p.groups;
  const int64_t taps = g.taps(), depth = kg * taps;
  const FloatIn x(xt), w(wt);
  std::vector<float> bias;
  if (a.has(2)) bias = to_float_vector(a.in(2));
  FloatOut out(ot);
  fill_bias(out.data(), batch, out_channels, g.in_plane(), a.has(2) ? bias.data() : nullptr);
  const int64_t rows = g.out[0] * g.out[1];
  const int64_t chunk = rows_per_chunk(depth * g.out[2], rows);
  float* col = column_scratch(chunk * depth * g.out[2]);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t grp = 0; grp < p.groups; ++grp) {
      const float* xg = x.data() + (n * in_channels + grp * cg) * g.out_plane();
      const float* wg = w.data() + grp * cg * depth;  // [Cg, Kg*taps]
      float* og = out.data() + (n * out_channels + grp * kg) * g.in_plane();
      for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t r1 = std::min(rows, r0 + chunk);
        const int64_t cols = (r1 - r0) * g.out[2];
        sgemm(true, false, depth, cols, cg, wg, depth, xg + r0 * g.out[2], g.out_plane(), 0.0f, col,
              cols);
        col2im(col, kg, g, r0, r1, og);
      }
    }
  }
  out.finish();
}

// ---------------------------------------------------------------- pooling

namespace {

/// Max pooling of `planes` planes; padded positions never win and NaN propagates (as torch).
/// One output row at a time: for each window tap (depth, height, width offsets in that order,
/// the order a per-output loop visits them), the outputs whose tap lands inside the input are a
/// contiguous range, so the innermost loop runs along the row without bounds checks (and
/// vectorizes for stride 1).
template <typename T>
void max_pool(const T* x, T* out, int64_t planes, const Geometry& g) {
  const T lowest = std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity()
                                                        : std::numeric_limits<T>::lowest();
  const int64_t out_w = g.out[2], step = g.stride[2];
  parallel_for(planes, g.out_plane() * g.taps(), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* xp = x + plane * g.in_plane();
      for (int64_t od = 0; od < g.out[0]; ++od) {
        const int64_t d0 = od * g.stride[0] - g.pad[0];
        const Range dr = valid_range(g.k[0], g.dil[0], d0, g.in[0]);
        for (int64_t oh = 0; oh < g.out[1]; ++oh) {
          const int64_t h0 = oh * g.stride[1] - g.pad[1];
          const Range hr = valid_range(g.k[1], g.dil[1], h0, g.in[1]);
          T* orow = out + plane * g.out_plane() + (od * g.out[1] + oh) * out_w;
          std::fill(orow, orow + out_w, lowest);
          for (int64_t kd = dr.lo; kd < dr.hi; ++kd) {
            for (int64_t kh = hr.lo; kh < hr.hi; ++kh) {
              const T* xrow = xp + ((d0 + kd * g.dil[0]) * g.in[1] + h0 + kh * g.dil[1]) * g.in[2];
              for (int64_t kw = 0; kw < g.k[2]; ++kw) {
                const int64_t offset = kw * g.dil[2] - g.pad[2];
                const Range wr = valid_range(out_w, step, offset, g.in[2]);
                for (int64_t ow = wr.lo; ow < wr.hi; ++ow) {
                  const T v = xrow[ow * step + offset];
                  if constexpr (std::is_floating_point_v<T>) {
                    orow[ow] = (v > orow[ow] || v != v) ? v : orow[ow];
                  } else {
                    orow[ow] = std::max(orow[ow], v);
                  }
                }
              }
            }
          }
        }
      }
    }
  });
}

/// Average pooling with torch's divisor rules (count_include_pad counts the padding but not
/// the ceil-mode overhang past it; divisor_override wins when > 0).
void avg_pool(const float* x, float* out, int64_t planes, const Geometry& g, bool count_include_pad,
              int64_t divisor_override) {
  parallel_for(planes, g.out_plane() * g.taps(), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* xp = x + plane * g.in_plane();
      float* op = out + plane * g.out_plane();
      for (int64_t od = 0; od < g.out[0]; ++od) {
        for (int64_t oh = 0; oh < g.out[1]; ++oh) {
          for (int64_t ow = 0; ow < g.out[2]; ++ow) {
            const int64_t o[3] = {od, oh, ow};
            const semantics::AvgPoolWindow w =
                semantics::avg_pool_window(g, o, count_include_pad, divisor_override);
            if (w.empty) {
              *op++ = 0.0f;  // no input element in the window: torch writes 0
              continue;
            }
            float sum = 0.0f;
            for (int64_t id = w.lo[0]; id < w.hi[0]; ++id) {
              for (int64_t ih = w.lo[1]; ih < w.hi[1]; ++ih) {
                const float* row = xp + (id * g.in[1] + ih) * g.in[2];
                for (int64_t iw = w.lo[2]; iw < w.hi[2]; ++iw) sum += row[iw];
              }
            }
            *op++ = sum / static_cast<float>(w.divisor);
          }
        }
      }
    }
  });
}

}  // namespace

void run(const PoolingParams& p, const KernelArgs& a) {
  if (p.channels_last) {
    run_through_nchw(p, a, {0});
    return;
  }
  const HostTensor& xt = a.in(0);
  HostTensor& ot = a.out();
  const Geometry g = make_geometry(xt.dims, ot.dims, p.window, p.stride, p.padding_begin,
                                   p.padding_end, p.dilation);
  const size_t lead = xt.dims.size() - p.window.size();
  const int64_t planes = dims_numel(
      std::vector<int64_t>(xt.dims.begin(), xt.dims.begin() + static_cast<std::ptrdiff_t>(lead)));
  switch (p.type) {
    case PoolingType::kAverage: {
      const FloatIn x(xt);
      FloatOut out(ot);
      avg_pool(x.data(), out.data(), planes, g, p.count_include_pad, p.divisor_override);
      out.finish();
      return;
    }
    case PoolingType::kMax:
      break;
  }
  switch (xt.dtype) {
    case DataType::kF32:
      max_pool(xt.as<const float>(), ot.as<float>(), planes, g);
      return;
    case DataType::kF16:
    case DataType::kBF16: {
      const FloatIn x(xt);
      FloatOut out(ot);
      max_pool(x.data(), out.data(), planes, g);
      out.finish();
      return;
    }
    case DataType::kI8:
      max_pool(xt.as<const int8_t>(), ot.as<int8_t>(), planes, g);
      return;
    case DataType::kU8:
      max_pool(xt.as<const uint8_t>(), ot.as<uint8_t>(), planes, g);
      return;
    case DataType::kI32:
      max_pool(xt.as<const int32_t>(), ot.as<int32_t>(), planes, g);
      return;
    case DataType::kI64:
      max_pool(xt.as<const int64_t>(), ot.as<int64_t>(), planes, g);
      return;
    case DataType::kBool:
      break;
    case DataType::kF8E4M3: break;  // only Q/DQ and byte moves take f8
  }
  throw Error(std::string("max pooling of ") + dtype_name(xt.dtype) + " is not supported");
}

// ---------------------------------------------------------------- matrix multiply

void run(const MatrixMultiplyParams& p, const KernelArgs& a) {
  const HostTensor& at = a.in(0);
  const HostTensor& bt = a.in(1);
  HostTensor& ot = a.out();
  const size_t ra = at.dims.size(), rb = bt.dims.size();
  // A vector a is one row [1, K]; a vector b one column [K, 1]; their flags have no effect.
  const bool ta = ra >= 2 && p.transpose_a, tb = rb >= 2 && p.transpose_b;
  const int64_t m = ra >= 2 ? at.dims[ra - (ta ? 1 : 2)] : 1;
  const int64_t k = ra >= 2 ? at.dims[ra - (ta ? 2 : 1)] : at.dims[0];
  const int64_t n = rb >= 2 ? bt.dims[rb - (tb ? 2 : 1)] : 1;
  const int64_t lda = ra >= 2 ? at.dims[ra - 1] : k;
  const int64_t ldb = rb >= 2 ? bt.dims[rb - 1] : 1;
  const std::vector<int64_t> a_batch(at.dims.begin(), at.dims.end() - std::min<size_t>(ra, 2));
  const std::vector<int64_t> b_batch(bt.dims.begin(), bt.dims.end() - std::min<size_t>(rb, 2));
  const size_t out_batch_rank = ot.dims.size() - (ra >= 2 ? 1 : 0) - (rb >= 2 ? 1 : 0);
  const std::vector<int64_t> out_batch(
      ot.dims.begin(), ot.dims.begin() + static_cast<std::ptrdiff_t>(out_batch_rank));
  const int64_t batch = dims_numel(out_batch);

  {
    FloatOut out(ot);
    bool activation_fused = false;
    if (dnnl_matmul(p, a, out.data(), activation_fused)) {
      Epilogue rest = p.epilogue;  // scale, bias and residual are applied; maybe the activation
      rest.scale = 1.0;
      rest.fused_activation = p.epilogue.fused_activation && !activation_fused;
      finish_with_epilogue(rest, a, kNoInput, kNoInput, out);
      return;
    }
  }
  const FloatIn x(at), y(bt);
  FloatOut out(ot);
  if (!ta && ra >= 2 && dims_numel(b_batch) == 1) {
    // One shared b: a's batch entries are consecutive row blocks of one [batch*M, K] matrix.
    sgemm(false, tb, batch * m, n, k, x.data(), lda, y.data(), ldb, 0.0f, out.data(), n);
    finish_with_epilogue(p.epilogue, a, 2, 3, out);
    return;
  }
  const std::vector<int64_t> as = broadcast_strides(a_batch, out_batch);
  const std::vector<int64_t> bs = broadcast_strides(b_batch, out_batch);
  std::vector<int64_t> index(out_batch.size(), 0);
  int64_t a_off = 0, b_off = 0;  // in matrices
  for (int64_t i = 0; i < batch; ++i) {
    sgemm(ta, tb, m, n, k, x.data() + a_off * m * k, lda, y.data() + b_off * k * n, ldb, 0.0f,
          out.data() + i * m * n, n);
    // Advance the multi-index (last dim fastest) and the operand offsets with it.
    for (size_t d = out_batch.size(); d-- > 0;) {
      a_off += as[d];
      b_off += bs[d];
      if (++index[d] < out_batch[d]) break;
      a_off -= as[d] * out_batch[d];
      b_off -= bs[d] * out_batch[d];
      index[d] = 0;
    }
  }
  finish_with_epilogue(p.epilogue, a, 2, 3, out);
}

}  // namespace ember::engine::cpu
