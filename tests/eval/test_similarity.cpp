#include <gtest/gtest.h>

#include <Eigen/QR>
#include <Eigen/SVD>

#include "eval_test_util.hpp"
#include "linear_algebra.hpp"
#include "xkv/error.hpp"

namespace xkv::eval {
namespace {
using testing::gaussian;

Eigen::MatrixXf random_orthogonal(Eigen::Index n, std::uint64_t salt) {
  Eigen::HouseholderQR<Eigen::MatrixXf> qr(gaussian(n, n, salt));
  return qr.householderQ();
}

TEST(LinearCka, IdenticalMatricesGiveOne) {
  const Eigen::MatrixXf x = gaussian(300, 24, 1);
  EXPECT_NEAR(linear_cka(x, x), 1.0, 1e-9);
}

TEST(LinearCka, InvariantToOrthogonalTransformAndIsotropicScaling) {
  // y = x Q * 7.5 (+ a constant row offset, removed by centring): CKA(x, y) = 1, and CKA of a third
  // representation against x and against y agrees.
  const Eigen::MatrixXf x = gaussian(257, 20, 2);
  const Eigen::MatrixXf q = random_orthogonal(20, 3);
  Eigen::MatrixXf y = (x * q) * 7.5f;
  y.rowwise() += Eigen::RowVectorXf::Constant(20, 3.0f);
  EXPECT_NEAR(linear_cka(x, y), 1.0, 1e-5);
  const Eigen::MatrixXf z = x.leftCols(10) + 0.5f * gaussian(257, 10, 4);
  EXPECT_NEAR(linear_cka(z, x), linear_cka(z, y), 1e-5);
  EXPECT_NEAR(linear_cka(x, z), linear_cka(z, x), 1e-12);  // symmetric
}

TEST(LinearCka, IndependentRandomIsNearZero) {
  // For independent Gaussian n x p and n x q inputs E[CKA] is about sqrt(p q) / n.
  const Eigen::MatrixXf x = gaussian(4000, 8, 5);
  const Eigen::MatrixXf y = gaussian(4000, 8, 6);
  const double cka = linear_cka(x, y);
  EXPECT_GE(cka, 0.0);
  EXPECT_LT(cka, 0.02);
}

TEST(LinearCka, PartialOverlapIsBetween) {
  const Eigen::MatrixXf x = gaussian(1000, 16, 7);
  Eigen::MatrixXf y = gaussian(1000, 16, 8);
  y.leftCols(8) = x.leftCols(8);
  const double cka = linear_cka(x, y);
  EXPECT_GT(cka, 0.3);
  EXPECT_LT(cka, 0.7);
}

TEST(LinearCka, RejectsMismatchedAndConstantInputs) {
  EXPECT_THROW((void)linear_cka(gaussian(10, 3, 9), gaussian(11, 3, 10)), xkv::Error);
  EXPECT_THROW((void)linear_cka(gaussian(1, 3, 9), gaussian(1, 3, 10)), xkv::Error);
  const Eigen::MatrixXf constant = Eigen::MatrixXf::Ones(10, 3);
  EXPECT_THROW((void)linear_cka(constant, gaussian(10, 3, 11)), xkv::Error);
}

TEST(MeanTokenCosine, KnownValues) {
  const Eigen::MatrixXf x = gaussian(50, 12, 12);
  EXPECT_NEAR(mean_token_cosine(x, x), 1.0, 1e-6);
  EXPECT_NEAR(mean_token_cosine(x, -x), -1.0, 1e-6);
  // Per-row positive scaling changes nothing.
  Eigen::MatrixXf scaled = x;
  for (Eigen::Index r = 0; r < x.rows(); ++r) scaled.row(r) *= float(r + 1);
  EXPECT_NEAR(mean_token_cosine(x, scaled), 1.0, 1e-6);
  // Orthogonal rows -> 0; a zero row counts as 0.
  Eigen::MatrixXf a(2, 2), b(2, 2);
  a << 1, 0, 3, 4;
  b << 0, 5, 0, 0;
  EXPECT_NEAR(mean_token_cosine(a, b), 0.0, 1e-12);
  Eigen::MatrixXf c(2, 2);
  c << 2, 0, 3, 4;
  EXPECT_NEAR(mean_token_cosine(a, c), 1.0, 1e-7);
  EXPECT_THROW((void)mean_token_cosine(a, gaussian(3, 2, 13)), xkv::Error);
}

TEST(MeanTokenCosine, HighCkaCanCoexistWithLowCosine) {
  // The paper's point: a rotation of the feature space keeps CKA at 1 but destroys token-wise cosine.
  const Eigen::MatrixXf x = gaussian(2000, 32, 14);
  const Eigen::MatrixXf y = x * random_orthogonal(32, 15);
  EXPECT_NEAR(linear_cka(x, y), 1.0, 1e-5);
  EXPECT_LT(std::abs(mean_token_cosine(x, y)), 0.5);
}

TEST(Spectrum, MatchesJacobiSvdAndEnergyRanks) {
  for (const auto& [rows, cols] : {std::pair{40, 7}, std::pair{7, 40}, std::pair{1, 5}, std::pair{33, 33}}) {
    const Eigen::MatrixXf x = gaussian(rows, cols, 16 + rows);
    const Spectrum s = spectrum(x);
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(x.cast<double>());
    const Eigen::VectorXd ref = svd.singularValues();
    ASSERT_GE(s.singular_values.size(), std::size_t(ref.size()));
    for (Eigen::Index i = 0; i < ref.size(); ++i)
      EXPECT_NEAR(s.singular_values[i], ref(i), 1e-4 * ref(0)) << rows << "x" << cols << " index " << i;
    EXPECT_NEAR(s.total_energy, ref.squaredNorm(), 1e-6 * s.total_energy);
  }
  Spectrum known;
  known.singular_values = {3, 2, 1, 0};  // energies 9, 4, 1: total 14
  known.total_energy = 14;
  EXPECT_EQ(energy_rank(known, 9.0 / 14), 1);
  EXPECT_EQ(energy_rank(known, 0.9), 2);  // 13/14 = 0.93
  EXPECT_EQ(energy_rank(known, 0.95), 3);
  EXPECT_EQ(energy_rank(known, 1.0), 3);
  EXPECT_THROW((void)energy_rank(known, 0.0), xkv::Error);
}

TEST(ConcatColumns, SideBySide) {
  const Eigen::MatrixXf a = gaussian(5, 2, 30), b = gaussian(5, 3, 31);
  const std::vector<Eigen::MatrixXf> blocks = {a, b};
  const Eigen::MatrixXf c = concat_columns(blocks);
  ASSERT_EQ(c.cols(), 5);
  EXPECT_EQ(c.leftCols(2), a);
  EXPECT_EQ(c.rightCols(3), b);
  const std::vector<Eigen::MatrixXf> bad = {a, gaussian(4, 2, 32)};
  EXPECT_THROW((void)concat_columns(bad), xkv::Error);
}

}  // namespace
}  // namespace xkv::eval
