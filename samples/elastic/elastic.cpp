// elastic: mixture-of-experts training steps that go on without a lost rank.
//
//   mpiexec -n 8 elastic [--backend mpi|nccl] [--fail-rank 3] [--fail-step 2]
//       [--fail-by sleep|kill|host] [--steps 4] [--tp 2] [--etp 1] [--ep 2] [--timeout-ms 1000]
//
// The layout is Megatron's: tensor parallel groups of --tp ranks from a GridMpu, experts
// of --etp-wide tensor groups, --ep of them per expert parallel group. One step, on every
// rank, with every number received checked against what its sender must have sent:
//  1. dispatch: an all_to_all over the expert parallel group (block j of member g is
//     the step, g's world rank and j);
//  2. expert gradients: an all_reduce (sum) over the expert data parallel group;
//  3. dense gradients: an all_reduce (avg) over the data parallel group;
//  4. the loss: an all_reduce (sum) over the world.
// At step --fail-step, rank --fail-rank stops responding: it sleeps three deadlines, then
// leaves; with --fail-by kill it dies at once (SIGKILL). With --fail-by host its whole
// node is lost: every rank on the node of --fail-rank (Communicator::nodes()) stops as
// with sleep, for the host to be killed from outside (scripts/hosts kill). The others
// time out (every operation has a deadline of --timeout-ms), give up their context and
// rebuild it on the survivors with pcx::rebuild, which drops the lost ranks' data parallel
// replicas and keeps every other shape; they redo the step and go on. The last line, printed by the
// survivors' rank 0, starts with "elastic: recovered" and gives the time from the start
// of the failed step to the end of its first good run. After a kill, the launcher must
// let the others go on (Open MPI: mpiexec --enable-recovery), and they end without
// MPI_Finalize, which would wait for the dead processes.
//
// Exit status: 0 on every rank (the lost rank and its replica leave early; a killed rank
// has none); 2 for bad flags.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "../common/cli.hpp"
#include "../common/run_sample.hpp"
#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/rebuild.hpp"

#if PCX_WITH_NCCL
#include "../common/nccl_devices.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#endif

namespace {

constexpr const char* kProgram = "elastic";
using Clock = std::chrono::steady_clock;

struct Options {
  std::string backend = "mpi";
  int fail_rank = 3;
  int fail_step = 2;
  std::string fail_by = "sleep";
  int steps = 4;
  int tp = 2;
  int etp = 1;
  int ep = 2;
  int timeout_ms = 1000;
};

double ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// A wrong number is a bug, not a failure to recover from.
void expect(bool ok, const std::string& what) {
  if (!ok) throw std::logic_error(what);
}

// One training step over the context's groups; throws Timeout or CommError when a peer
// does not come.
void step(const pcx::ParallelContext& context, int ep, int number) {
  const int me = context.rank();
  const auto code = [number](int sender, std::size_t block) {
    return std::int64_t{number} * 1'000'000 + std::int64_t{sender} * 1'000 + static_cast<std::int64_t>(block);
  };

  const pcx::ProcessGroup& experts = context.expert_parallel_group(ep);
  const auto n = static_cast<std::size_t>(experts.size());
  std::vector<std::int64_t> sent(n), received(n);
  for (std::size_t j = 0; j < n; ++j) sent[j] = code(me, j);
  experts.communicator().all_to_all(std::span<const std::int64_t>(sent), std::span<std::int64_t>(received));
  for (std::size_t i = 0; i < n; ++i) {
    expect(received[i] == code(experts.global_rank(static_cast<int>(i)), static_cast<std::size_t>(experts.rank())),
           fmt::format("step {}: dispatch block {} on rank {}", number, i, me));
  }

  // Sums and averages of the members' world ranks: what each member holds is known.
  const auto sum_of = [](const pcx::ProcessGroup& group) {
    std::int64_t total = 0;
    for (int i = 0; i < group.size(); ++i) total += group.global_rank(i);
    return total;
  };
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(ep);
  std::int64_t expert_gradient = me;
  replicas.communicator().all_reduce(std::span<std::int64_t>(&expert_gradient, 1), pcx::ReduceOp::sum);
  expect(expert_gradient == sum_of(replicas), fmt::format("step {}: expert gradient on rank {}", number, me));

  const pcx::ProcessGroup& data = context.data_parallel_group();
  double dense_gradient = me + 0.5 * number;
  data.communicator().all_reduce(std::span<double>(&dense_gradient, 1), pcx::ReduceOp::avg);
  const double expected = static_cast<double>(sum_of(data)) / data.size() + 0.5 * number;
  expect(std::abs(dense_gradient - expected) <= 1e-9 * std::abs(expected),
         fmt::format("step {}: dense gradient on rank {}", number, me));

  std::int64_t loss = 1;
  context.world_group().communicator().all_reduce(std::span<std::int64_t>(&loss, 1), pcx::ReduceOp::sum);
  expect(loss == context.world_size(), fmt::format("step {}: loss on rank {}", number, me));
}

pcx::ParallelConfig layout(const Options& o) {
  pcx::ParallelConfig config;
  config.tensor_parallel_size = o.tp;
  config.expert_tensor_parallel_size = o.etp;
  config.expert_parallel_sizes = {o.ep};
  return config;
}

// The ranks that stop at the failed step: --fail-rank, or with --fail-by host every rank
// on its node. Collective (nodes() is).
std::vector<int> lost_ranks(const Options& o, const pcx::Communicator& world) {
  if (o.fail_by != "host") return {o.fail_rank};
  const std::vector<int> nodes = world.nodes();
  if (nodes.empty()) throw pcx::ConfigError(fmt::format("--fail-by host: a {} world has no nodes", world.backend()));
  std::vector<int> lost;
  for (int r = 0; r < world.size(); ++r) {
    if (nodes[static_cast<std::size_t>(r)] == nodes[static_cast<std::size_t>(o.fail_rank)]) lost.push_back(r);
  }
  return lost;
}

int run(const Options& o, const pcx::Communicator& world) {
  const int first_rank = world.rank();
  const std::vector<int> lost = lost_ranks(o, world);
  const bool stops = std::ranges::find(lost, first_rank) != lost.end();
  const std::string lost_text = fmt::format("rank{} {}", lost.size() == 1 ? "" : "s", fmt::join(lost, ","));
  pcx::ContextOptions options;
  options.communicators.timeout = std::chrono::milliseconds(o.timeout_ms);
  auto mpu = std::make_shared<const pcx::GridMpu>(world, layout(o));
  const pcx::ParallelContext first(world, layout(o), mpu, options);
  std::optional<pcx::Rebuilt> survivors;
  const auto context = [&]() -> const pcx::ParallelContext& { return survivors ? survivors->context : first; };
  const auto say = [&](const std::string& line) {
    if (context().rank() == 0) fmt::print("{}\n", line);
  };
  say(fmt::format("{}: {} ranks, tensor {}, expert tensor {}, experts {}; {} stop{} at step {}", kProgram, world.size(),
                  o.tp, o.etp, o.ep, lost_text, lost.size() == 1 ? "s" : "", o.fail_step));

  Clock::time_point failed_at;  // the start of the failed step, while recovering
  bool recovering = false;
  std::string recovery;
  for (int number = 1; number <= o.steps;) {
    const Clock::time_point started = Clock::now();
    if (!survivors && number == o.fail_step && stops) {
      if (o.fail_by == "kill") std::raise(SIGKILL);
      std::this_thread::sleep_for(3 * std::chrono::milliseconds(o.timeout_ms));  // stops responding
    } else {
      try {
        step(context(), o.ep, number);
        say(fmt::format("  step {}: every number checked on {} ranks", number, context().world_size()));
        if (recovering) {
          recovery = fmt::format("{:.0f} ms from the failed step's start to its first good run",
                                 ms_between(failed_at, Clock::now()));
          recovering = false;
        }
        ++number;
        continue;
      } catch (const pcx::Timeout&) {
      } catch (const pcx::CommError&) {  // a peer's abort, seen before this rank's own deadline
      }
      if (survivors) throw pcx::CommError("a second failure: this sample recovers from one", -1);
      failed_at = started;
      recovering = true;
    }
    // The lost ranks are known to every survivor (here from the command line; in a job,
    // from its launcher or health checks). Everyone, the lost ranks too once they wake,
    // gives up the context; the ranks that leave stop here.
    const Clock::time_point rebuilding = Clock::now();
    pcx::RebuildOptions rebuild;
    rebuild.context = options;
    std::optional<pcx::Rebuilt> rebuilt = pcx::rebuild(first, world, lost, rebuild);
    world.abort();  // shrunk: no longer usable by all its ranks
    if (!rebuilt) return 0;
    survivors = std::move(rebuilt);
    say(fmt::format("  step {}: {} lost; rebuilt in {:.0f} ms on {} ranks (data parallel {} -> {})", number, lost_text,
                    ms_between(rebuilding, Clock::now()), survivors->context.world_size(), first.data_parallel_size(),
                    survivors->context.data_parallel_size()));
  }
  say(fmt::format("{}: recovered: {}; {} steps on {} of {} ranks, every number checked", kProgram,
                  recovery.empty() ? std::string("no failure") : recovery, o.steps, context().world_size(),
                  world.size()));
  return 0;
}

Options parse(const std::vector<std::string>& args, int world_size) {
  Options o;
  CLI::App app{"MoE training steps that go on without a lost rank (pcx::rebuild).", kProgram};
  app.option_defaults()->always_capture_default();
  app.add_option("--backend", o.backend, "mpi, or nccl with one GPU per rank")->check(CLI::IsMember({"mpi", "nccl"}));
  app.add_option("--fail-rank", o.fail_rank, "the rank that stops responding")->check(CLI::Range(0, 1 << 20));
  app.add_option("--fail-step", o.fail_step, "the step at which it stops")->check(CLI::Range(1, 1000));
  app.add_option("--fail-by", o.fail_by,
                 "how it stops: sleep; kill (needs mpiexec --enable-recovery); host: its node's ranks stop, for the "
                 "host to be killed")
      ->check(CLI::IsMember({"sleep", "kill", "host"}));
  app.add_option("--steps", o.steps, "steps")->check(CLI::Range(1, 1000));
  app.add_option("--tp", o.tp, "tensor parallel size")->check(CLI::Range(1, 1 << 20));
  app.add_option("--etp", o.etp, "expert tensor parallel size")->check(CLI::Range(1, 1 << 20));
  app.add_option("--ep", o.ep, "expert parallel size")->check(CLI::Range(1, 1 << 20));
  app.add_option("--timeout-ms", o.timeout_ms, "deadline of every operation")->check(CLI::Range(50, 600'000));
  pcx::samples::parse_flags(app, args);
  if (o.fail_rank >= world_size) {
    throw pcx::ConfigError(fmt::format("--fail-rank {} is not a rank of the {} ranks", o.fail_rank, world_size));
  }
  if (o.backend == "nccl" && !PCX_WITH_NCCL) throw pcx::ConfigError("--backend nccl: this build has no NCCL backend");
  return o;
}

std::vector<pcx::AgreedValue> agreed_values(const Options& o) {
  return {{"--backend", pcx::samples::digest(o.backend), /*is_digest=*/true},
          {"--fail-rank", o.fail_rank},
          {"--fail-step", o.fail_step},
          {"--fail-by", pcx::samples::digest(o.fail_by), /*is_digest=*/true},
          {"--steps", o.steps},
          {"--tp", o.tp},
          {"--etp", o.etp},
          {"--ep", o.ep},
          {"--timeout-ms", o.timeout_ms}};
}

int run_on(const Options& o, const pcx::MpiCommunicator& world) {
#if PCX_WITH_NCCL
  if (o.backend == "nccl") {
    if (!pcx::samples::every_rank_has_a_device(world, kProgram)) return pcx::samples::kSkipped;
    pcx::NcclWorldOptions nccl;
    nccl.communicator.timeout = std::chrono::milliseconds(o.timeout_ms);
    return run(o, pcx::NcclCommunicator::create_world(world, nccl));
  }
#endif
  // Its own world: the shrink and the abort above leave MPI_COMM_WORLD alone.
  return run(o, *world.dup());
}

int elastic(const Options& o, const pcx::MpiCommunicator& world) {
  const int status = run_on(o, world);
  if (o.fail_by != "sleep") {
    // Open MPI 4.1's MPI_Finalize is a fence over every process of the job, the dead one
    // too, and may never return (there is no ULFM): end here, every pcx object released.
    std::fflush(nullptr);
    std::_Exit(status);
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  return pcx::samples::run_sample<Options>(
      argc, argv, {.program = kProgram, .parse = parse, .values = agreed_values, .run = elastic});
}
