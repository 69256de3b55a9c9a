// A member stopped with SIGSTOP (as a hung driver or a debugger would leave it) must not
// hang the others: each of them gets Timeout from an all_reduce and from a split within
// the deadline plus one second, naming the operation, the communicator and its rank, and
// the communicator then refuses every operation with CommError. Rank 0 then resumes the
// stopped member (SIGCONT), which joins the abandoned operations, so that the job ends
// with the test's verdict and nothing left pending. All ranks must share one node (they
// signal each other by process id).
#define BOOST_TEST_MODULE stopped_peer
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
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

namespace {

constexpr std::chrono::milliseconds kTimeout{2000};

// Whether process `pid` is stopped ("T" in /proc/<pid>/stat, after the command in parentheses).
bool stopped(pid_t pid) {
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  std::getline(stat, line);
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'T';
}

// Runs `operation`, which must throw Timeout naming `what` and this rank within kTimeout
// plus one second; says why not otherwise.
template <class Operation>
bool times_out(const std::string& what, const MpiCommunicator& world, Operation&& operation) {
  const Clock::time_point start = Clock::now();
  try {
    operation();
  } catch (const pcx::Timeout& timeout) {
    const double took = std::chrono::duration<double>(Clock::now() - start).count();
    const std::string text = timeout.what();
    BOOST_TEST_MESSAGE(fmt::format("rank {}: Timeout after {:.3f} s: {}", world.rank(), took, text));
    const bool named = text.find(what) != std::string::npos &&
                       text.find(fmt::format("rank {} of {}", world.rank(), world.size())) != std::string::npos;
    BOOST_TEST(named, "the Timeout names " << what << " and the rank: " << text);
    BOOST_TEST(took >= 2.0);
    BOOST_TEST(took < 3.0, "Timeout after " << took << " s, limit 3 s");
    return named && took >= 2.0 && took < 3.0;
  }
  BOOST_ERROR(what << " did not time out on rank " << world.rank());
  return false;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_stopped_member_gives_timeout_on_the_others, *boost::unit_test::precondition(two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int victim = world.size() - 1;
  const auto reduce = world.dup(options("pcx:test/stopped_reduce", kTimeout));
  const auto split = world.dup(options("pcx:test/stopped_split", kTimeout));
  // The members that stay, to resume the stopped one only once all of them have given up:
  // resumed earlier, it would complete the barrier before the split of a member still
  // waiting there, which would then enter MPI_Comm_split alone.
  const auto survivors = world.split(world.rank() == victim ? pcx::Communicator::kNoColour : 0, world.rank());
  std::vector<std::int64_t> pids(static_cast<std::size_t>(world.size()));
  world.all_gather(std::vector<std::int64_t>{getpid()}, pids);
  const auto victim_pid = static_cast<pid_t>(pids.back());
  std::vector<std::int32_t> values = {world.rank() + 1};
  bool ok = true;

  world.barrier();
  // Whatever happens, every rank reaches the verdict below: an exception on one rank must
  // not leave the others waiting in it.
  try {
    if (world.rank() == victim) {
      raise(SIGSTOP);
      // Resumed: complete what the others abandoned; the sum holds every member's value.
      reduce->all_reduce(values, ReduceOp::sum);
      split->barrier();
      ok = values[0] == world.size() * (world.size() + 1) / 2 && !reduce->aborted();
    } else {
      ok = times_out("all_reduce", world, [&] { reduce->all_reduce(values, ReduceOp::sum); }) && ok;
      ok = times_out("split", world, [&] { static_cast<void>(split->split(0, world.rank())); }) && ok;
      BOOST_CHECK_THROW(reduce->all_reduce(values, ReduceOp::sum), pcx::CommError);
      BOOST_CHECK_THROW(static_cast<void>(split->dup()), pcx::CommError);
      ok = ok && reduce->aborted() && split->aborted() && values[0] == world.rank() + 1;
      survivors->barrier();
      if (world.rank() == 0) {
        // It stopped long before the deadline passed; make sure before resuming it.
        for (int tries = 0; tries < 100 && !stopped(victim_pid); ++tries) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        BOOST_TEST(stopped(victim_pid), "rank " << victim << " was stopped during the collectives");
        ok = ok && stopped(victim_pid);
        kill(victim_pid, SIGCONT);
      }
    }
  } catch (const std::exception& e) {
    BOOST_ERROR("rank " << world.rank() << ": " << e.what());
    ok = false;
  }
  BOOST_TEST(everyone(ok));
}
