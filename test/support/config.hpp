#pragma once
// The one helper the tests use to write a configuration in a line.

#include <optional>
#include <vector>

#include "pcx/topology.hpp"

namespace pcx::test {

/// A configuration of @p world ranks (0: the world communicator's size, when a context
/// is built).
inline ParallelConfig make_config(int world, int tp = 1, int pp = 1, std::vector<int> eps = {},
                                  ExpertOrder order = ExpertOrder::expert_first, std::optional<int> hpz = {},
                                  std::optional<int> per_node = {}) {
  ParallelConfig config;
  config.world_size = world;
  config.tensor_parallel_size = tp;
  config.pipeline_parallel_size = pp;
  config.expert_parallel_sizes = std::move(eps);
  config.expert_order = order;
  config.zero_hpz_size = hpz;
  config.ranks_per_node = per_node;
  return config;
}

}  // namespace pcx::test
