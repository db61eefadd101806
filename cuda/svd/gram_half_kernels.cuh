// G (D x D, fp32) to fp16 in place for the Gram rounds' products (GramPrecision::Fp16 and
// Fp16Split).
//
// Scale: a power of two s that puts G's largest diagonal entry in [2^13, 2^14). For a Gram matrix
// |G_ij| <= sqrt(G_ii G_jj) <= max G_ii, so every entry lands below 2^14 (fp16 holds up to 65504),
// and only entries below 2^-11 of the largest one reach fp16's subnormals, whose absolute error
// (2^-25 of the largest entry) is far below the rounding of the large ones. The scaling itself is
// exact. Each round's quantities scale with G and CholeskyQR removes the scale (chebyshev_kernels.cuh).
//
// In place: the fp16 matrix takes the first half of G's buffer, so fp16 column j overwrites fp32
// columns j / 2. Columns [c0, c1) with c1 <= 2 c0 overwrite only fp32 columns below c0, which
// no later launch reads (fp16 column j reads fp32 columns >= j: its own, and those holding row j
// of the upper triangle); the first block [0, w0) goes through a scratch buffer.
//
// Split (Fp16Split): s G = H + L with H = fp16(s G) and L = fp16(s G - H), the remainder (exact
// in fp32, at most half an fp16 ulp of H, so L keeps 11 more bits: ~22 in all, about fp32's 24).
// Each fp32 column's 4 D bytes take fp16 column j of H, then fp16 column j of L: the whole buffer
// is the D x 2D fp16 matrix [H_0 L_0 H_1 L_1 ...] and H, L are D x D fp16 matrices with leading
// dimension 2 D, starting at element 0 and D. Each column is rewritten by one block, which reads
// it whole before writing, so no block touches another's bytes.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

namespace xkv::cuda::detail {

/// *scale = 2^e with max_i G_ii * 2^e in [2^13, 2^14); 1 if G's diagonal is zero or not finite
/// (NaN and Inf then reach the first round's Z, whose check reports them). One block of
/// kHalfScaleThreads: the diagonal's loads are one per column, latency-bound (256 threads took
/// ~10 us at d = 4096 on the H200).
inline constexpr int kHalfScaleThreads = 1024;
static __global__ void __launch_bounds__(kHalfScaleThreads) half_scale_kernel(const float* __restrict__ g,
                                                                              std::int64_t d,
                                                                              float* __restrict__ scale) {
  __shared__ float largest[kHalfScaleThreads];
  __shared__ int bad[kHalfScaleThreads];
  float m = 0;
  int not_finite = 0;
  for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = fabsf(g[i + i * d]);
    if (!(v <= FLT_MAX)) not_finite = 1;
    else m = fmaxf(m, v);
  }
  largest[threadIdx.x] = m;
  bad[threadIdx.x] = not_finite;
  __syncthreads();
  for (int w = kHalfScaleThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) {
      largest[threadIdx.x] = fmaxf(largest[threadIdx.x], largest[threadIdx.x + w]);
      bad[threadIdx.x] |= bad[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float s = 1.0f;
    if (!bad[0] && largest[0] > 0) {
      // ilogb(m) = e with m in [2^e, 2^(e+1)); the exponent is clamped so that s stays a normal
      // float (inputs beyond it keep fewer fp16 bits, never overflow).
      const int e = ilogbf(largest[0]);
      s = ldexpf(1.0f, max(-126, min(127, 13 - e)));
    }
    *scale = s;
  }
}

/// Side of the square tiles of to_half_symmetric_kernel (block 32 x 8 threads).
inline constexpr int kHalfTile = 64;

/// out (d x (c1 - c0), fp16, column-major, ld d) = scale * G[:, c0:c1) with both triangles, from
/// G's upper triangle only (all that the Gram's upper tiles wrote): entry (i, j) is G[i, j] for
/// i <= j, else G[j, i]. The same fp16 values as converting a mirrored G, in one pass: each
/// 64 x 64 tile of the output reads G's tile in place for its upper entries and G's transposed
/// tile for its lower ones (both coalesced, through shared memory), so that G's lower triangle is
/// never written in fp32 and the fp16 matrix needs no mirroring pass; each thread then writes two
/// consecutive rows at once. Reads columns >= c0 of G only: `out` may share G's buffer when its
/// bytes lie below column c0 (see the top of the file). Grid (row tiles, column tiles of
/// [c0, c1)), block (32, 8).
static __global__ void __launch_bounds__(256, 4)
    to_half_symmetric_kernel(const float* g, std::int64_t d, std::int64_t c0, std::int64_t c1,
                             const float* __restrict__ scale, __half* out) {
  __shared__ float tile[kHalfTile][kHalfTile + 1];  // tile[c][r]: entry (i0 + r, j0 + c)
  const std::int64_t i0 = std::int64_t(blockIdx.x) * kHalfTile, j0 = c0 + std::int64_t(blockIdx.y) * kHalfTile;
  const int x = int(threadIdx.x);
  // Upper entries (i <= j): G[i + j d], consecutive threads down a column.
  if (i0 <= j0 + kHalfTile - 1)
    for (int c = int(threadIdx.y); c < kHalfTile; c += 8)
#pragma unroll
      for (int h = 0; h < kHalfTile; h += 32) {
        const std::int64_t i = i0 + h + x, j = j0 + c;
        if (i < d && j < c1 && i <= j) tile[c][h + x] = g[i + j * d];
      }
  // Lower entries (i > j): G[j + i d], consecutive threads along the row of G's upper triangle.
  if (i0 + kHalfTile - 1 > j0)
    for (int r = int(threadIdx.y); r < kHalfTile; r += 8)
#pragma unroll
      for (int h = 0; h < kHalfTile; h += 32) {
        const std::int64_t i = i0 + r, j = j0 + h + x;
        if (i < d && j < c1 && i > j) tile[h + x][r] = g[j + i * d];
      }
  __syncthreads();
  const float s = *scale;
  const bool pairs = d % 2 == 0;  // rows 2x, 2x + 1 of a column start 4-byte aligned
  for (int c = int(threadIdx.y); c < kHalfTile; c += 8) {
    const std::int64_t i = i0 + 2 * x, j = j0 + c;
    if (i >= d || j >= c1) continue;
    __half* at = out + i + (j - c0) * d;
    if (pairs && i + 1 < d)
      *reinterpret_cast<__half2*>(at) = __floats2half2_rn(tile[c][2 * x] * s, tile[c][2 * x + 1] * s);
    else {
      at[0] = __float2half_rn(tile[c][2 * x] * s);
      if (i + 1 < d) at[1] = __float2half_rn(tile[c][2 * x + 1] * s);
    }
  }
}

/// Column blockIdx.x of G (d x d, fp32, column-major) -> its fp16 pair (H_j, L_j) in the same
/// bytes (see the top of the file). Dynamic shared memory: d floats. One block per column.
static __global__ void __launch_bounds__(512) to_half_pairs_kernel(float* g, std::int64_t d,
                                                                   const float* __restrict__ scale) {
  extern __shared__ float column[];
  const float s = *scale;
  float* src = g + blockIdx.x * d;
  for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) column[i] = src[i] * s;
  __syncthreads();  // the column is read whole before any of its bytes is rewritten
  auto* hi = reinterpret_cast<__half*>(src);
  __half* lo = hi + d;
  for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = column[i];
    const __half h = __float2half_rn(v);
    hi[i] = h;
    lo[i] = __float2half_rn(v - __half2float(h));
  }
}

}  // namespace xkv::cuda::detail
