#include <gtest/gtest.h>

#include <cmath>

#include "attention_error.hpp"
#include "eval_test_util.hpp"
#include "xkv/error.hpp"

namespace xkv::eval {
namespace {
using testing::gaussian;

std::vector<float> row_major(const Eigen::MatrixXf& m) {
  std::vector<float> out(static_cast<std::size_t>(m.size()));
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) out[r * m.cols() + c] = m(r, c);
  return out;
}

// Straightforward fp64 reference, written independently of the implementation's loop order.
RowMatrix reference_attention(const std::vector<float>& q, std::int64_t rows, int heads, int d, std::int64_t first,
                              const std::vector<float>& k, const std::vector<float>& v, int kv_heads) {
  RowMatrix out(rows, heads * d);
  for (std::int64_t i = 0; i < rows; ++i)
    for (int h = 0; h < heads; ++h) {
      const int kvh = h * kv_heads / heads;
      const std::int64_t n = first + i + 1;
      Eigen::VectorXd s(n);
      for (std::int64_t t = 0; t < n; ++t) {
        double dot = 0;
        for (int j = 0; j < d; ++j) dot += double(q[(i * heads + h) * d + j]) * k[(t * kv_heads + kvh) * d + j];
        s(t) = dot / std::sqrt(double(d));
      }
      s = (s.array() - s.maxCoeff()).exp();
      s /= s.sum();
      for (int j = 0; j < d; ++j) {
        double acc = 0;
        for (std::int64_t t = 0; t < n; ++t) acc += s(t) * v[(t * kv_heads + kvh) * d + j];
        out(i, h * d + j) = float(acc);
      }
    }
  return out;
}

TEST(AttentionOutput, MatchesReferenceWithGroupedQueryHeads) {
  const int heads = 6, kv_heads = 2, d = 8;
  const std::int64_t tokens = 13, rows = 4, first = tokens - rows;
  const std::vector<float> q = row_major(gaussian(rows, heads * d, 1));
  const std::vector<float> k = row_major(gaussian(tokens, kv_heads * d, 2));
  const std::vector<float> v = row_major(gaussian(tokens, kv_heads * d, 3));
  const RowMatrix got = attention_output(q.data(), rows, heads, d, first, {k.data(), v.data(), tokens}, kv_heads);
  const RowMatrix want = reference_attention(q, rows, heads, d, first, k, v, kv_heads);
  EXPECT_LT(relative_error(got, want), 1e-6);
}

TEST(AttentionOutput, OneVisibleTokenReturnsItsValueAndLaterTokensAreMasked) {
  const int heads = 2, kv_heads = 1, d = 4;
  const std::vector<float> q = row_major(gaussian(1, heads * d, 4));
  std::vector<float> k = row_major(gaussian(3, d, 5)), v = row_major(gaussian(3, d, 6));
  const RowMatrix first = attention_output(q.data(), 1, heads, d, 0, {k.data(), v.data(), 3}, kv_heads);
  for (int h = 0; h < heads; ++h)
    for (int j = 0; j < d; ++j) EXPECT_FLOAT_EQ(first(0, h * d + j), v[j]);
  k[d] += 100;  // token 1 is not visible from position 0
  v[2 * d] -= 7;
  const RowMatrix again = attention_output(q.data(), 1, heads, d, 0, {k.data(), v.data(), 3}, kv_heads);
  EXPECT_EQ(first, again);
}

// Zero queries attend uniformly: row i (position first + i) puts 1 / (first + i + 1) on token 0;
// a key that dominates the scores takes all the weight.
TEST(AttentionOutput, FirstTokenWeight) {
  const int heads = 4, kv_heads = 2, d = 8;
  const std::int64_t tokens = 10, rows = 3, first = tokens - rows;
  const std::vector<float> zero_q(std::size_t(rows * heads * d), 0.0f);
  const std::vector<float> k = row_major(gaussian(tokens, kv_heads * d, 7));
  const std::vector<float> v = row_major(gaussian(tokens, kv_heads * d, 8));
  double weight = -1;
  (void)attention_output(zero_q.data(), rows, heads, d, first, {k.data(), v.data(), tokens}, kv_heads, &weight);
  double want = 0;
  for (std::int64_t i = 0; i < rows; ++i) want += 1.0 / double(first + i + 1) / double(rows);
  EXPECT_NEAR(weight, want, 1e-12);
  std::vector<float> q(std::size_t(rows * heads * d), 1.0f), sink_k(std::size_t(tokens * kv_heads * d), 0.0f);
  for (int j = 0; j < kv_heads * d; ++j) sink_k[std::size_t(j)] = 50.0f;  // token 0 only
  (void)attention_output(q.data(), rows, heads, d, first, {sink_k.data(), v.data(), tokens}, kv_heads, &weight);
  EXPECT_GT(weight, 1 - 1e-9);
}

TEST(AttentionOutput, RejectsBadShapes) {
  const std::vector<float> q(8, 1.0f), kv(8, 1.0f);
  EXPECT_THROW((void)attention_output(q.data(), 1, 3, 4, 0, {kv.data(), kv.data(), 1}, 2), xkv::Error);
  EXPECT_THROW((void)attention_output(q.data(), 2, 2, 4, 0, {kv.data(), kv.data(), 1}, 1), xkv::Error);
}

TEST(LayerAttentionErrors, ZeroForIdenticalCachesPositiveOtherwise) {
  const int layers = 3, heads = 4, kv_heads = 2, d = 8;
  const std::int64_t tokens = 10, rows = 3;
  const ModelShape shape{layers, kv_heads, d, 0};
  model::PlainKvCache a(shape, RopeConfig{}), b(shape, RopeConfig{});
  QueryRecorder recorder;
  for (int l = 0; l < layers; ++l) {
    const std::vector<float> k = row_major(gaussian(tokens, kv_heads * d, 10 + l));
    std::vector<float> v = row_major(gaussian(tokens, kv_heads * d, 20 + l));
    a.append(l, k.data(), v.data(), tokens);
    if (l == 1) v[5] += 3;  // perturb one layer only
    b.append(l, k.data(), v.data(), tokens);
    const std::vector<float> q = row_major(gaussian(rows, heads * d, 30 + l));
    recorder.on_attention_queries(l, tokens - rows, q.data(), rows, heads, d);
  }
  const std::vector<double> same = layer_attention_errors(recorder, a, a);
  for (double e : same) EXPECT_EQ(e, 0.0);
  const std::vector<double> diff = layer_attention_errors(recorder, a, b);
  EXPECT_EQ(diff[0], 0.0);
  EXPECT_GT(diff[1], 1e-4);
  EXPECT_EQ(diff[2], 0.0);
  QueryRecorder empty;
  EXPECT_THROW((void)layer_attention_errors(empty, a, b), xkv::Error);
}

}  // namespace
}  // namespace xkv::eval
