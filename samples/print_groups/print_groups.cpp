// print_groups: builds every process group of a parallel configuration over MPI, reads
// each group's members back from its own communicator, and prints them from rank 0.
//
//   mpiexec -n 8 print_groups --tp 2 --ep 2,4 --zero-hpz 4 --ranks-per-node 4
//
// It takes pcx-plan's flags and prints, for every rank r, what
// `pcx-plan --world W <flags> --rank r --format json` prints as "groups":
//
//   {"world_size": W, "ranks": {"0": {"world": [...], "tensor_parallel": [...], ..., "communicators": C}, ...}}
//
// where C is the number of backend communicators the rank holds for the context (kinds
// with the same groups share one; self communicators and the MPU's are not counted).
//
// - --world is optional; when given it must equal the MPI world size.
// - --rank is rejected: every rank's groups are printed.
// - --format is ignored (after its value is checked): the output is always JSON.
// - --tp, --pp or --cp above 1, or --megatron, builds a pcx::GridMpu (Megatron's parallel
//   state) that supplies the dense kinds (tensor, context, pipeline, data parallel and their
//   combinations); without it, tensor and pipeline groups are the rank alone and data
//   parallel is the world clone, as in DeepSpeed.
// - --ranks-per-node N is taken as given (nodes simulated on one host); --ranks-per-node auto
//   takes the nodes MPI sees (MPI_Comm_split_type).
// - --megatron prints Megatron's other kinds too; a rank in no group of a kind (embedding on
//   a middle pipeline stage) has none of it, as in pcx-plan.
//
// Exit status: 0 on success; 2 on every rank for a bad flag or an invalid configuration,
// with one error line on stderr from rank 0, also when only some ranks have the bad flag or
// the ranks' flags differ (they are agreed before anything else). A failure that may have happened on some
// ranks only (an MPI error) aborts the job instead of leaving the others waiting.

#include <fmt/format.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../common/run_sample.hpp"
#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/mpu.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/self_communicator.hpp"
#include "plan_options.hpp"

namespace {

constexpr const char* kProgram = "print_groups";

std::size_t to_size(int value) { return static_cast<std::size_t>(value); }

// The members of the caller's group as its communicator knows them: every member
// contributes its world rank, in group-rank order.
std::vector<int> read_back(const pcx::Communicator& group, int world_rank) {
  std::vector<int> members(to_size(group.size()));
  const int mine[] = {world_rank};
  group.all_gather(std::span<const int>(mine), std::span<int>(members));
  return members;
}

// Every rank's members of one group kind, gathered over the world. The sizes are
// gathered first, so that a rank whose group has an unexpected size shows up in the
// output instead of making the gather disagree.
std::vector<std::vector<int>> gather_over_world(const pcx::Communicator& world, const std::vector<int>& members) {
  const std::size_t ranks = to_size(world.size());
  std::vector<int> sizes(ranks);
  const int size[] = {static_cast<int>(members.size())};
  world.all_gather(std::span<const int>(size), std::span<int>(sizes));

  const std::size_t widest = to_size(std::ranges::max(sizes));
  std::vector<int> padded(widest, -1);
  std::ranges::copy(members, padded.begin());
  std::vector<int> all(ranks * widest);
  world.all_gather(std::span<const int>(padded), std::span<int>(all));

  std::vector<std::vector<int>> result(ranks);
  for (std::size_t r = 0; r < ranks; ++r) {
    const auto first = all.begin() + static_cast<std::ptrdiff_t>(r * widest);
    result[r].assign(first, first + sizes[r]);
  }
  return result;
}

// The caller's group of kind @p id, or null where it is in none: the dense kinds from the
// MPU (tensor and pipeline the rank alone without one), every other kind from the context.
const pcx::ProcessGroup* group_of(const pcx::ParallelContext& context, const pcx::GridMpu* mpu, const pcx::GroupId& id,
                                  const pcx::ProcessGroup& alone) {
  if (mpu && pcx::is_dense_kind(id.kind)) return mpu->dense_group(id.kind);
  if (id.kind == pcx::GroupKind::tensor_parallel || id.kind == pcx::GroupKind::pipeline_parallel) return &alone;
  return &context.group(id);
}

std::string help() {
  return pcx::cli::help_text(kProgram, /*world_required=*/false) +
         "\nBuilds the groups over MPI (run it under mpiexec) and prints every rank's groups from rank 0,\n"
         "as JSON, each read back from the group's communicator.\n"
         "--world, if given, must equal the MPI world size. --rank is rejected (every rank is printed).\n"
         "--format is ignored: the output is always JSON. --tp, --pp or --cp above 1, or --megatron, builds a\n"
         "pcx::GridMpu.\n"
         "Exit status 2: a bad flag or an invalid configuration.\n";
}

// The flags, checked against the MPI world size; pcx::validate() is left to the context.
pcx::cli::PlanOptions parse(const std::vector<std::string>& args, int world_size) {
  pcx::cli::PlanOptions options = pcx::cli::parse_plan_options(args, /*world_required=*/false);
  if (options.help) throw pcx::samples::HelpRequested(help());
  if (options.rank) {
    throw pcx::ConfigError(fmt::format("--rank: {} prints every rank's groups; leave --rank out", kProgram));
  }
  pcx::ParallelConfig& config = options.config;
  if (config.world_size != 0 && config.world_size != world_size) {
    throw pcx::ConfigError(fmt::format("--world: {} is not the MPI world size {} (leave --world out to use it)",
                                       config.world_size, world_size));
  }
  config.world_size = world_size;
  return options;
}

std::vector<pcx::AgreedValue> agreed_values(const pcx::cli::PlanOptions& options) {
  const pcx::ParallelConfig& config = options.config;
  return {{"--tp", config.tensor_parallel_size},
          {"--pp", config.pipeline_parallel_size},
          {"--cp", config.context_parallel_size},
          {"--etp (0: not given)", config.expert_tensor_parallel_size.value_or(0)},
          {"--ep sizes", pcx::samples::digest(config.expert_parallel_sizes), /*is_digest=*/true},
          {"--expert-order or --order", pcx::samples::digest(pcx::order_of(config)), /*is_digest=*/true},
          {"--zero-hpz (0: not given)", config.zero_hpz_size.value_or(0)},
          {"--ranks-per-node (0: not given, -1: auto)",
           config.ranks_per_node == pcx::kDetectRanksPerNode ? -1 : config.ranks_per_node.value_or(0)},
          {"--distributed-optimizer-instances", config.distributed_optimizer_instances},
          {"--hybrid-context-parallel (0: not given)", config.hybrid_context_parallel ? 1 : 0},
          {"--hierarchical-context-parallel-sizes", pcx::samples::digest(config.hierarchical_context_parallel_sizes),
           /*is_digest=*/true},
          {"--megatron (0: not given)", options.megatron ? 1 : 0}};
}

int print_groups(const pcx::cli::PlanOptions& options, const pcx::MpiCommunicator& world) {
  const int rank = world.rank();
  pcx::ParallelConfig config = options.config;

  // Created here and handed to the context; never registered in spdlog's registry.
  auto logger = std::make_shared<spdlog::logger>(kProgram, std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern(fmt::format("{}: rank {}: %l: %v", kProgram, rank));
  logger->set_level(spdlog::level::warn);

  std::shared_ptr<const pcx::GridMpu> mpu;
  if (config.tensor_parallel_size > 1 || config.pipeline_parallel_size > 1 || config.context_parallel_size > 1 ||
      options.megatron) {
    mpu = std::make_shared<const pcx::GridMpu>(world, config);
    // The MPU decides the tensor and pipeline sizes. GridMpu clamps a tensor size larger
    // than the world, as pcx-plan does, so the context gets the sizes it reports.
    if (mpu->tensor_parallel_size() != config.tensor_parallel_size) {
      logger->warn("tensor parallel size {} is larger than the world; using {}", config.tensor_parallel_size,
                   mpu->tensor_parallel_size());
    }
    config.tensor_parallel_size = mpu->tensor_parallel_size();
    config.pipeline_parallel_size = mpu->pipeline_parallel_size();
  }

  pcx::ContextOptions context_options;
  context_options.logger = logger;
  // The flags describe the layout to print: a number of ranks per node is taken as given,
  // so that several nodes can be shown on one host; 'auto' is what MPI sees.
  context_options.check_nodes = false;
  const pcx::ParallelContext context(world, config, mpu, context_options);

  const pcx::ProcessGroup alone({rank}, std::make_unique<pcx::SelfCommunicator>());
  nlohmann::ordered_json out;
  out["world_size"] = world.size();
  nlohmann::ordered_json& ranks = out["ranks"] = nlohmann::ordered_json::object();
  if (rank == 0) {
    for (int r = 0; r < world.size(); ++r) ranks[std::to_string(r)] = nlohmann::ordered_json::object();
  }
  const pcx::Topology& topology = context.topology();
  for (const pcx::GroupView& view : options.megatron ? topology.all_views() : topology.views()) {
    const pcx::ProcessGroup* group = group_of(context, mpu.get(), view.id, alone);
    const std::vector<std::vector<int>> members =
        gather_over_world(world, group ? read_back(group->communicator(), rank) : std::vector<int>{});
    if (rank != 0) continue;
    const std::string name = view.id.name();
    for (std::size_t r = 0; r < members.size(); ++r) {
      if (!members[r].empty()) ranks[std::to_string(r)][name] = members[r];
    }
  }
  // What each rank holds for the context: its backend communicators, shared ones once.
  const std::array<int, 1> mine = {context.resources().communicators};
  std::vector<int> communicators(to_size(world.size()));
  world.all_gather(mine, communicators);
  if (rank == 0) {
    for (std::size_t r = 0; r < communicators.size(); ++r) ranks[std::to_string(r)]["communicators"] = communicators[r];
  }
  if (rank == 0) std::cout << out.dump() << '\n' << std::flush;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return pcx::samples::run_sample<pcx::cli::PlanOptions>(
      argc, argv, {.program = kProgram, .parse = parse, .values = agreed_values, .run = print_groups});
}
