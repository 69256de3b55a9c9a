// layout_vs_seed: the pcx side of compare_seed.py, which runs the seed's own
// `_get_expert_parallel_ranks` (bench/seed/groups_seed.py) against it.
//
//   layout_vs_seed time [--log2-worlds 10:20] [--tp 1,2] [--ep 8] [--samples 5] [--min-sample 0.02]
//       For every world W = 2^k, tensor size and both expert orders, times what the
//       seed's function computes: every expert parallel and every expert data parallel
//       group (Topology construction + GroupLayout::groups() of the two views), and,
//       for reference, what one pcx rank computes instead (colour and group_of of its
//       own two groups). Prints one JSON object.
//   layout_vs_seed dump
//       Reads lines "W tp pp ep order" (order: expert-first or data-first) from stdin and
//       prints, per line, one JSON line {"ep": [[...], ...], "edp": [[...], ...]} with
//       every group of the two kinds; an invalid configuration prints {"error": "..."}.
//
// Timing: a sample runs the work n times, n calibrated so that a sample lasts at least
// --min-sample seconds; the figures are the median and minimum over --samples samples
// of the time per call. compare_seed.py times the Python side the same way.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/topology.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int log2_first = 10;
  int log2_last = 20;
  std::vector<int> tensor_sizes{1, 2};
  int experts = 8;
  int samples = 5;
  double min_sample = 0.02;
};

int to_int(std::string_view text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw std::invalid_argument("not an integer: " + std::string(text));
  }
  return value;
}

std::vector<int> to_ints(std::string_view text) {
  std::vector<int> values;
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    values.push_back(to_int(text.substr(0, comma)));
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
  }
  return values;
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(flag));
    const std::string_view value = argv[++i];
    if (flag == "--log2-worlds") {
      const std::size_t colon = value.find(':');
      options.log2_first = to_int(value.substr(0, colon));
      options.log2_last = colon == std::string_view::npos ? options.log2_first : to_int(value.substr(colon + 1));
    } else if (flag == "--tp") {
      options.tensor_sizes = to_ints(value);
    } else if (flag == "--ep") {
      options.experts = to_int(value);
    } else if (flag == "--samples") {
      options.samples = std::max(1, to_int(value));
    } else if (flag == "--min-sample") {
      options.min_sample = std::stod(std::string(value));
    } else {
      throw std::invalid_argument("unknown option " + std::string(flag));
    }
  }
  if (options.log2_first < 0 || options.log2_last > 30 || options.log2_first > options.log2_last) {
    throw std::invalid_argument("--log2-worlds must be a range a:b with 0 <= a <= b <= 30");
  }
  return options;
}

pcx::ParallelConfig make_config(int world, int tensor, int pipeline, int experts, pcx::ExpertOrder order) {
  pcx::ParallelConfig config;
  config.world_size = world;
  config.tensor_parallel_size = tensor;
  config.pipeline_parallel_size = pipeline;
  config.expert_parallel_sizes = {experts};
  config.expert_order = order;
  return config;
}

// What the seed's function returns: every expert parallel and expert data parallel group.
void list_all(const pcx::ParallelConfig& config) {
  const pcx::Topology topology(config);
  const int ep = config.expert_parallel_sizes.front();
  std::vector<std::vector<int>> expert = topology.layout({pcx::GroupKind::expert_parallel, ep}).groups();
  std::vector<std::vector<int>> expert_data = topology.layout({pcx::GroupKind::expert_data_parallel, ep}).groups();
  benchmark::DoNotOptimize(expert.data());
  benchmark::DoNotOptimize(expert_data.data());
  benchmark::ClobberMemory();
}

// What one pcx rank computes instead: the colour and members of its own two groups.
void list_own(const pcx::ParallelConfig& config, int rank) {
  const pcx::Topology topology(config);
  const int ep = config.expert_parallel_sizes.front();
  const pcx::GroupLayout& expert = topology.layout({pcx::GroupKind::expert_parallel, ep});
  const pcx::GroupLayout& expert_data = topology.layout({pcx::GroupKind::expert_data_parallel, ep});
  int colours = expert.colour(rank) + expert_data.colour(rank);
  std::vector<int> own_expert = expert.group_of(rank);
  std::vector<int> own_expert_data = expert_data.group_of(rank);
  benchmark::DoNotOptimize(colours);
  benchmark::DoNotOptimize(own_expert.data());
  benchmark::DoNotOptimize(own_expert_data.data());
  benchmark::ClobberMemory();
}

struct Timing {
  double median;
  double min;
  long calls_per_sample;
};

template <class Work>
Timing time_it(const Options& options, Work&& work) {
  const auto seconds_of = [&work](long calls) {
    const auto start = Clock::now();
    for (long i = 0; i < calls; ++i) work();
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  // Calibrate as Python's timeit.autorange does: 1, 2, 5, 10, 20, 50, ... calls.
  long calls = 1;
  for (long scale = 1;; scale *= 10) {
    bool done = false;
    for (const long factor : {1L, 2L, 5L}) {
      calls = scale * factor;
      if (seconds_of(calls) >= options.min_sample) {
        done = true;
        break;
      }
    }
    if (done) break;
  }
  std::vector<double> per_call;
  for (int s = 0; s < options.samples; ++s) per_call.push_back(seconds_of(calls) / static_cast<double>(calls));
  std::ranges::sort(per_call);
  return {per_call[per_call.size() / 2], per_call.front(), calls};
}

int run_timings(const Options& options) {
  std::printf("{\"experts\": %d, \"samples\": %d, \"min_sample\": %g, \"results\": [", options.experts, options.samples,
              options.min_sample);
  bool first = true;
  for (int k = options.log2_first; k <= options.log2_last; ++k) {
    const int world = 1 << k;
    for (const int tensor : options.tensor_sizes) {
      for (const pcx::ExpertOrder order : {pcx::ExpertOrder::expert_first, pcx::ExpertOrder::data_first}) {
        const pcx::ParallelConfig config = make_config(world, tensor, 1, options.experts, order);
        try {
          pcx::validate(config);
        } catch (const pcx::ConfigError&) {
          continue;  // too small a world for this tensor and expert size
        }
        const Timing all = time_it(options, [&config] { list_all(config); });
        const Timing own = time_it(options, [&config, world] { list_own(config, world - 1); });
        std::printf(
            "%s\n  {\"world\": %d, \"tp\": %d, \"order\": \"%s\", \"pcx_all_median\": %.6e, "
            "\"pcx_all_min\": %.6e, \"pcx_all_calls\": %ld, \"pcx_rank_median\": %.6e, "
            "\"pcx_rank_min\": %.6e}",
            first ? "" : ",", world, tensor, std::string(pcx::to_string(order)).c_str(), all.median, all.min,
            all.calls_per_sample, own.median, own.min);
        std::fflush(stdout);
        first = false;
      }
    }
  }
  std::printf("\n]}\n");
  return 0;
}

void print_groups(const std::vector<std::vector<int>>& groups) {
  std::putchar('[');
  for (std::size_t g = 0; g < groups.size(); ++g) {
    std::printf("%s[", g == 0 ? "" : ",");
    for (std::size_t i = 0; i < groups[g].size(); ++i) std::printf("%s%d", i == 0 ? "" : ",", groups[g][i]);
    std::putchar(']');
  }
  std::putchar(']');
}

int run_dump() {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::istringstream in(line);
    int world = 0, tensor = 0, pipeline = 0, experts = 0;
    std::string order;
    if (!(in >> world >> tensor >> pipeline >> experts >> order)) {
      std::printf("{\"error\": \"malformed line\"}\n");
      continue;
    }
    try {
      const pcx::Topology topology(make_config(world, tensor, pipeline, experts, pcx::parse_expert_order(order)));
      std::printf("{\"ep\": ");
      print_groups(topology.layout({pcx::GroupKind::expert_parallel, experts}).groups());
      std::printf(", \"edp\": ");
      print_groups(topology.layout({pcx::GroupKind::expert_data_parallel, experts}).groups());
      std::printf("}\n");
    } catch (const pcx::Error& e) {
      std::string message = e.what();
      std::ranges::replace(message, '"', '\'');
      std::printf("{\"error\": \"%s\"}\n", message.c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string_view mode = argc > 1 ? argv[1] : "";
    if (mode == "time") return run_timings(parse(argc, argv));
    if (mode == "dump") return run_dump();
    std::fprintf(stderr,
                 "usage: layout_vs_seed time [--log2-worlds 10:20] [--tp 1,2] [--ep 8] [--samples 5] "
                 "[--min-sample 0.02]\n"
                 "       layout_vs_seed dump < lines of \"W tp pp ep expert-first|data-first\"\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layout_vs_seed: %s\n", e.what());
    return 2;
  }
}
