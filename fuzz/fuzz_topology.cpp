// libFuzzer target: pcx::validate and pcx::Topology against SPEC.md.
//
// Input, read from the front (missing bytes read as 0):
//   byte        mode: even = structured, odd = raw
//   structured  tp byte (% 8 + 1), pp byte (% 8 + 1), dp byte (% 64 + 1), world = tp*pp*dp;
//               then an override byte: bit 0 world := raw int, bit 1 tp := raw int,
//               bit 2 pp := raw int, bit 3 tp := world + next byte (clamped to the world)
//               (raw int = the next 4 bytes, little endian)
//   raw         world, tp, pp: each a byte (world: 0..239, tp: % 17, pp: % 9) or, for a
//               byte >= 0xF0, a raw int
//   byte        number of expert parallel sizes, % 5; each: a byte < 0xC0 picks a divisor
//               of the data parallel size, < 0xF0 gives (byte - 0xC8) (-8..39), else a raw int
//   byte        expert order: odd = data-first
//   byte        bit 0: hpZ present, bit 1: ranks per node present, bit 2: context parallel
//               size, bit 3: expert tensor parallel size, bit 4: order string; then, in this
//               order, the values present:
//               cp    a byte (% 4 + 1, the world multiplied by it while it fits an int) or,
//                     >= 0xF0, a raw int
//               etp   a byte (% 5, 0 included) or, >= 0xF0, a raw int
//               order a byte picking one of the 120 orders of tp, cp, ep, dp, pp and a byte
//                     whose bits 0-4 leave names out, bit 5 repeats the first name and bit 6
//                     adds a trailing '-'
//               hpZ, ranks per node: a byte: < 0x80 a divisor of the world, < 0xC0
//               (byte - 0x84) (-4..59), < 0xF0 the world + (byte - 0xC0) (larger than the
//               world), else a raw int
//   the rest    up to 4 raw ints: ranks to probe in detail
//
// Oracles: validate() and Topology throw ConfigError exactly when the configuration breaks
// a rule of SPEC.md or of Megatron's layout (recomputed independently) and nothing else ever escapes; a valid
// configuration with at most 4096 ranks has every documented view, each a partition of the
// world with the groups Megatron's algorithm gives (and, for the seed's layout, SPEC.md) (Megatron, expert-first /
// data-first expert and expert data groups, hpZ blocks, all-to-all local blocks and global strides), every rank's
// expert and expert data groups meet only in that rank and lie in its data parallel group, and kinds the configuration
// lacks are GroupNotFound.

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "pcx/topology.hpp"

namespace {

std::vector<int> divisors(int n) {
  std::vector<int> result;
  if (n < 1) return result;
  for (int i = 1; static_cast<long long>(i) * i <= n; ++i) {
    if (n % i != 0) continue;
    result.push_back(i);
    if (i != n / i) result.push_back(n / i);
  }
  std::ranges::sort(result);
  return result;
}

int pick_divisor(int n, std::uint8_t b) {
  const std::vector<int> d = divisors(n);
  return d.empty() ? b % 17 : d[b % d.size()];
}

// The data parallel size the configuration would have, or 0 if it is already invalid.
int intended_data(const pcx::ParallelConfig& c) {
  if (c.world_size < 1 || c.tensor_parallel_size < 1 || c.pipeline_parallel_size < 1) return 0;
  const long long model =
      static_cast<long long>(std::min(c.tensor_parallel_size, c.world_size)) * c.pipeline_parallel_size;
  return c.world_size % model == 0 ? static_cast<int>(c.world_size / model) : 0;
}

int world_relative(pcx_fuzz::Bytes& in, int world) {
  const std::uint8_t b = in.byte();
  if (b < 0x80) return pick_divisor(world, b);
  if (b < 0xC0) return b - 0x84;
  if (b < 0xF0) return static_cast<int>(std::min<long long>(static_cast<long long>(world) + (b - 0xC0), INT_MAX));
  return in.raw_int();
}

// The @p permutation-th order of the five axis names, with @p mask's bits 0-4 leaving names
// out, bit 5 repeating the first name and bit 6 adding a trailing '-'.
std::string order_string(std::uint8_t permutation, std::uint8_t mask) {
  std::vector<std::string> names = {"tp", "cp", "ep", "dp", "pp"};
  for (int i = 0; i < permutation % 120; ++i) std::ranges::next_permutation(names);
  std::string order;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (mask & (1u << i)) continue;
    order += (order.empty() ? "" : "-") + names[i];
  }
  if (mask & 0x20) order += "-" + names.front();
  if (mask & 0x40) order += "-";
  return order;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return pcx_fuzz::guard([&] {
    pcx_fuzz::Bytes in(data, size);
    pcx::ParallelConfig config;
    if (in.byte() % 2 == 0) {
      const int tp = in.byte() % 8 + 1;
      const int pp = in.byte() % 8 + 1;
      const int dp = in.byte() % 64 + 1;
      config.world_size = tp * pp * dp;
      config.tensor_parallel_size = tp;
      config.pipeline_parallel_size = pp;
      const std::uint8_t overrides = in.byte();
      if (overrides & 1) config.world_size = in.raw_int();
      if (overrides & 2) config.tensor_parallel_size = in.raw_int();
      if (overrides & 4) config.pipeline_parallel_size = in.raw_int();
      if (overrides & 8) {
        config.tensor_parallel_size =
            static_cast<int>(std::min<long long>(static_cast<long long>(config.world_size) + in.byte(), INT_MAX));
      }
    } else {
      config.world_size = in.value([](std::uint8_t b) { return static_cast<int>(b); });
      config.tensor_parallel_size = in.value([](std::uint8_t b) { return b % 17; });
      config.pipeline_parallel_size = in.value([](std::uint8_t b) { return b % 9; });
    }

    const int data_size = intended_data(config);
    config.expert_parallel_sizes.resize(in.byte() % 5);
    for (int& ep : config.expert_parallel_sizes) {
      const std::uint8_t b = in.byte();
      if (b < 0xC0) {
        ep = pick_divisor(data_size, b);
      } else if (b < 0xF0) {
        ep = b - 0xC8;
      } else {
        ep = in.raw_int();
      }
    }
    config.expert_order = in.byte() % 2 == 1 ? pcx::ExpertOrder::data_first : pcx::ExpertOrder::expert_first;
    const std::uint8_t optional = in.byte();
    if (optional & 4) {
      config.context_parallel_size = in.value([](std::uint8_t b) { return b % 4 + 1; });
      const long long world = static_cast<long long>(config.world_size) * config.context_parallel_size;
      if (world <= INT_MAX && world >= INT_MIN) config.world_size = static_cast<int>(world);
    }
    if (optional & 8) config.expert_tensor_parallel_size = in.value([](std::uint8_t b) { return b % 5; });
    if (optional & 16) config.order = order_string(in.byte(), in.byte());
    if (optional & 1) config.zero_hpz_size = world_relative(in, config.world_size);
    if (optional & 2) config.ranks_per_node = world_relative(in, config.world_size);
    if (optional & 32) config.distributed_optimizer_instances = in.value([](std::uint8_t b) { return b % 5; });
    config.hybrid_context_parallel = (optional & 64) != 0;
    if (optional & 4 && optional & 8) {
      const std::uint8_t part = in.byte();
      config.rank_offset = part % 7 == 6 ? in.raw_int() : part % 7;
      if (part & 8) config.local_world_size = world_relative(in, config.world_size);
      const long long world = static_cast<long long>(config.world_size) + config.rank_offset + (part >> 5);
      if (world <= INT_MAX && world >= INT_MIN) config.world_size = static_cast<int>(world);
    }
    if (optional & 128) {
      config.hierarchical_context_parallel_sizes.resize(in.byte() % 4);
      for (int& level : config.hierarchical_context_parallel_sizes) level = in.value([](std::uint8_t b) { return b % 5; });
    }

    std::vector<int> probes;
    while (!in.empty() && probes.size() < 4) probes.push_back(in.raw_int());

    pcx_fuzz::check_config(config, probes);
  });
}
