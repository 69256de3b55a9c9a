// ParallelContext without processes: the context of every rank of a simulated world,
// built over FakeCommunicators, checked against the layout engine.
#define BOOST_TEST_MODULE parallel_context
#include <fmt/format.h>

#include <boost/test/unit_test.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <random>
#include <sstream>

#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/rebuild.hpp"
#include "pcx/self_communicator.hpp"
#include "pcx/testing/fake_communicator.hpp"
#include "pcx/testing/mock_mpu.hpp"
#include "spec_reference.hpp"
#include "support/config.hpp"

namespace {

using pcx::GroupId;
using pcx::GroupKind;
using pcx::ParallelConfig;
using pcx::ParallelContext;
using pcx::ProcessGroup;
using pcx::Topology;
using pcx::testing::FakeCommunicator;
using pcx::Communicator;
using pcx::testing::FakeMember;
using pcx::testing::FakeWorld;
using pcx::testing::MockMpu;
using pcx::testing::fake_process_group;
using pcx::test::make_config;
using pcx::test::Reference;


bool uses_mpu(const ParallelConfig& config) {
  return config.tensor_parallel_size > 1 || config.pipeline_parallel_size > 1;
}

// Builds the context of every rank and checks each of its groups against the SPEC's
// formulas (spec_reference.hpp), which share nothing with the layout engine.
void check_every_rank(const ParallelConfig& config) {
  BOOST_TEST_CONTEXT(fmt::format("world {} tp {} pp {} ep [{}] {} hpz {} per node {}", config.world_size,
                                 config.tensor_parallel_size, config.pipeline_parallel_size,
                                 fmt::join(config.expert_parallel_sizes, ","), to_string(config.expert_order),
                                 config.zero_hpz_size.value_or(0), config.ranks_per_node.value_or(0))) {
    const Reference reference = Reference::of(config);
    // Without sequence parallelism, sequence data parallel is data parallel (DeepSpeed's rule).
    const auto expected_group = [&](pcx::GroupId id, int rank) {
      if (id.kind == GroupKind::sequence_data_parallel) id.kind = GroupKind::data_parallel;
      return reference.group(id, rank, config.zero_hpz_size, config.ranks_per_node);
    };
    const auto world = std::make_shared<FakeWorld>(config.world_size);
    // The kinds the context builds: all but the world clone and the MPU's dense kinds.
    std::vector<pcx::GroupId> split_kinds;
    const Topology topology(config);
    for (const pcx::GroupView& view : topology.all_views()) {
      if (view.id.kind != GroupKind::world && !pcx::is_dense_kind(view.id.kind)) split_kinds.push_back(view.id);
    }
    // One split per distinct set of groups (kinds with the same groups share one, and
    // groups of the whole world share the clone), none for groups of one rank.
    const auto groups_of = [&](const pcx::GroupId& id) {
      std::vector<std::vector<int>> groups;
      for (int rank = 0; rank < config.world_size; ++rank) groups.push_back(expected_group(id, rank));
      return groups;
    };
    std::vector<std::vector<std::vector<int>>> distinct = {groups_of({GroupKind::world})};
    for (const pcx::GroupId& id : split_kinds) {
      auto groups = groups_of(id);
      if (groups.front().size() > 1 && std::ranges::find(distinct, groups) == distinct.end()) {
        distinct.push_back(std::move(groups));
      }
    }
    const auto expected_splits = static_cast<int>(distinct.size()) - 1;
    // Groups of one rank share one self communicator: every such kind has the same groups
    // (in a world of one rank, the world clone's).
    const int expected_self = config.world_size > 1 && std::ranges::any_of(split_kinds, [&](const pcx::GroupId& id) {
      return expected_group(id, 0).size() == 1;
    }) ? 1 : 0;
    bool all_match = true;
    for (int rank = 0; rank < config.world_size; ++rank) {
      const FakeCommunicator comm(world, rank);
      auto mpu = uses_mpu(config) ? pcx::testing::mock_megatron_mpu(world, rank, config.tensor_parallel_size,
                                                                    config.pipeline_parallel_size)
                                  : nullptr;
      const int splits_before = world->split_count(rank);
      const ParallelContext context(comm, config, mpu);
      BOOST_TEST(world->split_count(rank) - splits_before == expected_splits);
      const pcx::ContextResources held = context.resources();
      BOOST_TEST(held.communicators == expected_splits + 1);  // the world clone and each split
      BOOST_TEST(held.self_communicators == expected_self);
      BOOST_TEST(held.shared_kinds == static_cast<int>(split_kinds.size()) - expected_splits - expected_self);
      for (const pcx::GroupId& id : context.group_ids()) {
        const std::vector<int> expected = expected_group(id, rank);
        const ProcessGroup& group = context.group(id);
        const auto position = std::ranges::find(expected, rank) - expected.begin();
        const bool match = group.ranks() == expected && group.rank() == position &&
                           group.communicator().size() == static_cast<int>(expected.size());
        if (!match) BOOST_ERROR(fmt::format("rank {} {}: [{}]", rank, id.name(), fmt::join(group.ranks(), ",")));
        all_match = all_match && match;
      }
    }
    BOOST_TEST(all_match);
    BOOST_CHECK_NO_THROW(world->verify());
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(seed_example_every_rank_gets_its_groups_with_one_split_per_kind) {
  check_every_rank(make_config(16, 2, 1, {4}));
  check_every_rank(make_config(16, 2, 1, {4}, pcx::ExpertOrder::data_first));
  check_every_rank(make_config(16, 1, 1, {2, 4, 8}, {}, 4, 8));
  check_every_rank(make_config(24, 2, 2, {3}, pcx::ExpertOrder::data_first, 6, 4));
}

BOOST_AUTO_TEST_CASE(random_configurations_up_to_512_ranks_match_the_layout) {
  const unsigned seed = 20261125;
  BOOST_TEST_MESSAGE("random seed " << seed);
  std::mt19937 random(seed);
  const auto pick_divisor = [&](int n) {
    std::vector<int> divisors;
    for (int d = 1; d <= n; ++d)
      if (n % d == 0) divisors.push_back(d);
    return divisors[std::uniform_int_distribution<std::size_t>(0, divisors.size() - 1)(random)];
  };
  for (int trial = 0; trial < 40; ++trial) {
    const int world = trial < 4 ? 512 : pick_divisor(256) * (1 + static_cast<int>(random() % 2));
    const int tp = pick_divisor(world);
    const int pp = pick_divisor(world / tp);
    const int dp = world / tp / pp;
    std::vector<int> eps;
    for (int e = pick_divisor(dp); eps.size() < 2 && std::ranges::find(eps, e) == eps.end(); e = pick_divisor(dp)) {
      eps.push_back(e);
    }
    const auto order = random() % 2 ? pcx::ExpertOrder::expert_first : pcx::ExpertOrder::data_first;
    const std::optional<int> hpz = random() % 2 ? std::optional(pick_divisor(world)) : std::nullopt;
    const std::optional<int> per_node = random() % 2 ? std::optional(pick_divisor(world)) : std::nullopt;
    check_every_rank(make_config(world, tp, pp, eps, order, hpz, per_node));
  }
}

BOOST_AUTO_TEST_CASE(splits_per_rank_do_not_grow_with_the_world) {
  for (int world = 8; world <= (1 << 20); world *= 16) {
    const auto fake = std::make_shared<FakeWorld>(world);
    const FakeCommunicator comm(fake, world - 1);
    const ParallelContext context(comm, make_config(world, 1, 1, {2, 4}, {}, 2, 4));
    // expert_parallel and expert_data_parallel per ep size, hpZ, local and global all-to-all,
    // Megatron's expert kinds; with tp = pp = 1, hpZ 2 has the groups of expert_parallel/2,
    // local those of expert_parallel/4 and global those of expert_data_parallel/4, and the
    // tensor-expert kinds those of expert_parallel (expert tensor: one rank): 4 splits.
    BOOST_TEST(fake->split_count(world - 1) == 4);
    BOOST_TEST(fake->dup_count(world - 1) == 1);
  }
}

BOOST_AUTO_TEST_CASE(getters_follow_the_seed_with_its_bugs_fixed) {
  const auto world = std::make_shared<FakeWorld>(16);
  const FakeCommunicator comm(world, 5);
  const ParallelContext context(comm, make_config(16, 1, 1, {2, 4}, pcx::ExpertOrder::data_first, 32));
  BOOST_TEST(context.rank() == 5);
  BOOST_TEST(context.world_group().size() == 16);
  BOOST_TEST(&context.data_parallel_group() == &context.world_group());
  BOOST_TEST(&context.sequence_data_parallel_group() == &context.world_group());
  BOOST_CHECK_THROW((void)context.sequence_parallel_group(), pcx::GroupNotFound);
  BOOST_TEST(context.find({pcx::GroupKind::sequence_parallel}) == nullptr);
  BOOST_TEST(context.sequence_parallel_size() == 1);
  BOOST_TEST(context.sequence_parallel_rank() == 0);
  BOOST_TEST(context.model_parallel_size() == 1);
  BOOST_TEST(context.expert_tensor_parallel_size() == 1);
  BOOST_TEST(context.broadcast_source_rank() == 0);
  BOOST_TEST(context.max_expert_parallel_size().value_or(0) == 4);
  BOOST_TEST(context.max_expert_parallel_group().ranks() == std::vector<int>({1, 5, 9, 13}));
  // Data-first ep 4 on 16 ranks: ep group [1,5,9,13], edp group [4,5,6,7].
  BOOST_TEST(context.expert_data_parallel_group(4).ranks() == std::vector<int>({4, 5, 6, 7}));
  BOOST_TEST(context.expert_broadcast_source_rank(4) == 4);
  // The seed's (rank // size) * size would say 4; the group's first rank is 1.
  BOOST_TEST(context.expert_parallel_source_rank(4) == 1);
  // hpZ 32 on 16 ranks is clamped to the world.
  BOOST_TEST(context.find({pcx::GroupKind::zero_param_intra}) == &context.zero_param_intra_group());
  BOOST_TEST(context.zero_param_intra_group().size() == 16);
  BOOST_CHECK_THROW((void)context.all_to_all_local_group(), pcx::GroupNotFound);
  BOOST_CHECK_THROW((void)context.expert_parallel_group(8), pcx::GroupNotFound);
}

BOOST_AUTO_TEST_CASE(a_context_without_experts_has_no_largest_expert_group) {
  const auto world = std::make_shared<FakeWorld>(4);
  const ParallelContext context(FakeCommunicator(world, 0), make_config(4, 1, 1, {}));
  BOOST_TEST(!context.max_expert_parallel_size().has_value());
  BOOST_CHECK_THROW((void)context.max_expert_parallel_group(), pcx::GroupNotFound);
  BOOST_TEST(context.find({pcx::GroupKind::zero_param_intra}) == nullptr);
  BOOST_CHECK_THROW((void)context.zero_param_intra_group(), pcx::GroupNotFound);
}

BOOST_AUTO_TEST_CASE(mpu_groups_and_sizes_are_used) {
  const auto world = std::make_shared<FakeWorld>(8);
  const int rank = 3;
  auto mpu = std::make_shared<MockMpu>();
  mpu->set_tensor_parallel_size(2).set_model_parallel_size(2);
  mpu->set_data_parallel_group(fake_process_group(world, {1, 3, 5, 7}, rank));
  mpu->set_sequence_parallel_group(fake_process_group(world, {2, 3}, rank));
  mpu->set_sequence_data_parallel_group(fake_process_group(world, {1, 3}, rank));
  const ParallelContext context(FakeCommunicator(world, rank), make_config(8, 1, 1, {2}), mpu);
  BOOST_TEST(context.data_parallel_size() == 4);
  BOOST_TEST(context.data_parallel_group().ranks() == std::vector<int>({1, 3, 5, 7}));
  BOOST_TEST(context.model_parallel_size() == 2);
  BOOST_TEST(context.expert_tensor_parallel_size() == 2);
  BOOST_TEST(context.sequence_parallel_size() == 2);
  BOOST_TEST(context.sequence_parallel_rank() == 1);
  BOOST_TEST(context.broadcast_source_rank() == 1);
  BOOST_TEST(context.expert_parallel_group(2).ranks() == std::vector<int>({1, 3}));
  BOOST_TEST(context.expert_data_parallel_group(2).ranks() == std::vector<int>({3, 7}));
  BOOST_TEST(context.mpu() == mpu.get());
}

namespace {

bool message_has(const pcx::Error& e, std::initializer_list<std::string_view> parts) {
  const std::string_view what = e.what();
  for (const std::string_view part : parts) {
    if (what.find(part) == std::string_view::npos) return false;
  }
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(bad_configurations_are_config_errors_naming_the_values) {
  const auto world = std::make_shared<FakeWorld>(8);
  const FakeCommunicator comm(world, 0);
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, make_config(8, 2, 1, {})), pcx::ConfigError, [](const pcx::Error& e) {
    return message_has(e, {"tensor parallel size 2", "MPU"});
  });
  pcx::ParallelConfig context_parallel = make_config(8);
  context_parallel.context_parallel_size = 2;
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, context_parallel), pcx::ConfigError, [](const pcx::Error& e) {
    return message_has(e, {"context parallel size 2", "MPU"});
  });
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, make_config(16, 1, 1, {})), pcx::ConfigError, [](const pcx::Error& e) {
    return message_has(e, {"16", "8"});
  });
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, make_config(8, 1, 1, {3})), pcx::ConfigError,
                        [](const pcx::Error& e) { return message_has(e, {"expert parallel size 3"}); });
  // A grid over part of the world is built over a communicator of that part.
  pcx::ParallelConfig part = make_config(8);
  part.rank_offset = 4;
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, part), pcx::ConfigError, [](const pcx::Error& e) {
    return message_has(e, {"rank offset 4", "local world size 4", "ParallelContext", "Communicator::split"});
  });
  part.rank_offset = 0;
  part.local_world_size = 2;
  BOOST_CHECK_EXCEPTION(pcx::GridMpu(comm, part), pcx::ConfigError, [](const pcx::Error& e) {
    return message_has(e, {"local world size 2", "GridMpu", "Communicator::split"});
  });

  // The MPU says tp 2 but its data parallel group is not Megatron's.
  auto wrong = std::make_shared<MockMpu>();
  wrong->set_tensor_parallel_size(2).set_model_parallel_size(2);
  wrong->set_data_parallel_group(fake_process_group(world, {0, 1, 2, 3}, 0));
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, make_config(8, 1, 1, {2}), wrong), pcx::ConfigError,
                        [](const pcx::Error& e) {
                          return message_has(e, {"[0,1,2,3]", "[0,2,4,6]"});
                        });

  auto disagreeing = std::make_shared<MockMpu>();
  disagreeing->set_tensor_parallel_size(2).set_data_parallel_group(fake_process_group(world, {0, 2, 4, 6}, 0));
  BOOST_CHECK_EXCEPTION(ParallelContext(comm, make_config(8, 4, 1, {}), disagreeing), pcx::ConfigError,
                        [](const pcx::Error& e) {
                          return message_has(e, {"4", "MPU's 2"});
                        });

  // An MPU without a data parallel group set is rejected, not a crash.
  BOOST_CHECK_THROW(ParallelContext(comm, make_config(8, 1, 1, {}), std::make_shared<MockMpu>()), pcx::ConfigError);
}

BOOST_AUTO_TEST_CASE(a_failing_operation_names_the_group_kind_and_rank) {
  const ParallelConfig config = make_config(16, 1, 1, {2, 4}, {}, 4, 8);
  int operations = 0;
  {
    const auto world = std::make_shared<FakeWorld>(16);
    const ParallelContext context(FakeCommunicator(world, 6), config);
    operations = world->operation_count();
  }
  // Agreement, the world's nodes (a fake world has none to report), world clone, one split
  // per distinct kind: expert parallel and expert data parallel of 2 and 4, local and global
  // all-to-all (hpZ 4 shares expert_parallel/4).
  BOOST_TEST(operations == 1 + 1 + 1 + 6);
  for (int k = 0; k < operations; ++k) {
    const auto world = std::make_shared<FakeWorld>(16);
    world->fail_operation(k);
    {
      const FakeCommunicator comm(world, 6);
      BOOST_CHECK_EXCEPTION(ParallelContext(comm, config), pcx::CommError, [k](const pcx::CommError& e) {
        // The first operation compares configurations, the second asks for the nodes; every
        // later one builds a kind.
        return message_has(e, {"rank 6", "injected",
                               k == 0 ? "comparing the configuration" : k == 1 ? "for its nodes" : "groups"});
      });
      // Everything the failed constructor made is released: only `comm` is left.
      BOOST_TEST(world->live_communicators() == 1);
    }
    BOOST_TEST(world->live_communicators() == 0);
  }
}

namespace {

// A fake whose splits give children one member too many, as a backend would whose ranks
// disagreed on the colours; everything else is its inner fake's.
class WrongSizeSplits final : public Communicator {
 public:
  WrongSizeSplits(std::shared_ptr<FakeWorld> world, int rank) : world_(world), inner_(std::move(world), rank) {}
  [[nodiscard]] int size() const noexcept override { return inner_.size(); }
  [[nodiscard]] int rank() const noexcept override { return inner_.rank(); }
  [[nodiscard]] std::string_view backend() const noexcept override { return "wrong-size-splits"; }
  [[nodiscard]] std::unique_ptr<Communicator> self() const override { return inner_.self(); }

 private:
  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                       const pcx::CommOptions&) const override {
    if (colour == kNoColour) return nullptr;
    return std::make_unique<FakeCommunicator>(world_, FakeMember{.size = size + 1, .rank = key, .caller = rank()});
  }
  [[nodiscard]] std::unique_ptr<Communicator> do_dup(const pcx::CommOptions&) const override {
    return std::make_unique<WrongSizeSplits>(world_, rank());
  }
  void do_all_reduce(const void* send, void* recv, std::size_t count, pcx::DataType type,
                     pcx::ReduceOp op) const override {
    inner_.all_reduce(send, recv, count, type, op);
  }
  void do_all_to_all(const void*, void*, std::size_t, pcx::DataType) const override {}
  void do_all_to_all_v(const void*, std::span<const std::size_t>, std::span<const std::size_t>, void*,
                       std::span<const std::size_t>, std::span<const std::size_t>, pcx::DataType) const override {}
  void do_all_gather(const void*, void*, std::size_t, pcx::DataType) const override {}
  void do_reduce_scatter(const void*, void*, std::size_t, pcx::DataType, pcx::ReduceOp) const override {}
  void do_broadcast(void*, std::size_t, pcx::DataType, int) const override {}
  void do_send(const void*, std::size_t, pcx::DataType, int) const override {}
  void do_recv(void*, std::size_t, pcx::DataType, int) const override {}
  void do_barrier() const override {}

  std::shared_ptr<FakeWorld> world_;
  FakeCommunicator inner_;
};

}  // namespace

BOOST_AUTO_TEST_CASE(a_split_whose_child_has_the_wrong_size_is_a_comm_error_and_leaks_nothing) {
  const auto world = std::make_shared<FakeWorld>(16);
  {
    const WrongSizeSplits comm(world, 5);
    BOOST_CHECK_EXCEPTION((void)comm.split_checked(1, 2, 4), pcx::CommError, [](const pcx::CommError& e) {
      return message_has(e, {"gave a child of 5 members", "not 4", "ranks disagree on the colours"});
    });
    BOOST_CHECK_EXCEPTION(ParallelContext(comm, make_config(16, 1, 1, {4})), pcx::CommError,
                          [](const pcx::CommError& e) { return message_has(e, {"expert_parallel/4", "rank 5"}); });
    BOOST_TEST(world->live_communicators() == 1);  // the inner fake of `comm` alone
  }
  BOOST_TEST(world->live_communicators() == 0);
}

BOOST_AUTO_TEST_CASE(contexts_in_one_process_are_independent) {
  const auto world = std::make_shared<FakeWorld>(8);
  const FakeCommunicator comm(world, 2);
  const ParallelContext training(comm, make_config(8, 1, 1, {4}));
  const ParallelContext evaluation(comm, make_config(8, 1, 1, {2}, pcx::ExpertOrder::data_first));
  BOOST_TEST(training.expert_parallel_group(4).ranks() == std::vector<int>({0, 1, 2, 3}));
  BOOST_TEST(evaluation.expert_parallel_group(2).ranks() == std::vector<int>({2, 6}));
  BOOST_CHECK_THROW((void)training.expert_parallel_group(2), pcx::GroupNotFound);
  ParallelContext moved = ParallelContext(comm, make_config(8, 1, 1, {8}));
  BOOST_TEST(moved.expert_parallel_group(8).size() == 8);
  BOOST_TEST(&moved.data_parallel_group() == &moved.world_group());
}

BOOST_AUTO_TEST_CASE(fake_collectives_behave_as_if_every_member_passed_the_same_buffer) {
  const auto world = std::make_shared<FakeWorld>(4);
  const FakeCommunicator comm(world, 1);
  std::vector<std::int32_t> values = {1, 2, 3, 4};
  std::vector<std::int32_t> out(4);
  comm.all_reduce(std::span<const std::int32_t>(values), std::span<std::int32_t>(out), pcx::ReduceOp::sum);
  BOOST_TEST(out == std::vector<std::int32_t>({4, 8, 12, 16}));
  comm.all_to_all(std::span<const std::int32_t>(values), std::span<std::int32_t>(out));
  BOOST_TEST(out == std::vector<std::int32_t>({2, 2, 2, 2}));
  std::vector<double> gathered(8);
  comm.all_gather(std::span<const double>(std::vector<double>{0.5, 1.5}), std::span<double>(gathered));
  BOOST_TEST(gathered == std::vector<double>({0.5, 1.5, 0.5, 1.5, 0.5, 1.5, 0.5, 1.5}));
  std::vector<std::int32_t> block(1);
  comm.reduce_scatter(std::span<const std::int32_t>(values), std::span<std::int32_t>(block), pcx::ReduceOp::max);
  BOOST_TEST(block[0] == 2);
  BOOST_CHECK_THROW(comm.all_gather(std::span<const double>(gathered), std::span<double>(gathered.data(), 3)),
                    pcx::ConfigError);
  BOOST_CHECK_THROW(comm.broadcast(std::span<std::int32_t>(values), 4), pcx::ConfigError);
  BOOST_CHECK_THROW(
      comm.all_reduce(std::span<const std::int32_t>(values), std::span<std::int32_t>(block), pcx::ReduceOp::sum),
      pcx::ConfigError);
  BOOST_CHECK_THROW(
      comm.reduce_scatter(std::span<const std::int32_t>(block), std::span<std::int32_t>(block), pcx::ReduceOp::sum),
      pcx::ConfigError);
  const std::vector<std::int32_t> three = {1, 2, 3};
  std::vector<std::int32_t> three_out(3);
  BOOST_CHECK_THROW(comm.all_to_all(std::span<const std::int32_t>(three), std::span<std::int32_t>(three_out)),
                    pcx::ConfigError);
  BOOST_CHECK_THROW(ProcessGroup(std::vector<int>{0}, nullptr), pcx::ConfigError);
}

BOOST_AUTO_TEST_CASE(fake_world_verify_catches_splits_no_real_job_could_make) {
  const auto world = std::make_shared<FakeWorld>(4);
  (void)FakeCommunicator(world, 0).split_checked(7, 0, 2);
  (void)FakeCommunicator(world, 1).split_checked(7, 1, 2);
  BOOST_CHECK_NO_THROW(world->verify());
  (void)FakeCommunicator(world, 0).split_checked(3, 0, 2);
  (void)FakeCommunicator(world, 2).split_checked(3, 0, 2);  // the same key twice
  BOOST_CHECK_THROW(world->verify(), pcx::Error);
  (void)FakeCommunicator(world, 0).split_checked(5, 0, 2);
  (void)FakeCommunicator(world, 1).split_checked(5, 1, 3);  // another size
  BOOST_CHECK_THROW(world->verify(), pcx::Error);
}

BOOST_AUTO_TEST_CASE(process_groups_compare_members_with_a_layout) {
  const auto world = std::make_shared<FakeWorld>(8);
  const pcx::GroupLayout layout = pcx::RankGrid({{"data", 4}, {"tensor", 2}}).along({"data"});
  const ProcessGroup implied(layout, 1,
                             std::make_unique<FakeCommunicator>(world, FakeMember{.size = 4, .rank = 2, .caller = 5}));
  const ProcessGroup listed = fake_process_group(world, {1, 3, 5, 7}, 5);
  const ProcessGroup reordered = fake_process_group(world, {3, 1, 5, 7}, 5);
  BOOST_TEST(implied.ranks() == std::vector<int>({1, 3, 5, 7}));
  BOOST_TEST(implied.same_members(layout, 1));
  BOOST_TEST(!implied.same_members(layout, 0));
  BOOST_TEST(listed.same_members(layout, 1));
  BOOST_TEST(!reordered.same_members(layout, 1));
  BOOST_TEST(implied.contains(7));
  BOOST_TEST(!implied.contains(6));
  BOOST_TEST(!implied.contains(-1));
  BOOST_TEST(implied.global_rank(3) == 7);
  BOOST_CHECK_THROW((void)implied.global_rank(4), pcx::ConfigError);
  BOOST_CHECK_THROW(
      ProcessGroup(layout, 2, std::make_unique<FakeCommunicator>(world, FakeMember{.size = 3, .rank = 0, .caller = 0})),
      pcx::ConfigError);
  BOOST_CHECK_THROW(fake_process_group(world, {1, 1}, 1), pcx::ConfigError);
}

BOOST_AUTO_TEST_CASE(a_group_shares_its_communicator_only_with_the_same_members) {
  const auto world = std::make_shared<FakeWorld>(8);
  const pcx::GroupLayout pairs = pcx::RankGrid({{"data", 4}, {"tensor", 2}}).along({"tensor"});
  const pcx::GroupLayout same_pairs = pcx::RankGrid({{"block", 4}, {"one", 1}, {"pair", 2}}).along({"pair", "one"});
  const pcx::GroupLayout strided = pcx::RankGrid({{"data", 4}, {"tensor", 2}}).along({"data"});
  const ProcessGroup first(pairs, 2, std::make_unique<FakeCommunicator>(world, FakeMember{.size = 2, .rank = 1, .caller = 5}));
  BOOST_TEST(!first.shares_communicator());
  const ProcessGroup second = first.shared_as(same_pairs, 2);
  BOOST_TEST(&second.communicator() == &first.communicator());
  BOOST_TEST(first.shares_communicator());
  BOOST_TEST(second.ranks() == std::vector<int>({4, 5}));
  BOOST_TEST(second.made_from(pairs));
  BOOST_TEST(!second.made_from(strided));
  BOOST_CHECK_EXCEPTION((void)first.shared_as(pairs, 1), pcx::ConfigError,
                        [](const pcx::Error& e) { return message_has(e, {"[2,3]", "[4,5]"}); });
  BOOST_CHECK_THROW((void)first.shared_as(strided, 1), pcx::ConfigError);
  BOOST_TEST(world->live_communicators() == 1);
}

BOOST_AUTO_TEST_CASE(kinds_with_the_same_groups_share_unless_dedicated) {
  // tp = pp = 1, hpZ 4 = expert_parallel/4 and the tensor-expert kinds = expert_parallel:
  // 6 splits; hpZ dedicated adds one, and both it and expert_parallel/4 own a communicator.
  const ParallelConfig config = make_config(16, 1, 1, {2, 4}, {}, 4, 8);
  for (const bool dedicated : {false, true}) {
    const auto world = std::make_shared<FakeWorld>(16);
    pcx::ContextOptions options;
    if (dedicated) options.dedicated = {GroupKind::zero_param_intra};
    const ParallelContext context(FakeCommunicator(world, 6), config, nullptr, options);
    BOOST_TEST(world->split_count(6) == (dedicated ? 7 : 6));
    const ProcessGroup& hpz = context.zero_param_intra_group();
    const ProcessGroup& experts = context.expert_parallel_group(4);
    BOOST_TEST(hpz.ranks() == experts.ranks());
    BOOST_TEST((&hpz.communicator() == &experts.communicator()) == !dedicated);
    BOOST_TEST(&context.group({GroupKind::tensor_expert_parallel, 2}).communicator() ==
               &context.expert_parallel_group(2).communicator());
  }
  // Kinds with the world's groups share the clone: expert parallel 16 of 16 ranks, and
  // Megatron's tensor-expert kinds with it; the rest are groups of one rank: no split.
  const auto world = std::make_shared<FakeWorld>(16);
  const ParallelContext context(FakeCommunicator(world, 6), make_config(16, 1, 1, {16}));
  BOOST_TEST(world->split_count(6) == 0);
  BOOST_TEST(&context.expert_parallel_group(16).communicator() == &context.world_group().communicator());
  BOOST_TEST(&context.group({GroupKind::tensor_expert_pipeline_parallel, 16}).communicator() ==
             &context.world_group().communicator());
}

BOOST_AUTO_TEST_CASE(megatrons_cut_kinds_share_with_the_kinds_of_the_same_groups) {
  // W 16, dp 16, ep 2 in 2 instances with hybrid groups, rank 6. Distinct groups of more
  // than one rank besides the world: expert_parallel/2 {6,7}, expert_data_parallel/2 (the
  // evens), the instance {0..7}, across instances {6,14}, the expert instance {0,2,4,6} and
  // hybrid/4 {4..7}: 6 splits. The others repeat one of them.
  ParallelConfig config = make_config(16, 1, 1, {2});
  config.distributed_optimizer_instances = 2;
  config.hybrid_context_parallel = true;
  const auto world = std::make_shared<FakeWorld>(16);
  const ParallelContext context(FakeCommunicator(world, 6), config);
  BOOST_TEST(world->split_count(6) == 6);
  auto communicator = [&](GroupKind kind, int ep = 0, int size = 0) {
    return &context.group({kind, ep, size}).communicator();
  };
  BOOST_TEST(context.group({GroupKind::inter_distributed_optimizer_instance}).ranks() == std::vector<int>({6, 14}));
  BOOST_TEST(communicator(GroupKind::intra_distributed_optimizer_instance) ==
             communicator(GroupKind::intra_partial_data_context_parallel));
  BOOST_TEST(communicator(GroupKind::hybrid_data_context_parallel, 0, 8) ==
             communicator(GroupKind::intra_partial_data_context_parallel));
  BOOST_TEST(communicator(GroupKind::hybrid_data_context_parallel, 0, 2) == communicator(GroupKind::expert_parallel, 2));
  BOOST_TEST(communicator(GroupKind::inter_partial_expert_data_parallel, 2) ==
             communicator(GroupKind::inter_distributed_optimizer_instance));
  BOOST_TEST(context.group({GroupKind::intra_partial_expert_data_parallel, 2}).ranks() ==
             std::vector<int>({0, 2, 4, 6}));
  BOOST_CHECK_THROW((void)context.group({GroupKind::hybrid_data_context_parallel, 0, 16}), pcx::GroupNotFound);
}

BOOST_AUTO_TEST_CASE(a_grid_mpus_group_of_the_whole_world_is_the_world_clone) {
  // tp = cp = pp = 1: the GridMpu's data parallel groups (and dp-cp, tp-dp, tp-dp-cp) are
  // the world; the context clones nothing, and expert_parallel/8 with hpZ 8 is one split.
  const auto world = std::make_shared<FakeWorld>(8);
  const FakeCommunicator comm(world, 3);
  const auto mpu = std::make_shared<const pcx::GridMpu>(comm, 1, 1);
  const int dups = world->dup_count(3);
  const ParallelContext context(comm, make_config(8, 1, 1, {8}, {}, 8), mpu);
  BOOST_TEST(world->dup_count(3) == dups);
  BOOST_TEST(&context.world_group().communicator() == &mpu->data_parallel_group().communicator());
  BOOST_TEST(&context.expert_parallel_group(8).communicator() == &context.world_group().communicator());
  BOOST_TEST(context.resources().communicators == 0);  // the MPU's, not the context's
}

// Megatron's default order tp-cp-dp-pp: rank = t + tp·(c + cp·(d + dp·p)); a replica is
// one d, for every t, c and p.
BOOST_AUTO_TEST_CASE(the_ranks_that_leave_are_the_lost_ranks_replicas_or_the_lost_ranks_alone) {
  ParallelConfig config = make_config(32, 2, 2, {2});
  config.context_parallel_size = 2;
  const pcx::Topology layout(config);  // dp = 32 / (2 · 2 · 2) = 4
  const auto rank_of = [](int t, int c, int d, int p) { return t + 2 * (c + 2 * (d + 4 * p)); };
  const auto replicas = [&](std::vector<int> ds) {
    std::vector<int> ranks;
    for (const int d : ds) {
      for (int t = 0; t < 2; ++t)
        for (int c = 0; c < 2; ++c)
          for (int p = 0; p < 2; ++p) ranks.push_back(rank_of(t, c, d, p));
    }
    std::ranges::sort(ranks);
    return ranks;
  };
  const std::vector<int> one = {rank_of(1, 0, 1, 0)};
  BOOST_TEST(pcx::leaving_ranks(layout, one, pcx::ShrinkPolicy::drop_replicas) == replicas({1}));
  const std::vector<int> two = {rank_of(0, 1, 3, 1), rank_of(1, 1, 0, 0)};
  BOOST_TEST(pcx::leaving_ranks(layout, two, pcx::ShrinkPolicy::drop_replicas) == replicas({0, 3}));
  BOOST_TEST(pcx::leaving_ranks(layout, two, pcx::ShrinkPolicy::new_configuration) ==
             std::vector<int>({rank_of(1, 1, 0, 0), rank_of(0, 1, 3, 1)}));
  const std::vector<int> every_replica = {rank_of(0, 0, 0, 0), rank_of(0, 0, 1, 0), rank_of(0, 0, 2, 0),
                                          rank_of(0, 0, 3, 1)};
  BOOST_CHECK_EXCEPTION((void)pcx::leaving_ranks(layout, every_replica, pcx::ShrinkPolicy::drop_replicas),
                        pcx::ConfigError, [](const pcx::ConfigError& e) {
                          return message_has(e, {"no rank would stay", "drops every data parallel replica"});
                        });
}

BOOST_AUTO_TEST_CASE(rank_0_warns_of_kinds_that_cross_nodes_needlessly) {
  // Expert grid 16 = edp 4 x etp 2 x ep 2 under 'dp-tp-ep', nodes of 4 (placement_test.cpp).
  ParallelConfig config = make_config(16, 1, 1, {2}, {}, {}, 4);
  config.expert_tensor_parallel_size = 2;
  config.order = "dp-tp-ep";
  for (const int rank : {0, 1}) {
    std::ostringstream log;
    pcx::ContextOptions options;
    options.logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_st>(log));
    options.logger->set_pattern("%l %v");
    const auto world = std::make_shared<FakeWorld>(16);
    const ParallelContext context(FakeCommunicator(world, rank), config, nullptr, options);
    const std::string text = log.str();
    BOOST_TEST((text.find("warning pcx: expert_tensor_parallel/2: 8 of 8 groups cross nodes of 4 ranks; order "
                          "'tp-dp-ep'") != std::string::npos) == (rank == 0),
               text);
  }
}

BOOST_AUTO_TEST_CASE(ranks_per_node_are_detected_and_checked_against_the_worlds_nodes) {
  // 16 ranks on 4 nodes of 4: nodes()[r] is the node's lowest rank.
  std::vector<int> blocks(16);
  for (int r = 0; r < 16; ++r) blocks[static_cast<std::size_t>(r)] = r / 4 * 4;
  const auto build = [](std::vector<int> nodes, std::optional<int> per_node, bool check = true, int rank = 5) {
    const auto world = std::make_shared<FakeWorld>(16);
    if (!nodes.empty()) world->set_nodes(std::move(nodes));  // else nodes unknown
    pcx::ContextOptions options;
    options.check_nodes = check;
    return ParallelContext(FakeCommunicator(world, rank), make_config(16, 1, 1, {2}, {}, {}, per_node), nullptr,
                           options);
  };
  const ParallelContext detected = build(blocks, pcx::kDetectRanksPerNode);
  BOOST_TEST(detected.topology().config().ranks_per_node.value_or(0) == 4);
  BOOST_TEST(detected.all_to_all_local_group().ranks() == std::vector<int>({4, 5, 6, 7}));
  BOOST_TEST(detected.all_to_all_global_group().ranks() == std::vector<int>({1, 5, 9, 13}));
  BOOST_CHECK_NO_THROW(build(blocks, 4));
  BOOST_CHECK_NO_THROW(build(blocks, 8, /*check=*/false));  // simulated nodes of 8

  const auto fails_with = [](const std::string& words) {
    return [words](const pcx::ConfigError& e) { return message_has(e, {words}); };
  };
  for (const int rank : {0, 5}) {  // every rank words it the same
    BOOST_CHECK_EXCEPTION(build(blocks, 8, true, rank), pcx::ConfigError,
                          fails_with("ranks per node 8 in the configuration disagrees with the world communicator's 4 "
                                     "nodes of 4 ranks"));
  }
  // Round robin: rank r on node r % 2.
  std::vector<int> round_robin(16);
  for (int r = 0; r < 16; ++r) round_robin[static_cast<std::size_t>(r)] = r % 2;
  BOOST_CHECK_EXCEPTION(build(round_robin, pcx::kDetectRanksPerNode), pcx::ConfigError,
                        fails_with("not blocks of 8 consecutive ranks: rank 1 is on the node of rank 1, not on that of rank 0"));
  BOOST_CHECK_EXCEPTION(build(round_robin, 8), pcx::ConfigError, fails_with("rank 1 is on the node of rank 1"));
  // Nodes of 12 and 4.
  std::vector<int> unequal(16, 0);
  for (int r = 12; r < 16; ++r) unequal[static_cast<std::size_t>(r)] = 12;
  BOOST_CHECK_EXCEPTION(build(unequal, pcx::kDetectRanksPerNode), pcx::ConfigError,
                        fails_with("differ in size: the node of rank 0 has 12 ranks, the node of rank 12 has 4"));
  // Nodes of 4, 4, 6 and 2, whose first size divides the world: still unequal.
  std::vector<int> divides(16);
  for (int r = 0; r < 16; ++r) divides[static_cast<std::size_t>(r)] = r < 8 ? r / 4 * 4 : (r < 14 ? 8 : 14);
  BOOST_CHECK_EXCEPTION(build(divides, 4), pcx::ConfigError,
                        fails_with("differ in size: the node of rank 0 has 4 ranks, the node of rank 8 has 6"));
  // A fake world without nodes cannot detect them, and is not checked.
  BOOST_CHECK_EXCEPTION(build(std::vector<int>(), pcx::kDetectRanksPerNode), pcx::ConfigError,
                        fails_with("fake communicator cannot tell nodes apart"));
}

BOOST_AUTO_TEST_CASE(values_outside_the_enumerations_and_byte_overflows_are_config_errors_naming_them) {
  const auto world = std::make_shared<FakeWorld>(4);
  const FakeCommunicator comm(world, 1);
  const pcx::SelfCommunicator self;
  std::vector<std::int32_t> values = {1, 2, 3, 4};
  const auto says = [](std::string_view part) {
    return [part](const pcx::Error& e) { return message_has(e, {part}); };
  };
  BOOST_CHECK_EXCEPTION(comm.all_reduce(std::span<std::int32_t>(values), static_cast<pcx::ReduceOp>(7)),
                        pcx::ConfigError, says("reduce operation 7 is not a pcx::ReduceOp"));
  std::vector<std::int32_t> block(1);
  BOOST_CHECK_EXCEPTION(comm.reduce_scatter(std::span<const std::int32_t>(values), std::span<std::int32_t>(block),
                                            static_cast<pcx::ReduceOp>(-1)),
                        pcx::ConfigError, says("reduce operation -1 is not a pcx::ReduceOp"));
  const auto unknown = static_cast<pcx::DataType>(42);
  for (const pcx::Communicator* c : std::initializer_list<const pcx::Communicator*>{&comm, &self}) {
    BOOST_CHECK_EXCEPTION(c->all_reduce(values.data(), block.data(), 1, unknown, pcx::ReduceOp::sum), pcx::ConfigError,
                          says("data type 42 is not a pcx::DataType"));
    BOOST_CHECK_EXCEPTION(c->all_to_all(values.data(), values.data(), 1, unknown), pcx::ConfigError,
                          says("data type 42"));
    BOOST_CHECK_EXCEPTION(c->broadcast(values.data(), 1, unknown, 0), pcx::ConfigError, says("data type 42"));
  }
  // 2^62 float64 elements are 2^65 bytes; the buffers are never touched.
  const std::size_t huge = std::size_t{1} << 62;
  BOOST_CHECK_EXCEPTION(comm.all_gather(values.data(), values.data(), huge, pcx::DataType::float64), pcx::ConfigError,
                        says("all_gather of 4611686018427387904 float64 elements"));
  BOOST_CHECK_EXCEPTION(self.all_reduce(values.data(), block.data(), huge, pcx::DataType::float64, pcx::ReduceOp::sum),
                        pcx::ConfigError, says("all_reduce of 4611686018427387904 float64 elements overflows"));
  // 2^62 bytes fit, but not four blocks of them.
  BOOST_CHECK_EXCEPTION(comm.all_to_all(values.data(), values.data(), huge, pcx::DataType::int8), pcx::ConfigError,
                        says("overflows a byte count"));
  BOOST_TEST(world->operation_count() == 0);
}

BOOST_AUTO_TEST_CASE(a_process_group_with_a_negative_rank_is_rejected_naming_it) {
  const auto world = std::make_shared<FakeWorld>(4);
  BOOST_CHECK_EXCEPTION(fake_process_group(world, {2, -3, 1}, 1), pcx::ConfigError,
                        [](const pcx::Error& e) { return message_has(e, {"rank -3"}); });
}

BOOST_AUTO_TEST_CASE(a_moved_from_context_is_empty_and_its_getters_throw) {
  const auto world = std::make_shared<FakeWorld>(8);
  const FakeCommunicator comm(world, 2);
  ParallelContext first(comm, make_config(8, 1, 1, {4}));
  const ProcessGroup* world_clone = &first.world_group();
  ParallelContext second = std::move(first);
  BOOST_TEST(&second.world_group() == world_clone);
  BOOST_TEST(&second.data_parallel_group() == world_clone);
  BOOST_TEST(first.world_size() == 0);
  BOOST_TEST(first.rank() == -1);
  const auto moved_from = [](const pcx::Error& e) { return message_has(e, {"this ParallelContext was moved from"}); };
  BOOST_CHECK_EXCEPTION((void)first.world_group(), pcx::ConfigError, moved_from);
  BOOST_CHECK_EXCEPTION((void)first.data_parallel_group(), pcx::ConfigError, moved_from);
  BOOST_CHECK_EXCEPTION((void)first.sequence_data_parallel_group(), pcx::ConfigError, moved_from);
  BOOST_CHECK_EXCEPTION((void)first.expert_parallel_group(4), pcx::ConfigError, moved_from);
  BOOST_CHECK_EXCEPTION((void)first.topology(), pcx::ConfigError, moved_from);
  BOOST_CHECK_EXCEPTION((void)first.group_ids(), pcx::ConfigError, moved_from);
  BOOST_CHECK_EXCEPTION((void)first.model_parallel_size(), pcx::ConfigError, moved_from);
  first.abort();  // nothing to abort
  BOOST_TEST(!second.world_group().communicator().aborted());

  // Assignment releases the old groups before taking over the new ones.
  const int live_with_one = world->live_communicators();
  second = ParallelContext(comm, make_config(8, 1, 1, {2}));
  BOOST_TEST(world->live_communicators() == live_with_one);
  BOOST_TEST(second.expert_parallel_group(2).size() == 2);
  first = std::move(second);
  BOOST_TEST(first.expert_parallel_group(2).size() == 2);
  BOOST_CHECK_THROW((void)second.world_group(), pcx::ConfigError);
}
