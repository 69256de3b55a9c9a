// context_mpi_bench: building a real context under mpiexec, three ways.
//
//   pcx       ParallelContext over pcx::MpiCommunicator::world(): one all-reduce that
//             checks every rank agrees, one dup (the world clone), one MPI_Comm_split
//             per group kind (none for kinds whose groups have one rank).
//   seed      what the seed does: every rank takes part in the creation of every group
//             of the world, one at a time (torch's dist.new_group is collective over the
//             whole world). Emulated with one MPI_Comm_split of MPI_COMM_WORLD per group
//             of the world, in which non-members pass MPI_UNDEFINED: the world clone,
//             then every group of every kind, groups of one rank included.
//   raw       the minimum for pcx's plan in plain MPI: MPI_Comm_dup of the world, then one
//             MPI_Comm_split of the clone per kind, no checks, no names, no error handler.
//             pcx minus raw is the cost of the wrapper.
//
// Each repetition times the three methods one after the other (so that load from other
// processes hits them alike); a method's time is the slowest rank's, between two
// barriers; creation only (the communicators are freed outside the timed region). The
// table on rank 0 gives the median (and minimum) over the repetitions.
//
//   mpiexec -n 8 context_mpi_bench [--reps 30] [--warmup 3]

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/topology.hpp"

namespace {

struct Case {
  std::string name;
  pcx::ParallelConfig config;
};

std::vector<Case> cases(int world) {
  const auto make = [world](std::vector<int> experts, std::optional<int> hpz, std::optional<int> ranks_per_node) {
    pcx::ParallelConfig config;
    config.world_size = world;
    config.expert_parallel_sizes = std::move(experts);
    config.zero_hpz_size = hpz;
    config.ranks_per_node = ranks_per_node;
    return config;
  };
  return {
      {"ep 2", make({2}, std::nullopt, std::nullopt)}, {"ep 4", make({4}, std::nullopt, std::nullopt)},
      {"ep 8", make({8}, std::nullopt, std::nullopt)}, {"hpz 4", make({}, 4, std::nullopt)},
      {"ranks/node 4", make({}, std::nullopt, 4)},     {"ep 2,4,8 + hpz 4 + ranks/node 4", make({2, 4, 8}, 4, 4)},
  };
}

// Kinds a context builds (Megatron's tensor, pipeline and data parallel groups belong to
// the MPU; without one they are trivial and neither pcx nor the seed creates them).
bool context_kind(pcx::GroupKind kind) {
  return kind != pcx::GroupKind::tensor_parallel && kind != pcx::GroupKind::pipeline_parallel &&
         kind != pcx::GroupKind::data_parallel;
}

void check(int code, const char* call) { pcx::check_mpi(code, call); }

double slowest(double local) {
  double result = 0;
  check(MPI_Allreduce(&local, &result, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return result;
}

// The seed: one collective creation per group of the world.
double time_seed(const pcx::Topology& topology, int rank, long& calls) {
  std::vector<MPI_Comm> mine;
  calls = 0;
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  const double start = MPI_Wtime();
  for (const pcx::GroupView& view : topology.views()) {
    if (!context_kind(view.id.kind)) continue;
    const pcx::GroupLayout& layout = view.layout;
    const int own = layout.colour(rank);
    for (int colour = 0; colour < layout.group_count(); ++colour) {
      MPI_Comm comm = MPI_COMM_NULL;
      check(MPI_Comm_split(MPI_COMM_WORLD, colour == own ? 0 : MPI_UNDEFINED, layout.group_rank(rank), &comm),
            "MPI_Comm_split");
      ++calls;
      if (comm != MPI_COMM_NULL) mine.push_back(comm);
    }
  }
  const double elapsed = MPI_Wtime() - start;
  for (MPI_Comm& comm : mine) check(MPI_Comm_free(&comm), "MPI_Comm_free");
  return slowest(elapsed);
}

// pcx's plan in plain MPI: a dup, then one split of the clone per kind.
double time_raw(const pcx::Topology& topology, int rank) {
  std::vector<MPI_Comm> mine;
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  const double start = MPI_Wtime();
  MPI_Comm clone = MPI_COMM_NULL;
  check(MPI_Comm_dup(MPI_COMM_WORLD, &clone), "MPI_Comm_dup");
  for (const pcx::GroupView& view : topology.views()) {
    if (!context_kind(view.id.kind) || view.id.kind == pcx::GroupKind::world) continue;
    if (view.layout.group_size() == 1) continue;
    MPI_Comm comm = MPI_COMM_NULL;
    check(MPI_Comm_split(clone, view.layout.colour(rank), view.layout.group_rank(rank), &comm), "MPI_Comm_split");
    mine.push_back(comm);
  }
  const double elapsed = MPI_Wtime() - start;
  for (auto it = mine.rbegin(); it != mine.rend(); ++it) check(MPI_Comm_free(&*it), "MPI_Comm_free");
  check(MPI_Comm_free(&clone), "MPI_Comm_free");
  return slowest(elapsed);
}

double time_pcx(const pcx::Communicator& world, const pcx::ParallelConfig& config) {
  std::optional<pcx::ParallelContext> context;
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  const double start = MPI_Wtime();
  context.emplace(world, config);
  const double elapsed = MPI_Wtime() - start;
  context.reset();
  return slowest(elapsed);
}

struct Stats {
  double median;
  double min;
};

Stats stats(std::vector<double> values) {
  std::ranges::sort(values);
  const std::size_t n = values.size();
  const double median = n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return {median, values.front()};
}

int parse_int(const char* text, const char* flag) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 0 || value > 1000000) {
    throw std::invalid_argument(std::string("bad value for ") + flag + ": " + text);
  }
  return static_cast<int>(value);
}

}  // namespace

int main(int argc, char** argv) {
  const pcx::MpiEnvironment environment(&argc, &argv);
  int status = 0;
  try {
    int reps = 30;
    int warmup = 3;
    for (int i = 1; i < argc; ++i) {
      const std::string_view flag = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(flag));
      if (flag == "--reps")
        reps = std::max(1, parse_int(argv[++i], "--reps"));
      else if (flag == "--warmup")
        warmup = parse_int(argv[++i], "--warmup");
      else
        throw std::invalid_argument("unknown option " + std::string(flag));
    }

    const pcx::MpiCommunicator world = pcx::MpiCommunicator::world();
    const int rank = world.rank();
    const int size = world.size();
    double load[3] = {0, 0, 0};
    if (rank == 0) {
      if (getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
      char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
      int length = 0;
      MPI_Get_library_version(version, &length);
      std::string first_line(version, static_cast<std::size_t>(length));
      first_line = first_line.substr(0, first_line.find_first_of(",\n"));
      std::printf(
          "context_mpi_bench: world %d, %d repetitions (+%d warm-up), %s; load average before: %.2f %.2f %.2f\n", size,
          reps, warmup, first_line.c_str(), load[0], load[1], load[2]);
      std::printf("times: slowest rank, creation only, median (min) in ms\n\n");
      std::printf(
          "| configuration | seed: new_group calls per rank | pcx: collective calls per rank "
          "| seed emulation | pcx ParallelContext | raw MPI, one split per kind | seed / pcx |\n");
      std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
    }

    for (const Case& c : cases(size)) {
      try {
        pcx::validate(c.config);
      } catch (const pcx::ConfigError& e) {
        if (rank == 0) std::printf("| %s | skipped: %s | | | | | |\n", c.name.c_str(), e.what());
        continue;
      }
      const pcx::Topology topology(c.config);
      // pcx: one all-reduce (agreement), one dup, one split per kind with groups > 1 rank.
      long pcx_calls = 2;
      for (const pcx::GroupView& view : topology.views()) {
        if (context_kind(view.id.kind) && view.id.kind != pcx::GroupKind::world && view.layout.group_size() > 1) {
          ++pcx_calls;
        }
      }
      std::vector<double> seed_times, pcx_times, raw_times;
      long seed_calls = 0;
      for (int r = 0; r < warmup + reps; ++r) {
        const double t_seed = time_seed(topology, rank, seed_calls);
        const double t_pcx = time_pcx(world, c.config);
        const double t_raw = time_raw(topology, rank);
        if (r < warmup) continue;
        seed_times.push_back(t_seed);
        pcx_times.push_back(t_pcx);
        raw_times.push_back(t_raw);
      }
      if (rank == 0) {
        const Stats s = stats(seed_times), p = stats(pcx_times), w = stats(raw_times);
        std::printf("| %s | %ld | %ld | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.1fx |\n", c.name.c_str(),
                    seed_calls, pcx_calls, s.median * 1e3, s.min * 1e3, p.median * 1e3, p.min * 1e3, w.median * 1e3,
                    w.min * 1e3, s.median / p.median);
        std::fflush(stdout);
      }
    }
    if (rank == 0) {
      if (getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
      std::printf("\nload average after: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "context_mpi_bench: %s\n", e.what());
    status = 1;
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return status;
}
