// FlightRecorder: the ring of a communicator's last operations, their states, the JSON
// dump, and a context that records every communicator it makes (ranks on threads).
#define BOOST_TEST_MODULE flight_recorder
#include <spdlog/sinks/ostream_sink.h>

#include <boost/test/unit_test.hpp>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/flight_recorder.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/thread_world.hpp"

using pcx::FlightRecorder;
using State = pcx::OperationRecord::State;

BOOST_AUTO_TEST_CASE(the_ring_keeps_the_last_operations_with_their_states) {
  FlightRecorder recorder("pcx:\"odd\" name", {4, 6}, 3);
  for (int i = 1; i <= 5; ++i) {
    const std::uint64_t sequence = recorder.begin("all_reduce", static_cast<std::size_t>(10 * i));
    BOOST_TEST(sequence == static_cast<std::uint64_t>(i));
    if (i < 5) recorder.end(sequence, i == 4 ? State::failed : State::completed);
  }
  const std::vector<pcx::OperationRecord> kept = recorder.records();
  BOOST_REQUIRE(kept.size() == 3U);
  BOOST_TEST(kept[0].sequence == 3U);
  BOOST_TEST(kept[0].count == 30U);
  BOOST_TEST((kept[0].state == State::completed));
  BOOST_TEST((kept[1].state == State::failed));
  BOOST_TEST((kept[2].state == State::running));
  recorder.end(1, State::completed);  // long overwritten: nothing changes
  BOOST_TEST(recorder.records().front().sequence == 3U);

  const nlohmann::json dump = nlohmann::json::parse(recorder.json());
  BOOST_TEST(dump["communicator"] == "pcx:\"odd\" name");
  BOOST_TEST(dump["members"] == nlohmann::json({4, 6}));
  BOOST_REQUIRE(dump["operations"].size() == 3U);
  BOOST_TEST(dump["operations"][2]["state"] == "running");
  BOOST_TEST(dump["operations"][2]["operation"] == "all_reduce");
  BOOST_TEST(dump["operations"][2]["count"] == 50);
  BOOST_TEST(dump["operations"][1]["duration_us"].get<std::int64_t>() >= 0);
  BOOST_CHECK_THROW(FlightRecorder("x", {}, 0), pcx::ConfigError);
}

// Four ranks on threads, flight records of 8: each rank's expert parallel communicator
// records its split-off life, a failed operation, and a Timeout, which the context's
// logger receives as the communicator's record.
BOOST_AUTO_TEST_CASE(a_context_records_its_communicators_and_logs_a_timeout) {
  pcx::testing::ThreadWorld world(4, {.timeout = std::chrono::milliseconds(200)});
  std::mutex mutex;
  std::vector<std::string> dumps(4);
  std::ostringstream log;
  const auto logger =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  logger->set_pattern("%l %v");
  world.run([&](const pcx::Communicator& comm) {
    pcx::ParallelConfig config;
    config.expert_parallel_sizes = {2};
    pcx::ContextOptions options;
    options.flight_records = 8;
    options.logger = logger;
    const pcx::ParallelContext context(comm, config, nullptr, options);
    const pcx::Communicator& experts = context.expert_parallel_group(2).communicator();
    std::vector<float> values = {1.0F, 2.0F};
    experts.all_reduce(std::span<float>(values), pcx::ReduceOp::sum);
    // Ranks 0 and 1 share an expert group; rank 1 never comes to the second all-reduce.
    if (comm.rank() != 1) {
      try {
        experts.all_reduce(std::span<float>(values), pcx::ReduceOp::sum);
      } catch (const pcx::Timeout&) {
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));  // past rank 0's deadline
    }
    const std::lock_guard lock(mutex);
    dumps[static_cast<std::size_t>(comm.rank())] = context.flight_record();
  });
  const auto expert_record = [&](int rank) {
    const nlohmann::json dump = nlohmann::json::parse(dumps[static_cast<std::size_t>(rank)]);
    BOOST_TEST(dump["rank"] == rank);
    for (const nlohmann::json& communicator : dump["communicators"]) {
      if (communicator["communicator"] == "pcx:expert_parallel/2") return communicator;
    }
    BOOST_FAIL("no record of the expert parallel communicator on rank " << rank);
    return nlohmann::json();
  };
  const nlohmann::json lost = expert_record(0);
  BOOST_TEST(lost["members"] == nlohmann::json({0, 1}));
  BOOST_REQUIRE(lost["operations"].size() == 2U);
  BOOST_TEST(lost["operations"][0]["state"] == "completed");
  BOOST_TEST(lost["operations"][1]["state"] == "timed_out");
  BOOST_TEST(lost["operations"][1]["sequence"] == 2);
  BOOST_TEST(expert_record(1)["operations"].size() == 1U);
  // The world clone's record holds the splits the context made from it.
  const nlohmann::json all = nlohmann::json::parse(dumps[2]);
  BOOST_TEST(all["communicators"][0]["communicator"] == "pcx:world");
  BOOST_TEST(all["communicators"][0]["operations"][0]["operation"] == "split");
  // Rank 0 logged its Timeout; ranks 2 and 3 completed both.
  BOOST_TEST(expert_record(2)["operations"][1]["state"] == "completed");
  const std::string text = log.str();
  BOOST_TEST(text.find("error pcx: flight record: {\"communicator\": \"pcx:expert_parallel/2\"") != std::string::npos,
             text);
}

// The watchdog: of the expert group {0, 1}, rank 1 never comes to an all-reduce whose own
// deadline (10 s) is far off; rank 0's watchdog (300 ms) logs the operation and aborts
// rank 0's whole context, which ends the wait with CommError well before the deadline.
// Ranks 2 and 3, whose group is complete, are not touched.
BOOST_AUTO_TEST_CASE(the_watchdog_aborts_the_context_when_an_operation_runs_too_long) {
  pcx::testing::ThreadWorld world(4, {.timeout = std::chrono::seconds(10)});
  std::ostringstream log;
  const auto logger =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  logger->set_pattern("%l %v");
  std::vector<std::string> outcome(4);
  std::vector<double> waited(4);
  std::vector<int> aborted(4);
  world.run([&](const pcx::Communicator& comm) {
    pcx::ParallelConfig config;
    config.expert_parallel_sizes = {2};
    pcx::ContextOptions options;
    options.watchdog = std::chrono::milliseconds(300);
    options.logger = logger;
    const pcx::ParallelContext context(comm, config, nullptr, options);
    const auto r = static_cast<std::size_t>(comm.rank());
    if (comm.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      outcome[r] = "stayed away";
      return;
    }
    std::vector<float> values = {1.0F};
    const auto start = std::chrono::steady_clock::now();
    try {
      context.expert_parallel_group(2).communicator().all_reduce(std::span<float>(values), pcx::ReduceOp::sum);
      outcome[r] = "returned";
    } catch (const pcx::CommError&) {
      outcome[r] = "CommError";
    } catch (const pcx::Timeout&) {
      outcome[r] = "Timeout";
    }
    waited[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // The watchdog aborts the waiting group first (newest first, as abort() goes): the
    // world clone follows at once.
    for (int i = 0; comm.rank() == 0 && i < 1000 && !context.world_group().communicator().aborted(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    aborted[r] = context.world_group().communicator().aborted() ? 1 : 0;
  });
  BOOST_TEST(outcome[0] == "CommError");
  BOOST_TEST(waited[0] >= 0.3);
  BOOST_TEST(waited[0] < 1.5);
  BOOST_TEST(aborted[0] == 1);  // the whole context, not just the waiting group
  BOOST_TEST(outcome[2] == "returned");
  BOOST_TEST(aborted[2] == 0);
  const std::string text = log.str();
  BOOST_TEST(text.find("error pcx: watchdog on rank 0: all_reduce on pcx:expert_parallel/2 (operation 1, 1 elements)") !=
                 std::string::npos,
             text);
  BOOST_TEST(text.find("members [0,1]; aborting the context") != std::string::npos, text);
  BOOST_TEST(text.find("error pcx: flight record: {\"communicator\": \"pcx:expert_parallel/2\"") != std::string::npos,
             text);
}
