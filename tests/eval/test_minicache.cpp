#include <gtest/gtest.h>

#include <cmath>

#include "eval_test_util.hpp"
#include "minicache.hpp"
#include "xkv/error.hpp"

namespace xkv::eval {
namespace {
using testing::gaussian;

std::vector<float> flat(const Eigen::MatrixXf& m) {  // row-major floats of m
  std::vector<float> out(static_cast<std::size_t>(m.size()));
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) out[r * m.cols() + c] = m(r, c);
  return out;
}

double vec_norm(const float* v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(v[i]) * v[i];
  return std::sqrt(s);
}

TEST(Slerp, MidpointOfOrthogonalUnitVectors) {
  const float a[2] = {1, 0}, b[2] = {0, 3};  // b's length must not matter
  float out[2];
  slerp_directions(a, b, 2, 0.5, out);
  EXPECT_NEAR(out[0], std::sqrt(0.5), 1e-6);
  EXPECT_NEAR(out[1], std::sqrt(0.5), 1e-6);
  slerp_directions(a, b, 2, 0.0, out);  // t = 0: the first direction
  EXPECT_NEAR(out[0], 1, 1e-6);
  EXPECT_NEAR(out[1], 0, 1e-6);
  slerp_directions(a, b, 2, 0.25, out);  // a quarter of the 90-degree arc
  EXPECT_NEAR(out[0], std::cos(M_PI / 8), 1e-6);
  EXPECT_NEAR(out[1], std::sin(M_PI / 8), 1e-6);
}

TEST(Slerp, DegenerateInputs) {
  const float zero[3] = {0, 0, 0}, v[3] = {0, 2, 0};
  float out[3];
  slerp_directions(zero, v, 3, 0.5, out);
  EXPECT_NEAR(out[1], 1, 1e-6);
  slerp_directions(v, v, 3, 0.5, out);  // angle 0
  EXPECT_NEAR(out[1], 1, 1e-6);
  slerp_directions(zero, zero, 3, 0.5, out);
  EXPECT_EQ(out[0], 0);
}

TEST(MiniCacheMerge, IdenticalLayersAreReproduced) {
  const int tokens = 37, heads = 3, dim = 16;
  const std::vector<float> x = flat(gaussian(tokens, heads * dim, 40));
  MiniCacheOptions o;
  o.retention_threshold = 0.05;
  const MergedPair m = merge_layer_pair(x, x, tokens, heads, dim, o);
  // All distances are 0 (d_max == d_min): nothing is retained, everything merges losslessly.
  EXPECT_EQ(m.retained_vectors, 0);
  EXPECT_EQ(m.merged_vectors, tokens * heads);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(m.restored_first[i], x[i], 1e-5 * (1 + std::abs(x[i])));
    EXPECT_NEAR(m.restored_second[i], x[i], 1e-5 * (1 + std::abs(x[i])));
  }
}

TEST(MiniCacheMerge, MagnitudesAreRestoredAndDirectionsShared) {
  const int tokens = 20, heads = 2, dim = 8;
  const std::vector<float> a = flat(gaussian(tokens, heads * dim, 41));
  std::vector<float> b = flat(gaussian(tokens, heads * dim, 42));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = a[i] + 0.3f * b[i];  // similar, not equal
  MiniCacheOptions o;
  o.retention_threshold = 0;  // merge everything
  const MergedPair m = merge_layer_pair(a, b, tokens, heads, dim, o);
  EXPECT_EQ(m.retained_vectors, 0);
  for (int v = 0; v < tokens * heads; ++v) {
    const float* ra = m.restored_first.data() + v * dim;
    const float* rb = m.restored_second.data() + v * dim;
    const double na = vec_norm(a.data() + v * dim, dim), nb = vec_norm(b.data() + v * dim, dim);
    EXPECT_NEAR(vec_norm(ra, dim), na, 1e-5 * na);
    EXPECT_NEAR(vec_norm(rb, dim), nb, 1e-5 * nb);
    for (int i = 0; i < dim; ++i) EXPECT_NEAR(ra[i] / na, rb[i] / nb, 1e-5);  // one shared direction
    // The shared direction lies between the two: closer to each than they are to each other.
    double ab = 0, a_mid = 0;
    for (int i = 0; i < dim; ++i) {
      ab += double(a[v * dim + i]) * b[v * dim + i];
      a_mid += double(a[v * dim + i]) * ra[i];
    }
    EXPECT_GT(a_mid / (na * na), ab / (na * nb) - 1e-6);
  }
}

TEST(MiniCacheMerge, RetentionKeepsDissimilarTokensUnmerged) {
  const int tokens = 100, heads = 1, dim = 8;
  const std::vector<float> a = flat(gaussian(tokens, dim, 43));
  std::vector<float> b = a;
  std::vector<float> noise = flat(gaussian(tokens, dim, 44));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] += 0.05f * noise[i];  // nearly parallel
  const std::vector<int> outliers = {3, 50, 97};
  for (int t : outliers)
    for (int i = 0; i < dim; ++i) b[t * dim + i] = -a[t * dim + i];  // opposite: distance 1
  MiniCacheOptions o;
  o.retention_threshold = 0.05;
  const MergedPair m = merge_layer_pair(a, b, tokens, heads, dim, o);
  EXPECT_EQ(m.retained_vectors, std::int64_t(outliers.size()));
  for (int t : outliers)
    for (int i = 0; i < dim; ++i) {
      EXPECT_EQ(m.restored_first[t * dim + i], a[t * dim + i]);
      EXPECT_EQ(m.restored_second[t * dim + i], b[t * dim + i]);
    }
  o.retention_threshold = 0;
  EXPECT_EQ(merge_layer_pair(a, b, tokens, heads, dim, o).retained_vectors, 0);
}

TEST(MiniCacheMerge, RejectsBadArguments) {
  std::vector<float> x(12, 1.0f);
  MiniCacheOptions o;
  EXPECT_THROW((void)merge_layer_pair(x, x, 2, 2, 4, o), xkv::Error);  // 16 floats expected
  o.interpolation = 1.5;
  EXPECT_THROW((void)merge_layer_pair(x, x, 3, 1, 4, o), xkv::Error);
}

model::PlainKvCache random_plain(int layers, int heads, int dim, std::int64_t tokens, std::uint64_t salt,
                                 bool pairs_identical) {
  model::PlainKvCache cache(ModelShape{layers, heads, dim, 0}, RopeConfig{});
  for (int l = 0; l < layers; ++l) {
    const std::uint64_t s = pairs_identical ? salt + (l / 2) * 2 : salt + l * 2;
    const std::vector<float> k = flat(gaussian(tokens, heads * dim, s));
    const std::vector<float> v = flat(gaussian(tokens, heads * dim, s + 1));
    cache.append(l, k.data(), v.data(), tokens);
  }
  return cache;
}

TEST(MiniCacheKvCache, IdenticalPairsReadBackAndBytesShrink) {
  const int layers = 6, heads = 2, dim = 8;
  const std::int64_t tokens = 11;
  model::PlainKvCache plain = random_plain(layers, heads, dim, tokens, 50, true);
  MiniCacheOptions o;
  o.start_layer = 0;
  MiniCacheKvCache mini(plain, o);
  for (int l = 0; l < layers; ++l) {
    const model::KvRead p = plain.read(l);
    const std::vector<float> pk(p.keys, p.keys + tokens * heads * dim), pv(p.values, p.values + tokens * heads * dim);
    const model::KvRead m = mini.read(l);
    ASSERT_EQ(m.tokens, tokens);
    for (std::size_t i = 0; i < pk.size(); ++i) {
      EXPECT_NEAR(m.keys[i], pk[i], 1e-5 * (1 + std::abs(pk[i])));
      EXPECT_NEAR(m.values[i], pv[i], 1e-5 * (1 + std::abs(pv[i])));
    }
  }
  // Merged pairs store one direction + 2 magnitudes instead of two vectors: (d + 2) / (2 d).
  EXPECT_NEAR(mini.compression_ratio(), 2.0 * dim / (dim + 2), 1e-9);
  EXPECT_EQ(mini.retained_fraction(), 0.0);
  // A tail appended later stays exact and is counted raw.
  const std::vector<float> k(heads * dim, 0.5f), v(heads * dim, -0.25f);
  const std::size_t before = mini.bytes();
  for (int l = 0; l < layers; ++l) mini.append(l, k.data(), v.data(), 1);
  EXPECT_EQ(mini.tokens(0), tokens + 1);
  EXPECT_EQ(mini.bytes(), before + std::size_t(layers) * 2 * heads * dim * sizeof(float));
  EXPECT_EQ(mini.read(3).values[tokens * heads * dim], -0.25f);
}

TEST(MiniCacheKvCache, DefaultStartsAtTheMiddleAndLeavesAnOddLayerAlone) {
  const int layers = 7, heads = 1, dim = 4;
  model::PlainKvCache plain = random_plain(layers, heads, dim, 5, 60, false);
  MiniCacheKvCache mini(plain, MiniCacheOptions{});  // merges (3,4), (5,6); 0..2 untouched
  for (int l = 0; l < 3; ++l) {
    const model::KvRead p = plain.read(l);
    const std::vector<float> pk(p.keys, p.keys + 5 * dim);
    const model::KvRead m = mini.read(l);
    for (int i = 0; i < 5 * dim; ++i) EXPECT_EQ(m.keys[i], pk[i]);
  }
  // 3 raw layers + 2 merged pairs of 5 tokens, some vectors possibly retained.
  EXPECT_GT(mini.compression_ratio(), 1.0);
  EXPECT_LT(mini.compression_ratio(), 7.0 / 5.0 + 1e-9);
}

}  // namespace
}  // namespace xkv::eval
