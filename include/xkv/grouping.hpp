// Which layers are compressed together.
#pragma once

#include <vector>

namespace xkv {

/// A partition of some of a model's layers into groups; layers in no group stay uncompressed.
struct LayerGrouping {
  std::vector<std::vector<int>> groups;

  /// Consecutive groups of `group_size` over [first, last); a shorter final group holds the rest.
  /// last < 0 means num_layers.
  static LayerGrouping consecutive(int num_layers, int group_size, int first = 0, int last = -1);
  /// An explicit list of groups (each a list of distinct layer indices).
  static LayerGrouping explicit_groups(std::vector<std::vector<int>> groups);

  /// Throws xkv::Error if a layer index is out of [0, num_layers), repeated, or a group is empty.
  void validate(int num_layers) const;
};

}  // namespace xkv
