// Emulator tests, suite asynchrony_and_faults: collectives that wait on their streams for
// absent peers, and the faults injected with PCX_EMU_FAULT, ended by abort. The sources
// cited ([nccl.h], [types], [usage], [init.cc], [cudart], [emu]) and how the module runs
// are explained in emulator_test_support.hpp.

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "emulator_test_support.hpp"
#include "pcx_emulator.h"

using namespace emutest;  // NOLINT(google-build-using-namespace): the helpers every test uses

BOOST_FIXTURE_TEST_SUITE(asynchrony_and_faults, EmulatorTest)

BOOST_AUTO_TEST_CASE(collective_waits_on_its_stream_for_peers_that_have_not_called_it) {
  // [nccl.h:355] collectives "return when operations have been enqueued on the CUDA stream";
  // [cudart] cudaStreamQuery returns cudaErrorNotReady until all work in the stream is done.
  if (g_size < 2) {
    BOOST_TEST_MESSAGE("needs 2 ranks: with 1 rank no peer can be missing");
    return;
  }
  Stream stream;
  DeviceBuffer buffer(16 * sizeof(std::int32_t));
  Comm comm;
  ready_world(comm, true);
  std::vector<std::int32_t> host(16, g_rank + 1);
  std::vector<std::byte> bytes(buffer.size());
  std::memcpy(bytes.data(), host.data(), bytes.size());
  const bool ready = EXPECT(buffer.ok() && upload(buffer.get(), bytes), "setup");
  auto call = [&] {
    return ready ? ncclAllReduce(buffer.get(), buffer.get(), 16, ncclInt32, ncclSum, comm.get(), stream.get())
                 : ncclInvalidUsage;
  };
  ncclResult_t r = ncclNumResults;
  if (g_rank == 0) {
    r = call();
    EXPECT(r == ncclSuccess, "ncclAllReduce returned " << result_name(r));
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the stream is complete before any peer called");
    std::this_thread::sleep_for(milliseconds(20));
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the stream completed while peers were absent");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) r = call();
  finish_step(r, stream.get(), "all-reduce after the peers arrived");
  const std::vector<std::byte> got = download(buffer.get(), buffer.size());
  std::vector<std::int32_t> values(16, -1);
  if (got.size() == buffer.size()) std::memcpy(values.data(), got.data(), got.size());
  const std::int32_t sum = g_size * (g_size + 1) / 2;
  EXPECT(std::all_of(values.begin(), values.end(), [&](std::int32_t v) { return v == sum; }), "wrong sum");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(absent_peer_keeps_the_stream_busy_until_abort) {
  // The last rank never calls the all-reduce: the others' streams must not complete.
  // [nccl.h:195-198] ncclCommAbort "Frees resources associated with communicator object and
  // aborts any operations that might still be running on the device": it returns, the
  // aborted operation no longer holds the stream, the communicator is gone. Using the handle
  // after abort is use of freed memory, not a documented error, so it is not tested.
  if (g_size < 2) {
    BOOST_TEST_MESSAGE("needs 2 ranks: with 1 rank no peer can be absent (op_hang covers 1 rank)");
    return;
  }
  Stream stream;
  DeviceBuffer buffer(16 * sizeof(float));
  Comm comm;
  ready_world(comm, true);
  const bool absent = g_rank == g_size - 1;
  if (!absent) {
    const ncclResult_t r =
        ncclAllReduce(buffer.get(), buffer.get(), 16, ncclFloat32, ncclSum, comm.get(), stream.get());
    EXPECT(r == ncclSuccess, "ncclAllReduce returned " << result_name(r));
  }
  std::this_thread::sleep_for(kHangWindow);
  if (!absent)
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the all-reduce completed without the last rank");
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t a = comm.abort();
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(a == ncclSuccess, "ncclCommAbort returned " << result_name(a));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
  if (!absent) {
    const cudaError_t e = wait_stream(stream.get());
    EXPECT(e != cudaErrorNotReady, "the aborted all-reduce still holds the stream");
  }
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(op_hang_fault_keeps_the_stream_busy_until_abort) {
  // [emu] op_hang:K: "the K-th operation (1-based; a group counts once) of rank R never
  // completes". Operation 1 is a group of two all-reduces and completes; operation 2 hangs on
  // the chosen rank. ncclCommAbort then ends it [nccl.h:195-198].
  const int chosen = g_size - 1;
  Stream stream;
  DeviceBuffer a(8 * sizeof(std::int32_t));
  DeviceBuffer b(8 * sizeof(std::int32_t));
  Comm comm;
  {
    FaultScope fault(g_rank == chosen, "op_hang:2");
    ready_world(comm, true);
  }
  const bool ready = EXPECT(a.ok() && b.ok(), "setup");
  ncclResult_t r = ready ? ncclGroupStart() : ncclInvalidUsage;
  if (r == ncclSuccess) r = ncclAllReduce(a.get(), a.get(), 8, ncclInt32, ncclSum, comm.get(), stream.get());
  if (r == ncclSuccess) r = ncclAllReduce(b.get(), b.get(), 8, ncclInt32, ncclSum, comm.get(), stream.get());
  if (ready) {
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
  }
  finish_step(r, stream.get(), "operation 1 (a group of two all-reduces) before the hang");
  r = ncclAllReduce(a.get(), a.get(), 8, ncclInt32, ncclSum, comm.get(), stream.get());
  EXPECT(r == ncclSuccess, "operation 2 returned " << result_name(r));
  std::this_thread::sleep_for(kHangWindow);
  if (g_rank == chosen) EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the hung operation 2 completed");
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t aborted = comm.abort();
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(aborted == ncclSuccess, "ncclCommAbort returned " << result_name(aborted));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
  const cudaError_t e = wait_stream(stream.get());
  EXPECT(e != cudaErrorNotReady, "the aborted operation still holds the stream");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(op_error_fault_is_reported_by_comm_get_async_error) {
  // [emu] op_error:K@R: "the K-th operation of rank R fails with an asynchronous error
  // (ncclRemoteError)"; [nccl.h:248-250] ncclCommGetAsyncError "Checks whether the comm has
  // encountered any asynchronous errors"; [types] ncclRemoteError "A call failed possibly due
  // to a network error or a remote process exiting prematurely". The remedy is abort [usage].
  const int chosen = 0;
  Stream stream;
  DeviceBuffer buffer(8 * sizeof(float));
  Comm comm;
  {
    FaultScope fault(g_rank == chosen, "op_error:1@" + std::to_string(chosen));
    ready_world(comm, true);
  }
  const ncclResult_t r = ncclAllReduce(buffer.get(), buffer.get(), 8, ncclFloat32, ncclSum, comm.get(), stream.get());
  EXPECT(r == ncclSuccess, "the faulty operation returned " << result_name(r) << " instead of failing asynchronously");
  if (g_rank == chosen) {
    ncclResult_t state = ncclSuccess;
    const auto end = Clock::now() + kDeadline;
    do {
      state = async_state(comm.get());
      if (state != ncclSuccess && state != ncclInProgress) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    } while (Clock::now() < end);
    EXPECT(state != ncclSuccess && state != ncclInProgress,
           "ncclCommGetAsyncError still reports " << result_name(state));
    EXPECT(state == ncclRemoteError, "the asynchronous error is " << result_name(state) << ", not ncclRemoteError");
    const char* text = ncclGetLastError(comm.get());
    EXPECT(text != nullptr, "ncclGetLastError returned NULL after an error");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT(comm.abort() == ncclSuccess, "ncclCommAbort");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
  const cudaError_t e = wait_stream(stream.get());
  EXPECT(e != cudaErrorNotReady, "after ncclCommAbort the failed operation still holds the stream");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(init_hang_fault_stays_in_progress_until_every_rank_aborts) {
  // [emu] init_hang: the init of that rank never completes; [usage] a non-blocking init that
  // does not finish in time is ended with ncclCommAbort, which frees it [nccl.h:195-198].
  const int chosen = g_size - 1;
  const ncclUniqueId id = shared_id();
  ncclConfig_t config = make_config(false);
  Comm comm;
  ncclResult_t r = ncclNumResults;
  {
    FaultScope fault(g_rank == chosen, "init_hang");
    r = ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
  }
  EXPECT(comm.get() != nullptr, "*comm is NULL after a non-blocking init");
  if (g_rank == chosen) {
    EXPECT(r == ncclInProgress, "the hanging init returned " << result_name(r));
  } else {
    EXPECT(r == ncclInProgress || r == ncclSuccess, "non-blocking init returned " << result_name(r));
  }
  std::this_thread::sleep_for(kHangWindow);
  if (g_rank == chosen && comm.get() != nullptr) {
    const ncclResult_t state = async_state(comm.get());
    EXPECT(state == ncclInProgress,
           "the hanging init reports " << result_name(state) << " after " << kHangWindow.count() << " ms");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t a = comm.get() != nullptr ? comm.abort() : ncclSuccess;
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(a == ncclSuccess, "ncclCommAbort returned " << result_name(a));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(split_hang_fault_stays_in_progress_until_every_rank_aborts) {
  // [emu] split_hang: ncclCommSplit called by that parent rank never completes. [init.cc] the
  // child stays NULL until the split completes; [usage] the non-blocking parent reports
  // ncclInProgress meanwhile. Aborting the parent ends the split on every rank, and the
  // failed split's job still writes the child it allocated at the call into *newcomm
  // (src/init.cc:1612-1620 at v2.28.9-1); the caller aborts it ([usage] Fault Tolerance: "if
  // childComm is not NCCL_COMM_NULL, user should abort child communicator here as well").
  const int chosen = g_size - 1;
  Comm child;
  Comm parent;
  ncclResult_t r = ncclNumResults;
  {
    // Set around the parent's creation and the split: whichever reads it [emu].
    FaultScope fault(g_rank == chosen, "split_hang");
    ready_world(parent, false);
    r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
  }
  if (g_rank == chosen) {
    EXPECT(r == ncclInProgress || r == ncclSuccess, "the hanging split returned " << result_name(r));
  } else {
    EXPECT(r == ncclInProgress || r == ncclSuccess, "split returned " << result_name(r));
  }
  std::this_thread::sleep_for(kHangWindow);
  if (g_rank == chosen) {
    EXPECT(child.get() == nullptr, "the hanging split published *newcomm");
    const ncclResult_t state = async_state(parent.get());
    EXPECT(state == ncclInProgress,
           "the parent reports " << result_name(state) << " after " << kHangWindow.count() << " ms of a hanging split");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t a = parent.abort();
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(a == ncclSuccess, "ncclCommAbort(parent) returned " << result_name(a));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(child.get() != nullptr, "*newcomm is NULL after the parent's abort ended the split");
  EXPECT(child.abort() == ncclSuccess, "ncclCommAbort(child)");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_SUITE_END()
