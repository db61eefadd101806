// GPU truncated SVD: err/opt against fp64 BDCSVD references, properties of the factors, energy
// ranks, determinism and awkward sizes. Every test skips without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "test_svd_util.hpp"

namespace xkv::test {
namespace {

using cuda::GpuCompressorOptions;
using cuda::GpuSvdMethod;

template <class T>
double exact_tolerance() {
  return std::is_same_v<T, float> ? 1.0001 : 1.001;  // 16-bit outputs add their own rounding
}
template <class T>
double property_tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 2e-2;
}

GpuCompressorOptions with_method(GpuSvdMethod method) {
  GpuCompressorOptions o;
  o.method = method;
  o.seed = test_seed();
  o.subspace_product = cuda::SubspaceProduct::Sketch;  // test_svd_gram.cpp covers the Gram product
  return o;
}

template <class T>
struct GpuRun {
  HostFactors h;
  int rank = 0;
};

template <class T>
GpuRun<T> run_gpu(const DeviceGroup<T>& g, int rank, const GpuCompressorOptions& opt, int capacity = 0,
                  double fraction = 1.0) {
  // Subspace iteration has no singular values; asking for them would switch to Randomized.
  const bool want_singular_values = opt.method != GpuSvdMethod::Subspace;
  cuda::Compressor<T> svd(opt);
  const int cap = capacity > 0 ? capacity : rank;
  DeviceFactors<T> f(g.n, g.d(), cap);
  cuda::SvdArguments<T> args;
  args.layers = g.views;
  args.rank = rank;
  args.energy_fraction = fraction;
  args.rank_capacity = capacity;
  args.a = f.a.get();
  args.b = f.b.get();
  args.singular_values = want_singular_values ? f.sv.get() : nullptr;
  args.energies = f.energies.get();
  EXPECT_EQ(svd.method_for(args), rank == 0 ? GpuSvdMethod::Exact : opt.method);
  cuda::Stream stream;
  const auto result = svd.compress_stream(args, stream.get());
  return {fetch(f, g.n, g.layers, g.width(), result.rank), result.rank};
}

bool all_finite(const HostFactors& h) { return h.a.allFinite() && h.b.allFinite(); }

template <class T>
class GpuSvd : public ::testing::Test {};
using StorageTypes = ::testing::Types<__nv_bfloat16, __half, float>;
TYPED_TEST_SUITE(GpuSvd, StorageTypes);

TYPED_TEST(GpuSvd, ExactColumnGramMatchesEckartYoung) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(300, 128, 0.8, test_seed());
  const auto g = upload<T>(x, 2, 2, 32, Layout::TokenMajorPadded);
  const int r = 20;
  const auto run = run_gpu(g, r, with_method(GpuSvdMethod::Exact));
  const auto s = reference_singular_values(g.stored);
  ASSERT_TRUE(all_finite(run.h));
  EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, r), exact_tolerance<T>());
  // Properties: B = V_r^T has orthonormal rows, A = X V_r, singular values and energies.
  const double tol = property_tolerance<T>();
  EXPECT_LE((run.h.b * run.h.b.transpose() - Eigen::MatrixXd::Identity(r, r)).norm(), tol * std::sqrt(double(r)));
  EXPECT_LE((run.h.a - g.stored * run.h.b.transpose()).norm(), tol * run.h.a.norm());
  for (int i = 0; i < r; ++i) {
    EXPECT_NEAR(run.h.sv[i], s(i), tol * s(0)) << "singular value " << i;
    if (i > 0) {
      EXPECT_LE(run.h.sv[i], run.h.sv[i - 1]);
    }
  }
  EXPECT_NEAR(run.h.total_energy, g.stored.squaredNorm(), 1e-5 * g.stored.squaredNorm());
  EXPECT_NEAR(run.h.kept_energy, s.head(r).squaredNorm(), tol * g.stored.squaredNorm());
}

TYPED_TEST(GpuSvd, ExactRowGramWhenTokensFewerThanColumns) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(90, 192, 0.6, test_seed() + 1);
  const auto g = upload<T>(x, 2, 2, 48, Layout::HeadMajor);
  const int r = 17;
  const auto run = run_gpu(g, r, with_method(GpuSvdMethod::Exact));
  const auto s = reference_singular_values(g.stored);
  ASSERT_TRUE(all_finite(run.h));
  EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, r), exact_tolerance<T>());
  const double tol = property_tolerance<T>();
  // n < D: A = U_r has orthonormal columns and B = U_r^T X.
  EXPECT_LE((run.h.a.transpose() * run.h.a - Eigen::MatrixXd::Identity(r, r)).norm(), tol * std::sqrt(double(r)));
  EXPECT_LE((run.h.b - run.h.a.transpose() * g.stored).norm(), tol * run.h.b.norm());
}

TYPED_TEST(GpuSvd, RandomizedWithinOnePercentOfOptimum) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  for (const Layout layout : {Layout::TokenMajorPadded, Layout::HeadMajor, Layout::Interleaved}) {
    const auto x = spectrum_matrix(1000, 256, 0.7, test_seed() + 2);
    const auto g = upload<T>(x, 4, 2, 32, layout);
    const int r = 40;
    const auto run = run_gpu(g, r, with_method(GpuSvdMethod::Randomized));
    const auto s = reference_singular_values(g.stored);
    ASSERT_TRUE(all_finite(run.h));
    const double ratio = err_over_opt(g.stored, run.h.a, run.h.b, s, r);
    EXPECT_LE(ratio, 1.01) << "layout " << int(layout);
    EXPECT_GE(ratio, 1.0 - 1e-6);
    const double tol = property_tolerance<T>();
    EXPECT_LE((run.h.b * run.h.b.transpose() - Eigen::MatrixXd::Identity(r, r)).norm(), tol * std::sqrt(double(r)));
    for (int i = 0; i < r; ++i) EXPECT_NEAR(run.h.sv[i], s(i), 2e-2 * s(0)) << "singular value " << i;
    EXPECT_NEAR(run.h.total_energy, g.stored.squaredNorm(), 1e-5 * g.stored.squaredNorm());
  }
}

TYPED_TEST(GpuSvd, RandomizedWithFewTokensAndLittleOversampling) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(150, 384, 1.0, test_seed() + 3);  // n < D: k capped by n
  const auto g = upload<T>(x, 3, 2, 64, Layout::HeadMajor);
  auto opt = with_method(GpuSvdMethod::Randomized);
  opt.oversampling = 8;
  opt.power_iterations = 4;
  const int r = 30;
  const auto run = run_gpu(g, r, opt);
  const auto s = reference_singular_values(g.stored);
  ASSERT_TRUE(all_finite(run.h));
  EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, r), 1.01);
}

TYPED_TEST(GpuSvd, SubspaceNearOptimumWithoutRitzProblem) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  for (const Layout layout : {Layout::TokenMajorPadded, Layout::HeadMajor, Layout::Interleaved}) {
    const auto x = spectrum_matrix(1000, 256, 0.7, test_seed() + 12);
    const auto g = upload<T>(x, 4, 2, 32, layout);
    const int r = 40;
    auto opt = with_method(GpuSvdMethod::Subspace);
    opt.power_iterations = 4;
    const auto run = run_gpu(g, r, opt);
    const auto s = reference_singular_values(g.stored);
    ASSERT_TRUE(all_finite(run.h));
    const double ratio = err_over_opt(g.stored, run.h.a, run.h.b, s, r);
    EXPECT_LE(ratio, 1.01) << "layout " << int(layout);
    EXPECT_GE(ratio, 1.0 - 1e-6);
    // B = V^T with orthonormal rows, A = X V.
    const double tol = property_tolerance<T>();
    EXPECT_LE((run.h.b * run.h.b.transpose() - Eigen::MatrixXd::Identity(r, r)).norm(), tol * std::sqrt(double(r)));
    // fp32 inputs multiply in TF32 (10-bit mantissa), so A = X V holds to ~1e-3 there.
    EXPECT_LE((run.h.a - g.stored * run.h.b.transpose()).norm(), std::max(tol, 1e-3) * run.h.a.norm());
    EXPECT_NEAR(run.h.total_energy, g.stored.squaredNorm(), 1e-5 * g.stored.squaredNorm());
    EXPECT_NEAR(run.h.kept_energy, run.h.a.squaredNorm(), 1e-2 * run.h.kept_energy);
    EXPECT_LE(run.h.kept_energy, s.head(r).squaredNorm() * (1 + 1e-2));
  }
  // Asking for singular values selects the Rayleigh-Ritz method.
  cuda::Compressor<T> svd(with_method(GpuSvdMethod::Subspace));
  cuda::SvdArguments<T> args;
  args.rank = 3;
  float sv = 0;
  args.singular_values = &sv;
  EXPECT_EQ(svd.method_for(args), GpuSvdMethod::Randomized);
}

// r a whole number of Cholesky tiles and n >= 8 r, D >= 4 r: the compact plan, where the Cholesky
// factors in place in the Gram held in the A output, and A and B each hold one row slice of the
// Gram product besides (the basis V itself lives in B). Same accuracy and properties, and the
// same bits again.
TYPED_TEST(GpuSvd, SubspaceBorrowingTheOutputs) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  for (const Layout layout : {Layout::TokenMajorPadded, Layout::HeadMajor, Layout::Interleaved}) {
    SCOPED_TRACE(::testing::Message() << "layout " << int(layout) << " seed=" << test_seed());
    const auto x = spectrum_matrix(2048, 512, 0.7, test_seed() + 13);
    const auto g = upload<T>(x, 4, 4, 32, layout);
    const int r = 64;
    auto opt = with_method(GpuSvdMethod::Subspace);
    opt.power_iterations = 4;
    const auto run = run_gpu(g, r, opt);
    const auto s = reference_singular_values(g.stored);
    ASSERT_TRUE(all_finite(run.h));
    EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, r), 1.01);
    const double tol = property_tolerance<T>();
    EXPECT_LE((run.h.b * run.h.b.transpose() - Eigen::MatrixXd::Identity(r, r)).norm(), tol * std::sqrt(double(r)));
    EXPECT_LE((run.h.a - g.stored * run.h.b.transpose()).norm(), std::max(tol, 1e-3) * run.h.a.norm());
    EXPECT_EQ(run_gpu(g, r, opt).h.raw, run.h.raw);
  }
}

TYPED_TEST(GpuSvd, SameSeedIsBitIdenticalAcrossObjects) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(700, 192, 0.7, test_seed() + 4);
  const auto g = upload<T>(x, 3, 2, 32, Layout::HeadMajor);
  for (const auto method : {GpuSvdMethod::Randomized, GpuSvdMethod::Subspace, GpuSvdMethod::Exact}) {
    const auto first = run_gpu(g, 24, with_method(method));
    const auto second = run_gpu(g, 24, with_method(method));
    EXPECT_EQ(first.h.raw, second.h.raw) << "method " << int(method);
  }
  auto other = with_method(GpuSvdMethod::Randomized);
  other.seed = test_seed() ^ 0x5555;
  const auto a = run_gpu(g, 24, with_method(GpuSvdMethod::Randomized));
  const auto b = run_gpu(g, 24, other);
  EXPECT_NE(a.h.raw, b.h.raw) << "the sketch does not depend on the seed";
}

TYPED_TEST(GpuSvd, AwkwardSizes) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  struct Case {
    std::int64_t n;
    int layers, heads, head_dim, rank;
    Layout layout;
  };
  const Case cases[] = {
      {1, 1, 3, 8, 1, Layout::TokenMajorPadded},   // one token
      {77, 3, 1, 6, 5, Layout::TokenMajorPadded},  // odd n, head_dim not a multiple of a vector
      {77, 3, 1, 6, 18, Layout::HeadMajor},        // full rank
      {129, 2, 3, 10, 13, Layout::HeadMajor},      // r not a multiple of any tile
      {33, 5, 1, 16, 33, Layout::TokenMajorPadded},  // r = n < D
  };
  for (const auto& c : cases) {
    const auto x = spectrum_matrix(c.n, std::int64_t(c.layers) * c.heads * c.head_dim, 0.5, test_seed() + 5 + c.n);
    const auto g = upload<T>(x, c.layers, c.heads, c.head_dim, c.layout, /*pad=*/3);
    const auto s = reference_singular_values(g.stored);
    for (const auto method : {GpuSvdMethod::Exact, GpuSvdMethod::Randomized, GpuSvdMethod::Subspace}) {
      SCOPED_TRACE(::testing::Message() << "n=" << c.n << " G=" << c.layers << " H=" << c.heads << " d=" << c.head_dim
                                        << " r=" << c.rank << " method=" << int(method));
      auto opt = with_method(method);
      if (method == GpuSvdMethod::Subspace) opt.power_iterations = 4;  // no oversampling to lean on
      const auto run = run_gpu(g, c.rank, opt);
      ASSERT_TRUE(all_finite(run.h));
      // Without oversampling, tiny matrices with flat spectra converge more slowly: a looser bound.
      const double bound = method == GpuSvdMethod::Exact      ? exact_tolerance<T>()
                           : method == GpuSvdMethod::Subspace ? 1.03
                                                              : 1.01;
      EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, c.rank), bound);
    }
  }
}

// Enough tokens for several staged chunks (4 MiB each, the last one partial), in separate layer
// buffers and read in place from one interleaved buffer.
TYPED_TEST(GpuSvd, SeveralChunksStagedOrInPlace) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(20001, 256, 0.7, test_seed() + 13);
  for (const Layout layout : {Layout::TokenMajorPadded, Layout::Interleaved}) {
    const auto g = upload<T>(x, 4, 2, 32, layout);
    const auto s = reference_singular_values(g.stored);
    for (const auto method : {GpuSvdMethod::Randomized, GpuSvdMethod::Subspace}) {
      SCOPED_TRACE(::testing::Message() << "layout " << int(layout) << " method " << int(method));
      auto opt = with_method(method);
      opt.power_iterations = 4;
      const auto run = run_gpu(g, 24, opt);
      ASSERT_TRUE(all_finite(run.h));
      EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, 24), 1.01);
      EXPECT_NEAR(run.h.total_energy, g.stored.squaredNorm(), 1e-5 * g.stored.squaredNorm());
    }
  }
}

TYPED_TEST(GpuSvd, EnergyRankMatchesReference) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(400, 160, 0.9, test_seed() + 6);
  const auto g = upload<T>(x, 2, 1, 80, Layout::TokenMajorPadded);
  const auto s = reference_singular_values(g.stored);
  const double fraction = 0.9;
  int expected = 0;
  for (double kept = 0; kept < fraction * s.squaredNorm(); ++expected) kept += s(expected) * s(expected);
  const auto run = run_gpu(g, 0, with_method(GpuSvdMethod::Randomized), /*capacity=*/160, fraction);
  EXPECT_NEAR(run.rank, expected, 1);
  ASSERT_TRUE(all_finite(run.h));
  EXPECT_GE(run.h.kept_energy, (fraction - 1e-3) * run.h.total_energy);
  EXPECT_LE(err_over_opt(g.stored, run.h.a, run.h.b, s, run.rank), exact_tolerance<T>());
  EXPECT_THROW(run_gpu(g, 0, with_method(GpuSvdMethod::Exact), /*capacity=*/expected - 5, fraction), Error);
}

TYPED_TEST(GpuSvd, RankDeficientInputStaysFinite) {
  XKV_SKIP_WITHOUT_GPU();
  using T = TypeParam;
  const auto x = spectrum_matrix(300, 96, 0.3, test_seed() + 7, 0.0, /*exact_rank=*/5);
  const auto g = upload<T>(x, 1, 3, 32, Layout::HeadMajor);
  for (const auto method : {GpuSvdMethod::Randomized, GpuSvdMethod::Subspace, GpuSvdMethod::Exact}) {
    const auto run = run_gpu(g, 12, with_method(method));
    ASSERT_TRUE(all_finite(run.h)) << "method " << int(method);
    EXPECT_LE((g.stored - run.h.a * run.h.b).norm(), 2e-2 * g.stored.norm()) << "method " << int(method);
  }
  // All zeros: an exact (zero) factorisation, no NaN.
  const auto zero = upload<T>(Eigen::MatrixXd::Zero(64, 96), 1, 3, 32, Layout::TokenMajorPadded);
  for (const auto method : {GpuSvdMethod::Randomized, GpuSvdMethod::Subspace, GpuSvdMethod::Exact}) {
    const auto run = run_gpu(zero, 4, with_method(method));
    ASSERT_TRUE(all_finite(run.h)) << "method " << int(method);
    EXPECT_EQ((run.h.a * run.h.b).norm(), 0.0);
  }
}

TEST(GpuSvdInput, NonFiniteInputIsReported) {
  XKV_SKIP_WITHOUT_GPU();
  auto x = spectrum_matrix(64, 64, 0.5, test_seed() + 8);
  x(10, 7) = std::numeric_limits<double>::quiet_NaN();
  const auto g = upload<float>(x, 1, 2, 32, Layout::TokenMajorPadded);
  for (const auto method : {GpuSvdMethod::Randomized, GpuSvdMethod::Subspace, GpuSvdMethod::Exact}) {
    try {
      (void)run_gpu(g, 8, with_method(method));
      ADD_FAILURE() << "no error for NaN input, method " << int(method);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
    }
  }
}

TEST(GpuSvdMemory, WorkspaceWithinHalfOfTheInput) {
  XKV_SKIP_WITHOUT_GPU();
  // workspace_bytes only plans: the (never dereferenced) data pointers just have to be non-null.
  const auto* fake = reinterpret_cast<const __nv_bfloat16*>(std::uintptr_t(1) << 20);
  for (const std::int64_t n : {32768, 131072}) {
    std::vector<KVView<__nv_bfloat16>> layers(4, KVView<__nv_bfloat16>::head_major(fake, 8, n, 128));
    cuda::SvdArguments<__nv_bfloat16> args;
    args.layers = layers;
    args.rank = 512;
    args.a = reinterpret_cast<__nv_bfloat16*>(std::uintptr_t(1) << 20);
    args.b = args.a;
    for (const auto method : {GpuSvdMethod::Randomized, GpuSvdMethod::Subspace}) {
      cuda::Compressor<__nv_bfloat16> svd(with_method(method));
      const double input = double(n) * 4096 * 2;
      const double ws = double(svd.workspace_bytes(args));
      std::printf("[svd tests] n=%lld D=4096 r=512 bf16 method %d: workspace %.1f MiB = %.1f%% of the input\n",
                  static_cast<long long>(n), int(method), ws / (1 << 20), 100.0 * ws / input);
      EXPECT_LE(ws, 0.5 * input);
    }
  }
  // Short groups (n = 4096) run on sketches, whose workspace is the D x r fp32 sketch and one
  // r x r fp64 matrix, which staged token chunks share (Y, the Gram and the basis borrow the
  // outputs): within half of the input at the widths, for layers that tile one matrix
  // (read in place) or separate ones (staged).
  for (const std::int64_t width : {288, 1024, 2048}) {  // D = 1152, 4096, 8192
    for (const bool in_place : {true, false}) {
      const std::int64_t n = 4096, d = 4 * width;
      std::vector<KVView<__nv_bfloat16>> layers;
      for (int l = 0; l < 4; ++l)
        layers.push_back(in_place ? KVView<__nv_bfloat16>{fake + l * width, n, int(width / 32), 32, d, 32}
                                  : KVView<__nv_bfloat16>::head_major(fake, int(width / 32), n, 32));
      cuda::SvdArguments<__nv_bfloat16> args;
      args.layers = layers;
      args.rank = 512;
      args.a = reinterpret_cast<__nv_bfloat16*>(std::uintptr_t(1) << 20);
      args.b = args.a;
      cuda::Compressor<__nv_bfloat16> svd(with_method(GpuSvdMethod::Subspace));
      ASSERT_FALSE(svd.gram_product_for(args));
      const double input = double(n) * double(d) * 2;
      const double ws = double(svd.workspace_bytes(args));
      std::printf("[svd tests] n=4096 D=%lld r=512 bf16 sketches %s: workspace %.2f MiB = %.1f%% of the input\n",
                  static_cast<long long>(d), in_place ? "in place" : "staged", ws / (1 << 20), 100.0 * ws / input);
      EXPECT_LE(ws, 0.5 * input) << "D=" << d << (in_place ? " in place" : " staged");
    }
  }
}

}  // namespace
}  // namespace xkv::test
