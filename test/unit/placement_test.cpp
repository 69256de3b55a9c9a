// Tests of the placement check: which kinds cross nodes needlessly, worked out by hand
// from the layouts (rank = sum of coordinate × stride, fastest axis first in the order).

#define BOOST_TEST_MODULE placement
#include <boost/test/unit_test.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pcx/placement.hpp"
#include "pcx/topology.hpp"

namespace {

using pcx::GroupKind;
using pcx::PlacementWarning;

pcx::Topology topology(int world, int tp, int cp, std::optional<std::string> order, std::optional<int> per_node,
                       std::vector<int> eps = {}, std::optional<int> etp = std::nullopt) {
  pcx::ParallelConfig c;
  c.world_size = world;
  c.tensor_parallel_size = tp;
  c.context_parallel_size = cp;
  c.order = std::move(order);
  c.ranks_per_node = per_node;
  c.expert_parallel_sizes = std::move(eps);
  c.expert_tensor_parallel_size = etp;
  return pcx::Topology(c);
}

std::vector<std::string> names(const std::vector<PlacementWarning>& warnings) {
  std::vector<std::string> out;
  for (const PlacementWarning& w : warnings) out.push_back(w.id.name());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(megatrons_default_order_keeps_tensor_parallel_inside_nodes) {
  // 64 = dp 8 x tp 8 on nodes of 8: tp groups are the nodes. Data parallel crosses, and
  // 'dp-tp' would keep it inside, but only by pushing tensor parallel out: no warning.
  BOOST_TEST(check_placement(topology(64, 8, 1, std::nullopt, 8)).empty());
}

BOOST_AUTO_TEST_CASE(tensor_parallel_across_nodes_is_named_with_the_order_that_fixes_it) {
  // 'dp-tp': dp stride 1, tp stride 8, so tp group t is {t, t+8, ..., t+56}: 8 of 8 cross.
  // tensor_context_parallel has the same groups (cp = 1) and is not repeated.
  const auto warnings = check_placement(topology(64, 8, 1, "dp-tp", 8));
  BOOST_TEST_REQUIRE(warnings.size() == 1u);
  BOOST_TEST(warnings[0].id.name() == "tensor_parallel");
  BOOST_TEST(warnings[0].crossing_groups == 8);
  BOOST_TEST(warnings[0].group_count == 8);
  BOOST_TEST(warnings[0].ranks_per_node == 8);
  BOOST_TEST(warnings[0].better_order == "tp-dp");
  BOOST_TEST(warnings[0].message() ==
             "tensor_parallel: 8 of 8 groups cross nodes of 8 ranks; order 'tp-dp' keeps them inside nodes and "
             "moves out no kind of axes as fast in Megatron's default order");
}

BOOST_AUTO_TEST_CASE(tensor_and_tensor_context_groups_across_nodes) {
  // 16 = cp 2 (stride 1) x dp 2 (stride 2) x tp 4 (stride 4), nodes of 8: tp groups
  // {r, r+4, r+8, r+12} all cross (4 of 4); tensor-context groups {0,1,4,5,8,9,12,13} and
  // {2,3,...} cross (2 of 2). Context groups {r, r+1} are inside and stay inside in both
  // fixes ('tp-cp-dp-pp': cp stride 4 within 8; 'cp-tp-dp-pp': cp stride 1).
  const auto warnings = check_placement(topology(16, 4, 2, "cp-dp-tp-pp", 8));
  BOOST_TEST(names(warnings) == (std::vector<std::string>{"tensor_parallel", "tensor_context_parallel"}),
             boost::test_tools::per_element());
  BOOST_TEST_REQUIRE(warnings.size() == 2u);
  BOOST_TEST(warnings[0].crossing_groups == 4);
  BOOST_TEST(warnings[0].better_order == "tp-cp-dp-pp");
  BOOST_TEST(warnings[1].crossing_groups == 2);
  BOOST_TEST(warnings[1].group_count == 2);
  BOOST_TEST(warnings[1].better_order == "cp-tp-dp-pp");
}

BOOST_AUTO_TEST_CASE(expert_kinds_across_nodes) {
  // Expert grid of 16 = edp 4 (stride 1) x etp 2 (stride 4) x ep 2 (stride 8) under order
  // 'dp-tp-ep', nodes of 4: expert groups {r, r+8} (8 of 8 cross; 'ep-dp-tp' gives pairs),
  // expert tensor groups {r, r+4} (8 of 8; 'tp-dp-ep'), tensor-expert groups
  // {r, r+4, r+8, r+12} (4 of 4; 'tp-ep-dp' gives blocks of 4). The dense tp is 1.
  const auto warnings = check_placement(topology(16, 1, 1, "dp-tp-ep", 4, {2}, 2));
  BOOST_TEST(names(warnings) ==
                 (std::vector<std::string>{"expert_parallel/2", "expert_tensor_parallel/2", "tensor_expert_parallel/2"}),
             boost::test_tools::per_element());
  BOOST_TEST_REQUIRE(warnings.size() == 3u);
  BOOST_TEST(warnings[0].crossing_groups == 8);
  BOOST_TEST(warnings[0].better_order == "ep-dp-tp");
  BOOST_TEST(warnings[1].crossing_groups == 8);
  BOOST_TEST(warnings[1].better_order == "tp-dp-ep");
  BOOST_TEST(warnings[2].crossing_groups == 4);
  BOOST_TEST(warnings[2].better_order == "tp-ep-dp");
  // With nodes of 8, expert tensor groups {r, r+4} are inside. Expert groups still cross,
  // but 'ep-dp-tp' would push expert tensor (a faster axis) out, to {r, r+8}: only the
  // tensor-expert groups are named.
  BOOST_TEST(names(check_placement(topology(16, 1, 1, "dp-tp-ep", 8, {2}, 2))) ==
                 (std::vector<std::string>{"tensor_expert_parallel/2"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(nothing_to_check_without_several_nodes) {
  BOOST_TEST(check_placement(topology(64, 8, 1, "dp-tp", std::nullopt)).empty());
  BOOST_TEST(check_placement(topology(64, 8, 1, "dp-tp", 64)).empty());
  BOOST_TEST(check_placement(topology(64, 8, 1, "dp-tp", 128)).empty());
  // Groups of one rank never cross.
  BOOST_TEST(check_placement(topology(8, 1, 1, std::nullopt, 1)).empty());
}

BOOST_AUTO_TEST_CASE(tensor_parallel_larger_than_a_node_is_named_and_never_pushed_further_out) {
  // 16 = dp 2 x tp 8 on nodes of 4: tp groups {0..7}, {8..15} cannot fit and span 2 nodes
  // each. dp groups {r, r+8} cross too; 'dp-tp-cp-ep-pp' would make them pairs, but tp
  // {0, 2, ..., 14} would then span 4 nodes each: no order is proposed for dp.
  const auto warnings = check_placement(topology(16, 8, 1, std::nullopt, 4));
  BOOST_TEST_REQUIRE(warnings.size() == 1u);
  BOOST_TEST(warnings[0].id.name() == "tensor_parallel");
  BOOST_TEST(warnings[0].crossing_groups == 2);
  BOOST_TEST(warnings[0].group_count == 2);
  BOOST_TEST(warnings[0].group_size == 8);
  BOOST_TEST(warnings[0].better_order.empty());
  BOOST_TEST(warnings[0].message() ==
             "tensor_parallel: groups of 8 ranks cannot fit in nodes of 4 ranks: 2 of 2 groups cross nodes and no "
             "order keeps them inside; give nodes of at least 8 ranks or smaller groups");
}

BOOST_AUTO_TEST_CASE(tensor_context_larger_than_a_node_is_named_its_parts_are_not_moved) {
  // 32 = dp 2 x cp 4 x tp 4 on nodes of 8: tp {4k..4k+3} is inside; tensor-context
  // {0..15}, {16..31} cannot fit; cp {r, r+4, r+8, r+12} spans 2 nodes, and 'cp-tp-dp-pp'
  // would take it inside only by spreading tp to {r, r+4, r+8, r+12}.
  BOOST_TEST(names(check_placement(topology(32, 4, 4, std::nullopt, 8))) ==
                 (std::vector<std::string>{"tensor_context_parallel"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(expert_and_data_parallel_larger_than_a_node_are_designs_not_mistakes) {
  // 64 = dp 16 x tp 4, experts 16 on nodes of 8: expert groups {r, r+4, ..., r+60} span
  // 8 nodes, as data parallel does; neither fits in a node, and neither is named.
  BOOST_TEST(check_placement(topology(64, 4, 1, std::nullopt, 8, {16})).empty());
}

BOOST_AUTO_TEST_CASE(a_proposal_never_parts_kinds_that_share_groups_now) {
  // 64 = dp 8 x tp 8, experts 8 with expert tensor 8, nodes of 8: expert groups
  // {r, r+8, ..., r+56} cross. 'ep-tp-cp-dp-pp' would make them blocks of 8, but expert
  // tensor parallel, the same groups as tensor parallel now, would become {r, r+8, ...}:
  // it keeps its say although it is checked as tensor parallel. Nothing is named.
  BOOST_TEST(check_placement(topology(64, 8, 1, std::nullopt, 8, {8}, 8)).empty());
}
