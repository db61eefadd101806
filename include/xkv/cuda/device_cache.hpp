// A GPU-resident copy of an xkv::CompressedCache: each layer's keys (RoPE applied) or values are
// reconstructed on the GPU, for a token range or an index list, in one call, straight into a
// token-major, head-major or paged buffer.
//
// Includes the core cache header (and so Eigen): use from .cpp files, not from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "xkv/compressed_cache.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/reconstruct.hpp"

namespace xkv::cuda {

/// Device copy of a CompressedCache<T>, T = xkv::half or xkv::bfloat16 (the kernels' element
/// types; the output has the same type). A's rows are padded to a multiple of 8 elements so every
/// row starts 16-byte aligned; each B_l is held as given and transposed (for the wgmma kernel).
template <class T>
class DeviceCache {
 public:
  /// Uploads factors, sink tokens, uncompressed layers' prefixes and the tails. Returns when the copies are done.
  explicit DeviceCache(const CompressedCache<T>& cache, cudaStream_t stream = nullptr);

  /// Layer `layer`'s keys for `tokens`, RoPE at position options().position_offset + token, into
  /// `out`: selected token k goes to output row first_output_row + k. Throws xkv::Error on a bad
  /// layer, selection or output before anything is enqueued. Asynchronous on `stream`.
  void reconstruct_keys(int layer, const TokenSelection& tokens, const OutputSpec& out, cudaStream_t stream = nullptr,
                        std::int64_t first_output_row = 0) const;
  /// Values, without RoPE.
  void reconstruct_values(int layer, const TokenSelection& tokens, const OutputSpec& out,
                          cudaStream_t stream = nullptr, std::int64_t first_output_row = 0) const;

  /// Re-uploads every layer's tail (after CompressedCache::append). The cache must be the one this
  /// copy was made from (same shape and prefix).
  void update_tails(const CompressedCache<T>& cache, cudaStream_t stream = nullptr);

  [[nodiscard]] const ModelShape& shape() const { return shape_; }
  [[nodiscard]] const CacheOptions& options() const { return options_; }
  [[nodiscard]] std::int64_t prefix_tokens() const { return prefix_tokens_; }
  [[nodiscard]] std::int64_t tokens(int layer) const;
  [[nodiscard]] std::int64_t selection_size(int layer, const TokenSelection& tokens) const;
  /// Device memory held, in bytes.
  [[nodiscard]] std::size_t device_bytes() const;
  [[nodiscard]] static constexpr ScalarType scalar_type() {
    return std::is_same_v<T, bfloat16> ? ScalarType::BFloat16 : ScalarType::Float16;
  }

 private:
  struct Factor {  // one stream of a group on the device
    DeviceBuffer<T> a, b;
    DeviceBuffer<T> bt;  // each B_l transposed, [width x ldbt]: the wgmma kernel's operand layout
    std::int64_t tokens = 0, lda = 0, ldbt = 0;
    int rank = 0, width = 0;
  };
  struct Layer {
    int group = -1, member = -1;
    DeviceBuffer<T> prefix_keys, prefix_values;  // uncompressed layers only
    DeviceBuffer<T> sink_keys, sink_values;      // grouped layers: the exact leading tokens
    DeviceBuffer<T> tail_keys, tail_values;
    std::int64_t tail_tokens = 0;
  };

  void reconstruct(int layer, bool keys, const TokenSelection& tokens, const OutputSpec& out, cudaStream_t stream,
                   std::int64_t first_output_row) const;

  ModelShape shape_;
  CacheOptions options_;
  bool has_values_ = true;
  std::int64_t prefix_tokens_ = 0;
  std::int64_t sink_tokens_ = 0;
  std::vector<Factor> group_keys_, group_values_;
  std::vector<Layer> layers_;
};

extern template class DeviceCache<half>;
extern template class DeviceCache<bfloat16>;

}  // namespace xkv::cuda
