// Ranks that disagree, timed. Under mpiexec one rank (or several) passes another
// configuration or holds an MPU that answers differently; every rank must throw the
// same pcx::ConfigMismatch, and quickly: the slowest rank's time from entering the
// constructor to the throw must stay under kLimit.
//
// test/mpi/context_mpi_test.cpp (ranks_that_disagree_all_throw_the_same_mismatch)
// already covers: one ep list {1} vs {n}, the expert order, hpZ 1 vs n, ranks per node
// absent vs n, and an MPU model parallel size. The cases below are the ones it lacks,
// and every case here is also timed and its message compared across ranks by hash.
#define BOOST_TEST_MODULE reliability_mismatch_timing
#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "mpi_fixture.hpp"
#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/self_communicator.hpp"
#include "pcx/testing/mock_mpu.hpp"

namespace {

using pcx::MpiCommunicator;
using pcx::ParallelConfig;
using pcx::ParallelContext;
using pcx::ReduceOp;
using pcx::test::everyone;
using pcx::test::world_config;
using pcx::test::same_everywhere;
using pcx::testing::MockMpu;

// Mismatch detection is one all-reduce: a second is already a thousand times more
// than it needs, even with 8 ranks oversubscribed on 2 cores.
constexpr std::chrono::milliseconds kLimit{1000};

double slowest(double seconds) {
  const MpiCommunicator world = MpiCommunicator::world();
  world.all_reduce(std::span<double>(&seconds, 1), ReduceOp::max);
  return seconds;
}

// Builds a context on every rank from what `setup` gives this rank, and checks that
// every rank throws the same E (by default a ConfigMismatch) containing `expected`,
// within kLimit.
template <class E = pcx::ConfigMismatch>
void expect_mismatch(const std::string& name, const std::string& expected,
                     const std::function<ParallelConfig()>& config_of_this_rank,
                     const std::shared_ptr<const pcx::Mpu>& mpu = nullptr) {
  const MpiCommunicator world = MpiCommunicator::world();
  const ParallelConfig config = config_of_this_rank();
  std::string message = "no exception";
  bool mismatch = false;

  world.barrier();  // everyone enters the constructor at about the same time
  const auto start = std::chrono::steady_clock::now();
  try {
    const ParallelContext context(world, config, mpu);
  } catch (const E& e) {
    mismatch = true;
    message = e.what();
  } catch (const std::exception& e) {
    message = fmt::format("not the expected kind of error: {}", e.what());
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  const double max_seconds = slowest(elapsed.count());

  BOOST_TEST_CONTEXT(name) {
    BOOST_TEST(everyone(mismatch), fmt::format("rank {}: {}", world.rank(), message));
    BOOST_TEST(same_everywhere(message), fmt::format("rank {}: {}", world.rank(), message));
    BOOST_TEST(everyone(message.find(expected) != std::string::npos),
               fmt::format("rank {}: '{}' lacks '{}'", world.rank(), message, expected));
    BOOST_TEST(max_seconds < std::chrono::duration<double>(kLimit).count(),
               fmt::format("the slowest rank took {:.3f} s", max_seconds));
  }
  if (world.rank() == 0) {
    // One line per case, for the test log: how long the slowest rank took.
    std::cout << fmt::format("mismatch {:<44} {} ranks: slowest rank {:8.3f} ms: {}\n", name, world.size(),
                             max_seconds * 1e3, message)
              << std::flush;
  }
}

// Every rank's data parallel group is the world, built collectively before the timing.
std::shared_ptr<MockMpu> mock_mpu_over_the_world(const MpiCommunicator& world) {
  auto mpu = std::make_shared<MockMpu>();
  mpu->set_data_parallel_group(*pcx::make_group(world, pcx::RankGrid({{"data", world.size()}}).along({"data"})));
  return mpu;
}

// A group of this process alone, with no communication.
pcx::ProcessGroup self_group(int rank) { return pcx::ProcessGroup({rank}, std::make_unique<pcx::SelfCommunicator>()); }

}  // namespace

BOOST_AUTO_TEST_CASE(config_disagreements_are_all_detected_quickly,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int rank = world.rank();
  const bool last = rank == n - 1;
  const bool first = rank == 0;

  expect_mismatch("ep list with an extra size on the last rank", "number of expert parallel sizes ranges from 1 to 2",
                  [&] {
                    return world_config(last ? std::vector<int>{1, n} : std::vector<int>{n});
                  });
  expect_mismatch("ep sizes in another order on the last rank", "the expert parallel sizes differ", [&] {
    return world_config(last ? std::vector<int>{n, 1} : std::vector<int>{1, n});
  });
  // Rank 0 alone holds an ep size that is invalid for the world: the disagreement wins
  // over the local ConfigError, so no rank is left without an error of the same type.
  expect_mismatch("ep size invalid on rank 0 only", "largest expert parallel size ranges from 1 to 3",
                  [&] { return world_config(first ? std::vector<int>{3} : std::vector<int>{1}); });
  expect_mismatch("ep size differs on every odd rank",
                  fmt::format("largest expert parallel size ranges from 1 to {}", n),
                  [&] { return world_config({rank % 2 == 1 ? 1 : n}); });
  expect_mismatch(
      "expert order differs on rank 0", "expert order (0 expert-first, 1 data-first) ranges from 0 to 1",
      [&] { return world_config({1}, first ? pcx::ExpertOrder::data_first : pcx::ExpertOrder::expert_first); });
  expect_mismatch("hpZ absent on the last rank", "ZeRO hpZ partition size (0 none) ranges from 0 to 2",
                  [&] { return world_config({1}, {}, last ? std::optional<int>{} : std::optional<int>{2}); });
  expect_mismatch("hpZ 1 vs 2", "ZeRO hpZ partition size (0 none) ranges from 1 to 2",
                  [&] { return world_config({1}, {}, last ? 1 : 2); });
  expect_mismatch("ranks per node 1 vs 2", "ranks per node (0 none, -1 detected) ranges from 1 to 2",
                  [&] { return world_config({1}, {}, {}, last ? 1 : 2); });
  expect_mismatch("everything differs on the last rank", "ranks disagree on the configuration", [&] {
    return last ? world_config({1, n}, pcx::ExpertOrder::data_first, 1, 1) : world_config({n}, {}, n, n);
  });
}

BOOST_AUTO_TEST_CASE(mpu_disagreements_are_all_detected_quickly,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int rank = world.rank();
  const bool last = rank == n - 1;
  const auto config = [] { return world_config({1}); };

  {
    auto mpu = mock_mpu_over_the_world(world);
    mpu->set_tensor_parallel_size(last ? 2 : 1);
    expect_mismatch("MPU tensor parallel size", "MPU tensor parallel size ranges from 1 to 2", config, mpu);
  }
  {
    auto mpu = mock_mpu_over_the_world(world);
    mpu->set_pipeline_parallel_size(last ? 2 : 1);
    expect_mismatch("MPU pipeline parallel size", "MPU pipeline parallel size ranges from 1 to 2", config, mpu);
  }
  {
    auto mpu = mock_mpu_over_the_world(world);
    if (last) mpu->set_data_parallel_group(self_group(rank));
    expect_mismatch("MPU data parallel size", fmt::format("MPU data parallel size ranges from 1 to {}", n), config,
                    mpu);
  }
  {
    auto mpu = mock_mpu_over_the_world(world);
    if (last) mpu->set_sequence_parallel_group(self_group(rank));
    expect_mismatch("MPU sequence parallel group on one rank", "MPU sequence parallel size (0 none) ranges from 0 to 1",
                    config, mpu);
  }
  {
    auto mpu = mock_mpu_over_the_world(world);
    if (last) mpu->set_sequence_data_parallel_group(self_group(rank));
    expect_mismatch("MPU sequence data parallel group on one rank",
                    "MPU sequence data parallel size (0 none) ranges from 0 to 1", config, mpu);
  }
  {
    // Rank 0 passes no MPU at all.
    auto mpu = mock_mpu_over_the_world(world);
    expect_mismatch("MPU missing on rank 0", "MPU present (0 no, 1 yes, 2 a GridMpu on the world's backend) ranges from 0 to 1", config,
                    rank == 0 ? nullptr : mpu);
  }
  {
    // The last rank's MPU throws when asked for its data parallel group: every rank
    // throws that rank's error, as the same ConfigError.
    auto mpu = mock_mpu_over_the_world(world);
    auto broken = std::make_shared<MockMpu>();
    expect_mismatch<pcx::ConfigError>("MPU that throws on one rank",
                                      fmt::format("rank {}: MockMpu: no data parallel group was set", n - 1), config,
                                      last ? std::shared_ptr<const pcx::Mpu>(broken) : mpu);
  }
}

BOOST_AUTO_TEST_CASE(agreeing_ranks_still_build_their_groups) {
  // A control: the same world builds fine when nobody disagrees, so the mismatches
  // above are the ranks' doing, not the world's.
  const MpiCommunicator world = MpiCommunicator::world();
  world.barrier();
  const auto start = std::chrono::steady_clock::now();
  const ParallelContext context(world, world_config({1, world.size()}, {}, world.size(), world.size()));
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  const double max_seconds = slowest(elapsed.count());
  if (world.rank() == 0) {
    std::cout << fmt::format("agreeing {} ranks: slowest rank built its context in {:.3f} ms\n", world.size(),
                             max_seconds * 1e3)
              << std::flush;
  }
  BOOST_TEST(everyone(context.expert_parallel_group(world.size()).size() == world.size()));
}
