// An optional hook into LlamaModel::forward for analyses that need more than the logits:
// each layer's rotated queries, as attention sees them. Nothing in the forward depends on it.
#pragma once

#include <cstdint>

namespace xkv::model {

class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;

  /// Called once per layer and forward pass, after RoPE and before attention. `rotated_queries`
  /// holds `rows` token-major rows of num_heads * head_dim floats for the positions
  /// first_position .. first_position + rows - 1; it is only valid during the call.
  virtual void on_attention_queries(int layer, std::int64_t first_position, const float* rotated_queries,
                                    std::int64_t rows, int num_heads, int head_dim) = 0;
};

}  // namespace xkv::model
