// The compression methods the evaluation compares, each turned into a KvCache built from a
// prefilled plain cache: xKV-G at a target ratio, keys-only / values-only xKV, full-rank xKV
// (a correctness check), and MiniCache.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "minicache.hpp"
#include "xkv/compressed_cache.hpp"
#include "xkv/model/kv_cache.hpp"

namespace xkv::eval {

enum class MethodKind { Xkv, KeysOnly, ValuesOnly, FullRank, MiniCache };

struct Method {
  MethodKind kind = MethodKind::Xkv;
  int group_size = 1;         ///< G (xKV kinds)
  double target_ratio = 4.0;  ///< Xkv: whole cache; KeysOnly/ValuesOnly: the compressed stream's
  double key_weight = 1.0, value_weight = 1.5;  ///< Xkv: K:V rank split (the paper's default 1:1.5)
  int sink_tokens = 0;        ///< Xkv: the first tokens kept uncompressed (attention sinks); 0: none
  MiniCacheOptions minicache;
  std::string name;           ///< short family name for tables ("xKV-4", "keys-only xKV-4", "MiniCache")

  static Method xkv(int group_size, double ratio, double key_weight = 1.0, double value_weight = 1.5);
  static Method keys_only(int group_size, double ratio);
  static Method values_only(int group_size, double ratio);
  static Method full_rank(int group_size);
  /// xKV with the first `sink_tokens` tokens kept exact (CacheOptions::sink_tokens; not part of
  /// the paper's method), the target ratio holding for the whole prefix, sinks included.
  static Method xkv_with_sinks(int group_size, double ratio, int sink_tokens, double key_weight = 1.0,
                               double value_weight = 1.5);
  static Method mini_cache(int start_layer, const std::string& name);
  /// "xKV-4 @6.4x", "xKV-4 K:V 1:3 @6.4x" and the like.
  [[nodiscard]] std::string label() const;
};

/// An xkv compressed cache whose read() reconstructs each token once: the prefix at the first
/// read, later only the newly appended tail rows. The values attention sees are exactly those
/// of CompressedKvCache::read (reconstruction is row by row); decoding just avoids rebuilding
/// the whole prefix at every step.
class IncrementalCompressedKvCache final : public model::KvCache {
 public:
  IncrementalCompressedKvCache(const model::PlainKvCache& plain, CacheOptions options);

  [[nodiscard]] const ModelShape& shape() const override { return inner_.shape(); }
  [[nodiscard]] std::int64_t tokens(int layer) const override { return inner_.tokens(layer); }
  void append(int layer, const float* keys, const float* values, std::int64_t count) override;
  model::KvRead read(int layer) override;
  [[nodiscard]] std::size_t bytes() const override { return inner_.bytes(); }
  [[nodiscard]] const CompressedCache<float>& compressed() const { return inner_.compressed(); }

 private:
  model::CompressedKvCache inner_;
  std::vector<std::vector<float>> keys_, values_;
  std::vector<std::int64_t> done_;
};

/// One stream compressed with xKV, the other kept as it is (keys-only / values-only variants).
class OneStreamKvCache final : public model::KvCache {
 public:
  /// `compress_keys`: keys compressed at `rank` per group, values plain; otherwise the reverse.
  OneStreamKvCache(const model::PlainKvCache& plain, const LayerGrouping& grouping, int rank, bool compress_keys);

  [[nodiscard]] const ModelShape& shape() const override { return plain_.shape(); }
  [[nodiscard]] std::int64_t tokens(int layer) const override { return plain_.tokens(layer); }
  void append(int layer, const float* keys, const float* values, std::int64_t count) override;
  model::KvRead read(int layer) override;
  [[nodiscard]] std::size_t bytes() const override;
  /// Raw bytes of the compressed stream's prefix over its factors' bytes.
  [[nodiscard]] double stream_ratio() const;
  [[nodiscard]] double prefix_ratio() const;
  [[nodiscard]] const CompressedCache<float>& compressed() const { return compressed_.compressed(); }

 private:
  IncrementalCompressedKvCache compressed_;
  model::PlainKvCache plain_;
  bool compress_keys_;
  std::size_t tail_bytes_ = 0;
};

/// A method's cache over a prefilled plain cache, with what it stores.
struct PreparedCache {
  std::unique_ptr<model::KvCache> cache;
  double prefix_ratio = 1;   ///< raw K+V bytes of the compressed prefix / bytes stored for it
  double stream_ratio = 1;   ///< keys-only / values-only: the compressed stream's own ratio
  int key_rank = 0, value_rank = 0;  ///< of the first group (xKV kinds); 0 when not compressed
  double retained_fraction = 0;      ///< MiniCache: vectors kept unmerged
  double seconds = 0;                ///< time to build
};

PreparedCache prepare_cache(const Method& method, const model::PlainKvCache& prefilled);

/// The per-group rank that brings one stream of a G-layer group of n tokens and width D to
/// `ratio`: floor(G n D / (ratio (n + G D))), clamped to [1, min(n, G D)].
int stream_rank_for_ratio(std::int64_t tokens, int group_size, int width, double ratio);

}  // namespace xkv::eval
