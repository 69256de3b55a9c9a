// One rank's ParallelContext construction over pcx::testing::FakeCommunicator, as the
// world grows from 2^6 to 2^20 ranks: the time per construction, and the number of
// collective calls the rank makes (splits, dups, all-reduces, counted by FakeWorld),
// against the number of group creations (`dist.new_group` calls) that every rank makes
// in the seed's loops for the same configuration. See README.md for the formulas and
// the figures measured.
//
// The timed region is the constructor alone (manual timing): the FakeWorld (which
// holds two counters per rank of the world, so its allocation is O(W)), the context's
// destruction and, for the MPU configuration, the GridMpu (Megatron's groups, which the
// seed does not create either) are outside it. Each iteration constructs two contexts
// on one fresh FakeWorld: the reported time is the second ("warm") construction's; the
// first one's, right after the FakeWorld's allocation evicted the caches, is the
// counter "cold". The CPU column covers both constructions.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pcx/mpu.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/fake_communicator.hpp"

namespace {

constexpr int kHpz = 8;           // ZeRO hpZ partition size
constexpr int kRanksPerNode = 8;  // all-to-all groups

struct Setup {
  int tensor = 1;
  int pipeline = 1;
  std::vector<int> experts;
};

pcx::ParallelConfig make_config(int world, const Setup& setup) {
  pcx::ParallelConfig config;
  config.world_size = world;
  config.expert_parallel_sizes = setup.experts;
  config.zero_hpz_size = kHpz;
  config.ranks_per_node = kRanksPerNode;
  return config;  // tensor and pipeline sizes come from the MPU
}

// Number of dist.new_group calls every rank makes in the seed for this configuration:
//   world clone (_clone_world_group)                           1
//   per expert size ep, without an MPU (_create_expert_and_data_parallel):
//       expert data parallel groups pp*ep + expert parallel groups W/ep
//   per expert size ep, with an MPU (_create_expert_data_and_model_parallel):
//       expert parallel groups W/ep + expert data parallel groups tp*pp*ep
//   ZeRO hpZ (_create_zero_param_parallel_group), z = min(hpz, W)   W/z
//   all-to-all (_get_local_all_to_all_group), n ranks per node: W/n + n if W > n, else 1
// (Megatron's own tensor, pipeline and data parallel groups are not counted on either
// side: they belong to the MPU.)
long seed_new_group_calls(long world, const Setup& setup, bool with_mpu) {
  long calls = 1;
  for (const int ep : setup.experts) {
    calls += world / ep + (with_mpu ? setup.tensor * setup.pipeline * ep : setup.pipeline * ep);
  }
  calls += world / std::min<long>(kHpz, world);
  calls += world > kRanksPerNode ? world / kRanksPerNode + kRanksPerNode : 1;
  return calls;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

void BM_ContextConstruction(benchmark::State& state, const Setup& setup) {
  const int world = static_cast<int>(state.range(0));
  const int rank = world - 1;  // not rank 0, which formats the summary log line
  const bool with_mpu = setup.tensor > 1 || setup.pipeline > 1;
  const pcx::ParallelConfig config = make_config(world, setup);

  // The MPU's groups live on a world of their own: a context reads only their ranks.
  std::shared_ptr<const pcx::Mpu> mpu;
  if (with_mpu) {
    const auto mpu_world = std::make_shared<pcx::testing::FakeWorld>(world);
    mpu = std::make_shared<pcx::GridMpu>(pcx::testing::FakeCommunicator(mpu_world, rank), setup.tensor, setup.pipeline);
  }

  using Clock = std::chrono::steady_clock;
  const auto seconds_between = [](Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double>(to - from).count();
  };
  int splits = 0;
  int dups = 0;
  int operations = 0;
  long members = 0;
  double cold_seconds = 0;
  std::vector<double> warm_times;
  std::vector<double> cold_times;
  warm_times.reserve(static_cast<std::size_t>(state.max_iterations));
  cold_times.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) {
    state.PauseTiming();
    auto fake_world = std::make_shared<pcx::testing::FakeWorld>(world);
    const pcx::testing::FakeCommunicator communicator(fake_world, rank);
    std::optional<pcx::ParallelContext> cold;
    std::optional<pcx::ParallelContext> warm;
    state.ResumeTiming();

    // The first construction runs right after the FakeWorld's allocation, which for a
    // large world evicts the caches; the second, timed one, on the same world, does not.
    const auto start = Clock::now();
    cold.emplace(communicator, config, mpu);
    const auto middle = Clock::now();
    warm.emplace(communicator, config, mpu);
    const auto stop = Clock::now();
    state.SetIterationTime(seconds_between(middle, stop));
    cold_seconds += seconds_between(start, middle);
    warm_times.push_back(seconds_between(middle, stop));
    cold_times.push_back(seconds_between(start, middle));

    state.PauseTiming();
    splits = fake_world->split_count(rank) / 2;  // two constructions
    dups = fake_world->dup_count(rank) / 2;
    operations = fake_world->operation_count() / 2;
    members = 0;
    for (const pcx::GroupId& id : warm->group_ids()) members += warm->group(id).size();
    warm.reset();
    cold.reset();
    fake_world.reset();
    state.ResumeTiming();
  }

  const long seed = seed_new_group_calls(world, setup, with_mpu);
  state.counters["splits"] = splits;
  state.counters["dups"] = dups;
  state.counters["collectives"] = operations;  // splits + dups + the agreement all-reduce
  state.counters["seed_new_group"] = static_cast<double>(seed);
  state.counters["seed_per_pcx"] = static_cast<double>(seed) / operations;  // per collective call
  // Sum of the sizes of this rank's groups (world clone included): the construction
  // time would follow it if groups were stored as member lists.
  state.counters["members"] = static_cast<double>(members);
  // Mean time of the first construction on a fresh FakeWorld ("12u" is 12 µs).
  if (state.iterations() > 0) state.counters["cold"] = cold_seconds / static_cast<double>(state.iterations());
  // Medians over the iterations: unlike the means, they ignore an iteration in which the
  // process was preempted (a time slice is worth hundreds of constructions).
  state.counters["warm_median"] = median(std::move(warm_times));
  state.counters["cold_median"] = median(std::move(cold_times));
}

}  // namespace

// W = 2^6, 2^8, ..., 2^20. Each iteration allocates a FakeWorld of W ranks (outside the
// timed region, but it takes wall time), so the number of iterations is fixed per world
// size, 2^26 / W between 64 and 20000, instead of being grown to a minimum time.
int main(int argc, char** argv) {
  const struct {
    const char* name;
    Setup setup;
  } setups[] = {{"ep8", {1, 1, {8}}}, {"ep2_4_8", {1, 1, {2, 4, 8}}}, {"tp2_pp2_ep8", {2, 2, {8}}}};
  for (const auto& [name, setup] : setups) {
    for (int world = 1 << 6; world <= 1 << 20; world *= 4) {
      benchmark::RegisterBenchmark((std::string("BM_ContextConstruction/") + name).c_str(), BM_ContextConstruction,
                                   setup)
          ->Arg(world)
          ->Iterations(std::clamp((1 << 26) / world, 64, 20000))
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
