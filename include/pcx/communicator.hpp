#pragma once
/// @file communicator.hpp
/// @brief The abstract communicator every backend implements (MPI, NCCL, self, fake).

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace pcx {

/// Element types of the untyped collectives.
enum class DataType { int8, uint8, int32, uint32, int64, uint64, float32, float64 };

/// Size in bytes of one element of @p type; 0 for a value that is not a DataType.
[[nodiscard]] std::size_t size_of(DataType type) noexcept;

/// "int8", "float32", ...; "unknown" for a value that is not a DataType.
[[nodiscard]] std::string_view to_string(DataType type) noexcept;

/// Reductions of all_reduce and reduce_scatter.
enum class ReduceOp { sum, max };

/// The DataType of a C++ element type, for the typed collectives.
template <class T>
inline constexpr bool kIsElement = false;
/// @cond
template <>
inline constexpr bool kIsElement<std::int8_t> = true;
template <>
inline constexpr bool kIsElement<std::uint8_t> = true;
template <>
inline constexpr bool kIsElement<std::int32_t> = true;
template <>
inline constexpr bool kIsElement<std::uint32_t> = true;
template <>
inline constexpr bool kIsElement<std::int64_t> = true;
template <>
inline constexpr bool kIsElement<std::uint64_t> = true;
template <>
inline constexpr bool kIsElement<float> = true;
template <>
inline constexpr bool kIsElement<double> = true;
/// @endcond

/// An element type the typed collectives accept.
template <class T>
concept Element = kIsElement<T>;

/// The DataType of element type @p T.
template <Element T>
[[nodiscard]] constexpr DataType data_type_of() noexcept {
  if constexpr (std::is_same_v<T, std::int8_t>)
    return DataType::int8;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return DataType::uint8;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return DataType::int32;
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return DataType::uint32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DataType::int64;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return DataType::uint64;
  else if constexpr (std::is_same_v<T, float>)
    return DataType::float32;
  else
    return DataType::float64;
}

/// Settings of a communicator that a split or dup creates. Each backend uses the
/// fields that apply to it and ignores the others; a field the backend's library is
/// too old for is a ConfigError, never silently dropped.
struct CommOptions {
  /// Name shown by the backend's tools and logs (MPI_Comm_set_name; NCCL commName from
  /// NCCL 2.20, older versions have no name to set and go without).
  std::string name;
  /// NCCL: deadline of every operation of the communicator (its initialization or
  /// split, each collective, its finalization); past it the communicator is aborted and
  /// Timeout is thrown. A positive value also makes the communicator non-blocking
  /// (`config.blocking = 0`). Zero: blocking, with no deadline.
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

  /// Field-wise equality.
  friend bool operator==(const CommOptions&, const CommOptions&) = default;
};

/// A group of processes that can split into children and run collectives.
///
/// Every collective and split is collective over the communicator: each member must
/// call it, in the same order. The public functions check their arguments (throwing
/// ConfigError for a count, root or buffer size that cannot be right, a DataType or
/// ReduceOp value outside the enumeration, or a buffer whose size in bytes overflows a
/// `std::size_t`) and then call the backend, which so sees valid values only. Backend
/// failures throw CommError. Collectives are `const`: they use the communicator without
/// changing what it is, so a const ProcessGroup can run them.
/// After abort(), every operation throws CommError. A moved-from backend object is
/// empty: size() 0, rank() -1, and every operation (split, dup, collectives) throws
/// ConfigError.
class Communicator {
 public:
  /// Colour for split() of a rank that joins no child.
  static constexpr int kNoColour = -1;

  virtual ~Communicator() = default;

  /// Number of members.
  [[nodiscard]] virtual int size() const noexcept = 0;
  /// This process's index among the members, in [0, size()).
  [[nodiscard]] virtual int rank() const noexcept = 0;
  /// Name of the backend: "mpi", "nccl", "self", "fake".
  [[nodiscard]] virtual std::string_view backend() const noexcept = 0;

  /// Splits into children: members with the same @p colour form one child, ranked by
  /// @p key. The caller states the @p size it expects its child to have, and @p key
  /// must be its rank there; a backend whose child has another size (because ranks
  /// disagreed on the colours) throws. @p options configure the child.
  /// @return the caller's child, or nullptr when @p colour is kNoColour (then @p key
  ///         and @p size are ignored).
  /// @throws ConfigError if @p colour is negative but not kNoColour, @p size is not in
  ///         [1, size()], @p key is not in [0, @p size), or an option is invalid for the
  ///         backend; CommError from the backend or for a child of another size;
  ///         Timeout past options.timeout.
  [[nodiscard]] std::unique_ptr<Communicator> split(int colour, int key, int size,
                                                    const CommOptions& options = {}) const;

  /// A new communicator with the same members and ranks.
  /// @throws ConfigError, CommError or Timeout as split().
  [[nodiscard]] std::unique_ptr<Communicator> dup(const CommOptions& options = {}) const;

  /// Reduces @p count elements of every member and gives the result to all.
  /// @p send may equal @p recv (in place).
  void all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const;
  /// Member i sends block j of @p send (@p count elements each) to member j, which
  /// stores it as block i of @p recv. Buffers hold size() * count elements.
  void all_to_all(const void* send, void* recv, std::size_t count, DataType type) const;
  /// Block i of @p recv (size() * count elements) receives member i's @p send (@p count).
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) const;
  /// Reduces @p send (size() * count elements) over all members; member i receives
  /// block i of the result in @p recv (@p count elements).
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const;
  /// Copies @p count elements of member @p root's @p buffer to every member's @p buffer.
  /// @throws ConfigError if @p root is outside [0, size()).
  void broadcast(void* buffer, std::size_t count, DataType type, int root) const;
  /// Returns once every member has called it.
  void barrier() const;

  /// Aborts the communicator: every later operation on it throws CommError, and the
  /// backend's resources are given up without waiting for the other members (NCCL:
  /// `ncclCommAbort`). Use it when a member is known to have failed. Safe from any
  /// thread, also while another thread waits in an operation of this communicator: an
  /// NCCL operation then returns at once with CommError (an MPI call already under way
  /// is not interrupted, nor a call inside a blocking NCCL communicator's creation, which
  /// the abort waits for). Only the first call has an effect. It is `const` like the
  /// collectives (it ends the connection, not what the communicator is), so a watchdog
  /// can abort the communicator of a const ProcessGroup.
  void abort() const noexcept;
  /// Whether abort() was called, by the caller or by the backend after an operation
  /// failed or timed out.
  [[nodiscard]] bool aborted() const noexcept { return aborted_.load(); }

  /// A communicator of this process alone, for buffers of the same kind as this
  /// backend's (host memory, or device memory for NCCL). It holds no backend
  /// resources and is not collective.
  [[nodiscard]] virtual std::unique_ptr<Communicator> self() const;

  /// Typed all_reduce; @p send and @p recv have the same length.
  template <Element T>
  void all_reduce(std::span<const T> send, std::span<T> recv, ReduceOp op) const {
    check_length(send.size(), recv.size(), "all_reduce receive buffer");
    all_reduce(send.data(), recv.data(), send.size(), data_type_of<T>(), op);
  }
  /// Typed all_reduce in place.
  template <Element T>
  void all_reduce(std::span<T> buffer, ReduceOp op) const {
    all_reduce(buffer.data(), buffer.data(), buffer.size(), data_type_of<T>(), op);
  }
  /// Typed all_to_all; both spans hold size() equal blocks.
  template <Element T>
  void all_to_all(std::span<const T> send, std::span<T> recv) const {
    check_length(send.size(), recv.size(), "all_to_all receive buffer");
    all_to_all(send.data(), recv.data(), block(send.size(), "all_to_all"), data_type_of<T>());
  }
  /// Typed all_gather; @p recv holds size() blocks of send.size() elements.
  template <Element T>
  void all_gather(std::span<const T> send, std::span<T> recv) const {
    check_length(send.size() * member_count(), recv.size(), "all_gather receive buffer");
    all_gather(send.data(), recv.data(), send.size(), data_type_of<T>());
  }
  /// Typed reduce_scatter; @p send holds size() blocks of recv.size() elements.
  template <Element T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, ReduceOp op) const {
    check_length(recv.size() * member_count(), send.size(), "reduce_scatter send buffer");
    reduce_scatter(send.data(), recv.data(), recv.size(), data_type_of<T>(), op);
  }
  /// Typed broadcast from member @p root.
  template <Element T>
  void broadcast(std::span<T> buffer, int root) const {
    broadcast(buffer.data(), buffer.size(), data_type_of<T>(), root);
  }

 protected:
  /// Backends only.
  Communicator() = default;
  /// Backends only; the copy is aborted if @p other is.
  Communicator(const Communicator& other) noexcept : aborted_(other.aborted()) {}
  /// Backends only; the new object is aborted if @p other is.
  Communicator(Communicator&& other) noexcept : aborted_(other.aborted()) {}
  /// Backends only; this object is aborted if @p other is.
  Communicator& operator=(const Communicator& other) noexcept {
    aborted_ = other.aborted();
    return *this;
  }
  /// Backends only; this object is aborted if @p other is.
  Communicator& operator=(Communicator&& other) noexcept {
    aborted_ = other.aborted();
    return *this;
  }

  // Backend hooks, called after the public functions checked the arguments.

  /// split() for the backend, whose child must have @p size members (unchecked for kNoColour).
  [[nodiscard]] virtual std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                               const CommOptions& options) const = 0;
  /// dup() for the backend.
  [[nodiscard]] virtual std::unique_ptr<Communicator> do_dup(const CommOptions& options) const = 0;
  /// all_reduce() for the backend; @p send may equal @p recv.
  virtual void do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const = 0;
  /// all_to_all() for the backend.
  virtual void do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const = 0;
  /// all_gather() for the backend.
  virtual void do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const = 0;
  /// reduce_scatter() for the backend.
  virtual void do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const = 0;
  /// broadcast() for the backend; @p root is in range.
  virtual void do_broadcast(void* buffer, std::size_t count, DataType type, int root) const = 0;
  /// barrier() for the backend.
  virtual void do_barrier() const = 0;
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
  // The per-member block of a buffer of total elements; throws unless size() divides it.
  [[nodiscard]] std::size_t block(std::size_t total, std::string_view what) const;

  // Set once by abort(); mutable because abort() is const, as the collectives are.
  mutable std::atomic<bool> aborted_{false};
};

}  // namespace pcx
