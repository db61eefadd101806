// DeviceCache: upload of a CompressedCache and per-layer GPU reconstruction through the fused kernels.
#include "xkv/cuda/device_cache.hpp"

#include <algorithm>
#include <cstring>

#include "xkv/cuda/check.hpp"

namespace xkv::cuda {

namespace {

template <class T>
DeviceBuffer<T> upload_rows(const std::vector<T>& host, cudaStream_t stream) {
  DeviceBuffer<T> buf(host.size());
  if (!host.empty())
    XKV_CUDA_CHECK(cudaMemcpyAsync(buf.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
  return buf;
}

/// A device copy of a host array of int64, freed in stream order after the kernels that read it.
class StreamArray {
 public:
  StreamArray(const std::vector<std::int64_t>& host, cudaStream_t stream) : stream_(stream) {
    if (host.empty()) return;
    XKV_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), host.size() * sizeof(std::int64_t), stream));
    // From pageable memory the call returns once the data is staged, so `host` may go away after it.
    XKV_CUDA_CHECK(
        cudaMemcpyAsync(ptr_, host.data(), host.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));
  }
  ~StreamArray() {
    if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
  }
  StreamArray(const StreamArray&) = delete;
  StreamArray& operator=(const StreamArray&) = delete;
  [[nodiscard]] const std::int64_t* get() const { return ptr_; }

 private:
  std::int64_t* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace

template <class T>
DeviceCache<T>::DeviceCache(const CompressedCache<T>& cache, cudaStream_t stream)
    : shape_(cache.shape()),
      options_(cache.options()),
      has_values_(cache.has_values()),
      prefix_tokens_(cache.prefix_tokens()),
      sink_tokens_(cache.sink_tokens()) {
  static_assert(std::is_same_v<T, half> || std::is_same_v<T, bfloat16>, "DeviceCache holds fp16 or bf16");
  static_assert(sizeof(T) == 2, "16-bit storage");
  for (const int d : {shape_.head_dim, shape_.value_dim()})
    XKV_REQUIRE(d == 64 || d == 128 || d == 256,
                "DeviceCache: the GPU kernels need head dims of 64, 128 or 256, got " << d);

  auto upload_factor = [&](const CompressedFactor<T>& f) {
    Factor out;
    if (f.empty()) return out;
    out.tokens = f.tokens;
    out.rank = f.rank;
    out.width = f.width;
    out.lda = (f.rank + 7) / 8 * 8;
    out.a = DeviceBuffer<T>(std::size_t(f.tokens) * out.lda);
    XKV_CUDA_CHECK(cudaMemsetAsync(out.a.get(), 0, out.a.bytes(), stream));  // zero padding columns
    XKV_CUDA_CHECK(cudaMemcpy2DAsync(out.a.get(), out.lda * sizeof(T), f.a.data(), f.rank * sizeof(T),
                                     f.rank * sizeof(T), f.tokens, cudaMemcpyHostToDevice, stream));
    out.b = upload_rows(f.b, stream);
    out.ldbt = out.lda;
    std::vector<T> transposed(std::size_t(f.layers) * f.width * out.ldbt, T(0.0f));
    for (int l = 0; l < f.layers; ++l) {
      const T* block = f.b_layer(l);
      T* dst = transposed.data() + std::size_t(l) * f.width * out.ldbt;
      for (int k = 0; k < f.rank; ++k)
        for (int c = 0; c < f.width; ++c) dst[std::size_t(c) * out.ldbt + k] = block[std::size_t(k) * f.width + c];
    }
    out.bt = upload_rows(transposed, stream);
    XKV_CUDA_CHECK(cudaStreamSynchronize(stream));  // `transposed` is pageable and goes out of scope
    return out;
  };
  for (const CompressedGroup<T>& g : cache.groups()) {
    group_keys_.push_back(upload_factor(g.keys));
    group_values_.push_back(upload_factor(g.values));
  }
  layers_.resize(std::size_t(shape_.num_layers));
  for (int l = 0; l < shape_.num_layers; ++l) {
    const auto loc = cache.location(l);
    Layer& layer = layers_[l];
    layer.group = loc.group;
    layer.member = loc.member;
    if (loc.group < 0) {
      layer.prefix_keys = upload_rows(cache.raw_prefix_keys(l), stream);
      if (has_values_) layer.prefix_values = upload_rows(cache.raw_prefix_values(l), stream);
    } else {
      layer.sink_keys = upload_rows(cache.sink_keys(l), stream);
      if (has_values_) layer.sink_values = upload_rows(cache.sink_values(l), stream);
    }
  }
  update_tails(cache, stream);
}

template <class T>
void DeviceCache<T>::update_tails(const CompressedCache<T>& cache, cudaStream_t stream) {
  XKV_REQUIRE(cache.shape().num_layers == shape_.num_layers && cache.prefix_tokens() == prefix_tokens_,
              "DeviceCache::update_tails: the cache has " << cache.shape().num_layers << " layers and "
                                                          << cache.prefix_tokens() << " prefix tokens, this copy "
                                                          << shape_.num_layers << " and " << prefix_tokens_);
  for (int l = 0; l < shape_.num_layers; ++l) {
    Layer& layer = layers_[l];
    layer.tail_tokens = cache.tokens(l) - prefix_tokens_;
    layer.tail_keys = upload_rows(cache.tail_keys(l), stream);
    if (has_values_) layer.tail_values = upload_rows(cache.tail_values(l), stream);
  }
  XKV_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <class T>
std::int64_t DeviceCache<T>::tokens(int layer) const {
  XKV_REQUIRE(layer >= 0 && layer < shape_.num_layers,
              "DeviceCache: layer " << layer << " outside [0, " << shape_.num_layers << ")");
  return prefix_tokens_ + layers_[layer].tail_tokens;
}

template <class T>
std::int64_t DeviceCache<T>::selection_size(int layer, const TokenSelection& sel) const {
  const std::int64_t total = tokens(layer);
  if (sel.use_indices) {
    for (std::size_t i = 0; i < sel.indices.size(); ++i)
      XKV_REQUIRE(sel.indices[i] >= 0 && sel.indices[i] < total,
                  "DeviceCache: token index list entry " << i << " is " << sel.indices[i] << ", outside [0, " << total
                                                         << ") for layer " << layer);
    return static_cast<std::int64_t>(sel.indices.size());
  }
  const std::int64_t end = sel.end < 0 ? total : sel.end;
  XKV_REQUIRE(sel.begin >= 0 && sel.begin <= end && end <= total,
              "DeviceCache: token range [" << sel.begin << ", " << end << ") is not inside [0, " << total
                                           << ") for layer " << layer);
  return end - sel.begin;
}

template <class T>
std::size_t DeviceCache<T>::device_bytes() const {
  std::size_t total = 0;
  for (const auto* fs : {&group_keys_, &group_values_})
    for (const Factor& f : *fs) total += f.a.bytes() + f.b.bytes() + f.bt.bytes();
  for (const Layer& l : layers_)
    total += l.prefix_keys.bytes() + l.prefix_values.bytes() + l.sink_keys.bytes() + l.sink_values.bytes() +
             l.tail_keys.bytes() + l.tail_values.bytes();
  return total;
}

template <class T>
void DeviceCache<T>::reconstruct_keys(int layer, const TokenSelection& tokens, const OutputSpec& out,
                                      cudaStream_t stream, std::int64_t first_output_row) const {
  reconstruct(layer, true, tokens, out, stream, first_output_row);
}

template <class T>
void DeviceCache<T>::reconstruct_values(int layer, const TokenSelection& tokens, const OutputSpec& out,
                                        cudaStream_t stream, std::int64_t first_output_row) const {
  reconstruct(layer, false, tokens, out, stream, first_output_row);
}

template <class T>
void DeviceCache<T>::reconstruct(int layer, bool keys, const TokenSelection& sel, const OutputSpec& out,
                                 cudaStream_t stream, std::int64_t first_output_row) const {
  const std::int64_t count = selection_size(layer, sel);
  XKV_REQUIRE(keys || has_values_, "DeviceCache: this cache holds no values");
  XKV_REQUIRE(first_output_row >= 0, "DeviceCache: first_output_row must be >= 0, got " << first_output_row);
  if (count == 0) return;
  const Layer& state = layers_[layer];
  const int head_dim = keys ? shape_.head_dim : shape_.value_dim();
  const int width = shape_.num_kv_heads * head_dim;

  // The layer's tokens are consecutive segments, each one launch: exact sink rows, then the
  // factors (grouped layers) or the raw prefix (others), then the tail.
  ReconstructParams base;
  base.dtype = scalar_type();
  base.heads = shape_.num_kv_heads;
  base.head_dim = head_dim;
  base.rope = keys ? options_.rope : RopeConfig::disabled();
  base.out = out;
  struct Segment {
    std::int64_t first = 0, end = 0;  // cached tokens [first, end)
    ReconstructParams params;
  };
  std::vector<Segment> segments;
  const auto raw_segment = [&](std::int64_t first, std::int64_t end, const DeviceBuffer<T>& rows) {
    Segment seg{first, end, base};
    seg.params.a = rows.get();
    seg.params.a_rows = end - first;
    seg.params.lda = width;
    seg.params.position_offset = options_.position_offset + first;
    return seg;
  };
  if (state.group >= 0) {
    if (sink_tokens_ > 0) segments.push_back(raw_segment(0, sink_tokens_, keys ? state.sink_keys : state.sink_values));
    const Factor& f = keys ? group_keys_[state.group] : group_values_[state.group];
    Segment seg{sink_tokens_, prefix_tokens_, base};
    seg.params.a = f.a.get();
    seg.params.a_rows = f.tokens;
    seg.params.lda = f.lda;
    seg.params.rank = f.rank;
    seg.params.b = f.b.get() + std::size_t(state.member) * f.rank * f.width;
    seg.params.ldb = f.width;
    seg.params.bt = f.bt.get() + std::size_t(state.member) * f.width * f.ldbt;
    seg.params.ldbt = f.ldbt;
    seg.params.position_offset = options_.position_offset + sink_tokens_;
    segments.push_back(seg);
  } else {
    segments.push_back(raw_segment(0, prefix_tokens_, keys ? state.prefix_keys : state.prefix_values));
  }
  segments.push_back(raw_segment(prefix_tokens_, tokens(layer), keys ? state.tail_keys : state.tail_values));

  if (!sel.use_indices) {
    const std::int64_t begin = sel.begin, end = sel.end < 0 ? tokens(layer) : sel.end;
    // Validate every launch before enqueueing any, so a bad output leaves nothing half written.
    std::vector<Reconstruct> runs;
    for (Segment& seg : segments) {
      const std::int64_t lo = std::max(begin, seg.first), hi = std::min(end, seg.end);
      if (hi <= lo) continue;
      seg.params.token_begin = lo - seg.first;
      seg.params.tokens = hi - lo;
      seg.params.output_row_offset = first_output_row + (lo - begin);
      runs.emplace_back(seg.params);
    }
    for (const Reconstruct& run : runs) run.run(stream);
    return;
  }

  // Index lists: each segment gets its own tokens and, when more than one segment is hit, the
  // output rows they go to.
  std::vector<std::vector<std::int64_t>> seg_tokens(segments.size()), seg_rows(segments.size());
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t t = sel.indices[k];
    for (std::size_t i = 0; i < segments.size(); ++i) {
      if (t < segments[i].first || t >= segments[i].end) continue;
      seg_tokens[i].push_back(t - segments[i].first);
      seg_rows[i].push_back(k);
      break;
    }
  }
  const auto hit = std::count_if(seg_tokens.begin(), seg_tokens.end(), [](const auto& v) { return !v.empty(); });
  const bool split = hit > 1;
  // Output rows are checked here: the kernel's own check covers only what the host cannot see.
  if (!out.paged()) {
    XKV_REQUIRE(first_output_row + count <= out.rows, "DeviceCache: rows [" << first_output_row << ", "
                                                                          << first_output_row + count
                                                                          << ") do not fit an output of "
                                                                          << out.rows << " rows");
  } else {
    XKV_REQUIRE(out.page_size > 0 && (first_output_row + count - 1) / out.page_size < out.page_table_len,
                "DeviceCache: rows [" << first_output_row << ", " << first_output_row + count << ") need more than the "
                                      << out.page_table_len << " pages of the page table (page_size "
                                      << out.page_size << ")");
  }
  // Validate with placeholder device arrays first (validate never dereferences them).
  static const std::int64_t placeholder = 0;
  auto with_arrays = [&](ReconstructParams p, std::int64_t tokens, const std::int64_t* idx, const std::int64_t* rows) {
    p.tokens = tokens;
    p.output_row_offset = first_output_row;
    p.token_indices = idx;
    p.output_rows = rows;
    return p;
  };
  for (std::size_t i = 0; i < segments.size(); ++i)
    if (!seg_tokens[i].empty())
      Reconstruct::validate(with_arrays(segments[i].params, std::int64_t(seg_tokens[i].size()), &placeholder,
                                        split ? &placeholder : nullptr));
  for (std::size_t i = 0; i < segments.size(); ++i) {
    if (seg_tokens[i].empty()) continue;
    StreamArray idx(seg_tokens[i], stream);
    StreamArray rows(split ? seg_rows[i] : std::vector<std::int64_t>{}, stream);
    Reconstruct(with_arrays(segments[i].params, std::int64_t(seg_tokens[i].size()), idx.get(), rows.get()))
        .run(stream);
  }
}

template class DeviceCache<half>;
template class DeviceCache<bfloat16>;

}  // namespace xkv::cuda
