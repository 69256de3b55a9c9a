#pragma once
/// @file mpi_communicator.hpp
/// @brief The MPI backend: an RAII owner of an MPI communicator, and the MPI environment.

#include <mpi.h>

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
class MpiCommunicator final : public Communicator {
 public:
  /// Uses @p comm without owning it; the caller keeps it alive and frees it.
  /// @throws ConfigError if @p comm is MPI_COMM_NULL; CommError if MPI fails.
  [[nodiscard]] static MpiCommunicator borrow(MPI_Comm comm);
  /// Takes ownership of @p comm: it is freed when the communicator is destroyed, and
  /// its error handler becomes MPI_ERRORS_RETURN.
  /// @throws ConfigError if @p comm is MPI_COMM_WORLD, MPI_COMM_SELF or MPI_COMM_NULL
  ///         (borrow those); CommError if MPI fails.
  [[nodiscard]] static MpiCommunicator adopt(MPI_Comm comm);
  /// Borrows MPI_COMM_WORLD.
  [[nodiscard]] static MpiCommunicator world() { return borrow(MPI_COMM_WORLD); }

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

 private:
  MpiCommunicator(MPI_Comm comm, bool owned);
  void release() noexcept;

  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, int size,
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

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int size_ = 0;
  int rank_ = -1;
};

/// The `MPI_Comm` of @p communicator: its handle for an MPI communicator (still owned by
/// it), `MPI_COMM_SELF` for a group of one member (a SelfCommunicator).
/// @throws ConfigError for a communicator of another backend.
[[nodiscard]] MPI_Comm mpi_handle(const Communicator& communicator);

/// Throws CommError naming @p call and MPI's error text unless @p code is MPI_SUCCESS.
void check_mpi(int code, const char* call);

}  // namespace pcx
