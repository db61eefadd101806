#include <gtest/gtest.h>

#include <cmath>

#include "eval_test_util.hpp"
#include "methods.hpp"
#include "xkv/error.hpp"

namespace xkv::eval {
namespace {
using testing::gaussian;

// Layers that share a low-rank structure (as real KV caches do), plus noise.
model::PlainKvCache structured_plain(int layers, int heads, int dim, std::int64_t tokens, std::uint64_t salt) {
  model::PlainKvCache cache(ModelShape{layers, heads, dim, 0}, RopeConfig{});
  const Eigen::MatrixXf basis = gaussian(tokens, 6, salt);
  for (int l = 0; l < layers; ++l) {
    const Eigen::MatrixXf k = basis * gaussian(6, heads * dim, salt + 10 + l) + 0.01f * gaussian(tokens, heads * dim, salt + 100 + l);
    const Eigen::MatrixXf v = basis * gaussian(6, heads * dim, salt + 200 + l) + 0.01f * gaussian(tokens, heads * dim, salt + 300 + l);
    const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> kr = k, vr = v;
    cache.append(l, kr.data(), vr.data(), tokens);
  }
  return cache;
}

std::vector<float> copy_keys(model::KvCache& c, int layer) {
  const model::KvRead r = c.read(layer);
  return {r.keys, r.keys + r.tokens * c.shape().key_width()};
}
std::vector<float> copy_values(model::KvCache& c, int layer) {
  const model::KvRead r = c.read(layer);
  return {r.values, r.values + r.tokens * c.shape().value_width()};
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST(StreamRankForRatio, Formula) {
  // G n D / (R (n + G D)): 4 * 1000 * 192 / (4 * 1768) = 108.6
  EXPECT_EQ(stream_rank_for_ratio(1000, 4, 192, 4.0), 108);
  EXPECT_EQ(stream_rank_for_ratio(3, 1, 192, 1.0), 2);   // 192 * 3 / 195 = 2.95
  EXPECT_EQ(stream_rank_for_ratio(3, 1, 192, 0.25), 3);  // clamped to min(n, G D)
  EXPECT_EQ(stream_rank_for_ratio(1000, 1, 192, 1e6), 1);
  EXPECT_THROW((void)stream_rank_for_ratio(0, 1, 192, 2.0), xkv::Error);
}

TEST(IncrementalCompressedKvCache, ReadsEqualTheCompressedCacheAfterAppends) {
  const int layers = 4, heads = 2, dim = 8;
  model::PlainKvCache plain = structured_plain(layers, heads, dim, 33, 1);
  CacheOptions o;
  o.grouping = LayerGrouping::consecutive(layers, 2);
  o.policy = RankPolicy::fixed(5, 5);
  IncrementalCompressedKvCache inc(plain, o);
  model::CompressedKvCache whole(plain, o);
  const Eigen::MatrixXf extra = gaussian(3, heads * dim, 2);
  for (int step = 0; step < 3; ++step) {
    for (int l = 0; l < layers; ++l) {
      (void)inc.read(l);  // reads between appends must not go stale
      std::vector<float> k(extra.row(step).data(), extra.row(step).data() + heads * dim);
      for (auto& x : k) x *= float(l + 1);
      inc.append(l, k.data(), k.data(), 1);
      whole.append(l, k.data(), k.data(), 1);
    }
  }
  for (int l = 0; l < layers; ++l) {
    EXPECT_EQ(inc.tokens(l), 36);
    EXPECT_EQ(copy_keys(inc, l), copy_keys(whole, l)) << "layer " << l;
    EXPECT_EQ(copy_values(inc, l), copy_values(whole, l)) << "layer " << l;
  }
}

TEST(PrepareCache, FullRankReproducesThePlainCache) {
  const int layers = 4, heads = 2, dim = 8;
  model::PlainKvCache plain = structured_plain(layers, heads, dim, 40, 3);
  for (int g : {1, 2}) {
    PreparedCache p = prepare_cache(Method::full_rank(g), plain);
    EXPECT_LT(p.prefix_ratio, 1.0);  // A and B together are larger than the raw cache
    for (int l = 0; l < layers; ++l) {
      EXPECT_LT(rel_diff(copy_keys(*p.cache, l), copy_keys(plain, l)), 1e-5) << "G=" << g << " layer " << l;
      EXPECT_LT(rel_diff(copy_values(*p.cache, l), copy_values(plain, l)), 1e-5) << "G=" << g << " layer " << l;
    }
  }
  EXPECT_THROW((void)prepare_cache(Method::full_rank(3), plain), xkv::Error);  // 3 does not divide 4
}

TEST(PrepareCache, KeysOnlyAndValuesOnlyLeaveTheOtherStreamExact) {
  const int layers = 4, heads = 2, dim = 8;
  model::PlainKvCache plain = structured_plain(layers, heads, dim, 64, 4);
  // Rank 2 * 64 * 16 / (2 * (64 + 32)) = 10 per group: enough for the rank-6 structure.
  PreparedCache keys = prepare_cache(Method::keys_only(2, 2.0), plain);
  PreparedCache values = prepare_cache(Method::values_only(2, 2.0), plain);
  for (int l = 0; l < layers; ++l) {
    EXPECT_EQ(copy_values(*keys.cache, l), copy_values(plain, l));
    EXPECT_EQ(copy_keys(*values.cache, l), copy_keys(plain, l));
    // The structured data is rank ~6: the compressed stream stays close.
    EXPECT_LT(rel_diff(copy_keys(*keys.cache, l), copy_keys(plain, l)), 0.05);
    EXPECT_LT(rel_diff(copy_values(*values.cache, l), copy_values(plain, l)), 0.05);
  }
  EXPECT_GE(keys.stream_ratio, 2.0);
  // One stream at ~2x, the other raw: 2 / (1/2 + 1) = 1.33 overall.
  EXPECT_NEAR(keys.prefix_ratio, 2.0 / (1.0 / keys.stream_ratio + 1.0), 1e-9);
  EXPECT_GT(keys.key_rank, 0);
  EXPECT_EQ(keys.value_rank, 0);
  EXPECT_EQ(values.key_rank, 0);
}

// Sink tokens through the library (CacheOptions::sink_tokens) as the eval reads them: exact
// sinks, the rest at its true positions (full rank reproduces it), appends after the prefix.
TEST(IncrementalCompressedKvCache, SinkTokensExactRestAtTheirPositions) {
  const int layers = 4, heads = 2, dim = 8;
  const std::int64_t tokens = 40, sinks = 3;
  model::PlainKvCache plain = structured_plain(layers, heads, dim, tokens, 6);
  CacheOptions full;
  full.grouping = LayerGrouping::consecutive(layers, 2);
  full.policy = RankPolicy::fixed(2 * heads * dim, 2 * heads * dim);  // full rank: lossless up to rounding
  full.sink_tokens = sinks;
  IncrementalCompressedKvCache lossless(plain, full);
  EXPECT_EQ(lossless.tokens(0), tokens);
  EXPECT_EQ(lossless.compressed().sink_tokens(), sinks);
  for (int l = 0; l < layers; ++l) {
    const std::vector<float> want_k = copy_keys(plain, l), want_v = copy_values(plain, l);
    const std::vector<float> got_k = copy_keys(lossless, l), got_v = copy_values(lossless, l);
    for (std::int64_t i = 0; i < sinks * heads * dim; ++i) {  // the sinks are copied, RoPE applied
      EXPECT_NEAR(got_k[i], want_k[i], 1e-6f * (1 + std::abs(want_k[i])));
      EXPECT_EQ(got_v[i], want_v[i]);
    }
    EXPECT_LT(rel_diff(got_k, want_k), 1e-5) << "layer " << l;
    EXPECT_LT(rel_diff(got_v, want_v), 1e-5) << "layer " << l;
  }
  const std::vector<float> k(heads * dim, 0.5f), v(heads * dim, 2.0f);
  for (int l = 0; l < layers; ++l) lossless.append(l, k.data(), v.data(), 1);
  EXPECT_EQ(lossless.tokens(2), tokens + 1);
  EXPECT_EQ(copy_values(lossless, 2).back(), 2.0f);
}

TEST(PrepareCache, XkvMeetsItsTargetRatio) {
  const int layers = 4, heads = 2, dim = 8;
  model::PlainKvCache plain = structured_plain(layers, heads, dim, 80, 5);
  for (double r : {2.0, 4.0}) {
    PreparedCache p = prepare_cache(Method::xkv(2, r), plain);
    EXPECT_GE(p.prefix_ratio, r * 0.999);
    EXPECT_EQ(p.cache->tokens(0), 80);
  }
  // With sinks the target still holds for the whole prefix: the rest is compressed harder.
  PreparedCache sinks = prepare_cache(Method::xkv_with_sinks(2, 2.0, 4), plain);
  EXPECT_GE(sinks.prefix_ratio, 2.0 * 0.999);
  EXPECT_LT(sinks.prefix_ratio, 2.3);
  EXPECT_EQ(dynamic_cast<IncrementalCompressedKvCache&>(*sinks.cache).compressed().sink_tokens(), 4);
  EXPECT_THROW((void)prepare_cache(Method::xkv_with_sinks(2, 40.0, 4), plain), xkv::Error);  // 80/40 < 4 sinks
  PreparedCache mini = prepare_cache(Method::mini_cache(0, "MiniCache"), plain);
  EXPECT_GT(mini.prefix_ratio, 1.0);
  EXPECT_EQ(Method::xkv(4, 6.4).label(), "xKV-4 @6.4x");
  EXPECT_EQ(Method::xkv(1, 8).label(), "SVD (xKV-1) @8x");
  EXPECT_EQ(Method::xkv(4, 4, 1, 3).label(), "xKV-4 K:V 1:3 @4x");
  EXPECT_EQ(Method::xkv_with_sinks(4, 6.4, 16).label(), "xKV-4 +16 sink tokens @6.4x");
}

}  // namespace
}  // namespace xkv::eval
