// context_mpi_bench: building a real context under mpiexec, six ways, side by side.
//
//   seed      what the seed does: every rank takes part in the creation of every group
//             of the world, one at a time (torch's dist.new_group is collective over the
//             whole world). Emulated with one MPI_Comm_split of MPI_COMM_WORLD per group
//             of the world, in which non-members pass MPI_UNDEFINED: the world clone,
//             then every group of every kind, groups of one rank included.
//   pcx       ParallelContext over pcx::MpiCommunicator::world(): one all-reduce that
//             checks every rank agrees, one dup (the world clone), then one creation per
//             group kind (none for kinds whose groups have one rank), four ways:
//             split dedicated  MPI_Comm_split, every kind its own communicator;
//             split            MPI_Comm_split, kinds with the same groups share one;
//             group            MPI_Comm_create_group over the group's members, shared;
//             automatic        the default: group for groups of at most half the world,
//                              split for larger ones, shared.
//   raw       pcx's plan in plain MPI: MPI_Comm_dup of the world, then one MPI_Comm_split
//             of the clone per kind, no checks, no names, no error handler, no sharing.
//
// Communicators per rank: the seed's are the groups it creates that hold the rank (groups
// of one rank included: torch makes a communicator for them too); pcx's are
// ParallelContext::resources().communicators (shared ones once, self communicators not).
//
// Each repetition times the methods one after the other (so that load from other
// processes hits them alike); a method's time is the slowest rank's, between two
// barriers; creation only (the communicators are freed outside the timed region). The
// table on rank 0 gives the median over the repetitions, in ms.
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
  const int half = std::max(1, world / 2);
  return {
      {"ep 2", make({2}, std::nullopt, std::nullopt)},
      {"ep 8", make({8}, std::nullopt, std::nullopt)},
      {"ep W (the world)", make({world}, std::nullopt, std::nullopt)},
      {"hpz 4 + ranks/node 4", make({}, 4, 4)},
      {"ep W/2 + hpz W/2 + ranks/node W/2", make({half}, half, half)},
      {"ep 2,4,8 + hpz 4 + ranks/node 4", make({2, 4, 8}, 4, 4)},
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
double time_seed(const pcx::Topology& topology, int rank, long& communicators) {
  std::vector<MPI_Comm> mine;
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
      if (comm != MPI_COMM_NULL) mine.push_back(comm);
    }
  }
  const double elapsed = MPI_Wtime() - start;
  communicators = static_cast<long>(mine.size());
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

// One way of building a pcx context.
struct Method {
  const char* name;
  pcx::GroupCreation creation;
  bool dedicated;
};

constexpr Method kMethods[] = {{"pcx split dedicated", pcx::GroupCreation::split, true},
                               {"pcx split", pcx::GroupCreation::split, false},
                               {"pcx group", pcx::GroupCreation::group, false},
                               {"pcx automatic", pcx::GroupCreation::automatic, false}};

double time_pcx(const pcx::Communicator& world, const pcx::Topology& topology, const Method& method,
                long& communicators) {
  pcx::ContextOptions options;
  options.communicators.creation = method.creation;
  options.check_nodes = false;  // nodes simulated on one host
  if (method.dedicated) {
    for (const pcx::GroupView& view : topology.views()) options.dedicated.insert(view.id.kind);
  }
  std::optional<pcx::ParallelContext> context;
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  const double start = MPI_Wtime();
  context.emplace(world, topology.config(), nullptr, options);
  const double elapsed = MPI_Wtime() - start;
  communicators = context->resources().communicators;
  context.reset();
  return slowest(elapsed);
}

double median(std::vector<double> values) {
  std::ranges::sort(values);
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
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
      std::printf("communicators per rank (rank 0); creation time: slowest rank, median, ms\n\n");
      std::printf("| configuration | seed comms | pcx dedicated comms | pcx shared comms | seed |");
      for (const Method& method : kMethods) std::printf(" %s |", method.name);
      std::printf(" raw MPI split | seed / pcx automatic |\n|---|---:|---:|---:|---:|");
      for (std::size_t m = 0; m < std::size(kMethods); ++m) std::printf("---:|");
      std::printf("---:|---:|\n");
    }

    for (const Case& c : cases(size)) {
      try {
        pcx::validate(c.config);
      } catch (const pcx::ConfigError& e) {
        if (rank == 0) std::printf("| %s | skipped: %s |\n", c.name.c_str(), e.what());
        continue;
      }
      const pcx::Topology topology(c.config);
      std::vector<double> seed_times, raw_times;
      std::vector<std::vector<double>> pcx_times(std::size(kMethods));
      long seed_comms = 0;
      long dedicated_comms = 0;
      long shared_comms = 0;
      for (int r = 0; r < warmup + reps; ++r) {
        const double t_seed = time_seed(topology, rank, seed_comms);
        std::vector<double> t_pcx;
        for (const Method& method : kMethods) {
          long held = 0;
          t_pcx.push_back(time_pcx(world, topology, method, held));
          (method.dedicated ? dedicated_comms : shared_comms) = held;
        }
        const double t_raw = time_raw(topology, rank);
        if (r < warmup) continue;
        seed_times.push_back(t_seed);
        for (std::size_t m = 0; m < t_pcx.size(); ++m) pcx_times[m].push_back(t_pcx[m]);
        raw_times.push_back(t_raw);
      }
      if (rank == 0) {
        std::printf("| %s | %ld | %ld | %ld | %.3f |", c.name.c_str(), seed_comms, dedicated_comms, shared_comms,
                    median(seed_times) * 1e3);
        for (const auto& times : pcx_times) std::printf(" %.3f |", median(times) * 1e3);
        std::printf(" %.3f | %.1fx |\n", median(raw_times) * 1e3, median(seed_times) / median(pcx_times.back()));
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
