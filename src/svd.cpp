// Truncated SVD on the CPU (Eigen): Gram + symmetric eigensolver, or randomized subspace iteration.
#include "xkv/svd.hpp"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "xkv/error.hpp"
#include "xkv/rank_policy.hpp"

namespace xkv {
namespace detail {

namespace {

// splitmix64 + Box–Muller: a Gaussian stream that is bit-identical on every platform and standard
// library (std::normal_distribution is implementation-defined).
class GaussianStream {
 public:
  explicit GaussianStream(std::uint64_t seed) : state_(seed) {}
  float next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double u1 = (double(next_u64() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = double(next_u64() >> 11) * 0x1.0p-53;          // [0, 1)
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 6.283185307179586 * u2;
    spare_ = static_cast<float>(radius * std::sin(angle));
    have_spare_ = true;
    return static_cast<float>(radius * std::cos(angle));
  }

 private:
  std::uint64_t next_u64() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::uint64_t state_;
  float spare_ = 0;
  bool have_spare_ = false;
};

double squared_norm_fp64(const Eigen::Ref<const Eigen::MatrixXf>& x) {
  double total = 0.0;
  for (Eigen::Index j = 0; j < x.cols(); ++j) total += x.col(j).cast<double>().squaredNorm();
  return total;
}

// Orthonormal basis of the columns of y by Householder QR: robust when y is nearly rank-deficient.
Eigen::MatrixXf householder_basis(const Eigen::MatrixXf& y) {
  Eigen::HouseholderQR<Eigen::MatrixXf> qr(y);
  return qr.householderQ() * Eigen::MatrixXf::Identity(y.rows(), y.cols());
}

// One Cholesky-QR pass: y <- y * R^-1 with R^T R = y^T y. Two GEMM-shaped products instead of a
// sequential Householder sweep. Returns false (y untouched) when y^T y is not safely positive definite.
bool cholesky_qr_pass(Eigen::MatrixXf& y) {
  const Eigen::Index k = y.cols();
  Eigen::MatrixXf gram = Eigen::MatrixXf::Zero(k, k);
  gram.selfadjointView<Eigen::Lower>().rankUpdate(y.transpose());
  const Eigen::LLT<Eigen::MatrixXf> llt(gram.selfadjointView<Eigen::Lower>());
  if (llt.info() != Eigen::Success) return false;
  const Eigen::VectorXf diag = Eigen::MatrixXf(llt.matrixL()).diagonal();
  // fp32 Cholesky-QR loses orthogonality like cond(y)^2 * eps: demand cond(y) well under 1e3.
  if (!(diag.minCoeff() > 1e-3f * diag.maxCoeff())) return false;
  Eigen::MatrixXf r_inverse = Eigen::MatrixXf::Identity(k, k);
  llt.matrixU().solveInPlace(r_inverse);
  // A plain GEMM (ignoring the zero lower triangle) runs faster here than Eigen's triangular product.
  Eigen::MatrixXf product;
  product.noalias() = y * r_inverse;
  y.swap(product);
  return true;
}

// Orthonormal basis of the columns of y: Cholesky-QR (`passes` times; two give orthogonality to
// working precision) when y is well conditioned, as it is after a re-orthonormalised subspace step;
// Householder otherwise.
Eigen::MatrixXf orthonormal_basis(Eigen::MatrixXf y, int passes) {
  for (int p = 0; p < passes; ++p)
    if (!cholesky_qr_pass(y)) return householder_basis(y);
  return y;
}

// Eigen-decomposition of a symmetric PSD matrix, largest first: columns of `vectors`, `values` >= 0.
void descending_eigen(const Eigen::MatrixXf& gram, Eigen::MatrixXf& vectors, Eigen::VectorXf& values) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXf> solver(gram);
  XKV_CHECK(solver.info() == Eigen::Success, Numerical,
            "symmetric eigensolver did not converge on a " << gram.rows() << "x" << gram.cols() << " Gram matrix");
  vectors = solver.eigenvectors().rowwise().reverse();
  values = solver.eigenvalues().reverse().cwiseMax(0.0f);
}

SvdFactors exact_svd(const Eigen::Ref<const Eigen::MatrixXf>& x, int rank, double energy_fraction, double total) {
  const Eigen::Index n = x.rows(), d = x.cols();
  SvdFactors out;
  out.total_energy = total;
  Eigen::MatrixXf vectors;
  Eigen::VectorXf eigenvalues;
  const bool token_side = n < d;  // the smaller Gram matrix
  {
    const Eigen::Index m = token_side ? n : d;
    Eigen::MatrixXf gram = Eigen::MatrixXf::Zero(m, m);
    if (token_side)
      gram.selfadjointView<Eigen::Lower>().rankUpdate(x);
    else
      gram.selfadjointView<Eigen::Lower>().rankUpdate(x.transpose());
    gram.triangularView<Eigen::StrictlyUpper>() = gram.transpose();
    descending_eigen(gram, vectors, eigenvalues);
  }
  const Eigen::VectorXf sigma = eigenvalues.cwiseSqrt();
  if (rank == 0) rank = rank_for_energy({sigma.data(), std::size_t(sigma.size())}, total, energy_fraction);
  if (token_side) {
    out.a = vectors.leftCols(rank);                           // U_r, orthonormal
    out.b.noalias() = out.a.transpose() * x;                  // U_r^T X
  } else {
    out.a.noalias() = x * vectors.leftCols(rank);             // X V_r (never X V S^-1)
    out.b = vectors.leftCols(rank).transpose();               // V_r^T
  }
  out.singular_values = sigma.head(rank);
  return out;
}

SvdFactors randomized_svd(const Eigen::Ref<const Eigen::MatrixXf>& x, int rank, const CompressorOptions& options,
                          double total) {
  const Eigen::Index n = x.rows(), d = x.cols();
  const Eigen::Index k = std::min<Eigen::Index>(rank + options.oversampling, std::min(n, d));
  Eigen::MatrixXf omega(d, k);
  GaussianStream gaussian(options.seed);
  for (Eigen::Index j = 0; j < k; ++j)
    for (Eigen::Index i = 0; i < d; ++i) omega(i, j) = gaussian.next();

  // Intermediate bases only need to be well conditioned (one Cholesky-QR pass keeps the small
  // singular directions from drowning in rounding); the final one must be orthonormal (two passes).
  const int q_steps = options.power_iterations;
  Eigen::MatrixXf q = orthonormal_basis(x * omega, q_steps == 0 ? 2 : 1);
  for (int it = 0; it < q_steps; ++it) {
    const Eigen::MatrixXf z = orthonormal_basis(x.transpose() * q, 1);
    q = orthonormal_basis(x * z, it + 1 == q_steps ? 2 : 1);
  }
  // Rayleigh–Ritz: the small k x D problem Q^T X, solved exactly through its k x k Gram matrix.
  const Eigen::MatrixXf small = q.transpose() * x;
  Eigen::MatrixXf gram = Eigen::MatrixXf::Zero(k, k);
  gram.selfadjointView<Eigen::Lower>().rankUpdate(small);
  gram.triangularView<Eigen::StrictlyUpper>() = gram.transpose();
  Eigen::MatrixXf w;
  Eigen::VectorXf eigenvalues;
  descending_eigen(gram, w, eigenvalues);

  SvdFactors out;
  out.total_energy = total;
  out.a.noalias() = q * w.leftCols(rank);                    // orthonormal n x r
  out.b.noalias() = w.leftCols(rank).transpose() * small;    // r x D
  out.singular_values = eigenvalues.head(rank).cwiseSqrt();
  return out;
}

}  // namespace
}  // namespace detail

SvdMethod resolve_method(SvdMethod method, std::int64_t rows, std::int64_t cols, int rank) {
  if (method != SvdMethod::Auto) return method;
  const std::int64_t small_side = std::min(rows, cols);
  // Subspace iteration pays off when the kept rank is a small fraction of the smaller side; near
  // full rank the Gram route is both cheaper and exact.
  return (small_side >= 256 && std::int64_t(rank) * 4 <= small_side) ? SvdMethod::Randomized : SvdMethod::Exact;
}

SvdFactors truncated_svd(const Eigen::Ref<const Eigen::MatrixXf>& x, int rank, const CompressorOptions& options,
                         double energy_fraction) {
  options.validate();
  const Eigen::Index n = x.rows(), d = x.cols();
  XKV_REQUIRE(n > 0 && d > 0, "truncated_svd needs a non-empty matrix, got " << n << "x" << d);
  XKV_REQUIRE(rank >= 0 && rank <= std::min(n, d),
              "rank " << rank << " is outside [1, min(n, D)] = [1, " << std::min(n, d) << "] for a " << n << "x" << d
                      << " matrix");
  if (rank == 0)
    XKV_REQUIRE(energy_fraction > 0.0 && energy_fraction <= 1.0,
                "energy fraction must be in (0, 1], got " << energy_fraction);
  XKV_REQUIRE(x.allFinite(), "input matrix contains NaN or Inf");
  const double total = detail::squared_norm_fp64(x);
  if (rank == 0 || resolve_method(options.method, n, d, rank) == SvdMethod::Exact)
    return detail::exact_svd(x, rank, energy_fraction, total);
  return detail::randomized_svd(x, rank, options, total);
}

}  // namespace xkv
