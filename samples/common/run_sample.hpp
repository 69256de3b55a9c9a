#pragma once
// The main() of the MPI samples: MPI around the sample, and one rule for errors that
// keeps every rank of the job in step.

#include <fmt/format.h>

#include <optional>
#include <string>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"

namespace pcx::samples {

/// Exit status for bad flags and configurations that break a rule.
inline constexpr int kUsageError = 2;

/// A sample's body: the arguments after the program name and the MPI world; returns the
/// exit status.
using Sample = int (*)(const std::vector<std::string>& args, const MpiCommunicator& world);

/// Runs @p sample on every rank between MPI's initialization and its finalization.
/// ConfigError and ConfigMismatch arrive on every rank alike (a context compares its
/// configuration over the world before it builds anything), so rank 0 prints one line
/// and every rank exits with kUsageError. Any other error may concern this rank only,
/// while the others wait in a collective: it is printed with the rank and the job is
/// aborted.
inline int run_sample(int argc, char** argv, const char* program, Sample sample) {
  std::optional<MpiEnvironment> environment;
  try {
    environment.emplace(&argc, &argv);
  } catch (const Error& e) {
    fmt::print(stderr, "{}: error: {}\n", program, e.what());
    return 1;
  }
  // Declared after `environment`, so released before MPI is finalized.
  std::optional<MpiCommunicator> world;
  int rank = 0;
  try {
    world.emplace(MpiCommunicator::world());
    rank = world->rank();
    return sample(std::vector<std::string>(argv + 1, argv + argc), *world);
  } catch (const ConfigError& e) {
    if (rank == 0) fmt::print(stderr, "{}: error: {}\n", program, e.what());
    return kUsageError;
  } catch (const ConfigMismatch& e) {
    if (rank == 0) fmt::print(stderr, "{}: error: {}\n", program, e.what());
    return kUsageError;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: error on rank {}: {}\n", program, rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

}  // namespace pcx::samples
