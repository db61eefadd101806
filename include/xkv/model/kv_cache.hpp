// Where the model's attention reads keys and values: a plain fp32 cache, or an xkv compressed
// cache. Both store pre-RoPE keys (what xkv compresses), so the two paths are comparable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "xkv/compressed_cache.hpp"
#include "xkv/kv_view.hpp"
#include "xkv/rope.hpp"

namespace xkv::model {

/// One layer's cached keys (RoPE applied) and values, token-major [tokens, kv_heads * head_dim].
struct KvRead {
  const float* keys = nullptr;
  const float* values = nullptr;
  std::int64_t tokens = 0;
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  [[nodiscard]] virtual const ModelShape& shape() const = 0;
  /// Tokens cached in `layer` (equal in every layer between forward passes).
  [[nodiscard]] virtual std::int64_t tokens(int layer) const = 0;
  /// Appends `count` tokens' pre-RoPE keys and values (token-major rows of kv_width floats) to
  /// `layer`, at positions tokens(layer) .. tokens(layer) + count - 1.
  virtual void append(int layer, const float* keys, const float* values, std::int64_t count) = 0;
  /// All of `layer`'s tokens, keys rotated at their positions. Valid until the next call on the cache.
  virtual KvRead read(int layer) = 0;
  /// Bytes the cache holds for keys and values (what a deployment would keep resident).
  [[nodiscard]] virtual std::size_t bytes() const = 0;
};

/// Uncompressed fp32 cache. Keeps the pre-RoPE keys (for compression) and a rotated copy
/// (so attention does not re-rotate the whole prefix at every step).
class PlainKvCache final : public KvCache {
 public:
  PlainKvCache(const ModelShape& shape, const RopeConfig& rope);

  [[nodiscard]] const ModelShape& shape() const override { return shape_; }
  [[nodiscard]] std::int64_t tokens(int layer) const override;
  void append(int layer, const float* keys, const float* values, std::int64_t count) override;
  KvRead read(int layer) override;
  /// Keys and values in fp32: 2 * layers * tokens * kv_width * 4 (the rotated copy is not counted:
  /// it is derived, and a deployment keeps one or the other).
  [[nodiscard]] std::size_t bytes() const override;

  /// Layer `layer`'s pre-RoPE keys and values as views, for building a compressed cache.
  [[nodiscard]] KVView<float> pre_rope_keys(int layer) const;
  [[nodiscard]] KVView<float> values(int layer) const;
  [[nodiscard]] const RopeConfig& rope() const { return rope_; }

 private:
  ModelShape shape_;
  RopeConfig rope_;
  std::vector<double> inv_freq_;
  std::vector<std::vector<float>> pre_keys_, keys_, values_;
};

/// An xkv::CompressedCache<float> behind the KvCache interface. Tokens appended after
/// compression go to the compressed cache's uncompressed tails; reads reconstruct each layer
/// (A * B_l, RoPE at each position) through the core library.
class CompressedKvCache final : public KvCache {
 public:
  /// Compresses the current contents of `plain` with `options` (options.rope is overwritten by the
  /// plain cache's RoPE so keys are rotated as the model expects).
  CompressedKvCache(const PlainKvCache& plain, CacheOptions options);

  [[nodiscard]] const ModelShape& shape() const override { return cache_.shape(); }
  [[nodiscard]] std::int64_t tokens(int layer) const override { return cache_.tokens(layer); }
  void append(int layer, const float* keys, const float* values, std::int64_t count) override;
  KvRead read(int layer) override;
  [[nodiscard]] std::size_t bytes() const override { return cache_.bytes(); }

  [[nodiscard]] const CompressedCache<float>& compressed() const { return cache_; }

 private:
  CompressedCache<float> cache_;
  std::vector<float> keys_scratch_, values_scratch_;
};

/// Rotates `count` rows of `heads` x `head_dim` at positions first_position.. (in place).
void apply_rope_rows(float* rows, std::int64_t count, int heads, int head_dim, std::int64_t first_position,
                     RopeStyle style, const std::vector<double>& inv_freq);

}  // namespace xkv::model
