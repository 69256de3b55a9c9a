// pcx-plan: prints the process groups of a parallel configuration without launching anything.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/topology.hpp"
#include "plan_options.hpp"

namespace {

// Listing every group of a larger world would print more than anyone reads and
// take memory in proportion; a real cluster is far smaller.
constexpr int kMaxListedWorld = 1 << 24;
constexpr int kUsageError = 2;

nlohmann::ordered_json to_json(const pcx::Topology& topology, std::optional<int> rank) {
  nlohmann::ordered_json out;
  out["world_size"] = topology.world_size();
  if (rank) out["rank"] = *rank;
  auto& groups = out["groups"] = nlohmann::ordered_json::object();
  for (const pcx::GroupView& view : topology.views()) {
    groups[view.id.name()] = rank ? nlohmann::ordered_json(view.layout.group_of(*rank))
                                  : nlohmann::ordered_json(view.layout.groups());
  }
  return out;
}

void print_table(const pcx::Topology& topology, std::optional<int> rank) {
  const pcx::ParallelConfig& config = topology.config();
  fmt::print("world {} = pipeline {} x data {} x tensor {}", topology.world_size(),
             topology.pipeline_parallel_size(), topology.data_parallel_size(), topology.tensor_parallel_size());
  if (!config.expert_parallel_sizes.empty()) {
    fmt::print(", experts {} ({})", fmt::join(config.expert_parallel_sizes, ","), to_string(config.expert_order));
  }
  fmt::print("\n");
  if (rank) {
    fmt::print("rank {}\n{:<26} {:>12} {:>12}  members\n", *rank, "kind", "group", "group rank");
    for (const pcx::GroupView& view : topology.views()) {
      const pcx::GroupLayout& layout = view.layout;
      fmt::print("{:<26} {:>12} {:>12}  {}\n", view.id.name(),
                 fmt::format("{} of {}", layout.colour(*rank), layout.group_count()),
                 fmt::format("{} of {}", layout.group_rank(*rank), layout.group_size()),
                 fmt::join(layout.group_of(*rank), " "));
    }
    return;
  }
  for (const pcx::GroupView& view : topology.views()) {
    const pcx::GroupLayout& layout = view.layout;
    fmt::print("\n{}: {} group{} of {}\n", view.id.name(), layout.group_count(),
               layout.group_count() == 1 ? "" : "s", layout.group_size());
    for (int colour = 0; colour < layout.group_count(); ++colour) {
      fmt::print("  {:>4}: {}\n", colour, fmt::join(layout.group(colour), " "));
    }
  }
}

int run(const std::vector<std::string>& args) {
  const pcx::cli::PlanOptions options = pcx::cli::parse_plan_options(args);
  if (options.help) {
    std::cout << pcx::cli::help_text("pcx-plan");
    return 0;
  }
  const pcx::Topology topology(options.config);
  if (options.rank && (*options.rank < 0 || *options.rank >= topology.world_size())) {
    throw pcx::ConfigError(fmt::format("--rank: {} is outside the world [0, {})", *options.rank, topology.world_size()));
  }
  if (topology.world_size() > kMaxListedWorld) {
    throw pcx::ConfigError(fmt::format("--world: {} is more than pcx-plan lists (at most {} ranks)",
                                       topology.world_size(), kMaxListedWorld));
  }
  for (const std::string& note : topology.clamp_notes()) fmt::print(stderr, "pcx-plan: note: {}\n", note);
  if (options.format == pcx::cli::Format::json) {
    std::cout << to_json(topology, options.rank).dump() << '\n';
  } else {
    print_table(topology, options.rank);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const pcx::Error& e) {
    fmt::print(stderr, "pcx-plan: error: {}\n", e.what());
    return kUsageError;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "pcx-plan: error: out of memory\n");
    return 1;
  }
}
