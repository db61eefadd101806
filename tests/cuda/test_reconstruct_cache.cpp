// DeviceCache: a CompressedCache uploaded to the GPU reconstructs each layer's keys (with RoPE) and
// values like the CPU cache does, for ranges and index lists that span sink tokens, the compressed
// prefix, uncompressed layers and the tail, into token-major, head-major and paged outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/test_util.hpp"
#include "xkv/compressed_cache.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/device_cache.hpp"

namespace {

using xkv::cuda::DeviceBuffer;
using xkv::cuda::OutputSpec;
using xkv_test::Rng;

template <class T>
double tolerance() {
  return std::is_same_v<T, xkv::bfloat16> ? 1e-2 : 1e-3;
}

template <class T>
struct CacheFixture {
  xkv::ModelShape shape{4, 2, 128, 0};
  std::int64_t prefix = 300, tail = 7;
  std::vector<std::vector<T>> keys, values;
  xkv::CompressedCache<T> cache;

  explicit CacheFixture(const xkv::RopeConfig& rope, std::uint64_t salt, std::int64_t sink_tokens = 0) {
    Rng rng(salt);
    // Keys with a decaying spectrum-like structure (a few strong directions plus noise) so that
    // the rank-limited factors are a realistic approximation; the check compares against the
    // CPU reconstruction of the same factors, so the approximation error does not enter.
    auto fill = [&](std::int64_t tokens) {
      std::vector<T> v(std::size_t(tokens) * shape.key_width());
      for (auto& x : v) x = T(static_cast<float>(rng.normal()));
      return v;
    };
    for (int l = 0; l < shape.num_layers; ++l) {
      keys.push_back(fill(prefix));
      values.push_back(fill(prefix));
    }
    std::vector<xkv::KVView<T>> kv, vv;
    for (int l = 0; l < shape.num_layers; ++l) {
      kv.push_back(xkv::KVView<T>::token_major(keys[l].data(), prefix, shape.num_kv_heads, shape.head_dim));
      vv.push_back(xkv::KVView<T>::token_major(values[l].data(), prefix, shape.num_kv_heads, shape.head_dim));
    }
    xkv::CacheOptions options;
    options.grouping = xkv::LayerGrouping::explicit_groups({{0, 1}, {2}});  // layer 3 stays uncompressed
    options.policy = xkv::RankPolicy::fixed(60, 100);                       // r=60, 100: not tile multiples
    options.rope = rope;
    options.position_offset = 11;
    options.sink_tokens = sink_tokens;
    cache = xkv::CompressedCache<T>::build(shape, options, kv, vv);
    for (int l = 0; l < shape.num_layers; ++l) {
      const auto tk = fill(tail), tv = fill(tail);
      cache.append(l, xkv::KVView<T>::token_major(tk.data(), tail, shape.num_kv_heads, shape.head_dim),
                   xkv::KVView<T>::token_major(tv.data(), tail, shape.num_kv_heads, shape.head_dim));
    }
  }
};

/// Reconstructs on the GPU into a poisoned token-major / head-major / paged buffer and compares
/// with the CPU cache's reconstruction of the same selection.
template <class T>
void check_layer(const xkv::CompressedCache<T>& cache, const xkv::cuda::DeviceCache<T>& device, int layer, bool keys,
                 const xkv::TokenSelection& sel, int layout, std::uint64_t salt) {
  const auto& shape = cache.shape();
  const int heads = shape.num_kv_heads, d = keys ? shape.head_dim : shape.value_dim();
  const std::int64_t count = cache.selection_size(layer, sel);
  const std::int64_t width = std::int64_t(heads) * d;
  const std::vector<float> ref = keys ? cache.keys(layer, sel) : cache.values(layer, sel);

  Rng rng(salt);
  const int page_size = 16;
  const std::int64_t pages = (count + page_size - 1) / page_size, pool = pages + 2;
  std::vector<std::int32_t> table(static_cast<std::size_t>(pool));
  std::iota(table.begin(), table.end(), 0);
  for (std::size_t i = table.size(); i > 1; --i) std::swap(table[i - 1], table[std::size_t(rng.bits() % i)]);
  table.resize(std::size_t(pages));
  DeviceBuffer<std::int32_t> table_d(table.size());
  XKV_CUDA_CHECK(cudaMemcpy(table_d.get(), table.data(), table.size() * 4, cudaMemcpyHostToDevice));

  const std::size_t elems = layout == 2 ? std::size_t(pool * page_size * width) : std::size_t(count * width);
  DeviceBuffer<T> out(elems);
  XKV_CUDA_CHECK(cudaMemset(out.get(), 0xFF, out.bytes()));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  OutputSpec spec = layout == 0   ? OutputSpec::token_major(out.get(), count, heads, d)
                    : layout == 1 ? OutputSpec::head_major(out.get(), heads, count, d)
                                  : OutputSpec::paged_pool(out.get(), pool, page_size, heads, d,
                                                           xkv::cuda::PagedLayout::NHD, table_d.get(), pages);
  if (keys)
    device.reconstruct_keys(layer, sel, spec);
  else
    device.reconstruct_values(layer, sel, spec);
  XKV_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> host(elems);
  XKV_CUDA_CHECK(cudaMemcpy(host.data(), out.get(), out.bytes(), cudaMemcpyDeviceToHost));

  double err2 = 0, ref2 = 0;
  for (std::int64_t t = 0; t < count; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < d; ++i) {
        std::size_t at = 0;
        if (layout == 0) at = std::size_t(t * width + h * d + i);
        if (layout == 1) at = std::size_t(h * count * d + t * d + i);
        if (layout == 2) at = std::size_t(table[std::size_t(t / page_size)] * page_size * width + (t % page_size) * width + h * d + i);
        const double got = static_cast<float>(host[at]);
        const double want = ref[std::size_t(t * width + h * d + i)];
        ASSERT_TRUE(std::isfinite(got)) << "layer " << layer << " t=" << t << " h=" << h << " i=" << i;
        err2 += (got - want) * (got - want);
        ref2 += want * want;
      }
  const double rel = std::sqrt(err2 / ref2);
  EXPECT_LE(rel, tolerance<T>()) << "layer " << layer << (keys ? " keys" : " values") << " layout " << layout;
}

template <class T>
class CudaDeviceCache : public ::testing::Test {};
using StorageTypes = ::testing::Types<xkv::bfloat16, xkv::half>;
TYPED_TEST_SUITE(CudaDeviceCache, StorageTypes);

TYPED_TEST(CudaDeviceCache, EveryLayerEverySelectionEveryLayout) {
  if (!xkv::cuda::device_available()) GTEST_SKIP() << "no CUDA device available";
  using T = TypeParam;
  for (auto style : {xkv::RopeStyle::HalfSplit, xkv::RopeStyle::Interleaved}) {
    xkv::RopeConfig rope;
    rope.style = style;
    rope.theta = 500000.0;
    rope.llama3 = xkv::Llama3Scaling{};
    CacheFixture<T> fx(rope, 40 + static_cast<int>(style));
    const xkv::cuda::DeviceCache<T> device(fx.cache);
    EXPECT_EQ(device.tokens(0), fx.prefix + fx.tail);
    EXPECT_GT(device.device_bytes(), 0u);
    const std::vector<std::int64_t> list = {306, 0, 299, 300, 17, 17, 305, 150, 2};  // prefix and tail, repeats
    const std::vector<std::int64_t> prefix_only = {299, 5, 5, 100};
    const std::vector<std::int64_t> tail_only = {303, 300, 303};
    std::uint64_t salt = 1;
    for (int layer = 0; layer < fx.shape.num_layers; ++layer)
      for (bool keys : {true, false})
        for (int layout : {0, 1, 2}) {
          check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::all(), layout, salt++);
          check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::range(290, 304), layout, salt++);
          check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::range(301, 307), layout, salt++);
          check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::list(list), layout, salt++);
          check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::list(prefix_only), layout, salt++);
          check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::list(tail_only), layout, salt++);
        }
  }
}

// Sink tokens: exact rows before the factors, a third segment every selection may cross.
TYPED_TEST(CudaDeviceCache, SinkTokensBeforeTheFactors) {
  if (!xkv::cuda::device_available()) GTEST_SKIP() << "no CUDA device available";
  using T = TypeParam;
  xkv::RopeConfig rope;
  rope.theta = 10000.0;
  CacheFixture<T> fx(rope, 60, 5);
  ASSERT_EQ(fx.cache.sink_tokens(), 5);
  const xkv::cuda::DeviceCache<T> device(fx.cache);
  const std::vector<std::int64_t> across = {306, 0, 4, 5, 299, 300, 2, 17, 4};
  const std::vector<std::int64_t> sinks_only = {4, 0, 4};
  std::uint64_t salt = 500;
  for (int layer = 0; layer < fx.shape.num_layers; ++layer)
    for (bool keys : {true, false})
      for (int layout : {0, 1, 2}) {
        check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::all(), layout, salt++);
        check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::range(0, 3), layout, salt++);
        check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::range(3, 9), layout, salt++);
        check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::list(across), layout, salt++);
        check_layer(fx.cache, device, layer, keys, xkv::TokenSelection::list(sinks_only), layout, salt++);
      }
}

TYPED_TEST(CudaDeviceCache, BadSelectionsAndOutputsThrow) {
  if (!xkv::cuda::device_available()) GTEST_SKIP() << "no CUDA device available";
  using T = TypeParam;
  CacheFixture<T> fx(xkv::RopeConfig{}, 7);
  const xkv::cuda::DeviceCache<T> device(fx.cache);
  DeviceBuffer<T> out(std::size_t(10) * fx.shape.key_width());
  const auto spec = OutputSpec::token_major(out.get(), 10, fx.shape.num_kv_heads, fx.shape.head_dim);
  auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "accepted; expected an error mentioning '" << needle << "'";
    } catch (const xkv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { device.reconstruct_keys(4, xkv::TokenSelection::range(0, 10), spec); }, "layer 4");
  expect_error([&] { device.reconstruct_keys(0, xkv::TokenSelection::range(300, 320), spec); }, "token range");
  const std::vector<std::int64_t> bad = {1, 307};
  expect_error([&] { device.reconstruct_keys(0, xkv::TokenSelection::list(bad), spec); }, "307");
  expect_error([&] { device.reconstruct_values(0, xkv::TokenSelection::range(0, 11), spec); }, "out.rows");
  const std::vector<std::int64_t> many(11, 3);
  expect_error([&] { device.reconstruct_keys(1, xkv::TokenSelection::list(many), spec); }, "do not fit");
}

}  // namespace
