// Shared helpers of the GPU SVD tests: seeded inputs with a known spectrum, strided device layouts,
// fp64 references on the CPU (Eigen BDCSVD) and err/opt.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "xkv/cuda/compressor.hpp"
#include "xkv/cuda/device.hpp"

namespace xkv::test {

inline std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    const char* env = std::getenv("XKV_SEED");
    const std::uint64_t s = env ? std::strtoull(env, nullptr, 0) : 20261129ull;
    std::printf("[svd tests] XKV_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

#define XKV_SKIP_WITHOUT_GPU()                                          \
  do {                                                                  \
    if (!::xkv::cuda::device_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

template <class T>
float to_float(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}
template <class T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

/// X = G1 diag(s) G2 / sqrt(D), s_i = scale * (i+1)^-decay (+ a floor), Gaussian G1 (n x D), G2 (D x D).
inline Eigen::MatrixXd spectrum_matrix(std::int64_t n, std::int64_t d, double decay, std::uint64_t seed,
                                       double floor = 0.0, int exact_rank = -1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  const std::int64_t inner = exact_rank > 0 ? exact_rank : d;
  Eigen::MatrixXd left(n, inner), right(inner, d);
  for (std::int64_t j = 0; j < inner; ++j)
    for (std::int64_t i = 0; i < n; ++i) left(i, j) = normal(rng);
  for (std::int64_t j = 0; j < d; ++j)
    for (std::int64_t i = 0; i < inner; ++i) right(i, j) = normal(rng);
  for (std::int64_t i = 0; i < inner; ++i) left.col(i) *= 3.0 * std::pow(double(i + 1), -decay) + floor;
  return left * right / std::sqrt(double(d));
}

/// TokenMajorPadded / HeadMajor: one buffer per layer. Interleaved: one [n x (G*H*d + pad)]
/// buffer whose column blocks are the layers (the compressor then reads X in place).
enum class Layout { TokenMajorPadded, HeadMajor, Interleaved };

/// A group's layers on the device in a strided layout, with the out-of-view elements filled with
/// a large value, so that reading them would wreck the error.
template <class T>
struct DeviceGroup {
  std::vector<cuda::DeviceBuffer<T>> buffers;
  std::vector<KVView<T>> views;
  Eigen::MatrixXd stored;  ///< X as rounded to T, n x (G*H*d)
  std::int64_t n = 0;
  int layers = 0, heads = 0, head_dim = 0;
  [[nodiscard]] int width() const { return heads * head_dim; }
  [[nodiscard]] std::int64_t d() const { return std::int64_t(layers) * width(); }
};

template <class T>
DeviceGroup<T> upload(const Eigen::MatrixXd& x, int layers, int heads, int head_dim, Layout layout, int pad = 8) {
  DeviceGroup<T> g;
  g.n = x.rows();
  g.layers = layers;
  g.heads = heads;
  g.head_dim = head_dim;
  const int width = heads * head_dim;
  EXPECT_EQ(x.cols(), std::int64_t(layers) * width);
  g.stored.resize(x.rows(), x.cols());
  if (layout == Layout::Interleaved) {
    const std::int64_t stride = std::int64_t(layers) * width + pad;
    std::vector<T> host(std::size_t(g.n * stride), from_float<T>(1.0e4f));
    for (std::int64_t t = 0; t < g.n; ++t)
      for (std::int64_t col = 0; col < x.cols(); ++col) {
        const T val = from_float<T>(float(x(t, col)));
        host[std::size_t(t * stride + col)] = val;
        g.stored(t, col) = to_float(val);
      }
    g.buffers.emplace_back(host.size());
    XKV_CUDA_CHECK(cudaMemcpy(g.buffers.back().get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream copy vs the non-blocking run stream
    for (int l = 0; l < layers; ++l)
      g.views.push_back({g.buffers.back().get() + std::int64_t(l) * width, g.n, heads, head_dim, stride, head_dim});
    return g;
  }
  for (int l = 0; l < layers; ++l) {
    KVView<T> v{};
    std::size_t elems = 0;
    if (layout == Layout::TokenMajorPadded) {
      v = {nullptr, g.n, heads, head_dim, std::int64_t(width + pad), head_dim};
      elems = std::size_t(g.n) * (width + pad);
    } else {
      const std::int64_t capacity = g.n + 3;
      v = KVView<T>::head_major(nullptr, heads, g.n, head_dim, capacity);
      elems = std::size_t(heads) * capacity * head_dim;
    }
    std::vector<T> host(elems, from_float<T>(1.0e4f));
    for (std::int64_t t = 0; t < g.n; ++t)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < head_dim; ++i) {
          const std::int64_t col = std::int64_t(l) * width + h * head_dim + i;
          const T val = from_float<T>(float(x(t, col)));
          host[std::size_t(t * v.token_stride + h * v.head_stride + i)] = val;
          g.stored(t, col) = to_float(val);
        }
    g.buffers.emplace_back(elems);
    XKV_CUDA_CHECK(cudaMemcpy(g.buffers.back().get(), host.data(), elems * sizeof(T), cudaMemcpyHostToDevice));
    XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memsets/copies vs the non-blocking run stream
    v.data = g.buffers.back().get();
    g.views.push_back(v);
  }
  return g;
}

/// Device outputs of one factorisation, poisoned (all bits set: NaN in every type) before the run.
template <class T>
struct DeviceFactors {
  cuda::DeviceBuffer<T> a, b;
  cuda::DeviceBuffer<float> sv;
  cuda::DeviceBuffer<double> energies;
  int capacity = 0;
  DeviceFactors(std::int64_t n, std::int64_t d, int capacity_)
      : a(std::size_t(n) * capacity_), b(std::size_t(d) * capacity_), sv(capacity_), energies(2), capacity(capacity_) {
    XKV_CUDA_CHECK(cudaMemset(a.get(), 0xFF, a.bytes()));
    XKV_CUDA_CHECK(cudaMemset(b.get(), 0xFF, b.bytes()));
    XKV_CUDA_CHECK(cudaMemset(sv.get(), 0xFF, sv.bytes()));
    XKV_CUDA_CHECK(cudaMemset(energies.get(), 0xFF, energies.bytes()));
    XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memsets/copies vs the non-blocking run stream
  }
  template <class U>
  static std::vector<U> fetch(const cuda::DeviceBuffer<U>& buf, std::size_t count) {
    std::vector<U> host(count);
    XKV_CUDA_CHECK(cudaMemcpy(host.data(), buf.get(), count * sizeof(U), cudaMemcpyDeviceToHost));
    return host;
  }
};

/// Host copy of a GPU result: A (n x r), B (r x D) with B = [B_1 | ... | B_G].
struct HostFactors {
  Eigen::MatrixXd a, b;
  std::vector<float> sv;
  double total_energy = 0, kept_energy = 0;
  std::vector<unsigned char> raw;  ///< bytes of A, B, sv (bit-exact comparisons)
};

template <class T>
HostFactors fetch(const DeviceFactors<T>& f, std::int64_t n, int layers, int width, int r) {
  HostFactors h;
  const auto a = DeviceFactors<T>::fetch(f.a, std::size_t(n) * r);
  const auto b = DeviceFactors<T>::fetch(f.b, std::size_t(layers) * width * r);
  h.sv = DeviceFactors<T>::fetch(f.sv, std::size_t(r));
  const auto e = DeviceFactors<T>::fetch(f.energies, 2);
  h.total_energy = e[0];
  h.kept_energy = e[1];
  h.a.resize(n, r);
  for (std::int64_t t = 0; t < n; ++t)
    for (int i = 0; i < r; ++i) h.a(t, i) = to_float(a[std::size_t(t * r + i)]);
  h.b.resize(r, std::int64_t(layers) * width);
  for (int l = 0; l < layers; ++l)
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < width; ++j) h.b(i, std::int64_t(l) * width + j) = to_float(b[std::size_t((std::int64_t(l) * r + i) * width + j)]);
  const auto push = [&](const void* p, std::size_t bytes) {
    const auto* c = static_cast<const unsigned char*>(p);
    h.raw.insert(h.raw.end(), c, c + bytes);
  };
  push(a.data(), a.size() * sizeof(T));
  push(b.data(), b.size() * sizeof(T));
  push(h.sv.data(), h.sv.size() * sizeof(float));
  return h;
}

/// Singular values of X in fp64 (Eigen BDCSVD).
inline Eigen::VectorXd reference_singular_values(const Eigen::MatrixXd& x) {
  return Eigen::BDCSVD<Eigen::MatrixXd>(x).singularValues();
}

/// ||X - A B||_F / sqrt(sum_{i >= r} s_i^2); 1 for an exact factorisation of an exactly low-rank X.
inline double err_over_opt(const Eigen::MatrixXd& x, const Eigen::MatrixXd& a, const Eigen::MatrixXd& b,
                           const Eigen::VectorXd& s, int r) {
  const double err = (x - a * b).norm();
  const double opt = std::sqrt(s.tail(s.size() - r).squaredNorm());
  // Exactly representable at rank r: only the storage rounding of A and B may remain.
  if (opt < 1e-9 * s(0)) return err <= 1e-2 * s(0) ? 1.0 : err / (1e-9 * s(0));
  return err / opt;
}

}  // namespace xkv::test
