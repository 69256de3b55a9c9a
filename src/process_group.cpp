#include "pcx/process_group.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pcx/error.hpp"

namespace pcx {

ProcessGroup::ProcessGroup(std::vector<int> ranks, std::unique_ptr<Communicator> communicator)
    : ranks_(std::move(ranks)), communicator_(std::move(communicator)) {
  if (!communicator_) throw ConfigError("a process group needs a communicator");
  if (communicator_->size() != size()) {
    throw ConfigError(fmt::format("a process group of {} ranks was given a communicator of {} members", size(),
                                  communicator_->size()));
  }
  std::vector<int> sorted = ranks_;
  std::ranges::sort(sorted);
  if (const auto twice = std::ranges::adjacent_find(sorted); twice != sorted.end()) {
    throw ConfigError(fmt::format("rank {} is listed twice in a process group", *twice));
  }
}

int ProcessGroup::global_rank(int group_rank) const {
  if (group_rank < 0 || group_rank >= size()) {
    throw ConfigError(fmt::format("group rank {} is outside [0, {})", group_rank, size()));
  }
  return ranks_[static_cast<std::size_t>(group_rank)];
}

bool ProcessGroup::contains(int global) const noexcept { return std::ranges::find(ranks_, global) != ranks_.end(); }

ProcessGroup make_group(const Communicator& parent, const GroupLayout& layout, const CommOptions& options) {
  const int rank = parent.rank();
  std::vector<int> members = layout.group_of(rank);
  // Group sizes are the same for every rank of a layout, so either every rank
  // splits or none does: skipping the collective here cannot leave a peer waiting.
  if (layout.group_size() == 1) return ProcessGroup(std::move(members), parent.self());
  auto communicator = parent.split(layout.colour(rank), layout.group_rank(rank), members, options);
  return ProcessGroup(std::move(members), std::move(communicator));
}

}  // namespace pcx
