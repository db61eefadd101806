// Relative error of each layer's attention output when the model reads a compressed cache
// instead of the plain one, with the same (recorded) queries: the error the cache alone causes.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <span>
#include <vector>

#include "xkv/model/kv_cache.hpp"
#include "xkv/model/llama.hpp"
#include "xkv/model/observer.hpp"

namespace xkv::eval {

using RowMatrix = model::RowMatrix;

/// Keeps every layer's rotated queries of the last observed forward pass.
class QueryRecorder final : public model::ForwardObserver {
 public:
  struct LayerQueries {
    std::int64_t first_position = 0;
    std::int64_t rows = 0;
    int num_heads = 0;
    int head_dim = 0;
    std::vector<float> queries;  ///< [rows x num_heads * head_dim]
  };

  void on_attention_queries(int layer, std::int64_t first_position, const float* rotated_queries, std::int64_t rows,
                            int num_heads, int head_dim) override;

  [[nodiscard]] int layers() const { return static_cast<int>(layers_.size()); }
  [[nodiscard]] const LayerQueries& layer(int l) const;
  [[nodiscard]] bool has(int l) const { return l >= 0 && l < layers() && layers_[l].rows > 0; }

 private:
  std::vector<LayerQueries> layers_;
};

/// Causal grouped-query attention: query row i (position first_position + i) attends to cached
/// tokens 0 .. first_position + i; query head h reads KV head h / (num_heads / num_kv_heads);
/// softmax(q k^T / sqrt(head_dim)) v, accumulated in fp64. Returns [rows x num_heads * head_dim].
/// With first_token_weight, also stores there the mean over rows and heads of the softmax weight
/// on cached token 0 (how much of the attention sinks into the first token).
RowMatrix attention_output(const float* queries, std::int64_t rows, int num_heads, int head_dim,
                           std::int64_t first_position, const model::KvRead& kv, int num_kv_heads,
                           double* first_token_weight = nullptr);

/// ||a - b||_F / ||b||_F (b the reference). Throws on shape mismatch or a zero reference.
double relative_error(const RowMatrix& a, const RowMatrix& reference);

/// Per layer: mean softmax weight of the recorded queries on token 0 of `cache`'s read.
std::vector<double> layer_first_token_attention(const QueryRecorder& recorded, model::KvCache& cache);

/// Per layer: relative error of attention over `candidate`'s read against `reference`'s read,
/// both with the queries `recorded`. Both caches must hold first_position + rows tokens.
std::vector<double> layer_attention_errors(const QueryRecorder& recorded, model::KvCache& reference,
                                           model::KvCache& candidate);

}  // namespace xkv::eval
