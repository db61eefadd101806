#include "attention_error.hpp"

#include <cmath>

#include "xkv/error.hpp"

namespace xkv::eval {

void QueryRecorder::on_attention_queries(int layer, std::int64_t first_position, const float* rotated_queries,
                                         std::int64_t rows, int num_heads, int head_dim) {
  XKV_REQUIRE(layer >= 0, "QueryRecorder: negative layer " << layer);
  XKV_REQUIRE(rows >= 0 && num_heads > 0 && head_dim > 0 && (rows == 0 || rotated_queries != nullptr),
              "QueryRecorder: layer " << layer << " rows " << rows << " heads " << num_heads << " head_dim " << head_dim);
  if (layer >= layers()) layers_.resize(static_cast<std::size_t>(layer) + 1);
  LayerQueries& q = layers_[layer];
  q.first_position = first_position;
  q.rows = rows;
  q.num_heads = num_heads;
  q.head_dim = head_dim;
  q.queries.assign(rotated_queries, rotated_queries + rows * num_heads * head_dim);
}

const QueryRecorder::LayerQueries& QueryRecorder::layer(int l) const {
  XKV_REQUIRE(has(l), "QueryRecorder: no queries recorded for layer " << l << " (" << layers() << " layers seen)");
  return layers_[l];
}

RowMatrix attention_output(const float* queries, std::int64_t rows, int num_heads, int head_dim,
                           std::int64_t first_position, const model::KvRead& kv, int num_kv_heads,
                           double* first_token_weight) {
  XKV_REQUIRE(rows > 0 && queries != nullptr, "attention_output: " << rows << " query rows");
  XKV_REQUIRE(num_kv_heads > 0 && num_heads % num_kv_heads == 0,
              "attention_output: num_heads " << num_heads << " is not a multiple of num_kv_heads " << num_kv_heads);
  XKV_REQUIRE(first_position >= 0 && kv.tokens >= first_position + rows,
              "attention_output: queries at positions " << first_position << ".." << first_position + rows - 1
                                                        << " need that many cached tokens, the cache holds " << kv.tokens);
  const int group = num_heads / num_kv_heads;
  const std::int64_t kv_width = std::int64_t(num_kv_heads) * head_dim;
  const double scale = 1.0 / std::sqrt(double(head_dim));
  RowMatrix out(rows, std::int64_t(num_heads) * head_dim);
  std::vector<double> scores, acc(static_cast<std::size_t>(head_dim));
  double first_weight_sum = 0;
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t visible = first_position + i + 1;
    scores.resize(static_cast<std::size_t>(visible));
    for (int h = 0; h < num_heads; ++h) {
      const float* q = queries + (i * num_heads + h) * head_dim;
      const std::int64_t kv_offset = std::int64_t(h / group) * head_dim;
      double peak = -INFINITY;
      for (std::int64_t t = 0; t < visible; ++t) {
        const float* k = kv.keys + t * kv_width + kv_offset;
        double dot = 0;
        for (int j = 0; j < head_dim; ++j) dot += double(q[j]) * k[j];
        scores[t] = dot * scale;
        peak = std::max(peak, scores[t]);
      }
      double total = 0;
      for (auto& s : scores) total += (s = std::exp(s - peak));
      first_weight_sum += scores[0] / total;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::int64_t t = 0; t < visible; ++t) {
        const float* v = kv.values + t * kv_width + kv_offset;
        for (int j = 0; j < head_dim; ++j) acc[j] += scores[t] * v[j];
      }
      for (int j = 0; j < head_dim; ++j) out(i, std::int64_t(h) * head_dim + j) = static_cast<float>(acc[j] / total);
    }
  }
  if (first_token_weight) *first_token_weight = first_weight_sum / (double(rows) * num_heads);
  return out;
}

double relative_error(const RowMatrix& a, const RowMatrix& reference) {
  XKV_REQUIRE(a.rows() == reference.rows() && a.cols() == reference.cols(),
              "relative_error: shapes " << a.rows() << "x" << a.cols() << " and " << reference.rows() << "x"
                                        << reference.cols());
  const double denom = reference.cast<double>().norm();
  XKV_REQUIRE(denom > 0, "relative_error: the reference is zero");
  return (a.cast<double>() - reference.cast<double>()).norm() / denom;
}

std::vector<double> layer_first_token_attention(const QueryRecorder& recorded, model::KvCache& cache) {
  std::vector<double> weights;
  for (int l = 0; l < cache.shape().num_layers; ++l) {
    const auto& q = recorded.layer(l);
    double weight = 0;
    (void)attention_output(q.queries.data(), q.rows, q.num_heads, q.head_dim, q.first_position, cache.read(l),
                           cache.shape().num_kv_heads, &weight);
    weights.push_back(weight);
  }
  return weights;
}

std::vector<double> layer_attention_errors(const QueryRecorder& recorded, model::KvCache& reference,
                                           model::KvCache& candidate) {
  const int layers = reference.shape().num_layers;
  XKV_REQUIRE(candidate.shape().num_layers == layers,
              "layer_attention_errors: caches have " << layers << " and " << candidate.shape().num_layers << " layers");
  std::vector<double> errors;
  for (int l = 0; l < layers; ++l) {
    const auto& q = recorded.layer(l);
    const int kv_heads = reference.shape().num_kv_heads;
    const RowMatrix ref = attention_output(q.queries.data(), q.rows, q.num_heads, q.head_dim, q.first_position,
                                           reference.read(l), kv_heads);
    const RowMatrix got = attention_output(q.queries.data(), q.rows, q.num_heads, q.head_dim, q.first_position,
                                           candidate.read(l), kv_heads);
    errors.push_back(relative_error(got, ref));
  }
  return errors;
}

}  // namespace xkv::eval
