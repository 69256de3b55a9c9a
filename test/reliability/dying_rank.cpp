// A rank that dies in the middle of ParallelContext construction. Run under mpiexec by
// dying_rank.sh, which checks that the job ends with a non-zero status, in bounded time.
//
// Every rank builds a context over a Dying communicator: a decorator around
// pcx::MpiCommunicator that forwards everything, and on the chosen rank calls
// std::_Exit(code) (no MPI_Finalize, no destructors, no flush of MPI state) at the
// chosen split. Children made by dup and split are wrapped too, so the splits the
// context makes on its world clone are counted.
//
//   reliability_dying_rank [--rank R] [--split K] [--code C] [--tag T]
//     R: the rank that dies (default 1); K: it dies when it enters its K-th split,
//     counting from 1 over the whole construction (default 2); C: its exit code
//     (default 3); T: ignored, lets the script find this job's processes.
// Exits 0 only if construction finished everywhere (then no rank died: a failure
// for dying_rank.sh), 2 for bad arguments.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"

namespace {

// What all communicators of one process's decorator tree share.
struct Plan {
  int dying_rank = 1;
  int dying_split = 2;
  int exit_code = 3;
  int world_rank = 0;
  int splits = 0;  // splits entered so far by this process
};

class Dying final : public pcx::Communicator {
 public:
  Dying(std::unique_ptr<pcx::Communicator> inner, std::shared_ptr<Plan> plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {}

  [[nodiscard]] int size() const noexcept override { return inner_->size(); }
  [[nodiscard]] int rank() const noexcept override { return inner_->rank(); }
  [[nodiscard]] std::string_view backend() const noexcept override { return "dying"; }
  [[nodiscard]] std::unique_ptr<pcx::Communicator> self() const override { return inner_->self(); }

 private:
  [[nodiscard]] std::unique_ptr<pcx::Communicator> wrap(std::unique_ptr<pcx::Communicator> child) const {
    if (!child) return nullptr;
    return std::make_unique<Dying>(std::move(child), plan_);
  }

  [[nodiscard]] std::unique_ptr<pcx::Communicator> do_split(int colour, int key, int size,
                                                            const pcx::CommOptions& options) const override {
    const int split = ++plan_->splits;
    if (plan_->world_rank == plan_->dying_rank && split == plan_->dying_split) {
      // The wall-clock time lets dying_rank.sh tell how long the job outlived this rank.
      const auto now =
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch());
      std::fprintf(stderr, "dying_rank: rank %d exits with code %d on entering split %d at %lld ms\n",
                   plan_->world_rank, plan_->exit_code, split, static_cast<long long>(now.count()));
      std::fflush(stderr);
      std::_Exit(plan_->exit_code);
    }
    return wrap(size == 0 ? inner_->split(colour, key, options) : inner_->split_checked(colour, key, size, options));
  }
  [[nodiscard]] std::unique_ptr<pcx::Communicator> do_dup(const pcx::CommOptions& options) const override {
    return wrap(inner_->dup(options));
  }
  void do_all_reduce(const void* send, void* recv, std::size_t count, pcx::DataType type,
                     pcx::ReduceOp op) const override {
    inner_->all_reduce(send, recv, count, type, op);
  }
  void do_all_to_all(const void* send, void* recv, std::size_t count, pcx::DataType type) const override {
    inner_->all_to_all(send, recv, count, type);
  }
  void do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts, std::span<const std::size_t>,
                       void* recv, std::span<const std::size_t> recv_counts, std::span<const std::size_t>,
                       pcx::DataType type) const override {
    inner_->all_to_all_v(send, send_counts, recv, recv_counts, type);
  }
  void do_all_gather(const void* send, void* recv, std::size_t count, pcx::DataType type) const override {
    inner_->all_gather(send, recv, count, type);
  }
  void do_reduce_scatter(const void* send, void* recv, std::size_t count, pcx::DataType type,
                         pcx::ReduceOp op) const override {
    inner_->reduce_scatter(send, recv, count, type, op);
  }
  void do_broadcast(void* buffer, std::size_t count, pcx::DataType type, int root) const override {
    inner_->broadcast(buffer, count, type, root);
  }
  void do_send(const void* buffer, std::size_t count, pcx::DataType type, int peer) const override {
    inner_->send(buffer, count, type, peer);
  }
  void do_recv(void* buffer, std::size_t count, pcx::DataType type, int peer) const override {
    inner_->recv(buffer, count, type, peer);
  }
  void do_barrier() const override { inner_->barrier(); }

  std::unique_ptr<pcx::Communicator> inner_;
  std::shared_ptr<Plan> plan_;
};

int parse(std::string_view flag, const char* text) {
  try {
    return std::stoi(text);
  } catch (const std::exception&) {
    throw pcx::ConfigError(fmt::format("{}: '{}' is not a whole number", flag, text));
  }
}

}  // namespace

int main(int argc, char** argv) {
  auto plan = std::make_shared<Plan>();
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view flag = argv[i];
      if (i + 1 >= argc) throw pcx::ConfigError(fmt::format("{} needs a value", flag));
      const char* value = argv[++i];
      if (flag == "--rank")
        plan->dying_rank = parse(flag, value);
      else if (flag == "--split")
        plan->dying_split = parse(flag, value);
      else if (flag == "--code")
        plan->exit_code = parse(flag, value);
      else if (flag != "--tag")
        throw pcx::ConfigError(fmt::format("unknown flag '{}'", flag));
    }
  } catch (const pcx::Error& e) {
    std::fprintf(stderr, "dying_rank: %s\n", e.what());
    return 2;
  }

  const pcx::MpiEnvironment environment(&argc, &argv);
  const pcx::MpiCommunicator world = pcx::MpiCommunicator::world();
  plan->world_rank = world.rank();
  const int n = world.size();
  const Dying dying(std::make_unique<pcx::MpiCommunicator>(pcx::MpiCommunicator::world()), plan);

  // Plenty of splits on every world size: one per expert kind of each ep size (every
  // divisor of the world) that is not a group of one, hpZ, and the all-to-all kinds, each
  // dedicated so that kinds with the same groups do not share one.
  pcx::ParallelConfig config;
  config.world_size = n;
  for (int ep = 1; ep <= n; ++ep) {
    if (n % ep == 0) config.expert_parallel_sizes.push_back(ep);
  }
  config.zero_hpz_size = n;
  config.ranks_per_node = n % 2 == 0 ? n / 2 : n;
  pcx::ContextOptions options;
  options.check_nodes = false;  // nodes of n / 2 simulated on one host
  options.dedicated = {pcx::GroupKind::expert_parallel, pcx::GroupKind::expert_data_parallel,
                       pcx::GroupKind::zero_param_intra, pcx::GroupKind::all_to_all_local,
                       pcx::GroupKind::all_to_all_global};
  try {
    const pcx::ParallelContext context(dying, config, nullptr, options);
    world.barrier();
    if (world.rank() == 0) {
      std::printf("dying_rank: every rank built its context (%d splits on rank 0); no rank died\n", plan->splits);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dying_rank: rank %d: %s\n", world.rank(), e.what());
    return 1;
  }
  return 0;
}
