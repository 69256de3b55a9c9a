// Devices on a node: a device that is not there, and more ranks on a node than devices,
// are a ConfigError on every rank.
#include <fmt/format.h>

#include <cstdint>
#include <exception>
#include <span>
#include <string_view>

#include "nccl_test_support.hpp"

namespace nccltest {

BOOST_AUTO_TEST_CASE(a_device_that_is_not_there_is_a_config_error_on_every_rank) {
  // The last rank asks for a device it does not have; every rank must throw ConfigError,
  // agreed before the unique id is broadcast.
  Checks checks;
  const MpiCommunicator mpi = MpiCommunicator::world();
  pcx::NcclWorldOptions options;
  options.communicator = non_blocking();
  if (mpi.rank() == mpi.size() - 1) options.device = device_count() + 3;
  try {
    (void)NcclCommunicator::create_world(mpi, options);
    checks.expect(false, "create_world succeeded");
  } catch (const pcx::ConfigError& e) {
    // The failing rank's own error, with its rank, on every rank.
    const std::string expected = fmt::format("rank {}: CUDA device {} is outside the {} visible devices",
                                             mpi.size() - 1, device_count() + 3, device_count());
    checks.expect(e.what() == expected, fmt::format("'{}' is not '{}'", e.what(), expected));
  } catch (const std::exception& e) {
    checks.expect(false, fmt::format("wrong exception: {}", e.what()));
  }
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(more_ranks_on_a_node_than_devices_is_a_config_error_on_every_rank) {
  // Runs only where some node has more ranks than devices (on the emulator:
  // PCX_EMU_DEVICES below the rank count); elsewhere there is nothing to see.
  std::int32_t crowded = node_local_rank() >= device_count() ? 1 : 0;
  MpiCommunicator::world().all_reduce(std::span<std::int32_t>(&crowded, 1), ReduceOp::max);
  if (crowded == 0) {
    BOOST_TEST_MESSAGE("every rank has a device of its own: nothing to check");
    return;
  }
  Checks checks;
  try {
    (void)nccl_world(non_blocking());
    checks.expect(false, "create_world succeeded");
  } catch (const pcx::ConfigError& e) {
    BOOST_TEST_MESSAGE(e.what());
  } catch (const std::exception& e) {
    checks.expect(false, fmt::format("wrong exception: {}", e.what()));
  }
  BOOST_TEST(everyone(checks.ok()));
}

}  // namespace nccltest
