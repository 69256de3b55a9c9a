// Checks what samples/moe_dispatch computed, from its --dump files PREFIX.0 ... PREFIX.<world-1>.
//
//   moe_dispatch_check PREFIX WORLD
//
// The expected values come from the layer's definition alone, not from the sample's
// routing: token i of the layer scores expert e with splitmix64 of i * 65536 + e, goes to
// the top-k experts by score (lower id first on a tie) weighted by the softmax of their k
// scores, and expert e multiplies by e + 1. So a token's output is x * sum_j w_j (e_j + 1)
// whichever rank hosted the experts, and the averaged gradient of expert e is the sum of
// every token in the world routed to e, divided by the number of replicas of e
// (world / ep). Each expert must also appear on exactly world / ep ranks per step.
//
// Exit status 0 when every value agrees (relative error 1e-5), 1 otherwise.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Header {
  int world = 0, rank = 0, ep = 0, experts = 0, top_k = 0, tokens = 0, hidden = 0, steps = 0;
  bool operator==(const Header&) const = default;
};

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB;
  return x ^ (x >> 31);
}

double score(std::uint64_t token, int expert) {
  return static_cast<double>(splitmix64(token * 65536 + static_cast<std::uint64_t>(expert)) >> 11) * 0x1p-53;
}

double value(std::uint64_t token, int h) {
  return static_cast<double>((token * 7 + static_cast<std::uint64_t>(h) * 3) % 17) / 8.0 - 1.0;
}

// The experts of token `token` and their weights.
std::vector<std::pair<int, double>> routes(std::uint64_t token, int experts, int k) {
  std::vector<std::pair<double, int>> ranked;  // (-score, expert): ascending is best first
  for (int e = 0; e < experts; ++e) ranked.emplace_back(-score(token, e), e);
  std::ranges::sort(ranked);
  double total = 0;
  for (int j = 0; j < k; ++j) total += std::exp(-ranked[static_cast<std::size_t>(j)].first);
  std::vector<std::pair<int, double>> chosen;
  for (int j = 0; j < k; ++j) {
    const auto& [negative, e] = ranked[static_cast<std::size_t>(j)];
    chosen.emplace_back(e, std::exp(-negative) / total);
  }
  return chosen;
}

class Checker {
 public:
  void expect_near(double got, double want, const std::string& what) {
    ++checks_;
    if (std::abs(got - want) <= 1e-5 * std::max(1.0, std::abs(want))) return;
    fail(fmt::format("{}: {} but expected {}", what, got, want));
  }
  void fail(const std::string& message) {
    if (++failures_ <= 10) fmt::print(stderr, "moe_dispatch_check: mismatch: {}\n", message);
  }
  [[nodiscard]] int finish() const {
    if (failures_ > 0 || checks_ == 0) {
      fmt::print(stderr, "moe_dispatch_check: {} of {} checks failed\n", failures_, checks_);
      return 1;
    }
    fmt::print("moe_dispatch_check: all {} checks passed\n", checks_);
    return 0;
  }

 private:
  long checks_ = 0;
  long failures_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fmt::print(stderr, "usage: moe_dispatch_check PREFIX WORLD\n");
    return 2;
  }
  const std::string prefix = argv[1];
  const int world = std::stoi(argv[2]);
  Checker checker;
  std::optional<Header> first;
  // Expected gradient sums over the world, built up as the outputs' tokens are read.
  std::map<std::pair<int, int>, std::vector<double>> gradient_sum;           // (step, expert) -> sum
  std::map<std::pair<int, int>, std::vector<std::vector<double>>> reported;  // every replica's value
  std::map<std::pair<int, int>, int> outputs_seen;                           // (step, rank) -> lines

  for (int rank = 0; rank < world; ++rank) {
    std::ifstream in(fmt::format("{}.{}", prefix, rank));
    Header h;
    std::string word;
    in >> word >> word >> h.world >> word >> h.rank >> word >> h.ep >> word >> h.experts >> word >> h.top_k >> word >>
        h.tokens >> word >> h.hidden >> word >> h.steps;
    if (!in || h.world != world || h.rank != rank) {
      checker.fail(fmt::format("{}.{}: missing, or not the header of rank {} of {}", prefix, rank, rank, world));
      continue;
    }
    if (!first) first = h;
    Header same = h;
    same.rank = first->rank;
    if (same != *first) {
      checker.fail(fmt::format("rank {}: a header unlike rank 0's", rank));
      continue;
    }
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string kind;
      int step = -1, index = -1;
      fields >> kind >> step >> index;
      std::vector<double> values(static_cast<std::size_t>(h.hidden));
      for (double& v : values) fields >> v;
      if (!fields || step < 0 || step >= h.steps) {
        checker.fail(fmt::format("rank {}: a malformed line '{}'", rank, line));
        continue;
      }
      if (kind == "output" && index >= 0 && index < h.tokens) {
        ++outputs_seen[{step, rank}];
        const auto token =
            (static_cast<std::uint64_t>(step) * static_cast<std::uint64_t>(world) + static_cast<std::uint64_t>(rank)) *
                static_cast<std::uint64_t>(h.tokens) +
            static_cast<std::uint64_t>(index);
        const auto chosen = routes(token, h.experts, h.top_k);
        double factor = 0;
        for (const auto& [e, w] : chosen) factor += w * (e + 1);
        for (int k = 0; k < h.hidden; ++k) {
          checker.expect_near(values[static_cast<std::size_t>(k)], value(token, k) * factor,
                              fmt::format("step {} rank {} token {} output {}", step, rank, index, k));
        }
        for (const auto& [e, w] : chosen) {
          auto& sum = gradient_sum[{step, e}];
          sum.resize(static_cast<std::size_t>(h.hidden), 0.0);
          for (int k = 0; k < h.hidden; ++k) sum[static_cast<std::size_t>(k)] += value(token, k);
        }
      } else if (kind == "gradient" && index >= 0 && index < h.experts) {
        reported[{step, index}].push_back(std::move(values));
      } else {
        checker.fail(fmt::format("rank {}: an unexpected line '{}'", rank, line));
      }
    }
  }
  if (!first) return checker.finish();

  const Header& h = *first;
  const int replicas = world / h.ep;
  for (int step = 0; step < h.steps; ++step) {
    for (int rank = 0; rank < world; ++rank) {
      if (outputs_seen[{step, rank}] != h.tokens) {
        checker.fail(
            fmt::format("step {} rank {}: {} outputs, expected {}", step, rank, outputs_seen[{step, rank}], h.tokens));
      }
    }
    for (int e = 0; e < h.experts; ++e) {
      const auto& got = reported[{step, e}];
      if (static_cast<int>(got.size()) != replicas) {
        checker.fail(fmt::format("step {}: expert {} on {} ranks, expected {}", step, e, got.size(), replicas));
      }
      std::vector<double> sum = gradient_sum[{step, e}];
      sum.resize(static_cast<std::size_t>(h.hidden), 0.0);  // an expert no token chose
      for (const auto& values : got) {
        for (int k = 0; k < h.hidden; ++k) {
          checker.expect_near(values[static_cast<std::size_t>(k)], sum[static_cast<std::size_t>(k)] / replicas,
                              fmt::format("step {} expert {} gradient {}", step, e, k));
        }
      }
    }
  }
  return checker.finish();
}
