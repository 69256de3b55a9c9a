#include "pcx/mpu.hpp"

#include <algorithm>
#include <exception>

#include "pcx/agreement.hpp"

namespace pcx {
namespace {

ParallelConfig megatron_config(int world, int tensor, int pipeline) {
  ParallelConfig config;
  config.world_size = world;
  config.tensor_parallel_size = tensor;
  config.pipeline_parallel_size = pipeline;
  return config;
}

// Ranks that ask for other sizes would make splits that do not match: the ranks agree on
// the sizes first. A tensor size above the world means the world, as the layout clamps
// it, so the clamped sizes are compared.
ParallelConfig agreed_config(const Communicator& world, int tensor, int pipeline) {
  const ParallelConfig config = megatron_config(world.size(), tensor, pipeline);
  std::exception_ptr failure;
  try {
    validate(config);
  } catch (...) {
    failure = std::current_exception();
  }
  const AgreedValue sizes[] = {{"GridMpu tensor parallel size", std::min(tensor, std::max(world.size(), 1))},
                               {"GridMpu pipeline parallel size", pipeline}};
  agree(world, AgreementStage::grid_mpu, sizes, failure);
  return config;
}

CommOptions duplicate_options() {
  CommOptions options;
  options.name = "pcx:grid_mpu";
  return options;
}

}  // namespace

// The ranks agree on the caller's world, where a rank building something else meets the
// agreement and is told apart; the splits then run on a duplicate of it, whose errors are
// returned as exceptions whatever the world's own error handling (MPI_COMM_WORLD aborts
// the job by default). The duplicate lives until the delegated constructor returns.
GridMpu::Agreed GridMpu::agree_then_dup(const Communicator& world, int tensor_parallel_size,
                                        int pipeline_parallel_size) {
  ParallelConfig config = agreed_config(world, tensor_parallel_size, pipeline_parallel_size);
  return {std::move(config), world.dup(duplicate_options())};
}

GridMpu::GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size)
    : GridMpu(agree_then_dup(world, tensor_parallel_size, pipeline_parallel_size)) {}

GridMpu::GridMpu(Agreed&& agreed)
    : topology_(std::move(agreed.config)),
      tensor_(make_group(*agreed.duplicate, topology_.layout({GroupKind::tensor_parallel}))),
      pipeline_(make_group(*agreed.duplicate, topology_.layout({GroupKind::pipeline_parallel}))),
      data_(make_group(*agreed.duplicate, topology_.layout({GroupKind::data_parallel}))) {}

}  // namespace pcx
