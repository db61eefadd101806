// Plain and xkv-compressed KV caches for the Llama forward.
#include "xkv/model/kv_cache.hpp"

#include <cmath>

namespace xkv::model {

void apply_rope_rows(float* rows, std::int64_t count, int heads, int head_dim, std::int64_t first_position,
                     RopeStyle style, const std::vector<double>& inv_freq) {
  const int pairs = static_cast<int>(inv_freq.size());
  std::vector<double> cos_table(static_cast<std::size_t>(pairs)), sin_table(static_cast<std::size_t>(pairs));
  for (std::int64_t t = 0; t < count; ++t) {
    const double position = static_cast<double>(first_position + t);
    for (int i = 0; i < pairs; ++i) {
      cos_table[i] = std::cos(position * inv_freq[i]);
      sin_table[i] = std::sin(position * inv_freq[i]);
    }
    rotate_row(rows + t * std::int64_t(heads) * head_dim, heads, head_dim, style, pairs, cos_table.data(),
               sin_table.data());
  }
}

// ------------------------------------------------------------------ PlainKvCache
PlainKvCache::PlainKvCache(const ModelShape& shape, const RopeConfig& rope) : shape_(shape), rope_(rope) {
  shape_.validate();
  XKV_REQUIRE(shape_.value_head_dim == 0 || shape_.value_head_dim == shape_.head_dim,
              "PlainKvCache: value_head_dim " << shape_.value_head_dim << " must equal head_dim " << shape_.head_dim);
  inv_freq_ = rope_.enabled ? rope_.inverse_frequencies(shape_.head_dim) : std::vector<double>{};
  pre_keys_.resize(static_cast<std::size_t>(shape_.num_layers));
  keys_.resize(pre_keys_.size());
  values_.resize(pre_keys_.size());
}

std::int64_t PlainKvCache::tokens(int layer) const {
  XKV_REQUIRE(layer >= 0 && layer < shape_.num_layers,
              "PlainKvCache: layer " << layer << " outside [0, " << shape_.num_layers << ")");
  return static_cast<std::int64_t>(values_[layer].size()) / shape_.value_width();
}

void PlainKvCache::append(int layer, const float* keys, const float* values, std::int64_t count) {
  const std::int64_t first = tokens(layer);
  XKV_REQUIRE(count >= 0 && (count == 0 || (keys != nullptr && values != nullptr)),
              "PlainKvCache::append: " << count << " tokens with null data");
  const std::size_t elements = static_cast<std::size_t>(count) * shape_.key_width();
  auto& pre = pre_keys_[layer];
  auto& rotated = keys_[layer];
  pre.insert(pre.end(), keys, keys + elements);
  rotated.insert(rotated.end(), keys, keys + elements);
  values_[layer].insert(values_[layer].end(), values, values + static_cast<std::size_t>(count) * shape_.value_width());
  if (rope_.enabled)
    apply_rope_rows(rotated.data() + static_cast<std::size_t>(first) * shape_.key_width(), count, shape_.num_kv_heads,
                    shape_.head_dim, first, rope_.style, inv_freq_);
}

KvRead PlainKvCache::read(int layer) {
  return {keys_[layer].data(), values_[layer].data(), tokens(layer)};
}

std::size_t PlainKvCache::bytes() const {
  std::size_t total = 0;
  for (int l = 0; l < shape_.num_layers; ++l) total += (pre_keys_[l].size() + values_[l].size()) * sizeof(float);
  return total;
}

KVView<float> PlainKvCache::pre_rope_keys(int layer) const {
  return KVView<float>::token_major(pre_keys_[layer].data(), tokens(layer), shape_.num_kv_heads, shape_.head_dim);
}

KVView<float> PlainKvCache::values(int layer) const {
  return KVView<float>::token_major(values_[layer].data(), tokens(layer), shape_.num_kv_heads, shape_.value_dim());
}

// ------------------------------------------------------------------ CompressedKvCache
namespace {
CompressedCache<float> compress_plain(const PlainKvCache& plain, CacheOptions options) {
  const ModelShape& shape = plain.shape();
  std::vector<KVView<float>> keys, values;
  for (int l = 0; l < shape.num_layers; ++l) {
    keys.push_back(plain.pre_rope_keys(l));
    values.push_back(plain.values(l));
  }
  options.rope = plain.rope();
  options.position_offset = 0;
  return CompressedCache<float>::build(shape, options, keys, values);
}
}  // namespace

CompressedKvCache::CompressedKvCache(const PlainKvCache& plain, CacheOptions options)
    : cache_(compress_plain(plain, std::move(options))) {}

void CompressedKvCache::append(int layer, const float* keys, const float* values, std::int64_t count) {
  const ModelShape& s = cache_.shape();
  cache_.append(layer, KVView<float>::token_major(keys, count, s.num_kv_heads, s.head_dim),
                KVView<float>::token_major(values, count, s.num_kv_heads, s.value_dim()));
}

KvRead CompressedKvCache::read(int layer) {
  const ModelShape& s = cache_.shape();
  const std::int64_t n = cache_.tokens(layer);
  keys_scratch_.resize(static_cast<std::size_t>(n) * s.key_width());
  values_scratch_.resize(static_cast<std::size_t>(n) * s.value_width());
  cache_.reconstruct_keys(layer, TokenSelection::all(),
                          MutableKVView<float>::token_major(keys_scratch_.data(), n, s.num_kv_heads, s.head_dim));
  cache_.reconstruct_values(layer, TokenSelection::all(),
                            MutableKVView<float>::token_major(values_scratch_.data(), n, s.num_kv_heads, s.value_dim()));
  return {keys_scratch_.data(), values_scratch_.data(), n};
}

}  // namespace xkv::model
