#pragma once
/// @file process_group.hpp
/// @brief A group of ranks with the communicator it owns.

#include <memory>
#include <optional>
#include <vector>

#include "pcx/communicator.hpp"
#include "pcx/layout.hpp"

namespace pcx {

/// An ordered list of global ranks and the communicator that connects them.
///
/// Member i of the list is group rank i of the communicator. The members are either
/// listed (as an MPU hands them in) or implied by one group of a GroupLayout, which
/// costs O(1) memory whatever the group's size. Move-only: the group owns its
/// communicator, shared with the groups made by shared_as() (kinds with the same
/// members), and released when the last of them is destroyed.
class ProcessGroup {
 public:
  /// A group of listed members.
  /// @param ranks global ranks of the members, in group-rank order
  /// @param communicator the members' communicator, of the same size
  /// @throws ConfigError if @p communicator is null, its size differs from the number of
  ///         ranks, a rank is negative, or a rank is listed twice.
  ProcessGroup(std::vector<int> ranks, std::unique_ptr<Communicator> communicator);
  /// Group @p colour of @p layout.
  /// @param layout the groups of a grid
  /// @param colour which of them
  /// @param communicator the members' communicator, of the layout's group size
  /// @throws ConfigError if @p communicator is null or of another size, or @p colour is
  ///         out of range.
  ProcessGroup(const GroupLayout& layout, int colour, std::unique_ptr<Communicator> communicator);

  /// Takes over @p other's ranks and communicator.
  ProcessGroup(ProcessGroup&& other) noexcept = default;
  /// Releases this group's communicator, then takes over @p other's.
  ProcessGroup& operator=(ProcessGroup&& other) noexcept = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  ~ProcessGroup() = default;

  /// Global ranks of the members, in group-rank order. Costs O(size()).
  [[nodiscard]] std::vector<int> ranks() const;
  /// Number of members.
  [[nodiscard]] int size() const noexcept { return communicator_->size(); }
  /// This process's group rank.
  [[nodiscard]] int rank() const noexcept { return communicator_->rank(); }
  /// Global rank of group rank @p group_rank.
  /// @throws ConfigError if @p group_rank is outside [0, size()).
  [[nodiscard]] int global_rank(int group_rank) const;
  /// Whether global rank @p global is a member.
  [[nodiscard]] bool contains(int global) const noexcept;
  /// The first member's global rank: the source of a broadcast from group rank 0.
  [[nodiscard]] int front() const { return global_rank(0); }
  /// Group @p colour of @p layout over this group's communicator, whose members must be
  /// the same, in the same order: a second kind with the same members at no cost.
  /// @throws ConfigError if the members differ (see same_members()).
  [[nodiscard]] ProcessGroup shared_as(const GroupLayout& layout, int colour) const;
  /// Whether the communicator is shared with another group (see shared_as()).
  [[nodiscard]] bool shares_communicator() const noexcept { return communicator_.use_count() > 1; }
  /// Whether this group was made from @p layout, or from a layout with the same groups.
  /// O(number of axes). A group of listed members is made from none.
  [[nodiscard]] bool made_from(const GroupLayout& layout) const noexcept { return layout_ && *layout_ == layout; }
  /// Whether the members are those of group @p colour of @p layout, in the same order.
  /// O(number of axes) for a group made from an equal layout, else O(size()).
  /// @throws ConfigError if @p colour is out of range.
  [[nodiscard]] bool same_members(const GroupLayout& layout, int colour) const;
  /// The members' communicator.
  [[nodiscard]] const Communicator& communicator() const noexcept { return *communicator_; }

 private:
  // shared_as(): the members of a layout's group over a communicator already checked.
  struct Sharing {};
  ProcessGroup(Sharing, const GroupLayout& layout, int colour, std::shared_ptr<const Communicator> communicator)
      : layout_(layout), colour_(colour), communicator_(std::move(communicator)) {}

  std::vector<int> listed_;            // the members, unless implied by layout_
  std::optional<GroupLayout> layout_;  // with colour_: the members of a layout's group
  int colour_ = 0;
  std::shared_ptr<const Communicator> communicator_;
};

/// Builds the caller's group of @p layout over @p parent, whose rank r must be
/// global rank r of the layout: one split call (none for groups of one rank, which
/// get parent.self()), in O(number of axes) whatever the group's size, or, as
/// options.creation chooses on a backend that can, one create_group() over the group's
/// members. Every member of @p parent must call it: a rank in no group of the layout
/// (GroupLayout::kNoGroup, as on the middle pipeline stages of the embedding kinds)
/// takes part in a split with Communicator::kNoColour, and in no creation over members,
/// and gets std::nullopt.
/// @param parent the communicator to split, ranked like the layout's world
/// @param layout the groups, of which the caller builds its own
/// @param options settings of the new communicator
/// @throws ConfigError, CommError or Timeout from the backend's split or creation.
[[nodiscard]] std::optional<ProcessGroup> make_group(const Communicator& parent, const GroupLayout& layout,
                                                     const CommOptions& options = {});

}  // namespace pcx
