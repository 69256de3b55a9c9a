#pragma once
/// @file rebuild.hpp
/// @brief Going on without lost ranks: a new context on the survivors of a failure.

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "pcx/communicator.hpp"
#include "pcx/mpu.hpp"
#include "pcx/parallel_context.hpp"

namespace pcx {

/// Which ranks leave with the excluded ones, and the survivors' configuration.
enum class ShrinkPolicy {
  /// Every data parallel replica (the tensor, context and pipeline ranks of one data
  /// parallel index) that holds an excluded rank leaves: the shapes of tensor, context,
  /// pipeline and expert parallelism stay, the data parallel size shrinks.
  drop_replicas,
  /// Only the excluded ranks leave; RebuildOptions::config is the survivors' layout.
  new_configuration,
};

/// Settings of rebuild().
struct RebuildOptions {
  /// Which ranks leave.
  ShrinkPolicy policy = ShrinkPolicy::drop_replicas;
  /// new_configuration: the survivors' configuration (world_size 0: their number).
  std::optional<ParallelConfig> config;
  /// The survivors' MPU where the failed context's was not a GridMpu (a GridMpu is rebuilt
  /// with its sizes and order on the survivors).
  std::shared_ptr<const Mpu> mpu;
  /// Settings of the new context; the survivors' world gets its `communicators`.
  ContextOptions context;
};

/// The survivors' world, MPU and context. Destroyed in reverse order: the context, the
/// MPU, then the world.
struct Rebuilt {
  std::unique_ptr<Communicator> world;  ///< The survivors, in their old order.
  std::shared_ptr<const Mpu> mpu;       ///< The survivors' MPU, or null.
  ParallelContext context;              ///< Built over `world` with `mpu`.
};

/// The ranks of @p layout's world that leave when @p excluded do, ascending: @p excluded
/// itself, or, with ShrinkPolicy::drop_replicas, every rank of a data parallel replica
/// that holds one. Not collective.
/// @throws ConfigError if an excluded rank is outside the world or listed twice, or every
///         rank would leave.
[[nodiscard]] std::vector<int> leaving_ranks(const Topology& layout, std::span<const int> excluded,
                                             ShrinkPolicy policy);

/// Aborts @p failed (every communicator it holds, as NCCL requires once a rank is lost),
/// then, on the ranks that stay (leaving_ranks()), shrinks @p world to them
/// (Communicator::shrink: `MPI_Comm_create_group` on MPI, `ncclCommShrink` on NCCL), checks
/// with one agreement on the new world that every survivor left out the same ranks by the
/// same policy (ConfigMismatch otherwise), and builds the new context there: with
/// drop_replicas, @p failed's configuration on fewer data parallel replicas (expert
/// sizes or a ZeRO hpZ size that no longer divide it are a ConfigError naming them).
/// Collective over the survivors only; the leaving ranks return at once.
/// @param failed the context to give up, built over @p world
/// @param world the communicator @p failed was built over (not aborted; on NCCL the one
///        create_world() made)
/// @param excluded the lost ranks, the same on every survivor
/// @param options the policy, and the survivors' configuration, MPU and context settings
/// @return the survivors' world and context; std::nullopt on a leaving rank
/// @throws ConfigError for bad @p excluded or a configuration the survivors cannot take;
///         ConfigMismatch when survivors disagree; CommError or Timeout from the backend.
[[nodiscard]] std::optional<Rebuilt> rebuild(const ParallelContext& failed, const Communicator& world,
                                             std::span<const int> excluded, RebuildOptions options = {});

/// rebuild() for a failure before a context existed (during its construction, which then
/// released what it had built): the survivors' context from the @p layout the failed one
/// was being built with, and, where the layout has tensor, context or pipeline
/// parallelism and RebuildOptions::mpu is null, a GridMpu of the layout's sizes and order.
/// @p world must be usable: a communicator whose operation timed out is aborted, so
/// shrink another handle of the same group (MpiCommunicator::world() again), or on NCCL,
/// the bootstrap, and create a new NCCL world on the survivors (docs/recovery.md).
/// @param layout the layout the failed context was being built with
/// @param world as for rebuild() above
/// @param excluded the lost ranks, the same on every survivor
/// @param options as for rebuild() above
/// @throws as rebuild().
[[nodiscard]] std::optional<Rebuilt> rebuild(const Topology& layout, const Communicator& world,
                                             std::span<const int> excluded, RebuildOptions options = {});

}  // namespace pcx
