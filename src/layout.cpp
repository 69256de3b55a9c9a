#include "pcx/layout.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <utility>

#include "checked.hpp"
#include "pcx/error.hpp"

namespace pcx {
namespace {

// "a, b, c" from one field of every axis. (A loop rather than a ranges pipeline, which
// clang 14 cannot compile against GCC 12's standard library.)
template <class Field>
std::string list_axes(const std::vector<Axis>& axes, Field field) {
  std::vector<std::string> parts;
  for (const Axis& axis : axes) parts.push_back(fmt::format("{}", std::invoke(field, axis)));
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

RankGrid::RankGrid(std::vector<Axis> axes) : axes_(std::move(axes)) {
  if (axes_.empty()) throw ConfigError("a rank grid needs at least one axis");
  for (std::size_t i = 0; i < axes_.size(); ++i) {
    const Axis& axis = axes_[i];
    if (axis.name.empty()) throw ConfigError(fmt::format("axis {} has an empty name", i));
    for (std::size_t j = 0; j < i; ++j) {
      if (axes_[j].name == axis.name) {
        throw ConfigError(fmt::format("axis name '{}' appears twice in the grid", axis.name));
      }
    }
    if (axis.size < 1) {
      throw ConfigError(fmt::format("axis '{}' has size {}; sizes must be at least 1", axis.name, axis.size));
    }
    const auto product = detail::checked_mul(world_size_, axis.size);
    if (!product) {
      throw ConfigError(
          fmt::format("the product of the axis sizes [{}] exceeds {} ranks", list_axes(axes_, &Axis::size), INT_MAX));
    }
    world_size_ = *product;
  }
}

RankGrid RankGrid::from_order(std::string_view order, std::span<const Axis> sizes) {
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (sizes[i].name == sizes[j].name) {
        throw ConfigError(fmt::format("axis '{}' is given two sizes", sizes[i].name));
      }
    }
  }
  if (order.empty()) throw ConfigError("the order string is empty");

  std::vector<Axis> fastest_first;
  for (std::size_t begin = 0; begin <= order.size();) {
    const std::size_t end = std::min(order.find('-', begin), order.size());
    const std::string_view name = order.substr(begin, end - begin);
    if (name.empty()) {
      throw ConfigError(fmt::format("order '{}' has an empty axis name at offset {}", order, begin));
    }
    const auto it = std::ranges::find(sizes, name, &Axis::name);
    if (it == sizes.end()) {
      throw ConfigError(fmt::format("order '{}' names axis '{}', which has no size", order, name));
    }
    if (std::ranges::find(fastest_first, name, &Axis::name) != fastest_first.end()) {
      throw ConfigError(fmt::format("order '{}' names axis '{}' twice", order, name));
    }
    fastest_first.push_back(*it);
    begin = end + 1;
  }
  // Megatron appends the axes an order leaves out; only size-1 axes may be left out.
  for (const Axis& axis : sizes) {
    if (std::ranges::find(fastest_first, axis.name, &Axis::name) != fastest_first.end()) continue;
    if (axis.size != 1) {
      throw ConfigError(fmt::format("axis '{}' has size {} but order '{}' leaves it out", axis.name, axis.size, order));
    }
    fastest_first.push_back(axis);
  }
  std::ranges::reverse(fastest_first);
  return RankGrid(std::move(fastest_first));
}

std::size_t RankGrid::axis_index(std::string_view name) const {
  const auto it = std::ranges::find(axes_, name, &Axis::name);
  if (it == axes_.end()) {
    throw ConfigError(fmt::format("the grid has no axis '{}' (axes: {})", name, list_axes(axes_, &Axis::name)));
  }
  return static_cast<std::size_t>(it - axes_.begin());
}

std::vector<int> RankGrid::coordinates(int rank) const {
  if (rank < 0 || rank >= world_size_) {
    throw ConfigError(fmt::format("rank {} is outside the world [0, {})", rank, world_size_));
  }
  std::vector<int> coords(axes_.size());
  for (std::size_t i = axes_.size(); i-- > 0;) {
    coords[i] = rank % axes_[i].size;
    rank /= axes_[i].size;
  }
  return coords;
}

int RankGrid::rank_at(std::span<const int> coordinates) const {
  if (coordinates.size() != axes_.size()) {
    throw ConfigError(fmt::format("{} coordinates given for a grid of {} axes", coordinates.size(), axes_.size()));
  }
  int rank = 0;
  for (std::size_t i = 0; i < axes_.size(); ++i) {
    if (coordinates[i] < 0 || coordinates[i] >= axes_[i].size) {
      throw ConfigError(
          fmt::format("coordinate {} is outside axis '{}' of size {}", coordinates[i], axes_[i].name, axes_[i].size));
    }
    rank = rank * axes_[i].size + coordinates[i];  // cannot overflow: bounded by world_size_
  }
  return rank;
}

GroupLayout RankGrid::along(std::span<const std::string_view> varying) const {
  std::vector<bool> is_varying(axes_.size(), false);
  for (const std::string_view name : varying) {
    const std::size_t index = axis_index(name);
    if (is_varying[index]) throw ConfigError(fmt::format("axis '{}' is selected twice", name));
    is_varying[index] = true;
  }
  std::vector<GroupLayout::Dim> dims;
  int stride = 1;
  int group_size = 1;
  for (std::size_t i = axes_.size(); i-- > 0;) {
    const int size = axes_[i].size;
    if (size > 1) dims.push_back({size, stride, is_varying[i]});
    if (is_varying[i]) group_size *= size;
    stride *= size;  // bounded by world_size_, checked at construction
  }
  std::ranges::reverse(dims);
  return GroupLayout(std::move(dims), world_size_, group_size);
}

GroupLayout RankGrid::along(std::initializer_list<std::string_view> varying) const {
  return along(std::span<const std::string_view>(varying.begin(), varying.size()));
}

GroupLayout RankGrid::along_names(std::string_view varying) const {
  std::vector<std::string_view> names;
  for (std::size_t begin = 0; begin <= varying.size();) {
    const std::size_t end = std::min(varying.find('-', begin), varying.size());
    if (end == begin) {
      throw ConfigError(fmt::format("axes '{}' have an empty axis name at offset {}", varying, begin));
    }
    names.push_back(varying.substr(begin, end - begin));
    begin = end + 1;
  }
  return along(names);
}

GroupLayout RankGrid::along_positions(std::string_view axis, std::span<const int> positions) const {
  const int size = axes_[axis_index(axis)].size;
  if (positions.empty()) throw ConfigError(fmt::format("no position on axis '{}' is kept", axis));
  for (std::size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] < 0 || positions[i] >= size) {
      throw ConfigError(fmt::format("position {} is outside axis '{}' of size {}", positions[i], axis, size));
    }
    if (i > 0 && positions[i] <= positions[i - 1]) {
      throw ConfigError(
          fmt::format("positions [{}] on axis '{}' are not ascending and distinct", fmt::join(positions, ", "), axis));
    }
  }
  GroupLayout layout = along({axis});
  // Keeping every position keeps every rank: an ordinary layout, equal to along().
  if (std::cmp_equal(positions.size(), size)) return layout;
  layout.positions_.assign(positions.begin(), positions.end());
  layout.group_size_ = static_cast<int>(positions.size());
  return layout;
}

// Neighbouring dims that both vary or are both fixed, and are contiguous (the slower one's
// stride spans the faster one), are one dim: merged, every query gives the same answer, and
// two layouts with the same groups in the same order have the same dims, so that == compares
// groups whatever grid they were cut from.
GroupLayout::GroupLayout(std::vector<Dim> dims, int world_size, int group_size)
    : world_size_(world_size), span_(world_size), group_size_(group_size), group_count_(world_size / group_size) {
  for (const Dim& dim : dims) {
    if (!dims_.empty()) {
      Dim& slower = dims_.back();
      if (slower.varying == dim.varying && slower.stride == dim.size * dim.stride) {
        slower = {slower.size * dim.size, dim.stride, dim.varying};
        continue;
      }
    }
    dims_.push_back(dim);
  }
}

int GroupLayout::digit(const Dim& dim, int rank) const {
  const int coordinate = rank / dim.stride % dim.size;
  if (!dim.varying || positions_.empty()) return coordinate;
  const auto kept = std::ranges::lower_bound(positions_, coordinate);
  return kept != positions_.end() && *kept == coordinate ? static_cast<int>(kept - positions_.begin()) : kNoGroup;
}

void GroupLayout::check_rank(int rank) const {
  if (rank < 0 || rank >= world_size_) {
    throw ConfigError(fmt::format("rank {} is outside the world [0, {})", rank, world_size_));
  }
}

int GroupLayout::in_part(int rank) const noexcept {
  return rank >= offset_ && rank - offset_ < span_ ? rank - offset_ : kNoGroup;
}

int GroupLayout::colour(int rank) const {
  check_rank(rank);
  rank = in_part(rank);
  if (rank == kNoGroup) return kNoGroup;
  int colour = 0;
  for (const Dim& dim : dims_) {
    const int d = digit(dim, rank);
    if (!dim.varying) {
      colour = colour * dim.size + d;
    } else if (d == kNoGroup) {
      return kNoGroup;
    }
  }
  return colour;
}

int GroupLayout::group_rank(int rank) const {
  check_rank(rank);
  rank = in_part(rank);
  if (rank == kNoGroup) return kNoGroup;
  int index = 0;
  for (const Dim& dim : dims_) {
    if (!dim.varying) continue;
    const int d = digit(dim, rank);
    if (d == kNoGroup) return kNoGroup;
    // Only a layout of one varying axis keeps some positions, so its radix is the group size.
    index = index * (positions_.empty() ? dim.size : group_size_) + d;
  }
  return index;
}

int GroupLayout::global_rank(int colour, int group_rank) const {
  if (colour < 0 || colour >= group_count()) {
    throw ConfigError(fmt::format("group {} is outside [0, {})", colour, group_count()));
  }
  if (group_rank < 0 || group_rank >= group_size_) {
    throw ConfigError(fmt::format("group rank {} is outside [0, {})", group_rank, group_size_));
  }
  int rank = offset_;
  for (auto dim = dims_.rbegin(); dim != dims_.rend(); ++dim) {
    const bool kept = dim->varying && !positions_.empty();
    int& digits = dim->varying ? group_rank : colour;
    const int radix = kept ? group_size_ : dim->size;
    const int coordinate = kept ? positions_[static_cast<std::size_t>(digits % radix)] : digits % radix;
    rank += coordinate * dim->stride;
    digits /= radix;
  }
  return rank;
}

std::vector<int> GroupLayout::group(int colour) const {
  std::vector<int> members(static_cast<std::size_t>(group_size_));
  members[0] = global_rank(colour, 0);
  if (!positions_.empty()) {
    for (int i = 1; i < group_size_; ++i) members[static_cast<std::size_t>(i)] = global_rank(colour, i);
    return members;
  }
  // Expand one varying axis at a time, slowest first, so the list stays ascending.
  // Filling from the back lets the expansion run in place.
  std::size_t filled = 1;
  for (const Dim& dim : dims_) {
    if (!dim.varying) continue;
    const auto size = static_cast<std::size_t>(dim.size);
    for (std::size_t i = filled; i-- > 0;) {
      const int first = members[i];
      for (std::size_t c = size; c-- > 0;) members[i * size + c] = first + static_cast<int>(c) * dim.stride;
    }
    filled *= size;
  }
  return members;
}

std::vector<int> GroupLayout::group_of(int rank) const {
  const int c = colour(rank);
  return c == kNoGroup ? std::vector<int>{} : group(c);
}

std::vector<std::vector<int>> GroupLayout::groups() const {
  std::vector<std::vector<int>> all;
  all.reserve(static_cast<std::size_t>(group_count()));
  for (int c = 0; c < group_count(); ++c) all.push_back(group(c));
  return all;
}

GroupLayout GroupLayout::subgroups(int stride, int size) const {
  if (!positions_.empty()) {
    throw ConfigError("subgroups of a layout that leaves ranks out (kept positions) are not defined");
  }
  if (stride < 1 || size < 1 || group_size_ % stride != 0 || group_size_ / stride % size != 0) {
    throw ConfigError(fmt::format(
        "subgroups of {} members {} apart do not fit groups of {} ranks (stride x size must divide the group size)",
        size, stride, group_size_));
  }
  // Cut the varying dims so that group ranks stride and stride * size fall between dims,
  // then keep varying only the dims between the two cuts.
  std::vector<Dim> dims = dims_;
  auto cut = [&dims](int boundary) {
    int below = 1;  // group ranks spanned by the varying dims faster than *dim
    for (auto dim = dims.end(); dim != dims.begin() && below < boundary;) {
      --dim;
      if (!dim->varying) continue;
      if (below * dim->size > boundary) {
        const int inner = boundary / below;
        if (boundary % below != 0 || dim->size % inner != 0) {
          throw ConfigError(
              fmt::format("group rank {} is not a boundary of this layout's grid: its groups step through {} members "
                          "{} ranks apart every {} group ranks",
                          boundary, dim->size, dim->stride, below));
        }
        const Dim outer{dim->size / inner, dim->stride * inner, true};
        *dim = {inner, dim->stride, true};
        dims.insert(dim, outer);
        return;
      }
      below *= dim->size;
    }
  };
  if (size > 1) {  // subgroups of one rank are single ranks whatever the cut
    cut(stride);
    cut(stride * size);
  }
  int below = 1;
  for (auto dim = dims.rbegin(); dim != dims.rend(); ++dim) {
    if (!dim->varying) continue;
    dim->varying = below >= stride && below < stride * size;
    below *= dim->size;
  }
  return placed_like_this(GroupLayout(std::move(dims), span_, size));
}

GroupLayout GroupLayout::complement() const {
  if (!positions_.empty()) {
    throw ConfigError("the complement of a layout that leaves ranks out (kept positions) is not defined");
  }
  std::vector<Dim> dims = dims_;
  for (Dim& dim : dims) dim.varying = !dim.varying;
  return placed_like_this(GroupLayout(std::move(dims), span_, group_count_));
}

GroupLayout GroupLayout::shifted(int offset, int world_size) const {
  // In 64 bits: both are at most INT_MAX.
  if (offset < 0 || static_cast<long long>(offset) + world_size_ > world_size) {
    throw ConfigError(fmt::format("a layout of {} ranks shifted by {} does not fit in a world of {} ranks", world_size_,
                                  offset, world_size));
  }
  GroupLayout layout = *this;
  layout.offset_ += offset;
  layout.world_size_ = world_size;
  return layout;
}

GroupLayout GroupLayout::placed_like_this(GroupLayout layout) const {
  layout.offset_ = offset_;
  layout.world_size_ = world_size_;
  return layout;
}

}  // namespace pcx
