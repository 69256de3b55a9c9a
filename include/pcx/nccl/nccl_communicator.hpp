#pragma once
/// @file nccl_communicator.hpp
/// @brief The NCCL backend: an RAII owner of an `ncclComm_t`, bootstrapped over any
///        host communicator (MPI in practice), whose children come from `ncclCommSplit`.

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "pcx/communicator.hpp"

namespace pcx {

/// Throws CommError naming @p call, NCCL's error string and, where @p comm is given,
/// ncclGetLastError's text, unless @p code is ncclSuccess.
void check_nccl(ncclResult_t code, const char* call, ncclComm_t comm = nullptr);
/// Throws CommError naming @p call and CUDA's error string unless @p code is cudaSuccess.
void check_cuda(cudaError_t code, const char* call);

/// How to build an NCCL world communicator.
struct NcclWorldOptions {
  /// CUDA device of this rank. Absent: the rank's index among the bootstrap ranks of its
  /// host (hosts told apart as NCCL does: host name and boot id, or NCCL_HOSTID), which
  /// must be below the number of visible devices.
  std::optional<int> device;
  /// Settings of the world communicator (deadline, CTAs, name, ...).
  CommOptions communicator;
  /// Ranks per NCCL unique id. The world is made with `ncclCommInitRankScalable` from
  /// ceil(size / ranks_per_unique_id) ids, so that no single bootstrap root serves every
  /// rank; id i is made by the first rank of NCCL's block i (src/bootstrap.cc,
  /// firstRankFromRoot) and all-gathered over the bootstrap. Absent: 128 where NCCL has
  /// ncclCommInitRankScalable (2.23 and later), else one id and `ncclCommInitRankConfig`.
  /// A value below 1, or below the world's size on an NCCL without
  /// ncclCommInitRankScalable, is a ConfigError of create_world() on every rank.
  std::optional<int> ranks_per_unique_id;
};

/// A communicator over an `ncclComm_t` on one CUDA device. Move-only; moves allocate
/// nothing.
///
/// Lifetime: an owned communicator ends with `ncclCommFinalize`, a wait for it within the
/// deadline, then `ncclCommDestroy`; one that failed, timed out or was aborted is given
/// up with `ncclCommAbort` instead, exactly once. Borrowed ones are never finalized,
/// destroyed or aborted by pcx.
///
/// Deadlines: every operation (creation, split, collective, finalization) is bounded by
/// CommOptions::timeout of this communicator (0: none). Past it, or when NCCL reports an
/// asynchronous error, the communicator is aborted and Timeout or CommError is thrown;
/// every later operation throws CommError. abort() may be called from any thread while
/// another waits in an operation; that operation then throws CommError.
///
/// Buffers of the Communicator collectives are device memory of device(), or host
/// memory, which is staged through device memory (as a ParallelContext does to compare
/// its configuration across ranks). Those collectives run on the communicator's own
/// stream and return once it is done; the `enqueue_*` functions run on a stream the
/// caller gives, take device memory only, and return once NCCL has enqueued the work.
/// Communicators made by split() and dup() use `ncclCommSplit` (collective over every
/// member, as NCCL requires), those made by shrink() `ncclCommShrink` (over the survivors),
/// and inherit the device. Every function leaves the caller's
/// current CUDA device as it found it.
class NcclCommunicator final : public Communicator {
 public:
  /// Builds the world over @p bootstrap, a communicator of host memory (an
  /// MpiCommunicator in practice) whose ranks become the NCCL ranks: chooses the device,
  /// the first rank of each block makes a unique id (NcclWorldOptions::ranks_per_unique_id),
  /// @p bootstrap all-gathers them, every rank calls `ncclCommInitRankScalable` (with one
  /// id, or on an NCCL older than 2.23, `ncclCommInitRankConfig`). Before the all-gather
  /// every rank learns, by one all-reduce over @p bootstrap, whether all ranks found a
  /// device, made their id and accepted the options, so a failure on any rank fails every
  /// rank instead of hanging.
  /// @throws ConfigError on every rank for an option this NCCL does not support or a
  ///         device that is not there (also: more ranks on a node than visible devices,
  ///         when no device is given); CommError (no CUDA device, NCCL or MPI failure);
  ///         Timeout past the deadline.
  [[nodiscard]] static NcclCommunicator create_world(const Communicator& bootstrap,
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
  /// init_rank() from several unique ids, the same list in the same order on every rank:
  /// `ncclCommInitRankScalable` (one id: `ncclCommInitRankConfig`).
  /// @throws ConfigError also for no id, more ids than ranks, or several ids on an NCCL
  ///         older than 2.23; otherwise as init_rank().
  [[nodiscard]] static NcclCommunicator init_rank(std::span<const ncclUniqueId> ids, int size, int rank, int device,
                                                  const CommOptions& options = {});
  /// Uses @p comm, which the application owns, destroys and, after a failure, aborts.
  /// @param comm the application's communicator
  /// @param device its CUDA device
  /// @param stream stream for the collectives; null: a stream this object creates
  /// @param options name and deadline of the operations (the NCCL settings are @p comm's)
  /// @throws ConfigError if @p comm is null; CommError if NCCL or CUDA fail to describe
  ///         @p comm.
  [[nodiscard]] static NcclCommunicator borrow(ncclComm_t comm, int device, cudaStream_t stream = nullptr,
                                               const CommOptions& options = {});

  /// Takes over @p other's handle, stream and scratch memory; @p other is left empty:
  /// size() 0, rank() -1, native() null, and every operation on it throws ConfigError.
  NcclCommunicator(NcclCommunicator&& other) noexcept;
  /// Releases this object's resources, then takes over @p other's.
  NcclCommunicator& operator=(NcclCommunicator&& other) noexcept;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  /// Finalizes and destroys an owned communicator (nothing more after an abort), and
  /// frees the stream and scratch memory this object made.
  ~NcclCommunicator() override;

  [[nodiscard]] int size() const noexcept override { return size_; }
  [[nodiscard]] int rank() const noexcept override { return rank_; }
  /// "nccl".
  [[nodiscard]] std::string_view backend() const noexcept override { return "nccl"; }
  /// The CUDA device the communicator runs on (-1 for a moved-from object).
  [[nodiscard]] int device() const noexcept;
  /// The stream the Communicator collectives use.
  [[nodiscard]] cudaStream_t stream() const noexcept;
  /// The underlying handle; null once aborted.
  [[nodiscard]] ncclComm_t native() const noexcept;
  /// Whether the destructor releases the handle.
  [[nodiscard]] bool owned() const noexcept;
  /// Device memory NCCL holds for this communicator: `ncclCommMemStats`
  /// ncclStatGpuMemTotal where NCCL has it (2.29.7 and later), else the drop in the
  /// device's free memory (`cudaMemGetInfo`) across the communicator's creation, which
  /// misses buffers NCCL allocates later (connections made at the first collective) and
  /// counts whatever else was allocated on the device meanwhile. Null for a borrowed or
  /// moved-from communicator, or when CUDA could not tell.
  [[nodiscard]] std::optional<std::uint64_t> device_memory() const override;
  /// The settings this communicator was made with (its deadline and name); empty
  /// settings for a moved-from object.
  [[nodiscard]] CommOptions options() const;
  /// Whether the communicator was aborted, by abort() or after an operation failed or
  /// timed out; the destructor then releases only memory. Same as aborted().
  [[nodiscard]] bool failed() const noexcept { return aborted(); }

  /// A self communicator whose collectives copy device memory on stream().
  [[nodiscard]] std::unique_ptr<Communicator> self() const override;
  /// The address of the handle native() returns; null for a moved-from object. Read it
  /// while no other thread may abort the communicator.
  [[nodiscard]] const void* native_handle() const noexcept override;

  // Collectives on a caller's stream: they return once enqueued (on a non-blocking
  // communicator, once NCCL no longer reports ncclInProgress, within the deadline).
  // Arguments are checked by the Communicator functions only; buffers are device memory
  // of device().

  /// Communicator::all_reduce on @p stream.
  void enqueue_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op,
                          cudaStream_t stream) const;
  /// Communicator::all_to_all on @p stream.
  void enqueue_all_to_all(const void* send, void* recv, std::size_t count, DataType type, cudaStream_t stream) const;
  /// Communicator::all_to_all_v on @p stream, with the offsets (in elements) of every
  /// block given: one entry per member in each list.
  void enqueue_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                            std::span<const std::size_t> send_offsets, void* recv,
                            std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_offsets,
                            DataType type, cudaStream_t stream) const;
  /// Communicator::send on @p stream.
  void enqueue_send(const void* buffer, std::size_t count, DataType type, int peer, cudaStream_t stream) const;
  /// Communicator::recv on @p stream.
  void enqueue_recv(void* buffer, std::size_t count, DataType type, int peer, cudaStream_t stream) const;
  /// Communicator::all_gather on @p stream.
  void enqueue_all_gather(const void* send, void* recv, std::size_t count, DataType type, cudaStream_t stream) const;
  /// Communicator::reduce_scatter on @p stream.
  void enqueue_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op,
                              cudaStream_t stream) const;
  /// Communicator::broadcast on @p stream.
  void enqueue_broadcast(void* buffer, std::size_t count, DataType type, int root, cudaStream_t stream) const;

 private:
  // The handle and what goes with it. On the heap, so that moves are pointer moves and
  // NCCL can keep addresses into it (the split's out-pointer, the communicator's name).
  struct State;
  // When an operation must be done, and the timeout that set it.
  struct Deadline;

  explicit NcclCommunicator(std::unique_ptr<State> state);
  // This communicator's state; throws CommError naming `what` if it was moved from.
  [[nodiscard]] State& state(std::string_view what) const;
  // Runs `call(comm)`, one NCCL call, under the handle's lock, and waits until NCCL no
  // longer reports it in progress.
  template <class Call>
  void enqueue(std::string_view what, const Deadline& deadline, Call&& call) const;
  // Polls until NCCL has nothing in progress on this communicator and `stream` (unless
  // null) is idle; aborts and throws on an error, on abort() or past the deadline.
  void wait(std::string_view what, cudaStream_t stream, const Deadline& deadline) const;
  // Aborts, lets the aborted work leave the stream, and throws `error`.
  template <class E>
  [[noreturn]] void fail(const E& error) const;
  // "NCCL communicator "name" (rank r of n)", for messages.
  [[nodiscard]] std::string describe() const;
  // One collective of the Communicator interface on stream(), waited for. Host buffers
  // are staged through device memory: `call(send, recv, comm, stream)` sees device
  // memory only.
  template <class Call>
  void collective(std::string_view what, const void* send, std::size_t send_bytes, void* recv, std::size_t recv_bytes,
                  Call&& call) const;

  // A child made by `call(parent, &child, &config)`, one ncclCommSplit or ncclCommShrink
  // run on this communicator; null when `joins` is false.
  template <class Call>
  [[nodiscard]] std::unique_ptr<Communicator> make_child(const std::string& what, const CommOptions& options,
                                                         bool joins, Call&& call) const;
  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                       const CommOptions& options) const override;
  [[nodiscard]] std::unique_ptr<Communicator> do_shrink(std::span<const int> excluded, std::span<const int> survivors,
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
  void do_abort() const noexcept override;

  std::unique_ptr<State> state_;
  int size_ = 0;
  int rank_ = 0;
};

/// The `ncclComm_t` of @p communicator: its handle for an NCCL communicator (still owned
/// by it; null once aborted), null for a group of one member (a SelfCommunicator), which
/// has none.
/// @throws ConfigError for a communicator of another backend.
[[nodiscard]] ncclComm_t nccl_handle(const Communicator& communicator);

}  // namespace pcx
