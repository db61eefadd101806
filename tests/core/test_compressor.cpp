// Compressor properties: per-layer reconstruction, monotone error in the rank, full rank, awkward
// sizes, byte accounting, determinism, and the cross-layer benefit the method exists for.
#include <gtest/gtest.h>

#include <cstring>

#include "test_util.hpp"

namespace xkv_test {
namespace {

template <class T>
class CompressorProperties : public ::testing::Test {};
TYPED_TEST_SUITE(CompressorProperties, StorageTypes, StorageName);

constexpr xkv::SvdMethod kMethods[] = {xkv::SvdMethod::Exact, xkv::SvdMethod::Randomized};

// The full rank min(n, G*D) reproduces every layer to storage precision, tall and wide.
TYPED_TEST(CompressorProperties, FullRankReproducesEachLayer) {
  using T = TypeParam;
  Rng rng(400);
  struct Case {
    int tokens, layers, heads, head_dim;
  };
  for (const Case c : {Case{53, 3, 2, 8}, Case{19, 2, 3, 8}, Case{1, 2, 1, 16}, Case{2, 1, 1, 5}}) {
    const int width = c.heads * c.head_dim;
    const MatrixXd x0 = spectrum_matrix(rng, c.tokens, Eigen::Index(width) * c.layers, Spectrum::PowerHalf);
    const auto buffers = split_layers<T>(x0, c.layers, c.heads, c.head_dim);
    const MatrixXd x = join_layers(buffers);
    const int full = static_cast<int>(std::min<Eigen::Index>(x.rows(), x.cols()));
    for (const auto method : kMethods) {
      SCOPED_TRACE(::testing::Message() << "n=" << c.tokens << " G=" << c.layers << " width=" << width
                                        << " rank=" << full << " method=" << int(method));
      xkv::CompressorOptions options;
      options.method = method;
      const auto f = xkv::Compressor<T>(options).compress_stream(views_of(buffers), full);
      ASSERT_EQ(f.tokens, c.tokens);
      ASSERT_EQ(f.rank, full);
      ASSERT_EQ(f.layers, c.layers);
      ASSERT_EQ(f.width, width);
      ASSERT_EQ(f.a.size(), std::size_t(c.tokens) * full);
      ASSERT_EQ(f.b.size(), std::size_t(c.layers) * full * width);
      const MatrixXd a = factor_a(f);
      for (int l = 0; l < c.layers; ++l) {
        const MatrixXd layer = x.middleCols(Eigen::Index(l) * width, width);
        const double rel = (a * factor_b(f, l) - layer).norm() / layer.norm();
        EXPECT_LE(rel, storage_tolerance<T>()) << "layer " << l;
      }
      EXPECT_LE(f.kept_energy, f.total_energy * (1 + 1e-5));
      EXPECT_NEAR(f.kept_energy, f.total_energy, 1e-4 * f.total_energy);
    }
  }
}

// A single token (n = 1): rank 1 is exact and the only valid rank.
TYPED_TEST(CompressorProperties, SingleToken) {
  using T = TypeParam;
  Rng rng(401);
  const MatrixXd x0 = rng.gaussian(1, 3 * 20);
  const auto buffers = split_layers<T>(x0, 3, 2, 10);
  const MatrixXd x = join_layers(buffers);
  for (const auto method : kMethods) {
    xkv::CompressorOptions options;
    options.method = method;
    const auto f = xkv::Compressor<T>(options).compress_stream(views_of(buffers), 1);
    ASSERT_EQ(f.rank, 1);
    EXPECT_LE((reconstruct_group(f) - x).norm() / x.norm(), storage_tolerance<T>());
    ASSERT_EQ(f.singular_values.size(), 1u);
    EXPECT_NEAR(f.singular_values[0], x.norm(), 1e-4 * x.norm());
  }
}

// The error never grows when the rank grows (every rank of a 48-column group).
TYPED_TEST(CompressorProperties, ErrorDecreasesWithRank) {
  using T = TypeParam;
  Rng rng(402);
  const MatrixXd x0 = spectrum_matrix(rng, 97, 3 * 16, Spectrum::PowerHalf);
  const auto buffers = split_layers<T>(x0, 3, 2, 8);
  const MatrixXd x = join_layers(buffers);
  const auto views = views_of(buffers);
  for (const auto method : kMethods) {
    xkv::CompressorOptions options;
    options.method = method;
    const xkv::Compressor<T> compressor(options);
    double previous = std::numeric_limits<double>::infinity();
    for (int rank = 1; rank <= 48; rank += kSanitize ? 5 : 1) {
      const double err = (reconstruct_group(compressor.compress_stream(views, rank)) - x).norm();
      EXPECT_LT(err, previous) << "method=" << int(method) << " rank=" << rank;
      previous = err;
    }
  }
}

// bytes() is exactly (n*r + G*r*width) * sizeof(T); raw_bytes() is G*n*width*sizeof(T).
TYPED_TEST(CompressorProperties, FactorByteAccounting) {
  using T = TypeParam;
  Rng rng(403);
  const int n = 37, layers = 3, heads = 2, head_dim = 12, rank = 7;
  const auto buffers = split_layers<T>(rng.gaussian(n, layers * heads * head_dim), layers, heads, head_dim);
  const auto f = xkv::Compressor<T>().compress_stream(views_of(buffers), rank);
  EXPECT_EQ(f.bytes(), (std::size_t(n) * rank + std::size_t(layers) * rank * heads * head_dim) * sizeof(T));
  EXPECT_EQ(f.raw_bytes(), std::size_t(layers) * n * heads * head_dim * sizeof(T));
  EXPECT_FALSE(f.empty());
}

// Same seed: bit-identical factors (twice, and from a second Compressor). Different seed: the
// randomized factors differ (and stay accurate).
TYPED_TEST(CompressorProperties, Determinism) {
  using T = TypeParam;
  Rng rng(404);
  const MatrixXd x0 = spectrum_matrix(rng, sized(211, 91), 4 * 24, Spectrum::PowerHalf);
  const auto buffers = split_layers<T>(x0, 4, 3, 8);
  const auto views = views_of(buffers);
  auto same_bits = [](const auto& u, const auto& v) {
    using E = typename std::decay_t<decltype(u)>::value_type;
    return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(E)) == 0;
  };
  for (const auto method : {xkv::SvdMethod::Exact, xkv::SvdMethod::Randomized, xkv::SvdMethod::Auto}) {
    SCOPED_TRACE(::testing::Message() << "method=" << int(method));
    xkv::CompressorOptions options;
    options.method = method;
    options.seed = 1234;
    const auto f1 = xkv::Compressor<T>(options).compress_stream(views, 10);
    const auto f2 = xkv::Compressor<T>(options).compress_stream(views, 10);
    EXPECT_TRUE(same_bits(f1.a, f2.a));
    EXPECT_TRUE(same_bits(f1.b, f2.b));
    EXPECT_TRUE(same_bits(f1.singular_values, f2.singular_values));
    EXPECT_EQ(f1.kept_energy, f2.kept_energy);
  }
  xkv::CompressorOptions o1, o2;
  o1.method = o2.method = xkv::SvdMethod::Randomized;
  o1.seed = 1;
  o2.seed = 2;
  const auto f1 = xkv::Compressor<T>(o1).compress_stream(views, 10);
  const auto f2 = xkv::Compressor<T>(o2).compress_stream(views, 10);
  EXPECT_FALSE(same_bits(f1.a, f2.a) && same_bits(f1.b, f2.b)) << "the seed has no effect on Randomized";
}

// Layers that share a subspace: every layer's keys are Z * W_l + noise with one token basis Z
// [n x k] common to the group and a small independent per-layer noise. One group of 4 (xKV) then
// needs a much lower TOTAL rank than four per-layer SVDs for the same relative error.
class CrossLayer : public ::testing::Test {
 protected:
  static constexpr int kLayers = 4, kHeads = 2, kHeadDim = 16, kShared = 12;

  static std::vector<LayerBuffer<float>> make_layers(std::uint64_t salt, std::int64_t tokens) {
    Rng rng(salt);
    const int width = kHeads * kHeadDim;
    MatrixXd z = rng.gaussian(tokens, kShared);
    for (int j = 0; j < kShared; ++j) z.col(j) *= std::pow(j + 1.0, -0.5);  // a decaying shared spectrum
    MatrixXd x(tokens, Eigen::Index(width) * kLayers);
    for (int l = 0; l < kLayers; ++l) {
      const MatrixXd signal = z * rng.gaussian(kShared, width);
      const MatrixXd noise = rng.gaussian(tokens, width);
      x.middleCols(Eigen::Index(l) * width, width) = signal + noise * (0.03 * signal.norm() / noise.norm());
    }
    return split_layers<float>(x, kLayers, kHeads, kHeadDim);
  }

  /// Smallest rank whose measured relative error on `layers` is at most `target`.
  static int rank_for_error(const std::vector<LayerBuffer<float>>& layers, double target) {
    xkv::CompressorOptions options;
    options.method = xkv::SvdMethod::Exact;
    const xkv::Compressor<float> compressor(options);
    const MatrixXd x = join_layers(layers);
    const int full = static_cast<int>(std::min<Eigen::Index>(x.rows(), x.cols()));
    for (int r = 1; r <= full; ++r) {
      const auto f = compressor.compress_stream(views_of(layers), r);
      if ((reconstruct_group(f) - x).norm() / x.norm() <= target) return r;
    }
    return full;
  }
};

TEST_F(CrossLayer, OneGroupOfFourNeedsLowerTotalRankThanPerLayerSvd) {
  const auto layers = make_layers(405, sized(384, 160));
  for (const double target : {0.2, 0.1}) {
    const int grouped = rank_for_error(layers, target);
    int per_layer_total = 0;
    for (int l = 0; l < kLayers; ++l) per_layer_total += rank_for_error({layers[std::size_t(l)]}, target);
    SCOPED_TRACE(::testing::Message() << "target relative error " << target << ": G=4 rank " << grouped
                                      << ", per-layer total " << per_layer_total);
    EXPECT_LE(grouped, kShared);
    EXPECT_LT(2 * grouped, per_layer_total) << "the group should need less than half the per-layer total";
  }
}

// The same through the cache API with the energy policy: consecutive(4, 4) against consecutive(4, 1).
TEST_F(CrossLayer, EnergyPolicyPicksLowerTotalRankForOneGroup) {
  const auto keys = make_layers(406, sized(384, 160));
  const auto values = make_layers(407, sized(384, 160));
  const xkv::ModelShape shape{.num_layers = kLayers, .num_kv_heads = kHeads, .head_dim = kHeadDim};
  const auto kv = views_of(keys), vv = views_of(values);
  auto total_ranks = [&](int group_size) {
    xkv::CacheOptions options;
    options.grouping = xkv::LayerGrouping::consecutive(kLayers, group_size);
    options.policy = xkv::RankPolicy::energy(0.98);
    const auto cache = xkv::CompressedCache<float>::build(shape, options, kv, vv);
    xkv::GroupRanks sum;
    for (const auto& g : cache.groups()) {
      sum.key_rank += g.keys.rank;
      sum.value_rank += g.values.rank;
    }
    EXPECT_EQ(cache.groups().size(), std::size_t(kLayers / group_size));
    return sum;
  };
  const auto grouped = total_ranks(4), single = total_ranks(1);
  EXPECT_LT(2 * grouped.key_rank, single.key_rank) << grouped.key_rank << " vs " << single.key_rank;
  EXPECT_LT(2 * grouped.value_rank, single.value_rank) << grouped.value_rank << " vs " << single.value_rank;
}

}  // namespace
}  // namespace xkv_test
