// NCCL's communicators, on the host, following NCCL 2.28.9's own source (src/init.cc,
// src/misc/argcheck.cc, cited as file:function or file:line at tag v2.28.9-1) rather than
// what any caller expects. Every call runs inside a group (group.cpp), as NCCL's own calls
// run between ncclGroupStartInternal and ncclGroupEndInternal; operations are in
// collectives.cpp.
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

// A communicator as NCCL allocates it (calloc: asyncResult ncclSuccess), before its
// initialization: init fills in who it is at the call, a split's child when it completes.
ncclComm* allocate(int device, Config config, Faults faults) {
  auto made = std::make_unique<ncclComm>();
  made->device = device;
  made->config = std::move(config);
  made->faults = std::move(faults);
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

void name(ncclComm* comm, std::string id, int nranks, int rank) {
  comm->id = std::move(id);
  comm->nranks = nranks;
  comm->rank = rank;
  comm->sent.assign(static_cast<std::size_t>(nranks), 0);
  comm->received.assign(static_cast<std::size_t>(nranks), 0);
}

void release(ncclComm* comm) {
  join_group(comm);
  if (comm->released.exchange(true)) return;
  // What the operations a revoke stopped published and nobody will read (commFree frees
  // it). Not otherwise: after a destroy, peers still read what completed operations sent.
  if (comm->revoked) remove_own_segments(comm->id);
  charge_communicator(comm->device, -1);
  std::lock_guard lock(registry().mutex);
  --registry().live;
}

// The members meet unless a fault says this rank never arrives. src/init.cc
// (initTransportsRank, AllGather1): two ranks with one host hash on one device (busId) is
// ncclInvalidUsage; ranks of different hosts may each use their device 0.
ncclResult_t join(ncclComm* comm) {
  if (comm->faults.find("init_hang", comm->rank) != 0) {
    hang(comm);
    return ncclInvalidUsage;
  }
  std::string error;
  std::vector<Place> places;
  const Place mine{settings().host, machine_device(comm->device)};
  std::vector<pid_t> pids = rendezvous(comm->id, comm->nranks, comm->rank, mine, places, comm->aborted, error);
  if (pids.empty()) return comm->aborted.load() ? ncclInvalidUsage : fail(ncclSystemError, error);
  for (int r = 0; r < comm->nranks; ++r) {
    if (r != comm->rank && places[static_cast<std::size_t>(r)] == mine) {
      return fail(ncclInvalidUsage, "Duplicate GPU detected : rank " + std::to_string(comm->rank) + " and rank " +
                                        std::to_string(r) + " both on CUDA device " + std::to_string(comm->device));
    }
  }
  comm->pids = std::move(pids);
  comm->initialized.store(true);
  return ncclSuccess;
}

// src/init.cc:ncclCommInitRankDev: *newcomm is set before the (possibly asynchronous)
// initialization starts, and back to NULL if the call fails (init.cc:2040); the device is
// the caller's current one. A non-blocking call returns the communicator's state after
// its group end (init.cc:2162-2166): ncclInProgress, or ncclSuccess inside a user's group,
// which has not launched it yet.
ncclResult_t init(ncclComm_t* newcomm, int nranks, const ncclUniqueId* ids, int nids, int rank,
                  const ncclConfig_t* given) {
  ncclComm* comm = nullptr;
  const ncclResult_t result = in_group([&]() -> ncclResult_t {
    if (newcomm == nullptr) return fail(ncclInvalidArgument, "CommInitRank : newcomm argument is NULL");
    *newcomm = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks) {
      return fail(ncclInvalidArgument,
                  "Invalid rank requested : " + std::to_string(rank) + "/" + std::to_string(nranks));
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
    ncclComm* made = allocate(device, config, *faults);
    name(made, id, nranks, rank);
    if (const ncclResult_t e = queue(made, [made] { return join(made); })) {
      release(made);
      return e;
    }
    comm = made;
    *newcomm = comm;
    return ncclSuccess;
  });
  return result == ncclSuccess && comm != nullptr && !comm->config.blocking ? comm->state.load() : result;
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

// src/init.cc:ncclCommInitChildComm, shared by split and shrink, inside the call's group.
// The child is allocated at the call (init.cc:2576) unless the colour is
// NCCL_SPLIT_NOCOLOR; "*newcomm should be NCCL_COMM_NULL until comm split fully
// complete" (2571-2572); the job runs on the PARENT (ncclAsyncLaunch is given the parent),
// so a non-blocking parent reports ncclInProgress; a NULL config copies the parent's
// (copyCommConfig); the child's ranks are ordered by key, ties by parent rank (the stable
// insertion by key of commGetSplitInfo). The job writes the child into *newcomm when it
// ends, also when it fails (1612-1620): the caller aborts a child that failed. The call
// returns the queued job's ncclSuccess, not the group end's ncclInProgress (2666-2680 and
// src/include/checks.h:122-129, NCCLCHECK lets ncclInProgress pass).
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
  ncclComm* child = colour == NCCL_SPLIT_NOCOLOR ? nullptr : allocate(parent->device, config, *faults);
  const std::string tag = kind + std::to_string(++parent->children);
  const Clock::time_point called = Clock::now();
  const auto publish_child = [newcomm, child] { std::atomic_ref(*newcomm).store(child); };
  const auto failed = [=](ncclResult_t code) {
    if (child != nullptr) {
      child->aborted.store(parent->aborted.load());  // the parent's abort reached it (childAbortFlag)
      child->state.store(code);                      // NCCL leaves it ncclSuccess and records the failure in initState
    }
    publish_child();
    return code;
  };
  const ncclResult_t queued = queue(parent, [=, faults = *faults]() -> ncclResult_t {
    if (faults.find("split_hang", parent->rank) != 0) {
      hang(parent);
      return failed(ncclInvalidUsage);
    }
    std::vector<Member> all;
    std::string why;
    if (!exchange(parent, tag, ranks, Member{colour, key}, all, why)) {
      return failed(parent->aborted.load() ? ncclInvalidUsage : fail(ncclSystemError, why));
    }
    if (child == nullptr) return ncclSuccess;
    std::vector<int> members;
    for (const int r : ranks)
      if (all[static_cast<std::size_t>(r)].colour == colour) members.push_back(r);
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
      return all[static_cast<std::size_t>(a)].key < all[static_cast<std::size_t>(b)].key;
    });
    const auto me = std::find(members.begin(), members.end(), parent->rank) - members.begin();
    name(child, derive(parent->id, tag + "c" + std::to_string(colour)), static_cast<int>(members.size()),
         static_cast<int>(me));
    if (faults.find("init_hang", child->rank) != 0) {
      hang(parent);  // the parent's abort reaches the child being made
      return failed(ncclInvalidUsage);
    }
    for (const int r : members) child->pids.push_back(parent->pids[static_cast<std::size_t>(r)]);
    child->initialized.store(true);
    // A non-blocking split's child appears no sooner than its parent is done.
    if (!parent->config.blocking) wait_launch_delay(called, [parent] { return parent->aborted.load(); });
    child->state.store(ncclSuccess);
    publish_child();
    return ncclSuccess;
  });
  if (queued != ncclSuccess && child != nullptr) release(child);
  if (queued == ncclSuccess && child != nullptr && !parent->config.blocking && settings().split_in_progress) {
    child->state.store(ncclInProgress);
    publish_child();
  }
  return queued;
}

// What ncclCommSplit and ncclCommShrink return: the call's own result, ncclSuccess for one
// that launched a non-blocking job. With PCX_EMU_SPLIT_IN_PROGRESS=1 a non-blocking split
// behaves instead as NCCL's maintainers describe one that mimics ncclCommInitRank
// (NVIDIA/nccl#1472): it returns ncclInProgress, which the user guide allows of any call
// on a non-blocking communicator, and writes *newcomm at the call, a child that reports
// ncclInProgress until the split ends; so that a caller is tested against both.
ncclResult_t child_result(const ncclComm* parent, ncclResult_t result) {
  // ncclSuccess means the parent passed its checks.
  const bool launched = result == ncclSuccess && parent->state.load() == ncclInProgress;
  return launched && settings().split_in_progress ? ncclInProgress : result;
}

}  // namespace

std::uint64_t Faults::find(const std::string& kind, int rank) const {
  for (const Fault& f : list)
    if (f.kind == kind && (f.rank < 0 || f.rank == rank)) return f.k;
  return 0;
}

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
// (ncclInvalidArgument), and one with an error keeps returning it. Stricter than NCCL: one
// whose initialization has not run yet (its group is still open) is ncclInvalidUsage,
// where NCCL would go on with a communicator it has not set up.
ncclResult_t ensure_ready(const ncclComm* comm, const char* call) {
  if (const ncclResult_t e = check_comm(comm, call)) return e;
  const ncclResult_t state = comm->state.load();
  if (state == ncclInProgress) {
    return fail(
        ncclInvalidArgument,
        std::string(call) + " : Attempt to use communicator before the previous operation returned ncclSuccess");
  }
  if (state != ncclSuccess) return state;
  if (!comm->initialized.load()) {
    return fail(ncclInvalidUsage,
                std::string(call) + " : communicator used before the group that initializes it ended");
  }
  return comm->failure.load();
}

void set_failure(ncclComm* comm, ncclResult_t code, const std::string& message) {
  fail(code, message);
  ncclResult_t none = ncclSuccess;
  comm->failure.compare_exchange_strong(none, code);
}

void hang(const ncclComm* comm) {
  for (Backoff backoff; !comm->aborted.load();) backoff.pause();
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
  const ncclResult_t result = in_group([&] {
    if (const ncclResult_t e = check_comm(comm, "ncclCommSplit")) return e;
    std::vector<int> everyone(static_cast<std::size_t>(comm->nranks));
    for (int r = 0; r < comm->nranks; ++r) everyone[static_cast<std::size_t>(r)] = r;
    return make_child(comm, newcomm, config, "ncclCommSplit", "s", everyone, color, key);
  });
  return child_result(comm, result);
}

// src/init.cc:ncclCommShrink: with NCCL_SHRINK_ABORT the parent's outstanding operations
// are stopped first (the abort flags are set, then cleared); only the ranks that stay
// call it ("ranks in excludeRanksList should not call into this function"), keeping their
// order; NCCL sorts the caller's list in place.
ncclResult_t ncclCommShrink(ncclComm_t comm, int* exclude, int count, ncclComm_t* newcomm, ncclConfig_t* config,
                            int flags) {
  const ncclResult_t result = in_group([&] {
    if (const ncclResult_t e = check_comm(comm, "ncclCommShrink")) return e;
    if ((flags & NCCL_SHRINK_ABORT) != 0) {
      comm->aborted.store(true);
      for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();
      comm->aborted.store(false);
    }
    if (exclude == nullptr || count <= 0) {
      return fail(ncclInvalidArgument,
                  "ncclCommShrink : excludeRanksList is NULL or excludeRanksCount is not positive");
    }
    std::sort(exclude, exclude + count);
    if (std::binary_search(exclude, exclude + count, comm->rank)) {
      return fail(ncclInvalidArgument,
                  "ncclCommShrink : rank " + std::to_string(comm->rank) + " is excluded and must not call it");
    }
    std::vector<int> stay;
    for (int r = 0; r < comm->nranks; ++r)
      if (!std::binary_search(exclude, exclude + count, r)) stay.push_back(r);
    return make_child(comm, newcomm, config, "ncclCommShrink", "k", stay, 0, comm->rank);
  });
  return child_result(comm, result);
}

// src/init.cc:ncclCommRevoke (2.28): a NULL communicator is accepted; revokeFlags must be
// NCCL_REVOKE_DEFAULT; not after finalize or destroy, nor twice (ncclInvalidArgument), all
// checked before its group. The abort flags stop the in-flight operations and a group job
// still running (ncclCommEnsureReady -> ncclGroupJobAbort), and the revoke's job clears
// them once the communicator is quiescent (commRevokeAsync); a non-blocking communicator
// returns its state after the group end, ncclInProgress. It counts as finalized from then
// on, so a later ncclCommFinalize is ncclInvalidArgument; operations are refused
// (refuse_revoked); split, shrink, destroy and abort may follow. Stricter than NCCL: a
// call made before the revoke's job ends is ncclInvalidArgument (NCCL's
// ncclCommEnsureReady lets it through while the abort flags are set, into a bootstrap
// they abort).
ncclResult_t ncclCommRevoke(ncclComm_t comm, int flags) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommRevoke")) return e;
  if (flags != NCCL_REVOKE_DEFAULT) {
    return fail(ncclInvalidArgument, "ncclCommRevoke : revokeFlags " + std::to_string(flags) + " is not 0");
  }
  if (comm->finalized || comm->revoked) {
    return fail(ncclInvalidArgument, "ncclCommRevoke : the communicator is finalized or already revoked");
  }
  const ncclResult_t result = in_group([comm] {
    comm->aborted.store(true);
    comm->revoked = true;
    abort_group(comm);
    comm->finalized = true;
    return queue(comm, [comm] {
      for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();
      comm->aborted.store(false);
      return ncclSuccess;
    });
  });
  return comm->config.blocking ? result : comm->state.load();
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
// asynchronously for a non-blocking one, which returns its state after the group end
// (init.cc:2291-2294). A refusal (not ready, or finalized already, which a revoke counts
// as) becomes a non-blocking communicator's lasting error (its `fail:` label), so that
// only ncclCommAbort is left to it.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  const ncclResult_t result = in_group([comm] {
    ncclResult_t refused = ensure_ready(comm, "ncclCommFinalize");
    if (refused == ncclSuccess && comm->finalized) {
      refused = fail(ncclInvalidArgument, "ncclCommFinalize : called twice");
    }
    if (refused != ncclSuccess) {
      if (check_comm(comm, "ncclCommFinalize") == ncclSuccess && !comm->config.blocking) comm->state.store(refused);
      return refused;
    }
    comm->finalized = true;
    return queue(comm, [comm] {
      for (Backoff backoff; comm->pending.load() > 0 && !comm->aborted.load();) backoff.pause();
      return comm->aborted.load() ? ncclInvalidUsage : ncclSuccess;
    });
  });
  if (check_comm(comm, "ncclCommFinalize") != ncclSuccess || comm->config.blocking) return result;
  return comm->state.load();
}

// src/init.cc:ncclCommDestroy: a communicator not ready (in progress, or with an error)
// is refused by ncclCommEnsureReady and stays, to be aborted. That early return comes
// after ncclGroupStartInternal and skips its ncclGroupEndInternal, so the calling thread
// is left one group deeper: modelled too, since code that follows a refused destroy with
// an abort on the same thread then finds the abort's reclaim waiting for an ncclGroupEnd.
// The reclaim is a job of a blocking group (destroyFlag, src/group.cc:52-53).
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommDestroy")) return e;
  if (const ncclResult_t e = ensure_ready(comm, "ncclCommDestroy")) {
    ++group().depth;
    return e;
  }
  return in_group([comm] {
    return queue(
        comm,
        [comm] {
          for (Backoff backoff; comm->pending.load() > 0;) backoff.pause();  // commDestroySync
          release(comm);
          return ncclSuccess;
        },
        true);
  });
}

// src/init.cc:ncclCommAbort: sets the abort flags at once, which stop what runs on the
// device and the job of a split being made from it, and aborts and joins a group job
// still running (ncclCommEnsureReady -> ncclGroupJobAbort); the reclaim is a job of a
// blocking group like destroy's (it waits for an ncclGroupEnd inside a group).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (const ncclResult_t e = check_comm(comm, "ncclCommAbort")) return e;
  comm->aborted.store(true);
  remove_own_segments(comm->id);
  abort_group(comm);
  return in_group([comm] {
    return queue(
        comm,
        [comm] {
          release(comm);
          return ncclSuccess;
        },
        true);
  });
}

int pcxemu_live_communicators(void) {
  std::lock_guard lock(registry().mutex);
  return registry().live;
}

// Declared by nccl.h but not emulated: they fail clearly instead of reaching a real NCCL
// with the emulator's handles.
#define PCXEMU_NOT_EMULATED(name, ...)                                                            \
  ncclResult_t name(__VA_ARGS__) {                                                                \
    return fail(ncclInvalidUsage, #name " is not emulated (pcx's NCCL emulator, see README.md)"); \
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
