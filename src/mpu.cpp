#include "pcx/mpu.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <string>

#include "pcx/agreement.hpp"
#include "pcx/error.hpp"

namespace pcx {

const ProcessGroup* Mpu::dense_group(GroupKind kind) const {
  switch (kind) {
    case GroupKind::tensor_parallel: return tensor_parallel_group();
    case GroupKind::pipeline_parallel: return pipeline_parallel_group();
    case GroupKind::data_parallel: return &data_parallel_group();
    default: return nullptr;
  }
}

namespace {

// The fields of @p config that make the dense grid.
ParallelConfig dense_config(const Communicator& world, const ParallelConfig& config) {
  ParallelConfig dense;
  dense.world_size = config.world_size == 0 ? world.size() : config.world_size;
  dense.tensor_parallel_size = config.tensor_parallel_size;
  dense.pipeline_parallel_size = config.pipeline_parallel_size;
  dense.context_parallel_size = config.context_parallel_size;
  dense.order = std::string(order_of(config));
  return dense;
}

// Ranks that ask for other sizes would make splits that do not match: the ranks agree on
// the sizes first. A tensor size above the world means the world, as the layout clamps
// it, so the clamped sizes are compared.
ParallelConfig agreed_config(const Communicator& world, const ParallelConfig& requested) {
  const ParallelConfig config = dense_config(world, requested);
  std::exception_ptr failure;
  try {
    ParallelConfig whole = requested;
    if (whole.world_size == 0) whole.world_size = world.size();
    require_whole_world(whole, "GridMpu");
    if (config.world_size != world.size()) {
      throw ConfigError(
          fmt::format("GridMpu: the configuration's world size {} is not the world communicator's size {}",
                      config.world_size, world.size()));
    }
    validate(config);
  } catch (...) {
    failure = std::current_exception();
  }
  const AgreedValue sizes[] = {
      {"GridMpu tensor parallel size", std::min(config.tensor_parallel_size, std::max(world.size(), 1))},
      {"GridMpu pipeline parallel size", config.pipeline_parallel_size},
      {"GridMpu context parallel size", config.context_parallel_size},
      {"GridMpu order strings", digest_of(*config.order), /*digest=*/true}};
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
GridMpu::Agreed GridMpu::agree_then_dup(const Communicator& world, const ParallelConfig& config) {
  ParallelConfig agreed = agreed_config(world, config);
  return {std::move(agreed), world.dup(duplicate_options())};
}

GridMpu::GridMpu(const Communicator& world, const ParallelConfig& config) : GridMpu(agree_then_dup(world, config)) {}

GridMpu::GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size)
    : GridMpu(world, [&] {
        ParallelConfig config;
        config.tensor_parallel_size = tensor_parallel_size;
        config.pipeline_parallel_size = pipeline_parallel_size;
        return config;
      }()) {}

// Kinds with the same groups (tensor-context and tensor parallel when cp = 1, ...) share
// one communicator, decided from the layouts alone, so alike on every rank.
GridMpu::GridMpu(Agreed&& agreed) : topology_(std::move(agreed.config)), backend_(agreed.duplicate->backend()) {
  for (const GroupView& view : topology_.all_views()) {
    if (!is_dense_kind(view.id.kind)) continue;
    const auto same = std::ranges::find_if(groups_, [&](const Built& built) { return *built.layout == view.layout; });
    std::optional<ProcessGroup> group;
    if (same == groups_.end()) {
      CommOptions options;
      options.name = "pcx:" + view.id.name();
      group = make_group(*agreed.duplicate, view.layout, options);
    } else if (same->group) {
      group = same->group->shared_as(view.layout, view.layout.colour(agreed.duplicate->rank()));
    }
    groups_.push_back({view.id.kind, &view.layout, std::move(group)});
  }
}

const ProcessGroup* GridMpu::dense_group(GroupKind kind) const {
  const auto it = std::ranges::find(groups_, kind, &Built::kind);
  return it == groups_.end() || !it->group ? nullptr : &*it->group;
}

}  // namespace pcx
