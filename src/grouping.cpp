#include "xkv/grouping.hpp"

#include <vector>

#include "xkv/error.hpp"

namespace xkv {

LayerGrouping LayerGrouping::consecutive(int num_layers, int group_size, int first, int last) {
  XKV_REQUIRE(num_layers > 0, "num_layers must be positive, got " << num_layers);
  XKV_REQUIRE(group_size > 0, "group size must be positive, got " << group_size);
  if (last < 0) last = num_layers;
  XKV_REQUIRE(first >= 0 && first < last && last <= num_layers,
              "layer range [" << first << ", " << last << ") is not inside [0, " << num_layers << ")");
  LayerGrouping g;
  for (int begin = first; begin < last; begin += group_size) {
    std::vector<int> members;
    for (int l = begin; l < last && l < begin + group_size; ++l) members.push_back(l);
    g.groups.push_back(std::move(members));
  }
  return g;
}

LayerGrouping LayerGrouping::explicit_groups(std::vector<std::vector<int>> groups) {
  LayerGrouping g;
  g.groups = std::move(groups);
  return g;
}

void LayerGrouping::validate(int num_layers) const {
  std::vector<int> seen(static_cast<std::size_t>(num_layers > 0 ? num_layers : 0), -1);
  for (std::size_t gi = 0; gi < groups.size(); ++gi) {
    XKV_REQUIRE(!groups[gi].empty(), "layer group " << gi << " is empty (group size 0)");
    for (int layer : groups[gi]) {
      XKV_REQUIRE(layer >= 0 && layer < num_layers,
                  "layer group " << gi << " names layer " << layer << ", outside [0, " << num_layers << ")");
      XKV_REQUIRE(seen[layer] < 0, "layer " << layer << " appears in group " << seen[layer] << " and group " << gi);
      seen[layer] = static_cast<int>(gi);
    }
  }
}

}  // namespace xkv
