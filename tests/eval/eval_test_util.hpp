// Seeded inputs for the evaluation tests: the seed is printed and overridable via XKV_SEED.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>

namespace xkv::eval::testing {

inline std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    const char* env = std::getenv("XKV_SEED");
    const std::uint64_t s = env ? std::strtoull(env, nullptr, 10) : 20250322ULL;
    std::cout << "[xkv-eval tests] seed " << s << " (override with XKV_SEED)\n";
    return s;
  }();
  return seed;
}

/// Gaussian matrix from the test seed mixed with `salt` (different inputs per use).
inline Eigen::MatrixXf gaussian(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt) {
  std::mt19937_64 rng(test_seed() * 1000003ULL + salt);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Eigen::MatrixXf m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

}  // namespace xkv::eval::testing
