// pcx-plan: prints the process groups of a parallel configuration without launching anything.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/placement.hpp"
#include "pcx/topology.hpp"
#include "plan_options.hpp"

namespace {

// Listing every group of a larger world would print more than anyone reads; a real
// cluster is far smaller.
constexpr int kMaxListedWorld = 1 << 24;
// Beyond this a picture of one cell per rank is no longer readable.
constexpr int kMaxDrawnWorld = 4096;
// The most pcx-plan writes. A full listing of 2^24 ranks with two expert sizes, hpZ and
// nodes is about 1.5 GiB; far more means a mistake (hundreds of expert sizes) that would
// fill a disk.
constexpr std::uint64_t kMaxOutputBytes = std::uint64_t{4} << 30;
constexpr int kUsageError = 2;
constexpr int kFailure = 1;
constexpr int kMisplaced = 3;  // --check found kinds that cross nodes needlessly

/// stdout could not be written (a full disk, a closed descriptor).
class WriteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Everything pcx-plan prints on stdout: a buffer of bounded size in front of the file,
/// so that memory does not grow with the listing, and every write checked.
class Output {
 public:
  template <typename... T>
  void print(fmt::format_string<T...> format, T&&... args) {
    fmt::format_to(std::back_inserter(buffer_), format, std::forward<T>(args)...);
    if (buffer_.size() >= kFlushAt) drain();
  }

  void put(std::string_view text) {
    buffer_.append(text.data(), text.data() + text.size());
    if (buffer_.size() >= kFlushAt) drain();
  }

  /// The members of group @p colour, ascending, one at a time: a group may hold the
  /// whole world.
  void members(const pcx::GroupLayout& layout, int colour, char separator) {
    for (int i = 0; i < layout.group_size(); ++i) {
      if (i > 0) buffer_.push_back(separator);
      const fmt::format_int text(layout.global_rank(colour, i));
      buffer_.append(text.data(), text.data() + text.size());
      if (buffer_.size() >= kFlushAt) drain();
    }
  }

  /// Writes what is left and flushes; throws WriteError if any byte did not reach the file.
  void finish() {
    drain();
    if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) fail();
  }

 private:
  static constexpr std::size_t kFlushAt = std::size_t{1} << 16;

  void drain() {
    if (std::fwrite(buffer_.data(), 1, buffer_.size(), stdout) != buffer_.size()) fail();
    buffer_.clear();
  }
  [[noreturn]] static void fail() {
    throw WriteError(fmt::format("cannot write output: {}", std::generic_category().message(errno)));
  }

  fmt::memory_buffer buffer_;
};

/// A line on stderr; if even that fails, there is nobody left to tell.
void report(const std::string& line) { std::fputs(line.c_str(), stderr); }

std::uint64_t decimal_digits(std::uint64_t n) {
  std::uint64_t digits = 1;
  for (; n >= 10; n /= 10) ++digits;
  return digits;
}

/// The digits of 0, 1, ..., world - 1 written out.
std::uint64_t digits_below(std::uint64_t world) {
  std::uint64_t total = 0;
  for (std::uint64_t low = 0, high = 10, digits = 1; low < world; low = high, high *= 10, ++digits) {
    total += (std::min(high, world) - low) * digits;
  }
  return total;
}

/// An upper bound on the bytes the table or JSON listing prints, in O(kinds): every kind
/// of a full listing names each rank once; a rank's listing names one group per kind.
std::uint64_t listing_bytes(const pcx::Topology& topology, std::span<const pcx::GroupView> views,
                            std::optional<int> rank, bool json) {
  const auto world = static_cast<std::uint64_t>(topology.world_size());
  // The header line, or JSON's world size and rank; a rank's coordinates.
  std::uint64_t bytes = 512 + 128 * static_cast<std::uint64_t>(topology.config().expert_parallel_sizes.size());
  for (const pcx::GroupView& view : views) {
    const auto count = static_cast<std::uint64_t>(view.layout.group_count());
    const auto size = static_cast<std::uint64_t>(view.layout.group_size());
    bytes += view.id.name().size() + 64;  // the kind's heading, or its JSON key
    if (rank) {
      bytes += size * (decimal_digits(world - 1) + 1);
    } else {
      // Each member with its separator; each group its brackets, or the table's
      // "  1234: " and newline.
      const std::uint64_t per_group = json ? 2 : 5 + std::max<std::uint64_t>(4, decimal_digits(count));
      bytes += digits_below(world) + world + count * per_group;
    }
  }
  return bytes;
}

void print_json_coordinates(Output& out, const pcx::Topology& topology, int rank) {
  const pcx::RankCoordinates c = topology.coordinates(rank);
  out.print(
      ",\"coordinates\":{{\"pipeline\":{},\"first_pipeline_stage\":{},\"last_pipeline_stage\":{},\"data\":{},"
      "\"context\":{},\"tensor\":{},\"experts\":{{",
      c.pipeline, c.first_pipeline_stage, c.last_pipeline_stage, c.data, c.context, c.tensor);
  for (std::size_t i = 0; i < c.experts.size(); ++i) {
    const pcx::ExpertCoordinates& e = c.experts[i];
    out.print("{}\"{}\":{{\"tensor\":{},\"expert\":{},\"data\":{}}}", i == 0 ? "" : ",", e.expert_parallel_size,
              e.tensor, e.expert, e.data);
  }
  out.put("}}");
}

// Whether @p rank is one of the grid's: a grid over part of the world has no coordinates elsewhere.
bool in_grid(const pcx::Topology& topology, int rank) {
  return rank >= topology.rank_offset() && rank - topology.rank_offset() < topology.local_world_size();
}

void print_json(Output& out, const pcx::Topology& topology, std::span<const pcx::GroupView> views,
                std::optional<int> rank, bool coordinates) {
  // The same document nlohmann::ordered_json::dump() gave when it held the whole tree.
  out.print("{{\"world_size\":{}", topology.world_size());
  if (rank) {
    out.print(",\"rank\":{}", *rank);
    if (coordinates && in_grid(topology, *rank)) print_json_coordinates(out, topology, *rank);
  }
  out.put(",\"groups\":{");
  bool first_kind = true;
  for (const pcx::GroupView& view : views) {
    const pcx::GroupLayout& layout = view.layout;
    // A rank in no group of a kind (a middle pipeline stage's embedding) has none of it.
    if (rank && layout.colour(*rank) == pcx::GroupLayout::kNoGroup) continue;
    out.print("{}{}:", first_kind ? "" : ",", nlohmann::json(view.id.name()).dump());
    first_kind = false;
    out.put("[");
    if (rank) {
      out.members(layout, layout.colour(*rank), ',');
    } else {
      for (int colour = 0; colour < layout.group_count(); ++colour) {
        out.put(colour == 0 ? "[" : ",[");
        out.members(layout, colour, ',');
        out.put("]");
      }
    }
    out.put("]");
  }
  out.put("}}\n");
}

// "world 16 = pipeline 2 x data 4 x tensor 2" ("world 12, ranks 4 to 11: 8 = ..." for a grid
// over part of the world), with the context size, the order, the expert tensor size and
// Megatron's optional groups where they are not the defaults.
std::string world_line(const pcx::Topology& topology) {
  const pcx::ParallelConfig& config = topology.config();
  const bool part = topology.local_world_size() != topology.world_size();
  std::string line =
      part ? fmt::format("world {}, ranks {} to {}: {}", topology.world_size(), topology.rank_offset(),
                         topology.rank_offset() + topology.local_world_size() - 1, topology.local_world_size())
           : fmt::format("world {}", topology.world_size());
  line += fmt::format(" = pipeline {} x data {}", topology.pipeline_parallel_size(), topology.data_parallel_size());
  if (topology.context_parallel_size() > 1) line += fmt::format(" x context {}", topology.context_parallel_size());
  line += fmt::format(" x tensor {}", topology.tensor_parallel_size());
  if (config.order) line += fmt::format(", order {}", *config.order);
  if (!config.expert_parallel_sizes.empty()) {
    line += fmt::format(", experts {}", fmt::join(config.expert_parallel_sizes, ","));
    if (!config.order) line += fmt::format(" ({})", to_string(config.expert_order));
    if (topology.expert_tensor_parallel_size() != topology.tensor_parallel_size()) {
      line += fmt::format(", expert tensor {}", topology.expert_tensor_parallel_size());
    }
  }
  if (config.distributed_optimizer_instances > 1) {
    line += fmt::format(", {} distributed optimizer instances", config.distributed_optimizer_instances);
  }
  if (config.hybrid_context_parallel) line += ", hybrid context parallel";

  if (!config.hierarchical_context_parallel_sizes.empty()) {
    line += fmt::format(", hierarchical context parallel {}", fmt::join(config.hierarchical_context_parallel_sizes, "x"));
  }
  return line;
}

void print_table_coordinates(Output& out, const pcx::Topology& topology, int rank) {
  const pcx::RankCoordinates c = topology.coordinates(rank);
  const bool first = c.first_pipeline_stage;
  const bool last = c.last_pipeline_stage;
  out.print("coordinates: pipeline {}{}, data {}, context {}, tensor {}", c.pipeline,
            first && last ? " (first and last stage)"
            : first       ? " (first stage)"
            : last        ? " (last stage)"
                          : "",
            c.data, c.context, c.tensor);
  for (const pcx::ExpertCoordinates& e : c.experts) {
    out.print("; experts/{}: expert tensor {}, expert {}, expert data {}", e.expert_parallel_size, e.tensor, e.expert,
              e.data);
  }
  out.put("\n");
}

void print_table(Output& out, const pcx::Topology& topology, std::span<const pcx::GroupView> views,
                 std::optional<int> rank) {
  out.print("{}\n", world_line(topology));
  if (rank) {
    out.print("rank {}\n", *rank);
    if (in_grid(topology, *rank)) {
      print_table_coordinates(out, topology, *rank);
    } else {
      out.print("coordinates: none (the grid's ranks are {} to {})\n", topology.rank_offset(),
                topology.rank_offset() + topology.local_world_size() - 1);
    }
    out.print("{:<36} {:>12} {:>12}  members\n", "kind", "group", "group rank");
    for (const pcx::GroupView& view : views) {
      const pcx::GroupLayout& layout = view.layout;
      if (layout.colour(*rank) == pcx::GroupLayout::kNoGroup) {
        out.print("{:<36} {:>12} {:>12}  none\n", view.id.name(), "none", "-");
        continue;
      }
      out.print("{:<36} {:>12} {:>12}  ", view.id.name(),
                fmt::format("{} of {}", layout.colour(*rank), layout.group_count()),
                fmt::format("{} of {}", layout.group_rank(*rank), layout.group_size()));
      out.members(layout, layout.colour(*rank), ' ');
      out.put("\n");
    }
    return;
  }
  for (const pcx::GroupView& view : views) {
    const pcx::GroupLayout& layout = view.layout;
    out.print("\n{}: {} group{} of {}\n", view.id.name(), layout.group_count(), layout.group_count() == 1 ? "" : "s",
              layout.group_size());
    for (int colour = 0; colour < layout.group_count(); ++colour) {
      out.print("  {:>4}: ", colour);
      out.members(layout, colour, ' ');
      out.put("\n");
    }
  }
}

// The group kind that colours the picture: the one asked for, else the first expert
// kind, else data parallel.
const pcx::GroupView& colouring_view(const pcx::Topology& topology, const std::string& wanted) {
  const auto views = topology.all_views();
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
void print_svg(Output& out, const pcx::Topology& topology, const pcx::GroupView& view, std::optional<int> rank) {
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

  out.print(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      width, height);
  out.put("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  out.print("<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n", kMargin, world_line(topology));
  out.print("<text x=\"{}\" y=\"42\">coloured by {}: {} group{} of {}; cell: rank / group</text>\n", kMargin,
            view.id.name(), layout.group_count(), layout.group_count() == 1 ? "" : "s", layout.group_size());
  for (int row = 0; row < rows; ++row) {
    const int y = kTitle + row * kCell;
    out.print("<text x=\"{}\" y=\"{}\">node {}</text>\n", kMargin, y + kCell / 2 + 4, row);
  }
  for (int r = 0; r < world; ++r) {
    const int x = kMargin + 64 + (r % per_row) * kCell;
    const int y = kTitle + (r / per_row) * kCell;
    const int colour = layout.colour(r);
    const bool grouped = colour != pcx::GroupLayout::kNoGroup;
    // Neighbouring groups differ in hue and lightness, so that many groups stay apart; a
    // rank in no group is white.
    const std::string fill =
        grouped ? fmt::format("hsl({:.0f},65%,{}%)", 360.0 * colour / layout.group_count(), colour % 2 == 0 ? 72 : 58)
                : std::string("white");
    const bool outlined = std::ranges::binary_search(highlighted, r);
    out.print(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"4\" fill=\"{}\" "
        "stroke=\"{}\" stroke-width=\"{}\"/>\n",
        x + 2, y + 2, kCell - 4, kCell - 4, fill, outlined ? "black" : "#555", outlined ? 3 : 1);
    out.print("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", x + kCell / 2, y + 20, r);
    out.print("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n", x + kCell / 2, y + 34,
              grouped ? fmt::format("g{}", colour) : std::string("none"));
  }
  out.put("</svg>\n");
}

int run(const std::vector<std::string>& args) {
  const pcx::cli::PlanOptions options = pcx::cli::parse_plan_options(args);
  Output out;
  if (options.help) {
    out.put(pcx::cli::help_text("pcx-plan"));
    out.finish();
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
  // Every refusal comes before the first byte of output and the first note.
  const bool svg = options.format == pcx::cli::Format::svg;
  const bool json = options.format == pcx::cli::Format::json;
  if (svg && topology.world_size() > kMaxDrawnWorld) {
    throw pcx::ConfigError(fmt::format("--format svg: {} ranks are more than a picture shows (at most {})",
                                       topology.world_size(), kMaxDrawnWorld));
  }
  const pcx::GroupView* colouring = svg ? &colouring_view(topology, options.colour_by) : nullptr;
  const std::span<const pcx::GroupView> views = options.megatron ? topology.all_views() : topology.views();
  if (const std::uint64_t bytes = svg ? 0 : listing_bytes(topology, views, options.rank, json);
      bytes > kMaxOutputBytes) {
    constexpr double kGiB = 1 << 30;
    throw pcx::ConfigError(
        fmt::format("--format {}: this listing would be up to {} bytes ({:.1f} GiB), over pcx-plan's limit of {} "
                    "bytes ({:.0f} GiB); {}",
                    json ? "json" : "table", bytes, static_cast<double>(bytes) / kGiB, kMaxOutputBytes,
                    static_cast<double>(kMaxOutputBytes) / kGiB,
                    options.rank ? "list fewer expert parallel sizes" : "list one rank's groups with --rank R"));
  }
  for (const std::string& note : topology.clamp_notes()) report(fmt::format("pcx-plan: note: {}\n", note));
  if (options.check) {
    if (!options.config.ranks_per_node) throw pcx::ConfigError("--check: give --ranks-per-node, the size of a node");
    const std::vector<pcx::PlacementWarning> warnings = pcx::check_placement(topology);
    for (const pcx::PlacementWarning& warning : warnings) out.print("placement: {}\n", warning.message());
    if (warnings.empty())
      out.print("placement: every kind that can stay inside nodes of {} ranks does\n", *options.config.ranks_per_node);
    out.finish();
    return warnings.empty() ? 0 : kMisplaced;
  }
  if (svg) {
    print_svg(out, topology, *colouring, options.rank);
  } else if (json) {
    print_json(out, topology, views, options.rank, options.megatron);
  } else {
    print_table(out, topology, views, options.rank);
  }
  out.finish();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const pcx::Error& e) {
    report(fmt::format("pcx-plan: error: {}\n", e.what()));
    return kUsageError;
  } catch (const WriteError& e) {
    report(fmt::format("pcx-plan: error: {}\n", e.what()));
    return kFailure;
  } catch (const std::bad_alloc&) {
    report("pcx-plan: error: out of memory\n");
    return kFailure;
  }
}
