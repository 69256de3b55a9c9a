#pragma once
/// @file communicator.hpp
/// @brief The abstract communicator every backend implements (MPI, NCCL, self, fake).

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "pcx/half.hpp"

namespace pcx {

class FlightRecorder;

/// Element types of the untyped collectives.
enum class DataType { int8, uint8, int32, uint32, int64, uint64, float16, bfloat16, float32, float64 };

/// Size in bytes of one element of @p type; 0 for a value that is not a DataType.
[[nodiscard]] std::size_t size_of(DataType type) noexcept;

/// "int8", "float32", ...; "unknown" for a value that is not a DataType.
[[nodiscard]] std::string_view to_string(DataType type) noexcept;

/// Reductions of all_reduce and reduce_scatter. `avg` is the sum divided by the number
/// of members (integers: the sum divided after, truncating, as NCCL's ncclAvg does).
/// 16-bit floating-point elements are reduced in float, one member at a time.
enum class ReduceOp { sum, prod, min, max, avg };

/// "sum", "prod", ...; "unknown" for a value that is not a ReduceOp.
[[nodiscard]] std::string_view to_string(ReduceOp op) noexcept;

/// The DataType of a C++ element type, for the typed collectives.
template <class T>
inline constexpr std::optional<DataType> kDataTypeOf = std::nullopt;
/// @cond
template <>
inline constexpr std::optional<DataType> kDataTypeOf<std::int8_t> = DataType::int8;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<std::uint8_t> = DataType::uint8;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<std::int32_t> = DataType::int32;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<std::uint32_t> = DataType::uint32;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<std::int64_t> = DataType::int64;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<std::uint64_t> = DataType::uint64;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<float16> = DataType::float16;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<bfloat16> = DataType::bfloat16;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<float> = DataType::float32;
template <>
inline constexpr std::optional<DataType> kDataTypeOf<double> = DataType::float64;
/// @endcond

/// An element type the typed collectives accept.
template <class T>
concept Element = kDataTypeOf<T>
.has_value();

/// The DataType of element type @p T.
template <Element T>
[[nodiscard]] constexpr DataType data_type_of() noexcept {
  return *kDataTypeOf<T>;
}

/// A buffer the typed collectives read: any contiguous sized range of Elements (a
/// `std::vector`, `std::array`, `std::span`, C array, ...).
template <class R>
concept ElementRange =
    std::ranges::contiguous_range<R> && std::ranges::sized_range<R> && Element<std::ranges::range_value_t<R>>;

/// A buffer the typed collectives write: an ElementRange whose elements are not const.
template <class R>
concept MutableElementRange =
    ElementRange<R> && !std::is_const_v<std::remove_reference_t<std::ranges::range_reference_t<R>>>;

/// Element type of an ElementRange.
template <ElementRange R>
using element_of = std::ranges::range_value_t<R>;

/// How make_group() creates a group's communicator on a backend that can create one over
/// its members alone (Communicator::can_create_group(): MPI). `split`: one collective over
/// the whole parent (`MPI_Comm_split`). `group`: collective over the group's members only
/// (`MPI_Comm_create_group`), so ranks outside the group neither take part nor wait.
/// `automatic`: `group` for groups of at most half the parent, where it was measured
/// faster (bench/README.md, section 7), `split` for larger ones. Other backends split.
enum class GroupCreation { automatic, split, group };

/// Settings of a communicator that a split or dup creates. Each backend uses the
/// fields that apply to it and ignores the others; a field the backend's library is
/// too old for is a ConfigError, never silently dropped.
struct CommOptions {
  /// Name shown by the backend's tools and logs (MPI_Comm_set_name; NCCL commName from
  /// NCCL 2.20, older versions have no name to set and go without).
  std::string name;
  /// Deadline of every operation of the communicator that waits for its peers; past it
  /// the communicator is aborted (every later operation throws CommError) and Timeout is
  /// thrown, naming the operation, the communicator and the caller's rank. Zero: blocking
  /// calls, with no deadline.
  /// NCCL: its initialization or split, each collective, its finalization; a positive
  /// value also makes the communicator non-blocking (`config.blocking = 0`).
  /// MPI: each collective, send, recv, split and dup, run as MPI's non-blocking call and
  /// polled (see MpiCommunicator for what a split still waits for without a deadline).
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  /// NCCL splitShare: share the parent's resources (fewer resources, but parent and
  /// child then serialize).
  bool share_resources = false;
  /// NCCL cgaClusterSize.
  std::optional<int> cga_cluster_size;
  /// NCCL minCTAs.
  std::optional<int> min_ctas;
  /// NCCL maxCTAs.
  std::optional<int> max_ctas;
  /// NCCL netName: the network plugin to use (empty: NCCL's choice).
  std::string net_name;
  /// How make_group() creates the communicator of a layout's group.
  GroupCreation creation = GroupCreation::automatic;

  /// Field-wise equality.
  friend bool operator==(const CommOptions&, const CommOptions&) = default;
};

/// A group of processes that can split into children and run collectives.
///
/// Every collective and split is collective over the communicator: each member must
/// call it, in the same order. The public functions check their arguments (throwing
/// ConfigError for a count, root, peer or buffer size that cannot be right, a DataType or
/// ReduceOp value outside the enumeration, or a buffer whose size in bytes overflows a
/// `std::size_t`) and then call the backend, which so sees valid values only. Backend
/// failures throw CommError. Collectives are `const`: they use the communicator without
/// changing what it is, so a const ProcessGroup can run them.
/// After abort(), every operation throws CommError. A moved-from backend object is
/// empty: size() 0, rank() -1, and every operation (split, dup, collectives) throws
/// ConfigError.
///
/// Threads: size(), rank(), backend(), aborted() and abort() may be called from any
/// thread at any time. Operations (splits, dups, collectives) of one communicator must
/// not run concurrently, as MPI and NCCL require the same order on every member;
/// operations of different communicators may, on the MPI backend when MPI was
/// initialized with MPI_THREAD_MULTIPLE, and on the NCCL backend always.
class Communicator {
 public:
  /// Colour for split() of a rank that joins no child.
  static constexpr int kNoColour = -1;

  virtual ~Communicator() = default;

  /// Number of members.
  [[nodiscard]] virtual int size() const noexcept = 0;
  /// This process's index among the members, in [0, size()).
  [[nodiscard]] virtual int rank() const noexcept = 0;
  /// Name of the backend: "mpi", "nccl", "self", "fake", "thread".
  [[nodiscard]] virtual std::string_view backend() const noexcept = 0;

  /// Splits into children as `MPI_Comm_split` and `ncclCommSplit` do: members with the
  /// same @p colour form one child, ranked by @p key, ties broken by rank here.
  /// @return the caller's child, or nullptr when @p colour is kNoColour.
  /// @throws ConfigError if @p colour is negative but not kNoColour, or an option is
  ///         invalid for the backend (and on FakeCommunicator, which cannot know the
  ///         child's size: use split_checked()); CommError from the backend; Timeout
  ///         past options.timeout.
  [[nodiscard]] std::unique_ptr<Communicator> split(int colour, int key, const CommOptions& options = {}) const;

  /// split() where the caller knows its child: it will have @p size members, of which
  /// the caller is rank @p rank (passed to the backend as the key). A child of another
  /// shape means that ranks disagreed on the colours: CommError, not a wrong group.
  /// @return the caller's child, or nullptr when @p colour is kNoColour (then @p rank
  ///         and @p size are ignored).
  /// @throws ConfigError if @p colour is negative but not kNoColour, @p size is not in
  ///         [1, size()] or @p rank not in [0, @p size); otherwise as split(), and
  ///         CommError for a child of another size or rank.
  [[nodiscard]] std::unique_ptr<Communicator> split_checked(int colour, int rank, int size,
                                                            const CommOptions& options = {}) const;

  /// Whether create_group() is available; the same on every member of a backend.
  [[nodiscard]] virtual bool can_create_group() const noexcept { return false; }

  /// A child over @p members (ranks here, in the child's rank order, the caller among
  /// them), created collectively over those members only: the other members of this
  /// communicator do not take part (`MPI_Comm_create_group`). Members must call it for
  /// their common groups in the same order.
  /// @throws ConfigError if the backend cannot (can_create_group()), @p members is empty,
  ///         holds a rank outside [0, size()) or twice, or not the caller; CommError or
  ///         Timeout from the backend.
  [[nodiscard]] std::unique_ptr<Communicator> create_group(std::span<const int> members,
                                                           const CommOptions& options = {}) const;

  /// The members but @p excluded, in their order here, as a new communicator: the
  /// survivors of a failure. Collective over the survivors only: the excluded members do
  /// not call it (they may have stopped). MPI: create_group() over the survivors, and this
  /// communicator stays usable. NCCL: `ncclCommRevoke` (NCCL 2.28 and later), which ends
  /// this communicator's outstanding operations, then `ncclCommShrink`; this communicator
  /// is then aborted, however the shrink ends (a revoked one can be neither used nor
  /// finalized). With NCCL 2.27, or a borrowed handle, `ncclCommShrink` with
  /// NCCL_SHRINK_ABORT instead. Either way, work still queued on a caller's stream
  /// (NcclCommunicator::enqueue_all_reduce and the like) is cancelled without an error
  /// and leaves its buffers undefined. Survivors that exclude different ranks get
  /// ConfigMismatch or Timeout, never a communicator.
  /// @throws ConfigError if @p excluded holds a rank outside [0, size()), twice, or the
  ///         caller, or the backend cannot shrink; CommError or Timeout from the backend.
  [[nodiscard]] std::unique_ptr<Communicator> shrink(std::span<const int> excluded,
                                                     const CommOptions& options = {}) const;

  /// The node of every member, named by its lowest member: nodes()[r] == nodes()[s]
  /// exactly when members r and s share a node. Collective. MPI: the members of one
  /// shared-memory domain (`MPI_Comm_split_type` with `MPI_COMM_TYPE_SHARED`); other real
  /// backends: one host, told apart as NCCL does (host name and boot id, or NCCL_HOSTID).
  /// The test doubles (fake, thread) cannot tell and give an empty list.
  /// @throws CommError or Timeout from the backend.
  [[nodiscard]] std::vector<int> nodes() const;

  /// A new communicator with the same members and ranks.
  /// @throws ConfigError, CommError or Timeout as split().
  [[nodiscard]] std::unique_ptr<Communicator> dup(const CommOptions& options = {}) const;

  /// Reduces @p count elements of every member and gives the result to all.
  /// @p send may equal @p recv (in place).
  void all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const;
  /// Member i sends block j of @p send (@p count elements each) to member j, which
  /// stores it as block i of @p recv. Buffers hold size() * count elements.
  void all_to_all(const void* send, void* recv, std::size_t count, DataType type) const;
  /// all_to_all with uneven blocks (`MPI_Alltoallv`): member i sends @p send_counts[j]
  /// elements to member j, which receives them as its block i of @p recv_counts[i]
  /// elements. Blocks lie back to back in member order in both buffers, and
  /// @p recv_counts[i] must equal what member i sends to the caller (every member
  /// learns its receive counts first, usually with an all_to_all of the send counts).
  /// @throws ConfigError if a count list does not have size() entries or the buffers
  ///         overflow a byte count; a receive count that disagrees with its sender is
  ///         CommError on MPI and undefined on NCCL.
  void all_to_all_v(const void* send, std::span<const std::size_t> send_counts, void* recv,
                    std::span<const std::size_t> recv_counts, DataType type) const;
  /// Block i of @p recv (size() * count elements) receives member i's @p send (@p count).
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) const;
  /// Reduces @p send (size() * count elements) over all members; member i receives
  /// block i of the result in @p recv (@p count elements).
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const;
  /// Copies @p count elements of member @p root's @p buffer to every member's @p buffer.
  /// @throws ConfigError if @p root is outside [0, size()).
  void broadcast(void* buffer, std::size_t count, DataType type, int root) const;
  /// Sends @p count elements to member @p peer, which calls recv() with the same count;
  /// returns once the buffer may be reused (NCCL: once the peer received it). Messages
  /// between two members arrive in the order they were sent. Not collective: only the
  /// two members take part.
  /// @throws ConfigError if @p peer is outside [0, size()) or is the caller.
  void send(const void* buffer, std::size_t count, DataType type, int peer) const;
  /// Receives @p count elements from member @p peer's send().
  /// @throws ConfigError as send(); CommError if the peer sent another count (MPI).
  void recv(void* buffer, std::size_t count, DataType type, int peer) const;
  /// Returns once every member has called it.
  void barrier() const;

  /// Aborts the communicator: every later operation on it throws CommError, and the
  /// backend's resources are given up without waiting for the other members (NCCL:
  /// `ncclCommAbort`). Use it when a member is known to have failed. Safe from any
  /// thread, also while another thread waits in an operation of this communicator: the
  /// operation then returns promptly with CommError (an MPI communicator with no deadline,
  /// options.timeout 0, is not interrupted: it waits in MPI's blocking calls; nor is a
  /// call inside a blocking NCCL communicator's creation, which the abort waits for). Only the first call has an
  /// effect. It is `const` like the collectives (it ends the connection, not what the communicator is), so a watchdog
  /// can abort the communicator of a const ProcessGroup.
  void abort() const noexcept;
  /// Whether abort() was called, by the caller or by the backend after an operation
  /// failed or timed out.
  [[nodiscard]] bool aborted() const noexcept { return aborted_.load(); }

  /// A communicator of this process alone, for buffers of the same kind as this
  /// backend's (host memory, or device memory for NCCL): what a group of one member
  /// gets instead of a split. It is not collective.
  [[nodiscard]] virtual std::unique_ptr<Communicator> self() const = 0;

  /// Bytes of device memory the backend holds for this communicator, where it can tell
  /// (NCCL); null elsewhere. Not collective.
  [[nodiscard]] virtual std::optional<std::uint64_t> device_memory() const { return std::nullopt; }

  /// Records every later operation of this communicator (collectives, send and recv,
  /// splits, dups, creations) in @p recorder; null stops recording. Attach it before
  /// other threads use the communicator (a ParallelContext does at construction, see
  /// ContextOptions::flight_records). Moves carry it along.
  void record_operations(std::shared_ptr<FlightRecorder> recorder) const noexcept { recorder_ = std::move(recorder); }
  /// The recorder attached by record_operations(), or null.
  [[nodiscard]] const FlightRecorder* flight_recorder() const noexcept { return recorder_.get(); }

  /// The backend's own handle, for calls pcx does not wrap: the address of an
  /// `MPI_Comm` when backend() is "mpi", of an `ncclComm_t` when it is "nccl", null
  /// otherwise (a group of one member has none). Prefer pcx::mpi_handle() and
  /// pcx::nccl_handle(), which check the backend and return the handle itself.
  [[nodiscard]] virtual const void* native_handle() const noexcept { return nullptr; }

  /// Typed all_reduce; @p send and @p recv have the same length.
  template <ElementRange S, MutableElementRange R>
  requires std::same_as<element_of<S>, element_of<R>>
  void all_reduce(const S& send, R&& recv, ReduceOp op) const {
    check_length(std::ranges::size(send), std::ranges::size(recv), "all_reduce receive buffer");
    all_reduce(std::ranges::data(send), std::ranges::data(recv), std::ranges::size(send), data_type_of<element_of<S>>(),
               op);
  }
  /// Typed all_reduce in place.
  template <MutableElementRange R>
  void all_reduce(R&& buffer, ReduceOp op) const {
    all_reduce(std::ranges::data(buffer), std::ranges::data(buffer), std::ranges::size(buffer),
               data_type_of<element_of<R>>(), op);
  }
  /// Typed all_to_all; both buffers hold size() equal blocks.
  template <ElementRange S, MutableElementRange R>
  requires std::same_as<element_of<S>, element_of<R>>
  void all_to_all(const S& send, R&& recv) const {
    check_length(std::ranges::size(send), std::ranges::size(recv), "all_to_all receive buffer");
    all_to_all(std::ranges::data(send), std::ranges::data(recv), block(std::ranges::size(send), "all_to_all"),
               data_type_of<element_of<S>>());
  }
  /// Typed all_to_all_v; each buffer holds exactly the sum of its counts.
  template <ElementRange S, MutableElementRange R>
  requires std::same_as<element_of<S>, element_of<R>>
  void all_to_all_v(const S& send, std::span<const std::size_t> send_counts, R&& recv,
                    std::span<const std::size_t> recv_counts) const {
    check_length(total(send_counts, "all_to_all_v send counts"), std::ranges::size(send), "all_to_all_v send buffer");
    check_length(total(recv_counts, "all_to_all_v receive counts"), std::ranges::size(recv),
                 "all_to_all_v receive buffer");
    all_to_all_v(std::ranges::data(send), send_counts, std::ranges::data(recv), recv_counts,
                 data_type_of<element_of<S>>());
  }
  /// Typed all_gather; @p recv holds size() blocks of the length of @p send.
  template <ElementRange S, MutableElementRange R>
  requires std::same_as<element_of<S>, element_of<R>>
  void all_gather(const S& send, R&& recv) const {
    check_length(std::ranges::size(send) * member_count(), std::ranges::size(recv), "all_gather receive buffer");
    all_gather(std::ranges::data(send), std::ranges::data(recv), std::ranges::size(send),
               data_type_of<element_of<S>>());
  }
  /// Typed reduce_scatter; @p send holds size() blocks of the length of @p recv.
  template <ElementRange S, MutableElementRange R>
  requires std::same_as<element_of<S>, element_of<R>>
  void reduce_scatter(const S& send, R&& recv, ReduceOp op) const {
    check_length(std::ranges::size(recv) * member_count(), std::ranges::size(send), "reduce_scatter send buffer");
    reduce_scatter(std::ranges::data(send), std::ranges::data(recv), std::ranges::size(recv),
                   data_type_of<element_of<S>>(), op);
  }
  /// Typed broadcast from member @p root.
  template <MutableElementRange R>
  void broadcast(R&& buffer, int root) const {
    broadcast(std::ranges::data(buffer), std::ranges::size(buffer), data_type_of<element_of<R>>(), root);
  }
  /// Typed send of the whole of @p buffer to member @p peer.
  template <ElementRange S>
  void send(const S& buffer, int peer) const {
    send(std::ranges::data(buffer), std::ranges::size(buffer), data_type_of<element_of<S>>(), peer);
  }
  /// Typed recv filling the whole of @p buffer from member @p peer.
  template <MutableElementRange R>
  void recv(R&& buffer, int peer) const {
    recv(std::ranges::data(buffer), std::ranges::size(buffer), data_type_of<element_of<R>>(), peer);
  }

 protected:
  /// Backends only.
  Communicator() = default;
  /// Backends only; the copy is aborted if @p other is.
  Communicator(const Communicator& other) noexcept : aborted_(other.aborted()), recorder_(other.recorder_) {}
  /// Backends only; the new object is aborted if @p other is.
  Communicator(Communicator&& other) noexcept : aborted_(other.aborted()), recorder_(std::move(other.recorder_)) {}
  /// Backends only; this object is aborted if @p other is.
  Communicator& operator=(const Communicator& other) noexcept {
    aborted_ = other.aborted();
    recorder_ = other.recorder_;
    return *this;
  }
  /// Backends only; this object is aborted if @p other is.
  Communicator& operator=(Communicator&& other) noexcept {
    aborted_ = other.aborted();
    recorder_ = std::move(other.recorder_);
    return *this;
  }

  // Backend hooks, called after the public functions checked the arguments.

  /// split() for the backend. @p size is the child's size when the caller stated it
  /// (split_checked, with @p key its rank there), 0 when it did not.
  [[nodiscard]] virtual std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                               const CommOptions& options) const = 0;
  /// create_group() for the backend, given valid members of which the caller is number
  /// @p index. The default refuses (ConfigError), as can_create_group() says.
  [[nodiscard]] virtual std::unique_ptr<Communicator> do_create_group(std::span<const int> members, int index,
                                                                      const CommOptions& options) const;
  /// shrink() for the backend, given valid excluded ranks, ascending, and the survivors,
  /// ascending. The default creates the survivors' group (create_group()).
  [[nodiscard]] virtual std::unique_ptr<Communicator> do_shrink(std::span<const int> excluded,
                                                                std::span<const int> survivors,
                                                                const CommOptions& options) const;
  /// dup() for the backend.
  [[nodiscard]] virtual std::unique_ptr<Communicator> do_dup(const CommOptions& options) const = 0;
  /// all_reduce() for the backend; @p send may equal @p recv.
  virtual void do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const = 0;
  /// all_to_all() for the backend.
  virtual void do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const = 0;
  /// all_to_all_v() for the backend: @p send_counts and @p recv_counts have size()
  /// entries, and @p send_offsets and @p recv_offsets (in elements) are their prefix sums.
  virtual void do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                               std::span<const std::size_t> send_offsets, void* recv,
                               std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_offsets,
                               DataType type) const = 0;
  /// all_gather() for the backend.
  virtual void do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const = 0;
  /// reduce_scatter() for the backend.
  virtual void do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const = 0;
  /// broadcast() for the backend; @p root is in range.
  virtual void do_broadcast(void* buffer, std::size_t count, DataType type, int root) const = 0;
  /// send() for the backend; @p peer is another member.
  virtual void do_send(const void* buffer, std::size_t count, DataType type, int peer) const = 0;
  /// recv() for the backend; @p peer is another member.
  virtual void do_recv(void* buffer, std::size_t count, DataType type, int peer) const = 0;
  /// barrier() for the backend.
  virtual void do_barrier() const = 0;
  /// nodes() for the backend. The default all-gathers a hash of the host's identity.
  [[nodiscard]] virtual std::vector<int> do_nodes() const;
  /// abort() for the backend: called once, from any thread, possibly while another
  /// thread waits in an operation, which must then end with CommError. The default does
  /// nothing, for backends that hold nothing an abort must give up.
  virtual void do_abort() const noexcept {}

  /// Throws ConfigError naming @p operation if the communicator is empty (size() 0, as
  /// a moved-from backend object is), CommError if it was aborted.
  void check_usable(std::string_view operation) const;

 private:
  [[nodiscard]] std::size_t member_count() const noexcept { return static_cast<std::size_t>(size()); }
  static void check_length(std::size_t expected, std::size_t actual, std::string_view what);
  // The sum of counts, which must have one entry per member; throws on overflow.
  [[nodiscard]] std::size_t total(std::span<const std::size_t> counts, std::string_view what) const;
  // The per-member block of a buffer of total elements; throws unless size() divides it.
  [[nodiscard]] std::size_t block(std::size_t total, std::string_view what) const;
  void check_peer(std::string_view operation, int peer) const;
  // Runs `call()`, one operation, in the flight record when there is one.
  template <class Call>
  auto recorded(std::string_view operation, std::size_t count, Call&& call) const;

  // Set once by abort(); mutable because abort() is const, as the collectives are.
  mutable std::atomic<bool> aborted_{false};
  // Attached by record_operations(), a const function like the operations it records.
  mutable std::shared_ptr<FlightRecorder> recorder_;
};

}  // namespace pcx
