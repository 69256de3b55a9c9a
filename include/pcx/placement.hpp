#pragma once
/// @file placement.hpp
/// @brief Whether a layout keeps its groups inside nodes where it could.

#include <string>
#include <vector>

#include "pcx/topology.hpp"

namespace pcx {

/// A kind whose groups cross node boundaries, where that is a mistake: either its groups
/// cannot fit in a node at all (larger than a node, for a kind of tensor and context
/// parallel axes only), or an order of the same sizes keeps them inside nodes and spreads
/// no kind of axes as fast (tp, cp, ep, dp, pp: the most communicating first) over more
/// nodes than now.
struct PlacementWarning {
  GroupId id;                ///< The kind.
  int crossing_groups = 0;   ///< Its groups with members on more than one node.
  int group_count = 0;       ///< All its groups.
  int group_size = 0;        ///< The members of each group.
  int ranks_per_node = 0;    ///< The nodes: blocks of this many consecutive ranks.
  std::string better_order;  ///< An order string that keeps this kind inside nodes; empty when none can.

  /// With an order: "tensor_parallel: 8 of 8 groups cross nodes of 4 ranks; order 'tp-dp'
  /// keeps them inside nodes and moves out no kind of axes as fast in Megatron's default
  /// order". Without: "tensor_parallel: groups of 8 ranks cannot fit in nodes of 4 ranks: 2
  /// of 2 groups cross nodes and no order keeps them inside; give nodes of at least 8 ranks
  /// or smaller groups".
  [[nodiscard]] std::string message() const;
};

/// Checks every kind of Megatron's grids of @p topology (its views on the dense and expert
/// grids; not the world, hpZ, node or embedding kinds, nor the distributed-optimizer, hybrid
/// and hierarchical cuts of those views) against nodes of its configuration's
/// ranks per node, consecutive ranks each. Tensor, context and expert tensor parallel
/// groups across nodes are the classic mistakes. A kind with crossing groups larger than
/// a node is named without an order when its axes are tp and cp only (expert, data and
/// pipeline parallel groups larger than a node are common designs). For any other kind with
/// crossing groups, the order that lists its axes first (the others after, in their order)
/// is tried: a warning names it when it is valid, keeps the kind inside nodes and spreads
/// no kind whose slowest axis is at most as slow as the kind's over more nodes than now
/// (the nodes its groups touch, summed over the groups): tensor parallel may push data
/// parallel across nodes, never the reverse, and never further across when it crosses.
/// Kinds with the same groups are checked once, as the fastest of them.
/// @return the warnings, in all_views() order; none without ranks per node or on one node.
[[nodiscard]] std::vector<PlacementWarning> check_placement(const Topology& topology);

}  // namespace pcx
