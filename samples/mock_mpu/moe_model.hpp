#pragma once
// "Model code" of the mock_mpu sample: what a mixture-of-experts layer of a user's model
// asks of its process groups. It takes the groups as a `const pcx::ParallelContext&`
// (dependency injection, no globals), so a unit test can hand it the context of any rank
// of any world, built over pcx::testing::FakeCommunicator with a pcx::testing::MockMpu,
// or every rank of a world at once over pcx::testing::ThreadWorld, without launching a
// process. See moe_model_test.cpp.

#include <cstdint>
#include <span>
#include <vector>

#include "pcx/parallel_context.hpp"

namespace moe_model {

/// The experts of one MoE layer that this rank hosts, and where their replicas are.
struct ExpertShard {
  int expert_parallel_size = 1;  ///< Ranks the layer's experts are spread over.
  int expert_parallel_rank = 0;  ///< This rank's place among them (its expert group rank).
  int first_expert = 0;          ///< This rank hosts experts [first_expert, first_expert + local_experts).
  int local_experts = 0;         ///< Number of experts hosted here.
  int replicas = 1;              ///< Ranks holding a copy of the same experts (expert data parallel size).
  int broadcast_source = 0;      ///< Global rank that broadcasts these experts' parameters to the replicas.

  /// The global ids of the hosted experts, ascending.
  [[nodiscard]] std::vector<int> expert_ids() const;
};

/// The experts this rank hosts in a layer of @p num_experts experts sharded over expert
/// parallel size @p ep: member i of the expert parallel group hosts the i-th block of
/// num_experts / ep consecutive experts.
/// @throws std::invalid_argument if @p num_experts is not a positive multiple of @p ep;
///         pcx::GroupNotFound if the context has no expert groups of size @p ep.
[[nodiscard]] ExpertShard shard_experts(const pcx::ParallelContext& context, int num_experts, int ep);

/// The global rank that hosts expert @p expert for tokens routed from this rank: a member
/// of this rank's expert parallel group.
/// @throws std::invalid_argument if @p expert is outside [0, num_experts), or as shard_experts.
[[nodiscard]] int expert_owner(const pcx::ParallelContext& context, int num_experts, int ep, int expert);

/// Sends each token to the member of this rank's expert parallel group that hosts its
/// expert (@p experts[i] for @p tokens[i]) and returns the tokens this rank's experts
/// receive, in the order of their senders in the group: one all-to-all of the counts,
/// one all-to-all-v of the tokens.
/// @throws std::invalid_argument if the spans differ in length or an expert is outside
///         [0, num_experts); otherwise as shard_experts, and pcx::CommError.
[[nodiscard]] std::vector<std::int64_t> dispatch_tokens(const pcx::ParallelContext& context, int num_experts, int ep,
                                                        std::span<const std::int64_t> tokens,
                                                        std::span<const int> experts);

/// Averages the gradients of this rank's experts over their replicas, in place: one
/// all-reduce (sum) over the expert data parallel group of size @p ep, then a division by
/// the number of replicas, as an optimizer step does before it updates the experts.
/// @throws pcx::GroupNotFound as shard_experts; pcx::CommError if the all-reduce fails.
void average_expert_gradients(const pcx::ParallelContext& context, int ep, std::span<float> gradients);

}  // namespace moe_model
