#include "pcx/topology.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <climits>
#include <stdexcept>

#include "pcx/error.hpp"

namespace pcx {
namespace {

void require_positive(int value, std::string_view what) {
  if (value < 1) throw ConfigError(fmt::format("{} {} must be at least 1", what, value));
}

// Megatron's kinds, each "the groups that vary these axes of this grid". A context
// builds the first kContextKinds (the seed's); the others are Megatron's only.
constexpr std::array<GridKind, 14> kGridKinds{{
    {GroupKind::tensor_parallel, Grid::dense, "tp"},
    {GroupKind::pipeline_parallel, Grid::dense, "pp"},
    {GroupKind::data_parallel, Grid::dense, "dp"},
    {GroupKind::expert_parallel, Grid::expert, "ep"},
    {GroupKind::expert_data_parallel, Grid::expert, "dp"},
    {GroupKind::context_parallel, Grid::dense, "cp"},
    {GroupKind::data_context_parallel, Grid::dense, "dp-cp"},
    {GroupKind::tensor_context_parallel, Grid::dense, "tp-cp"},
    {GroupKind::tensor_data_parallel, Grid::dense, "tp-dp"},
    {GroupKind::tensor_data_context_parallel, Grid::dense, "tp-dp-cp"},
    {GroupKind::model_parallel, Grid::dense, "tp-pp"},
    {GroupKind::expert_tensor_parallel, Grid::expert, "tp"},
    {GroupKind::tensor_expert_parallel, Grid::expert, "tp-ep"},
    {GroupKind::tensor_expert_pipeline_parallel, Grid::expert, "tp-ep-pp"},
}};
constexpr std::size_t kContextKinds = 5;

// Megatron's distributed-optimizer kinds cut each data-context group (dense) or expert
// data group (expert) into N instances of P consecutive members.
enum class Cut {
  within_instance,   // the P members of one instance
  across_instances,  // one member of every instance
  whole_instance,    // every rank whose member lies in one instance
};
struct InstanceKind {
  GroupKind kind;
  Grid grid;
  std::string_view cut_of;  // the groups cut, as get_ranks names them
  Cut cut;
};
constexpr std::array<InstanceKind, 5> kInstanceKinds{{
    {GroupKind::intra_partial_data_context_parallel, Grid::dense, "dp-cp", Cut::within_instance},
    {GroupKind::inter_distributed_optimizer_instance, Grid::dense, "dp-cp", Cut::across_instances},
    {GroupKind::intra_distributed_optimizer_instance, Grid::dense, "dp-cp", Cut::whole_instance},
    {GroupKind::intra_partial_expert_data_parallel, Grid::expert, "dp", Cut::within_instance},
    {GroupKind::inter_partial_expert_data_parallel, Grid::expert, "dp", Cut::across_instances},
}};

std::string_view kind_name(GroupKind kind) noexcept {
  switch (kind) {
    case GroupKind::world: return "world";
    case GroupKind::tensor_parallel: return "tensor_parallel";
    case GroupKind::pipeline_parallel: return "pipeline_parallel";
    case GroupKind::data_parallel: return "data_parallel";
    case GroupKind::expert_parallel: return "expert_parallel";
    case GroupKind::expert_data_parallel: return "expert_data_parallel";
    case GroupKind::zero_param_intra: return "zero_param_intra";
    case GroupKind::all_to_all_local: return "all_to_all_local";
    case GroupKind::all_to_all_global: return "all_to_all_global";
    case GroupKind::sequence_parallel: return "sequence_parallel";
    case GroupKind::sequence_data_parallel: return "sequence_data_parallel";
    case GroupKind::context_parallel: return "context_parallel";
    case GroupKind::data_context_parallel: return "data_context_parallel";
    case GroupKind::tensor_context_parallel: return "tensor_context_parallel";
    case GroupKind::tensor_data_parallel: return "tensor_data_parallel";
    case GroupKind::tensor_data_context_parallel: return "tensor_data_context_parallel";
    case GroupKind::model_parallel: return "model_parallel";
    case GroupKind::embedding: return "embedding";
    case GroupKind::position_embedding: return "position_embedding";
    case GroupKind::expert_tensor_parallel: return "expert_tensor_parallel";
    case GroupKind::tensor_expert_parallel: return "tensor_expert_parallel";
    case GroupKind::tensor_expert_pipeline_parallel: return "tensor_expert_pipeline_parallel";
    case GroupKind::intra_partial_data_context_parallel: return "intra_partial_data_context_parallel";
    case GroupKind::inter_distributed_optimizer_instance: return "inter_distributed_optimizer_instance";
    case GroupKind::intra_distributed_optimizer_instance: return "intra_distributed_optimizer_instance";
    case GroupKind::intra_partial_expert_data_parallel: return "intra_partial_expert_data_parallel";
    case GroupKind::inter_partial_expert_data_parallel: return "inter_partial_expert_data_parallel";
    case GroupKind::hybrid_data_context_parallel: return "hybrid_data_context_parallel";
    case GroupKind::hierarchical_context_parallel: return "hierarchical_context_parallel";
  }
  return "unknown";
}

bool on_expert_grid(GroupKind kind) noexcept {
  const auto expert = [kind](const auto& k) { return k.kind == kind && k.grid == Grid::expert; };
  return std::ranges::any_of(kGridKinds, expert) || std::ranges::any_of(kInstanceKinds, expert);
}

int clamped_tensor(const ParallelConfig& c) { return std::min(c.tensor_parallel_size, c.world_size); }

// Both grids know every axis name, so that any order string naming them parses; the
// axes a grid does not use have size 1. Sizes are those of a configuration whose
// divisibility has been checked.
RankGrid dense_grid_of(const ParallelConfig& c) {
  const int tensor = clamped_tensor(c);
  const int cp = c.context_parallel_size;
  const int pp = c.pipeline_parallel_size;
  const std::array<Axis, 5> sizes{
      {{"tp", tensor}, {"cp", cp}, {"ep", 1}, {"dp", c.world_size / tensor / cp / pp}, {"pp", pp}}};
  try {
    return RankGrid::from_order(order_of(c), sizes);
  } catch (const ConfigError& e) {
    throw ConfigError(
        fmt::format("dense grid (tp {}, cp {}, dp {}, pp {}): {}", tensor, cp, sizes[3].size, pp, e.what()));
  }
}

RankGrid expert_grid_of(const ParallelConfig& c, int ep) {
  const int tensor = c.expert_tensor_parallel_size.value_or(clamped_tensor(c));
  const int pp = c.pipeline_parallel_size;
  const std::array<Axis, 5> sizes{
      {{"tp", tensor}, {"cp", 1}, {"ep", ep}, {"dp", c.world_size / tensor / ep / pp}, {"pp", pp}}};
  try {
    return RankGrid::from_order(order_of(c), sizes);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("expert grid of expert parallel size {} (tp {}, ep {}, dp {}, pp {}): {}", ep, tensor,
                                  ep, sizes[3].size, pp, e.what()));
  }
}

// Distance in global rank between neighbouring pipeline stages; pipeline groups of two
// grids of one world and one pipeline size are the same exactly when this is.
int stage_stride(const RankGrid& grid) {
  const GroupLayout stages = grid.along({"pp"});
  return stages.group_size() > 1 ? stages.global_rank(0, 1) - stages.global_rank(0, 0) : 0;
}

// The expert rules: divisibility, then the order's two rules between the grids.
void validate_expert_grids(const ParallelConfig& c, const RankGrid& dense) {
  const int tensor = clamped_tensor(c);
  const int pp = c.pipeline_parallel_size;
  const int data = c.world_size / tensor / c.context_parallel_size / pp;
  const int expert_tensor = c.expert_tensor_parallel_size.value_or(tensor);
  for (std::size_t i = 0; i < c.expert_parallel_sizes.size(); ++i) {
    const int ep = c.expert_parallel_sizes[i];
    require_positive(ep, "expert parallel size");
    // In 64 bits: both factors are at most INT_MAX.
    const long long replicated = static_cast<long long>(expert_tensor) * pp;
    if (c.world_size % replicated != 0) {
      throw ConfigError(
          fmt::format("world size {} is not divisible by expert tensor parallel size {} x pipeline "
                      "parallel size {} (needed by expert parallel size {})",
                      c.world_size, expert_tensor, pp, ep));
    }
    const auto per_stage = static_cast<int>(c.world_size / replicated);
    if (per_stage % ep != 0) {
      if (per_stage == data && expert_tensor == tensor && c.context_parallel_size == 1) {
        throw ConfigError(fmt::format(
            "expert parallel size {} does not divide data parallel size {} (world {} / tensor {} / pipeline {})", ep,
            data, c.world_size, tensor, pp));
      }
      throw ConfigError(fmt::format(
          "expert parallel size {} does not divide {} (world {} / expert tensor parallel size {} / pipeline {})", ep,
          per_stage, c.world_size, expert_tensor, pp));
    }
    if (std::find(c.expert_parallel_sizes.begin(), c.expert_parallel_sizes.begin() + static_cast<std::ptrdiff_t>(i),
                  ep) != c.expert_parallel_sizes.begin() + static_cast<std::ptrdiff_t>(i)) {
      throw ConfigError(fmt::format("expert parallel size {} is listed twice", ep));
    }
    const RankGrid expert = expert_grid_of(c, ep);
    const std::string_view order = order_of(c);
    const int expert_data = per_stage / ep;
    if (!order.ends_with("pp") && pp > 1 && expert_data != data) {
      throw ConfigError(fmt::format(
          "order '{}' does not end in pp and pipeline parallel size is {}, so the expert data parallel size {} "
          "(expert parallel size {}) must equal the data parallel size {}",
          order, pp, expert_data, ep, data));
    }
    if (stage_stride(dense) != stage_stride(expert)) {
      throw ConfigError(fmt::format(
          "order '{}' gives different pipeline groups on the dense grid (stages {} ranks apart) and on the expert "
          "grid of expert parallel size {} (stages {} ranks apart); they must be the same",
          order, stage_stride(dense), ep, stage_stride(expert)));
    }
  }
}

// The groups of one distributed-optimizer kind on @p grid (the dense grid or the expert
// grid of @p ep), whose divisibility validate() has checked.
GroupLayout instance_layout(const ParallelConfig& c, const InstanceKind& k, const RankGrid& grid, int ep) {
  const GroupLayout cut = grid.along_names(k.cut_of);
  const int instances = c.distributed_optimizer_instances;
  const int per_instance = cut.group_size() / instances;
  try {
    switch (k.cut) {
      case Cut::within_instance: return cut.subgroups(1, per_instance);
      case Cut::across_instances: return cut.subgroups(per_instance, instances);
      case Cut::whole_instance: return cut.subgroups(per_instance, instances).complement();
    }
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format(
        "{} groups of {} distributed optimizer instances under order '{}': instances of {} members of the {} "
        "groups are not translates of one another, which no rank grid holds ({}); an order with the {} axes "
        "next to each other has regular instances",
        GroupId{k.kind, ep}.name(), instances, order_of(c), per_instance, k.cut_of, e.what(), k.cut_of));
  }
  throw std::logic_error("unknown instance cut");
}

// Megatron's two divisibility rules for N instances, and the instances' regularity.
void validate_instances(const ParallelConfig& c, const RankGrid& dense) {
  const int instances = c.distributed_optimizer_instances;
  require_positive(instances, "distributed optimizer instances");
  if (instances == 1) return;
  const int data_context = c.world_size / clamped_tensor(c) / c.pipeline_parallel_size;
  if (data_context % instances != 0) {
    throw ConfigError(fmt::format(
        "data parallel size {} x context parallel size {} = {} is not divisible by {} distributed optimizer instances",
        data_context / c.context_parallel_size, c.context_parallel_size, data_context, instances));
  }
  const int expert_tensor = c.expert_tensor_parallel_size.value_or(clamped_tensor(c));
  for (const int ep : c.expert_parallel_sizes) {
    const int expert_data = c.world_size / expert_tensor / ep / c.pipeline_parallel_size;
    if (expert_data % instances != 0) {
      throw ConfigError(fmt::format(
          "expert data parallel size {} (expert parallel size {}) is not divisible by {} distributed optimizer "
          "instances",
          expert_data, ep, instances));
    }
  }
  for (const InstanceKind& k : kInstanceKinds) {
    if (k.grid == Grid::dense) {
      (void)instance_layout(c, k, dense, 0);
      continue;
    }
    for (const int ep : c.expert_parallel_sizes) (void)instance_layout(c, k, expert_grid_of(c, ep), ep);
  }
}

// The sizes of Megatron's hybrid groups for data-context groups of @p members ranks:
// 2^k for 2 <= 2^k < 2^floor(log2(members)).
std::vector<int> hybrid_sizes(int members) {
  int largest = 1;
  while (largest <= members / 2) largest *= 2;
  std::vector<int> sizes;
  for (int size = 2; size < largest; size *= 2) sizes.push_back(size);
  return sizes;
}

// Megatron's kinds of one size or level each, the hybrid data-context groups and the
// hierarchical context parallel levels, from rules validate_series() has checked.
std::vector<GroupView> series_views(const ParallelConfig& c, const RankGrid& dense) {
  std::vector<GroupView> views;
  const GroupLayout data_context = dense.along_names("dp-cp");
  if (c.hybrid_context_parallel) {
    for (const int size : hybrid_sizes(data_context.group_size())) {
      const GroupId id{GroupKind::hybrid_data_context_parallel, 0, size};
      try {
        views.push_back({id, data_context.subgroups(1, size)});
      } catch (const ConfigError& e) {
        throw ConfigError(fmt::format(
            "{} under order '{}': runs of {} members of the dp-cp groups are not translates of one another, which "
            "no rank grid holds ({}); an order with the dp and cp axes next to each other has regular groups",
            id.name(), order_of(c), size, e.what()));
      }
    }
  }
  const GroupLayout context = dense.along_names("cp");
  int below = 1;  // the product of the sizes of the levels below
  for (std::size_t level = 0; level < c.hierarchical_context_parallel_sizes.size(); ++level) {
    const int size = c.hierarchical_context_parallel_sizes[level];
    views.push_back({GroupId{GroupKind::hierarchical_context_parallel, 0, 0, static_cast<int>(level)},
                     context.subgroups(below, size)});
    below *= size;
  }
  return views;
}

// Megatron's rules for the hybrid and hierarchical groups, and pcx's for the hybrid sizes.
void validate_series(const ParallelConfig& c, const RankGrid& dense) {
  constexpr long long kAboveInt = static_cast<long long>(INT_MAX) + 1;
  const int cp = c.context_parallel_size;
  const auto& levels = c.hierarchical_context_parallel_sizes;
  if (!levels.empty()) {
    long long product = 1;
    for (const int size : levels) {
      require_positive(size, "hierarchical context parallel size");
      // Saturated above INT_MAX, so that no list of sizes overflows.
      product = std::min(product * size, kAboveInt);
    }
    if (product != cp) {
      throw ConfigError(fmt::format(
          "hierarchical context parallel sizes [{}] multiply to {}, not the context parallel size {}",
          fmt::join(levels, ","), product == kAboveInt ? fmt::format("more than {}", INT_MAX) : fmt::format("{}", product),
          cp));
    }
  }
  if (c.hybrid_context_parallel) {
    const int members = c.world_size / clamped_tensor(c) / c.pipeline_parallel_size;
    const int dp = members / cp;
    if (members % 2 != 0) {
      throw ConfigError(fmt::format(
          "hybrid context parallel needs an even data parallel x context parallel size, not {} (dp {} x cp {})",
          members, dp, cp));
    }
    for (const int size : hybrid_sizes(members)) {
      if (members % size != 0) {
        throw ConfigError(fmt::format(
            "hybrid context parallel group size {} does not divide the {} ranks of a data-context group (dp {} x cp "
            "{}); Megatron would build a group of {} under that size",
            size, members, dp, cp, members % size));
      }
    }
  }
  (void)series_views(c, dense);
}

void require_whole_nodes(int world, int per_node) {
  if (world > per_node && world % per_node != 0) {
    throw ConfigError(fmt::format("world size {} is not a whole number of nodes of {} ranks (a world larger than one "
                                  "node must be divisible by the ranks per node)",
                                  world, per_node));
  }
}

// Where the grid lies: a part of the world that fits in it, on node boundaries.
void validate_place(const ParallelConfig& c) {
  require_positive(c.world_size, "world size");
  if (c.rank_offset < 0) throw ConfigError(fmt::format("rank offset {} must be at least 0", c.rank_offset));
  if (c.local_world_size) {
    require_positive(*c.local_world_size, "local world size");
    // In 64 bits: both are at most INT_MAX.
    if (static_cast<long long>(c.rank_offset) + *c.local_world_size > c.world_size) {
      throw ConfigError(fmt::format(
          "the grid's ranks [{}, {}) (rank offset {}, local world size {}) do not fit in the world of {} ranks",
          c.rank_offset, static_cast<long long>(c.rank_offset) + *c.local_world_size, c.rank_offset,
          *c.local_world_size, c.world_size));
    }
  } else if (c.rank_offset >= c.world_size) {
    throw ConfigError(fmt::format("rank offset {} leaves no rank of the world of {} ranks to the grid", c.rank_offset,
                                  c.world_size));
  }
  if (c.ranks_per_node && *c.ranks_per_node > 0) {
    const int per_node = *c.ranks_per_node;
    if (c.rank_offset % per_node != 0) {
      throw ConfigError(fmt::format(
          "rank offset {} does not start a node of {} ranks (the grid's nodes are the world's)", c.rank_offset,
          per_node));
    }
    require_whole_nodes(c.world_size, per_node);
  }
}

// The configuration of the grid's part of the world, counted from its first rank.
ParallelConfig part_of(ParallelConfig c) {
  // In 64 bits and clamped: this runs before validation, on any values.
  const long long local = c.local_world_size ? *c.local_world_size
                                             : static_cast<long long>(c.world_size) - std::max(c.rank_offset, 0);
  c.world_size = static_cast<int>(std::clamp<long long>(local, INT_MIN, INT_MAX));
  c.rank_offset = 0;
  c.local_world_size.reset();
  return c;
}

// Every rule of a configuration whose grid is its whole world.
void validate_part(const ParallelConfig& c) {
  require_positive(c.tensor_parallel_size, "tensor parallel size");
  require_positive(c.pipeline_parallel_size, "pipeline parallel size");
  require_positive(c.context_parallel_size, "context parallel size");
  if (c.expert_tensor_parallel_size) require_positive(*c.expert_tensor_parallel_size, "expert tensor parallel size");
  const int tensor = clamped_tensor(c);
  // In 64 bits: tensor and pipeline are each at most INT_MAX, so the product cannot overflow.
  const long long model = static_cast<long long>(tensor) * c.pipeline_parallel_size;
  if (c.world_size % model != 0) {
    const std::string clamped =
        tensor == c.tensor_parallel_size ? "" : fmt::format(" (clamped from {})", c.tensor_parallel_size);
    throw ConfigError(
        fmt::format("world size {} is not divisible by tensor parallel size {}{} x pipeline parallel size {}",
                    c.world_size, tensor, clamped, c.pipeline_parallel_size));
  }
  if (c.world_size / model % c.context_parallel_size != 0) {
    throw ConfigError(fmt::format(
        "world size {} is not divisible by tensor parallel size {} x context parallel size {} x pipeline parallel "
        "size {}",
        c.world_size, tensor, c.context_parallel_size, c.pipeline_parallel_size));
  }
  const RankGrid dense = dense_grid_of(c);
  validate_expert_grids(c, dense);
  validate_instances(c, dense);
  validate_series(c, dense);
  if (c.zero_hpz_size) {
    require_positive(*c.zero_hpz_size, "ZeRO hpZ partition size");
    const int hpz = std::min(*c.zero_hpz_size, c.world_size);
    if (c.world_size % hpz != 0) {
      throw ConfigError(fmt::format("ZeRO hpZ partition size {} does not divide world size {}", hpz, c.world_size));
    }
  }
  if (c.ranks_per_node) {
    const int per_node = *c.ranks_per_node;
    if (per_node == kDetectRanksPerNode) {
      throw ConfigError(
          "ranks per node 0 (kDetectRanksPerNode, 'auto') is detected by a ParallelContext from its "
          "communicator, which a Topology without one does not have: give the number of ranks per node");
    }
    require_positive(per_node, "ranks per node");
    require_whole_nodes(c.world_size, per_node);
  }
}

RankGrid validated_dense_grid(const ParallelConfig& c) {
  validate(c);
  return dense_grid_of(part_of(c));
}

}  // namespace

std::string_view to_string(ExpertOrder order) noexcept {
  return order == ExpertOrder::expert_first ? "expert-first" : "data-first";
}

ExpertOrder parse_expert_order(std::string_view text) {
  if (text == "expert-first") return ExpertOrder::expert_first;
  if (text == "data-first") return ExpertOrder::data_first;
  throw ConfigError(fmt::format("expert order '{}' is neither 'expert-first' nor 'data-first'", text));
}

std::string_view order_of(const ParallelConfig& config) noexcept {
  if (config.order) return *config.order;
  return config.expert_order == ExpertOrder::expert_first ? kExpertFirstOrder : kDataFirstOrder;
}

std::span<const GridKind> grid_kinds() noexcept { return kGridKinds; }

bool is_dense_kind(GroupKind kind) noexcept {
  return kind == GroupKind::embedding || kind == GroupKind::position_embedding ||
         std::ranges::any_of(kGridKinds, [kind](const GridKind& k) { return k.kind == kind && k.grid == Grid::dense; });
}

void validate(const ParallelConfig& c) {
  if (c.world_size == 0) {
    throw ConfigError(
        "world size 0 (the default) stands for the world communicator's size, which a Topology without "
        "a communicator does not know: set ParallelConfig::world_size");
  }
  validate_place(c);
  const ParallelConfig part = part_of(c);
  if (part.world_size == c.world_size) return validate_part(c);
  try {
    validate_part(part);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("the grid of {} ranks from rank {}: {}", part.world_size, c.rank_offset, e.what()));
  }
}

void require_whole_world(const ParallelConfig& config, std::string_view builder) {
  validate_place(config);
  const long long local = config.local_world_size ? *config.local_world_size
                                                  : static_cast<long long>(config.world_size) - config.rank_offset;
  if (config.rank_offset == 0 && local == config.world_size) return;
  throw ConfigError(fmt::format(
      "rank offset {} and local world size {} lay the grid over part of the {} ranks, which a {} does not build: "
      "build it over a communicator of those ranks (Communicator::split), where the grid is the whole world",
      config.rank_offset, local, config.world_size, builder));
}

std::string GroupId::name() const {
  const std::string_view base = kind_name(kind);
  if (on_expert_grid(kind)) return fmt::format("{}/{}", base, expert_parallel_size);
  if (kind == GroupKind::hybrid_data_context_parallel) return fmt::format("{}/{}", base, group_size);
  if (kind == GroupKind::hierarchical_context_parallel) return fmt::format("{}/L{}", base, level);
  return std::string(base);
}

Topology::Topology(ParallelConfig config)
    : config_(std::move(config)), part_(part_of(config_)), dense_(validated_dense_grid(config_)) {
  const int world = part_.world_size;
  tensor_ = clamped_tensor(part_);
  expert_tensor_ = part_.expert_tensor_parallel_size.value_or(tensor_);
  if (tensor_ != part_.tensor_parallel_size) {
    clamp_notes_.push_back(fmt::format("tensor parallel size {} is larger than the {}; using {}",
                                       part_.tensor_parallel_size, grid_name(), tensor_));
  }
  for (const int ep : part_.expert_parallel_sizes) expert_grids_.push_back(expert_grid_of(part_, ep));

  auto add = [this](GroupKind kind, const GroupLayout& layout, int ep = 0) {
    views_.push_back({GroupId{kind, ep}, layout});
  };
  // The kinds of a table on one grid in table order: on the dense grid, or per expert
  // parallel size on its expert grid.
  auto add_kinds = [&](const auto& kinds, Grid grid, auto layout_of) {
    const auto add_on = [&](const RankGrid& on, int ep) {
      for (const auto& k : kinds) {
        if (k.grid == grid) add(k.kind, layout_of(k, on, ep), ep);
      }
    };
    if (grid == Grid::dense) return add_on(dense_, 0);
    for (std::size_t i = 0; i < expert_grids_.size(); ++i) add_on(expert_grids_[i], part_.expert_parallel_sizes[i]);
  };
  const auto along = [](const GridKind& k, const RankGrid& on, int) { return on.along_names(k.varying); };
  const auto cut = [this](const InstanceKind& k, const RankGrid& on, int ep) {
    return instance_layout(part_, k, on, ep);
  };
  const auto context_kinds = std::span<const GridKind>(kGridKinds).first(kContextKinds);
  const auto megatron_kinds = std::span<const GridKind>(kGridKinds).subspan(kContextKinds);

  add(GroupKind::world, RankGrid({{"rank", config_.world_size}}).along({"rank"}));
  add_kinds(context_kinds, Grid::dense, along);
  add_kinds(context_kinds, Grid::expert, along);
  if (part_.zero_hpz_size) {
    hpz_ = std::min(*part_.zero_hpz_size, world);
    if (*hpz_ != *part_.zero_hpz_size) {
      clamp_notes_.push_back(
          fmt::format("ZeRO hpZ partition size {} is larger than the {}; using {}", *part_.zero_hpz_size, grid_name(),
                      *hpz_));
    }
    add(GroupKind::zero_param_intra, RankGrid({{"block", world / *hpz_}, {"member", *hpz_}}).along({"member"}));
  }
  if (part_.ranks_per_node) {
    // A world smaller than a node is one node of all its ranks.
    const int local = std::min(*part_.ranks_per_node, world);
    const RankGrid nodes({{"node", world / local}, {"local", local}});
    add(GroupKind::all_to_all_local, nodes.along({"local"}));
    if (world > local) add(GroupKind::all_to_all_global, nodes.along({"node"}));
  }
  context_view_count_ = views_.size();

  add_kinds(megatron_kinds, Grid::dense, along);
  // Megatron's default embedding ranks: the first and last stage of each pipeline group.
  const std::array<int, 2> ends{0, part_.pipeline_parallel_size - 1};
  const std::size_t end_count = ends[1] == 0 ? 1 : 2;
  add(GroupKind::embedding, dense_.along_positions("pp", std::span(ends).first(end_count)));
  add(GroupKind::position_embedding, dense_.along_positions("pp", std::span(ends).first(1)));
  add_kinds(megatron_kinds, Grid::expert, along);
  if (part_.distributed_optimizer_instances > 1) {
    add_kinds(kInstanceKinds, Grid::dense, cut);
    add_kinds(kInstanceKinds, Grid::expert, cut);
  }
  for (GroupView& view : series_views(part_, dense_)) views_.push_back(std::move(view));
  // Every kind but the world's lies in the grid's part of the world.
  for (GroupView& view : std::span(views_).subspan(1)) view.layout = shifted(view.layout);
}

std::string Topology::grid_name() const {
  return part_.world_size == config_.world_size ? "world" : fmt::format("grid of {} ranks", part_.world_size);
}

GroupLayout Topology::shifted(const GroupLayout& layout) const {
  return layout.shifted(config_.rank_offset, config_.world_size);
}

int Topology::data_parallel_size() const noexcept {
  return part_.world_size / (tensor_ * part_.context_parallel_size * part_.pipeline_parallel_size);
}

const GroupLayout& Topology::layout(const GroupId& id) const {
  const auto it = std::ranges::find(views_, id, &GroupView::id);
  if (it == views_.end()) {
    throw GroupNotFound(fmt::format("this configuration has no {} groups", id.name()));
  }
  return it->layout;
}

const RankGrid& Topology::expert_grid(int expert_parallel_size) const {
  const auto& sizes = config_.expert_parallel_sizes;
  const auto it = std::ranges::find(sizes, expert_parallel_size);
  if (it == sizes.end()) {
    throw GroupNotFound(fmt::format("this configuration has no expert grid of expert parallel size {} (sizes: [{}])",
                                    expert_parallel_size, fmt::join(sizes, ",")));
  }
  return expert_grids_[static_cast<std::size_t>(it - sizes.begin())];
}

GroupLayout Topology::dense_groups(std::string_view axes) const { return shifted(dense_.along_names(axes)); }

GroupLayout Topology::expert_groups(int expert_parallel_size, std::string_view axes) const {
  return shifted(expert_grid(expert_parallel_size).along_names(axes));
}

RankCoordinates Topology::coordinates(int world_rank) const {
  if (world_rank < 0 || world_rank >= config_.world_size) {
    throw ConfigError(fmt::format("rank {} is outside the world [0, {})", world_rank, config_.world_size));
  }
  const int rank = world_rank - config_.rank_offset;
  if (rank < 0 || rank >= part_.world_size) {
    throw ConfigError(fmt::format("rank {} is outside the grid's ranks [{}, {}) (rank offset {}, local world size {})",
                                  world_rank, config_.rank_offset, config_.rank_offset + part_.world_size,
                                  config_.rank_offset, part_.world_size));
  }
  auto on = [rank](const RankGrid& grid) {
    return [&grid, coords = grid.coordinates(rank)](std::string_view axis) { return coords[grid.axis_index(axis)]; };
  };
  const auto dense = on(dense_);
  RankCoordinates result;
  result.pipeline = dense("pp");
  result.data = dense("dp");
  result.context = dense("cp");
  result.tensor = dense("tp");
  result.first_pipeline_stage = result.pipeline == 0;
  result.last_pipeline_stage = result.pipeline == config_.pipeline_parallel_size - 1;
  for (std::size_t i = 0; i < expert_grids_.size(); ++i) {
    const auto expert = on(expert_grids_[i]);
    result.experts.push_back({config_.expert_parallel_sizes[i], expert("tp"), expert("ep"), expert("dp")});
  }
  return result;
}

}  // namespace pcx
