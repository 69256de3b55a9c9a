#pragma once
// Command-line options of pcx-plan, shared with the samples that take the same flags.

#include <optional>
#include <span>
#include <string>

#include "pcx/topology.hpp"

namespace pcx::cli {

/// How pcx-plan prints a layout.
enum class Format { table, json, svg };

/// What the command line asked for.
struct PlanOptions {
  ParallelConfig config;    ///< world_size is 0 when --world was optional and not given.
  std::optional<int> rank;  ///< --rank: print this rank's groups only.
  Format format = Format::table;
  std::string colour_by;  ///< --colour-by: the kind whose groups colour an SVG; empty: a default.
  bool megatron = false;  ///< --megatron: also list Megatron's other kinds and a rank's coordinates.
  bool check = false;     ///< --check: check the placement on nodes instead of listing groups.
  bool help = false;      ///< --help was given; help_text() says what to print.
};

/// Parses the arguments after the program name. Sizes are checked for syntax
/// and range here; the rules between them are left to pcx::validate().
/// @param world_required whether --world must be given
/// @throws pcx::ConfigError with one line naming the flag, the value and the rule
///         (unknown flag, missing value, not a number, out of range).
[[nodiscard]] PlanOptions parse_plan_options(std::span<const std::string> args, bool world_required = true);

/// The --help text for a program called @p program.
[[nodiscard]] std::string help_text(const std::string& program, bool world_required = true);

}  // namespace pcx::cli
