// mock_mpu: how to unit-test your own model code against pcx without launching MPI.
//
// The model code (moe_model.hpp) takes a `const pcx::ParallelContext&`. Here each test
// builds the context that one rank of a simulated 16-rank job would build:
//  - pcx::testing::FakeWorld + pcx::testing::FakeCommunicator stand in for MPI: any rank
//    of any world size, in this one process; they record every split and collective, and
//    an all-reduce behaves as if every member passed the same buffer;
//  - pcx::testing::MockMpu stands in for Megatron's mpu: mock_megatron_mpu() gives one
//    rank the groups Megatron would (tensor parallel size 2 here);
//  - pcx::testing::ThreadWorld runs all 8 ranks of a world on threads whose collectives
//    really exchange data, to check what the fakes cannot: where tokens are routed.
// Expected values are written out from the layout rules (DeepSpeed's own example for
// world 16, tensor 2, ep 4), not computed by pcx.
//
//   ctest -R mock_mpu       or       ./mock_mpu_test --log_level=test_suite
#define BOOST_TEST_MODULE mock_mpu_sample
#include "moe_model.hpp"

#include <algorithm>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/fake_communicator.hpp"
#include "pcx/testing/mock_mpu.hpp"
#include "pcx/testing/thread_world.hpp"

namespace {

using pcx::ExpertOrder;
using pcx::ParallelContext;
using pcx::testing::FakeCommunicator;
using pcx::testing::FakeWorld;
using pcx::testing::MockMpu;

constexpr int kWorld = 16;
constexpr int kTensor = 2;
constexpr int kExperts = 8;  // experts per MoE layer

pcx::ParallelConfig moe_config(std::vector<int> eps, ExpertOrder order) {
  pcx::ParallelConfig config;
  config.world_size = kWorld;
  config.expert_parallel_sizes = std::move(eps);
  config.expert_order = order;
  return config;  // tensor parallel size: from the MPU
}

// The context rank `rank` of the simulated job builds: every split and collective it
// makes is recorded in `world`.
ParallelContext simulated_context(const std::shared_ptr<FakeWorld>& world, int rank,
                                  ExpertOrder order = ExpertOrder::expert_first, std::vector<int> eps = {4}) {
  return ParallelContext(FakeCommunicator(world, rank), moe_config(std::move(eps), order),
                         pcx::testing::mock_megatron_mpu(world, rank, kTensor));
}

struct Expected {
  int rank;
  std::vector<int> experts;  // hosted expert ids
  int replicas;
  int broadcast_source;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(moe_model_over_a_simulated_16_rank_job)

// DeepSpeed's example: W=16, tp=2, ep=4, expert-first has expert parallel groups
// [0,2,4,6] [8,10,12,14] [1,3,5,7] [9,11,13,15] and expert data parallel groups
// [0,8] [2,10] [4,12] [6,14] [1,9] [3,11] [5,13] [7,15]; 8 experts, 2 per rank.
BOOST_AUTO_TEST_CASE(hosts_the_experts_of_deepspeeds_example_layout) {
  const std::vector<Expected> table = {
      {0, {0, 1}, 2, 0}, {2, {2, 3}, 2, 2},  {6, {6, 7}, 2, 6},  {8, {0, 1}, 2, 0},
      {5, {4, 5}, 2, 5}, {13, {4, 5}, 2, 5}, {10, {2, 3}, 2, 2}, {15, {6, 7}, 2, 7},
  };
  for (const Expected& row : table) {
    BOOST_TEST_CONTEXT("rank " << row.rank) {
      const auto world = std::make_shared<FakeWorld>(kWorld);
      const ParallelContext context = simulated_context(world, row.rank);
      const moe_model::ExpertShard shard = moe_model::shard_experts(context, kExperts, 4);
      BOOST_TEST(shard.expert_ids() == row.experts, boost::test_tools::per_element());
      BOOST_TEST(shard.replicas == row.replicas);
      BOOST_TEST(shard.broadcast_source == row.broadcast_source);
      BOOST_TEST(shard.expert_parallel_size == 4);
    }
  }
}

// Data-first puts the replicas next to each other: rank r = (e*2 + j)*2 + t.
BOOST_AUTO_TEST_CASE(data_first_order_moves_the_replicas_next_to_each_other) {
  const std::vector<Expected> table = {
      {0, {0, 1}, 2, 0}, {2, {0, 1}, 2, 0}, {5, {2, 3}, 2, 5}, {7, {2, 3}, 2, 5}, {14, {6, 7}, 2, 12},
  };
  for (const Expected& row : table) {
    BOOST_TEST_CONTEXT("rank " << row.rank) {
      const auto world = std::make_shared<FakeWorld>(kWorld);
      const ParallelContext context = simulated_context(world, row.rank, ExpertOrder::data_first);
      const moe_model::ExpertShard shard = moe_model::shard_experts(context, kExperts, 4);
      BOOST_TEST(shard.expert_ids() == row.experts, boost::test_tools::per_element());
      BOOST_TEST(shard.broadcast_source == row.broadcast_source);
    }
  }
}

// Property over every simulated rank: in each expert parallel group, every expert of the
// layer has exactly one host, and expert_owner() agrees with the host's own shard.
BOOST_DATA_TEST_CASE(every_expert_has_one_host_per_expert_group, boost::unit_test::data::xrange(kWorld), rank) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  const ParallelContext mine = simulated_context(world, rank, ExpertOrder::expert_first, {2, 4});
  for (const int ep : {2, 4}) {
    BOOST_TEST_CONTEXT("ep " << ep) {
      std::multiset<int> hosted;
      for (const int member : mine.expert_parallel_group(ep).ranks()) {
        const auto peer_world = std::make_shared<FakeWorld>(kWorld);
        const ParallelContext peer = simulated_context(peer_world, member, ExpertOrder::expert_first, {2, 4});
        for (const int expert : moe_model::shard_experts(peer, kExperts, ep).expert_ids()) {
          hosted.insert(expert);
          BOOST_TEST(moe_model::expert_owner(mine, kExperts, ep, expert) == member);
        }
      }
      BOOST_TEST(hosted.size() == static_cast<std::size_t>(kExperts));
      for (int expert = 0; expert < kExperts; ++expert) BOOST_TEST(hosted.count(expert) == 1U);
    }
  }
}

// The fake all-reduce sums as if every replica passed the same gradients, so averaging
// must give them back unchanged, after exactly one collective.
BOOST_DATA_TEST_CASE(averaging_gradients_is_one_all_reduce_over_the_replicas, boost::unit_test::data::xrange(kWorld),
                     rank) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  const ParallelContext context = simulated_context(world, rank);
  std::vector<float> gradients = {0.5f, -1.25f, 3.0f, static_cast<float>(rank)};
  const std::vector<float> before = gradients;

  const int operations = world->operation_count();
  moe_model::average_expert_gradients(context, 4, gradients);
  BOOST_TEST(world->operation_count() == operations + 1);
  BOOST_TEST(gradients == before, boost::test_tools::per_element());
}

// pcx checks that the 16 simulated contexts could come from one real job: the same
// members for each split colour, each at its own key.
BOOST_AUTO_TEST_CASE(the_simulated_ranks_split_consistently) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  std::vector<ParallelContext> contexts;
  for (int rank = 0; rank < kWorld; ++rank) contexts.push_back(simulated_context(world, rank));
  BOOST_CHECK_NO_THROW(world->verify());
}

// Error paths of the model code are testable too: inject a failure into the next
// collective and see it surface as pcx::CommError.
BOOST_AUTO_TEST_CASE(a_failed_all_reduce_surfaces_as_a_comm_error) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  const ParallelContext context = simulated_context(world, 3);
  std::vector<float> gradients(8, 1.0f);
  world->fail_operation(world->operation_count());
  BOOST_CHECK_THROW(moe_model::average_expert_gradients(context, 4, gradients), pcx::CommError);
  world->fail_operation(std::nullopt);
  BOOST_CHECK_NO_THROW(moe_model::average_expert_gradients(context, 4, gradients));
}

BOOST_AUTO_TEST_CASE(rejects_layers_that_do_not_fit) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  const ParallelContext context = simulated_context(world, 0);
  BOOST_CHECK_THROW((void)moe_model::shard_experts(context, 6, 4), std::invalid_argument);  // 6 experts, ep 4
  BOOST_CHECK_THROW((void)moe_model::shard_experts(context, 8, 2), pcx::GroupNotFound);     // no ep 2 groups
  BOOST_CHECK_THROW((void)moe_model::expert_owner(context, 8, 4, 8), std::invalid_argument);
}

// A mock that does not describe Megatron's layout is caught when the context is built:
// its data parallel group must be the one the expert groups assume.
BOOST_AUTO_TEST_CASE(a_mock_mpu_with_the_wrong_data_parallel_group_is_rejected) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  auto mpu = std::make_shared<MockMpu>();
  mpu->set_tensor_parallel_size(kTensor).set_model_parallel_size(kTensor);
  mpu->set_data_parallel_group(
      pcx::testing::fake_process_group(world, {0, 1, 2, 3, 4, 5, 6, 7}, 0));  // tp 2 needs [0,2,...,14]
  BOOST_CHECK_THROW(ParallelContext(FakeCommunicator(world, 0), moe_config({4}, ExpertOrder::expert_first), mpu),
                    pcx::ConfigError);
}

// Without an MPU (tensor parallel size 1) the model code runs unchanged; sequence
// parallelism is an optional capability that this mock does not have.
BOOST_AUTO_TEST_CASE(works_without_an_mpu) {
  const auto world = std::make_shared<FakeWorld>(kWorld);
  const ParallelContext context(FakeCommunicator(world, 9), moe_config({4}, ExpertOrder::expert_first));
  const moe_model::ExpertShard shard = moe_model::shard_experts(context, kExperts, 4);
  // r = j*4 + e: rank 9 is expert 1 of replica 2; its replicas are 1, 5, 9, 13.
  BOOST_TEST(shard.expert_ids() == std::vector<int>({2, 3}), boost::test_tools::per_element());
  BOOST_TEST(shard.replicas == 4);
  BOOST_TEST(shard.broadcast_source == 1);
  BOOST_CHECK_THROW((void)context.sequence_parallel_group(), pcx::GroupNotFound);
  BOOST_TEST(context.sequence_parallel_size() == 1);
}

BOOST_AUTO_TEST_SUITE_END()

// Eight ranks at once on threads, each with its own context (ep 4, no MPU). Rank r routes
// token 100r + i to expert (r + i) mod 8. Every token must arrive exactly once in the
// world, at a rank that hosts its expert.
BOOST_AUTO_TEST_CASE(dispatch_delivers_each_token_to_the_host_of_its_expert) {
  constexpr int kRanks = 8;
  constexpr int kTokens = 6;
  const auto expert_of = [](std::int64_t token) { return static_cast<int>((token / 100 + token % 100) % kExperts); };
  std::vector<std::vector<std::int64_t>> received(kRanks);
  std::vector<std::vector<int>> hosted(kRanks);
  pcx::testing::ThreadWorld world(kRanks);
  world.run([&](const pcx::Communicator& comm) {
    pcx::ParallelConfig config;
    config.world_size = kRanks;
    config.expert_parallel_sizes = {4};
    const ParallelContext context(comm, config);
    std::vector<std::int64_t> tokens;
    std::vector<int> experts;
    for (int i = 0; i < kTokens; ++i) {
      tokens.push_back(100 * comm.rank() + i);
      experts.push_back(expert_of(tokens.back()));
    }
    const auto r = static_cast<std::size_t>(comm.rank());
    received[r] = moe_model::dispatch_tokens(context, kExperts, 4, tokens, experts);
    hosted[r] = moe_model::shard_experts(context, kExperts, 4).expert_ids();
  });
  std::multiset<std::int64_t> arrived;
  for (int r = 0; r < kRanks; ++r) {
    for (const std::int64_t token : received[static_cast<std::size_t>(r)]) {
      BOOST_TEST_CONTEXT("token " << token << " at rank " << r) {
        BOOST_TEST(std::ranges::count(hosted[static_cast<std::size_t>(r)], expert_of(token)) == 1);
      }
      arrived.insert(token);
    }
  }
  BOOST_TEST(arrived.size() == static_cast<std::size_t>(kRanks * kTokens));
  for (int r = 0; r < kRanks; ++r) {
    for (int i = 0; i < kTokens; ++i) BOOST_TEST(arrived.count(100 * r + i) == 1U);
  }
}
