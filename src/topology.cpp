#include "pcx/topology.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pcx/error.hpp"

namespace pcx {
namespace {

void require_positive(int value, std::string_view what) {
  if (value < 1) throw ConfigError(fmt::format("{} {} must be at least 1", what, value));
}

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
  }
  return "unknown";
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

void validate(const ParallelConfig& c) {
  if (c.world_size == 0) {
    throw ConfigError("world size 0 (the default) stands for the world communicator's size, which a Topology without "
                      "a communicator does not know: set ParallelConfig::world_size");
  }
  require_positive(c.world_size, "world size");
  require_positive(c.tensor_parallel_size, "tensor parallel size");
  require_positive(c.pipeline_parallel_size, "pipeline parallel size");
  const int tensor = std::min(c.tensor_parallel_size, c.world_size);
  // In 64 bits: tensor and pipeline are each at most INT_MAX, so the product cannot overflow.
  const long long model = static_cast<long long>(tensor) * c.pipeline_parallel_size;
  if (c.world_size % model != 0) {
    const std::string clamped =
        tensor == c.tensor_parallel_size ? "" : fmt::format(" (clamped from {})", c.tensor_parallel_size);
    throw ConfigError(
        fmt::format("world size {} is not divisible by tensor parallel size {}{} x pipeline parallel size {}",
                    c.world_size, tensor, clamped, c.pipeline_parallel_size));
  }
  const auto data = static_cast<int>(c.world_size / model);
  for (std::size_t i = 0; i < c.expert_parallel_sizes.size(); ++i) {
    const int ep = c.expert_parallel_sizes[i];
    require_positive(ep, "expert parallel size");
    if (data % ep != 0) {
      throw ConfigError(fmt::format(
          "expert parallel size {} does not divide data parallel size {} (world {} / tensor {} / pipeline {})", ep,
          data, c.world_size, tensor, c.pipeline_parallel_size));
    }
    if (std::find(c.expert_parallel_sizes.begin(), c.expert_parallel_sizes.begin() + static_cast<std::ptrdiff_t>(i),
                  ep) != c.expert_parallel_sizes.begin() + static_cast<std::ptrdiff_t>(i)) {
      throw ConfigError(fmt::format("expert parallel size {} is listed twice", ep));
    }
  }
  if (c.zero_hpz_size) {
    require_positive(*c.zero_hpz_size, "ZeRO hpZ partition size");
    const int hpz = std::min(*c.zero_hpz_size, c.world_size);
    if (c.world_size % hpz != 0) {
      throw ConfigError(fmt::format("ZeRO hpZ partition size {} does not divide world size {}", hpz, c.world_size));
    }
  }
  if (c.ranks_per_node) {
    const int per_node = *c.ranks_per_node;
    require_positive(per_node, "ranks per node");
    if (c.world_size > per_node && c.world_size % per_node != 0) {
      throw ConfigError(
          fmt::format("world size {} is not a whole number of nodes of {} ranks (a world larger than one node "
                      "must be divisible by the ranks per node)",
                      c.world_size, per_node));
    }
  }
}

std::string GroupId::name() const {
  const std::string_view base = kind_name(kind);
  if (kind == GroupKind::expert_parallel || kind == GroupKind::expert_data_parallel) {
    return fmt::format("{}/{}", base, expert_parallel_size);
  }
  return std::string(base);
}

Topology::Topology(ParallelConfig config) : config_(std::move(config)) {
  validate(config_);
  const int world = config_.world_size;
  const int pipeline = config_.pipeline_parallel_size;
  tensor_ = std::min(config_.tensor_parallel_size, world);
  if (tensor_ != config_.tensor_parallel_size) {
    clamp_notes_.push_back(fmt::format("tensor parallel size {} is larger than the world; using {}",
                                       config_.tensor_parallel_size, tensor_));
  }
  const int data = data_parallel_size();
  auto add = [this](GroupKind kind, const RankGrid& grid, std::string_view axis, int ep = 0) {
    views_.push_back({GroupId{kind, ep}, grid.along({axis})});
  };

  add(GroupKind::world, RankGrid({{"rank", world}}), "rank");
  const RankGrid megatron({{"pipeline", pipeline}, {"data", data}, {"tensor", tensor_}});
  add(GroupKind::tensor_parallel, megatron, "tensor");
  add(GroupKind::pipeline_parallel, megatron, "pipeline");
  add(GroupKind::data_parallel, megatron, "data");

  for (const int ep : config_.expert_parallel_sizes) {
    const Axis expert{"expert", ep};
    const Axis replica{"expert_data", data / ep};
    const RankGrid grid = config_.expert_order == ExpertOrder::expert_first
                              ? RankGrid({{"pipeline", pipeline}, replica, expert, {"tensor", tensor_}})
                              : RankGrid({{"pipeline", pipeline}, expert, replica, {"tensor", tensor_}});
    add(GroupKind::expert_parallel, grid, "expert", ep);
    add(GroupKind::expert_data_parallel, grid, "expert_data", ep);
  }

  if (config_.zero_hpz_size) {
    hpz_ = std::min(*config_.zero_hpz_size, world);
    if (*hpz_ != *config_.zero_hpz_size) {
      clamp_notes_.push_back(
          fmt::format("ZeRO hpZ partition size {} is larger than the world; using {}", *config_.zero_hpz_size, *hpz_));
    }
    add(GroupKind::zero_param_intra, RankGrid({{"block", world / *hpz_}, {"member", *hpz_}}), "member");
  }

  if (config_.ranks_per_node) {
    // A world smaller than a node is one node of all its ranks.
    const int local = std::min(*config_.ranks_per_node, world);
    const RankGrid nodes({{"node", world / local}, {"local", local}});
    add(GroupKind::all_to_all_local, nodes, "local");
    if (world > local) add(GroupKind::all_to_all_global, nodes, "node");
  }
}

int Topology::data_parallel_size() const noexcept {
  return config_.world_size / (tensor_ * config_.pipeline_parallel_size);
}

const GroupLayout& Topology::layout(const GroupId& id) const {
  const auto it = std::ranges::find(views_, id, &GroupView::id);
  if (it == views_.end()) {
    throw GroupNotFound(fmt::format("this configuration has no {} groups", id.name()));
  }
  return it->layout;
}

}  // namespace pcx
