// CompressedCache: layout of groups and uncompressed layers, byte accounting, tails appended after
// compression, range and index-list reconstruction, head-major views, and caches without values.
#include <gtest/gtest.h>

#include <cstring>

#include "test_util.hpp"

namespace xkv_test {
namespace {

constexpr int kLayers = 5, kHeads = 2, kHeadDim = 8, kWidth = kHeads * kHeadDim;

xkv::RopeConfig test_rope() {
  xkv::RopeConfig c;
  c.theta = 10000.0;
  c.style = xkv::RopeStyle::HalfSplit;
  return c;
}

/// `layers` layers of n random tokens each, keys and values, token-major.
template <class T>
void random_layers(Rng& rng, std::int64_t n, std::vector<LayerBuffer<T>>& keys, std::vector<LayerBuffer<T>>& values,
                   int layers = kLayers) {
  for (int l = 0; l < layers; ++l) {
    keys.push_back(split_layers<T>(rng.gaussian(n, kWidth), 1, kHeads, kHeadDim)[0]);
    values.push_back(split_layers<T>(rng.gaussian(n, kWidth), 1, kHeads, kHeadDim)[0]);
  }
}

/// Five layers, groups {0,1} and {2,3}, layer 4 uncompressed; n prefix tokens.
template <class T>
struct CacheFixture {
  std::int64_t n;
  std::vector<LayerBuffer<T>> keys, values;
  xkv::CacheOptions options;
  xkv::CompressedCache<T> cache;

  CacheFixture(std::uint64_t salt, std::int64_t tokens, std::int64_t offset,
               xkv::RankPolicy policy = xkv::RankPolicy::fixed(6, 9))
      : n(tokens) {
    Rng rng(salt);
    random_layers(rng, n, keys, values);
    options.grouping = xkv::LayerGrouping::consecutive(kLayers, 2, 0, 4);
    options.policy = policy;
    options.rope = test_rope();
    options.position_offset = offset;
    cache = xkv::CompressedCache<T>::build(shape(), options, views_of(keys), views_of(values));
  }
  static xkv::ModelShape shape() { return {.num_layers = kLayers, .num_kv_heads = kHeads, .head_dim = kHeadDim}; }
};

template <class T>
class Cache : public ::testing::Test {};
TYPED_TEST_SUITE(Cache, StorageTypes, StorageName);

TYPED_TEST(Cache, GroupsAndUncompressedLayers) {
  using T = TypeParam;
  const CacheFixture<T> f(700, 37, 0);
  const auto& c = f.cache;
  ASSERT_EQ(c.groups().size(), 2u);
  EXPECT_EQ(c.groups()[0].layers, (std::vector<int>{0, 1}));
  EXPECT_EQ(c.groups()[1].layers, (std::vector<int>{2, 3}));
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(c.location(l).group, l / 2) << l;
    EXPECT_EQ(c.location(l).member, l % 2) << l;
    EXPECT_TRUE(c.raw_prefix_keys(l).empty()) << l;
  }
  EXPECT_EQ(c.location(4).group, -1);
  ASSERT_EQ(c.raw_prefix_keys(4).size(), std::size_t(37 * kWidth));
  EXPECT_EQ(std::memcmp(c.raw_prefix_keys(4).data(), f.keys[4].data.data(), 37 * kWidth * sizeof(T)), 0);
  EXPECT_EQ(std::memcmp(c.raw_prefix_values(4).data(), f.values[4].data.data(), 37 * kWidth * sizeof(T)), 0);
  EXPECT_EQ(c.prefix_tokens(), 37);
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ(c.tokens(l), 37);
  EXPECT_TRUE(c.has_values());
  for (const auto& g : c.groups()) {
    EXPECT_EQ(g.ranks().key_rank, 6);
    EXPECT_EQ(g.ranks().value_rank, 9);
  }
}

// bytes = groups' factors + uncompressed prefixes + tails; raw_bytes = every layer's tokens of K
// and V; both tracked through appends of different lengths per layer.
TYPED_TEST(Cache, ByteAccountingWithUncompressedLayersAndTails) {
  using T = TypeParam;
  const std::int64_t n = 37;
  CacheFixture<T> f(701, n, 0);
  auto& c = f.cache;
  const std::size_t s = sizeof(T);
  const std::size_t group_bytes = (std::size_t(n) * 6 + 2 * 6 * kWidth + std::size_t(n) * 9 + 2 * 9 * kWidth) * s;
  for (const auto& g : c.groups()) EXPECT_EQ(g.bytes(), group_bytes);
  std::size_t want_bytes = 2 * group_bytes + 2 * std::size_t(n) * kWidth * s;  // + layer 4's K and V
  std::size_t want_raw = std::size_t(kLayers) * n * 2 * kWidth * s;
  EXPECT_EQ(c.bytes(), want_bytes);
  EXPECT_EQ(c.raw_bytes(), want_raw);
  EXPECT_DOUBLE_EQ(c.compression_ratio(), double(want_raw) / double(want_bytes));

  Rng rng(702);
  const std::int64_t tails[kLayers] = {3, 0, 1, 5, 2};
  for (int l = 0; l < kLayers; ++l) {
    if (tails[l] == 0) continue;
    const auto k = split_layers<T>(rng.gaussian(tails[l], kWidth), 1, kHeads, kHeadDim)[0];
    const auto v = split_layers<T>(rng.gaussian(tails[l], kWidth), 1, kHeads, kHeadDim)[0];
    c.append(l, k.view(), v.view());
    want_bytes += std::size_t(tails[l]) * 2 * kWidth * s;
    want_raw += std::size_t(tails[l]) * 2 * kWidth * s;
    EXPECT_EQ(c.tokens(l), n + tails[l]);
  }
  EXPECT_EQ(c.bytes(), want_bytes);
  EXPECT_EQ(c.raw_bytes(), want_raw);
  EXPECT_DOUBLE_EQ(c.compression_ratio(), double(want_raw) / double(want_bytes));
  EXPECT_EQ(c.prefix_tokens(), n) << "appending does not grow the compressed prefix";
}

// Tokens appended in pieces (token-major and head-major) come back after the prefix, with RoPE at
// positions that continue from the prefix (offset included); the prefix is unaffected.
TYPED_TEST(Cache, TailAppendIsSeamless) {
  using T = TypeParam;
  const std::int64_t n = 29, offset = 11;
  CacheFixture<T> f(703, n, offset);
  auto& c = f.cache;
  std::vector<std::vector<float>> before_k, before_v;
  for (int l = 0; l < kLayers; ++l) {
    before_k.push_back(c.keys(l));
    before_v.push_back(c.values(l));
  }
  Rng rng(704);
  std::vector<LayerBuffer<T>> tail_k(kLayers), tail_v(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    // Three pieces: 2 tokens token-major, 1 token, 3 tokens head-major.
    const auto k = split_layers<T>(rng.gaussian(6, kWidth), 1, kHeads, kHeadDim)[0];
    const auto v = split_layers<T>(rng.gaussian(6, kWidth), 1, kHeads, kHeadDim)[0];
    tail_k[l] = k;
    tail_v[l] = v;
    c.append(l, xkv::KVView<T>::token_major(k.data.data(), 2, kHeads, kHeadDim),
             xkv::KVView<T>::token_major(v.data.data(), 2, kHeads, kHeadDim));
    c.append(l, xkv::KVView<T>::token_major(k.data.data() + 2 * kWidth, 1, kHeads, kHeadDim),
             xkv::KVView<T>::token_major(v.data.data() + 2 * kWidth, 1, kHeads, kHeadDim));
    std::vector<T> hk(3 * kWidth), hv(3 * kWidth);  // [H, 3, d]
    for (int t = 0; t < 3; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int i = 0; i < kHeadDim; ++i) {
          hk[(h * 3 + t) * kHeadDim + i] = k.data[((3 + t) * kHeads + h) * kHeadDim + i];
          hv[(h * 3 + t) * kHeadDim + i] = v.data[((3 + t) * kHeads + h) * kHeadDim + i];
        }
    c.append(l, xkv::KVView<T>::head_major(hk.data(), kHeads, 3, kHeadDim),
             xkv::KVView<T>::head_major(hv.data(), kHeads, 3, kHeadDim));
  }
  for (int l = 0; l < kLayers; ++l) {
    SCOPED_TRACE(::testing::Message() << "layer " << l);
    ASSERT_EQ(c.tokens(l), n + 6);
    ASSERT_EQ(c.tail_keys(l).size(), std::size_t(6 * kWidth));
    EXPECT_EQ(std::memcmp(c.tail_keys(l).data(), tail_k[l].data.data(), 6 * kWidth * sizeof(T)), 0);
    EXPECT_EQ(std::memcmp(c.tail_values(l).data(), tail_v[l].data.data(), 6 * kWidth * sizeof(T)), 0);
    const auto k = c.keys(l), v = c.values(l);
    ASSERT_EQ(k.size(), std::size_t((n + 6) * kWidth));
    ASSERT_EQ(v.size(), k.size());
    const std::size_t prefix = std::size_t(n) * kWidth;
    EXPECT_TRUE(std::equal(before_k[l].begin(), before_k[l].end(), k.begin())) << "prefix keys changed by append";
    EXPECT_TRUE(std::equal(before_v[l].begin(), before_v[l].end(), v.begin())) << "prefix values changed by append";
    const std::vector<float> tail_keys(k.begin() + prefix, k.end()), tail_values(v.begin() + prefix, v.end());
    EXPECT_LE(relative_difference(tail_keys, rope_rows(tail_k[l].data.data(), 6, kHeads, kHeadDim, test_rope(), offset + n)),
              1e-5);
    EXPECT_EQ(relative_difference(tail_values, rope_rows(tail_v[l].data.data(), 6, kHeads, kHeadDim,
                                                         xkv::RopeConfig::disabled(), 0)),
              0.0);
    // A range that straddles the prefix and the tail.
    const auto mid = c.keys(l, xkv::TokenSelection::range(n - 2, n + 3));
    const std::vector<float> want(k.begin() + (n - 2) * kWidth, k.begin() + (n + 3) * kWidth);
    ASSERT_EQ(mid.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(mid[i], want[i], 1e-5f * (1 + std::abs(want[i]))) << i;
  }
}

// Index lists (repeats, any order, across prefix and tail) equal the rows of the range reconstruction.
TYPED_TEST(Cache, IndexListEqualsRowsOfRange) {
  using T = TypeParam;
  const std::int64_t n = 31;
  CacheFixture<T> f(705, n, 3);
  Rng rng(706);
  for (int l = 0; l < kLayers; ++l) {
    const auto k = split_layers<T>(rng.gaussian(4, kWidth), 1, kHeads, kHeadDim)[0];
    const auto v = split_layers<T>(rng.gaussian(4, kWidth), 1, kHeads, kHeadDim)[0];
    f.cache.append(l, k.view(), v.view());
  }
  const std::vector<std::int64_t> idx = {n + 2, 0, 5, 5, n - 1, 3, n, n + 3, 0, 17};
  for (int l = 0; l < kLayers; ++l) {
    SCOPED_TRACE(::testing::Message() << "layer " << l);
    EXPECT_EQ(f.cache.selection_size(l, xkv::TokenSelection::list(idx)), std::int64_t(idx.size()));
    EXPECT_EQ(f.cache.selection_size(l, xkv::TokenSelection::all()), n + 4);
    EXPECT_EQ(f.cache.selection_size(l, xkv::TokenSelection::range(4, 9)), 5);
    for (const bool keys : {true, false}) {
      const auto all = keys ? f.cache.keys(l) : f.cache.values(l);
      const auto got = keys ? f.cache.keys(l, xkv::TokenSelection::list(idx)) : f.cache.values(l, xkv::TokenSelection::list(idx));
      ASSERT_EQ(got.size(), idx.size() * kWidth);
      for (std::size_t j = 0; j < idx.size(); ++j)
        for (int c = 0; c < kWidth; ++c) {
          const float want = all[std::size_t(idx[j]) * kWidth + c];
          EXPECT_NEAR(got[j * kWidth + c], want, 1e-5f * (1 + std::abs(want)))
              << (keys ? "keys" : "values") << " index " << idx[j] << " column " << c;
        }
    }
  }
}

// Head-major input views (HF layout, capacity larger than the fill, padding poisoned with NaN)
// give bit-identical factors to token-major views; a head-major output view receives the same
// values and its padding stays untouched.
TYPED_TEST(Cache, HeadMajorViewsMatchTokenMajor) {
  using T = TypeParam;
  const std::int64_t n = 23, capacity = 30;
  CacheFixture<T> f(707, n, 0);
  const T poison = to_storage<T>(std::numeric_limits<double>::quiet_NaN());
  std::vector<std::vector<T>> hk(kLayers), hv(kLayers);
  std::vector<xkv::KVView<T>> kv, vv;
  for (int l = 0; l < kLayers; ++l) {
    hk[l].assign(std::size_t(kHeads * capacity * kHeadDim), poison);
    hv[l].assign(hk[l].size(), poison);
    for (std::int64_t t = 0; t < n; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int i = 0; i < kHeadDim; ++i) {
          hk[l][(h * capacity + t) * kHeadDim + i] = f.keys[l].data[(t * kHeads + h) * kHeadDim + i];
          hv[l][(h * capacity + t) * kHeadDim + i] = f.values[l].data[(t * kHeads + h) * kHeadDim + i];
        }
    kv.push_back(xkv::KVView<T>::head_major(hk[l].data(), kHeads, n, kHeadDim, capacity));
    vv.push_back(xkv::KVView<T>::head_major(hv[l].data(), kHeads, n, kHeadDim, capacity));
  }
  const auto hm = xkv::CompressedCache<T>::build(f.shape(), f.options, kv, vv);
  ASSERT_EQ(hm.groups().size(), f.cache.groups().size());
  for (std::size_t g = 0; g < hm.groups().size(); ++g) {
    const auto& a = hm.groups()[g];
    const auto& b = f.cache.groups()[g];
    EXPECT_EQ(std::memcmp(a.keys.a.data(), b.keys.a.data(), a.keys.a.size() * sizeof(T)), 0) << "group " << g;
    EXPECT_EQ(std::memcmp(a.keys.b.data(), b.keys.b.data(), a.keys.b.size() * sizeof(T)), 0) << "group " << g;
    EXPECT_EQ(std::memcmp(a.values.a.data(), b.values.a.data(), a.values.a.size() * sizeof(T)), 0) << "group " << g;
  }
  for (int l = 0; l < kLayers; ++l) {
    const auto want = f.cache.keys(l);
    EXPECT_EQ(hm.keys(l), want) << "layer " << l;
    // Head-major output [H, capacity, d], poisoned first.
    std::vector<float> out(std::size_t(kHeads * capacity * kHeadDim), std::numeric_limits<float>::quiet_NaN());
    hm.reconstruct_keys(l, xkv::TokenSelection::all(),
                        xkv::MutableKVView<float>::head_major(out.data(), kHeads, n, kHeadDim, capacity));
    for (std::int64_t t = 0; t < capacity; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int i = 0; i < kHeadDim; ++i) {
          const float got = out[(h * capacity + t) * kHeadDim + i];
          if (t < n) EXPECT_EQ(got, want[(t * kHeads + h) * kHeadDim + i]) << "layer " << l << " t " << t;
          else EXPECT_TRUE(std::isnan(got)) << "padding written at layer " << l << " t " << t;
        }
  }
}

// An empty grouping keeps everything uncompressed: ratio exactly 1, keys = RoPE(input).
TYPED_TEST(Cache, NoGroupsMeansUncompressed) {
  using T = TypeParam;
  Rng rng(708);
  const std::int64_t n = 9;
  std::vector<LayerBuffer<T>> k, v;
  random_layers(rng, n, k, v, 2);
  xkv::CacheOptions options;
  options.rope = test_rope();
  const xkv::ModelShape shape{.num_layers = 2, .num_kv_heads = kHeads, .head_dim = kHeadDim};
  const auto c = xkv::CompressedCache<T>::build(shape, options, views_of(k), views_of(v));
  EXPECT_TRUE(c.groups().empty());
  EXPECT_EQ(c.bytes(), c.raw_bytes());
  EXPECT_EQ(c.compression_ratio(), 1.0);
  for (int l = 0; l < 2; ++l)
    EXPECT_LE(relative_difference(c.keys(l), rope_rows(k[l].data.data(), n, kHeads, kHeadDim, test_rope(), 0)), 1e-5);
}

// Sink tokens: the first s tokens of grouped layers are stored exact; the factors are those of
// tokens [s, n) alone, with RoPE positions continuing after the sinks; bytes count the sinks.
TYPED_TEST(Cache, SinkTokensStayExactAndTheFactorsCoverTheRest) {
  using T = TypeParam;
  const std::int64_t n = 37, offset = 5, sinks = 3;
  Rng rng(720);
  std::vector<LayerBuffer<T>> k, v;
  random_layers(rng, n, k, v);
  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(kLayers, 2, 0, 4);
  options.policy = xkv::RankPolicy::fixed(6, 9);
  options.rope = test_rope();
  options.position_offset = offset;
  options.sink_tokens = sinks;
  const auto shape = CacheFixture<T>::shape();
  auto c = xkv::CompressedCache<T>::build(shape, options, views_of(k), views_of(v));

  // Reference: the same options without sinks on tokens [sinks, n), positions shifted to match.
  std::vector<xkv::KVView<T>> rest_k = views_of(k), rest_v = views_of(v);
  for (auto* views : {&rest_k, &rest_v})
    for (auto& view : *views) {
      view.data += sinks * view.token_stride;
      view.tokens -= sinks;
    }
  xkv::CacheOptions ref_options = options;
  ref_options.sink_tokens = 0;
  ref_options.position_offset = offset + sinks;
  const auto ref = xkv::CompressedCache<T>::build(shape, ref_options, rest_k, rest_v);

  EXPECT_EQ(c.sink_tokens(), sinks);
  ASSERT_EQ(c.groups().size(), 2u);
  for (std::size_t g = 0; g < 2; ++g) {
    EXPECT_EQ(c.groups()[g].keys.a.size(), std::size_t(n - sinks) * 6);
    EXPECT_EQ(std::memcmp(c.groups()[g].keys.a.data(), ref.groups()[g].keys.a.data(), c.groups()[g].keys.a.size() * sizeof(T)), 0);
  }
  const std::size_t row_bytes = std::size_t(kWidth) * sizeof(T);
  EXPECT_EQ(c.bytes(), ref.bytes() + std::size_t(kLayers) * sinks * 2 * row_bytes)
      << "4 grouped layers' sinks plus layer 4's first tokens, keys and values";
  EXPECT_EQ(c.raw_bytes(), std::size_t(kLayers) * n * 2 * row_bytes);
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_EQ(c.sink_keys(l).size(), l < 4 ? std::size_t(sinks * kWidth) : 0u) << l;
    const auto keys = c.keys(l), values = c.values(l);
    const auto ref_keys = ref.keys(l), ref_values = ref.values(l);
    const std::size_t head = std::size_t(sinks) * kWidth;
    // Sinks (and all of layer 4) exact: keys = RoPE(input) at their positions.
    const auto exact = rope_rows(k[l].data.data(), sinks, kHeads, kHeadDim, test_rope(), offset);
    EXPECT_LE(relative_difference(std::vector<float>(keys.begin(), keys.begin() + head), exact), 1e-5) << l;
    for (std::size_t i = 0; i < head; ++i) EXPECT_EQ(values[i], float(from_storage(v[l].data[i]))) << l << " " << i;
    // The rest is exactly what the reference reconstructs.
    EXPECT_TRUE(std::equal(keys.begin() + head, keys.end(), ref_keys.begin(), ref_keys.end())) << "layer " << l;
    EXPECT_TRUE(std::equal(values.begin() + head, values.end(), ref_values.begin(), ref_values.end())) << "layer " << l;
  }

  // Index lists crossing sinks, factors and tail give the rows of the range read.
  const auto tk = split_layers<T>(rng.gaussian(2, kWidth), 1, kHeads, kHeadDim)[0];
  const auto tv = split_layers<T>(rng.gaussian(2, kWidth), 1, kHeads, kHeadDim)[0];
  c.append(1, tk.view(), tv.view());
  const auto all = c.keys(1);
  const std::vector<std::int64_t> picks = {n + 1, 0, 5, 2, n, sinks, sinks - 1};
  const auto picked = c.keys(1, xkv::TokenSelection::list(picks));
  for (std::size_t i = 0; i < picks.size(); ++i)
    for (int j = 0; j < kWidth; ++j)
      EXPECT_EQ(picked[i * kWidth + j], all[std::size_t(picks[i]) * kWidth + j]) << "pick " << i;
}

// As many sinks as tokens (or more) leaves nothing to factor: every layer is stored as it is.
TYPED_TEST(Cache, SinksCoveringThePrefixKeepEverything) {
  using T = TypeParam;
  Rng rng(721);
  const std::int64_t n = 4;
  std::vector<LayerBuffer<T>> k, v;
  random_layers(rng, n, k, v);
  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(kLayers, 2, 0, 4);
  options.rope = test_rope();
  for (const std::int64_t sinks : {n, n + 10}) {
    options.sink_tokens = sinks;
    const auto c = xkv::CompressedCache<T>::build(CacheFixture<T>::shape(), options, views_of(k), views_of(v));
    EXPECT_TRUE(c.groups().empty());
    EXPECT_EQ(c.sink_tokens(), 0);
    EXPECT_EQ(c.compression_ratio(), 1.0);
    for (int l = 0; l < kLayers; ++l)
      EXPECT_LE(relative_difference(c.keys(l), rope_rows(k[l].data.data(), n, kHeads, kHeadDim, test_rope(), 0)), 1e-6);
  }
  options.sink_tokens = -2;
  expect_error([&] { xkv::CompressedCache<T>::build(CacheFixture<T>::shape(), options, views_of(k), views_of(v)); },
               {"sink_tokens"}, {"-2"});
}

// Values narrower than keys (value_head_dim != head_dim).
TEST(CacheShapes, ValueHeadDimDiffersFromKeys) {
  Rng rng(709);
  const int layers = 2, heads = 2, dk = 12, dv = 6;
  const std::int64_t n = 20;
  std::vector<LayerBuffer<float>> k, v;
  for (int l = 0; l < layers; ++l) {
    k.push_back(split_layers<float>(rng.gaussian(n, heads * dk), 1, heads, dk)[0]);
    v.push_back(split_layers<float>(rng.gaussian(n, heads * dv), 1, heads, dv)[0]);
  }
  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(layers, 2);
  options.policy = xkv::RankPolicy::fixed(20, 20);  // full rank
  options.rope = xkv::RopeConfig::disabled();
  const xkv::ModelShape shape{.num_layers = layers, .num_kv_heads = heads, .head_dim = dk, .value_head_dim = dv};
  const auto c = xkv::CompressedCache<float>::build(shape, options, views_of(k), views_of(v));
  EXPECT_EQ(c.raw_bytes(), std::size_t(layers) * n * heads * (dk + dv) * sizeof(float));
  for (int l = 0; l < layers; ++l) {
    const auto got = c.values(l);
    ASSERT_EQ(got.size(), std::size_t(n * heads * dv));
    EXPECT_LE(relative_difference(got, rope_rows(v[l].data.data(), n, heads, dv, xkv::RopeConfig::disabled(), 0)), 1e-5);
  }
}

// MLA-like cache: one "head" of width 512 (kv_lora_rank), no values, no RoPE.
template <class T>
class MlaCache : public ::testing::Test {};
TYPED_TEST_SUITE(MlaCache, StorageTypes, StorageName);

TYPED_TEST(MlaCache, KeysOnlyLatentsCompressAndAppend) {
  using T = TypeParam;
  const int layers = 4, width = 512;
  const std::int64_t n = sized(96, 40);
  Rng rng(710);
  // Latents sharing a rank-8 token basis across layers, plus 1 % noise.
  const MatrixXd z = rng.gaussian(n, 8);
  std::vector<LayerBuffer<T>> lat;
  for (int l = 0; l < layers; ++l) {
    MatrixXd x = z * rng.gaussian(8, width);
    x += rng.gaussian(n, width) * (0.01 * x.norm() / std::sqrt(double(n) * width));
    lat.push_back(split_layers<T>(x, 1, 1, width)[0]);
  }
  const xkv::ModelShape shape{.num_layers = layers, .num_kv_heads = 1, .head_dim = width};
  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(layers, 4);
  options.policy = xkv::RankPolicy::ratio(3.0);
  options.rope = xkv::RopeConfig::disabled();
  auto c = xkv::CompressedCache<T>::build(shape, options, views_of(lat), {});
  EXPECT_FALSE(c.has_values());
  ASSERT_EQ(c.groups().size(), 1u);
  EXPECT_TRUE(c.groups()[0].values.empty());
  EXPECT_EQ(c.groups()[0].ranks().value_rank, 0);
  EXPECT_EQ(c.raw_bytes(), std::size_t(layers) * n * width * sizeof(T)) << "no values: raw is the latents only";
  EXPECT_GE(c.compression_ratio(), 3.0);
  for (int l = 0; l < layers; ++l) {
    const auto got = c.keys(l);
    EXPECT_LE(relative_difference(got, rope_rows(lat[l].data.data(), n, 1, width, xkv::RopeConfig::disabled(), 0)),
              0.03 + storage_tolerance<T>())
        << "layer " << l;
  }
  const auto extra = split_layers<T>(rng.gaussian(2, width), 1, 1, width)[0];
  c.append(1, extra.view());
  EXPECT_EQ(c.tokens(1), n + 2);
  EXPECT_EQ(c.tokens(0), n);
  const auto k = c.keys(1, xkv::TokenSelection::range(n, n + 2));
  EXPECT_EQ(relative_difference(k, rope_rows(extra.data.data(), 2, 1, width, xkv::RopeConfig::disabled(), 0)), 0.0);
  EXPECT_THROW((void)c.values(0), xkv::Error) << "a cache without values has none to reconstruct";
}

}  // namespace
}  // namespace xkv_test
