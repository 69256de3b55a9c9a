#pragma once
/// @file layout.hpp
/// @brief The rank-layout engine: the world as a grid of ranks with named axes.
///
/// Every group kind of pcx is a view of such a grid: a group is the set of ranks
/// that vary some axes while the other axes stay fixed. Nothing here communicates.

#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pcx {

/// One named dimension of a RankGrid.
struct Axis {
  std::string name;  ///< Unique, non-empty name, for example "tensor".
  int size = 1;      ///< Number of positions along the axis, at least 1.

  /// Same name and size.
  friend bool operator==(const Axis&, const Axis&) = default;
};

class GroupLayout;

/// A world of ranks laid out as a row-major grid: the first axis is the slowest,
/// the last the fastest, like the indices of a C array.
///
/// A rank's global number is the row-major index of its coordinates. RankGrid is
/// a regular value: copyable and comparable.
class RankGrid {
 public:
  /// Builds a grid from its axes, slowest first.
  /// @throws ConfigError if there is no axis, a name is empty or repeated, a size
  ///         is below 1, or the product of the sizes does not fit in an `int`.
  explicit RankGrid(std::vector<Axis> axes);

  /// Builds a grid from a Megatron-style order string such as `"tp-cp-ep-dp-pp"`,
  /// which lists axes fastest first. Axes of size 1 that the order leaves out are
  /// appended as the slowest axes, as Megatron-Core's RankGenerator does.
  /// @param order axis names joined by '-', fastest first
  /// @param sizes the size of every axis named in @p order (and of optional
  ///        size-1 axes), in any order
  /// @throws ConfigError if the order is empty or malformed, names an axis that
  ///         @p sizes lacks or names one twice, or leaves out an axis larger than 1.
  static RankGrid from_order(std::string_view order, std::span<const Axis> sizes);

  /// Number of ranks: the product of all axis sizes.
  [[nodiscard]] int world_size() const noexcept { return world_size_; }

  /// The axes, slowest first.
  [[nodiscard]] const std::vector<Axis>& axes() const noexcept { return axes_; }

  /// Position of the axis called @p name, counted from the slowest.
  /// @throws ConfigError if there is no such axis.
  [[nodiscard]] std::size_t axis_index(std::string_view name) const;

  /// Coordinates of @p rank, one per axis, slowest first.
  /// @throws ConfigError if @p rank is outside [0, world_size()).
  [[nodiscard]] std::vector<int> coordinates(int rank) const;

  /// The global rank at @p coordinates (one per axis, slowest first).
  /// @throws ConfigError if the number of coordinates or any coordinate is out of range.
  [[nodiscard]] int rank_at(std::span<const int> coordinates) const;

  /// The groups of ranks that vary the named axes while the other axes stay fixed.
  /// An empty list gives groups of one rank each.
  /// @throws ConfigError if a name is unknown or repeated.
  [[nodiscard]] GroupLayout along(std::span<const std::string_view> varying) const;

  /// @copydoc along(std::span<const std::string_view>) const
  [[nodiscard]] GroupLayout along(std::initializer_list<std::string_view> varying) const;

  /// The groups that vary the axes named in @p varying, joined by '-' ("tp-dp"), as
  /// Megatron-Core's `RankGenerator::get_ranks` takes them; the order of the names
  /// does not matter.
  /// @throws ConfigError if a name is empty, unknown or repeated.
  [[nodiscard]] GroupLayout along_names(std::string_view varying) const;

  /// The groups that vary the one axis @p axis, keeping only the ranks whose coordinate
  /// on it is one of @p positions: the other ranks belong to no group (Megatron's
  /// embedding groups are the first and last position of the pipeline axis).
  /// @param axis the axis that varies
  /// @param positions ascending, distinct coordinates on @p axis, at least one
  /// @throws ConfigError if the axis is unknown or @p positions is empty, out of range,
  ///         not ascending or repeats a position.
  [[nodiscard]] GroupLayout along_positions(std::string_view axis, std::span<const int> positions) const;

  /// Same axes in the same order.
  friend bool operator==(const RankGrid&, const RankGrid&) = default;

 private:
  std::vector<Axis> axes_;
  int world_size_ = 1;
};

/// The groups of a RankGrid's world that vary a set of axes.
///
/// Groups are numbered by their *colour*: the row-major index of the fixed axes'
/// coordinates. Inside a group, members are in ascending global rank, and a
/// member's *group rank* is its index. Every query on one rank costs O(number of
/// axes), except listing a group, which costs O(group size).
///
/// Usually every rank is in exactly one group. A layout made by
/// RankGrid::along_positions() leaves some ranks out, and so does one shifted() into a
/// larger world: for them colour() and group_rank() give kNoGroup, and covers_world() is
/// false.
class GroupLayout {
 public:
  /// colour() and group_rank() of a rank that belongs to no group. Equal to
  /// Communicator::kNoColour, the colour with which such a rank joins a split.
  static constexpr int kNoGroup = -1;

  /// Number of ranks in the world.
  [[nodiscard]] int world_size() const noexcept { return world_size_; }
  /// Number of ranks in every group.
  [[nodiscard]] int group_size() const noexcept { return group_size_; }
  /// Number of groups; group_count() * group_size() is the number of ranks in a group.
  [[nodiscard]] int group_count() const noexcept { return group_count_; }
  /// Whether every rank of the world is in a group.
  [[nodiscard]] bool covers_world() const noexcept { return positions_.empty() && span_ == world_size_; }
  /// The first rank of the part of the world the groups lie in: 0 unless shifted().
  [[nodiscard]] int offset() const noexcept { return offset_; }

  /// Index of the group of @p rank among all groups, in [0, group_count()), usable
  /// as the colour of a communicator split; kNoGroup if @p rank is in no group.
  /// @throws ConfigError if @p rank is outside [0, world_size()).
  [[nodiscard]] int colour(int rank) const;

  /// Index of @p rank inside its group, in [0, group_size()); kNoGroup if @p rank is
  /// in no group.
  /// @throws ConfigError if @p rank is outside [0, world_size()).
  [[nodiscard]] int group_rank(int rank) const;

  /// Global rank of member @p group_rank of group @p colour.
  /// @throws ConfigError if either index is out of range.
  [[nodiscard]] int global_rank(int colour, int group_rank) const;

  /// Members of group @p colour, ascending.
  /// @throws ConfigError if @p colour is outside [0, group_count()).
  [[nodiscard]] std::vector<int> group(int colour) const;

  /// Members of the group that holds @p rank, ascending; empty if it is in no group.
  /// @throws ConfigError if @p rank is outside [0, world_size()).
  [[nodiscard]] std::vector<int> group_of(int rank) const;

  /// Every group, in colour order. Costs O(world size).
  [[nodiscard]] std::vector<std::vector<int>> groups() const;

  /// The groups within these groups whose members differ only in one digit of their
  /// group rank r, namely (r / @p stride) % @p size: with stride 1, blocks of @p size
  /// consecutive members; with stride S and size group_size() / S, the members at one
  /// position of every block of S. Megatron's distributed-optimizer instances and
  /// hierarchical context parallel groups are such subgroups. Like every layout, the
  /// result is numbered by the row-major index of what stays fixed.
  /// @throws ConfigError if @p stride or @p size is below 1, @p stride × @p size does not
  ///         divide group_size(), the layout leaves ranks out (RankGrid::along_positions()),
  ///         or the subgroups are not regular on its grid: a boundary of them falls inside
  ///         a run of members that the grid does not cut there (only with an order string
  ///         that separates the axes of the group).
  [[nodiscard]] GroupLayout subgroups(int stride, int size) const;

  /// The groups of the ranks that hold one group rank in these groups: member i of every
  /// group (Megatron's model parallel groups are this of its data-context groups, and
  /// its distributed-optimizer instances this of its inter-instance groups).
  /// @throws ConfigError if the layout leaves ranks out (RankGrid::along_positions()).
  [[nodiscard]] GroupLayout complement() const;

  /// The same groups over a larger world, as Megatron's `rank_offset` lays a grid over
  /// part of the ranks: every member moved up by @p offset, in a world of @p world_size
  /// ranks, where the ranks outside [offset, offset + world_size()) are in no group.
  /// @throws ConfigError if @p offset is negative or the part does not fit in @p world_size.
  [[nodiscard]] GroupLayout shifted(int offset, int world_size) const;

  /// Same world and the same groups, in the same colour and member order, whatever
  /// grids the two layouts were cut from.
  friend bool operator==(const GroupLayout&, const GroupLayout&) = default;

 private:
  friend class RankGrid;

  struct Dim {
    int size;
    int stride;  // distance in global rank between neighbours along this axis
    bool varying;
    friend bool operator==(const Dim&, const Dim&) = default;
  };

  GroupLayout(std::vector<Dim> dims, int world_size, int group_size);
  void check_rank(int rank) const;
  // @p layout, cut from this one's grid, in this one's part of its world.
  [[nodiscard]] GroupLayout placed_like_this(GroupLayout layout) const;
  // The rank's index in the part, or kNoGroup outside it.
  [[nodiscard]] int in_part(int rank) const noexcept;
  // The coordinate of @p rank on @p dim as a digit of its group rank or colour, or
  // kNoGroup for a position left out.
  [[nodiscard]] int digit(const Dim& dim, int rank) const;

  std::vector<Dim> dims_;  // slowest first, axes of size 1 left out, contiguous neighbours merged
  int world_size_;
  int offset_ = 0;  // the first rank of the part the grid covers
  int span_;        // ranks in that part: the grid's world
  int group_size_;
  int group_count_;
  // The positions kept on the one varying axis; empty when every rank is in a group.
  std::vector<int> positions_;
};

}  // namespace pcx
