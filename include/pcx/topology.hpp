#pragma once
/// @file topology.hpp
/// @brief The parallel configuration and every group kind of pcx as a view of a RankGrid.

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pcx/layout.hpp"

namespace pcx {

/// How expert parallel and expert data parallel ranks interleave inside a data
/// parallel group (DeepSpeed's `use_data_before_expert_parallel_`).
enum class ExpertOrder {
  expert_first,  ///< E+D (DeepSpeed's default): experts of one group are neighbours.
  data_first,    ///< D+E: expert data parallel replicas are neighbours.
};

/// "expert-first" or "data-first".
[[nodiscard]] std::string_view to_string(ExpertOrder order) noexcept;

/// Parses "expert-first" or "data-first".
/// @throws ConfigError for any other text.
[[nodiscard]] ExpertOrder parse_expert_order(std::string_view text);

/// Everything that decides the groups of a world. A regular value; validate()
/// checks every rule at once, before anything is built.
struct ParallelConfig {
  /// Number of ranks. 0, the default, means the world communicator's size when a
  /// ParallelContext is built; a Topology on its own (a planner) must be given it.
  int world_size = 0;
  int tensor_parallel_size = 1;    ///< From the MPU, or 1. Clamped to the world size.
  int pipeline_parallel_size = 1;  ///< From the MPU, or 1.
  /// Expert parallel sizes, one per MoE layer size; each divides the data parallel size.
  std::vector<int> expert_parallel_sizes;
  ExpertOrder expert_order = ExpertOrder::expert_first;  ///< Order of the expert groups.
  /// ZeRO hpZ partition size; groups of this many consecutive ranks (clamped to the
  /// world size). Absent: no ZeRO param intra groups.
  std::optional<int> zero_hpz_size;
  /// Ranks per node for the all-to-all groups. Absent: no all-to-all groups.
  std::optional<int> ranks_per_node;

  /// Field-wise equality.
  friend bool operator==(const ParallelConfig&, const ParallelConfig&) = default;
};

/// Checks every rule of a configuration.
/// @throws ConfigError naming the values and the rule broken: a size below 1, the
///         world not divisible by tensor × pipeline, an expert parallel size that does
///         not divide the data parallel size or is listed twice, a world not divisible
///         by the hpZ size or (for several nodes) by the ranks per node, or an overflow.
void validate(const ParallelConfig& config);

/// The kinds of group pcx builds.
enum class GroupKind {
  world,                 ///< Every rank: a clone of the world.
  tensor_parallel,       ///< Megatron tensor parallel groups.
  pipeline_parallel,     ///< Megatron pipeline parallel groups.
  data_parallel,         ///< Megatron data parallel groups.
  expert_parallel,       ///< Expert parallel groups of one expert parallel size.
  expert_data_parallel,  ///< Expert data parallel groups of one expert parallel size.
  zero_param_intra,      ///< ZeRO hpZ parameter partition groups.
  all_to_all_local,      ///< The ranks of one node.
  all_to_all_global,     ///< The ranks of one local index across nodes.
  sequence_parallel,     ///< The MPU's sequence parallel groups, when it has them.
  sequence_data_parallel,  ///< The MPU's sequence data parallel groups (else data parallel).
};

/// Names one group kind of a topology: the kind, and for the two expert kinds the
/// expert parallel size.
struct GroupId {
  GroupKind kind = GroupKind::world;  ///< The kind.
  int expert_parallel_size = 0;       ///< Set for the expert kinds only.

  /// "tensor_parallel", "expert_parallel/4", ... (the names pcx-plan prints).
  [[nodiscard]] std::string name() const;

  /// Same kind and expert parallel size.
  friend bool operator==(const GroupId&, const GroupId&) = default;
};

/// One group kind of a topology and its layout.
struct GroupView {
  GroupId id;          ///< Which kind.
  GroupLayout layout;  ///< Its groups.
};

/// A validated configuration with every group kind it implies, each as a view of
/// a rank grid (pipeline × data × tensor for Megatron's groups, pipeline × expert
/// data × expert × tensor for the expert groups, and so on). Pure: no communication.
class Topology {
 public:
  /// Validates @p config and lays out its groups.
  /// @throws ConfigError as validate() does.
  explicit Topology(ParallelConfig config);

  /// The configuration as given.
  [[nodiscard]] const ParallelConfig& config() const noexcept { return config_; }
  /// Number of ranks.
  [[nodiscard]] int world_size() const noexcept { return config_.world_size; }
  /// Tensor parallel size after clamping to the world size.
  [[nodiscard]] int tensor_parallel_size() const noexcept { return tensor_; }
  /// Pipeline parallel size.
  [[nodiscard]] int pipeline_parallel_size() const noexcept { return config_.pipeline_parallel_size; }
  /// world / (tensor × pipeline).
  [[nodiscard]] int data_parallel_size() const noexcept;
  /// The hpZ partition size after clamping to the world size, if hpZ is configured.
  [[nodiscard]] std::optional<int> zero_hpz_partition_size() const noexcept { return hpz_; }
  /// Sizes that were clamped to the world size, each as a sentence to log.
  [[nodiscard]] const std::vector<std::string>& clamp_notes() const noexcept { return clamp_notes_; }

  /// Every group kind of this configuration, in a fixed order: world, tensor,
  /// pipeline, data parallel, then an expert parallel and expert data parallel pair
  /// per expert parallel size (in the configured order), then ZeRO hpZ, then the
  /// all-to-all kinds (global only when there is more than one node).
  [[nodiscard]] std::span<const GroupView> views() const noexcept { return views_; }

  /// The layout of group kind @p id.
  /// @throws GroupNotFound if this configuration has no such kind.
  [[nodiscard]] const GroupLayout& layout(const GroupId& id) const;

 private:
  ParallelConfig config_;
  int tensor_ = 1;
  std::optional<int> hpz_;
  std::vector<std::string> clamp_notes_;
  std::vector<GroupView> views_;
};

}  // namespace pcx
