// Tests of the rank-layout engine: RankGrid and GroupLayout.

#define BOOST_TEST_MODULE layout
#include "pcx/layout.hpp"

#include <algorithm>
#include <array>
#include <boost/test/unit_test.hpp>
#include <climits>
#include <cstdint>
#include <random>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "golden.hpp"
#include "pcx/error.hpp"

namespace {

using pcx::Axis;
using pcx::ConfigError;
using pcx::GroupLayout;
using pcx::RankGrid;
using pcx::test::Groups;
using pcx::test::message_names;
using pcx::test::show;

std::size_t idx(int i) { return static_cast<std::size_t>(i); }

// pipeline 2 × data 3 × tensor 2: rank = p*6 + d*2 + t.
RankGrid small_grid() { return RankGrid({{"p", 2}, {"d", 3}, {"t", 2}}); }

}  // namespace

BOOST_AUTO_TEST_SUITE(rank_grid)

BOOST_AUTO_TEST_CASE(world_size_is_the_product_of_the_axis_sizes) {
  BOOST_TEST(small_grid().world_size() == 12);
  BOOST_TEST(RankGrid({{"x", 1}}).world_size() == 1);
  BOOST_TEST(RankGrid({{"a", 1}, {"b", 7}, {"c", 1}}).world_size() == 7);
  BOOST_TEST(RankGrid({{"a", INT_MAX}}).world_size() == INT_MAX);
}

BOOST_AUTO_TEST_CASE(axes_are_kept_slowest_first_and_found_by_name) {
  const RankGrid grid = small_grid();
  BOOST_TEST_REQUIRE(grid.axes().size() == 3u);
  BOOST_TEST(grid.axes()[0].name == "p");
  BOOST_TEST(grid.axes()[2].size == 2);
  BOOST_TEST(grid.axis_index("p") == 0u);
  BOOST_TEST(grid.axis_index("d") == 1u);
  BOOST_TEST(grid.axis_index("t") == 2u);
}

BOOST_AUTO_TEST_CASE(grids_are_regular_values) {
  const RankGrid a = small_grid();
  RankGrid b = a;
  BOOST_TEST((a == b));
  b = RankGrid({{"p", 2}, {"d", 3}, {"t", 3}});
  BOOST_TEST(!(a == b));
  BOOST_TEST(!(RankGrid({{"a", 2}, {"b", 3}}) == RankGrid({{"b", 3}, {"a", 2}})));
}

BOOST_AUTO_TEST_CASE(coordinates_are_row_major_with_the_last_axis_fastest) {
  const RankGrid grid = small_grid();
  BOOST_TEST(grid.coordinates(0) == (std::vector<int>{0, 0, 0}), boost::test_tools::per_element());
  BOOST_TEST(grid.coordinates(1) == (std::vector<int>{0, 0, 1}), boost::test_tools::per_element());
  BOOST_TEST(grid.coordinates(4) == (std::vector<int>{0, 2, 0}), boost::test_tools::per_element());
  BOOST_TEST(grid.coordinates(7) == (std::vector<int>{1, 0, 1}), boost::test_tools::per_element());
  BOOST_TEST(grid.coordinates(11) == (std::vector<int>{1, 2, 1}), boost::test_tools::per_element());
  const std::vector<int> at{1, 1, 0};
  BOOST_TEST(grid.rank_at(at) == 8);
}

BOOST_AUTO_TEST_CASE(coordinates_and_rank_at_round_trip_for_every_rank) {
  for (const RankGrid& grid : {small_grid(), RankGrid({{"a", 1}, {"b", 5}, {"c", 1}, {"d", 3}}), RankGrid({{"x", 1}}),
                               RankGrid({{"a", 4}, {"b", 3}, {"c", 2}, {"d", 5}})}) {
    for (int r = 0; r < grid.world_size(); ++r) {
      const std::vector<int> coords = grid.coordinates(r);
      BOOST_TEST_REQUIRE(coords.size() == grid.axes().size());
      BOOST_TEST(grid.rank_at(coords) == r);
    }
  }
}

BOOST_AUTO_TEST_CASE(ranks_near_the_int_limit_do_not_overflow) {
  // 46340² = 2147395600 ≤ INT_MAX < 46341².
  const RankGrid grid({{"a", 46340}, {"b", 46340}});
  BOOST_TEST(grid.world_size() == 2147395600);
  const int last = grid.world_size() - 1;
  BOOST_TEST(grid.coordinates(last) == (std::vector<int>{46339, 46339}), boost::test_tools::per_element());
  BOOST_TEST(grid.rank_at(std::vector<int>{46339, 46339}) == last);
  const GroupLayout rows = grid.along({"b"});
  BOOST_TEST(rows.colour(last) == 46339);
  BOOST_TEST(rows.group_rank(last) == 46339);
  BOOST_TEST(rows.global_rank(46339, 46339) == last);
  const GroupLayout columns = grid.along({"a"});
  const std::vector<int> column = columns.group_of(last);
  BOOST_TEST_REQUIRE(column.size() == 46340u);
  BOOST_TEST(column.front() == 46339);
  BOOST_TEST(column[1] == 46339 + 46340);
  BOOST_TEST(column.back() == last);
  BOOST_TEST(grid.along({"a", "b"}).group_size() == grid.world_size());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(group_layout)

BOOST_AUTO_TEST_CASE(along_the_fastest_axis_gives_consecutive_pairs) {
  const GroupLayout layout = small_grid().along({"t"});
  BOOST_TEST(layout.world_size() == 12);
  BOOST_TEST(layout.group_size() == 2);
  BOOST_TEST(layout.group_count() == 6);
  BOOST_TEST(show(layout.groups()) == show(Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}}));
}

BOOST_AUTO_TEST_CASE(along_a_middle_axis_gives_strided_groups_in_colour_order) {
  // Colour = row-major index of the fixed axes (p, t).
  const GroupLayout layout = small_grid().along({"d"});
  BOOST_TEST(show(layout.groups()) == show(Groups{{0, 2, 4}, {1, 3, 5}, {6, 8, 10}, {7, 9, 11}}));
  BOOST_TEST(layout.colour(9) == 3);
  BOOST_TEST(layout.group_rank(9) == 1);
  BOOST_TEST(layout.global_rank(2, 2) == 10);
}

BOOST_AUTO_TEST_CASE(along_the_slowest_axis_gives_the_widest_stride) {
  const GroupLayout layout = small_grid().along({"p"});
  BOOST_TEST(show(layout.groups()) == show(Groups{{0, 6}, {1, 7}, {2, 8}, {3, 9}, {4, 10}, {5, 11}}));
}

BOOST_AUTO_TEST_CASE(along_two_axes_lists_members_ascending_whatever_the_name_order) {
  const RankGrid grid = small_grid();
  const Groups expected{{0, 1, 6, 7}, {2, 3, 8, 9}, {4, 5, 10, 11}};
  BOOST_TEST(show(grid.along({"p", "t"}).groups()) == show(expected));
  BOOST_TEST(show(grid.along({"t", "p"}).groups()) == show(expected));
  BOOST_TEST((grid.along({"p", "t"}) == grid.along({"t", "p"})));
  const GroupLayout layout = grid.along({"t", "p"});
  BOOST_TEST(layout.group_rank(7) == 3);
  BOOST_TEST(layout.group_rank(6) == 2);
  BOOST_TEST(layout.colour(9) == 1);
  BOOST_TEST(show(grid.along({"d", "t"}).groups()) == show(Groups{{0, 1, 2, 3, 4, 5}, {6, 7, 8, 9, 10, 11}}));
  BOOST_TEST(show(grid.along({"p", "d"}).groups()) == show(Groups{{0, 2, 4, 6, 8, 10}, {1, 3, 5, 7, 9, 11}}));
}

BOOST_AUTO_TEST_CASE(group_rank_is_the_index_in_the_group_and_global_rank_inverts_it) {
  const RankGrid grid = small_grid();
  for (const GroupLayout& layout : {grid.along({"p"}), grid.along({"d"}), grid.along({"t"}), grid.along({"p", "t"}),
                                    grid.along({"d", "p"}), grid.along({}), grid.along({"p", "d", "t"})}) {
    for (int r = 0; r < grid.world_size(); ++r) {
      const std::vector<int> group = layout.group_of(r);
      const int i = layout.group_rank(r);
      const int c = layout.colour(r);
      BOOST_TEST_REQUIRE(i >= 0);
      BOOST_TEST_REQUIRE(i < layout.group_size());
      BOOST_TEST(group[idx(i)] == r);
      BOOST_TEST(layout.global_rank(c, i) == r);
      BOOST_TEST(show(layout.group(c)) == show(group));
    }
  }
}

BOOST_AUTO_TEST_CASE(groups_partition_the_world) {
  const RankGrid grid({{"a", 3}, {"b", 2}, {"c", 4}});
  for (const GroupLayout& layout :
       {grid.along({"a"}), grid.along({"b"}), grid.along({"c"}), grid.along({"a", "c"}), grid.along({"b", "c"})}) {
    std::vector<int> seen(idx(grid.world_size()), 0);
    const Groups groups = layout.groups();
    BOOST_TEST(groups.size() == idx(layout.group_count()));
    BOOST_TEST(layout.group_count() * layout.group_size() == layout.world_size());
    for (const auto& group : groups) {
      BOOST_TEST(group.size() == idx(layout.group_size()));
      BOOST_TEST(std::ranges::is_sorted(group));
      for (const int r : group) ++seen[idx(r)];
    }
    BOOST_TEST(std::ranges::count(seen, 1) == grid.world_size());
  }
}

BOOST_AUTO_TEST_CASE(size_one_axes_change_nothing) {
  const RankGrid grid({{"a", 1}, {"b", 4}, {"c", 1}});
  BOOST_TEST(grid.coordinates(3) == (std::vector<int>{0, 3, 0}), boost::test_tools::per_element());
  BOOST_TEST(grid.rank_at(std::vector<int>{0, 2, 0}) == 2);
  BOOST_TEST(show(grid.along({"a"}).groups()) == show(Groups{{0}, {1}, {2}, {3}}));
  BOOST_TEST(show(grid.along({"c", "a"}).groups()) == show(Groups{{0}, {1}, {2}, {3}}));
  BOOST_TEST(show(grid.along({"b"}).groups()) == show(Groups{{0, 1, 2, 3}}));
  BOOST_TEST(show(grid.along({"a", "b"}).groups()) == show(Groups{{0, 1, 2, 3}}));
  BOOST_TEST(grid.along({"b"}).colour(3) == 0);
  BOOST_TEST(grid.along({"a"}).colour(3) == 3);
  BOOST_TEST(grid.along({"a"}).group_rank(3) == 0);

  const RankGrid single({{"x", 1}});
  BOOST_TEST(show(single.along({"x"}).groups()) == show(Groups{{0}}));
  BOOST_TEST(show(single.along({}).groups()) == show(Groups{{0}}));
}

BOOST_AUTO_TEST_CASE(an_empty_selection_gives_one_group_per_rank) {
  const GroupLayout layout = small_grid().along({});
  BOOST_TEST(layout.group_size() == 1);
  BOOST_TEST(layout.group_count() == 12);
  for (int r = 0; r < 12; ++r) {
    BOOST_TEST(layout.colour(r) == r);
    BOOST_TEST(layout.group_rank(r) == 0);
    BOOST_TEST(show(layout.group_of(r)) == show(std::vector<int>{r}));
  }
  const std::vector<std::string_view> none;
  BOOST_TEST((small_grid().along(std::span<const std::string_view>(none)) == layout));
}

BOOST_AUTO_TEST_CASE(selecting_every_axis_gives_one_group_of_the_whole_world) {
  const GroupLayout layout = small_grid().along({"t", "d", "p"});
  BOOST_TEST(layout.group_count() == 1);
  BOOST_TEST(show(layout.groups()) == show(Groups{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}}));
  for (int r = 0; r < 12; ++r) {
    BOOST_TEST(layout.colour(r) == 0);
    BOOST_TEST(layout.group_rank(r) == r);
  }
}

BOOST_AUTO_TEST_CASE(layouts_with_the_same_groups_are_equal_whatever_their_grid) {
  const RankGrid line({{"rank", 8}});
  const RankGrid square({{"data", 2}, {"tensor", 4}});
  const RankGrid cube({{"block", 2}, {"a", 2}, {"b", 2}});
  const auto same_answers = [](const GroupLayout& x, const GroupLayout& y) {
    for (int r = 0; r < 8; ++r) {
      if (x.colour(r) != y.colour(r) || x.group_rank(r) != y.group_rank(r)) return false;
    }
    return x.groups() == y.groups();
  };
  // The whole world, cut from three grids.
  BOOST_TEST((square.along({"data", "tensor"}) == line.along({"rank"})));
  BOOST_TEST((cube.along({"block", "a", "b"}) == line.along({"rank"})));
  // Consecutive blocks of 4, and strided pairs, each from two grids.
  BOOST_TEST((cube.along({"a", "b"}) == square.along({"tensor"})));
  BOOST_TEST(same_answers(cube.along({"a", "b"}), square.along({"tensor"})));
  BOOST_TEST((cube.along({"block"}) == square.along({"data"})));
  BOOST_TEST(same_answers(cube.along({"block"}), square.along({"data"})));
  // The same group size with other groups is another layout.
  BOOST_TEST(!(cube.along({"block"}) == cube.along({"b"})));
  BOOST_TEST(!(cube.along({"a"}) == cube.along({"b"})));
  BOOST_TEST(!(cube.along({"block", "b"}) == square.along({"tensor"})));
}

BOOST_AUTO_TEST_CASE(along_accepts_a_span_of_names) {
  const std::vector<std::string> names{"t", "p"};
  const std::vector<std::string_view> views(names.begin(), names.end());
  BOOST_TEST((small_grid().along(std::span<const std::string_view>(views)) == small_grid().along({"p", "t"})));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Megatron order strings, checked against Megatron-Core's RankGenerator (test/data).

namespace {

struct MegatronCase {
  std::string header;
  std::vector<Axis> sizes;  // in Megatron's name_to_size order: tp, pp, dp, ep, cp
  std::string order;
  std::string internal_order;
  std::vector<std::pair<std::string, Groups>> get_ranks;
};

std::vector<MegatronCase> megatron_cases() {
  const auto sections = pcx::test::parse_golden_markdown(pcx::test::read_golden_file("megatron_rank_generator.md"));
  const std::regex generator_re(
      R"(RankGenerator\(tp=(\d+),ep=(\d+),dp=(\d+),pp=(\d+),cp=(\d+),order='([^']*)'\) -> internal order '([^']*)')");
  const std::regex ranks_re(R"(get_ranks\('([^']*)'\) = (.*))");
  std::vector<MegatronCase> cases;
  for (const auto& section : sections) {
    for (const auto& block : section.blocks) {
      std::smatch m;
      if (!std::regex_match(block.header, m, generator_re)) {
        throw std::runtime_error("unreadable Megatron case: " + block.header);
      }
      MegatronCase c;
      c.header = block.header;
      auto size = [&](std::size_t i) { return pcx::test::parse_int(m[i].str()); };
      c.sizes = {{"tp", size(1U)}, {"pp", size(4U)}, {"dp", size(3U)}, {"ep", size(2U)}, {"cp", size(5U)}};
      c.order = m[6].str();
      c.internal_order = m[7].str();
      for (const auto& line : block.lines) {
        std::smatch r;
        if (!std::regex_match(line, r, ranks_re)) throw std::runtime_error("unreadable get_ranks line: " + line);
        c.get_ranks.emplace_back(r[1].str(), pcx::test::parse_groups(r[2].str()));
      }
      cases.push_back(std::move(c));
    }
  }
  return cases;
}

std::vector<std::string> split_dashes(std::string_view text) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (;;) {
    const std::size_t end = text.find('-', begin);
    parts.emplace_back(text.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin));
    if (end == std::string_view::npos) return parts;
    begin = end + 1;
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(megatron_order)

BOOST_AUTO_TEST_CASE(every_rank_generator_case_gives_megatrons_groups) {
  const std::vector<MegatronCase> cases = megatron_cases();
  BOOST_TEST_MESSAGE("megatron_rank_generator.md: " << cases.size() << " cases");
  BOOST_TEST_REQUIRE(!cases.empty());
  std::size_t queries = 0;
  for (const MegatronCase& c : cases) {
    BOOST_TEST_CONTEXT(c.header) {
      const RankGrid grid = RankGrid::from_order(c.order, c.sizes);
      int world = 1;
      for (const Axis& axis : c.sizes) world *= axis.size;
      BOOST_TEST(grid.world_size() == world);

      // Megatron's internal order lists every axis fastest first; it also appends an
      // axis of its own (gtp_remat) that is not one of ours.
      std::vector<std::string> internal;
      for (auto& name : split_dashes(c.internal_order)) {
        if (std::ranges::find(c.sizes, name, &Axis::name) != c.sizes.end()) internal.push_back(name);
      }
      std::vector<std::string> ours;
      for (auto axis = grid.axes().rbegin(); axis != grid.axes().rend(); ++axis) ours.push_back(axis->name);
      BOOST_TEST(fmt::format("{}", fmt::join(ours, "-")) == fmt::format("{}", fmt::join(internal, "-")));

      BOOST_TEST(!c.get_ranks.empty());
      for (const auto& [query, expected] : c.get_ranks) {
        BOOST_TEST_CONTEXT("get_ranks('" << query << "')") {
          const std::vector<std::string> names = split_dashes(query);
          const std::vector<std::string_view> varying(names.begin(), names.end());
          const GroupLayout layout = grid.along(std::span<const std::string_view>(varying));
          BOOST_TEST(show(pcx::test::as_set(layout.groups())) == show(pcx::test::as_set(expected)));
          ++queries;
        }
      }
    }
  }
  BOOST_TEST_MESSAGE("megatron_rank_generator.md: " << queries << " get_ranks queries");
}

BOOST_AUTO_TEST_CASE(order_lists_axes_fastest_first) {
  const std::vector<Axis> sizes{{"tp", 2}, {"pp", 3}, {"dp", 4}};
  const RankGrid grid = RankGrid::from_order("tp-dp-pp", sizes);
  BOOST_TEST((grid == RankGrid({{"pp", 3}, {"dp", 4}, {"tp", 2}})));
  const RankGrid other = RankGrid::from_order("dp-tp-pp", sizes);
  BOOST_TEST((other == RankGrid({{"pp", 3}, {"tp", 2}, {"dp", 4}})));
}

BOOST_AUTO_TEST_CASE(left_out_size_one_axes_become_the_slowest) {
  const std::vector<Axis> sizes{{"tp", 2}, {"ep", 1}, {"dp", 4}};
  const RankGrid grid = RankGrid::from_order("tp-dp", sizes);
  BOOST_TEST(grid.world_size() == 8);
  BOOST_TEST_REQUIRE(grid.axes().size() == 3u);
  BOOST_TEST(grid.axes()[0].name == "ep");
  BOOST_TEST(grid.axes()[0].size == 1);
  BOOST_TEST(show(grid.along({"ep"}).groups()) == show(Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Bad input: each rule gives a ConfigError whose message names the offending value.

BOOST_AUTO_TEST_SUITE(bad_input)

BOOST_AUTO_TEST_CASE(a_grid_without_axes_is_rejected) {
  BOOST_CHECK_EXCEPTION(RankGrid(std::vector<Axis>{}), ConfigError, message_names({"axis"}));
}

BOOST_AUTO_TEST_CASE(an_empty_axis_name_is_rejected_naming_its_position) {
  BOOST_CHECK_EXCEPTION(RankGrid({{"a", 2}, {"", 3}}), ConfigError, message_names({"empty"}, {1}));
}

BOOST_AUTO_TEST_CASE(a_repeated_axis_name_is_rejected_naming_it) {
  BOOST_CHECK_EXCEPTION(RankGrid({{"tensor", 2}, {"data", 2}, {"tensor", 3}}), ConfigError,
                        message_names({"'tensor'"}));
}

BOOST_AUTO_TEST_CASE(an_axis_size_below_one_is_rejected_naming_axis_and_size) {
  BOOST_CHECK_EXCEPTION(RankGrid({{"a", 2}, {"pipe", 0}}), ConfigError, message_names({"pipe"}, {0}));
  BOOST_CHECK_EXCEPTION(RankGrid({{"pipe", -3}}), ConfigError, message_names({"pipe"}, {-3}));
}

BOOST_AUTO_TEST_CASE(a_world_larger_than_int_is_rejected_naming_the_sizes) {
  BOOST_CHECK_EXCEPTION(RankGrid({{"a", 65536}, {"b", 65536}}), ConfigError, message_names({}, {65536}));
  BOOST_CHECK_EXCEPTION(RankGrid({{"a", 46341}, {"b", 46341}}), ConfigError, message_names({}, {46341}));
  BOOST_CHECK_EXCEPTION(RankGrid({{"a", 2}, {"b", INT_MAX}}), ConfigError, message_names({}, {INT_MAX}));
  BOOST_CHECK_EXCEPTION(RankGrid({{"a", 1024}, {"b", 1024}, {"c", 1024}, {"d", 2}}), ConfigError,
                        message_names({}, {1024}));
}

BOOST_AUTO_TEST_CASE(along_an_unknown_axis_is_rejected_naming_it) {
  BOOST_CHECK_EXCEPTION(static_cast<void>(small_grid().along({"t", "zz"})), ConfigError, message_names({"zz"}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(small_grid().axis_index("zz")), ConfigError, message_names({"zz"}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(small_grid().along({""})), ConfigError, message_names({"''"}));
}

BOOST_AUTO_TEST_CASE(an_axis_selected_twice_is_rejected_naming_it) {
  BOOST_CHECK_EXCEPTION(static_cast<void>(small_grid().along({"d", "t", "d"})), ConfigError,
                        message_names({"'d'", "twice"}));
}

BOOST_AUTO_TEST_CASE(a_rank_outside_the_world_is_rejected_naming_it) {
  const RankGrid grid = small_grid();
  BOOST_CHECK_EXCEPTION(static_cast<void>(grid.coordinates(12)), ConfigError, message_names({}, {12}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(grid.coordinates(-1)), ConfigError, message_names({}, {-1}));
  const GroupLayout layout = grid.along({"d"});
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.colour(12)), ConfigError, message_names({}, {12}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.group_rank(-5)), ConfigError, message_names({}, {-5}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.group_of(99)), ConfigError, message_names({}, {99}));
}

BOOST_AUTO_TEST_CASE(a_group_or_group_rank_out_of_range_is_rejected_naming_it) {
  const GroupLayout layout = small_grid().along({"d"});  // 4 groups of 3
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.global_rank(4, 0)), ConfigError, message_names({}, {4}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.global_rank(-1, 0)), ConfigError, message_names({}, {-1}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.global_rank(0, 3)), ConfigError, message_names({}, {3}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.global_rank(0, -2)), ConfigError, message_names({}, {-2}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.group(7)), ConfigError, message_names({}, {7}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(layout.group(-1)), ConfigError, message_names({}, {-1}));
}

BOOST_AUTO_TEST_CASE(coordinates_of_the_wrong_count_or_out_of_range_are_rejected) {
  const RankGrid grid = small_grid();
  BOOST_CHECK_EXCEPTION(static_cast<void>(grid.rank_at(std::vector<int>{1, 2})), ConfigError,
                        message_names({}, {2, 3}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(grid.rank_at(std::vector<int>{0, 0, 0, 0})), ConfigError,
                        message_names({}, {4, 3}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(grid.rank_at(std::vector<int>{0, 5, 0})), ConfigError,
                        message_names({"'d'"}, {5}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(grid.rank_at(std::vector<int>{-1, 0, 0})), ConfigError,
                        message_names({"'p'"}, {-1}));
}

BOOST_AUTO_TEST_CASE(bad_order_strings_are_rejected_naming_the_problem) {
  const std::vector<Axis> sizes{{"tp", 2}, {"dp", 2}, {"pp", 2}, {"ep", 1}};
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("", sizes), ConfigError, message_names({"empty"}));
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp--dp-pp", sizes), ConfigError, message_names({"tp--dp-pp"}));
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp-dp-pp-", sizes), ConfigError, message_names({"tp-dp-pp-"}));
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("-tp-dp-pp", sizes), ConfigError, message_names({"-tp-dp-pp"}));
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp-xp-dp-pp", sizes), ConfigError, message_names({"'xp'"}));
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp-dp-pp-tp", sizes), ConfigError, message_names({"'tp'", "twice"}));
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp-dp", sizes), ConfigError, message_names({"'pp'"}, {2}));
  const std::vector<Axis> twice{{"tp", 2}, {"dp", 2}, {"tp", 2}};
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp-dp", twice), ConfigError, message_names({"'tp'"}));
  const std::vector<Axis> bad_size{{"tp", 2}, {"dp", 0}};
  BOOST_CHECK_EXCEPTION(RankGrid::from_order("tp-dp", bad_size), ConfigError, message_names({"dp"}, {0}));
}

BOOST_AUTO_TEST_CASE(config_errors_are_pcx_errors) {
  try {
    RankGrid({{"a", 0}});
    BOOST_FAIL("no exception");
  } catch (const pcx::Error& error) {
    BOOST_TEST(dynamic_cast<const ConfigError*>(&error) != nullptr);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Property test: random grids and random axis subsets against a direct reference.

namespace {

// The row-major index of the coordinates of the selected (or unselected) axes.
int row_major(const std::vector<Axis>& axes, const std::vector<int>& coords, const std::vector<bool>& selected,
              bool want) {
  int index = 0;
  for (std::size_t i = 0; i < axes.size(); ++i) {
    if (selected[i] == want) index = index * axes[i].size + coords[i];
  }
  return index;
}

// Checks one layout of one grid against the reference; returns "" or the first failure.
std::string check_layout(const RankGrid& grid, const GroupLayout& layout, const std::vector<bool>& selected,
                         std::mt19937& rng) {
  const std::vector<Axis>& axes = grid.axes();
  const int world = grid.world_size();
  int expected_size = 1;
  for (std::size_t i = 0; i < axes.size(); ++i) expected_size *= selected[i] ? axes[i].size : 1;
  if (layout.world_size() != world) return "world_size";
  if (layout.group_size() != expected_size)
    return fmt::format("group_size {} != {}", layout.group_size(), expected_size);
  if (layout.group_count() * layout.group_size() != world) return "group_count";

  // Every rank: coordinates by hand, round trip, colour and group rank.
  std::vector<int> coords(axes.size());
  for (int r = 0; r < world; ++r) {
    int rest = r;
    for (std::size_t i = axes.size(); i-- > 0;) {
      coords[i] = rest % axes[i].size;
      rest /= axes[i].size;
    }
    if (grid.coordinates(r) != coords) return fmt::format("coordinates({})", r);
    if (grid.rank_at(coords) != r) return fmt::format("rank_at(coordinates({}))", r);
    const int colour = row_major(axes, coords, selected, false);
    const int index = row_major(axes, coords, selected, true);
    if (layout.colour(r) != colour) return fmt::format("colour({}) = {}, expected {}", r, layout.colour(r), colour);
    if (layout.group_rank(r) != index) {
      return fmt::format("group_rank({}) = {}, expected {}", r, layout.group_rank(r), index);
    }
  }

  // groups() partitions [0, W); members ascending, of group_size(); global_rank agrees.
  const Groups groups = layout.groups();
  if (groups.size() != idx(layout.group_count())) return "groups().size()";
  std::vector<char> seen(idx(world), 0);
  for (int c = 0; c < layout.group_count(); ++c) {
    const std::vector<int>& group = groups[idx(c)];
    if (group.size() != idx(layout.group_size())) return fmt::format("size of group {}", c);
    for (int i = 0; i < layout.group_size(); ++i) {
      const int r = group[idx(i)];
      if (r < 0 || r >= world) return fmt::format("group {} holds rank {}", c, r);
      if (i > 0 && group[idx(i - 1)] >= r) return fmt::format("group {} is not ascending: {}", c, show(group));
      if (seen[idx(r)]++ != 0) return fmt::format("rank {} is in two groups", r);
      if (layout.colour(r) != c) return fmt::format("colour({}) != {}", r, c);
      if (layout.group_rank(r) != i) return fmt::format("group_rank({}) != {}", r, i);
      if (layout.global_rank(c, i) != r) return fmt::format("global_rank({}, {}) != {}", c, i, r);
    }
  }
  if (std::ranges::count(seen, 1) != world) return "groups() does not cover the world";

  // group_of(r) == groups()[colour(r)] and group_of(r)[group_rank(r)] == r, on sampled ranks.
  for (int k = 0; k < 8; ++k) {
    const int r = static_cast<int>(rng() % static_cast<unsigned>(world));
    const std::vector<int> group = layout.group_of(r);
    if (group != groups[idx(layout.colour(r))]) return fmt::format("group_of({})", r);
    if (group[idx(layout.group_rank(r))] != r) return fmt::format("group_of({})[group_rank]", r);
    if (layout.group(layout.colour(r)) != group) return fmt::format("group(colour({}))", r);
  }
  return {};
}

}  // namespace

BOOST_AUTO_TEST_CASE(random_grids_and_axis_subsets_match_a_direct_reference) {
  constexpr std::uint32_t kSeed = 20240611;
  constexpr int kGrids = 3000;
  constexpr int kMaxWorld = 4096;
  BOOST_TEST_MESSAGE("property test seed " << kSeed << ", " << kGrids << " grids");
  std::mt19937 rng(kSeed);
  int layouts = 0;
  for (int g = 0; g < kGrids; ++g) {
    const int axis_count = 1 + static_cast<int>(rng() % 5);
    std::vector<Axis> axes;
    int world = 1;
    for (int i = 0; i < axis_count; ++i) {
      int size = 1 + static_cast<int>(rng() % 7);
      if (world * size > kMaxWorld) size = 1;
      world *= size;
      axes.push_back({fmt::format("axis{}", i), size});
    }
    const RankGrid grid(axes);
    BOOST_TEST_REQUIRE(grid.world_size() == world);
    for (int s = 0; s < 3; ++s) {
      std::vector<bool> selected(axes.size());
      std::vector<std::string_view> names;
      for (std::size_t i = 0; i < axes.size(); ++i) {
        selected[i] = (rng() & 1U) != 0;
        if (selected[i]) names.push_back(axes[i].name);
      }
      std::shuffle(names.begin(), names.end(), rng);
      const GroupLayout layout = grid.along(std::span<const std::string_view>(names));
      const std::string failure = check_layout(grid, layout, selected, rng);
      if (!failure.empty()) {
        std::vector<int> sizes;
        for (const Axis& axis : axes) sizes.push_back(axis.size);
        BOOST_ERROR("grid " << g << " [" << fmt::format("{}", fmt::join(sizes, "x")) << "] along {"
                            << fmt::format("{}", fmt::join(names, ",")) << "}: " << failure);
        return;
      }
      ++layouts;
    }
  }
  BOOST_TEST(layouts == 3 * kGrids);
}

// ---------------------------------------------------------------------------------------------
// subgroups(): against list slicing of the groups, as Megatron cuts its rank lists.

namespace {

// The members of each group that differ only in digit (r / stride) % size of their index
// r, taken from the group lists themselves.
Groups sliced(const Groups& groups, int stride, int size) {
  Groups result;
  for (const std::vector<int>& group : groups) {
    for (int r = 0; std::cmp_less(r, group.size()); ++r) {
      if (r / stride % size != 0) continue;
      std::vector<int> members;
      for (int j = 0; j < size; ++j) members.push_back(group[idx(r + j * stride)]);
      result.push_back(members);
    }
  }
  std::ranges::sort(result);
  return result;
}

// Whether every group is the first shifted by one offset, as every layout of a grid is.
bool translates(const Groups& groups) {
  return std::ranges::all_of(groups, [&](const std::vector<int>& group) {
    for (std::size_t i = 0; i < group.size(); ++i) {
      if (group[i] - group[0] != groups[0][i] - groups[0][0]) return false;
    }
    return true;
  });
}

}  // namespace

BOOST_AUTO_TEST_SUITE(subgroups)

BOOST_AUTO_TEST_CASE(blocks_and_strides_of_data_context_groups) {
  // tp 2, cp 2, dp 4 (Megatron's order tp-cp-dp): the data-context groups are
  // {0,2,4,...,14} and {1,3,...,15}.
  const RankGrid grid = RankGrid::from_order("tp-cp-dp", std::vector<Axis>{{"tp", 2}, {"cp", 2}, {"dp", 4}});
  const GroupLayout dpcp = grid.along_names("dp-cp");
  BOOST_TEST(show(dpcp.subgroups(1, 4).groups()) == "[[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]");
  BOOST_TEST(show(dpcp.subgroups(4, 2).groups()) ==
             "[[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15]]");
  // Cutting at the whole group or at single members changes nothing / gives single ranks.
  BOOST_TEST((dpcp.subgroups(1, 8) == dpcp));
  BOOST_TEST((dpcp.subgroups(1, 1) == grid.along({})));
  // Levels of a context parallel group of 8 cut as 2 x 4.
  const GroupLayout cp = RankGrid({{"cp", 8}}).along({"cp"});
  BOOST_TEST(show(cp.subgroups(1, 2).groups()) == "[[0, 1], [2, 3], [4, 5], [6, 7]]");
  BOOST_TEST(show(cp.subgroups(2, 4).groups()) == "[[0, 2, 4, 6], [1, 3, 5, 7]]");
}

BOOST_AUTO_TEST_CASE(the_complement_holds_one_group_rank_of_every_group) {
  // Megatron's tp-pp groups are the i-th member of every dp-cp group
  // (test_rank_generator_for_tp_dp_pp); pp 2, dp 2, cp 1, tp 2 on 8 ranks.
  const RankGrid grid =
      RankGrid::from_order("tp-cp-dp-pp", std::vector<Axis>{{"tp", 2}, {"cp", 1}, {"dp", 2}, {"pp", 2}});
  BOOST_TEST((grid.along_names("dp-cp").complement() == grid.along_names("tp-pp")));
  BOOST_TEST(show(grid.along_names("dp").complement().groups()) == "[[0, 1, 4, 5], [2, 3, 6, 7]]");
  BOOST_TEST((grid.along_names("tp").complement().complement() == grid.along_names("tp")));
  const std::array<int, 1> first{0};
  BOOST_CHECK_EXCEPTION(grid.along_positions("pp", first).complement(), ConfigError,
                        message_names({"leaves ranks out"}));
}

BOOST_AUTO_TEST_CASE(a_layout_shifted_over_part_of_a_larger_world) {
  // Megatron's rank_offset: tp 2 over 4 ranks placed at ranks 4..7 of 10.
  const GroupLayout tp = RankGrid({{"dp", 2}, {"tp", 2}}).along({"tp"}).shifted(4, 10);
  BOOST_TEST(show(tp.groups()) == "[[4, 5], [6, 7]]");
  BOOST_TEST(tp.world_size() == 10);
  BOOST_TEST(tp.offset() == 4);
  BOOST_TEST(tp.group_count() == 2);
  BOOST_TEST(!tp.covers_world());
  BOOST_TEST(tp.colour(3) == GroupLayout::kNoGroup);
  BOOST_TEST(tp.colour(8) == GroupLayout::kNoGroup);
  BOOST_TEST(tp.colour(7) == 1);
  BOOST_TEST(tp.group_rank(7) == 1);
  BOOST_TEST(show(tp.group_of(9)) == "[]");
  BOOST_TEST(show(tp.shifted(1, 11).groups()) == "[[5, 6], [7, 8]]");
  BOOST_CHECK_EXCEPTION(tp.shifted(1, 10), ConfigError, message_names({"10 ranks shifted by 1", "world of 10"}));
  BOOST_CHECK_EXCEPTION(tp.shifted(-1, 20), ConfigError, message_names({"shifted by -1"}));
  BOOST_CHECK_EXCEPTION((void)tp.colour(10), ConfigError, message_names({"rank 10", "[0, 10)"}));
}

BOOST_AUTO_TEST_CASE(bad_cuts_are_rejected_naming_the_values) {
  const GroupLayout dp = RankGrid({{"dp", 6}, {"tp", 2}}).along({"dp"});
  BOOST_CHECK_EXCEPTION(dp.subgroups(1, 4), ConfigError,
                        message_names({"subgroups of 4 members 1 apart", "groups of 6 ranks"}));
  BOOST_CHECK_EXCEPTION(dp.subgroups(0, 2), ConfigError, message_names({"members 0 apart"}));
  BOOST_CHECK_EXCEPTION(dp.subgroups(4, 1), ConfigError, message_names({"1 members 4 apart"}));
  const std::array<int, 2> ends{0, 5};
  BOOST_CHECK_EXCEPTION(RankGrid({{"dp", 6}}).along_positions("dp", ends).subgroups(1, 2), ConfigError,
                        message_names({"leaves ranks out"}));
  // Group members 0,1,2 then 6,7,8 (axes a of 2 and c of 3 vary, b between them does not):
  // a block of 2 members is not a product of the grid's axes.
  const GroupLayout split = RankGrid({{"a", 2}, {"b", 2}, {"c", 3}}).along({"a", "c"});
  BOOST_CHECK_EXCEPTION(split.subgroups(1, 2), ConfigError, message_names({"group rank 2", "3 members 1 ranks apart"}));
}

BOOST_AUTO_TEST_CASE(random_layouts_and_cuts_match_list_slicing) {
  constexpr std::uint32_t kSeed = 20261207;
  std::mt19937 rng(kSeed);
  int cut = 0;
  int refused = 0;
  for (int g = 0; g < 2000; ++g) {
    std::vector<Axis> axes;
    std::vector<std::string_view> names;
    const int axis_count = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < axis_count; ++i) axes.push_back({fmt::format("axis{}", i), 1 + static_cast<int>(rng() % 6)});
    for (const Axis& axis : axes) {
      if ((rng() & 1U) != 0) names.push_back(axis.name);
    }
    const RankGrid grid(axes);
    const GroupLayout layout = grid.along(std::span<const std::string_view>(names));
    const int n = layout.group_size();
    std::vector<int> divisors;
    for (int d = 1; d <= n; ++d) {
      if (n % d == 0) divisors.push_back(d);
    }
    const int stride = divisors[rng() % divisors.size()];
    std::vector<int> sizes;
    for (int d = 1; d <= n / stride; ++d) {
      if (n / stride % d == 0) sizes.push_back(d);
    }
    const int size = sizes[rng() % sizes.size()];
    const Groups expected = sliced(layout.groups(), stride, size);
    const std::string what =
        fmt::format("grid {} along {{{}}}: subgroups({}, {})", g, fmt::join(names, ","), stride, size);
    try {
      const GroupLayout sub = layout.subgroups(stride, size);
      Groups got = sub.groups();
      std::ranges::sort(got);
      BOOST_TEST_REQUIRE(got == expected, what << ": " << show(got) << ", expected " << show(expected));
      BOOST_TEST_REQUIRE(sub.group_size() == size, what);
      for (int r = 0; r < grid.world_size(); ++r) {
        BOOST_TEST_REQUIRE(sub.group_of(r)[idx(sub.group_rank(r))] == r, what << " rank " << r);
      }
      // Its complement: the ranks at one index of every subgroup, gathered by hand.
      Groups positions(idx(size));
      for (const std::vector<int>& group : got) {
        for (int i = 0; i < size; ++i) positions[idx(i)].push_back(group[idx(i)]);
      }
      for (std::vector<int>& ranks : positions) std::ranges::sort(ranks);
      std::ranges::sort(positions);
      Groups complement = sub.complement().groups();
      std::ranges::sort(complement);
      BOOST_TEST_REQUIRE(complement == positions, what << ": complement " << show(complement));
      // Shifted into a larger world: every member moved up, the ranks outside in no group,
      // and cutting before or after the shift the same.
      const int offset = static_cast<int>(rng() % 5);
      const int world = grid.world_size() + offset + static_cast<int>(rng() % 3);
      const GroupLayout moved = layout.shifted(offset, world);
      BOOST_TEST_REQUIRE((moved.subgroups(stride, size) == sub.shifted(offset, world)), what);
      BOOST_TEST_REQUIRE((moved.subgroups(stride, size).complement() == sub.complement().shifted(offset, world)), what);
      Groups shifted_expected = expected;
      for (std::vector<int>& group : shifted_expected) {
        for (int& rank : group) rank += offset;
      }
      Groups shifted_got = moved.subgroups(stride, size).groups();
      std::ranges::sort(shifted_got);
      BOOST_TEST_REQUIRE(shifted_got == shifted_expected, what << " shifted by " << offset);
      BOOST_TEST_REQUIRE(moved.covers_world() == (offset == 0 && world == grid.world_size()), what);
      for (int r = 0; r < world; ++r) {
        const bool inside = r >= offset && r < offset + grid.world_size();
        const int colour = moved.colour(r);
        BOOST_TEST_REQUIRE((colour == GroupLayout::kNoGroup) == !inside, what << " rank " << r);
        BOOST_TEST_REQUIRE((moved.group_rank(r) == GroupLayout::kNoGroup) == !inside, what << " rank " << r);
        if (inside) BOOST_TEST_REQUIRE(moved.global_rank(colour, moved.group_rank(r)) == r, what << " rank " << r);
      }
      ++cut;
    } catch (const ConfigError&) {
      // Refused only where no layout of a grid could hold them.
      BOOST_TEST_REQUIRE(!translates(expected), what << " refused, though its groups are regular");
      ++refused;
    }
  }
  BOOST_TEST_MESSAGE("seed " << kSeed << ": " << cut << " cut, " << refused << " refused");
  BOOST_TEST(cut > 1500);
  BOOST_TEST(refused > 0);
}

BOOST_AUTO_TEST_SUITE_END()
