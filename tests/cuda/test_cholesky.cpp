// The one-launch Cholesky + inverse behind the GPU CholeskyQR steps (cuda/svd/cholesky.hpp):
// backward error of L L^T, accuracy of L^{-1}, padding to whole tiles, only the upper triangle
// read, and failed pivots reported. Skips without a CUDA device. Sizes whose padded side (k
// rounded up to 32) is a multiple of 64 run the 64-wide-tile kernel (33, 64, 100, 128, 320, 512,
// 576, 768), the others the 32-wide one (1, 2, 31, 32, 70, 257).
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <limits>
#include <vector>

#include "cholesky.hpp"
#include "test_svd_util.hpp"
#include "xkv/cuda/check.hpp"
#include "xkv/cuda/device.hpp"

namespace xkv::test {
namespace {

struct Factored {
  Eigen::MatrixXd l, w;
  int info = 0;
};

/// L = R^T from the upper triangle (diagonal included) of a workspace's `work` (ld x ld).
Eigen::MatrixXd factor_from_work(const double* work, int ld, int k) {
  std::vector<double> host(std::size_t(ld) * ld);
  XKV_CUDA_CHECK(cudaMemcpy(host.data(), work, host.size() * sizeof(double), cudaMemcpyDeviceToHost));
  const Eigen::Map<Eigen::MatrixXd> all(host.data(), ld, ld);
  const Eigen::MatrixXd r = all.topLeftCorner(k, k).triangularView<Eigen::Upper>();
  return r.transpose();
}

/// Uploads g as k x k column-major with its strict lower triangle poisoned (NaN), factors it on a
/// NaN-poisoned workspace (or in place in the uploaded Gram: k a multiple of 32), and downloads
/// the leading k x k parts of L (= R^T, from work's upper triangle) and L^{-1}.
Factored factor_on_device(const Eigen::MatrixXd& g, int max_ctas = 0, bool in_place = false) {
  const int k = int(g.rows());
  Eigen::MatrixXd upper_only = g;
  for (int j = 0; j < k; ++j)
    for (int i = j + 1; i < k; ++i) upper_only(i, j) = std::numeric_limits<double>::quiet_NaN();
  using cuda::detail::CholeskyWorkspace;
  cuda::DeviceBuffer<double> gram(std::size_t(k) * k),
      work(in_place ? CholeskyWorkspace::doubles_in_place(k) : CholeskyWorkspace::doubles(k));
  cuda::DeviceBuffer<int> info(1);
  // Everything on the kernel's stream: a non-blocking stream does not wait for legacy-stream
  // copies and memsets, so mixing them would race the poison against the kernel.
  cuda::Stream stream;
  XKV_CUDA_CHECK(cudaMemcpyAsync(gram.get(), upper_only.data(), gram.bytes(), cudaMemcpyHostToDevice, stream.get()));
  XKV_CUDA_CHECK(cudaMemsetAsync(work.get(), 0xff, work.bytes(), stream.get()));  // all-ones bytes: NaN doubles
  XKV_CUDA_CHECK(cudaMemsetAsync(info.get(), 0, sizeof(int), stream.get()));
  auto ws = in_place ? CholeskyWorkspace::carve_in_place(work.get(), gram.get(), k) : CholeskyWorkspace::carve(work.get(), k);
  ws.max_ctas = max_ctas;
  cuda::detail::cholesky_inverse(gram.get(), k, ws, info.get(), stream.get());
  XKV_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const int ld = ws.padded;
  std::vector<double> w(std::size_t(ld) * ld);
  XKV_CUDA_CHECK(cudaMemcpy(w.data(), ws.w, w.size() * sizeof(double), cudaMemcpyDeviceToHost));
  Factored f;
  XKV_CUDA_CHECK(cudaMemcpy(&f.info, info.get(), sizeof(int), cudaMemcpyDeviceToHost));
  const Eigen::Map<Eigen::MatrixXd> wp(w.data(), ld, ld);
  f.l = factor_from_work(ws.work, ld, k);
  f.w = wp.topLeftCorner(k, k);
  return f;
}

/// Q diag(lambda) Q^T with lambda log-spaced from 1 down to 1/condition.
Eigen::MatrixXd spd_matrix(int k, double condition, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Eigen::MatrixXd m(k, k);
  for (auto& v : m.reshaped()) v = normal(rng);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(m);
  const Eigen::MatrixXd q = qr.householderQ();
  Eigen::VectorXd lambda(k);
  for (int i = 0; i < k; ++i) lambda(i) = std::pow(condition, -double(i) / std::max(1, k - 1));
  return q * lambda.asDiagonal() * q.transpose();
}

TEST(GpuCholesky, FactorAndInverseAtAwkwardSizes) {
  XKV_SKIP_WITHOUT_GPU();
  for (const int k : {1, 2, 31, 32, 33, 64, 100, 257, 320, 576, 768}) {
    SCOPED_TRACE(::testing::Message() << "k=" << k << " seed=" << test_seed());
    const double condition = 1e6;
    const Eigen::MatrixXd g = spd_matrix(k, condition, test_seed() + std::uint64_t(k));
    const Factored f = factor_on_device(g);
    ASSERT_EQ(f.info, 0);
    ASSERT_TRUE(f.l.allFinite() && f.w.allFinite());
    EXPECT_EQ(f.w.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().norm(), 0.0);
    // Backward error of Cholesky is k * eps-sized whatever the conditioning.
    EXPECT_LE((f.l * f.l.transpose() - g).norm(), 1e-13 * k * g.norm());
    // The inverse's residual grows with cond(L) = sqrt(condition).
    const Eigen::MatrixXd eye = Eigen::MatrixXd::Identity(k, k);
    EXPECT_LE((f.w * f.l - eye).norm(), 1e-14 * k * std::sqrt(condition));
    // Against the fp64 CPU factor (unique for SPD with a positive diagonal).
    const Eigen::MatrixXd ref = g.llt().matrixL();
    EXPECT_LE((f.l - ref).norm(), 1e-12 * k * std::sqrt(condition) * ref.norm());
  }
}

// Factoring in place in the Gram (CholeskyWorkspace::carve_in_place: the sketch subspace's
// compact workspace) does the same arithmetic: bit-identical factors.
TEST(GpuCholesky, InPlaceGivesTheSameFactors) {
  XKV_SKIP_WITHOUT_GPU();
  for (const int k : {32, 64, 512}) {
    SCOPED_TRACE(::testing::Message() << "k=" << k << " seed=" << test_seed());
    const Eigen::MatrixXd g = spd_matrix(k, 1e6, test_seed() + 5 + std::uint64_t(k));
    const Factored separate = factor_on_device(g);
    const Factored in_place = factor_on_device(g, 0, /*in_place=*/true);
    ASSERT_EQ(separate.info, 0);
    ASSERT_EQ(in_place.info, 0);
    ASSERT_TRUE(in_place.l.allFinite() && in_place.w.allFinite());
    EXPECT_LE((in_place.l * in_place.l.transpose() - g).norm(), 1e-13 * k * g.norm());
    EXPECT_EQ((in_place.l - separate.l).norm(), 0.0);
    EXPECT_EQ((in_place.w - separate.w).norm(), 0.0);
  }
  // Only a whole number of tiles can share the Gram's leading dimension.
  EXPECT_FALSE(cuda::detail::CholeskyWorkspace::can_factor_in_place(33));
  EXPECT_THROW((void)cuda::detail::CholeskyWorkspace::carve_in_place(nullptr, nullptr, 33), Error);
}

// A capped grid (GpuCompressorOptions::cholesky_ctas) walks the same tiles in the same order,
// fewer at a time: bit-identical factors.
TEST(GpuCholesky, CappedGridGivesTheSameFactors) {
  XKV_SKIP_WITHOUT_GPU();
  for (const int k : {33, 257, 576}) {
    SCOPED_TRACE(::testing::Message() << "k=" << k << " seed=" << test_seed());
    const Eigen::MatrixXd g = spd_matrix(k, 1e6, test_seed() + 3 + std::uint64_t(k));
    const Factored full = factor_on_device(g);
    ASSERT_EQ(full.info, 0);
    for (const int ctas : {1, 3, 16}) {
      const Factored capped = factor_on_device(g, ctas);
      ASSERT_EQ(capped.info, 0) << "ctas=" << ctas;
      EXPECT_EQ((capped.l - full.l).norm(), 0.0) << "ctas=" << ctas;
      EXPECT_EQ((capped.w - full.w).norm(), 0.0) << "ctas=" << ctas;
    }
  }
}

// One launch for several matrices of one size (the lockstep rounds of several groups): every
// factor and inverse bit-identical to the matrix's own launch, and a failed pivot reported for
// its own matrix only.
TEST(GpuCholesky, BatchedLaunchGivesEachMatrixItsOwnFactors) {
  XKV_SKIP_WITHOUT_GPU();
  for (const int k : {33, 257, 320}) {
    SCOPED_TRACE(::testing::Message() << "k=" << k << " seed=" << test_seed());
    const int count = 5;
    std::vector<Eigen::MatrixXd> grams;
    for (int m = 0; m < count; ++m) grams.push_back(spd_matrix(k, m == 3 ? 1e9 : 1e5, test_seed() + 70 + std::uint64_t(k + m)));
    grams[2](k / 2, k / 2) = -1.0;  // not positive definite: its pivot fails
    std::vector<Factored> alone;
    for (const auto& g : grams) alone.push_back(factor_on_device(g));
    std::vector<cuda::DeviceBuffer<double>> gram, work;
    cuda::DeviceBuffer<int> info(count);
    cuda::Stream stream;
    std::vector<cuda::detail::CholeskyTask> tasks;
    for (int m = 0; m < count; ++m) {
      gram.emplace_back(std::size_t(k) * k);
      work.emplace_back(cuda::detail::CholeskyWorkspace::doubles(k));
      XKV_CUDA_CHECK(cudaMemcpyAsync(gram.back().get(), grams[std::size_t(m)].data(), gram.back().bytes(),
                                     cudaMemcpyHostToDevice, stream.get()));
      XKV_CUDA_CHECK(cudaMemsetAsync(work.back().get(), 0xff, work.back().bytes(), stream.get()));
      tasks.push_back({gram.back().get(), cuda::detail::CholeskyWorkspace::carve(work.back().get(), k), info.get() + m});
    }
    XKV_CUDA_CHECK(cudaMemsetAsync(info.get(), 0, count * sizeof(int), stream.get()));
    cuda::detail::cholesky_inverse_batched(tasks, k, stream.get());
    stream.synchronize();
    std::vector<int> infos(count);
    XKV_CUDA_CHECK(cudaMemcpy(infos.data(), info.get(), count * sizeof(int), cudaMemcpyDeviceToHost));
    for (int m = 0; m < count; ++m) {
      SCOPED_TRACE(::testing::Message() << "matrix " << m);
      EXPECT_EQ(infos[std::size_t(m)], alone[std::size_t(m)].info);
      EXPECT_EQ(infos[std::size_t(m)] != 0, m == 2);
      const int ld = tasks[std::size_t(m)].ws.padded;
      std::vector<double> w(std::size_t(ld) * ld);
      XKV_CUDA_CHECK(cudaMemcpy(w.data(), tasks[std::size_t(m)].ws.w, w.size() * sizeof(double), cudaMemcpyDeviceToHost));
      if (m == 2) continue;  // a failed factorisation's output is meaningless
      const Eigen::Map<Eigen::MatrixXd> wp(w.data(), ld, ld);
      EXPECT_EQ((factor_from_work(tasks[std::size_t(m)].ws.work, ld, k) - alone[std::size_t(m)].l).norm(), 0.0);
      EXPECT_EQ((wp.topLeftCorner(k, k) - alone[std::size_t(m)].w).norm(), 0.0);
    }
  }
}

TEST(GpuCholesky, PivotFailuresAreReported) {
  XKV_SKIP_WITHOUT_GPU();
  Eigen::MatrixXd g = spd_matrix(70, 10.0, test_seed() + 1);
  g(40, 40) = -1.0;  // not positive definite from pivot 41 on (or earlier)
  Factored f = factor_on_device(g);
  EXPECT_GT(f.info, 0);
  EXPECT_LE(f.info, 41);
  g = spd_matrix(70, 10.0, test_seed() + 2);
  g(5, 9) = g(9, 5) = std::numeric_limits<double>::quiet_NaN();
  f = factor_on_device(g);
  EXPECT_GT(f.info, 0) << "NaN must be reported as a failed pivot";
  EXPECT_LE(f.info, 10);
  // The wide tiles factor a diagonal tile in two halves: a failure in the second half of the
  // second tile, and a NaN in the first.
  g = spd_matrix(128, 10.0, test_seed() + 3);
  g(100, 100) = -1.0;
  f = factor_on_device(g);
  EXPECT_GT(f.info, 0);
  EXPECT_LE(f.info, 101);
  g = spd_matrix(128, 10.0, test_seed() + 4);
  g(5, 9) = g(9, 5) = std::numeric_limits<double>::quiet_NaN();
  f = factor_on_device(g);
  EXPECT_GT(f.info, 0) << "NaN must be reported as a failed pivot";
  EXPECT_LE(f.info, 10);
}

}  // namespace
}  // namespace xkv::test
