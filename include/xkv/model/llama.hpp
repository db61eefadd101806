// Llama forward on the CPU with Eigen: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP,
// tied or separate output projection. Weights are dequantised to fp32 once, at load.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "xkv/model/config.hpp"
#include "xkv/model/gguf.hpp"
#include "xkv/model/kv_cache.hpp"
#include "xkv/model/observer.hpp"

namespace xkv::model {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Which positions' logits a forward pass returns.
enum class Logits { None, Last, All };

struct LlamaLayer {
  Eigen::VectorXf attn_norm, ffn_norm;
  RowMatrix wq, wk, wv, wo;  ///< [out x in], as stored in the file (y = x * W^T)
  RowMatrix w_gate, w_up, w_down;
};

class LlamaModel {
 public:
  /// Opens, validates and dequantises a GGUF model. Throws xkv::Error (Io / Format).
  static LlamaModel load(const std::string& path);
  static LlamaModel from_gguf(const GgufFile& file);

  [[nodiscard]] const LlamaConfig& config() const { return config_; }

  /// Runs `tokens` at positions cache.tokens(0) .. and appends their keys and values to `cache`.
  /// Returns logits [rows x vocab]: one row for Logits::Last, one per token for Logits::All.
  /// `observer`, if given, sees each layer's rotated queries (for analyses; optional).
  RowMatrix forward(std::span<const std::int32_t> tokens, KvCache& cache, Logits which = Logits::Last,
                    ForwardObserver* observer = nullptr) const;

  /// A plain cache shaped for this model.
  [[nodiscard]] PlainKvCache make_plain_cache() const { return PlainKvCache(config_.kv_shape(), config_.rope); }

  /// Bytes of the fp32 weights held.
  [[nodiscard]] std::size_t weight_bytes() const;

 private:
  LlamaConfig config_;
  RowMatrix token_embedding_;  ///< [vocab x hidden]
  RowMatrix output_;           ///< [vocab x hidden]; empty when tied to token_embedding_
  Eigen::VectorXf output_norm_;
  std::vector<LlamaLayer> layers_;
};

/// Index of the largest logit (the first on ties).
std::int32_t argmax(std::span<const float> logits);

struct GreedyOptions {
  int max_new_tokens = 32;
  std::vector<std::int32_t> stop_tokens;  ///< generation ends after emitting one of these
};

/// Greedy decoding: the first token is argmax(`last_logits`) (the prefill's last row), each
/// later one comes from a single-token forward on `cache`. Returns the generated tokens.
std::vector<std::int32_t> greedy_decode(const LlamaModel& model, KvCache& cache, std::span<const float> last_logits,
                                        const GreedyOptions& options);

/// Mean negative log-likelihood (nats/token) of tokens[1..] given their prefixes, evaluated with a
/// fresh plain cache in one forward pass; perplexity is exp() of it.
double mean_nll(const LlamaModel& model, std::span<const std::int32_t> tokens);

}  // namespace xkv::model
