#pragma once
/// @file mpi_communicator.hpp
/// @brief The MPI backend: an RAII owner of an MPI communicator, and the MPI environment.

#include <mpi.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pcx/communicator.hpp"

namespace pcx {

/// Initializes MPI if nobody has, and finalizes it on destruction only if it did.
/// Create one at the top of main(); destroy every MPI communicator before it goes.
class MpiEnvironment {
 public:
  /// @param argc, argv main()'s arguments, or null
  /// @param required the thread support to ask for (MPI_THREAD_*)
  /// @throws CommError if MPI_Init_thread fails or gives less thread support than required.
  explicit MpiEnvironment(int* argc = nullptr, char*** argv = nullptr, int required = MPI_THREAD_SERIALIZED);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

  /// Whether this object initialized MPI (and so will finalize it).
  [[nodiscard]] bool initialized_here() const noexcept { return initialized_here_; }

 private:
  bool initialized_here_ = false;
};

/// A communicator over an `MPI_Comm`, owned (freed exactly once, by the destructor)
/// or borrowed (never freed). Move-only.
///
/// Communicators that pcx creates return errors instead of aborting
/// (`MPI_ERRORS_RETURN`), and every error becomes a CommError with MPI's text.
///
/// Deadlines: with a positive CommOptions::timeout, every operation that waits for peers
/// runs as MPI's non-blocking call (MPI_Iallreduce, MPI_Ialltoall(v), MPI_Iallgather,
/// MPI_Ireduce_scatter_block, MPI_Ibcast, MPI_Ibarrier, MPI_Isend, MPI_Improbe and
/// MPI_Imrecv, MPI_Comm_idup), polled with MPI_Test until it completes, abort() is called
/// (CommError), or the deadline passes (Timeout; the communicator is then aborted). A split
/// first passes an MPI_Ibarrier on the parent under the deadline, so a member that stopped
/// before the split is detected; MPI has no non-blocking split, so MPI_Comm_split itself
/// still waits without a deadline for a member that stops between the barrier and the split.
/// create_group() does the same over its members alone: a barrier of point-to-point
/// messages among them under the deadline, then `MPI_Comm_create_group`.
/// MPI can neither cancel nor free an unfinished collective, and completes it if a stopped
/// peer resumes. So that the caller's memory is never touched after a Timeout or an abort,
/// operations with a deadline run on buffers of the communicator's own: the send data is
/// copied in first and the result copied out after completion (one copy each way, reused
/// from call to call, as large as the largest operation so far). An operation that does not
/// complete leaves its request, buffers, reduction operation and MPI_Comm in the
/// communicator's state, which is then never freed (nor, when owned, the MPI_Comm): MPI may
/// still use them, until the end of the process. A timeout of 0 calls MPI's blocking
/// functions on the caller's buffers, as a plain MPI program does.
class MpiCommunicator final : public Communicator {
 public:
  /// Uses @p comm without owning it; the caller keeps it alive and frees it.
  /// @param comm the handle to use
  /// @param options name (for messages only: a borrowed handle is not renamed) and timeout
  /// @throws ConfigError if @p comm is MPI_COMM_NULL; CommError if MPI fails.
  [[nodiscard]] static MpiCommunicator borrow(MPI_Comm comm, const CommOptions& options = {});
  /// Takes ownership of @p comm: it is freed when the communicator is destroyed, its error
  /// handler becomes MPI_ERRORS_RETURN, and its MPI name becomes @p options.name if set.
  /// @throws ConfigError if @p comm is MPI_COMM_WORLD, MPI_COMM_SELF or MPI_COMM_NULL
  ///         (borrow those); CommError if MPI fails.
  [[nodiscard]] static MpiCommunicator adopt(MPI_Comm comm, const CommOptions& options = {});
  /// Borrows MPI_COMM_WORLD.
  [[nodiscard]] static MpiCommunicator world(const CommOptions& options = {}) {
    return borrow(MPI_COMM_WORLD, options);
  }

  /// Takes over @p other's handle; @p other is left empty: size() 0, rank() -1,
  /// native() MPI_COMM_NULL, and every operation on it throws ConfigError.
  MpiCommunicator(MpiCommunicator&& other) noexcept;
  /// Releases this handle, then takes over @p other's; @p other is left empty.
  MpiCommunicator& operator=(MpiCommunicator&& other) noexcept;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  /// Frees an owned communicator (unless MPI is already finalized).
  ~MpiCommunicator() override;

  /// Number of members; 0 once moved from.
  [[nodiscard]] int size() const noexcept override { return size_; }
  /// This process's rank among the members; -1 once moved from.
  [[nodiscard]] int rank() const noexcept override { return rank_; }
  /// "mpi".
  [[nodiscard]] std::string_view backend() const noexcept override { return "mpi"; }
  /// The underlying handle, still owned by this object when owned.
  [[nodiscard]] MPI_Comm native() const noexcept { return comm_; }
  /// Whether the destructor frees the handle.
  [[nodiscard]] bool owned() const noexcept { return owned_; }
  /// A SelfCommunicator (host memory).
  [[nodiscard]] std::unique_ptr<Communicator> self() const override;
  /// The address of native().
  [[nodiscard]] const void* native_handle() const noexcept override { return &comm_; }
  /// The options it was created with (name, timeout).
  [[nodiscard]] const CommOptions& options() const noexcept { return options_; }

 private:
  struct State;

  MpiCommunicator(MPI_Comm comm, bool owned, const CommOptions& options);
  void release() noexcept;
  // When an operation begun now must end: time_point::max() without a timeout.
  [[nodiscard]] std::chrono::steady_clock::time_point deadline() const;
  // Runs one operation: `start(in, out, request)` makes the MPI call on `in` and `out`,
  // MPI's blocking call when `request` is null (no timeout) and else its non-blocking one,
  // which is then polled until `deadline`. With a timeout `in` and `out` are the
  // communicator's copies of `send` and `receive` (one copy when they are the same buffer).
  template <class Start>
  void run(std::string_view what, std::chrono::steady_clock::time_point deadline, std::span<const std::byte> send,
           std::span<std::byte> receive, Start&& start) const;
  // Calls `done()` (an MPI_Test or a probe) until it returns true; throws CommError after
  // abort() and Timeout (aborting the communicator) past `deadline`. A request left
  // unfinished keeps the state, and the MPI_Comm, from being freed ever.
  template <class Done>
  void poll(std::string_view what, std::chrono::steady_clock::time_point deadline, Done&& done) const;
  // "MPI communicator "name" (rank r of n)", for messages.
  [[nodiscard]] std::string describe() const;

  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                       const CommOptions& options) const override;
  [[nodiscard]] bool can_create_group() const noexcept override { return true; }
  [[nodiscard]] std::unique_ptr<Communicator> do_create_group(std::span<const int> members, int index,
                                                              const CommOptions& options) const override;
  [[nodiscard]] std::unique_ptr<Communicator> do_dup(const CommOptions& options) const override;
  void do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override;
  void do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const override;
  void do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                       std::span<const std::size_t> send_offsets, void* recv, std::span<const std::size_t> recv_counts,
                       std::span<const std::size_t> recv_offsets, DataType type) const override;
  void do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const override;
  void do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override;
  void do_broadcast(void* buffer, std::size_t count, DataType type, int root) const override;
  void do_send(const void* buffer, std::size_t count, DataType type, int peer) const override;
  void do_recv(void* buffer, std::size_t count, DataType type, int peer) const override;
  void do_barrier() const override;
  [[nodiscard]] std::vector<int> do_nodes() const override;

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int size_ = 0;
  int rank_ = -1;
  CommOptions options_;
  // Buffers, counts and the request of the operation under way; unique_ptr so that what
  // MPI holds pointers into stays put when the communicator moves.
  std::unique_ptr<State> state_;
};

/// The `MPI_Comm` of @p communicator: its handle for an MPI communicator (still owned by
/// it), `MPI_COMM_SELF` for a group of one member (a SelfCommunicator).
/// @throws ConfigError for a communicator of another backend.
[[nodiscard]] MPI_Comm mpi_handle(const Communicator& communicator);

/// Throws CommError naming @p call and MPI's error text unless @p code is MPI_SUCCESS.
void check_mpi(int code, const char* call);

}  // namespace pcx
