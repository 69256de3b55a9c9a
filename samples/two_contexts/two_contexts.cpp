// two_contexts: two independent pcx::ParallelContexts in one process, used alternately,
// as a job that trains with one layout and evaluates with another does. DeepSpeed keeps
// its groups in module globals, so it can hold one layout per process; pcx keeps them in
// context objects that share nothing.
//
//   mpiexec -n 8 two_contexts [--train-ep 4] [--hpz 2] [--eval-ep 2] [--steps 6] [--backend mpi|nccl]
//
// - training context: expert parallel size 4, expert-first, with ZeRO hpZ groups of 2;
//   a training step all-gathers over the expert parallel group, all-reduces (sum) over
//   the expert data parallel group and reduce-scatters (sum) over the hpZ group;
// - evaluation context: expert parallel size 2, data-first; an evaluation step exchanges
//   blocks by all-to-all over the expert parallel group, all-reduces (max) over the expert
//   data parallel group and broadcasts from the expert broadcast source rank.
// Steps alternate between the two contexts; then the evaluation context is destroyed and
// one more training step shows the training context unaffected. Every value received is
// checked against the layout rules of SPEC.md, computed here without communication.
//
// --backend nccl (builds with the NCCL backend only) builds both contexts over one
// pcx::NcclCommunicator world, one GPU per rank. The buffers stay std::vectors in host
// memory: the NCCL backend stages them through device memory.
//
// Exit status: 0 when every check passed; 1 on any mismatch (every rank agrees) or a
// failure to start NCCL; 2 on every rank for a bad flag or configuration (a bad flag on
// any rank, or flags that differ between ranks), with one error line from rank 0; 77
// when --backend nccl finds a rank without a CUDA device.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../common/run_sample.hpp"
#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"

#if PCX_WITH_NCCL
#include <cuda_runtime.h>

#include "../common/nccl_devices.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#endif

namespace {

constexpr int kMismatch = 1;
constexpr const char* kProgram = "two_contexts";
constexpr std::size_t kValues = 4;  // values per rank and block in every collective
constexpr int kMaxReportedMismatches = 10;

std::size_t to_size(int value) { return static_cast<std::size_t>(value); }

enum class Backend { mpi, nccl };

struct Options {
  int train_ep = 4;
  int hpz = 2;
  int eval_ep = 2;
  int steps = 6;
  Backend backend = Backend::mpi;
};

int parse_int(std::string_view flag, std::string_view text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc{} || end != text.data() + text.size() || value < 1 || value > (1 << 20)) {
    throw pcx::ConfigError(fmt::format("{}: '{}' is not a whole number in [1, {}]", flag, text, 1 << 20));
  }
  return value;
}

std::string help() {
  return fmt::format(
      "usage: mpiexec -n W {} [--train-ep 4] [--hpz 2] [--eval-ep 2] [--steps 6] [--backend mpi|nccl]\n"
      "Alternates steps between a training context (expert-first, hpZ) and an evaluation context\n"
      "(data-first), checking every collective. --backend nccl runs them over NCCL, one GPU per rank ({}).\n"
      "Exit status: 0 ok, 1 a mismatch, 2 a bad flag or layout, 77 no CUDA device.\n",
      kProgram, PCX_WITH_NCCL ? "built" : "not in this build");
}

// The flags; the layouts' rules are left to the contexts.
Options parse_options(const std::vector<std::string>& args, int /*world_size*/) {
  Options options;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view flag = args[i];
    if (flag == "--help" || flag == "-h") throw pcx::samples::HelpRequested(help());
    if (flag == "--backend") {
      if (i + 1 >= args.size()) throw pcx::ConfigError("--backend needs a value");
      const std::string_view backend = args[++i];
      if (backend == "nccl") {
        if (!PCX_WITH_NCCL) throw pcx::ConfigError("--backend nccl: this build has no NCCL backend");
        options.backend = Backend::nccl;
      } else if (backend != "mpi") {
        throw pcx::ConfigError(fmt::format("--backend: '{}' is not mpi or nccl", backend));
      }
      continue;
    }
    int* target = flag == "--train-ep"  ? &options.train_ep
                  : flag == "--hpz"     ? &options.hpz
                  : flag == "--eval-ep" ? &options.eval_ep
                  : flag == "--steps"   ? &options.steps
                                        : nullptr;
    if (!target) throw pcx::ConfigError(fmt::format("unknown flag '{}' (see --help)", flag));
    if (i + 1 >= args.size()) throw pcx::ConfigError(fmt::format("{} needs a value", flag));
    *target = parse_int(flag, args[++i]);
  }
  return options;
}

std::vector<pcx::AgreedValue> agreed_values(const Options& options) {
  return {{"--train-ep", options.train_ep},
          {"--hpz", options.hpz},
          {"--eval-ep", options.eval_ep},
          {"--steps", options.steps},
          {"--backend (0: mpi, 1: nccl)", static_cast<std::int64_t>(options.backend)}};
}

// ---------------------------------------------------------------------------------------
// The layouts, from SPEC.md with tensor and pipeline size 1 (no communication).

struct ExpertLayout {
  int world;
  int ep;
  pcx::ExpertOrder order;

  [[nodiscard]] int edp() const { return world / ep; }
  // expert-first r = j*ep + e, data-first r = e*edp + j.
  [[nodiscard]] int rank_of(int e, int j) const {
    return order == pcx::ExpertOrder::expert_first ? j * ep + e : e * edp() + j;
  }
  [[nodiscard]] int expert_of(int r) const { return order == pcx::ExpertOrder::expert_first ? r % ep : r / edp(); }
  [[nodiscard]] int replica_of(int r) const { return order == pcx::ExpertOrder::expert_first ? r / ep : r % edp(); }
  [[nodiscard]] std::vector<int> expert_group(int r) const {
    std::vector<int> group;
    for (int e = 0; e < ep; ++e) group.push_back(rank_of(e, replica_of(r)));
    return group;
  }
  [[nodiscard]] std::vector<int> expert_data_group(int r) const {
    std::vector<int> group;
    for (int j = 0; j < edp(); ++j) group.push_back(rank_of(expert_of(r), j));
    return group;
  }
};

// hpZ: consecutive blocks of z ranks.
std::vector<int> hpz_group(int r, int z) {
  std::vector<int> group;
  for (int i = 0; i < z; ++i) group.push_back(r / z * z + i);
  return group;
}

// Values sent in step `step`: exact in double.
double value(int step, int rank, int slot, std::size_t k) {
  return step * 1000.0 + rank * 10.0 + slot + static_cast<double>(k) * 0.25;
}

class Checker {
 public:
  explicit Checker(int rank) : rank_(rank) {}
  void expect_equal(double got, double want, std::string_view what) {
    ++checks_;
    if (got == want) return;
    if (++failures_ <= kMaxReportedMismatches) {
      fmt::print(stderr, "{}: rank {}: mismatch: {}: got {}, expected {}\n", kProgram, rank_, what, got, want);
    }
  }
  void expect_group(const pcx::ProcessGroup& group, const std::vector<int>& want, std::string_view what) {
    const std::vector<int> got = group.ranks();
    ++checks_;
    if (got == want && group.communicator().size() == static_cast<int>(want.size())) return;
    if (++failures_ <= kMaxReportedMismatches) {
      fmt::print(stderr, "{}: rank {}: mismatch: {} group [{}], expected [{}]\n", kProgram, rank_, what,
                 fmt::join(got, ","), fmt::join(want, ","));
    }
  }
  [[nodiscard]] std::int64_t checks() const noexcept { return checks_; }
  [[nodiscard]] std::int64_t failures() const noexcept { return failures_; }

 private:
  int rank_;
  std::int64_t checks_ = 0;
  std::int64_t failures_ = 0;
};

// ---------------------------------------------------------------------------------------

// A training step on `context`: all-gather (expert parallel), all-reduce sum (expert data
// parallel), reduce-scatter sum (hpZ).
void training_step(const pcx::ParallelContext& context, const ExpertLayout& layout, int z, int step, Checker& checker) {
  const int rank = context.rank();
  const std::string where = fmt::format("training step {}", step);

  // All-gather over the expert parallel group: every member's values, in group order.
  const pcx::ProcessGroup& experts = context.expert_parallel_group(layout.ep);
  std::vector<double> mine(kValues);
  for (std::size_t k = 0; k < kValues; ++k) mine[k] = value(step, rank, 0, k);
  std::vector<double> gathered(kValues * to_size(experts.size()));
  experts.communicator().all_gather(std::span<const double>(mine), std::span<double>(gathered));
  const std::vector<int> expert_group = layout.expert_group(rank);
  for (std::size_t m = 0; m < expert_group.size(); ++m) {
    for (std::size_t k = 0; k < kValues; ++k) {
      checker.expect_equal(gathered[m * kValues + k], value(step, expert_group[m], 0, k),
                           fmt::format("{}: all-gather from expert group member {}", where, m));
    }
  }

  // All-reduce (sum) over the expert data parallel group.
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(layout.ep);
  std::vector<double> summed(kValues);
  for (std::size_t k = 0; k < kValues; ++k) summed[k] = value(step, rank, 1, k);
  replicas.communicator().all_reduce(std::span<double>(summed), pcx::ReduceOp::sum);
  for (std::size_t k = 0; k < kValues; ++k) {
    double want = 0;
    for (const int member : layout.expert_data_group(rank)) want += value(step, member, 1, k);
    checker.expect_equal(summed[k], want, fmt::format("{}: expert data parallel all-reduce", where));
  }

  // Reduce-scatter (sum) over the hpZ group: block i of the sum goes to member i.
  const pcx::ProcessGroup& partition = context.zero_param_intra_group();
  std::vector<double> blocks(kValues * to_size(partition.size()));
  for (std::size_t i = 0; i < blocks.size(); ++i)
    blocks[i] = value(step, rank, 2 + static_cast<int>(i / kValues), i % kValues);
  std::vector<double> scattered(kValues);
  partition.communicator().reduce_scatter(std::span<const double>(blocks), std::span<double>(scattered),
                                          pcx::ReduceOp::sum);
  const std::vector<int> hpz = hpz_group(rank, z);
  const int position = rank % z;
  for (std::size_t k = 0; k < kValues; ++k) {
    double want = 0;
    for (const int member : hpz) want += value(step, member, 2 + position, k);
    checker.expect_equal(scattered[k], want, fmt::format("{}: hpZ reduce-scatter", where));
  }
}

// An evaluation step on `context`: all-to-all (expert parallel), all-reduce max (expert
// data parallel), broadcast from the expert broadcast source rank.
void evaluation_step(const pcx::ParallelContext& context, const ExpertLayout& layout, int step, Checker& checker) {
  const int rank = context.rank();
  const std::string where = fmt::format("evaluation step {}", step);

  // All-to-all: block d goes to expert group member d, tagged with d.
  const pcx::ProcessGroup& experts = context.expert_parallel_group(layout.ep);
  const std::size_t members = to_size(experts.size());
  std::vector<double> send(kValues * members);
  std::vector<double> received(send.size());
  for (std::size_t i = 0; i < send.size(); ++i) send[i] = value(step, rank, static_cast<int>(i / kValues), i % kValues);
  experts.communicator().all_to_all(std::span<const double>(send), std::span<double>(received));
  const std::vector<int> expert_group = layout.expert_group(rank);
  const int me = layout.expert_of(rank);
  for (std::size_t s = 0; s < expert_group.size(); ++s) {
    for (std::size_t k = 0; k < kValues; ++k) {
      checker.expect_equal(received[s * kValues + k], value(step, expert_group[s], me, k),
                           fmt::format("{}: all-to-all block from expert group member {}", where, s));
    }
  }

  // All-reduce (max) over the expert data parallel group.
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(layout.ep);
  std::vector<double> highest(kValues);
  for (std::size_t k = 0; k < kValues; ++k) highest[k] = value(step, rank, 3, k);
  replicas.communicator().all_reduce(std::span<double>(highest), pcx::ReduceOp::max);
  const std::vector<int> replica_group = layout.expert_data_group(rank);
  for (std::size_t k = 0; k < kValues; ++k) {
    checker.expect_equal(highest[k], value(step, replica_group.back(), 3, k),  // the largest rank sends the most
                         fmt::format("{}: expert data parallel all-reduce max", where));
  }

  // Broadcast from the expert broadcast source rank (group rank 0 of the replicas).
  const int source = context.expert_broadcast_source_rank(layout.ep);
  checker.expect_equal(source, replica_group.front(), fmt::format("{}: expert broadcast source rank", where));
  std::vector<double> weights(kValues, -1.0);
  if (rank == source) {
    for (std::size_t k = 0; k < kValues; ++k) weights[k] = value(step, rank, 4, k);
  }
  replicas.communicator().broadcast(std::span<double>(weights), 0);
  for (std::size_t k = 0; k < kValues; ++k) {
    checker.expect_equal(weights[k], value(step, replica_group.front(), 4, k),
                         fmt::format("{}: broadcast from the expert broadcast source rank", where));
  }
}

std::string describe(const pcx::ParallelContext& context, int ep) {
  std::string text = fmt::format("expert group [{}], expert data group [{}]",
                                 fmt::join(context.expert_parallel_group(ep).ranks(), ","),
                                 fmt::join(context.expert_data_parallel_group(ep).ranks(), ","));
  if (context.find({pcx::GroupKind::zero_param_intra}) != nullptr) {
    text += fmt::format(", hpZ group [{}]", fmt::join(context.zero_param_intra_group().ranks(), ","));
  }
  return text;
}

// Both contexts over `world` (MPI or NCCL); `control` (MPI, host memory) combines the
// verdicts. Returns the exit status.
int run_contexts(const Options& options, const pcx::Communicator& world, const pcx::MpiCommunicator& control) {
  const int rank = control.rank();
  const int world_size = world.size();

  pcx::ParallelConfig training_config;
  training_config.world_size = world_size;
  training_config.expert_parallel_sizes = {options.train_ep};
  training_config.expert_order = pcx::ExpertOrder::expert_first;
  training_config.zero_hpz_size = options.hpz;
  pcx::ParallelConfig evaluation_config;
  evaluation_config.world_size = world_size;
  evaluation_config.expert_parallel_sizes = {options.eval_ep};
  evaluation_config.expert_order = pcx::ExpertOrder::data_first;

  // Both built over the same world; each clones it and splits its own groups.
  const pcx::ParallelContext training(world, training_config);
  std::optional<pcx::ParallelContext> evaluation;
  evaluation.emplace(world, evaluation_config);

  const ExpertLayout training_layout{world_size, options.train_ep, pcx::ExpertOrder::expert_first};
  const ExpertLayout evaluation_layout{world_size, options.eval_ep, pcx::ExpertOrder::data_first};
  const int z = std::min(options.hpz, world_size);  // SPEC.md: hpZ is clamped to the world

  Checker checker(rank);
  checker.expect_group(training.expert_parallel_group(options.train_ep), training_layout.expert_group(rank),
                       "training expert parallel");
  checker.expect_group(training.expert_data_parallel_group(options.train_ep), training_layout.expert_data_group(rank),
                       "training expert data parallel");
  checker.expect_group(training.zero_param_intra_group(), hpz_group(rank, z), "training hpZ");
  checker.expect_group(evaluation->expert_parallel_group(options.eval_ep), evaluation_layout.expert_group(rank),
                       "evaluation expert parallel");
  checker.expect_group(evaluation->expert_data_parallel_group(options.eval_ep),
                       evaluation_layout.expert_data_group(rank), "evaluation expert data parallel");

  int training_steps = 0;
  int evaluation_steps = 0;
  for (int step = 0; step < options.steps; ++step) {
    if (step % 2 == 0) {
      training_step(training, training_layout, z, step, checker);
      ++training_steps;
    } else {
      evaluation_step(*evaluation, evaluation_layout, step, checker);
      ++evaluation_steps;
    }
  }
  const std::string training_text = describe(training, options.train_ep);
  const std::string evaluation_text = describe(*evaluation, options.eval_ep);
  // Releasing one context leaves the other whole.
  evaluation.reset();
  training_step(training, training_layout, z, options.steps, checker);
  ++training_steps;

  std::int64_t totals[] = {checker.checks(), checker.failures()};
  control.all_reduce(std::span<std::int64_t>(totals), pcx::ReduceOp::sum);
  if (rank == 0) {
    fmt::print(
        "{}: {} ranks ({} backend), {} steps alternating between two contexts, then one after the second is "
        "destroyed\n",
        kProgram, world_size, world.backend(), options.steps);
    fmt::print("  training   (ep {} expert-first, hpZ {}): {} steps of all-gather, all-reduce sum, reduce-scatter\n",
               options.train_ep, z, training_steps);
    fmt::print("             rank 0: {}\n", training_text);
    fmt::print("  evaluation (ep {} data-first): {} steps of all-to-all, all-reduce max, broadcast\n", options.eval_ep,
               evaluation_steps);
    fmt::print("             rank 0: {}\n", evaluation_text);
  }
  if (totals[1] != 0) {
    if (rank == 0) {
      fmt::print(stderr, "{}: error: {} of {} checks failed (see the mismatches above)\n", kProgram, totals[1],
                 totals[0]);
    }
    return kMismatch;
  }
  if (rank == 0) fmt::print("{}: all {} checks passed\n", kProgram, totals[0]);
  return 0;
}

#if PCX_WITH_NCCL
// Both contexts over an NCCL world, or an exit status when it cannot be had. Every rank
// takes the same branch: the outcome is agreed over MPI first.
int run_on_nccl(const Options& options, const pcx::MpiCommunicator& control) {
  if (!pcx::samples::every_rank_has_a_device(control, kProgram)) return pcx::samples::kSkipped;
  // create_world agrees on every rank's device before it builds anything, so a
  // ConfigError (more ranks on a node than devices) arrives on every rank alike.
  const pcx::NcclCommunicator world = pcx::NcclCommunicator::create_world(control);
  return run_contexts(options, world, control);
}
#endif

int two_contexts(const Options& options, const pcx::MpiCommunicator& world) {
#if PCX_WITH_NCCL
  if (options.backend == Backend::nccl) return run_on_nccl(options, world);
#endif
  return run_contexts(options, world, world);
}

}  // namespace

int main(int argc, char** argv) {
  return pcx::samples::run_sample<Options>(
      argc, argv, {.program = kProgram, .parse = parse_options, .values = agreed_values, .run = two_contexts});
}
