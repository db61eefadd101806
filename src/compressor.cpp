#include "xkv/compressor.hpp"

#include <algorithm>
#include <cmath>

#include "xkv/error.hpp"
#include "xkv/svd.hpp"

namespace xkv {

void CompressorOptions::validate() const {
  XKV_REQUIRE(oversampling >= 0, "CompressorOptions.oversampling must be >= 0, got " << oversampling);
  XKV_REQUIRE(power_iterations >= 0 && power_iterations <= 64,
              "CompressorOptions.power_iterations must be in [0, 64], got " << power_iterations);
}

namespace {

// Checks a stream's layers agree in shape and token count; returns the per-layer width.
template <class T>
int check_group_stream(std::span<const KVView<T>> layers, const char* stream) {
  XKV_REQUIRE(!layers.empty(), "the " << stream << " of a group need at least one layer (group size 0)");
  for (std::size_t l = 0; l < layers.size(); ++l) {
    layers[l].validate(stream);
    XKV_REQUIRE(layers[l].tokens > 0, stream << " of group member " << l << " have zero tokens");
    XKV_REQUIRE(layers[l].tokens == layers[0].tokens, stream << " token counts differ across the group: member 0 has "
                                                             << layers[0].tokens << ", member " << l << " has "
                                                             << layers[l].tokens);
    XKV_REQUIRE(layers[l].heads == layers[0].heads && layers[l].head_dim == layers[0].head_dim,
                stream << " shapes differ across the group: member 0 is [" << layers[0].heads << " x "
                       << layers[0].head_dim << "], member " << l << " is [" << layers[l].heads << " x "
                       << layers[l].head_dim << "]");
  }
  return layers[0].width();
}

// X = [L_1 | ... | L_G] in fp32, column-major [n x G*width]; rejects NaN/Inf naming the place.
// Tokens are copied in blocks so that both the strided reads and the column writes stay in cache.
template <class T>
Eigen::MatrixXf gather_group(std::span<const KVView<T>> layers, const char* stream) {
  constexpr std::int64_t kTokenBlock = 64;
  const std::int64_t n = layers[0].tokens;
  const int width = layers[0].width();
  Eigen::MatrixXf x(n, std::int64_t(width) * std::int64_t(layers.size()));
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const KVView<T>& v = layers[l];
    for (std::int64_t t0 = 0; t0 < n; t0 += kTokenBlock) {
      const std::int64_t t1 = std::min(n, t0 + kTokenBlock);
      for (int h = 0; h < v.heads; ++h)
        for (int i = 0; i < v.head_dim; ++i) {
          float* dst = x.col(std::int64_t(l) * width + std::int64_t(h) * v.head_dim + i).data();
          for (std::int64_t t = t0; t < t1; ++t) dst[t] = static_cast<float>(v(t, h, i));
        }
    }
  }
  if (!x.allFinite()) {  // rare: find the first offender for the message
    for (std::int64_t c = 0; c < x.cols(); ++c)
      for (std::int64_t t = 0; t < n; ++t)
        XKV_REQUIRE(std::isfinite(x(t, c)), stream << " of group member " << c / width << " contain a non-finite value ("
                                                   << x(t, c) << ") at token " << t << ", head "
                                                   << (c % width) / layers[0].head_dim << ", dim "
                                                   << c % layers[0].head_dim);
  }
  return x;
}

// Factors one stream; `stream` names it ("keys", "values") in error messages.
template <class T>
CompressedFactor<T> factor_stream(const CompressorOptions& options, std::span<const KVView<T>> layers, int rank,
                                  double energy_fraction, const char* stream) {
  const int width = check_group_stream(layers, stream);
  const std::int64_t n = layers[0].tokens;
  const std::int64_t full = std::min<std::int64_t>(n, std::int64_t(width) * std::int64_t(layers.size()));
  if (rank == 0) {
    XKV_REQUIRE(energy_fraction > 0.0 && energy_fraction <= 1.0,
                "energy fraction must be in (0, 1], got " << energy_fraction);
  } else {
    XKV_REQUIRE(rank > 0 && rank <= full, stream << " rank " << rank << " is outside [1, min(n, G*D)] = [1, " << full
                                                  << "] (n=" << n << ", G=" << layers.size() << ", D=" << width << ")");
  }
  const Eigen::MatrixXf x = gather_group(layers, stream);
  const SvdFactors f = truncated_svd(x, rank, options, energy_fraction);

  CompressedFactor<T> out;
  out.tokens = n;
  out.rank = static_cast<int>(f.a.cols());
  out.layers = static_cast<int>(layers.size());
  out.width = width;
  out.a.resize(std::size_t(n) * out.rank);
  for (std::int64_t t = 0; t < n; ++t)
    for (int j = 0; j < out.rank; ++j) out.a[std::size_t(t) * out.rank + j] = static_cast<T>(f.a(t, j));
  out.b.resize(std::size_t(out.layers) * out.rank * width);
  for (int l = 0; l < out.layers; ++l)
    for (int j = 0; j < out.rank; ++j)
      for (int c = 0; c < width; ++c)
        out.b[(std::size_t(l) * out.rank + j) * width + c] = static_cast<T>(f.b(j, std::int64_t(l) * width + c));
  out.singular_values.assign(f.singular_values.data(), f.singular_values.data() + f.singular_values.size());
  out.total_energy = f.total_energy;
  out.kept_energy = 0.0;
  for (float s : out.singular_values) out.kept_energy += double(s) * double(s);
  return out;
}

}  // namespace

template <class T>
Compressor<T>::Compressor(CompressorOptions options) : options_(options) {
  options_.validate();
}

template <class T>
CompressedFactor<T> Compressor<T>::compress_stream(std::span<const KVView<T>> layers, int rank,
                                                   double energy_fraction) const {
  return factor_stream(options_, layers, rank, energy_fraction, "layers");
}

template <class T>
CompressedGroup<T> Compressor<T>::compress(std::span<const KVView<T>> keys, std::span<const KVView<T>> values,
                                           const RankPolicy& policy) const {
  policy.validate();
  const int key_width = check_group_stream(keys, "keys");
  int value_width = 0;
  if (!values.empty()) {
    value_width = check_group_stream(values, "values");
    XKV_REQUIRE(values.size() == keys.size(),
                "a group needs as many value layers as key layers, got " << values.size() << " and " << keys.size());
    XKV_REQUIRE(values[0].tokens == keys[0].tokens, "keys have " << keys[0].tokens << " tokens but values have "
                                                                 << values[0].tokens);
  }
  const GroupShape shape{keys[0].tokens, static_cast<int>(keys.size()), key_width, value_width};
  const GroupRanks ranks = ranks_for_shape(policy, shape);
  const bool by_energy = policy.kind == RankPolicy::Kind::Energy;

  CompressedGroup<T> group;
  group.keys = factor_stream(options_, keys, by_energy ? 0 : ranks.key_rank, policy.energy_fraction, "keys");
  if (!values.empty())
    group.values = factor_stream(options_, values, by_energy ? 0 : ranks.value_rank, policy.energy_fraction, "values");
  return group;
}

template class Compressor<float>;
template class Compressor<half>;
template class Compressor<bfloat16>;

}  // namespace xkv
