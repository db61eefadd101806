// CPU microbenchmarks: group compression (exact vs randomized) and reconstruct + RoPE.
#include <benchmark/benchmark.h>

#include <Eigen/QR>
#include <Eigen/SVD>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "xkv/xkv.hpp"

namespace {

// A group of `layers` layers whose keys share a low-rank token subspace plus noise, with a
// power-law spectrum: the structure the method exploits.
std::vector<float> synthetic_group(std::int64_t n, int layers, int width, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int latent = std::min<std::int64_t>(n, 256);
  std::vector<float> basis(std::size_t(n) * latent), out(std::size_t(layers) * n * width);
  for (auto& v : basis) v = normal(rng);
  for (int l = 0; l < layers; ++l) {
    std::vector<float> mix(std::size_t(latent) * width);
    for (int j = 0; j < latent; ++j)
      for (int c = 0; c < width; ++c) mix[std::size_t(j) * width + c] = normal(rng) * std::pow(float(j + 1), -0.75f);
    for (std::int64_t t = 0; t < n; ++t)
      for (int c = 0; c < width; ++c) {
        float acc = 0.05f * normal(rng);
        for (int j = 0; j < latent; ++j) acc += basis[std::size_t(t) * latent + j] * mix[std::size_t(j) * width + c];
        out[(std::size_t(l) * n + t) * width + c] = acc;
      }
  }
  return out;
}

// ||X - A*B||_F over the Eckart–Young optimum sqrt(sum_{i>r} s_i^2), in fp64 (outside the timing).
double error_over_optimum(const std::vector<xkv::KVView<float>>& views, const xkv::CompressedFactor<float>& f) {
  const std::int64_t n = views[0].tokens;
  const int width = views[0].width();
  Eigen::MatrixXd x(n, std::int64_t(width) * std::int64_t(views.size()));
  for (std::size_t l = 0; l < views.size(); ++l)
    for (std::int64_t t = 0; t < n; ++t)
      for (int c = 0; c < width; ++c) x(t, std::int64_t(l) * width + c) = views[l](t, c / views[l].head_dim, c % views[l].head_dim);
  const Eigen::VectorXd s = Eigen::BDCSVD<Eigen::MatrixXd>(x).singularValues();
  const double optimum = std::sqrt(s.tail(s.size() - f.rank).squaredNorm());
  const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> a(f.a.data(), n, f.rank);
  double error = 0;
  for (std::size_t l = 0; l < views.size(); ++l) {
    const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> b(
        f.b_layer(int(l)), f.rank, width);
    const Eigen::MatrixXd approx = a.cast<double>() * b.cast<double>();
    error += (x.middleCols(std::int64_t(l) * width, width) - approx).squaredNorm();
  }
  return std::sqrt(error) / optimum;
}

// A [n x layers*width] matrix with singular values i^-0.75 and random orthonormal singular
// vectors, split into layers: the reference spectrum for the 4096 x 1152 anchor.
std::vector<float> power_law_group(std::int64_t n, int layers, int width, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const std::int64_t d = std::int64_t(layers) * width, k = std::min(n, d);
  const auto orthonormal = [&](std::int64_t rows) {
    const Eigen::MatrixXf g = Eigen::MatrixXf::NullaryExpr(rows, k, [&] { return normal(rng); });
    return Eigen::MatrixXf(Eigen::HouseholderQR<Eigen::MatrixXf>(g).householderQ() * Eigen::MatrixXf::Identity(rows, k));
  };
  Eigen::VectorXf sigma(k);
  for (std::int64_t i = 0; i < k; ++i) sigma[i] = std::pow(float(i + 1), -0.75f);
  const Eigen::MatrixXf x = orthonormal(n) * sigma.asDiagonal() * orthonormal(d).transpose();
  std::vector<float> out(std::size_t(layers) * n * width);
  for (int l = 0; l < layers; ++l)
    for (std::int64_t t = 0; t < n; ++t)
      for (int c = 0; c < width; ++c) out[(std::size_t(l) * n + t) * width + c] = x(t, std::int64_t(l) * width + c);
  return out;
}

// Args: n, layers (G), heads, head_dim, rank, method (0 exact, 1 randomized), data (0 power law,
// 1 shared-subspace layers).
void BM_CompressStream(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const int g = int(state.range(1)), heads = int(state.range(2)), dim = int(state.range(3)), rank = int(state.range(4));
  const auto method = state.range(5) == 0 ? xkv::SvdMethod::Exact : xkv::SvdMethod::Randomized;
  const int width = heads * dim;
  const std::vector<float> data =
      state.range(6) == 0 ? power_law_group(n, g, width, 1) : synthetic_group(n, g, width, 1);
  std::vector<xkv::KVView<float>> views;
  for (int l = 0; l < g; ++l)
    views.push_back(xkv::KVView<float>::token_major(data.data() + std::size_t(l) * n * width, n, heads, dim));
  xkv::CompressorOptions options;
  options.method = method;
  const xkv::Compressor<float> compressor(options);
  for (auto _ : state) {
    auto factor = compressor.compress_stream(views, rank);
    benchmark::DoNotOptimize(factor.a.data());
  }
  state.counters["err_over_opt"] = error_over_optimum(views, compressor.compress_stream(views, rank));
  state.SetLabel(method == xkv::SvdMethod::Exact ? "exact" : "randomized");
}

// Reconstruct one layer's keys with RoPE: Args n, G, heads, head_dim, rank.
void BM_ReconstructKeysRope(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const int g = int(state.range(1)), heads = int(state.range(2)), dim = int(state.range(3)), rank = int(state.range(4));
  const int width = heads * dim;
  const std::vector<float> data = synthetic_group(n, g, width, 2);
  std::vector<xkv::KVView<float>> views;
  for (int l = 0; l < g; ++l)
    views.push_back(xkv::KVView<float>::token_major(data.data() + std::size_t(l) * n * width, n, heads, dim));
  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(g, g);
  options.policy = xkv::RankPolicy::fixed(rank, rank);
  const xkv::ModelShape shape{g, heads, dim, 0};
  const auto cache = xkv::CompressedCache<float>::build(shape, options, views, views);
  std::vector<float> out(std::size_t(n) * width);
  const auto out_view = xkv::MutableKVView<float>::token_major(out.data(), n, heads, dim);
  for (auto _ : state) {
    cache.reconstruct_keys(0, xkv::TokenSelection::all(), out_view);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

}  // namespace

// The 4096 x 1152, r = 144 anchor shape (G=4, H=3, d=96 gives D=1152).
BENCHMARK(BM_CompressStream)->Args({4096, 4, 3, 96, 144, 0, 0})->Args({4096, 4, 3, 96, 144, 1, 0})->Unit(benchmark::kMillisecond);
// SmolLM2-like: G=4, H=3, d=64 (D=768), 2048 tokens.
BENCHMARK(BM_CompressStream)->Args({2048, 4, 3, 64, 96, 0, 1})->Args({2048, 4, 3, 64, 96, 1, 1})->Unit(benchmark::kMillisecond);
// Small Llama-like: G=2, H=8, d=128 (D=2048), 2048 tokens.
BENCHMARK(BM_CompressStream)->Args({2048, 2, 8, 128, 256, 0, 1})->Args({2048, 2, 8, 128, 256, 1, 1})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReconstructKeysRope)->Args({2048, 4, 3, 64, 96})->Args({2048, 2, 8, 128, 256})->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
