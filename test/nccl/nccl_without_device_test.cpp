// Where no CUDA device is visible, building an NCCL world fails with a clear
// CommError on every rank, and no rank hangs. Skipped (exit 77) where a device exists.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "pcx/error.hpp"
#include "pcx/nccl/nccl_communicator.hpp"

int main(int argc, char* argv[]) {
  const pcx::MpiEnvironment mpi(&argc, &argv);
  const pcx::MpiCommunicator world = pcx::MpiCommunicator::world();
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    if (world.rank() == 0) std::printf("skipped: this machine has %d CUDA devices\n", devices);
    return 77;
  }
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
  std::int32_t failed = right ? 0 : 1;
  world.all_reduce(std::span<std::int32_t>(&failed, 1), pcx::ReduceOp::max);
  return failed == 0 ? 0 : 1;
}
