// Shared helpers of the core tests: seeded random inputs, spectra, storage rounding, the fp64
// BDCSVD reference and the err/opt measure.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <source_location>
#include <string>
#include <vector>

#include "xkv/xkv.hpp"

namespace xkv_test {

using MatrixXd = Eigen::MatrixXd;
using VectorXd = Eigen::VectorXd;

/// Sanitizer builds run the same tests on smaller inputs.
#if defined(XKV_TEST_SANITIZE)
inline constexpr bool kSanitize = true;
#else
inline constexpr bool kSanitize = false;
#endif

/// Picks the normal size, or the smaller one under sanitizers.
inline int sized(int normal, int sanitized) { return kSanitize ? sanitized : normal; }

// ---------------------------------------------------------------------------------------- seeds

/// The base seed of every random input: XKV_SEED from the environment, else a fixed default.
/// Printed once per process so that a failure can be reproduced.
inline std::uint64_t base_seed() {
  static const std::uint64_t seed = [] {
    std::uint64_t s = 0x786b76u;
    if (const char* env = std::getenv("XKV_SEED"); env != nullptr && *env != '\0')
      s = std::strtoull(env, nullptr, 0);
    std::printf("[xkv-test] seed %llu (reproduce with XKV_SEED=%llu)\n", static_cast<unsigned long long>(s),
                static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

/// A deterministic generator per test: base seed mixed with a salt (so tests do not depend on
/// the order they run in). Normal variates by Box-Muller on mt19937_64, which the standard fully
/// specifies, so inputs are the same with every standard library.
class Rng {
 public:
  explicit Rng(std::uint64_t salt = 0) : engine_(mix(base_seed() ^ mix(salt + 0x9e3779b97f4a7c15ull))) {}

  double uniform() { return (static_cast<double>(engine_() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = uniform(), u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 6.283185307179586 * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }
  MatrixXd gaussian(Eigen::Index rows, Eigen::Index cols) {
    MatrixXd m(rows, cols);
    for (Eigen::Index j = 0; j < cols; ++j)
      for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = normal();
    return m;
  }
  std::uint64_t bits() { return engine_(); }

 private:
  static std::uint64_t mix(std::uint64_t x) {  // splitmix64 finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// ---------------------------------------------------------------------------------------- spectra

enum class Spectrum { PowerHalf, PowerThreeQuarter, Flat, PlantedGap };

inline const char* spectrum_name(Spectrum s) {
  switch (s) {
    case Spectrum::PowerHalf: return "power-0.5";
    case Spectrum::PowerThreeQuarter: return "power-0.75";
    case Spectrum::Flat: return "flat";
    case Spectrum::PlantedGap: return "planted-gap";
  }
  return "?";
}

/// Rank of the strong block of the planted-gap spectrum.
inline constexpr int kPlantedGapRank = 12;

/// `count` singular values, descending: s_i = i^-0.5, i^-0.75, all 1, or 1 for i <= 12 then a
/// 20x lower slowly decaying tail (0.05 * (i-11)^-0.25).
inline std::vector<double> singular_values(Spectrum s, int count) {
  std::vector<double> v(static_cast<std::size_t>(count));
  for (int i = 1; i <= count; ++i) {
    double x = 1.0;
    switch (s) {
      case Spectrum::PowerHalf: x = std::pow(i, -0.5); break;
      case Spectrum::PowerThreeQuarter: x = std::pow(i, -0.75); break;
      case Spectrum::Flat: x = 1.0; break;
      case Spectrum::PlantedGap: x = i <= kPlantedGapRank ? 1.0 : 0.05 * std::pow(i - kPlantedGapRank + 1, -0.25); break;
    }
    v[static_cast<std::size_t>(i - 1)] = x;
  }
  return v;
}

/// Orthonormal columns [rows x cols] (cols <= rows), from the QR of a Gaussian matrix.
inline MatrixXd random_orthonormal(Rng& rng, Eigen::Index rows, Eigen::Index cols) {
  const MatrixXd g = rng.gaussian(rows, cols);
  Eigen::HouseholderQR<MatrixXd> qr(g);
  return qr.householderQ() * MatrixXd::Identity(rows, cols);
}

/// U diag(s) V^T with random orthonormal U [rows x k], V [cols x k], k = s.size() <= min(rows, cols).
inline MatrixXd matrix_with_spectrum(Rng& rng, Eigen::Index rows, Eigen::Index cols, const std::vector<double>& s) {
  const auto k = static_cast<Eigen::Index>(s.size());
  const MatrixXd u = random_orthonormal(rng, rows, k);
  const MatrixXd v = random_orthonormal(rng, cols, k);
  const VectorXd sv = Eigen::Map<const VectorXd>(s.data(), k);
  return u * sv.asDiagonal() * v.transpose();
}

/// A full-rank matrix with spectrum `s` over all min(rows, cols) values, scaled so that entries
/// are O(1) like real keys (keeps fp16 far from underflow and overflow).
inline MatrixXd spectrum_matrix(Rng& rng, Eigen::Index rows, Eigen::Index cols, Spectrum spectrum) {
  const int m = static_cast<int>(std::min(rows, cols));
  MatrixXd x = matrix_with_spectrum(rng, rows, cols, singular_values(spectrum, m));
  return x * (std::sqrt(double(rows) * double(cols)) / x.norm());
}

// ---------------------------------------------------------------------------------------- storage

template <class T>
inline T to_storage(double v) {
  return static_cast<T>(static_cast<float>(v));
}
template <class T>
inline double from_storage(T v) {
  return static_cast<double>(static_cast<float>(v));
}

/// Every entry rounded to the storage type and back.
template <class T>
inline MatrixXd round_to_storage(const MatrixXd& x) {
  return x.unaryExpr([](double v) { return from_storage<T>(to_storage<T>(v)); });
}

/// Relative tolerance of the storage type (the developer guide's fp32 1e-5, fp16 1e-3, bf16 1e-2).
template <class T>
inline double storage_tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, xkv::half>) return 1e-3;
  else return 1e-2;
}

/// One layer's stream stored token-major [n, H, d], plus a view of it.
template <class T>
struct LayerBuffer {
  std::vector<T> data;
  std::int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  [[nodiscard]] xkv::KVView<T> view() const { return xkv::KVView<T>::token_major(data.data(), tokens, heads, head_dim); }
};

/// Splits X [n x G*H*d] into G token-major layer buffers (entries converted to T).
template <class T>
inline std::vector<LayerBuffer<T>> split_layers(const MatrixXd& x, int layers, int heads, int head_dim) {
  const Eigen::Index width = Eigen::Index(heads) * head_dim;
  EXPECT_EQ(x.cols(), width * layers);
  std::vector<LayerBuffer<T>> out(static_cast<std::size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    auto& buf = out[static_cast<std::size_t>(l)];
    buf.tokens = x.rows();
    buf.heads = heads;
    buf.head_dim = head_dim;
    buf.data.resize(static_cast<std::size_t>(x.rows() * width));
    for (Eigen::Index t = 0; t < x.rows(); ++t)
      for (Eigen::Index c = 0; c < width; ++c)
        buf.data[static_cast<std::size_t>(t * width + c)] = to_storage<T>(x(t, l * width + c));
  }
  return out;
}

template <class T>
inline std::vector<xkv::KVView<T>> views_of(const std::vector<LayerBuffer<T>>& buffers) {
  std::vector<xkv::KVView<T>> v;
  for (const auto& b : buffers) v.push_back(b.view());
  return v;
}

/// The stored layers back as one fp64 matrix [n x G*width] (the storage-rounded input).
template <class T>
inline MatrixXd join_layers(const std::vector<LayerBuffer<T>>& buffers) {
  const Eigen::Index n = buffers.at(0).tokens;
  const Eigen::Index width = Eigen::Index(buffers[0].heads) * buffers[0].head_dim;
  MatrixXd x(n, width * Eigen::Index(buffers.size()));
  for (std::size_t l = 0; l < buffers.size(); ++l)
    for (Eigen::Index t = 0; t < n; ++t)
      for (Eigen::Index c = 0; c < width; ++c)
        x(t, Eigen::Index(l) * width + c) = from_storage(buffers[l].data[static_cast<std::size_t>(t * width + c)]);
  return x;
}

// ---------------------------------------------------------------------------------------- factors

/// A [n x r] of a factor, in fp64.
template <class T>
inline MatrixXd factor_a(const xkv::CompressedFactor<T>& f) {
  MatrixXd a(f.tokens, f.rank);
  for (Eigen::Index i = 0; i < f.tokens; ++i)
    for (Eigen::Index j = 0; j < f.rank; ++j) a(i, j) = from_storage(f.a.at(static_cast<std::size_t>(i * f.rank + j)));
  return a;
}

/// B_l [r x width] of member l, in fp64.
template <class T>
inline MatrixXd factor_b(const xkv::CompressedFactor<T>& f, int member) {
  MatrixXd b(f.rank, f.width);
  const T* p = f.b_layer(member);
  for (Eigen::Index i = 0; i < f.rank; ++i)
    for (Eigen::Index j = 0; j < f.width; ++j) b(i, j) = from_storage(p[i * f.width + j]);
  return b;
}

/// A * [B_1 | ... | B_G] in fp64: the factor's approximation of X.
template <class T>
inline MatrixXd reconstruct_group(const xkv::CompressedFactor<T>& f) {
  const MatrixXd a = factor_a(f);
  MatrixXd x(f.tokens, Eigen::Index(f.width) * f.layers);
  for (int l = 0; l < f.layers; ++l) x.middleCols(Eigen::Index(l) * f.width, f.width) = a * factor_b(f, l);
  return x;
}

// ---------------------------------------------------------------------------------------- reference

/// fp64 BDCSVD singular values of a (storage-rounded) matrix.
struct Reference {
  VectorXd s;           ///< all min(n, D) singular values, descending
  double total = 0;     ///< ||X||_F^2

  explicit Reference(const MatrixXd& x) {
    Eigen::BDCSVD<MatrixXd> svd(x);  // values only
    s = svd.singularValues();
    total = x.squaredNorm();
  }
  /// Eckart-Young optimum of a rank-r approximation: sqrt(sum_{i>r} s_i^2).
  [[nodiscard]] double optimum(int r) const {
    double tail = 0;
    for (Eigen::Index i = r; i < s.size(); ++i) tail += s(i) * s(i);
    return std::sqrt(tail);
  }
  /// Smallest r with sum_{i<r} s_i^2 >= fraction * total.
  [[nodiscard]] int energy_rank(double fraction) const {
    double acc = 0;
    for (Eigen::Index i = 0; i < s.size(); ++i) {
      acc += s(i) * s(i);
      if (acc >= fraction * total) return static_cast<int>(i + 1);
    }
    return static_cast<int>(s.size());
  }
  /// Fraction of the energy kept by the leading r values.
  [[nodiscard]] double energy_fraction(int r) const {
    double acc = 0;
    for (Eigen::Index i = 0; i < std::min<Eigen::Index>(r, s.size()); ++i) acc += s(i) * s(i);
    return acc / total;
  }
};

/// Unit roundoff of the storage type.
template <class T>
inline double unit_roundoff() {
  if constexpr (std::is_same_v<T, float>) return std::ldexp(1.0, -24);
  else if constexpr (std::is_same_v<T, xkv::half>) return std::ldexp(1.0, -11);
  else return std::ldexp(1.0, -8);
}

/// err/opt of a factor against the storage-rounded input X it was computed from, and the bound it
/// must meet. Storing A and B in T adds an error of about u*||X|| that is orthogonal to the
/// truncation residual (it lies in the kept subspaces), so the bound adds it in quadrature:
///   err <= sqrt(((1 + tol) * opt)^2 + (sqrt(2) * u * ||X||)^2).
/// For fp32 the second term is negligible and the bound is (1 + tol) * opt.
struct ErrOpt {
  double err = 0, opt = 0, ratio = 0, bound = 0;
};
template <class T>
inline ErrOpt err_over_opt(const xkv::CompressedFactor<T>& f, const MatrixXd& x, const Reference& ref, double tol) {
  ErrOpt r;
  r.err = (x - reconstruct_group(f)).norm();
  r.opt = ref.optimum(f.rank);
  r.ratio = r.err / r.opt;
  const double storage = std::sqrt(2.0) * unit_roundoff<T>() * std::sqrt(ref.total);
  r.bound = std::sqrt((1 + tol) * (1 + tol) + (storage / r.opt) * (storage / r.opt));
  return r;
}

// ---------------------------------------------------------------------------------------- errors

inline std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// Runs `fn`, requires it to throw xkv::Error of `kind` whose message contains (case-insensitive)
/// one of `names` (the argument) and every string in `values` (the offending values).
inline void expect_error(const std::function<void()>& fn, std::initializer_list<const char*> names,
                         std::initializer_list<const char*> values = {},
                         xkv::ErrorKind kind = xkv::ErrorKind::InvalidArgument,
                         std::source_location where = std::source_location::current()) {
  const ::testing::ScopedTrace trace(where.file_name(), static_cast<int>(where.line()), "expect_error called here");
  try {
    fn();
  } catch (const xkv::Error& e) {
    const std::string msg = lower(e.what());
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    bool named = false;
    for (const char* n : names) named = named || msg.find(lower(n)) != std::string::npos;
    std::string expected;
    for (const char* n : names) expected += std::string(" '") + n + "'";
    EXPECT_TRUE(named) << "message does not name the argument (expected one of" << expected << "): " << e.what();
    for (const char* v : values)
      EXPECT_NE(msg.find(lower(v)), std::string::npos) << "message lacks the value '" << v << "': " << e.what();
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a std::exception that is not xkv::Error: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw xkv::Error";
}

/// Relative Frobenius distance of two equally sized float sequences, against the second.
inline double relative_difference(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = double(got[i]) - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, std::numeric_limits<double>::min()));
}

/// fp64 RoPE reference of token-major rows [tokens, heads, head_dim] at positions first_position + t
/// (the rows unchanged when RoPE is disabled).
template <class T>
inline std::vector<double> rope_rows(const T* data, std::int64_t tokens, int heads, int head_dim,
                                     const xkv::RopeConfig& cfg, std::int64_t first_position) {
  std::vector<double> out(static_cast<std::size_t>(tokens * heads * head_dim));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = from_storage(data[i]);
  if (!cfg.enabled) return out;
  const auto inv = cfg.inverse_frequencies(head_dim);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h)
      xkv::apply_rope_head(out.data() + (t * heads + h) * head_dim, head_dim, first_position + t, cfg.style, inv);
  return out;
}

using StorageTypes = ::testing::Types<float, xkv::half, xkv::bfloat16>;

/// gtest names for typed tests.
struct StorageName {
  template <class T>
  static std::string GetName(int) {
    return xkv::scalar_name<T>();
  }
};

}  // namespace xkv_test
