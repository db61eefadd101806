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
// earlier launches have read; the first block [0, w0) goes through a scratch buffer. Only the
// upper triangle is converted; the fp16 matrix is mirrored afterwards.
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
/// (NaN and Inf then reach the first round's Z, whose check reports them). One block of 256.
static __global__ void __launch_bounds__(256) half_scale_kernel(const float* __restrict__ g, std::int64_t d,
                                                                float* __restrict__ scale) {
  __shared__ float largest[256];
  __shared__ int bad[256];
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
  for (int w = 128; w > 0; w /= 2) {
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

/// out (d x (c1 - c0), fp16, column-major) = scale * G[:, c0:c1), the upper triangle and the
/// diagonal only (row i <= column j: all that the Gram's upper tiles wrote; mirror_upper_kernel
/// then fills the rest of the fp16 matrix, at half the bytes of mirroring in fp32). Grid (row
/// blocks, c1 - c0). `g` and `out` may share a buffer when out's bytes lie below column c0 of g
/// (see the top of the file).
static __global__ void to_half_upper_kernel(const float* g, std::int64_t d, std::int64_t c0,
                                            const float* __restrict__ scale, __half* out) {
  const float s = *scale;
  const std::int64_t j = c0 + blockIdx.y;
  const std::int64_t rows = j + 1 < d ? j + 1 : d;
  const float* src = g + j * d;
  __half* dst = out + std::int64_t(blockIdx.y) * d;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < rows;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2half_rn(src[i] * s);
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
