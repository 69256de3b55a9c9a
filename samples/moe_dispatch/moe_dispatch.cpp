// moe_dispatch: the communication of a mixture-of-experts (MoE) layer in a training step,
// run on the expert groups of a pcx::ParallelContext, with every number checked.
//
//   mpiexec -n 8 moe_dispatch [--ep 2,4,8] [--expert-order expert-first|data-first|both]
//                             [--tokens 64] [--hidden 16] [--steps 3] [--backend mpi|nccl]
//
// For each expert order, one context holds the expert groups of every expert parallel
// size `ep` (one pair per MoE layer size, as DeepSpeed keeps them). The expert parallel
// group has ep ranks; group rank e hosts expert e. One step of a layer of size ep is:
//  1. dispatch: each rank has `tokens` tokens of `hidden` floats; token t of global rank r
//     goes to expert (r + t) % ep, so every rank sends tokens/ep tokens to each expert:
//     one all-to-all with equal splits over the expert parallel group;
//  2. expert: expert e, hosted by global rank g, computes y = x * (e + 1) + g;
//  3. combine: a second all-to-all returns every token to the rank it came from;
//  4. expert gradients: every rank's gradient of its expert is summed by an all-reduce over
//     the expert data parallel group (the replicas of that expert), and the parameters the
//     expert broadcast source rank (group rank 0 of that group) derives from the sum are
//     broadcast to the replicas.
// Every number received is compared with a value computed on the host from the formulas
// above and the layout rules of SPEC.md (no communication in the reference), so the
// groups the context built are checked too.
//
// --backend nccl (builds with the NCCL backend only) runs the same code over a
// pcx::NcclCommunicator world, one GPU per rank, with device buffers; the expert runs on
// the host (its input is copied out and its output back), so no CUDA kernel is needed.
//
// Exit status: 0 when every check passed; 1 on any mismatch (verdicts are combined over
// the world, so every rank agrees) or a failure to start NCCL; 2 on every rank for a bad
// flag or configuration, with one error line from rank 0; 77 when --backend nccl finds a
// rank without a CUDA device.

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../common/run_sample.hpp"
#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/topology.hpp"

#if PCX_WITH_NCCL
#include <cuda_runtime.h>

#include "../common/nccl_devices.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#endif

namespace {

constexpr int kMismatch = 1;
constexpr const char* kProgram = "moe_dispatch";
constexpr int kDefaultTokens = 64;
constexpr std::int64_t kMaxElements = std::int64_t{1} << 26;  // tokens x hidden per rank
constexpr int kMaxReportedMismatches = 10;                    // per rank

std::size_t to_size(std::int64_t value) { return static_cast<std::size_t>(value); }

// ---------------------------------------------------------------------------------------
// Flags

enum class Backend { mpi, nccl };

struct Options {
  std::vector<int> expert_parallel_sizes;  // empty: every size above 1 that divides the world
  std::vector<pcx::ExpertOrder> orders{pcx::ExpertOrder::expert_first, pcx::ExpertOrder::data_first};
  std::optional<int> tokens;  // empty: kDefaultTokens rounded up to a multiple of every ep
  int hidden = 16;
  int steps = 3;
  Backend backend = Backend::mpi;
  std::optional<int> corrupt_rank;  // for testing the checks: a value this rank receives is changed
  bool help = false;
};

std::string help() {
  return fmt::format(
      "usage: mpiexec -n W {} [--ep E[,E...]] [--expert-order expert-first|data-first|both]\n"
      "       [--tokens N] [--hidden H] [--steps S] [--backend mpi|nccl] [--corrupt-rank R]\n"
      "\n"
      "Dispatches tokens to experts and back over the expert parallel groups of a pcx::ParallelContext,\n"
      "all-reduces expert gradients over the expert data parallel groups and broadcasts from the expert\n"
      "broadcast source rank, checking every number against the formulas.\n"
      "  --ep            expert parallel sizes (default: every size above 1 that divides W)\n"
      "  --expert-order  expert-first, data-first or both (default both)\n"
      "  --tokens        tokens per rank, a multiple of every ep (default {} rounded up to one)\n"
      "  --hidden        floats per token (default 16)\n"
      "  --steps         steps per layout (default 3)\n"
      "  --backend       mpi (host buffers) or nccl (device buffers; {})\n"
      "  --corrupt-rank  change one value rank R receives in the first step, to see the checks fail\n"
      "Exit status: 0 all checks passed, 1 a mismatch, 2 a bad flag or configuration, 77 no CUDA device.\n",
      kProgram, kDefaultTokens, PCX_WITH_NCCL ? "one GPU per rank" : "not in this build");
}

int parse_int(std::string_view flag, std::string_view text, int low, int high) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc{} || end != text.data() + text.size()) {
    if (error == std::errc::result_out_of_range) {
      throw pcx::ConfigError(fmt::format("{}: {} is outside [{}, {}]", flag, text, low, high));
    }
    throw pcx::ConfigError(fmt::format("{}: '{}' is not a whole number", flag, text));
  }
  if (value < low || value > high) {
    throw pcx::ConfigError(fmt::format("{}: {} is outside [{}, {}]", flag, value, low, high));
  }
  return value;
}

std::vector<int> parse_list(std::string_view flag, std::string_view text) {
  std::vector<int> values;
  while (true) {
    const std::size_t comma = text.find(',');
    values.push_back(parse_int(flag, text.substr(0, comma), 1, 1 << 20));
    if (comma == std::string_view::npos) return values;
    text.remove_prefix(comma + 1);
  }
}

// Same flags, same result on every rank: a bad flag is a ConfigError everywhere.
Options parse_options(const std::vector<std::string>& args) {
  Options options;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view flag = args[i];
    std::optional<std::string_view> inline_value;
    if (const std::size_t equals = flag.find('='); flag.starts_with("--") && equals != std::string_view::npos) {
      inline_value = flag.substr(equals + 1);
      flag = flag.substr(0, equals);
    }
    if (flag == "--help" || flag == "-h") {
      options.help = true;
      continue;
    }
    const auto value = [&]() -> std::string_view {
      if (inline_value) return *inline_value;
      if (i + 1 >= args.size()) throw pcx::ConfigError(fmt::format("{} needs a value", flag));
      return args[++i];
    };
    if (flag == "--ep") {
      options.expert_parallel_sizes = parse_list(flag, value());
    } else if (flag == "--expert-order") {
      const std::string_view order = value();
      if (order == "both") {
        options.orders = {pcx::ExpertOrder::expert_first, pcx::ExpertOrder::data_first};
      } else if (order == "expert-first" || order == "data-first") {
        options.orders = {pcx::parse_expert_order(order)};
      } else {
        throw pcx::ConfigError(fmt::format("--expert-order: '{}' is not expert-first, data-first or both", order));
      }
    } else if (flag == "--tokens") {
      options.tokens = parse_int(flag, value(), 1, 1 << 20);
    } else if (flag == "--hidden") {
      options.hidden = parse_int(flag, value(), 1, 1 << 16);
    } else if (flag == "--steps") {
      options.steps = parse_int(flag, value(), 1, 1 << 16);
    } else if (flag == "--corrupt-rank") {
      options.corrupt_rank = parse_int(flag, value(), 0, 1 << 30);
    } else if (flag == "--backend") {
      const std::string_view backend = value();
      if (backend == "mpi") {
        options.backend = Backend::mpi;
      } else if (backend == "nccl") {
        if (!PCX_WITH_NCCL) throw pcx::ConfigError("--backend nccl: this build has no NCCL backend");
        options.backend = Backend::nccl;
      } else {
        throw pcx::ConfigError(fmt::format("--backend: '{}' is not mpi or nccl", backend));
      }
    } else {
      throw pcx::ConfigError(fmt::format("unknown flag '{}' (see --help)", args[i]));
    }
  }
  return options;
}

// The expert parallel sizes and token count to run, checked for `world` ranks before any
// communication.
void complete_and_check(Options& options, int world) {
  if (options.corrupt_rank && *options.corrupt_rank >= world) {
    throw pcx::ConfigError(
        fmt::format("--corrupt-rank: {} is not a rank of a world of {}", *options.corrupt_rank, world));
  }
  if (options.expert_parallel_sizes.empty()) {
    for (int ep = 2; ep <= world; ++ep) {
      if (world % ep == 0) options.expert_parallel_sizes.push_back(ep);
    }
    if (options.expert_parallel_sizes.empty()) options.expert_parallel_sizes.push_back(1);
  }
  pcx::ParallelConfig config;
  config.world_size = world;
  config.expert_parallel_sizes = options.expert_parallel_sizes;
  pcx::validate(config);  // the library's own words for an ep that does not fit

  if (!options.tokens) {
    std::int64_t multiple = 1;
    for (const int ep : options.expert_parallel_sizes) multiple = std::lcm(multiple, std::int64_t{ep});
    const std::int64_t tokens = (kDefaultTokens + multiple - 1) / multiple * multiple;
    if (tokens > (1 << 20)) {
      throw pcx::ConfigError(fmt::format("no default --tokens for expert parallel sizes {}: give --tokens",
                                         fmt::join(options.expert_parallel_sizes, ",")));
    }
    options.tokens = static_cast<int>(tokens);
  }
  for (const int ep : options.expert_parallel_sizes) {
    if (*options.tokens % ep != 0) {
      throw pcx::ConfigError(fmt::format(
          "--tokens {} is not a multiple of expert parallel size {}: token t of rank r goes to expert (r + t) % {}, "
          "and every rank sends each expert the same number of tokens",
          *options.tokens, ep, ep));
    }
  }
  if (std::int64_t{*options.tokens} * options.hidden > kMaxElements) {
    throw pcx::ConfigError(fmt::format("--tokens {} x --hidden {} is more than {} floats per rank", *options.tokens,
                                       options.hidden, kMaxElements));
  }
}

// ---------------------------------------------------------------------------------------
// The reference: the layout and every value, from the formulas alone (no communication).

class Reference {
 public:
  Reference(int world, int ep, pcx::ExpertOrder order, int tokens, int hidden)
      : world_(world), ep_(ep), edp_(world / ep), order_(order), tokens_(tokens), hidden_(hidden) {}

  [[nodiscard]] int ep() const noexcept { return ep_; }
  [[nodiscard]] int tokens_per_expert() const noexcept { return tokens_ / ep_; }

  // SPEC.md with tensor and pipeline size 1: expert-first r = j*ep + e, data-first
  // r = e*edp + j, for expert e in [0, ep) and replica j in [0, edp).
  [[nodiscard]] int rank_of(int expert, int replica) const {
    return order_ == pcx::ExpertOrder::expert_first ? replica * ep_ + expert : expert * edp_ + replica;
  }
  // The expert a rank hosts: its group rank in its expert parallel group.
  [[nodiscard]] int expert_of(int rank) const {
    return order_ == pcx::ExpertOrder::expert_first ? rank % ep_ : rank / edp_;
  }
  [[nodiscard]] int replica_of(int rank) const {
    return order_ == pcx::ExpertOrder::expert_first ? rank / ep_ : rank % edp_;
  }
  // Expert e varies: the ranks that exchange tokens.
  [[nodiscard]] std::vector<int> expert_group(int rank) const {
    std::vector<int> group;
    for (int e = 0; e < ep_; ++e) group.push_back(rank_of(e, replica_of(rank)));
    return group;
  }
  // Replica j varies: the ranks that host the same expert.
  [[nodiscard]] std::vector<int> expert_data_group(int rank) const {
    std::vector<int> group;
    for (int j = 0; j < edp_; ++j) group.push_back(rank_of(expert_of(rank), j));
    return group;
  }
  // Every expert group of the world, in order of the first member.
  [[nodiscard]] std::vector<std::vector<int>> all_expert_groups() const {
    std::vector<std::vector<int>> groups;
    for (int r = 0; r < world_; ++r) {
      if (expert_of(r) == 0) groups.push_back(expert_group(r));
    }
    return groups;
  }
  [[nodiscard]] std::vector<std::vector<int>> all_expert_data_groups() const {
    std::vector<std::vector<int>> groups;
    for (int r = 0; r < world_; ++r) {
      if (replica_of(r) == 0) groups.push_back(expert_data_group(r));
    }
    return groups;
  }

  // Token t of `rank` goes to expert (rank + t) % ep: its i-th token for `expert` is
  // first_token(rank, expert) + i * ep.
  [[nodiscard]] int token_index(int rank, int expert, int i) const {
    return ((expert - rank) % ep_ + ep_) % ep_ + i * ep_;
  }
  // Multiples of 1/4 in [-31, 31.5]: exact in float.
  [[nodiscard]] static float token(int step, int rank, int t, int h) {
    const std::int64_t mixed =
        std::int64_t{rank} * 131 + std::int64_t{t} * 31 + std::int64_t{h} * 7 + std::int64_t{step} * 17;
    return static_cast<float>(mixed % 251) * 0.25f - 31.0f;
  }
  // Exact in float while ep * 32 + world < 2^22.
  [[nodiscard]] static float expert_output(float x, int expert, int host) {
    return x * static_cast<float>(expert + 1) + static_cast<float>(host);
  }
  [[nodiscard]] static double gradient(int step, int expert, int rank, int k) {
    return (expert + 1) * 1000.0 + rank * 10.0 + (k % 7) + step * 0.5;
  }
  // The sum of gradient() over `rank`'s expert data parallel group.
  [[nodiscard]] double gradient_sum(int step, int rank, int k) const {
    double sum = 0;
    for (const int member : expert_data_group(rank)) sum += gradient(step, expert_of(member), member, k);
    return sum;
  }
  // What the expert broadcast source rank sends: derived from the summed gradient and its rank.
  [[nodiscard]] static double parameter(double gradient_sum, int source) { return gradient_sum * 0.5 + source; }
  [[nodiscard]] int hidden() const noexcept { return hidden_; }
  [[nodiscard]] int tokens() const noexcept { return tokens_; }

 private:
  int world_;
  int ep_;
  int edp_;
  pcx::ExpertOrder order_;
  int tokens_;
  int hidden_;
};

// ---------------------------------------------------------------------------------------
// Buffers: host memory for MPI, device memory for NCCL. The step writes and reads them
// through host vectors only (upload, download), so it is the same code for both backends.

struct Memory {
  std::optional<int> device;  // a CUDA device, or absent for host memory
};

#if PCX_WITH_NCCL
struct DeviceFree {
  void operator()(void* pointer) const noexcept { (void)cudaFree(pointer); }
};
#endif

template <pcx::Element T>
class Buffer {
 public:
  Buffer(const Memory& memory, std::size_t size) : size_(size) {
    if (!memory.device) {
      host_.resize(size);
      return;
    }
#if PCX_WITH_NCCL
    pcx::check_cuda(cudaSetDevice(*memory.device), "cudaSetDevice");
    void* pointer = nullptr;
    pcx::check_cuda(cudaMalloc(&pointer, size * sizeof(T)), "cudaMalloc");
    device_.reset(pointer);
#else
    throw pcx::ConfigError("device memory needs the NCCL backend, which this build does not have");
#endif
  }

  // The memory the communicator reads and writes: device memory for NCCL, which the
  // communicator hands to NCCL and never touches on the host.
  [[nodiscard]] std::span<T> span() noexcept { return {data(), size_}; }

  void upload(std::span<const T> from) {
    check_size(from.size());
#if PCX_WITH_NCCL
    if (device_) {
      pcx::check_cuda(cudaMemcpy(device_.get(), from.data(), from.size_bytes(), cudaMemcpyHostToDevice), "cudaMemcpy");
      return;
    }
#endif
    std::ranges::copy(from, host_.begin());
  }

  void download(std::span<T> to) {
    check_size(to.size());
#if PCX_WITH_NCCL
    if (device_) {
      pcx::check_cuda(cudaMemcpy(to.data(), device_.get(), to.size_bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy");
      return;
    }
#endif
    std::ranges::copy(host_, to.begin());
  }

 private:
  [[nodiscard]] T* data() noexcept {
#if PCX_WITH_NCCL
    if (device_) return static_cast<T*>(device_.get());
#endif
    return host_.data();
  }
  void check_size(std::size_t size) const {
    if (size != size_) throw pcx::ConfigError(fmt::format("a copy of {} elements into a buffer of {}", size, size_));
  }

  std::size_t size_;
  std::vector<T> host_;
#if PCX_WITH_NCCL
  std::unique_ptr<void, DeviceFree> device_;
#endif
};

// ---------------------------------------------------------------------------------------
// One MoE layer of size ep: its step, and the checks of what the step received.

// What one step received, copied to the host for checking.
struct StepResult {
  std::vector<float> dispatched;   // the expert's input: block s came from group rank s
  std::vector<float> combined;     // the layer's output: block d came back from expert d
  std::vector<double> gradients;   // summed over the expert data parallel group
  std::vector<double> parameters;  // as broadcast from the expert broadcast source rank
  double seconds = 0;
};

class MoeLayer {
 public:
  MoeLayer(const pcx::ParallelContext& context, int ep, const Memory& memory, int tokens, int hidden)
      : context_(context),
        ep_(ep),
        tokens_(tokens),
        hidden_(hidden),
        elements_(to_size(std::int64_t{tokens} * hidden)),
        send_(memory, elements_),
        receive_(memory, elements_),
        gradients_(memory, to_size(hidden)),
        parameters_(memory, to_size(hidden)) {}

  // One step: dispatch, expert, combine, gradient all-reduce, parameter broadcast. It uses
  // the context's groups only; the reference is not consulted. With `corrupt`, the
  // expert's first input value is changed before the expert runs (to test the checks).
  StepResult step(int step, bool corrupt) {
    const pcx::ProcessGroup& experts = context_.expert_parallel_group(ep_);
    const pcx::ProcessGroup& replicas = context_.expert_data_parallel_group(ep_);
    const int rank = context_.rank();
    const int expert = experts.rank();
    const std::size_t per_expert = to_size(tokens_ / ep_);
    const std::size_t hidden = to_size(hidden_);
    StepResult result;
    result.dispatched.resize(elements_);
    result.combined.resize(elements_);
    result.gradients.resize(hidden);
    result.parameters.resize(hidden);

    // Tokens laid out by destination: block d holds, in token order, the tokens for expert d.
    std::vector<float> host(elements_);
    std::vector<std::size_t> filled(to_size(ep_), 0);
    for (int t = 0; t < tokens_; ++t) {
      const std::size_t destination = to_size((rank + t) % ep_);
      const std::size_t slot = destination * per_expert + filled[destination]++;
      for (std::size_t h = 0; h < hidden; ++h) {
        host[slot * hidden + h] = Reference::token(step, rank, t, static_cast<int>(h));
      }
    }

    context_.world_group().communicator().barrier();
    const auto start = std::chrono::steady_clock::now();

    send_.upload(host);
    experts.communicator().all_to_all(std::span<const float>(send_.span()), receive_.span());
    receive_.download(result.dispatched);
    if (corrupt) result.dispatched.front() += 1.0f;

    for (std::size_t i = 0; i < elements_; ++i) host[i] = Reference::expert_output(result.dispatched[i], expert, rank);
    send_.upload(host);
    experts.communicator().all_to_all(std::span<const float>(send_.span()), receive_.span());
    receive_.download(result.combined);

    std::vector<double> gradient(hidden);
    for (std::size_t k = 0; k < hidden; ++k) gradient[k] = Reference::gradient(step, expert, rank, static_cast<int>(k));
    gradients_.upload(gradient);
    replicas.communicator().all_reduce(gradients_.span(), pcx::ReduceOp::sum);
    gradients_.download(result.gradients);

    // The source derives the parameters from the sum; the others hold stale values
    // (-1) until the broadcast overwrites them.
    const int source = context_.expert_broadcast_source_rank(ep_);
    const std::vector<int> members = replicas.ranks();
    const auto root = std::ranges::find(members, source) - members.begin();
    for (std::size_t k = 0; k < hidden; ++k) {
      gradient[k] = rank == source ? Reference::parameter(result.gradients[k], rank) : -1.0;
    }
    parameters_.upload(gradient);
    replicas.communicator().broadcast(parameters_.span(), static_cast<int>(root));
    parameters_.download(result.parameters);

    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  }

 private:
  const pcx::ParallelContext& context_;
  int ep_;
  int tokens_;
  int hidden_;
  std::size_t elements_;
  Buffer<float> send_;
  Buffer<float> receive_;
  Buffer<double> gradients_;
  Buffer<double> parameters_;
};

// Counts checks; reports the first mismatches of this rank on stderr.
class Checker {
 public:
  explicit Checker(int rank) : rank_(rank) {}

  template <class Describe>
  void expect(bool ok, Describe&& describe) {
    ++checks_;
    if (ok) return;
    if (++failures_ <= kMaxReportedMismatches) {
      fmt::print(stderr, "{}: rank {}: mismatch: {}\n", kProgram, rank_, describe());
    }
  }
  [[nodiscard]] std::int64_t checks() const noexcept { return checks_; }
  [[nodiscard]] std::int64_t failures() const noexcept { return failures_; }

 private:
  int rank_;
  std::int64_t checks_ = 0;
  std::int64_t failures_ = 0;
};

// The context's groups for one ep against the formulas.
void check_groups(const pcx::ParallelContext& context, const Reference& reference, std::string_view layout,
                  Checker& checker) {
  const int rank = context.rank();
  const int ep = reference.ep();
  const pcx::ProcessGroup& experts = context.expert_parallel_group(ep);
  const pcx::ProcessGroup& replicas = context.expert_data_parallel_group(ep);
  const std::vector<int> want_experts = reference.expert_group(rank);
  const std::vector<int> want_replicas = reference.expert_data_group(rank);
  checker.expect(experts.ranks() == want_experts, [&] {
    return fmt::format("{}: expert parallel group [{}], expected [{}]", layout, fmt::join(experts.ranks(), ","),
                       fmt::join(want_experts, ","));
  });
  checker.expect(experts.rank() == reference.expert_of(rank) && experts.communicator().size() == ep, [&] {
    return fmt::format("{}: expert parallel group rank {} of {}, expected {} of {}", layout, experts.rank(),
                       experts.communicator().size(), reference.expert_of(rank), ep);
  });
  checker.expect(replicas.ranks() == want_replicas, [&] {
    return fmt::format("{}: expert data parallel group [{}], expected [{}]", layout, fmt::join(replicas.ranks(), ","),
                       fmt::join(want_replicas, ","));
  });
  checker.expect(replicas.rank() == reference.replica_of(rank) &&
                     replicas.communicator().size() == static_cast<int>(want_replicas.size()),
                 [&] {
                   return fmt::format("{}: expert data parallel group rank {} of {}, expected {} of {}", layout,
                                      replicas.rank(), replicas.communicator().size(), reference.replica_of(rank),
                                      want_replicas.size());
                 });
  checker.expect(context.expert_broadcast_source_rank(ep) == want_replicas.front(), [&] {
    return fmt::format("{}: expert broadcast source rank {}, expected {}", layout,
                       context.expert_broadcast_source_rank(ep), want_replicas.front());
  });
}

// Every number one step received against the formulas.
void check_step(const StepResult& result, const Reference& reference, int rank, int step, std::string_view layout,
                Checker& checker) {
  const int ep = reference.ep();
  const int per_expert = reference.tokens_per_expert();
  const int hidden = reference.hidden();
  const int expert = reference.expert_of(rank);
  const std::vector<int> group = reference.expert_group(rank);
  const auto at = [&](int block, int i, int h) { return to_size((std::int64_t{block} * per_expert + i) * hidden + h); };

  // Dispatched: block s holds the tokens of group member s for this rank's expert.
  for (int s = 0; s < ep; ++s) {
    const int source = group[to_size(s)];
    for (int i = 0; i < per_expert; ++i) {
      const int t = reference.token_index(source, expert, i);
      for (int h = 0; h < hidden; ++h) {
        const float got = result.dispatched[at(s, i, h)];
        const float want = Reference::token(step, source, t, h);
        checker.expect(got == want, [&] {
          return fmt::format("{} step {}: expert {} received {} for token {} of rank {} (hidden {}), expected {}",
                             layout, step, expert, got, t, source, h, want);
        });
      }
    }
  }
  // Combined: block d holds this rank's tokens for expert d, as that expert returned them.
  for (int d = 0; d < ep; ++d) {
    const int host = group[to_size(d)];
    for (int i = 0; i < per_expert; ++i) {
      const int t = reference.token_index(rank, d, i);
      for (int h = 0; h < hidden; ++h) {
        const float got = result.combined[at(d, i, h)];
        const float want = Reference::expert_output(Reference::token(step, rank, t, h), d, host);
        checker.expect(got == want, [&] {
          return fmt::format("{} step {}: token {} (hidden {}) came back from expert {} as {}, expected {}", layout,
                             step, t, h, d, got, want);
        });
      }
    }
  }
  const int source = reference.expert_data_group(rank).front();
  for (int k = 0; k < hidden; ++k) {
    const double sum = reference.gradient_sum(step, rank, k);
    const double got_sum = result.gradients[to_size(k)];
    checker.expect(got_sum == sum, [&] {
      return fmt::format("{} step {}: gradient {} of expert {} summed to {}, expected {}", layout, step, k, expert,
                         got_sum, sum);
    });
    const double parameter = Reference::parameter(sum, source);
    const double got_parameter = result.parameters[to_size(k)];
    checker.expect(got_parameter == parameter, [&] {
      return fmt::format("{} step {}: parameter {} of expert {} broadcast as {}, expected {} (from rank {})", layout,
                         step, k, expert, got_parameter, parameter, source);
    });
  }
}

std::string groups_text(const std::vector<std::vector<int>>& groups) {
  constexpr std::size_t kShown = 8;
  std::string text;
  for (std::size_t i = 0; i < std::min(groups.size(), kShown); ++i) {
    text += fmt::format("{}[{}]", i == 0 ? "" : " ", fmt::join(groups[i], ","));
  }
  if (groups.size() > kShown) text += fmt::format(" ... ({} groups)", groups.size());
  return text;
}

// ---------------------------------------------------------------------------------------

// Runs every layout over `world` (MPI or NCCL); `control` (MPI, host memory) combines the
// verdicts and timings. Returns the exit status.
int run_layouts(const Options& options, const pcx::Communicator& world, const pcx::MpiCommunicator& control,
                const Memory& memory) {
  const int rank = control.rank();
  const int world_size = control.size();
  const int tokens = *options.tokens;

  auto logger = std::make_shared<spdlog::logger>(kProgram, std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern(fmt::format("{}: rank {}: %l: %v", kProgram, rank));
  logger->set_level(spdlog::level::warn);
  pcx::ContextOptions context_options;
  context_options.logger = logger;

  if (rank == 0) {
    fmt::print("{}: {} ranks, {} backend ({} buffers), {} tokens x {} hidden (float32) per rank, {} steps per layout\n",
               kProgram, world_size, world.backend(), memory.device ? "device" : "host", tokens, options.hidden,
               options.steps);
  }

  Checker checker(rank);
  for (const pcx::ExpertOrder order : options.orders) {
    pcx::ParallelConfig config;
    config.world_size = world_size;
    config.expert_parallel_sizes = options.expert_parallel_sizes;
    config.expert_order = order;
    // One context per order holds the groups of every MoE layer size.
    const pcx::ParallelContext context(world, config, nullptr, context_options);

    for (const int ep : options.expert_parallel_sizes) {
      const Reference reference(world_size, ep, order, tokens, options.hidden);
      const std::string layout = fmt::format("ep {} {}", ep, pcx::to_string(order));
      check_groups(context, reference, layout, checker);

      MoeLayer layer(context, ep, memory, tokens, options.hidden);
      double seconds = 0;
      for (int step = 0; step < options.steps; ++step) {
        const bool corrupt = step == 0 && options.corrupt_rank == rank;
        const StepResult result = layer.step(step, corrupt);
        seconds += result.seconds;
        check_step(result, reference, rank, step, layout, checker);
      }
      control.all_reduce(std::span<double>(&seconds, 1), pcx::ReduceOp::max);

      if (rank == 0) {
        const std::int64_t dispatched = std::int64_t{world_size} * tokens;
        const std::int64_t remote = std::int64_t{world_size} * (tokens - tokens / ep);
        fmt::print("  ep {} {:<12}  expert groups {}\n", ep, pcx::to_string(order),
                   groups_text(reference.all_expert_groups()));
        fmt::print("  {:<17}  expert data groups {} (broadcast from group rank 0)\n", "",
                   groups_text(reference.all_expert_data_groups()));
        fmt::print(
            "  {:<17}  {} tokens dispatched and combined per step ({} to another rank, {:.1f} KiB each way), "
            "{:.3f} ms/step (slowest rank)\n",
            "", dispatched, remote,
            static_cast<double>(remote) * options.hidden * static_cast<double>(sizeof(float)) / 1024.0,
            seconds / options.steps * 1e3);
      }
    }
  }

  std::int64_t totals[] = {checker.checks(), checker.failures()};
  control.all_reduce(std::span<std::int64_t>(totals), pcx::ReduceOp::sum);
  if (totals[1] != 0) {
    if (rank == 0) {
      fmt::print(stderr, "{}: error: {} of {} checks failed (see the mismatches above)\n", kProgram, totals[1],
                 totals[0]);
    }
    return kMismatch;
  }
  if (rank == 0) {
    fmt::print("{}: {} expert parallel sizes x {} orders: all {} checks passed\n", kProgram,
               options.expert_parallel_sizes.size(), options.orders.size(), totals[0]);
  }
  return 0;
}

#if PCX_WITH_NCCL
// The NCCL world and its device, or an exit status when it cannot be had. Every rank
// takes the same branch: the outcome is agreed over MPI first.
int run_on_nccl(const Options& options, const pcx::MpiCommunicator& control) {
  const int rank = control.rank();
  if (!pcx::samples::every_rank_has_a_device(control, kProgram)) return pcx::samples::kSkipped;

  std::optional<pcx::NcclCommunicator> world;
  std::string error;
  try {
    world.emplace(pcx::NcclCommunicator::create_world(control));
  } catch (const pcx::Error& e) {
    error = e.what();
  }
  std::int32_t failed[] = {world ? 0 : 1};
  control.all_reduce(std::span<std::int32_t>(failed), pcx::ReduceOp::sum);
  if (failed[0] != 0) {
    if (!world) fmt::print(stderr, "{}: error on rank {}: cannot start NCCL: {}\n", kProgram, rank, error);
    return kMismatch;
  }
  return run_layouts(options, *world, control, Memory{world->device()});
}
#endif

int moe_dispatch(const std::vector<std::string>& args, const pcx::MpiCommunicator& world) {
  Options options = parse_options(args);
  if (options.help) {
    if (world.rank() == 0) std::cout << help();
    return 0;
  }
  complete_and_check(options, world.size());
#if PCX_WITH_NCCL
  if (options.backend == Backend::nccl) return run_on_nccl(options, world);
#endif
  return run_layouts(options, world, world, Memory{});
}

}  // namespace

int main(int argc, char** argv) { return pcx::samples::run_sample(argc, argv, kProgram, moe_dispatch); }
