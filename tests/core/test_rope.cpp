// RoPE: both pair styles and Llama-3 frequency scaling against values computed by hand, partial
// rotary dimensions, and RoPE applied after reconstruction (against RoPE of the uncompressed keys).
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace xkv_test {
namespace {

xkv::RopeConfig rope(xkv::RopeStyle style, double theta = 10000.0, int rotary_dim = 0) {
  xkv::RopeConfig c;
  c.theta = theta;
  c.style = style;
  c.rotary_dim = rotary_dim;
  return c;
}

// theta = 10000, d = 4: inv_freq = {10000^0, 10000^(-2/4)} = {1, 0.01}.
TEST(Rope, InverseFrequenciesByHand) {
  const auto inv = rope(xkv::RopeStyle::HalfSplit).inverse_frequencies(4);
  ASSERT_EQ(inv.size(), 2u);
  EXPECT_DOUBLE_EQ(inv[0], 1.0);
  EXPECT_NEAR(inv[1], 0.01, 1e-16);
  // d = 8, theta = 500000: 500000^(-i/4).
  const auto inv8 = rope(xkv::RopeStyle::Interleaved, 500000.0).inverse_frequencies(8);
  ASSERT_EQ(inv8.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(inv8[i], std::pow(500000.0, -i / 4.0), 1e-15) << i;
  // Partial rotary: the exponent is over rotary_dim (4), not head_dim (8).
  const auto part = rope(xkv::RopeStyle::HalfSplit, 10000.0, 4).inverse_frequencies(8);
  ASSERT_EQ(part.size(), 2u);
  EXPECT_NEAR(part[1], 0.01, 1e-16);
}

// x = (1, 2, 3, 4), theta = 10000, d = 4. Half-split pairs (0,2) at angle p*1 and (1,3) at p*0.01;
// interleaved pairs (0,1) at p*1 and (2,3) at p*0.01. Each pair (a, b) -> (a cos - b sin, a sin + b cos).
TEST(Rope, BothStylesAgainstHandComputedValues) {
  struct Case {
    xkv::RopeStyle style;
    int position;
    double expected[4];
  };
  const double c1 = std::cos(1.0), s1 = std::sin(1.0), c01 = std::cos(0.01), s01 = std::sin(0.01);
  const double c3 = std::cos(3.0), s3 = std::sin(3.0), c03 = std::cos(0.03), s03 = std::sin(0.03);
  const Case cases[] = {
      // half-split, position 1: (1c - 3s, 2c' - 4s', 1s + 3c, 2s' + 4c')
      {xkv::RopeStyle::HalfSplit, 1, {1 * c1 - 3 * s1, 2 * c01 - 4 * s01, 1 * s1 + 3 * c1, 2 * s01 + 4 * c01}},
      {xkv::RopeStyle::HalfSplit, 3, {1 * c3 - 3 * s3, 2 * c03 - 4 * s03, 1 * s3 + 3 * c3, 2 * s03 + 4 * c03}},
      // interleaved, position 1: (1c - 2s, 1s + 2c, 3c' - 4s', 3s' + 4c')
      {xkv::RopeStyle::Interleaved, 1, {1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3 * c01 - 4 * s01, 3 * s01 + 4 * c01}},
      {xkv::RopeStyle::Interleaved, 3, {1 * c3 - 2 * s3, 1 * s3 + 2 * c3, 3 * c03 - 4 * s03, 3 * s03 + 4 * c03}},
  };
  for (const Case& c : cases) {
    const auto cfg = rope(c.style);
    double head[4] = {1, 2, 3, 4};
    xkv::apply_rope_head(head, 4, c.position, cfg.style, cfg.inverse_frequencies(4));
    for (int i = 0; i < 4; ++i)
      EXPECT_NEAR(head[i], c.expected[i], 1e-14) << "style=" << int(c.style) << " pos=" << c.position << " i=" << i;
  }
  // The same numbers written out (cos 1 = 0.5403023058681398, sin 1 = 0.8414709848078965).
  EXPECT_NEAR(cases[0].expected[0], -1.9841106485555495, 1e-15);
  EXPECT_NEAR(cases[0].expected[3], 4.0197996683349944, 1e-15);
  EXPECT_NEAR(cases[1].expected[2], -2.8288574817414691, 1e-15);
  EXPECT_NEAR(cases[2].expected[0], -1.1426396637476532, 1e-15);
  EXPECT_NEAR(cases[3].expected[1], -1.8388649851410237, 1e-15);
}

// Llama-3 scaling, theta = 10000, d = 8 (inv_freq 1, 0.1, 0.01, 0.001: wavelengths 2*pi/f = 6.28,
// 62.8, 628, 6283), original context 1000, factor 8, low/high-freq factors 1/4: wavelengths below
// 1000/4 = 250 keep their frequency, above 1000/1 = 1000 are divided by 8, in between blend with
// smooth = (1000 / wavelength - 1) / (4 - 1).
xkv::RopeConfig llama3_config() {
  xkv::RopeConfig c = rope(xkv::RopeStyle::HalfSplit);
  c.llama3 = xkv::Llama3Scaling{.factor = 8.0, .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                                .original_max_position = 1000.0};
  return c;
}

std::vector<double> llama3_expected() {
  const double pi = 3.14159265358979323846;
  const double smooth = (1000.0 / (2 * pi / 0.01) - 1.0) / 3.0;  // = 0.19718314...
  return {1.0, 0.1, (1 - smooth) * 0.01 / 8 + smooth * 0.01, 0.001 / 8};
}

TEST(Rope, Llama3ScalingThreeBands) {
  const auto inv = llama3_config().inverse_frequencies(8);
  const auto want = llama3_expected();
  ASSERT_EQ(inv.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(inv[i], want[i], 1e-15 * want[i] + 1e-18) << "pair " << i;
  EXPECT_NEAR(want[2], 0.0029753525068469469, 1e-15);  // the blend, by hand
  // The HF defaults (factor 8, 1, 4, 8192) on Llama-3.1's theta 500000, d = 128: the highest
  // frequency is kept, the lowest divided by 8.
  xkv::RopeConfig hf = rope(xkv::RopeStyle::HalfSplit, 500000.0);
  hf.llama3 = xkv::Llama3Scaling{};
  const auto inv128 = hf.inverse_frequencies(128);
  EXPECT_DOUBLE_EQ(inv128[0], 1.0);
  EXPECT_NEAR(inv128[63], std::pow(500000.0, -126.0 / 128) / 8, 1e-20);
}

// Only the first rotary_dim dimensions of each head rotate; the rest pass through unchanged.
TEST(Rope, PartialRotaryLeavesTheRestUntouched) {
  for (const auto style : {xkv::RopeStyle::HalfSplit, xkv::RopeStyle::Interleaved}) {
    const auto cfg = rope(style, 10000.0, 4);
    double head[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    xkv::apply_rope_head(head, 8, 3, cfg.style, cfg.inverse_frequencies(8));
    double first[4] = {1, 2, 3, 4};
    xkv::apply_rope_head(first, 4, 3, cfg.style, rope(style).inverse_frequencies(4));
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(head[i], first[i], 1e-14) << i;
    for (int i = 4; i < 8; ++i) EXPECT_EQ(head[i], i + 1.0) << i;
  }
}

TEST(Rope, TableHoldsCosAndSinPerPositionAndPair) {
  const auto cfg = llama3_config();
  const auto table = xkv::RopeTable::build(cfg, 8, 5);
  const auto inv = llama3_expected();
  ASSERT_EQ(table.pairs, 4);
  ASSERT_EQ(table.cos.size(), 20u);
  for (int p = 0; p < 5; ++p)
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(table.cos[p * 4 + i], std::cos(p * inv[i]), 1e-7);
      EXPECT_NEAR(table.sin[p * 4 + i], std::sin(p * inv[i]), 1e-7);
    }
}

// ------------------------------------------------------------------- RoPE after reconstruction

/// Storage-rounded keys of `layers` layers and the cache that compresses them at full rank in one
/// group (rope applied on reconstruction).
template <class T>
struct FullRankCache {
  std::vector<LayerBuffer<T>> keys, values;
  xkv::CompressedCache<T> cache;
};

template <class T>
FullRankCache<T> full_rank_cache(std::uint64_t salt, int layers, int heads, int head_dim, int tokens,
                                 const xkv::RopeConfig& rope_config, std::int64_t offset,
                                 bool compress = true) {
  Rng rng(salt);
  FullRankCache<T> r;
  const int width = heads * head_dim;
  r.keys = split_layers<T>(rng.gaussian(tokens, Eigen::Index(width) * layers), layers, heads, head_dim);
  r.values = split_layers<T>(rng.gaussian(tokens, Eigen::Index(width) * layers), layers, heads, head_dim);
  const xkv::ModelShape shape{.num_layers = layers, .num_kv_heads = heads, .head_dim = head_dim};
  xkv::CacheOptions options;
  if (compress) options.grouping = xkv::LayerGrouping::consecutive(layers, layers);
  const int full = std::min(tokens, width * layers);
  options.policy = xkv::RankPolicy::fixed(full, full);
  options.rope = rope_config;
  options.position_offset = offset;
  options.compressor.method = xkv::SvdMethod::Exact;
  r.cache = xkv::CompressedCache<T>::build(shape, options, views_of(r.keys), views_of(r.values));
  return r;
}

template <class T>
std::vector<double> rope_reference(const LayerBuffer<T>& layer, const xkv::RopeConfig& cfg, std::int64_t offset) {
  return rope_rows(layer.data.data(), layer.tokens, layer.heads, layer.head_dim, cfg, offset);
}

template <class T>
class RopeReconstruction : public ::testing::Test {};
TYPED_TEST_SUITE(RopeReconstruction, StorageTypes, StorageName);

// Full rank: reconstruct-with-RoPE equals RoPE of the uncompressed keys, for both styles, a
// partial rotary dim and Llama-3 scaling, tall and wide groups, with and without a position offset.
TYPED_TEST(RopeReconstruction, FullRankEqualsRopeOfUncompressedKeys) {
  using T = TypeParam;
  xkv::RopeConfig partial = rope(xkv::RopeStyle::Interleaved, 500000.0, 8);
  xkv::RopeConfig llama = llama3_config();
  const xkv::RopeConfig configs[] = {rope(xkv::RopeStyle::HalfSplit), rope(xkv::RopeStyle::Interleaved), partial,
                                     llama};
  std::uint64_t salt = 500;
  for (const auto& cfg : configs)
    for (const int tokens : {41, 7})
      for (const std::int64_t offset : {std::int64_t(0), std::int64_t(77)}) {
        SCOPED_TRACE(::testing::Message() << "style=" << int(cfg.style) << " rotary_dim=" << cfg.rotary_dim
                                          << " llama3=" << cfg.llama3.has_value() << " n=" << tokens
                                          << " offset=" << offset);
        const auto r = full_rank_cache<T>(++salt, 2, 2, 16, tokens, cfg, offset);
        for (int l = 0; l < 2; ++l) {
          const auto got = r.cache.keys(l);
          EXPECT_LE(relative_difference(got, rope_reference(r.keys[l], cfg, offset)), storage_tolerance<T>())
              << "layer " << l;
          // Values never rotate.
          EXPECT_LE(relative_difference(r.cache.values(l), rope_reference(r.values[l], xkv::RopeConfig::disabled(), 0)),
                    storage_tolerance<T>())
              << "layer " << l;
        }
      }
}

// A layer in no group is returned with RoPE applied in the same way.
TYPED_TEST(RopeReconstruction, UncompressedLayerGetsRopeToo) {
  using T = TypeParam;
  const auto cfg = llama3_config();
  const auto r = full_rank_cache<T>(520, 2, 2, 8, 13, cfg, 5, /*compress=*/false);
  ASSERT_EQ(r.cache.location(1).group, -1);
  for (int l = 0; l < 2; ++l)
    EXPECT_LE(relative_difference(r.cache.keys(l), rope_reference(r.keys[l], cfg, 5)), 1e-5) << "layer " << l;
}

// RoPE disabled: keys come back as they went in (to storage precision), compressed or not.
TYPED_TEST(RopeReconstruction, DisabledLeavesKeysUnchanged) {
  using T = TypeParam;
  for (const bool compress : {true, false}) {
    const auto r = full_rank_cache<T>(530, 3, 1, 12, 23, xkv::RopeConfig::disabled(), 40, compress);
    for (int l = 0; l < 3; ++l) {
      const double tol = compress ? storage_tolerance<T>() : 0.0;
      EXPECT_LE(relative_difference(r.cache.keys(l), rope_reference(r.keys[l], xkv::RopeConfig::disabled(), 0)), tol)
          << "layer " << l << " compressed=" << compress;
    }
  }
}

// One head (d = 8, Llama-3 scaling, half-split) at known positions, checked against the hand
// formula directly (not through apply_rope_head): reconstruction uses the right frequencies.
TEST(RopeReconstructionByHand, Llama3KeysAtKnownPositions) {
  const auto cfg = llama3_config();
  const auto r = full_rank_cache<float>(540, 1, 1, 8, 6, cfg, 100);
  const auto inv = llama3_expected();
  const auto got = r.cache.keys(0);
  for (int t = 0; t < 6; ++t) {
    const float* x = r.keys[0].data.data() + t * 8;
    const double pos = 100.0 + t;
    for (int i = 0; i < 4; ++i) {
      const double c = std::cos(pos * inv[i]), s = std::sin(pos * inv[i]);
      EXPECT_NEAR(got[t * 8 + i], x[i] * c - x[i + 4] * s, 1e-4) << "t=" << t << " pair " << i;
      EXPECT_NEAR(got[t * 8 + i + 4], x[i] * s + x[i + 4] * c, 1e-4) << "t=" << t << " pair " << i;
    }
  }
}

}  // namespace
}  // namespace xkv_test
