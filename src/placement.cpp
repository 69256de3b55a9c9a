#include "pcx/placement.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <optional>

#include "pcx/error.hpp"

namespace pcx {
namespace {

// Groups of @p layout with members on more than one node of @p per_node consecutive
// ranks: members are ascending, so a group is on one node when its first and last are.
int crossing_groups(const GroupLayout& layout, int per_node) {
  int crossing = 0;
  const int last = layout.group_size() - 1;
  for (int c = 0; c < layout.group_count(); ++c) {
    crossing += layout.global_rank(c, 0) / per_node != layout.global_rank(c, last) / per_node ? 1 : 0;
  }
  return crossing;
}

// The kinds whose groups depend on the order, the views of the two grids, with their axes.
const GridKind* grid_kind(GroupKind kind) {
  const auto it = std::ranges::find(grid_kinds(), kind, &GridKind::kind);
  return it == grid_kinds().end() ? nullptr : &*it;
}

std::vector<std::string> split_names(std::string_view text) {
  std::vector<std::string> names;
  for (std::size_t begin = 0; begin <= text.size();) {
    const std::size_t end = std::min(text.find('-', begin), text.size());
    names.emplace_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return names;
}

// How much a kind's traffic needs a node's bandwidth: the slowest of its axes in Megatron's
// default order, which lists the most communicating axis first (0 for tp ... 4 for pp).
std::size_t slowest_axis(std::string_view varying) {
  constexpr std::array<std::string_view, 5> kByTraffic = {"tp", "cp", "ep", "dp", "pp"};
  std::size_t slowest = 0;
  for (const std::string& axis : split_names(varying)) {
    slowest = std::max(slowest, static_cast<std::size_t>(std::ranges::find(kByTraffic, axis) - kByTraffic.begin()));
  }
  return slowest;
}

// @p order with the axes of @p varying first, each group keeping its relative order.
std::string fronted(std::string_view order, std::string_view varying) {
  const std::vector<std::string> front = split_names(varying);
  std::vector<std::string> names = split_names(order);
  // std::stable_partition: clang 14's ranges reject the subrange std::ranges' version returns.
  std::stable_partition(names.begin(), names.end(),
                        [&](const std::string& name) { return std::ranges::count(front, name) > 0; });
  return fmt::format("{}", fmt::join(names, "-"));
}

std::optional<Topology> with_order(const Topology& topology, std::string order) {
  ParallelConfig config = topology.config();
  config.order = std::move(order);
  try {
    return Topology(std::move(config));
  } catch (const ConfigError&) {
    return std::nullopt;  // Megatron's rules refuse this order for these sizes
  }
}

}  // namespace

std::string PlacementWarning::message() const {
  return fmt::format(
      "{}: {} of {} groups cross nodes of {} ranks; order '{}' keeps them inside nodes and moves out no "
      "kind of axes as fast in Megatron's default order",
      id.name(), crossing_groups, group_count, ranks_per_node, better_order);
}

std::vector<PlacementWarning> check_placement(const Topology& topology) {
  const std::optional<int> per_node = topology.config().ranks_per_node;
  if (!per_node || topology.world_size() <= *per_node) return {};
  struct Kind {
    const GroupView* view;
    std::string_view varying;
    int crossing;
  };
  std::vector<Kind> kinds;
  for (const GroupView& view : topology.all_views()) {
    const GridKind* k = grid_kind(view.id.kind);
    // A kind with an earlier one's groups (tensor-context parallel when cp = 1) has its verdict.
    const bool repeated =
        std::ranges::any_of(kinds, [&](const Kind& earlier) { return earlier.view->layout == view.layout; });
    if (k && !repeated) kinds.push_back({&view, k->varying, crossing_groups(view.layout, *per_node)});
  }
  std::vector<PlacementWarning> warnings;
  for (const Kind& kind : kinds) {
    if (kind.crossing == 0) continue;
    std::string order = fronted(topology.order(), kind.varying);
    if (order == topology.order()) continue;
    const std::optional<Topology> better = with_order(topology, order);
    if (!better || crossing_groups(better->layout(kind.view->id), *per_node) != 0) continue;
    // A faster kind inside nodes now must stay inside: tp over dp, never the reverse.
    const bool keeps_faster_inside = std::ranges::all_of(kinds, [&](const Kind& other) {
      return other.crossing != 0 || slowest_axis(other.varying) > slowest_axis(kind.varying) ||
             crossing_groups(better->layout(other.view->id), *per_node) == 0;
    });
    if (keeps_faster_inside) {
      warnings.push_back({kind.view->id, kind.crossing, kind.view->layout.group_count(), *per_node, std::move(order)});
    }
  }
  return warnings;
}

}  // namespace pcx
