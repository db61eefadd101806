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
// Both are 64 x 64 output tiles per CTA of 8 warps: warp w computes the 32 x 32 quadrant
// (w & 1, (w >> 1) & 1) over half of each 64-deep k chunk (w >> 2), with DMMA m16n8k8; the two
// halves meet in shared memory at the end. Chunk c + 1 is loaded into registers (converted to
// fp64) while chunk c is multiplied, then stored into the other of two shared stages: one barrier
// per chunk. One CTA per SM (two 70 KB stages, ~190 registers a thread: capped at 128 they
// spilled and ran slower). Devices without 139 KB of shared memory per block take one stage.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dmma.cuh"
#include "svd_kernels.cuh"  // from_f64

namespace xkv::cuda::detail {

namespace cqr {

inline constexpr int kTile = 64;     // output tile side
inline constexpr int kChunk = 64;    // k depth staged at once
inline constexpr int kThreads = 256;
inline constexpr int kMaxSplits = 4;
// Shared tiles in two layouts, padded so that the 16 lanes of a half-warp reading a DMMA fragment
// (g = lane / 4 along m, t = lane % 4 along k) hit 16 different bank pairs:
inline constexpr int kKMajorLd = kChunk + 4;  // [m][k]: offset 68 m + k  ->  4 g + t (mod 16)
inline constexpr int kMMajorLd = kTile + 4;   // [k][m]: offset 68 k + m  ->  4 t + g (mod 16)
inline constexpr int kReduceLd = kTile + 1;
inline constexpr std::size_t kStageDoubles = 2 * std::size_t(kTile) * kKMajorLd;  // A and B tiles of a chunk
/// Dynamic shared memory of a launch with `stages` stages (two: 139 KB, beyond sm_86/sm_89).
constexpr std::size_t shared_bytes(int stages) { return std::size_t(stages) * kStageDoubles * sizeof(double); }
static_assert(2 * std::size_t(kChunk) * kMMajorLd <= kStageDoubles, "apply tiles fit");
static_assert(std::size_t(kTile) * kReduceLd * sizeof(double) <= shared_bytes(1), "reduction fits");

/// One warp's 32 x 32 quadrant of the CTA's 64 x 64 tile: 2 x 4 blocks of 16 x 8, four entries
/// per thread each; entry (mi, ni, v) is at tile row row(mi, v), column col(ni, v).
struct Quadrant {
  double c[2][4][4] = {};
  int row0 = 0, col0 = 0, k_half = 0;

  __device__ __forceinline__ Quadrant() {
    const int w = int(threadIdx.x) / 32;
    row0 = 32 * (w & 1);
    col0 = 32 * ((w >> 1) & 1);
    k_half = w >> 2;
  }
  __device__ __forceinline__ static int g() { return int(threadIdx.x % 32) / 4; }
  __device__ __forceinline__ static int t() { return int(threadIdx.x % 4); }
  __device__ __forceinline__ int row(int mi, int v) const { return row0 + 16 * mi + g() + 8 * (v / 2); }
  __device__ __forceinline__ int col(int ni, int v) const { return col0 + 8 * ni + 2 * t() + v % 2; }

  /// += A B over this warp's half of a chunk; a_at(m, k) and b_at(n, k) read the shared tiles.
  template <class ReadA, class ReadB>
  __device__ __forceinline__ void multiply(ReadA a_at, ReadB b_at) {
#pragma unroll
    for (int s = 0; s < kChunk / 2; s += 8) {
      const int k = k_half * (kChunk / 2) + s + t();
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

  /// The second k half adds its sums into the first's (fixed order), through `scratch`; after
  /// this, threads of warps 0-3 hold the tile. Starts and ends with a block barrier.
  __device__ __forceinline__ void combine_halves(double* scratch) {
    __syncthreads();
    if (k_half == 1)
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int v = 0; v < 4; ++v) scratch[row(mi, v) * kReduceLd + col(ni, v)] = c[mi][ni][v];
    __syncthreads();
    if (k_half == 0)
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int v = 0; v < 4; ++v) c[mi][ni][v] += scratch[row(mi, v) * kReduceLd + col(ni, v)];
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
__global__ void __launch_bounds__(cqr::kThreads, 1) gram_partials_kernel(const __grid_constant__ GramPartialsParams p) {
  using namespace cqr;
  extern __shared__ double shared[];
  // Stage s: A tile [64 columns of the row block][68] at shared + s * kStageDoubles, then B.
  int bi = 0, bj = 0;
  upper_tile(int(blockIdx.x), bi, bj);
  const bool diagonal = bi == bj;
  const std::int64_t t_begin = std::int64_t(blockIdx.y) * p.split_rows;
  const std::int64_t t_end = t_begin + p.split_rows < p.rows ? t_begin + p.split_rows : p.rows;
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  Quadrant acc;
  // The strictly lower quadrant of a diagonal tile is not needed (only the upper triangle is).
  const bool idle = diagonal && acc.row0 > acc.col0;

  // Thread (lane, warp) stages rows t0 + lane + 32 h (h = 0, 1) of columns warp + 8 c, c = 0..7,
  // of each block.
  constexpr int kRowsPerPass = 32, kPasses = kChunk / kRowsPerPass;
  const float* a_col = p.z + lane + std::int64_t(bi * kTile + warp) * p.ld;
  const float* b_col = p.z + lane + std::int64_t(bj * kTile + warp) * p.ld;
  float va[kPasses][8], vb[kPasses][8];
  auto load = [&](std::int64_t t0) {
#pragma unroll
    for (int h = 0; h < kPasses; ++h) {
      const bool row_ok = t0 + kRowsPerPass * h + lane < t_end;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const std::int64_t offset = t0 + kRowsPerPass * h + std::int64_t(8 * c) * p.ld;
        va[h][c] = row_ok && bi * kTile + warp + 8 * c < p.k ? a_col[offset] : 0.0f;
        vb[h][c] = !diagonal && row_ok && bj * kTile + warp + 8 * c < p.k ? b_col[offset] : 0.0f;
      }
    }
  };
  auto store = [&](int stage) {
    double* sa = shared + stage * kStageDoubles;
    double* sb = sa + kTile * kKMajorLd;
#pragma unroll
    for (int h = 0; h < kPasses; ++h)
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        sa[(warp + 8 * c) * kKMajorLd + kRowsPerPass * h + lane] = double(va[h][c]);
        if (!diagonal) sb[(warp + 8 * c) * kKMajorLd + kRowsPerPass * h + lane] = double(vb[h][c]);
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
  acc.combine_halves(shared);
  if (acc.k_half != 0 || idle) return;
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
__global__ void __launch_bounds__(cqr::kThreads, 1) apply_inverse_kernel(const __grid_constant__ ApplyInverseParams<Out> p) {
  using namespace cqr;
  extern __shared__ double shared[];
  // Stage s: the Z tile [64 k][68 rows] at shared + s * kStageDoubles, then the L^{-1} tile
  // [64 k][68 columns of V].
  const int col_block = p.col_tiles - 1 - int(blockIdx.x) / p.row_tiles;
  const int row_block = int(blockIdx.x) % p.row_tiles;
  const std::int64_t t_base = std::int64_t(row_block) * kTile;
  const int j_base = col_block * kTile;
  // V[:, j] needs Z[:, i] for i <= j only.
  const int k_end = j_base + kTile < p.k ? j_base + kTile : p.k;
  Quadrant acc;

  // Thread x stages tile row/column m = x % 64 at k offsets x / 64 + 4 c of each chunk.
  constexpr int kPerThread = kChunk / 4;
  const int m = int(threadIdx.x) % kTile, k_lane = int(threadIdx.x) / kTile;
  const bool row_ok = t_base + m < p.rows, col_ok = j_base + m < p.k;
  const float* z_at = p.z + (t_base + (row_ok ? m : 0)) + std::int64_t(k_lane) * p.ld_z;
  const double* w_at = p.w + (col_ok ? j_base + m : 0) + std::int64_t(k_lane) * p.ld_w;
  float va[kPerThread];
  double vb[kPerThread];
  auto load = [&](int i0) {
#pragma unroll
    for (int c = 0; c < kPerThread; ++c) {
      const int i = i0 + k_lane + 4 * c;
      va[c] = row_ok && i < p.k ? z_at[std::int64_t(i0 + 4 * c) * p.ld_z] : 0.0f;
      vb[c] = col_ok && i < p.k ? w_at[std::int64_t(i0 + 4 * c) * p.ld_w] : 0.0;
    }
  };
  auto store = [&](int stage) {
    double* sa = shared + stage * kStageDoubles;
    double* sb = sa + kChunk * kMMajorLd;
#pragma unroll
    for (int c = 0; c < kPerThread; ++c) {
      sa[(k_lane + 4 * c) * kMMajorLd + m] = double(va[c]);
      sb[(k_lane + 4 * c) * kMMajorLd + m] = vb[c];
    }
  };

  // Two stages, one barrier per chunk; one stage, two (as gram_partials_kernel).
  const int chunks = (k_end + kChunk - 1) / kChunk;
  load(0);
  store(0);
  __syncthreads();
  for (int c = 0; c < chunks; ++c) {
    const bool more = c + 1 < chunks;
    if (more) load((c + 1) * kChunk);
    const double* sa = shared + (c % Stages) * kStageDoubles;
    const double* sb = sa + kChunk * kMMajorLd;
    acc.multiply([&](int row, int k) { return sa[k * kMMajorLd + row]; },
                 [&](int col, int k) { return sb[k * kMMajorLd + col]; });
    if (more) {
      if constexpr (Stages == 1) __syncthreads();
      store((c + 1) % Stages);
    }
    __syncthreads();
  }
  acc.combine_halves(shared);
  if (acc.k_half != 0) return;
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
