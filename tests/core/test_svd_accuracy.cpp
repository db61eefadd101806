// Accuracy of the truncated SVD behind Compressor: err/opt against an fp64 BDCSVD reference of the
// storage-rounded input, on power-law, flat and planted-gap spectra, tall and wide groups, every
// storage type and both methods.
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace xkv_test {
namespace {

struct GroupShapeCase {
  const char* name;
  int tokens, layers, heads, head_dim;
  std::vector<int> ranks;
};

// Tall (n >= G*D) and wide (n < G*D) groups; odd token counts; ranks 1, 7, the planted gap, mid, ~100.
std::vector<GroupShapeCase> shape_cases() {
  if (kSanitize)
    return {{"tall", 131, 2, 2, 16, {1, 7, kPlantedGapRank, 40}}, {"wide", 45, 4, 1, 24, {1, 7, kPlantedGapRank, 40}}};
  return {{"tall", 301, 2, 2, 32, {1, 7, kPlantedGapRank, 50, 100}},
          {"wide", 121, 4, 1, 40, {1, 7, kPlantedGapRank, 50, 100}}};
}

constexpr Spectrum kSpectra[] = {Spectrum::PowerHalf, Spectrum::PowerThreeQuarter, Spectrum::Flat,
                                 Spectrum::PlantedGap};

template <class T>
class SvdAccuracy : public ::testing::Test {};
TYPED_TEST_SUITE(SvdAccuracy, StorageTypes, StorageName);

template <class T>
void check_err_over_opt(xkv::SvdMethod method, double tol) {
  xkv::CompressorOptions options;
  options.method = method;
  const xkv::Compressor<T> compressor(options);
  std::uint64_t salt = 100;
  double worst = 0, worst_fp32_equivalent = 0;  // largest err/opt, and largest (err/opt) / bound * (1 + tol)
  for (const auto& shape : shape_cases()) {
    for (const Spectrum spectrum : kSpectra) {
      Rng rng(++salt);
      const int width = shape.heads * shape.head_dim;
      const MatrixXd x0 = spectrum_matrix(rng, shape.tokens, Eigen::Index(width) * shape.layers, spectrum);
      const auto buffers = split_layers<T>(x0, shape.layers, shape.heads, shape.head_dim);
      const MatrixXd x = join_layers(buffers);  // the storage-rounded input
      const Reference ref(x);
      const auto views = views_of(buffers);
      for (const int rank : shape.ranks) {
        SCOPED_TRACE(::testing::Message() << shape.name << " n=" << shape.tokens << " G*D=" << x.cols() << " "
                                          << spectrum_name(spectrum) << " rank=" << rank);
        const auto f = compressor.compress_stream(views, rank);
        ASSERT_EQ(f.rank, rank);
        const ErrOpt e = err_over_opt(f, x, ref, tol);
        EXPECT_LE(e.ratio, e.bound) << "err=" << e.err << " opt=" << e.opt;
        EXPECT_GE(e.ratio, 1.0 - 1e-6) << "error below the Eckart-Young optimum: the measure is broken";
        worst = std::max(worst, e.ratio);
        worst_fp32_equivalent = std::max(worst_fp32_equivalent, e.ratio / e.bound * (1 + tol));
      }
    }
  }
  std::printf("[xkv-test] %s method %d: worst err/opt %.5f (bound-scaled %.5f, limit %.3f)\n", xkv::scalar_name<T>(),
              int(method), worst, worst_fp32_equivalent, 1 + tol);
  ::testing::Test::RecordProperty("worst_err_over_opt", std::to_string(worst));
}

TYPED_TEST(SvdAccuracy, ExactIsWithinOnePerMilleOfOptimal) {
  check_err_over_opt<TypeParam>(xkv::SvdMethod::Exact, 1e-3);
}

TYPED_TEST(SvdAccuracy, RandomizedIsWithinFivePercentOfOptimal) {
  check_err_over_opt<TypeParam>(xkv::SvdMethod::Randomized, 0.05);
}

TYPED_TEST(SvdAccuracy, AutoIsWithinFivePercentOfOptimal) {
  check_err_over_opt<TypeParam>(xkv::SvdMethod::Auto, 0.05);
}

// Kept singular values: descending, close to the reference's, and their energy consistent.
TYPED_TEST(SvdAccuracy, SingularValuesAndEnergiesMatchReference) {
  using T = TypeParam;
  for (const auto method : {xkv::SvdMethod::Exact, xkv::SvdMethod::Randomized}) {
    xkv::CompressorOptions options;
    options.method = method;
    const xkv::Compressor<T> compressor(options);
    std::uint64_t salt = 200;
    for (const auto& shape : shape_cases()) {
      Rng rng(++salt);
      const int width = shape.heads * shape.head_dim;
      const MatrixXd x0 =
          spectrum_matrix(rng, shape.tokens, Eigen::Index(width) * shape.layers, Spectrum::PowerThreeQuarter);
      const auto buffers = split_layers<T>(x0, shape.layers, shape.heads, shape.head_dim);
      const MatrixXd x = join_layers(buffers);
      const Reference ref(x);
      const int rank = shape.ranks[2];
      SCOPED_TRACE(::testing::Message() << shape.name << " method=" << int(method) << " rank=" << rank);
      const auto f = compressor.compress_stream(views_of(buffers), rank);
      ASSERT_EQ(f.singular_values.size(), std::size_t(rank));
      const double s0 = ref.s(0);
      const double value_tol = method == xkv::SvdMethod::Exact ? 1e-3 : 2e-2;
      double kept = 0;
      for (int i = 0; i < rank; ++i) {
        if (i > 0) {
          EXPECT_GE(f.singular_values[i - 1], f.singular_values[i]) << "not descending at " << i;
        }
        EXPECT_NEAR(f.singular_values[i], ref.s(i), value_tol * s0) << "singular value " << i;
        kept += double(f.singular_values[i]) * f.singular_values[i];
      }
      EXPECT_NEAR(f.total_energy, ref.total, 1e-6 * ref.total) << "total_energy is ||X||_F^2 of the rounded input";
      EXPECT_NEAR(f.kept_energy, kept, 1e-4 * kept) << "kept_energy is the sum of the kept squared values";
      EXPECT_LE(f.kept_energy, f.total_energy);
      EXPECT_NEAR(f.kept_energy / f.total_energy, ref.energy_fraction(rank), value_tol);
    }
  }
}

// The fp32 entry point used by Compressor: the factors, the values and the energy mode.
TEST(TruncatedSvd, FloatMatrixBothShapesBothMethods) {
  Rng rng(300);
  for (const auto& [rows, cols] : {std::pair{sized(203, 83), sized(77, 31)}, std::pair{sized(41, 19), sized(150, 64)}}) {
    const MatrixXd x = round_to_storage<float>(spectrum_matrix(rng, rows, cols, Spectrum::PowerHalf));
    const Eigen::MatrixXf xf = x.cast<float>();
    const Reference ref(x);
    for (const auto method : {xkv::SvdMethod::Exact, xkv::SvdMethod::Randomized}) {
      xkv::CompressorOptions options;
      options.method = method;
      const int rank = 9;
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols << " method=" << int(method));
      const xkv::SvdFactors f = xkv::truncated_svd(xf, rank, options);
      ASSERT_EQ(f.a.rows(), rows);
      ASSERT_EQ(f.a.cols(), rank);
      ASSERT_EQ(f.b.rows(), rank);
      ASSERT_EQ(f.b.cols(), cols);
      ASSERT_EQ(f.singular_values.size(), rank);
      const double err = (x - f.a.cast<double>() * f.b.cast<double>()).norm();
      const double tol = method == xkv::SvdMethod::Exact ? 1e-3 : 0.05;
      EXPECT_LE(err / ref.optimum(rank), 1 + tol);
      EXPECT_NEAR(f.total_energy, ref.total, 1e-6 * ref.total);
    }
    // rank 0: the smallest rank keeping 90 % of the energy.
    xkv::CompressorOptions options;
    options.method = xkv::SvdMethod::Exact;
    const xkv::SvdFactors f = xkv::truncated_svd(xf, 0, options, 0.9);
    EXPECT_EQ(f.a.cols(), ref.energy_rank(0.9));
  }
}

TEST(TruncatedSvd, AutoResolvesToAConcreteMethod) {
  for (const auto& [rows, cols, rank] : {std::tuple{4096, 1152, 144}, std::tuple{64, 64, 60}, std::tuple{1, 8, 1}}) {
    const auto m = xkv::resolve_method(xkv::SvdMethod::Auto, rows, cols, rank);
    EXPECT_TRUE(m == xkv::SvdMethod::Exact || m == xkv::SvdMethod::Randomized) << rows << "x" << cols << " r=" << rank;
  }
  EXPECT_EQ(xkv::resolve_method(xkv::SvdMethod::Exact, 4096, 1152, 144), xkv::SvdMethod::Exact);
  EXPECT_EQ(xkv::resolve_method(xkv::SvdMethod::Randomized, 4096, 1152, 144), xkv::SvdMethod::Randomized);
}

}  // namespace
}  // namespace xkv_test
