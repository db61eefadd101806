// MiniCache (Liu et al., NeurIPS 2024) as a comparison method: adjacent layer pairs from the
// middle of the model down are merged token by token. Each (token, head) vector pair is split
// into magnitudes and directions; the directions are SLERP-interpolated into one shared unit
// vector, and each layer is restored as shared direction * its own magnitude. Pairs whose
// angular distance is too large (the retention threshold) are kept unmerged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "xkv/model/kv_cache.hpp"

namespace xkv::eval {

struct MiniCacheOptions {
  /// First merged layer; pairs (s, s+1), (s+2, s+3), ... up to the last layer. -1: num_layers / 2,
  /// MiniCache's "middle-to-deep" default.
  int start_layer = -1;
  /// SLERP interpolation parameter t (0.5: both layers weigh the same).
  double interpolation = 0.5;
  /// gamma: with normalised angular distances d = arccos(cos) / pi of one pair of layers, vectors
  /// with d > d_min + (1 - gamma) (d_max - d_min) are retained (stored unmerged for both layers).
  /// 0 retains nothing.
  double retention_threshold = 0.05;

  void validate() const;
};

/// Result of merging one pair of [tokens x width] streams (heads of `head_dim` each).
struct MergedPair {
  std::vector<float> restored_first, restored_second;  ///< what the two layers read back
  std::int64_t merged_vectors = 0;    ///< (token, head) vectors stored as direction + 2 magnitudes
  std::int64_t retained_vectors = 0;  ///< (token, head) vectors kept unmerged
};

/// Merges two layers' rows (token-major, `heads` * `head_dim` floats per token).
MergedPair merge_layer_pair(std::span<const float> first, std::span<const float> second, std::int64_t tokens,
                            int heads, int head_dim, const MiniCacheOptions& options);

/// Unit-vector SLERP of the directions of a and b at t, written to out (all of length n).
/// Falls back to normalised linear interpolation when the angle is ~0; a zero input yields the
/// other direction.
void slerp_directions(const float* a, const float* b, int n, double t, float* out);

/// A KvCache whose prefix is MiniCache-merged (keys pre-RoPE, and values). Tokens appended after
/// construction stay uncompressed. bytes() counts what MiniCache stores in fp32: per merged
/// vector one direction + two magnitudes, per retained vector both vectors + a token index.
class MiniCacheKvCache final : public model::KvCache {
 public:
  MiniCacheKvCache(const model::PlainKvCache& plain, const MiniCacheOptions& options);

  [[nodiscard]] const ModelShape& shape() const override { return restored_.shape(); }
  [[nodiscard]] std::int64_t tokens(int layer) const override { return restored_.tokens(layer); }
  void append(int layer, const float* keys, const float* values, std::int64_t count) override;
  model::KvRead read(int layer) override { return restored_.read(layer); }
  [[nodiscard]] std::size_t bytes() const override;

  [[nodiscard]] std::size_t raw_prefix_bytes() const { return raw_prefix_bytes_; }
  [[nodiscard]] std::size_t prefix_bytes() const { return prefix_bytes_; }
  [[nodiscard]] double compression_ratio() const { return double(raw_prefix_bytes_) / double(prefix_bytes_); }
  /// Fraction of merged-layer (token, head) vectors kept unmerged, keys and values together.
  [[nodiscard]] double retained_fraction() const;

 private:
  model::PlainKvCache restored_;  // the restored prefix, then the uncompressed tail
  std::size_t raw_prefix_bytes_ = 0, prefix_bytes_ = 0, tail_bytes_ = 0;
  std::int64_t merged_vectors_ = 0, retained_vectors_ = 0;
};

}  // namespace xkv::eval
