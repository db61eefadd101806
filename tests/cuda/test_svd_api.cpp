// GPU truncated SVD: agreement with the CPU xkv::Compressor, rank policies through compress_group,
// the workspace contract, and bad input.
#include <gtest/gtest.h>

#include "test_svd_util.hpp"
#include "xkv/compressor.hpp"

namespace xkv::test {
namespace {

using cuda::GpuCompressorOptions;
using cuda::GpuSvdMethod;

TEST(GpuSvdVsCpu, SameFactorisationAsTheCpuCompressor) {
  XKV_SKIP_WITHOUT_GPU();
  // A clear gap after rank r, so both sides must find the same subspace.
  const int r = 12;
  const std::int64_t n = 500;
  // A concrete matrix, not an Eigen expression over temporaries that die at the semicolon.
  const Eigen::MatrixXd x = spectrum_matrix(n, 128, 0.3, test_seed() + 20, 0.0, r) + 0.01 * spectrum_matrix(n, 128, 0.0, test_seed() + 21);
  const auto g = upload<__nv_bfloat16>(x, 2, 2, 32, Layout::TokenMajorPadded);
  const auto s = reference_singular_values(g.stored);

  // CPU: the same bf16 values, token-major.
  std::vector<std::vector<bfloat16>> host(2);
  std::vector<KVView<bfloat16>> cpu_views;
  for (int l = 0; l < 2; ++l) {
    host[l].resize(std::size_t(n) * 64);
    for (std::int64_t t = 0; t < n; ++t)
      for (int j = 0; j < 64; ++j) host[l][std::size_t(t * 64 + j)] = bfloat16(float(g.stored(t, l * 64 + j)));
    cpu_views.push_back(KVView<bfloat16>::token_major(host[l].data(), n, 2, 32));
  }
  for (const auto method : {GpuSvdMethod::Exact, GpuSvdMethod::Randomized}) {
    SCOPED_TRACE(::testing::Message() << "method " << int(method));
    CompressorOptions cpu_opt;
    cpu_opt.method = method == GpuSvdMethod::Exact ? SvdMethod::Exact : SvdMethod::Randomized;
    cpu_opt.seed = test_seed();
    const auto cpu = Compressor<bfloat16>(cpu_opt).compress_stream(cpu_views, r);
    Eigen::MatrixXd cpu_a(n, r), cpu_b(r, 128);
    for (std::int64_t t = 0; t < n; ++t)
      for (int i = 0; i < r; ++i) cpu_a(t, i) = float(cpu.a[std::size_t(t * r + i)]);
    for (int l = 0; l < 2; ++l)
      for (int i = 0; i < r; ++i)
        for (int j = 0; j < 64; ++j) cpu_b(i, l * 64 + j) = float(cpu.b_layer(l)[i * 64 + j]);

    cuda::GpuCompressorOptions opt;
    opt.method = method;
    opt.seed = test_seed();
    cuda::Compressor<__nv_bfloat16> svd(opt);
    DeviceFactors<__nv_bfloat16> f(n, 128, r);
    cuda::SvdArguments<__nv_bfloat16> args;
    args.layers = g.views;
    args.rank = r;
    args.a = f.a.get();
    args.b = f.b.get();
    args.singular_values = f.sv.get();
    args.energies = f.energies.get();
    cuda::Stream stream;
    (void)svd.compress_stream(args, stream.get());
    const auto gpu = fetch(f, n, 2, 64, r);

    const double gpu_ratio = err_over_opt(g.stored, gpu.a, gpu.b, s, r);
    const double cpu_ratio = err_over_opt(g.stored, cpu_a, cpu_b, s, r);
    EXPECT_LE(gpu_ratio, 1.01);
    EXPECT_NEAR(gpu_ratio, cpu_ratio, 1e-2);
    EXPECT_LE((gpu.a * gpu.b - cpu_a * cpu_b).norm(), 2e-2 * g.stored.norm());
    for (int i = 0; i < r; ++i) EXPECT_NEAR(gpu.sv[i], cpu.singular_values[i], 1e-2 * s(0)) << "singular value " << i;
    EXPECT_NEAR(gpu.total_energy, cpu.total_energy, 1e-5 * cpu.total_energy);
  }
}

TEST(GpuSvdGroup, RatioPolicyGivesTheCpuRanks) {
  XKV_SKIP_WITHOUT_GPU();
  const std::int64_t n = 600;
  const auto kx = spectrum_matrix(n, 256, 0.8, test_seed() + 30);
  const auto vx = spectrum_matrix(n, 256, 0.5, test_seed() + 31);
  const auto keys = upload<__half>(kx, 4, 2, 32, Layout::HeadMajor);
  const auto values = upload<__half>(vx, 4, 2, 32, Layout::HeadMajor);
  const auto policy = RankPolicy::ratio(6.0);
  const auto expected = ranks_for_shape(policy, GroupShape{n, 4, 64, 64});
  DeviceFactors<__half> kf(n, 256, expected.key_rank), vf(n, 256, expected.value_rank);
  cuda::Compressor<__half> svd;
  cuda::Stream stream;
  const auto ranks = svd.compress_group(keys.views, values.views, policy,
                                        {kf.a.get(), kf.b.get(), kf.sv.get(), kf.energies.get(), expected.key_rank},
                                        {vf.a.get(), vf.b.get(), vf.sv.get(), vf.energies.get(), expected.value_rank},
                                        stream.get());
  EXPECT_EQ(ranks.key_rank, expected.key_rank);
  EXPECT_EQ(ranks.value_rank, expected.value_rank);
  const auto k = fetch(kf, n, 4, 64, ranks.key_rank);
  const auto v = fetch(vf, n, 4, 64, ranks.value_rank);
  EXPECT_LE(err_over_opt(keys.stored, k.a, k.b, reference_singular_values(keys.stored), ranks.key_rank), 1.01);
  EXPECT_LE(err_over_opt(values.stored, v.a, v.b, reference_singular_values(values.stored), ranks.value_rank), 1.01);
}

class GpuSvdBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::device_available()) GTEST_SKIP() << "no CUDA device";
    group = upload<float>(spectrum_matrix(40, 64, 0.5, test_seed() + 40), 2, 1, 32, Layout::TokenMajorPadded);
    out = std::make_unique<DeviceFactors<float>>(40, 64, 8);
    args.layers = group.views;
    args.rank = 8;
    args.a = out->a.get();
    args.b = out->b.get();
  }
  /// Expects xkv::Error(InvalidArgument) whose message mentions `word`.
  void expect_rejected(const cuda::SvdArguments<float>& bad, const std::string& word) {
    cuda::Compressor<float> svd;
    try {
      svd.validate(bad);
      ADD_FAILURE() << "accepted; expected an error mentioning '" << word << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  }
  DeviceGroup<float> group;
  std::unique_ptr<DeviceFactors<float>> out;
  cuda::SvdArguments<float> args;
};

TEST_F(GpuSvdBadInput, RanksOutOfRange) {
  auto bad = args;
  bad.rank = 41;  // min(n, D) = 40
  expect_rejected(bad, "rank");
  bad.rank = -1;
  expect_rejected(bad, "rank");
  bad.rank = 0;
  bad.energy_fraction = 1.5;
  bad.rank_capacity = 8;
  expect_rejected(bad, "energy_fraction");
  bad.energy_fraction = 0.9;
  bad.rank_capacity = 0;
  expect_rejected(bad, "rank_capacity");
  bad = args;
  bad.rank_capacity = 4;
  expect_rejected(bad, "rank_capacity");
}

TEST_F(GpuSvdBadInput, LayersAndPointers) {
  auto bad = args;
  bad.a = nullptr;
  expect_rejected(bad, "SvdArguments.a");
  bad = args;
  bad.b = nullptr;
  expect_rejected(bad, "SvdArguments.b");
  bad = args;
  bad.layers = {};
  expect_rejected(bad, "layers");
  auto views = group.views;
  views[1].tokens = 39;
  bad = args;
  bad.layers = views;
  expect_rejected(bad, "layers[1]");
  views = group.views;
  views[0].data = nullptr;
  bad.layers = views;
  expect_rejected(bad, "layers[0]");
  views = group.views;
  views[1].head_dim = 0;
  bad.layers = views;
  expect_rejected(bad, "layers[1]");
  std::vector<KVView<float>> many(65, group.views[0]);
  bad.layers = many;
  expect_rejected(bad, "layers");
  views = group.views;
  for (auto& v : views) v.tokens = 0;
  bad.layers = views;
  bad.rank = 1;
  expect_rejected(bad, "tokens");
}

TEST_F(GpuSvdBadInput, WorkspaceTooSmallAndBadOptions) {
  cuda::Compressor<float> svd;
  const std::size_t need = svd.workspace_bytes(args);
  cuda::DeviceBuffer<char> ws(need);
  EXPECT_THROW(svd.run(args, ws.get(), need - 1, nullptr), Error);
  EXPECT_THROW(svd.run(args, nullptr, need, nullptr), Error);
  GpuCompressorOptions opt;
  opt.oversampling = -1;
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt = {};
  opt.power_iterations = -2;
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt.power_iterations = 14;  // more than the status words a run records
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt = {};
  opt.chebyshev_rounds = -1;
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt.chebyshev_rounds = 13;  // with the two plain rounds, more than the status words
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt = {};
  opt.gram_filter = static_cast<cuda::GramFilter>(7);
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt = {};
  opt.gram_precision = static_cast<cuda::GramPrecision>(5);
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  opt = {};
  opt.staging_fraction = 0;
  EXPECT_THROW(cuda::Compressor<float>{opt}, Error);
  // A proper run with the exact workspace works and leaves a clean status.
  cuda::Stream stream;
  EXPECT_NO_THROW(svd.run(args, ws.get(), need, stream.get()));
  EXPECT_NO_THROW(svd.check(stream.get()));
}

TEST_F(GpuSvdBadInput, GroupShapesMustAgree) {
  cuda::Compressor<float> svd;
  cuda::Stream stream;
  const auto values = upload<float>(spectrum_matrix(41, 64, 0.5, test_seed() + 41), 2, 1, 32, Layout::HeadMajor);
  DeviceFactors<float> vf(41, 64, 8);
  EXPECT_THROW(svd.compress_group(group.views, values.views, RankPolicy::fixed(8, 8),
                                  {out->a.get(), out->b.get(), nullptr, nullptr, 8},
                                  {vf.a.get(), vf.b.get(), nullptr, nullptr, 8}, stream.get()),
               Error);
  EXPECT_THROW(svd.compress_group(group.views, {}, RankPolicy::fixed(64, 0),
                                  {out->a.get(), out->b.get(), nullptr, nullptr, 8}, {}, stream.get()),
               Error);
}

}  // namespace
}  // namespace xkv::test
