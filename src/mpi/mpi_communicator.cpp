#include "pcx/mpi/mpi_communicator.hpp"

#include <fmt/format.h>

#include <climits>
#include <cstddef>
#include <utility>
#include <vector>

#include "../elementwise.hpp"
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
// call and freed after it (no state outlives a call). avg is a sum that the caller then
// divides.
class Reduction {
 public:
  Reduction(ReduceOp op, DataType type) {
    if (type == DataType::float16 || type == DataType::bfloat16) {
      MPI_User_function* function = type == DataType::float16 ? user_function<DataType::float16>(op)
                                                              : user_function<DataType::bfloat16>(op);
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

std::vector<int> mpi_counts(std::span<const std::size_t> counts) {
  std::vector<int> converted;
  converted.reserve(counts.size());
  for (const std::size_t count : counts) converted.push_back(mpi_count(count));
  return converted;
}

// One message stream per pair of members; each communicator is a context of its own, so
// no other traffic shares the tag.
constexpr int kTag = 0;

const void* send_or_in_place(const void* send, const void* recv) { return send == recv ? MPI_IN_PLACE : send; }

// MPI's tools and error messages show a communicator's name.
std::unique_ptr<Communicator> named(MpiCommunicator comm, const std::string& name) {
  if (!name.empty()) {
    const std::string clipped = name.substr(0, MPI_MAX_OBJECT_NAME - 1);
    check_mpi(MPI_Comm_set_name(comm.native(), clipped.c_str()), "MPI_Comm_set_name");
  }
  return std::make_unique<MpiCommunicator>(std::move(comm));
}

}  // namespace

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

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  if (comm == MPI_COMM_NULL) throw ConfigError("an MPI communicator cannot wrap MPI_COMM_NULL");
  try {
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  } catch (...) {
    release();
    throw;
  }
}

MpiCommunicator MpiCommunicator::borrow(MPI_Comm comm) { return MpiCommunicator(comm, false); }

MpiCommunicator MpiCommunicator::adopt(MPI_Comm comm) {
  // Owning a predefined communicator would change its error handler for the whole
  // process and free it. (MPI_COMM_NULL is refused by the constructor.)
  if (comm == MPI_COMM_WORLD || comm == MPI_COMM_SELF) {
    throw ConfigError(fmt::format("MpiCommunicator::adopt cannot own {}; borrow it instead",
                                  comm == MPI_COMM_WORLD ? "MPI_COMM_WORLD" : "MPI_COMM_SELF"));
  }
  MpiCommunicator owner(comm, true);
  // Ours from now on: report errors instead of letting MPI abort the job.
  check_mpi(MPI_Comm_set_errhandler(owner.comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  return owner;
}

MpiCommunicator::MpiCommunicator(MpiCommunicator&& other) noexcept
    : Communicator(std::move(other)),
      comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      owned_(std::exchange(other.owned_, false)),
      size_(std::exchange(other.size_, 0)),
      rank_(std::exchange(other.rank_, -1)) {}

MpiCommunicator& MpiCommunicator::operator=(MpiCommunicator&& other) noexcept {
  if (this != &other) {
    release();
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    owned_ = std::exchange(other.owned_, false);
    size_ = std::exchange(other.size_, 0);
    rank_ = std::exchange(other.rank_, -1);
  }
  return *this;
}

MpiCommunicator::~MpiCommunicator() { release(); }

void MpiCommunicator::release() noexcept {
  if (owned_ && comm_ != MPI_COMM_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  comm_ = MPI_COMM_NULL;
  owned_ = false;
}

std::unique_ptr<Communicator> MpiCommunicator::do_split(int colour, int key, int, const CommOptions& options) const {
  MPI_Comm child = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, colour == kNoColour ? MPI_UNDEFINED : colour, key, &child), "MPI_Comm_split");
  if (child == MPI_COMM_NULL) return nullptr;
  return named(adopt(child), options.name);
}

std::unique_ptr<Communicator> MpiCommunicator::do_dup(const CommOptions& options) const {
  MPI_Comm copy = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(comm_, &copy), "MPI_Comm_dup");
  return named(adopt(copy), options.name);
}

std::unique_ptr<Communicator> MpiCommunicator::self() const { return std::make_unique<SelfCommunicator>(); }

void MpiCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const {
  const Reduction reduction(op, type);
  check_mpi(MPI_Allreduce(send_or_in_place(send, recv), recv, mpi_count(count), mpi_type(type), reduction.get(), comm_),
            "MPI_Allreduce");
  if (op == ReduceOp::avg) detail::finish_average(recv, count, type, size_);
}

void MpiCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  const int n = mpi_count(count);
  check_mpi(MPI_Alltoall(send_or_in_place(send, recv), n, mpi_type(type), recv, n, mpi_type(type), comm_),
            "MPI_Alltoall");
}

void MpiCommunicator::do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                                      std::span<const std::size_t> send_offsets, void* recv,
                                      std::span<const std::size_t> recv_counts,
                                      std::span<const std::size_t> recv_offsets, DataType type) const {
  const std::vector<int> sends = mpi_counts(send_counts);
  const std::vector<int> send_displacements = mpi_counts(send_offsets);
  const std::vector<int> receives = mpi_counts(recv_counts);
  const std::vector<int> receive_displacements = mpi_counts(recv_offsets);
  check_mpi(MPI_Alltoallv(send, sends.data(), send_displacements.data(), mpi_type(type), recv, receives.data(),
                          receive_displacements.data(), mpi_type(type), comm_),
            "MPI_Alltoallv");
}

void MpiCommunicator::do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  const int n = mpi_count(count);
  check_mpi(MPI_Allgather(send, n, mpi_type(type), recv, n, mpi_type(type), comm_), "MPI_Allgather");
}

void MpiCommunicator::do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                        ReduceOp op) const {
  const Reduction reduction(op, type);
  check_mpi(MPI_Reduce_scatter_block(send, recv, mpi_count(count), mpi_type(type), reduction.get(), comm_),
            "MPI_Reduce_scatter_block");
  if (op == ReduceOp::avg) detail::finish_average(recv, count, type, size_);
}

void MpiCommunicator::do_broadcast(void* buffer, std::size_t count, DataType type, int root) const {
  check_mpi(MPI_Bcast(buffer, mpi_count(count), mpi_type(type), root, comm_), "MPI_Bcast");
}

void MpiCommunicator::do_send(const void* buffer, std::size_t count, DataType type, int peer) const {
  check_mpi(MPI_Send(buffer, mpi_count(count), mpi_type(type), peer, kTag, comm_), "MPI_Send");
}

void MpiCommunicator::do_recv(void* buffer, std::size_t count, DataType type, int peer) const {
  // The message is matched and sized before it is received: one of another count is
  // received into a buffer of its own and refused naming both counts, instead of MPI's
  // truncation error (which would end the job on a communicator with MPI's default error
  // handler) or a short message accepted silently. Mprobe keeps the match to this thread.
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status;
  check_mpi(MPI_Mprobe(peer, kTag, comm_, &message, &status), "MPI_Mprobe");
  // Counted in bytes, which any message has (a count in elements may be MPI_UNDEFINED).
  int bytes = 0;
  check_mpi(MPI_Get_count(&status, MPI_BYTE, &bytes), "MPI_Get_count");
  const auto sent = static_cast<std::size_t>(bytes);
  if (sent == count * size_of(type)) {
    check_mpi(MPI_Mrecv(buffer, mpi_count(count), mpi_type(type), &message, MPI_STATUS_IGNORE), "MPI_Mrecv");
    return;
  }
  std::vector<std::byte> discarded(sent);
  check_mpi(MPI_Mrecv(discarded.data(), bytes, MPI_BYTE, &message, MPI_STATUS_IGNORE), "MPI_Mrecv");
  throw CommError(fmt::format("recv from member {} expected {} {} elements but {} were sent", peer, count,
                              to_string(type), sent / size_of(type)),
                  MPI_ERR_COUNT);
}

MPI_Comm mpi_handle(const Communicator& communicator) {
  if (communicator.backend() == "mpi") return *static_cast<const MPI_Comm*>(communicator.native_handle());
  if (communicator.backend() == "self") return MPI_COMM_SELF;
  throw ConfigError(fmt::format("mpi_handle of a {} communicator: only MPI communicators and groups of one member "
                                "have an MPI_Comm",
                                communicator.backend()));
}

void MpiCommunicator::do_barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

}  // namespace pcx
