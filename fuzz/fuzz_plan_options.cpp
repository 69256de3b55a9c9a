// libFuzzer target: pcx::cli::parse_plan_options, the command line of pcx-plan and the samples.
//
// Input: the first byte is the mode (odd: --world is required, even: optional, so '1' and
// '0' in a text seed); the rest is split on '\n' into the arguments after the program name
// (one trailing newline is ignored; tokens may hold any other byte, NUL included).
//
// Oracles: parse_plan_options either returns or throws ConfigError, nothing else. When it
// returns options that are not --help:
//   - --colour-by only comes with --format svg;
//   - the options written back as "--flag=value" arguments parse to the same options;
//   - the configuration is refused by validate() and Topology exactly when it breaks a
//     rule of SPEC.md, and when it is valid with at most 4096 ranks every view of its
//     Topology is checked as fuzz_topology does.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"
#include "pcx/error.hpp"
#include "plan_options.hpp"

namespace {

using pcx::cli::Format;
using pcx::cli::PlanOptions;

std::string_view format_name(Format format) {
  switch (format) {
    case Format::table: return "table";
    case Format::json: return "json";
    case Format::svg: return "svg";
  }
  pcx_fuzz::fail("unknown Format value");
}

// The options as arguments that must parse back to them.
std::vector<std::string> write_back(const PlanOptions& options, bool world_required) {
  const pcx::ParallelConfig& c = options.config;
  std::vector<std::string> args;
  if (world_required || c.world_size != 0) args.push_back("--world=" + std::to_string(c.world_size));
  args.push_back("--tp=" + std::to_string(c.tensor_parallel_size));
  args.push_back("--pp=" + std::to_string(c.pipeline_parallel_size));
  args.push_back("--cp=" + std::to_string(c.context_parallel_size));
  if (c.expert_tensor_parallel_size) args.push_back("--etp=" + std::to_string(*c.expert_tensor_parallel_size));
  if (!c.expert_parallel_sizes.empty()) {
    std::string ep = "--ep=";
    for (std::size_t i = 0; i < c.expert_parallel_sizes.size(); ++i) {
      if (i > 0) ep += ',';
      ep += std::to_string(c.expert_parallel_sizes[i]);
    }
    args.push_back(ep);
  }
  // --order and --expert-order exclude each other; --order leaves expert_order at its default.
  if (c.order) {
    args.push_back("--order=" + *c.order);
  } else {
    args.push_back("--expert-order=" + std::string(pcx::to_string(c.expert_order)));
  }
  if (c.zero_hpz_size) args.push_back("--zero-hpz=" + std::to_string(*c.zero_hpz_size));
  if (c.ranks_per_node) args.push_back("--ranks-per-node=" + std::to_string(*c.ranks_per_node));
  args.push_back("--distributed-optimizer-instances=" + std::to_string(c.distributed_optimizer_instances));
  if (c.hybrid_context_parallel) args.push_back("--hybrid-context-parallel");
  if (!c.hierarchical_context_parallel_sizes.empty()) {
    std::string sizes = "--hierarchical-context-parallel-sizes=";
    for (std::size_t i = 0; i < c.hierarchical_context_parallel_sizes.size(); ++i) {
      sizes += (i == 0 ? "" : ",") + std::to_string(c.hierarchical_context_parallel_sizes[i]);
    }
    args.push_back(sizes);
  }
  args.push_back("--rank-offset=" + std::to_string(c.rank_offset));
  if (c.local_world_size) args.push_back("--local-world-size=" + std::to_string(*c.local_world_size));
  if (options.rank) args.push_back("--rank=" + std::to_string(*options.rank));
  args.push_back("--format=" + std::string(format_name(options.format)));
  if (!options.colour_by.empty()) args.push_back("--colour-by=" + options.colour_by);
  if (options.megatron) args.push_back("--megatron");
  if (options.check) args.push_back("--check");
  return args;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return pcx_fuzz::guard([&] {
    if (size == 0) return;
    const bool world_required = (data[0] & 1) != 0;
    const std::vector<std::string> args =
        pcx_fuzz::split(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1), '\n');

    PlanOptions options;
    try {
      options = pcx::cli::parse_plan_options(args, world_required);
    } catch (const pcx::ConfigError&) {
      return;
    }
    if (options.help) {
      PCX_FUZZ_CHECK(!pcx::cli::help_text("pcx-plan", world_required).empty());
      return;
    }
    PCX_FUZZ_CHECK(options.colour_by.empty() || options.format == Format::svg);

    const std::vector<std::string> again_args = write_back(options, world_required);
    PlanOptions again;
    try {
      again = pcx::cli::parse_plan_options(again_args, world_required);
    } catch (const pcx::ConfigError& e) {
      std::fprintf(stderr, "pcx fuzz: written-back options refused: %s\n", e.what());
      pcx_fuzz::fail("parse_plan_options refused the options it returned, written back as --flag=value");
    }
    PCX_FUZZ_CHECK(!again.help);
    PCX_FUZZ_CHECK(again.config == options.config);
    PCX_FUZZ_CHECK(again.rank == options.rank);
    PCX_FUZZ_CHECK(again.format == options.format);
    PCX_FUZZ_CHECK(again.colour_by == options.colour_by);
    PCX_FUZZ_CHECK(again.megatron == options.megatron);
    PCX_FUZZ_CHECK(again.check == options.check);

    std::vector<int> probes;
    if (options.rank) probes.push_back(*options.rank);
    pcx_fuzz::check_config(options.config, probes);
  });
}
