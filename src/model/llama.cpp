// Llama forward pass (fp32, Eigen). Prefill multiplies whole token blocks with Eigen's
// OpenMP-parallel GEMM; decode splits each weight's rows across threads (Eigen's GEMV is serial).
#include "xkv/model/llama.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace xkv::model {
namespace {

using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;

RowMatrix load_matrix(const GgufFile& file, const std::string& name) {
  const TensorInfo* t = file.find_tensor(name);
  XKV_CHECK(t != nullptr, Format, "GGUF '" << file.name() << "': tensor '" << name << "' is missing");
  const Eigen::Index cols = t->dims[0];
  const Eigen::Index rows = t->elements / cols;
  RowMatrix m(rows, cols);
  file.dequantize_into(*t, std::span<float>(m.data(), static_cast<std::size_t>(m.size())));
  // A hostile or corrupt file can encode NaN/Inf scales; refuse it rather than emit garbage.
  const float* bad = std::find_if(m.data(), m.data() + m.size(), [](float v) { return !std::isfinite(v); });
  XKV_CHECK(bad == m.data() + m.size(), Format,
            "GGUF '" << file.name() << "': tensor '" << name << "' holds a non-finite value at element "
                     << (bad - m.data()));
  return m;
}

Eigen::VectorXf load_vector(const GgufFile& file, const std::string& name) {
  RowMatrix m = load_matrix(file, name);
  return Eigen::Map<const Eigen::VectorXf>(m.data(), m.size());
}

void rms_norm(const RowMatrix& x, const Eigen::VectorXf& weight, float eps, RowMatrix& out) {
  out.resize(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float mean_square = x.row(r).squaredNorm() / static_cast<float>(x.cols());
    const float scale = 1.0f / std::sqrt(mean_square + eps);
    out.row(r) = x.row(r).cwiseProduct(weight.transpose()) * scale;
  }
}

/// y = x * w^T.
void linear(const RowMatrix& x, const RowMatrix& w, RowMatrix& y) {
  y.resize(x.rows(), w.rows());
  // Threads only pay off for a large weight: a parallel region per small GEMV costs more in
  // synchronisation than it saves, badly so on a loaded machine.
  constexpr Eigen::Index kParallelGemvElements = Eigen::Index(1) << 22;
  if (x.rows() >= 8 || w.size() < kParallelGemvElements) {
    y.noalias() = x * w.transpose();
    return;
  }
  const Eigen::Index out = w.rows();
#pragma omp parallel
  {
#ifdef _OPENMP
    const Eigen::Index threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
    const Eigen::Index threads = 1, thread = 0;
#endif
    const Eigen::Index chunk = (out + threads - 1) / threads;
    const Eigen::Index begin = std::min(out, thread * chunk);
    const Eigen::Index length = std::min(chunk, out - begin);
    if (length > 0) y.middleCols(begin, length).noalias() = x * w.middleRows(begin, length).transpose();
  }
}

/// Causal grouped-query attention of `q` [n x heads*d] (rotated, at the last n positions)
/// over the cache's [T x kv_heads*d] keys/values; writes [n x heads*d].
void attention(const RowMatrix& q, const KvRead& kv, const LlamaConfig& c, RowMatrix& out) {
  const Eigen::Index n = q.rows(), total = kv.tokens, d = c.head_dim;
  const Eigen::Index start = total - n;
  const int group = c.num_heads / c.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  out.resize(n, q.cols());
#pragma omp parallel for schedule(dynamic, 1) if (n * total >= 4096)
  for (int h = 0; h < c.num_heads; ++h) {
    const int kv_head = h / group;
    const ConstStridedMap keys(kv.keys + kv_head * d, total, d, Eigen::OuterStride<>(c.kv_width()));
    const ConstStridedMap values(kv.values + kv_head * d, total, d, Eigen::OuterStride<>(c.kv_width()));
    // Query blocks see only the keys up to their last position: skips the masked upper triangle.
    constexpr Eigen::Index kQueryBlock = 128;
    RowMatrix scores;
    for (Eigen::Index i0 = 0; i0 < n; i0 += kQueryBlock) {
      const Eigen::Index rows = std::min(kQueryBlock, n - i0);
      const Eigen::Index seen = start + i0 + rows;  // keys visible to the block's last query
      scores.resize(rows, seen);
      scores.noalias() = (q.block(i0, h * d, rows, d) * scale) * keys.topRows(seen).transpose();
      for (Eigen::Index i = 0; i < rows; ++i) {
        const Eigen::Index visible = start + i0 + i + 1;  // query i0+i sees keys 0 .. start+i0+i
        auto row = scores.row(i);
        const float peak = row.head(visible).maxCoeff();
        row.head(visible) = (row.head(visible).array() - peak).exp();
        row.head(visible) /= row.head(visible).sum();
        row.tail(seen - visible).setZero();
      }
      out.block(i0, h * d, rows, d).noalias() = scores * values.topRows(seen);
    }
  }
}

}  // namespace

LlamaModel LlamaModel::load(const std::string& path) { return from_gguf(GgufFile::open(path)); }

LlamaModel LlamaModel::from_gguf(const GgufFile& file) {
  LlamaModel m;
  m.config_ = LlamaConfig::from_gguf(file);
  m.token_embedding_ = load_matrix(file, "token_embd.weight");
  m.output_norm_ = load_vector(file, "output_norm.weight");
  if (!m.config_.tied_embeddings) m.output_ = load_matrix(file, "output.weight");
  m.layers_.resize(static_cast<std::size_t>(m.config_.num_layers));
  for (int l = 0; l < m.config_.num_layers; ++l) {
    LlamaLayer& layer = m.layers_[l];
    layer.attn_norm = load_vector(file, layer_tensor_name(l, "attn_norm"));
    layer.ffn_norm = load_vector(file, layer_tensor_name(l, "ffn_norm"));
    layer.wq = load_matrix(file, layer_tensor_name(l, "attn_q"));
    layer.wk = load_matrix(file, layer_tensor_name(l, "attn_k"));
    layer.wv = load_matrix(file, layer_tensor_name(l, "attn_v"));
    layer.wo = load_matrix(file, layer_tensor_name(l, "attn_output"));
    layer.w_gate = load_matrix(file, layer_tensor_name(l, "ffn_gate"));
    layer.w_up = load_matrix(file, layer_tensor_name(l, "ffn_up"));
    layer.w_down = load_matrix(file, layer_tensor_name(l, "ffn_down"));
  }
  return m;
}

std::size_t LlamaModel::weight_bytes() const {
  std::size_t elements = token_embedding_.size() + output_.size() + output_norm_.size();
  for (const auto& l : layers_)
    elements += l.attn_norm.size() + l.ffn_norm.size() + l.wq.size() + l.wk.size() + l.wv.size() + l.wo.size() +
                l.w_gate.size() + l.w_up.size() + l.w_down.size();
  return elements * sizeof(float);
}

RowMatrix LlamaModel::forward(std::span<const std::int32_t> tokens, KvCache& cache, Logits which,
                              ForwardObserver* observer) const {
  const LlamaConfig& c = config_;
  const ModelShape& cs = cache.shape();
  XKV_REQUIRE(cs.num_layers == c.num_layers && cs.num_kv_heads == c.num_kv_heads && cs.head_dim == c.head_dim,
              "forward: cache shape (" << cs.num_layers << " layers, " << cs.num_kv_heads << " kv heads, head_dim "
                                       << cs.head_dim << ") does not match the model (" << c.num_layers << ", "
                                       << c.num_kv_heads << ", " << c.head_dim << ")");
  const auto n = static_cast<Eigen::Index>(tokens.size());
  XKV_REQUIRE(n > 0, "forward: no tokens");
  const std::int64_t start = cache.tokens(0);
  for (int l = 1; l < c.num_layers; ++l)
    XKV_REQUIRE(cache.tokens(l) == start, "forward: cache layer " << l << " holds " << cache.tokens(l)
                                                                  << " tokens, layer 0 holds " << start);
  XKV_REQUIRE(start + n <= c.context_length, "forward: positions up to " << start + n
                                                                        << " exceed the model's context length "
                                                                        << c.context_length);

  RowMatrix x(n, c.hidden);
  for (Eigen::Index i = 0; i < n; ++i) {
    const std::int32_t id = tokens[static_cast<std::size_t>(i)];
    XKV_REQUIRE(id >= 0 && id < c.vocab_size, "forward: token id " << id << " at index " << i
                                                                   << " is outside the vocabulary [0, "
                                                                   << c.vocab_size << ")");
    x.row(i) = token_embedding_.row(id);
  }

  const std::vector<double> inv_freq = c.rope.inverse_frequencies(c.head_dim);
  RowMatrix normed, q, k, v, attn, proj, gate, up;
  for (int l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = layers_[l];
    rms_norm(x, layer.attn_norm, static_cast<float>(c.rms_eps), normed);
    linear(normed, layer.wq, q);
    linear(normed, layer.wk, k);
    linear(normed, layer.wv, v);
    apply_rope_rows(q.data(), n, c.num_heads, c.head_dim, start, c.rope.style, inv_freq);
    if (observer) observer->on_attention_queries(l, start, q.data(), n, c.num_heads, c.head_dim);
    cache.append(l, k.data(), v.data(), n);  // pre-RoPE keys: the cache rotates (or compresses) them
    const KvRead kv = cache.read(l);
    XKV_CHECK(kv.tokens == start + n, InvalidArgument,
              "forward: cache layer " << l << " reads " << kv.tokens << " tokens after appending, expected "
                                      << start + n);
    attention(q, kv, c, attn);
    linear(attn, layer.wo, proj);
    x += proj;

    rms_norm(x, layer.ffn_norm, static_cast<float>(c.rms_eps), normed);
    linear(normed, layer.w_gate, gate);
    linear(normed, layer.w_up, up);
    gate = (gate.array() / (1.0f + (-gate.array()).exp())) * up.array();  // SiLU(gate) * up
    linear(gate, layer.w_down, proj);
    x += proj;
  }

  if (which == Logits::None) return {};
  const RowMatrix& out_weight = c.tied_embeddings ? token_embedding_ : output_;
  RowMatrix last = which == Logits::Last ? RowMatrix(x.bottomRows(1)) : std::move(x);
  rms_norm(last, output_norm_, static_cast<float>(c.rms_eps), normed);
  RowMatrix logits;
  linear(normed, out_weight, logits);
  return logits;
}

std::int32_t argmax(std::span<const float> logits) {
  XKV_REQUIRE(!logits.empty(), "argmax: empty logits");
  return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<std::int32_t> greedy_decode(const LlamaModel& model, KvCache& cache, std::span<const float> last_logits,
                                        const GreedyOptions& options) {
  XKV_REQUIRE(options.max_new_tokens >= 0, "greedy_decode: max_new_tokens " << options.max_new_tokens << " < 0");
  std::vector<std::int32_t> out;
  if (options.max_new_tokens == 0) return out;
  std::int32_t token = argmax(last_logits);
  out.push_back(token);
  const auto stops = [&](std::int32_t t) {
    return std::find(options.stop_tokens.begin(), options.stop_tokens.end(), t) != options.stop_tokens.end();
  };
  while (static_cast<int>(out.size()) < options.max_new_tokens && !stops(token)) {
    const RowMatrix logits = model.forward(std::span<const std::int32_t>(&token, 1), cache, Logits::Last);
    token = argmax(std::span<const float>(logits.data(), static_cast<std::size_t>(logits.cols())));
    out.push_back(token);
  }
  return out;
}

double mean_nll(const LlamaModel& model, std::span<const std::int32_t> tokens) {
  XKV_REQUIRE(tokens.size() >= 2, "mean_nll: needs at least 2 tokens, got " << tokens.size());
  PlainKvCache cache = model.make_plain_cache();
  const RowMatrix logits = model.forward(tokens.first(tokens.size() - 1), cache, Logits::All);
  double total = 0;
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    const auto row = logits.row(i).cast<double>();
    const double peak = row.maxCoeff();
    const double log_sum = peak + std::log((row.array() - peak).exp().sum());
    total += log_sum - row(tokens[static_cast<std::size_t>(i) + 1]);
  }
  return total / static_cast<double>(logits.rows());
}

}  // namespace xkv::model
