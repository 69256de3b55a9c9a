// Emulator tests, suite collectives: every collective, type and reduction against host
// references, grouped and on non-blocking communicators. The sources cited ([nccl.h],
// [usage], [p2p], [ops]) and how the module runs are explained in emulator_test_support.hpp.

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "emulator_test_support.hpp"
#include "pcx_emulator.h"

using namespace emutest;  // NOLINT(google-build-using-namespace): the helpers every test uses

BOOST_FIXTURE_TEST_SUITE(collectives, EmulatorTest)

BOOST_AUTO_TEST_CASE(all_reduce_of_every_type_and_op_matches_host_reference) {
  // [nccl.h:406-417] ncclAllReduce "Reduces data arrays of length count in sendbuff using op
  // operation, and leaves identical copies of result on each recvbuff"; ops [nccl.h:282-286].
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_reduce(comm.get(), stream.get(), kTypes, false);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(in_place_all_reduce_matches_host_reference) {
  // [nccl.h:412] "In-place operation will happen if sendbuff == recvbuff."
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_reduce(comm.get(), stream.get(), kTypes, true);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(broadcast_copies_the_root_data_to_every_rank) {
  // [nccl.h:392-400] ncclBroadcast "Copies count values from root to all other devices ...
  // In-place operation will happen if sendbuff == recvbuff."
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_broadcast(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(all_gather_places_rank_i_data_at_offset_i) {
  // [nccl.h:437-446] ncclAllGather: "receiving data from rank i at offset i*sendcount"; in place
  // when sendbuff == recvbuff + rank * sendcount.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_gather(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(reduce_scatter_leaves_block_i_of_the_result_on_rank_i) {
  // [nccl.h:419-429] ncclReduceScatter: "recvbuff on rank i will contain the i-th block of the
  // result"; in place when recvbuff == sendbuff + rank * recvcount.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_reduce_scatter(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(send_recv_ring_in_a_group_passes_data_to_the_next_rank) {
  // [nccl.h:495-527] ncclSend/ncclRecv: "Rank peer needs to call ncclRecv with the same
  // datatype and the same count"; concurrent ones "must be fused within a ncclGroupStart/
  // ncclGroupEnd section". At 1 rank the ring sends to itself.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_ring(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(uneven_all_to_all_in_a_group_delivers_every_segment) {
  // [p2p] "All-to-all": one ncclSend and one ncclRecv per peer inside ncclGroupStart/End;
  // counts differ per pair (7, 14 or 21 elements), matched on both sides.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_uneven_all_to_all(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(grouped_collectives_all_complete_with_right_results) {
  // [nccl.h:546-548] "Group semantics also allow to fuse multiple operations on the same
  // device"; [nccl.h:561-566] ncclGroupEnd starts them all.
  Stream stream;
  DeviceBuffer a(16 * sizeof(std::int32_t));
  DeviceBuffer b(16 * sizeof(std::int32_t));
  DeviceBuffer c(static_cast<std::size_t>(g_size) * 16 * sizeof(std::int32_t));
  Comm comm;
  ready_world(comm, true);
  std::vector<std::int32_t> host(16, g_rank + 1);
  std::vector<std::byte> bytes(a.size());
  std::memcpy(bytes.data(), host.data(), bytes.size());
  const bool ready = EXPECT(a.ok() && b.ok() && c.ok() && upload(a.get(), bytes) && upload(b.get(), bytes), "setup");
  ncclResult_t r = ncclInvalidUsage;
  if (ready) {
    r = ncclGroupStart();
    if (r == ncclSuccess) r = ncclAllReduce(a.get(), a.get(), 16, ncclInt32, ncclSum, comm.get(), stream.get());
    if (r == ncclSuccess) r = ncclAllReduce(b.get(), b.get(), 16, ncclInt32, ncclMax, comm.get(), stream.get());
    if (r == ncclSuccess) r = ncclAllGather(a.get(), c.get(), 16, ncclInt32, comm.get(), stream.get());
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
  }
  finish_step(r, stream.get(), "group of two all-reduces and an all-gather");
  auto read = [](const DeviceBuffer& buffer) {
    std::vector<std::int32_t> values(buffer.size() / sizeof(std::int32_t), -1);
    const std::vector<std::byte> got = download(buffer.get(), buffer.size());
    if (got.size() == buffer.size()) std::memcpy(values.data(), got.data(), got.size());
    return values;
  };
  const std::int32_t sum = g_size * (g_size + 1) / 2;
  const std::vector<std::int32_t> sums = read(a);
  const std::vector<std::int32_t> maxima = read(b);
  EXPECT(std::all_of(sums.begin(), sums.end(), [&](std::int32_t v) { return v == sum; }), "grouped sum is wrong");
  EXPECT(std::all_of(maxima.begin(), maxima.end(), [&](std::int32_t v) { return v == g_size; }),
         "grouped max is wrong");
  // Operations in a group may run in any order: the all-gather of `a` sees either the
  // contributions or the sums, the same on all ranks; either is a consistent result.
  const std::vector<std::int32_t> gathered = read(c);
  bool consistent = true;
  for (std::size_t k = 0; k < gathered.size(); ++k) {
    const auto rank = static_cast<std::int32_t>(k / 16);
    consistent = consistent && (gathered[k] == rank + 1 || gathered[k] == sum);
  }
  EXPECT(consistent, "grouped all-gather is neither the contributions nor the sums");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(float8_types_are_reduced_and_copied) {
  // ncclFloat8e4m3 and ncclFloat8e5m2 are data types of NCCL 2.28 [nccl.h:310-311]; values
  // are chosen exact in both formats.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_reduce(comm.get(), stream.get(), kFloat8Types, false);
  check_broadcast(comm.get(), stream.get(), kFloat8Types);
  check_all_gather(comm.get(), stream.get(), kFloat8Types);
  check_reduce_scatter(comm.get(), stream.get(), kFloat8Types);
  check_ring(comm.get(), stream.get(), kFloat8Types);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(large_all_reduce_is_exact) {
  // 2 MiB per rank, not a multiple of any chunk: larger than a staging chunk would be.
  constexpr std::size_t count = (std::size_t{1} << 19U) + 3;
  const TypeInfo& t = kTypes[7];  // float32
  Stream stream;
  DeviceBuffer buffer(count * sizeof(float));
  Comm comm;
  ready_world(comm, true);
  std::vector<double> mine(count);
  std::vector<double> want(count, 0.0);
  for (std::size_t i = 0; i < count; ++i) {
    mine[i] = static_cast<double>((static_cast<std::size_t>(g_rank) + i) % 5);
    for (int r = 0; r < g_size; ++r) want[i] += static_cast<double>((static_cast<std::size_t>(r) + i) % 5);
  }
  const bool ready = EXPECT(buffer.ok() && upload(buffer.get(), encode(t, mine)), "setup");
  const ncclResult_t r =
      ready ? ncclAllReduce(buffer.get(), buffer.get(), count, ncclFloat32, ncclSum, comm.get(), stream.get())
            : ncclInvalidUsage;
  finish_step(r, stream.get(), "2 MiB all-reduce");
  expect_values(t, download(buffer.get(), buffer.size()), want, "2 MiB all-reduce");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(non_blocking_communicator_runs_collectives_and_groups) {
  // [usage] non-blocking communicators: any call may return ncclInProgress; the operation is
  // enqueued once ncclCommGetAsyncError reports ncclSuccess.
  Stream stream;
  DeviceBuffer send(32 * sizeof(std::int32_t));
  DeviceBuffer recv(32 * sizeof(std::int32_t));
  Comm comm;
  ready_world(comm, false);
  sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2, "all-reduce on a non-blocking communicator");
  std::vector<std::int32_t> host(32, g_rank);
  std::vector<std::byte> bytes(send.size());
  std::memcpy(bytes.data(), host.data(), bytes.size());
  const bool ready = EXPECT(send.ok() && recv.ok() && upload(send.get(), bytes), "setup");
  ncclResult_t r = ncclInvalidUsage;
  if (ready) {
    r = ncclGroupStart();
    if (r == ncclSuccess) r = ncclSend(send.get(), 32, ncclInt32, (g_rank + 1) % g_size, comm.get(), stream.get());
    if (r == ncclSuccess)
      r = ncclRecv(recv.get(), 32, ncclInt32, (g_rank + g_size - 1) % g_size, comm.get(), stream.get());
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
    if (r == ncclInProgress) r = wait_comm(comm.get());
  }
  finish_step(r, stream.get(), "ring on a non-blocking communicator");
  const std::vector<std::byte> got = download(recv.get(), recv.size());
  std::vector<std::int32_t> values(32, -1);
  if (got.size() == recv.size()) std::memcpy(values.data(), got.data(), got.size());
  const int previous = (g_rank + g_size - 1) % g_size;
  EXPECT(std::all_of(values.begin(), values.end(), [&](std::int32_t v) { return v == previous; }),
         "ring on a non-blocking communicator delivered the wrong data");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_SUITE_END()
