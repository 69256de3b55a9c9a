#include "pcx/parallel_context.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/null_sink.h>

#include <algorithm>
#include <climits>
#include <map>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>

#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/flight_recorder.hpp"
#include "pcx/placement.hpp"
#include "watchdog.hpp"

namespace pcx {
namespace {

// Everything the context takes from its MPU, asked once, before the agreement: an MPU
// that throws (anything) then fails this rank in the agreement, and none is asked after.
// The sizes come first; the dense groups once the layout they are checked against is known.
struct MpuAnswers {
  explicit MpuAnswers(const Mpu& mpu)
      : tensor(mpu.tensor_parallel_size()),
        pipeline(mpu.pipeline_parallel_size()),
        context(mpu.context_parallel_size()),
        data(mpu.data_parallel_size()),
        model(mpu.model_parallel_size()),
        sequence(mpu.sequence_parallel_group()),
        sequence_data(mpu.sequence_data_parallel_group()) {}
  int tensor;
  int pipeline;
  int context;
  int data;
  int model;
  const ProcessGroup* sequence;
  const ProcessGroup* sequence_data;
  // The MPU's group of each dense kind of the layout, in the layout's order; null where it has none.
  std::vector<std::pair<GroupKind, const ProcessGroup*>> dense;
};

}  // namespace

// The layout every rank builds, and this rank's MPU answers.
struct ParallelContext::Agreed {
  Topology topology;
  std::optional<MpuAnswers> mpu;
};

namespace {

// The configuration as this rank sees it, for comparison with every other rank. The
// values are the same, in the same order, on every rank, so every rank words a
// disagreement the same way.
// What decides which kinds share a communicator, and how the others are created, besides
// the layouts: the settings of each kind but their names, and the dedicated kinds. Ranks
// that differ here would split for a kind where others share, or split where others
// create over the members, so the ranks compare a digest of it.
std::int64_t sharing_digest(const ContextOptions& options) {
  const auto settings = [](const CommOptions& o) {
    return fmt::format("{} {} {} {} {} {} {};", o.timeout.count(), o.share_resources, o.cga_cluster_size.value_or(-1),
                       o.min_ctas.value_or(-1), o.max_ctas.value_or(-1), o.net_name, static_cast<int>(o.creation));
  };
  std::string text = settings(options.communicators);
  for (const auto& [kind, chosen] : options.per_kind)
    text += fmt::format("{}:{}", static_cast<int>(kind), settings(chosen));
  for (const GroupKind kind : options.dedicated) text += fmt::format("d{};", static_cast<int>(kind));
  return digest_of(text);
}

// A GridMpu whose groups a context over @p world may share: made on the world's backend.
const GridMpu* shareable_grid(const Mpu* mpu, const Communicator& world) {
  const auto* grid = dynamic_cast<const GridMpu*>(mpu);
  return grid != nullptr && grid->backend() == world.backend() ? grid : nullptr;
}

// 0 without an MPU, 2 for a GridMpu whose groups the context may share, 1 for another.
std::int64_t mpu_kind(const Mpu* mpu, const Communicator& world) {
  if (mpu == nullptr) return 0;
  return shareable_grid(mpu, world) != nullptr ? 2 : 1;
}

std::vector<AgreedValue> fingerprint(const ParallelConfig& c, const ContextOptions& options, std::int64_t kind_of_mpu,
                                     const MpuAnswers* mpu) {
  const bool has_mpu = kind_of_mpu != 0;
  // An MPU that threw has no answers: they are left out of the comparison, and the
  // agreement reports the throw.
  const auto answer = [&](auto field) -> std::optional<std::int64_t> {
    if (!has_mpu) return 0;
    if (!mpu) return std::nullopt;
    return field(*mpu);
  };
  const auto size_or_zero = [](const ProcessGroup* group) -> std::int64_t { return group ? group->size() : 0; };
  return {
      {"world size", c.world_size},
      {"tensor parallel size", c.tensor_parallel_size},
      {"pipeline parallel size", c.pipeline_parallel_size},
      {"number of expert parallel sizes", static_cast<std::int64_t>(c.expert_parallel_sizes.size())},
      {"largest expert parallel size", c.expert_parallel_sizes.empty() ? 0 : std::ranges::max(c.expert_parallel_sizes)},
      {"expert parallel sizes", digest_of(fmt::format("{}", fmt::join(c.expert_parallel_sizes, ","))), /*digest=*/true},
      {"expert order (0 expert-first, 1 data-first)", c.expert_order == ExpertOrder::expert_first ? 0 : 1},
      {"context parallel size", c.context_parallel_size},
      {"expert tensor parallel size (0: the tensor parallel size)", c.expert_tensor_parallel_size.value_or(0)},
      {"order strings", digest_of(order_of(c)), /*digest=*/true},
      {"ZeRO hpZ partition size (0 none)", c.zero_hpz_size.value_or(0)},
      {"distributed optimizer instances", c.distributed_optimizer_instances},
      {"hybrid context parallel (0 no, 1 yes)", c.hybrid_context_parallel ? 1 : 0},
      {"hierarchical context parallel sizes",
       digest_of(fmt::format("{}", fmt::join(c.hierarchical_context_parallel_sizes, ","))), /*digest=*/true},
      {"ranks per node (0 none, -1 detected)",
       c.ranks_per_node == kDetectRanksPerNode ? -1 : c.ranks_per_node.value_or(0)},
      {"communicator settings and dedicated kinds (ContextOptions)", sharing_digest(options), /*digest=*/true},
      {"MPU present (0 no, 1 yes, 2 a GridMpu on the world's backend)", kind_of_mpu},
      {"nodes checked (ContextOptions::check_nodes)", options.check_nodes ? 1 : 0},
      {"MPU tensor parallel size", answer([](const MpuAnswers& m) { return m.tensor; })},
      {"MPU pipeline parallel size", answer([](const MpuAnswers& m) { return m.pipeline; })},
      {"MPU context parallel size", answer([](const MpuAnswers& m) { return m.context; })},
      {"MPU data parallel size", answer([](const MpuAnswers& m) { return m.data; })},
      {"MPU model parallel size", answer([](const MpuAnswers& m) { return m.model; })},
      {"MPU sequence parallel size (0 none)", answer([&](const MpuAnswers& m) { return size_or_zero(m.sequence); })},
      {"MPU sequence data parallel size (0 none)",
       answer([&](const MpuAnswers& m) { return size_or_zero(m.sequence_data); })},
  };
}

// The configuration with its defaults resolved, so that ranks that say the same thing
// in different words (world size 0 or the world's size, tensor size 1 or the MPU's,
// a ZeRO hpZ size above the world or the world's) compare equal.
ParallelConfig as_built(ParallelConfig config, int world_size, const MpuAnswers* mpu) noexcept {
  if (config.world_size == 0) config.world_size = world_size;
  if (mpu) {
    if (config.tensor_parallel_size == 1) config.tensor_parallel_size = mpu->tensor;
    if (config.pipeline_parallel_size == 1) config.pipeline_parallel_size = mpu->pipeline;
    if (config.context_parallel_size == 1) config.context_parallel_size = mpu->context;
  }
  const auto clamp = [&](std::optional<int>& size) {
    if (size && config.world_size > 0) size = std::min(*size, config.world_size);
  };
  clamp(config.zero_hpz_size);
  clamp(config.ranks_per_node);
  if (config.world_size > 0) config.tensor_parallel_size = std::min(config.tensor_parallel_size, config.world_size);
  return config;
}

// The configuration this rank will build, checked locally; throws ConfigError.
Topology local_topology(const Communicator& world, ParallelConfig config, const MpuAnswers* mpu) {
  if (config.world_size == 0) config.world_size = world.size();
  if (config.world_size != world.size()) {
    throw ConfigError(fmt::format("the configuration's world size {} is not the world communicator's size {}",
                                  config.world_size, world.size()));
  }
  require_whole_world(config, "ParallelContext");
  if (mpu) {
    // Sizes above the world are clamped to it, as in the MPU's own layout.
    const auto take = [&config](int& configured, int from_mpu, std::string_view what) {
      if (configured != 1 && std::min(configured, config.world_size) != from_mpu) {
        throw ConfigError(
            fmt::format("{} {} in the configuration disagrees with the MPU's {}", what, configured, from_mpu));
      }
      configured = from_mpu;
    };
    take(config.tensor_parallel_size, mpu->tensor, "tensor parallel size");
    take(config.pipeline_parallel_size, mpu->pipeline, "pipeline parallel size");
    take(config.context_parallel_size, mpu->context, "context parallel size");
  } else if (config.tensor_parallel_size != 1 || config.pipeline_parallel_size != 1 ||
             config.context_parallel_size != 1) {
    // Without an MPU, data parallel is the whole world, which it is only when all three are 1.
    throw ConfigError(fmt::format(
        "tensor parallel size {}, pipeline parallel size {} and context parallel size {} need an MPU (for example "
        "pcx::GridMpu); without one all three are 1",
        config.tensor_parallel_size, config.pipeline_parallel_size, config.context_parallel_size));
  }
  // Detected nodes are known after the agreement; until then the layout has none.
  if (config.ranks_per_node == kDetectRanksPerNode) config.ranks_per_node.reset();
  return Topology(std::move(config));
}

// The size of the world communicator's nodes, which must be blocks of consecutive ranks,
// all of one size (the node kinds and the placement check assume it).
int node_size(std::span<const int> nodes) {
  std::map<int, int> sizes;  // by the node's name, its lowest member
  for (const int node : nodes) ++sizes[node];
  const int size = sizes.begin()->second;
  for (const auto& [node, members] : sizes) {
    if (members != size) {
      throw ConfigError(fmt::format("the world communicator's nodes differ in size: the node of rank {} has {} ranks, "
                                    "the node of rank {} has {} (give every host the same number of ranks)",
                                    sizes.begin()->first, size, node, members));
    }
  }
  for (int r = 0; r < static_cast<int>(nodes.size()); ++r) {
    const int node = nodes[static_cast<std::size_t>(r)];
    if (node != r / size * size) {
      throw ConfigError(fmt::format(
          "the world communicator's nodes are not blocks of {} consecutive ranks: rank {} is on the node of rank {}, "
          "not on that of rank {} (number ranks node by node, e.g. mpiexec --map-by core)",
          size, r, node, r / size * size));
    }
  }
  return size;
}

// The ranks per node: detected for kDetectRanksPerNode, else as configured and, with
// @p check, compared with the nodes the world communicator sees. Run after the agreement,
// by every rank (Communicator::nodes() is collective) when the configuration has ranks per
// node; the nodes are all-gathered, so every rank reaches the same verdict.
Topology with_nodes(const Communicator& world, Topology topology, int configured, bool check) {
  const bool detect = configured == kDetectRanksPerNode;
  if (!detect && !check) return topology;
  const std::vector<int> nodes = world.nodes();
  if (nodes.empty()) {
    if (!detect) return topology;
    throw ConfigError(fmt::format(
        "ranks per node 0 (detect): a {} communicator cannot tell nodes apart; give the number of ranks per node",
        world.backend()));
  }
  const int size = node_size(nodes);
  if (!detect) {
    if (std::min(configured, world.size()) != size) {
      const int count = world.size() / size;
      throw ConfigError(
          fmt::format("ranks per node {} in the configuration disagrees with the world communicator's "
                      "{} node{} of {} ranks (to simulate nodes, set ContextOptions::check_nodes to false)",
                      configured, count, count == 1 ? "" : "s", size));
    }
    return topology;
  }
  ParallelConfig config = topology.config();
  config.ranks_per_node = size;
  return Topology(std::move(config));
}

// Asks the MPU for its group of every dense kind of @p topology and checks each it gives
// against the layout: the expert groups and the ranks' agreement assume Megatron's layout.
std::vector<std::pair<GroupKind, const ProcessGroup*>> checked_dense_groups(const Mpu& mpu, const Topology& topology,
                                                                            int rank) {
  std::vector<std::pair<GroupKind, const ProcessGroup*>> dense;
  for (const GroupView& view : topology.all_views()) {
    if (!is_dense_kind(view.id.kind)) continue;
    const ProcessGroup* group = mpu.dense_group(view.id.kind);
    const std::string layout_text =
        fmt::format("Megatron's layout of world {}, tensor {}, context {}, pipeline {} and order '{}'",
                    topology.world_size(), topology.tensor_parallel_size(), topology.context_parallel_size(),
                    topology.pipeline_parallel_size(), topology.order());
    std::string kind = view.id.name();
    std::ranges::replace(kind, '_', ' ');
    const int colour = view.layout.colour(rank);
    if (group == nullptr) {
      if (view.id.kind == GroupKind::data_parallel) {
        throw ConfigError(fmt::format("on rank {} the MPU gives no data parallel group", rank));
      }
    } else if (colour == GroupLayout::kNoGroup) {
      throw ConfigError(
          fmt::format("on rank {} the MPU gives the {} group [{}], but in {} the rank is in no such group", rank, kind,
                      fmt::join(group->ranks(), ","), layout_text));
    } else if (!group->same_members(view.layout, colour)) {
      throw ConfigError(fmt::format("on rank {} the MPU's {} group [{}] is not [{}], its group in {}", rank, kind,
                                    fmt::join(group->ranks(), ","), fmt::join(view.layout.group(colour), ","),
                                    layout_text));
    }
    dense.emplace_back(view.id.kind, group);
  }
  return dense;
}

CommOptions options_for(const ContextOptions& options, const GroupId& id) {
  const auto it = options.per_kind.find(id.kind);
  CommOptions chosen = it == options.per_kind.end() ? options.communicators : it->second;
  if (chosen.name.empty()) chosen.name = "pcx:" + id.name();
  return chosen;
}

std::shared_ptr<spdlog::logger> logger_or_null(std::shared_ptr<spdlog::logger> logger) {
  if (logger) return logger;
  return std::make_shared<spdlog::logger>("pcx", std::make_shared<spdlog::sinks::null_sink_mt>());
}

}  // namespace

// Local checks and the MPU's answers first, then one agreement over the world, so that
// every rank learns whether all ranks agree and accept the configuration before any of
// them starts to split, and every rank leaves with the same error if not.
ParallelContext::Agreed ParallelContext::agree_on(const Communicator& world, const ParallelConfig& config,
                                                  const Mpu* mpu, const ContextOptions& options) {
  if (world.size() == 0) {
    throw ConfigError(
        fmt::format("a ParallelContext cannot be built over a moved-from {} communicator", world.backend()));
  }
  std::optional<MpuAnswers> answers;
  std::optional<Topology> topology;
  std::exception_ptr failure;
  try {
    if (mpu) answers.emplace(*mpu);
    topology.emplace(local_topology(world, config, answers ? &*answers : nullptr));
    if (mpu) answers->dense = checked_dense_groups(*mpu, *topology, world.rank());
  } catch (...) {
    failure = std::current_exception();
  }
  const MpuAnswers* asked = answers ? &*answers : nullptr;
  const std::vector<AgreedValue> values =
      fingerprint(as_built(config, world.size(), asked), options, mpu_kind(mpu, world), asked);
  try {
    agree(world, AgreementStage::context, values, failure);
  } catch (const CommError& e) {
    throw CommError(fmt::format("comparing the configuration across ranks on rank {}: {}", world.rank(), e.what()),
                    e.code());
  }
  if (config.ranks_per_node) {
    try {
      topology.emplace(with_nodes(world, std::move(*topology), *config.ranks_per_node, options.check_nodes));
    } catch (const CommError& e) {
      throw CommError(fmt::format("asking the world communicator for its nodes on rank {}: {}", world.rank(), e.what()),
                      e.code());
    }
  }
  return {std::move(*topology), std::move(answers)};
}

ParallelContext::ParallelContext(const Communicator& world, ParallelConfig config, std::shared_ptr<const Mpu> mpu,
                                 ContextOptions options)
    : ParallelContext(world, agree_on(world, config, mpu.get(), options), std::move(mpu), std::move(options)) {}

ParallelContext::ParallelContext(const Communicator& world, Agreed&& agreed, std::shared_ptr<const Mpu>&& mpu,
                                 ContextOptions&& options)
    : mpu_(std::move(mpu)), topology_(std::move(agreed.topology)), rank_(world.rank()) {
  if (agreed.mpu) model_parallel_size_ = agreed.mpu->model;
  const auto logger = logger_or_null(options.logger);
  if (rank_ == 0) {
    for (const std::string& note : topology_.clamp_notes()) logger->warn("pcx: {}", note);
    for (const PlacementWarning& warning : check_placement(topology_)) logger->warn("pcx: {}", warning.message());
  }

  int created = 0;  // communicators created by a split or over the members
  groups_.entries.reserve(topology_.all_views().size());
  std::vector<CommOptions> built_options;  // of each entry, for sharing
  for (const GroupView& view : topology_.all_views()) {
    // The dense kinds belong to the MPU.
    if (is_dense_kind(view.id.kind)) continue;
    const CommOptions chosen = options_for(options, view.id);
    try {
      // The world clone too may be a GridMpu's group (its data parallel group when
      // tp = cp = pp = 1): it is then the parent of the context's splits.
      if (const ProcessGroup* same = same_groups(world, view, chosen, options.dedicated, built_options)) {
        groups_.entries.push_back({view.id, same->shared_as(view.layout, view.layout.colour(rank_))});
      } else if (view.id.kind == GroupKind::world) {
        groups_.entries.push_back({view.id, ProcessGroup(view.layout, 0, world.dup(chosen))});
      } else {
        created += view.layout.group_size() > 1 ? 1 : 0;
        // Every kind the context builds covers the world: each rank has a group.
        groups_.entries.push_back({view.id, *make_group(world_group().communicator(), view.layout, chosen)});
      }
      built_options.push_back(chosen);
      record(groups_.entries.back().group, chosen.name, options);
    } catch (const CommError& e) {
      throw CommError(fmt::format("building the {} groups on rank {}: {}", view.id.name(), rank_, e.what()), e.code());
    } catch (const Timeout& e) {
      throw Timeout(fmt::format("building the {} groups on rank {}: {}", view.id.name(), rank_, e.what()));
    }
    if (logger->should_log(spdlog::level::debug)) {
      // Listing a group costs O(its size); long ones are summarized.
      const ProcessGroup& built = groups_.entries.back().group;
      constexpr int kListed = 64;
      std::vector<int> members;
      for (int i = 0; i < std::min(built.size(), kListed); ++i) members.push_back(built.global_rank(i));
      logger->debug("pcx: rank {} {} group of {} ranks, group rank {}: [{}{}]", rank_, view.id.name(), built.size(),
                    built.rank(), fmt::join(members, ","), built.size() > kListed ? ",..." : "");
    }
  }

  // The MPU's kinds: its dense groups, then the sequence kinds (sequence data parallel
  // falling back to data parallel); without an MPU, data parallel is the world clone.
  const ProcessGroup* data = &world_group();
  if (agreed.mpu) {
    for (const auto& [kind, group] : agreed.mpu->dense) {
      if (group) borrowed_.push_back({{kind}, group});
      if (kind == GroupKind::data_parallel) data = group;
    }
    if (agreed.mpu->sequence) borrowed_.push_back({{GroupKind::sequence_parallel}, agreed.mpu->sequence});
  } else {
    borrowed_.push_back({{GroupKind::data_parallel}, data});
  }
  borrowed_.push_back({{GroupKind::sequence_data_parallel},
                       agreed.mpu && agreed.mpu->sequence_data ? agreed.mpu->sequence_data : data});

  if (rank_ == 0) {
    const ContextResources held = resources();
    logger->info(
        "pcx: context of world {} (tensor {}, context {}, pipeline {}, data {}, expert sizes [{}], expert tensor {}): "
        "{} group kinds, {} created, {} communicators ({} kinds share one), {} self communicators{}",
        world_size(), topology_.tensor_parallel_size(), topology_.context_parallel_size(),
        topology_.pipeline_parallel_size(), data_parallel_size(),
        fmt::join(topology_.config().expert_parallel_sizes, ","), topology_.expert_tensor_parallel_size(), held.kinds,
        created, held.communicators, held.shared_kinds, held.self_communicators,
        held.device_memory.empty()
            ? std::string()
            : fmt::format(", {:.1f} MiB of device memory",
                          static_cast<double>(std::accumulate(held.device_memory.begin(), held.device_memory.end(),
                                                              std::uint64_t{0})) /
                              (1 << 20)));
  }
  start_watchdog(options);
}

const ProcessGroup* ParallelContext::same_groups(const Communicator& world, const GroupView& view,
                                                 const CommOptions& chosen,
                                                 const std::set<GroupKind>& dedicated,
                                                 std::span<const CommOptions> built_options) const {
  if (dedicated.contains(view.id.kind)) return nullptr;
  const auto equivalent = [&chosen](CommOptions other) {
    other.name = chosen.name;
    return other == chosen;
  };
  for (std::size_t i = 0; i < groups_.entries.size(); ++i) {
    const Entry& earlier = groups_.entries[i];
    if (!dedicated.contains(earlier.id.kind) && earlier.group.made_from(view.layout) && equivalent(built_options[i])) {
      return &earlier.group;
    }
  }
  // A GridMpu's groups on the world's backend, made with the default settings (agreed).
  const GridMpu* grid = shareable_grid(mpu_.get(), world);
  if (grid == nullptr || !equivalent(CommOptions{})) return nullptr;
  for (const GroupView& dense : grid->topology().all_views()) {
    const ProcessGroup* group = is_dense_kind(dense.id.kind) ? grid->dense_group(dense.id.kind) : nullptr;
    if (group != nullptr && group->made_from(view.layout)) return group;
  }
  return nullptr;
}

ParallelContext::ParallelContext(ParallelContext&& other) noexcept
    : mpu_(std::move(other.mpu_)),
      topology_(std::move(other.topology_)),
      rank_(std::exchange(other.rank_, -1)),
      groups_(std::move(other.groups_)),
      borrowed_(std::exchange(other.borrowed_, {})),
      model_parallel_size_(std::exchange(other.model_parallel_size_, 1)),
      watchdog_(std::move(other.watchdog_)) {}

ParallelContext::~ParallelContext() = default;

ParallelContext& ParallelContext::operator=(ParallelContext&& other) noexcept {
  if (this != &other) {
    // The watchdog first, then the groups it watched (newest first), then the MPU whose
    // groups borrowed_ points into, as the destructor does.
    watchdog_.reset();
    groups_ = std::move(other.groups_);
    mpu_ = std::move(other.mpu_);
    topology_ = std::move(other.topology_);
    rank_ = std::exchange(other.rank_, -1);
    borrowed_ = std::exchange(other.borrowed_, {});
    model_parallel_size_ = std::exchange(other.model_parallel_size_, 1);
    watchdog_ = std::move(other.watchdog_);
  }
  return *this;
}

const ParallelContext& ParallelContext::built() const {
  if (empty()) throw ConfigError("this ParallelContext was moved from");
  return *this;
}

void ParallelContext::abort() const noexcept {
  // Children before the world clone they were split from: the reverse of creation, as
  // in the destructor.
  for (auto entry = groups_.entries.rbegin(); entry != groups_.entries.rend(); ++entry) {
    entry->group.communicator().abort();
  }
}

const ProcessGroup* ParallelContext::find_group(const GroupId& id) const noexcept {
  if (const auto it = std::ranges::find(borrowed_, id, &Borrowed::id); it != borrowed_.end()) return it->group;
  const auto it = std::ranges::find(groups_.entries, id, &Entry::id);
  return it == groups_.entries.end() ? nullptr : &it->group;
}

const ProcessGroup& ParallelContext::group(const GroupId& id) const {
  if (const ProcessGroup* found = built().find_group(id)) return *found;
  std::vector<std::string> names;
  for (const GroupId& held : group_ids()) names.push_back(held.name());
  throw GroupNotFound(fmt::format("this context has no {} group (it has: {})", id.name(), fmt::join(names, ", ")));
}

std::vector<GroupId> ParallelContext::group_ids() const {
  (void)built();
  std::vector<GroupId> ids = {groups_.entries.front().id};
  for (const Borrowed& borrowed : borrowed_) ids.push_back(borrowed.id);
  for (auto entry = groups_.entries.begin() + 1; entry != groups_.entries.end(); ++entry) ids.push_back(entry->id);
  return ids;
}

const ProcessGroup& ParallelContext::expert_parallel_group(int ep) const {
  return group({GroupKind::expert_parallel, ep});
}

const ProcessGroup& ParallelContext::expert_data_parallel_group(int ep) const {
  return group({GroupKind::expert_data_parallel, ep});
}

// A flight recorder for a communicator the context made (not one it shares, nor a self
// communicator, whose operations cannot wait for anyone).
void ParallelContext::record(const ProcessGroup& group, const std::string& name, const ContextOptions& options) {
  const std::size_t kept = options.flight_records > 0 ? options.flight_records : options.watchdog.count() > 0 ? 16 : 0;
  if (kept == 0 || group.size() == 1 || group.shares_communicator()) return;
  group.communicator().record_operations(std::make_shared<FlightRecorder>(name, group.ranks(), kept, options.logger));
}

void ParallelContext::start_watchdog(const ContextOptions& options) {
  if (options.watchdog.count() <= 0) return;
  std::vector<const Communicator*> watched;
  std::vector<const Communicator*> held;  // newest first, as abort() goes
  for (auto entry = groups_.entries.rbegin(); entry != groups_.entries.rend(); ++entry) {
    const Communicator& comm = entry->group.communicator();
    held.push_back(&comm);
    if (comm.flight_recorder() != nullptr && std::ranges::find(watched, &comm) == watched.end()) {
      watched.push_back(&comm);
    }
  }
  watchdog_ = std::make_unique<detail::Watchdog>(options.watchdog, std::move(watched), std::move(held),
                                                 options.logger, rank_);
}

std::string ParallelContext::flight_record() const {
  std::vector<const FlightRecorder*> seen;  // kinds that share a communicator share its record
  std::vector<std::string> recorded;
  for (const Entry& entry : built().groups_.entries) {
    const FlightRecorder* recorder = entry.group.communicator().flight_recorder();
    if (recorder == nullptr || std::ranges::find(seen, recorder) != seen.end()) continue;
    seen.push_back(recorder);
    recorded.push_back(recorder->json());
  }
  return fmt::format(R"({{"rank": {}, "communicators": [{}]}})", rank_, fmt::join(recorded, ", "));
}

ContextResources ParallelContext::resources() const {
  ContextResources counted;
  counted.kinds = static_cast<int>(group_ids().size());
  // The MPU's communicators are its own: a kind on one of them is shared, not counted.
  std::vector<const Communicator*> seen;
  for (const Borrowed& borrowed : borrowed_) {
    if (borrowed.group != &world_group()) seen.push_back(&borrowed.group->communicator());
  }
  for (const Entry& entry : groups_.entries) {
    const Communicator& communicator = entry.group.communicator();
    if (std::ranges::find(seen, &communicator) != seen.end()) {
      ++counted.shared_kinds;
      continue;
    }
    seen.push_back(&communicator);
    // Groups of one rank are made with self(), the world clone (even of one rank) with dup().
    const bool self = &entry != &groups_.entries.front() && entry.group.size() == 1;
    ++(self ? counted.self_communicators : counted.communicators);
    if (const std::optional<std::uint64_t> bytes = communicator.device_memory(); bytes && !self) {
      counted.device_memory.push_back(*bytes);
    }
  }
  return counted;
}

std::optional<int> ParallelContext::max_expert_parallel_size() const {
  const std::vector<int>& sizes = topology().config().expert_parallel_sizes;
  if (sizes.empty()) return std::nullopt;
  return std::ranges::max(sizes);
}

const ProcessGroup& ParallelContext::max_expert_parallel_group() const {
  const std::optional<int> largest = max_expert_parallel_size();
  if (!largest) throw GroupNotFound("this context has no expert parallel groups, so no largest one");
  return expert_parallel_group(*largest);
}

}  // namespace pcx
