#include "pcx/process_group.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "pcx/error.hpp"

namespace pcx {

namespace {

void check_communicator(const std::shared_ptr<const Communicator>& communicator, std::size_t members) {
  if (!communicator) throw ConfigError("a process group needs a communicator");
  if (static_cast<std::size_t>(communicator->size()) != members) {
    throw ConfigError(fmt::format("a process group of {} ranks was given a communicator of {} members", members,
                                  communicator->size()));
  }
}

}  // namespace

ProcessGroup::ProcessGroup(std::vector<int> ranks, std::unique_ptr<Communicator> communicator)
    : listed_(std::move(ranks)), communicator_(std::move(communicator)) {
  check_communicator(communicator_, listed_.size());
  std::vector<int> sorted = listed_;
  std::ranges::sort(sorted);
  if (!sorted.empty() && sorted.front() < 0) {
    throw ConfigError(fmt::format("rank {} in a process group is negative; global ranks start at 0", sorted.front()));
  }
  if (const auto twice = std::ranges::adjacent_find(sorted); twice != sorted.end()) {
    throw ConfigError(fmt::format("rank {} is listed twice in a process group", *twice));
  }
}

ProcessGroup::ProcessGroup(const GroupLayout& layout, int colour, std::unique_ptr<Communicator> communicator)
    : layout_(layout), colour_(colour), communicator_(std::move(communicator)) {
  check_communicator(communicator_, static_cast<std::size_t>(layout.group_size()));
  if (colour < 0 || colour >= layout.group_count()) {
    throw ConfigError(fmt::format("group {} is outside [0, {})", colour, layout.group_count()));
  }
}

ProcessGroup ProcessGroup::shared_as(const GroupLayout& layout, int colour) const {
  if (!same_members(layout, colour)) {
    throw ConfigError(
        fmt::format("group {} of the layout, [{}], is not this group's members [{}]: it cannot share "
                    "this group's communicator",
                    colour, fmt::join(layout.group(colour), ","), fmt::join(ranks(), ",")));
  }
  return ProcessGroup(Sharing{}, layout, colour, communicator_);
}

std::vector<int> ProcessGroup::ranks() const { return layout_ ? layout_->group(colour_) : listed_; }

int ProcessGroup::global_rank(int group_rank) const {
  if (group_rank < 0 || group_rank >= size()) {
    throw ConfigError(fmt::format("group rank {} is outside [0, {})", group_rank, size()));
  }
  return layout_ ? layout_->global_rank(colour_, group_rank) : listed_[static_cast<std::size_t>(group_rank)];
}

bool ProcessGroup::same_members(const GroupLayout& layout, int colour) const {
  if (layout_ && *layout_ == layout) return colour_ == colour;
  if (size() != layout.group_size()) return false;
  for (int i = 0; i < size(); ++i) {
    if (global_rank(i) != layout.global_rank(colour, i)) return false;
  }
  return true;
}

bool ProcessGroup::contains(int global) const noexcept {
  if (layout_) return global >= 0 && global < layout_->world_size() && layout_->colour(global) == colour_;
  return std::ranges::find(listed_, global) != listed_.end();
}

std::optional<ProcessGroup> make_group(const Communicator& parent, const GroupLayout& layout,
                                       const CommOptions& options) {
  const int rank = parent.rank();
  const int colour = layout.colour(rank);
  // Group sizes are the same for every rank of a layout, so either every rank
  // splits or none does: skipping the collective here cannot leave a peer waiting.
  if (layout.group_size() == 1) {
    if (colour == GroupLayout::kNoGroup) return std::nullopt;
    return ProcessGroup(layout, colour, parent.self());
  }
  // The same on every rank: the backend, the options (agreed) and the layout's shape.
  const bool group_local =
      parent.can_create_group() &&
      (options.creation == GroupCreation::group ||
       (options.creation == GroupCreation::automatic && 2 * layout.group_size() <= parent.size()));
  if (group_local) {
    if (colour == GroupLayout::kNoGroup) return std::nullopt;
    return ProcessGroup(layout, colour, parent.create_group(layout.group_of(rank), options));
  }
  if (colour == GroupLayout::kNoGroup) {
    (void)parent.split_checked(Communicator::kNoColour, 0, 0, options);
    return std::nullopt;
  }
  return ProcessGroup(layout, colour,
                      parent.split_checked(colour, layout.group_rank(rank), layout.group_size(), options));
}

}  // namespace pcx
