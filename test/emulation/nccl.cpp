// NCCL's communicators, group calls and collectives, on the host, following NCCL 2.28's
// own source (src/init.cc, src/group.cc, src/enqueue.cc, src/misc/argcheck.cc, cited as
// file:function) rather than what any caller expects.
//
// A communicator's ranks are processes (or threads) of one machine. They meet through
// shared memory named after the unique id (shm.cpp); every operation's data travels in
// shared memory; collectives run on the caller's stream (cuda_runtime.cpp), so they
// complete later, and never when a peer does not come. Not modelled: performance,
// algorithms and protocols, user buffer registration, custom reduction operations,
// ncclCommInitAll, ncclCommRevoke, windows and device APIs.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <string_view>

#include "emulator.hpp"
#include "pcx_emulator.h"

using pcxemu::Clock;

namespace pcxemu {
namespace {

constexpr char kIdMagic[8] = "pcxemu1";

// What a communicator's config sets (src/init.cc parseCommConfig). pcx reads none of
// these back, but NULL configs of a split inherit them (init.cc:ncclCommInitChildComm,
// copyCommConfig).
struct Config {
  bool blocking = true;
  std::string name;
};

// PCX_EMU_FAULT, parsed (see pcx_emulator.h).
struct Fault {
  std::string kind;
  std::uint64_t k = 0;
  int rank = -1;  // -1: every rank
};

struct Faults {
  std::vector<Fault> list;
  [[nodiscard]] bool has(std::string_view kind, int rank) const {
    return std::any_of(list.begin(), list.end(),
                       [&](const Fault& f) { return f.kind == kind && (f.rank < 0 || f.rank == rank); });
  }
  [[nodiscard]] std::uint64_t nth(std::string_view kind, int rank) const {
    for (const Fault& f : list)
      if (f.kind == kind && (f.rank < 0 || f.rank == rank)) return f.k;
    return 0;
  }
};

std::optional<Faults> read_faults(std::string& error) {
  Faults faults;
  const char* text = std::getenv("PCX_EMU_FAULT");
  std::string_view rest = text ? text : "";
  while (!rest.empty()) {
    const std::string item(rest.substr(0, rest.find(',')));
    rest.remove_prefix(std::min(rest.size(), item.size() + 1));
    Fault f;
    char kind[32] = {};
    unsigned long long k = 0;
    int rank = -1;
    int used = 0;
    const bool counted = item.starts_with("op_");
    const int fields = counted ? std::sscanf(item.c_str(), "%31[a-z_]:%llu%n@%d%n", kind, &k, &used, &rank, &used)
                               : std::sscanf(item.c_str(), "%31[a-z_]%n@%d%n", kind, &used, &rank, &used);
    f.kind = kind;
    f.k = k;
    f.rank = rank;
    const bool known = f.kind == "init_hang" || f.kind == "split_hang" || f.kind == "op_hang" || f.kind == "op_error";
    if (!known || fields < (counted ? 2 : 1) || static_cast<std::size_t>(used) != item.size() ||
        (counted && k == 0) || (fields == (counted ? 3 : 2) && rank < 0)) {
      error = "PCX_EMU_FAULT item '" + item +
              "' is not init_hang[@R], split_hang[@R], op_hang:K[@R] or op_error:K[@R] (K >= 1, R >= 0)";
      return std::nullopt;
    }
    faults.list.push_back(f);
  }
  return faults;
}

}  // namespace
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

  // The asynchronous state of src/init.cc:ncclCommGetAsyncError: ncclInProgress while a
  // non-blocking call runs, then ncclSuccess or the error, which stays.
  std::atomic<ncclResult_t> state{ncclInProgress};
  std::atomic<bool> aborted{false};   // set by ncclCommAbort: every wait gives up
  std::atomic<bool> released{false};  // destroyed or aborted: the handle is dead
  bool finalized = false;
  std::vector<pid_t> pids;  // by rank, once initialized

  // Counters of the calling thread, identical on every rank because ranks call in the
  // same order: they name each operation's shared-memory segments.
  std::uint64_t collectives = 0;
  std::uint64_t children = 0;
  std::uint64_t operations = 0;  // for PCX_EMU_FAULT's K
  std::vector<std::uint64_t> sent;
  std::vector<std::uint64_t> received;

  std::atomic<int> pending{0};  // stream tasks not yet finished
  std::mutex mutex;  // guards jobs
  std::vector<std::thread> jobs;
};

namespace pcxemu {
namespace {

struct Registry {
  std::mutex mutex;
  std::set<const ncclComm*> known;
  std::vector<std::unique_ptr<ncclComm>> all;
  int live = 0;
};

Registry& registry() {
  static Registry* const instance = new Registry;  // never destroyed: see emulator.hpp
  return *instance;
}

// src/init.cc:ncclGetLastError: one text for the process, which every failure replaces.
struct LastError {
  std::mutex mutex;
  std::string text;
};
LastError& last_error() {
  static LastError* const instance = new LastError;  // never destroyed: see emulator.hpp
  return *instance;
}

ncclResult_t fail(ncclResult_t code, const std::string& message) {
  std::lock_guard lock(last_error().mutex);
  last_error().text = message;
  return code;
}

// src/misc/argcheck.cc:CommCheck, plus a dead-handle check NCCL cannot make.
ncclResult_t check_comm(const ncclComm* comm, const char* call) {
  if (comm == nullptr) return fail(ncclInvalidArgument, std::string(call) + " : comm argument is NULL");
  {
    std::lock_guard lock(registry().mutex);
    if (!registry().known.contains(comm)) {
      return fail(ncclInvalidArgument, std::string(call) + " : not a communicator");
    }
  }
  if (comm->released.load()) {
    return fail(ncclInvalidArgument, std::string(call) + " : communicator was destroyed or aborted");
  }
  return ncclSuccess;
}

// src/init.cc:ncclCommEnsureReady: a communicator still in progress may not be used
// (ncclInvalidArgument), and one with an error keeps returning it.
ncclResult_t ensure_ready(const ncclComm* comm, const char* call) {
  if (const ncclResult_t e = check_comm(comm, call)) return e;
  const ncclResult_t state = comm->state.load();
  if (state == ncclInProgress) {
    return fail(ncclInvalidArgument,
                std::string(call) + " : Attempt to use communicator before the previous operation returned ncclSuccess");
  }
  return state;
}

// src/init.cc:parseCommConfig. Only the magic and blocking are checked; the tuning fields
// mean nothing here.
ncclResult_t parse_config(const ncclConfig_t* given, Config& out) {
  if (given == nullptr) return ncclSuccess;
  if (given->magic != 0xcafebeef) return fail(ncclInvalidArgument, "ncclConfig_t not initialized with NCCL_CONFIG_INITIALIZER");
  if (given->blocking != NCCL_CONFIG_UNDEF_INT && given->blocking != 0 && given->blocking != 1) {
    return fail(ncclInvalidArgument, "config.blocking " + std::to_string(given->blocking) + " is not 0 or 1");
  }
  out.blocking = given->blocking != 0;  // NCCL_CONFIG_UNDEF_INT: NCCL's default, blocking
  out.name = given->commName != nullptr ? given->commName : "";
  return ncclSuccess;
}

std::string hex(const unsigned char* bytes, std::size_t count) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < count; ++i) out += {kDigits[bytes[i] >> 4], kDigits[bytes[i] & 15]};
  return out;
}

// The id of a child: a hash of the parent's id and the split, the same on every rank.
std::string derive(const std::string& parent, const std::string& what) {
  std::uint64_t h[2] = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
  for (const char c : parent + "/" + what) {
    for (auto& x : h) x = (x ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return hex(reinterpret_cast<const unsigned char*>(h), sizeof(h));
}

ncclComm* make_comm(std::string id, int nranks, int rank, int device, Config config, Faults faults) {
  auto made = std::make_unique<ncclComm>();
  made->id = std::move(id);
  made->nranks = nranks;
  made->rank = rank;
  made->device = device;
  made->config = std::move(config);
  made->faults = std::move(faults);
  made->sent.assign(static_cast<std::size_t>(nranks), 0);
  made->received.assign(static_cast<std::size_t>(nranks), 0);
  ncclComm* comm = made.get();
  {
    std::lock_guard lock(registry().mutex);
    registry().known.insert(comm);
    registry().all.push_back(std::move(made));
    ++registry().live;
  }
  charge_communicator(device, 1);
  return comm;
}

void set_error(ncclComm* comm, ncclResult_t code, const std::string& message) {
  fail(code, message);
  comm->state.store(code);
}

// Ends a non-blocking call: no sooner than the launch delay after it started, so that
// code which assumes a non-blocking call is done when it returns fails every time.
void finish(ncclComm* comm, ncclResult_t code, Clock::time_point started) {
  for (Backoff backoff; Clock::now() < started + settings().launch_delay && !comm->aborted.load();) backoff.pause();
  ncclResult_t expected = ncclInProgress;
  comm->state.compare_exchange_strong(expected, code);
}

void join_jobs(ncclComm* comm) {
  std::vector<std::thread> jobs;
  {
    std::lock_guard lock(comm->mutex);
    jobs.swap(comm->jobs);
  }
  for (std::thread& t : jobs) t.join();
}

// Runs `job` (which returns the call's result) inline for a blocking communicator, or on
// a thread of the communicator's for a non-blocking one, which then reports
// ncclInProgress until it is done (src/group.cc:ncclGroupEndInternal, "nonblocking group").
ncclResult_t run(ncclComm* comm, std::function<ncclResult_t()> job) {
  join_jobs(comm);  // callers checked the communicator is ready, so earlier jobs have ended
  comm->state.store(ncclInProgress);
  if (comm->config.blocking) {
    const ncclResult_t code = job();
    ncclResult_t expected = ncclInProgress;
    comm->state.compare_exchange_strong(expected, code);
    return code;
  }
  const Clock::time_point started = Clock::now();
  std::lock_guard lock(comm->mutex);
  comm->jobs.emplace_back([comm, job = std::move(job), started] { finish(comm, job(), started); });
  return ncclInProgress;
}

// Waits until the communicator is aborted: what a rank that never arrives looks like.
ncclResult_t hang(const ncclComm* comm) {
  for (Backoff backoff; !comm->aborted.load();) backoff.pause();
  return ncclInvalidUsage;
}

void release(ncclComm* comm) {
  join_jobs(comm);
  if (comm->released.exchange(true)) return;
  charge_communicator(comm->device, -1);
  std::lock_guard lock(registry().mutex);
  --registry().live;
}

// The members meet (rendezvous) unless a fault says this rank never arrives.
ncclResult_t join(ncclComm* comm) {
  if (comm->faults.has("init_hang", comm->rank)) return hang(comm);
  std::string error;
  std::vector<pid_t> pids = rendezvous(comm->id, comm->nranks, comm->rank, comm->aborted, error);
  if (pids.empty()) {
    if (comm->aborted.load()) return ncclInvalidUsage;
    set_error(comm, ncclSystemError, error);
    return fail(ncclSystemError, error);
  }
  comm->pids = std::move(pids);
  return ncclSuccess;
}

// src/init.cc:ncclCommInitRankDev: *newcomm is set before the (possibly asynchronous)
// initialization starts; the device is the caller's current one.
ncclResult_t init(ncclComm_t* newcomm, int nranks, const ncclUniqueId* ids, int nids, int rank,
                  const ncclConfig_t* given) {
  if (newcomm == nullptr) return fail(ncclInvalidArgument, "CommInitRank : newcomm argument is NULL");
  *newcomm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return fail(ncclInvalidArgument, "Invalid rank requested : " + std::to_string(rank) + "/" + std::to_string(nranks));
  }
  if (ids == nullptr || nids < 1 || nids > nranks) {  // src/init.cc:ncclCommInitRankDev
    return fail(ncclInvalidArgument, "CommInitRank : " + std::to_string(nids) + " unique ids for " +
                                         std::to_string(nranks) + " ranks (1 to nranks are allowed)");
  }
  std::string id;
  for (int i = 0; i < nids; ++i) {
    if (std::memcmp(ids[i].internal, kIdMagic, sizeof(kIdMagic)) != 0) {
      return fail(ncclInvalidArgument, "CommInitRank : unique id was not made by ncclGetUniqueId");
    }
    id += hex(reinterpret_cast<const unsigned char*>(ids[i].internal) + sizeof(kIdMagic), 16);
  }
  if (nids > 1) id = derive(id, "scalable");
  Config config;
  if (const ncclResult_t e = parse_config(given, config)) return e;
  if (settings().devices == 0) return fail(ncclUnhandledCudaError, "Cuda failure 'no CUDA-capable device is detected'");
  std::string error;
  std::optional<Faults> faults = read_faults(error);
  if (!faults) return fail(ncclInvalidArgument, error);
  sweep_dead_segments();
  ncclComm* comm = make_comm(id, nranks, rank, current_device(), config, *faults);
  *newcomm = comm;
  return run(comm, [comm] { return join(comm); });
}

struct Member {
  std::int32_t colour;
  std::int32_t key;
};

// Every rank of `parent` in `ranks` learns every such rank's record: what ncclCommSplit
// and ncclCommShrink exchange. Returns false if aborted.
bool exchange(ncclComm* parent, const std::string& tag, const std::vector<int>& ranks, Member mine,
              std::vector<Member>& all, std::string& error) {
  all.assign(static_cast<std::size_t>(parent->nranks), Member{NCCL_SPLIT_NOCOLOR, 0});
  all[static_cast<std::size_t>(parent->rank)] = mine;
  const auto pid = [&](int r) { return parent->pids[static_cast<std::size_t>(r)]; };
  if (!publish(segment_name(pid(parent->rank), parent->id, tag + "." + std::to_string(parent->rank)), &mine,
               sizeof(mine), static_cast<int>(ranks.size()) - 1, error)) {
    return false;
  }
  for (const int r : ranks) {
    if (r == parent->rank) continue;
    const auto read = [&](const std::byte* data, std::size_t) { std::memcpy(&all[static_cast<std::size_t>(r)], data, sizeof(Member)); };
    if (!consume(segment_name(pid(r), parent->id, tag + "." + std::to_string(r)), parent->aborted, read, error)) {
      return false;
    }
  }
  return true;
}

// src/init.cc:ncclCommInitChildComm, shared by split and shrink: "*newcomm should be
// NCCL_COMM_NULL until comm split fully complete"; the job runs on the PARENT, which
// reports ncclInProgress if it is non-blocking (src/group.cc:ncclAsyncLaunch takes the
// parent's config.blocking); a NULL config copies the parent's (copyCommConfig). The
// child's ranks are ordered by key, ties by parent rank (src/bootstrap.cc
// bootstrapSplit sorts by key, then rank).
ncclResult_t make_child(ncclComm* parent, ncclComm_t* newcomm, const ncclConfig_t* given, const char* call,
                        const std::string& kind, const std::vector<int>& ranks, int colour, int key) {
  if (newcomm == nullptr) return fail(ncclInvalidArgument, std::string(call) + " : newcomm argument is NULL");
  if (const ncclResult_t e = ensure_ready(parent, call)) return e;
  *newcomm = nullptr;
  Config config = parent->config;
  if (const ncclResult_t e = parse_config(given, config)) return e;
  std::string error;
  std::optional<Faults> faults = read_faults(error);
  if (!faults) return fail(ncclInvalidArgument, error);
  const std::string tag = kind + std::to_string(++parent->children);
  const ncclResult_t started = run(parent, [=, faults = *faults]() -> ncclResult_t {
    if (faults.has("split_hang", parent->rank)) return hang(parent);
    std::vector<Member> all;
    std::string why;
    if (!exchange(parent, tag, ranks, Member{colour, key}, all, why)) {
      if (parent->aborted.load()) return ncclInvalidUsage;
      set_error(parent, ncclSystemError, why);
      return ncclSystemError;
    }
    if (colour == NCCL_SPLIT_NOCOLOR) return ncclSuccess;
    std::vector<int> members;
    for (const int r : ranks)
      if (all[static_cast<std::size_t>(r)].colour == colour) members.push_back(r);
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
      return all[static_cast<std::size_t>(a)].key < all[static_cast<std::size_t>(b)].key;
    });
    const auto me = std::find(members.begin(), members.end(), parent->rank) - members.begin();
    ncclComm* child = make_comm(derive(parent->id, tag + "c" + std::to_string(colour)),
                                static_cast<int>(members.size()), static_cast<int>(me), parent->device, config, faults);
    if (faults.has("init_hang", child->rank)) {
      hang(parent);  // the parent's abort reaches the child being made (init.cc:setCommAbortFlags, childAbortFlag)
      release(child);
      return ncclInvalidUsage;
    }
    for (const int r : members) child->pids.push_back(parent->pids[static_cast<std::size_t>(r)]);
    child->state.store(ncclSuccess);
    *newcomm = child;  // written by the job, into the caller's pointer, as NCCL does
    return ncclSuccess;
  });
  // A non-blocking split returns ncclSuccess, not ncclInProgress: ncclCommSplit returns
  // ncclCommInitChildComm's result, and NCCLCHECK lets the group's ncclInProgress pass
  // (src/init.cc:ncclCommSplit, src/include/checks.h). The parent reports the progress.
  return started == ncclInProgress ? ncclSuccess : started;
}

// ---- Operations -------------------------------------------------------------------

enum class Kind { all_reduce, broadcast, all_gather, reduce_scatter, send, recv };

struct Op {
  Kind kind;
  const void* send;
  void* recv;
  std::size_t count;
  ncclDataType_t type;
  ncclRedOp_t op;
  int peer;  // root, or the peer of send and recv
  std::string tag;
};

struct Launch {
  ncclComm* comm;
  cudaStream_t stream;
  std::vector<Op> ops;
};

// What ncclGroupStart collects on this thread until the outermost ncclGroupEnd.
struct Group {
  int depth = 0;
  ncclResult_t error = ncclSuccess;
  std::vector<Launch> launches;
};
thread_local Group group;

std::size_t bytes_of(const Op& op, int nranks) {
  const std::size_t n = op.kind == Kind::reduce_scatter ? static_cast<std::size_t>(nranks) : 1;
  return op.count * n * type_size(op.type);
}

// What one rank contributes to an operation, published before any waiting so that no
// order of operations within a group can deadlock.
bool contribute(ncclComm* comm, const Op& op, std::string& error) {
  const int n = comm->nranks;
  const std::string me = segment_name(comm->pids[static_cast<std::size_t>(comm->rank)], comm->id, op.tag);
  switch (op.kind) {
    case Kind::recv: return true;
    case Kind::send: return publish(me, op.send, bytes_of(op, n), 1, error);
    case Kind::broadcast:
      return comm->rank != op.peer || publish(me, op.send, bytes_of(op, n), n - 1, error);
    default: return publish(me, op.send, bytes_of(op, n), n - 1, error);
  }
}

// Reads the peers' contributions and writes this rank's result.
bool complete(ncclComm* comm, const Op& op, std::string& error) {
  const int n = comm->nranks;
  const std::size_t bytes = bytes_of(op, n);
  const std::size_t element = type_size(op.type);
  const auto from = [&](int r, const std::function<void(const std::byte*, std::size_t)>& read) {
    if (r == comm->rank) {
      read(static_cast<const std::byte*>(op.send), bytes);
      return true;
    }
    return consume(segment_name(comm->pids[static_cast<std::size_t>(r)], comm->id, op.tag), comm->aborted, read, error);
  };
  std::vector<std::byte> result;
  switch (op.kind) {
    case Kind::send: return true;
    case Kind::recv:
      return consume(segment_name(comm->pids[static_cast<std::size_t>(op.peer)], comm->id, op.tag), comm->aborted,
                     [&](const std::byte* data, std::size_t size) { std::memcpy(op.recv, data, std::min(size, bytes)); },
                     error);
    case Kind::broadcast:
      return from(op.peer, [&](const std::byte* data, std::size_t) { std::memmove(op.recv, data, bytes); });
    case Kind::all_gather:
      result.resize(bytes * static_cast<std::size_t>(n));
      for (int r = 0; r < n; ++r) {
        if (!from(r, [&](const std::byte* data, std::size_t) { std::memcpy(&result[bytes * static_cast<std::size_t>(r)], data, bytes); }))
          return false;
      }
      break;
    case Kind::all_reduce:
    case Kind::reduce_scatter: {
      // Every rank reduces in rank order, so all ranks get the same bits.
      const std::size_t block = op.count * element;
      const std::size_t offset = op.kind == Kind::reduce_scatter ? block * static_cast<std::size_t>(comm->rank) : 0;
      for (int r = 0; r < n; ++r) {
        const bool ok = from(r, [&](const std::byte* data, std::size_t) {
          if (result.empty()) {
            result.assign(data + offset, data + offset + block);
          } else {
            reduce(result.data(), data + offset, op.count, op.type, op.op == ncclAvg ? ncclSum : op.op);
          }
        });
        if (!ok) return false;
      }
      if (op.op == ncclAvg) divide(result.data(), op.count, op.type, n);
      break;
    }
  }
  if (!result.empty()) std::memcpy(op.recv, result.data(), result.size());
  return true;
}

// A kernel that reads or writes memory the device cannot reach faults, and the fault
// ends the process's CUDA context: a sticky cudaErrorIllegalAddress.
bool reachable(const ncclComm* comm, const Op& op) {
  const std::size_t bytes = bytes_of(op, comm->nranks);
  const std::size_t out = op.kind == Kind::all_gather ? bytes * static_cast<std::size_t>(comm->nranks)
                          : op.kind == Kind::reduce_scatter ? bytes / static_cast<std::size_t>(comm->nranks)
                                                            : bytes;
  const bool reads = op.kind != Kind::recv && (op.kind != Kind::broadcast || comm->rank == op.peer);
  const bool writes = op.kind != Kind::send;
  return (!reads || bytes == 0 || device_accessible(op.send, bytes, comm->device)) &&
         (!writes || out == 0 || device_accessible(op.recv, out, comm->device));
}

void execute(ncclComm* comm, const std::vector<Op>& ops, std::uint64_t number) {
  std::string error;
  const int rank = comm->rank;
  if (comm->faults.nth("op_hang", rank) == number) {
    hang(comm);
    return;
  }
  for (const Op& op : ops) {
    if (!reachable(comm, op)) {
      set_sticky_error(cudaErrorIllegalAddress);
      return;
    }
  }
  bool ok = true;
  for (const Op& op : ops) ok = ok && contribute(comm, op, error);
  if (ok && comm->faults.nth("op_error", rank) == number) {
    set_error(comm, ncclRemoteError, "operation " + std::to_string(number) + " failed (PCX_EMU_FAULT op_error)");
    return;
  }
  for (const Op& op : ops) ok = ok && complete(comm, op, error);
  if (!ok && !comm->aborted.load()) set_error(comm, ncclSystemError, error);
}

ncclResult_t launch(Launch work) {
  ncclComm* comm = work.comm;
  const std::uint64_t number = ++comm->operations;
  ++comm->pending;
  const cudaError_t queued = enqueue(work.stream, [comm, ops = std::move(work.ops), number] {
    if (!comm->aborted.load()) execute(comm, ops, number);
    --comm->pending;
  });
  if (queued != cudaSuccess) {
    --comm->pending;
    return fail(ncclUnhandledCudaError, std::string("Cuda failure '") + cudaGetErrorString(queued) + "'");
  }
  return ncclSuccess;
}

ncclResult_t group_end() {
  if (group.depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: not in a group call.");
  if (--group.depth > 0) return ncclSuccess;
  Group done = std::exchange(group, Group{});
  if (done.error != ncclSuccess) return done.error;
  ncclResult_t code = ncclSuccess;
  for (Launch& work : done.launches) {
    ncclComm* comm = work.comm;
    if (comm->config.blocking) {
      if (const ncclResult_t e = launch(std::move(work))) code = e;
    } else {
      // src/group.cc:ncclGroupEndInternal, nonblocking group: the communicator reports
      // ncclInProgress until the group's thread has launched the work.
      comm->state.store(ncclInProgress);
      const ncclResult_t e = launch(std::move(work));
      if (e != ncclSuccess) {
        comm->state.store(e);
        code = e;
      } else {
        run(comm, [] { return ncclSuccess; });
        code = code == ncclSuccess ? ncclInProgress : code;
      }
    }
  }
  return code;
}

// src/enqueue.cc:ncclEnqueueCheck and src/misc/argcheck.cc:ArgsCheck. An error on a
// non-blocking communicator also becomes its asynchronous error.
ncclResult_t record(Op op, ncclComm_t comm, cudaStream_t stream, const char* call) {
  ncclResult_t code = ensure_ready(comm, call);
  if (code == ncclSuccess) {
    if (op.peer < 0 || op.peer >= comm->nranks) {
      code = fail(ncclInvalidArgument, std::string(call) + " : invalid root " + std::to_string(op.peer) +
                                           " (root should be in the 0.." + std::to_string(comm->nranks) + " range)");
    } else if (op.type < 0 || op.type >= ncclNumTypes) {
      code = fail(ncclInvalidArgument, std::string(call) + " : invalid type " + std::to_string(op.type));
    } else if (op.op < 0 || op.op >= ncclNumOps) {
      code = fail(ncclInvalidArgument, std::string(call) + " : invalid reduction operation " + std::to_string(op.op));
    }
  }
  if (code != ncclSuccess) {
    if (comm != nullptr && check_comm(comm, call) == ncclSuccess && !comm->config.blocking) comm->state.store(code);
    if (group.depth > 0) group.error = code;
    return code;
  }
  switch (op.kind) {
    case Kind::send: op.tag = "p" + std::to_string(comm->rank) + "." + std::to_string(op.peer) + "." + std::to_string(++comm->sent[static_cast<std::size_t>(op.peer)]); break;
    case Kind::recv: op.tag = "p" + std::to_string(op.peer) + "." + std::to_string(comm->rank) + "." + std::to_string(++comm->received[static_cast<std::size_t>(op.peer)]); break;
    default: op.tag = "c" + std::to_string(++comm->collectives);
  }
  auto it = std::find_if(group.launches.begin(), group.launches.end(),
                         [&](const Launch& l) { return l.comm == comm && l.stream == stream; });
  if (it == group.launches.end()) it = group.launches.insert(group.launches.end(), Launch{comm, stream, {}});
  it->ops.push_back(std::move(op));
  return ncclSuccess;
}

// A call outside a group is a group of one (src/enqueue.cc:ncclEnqueueCheck).
ncclResult_t submit(Op op, ncclComm_t comm, cudaStream_t stream, const char* call) {
  ++group.depth;
  const ncclResult_t recorded = record(std::move(op), comm, stream, call);
  const ncclResult_t ended = group_end();
  return recorded != ncclSuccess ? recorded : ended;
}

}  // namespace
}  // namespace pcxemu

using namespace pcxemu;

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return fail(ncclInvalidArgument, "GetVersion : version argument is NULL");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* out) {
  if (out == nullptr) return fail(ncclInvalidArgument, "GetUniqueId : out argument is NULL");
  *out = ncclUniqueId{};
  std::memcpy(out->internal, kIdMagic, sizeof(kIdMagic));
  std::random_device entropy;
  for (std::size_t i = 0; i < 16; i += 4) {
    const unsigned value = entropy();
    std::memcpy(out->internal + sizeof(kIdMagic) + i, &value, 4);
  }
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t code) {
  switch (code) {  // src/init.cc:ncclGetErrorString
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

// src/init.cc:ncclGetLastError: "comm is currently unused". The text is copied for the
// calling thread, so another thread's failure cannot change it while it is read.
const char* ncclGetLastError(ncclComm_t) {
  thread_local std::string copy;
  std::lock_guard lock(last_error().mutex);
  copy = last_error().text;
  return copy.c_str();
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  return init(comm, nranks, &id, 1, rank, config);
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return init(comm, nranks, &id, 1, rank, nullptr);
}

ncclResult_t ncclCommInitRankScalable(ncclComm_t* comm, int nranks, int rank, int nids, ncclUniqueId* ids,
                                      ncclConfig_t* config) {
  return init(comm, nranks, ids, nids, rank, config);
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  if (const ncclResult_t e = ensure_ready(comm, "ncclCommSplit")) return e;
  if (color < 0 && color != NCCL_SPLIT_NOCOLOR) {
    return fail(ncclInvalidArgument, "ncclCommSplit : color " + std::to_string(color) + " is negative");
  }
  std::vector<int> everyone(static_cast<std::size_t>(comm->nranks));
  for (int r = 0; r < comm->nranks; ++r) everyone[static_cast<std::size_t>(r)] = r;
  return make_child(comm, newcomm, config, "ncclCommSplit", "s", everyone, color, key);
}

// src/init.cc:ncclCommShrink: only the ranks that stay call it ("ranks in
// excludeRanksList should not call into this function"), keeping their order; with
// NCCL_SHRINK_ABORT the parent's outstanding operations are stopped first.
ncclResult_t ncclCommShrink(ncclComm_t comm, int* exclude, int count, ncclComm_t* newcomm, ncclConfig_t* config,
                            int flags) {
  if (const ncclResult_t e = check_comm(comm, "ncclCommShrink")) return e;
  if (exclude == nullptr || count <= 0) {
    return fail(ncclInvalidArgument, "ncclCommShrink : excludeRanksList is NULL or excludeRanksCount is not positive");
  }
  if (flags != NCCL_SHRINK_DEFAULT && flags != NCCL_SHRINK_ABORT) {
    return fail(ncclInvalidArgument, "ncclCommShrink : unknown shrinkFlags " + std::to_string(flags));
  }
  std::vector<bool> gone(static_cast<std::size_t>(comm->nranks), false);
  for (int i = 0; i < count; ++i) {
    if (exclude[i] < 0 || exclude[i] >= comm->nranks) {
      return fail(ncclInvalidArgument, "ncclCommShrink : excluded rank " + std::to_string(exclude[i]) + " is outside 0.." +
                                           std::to_string(comm->nranks - 1));
    }
    gone[static_cast<std::size_t>(exclude[i])] = true;
  }
  if (gone[static_cast<std::size_t>(comm->rank)]) {
    return fail(ncclInvalidArgument, "ncclCommShrink : rank " + std::to_string(comm->rank) + " is excluded and must not call it");
  }
  if (flags == NCCL_SHRINK_ABORT) {
    // Stop what still waits for the lost ranks, then let the parent be used again.
    comm->aborted.store(true);
    for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();
    join_jobs(comm);
    comm->aborted.store(false);
  }
  std::vector<int> stay;
  for (int r = 0; r < comm->nranks; ++r)
    if (!gone[static_cast<std::size_t>(r)]) stay.push_back(r);
  return make_child(comm, newcomm, config, "ncclCommShrink", "k", stay, 0, comm->rank);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (const ncclResult_t e = check_comm(comm, "ncclGetAsyncError")) return e;
  if (error == nullptr) return fail(ncclInvalidArgument, "ncclGetAsyncError : asyncError argument is NULL");
  *error = comm->state.load();
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (const ncclResult_t e = ensure_ready(comm, "CommCount")) return e;
  if (count == nullptr) return fail(ncclInvalidArgument, "CommCount : count argument is NULL");
  *count = comm->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (const ncclResult_t e = ensure_ready(comm, "CommUserRank")) return e;
  if (rank == nullptr) return fail(ncclInvalidArgument, "CommUserRank : rank argument is NULL");
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (const ncclResult_t e = ensure_ready(comm, "CommCuDevice")) return e;
  if (device == nullptr) return fail(ncclInvalidArgument, "CommCuDevice : devid argument is NULL");
  *device = comm->device;
  return ncclSuccess;
}

// src/init.cc:ncclCommFinalize: flushes the communicator's outstanding operations,
// asynchronously for a non-blocking one; a second finalize is ncclInvalidArgument.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = ensure_ready(comm, "ncclCommFinalize")) return e;
  if (comm->finalized) return fail(ncclInvalidArgument, "ncclCommFinalize : called twice");
  comm->finalized = true;
  return run(comm, [comm] {
    for (Backoff backoff; comm->pending.load() > 0 && !comm->aborted.load();) backoff.pause();
    return comm->aborted.load() ? ncclInvalidUsage : ncclSuccess;
  });
}

// src/init.cc:ncclCommDestroy: blocking; a communicator not ready (in progress, or with
// an error) is refused by ncclCommEnsureReady and stays, to be aborted.
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommDestroy")) return e;
  join_jobs(comm);
  if (const ncclResult_t e = ensure_ready(comm, "ncclCommDestroy")) return e;
  for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();  // commDestroySync
  release(comm);
  return ncclSuccess;
}

// src/init.cc:ncclCommAbort: sets the abort flags, which stop what runs on the device
// and the job of a split being made from it, then reclaims everything.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommAbort")) return e;
  comm->aborted.store(true);
  release(comm);
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group.depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() { return group_end(); }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::all_reduce, send, recv, count, type, op, 0, {}}, comm, stream, "AllReduce");
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::broadcast, send, recv, count, type, ncclSum, root, {}}, comm, stream, "Broadcast");
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  return submit(Op{Kind::all_gather, send, recv, count, type, ncclSum, 0, {}}, comm, stream, "AllGather");
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::reduce_scatter, send, recv, count, type, op, 0, {}}, comm, stream, "ReduceScatter");
}

ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(Op{Kind::send, send, nullptr, count, type, ncclSum, peer, {}}, comm, stream, "Send");
}

ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::recv, nullptr, recv, count, type, ncclSum, peer, {}}, comm, stream, "Recv");
}

int pcxemu_live_communicators(void) {
  std::lock_guard lock(registry().mutex);
  return registry().live;
}

}  // extern "C"
