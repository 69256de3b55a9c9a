#include "pcx/parallel_context.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/null_sink.h>

#include <algorithm>
#include <climits>
#include <utility>

#include "pcx/error.hpp"

namespace pcx {
namespace {

struct Field {
  std::string_view name;
  std::int64_t value;
};

// The configuration as this rank sees it, for comparison with every other rank. The
// fields are the same, in the same order, on every rank, so every rank words a
// disagreement the same way. An MPU that throws gives -1s; local_topology() then
// rejects the configuration on this rank.
std::vector<Field> fingerprint(const ParallelConfig& c, const Mpu* mpu) noexcept {
  std::uint64_t ep_hash = 1469598103934665603ULL;  // FNV-1a over the ordered sizes; wraps by design
  for (const int ep : c.expert_parallel_sizes) ep_hash = (ep_hash ^ static_cast<std::uint32_t>(ep)) * 1099511628211ULL;
  const auto ask = [mpu](auto question) -> std::int64_t {
    if (!mpu) return 0;
    try {
      return question(*mpu);
    } catch (...) {
      return -1;
    }
  };
  const auto size_or_zero = [](const ProcessGroup* group) { return group ? group->size() : 0; };
  return {
      {"world size", c.world_size},
      {"tensor parallel size", c.tensor_parallel_size},
      {"pipeline parallel size", c.pipeline_parallel_size},
      {"number of expert parallel sizes", static_cast<std::int64_t>(c.expert_parallel_sizes.size())},
      {"largest expert parallel size", c.expert_parallel_sizes.empty() ? 0 : std::ranges::max(c.expert_parallel_sizes)},
      {"expert parallel sizes", static_cast<std::int64_t>(ep_hash >> 1)},
      {"expert order (0 expert-first, 1 data-first)", c.expert_order == ExpertOrder::expert_first ? 0 : 1},
      {"ZeRO hpZ partition size (0 none)", c.zero_hpz_size.value_or(0)},
      {"ranks per node (0 none)", c.ranks_per_node.value_or(0)},
      {"MPU present (0 no, 1 yes)", mpu != nullptr},
      {"MPU tensor parallel size", ask([](const Mpu& m) { return m.tensor_parallel_size(); })},
      {"MPU pipeline parallel size", ask([](const Mpu& m) { return m.pipeline_parallel_size(); })},
      {"MPU data parallel size", ask([](const Mpu& m) { return m.data_parallel_size(); })},
      {"MPU model parallel size", ask([](const Mpu& m) { return m.model_parallel_size(); })},
      {"MPU sequence parallel size (0 none)",
       ask([&](const Mpu& m) { return size_or_zero(m.sequence_parallel_group()); })},
      {"MPU sequence data parallel size (0 none)",
       ask([&](const Mpu& m) { return size_or_zero(m.sequence_data_parallel_group()); })},
  };
}

// The configuration with its defaults resolved, so that ranks that say the same thing
// in different words (world size 0 or the world's size, tensor size 1 or the MPU's,
// a ZeRO hpZ size above the world or the world's) compare equal. Cannot throw.
ParallelConfig as_built(ParallelConfig config, int world_size, const Mpu* mpu) noexcept {
  if (config.world_size == 0) config.world_size = world_size;
  if (mpu) {
    try {
      if (config.tensor_parallel_size == 1) config.tensor_parallel_size = mpu->tensor_parallel_size();
      if (config.pipeline_parallel_size == 1) config.pipeline_parallel_size = mpu->pipeline_parallel_size();
    } catch (...) {
      // The MPU's answers enter the fingerprint on their own; local_topology() reports the throw.
    }
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
Topology local_topology(const Communicator& world, ParallelConfig config, const Mpu* mpu) {
  if (config.world_size == 0) config.world_size = world.size();
  if (config.world_size != world.size()) {
    throw ConfigError(fmt::format("the configuration's world size {} is not the world communicator's size {}",
                                  config.world_size, world.size()));
  }
  if (mpu) {
    // Sizes above the world are clamped to it, as in the MPU's own layout.
    const auto take = [&config](int& configured, int from_mpu, std::string_view what) {
      if (configured != 1 && std::min(configured, config.world_size) != from_mpu) {
        throw ConfigError(
            fmt::format("{} {} in the configuration disagrees with the MPU's {}", what, configured, from_mpu));
      }
      configured = from_mpu;
    };
    take(config.tensor_parallel_size, mpu->tensor_parallel_size(), "tensor parallel size");
    take(config.pipeline_parallel_size, mpu->pipeline_parallel_size(), "pipeline parallel size");
  } else if (config.tensor_parallel_size != 1 || config.pipeline_parallel_size != 1) {
    throw ConfigError(
        fmt::format("tensor parallel size {} and pipeline parallel size {} need an MPU (for example pcx::GridMpu); "
                    "without one both are 1",
                    config.tensor_parallel_size, config.pipeline_parallel_size));
  }
  Topology topology(std::move(config));
  if (mpu) {
    const int rank = world.rank();
    const GroupLayout& data = topology.layout({GroupKind::data_parallel});
    const ProcessGroup& actual = mpu->data_parallel_group();
    if (!actual.same_members(data, data.colour(rank))) {
      throw ConfigError(
          fmt::format("on rank {} the MPU's data parallel group [{}] is not [{}], the group the expert groups assume "
                      "(Megatron layout of world {}, tensor {}, pipeline {})",
                      rank, fmt::join(actual.ranks(), ","), fmt::join(data.group_of(rank), ","), topology.world_size(),
                      topology.tensor_parallel_size(), topology.pipeline_parallel_size()));
    }
  }
  return topology;
}

// Local checks, then one all-reduce over the world so that every rank learns whether
// all ranks agree and accept the configuration before any of them starts to split.
Topology agree(const Communicator& world, const ParallelConfig& config, const Mpu* mpu) {
  if (world.size() == 0) {
    throw ConfigError(
        fmt::format("a ParallelContext cannot be built over a moved-from {} communicator", world.backend()));
  }
  std::optional<Topology> topology;
  std::string error;
  try {
    topology.emplace(local_topology(world, config, mpu));
  } catch (const std::exception& e) {
    error = e.what();
  }
  // Agreement is checked with MAX alone: the maximum of -v is minus the minimum of v.
  std::vector<Field> fields = fingerprint(as_built(config, world.size(), mpu), mpu);
  fields.push_back({"first rejecting rank", topology ? INT_MAX : world.rank()});
  const std::size_t n = fields.size();
  std::vector<std::int64_t> extremes(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    extremes[i] = fields[i].value;
    extremes[n + i] = -fields[i].value;
  }
  try {
    world.all_reduce(std::span<std::int64_t>(extremes), ReduceOp::max);
  } catch (const CommError& e) {
    throw CommError(fmt::format("comparing the configuration across ranks on rank {}: {}", world.rank(), e.what()),
                    e.code());
  }

  std::vector<std::string> disagreements;
  for (std::size_t i = 0; i + 1 < n; ++i) {
    const std::int64_t high = extremes[i];
    const std::int64_t low = -extremes[n + i];
    if (low == high) continue;
    disagreements.push_back(fields[i].name == "expert parallel sizes"
                                ? std::string("the expert parallel sizes differ")
                                : fmt::format("{} ranges from {} to {}", fields[i].name, low, high));
  }
  if (!disagreements.empty()) {
    throw ConfigMismatch(fmt::format("ranks disagree on the configuration: {}", fmt::join(disagreements, "; ")));
  }
  if (!topology) throw ConfigError(error);
  if (const std::int64_t first = -extremes[2 * n - 1]; first != INT_MAX) {
    throw ConfigError(fmt::format("rank {} rejected the configuration; see its error", first));
  }
  return std::move(*topology);
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

ParallelContext::ParallelContext(const Communicator& world, ParallelConfig config, std::shared_ptr<const Mpu> mpu,
                                 ContextOptions options)
    : mpu_(std::move(mpu)), topology_(agree(world, config, mpu_.get())), rank_(world.rank()) {
  const auto logger = logger_or_null(options.logger);
  if (rank_ == 0) {
    for (const std::string& note : topology_.clamp_notes()) logger->warn("pcx: {}", note);
  }

  int splits = 0;
  groups_.entries.reserve(topology_.views().size());
  for (const GroupView& view : topology_.views()) {
    // Tensor, pipeline and data parallel groups belong to the MPU.
    const GroupKind kind = view.id.kind;
    if (kind == GroupKind::tensor_parallel || kind == GroupKind::pipeline_parallel ||
        kind == GroupKind::data_parallel) {
      continue;
    }
    try {
      if (kind == GroupKind::world) {
        groups_.entries.push_back({view.id, ProcessGroup(view.layout, 0, world.dup(options_for(options, view.id)))});
      } else {
        splits += view.layout.group_size() > 1 ? 1 : 0;
        groups_.entries.push_back(
            {view.id, make_group(world_group().communicator(), view.layout, options_for(options, view.id))});
      }
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

  data_ = mpu_ ? &mpu_->data_parallel_group() : &world_group();
  sequence_ = mpu_ ? mpu_->sequence_parallel_group() : nullptr;
  const ProcessGroup* mpu_sequence_data = mpu_ ? mpu_->sequence_data_parallel_group() : nullptr;
  sequence_data_ = mpu_sequence_data ? mpu_sequence_data : data_;

  if (rank_ == 0) {
    logger->info(
        "pcx: context of world {} (tensor {}, pipeline {}, data {}, expert sizes [{}]): {} group kinds, {} splits",
        world_size(), topology_.tensor_parallel_size(), topology_.pipeline_parallel_size(), data_parallel_size(),
        fmt::join(topology_.config().expert_parallel_sizes, ","), groups_.entries.size(), splits);
  }
}

ParallelContext::ParallelContext(ParallelContext&& other) noexcept
    : mpu_(std::move(other.mpu_)),
      topology_(std::move(other.topology_)),
      rank_(std::exchange(other.rank_, -1)),
      groups_(std::move(other.groups_)),
      data_(std::exchange(other.data_, nullptr)),
      sequence_(std::exchange(other.sequence_, nullptr)),
      sequence_data_(std::exchange(other.sequence_data_, nullptr)) {}

ParallelContext& ParallelContext::operator=(ParallelContext&& other) noexcept {
  if (this != &other) {
    // Groups first (newest first), then the MPU whose groups data_ may point into, as the
    // destructor does.
    groups_ = std::move(other.groups_);
    mpu_ = std::move(other.mpu_);
    topology_ = std::move(other.topology_);
    rank_ = std::exchange(other.rank_, -1);
    data_ = std::exchange(other.data_, nullptr);
    sequence_ = std::exchange(other.sequence_, nullptr);
    sequence_data_ = std::exchange(other.sequence_data_, nullptr);
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
  switch (id.kind) {
    case GroupKind::data_parallel: return data_;
    case GroupKind::sequence_parallel: return sequence_;
    case GroupKind::sequence_data_parallel: return sequence_data_;
    case GroupKind::tensor_parallel: return mpu_ ? mpu_->tensor_parallel_group() : nullptr;
    case GroupKind::pipeline_parallel: return mpu_ ? mpu_->pipeline_parallel_group() : nullptr;
    default: break;
  }
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
  for (const GroupKind kind : {GroupKind::tensor_parallel, GroupKind::pipeline_parallel, GroupKind::data_parallel,
                               GroupKind::sequence_parallel, GroupKind::sequence_data_parallel}) {
    if (find_group({kind}) != nullptr) ids.push_back({kind});
  }
  for (auto entry = groups_.entries.begin() + 1; entry != groups_.entries.end(); ++entry) ids.push_back(entry->id);
  return ids;
}

const ProcessGroup& ParallelContext::expert_parallel_group(int ep) const {
  return group({GroupKind::expert_parallel, ep});
}

const ProcessGroup& ParallelContext::expert_data_parallel_group(int ep) const {
  return group({GroupKind::expert_data_parallel, ep});
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
