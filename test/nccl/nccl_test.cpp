// The NCCL backend on real GPUs, under mpiexec with one rank per GPU. Where no CUDA
// device is visible, the whole module reports itself skipped (exit 77).
#define BOOST_TEST_MODULE nccl
#define BOOST_TEST_NO_MAIN
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <optional>

#include "pcx/error.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#include "pcx/parallel_context.hpp"

namespace {

using pcx::DataType;
using pcx::MpiCommunicator;
using pcx::NcclCommunicator;
using pcx::ReduceOp;

// Device memory holding a copy of a host vector.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    pcx::check_cuda(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<std::size_t>(count, 1) * sizeof(T)),
                    "cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    pcx::check_cuda(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data_); }
  [[nodiscard]] T* get() const { return data_; }
  [[nodiscard]] std::span<T> span() const { return {data_, count_}; }
  [[nodiscard]] std::vector<T> host() const {
    std::vector<T> out(count_);
    pcx::check_cuda(cudaMemcpy(out.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return out;
  }

 private:
  T* data_ = nullptr;
  std::size_t count_;
};

bool everyone(bool ok) {
  const MpiCommunicator world = MpiCommunicator::world();
  std::int32_t failed = ok ? 0 : 1;
  world.all_reduce(std::span<std::int32_t>(&failed, 1), ReduceOp::max);
  return failed == 0;
}

NcclCommunicator nccl_world() { return NcclCommunicator::create_world(MpiCommunicator::world()); }

}  // namespace

BOOST_AUTO_TEST_CASE(world_knows_its_size_rank_and_device) {
  const MpiCommunicator mpi = MpiCommunicator::world();
  const NcclCommunicator world = nccl_world();
  BOOST_TEST(world.size() == mpi.size());
  BOOST_TEST(world.rank() == mpi.rank());
  BOOST_TEST(world.owned());
  int device = -1;
  cudaGetDevice(&device);
  BOOST_TEST(world.device() == device);
}

BOOST_AUTO_TEST_CASE(every_collective_gives_the_expected_values) {
  const NcclCommunicator world = nccl_world();
  const int n = world.size();
  const int r = world.rank();
  const auto un = static_cast<std::size_t>(n);

  DeviceBuffer<float> values(std::vector<float>{static_cast<float>(r), 1.0F});
  world.all_reduce(values.span(), ReduceOp::sum);
  BOOST_TEST(values.host() == std::vector<float>({static_cast<float>(n * (n - 1) / 2), static_cast<float>(n)}));

  DeviceBuffer<std::int32_t> largest(std::vector<std::int32_t>{r});
  world.all_reduce(largest.span(), ReduceOp::max);
  BOOST_TEST(largest.host()[0] == n - 1);

  std::vector<std::int64_t> blocks(un);
  for (std::size_t j = 0; j < un; ++j) blocks[j] = 100 * r + static_cast<std::int64_t>(j);
  const DeviceBuffer<std::int64_t> send(blocks);
  const DeviceBuffer<std::int64_t> recv(un);
  world.all_to_all(std::span<const std::int64_t>(send.span()), recv.span());
  const std::vector<std::int64_t> got = recv.host();
  for (std::size_t i = 0; i < un; ++i) BOOST_TEST(got[i] == 100 * static_cast<std::int64_t>(i) + r);

  const DeviceBuffer<double> mine(std::vector<double>{r + 0.5});
  const DeviceBuffer<double> gathered(un);
  world.all_gather(std::span<const double>(mine.span()), gathered.span());
  const std::vector<double> all = gathered.host();
  for (std::size_t i = 0; i < un; ++i) BOOST_TEST(all[i] == static_cast<double>(i) + 0.5);

  const DeviceBuffer<std::int32_t> ones(std::vector<std::int32_t>(un, 1));
  const DeviceBuffer<std::int32_t> block(1);
  world.reduce_scatter(std::span<const std::int32_t>(ones.span()), block.span(), ReduceOp::sum);
  BOOST_TEST(block.host()[0] == n);

  DeviceBuffer<std::uint8_t> message(std::vector<std::uint8_t>(4, r == 0 ? 42 : 0));
  world.broadcast(message.span(), 0);
  BOOST_TEST(message.host() == std::vector<std::uint8_t>(4, 42));
  world.barrier();

  // The same on a caller's stream.
  cudaStream_t stream = nullptr;
  pcx::check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
  DeviceBuffer<float> on_stream(std::vector<float>{1.0F});
  world.enqueue_all_reduce(on_stream.get(), on_stream.get(), 1, DataType::float32, ReduceOp::sum, stream);
  pcx::check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  BOOST_TEST(on_stream.host()[0] == static_cast<float>(n));
  cudaStreamDestroy(stream);
}

BOOST_AUTO_TEST_CASE(split_makes_children_and_nocolour_makes_none) {
  const NcclCommunicator world = nccl_world();
  const int r = world.rank();
  std::vector<int> members;
  for (int i = r % 2; i < world.size(); i += 2) members.push_back(i);
  const auto child = world.split(r % 2, r / 2, static_cast<int>(members.size()));
  BOOST_REQUIRE(child != nullptr);
  BOOST_TEST(child->size() == static_cast<int>(members.size()));
  BOOST_TEST(child->rank() == r / 2);
  DeviceBuffer<std::int32_t> value(std::vector<std::int32_t>{r});
  child->all_reduce(value.span(), ReduceOp::sum);
  BOOST_TEST(value.host()[0] == std::accumulate(members.begin(), members.end(), 0));

  const auto none = world.split(pcx::Communicator::kNoColour, 0, 0);
  BOOST_TEST(none == nullptr);
  BOOST_TEST(everyone(true));
}

BOOST_AUTO_TEST_CASE(an_initialization_whose_peers_never_come_times_out) {
  // A communicator of two ranks of which only this one ever arrives.
  if (MpiCommunicator::world().rank() == 0) {
    ncclUniqueId id{};
    pcx::check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    int device = 0;
    cudaGetDevice(&device);
    pcx::CommOptions options;
    options.timeout = std::chrono::milliseconds(500);
    const auto start = std::chrono::steady_clock::now();
    BOOST_CHECK_THROW(NcclCommunicator::init_rank(id, 2, 0, device, options), pcx::Timeout);
    BOOST_TEST((std::chrono::steady_clock::now() - start < std::chrono::seconds(10)));
  }
  BOOST_TEST(everyone(true));
}

BOOST_AUTO_TEST_CASE(an_aborted_communicator_refuses_work_and_is_released) {
  NcclCommunicator world = nccl_world();
  world.abort();
  BOOST_TEST(world.failed());
  DeviceBuffer<float> value(1);
  BOOST_CHECK_THROW(world.all_reduce(value.span(), ReduceOp::sum), pcx::CommError);
  BOOST_CHECK_THROW((void)world.dup(), pcx::CommError);
}

BOOST_AUTO_TEST_CASE(a_parallel_context_runs_on_nccl_unchanged) {
  const NcclCommunicator world = nccl_world();
  const int n = world.size();
  pcx::ParallelConfig config;
  config.expert_parallel_sizes = {n};
  config.zero_hpz_size = n;
  config.ranks_per_node = n;
  const pcx::ParallelContext context(world, config);
  bool ok = true;
  for (const pcx::GroupId& id : context.group_ids()) {
    const pcx::ProcessGroup& group = context.group(id);
    DeviceBuffer<std::int32_t> rank(std::vector<std::int32_t>{world.rank()});
    const DeviceBuffer<std::int32_t> members(static_cast<std::size_t>(group.size()));
    group.communicator().all_gather(std::span<const std::int32_t>(rank.span()), members.span());
    const std::vector<std::int32_t> seen = members.host();
    ok = ok && std::vector<int>(seen.begin(), seen.end()) == group.ranks();
  }
  BOOST_TEST(everyone(ok));
}

int main(int argc, char* argv[]) {
  const pcx::MpiEnvironment mpi(&argc, &argv);
  int devices = 0;
  const cudaError_t found = cudaGetDeviceCount(&devices);
  const bool usable = found == cudaSuccess && devices > 0;
  if (!everyone(usable)) {
    if (MpiCommunicator::world().rank() == 0) {
      std::printf("skipped: no usable CUDA device (%s)\n",
                  found == cudaSuccess ? "zero devices" : cudaGetErrorString(found));
    }
    return 77;
  }
  return boost::unit_test::unit_test_main([] { return true; }, argc, argv);
}
