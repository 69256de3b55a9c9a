#include "pcx/mpu.hpp"

namespace pcx {
namespace {

ParallelConfig megatron_config(int world, int tensor, int pipeline) {
  ParallelConfig config;
  config.world_size = world;
  config.tensor_parallel_size = tensor;
  config.pipeline_parallel_size = pipeline;
  return config;
}

}  // namespace

GridMpu::GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size)
    : topology_(megatron_config(world.size(), tensor_parallel_size, pipeline_parallel_size)),
      tensor_(make_group(world, topology_.layout({GroupKind::tensor_parallel}))),
      pipeline_(make_group(world, topology_.layout({GroupKind::pipeline_parallel}))),
      data_(make_group(world, topology_.layout({GroupKind::data_parallel}))) {}

}  // namespace pcx
