// What the cases of nccl_test share: the verdict of all ranks, the rank's findings, the
// caller's device, device memory, the settings the cases run under, the emulator's queries
// and faults, and the checks of every collective against a reference computed on the host.
#pragma once

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/nccl/nccl_communicator.hpp"
#include "pcx/parallel_context.hpp"

namespace nccltest {

using Clock = std::chrono::steady_clock;
using pcx::DataType;
using pcx::MpiCommunicator;
using pcx::NcclCommunicator;
using pcx::ReduceOp;

// ---------------------------------------------------------------------------------------
// Ranks, devices and the emulator

// Whether `ok` holds on every rank. Collective over MPI.
bool everyone(bool ok);

int world_rank();

// The rank's index on its node, as create_world() computes it.
int node_local_rank();

int device_count();

int current_device();

// The emulator's queries, where the program runs on it (dlsym finds them only there).
using Counter = int (*)();
Counter emulator_counter(const char* name);
bool on_emulator();
int live_communicators();

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
  void expect(bool ok, const std::string& what);
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
  CallerDevice();
  void check(Checks& checks, const std::string& after) const;

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
pcx::CommOptions non_blocking(std::string name = "pcx-test:world");

// Blocking, no deadline (timeout 0).
pcx::CommOptions blocking(std::string name = "pcx-test:world");

// A short deadline, for the cases that wait for it.
pcx::CommOptions short_deadline(std::string name);

NcclCommunicator nccl_world(const pcx::CommOptions& options);

// The settings the cases run under: non_blocking() and blocking().
extern const pcx::CommOptions kSettings[2];

std::string settings_name(const pcx::CommOptions& options);

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
                       const std::string& where);

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
      for (int q = 0; q < n; ++q)
        total = op == ReduceOp::sum ? total + q + 1 + static_cast<int>(i) : q + 1 + static_cast<int>(i);
      want[i] = static_cast<T>(total);
    }
    DeviceBuffer<T> buffer(device, mine);
    comm.all_reduce(buffer.span(), op);
    expect_equal(checks, buffer.host(), want,
                 fmt::format("{} all_reduce {}", type, op == ReduceOp::sum ? "sum" : "max"));

    const DeviceBuffer<T> send(device, mine);
    const DeviceBuffer<T> block(device, 2);
    comm.reduce_scatter(std::span<const T>(send.span()), block.span(), op);
    expect_equal(checks, block.host(),
                 {want[2 * static_cast<std::size_t>(r)], want[2 * static_cast<std::size_t>(r) + 1]},
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

}  // namespace nccltest
