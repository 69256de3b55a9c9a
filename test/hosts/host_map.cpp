// host_map: what each rank of a job across hosts sees of its nodes. Every rank prints its
// own line, so that an error is seen to reach every rank:
//
//   rank R: host H: nodes N0 N1 ... N(W-1): ranks per node K
//   rank R: host H: nodes N0 N1 ... N(W-1): error: <the ConfigError's message>
//
// where N are Communicator::nodes() (each rank's node, named by its lowest rank) and K the
// ranks per node of the ParallelContext built from pcx-plan's flags (--ranks-per-node auto
// detects them; a number is checked against the real nodes). Rank 0 also prints each
// placement warning the context logs, as "rank 0: warning: <message>".
//
//   mpiexec --hostfile FILE -n 16 host_map --tp 8 --ranks-per-node auto
//
// Exit status 0; 2 on every rank when the context refuses the flags, the configuration or
// the nodes.
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <array>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/mpu.hpp"
#include "pcx/parallel_context.hpp"
#include "plan_options.hpp"

namespace {

std::string host_name() {
  std::array<char, 256> name{};
  return gethostname(name.data(), name.size() - 1) == 0 ? std::string(name.data()) : std::string("?");
}

// One write per line, so that the lines of different ranks do not interleave.
void say(int rank, const std::string& text) {
  const std::string line = fmt::format("rank {}: {}\n", rank, text);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

// The context of @p config over @p world: its ranks per node and, on rank 0, its warnings.
std::string build(const pcx::MpiCommunicator& world, pcx::ParallelConfig config) {
  std::ostringstream warnings;
  auto logger = std::make_shared<spdlog::logger>("host_map", std::make_shared<spdlog::sinks::ostream_sink_st>(warnings));
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::warn);
  pcx::ContextOptions options;
  options.logger = logger;

  config.world_size = world.size();
  std::shared_ptr<const pcx::GridMpu> mpu;
  if (config.tensor_parallel_size > 1 || config.pipeline_parallel_size > 1 || config.context_parallel_size > 1) {
    mpu = std::make_shared<const pcx::GridMpu>(world, config);
  }
  const pcx::ParallelContext context(world, config, mpu, options);
  std::string text = fmt::format("ranks per node {}", context.topology().config().ranks_per_node.value_or(0));
  std::string line;
  for (std::istringstream lines(warnings.str()); std::getline(lines, line);) {
    text += fmt::format("\nrank {}: warning: {}", world.rank(), line);
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const pcx::MpiEnvironment environment(&argc, &argv);
  const pcx::MpiCommunicator world = pcx::MpiCommunicator::world();
  const std::string where = fmt::format("host {}: nodes {}", host_name(), fmt::join(world.nodes(), " "));
  try {
    // Every rank is given the same flags, so a bad one fails on every rank alike.
    const pcx::cli::PlanOptions options =
        pcx::cli::parse_plan_options(std::vector<std::string>(argv + 1, argv + argc), /*world_required=*/false);
    say(world.rank(), fmt::format("{}: {}", where, build(world, options.config)));
    return 0;
  } catch (const pcx::ConfigError& e) {
    say(world.rank(), fmt::format("{}: error: {}", where, e.what()));
    return 2;
  }
}
