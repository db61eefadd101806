// Private to cuda/svd: the two D x k products of a CholeskyQR step of an fp32 basis Z, on the
// fp64 tensor cores (cholesky_qr_kernels.cuh): the Gram Z^T Z and the solve V = Z L^{-T}.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cholesky.hpp"

namespace xkv::cuda::detail {

/// Buffers besides g where basis_gram's row slices may keep their partial sums: each padded x
/// padded doubles (column-major, ld padded), overwritten. Each buffer allows one more slice
/// (up to 3): more CTAs when the Gram has few tiles. The slice count, and so the bits of the sum,
/// depends only on k, the rows, the multiprocessor count and how many buffers there are.
struct GramScratch {
  static constexpr int kMaxBuffers = 3;
  double* buffers[kMaxBuffers] = {};
  int count = 0;
  int padded = 0;

  explicit GramScratch(int padded_side) : padded(padded_side) {}
  /// A Cholesky workspace's w, and its work unless that is the Gram itself (in place).
  GramScratch(const CholeskyWorkspace& chol, const double* g) : padded(chol.padded) {
    add(chol.w);
    if (chol.work != g) add(chol.work);
  }
  void add(double* buffer) {
    if (buffer != nullptr && count < kMaxBuffers) buffers[count++] = buffer;
  }
};

/// What basis_gram does to the diagonal of the summed Gram, in the pass that sums the row slices
/// (no launch of its own but for one slice): store nonfinite_code to *nonfinite if some g_ii is NaN
/// or Inf (NaN or Inf anywhere in Z reaches the diagonal), then with `shift` add
/// max(relative * k * g_ii, floor) to each g_ii. That is the shift relative * trace taken after
/// scaling G to a unit diagonal (Jacobi scaling, under which Cholesky is invariant), for a Gram
/// Z^T Z summed in fp64 from a stored Z, whose rounding errors are relative to each pair of
/// columns: it keeps the Cholesky of a numerically semidefinite Gram alive (the scaled matrix's
/// errors are a small multiple of eps times its norm, at most k) and moves every column by the
/// same relative amount however small it is against the others. A shift relative to the whole
/// trace (shift_by_trace_kernel) swamps the small columns of a basis whose columns span many
/// orders of magnitude, as they do after the Chebyshev filter (PERFORMANCE.md, "Why, modelled").
struct GramDiagonal {
  bool shift = false;
  double relative = 0, floor = 0;
  int* nonfinite = nullptr;
  int nonfinite_code = 0;
  bool any() const { return shift || nonfinite != nullptr; }
};

/// g (k x k, column-major, ld k; upper triangle only) = Z^T Z for Z (rows x k, fp32, column-major,
/// ld rows), summed in fp64. The row slices' partial sums go to g and the buffers of `scratch` and
/// are added in a fixed order: the result is the same bits every run on one device. Asynchronous
/// on `stream`. `stages`: depth of the launch's ring of shared-memory stages (2 or 4; 0: four where
/// the device's shared memory per block holds them, 72 KB here and 104 KB for apply_inverse); the
/// bits do not depend on it. `diagonal`: see GramDiagonal.
void basis_gram(const float* z, std::int64_t rows, int k, double* g, const GramScratch& scratch,
                cudaStream_t stream, int stages = 0, const GramDiagonal& diagonal = {});

/// v (rows x k, column-major, ld rows, in Out) = Z L^{-T}, with L^{-1} from `chol` (cholesky_inverse's
/// w: lower triangular, ld chol.padded). Out is float, __half or __nv_bfloat16. `stages` as above.
template <class Out>
void apply_inverse(const float* z, std::int64_t rows, int k, const CholeskyWorkspace& chol, Out* v,
                   cudaStream_t stream, int stages = 0);

}  // namespace xkv::cuda::detail
