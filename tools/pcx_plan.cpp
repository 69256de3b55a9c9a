// pcx-plan: prints the process groups of a parallel configuration without launching anything.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
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
// Beyond this a picture of one cell per rank is no longer readable.
constexpr int kMaxDrawnWorld = 4096;
constexpr int kUsageError = 2;

nlohmann::ordered_json to_json(const pcx::Topology& topology, std::optional<int> rank) {
  nlohmann::ordered_json out;
  out["world_size"] = topology.world_size();
  if (rank) out["rank"] = *rank;
  auto& groups = out["groups"] = nlohmann::ordered_json::object();
  for (const pcx::GroupView& view : topology.views()) {
    groups[view.id.name()] =
        rank ? nlohmann::ordered_json(view.layout.group_of(*rank)) : nlohmann::ordered_json(view.layout.groups());
  }
  return out;
}

void print_table(const pcx::Topology& topology, std::optional<int> rank) {
  const pcx::ParallelConfig& config = topology.config();
  fmt::print("world {} = pipeline {} x data {} x tensor {}", topology.world_size(), topology.pipeline_parallel_size(),
             topology.data_parallel_size(), topology.tensor_parallel_size());
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
    fmt::print("\n{}: {} group{} of {}\n", view.id.name(), layout.group_count(), layout.group_count() == 1 ? "" : "s",
               layout.group_size());
    for (int colour = 0; colour < layout.group_count(); ++colour) {
      fmt::print("  {:>4}: {}\n", colour, fmt::join(layout.group(colour), " "));
    }
  }
}

// The group kind that colours the picture: the one asked for, else the first expert
// kind, else data parallel.
const pcx::GroupView& colouring_view(const pcx::Topology& topology, const std::string& wanted) {
  const auto views = topology.views();
  if (!wanted.empty()) {
    for (const pcx::GroupView& view : views) {
      if (view.id.name() == wanted) return view;
    }
    std::vector<std::string> names;
    for (const pcx::GroupView& view : views) names.push_back(view.id.name());
    throw pcx::ConfigError(
        fmt::format("--colour-by: this configuration has no kind '{}' (it has: {})", wanted, fmt::join(names, ", ")));
  }
  for (const pcx::GroupView& view : views) {
    if (view.id.kind == pcx::GroupKind::expert_parallel) return view;
  }
  for (const pcx::GroupView& view : views) {
    if (view.id.kind == pcx::GroupKind::data_parallel) return view;
  }
  return views.front();
}

// Ranks as cells, one row per node, filled by the colour of their group; with a rank
// given, the members of its group are outlined.
void print_svg(const pcx::Topology& topology, const pcx::GroupView& view, std::optional<int> rank) {
  constexpr int kCell = 44;
  constexpr int kMargin = 16;
  constexpr int kTitle = 52;
  const int world = topology.world_size();
  const int per_row = std::min(world, topology.config().ranks_per_node.value_or(8));
  const int rows = (world + per_row - 1) / per_row;
  const int width = 2 * kMargin + 64 + per_row * kCell;
  const int height = kTitle + kMargin + rows * kCell;
  const pcx::GroupLayout& layout = view.layout;
  const std::vector<int> highlighted = rank ? layout.group_of(*rank) : std::vector<int>{};

  fmt::print(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      width, height);
  fmt::print("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  fmt::print("<text x=\"{}\" y=\"22\" font-size=\"15\">world {} = pipeline {} x data {} x tensor {}</text>\n", kMargin,
             world, topology.pipeline_parallel_size(), topology.data_parallel_size(), topology.tensor_parallel_size());
  fmt::print("<text x=\"{}\" y=\"42\">coloured by {}: {} group{} of {}; cell: rank / group</text>\n", kMargin,
             view.id.name(), layout.group_count(), layout.group_count() == 1 ? "" : "s", layout.group_size());
  for (int row = 0; row < rows; ++row) {
    const int y = kTitle + row * kCell;
    fmt::print("<text x=\"{}\" y=\"{}\">node {}</text>\n", kMargin, y + kCell / 2 + 4, row);
  }
  for (int r = 0; r < world; ++r) {
    const int x = kMargin + 64 + (r % per_row) * kCell;
    const int y = kTitle + (r / per_row) * kCell;
    const int colour = layout.colour(r);
    // Neighbouring groups differ in hue and lightness, so that many groups stay apart.
    const double hue = 360.0 * colour / layout.group_count();
    const int lightness = colour % 2 == 0 ? 72 : 58;
    const bool outlined = std::ranges::binary_search(highlighted, r);
    fmt::print(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"4\" fill=\"hsl({:.0f},65%,{}%)\" "
        "stroke=\"{}\" stroke-width=\"{}\"/>\n",
        x + 2, y + 2, kCell - 4, kCell - 4, hue, lightness, outlined ? "black" : "#555", outlined ? 3 : 1);
    fmt::print("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", x + kCell / 2, y + 20, r);
    fmt::print("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">g{}</text>\n", x + kCell / 2, y + 34,
               colour);
  }
  fmt::print("</svg>\n");
}

int run(const std::vector<std::string>& args) {
  const pcx::cli::PlanOptions options = pcx::cli::parse_plan_options(args);
  if (options.help) {
    std::cout << pcx::cli::help_text("pcx-plan");
    return 0;
  }
  const pcx::Topology topology(options.config);
  if (options.rank && (*options.rank < 0 || *options.rank >= topology.world_size())) {
    throw pcx::ConfigError(
        fmt::format("--rank: {} is outside the world [0, {})", *options.rank, topology.world_size()));
  }
  if (topology.world_size() > kMaxListedWorld) {
    throw pcx::ConfigError(fmt::format("--world: {} is more than pcx-plan lists (at most {} ranks)",
                                       topology.world_size(), kMaxListedWorld));
  }
  for (const std::string& note : topology.clamp_notes()) fmt::print(stderr, "pcx-plan: note: {}\n", note);
  if (options.format == pcx::cli::Format::svg) {
    if (topology.world_size() > kMaxDrawnWorld) {
      throw pcx::ConfigError(fmt::format("--format svg: {} ranks are more than a picture shows (at most {})",
                                         topology.world_size(), kMaxDrawnWorld));
    }
    print_svg(topology, colouring_view(topology, options.colour_by), options.rank);
  } else if (options.format == pcx::cli::Format::json) {
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
