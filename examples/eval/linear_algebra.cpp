#include "linear_algebra.hpp"

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>

#include "xkv/error.hpp"

namespace xkv::eval {

Eigen::MatrixXf to_matrix(const KVView<float>& view) {
  view.validate("to_matrix");
  Eigen::MatrixXf m(view.tokens, view.width());
  for (std::int64_t t = 0; t < view.tokens; ++t)
    for (int h = 0; h < view.heads; ++h)
      for (int i = 0; i < view.head_dim; ++i) m(t, h * view.head_dim + i) = view(t, h, i);
  return m;
}

CenteredRepresentation center_representation(const Eigen::MatrixXf& x) {
  XKV_REQUIRE(x.rows() >= 2, "linear_cka: needs at least 2 rows, got " << x.rows());
  CenteredRepresentation r;
  r.centered = x.cast<double>();
  r.centered.rowwise() -= r.centered.colwise().mean();
  r.self_norm = (r.centered.transpose() * r.centered).norm();
  return r;
}

double linear_cka(const CenteredRepresentation& x, const CenteredRepresentation& y) {
  XKV_REQUIRE(x.centered.rows() == y.centered.rows(),
              "linear_cka: x has " << x.centered.rows() << " rows, y has " << y.centered.rows());
  XKV_REQUIRE(x.self_norm > 0 && y.self_norm > 0,
              "linear_cka: an input is constant over its rows (||Xc^T Xc|| = " << x.self_norm << ", ||Yc^T Yc|| = "
                                                                               << y.self_norm << ")");
  // Feature-space form: cheap because the widths (a few hundred) are far below n.
  const double cross = (y.centered.transpose() * x.centered).squaredNorm();
  return cross / (x.self_norm * y.self_norm);
}

double linear_cka(const Eigen::MatrixXf& x, const Eigen::MatrixXf& y) {
  XKV_REQUIRE(x.rows() == y.rows(), "linear_cka: x has " << x.rows() << " rows, y has " << y.rows());
  return linear_cka(center_representation(x), center_representation(y));
}

double mean_token_cosine(const Eigen::MatrixXf& x, const Eigen::MatrixXf& y) {
  XKV_REQUIRE(x.rows() == y.rows() && x.cols() == y.cols(),
              "mean_token_cosine: shapes differ, " << x.rows() << "x" << x.cols() << " vs " << y.rows() << "x" << y.cols());
  XKV_REQUIRE(x.rows() > 0, "mean_token_cosine: no rows");
  double sum = 0;
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const Eigen::VectorXd a = x.row(t).transpose().cast<double>();
    const Eigen::VectorXd b = y.row(t).transpose().cast<double>();
    const double norms = a.norm() * b.norm();
    if (norms > 0) sum += a.dot(b) / norms;
  }
  return sum / static_cast<double>(x.rows());
}

Spectrum spectrum(const Eigen::MatrixXf& x) {
  XKV_REQUIRE(x.rows() > 0 && x.cols() > 0, "spectrum: empty matrix " << x.rows() << "x" << x.cols());
  // The Gram matrix in fp32 (one GEMM, parallel) then fp64 eigenvalues: the energies that decide
  // 90/95/99% ranks are the large ones, which fp32 accumulation keeps to ~1e-6 relative.
  const bool tall = x.rows() >= x.cols();
  Eigen::MatrixXf gram_f = tall ? Eigen::MatrixXf(x.transpose() * x) : Eigen::MatrixXf(x * x.transpose());
  const Eigen::MatrixXd gram = gram_f.cast<double>();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(gram, Eigen::EigenvaluesOnly);
  XKV_CHECK(solver.info() == Eigen::Success, Numerical, "spectrum: eigensolver failed on a " << gram.rows() << "^2 Gram matrix");
  Spectrum s;
  const Eigen::VectorXd& ev = solver.eigenvalues();  // ascending
  s.singular_values.resize(static_cast<std::size_t>(ev.size()));
  for (Eigen::Index i = 0; i < ev.size(); ++i)
    s.singular_values[static_cast<std::size_t>(i)] = std::sqrt(std::max(0.0, ev(ev.size() - 1 - i)));
  s.total_energy = x.cast<double>().squaredNorm();
  return s;
}

int energy_rank(const Spectrum& s, double fraction) {
  XKV_REQUIRE(fraction > 0 && fraction <= 1, "energy_rank: fraction must be in (0, 1], got " << fraction);
  const double target = fraction * s.total_energy;
  double kept = 0;
  for (std::size_t i = 0; i < s.singular_values.size(); ++i) {
    kept += s.singular_values[i] * s.singular_values[i];
    // Relative slack so that fraction 1 is reached despite rounding of the eigenvalues.
    if (kept >= target * (1 - 1e-9)) return static_cast<int>(i + 1);
  }
  return static_cast<int>(s.singular_values.size());
}

Eigen::MatrixXf concat_columns(std::span<const Eigen::MatrixXf> blocks) {
  XKV_REQUIRE(!blocks.empty(), "concat_columns: no blocks");
  Eigen::Index cols = 0;
  for (const auto& b : blocks) {
    XKV_REQUIRE(b.rows() == blocks[0].rows(),
                "concat_columns: blocks have " << blocks[0].rows() << " and " << b.rows() << " rows");
    cols += b.cols();
  }
  Eigen::MatrixXf out(blocks[0].rows(), cols);
  Eigen::Index at = 0;
  for (const auto& b : blocks) {
    out.middleCols(at, b.cols()) = b;
    at += b.cols();
  }
  return out;
}

}  // namespace xkv::eval
