#pragma once
// What the samples that run over NCCL check before they build an NCCL world.

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdint>
#include <span>

#include "pcx/mpi/mpi_communicator.hpp"

namespace pcx::samples {

/// Exit status of a sample that cannot run here (CTest's SKIP_RETURN_CODE).
inline constexpr int kSkipped = 77;

/// Whether every rank sees a CUDA device; agreed over @p control, so every rank takes the
/// same branch. Where some rank has none, rank 0 says so, naming @p program.
inline bool every_rank_has_a_device(const MpiCommunicator& control, const char* program) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    (void)cudaGetLastError();
    devices = 0;
  }
  std::int32_t without[] = {devices > 0 ? 0 : 1};
  control.all_reduce(std::span<std::int32_t>(without), ReduceOp::sum);
  if (without[0] != 0 && control.rank() == 0) {
    fmt::print(stderr, "{}: skipped: --backend nccl needs a CUDA device on every rank; {} of {} ranks have none\n",
               program, without[0], control.size());
  }
  return without[0] == 0;
}

}  // namespace pcx::samples
