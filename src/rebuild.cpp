#include "pcx/rebuild.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <string>
#include <utility>

#include "pcx/agreement.hpp"
#include "pcx/error.hpp"

namespace pcx {

std::vector<int> leaving_ranks(const ParallelContext& context, std::span<const int> excluded, ShrinkPolicy policy) {
  const int world = context.world_size();
  std::vector<int> lost(excluded.begin(), excluded.end());
  std::ranges::sort(lost);
  for (std::size_t i = 0; i < lost.size(); ++i) {
    if (lost[i] < 0 || lost[i] >= world) {
      throw ConfigError(fmt::format("rebuild: excluded rank {} is outside the world of {} ranks", lost[i], world));
    }
    if (i > 0 && lost[i] == lost[i - 1]) throw ConfigError(fmt::format("rebuild: rank {} is excluded twice", lost[i]));
  }
  std::vector<int> leaving;
  if (policy == ShrinkPolicy::drop_replicas) {
    // A replica is one data parallel index: every tensor, context and pipeline rank of it.
    const Topology& topology = context.topology();
    std::vector<int> replicas;
    for (const int rank : lost) replicas.push_back(topology.coordinates(rank).data);
    for (int rank = 0; rank < world; ++rank) {
      if (std::ranges::find(replicas, topology.coordinates(rank).data) != replicas.end()) leaving.push_back(rank);
    }
  } else {
    leaving = std::move(lost);
  }
  if (std::cmp_equal(leaving.size(), world)) {
    throw ConfigError(fmt::format("rebuild: no rank would stay: excluding [{}]{} leaves all {} ranks",
                                  fmt::join(excluded, ","),
                                  policy == ShrinkPolicy::drop_replicas ? " drops every data parallel replica, which"
                                                                        : "",
                                  world));
  }
  return leaving;
}

std::optional<Rebuilt> rebuild(const ParallelContext& failed, const Communicator& world, std::span<const int> excluded,
                               RebuildOptions options) {
  failed.abort();
  const std::vector<int> leaving = leaving_ranks(failed, excluded, options.policy);
  if (std::ranges::binary_search(leaving, world.rank())) return std::nullopt;

  // The survivors' configuration and MPU, decided before anything is created.
  ParallelConfig config;
  if (options.policy == ShrinkPolicy::new_configuration) {
    if (!options.config) throw ConfigError("rebuild: ShrinkPolicy::new_configuration needs RebuildOptions::config");
    config = *options.config;
  } else {
    const Topology& topology = failed.topology();
    config = topology.config();
    config.world_size = 0;
    config.tensor_parallel_size = topology.tensor_parallel_size();
    config.context_parallel_size = topology.context_parallel_size();
    config.pipeline_parallel_size = topology.pipeline_parallel_size();
  }
  const auto* grid = dynamic_cast<const GridMpu*>(failed.mpu());
  if (failed.mpu() != nullptr && grid == nullptr && !options.mpu) {
    throw ConfigError("rebuild: the failed context's MPU is not a GridMpu; give the survivors' in RebuildOptions::mpu");
  }

  CommOptions survivors_options = options.context.communicators;
  if (survivors_options.name.empty()) survivors_options.name = "pcx:survivors";
  std::unique_ptr<Communicator> survivors = world.shrink(leaving, survivors_options);
  // Survivors that left out other ranks could not have made one communicator; those
  // that did, but by another policy, would build other layouts.
  const AgreedValue left_out[] = {
      {"ranks that leave (the excluded ones and, by policy, their replicas)",
       digest_of(fmt::format("{}:{}", static_cast<int>(options.policy), fmt::join(leaving, ","))), /*is_digest=*/true}};
  agree(*survivors, AgreementStage::rebuild, left_out);

  std::shared_ptr<const Mpu> mpu = std::move(options.mpu);
  if (!mpu && grid != nullptr) {
    mpu = std::make_shared<const GridMpu>(*survivors, config);
  }
  ParallelContext context(*survivors, config, mpu, std::move(options.context));
  return Rebuilt{std::move(survivors), std::move(mpu), std::move(context)};
}

}  // namespace pcx
