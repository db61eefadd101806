// The usage example of the README, compiled and run. The block between the markers is copied
// verbatim into README.md (a test checks that the two match).
#include <gtest/gtest.h>

#include "test_util.hpp"

// README-EXAMPLE-BEGIN
#include <xkv/xkv.hpp>

#include <cstdint>
#include <cstdio>
#include <span>
#include <vector>

// A prefilled fp16 cache held the way HF holds it: per layer, pre-RoPE keys and values
// [kv_heads, capacity, head_dim], of which the first `tokens` are filled.
xkv::CompressedCache<xkv::half> compress_prefill(const std::vector<std::vector<xkv::half>>& keys,
                                                 const std::vector<std::vector<xkv::half>>& values,
                                                 std::int64_t tokens, std::int64_t capacity) {
  const xkv::ModelShape shape{.num_layers = 8, .num_kv_heads = 2, .head_dim = 64};

  std::vector<xkv::KVView<xkv::half>> k, v;  // strided views: nothing is copied
  for (int l = 0; l < shape.num_layers; ++l) {
    k.push_back(xkv::KVView<xkv::half>::head_major(keys[l].data(), 2, tokens, 64, capacity));
    v.push_back(xkv::KVView<xkv::half>::head_major(values[l].data(), 2, tokens, 64, capacity));
  }

  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(shape.num_layers, 4);  // groups {0..3}, {4..7}
  options.policy = xkv::RankPolicy::ratio(4.0);  // 4x fewer bytes; key:value ranks 1:1.5
  options.rope.theta = 500000.0;                 // Llama-3 RoPE, applied after reconstruction
  options.rope.llama3 = xkv::Llama3Scaling{};

  auto cache = xkv::CompressedCache<xkv::half>::build(shape, options, k, v);
  for (const auto& group : cache.groups())
    std::printf("layers %d-%d: key rank %d, value rank %d\n", group.layers.front(), group.layers.back(),
                group.ranks().key_rank, group.ranks().value_rank);
  std::printf("compression ratio %.2f\n", cache.compression_ratio());
  return cache;
}

// One decode step of layer `layer`: keep the new token uncompressed, then read the layer's keys
// back ([tokens, kv_heads, head_dim], RoPE applied at positions 0..tokens-1) and values.
void decode_step(xkv::CompressedCache<xkv::half>& cache, int layer, std::span<const xkv::half> new_key,
                 std::span<const xkv::half> new_value, std::vector<float>& keys, std::vector<float>& values) {
  cache.append(layer, xkv::KVView<xkv::half>::token_major(new_key.data(), 1, 2, 64),
               xkv::KVView<xkv::half>::token_major(new_value.data(), 1, 2, 64));
  keys = cache.keys(layer);
  values = cache.values(layer);
}
// README-EXAMPLE-END

namespace xkv_test {
namespace {

// Layers sharing a rank-24 token basis plus 2 % noise, stored head-major with spare capacity.
std::vector<std::vector<xkv::half>> shared_subspace_layers(Rng& rng, const MatrixXd& basis, std::int64_t capacity,
                                                           std::vector<LayerBuffer<xkv::half>>& token_major) {
  const Eigen::Index n = basis.rows();
  std::vector<std::vector<xkv::half>> out;
  for (int l = 0; l < 8; ++l) {
    MatrixXd x = basis * rng.gaussian(basis.cols(), 128);
    x += rng.gaussian(n, 128) * (0.02 * x.norm() / std::sqrt(double(n) * 128));
    token_major.push_back(split_layers<xkv::half>(x, 1, 2, 64)[0]);
    std::vector<xkv::half> hm(std::size_t(2 * capacity * 64), xkv::half(0.0f));
    for (Eigen::Index t = 0; t < n; ++t)
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 64; ++i) hm[std::size_t((h * capacity + t) * 64 + i)] = token_major.back().data[std::size_t((t * 2 + h) * 64 + i)];
    out.push_back(std::move(hm));
  }
  return out;
}

TEST(ReadmeExample, CompressesAndDecodes) {
  Rng rng(900);
  const std::int64_t n = sized(512, 200), capacity = n + 64;
  std::vector<LayerBuffer<xkv::half>> keys_tm, values_tm;
  const MatrixXd basis = rng.gaussian(n, 24);
  const auto keys = shared_subspace_layers(rng, basis, capacity, keys_tm);
  const auto values = shared_subspace_layers(rng, rng.gaussian(n, 24), capacity, values_tm);

  auto cache = compress_prefill(keys, values, n, capacity);
  ASSERT_EQ(cache.groups().size(), 2u);
  EXPECT_GE(cache.compression_ratio(), 4.0);
  for (const auto& g : cache.groups()) EXPECT_NEAR(g.ranks().value_rank, 1.5 * g.ranks().key_rank, 1.0);

  xkv::RopeConfig rope;
  rope.theta = 500000.0;
  rope.llama3 = xkv::Llama3Scaling{};
  const auto tail = split_layers<xkv::half>(rng.gaussian(1, 2 * 128), 2, 2, 64);  // one token's K and V
  std::vector<float> k, v;
  decode_step(cache, 5, tail[0].data, tail[1].data, k, v);
  ASSERT_EQ(k.size(), std::size_t((n + 1) * 128));
  ASSERT_EQ(v.size(), k.size());

  const std::vector<float> prefix_k(k.begin(), k.begin() + n * 128), prefix_v(v.begin(), v.begin() + n * 128);
  EXPECT_LT(relative_difference(prefix_k, rope_rows(keys_tm[5].data.data(), n, 2, 64, rope, 0)), 0.05);
  EXPECT_LT(relative_difference(prefix_v, rope_rows(values_tm[5].data.data(), n, 2, 64, xkv::RopeConfig::disabled(), 0)),
            0.05);
  const std::vector<float> last_k(k.begin() + n * 128, k.end()), last_v(v.begin() + n * 128, v.end());
  EXPECT_LT(relative_difference(last_k, rope_rows(tail[0].data.data(), 1, 2, 64, rope, n)), 1e-5);
  EXPECT_EQ(relative_difference(last_v, rope_rows(tail[1].data.data(), 1, 2, 64, xkv::RopeConfig::disabled(), 0)), 0.0);
}

}  // namespace
}  // namespace xkv_test
