// INT8 convolution as an implicit GEMM on the tensor cores, finished in the same kernel
// (quantized_conv.cpp's path 0, EMBER_QCONV=igemm; quantized_matmul.cpp runs symmetric INT8
// products through it as 1x1 convolutions with EMBER_QMATMUL=igemm). Opt-in: on an H100 it
// measured slower than cuDNN's graph (bench/results/2026-12-07-session41.md), each block's
// fully unrolled epilogue having cost ~30-40 us; the epilogue below (through shared memory, a
// loop not unrolled) has not run on a GPU yet.
//
//   out[m, k] = epilogue(sum over (r, s, c) of x[n, oh*sh - ph + r*dh, ow*sw - pw + s*dw, c]
//                                            * w[k, r, s, c])
//
// with m = (n, oh, ow) the output pixel and k the output channel: x NHWC int8 and w KRSC int8
// as the channels_last layer holds them (no packing, no im2col matrix), the sums exact in int32,
// and the epilogue (scales, bias, residual, rounding to the float type, activation,
// requantization) product_epilogue.cuh's, element by element as the epilogue pass applies it,
// so the bytes equal the GEMM path's. One kernel writes the NHWC output: no int32 sums in memory.
//
// A block computes a 128 x 128 tile of out (256 threads, 8 warps of 64 x 32) over the reduction
// R * S * C in steps of 64 bytes: each step's x rows (gathered from the input: a 16-byte chunk
// never straddles two taps because C % 16 == 0; taps in the padding read as zeros through
// cp.async's zero fill, exact since the activations are symmetric) and w rows go to shared
// memory by cp.async, kStages steps in flight, in rows of four 16-byte chunks stored at
// chunk ^ ((row / 2) % 4) so that ldmatrix reads eight rows without a bank conflict. Each warp
// multiplies with mma.sync m16n8k32 (s8 x s8 -> s32). The sums then go through shared memory
// as the block's tile, and each thread finishes one column pair of every fourth row.
//
// Covered: 2-d, groups = 1, int8 (not uint8) activations without a zero point, C % 16 == 0,
// x and w 16-byte aligned, sizes that fit the kernel's 32-bit pixel and reduction indices.
// The caller (quantized_conv.cpp) checks this with igemm_covers.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/product_epilogue.cuh"
#include "backends/cuda/quantize_kernels.h"

namespace ember::engine::cuda {

namespace {

constexpr int kBlockM = 128, kBlockN = 128, kBlockK = 64;  // K in bytes (int8 elements)
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr int kTileBytes = kBlockM * kBlockK;  // one operand's tile per stage (A and B alike)
constexpr int kPipelineBytes = kStages * 2 * kTileBytes;
// The epilogue stages the block's int32 sums through the same shared memory: 128 rows of 128
// sums, rows padded by 8 words so that a half-warp's pair stores (four rows of eight words)
// land on distinct banks.
constexpr int kSumStride = kBlockN + 8;
static_assert(kThreads % (kBlockN / 2) == 0 && kBlockN == 128 && kBlockM == 128,
              "the epilogue's loop gives each thread one column pair of every fourth row");
constexpr int kEpilogueBytes = kBlockM * kSumStride * 4;
constexpr int kSmemBytes = kPipelineBytes > kEpilogueBytes ? kPipelineBytes : kEpilogueBytes;

std::atomic<int64_t> g_launches{0};  // igemm_launches()

struct IgemmGeometry {
  int32_t h, w, c;          // input
  int32_t oh, ow, k;        // output (k: output channels)
  int32_t r, s;             // taps
  int32_t sh, sw, ph, pw, dh, dw;
  int32_t m;                // N * OH * OW
  int32_t kd;               // R * S * C
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// 16 bytes from global to shared, zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(bytes));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Byte offset of 16-byte chunk `chunk` (0..3) of tile row `row` (64 bytes a row), swizzled.
__device__ __forceinline__ int tile_offset(int row, int chunk) {
  return row * kBlockK + ((chunk ^ ((row >> 1) & 3)) << 4);
}

template <typename TO>
__global__ void __launch_bounds__(kThreads)
    qconv_igemm_kernel(const int8_t* __restrict__ x, const int8_t* __restrict__ w, void* out,
                       IgemmGeometry g, ProductEpilogue e) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;  // 2 x 4 warps of 64 x 32
  const int m0 = blockIdx.x * kBlockM, n0 = blockIdx.y * kBlockN;

  // This thread's loads: rows (tid / 4) and (tid / 4 + 64) of each tile, chunk tid % 4.
  const int chunk = tid & 3;
  int a_ih[2], a_iw[2];
  const int8_t* a_base[2];
  bool a_row_ok[2];
  const int8_t* b_base[2];
  bool b_row_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = (tid >> 2) + 64 * i;
    const int m = m0 + row;
    a_row_ok[i] = m < g.m;
    const int mm = a_row_ok[i] ? m : 0;
    const int ow = mm % g.ow, t = mm / g.ow;
    const int oh = t % g.oh, n = t / g.oh;
    a_ih[i] = oh * g.sh - g.ph;
    a_iw[i] = ow * g.sw - g.pw;
    a_base[i] = x + static_cast<int64_t>(n) * g.h * g.w * g.c;
    const int nn = n0 + row;
    b_row_ok[i] = nn < g.k;
    b_base[i] = w + static_cast<int64_t>(b_row_ok[i] ? nn : 0) * g.kd;
  }

  const auto load_stage = [&](int stage, int kt) {
    uint8_t* a_tile = smem + stage * 2 * kTileBytes;
    uint8_t* b_tile = a_tile + kTileBytes;
    const int k = kt * kBlockK + chunk * 16;
    const bool k_ok = k < g.kd;
    // The tap and channel of reduction index k (C % 16 == 0: the chunk's 16 share a tap).
    const int rs = k_ok ? k / g.c : 0;
    const int c = k - rs * g.c;
    const int r = rs / g.s, s = rs - (rs / g.s) * g.s;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = (tid >> 2) + 64 * i;
      const int ih = a_ih[i] + r * g.dh, iw = a_iw[i] + s * g.dw;
      const bool a_ok = a_row_ok[i] && k_ok && ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
      const int8_t* a_src = a_ok ? a_base[i] + (static_cast<int64_t>(ih) * g.w + iw) * g.c + c : x;
      cp_async16(smem_addr(a_tile + tile_offset(row, chunk)), a_src, a_ok);
      const bool b_ok = b_row_ok[i] && k_ok;
      cp_async16(smem_addr(b_tile + tile_offset(row, chunk)), b_ok ? b_base[i] + k : w, b_ok);
    }
  };

  int32_t acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[i][j][v] = 0;
    }
  }

  const int k_tiles = (g.kd + kBlockK - 1) / kBlockK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    asm volatile("cp.async.commit_group;\n" ::);
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
    __syncthreads();  // stage kt is in; every warp is done with the stage refilled below
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next % kStages, next);
    asm volatile("cp.async.commit_group;\n" ::);

    const uint8_t* a_tile = smem + (kt % kStages) * 2 * kTileBytes;
    const uint8_t* b_tile = a_tile + kTileBytes;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two k32 steps per 64-byte tile
      uint32_t a[4][4];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        // Matrices: rows 0-7 / 8-15 of bytes 0-15, then of bytes 16-31 (a0..a3 of m16n8k32).
        const int row = warp_m * 64 + mi * 16 + (lane & 15);
        ldmatrix_x4(smem_addr(a_tile + tile_offset(row, ks * 2 + (lane >> 4))), a[mi][0],
                    a[mi][1], a[mi][2], a[mi][3]);
      }
      uint32_t b[4][2];
#pragma unroll
      for (int nj = 0; nj < 4; nj += 2) {
        // Matrices: n rows 0-7 of bytes 0-15 and 16-31 (b0, b1 of tile nj), then rows 8-15
        // (tile nj + 1).
        const int row = warp_n * 32 + nj * 8 + ((lane >> 4) << 3) + (lane & 7);
        ldmatrix_x4(smem_addr(b_tile + tile_offset(row, ks * 2 + ((lane >> 3) & 1))), b[nj][0],
                    b[nj][1], b[nj + 1][0], b[nj + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) mma_s8(acc[mi][nj], a[mi], b[nj][0], b[nj][1]);
      }
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();  // every warp is done with the pipeline's shared memory

  // The sums go to shared memory as the block's 128 x 128 tile (m16n8's d0, d1 at row lane / 4,
  // columns 2 * (lane % 4) + {0, 1}; d2, d3 eight rows further), then each thread finishes one
  // column pair of every fourth row with the epilogue pass's arithmetic (product_epilogue.cuh)
  // in a loop that is not unrolled: a warp writes 64 consecutive outputs of a row at a time, and
  // the epilogue's code (the activation's cases included) is there once. Unrolled over the 64
  // sums a thread holds, it was ~400 KB of instructions, and each block spent ~40 us in it
  // (ResNet-50 INT8 b32 on an H100, session 41).
  auto* sums = reinterpret_cast<int32_t*>(smem);
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp_m * 64 + mi * 16 + (lane >> 2) + half * 8;
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) {
        const int col = warp_n * 32 + nj * 8 + ((lane & 3) << 1);
        *reinterpret_cast<int2*>(sums + row * kSumStride + col) =
            make_int2(acc[mi][nj][half * 2], acc[mi][nj][half * 2 + 1]);
      }
    }
  }
  __syncthreads();

  const ActivationFn act{e.type, e.alpha, e.beta};
  const float inv = e.out_scale != nullptr ? semantics::quant_inv_scale(e.out_scale[0]) : 1.0f;
  const int pair = tid & (kBlockN / 2 - 1);  // this thread's columns: n and n + 1
  const int n = n0 + 2 * pair;
  if (n >= g.k) return;
  const bool second = n + 1 < g.k;
  const float mult0 = product_multiplier(n, e), bias0 = product_bias<TO>(n, e);
  const float mult1 = second ? product_multiplier(n + 1, e) : 0.0f;
  const float bias1 = second ? product_bias<TO>(n + 1, e) : 0.0f;
  // With K even, n + 1 is in range and the pair is one aligned 2- or 4-byte store.
  const bool pairs = (g.k & 1) == 0;
#pragma unroll 1
  for (int row = tid / (kBlockN / 2); row < kBlockM; row += kThreads / (kBlockN / 2)) {
    const int m = m0 + row;
    if (m >= g.m) break;
    const int2 sum = *reinterpret_cast<const int2*>(sums + row * kSumStride + 2 * pair);
    const int64_t i = static_cast<int64_t>(m) * g.k + n;
    TO val[2];
    val[0] = product_value_from<TO>(mult0, bias0, static_cast<float>(sum.x), e,
                                    residual_at<TO>(e, i), act);
    val[1] = val[0];
    if (second) {
      val[1] = product_value_from<TO>(mult1, bias1, static_cast<float>(sum.y), e,
                                      residual_at<TO>(e, i + 1), act);
    }
    if (e.out_scale != nullptr) {
      int8_t q[2];
      q[0] = product_requantized_with<TO>(val[0], inv, e);
      if (second) q[1] = product_requantized_with<TO>(val[1], inv, e);
      if (pairs) {
        uint16_t word;
        memcpy(&word, q, 2);
        *reinterpret_cast<uint16_t*>(static_cast<int8_t*>(out) + i) = word;
      } else {
        static_cast<int8_t*>(out)[i] = q[0];
        if (second) static_cast<int8_t*>(out)[i + 1] = q[1];
      }
    } else if (pairs && sizeof(TO) == 2) {
      uint32_t word;
      memcpy(&word, val, 4);
      *reinterpret_cast<uint32_t*>(static_cast<TO*>(out) + i) = word;
    } else {
      static_cast<TO*>(out)[i] = val[0];
      if (second) static_cast<TO*>(out)[i + 1] = val[1];
    }
  }
}

template <typename TO>
void launch_typed(const int8_t* x, const int8_t* w, void* out, const IgemmGeometry& g,
                  const ProductEpilogue& e, cudaStream_t stream) {
  // Per device, so set on every launch (a host call, no stream work: allowed in a capture).
  check(cudaFuncSetAttribute(qconv_igemm_kernel<TO>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kSmemBytes),
        "cudaFuncSetAttribute (int8 implicit GEMM)");
  const dim3 grid((g.m + kBlockM - 1) / kBlockM, (g.k + kBlockN - 1) / kBlockN);
  qconv_igemm_kernel<TO><<<grid, kThreads, kSmemBytes, stream>>>(x, w, out, g, e);
  check(cudaGetLastError(), "int8 implicit GEMM launch");
  ++g_launches;
}

bool fits32(int64_t v) { return v >= 0 && v <= INT32_MAX; }

}  // namespace

int64_t igemm_launches() { return g_launches.load(); }

std::string igemm_covers(const QConvGeometry& g, DataType x_type, bool zero_point,
                         const void* x, const void* w) {
  if (!g.channels_last) return "its activations are not NHWC";
  if (g.groups != 1) return "it is grouped";
  if (g.in[0] != 1 || g.kernel[0] != 1 || g.out[0] != 1) return "it is 3-d";
  if (x_type != DataType::kI8 || zero_point) {
    return "its activations are not symmetric int8";
  }
  if (g.in_channels % 16 != 0) return "its input channels are not a multiple of 16";
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(w) % 16 != 0) {
    return "an operand is not 16-byte aligned";
  }
  const int64_t m = g.batch * g.out[1] * g.out[2];
  const int64_t kd = g.kernel[1] * g.kernel[2] * g.in_channels;
  // Tile edges (m0 + row, n0 + row, k + 16) and the input coordinates stay in int32.
  const int64_t reach_h = (g.out[1] - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1];
  const int64_t reach_w = (g.out[2] - 1) * g.stride[2] + (g.kernel[2] - 1) * g.dilation[2];
  if (!fits32(m + kBlockM) || !fits32(g.out_channels + kBlockN) || !fits32(kd + kBlockK) ||
      !fits32(g.batch * g.in[1] * g.in[2]) || !fits32(reach_h + g.pad[1]) ||
      !fits32(reach_w + g.pad[2])) {
    return "a size does not fit its 32-bit indices";
  }
  if ((g.out_channels + kBlockN - 1) / kBlockN > 65535) return "it has too many output channels";
  // |x * w| <= 128 * 128 per tap: int32 sums cannot wrap below 2^17 taps.
  if (kd > (int64_t{1} << 17)) return "its reduction is longer than 2^17";
  return {};
}

void launch_qconv_igemm(const void* x, const void* w, void* out, DataType float_type,
                        const QConvGeometry& geo, const ProductEpilogue& e, cudaStream_t stream) {
  IgemmGeometry g;
  g.h = static_cast<int32_t>(geo.in[1]);
  g.w = static_cast<int32_t>(geo.in[2]);
  g.c = static_cast<int32_t>(geo.in_channels);
  g.oh = static_cast<int32_t>(geo.out[1]);
  g.ow = static_cast<int32_t>(geo.out[2]);
  g.k = static_cast<int32_t>(geo.out_channels);
  g.r = static_cast<int32_t>(geo.kernel[1]);
  g.s = static_cast<int32_t>(geo.kernel[2]);
  g.sh = static_cast<int32_t>(geo.stride[1]);
  g.sw = static_cast<int32_t>(geo.stride[2]);
  g.ph = static_cast<int32_t>(geo.pad[1]);
  g.pw = static_cast<int32_t>(geo.pad[2]);
  g.dh = static_cast<int32_t>(geo.dilation[1]);
  g.dw = static_cast<int32_t>(geo.dilation[2]);
  g.m = static_cast<int32_t>(geo.batch * geo.out[1] * geo.out[2]);
  g.kd = g.r * g.s * g.c;
  const auto* xi = static_cast<const int8_t*>(x);
  const auto* wi = static_cast<const int8_t*>(w);
  switch (float_type) {
    case DataType::kF32:
      return launch_typed<float>(xi, wi, out, g, e, stream);
    case DataType::kF16:
      return launch_typed<__half>(xi, wi, out, g, e, stream);
    case DataType::kBF16:
      return launch_typed<__nv_bfloat16>(xi, wi, out, g, e, stream);
    default:
      break;
  }
  throw Error(std::string("int8 implicit GEMM: unsupported float type ") + dtype_name(float_type));
}

}  // namespace ember::engine::cuda
