// What one ncclCommSplit costs, in time and device memory, with and without
// splitShare, and what a whole ParallelContext over NCCL costs. Prints a table on
// rank 0. Exits 77 where no CUDA device is visible.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#include "pcx/parallel_context.hpp"

namespace {

using Clock = std::chrono::steady_clock;

std::size_t used_device_memory() {
  std::size_t free = 0;
  std::size_t total = 0;
  pcx::check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return total - free;
}

struct Cost {
  double milliseconds;
  double mebibytes;
};

// Median time and the device memory the children hold, over `repeats` splits kept alive.
template <class Make>
Cost measure(const pcx::MpiCommunicator& mpi, int repeats, Make&& make) {
  std::vector<double> times;
  std::vector<decltype(make())> alive;
  mpi.barrier();
  const std::size_t before = used_device_memory();
  for (int i = 0; i < repeats; ++i) {
    mpi.barrier();
    const auto start = Clock::now();
    alive.push_back(make());
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  const std::size_t after = used_device_memory();
  std::ranges::sort(times);
  return {times[times.size() / 2], static_cast<double>(after - before) / repeats / (1024.0 * 1024.0)};
}

}  // namespace

int main(int argc, char* argv[]) {
  const pcx::MpiEnvironment environment(&argc, &argv);
  const pcx::MpiCommunicator mpi = pcx::MpiCommunicator::world();
  int devices = 0;
  std::int32_t missing = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0 ? 0 : 1;
  mpi.all_reduce(std::span<std::int32_t>(&missing, 1), pcx::ReduceOp::max);
  if (missing != 0) {
    if (mpi.rank() == 0) std::printf("skipped: no usable CUDA device\n");
    return 77;
  }
  try {
    const pcx::NcclCommunicator world = pcx::NcclCommunicator::create_world(mpi);
    constexpr int kRepeats = 5;
    const auto split_with = [&](bool share) {
      pcx::CommOptions options;
      options.share_resources = share;
      return measure(mpi, kRepeats, [&] { return world.split_checked(0, world.rank(), world.size(), options); });
    };
    const Cost plain = split_with(false);
    const Cost shared = split_with(true);
    pcx::ParallelConfig config;
    config.world_size = world.size();
    config.expert_parallel_sizes = {world.size()};
    config.zero_hpz_size = world.size();
    const Cost context = measure(mpi, 3, [&] { return std::make_unique<pcx::ParallelContext>(world, config); });
    if (mpi.rank() == 0) {
      // On the host emulator device memory is its model (PCX_EMU_COMM_MEMORY per
      // communicator), not a measurement, and times are the emulator's.
      const bool emulated = dlsym(RTLD_DEFAULT, "pcxemu_live_communicators") != nullptr;
      std::printf("NCCL %d.%d.%d, %d rank(s), device %d%s\n", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, world.size(),
                  world.device(), emulated ? " (host emulator: device memory is its model, times are not GPU times)" : "");
      std::printf("%-44s %12s %16s\n", "what", "median ms", "device MiB each");
      std::printf("%-44s %12.2f %16.1f\n", "ncclCommSplit, splitShare off", plain.milliseconds, plain.mebibytes);
      std::printf("%-44s %12.2f %16.1f\n", "ncclCommSplit, splitShare on", shared.milliseconds, shared.mebibytes);
      std::printf("%-44s %12.2f %16.1f\n", "ParallelContext (world clone, ep, hpZ)", context.milliseconds,
                  context.mebibytes);
    }
  } catch (const pcx::Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", mpi.rank(), e.what());
    return 1;
  }
  return 0;
}
