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
  std::string id;  // 32 hex digits, the same on every rank
  int nranks = 0;
  int rank = 0;
  int device = 0;
  pcxemu::Config config;
  pcxemu::Faults faults;

  // src/init.cc:ncclCommGetAsyncError reads two results: the communicator's own, which
  // each call's background job overwrites when it ends (ncclInProgress until then), and
  // its operations' (the proxy's), which stays once set.
  std::atomic<ncclResult_t> state{ncclInProgress};
  std::atomic<ncclResult_t> failure{ncclSuccess};
  std::atomic<bool> aborted{false};   // set by ncclCommAbort: every wait gives up
  std::atomic<bool> released{false};  // destroyed or aborted: the handle is dead
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

  std::atomic<int> pending{0};  // stream tasks not yet finished
  std::mutex mutex;             // guards jobs
  std::vector<std::thread> jobs;
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
/// Runs @p job for @p comm as NCCL runs a call's job (see nccl.cpp).
ncclResult_t run(ncclComm* comm, std::function<ncclResult_t()> job);

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

/// What ncclGroupStart collects on this thread until the outermost ncclGroupEnd
/// (src/group.cc): operations, and the jobs of init, split, shrink and destroy.
struct Group {
  int depth = 0;
  ncclResult_t error = ncclSuccess;
  int blocking = -1;  // of the first job's communicator; jobs of both kinds may not mix
  std::vector<Launch> launches;
  std::vector<std::pair<ncclComm*, std::function<ncclResult_t()>>> jobs;
  std::vector<const ncclComm*> numbered;  // communicators whose operation count this group took
};
Group& group();

/// Puts a group's operations on one communicator on its stream (collectives.cpp);
/// @p numbered lists the communicators that already counted this group as an operation.
ncclResult_t launch(Launch work, std::vector<const ncclComm*>& numbered);

}  // namespace pcxemu
