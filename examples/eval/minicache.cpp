#include "minicache.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "xkv/error.hpp"

namespace xkv::eval {

void MiniCacheOptions::validate() const {
  XKV_REQUIRE(start_layer >= -1, "MiniCacheOptions.start_layer must be >= -1, got " << start_layer);
  XKV_REQUIRE(interpolation >= 0 && interpolation <= 1,
              "MiniCacheOptions.interpolation must be in [0, 1], got " << interpolation);
  XKV_REQUIRE(retention_threshold >= 0 && retention_threshold <= 1,
              "MiniCacheOptions.retention_threshold must be in [0, 1], got " << retention_threshold);
}

namespace {
double norm_of(const float* v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(v[i]) * v[i];
  return std::sqrt(s);
}
double cosine_of(const float* a, const float* b, int n, double na, double nb) {
  if (na == 0 || nb == 0) return 1.0;  // a zero vector is restored exactly by its zero magnitude
  double dot = 0;
  for (int i = 0; i < n; ++i) dot += double(a[i]) * b[i];
  return std::clamp(dot / (na * nb), -1.0, 1.0);
}
}  // namespace

void slerp_directions(const float* a, const float* b, int n, double t, float* out) {
  const double na = norm_of(a, n), nb = norm_of(b, n);
  if (na == 0 && nb == 0) {
    std::fill(out, out + n, 0.0f);
    return;
  }
  if (na == 0 || nb == 0) {
    const float* src = na == 0 ? b : a;
    const double scale = 1.0 / (na == 0 ? nb : na);
    for (int i = 0; i < n; ++i) out[i] = static_cast<float>(src[i] * scale);
    return;
  }
  const double omega = std::acos(cosine_of(a, b, n, na, nb));
  double wa = 1 - t, wb = t;
  if (std::sin(omega) > 1e-6) {
    wa = std::sin((1 - t) * omega) / std::sin(omega);
    wb = std::sin(t * omega) / std::sin(omega);
  }
  std::vector<double> mix(static_cast<std::size_t>(n));
  double mix_norm = 0;
  for (int i = 0; i < n; ++i) {
    mix[i] = wa * a[i] / na + wb * b[i] / nb;
    mix_norm += mix[i] * mix[i];
  }
  mix_norm = std::sqrt(mix_norm);
  // Exactly opposite directions (omega = pi) have no defined midpoint: keep the first's.
  if (mix_norm < 1e-12) {
    for (int i = 0; i < n; ++i) out[i] = static_cast<float>(a[i] / na);
    return;
  }
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(mix[i] / mix_norm);
}

MergedPair merge_layer_pair(std::span<const float> first, std::span<const float> second, std::int64_t tokens, int heads,
                            int head_dim, const MiniCacheOptions& options) {
  options.validate();
  XKV_REQUIRE(tokens >= 0 && heads > 0 && head_dim > 0,
              "merge_layer_pair: tokens " << tokens << ", heads " << heads << ", head_dim " << head_dim);
  const std::size_t elements = static_cast<std::size_t>(tokens) * heads * head_dim;
  XKV_REQUIRE(first.size() == elements && second.size() == elements,
              "merge_layer_pair: expected " << elements << " floats per layer, got " << first.size() << " and "
                                            << second.size());
  const std::int64_t vectors = tokens * heads;
  std::vector<double> distance(static_cast<std::size_t>(vectors)), norm_a(distance.size()), norm_b(distance.size());
  double d_min = 1, d_max = 0;
  for (std::int64_t v = 0; v < vectors; ++v) {
    const float* a = first.data() + v * head_dim;
    const float* b = second.data() + v * head_dim;
    norm_a[v] = norm_of(a, head_dim);
    norm_b[v] = norm_of(b, head_dim);
    distance[v] = std::acos(cosine_of(a, b, head_dim, norm_a[v], norm_b[v])) / std::numbers::pi;
    d_min = std::min(d_min, distance[v]);
    d_max = std::max(d_max, distance[v]);
  }
  const double threshold = d_min + (1 - options.retention_threshold) * (d_max - d_min);
  MergedPair out;
  out.restored_first.assign(first.begin(), first.end());
  out.restored_second.assign(second.begin(), second.end());
  std::vector<float> direction(static_cast<std::size_t>(head_dim));
  for (std::int64_t v = 0; v < vectors; ++v) {
    // The floor keeps rounding noise (identical vectors give d ~ 1e-8, not 0) from counting as a
    // spread of distances: vectors that close merge losslessly anyway.
    const bool retain = options.retention_threshold > 0 && distance[v] > threshold && distance[v] > 1e-6;
    if (retain) {
      ++out.retained_vectors;
      continue;  // both layers keep their own vector
    }
    ++out.merged_vectors;
    slerp_directions(first.data() + v * head_dim, second.data() + v * head_dim, head_dim, options.interpolation,
                     direction.data());
    float* ra = out.restored_first.data() + v * head_dim;
    float* rb = out.restored_second.data() + v * head_dim;
    for (int i = 0; i < head_dim; ++i) {
      ra[i] = static_cast<float>(direction[i] * norm_a[v]);
      rb[i] = static_cast<float>(direction[i] * norm_b[v]);
    }
  }
  return out;
}

MiniCacheKvCache::MiniCacheKvCache(const model::PlainKvCache& plain, const MiniCacheOptions& options)
    : restored_(plain.shape(), plain.rope()) {
  options.validate();
  const ModelShape& s = plain.shape();
  XKV_REQUIRE(options.start_layer < s.num_layers,
              "MiniCacheOptions.start_layer " << options.start_layer << " must be below num_layers " << s.num_layers);
  const int start = options.start_layer < 0 ? s.num_layers / 2 : options.start_layer;
  const std::int64_t n = plain.tokens(0);
  const std::size_t key_elems = static_cast<std::size_t>(n) * s.key_width();
  const std::size_t value_elems = static_cast<std::size_t>(n) * s.value_width();
  raw_prefix_bytes_ = static_cast<std::size_t>(s.num_layers) * (key_elems + value_elems) * sizeof(float);

  const auto flat = [](const KVView<float>& v) { return std::span<const float>(v.data, std::size_t(v.tokens) * v.width()); };
  std::size_t stored_floats = 0, stored_indices = 0;
  int layer = 0;
  for (; layer < start; ++layer) {
    restored_.append(layer, plain.pre_rope_keys(layer).data, plain.values(layer).data, n);
    stored_floats += key_elems + value_elems;
  }
  for (; layer + 1 < s.num_layers; layer += 2) {
    const MergedPair keys = merge_layer_pair(flat(plain.pre_rope_keys(layer)), flat(plain.pre_rope_keys(layer + 1)), n,
                                             s.num_kv_heads, s.head_dim, options);
    const MergedPair values = merge_layer_pair(flat(plain.values(layer)), flat(plain.values(layer + 1)), n,
                                               s.num_kv_heads, s.value_dim(), options);
    restored_.append(layer, keys.restored_first.data(), values.restored_first.data(), n);
    restored_.append(layer + 1, keys.restored_second.data(), values.restored_second.data(), n);
    stored_floats += static_cast<std::size_t>(keys.merged_vectors) * (s.head_dim + 2) +
                     static_cast<std::size_t>(keys.retained_vectors) * 2 * s.head_dim +
                     static_cast<std::size_t>(values.merged_vectors) * (s.value_dim() + 2) +
                     static_cast<std::size_t>(values.retained_vectors) * 2 * s.value_dim();
    stored_indices += static_cast<std::size_t>(keys.retained_vectors + values.retained_vectors);
    merged_vectors_ += keys.merged_vectors + values.merged_vectors;
    retained_vectors_ += keys.retained_vectors + values.retained_vectors;
  }
  for (; layer < s.num_layers; ++layer) {  // an odd layer out stays as it is
    restored_.append(layer, plain.pre_rope_keys(layer).data, plain.values(layer).data, n);
    stored_floats += key_elems + value_elems;
  }
  prefix_bytes_ = stored_floats * sizeof(float) + stored_indices * sizeof(std::int32_t);
}

void MiniCacheKvCache::append(int layer, const float* keys, const float* values, std::int64_t count) {
  restored_.append(layer, keys, values, count);
  const ModelShape& s = restored_.shape();
  tail_bytes_ += static_cast<std::size_t>(count) * (s.key_width() + s.value_width()) * sizeof(float);
}

std::size_t MiniCacheKvCache::bytes() const { return prefix_bytes_ + tail_bytes_; }

double MiniCacheKvCache::retained_fraction() const {
  const std::int64_t total = merged_vectors_ + retained_vectors_;
  return total == 0 ? 0.0 : double(retained_vectors_) / double(total);
}

}  // namespace xkv::eval
