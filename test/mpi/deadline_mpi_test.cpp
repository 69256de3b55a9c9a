// Deadlines of MpiCommunicator: a member that does not come gives Timeout and aborts the
// communicator, abort() from another thread ends a wait, and a timeout of 0 waits for good.
// A late member joins the abandoned operation at the end of each case, so that every rank
// leaves MPI with nothing pending, but where it cannot (create_group).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "mpi_fixture.hpp"
#include "pcx/error.hpp"

using pcx::CommOptions;
using pcx::MpiCommunicator;
using pcx::ReduceOp;
using pcx::test::everyone;
using pcx::test::options;
using pcx::test::two_or_more_ranks;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

BOOST_AUTO_TEST_CASE(options_are_kept_and_a_negative_timeout_is_refused_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world(options("world", milliseconds(1500)));
  BOOST_TEST(world.options().name == "world");
  BOOST_TEST(world.options().timeout.count() == 1500);
  const auto child = world.dup(options("child", milliseconds(0)));
  BOOST_TEST(dynamic_cast<const MpiCommunicator&>(*child).options().timeout.count() == 0);
  BOOST_CHECK_THROW(static_cast<void>(world.dup(options("", milliseconds(-1)))), pcx::ConfigError);
  BOOST_CHECK_THROW(static_cast<void>(world.split(0, 0, options("", milliseconds(-1)))), pcx::ConfigError);
  BOOST_TEST(!world.aborted());
}

BOOST_AUTO_TEST_CASE(results_are_the_same_with_and_without_a_deadline) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int rank = world.rank();
  for (const auto timeout : {milliseconds(0), milliseconds(60000)}) {
    const auto comm = world.dup(options("same", timeout));
    std::vector<double> values(5, rank + 1.0);
    comm->all_reduce(values, ReduceOp::avg);
    std::vector<std::int32_t> gathered(static_cast<std::size_t>(n));
    comm->all_gather(std::vector<std::int32_t>{rank}, gathered);
    std::vector<std::int32_t> sent(static_cast<std::size_t>(n), rank);
    std::vector<std::int32_t> received(static_cast<std::size_t>(n));
    comm->all_to_all(sent, received);
    std::vector<std::int64_t> root_value = {rank == 0 ? 42 : -1};
    comm->broadcast(root_value, 0);
    std::vector<std::int32_t> expected(static_cast<std::size_t>(n));
    std::iota(expected.begin(), expected.end(), 0);
    BOOST_TEST(values == std::vector<double>(5, (n + 1) / 2.0), boost::test_tools::per_element());
    BOOST_TEST(gathered == expected, boost::test_tools::per_element());
    BOOST_TEST(received == expected, boost::test_tools::per_element());
    BOOST_TEST(root_value[0] == 42);
    BOOST_TEST(!comm->aborted());
  }
}

BOOST_AUTO_TEST_CASE(a_member_that_does_not_come_gives_timeout_then_comm_error,
                     *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int late = world.size() - 1;
  const auto comm = world.dup(options("pcx:test/late", milliseconds(300)));
  std::vector<std::int32_t> values = {1, 2, 3};
  bool ok = true;
  if (world.rank() != late) {
    const Clock::time_point start = Clock::now();
    try {
      comm->all_reduce(values, ReduceOp::sum);
      ok = false;
    } catch (const pcx::Timeout& timeout) {
      const double took = seconds_since(start);
      const std::string what = timeout.what();
      BOOST_TEST_MESSAGE(fmt::format("rank {}: Timeout after {:.3f} s: {}", world.rank(), took, what));
      ok = took >= 0.3 && took < 1.3 && contains(what, "all_reduce") && contains(what, "\"pcx:test/late\"") &&
           contains(what, fmt::format("rank {} of {}", world.rank(), world.size())) && contains(what, "300 ms");
    }
    ok = ok && comm->aborted();
    BOOST_CHECK_THROW(comm->barrier(), pcx::CommError);
    ok = ok && values == std::vector<std::int32_t>{1, 2, 3};
  }
  world.barrier();
  // The abandoned requests complete now; their results go to the communicator's own buffers.
  if (world.rank() == late) {
    comm->all_reduce(values, ReduceOp::sum);
    ok = values == std::vector<std::int32_t>{world.size(), 2 * world.size(), 3 * world.size()};
  }
  BOOST_TEST(everyone(ok));
}

// The late member never comes: the others' zero-byte barrier messages to and from it stay
// pending, which touches no memory of theirs.
BOOST_AUTO_TEST_CASE(a_member_that_does_not_come_to_create_group_gives_timeout,
                     *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int late = world.size() - 1;
  const auto comm = world.dup(options("pcx:test/late_group", milliseconds(300)));
  std::vector<int> members(static_cast<std::size_t>(world.size()));
  std::iota(members.begin(), members.end(), 0);
  bool ok = true;
  if (world.rank() != late) {
    const Clock::time_point start = Clock::now();
    try {
      (void)comm->create_group(members, options("pcx:test/never", milliseconds(300)));
      ok = false;
    } catch (const pcx::Timeout& timeout) {
      const double took = seconds_since(start);
      const std::string what = timeout.what();
      BOOST_TEST_MESSAGE(fmt::format("rank {}: Timeout after {:.3f} s: {}", world.rank(), took, what));
      ok = took >= 0.3 && took < 1.3 && contains(what, "create_group") && contains(what, "\"pcx:test/late_group\"");
    }
    ok = ok && comm->aborted();
  }
  BOOST_TEST(everyone(ok));
}

// Members that list the members differently never reach MPI_Comm_create_group (whose
// groups must agree): even ranks list them ascending, odd ranks descending. With two ranks
// each hears the other's list digest and throws ConfigMismatch; with more, a rank may wait
// for a message its listed neighbour sends elsewhere, and times out.
BOOST_AUTO_TEST_CASE(members_that_list_the_members_differently_never_create_the_group,
                     *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const auto comm = world.dup(options("pcx:test/lists", milliseconds(300)));
  std::vector<int> members(static_cast<std::size_t>(world.size()));
  std::iota(members.begin(), members.end(), 0);
  if (world.rank() % 2 == 1) std::reverse(members.begin(), members.end());
  bool ok = false;
  try {
    (void)comm->create_group(members);
  } catch (const pcx::ConfigMismatch& e) {
    ok = contains(e.what(), "lists the " + std::to_string(world.size()) + " members differently");
  } catch (const pcx::Timeout&) {
    ok = world.size() > 2;
  }
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(a_recv_from_a_member_that_does_not_send_gives_timeout,
                     *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const auto comm = world.dup(options("pcx:test/silent", milliseconds(200)));
  bool ok = true;
  std::vector<float> buffer(4, 0.0F);
  if (world.rank() == 0) {
    try {
      comm->recv(buffer, 1);
      ok = false;
    } catch (const pcx::Timeout& timeout) {
      ok = contains(timeout.what(), "recv") && contains(timeout.what(), "rank 0 of");
    }
    BOOST_CHECK_THROW(comm->recv(buffer, 1), pcx::CommError);
  }
  world.barrier();
  if (world.rank() == 1) comm->send(std::vector<float>(4, 1.0F), 0);
  ok = ok && buffer == std::vector<float>(4, 0.0F);
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(abort_from_another_thread_ends_a_waiting_all_reduce_with_comm_error,
                     *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int late = world.size() - 1;
  const auto comm = world.dup(options("pcx:test/aborted", milliseconds(60000)));
  std::vector<std::int32_t> values = {7};
  bool ok = true;
  if (world.rank() != late) {
    std::thread watchdog([&] {
      std::this_thread::sleep_for(milliseconds(200));
      comm->abort();
    });
    const Clock::time_point start = Clock::now();
    try {
      comm->all_reduce(values, ReduceOp::max);
      ok = false;
    } catch (const pcx::CommError& error) {
      const double took = seconds_since(start);
      BOOST_TEST_MESSAGE(fmt::format("rank {}: CommError after {:.3f} s: {}", world.rank(), took, error.what()));
      ok = took < 1.2 && contains(error.what(), "all_reduce") && contains(error.what(), "aborted");
    }
    watchdog.join();
  }
  world.barrier();
  if (world.rank() == late) comm->all_reduce(values, ReduceOp::max);
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(a_timeout_of_zero_waits_for_a_late_member,
                     *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const auto comm = world.dup(options("pcx:test/patient", milliseconds(0)));
  if (world.rank() == world.size() - 1) std::this_thread::sleep_for(milliseconds(400));
  std::vector<std::int32_t> values = {1};
  comm->all_reduce(values, ReduceOp::sum);
  BOOST_TEST(everyone(values[0] == world.size() && !comm->aborted()));
}
