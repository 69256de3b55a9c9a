#pragma once
// Every group of a context checked by real communication against independent references:
// the SPEC's formulas (spec_reference.hpp) and Megatron's algorithm (megatron_reference.hpp).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "pcx/parallel_context.hpp"
#include "unit/megatron_reference.hpp"
#include "unit/spec_reference.hpp"

namespace pcx::test {

// The members of a group as its own communicator reports them, and collectives over it.
inline bool group_works(const pcx::ProcessGroup& group, const std::vector<int>& expected, int world_rank) {
  const pcx::Communicator& comm = group.communicator();
  std::vector<std::int32_t> members(static_cast<std::size_t>(comm.size()));
  const std::int32_t me = world_rank;
  comm.all_gather(std::span<const std::int32_t>(&me, 1), std::span<std::int32_t>(members));
  bool ok = std::vector<int>(members.begin(), members.end()) == expected && group.ranks() == expected;

  std::int64_t sum = world_rank;
  comm.all_reduce(std::span<std::int64_t>(&sum, 1), pcx::ReduceOp::sum);
  ok = ok && sum == std::accumulate(expected.begin(), expected.end(), std::int64_t{0});

  std::int32_t source = world_rank;
  comm.broadcast(std::span<std::int32_t>(&source, 1), 0);
  ok = ok && source == expected.front();

  // All-to-all: block j of group rank i carries 1000 * i + j.
  const auto n = static_cast<std::size_t>(comm.size());
  std::vector<std::int32_t> send(n);
  std::vector<std::int32_t> recv(n);
  for (std::size_t j = 0; j < n; ++j) send[j] = 1000 * comm.rank() + static_cast<std::int32_t>(j);
  comm.all_to_all(std::span<const std::int32_t>(send), std::span<std::int32_t>(recv));
  for (std::size_t i = 0; i < n; ++i) ok = ok && recv[i] == 1000 * static_cast<std::int32_t>(i) + comm.rank();

  // Reduce-scatter of ones: every block sums to the group size.
  const std::vector<double> ones(n, 1.0);
  double block = 0;
  comm.reduce_scatter(std::span<const double>(ones), std::span<double>(&block, 1), pcx::ReduceOp::sum);
  ok = ok && block == static_cast<double>(n);
  if (!ok) {
    BOOST_ERROR(fmt::format("rank {}: group [{}] expected [{}], communicator saw [{}]", world_rank,
                            fmt::join(group.ranks(), ","), fmt::join(expected, ","), fmt::join(members, ",")));
  }
  return ok;
}

// Checks every group of a context, its MPU's included, against the SPEC's formulas
// (spec_reference.hpp) or, for Megatron's dense kinds, Megatron's algorithm
// (megatron_reference.hpp), which share nothing with the layout engine, on every rank.
inline bool context_works(const pcx::ParallelContext& context) {
  const pcx::Topology& topology = context.topology();
  const pcx::ParallelConfig& config = topology.config();
  const auto reference = pcx::test::Reference::of(config);
  const auto megatron = pcx::test::MegatronReference::of(
      topology.world_size(), topology.tensor_parallel_size(), topology.context_parallel_size(),
      topology.pipeline_parallel_size(), topology.expert_tensor_parallel_size(), config.expert_parallel_sizes,
      std::string(topology.order()), config.distributed_optimizer_instances)
                            .with_context_groups(config.hybrid_context_parallel,
                                                 config.hierarchical_context_parallel_sizes);
  bool ok = true;
  for (pcx::GroupId id : context.group_ids()) {
    const pcx::ProcessGroup& group = context.group(id);
    // Sequence groups are whatever the MPU says (the test that injects them checks them);
    // without them, sequence data parallel is data parallel (DeepSpeed's rule).
    if (id.kind == pcx::GroupKind::sequence_parallel) continue;
    if (id.kind == pcx::GroupKind::sequence_data_parallel) {
      if (&group != &context.data_parallel_group()) continue;
      id.kind = pcx::GroupKind::data_parallel;
    }
    // SPEC.md's formulas hold for the seed's layout; Megatron's algorithm for every kind
    // of its grids (world, hpZ and the node kinds are not on them).
    const bool on_grid = id.kind != pcx::GroupKind::world && id.kind != pcx::GroupKind::zero_param_intra &&
                         id.kind != pcx::GroupKind::all_to_all_local && id.kind != pcx::GroupKind::all_to_all_global;
    const bool spec_formula = (!pcx::is_dense_kind(id.kind) && !pcx::test::MegatronReference::is_cut_kind(id.kind)) ||
                              id.kind == pcx::GroupKind::tensor_parallel ||
                              id.kind == pcx::GroupKind::pipeline_parallel || id.kind == pcx::GroupKind::data_parallel;
    const bool seed_layout = topology.context_parallel_size() == 1 && !config.order &&
                             topology.expert_tensor_parallel_size() == topology.tensor_parallel_size();
    const std::vector<int> expected =
        !on_grid || (seed_layout && spec_formula)
            ? reference.group(id, context.rank(), config.zero_hpz_size, config.ranks_per_node)
            : megatron.group_of(id, context.rank());
    ok = group_works(group, expected, context.rank()) && ok;
  }
  return ok;
}

}  // namespace pcx::test
