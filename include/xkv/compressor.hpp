// Cross-layer truncated SVD of one layer group: X = [K_l1 | K_l2 | ... | K_lG] ~= A * [B_l1 | ... | B_lG].
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "xkv/kv_view.hpp"
#include "xkv/rank_policy.hpp"
#include "xkv/scalar.hpp"

namespace xkv {

/// How the truncated SVD is computed.
enum class SvdMethod {
  Exact,       ///< Gram matrix (X^T X, or X X^T when n < D) + symmetric eigensolver
  Randomized,  ///< randomized subspace iteration (oversampling p, q power iterations, fixed seed)
  Auto,        ///< Randomized when the rank is small against the shape, else Exact; Exact for Energy policies
};

struct CompressorOptions {
  SvdMethod method = SvdMethod::Auto;
  int oversampling = 16;      ///< p: extra random directions
  int power_iterations = 2;   ///< q: subspace iterations
  std::uint64_t seed = 0x786b76;  ///< same seed => bit-identical output

  void validate() const;
};

/// One stream (keys or values) of a group, factored. A is shared by the group's layers; B_l is
/// per layer. A * B_l reproduces layer l's [tokens, H*d] matrix (pre-RoPE for keys).
template <class T>
struct CompressedFactor {
  std::int64_t tokens = 0;  ///< n
  int rank = 0;             ///< r
  int layers = 0;           ///< G
  int width = 0;            ///< H*d of one layer
  std::vector<T> a;         ///< [n x r], row-major
  std::vector<T> b;         ///< G blocks of [r x width], row-major; B_l starts at b_layer(l)
  std::vector<float> singular_values;  ///< the r kept singular values of X, descending
  double total_energy = 0;  ///< ||X||_F^2 (of the storage-rounded input, in fp64)
  double kept_energy = 0;   ///< sum of the kept squared singular values

  [[nodiscard]] const T* b_layer(int member) const { return b.data() + std::size_t(member) * rank * width; }
  /// Exact bytes of what reconstruction needs: A and every B_l, in the storage type.
  [[nodiscard]] std::size_t bytes() const { return (a.size() + b.size()) * sizeof(T); }
  /// Bytes of the uncompressed stream in the storage type: G * n * width.
  [[nodiscard]] std::size_t raw_bytes() const { return std::size_t(layers) * tokens * width * sizeof(T); }
  [[nodiscard]] bool empty() const { return rank == 0; }
};

/// A compressed layer group: keys and (unless the cache has none, as with MLA latents) values.
template <class T>
struct CompressedGroup {
  std::vector<int> layers;  ///< model layer indices, in member order
  CompressedFactor<T> keys;
  CompressedFactor<T> values;  ///< empty() when the group has no values

  [[nodiscard]] GroupRanks ranks() const { return {keys.rank, values.rank}; }
  [[nodiscard]] std::size_t bytes() const { return keys.bytes() + values.bytes(); }
  [[nodiscard]] std::size_t raw_bytes() const { return keys.raw_bytes() + values.raw_bytes(); }
  [[nodiscard]] double compression_ratio() const { return double(raw_bytes()) / double(bytes()); }
};

/// Compresses layer groups on the CPU. T is the storage type of inputs and factors (float,
/// xkv::half or xkv::bfloat16); all arithmetic is fp32.
template <class T>
class Compressor {
 public:
  explicit Compressor(CompressorOptions options = {});

  /// Factors one stream of a group with `rank` kept directions (rank > 0), or, when rank == 0, the
  /// smallest rank keeping `energy_fraction` of the energy. All layers must have the same shape.
  [[nodiscard]] CompressedFactor<T> compress_stream(std::span<const KVView<T>> layers, int rank,
                                                    double energy_fraction = 1.0) const;

  /// Factors a group's keys and values with ranks chosen by `policy`. `values` may be empty (no
  /// value stream). Throws xkv::Error on mismatched shapes or token counts, zero tokens, NaN/Inf,
  /// or ranks outside [1, min(n, G*D)].
  [[nodiscard]] CompressedGroup<T> compress(std::span<const KVView<T>> keys, std::span<const KVView<T>> values,
                                            const RankPolicy& policy) const;

  [[nodiscard]] const CompressorOptions& options() const { return options_; }

 private:
  CompressorOptions options_;
};

extern template class Compressor<float>;
extern template class Compressor<half>;
extern template class Compressor<bfloat16>;

}  // namespace xkv
