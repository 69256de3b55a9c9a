// Checks NCCL's return-code and state rules (nccl_rules.json) against the libnccl this
// program runs on: the host emulator when it is preloaded, real NCCL on a GPU otherwise.
// Every rank runs every rule its world allows; rank 0 gathers what each rank observed and
// compares it with the table. A rule holds when every rank that observed it saw exactly the
// values the table lists, no key more and none fewer, so that a rule can be dropped neither
// from the table nor from the emulator unnoticed.
//
//   mpiexec -n N nccl_rules_check --table nccl_rules.json [--rule ID] [--report out.json]
//
// Exit status: 0 every rule that applies holds; 1 a rule differs; 2 bad usage or table;
// 77 no CUDA device (skipped).
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <mpi.h>
#include <nccl.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "result_name.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Observed = std::map<std::string, std::string>;
using nlohmann::json;

constexpr auto kDeadline = std::chrono::seconds(5);       // for work that must end
constexpr auto kAbsent = std::chrono::milliseconds(200);  // how long a missing peer is watched
constexpr auto kRuleLimit = std::chrono::seconds(30);     // past this, a call never returned

struct World {
  int rank = 0;
  int size = 1;
};

std::string name(ncclResult_t r) { return emutest::result_name(r); }

std::string name(cudaError_t e) { return cudaGetErrorName(e); }

// ncclCommGetAsyncError now, or the query's own error.
std::string state(ncclComm_t comm) {
  ncclResult_t s = ncclNumResults;
  const ncclResult_t queried = ncclCommGetAsyncError(comm, &s);
  return name(queried != ncclSuccess ? queried : s);
}

// The state once it is no longer ncclInProgress (ncclInProgress at the deadline).
std::string settle(ncclComm_t comm) {
  const auto end = Clock::now() + kDeadline;
  std::string s = state(comm);
  for (; s == "ncclInProgress" && Clock::now() < end; s = state(comm)) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return s;
}

// Where NCCL writes a communicator (*comm, *newcomm). It starts as a mark of its own, so
// that a write of NULL can be told from no write. NCCL's thread may write it while the
// caller reads it, hence the atomic access. Declare a child's slot before its parent's: the
// parent is aborted first, which joins the thread that may still write the child's slot.
class Slot {
 public:
  Slot() = default;
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() { (void)abort(); }

  ncclComm_t* out() { return &comm_; }
  [[nodiscard]] ncclComm_t get() const {
    const ncclComm_t comm = read();
    return comm == mark() ? nullptr : comm;
  }
  [[nodiscard]] std::string describe() const {
    const ncclComm_t comm = read();
    return comm == mark() ? "unchanged" : comm == nullptr ? "null" : "set";
  }
  // Empties the slot of a communicator that is gone (destroyed).
  ncclComm_t forget() { return std::atomic_ref(comm_).exchange(nullptr); }
  // Aborts what the slot holds (ncclSuccess when it holds nothing) and empties it.
  ncclResult_t abort() {
    const ncclComm_t comm = get();
    std::atomic_ref(comm_).store(nullptr);
    return ncclCommAbort(comm);
  }

 private:
  [[nodiscard]] ncclComm_t read() const { return std::atomic_ref(const_cast<ncclComm_t&>(comm_)).load(); }
  [[nodiscard]] ncclComm_t mark() const { return reinterpret_cast<ncclComm_t>(const_cast<char*>(&mark_)); }

  char mark_ = 0;
  ncclComm_t comm_ = mark();
};

// Device memory and a stream for one operation.
class Operation {
 public:
  Operation() {
    if (cudaMalloc(&buffer_, kCount * sizeof(float)) != cudaSuccess || cudaStreamCreate(&stream_) != cudaSuccess) {
      throw std::runtime_error("cannot allocate a device buffer and a stream");
    }
  }
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;
  ~Operation() {
    (void)cudaStreamDestroy(stream_);
    (void)cudaFree(buffer_);
  }
  ncclResult_t all_reduce(ncclComm_t comm, std::size_t count = kCount, ncclDataType_t type = ncclFloat32) const {
    return ncclAllReduce(buffer_, buffer_, count, type, ncclSum, comm, stream_);
  }
  [[nodiscard]] std::string synchronize() const { return name(cudaStreamSynchronize(stream_)); }

  static constexpr std::size_t kCount = 64;

 private:
  void* buffer_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

ncclConfig_t config(bool blocking) {
  ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
  c.blocking = blocking ? 1 : 0;
  return c;
}

ncclUniqueId own_id() {
  ncclUniqueId id{};
  if (ncclGetUniqueId(&id) != ncclSuccess) throw std::runtime_error("ncclGetUniqueId failed");
  return id;
}

// An id made by rank 0 and sent to every rank.
ncclUniqueId shared_id(const World& w) {
  ncclUniqueId id{};
  if (w.rank == 0) id = own_id();
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
  return id;
}

// A ready communicator over every rank.
void ready(Slot& comm, const World& w, bool blocking) {
  const ncclUniqueId id = shared_id(w);
  ncclConfig_t c = config(blocking);
  const ncclResult_t r = ncclCommInitRankConfig(comm.out(), w.size, id, w.rank, &c);
  if ((r != ncclSuccess && r != ncclInProgress) || settle(comm.get()) != "ncclSuccess") {
    throw std::runtime_error("the world communicator did not initialize: " + name(r));
  }
}

// A non-blocking communicator of `size` ranks whose rank 0 is this rank alone: ready at once
// for one rank, initializing forever for more.
ncclResult_t alone(Slot& comm, int size) {
  ncclConfig_t c = config(false);
  return ncclCommInitRankConfig(comm.out(), size, own_id(), 0, &c);
}

// ---- The rules' scenarios: each makes the situation of its rule and observes it ----------

Observed init_blocking(const World& w) {
  Slot comm;
  const ncclUniqueId id = shared_id(w);
  ncclConfig_t c = config(true);
  const ncclResult_t r = ncclCommInitRankConfig(comm.out(), w.size, id, w.rank, &c);
  return {{"returns", name(r)}, {"handle.at_return", comm.describe()}, {"comm.at_return", state(comm.get())}};
}

Observed init_nonblocking(const World& w) {
  Slot comm;
  const ncclUniqueId id = shared_id(w);
  ncclConfig_t c = config(false);
  MPI_Barrier(MPI_COMM_WORLD);  // every member arrives at once
  const ncclResult_t r = ncclCommInitRankConfig(comm.out(), w.size, id, w.rank, &c);
  Observed o{{"returns", name(r)}, {"handle.at_return", comm.describe()}, {"comm.at_return", state(comm.get())}};
  o["comm.at_end"] = settle(comm.get());
  return o;
}

Observed init_peer_absent(const World&) {
  Slot comm;
  const ncclResult_t r = alone(comm, 2);
  Observed o{{"returns", name(r)}, {"handle.at_return", comm.describe()}};
  std::this_thread::sleep_for(kAbsent);
  o["comm.while_absent"] = state(comm.get());
  o["abort.returns"] = name(comm.abort());
  return o;
}

Observed init_in_group(const World& w) {
  Slot comm;
  const ncclUniqueId id = shared_id(w);
  ncclConfig_t c = config(false);
  (void)ncclGroupStart();
  const ncclResult_t r = ncclCommInitRankConfig(comm.out(), w.size, id, w.rank, &c);
  Observed o{{"returns", name(r)}, {"handle.at_return", comm.describe()}, {"comm.before_group_end", state(comm.get())}};
  o["group_end"] = name(ncclGroupEnd());
  o["comm.at_end"] = settle(comm.get());
  return o;
}

Observed init_invalid_rank(const World& w) {
  Slot comm;
  ncclConfig_t c = config(false);
  const ncclResult_t r = ncclCommInitRankConfig(comm.out(), w.size, own_id(), w.size, &c);
  return {{"returns", name(r)}, {"handle.at_return", comm.describe()}};
}

Observed group_waits_for_every_job(const World&) {
  Slot a;
  Slot b;
  (void)ncclGroupStart();
  (void)alone(a, 1);
  (void)alone(b, 2);
  Observed o{{"group_end", name(ncclGroupEnd())}};
  std::this_thread::sleep_for(kAbsent);
  o["a.while_absent"] = state(a.get());
  o["abort.returns"] = name(b.abort());
  o["a.after_abort"] = settle(a.get());
  return o;
}

Observed split_blocking(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, true);
  const ncclResult_t r = ncclCommSplit(parent.get(), 0, w.rank, child.out(), nullptr);
  return {{"returns", name(r)},
          {"handle.at_return", child.describe()},
          {"parent.at_return", state(parent.get())},
          {"child.at_return", state(child.get())}};
}

// What a non-blocking split or shrink that returned `r` shows at once, and once the parent
// is done with it.
Observed child_made(ncclResult_t r, const Slot& parent, const Slot& child) {
  Observed o{{"returns", name(r)}, {"handle.at_return", child.describe()}, {"parent.at_return", state(parent.get())}};
  o["parent.at_end"] = settle(parent.get());
  o["handle.at_end"] = child.describe();
  o["child.at_end"] = settle(child.get());
  return o;
}

// Rank 0 splits the parent while the other ranks have not called, and watches for kAbsent.
Observed split_alone(const World& w, const Slot& parent, Slot& child) {
  if (w.rank != 0) return {};
  Observed o{{"returns", name(ncclCommSplit(parent.get(), 0, w.rank, child.out(), nullptr))}};
  std::this_thread::sleep_for(kAbsent);
  o["handle.while_absent"] = child.describe();
  o["parent.while_absent"] = state(parent.get());
  return o;
}

Observed split_nonblocking(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  MPI_Barrier(MPI_COMM_WORLD);
  return child_made(ncclCommSplit(parent.get(), 0, w.rank, child.out(), nullptr), parent, child);
}

// The other ranks call once rank 0 is done watching.
Observed split_peer_absent(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  Observed o = split_alone(w, parent, child);
  MPI_Barrier(MPI_COMM_WORLD);
  if (w.rank != 0) (void)ncclCommSplit(parent.get(), 0, w.rank, child.out(), nullptr);
  const std::string end = settle(parent.get());
  if (w.rank == 0) {
    o["parent.at_end"] = end;
    o["handle.at_end"] = child.describe();
  }
  return o;
}

Observed split_nocolor(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  Observed o = child_made(ncclCommSplit(parent.get(), NCCL_SPLIT_NOCOLOR, w.rank, child.out(), nullptr), parent, child);
  o.erase("child.at_end");  // there is none
  return o;
}

Observed split_in_group(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  (void)ncclGroupStart();
  const ncclResult_t r = ncclCommSplit(parent.get(), 0, w.rank, child.out(), nullptr);
  Observed o{{"returns", name(r)}, {"parent.before_group_end", state(parent.get())}};
  o["group_end"] = name(ncclGroupEnd());
  o["parent.at_end"] = settle(parent.get());
  o["handle.at_end"] = child.describe();
  return o;
}

Observed split_parent_in_progress(const World& w) {
  Slot second;
  Slot child;
  Slot parent;
  ready(parent, w, false);
  (void)ncclCommSplit(parent.get(), 0, w.rank, child.out(), nullptr);
  const ncclResult_t r = ncclCommSplit(parent.get(), 0, w.rank, second.out(), nullptr);
  Observed o{{"second.returns", name(r)}, {"second.handle", second.describe()}};
  o["parent.at_end"] = settle(parent.get());
  o["handle.at_end"] = child.describe();
  return o;
}

// Rank 0 alone splits; the others never do, and abort the parent after rank 0 is done.
Observed split_abort_while_absent(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  Observed o = split_alone(w, parent, child);
  if (w.rank == 0) {
    o["abort.returns"] = name(parent.abort());
    o["handle.after_abort"] = child.describe();
    o["child_abort.returns"] = name(child.abort());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return o;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
Observed shrink_nonblocking(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  int excluded = w.size - 1;
  if (w.rank == excluded) return {};
  return child_made(ncclCommShrink(parent.get(), &excluded, 1, child.out(), nullptr, NCCL_SHRINK_DEFAULT), parent,
                    child);
}

Observed shrink_excluded_caller(const World& w) {
  Slot child;
  Slot parent;
  ready(parent, w, false);
  int excluded = w.rank;
  const ncclResult_t r = ncclCommShrink(parent.get(), &excluded, 1, child.out(), nullptr, NCCL_SHRINK_DEFAULT);
  return {{"returns", name(r)}, {"handle.at_return", child.describe()}, {"parent.after", state(parent.get())}};
}
#endif

Observed finalize(const World& w, bool blocking) {
  Slot comm;
  ready(comm, w, blocking);
  const ncclResult_t r = ncclCommFinalize(comm.get());
  Observed o{{"returns", name(r)}, {"comm.at_return", state(comm.get())}};
  if (!blocking) o["comm.at_end"] = settle(comm.get());
  return o;
}
Observed finalize_blocking(const World& w) { return finalize(w, true); }
Observed finalize_nonblocking(const World& w) { return finalize(w, false); }

Observed finalize_twice(const World& w) {
  Slot comm;
  ready(comm, w, false);
  (void)ncclCommFinalize(comm.get());
  (void)settle(comm.get());
  const ncclResult_t r = ncclCommFinalize(comm.get());
  return {{"second.returns", name(r)}, {"comm.after", state(comm.get())}};
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
// A ready non-blocking communicator over every rank, revoked and quiescent.
void revoked(Slot& comm, const World& w) {
  ready(comm, w, false);
  (void)ncclCommRevoke(comm.get(), NCCL_REVOKE_DEFAULT);
  (void)settle(comm.get());
}

Observed revoke_nonblocking(const World& w) {
  Slot comm;
  ready(comm, w, false);
  const ncclResult_t r = ncclCommRevoke(comm.get(), NCCL_REVOKE_DEFAULT);
  Observed o{{"returns", name(r)}, {"comm.at_return", state(comm.get())}};
  o["comm.at_end"] = settle(comm.get());
  return o;
}

Observed revoke_then_operation(const World& w) {
  const Operation op;
  Slot comm;
  revoked(comm, w);
  const ncclResult_t r = op.all_reduce(comm.get());
  return {{"operation.returns", name(r)}, {"comm.after", state(comm.get())}};
}

Observed revoke_then_revoke_or_finalize(const World& w) {
  Slot comm;
  revoked(comm, w);
  const ncclResult_t again = ncclCommRevoke(comm.get(), NCCL_REVOKE_DEFAULT);
  const ncclResult_t finalized = ncclCommFinalize(comm.get());
  return {{"revoke.returns", name(again)}, {"finalize.returns", name(finalized)}, {"comm.after", state(comm.get())}};
}

Observed revoke_invalid_flags(const World& w) {
  Slot comm;
  ready(comm, w, false);
  const ncclResult_t r = ncclCommRevoke(comm.get(), 1);
  return {{"returns", name(r)}, {"comm.after", state(comm.get())}};
}
#endif

Observed operation_nonblocking(const World& w) {
  const Operation op;
  Slot comm;
  ready(comm, w, false);
  const ncclResult_t r = op.all_reduce(comm.get());
  Observed o{{"returns", name(r)}, {"comm.at_return", state(comm.get())}};
  o["comm.at_end"] = settle(comm.get());
  o["stream"] = op.synchronize();
  return o;
}

Observed operation_one_rank(const World&) {
  const Operation op;
  Slot comm;
  if (alone(comm, 1) == ncclInProgress) (void)settle(comm.get());
  const ncclResult_t r = op.all_reduce(comm.get());
  return {{"returns", name(r)}, {"comm.at_return", state(comm.get())}, {"stream", op.synchronize()}};
}

Observed operation_zero_count(const World& w) {
  const Operation op;
  Slot comm;
  ready(comm, w, false);
  const ncclResult_t r = op.all_reduce(comm.get(), 0);
  return {{"returns", name(r)}, {"comm.at_return", state(comm.get())}};
}

Observed operation_in_group(const World& w) {
  const Operation op;
  Slot comm;
  ready(comm, w, false);
  (void)ncclGroupStart();
  const ncclResult_t r = op.all_reduce(comm.get());
  Observed o{{"returns", name(r)}, {"comm.before_group_end", state(comm.get())}};
  o["group_end"] = name(ncclGroupEnd());
  o["comm.at_end"] = settle(comm.get());
  o["stream"] = op.synchronize();
  return o;
}

Observed operation_invalid_type(const World& w) {
  const Operation op;
  Slot comm;
  ready(comm, w, false);
  const ncclResult_t r = op.all_reduce(comm.get(), Operation::kCount, ncclNumTypes);
  Observed o{{"returns", name(r)}, {"comm.after", state(comm.get())}};
  o["operation.after"] = name(op.all_reduce(comm.get()));
  return o;
}

Observed group_argument_error(const World& w) {
  const Operation op;
  Slot comm;
  ready(comm, w, true);
  (void)ncclGroupStart();
  const ncclResult_t r = op.all_reduce(comm.get(), Operation::kCount, ncclNumTypes);
  Observed o{{"returns", name(r)}};
  o["group_end"] = name(ncclGroupEnd());
  o["comm.after"] = state(comm.get());
  return o;
}

// Inits rather than splits: a refused split leaves its parent pointing at the child's freed
// abort flag (src/init.cc:2594-2595, 2631-2641), which the parent's abort would then write.
Observed group_mixed_blocking_jobs(const World& w) {
  Slot second;
  Slot first;
  const ncclUniqueId id = shared_id(w);
  ncclConfig_t nonblocking = config(false);
  ncclConfig_t blocking = config(true);
  (void)ncclGroupStart();
  (void)ncclCommInitRankConfig(first.out(), w.size, id, w.rank, &nonblocking);
  const ncclResult_t r = ncclCommInitRankConfig(second.out(), w.size, id, w.rank, &blocking);
  Observed o{{"second.returns", name(r)}, {"second.handle", second.describe()}};
  o["group_end"] = name(ncclGroupEnd());
  o["first.handle"] = first.describe();
  o["first.after"] = state(first.get());
  return o;
}

Observed group_end_without_start(const World&) { return {{"returns", name(ncclGroupEnd())}}; }

Observed destroy_nonblocking(const World& w) {
  Slot comm;
  ready(comm, w, false);
  const ncclResult_t r = ncclCommDestroy(comm.get());
  if (r == ncclSuccess) (void)comm.forget();
  return {{"returns", name(r)}};
}

Observed destroy_in_progress(const World&) {
  Slot comm;
  (void)alone(comm, 2);
  const ncclResult_t r = ncclCommDestroy(comm.get());
  Observed o{{"returns", name(r)}};
  o["group_end"] = name(ncclGroupEnd());
  o["abort.returns"] = name(comm.abort());
  return o;
}

using Scenario = Observed (*)(const World&);
struct Entry {
  std::string_view id;
  Scenario run;
};
constexpr Entry kScenarios[] = {
    {"init.blocking", init_blocking},
    {"init.nonblocking", init_nonblocking},
    {"init.nonblocking.peer_absent", init_peer_absent},
    {"init.nonblocking.in_group", init_in_group},
    {"init.invalid_rank", init_invalid_rank},
    {"group.nonblocking.waits_for_every_job", group_waits_for_every_job},
    {"split.blocking", split_blocking},
    {"split.nonblocking", split_nonblocking},
    {"split.nonblocking.peer_absent", split_peer_absent},
    {"split.nonblocking.nocolor", split_nocolor},
    {"split.nonblocking.in_group", split_in_group},
    {"split.parent_in_progress", split_parent_in_progress},
    {"split.nonblocking.abort_while_absent", split_abort_while_absent},
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
    {"shrink.nonblocking", shrink_nonblocking},
    {"shrink.excluded_caller", shrink_excluded_caller},
#endif
    {"finalize.blocking", finalize_blocking},
    {"finalize.nonblocking", finalize_nonblocking},
    {"finalize.twice.nonblocking", finalize_twice},
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    {"revoke.nonblocking", revoke_nonblocking},
    {"revoke.then_operation", revoke_then_operation},
    {"revoke.then_revoke_or_finalize", revoke_then_revoke_or_finalize},
    {"revoke.invalid_flags", revoke_invalid_flags},
#endif
    {"operation.nonblocking", operation_nonblocking},
    {"operation.nonblocking.one_rank", operation_one_rank},
    {"operation.nonblocking.zero_count", operation_zero_count},
    {"operation.nonblocking.in_group", operation_in_group},
    {"operation.invalid_type.nonblocking", operation_invalid_type},
    {"group.argument_error", group_argument_error},
    {"group.mixed_blocking_jobs", group_mixed_blocking_jobs},
    {"group.end_without_start", group_end_without_start},
    {"destroy.nonblocking", destroy_nonblocking},
    {"destroy.in_progress", destroy_in_progress},
};

// ---- Running and comparing ------------------------------------------------------------

// Ends the job, naming the rule, if a call of it never returns: every wait has a deadline.
class Watchdog {
 public:
  Watchdog() : thread_([this] { watch(); }) {}
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  void arm(std::string rule) {
    const std::lock_guard lock(mutex_);
    rule_ = std::move(rule);
    deadline_ = Clock::now() + kRuleLimit;
  }

 private:
  void watch() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      if (!rule_.empty() && Clock::now() >= deadline_) {
        std::fprintf(stderr, "nccl_rules_check: rule %s did not finish within %lld s\n", rule_.c_str(),
                     static_cast<long long>(kRuleLimit.count()));
        std::_Exit(124);
      }
      wake_.wait_for(lock, std::chrono::milliseconds(100));
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::string rule_;
  Clock::time_point deadline_{};
  bool stop_ = false;
  std::thread thread_;
};

// NCCL_VERSION of a rule's "nccl" ("2.28"): the release that brought its call.
int version_of(const json& rule) {
  int major = 0;
  int minor = 0;
  (void)std::sscanf(rule.value("nccl", std::string("0.0")).c_str(), "%d.%d", &major, &minor);
  return NCCL_VERSION(major, minor, 0);
}

// What a rank saw of a rule: its observations, or why it could not run it.
json run_rule(const json& rule, const World& w) {
  const std::string id = rule.at("id").get<std::string>();
  const int ranks = rule.value("ranks", 1);
  if (w.size < ranks) return {{"skipped", "needs " + std::to_string(ranks) + " ranks"}};
  int version = 0;
  (void)ncclGetVersion(&version);
  const int needed = version_of(rule);
  if (version < needed)
    return {{"skipped", "needs NCCL " + std::to_string(needed) + ", this is " + std::to_string(version)}};
  for (const Entry& e : kScenarios) {
    if (e.id != id) continue;
    try {
      return {{"observed", e.run(w)}};
    } catch (const std::exception& error) {
      return {{"error", error.what()}};
    }
  }
  if (NCCL_VERSION_CODE < needed)
    return {{"skipped", "built against NCCL headers older than " + std::to_string(needed)}};
  return {{"error", "no scenario makes this rule's situation"}};
}

// Every rank's result on rank 0.
std::vector<json> gather(const json& mine, const World& w) {
  const std::string text = mine.dump();
  const int length = static_cast<int>(text.size());
  std::vector<int> lengths(static_cast<std::size_t>(w.size));
  MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::vector<int> offsets(lengths.size(), 0);
  for (std::size_t r = 1; r < lengths.size(); ++r) offsets[r] = offsets[r - 1] + lengths[r - 1];
  std::string all(w.rank == 0 ? static_cast<std::size_t>(offsets.back() + lengths.back()) : 0, '\0');
  MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, 0, MPI_COMM_WORLD);
  std::vector<json> results;
  if (w.rank == 0) {
    for (std::size_t r = 0; r < lengths.size(); ++r) {
      results.push_back(
          json::parse(all.substr(static_cast<std::size_t>(offsets[r]), static_cast<std::size_t>(lengths[r]))));
    }
  }
  return results;
}

bool matches(const std::string& expected, const std::string& observed) {
  if (expected == "error")
    return observed.starts_with("nccl") && observed != "ncclSuccess" && observed != "ncclInProgress";
  return expected == observed;
}

// The differences between a rank's observations and the rule's, one line each.
std::vector<std::string> differences(const json& expect, const Observed& observed) {
  std::vector<std::string> out;
  for (const auto& [key, value] : expect.items()) {
    const auto it = observed.find(key);
    if (it == observed.end()) {
      out.push_back(key + ": not observed");
    } else if (!matches(value.get<std::string>(), it->second)) {
      out.push_back(key + ": expected " + value.get<std::string>() + ", observed " + it->second);
    }
  }
  for (const auto& [key, value] : observed) {
    if (!expect.contains(key)) out.push_back(key + ": observed " + value + ", which the rule does not list");
  }
  return out;
}

// Rank 0's verdict on one rule from every rank's result; prints it and adds it to the report.
bool judge(const json& rule, const std::vector<json>& results, json& report) {
  const std::string id = rule.at("id").get<std::string>();
  json entry{{"id", id}, {"expect", rule.at("expect")}, {"ranks", json::object()}};
  std::vector<std::string> lines;
  std::string skipped;
  int observers = 0;
  for (std::size_t r = 0; r < results.size(); ++r) {
    const json& result = results[r];
    if (result.contains("skipped")) skipped = result.at("skipped").get<std::string>();
    if (result.contains("error"))
      lines.push_back("rank " + std::to_string(r) + ": " + result.at("error").get<std::string>());
    if (!result.contains("observed") || result.at("observed").empty()) continue;
    ++observers;
    const auto observed = result.at("observed").get<Observed>();
    entry["ranks"][std::to_string(r)] = observed;
    for (const std::string& d : differences(rule.at("expect"), observed))
      lines.push_back("rank " + std::to_string(r) + ": " + d);
  }
  if (!skipped.empty() && lines.empty()) {
    entry["verdict"] = "skipped: " + skipped;
    std::printf("  skip    %-42s %s\n", id.c_str(), skipped.c_str());
  } else {
    if (observers == 0 && lines.empty()) lines.emplace_back("no rank observed it");
    entry["verdict"] = lines.empty() ? "holds" : "differs";
    entry["differences"] = lines;
    std::printf("  %-7s %s\n", lines.empty() ? "holds" : "DIFFERS", id.c_str());
    for (const std::string& line : lines) std::printf("          %s\n", line.c_str());
  }
  report["rules"].push_back(entry);
  return lines.empty();
}

// Table ids and scenarios must match one to one.
std::vector<std::string> unmatched(const json& rules) {
  std::vector<std::string> out;
  for (const Entry& e : kScenarios) {
    bool listed = false;
    for (const json& rule : rules) listed = listed || rule.at("id").get<std::string>() == e.id;
    if (!listed) out.push_back(std::string(e.id));
  }
  return out;
}

int run(int argc, char** argv, const World& w) {
  CLI::App app{"Checks NCCL's return-code and state rules against the libnccl this program runs on"};
  std::string table_path;
  std::string only;
  std::string report_path;
  app.add_option("--table", table_path, "the rules (nccl_rules.json)")->required()->check(CLI::ExistingFile);
  app.add_option("--rule", only, "check this rule only");
  app.add_option("--report", report_path, "write every rule's expected and observed values here (JSON)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return w.rank == 0 ? app.exit(e) : 2;
  }
  json table;
  try {
    table = json::parse(std::ifstream(table_path));
  } catch (const json::exception& e) {
    if (w.rank == 0)
      std::fprintf(stderr, "nccl_rules_check: %s is not a rules table: %s\n", table_path.c_str(), e.what());
    return 2;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (w.rank == 0) std::printf("nccl_rules_check: skipped: no CUDA device\n");
    return 77;
  }
  MPI_Comm node = MPI_COMM_NULL;
  int local = 0;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  (void)cudaSetDevice(local % devices);

  int version = 0;
  (void)ncclGetVersion(&version);
  const bool emulated = dlsym(RTLD_DEFAULT, "pcxemu_live_communicators") != nullptr;
  json report{{"nccl_version", version},
              {"library", emulated ? "pcx emulator" : "NCCL"},
              {"table", table.at("nccl")},
              {"world", w.size},
              {"rules", json::array()}};
  if (w.rank == 0) {
    std::printf("nccl_rules_check: %zu rules of NCCL %s against %s %d on %d rank(s)\n", table.at("rules").size(),
                table.at("nccl").get<std::string>().c_str(), emulated ? "the pcx emulator of NCCL" : "NCCL", version,
                w.size);
  }
  bool all_hold = true;
  for (const std::string& id : unmatched(table.at("rules"))) {
    if (w.rank == 0) std::printf("  DIFFERS %s: a scenario the table has no rule for\n", id.c_str());
    all_hold = false;
  }
  Watchdog watchdog;
  int held = 0;
  int checked = 0;
  for (const json& rule : table.at("rules")) {
    const std::string id = rule.at("id").get<std::string>();
    if (!only.empty() && id != only) continue;
    MPI_Barrier(MPI_COMM_WORLD);
    watchdog.arm(id);
    const std::vector<json> results = gather(run_rule(rule, w), w);
    if (w.rank == 0) {
      const bool holds = judge(rule, results, report);
      all_hold = all_hold && holds;
      const std::string verdict = report["rules"].back()["verdict"].get<std::string>();
      checked += verdict.starts_with("skipped") ? 0 : 1;
      held += verdict == "holds" ? 1 : 0;
    }
    watchdog.arm("");
  }
  if (w.rank == 0) {
    std::printf("nccl_rules_check: %d of %d rules checked hold\n", held, checked);
    if (!report_path.empty()) std::ofstream(report_path) << report.dump(2) << '\n';
  }
  int verdict = all_hold ? 1 : 0;
  MPI_Bcast(&verdict, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return verdict == 1 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  World w;
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  const int status = run(argc, argv, w);
  MPI_Finalize();
  return status;
}
