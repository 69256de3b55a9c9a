#pragma once
// Shared by the multi-rank tests: MPI for the whole test module, and a way to turn
// one rank's verdict into everyone's, so that all ranks fail together instead of one
// rank leaving the others waiting in a collective.

#include <boost/test/unit_test.hpp>
#include <optional>

#include "pcx/mpi/mpi_communicator.hpp"

namespace pcx::test {

struct MpiFixture {
  MpiFixture() { environment.emplace(); }
  ~MpiFixture() { environment.reset(); }
  std::optional<MpiEnvironment> environment;
};

/// True on every rank when @p ok is true on every rank.
inline bool everyone(bool ok) {
  const MpiCommunicator world = MpiCommunicator::world();
  std::int32_t failed = ok ? 0 : 1;
  world.all_reduce(std::span<std::int32_t>(&failed, 1), ReduceOp::max);
  return failed == 0;
}

}  // namespace pcx::test

using PcxMpiFixture = pcx::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(PcxMpiFixture);
