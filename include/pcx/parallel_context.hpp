#pragma once
/// @file parallel_context.hpp
/// @brief ParallelContext: every process group of large-model training, with no globals.

#include <spdlog/logger.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <span>
#include <utility>
#include <vector>

#include "pcx/communicator.hpp"
#include "pcx/mpu.hpp"
#include "pcx/process_group.hpp"
#include "pcx/topology.hpp"

namespace pcx {

namespace detail {
class Watchdog;
}

/// Settings of a ParallelContext that do not change its groups.
struct ContextOptions {
  /// Where group creation is logged: debug for each group, info for one summary on
  /// rank 0, warn for clamped sizes. Null: no logging. Never taken from spdlog's registry.
  std::shared_ptr<spdlog::logger> logger;
  /// Settings of every communicator the context creates (the world clone included).
  /// An empty name becomes "pcx:" and the kind's name, e.g. "pcx:expert_parallel/4".
  CommOptions communicators;
  /// Settings for the communicators of one kind, replacing `communicators` for it.
  std::map<GroupKind, CommOptions> per_kind;
  /// Kinds that get a communicator of their own even where an earlier kind has the same
  /// groups (by default such kinds share one; see ParallelContext).
  std::set<GroupKind> dedicated;
  /// How many operations each communicator the context makes keeps in its flight record
  /// (FlightRecorder; 0, the default: none). A Timeout logs its communicator's record at
  /// error level through `logger`; flight_record() gives every record on request.
  std::size_t flight_records = 0;
  /// A watchdog thread (0, the default: none): once an operation of a communicator the
  /// context made has run longer than this, it logs the operation, the communicator, its
  /// members and its flight record at error level through `logger`, and aborts the whole
  /// context (abort()), so that every thread waiting in one of its groups returns with
  /// CommError. Keeps 16 operations per communicator if flight_records is 0.
  std::chrono::milliseconds watchdog{0};
  /// Whether a configured ParallelConfig::ranks_per_node is compared with the nodes the
  /// world communicator sees (Communicator::nodes(); MPI's shared-memory domains): a
  /// difference is a ConfigError on every rank. Turn it off to simulate several nodes on
  /// one host. Backends that cannot tell nodes apart (the test doubles) are not checked.
  bool check_nodes = true;
};

/// What a ParallelContext holds on one rank (ParallelContext::resources()).
struct ContextResources {
  /// Kinds group() reaches: group_ids().size().
  int kinds = 0;
  /// Backend communicators the context owns (the world clone included), each counted once
  /// however many kinds share it; self communicators and the MPU's groups are not counted.
  int communicators = 0;
  /// Self communicators the context owns (groups of one rank: no backend resources).
  int self_communicators = 0;
  /// Kinds the context built on a communicator an earlier kind already holds.
  int shared_kinds = 0;
  /// Bytes of device memory of each of those communicators that the backend can tell
  /// (Communicator::device_memory(): NCCL), in creation order; empty on other backends.
  std::vector<std::uint64_t> device_memory;

  /// Field-wise equality.
  friend bool operator==(const ContextResources&, const ContextResources&) = default;
};

/// The process groups of one parallel layout, built once and immutable afterwards.
///
/// Construction is collective over the world communicator; on each rank it
/// 1. asks the MPU everything it will use (once: it is never asked again) and checks the
///    configuration locally,
/// 2. runs one agreement (pcx::agree, stage context) over the world that compares every
///    rank's configuration, MPU sizes and communicator settings (which decide sharing): if any rank failed step 1
///    (whatever it threw), every rank throws the same error naming that rank, and if ranks disagree, every rank throws
///    the same ConfigMismatch (none is left waiting); then, with ranks per node configured, asks the world communicator
///    for its nodes (Communicator::nodes(), one collective): kDetectRanksPerNode takes their size, a number must match
///    it (ContextOptions::check_nodes), and nodes that are not blocks of consecutive ranks of one size are a
///    ConfigError, the same on every rank,
/// 3. clones the world (one dup), then creates one communicator per group kind it owns:
///    per expert parallel size the expert parallel and expert data parallel groups, ZeRO
///    hpZ, all-to-all local and global, then per expert parallel size Megatron's expert
///    tensor, tensor-expert and tensor-expert-pipeline parallel groups. Each is one split
///    of the clone or, as CommOptions::creation chooses, one creation over the group's
///    members alone (MPI; by default for groups of at most half the world); groups of one
///    rank get a SelfCommunicator and no creation. A kind whose groups are those of an
///    earlier kind, in the same order (GroupLayout equality, the same on every rank, so
///    no communication decides it), with the same settings but the name, shares that
///    kind's communicator (named after it) unless either is in ContextOptions::dedicated,
///    and so does a kind with the groups of one of a GridMpu's kinds, when its settings are
///    the defaults the GridMpu made them with (the world clone too: a GridMpu's group of
///    the whole world, as data parallel when tp = cp = pp = 1, replaces the dup); a shared
///    communicator is released with the
///    last kind that holds it. The dense kinds
///    (tensor, context, pipeline, data parallel and their combinations) are the MPU's.
/// If any step throws, everything built so far is released. Groups are released in
/// reverse order of creation; destroy a context before finalizing its backend.
///
/// One convention for groups that may be absent: the named getters and group() throw
/// GroupNotFound, find() returns nullptr. The context reaches every kind it built and
/// every kind its MPU has (its dense kinds, see Mpu::dense_group(), and sequence and
/// sequence data parallel); each MPU group is checked against Megatron's layout first.
///
/// All getters are const and safe to call from many threads. Any number of contexts
/// may live in one process; they share no communicator of their own (contexts over one
/// GridMpu share its groups' communicators, which their kinds may use too).
///
/// Kinds that share a communicator are one communicator: collectives on them must not
/// overlap (as on any one NCCL communicator). Give a kind used concurrently with another
/// of the same groups its own with ContextOptions::dedicated. Model code holds the context (or the
/// ProcessGroup references it hands out) no longer than the context lives.
///
/// A moved-from context is empty: it holds no groups, world_size() is 0 and rank() -1,
/// abort() does nothing, and every other getter throws ConfigError ("this
/// ParallelContext was moved from"); it may be destroyed or assigned to.
class ParallelContext {
 public:
  /// Builds every group of @p config over @p world.
  /// @param world the world communicator; it must outlive the constructor only
  /// @param config the layout; world_size 0 means world.size(). With an MPU, the tensor,
  ///        pipeline and context parallel sizes come from it (a size other than 1 in
  ///        @p config must then agree with the MPU); without one they must be 1.
  /// @param mpu the model parallel unit, or null: then data parallel is the world clone
  /// @param options logger, communicator settings (per kind), dedicated kinds, node check
  /// @throws ConfigError for a configuration that breaks a rule (same on every rank) or
  ///         a moved-from (empty) @p world, ConfigMismatch when ranks disagree, CommError
  ///         naming the group kind and rank when the backend fails.
  ParallelContext(const Communicator& world, ParallelConfig config, std::shared_ptr<const Mpu> mpu = nullptr,
                  ContextOptions options = {});

  /// Takes over @p other's groups; @p other is left empty (see the class).
  ParallelContext(ParallelContext&& other) noexcept;
  /// Releases this context's groups (newest first, then its MPU), then takes over
  /// @p other's; @p other is left empty.
  ParallelContext& operator=(ParallelContext&& other) noexcept;
  ParallelContext(const ParallelContext&) = delete;
  ParallelContext& operator=(const ParallelContext&) = delete;
  ~ParallelContext();

  /// The validated layout (tensor and pipeline sizes as the MPU reports them).
  /// @throws ConfigError if the context was moved from, as every getter below.
  [[nodiscard]] const Topology& topology() const { return built().topology_; }
  /// Number of ranks in the world; 0 once moved from.
  [[nodiscard]] int world_size() const noexcept { return empty() ? 0 : topology_.world_size(); }
  /// This process's global rank; -1 once moved from.
  [[nodiscard]] int rank() const noexcept { return rank_; }

  /// The clone of the world: all ranks on a communicator of their own.
  [[nodiscard]] const ProcessGroup& world_group() const { return built().groups_.entries.front().group; }

  /// The caller's expert parallel group of size @p ep.
  /// @throws GroupNotFound if the configuration has no such expert parallel size.
  [[nodiscard]] const ProcessGroup& expert_parallel_group(int ep) const;
  /// The caller's expert data parallel group for expert parallel size @p ep.
  /// @throws GroupNotFound if the configuration has no such expert parallel size.
  [[nodiscard]] const ProcessGroup& expert_data_parallel_group(int ep) const;
  /// The largest configured expert parallel size, if any.
  [[nodiscard]] std::optional<int> max_expert_parallel_size() const;
  /// The expert parallel group of the largest expert parallel size.
  /// @throws GroupNotFound if no expert parallel size is configured.
  [[nodiscard]] const ProcessGroup& max_expert_parallel_group() const;
  /// Global rank of group rank 0 of the caller's expert parallel group of size @p ep.
  /// @throws GroupNotFound as expert_parallel_group().
  [[nodiscard]] int expert_parallel_source_rank(int ep) const { return expert_parallel_group(ep).front(); }
  /// Global rank of group rank 0 of the caller's expert data parallel group for @p ep.
  /// @throws GroupNotFound as expert_data_parallel_group().
  [[nodiscard]] int expert_broadcast_source_rank(int ep) const { return expert_data_parallel_group(ep).front(); }
  /// Tensor parallel size of the expert grid (etp): as configured, else the tensor
  /// parallel size (1 without an MPU).
  [[nodiscard]] int expert_tensor_parallel_size() const { return topology().expert_tensor_parallel_size(); }

  /// The MPU's data parallel group, or the world clone without an MPU.
  [[nodiscard]] const ProcessGroup& data_parallel_group() const { return group({GroupKind::data_parallel}); }
  /// Size of data_parallel_group().
  [[nodiscard]] int data_parallel_size() const { return data_parallel_group().size(); }
  /// The MPU's model parallel size, or 1 without an MPU.
  [[nodiscard]] int model_parallel_size() const { return built().model_parallel_size_; }
  /// The MPU's sequence parallel group.
  /// @throws GroupNotFound if the MPU has none (or there is no MPU).
  [[nodiscard]] const ProcessGroup& sequence_parallel_group() const { return group({GroupKind::sequence_parallel}); }
  /// Size of the sequence parallel group, 1 without one.
  [[nodiscard]] int sequence_parallel_size() const {
    const ProcessGroup* sequence = find({GroupKind::sequence_parallel});
    return sequence ? sequence->size() : 1;
  }
  /// Rank in the sequence parallel group, 0 without one.
  [[nodiscard]] int sequence_parallel_rank() const {
    const ProcessGroup* sequence = find({GroupKind::sequence_parallel});
    return sequence ? sequence->rank() : 0;
  }
  /// The MPU's sequence data parallel group, else data_parallel_group().
  [[nodiscard]] const ProcessGroup& sequence_data_parallel_group() const {
    return group({GroupKind::sequence_data_parallel});
  }
  /// Global rank of group rank 0 of sequence_data_parallel_group().
  [[nodiscard]] int broadcast_source_rank() const { return sequence_data_parallel_group().front(); }

  /// The caller's ZeRO hpZ parameter partition group.
  /// @throws GroupNotFound if no hpZ size was configured.
  [[nodiscard]] const ProcessGroup& zero_param_intra_group() const { return group({GroupKind::zero_param_intra}); }
  /// The caller's node: the all-to-all local group.
  /// @throws GroupNotFound if no ranks per node were configured.
  [[nodiscard]] const ProcessGroup& all_to_all_local_group() const { return group({GroupKind::all_to_all_local}); }
  /// The ranks with the caller's local index on every node.
  /// @throws GroupNotFound if no ranks per node were configured or the world is one node.
  [[nodiscard]] const ProcessGroup& all_to_all_global_group() const { return group({GroupKind::all_to_all_global}); }

  /// The caller's group of kind @p id: any kind this context built or its MPU has.
  /// @throws GroupNotFound if this context has no such kind.
  [[nodiscard]] const ProcessGroup& group(const GroupId& id) const;
  /// The caller's group of kind @p id, or nullptr if this context has no such kind.
  [[nodiscard]] const ProcessGroup* find(const GroupId& id) const { return built().find_group(id); }
  /// Every kind group() reaches on this rank: the world clone, then the MPU's dense kinds
  /// it gives this rank (data parallel always; in Topology::all_views() order), sequence
  /// parallel when it has it, sequence data parallel, then the kinds the context split,
  /// in creation order.
  [[nodiscard]] std::vector<GroupId> group_ids() const;
  /// What the context holds on this rank: kinds, communicators, sharing.
  [[nodiscard]] ContextResources resources() const;
  /// The flight records of the communicators the context made, as one JSON object:
  /// {"rank": r, "communicators": [FlightRecorder::json(), ...]}; no communicators unless
  /// ContextOptions::flight_records is above 0. Safe from any thread, also while a
  /// collective hangs.
  [[nodiscard]] std::string flight_record() const;
  /// The MPU the context was built from, or null.
  [[nodiscard]] const Mpu* mpu() const { return built().mpu_.get(); }

  /// Aborts every communicator this context owns (the world clone and every group it
  /// split), newest first, with Communicator::abort(): call it on every rank once one
  /// rank has failed, as NCCL requires every communicator of a failed job to be aborted,
  /// split children included. An operation another thread waits in on one of them ends
  /// with CommError (at once on NCCL), and every later operation throws CommError; the
  /// destructor then releases only memory. Safe from any thread, also while other
  /// threads use the context; `const` for that reason, like the getters. The world
  /// communicator the context was built over and the MPU's groups are not the
  /// context's: abort them yourself (a GridMpu group whose communicator a kind of the
  /// context shares is aborted with it).
  void abort() const noexcept;

 private:
  // The outcome of the agreement: the layout, and what the MPU answered before it.
  struct Agreed;
  [[nodiscard]] static Agreed agree_on(const Communicator& world, const ParallelConfig& config, const Mpu* mpu,
                                       const ContextOptions& options);
  ParallelContext(const Communicator& world, Agreed&& agreed, std::shared_ptr<const Mpu>&& mpu,
                  ContextOptions&& options);

  struct Entry {
    GroupId id;
    ProcessGroup group;
  };
  // Releases its groups in reverse order of creation, also when a constructor fails or
  // a context is assigned to; a moved-from one holds none.
  struct Groups {
    std::vector<Entry> entries;
    Groups() = default;
    Groups(Groups&& other) noexcept : entries(std::exchange(other.entries, {})) {}
    Groups& operator=(Groups&& other) noexcept {
      if (this != &other) {
        release();
        entries = std::exchange(other.entries, {});
      }
      return *this;
    }
    ~Groups() { release(); }
    void release() noexcept {
      while (!entries.empty()) entries.pop_back();
    }
  };

  // A built context always holds the world clone; only a moved-from one is empty.
  [[nodiscard]] bool empty() const noexcept { return groups_.entries.empty(); }
  // This context; throws ConfigError if it was moved from.
  [[nodiscard]] const ParallelContext& built() const;
  [[nodiscard]] const ProcessGroup* find_group(const GroupId& id) const noexcept;
  // Attaches a FlightRecorder to @p group's communicator when options ask for one.
  static void record(const ProcessGroup& group, const std::string& name, const ContextOptions& options);
  // Starts the watchdog over the groups built, when options ask for one.
  void start_watchdog(const ContextOptions& options);
  // The group built earlier, or the GridMpu's, whose communicator @p view can share, or null.
  [[nodiscard]] const ProcessGroup* same_groups(const Communicator& world, const GroupView& view,
                                                const CommOptions& chosen,
                                                const std::set<GroupKind>& dedicated,
                                                std::span<const CommOptions> built_options) const;

  std::shared_ptr<const Mpu> mpu_;
  Topology topology_;
  int rank_ = -1;
  Groups groups_;
  // A kind the context does not own: the MPU's (or the world clone as data parallel).
  struct Borrowed {
    GroupId id;
    const ProcessGroup* group;
  };
  std::vector<Borrowed> borrowed_;  // in group_ids() order
  int model_parallel_size_ = 1;
  // Declared last, so stopped before the groups it watches are released.
  std::unique_ptr<detail::Watchdog> watchdog_;
};

}  // namespace pcx
