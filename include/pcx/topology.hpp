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

/// Megatron-Core's order string of ExpertOrder::expert_first: "tp-cp-ep-dp-pp".
inline constexpr std::string_view kExpertFirstOrder = "tp-cp-ep-dp-pp";
/// Megatron-Core's order string of ExpertOrder::data_first: "tp-cp-dp-ep-pp".
inline constexpr std::string_view kDataFirstOrder = "tp-cp-dp-ep-pp";

/// Everything that decides the groups of a world. A regular value; validate()
/// checks every rule at once, before anything is built.
///
/// Ranks are laid out as Megatron-Core lays them out, on two grids ordered by one
/// order string: the dense grid (tp, cp, dp, pp) and, per expert parallel size E, the
/// expert grid (etp, E, edp, pp). The order string is `order` when set, else the one
/// `expert_order` names (kExpertFirstOrder or kDataFirstOrder).
struct ParallelConfig {
  /// Number of ranks. 0, the default, means the world communicator's size when a
  /// ParallelContext is built; a Topology on its own (a planner) must be given it.
  int world_size = 0;
  int tensor_parallel_size = 1;    ///< From the MPU, or 1. Clamped to the world size.
  int pipeline_parallel_size = 1;  ///< From the MPU, or 1.
  int context_parallel_size = 1;   ///< Megatron's context parallel size (cp), dense grid only.
  /// Expert parallel sizes, one per MoE layer size: W must be divisible by expert tensor
  /// × E × pipeline (with the defaults: each divides the data parallel size).
  std::vector<int> expert_parallel_sizes;
  /// Tensor parallel size of the expert grid (etp). Absent: the clamped tensor parallel size.
  std::optional<int> expert_tensor_parallel_size;
  ExpertOrder expert_order = ExpertOrder::expert_first;  ///< Order of the expert groups.
  /// Megatron's order string, fastest axis first, from the names tp, cp, ep, dp and pp
  /// (each at most once; an axis of size 1 may be left out). When set it decides the
  /// layout and `expert_order` is ignored.
  std::optional<std::string> order;
  /// ZeRO hpZ partition size; groups of this many consecutive ranks (clamped to the
  /// world size). Absent: no ZeRO param intra groups.
  std::optional<int> zero_hpz_size;
  /// Ranks per node for the all-to-all groups and the placement check. Absent: no
  /// all-to-all groups. kDetectRanksPerNode: a ParallelContext takes it from the nodes its
  /// world communicator sees (Communicator::nodes()); a Topology on its own refuses it.
  std::optional<int> ranks_per_node;
  /// Megatron's `num_distributed_optimizer_instances` (N): above 1, each data-context
  /// group is cut into N instances of consecutive members, and each expert data group
  /// likewise, which adds the distributed-optimizer kinds (see Topology::megatron_views()).
  int distributed_optimizer_instances = 1;
  /// Megatron's `rank_offset`: the grid covers the global ranks from this one on, and
  /// every kind but the world lies in that part; the ranks outside are in no group of it
  /// (e.g. an encoder on ranks 0 to 7, a decoder from rank 8, as two configurations).
  int rank_offset = 0;
  /// Megatron's `local_world_size`: the number of ranks of the grid. Absent: world_size −
  /// rank_offset. The sizes of the other fields are those of the grid.
  std::optional<int> local_world_size;
  /// Megatron's `hybrid_context_parallel`: groups of every power of two 2^k with
  /// 2 ≤ 2^k < 2^⌊log2(dp × cp)⌋, each a run of consecutive members of a data-context group,
  /// for dynamic context parallelism (GroupKind::hybrid_data_context_parallel).
  bool hybrid_context_parallel = false;
  /// Megatron's `hierarchical_context_parallel_sizes`: empty for none, else sizes whose
  /// product is the context parallel size, one level of groups each
  /// (GroupKind::hierarchical_context_parallel).
  std::vector<int> hierarchical_context_parallel_sizes;

  /// Field-wise equality.
  friend bool operator==(const ParallelConfig&, const ParallelConfig&) = default;
};

/// Throws ConfigError if @p config lays its grid over part of its world (a rank offset or a
/// local world size below the world), naming @p builder, which builds the whole world's
/// groups only: a ParallelContext or GridMpu of a part is built over a communicator of the
/// part's ranks (Communicator::split()), where the grid is that communicator's world.
void require_whole_world(const ParallelConfig& config, std::string_view builder);

/// ParallelConfig::ranks_per_node for "detect them" ("auto" on the command line).
inline constexpr int kDetectRanksPerNode = 0;

/// Checks every rule of a configuration.
/// @throws ConfigError naming the values and the rule broken: a size below 1, the
///         world not divisible by tensor × context × pipeline or by expert tensor ×
///         expert × pipeline, an expert parallel size listed twice, a malformed order
///         string or one that leaves out an axis larger than 1, pipeline groups that differ
///         between the dense and an expert grid, an expert data parallel size other than
///         the data parallel size when the order does not end in pp and pp > 1, a world not
///         divisible by the hpZ size or (for several nodes) by the ranks per node, a data
///         parallel × context parallel size or an expert data parallel size not divisible by
///         the distributed optimizer instances, instances that the order string leaves
///         irregular (see GroupLayout::subgroups()), hybrid context parallel groups of a
///         data-context group of odd size or that a power of two does not divide, hierarchical
///         context parallel sizes below 1 or whose product is not the context parallel size,
///         a rank offset below 0, a local world size below 1, a part that does not fit in the
///         world or (with ranks per node) does not start a node, or an overflow. The rules of
///         the sizes apply to the grid's part (its local world size).
void validate(const ParallelConfig& config);

/// The order string that lays out @p config: its `order`, else the one its
/// `expert_order` names.
[[nodiscard]] std::string_view order_of(const ParallelConfig& config) noexcept;

/// The kinds of group pcx builds.
enum class GroupKind {
  world,                         ///< Every rank: a clone of the world.
  tensor_parallel,               ///< Megatron tensor parallel groups.
  pipeline_parallel,             ///< Megatron pipeline parallel groups.
  data_parallel,                 ///< Megatron data parallel groups.
  expert_parallel,               ///< Expert parallel groups of one expert parallel size.
  expert_data_parallel,          ///< Expert data parallel groups of one expert parallel size.
  zero_param_intra,              ///< ZeRO hpZ parameter partition groups.
  all_to_all_local,              ///< The ranks of one node.
  all_to_all_global,             ///< The ranks of one local index across nodes.
  sequence_parallel,             ///< The MPU's sequence parallel groups, when it has them.
  sequence_data_parallel,        ///< The MPU's sequence data parallel groups (else data parallel).
  context_parallel,              ///< Megatron's context parallel groups ("cp").
  data_context_parallel,         ///< Data and context parallel together ("dp-cp").
  tensor_context_parallel,       ///< Tensor and context parallel together ("tp-cp").
  tensor_data_parallel,          ///< Tensor and data parallel together ("tp-dp").
  tensor_data_context_parallel,  ///< Tensor, data and context parallel together ("tp-dp-cp").
  model_parallel,                ///< Tensor and pipeline parallel together ("tp-pp").
  /// First and last rank of each pipeline group (its only rank when pp = 1); the
  /// ranks of the middle stages are in none.
  embedding,
  position_embedding,               ///< First rank of each pipeline group; the others are in none.
  expert_tensor_parallel,           ///< Tensor parallel groups of the expert grid ("tp" there).
  tensor_expert_parallel,           ///< Expert tensor and expert parallel together ("tp-ep").
  tensor_expert_pipeline_parallel,  ///< Expert tensor, expert and pipeline together ("tp-ep-pp").
  /// One distributed-optimizer instance's share of a data-context group: its members
  /// i·P to (i+1)·P − 1, with P = dp × cp / N (Megatron's intra-partial data parallel
  /// group with context parallel).
  intra_partial_data_context_parallel,
  /// One member of every instance of a data-context group: members j, j + P, j + 2P, ...
  /// (Megatron's inter distributed-optimizer instance group).
  inter_distributed_optimizer_instance,
  /// Every rank of one instance, W / N ranks: the ranks whose data-context group rank
  /// lies in [i·P, (i+1)·P) (Megatron's intra distributed-optimizer instance group).
  intra_distributed_optimizer_instance,
  /// An expert data group's members i·Pe to (i+1)·Pe − 1, with Pe = edp / N (expert grid).
  intra_partial_expert_data_parallel,
  /// An expert data group's members j, j + Pe, j + 2Pe, ... (expert grid; Megatron's
  /// inter-partial expert data parallel group).
  inter_partial_expert_data_parallel,
  /// Runs of GroupId::group_size consecutive members of a data-context group (Megatron's
  /// hybrid data × context parallel group of that size).
  hybrid_data_context_parallel,
  /// Level GroupId::level of the context parallel groups cut by
  /// ParallelConfig::hierarchical_context_parallel_sizes: with sizes s0, s1, ..., the
  /// members of a context parallel group that differ only in digit ℓ of their index in
  /// the mixed radix (s0 fastest), s_ℓ of them (Megatron's create_hierarchical_groups).
  hierarchical_context_parallel,
};

/// The two grids of Megatron's layout.
enum class Grid {
  dense,   ///< tp, cp, dp, pp: the attention (non-expert) layers.
  expert,  ///< etp, ep, edp, pp (one grid per expert parallel size): the MoE layers.
};

/// A group kind that is "the groups that vary these axes of this grid".
struct GridKind {
  GroupKind kind;            ///< The kind.
  Grid grid;                 ///< Its grid.
  std::string_view varying;  ///< The axes that vary, as Megatron's get_ranks names them ("tp-dp").
};

/// Every kind that is a grid view, the ones a ParallelContext builds first (as in
/// Topology::views()), then Megatron's others (as in Topology::megatron_views()).
[[nodiscard]] std::span<const GridKind> grid_kinds() noexcept;

/// Whether @p kind is one of Megatron's dense kinds, which an MPU owns: a grid kind of
/// the dense grid (tensor, context, pipeline, data parallel and their combinations) or an
/// embedding kind. The distributed-optimizer kinds are not: a context builds them.
[[nodiscard]] bool is_dense_kind(GroupKind kind) noexcept;

/// Where one rank sits on the expert grid of one expert parallel size.
struct ExpertCoordinates {
  int expert_parallel_size = 0;  ///< Which expert grid.
  int tensor = 0;                ///< Index on the expert tensor axis (etp).
  int expert = 0;                ///< Index on the expert axis.
  int data = 0;                  ///< Index on the expert data axis (edp).

  /// Field-wise equality.
  friend bool operator==(const ExpertCoordinates&, const ExpertCoordinates&) = default;
};

/// Where one rank sits on every axis of both grids.
struct RankCoordinates {
  int pipeline = 0;                        ///< Pipeline stage, shared by both grids.
  int data = 0;                            ///< Index on the dense data axis.
  int context = 0;                         ///< Index on the context axis.
  int tensor = 0;                          ///< Index on the dense tensor axis.
  bool first_pipeline_stage = false;       ///< Whether pipeline == 0.
  bool last_pipeline_stage = false;        ///< Whether pipeline is the last stage.
  std::vector<ExpertCoordinates> experts;  ///< One per expert parallel size, in configured order.

  /// Field-wise equality.
  friend bool operator==(const RankCoordinates&, const RankCoordinates&) = default;
};

/// Names one group kind of a topology: the kind, and for the kinds of the expert grid
/// the expert parallel size.
struct GroupId {
  GroupKind kind = GroupKind::world;  ///< The kind.
  int expert_parallel_size = 0;       ///< Set for the kinds of the expert grid only.
  int group_size = 0;                 ///< Set for hybrid_data_context_parallel only.
  int level = 0;                      ///< For hierarchical_context_parallel only: its level, from 0.

  /// "tensor_parallel", "expert_parallel/4", "hybrid_data_context_parallel/4",
  /// "hierarchical_context_parallel/L0", ... (the names pcx-plan prints).
  [[nodiscard]] std::string name() const;

  /// Same kind, expert parallel size, group size and level.
  friend bool operator==(const GroupId&, const GroupId&) = default;
};

/// One group kind of a topology and its layout.
struct GroupView {
  GroupId id;          ///< Which kind.
  GroupLayout layout;  ///< Its groups; a rank in none has colour GroupLayout::kNoGroup.
};

/// A validated configuration with every group kind it implies, each as a view of
/// a rank grid: Megatron's dense grid (tp, cp, dp, pp), its expert grid (etp, ep,
/// edp, pp) per expert parallel size, hpZ blocks, nodes. Pure: no communication.
class Topology {
 public:
  /// Validates @p config and lays out its groups.
  /// @throws ConfigError as validate() does.
  explicit Topology(ParallelConfig config);

  /// The configuration as given.
  [[nodiscard]] const ParallelConfig& config() const noexcept { return config_; }
  /// Number of ranks of the world.
  [[nodiscard]] int world_size() const noexcept { return config_.world_size; }
  /// Number of ranks of the grid: world_size() unless the grid covers part of the world.
  [[nodiscard]] int local_world_size() const noexcept { return part_.world_size; }
  /// The grid's first rank (ParallelConfig::rank_offset).
  [[nodiscard]] int rank_offset() const noexcept { return config_.rank_offset; }
  /// Tensor parallel size after clamping to the world size.
  [[nodiscard]] int tensor_parallel_size() const noexcept { return tensor_; }
  /// Pipeline parallel size.
  [[nodiscard]] int pipeline_parallel_size() const noexcept { return config_.pipeline_parallel_size; }
  /// Context parallel size.
  [[nodiscard]] int context_parallel_size() const noexcept { return config_.context_parallel_size; }
  /// local_world_size() / (tensor × context × pipeline).
  [[nodiscard]] int data_parallel_size() const noexcept;
  /// The expert grid's tensor parallel size: as configured, else the tensor parallel size.
  [[nodiscard]] int expert_tensor_parallel_size() const noexcept { return expert_tensor_; }
  /// The order string of both grids, fastest axis first (see order_of()).
  [[nodiscard]] std::string_view order() const noexcept { return order_of(config_); }
  /// The hpZ partition size after clamping to the world size, if hpZ is configured.
  [[nodiscard]] std::optional<int> zero_hpz_partition_size() const noexcept { return hpz_; }
  /// Sizes that were clamped to the world size, each as a sentence to log.
  [[nodiscard]] const std::vector<std::string>& clamp_notes() const noexcept { return clamp_notes_; }

  /// The group kinds a ParallelContext builds, in a fixed order: world, tensor,
  /// pipeline, data parallel, then an expert parallel and expert data parallel pair
  /// per expert parallel size (in the configured order), then ZeRO hpZ, then the
  /// all-to-all kinds (global only when there is more than one node). Every rank is in
  /// one group of each.
  [[nodiscard]] std::span<const GroupView> views() const noexcept {
    return std::span<const GroupView>(views_).first(context_view_count_);
  }

  /// Megatron's other kinds, in a fixed order: context, data-context, tensor-context,
  /// tensor-data, tensor-data-context and model parallel, embedding, position
  /// embedding, then per expert parallel size expert tensor, tensor-expert and
  /// tensor-expert-pipeline parallel; then, with more than one distributed optimizer
  /// instance, intra-partial data-context, inter and intra distributed-optimizer
  /// instance, and per expert parallel size intra- and inter-partial expert data parallel;
  /// then the hybrid data-context groups by ascending size, and the hierarchical context
  /// parallel levels from 0. In the embedding kinds some ranks are in no group.
  [[nodiscard]] std::span<const GroupView> megatron_views() const noexcept {
    return std::span<const GroupView>(views_).subspan(context_view_count_);
  }

  /// views() followed by megatron_views().
  [[nodiscard]] std::span<const GroupView> all_views() const noexcept { return views_; }

  /// The layout of group kind @p id.
  /// @throws GroupNotFound if this configuration has no such kind.
  [[nodiscard]] const GroupLayout& layout(const GroupId& id) const;

  /// The dense grid: tp, cp, dp, pp (and ep of size 1), laid out by order(). Its ranks
  /// count from rank_offset(): grid rank g is world rank g + rank_offset().
  [[nodiscard]] const RankGrid& dense_grid() const noexcept { return dense_; }

  /// The expert grid of expert parallel size @p expert_parallel_size: tp (the expert
  /// tensor size), ep, dp (the expert data size), pp (and cp of size 1), laid out by order(),
  /// its ranks counted from rank_offset().
  /// @throws GroupNotFound if that size is not configured.
  [[nodiscard]] const RankGrid& expert_grid(int expert_parallel_size) const;

  /// The groups that vary @p axes of the dense grid, as Megatron's
  /// `get_ranks("tp-dp")` lists them.
  /// @throws ConfigError if an axis name is empty, unknown or repeated.
  [[nodiscard]] GroupLayout dense_groups(std::string_view axes) const;

  /// The groups that vary @p axes of the expert grid of @p expert_parallel_size
  /// ("tp" there is the expert tensor axis, "dp" the expert data axis).
  /// @throws GroupNotFound if that size is not configured; ConfigError as dense_groups().
  [[nodiscard]] GroupLayout expert_groups(int expert_parallel_size, std::string_view axes) const;

  /// Where @p rank (a rank of the world) sits on every axis of both grids.
  /// @throws ConfigError if @p rank is outside [0, world_size()) or outside the grid's part.
  [[nodiscard]] RankCoordinates coordinates(int rank) const;

 private:
  // @p layout, cut from a grid of the part, over the world.
  [[nodiscard]] GroupLayout shifted(const GroupLayout& layout) const;
  // "world", or "grid of 8 ranks" for a grid over part of the world.
  [[nodiscard]] std::string grid_name() const;

  ParallelConfig config_;
  ParallelConfig part_;  // the configuration of the grid's part: its world is local_world_size()
  int tensor_ = 1;
  int expert_tensor_ = 1;
  RankGrid dense_;
  std::vector<RankGrid> expert_grids_;  // one per expert parallel size, in configured order
  std::optional<int> hpz_;
  std::vector<std::string> clamp_notes_;
  std::vector<GroupView> views_;  // views(), then megatron_views()
  std::size_t context_view_count_ = 0;
};

}  // namespace pcx
