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
// and its Dsyrk ran at ~18-23 TFLOP/s on the H200; these are one launch each.
//
// Both are 64 x 64 output tiles per CTA of 4 warps: warp w computes the 32 x 32 quadrant
// (w & 1, w >> 1) over each 32-deep k chunk with DMMA m16n8k8. The chunks come into a ring of
// shared stages by cp.async, Z as fp32 (converted to fp64 as each fragment is read: F2F does not
// hold up the fp64 tensor pipe, measured on the H200 with two conversions per DMMA) and L^{-1}
// as fp64; one barrier per chunk, several chunks in flight, no staging registers. Small CTAs,
// two or three per SM: one warp per scheduler already keeps the pipe busy (65 TFLOP/s from
// registers), and while one CTA waits at its barrier the others multiply. (One CTA of 8 warps per
// SM staging through registers left the pipe idle during every staging pass: ~20-25 TFLOP/s.)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cholesky_qr.hpp"  // GramDiagonal
#include "dmma.cuh"
#include "svd_kernels.cuh"  // from_f64

namespace xkv::cuda::detail {

namespace cqr {

inline constexpr int kTile = 64;     // output tile side
inline constexpr int kChunk = 32;    // k depth of a stage
inline constexpr int kThreads = 128;
inline constexpr int kMaxSplits = 4;
inline constexpr int kMinStages = 2, kMaxStages = 4;
inline constexpr int kGramBlocksPerSm = 3;   // 4 stages of 18 KB each
inline constexpr int kApplyBlocksPerSm = 2;  // 4 stages of 26 KB each
// Shared tiles, padded so that the lanes reading a DMMA fragment (g = lane / 4 along m or n,
// t = lane % 4 along k) hit different banks:
inline constexpr int kKMajorLd = kChunk + 4;  // fp32 [m][k]: offset 36 m + k  ->  bank 4 g + t
inline constexpr int kMMajorLd = kTile + 8;   // fp32 [k][m]: offset 72 k + m  ->  bank 8 t + g
inline constexpr int kWLd = kTile + 4;        // fp64 [k][n]: offset 68 k + n  ->  bank pair 4 t + g (mod 16)
inline constexpr std::size_t kGramStageBytes = 2 * std::size_t(kTile) * kKMajorLd * sizeof(float);
inline constexpr std::size_t kApplyZBytes = std::size_t(kChunk) * kMMajorLd * sizeof(float);
inline constexpr std::size_t kApplyStageBytes = kApplyZBytes + std::size_t(kChunk) * kWLd * sizeof(double);
static_assert(kApplyZBytes % 16 == 0 && kGramStageBytes % 16 == 0, "stages keep 16-byte alignment");
/// Dynamic shared memory of a launch with `stages` stages.
constexpr std::size_t gram_shared_bytes(int stages) { return std::size_t(stages) * kGramStageBytes; }
constexpr std::size_t apply_shared_bytes(int stages) { return std::size_t(stages) * kApplyStageBytes; }

/// cp.async of `bytes` (4, 8 or 16) from src to shared dst, zero-filled beyond `valid` bytes.
template <int Bytes>
__device__ __forceinline__ void copy_async(void* dst, const void* src, int valid) {
  const auto at = unsigned(__cvta_generic_to_shared(dst));
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(at), "l"(src), "r"(valid));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(at), "l"(src), "n"(Bytes), "r"(valid));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/// Waits until at most `Pending` of this thread's copy groups are still in flight.
template <int Pending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
}

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

  /// += A B over a chunk; a_at(m, k) and b_at(n, k) read the shared tiles as fp64.
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

/// The chunk loop shared by both kernels, over a ring of Stages shared stages: copy(chunk, stage)
/// issues a chunk's cp.async copies, multiply(stage) consumes one. One barrier per chunk: the
/// stage refilled at chunk c is the one every thread finished multiplying at chunk c - 1.
template <int Stages, class Copy, class Multiply>
__device__ __forceinline__ void pipeline(int chunks, Copy copy, Multiply multiply) {
  static_assert(Stages >= kMinStages && Stages <= kMaxStages, "stage count");
#pragma unroll
  for (int s = 0; s < Stages - 1; ++s) {
    if (s < chunks) copy(s, s);
    commit_copies();  // empty groups too, so that the count below holds at the end
  }
  for (int c = 0; c < chunks; ++c) {
    wait_copies<Stages - 2>();  // this thread's copies of chunk c have landed
    __syncthreads();            // everyone's have; and chunk c - 1's stage is free
    const int next = c + Stages - 1;
    if (next < chunks) copy(next, next % Stages);
    commit_copies();
    multiply(c % Stages);
  }
}

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

/// Grid (upper tiles, splits), block cqr::kThreads, cqr::gram_shared_bytes(Stages) of dynamic
/// shared memory. Vec: floats per copy, 4 where z is 16-byte aligned and ld a multiple of 4.
template <int Stages, int Vec>
__global__ void __launch_bounds__(cqr::kThreads, cqr::kGramBlocksPerSm) gram_partials_kernel(const __grid_constant__ GramPartialsParams p) {
  using namespace cqr;
  static_assert(Vec == 1 || Vec == 4, "copy width");
  extern __shared__ __align__(16) unsigned char gram_shared[];
  // Stage s: A tile [64 columns of the row block][36 rows] at s * kGramStageBytes, then B.
  const auto stage_at = [&](int stage) { return reinterpret_cast<float*>(gram_shared + stage * kGramStageBytes); };
  int bi = 0, bj = 0;
  upper_tile(int(blockIdx.x), bi, bj);
  const bool diagonal = bi == bj;
  const std::int64_t t_begin = std::int64_t(blockIdx.y) * p.split_rows;
  const std::int64_t t_end = t_begin + p.split_rows < p.rows ? t_begin + p.split_rows : p.rows;
  Quadrant acc;
  // The strictly lower quadrant of a diagonal tile is not needed (only the upper triangle is).
  const bool idle = diagonal && acc.row0 > acc.col0;

  // Thread x copies `Vec` rows starting at row kRowStep * (x % kLanesPerColumn) of columns
  // x / kLanesPerColumn + kColumnStep q of each block (a warp reads whole 128-byte column runs).
  constexpr int kLanesPerColumn = kChunk / Vec, kColumnStep = kThreads / kLanesPerColumn;
  constexpr int kCopies = kTile / kColumnStep;
  const int x = int(threadIdx.x);
  const int row_in_chunk = Vec * (x % kLanesPerColumn), first_column = x / kLanesPerColumn;
  const std::int64_t ld = p.ld;
  const float* a_at = p.z + std::int64_t(bi * kTile + first_column) * ld + row_in_chunk;
  const float* b_at = p.z + std::int64_t(bj * kTile + first_column) * ld + row_in_chunk;
  const int a_columns = p.k - bi * kTile - first_column, b_columns = p.k - bj * kTile - first_column;
  const auto copy = [&](int chunk, int stage) {
    const std::int64_t t0 = t_begin + std::int64_t(chunk) * kChunk;
    // Whole Vec-row runs: slices start at multiples of kChunk and rows % Vec == 0 when Vec > 1.
    const bool rows_ok = t0 + row_in_chunk < t_end;
    float* sa = stage_at(stage) + first_column * kKMajorLd + row_in_chunk;
    float* sb = sa + kTile * kKMajorLd;
#pragma unroll
    for (int q = 0; q < kCopies; ++q) {
      const std::int64_t offset = t0 + q * kColumnStep * ld;
      const bool a_ok = rows_ok && q * kColumnStep < a_columns;
      copy_async<4 * Vec>(sa + q * kColumnStep * kKMajorLd, a_ok ? a_at + offset : p.z, a_ok ? 4 * Vec : 0);
      if (!diagonal) {
        const bool b_ok = rows_ok && q * kColumnStep < b_columns;
        copy_async<4 * Vec>(sb + q * kColumnStep * kKMajorLd, b_ok ? b_at + offset : p.z, b_ok ? 4 * Vec : 0);
      }
    }
  };
  const auto multiply = [&](int stage) {
    const float* sa = stage_at(stage);
    const float* sb = diagonal ? sa : sa + kTile * kKMajorLd;
    if (!idle)
      acc.multiply([&](int m, int k) { return double(sa[m * kKMajorLd + k]); },
                   [&](int n, int k) { return double(sb[n * kKMajorLd + k]); });
  };
  const std::int64_t chunks = t_end > t_begin ? (t_end - t_begin + kChunk - 1) / kChunk : 0;
  pipeline<Stages>(int(chunks), copy, multiply);
  if (idle) return;
  double* out = p.out[blockIdx.y];
  const std::int64_t out_ld = p.out_ld[blockIdx.y];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int i = bi * kTile + acc.row(mi, v), j = bj * kTile + acc.col(ni, v);
        if (i <= j && j < p.k) out[i + std::int64_t(j) * out_ld] = acc.c[mi][ni][v];
      }
}

/// The diagonal work basis_gram's caller asks for (cholesky_qr.hpp GramDiagonal), on the summed
/// entry g_ii: the NaN/Inf flag, then the per-column shift.
__device__ inline double finish_diagonal_entry(double gii, int k, const GramDiagonal& diag) {
  if (diag.nonfinite != nullptr && !isfinite(gii)) *diag.nonfinite = diag.nonfinite_code;  // one value: benign
  if (!diag.shift) return gii;
  const double per_unit_diagonal = diag.relative * k;
  return gii + fmax(per_unit_diagonal * gii, diag.floor);
}

/// g (upper triangle, ld k) += the partial sums of slices 1..splits-1, in that order, and the
/// diagonal finished (finish_diagonal_entry) in the same pass.
static __global__ void add_partials_kernel(const __grid_constant__ GramPartialsParams p,
                                           const __grid_constant__ GramDiagonal diag) {
  // x runs down a column (column-major: consecutive threads, consecutive addresses).
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x), j = int(blockIdx.y * blockDim.y + threadIdx.y);
  if (j >= p.k || i > j) return;
  double s = p.out[0][i + std::int64_t(j) * p.out_ld[0]];
  for (int split = 1; split < p.splits; ++split) s += p.out[split][i + std::int64_t(j) * p.out_ld[split]];
  if (i == j) s = finish_diagonal_entry(s, p.k, diag);
  p.out[0][i + std::int64_t(j) * p.out_ld[0]] = s;
}

/// With one slice: only the diagonal to finish. Grid (k + 255) / 256, block 256.
static __global__ void finish_diagonal_kernel(double* g, int k, const __grid_constant__ GramDiagonal diag) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= k) return;
  double& gii = g[i + std::int64_t(i) * k];
  gii = finish_diagonal_entry(gii, k, diag);
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
/// cqr::apply_shared_bytes(Stages) of dynamic shared memory. Vec: 4 where z and w are 16-byte
/// aligned, ld_z a multiple of 4 and ld_w even (copies of 4 floats and 2 doubles), else 1.
template <class Out, int Stages, int Vec>
__global__ void __launch_bounds__(cqr::kThreads, cqr::kApplyBlocksPerSm) apply_inverse_kernel(const __grid_constant__ ApplyInverseParams<Out> p) {
  using namespace cqr;
  static_assert(Vec == 1 || Vec == 4, "copy width");
  extern __shared__ __align__(16) unsigned char apply_shared[];
  // Stage s at s * kApplyStageBytes: the Z tile [32 k][72 rows] in fp32, then the L^{-1} tile
  // [32 k][68 columns of V] in fp64.
  const auto z_stage = [&](int stage) { return reinterpret_cast<float*>(apply_shared + stage * kApplyStageBytes); };
  const auto w_stage = [&](int stage) {
    return reinterpret_cast<double*>(apply_shared + stage * kApplyStageBytes + kApplyZBytes);
  };
  const int col_block = p.col_tiles - 1 - int(blockIdx.x) / p.row_tiles;
  const int row_block = int(blockIdx.x) % p.row_tiles;
  const std::int64_t t_base = std::int64_t(row_block) * kTile;
  const int j_base = col_block * kTile;
  // V[:, j] needs Z[:, i] for i <= j only.
  const int k_end = j_base + kTile < p.k ? j_base + kTile : p.k;
  Quadrant acc;

  // Z: thread x copies rows zv * (x % kZLanes) .. + Vec - 1 of the tile at k offsets
  // x / kZLanes + kZStep q; W: columns wv * (x % kWLanes) .. + wv - 1 at k offsets x / kWLanes +
  // kWStep q (wv = 2 doubles per 16 bytes, or 1).
  constexpr int kWVec = Vec == 4 ? 2 : 1;
  constexpr int kZLanes = kTile / Vec, kZStep = kThreads / kZLanes, kZCopies = kChunk / kZStep;
  constexpr int kWLanes = kTile / kWVec, kWStep = kThreads / kWLanes, kWCopies = kChunk / kWStep;
  const int x = int(threadIdx.x), k = p.k;
  const int z_row = Vec * (x % kZLanes), z_k = x / kZLanes;
  const int w_col = kWVec * (x % kWLanes), w_k = x / kWLanes;
  const std::int64_t ld_z = p.ld_z, ld_w = p.ld_w;
  // Whole runs of Vec rows (rows % Vec == 0 when Vec > 1); a run of two W columns may stop at k.
  const bool z_ok = t_base + z_row < p.rows;
  const int w_valid = j_base + w_col >= k ? 0 : (j_base + w_col + kWVec <= k ? kWVec : k - j_base - w_col);
  const float* z_at = p.z + (t_base + z_row) + std::int64_t(z_k) * ld_z;
  const double* w_at = p.w + (j_base + w_col) + std::int64_t(w_k) * ld_w;
  const auto copy = [&](int chunk, int stage) {
    const int i0 = chunk * kChunk;
    float* sz = z_stage(stage) + z_k * kMMajorLd + z_row;
    double* sw = w_stage(stage) + w_k * kWLd + w_col;
#pragma unroll
    for (int q = 0; q < kZCopies; ++q) {
      const bool ok = z_ok && i0 + z_k + kZStep * q < k;
      copy_async<4 * Vec>(sz + kZStep * q * kMMajorLd, ok ? z_at + (i0 + kZStep * q) * ld_z : p.z, ok ? 4 * Vec : 0);
    }
#pragma unroll
    for (int q = 0; q < kWCopies; ++q) {
      const bool ok = w_valid > 0 && i0 + w_k + kWStep * q < k;
      copy_async<8 * kWVec>(sw + kWStep * q * kWLd, ok ? w_at + (i0 + kWStep * q) * ld_w : p.w, ok ? 8 * w_valid : 0);
    }
  };
  const auto multiply = [&](int stage) {
    const float* sz = z_stage(stage);
    const double* sw = w_stage(stage);
    acc.multiply([&](int row, int k) { return double(sz[k * kMMajorLd + row]); },
                 [&](int col, int k) { return sw[k * kWLd + col]; });
  };
  pipeline<Stages>((k_end + kChunk - 1) / kChunk, copy, multiply);
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
