// How many singular directions a layer group keeps, for keys and for values.
#pragma once

#include <cstdint>
#include <span>

namespace xkv {

/// The ranks chosen for one group.
struct GroupRanks {
  int key_rank = 0;
  int value_rank = 0;
};

/// Rank selection policy for a group's keys and values.
///  - Fixed: the given ranks.
///  - Energy: for keys and values separately, the smallest rank whose singular values keep at
///    least `energy_fraction` of the squared Frobenius norm (e.g. 0.95).
///  - Ratio: ranks that meet a target compression ratio of the group's raw K+V bytes, split between
///    keys and values as key_weight : value_weight (the paper's default 1 : 1.5).
struct RankPolicy {
  enum class Kind { Fixed, Energy, Ratio };
  Kind kind = Kind::Ratio;
  int key_rank = 0;
  int value_rank = 0;
  double energy_fraction = 0.95;
  double target_ratio = 4.0;
  double key_weight = 1.0;
  double value_weight = 1.5;

  static RankPolicy fixed(int key_rank, int value_rank) {
    RankPolicy p;
    p.kind = Kind::Fixed;
    p.key_rank = key_rank;
    p.value_rank = value_rank;
    return p;
  }
  static RankPolicy energy(double fraction) {
    RankPolicy p;
    p.kind = Kind::Energy;
    p.energy_fraction = fraction;
    return p;
  }
  static RankPolicy ratio(double target, double key_weight = 1.0, double value_weight = 1.5) {
    RankPolicy p;
    p.kind = Kind::Ratio;
    p.target_ratio = target;
    p.key_weight = key_weight;
    p.value_weight = value_weight;
    return p;
  }

  /// Throws xkv::Error naming the offending field.
  void validate() const;
};

/// Shape facts a policy needs to turn itself into ranks for one group.
struct GroupShape {
  std::int64_t tokens = 0;  ///< n
  int layers = 0;           ///< G
  int key_width = 0;        ///< H * d of one layer's keys
  int value_width = 0;      ///< H * d_v of one layer's values (0: the group has no values)
};

/// Ranks for a Ratio policy: with r_v = r_k * w_v / w_k, the stored A and B_l of keys and values
/// (n*r_k + r_k*G*Dk + n*r_v + r_v*G*Dv elements) are at most raw / target (G*n*(Dk+Dv)); each rank
/// at least 1 and at most min(n, G*D). Fixed policies are validated against the shape.
GroupRanks ranks_for_shape(const RankPolicy& policy, const GroupShape& shape);

/// Smallest r such that sum_{i<r} s_i^2 >= fraction * total_energy, with s sorted descending.
/// `total_energy` is ||X||_F^2 (may exceed the sum of the given squares when only the leading
/// values are known); returns s.size() if the given values do not reach the fraction.
int rank_for_energy(std::span<const float> singular_values, double total_energy, double fraction);

}  // namespace xkv
