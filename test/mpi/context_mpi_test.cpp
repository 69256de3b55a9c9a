// ParallelContext under mpiexec: every group checked by real communication.
#define BOOST_TEST_MODULE parallel_context_mpi
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <string>

#include "context_checks.hpp"
#include "mpi_fixture.hpp"
#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/mock_mpu.hpp"

namespace {

using pcx::GroupId;
using pcx::GroupKind;
using pcx::MpiCommunicator;
using pcx::ParallelConfig;
using pcx::ParallelContext;
using pcx::ProcessGroup;
using pcx::ReduceOp;
using pcx::test::context_works;
using pcx::test::everyone;
using pcx::test::world_config;
using pcx::test::same_everywhere;

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

std::shared_ptr<const pcx::GridMpu> grid_mpu(const MpiCommunicator& world, int tp, int pp) {
  return std::make_shared<const pcx::GridMpu>(world, tp, pp);
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_group_of_every_configuration_communicates_as_laid_out) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  int configurations = 0;
  bool ok = true;
  for (const int tp : divisors(n)) {
    for (const int pp : divisors(n / tp)) {
      const int dp = n / tp / pp;
      for (const auto order : {pcx::ExpertOrder::expert_first, pcx::ExpertOrder::data_first}) {
        const auto mpu = tp * pp > 1 ? grid_mpu(world, tp, pp) : nullptr;
        const ParallelContext context(world, world_config(divisors(dp), order, std::max(1, n / 2), std::max(1, n / 2)),
                                      mpu, pcx::test::simulated_nodes());
        BOOST_TEST(context.expert_tensor_parallel_size() == tp);
        BOOST_TEST((context.find({GroupKind::tensor_parallel}) != nullptr) == (mpu != nullptr));
        ok = context_works(context) && ok;
        ++configurations;
      }
    }
  }
  BOOST_TEST_MESSAGE(configurations << " configurations on " << n << " ranks");
  BOOST_TEST(everyone(ok));
}

// Megatron's layouts: context and expert tensor parallel sizes, order strings, and the
// optional groups (distributed-optimizer instances, hybrid data-context groups,
// hierarchical context parallel levels).
BOOST_AUTO_TEST_CASE(megatrons_layouts_communicate_as_megatron_lays_them_out) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  int configurations = 0;
  bool ok = true;
  for (const int tp : {1, 2}) {
    for (const int cp : {1, 2, 4}) {
      for (const int pp : {1, 2}) {
        for (const int etp : {1, 2}) {
          for (const int instances : {1, 2, 4}) {
            for (const std::string order : {"tp-cp-ep-dp-pp", "tp-cp-dp-ep-pp", "tp-pp-dp-cp-ep"}) {
              pcx::ParallelConfig config = world_config({});
              config.world_size = n;
              config.tensor_parallel_size = tp;
              config.context_parallel_size = cp;
              config.pipeline_parallel_size = pp;
              config.expert_tensor_parallel_size = etp;
              config.order = order;
              config.distributed_optimizer_instances = instances;
              config.hybrid_context_parallel = n / (tp * pp) % 2 == 0;
              if (cp == 4) config.hierarchical_context_parallel_sizes = {2, 2};
              if (cp == 2) config.hierarchical_context_parallel_sizes = {2};
              for (int ep = 1; ep <= n; ++ep) {
                if (n % (etp * pp * ep * instances) == 0) config.expert_parallel_sizes.push_back(ep);
              }
              // Every rank decides alike which configurations Megatron accepts.
              try {
                pcx::validate(config);
              } catch (const pcx::ConfigError&) {
                continue;
              }
              const auto mpu = std::make_shared<const pcx::GridMpu>(world, config);
              const ParallelContext context(world, config, mpu);
              BOOST_TEST(context.expert_tensor_parallel_size() == etp);
              ok = context_works(context) && ok;
              // A kind with the groups of another, the GridMpu's and the world clone included,
              // holds its communicator (groups of one rank have a self communicator each).
              for (const pcx::GroupView& view : context.topology().all_views()) {
                if (pcx::is_dense_kind(view.id.kind) || view.layout.group_size() == 1) continue;
                for (const pcx::GroupView& other : context.topology().all_views()) {
                  const ProcessGroup* theirs = context.find(other.id);
                  if (theirs != nullptr && other.layout.groups() == view.layout.groups()) {
                    ok = &context.group(view.id).communicator() == &theirs->communicator() && ok;
                  }
                }
              }
              // A rank is in an embedding group exactly on the first and last stage.
              const pcx::RankCoordinates where = context.topology().coordinates(world.rank());
              const bool end_stage = where.pipeline == 0 || where.pipeline == pp - 1;
              ok = (context.find({GroupKind::embedding}) != nullptr) == end_stage && ok;
              ok = (context.find({GroupKind::position_embedding}) != nullptr) == (where.pipeline == 0) && ok;
              ++configurations;
            }
          }
        }
      }
    }
  }
  BOOST_TEST_MESSAGE(configurations << " configurations on " << n << " ranks");
  if (n == 8) BOOST_TEST(configurations >= 100);
  BOOST_TEST(everyone(ok));
}

// Megatron's rank_offset: two grids over the two halves of the world (an encoder and a
// decoder), each built over a communicator of its ranks, have the groups the whole world's
// Topology lays over that part, and the ranks of the other half are in none of them.
BOOST_AUTO_TEST_CASE(a_grid_over_part_of_the_world_is_built_over_a_communicator_of_its_ranks,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int half = n / 2;
  const bool second = world.rank() >= half;
  const int offset = second ? half : 0;
  const int size = second ? n - half : half;
  const auto part = world.split(second ? 1 : 0, world.rank());
  ParallelConfig config = world_config({1});
  config.world_size = size;
  config.tensor_parallel_size = size % 2 == 0 ? 2 : 1;
  config.pipeline_parallel_size = second && size % 4 == 0 ? 2 : 1;
  const auto mpu = std::make_shared<const pcx::GridMpu>(*part, config);
  const ParallelContext context(*part, config, mpu);
  ParallelConfig whole = config;
  whole.world_size = n;
  whole.rank_offset = offset;
  whole.local_world_size = size;
  const pcx::Topology layout(whole);
  bool ok = context_works(context);
  for (const GroupId& id : context.group_ids()) {
    if (id.kind == GroupKind::world || id.kind == GroupKind::sequence_data_parallel) continue;
    std::vector<int> members = context.group(id).ranks();
    for (int& rank : members) rank += offset;
    ok = members == layout.layout(id).group_of(world.rank()) && ok;
    for (int r = 0; r < n; ++r) {
      if (r < offset || r >= offset + size) ok = layout.layout(id).colour(r) == pcx::GroupLayout::kNoGroup && ok;
    }
  }
  BOOST_TEST(everyone(ok));
}

// Creation over the members and splits of the whole world give the same groups, the
// embedding kinds' ranks in no group included (middle pipeline stages take no part).
BOOST_AUTO_TEST_CASE(groups_created_over_their_members_or_split_are_the_same) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int pp = n >= 4 ? 4 : 1;
  bool ok = true;
  for (const auto creation : {pcx::GroupCreation::group, pcx::GroupCreation::split}) {
    pcx::ContextOptions options = pcx::test::simulated_nodes();
    options.communicators.creation = creation;
    ParallelConfig config = world_config(divisors(n / pp), {}, std::max(1, n / 2), std::max(1, n / 2));
    config.pipeline_parallel_size = pp;
    const ParallelContext context(world, config, pp > 1 ? grid_mpu(world, 1, pp) : nullptr, options);
    ok = context_works(context) && ok;
  }
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(two_contexts_used_alternately) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const ParallelContext training(world, world_config({n}));
  const ParallelContext evaluation(world, world_config({1}, pcx::ExpertOrder::data_first, 1));
  bool ok = true;
  for (int step = 0; step < 3; ++step) {
    ok = context_works(training) && ok;
    ok = context_works(evaluation) && ok;
  }
  BOOST_TEST(training.expert_parallel_group(n).size() == n);
  BOOST_TEST(evaluation.expert_parallel_group(1).size() == 1);
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(a_mock_mpu_is_injected) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int tp = n % 2 == 0 ? 2 : 1;
  ParallelConfig megatron;
  megatron.world_size = n;
  megatron.tensor_parallel_size = tp;
  const pcx::Topology layout(megatron);

  auto mpu = std::make_shared<pcx::testing::MockMpu>();
  mpu->set_tensor_parallel_size(tp).set_model_parallel_size(tp);
  mpu->set_data_parallel_group(*pcx::make_group(world, layout.layout({GroupKind::data_parallel})));
  mpu->set_sequence_parallel_group(*pcx::make_group(world, layout.layout({GroupKind::tensor_parallel})));
  const ParallelContext context(world, world_config({n / tp}), mpu);
  BOOST_TEST(context.data_parallel_size() == n / tp);
  BOOST_TEST(context.sequence_parallel_size() == tp);
  BOOST_TEST(context.model_parallel_size() == tp);
  BOOST_TEST(context.broadcast_source_rank() == world.rank() % tp);
  std::vector<int> tensor_group;  // the MPU's sequence groups are the tensor groups: consecutive blocks of tp
  for (int t = 0; t < tp; ++t) tensor_group.push_back(world.rank() / tp * tp + t);
  BOOST_TEST(context.sequence_parallel_group().ranks() == tensor_group, boost::test_tools::per_element());
  BOOST_TEST(everyone(context_works(context)));
}

BOOST_AUTO_TEST_CASE(contexts_and_mpus_are_destroyed_in_any_order) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  for (int order = 0; order < 3; ++order) {
    auto mpu = grid_mpu(world, 1, n % 2 == 0 ? 2 : 1);
    auto first = std::make_unique<ParallelContext>(world, world_config({1}), mpu);
    auto second = std::make_unique<ParallelContext>(world, world_config({mpu->data_parallel_size()}, {}, n), mpu);
    const std::vector<std::function<void()>> releases = {[&] { first.reset(); }, [&] { second.reset(); },
                                                         [&] { mpu.reset(); }};
    for (std::size_t i = 0; i < releases.size(); ++i) releases[(i + static_cast<std::size_t>(order)) % 3]();
    BOOST_TEST(everyone(true));
  }
}

namespace {

// Every rank throws; returns the message, and whether every rank threw the same type.
template <class Expected>
std::string expect_everywhere(const std::function<void()>& build) {
  std::string message;
  bool right_type = false;
  try {
    build();
  } catch (const Expected& e) {
    message = e.what();
    right_type = true;
  } catch (const std::exception& e) {
    message = e.what();
  }
  BOOST_TEST(everyone(right_type), message);
  return message;
}

}  // namespace

BOOST_AUTO_TEST_CASE(ranks_that_disagree_all_throw_the_same_mismatch,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const bool odd_one = world.rank() == n - 1;
  const std::vector<ParallelConfig> disagreements = {
      world_config({odd_one ? 1 : n}),
      world_config({1}, odd_one ? pcx::ExpertOrder::data_first : pcx::ExpertOrder::expert_first),
      world_config({1}, {}, odd_one ? 1 : n),
      world_config({1}, {}, {}, odd_one ? std::optional<int>{} : std::optional<int>{n}),
      [&] {
        ParallelConfig instances = world_config({1});
        instances.distributed_optimizer_instances = odd_one ? 1 : 2;
        return instances;
      }(),
  };
  for (const ParallelConfig& config : disagreements) {
    const std::string message = expect_everywhere<pcx::ConfigMismatch>([&] { ParallelContext(world, config); });
    BOOST_TEST(same_everywhere(message), message);
    BOOST_TEST(message.find("ranks disagree") != std::string::npos, message);
  }
  // An MPU that reports another model parallel size on one rank.
  auto mpu = std::make_shared<pcx::testing::MockMpu>();
  mpu->set_model_parallel_size(odd_one ? 2 : 1);
  mpu->set_data_parallel_group(*pcx::make_group(world, pcx::RankGrid({{"data", n}}).along({"data"})));
  const std::string message =
      expect_everywhere<pcx::ConfigMismatch>([&] { ParallelContext(world, world_config({1}), mpu); });
  BOOST_TEST(message.find("MPU model parallel size ranges from 1 to 2") != std::string::npos, message);
}

BOOST_AUTO_TEST_CASE(an_invalid_configuration_fails_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const std::string message =
      expect_everywhere<pcx::ConfigError>([&] { ParallelContext(world, world_config({n + 1})); });
  BOOST_TEST(same_everywhere(message), message);
  BOOST_TEST(message.find(fmt::format("expert parallel size {}", n + 1)) != std::string::npos, message);
}

BOOST_AUTO_TEST_CASE(ranks_that_say_the_same_in_other_words_agree) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const bool odd_one = world.rank() == n - 1;
  ParallelConfig config = world_config({1}, {}, odd_one ? n : 4 * n, odd_one ? n : 2 * n);
  config.world_size = odd_one ? n : 0;  // 0: the world's size
  const ParallelContext context(world, config);
  BOOST_TEST(context.zero_param_intra_group().size() == n);
  BOOST_TEST(everyone(context_works(context)));
}

BOOST_AUTO_TEST_CASE(ranks_whose_sharing_settings_differ_all_throw_the_same_mismatch,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  // With other dedicated kinds, the last rank would split where the others share.
  const MpiCommunicator world = MpiCommunicator::world();
  pcx::ContextOptions options;
  if (world.rank() == world.size() - 1) options.dedicated = {GroupKind::expert_parallel};
  const std::string message =
      expect_everywhere<pcx::ConfigMismatch>([&] { ParallelContext(world, world_config({1}), nullptr, options); });
  BOOST_TEST(message.find("the communicator settings and dedicated kinds (ContextOptions) differ") != std::string::npos,
             message);
  BOOST_TEST(same_everywhere(message));

  // A rank that does not check the nodes would skip the collective that asks for them.
  pcx::ContextOptions unchecked;
  unchecked.check_nodes = world.rank() != 0;
  const std::string nodes = expect_everywhere<pcx::ConfigMismatch>(
      [&] { ParallelContext(world, world_config({1}, {}, {}, world.size()), nullptr, unchecked); });
  BOOST_TEST(nodes.find("nodes checked (ContextOptions::check_nodes) ranges from 0 to 1") != std::string::npos, nodes);
}

BOOST_AUTO_TEST_CASE(grid_mpus_that_disagree_all_throw_the_same_mismatch,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int tensor = world.rank() == 0 ? 1 : n;
  const std::string message = expect_everywhere<pcx::ConfigMismatch>([&] { pcx::GridMpu mpu(world, tensor); });
  BOOST_TEST(same_everywhere(message), message);
  BOOST_TEST(message.find(fmt::format("tensor parallel size ranges from 1 to {}", n)) != std::string::npos, message);

  // Context parallel sizes and orders are compared as well.
  pcx::ParallelConfig config = world_config({});
  config.context_parallel_size = world.rank() == 0 ? 1 : 2;
  if (n % 2 == 0) {
    const std::string cp = expect_everywhere<pcx::ConfigMismatch>([&] { pcx::GridMpu mpu(world, config); });
    BOOST_TEST(cp.find("GridMpu context parallel size ranges from 1 to 2") != std::string::npos, cp);
  }
  config.context_parallel_size = 1;
  config.order = world.rank() == 0 ? "tp-cp-ep-dp-pp" : "dp-tp";
  const std::string order = expect_everywhere<pcx::ConfigMismatch>([&] { pcx::GridMpu mpu(world, config); });
  BOOST_TEST(order.find("GridMpu order strings differ") != std::string::npos, order);
  BOOST_TEST(same_everywhere(order), order);
}

BOOST_AUTO_TEST_CASE(a_rank_that_rejects_the_configuration_fails_every_rank,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  // Every MPU reports the same sizes, but the last rank's data parallel group is in
  // another order than the layout the expert groups assume: only that rank can tell.
  std::vector<int> members(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) members[static_cast<std::size_t>(i)] = i;
  if (world.rank() == n - 1) std::reverse(members.begin(), members.end());
  auto mpu = std::make_shared<pcx::testing::MockMpu>();
  mpu->set_data_parallel_group(ProcessGroup(members, world.dup()));
  const std::string message =
      expect_everywhere<pcx::ConfigError>([&] { ParallelContext(world, world_config({1}), mpu); });
  // Every rank throws the rejecting rank's own error, with its rank.
  BOOST_TEST(message.find(fmt::format("rank {}: on rank {} the MPU's data parallel group", n - 1, n - 1)) == 0,
             message);
  BOOST_TEST(same_everywhere(message));
}

BOOST_AUTO_TEST_CASE(grid_mpus_with_tensor_sizes_above_the_world_agree) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  // n and 2n both mean the whole world, as the layout clamps the tensor size.
  const int tensor = world.rank() == 0 ? n : 2 * n;
  std::string error;
  int built = 0;
  try {
    built = pcx::GridMpu(world, tensor).tensor_parallel_size();
  } catch (const std::exception& e) {
    error = e.what();
  }
  BOOST_TEST(everyone(built == n), error);
}

BOOST_AUTO_TEST_CASE(a_moved_from_world_or_context_is_refused) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  MpiCommunicator emptied = MpiCommunicator::world();
  const MpiCommunicator taker = std::move(emptied);
  bool ok = false;
  try {
    ParallelContext(emptied, world_config({1}));  // throws before communicating
  } catch (const pcx::ConfigError& e) {
    ok = std::string_view(e.what()).find("moved-from mpi communicator") != std::string_view::npos;
  }

  ParallelContext first(world, world_config({n}));
  ParallelContext second = std::move(first);
  ok = first.world_size() == 0 && first.rank() == -1 && ok;
  try {
    (void)first.data_parallel_group();
    ok = false;
  } catch (const pcx::ConfigError&) {
  }
  ok = context_works(second) && ok;
  second = ParallelContext(world, world_config({1}));
  ok = context_works(second) && ok;
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(the_nodes_mpi_sees_are_detected_and_a_configured_number_is_checked,
                     *boost::unit_test::precondition(pcx::test::one_node)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  BOOST_TEST(world.nodes() == std::vector<int>(static_cast<std::size_t>(n), 0));
  // A child's nodes are named by its own ranks: its members here are one node, rank 0.
  const auto odd = world.split(world.rank() % 2, world.rank());
  BOOST_TEST(odd->nodes() == std::vector<int>(static_cast<std::size_t>(odd->size()), 0));

  const ParallelContext detected(world, world_config({1}, {}, {}, pcx::kDetectRanksPerNode));
  BOOST_TEST(detected.topology().config().ranks_per_node.value_or(0) == n);
  BOOST_TEST(detected.all_to_all_local_group().size() == n);
  BOOST_TEST(detected.find({GroupKind::all_to_all_global}) == nullptr);
  BOOST_CHECK_NO_THROW(ParallelContext(world, world_config({1}, {}, {}, 2 * n)));  // one node, clamped

  if (n >= 2) {
    const std::string message =
        expect_everywhere<pcx::ConfigError>([&] { ParallelContext(world, world_config({1}, {}, {}, n / 2)); });
    BOOST_TEST(message.find(fmt::format("ranks per node {} in the configuration disagrees with the world "
                                        "communicator's 1 node of {} ranks",
                                        n / 2, n)) != std::string::npos,
               message);
    BOOST_TEST(same_everywhere(message));
  }
}
