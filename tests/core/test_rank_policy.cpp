// Rank policies (fixed, energy, ratio with a K:V split), the ranks they report, and layer grouping.
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace xkv_test {
namespace {

TEST(RankForEnergy, SmallestRankReachingTheFraction) {
  const std::vector<float> s = {3, 2, 1};  // squares 9, 4, 1: total 14
  EXPECT_EQ(xkv::rank_for_energy(s, 14, 0.5), 1);   // 9 >= 7
  EXPECT_EQ(xkv::rank_for_energy(s, 14, 0.64), 1);  // 9 >= 8.96
  EXPECT_EQ(xkv::rank_for_energy(s, 14, 0.65), 2);  // 9 < 9.1 <= 13
  EXPECT_EQ(xkv::rank_for_energy(s, 14, 0.93), 3);  // 13 < 13.02
  EXPECT_EQ(xkv::rank_for_energy(s, 14, 1.0), 3);
  // Only the leading values known: ||X||^2 = 20 > 14.
  EXPECT_EQ(xkv::rank_for_energy(s, 20, 0.6), 2);  // 9 < 12 <= 13
  EXPECT_EQ(xkv::rank_for_energy(s, 20, 0.9), 3);  // never reached: all given values
}

TEST(RanksForShape, FixedIsReturnedAsGiven) {
  const xkv::GroupShape shape{.tokens = 100, .layers = 2, .key_width = 64, .value_width = 64};
  const auto r = xkv::ranks_for_shape(xkv::RankPolicy::fixed(5, 8), shape);
  EXPECT_EQ(r.key_rank, 5);
  EXPECT_EQ(r.value_rank, 8);
  const auto full = xkv::ranks_for_shape(xkv::RankPolicy::fixed(100, 100), shape);
  EXPECT_EQ(full.key_rank, 100);
}

/// Elements stored for ranks (rk, rv): A and every B_l of keys and of values.
double stored_elements(const xkv::GroupShape& s, int rk, int rv) {
  return double(rk) * (double(s.tokens) + double(s.layers) * s.key_width) +
         double(rv) * (double(s.tokens) + double(s.layers) * s.value_width);
}

// The achieved ratio meets the target and is close to it (within one rank step), and the K:V split
// r_v = r_k * w_v / w_k holds within rounding.
TEST(RanksForShape, RatioMeetsTargetClosely) {
  struct Case {
    xkv::GroupShape shape;
    double target, wk, wv;
  };
  const Case cases[] = {
      {{.tokens = 1024, .layers = 4, .key_width = 256, .value_width = 256}, 4.0, 1.0, 1.5},
      {{.tokens = 333, .layers = 2, .key_width = 96, .value_width = 64}, 3.0, 1.0, 1.5},
      {{.tokens = 4096, .layers = 4, .key_width = 1024, .value_width = 1024}, 8.0, 1.0, 1.0},
      {{.tokens = 777, .layers = 3, .key_width = 192, .value_width = 192}, 5.0, 2.0, 3.0},
      {{.tokens = 2048, .layers = 1, .key_width = 512, .value_width = 512}, 2.5, 1.0, 1.5},
  };
  for (const Case& c : cases) {
    const auto& s = c.shape;
    SCOPED_TRACE(::testing::Message() << "n=" << s.tokens << " G=" << s.layers << " Dk=" << s.key_width
                                      << " Dv=" << s.value_width << " target=" << c.target << " K:V=" << c.wk << ":"
                                      << c.wv);
    const auto r = xkv::ranks_for_shape(xkv::RankPolicy::ratio(c.target, c.wk, c.wv), s);
    const double raw = double(s.layers) * double(s.tokens) * (s.key_width + s.value_width);
    const double stored = stored_elements(s, r.key_rank, r.value_rank);
    const double achieved = raw / stored;
    EXPECT_GE(achieved, c.target) << "ranks " << r.key_rank << "/" << r.value_rank;
    const double w = c.wv / c.wk;
    const double step = (s.tokens + double(s.layers) * s.key_width) + (w + 1) * (s.tokens + double(s.layers) * s.value_width);
    EXPECT_GE(stored, raw / c.target - step) << "ranks " << r.key_rank << "/" << r.value_rank
                                              << " leave more than one rank step of the budget unused";
    EXPECT_NEAR(r.value_rank, w * r.key_rank, 1.0) << "K:V split";
    EXPECT_GE(r.key_rank, 1);
  }
}

TEST(RanksForShape, RatioWithoutValuesSpendsTheBudgetOnKeys) {
  const xkv::GroupShape s{.tokens = 2000, .layers = 4, .key_width = 512, .value_width = 0};
  const auto r = xkv::ranks_for_shape(xkv::RankPolicy::ratio(3.0), s);
  EXPECT_EQ(r.value_rank, 0);
  const double raw = 4.0 * 2000 * 512;
  const double per_rank = 2000 + 4.0 * 512;
  EXPECT_GE(raw / (r.key_rank * per_rank), 3.0);
  EXPECT_LT(raw / ((r.key_rank + 1) * per_rank), 3.0);
}

// Ranks never exceed min(n, G*D) even for a mild target.
TEST(RanksForShape, RatioRanksStayWithinShape) {
  const xkv::GroupShape s{.tokens = 10, .layers = 4, .key_width = 64, .value_width = 64};
  const auto r = xkv::ranks_for_shape(xkv::RankPolicy::ratio(1.01), s);
  EXPECT_GE(r.key_rank, 1);
  EXPECT_LE(r.key_rank, 10);
  EXPECT_GE(r.value_rank, 1);
  EXPECT_LE(r.value_rank, 10);
  EXPECT_GE(4.0 * 10 * 128 / stored_elements(s, r.key_rank, r.value_rank), 1.01);
}

template <class T>
class PolicyCompression : public ::testing::Test {};
TYPED_TEST_SUITE(PolicyCompression, StorageTypes, StorageName);

template <class T>
struct GroupBuffers {
  std::vector<LayerBuffer<T>> keys, values;
};

template <class T>
GroupBuffers<T> group_buffers(std::uint64_t salt, int n, int layers, int heads, int head_dim, int value_head_dim) {
  Rng rng(salt);
  GroupBuffers<T> g;
  g.keys = split_layers<T>(spectrum_matrix(rng, n, Eigen::Index(layers) * heads * head_dim, Spectrum::PowerThreeQuarter),
                           layers, heads, head_dim);
  g.values = split_layers<T>(spectrum_matrix(rng, n, Eigen::Index(layers) * heads * value_head_dim, Spectrum::PowerHalf),
                             layers, heads, value_head_dim);
  return g;
}

// Energy 0.95: keys and values each get the smallest rank whose reference spectrum keeps 95 %.
TYPED_TEST(PolicyCompression, EnergyPicksSmallestRankReachingFraction) {
  using T = TypeParam;
  const auto g = group_buffers<T>(600, sized(211, 97), 3, 2, 16, 16);
  const Reference kref(join_layers(g.keys)), vref(join_layers(g.values));
  for (const double fraction : {0.5, 0.95, 0.999}) {
    for (const auto method : {xkv::SvdMethod::Exact, xkv::SvdMethod::Auto}) {
      xkv::CompressorOptions options;
      options.method = method;
      const auto group = xkv::Compressor<T>(options).compress(views_of(g.keys), views_of(g.values),
                                                              xkv::RankPolicy::energy(fraction));
      for (const auto& [got, ref, name] : {std::tuple{group.keys.rank, &kref, "keys"}, std::tuple{group.values.rank, &vref, "values"}}) {
        const int want = ref->energy_rank(fraction);
        // A rank whose kept fraction is within 1e-4 of the target may go either way in fp32.
        const bool near_tie = std::abs(ref->energy_fraction(want - 1) - fraction) < 1e-4 ||
                              std::abs(ref->energy_fraction(want) - fraction) < 1e-4;
        if (near_tie) EXPECT_NEAR(got, want, 1) << name << " fraction " << fraction;
        else EXPECT_EQ(got, want) << name << " fraction " << fraction << " method " << int(method);
      }
      EXPECT_GE(group.keys.kept_energy, (fraction - 1e-4) * group.keys.total_energy);
      EXPECT_GE(group.values.kept_energy, (fraction - 1e-4) * group.values.total_energy);
      EXPECT_EQ(group.ranks().key_rank, group.keys.rank);
      EXPECT_EQ(group.ranks().value_rank, group.values.rank);
    }
  }
}

// Ratio: the group's byte ratio meets the target, is close to it, and splits K:V as 1:1.5.
TYPED_TEST(PolicyCompression, RatioAchievesTargetWithKVSplit) {
  using T = TypeParam;
  const int n = sized(600, 200), layers = 4, heads = 2, head_dim = 16;
  const auto g = group_buffers<T>(601, n, layers, heads, head_dim, head_dim);
  for (const double target : {2.0, 4.0, 6.0}) {
    const auto policy = xkv::RankPolicy::ratio(target);
    const auto group = xkv::Compressor<T>().compress(views_of(g.keys), views_of(g.values), policy);
    const xkv::GroupShape shape{.tokens = n, .layers = layers, .key_width = heads * head_dim,
                                .value_width = heads * head_dim};
    const auto expected = xkv::ranks_for_shape(policy, shape);
    EXPECT_EQ(group.ranks().key_rank, expected.key_rank) << "ranks reported differ from the policy's";
    EXPECT_EQ(group.ranks().value_rank, expected.value_rank);
    EXPECT_GE(group.compression_ratio(), target);
    EXPECT_LE(group.compression_ratio(), target * 1.25) << "ratio far above the target";
    EXPECT_NEAR(group.values.rank, 1.5 * group.keys.rank, 1.0);
    EXPECT_EQ(group.bytes(), group.keys.bytes() + group.values.bytes());
    EXPECT_EQ(group.raw_bytes(), std::size_t(2) * layers * n * heads * head_dim * sizeof(T));
  }
}

TYPED_TEST(PolicyCompression, FixedRanksAndKeysOnlyGroup) {
  using T = TypeParam;
  const auto g = group_buffers<T>(602, 50, 2, 1, 24, 8);
  const auto group = xkv::Compressor<T>().compress(views_of(g.keys), views_of(g.values), xkv::RankPolicy::fixed(5, 9));
  EXPECT_EQ(group.ranks().key_rank, 5);
  EXPECT_EQ(group.ranks().value_rank, 9);
  EXPECT_EQ(group.values.width, 8) << "values may be narrower than keys";
  // No values: the value factor is empty and costs nothing.
  const auto keys_only = xkv::Compressor<T>().compress(views_of(g.keys), {}, xkv::RankPolicy::fixed(5, 9));
  EXPECT_TRUE(keys_only.values.empty());
  EXPECT_EQ(keys_only.values.bytes(), 0u);
  EXPECT_EQ(keys_only.bytes(), keys_only.keys.bytes());
  EXPECT_EQ(keys_only.keys.rank, 5);
}

// ------------------------------------------------------------------- grouping

TEST(LayerGrouping, Consecutive) {
  using G = std::vector<std::vector<int>>;
  EXPECT_EQ(xkv::LayerGrouping::consecutive(8, 4).groups, (G{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(xkv::LayerGrouping::consecutive(10, 4).groups, (G{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}));
  EXPECT_EQ(xkv::LayerGrouping::consecutive(6, 4, 1).groups, (G{{1, 2, 3, 4}, {5}}));
  EXPECT_EQ(xkv::LayerGrouping::consecutive(12, 2, 3, 9).groups, (G{{3, 4}, {5, 6}, {7, 8}}));
  EXPECT_EQ(xkv::LayerGrouping::consecutive(3, 1).groups, (G{{0}, {1}, {2}}));
  const auto all = xkv::LayerGrouping::consecutive(32, 4);
  EXPECT_EQ(all.groups.size(), 8u);
  EXPECT_NO_THROW(all.validate(32));
}

TEST(LayerGrouping, ExplicitKeepsOrderAndMayLeaveLayersOut) {
  const auto g = xkv::LayerGrouping::explicit_groups({{3, 1}, {0}});
  ASSERT_EQ(g.groups.size(), 2u);
  EXPECT_EQ(g.groups[0], (std::vector<int>{3, 1}));
  EXPECT_NO_THROW(g.validate(5));
}

}  // namespace
}  // namespace xkv_test
