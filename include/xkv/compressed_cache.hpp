// A model's whole KV cache in xKV form: compressed layer groups, uncompressed layers, and a
// per-layer tail of tokens appended after compression.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "xkv/compressor.hpp"
#include "xkv/grouping.hpp"
#include "xkv/kv_view.hpp"
#include "xkv/rank_policy.hpp"
#include "xkv/rope.hpp"

namespace xkv {

/// Which tokens to reconstruct: a half-open range [begin, end) or an arbitrary list of indices
/// (repeats and any order allowed). Indices count from the first cached token; the tail follows
/// the compressed prefix seamlessly.
struct TokenSelection {
  std::int64_t begin = 0;
  std::int64_t end = -1;  ///< -1: up to the last cached token
  std::span<const std::int64_t> indices;
  bool use_indices = false;

  static TokenSelection all() { return {}; }
  static TokenSelection range(std::int64_t begin, std::int64_t end) { return {begin, end, {}, false}; }
  static TokenSelection list(std::span<const std::int64_t> indices) { return {0, 0, indices, true}; }
};

struct CacheOptions {
  LayerGrouping grouping;          ///< empty groups: every layer uncompressed
  RankPolicy policy = RankPolicy::ratio(4.0);
  RopeConfig rope;                 ///< applied to keys on reconstruction; RopeConfig::disabled() for none
  CompressorOptions compressor;
  std::int64_t position_offset = 0;  ///< RoPE position of cached token 0
  /// Leading tokens of every grouped layer kept exact instead of factored (attention sinks): the
  /// first token of a real model draws much of every head's attention, so a small absolute error
  /// in its key or value costs far more than the same error elsewhere. They count in bytes() like
  /// any stored data; the factors cover tokens [sink_tokens, prefix), and the rank policy sees
  /// only those (a ratio policy then holds for the factored tokens, the whole cache lands a little
  /// below it). 0 (the default) factors every token, as the xKV paper does; 1 to 16 is what the
  /// published results use.
  std::int64_t sink_tokens = 0;
};

template <class T>
class CompressedCache {
 public:
  /// Compresses a prefilled cache. `keys[l]` / `values[l]` are layer l's pre-RoPE keys and values,
  /// all with the same token count. `values` may be empty when the cache has none (MLA latents).
  static CompressedCache build(const ModelShape& shape, const CacheOptions& options,
                               std::span<const KVView<T>> keys, std::span<const KVView<T>> values);

  /// Appends tokens generated after compression (pre-RoPE keys) to layer `layer`'s tail.
  void append(int layer, const KVView<T>& keys, const KVView<T>& values);
  /// Keys-only form for caches without values.
  void append(int layer, const KVView<T>& keys);

  /// Layer `layer`'s keys for `tokens`, RoPE applied at each token's position, into `out`
  /// (out.tokens must equal the selection's size; heads and head_dim the model's).
  void reconstruct_keys(int layer, const TokenSelection& tokens, const MutableKVView<float>& out) const;
  /// Values, without RoPE.
  void reconstruct_values(int layer, const TokenSelection& tokens, const MutableKVView<float>& out) const;
  /// Token-major [t, H, d] conveniences.
  [[nodiscard]] std::vector<float> keys(int layer, const TokenSelection& tokens = TokenSelection::all()) const;
  [[nodiscard]] std::vector<float> values(int layer, const TokenSelection& tokens = TokenSelection::all()) const;

  [[nodiscard]] std::int64_t prefix_tokens() const { return prefix_tokens_; }
  /// Leading prefix tokens of grouped layers held exact (min(options().sink_tokens, prefix)); A's
  /// row i is token sink_tokens() + i.
  [[nodiscard]] std::int64_t sink_tokens() const { return sink_tokens_; }
  [[nodiscard]] std::int64_t tokens(int layer) const;
  [[nodiscard]] std::int64_t selection_size(int layer, const TokenSelection& tokens) const;

  /// Bytes held: compressed factors, uncompressed layers' prefixes and all tails (storage type).
  [[nodiscard]] std::size_t bytes() const;
  /// Bytes the same tokens take uncompressed: every layer's K and V in the storage type.
  [[nodiscard]] std::size_t raw_bytes() const;
  [[nodiscard]] double compression_ratio() const { return double(raw_bytes()) / double(bytes()); }

  [[nodiscard]] const ModelShape& shape() const { return shape_; }
  [[nodiscard]] const CacheOptions& options() const { return options_; }
  [[nodiscard]] bool has_values() const { return has_values_; }
  [[nodiscard]] const std::vector<CompressedGroup<T>>& groups() const { return groups_; }

  /// Where a layer's prefix lives: in group `group` as member `member`, or uncompressed (group -1).
  struct Location {
    int group = -1;
    int member = -1;
  };
  [[nodiscard]] Location location(int layer) const;
  /// Uncompressed prefix of a layer in no group, token-major [prefix, H, d] (empty otherwise).
  [[nodiscard]] const std::vector<T>& raw_prefix_keys(int layer) const;
  [[nodiscard]] const std::vector<T>& raw_prefix_values(int layer) const;
  /// Exact leading tokens of a grouped layer, token-major [sink_tokens(), H, d] (empty otherwise).
  [[nodiscard]] const std::vector<T>& sink_keys(int layer) const;
  [[nodiscard]] const std::vector<T>& sink_values(int layer) const;
  /// Tokens appended after compression, token-major [tail, H, d].
  [[nodiscard]] const std::vector<T>& tail_keys(int layer) const;
  [[nodiscard]] const std::vector<T>& tail_values(int layer) const;

 private:
  struct LayerState {
    Location location;
    std::vector<T> prefix_keys, prefix_values;  // only for uncompressed layers
    std::vector<T> sink_keys, sink_values;      // only for grouped layers
    std::vector<T> tail_keys, tail_values;
    std::int64_t tail_tokens = 0;
  };

  void check_layer(int layer) const;
  /// Grows the cos/sin table to cover cached tokens [0, tokens).
  void extend_rope_table(std::int64_t tokens);
  void reconstruct(int layer, bool want_keys, const TokenSelection& tokens, const MutableKVView<float>& out) const;

  ModelShape shape_;
  CacheOptions options_;
  bool has_values_ = true;
  std::int64_t prefix_tokens_ = 0;
  std::int64_t sink_tokens_ = 0;
  std::vector<CompressedGroup<T>> groups_;
  std::vector<LayerState> layers_;
  std::vector<double> inv_freq_;
  // cos/sin of every (cached token, rotated pair), in fp64, so reconstruction evaluates no
  // trigonometry: derived data, not counted in bytes().
  std::vector<double> rope_cos_, rope_sin_;
};

extern template class CompressedCache<float>;
extern template class CompressedCache<half>;
extern template class CompressedCache<bfloat16>;

}  // namespace xkv
