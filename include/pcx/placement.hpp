#pragma once
/// @file placement.hpp
/// @brief Whether a layout keeps its groups inside nodes where it could.

#include <string>
#include <vector>

#include "pcx/topology.hpp"

namespace pcx {

/// A kind whose groups cross node boundaries although an order of the same sizes keeps
/// them inside nodes, and keeps inside nodes every kind inside them now whose axes are as
/// fast in Megatron's default order (tp, cp, ep, dp, pp: the most communicating first).
struct PlacementWarning {
  GroupId id;                ///< The kind.
  int crossing_groups = 0;   ///< Its groups with members on more than one node.
  int group_count = 0;       ///< All its groups.
  int ranks_per_node = 0;    ///< The nodes: blocks of this many consecutive ranks.
  std::string better_order;  ///< An order string that keeps this kind inside nodes.

  /// "tensor_parallel: 8 of 8 groups cross nodes of 4 ranks; order 'tp-dp' keeps them inside
  /// nodes and moves out no kind of axes as fast in Megatron's default order".
  [[nodiscard]] std::string message() const;
};

/// Checks every kind of Megatron's grids of @p topology (its views on the dense and expert
/// grids; not the world, hpZ, node or embedding kinds) against nodes of its configuration's
/// ranks per node, consecutive ranks each. Tensor, context and expert tensor parallel
/// groups across nodes are the classic mistakes. For each kind with crossing groups, the
/// order that lists its axes first (the others after, in their order) is tried: a warning
/// names it when it is valid, keeps the kind inside nodes and moves out no kind inside
/// them now whose slowest axis is at most as slow as the kind's (so tensor parallel may
/// push data parallel across nodes, never the reverse).
/// A kind with the same groups as an earlier one is not checked again.
/// @return the warnings, in all_views() order; none without ranks per node or on one node.
[[nodiscard]] std::vector<PlacementWarning> check_placement(const Topology& topology);

}  // namespace pcx
