// Where no CUDA device is visible, building an NCCL world fails with a clear
// CommError on every rank, and no rank hangs; options NCCL cannot take are refused
// with a ConfigError first. Skipped (exit 77) where a device exists.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/nccl/nccl_communicator.hpp"

int main(int argc, char* argv[]) {
  const pcx::MpiEnvironment mpi(&argc, &argv);
  const pcx::MpiCommunicator world = pcx::MpiCommunicator::world();
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    if (world.rank() == 0) std::printf("skipped: this machine has %d CUDA devices\n", devices);
    return 77;
  }
  // Options NCCL cannot take are refused before any communication, device or not.
  const auto refused = [](const std::function<void()>& call, std::string_view text) {
    try {
      call();
    } catch (const pcx::ConfigError& e) {
      return std::string_view(e.what()).find(text) != std::string_view::npos;
    } catch (const std::exception&) {
    }
    return false;
  };
  pcx::NcclWorldOptions negative;
  negative.communicator.timeout = std::chrono::milliseconds(-1);
  pcx::NcclWorldOptions inverted;
  inverted.communicator.min_ctas = 16;
  inverted.communicator.max_ctas = 8;
  pcx::NcclWorldOptions zero;
  zero.communicator.cga_cluster_size = 0;
  const bool options_refused =
      refused([&] { (void)pcx::NcclCommunicator::create_world(world, negative); }, "timeout -1 ms is negative") &&
      refused([&] { (void)pcx::NcclCommunicator::create_world(world, inverted); }, "minCTAs 16 is above maxCTAs 8") &&
      refused([&] { (void)pcx::NcclCommunicator::create_world(world, zero); }, "cgaClusterSize 0 must be at least 1") &&
      refused([] { (void)pcx::NcclCommunicator::init_rank(ncclUniqueId{}, 2, 2, 0); }, "NCCL rank 2 of 2");
  std::printf("rank %d: bad options refused: %s\n", world.rank(), options_refused ? "yes" : "no");

  std::string outcome = "no exception";
  bool right = false;
  try {
    const pcx::NcclCommunicator nccl = pcx::NcclCommunicator::create_world(world);
  } catch (const pcx::CommError& e) {
    outcome = e.what();
    right = outcome.find("CUDA") != std::string::npos || outcome.find("device") != std::string::npos;
  } catch (const std::exception& e) {
    outcome = fmt::format("wrong exception type: {}", e.what());
  }
  std::printf("rank %d: %s\n", world.rank(), outcome.c_str());
  std::int32_t failed = right && options_refused ? 0 : 1;
  world.all_reduce(std::span<std::int32_t>(&failed, 1), pcx::ReduceOp::max);
  return failed == 0 ? 0 : 1;
}
