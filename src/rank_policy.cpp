#include "xkv/rank_policy.hpp"

#include <algorithm>
#include <cmath>

#include "xkv/error.hpp"

namespace xkv {

void RankPolicy::validate() const {
  switch (kind) {
    case Kind::Fixed:
      XKV_REQUIRE(key_rank > 0, "RankPolicy::fixed key_rank must be positive, got " << key_rank);
      XKV_REQUIRE(value_rank >= 0, "RankPolicy::fixed value_rank must be >= 0, got " << value_rank);
      break;
    case Kind::Energy:
      XKV_REQUIRE(energy_fraction > 0.0 && energy_fraction <= 1.0,
                  "RankPolicy::energy fraction must be in (0, 1], got " << energy_fraction);
      break;
    case Kind::Ratio:
      XKV_REQUIRE(std::isfinite(target_ratio) && target_ratio > 1.0,
                  "RankPolicy::ratio target_ratio must be > 1, got " << target_ratio);
      XKV_REQUIRE(key_weight > 0 && value_weight > 0 && std::isfinite(key_weight) && std::isfinite(value_weight),
                  "RankPolicy::ratio K:V weights must be positive, got " << key_weight << ":" << value_weight);
      break;
  }
}

GroupRanks ranks_for_shape(const RankPolicy& policy, const GroupShape& shape) {
  policy.validate();
  XKV_REQUIRE(shape.tokens > 0, "group has zero tokens");
  XKV_REQUIRE(shape.layers > 0, "group size must be positive, got " << shape.layers);
  XKV_REQUIRE(shape.key_width > 0, "key width must be positive, got " << shape.key_width);
  XKV_REQUIRE(shape.value_width >= 0, "value width must be >= 0, got " << shape.value_width);
  const std::int64_t n = shape.tokens;
  const std::int64_t g = shape.layers;
  const std::int64_t max_key = std::min<std::int64_t>(n, g * shape.key_width);
  const std::int64_t max_value = std::min<std::int64_t>(n, g * shape.value_width);
  GroupRanks r;
  switch (policy.kind) {
    case RankPolicy::Kind::Fixed:
      XKV_REQUIRE(policy.key_rank <= max_key, "key rank " << policy.key_rank << " exceeds min(n, G*D) = min("
                                                          << n << ", " << g * shape.key_width << ")");
      XKV_REQUIRE(shape.value_width == 0 || (policy.value_rank > 0 && policy.value_rank <= max_value),
                  "value rank " << policy.value_rank << " must be in [1, min(n, G*D)] = [1, " << max_value << "]");
      r.key_rank = policy.key_rank;
      r.value_rank = shape.value_width == 0 ? 0 : policy.value_rank;
      return r;
    case RankPolicy::Kind::Energy:
      return r;  // decided from the spectrum, by the compressor
    case RankPolicy::Kind::Ratio: {
      // Stored elements: r_k (n + G Dk) + r_v (n + G Dv) <= G n (Dk + Dv) / target, r_v = r_k * w_v / w_k.
      const double raw = double(g) * double(n) * double(shape.key_width + shape.value_width);
      const double budget = raw / policy.target_ratio;
      const double v_per_k = shape.value_width == 0 ? 0.0 : policy.value_weight / policy.key_weight;
      const double per_key_rank =
          double(n + g * shape.key_width) + v_per_k * double(n + g * shape.value_width);
      const double rk = budget / per_key_rank;
      // Round down, but keep at least one direction per stream when that still fits the budget.
      const auto key_rank = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::floor(rk)));
      const auto value_rank =
          shape.value_width == 0 ? 0 : std::max<std::int64_t>(1, static_cast<std::int64_t>(std::floor(rk * v_per_k)));
      const double stored = double(key_rank) * double(n + g * shape.key_width) +
                            double(value_rank) * double(n + g * shape.value_width);
      XKV_REQUIRE(stored <= budget * (1.0 + 1e-12),
                  "target compression ratio " << policy.target_ratio << " is unattainable for n=" << n << ", G=" << g
                                              << ", key width " << shape.key_width << ", value width "
                                              << shape.value_width << " (even ranks " << key_rank << "/" << value_rank
                                              << " reach only " << raw / stored << "x)");
      r.key_rank = static_cast<int>(std::min(key_rank, max_key));
      r.value_rank = static_cast<int>(std::min(value_rank, max_value));
      return r;
    }
  }
  return r;
}

int rank_for_energy(std::span<const float> singular_values, double total_energy, double fraction) {
  XKV_REQUIRE(fraction > 0.0 && fraction <= 1.0, "energy fraction must be in (0, 1], got " << fraction);
  XKV_REQUIRE(total_energy >= 0.0 && std::isfinite(total_energy), "total energy must be finite, got " << total_energy);
  const double goal = fraction * total_energy;
  double kept = 0.0;
  for (std::size_t i = 0; i < singular_values.size(); ++i) {
    kept += double(singular_values[i]) * double(singular_values[i]);
    // A relative slack keeps fraction == 1 reachable despite rounding in the spectrum.
    if (kept >= goal * (1.0 - 1e-6)) return static_cast<int>(i + 1);
  }
  return static_cast<int>(singular_values.size());
}

}  // namespace xkv
