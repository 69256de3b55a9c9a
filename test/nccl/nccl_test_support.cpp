#include "nccl_test_support.hpp"

#include <dlfcn.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <utility>

namespace nccltest {

// ---------------------------------------------------------------------------------------
// Ranks, devices and the emulator

bool everyone(bool ok) {
  const MpiCommunicator world = MpiCommunicator::world();
  std::int32_t failed = ok ? 0 : 1;
  world.all_reduce(std::span<std::int32_t>(&failed, 1), ReduceOp::max);
  return failed == 0;
}

int world_rank() { return MpiCommunicator::world().rank(); }

// The rank's index on its node, as create_world() computes it.
int node_local_rank() {
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank(), MPI_INFO_NULL, &node);
  return MpiCommunicator::adopt(node).rank();
}

int device_count() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  return devices;
}

int current_device() {
  int device = -1;
  cudaGetDevice(&device);
  return device;
}

Counter emulator_counter(const char* name) { return reinterpret_cast<Counter>(dlsym(RTLD_DEFAULT, name)); }
bool on_emulator() { return emulator_counter("pcxemu_live_communicators") != nullptr; }
int live_communicators() {
  const Counter live = emulator_counter("pcxemu_live_communicators");
  return live ? live() : 0;
}

void Checks::expect(bool ok, const std::string& what) {
  if (ok) return;
  ok_ = false;
  std::fprintf(stderr, "rank %d: %s\n", world_rank(), what.c_str());
}

CallerDevice::CallerDevice() : device_((node_local_rank() + 1) % std::max(device_count(), 1)) {
  cudaSetDevice(device_);
}

void CallerDevice::check(Checks& checks, const std::string& after) const {
  const int now = current_device();
  checks.expect(now == device_,
                fmt::format("after {} the current device is {}, not the caller's {}", after, now, device_));
}

// ---------------------------------------------------------------------------------------
// Settings

pcx::CommOptions non_blocking(std::string name) {
  pcx::CommOptions options;
  options.name = std::move(name);
  options.timeout = std::chrono::seconds(30);
  return options;
}

pcx::CommOptions blocking(std::string name) {
  pcx::CommOptions options;
  options.name = std::move(name);
  options.timeout = std::chrono::milliseconds(0);
  return options;
}

pcx::CommOptions short_deadline(std::string name) {
  pcx::CommOptions options;
  options.name = std::move(name);
  options.timeout = std::chrono::seconds(1);
  return options;
}

NcclCommunicator nccl_world(const pcx::CommOptions& options) {
  pcx::NcclWorldOptions world;
  world.communicator = options;
  return NcclCommunicator::create_world(MpiCommunicator::world(), world);
}

const pcx::CommOptions kSettings[2] = {non_blocking(), blocking()};

std::string settings_name(const pcx::CommOptions& options) {
  return options.timeout.count() > 0 ? "non-blocking" : "blocking";
}

// ---------------------------------------------------------------------------------------
// Every collective against a reference computed on the host

void check_collectives(const NcclCommunicator& comm, const CallerDevice& caller, Checks& checks,
                       const std::string& where) {
  const int n = comm.size();
  const int r = comm.rank();
  const auto un = static_cast<std::size_t>(n);
  const int device = comm.device();
  for (const bool on_host : {false, true}) {
    const std::string memory = fmt::format("{} ({} memory)", where, on_host ? "host" : "device");
    // Runs one collective on buffers of this memory: `send` and `recv` start as given,
    // and the result is `recv` read back.
    const auto reduce = [&](std::vector<float> values, ReduceOp op) {
      if (on_host) {
        comm.all_reduce(std::span<float>(values), op);
        return values;
      }
      const DeviceBuffer<float> buffer(device, values);
      comm.all_reduce(buffer.span(), op);
      return buffer.host();
    };
    checks.run(memory + " all_reduce", [&] {
      const int total = n * (n - 1) / 2;
      expect_equal(checks, reduce({static_cast<float>(r), 1.0F}, ReduceOp::sum),
                   {static_cast<float>(total), static_cast<float>(n)}, memory + ": all_reduce sum");
      expect_equal(checks, reduce({static_cast<float>(r), -static_cast<float>(r)}, ReduceOp::max),
                   {static_cast<float>(n - 1), 0.0F}, memory + ": all_reduce max");
    });
    caller.check(checks, memory + " all_reduce");

    checks.run(memory + " all_to_all", [&] {
      std::vector<std::int64_t> blocks(2 * un);
      std::vector<std::int64_t> want(2 * un);
      for (std::size_t j = 0; j < 2 * un; ++j) {
        blocks[j] = 1000 * r + static_cast<std::int64_t>(j);  // block j / 2 goes to rank j / 2
        want[j] =
            1000 * static_cast<std::int64_t>(j / 2) + 2 * r + static_cast<std::int64_t>(j % 2);  // from rank j / 2
      }
      std::vector<std::int64_t> got(2 * un, -1);
      if (on_host) {
        comm.all_to_all(std::span<const std::int64_t>(blocks), std::span<std::int64_t>(got));
      } else {
        const DeviceBuffer<std::int64_t> send(device, blocks);
        const DeviceBuffer<std::int64_t> recv(device, 2 * un);
        comm.all_to_all(std::span<const std::int64_t>(send.span()), recv.span());
        got = recv.host();
      }
      expect_equal(checks, got, want, memory + ": all_to_all");
    });
    caller.check(checks, memory + " all_to_all");

    checks.run(memory + " all_gather", [&] {
      const std::vector<double> mine{r + 0.5, -r - 0.25};
      std::vector<double> want;
      for (int i = 0; i < n; ++i) want.insert(want.end(), {i + 0.5, -i - 0.25});
      std::vector<double> got(2 * un);
      if (on_host) {
        comm.all_gather(std::span<const double>(mine), std::span<double>(got));
      } else {
        const DeviceBuffer<double> send(device, mine);
        const DeviceBuffer<double> recv(device, 2 * un);
        comm.all_gather(std::span<const double>(send.span()), recv.span());
        got = recv.host();
      }
      expect_equal(checks, got, want, memory + ": all_gather");
    });
    caller.check(checks, memory + " all_gather");

    checks.run(memory + " reduce_scatter", [&] {
      for (const ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
        // Element i of rank r's input is r * 100 + i: block r of the sum is sum over ranks.
        std::vector<std::int32_t> input(2 * un);
        for (std::size_t i = 0; i < input.size(); ++i) input[i] = 100 * r + static_cast<std::int32_t>(i);
        std::vector<std::int32_t> want(2);
        for (std::size_t k = 0; k < 2; ++k) {
          const auto i = static_cast<std::int32_t>(2 * static_cast<std::size_t>(r) + k);
          want[k] = op == ReduceOp::sum ? 100 * (n * (n - 1) / 2) + n * i : 100 * (n - 1) + i;
        }
        std::vector<std::int32_t> got(2);
        if (on_host) {
          comm.reduce_scatter(std::span<const std::int32_t>(input), std::span<std::int32_t>(got), op);
        } else {
          const DeviceBuffer<std::int32_t> send(device, input);
          const DeviceBuffer<std::int32_t> recv(device, 2);
          comm.reduce_scatter(std::span<const std::int32_t>(send.span()), recv.span(), op);
          got = recv.host();
        }
        expect_equal(checks, got, want,
                     fmt::format("{}: reduce_scatter {}", memory, op == ReduceOp::sum ? "sum" : "max"));
      }
    });
    caller.check(checks, memory + " reduce_scatter");

    checks.run(memory + " broadcast", [&] {
      const int root = n - 1;
      std::vector<std::uint8_t> message(5, r == root ? 42 : 7);
      if (on_host) {
        comm.broadcast(std::span<std::uint8_t>(message), root);
      } else {
        const DeviceBuffer<std::uint8_t> buffer(device, message);
        comm.broadcast(buffer.span(), root);
        message = buffer.host();
      }
      expect_equal(checks, message, std::vector<std::uint8_t>(5, 42), memory + ": broadcast");
    });
    caller.check(checks, memory + " broadcast");
  }

  checks.run(where + " barrier", [&] { comm.barrier(); });
  caller.check(checks, where + " barrier");

  // The same on a caller's stream, device memory only.
  checks.run(where + " enqueue_all_reduce", [&] {
    const DeviceBuffer<float> value(device, std::vector<float>{1.0F});
    cudaStream_t stream = nullptr;
    on_device(device, [&] { pcx::check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate"); });
    comm.enqueue_all_reduce(value.get(), value.get(), 1, DataType::float32, ReduceOp::sum, stream);
    caller.check(checks, where + " enqueue_all_reduce");
    pcx::check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    cudaStreamDestroy(stream);
    expect_equal(checks, value.host(), {static_cast<float>(n)}, where + ": enqueue_all_reduce");
  });
}

}  // namespace nccltest
