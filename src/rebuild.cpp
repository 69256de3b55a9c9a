#include "pcx/rebuild.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <string>
#include <utility>

#include "pcx/agreement.hpp"
#include "pcx/error.hpp"

namespace pcx {

std::vector<int> leaving_ranks(const Topology& layout, std::span<const int> excluded, ShrinkPolicy policy) {
  const int world = layout.world_size();
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
    std::vector<int> replicas;
    for (const int rank : lost) replicas.push_back(layout.coordinates(rank).data);
    for (int rank = 0; rank < world; ++rank) {
      if (std::ranges::find(replicas, layout.coordinates(rank).data) != replicas.end()) leaving.push_back(rank);
    }
  } else {
    leaving = std::move(lost);
  }
  if (std::cmp_equal(leaving.size(), world)) {
    throw ConfigError(
        fmt::format("rebuild: no rank would stay: excluding [{}]{} leaves all {} ranks", fmt::join(excluded, ","),
                    policy == ShrinkPolicy::drop_replicas ? " drops every data parallel replica, which" : "", world));
  }
  return leaving;
}

namespace {

// Both rebuild()s once the MPU is settled: `grid` says whether to make a GridMpu.
std::optional<Rebuilt> rebuild_from(const Topology& layout, bool grid, const Communicator& world,
                                    std::span<const int> excluded, RebuildOptions options) {
  const std::vector<int> leaving = leaving_ranks(layout, excluded, options.policy);
  if (std::ranges::binary_search(leaving, world.rank())) return std::nullopt;

  // The survivors' configuration, decided before anything is created.
  ParallelConfig config;
  if (options.policy == ShrinkPolicy::new_configuration) {
    if (!options.config) throw ConfigError("rebuild: ShrinkPolicy::new_configuration needs RebuildOptions::config");
    config = *options.config;
  } else {
    config = layout.config();
    config.world_size = 0;
    config.tensor_parallel_size = layout.tensor_parallel_size();
    config.context_parallel_size = layout.context_parallel_size();
    config.pipeline_parallel_size = layout.pipeline_parallel_size();
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
  if (!mpu && grid) mpu = std::make_shared<const GridMpu>(*survivors, config);
  ParallelContext context(*survivors, config, mpu, std::move(options.context));
  return Rebuilt{std::move(survivors), std::move(mpu), std::move(context)};
}

}  // namespace

std::optional<Rebuilt> rebuild(const ParallelContext& failed, const Communicator& world, std::span<const int> excluded,
                               RebuildOptions options) {
  failed.abort();
  const bool grid = dynamic_cast<const GridMpu*>(failed.mpu()) != nullptr;
  if (failed.mpu() != nullptr && !grid && !options.mpu) {
    throw ConfigError("rebuild: the failed context's MPU is not a GridMpu; give the survivors' in RebuildOptions::mpu");
  }
  return rebuild_from(failed.topology(), grid, world, excluded, std::move(options));
}

std::optional<Rebuilt> rebuild(const Topology& layout, const Communicator& world, std::span<const int> excluded,
                               RebuildOptions options) {
  const bool grid =
      layout.tensor_parallel_size() * layout.context_parallel_size() * layout.pipeline_parallel_size() > 1;
  return rebuild_from(layout, grid, world, excluded, std::move(options));
}

}  // namespace pcx
