#include "pcx/placement.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <optional>
#include <utility>

#include "pcx/error.hpp"

namespace pcx {
namespace {

// How @p layout's groups lie on nodes of @p per_node consecutive ranks: the groups with
// members on more than one node, and the nodes all groups touch together (a group on one
// node touches one). Members are ascending, so a group's nodes are its changes of node.
struct Spread {
  int crossing = 0;
  long long nodes = 0;
};

Spread spread(const GroupLayout& layout, int per_node) {
  Spread s;
  for (int c = 0; c < layout.group_count(); ++c) {
    int nodes = 1;
    for (int i = 1; i < layout.group_size(); ++i) {
      nodes += layout.global_rank(c, i) / per_node != layout.global_rank(c, i - 1) / per_node ? 1 : 0;
    }
    s.crossing += nodes > 1 ? 1 : 0;
    s.nodes += nodes;
  }
  return s;
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

// Megatron's default order lists the most communicating axis first.
constexpr std::array<std::string_view, 5> kByTraffic = {"tp", "cp", "ep", "dp", "pp"};
constexpr std::size_t kExpertAxis = 2;

// How much a kind's traffic needs a node's bandwidth: the slowest of its axes in Megatron's
// default order (0 for tp ... 4 for pp).
std::size_t slowest_axis(std::string_view varying) {
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
  if (better_order.empty()) {
    return fmt::format(
        "{}: groups of {} ranks cannot fit in nodes of {} ranks: {} of {} groups cross nodes and no order keeps "
        "them inside; give nodes of at least {} ranks or smaller groups",
        id.name(), group_size, ranks_per_node, crossing_groups, group_count, group_size);
  }
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
    Spread now;
  };
  std::vector<Kind> kinds;
  for (const GroupView& view : topology.all_views()) {
    const GridKind* k = grid_kind(view.id.kind);
    if (k != nullptr) kinds.push_back({&view, k->varying, spread(view.layout, *per_node)});
  }
  // Kinds with the same groups (tensor-context parallel when cp = 1, expert and data
  // parallel when etp = tp) get one verdict, the fastest one's (the first of equals); all
  // keep their say in what a new order may spread, as their groups may part under it.
  const auto judged = [&](std::size_t i) {
    const auto rank = [&](std::size_t j) { return std::pair(slowest_axis(kinds[j].varying), j); };
    for (std::size_t j = 0; j < kinds.size(); ++j) {
      if (rank(j) < rank(i) && kinds[j].view->layout == kinds[i].view->layout) return false;
    }
    return true;
  };
  std::vector<PlacementWarning> warnings;
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    const Kind& kind = kinds[i];
    if (kind.now.crossing == 0 || !judged(i)) continue;
    const GroupLayout& layout = kind.view->layout;
    PlacementWarning warning{.id = kind.view->id,
                             .crossing_groups = kind.now.crossing,
                             .group_count = layout.group_count(),
                             .group_size = layout.group_size(),
                             .ranks_per_node = *per_node,
                             .better_order = {}};
    if (layout.group_size() > *per_node) {
      // Expert, data and pipeline parallel groups larger than a node are common designs;
      // tensor or context parallel ones are the most expensive mistake there is, and no
      // order mends them.
      if (slowest_axis(kind.varying) < kExpertAxis) warnings.push_back(std::move(warning));
      continue;
    }
    std::string order = fronted(topology.order(), kind.varying);
    if (order == topology.order()) continue;
    const std::optional<Topology> better = with_order(topology, order);
    if (!better || spread(better->layout(kind.view->id), *per_node).crossing != 0) continue;
    // No kind of axes as fast may spread over more nodes: tensor parallel may push data
    // parallel across nodes, never the reverse, nor further across when it crosses already.
    const bool keeps_faster_inside = std::ranges::all_of(kinds, [&](const Kind& other) {
      return slowest_axis(other.varying) > slowest_axis(kind.varying) ||
             spread(better->layout(other.view->id), *per_node).nodes <= other.now.nodes;
    });
    if (keeps_faster_inside) {
      warning.better_order = std::move(order);
      warnings.push_back(std::move(warning));
    }
  }
  return warnings;
}

}  // namespace pcx
