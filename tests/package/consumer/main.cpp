// Compresses a small synthetic cache through the installed package and checks the result.
#include <xkv/xkv.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  const xkv::ModelShape shape{.num_layers = 4, .num_kv_heads = 2, .head_dim = 16};
  const std::int64_t tokens = 128;
  const int width = shape.key_width();

  // Keys and values of rank 4 shared by all layers: exactly representable at rank 4 per group.
  std::vector<std::vector<float>> keys(4), values(4);
  std::vector<xkv::KVView<float>> k, v;
  for (int l = 0; l < shape.num_layers; ++l) {
    keys[l].resize(std::size_t(tokens) * width);
    values[l].resize(keys[l].size());
    for (std::int64_t t = 0; t < tokens; ++t)
      for (int c = 0; c < width; ++c) {
        double x = 0, y = 0;
        for (int j = 0; j < 4; ++j) {
          x += std::sin(0.37 * (t + 1) * (j + 1)) * std::cos(0.11 * (c + 1) * (j + 2) + l);
          y += std::cos(0.23 * (t + 2) * (j + 1)) * std::sin(0.07 * (c + 3) * (j + 1) - l);
        }
        keys[l][std::size_t(t) * width + c] = float(x);
        values[l][std::size_t(t) * width + c] = float(y);
      }
    k.push_back(xkv::KVView<float>::token_major(keys[l].data(), tokens, shape.num_kv_heads, shape.head_dim));
    v.push_back(xkv::KVView<float>::token_major(values[l].data(), tokens, shape.num_kv_heads, shape.head_dim));
  }

  xkv::CacheOptions options;
  options.grouping = xkv::LayerGrouping::consecutive(shape.num_layers, 4);
  options.policy = xkv::RankPolicy::fixed(4, 4);
  options.rope = xkv::RopeConfig::disabled();
  const auto cache = xkv::CompressedCache<float>::build(shape, options, k, v);

  double err = 0, norm = 0;
  for (int l = 0; l < shape.num_layers; ++l) {
    const auto rk = cache.keys(l);
    for (std::size_t i = 0; i < rk.size(); ++i) {
      err += (rk[i] - keys[l][i]) * double(rk[i] - keys[l][i]);
      norm += double(keys[l][i]) * keys[l][i];
    }
  }
  const double rel = std::sqrt(err / norm);
  std::printf("xkv %s: compression ratio %.2f, relative key error %.2e\n", XKV_VERSION_STRING,
              cache.compression_ratio(), rel);
  if (!(rel < 1e-4) || !(cache.compression_ratio() > 4.0)) {
    std::fprintf(stderr, "unexpected result\n");
    return 1;
  }
  try {
    (void)cache.keys(shape.num_layers);
    std::fprintf(stderr, "no error for an out-of-range layer\n");
    return 1;
  } catch (const xkv::Error& e) {
    std::printf("out-of-range layer rejected: %s\n", e.what());
  }
  return 0;
}
