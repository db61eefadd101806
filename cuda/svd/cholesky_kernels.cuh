// Cholesky factor and its inverse of a small SPD matrix (k up to a few thousand) in ONE
// cooperative launch. cuSOLVER's potrf + trsm on a 576^2 problem cost ~0.8 ms, almost all of it
// launch and synchronisation latency; here every step is a grid-wide barrier instead of a
// kernel boundary, and the inverse turns the triangular solve into a plain GEMM.
//
// Blocked right-looking Cholesky on 32 x 32 fp64 tiles, matrix padded to a whole number of tiles
// with an identity block (the leading k x k parts of L and L^{-1} are those of the unpadded matrix).
// One grid barrier per tile column j: each CTA takes trailing tiles (i, m), j < m <= i, forms the
// panel tiles it needs itself (L_ij = A_ij L_jj^{-T}, recomputed rather than shared: cheaper than
// a barrier), updates A_im -= L_ij L_mj^T, and CTA 0, whose first tile is (j+1, j+1), factors and
// inverts that diagonal tile at once (all its threads, factor_tile_in_block), ready for step j + 1.
// Then L^{-1} by recursive doubling of 2 x 2 block inverses
//   [A 0; B C]^{-1} = [A^{-1} 0; -C^{-1} (B A^{-1}) C^{-1}]   (two GEMM barriers per level).
// The tile order is fixed, so the result is bit-identical run to run.
// Memory: L^{-1} and one working matrix, which takes the trailing matrix in its lower tiles and
// R = L^T in its upper ones (free as soon as the Gram is copied down), and which may be the Gram
// itself: one k x k fp64 buffer beyond the input.
// Batches: up to kCholMaxBatch matrices of one size share the launch and its barriers (each step's
// work items interleaved over the matrices, the diagonal tiles first), so groups factored in
// lockstep pay the chain of barriers once; every tile is computed as in a launch of its own.
// cholesky_wide_kernels.cuh runs the same algorithm on 64 x 64 tiles, which cholesky.cu prefers
// where the padded side allows it.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>

namespace xkv::cuda::detail {

inline constexpr int kCholTile = 32;
inline constexpr int kCholThreads = 256;

struct CholeskyParams {
  const double* gram = nullptr;  ///< k x k column-major (ld k); only the upper triangle is read
  int k = 0;
  int tiles = 0;         ///< padded side / the kernel's tile side (kCholTile or kCholWideTile)
  double* w = nullptr;     ///< padded x padded, column-major: L^{-1} (upper part zero)
  /// padded x padded, column-major. Its lower tiles hold the trailing matrix, then the B A^{-1}
  /// products of the inverse; its upper triangle with the diagonal tiles receives R = L^T, tile by
  /// tile as L is formed (R's tiles are read back transposed by the inverse). May be `gram` itself
  /// when k == padded: the Gram's upper triangle is copied into the lower one before anything
  /// writes the upper one.
  double* work = nullptr;
  int* info = nullptr;   ///< 0, or the 1-based index of the first pivot that was not positive
};

/// Matrices of one size factored by one launch.
inline constexpr int kCholMaxBatch = 16;
struct CholeskyBatch {
  CholeskyParams m[kCholMaxBatch];
  int count = 0;
};

namespace chol {

using Tile = double[kCholTile][kCholTile + 1];  // +1: no bank conflicts on column walks
constexpr int kPerThread = kCholTile * kCholTile / kCholThreads;

struct TileRef {
  const double* base;
  int row_tile, col_tile;
  bool transposed = false;  ///< the tile at (row_tile, col_tile) lands in shared memory transposed
};

template <int N>
struct TileRefs {
  TileRef ref[N];
};

/// This thread's entries of N tiles, read from global memory into registers (all reads in flight
/// at once), then written to shared memory: split so that a loop can fetch its next tiles while it
/// multiplies the current ones.
template <int N>
struct TileFetch {
  double v[N][kPerThread];

  __device__ __forceinline__ void fetch(const TileRef (&src)[N], int ld) {
#pragma unroll
    for (int t = 0; t < N; ++t)
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) {
        const int e = threadIdx.x + q * kCholThreads, r = e % kCholTile, c = e / kCholTile;
        v[t][q] = src[t].base[(std::size_t(src[t].row_tile) * kCholTile + r) +
                              (std::size_t(src[t].col_tile) * kCholTile + c) * ld];
      }
  }
  __device__ __forceinline__ void put(Tile* const (&dst)[N], const TileRef (&src)[N]) const {
#pragma unroll
    for (int t = 0; t < N; ++t)
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) {
        const int e = threadIdx.x + q * kCholThreads, r = e % kCholTile, c = e / kCholTile;
        if (src[t].transposed) (*dst[t])[c][r] = v[t][q];
        else (*dst[t])[r][c] = v[t][q];
      }
  }
};

/// Loads N tiles with all global reads in flight before the first shared-memory write.
template <int N>
__device__ __forceinline__ void load(Tile* const (&dst)[N], const TileRef (&src)[N], int ld) {
  TileFetch<N> f;
  f.fetch(src, ld);
  f.put(dst, src);
}

__device__ __forceinline__ void store(const Tile& s, double* m, int ld, int row_tile, int col_tile,
                                      bool transposed = false) {
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const int e = threadIdx.x + q * kCholThreads, r = e % kCholTile, c = e / kCholTile;
    m[(std::size_t(row_tile) * kCholTile + r) + (std::size_t(col_tile) * kCholTile + c) * ld] =
        transposed ? s[c][r] : s[r][c];
  }
}

/// A 32 x 32 fp64 product on the fp64 tensor cores (DMMA m8n8k4). Warp w owns the 8 x 16 strip
/// rows 8 (w % 4).., columns 16 (w / 4)..; each thread holds 4 entries: v[2 b + e] is at
/// row(), col(2 b + e) (b: which 8 x 8 block of the strip, e: which of the thread's pair).
struct Accumulator {
  double v[4] = {0, 0, 0, 0};
  __device__ __forceinline__ static int warp() { return threadIdx.x / 32; }
  __device__ __forceinline__ static int group() { return (threadIdx.x % 32) / 4; }
  __device__ __forceinline__ static int quad() { return threadIdx.x % 4; }
  __device__ __forceinline__ int row(int = 0) const { return 8 * (warp() % 4) + group(); }
  __device__ __forceinline__ int col(int s) const { return 16 * (warp() / 4) + 8 * (s / 2) + 2 * quad() + s % 2; }
  /// += P * Q^T (transpose_q) or P * Q
  __device__ __forceinline__ void add(const Tile& p, const Tile& q, bool transpose_q) {
    const int r = row(), n0 = 16 * (warp() / 4) + group();
#pragma unroll
    for (int k0 = 0; k0 < kCholTile; k0 += 4) {
      const double a = p[r][k0 + quad()];
#pragma unroll
      for (int blk = 0; blk < 2; ++blk) {
        const int n = n0 + 8 * blk;
        const double b = transpose_q ? q[n][k0 + quad()] : q[k0 + quad()][n];
        asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, {%0, %1};"
                     : "+d"(v[2 * blk]), "+d"(v[2 * blk + 1])
                     : "d"(a), "d"(b));
      }
    }
  }
  __device__ __forceinline__ void write(Tile& out, double scale) const {
#pragma unroll
    for (int s = 0; s < 4; ++s) out[row()][col(s)] = scale * v[s];
  }
};

/// All threads of the CTA: d <- its Cholesky factor (lower, upper part zeroed), inv <- the
/// factor's inverse. Right-looking, one block barrier per four pivots: thread (lane, warp w) keeps
/// the entries (lane, w + 8 u) of the trailing matrix in registers, and the block of steps
/// c .. c + 3 subtracts sum_k L_ik L_mk from those with c < m <= lane, the L entries formed from
/// columns c .. c + 3 in shared memory by each thread where it needs them; the owners of columns
/// c + 4 .. c + 7 write them back for the next block. Columns are scaled only at the end
/// (nothing reads them after their block). Two pivots per barrier until 2026-11-30 11:38 UTC;
/// before that one warp did all of it, a row per lane, with the column broadcast by shuffles:
/// ~40k cycles per tile, the critical path of both kernels (a dependent shuffle / rsqrt / fma
/// chain a warp cannot hide). fp64 sqrt and division are long instruction sequences, so each
/// pivot costs one rsqrt and everything else multiplies by it.
/// `first_index` is the tile's first row in the matrix (for *info); `pivot_inverse` is shared
/// scratch for the 32 values 1 / L_cc. `d(r, c)` and `inv(r, c)` give references to the entries of
/// the 32 x 32 tiles in shared memory (any layout: the wide-tile kernel factors quarters of its
/// 64 x 64 tiles with this). Starts and ends with a block barrier.
template <class FactorTile, class InverseTile>
__device__ __forceinline__ void factor_tile_in_block(FactorTile d, InverseTile inv, double* pivot_inverse,
                                                     int first_index, const CholeskyParams& p) {
  static_assert(kCholThreads % kCholTile == 0 && kCholTile % (kCholThreads / kCholTile) == 0, "whole columns per warp");
  constexpr int kWarps = kCholThreads / kCholTile, kColumns = kCholTile / kWarps;
  const int lane = int(threadIdx.x % kCholTile), warp = int(threadIdx.x / kCholTile);
  __syncthreads();
  double entry[kColumns];  // (lane, warp + kWarps u), unscaled
#pragma unroll
  for (int u = 0; u < kColumns; ++u) entry[u] = d(lane, warp + kWarps * u);
  // Four pivots per barrier: every thread factors the block's leading 4 x 4 itself (the same
  // function on the same shared values, so the same bits in every thread and in the owners'
  // diagonal entries) and forms the four L entries of its row and of its columns' rows from the
  // block's columns; the owners of the next block's columns write them back. Per pivot the fixed
  // cost of a barrier and its loads is paid once in four instead of once in two.
  constexpr int kBlock = 4;
  static_assert(kCholTile % kBlock == 0, "pivots in blocks of four");
  // The L entries l_k of a row whose values in the block's columns are a_k (after the steps
  // before the block): l_k = (a_k - sum_{x<k} l_x L_kx) s_k, with L_kx the block's own factor.
  // Entries above the diagonal (k >= the row's offset in the block) come out meaningless and are
  // never used.
  const auto row_factors = [](const double (&a)[kBlock], const double (&block_l)[kBlock][kBlock],
                              const double (&s)[kBlock], double (&l)[kBlock]) {
#pragma unroll
    for (int k = 0; k < kBlock; ++k) {
      double v = a[k];
#pragma unroll
      for (int x = 0; x < k; ++x) v = fma(-l[x], block_l[k][x], v);
      l[k] = v * s[k];
    }
  };
#pragma unroll 1
  for (int c = 0; c < kCholTile; c += kBlock) {
    __syncthreads();  // columns c .. c + 3 hold their values after the steps before c
    // The shared values the block reads are all in columns c .. c + 3, which this block does not
    // write (it writes c + 4 .. c + 7): no load waits behind a store below.
    double lead[kBlock][kBlock], a_i[kBlock];
#pragma unroll
    for (int k = 0; k < kBlock; ++k) {
#pragma unroll
      for (int r = k; r < kBlock; ++r) lead[r][k] = d(c + r, c + k);
      a_i[k] = d(lane, c + k);
    }
    // The block's factor: s_k = 1 / L_kk and L_rk (r > k), pivots in order, each flagged.
    double block_l[kBlock][kBlock] = {}, s[kBlock];
#pragma unroll
    for (int k = 0; k < kBlock; ++k) {
      double pivot = lead[k][k];
#pragma unroll
      for (int x = 0; x < k; ++x) pivot = fma(-block_l[k][x], block_l[k][x], pivot);
      if (!(pivot > 0)) {  // also NaN: flag it, carry on with 1 so every CTA still reaches each barrier
        if (threadIdx.x == 0 && first_index + c + k < p.k) atomicCAS(p.info, 0, first_index + c + k + 1);
        pivot = 1;
      }
      s[k] = rsqrt(pivot);
#pragma unroll
      for (int r = k + 1; r < kBlock; ++r) {
        double v = lead[r][k];
#pragma unroll
        for (int x = 0; x < k; ++x) v = fma(-block_l[r][x], block_l[k][x], v);
        block_l[r][k] = v * s[k];
      }
    }
#pragma unroll
    for (int k = 0; k < kBlock; ++k)  // (s[threadIdx.x] would put s in local memory)
      if (threadIdx.x == k) pivot_inverse[c + k] = s[k];
    double l_i[kBlock];
    row_factors(a_i, block_l, s, l_i);
#pragma unroll
    for (int u = 0; u < kColumns; ++u) {
      const int m = warp + kWarps * u;
      if (m > c && m <= lane) {
        double a_m[kBlock], l_m[kBlock];
#pragma unroll
        for (int k = 0; k < kBlock; ++k) a_m[k] = d(m, c + k);
        row_factors(a_m, block_l, s, l_m);
        // Steps c .. min(c + 3, m - 1): a column inside the block takes only the steps before it.
#pragma unroll
        for (int k = 0; k < kBlock; ++k)
          if (c + k < m) entry[u] = fma(-l_i[k], l_m[k], entry[u]);
        if (m >= c + kBlock && m < c + 2 * kBlock) d(lane, m) = entry[u];  // read by the next block only
      }
    }
  }
  __syncthreads();  // the last column's readers are done
#pragma unroll
  for (int u = 0; u < kColumns; ++u) {
    const int m = warp + kWarps * u;
    double l = 0.0;
    if (m == lane) l = entry[u] > 0 ? entry[u] * pivot_inverse[m] : 1.0;  // L_mm = a_mm / sqrt(a_mm)
    else if (m < lane) l = entry[u] * pivot_inverse[m];
    d(lane, m) = l;
  }
  __syncthreads();
  if (threadIdx.x < kCholTile) {
    // Warp 0: column `lane` of the inverse by forward substitution, reading L back from shared
    // memory (one broadcast per entry). Two partial sums halve the dependent FMA chain.
    double x[kCholTile];
#pragma unroll
    for (int r = 0; r < kCholTile; ++r) {
      double s0 = r == lane ? 1.0 : 0.0, s1 = 0.0;
#pragma unroll
      for (int m = 0; m < r; ++m) {
        const double l_rm = d(r, m);
        if (m % 2 == 0) s0 = fma(-l_rm, x[m], s0);
        else s1 = fma(-l_rm, x[m], s1);
      }
      x[r] = (s0 + s1) * pivot_inverse[r];
    }
#pragma unroll
    for (int r = 0; r < kCholTile; ++r) inv(r, lane) = r < lane ? 0.0 : x[r];
  }
  __syncthreads();
}

/// Row index i and column index m (m <= i) of the t-th tile of a lower triangle, row by row.
__device__ __forceinline__ void lower_tile(int t, int& i, int& m) {
  i = int((sqrt(8.0 * t + 1.0) - 1.0) / 2.0);
  while ((i + 1) * (i + 2) / 2 <= t) ++i;
  while (i * (i + 1) / 2 > t) --i;
  m = t - i * (i + 1) / 2;
}

/// Trailing tile (i, m), j < m <= i, of work item `item` of factorisation step j.
__device__ __forceinline__ void trailing_tile(int item, int j, int& i, int& m) {
  lower_tile(item, i, m);
  i += j + 1;
  m += j + 1;
}

/// Output tile (i, m) of work item `item` of the inverse level whose diagonal blocks span `span`
/// tiles: the pair starting at tile q = (item / span^2) 2 span, i in C = [q + span, q + 2 span),
/// m in A = [q, q + span).
__device__ __forceinline__ void inverse_tile(int item, int span, int& q, int& i, int& m) {
  const int per_pair = span * span, in_pair = item % per_pair;
  q = (item / per_pair) * 2 * span;
  i = q + span + in_pair / span;
  m = q + in_pair % span;
}

/// The stride of this CTA's walk over a factorisation step's nb * count work items (item t is
/// item t / nb of matrix t % nb; the walk starts at t = blockIdx.x). The items 0, each matrix's next
/// diagonal tile, which their CTA then factors (the step's longest item), go to CTAs 0..nb-1, and
/// where the grid has CTAs to spare nothing else does: no factor waits behind trailing updates its
/// CTA took as well, and the other CTAs share those. Work and order per item are unchanged, so are
/// the bits. (Eight 768^2 matrices in one launch: 0.555 -> 0.485 ms on the H200.)
__device__ __forceinline__ int step_stride(int nb, int count) {
  const int grid = int(gridDim.x);
  if (grid <= nb || count <= 1) return grid;
  return int(blockIdx.x) < nb ? nb * count : grid - nb;
}

/// Every CTA, all threads: the lower triangle of each matrix's work <- its Gram's upper triangle,
/// transposed (identity beyond k), and W <- 0. The upper triangle of work is left alone: R fills
/// it, and with work == gram (in place) it is still being read here. Blocks of 32 x 32 pass
/// through `scratch` (32 x 33 doubles of shared memory), so that the Gram's columns are read and
/// work's columns written in whole lines (element by element, the transposed reads took 35-99k
/// cycles per launch). A block's reads (c, r) and writes (r, c), r >= c, touch the same entry only
/// on the diagonal, and there within one CTA, across a barrier.
__device__ __forceinline__ void copy_down_and_clear(const CholeskyBatch& batch, int ld, double* scratch) {
  const int nb = batch.count, blocks = ld / kCholTile;
  const int lower_blocks = blocks * (blocks + 1) / 2;
  for (int t = int(blockIdx.x); t < nb * lower_blocks; t += int(gridDim.x)) {
    const CholeskyParams& p = batch.m[t % nb];
    int bi, bj;  // block row >= block column
    lower_tile(t / nb, bi, bj);
    for (int e = int(threadIdx.x); e < kCholTile * kCholTile; e += int(blockDim.x)) {
      const int x = e % kCholTile, y = e / kCholTile;  // work(r, c), r = bi*32 + y, c = bj*32 + x
      const int r = bi * kCholTile + y, c = bj * kCholTile + x;
      scratch[y * (kCholTile + 1) + x] =
          r < c ? 0.0 : (r < p.k && c < p.k) ? p.gram[c + std::size_t(r) * p.k] : (r == c ? 1.0 : 0.0);
    }
    __syncthreads();
    for (int e = int(threadIdx.x); e < kCholTile * kCholTile; e += int(blockDim.x)) {
      const int y = e % kCholTile, x = e / kCholTile;
      const int r = bi * kCholTile + y, c = bj * kCholTile + x;
      if (r >= c) p.work[r + std::size_t(c) * ld] = scratch[y * (kCholTile + 1) + x];
    }
    __syncthreads();
  }
  const std::size_t elements = std::size_t(ld) * ld;
  for (std::size_t e = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; e < nb * elements;
       e += std::size_t(gridDim.x) * blockDim.x)
    batch.m[e / elements].w[e % elements] = 0;
}

/// CTA-wide: factor the diagonal tile held in `d` (tile row/column j) and store R_jj = L_jj^T
/// (into work, whose tile (j, j) nothing reads any more) and L_jj^{-1}.
__device__ __forceinline__ void factor_and_store(const CholeskyParams& p, int j, Tile& d, Tile& inv) {
  __shared__ double pivot_inverse[kCholTile];
  factor_tile_in_block([&](int r, int c) -> double& { return d[r][c]; },
                       [&](int r, int c) -> double& { return inv[r][c]; }, pivot_inverse, j * kCholTile, p);
  const int ld = p.tiles * kCholTile;
  store(d, p.work, ld, j, j, /*transposed=*/true);
  store(inv, p.w, ld, j, j);
}

}  // namespace chol

// One CTA per SM (176 registers before the block-wide tile factor, 238 since): capping at 128 for
// two CTAs per SM spilled and was slower, 0.354 / 0.606 ms against 0.280 / 0.431 ms at k = 512 /
// 768, and 41.7 against 40.7 ms whole model.
__global__ void __launch_bounds__(kCholThreads) cholesky_inverse_kernel(const __grid_constant__ CholeskyBatch batch) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  __shared__ chol::Tile a, b, c, inv;
  const int nb = batch.count;
  const int nt = batch.m[0].tiles, ld = nt * kCholTile;  // every matrix of a batch has the same size

  chol::copy_down_and_clear(batch, ld, &a[0][0]);
  grid.sync();
  for (int m = int(blockIdx.x); m < nb; m += int(gridDim.x)) {
    const CholeskyParams& p = batch.m[m];
    chol::Tile* dst[1] = {&c};
    chol::load<1>(dst, {chol::TileRef{p.work, 0, 0}}, ld);
    chol::factor_and_store(p, 0, c, inv);
  }
  grid.sync();

  // Work item t of a step is item t / nb of matrix t % nb: the items 0 (each matrix's next
  // diagonal tile, factored right away) go to the first CTAs, and only there (step_stride).
  for (int j = 0; j + 1 < nt; ++j) {
    const int rest = nt - j - 1, count = rest * (rest + 1) / 2;
    const int stride = chol::step_stride(nb, count);
    for (int t = int(blockIdx.x); t < nb * count; t += stride) {
      const CholeskyParams& p = batch.m[t % nb];
      const int item = t / nb;
      int i, m;
      chol::trailing_tile(item, j, i, m);
      {
        chol::Tile* dst[4] = {&a, &b, &inv, &c};
        chol::load<4>(dst, {chol::TileRef{p.work, i, j}, chol::TileRef{p.work, m, j}, chol::TileRef{p.w, j, j},
                            chol::TileRef{p.work, i, m}}, ld);
      }
      __syncthreads();
      chol::Accumulator li, lm;  // L_ij and L_mj, rows of this thread
      li.add(a, inv, /*transpose_q=*/true);
      if (m != i) lm.add(b, inv, /*transpose_q=*/true);
      __syncthreads();
      li.write(a, 1.0);
      if (m != i) lm.write(b, 1.0);
      __syncthreads();
      // Each panel tile written by exactly one CTA, as R_ji = L_ij^T into work's upper tile (j, i),
      // which nothing reads during the factorisation.
      if (m == j + 1) chol::store(a, p.work, ld, j, i, /*transposed=*/true);
      chol::Accumulator update;
      update.add(a, m != i ? b : a, /*transpose_q=*/true);
#pragma unroll
      for (int s = 0; s < 4; ++s) c[update.row()][update.col(s)] -= update.v[s];
      if (item == 0) {
        chol::factor_and_store(p, j + 1, c, inv);  // (j+1, j+1) is final: factor it for step j + 1
      } else {
        __syncthreads();
        chol::store(c, p.work, ld, i, m);
      }
      __syncthreads();
    }
    grid.sync();
  }

  // Inverse by doubling: diagonal blocks of `span` tiles are inverted; merge pairs into 2*span.
  // For the pair starting at tile q: A = [q, q+span), C = [q+span, q+2 span) (clipped to nt).
  // `work` (the trailing matrix, no longer needed) holds S = B A^{-1}.
  for (int span = 1; span < nt; span *= 2) {
    const int pairs = (nt + 2 * span - 1) / (2 * span);
    const int per_pair = span * span;  // output tiles of a full pair (clipped ones skip)
    const int items = pairs * per_pair;
    // Step 1: S = B * A^{-1}, B = L[C rows, A cols] (= R^T: read from work's upper tiles, whereas S
    // goes to its lower tiles); one output tile per work item.
    for (int t = int(blockIdx.x); t < nb * items; t += int(gridDim.x)) {
      const CholeskyParams& p = batch.m[t % nb];
      const int item = t / nb;
      int q, i, m;
      chol::inverse_tile(item, span, q, i, m);
      if (i >= nt) continue;  // block-uniform: no barrier skipped by part of a CTA
      chol::Accumulator acc;
      // A^{-1} is lower: rows x >= m contribute to column m. Tiles x + 1 are fetched while tiles x
      // are multiplied.
      const auto tiles_at = [&](int x) {
        return chol::TileRefs<2>{{chol::TileRef{p.work, x, i, /*transposed=*/true}, chol::TileRef{p.w, x, m}}};
      };
      chol::TileFetch<2> next;
      next.fetch(tiles_at(m).ref, ld);
      for (int x = m; x < q + span; ++x) {
        chol::Tile* dst[2] = {&a, &b};
        next.put(dst, tiles_at(x).ref);
        __syncthreads();
        if (x + 1 < q + span) next.fetch(tiles_at(x + 1).ref, ld);
        acc.add(a, b, /*transpose_q=*/false);
        __syncthreads();
      }
      acc.write(c, 1.0);
      __syncthreads();
      chol::store(c, p.work, ld, i, m);
      __syncthreads();
    }
    grid.sync();
    // Step 2: W[C rows, A cols] = -C^{-1} S.
    for (int t = int(blockIdx.x); t < nb * items; t += int(gridDim.x)) {
      const CholeskyParams& p = batch.m[t % nb];
      const int item = t / nb;
      int q, i, m;
      chol::inverse_tile(item, span, q, i, m);
      if (i >= nt) continue;
      chol::Accumulator acc;
      const auto tiles_at = [&](int x) {  // C^{-1} is lower: columns x <= i
        return chol::TileRefs<2>{{chol::TileRef{p.w, i, x}, chol::TileRef{p.work, x, m}}};
      };
      chol::TileFetch<2> next;
      next.fetch(tiles_at(q + span).ref, ld);
      for (int x = q + span; x <= i; ++x) {
        chol::Tile* dst[2] = {&a, &b};
        next.put(dst, tiles_at(x).ref);
        __syncthreads();
        if (x + 1 <= i) next.fetch(tiles_at(x + 1).ref, ld);
        acc.add(a, b, /*transpose_q=*/false);
        __syncthreads();
      }
      acc.write(c, -1.0);
      __syncthreads();
      chol::store(c, p.w, ld, i, m);
      __syncthreads();
    }
    grid.sync();
  }
}

}  // namespace xkv::cuda::detail
