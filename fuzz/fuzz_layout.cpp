// libFuzzer target: pcx::RankGrid and pcx::GroupLayout against a reference model.
//
// Input, read from the front (missing bytes read as 0):
//   byte        number of axes, % 7 (0..6; 0 must be refused)
//   per axis    name byte (% 8 over "a" "b" "c" "d" "e" "f" "" "x-y": repeats and empty
//               names must be refused), size byte (< 0xE0: 1..8; < 0xF0: 9..24; else
//               the next 4 bytes, little endian, as a raw int: zero, negative, huge)
//   byte        number of selected axes, % 8; then one name byte each (% 9, the 9th
//               name "zz" is not in any grid)
//   byte        length of an order string for RankGrid::from_order, % 24; then one
//               byte per character (% 9 over "abcdef-xy")
//   the rest    up to 8 raw ints used as ranks, colours and coordinates to probe
//
// Oracles: the constructor, from_order and along() throw ConfigError exactly when the
// reference rules say so (and nothing else); for a world of at most 2^16 ranks, the
// groups partition the world, each ascending and of group_size(); colour() is the
// row-major index of the fixed coordinates and group_rank() that of the varying ones
// (every rank up to 1024 ranks, a spread sample above); every query with an out-of-range
// argument throws ConfigError.

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"
#include "pcx/error.hpp"
#include "pcx/layout.hpp"

namespace {

using pcx::Axis;
using pcx::ConfigError;
using pcx::RankGrid;
using pcx_fuzz::expect_throws;

constexpr std::array<std::string_view, 9> kNames = {"a", "b", "c", "d", "e", "f", "", "x-y", "zz"};
constexpr std::string_view kOrderChars = "abcdef-xy";
constexpr int kMaxListedWorld = 1 << 16;

// What RankGrid's constructor must accept.
bool reference_grid_ok(const std::vector<Axis>& axes) {
  if (axes.empty()) return false;
  long long product = 1;
  for (std::size_t i = 0; i < axes.size(); ++i) {
    if (axes[i].name.empty() || axes[i].size < 1) return false;
    for (std::size_t j = 0; j < i; ++j) {
      if (axes[j].name == axes[i].name) return false;
    }
    product *= axes[i].size;  // at most 6 factors below 2^31 after each check: no overflow
    if (product > INT_MAX) return false;
  }
  return true;
}

// What RankGrid::from_order(order, sizes) must return, or nothing if it must throw.
std::optional<std::vector<Axis>> reference_from_order(std::string_view order, const std::vector<Axis>& sizes) {
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (sizes[i].name == sizes[j].name) return std::nullopt;
    }
  }
  if (order.empty()) return std::nullopt;
  std::vector<Axis> fastest_first;
  std::size_t begin = 0;
  while (true) {
    const std::size_t dash = order.find('-', begin);
    const std::string_view name = order.substr(begin, dash == std::string_view::npos ? order.npos : dash - begin);
    if (name.empty()) return std::nullopt;
    const Axis* found = nullptr;
    for (const Axis& axis : sizes) {
      if (axis.name == name) found = &axis;
    }
    if (found == nullptr) return std::nullopt;
    for (const Axis& axis : fastest_first) {
      if (axis.name == name) return std::nullopt;
    }
    fastest_first.push_back(*found);
    if (dash == std::string_view::npos) break;
    begin = dash + 1;
  }
  for (const Axis& axis : sizes) {
    bool listed = false;
    for (const Axis& a : fastest_first) listed = listed || a.name == axis.name;
    if (listed) continue;
    if (axis.size != 1) return std::nullopt;
    fastest_first.push_back(axis);
  }
  std::vector<Axis> slowest_first(fastest_first.rbegin(), fastest_first.rend());
  if (!reference_grid_ok(slowest_first)) return std::nullopt;
  return slowest_first;
}

void check_from_order(std::string_view order, const std::vector<Axis>& sizes) {
  const std::optional<std::vector<Axis>> expected = reference_from_order(order, sizes);
  if (!expected) {
    expect_throws<ConfigError>([&] { (void)RankGrid::from_order(order, sizes); },
                               "from_order accepted an order the rules refuse");
    return;
  }
  const RankGrid grid = RankGrid::from_order(order, sizes);  // must not throw
  PCX_FUZZ_CHECK(grid.axes() == *expected);
}

// Row-major coordinates of rank, slowest axis first, computed independently.
std::vector<int> reference_coordinates(const std::vector<Axis>& axes, int rank) {
  std::vector<int> coords(axes.size());
  for (std::size_t i = axes.size(); i-- > 0;) {
    coords[i] = rank % axes[i].size;
    rank /= axes[i].size;
  }
  return coords;
}

void check_grid(const RankGrid& grid, const std::vector<Axis>& axes, const std::vector<std::string_view>& selection,
                const std::vector<int>& probes) {
  long long product = 1;
  for (const Axis& axis : axes) product *= axis.size;
  const int world = static_cast<int>(product);
  PCX_FUZZ_CHECK(grid.world_size() == world);
  PCX_FUZZ_CHECK(grid.axes() == axes);
  for (std::size_t i = 0; i < axes.size(); ++i) PCX_FUZZ_CHECK(grid.axis_index(axes[i].name) == i);
  expect_throws<ConfigError>([&] { (void)grid.axis_index("zz"); }, "axis_index of an unknown name did not throw");

  // coordinates and rank_at on probe ranks, in range or not.
  std::vector<int> ranks = {0, world - 1, -1, world, INT_MIN, INT_MAX};
  ranks.insert(ranks.end(), probes.begin(), probes.end());
  for (const int r : ranks) {
    if (r < 0 || r >= world) {
      expect_throws<ConfigError>([&] { (void)grid.coordinates(r); }, "coordinates(out of range) did not throw");
      continue;
    }
    const std::vector<int> coords = grid.coordinates(r);
    PCX_FUZZ_CHECK(coords == reference_coordinates(axes, r));
    PCX_FUZZ_CHECK(grid.rank_at(coords) == r);
    std::vector<int> bad = coords;
    bad.back() = axes.back().size;
    expect_throws<ConfigError>([&] { (void)grid.rank_at(bad); }, "rank_at(coordinate == size) did not throw");
    bad.back() = -1;
    expect_throws<ConfigError>([&] { (void)grid.rank_at(bad); }, "rank_at(coordinate -1) did not throw");
    bad = coords;
    bad.push_back(0);
    expect_throws<ConfigError>([&] { (void)grid.rank_at(bad); }, "rank_at(too many coordinates) did not throw");
  }

  // along(): refused exactly when a name is unknown or repeated.
  std::vector<bool> varying(axes.size(), false);
  bool selection_ok = true;
  for (const std::string_view name : selection) {
    std::size_t index = axes.size();
    for (std::size_t i = 0; i < axes.size(); ++i) {
      if (axes[i].name == name) index = i;
    }
    if (index == axes.size() || varying[index]) {
      selection_ok = false;
      break;
    }
    varying[index] = true;
  }
  if (!selection_ok) {
    expect_throws<ConfigError>([&] { (void)grid.along(selection); }, "along() accepted an unknown or repeated axis");
    return;
  }
  const pcx::GroupLayout layout = grid.along(selection);
  PCX_FUZZ_CHECK(layout == grid.along(selection));  // deterministic

  long long group_size = 1;
  for (std::size_t i = 0; i < axes.size(); ++i) {
    if (varying[i]) group_size *= axes[i].size;
  }
  PCX_FUZZ_CHECK(layout.world_size() == world);
  PCX_FUZZ_CHECK(layout.group_size() == group_size);
  PCX_FUZZ_CHECK(layout.group_count() == world / group_size);

  // Probes, any value: throw exactly when out of range.
  const int count = layout.group_count();
  const int size = layout.group_size();
  for (std::size_t i = 0; i < probes.size(); ++i) {
    const int r = probes[i];
    const int g = probes[(i + 1) % probes.size()];
    if (r < 0 || r >= world) {
      expect_throws<ConfigError>([&] { (void)layout.colour(r); }, "colour(out of range) did not throw");
      expect_throws<ConfigError>([&] { (void)layout.group_of(r); }, "group_of(out of range) did not throw");
    } else {
      (void)layout.colour(r);
      (void)layout.group_rank(r);
    }
    if (r < 0 || r >= count || g < 0 || g >= size) {
      expect_throws<ConfigError>([&] { (void)layout.global_rank(r, g); }, "global_rank(out of range) did not throw");
    } else {
      (void)layout.global_rank(r, g);
    }
  }

  if (world > kMaxListedWorld) return;
  (void)pcx_fuzz::check_layout(layout, world, probes);
  // colour is the row-major index of the fixed coordinates, group rank that of the varying ones
  // (every rank of a small world, a spread sample of a large one).
  const int stride = pcx_fuzz::sample_stride(world);
  const int first =
      probes.empty() ? 0 : static_cast<int>(static_cast<unsigned>(probes[0]) % static_cast<unsigned>(stride));
  for (int r = first; r < world; r += stride) {
    const std::vector<int> coords = reference_coordinates(axes, r);
    long long colour = 0;
    long long index = 0;
    for (std::size_t i = 0; i < axes.size(); ++i) {
      long long& digits = varying[i] ? index : colour;
      digits = digits * axes[i].size + coords[i];
    }
    PCX_FUZZ_CHECK(layout.colour(r) == colour);
    PCX_FUZZ_CHECK(layout.group_rank(r) == index);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return pcx_fuzz::guard([&] {
    pcx_fuzz::Bytes in(data, size);
    std::vector<Axis> axes(in.byte() % 7);
    for (Axis& axis : axes) {
      axis.name = kNames[in.byte() % 8];
      axis.size = in.value([](std::uint8_t b) { return b < 0xE0 ? b % 8 + 1 : b - 0xE0 + 9; });
    }
    std::vector<std::string_view> selection(in.byte() % 8);
    for (std::string_view& name : selection) name = kNames[in.byte() % 9];
    std::string order(in.byte() % 24, ' ');
    for (char& c : order) c = kOrderChars[in.byte() % kOrderChars.size()];
    std::vector<int> probes;
    while (!in.empty() && probes.size() < 8) probes.push_back(in.raw_int());

    check_from_order(order, axes);

    const bool grid_ok = reference_grid_ok(axes);
    if (!grid_ok) {
      expect_throws<ConfigError>([&] { const RankGrid grid(axes); }, "RankGrid accepted axes the rules refuse");
      return;
    }
    const RankGrid grid(axes);  // must not throw
    PCX_FUZZ_CHECK(RankGrid(grid.axes()) == grid);
    check_grid(grid, axes, selection, probes);
  });
}
