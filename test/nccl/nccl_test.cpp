// The NCCL backend under mpiexec, one device per rank: on real GPUs, and on the host
// emulator of CUDA and NCCL (LD_PRELOAD=libpcx_emulator.so, 8 emulated devices). Where no
// CUDA device is visible, the whole module reports itself skipped (exit 77).
//
// Every case combines the verdicts of all ranks before it requires anything, so that all
// ranks fail together. Cases that inject faults (PCX_EMU_FAULT, see
// test/emulation/pcx_emulator.h) need the emulator and are skipped, saying so, elsewhere.
#define BOOST_TEST_MODULE nccl
#define BOOST_TEST_NO_MAIN
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#include "pcx/parallel_context.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using pcx::DataType;
using pcx::MpiCommunicator;
using pcx::NcclCommunicator;
using pcx::ReduceOp;

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

// The emulator's queries, where the program runs on it (dlsym finds them only there).
using Counter = int (*)();
Counter emulator_counter(const char* name) { return reinterpret_cast<Counter>(dlsym(RTLD_DEFAULT, name)); }
bool on_emulator() { return emulator_counter("pcxemu_live_communicators") != nullptr; }
int live_communicators() {
  const Counter live = emulator_counter("pcxemu_live_communicators");
  return live ? live() : 0;
}

// Boost.Test precondition of the cases that inject faults.
struct OnEmulator {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    boost::test_tools::assertion_result result(on_emulator());
    result.message() << "fault injection needs the pcx emulator (LD_PRELOAD=libpcx_emulator.so)";
    return result;
  }
};

// PCX_EMU_FAULT on this rank for one call: the emulator reads it when a communicator is
// created, so it is set just before and removed just after.
template <class Call>
void with_fault(const std::string& fault, Call&& call) {
  setenv("PCX_EMU_FAULT", fault.c_str(), 1);
  try {
    call();
  } catch (...) {
    unsetenv("PCX_EMU_FAULT");
    throw;
  }
  unsetenv("PCX_EMU_FAULT");
}

// One rank's findings: every failed expectation is printed with the rank, and the case
// requires that no rank found any.
class Checks {
 public:
  void expect(bool ok, const std::string& what) {
    if (ok) return;
    ok_ = false;
    std::fprintf(stderr, "rank %d: %s\n", world_rank(), what.c_str());
  }
  // Runs `call`; an exception is a failed expectation (the rank goes on, so that every
  // rank reaches the same MPI collectives; NCCL peers time out instead of hanging).
  template <class Call>
  void run(const std::string& what, Call&& call) {
    try {
      call();
    } catch (const std::exception& e) {
      expect(false, fmt::format("{} threw: {}", what, e.what()));
    }
  }
  [[nodiscard]] bool ok() const noexcept { return ok_; }

 private:
  bool ok_ = true;
};

// The caller's device during a case: another device than the rank's own where there is
// one, so that a backend that leaves its device current is caught. Collective over MPI.
class CallerDevice {
 public:
  CallerDevice() : device_((node_local_rank() + 1) % std::max(device_count(), 1)) { cudaSetDevice(device_); }
  void check(Checks& checks, const std::string& after) const {
    const int now = current_device();
    checks.expect(now == device_,
                  fmt::format("after {} the current device is {}, not the caller's {}", after, now, device_));
  }

 private:
  int device_;
};

// Runs `call` with `device` current, then makes the caller's device current again.
template <class Call>
auto on_device(int device, Call&& call) {
  const int previous = current_device();
  pcx::check_cuda(cudaSetDevice(device), "cudaSetDevice");
  struct Restore {
    int device;
    ~Restore() { cudaSetDevice(device); }
  } restore{previous};
  return call();
}

// Device memory of one device holding a copy of a host vector.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer(int device, std::size_t count) : device_(device), count_(count) {
    on_device(device_, [&] {
      pcx::check_cuda(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<std::size_t>(count, 1) * sizeof(T)),
                      "cudaMalloc");
    });
  }
  DeviceBuffer(int device, const std::vector<T>& host) : DeviceBuffer(device, host.size()) {
    pcx::check_cuda(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyDefault), "cudaMemcpy");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data_); }
  [[nodiscard]] T* get() const { return data_; }
  [[nodiscard]] std::span<T> span() const { return {data_, count_}; }
  [[nodiscard]] std::vector<T> host() const {
    std::vector<T> out(count_);
    pcx::check_cuda(cudaMemcpy(out.data(), data_, count_ * sizeof(T), cudaMemcpyDefault), "cudaMemcpy");
    return out;
  }

 private:
  int device_;
  std::size_t count_;
  T* data_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// Settings

// Non-blocking with a deadline short enough that a broken test fails well within CTest's.
pcx::CommOptions non_blocking(std::string name = "pcx-test:world") {
  pcx::CommOptions options;
  options.name = std::move(name);
  options.timeout = std::chrono::seconds(30);
  return options;
}

// Blocking, no deadline (timeout 0).
pcx::CommOptions blocking(std::string name = "pcx-test:world") {
  pcx::CommOptions options;
  options.name = std::move(name);
  options.timeout = std::chrono::milliseconds(0);
  return options;
}

// A short deadline, for the cases that wait for it.
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

// ---------------------------------------------------------------------------------------
// Every collective against a reference computed on the host

template <class T>
std::string text(const std::vector<T>& values) {
  std::string out;
  for (const T& v : values) out += fmt::format("{}{}", out.empty() ? "" : ",", v);
  return "[" + out + "]";
}

template <class T>
void expect_equal(Checks& checks, const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  checks.expect(got == want, fmt::format("{}: got {}, expected {}", what, text(got), text(want)));
}

// The collectives of the Communicator interface, on device memory and on host memory
// (staged), with the caller's device checked after each.
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

const pcx::CommOptions kSettings[] = {non_blocking(), blocking()};

std::string settings_name(const pcx::CommOptions& options) {
  return options.timeout.count() > 0 ? "non-blocking" : "blocking";
}

}  // namespace

// ---------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(world_knows_its_size_rank_and_device) {
  for (const pcx::CommOptions& settings : kSettings) {
    const CallerDevice caller;
    Checks checks;
    const MpiCommunicator mpi = MpiCommunicator::world();
    checks.run("create_world", [&] {
      const NcclCommunicator world = nccl_world(settings);
      caller.check(checks, "create_world");
      checks.expect(
          world.size() == mpi.size() && world.rank() == mpi.rank(),
          fmt::format("world rank {} of {}, expected {} of {}", world.rank(), world.size(), mpi.rank(), mpi.size()));
      checks.expect(world.owned() && !world.failed() && world.native() != nullptr, "world not owned, or failed");
      // The node-local rank, or device 0 where each rank sees one device of its own.
      const int expected = device_count() == 1 ? 0 : node_local_rank();
      checks.expect(world.device() == expected,
                    fmt::format("device {}, expected {} (node-local rank {} of {} visible devices)", world.device(),
                                expected, node_local_rank(), device_count()));
      checks.expect(world.options() == settings, "the world does not keep its options");
    });
    caller.check(checks, "the world's destruction");
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

BOOST_AUTO_TEST_CASE(every_collective_matches_a_host_reference) {
  for (const pcx::CommOptions& settings : kSettings) {
    const CallerDevice caller;
    Checks checks;
    checks.run("create_world", [&] {
      const NcclCommunicator world = nccl_world(settings);
      check_collectives(world, caller, checks, settings_name(settings) + " world");
    });
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

// Every collective for one element type, on device memory, against values computed here:
// rank r contributes r + 1 + i at position i (exact in every type for these sizes).
template <class T>
void check_type(const NcclCommunicator& comm, Checks& checks) {
  const int n = comm.size();
  const int r = comm.rank();
  const auto un = static_cast<std::size_t>(n);
  const int device = comm.device();
  const std::string type(pcx::to_string(pcx::data_type_of<T>()));
  const auto value = [](int rank, std::size_t i) { return static_cast<T>(rank + 1 + static_cast<int>(i)); };
  std::vector<T> mine(2 * un);
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = value(r, i);

  for (const ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
    std::vector<T> want(mine.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      int total = 0;
      for (int q = 0; q < n; ++q) total = op == ReduceOp::sum ? total + q + 1 + static_cast<int>(i) : q + 1 + static_cast<int>(i);
      want[i] = static_cast<T>(total);
    }
    DeviceBuffer<T> buffer(device, mine);
    comm.all_reduce(buffer.span(), op);
    expect_equal(checks, buffer.host(), want, fmt::format("{} all_reduce {}", type, op == ReduceOp::sum ? "sum" : "max"));

    const DeviceBuffer<T> send(device, mine);
    const DeviceBuffer<T> block(device, 2);
    comm.reduce_scatter(std::span<const T>(send.span()), block.span(), op);
    expect_equal(checks, block.host(), {want[2 * static_cast<std::size_t>(r)], want[2 * static_cast<std::size_t>(r) + 1]},
                 fmt::format("{} reduce_scatter", type));
  }
  std::vector<T> gathered;
  for (int q = 0; q < n; ++q) gathered.insert(gathered.end(), {value(q, 0), value(q, 1)});
  const DeviceBuffer<T> pair(device, std::vector<T>{value(r, 0), value(r, 1)});
  const DeviceBuffer<T> all(device, 2 * un);
  comm.all_gather(std::span<const T>(pair.span()), all.span());
  expect_equal(checks, all.host(), gathered, fmt::format("{} all_gather", type));

  std::vector<T> exchanged(2 * un);  // block q comes from rank q, which sent its block r
  for (std::size_t q = 0; q < un; ++q) {
    exchanged[2 * q] = value(static_cast<int>(q), 2 * static_cast<std::size_t>(r));
    exchanged[2 * q + 1] = value(static_cast<int>(q), 2 * static_cast<std::size_t>(r) + 1);
  }
  const DeviceBuffer<T> out(device, mine);
  const DeviceBuffer<T> in(device, 2 * un);
  comm.all_to_all(std::span<const T>(out.span()), in.span());
  expect_equal(checks, in.host(), exchanged, fmt::format("{} all_to_all", type));

  DeviceBuffer<T> message(device, mine);
  comm.broadcast(message.span(), n - 1);
  std::vector<T> from_last(mine.size());
  for (std::size_t i = 0; i < from_last.size(); ++i) from_last[i] = value(n - 1, i);
  expect_equal(checks, message.host(), from_last, fmt::format("{} broadcast", type));
}

BOOST_AUTO_TEST_CASE(every_collective_of_every_data_type_matches_a_host_reference) {
  const CallerDevice caller;
  Checks checks;
  checks.run("create_world", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    check_type<std::int8_t>(world, checks);
    check_type<std::uint8_t>(world, checks);
    check_type<std::int32_t>(world, checks);
    check_type<std::uint32_t>(world, checks);
    check_type<std::int64_t>(world, checks);
    check_type<std::uint64_t>(world, checks);
    check_type<float>(world, checks);
    check_type<double>(world, checks);
  });
  caller.check(checks, "the collectives of every type");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(moves_keep_one_handle) {
  const CallerDevice caller;
  Checks checks;
  checks.run("moves", [&] {
    NcclCommunicator first = nccl_world(non_blocking());
    const ncclComm_t handle = first.native();
    NcclCommunicator second = std::move(first);
    checks.expect(second.native() == handle && second.owned(), "the move did not take the handle");
    checks.expect(first.native() == nullptr && !first.owned(), "the moved-from object kept the handle");  // NOLINT
    checks.expect(first.device() == -1, "a moved-from object has no device");                             // NOLINT
    NcclCommunicator third = nccl_world(non_blocking());
    third = std::move(second);  // finalizes and destroys third's own world first
    checks.expect(third.native() == handle, "the move assignment did not take the handle");
    std::int32_t value = 1;
    third.all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
    checks.expect(value == third.size(), "the moved communicator does not work");
  });
  caller.check(checks, "moves");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(splits_make_children_with_their_own_options_and_nocolour_makes_none) {
  for (const pcx::CommOptions& settings : kSettings) {
    const CallerDevice caller;
    Checks checks;
    const int live_before = live_communicators();
    checks.run("splits", [&] {
      const NcclCommunicator world = nccl_world(settings);
      const int n = world.size();
      const int r = world.rank();

      // Even and odd ranks, with options of their own.
      pcx::CommOptions parity_options = settings;
      parity_options.name = fmt::format("pcx-test:parity{}", r % 2);
      if (parity_options.timeout.count() > 0) parity_options.timeout = std::chrono::seconds(20);
      std::vector<int> members;
      for (int i = r % 2; i < n; i += 2) members.push_back(i);
      const auto parity = world.split(r % 2, r / 2, static_cast<int>(members.size()), parity_options);
      caller.check(checks, "split");
      checks.expect(parity != nullptr && parity->size() == static_cast<int>(members.size()) && parity->rank() == r / 2,
                    "wrong parity child");
      if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(parity.get())) {
        checks.expect(nccl->options() == parity_options, "the child does not keep its own options");
        checks.expect(nccl->device() == world.device(), "the child is on another device");
        checks.expect(world.options() == settings, "the parent's options changed");
      } else {
        checks.expect(false, "the child is not an NCCL communicator");
      }
      if (parity) {
        std::int32_t value = r;
        parity->all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
        checks.expect(value == std::accumulate(members.begin(), members.end(), 0), "child all_reduce");
      }

      // Rank 0 joins no child (NCCL_SPLIT_NOCOLOR); the others form one. The parent is
      // usable right after: the split is complete on it.
      const bool joins = r != 0;
      const auto rest = world.split(joins ? 0 : pcx::Communicator::kNoColour, joins ? r - 1 : 0, n - 1);
      caller.check(checks, "split with NCCL_SPLIT_NOCOLOR");
      checks.expect((rest != nullptr) == joins, fmt::format("rank {} {} a child", r, rest ? "got" : "did not get"));
      std::int32_t everyone_value = 1;
      world.all_reduce(std::span<std::int32_t>(&everyone_value, 1), ReduceOp::sum);
      checks.expect(everyone_value == n, "the parent after a NOCOLOR split");
      if (rest) {
        std::int32_t value = 1;
        rest->all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
        checks.expect(value == n - 1, "the child of the others");
      }

      const auto copy = world.dup(settings);
      caller.check(checks, "dup");
      checks.expect(copy && copy->size() == n && copy->rank() == r, "dup");
      if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(copy.get()))
        check_collectives(*nccl, caller, checks, "dup");
    });
    caller.check(checks, "destruction of the children");
    checks.expect(live_communicators() == live_before,
                  fmt::format("{} live communicators, {} before", live_communicators(), live_before));
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

BOOST_AUTO_TEST_CASE(a_parallel_context_runs_on_nccl) {
  // The default settings (non-blocking, 5 minutes) and blocking ones.
  for (const pcx::CommOptions& settings : {pcx::CommOptions{}, blocking("")}) {
    const CallerDevice caller;
    Checks checks;
    checks.run("context", [&] {
      const NcclCommunicator world = nccl_world(settings);
      const int n = world.size();
      pcx::ParallelConfig config;
      config.world_size = n;
      config.expert_parallel_sizes = {n};
      config.zero_hpz_size = n;
      config.ranks_per_node = n;
      pcx::ContextOptions options;
      options.communicators = settings;  // no name: the context names each kind
      const pcx::ParallelContext context(world, config, nullptr, options);
      caller.check(checks, "the context's construction");
      for (const pcx::GroupId& id : context.group_ids()) {
        const pcx::ProcessGroup& group = context.group(id);
        std::int32_t mine = world.rank();
        std::vector<std::int32_t> seen(static_cast<std::size_t>(group.size()));
        group.communicator().all_gather(std::span<const std::int32_t>(&mine, 1), std::span<std::int32_t>(seen));
        checks.expect(std::vector<int>(seen.begin(), seen.end()) == group.ranks(),
                      fmt::format("{} group: all_gather gave {}", id.name(), text(seen)));
        if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(&group.communicator())) {
          checks.expect(nccl->options().name == "pcx:" + id.name() && nccl->options().timeout == settings.timeout,
                        fmt::format("{} group is named \"{}\"", id.name(), nccl->options().name));
        }
      }
      caller.check(checks, "the context's collectives");
    });
    caller.check(checks, "the context's destruction");
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

BOOST_AUTO_TEST_CASE(a_device_that_is_not_there_is_a_config_error_on_every_rank) {
  // The last rank asks for a device it does not have; every rank must throw ConfigError,
  // agreed before the unique id is broadcast.
  Checks checks;
  const MpiCommunicator mpi = MpiCommunicator::world();
  pcx::NcclWorldOptions options;
  options.communicator = non_blocking();
  if (mpi.rank() == mpi.size() - 1) options.device = device_count() + 3;
  try {
    (void)NcclCommunicator::create_world(mpi, options);
    checks.expect(false, "create_world succeeded");
  } catch (const pcx::ConfigError& e) {
    checks.expect(std::string_view(e.what()).find("rank") != std::string_view::npos, e.what());
  } catch (const std::exception& e) {
    checks.expect(false, fmt::format("wrong exception: {}", e.what()));
  }
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(more_ranks_on_a_node_than_devices_is_a_config_error_on_every_rank) {
  // Runs only where some node has more ranks than devices (on the emulator:
  // PCX_EMU_DEVICES below the rank count); elsewhere there is nothing to see.
  std::int32_t crowded = node_local_rank() >= device_count() ? 1 : 0;
  MpiCommunicator::world().all_reduce(std::span<std::int32_t>(&crowded, 1), ReduceOp::max);
  if (crowded == 0) {
    BOOST_TEST_MESSAGE("every rank has a device of its own: nothing to check");
    return;
  }
  Checks checks;
  try {
    (void)nccl_world(non_blocking());
    checks.expect(false, "create_world succeeded");
  } catch (const pcx::ConfigError& e) {
    BOOST_TEST_MESSAGE(e.what());
  } catch (const std::exception& e) {
    checks.expect(false, fmt::format("wrong exception: {}", e.what()));
  }
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(an_initialization_whose_peers_never_come_times_out) {
  // A communicator of two ranks of which only this one ever arrives.
  const CallerDevice caller;  // collective over MPI: on every rank
  const int device = node_local_rank();
  Checks checks;
  const int live_before = live_communicators();
  if (world_rank() == 0) {
    ncclUniqueId id{};
    pcx::check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    const auto start = Clock::now();
    try {
      (void)NcclCommunicator::init_rank(id, 2, 0, device, short_deadline("pcx-test:lonely"));
      checks.expect(false, "init_rank succeeded");
    } catch (const pcx::Timeout& e) {
      const std::string_view message = e.what();
      checks.expect(
          message.find("pcx-test:lonely") != std::string_view::npos && message.find("rank 0") != std::string_view::npos,
          fmt::format("the message does not name the communicator and the rank: {}", message));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    checks.expect(Clock::now() - start < std::chrono::seconds(2), "init_rank took longer than its deadline + 1 s");
    caller.check(checks, "init_rank");
  }
  checks.expect(live_communicators() == live_before, "a communicator leaked");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(an_aborted_communicator_refuses_work_and_is_released) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("abort", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    MpiCommunicator::world().barrier();  // every rank's initialization is over before any aborts
    world.abort();
    caller.check(checks, "abort");
    world.abort();  // a second call does nothing
    checks.expect(world.failed() && world.aborted() && world.native() == nullptr, "not marked aborted");
    std::int32_t value = 1;
    const auto refused = [&](const std::function<void()>& call) {
      try {
        call();
      } catch (const pcx::CommError&) {
        return true;
      } catch (const std::exception&) {
      }
      return false;
    };
    checks.expect(refused([&] { world.all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum); }),
                  "all_reduce after abort");
    checks.expect(refused([&] { world.barrier(); }), "barrier after abort");
    checks.expect(refused([&] { (void)world.dup(); }), "dup after abort");
    checks.expect(
        refused([&] { world.enqueue_all_reduce(nullptr, nullptr, 0, DataType::int32, ReduceOp::sum, nullptr); }),
        "enqueue_all_reduce after abort");
  });
  checks.expect(live_communicators() == live_before, "the aborted communicator leaked");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(a_context_aborted_from_another_thread_ends_the_waiting_collective) {
  // Rank 0 waits in an all-reduce over the world clone that no other rank joins (with one
  // rank, the emulator makes it hang); a second thread aborts the context. The abort must
  // return at once and the waiting call must throw CommError long before its deadline.
  const bool alone = MpiCommunicator::world().size() == 1;
  if (alone && !on_emulator()) {
    BOOST_TEST_MESSAGE("skipped: one rank on real NCCL has no collective that waits");
    return;
  }
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("abort from another thread", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    pcx::ParallelConfig config;
    config.world_size = world.size();
    config.expert_parallel_sizes = {world.size()};
    pcx::ContextOptions options;
    options.communicators.timeout = std::chrono::seconds(60);
    std::optional<pcx::ParallelContext> context;
    if (alone) {
      with_fault("op_hang:1", [&] { context.emplace(world, config, nullptr, options); });
    } else {
      context.emplace(world, config, nullptr, options);
    }
    // Every rank has finished its splits before any rank gives its communicators up:
    // a peer's abort may otherwise cut a split still under way elsewhere.
    MpiCommunicator::world().barrier();
    if (world.rank() != 0) {
      context->abort();  // every rank aborts, as NCCL requires once one has failed
      return;
    }
    std::chrono::duration<double> abort_took{};
    std::thread watchdog([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      const auto start = Clock::now();
      context->abort();
      abort_took = Clock::now() - start;
    });
    const auto start = Clock::now();
    try {
      std::int32_t value = 1;
      context->world_group().communicator().all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
      checks.expect(false, "the all_reduce returned");
    } catch (const pcx::CommError& e) {
      checks.expect(std::string_view(e.what()).find("abort") != std::string_view::npos,
                    fmt::format("the error does not say it was aborted: {}", e.what()));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    const std::chrono::duration<double> waited = Clock::now() - start;
    watchdog.join();
    checks.expect(abort_took < std::chrono::seconds(2), fmt::format("abort() took {:.3f} s", abort_took.count()));
    checks.expect(waited < std::chrono::seconds(5), fmt::format("the waiting call took {:.3f} s", waited.count()));
    caller.check(checks, "the aborted collective");
  });
  checks.expect(live_communicators() == live_before, "a communicator leaked");
  BOOST_TEST(everyone(checks.ok()));
}

// ---------------------------------------------------------------------------------------
// Faults the emulator injects

BOOST_AUTO_TEST_CASE(an_initialization_that_never_completes_times_out_everywhere,
                     *boost::unit_test::precondition(OnEmulator{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  const int last = MpiCommunicator::world().size() - 1;
  const auto start = Clock::now();
  try {
    const auto create = [] { (void)nccl_world(short_deadline("pcx-test:hanging-init")); };
    if (world_rank() == last) {
      with_fault(fmt::format("init_hang@{}", last), create);
    } else {
      create();
    }
    checks.expect(false, "create_world succeeded");
  } catch (const pcx::Timeout& e) {
    checks.expect(std::string_view(e.what()).find("pcx-test:hanging-init") != std::string_view::npos,
                  fmt::format("the message does not name the communicator: {}", e.what()));
  } catch (const std::exception& e) {
    checks.expect(false, fmt::format("wrong exception: {}", e.what()));
  }
  checks.expect(Clock::now() - start < std::chrono::seconds(2), "longer than the deadline + 1 s");
  caller.check(checks, "the timed-out create_world");
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(a_split_that_never_completes_times_out_everywhere, *boost::unit_test::precondition(OnEmulator{})) {
  for (const bool nocolour : {false, true}) {
    const CallerDevice caller;
    Checks checks;
    const int live_before = live_communicators();
    checks.run("split", [&] {
      const NcclCommunicator world = nccl_world(non_blocking());
      const int last = world.size() - 1;
      // With nocolour, the hanging rank joins no child: it still takes part in the split.
      const bool joins = !nocolour || world.rank() != last;
      const auto start = Clock::now();
      try {
        const auto split = [&] {
          (void)world.split(joins ? 0 : pcx::Communicator::kNoColour, joins ? world.rank() : 0,
                            nocolour ? world.size() - 1 : world.size(), short_deadline("pcx-test:hanging-split"));
        };
        if (world.rank() == last) {
          with_fault(fmt::format("split_hang@{}", last), split);
        } else {
          split();
        }
        checks.expect(false, "the split succeeded");
      } catch (const pcx::Timeout& e) {
        const std::string_view message = e.what();
        checks.expect(message.find("pcx-test:world") != std::string_view::npos &&
                          message.find(fmt::format("rank {}", world.rank())) != std::string_view::npos,
                      fmt::format("the message does not name the parent and the rank: {}", message));
      } catch (const std::exception& e) {
        checks.expect(false, fmt::format("wrong exception: {}", e.what()));
      }
      checks.expect(Clock::now() - start < std::chrono::seconds(2), "longer than the deadline + 1 s");
      checks.expect(world.failed(), "the parent of the timed-out split is not aborted");
      caller.check(checks, "the timed-out split");
    });
    checks.expect(live_communicators() == live_before,
                  fmt::format("{} live communicators, {} before", live_communicators(), live_before));
    BOOST_TEST(everyone(checks.ok()), (nocolour ? "NCCL_SPLIT_NOCOLOR on the hanging rank" : "every rank joins"));
  }
}

BOOST_AUTO_TEST_CASE(a_peer_that_stops_mid_collective_gives_timeout, *boost::unit_test::precondition(OnEmulator{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("op_hang", [&] {
    const int last = MpiCommunicator::world().size() - 1;
    // The last rank enters its first operation and never completes it.
    std::optional<NcclCommunicator> world;
    const auto create = [&] { world.emplace(nccl_world(short_deadline("pcx-test:stopping"))); };
    if (world_rank() == last) {
      with_fault(fmt::format("op_hang:1@{}", last), create);
    } else {
      create();
    }
    std::vector<float> values{1.0F, 2.0F};
    const auto start = Clock::now();
    try {
      world->all_reduce(std::span<float>(values), ReduceOp::sum);
      checks.expect(false, "the all_reduce returned");
    } catch (const pcx::Timeout& e) {
      const std::string_view message = e.what();
      checks.expect(message.find("ncclAllReduce") != std::string_view::npos &&
                        message.find("pcx-test:stopping") != std::string_view::npos &&
                        message.find(fmt::format("rank {}", world->rank())) != std::string_view::npos,
                    fmt::format("the message does not name the operation, communicator and rank: {}", message));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    checks.expect(Clock::now() - start < std::chrono::seconds(2), "longer than the deadline + 1 s");
    checks.expect(world->failed(), "not aborted after the timeout");
    caller.check(checks, "the timed-out all_reduce");
  });
  caller.check(checks, "the destruction of the aborted world");
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(an_asynchronous_error_aborts_and_gives_comm_error, *boost::unit_test::precondition(OnEmulator{})) {
  const CallerDevice caller;
  Checks checks;
  const int live_before = live_communicators();
  checks.run("op_error", [&] {
    // Every rank's first operation fails with ncclRemoteError.
    std::optional<NcclCommunicator> world;
    with_fault("op_error:1", [&] { world.emplace(nccl_world(non_blocking("pcx-test:failing"))); });
    std::vector<std::int32_t> values(4, 1);
    try {
      world->all_reduce(std::span<std::int32_t>(values), ReduceOp::sum);
      checks.expect(false, "the all_reduce returned");
    } catch (const pcx::CommError& e) {
      checks.expect(e.code() == ncclRemoteError, fmt::format("code {}, not ncclRemoteError: {}", e.code(), e.what()));
    } catch (const std::exception& e) {
      checks.expect(false, fmt::format("wrong exception: {}", e.what()));
    }
    checks.expect(world->failed() && world->native() == nullptr, "not aborted after the error");
    caller.check(checks, "the failed all_reduce");
    try {
      world->barrier();
      checks.expect(false, "a barrier after the error returned");
    } catch (const pcx::CommError&) {
    }
  });
  checks.expect(live_communicators() == live_before,
                fmt::format("{} live communicators, {} before", live_communicators(), live_before));
  BOOST_TEST(everyone(checks.ok()));
}

int main(int argc, char* argv[]) {
  // Threads: the abort case calls abort() from a second thread (no MPI there).
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
