// moe_dispatch: the communication of one mixture-of-experts (MoE) layer, over the expert
// groups of a pcx::ParallelContext.
//
//   mpiexec -n 8 moe_dispatch [--ep 4] [--experts-per-rank 2] [--top-k 2] [--tokens 64]
//       [--hidden 16] [--steps 3] [--expert-order expert-first|data-first]
//       [--backend mpi|nccl] [--dump PREFIX]
//
// The layer has ep x experts-per-rank experts. In each expert parallel group (ep ranks),
// group rank g hosts experts [g * experts-per-rank, (g + 1) * experts-per-rank); the
// expert data parallel group holds the replicas of the same experts. One step:
//  1. gate: token i scores expert e with a hash of (i, e), so every run routes alike, and
//     goes to its top-k experts, weighted by the softmax of their k scores;
//  2. dispatch: an all_to_all of row counts, then an all_to_all_v of the token copies;
//  3. expert e multiplies its tokens by e + 1;
//  4. combine: the reverse all_to_all_v; a token's output is the weighted sum of its k
//     expert outputs;
//  5. expert gradients (here: the sum of the tokens an expert saw) are averaged over the
//     expert data parallel group.
// With --dump, each rank writes its outputs and gradients to PREFIX.<rank>, which
// test/samples/moe_dispatch_check.cpp recomputes from the gate and the experts alone.
//
// Exit status: 0; 2 on every rank for a bad flag on any rank or flags that differ between
// ranks; 77 when --backend nccl finds a rank without a CUDA device.

#include <fmt/format.h>
#include <fmt/os.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../common/cli.hpp"
#include "../common/run_sample.hpp"
#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"

#if PCX_WITH_NCCL
#include "../common/nccl_devices.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#endif

namespace {

constexpr const char* kProgram = "moe_dispatch";

struct Options {
  int ep = 0;  // 0: the world size
  int experts_per_rank = 2;
  int top_k = 2;
  int tokens = 64;
  int hidden = 16;
  int steps = 3;
  std::string expert_order = "expert-first";
  std::string backend = "mpi";
  std::string dump;
};

// The gate. Token ids are unique over ranks and steps, so no two tokens route alike by accident.
std::uint64_t token_id(int step, int rank, int t, int world, int tokens) {
  const auto u = [](int value) { return static_cast<std::uint64_t>(value); };
  return (u(step) * u(world) + u(rank)) * u(tokens) + u(t);
}

// splitmix64: cheap, and its scores look random enough to spread tokens over experts.
double score(std::uint64_t token, int expert) {
  std::uint64_t x = token * 65536 + std::uint64_t(expert) + 0x9E3779B97F4A7C15;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB;
  return double((x ^ (x >> 31)) >> 11) * 0x1p-53;
}

// Multiples of 1/8 in [-1, 1]: the sums of a step are exact in float.
float token_value(std::uint64_t token, int h) { return float((token * 7 + std::uint64_t(h) * 3) % 17) / 8.0f - 1.0f; }

struct Route {
  int expert;
  float weight;
};

// The k experts of highest score (the lower id first on a tie), weighted by a softmax.
std::vector<Route> gate(std::uint64_t token, int experts, int k) {
  std::vector<int> order(static_cast<std::size_t>(experts));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    const double sa = score(token, a), sb = score(token, b);
    return sa > sb || (sa == sb && a < b);
  });
  std::vector<Route> routes;
  double total = 0;
  for (int j = 0; j < k; ++j) total += std::exp(score(token, order[std::size_t(j)]));
  for (int j = 0; j < k; ++j) {
    const int e = order[std::size_t(j)];
    routes.push_back({e, float(std::exp(score(token, e)) / total)});
  }
  return routes;
}

int run(const Options& o, const pcx::Communicator& world) {
  const int rank = world.rank();
  pcx::ParallelConfig config;
  config.world_size = world.size();
  config.expert_parallel_sizes = {o.ep};
  config.expert_order = pcx::parse_expert_order(o.expert_order);
  const pcx::ParallelContext context(world, config);
  const pcx::Communicator& experts = context.expert_parallel_group(o.ep).communicator();
  const pcx::Communicator& replicas = context.expert_data_parallel_group(o.ep).communicator();

  const auto hidden = std::size_t(o.hidden);
  const std::size_t row = hidden + 1;  // the expert id, then the token
  const int first_expert = experts.rank() * o.experts_per_rank;
  const int layer_experts = o.ep * o.experts_per_rank;
  std::optional<fmt::ostream> dump;
  if (!o.dump.empty()) {
    dump.emplace(fmt::output_file(fmt::format("{}.{}", o.dump, rank)));
    dump->print("moe_dispatch world {} rank {} ep {} experts {} top_k {} tokens {} hidden {} steps {}\n", world.size(),
                rank, o.ep, layer_experts, o.top_k, o.tokens, o.hidden, o.steps);
  }
  if (rank == 0) {
    fmt::print("{}: {} ranks, {} backend, ep {} ({}), {} experts ({} per rank), top-{} of {} tokens x {} per rank\n",
               kProgram, world.size(), world.backend(), o.ep, o.expert_order, layer_experts, o.experts_per_rank,
               o.top_k, o.tokens, o.hidden);
  }

  for (int step = 0; step < o.steps; ++step) {
    // Gate, then lay the token copies out by destination member, remembering where each went.
    std::vector<std::vector<Route>> routes;
    std::vector<std::size_t> send_rows(std::size_t(o.ep), 0);
    for (int t = 0; t < o.tokens; ++t) {
      routes.push_back(gate(token_id(step, rank, t, world.size(), o.tokens), layer_experts, o.top_k));
      for (const Route& r : routes.back()) ++send_rows[std::size_t(r.expert / o.experts_per_rank)];
    }
    std::vector<std::size_t> offset(std::size_t(o.ep), 0);
    std::exclusive_scan(send_rows.begin(), send_rows.end(), offset.begin(), std::size_t{0});
    std::vector<float> send(std::size_t(o.tokens * o.top_k) * row);
    std::vector<std::size_t> slot;  // token t's j-th copy is row slot[t * k + j]
    for (int t = 0; t < o.tokens; ++t) {
      const std::uint64_t id = token_id(step, rank, t, world.size(), o.tokens);
      for (const Route& r : routes[std::size_t(t)]) {
        slot.push_back(offset[std::size_t(r.expert / o.experts_per_rank)]++);
        float* out = &send[slot.back() * row];
        out[0] = float(r.expert);
        for (std::size_t h = 0; h < hidden; ++h) out[h + 1] = token_value(id, int(h));
      }
    }

    // Dispatch: the receivers learn their counts first.
    std::vector<std::size_t> send_counts(send_rows), recv_counts(send_rows.size());
    for (std::size_t& count : send_counts) count *= row;
    experts.all_to_all(send_counts, recv_counts);
    std::vector<float> received(std::reduce(recv_counts.begin(), recv_counts.end()));
    experts.all_to_all_v(send, send_counts, received, recv_counts);

    // The experts, and the gradient each takes from the tokens it saw.
    std::vector<float> gradient(std::size_t(o.experts_per_rank) * hidden, 0.0f);
    std::vector<std::int64_t> seen(std::size_t(o.experts_per_rank), 0);
    for (std::size_t i = 0; i < received.size(); i += row) {
      const auto local = std::size_t(int(received[i]) - first_expert);
      ++seen[local];
      for (std::size_t h = 0; h < hidden; ++h) {
        gradient[local * hidden + h] += received[i + 1 + h];
        received[i + 1 + h] *= float(first_expert + int(local) + 1);
      }
    }
    replicas.all_reduce(gradient, pcx::ReduceOp::avg);

    // Combine: the same blocks, the other way.
    std::vector<float> returned(send.size());
    experts.all_to_all_v(received, recv_counts, returned, send_counts);
    std::vector<float> output(std::size_t(o.tokens) * hidden, 0.0f);
    for (std::size_t t = 0; t < std::size_t(o.tokens); ++t) {
      for (std::size_t j = 0; j < std::size_t(o.top_k); ++j) {
        const float* y = &returned[slot[t * std::size_t(o.top_k) + j] * row + 1];
        for (std::size_t h = 0; h < hidden; ++h) output[t * hidden + h] += routes[t][j].weight * y[h];
      }
    }

    if (dump) {
      for (std::size_t t = 0; t < std::size_t(o.tokens); ++t) {
        dump->print("output {} {} {:.9g}\n", step, t, fmt::join(std::span(output).subspan(t * hidden, hidden), " "));
      }
      for (std::size_t e = 0; e < std::size_t(o.experts_per_rank); ++e) {
        dump->print("gradient {} {} {:.9g}\n", step, first_expert + int(e),
                    fmt::join(std::span(gradient).subspan(e * hidden, hidden), " "));
      }
    }
    // What a person reads: the load of the busiest and the idlest expert, and a checksum.
    std::int64_t busiest[] = {*std::ranges::max_element(seen)};
    std::int64_t idlest[] = {*std::ranges::min_element(seen)};
    double checksum[] = {std::reduce(output.begin(), output.end(), 0.0)};
    world.all_reduce(busiest, pcx::ReduceOp::max);
    world.all_reduce(idlest, pcx::ReduceOp::min);
    world.all_reduce(checksum, pcx::ReduceOp::sum);
    if (rank == 0) {
      fmt::print("  step {}: {} token copies dispatched, tokens per expert max {} min {}, checksum {:.6f}\n", step,
                 std::int64_t{world.size()} * o.tokens * o.top_k, busiest[0], idlest[0], checksum[0]);
    }
  }
  return 0;
}

// The flags, checked; the rules between --ep and the world are left to the context.
Options parse(const std::vector<std::string>& args, int world_size) {
  Options o;
  CLI::App app{"Routes tokens to experts with a top-k gate over the expert groups of a pcx::ParallelContext.",
               kProgram};
  app.option_defaults()->always_capture_default();
  app.add_option("--ep", o.ep, "expert parallel size (0: the world size)")->check(CLI::Range(0, 1 << 20));
  app.add_option("--experts-per-rank", o.experts_per_rank, "experts each rank hosts")->check(CLI::Range(1, 64));
  app.add_option("--top-k", o.top_k, "experts per token")->check(CLI::Range(1, 16));
  app.add_option("--tokens", o.tokens, "tokens per rank and step")->check(CLI::Range(1, 1 << 14));
  app.add_option("--hidden", o.hidden, "floats per token")->check(CLI::Range(1, 1 << 10));
  app.add_option("--steps", o.steps, "steps")->check(CLI::Range(1, 1000));
  app.add_option("--expert-order", o.expert_order)->check(CLI::IsMember({"expert-first", "data-first"}));
  app.add_option("--backend", o.backend, "mpi, or nccl with one GPU per rank")->check(CLI::IsMember({"mpi", "nccl"}));
  app.add_option("--dump", o.dump, "write each rank's outputs and expert gradients to PREFIX.<rank>");
  pcx::samples::parse_flags(app, args);
  if (o.ep == 0) o.ep = world_size;
  if (o.top_k > o.ep * o.experts_per_rank) {
    throw pcx::ConfigError(
        fmt::format("--top-k {} is more than the {} experts of the layer", o.top_k, o.ep * o.experts_per_rank));
  }
  if (o.backend == "nccl" && !PCX_WITH_NCCL) throw pcx::ConfigError("--backend nccl: this build has no NCCL backend");
  return o;
}

// --dump is left out: each rank writes a file of its own.
std::vector<pcx::AgreedValue> agreed_values(const Options& o) {
  return {{"--ep", o.ep},
          {"--experts-per-rank", o.experts_per_rank},
          {"--top-k", o.top_k},
          {"--tokens", o.tokens},
          {"--hidden", o.hidden},
          {"--steps", o.steps},
          {"--expert-order", pcx::samples::digest(o.expert_order), /*is_digest=*/true},
          {"--backend", pcx::samples::digest(o.backend), /*is_digest=*/true}};
}

int moe_dispatch(const Options& o, const pcx::MpiCommunicator& world) {
#if PCX_WITH_NCCL
  if (o.backend == "nccl") {
    if (!pcx::samples::every_rank_has_a_device(world, kProgram)) return pcx::samples::kSkipped;
    // The collectives take host vectors, which the NCCL communicator stages through the
    // device; a model would pass device tensors.
    return run(o, pcx::NcclCommunicator::create_world(world));
  }
#endif
  return run(o, world);
}

}  // namespace

int main(int argc, char** argv) {
  return pcx::samples::run_sample<Options>(
      argc, argv, {.program = kProgram, .parse = parse, .values = agreed_values, .run = moe_dispatch});
}
