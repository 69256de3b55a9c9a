// Emulator tests, suites nccl_queries (version, error strings, device of a communicator)
// and communicator_lifecycle (init, split, shrink, finalize, destroy, abort). The sources
// cited ([nccl.h], [comms], [types], [usage], [init.cc], [cudart], [emu]) and how the
// module runs are explained in emulator_test_support.hpp.

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "emulator_test_support.hpp"
#include "pcx_emulator.h"

using namespace emutest;  // NOLINT(google-build-using-namespace): the helpers every test uses

BOOST_FIXTURE_TEST_SUITE(nccl_queries, EmulatorTest)

BOOST_AUTO_TEST_CASE(get_version_returns_NCCL_VERSION_CODE) {
  // [comms] ncclGetVersion: "The version number returned will be the same as the
  // NCCL_VERSION_CODE defined in nccl.h."
  int version = 0;
  EXPECT(ncclGetVersion(&version) == ncclSuccess, "ncclGetVersion");
  EXPECT(version == NCCL_VERSION_CODE, "version " << version << ", NCCL_VERSION_CODE " << NCCL_VERSION_CODE);
}

BOOST_AUTO_TEST_CASE(error_strings_and_last_error_are_readable) {
  // [comms] ncclGetErrorString "Returns a human-readable string corresponding to the passed
  // error code"; ncclGetLastError "Returns a human-readable string corresponding to the last
  // error" (comm may be NULL [nccl.h:238-239]).
  for (const ncclResult_t r : {ncclSuccess, ncclUnhandledCudaError, ncclSystemError, ncclInternalError,
                               ncclInvalidArgument, ncclInvalidUsage, ncclRemoteError, ncclInProgress}) {
    const char* text = ncclGetErrorString(r);
    EXPECT(text != nullptr && *text != '\0', "ncclGetErrorString(" << result_name(r) << ") is empty");
  }
  EXPECT(ncclGetLastError(nullptr) != nullptr, "ncclGetLastError(NULL) returned NULL");
}

BOOST_AUTO_TEST_CASE(comm_cu_device_is_the_device_current_at_init) {
  // [nccl.h:166-167] "Each rank is associated to a CUDA device, which has to be set before
  // calling ncclCommInitRank"; ncclCommCuDevice "Returns the cuda device number associated
  // with the communicator" [nccl.h:256].
  const int device = (my_device() + 1) % g_devices;
  EXPECT(cudaSetDevice(device) == cudaSuccess, "cudaSetDevice(" << device << ")");
  Comm comm;
  ready_world(comm, true);
  EXPECT(cudaSetDevice(my_device()) == cudaSuccess, "cudaSetDevice back");
  int reported = -1;
  EXPECT(ncclCommCuDevice(comm.get(), &reported) == ncclSuccess, "ncclCommCuDevice");
  EXPECT(reported == device, "ncclCommCuDevice gave " << reported << ", device at init was " << device);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_SUITE_END()

// =======================================================================================
BOOST_FIXTURE_TEST_SUITE(communicator_lifecycle, EmulatorTest)

BOOST_AUTO_TEST_CASE(blocking_init_is_ready_when_it_returns) {
  // [comms] ncclCommInitRankConfig with config.blocking=1 returns when the communicator is
  // initialized; ncclCommCount / ncclCommUserRank [nccl.h:252-262].
  Comm comm;
  const ncclResult_t r = init_world(comm, true);
  EXPECT(r == ncclSuccess, "blocking init returned " << result_name(r));
  require_everyone(r == ncclSuccess && comm.get() != nullptr, "blocking init");
  EXPECT(async_state(comm.get()) == ncclSuccess,
         "state right after a blocking init is " << result_name(async_state(comm.get())));
  EXPECT(pcxemu_live_communicators() == comms_at_start + 1, "live communicators " << pcxemu_live_communicators());
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(comm.get(), &count) == ncclSuccess && count == g_size, "ncclCommCount gave " << count);
  EXPECT(ncclCommUserRank(comm.get(), &rank) == ncclSuccess && rank == g_rank, "ncclCommUserRank gave " << rank);
  sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2, "all-reduce on the new communicator");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after destroy " << pcxemu_live_communicators());
}

namespace {

// The host NCCL takes this process to be on (src/misc/utils.cc, getHostHashOnce):
// NCCL_HOSTID when set, otherwise the host name followed by the kernel's boot id.
std::string nccl_host() {
  if (const char* configured = std::getenv("NCCL_HOSTID"); configured != nullptr) return configured;
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  std::string boot_id;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot_id;
  return name + boot_id;
}

}  // namespace

BOOST_AUTO_TEST_CASE(one_device_serves_one_rank_per_host) {
  // [init.cc] initTransportsRank (src/init.cc:903 in 2.28.9): a rank whose host hash and
  // bus id equal another rank's fails with "Duplicate GPU detected", ncclInvalidUsage; ranks
  // of different hosts each use their own device 0. Every rank here takes device 0, and
  // the job is started either on one host or with NCCL_HOSTID set per rank.
  constexpr int kLength = 256;
  std::vector<char> hosts(static_cast<std::size_t>(kLength) * static_cast<std::size_t>(g_size));
  std::string mine = nccl_host();
  mine.resize(kLength - 1);
  MPI_Allgather(mine.c_str(), kLength, MPI_CHAR, hosts.data(), kLength, MPI_CHAR, MPI_COMM_WORLD);
  const auto host_of = [&](int r) { return std::string(hosts.data() + static_cast<std::ptrdiff_t>(r) * kLength); };
  int companions = 0;
  for (int r = 0; r < g_size; ++r) companions += r != g_rank && host_of(r) == host_of(g_rank) ? 1 : 0;
  // NCCL does not say what a rank with a device of its own does when others fail: only a
  // job in which all ranks or none share a host is judged.
  if (!everyone(companions > 0) && !everyone(companions == 0)) {
    BOOST_TEST_MESSAGE("ranks both alone and sharing a host: not judged");
    return;
  }
  EXPECT(cudaSetDevice(0) == cudaSuccess, "cudaSetDevice(0)");
  Comm comm;
  const ncclResult_t r = init_world(comm, true);
  if (companions > 0) {
    EXPECT(r == ncclInvalidUsage, companions << " other ranks on this host and device 0, init returned "
                                            << result_name(r));
    // The failed job leaves *newcomm set (the group's cleanup does not free it, group.cc
    // groupCleanup): the caller aborts it.
    if (comm.get() != nullptr) EXPECT(comm.abort() == ncclSuccess, "ncclCommAbort of the failed communicator");
    return;
  }
  EXPECT(r == ncclSuccess, "alone on this host, init on device 0 returned " << result_name(r));
  if (everyone(r == ncclSuccess)) sum_is(comm.get(), 1, g_size, "all-reduce across hosts on device 0");
  everyone(true);  // nobody destroys before every rank's all-reduce is done
  if (comm.get() != nullptr) EXPECT((r == ncclSuccess ? comm.destroy() : comm.abort()) == ncclSuccess, "release");
}

BOOST_AUTO_TEST_CASE(non_blocking_init_returns_in_progress_then_succeeds) {
  // [usage] / [types]: with config.blocking=0 calls return ncclInProgress, "A NCCL operation on
  // the communicator is being enqueued and is being progressed in the background"; the
  // application polls ncclCommGetAsyncError until it is no longer ncclInProgress. The handle
  // is written by the call itself (NCCL's non-blocking init example polls *comm right away).
  // Rank 0 calls first, alone: init is collective [nccl.h:169-170], so it cannot be complete
  // before the others call. At 1 rank the emulator's launch delay [emu] keeps it in progress.
  const ncclUniqueId id = shared_id();
  ncclConfig_t config = make_config(false);
  Comm comm;
  ncclResult_t r = ncclNumResults;
  if (g_rank == 0) {
    r = ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
    EXPECT(r == ncclInProgress, "non-blocking init before the peers called returned " << result_name(r));
    EXPECT(comm.get() != nullptr, "*comm is NULL right after a non-blocking init");
    if (comm.get() != nullptr) {
      const ncclResult_t state = async_state(comm.get());
      EXPECT(state == ncclInProgress, "ncclCommGetAsyncError right after the call gave " << result_name(state));
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) {
    r = ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
    EXPECT(r == ncclInProgress || r == ncclSuccess, "non-blocking init returned " << result_name(r));
    EXPECT(comm.get() != nullptr, "*comm is NULL right after a non-blocking init");
  }
  const ncclResult_t state = comm.get() != nullptr ? wait_comm(comm.get()) : ncclInvalidUsage;
  EXPECT(state == ncclSuccess, "non-blocking init ended in " << result_name(state));
  require_everyone(state == ncclSuccess, "non-blocking init");
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(comm.get(), &count) == ncclSuccess && count == g_size, "ncclCommCount gave " << count);
  EXPECT(ncclCommUserRank(comm.get(), &rank) == ncclSuccess && rank == g_rank, "ncclCommUserRank gave " << rank);
  sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2,
         "all-reduce on the non-blocking communicator");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(init_rank_scalable_with_one_or_two_ids_works_like_init_rank) {
  // [nccl.h:227-231] ncclCommInitRankScalable: "similar to ncclCommInitRankConfig. Allows to
  // use more than one ncclUniqueId (up to one per rank) ... The number of ncclUniqueIds and
  // their order must be the same for every rank." Id k is made by rank k*n/nId. "Up to one
  // per rank": at 1 rank only nId=1.
  if (g_size < 2) BOOST_TEST_MESSAGE("1 rank: nId=2 would exceed one id per rank; only nId=1");
  for (const int ids_count : {1, 2}) {
    if (ids_count > g_size) continue;
    std::vector<ncclUniqueId> ids;
    for (int k = 0; k < ids_count; ++k) ids.push_back(shared_id(k * g_size / ids_count));
    ncclConfig_t config = make_config(true);
    Comm comm;
    const ncclResult_t r = ncclCommInitRankScalable(comm.out(), g_size, g_rank, ids_count, ids.data(), &config);
    EXPECT(r == ncclSuccess, "ncclCommInitRankScalable with nId=" << ids_count << " returned " << result_name(r));
    require_everyone(r == ncclSuccess && comm.get() != nullptr, "ncclCommInitRankScalable");
    int count = -1;
    int rank = -1;
    EXPECT(ncclCommCount(comm.get(), &count) == ncclSuccess && count == g_size,
           "nId=" << ids_count << " count " << count);
    EXPECT(ncclCommUserRank(comm.get(), &rank) == ncclSuccess && rank == g_rank,
           "nId=" << ids_count << " rank " << rank);
    sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2,
           "all-reduce over ncclCommInitRankScalable nId=" + std::to_string(ids_count));
    EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  }
}

BOOST_AUTO_TEST_CASE(blocking_split_child_is_ready_when_it_returns) {
  // [nccl.h:209-215] ncclCommSplit: "Ranks with the same color will end up in the same
  // communicator. Within the new communicator, key will be used to order ranks." A NULL config
  // inherits the (blocking) parent's: the child is ready at return.
  Comm child;
  Comm parent;
  ready_world(parent, true);
  const int color = g_rank % 2;
  const ncclResult_t r = ncclCommSplit(parent.get(), color, g_rank, child.out(), nullptr);
  EXPECT(r == ncclSuccess, "blocking ncclCommSplit returned " << result_name(r));
  require_everyone(r == ncclSuccess && child.get() != nullptr, "blocking split");
  EXPECT(async_state(child.get()) == ncclSuccess, "child state " << result_name(async_state(child.get())));
  const int expected_count = color == 0 ? (g_size + 1) / 2 : g_size / 2;
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == expected_count,
         "child count " << count << ", expected " << expected_count);
  EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == g_rank / 2,
         "child rank " << rank << ", expected " << g_rank / 2);
  std::int64_t expected_sum = 0;
  for (int p = color; p < g_size; p += 2) expected_sum += p;
  sum_is(child.get(), g_rank, expected_sum, "all-reduce of parent ranks over the child");
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(non_blocking_split_publishes_child_only_when_parent_reports_success) {
  // [init.cc] "*newcomm should be NCCL_COMM_NULL until comm split fully complete"; the
  // non-blocking split is progressed on, and reported by, the parent (ncclCommGetAsyncError
  // on the parent) [usage]. Split is collective over the parent [nccl.h:209-215], so rank 0,
  // calling alone first, cannot be complete; at 1 rank the emulator's launch delay [emu] keeps
  // it in progress. The user guide has such a call return ncclInProgress [types]; NCCL
  // 2.28.9's source returns ncclSuccess (init.cc:ncclCommSplit returns ncclCommInitChildComm's
  // result, and checks.h's NCCLCHECK lets the group's ncclInProgress through). Either return
  // leaves *newcomm NULL until the parent reports ncclSuccess, which is what a caller can use.
  Comm child;
  Comm parent;
  ready_world(parent, false);
  ncclConfig_t config = make_config(false);
  const int color = g_rank % 2;
  const int key = -g_rank;  // reversed order within each colour
  ncclResult_t r = ncclNumResults;
  if (g_rank == 0) {
    r = ncclCommSplit(parent.get(), color, key, child.out(), &config);
    EXPECT(r == ncclInProgress || r == ncclSuccess,
           "non-blocking split before the peers called returned " << result_name(r));
    EXPECT(child.get() == nullptr, "*newcomm is not NULL right after a non-blocking split");
    const ncclResult_t state = async_state(parent.get());
    EXPECT(state == ncclInProgress, "the parent reports " << result_name(state) << " during the split");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) {
    r = ncclCommSplit(parent.get(), color, key, child.out(), &config);
    EXPECT(r == ncclInProgress || r == ncclSuccess, "non-blocking split returned " << result_name(r));
    // *newcomm is written from the background when the split completes [init.cc], whatever
    // the call returned: only the parent's ncclSuccess says it is there.
  }
  const ncclResult_t state = wait_comm(parent.get());
  EXPECT(state == ncclSuccess, "the parent ended the split in " << result_name(state));
  EXPECT(child.get() != nullptr, "*newcomm is still NULL after the parent reported ncclSuccess");
  require_everyone(state == ncclSuccess && child.get() != nullptr, "non-blocking split");
  EXPECT(async_state(child.get()) == ncclSuccess, "the child reports " << result_name(async_state(child.get())));
  const int expected_count = color == 0 ? (g_size + 1) / 2 : g_size / 2;
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == expected_count,
         "child count " << count << ", expected " << expected_count);
  EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == expected_count - 1 - g_rank / 2,
         "child rank " << rank << ", expected " << expected_count - 1 - g_rank / 2);
  std::int64_t expected_sum = 0;
  for (int p = color; p < g_size; p += 2) expected_sum += p;
  sum_is(child.get(), g_rank, expected_sum, "all-reduce over the non-blocking child");
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(split_with_null_config_inherits_non_blocking) {
  // [nccl.h:214-215] "If config is NULL, the new communicator will inherit the original
  // communicator's configuration": the child of a non-blocking parent is non-blocking, so a
  // split of that child (all ranks at once) comes back before it is complete, with *newcomm
  // NULL and the child reporting ncclInProgress [init.cc], [usage]; a blocking child would
  // return the grandchild ready. The emulator keeps non-blocking calls in progress for
  // PCX_EMU_LAUNCH_DELAY_US [emu], so the in-progress state is seen right after the call.
  Comm grandchild;
  Comm child;
  Comm parent;
  ready_world(parent, false);
  if (g_rank == 0) {
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
    EXPECT(r == ncclInProgress || r == ncclSuccess,
           "split of a non-blocking parent (peers absent) returned " << result_name(r));
    EXPECT(child.get() == nullptr, "*newcomm set while in progress");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) {
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
    EXPECT(r == ncclInProgress || r == ncclSuccess, "split of a non-blocking parent returned " << result_name(r));
  }
  const ncclResult_t parent_state = wait_comm(parent.get());
  EXPECT(parent_state == ncclSuccess, "the parent ended the split in " << result_name(parent_state));
  require_everyone(parent_state == ncclSuccess && child.get() != nullptr, "split with NULL config");

  const ncclResult_t r = ncclCommSplit(child.get(), 0, g_rank, grandchild.out(), nullptr);
  const bool published_at_return = grandchild.get() != nullptr;
  const ncclResult_t state_at_return = async_state(child.get());
  // A blocking child returns the split complete: grandchild set, child ncclSuccess. A
  // non-blocking one reports ncclInProgress for the launch delay [emu].
  EXPECT(state_at_return == ncclInProgress, "right after a split of the child it reports "
                                                << result_name(state_at_return) << " (*newcomm "
                                                << (published_at_return ? "set" : "NULL")
                                                << "): the child did not inherit blocking=0");
  // [init.cc] *newcomm is written when the split completes, not while it is in progress.
  if (state_at_return == ncclInProgress)
    EXPECT(!published_at_return, "the grandchild was published while the child still reports ncclInProgress");
  EXPECT(r == ncclInProgress || r == ncclSuccess,
         "a split of the non-blocking child returned " << result_name(r) << " while still in progress");
  const ncclResult_t child_state = (r == ncclSuccess || r == ncclInProgress) ? wait_comm(child.get()) : r;
  EXPECT(child_state == ncclSuccess, "the child ended its split in " << result_name(child_state));
  require_everyone(child_state == ncclSuccess && grandchild.get() != nullptr, "split of the inherited child");
  int count = -1;
  EXPECT(ncclCommCount(grandchild.get(), &count) == ncclSuccess && count == g_size, "grandchild count " << count);
  EXPECT(grandchild.destroy() == ncclSuccess, "ncclCommDestroy(grandchild)");
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(split_with_no_color_returns_null) {
  // [nccl.h:212-213] "NCCL_SPLIT_NOCOLOR as color will indicate the rank will not be part of
  // any group and will therefore return a NULL communicator." Odd ranks (and a lone rank)
  // pass it; the handle starts non-NULL to see it written.
  Comm child;
  Comm parent;
  ready_world(parent, true);
  const bool outside = g_size == 1 || g_rank % 2 == 1;
  if (outside) {
    int sentinel = 0;
    auto raw = reinterpret_cast<ncclComm_t>(&sentinel);
    const ncclResult_t r = ncclCommSplit(parent.get(), NCCL_SPLIT_NOCOLOR, g_rank, &raw, nullptr);
    EXPECT(r == ncclSuccess, "NOCOLOR split returned " << result_name(r));
    EXPECT(raw == nullptr, "NOCOLOR split left *newcomm " << static_cast<void*>(raw) << " instead of NULL");
    if (raw != nullptr && raw != reinterpret_cast<ncclComm_t>(&sentinel)) (void)ncclCommAbort(raw);
  } else {
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
    EXPECT(r == ncclSuccess, "split returned " << result_name(r));
    int count = -1;
    int rank = -1;
    if (EXPECT(child.get() != nullptr, "the coloured rank got a NULL communicator")) {
      EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == (g_size + 1) / 2, "child count " << count);
      EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == g_rank / 2, "child rank " << rank);
    }
  }
  require_everyone(g_local_ok, "NOCOLOR split");
  if (!outside) {
    std::int64_t expected_sum = 0;
    for (int p = 0; p < g_size; p += 2) expected_sum += p;
    sum_is(child.get(), g_rank, expected_sum, "all-reduce over the even ranks");
    EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  }
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(split_key_orders_child_ranks_and_ties_keep_parent_order) {
  // [comms] ncclCommSplit: "The value of key will determine the rank order, and the smaller
  // key means the smaller rank in new communicator. If keys are equal between ranks, then the
  // rank in the original communicator will be used to order ranks."
  struct KeyCase {
    const char* name;
    std::function<int(int)> key;
  };
  const std::vector<KeyCase> cases = {
      {"all keys 0", [](int) { return 0; }},
      {"reversed keys", [](int r) { return g_size - 1 - r; }},
      {"reversed pairs of equal keys", [](int r) { return (g_size - 1 - r) / 2; }},
  };
  Comm parent;
  ready_world(parent, true);
  for (const KeyCase& c : cases) {
    std::vector<int> order(static_cast<std::size_t>(g_size));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return c.key(a) < c.key(b); });
    const auto expected_rank = static_cast<int>(std::find(order.begin(), order.end(), g_rank) - order.begin());
    Comm child;
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, c.key(g_rank), child.out(), nullptr);
    EXPECT(r == ncclSuccess, c.name << ": split returned " << result_name(r));
    require_everyone(r == ncclSuccess && child.get() != nullptr, c.name);
    int rank = -1;
    EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == expected_rank,
           c.name << ": child rank " << rank << ", expected " << expected_rank);
    // The child's collectives use that order: an all-gather of parent ranks lists `order`.
    Stream stream;
    DeviceBuffer send(sizeof(std::int32_t));
    DeviceBuffer recv(order.size() * sizeof(std::int32_t));
    const std::int32_t mine = g_rank;
    std::vector<std::byte> bytes(sizeof mine);
    std::memcpy(bytes.data(), &mine, sizeof mine);
    const bool ready = EXPECT(stream.ok() && send.ok() && recv.ok() && upload(send.get(), bytes), "setup");
    const ncclResult_t g =
        ready ? ncclAllGather(send.get(), recv.get(), 1, ncclInt32, child.get(), stream.get()) : ncclInvalidUsage;
    finish_step(g, stream.get(), std::string(c.name) + ": all-gather over the child");
    const std::vector<std::byte> got = download(recv.get(), recv.size());
    std::vector<std::int32_t> gathered(order.size(), -1);
    if (got.size() == recv.size()) std::memcpy(gathered.data(), got.data(), got.size());
    EXPECT(std::equal(gathered.begin(), gathered.end(), order.begin()),
           c.name << ": the all-gather over the child is not in key order");
    EXPECT(child.destroy() == ncclSuccess, c.name << ": ncclCommDestroy(child)");
  }
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

/// At 1 rank there is no rank to exclude: NCCL rejects an empty exclusion list
/// (src/init.cc:2560-2561 of 2.28.9: PtrCheck(excludeRanksList) and excludeRanksCount > 0,
/// else ncclInvalidArgument) and gives no communicator.
void check_shrink_of_nothing_is_rejected(int flags) {
  Comm child;
  Comm parent;
  ready_world(parent, true);
  BOOST_TEST_MESSAGE("1 rank: no rank can be excluded; an empty exclusion list must be rejected");
  const ncclResult_t r = ncclCommShrink(parent.get(), nullptr, 0, child.out(), nullptr, flags);
  EXPECT(r == ncclInvalidArgument, "ncclCommShrink excluding nothing returned " << result_name(r));
  EXPECT(child.get() == nullptr, "ncclCommShrink excluding nothing gave a communicator");
  EXPECT(parent.abort() == ncclSuccess, "ncclCommAbort(parent)");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(shrink_default_renumbers_survivors_in_parent_order) {
  // [nccl.h:219-224] ncclCommShrink: "Ranks in excludeRanksList will be removed form the
  // existing communicator. Within the new communicator, ranks will be re-ordered to fill the
  // gap of removed ones." Only survivors call it. Rank 1 is excluded (a gap in the middle).
  if (g_size < 2) {
    check_shrink_of_nothing_is_rejected(NCCL_SHRINK_DEFAULT);
    return;
  }
  Comm child;
  Comm parent;
  ready_world(parent, true);
  std::vector<int> excluded = {1};
  const bool survivor = g_rank != 1;
  if (survivor) {
    const ncclResult_t r = ncclCommShrink(parent.get(), excluded.data(), static_cast<int>(excluded.size()), child.out(),
                                          nullptr, NCCL_SHRINK_DEFAULT);
    EXPECT(r == ncclSuccess, "ncclCommShrink(NCCL_SHRINK_DEFAULT) returned " << result_name(r));
    if (EXPECT(child.get() != nullptr, "ncclCommShrink gave a NULL communicator")) {
      const int expected_rank = g_rank > 1 ? g_rank - 1 : g_rank;
      int count = -1;
      int rank = -1;
      EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == g_size - 1,
             "shrunk count " << count << ", expected " << g_size - 1);
      EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == expected_rank,
             "shrunk rank " << rank << ", expected " << expected_rank);
    }
  }
  require_everyone(g_local_ok, "ncclCommShrink");
  if (survivor) {
    const std::int64_t expected = std::int64_t{g_size} * (g_size - 1) / 2 - 1;
    sum_is(child.get(), g_rank, expected, "all-reduce of parent ranks over the survivors");
    EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(shrunk)");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

// After a shrink that left out the last rank: the survivors sum their ranks over the
// shrunk communicator, then every rank releases both.
void survivors_sum_then_release(Comm& child, Comm& parent, bool survivor) {
  if (survivor) {
    const std::int64_t expected = std::int64_t{g_size} * (g_size - 1) / 2 - (g_size - 1);
    sum_is(child.get(), g_rank, expected, "all-reduce over the survivors");
    EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(shrunk)");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT(parent.abort() == ncclSuccess, "ncclCommAbort(parent)");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(shrink_abort_terminates_hung_parent_operations) {
  // [nccl.h:70] NCCL_SHRINK_ABORT: "First, terminate ongoing parent operations, and then shrink
  // the parent communicator". The last rank is excluded and never joins an all-reduce the
  // survivors started on the parent; the shrink must succeed and the survivors' streams come
  // free.
  if (g_size < 2) {
    check_shrink_of_nothing_is_rejected(NCCL_SHRINK_ABORT);
    return;
  }
  Stream stream;
  DeviceBuffer buffer(64 * sizeof(float));
  Comm child;
  Comm parent;
  ready_world(parent, true);
  std::vector<int> excluded = {g_size - 1};
  const bool survivor = g_rank != g_size - 1;
  if (survivor) {
    const ncclResult_t r =
        ncclAllReduce(buffer.get(), buffer.get(), 64, ncclFloat32, ncclSum, parent.get(), stream.get());
    EXPECT(r == ncclSuccess, "ncclAllReduce on the parent returned " << result_name(r));
    std::this_thread::sleep_for(milliseconds(50));
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the all-reduce without the last rank completed");
    const ncclResult_t s = ncclCommShrink(parent.get(), excluded.data(), static_cast<int>(excluded.size()), child.out(),
                                          nullptr, NCCL_SHRINK_ABORT);
    EXPECT(s == ncclSuccess, "ncclCommShrink(NCCL_SHRINK_ABORT) returned " << result_name(s));
    if (EXPECT(child.get() != nullptr, "ncclCommShrink gave a NULL communicator")) {
      int count = -1;
      int rank = -1;
      EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == g_size - 1, "shrunk count " << count);
      EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == g_rank, "shrunk rank " << rank);
    }
    const cudaError_t e = wait_stream(stream.get());
    EXPECT(e != cudaErrorNotReady, "the parent's all-reduce still holds its stream after NCCL_SHRINK_ABORT");
  }
  require_everyone(g_local_ok, "ncclCommShrink(NCCL_SHRINK_ABORT)");
  survivors_sum_then_release(child, parent, survivor);
}

// [nccl.h:200-207] ncclCommRevoke "stops all in-flight operations and marks communicator
// state as ncclInProgress. The state will change to ncclSuccess when the communicator is
// quiescent; then, management operations (destroy, split, shrink) can proceed safely.
// Calling ncclCommFinalize after revoke is invalid ... revokeFlags must be
// NCCL_REVOKE_DEFAULT (0)." src/init.cc ncclCommRevoke: a NULL communicator is accepted;
// a second revoke is ncclInvalidArgument. src/enqueue.cc ncclEnqueueCheck: an operation
// on a revoked communicator is ncclInvalidUsage. src/init.cc ncclCommFinalize: its
// refusal stays as a non-blocking communicator's error. The last rank never joins an
// all-reduce the others started; they revoke, then shrink it out.
void revoke_then_shrink(bool blocking) {
  EXPECT(ncclCommRevoke(nullptr, NCCL_REVOKE_DEFAULT) == ncclSuccess, "ncclCommRevoke(NULL)");
  Stream stream;
  DeviceBuffer buffer(64 * sizeof(float));
  Comm child;
  Comm parent;
  ready_world(parent, blocking);
  EXPECT(ncclCommRevoke(parent.get(), 1) == ncclInvalidArgument, "ncclCommRevoke with revokeFlags 1");
  const bool survivor = g_size == 1 || g_rank != g_size - 1;
  const auto all_reduce = [&] {
    return ncclAllReduce(buffer.get(), buffer.get(), 64, ncclFloat32, ncclSum, parent.get(), stream.get());
  };
  if (survivor) {
    if (g_size > 1) {
      const ncclResult_t a = all_reduce();
      EXPECT(a == ncclSuccess || a == ncclInProgress, "ncclAllReduce on the parent returned " << result_name(a));
      EXPECT(wait_comm(parent.get()) == ncclSuccess, "the all-reduce was not enqueued");
    }
    const ncclResult_t r = ncclCommRevoke(parent.get(), NCCL_REVOKE_DEFAULT);
    EXPECT(r == ncclSuccess || (!blocking && r == ncclInProgress), "ncclCommRevoke returned " << result_name(r));
    EXPECT(wait_comm(parent.get()) == ncclSuccess, "the revoked communicator did not become quiescent");
    EXPECT(wait_stream(stream.get()) != cudaErrorNotReady, "the revoked all-reduce still holds its stream");
    EXPECT(ncclCommRevoke(parent.get(), NCCL_REVOKE_DEFAULT) == ncclInvalidArgument, "a second ncclCommRevoke");
    EXPECT(all_reduce() == ncclInvalidUsage, "an all-reduce on the revoked communicator");
    EXPECT(wait_comm(parent.get()) == ncclSuccess, "a refused operation changed the communicator's state");
    if (g_size > 1) {
      std::vector<int> excluded = {g_size - 1};
      const ncclResult_t s =
          ncclCommShrink(parent.get(), excluded.data(), 1, child.out(), nullptr, NCCL_SHRINK_DEFAULT);
      EXPECT(s == ncclSuccess || s == ncclInProgress, "ncclCommShrink after revoke returned " << result_name(s));
      EXPECT(wait_comm(parent.get()) == ncclSuccess && child.get() != nullptr, "the shrink after revoke");
    }
    EXPECT(ncclCommFinalize(parent.get()) == ncclInvalidArgument, "ncclCommFinalize after ncclCommRevoke");
    ncclResult_t async = ncclSuccess;
    EXPECT(ncclCommGetAsyncError(parent.get(), &async) == ncclSuccess &&
               async == (blocking ? ncclSuccess : ncclInvalidArgument),
           "the error after a refused ncclCommFinalize is " << result_name(async));
  }
  require_everyone(g_local_ok, "ncclCommRevoke then ncclCommShrink");
  survivors_sum_then_release(child, parent, survivor && g_size > 1);
}

BOOST_AUTO_TEST_CASE(revoke_stops_hung_operations_and_then_shrink_proceeds) { revoke_then_shrink(false); }

BOOST_AUTO_TEST_CASE(blocking_revoke_returns_once_quiescent_and_then_shrink_proceeds) { revoke_then_shrink(true); }

BOOST_AUTO_TEST_CASE(finalize_then_destroy_releases_a_blocking_communicator) {
  // [nccl.h:183-193] ncclCommFinalize "flushes all issued communications ... then, calling
  // ncclCommDestroy can locally free the rest of the resources".
  Comm comm;
  ready_world(comm, true);
  sum_is(comm.get(), 1, g_size, "all-reduce before finalize");
  const ncclResult_t f = ncclCommFinalize(comm.get());
  EXPECT(f == ncclSuccess, "blocking ncclCommFinalize returned " << result_name(f));
  EXPECT(async_state(comm.get()) == ncclSuccess, "state after finalize " << result_name(async_state(comm.get())));
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy after finalize");
  EXPECT(pcxemu_live_communicators() == comms_at_start, "live communicators " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(non_blocking_finalize_is_polled_to_success_then_destroyed) {
  // [nccl.h:183-187] ncclCommFinalize "marks communicator state as ncclInProgress. The state
  // will change to ncclSuccess when the communicator is globally quiescent".
  Comm comm;
  ready_world(comm, false);
  sum_is(comm.get(), 1, g_size, "all-reduce before finalize");
  const ncclResult_t f = ncclCommFinalize(comm.get());
  EXPECT(f == ncclInProgress || f == ncclSuccess, "non-blocking ncclCommFinalize returned " << result_name(f));
  const ncclResult_t state = wait_comm(comm.get());
  EXPECT(state == ncclSuccess, "finalize ended in " << result_name(state));
  require_everyone(state == ncclSuccess, "non-blocking finalize");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy after finalize");
  EXPECT(pcxemu_live_communicators() == comms_at_start, "live communicators " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(destroy_without_finalize_releases_the_communicator) {
  // [nccl.h:191-192] ncclCommDestroy "Frees local resources associated with communicator object."
  Comm comm;
  ready_world(comm, true);
  sum_is(comm.get(), 1, g_size, "all-reduce before destroy");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  EXPECT(pcxemu_live_communicators() == comms_at_start, "live communicators " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(communicator_charges_its_device_memory_while_it_lives) {
  // [emu] PCX_EMU_COMM_MEMORY: bytes every live communicator charges to its device (default
  // 64M); [cudart] cudaMemGetInfo reports the device's free memory.
  const std::size_t charge = size_from_env("PCX_EMU_COMM_MEMORY", std::size_t{64} << 20U);
  std::size_t free0 = 0;
  std::size_t total = 0;
  EXPECT(cudaMemGetInfo(&free0, &total) == cudaSuccess, "cudaMemGetInfo");
  Comm child;
  Comm comm;
  ready_world(comm, true);
  std::size_t free1 = 0;
  EXPECT(cudaMemGetInfo(&free1, &total) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free0 - free1 == charge, "a communicator charged " << static_cast<long long>(free0 - free1) << " bytes, "
                                                            << "PCX_EMU_COMM_MEMORY gives " << charge);
  const ncclResult_t r = ncclCommSplit(comm.get(), 0, g_rank, child.out(), nullptr);
  EXPECT(r == ncclSuccess, "split returned " << result_name(r));
  std::size_t free2 = 0;
  EXPECT(cudaMemGetInfo(&free2, &total) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free0 - free2 == 2 * charge, "two communicators charged " << static_cast<long long>(free0 - free2));
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  std::size_t free3 = 0;
  EXPECT(cudaMemGetInfo(&free3, &total) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free3 == free0, "after destroy free is " << free3 << ", was " << free0);
}

BOOST_AUTO_TEST_CASE(two_communicators_of_different_sizes_work_alternately) {
  // Independent communicators [usage, "Creating more communicators"]: operations on each are
  // matched only with the same communicator's operations. World and a half (first or second
  // half of the ranks), each on its own stream, enqueued alternately before any wait.
  Stream world_stream;
  Stream half_stream;
  constexpr int kRounds = 4;
  constexpr std::size_t count = 64;
  std::vector<std::unique_ptr<DeviceBuffer>> world_buffers;
  std::vector<std::unique_ptr<DeviceBuffer>> half_buffers;
  for (int i = 0; i < kRounds; ++i) {
    world_buffers.push_back(std::make_unique<DeviceBuffer>(count * sizeof(std::int32_t)));
    half_buffers.push_back(std::make_unique<DeviceBuffer>(count * sizeof(std::int32_t)));
  }
  Comm half;
  Comm world;
  ready_world(world, true);
  const int first_half = (g_size + 1) / 2;
  const int colour = g_rank < first_half ? 0 : 1;
  const ncclResult_t s = ncclCommSplit(world.get(), colour, g_rank, half.out(), nullptr);
  EXPECT(s == ncclSuccess, "split returned " << result_name(s));
  require_everyone(s == ncclSuccess && half.get() != nullptr, "splitting the half");
  auto value = [](int rank, int round, std::size_t i) { return (rank + 1) * (round + 1) + static_cast<int>(i); };
  bool enqueued = true;
  for (int round = 0; round < kRounds; ++round) {
    for (const bool on_world : {true, false}) {
      DeviceBuffer& b =
          on_world ? *world_buffers[static_cast<std::size_t>(round)] : *half_buffers[static_cast<std::size_t>(round)];
      std::vector<std::int32_t> host(count);
      for (std::size_t i = 0; i < count; ++i) host[i] = value(g_rank, round, i) * (on_world ? 1 : 10);
      std::vector<std::byte> bytes(b.size());
      std::memcpy(bytes.data(), host.data(), bytes.size());
      enqueued = EXPECT(b.ok() && upload(b.get(), bytes), "setup") && enqueued;
      const ncclResult_t r =
          ncclAllReduce(b.get(), b.get(), count, ncclInt32, ncclSum, on_world ? world.get() : half.get(),
                        on_world ? world_stream.get() : half_stream.get());
      enqueued =
          EXPECT(r == ncclSuccess, "round " << round << (on_world ? " world" : " half") << ": " << result_name(r)) &&
          enqueued;
    }
  }
  const cudaError_t we = wait_stream(world_stream.get());
  const cudaError_t he = wait_stream(half_stream.get());
  EXPECT(we == cudaSuccess && he == cudaSuccess, "streams ended in " << error_name(we) << ", " << error_name(he));
  require_everyone(enqueued && we == cudaSuccess && he == cudaSuccess, "alternating all-reduces");
  const int lo = colour == 0 ? 0 : first_half;
  const int hi = colour == 0 ? first_half : g_size;
  for (int round = 0; round < kRounds; ++round) {
    for (const bool on_world : {true, false}) {
      DeviceBuffer& b =
          on_world ? *world_buffers[static_cast<std::size_t>(round)] : *half_buffers[static_cast<std::size_t>(round)];
      const std::vector<std::byte> bytes = download(b.get(), b.size());
      std::vector<std::int32_t> got(count, -1);
      if (bytes.size() == b.size()) std::memcpy(got.data(), bytes.data(), bytes.size());
      bool right = true;
      for (std::size_t i = 0; i < count; ++i) {
        std::int32_t want = 0;
        for (int p = on_world ? 0 : lo; p < (on_world ? g_size : hi); ++p)
          want += value(p, round, i) * (on_world ? 1 : 10);
        right = right && got[i] == want;
      }
      EXPECT(right, "round " << round << (on_world ? " world" : " half") << " all-reduce is wrong");
    }
  }
  EXPECT(half.destroy() == ncclSuccess, "ncclCommDestroy(half)");
  EXPECT(world.destroy() == ncclSuccess, "ncclCommDestroy(world)");
}

BOOST_AUTO_TEST_SUITE_END()
