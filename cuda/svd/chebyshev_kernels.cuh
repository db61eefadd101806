// The degree-2 Chebyshev filter of the Gram rounds (GramFilter::Chebyshev): the two memory-bound
// kernels between its two G products. With P = G V (V orthonormal, D x r, in the rounds' basis
// type: fp32, or fp16 with G scaled, GramPrecision), the round's operand is
//
//   Z = (G^2 - b G + b^2/8 I) V / s = G Y + C,   Y = (P - b/2 V) / s,   C = -b/2 Y - b^2/(8 s) V,
//
// the Chebyshev polynomial T_2 of [0, b] mapped to [-1, 1], times b^2/8, over s = trace G (>= the
// largest eigenvalue, so Y and Z keep the magnitudes of V and P). b is the mean eigenvalue of G
// outside span(V): (trace G - trace V^T G V) / (D - r). T_2 is bounded by 1 on [0, b] and grows
// beyond it, so eigenvalues below b are damped relative to those above; b below the first
// discarded eigenvalue keeps the kept ones growing fastest.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "svd_kernels.cuh"  // to_f32, from_f32, to_f64
#include "svd_plan.hpp"

namespace xkv::cuda::detail {

inline constexpr int kFilterLanes = 4;  ///< independent partial sums per thread in filter_traces_kernel

/// partial[blockIdx.x] = this block's share of trace V^T P = sum_i v_i p_i, and
/// partial[kFilterBlocks + blockIdx.x] its share of trace G (G: d x d, column-major with leading
/// dimension ld; plus gram_lo, the split G's remainder, when not null), both in fp64 and a fixed
/// order. A scaled fp16 G scales both traces, and so b and s, alike: Y does not change, C and Z
/// take the scale (see the top of the file). Grid kFilterBlocks x 256.
template <class Basis>
__global__ void __launch_bounds__(256) filter_traces_kernel(const Basis* __restrict__ v, const float* __restrict__ p,
                                                            std::int64_t count, const Basis* __restrict__ gram,
                                                            const Basis* __restrict__ gram_lo, std::int64_t d,
                                                            std::int64_t ld, double* __restrict__ partial) {
  const std::int64_t first = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  // Four independent sums per thread, so that four pairs of loads are in flight at once (one
  // dependent chain per thread over 256 blocks left the kernel latency-bound: 18.3 us for a
  // 4096 x 512 basis on the H200, 8.9 us now); added in a fixed order.
  double part[kFilterLanes] = {};
  for (std::int64_t i = first; i < count; i += kFilterLanes * stride) {
#pragma unroll
    for (int u = 0; u < kFilterLanes; ++u) {
      const std::int64_t at = i + u * stride;
      if (at < count) part[u] += to_f64(v[at]) * double(p[at]);
    }
  }
  static_assert(kFilterLanes == 4, "the sums below");
  double captured = (part[0] + part[1]) + (part[2] + part[3]), total = 0;
  for (std::int64_t j = first; j < d; j += stride)
    total += to_f64(gram[j + j * ld]) + (gram_lo ? to_f64(gram_lo[j + j * ld]) : 0.0);
  __shared__ double red[2][256];
  red[0][threadIdx.x] = captured;
  red[1][threadIdx.x] = total;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) {
      red[0][threadIdx.x] += red[0][threadIdx.x + w];
      red[1][threadIdx.x] += red[1][threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = red[0][0];
    partial[kFilterBlocks + blockIdx.x] = red[1][0];
  }
}

/// In place over P (in z) and V (in v): v <- Y, z <- C (see the top of the file), from the
/// partial traces. Every block sums the partials in the same order, so all agree on b.
template <class Basis>
__global__ void __launch_bounds__(256) filter_operands_kernel(float* __restrict__ z, Basis* __restrict__ v,
                                                              std::int64_t count, const double* __restrict__ partial,
                                                              std::int64_t d, int r) {
  __shared__ float coeff[3];
  double captured = 0, total = 0;
  if (threadIdx.x < 32) {  // warp 0: kFilterBlocks / 32 partials per lane, then a fixed shuffle tree
    for (int i = int(threadIdx.x); i < kFilterBlocks; i += 32) {
      captured += partial[i];
      total += partial[kFilterBlocks + i];
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      captured += __shfl_down_sync(0xffffffffu, captured, offset);
      total += __shfl_down_sync(0xffffffffu, total, offset);
    }
  }
  if (threadIdx.x == 0) {
    const double s = total > 1e-37 && total < 1e300 ? total : 1.0;  // 1 / s must be a normal float
    double b = d > r ? (total - captured) / double(d - r) : 0.0;
    // b <= 0 (G of rank <= r: nothing is discarded) or NaN (non-finite input, reported by the
    // first round): the filter falls back to G^2, which is T_2's limit as b -> 0.
    if (!(b > 0) || !(b < 1e300)) b = 0;
    coeff[0] = float(0.5 * b);
    coeff[1] = float(1.0 / s);
    coeff[2] = float(b * b / (8.0 * s));
  }
  __syncthreads();
  const float half_b = coeff[0], inv_s = coeff[1], c_v = coeff[2];
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const float vi = to_f32(v[i]);
    const Basis y = from_f32<Basis>((z[i] - half_b * vi) * inv_s);  // the operand of the next G product
    v[i] = y;
    z[i] = -half_b * to_f32(y) - c_v * vi;
  }
}

}  // namespace xkv::cuda::detail
