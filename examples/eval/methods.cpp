#include "methods.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "xkv/error.hpp"

namespace xkv::eval {

Method Method::xkv(int group_size, double ratio, double key_weight, double value_weight) {
  Method m;
  m.kind = MethodKind::Xkv;
  m.group_size = group_size;
  m.target_ratio = ratio;
  m.key_weight = key_weight;
  m.value_weight = value_weight;
  m.name = group_size == 1 ? "SVD (xKV-1)" : "xKV-" + std::to_string(group_size);
  if (key_weight != 1.0 || value_weight != 1.5) {
    std::ostringstream os;
    os << " K:V " << key_weight << ":" << value_weight;
    m.name += os.str();
  }
  return m;
}
Method Method::xkv_with_sinks(int group_size, double ratio, int sink_tokens, double key_weight, double value_weight) {
  Method m = xkv(group_size, ratio, key_weight, value_weight);
  m.sink_tokens = sink_tokens;
  m.name += " +" + std::to_string(sink_tokens) + " sink tokens";
  return m;
}
Method Method::keys_only(int group_size, double ratio) {
  Method m = xkv(group_size, ratio);
  m.kind = MethodKind::KeysOnly;
  m.name = "keys-only xKV-" + std::to_string(group_size);
  return m;
}
Method Method::values_only(int group_size, double ratio) {
  Method m = xkv(group_size, ratio);
  m.kind = MethodKind::ValuesOnly;
  m.name = "values-only xKV-" + std::to_string(group_size);
  return m;
}
Method Method::full_rank(int group_size) {
  Method m = xkv(group_size, 1.0);
  m.kind = MethodKind::FullRank;
  m.name = "full-rank xKV-" + std::to_string(group_size);
  return m;
}
Method Method::mini_cache(int start_layer, const std::string& name) {
  Method m;
  m.kind = MethodKind::MiniCache;
  m.minicache.start_layer = start_layer;
  m.name = name;
  return m;
}

std::string Method::label() const {
  std::ostringstream os;
  os << name;
  if (kind == MethodKind::Xkv || kind == MethodKind::KeysOnly || kind == MethodKind::ValuesOnly)
    os << " @" << target_ratio << "x";
  return os.str();
}

int stream_rank_for_ratio(std::int64_t tokens, int group_size, int width, double ratio) {
  XKV_REQUIRE(tokens > 0 && group_size > 0 && width > 0 && ratio > 0,
              "stream_rank_for_ratio: tokens " << tokens << ", G " << group_size << ", width " << width << ", ratio "
                                               << ratio);
  const double gd = double(group_size) * width;
  const double r = gd * double(tokens) / (ratio * (double(tokens) + gd));
  const double max_rank = std::min(double(tokens), gd);
  return static_cast<int>(std::clamp(std::floor(r), 1.0, max_rank));
}

// ------------------------------------------------------------ IncrementalCompressedKvCache
IncrementalCompressedKvCache::IncrementalCompressedKvCache(const model::PlainKvCache& plain, CacheOptions options)
    : inner_(plain, std::move(options)) {
  const auto layers = static_cast<std::size_t>(inner_.shape().num_layers);
  keys_.resize(layers);
  values_.resize(layers);
  done_.assign(layers, 0);
}

void IncrementalCompressedKvCache::append(int layer, const float* keys, const float* values, std::int64_t count) {
  inner_.append(layer, keys, values, count);
}

model::KvRead IncrementalCompressedKvCache::read(int layer) {
  const ModelShape& s = inner_.shape();
  XKV_REQUIRE(layer >= 0 && layer < s.num_layers, "read: layer " << layer << " outside [0, " << s.num_layers << ")");
  const std::int64_t n = inner_.tokens(layer);
  std::int64_t& done = done_[layer];
  if (done < n) {
    auto& k = keys_[layer];
    auto& v = values_[layer];
    k.resize(static_cast<std::size_t>(n) * s.key_width());
    v.resize(static_cast<std::size_t>(n) * s.value_width());
    const auto selection = TokenSelection::range(done, n);
    const CompressedCache<float>& c = inner_.compressed();
    c.reconstruct_keys(layer, selection,
                       MutableKVView<float>::token_major(k.data() + done * s.key_width(), n - done, s.num_kv_heads,
                                                         s.head_dim));
    c.reconstruct_values(layer, selection,
                         MutableKVView<float>::token_major(v.data() + done * s.value_width(), n - done, s.num_kv_heads,
                                                           s.value_dim()));
    done = n;
  }
  return {keys_[layer].data(), values_[layer].data(), n};
}

// ------------------------------------------------------------ OneStreamKvCache
namespace {
CacheOptions one_stream_options(const LayerGrouping& grouping, int rank, bool compress_keys) {
  CacheOptions o;
  o.grouping = grouping;
  // The other stream is factored at rank 1 only because the cache always holds both; its
  // reads are never used (the plain copy serves them) and its bytes are not counted.
  o.policy = compress_keys ? RankPolicy::fixed(rank, 1) : RankPolicy::fixed(1, rank);
  return o;
}
}  // namespace

OneStreamKvCache::OneStreamKvCache(const model::PlainKvCache& plain, const LayerGrouping& grouping, int rank,
                                   bool compress_keys)
    : compressed_(plain, one_stream_options(grouping, rank, compress_keys)), plain_(plain), compress_keys_(compress_keys) {}

void OneStreamKvCache::append(int layer, const float* keys, const float* values, std::int64_t count) {
  compressed_.append(layer, keys, values, count);
  plain_.append(layer, keys, values, count);
  const ModelShape& s = plain_.shape();
  tail_bytes_ += static_cast<std::size_t>(count) * (s.key_width() + s.value_width()) * sizeof(float);
}

model::KvRead OneStreamKvCache::read(int layer) {
  const model::KvRead c = compressed_.read(layer);
  const model::KvRead p = plain_.read(layer);
  return compress_keys_ ? model::KvRead{c.keys, p.values, p.tokens} : model::KvRead{p.keys, c.values, p.tokens};
}

namespace {
std::size_t stream_factor_bytes(const CompressedCache<float>& c, bool keys) {
  std::size_t total = 0;
  for (const auto& g : c.groups()) total += keys ? g.keys.bytes() : g.values.bytes();
  return total;
}
}  // namespace

double OneStreamKvCache::stream_ratio() const {
  const CompressedCache<float>& c = compressed();
  const ModelShape& s = c.shape();
  const double raw = double(s.num_layers) * double(c.prefix_tokens()) *
                     (compress_keys_ ? s.key_width() : s.value_width()) * sizeof(float);
  return raw / double(stream_factor_bytes(c, compress_keys_));
}

double OneStreamKvCache::prefix_ratio() const {
  const CompressedCache<float>& c = compressed();
  const ModelShape& s = c.shape();
  const double n = double(c.prefix_tokens());
  const double raw_k = s.num_layers * n * s.key_width() * sizeof(float);
  const double raw_v = s.num_layers * n * s.value_width() * sizeof(float);
  const double stored = double(stream_factor_bytes(c, compress_keys_)) + (compress_keys_ ? raw_v : raw_k);
  return (raw_k + raw_v) / stored;
}

std::size_t OneStreamKvCache::bytes() const {
  const CompressedCache<float>& c = compressed();
  const ModelShape& s = c.shape();
  const std::size_t other = static_cast<std::size_t>(s.num_layers) * c.prefix_tokens() *
                            (compress_keys_ ? s.value_width() : s.key_width()) * sizeof(float);
  return stream_factor_bytes(c, compress_keys_) + other + tail_bytes_;
}

// ------------------------------------------------------------ prepare_cache
PreparedCache prepare_cache(const Method& method, const model::PlainKvCache& prefilled) {
  const auto start = std::chrono::steady_clock::now();
  const ModelShape& s = prefilled.shape();
  const std::int64_t n = prefilled.tokens(0);
  PreparedCache out;
  const auto first_group_ranks = [&](const CompressedCache<float>& c) {
    out.key_rank = c.groups().empty() ? 0 : c.groups().front().keys.rank;
    out.value_rank = c.groups().empty() ? 0 : c.groups().front().values.rank;
  };
  switch (method.kind) {
    case MethodKind::Xkv:
    case MethodKind::FullRank: {
      CacheOptions o;
      o.grouping = LayerGrouping::consecutive(s.num_layers, method.group_size);
      if (method.kind == MethodKind::Xkv) {
        o.policy = RankPolicy::ratio(method.target_ratio, method.key_weight, method.value_weight);
        if (method.sink_tokens > 0) {
          // The target is the whole prefix's ratio, sinks included: the other n - s tokens are
          // compressed harder by what the raw sinks cost, (n - s) / (n / R - s).
          const double s = method.sink_tokens;
          const double budget = double(n) / method.target_ratio - s;
          XKV_REQUIRE(budget > 0, method.label() << ": " << method.sink_tokens << " raw sink tokens alone exceed the "
                                                 << method.target_ratio << "x budget of " << n << " tokens");
          XKV_REQUIRE(method.sink_tokens < n, method.label() << ": " << method.sink_tokens
                                                             << " sink tokens leave nothing of " << n << " to compress");
          o.policy = RankPolicy::ratio((double(n) - s) / budget, method.key_weight, method.value_weight);
          o.sink_tokens = method.sink_tokens;
        }
      } else {
        // Every group must have G layers for one fixed full rank to fit all of them.
        XKV_REQUIRE(s.num_layers % method.group_size == 0,
                    "full-rank xKV-" << method.group_size << " needs G to divide the " << s.num_layers << " layers");
        const std::int64_t gd = std::int64_t(method.group_size) * s.key_width();
        const int full = static_cast<int>(std::min<std::int64_t>(n, gd));
        o.policy = RankPolicy::fixed(full, full);
        o.compressor.method = SvdMethod::Exact;
      }
      auto cache = std::make_unique<IncrementalCompressedKvCache>(prefilled, o);
      out.prefix_ratio = out.stream_ratio = cache->compressed().compression_ratio();
      first_group_ranks(cache->compressed());
      out.cache = std::move(cache);
      break;
    }
    case MethodKind::KeysOnly:
    case MethodKind::ValuesOnly: {
      const bool keys = method.kind == MethodKind::KeysOnly;
      const int width = keys ? s.key_width() : s.value_width();
      const int rank = stream_rank_for_ratio(n, method.group_size, width, method.target_ratio);
      auto cache = std::make_unique<OneStreamKvCache>(
          prefilled, LayerGrouping::consecutive(s.num_layers, method.group_size), rank, keys);
      out.prefix_ratio = cache->prefix_ratio();
      out.stream_ratio = cache->stream_ratio();
      first_group_ranks(cache->compressed());
      if (keys) out.value_rank = 0;
      else out.key_rank = 0;
      out.cache = std::move(cache);
      break;
    }
    case MethodKind::MiniCache: {
      auto cache = std::make_unique<MiniCacheKvCache>(prefilled, method.minicache);
      out.prefix_ratio = out.stream_ratio = cache->compression_ratio();
      out.retained_fraction = cache->retained_fraction();
      out.cache = std::move(cache);
      break;
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace xkv::eval
