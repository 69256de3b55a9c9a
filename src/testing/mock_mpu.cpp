#include "pcx/testing/mock_mpu.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "pcx/error.hpp"

namespace pcx::testing {
namespace {

ProcessGroup layout_group(const std::shared_ptr<FakeWorld>& world, const Topology& topology, GroupKind kind, int rank) {
  const GroupLayout& layout = topology.layout({kind});
  return ProcessGroup(
      layout, layout.colour(rank),
      std::make_unique<FakeCommunicator>(
          world, FakeMember{.size = layout.group_size(), .rank = layout.group_rank(rank), .caller = rank}));
}

}  // namespace

const ProcessGroup& MockMpu::data_parallel_group() const {
  if (!data_) throw ConfigError("MockMpu: no data parallel group was set (call set_data_parallel_group)");
  return *data_;
}

ProcessGroup fake_process_group(const std::shared_ptr<FakeWorld>& world, std::vector<int> ranks, int caller) {
  const auto position = std::ranges::find(ranks, caller);
  if (position == ranks.end()) {
    throw ConfigError(fmt::format("fake group {}: caller {} must be one of its members", ranks, caller));
  }
  const FakeMember member{
      .size = static_cast<int>(ranks.size()), .rank = static_cast<int>(position - ranks.begin()), .caller = caller};
  return ProcessGroup(std::move(ranks), std::make_unique<FakeCommunicator>(world, member));
}

std::shared_ptr<MockMpu> mock_megatron_mpu(const std::shared_ptr<FakeWorld>& world, int rank, int tensor_parallel_size,
                                           int pipeline_parallel_size) {
  if (!world) throw ConfigError("mock_megatron_mpu needs a fake world");
  if (rank < 0 || rank >= world->size()) {
    throw ConfigError(fmt::format("mock_megatron_mpu: rank {} is outside the fake world [0, {})", rank, world->size()));
  }
  ParallelConfig config;
  config.world_size = world->size();
  config.tensor_parallel_size = tensor_parallel_size;
  config.pipeline_parallel_size = pipeline_parallel_size;
  const Topology topology(config);
  auto mpu = std::make_shared<MockMpu>();
  mpu->set_tensor_parallel_size(topology.tensor_parallel_size())
      .set_pipeline_parallel_size(topology.pipeline_parallel_size())
      .set_model_parallel_size(topology.tensor_parallel_size() * topology.pipeline_parallel_size())
      .set_tensor_parallel_group(layout_group(world, topology, GroupKind::tensor_parallel, rank))
      .set_pipeline_parallel_group(layout_group(world, topology, GroupKind::pipeline_parallel, rank))
      .set_data_parallel_group(layout_group(world, topology, GroupKind::data_parallel, rank));
  return mpu;
}

}  // namespace pcx::testing
