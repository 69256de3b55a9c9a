#pragma once
// Shared by the multi-rank tests: MPI for the whole test module, and a way to turn
// one rank's verdict into everyone's, so that all ranks fail together instead of one
// rank leaving the others waiting in a collective.

#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/topology.hpp"
#include "support/config.hpp"

namespace pcx::test {

struct MpiFixture {
  MpiFixture() { environment.emplace(); }
  ~MpiFixture() { environment.reset(); }
  std::optional<MpiEnvironment> environment;
};

/// Boost.Test precondition of the cases that need a peer: at one rank Boost.Test reports
/// them skipped, with the reason, instead of passing them with nothing checked.
inline boost::test_tools::assertion_result two_or_more_ranks(boost::unit_test::test_unit_id) {
  int ranks = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  boost::test_tools::assertion_result enough(ranks >= 2);
  enough.message() << "needs two or more ranks; this job has " << ranks;
  return enough;
}

/// Boost.Test precondition of the cases that expect every rank on one node (collective:
/// every rank evaluates it); on several nodes they are reported skipped.
inline boost::test_tools::assertion_result one_node(boost::unit_test::test_unit_id) {
  const std::vector<int> nodes = MpiCommunicator::world().nodes();
  boost::test_tools::assertion_result single(std::ranges::count(nodes, 0) == static_cast<std::ptrdiff_t>(nodes.size()));
  single.message() << "needs every rank on one node; MPI sees more than one";
  return single;
}

/// Communicator settings with a name and a deadline.
inline CommOptions options(std::string name, std::chrono::milliseconds timeout) {
  CommOptions chosen;
  chosen.name = std::move(name);
  chosen.timeout = timeout;
  return chosen;
}

/// True on every rank when @p ok is true on every rank.
inline bool everyone(bool ok) {
  const MpiCommunicator world = MpiCommunicator::world();
  std::int32_t failed = ok ? 0 : 1;
  world.all_reduce(std::span<std::int32_t>(&failed, 1), ReduceOp::max);
  return failed == 0;
}

/// Whether every rank holds the same text: the maximum and minimum of its hash agree.
inline bool same_everywhere(const std::string& text) {
  const MpiCommunicator world = MpiCommunicator::world();
  const auto hash = static_cast<std::int64_t>(std::hash<std::string>{}(text) >> 1);
  std::vector<std::int64_t> extremes = {hash, -hash};
  world.all_reduce(std::span<std::int64_t>(extremes), ReduceOp::max);
  return extremes[0] == -extremes[1];
}

/// Context options for a configuration that simulates several nodes on this one host:
/// its ranks per node are not compared with the nodes MPI sees.
inline ContextOptions simulated_nodes() {
  ContextOptions options;
  options.check_nodes = false;
  return options;
}

/// A configuration for the world communicator's size, without an MPU.
inline ParallelConfig world_config(std::vector<int> eps, ExpertOrder order = {}, std::optional<int> hpz = {},
                                   std::optional<int> per_node = {}) {
  return make_config(0, 1, 1, std::move(eps), order, hpz, per_node);
}

}  // namespace pcx::test

// Set up once per executable, by the file that defines the test module, when its cases
// are spread over several files.
#ifdef BOOST_TEST_MODULE
using PcxMpiFixture = pcx::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(PcxMpiFixture);
#endif
