// Truncated SVD of an fp32 matrix in the factored form xKV stores: X ~= A * B.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "xkv/compressor.hpp"

namespace xkv {

/// A * B is the rank-r approximation of X (A [n x r], B [r x D]); singular_values holds the r kept
/// singular values, descending; total_energy is ||X||_F^2.
struct SvdFactors {
  Eigen::MatrixXf a;
  Eigen::MatrixXf b;
  Eigen::VectorXf singular_values;
  double total_energy = 0;
};

/// Rank-`rank` truncated SVD of X (rank in [1, min(n, D)]), or, when rank == 0, the smallest rank
/// keeping `energy_fraction` of the energy (computed with the exact method).
///  Exact: D <= n: Gram X^T X (fp32) + SelfAdjointEigenSolver; A = X * V_r, B = V_r^T.
///         n < D:  Gram X X^T; A = U_r, B = U_r^T X.
///  Randomized: subspace iteration on X with rank + p Gaussian directions (seeded), q power
///         iterations with re-orthonormalisation; then an exact small problem.
SvdFactors truncated_svd(const Eigen::Ref<const Eigen::MatrixXf>& x, int rank, const CompressorOptions& options,
                         double energy_fraction = 1.0);

/// The method Auto resolves to for this shape and rank.
SvdMethod resolve_method(SvdMethod method, std::int64_t rows, std::int64_t cols, int rank);

}  // namespace xkv
