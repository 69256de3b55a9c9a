// The fakes of pcx::testing: FakeCommunicator's named fields, fake_process_group and mock_megatron_mpu.
#define BOOST_TEST_MODULE fakes
#include <boost/test/unit_test.hpp>
#include <memory>
#include <string_view>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/layout.hpp"
#include "pcx/process_group.hpp"
#include "pcx/testing/fake_communicator.hpp"
#include "pcx/testing/mock_mpu.hpp"

namespace {

using pcx::testing::FakeCommunicator;
using pcx::testing::FakeMember;
using pcx::testing::FakeWorld;

// Megatron's layout as the SPEC writes it: r = p*(W/pp) + d*tp + t.
int megatron_rank(int world, int tp, int pp, int p, int d, int t) { return p * (world / pp) + d * tp + t; }

}  // namespace

BOOST_AUTO_TEST_CASE(a_fake_member_is_named_field_by_field) {
  const auto world = std::make_shared<FakeWorld>(8);
  const FakeCommunicator fake(world, {.size = 4, .rank = 1, .caller = 5});
  BOOST_TEST(fake.size() == 4);
  BOOST_TEST(fake.rank() == 1);
  BOOST_TEST(world->live_communicators() == 1);
  const auto child = fake.split_checked(0, 0, 2);
  BOOST_TEST(world->split_count(5) == 1);  // recorded for the caller
  BOOST_TEST(world->split_count(1) == 0);
}

BOOST_AUTO_TEST_CASE(a_fake_member_with_a_field_left_out_is_a_config_error) {
  const auto world = std::make_shared<FakeWorld>(8);
  BOOST_CHECK_EXCEPTION(FakeCommunicator(world, {.size = 4, .rank = 1}), pcx::ConfigError, [](const auto& e) {
    return std::string(e.what()) == "fake caller -1 is outside the world [0, 8)";
  });
  BOOST_CHECK_THROW(FakeCommunicator(world, {.rank = 0, .caller = 0}), pcx::ConfigError);
  BOOST_CHECK_THROW(FakeCommunicator(world, {.size = 2, .rank = 2, .caller = 0}), pcx::ConfigError);
}

// Only backends that can create a group over its members alone (MPI) do; the others
// refuse, and make_group splits on them whatever CommOptions::creation asks.
BOOST_AUTO_TEST_CASE(a_fake_cannot_create_a_group_over_its_members_and_splits_instead) {
  const auto world = std::make_shared<FakeWorld>(8);
  const FakeCommunicator fake(world, 3);
  BOOST_TEST(!fake.can_create_group());
  const std::vector<int> members = {1, 3};
  BOOST_CHECK_EXCEPTION((void)fake.create_group(members), pcx::ConfigError, [](const pcx::ConfigError& e) {
    return std::string_view(e.what()).find("the fake backend cannot create a group") != std::string_view::npos;
  });
  pcx::CommOptions options;
  options.creation = pcx::GroupCreation::group;
  // Rank 3 is in the odd ranks' group: a grid of 4 × 2 varying its first axis.
  const auto odd = pcx::RankGrid({{"slow", 4}, {"fast", 2}}).along({"slow"});
  const auto group = pcx::make_group(fake, odd, options);
  BOOST_REQUIRE(group.has_value());
  BOOST_TEST(group->ranks() == std::vector<int>({1, 3, 5, 7}));
  BOOST_TEST(world->split_count(3) == 1);
}

BOOST_AUTO_TEST_CASE(fake_group_places_the_caller_at_its_position) {
  const auto world = std::make_shared<FakeWorld>(8);
  const pcx::ProcessGroup group = pcx::testing::fake_process_group(world, {6, 2, 4}, 4);
  BOOST_TEST(group.rank() == 2);
  BOOST_TEST(group.size() == 3);
  BOOST_CHECK_THROW((void)pcx::testing::fake_process_group(world, {6, 2}, 4), pcx::ConfigError);
}

// W = 16, tp = 2, pp = 2 (dp = 4): every rank's three groups against the formula.
BOOST_AUTO_TEST_CASE(megatron_mpu_has_megatrons_groups) {
  constexpr int kWorld = 16;
  constexpr int kTp = 2;
  constexpr int kPp = 2;
  constexpr int kDp = kWorld / (kTp * kPp);
  for (int p = 0; p < kPp; ++p) {
    for (int d = 0; d < kDp; ++d) {
      for (int t = 0; t < kTp; ++t) {
        const int rank = megatron_rank(kWorld, kTp, kPp, p, d, t);
        BOOST_TEST_CONTEXT("rank " << rank) {
          const auto world = std::make_shared<FakeWorld>(kWorld);
          const auto mpu = pcx::testing::mock_megatron_mpu(world, rank, kTp, kPp);
          std::vector<int> tensor;
          std::vector<int> pipeline;
          std::vector<int> data;
          for (int i = 0; i < kTp; ++i) tensor.push_back(megatron_rank(kWorld, kTp, kPp, p, d, i));
          for (int i = 0; i < kPp; ++i) pipeline.push_back(megatron_rank(kWorld, kTp, kPp, i, d, t));
          for (int i = 0; i < kDp; ++i) data.push_back(megatron_rank(kWorld, kTp, kPp, p, i, t));
          BOOST_TEST(mpu->tensor_parallel_group()->ranks() == tensor, boost::test_tools::per_element());
          BOOST_TEST(mpu->pipeline_parallel_group()->ranks() == pipeline, boost::test_tools::per_element());
          BOOST_TEST(mpu->data_parallel_group().ranks() == data, boost::test_tools::per_element());
          BOOST_TEST(mpu->tensor_parallel_group()->rank() == t);
          BOOST_TEST(mpu->pipeline_parallel_group()->rank() == p);
          BOOST_TEST(mpu->data_parallel_group().rank() == d);
          BOOST_TEST(mpu->model_parallel_size() == kTp * kPp);
          BOOST_TEST(world->split_count(rank) == 0);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(megatron_mpu_refuses_what_does_not_fit) {
  const auto world = std::make_shared<FakeWorld>(8);
  BOOST_CHECK_THROW((void)pcx::testing::mock_megatron_mpu(world, 8, 2), pcx::ConfigError);
  BOOST_CHECK_THROW((void)pcx::testing::mock_megatron_mpu(world, 0, 3), pcx::ConfigError);
}
