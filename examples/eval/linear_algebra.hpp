// Similarity and spectrum measures between layers' KV caches: linear CKA, token-wise cosine
// similarity, singular values of (concatenated) caches and the rank that keeps an energy fraction.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <span>
#include <vector>

#include "xkv/kv_view.hpp"

namespace xkv::eval {

/// Token-major [tokens x width] copy of a KV view (heads side by side, as xKV concatenates them).
Eigen::MatrixXf to_matrix(const KVView<float>& view);

/// Linear CKA (Kornblith et al. 2019) between two representations of the same n tokens:
/// ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc, in fp64.
/// 1 for identical inputs; invariant to orthogonal transforms and isotropic scaling of either.
/// Throws xkv::Error when the row counts differ, n < 2, or either input is constant.
double linear_cka(const Eigen::MatrixXf& x, const Eigen::MatrixXf& y);

/// Column-centred fp64 copy of a representation and ||Xc^T Xc||_F, for many CKA pairs.
struct CenteredRepresentation {
  Eigen::MatrixXd centered;
  double self_norm = 0;
};
CenteredRepresentation center_representation(const Eigen::MatrixXf& x);
/// linear_cka on precomputed representations (same row count).
double linear_cka(const CenteredRepresentation& x, const CenteredRepresentation& y);

/// Mean over tokens of cos(x_i, y_i) (rows of equal width). Rows where either vector is zero
/// count as 0. Throws xkv::Error on shape mismatch or no rows.
double mean_token_cosine(const Eigen::MatrixXf& x, const Eigen::MatrixXf& y);

/// All singular values of x, descending (from the eigenvalues of the smaller Gram matrix, in
/// fp64), and ||x||_F^2.
struct Spectrum {
  std::vector<double> singular_values;
  double total_energy = 0;
};
Spectrum spectrum(const Eigen::MatrixXf& x);

/// Smallest r with sum_{i<r} s_i^2 >= fraction * total_energy (s descending).
int energy_rank(const Spectrum& s, double fraction);

/// [K_l1 | K_l2 | ...]: the matrices side by side (equal row counts).
Eigen::MatrixXf concat_columns(std::span<const Eigen::MatrixXf> blocks);

}  // namespace xkv::eval
