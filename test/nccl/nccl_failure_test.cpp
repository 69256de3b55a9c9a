// Failures: deadlines that pass, aborts (from the caller and from another thread), and the
// faults the emulator injects (PCX_EMU_FAULT, see test/emulation/pcx_emulator.h), which
// need the emulator and are skipped, saying so, elsewhere.
#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "nccl_test_support.hpp"

namespace nccltest {

BOOST_AUTO_TEST_CASE(an_initialization_whose_peers_never_come_times_out) {
  // A communicator of two ranks of which only this one ever arrives.
  const CallerDevice caller;  // collective over MPI: on every rank
  const int device = node_local_rank();
  Checks checks;
  const int live_before = live_communicators();
  if (world_rank() == 0) {
    ncclUniqueId id{};
    pcx::check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    const auto start = Clock::now();
    try {
      (void)NcclCommunicator::init_rank(id, 2, 0, device, short_deadline("pcx-test:lonely"));
      checks.expect(false, "init_rank succeeded");
    } catch (const pcx::Timeout& e) {
      const std::string_view message = e.what();
      checks.expect(
          message.find("pcx-test:lonely") != std::string_view::npos && message.find("rank 0") != std::string_view::npos,
          fmt::format("the message does not name the communicator and the rank: {}", message));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    checks.expect(Clock::now() - start < std::chrono::seconds(2), "init_rank took longer than its deadline + 1 s");
    caller.check(checks, "init_rank");
  }
  checks.expect(live_communicators() == live_before, "a communicator leaked");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(an_aborted_communicator_refuses_work_and_is_released) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("abort", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    MpiCommunicator::world().barrier();  // every rank's initialization is over before any aborts
    world.abort();
    caller.check(checks, "abort");
    world.abort();  // a second call does nothing
    checks.expect(world.failed() && world.aborted() && world.native() == nullptr, "not marked aborted");
    std::int32_t value = 1;
    const auto refused = [&](const std::function<void()>& call) {
      try {
        call();
      } catch (const pcx::CommError&) {
        return true;
      } catch (const std::exception&) {
      }
      return false;
    };
    checks.expect(refused([&] { world.all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum); }),
                  "all_reduce after abort");
    checks.expect(refused([&] { world.barrier(); }), "barrier after abort");
    checks.expect(refused([&] { (void)world.dup(); }), "dup after abort");
    checks.expect(
        refused([&] { world.enqueue_all_reduce(nullptr, nullptr, 0, DataType::int32, ReduceOp::sum, nullptr); }),
        "enqueue_all_reduce after abort");
  });
  checks.expect(live_communicators() == live_before, "the aborted communicator leaked");
  BOOST_TEST(everyone(checks.ok()));
}

// One rank on real NCCL has no collective that waits for a peer.
struct SomethingWaits {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    boost::test_tools::assertion_result result(on_emulator() || MpiCommunicator::world().size() > 1);
    result.message() << "one rank on real NCCL has no collective that waits";
    return result;
  }
};

BOOST_AUTO_TEST_CASE(a_context_aborted_from_another_thread_ends_the_waiting_collective,
                     *boost::unit_test::precondition(SomethingWaits{})) {
  // Rank 0 waits in an all-reduce over the world clone that no other rank joins (with one
  // rank, the emulator makes it hang); a second thread aborts the context. The abort must
  // return at once and the waiting call must throw CommError long before its deadline.
  const bool alone = MpiCommunicator::world().size() == 1;
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("abort from another thread", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    pcx::ParallelConfig config;
    config.world_size = world.size();
    config.expert_parallel_sizes = {world.size()};
    pcx::ContextOptions options;
    options.communicators.timeout = std::chrono::seconds(60);
    std::optional<pcx::ParallelContext> context;
    if (alone) {
      with_fault("op_hang:1", [&] { context.emplace(world, config, nullptr, options); });
    } else {
      context.emplace(world, config, nullptr, options);
    }
    // Every rank has finished its splits before any rank gives its communicators up:
    // a peer's abort may otherwise cut a split still under way elsewhere.
    MpiCommunicator::world().barrier();
    if (world.rank() != 0) {
      context->abort();  // every rank aborts, as NCCL requires once one has failed
      return;
    }
    std::chrono::duration<double> abort_took{};
    std::thread watchdog([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      const auto start = Clock::now();
      context->abort();
      abort_took = Clock::now() - start;
    });
    const auto start = Clock::now();
    try {
      std::int32_t value = 1;
      context->world_group().communicator().all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
      checks.expect(false, "the all_reduce returned");
    } catch (const pcx::CommError& e) {
      checks.expect(std::string_view(e.what()).find("abort") != std::string_view::npos,
                    fmt::format("the error does not say it was aborted: {}", e.what()));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    const std::chrono::duration<double> waited = Clock::now() - start;
    watchdog.join();
    checks.expect(abort_took < std::chrono::seconds(2), fmt::format("abort() took {:.3f} s", abort_took.count()));
    checks.expect(waited < std::chrono::seconds(5), fmt::format("the waiting call took {:.3f} s", waited.count()));
    caller.check(checks, "the aborted collective");
  });
  checks.expect(live_communicators() == live_before, "a communicator leaked");
  BOOST_TEST(everyone(checks.ok()));
}

// ---------------------------------------------------------------------------------------
// Faults the emulator injects

BOOST_AUTO_TEST_CASE(an_initialization_that_never_completes_times_out_everywhere,
                     *boost::unit_test::precondition(OnEmulator{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  const int last = MpiCommunicator::world().size() - 1;
  const auto start = Clock::now();
  try {
    const auto create = [] { (void)nccl_world(short_deadline("pcx-test:hanging-init")); };
    if (world_rank() == last) {
      with_fault(fmt::format("init_hang@{}", last), create);
    } else {
      create();
    }
    checks.expect(false, "create_world succeeded");
  } catch (const pcx::Timeout& e) {
    checks.expect(std::string_view(e.what()).find("pcx-test:hanging-init") != std::string_view::npos,
                  fmt::format("the message does not name the communicator: {}", e.what()));
  } catch (const std::exception& e) {
    checks.expect(false, fmt::format("wrong exception: {}", e.what()));
  }
  checks.expect(Clock::now() - start < std::chrono::seconds(2), "longer than the deadline + 1 s");
  caller.check(checks, "the timed-out create_world");
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(a_split_that_never_completes_times_out_everywhere, *boost::unit_test::precondition(OnEmulator{})) {
  for (const bool nocolour : {false, true}) {
    const CallerDevice caller;
    Checks checks;
    const int live_before = live_communicators();
    checks.run("split", [&] {
      const NcclCommunicator world = nccl_world(non_blocking());
      const int last = world.size() - 1;
      // With nocolour, the hanging rank joins no child: it still takes part in the split.
      const bool joins = !nocolour || world.rank() != last;
      const auto start = Clock::now();
      try {
        const auto split = [&] {
          (void)world.split_checked(joins ? 0 : pcx::Communicator::kNoColour, joins ? world.rank() : 0,
                            nocolour ? world.size() - 1 : world.size(), short_deadline("pcx-test:hanging-split"));
        };
        if (world.rank() == last) {
          with_fault(fmt::format("split_hang@{}", last), split);
        } else {
          split();
        }
        checks.expect(false, "the split succeeded");
      } catch (const pcx::Timeout& e) {
        const std::string_view message = e.what();
        checks.expect(message.find("pcx-test:world") != std::string_view::npos &&
                          message.find(fmt::format("rank {}", world.rank())) != std::string_view::npos,
                      fmt::format("the message does not name the parent and the rank: {}", message));
      } catch (const std::exception& e) {
        checks.expect(false, fmt::format("wrong exception: {}", e.what()));
      }
      checks.expect(Clock::now() - start < std::chrono::seconds(2), "longer than the deadline + 1 s");
      checks.expect(world.failed(), "the parent of the timed-out split is not aborted");
      caller.check(checks, "the timed-out split");
    });
    checks.expect(live_communicators() == live_before,
                  fmt::format("{} live communicators, {} before", live_communicators(), live_before));
    BOOST_TEST(everyone(checks.ok()), (nocolour ? "NCCL_SPLIT_NOCOLOR on the hanging rank" : "every rank joins"));
  }
}

BOOST_AUTO_TEST_CASE(a_peer_that_stops_mid_collective_gives_timeout, *boost::unit_test::precondition(OnEmulator{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("op_hang", [&] {
    const int last = MpiCommunicator::world().size() - 1;
    // The last rank enters its first operation and never completes it.
    std::optional<NcclCommunicator> world;
    const auto create = [&] { world.emplace(nccl_world(short_deadline("pcx-test:stopping"))); };
    if (world_rank() == last) {
      with_fault(fmt::format("op_hang:1@{}", last), create);
    } else {
      create();
    }
    std::vector<float> values{1.0F, 2.0F};
    const auto start = Clock::now();
    try {
      world->all_reduce(std::span<float>(values), ReduceOp::sum);
      checks.expect(false, "the all_reduce returned");
    } catch (const pcx::Timeout& e) {
      const std::string_view message = e.what();
      checks.expect(message.find("ncclAllReduce") != std::string_view::npos &&
                        message.find("pcx-test:stopping") != std::string_view::npos &&
                        message.find(fmt::format("rank {}", world->rank())) != std::string_view::npos,
                    fmt::format("the message does not name the operation, communicator and rank: {}", message));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    checks.expect(Clock::now() - start < std::chrono::seconds(2), "longer than the deadline + 1 s");
    checks.expect(world->failed(), "not aborted after the timeout");
    caller.check(checks, "the timed-out all_reduce");
  });
  caller.check(checks, "the destruction of the aborted world");
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(an_asynchronous_error_aborts_and_gives_comm_error, *boost::unit_test::precondition(OnEmulator{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("op_error", [&] {
    // Every rank's first operation fails with ncclRemoteError.
    std::optional<NcclCommunicator> world;
    with_fault("op_error:1", [&] { world.emplace(nccl_world(non_blocking("pcx-test:failing"))); });
    std::vector<std::int32_t> values(4, 1);
    try {
      world->all_reduce(std::span<std::int32_t>(values), ReduceOp::sum);
      checks.expect(false, "the all_reduce returned");
    } catch (const pcx::CommError& e) {
      checks.expect(e.code() == ncclRemoteError, fmt::format("code {}, not ncclRemoteError: {}", e.code(), e.what()));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    checks.expect(world->failed() && world->native() == nullptr, "not aborted after the error");
    caller.check(checks, "the failed all_reduce");
    try {
      world->barrier();
      checks.expect(false, "a barrier after the error returned");
    } catch (const pcx::CommError&) {
    }
  });
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

}  // namespace nccltest
