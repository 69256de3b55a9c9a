#pragma once
// What the emulator's communicators (nccl.cpp) and collectives (collectives.cpp) share.

#include <cstdint>
#include <string>
#include <vector>

#include "emulator.hpp"

namespace pcxemu {

/// What a communicator's config sets that the emulator uses; a NULL config of a split
/// inherits it (src/init.cc:ncclCommInitChildComm, copyCommConfig).
struct Config {
  bool blocking = true;
  std::string name;
};

struct GroupJob;

/// PCX_EMU_FAULT, parsed (see pcx_emulator.h).
struct Fault {
  std::string kind;
  std::uint64_t k = 0;
  int rank = -1;  // -1: every rank
};
struct Faults {
  std::vector<Fault> list;
  /// The fault of @p kind that applies to @p rank: its K, 1 for the faults without one,
  /// 0 when there is none.
  [[nodiscard]] std::uint64_t find(const std::string& kind, int rank) const;
};

}  // namespace pcxemu

/// One rank's communicator. Handles are never freed, so that a handle used after
/// ncclCommDestroy or ncclCommAbort gives an error rather than undefined behaviour.
struct ncclComm {
  // Set when its initialization starts (init) or completes (a split's child).
  std::string id;  // 32 hex digits, the same on every rank
  int nranks = 0;
  int rank = 0;
  int device = 0;
  pcxemu::Config config;
  pcxemu::Faults faults;

  // src/init.cc:ncclCommGetAsyncError reads two results: the communicator's own
  // (asyncResult: zero, ncclSuccess, when allocated; ncclInProgress from the end of the
  // group that launches a job for it until that group's job ends, then its result), and
  // its operations' (the proxy's), which stays once set.
  std::atomic<ncclResult_t> state{ncclSuccess};
  std::atomic<ncclResult_t> failure{ncclSuccess};
  std::atomic<bool> initialized{false};  // its members have met (pids are set)
  std::atomic<bool> aborted{false};      // the abort flag: every wait gives up
  std::atomic<bool> released{false};     // destroyed or aborted: the handle is dead
  bool finalized = false;
  bool revoked = false;
  std::vector<pid_t> pids;  // by rank, once initialized

  // Counters of the calling thread, identical on every rank because ranks call in the
  // same order: they name each operation's shared-memory segments.
  std::uint64_t collectives = 0;
  std::uint64_t children = 0;
  std::uint64_t operations = 0;  // for PCX_EMU_FAULT's K
  std::vector<std::uint64_t> sent;
  std::vector<std::uint64_t> received;

  std::atomic<int> pending{0};                  // stream tasks not yet finished
  std::mutex mutex;                             // guards group_job
  std::shared_ptr<pcxemu::GroupJob> group_job;  // the last non-blocking group launched for it
};

namespace pcxemu {

/// Records @p message as the text of ncclGetLastError and returns @p code.
ncclResult_t fail(ncclResult_t code, const std::string& message);
/// src/misc/argcheck.cc:CommCheck, plus a dead-handle check NCCL cannot make.
ncclResult_t check_comm(const ncclComm* comm, const char* call);
/// src/init.cc:ncclCommEnsureReady.
ncclResult_t ensure_ready(const ncclComm* comm, const char* call);
/// Sets the lasting error of @p comm's operations.
void set_failure(ncclComm* comm, ncclResult_t code, const std::string& message);
/// Waits until @p comm is aborted: what a rank that never arrives looks like.
void hang(const ncclComm* comm);

enum class Kind { all_reduce, reduce, broadcast, all_gather, reduce_scatter, send, recv };

/// One operation, as recorded at the call.
struct Op {
  Kind kind;
  const void* send;
  void* recv;
  std::size_t count;
  ncclDataType_t type;
  ncclRedOp_t op;
  int peer;         // the root, or the peer of a send or recv
  std::string tag;  // names its shared-memory segments, with the publishing rank
};

/// A group's operations on one communicator and stream.
struct Launch {
  ncclComm* comm;
  cudaStream_t stream;
  std::vector<Op> ops;
};

/// The background work of a call (init, split, shrink, finalize, revoke, destroy, abort),
/// run by the group that launches it.
using Job = std::function<ncclResult_t()>;

/// What ncclGroupStart collects on this thread until the outermost ncclGroupEnd
/// (src/group.cc; every call is inside a group of its own, ncclGroupStartInternal).
struct Group {
  int depth = 0;
  ncclResult_t error = ncclSuccess;  // ncclGroupError: the first error of a call in it
  int blocking = -1;                 // ncclGroupBlocking: -1 until a communicator sets it
  std::vector<Launch> launches;
  std::vector<std::pair<ncclComm*, Job>> jobs;
  std::vector<const ncclComm*> numbered;  // communicators whose operation count this group took
};
Group& group();

/// A launched non-blocking group (src/group.cc ncclGroupJob): its communicators report
/// ncclInProgress until every job of it has ended, then its one result; aborting any of
/// them while it runs aborts all of them (ncclGroupJobAbort).
struct GroupJob {
  std::vector<ncclComm*> comms;
  std::atomic<bool> done{false};
  std::thread thread;
  std::mutex mutex;  // guards the join

  /// Waits for the group's thread, unless called from it.
  void join();
};

/// Queues @p job for @p comm in this thread's group (src/group.cc:ncclAsyncLaunch): a job
/// of a non-blocking communicator may not join a blocking one's group (ncclInvalidArgument,
/// recorded for the group); @p reclaim (destroy, abort) makes the group blocking.
ncclResult_t queue(ncclComm* comm, Job job, bool reclaim = false);

/// ncclGroupEndInternal: the outermost end launches what the group collected.
ncclResult_t end_group();

/// An API call as NCCL makes it: @p body between ncclGroupStartInternal and
/// ncclGroupEndInternal, its error recorded for the group (include/group.h
/// ncclGroupErrCheck). Returns the body's result, or the group end's error.
ncclResult_t in_group(const std::function<ncclResult_t()>& body);

/// Waits until @p called + PCX_EMU_LAUNCH_DELAY_US, or until @p aborted() is true: no
/// non-blocking call ends sooner, so that code which assumes one is done when it returns
/// fails every time.
void wait_launch_delay(Clock::time_point called, const std::function<bool()>& aborted);

/// Waits until @p comm's last group job has ended.
void join_group(ncclComm* comm);

/// ncclGroupJobAbort: sets the abort flag of every communicator of @p comm's group job if
/// it is still running, then waits for it.
void abort_group(ncclComm* comm);

/// Puts a group's operations on one communicator on its stream (collectives.cpp);
/// @p numbered lists the communicators that already counted this group as an operation.
ncclResult_t launch(Launch work, std::vector<const ncclComm*>& numbered);

}  // namespace pcxemu
