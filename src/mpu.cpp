#include "pcx/mpu.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pcx/error.hpp"

namespace pcx {
namespace {

ParallelConfig megatron_config(int world, int tensor, int pipeline) {
  ParallelConfig config;
  config.world_size = world;
  config.tensor_parallel_size = tensor;
  config.pipeline_parallel_size = pipeline;
  return config;
}

// Ranks that ask for other sizes would make splits that do not match: compare the sizes
// over the world first (the maximum of -v is minus the minimum of v). A tensor size above
// the world means the world, as the layout clamps it, so the clamped sizes are compared.
ParallelConfig agreed_config(const Communicator& world, int tensor, int pipeline) {
  const std::int64_t clamped = std::min(tensor, std::max(world.size(), 1));
  std::vector<std::int64_t> extremes = {clamped, pipeline, -clamped, -std::int64_t{pipeline}};
  world.all_reduce(std::span<std::int64_t>(extremes), ReduceOp::max);
  if (extremes[0] != -extremes[2] || extremes[1] != -extremes[3]) {
    throw ConfigMismatch(
        fmt::format("ranks disagree on the GridMpu sizes: tensor parallel size ranges from {} to {}, pipeline parallel "
                    "size from {} to {}",
                    -extremes[2], extremes[0], -extremes[3], extremes[1]));
  }
  return megatron_config(world.size(), tensor, pipeline);
}

CommOptions duplicate_options() {
  CommOptions options;
  options.name = "pcx:grid_mpu";
  return options;
}

}  // namespace

// The agreement and the splits run on a duplicate of the caller's world, whose errors are
// returned as exceptions whatever the world's own error handling (MPI_COMM_WORLD aborts
// the job by default); the duplicate lives until the delegated constructor returns.
GridMpu::GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size)
    : GridMpu(*world.dup(duplicate_options()), tensor_parallel_size, pipeline_parallel_size, Duplicate{}) {}

GridMpu::GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size, Duplicate)
    : topology_(agreed_config(world, tensor_parallel_size, pipeline_parallel_size)),
      tensor_(make_group(world, topology_.layout({GroupKind::tensor_parallel}))),
      pipeline_(make_group(world, topology_.layout({GroupKind::pipeline_parallel}))),
      data_(make_group(world, topology_.layout({GroupKind::data_parallel}))) {}

}  // namespace pcx
