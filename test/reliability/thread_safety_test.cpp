// Thread safety, over FakeCommunicators (no MPI): ParallelContext promises that its
// getters are const and safe from many threads, and that contexts share nothing.
// Meant to run under ThreadSanitizer as well as plainly (CTest label `threads`).
//
// Boost.Test's assertions are not thread-safe, so worker threads only count what they
// got wrong; the main thread asserts after joining them.
#define BOOST_TEST_MODULE reliability_thread_safety
#include <fmt/format.h>

#include <atomic>
#include <barrier>
#include <boost/test/unit_test.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"
#include "support/config.hpp"
#include "pcx/testing/fake_communicator.hpp"
#include "pcx/testing/mock_mpu.hpp"

namespace {

using pcx::test::make_config;

using pcx::GroupId;
using pcx::GroupKind;
using pcx::ParallelConfig;
using pcx::ParallelContext;
using pcx::ProcessGroup;
using pcx::testing::FakeCommunicator;
using pcx::testing::FakeMember;
using pcx::testing::FakeWorld;

constexpr int kThreads = 8;
constexpr int kRounds = 200;


// What one group looks like from the caller, read once on the main thread.
struct Expected {
  GroupId id;
  std::vector<int> ranks;
  int rank;
  int size;
};

std::vector<Expected> snapshot(const ParallelContext& context) {
  std::vector<Expected> out;
  for (const GroupId& id : context.group_ids()) {
    const ProcessGroup& group = context.group(id);
    out.push_back({id, group.ranks(), group.rank(), group.size()});
  }
  return out;
}

// Everything a reader can ask a context, compared with the snapshot. Returns the
// number of wrong answers.
int read_everything(const ParallelContext& context, const std::vector<Expected>& expected, int world) {
  int wrong = 0;
  const auto check = [&wrong](bool ok) { wrong += ok ? 0 : 1; };
  for (const Expected& e : expected) {
    const ProcessGroup& group = context.group(e.id);
    check(group.ranks() == e.ranks);
    check(group.rank() == e.rank && group.size() == e.size);
    check(group.communicator().size() == e.size && group.communicator().rank() == e.rank);
    check(group.front() == e.ranks.front());
    for (int g = 0; g < e.size; ++g) check(group.global_rank(g) == e.ranks[static_cast<std::size_t>(g)]);
    for (int r = -1; r <= world; ++r) check(group.contains(r) == (std::ranges::find(e.ranks, r) != e.ranks.end()));
  }
  check(context.rank() == 5 && context.world_size() == world);
  check(context.world_group().size() == world);
  check(context.max_expert_parallel_size() == 4);
  check(context.max_expert_parallel_group().size() == 4);
  check(context.expert_parallel_source_rank(4) == context.expert_parallel_group(4).front());
  check(context.expert_broadcast_source_rank(2) == context.expert_data_parallel_group(2).front());
  check(context.broadcast_source_rank() == context.sequence_data_parallel_group().front());
  check(context.find({pcx::GroupKind::zero_param_intra}) != nullptr && context.zero_param_intra_group().size() == 4);
  check(context.all_to_all_local_group().size() == 8 && context.all_to_all_global_group().size() == 2);
  check(context.sequence_parallel_size() == 2 && context.sequence_parallel_rank() == 1);
  check(context.model_parallel_size() == 2 && context.expert_tensor_parallel_size() == 2);
  check(context.group_ids().size() == expected.size());
  check(context.topology().all_views().size() >= expected.size());
  check(context.mpu() != nullptr);
  // A missing kind throws from every thread, with the same text.
  try {
    (void)context.expert_parallel_group(16);
    check(false);
  } catch (const pcx::GroupNotFound& e) {
    check(std::string(e.what()).find("expert_parallel/16") != std::string::npos);
  }
  return wrong;
}

// Megatron tensor 2 on a world of 16, seen from world rank 5, with a sequence parallel group.
std::shared_ptr<const pcx::Mpu> mpu_of_rank_5(const std::shared_ptr<FakeWorld>& world) {
  const auto group = [&](std::vector<int> ranks) {
    const auto position = static_cast<int>(std::ranges::find(ranks, 5) - ranks.begin());
    const int size = static_cast<int>(ranks.size());
    return ProcessGroup(std::move(ranks), std::make_unique<FakeCommunicator>(
                                              world, FakeMember{.size = size, .rank = position, .caller = 5}));
  };
  auto mpu = std::make_shared<pcx::testing::MockMpu>();
  mpu->set_tensor_parallel_size(2).set_model_parallel_size(2);
  mpu->set_data_parallel_group(group({1, 3, 5, 7, 9, 11, 13, 15}));
  mpu->set_sequence_parallel_group(group({4, 5}));
  return mpu;
}

}  // namespace

BOOST_AUTO_TEST_CASE(many_threads_read_one_context) {
  const auto world = std::make_shared<FakeWorld>(16);
  const FakeCommunicator comm(world, 5);
  const ParallelContext context(comm, make_config(16, 1, 1, {2, 4}, pcx::ExpertOrder::data_first, 4, 8),
                                mpu_of_rank_5(world));
  const std::vector<Expected> expected = snapshot(context);

  std::atomic<int> wrong{0};
  std::barrier start(kThreads);
  std::vector<std::jthread> readers;
  for (int t = 0; t < kThreads; ++t) {
    readers.emplace_back([&] {
      start.arrive_and_wait();  // all threads read at once
      int mine = 0;
      for (int round = 0; round < kRounds; ++round) mine += read_everything(context, expected, 16);
      wrong += mine;
    });
  }
  readers.clear();  // joins
  BOOST_TEST(wrong.load() == 0);
  BOOST_TEST(world->live_communicators() > 0);
}

BOOST_AUTO_TEST_CASE(each_thread_runs_collectives_on_a_context_of_its_own) {
  // Different contexts share nothing: each thread builds its own, over its own fake
  // world, and runs every collective on every group, then destroys it.
  std::atomic<int> wrong{0};
  std::atomic<int> leaked{0};
  std::barrier start(kThreads);
  std::vector<std::jthread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      start.arrive_and_wait();
      int mine = 0;
      const auto world = std::make_shared<FakeWorld>(16);
      for (int round = 0; round < 20; ++round) {
        {
          const FakeCommunicator comm(world, t);
          const ParallelContext context(comm, make_config(16, 1, 1, {1, 2, 4, 8, 16}, {}, 4, 4));
          for (const GroupId& id : context.group_ids()) {
            const pcx::Communicator& c = context.group(id).communicator();
            const auto n = static_cast<std::size_t>(c.size());
            std::vector<double> values(n, static_cast<double>(t));
            std::vector<double> out(n);
            c.all_reduce(std::span<const double>(values), std::span<double>(out), pcx::ReduceOp::sum);
            mine += out.front() == static_cast<double>(t) * static_cast<double>(n) ? 0 : 1;
            c.all_to_all(std::span<const double>(values), std::span<double>(out));
            std::vector<double> gathered(n * n);
            c.all_gather(std::span<const double>(values), std::span<double>(gathered));
            double block = 0;
            c.reduce_scatter(std::span<const double>(values), std::span<double>(&block, 1), pcx::ReduceOp::max);
            mine += block == static_cast<double>(t) ? 0 : 1;
            c.broadcast(std::span<double>(values), 0);
            c.barrier();
          }
        }
        leaked += world->live_communicators();
      }
      wrong += mine;
    });
  }
  workers.clear();
  BOOST_TEST(wrong.load() == 0);
  BOOST_TEST(leaked.load() == 0);
}

BOOST_AUTO_TEST_CASE(every_rank_of_one_fake_world_builds_its_context_on_its_own_thread) {
  // One FakeWorld shared by 16 "ranks", each on a thread: FakeWorld records every
  // split under its lock, and the record must be a consistent job afterwards.
  constexpr int kRanks = 16;
  const auto world = std::make_shared<FakeWorld>(kRanks);
  const ParallelConfig config = make_config(kRanks, 1, 1, {2, 4, 8}, pcx::ExpertOrder::expert_first, 4, 8);
  std::atomic<int> wrong{0};
  std::barrier start(kRanks);
  std::vector<std::jthread> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.emplace_back([&, r] {
      start.arrive_and_wait();
      const FakeCommunicator comm(world, r);
      const ParallelContext context(comm, config);
      const int ep = context.expert_parallel_group(8).rank();
      wrong += context.rank() == r && ep == r % 8 ? 0 : 1;
    });
  }
  ranks.clear();
  BOOST_TEST(wrong.load() == 0);
  BOOST_CHECK_NO_THROW(world->verify());
  BOOST_TEST(world->live_communicators() == 0);
  for (int r = 0; r < kRanks; ++r) BOOST_TEST(world->split_count(r) == world->split_count(0));
}
