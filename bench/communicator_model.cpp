// communicator_model: backend communicators per rank at a given world size, by layout
// arithmetic, and the device memory they would take at a stated figure per communicator
// (a model, not a measurement).
//
//   seed      DeepSpeed's groups.py on a Megatron MPU: the world clone, per expert size the
//             expert and expert data parallel groups, ZeRO hpZ, all-to-all local and global,
//             and the MPU's tensor, pipeline and data parallel groups; one communicator per
//             group the rank is in (torch's new_group shares none).
//   Megatron  every group Megatron-Core's parallel state builds: the dense kinds (tp, cp, pp,
//             dp, dp-cp, tp-cp, tp-dp, tp-dp-cp, tp-pp, embedding, position embedding) and,
//             per expert size, ep, etp, tp-ep, tp-ep-pp and expert dp; one communicator each.
//   both      seed and Megatron's kinds together, one communicator per kind.
//   pcx       the same kinds built for real by a GridMpu and a ParallelContext over
//             pcx::testing::FakeCommunicator, counting the distinct communicators the rank
//             holds (kinds with the same groups share one).
// Groups of one rank are counted nowhere (pcx gives them no backend resources; torch makes
// NCCL communicators for them lazily). The default process group is counted nowhere.
// Every figure is the largest over all ranks (ranks of the middle pipeline stages are in
// no embedding group).
//
//   communicator_model [--world 1024 --world 16384] [--gib-per-communicator 0.5]

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "pcx/mpu.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/fake_communicator.hpp"

namespace {

struct Setup {
  const char* name;
  int tp, cp, pp, etp, ep, hpz, per_node;
};

// Typical layouts of large MoE runs, every one with ZeRO hpZ 8 on nodes of 8 ranks.
constexpr Setup kSetups[] = {
    {"tp 1, pp 1, ep 8", 1, 1, 1, 1, 8, 8, 8},
    {"tp 8, pp 4, ep 8", 8, 1, 4, 8, 8, 8, 8},
    {"tp 8, cp 2, pp 4, etp 1, ep 8", 8, 2, 4, 1, 8, 8, 8},
    {"tp 4, pp 2, etp 1, ep 16", 4, 1, 2, 1, 16, 8, 8},
};

bool seed_kind(pcx::GroupKind kind) {
  using K = pcx::GroupKind;
  return kind == K::world || kind == K::tensor_parallel || kind == K::pipeline_parallel || kind == K::data_parallel ||
         kind == K::expert_parallel || kind == K::expert_data_parallel || kind == K::zero_param_intra ||
         kind == K::all_to_all_local || kind == K::all_to_all_global;
}

bool megatron_kind(pcx::GroupKind kind) {
  using K = pcx::GroupKind;
  return pcx::is_dense_kind(kind) || kind == K::expert_parallel || kind == K::expert_data_parallel ||
         kind == K::expert_tensor_parallel || kind == K::tensor_expert_parallel ||
         kind == K::tensor_expert_pipeline_parallel;
}

struct Counts {
  int seed = 0, megatron = 0, both = 0, pcx = 0;
};

// The seed knows no context parallelism and no expert tensor size of its own.
bool seed_can(const Setup& s) { return s.cp == 1 && s.etp == s.tp; }

// The rank's communicators in each scheme.
Counts count(const std::shared_ptr<pcx::testing::FakeWorld>& world, const pcx::ParallelConfig& config, int rank) {
  Counts counts;
  const pcx::Topology topology(config);
  for (const pcx::GroupView& view : topology.all_views()) {
    const pcx::GroupLayout& layout = view.layout;
    if (layout.group_size() < 2 || layout.colour(rank) == pcx::GroupLayout::kNoGroup) continue;
    counts.seed += seed_kind(view.id.kind) ? 1 : 0;
    counts.megatron += megatron_kind(view.id.kind) ? 1 : 0;
    counts.both += seed_kind(view.id.kind) || megatron_kind(view.id.kind) ? 1 : 0;
  }
  const pcx::testing::FakeCommunicator comm(world, rank);
  pcx::ContextOptions options;
  options.check_nodes = false;
  const pcx::ParallelContext context(comm, config, std::make_shared<const pcx::GridMpu>(comm, config), options);
  std::set<const pcx::Communicator*> held;
  for (const pcx::GroupId& id : context.group_ids()) {
    const pcx::Communicator& communicator = context.group(id).communicator();
    if (communicator.size() > 1) held.insert(&communicator);
  }
  counts.pcx = static_cast<int>(held.size());
  return counts;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Backend communicators per rank by layout arithmetic, and modelled device memory");
  std::vector<int> worlds = {1024, 16384};
  double gib = 0.5;
  app.add_option("--world", worlds, "world sizes")->check(CLI::Range(64, 1 << 20));
  app.add_option("--gib-per-communicator", gib, "modelled device memory of one NCCL communicator, GiB")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  std::printf(
      "communicators per rank (largest over the ranks), ZeRO hpZ 8 and 8 ranks per node throughout; "
      "device memory modelled at %.2f GiB per communicator (a model, not a measurement)\n\n",
      gib);
  std::printf(
      "| W | configuration | seed | Megatron | both, one per kind | pcx | GiB seed | GiB Megatron | "
      "GiB both | GiB pcx |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const int w : worlds) {
    for (const Setup& s : kSetups) {
      pcx::ParallelConfig config;
      config.world_size = w;
      config.tensor_parallel_size = s.tp;
      config.context_parallel_size = s.cp;
      config.pipeline_parallel_size = s.pp;
      config.expert_tensor_parallel_size = s.etp;
      config.expert_parallel_sizes = {s.ep};
      config.zero_hpz_size = s.hpz;
      config.ranks_per_node = s.per_node;
      const auto world = std::make_shared<pcx::testing::FakeWorld>(w);
      Counts most;
      for (int rank = 0; rank < w; ++rank) {
        const Counts c = count(world, config, rank);
        most = {std::max(most.seed, c.seed), std::max(most.megatron, c.megatron), std::max(most.both, c.both),
                std::max(most.pcx, c.pcx)};
      }
      const std::string seed = seed_can(s) ? std::to_string(most.seed) : "-";
      const std::string seed_gib = seed_can(s) ? fmt::format("{:.1f}", most.seed * gib) : "-";
      std::printf("| %d | %s | %s | %d | %d | %d | %s | %.1f | %.1f | %.1f |\n", w, s.name, seed.c_str(), most.megatron,
                  most.both, most.pcx, seed_gib.c_str(), most.megatron * gib, most.both * gib, most.pcx * gib);
    }
  }
  return 0;
}
