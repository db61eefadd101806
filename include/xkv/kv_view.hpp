// Strided, non-owning views of one layer's keys or values: [tokens, heads, head_dim].
#pragma once

#include <cstddef>
#include <cstdint>

#include "xkv/error.hpp"

namespace xkv {

/// Shape of a model's KV cache. Caches without heads fit too: a DeepSeek-style MLA latent cache is
/// one "head" of width kv_lora_rank, with RoPE disabled and (optionally) no separate values.
struct ModelShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;        ///< width of one key head
  int value_head_dim = 0;  ///< width of one value head; 0 means "same as head_dim"

  [[nodiscard]] int key_width() const { return num_kv_heads * head_dim; }
  [[nodiscard]] int value_width() const { return num_kv_heads * (value_head_dim > 0 ? value_head_dim : head_dim); }
  [[nodiscard]] int value_dim() const { return value_head_dim > 0 ? value_head_dim : head_dim; }

  void validate() const {
    XKV_REQUIRE(num_layers > 0, "ModelShape.num_layers must be positive, got " << num_layers);
    XKV_REQUIRE(num_kv_heads > 0, "ModelShape.num_kv_heads must be positive, got " << num_kv_heads);
    XKV_REQUIRE(head_dim > 0, "ModelShape.head_dim must be positive, got " << head_dim);
    XKV_REQUIRE(value_head_dim >= 0, "ModelShape.value_head_dim must be >= 0, got " << value_head_dim);
  }
};

/// A read-only view of one layer's K or V: element (t, h, i) is at
/// data[t * token_stride + h * head_stride + i]. Token-major [n, H, d] and head-major [H, n, d]
/// (the layout HF uses) are both expressible, so neither needs a copy.
template <class T>
struct KVView {
  const T* data = nullptr;
  std::int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  std::int64_t token_stride = 0;  ///< elements between consecutive tokens
  std::int64_t head_stride = 0;   ///< elements between consecutive heads

  /// [tokens, heads, head_dim], contiguous.
  static KVView token_major(const T* data, std::int64_t tokens, int heads, int head_dim) {
    return {data, tokens, heads, head_dim, std::int64_t(heads) * head_dim, head_dim};
  }
  /// [heads, capacity, head_dim], contiguous, of which the first `tokens` tokens are viewed.
  /// `capacity` defaults to `tokens` (a cache allocated larger than its fill is common).
  static KVView head_major(const T* data, int heads, std::int64_t tokens, int head_dim, std::int64_t capacity = -1) {
    const std::int64_t cap = capacity < 0 ? tokens : capacity;
    return {data, tokens, heads, head_dim, head_dim, cap * head_dim};
  }

  [[nodiscard]] const T& operator()(std::int64_t t, int h, int i) const {
    return data[t * token_stride + h * head_stride + i];
  }
  [[nodiscard]] int width() const { return heads * head_dim; }

  /// Throws xkv::Error naming `what` if the view is unusable.
  void validate(const char* what) const {
    XKV_REQUIRE(data != nullptr || tokens == 0, what << ": null data with " << tokens << " tokens");
    XKV_REQUIRE(tokens >= 0, what << ": negative token count " << tokens);
    XKV_REQUIRE(heads > 0 && head_dim > 0,
                what << ": heads and head_dim must be positive, got heads=" << heads << " head_dim=" << head_dim);
    XKV_REQUIRE(token_stride >= 0 && head_stride >= 0,
                what << ": negative strides token_stride=" << token_stride << " head_stride=" << head_stride);
  }
};

/// A writable view with the same addressing as KVView.
template <class T>
struct MutableKVView {
  T* data = nullptr;
  std::int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;

  static MutableKVView token_major(T* data, std::int64_t tokens, int heads, int head_dim) {
    return {data, tokens, heads, head_dim, std::int64_t(heads) * head_dim, head_dim};
  }
  static MutableKVView head_major(T* data, int heads, std::int64_t tokens, int head_dim, std::int64_t capacity = -1) {
    const std::int64_t cap = capacity < 0 ? tokens : capacity;
    return {data, tokens, heads, head_dim, head_dim, cap * head_dim};
  }
  [[nodiscard]] T& operator()(std::int64_t t, int h, int i) const { return data[t * token_stride + h * head_stride + i]; }
  [[nodiscard]] KVView<T> as_const() const { return {data, tokens, heads, head_dim, token_stride, head_stride}; }
  void validate(const char* what) const { as_const().validate(what); }
};

}  // namespace xkv
