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

std::vector<std::int64_t> dispatch_tokens(const pcx::ParallelContext& context, int num_experts, int ep,
                                          std::span<const std::int64_t> tokens, std::span<const int> experts) {
  if (tokens.size() != experts.size()) {
    throw std::invalid_argument(fmt::format("{} tokens but {} experts chosen", tokens.size(), experts.size()));
  }
  const ExpertShard shard = shard_experts(context, num_experts, ep);
  const pcx::Communicator& group = context.expert_parallel_group(ep).communicator();
  std::vector<std::vector<std::int64_t>> outgoing(static_cast<std::size_t>(group.size()));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (experts[i] < 0 || experts[i] >= num_experts) {
      throw std::invalid_argument(fmt::format("expert {} is outside [0, {})", experts[i], num_experts));
    }
    outgoing[static_cast<std::size_t>(experts[i] / shard.local_experts)].push_back(tokens[i]);
  }
  std::vector<std::size_t> send_counts;
  std::vector<std::int64_t> send;
  for (const auto& block : outgoing) {
    send_counts.push_back(block.size());
    send.insert(send.end(), block.begin(), block.end());
  }
  std::vector<std::size_t> recv_counts(send_counts.size());
  group.all_to_all(send_counts, recv_counts);
  std::vector<std::int64_t> received(std::reduce(recv_counts.begin(), recv_counts.end()));
  group.all_to_all_v(send, send_counts, received, recv_counts);
  return received;
}

void average_expert_gradients(const pcx::ParallelContext& context, int ep, std::span<float> gradients) {
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(ep);
  replicas.communicator().all_reduce(gradients, pcx::ReduceOp::sum);
  const auto count = static_cast<float>(replicas.size());
  for (float& gradient : gradients) gradient /= count;
}

}  // namespace moe_model
