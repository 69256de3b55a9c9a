#include "moe_model.hpp"

#include <fmt/format.h>

#include <numeric>
#include <stdexcept>

namespace moe_model {

std::vector<int> ExpertShard::expert_ids() const {
  std::vector<int> ids(static_cast<std::size_t>(local_experts));
  std::iota(ids.begin(), ids.end(), first_expert);
  return ids;
}

ExpertShard shard_experts(const pcx::ParallelContext& context, int num_experts, int ep) {
  if (ep < 1 || num_experts < 1 || num_experts % ep != 0) {
    throw std::invalid_argument(
        fmt::format("{} experts cannot be spread evenly over expert parallel size {}", num_experts, ep));
  }
  const pcx::ProcessGroup& experts = context.expert_parallel_group(ep);
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(ep);
  ExpertShard shard;
  shard.expert_parallel_size = experts.size();
  shard.expert_parallel_rank = experts.rank();
  shard.local_experts = num_experts / ep;
  shard.first_expert = shard.expert_parallel_rank * shard.local_experts;
  shard.replicas = replicas.size();
  shard.broadcast_source = context.expert_broadcast_source_rank(ep);
  return shard;
}

int expert_owner(const pcx::ParallelContext& context, int num_experts, int ep, int expert) {
  const ExpertShard shard = shard_experts(context, num_experts, ep);
  if (expert < 0 || expert >= num_experts) {
    throw std::invalid_argument(fmt::format("expert {} is outside [0, {})", expert, num_experts));
  }
  return context.expert_parallel_group(ep).global_rank(expert / shard.local_experts);
}

void average_expert_gradients(const pcx::ParallelContext& context, int ep, std::span<float> gradients) {
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(ep);
  replicas.communicator().all_reduce(gradients, pcx::ReduceOp::sum);
  const auto count = static_cast<float>(replicas.size());
  for (float& gradient : gradients) gradient /= count;
}

}  // namespace moe_model
