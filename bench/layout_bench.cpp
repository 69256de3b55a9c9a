// Costs of the rank-layout engine as the world grows: listing every group of a kind
// (O(W)), one rank's colour and group (O(axes) + O(group size)), and building a
// Topology (independent of W). The configuration is tp=2, pp=2, one expert parallel
// size of 8, so dp = W/4, the expert groups have 8 ranks and the expert data
// parallel groups W/32. See README.md for how to run it and the figures measured.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "pcx/topology.hpp"

namespace {

constexpr int kTensor = 2;
constexpr int kPipeline = 2;
constexpr int kExperts = 8;

pcx::ParallelConfig bench_config(int world) {
  pcx::ParallelConfig config;
  config.world_size = world;
  config.tensor_parallel_size = kTensor;
  config.pipeline_parallel_size = kPipeline;
  config.expert_parallel_sizes = {kExperts};
  return config;
}

// W = 2^10, 2^12, ..., 2^20.
void worlds(benchmark::internal::Benchmark* b) { b->RangeMultiplier(4)->Range(1 << 10, 1 << 20); }

void add_shape(benchmark::State& state, const pcx::GroupLayout& layout) {
  state.counters["groups"] = layout.group_count();
  state.counters["group_size"] = layout.group_size();
}

// (a) Every group of one kind: GroupLayout::groups(), O(W).
void BM_ListGroups(benchmark::State& state, pcx::GroupKind kind) {
  const int world = static_cast<int>(state.range(0));
  const pcx::Topology topology(bench_config(world));
  const pcx::GroupLayout& layout = topology.layout({kind, kExperts});
  for (auto _ : state) {
    std::vector<std::vector<int>> groups = layout.groups();
    benchmark::DoNotOptimize(groups.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * world);
  // Seconds per listed rank, shown with an SI prefix ("2.5n" is 2.5 ns).
  state.counters["per_rank"] =
      benchmark::Counter(world, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  add_shape(state, layout);
}

// Walks the ranks in a scattered order so that no two queries hit the same group.
class RankWalk {
 public:
  explicit RankWalk(int world) : world_(world) {}
  int next() noexcept {
    rank_ += kStride;
    if (rank_ >= world_) rank_ %= world_;
    return rank_;
  }

 private:
  static constexpr int kStride = 7919;  // prime, so odd: visits every rank of a power-of-two world
  int world_;
  int rank_ = 0;
};

// (b) One rank's view of a kind, what a context computes before its split:
// colour(r), O(axes), and group_of(r), O(group size).
void BM_RankGroup(benchmark::State& state, pcx::GroupKind kind) {
  const int world = static_cast<int>(state.range(0));
  const pcx::Topology topology(bench_config(world));
  const pcx::GroupLayout& layout = topology.layout({kind, kExperts});
  RankWalk walk(world);
  for (auto _ : state) {
    const int rank = walk.next();
    int colour = layout.colour(rank);
    std::vector<int> group = layout.group_of(rank);
    benchmark::DoNotOptimize(colour);
    benchmark::DoNotOptimize(group.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  add_shape(state, layout);
}

// (b') The O(axes) part alone: colour(r) and group_rank(r), the split's colour and key.
void BM_RankColour(benchmark::State& state, pcx::GroupKind kind) {
  const int world = static_cast<int>(state.range(0));
  const pcx::Topology topology(bench_config(world));
  const pcx::GroupLayout& layout = topology.layout({kind, kExperts});
  RankWalk walk(world);
  for (auto _ : state) {
    const int rank = walk.next();
    int colour = layout.colour(rank);
    int key = layout.group_rank(rank);
    benchmark::DoNotOptimize(colour);
    benchmark::DoNotOptimize(key);
  }
  state.SetItemsProcessed(state.iterations());
  add_shape(state, layout);
}

// (c) Validating a configuration and laying out all its group kinds.
void BM_TopologyConstruction(benchmark::State& state) {
  const int world = static_cast<int>(state.range(0));
  const pcx::ParallelConfig config = bench_config(world);
  for (auto _ : state) {
    pcx::Topology topology(config);
    benchmark::DoNotOptimize(&topology);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}

}  // namespace

BENCHMARK_CAPTURE(BM_ListGroups, expert_parallel, pcx::GroupKind::expert_parallel)
    ->Apply(worlds)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ListGroups, expert_data_parallel, pcx::GroupKind::expert_data_parallel)
    ->Apply(worlds)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_RankGroup, expert_parallel, pcx::GroupKind::expert_parallel)->Apply(worlds);
BENCHMARK_CAPTURE(BM_RankGroup, expert_data_parallel, pcx::GroupKind::expert_data_parallel)->Apply(worlds);
BENCHMARK_CAPTURE(BM_RankColour, expert_parallel, pcx::GroupKind::expert_parallel)->Apply(worlds);
BENCHMARK_CAPTURE(BM_RankColour, expert_data_parallel, pcx::GroupKind::expert_data_parallel)->Apply(worlds);
BENCHMARK(BM_TopologyConstruction)->Apply(worlds);
