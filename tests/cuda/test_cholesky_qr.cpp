// The fp64 tensor-core products of a GPU CholeskyQR step (cuda/svd/cholesky_qr.hpp), straight
// from an fp32 basis Z: the Gram Z^T Z (row slices summed in a fixed order) and V = Z L^{-T}
// against fp64 CPU references at awkward sizes, poisoned outputs, upper triangle only, the same
// bits run to run and with rings of two or four shared-memory stages, bad arguments named. Skips without a
// CUDA device.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cholesky.hpp"
#include "cholesky_qr.hpp"
#include "test_svd_util.hpp"
#include "xkv/cuda/check.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/error.hpp"

namespace xkv::test {
namespace {

/// rows x k fp32 values (column-major) with columns of very different scales, as a power-iterated
/// basis has.
std::vector<float> basis_values(std::int64_t rows, int k, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> z(std::size_t(rows) * k);
  for (int j = 0; j < k; ++j)
    for (std::int64_t i = 0; i < rows; ++i) z[std::size_t(i + j * rows)] = normal(rng) * std::pow(10.0f, -3.0f * j / k);
  return z;
}

Eigen::MatrixXd as_matrix(const std::vector<float>& z, std::int64_t rows, int k) {
  return Eigen::Map<const Eigen::MatrixXf>(z.data(), rows, k).cast<double>();
}

struct Sizes {
  std::int64_t rows;
  int k;
};
// Rows a multiple of 4 take the 16-byte copies (k = 77: a pair of L^{-1} columns cut at k), others 4-byte ones.
const Sizes kSizes[] = {{1, 1}, {33, 24}, {65, 100}, {1100, 100}, {777, 130}, {4096, 130}, {1024, 77}, {2048, 512}};

/// g = Z^T Z on the device with `buffers` scratch buffers for the row slices (0-3): g and the
/// scratch poisoned with NaN first.
/// With `diagonal`, its flag (if asked for: `flag`, 0 before) lives on the device and comes back in *flag.
std::vector<double> gram_on_device(const std::vector<float>& z, std::int64_t rows, int k, int stages = 0,
                                   int buffers = cuda::detail::GramScratch::kMaxBuffers,
                                   cuda::detail::GramDiagonal diagonal = {}, int* flag = nullptr) {
  const int padded = (k + 31) / 32 * 32;
  cuda::DeviceBuffer<float> dz(z.size());
  cuda::DeviceBuffer<double> g(std::size_t(k) * k), scratch(std::size_t(3) * padded * padded);
  cuda::DeviceBuffer<int> device_flag(1);
  cuda::Stream stream;
  XKV_CUDA_CHECK(cudaMemcpyAsync(dz.get(), z.data(), dz.bytes(), cudaMemcpyHostToDevice, stream.get()));
  XKV_CUDA_CHECK(cudaMemsetAsync(g.get(), 0xff, g.bytes(), stream.get()));  // all-ones bytes: NaN doubles
  XKV_CUDA_CHECK(cudaMemsetAsync(scratch.get(), 0xff, scratch.bytes(), stream.get()));
  XKV_CUDA_CHECK(cudaMemsetAsync(device_flag.get(), 0, sizeof(int), stream.get()));
  if (flag != nullptr) diagonal.nonfinite = device_flag.get();
  cuda::detail::GramScratch slices(padded);
  for (int b = 0; b < buffers; ++b) slices.add(scratch.get() + std::size_t(b) * padded * padded);
  cuda::detail::basis_gram(dz.get(), rows, k, g.get(), slices, stream.get(), stages, diagonal);
  stream.synchronize();
  std::vector<double> out(g.size());
  XKV_CUDA_CHECK(cudaMemcpy(out.data(), g.get(), g.bytes(), cudaMemcpyDeviceToHost));
  if (flag != nullptr) XKV_CUDA_CHECK(cudaMemcpy(flag, device_flag.get(), sizeof(int), cudaMemcpyDeviceToHost));
  return out;
}

TEST(GpuCholeskyQr, GramOfAnFp32BasisMatchesFp64) {
  XKV_SKIP_WITHOUT_GPU();
  for (const Sizes s : kSizes) {
    SCOPED_TRACE(::testing::Message() << "rows=" << s.rows << " k=" << s.k << " seed=" << test_seed());
    const std::vector<float> z = basis_values(s.rows, s.k, test_seed() + std::uint64_t(s.rows * 7 + s.k));
    const Eigen::MatrixXd zm = as_matrix(z, s.rows, s.k);
    const Eigen::MatrixXd ref = zm.transpose() * zm;  // products of floats are exact in fp64
    const std::vector<double> g = gram_on_device(z, s.rows, s.k);
    // Fewer scratch buffers, fewer row slices (down to one): other sums, the same accuracy.
    for (int buffers = 0; buffers <= cuda::detail::GramScratch::kMaxBuffers; ++buffers) {
      const std::vector<double> gb =
          buffers == cuda::detail::GramScratch::kMaxBuffers ? g : gram_on_device(z, s.rows, s.k, 0, buffers);
      const Eigen::Map<const Eigen::MatrixXd> gm(gb.data(), s.k, s.k);
      double err = 0;
      bool lower_untouched = true;
      for (int j = 0; j < s.k; ++j)
        for (int i = 0; i < s.k; ++i) {
          if (i <= j) err = std::max(err, std::abs(gm(i, j) - ref(i, j)) / std::sqrt(ref(i, i) * ref(j, j)));
          else lower_untouched = lower_untouched && std::isnan(gm(i, j));
        }
      // fp64 sums of exact products: rows * eps relative to the Cauchy-Schwarz bound of each entry.
      EXPECT_LE(err, 1e-16 * double(s.rows) + 1e-15) << "scratch buffers " << buffers;
      EXPECT_TRUE(lower_untouched) << "only the upper triangle is written; scratch buffers " << buffers;
    }
    // Fixed tiles and a fixed order for the row slices' partial sums: the same bits again, and
    // with a ring of two shared-memory stages (devices with less shared memory) as with four.
    for (const int stages : {4, 2}) {
      const std::vector<double> again = gram_on_device(z, s.rows, s.k, stages);
      for (int j = 0; j < s.k; ++j)
        for (int i = 0; i <= j; ++i)
          ASSERT_EQ(again[std::size_t(i + j * s.k)], g[std::size_t(i + j * s.k)])
              << "entry " << i << ", " << j << ", stages=" << stages;
    }
  }
}

// The CholeskyQR step's diagonal work rides on the pass that sums the row slices (or, with one
// slice, a pass over the diagonal alone): the per-column shift lands on the same sums, bit for bit
// g_ii + max(rel k g_ii, floor), the rest of the triangle is untouched, and NaN or Inf
// anywhere in Z raises the flag, whatever the slice count.
TEST(GpuCholeskyQr, GramDiagonalShiftsEachColumnAndFlagsNonFinite) {
  XKV_SKIP_WITHOUT_GPU();
  cuda::detail::GramDiagonal diagonal;
  diagonal.shift = true;
  diagonal.relative = 1e-12;
  diagonal.floor = 1e-200;
  diagonal.nonfinite_code = -1000;
  for (const Sizes s : {Sizes{1, 1}, Sizes{65, 100}, Sizes{1100, 100}, Sizes{2048, 512}}) {
    for (const int buffers : {0, cuda::detail::GramScratch::kMaxBuffers}) {
      SCOPED_TRACE(::testing::Message() << "rows=" << s.rows << " k=" << s.k << " buffers=" << buffers
                                        << " seed=" << test_seed());
      std::vector<float> z = basis_values(s.rows, s.k, test_seed() + 41 + std::uint64_t(s.rows + s.k));
      const std::vector<double> plain = gram_on_device(z, s.rows, s.k, 0, buffers);
      int flag = 0;
      const std::vector<double> shifted = gram_on_device(z, s.rows, s.k, 0, buffers, diagonal, &flag);
      EXPECT_EQ(flag, 0);
      for (int j = 0; j < s.k; ++j)
        for (int i = 0; i <= j; ++i) {
          const double g = plain[std::size_t(i + j * s.k)];
          const double want = i == j ? g + std::fmax(diagonal.relative * s.k * g, diagonal.floor) : g;
          ASSERT_EQ(shifted[std::size_t(i + j * s.k)], want) << "entry " << i << ", " << j;
          if (i == j) {
            ASSERT_NE(shifted[std::size_t(i + j * s.k)], g) << "the diagonal moved at " << i;
          }
        }
      for (const float bad : {std::nanf(""), INFINITY}) {
        std::vector<float> poisoned = z;
        poisoned[poisoned.size() / 2] = bad;
        int raised = 0;
        cuda::detail::GramDiagonal flag_only;
        flag_only.nonfinite_code = -1000;
        (void)gram_on_device(poisoned, s.rows, s.k, 0, buffers, flag_only, &raised);
        EXPECT_EQ(raised, -1000) << "value " << bad;
      }
    }
  }
}

template <class Out>
void check_apply(const Sizes s, double tolerance, int stages) {
  SCOPED_TRACE(::testing::Message() << "rows=" << s.rows << " k=" << s.k << " out bytes=" << sizeof(Out)
                                    << " stages=" << stages << " seed=" << test_seed());
  const std::vector<float> z = basis_values(s.rows, s.k, test_seed() + 11 + std::uint64_t(s.rows * 5 + s.k));
  // L^{-1} from the Cholesky kernel of an SPD matrix: lower triangular, identity padding beyond k.
  std::mt19937_64 rng(test_seed() + 3 + std::uint64_t(s.k));
  std::normal_distribution<double> normal;
  Eigen::MatrixXd m(s.k, s.k);
  for (auto& v : m.reshaped()) v = normal(rng);
  const Eigen::MatrixXd spd = m * m.transpose() + double(s.k) * Eigen::MatrixXd::Identity(s.k, s.k);
  cuda::Stream stream;
  cuda::DeviceBuffer<double> gram(std::size_t(s.k) * s.k), chol_buffer(cuda::detail::CholeskyWorkspace::doubles(s.k));
  cuda::DeviceBuffer<int> info(1);
  const auto chol = cuda::detail::CholeskyWorkspace::carve(chol_buffer.get(), s.k);
  XKV_CUDA_CHECK(cudaMemcpyAsync(gram.get(), spd.data(), gram.bytes(), cudaMemcpyHostToDevice, stream.get()));
  XKV_CUDA_CHECK(cudaMemsetAsync(info.get(), 0, sizeof(int), stream.get()));
  cuda::detail::cholesky_inverse(gram.get(), s.k, chol, info.get(), stream.get());
  cuda::DeviceBuffer<float> dz(z.size());
  cuda::DeviceBuffer<Out> v(z.size());
  XKV_CUDA_CHECK(cudaMemcpyAsync(dz.get(), z.data(), dz.bytes(), cudaMemcpyHostToDevice, stream.get()));
  XKV_CUDA_CHECK(cudaMemsetAsync(v.get(), 0xff, v.bytes(), stream.get()));  // NaN in every storage type
  cuda::detail::apply_inverse(dz.get(), s.rows, s.k, chol, v.get(), stream.get(), stages);
  stream.synchronize();
  int status = -1;
  XKV_CUDA_CHECK(cudaMemcpy(&status, info.get(), sizeof(int), cudaMemcpyDeviceToHost));
  ASSERT_EQ(status, 0);
  std::vector<double> w(std::size_t(chol.padded) * chol.padded);
  XKV_CUDA_CHECK(cudaMemcpy(w.data(), chol.w, w.size() * sizeof(double), cudaMemcpyDeviceToHost));
  const Eigen::MatrixXd wk = Eigen::Map<const Eigen::MatrixXd>(w.data(), chol.padded, chol.padded).topLeftCorner(s.k, s.k);
  const Eigen::MatrixXd ref = as_matrix(z, s.rows, s.k) * wk.transpose();
  std::vector<Out> got(v.size());
  XKV_CUDA_CHECK(cudaMemcpy(got.data(), v.get(), v.bytes(), cudaMemcpyDeviceToHost));
  Eigen::MatrixXd gm(s.rows, s.k);
  for (std::size_t i = 0; i < got.size(); ++i) gm.reshaped()(Eigen::Index(i)) = double(to_float(got[i]));
  ASSERT_TRUE(gm.allFinite()) << "an output entry was not written";
  EXPECT_LE((gm - ref).norm(), tolerance * ref.norm());
}

TEST(GpuCholeskyQr, ApplyInverseMatchesFp64) {
  XKV_SKIP_WITHOUT_GPU();
  for (const Sizes s : kSizes)
    for (const int stages : {4, 2}) {
      check_apply<float>(s, 1e-6, stages);
      check_apply<__half>(s, 1e-3, stages);
      check_apply<__nv_bfloat16>(s, 1e-2, stages);
    }
}

TEST(GpuCholeskyQr, BadArgumentsAreNamed) {
  XKV_SKIP_WITHOUT_GPU();
  cuda::DeviceBuffer<float> z(64);
  cuda::DeviceBuffer<double> g(64), scratch(cuda::detail::CholeskyWorkspace::doubles(8));
  const auto ws = cuda::detail::CholeskyWorkspace::carve(scratch.get(), 8);
  const cuda::detail::GramScratch slices(ws, g.get());
  const auto message = [&](auto&& call) {
    try {
      call();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { cuda::detail::basis_gram(z.get(), 8, 8, g.get(), slices, nullptr, 3); }).find("stages=3"),
            std::string::npos);
  EXPECT_NE(message([&] { cuda::detail::apply_inverse(z.get(), 8, 8, ws, z.get(), nullptr, 1); }).find("stages=1"),
            std::string::npos);
  EXPECT_NE(message([&] { cuda::detail::basis_gram(z.get(), 8, 33, g.get(), slices, nullptr); }).find("k=33"),
            std::string::npos);
  EXPECT_NE(message([&] { cuda::detail::apply_inverse(z.get(), 0, 8, ws, z.get(), nullptr); }).find("rows=0"),
            std::string::npos);
}

}  // namespace
}  // namespace xkv::test
