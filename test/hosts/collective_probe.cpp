// collective_probe: all_reduce over the world, again and again, every result checked and
// every operation under a deadline: the probe of a job across hosts whose links fail.
//
//   mpiexec ... collective_probe --status-dir DIR [--count N] [--elements E] [--timeout-ms T]
//
// Operation i sums, on every rank r, x[j] = r * E + j + i (int64, j < E): every element of
// the result is known. --count 0 runs until an operation fails. Each rank ends by writing
// DIR/rank.R, one line:
//
//   ok N MEDIAN_MS P90_MS MAX_MS     N operations checked, and their times
//   timeout I STARTED_NS ENDED_NS    operation I ended in pcx::Timeout (CLOCK_REALTIME)
//   commerror I STARTED_NS ENDED_NS  operation I ended in pcx::CommError
//
// Rank 0 writes DIR/running after 10 good operations, for a script that waits to break a
// link while the ranks are inside one. A rank that failed waits (at most 10 s) until every
// rank has written its line, so that the launcher, which ends the job at the first rank
// to leave, does not end the others before their own deadlines; it then leaves without
// MPI_Finalize, which would wait for the ranks it can no longer reach.
//
// Exit status: 0 after N good operations; 3 after a failed one; 2 for bad flags.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"

namespace {

struct Options {
  std::string status_dir;
  int count = 0;
  int elements = 1024;
  int timeout_ms = 2000;
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void write_line(const std::filesystem::path& path, const std::string& line) {
  const std::filesystem::path partial = path.string() + ".partial";
  std::ofstream(partial) << line << '\n';
  std::filesystem::rename(partial, path);  // whole, or not there
}

std::size_t rank_files(const std::string& dir) {
  std::size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("rank.") && !name.ends_with(".partial")) ++count;
  }
  return count;
}

// One operation: false where a member of the result is not the expected sum.
bool sum_once(const pcx::Communicator& world, int index, std::vector<std::int64_t>& values) {
  const std::int64_t ranks = world.size();
  const auto elements = static_cast<std::int64_t>(values.size());
  for (std::int64_t j = 0; j < elements; ++j) values[static_cast<std::size_t>(j)] = world.rank() * elements + j + index;
  world.all_reduce(std::span<std::int64_t>(values), pcx::ReduceOp::sum);
  for (std::int64_t j = 0; j < elements; ++j) {
    if (values[static_cast<std::size_t>(j)] != elements * ranks * (ranks - 1) / 2 + ranks * (j + index)) return false;
  }
  return true;
}

int probe(const Options& o) {
  pcx::CommOptions comm;
  comm.timeout = std::chrono::milliseconds(o.timeout_ms);
  const pcx::MpiCommunicator world = pcx::MpiCommunicator::world(comm);
  const std::filesystem::path mine = std::filesystem::path(o.status_dir) / fmt::format("rank.{}", world.rank());
  std::vector<std::int64_t> values(static_cast<std::size_t>(o.elements));
  std::vector<double> times_ms;
  for (int i = 0; o.count == 0 || i < o.count; ++i) {
    const std::int64_t started = now_ns();
    std::string failure;
    try {
      if (!sum_once(world, i, values)) {
        std::fprintf(stderr, "collective_probe: rank %d: operation %d summed wrongly\n", world.rank(), i);
        std::_Exit(1);
      }
    } catch (const pcx::Timeout&) {
      failure = "timeout";
    } catch (const pcx::CommError&) {
      failure = "commerror";
    }
    if (!failure.empty()) {
      write_line(mine, fmt::format("{} {} {} {}", failure, i, started, now_ns()));
      for (int waited = 0; waited < 1000 && rank_files(o.status_dir) < static_cast<std::size_t>(world.size());
           ++waited) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      std::fflush(nullptr);
      std::_Exit(3);
    }
    times_ms.push_back(static_cast<double>(now_ns() - started) / 1e6);
    if (i == 9 && world.rank() == 0) write_line(std::filesystem::path(o.status_dir) / "running", "running");
  }
  std::ranges::sort(times_ms);
  const auto at = [&](double fraction) {
    return times_ms[static_cast<std::size_t>(fraction * static_cast<double>(times_ms.size() - 1))];
  };
  write_line(mine, fmt::format("ok {} {:.3f} {:.3f} {:.3f}", times_ms.size(), at(0.5), at(0.9), times_ms.back()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const pcx::MpiEnvironment environment(&argc, &argv);
  Options o;
  CLI::App app{"all_reduce over the world in a loop, every result checked, under a deadline.", "collective_probe"};
  app.add_option("--status-dir", o.status_dir, "where each rank writes its outcome")->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--count", o.count, "operations (0: until one fails)")->check(CLI::Range(0, 1'000'000));
  app.add_option("--elements", o.elements, "int64 elements per operation")->check(CLI::Range(1, 1 << 26));
  app.add_option("--timeout-ms", o.timeout_ms, "deadline of every operation")->check(CLI::Range(50, 600'000));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return probe(o);
}
