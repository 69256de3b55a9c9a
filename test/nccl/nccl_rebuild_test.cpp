// Surviving a lost rank on NCCL: the survivors of a rank that stops time out, abort and
// rebuild their context with ncclCommShrink, and fail-and-rebuild cycles leak nothing.
#include <dlfcn.h>
#include <unistd.h>
#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nccl_test_support.hpp"
#include "pcx/rebuild.hpp"

namespace nccltest {

namespace {

pcx::ContextOptions context_options(std::chrono::milliseconds timeout) {
  pcx::ContextOptions options;
  options.communicators.timeout = timeout;
  return options;
}

pcx::ParallelConfig experts_of_the_world(int size) {
  pcx::ParallelConfig config;
  config.expert_parallel_sizes = {size};
  return config;
}

// The survivors' configuration: one expert parallel group of them all.
pcx::RebuildOptions survivors_experts(int survivors) {
  pcx::RebuildOptions options;
  options.policy = pcx::ShrinkPolicy::new_configuration;
  options.config = experts_of_the_world(survivors);
  return options;
}

// The sum over a group of every member's world rank + 1.
bool sums_right(const pcx::ProcessGroup& group, int world_rank) {
  std::int32_t value = world_rank + 1;
  group.communicator().all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
  std::int32_t expected = 0;
  for (const int member : group.ranks()) expected += member + 1;
  return value == expected;
}

struct TwoOrMoreRanks {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    boost::test_tools::assertion_result result(MpiCommunicator::world().size() >= 2);
    result.message() << "a rank must survive the lost one: needs two ranks or more";
    return result;
  }
};

// AddressSanitizer keeps freed memory in quarantine: resident memory says nothing there.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// This process's resident memory, from /proc/self/statm.
long resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0;
  long resident = 0;
  statm >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

std::size_t emulated_device_bytes() {
  using Bytes = std::size_t (*)();
  const auto bytes = reinterpret_cast<Bytes>(dlsym(RTLD_DEFAULT, "pcxemu_allocated_bytes"));
  return bytes != nullptr ? bytes() : 0;
}

}  // namespace

BOOST_AUTO_TEST_CASE(survivors_of_a_rank_that_stops_time_out_and_rebuild_without_it,
                     *boost::unit_test::precondition(OnEmulator{}) * boost::unit_test::precondition(TwoOrMoreRanks{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("stop and rebuild", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    const int n = world.size();
    const int lost = n - 1;
    const pcx::ParallelContext context(world, experts_of_the_world(n), nullptr,
                                       context_options(std::chrono::milliseconds(500)));
    if (world.rank() != lost) {
      // The lost rank never comes to this all-reduce: the others time out.
      try {
        (void)sums_right(context.expert_parallel_group(n), world.rank());
        checks.expect(false, "the all-reduce without the lost rank returned");
      } catch (const pcx::Timeout&) {
      }
    }
    const std::vector<int> excluded = {lost};
    const auto rebuilt = pcx::rebuild(context, world, excluded, survivors_experts(n - 1));
    checks.expect(context.world_group().communicator().aborted(), "the failed context is not aborted");
    checks.expect(rebuilt.has_value() == (world.rank() != lost), "a survivor without a context, or the lost rank with one");
    if (rebuilt) {
      const pcx::ParallelContext& next = rebuilt->context;
      checks.expect(next.world_size() == n - 1 && next.rank() == world.rank(), "wrong survivors' world");
      checks.expect(dynamic_cast<const NcclCommunicator*>(rebuilt->world.get()) != nullptr,
                    "the survivors' world is not an NCCL communicator");
      checks.expect(sums_right(next.world_group(), next.rank()) && sums_right(next.data_parallel_group(), next.rank()),
                    "a collective over the survivors");
    }
    caller.check(checks, "the rebuild");
  });
  caller.check(checks, "the destruction of both contexts");
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

// Communicator::shrink on NCCL 2.28: ncclCommRevoke first, which cannot be undone, so the
// world is aborted however the shrink ends; options the survivors' communicator would
// refuse are refused before the revoke, leaving the world usable. A borrowed world is
// its owner's to give up: pcx shrinks it with NCCL_SHRINK_ABORT and does not abort it.
BOOST_AUTO_TEST_CASE(shrink_gives_up_an_owned_world_but_not_a_borrowed_one,
                     *boost::unit_test::precondition(TwoOrMoreRanks{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("shrink", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    const int n = world.size();
    const bool survivor = world.rank() != n - 1;
    const std::vector<int> excluded = {n - 1};
    const auto survivors_sum = [&](const pcx::Communicator& survivors) {
      std::int32_t value = world.rank() + 1;
      survivors.all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
      return value == (n - 1) * n / 2;
    };
    if (survivor) {
      pcx::CommOptions refused = non_blocking("pcx-test:refused");
      refused.timeout = std::chrono::milliseconds(-1);
      try {
        (void)world.shrink(excluded, refused);
        checks.expect(false, "a negative timeout was taken");
      } catch (const pcx::ConfigError&) {
      }
    }
    std::int32_t everyone_sum = 1;
    world.all_reduce(std::span<std::int32_t>(&everyone_sum, 1), ReduceOp::sum);
    checks.expect(!world.aborted() && everyone_sum == n, "refused options left the world unusable");
    if (survivor) {
      const NcclCommunicator borrowed = NcclCommunicator::borrow(world.native(), world.device(), world.stream());
      const auto from_borrowed = borrowed.shrink(excluded, non_blocking("pcx-test:from-borrowed"));
      checks.expect(survivors_sum(*from_borrowed), "an all-reduce over the shrunk borrowed world");
      checks.expect(!world.aborted(), "shrinking a borrowed handle aborted its owner's world");
      const auto from_owned = world.shrink(excluded, non_blocking("pcx-test:from-owned"));
      checks.expect(survivors_sum(*from_owned), "an all-reduce over the shrunk world");
      checks.expect(world.aborted() == (NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)),
                    "the revoked world is not aborted (or one NCCL 2.27 shrank with NCCL_SHRINK_ABORT is)");
    }
    caller.check(checks, "the shrinks");
  });
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

// A rank lost while the NCCL world is made (its ncclCommInitRank never completes) or
// during a split of the context's construction (its ncclCommSplit never completes): the
// survivors time out, which aborts whatever NCCL world there was, so they shrink the
// bootstrap instead, make a new NCCL world there and build their context on it
// (docs/recovery.md).
void survivors_rebuild_on_a_new_world_after_a_rank_lost_in(const std::string& fault) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run(fault, [&] {
    const MpiCommunicator bootstrap = MpiCommunicator::world();
    const int n = bootstrap.size();
    const int lost = n - 1;
    std::optional<NcclCommunicator> world;
    const auto build = [&] {
      world.emplace(nccl_world(short_deadline("pcx-test:world-losing-a-rank")));
      (void)pcx::ParallelContext(*world, experts_of_the_world(n), nullptr,
                                 context_options(std::chrono::milliseconds(500)));
    };
    try {
      if (bootstrap.rank() == lost) {
        with_fault(fmt::format("{}@{}", fault, lost), build);
      } else {
        build();
      }
      checks.expect(false, "the context was built without the lost rank");
    } catch (const pcx::Timeout&) {
    }
    checks.expect(!world || world->failed(), "the world the split timed out on is not aborted");
    if (bootstrap.rank() == lost) return;  // it leaves
    const std::vector<int> excluded = {lost};
    const auto survivors = bootstrap.shrink(excluded);
    const NcclCommunicator next = NcclCommunicator::create_world(*survivors);
    const pcx::ParallelContext context(next, experts_of_the_world(n - 1));
    checks.expect(context.world_size() == n - 1 && sums_right(context.expert_parallel_group(n - 1), context.rank()),
                  "a collective over the survivors' new world");
  });
  caller.check(checks, "the rebuild");
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(survivors_of_a_rank_lost_during_initialization_rebuild_on_a_new_world,
                     *boost::unit_test::precondition(OnEmulator{}) * boost::unit_test::precondition(TwoOrMoreRanks{})) {
  survivors_rebuild_on_a_new_world_after_a_rank_lost_in("init_hang");
}

BOOST_AUTO_TEST_CASE(survivors_of_a_rank_lost_during_a_split_rebuild_on_a_new_world,
                     *boost::unit_test::precondition(OnEmulator{}) * boost::unit_test::precondition(TwoOrMoreRanks{})) {
  survivors_rebuild_on_a_new_world_after_a_rank_lost_in("split_hang");
}

// 50 cycles of: an NCCL world, a context, its rank `cycle % n` lost, the survivors'
// context used, all released. A shrunk world is the survivors' alone (its excluded rank
// missed the shrink), so each cycle starts from a new one. Nothing may accumulate: the
// emulator's live communicators and device memory after each cycle are as before the
// first, and the process's resident memory stays flat from cycle 10 on.
BOOST_AUTO_TEST_CASE(fifty_fail_and_rebuild_cycles_leak_no_communicator_and_no_memory,
                     *boost::unit_test::precondition(TwoOrMoreRanks{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  const std::size_t bytes_before = emulated_device_bytes();
  checks.run("cycles", [&] {
    long rss_at_10 = 0;
    for (int cycle = 1; cycle <= 50; ++cycle) {
      {
        const NcclCommunicator world = nccl_world(non_blocking());
        const int n = world.size();
        const pcx::ParallelContext context(world, experts_of_the_world(n));
        const std::vector<int> excluded = {cycle % n};
        const auto rebuilt = pcx::rebuild(context, world, excluded, survivors_experts(n - 1));
        if (rebuilt && !sums_right(rebuilt->context.world_group(), rebuilt->context.rank())) {
          checks.expect(false, fmt::format("cycle {}: a collective over the survivors", cycle));
        }
      }
      if (cycle == 10) rss_at_10 = resident_bytes();
      if (cycle == 50) {
        // Host memory too: what cycles 11 to 50 added, against a generous bound for the
        // allocator's own caching.
        const long grown = resident_bytes() - rss_at_10;
        BOOST_TEST_MESSAGE(fmt::format("rank {}: resident memory grew by {} KiB from cycle 10 to 50", world_rank(),
                                       grown / 1024));
        checks.expect(kSanitized || grown < (8L << 20),
                      fmt::format("resident memory grew by {} KiB from cycle 10 to 50", grown / 1024));
      }
      if (live_communicators() != live_before || emulated_device_bytes() != bytes_before) {
        checks.expect(false, fmt::format("after cycle {}: {} live communicators and {} bytes of device memory, {} "
                                         "and {} before",
                                         cycle, live_communicators(), emulated_device_bytes(), live_before,
                                         bytes_before));
        break;
      }
    }
  });
  caller.check(checks, "the cycles");
  BOOST_TEST(everyone(checks.ok()));
}

}  // namespace nccltest
