// Llama hyperparameters read from GGUF metadata, and the tensor table checked against them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xkv/kv_view.hpp"
#include "xkv/model/gguf.hpp"
#include "xkv/rope.hpp"

namespace xkv::model {

struct LlamaConfig {
  std::string architecture;  ///< general.architecture ("llama")
  std::string name;          ///< general.name, if present
  int num_layers = 0;        ///< {arch}.block_count
  int hidden = 0;            ///< {arch}.embedding_length
  int ffn_hidden = 0;        ///< {arch}.feed_forward_length
  int num_heads = 0;         ///< {arch}.attention.head_count
  int num_kv_heads = 0;      ///< {arch}.attention.head_count_kv (default: num_heads)
  int head_dim = 0;          ///< {arch}.attention.key_length (default: hidden / num_heads)
  int vocab_size = 0;        ///< rows of token_embd.weight ({arch}.vocab_size must agree if present)
  std::int64_t context_length = 0;  ///< {arch}.context_length
  double rms_eps = 0;        ///< {arch}.attention.layer_norm_rms_epsilon
  RopeConfig rope;           ///< theta {arch}.rope.freq_base, rotary dims {arch}.rope.dimension_count, interleaved pairs
  bool tied_embeddings = false;  ///< no output.weight: logits use token_embd.weight

  /// Reads and validates the hyperparameters and every tensor's presence, type and shape.
  /// Throws xkv::Error(Format) naming the key or tensor.
  static LlamaConfig from_gguf(const GgufFile& file);

  [[nodiscard]] int q_width() const { return num_heads * head_dim; }
  [[nodiscard]] int kv_width() const { return num_kv_heads * head_dim; }
  /// The KV cache's shape, as the xkv core library describes it.
  [[nodiscard]] ModelShape kv_shape() const { return {num_layers, num_kv_heads, head_dim, 0}; }
};

/// Name of layer `layer`'s tensor `suffix` ("attn_q" -> "blk.3.attn_q.weight").
std::string layer_tensor_name(int layer, const char* suffix);

}  // namespace xkv::model
