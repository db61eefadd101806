// The one-launch Cholesky factor and inverse of cholesky_kernels.cuh on 64 x 64 tiles, for
// matrices whose padded side is a whole number of them (k = 512 and 768 in the compressor's
// lockstep batches). Same factorisation, same outputs, same batching; what changes is the grain,
// and L^{-1}, which is formed block row by block row during the factorisation (row r in step r,
// by the CTAs the step's diagonal factor would leave waiting) instead of by doubling after it:
//
//   - half as many factorisation steps (grid barriers), and an eighth of the
//     work items, each with eight times the arithmetic: the 32-wide kernel's items were latency-
//     bound (~3-6 us for 3 x 32^3 multiply-adds), and its many barrier-separated steps made a
//     batch of eight 768^2 matrices take 1.15 ms;
//   - the tiles come into shared memory by cp.async (no register staging), the inverse's
//     k-loops double-buffered, and the products use DMMA m16n8k8 (dmma.cuh);
//   - a diagonal tile is factored by the CTA in two 32-wide halves: the top-left quarter
//     (factor_tile_in_block), then L21 = C21 L11^{-T} and C22 -= L21 L21^T, the bottom-right
//     quarter, and L^{-1} completed with -L22^{-1} (L21 L11^{-1}).
// Measured on an H200 (xkv_svd_cli --micro, 2026-11-30): 8 matrices of 768^2 in one launch
// (16 CTAs each) 0.60 ms against 1.12 ms for the 32-wide kernel, 8 of 512^2 0.33 against 0.47
// (A/B in one binary, one pivot per barrier in the tile factor); with two per barrier and the
// blocked copy, 0.555 / 0.288 ms, and one matrix alone 0.377 / 0.252 ms; with each step's
// diagonal items on CTAs of their own (chol::step_stride), 0.476 / 0.27 ms; with L^{-1} formed
// during the steps, 0.412 / 0.248 ms; with four pivots per barrier in the tile factor, 0.391 /
// 0.229 ms, one matrix alone 0.305 / 0.209; with the first diagonal factor beside the copy-down
// and the last row of L^{-1} summed during the steps, 0.332 / 0.210 ms, alone 0.287 / 0.195
// (docs/PERFORMANCE.md).
//
// Shared tiles are stored column by column with a padded leading dimension: entry (r, c) of a
// tile at s[c * kLd + r], so that a 512-byte matrix column is one cp.async row. With kLd = 68 the
// DMMA fragment reads hit distinct bank pairs whether a tile is read as itself or transposed
// (offsets 68 k + x and 68 x + k are 4 k + x and 4 x + k mod 16, as in cholesky_qr_kernels.cuh).
// Needs 4 tiles of shared memory (139 KB: sm_80 and sm_90; cholesky.cu falls back to the 32-wide
// kernel elsewhere) and 16-byte aligned w and work.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cholesky_kernels.cuh"
#include "dmma.cuh"


namespace xkv::cuda::detail {

inline constexpr int kCholWideTile = 64;

namespace cholw {

constexpr int kT = kCholWideTile;
constexpr int kLd = kT + 4;
constexpr int kTileDoubles = kT * kLd;
constexpr int kThreads = kCholThreads;
constexpr int kHalf = kT / 2;
/// Dynamic shared memory of a launch: four tiles.
constexpr std::size_t kSharedBytes = 4 * std::size_t(kTileDoubles) * sizeof(double);
/// The four tiles. Named here rather than passed as pointers so that the diagonal factorisation,
/// a call of its own, still addresses them as shared memory.
extern __shared__ __align__(16) double tiles[];
/// The diagonal factorisation works in the last two tiles.
constexpr int kFactorTile = 3, kFactorInverseTile = 2;

/// Issues the copy of matrix tile (row_tile, col_tile) (column-major, leading dimension ld) into
/// the shared tile s, 16 bytes per cp.async, bypassing L1.
__device__ __forceinline__ void copy_tile_async(double* s, const double* m, int ld, int row_tile, int col_tile) {
  const double* src = m + std::size_t(row_tile) * kT + std::size_t(col_tile) * kT * std::size_t(ld);
  static_assert(kT * kT / 2 % kThreads == 0, "whole 16-byte copies per thread");
#pragma unroll
  for (int u = 0; u < kT * kT / 2 / kThreads; ++u) {
    const int q = int(threadIdx.x) + u * kThreads, c = q / (kT / 2), r = 2 * (q % (kT / 2));
    const unsigned dst = unsigned(__cvta_generic_to_shared(s + c * kLd + r));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src + r + std::size_t(c) * ld));
  }
}
/// Issues the copy of one double into shared memory (8-byte cp.async: any layout, no register held).
__device__ __forceinline__ void copy_double_async(double* s, const double* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(unsigned(__cvta_generic_to_shared(s))), "l"(src));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/// Waits until at most `Pending` of this thread's committed copy groups are still in flight.
template <int Pending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
}

/// Writes shared tile s to matrix tile (row_tile, col_tile), or its transpose.
__device__ __forceinline__ void store_tile(const double* s, double* m, int ld, int row_tile, int col_tile,
                                           bool transposed) {
  double* dst = m + std::size_t(row_tile) * kT + std::size_t(col_tile) * kT * std::size_t(ld);
  for (int e = int(threadIdx.x); e < kT * kT; e += kThreads) {
    const int r = e % kT, c = e / kT;
    dst[r + std::size_t(c) * ld] = transposed ? s[r * kLd + c] : s[c * kLd + r];
  }
}

/// How a product operand is read from a shared tile: as the tile (entry (x, k) at s[k * kLd + x])
/// or as its transpose (s[x * kLd + k]).
enum class Read { Tile, Transposed };
template <Read How>
__device__ __forceinline__ double operand(const double* s, int x, int k) {
  if constexpr (How == Read::Tile) return s[k * kLd + x];
  else return s[x * kLd + k];
}

/// One warp's MI x NI blocks of 16 x 8 of C += P Q^T (P: rows x depth, Q: columns x depth), the
/// blocks starting at (row0, col0). Entry (mi, ni, v) is at row(mi, v), col(ni, v).
template <int MI, int NI>
struct WarpProduct {
  double c[MI][NI][4] = {};
  int row0 = 0, col0 = 0;

  __device__ __forceinline__ WarpProduct(int row0_, int col0_) : row0(row0_), col0(col0_) {}
  __device__ __forceinline__ static int g() { return int(threadIdx.x % 32) / 4; }
  __device__ __forceinline__ static int t() { return int(threadIdx.x % 4); }
  __device__ __forceinline__ int row(int mi, int v) const { return row0 + 16 * mi + g() + 8 * (v / 2); }
  __device__ __forceinline__ int col(int ni, int v) const { return col0 + 8 * ni + 2 * t() + v % 2; }

  template <Read HowP, Read HowQ>
  __device__ __forceinline__ void multiply(const double* p, const double* q, int depth) {
#pragma unroll 2
    for (int k0 = 0; k0 < depth; k0 += 8) {
      const int k = k0 + t();
      double a[MI][4], b[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int m = row0 + 16 * mi + g();
        a[mi][0] = operand<HowP>(p, m, k);
        a[mi][1] = operand<HowP>(p, m + 8, k);
        a[mi][2] = operand<HowP>(p, m, k + 4);
        a[mi][3] = operand<HowP>(p, m + 8, k + 4);
      }
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int n = col0 + 8 * ni + g();
        b[ni][0] = operand<HowQ>(q, n, k);
        b[ni][1] = operand<HowQ>(q, n, k + 4);
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) dmma_m16n8k8(c[mi][ni], a[mi], b[ni]);
    }
  }
  /// Entries <- the matrix tile at `origin` (column-major, leading dimension ld).
  __device__ __forceinline__ void load(const double* origin, int ld) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int v = 0; v < 4; ++v) c[mi][ni][v] = origin[row(mi, v) + std::size_t(col(ni, v)) * ld];
  }
  /// The matrix tile at `origin` (column-major, leading dimension ld) <- scale * entries.
  __device__ __forceinline__ void store(double* origin, int ld, double scale) const {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int v = 0; v < 4; ++v) origin[row(mi, v) + std::size_t(col(ni, v)) * ld] = scale * c[mi][ni][v];
  }
  /// s[col * kLd + row] = scale * entry (a tile, stored column by column).
  __device__ __forceinline__ void write(double* s, double scale) const {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int v = 0; v < 4; ++v) s[col(ni, v) * kLd + row(mi, v)] = scale * c[mi][ni][v];
  }
};

/// A whole 64 x 64 tile over the CTA's eight warps: 32 x 16 each.
using TileProduct = WarpProduct<2, 2>;
__device__ __forceinline__ TileProduct tile_product() {
  const int w = int(threadIdx.x) / 32;
  return TileProduct(32 * (w & 1), 16 * (w >> 1));
}
/// A 32 x 32 quarter over the eight warps: 16 x 8 each.
using QuarterProduct = WarpProduct<1, 1>;
__device__ __forceinline__ QuarterProduct quarter_product() {
  const int w = int(threadIdx.x) / 32;
  return QuarterProduct(16 * (w & 1), 8 * (w >> 1));
}

/// Entry (r, c) of the 32 x 32 quarter of shared tile s starting at (r0, c0).
__device__ __forceinline__ auto quarter(double* s, int r0, int c0) {
  return [=](int r, int c) -> double& { return s[(c0 + c) * kLd + r0 + r]; };
}

/// CTA-wide: the diagonal tile s (tile kFactorTile) of the trailing matrix (lower triangle read)
/// becomes its Cholesky factor L (upper part zero), and sinv (tile kFactorInverseTile) L^{-1} (upper
/// part zero). first_index: the tile's first row in the matrix (for *info).
// Not inlined: inlined at both call sites it pushed the kernel past 255 registers (spills); as a
// call both sides fit (244 and its own).
__device__ __noinline__ void factor_wide_tile(int first_index, const CholeskyParams& p) {
  double* const s = tiles + kFactorTile * kTileDoubles;
  double* const sinv = tiles + kFactorInverseTile * kTileDoubles;
  __shared__ double pivot_inverse[kCholTile];
  static_assert(kHalf == kCholTile, "the quarters are the 32-wide kernel's tiles");
  __syncthreads();
  chol::factor_tile_in_block(quarter(s, 0, 0), quarter(sinv, 0, 0), pivot_inverse, first_index, p);
  {  // L21 = C21 L11^{-T}, over C21
    QuarterProduct l21 = quarter_product();
    l21.multiply<Read::Tile, Read::Tile>(s + kHalf, sinv, kHalf);
    __syncthreads();
    l21.write(s + kHalf, 1.0);
  }
  __syncthreads();
  {  // C22 -= L21 L21^T (reads the left half, writes the right one)
    QuarterProduct update = quarter_product();
    update.multiply<Read::Tile, Read::Tile>(s + kHalf, s + kHalf, kHalf);
#pragma unroll
    for (int v = 0; v < 4; ++v) s[(kHalf + update.col(0, v)) * kLd + kHalf + update.row(0, v)] -= update.c[0][0][v];
  }
  __syncthreads();
  chol::factor_tile_in_block(quarter(s, kHalf, kHalf), quarter(sinv, kHalf, kHalf), pivot_inverse,
                             first_index + kHalf, p);
  {  // X = L21 L11^{-1}, into the (unused) upper-right quarter of s
    QuarterProduct x = quarter_product();
    x.multiply<Read::Tile, Read::Transposed>(s + kHalf, sinv, kHalf);
    x.write(s + kHalf * kLd, 1.0);
  }
  __syncthreads();
  {  // (L^{-1})21 = -L22^{-1} X
    QuarterProduct y = quarter_product();
    y.multiply<Read::Tile, Read::Transposed>(sinv + kHalf * kLd + kHalf, s + kHalf * kLd, kHalf);
    y.write(sinv + kHalf, -1.0);
  }
  __syncthreads();
  for (int e = int(threadIdx.x); e < kHalf * kHalf; e += kThreads) {  // both upper-right quarters are zero
    const int r = e % kHalf, c = e / kHalf;
    s[(kHalf + c) * kLd + r] = 0.0;
    sinv[(kHalf + c) * kLd + r] = 0.0;
  }
  __syncthreads();
}

/// Factors the diagonal tile held in tile kFactorTile (tile row/column j) and stores R_jj = L_jj^T
/// (into work, whose tile (j, j) nothing reads any more) and L_jj^{-1} (into w).
__device__ __forceinline__ void factor_and_store_wide(const CholeskyParams& p, int j) {
  factor_wide_tile(j * kT, p);
  const double* s = tiles + kFactorTile * kTileDoubles;
  const double* sinv = tiles + kFactorInverseTile * kTileDoubles;
  const int ld = p.tiles * kT;
  store_tile(s, p.work, ld, j, j, /*transposed=*/true);
  store_tile(sinv, p.w, ld, j, j, /*transposed=*/false);
}

/// Tile (0, 0) of matrix p, straight from its Gram into shared tile s: the lower triangle from the
/// Gram's upper one (identity beyond k, as the copy-down pads), zeros above. Lets the first
/// diagonal factor start without waiting for the copy-down of the whole matrix.
__device__ __forceinline__ void load_first_diagonal_tile(const CholeskyParams& p, double* s) {
#pragma unroll 4
  for (int e = int(threadIdx.x); e < kT * kT; e += kThreads) {
    const int c = e % kT, r = e / kT;  // consecutive threads read consecutive Gram entries (c, r)
    double* const dst = s + c * kLd + r;
    if (r >= c && r < p.k && c < p.k) copy_double_async(dst, p.gram + c + std::size_t(r) * p.k);
    else *dst = r == c ? 1.0 : 0.0;
  }
  commit_copies();
  wait_copies<0>();
}

/// The copy-down of chol::copy_down_and_clear run by CTAs first_cta.. of the grid, leaving out the
/// three 32 x 32 blocks of 64-wide tile (0, 0) (load_first_diagonal_tile's), with kInFlight blocks
/// per CTA in flight at once: each block's Gram entries come into shared memory by 8-byte
/// cp.async (no registers held), then one barrier, then its columns of work are written. One
/// block at a time, every block paid a full round trip to memory: 129k cycles of a batch of
/// eight 768^2 factorisations before any of them could start. W's strictly upper 64-wide tiles
/// are zeroed here; its other tiles are all written by the factorisation.
__device__ __forceinline__ void copy_down_and_clear_wide(const CholeskyBatch& batch, int ld, int first_cta,
                                                         double* scratch) {
  constexpr int kBlock = kCholTile, kBlockLd = kBlock + 1, kInFlight = 8;
  static_assert(kInFlight * kBlock * kBlockLd <= 2 * kTileDoubles, "scratch: two shared tiles");
  static_assert(kBlock * kBlock % kThreads == 0, "whole blocks per pass");
  constexpr int kSkipped = 3;  // blocks (0, 0), (1, 0), (1, 1): the first three in lower_tile order
  const int nb = batch.count, blocks = ld / kBlock;
  const int per_matrix = blocks * (blocks + 1) / 2 - kSkipped, total = nb * per_matrix;
  const int ctas = int(gridDim.x) - first_cta, cta = int(blockIdx.x) - first_cta;
  for (int t0 = cta; t0 < total; t0 += kInFlight * ctas) {
#pragma unroll
    for (int q = 0; q < kInFlight; ++q) {
      const int t = t0 + q * ctas;
      if (t >= total) break;
      const CholeskyParams& p = batch.m[t % nb];
      int bi, bj;
      chol::lower_tile(t / nb + kSkipped, bi, bj);
      double* const block = scratch + q * kBlock * kBlockLd;
#pragma unroll
      for (int u = 0; u < kBlock * kBlock / kThreads; ++u) {
        const int e = int(threadIdx.x) + u * kThreads, x = e % kBlock, y = e / kBlock;
        const int r = bi * kBlock + y, c = bj * kBlock + x;  // work(r, c) <- Gram(c, r)
        double* const dst = block + y * kBlockLd + x;
        if (r >= c && r < p.k && c < p.k) copy_double_async(dst, p.gram + c + std::size_t(r) * p.k);
        else *dst = r == c ? 1.0 : 0.0;
      }
    }
    commit_copies();
    wait_copies<0>();
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kInFlight; ++q) {
      const int t = t0 + q * ctas;
      if (t >= total) break;
      const CholeskyParams& p = batch.m[t % nb];
      int bi, bj;
      chol::lower_tile(t / nb + kSkipped, bi, bj);
      const double* const block = scratch + q * kBlock * kBlockLd;
#pragma unroll
      for (int u = 0; u < kBlock * kBlock / kThreads; ++u) {
        const int e = int(threadIdx.x) + u * kThreads, y = e % kBlock, x = e / kBlock;
        const int r = bi * kBlock + y, c = bj * kBlock + x;
        if (r >= c) p.work[r + std::size_t(c) * ld] = block[y * kBlockLd + x];
      }
    }
    __syncthreads();  // the next pass's copies overwrite the scratch
  }
  const int tiles = ld / kT, upper = tiles * (tiles - 1) / 2;
  for (int t = cta; t < nb * upper; t += ctas) {
    const CholeskyParams& p = batch.m[t % nb];
    int i, m;  // strictly upper tile (m, i + 1) for lower-triangle tile (i, m), m <= i
    chol::lower_tile(t / nb, i, m);
    double2* const dst = reinterpret_cast<double2*>(p.w + std::size_t(m) * kT + std::size_t(i + 1) * kT * ld);
    for (int e = int(threadIdx.x); e < kT * kT / 2; e += kThreads) {
      const int r2 = e % (kT / 2), c = e / (kT / 2);
      dst[r2 + std::size_t(c) * (ld / 2)] = make_double2(0.0, 0.0);
    }
  }
}

}  // namespace cholw

/// The cholesky_inverse_kernel of cholesky_kernels.cuh on 64-wide tiles (CholeskyParams::tiles
/// counts 64-wide tiles here). Block kCholThreads, dynamic shared memory cholw::kSharedBytes.
__global__ void __launch_bounds__(kCholThreads, 1) cholesky_inverse_wide_kernel(const __grid_constant__ CholeskyBatch batch) {
  namespace cg = cooperative_groups;
  using namespace cholw;
  cg::grid_group grid = cg::this_grid();
  double* const shared = cholw::tiles;
  double* const tile0 = shared;
  double* const tile1 = shared + kTileDoubles;
  double* const tile2 = shared + kFactorInverseTile * kTileDoubles;
  double* const tile3 = shared + kFactorTile * kTileDoubles;
  const int nb = batch.count;
  const int nt = batch.m[0].tiles, ld = nt * kT;  // every matrix of a batch has the same size
  if (int(gridDim.x) > nb) {  // grid-uniform
    // CTA m factors matrix m's tile (0, 0) straight from its Gram while the others copy the rest
    // of the Grams down (and clear W), instead of one after the other.
    if (int(blockIdx.x) < nb) {
      const CholeskyParams& p = batch.m[blockIdx.x];
      load_first_diagonal_tile(p, tile3);
      factor_and_store_wide(p, 0);  // begins with a block barrier
    } else {
      copy_down_and_clear_wide(batch, ld, nb, tile0);
    }
    grid.sync();
  } else {
    chol::copy_down_and_clear(batch, ld, tile0);
    grid.sync();
    for (int m = int(blockIdx.x); m < nb; m += int(gridDim.x)) {
      const CholeskyParams& p = batch.m[m];
      copy_tile_async(tile3, p.work, ld, 0, 0);
      commit_copies();
      wait_copies<0>();
      factor_and_store_wide(p, 0);  // begins with a block barrier
    }
    grid.sync();
  }

  // Block row r of L^{-1} (every W_rm, m < r), one work item per tile: W_rm = -W_rr T_rm with
  // T_rm = sum over x in [m, r) of L_rx W_xm. It reads L's rows <= r (R's upper tiles, read
  // transposed) and W's rows < r, all final once factorisation step r - 1 is done, and writes
  // only its own tile: row r runs during step r beside the trailing updates (the CTAs that would
  // wait at the step's barrier while the next diagonal tile is factored), the last row after the
  // loop. (Before: the inverse by doubling after the factorisation, ~17% of a lone 768^2 launch.)
  // Each item's k-loop runs over tile pairs, the next pair copied into the other two shared tiles
  // while the current one is multiplied.
  const auto sum_of_products = [&](auto& acc, auto tiles_at, int x_begin, int x_end, auto multiply) {
    // Buffer b is tiles 2b and 2b + 1.
    const auto issue = [&](int x, int buffer) {
      const auto refs = tiles_at(x);
      copy_tile_async(shared + 2 * buffer * kTileDoubles, refs.p, ld, refs.p_row, refs.p_col);
      copy_tile_async(shared + (2 * buffer + 1) * kTileDoubles, refs.q, ld, refs.q_row, refs.q_col);
    };
    issue(x_begin, 0);
    commit_copies();
    for (int x = x_begin; x < x_end; ++x) {
      const int buffer = (x - x_begin) & 1;
      if (x + 1 < x_end) issue(x + 1, buffer ^ 1);
      commit_copies();
      wait_copies<1>();
      __syncthreads();
      multiply(acc, shared + 2 * buffer * kTileDoubles, shared + (2 * buffer + 1) * kTileDoubles);
      __syncthreads();
    }
  };
  struct TileRefs {
    const double* p;
    int p_row, p_col;
    const double* q;
    int q_row, q_col;
  };
  // T_rm's terms x in [x_begin, x_end) added to acc.
  const auto add_terms = [&](TileProduct& acc, const CholeskyParams& p, int r, int m, int x_begin, int x_end) {
    sum_of_products(
        acc, [&](int x) { return TileRefs{p.work, x, r, p.w, x, m}; }, x_begin, x_end,
        [](TileProduct& a, const double* l, const double* w) {
          a.multiply<Read::Transposed, Read::Transposed>(l, w, kT);
        });
  };
  // The last block row's T_rm accumulates in W_rm's own tile, one term per step: step j adds the
  // term x = j - 1 (L_rx from step x's panel, W_xm from step x's inverse row, both final), so the
  // CTAs the step's diagonal factor leaves waiting do it a tile product at a time, and after the
  // loop only the term x = r - 1 is left. (Summed after the loop, the row's first tile took ten
  // products there.) The accumulators are fp64 and the terms come in order: the same bits.
  const auto last_row_term_item = [&](const CholeskyParams& p, int r, int m, int x) {
    TileProduct acc = tile_product();
    double* const t_rm = p.w + std::size_t(r) * kT + std::size_t(m) * kT * std::size_t(ld);
    if (x > m) acc.load(t_rm, ld);
    add_terms(acc, p, r, m, x, x + 1);
    acc.store(t_rm, ld, 1.0);
  };
  // W_rm = -W_rr T_rm; terms from x_begin on (before it, T's partial sum is in W_rm's tile).
  const auto inverse_row_item = [&](const CholeskyParams& p, int r, int m, int x_begin) {
    TileProduct acc = tile_product();
    if (x_begin > m) acc.load(p.w + std::size_t(r) * kT + std::size_t(m) * kT * std::size_t(ld), ld);
    add_terms(acc, p, r, m, x_begin, r);
    acc.write(tile0, 1.0);  // T_rm (the k-loop ended with a block barrier: the tiles are free)
    copy_tile_async(tile1, p.w, ld, r, r);
    commit_copies();
    wait_copies<0>();
    __syncthreads();
    TileProduct out = tile_product();
    out.multiply<Read::Tile, Read::Transposed>(tile1, tile0, kT);
    out.store(p.w + std::size_t(r) * kT + std::size_t(m) * kT * std::size_t(ld), ld, -1.0);
    __syncthreads();  // the next item's copies overwrite the tiles
  };

  // Step j: work item t is item t / nb of matrix t % nb (items 0, each matrix's next diagonal
  // tile, go to the first CTAs). Item (i, m), j < m <= i: C_im -= L_ij L_mj^T with the panel tiles
  // L_ij = A_ij L_jj^{-T} formed here (recomputed by every item that needs them: cheaper than a
  // barrier).
  for (int j = 0; j + 1 < nt; ++j) {
    const int rest = nt - j - 1, count = rest * (rest + 1) / 2;
    // Per matrix: item 0, then the j items of L^{-1}'s row j, then trailing items 1..count-1, then
    // the j items adding the term x = j - 1 to the last row's T_rm, m < j.
    const int items = count + 2 * j;
    const int stride = chol::step_stride(nb, items);  // the items 0 on CTAs of their own
    for (int t = int(blockIdx.x); t < nb * items; t += stride) {
      const CholeskyParams& p = batch.m[t % nb];
      const int slot = t / nb;
      if (slot >= 1 && slot <= j) {  // block-uniform
        inverse_row_item(p, j, slot - 1, slot - 1);
        continue;
      }
      if (slot >= count + j) {
        last_row_term_item(p, nt - 1, slot - count - j, j - 1);
        __syncthreads();  // the next item's copies overwrite the tiles
        continue;
      }
      const int item = slot == 0 ? 0 : slot - j;
      int i, m;
      chol::trailing_tile(item, j, i, m);
      const bool square = m == i;
      copy_tile_async(tile0, p.work, ld, i, j);
      if (!square) copy_tile_async(tile1, p.work, ld, m, j);
      copy_tile_async(tile2, p.w, ld, j, j);
      commit_copies();
      wait_copies<0>();
      __syncthreads();
      TileProduct li = tile_product(), lm = tile_product();
      li.multiply<Read::Tile, Read::Tile>(tile0, tile2, kT);
      if (!square) lm.multiply<Read::Tile, Read::Tile>(tile1, tile2, kT);
      __syncthreads();
      li.write(tile0, 1.0);
      if (!square) lm.write(tile1, 1.0);
      __syncthreads();
      // Each panel tile is written by exactly one item, as R_ji = L_ij^T into work's upper tile
      // (j, i), which only the inverse-row items of step i and later read.
      if (m == j + 1) store_tile(tile0, p.work, ld, j, i, /*transposed=*/true);
      // This thread's entries of C_im, read while the update is multiplied (read earlier, they
      // stayed live through the panel products and spilled).
      TileProduct target = tile_product();
      double* const c_im = p.work + std::size_t(i) * kT + std::size_t(m) * kT * std::size_t(ld);
      target.load(c_im, ld);
      TileProduct update = tile_product();
      update.multiply<Read::Tile, Read::Tile>(tile0, square ? tile0 : tile1, kT);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 2; ++ni)
#pragma unroll
          for (int v = 0; v < 4; ++v) target.c[mi][ni][v] -= update.c[mi][ni][v];
      if (item == 0) {  // (j+1, j+1) is final: factor it for step j + 1 (L_jj^{-1} in tile2 is done with)
        target.write(tile3, 1.0);
        factor_and_store_wide(p, j + 1);
      } else {
        target.store(c_im, ld, 1.0);
      }
      __syncthreads();  // the next item's copies overwrite the tiles
    }
    grid.sync();
  }

  // L^{-1}'s last block row: its last term (the last step's panel and inverse row) and W_rr.
  for (int t = int(blockIdx.x); t < nb * (nt - 1); t += int(gridDim.x)) {
    const int m = t / nb;
    inverse_row_item(batch.m[t % nb], nt - 1, m, m < nt - 2 ? nt - 2 : m);
  }
}

}  // namespace xkv::cuda::detail
