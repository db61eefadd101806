#include "xkv/compressed_cache.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "xkv/error.hpp"

namespace xkv {

namespace {

// Rejects NaN/Inf before anything is stored, naming the stream, token, head and dimension.
template <class T>
void check_finite(const KVView<T>& v, const char* what) {
  for (std::int64_t t = 0; t < v.tokens; ++t)
    for (int h = 0; h < v.heads; ++h)
      for (int i = 0; i < v.head_dim; ++i) {
        const float value = static_cast<float>(v(t, h, i));
        XKV_REQUIRE(std::isfinite(value), what << " contain a non-finite value (" << value << ") at token " << t
                                               << ", head " << h << ", dim " << i);
      }
}

template <class T>
void copy_token_major(const KVView<T>& v, std::vector<T>& dst) {
  const std::size_t old = dst.size();
  dst.resize(old + std::size_t(v.tokens) * v.width());
  T* out = dst.data() + old;
  for (std::int64_t t = 0; t < v.tokens; ++t)
    for (int h = 0; h < v.heads; ++h)
      for (int i = 0; i < v.head_dim; ++i) *out++ = v(t, h, i);
}

}  // namespace

template <class T>
CompressedCache<T> CompressedCache<T>::build(const ModelShape& shape, const CacheOptions& options,
                                             std::span<const KVView<T>> keys, std::span<const KVView<T>> values) {
  shape.validate();
  options.grouping.validate(shape.num_layers);
  options.policy.validate();
  options.rope.validate(shape.head_dim);
  XKV_REQUIRE(keys.size() == std::size_t(shape.num_layers),
              "keys must hold one view per layer: got " << keys.size() << " for " << shape.num_layers << " layers");
  XKV_REQUIRE(values.empty() || values.size() == std::size_t(shape.num_layers),
              "values must be empty or hold one view per layer: got " << values.size() << " for " << shape.num_layers
                                                                      << " layers");
  const std::int64_t n = keys[0].tokens;
  XKV_REQUIRE(n > 0, "cannot build a compressed cache from zero tokens");
  XKV_REQUIRE(options.sink_tokens >= 0, "CacheOptions::sink_tokens must be >= 0, got " << options.sink_tokens);
  for (int l = 0; l < shape.num_layers; ++l) {
    keys[l].validate("keys");
    XKV_REQUIRE(keys[l].heads == shape.num_kv_heads && keys[l].head_dim == shape.head_dim,
                "keys of layer " << l << " are [" << keys[l].heads << " x " << keys[l].head_dim << "], model expects ["
                                 << shape.num_kv_heads << " x " << shape.head_dim << "]");
    XKV_REQUIRE(keys[l].tokens == n, "keys of layer " << l << " have " << keys[l].tokens << " tokens, layer 0 has " << n);
    if (!values.empty()) {
      values[l].validate("values");
      XKV_REQUIRE(values[l].heads == shape.num_kv_heads && values[l].head_dim == shape.value_dim(),
                  "values of layer " << l << " are [" << values[l].heads << " x " << values[l].head_dim
                                     << "], model expects [" << shape.num_kv_heads << " x " << shape.value_dim() << "]");
      XKV_REQUIRE(values[l].tokens == n,
                  "values of layer " << l << " have " << values[l].tokens << " tokens, keys have " << n);
    }
  }

  CompressedCache cache;
  cache.shape_ = shape;
  cache.options_ = options;
  cache.has_values_ = !values.empty();
  cache.prefix_tokens_ = n;
  cache.layers_.resize(std::size_t(shape.num_layers));
  if (options.rope.enabled) cache.inv_freq_ = options.rope.inverse_frequencies(shape.head_dim);
  cache.extend_rope_table(n);

  // With every token a sink nothing is left to factor: all layers are then stored as they are.
  const std::int64_t sinks = std::min(options.sink_tokens, n);
  const bool factor = sinks < n;
  cache.sink_tokens_ = factor ? sinks : 0;
  const auto after_sinks = [&](KVView<T> v) {
    v.data += sinks * v.token_stride;
    v.tokens -= sinks;
    return v;
  };
  const auto first_tokens = [&](KVView<T> v) {
    v.tokens = sinks;
    return v;
  };
  const Compressor<T> compressor(options.compressor);
  for (std::size_t g = 0; factor && g < options.grouping.groups.size(); ++g) {
    const auto& members = options.grouping.groups[g];
    std::vector<KVView<T>> group_keys, group_values;
    for (int layer : members) {
      group_keys.push_back(after_sinks(keys[layer]));
      if (cache.has_values_) group_values.push_back(after_sinks(values[layer]));
    }
    CompressedGroup<T> group = compressor.compress(group_keys, group_values, options.policy);
    group.layers = members;
    for (std::size_t m = 0; m < members.size(); ++m) {
      LayerState& state = cache.layers_[members[m]];
      state.location = {static_cast<int>(g), static_cast<int>(m)};
      if (sinks == 0) continue;
      const int layer = members[m];
      check_finite(first_tokens(keys[layer]), "keys of sink tokens");
      copy_token_major(first_tokens(keys[layer]), state.sink_keys);
      if (cache.has_values_) {
        check_finite(first_tokens(values[layer]), "values of sink tokens");
        copy_token_major(first_tokens(values[layer]), state.sink_values);
      }
    }
    cache.groups_.push_back(std::move(group));
  }
  for (int l = 0; l < shape.num_layers; ++l) {
    LayerState& state = cache.layers_[l];
    if (state.location.group >= 0) continue;
    check_finite(keys[l], "keys of an uncompressed layer");
    if (cache.has_values_) check_finite(values[l], "values of an uncompressed layer");
    copy_token_major(keys[l], state.prefix_keys);
    if (cache.has_values_) copy_token_major(values[l], state.prefix_values);
  }
  return cache;
}

template <class T>
void CompressedCache<T>::extend_rope_table(std::int64_t tokens) {
  const std::size_t pairs = inv_freq_.size();
  const auto have = static_cast<std::int64_t>(pairs == 0 ? 0 : rope_cos_.size() / pairs);
  if (pairs == 0 || tokens <= have) return;
  rope_cos_.resize(std::size_t(tokens) * pairs);
  rope_sin_.resize(rope_cos_.size());
  for (std::int64_t t = have; t < tokens; ++t)
    for (std::size_t i = 0; i < pairs; ++i) {
      const double angle = double(options_.position_offset + t) * inv_freq_[i];
      rope_cos_[std::size_t(t) * pairs + i] = std::cos(angle);
      rope_sin_[std::size_t(t) * pairs + i] = std::sin(angle);
    }
}

template <class T>
void CompressedCache<T>::check_layer(int layer) const {
  XKV_REQUIRE(layer >= 0 && layer < shape_.num_layers,
              "layer index " << layer << " is out of range [0, " << shape_.num_layers << ")");
}

template <class T>
void CompressedCache<T>::append(int layer, const KVView<T>& keys, const KVView<T>& values) {
  check_layer(layer);
  XKV_REQUIRE(has_values_, "this cache holds no values; use append(layer, keys)");
  keys.validate("appended keys");
  values.validate("appended values");
  XKV_REQUIRE(keys.heads == shape_.num_kv_heads && keys.head_dim == shape_.head_dim,
              "appended keys are [" << keys.heads << " x " << keys.head_dim << "], model expects ["
                                    << shape_.num_kv_heads << " x " << shape_.head_dim << "]");
  XKV_REQUIRE(values.heads == shape_.num_kv_heads && values.head_dim == shape_.value_dim(),
              "appended values are [" << values.heads << " x " << values.head_dim << "], model expects ["
                                      << shape_.num_kv_heads << " x " << shape_.value_dim() << "]");
  XKV_REQUIRE(keys.tokens == values.tokens,
              "appended keys have " << keys.tokens << " tokens but values have " << values.tokens);
  check_finite(keys, "appended keys");
  check_finite(values, "appended values");
  LayerState& state = layers_[layer];
  copy_token_major(keys, state.tail_keys);
  copy_token_major(values, state.tail_values);
  state.tail_tokens += keys.tokens;
  extend_rope_table(prefix_tokens_ + state.tail_tokens);
}

template <class T>
void CompressedCache<T>::append(int layer, const KVView<T>& keys) {
  check_layer(layer);
  XKV_REQUIRE(!has_values_, "this cache holds values; use append(layer, keys, values)");
  keys.validate("appended keys");
  XKV_REQUIRE(keys.heads == shape_.num_kv_heads && keys.head_dim == shape_.head_dim,
              "appended keys are [" << keys.heads << " x " << keys.head_dim << "], model expects ["
                                    << shape_.num_kv_heads << " x " << shape_.head_dim << "]");
  check_finite(keys, "appended keys");
  LayerState& state = layers_[layer];
  copy_token_major(keys, state.tail_keys);
  state.tail_tokens += keys.tokens;
  extend_rope_table(prefix_tokens_ + state.tail_tokens);
}

template <class T>
std::int64_t CompressedCache<T>::tokens(int layer) const {
  check_layer(layer);
  return prefix_tokens_ + layers_[layer].tail_tokens;
}

template <class T>
std::int64_t CompressedCache<T>::selection_size(int layer, const TokenSelection& sel) const {
  const std::int64_t total = tokens(layer);
  if (sel.use_indices) {
    for (std::size_t i = 0; i < sel.indices.size(); ++i)
      XKV_REQUIRE(sel.indices[i] >= 0 && sel.indices[i] < total,
                  "token index list entry " << i << " is " << sel.indices[i] << ", outside [0, " << total
                                            << ") for layer " << layer);
    return static_cast<std::int64_t>(sel.indices.size());
  }
  const std::int64_t end = sel.end < 0 ? total : sel.end;
  XKV_REQUIRE(sel.begin >= 0 && sel.begin <= end && end <= total,
              "token range [" << sel.begin << ", " << end << ") is not inside [0, " << total << ") for layer "
                              << layer);
  return end - sel.begin;
}

template <class T>
void CompressedCache<T>::reconstruct(int layer, bool want_keys, const TokenSelection& sel,
                                     const MutableKVView<float>& out) const {
  const std::int64_t count = selection_size(layer, sel);
  const int heads = shape_.num_kv_heads;
  const int dim = want_keys ? shape_.head_dim : shape_.value_dim();
  const char* what = want_keys ? "key output" : "value output";
  XKV_REQUIRE(want_keys || has_values_, "this cache holds no values");
  XKV_REQUIRE(out.tokens == count && out.heads == heads && out.head_dim == dim,
              what << " view is [" << out.tokens << " x " << out.heads << " x " << out.head_dim << "], expected ["
                   << count << " x " << heads << " x " << dim << "]");
  if (count == 0) return;
  out.validate(what);
  const int width = heads * dim;
  const std::int64_t first = sel.use_indices ? 0 : sel.begin;
  auto token_at = [&](std::int64_t k) { return sel.use_indices ? sel.indices[k] : first + k; };

  // Rows of the reconstructed [count x width] matrix, row-major, in fp32.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows(count, width);
  const LayerState& state = layers_[layer];
  const std::vector<T>& tail = want_keys ? state.tail_keys : state.tail_values;
  if (state.location.group >= 0) {
    const CompressedGroup<T>& group = groups_[state.location.group];
    const CompressedFactor<T>& f = want_keys ? group.keys : group.values;
    const std::vector<T>& sinks = want_keys ? state.sink_keys : state.sink_values;
    // Sinks are copied; A's rows of the other selected prefix tokens are gathered, then one GEMM
    // against B_l.
    std::vector<std::int64_t> prefix_rows;
    for (std::int64_t k = 0; k < count; ++k) {
      const std::int64_t t = token_at(k);
      if (t < sink_tokens_) {
        for (int c = 0; c < width; ++c) rows(k, c) = static_cast<float>(sinks[std::size_t(t) * width + c]);
      } else if (t < prefix_tokens_) {
        prefix_rows.push_back(k);
      }
    }
    if (!prefix_rows.empty()) {
      Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> a(prefix_rows.size(), f.rank);
      for (std::size_t k = 0; k < prefix_rows.size(); ++k) {
        const T* src = f.a.data() + std::size_t(token_at(prefix_rows[k]) - sink_tokens_) * f.rank;
        for (int j = 0; j < f.rank; ++j) a(k, j) = static_cast<float>(src[j]);
      }
      const Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> b_stored(
          f.b_layer(state.location.member), f.rank, width);
      const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> b = b_stored.template cast<float>();
      const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> product = a * b;
      for (std::size_t k = 0; k < prefix_rows.size(); ++k) rows.row(prefix_rows[k]) = product.row(k);
    }
  } else {
    const std::vector<T>& prefix = want_keys ? state.prefix_keys : state.prefix_values;
    for (std::int64_t k = 0; k < count; ++k) {
      const std::int64_t t = token_at(k);
      if (t >= prefix_tokens_) continue;
      for (int c = 0; c < width; ++c) rows(k, c) = static_cast<float>(prefix[std::size_t(t) * width + c]);
    }
  }
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t t = token_at(k);
    if (t < prefix_tokens_) continue;
    const T* src = tail.data() + std::size_t(t - prefix_tokens_) * width;
    for (int c = 0; c < width; ++c) rows(k, c) = static_cast<float>(src[c]);
  }

  const bool rotate = want_keys && options_.rope.enabled && !inv_freq_.empty();
  const int pairs = static_cast<int>(inv_freq_.size());
  for (std::int64_t k = 0; k < count; ++k) {
    float* row = rows.row(k).data();
    if (rotate) {
      const std::size_t offset = std::size_t(token_at(k)) * pairs;
      rotate_row(row, heads, dim, options_.rope.style, pairs, rope_cos_.data() + offset, rope_sin_.data() + offset);
    }
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < dim; ++i) out(k, h, i) = row[std::size_t(h) * dim + i];
  }
}

template <class T>
void CompressedCache<T>::reconstruct_keys(int layer, const TokenSelection& tokens,
                                          const MutableKVView<float>& out) const {
  reconstruct(layer, true, tokens, out);
}

template <class T>
void CompressedCache<T>::reconstruct_values(int layer, const TokenSelection& tokens,
                                            const MutableKVView<float>& out) const {
  reconstruct(layer, false, tokens, out);
}

template <class T>
std::vector<float> CompressedCache<T>::keys(int layer, const TokenSelection& tokens) const {
  const std::int64_t count = selection_size(layer, tokens);
  std::vector<float> out(std::size_t(count) * shape_.key_width());
  reconstruct_keys(layer, tokens, MutableKVView<float>::token_major(out.data(), count, shape_.num_kv_heads, shape_.head_dim));
  return out;
}

template <class T>
std::vector<float> CompressedCache<T>::values(int layer, const TokenSelection& tokens) const {
  XKV_REQUIRE(has_values_, "this cache holds no values");
  const std::int64_t count = selection_size(layer, tokens);
  std::vector<float> out(std::size_t(count) * shape_.value_width());
  reconstruct_values(layer, tokens,
                     MutableKVView<float>::token_major(out.data(), count, shape_.num_kv_heads, shape_.value_dim()));
  return out;
}

template <class T>
std::size_t CompressedCache<T>::bytes() const {
  std::size_t total = 0;
  for (const auto& g : groups_) total += g.bytes();
  for (const auto& s : layers_)
    total += (s.prefix_keys.size() + s.prefix_values.size() + s.sink_keys.size() + s.sink_values.size() +
              s.tail_keys.size() + s.tail_values.size()) *
             sizeof(T);
  return total;
}

template <class T>
std::size_t CompressedCache<T>::raw_bytes() const {
  const std::size_t per_token = std::size_t(shape_.key_width()) + (has_values_ ? std::size_t(shape_.value_width()) : 0);
  std::size_t total = 0;
  for (int l = 0; l < shape_.num_layers; ++l) total += std::size_t(tokens(l)) * per_token * sizeof(T);
  return total;
}

template <class T>
typename CompressedCache<T>::Location CompressedCache<T>::location(int layer) const {
  check_layer(layer);
  return layers_[layer].location;
}

template <class T>
const std::vector<T>& CompressedCache<T>::raw_prefix_keys(int layer) const {
  check_layer(layer);
  return layers_[layer].prefix_keys;
}
template <class T>
const std::vector<T>& CompressedCache<T>::raw_prefix_values(int layer) const {
  check_layer(layer);
  return layers_[layer].prefix_values;
}
template <class T>
const std::vector<T>& CompressedCache<T>::sink_keys(int layer) const {
  check_layer(layer);
  return layers_[layer].sink_keys;
}
template <class T>
const std::vector<T>& CompressedCache<T>::sink_values(int layer) const {
  check_layer(layer);
  return layers_[layer].sink_values;
}
template <class T>
const std::vector<T>& CompressedCache<T>::tail_keys(int layer) const {
  check_layer(layer);
  return layers_[layer].tail_keys;
}
template <class T>
const std::vector<T>& CompressedCache<T>::tail_values(int layer) const {
  check_layer(layer);
  return layers_[layer].tail_values;
}

template class CompressedCache<float>;
template class CompressedCache<half>;
template class CompressedCache<bfloat16>;

}  // namespace xkv
