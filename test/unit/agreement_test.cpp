// The agreement protocol on ranks of a ThreadWorld: every rank leaves every agreement
// with the same outcome, whatever one rank did before it.
#define BOOST_TEST_MODULE agreement
#include "pcx/agreement.hpp"

#include <fmt/format.h>

#include <boost/test/unit_test.hpp>
#include <climits>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/thread_world.hpp"

namespace {

using pcx::AgreedValue;
using pcx::AgreementStage;
using pcx::Communicator;
using pcx::testing::ThreadWorld;

constexpr int kRanks = 4;

// What one rank's call ended with: "ok", or the exception's kind and text.
std::string outcome_of(const std::function<void()>& call) {
  try {
    call();
    return "ok";
  } catch (const pcx::ConfigMismatch& e) {
    return fmt::format("ConfigMismatch: {}", e.what());
  } catch (const pcx::ConfigError& e) {
    return fmt::format("ConfigError: {}", e.what());
  } catch (const pcx::Timeout& e) {
    return fmt::format("Timeout: {}", e.what());
  } catch (const pcx::CommError& e) {
    return fmt::format("CommError: {}", e.what());
  } catch (const pcx::Error& e) {
    return fmt::format("Error: {}", e.what());
  } catch (const std::exception& e) {
    return fmt::format("not a pcx error: {}", e.what());
  }
}

// Runs body on every rank of a world of kRanks and returns each rank's outcome.
std::vector<std::string> outcomes(const std::function<void(const Communicator&)>& body) {
  std::vector<std::string> result(kRanks);
  std::mutex mutex;
  ThreadWorld world(kRanks);
  world.run([&](const Communicator& comm) {
    std::string mine = outcome_of([&] { body(comm); });
    const std::lock_guard lock(mutex);
    result[static_cast<std::size_t>(comm.rank())] = std::move(mine);
  });
  return result;
}

// Every rank ended the same way, with a text that starts with `prefix` and holds `part`.
void expect_everywhere(const std::vector<std::string>& seen, const std::string& prefix, const std::string& part) {
  for (const std::string& one : seen) {
    BOOST_TEST(one == seen.front());
    BOOST_TEST(one.starts_with(prefix), one);
    BOOST_TEST(one.find(part) != std::string::npos, fmt::format("'{}' lacks '{}'", one, part));
  }
}

std::exception_ptr failure_of(const std::function<void()>& thrower) {
  try {
    thrower();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

}  // namespace

BOOST_AUTO_TEST_CASE(ranks_with_the_same_values_pass) {
  const auto seen = outcomes([](const Communicator& comm) {
    const AgreedValue values[] = {{"size", 4}, {"order", -7}, {"list", 123456789, /*digest=*/true}};
    pcx::agree(comm, AgreementStage::flags, values);
  });
  expect_everywhere(seen, "ok", "ok");
}

BOOST_AUTO_TEST_CASE(a_disagreement_names_the_value_and_its_range_on_every_rank) {
  const auto seen = outcomes([](const Communicator& comm) {
    const AgreedValue values[] = {{"tokens", comm.rank() == 2 ? 3 : 64}, {"steps", 5},
                                  {"experts", comm.rank(), /*digest=*/true}};
    pcx::agree(comm, AgreementStage::flags, values);
  });
  expect_everywhere(seen, "ConfigMismatch: ranks disagree on the command line: ",
                    "tokens ranges from 3 to 64; the experts differ");
  BOOST_TEST(seen.front().find("steps") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(ranks_at_different_stages_are_named_not_misread) {
  const auto seen = outcomes([](const Communicator& comm) {
    const AgreedValue values[] = {{"size", 1}};
    pcx::agree(comm, comm.rank() == 0 ? AgreementStage::grid_mpu : AgreementStage::context, values);
  });
  expect_everywhere(seen, "ConfigMismatch: ranks are at different steps",
                    "some check their context, others their grid_mpu");
}

BOOST_AUTO_TEST_CASE(a_rank_in_an_unrelated_collective_of_the_same_size_is_told_apart) {
  const auto seen = outcomes([](const Communicator& comm) {
    if (comm.rank() == 1) {
      std::vector<std::int64_t> unrelated(pcx::kAgreementMessageSize, 1);
      comm.all_reduce(unrelated, pcx::ReduceOp::max);
      return;
    }
    pcx::agree(comm, AgreementStage::context, {});
  });
  for (std::size_t r = 0; r < seen.size(); ++r) {
    if (r == 1) continue;  // its all-reduce has no way to know
    BOOST_TEST(seen[r].starts_with("ConfigMismatch: ranks are not all in a pcx agreement"), seen[r]);
  }
}

BOOST_AUTO_TEST_CASE(a_failure_on_one_rank_is_every_rank_s_error_with_its_text) {
  const auto seen = outcomes([](const Communicator& comm) {
    const auto failure =
        comm.rank() == 3 ? failure_of([] { throw pcx::ConfigError("unknown flag --bogus"); }) : nullptr;
    pcx::agree(comm, AgreementStage::flags, {}, failure);
  });
  expect_everywhere(seen, "ConfigError: rank 3: unknown flag --bogus", "");
}

BOOST_AUTO_TEST_CASE(the_first_failing_rank_wins_and_keeps_its_kind) {
  const auto seen = outcomes([](const Communicator& comm) {
    std::exception_ptr failure;
    if (comm.rank() == 1) failure = failure_of([] { throw pcx::Timeout("device 1 did not answer"); });
    if (comm.rank() == 2) failure = failure_of([] { throw pcx::ConfigError("bad size"); });
    pcx::agree(comm, AgreementStage::nccl_world, {}, failure);
  });
  expect_everywhere(seen, "Timeout: rank 1: device 1 did not answer", "");
}

BOOST_AUTO_TEST_CASE(any_exception_type_is_carried) {
  const auto seen = outcomes([](const Communicator& comm) {
    const auto failure = comm.rank() == 0 ? failure_of([] { throw 42; }) : nullptr;
    pcx::agree(comm, AgreementStage::context, {}, failure);
  });
  expect_everywhere(seen, "Error: rank 0: an exception that does not derive from std::exception", "");
}

BOOST_AUTO_TEST_CASE(a_disagreement_is_the_cause_and_names_a_failure_too) {
  const auto seen = outcomes([](const Communicator& comm) {
    const int ep = comm.rank() == 0 ? 3 : 1;
    const auto failure = ep == 3 ? failure_of([] { throw pcx::ConfigError("3 does not divide 4"); }) : nullptr;
    const AgreedValue values[] = {{"expert parallel size", ep}};
    pcx::agree(comm, AgreementStage::context, values, failure);
  });
  expect_everywhere(seen, "ConfigMismatch: ranks disagree on the configuration: expert parallel size ranges from 1 to 3",
                    "(and rank 0 failed: 3 does not divide 4)");
}

BOOST_AUTO_TEST_CASE(values_a_rank_cannot_tell_are_left_out) {
  const auto seen = outcomes([](const Communicator& comm) {
    const bool broken = comm.rank() == 2;
    const auto failure = broken ? failure_of([] { throw std::runtime_error("the MPU threw"); }) : nullptr;
    const AgreedValue values[] = {{"MPU size", broken ? std::nullopt : std::optional<std::int64_t>(8)}};
    pcx::agree(comm, AgreementStage::context, values, failure);
  });
  expect_everywhere(seen, "Error: rank 2: the MPU threw", "");
}

BOOST_AUTO_TEST_CASE(misuse_is_refused_before_any_communication) {
  ThreadWorld world(1);
  world.run([](const Communicator& comm) {
    std::vector<AgreedValue> many(pcx::kMaxAgreedValues + 1, AgreedValue("v", 1));
    BOOST_CHECK_THROW(pcx::agree(comm, AgreementStage::flags, many), pcx::ConfigError);
    const AgreedValue reserved[] = {{"v", INT64_MIN}};
    BOOST_CHECK_THROW(pcx::agree(comm, AgreementStage::flags, reserved), pcx::ConfigError);
  });
  BOOST_TEST(world.operation_count() == 0);
}

BOOST_AUTO_TEST_CASE(a_grid_mpu_meeting_a_context_is_a_mismatch_on_every_rank) {
  const auto seen = outcomes([](const Communicator& comm) {
    if (comm.rank() == 0) {
      (void)pcx::GridMpu(comm, 2);
    } else {
      pcx::ParallelConfig config;
      (void)pcx::ParallelContext(comm, config);
    }
  });
  expect_everywhere(seen, "ConfigMismatch: ranks are at different steps",
                    "some check their context, others their grid_mpu");
}
