#include "plan_options.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <climits>

#include "pcx/error.hpp"

namespace pcx::cli {
namespace {

struct RawOptions {
  std::string world, tp, pp, cp, ep, etp, order, megatron_order, hpz, per_node, instances, levels, offset, local, rank,
      format, colour_by;
  bool megatron = false;
  bool hybrid = false;
  bool check = false;
};

void describe(CLI::App& app, RawOptions& raw, bool world_required) {
  app.add_option("--world", raw.world, "number of ranks")->type_name("W")->required(world_required);
  app.add_option("--tp", raw.tp, "tensor parallel size (default 1)")->type_name("T");
  app.add_option("--pp", raw.pp, "pipeline parallel size (default 1)")->type_name("P");
  app.add_option("--cp", raw.cp, "context parallel size (default 1)")->type_name("C");
  app.add_option("--ep", raw.ep, "expert parallel sizes, comma separated")->type_name("E[,E...]");
  app.add_option("--etp", raw.etp, "expert tensor parallel size (default: the tensor parallel size)")->type_name("T");
  app.add_option("--expert-order", raw.order, "expert-first (default, tp-cp-ep-dp-pp) or data-first (tp-cp-dp-ep-pp)")
      ->type_name("ORDER");
  app.add_option("--order", raw.megatron_order,
                 "Megatron's order string, fastest axis first, e.g. tp-cp-ep-dp-pp (replaces --expert-order)")
      ->type_name("ORDER");
  app.add_option("--zero-hpz", raw.hpz, "ZeRO hpZ partition size")->type_name("Z");
  app.add_option("--ranks-per-node", raw.per_node,
                 "ranks per node, for the all-to-all groups and --check; 'auto': as the MPI job's nodes (print_groups)")
      ->type_name("N");
  app.add_option("--distributed-optimizer-instances", raw.instances,
                 "Megatron's distributed optimizer instances N (default 1): above 1, the data-context and expert data "
                 "groups are cut into N instances (--megatron lists the kinds)")
      ->type_name("N");
  app.add_flag("--hybrid-context-parallel", raw.hybrid,
               "Megatron's hybrid data x context parallel groups, one kind per power-of-two size (--megatron lists "
               "them)");
  app.add_option("--hierarchical-context-parallel-sizes", raw.levels,
                 "Megatron's hierarchical context parallel sizes, comma separated, whose product is --cp")
      ->type_name("S[,S...]");
  app.add_option("--rank-offset", raw.offset,
                 "Megatron's rank offset: the grid starts at this rank, and the ranks before it are in no group but "
                 "the world (default 0)")
      ->type_name("O");
  app.add_option("--local-world-size", raw.local,
                 "Megatron's local world size: the grid's number of ranks (default: the world size - the rank offset)")
      ->type_name("L");
  app.add_option("--rank", raw.rank, "print only this rank's groups")->type_name("R");
  app.add_flag("--megatron", raw.megatron,
               "also list Megatron's other kinds (context, model, embedding, expert tensor, ...) and, with --rank, "
               "the rank's coordinates in JSON");
  app.add_flag("--check", raw.check,
               "check that every kind whose groups can stay inside nodes does (needs --ranks-per-node): one line "
               "per kind that crosses nodes although another order keeps it inside, exit status 3 if any");
  app.add_option("--format", raw.format, "table (default), json, or svg (a picture of the ranks by node)")
      ->type_name("FORMAT");
  app.add_option("--colour-by", raw.colour_by,
                 "svg: the kind whose groups colour the ranks, e.g. expert_parallel/4 (default: the first expert "
                 "kind, else data_parallel)")
      ->type_name("KIND");
}

int parse_int(std::string_view flag, std::string_view text) {
  int value = 0;
  const char* const end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (error == std::errc::result_out_of_range) {
    throw ConfigError(fmt::format("{}: {} is out of range (at most {})", flag, text, INT_MAX));
  }
  if (error != std::errc{} || stop != end || text.empty()) {
    throw ConfigError(fmt::format("{}: '{}' is not a whole number", flag, text));
  }
  return value;
}

// "2,4,8" as numbers, each named by @p flag in an error.
std::vector<int> parse_list(std::string_view flag, std::string_view text) {
  std::vector<int> values;
  for (std::size_t begin = 0; begin <= text.size();) {
    const std::size_t end = std::min(text.find(',', begin), text.size());
    values.push_back(parse_int(flag, text.substr(begin, end - begin)));
    begin = end + 1;
  }
  return values;
}

}  // namespace

PlanOptions parse_plan_options(std::span<const std::string> args, bool world_required) {
  CLI::App app;
  RawOptions raw;
  describe(app, raw, world_required);
  // CLI11 would take a following flag as the missing value ("--tp --pp 2"); a flag takes none.
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    const CLI::Option* option = args[i].starts_with("--") ? app.get_option_no_throw(args[i]) : nullptr;
    if (option != nullptr && option->get_expected_min() > 0 && args[i + 1].starts_with("--")) {
      throw ConfigError(fmt::format("{} needs a value, but {} follows it", args[i], args[i + 1]));
    }
  }
  app.allow_extras();
  // CLI11 parses a reversed vector of the arguments.
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  PlanOptions options;
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    options.help = true;
    return options;
  } catch (const CLI::ParseError& e) {
    throw ConfigError(e.what());
  }
  if (const std::vector<std::string> extra = app.remaining(); !extra.empty()) {
    throw ConfigError(fmt::format("unexpected argument{} '{}'", extra.size() == 1 ? "" : "s", fmt::join(extra, "' '")));
  }

  ParallelConfig& config = options.config;
  config.world_size = app.count("--world") > 0 ? parse_int("--world", raw.world) : 0;
  if (app.count("--tp") > 0) config.tensor_parallel_size = parse_int("--tp", raw.tp);
  if (app.count("--pp") > 0) config.pipeline_parallel_size = parse_int("--pp", raw.pp);
  if (app.count("--cp") > 0) config.context_parallel_size = parse_int("--cp", raw.cp);
  if (app.count("--etp") > 0) config.expert_tensor_parallel_size = parse_int("--etp", raw.etp);
  if (app.count("--ep") > 0) config.expert_parallel_sizes = parse_list("--ep", raw.ep);
  if (app.count("--expert-order") > 0 && app.count("--order") > 0) {
    throw ConfigError("--expert-order and --order both set the order; give one of them");
  }
  if (app.count("--expert-order") > 0) config.expert_order = parse_expert_order(raw.order);
  if (app.count("--order") > 0) config.order = raw.megatron_order;
  if (app.count("--zero-hpz") > 0) config.zero_hpz_size = parse_int("--zero-hpz", raw.hpz);
  if (app.count("--ranks-per-node") > 0) {
    config.ranks_per_node = raw.per_node == "auto" ? kDetectRanksPerNode : parse_int("--ranks-per-node", raw.per_node);
  }
  if (app.count("--distributed-optimizer-instances") > 0) {
    config.distributed_optimizer_instances =
        parse_int("--distributed-optimizer-instances", raw.instances);
  }
  config.hybrid_context_parallel = raw.hybrid;
  if (app.count("--hierarchical-context-parallel-sizes") > 0) {
    config.hierarchical_context_parallel_sizes = parse_list("--hierarchical-context-parallel-sizes", raw.levels);
  }
  if (app.count("--rank-offset") > 0) config.rank_offset = parse_int("--rank-offset", raw.offset);
  if (app.count("--local-world-size") > 0) config.local_world_size = parse_int("--local-world-size", raw.local);
  if (app.count("--rank") > 0) options.rank = parse_int("--rank", raw.rank);
  options.megatron = raw.megatron;
  options.check = raw.check;
  if (app.count("--format") > 0) {
    if (raw.format == "json") {
      options.format = Format::json;
    } else if (raw.format == "svg") {
      options.format = Format::svg;
    } else if (raw.format != "table") {
      throw ConfigError(fmt::format("--format: '{}' is not 'table', 'json' or 'svg'", raw.format));
    }
  }
  if (app.count("--colour-by") > 0) {
    if (options.format != Format::svg) throw ConfigError("--colour-by applies to --format svg only");
    options.colour_by = raw.colour_by;
  }
  return options;
}

std::string help_text(const std::string& program, bool world_required) {
  CLI::App app("Prints the process groups of a parallel configuration.", program);
  RawOptions raw;
  describe(app, raw, world_required);
  return app.help();
}

}  // namespace pcx::cli
