#pragma once
/// @file process_group.hpp
/// @brief A group of ranks with the communicator it owns.

#include <memory>
#include <vector>

#include "pcx/communicator.hpp"
#include "pcx/layout.hpp"

namespace pcx {

/// An ordered list of global ranks and the communicator that connects them.
///
/// Member i of the list is group rank i of the communicator. Move-only: the group
/// owns its communicator, which is released when the group is destroyed.
class ProcessGroup {
 public:
  /// @param ranks global ranks of the members, in group-rank order
  /// @param communicator the members' communicator, of the same size
  /// @throws ConfigError if @p communicator is null, its size differs from the number of
  ///         ranks, or a rank is listed twice.
  ProcessGroup(std::vector<int> ranks, std::unique_ptr<Communicator> communicator);

  /// Takes over @p other's ranks and communicator.
  ProcessGroup(ProcessGroup&& other) noexcept = default;
  /// Releases this group's communicator, then takes over @p other's.
  ProcessGroup& operator=(ProcessGroup&& other) noexcept = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  ~ProcessGroup() = default;

  /// Global ranks of the members, in group-rank order.
  [[nodiscard]] const std::vector<int>& ranks() const noexcept { return ranks_; }
  /// Number of members.
  [[nodiscard]] int size() const noexcept { return static_cast<int>(ranks_.size()); }
  /// This process's group rank.
  [[nodiscard]] int rank() const noexcept { return communicator_->rank(); }
  /// Global rank of group rank @p group_rank.
  /// @throws ConfigError if @p group_rank is outside [0, size()).
  [[nodiscard]] int global_rank(int group_rank) const;
  /// Whether global rank @p global is a member.
  [[nodiscard]] bool contains(int global) const noexcept;
  /// The members' communicator.
  [[nodiscard]] const Communicator& communicator() const noexcept { return *communicator_; }

 private:
  std::vector<int> ranks_;
  std::unique_ptr<Communicator> communicator_;
};

/// Builds the caller's group of @p layout over @p parent, whose rank r must be
/// global rank r of the layout: one split call (none for groups of one rank, which
/// get a SelfCommunicator). Every member of @p parent must call it.
/// @param parent the communicator to split, ranked like the layout's world
/// @param layout the groups, of which the caller builds its own
/// @param options settings of the new communicator
/// @throws ConfigError, CommError or Timeout from the backend's split.
[[nodiscard]] ProcessGroup make_group(const Communicator& parent, const GroupLayout& layout,
                                      const CommOptions& options = {});

}  // namespace pcx
