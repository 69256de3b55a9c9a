// NCCL's communicators and group calls, on the host, following NCCL 2.28.9's own source
// (src/init.cc, src/group.cc, src/misc/argcheck.cc, cited as file:function) rather than
// what any caller expects. Collectives are in collectives.cpp.
//
// A communicator's ranks are processes (or threads) of one machine. They meet through
// shared memory named after the unique id (shm.cpp). Not modelled: performance,
// algorithms and protocols, user buffer registration, custom reduction operators,
// ncclCommInitAll, windows and device APIs (they return ncclInvalidUsage).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <string_view>

#include "nccl_internal.hpp"
#include "pcx_emulator.h"

namespace pcxemu {
namespace {

constexpr char kIdMagic[8] = "pcxemu1";

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

std::optional<Faults> read_faults(std::string& error) {
  Faults faults;
  const char* text = std::getenv("PCX_EMU_FAULT");
  std::string_view rest = text ? text : "";
  while (!rest.empty()) {
    const std::string item(rest.substr(0, rest.find(',')));
    rest.remove_prefix(std::min(rest.size(), item.size() + 1));
    char kind[32] = {};
    unsigned long long k = 1;
    int rank = -1;
    int used = 0;
    const bool counted = item.starts_with("op_");
    const int fields = counted ? std::sscanf(item.c_str(), "%31[a-z_]:%llu%n@%d%n", kind, &k, &used, &rank, &used)
                               : std::sscanf(item.c_str(), "%31[a-z_]%n@%d%n", kind, &used, &rank, &used);
    const std::string name = kind;
    const bool known = counted ? name == "op_hang" || name == "op_error" : name == "init_hang" || name == "split_hang";
    const int with_rank = counted ? 3 : 2;
    if (!known || fields < with_rank - 1 || static_cast<std::size_t>(used) != item.size() || k == 0 ||
        (fields == with_rank && rank < 0)) {
      error = "PCX_EMU_FAULT item '" + item +
              "' is not init_hang[@R], split_hang[@R], op_hang:K[@R] or op_error:K[@R] (K >= 1, R >= 0)";
      return std::nullopt;
    }
    faults.list.push_back(Fault{name, k, rank});
  }
  return faults;
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

// src/init.cc:parseCommConfig. Only the magic and blocking are checked; the tuning fields
// mean nothing here.
ncclResult_t parse_config(const ncclConfig_t* given, Config& out) {
  if (given == nullptr) return ncclSuccess;
  if (given->magic != 0xcafebeef) {
    return fail(ncclInvalidArgument, "ncclConfig_t argument not initialized via NCCL_CONFIG_INITIALIZER");
  }
  if (given->blocking != NCCL_CONFIG_UNDEF_INT && given->blocking != 0 && given->blocking != 1) {
    return fail(ncclInvalidArgument, "config.blocking " + std::to_string(given->blocking) + " is not 0 or 1");
  }
  out.blocking = given->blocking != 0;  // NCCL_CONFIG_UNDEF_INT: NCCL's default, blocking
  out.name = given->commName != nullptr ? given->commName : "";
  return ncclSuccess;
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

void join_jobs(ncclComm* comm) {
  std::vector<std::thread> jobs;
  {
    std::lock_guard lock(comm->mutex);
    jobs.swap(comm->jobs);
  }
  for (std::thread& t : jobs) t.join();
}

// A non-blocking call's job ends no sooner than the launch delay after the call, so that
// code which assumes a non-blocking call is done when it returns fails every time.
void wait_launch_delay(const ncclComm* comm, Clock::time_point called) {
  for (Backoff backoff; Clock::now() < called + settings().launch_delay && !comm->aborted.load();) backoff.pause();
}

void finish(ncclComm* comm, ncclResult_t code, Clock::time_point called) {
  wait_launch_delay(comm, called);
  comm->state.store(code);  // src/group.cc:groupLaunch: the job's result replaces ncclInProgress
}

void release(ncclComm* comm) {
  join_jobs(comm);
  if (comm->released.exchange(true)) return;
  // What the operations a revoke stopped published and nobody will read (commFree frees
  // it). Not otherwise: after a destroy, peers still read what completed operations sent.
  if (comm->revoked) remove_own_segments(comm->id);
  charge_communicator(comm->device, -1);
  std::lock_guard lock(registry().mutex);
  --registry().live;
}

// The members meet unless a fault says this rank never arrives. src/init.cc
// (initTransportsRank): two ranks of one host on one device is ncclInvalidUsage.
ncclResult_t join(ncclComm* comm) {
  if (comm->faults.find("init_hang", comm->rank) != 0) {
    hang(comm);
    return ncclInvalidUsage;
  }
  std::string error;
  std::vector<int> devices;
  const int mine = machine_device(comm->device);
  std::vector<pid_t> pids = rendezvous(comm->id, comm->nranks, comm->rank, mine, devices, comm->aborted, error);
  if (pids.empty()) return comm->aborted.load() ? ncclInvalidUsage : fail(ncclSystemError, error);
  for (int r = 0; r < comm->nranks; ++r) {
    if (r != comm->rank && devices[static_cast<std::size_t>(r)] == mine) {
      return fail(ncclInvalidUsage, "Duplicate GPU detected : rank " + std::to_string(comm->rank) + " and rank " +
                                        std::to_string(r) + " both on CUDA device " + std::to_string(comm->device));
    }
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
  if (ids == nullptr || nids < 1 || nids > nranks) {
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
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    return fail(ncclUnhandledCudaError, "Cuda failure 'no CUDA-capable device is detected'");
  }
  std::string error;
  std::optional<Faults> faults = read_faults(error);
  if (!faults) return fail(ncclInvalidArgument, error);
  sweep_dead_segments();
  ncclComm* comm = make_comm(id, nranks, rank, device, config, *faults);
  *newcomm = comm;
  const ncclResult_t started = run(comm, [comm] { return join(comm); });
  // src/init.cc:ncclCommInitRankConfig returns a non-blocking communicator's state.
  return config.blocking ? started : comm->state.load();
}

struct Member {
  std::int32_t colour;
  std::int32_t key;
};

// Every rank of `parent` in `ranks` learns every such rank's record: what ncclCommSplit
// and ncclCommShrink exchange. Returns false if aborted. A rank returns only once every
// other has read its record: src/bootstrap.cc:bootstrapSplit sends to and receives from
// the ring neighbours over the parent, then all-gathers over the child, so no member is
// done with the parent before every member is, and a member may then abort the parent
// (as pcx does after ncclCommRevoke) without stranding the others. (NCCL's
// NCCL_SPLIT_NOCOLOR ranks leave after the parent's all-gather; waiting is stricter.)
bool exchange(ncclComm* parent, const std::string& tag, const std::vector<int>& ranks, Member mine,
              std::vector<Member>& all, std::string& error) {
  all.assign(static_cast<std::size_t>(parent->nranks), Member{NCCL_SPLIT_NOCOLOR, 0});
  all[static_cast<std::size_t>(parent->rank)] = mine;
  const auto name = [&](int r) {
    return segment_name(parent->pids[static_cast<std::size_t>(r)], parent->id, tag + "." + std::to_string(r));
  };
  if (!publish(name(parent->rank), &mine, sizeof(mine), static_cast<int>(ranks.size()) - 1, error)) return false;
  for (const int r : ranks) {
    if (r == parent->rank) continue;
    const auto read = [&](const std::byte* data, std::size_t bytes) {
      if (bytes == sizeof(Member)) std::memcpy(&all[static_cast<std::size_t>(r)], data, sizeof(Member));
    };
    if (!consume(name(r), parent->aborted, read, error)) return false;
  }
  return wait_read(name(parent->rank), parent->aborted);
}

// src/init.cc:ncclCommInitChildComm, shared by split and shrink: "*newcomm should be
// NCCL_COMM_NULL until comm split fully complete"; the job runs on the PARENT, which
// reports ncclInProgress if it is non-blocking (src/group.cc:ncclAsyncLaunch takes the
// parent's config.blocking); a NULL config copies the parent's (copyCommConfig); the
// child's ranks are ordered by key, ties by parent rank (init.cc, the stable insertion
// by key of the split's allgather).
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
  const Clock::time_point called = Clock::now();
  const ncclResult_t started = run(parent, [=, faults = *faults]() -> ncclResult_t {
    if (faults.find("split_hang", parent->rank) != 0) {
      hang(parent);
      return ncclInvalidUsage;
    }
    std::vector<Member> all;
    std::string why;
    if (!exchange(parent, tag, ranks, Member{colour, key}, all, why)) {
      return parent->aborted.load() ? ncclInvalidUsage : fail(ncclSystemError, why);
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
    if (faults.find("init_hang", child->rank) != 0) {
      hang(parent);  // the parent's abort reaches the child being made (init.cc:setCommAbortFlags, childAbortFlag)
      release(child);
      return ncclInvalidUsage;
    }
    for (const int r : members) child->pids.push_back(parent->pids[static_cast<std::size_t>(r)]);
    child->state.store(ncclSuccess);
    if (!parent->config.blocking) wait_launch_delay(parent, called);
    *newcomm = child;  // written by the job, into the caller's pointer, as NCCL does
    return ncclSuccess;
  });
  // A non-blocking split returns ncclSuccess, not ncclInProgress: ncclCommSplit returns
  // ncclCommInitChildComm's result, and NCCLCHECK lets the group's ncclInProgress pass
  // (src/init.cc:ncclCommSplit, src/include/checks.h). The parent reports the progress.
  return started == ncclInProgress ? ncclSuccess : started;
}

// Runs the jobs a group collected: a blocking group's all at once, each on a thread of
// its own, since they may meet each other (one thread initializing several devices);
// a non-blocking group's in the background (src/group.cc:groupLaunch, ncclAsyncJobMain).
ncclResult_t run_jobs(std::vector<std::pair<ncclComm*, std::function<ncclResult_t()>>>& jobs, bool blocking) {
  ncclResult_t code = ncclSuccess;
  if (!blocking) {
    for (auto& [comm, job] : jobs) run(comm, std::move(job));
    return jobs.empty() ? ncclSuccess : ncclInProgress;
  }
  std::vector<ncclResult_t> results(jobs.size(), ncclSuccess);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < jobs.size(); ++i) threads.emplace_back([&, i] { results[i] = jobs[i].second(); });
  for (std::thread& t : threads) t.join();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    jobs[i].first->state.store(results[i]);
    if (results[i] != ncclSuccess && code == ncclSuccess) code = results[i];
  }
  return code;
}

}  // namespace

std::uint64_t Faults::find(const std::string& kind, int rank) const {
  for (const Fault& f : list)
    if (f.kind == kind && (f.rank < 0 || f.rank == rank)) return f.k;
  return 0;
}

thread_local Group this_thread_group;
Group& group() { return this_thread_group; }

ncclResult_t fail(ncclResult_t code, const std::string& message) {
  std::lock_guard lock(last_error().mutex);
  last_error().text = message;
  return code;
}

ncclResult_t check_comm(const ncclComm* comm, const char* call) {
  if (comm == nullptr) return fail(ncclInvalidArgument, std::string(call) + " : comm argument is NULL");
  {
    std::lock_guard lock(registry().mutex);
    if (!registry().known.contains(comm)) return fail(ncclInvalidArgument, std::string(call) + " : not a communicator");
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
  return state != ncclSuccess ? state : comm->failure.load();
}

void set_failure(ncclComm* comm, ncclResult_t code, const std::string& message) {
  fail(code, message);
  ncclResult_t none = ncclSuccess;
  comm->failure.compare_exchange_strong(none, code);
}

void hang(const ncclComm* comm) {
  for (Backoff backoff; !comm->aborted.load();) backoff.pause();
}

// A call's job (init, split, finalize, launch): inside a group it waits for the outermost
// ncclGroupEnd (src/group.cc:ncclAsyncLaunch); otherwise it runs inline for a blocking
// communicator, or on a thread of the communicator's for a non-blocking one, which
// reports ncclInProgress until it is done (src/group.cc:ncclGroupEndInternal).
ncclResult_t run(ncclComm* comm, std::function<ncclResult_t()> job) {
  join_jobs(comm);  // callers checked the communicator is ready, so earlier jobs have ended
  comm->state.store(ncclInProgress);
  Group& g = group();
  if (g.depth > 0) {
    if (g.blocking >= 0 && g.blocking != static_cast<int>(comm->config.blocking)) {
      g.error = fail(ncclInvalidArgument, "Blocking and nonblocking communicators are not allowed in the same group.");
      comm->state.store(g.error);
      return g.error;
    }
    g.blocking = comm->config.blocking ? 1 : 0;
    g.jobs.emplace_back(comm, std::move(job));
    return ncclSuccess;
  }
  if (comm->config.blocking) {
    const ncclResult_t code = job();
    comm->state.store(code);
    return code;
  }
  const Clock::time_point started = Clock::now();
  std::lock_guard lock(comm->mutex);
  comm->jobs.emplace_back([comm, job = std::move(job), started] { finish(comm, job(), started); });
  return ncclInProgress;
}

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

// Any colour but NCCL_SPLIT_NOCOLOR forms a child, negative ones included (src/init.cc,
// the split's allgather compares colours only).
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  if (const ncclResult_t e = check_comm(comm, "ncclCommSplit")) return e;
  std::vector<int> everyone(static_cast<std::size_t>(comm->nranks));
  for (int r = 0; r < comm->nranks; ++r) everyone[static_cast<std::size_t>(r)] = r;
  return make_child(comm, newcomm, config, "ncclCommSplit", "s", everyone, color, key);
}

// src/init.cc:ncclCommShrink: with NCCL_SHRINK_ABORT the parent's outstanding operations
// are stopped first (the abort flags are set, then cleared); only the ranks that stay
// call it ("ranks in excludeRanksList should not call into this function"), keeping their
// order; NCCL sorts the caller's list in place.
ncclResult_t ncclCommShrink(ncclComm_t comm, int* exclude, int count, ncclComm_t* newcomm, ncclConfig_t* config,
                            int flags) {
  if (const ncclResult_t e = check_comm(comm, "ncclCommShrink")) return e;
  if ((flags & NCCL_SHRINK_ABORT) != 0) {
    comm->aborted.store(true);
    for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();
    comm->aborted.store(false);
  }
  if (exclude == nullptr || count <= 0) {
    return fail(ncclInvalidArgument, "ncclCommShrink : excludeRanksList is NULL or excludeRanksCount is not positive");
  }
  std::sort(exclude, exclude + count);
  if (std::binary_search(exclude, exclude + count, comm->rank)) {
    return fail(ncclInvalidArgument, "ncclCommShrink : rank " + std::to_string(comm->rank) + " is excluded and must not call it");
  }
  std::vector<int> stay;
  for (int r = 0; r < comm->nranks; ++r)
    if (!std::binary_search(exclude, exclude + count, r)) stay.push_back(r);
  return make_child(comm, newcomm, config, "ncclCommShrink", "k", stay, 0, comm->rank);
}

// src/init.cc:ncclCommRevoke (2.28): a NULL communicator is accepted; revokeFlags must be
// NCCL_REVOKE_DEFAULT; not after finalize or destroy, nor twice (ncclInvalidArgument). The
// abort flags stop the in-flight operations, and a job clears them once the communicator
// is quiescent (commRevokeAsync), reporting ncclInProgress until then on a non-blocking
// communicator. It counts as finalized from then on (finalizeCalled = true), so a later
// ncclCommFinalize is ncclInvalidArgument; operations are refused (refuse_revoked);
// split, shrink, destroy and abort may follow. Stricter than NCCL: a call made before
// the revoke's job ends is ncclInvalidArgument (NCCL's ncclCommEnsureReady lets it
// through while the abort flags are set, into a bootstrap they abort).
ncclResult_t ncclCommRevoke(ncclComm_t comm, int flags) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommRevoke")) return e;
  if (flags != NCCL_REVOKE_DEFAULT) {
    return fail(ncclInvalidArgument, "ncclCommRevoke : revokeFlags " + std::to_string(flags) + " is not 0");
  }
  if (comm->finalized || comm->revoked) {
    return fail(ncclInvalidArgument, "ncclCommRevoke : the communicator is finalized or already revoked");
  }
  comm->revoked = true;
  comm->finalized = true;
  comm->aborted.store(true);
  const ncclResult_t started = run(comm, [comm] {
    for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();
    comm->aborted.store(false);
    return ncclSuccess;
  });
  return comm->config.blocking ? started : comm->state.load();
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (const ncclResult_t e = check_comm(comm, "ncclGetAsyncError")) return e;
  if (error == nullptr) return fail(ncclInvalidArgument, "ncclGetAsyncError : asyncError argument is NULL");
  const ncclResult_t state = comm->state.load();
  *error = state != ncclSuccess ? state : comm->failure.load();
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
// asynchronously for a non-blocking one. A refusal (not ready, or finalized already,
// which a revoke counts as) becomes a non-blocking communicator's lasting error (its
// `fail:` label), so that only ncclCommAbort is left to it.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  ncclResult_t refused = ensure_ready(comm, "ncclCommFinalize");
  if (refused == ncclSuccess && comm->finalized) refused = fail(ncclInvalidArgument, "ncclCommFinalize : called twice");
  if (refused != ncclSuccess) {
    if (check_comm(comm, "ncclCommFinalize") == ncclSuccess && !comm->config.blocking) comm->state.store(refused);
    return refused;
  }
  comm->finalized = true;
  const ncclResult_t started = run(comm, [comm] {
    for (Backoff backoff; comm->pending.load() > 0 && !comm->aborted.load();) backoff.pause();
    return comm->aborted.load() ? ncclInvalidUsage : ncclSuccess;
  });
  return comm->config.blocking ? started : comm->state.load();
}

// src/init.cc:ncclCommDestroy: a communicator not ready (in progress, or with an error)
// is refused by ncclCommEnsureReady and stays, to be aborted. That early return comes
// after ncclGroupStartInternal and skips its ncclGroupEndInternal, so the calling thread
// is left one group deeper: modelled too, since code that follows a refused destroy with
// an abort on the same thread then finds the abort's reclaim waiting for an ncclGroupEnd.
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommDestroy")) return e;
  if (const ncclResult_t e = ensure_ready(comm, "ncclCommDestroy")) {
    ++group().depth;
    return e;
  }
  if (group().depth > 0) {
    group().jobs.emplace_back(comm, [comm] {
      for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();  // commDestroySync
      release(comm);
      return ncclSuccess;
    });
    return ncclSuccess;
  }
  for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();  // commDestroySync
  release(comm);
  return ncclSuccess;
}

// src/init.cc:ncclCommAbort: sets the abort flags at once, which stop what runs on the
// device and the job of a split being made from it; the reclaim is a job like any other
// (it waits for an ncclGroupEnd inside a group).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommAbort")) return e;
  comm->aborted.store(true);
  remove_own_segments(comm->id);
  if (group().depth > 0) {
    group().jobs.emplace_back(comm, [comm] {
      release(comm);
      return ncclSuccess;
    });
    return ncclSuccess;
  }
  release(comm);
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group().depth;
  return ncclSuccess;
}

// src/group.cc:ncclGroupEndInternal: only the outermost end launches; a group with an
// error launches nothing and gives every non-blocking communicator in it the error.
ncclResult_t ncclGroupEnd() {
  if (group().depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: not in a group call.");
  if (--group().depth > 0) return ncclSuccess;
  Group done = std::exchange(group(), Group{});
  if (done.error != ncclSuccess) {
    for (const Launch& work : done.launches)
      if (!work.comm->config.blocking) work.comm->state.store(done.error);
    for (const auto& [comm, job] : done.jobs)
      if (!comm->config.blocking) comm->state.store(done.error);
    return done.error;
  }
  ncclResult_t code = run_jobs(done.jobs, done.blocking != 0);
  for (Launch& work : done.launches) {
    ncclComm* comm = work.comm;
    const bool blocking = comm->config.blocking;
    const ncclResult_t launched = launch(std::move(work), done.numbered);
    if (launched != ncclSuccess) {
      if (!blocking) comm->state.store(launched);
      code = launched;
    } else if (!blocking) {
      run(comm, [] { return ncclSuccess; });  // in progress until the background launch is done
      if (code == ncclSuccess) code = ncclInProgress;
    }
  }
  return code;
}

int pcxemu_live_communicators(void) {
  std::lock_guard lock(registry().mutex);
  return registry().live;
}

// Declared by nccl.h but not emulated: they fail clearly instead of reaching a real NCCL
// with the emulator's handles.
#define PCXEMU_NOT_EMULATED(name, ...)                                                                    \
  ncclResult_t name(__VA_ARGS__) {                                                                        \
    return fail(ncclInvalidUsage, #name " is not emulated (pcx's NCCL emulator, see README.md)");          \
  }
PCXEMU_NOT_EMULATED(ncclMemAlloc, void**, size_t)
PCXEMU_NOT_EMULATED(ncclMemFree, void*)
PCXEMU_NOT_EMULATED(ncclCommInitAll, ncclComm_t*, int, const int*)
PCXEMU_NOT_EMULATED(ncclCommRegister, const ncclComm_t, void*, size_t, void**)
PCXEMU_NOT_EMULATED(ncclCommDeregister, const ncclComm_t, void*)
PCXEMU_NOT_EMULATED(ncclCommWindowRegister, ncclComm_t, void*, size_t, ncclWindow_t*, int)
PCXEMU_NOT_EMULATED(ncclCommWindowDeregister, ncclComm_t, ncclWindow_t)
PCXEMU_NOT_EMULATED(ncclRedOpCreatePreMulSum, ncclRedOp_t*, void*, ncclDataType_t, ncclScalarResidence_t, ncclComm_t)
PCXEMU_NOT_EMULATED(ncclRedOpDestroy, ncclRedOp_t, ncclComm_t)
PCXEMU_NOT_EMULATED(ncclGroupSimulateEnd, ncclSimInfo_t*)
#undef PCXEMU_NOT_EMULATED

}  // extern "C"
