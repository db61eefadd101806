// Private to cuda/svd: Cholesky factor and inverse of a small SPD matrix in one cooperative
// launch (see cholesky_kernels.cuh for the algorithm and why it is not cuSOLVER's potrf + trsm).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <span>

namespace xkv::cuda::detail {

/// Device buffers of one factorisation of a k x k matrix.
struct CholeskyWorkspace {
  double* w = nullptr;     ///< padded x padded, column-major: L^{-1} (upper part zero)
  /// padded x padded, column-major: the trailing matrix while factoring; on return its upper
  /// triangle, diagonal included, holds R = L^T (G = R^T R) and its strictly lower tiles are scratch.
  double* work = nullptr;
  int padded = 0;             ///< k rounded up to the 32-wide tiles: the leading dimension of w and work
  int max_ctas = 0;           ///< 0: as many CTAs as the widest step can use (GpuCompressorOptions::cholesky_ctas)

  /// Doubles `base` must hold for side k (w and work).
  static std::size_t doubles(int k);
  static CholeskyWorkspace carve(double* base, int k);
  /// Whether the factorisation can run in place in the Gram (k a whole number of tiles, so the
  /// Gram's leading dimension k is work's).
  static bool can_factor_in_place(int k);
  /// Doubles `base` must hold for side k when the Gram is the working matrix (w only).
  static std::size_t doubles_in_place(int k);
  /// w from `base`, work = `gram` (which the factorisation overwrites); needs can_factor_in_place(k).
  static CholeskyWorkspace carve_in_place(double* base, double* gram, int k);
};

/// R = L^T (into ws.work's upper triangle) and L^{-1} (ws.w) of the SPD matrix whose upper triangle
/// `gram` holds (k x k, column-major, ld k; ws.work itself for an in-place workspace).
/// Asynchronous on `stream`. A pivot that is not positive (or NaN) makes *info the 1-based index
/// of the first such pivot (*info must be 0 before); the outputs are then meaningless.
void cholesky_inverse(const double* gram, int k, const CholeskyWorkspace& ws, int* info, cudaStream_t stream);

/// One factorisation of a batch.
struct CholeskyTask {
  const double* gram = nullptr;  ///< k x k, column-major, upper triangle read
  CholeskyWorkspace ws;
  int* info = nullptr;
};
/// Most matrices one launch factors.
inline constexpr int kMaxCholeskyBatch = 16;
/// The factorisations of up to kMaxCholeskyBatch matrices, all of side k, in one launch (one chain
/// of grid barriers); each result is bit-identical to cholesky_inverse's. The grid is capped at
/// the first task's ws.max_ctas per matrix.
void cholesky_inverse_batched(std::span<const CholeskyTask> tasks, int k, cudaStream_t stream);

}  // namespace xkv::cuda::detail
