// The two D x k products of one CholeskyQR step on the fp64 tensor cores, reading the fp32 basis
// Z directly (no fp64 copy of Z, no conversion kernels):
//
//   gram_partials_kernel   Z^T Z (upper 64 x 64 tiles), the rows split into up to kMaxSplits
//                          slices whose partial sums land in separate buffers; add_partials_kernel
//                          then sums them in a fixed order (deterministic, no atomics).
//   apply_inverse_kernel   V = Z L^{-T} with L^{-1} lower triangular: output column block j
//                          reads only the first (j + 1) column blocks of Z (half the FLOPs of a
//                          full GEMM), and V is written straight in the caller's type.
//
// cuBLAS needed Z in fp64 (a conversion kernel each way, and an fp64 copy of Z in the workspace)
// and its Dsyrk ran at ~18-23 TFLOP/s on the H200; these are one launch each with the conversions
// folded into the loads and stores.
//
// Both are 64 x 64 output tiles per CTA of 4 warps: warp w computes the 32 x 32 quadrant
// (w & 1, w >> 1) over each 32-deep k chunk with DMMA m16n8k8. Chunk c + 1 is loaded into
// registers (converted to fp64) while chunk c is multiplied, then stored into the other of two
// shared stages: one barrier per chunk. Small CTAs, several per SM (two 37 KB stages, ~170
// registers a thread): one warp per scheduler already keeps the fp64 tensor pipe busy (65 TFLOP/s
// from registers on the H200), and while one CTA stages its next chunk or waits at its barrier
// the others multiply. (The earlier shape, one CTA of 8 warps per SM with the k chunk split
// between warp halves, left the pipe idle during every staging and barrier: ~20-25 TFLOP/s.)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dmma.cuh"
#include "svd_kernels.cuh"  // from_f64

namespace xkv::cuda::detail {

namespace cqr {

inline constexpr int kTile = 64;     // output tile side
inline constexpr int kChunk = 32;    // k depth staged at once
inline constexpr int kThreads = 128;
inline constexpr int kMinBlocksPerSm = 3;  // registers capped for 3 resident CTAs (~170 a thread)
inline constexpr int kMaxSplits = 4;
// Shared tiles in two layouts, padded so that the 16 lanes of a half-warp reading a DMMA fragment
// (g = lane / 4 along m, t = lane % 4 along k) hit 16 different bank pairs:
inline constexpr int kKMajorLd = kChunk + 4;  // [m][k]: offset 36 m + k  ->  4 g + t (mod 16)
inline constexpr int kMMajorLd = kTile + 4;   // [k][m]: offset 68 k + m  ->  4 t + g (mod 16)
inline constexpr std::size_t kStageDoubles = 2 * std::size_t(kTile) * kKMajorLd;  // A and B tiles of a chunk
/// Dynamic shared memory of a launch with `stages` stages (two: 74 KB).
constexpr std::size_t shared_bytes(int stages) { return std::size_t(stages) * kStageDoubles * sizeof(double); }
static_assert(2 * std::size_t(kChunk) * kMMajorLd <= kStageDoubles, "apply tiles fit");

/// One warp's 32 x 32 quadrant of the CTA's 64 x 64 tile: 2 x 4 blocks of 16 x 8, four entries
/// per thread each; entry (mi, ni, v) is at tile row row(mi, v), column col(ni, v).
struct Quadrant {
  double c[2][4][4] = {};
  int row0 = 0, col0 = 0;

  __device__ __forceinline__ Quadrant() {
    const int w = int(threadIdx.x) / 32;
    row0 = 32 * (w & 1);
    col0 = 32 * (w >> 1);
  }
  __device__ __forceinline__ static int g() { return int(threadIdx.x % 32) / 4; }
  __device__ __forceinline__ static int t() { return int(threadIdx.x % 4); }
  __device__ __forceinline__ int row(int mi, int v) const { return row0 + 16 * mi + g() + 8 * (v / 2); }
  __device__ __forceinline__ int col(int ni, int v) const { return col0 + 8 * ni + 2 * t() + v % 2; }

  /// += A B over a chunk; a_at(m, k) and b_at(n, k) read the shared tiles.
  template <class ReadA, class ReadB>
  __device__ __forceinline__ void multiply(ReadA a_at, ReadB b_at) {
#pragma unroll
    for (int s = 0; s < kChunk; s += 8) {
      const int k = s + t();
      double a[2][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int m = row0 + 16 * mi + g();
        a[mi][0] = a_at(m, k);
        a[mi][1] = a_at(m + 8, k);
        a[mi][2] = a_at(m, k + 4);
        a[mi][3] = a_at(m + 8, k + 4);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int n = col0 + 8 * ni + g();
        b[ni][0] = b_at(n, k);
        b[ni][1] = b_at(n, k + 4);
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) dmma_m16n8k8(c[mi][ni], a[mi], b[ni]);
    }
  }
};

/// Row i and column j (i <= j) of the t-th tile of an upper triangle, column by column.
__device__ __forceinline__ void upper_tile(int t, int& i, int& j) {
  j = int((sqrt(8.0 * t + 1.0) - 1.0) / 2.0);
  while ((j + 1) * (j + 2) / 2 <= t) ++j;
  while (j * (j + 1) / 2 > t) --j;
  i = t - j * (j + 1) / 2;
}

}  // namespace cqr

/// Z^T Z (k x k, upper triangle) from Z (rows x k, fp32, column-major), in `splits` row slices.
struct GramPartialsParams {
  const float* z = nullptr;
  std::int64_t rows = 0, ld = 0;
  int k = 0;
  int splits = 1;
  std::int64_t split_rows = 0;               ///< rows per slice, a multiple of kChunk
  double* out[cqr::kMaxSplits] = {};         ///< slice s's partial sums (column-major, upper part)
  std::int64_t out_ld[cqr::kMaxSplits] = {};
};

/// Grid (upper tiles, splits), block cqr::kThreads, cqr::shared_bytes(Stages) of dynamic shared memory.
template <int Stages>
__global__ void __launch_bounds__(cqr::kThreads, cqr::kMinBlocksPerSm) gram_partials_kernel(const __grid_constant__ GramPartialsParams p) {
  using namespace cqr;
  extern __shared__ double shared[];
  // Stage s: A tile [64 columns of the row block][36] at shared + s * kStageDoubles, then B.
  int bi = 0, bj = 0;
  upper_tile(int(blockIdx.x), bi, bj);
  const bool diagonal = bi == bj;
  const std::int64_t t_begin = std::int64_t(blockIdx.y) * p.split_rows;
  const std::int64_t t_end = t_begin + p.split_rows < p.rows ? t_begin + p.split_rows : p.rows;
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  Quadrant acc;
  // The strictly lower quadrant of a diagonal tile is not needed (only the upper triangle is).
  const bool idle = diagonal && acc.row0 > acc.col0;

  // Thread (lane, warp) stages row t0 + lane of columns warp + 4 c, c = 0..15, of each block (a
  // warp reads 128 contiguous bytes of a column). Which of those columns exist is fixed per thread.
  constexpr int kColumnsPerThread = kTile / 4;
  static_assert(kChunk == 32, "one row per lane");
  const std::int64_t column_step = 4 * p.ld;
  const float* a_col = p.z + lane + std::int64_t(bi * kTile + warp) * p.ld;
  const float* b_col = p.z + lane + std::int64_t(bj * kTile + warp) * p.ld;
  const int a_columns = p.k - bi * kTile - warp, b_columns = diagonal ? 0 : p.k - bj * kTile - warp;
  float va[kColumnsPerThread], vb[kColumnsPerThread];
  auto load = [&](std::int64_t t0) {
    const bool row_ok = t0 + lane < t_end;
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) {
      va[c] = row_ok && 4 * c < a_columns ? a_col[t0 + c * column_step] : 0.0f;
      vb[c] = row_ok && 4 * c < b_columns ? b_col[t0 + c * column_step] : 0.0f;
    }
  };
  auto store = [&](int stage) {
    double* sa = shared + stage * kStageDoubles + warp * kKMajorLd + lane;
    double* sb = sa + kTile * kKMajorLd;
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) {
      sa[4 * c * kKMajorLd] = double(va[c]);
      if (!diagonal) sb[4 * c * kKMajorLd] = double(vb[c]);
    }
  };

  // Two stages, one barrier per chunk: chunk c + 1 is loaded while chunk c is multiplied, then
  // stored into the other stage (whose last readers finished before the previous barrier). One
  // stage (devices with less shared memory) needs a second barrier before that store.
  const std::int64_t chunks = t_end > t_begin ? (t_end - t_begin + kChunk - 1) / kChunk : 0;
  if (chunks > 0) {
    load(t_begin);
    store(0);
  }
  __syncthreads();
  for (std::int64_t c = 0; c < chunks; ++c) {
    const bool more = c + 1 < chunks;
    if (more) load(t_begin + (c + 1) * kChunk);
    const double* sa = shared + (c % Stages) * kStageDoubles;
    const double* sb = diagonal ? sa : sa + kTile * kKMajorLd;
    if (!idle)
      acc.multiply([&](int m, int k) { return sa[m * kKMajorLd + k]; },
                   [&](int n, int k) { return sb[n * kKMajorLd + k]; });
    if (more) {
      if constexpr (Stages == 1) __syncthreads();
      store(int((c + 1) % Stages));
    }
    __syncthreads();
  }
  if (idle) return;
  double* out = p.out[blockIdx.y];
  const std::int64_t ld = p.out_ld[blockIdx.y];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int i = bi * kTile + acc.row(mi, v), j = bj * kTile + acc.col(ni, v);
        if (i <= j && j < p.k) out[i + std::int64_t(j) * ld] = acc.c[mi][ni][v];
      }
}

/// g (upper triangle, ld k) += the partial sums of slices 1..splits-1, in that order.
static __global__ void add_partials_kernel(const __grid_constant__ GramPartialsParams p) {
  // x runs down a column (column-major: consecutive threads, consecutive addresses).
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x), j = int(blockIdx.y * blockDim.y + threadIdx.y);
  if (j >= p.k || i > j) return;
  double s = p.out[0][i + std::int64_t(j) * p.out_ld[0]];
  for (int split = 1; split < p.splits; ++split) s += p.out[split][i + std::int64_t(j) * p.out_ld[split]];
  p.out[0][i + std::int64_t(j) * p.out_ld[0]] = s;
}

/// V = Z W^T for W = L^{-1} (k x k lower triangular, column-major, ld ld_w): V (rows x k,
/// column-major, ld ld_v) in Out.
template <class Out>
struct ApplyInverseParams {
  const float* z = nullptr;
  std::int64_t rows = 0, ld_z = 0;
  int k = 0;
  const double* w = nullptr;
  int ld_w = 0;
  Out* v = nullptr;
  std::int64_t ld_v = 0;
  int row_tiles = 0, col_tiles = 0;
};

/// Grid row_tiles * col_tiles (the widest column blocks first), block cqr::kThreads,
/// cqr::shared_bytes(Stages) of dynamic shared memory.
template <class Out, int Stages>
__global__ void __launch_bounds__(cqr::kThreads, cqr::kMinBlocksPerSm) apply_inverse_kernel(const __grid_constant__ ApplyInverseParams<Out> p) {
  using namespace cqr;
  extern __shared__ double shared[];
  // Stage s: the Z tile [32 k][68 rows] at shared + s * kStageDoubles, then the L^{-1} tile
  // [32 k][68 columns of V].
  const int col_block = p.col_tiles - 1 - int(blockIdx.x) / p.row_tiles;
  const int row_block = int(blockIdx.x) % p.row_tiles;
  const std::int64_t t_base = std::int64_t(row_block) * kTile;
  const int j_base = col_block * kTile;
  // V[:, j] needs Z[:, i] for i <= j only.
  const int k_end = j_base + kTile < p.k ? j_base + kTile : p.k;
  Quadrant acc;

  // Thread x stages tile row/column m = x % 64 at k offsets x / 64 + 2 c of each chunk (a warp
  // reads 128 or 256 contiguous bytes of a column): Z through registers (converted to fp64), the
  // L^{-1} tile, fp64 already, by cp.async straight into shared memory (zero-filled outside it).
  constexpr int kLanesAlongK = kThreads / kTile, kPerThread = kChunk / kLanesAlongK;
  const int m = int(threadIdx.x) % kTile, k_lane = int(threadIdx.x) / kTile;
  const bool row_ok = t_base + m < p.rows, col_ok = j_base + m < p.k;
  const std::int64_t ld_z = p.ld_z, ld_w = p.ld_w;
  const int k = p.k;
  const float* z_at = p.z + (t_base + (row_ok ? m : 0)) + std::int64_t(k_lane) * ld_z;
  const double* w_at = p.w + (col_ok ? j_base + m : 0) + std::int64_t(k_lane) * ld_w;
  float va[kPerThread];
  auto load_z = [&](int i0) {
    const float* z_chunk = z_at + std::int64_t(i0) * ld_z;
#pragma unroll
    for (int c = 0; c < kPerThread; ++c)
      va[c] = row_ok && i0 + k_lane + kLanesAlongK * c < k ? z_chunk[c * kLanesAlongK * ld_z] : 0.0f;
  };
  auto store_z = [&](int stage) {
    double* sa = shared + stage * kStageDoubles + k_lane * kMMajorLd + m;
#pragma unroll
    for (int c = 0; c < kPerThread; ++c) sa[kLanesAlongK * c * kMMajorLd] = double(va[c]);
  };
  auto copy_w_async = [&](int i0, int stage) {
    double* sb = shared + stage * kStageDoubles + kChunk * kMMajorLd + k_lane * kMMajorLd + m;
    const double* w_chunk = w_at + std::int64_t(i0) * ld_w;
#pragma unroll
    for (int c = 0; c < kPerThread; ++c) {
      const bool ok = col_ok && i0 + k_lane + kLanesAlongK * c < k;
      const auto dst = unsigned(__cvta_generic_to_shared(sb + kLanesAlongK * c * kMMajorLd));
      asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(dst),
                   "l"(ok ? w_chunk + c * kLanesAlongK * ld_w : p.w), "r"(ok ? 8 : 0));
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  };
  auto wait_w = [] { asm volatile("cp.async.wait_all;" ::: "memory"); };

  // Two stages, one barrier per chunk; one stage, two (as gram_partials_kernel). The copies of
  // chunk c + 1 go to the stage last read before the previous barrier, and have landed (each
  // thread waits for its own) before the barrier that ends chunk c.
  const int chunks = (k_end + kChunk - 1) / kChunk;
  copy_w_async(0, 0);
  load_z(0);
  store_z(0);
  wait_w();
  __syncthreads();
  for (int c = 0; c < chunks; ++c) {
    const bool more = c + 1 < chunks;
    if (more) {
      load_z((c + 1) * kChunk);
      if constexpr (Stages == 2) copy_w_async((c + 1) * kChunk, 1 - c % 2);
    }
    const double* sa = shared + (c % Stages) * kStageDoubles;
    const double* sb = sa + kChunk * kMMajorLd;
    acc.multiply([&](int row, int k) { return sa[k * kMMajorLd + row]; },
                 [&](int col, int k) { return sb[k * kMMajorLd + col]; });
    if (more) {
      if constexpr (Stages == 1) {
        __syncthreads();
        copy_w_async((c + 1) * kChunk, 0);
      }
      store_z((c + 1) % Stages);
      wait_w();
    }
    __syncthreads();
  }
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const std::int64_t t = t_base + acc.row(mi, v);
        const int j = j_base + acc.col(ni, v);
        if (t < p.rows && j < p.k) p.v[t + std::int64_t(j) * p.ld_v] = from_f64<Out>(acc.c[mi][ni][v]);
      }
}

}  // namespace xkv::cuda::detail
