// CUDA kernels of the fused Attention layer (AttentionParams in layers.h; the CPU reference is
// src/engine/backends/cpu/attention.cpp).
//
// f16/bf16 with head sizes up to 128: FlashAttention-2 on tensor cores (mma.sync m16n8k16, f32
// accumulate; scores, softmax and the output stay in registers, the [L, S] scores never reach
// device memory; the probabilities round to the input dtype for the second product, as
// FlashAttention does, and the output rounds once). Two block shapes, both 4 warps that share
// every 64-key tile of K and V loaded by all 128 threads:
//   - flash_attention_mma_kernel: 64 queries per block, 16 per warp, each warp walks all keys.
//     Grid B*H x ceil(L / 64).
//   - flash_attention_split_kernel: 16 queries per block, the same 16 in every warp, warp w
//     takes keys [16w, 16w + 16) of every tile with its own online softmax, and the warps merge
//     (m, l, o) through shared memory at the end. Grid B*H x ceil(L / 16): 4x the blocks.
// The launcher (launch_flash_mma) runs the split kernel when the 64-query grid has fewer blocks
// than the GPU has SMs (attention_split_keys in attention_split.h); EMBER_ATTENTION_SPLIT=1 or 0
// (read once per process) forces the split or the 64-query kernel, for A/B timing.
// EMBER_ATTENTION_KERNEL=wmma selects the older shared-memory WMMA kernel (flash_attention_kernel).
// Everything else (f32, head sizes over 128): one warp per query row on CUDA cores, f32 throughout.
//
// Predicted gain of the split kernel, to check against the H100 measurement (f16, batch 1,
// 12 heads, E = 64, L = S = 128: BERT-base and GPT-2; before: ~15 us a layer, 24 blocks):
//   - Blocks: 12 x ceil(128 / 64) = 24 -> 12 x ceil(128 / 16) = 96 on 132 SMs (18% -> 73% of the
//     SMs busy; one block per SM, 128 threads).
//   - Per block: FLOPs 4 * 64 * 128 * 64 = 2.1 M -> 4 * 16 * 128 * 64 = 0.52 M (the layer's 50 M
//     over 4x the blocks); bytes read: Q 8 KiB -> 2 KiB, K and V 2 tiles x 2 x 64 x 64 x 2 B =
//     32 KiB in both (4x the K/V reads in all, 3 MiB, from L2: ~1 us of L2 bandwidth spread over
//     the SMs). Per warp and tile: 64 -> 16 mma.sync (8 for Q.K^T, 8 for P.V) and a softmax over
//     16 keys instead of 64.
//   - Time, 64-query kernel: per tile each thread copies 4 chunks of K, then 4 of V, in a loop
//     the compiler cannot unroll (blockDim is a runtime value), each a global load then its
//     shared store: ~8 round trips of ~0.4-0.5 us (L2/DRAM) ~ 3.5 us, then 64 mma.sync and a
//     64-key softmax per warp (~1 us); 2 tiles ~ 9 us, plus launch, Q load and output ~ the
//     15 us measured. Split kernel: a tile's 8 chunks a thread are issued together (one round
//     trip, ~0.5 us; the first with the queries', the second during the first tile's compute),
//     16 mma.sync and a 16-key softmax per warp and tile (~0.3 us), the merge (~0.3 us): ~1.5 us
//     instead of ~9, the rest unchanged. Prediction: ~15 -> ~5-6 us per layer (~2.5-3x),
//     ~10 us saved per layer, ~110-120 us per 12-layer forward at b1 s128 (the attention share
//     of GPU time ~34% -> ~15%). Most of it is the load latency (unrolled, one tile ahead), the
//     rest the 4x blocks; if the measurement falls short, the 1-warp-block lesson above says the
//     loads are the part to look at. Causal (GPT-2): a 16-query block stops at its last query,
//     and a warp whose 16 keys all lie past it skips its share of the tile.
//   - Longer sequences at b1 (s512: 96 blocks of 64 -> 384 of 16, 8 tiles each, 4x the L2 reads
//     of K/V = 48 MiB, ~10 us of L2 bandwidth) may gain less; the rule still picks the split
//     there, so that row is worth measuring with EMBER_ATTENTION_SPLIT=0 and 1.
//
// Operands are read through strides, so the seq-major layout (a model's [B, L, H, E] before its
// transpose) costs nothing; the mask is read in place with stride 0 on its broadcast dims.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>

#include "backends/attention_geometry.h"
#include "backends/cuda/attention_cudnn.h"
#include "backends/cuda/attention_split.h"
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/device_common.cuh"

namespace ember::engine::cuda {

namespace {

enum MaskKind : int { kNoMask = 0, kBoolMask = 1, kAddMask = 2 };

/// Sizes and element strides of one call. Strides are for the logical dims [batch, heads, seq]
/// (features are contiguous); the mask element of (b, h, i, j) is at b*m_b + h*m_h + i*m_l + j*m_s.
struct AttnArgs {
  int64_t B, H, L, S, E, Ev, group;  // group = H / Hkv query heads per key/value head
  int64_t q_b, q_h, q_l, k_b, k_h, k_l, v_b, v_h, v_l, o_b, o_h, o_l;
  int64_t m_b, m_h, m_l, m_s;
  int mask_kind;
  bool causal;
  float scale;
};

/// The scaled, masked score of query i and key j (dot = q_i . k_j), -inf where masked out or
/// outside [0, L) x [0, S).
template <typename T>
__device__ __forceinline__ float masked_score(float dot, const AttnArgs& p, const void* mask,
                                              int64_t b, int64_t h, int64_t i, int64_t j) {
  if (i >= p.L || j >= p.S || (p.causal && j > i)) return -CUDART_INF_F;
  float s = dot * p.scale;
  if (p.mask_kind != kNoMask) {
    const int64_t off = b * p.m_b + h * p.m_h + i * p.m_l + j * p.m_s;
    if (p.mask_kind == kBoolMask) {
      if (static_cast<const uint8_t*>(mask)[off] == 0) return -CUDART_INF_F;
    } else {
      s += Num<T>::load(static_cast<const T*>(mask)[off]);
    }
  }
  return s;
}

/// log2(e): the tensor-core kernels keep scores in base 2 (times scale * log2 e), so each
/// exponential is one exp2f (ex2.approx) instead of expf's range reduction around it; softmax is
/// the same function in either base.
constexpr float kLog2e = 1.4426950408889634f;

/// Online-softmax step: folds a tile whose max is tile_max into the running (m, l); returns the
/// subtrahend for this tile's exponentials and sets alpha, the factor for what was accumulated
/// (e^(m_old - base), or 2^(m_old - base) for base-2 scores). A row with no unmasked key so far
/// keeps m = -inf and uses 0 (so the exponential gives 0, never NaN).
template <bool kBase2 = false>
__device__ __forceinline__ float online_max(float& m, float tile_max, float& alpha) {
  const float m_new = fmaxf(m, tile_max);
  const float base = m_new == -CUDART_INF_F ? 0.0f : m_new;
  alpha = kBase2 ? exp2f(m - base) : expf(m - base);
  m = m_new;
  return base;
}

/// Turns a lane's raw scores (NT n-tiles of 8 keys from key0, in the mma.m16n8k16 accumulator
/// layout: rows r0 and r1, keys 2t and 2t + 1 of each n-tile) into base-2 scores, and folds
/// each row's maximum into tile0 / tile1. `plain`: nothing in these keys can be masked (no mask,
/// every key inside S, and when causal none past the rows), so no score is tested; query rows
/// past L then read zero queries and are never written.
template <typename T, int NT>
__device__ __forceinline__ void base2_scores(float (&sc)[NT][4], bool plain, const AttnArgs& p,
                                             const void* mask, int64_t b, int64_t h,
                                             int64_t r0, int64_t r1, int64_t key0, int t,
                                             float& tile0, float& tile1) {
  if (plain) {
    const float scale2 = p.scale * kLog2e;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[n][e] *= scale2;
      tile0 = fmaxf(tile0, fmaxf(sc[n][0], sc[n][1]));
      tile1 = fmaxf(tile1, fmaxf(sc[n][2], sc[n][3]));
    }
    return;
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t key = key0 + n * 8 + 2 * t + e;
      sc[n][e] = masked_score<T>(sc[n][e], p, mask, b, h, r0, key) * kLog2e;
      sc[n][2 + e] = masked_score<T>(sc[n][2 + e], p, mask, b, h, r1, key) * kLog2e;
      tile0 = fmaxf(tile0, sc[n][e]);
      tile1 = fmaxf(tile1, sc[n][2 + e]);
    }
  }
}

// ---------------------------------------------------------------- flash kernel (f16/bf16)

constexpr int kBlockK = 64;  // keys per tile

/// Shared-memory layout of the flash kernel for head size bound D (64 or 128) and W warps per
/// block (16 queries each); 2-byte elements.
template <int D, int W>
struct FlashSmem {
  static constexpr int kRowsQ = 16 * W;                         // queries per block
  static constexpr int ldt = D + 8;                             // Q/K/V tile rows
  static constexpr int lds = (D > kBlockK ? D : kBlockK) + 4;  // per-warp f32 scratch
  static constexpr int ldp = kBlockK + 8;                       // per-warp probabilities
  static constexpr int lda = D + 2;                             // per-warp output accumulator
  static constexpr size_t q = size_t{kRowsQ} * ldt * 2;
  static constexpr size_t kv = size_t{kBlockK} * ldt * 2;
  static constexpr size_t scratch = 16 * lds * 4;
  static constexpr size_t probs = 16 * ldp * 2;
  static constexpr size_t acc = ((16 * lda * 4 + 127) / 128) * 128;
  static constexpr size_t bytes = q + 2 * kv + W * (scratch + probs + acc);
  static_assert(q % 128 == 0 && kv % 128 == 0 && scratch % 32 == 0 && probs % 32 == 0,
                "WMMA tiles need 32-byte aligned rows of 16");
};

/// Copies rows [row0, row0 + kRows) x features [0, D) of a strided operand into a shared tile
/// (row pitch D + 8), zero past `rows` and `cols`. vec: 16-byte loads are aligned (checked by
/// the host).
template <typename T, int D, int kRows>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row_stride, int64_t row0,
                                          int64_t rows, int64_t cols, bool vec) {
  constexpr int kVec = 8;
  constexpr int kPerRow = D / kVec;
  for (int idx = threadIdx.x; idx < kRows * kPerRow; idx += blockDim.x) {
    const int r = idx / kPerRow, c = (idx % kPerRow) * kVec;
    T* d = dst + r * (D + 8) + c;
    const int64_t row = row0 + r;
    const T* s = src + row * row_stride + c;
    if (row < rows && vec && c + kVec <= cols) {
      *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s);
    } else {
      for (int e = 0; e < kVec; ++e) {
        d[e] = (row < rows && c + e < cols) ? s[e] : Num<T>::store(0.0f);
      }
    }
  }
}

template <typename T, int D, int W>
__global__ void __launch_bounds__(W * 32)
    flash_attention_kernel(const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, const void* __restrict__ mask,
                           T* __restrict__ out, AttnArgs p, bool vec) {
  namespace wmma = nvcuda::wmma;
  using Sm = FlashSmem<D, W>;
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* ks = reinterpret_cast<T*>(smem + Sm::q);
  T* vs = reinterpret_cast<T*>(smem + Sm::q + Sm::kv);
  unsigned char* per_warp = smem + Sm::q + 2 * Sm::kv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scratch = reinterpret_cast<float*>(per_warp + warp * Sm::scratch);
  T* probs = reinterpret_cast<T*>(per_warp + W * Sm::scratch + warp * Sm::probs);
  float* acc =
      reinterpret_cast<float*>(per_warp + W * (Sm::scratch + Sm::probs) + warp * Sm::acc);

  const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, g = h / p.group;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * Sm::kRowsQ;
  load_tile<T, D, Sm::kRowsQ>(qs, q + b * p.q_b + h * p.q_h, p.q_l, q0, p.L, p.E, vec);

  // Lane pairs own rows: row r of the warp's 16, and every other column/key (half = parity),
  // which keeps shared-memory accesses within 2-way bank conflicts.
  const int r = lane >> 1, half = lane & 1;
  const int64_t qi = q0 + warp * 16 + r;
  for (int c = half; c < D; c += 2) acc[r * Sm::lda + c] = 0.0f;
  float m = -CUDART_INF_F, l = 0.0f;
  const int64_t k_end = p.causal ? ::min(p.S, q0 + Sm::kRowsQ) : p.S;  // later keys: all masked
  const T* kb = k + b * p.k_b + g * p.k_h;
  const T* vb = v + b * p.v_b + g * p.v_h;

  for (int64_t k0 = 0; k0 < k_end; k0 += kBlockK) {
    __syncthreads();  // every warp is done with the previous tiles
    load_tile<T, D, kBlockK>(ks, kb, p.k_l, k0, p.S, p.E, vec);
    load_tile<T, D, kBlockK>(vs, vb, p.v_l, k0, p.S, p.Ev, vec);
    __syncthreads();

    // Scores of the warp's 16 queries against the 64 keys: Q [16, D] x K^T [D, 64].
    for (int n = 0; n < kBlockK / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.0f);
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b_frag;
        wmma::load_matrix_sync(a_frag, qs + warp * 16 * Sm::ldt + kk * 16, Sm::ldt);
        wmma::load_matrix_sync(b_frag, ks + n * 16 * Sm::ldt + kk * 16, Sm::ldt);
        wmma::mma_sync(s_frag, a_frag, b_frag, s_frag);
      }
      wmma::store_matrix_sync(scratch + n * 16, s_frag, Sm::lds, wmma::mem_row_major);
    }
    __syncwarp();

    float s[kBlockK / 2];
    float tile_max = -CUDART_INF_F;
#pragma unroll
    for (int t = 0; t < kBlockK / 2; ++t) {
      const int j = half + 2 * t;
      s[t] = masked_score<T>(scratch[r * Sm::lds + j], p, mask, b, h, qi, k0 + j);
      tile_max = fmaxf(tile_max, s[t]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    float alpha;
    const float base = online_max(m, tile_max, alpha);
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < kBlockK / 2; ++t) {
      const float e = expf(s[t] - base);
      sum += e;
      probs[r * Sm::ldp + half + 2 * t] = Num<T>::store(e);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    __syncwarp();

    // This tile's share of the output: P [16, 64] x V [64, D], into the scratch.
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::fill_fragment(o_frag, 0.0f);
      for (int kk = 0; kk < kBlockK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b_frag;
        wmma::load_matrix_sync(a_frag, probs + kk * 16, Sm::ldp);
        wmma::load_matrix_sync(b_frag, vs + kk * 16 * Sm::ldt + n * 16, Sm::ldt);
        wmma::mma_sync(o_frag, a_frag, b_frag, o_frag);
      }
      wmma::store_matrix_sync(scratch + n * 16, o_frag, Sm::lds, wmma::mem_row_major);
    }
    __syncwarp();
    for (int c = half; c < D; c += 2) {
      acc[r * Sm::lda + c] = acc[r * Sm::lda + c] * alpha + scratch[r * Sm::lds + c];
    }
    __syncwarp();
  }

  // out = acc / l (0 for a row with no unmasked key), written by the whole warp row by row.
  if (half == 0) scratch[r] = l > 0.0f ? 1.0f / l : 0.0f;
  __syncwarp();
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int row = idx / D, c = idx % D;
    const int64_t i = q0 + warp * 16 + row;
    if (i < p.L && c < p.Ev) {
      out[b * p.o_b + h * p.o_h + i * p.o_l + c] = Num<T>::store(acc[row * Sm::lda + c] * scratch[row]);
    }
  }
}

// ---------------------------------------------------------------- mma.sync kernel (f16/bf16)
//
// FlashAttention-2 on mma.sync.m16n8k16 (f32 accumulate), everything per warp in registers:
// the warp's 16 query rows as A fragments, the scores of a 64-key tile (8 n-tiles of 8 keys,
// 4 floats each), the probabilities re-packed straight into A fragments for the second product
// (the accumulator layout of one m16n8k16 is the A layout of the next), and the output (D / 8
// n-tiles). Lane (g = lane / 4, t = lane % 4) owns rows g and g + 8 and, in each n-tile,
// columns 2t and 2t + 1 (PTX ISA, "Matrix Fragments for mma.m16n8k16"). Shared memory holds
// the Q tile and the K and V tiles, all row-major [rows][D + 8] as they come from memory:
// K's B operand is two consecutive 16-bit values (one 32-bit load), V's comes through
// ldmatrix.trans (the 64-query kernel) or from a transposed copy [D][64 + 8] (the key-split
// kernel below), both bank-conflict free at these pitches.
//
// The 64-query kernel's tiles arrive by cp.async (16-byte copies straight to shared memory,
// no registers held): with two stages (D = 64) tile i + 1 is in flight during the compute on
// tile i. Before (session 22's H100 profile), each thread copied its chunks of K, then of V
// (transposing V element by element), one dependent load and store at a time: about 15 us per
// block at GPT-2/BERT's L = S = 128, which at batch 32 (768 blocks, two waves at 4 blocks per
// SM) made the 35 us per layer measured against ~8 us of memory traffic. Predicted: ~35 ->
// ~15 us per layer at b32, about 0.2-0.25 ms per 12-layer forward (to be measured).

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two floats as one 32-bit register of T pairs, the first in the low half (lower column).
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

/// A 32-bit shared-memory load of two consecutive 16-bit elements.
template <typename T>
__device__ __forceinline__ uint32_t ld2(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

/// True when a device pointer is 4-byte aligned (two 16-bit elements stored as one word).
__device__ __forceinline__ bool aligned4(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 3) == 0;
}

/// Asynchronous 16-byte copies from global to shared memory (sm_80+; `cp.async.cg` bypasses L1).
/// The first `src_bytes` (0 to 16) bytes are read, the rest of the 16 written as zeros, so rows
/// past the sequence and features past the head size need no branch of their own.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

/// Four 8x8 matrices of 16-bit elements from shared memory, transposed on the way (each lane
/// names one row: lanes 8i..8i+7 the rows of matrix i). Lane (g, t) gets in r[i] the elements
/// (2t, g) and (2t + 1, g) of matrix i: a B fragment of mma.m16n8k16 from a row-major [k][n]
/// tile.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

/// Shared memory of the 64-query kernel with W warps (16 query rows each): the Q tile, then
/// kStages buffers of one 64-key tile of K and of V, both row-major [key][D + 8] (the pitch keeps
/// the 32-bit K loads and V's ldmatrix rows bank-conflict free). Two stages at D = 64 (tile i + 1
/// is copied while the warps compute on tile i; 45 KiB); one at D = 128, where two would cost a
/// resident block per SM (85 KiB a block).
template <int D, int W>
struct MmaSmem {
  static constexpr int kRowsQ = 16 * W;
  static constexpr int kStages = D <= 64 ? 2 : 1;
  static constexpr int ld = D + 8;  // Q, K and V rows
  static constexpr size_t q = size_t{kRowsQ} * ld * 2;
  static constexpr size_t k = size_t{kBlockK} * ld * 2;
  static constexpr size_t v = k;
  static constexpr size_t stage = k + v;
  static constexpr size_t bytes = q + kStages * stage;
  static_assert(q % 128 == 0 && k % 128 == 0, "16-byte aligned rows of every tile");
};

/// Rows [row0, row0 + kRows) x features [0, D) of a strided operand into a shared tile (pitch
/// D + 8) with cp.async, zeros past `rows` and `cols`; kThreads threads (the block). The caller
/// commits and waits. Needs 16-byte aligned bases and strides (`vec`, checked by the host).
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void async_tile(T* dst, const T* src, int64_t row_stride,
                                           int64_t row0, int64_t rows, int64_t cols) {
  constexpr int kPerRow = D / 8;
  static_assert(kRows * kPerRow % kThreads == 0, "whole chunks per thread");
  // Not unrolled: the copies do not wait for each other either way, and unrolled the compiler
  // keeps every chunk's address live across the tile loop (up to 254 registers at D = 128).
#pragma unroll 1
  for (int i = 0; i < kRows * kPerRow / kThreads; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = idx / kPerRow, c = (idx % kPerRow) * 8;
    const int64_t row = row0 + r;
    const int64_t left = row < rows ? cols - c : 0;  // features of this chunk to read
    const int bytes = left <= 0 ? 0 : left >= 8 ? 16 : static_cast<int>(left) * 2;
    cp_async16(dst + r * (D + 8) + c, bytes > 0 ? src + row * row_stride + c : src, bytes);
  }
}

template <typename T, int D, int W>
__global__ void __launch_bounds__(W * 32, D <= 64 ? 4 : 3)
    flash_attention_mma_kernel(const T* __restrict__ q, const T* __restrict__ k,
                               const T* __restrict__ v, const void* __restrict__ mask,
                               T* __restrict__ out, AttnArgs p, bool vec) {
  using Sm = MmaSmem<D, W>;
  constexpr int kThreads = W * 32;
  constexpr int kNT = kBlockK / 8;  // score n-tiles per key tile
  constexpr int kDT = D / 8;        // output n-tiles
  constexpr int kKS = D / 16;       // k-steps over the features
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  const auto k_tile = [&](int stage) { return reinterpret_cast<T*>(smem + Sm::q + stage * Sm::stage); };
  const auto v_tile = [&](int stage) {
    return reinterpret_cast<T*>(smem + Sm::q + stage * Sm::stage + Sm::k);
  };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, grp = h / p.group;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * Sm::kRowsQ;
  const int64_t r0 = q0 + warp * 16 + g, r1 = r0 + 8;  // this lane's two query rows
  const int64_t k_end = p.causal ? ::min(p.S, q0 + Sm::kRowsQ) : p.S;  // later keys: all masked
  const int n_tiles = static_cast<int>((k_end + kBlockK - 1) / kBlockK);
  const T* qb = q + b * p.q_b + h * p.q_h;
  const T* kb = k + b * p.k_b + grp * p.k_h;
  const T* vb = v + b * p.v_b + grp * p.v_h;
  // Tile i of K and V into stage `stage`, asynchronously (one group per call).
  const auto issue = [&](int i, int stage) {
    const int64_t k0 = static_cast<int64_t>(i) * kBlockK;
    async_tile<T, D, kBlockK, kThreads>(k_tile(stage), kb, p.k_l, k0, p.S, p.E);
    async_tile<T, D, kBlockK, kThreads>(v_tile(stage), vb, p.v_l, k0, p.S, p.Ev);
  };

  // With 16-byte aligned operands every copy is a cp.async: the queries and tile 0 (and tile 1
  // with two stages) are in flight together, and each later tile is issued a tile ahead (two
  // stages) or right after the barrier (one), a global round trip per tile instead of one per
  // chunk a thread copies. Otherwise the copies are plain loads, tile by tile.
  if (vec) {
    async_tile<T, D, Sm::kRowsQ, kThreads>(qs, qb, p.q_l, q0, p.L, p.E);
    if (n_tiles > 0) issue(0, 0);
    cp_async_commit();
    if constexpr (Sm::kStages > 1) {
      if (n_tiles > 1) issue(1, 1);
      cp_async_commit();  // an empty group when there is no tile 1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
  } else {
    load_tile<T, D, Sm::kRowsQ>(qs, qb, p.q_l, q0, p.L, p.E, false);
  }
  __syncthreads();
  uint32_t qa[kKS][4];
#pragma unroll
  for (int kk = 0; kk < kKS; ++kk) {
    const T* base = qs + (warp * 16 + g) * Sm::ld + kk * 16 + 2 * t;
    qa[kk][0] = ld2(base);
    qa[kk][1] = ld2(base + 8 * Sm::ld);
    qa[kk][2] = ld2(base + 8);
    qa[kk][3] = ld2(base + 8 * Sm::ld + 8);
  }
  float o[kDT][4];
#pragma unroll
  for (int n = 0; n < kDT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F, l0 = 0.0f, l1 = 0.0f;  // l: this lane's share

  for (int it = 0; it < n_tiles; ++it) {
    const int64_t k0 = static_cast<int64_t>(it) * kBlockK;
    // Two stages only on the cp.async path; the plain loads always fill stage 0.
    const int stage = Sm::kStages > 1 && vec ? it % Sm::kStages : 0;
    if (!vec) {
      __syncthreads();  // every warp is done with the previous tile
      load_tile<T, D, kBlockK>(k_tile(0), kb, p.k_l, k0, p.S, p.E, false);
      load_tile<T, D, kBlockK>(v_tile(0), vb, p.v_l, k0, p.S, p.Ev, false);
      __syncthreads();
    } else if (Sm::kStages == 1 && it > 0) {
      __syncthreads();
      issue(it, 0);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
    const T* ks = k_tile(stage);
    const T* vs = v_tile(stage);

    float sc[kNT][4];
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) {
        const T* kp = ks + (n * 8 + g) * Sm::ld + kk * 16 + 2 * t;
        mma_16816<T>(sc[n], qa[kk], ld2(kp), ld2(kp + 8));
      }
    }
    // Base-2 scores: a tile needs no test per score when nothing in it can be masked for any
    // of the warp's rows.
    float tile0 = -CUDART_INF_F, tile1 = -CUDART_INF_F;
    const bool plain = p.mask_kind == kNoMask && k0 + kBlockK <= p.S &&
                       (!p.causal || k0 + kBlockK - 1 <= q0 + warp * 16);
    base2_scores<T, kNT>(sc, plain, p, mask, b, h, r0, r1, k0, t, tile0, tile1);
    // A row's 64 scores are spread over the 4 lanes of its quad.
    tile0 = fmaxf(tile0, __shfl_xor_sync(0xffffffffu, tile0, 1));
    tile0 = fmaxf(tile0, __shfl_xor_sync(0xffffffffu, tile0, 2));
    tile1 = fmaxf(tile1, __shfl_xor_sync(0xffffffffu, tile1, 1));
    tile1 = fmaxf(tile1, __shfl_xor_sync(0xffffffffu, tile1, 2));
    float alpha0, alpha1;
    const float base0 = online_max<true>(m0, tile0, alpha0);
    const float base1 = online_max<true>(m1, tile1, alpha1);
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[n][e] = exp2f(sc[n][e] - base0);
        sc[n][2 + e] = exp2f(sc[n][2 + e] - base1);
        sum0 += sc[n][e];
        sum1 += sc[n][2 + e];
      }
    }
    l0 = l0 * alpha0 + sum0;
    l1 = l1 * alpha1 + sum1;
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      o[n][0] *= alpha0;
      o[n][1] *= alpha0;
      o[n][2] *= alpha1;
      o[n][3] *= alpha1;
    }
    // P [16, 64] x V [64, D]: V's B fragments of two output n-tiles per ldmatrix.x4.trans (lanes
    // 0-7 and 16-23 name keys kk*16 + 0..7, lanes 8-15 and 24-31 keys kk*16 + 8..15; lanes
    // 16-31 the next n-tile's features).
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
    uint32_t pa[kBlockK / 16][4];  // the probabilities as A fragments, 16 keys each
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      pa[kk][0] = pack2(sc[2 * kk][0], sc[2 * kk][1], T{});
      pa[kk][1] = pack2(sc[2 * kk][2], sc[2 * kk][3], T{});
      pa[kk][2] = pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1], T{});
      pa[kk][3] = pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3], T{});
    }
#pragma unroll
    for (int n = 0; n < kDT; n += 2) {
#pragma unroll
      for (int kk = 0; kk < kBlockK / 16; ++kk) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, vs + (kk * 16 + lrow) * Sm::ld + n * 8 + lcol);
        mma_16816<T>(o[n], pa[kk], vf[0], vf[1]);
        mma_16816<T>(o[n + 1], pa[kk], vf[2], vf[3]);
      }
    }

    if (Sm::kStages > 1 && vec) {
      __syncthreads();  // every warp is done with this stage: it takes tile it + 2
      if (it + 2 < n_tiles) {
        issue(it + 2, stage);
        cp_async_commit();
        cp_async_wait<1>();  // tile it + 1 has landed (only tile it + 2 may be in flight)
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
    }
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  T* out0 = out + b * p.o_b + h * p.o_h + r0 * p.o_l;
  T* out1 = out + b * p.o_b + h * p.o_h + r1 * p.o_l;
  // A lane's two adjacent columns go out as one 32-bit store where both exist and are aligned.
#pragma unroll
  for (int n = 0; n < kDT; ++n) {
    const int c = n * 8 + 2 * t;
    if (c >= p.Ev) continue;
    const bool pair = c + 1 < p.Ev;
    if (r0 < p.L) {
      if (pair && aligned4(out0 + c)) {
        *reinterpret_cast<uint32_t*>(out0 + c) = pack2(o[n][0] * inv0, o[n][1] * inv0, T{});
      } else {
        out0[c] = Num<T>::store(o[n][0] * inv0);
        if (pair) out0[c + 1] = Num<T>::store(o[n][1] * inv0);
      }
    }
    if (r1 < p.L) {
      if (pair && aligned4(out1 + c)) {
        *reinterpret_cast<uint32_t*>(out1 + c) = pack2(o[n][2] * inv1, o[n][3] * inv1, T{});
      } else {
        out1[c] = Num<T>::store(o[n][2] * inv1);
        if (pair) out1[c + 1] = Num<T>::store(o[n][3] * inv1);
      }
    }
  }
}

// ---------------------------------------------------------------- key-split mma.sync kernel
//
// For grids that leave SMs idle (batch 1, short sequences): a block of 4 warps takes 16 queries
// (grid B*H x ceil(L / 16), 4x the blocks of the kernel above), all 128 threads load each 64-key
// tile of K and V^T (the loads stay as wide as above), and warp w scores and accumulates keys
// [16w, 16w + 16) of every tile with its own online-softmax state (m, l, o) in registers, in the
// fragment layout above. After the last tile the warps merge through shared memory (the log-sum-
// exp merge): M = max_w m_w, l = sum_w l_w exp(m_w - M), out = sum_w o_w exp(m_w - M) / l, and 0
// for a row with no unmasked key (every m_w = -inf: the subtrahend is 0, every term is 0, never
// NaN). The tile loads are unrolled (the thread count is a constant, so every thread issues its
// 16-byte loads back to back) and land in registers one tile ahead: tile i + 1 is in flight while
// the warps compute on tile i, so a tile costs about one global round trip, not one per chunk a
// thread copies (what made the 1- and 2-warp blocks of the kernel above slower).

/// Shared memory of the key-split kernel: the block's 16 query rows, one 64-key tile of K and of
/// V transposed (pitches as MmaSmem), then, over the K/V space once the last tile is done, each
/// warp's scaled output [4][16][D + 8] f32 for the merge; and each warp's row maxima and sums.
template <int D>
struct SplitSmem {
  static constexpr int kWarps = 4;
  static constexpr int ldq = D + 8;
  static constexpr int ldk = D + 8;
  static constexpr int ldv = kBlockK + 8;
  static constexpr int ldo = D + 8;  // float2 stores of a quad's rows: bank-conflict free
  static constexpr size_t q = size_t{16} * ldq * 2;
  static constexpr size_t k = size_t{kBlockK} * ldk * 2;
  static constexpr size_t v = size_t{D} * ldv * 2;
  static constexpr size_t merge = size_t{kWarps} * 16 * ldo * 4;
  static constexpr size_t tiles = k + v > merge ? k + v : merge;
  static constexpr size_t stats = size_t{kWarps} * 16 * 2 * 4;  // m and l per warp and row
  static constexpr size_t bytes = q + tiles + stats;
  static_assert(q % 16 == 0 && k % 16 == 0 && tiles % 16 == 0, "16-byte tile stores");
  static_assert(bytes <= 48 * 1024, "fits the default dynamic shared memory");
};

/// Four of this thread's 16-byte chunks of a 64-key tile of K and of V, held in registers
/// between the load and the store to shared memory. A tile has D / 64 such parts: chunk i of
/// part `part` of thread x is chunk x + 128 (4 part + i) of the tile (row = key, 8 features).
template <typename T>
struct SplitTile {
  static constexpr int kChunks = 4;
  Vec<T, 8> k[kChunks], v[kChunks];
};

/// 8 features [c, c + 8) of one operand row, zero where the row is past S (row_ok false) or a
/// feature is past `cols`; one 16-byte load when vec (alignment checked by the host).
template <typename T>
__device__ __forceinline__ Vec<T, 8> load_chunk(const T* src, bool row_ok, int c, int64_t cols,
                                                bool vec) {
  Vec<T, 8> x;
  if (row_ok && vec && c + 8 <= cols) {
    x = *reinterpret_cast<const Vec<T, 8>*>(src);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) x.v[e] = row_ok && c + e < cols ? src[e] : Num<T>::store(0.0f);
  }
  return x;
}

template <typename T, int D>
__device__ __forceinline__ void split_load(SplitTile<T>& tile, const T* kb, const T* vb,
                                           const AttnArgs& p, int64_t k0, bool vec, int part) {
  constexpr int kPerRow = D / 8;
#pragma unroll
  for (int i = 0; i < SplitTile<T>::kChunks; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + (part * SplitTile<T>::kChunks + i) * 128;
    const int r = idx / kPerRow, c = (idx % kPerRow) * 8;
    const int64_t key = k0 + r;
    const bool ok = key < p.S;
    tile.k[i] = load_chunk<T>(kb + key * p.k_l + c, ok, c, p.E, vec);
    tile.v[i] = load_chunk<T>(vb + key * p.v_l + c, ok, c, p.Ev, vec);
  }
}

template <typename T, int D>
__device__ __forceinline__ void split_store(const SplitTile<T>& tile, T* ks, T* vt, int part) {
  using Sm = SplitSmem<D>;
  constexpr int kPerRow = D / 8;
#pragma unroll
  for (int i = 0; i < SplitTile<T>::kChunks; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + (part * SplitTile<T>::kChunks + i) * 128;
    const int r = idx / kPerRow, c = (idx % kPerRow) * 8;
    *reinterpret_cast<Vec<T, 8>*>(ks + r * Sm::ldk + c) = tile.k[i];
#pragma unroll
    for (int e = 0; e < 8; ++e) vt[(c + e) * Sm::ldv + r] = tile.v[i].v[e];
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(128)
    flash_attention_split_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, const void* __restrict__ mask,
                                 T* __restrict__ out, AttnArgs p, bool vec) {
  using Sm = SplitSmem<D>;
  constexpr int kDT = D / 8;   // output n-tiles
  constexpr int kKS = D / 16;  // k-steps over the features
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* ks = reinterpret_cast<T*>(smem + Sm::q);
  T* vt = reinterpret_cast<T*>(smem + Sm::q + Sm::k);
  float* merged = reinterpret_cast<float*>(smem + Sm::q);  // over K/V after the last tile
  float* stat_m = reinterpret_cast<float*>(smem + Sm::q + Sm::tiles);
  float* stat_l = stat_m + Sm::kWarps * 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, grp = h / p.group;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * 16;
  const int64_t r0 = q0 + g, r1 = r0 + 8;  // this lane's two query rows (every warp: the same)
  const int64_t k_end = p.causal ? ::min(p.S, q0 + 16) : p.S;  // later keys: all masked
  const T* kb = k + b * p.k_b + grp * p.k_h;
  const T* vb = v + b * p.v_b + grp * p.v_h;

  // At D = 64 a tile is one part (8 chunks of 16 bytes a thread), loaded one tile ahead: it is
  // in flight during the compute on the previous tile. At D = 128 holding a whole tile across
  // the compute spills registers, so the tile's two parts are loaded and stored after the
  // barrier, each part's 8 loads in flight together.
  constexpr bool kAhead = D <= 64;
  constexpr int kParts = D / 64;
  SplitTile<T> tile;
  if (kAhead && k_end > 0) split_load<T, D>(tile, kb, vb, p, 0, vec, 0);  // with the queries
  load_tile<T, D, 16>(qs, q + b * p.q_b + h * p.q_h, p.q_l, q0, p.L, p.E, vec);
  __syncthreads();
  uint32_t qa[kKS][4];
#pragma unroll
  for (int kk = 0; kk < kKS; ++kk) {
    const T* base = qs + g * Sm::ldq + kk * 16 + 2 * t;
    qa[kk][0] = ld2(base);
    qa[kk][1] = ld2(base + 8 * Sm::ldq);
    qa[kk][2] = ld2(base + 8);
    qa[kk][3] = ld2(base + 8 * Sm::ldq + 8);
  }
  float o[kDT][4];
#pragma unroll
  for (int n = 0; n < kDT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F, l0 = 0.0f, l1 = 0.0f;  // l: this lane's share

  for (int64_t k0 = 0; k0 < k_end; k0 += kBlockK) {
    __syncthreads();  // every warp is done with the previous tile
    if (kAhead) {
      split_store<T, D>(tile, ks, vt, 0);
    } else {
#pragma unroll
      for (int part = 0; part < kParts; ++part) {
        split_load<T, D>(tile, kb, vb, p, k0, vec, part);
        split_store<T, D>(tile, ks, vt, part);
      }
    }
    __syncthreads();
    if (kAhead && k0 + kBlockK < k_end) split_load<T, D>(tile, kb, vb, p, k0 + kBlockK, vec, 0);
    const int64_t kw = k0 + warp * 16;  // this warp's 16 keys of the tile
    if (kw >= k_end) continue;          // warp-uniform: past S, or causal past every query

    // Scores of the 16 queries against the warp's 16 keys: 2 n-tiles of 8 keys.
    float sc[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) {
        const T* kp = ks + (warp * 16 + n * 8 + g) * Sm::ldk + kk * 16 + 2 * t;
        mma_16816<T>(sc[n], qa[kk], ld2(kp), ld2(kp + 8));
      }
    }
    // Base-2 scores; no test per score where nothing can be masked (as in the kernel above).
    float tile0 = -CUDART_INF_F, tile1 = -CUDART_INF_F;
    const bool plain =
        p.mask_kind == kNoMask && kw + 16 <= p.S && (!p.causal || kw + 15 <= q0);
    base2_scores<T, 2>(sc, plain, p, mask, b, h, r0, r1, kw, t, tile0, tile1);
    tile0 = fmaxf(tile0, __shfl_xor_sync(0xffffffffu, tile0, 1));
    tile0 = fmaxf(tile0, __shfl_xor_sync(0xffffffffu, tile0, 2));
    tile1 = fmaxf(tile1, __shfl_xor_sync(0xffffffffu, tile1, 1));
    tile1 = fmaxf(tile1, __shfl_xor_sync(0xffffffffu, tile1, 2));
    float alpha0, alpha1;
    const float base0 = online_max<true>(m0, tile0, alpha0);
    const float base1 = online_max<true>(m1, tile1, alpha1);
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[n][e] = exp2f(sc[n][e] - base0);
        sc[n][2 + e] = exp2f(sc[n][2 + e] - base1);
        sum0 += sc[n][e];
        sum1 += sc[n][2 + e];
      }
    }
    l0 = l0 * alpha0 + sum0;
    l1 = l1 * alpha1 + sum1;
    // The probabilities of the 16 keys are one A fragment (n-tile 0: keys 0-7, 1: keys 8-15).
    uint32_t pa[4];
    pa[0] = pack2(sc[0][0], sc[0][1], T{});
    pa[1] = pack2(sc[0][2], sc[0][3], T{});
    pa[2] = pack2(sc[1][0], sc[1][1], T{});
    pa[3] = pack2(sc[1][2], sc[1][3], T{});
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      o[n][0] *= alpha0;
      o[n][1] *= alpha0;
      o[n][2] *= alpha1;
      o[n][3] *= alpha1;
      const T* vp = vt + (n * 8 + g) * Sm::ldv + warp * 16 + 2 * t;
      mma_16816<T>(o[n], pa, ld2(vp), ld2(vp + 8));
    }
  }

  // Merge the 4 warps' (m, l, o). A row's sum is spread over the 4 lanes of its quad.
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  if (t == 0) {
    stat_m[warp * 16 + g] = m0;
    stat_m[warp * 16 + g + 8] = m1;
    stat_l[warp * 16 + g] = l0;
    stat_l[warp * 16 + g + 8] = l1;
  }
  __syncthreads();  // the stats are complete, and every warp is done with the last K/V tile
  float top0 = -CUDART_INF_F, top1 = -CUDART_INF_F;
#pragma unroll
  for (int w = 0; w < Sm::kWarps; ++w) {
    top0 = fmaxf(top0, stat_m[w * 16 + g]);
    top1 = fmaxf(top1, stat_m[w * 16 + g + 8]);
  }
  const float sub0 = top0 == -CUDART_INF_F ? 0.0f : top0;  // as online_max: 2^-inf = 0
  const float sub1 = top1 == -CUDART_INF_F ? 0.0f : top1;
  float total0 = 0.0f, total1 = 0.0f;
#pragma unroll
  for (int w = 0; w < Sm::kWarps; ++w) {  // the maxima are base 2, as the scores were
    total0 += stat_l[w * 16 + g] * exp2f(stat_m[w * 16 + g] - sub0);
    total1 += stat_l[w * 16 + g + 8] * exp2f(stat_m[w * 16 + g + 8] - sub1);
  }
  const float f0 = total0 > 0.0f ? exp2f(m0 - sub0) / total0 : 0.0f;
  const float f1 = total1 > 0.0f ? exp2f(m1 - sub1) / total1 : 0.0f;
  float* mine = merged + warp * 16 * Sm::ldo;
#pragma unroll
  for (int n = 0; n < kDT; ++n) {
    const int c = n * 8 + 2 * t;
    *reinterpret_cast<float2*>(mine + g * Sm::ldo + c) = make_float2(o[n][0] * f0, o[n][1] * f0);
    *reinterpret_cast<float2*>(mine + (g + 8) * Sm::ldo + c) =
        make_float2(o[n][2] * f1, o[n][3] * f1);
  }
  __syncthreads();
  T* ob = out + b * p.o_b + h * p.o_h;
  for (int idx = threadIdx.x; idx < 16 * (D / 2); idx += 128) {
    const int row = idx / (D / 2), c = (idx % (D / 2)) * 2;
    const int64_t i = q0 + row;
    if (i >= p.L || c >= p.Ev) continue;
    float x = 0.0f, y = 0.0f;
#pragma unroll
    for (int w = 0; w < Sm::kWarps; ++w) {
      const float2 part = *reinterpret_cast<const float2*>(merged + (w * 16 + row) * Sm::ldo + c);
      x += part.x;
      y += part.y;
    }
    ob[i * p.o_l + c] = Num<T>::store(x);
    if (c + 1 < p.Ev) ob[i * p.o_l + c + 1] = Num<T>::store(y);
  }
}

// ---------------------------------------------------------------- row kernel (any float type)

/// One warp per query row (grid-stride over B*H*L rows): each lane scores one key of a 32-key
/// chunk, the warp folds the chunk into the running softmax, and lane c accumulates output
/// features c, c + 32, ... Shared memory per warp: the query row, the output row, 32 weights.
template <typename T>
__global__ void attention_rows_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                      const T* __restrict__ v, const void* __restrict__ mask,
                                      T* __restrict__ out, AttnArgs p) {
  extern __shared__ float row_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* qrow = row_smem + warp * (p.E + p.Ev + 32);
  float* orow = qrow + p.E;
  float* weights = orow + p.Ev;
  const int64_t rows = p.B * p.H * p.L;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t i = row % p.L, h = (row / p.L) % p.H, b = row / (p.L * p.H), g = h / p.group;
    const T* qp = q + b * p.q_b + h * p.q_h + i * p.q_l;
    for (int64_t c = lane; c < p.E; c += 32) qrow[c] = Num<T>::load(qp[c]);
    for (int64_t c = lane; c < p.Ev; c += 32) orow[c] = 0.0f;
    __syncwarp();
    const T* kb = k + b * p.k_b + g * p.k_h;
    const T* vb = v + b * p.v_b + g * p.v_h;
    const int64_t k_end = p.causal ? ::min(p.S, i + 1) : p.S;
    float m = -CUDART_INF_F, l = 0.0f;
    for (int64_t j0 = 0; j0 < k_end; j0 += 32) {
      const int64_t j = j0 + lane;
      float s = -CUDART_INF_F;
      if (j < k_end) {
        const T* kp = kb + j * p.k_l;
        float dot = 0.0f;
        for (int64_t e = 0; e < p.E; ++e) dot += qrow[e] * Num<T>::load(kp[e]);
        s = masked_score<T>(dot, p, mask, b, h, i, j);
      }
      float tile_max = s;
      for (int o = 16; o > 0; o /= 2) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      }
      float alpha;
      const float base = online_max(m, tile_max, alpha);
      const float e = expf(s - base);
      float sum = e;
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      l = l * alpha + sum;
      weights[lane] = e;
      __syncwarp();
      const int64_t n = ::min(int64_t{32}, k_end - j0);
      for (int64_t c = lane; c < p.Ev; c += 32) {
        float a = orow[c] * alpha;
        for (int64_t t = 0; t < n; ++t) a += weights[t] * Num<T>::load(vb[(j0 + t) * p.v_l + c]);
        orow[c] = a;
      }
      __syncwarp();
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T* op = out + b * p.o_b + h * p.o_h + i * p.o_l;
    for (int64_t c = lane; c < p.Ev; c += 32) op[c] = Num<T>::store(orow[c] * inv);
    __syncwarp();
  }
}

// ---------------------------------------------------------------- host side

/// Lets `kernel` use `bytes` of dynamic shared memory on the current device (once per device).
template <typename K>
void allow_shared_memory(K kernel, size_t bytes, std::atomic<uint64_t>& done, const char* what) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const uint64_t bit = uint64_t{1} << (device % 64);
  if (done.load() & bit) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes)),
        what);
  done.fetch_or(bit);
}

template <typename T, int D, int W>
void launch_flash(const T* q, const T* k, const T* v, const void* mask, T* out,
                  const AttnArgs& p, bool vec, cudaStream_t stream) {
  using Sm = FlashSmem<D, W>;
  static std::atomic<uint64_t> configured{0};
  const auto kernel = flash_attention_kernel<T, D, W>;
  allow_shared_memory(kernel, Sm::bytes, configured, "cudaFuncSetAttribute(flash_attention_kernel)");
  const dim3 grid(static_cast<unsigned>(p.B * p.H),
                  static_cast<unsigned>((p.L + Sm::kRowsQ - 1) / Sm::kRowsQ));
  kernel<<<grid, W * 32, Sm::bytes, stream>>>(q, k, v, mask, out, p, vec);
  check(cudaGetLastError(), "flash_attention_kernel");
}

/// 4 warps (64 queries) per block, or 2 (32 queries) when 64-query blocks would leave SMs idle
/// (batch 1 at short sequences) or do not fit the GPU's shared memory. Returns false when
/// neither fits (GPUs before sm_80 or with less than 80 KiB per block): the caller runs the
/// row kernel instead.
template <typename T, int D>
bool launch_flash_sized(const T* q, const T* k, const T* v, const void* mask, T* out,
                        const AttnArgs& p, bool vec, cudaStream_t stream) {
  int device = 0, optin = 0;
  const int sms = sm_count();
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  const bool four_fit = FlashSmem<D, 4>::bytes <= static_cast<size_t>(optin);
  const bool two_fit = FlashSmem<D, 2>::bytes <= static_cast<size_t>(optin);
  if (four_fit && p.B * p.H * ((p.L + 63) / 64) >= sms) {
    launch_flash<T, D, 4>(q, k, v, mask, out, p, vec, stream);
  } else if (two_fit) {
    launch_flash<T, D, 2>(q, k, v, mask, out, p, vec, stream);
  } else {
    return false;
  }
  return true;
}

template <typename T, int D, int W>
void launch_flash_mma_w(const T* q, const T* k, const T* v, const void* mask, T* out,
                        const AttnArgs& p, bool vec, cudaStream_t stream) {
  using Sm = MmaSmem<D, W>;
  static std::atomic<uint64_t> configured{0};
  const auto kernel = flash_attention_mma_kernel<T, D, W>;
  if (Sm::bytes > size_t{48 * 1024}) {
    allow_shared_memory(kernel, Sm::bytes, configured,
                        "cudaFuncSetAttribute(flash_attention_mma_kernel)");
  }
  const dim3 grid(static_cast<unsigned>(p.B * p.H),
                  static_cast<unsigned>((p.L + Sm::kRowsQ - 1) / Sm::kRowsQ));
  kernel<<<grid, W * 32, Sm::bytes, stream>>>(q, k, v, mask, out, p, vec);
  check(cudaGetLastError(), "flash_attention_mma_kernel");
}

template <typename T, int D>
void launch_flash_split(const T* q, const T* k, const T* v, const void* mask, T* out,
                        const AttnArgs& p, bool vec, cudaStream_t stream) {
  using Sm = SplitSmem<D>;
  const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>((p.L + 15) / 16));
  flash_attention_split_kernel<T, D><<<grid, 128, Sm::bytes, stream>>>(q, k, v, mask, out, p, vec);
  check(cudaGetLastError(), "flash_attention_split_kernel");
}

/// EMBER_ATTENTION_SPLIT (read once): 1 forces the key-split kernel, 0 the 64-query one, unset
/// leaves it to attention_split_keys (attention_split.h). A bad value is an error on every call.
AttentionSplit split_setting() {
  static const AttentionSplit setting = parse_attention_split(std::getenv("EMBER_ATTENTION_SPLIT"));
  return setting;
}

/// 4 warps per block, sharing each K/V tile: 64 query rows per block (a warp each), or, when
/// B * H * ceil(L / 64) blocks would leave SMs idle, 16 query rows per block with the keys of
/// every tile split over the warps (flash_attention_split_kernel). Smaller blocks were the
/// earlier answer to small grids: 2- or 1-warp blocks passed the tests, but the H100 run that
/// had them measured GPT-2 b1 at 0.93 ms and BERT b1 at 0.94 ms, against 0.74 and 0.70 before
/// (other changes came in between; this was the only one aimed at batch 1): a tile loaded by 32
/// threads costs each several dependent global loads. The split kernel keeps 128 loaders.
template <typename T, int D>
void launch_flash_mma(const T* q, const T* k, const T* v, const void* mask, T* out,
                      const AttnArgs& p, bool vec, cudaStream_t stream) {
  const int64_t blocks64 = p.B * p.H * ((p.L + 63) / 64);
  if (attention_split_keys(blocks64, sm_count(), split_setting())) {
    launch_flash_split<T, D>(q, k, v, mask, out, p, vec, stream);
  } else {
    launch_flash_mma_w<T, D, 4>(q, k, v, mask, out, p, vec, stream);
  }
}

/// EMBER_ATTENTION_KERNEL=wmma selects the shared-memory WMMA kernel instead of the mma.sync
/// one (for comparing them; read once).
bool use_wmma_kernel() {
  static const bool wmma = [] {
    const char* e = std::getenv("EMBER_ATTENTION_KERNEL");
    return e != nullptr && std::string(e) == "wmma";
  }();
  return wmma;
}

template <typename T>
void launch_rows(const T* q, const T* k, const T* v, const void* mask, T* out,
                 const AttnArgs& p, cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0};
  const size_t per_warp = static_cast<size_t>(p.E + p.Ev + 32) * sizeof(float);
  int optin = 0, device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  if (per_warp > static_cast<size_t>(optin)) {
    throw Error("Attention kernel (cuda): head sizes E=" + std::to_string(p.E) +
                ", Ev=" + std::to_string(p.Ev) + " need " + std::to_string(per_warp) +
                " bytes of shared memory per query row; this GPU has " + std::to_string(optin));
  }
  const int warps = static_cast<int>(std::clamp<size_t>(size_t{48 * 1024} / per_warp, 1, 4));
  const size_t bytes = per_warp * static_cast<size_t>(warps);
  if (bytes > size_t{48 * 1024}) {
    allow_shared_memory(attention_rows_kernel<T>, static_cast<size_t>(optin), configured,
                        "cudaFuncSetAttribute(attention_rows_kernel)");
  }
  const int64_t rows = p.B * p.H * p.L;
  const int64_t blocks = std::min<int64_t>((rows + warps - 1) / warps, 65535 * 16);
  attention_rows_kernel<T><<<static_cast<unsigned>(blocks), warps * 32, bytes, stream>>>(
      q, k, v, mask, out, p);
  check(cudaGetLastError(), "attention_rows_kernel");
}

template <typename T>
void launch_attention(const CudaArgs& a, const AttnArgs& p, const AttentionGeometry& geo) {
  const auto* q = static_cast<const T*>(a.in(0).data) + geo.q.offset;
  const auto* k = static_cast<const T*>(a.in(1).data) + geo.k.offset;
  const auto* v = static_cast<const T*>(a.in(2).data) + geo.v.offset;
  const void* mask = a.has(3) ? a.in(3).data : nullptr;
  auto* out = static_cast<T*>(a.out(0).data) + geo.out.offset;
  if constexpr (sizeof(T) == 2) {  // f16/bf16: tensor cores
    const bool fits_grid = p.B * p.H <= INT32_MAX && (p.L + 15) / 16 <= 65535;
    if (fits_grid && p.E <= 128 && p.Ev <= 128) {
      // 16-byte tile loads need 16-byte aligned bases and strides that are multiples of 8.
      const bool vec =
          aligned(q, 16) && aligned(k, 16) && aligned(v, 16) &&
          (p.q_b | p.q_h | p.q_l | p.k_b | p.k_h | p.k_l | p.v_b | p.v_h | p.v_l) % 8 == 0;
      if (!use_wmma_kernel()) {
        if (std::max(p.E, p.Ev) <= 64) {
          launch_flash_mma<T, 64>(q, k, v, mask, out, p, vec, a.stream());
        } else {
          launch_flash_mma<T, 128>(q, k, v, mask, out, p, vec, a.stream());
        }
        return;
      }
      const bool ran = std::max(p.E, p.Ev) <= 64
                           ? launch_flash_sized<T, 64>(q, k, v, mask, out, p, vec, a.stream())
                           : launch_flash_sized<T, 128>(q, k, v, mask, out, p, vec, a.stream());
      if (ran) return;
    }
  }
  launch_rows<T>(q, k, v, mask, out, p, a.stream());
}

/// f16/bf16: cuDNN's fused SDPA when it is on and takes the problem (attention_cudnn.h), else
/// Ember's kernels (which it also times them against).
template <typename T>
void launch_half_attention(const AttentionParams& params, const CudaArgs& a, const AttnArgs& p,
                           const AttentionGeometry& geo) {
  const auto own = [&] { launch_attention<T>(a, p, geo); };
  if (run_attention_cudnn(params, a, geo, own) == CudnnAttentionStatus::kRan) return;
  own();
}

}  // namespace

void run(const AttentionParams& p, const CudaArgs& a) {
  const DeviceTensor& qt = a.in(0);
  DeviceTensor& o = a.out(0);
  if (o.numel() == 0) return;
  const AttentionGeometry geo =
      attention_geometry(p, qt.dims, a.in(1).dims, a.in(2).dims, o.dims,
                         a.has(3) ? &a.in(3).dims : nullptr);
  AttnArgs g{};
  g.B = geo.B;
  g.H = geo.H;
  g.L = geo.L;
  g.E = geo.E;
  g.S = geo.S;
  g.Ev = geo.Ev;
  g.group = geo.H / std::max<int64_t>(geo.Hkv, 1);
  const auto strides = [](const AttentionOperand& op, int64_t& sb, int64_t& sh, int64_t& sl) {
    sb = op.batch;
    sh = op.heads;
    sl = op.seq;
  };
  strides(geo.q, g.q_b, g.q_h, g.q_l);
  strides(geo.k, g.k_b, g.k_h, g.k_l);
  strides(geo.v, g.v_b, g.v_h, g.v_l);
  strides(geo.out, g.o_b, g.o_h, g.o_l);
  g.mask_kind = !a.has(3) ? kNoMask : a.in(3).dtype == DataType::kBool ? kBoolMask : kAddMask;
  g.m_b = geo.mask[0];
  g.m_h = geo.mask[1];
  g.m_l = geo.mask[2];
  g.m_s = geo.mask[3];
  g.causal = p.causal;
  g.scale = static_cast<float>(p.scale);
  switch (qt.dtype) {
    case DataType::kF32: launch_attention<float>(a, g, geo); return;
    case DataType::kF16: launch_half_attention<__half>(p, a, g, geo); return;
    case DataType::kBF16: launch_half_attention<__nv_bfloat16>(p, a, g, geo); return;
    default: break;
  }
  throw Error(std::string("Attention kernel (cuda): dtype ") + dtype_name(qt.dtype) +
              " is not supported");
}

}  // namespace ember::engine::cuda
