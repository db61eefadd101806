// Bad input gets an xkv::Error that names the argument (and the offending value), never a crash
// or a silent result.
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace xkv_test {
namespace {

constexpr int kHeads = 2, kHeadDim = 4, kWidth = kHeads * kHeadDim;

template <class T>
std::vector<LayerBuffer<T>> layers(std::uint64_t salt, int count, std::int64_t tokens) {
  Rng rng(salt);
  return split_layers<T>(rng.gaussian(tokens, Eigen::Index(kWidth) * count), count, kHeads, kHeadDim);
}

template <class T>
class BadInput : public ::testing::Test {};
TYPED_TEST_SUITE(BadInput, StorageTypes, StorageName);

TYPED_TEST(BadInput, RankOutOfRange) {
  using T = TypeParam;
  const auto buf = layers<T>(800, 2, 5);  // n = 5, G*D = 16: ranks in [1, 5]
  const auto v = views_of(buf);
  const xkv::Compressor<T> c;
  expect_error([&] { (void)c.compress_stream(v, 6); }, {"rank"}, {"6"});
  expect_error([&] { (void)c.compress_stream(v, -1); }, {"rank"}, {"-1"});
  expect_error([&] { (void)c.compress(v, v, xkv::RankPolicy::fixed(0, 3)); }, {"rank"}, {"0"});
  expect_error([&] { (void)c.compress(v, v, xkv::RankPolicy::fixed(3, 0)); }, {"rank"}, {"0"});
  expect_error([&] { (void)c.compress(v, v, xkv::RankPolicy::fixed(6, 3)); }, {"rank"}, {"6"});
  expect_error([&] { (void)c.compress(v, v, xkv::RankPolicy::fixed(3, 7)); }, {"rank"}, {"7"});
  // Wide: n = 40, G*D = 16.
  const auto wide = layers<T>(801, 2, 40);
  expect_error([&] { (void)c.compress_stream(views_of(wide), 17); }, {"rank"}, {"17"});
  expect_error([&] { (void)xkv::ranks_for_shape(xkv::RankPolicy::fixed(17, 3), {40, 2, kWidth, kWidth}); },
               {"rank"}, {"17"});
}

TYPED_TEST(BadInput, MismatchedShapesAcrossAGroup) {
  using T = TypeParam;
  const xkv::Compressor<T> c;
  auto a = layers<T>(802, 1, 10)[0];
  auto b = layers<T>(803, 1, 12)[0];  // more tokens
  const std::vector<xkv::KVView<T>> tokens_differ = {a.view(), b.view()};
  expect_error([&] { (void)c.compress_stream(tokens_differ, 2); }, {"token"}, {"10", "12"});
  // Same element count, different head split.
  const std::vector<xkv::KVView<T>> heads_differ = {a.view(), xkv::KVView<T>::token_major(a.data.data(), 10, 1, 8)};
  expect_error([&] { (void)c.compress_stream(heads_differ, 2); }, {"head", "width", "shape"});
  // Keys and values with different token counts.
  const std::vector<xkv::KVView<T>> ka = {a.view()}, vb = {b.view()};
  expect_error([&] { (void)c.compress(ka, vb, xkv::RankPolicy::fixed(2, 2)); }, {"token"});
  // Keys and values with different numbers of layers.
  const std::vector<xkv::KVView<T>> two = {a.view(), a.view()};
  expect_error([&] { (void)c.compress(two, ka, xkv::RankPolicy::fixed(2, 2)); }, {"layer", "values", "size"});
}

TYPED_TEST(BadInput, NonFiniteInput) {
  using T = TypeParam;
  const xkv::Compressor<T> c;
  for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity()}) {
    auto buf = layers<T>(804, 3, 9);
    buf[1].data[17] = to_storage<T>(bad);
    expect_error([&] { (void)c.compress_stream(views_of(buf), 2); }, {"nan", "inf", "finite"});
    // Through the cache as well, in a value.
    auto keys = layers<T>(805, 2, 9);
    auto values = layers<T>(806, 2, 9);
    values[0].data[3] = to_storage<T>(bad);
    xkv::CacheOptions o;
    o.grouping = xkv::LayerGrouping::consecutive(2, 2);
    o.policy = xkv::RankPolicy::fixed(2, 2);
    const xkv::ModelShape shape{.num_layers = 2, .num_kv_heads = kHeads, .head_dim = kHeadDim};
    expect_error([&] { (void)xkv::CompressedCache<T>::build(shape, o, views_of(keys), views_of(values)); },
                 {"nan", "inf", "finite"});
  }
}

// NaN/Inf is rejected wherever it enters: an uncompressed layer's prefix and appended tokens too.
TYPED_TEST(BadInput, NonFiniteInUncompressedLayerOrTail) {
  using T = TypeParam;
  const xkv::ModelShape shape{.num_layers = 3, .num_kv_heads = kHeads, .head_dim = kHeadDim};
  xkv::CacheOptions o;
  o.grouping = xkv::LayerGrouping::explicit_groups({{0, 1}});  // layer 2 stays uncompressed
  o.policy = xkv::RankPolicy::fixed(2, 2);
  auto k = layers<T>(820, 3, 9);  // three per-layer buffers
  const auto v = layers<T>(821, 3, 9);
  k[2].data[5] = to_storage<T>(std::numeric_limits<double>::quiet_NaN());
  expect_error([&] { (void)xkv::CompressedCache<T>::build(shape, o, views_of(k), views_of(v)); },
               {"nan", "inf", "finite"});
  k[2].data[5] = to_storage<T>(1.0);
  auto cache = xkv::CompressedCache<T>::build(shape, o, views_of(k), views_of(v));
  auto bad = layers<T>(822, 1, 1)[0];
  bad.data[1] = to_storage<T>(std::numeric_limits<double>::infinity());
  const auto good = layers<T>(823, 1, 1)[0];
  for (const int layer : {0, 2}) {
    expect_error([&] { cache.append(layer, bad.view(), good.view()); }, {"nan", "inf", "finite"});
    expect_error([&] { cache.append(layer, good.view(), bad.view()); }, {"nan", "inf", "finite"});
    EXPECT_EQ(cache.tokens(layer), 9) << "a rejected append must not change the cache";
  }
}

TYPED_TEST(BadInput, ZeroTokens) {
  using T = TypeParam;
  const xkv::Compressor<T> c;
  std::vector<T> storage(kWidth);
  const std::vector<xkv::KVView<T>> empty = {xkv::KVView<T>::token_major(storage.data(), 0, kHeads, kHeadDim)};
  expect_error([&] { (void)c.compress_stream(empty, 1); }, {"token"});
  expect_error([&] { (void)c.compress(empty, empty, xkv::RankPolicy::ratio(2.0)); }, {"token"});
  expect_error([&] { (void)c.compress_stream({}, 1); }, {"layer", "empty", "group"});
}

TEST(BadInputGrouping, GroupSizeAndLayers) {
  expect_error([] { (void)xkv::LayerGrouping::consecutive(8, 0); }, {"group_size", "group size"}, {"0"});
  expect_error([] { (void)xkv::LayerGrouping::consecutive(8, -2); }, {"group_size", "group size"}, {"-2"});
  expect_error([] { xkv::LayerGrouping::consecutive(8, 2, 0, 9).validate(8); }, {"layer", "last"}, {"9"});
  expect_error([] { xkv::LayerGrouping::explicit_groups({{0, 1}, {1, 2}}).validate(4); }, {"layer"}, {"1"});
  expect_error([] { xkv::LayerGrouping::explicit_groups({{0, 0}}).validate(4); }, {"layer"}, {"0"});
  expect_error([] { xkv::LayerGrouping::explicit_groups({{0, 5}}).validate(4); }, {"layer"}, {"5"});
  expect_error([] { xkv::LayerGrouping::explicit_groups({{-1, 2}}).validate(4); }, {"layer"}, {"-1"});
  expect_error([] { xkv::LayerGrouping::explicit_groups({{0}, {}}).validate(4); }, {"empty", "group"});
}

TEST(BadInputPolicy, EnergyFractionOutsideZeroOne) {
  for (const double f : {0.0, -0.1, 1.5}) {
    std::ostringstream value;
    value << f;
    expect_error([&] { xkv::RankPolicy::energy(f).validate(); }, {"energy_fraction", "energy fraction"},
                 {value.str().c_str()});
  }
  expect_error([] { xkv::RankPolicy::energy(std::numeric_limits<double>::quiet_NaN()).validate(); },
               {"energy_fraction", "energy fraction"});
  EXPECT_NO_THROW(xkv::RankPolicy::energy(1.0).validate());
  EXPECT_NO_THROW(xkv::RankPolicy::energy(1e-9).validate());
  // Through the compressor, too.
  const auto buf = layers<float>(807, 2, 12);
  expect_error([&] { (void)xkv::Compressor<float>().compress_stream(views_of(buf), 0, 1.2); },
               {"energy_fraction", "energy fraction", "fraction"});
  expect_error([&] { (void)xkv::Compressor<float>().compress(views_of(buf), views_of(buf), xkv::RankPolicy::energy(0)); },
               {"energy_fraction", "energy fraction"});
  expect_error([] { (void)xkv::rank_for_energy(std::vector<float>{1.f}, 1.0, 0.0); }, {"fraction"});
}

TEST(BadInputPolicy, TargetRatioAtMostOneOrUnattainable) {
  for (const double t : {1.0, 0.5, -3.0}) {
    std::ostringstream value;
    value << t;
    expect_error([&] { xkv::RankPolicy::ratio(t).validate(); }, {"target_ratio", "target ratio", "ratio"},
                 {value.str().c_str()});
  }
  expect_error([] { xkv::RankPolicy::ratio(4.0, 0.0, 1.5).validate(); }, {"weight"});
  expect_error([] { xkv::RankPolicy::ratio(4.0, 1.0, -1.0).validate(); }, {"weight"});
  // n = 4, G = 1, D = 4 + 4: raw 32 elements; ranks 1/1 already store 16 (ratio 2), so 3 is unattainable.
  const xkv::GroupShape tiny{.tokens = 4, .layers = 1, .key_width = 4, .value_width = 4};
  expect_error([&] { (void)xkv::ranks_for_shape(xkv::RankPolicy::ratio(3.0), tiny); }, {"ratio"}, {"3"});
  EXPECT_NO_THROW((void)xkv::ranks_for_shape(xkv::RankPolicy::ratio(1.9), tiny));
}

TEST(BadInputOptions, CompressorOptions) {
  xkv::CompressorOptions o;
  o.oversampling = -1;
  expect_error([&] { o.validate(); }, {"oversampling"}, {"-1"});
  o = {};
  o.power_iterations = -2;
  expect_error([&] { o.validate(); }, {"power_iterations", "power iterations"}, {"-2"});
  expect_error([&] { xkv::Compressor<float> c(o); }, {"power_iterations", "power iterations"});
}

// ------------------------------------------------------------------- cache arguments

std::vector<LayerBuffer<float>> per_layer(std::uint64_t salt, int count, std::int64_t tokens) {
  std::vector<LayerBuffer<float>> out;
  Rng rng(salt);
  for (int l = 0; l < count; ++l) out.push_back(split_layers<float>(rng.gaussian(tokens, kWidth), 1, kHeads, kHeadDim)[0]);
  return out;
}

xkv::CompressedCache<float> small_cache(const std::vector<LayerBuffer<float>>& k, const std::vector<LayerBuffer<float>>& v) {
  xkv::CacheOptions o;
  o.grouping = xkv::LayerGrouping::consecutive(4, 2, 0, 2);
  o.policy = xkv::RankPolicy::fixed(3, 4);
  return xkv::CompressedCache<float>::build({.num_layers = 4, .num_kv_heads = kHeads, .head_dim = kHeadDim}, o,
                                            views_of(k), views_of(v));
}

TEST(BadInputCache, LayerIndexOutOfRange) {
  const auto k = per_layer(812, 4, 16), v = per_layer(813, 4, 16);
  auto c = small_cache(k, v);
  const auto extra = per_layer(814, 1, 1)[0];
  for (const int bad : {4, -1, 100}) {
    const std::string value = std::to_string(bad);
    expect_error([&] { (void)c.keys(bad); }, {"layer"}, {value.c_str()});
    expect_error([&] { (void)c.values(bad); }, {"layer"}, {value.c_str()});
    expect_error([&] { (void)c.tokens(bad); }, {"layer"}, {value.c_str()});
    expect_error([&] { (void)c.location(bad); }, {"layer"}, {value.c_str()});
    expect_error([&] { c.append(bad, extra.view(), extra.view()); }, {"layer"}, {value.c_str()});
  }
  // A grouping that names a layer the model does not have.
  xkv::CacheOptions o;
  o.grouping = xkv::LayerGrouping::explicit_groups({{2, 4}});
  o.policy = xkv::RankPolicy::fixed(2, 2);
  expect_error([&] {
    (void)xkv::CompressedCache<float>::build({.num_layers = 4, .num_kv_heads = kHeads, .head_dim = kHeadDim}, o,
                                             views_of(k), views_of(v));
  }, {"layer"}, {"4"});
  o.grouping = xkv::LayerGrouping::explicit_groups({{0, 1}, {1, 2}});
  expect_error([&] {
    (void)xkv::CompressedCache<float>::build({.num_layers = 4, .num_kv_heads = kHeads, .head_dim = kHeadDim}, o,
                                             views_of(k), views_of(v));
  }, {"layer"}, {"1"});
}

TEST(BadInputCache, IndexListAndRangeOutOfRange) {
  const auto k = per_layer(815, 4, 16), v = per_layer(816, 4, 16);
  auto c = small_cache(k, v);
  const auto extra = per_layer(817, 1, 2)[0];
  c.append(0, extra.view(), extra.view());  // layer 0 now holds 18 tokens, layer 2 holds 16
  for (const int layer : {0, 2}) {
    const std::int64_t count = c.tokens(layer);
    const std::vector<std::int64_t> past = {0, count};
    const std::vector<std::int64_t> negative = {3, -1};
    const std::string value = std::to_string(count);
    expect_error([&] { (void)c.keys(layer, xkv::TokenSelection::list(past)); }, {"index", "indices", "token"},
                 {value.c_str()});
    expect_error([&] { (void)c.values(layer, xkv::TokenSelection::list(negative)); }, {"index", "indices", "token"},
                 {"-1"});
    expect_error([&] { (void)c.keys(layer, xkv::TokenSelection::range(0, count + 1)); }, {"range", "end", "token"});
    expect_error([&] { (void)c.keys(layer, xkv::TokenSelection::range(5, 3)); }, {"range", "begin", "token"});
    EXPECT_NO_THROW((void)c.keys(layer, xkv::TokenSelection::list(std::vector<std::int64_t>{count - 1})));
  }
}

TEST(BadInputCache, MismatchedViewsAndOutputs) {
  const auto k = per_layer(818, 4, 16), v = per_layer(819, 4, 16);
  const xkv::ModelShape shape{.num_layers = 4, .num_kv_heads = kHeads, .head_dim = kHeadDim};
  xkv::CacheOptions o;
  o.grouping = xkv::LayerGrouping::consecutive(4, 2);
  o.policy = xkv::RankPolicy::fixed(3, 3);
  // Too few layers of keys.
  const auto three = std::vector<xkv::KVView<float>>{k[0].view(), k[1].view(), k[2].view()};
  expect_error([&] { (void)xkv::CompressedCache<float>::build(shape, o, three, views_of(v)); }, {"layer", "keys"},
               {"3"});
  // A layer whose token count differs from the others (uncompressed layer too).
  auto shorter = per_layer(820, 1, 15)[0];
  auto kv = views_of(k);
  kv[3] = shorter.view();
  expect_error([&] { (void)xkv::CompressedCache<float>::build(shape, o, kv, views_of(v)); }, {"token"}, {"15"});
  // Heads that do not match the model.
  const auto wrong = xkv::ModelShape{.num_layers = 4, .num_kv_heads = 4, .head_dim = 2};
  expect_error([&] { (void)xkv::CompressedCache<float>::build(wrong, o, views_of(k), views_of(v)); },
               {"head", "keys", "shape"}, {"4"});
  // An invalid model shape.
  expect_error([&] {
    (void)xkv::CompressedCache<float>::build({.num_layers = 0, .num_kv_heads = 2, .head_dim = 4}, o, {}, {});
  }, {"num_layers"});
  // Output view with the wrong token count, and appends of the wrong width.
  auto c = xkv::CompressedCache<float>::build(shape, o, views_of(k), views_of(v));
  std::vector<float> out(5 * kWidth);
  expect_error([&] {
    c.reconstruct_keys(0, xkv::TokenSelection::range(0, 4), xkv::MutableKVView<float>::token_major(out.data(), 5, kHeads, kHeadDim));
  }, {"out", "token"});
  std::vector<float> narrow(8);
  expect_error([&] {
    c.append(1, xkv::KVView<float>::token_major(narrow.data(), 1, 1, 8), xkv::KVView<float>::token_major(narrow.data(), 1, 1, 8));
  }, {"head", "width", "shape", "keys"}, {"8"});
  // Keys-only append to a cache that has values.
  expect_error([&] { c.append(1, k[0].view()); }, {"value"});
  // Zero tokens and NaN rope configuration.
  std::vector<float> none(kWidth);
  const std::vector<xkv::KVView<float>> empty(4, xkv::KVView<float>::token_major(none.data(), 0, kHeads, kHeadDim));
  expect_error([&] { (void)xkv::CompressedCache<float>::build(shape, o, empty, empty); }, {"token"});
  o.rope.rotary_dim = 3;
  expect_error([&] { (void)xkv::CompressedCache<float>::build(shape, o, views_of(k), views_of(v)); }, {"rotary_dim"});
}

}  // namespace
}  // namespace xkv_test
