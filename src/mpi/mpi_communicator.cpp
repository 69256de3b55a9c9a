#include "pcx/mpi/mpi_communicator.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../elementwise.hpp"
#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/self_communicator.hpp"

namespace pcx {
namespace {

// Communicator's public functions let only enumerated types through. MPI has no 16-bit
// floating-point type: they travel as 16-bit integers, and reductions over them use
// operations of pcx's own (see Reduction).
MPI_Datatype mpi_type(DataType type) {
  switch (type) {
    case DataType::int8: return MPI_INT8_T;
    case DataType::uint8: return MPI_UINT8_T;
    case DataType::int32: return MPI_INT32_T;
    case DataType::uint32: return MPI_UINT32_T;
    case DataType::int64: return MPI_INT64_T;
    case DataType::uint64: return MPI_UINT64_T;
    case DataType::float16:
    case DataType::bfloat16: return MPI_UINT16_T;
    case DataType::float32: return MPI_FLOAT;
    case DataType::float64: break;
  }
  return MPI_DOUBLE;
}

template <DataType Type, ReduceOp Op>
void reduce_16_bit_floats(void* in, void* inout, int* length, MPI_Datatype*) {
  detail::accumulate(inout, in, static_cast<std::size_t>(*length), Type, Op);
}

template <DataType Type>
MPI_User_function* user_function(ReduceOp op) {
  switch (op) {
    case ReduceOp::prod: return &reduce_16_bit_floats<Type, ReduceOp::prod>;
    case ReduceOp::min: return &reduce_16_bit_floats<Type, ReduceOp::min>;
    case ReduceOp::max: return &reduce_16_bit_floats<Type, ReduceOp::max>;
    case ReduceOp::sum:
    case ReduceOp::avg: break;
  }
  return &reduce_16_bit_floats<Type, ReduceOp::sum>;
}

// The MPI operation of a reduction: MPI's own, or for 16-bit floats one created for the
// call (kept in the communicator's state, so that a request left unfinished never sees it
// freed). avg is a sum that the caller then divides.
class Reduction {
 public:
  Reduction(ReduceOp op, DataType type) {
    if (type == DataType::float16 || type == DataType::bfloat16) {
      MPI_User_function* function =
          type == DataType::float16 ? user_function<DataType::float16>(op) : user_function<DataType::bfloat16>(op);
      check_mpi(MPI_Op_create(function, 1, &op_), "MPI_Op_create");
      owned_ = true;
      return;
    }
    switch (op) {
      case ReduceOp::prod: op_ = MPI_PROD; break;
      case ReduceOp::min: op_ = MPI_MIN; break;
      case ReduceOp::max: op_ = MPI_MAX; break;
      case ReduceOp::sum:
      case ReduceOp::avg: op_ = MPI_SUM; break;
    }
  }
  ~Reduction() {
    if (owned_) MPI_Op_free(&op_);
  }
  Reduction(const Reduction&) = delete;
  Reduction& operator=(const Reduction&) = delete;
  [[nodiscard]] MPI_Op get() const noexcept { return op_; }

 private:
  MPI_Op op_ = MPI_OP_NULL;
  bool owned_ = false;
};

// MPI counts and displacements are ints.
int mpi_count(std::size_t count) {
  if (count > static_cast<std::size_t>(INT_MAX)) {
    throw ConfigError(fmt::format("count {} exceeds what MPI takes in one call ({})", count, INT_MAX));
  }
  return static_cast<int>(count);
}

// One message stream per pair of members; each communicator is a context of its own, so
// no other traffic shares the tag.
constexpr int kTag = 0;
// The barrier before MPI_Comm_create_group, and its own tag. Members create their common
// groups in the same order, and MPI keeps messages of one pair in order, so successive
// creations need no tags of their own.
constexpr int kBarrierTag = 1;
constexpr int kCreateTag = 2;

const void* send_or_in_place(const void* send, const void* recv) { return send == recv ? MPI_IN_PLACE : send; }

using Clock = std::chrono::steady_clock;

// Pauses between polls. MPI progresses a non-blocking operation only inside MPI calls,
// and a blocking MPI call polls without pause: the first 100 µs are polled back to back,
// so that short operations cost little more than the blocking call; then up to 10 ms
// polled yielding the core (to other ranks of an oversubscribed node, as Open MPI's own
// blocking calls do there); then short sleeps growing to 1 ms, so that a wait for a
// stopped peer does not hold a core.
class Backoff {
 public:
  void pause() {
    const Clock::time_point now = Clock::now();
    if (now < start_ + std::chrono::microseconds(100)) return;
    if (now < start_ + std::chrono::milliseconds(10)) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(pause_);
    pause_ = std::min(pause_ * 2, std::chrono::microseconds(1000));
  }

 private:
  Clock::time_point start_ = Clock::now();
  std::chrono::microseconds pause_{10};
};

// Checked before a split or dup communicates, so that every member refuses them alike.
void check_options(const CommOptions& options) {
  if (options.timeout.count() < 0) {
    throw ConfigError(
        fmt::format("MPI communicator timeout {} ms is negative (0: no deadline)", options.timeout.count()));
  }
}

std::span<const std::byte> bytes_of(const void* data, std::size_t count, DataType type) {
  return {static_cast<const std::byte*>(data), count * size_of(type)};
}

std::span<std::byte> bytes_of(void* data, std::size_t count, DataType type) {
  return {static_cast<std::byte*>(data), count * size_of(type)};
}

}  // namespace

// What MPI may use until an operation completes: the copies of the caller's buffers, the
// counts of an all_to_all_v, the reduction, the request, a new communicator's handle.
struct MpiCommunicator::State {
  std::vector<std::byte> buffer;
  std::vector<int> counts;
  std::optional<Reduction> reduction;
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Request sent = MPI_REQUEST_NULL;  // a send beside `request` (create_group's barrier)
  std::array<std::int64_t, 2> digests{};  // create_group's barrier: sent, received
  MPI_Comm child = MPI_COMM_NULL;
  // A request was left unfinished: MPI may still use all of the above and the MPI_Comm.
  bool parked = false;
};

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  throw CommError(
      fmt::format("{} failed: {} (MPI error {})", call, std::string_view(text, static_cast<std::size_t>(length)), code),
      code);
}

MpiEnvironment::MpiEnvironment(int* argc, char*** argv, int required) {
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  if (initialized) return;
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, required, &provided), "MPI_Init_thread");
  initialized_here_ = true;
  if (provided < required) {
    MPI_Finalize();
    initialized_here_ = false;
    throw CommError(fmt::format("MPI gives thread support level {}, below the required {}", provided, required),
                    MPI_ERR_OTHER);
  }
}

MpiEnvironment::~MpiEnvironment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (initialized_here_ && !finalized) MPI_Finalize();
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned, const CommOptions& options)
    : comm_(comm), owned_(owned), options_(options), state_(std::make_unique<State>()) {
  if (comm == MPI_COMM_NULL) throw ConfigError("an MPI communicator cannot wrap MPI_COMM_NULL");
  try {
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_options(options_);
  } catch (...) {
    release();
    throw;
  }
}

MpiCommunicator MpiCommunicator::borrow(MPI_Comm comm, const CommOptions& options) {
  return MpiCommunicator(comm, false, options);
}

MpiCommunicator MpiCommunicator::adopt(MPI_Comm comm, const CommOptions& options) {
  // Owning a predefined communicator would change its error handler for the whole
  // process and free it. (MPI_COMM_NULL is refused by the constructor.)
  if (comm == MPI_COMM_WORLD || comm == MPI_COMM_SELF) {
    throw ConfigError(fmt::format("MpiCommunicator::adopt cannot own {}; borrow it instead",
                                  comm == MPI_COMM_WORLD ? "MPI_COMM_WORLD" : "MPI_COMM_SELF"));
  }
  MpiCommunicator owner(comm, true, options);
  // Ours from now on: report errors instead of letting MPI abort the job.
  check_mpi(MPI_Comm_set_errhandler(owner.comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  // MPI's tools and error messages show a communicator's name.
  if (!options.name.empty()) {
    const std::string clipped = options.name.substr(0, MPI_MAX_OBJECT_NAME - 1);
    check_mpi(MPI_Comm_set_name(owner.comm_, clipped.c_str()), "MPI_Comm_set_name");
  }
  return owner;
}

MpiCommunicator::MpiCommunicator(MpiCommunicator&& other) noexcept
    : Communicator(std::move(other)),
      comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      owned_(std::exchange(other.owned_, false)),
      size_(std::exchange(other.size_, 0)),
      rank_(std::exchange(other.rank_, -1)),
      options_(std::move(other.options_)),
      state_(std::move(other.state_)) {}

MpiCommunicator& MpiCommunicator::operator=(MpiCommunicator&& other) noexcept {
  if (this != &other) {
    release();
    Communicator::operator=(std::move(other));
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    owned_ = std::exchange(other.owned_, false);
    size_ = std::exchange(other.size_, 0);
    rank_ = std::exchange(other.rank_, -1);
    options_ = std::move(other.options_);
    state_ = std::move(other.state_);
  }
  return *this;
}

MpiCommunicator::~MpiCommunicator() { release(); }

void MpiCommunicator::release() noexcept {
  if (state_ && state_->parked) {
    // MPI may still write into the state and use the handle (see the class comment).
    static_cast<void>(state_.release());
  } else if (owned_ && comm_ != MPI_COMM_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  state_.reset();
  comm_ = MPI_COMM_NULL;
  owned_ = false;
}

std::string MpiCommunicator::describe() const {
  return fmt::format("MPI communicator {} (rank {} of {})",
                     options_.name.empty() ? std::string("(unnamed)") : fmt::format("\"{}\"", options_.name), rank_,
                     size_);
}

Clock::time_point MpiCommunicator::deadline() const {
  const Clock::time_point now = Clock::now();
  return options_.timeout < Clock::time_point::max() - now ? now + options_.timeout : Clock::time_point::max();
}

template <class Done>
void MpiCommunicator::poll(std::string_view what, Clock::time_point deadline, Done&& done) const {
  for (Backoff backoff; !done(); backoff.pause()) {
    if (aborted() || Clock::now() >= deadline) {
      state_->parked = state_->request != MPI_REQUEST_NULL || state_->sent != MPI_REQUEST_NULL;
      if (aborted()) throw CommError(fmt::format("{} on {}: the communicator was aborted", what, describe()), -1);
      abort();
      throw Timeout(fmt::format("{} on {} did not finish within {} ms; the communicator was aborted", what, describe(),
                                options_.timeout.count()));
    }
  }
}

template <class Start>
void MpiCommunicator::run(std::string_view what, Clock::time_point deadline, std::span<const std::byte> send,
                          std::span<std::byte> receive, Start&& start) const {
  State& s = *state_;
  if (options_.timeout.count() == 0) {
    check_mpi(start(send.data(), receive.data(), nullptr), what.data());
    return;
  }
  // The copies: one buffer in place (the caller passed the same buffer twice), else the
  // send data followed by the result.
  const bool in_place = static_cast<const void*>(send.data()) == static_cast<const void*>(receive.data());
  s.buffer.resize(in_place ? std::max(send.size(), receive.size()) : send.size() + receive.size());
  std::byte* const in = s.buffer.data();
  std::byte* const out = in_place ? in : in + send.size();
  if (!send.empty()) std::memcpy(in, send.data(), send.size());
  check_mpi(start(in, out, &s.request), what.data());
  poll(what, deadline, [&] {
    int complete = 0;
    check_mpi(MPI_Test(&s.request, &complete, MPI_STATUS_IGNORE), "MPI_Test");
    return complete != 0;
  });
  if (!receive.empty()) std::memcpy(receive.data(), out, receive.size());
}

std::unique_ptr<Communicator> MpiCommunicator::do_split(int colour, int key, int, const CommOptions& options) const {
  check_options(options);
  // A member that stopped before the split is caught here, under the deadline; MPI has no
  // non-blocking MPI_Comm_split to catch one that stops during it.
  if (options_.timeout.count() > 0) {
    run("split", deadline(), {}, {},
        [&](const void*, void*, MPI_Request* request) { return MPI_Ibarrier(comm_, request); });
  }
  MPI_Comm child = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, colour == kNoColour ? MPI_UNDEFINED : colour, key, &child), "MPI_Comm_split");
  if (child == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(adopt(child, options));
}

std::unique_ptr<Communicator> MpiCommunicator::do_create_group(std::span<const int> members, int index,
                                                               const CommOptions& options) const {
  check_options(options);
  const int n = static_cast<int>(members.size());
  // A dissemination barrier: in round k member i hears from member i - 2^k, so after
  // ceil(log2 n) rounds every member has heard from all, and one that stopped is found
  // under the deadline. Each message carries a digest of the member list: members that
  // list the members differently (survivors that disagree on whom a shrink excludes)
  // never reach MPI_Comm_create_group, whose groups must be the same everywhere. The
  // buffers live in the state, which a Timeout parks with the requests.
  State& s = *state_;
  const std::int64_t digest = digest_of(fmt::format("{}", fmt::join(members, ",")));
  s.digests = {digest, 0};
  const Clock::time_point until = deadline();
  for (int step = 1; options_.timeout.count() > 0 && step < n; step *= 2) {
    const int from = members[static_cast<std::size_t>((index - step + n) % n)];
    check_mpi(MPI_Irecv(&s.digests[1], 1, MPI_INT64_T, from, kBarrierTag, comm_, &s.request), "MPI_Irecv");
    check_mpi(MPI_Isend(&s.digests[0], 1, MPI_INT64_T, members[static_cast<std::size_t>((index + step) % n)],
                        kBarrierTag, comm_, &s.sent),
              "MPI_Isend");
    poll("create_group", until, [&] {
      int complete = 0;
      check_mpi(MPI_Test(&s.request, &complete, MPI_STATUS_IGNORE), "MPI_Test");
      int sent = 0;
      check_mpi(MPI_Test(&s.sent, &sent, MPI_STATUS_IGNORE), "MPI_Test");
      return complete != 0 && sent != 0;
    });
    if (s.digests[1] != digest) {
      throw ConfigMismatch(fmt::format("create_group on {}: member {} lists the {} members differently ([{}] here)",
                                       describe(), from, n, fmt::join(members, ",")));
    }
  }
  MPI_Group all = MPI_GROUP_NULL;
  MPI_Group group = MPI_GROUP_NULL;
  check_mpi(MPI_Comm_group(comm_, &all), "MPI_Comm_group");
  const int included = MPI_Group_incl(all, n, members.data(), &group);
  MPI_Group_free(&all);
  check_mpi(included, "MPI_Group_incl");
  MPI_Comm child = MPI_COMM_NULL;
  const int created = MPI_Comm_create_group(comm_, group, kCreateTag, &child);
  MPI_Group_free(&group);
  check_mpi(created, "MPI_Comm_create_group");
  return std::make_unique<MpiCommunicator>(adopt(child, options));
}

std::unique_ptr<Communicator> MpiCommunicator::do_dup(const CommOptions& options) const {
  check_options(options);
  State& s = *state_;
  s.child = MPI_COMM_NULL;
  run("dup", deadline(), {}, {}, [&](const void*, void*, MPI_Request* request) {
    return request != nullptr ? MPI_Comm_idup(comm_, &s.child, request) : MPI_Comm_dup(comm_, &s.child);
  });
  return std::make_unique<MpiCommunicator>(adopt(std::exchange(s.child, MPI_COMM_NULL), options));
}
std::unique_ptr<Communicator> MpiCommunicator::self() const { return std::make_unique<SelfCommunicator>(); }

void MpiCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const {
  const int n = mpi_count(count);
  const MPI_Op reduction = state_->reduction.emplace(op, type).get();
  run("all_reduce", deadline(), bytes_of(send, count, type), bytes_of(recv, count, type),
      [&](const void* in, void* out, MPI_Request* request) {
        return request != nullptr
                   ? MPI_Iallreduce(send_or_in_place(in, out), out, n, mpi_type(type), reduction, comm_, request)
                   : MPI_Allreduce(send_or_in_place(in, out), out, n, mpi_type(type), reduction, comm_);
      });
  if (op == ReduceOp::avg) detail::finish_average(recv, count, type, size_);
}

void MpiCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  const int n = mpi_count(count);
  const std::size_t total = count * static_cast<std::size_t>(size_);
  run("all_to_all", deadline(), bytes_of(send, total, type), bytes_of(recv, total, type),
      [&](const void* in, void* out, MPI_Request* request) {
        const MPI_Datatype t = mpi_type(type);
        return request != nullptr ? MPI_Ialltoall(send_or_in_place(in, out), n, t, out, n, t, comm_, request)
                                  : MPI_Alltoall(send_or_in_place(in, out), n, t, out, n, t, comm_);
      });
}

void MpiCommunicator::do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                                      std::span<const std::size_t> send_offsets, void* recv,
                                      std::span<const std::size_t> recv_counts,
                                      std::span<const std::size_t> recv_offsets, DataType type) const {
  // MPI reads the counts until the operation completes: they live in the state.
  std::vector<int>& c = state_->counts;
  c.clear();
  for (const auto list : {send_counts, send_offsets, recv_counts, recv_offsets}) {
    for (const std::size_t value : list) c.push_back(mpi_count(value));
  }
  const auto members = static_cast<std::size_t>(size_);
  const int* sends = c.data();
  const int* send_displacements = sends + members;
  const int* receives = send_displacements + members;
  const int* receive_displacements = receives + members;
  const std::size_t send_total = send_offsets.back() + send_counts.back();
  const std::size_t recv_total = recv_offsets.back() + recv_counts.back();
  run("all_to_all_v", deadline(), bytes_of(send, send_total, type), bytes_of(recv, recv_total, type),
      [&](const void* in, void* out, MPI_Request* request) {
        const MPI_Datatype t = mpi_type(type);
        return request != nullptr
                   ? MPI_Ialltoallv(in, sends, send_displacements, t, out, receives, receive_displacements, t, comm_,
                                    request)
                   : MPI_Alltoallv(in, sends, send_displacements, t, out, receives, receive_displacements, t, comm_);
      });
}

void MpiCommunicator::do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  const int n = mpi_count(count);
  run("all_gather", deadline(), bytes_of(send, count, type),
      bytes_of(recv, count * static_cast<std::size_t>(size_), type),
      [&](const void* in, void* out, MPI_Request* request) {
        const MPI_Datatype t = mpi_type(type);
        return request != nullptr ? MPI_Iallgather(in, n, t, out, n, t, comm_, request)
                                  : MPI_Allgather(in, n, t, out, n, t, comm_);
      });
}

void MpiCommunicator::do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                        ReduceOp op) const {
  const int n = mpi_count(count);
  const MPI_Op reduction = state_->reduction.emplace(op, type).get();
  run("reduce_scatter", deadline(), bytes_of(send, count * static_cast<std::size_t>(size_), type),
      bytes_of(recv, count, type), [&](const void* in, void* out, MPI_Request* request) {
        return request != nullptr ? MPI_Ireduce_scatter_block(in, out, n, mpi_type(type), reduction, comm_, request)
                                  : MPI_Reduce_scatter_block(in, out, n, mpi_type(type), reduction, comm_);
      });
  if (op == ReduceOp::avg) detail::finish_average(recv, count, type, size_);
}

void MpiCommunicator::do_broadcast(void* buffer, std::size_t count, DataType type, int root) const {
  const int n = mpi_count(count);
  run("broadcast", deadline(), bytes_of(buffer, count, type), bytes_of(buffer, count, type),
      [&](const void*, void* out, MPI_Request* request) {
        return request != nullptr ? MPI_Ibcast(out, n, mpi_type(type), root, comm_, request)
                                  : MPI_Bcast(out, n, mpi_type(type), root, comm_);
      });
}

void MpiCommunicator::do_send(const void* buffer, std::size_t count, DataType type, int peer) const {
  const int n = mpi_count(count);
  run("send", deadline(), bytes_of(buffer, count, type), {}, [&](const void* in, void*, MPI_Request* request) {
    return request != nullptr ? MPI_Isend(in, n, mpi_type(type), peer, kTag, comm_, request)
                              : MPI_Send(in, n, mpi_type(type), peer, kTag, comm_);
  });
}

void MpiCommunicator::do_recv(void* buffer, std::size_t count, DataType type, int peer) const {
  // The message is matched and sized before it is received: one of another count is
  // received into a buffer of its own and refused naming both counts, instead of MPI's
  // truncation error (which would end the job on a communicator with MPI's default error
  // handler) or a short message accepted silently. A matched probe keeps the match to
  // this thread.
  const Clock::time_point until = deadline();
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status;
  if (options_.timeout.count() == 0) {
    check_mpi(MPI_Mprobe(peer, kTag, comm_, &message, &status), "MPI_Mprobe");
  } else {
    poll("recv", until, [&] {
      int found = 0;
      check_mpi(MPI_Improbe(peer, kTag, comm_, &found, &message, &status), "MPI_Improbe");
      return found != 0;
    });
  }
  // Counted in bytes, which any message has (a count in elements may be MPI_UNDEFINED).
  int bytes = 0;
  check_mpi(MPI_Get_count(&status, MPI_BYTE, &bytes), "MPI_Get_count");
  const auto sent = static_cast<std::size_t>(bytes);
  const auto receive = [&](void* into, int n, MPI_Datatype t) {
    run("recv", until, {}, {static_cast<std::byte*>(into), sent}, [&](const void*, void* out, MPI_Request* request) {
      return request != nullptr ? MPI_Imrecv(out, n, t, &message, request)
                                : MPI_Mrecv(out, n, t, &message, MPI_STATUS_IGNORE);
    });
  };
  if (sent == count * size_of(type)) {
    receive(buffer, mpi_count(count), mpi_type(type));
    return;
  }
  std::vector<std::byte> discarded(sent);
  receive(discarded.data(), bytes, MPI_BYTE);
  throw CommError(fmt::format("recv from member {} expected {} {} elements but {} were sent", peer, count,
                              to_string(type), sent / size_of(type)),
                  MPI_ERR_COUNT);
}

void MpiCommunicator::do_barrier() const {
  run("barrier", deadline(), {}, {}, [&](const void*, void*, MPI_Request* request) {
    return request != nullptr ? MPI_Ibarrier(comm_, request) : MPI_Barrier(comm_);
  });
}

// A node is a shared-memory domain as MPI reports it, named by its lowest member. Like
// MPI_Comm_split, MPI_Comm_split_type has no non-blocking form: a member that stopped
// before it is caught by a barrier under the deadline first.
std::vector<int> MpiCommunicator::do_nodes() const {
  if (options_.timeout.count() > 0) {
    run("nodes", deadline(), {}, {},
        [&](const void*, void*, MPI_Request* request) { return MPI_Ibarrier(comm_, request); });
  }
  MPI_Comm domain = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank(), MPI_INFO_NULL, &domain), "MPI_Comm_split_type");
  CommOptions options = options_;
  options.name = "pcx:nodes";
  const MpiCommunicator node = adopt(domain, options);
  // Ranked by this communicator's rank (the key), so the domain's rank 0 is its lowest member.
  std::array<int, 1> lowest = {rank()};
  node.broadcast(lowest, 0);
  std::vector<int> nodes(static_cast<std::size_t>(size()));
  all_gather(lowest, nodes);
  return nodes;
}

MPI_Comm mpi_handle(const Communicator& communicator) {
  if (communicator.backend() == "mpi") return *static_cast<const MPI_Comm*>(communicator.native_handle());
  if (communicator.backend() == "self") return MPI_COMM_SELF;
  throw ConfigError(
      fmt::format("mpi_handle of a {} communicator: only MPI communicators and groups of one member "
                  "have an MPI_Comm",
                  communicator.backend()));
}

}  // namespace pcx
