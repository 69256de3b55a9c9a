#pragma once
/// @file nccl_communicator.hpp
/// @brief The NCCL backend: an RAII owner of an `ncclComm_t`, bootstrapped over MPI,
///        whose children come from `ncclCommSplit`.

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <optional>

#include "pcx/communicator.hpp"
#include "pcx/mpi/mpi_communicator.hpp"

namespace pcx {

/// Throws CommError naming @p call, NCCL's error string and, where @p comm is given,
/// ncclGetLastError's text, unless @p code is ncclSuccess.
void check_nccl(ncclResult_t code, const char* call, ncclComm_t comm = nullptr);
/// Throws CommError naming @p call and CUDA's error string unless @p code is cudaSuccess.
void check_cuda(cudaError_t code, const char* call);

/// How to build an NCCL world communicator.
struct NcclWorldOptions {
  /// CUDA device of this rank. Absent: the rank's index on its node (from an MPI
  /// shared-memory split) modulo the number of visible devices.
  std::optional<int> device;
  /// Settings of the world communicator (non-blocking deadline, CTAs, name, ...).
  CommOptions communicator;
};

/// A communicator over an `ncclComm_t` on one CUDA device. Owned communicators are
/// destroyed exactly once (`ncclCommDestroy`), or aborted (`ncclCommAbort`) if an
/// operation failed or timed out; borrowed ones are never destroyed. Move-only.
///
/// Buffers are device memory of device(); all_reduce() also takes host buffers, which
/// it stages through device memory (as a ParallelContext does to compare its
/// configuration across ranks). The collectives of the Communicator interface run on
/// the communicator's own stream and return once it is done; the `enqueue_*`
/// functions run on a stream the caller gives and return at once.
/// Communicators made by split() and dup() use `ncclCommSplit` (collective over
/// every member, as NCCL requires) and inherit the device.
class NcclCommunicator final : public Communicator {
 public:
  /// Builds the world over @p bootstrap: chooses the device, rank 0 makes the unique
  /// id, MPI broadcasts it, every rank calls `ncclCommInitRankConfig`. Before the
  /// broadcast every rank learns, by one MPI all-reduce, whether all ranks found a
  /// device, so a failure on any rank fails every rank instead of hanging.
  /// @throws CommError (no CUDA device, NCCL or MPI failure), Timeout past the
  ///         deadline, ConfigError for an option this NCCL does not support.
  [[nodiscard]] static NcclCommunicator create_world(const MpiCommunicator& bootstrap,
                                                     const NcclWorldOptions& options = {});
  /// Initializes one rank of a communicator whose unique id the caller distributed by
  /// other means (create_world() does it over MPI): `ncclCommInitRankConfig` on
  /// @p device, non-blocking with options.timeout as deadline.
  /// @param id the unique id rank 0 made with ncclGetUniqueId
  /// @param size number of ranks
  /// @param rank this process's rank in [0, size)
  /// @param device CUDA device of this rank
  /// @param options settings of the communicator
  /// @throws ConfigError for a bad rank or option, CommError from CUDA or NCCL, Timeout
  ///         past the deadline (the half-built communicator is aborted).
  [[nodiscard]] static NcclCommunicator init_rank(const ncclUniqueId& id, int size, int rank, int device,
                                                  const CommOptions& options = {});
  /// Uses @p comm, which the application owns and destroys, on @p device.
  /// @param comm the application's communicator
  /// @param device its CUDA device
  /// @param stream stream for the collectives; null: a stream this object creates
  /// @throws CommError if NCCL or CUDA fail to describe @p comm.
  [[nodiscard]] static NcclCommunicator borrow(ncclComm_t comm, int device, cudaStream_t stream = nullptr);

  /// Takes over @p other's handle, stream and scratch memory; @p other is left empty.
  NcclCommunicator(NcclCommunicator&& other) noexcept;
  /// Releases this object's resources, then takes over @p other's.
  NcclCommunicator& operator=(NcclCommunicator&& other) noexcept;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  /// Destroys (or, after a failure, aborts) an owned communicator, and frees the
  /// stream and scratch memory this object made.
  ~NcclCommunicator() override;

  [[nodiscard]] int size() const noexcept override { return size_; }
  [[nodiscard]] int rank() const noexcept override { return rank_; }
  /// "nccl".
  [[nodiscard]] std::string_view backend() const noexcept override { return "nccl"; }
  /// The CUDA device the communicator runs on.
  [[nodiscard]] int device() const noexcept { return device_; }
  /// The stream the Communicator collectives use.
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  /// The underlying handle.
  [[nodiscard]] ncclComm_t native() const noexcept { return comm_; }
  /// Whether the destructor releases the handle.
  [[nodiscard]] bool owned() const noexcept { return owned_; }
  /// Whether an operation failed, so that the destructor aborts instead of destroying.
  [[nodiscard]] bool failed() const noexcept { return failed_->load(); }

  /// Aborts the communicator now (`ncclCommAbort` if owned): pending operations are
  /// cancelled, and every later operation throws CommError. Use it when a peer is
  /// known to be gone; the destructor then has nothing left to release but memory.
  void abort() noexcept;

  /// A self communicator whose collectives copy device memory on stream().
  [[nodiscard]] std::unique_ptr<Communicator> self() const override;

  // Collectives on a caller's stream: they return once enqueued. Arguments are
  // checked by the Communicator functions only; buffers are device memory of device().

  /// Communicator::all_reduce on @p stream.
  void enqueue_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op,
                          cudaStream_t stream) const;
  /// Communicator::all_to_all on @p stream.
  void enqueue_all_to_all(const void* send, void* recv, std::size_t count, DataType type, cudaStream_t stream) const;
  /// Communicator::all_gather on @p stream.
  void enqueue_all_gather(const void* send, void* recv, std::size_t count, DataType type, cudaStream_t stream) const;
  /// Communicator::reduce_scatter on @p stream.
  void enqueue_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op,
                              cudaStream_t stream) const;
  /// Communicator::broadcast on @p stream.
  void enqueue_broadcast(void* buffer, std::size_t count, DataType type, int root, cudaStream_t stream) const;

 private:
  NcclCommunicator(ncclComm_t comm, int device, bool owned, cudaStream_t stream);
  void release() noexcept;
  // Throws after marking the communicator failed.
  void check(ncclResult_t code, const char* call) const;
  // Runs one NCCL call on `stream`, waiting out ncclInProgress of a non-blocking communicator.
  template <class Call>
  void enqueue(const char* what, cudaStream_t stream, Call&& call) const;
  void synchronize(const char* what) const;

  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                       const CommOptions& options) const override;
  [[nodiscard]] std::unique_ptr<Communicator> do_dup(const CommOptions& options) const override;
  void do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override;
  void do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const override;
  void do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const override;
  void do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override;
  void do_broadcast(void* buffer, std::size_t count, DataType type, int root) const override;
  void do_barrier() const override;

  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  bool owned_ = false;
  bool owns_stream_ = false;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;  // one device int for barrier()
  int size_ = 0;
  int rank_ = 0;
  std::unique_ptr<std::atomic<bool>> failed_ = std::make_unique<std::atomic<bool>>(false);
};

}  // namespace pcx
