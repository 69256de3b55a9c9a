// Resource accounting under mpiexec: building and destroying contexts in a loop leaks
// neither MPI communicators nor memory, on the success paths and on the error paths.
//
// Communicators: a probe duplicates MPI_COMM_WORLD, reads its Fortran handle
// MPI_Comm_c2f(probe), and frees it. Open MPI's Fortran handle is the communicator's slot
// in its table, and a new communicator takes the lowest free slot. Two probes per iteration:
//  - at the peak, while the iteration's contexts are alive: every communicator leaked so
//    far holds a slot below it, so this handle climbs by one per leaked communicator and
//    must stay the same in every iteration;
//  - after the iteration, every context destroyed: must be the handle a probe got before
//    the first context was built. (Alone this one is blind to most leaks: a leaked
//    communicator usually sits in a slot above the lowest free one.)
// Checked by hand with a copy of this test that leaked one MPI_Comm_dup per iteration, and
// one that leaked a split child of the world while the contexts were alive: the peak handle
// climbed by one per iteration (19 to 218 on 4 ranks, where 18 without the leak) and the
// test failed; the handle after each iteration did not move. The test also checks that the peak probe is above the
// after-iteration one, i.e. that it sees live communicators at all.
//
// Memory: VmRSS from /proc/self/status after a warm-up and at the end, on every rank.
// The allowed growth is kRssToleranceKiB (see there).
//
// Arguments after `--`: `--iterations N` (default 200), so that 8 ranks oversubscribed
// on a small machine can run fewer and stay fast.
#define BOOST_TEST_MODULE reliability_resource_accounting
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "mpi_fixture.hpp"
#include "pcx/error.hpp"
#include "pcx/parallel_context.hpp"

namespace {

using pcx::MpiCommunicator;
using pcx::ParallelConfig;
using pcx::ParallelContext;
using pcx::ReduceOp;
using pcx::test::everyone;
using pcx::test::world_config;

constexpr int kDefaultIterations = 200;
constexpr int kWarmUp = 20;
// Iterations asked for on the command line (after `--`), else kDefaultIterations.
int iterations() {
  const auto& suite = boost::unit_test::framework::master_test_suite();
  for (int i = 1; i + 1 < suite.argc; ++i) {
    if (std::string_view(suite.argv[i]) == "--iterations") return std::stoi(suite.argv[i + 1]);
  }
  return kDefaultIterations;
}

// Allowed VmRSS growth between the end of the warm-up and the last iteration. Without a
// leak the growth measured here was 4 to 80 KiB (allocator and MPI free lists settling);
// by hand, one leaked MPI_Comm_dup per iteration grew it by 1.5 MiB, one leaked small
// context per iteration by 6.8 MiB.
constexpr long kRssToleranceKiB = 512;

#if defined(__SANITIZE_ADDRESS__)
#define PCX_UNDER_ASAN
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PCX_UNDER_ASAN
#endif
#endif

// Resident set size in KiB, from /proc/self/status; -1 if unreadable.
long resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// The slot the next communicator takes in Open MPI's table (see the file comment).
int probe_handle() {
  MPI_Comm probe = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &probe);
  const int handle = static_cast<int>(MPI_Comm_c2f(probe));
  MPI_Comm_free(&probe);
  return handle;
}

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

// One communication on every group of a context, so that whatever MPI sets up lazily
// on first use is part of what must be released.
void use(const ParallelContext& context) {
  for (const pcx::GroupId& id : context.group_ids()) {
    std::int32_t one = 1;
    context.group(id).communicator().all_reduce(std::span<std::int32_t>(&one, 1), ReduceOp::sum);
  }
}

// Every kind of construction, successful and failing. Returns the probe's handle taken
// while the contexts of the iteration are alive.
int one_iteration(const MpiCommunicator& world) {
  const int n = world.size();
  const int half = std::max(1, n / 2);
  const ParallelContext expert_first(world, world_config(divisors(n), pcx::ExpertOrder::expert_first, half, half),
                                     nullptr, pcx::test::simulated_nodes());
  const ParallelContext data_first(world, world_config(divisors(n), pcx::ExpertOrder::data_first, 2, 1), nullptr,
                                   pcx::test::simulated_nodes());
  use(expert_first);
  use(data_first);
  {
    // Megatron layout from a GridMpu: tensor 2 where the world allows it.
    const int tp = n % 2 == 0 ? 2 : 1;
    auto mpu = std::make_shared<const pcx::GridMpu>(world, tp, 1);
    const ParallelContext with_mpu(world, world_config(divisors(n / tp), {}, n, n), mpu);
    use(with_mpu);
  }
  // Error paths: a configuration every rank rejects, and ranks that disagree.
  try {
    const ParallelContext invalid(world, world_config({n + 1}));
  } catch (const pcx::ConfigError&) {
  }
  try {
    const ParallelContext disagreeing(world, world_config({world.rank() == 0 ? 1 : n}));
  } catch (const pcx::ConfigMismatch&) {
  }
  return probe_handle();
}

}  // namespace

BOOST_AUTO_TEST_CASE(contexts_built_and_destroyed_in_a_loop_leak_no_communicator_and_no_memory) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int count = iterations();
  BOOST_TEST_REQUIRE(count > kWarmUp);
  const auto start = std::chrono::steady_clock::now();

  const int before = probe_handle();
  std::vector<int> peaks;   // while the iteration's contexts are alive
  std::vector<int> afters;  // after the iteration, every context destroyed
  long rss_after_warm_up = 0;
  for (int i = 0; i < count; ++i) {
    peaks.push_back(one_iteration(world));
    afters.push_back(probe_handle());
    if (i + 1 == kWarmUp) rss_after_warm_up = resident_kib();
  }
  const long rss_at_end = resident_kib();
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;

  const auto [peak_low, peak_high] = std::ranges::minmax(peaks);
  const auto [after_low, after_high] = std::ranges::minmax(afters);
  const bool peaks_stay = peak_low == peak_high;
  const bool afters_return = after_low == before && after_high == before;
  const bool probe_sees_live_communicators = peak_low > after_high;
  const long growth = rss_at_end - rss_after_warm_up;
  const bool memory_stays = rss_after_warm_up > 0 && growth <= kRssToleranceKiB;
  const std::string report = fmt::format(
      "rank {} of {}: {} iterations in {:.2f} s; probe handle before {}, at the peak of each iteration "
      "{}..{}, after each iteration {}..{}; VmRSS {} KiB after {} iterations, {} KiB at the end ({:+} KiB, "
      "tolerance {} KiB)",
      world.rank(), world.size(), count, elapsed.count(), before, peak_low, peak_high, after_low, after_high,
      rss_after_warm_up, kWarmUp, rss_at_end, growth, kRssToleranceKiB);
  std::cout << report << '\n' << std::flush;

  BOOST_TEST(everyone(peaks_stay), report);
  BOOST_TEST(everyone(afters_return), report);
  BOOST_TEST(everyone(probe_sees_live_communicators), report);
  // AddressSanitizer holds freed memory in quarantine, so resident memory grows by
  // design there; its own leak checks and the handle checks above stand in for this one.
#ifdef PCX_UNDER_ASAN
  constexpr bool kResidentMemoryIsMeaningful = false;
#else
  constexpr bool kResidentMemoryIsMeaningful = true;
#endif
  if (kResidentMemoryIsMeaningful) BOOST_TEST(everyone(memory_stays), report);
}
