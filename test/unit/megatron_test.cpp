// Tests of Megatron-Core's layout in the topology layer: the dense and expert grids over
// one order string, every kind of Megatron's table, the rules between the grids, and the
// invariant that the seed's kinds stay as they were.

#define BOOST_TEST_MODULE megatron
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "golden.hpp"
#include "megatron_reference.hpp"
#include "pcx/error.hpp"
#include "pcx/topology.hpp"
#include "spec_reference.hpp"

namespace {

using pcx::ConfigError;
using pcx::ExpertOrder;
using pcx::GroupId;
using pcx::GroupKind;
using pcx::GroupLayout;
using pcx::ParallelConfig;
using pcx::Topology;
using pcx::test::Groups;
using pcx::test::MegatronReference;
using pcx::test::message_names;
using pcx::test::show;

struct Sizes {
  int world, tp = 1, pp = 1, cp = 1;
  std::vector<int> eps = {};
  std::optional<int> etp = std::nullopt;
  std::optional<std::string> order = std::nullopt;
  int instances = 1;
};

ParallelConfig config(const Sizes& s) {
  ParallelConfig c;
  c.world_size = s.world;
  c.tensor_parallel_size = s.tp;
  c.pipeline_parallel_size = s.pp;
  c.context_parallel_size = s.cp;
  c.expert_parallel_sizes = s.eps;
  c.expert_tensor_parallel_size = s.etp;
  c.order = s.order;
  c.distributed_optimizer_instances = s.instances;
  return c;
}

Groups groups_of(const Topology& topology, GroupKind kind, int ep = 0) {
  return topology.layout(GroupId{kind, ep}).groups();
}

void check_rejected(const ParallelConfig& c, std::vector<std::string> words, std::vector<long long> numbers) {
  BOOST_CHECK_EXCEPTION(pcx::validate(c), ConfigError, message_names(words, numbers));
  BOOST_CHECK_EXCEPTION(Topology{c}, ConfigError, message_names(words, numbers));
}

}  // namespace

// ---------------------------------------------------------------------------
// Megatron-Core's own outputs (test/data/megatron_rank_generator.md).
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(megatron_reference_outputs)

BOOST_AUTO_TEST_CASE(every_get_ranks_output_of_megatron_matches) {
  std::istringstream lines(pcx::test::read_golden_file("megatron_rank_generator.md"));
  const std::regex generator_line(
      R"(RankGenerator\(tp=(\d+),ep=(\d+),dp=(\d+),pp=(\d+),cp=(\d+),order='([a-z-]+)'\) -> internal order '([a-z_-]+)')");
  const std::regex ranks_line(R"(get_ranks\('([a-z-]+)'\) = (\[.*\]))");
  std::optional<Topology> topology;
  std::optional<pcx::RankGrid> grid;
  int tp = 0, ep = 0, generators = 0, outputs = 0;
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_search(line, m, generator_line)) {
      ++generators;
      tp = std::stoi(m[1]);
      ep = std::stoi(m[2]);
      const int dp = std::stoi(m[3]), pp = std::stoi(m[4]), cp = std::stoi(m[5]);
      const std::string order = m[6];
      const std::vector<pcx::Axis> sizes{{"tp", tp}, {"ep", ep}, {"dp", dp}, {"pp", pp}, {"cp", cp}};
      grid = pcx::RankGrid::from_order(order, sizes);
      // Megatron appends the unnamed axes fastest to slowest after the order; pcx's grid
      // has them too, as its slowest axes of size 1.
      const std::string internal = m[7];
      std::vector<std::string> names;
      for (auto axis = grid->axes().rbegin(); axis != grid->axes().rend(); ++axis) names.push_back(axis->name);
      BOOST_TEST(internal.starts_with(fmt::format("{}", fmt::join(names, "-")).substr(0, order.size())), line);
      // ep > 1 is Megatron's expert generator: dp there is the expert data size.
      const int world = tp * ep * dp * pp * cp;
      topology.emplace(config(ep == 1 ? Sizes{world, tp, pp, cp, {}, std::nullopt, order}
                                      : Sizes{world, tp, pp, cp, {ep}, std::nullopt, order}));
      continue;
    }
    if (!std::regex_search(line, m, ranks_line)) continue;
    BOOST_TEST_REQUIRE(grid.has_value());
    ++outputs;
    const std::string token = m[1];
    const Groups expected = pcx::test::parse_groups(std::string(m[2]));
    BOOST_TEST(show(grid->along_names(token).groups()) == show(expected), line);
    const GroupLayout layout = ep == 1 ? topology->dense_groups(token) : topology->expert_groups(ep, token);
    BOOST_TEST(show(layout.groups()) == show(expected), line);
  }
  BOOST_TEST(generators == 6);
  BOOST_TEST(outputs == 25);
}

BOOST_AUTO_TEST_CASE(the_reference_restatement_reproduces_megatrons_outputs) {
  // The independent reference used below, checked against Megatron's own numbers.
  const pcx::test::MegatronGenerator generator({{"tp", 2}, {"ep", 1}, {"dp", 2}, {"pp", 1}, {"cp", 2}},
                                               "tp-cp-ep-dp-pp");
  BOOST_TEST(show(generator.get_ranks("dp-cp")) == show(Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  BOOST_TEST(show(generator.get_ranks("cp")) == show(Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  const pcx::test::MegatronGenerator pipeline_middle({{"tp", 2}, {"ep", 1}, {"dp", 2}, {"pp", 2}, {"cp", 1}},
                                                     "tp-pp-dp");
  BOOST_TEST(show(pipeline_middle.get_ranks("pp")) == show(Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------
// Cases worked out by hand from Megatron's algorithm.
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(derived_from_megatron)

BOOST_AUTO_TEST_CASE(docstring_example_tp2_dp3_pp4_in_order_tp_dp_pp) {
  // generate_masked_orthogonal_rank_groups' docstring: sizes [2, 3, 4], mask dp.
  const Topology topology(config({24, 2, 4, 1, {}, std::nullopt, "tp-dp-pp"}));
  const Groups dp = groups_of(topology, GroupKind::data_parallel);
  BOOST_TEST_REQUIRE(dp.size() == 8u);
  BOOST_TEST(show(dp[0]) == "[0, 2, 4]");
  BOOST_TEST(show(dp[1]) == "[1, 3, 5]");
  BOOST_TEST(show(dp[7]) == "[19, 21, 23]");
}

BOOST_AUTO_TEST_CASE(docstring_example_order_tp_pp_dp) {
  const Topology topology(config({8, 2, 2, 1, {}, std::nullopt, "tp-pp-dp"}));
  BOOST_TEST(show(groups_of(topology, GroupKind::data_parallel)) == show(Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  BOOST_TEST(show(groups_of(topology, GroupKind::model_parallel)) == show(Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
}

BOOST_AUTO_TEST_CASE(embedding_is_the_first_and_last_stage_and_middle_stages_have_none) {
  const Topology topology(config({8, 2, 4}));
  BOOST_TEST(show(groups_of(topology, GroupKind::pipeline_parallel)) == show(Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  BOOST_TEST(show(groups_of(topology, GroupKind::embedding)) == show(Groups{{0, 6}, {1, 7}}));
  BOOST_TEST(show(groups_of(topology, GroupKind::position_embedding)) == show(Groups{{0}, {1}}));
  const GroupLayout& embedding = topology.layout({GroupKind::embedding});
  BOOST_TEST(!embedding.covers_world());
  for (const int middle : {2, 3, 4, 5}) {
    BOOST_TEST(embedding.colour(middle) == GroupLayout::kNoGroup);
    BOOST_TEST(embedding.group_rank(middle) == GroupLayout::kNoGroup);
    BOOST_TEST(embedding.group_of(middle).empty());
  }
  BOOST_TEST(embedding.colour(7) == 1);
  BOOST_TEST(embedding.group_rank(7) == 1);
  BOOST_TEST(topology.layout({GroupKind::position_embedding}).colour(6) == GroupLayout::kNoGroup);
}

BOOST_AUTO_TEST_CASE(embedding_with_one_stage_is_every_rank_alone) {
  const Topology topology(config({4, 2}));
  for (const GroupKind kind : {GroupKind::embedding, GroupKind::position_embedding}) {
    BOOST_TEST(topology.layout({kind}).covers_world());
    BOOST_TEST(show(groups_of(topology, kind)) == show(Groups{{0}, {1}, {2}, {3}}));
  }
}

BOOST_AUTO_TEST_CASE(an_expert_tensor_size_below_tp_gives_the_expert_grid_its_own_sizes) {
  // W 16, tp 4, pp 2: dense dp 2. Expert grid: etp 1, ep 4, edp 16 / (1 x 4 x 2) = 2.
  const Topology topology(config({16, 4, 2, 1, {4}, 1}));
  BOOST_TEST(topology.expert_tensor_parallel_size() == 1);
  BOOST_TEST(show(groups_of(topology, GroupKind::tensor_parallel)) ==
             show(Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  BOOST_TEST(show(groups_of(topology, GroupKind::expert_parallel, 4)) ==
             show(Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  BOOST_TEST(show(groups_of(topology, GroupKind::expert_data_parallel, 4)) ==
             show(Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
  BOOST_TEST(groups_of(topology, GroupKind::expert_tensor_parallel, 4).size() == 16u);
  BOOST_TEST(show(groups_of(topology, GroupKind::tensor_expert_pipeline_parallel, 4)) ==
             show(Groups{{0, 1, 2, 3, 8, 9, 10, 11}, {4, 5, 6, 7, 12, 13, 14, 15}}));
}

BOOST_AUTO_TEST_CASE(coordinates_name_every_axis_of_both_grids) {
  // W 16, tp 2, cp 2, pp 2: dp 2; expert etp 1, ep 2, edp 4. Rank 13 = 0b1101.
  const Topology topology(config({16, 2, 2, 2, {2}, 1}));
  const pcx::RankCoordinates c = topology.coordinates(13);
  BOOST_TEST(c.tensor == 1);
  BOOST_TEST(c.context == 0);
  BOOST_TEST(c.data == 1);
  BOOST_TEST(c.pipeline == 1);
  BOOST_TEST(!c.first_pipeline_stage);
  BOOST_TEST(c.last_pipeline_stage);
  BOOST_TEST_REQUIRE(c.experts.size() == 1u);
  BOOST_TEST((c.experts[0] == pcx::ExpertCoordinates{2, 0, 1, 2}));
  BOOST_CHECK_THROW(static_cast<void>(topology.coordinates(16)), ConfigError);
}

BOOST_AUTO_TEST_CASE(queries_name_a_missing_expert_grid) {
  const Topology topology(config({8, 1, 1, 1, {2}}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.expert_groups(4, "ep")), pcx::GroupNotFound,
                        message_names({}, {4, 2}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.dense_groups("tp-xx")), ConfigError, message_names({"'xx'"}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.dense_groups("tp-tp")), ConfigError, message_names({"'tp'"}));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.dense_groups("tp-")), ConfigError, message_names({"'tp-'"}));
}

BOOST_AUTO_TEST_CASE(the_order_string_overrides_the_expert_order) {
  ParallelConfig c = config({16, 2, 1, 1, {4}, std::nullopt, std::string(pcx::kDataFirstOrder)});
  BOOST_TEST(pcx::order_of(c) == "tp-cp-dp-ep-pp");
  const Topology data_first(c);
  c.expert_order = ExpertOrder::data_first;
  c.order.reset();
  BOOST_TEST(pcx::order_of(c) == pcx::kDataFirstOrder);
  BOOST_TEST(show(groups_of(Topology(c), GroupKind::expert_parallel, 4)) ==
             show(groups_of(data_first, GroupKind::expert_parallel, 4)));
  c.expert_order = ExpertOrder::expert_first;
  BOOST_TEST(pcx::order_of(c) == pcx::kExpertFirstOrder);
}

BOOST_AUTO_TEST_CASE(every_kind_is_one_line_of_the_table) {
  std::vector<std::string> names;
  for (const pcx::GridKind& k : pcx::grid_kinds()) {
    names.push_back(fmt::format("{}:{}:{}", GroupId{k.kind, 1}.name(), k.grid == pcx::Grid::dense ? "d" : "e", k.varying));
  }
  BOOST_TEST(fmt::format("{}", fmt::join(names, " ")) ==
             "tensor_parallel:d:tp pipeline_parallel:d:pp data_parallel:d:dp expert_parallel/1:e:ep "
             "expert_data_parallel/1:e:dp context_parallel:d:cp data_context_parallel:d:dp-cp "
             "tensor_context_parallel:d:tp-cp tensor_data_parallel:d:tp-dp tensor_data_context_parallel:d:tp-dp-cp "
             "model_parallel:d:tp-pp expert_tensor_parallel/1:e:tp tensor_expert_parallel/1:e:tp-ep "
             "tensor_expert_pipeline_parallel/1:e:tp-ep-pp");
}

BOOST_AUTO_TEST_CASE(megatron_views_come_in_a_fixed_order_after_the_context_views) {
  const Topology topology(config({16, 2, 2, 1, {2, 4}}));
  std::vector<std::string> names;
  for (const pcx::GroupView& view : topology.megatron_views()) names.push_back(view.id.name());
  BOOST_TEST(fmt::format("{}", fmt::join(names, " ")) ==
             "context_parallel data_context_parallel tensor_context_parallel tensor_data_parallel "
             "tensor_data_context_parallel model_parallel embedding position_embedding expert_tensor_parallel/2 "
             "tensor_expert_parallel/2 tensor_expert_pipeline_parallel/2 expert_tensor_parallel/4 "
             "tensor_expert_parallel/4 tensor_expert_pipeline_parallel/4");
  BOOST_TEST(topology.all_views().size() == topology.views().size() + topology.megatron_views().size());
  BOOST_TEST(topology.views().size() == 8u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------
// Megatron's rules, each refused with the values named.
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(megatron_validation)

BOOST_AUTO_TEST_CASE(context_and_expert_tensor_sizes_below_one_are_rejected) {
  check_rejected(config({8, 1, 1, 0}), {"context parallel size"}, {0});
  check_rejected(config({8, 1, 1, 1, {2}, 0}), {"expert tensor parallel size"}, {0});
}

BOOST_AUTO_TEST_CASE(a_world_not_divisible_by_tensor_context_pipeline_is_rejected) {
  check_rejected(config({8, 2, 1, 3}), {"world size", "context parallel size"}, {8, 2, 3});
  check_rejected(config({24, 2, 2, 4}), {"context parallel size"}, {24, 2, 4});
}

BOOST_AUTO_TEST_CASE(expert_sizes_must_divide_the_world_over_expert_tensor_and_pipeline) {
  check_rejected(config({8, 1, 1, 1, {1}, 3}), {"expert tensor parallel size"}, {8, 3});
  check_rejected(config({16, 1, 1, 1, {3}, 2}), {"expert parallel size"}, {3, 8, 2});
  // With the defaults the seed's rule and message stay: E divides the data parallel size.
  check_rejected(config({16, 2, 1, 1, {3}}), {"data parallel size"}, {3, 8});
}

BOOST_AUTO_TEST_CASE(a_malformed_order_is_rejected_naming_it) {
  check_rejected(config({8, 2, 1, 1, {}, std::nullopt, "tp-cp-xx"}), {"'tp-cp-xx'", "'xx'"}, {});
  check_rejected(config({8, 2, 1, 1, {}, std::nullopt, "tp--pp"}), {"'tp--pp'"}, {});
  check_rejected(config({8, 2, 1, 1, {}, std::nullopt, "tp-tp"}), {"'tp'", "twice"}, {});
  check_rejected(config({8, 2, 1, 1, {}, std::nullopt, ""}), {"empty"}, {});
  // dp = 4 on the dense grid, but the order leaves it out.
  check_rejected(config({8, 2, 1, 1, {}, std::nullopt, "tp-pp"}), {"'dp'", "dense"}, {4});
  // ep = 2 on the expert grid, but the order leaves it out.
  check_rejected(config({8, 2, 1, 1, {2}, std::nullopt, "tp-cp-dp-pp"}), {"'ep'", "expert"}, {2});
}

BOOST_AUTO_TEST_CASE(an_order_not_ending_in_pp_needs_equal_data_sizes_when_pp_is_above_one) {
  // dp = 8 / 2 = 4; edp = 8 / (1 x 2 x 2) = 2.
  check_rejected(config({8, 1, 2, 1, {2}, std::nullopt, "tp-cp-ep-pp-dp"}), {"'tp-cp-ep-pp-dp'"}, {2, 4});
  // With one stage the rule does not apply.
  BOOST_CHECK_NO_THROW(Topology(config({8, 1, 1, 1, {2}, std::nullopt, "tp-cp-ep-pp-dp"})));
}

BOOST_AUTO_TEST_CASE(instances_that_do_not_divide_are_rejected_as_megatron_rejects_them) {
  // dp 3 x cp 2 = 6 ranks per data-context group: 4 instances do not divide them.
  check_rejected(config({12, 2, 1, 2, {}, std::nullopt, std::nullopt, 4}), {"distributed optimizer instances"},
                 {3, 2, 6, 4});
  // dp 4 in 2 instances, but with ep 4 the expert data parallel size is 1.
  check_rejected(config({4, 1, 1, 1, {4}, std::nullopt, std::nullopt, 2}), {"expert data parallel size"}, {1, 4, 2});
  check_rejected(config({4, 1, 1, 1, {}, std::nullopt, std::nullopt, 0}), {"distributed optimizer instances"}, {0});
  check_rejected(config({4, 1, 1, 1, {}, std::nullopt, std::nullopt, -3}), {"distributed optimizer instances"}, {-3});
}

BOOST_AUTO_TEST_CASE(instances_that_no_grid_holds_are_rejected_naming_the_kind) {
  // cp 2 and dp 3 apart in rank (pp between them): instances of 3 = 6 / 2 cut a cp row,
  // so they are not translates of one another. Megatron builds them; a grid cannot.
  const ParallelConfig c = config({12, 1, 2, 2, {}, std::nullopt, "tp-cp-pp-dp", 2});
  check_rejected(c, {"intra_partial_data_context_parallel", "'tp-cp-pp-dp'", "instances"}, {2});
  // With dp and cp neighbours the same sizes are regular.
  BOOST_CHECK_NO_THROW(Topology(config({12, 1, 2, 2, {}, std::nullopt, "tp-cp-dp-pp", 2})));
}

BOOST_AUTO_TEST_CASE(one_instance_adds_no_kind) {
  const Topology one(config({8, 1, 1, 1, {2}, std::nullopt, std::nullopt, 1}));
  const Topology two(config({8, 1, 1, 1, {2}, std::nullopt, std::nullopt, 2}));
  BOOST_TEST(two.megatron_views().size() == one.megatron_views().size() + 5);
  BOOST_CHECK_THROW((void)one.layout({GroupKind::inter_distributed_optimizer_instance}), pcx::GroupNotFound);
  // dp 8 in 2 instances of 4: Megatron's own example layout.
  BOOST_TEST(show(groups_of(two, GroupKind::intra_partial_data_context_parallel)) == "[[0, 1, 2, 3], [4, 5, 6, 7]]");
  BOOST_TEST(show(groups_of(two, GroupKind::inter_distributed_optimizer_instance)) ==
             "[[0, 4], [1, 5], [2, 6], [3, 7]]");
  BOOST_TEST(show(groups_of(two, GroupKind::intra_distributed_optimizer_instance)) == "[[0, 1, 2, 3], [4, 5, 6, 7]]");
  // Expert-first, ep 2: expert data groups [0,2,4,6] and [1,3,5,7], each in two halves.
  BOOST_TEST(show(groups_of(two, GroupKind::intra_partial_expert_data_parallel, 2)) ==
             "[[0, 2], [1, 3], [4, 6], [5, 7]]");
  BOOST_TEST(show(groups_of(two, GroupKind::inter_partial_expert_data_parallel, 2)) ==
             "[[0, 4], [1, 5], [2, 6], [3, 7]]");
}

BOOST_AUTO_TEST_CASE(hybrid_and_hierarchical_groups_that_megatron_refuses_are_rejected) {
  ParallelConfig hybrid = config({10, 2});  // dp 5
  hybrid.hybrid_context_parallel = true;
  check_rejected(hybrid, {"hybrid context parallel", "even"}, {5});
  // dp 10: Megatron would cut [8, 9] as a group "of size 4"; pcx refuses.
  hybrid.world_size = 20;
  check_rejected(hybrid, {"hybrid context parallel group size", "Megatron would build a group of"}, {4, 10, 2});
  // cp 3 and dp 2 apart in rank (pp between them): runs of 2 cut a cp row. Megatron would
  // build [0, 1], [2, 6], [7, 8].
  ParallelConfig apart = config({12, 1, 2, 3, {}, std::nullopt, "tp-cp-pp-dp"});
  apart.hybrid_context_parallel = true;
  check_rejected(apart, {"hybrid_data_context_parallel/2", "'tp-cp-pp-dp'", "translates"}, {2});
  ParallelConfig levels = config({16, 1, 1, 4});
  levels.hierarchical_context_parallel_sizes = {2, 3};
  check_rejected(levels, {"hierarchical context parallel sizes [2,3]", "context parallel size"}, {6, 4});
  levels.hierarchical_context_parallel_sizes = {4, 0};
  check_rejected(levels, {"hierarchical context parallel size"}, {0});
  levels.hierarchical_context_parallel_sizes = {65536, 65536};
  check_rejected(levels, {"[65536,65536]", "more than 2147483647"}, {4});
}

BOOST_AUTO_TEST_CASE(hierarchical_groups_are_those_of_megatrons_own_example) {
  // create_hierarchical_groups' docstring: 16 ranks in sizes [2, 2, 4].
  ParallelConfig c = config({16, 1, 1, 16});
  c.hierarchical_context_parallel_sizes = {2, 2, 4};
  const Topology topology(c);
  auto level = [&](int l) { return show(topology.layout({GroupKind::hierarchical_context_parallel, 0, 0, l}).groups()); };
  BOOST_TEST(level(0) == "[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]");
  BOOST_TEST(level(1) == "[[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]");
  BOOST_TEST(level(2) == "[[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]");
  BOOST_TEST(GroupId({GroupKind::hierarchical_context_parallel, 0, 0, 2}).name() == "hierarchical_context_parallel/L2");
  BOOST_CHECK_THROW((void)topology.layout({GroupKind::hierarchical_context_parallel, 0, 0, 3}), pcx::GroupNotFound);
}

BOOST_AUTO_TEST_CASE(hybrid_groups_have_the_sizes_of_megatrons_test) {
  // test_hybrid_dp_cp_groups: 8 ranks, tp 1, cp 2, dp 4, and 8 ranks of dp 8: sizes 2 and 4.
  for (const int cp : {2, 1}) {
    ParallelConfig c = config({8, 1, 1, cp});
    c.hybrid_context_parallel = true;
    const Topology topology(c);
    std::vector<int> sizes;
    for (const pcx::GroupView& view : topology.megatron_views()) {
      if (view.id.kind != GroupKind::hybrid_data_context_parallel) continue;
      sizes.push_back(view.id.group_size);
      BOOST_TEST(view.layout.group_size() == view.id.group_size);
    }
    BOOST_TEST(show({sizes}) == "[2, 4]");
    BOOST_TEST(show(groups_of(topology, GroupKind::data_context_parallel)) == "[[0, 1, 2, 3, 4, 5, 6, 7]]");
    BOOST_TEST(show(topology.layout({GroupKind::hybrid_data_context_parallel, 0, 4}).groups()) ==
               "[[0, 1, 2, 3], [4, 5, 6, 7]]");
  }
  BOOST_TEST(GroupId({GroupKind::hybrid_data_context_parallel, 0, 4}).name() == "hybrid_data_context_parallel/4");
}

BOOST_AUTO_TEST_CASE(a_grid_over_part_of_the_world) {
  // An encoder of tp 2 on ranks 0..3 and a decoder of tp 2, pp 2 on ranks 4..11 of 12.
  ParallelConfig encoder = config({12, 2});
  encoder.local_world_size = 4;
  ParallelConfig decoder = config({12, 2, 2});
  decoder.rank_offset = 4;
  const Topology first(encoder), second(decoder);
  BOOST_TEST(first.local_world_size() == 4);
  BOOST_TEST(second.local_world_size() == 8);
  BOOST_TEST(second.data_parallel_size() == 2);
  BOOST_TEST(show(groups_of(first, GroupKind::tensor_parallel)) == "[[0, 1], [2, 3]]");
  BOOST_TEST(show(groups_of(second, GroupKind::tensor_parallel)) == "[[4, 5], [6, 7], [8, 9], [10, 11]]");
  BOOST_TEST(show(groups_of(second, GroupKind::pipeline_parallel)) == "[[4, 8], [5, 9], [6, 10], [7, 11]]");
  BOOST_TEST(show(second.dense_groups("tp-dp").groups()) == "[[4, 5, 6, 7], [8, 9, 10, 11]]");
  // The world is every rank; a rank outside the part is in no group of the others.
  BOOST_TEST(groups_of(second, GroupKind::world).front().size() == 12u);
  BOOST_TEST(second.layout({GroupKind::data_parallel}).colour(2) == GroupLayout::kNoGroup);
  BOOST_TEST(second.coordinates(9).pipeline == 1);
  BOOST_CHECK_EXCEPTION((void)second.coordinates(2), ConfigError, message_names({"rank 2", "[4, 12)"}));
}

BOOST_AUTO_TEST_CASE(a_part_that_does_not_fit_or_whose_grid_breaks_a_rule_is_rejected) {
  ParallelConfig c = config({12, 2});
  c.rank_offset = -1;
  check_rejected(c, {"rank offset -1"}, {0});
  c.rank_offset = 8;
  c.local_world_size = 8;
  check_rejected(c, {"[8, 16)", "world of 12 ranks"}, {8});
  c.local_world_size = 0;
  check_rejected(c, {"local world size 0 must be at least 1"}, {});
  // The part's own rules, named as the part's: 6 ranks from rank 6, tp 4.
  c = config({12, 4});
  c.rank_offset = 6;
  check_rejected(c, {"grid of 6 ranks from rank 6", "tensor parallel size 4"}, {6});
  c = config({16, 1});
  c.rank_offset = 2;
  c.local_world_size = 8;
  c.ranks_per_node = 4;
  check_rejected(c, {"rank offset 2", "node of 4 ranks"}, {2, 4});
  c = config({12, 1});
  c.rank_offset = 12;
  check_rejected(c, {"rank offset 12 leaves no rank", "world of 12 ranks"}, {12});
  c.rank_offset = 0;
  c.local_world_size = 8;
  c.ranks_per_node = 8;
  check_rejected(c, {"world size 12", "nodes of 8 ranks"}, {12, 8});
}

BOOST_AUTO_TEST_CASE(pipeline_groups_that_differ_between_the_grids_are_rejected) {
  // Dense: tp 2 before pp, stages 2 apart; expert: etp 1 before pp, stages 1 apart.
  check_rejected(config({8, 2, 2, 1, {2}, 1, "tp-pp-ep-dp"}), {"pipeline groups", "'tp-pp-ep-dp'"}, {2, 1});
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------
// Random sizes and orders against the independent reference.
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(random_configurations)

// Whether every group is the first shifted by one distance: the only groups a layout of
// a grid can hold.
bool translates(Groups groups) {
  for (std::vector<int>& g : groups) std::ranges::sort(g);
  return std::ranges::all_of(groups, [&](const std::vector<int>& g) {
    if (g.size() != groups.front().size()) return false;
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (g[i] - g[0] != groups.front()[i] - groups.front()[0]) return false;
    }
    return true;
  });
}

BOOST_AUTO_TEST_CASE(every_kind_and_rank_matches_megatrons_algorithm) {
  const unsigned seed = 20250611;
  BOOST_TEST_MESSAGE("random seed " << seed);
  std::mt19937 random(seed);
  auto pick = [&random](int low, int high) { return std::uniform_int_distribution<int>(low, high)(random); };
  int accepted = 0, refused = 0, irregular = 0, with_instances = 0, with_hybrid = 0, with_levels = 0, in_part = 0;
  for (int round = 0; round < 1500; ++round) {
    const int tp = pick(1, 4), cp = pick(1, 3), pp = pick(1, 4), dp = pick(1, 6);
    const int world = tp * cp * pp * dp;
    const int etp = pick(0, 1) == 0 ? tp : std::vector<int>{1, 2, 4}[static_cast<std::size_t>(pick(0, 2))];
    std::vector<int> eps;
    for (int e = 1; e <= 8; ++e) {
      if (world % (etp * pp * e) == 0 && pick(0, 2) == 0 && eps.size() < 2) eps.push_back(e);
    }
    if (world % (etp * pp) != 0) eps.clear();
    std::vector<std::string> tokens{"tp", "cp", "ep", "dp", "pp"};
    std::shuffle(tokens.begin(), tokens.end(), random);
    std::erase_if(tokens, [&](const std::string&) { return tokens.size() > 1 && pick(0, 9) == 0; });
    const std::string order = fmt::format("{}", fmt::join(tokens, "-"));
    const int instances = pick(0, 1) == 0 ? 1 : pick(2, 4);
    ParallelConfig c = config({world, tp, pp, cp, eps, etp, order, instances});
    c.hybrid_context_parallel = pick(0, 2) == 0;
    if (pick(0, 2) == 0) {
      // A factorization of cp in random order, now and then with a wrong product.
      for (int rest = cp; rest > 1;) {
        const int f = rest % 2 == 0 && pick(0, 1) == 0 ? 2 : rest;
        c.hierarchical_context_parallel_sizes.push_back(f);
        rest /= f;
      }
      if (pick(0, 1) == 0) c.hierarchical_context_parallel_sizes.push_back(1);
      if (pick(0, 5) == 0) c.hierarchical_context_parallel_sizes.push_back(2);
      std::shuffle(c.hierarchical_context_parallel_sizes.begin(), c.hierarchical_context_parallel_sizes.end(), random);
    }
    // Now and then a grid over part of a larger world.
    const int offset = pick(0, 2) == 0 ? pick(0, 5) : 0;
    const int extra = pick(0, 2) == 0 ? pick(0, 3) : 0;
    c.world_size = world + offset + extra;
    c.rank_offset = offset;
    if (extra > 0 || pick(0, 1) == 0) c.local_world_size = world;
    const std::string what = fmt::format(
        "round {}: W {} tp {} cp {} pp {} etp {} eps [{}] order {} instances {} hybrid {} hierarchical [{}] at {} of {}",
        round, world, tp, cp, pp, etp, fmt::join(eps, ","), order, instances, c.hybrid_context_parallel,
        fmt::join(c.hierarchical_context_parallel_sizes, ","), offset, c.world_size);

    std::optional<MegatronReference> reference;
    try {
      reference.emplace(MegatronReference::of(world, tp, cp, pp, etp, eps, order, instances)
                            .with_context_groups(c.hybrid_context_parallel, c.hierarchical_context_parallel_sizes)
                            .at_offset(offset));
    } catch (const std::runtime_error&) {
    }
    if (!reference) {
      ++refused;
      BOOST_CHECK_THROW(Topology{c}, ConfigError);
      continue;
    }
    std::optional<Topology> built;
    try {
      built.emplace(c);
    } catch (const ConfigError& e) {
      // pcx refuses only groups that are not translates of one another, which no grid holds:
      // irregular instances, or hybrid groups cut short or irregular.
      bool regular = true;
      if (instances > 1) {
        for (const GroupKind kind : {GroupKind::intra_partial_data_context_parallel,
                                     GroupKind::inter_distributed_optimizer_instance,
                                     GroupKind::intra_distributed_optimizer_instance}) {
          regular = regular && translates(reference->groups({kind}));
        }
      }
      for (const int size : c.hybrid_context_parallel ? reference->hybrid_sizes() : std::vector<int>{}) {
        regular = regular && translates(reference->groups({GroupKind::hybrid_data_context_parallel, 0, size}));
      }
      BOOST_TEST(!regular, what << ": refused although Megatron's groups are regular: " << e.what());
      ++irregular;
      continue;
    }
    ++accepted;
    with_instances += instances > 1 ? 1 : 0;
    in_part += world < c.world_size ? 1 : 0;
    with_hybrid += c.hybrid_context_parallel ? 1 : 0;
    with_levels += c.hierarchical_context_parallel_sizes.size() > 1 ? 1 : 0;
    const Topology& topology = *built;
    // Every hybrid size and hierarchical level Megatron builds, and no other.
    std::vector<int> hybrid_sizes;
    std::size_t levels = 0;
    for (const pcx::GroupView& view : topology.all_views()) {
      if (view.id.kind == GroupKind::hybrid_data_context_parallel) hybrid_sizes.push_back(view.id.group_size);
      if (view.id.kind == GroupKind::hierarchical_context_parallel) ++levels;
    }
    BOOST_TEST(show({hybrid_sizes}) == show({c.hybrid_context_parallel ? reference->hybrid_sizes() : std::vector<int>{}}),
               what);
    BOOST_TEST(levels == c.hierarchical_context_parallel_sizes.size(), what);
    for (const pcx::GroupView& view : topology.all_views()) {
      if (view.id.kind == GroupKind::world) continue;  // the configuration has no hpZ and no nodes
      Groups expected = reference->groups(view.id);
      // Groups in Megatron's creation order where it is pcx's colour order, else sorted.
      if (MegatronReference::is_cut_kind(view.id.kind)) std::ranges::sort(expected);
      BOOST_TEST(show(view.layout.groups()) == show(expected), what << " " << view.id.name());
      BOOST_TEST(view.layout.world_size() == c.world_size, what << " " << view.id.name());
      for (int r = 0; r < c.world_size; ++r) {
        int colour = GroupLayout::kNoGroup, index = GroupLayout::kNoGroup;
        for (std::size_t g = 0; g < expected.size(); ++g) {
          const auto it = std::ranges::find(expected[g], r);
          if (it != expected[g].end()) {
            colour = static_cast<int>(g);
            index = static_cast<int>(it - expected[g].begin());
          }
        }
        BOOST_TEST(view.layout.colour(r) == colour, what << " " << view.id.name() << " rank " << r);
        BOOST_TEST(view.layout.group_rank(r) == index, what << " " << view.id.name() << " rank " << r);
      }
    }
    // A rank's coordinate on an axis is its index in its group along that axis.
    for (int r = offset; r < offset + world; ++r) {
      // The generators list the grid's ranks, from 0.
      auto index_in = [grid_rank = r - offset](const Groups& groups) {
        for (const auto& g : groups) {
          if (const auto it = std::ranges::find(g, grid_rank); it != g.end()) return static_cast<int>(it - g.begin());
        }
        return -1;
      };
      const pcx::RankCoordinates coords = topology.coordinates(r);
      BOOST_TEST(coords.tensor == index_in(reference->dense.get_ranks("tp")), what);
      BOOST_TEST(coords.context == index_in(reference->dense.get_ranks("cp")), what);
      BOOST_TEST(coords.data == index_in(reference->dense.get_ranks("dp")), what);
      BOOST_TEST(coords.pipeline == index_in(reference->dense.get_ranks("pp")), what);
      BOOST_TEST(coords.last_pipeline_stage == (coords.pipeline == pp - 1), what);
      BOOST_TEST_REQUIRE(coords.experts.size() == eps.size());
      for (std::size_t i = 0; i < eps.size(); ++i) {
        const auto& generator = reference->expert(eps[i]);
        BOOST_TEST(coords.experts[i].tensor == index_in(generator.get_ranks("tp")), what);
        BOOST_TEST(coords.experts[i].expert == index_in(generator.get_ranks("ep")), what);
        BOOST_TEST(coords.experts[i].data == index_in(generator.get_ranks("dp")), what);
      }
    }
  }
  BOOST_TEST_MESSAGE(accepted << " accepted (" << with_instances << " with instances, " << with_hybrid
                              << " with hybrid groups, " << with_levels << " with hierarchical levels, " << in_part
                              << " over part of the world), " << refused
                              << " refused by both, " << irregular << " irregular groups refused by pcx");
  BOOST_TEST(accepted > 300);
  BOOST_TEST(with_instances > 60);
  BOOST_TEST(with_hybrid > 50);
  BOOST_TEST(with_levels > 25);
  BOOST_TEST(in_part > 100);
  BOOST_TEST(refused > 20);
}

// Megatron's main branch (d98e8a64ddf3) builds one inter-instance and one intra-instance
// group for attention and experts alike, from its expert grid. Under the default order with
// the expert tensor size the tensor size they are pcx's dense groups; under data-first
// with more than one expert they pair members of one dense instance, so pcx keeps the
// dense ones (core_v0.12.0's) and gives the expert ones as inter_partial_expert_data_parallel.
BOOST_AUTO_TEST_CASE(the_main_branchs_shared_instance_groups_are_the_dense_ones_under_the_default_order) {
  int same = 0, different = 0;
  for (const std::string_view order : {pcx::kExpertFirstOrder, pcx::kDataFirstOrder}) {
    for (int tp = 1; tp <= 2; ++tp) {
      for (int cp = 1; cp <= 2; ++cp) {
        for (int pp = 1; pp <= 2; ++pp) {
          for (int dp = 1; dp <= 8; ++dp) {
            const int world = tp * cp * pp * dp;
            for (int ep = 1; ep <= dp * cp; ++ep) {
              for (int n = 2; n <= dp * cp / ep; ++n) {
                if (dp * cp % ep != 0 || dp * cp / ep % n != 0) continue;
                const auto reference = MegatronReference::of(world, tp, cp, pp, tp, {ep}, std::string(order), n);
                const Topology topology(config({world, tp, pp, cp, {ep}, std::nullopt, std::string(order), n}));
                Groups inter = reference.shared_inter_instance(ep);
                std::ranges::sort(inter);
                Groups intra = reference.shared_intra_instance(ep);
                std::ranges::sort(intra);
                const bool equal = inter == groups_of(topology, GroupKind::inter_distributed_optimizer_instance) &&
                                   intra == groups_of(topology, GroupKind::intra_distributed_optimizer_instance);
                const std::string what = fmt::format("{} W {} tp {} cp {} pp {} ep {} N {}", order, world, tp, cp, pp, ep, n);
                if (order == pcx::kExpertFirstOrder || ep == 1) BOOST_TEST(equal, what);
                // The expert kind is the shared group itself.
                BOOST_TEST(show(inter) == show(groups_of(topology, GroupKind::inter_partial_expert_data_parallel, ep)),
                           what);
                (equal ? same : different) += 1;
              }
            }
          }
        }
      }
    }
  }
  BOOST_TEST_MESSAGE(same << " layouts share the dense instance groups, " << different << " do not");
  BOOST_TEST(same > 100);
  BOOST_TEST(different > 10);
}

BOOST_AUTO_TEST_CASE(context_one_and_expert_tensor_equal_to_tensor_leave_every_seed_kind_as_the_spec_says) {
  const unsigned seed = 7;
  BOOST_TEST_MESSAGE("random seed " << seed);
  std::mt19937 random(seed);
  auto pick = [&random](int low, int high) { return std::uniform_int_distribution<int>(low, high)(random); };
  for (int round = 0; round < 200; ++round) {
    const int tp = pick(1, 4), pp = pick(1, 3), dp = pick(1, 8);
    const int world = tp * pp * dp;
    ParallelConfig plain;
    plain.world_size = world;
    plain.tensor_parallel_size = tp;
    plain.pipeline_parallel_size = pp;
    plain.expert_order = pick(0, 1) == 0 ? ExpertOrder::expert_first : ExpertOrder::data_first;
    for (int e = 1; e <= dp; ++e) {
      if (dp % e == 0 && pick(0, 1) == 0) plain.expert_parallel_sizes.push_back(e);
    }
    if (pick(0, 1) == 0) plain.zero_hpz_size = std::vector<int>{1, 2, 4}[static_cast<std::size_t>(pick(0, 2))];
    if (world % std::min(plain.zero_hpz_size.value_or(1), world) != 0) plain.zero_hpz_size.reset();
    if (pick(0, 1) == 0 && world % 2 == 0) plain.ranks_per_node = 2;
    ParallelConfig explicit_megatron = plain;
    explicit_megatron.context_parallel_size = 1;
    explicit_megatron.expert_tensor_parallel_size = tp;
    explicit_megatron.order = std::string(pcx::order_of(plain));
    const auto spec = pcx::test::Reference::of(plain);
    for (const ParallelConfig& c : {plain, explicit_megatron}) {
      const Topology topology(c);
      BOOST_TEST_REQUIRE(topology.views().size() == Topology(plain).views().size());
      for (const pcx::GroupView& view : topology.views()) {
        for (int r = 0; r < world; ++r) {
          BOOST_TEST(show(view.layout.group_of(r)) == show(spec.group(view.id, r, c.zero_hpz_size, c.ranks_per_node)),
                     "round " << round << " " << view.id.name() << " rank " << r);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
