#pragma once
/// @file fake_communicator.hpp
/// @brief A communicator with no processes behind it, for tests: build the context of
///        any rank of any world size in one process, and see every split it makes.

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "pcx/communicator.hpp"

namespace pcx::testing {

/// What a simulated world saw: every split and dup that its fake communicators made.
/// Shared by the FakeCommunicators of one simulated world; safe from many threads.
class FakeWorld {
 public:
  /// One split call.
  struct Split {
    int caller;    ///< World rank of the process that called.
    int sequence;  ///< How many splits that caller had made before this one.
    int colour;    ///< Colour passed.
    int key;       ///< Key passed.
    int size;      ///< Child size the caller expected.
  };

  /// A world of @p size ranks.
  /// @throws ConfigError if @p size < 1.
  explicit FakeWorld(int size);

  /// Number of ranks.
  [[nodiscard]] int size() const noexcept { return size_; }
  /// Every split so far, in call order.
  [[nodiscard]] std::vector<Split> splits() const;
  /// Number of splits world rank @p caller made.
  [[nodiscard]] int split_count(int caller) const;
  /// Number of dups world rank @p caller made.
  [[nodiscard]] int dup_count(int caller) const;
  /// Checks that the splits recorded so far could have come from one real job: for
  /// each call (the n-th split of every caller), the callers with the same colour all
  /// expected a child of as many members as there are of them, and their keys are
  /// 0, 1, ... in some order.
  /// @throws Error describing the first inconsistency.
  void verify() const;

  /// Makes the @p n-th operation (counting from 0, over splits, dups and collectives
  /// of every caller) throw CommError, to test error paths. std::nullopt disarms it.
  void fail_operation(std::optional<int> n);
  /// Number of operations so far (splits, dups and collectives).
  [[nodiscard]] int operation_count() const;
  /// Number of FakeCommunicators of this world alive now: what a test compares before
  /// and after to see that nothing leaked.
  [[nodiscard]] int live_communicators() const;

  /// Places the ranks on nodes: @p nodes[r] names the node of world rank r by its lowest
  /// rank, as Communicator::nodes() reports it for a communicator of the whole world
  /// (others, and every one before this call, report unknown nodes: an empty list).
  /// @throws ConfigError if @p nodes has another size than the world or names a node by
  ///         a rank that is not its lowest.
  void set_nodes(std::vector<int> nodes);

 private:
  friend class FakeCommunicator;
  void record_operation(const char* what);
  void record_split(int caller, int colour, int key, int size);
  void record_dup(int caller);

  int size_;
  mutable std::mutex mutex_;
  std::vector<Split> splits_;
  std::vector<int> split_counts_;
  std::vector<int> dup_counts_;
  int operations_ = 0;
  int live_ = 0;
  std::optional<int> fail_at_;
  std::vector<int> nodes_;
};

/// Where a FakeCommunicator stands: use designated initializers and name every field,
/// as in `{.size = 4, .rank = 1, .caller = 5}`; a field left out is out of range.
struct FakeMember {
  int size = 0;     ///< Number of members of the communicator.
  int rank = -1;    ///< The member's rank in it, in [0, size).
  int caller = -1;  ///< World rank of the process that holds it.
};

/// A communicator of a simulated world. Splits and dups are recorded in its
/// FakeWorld and return fakes of the right size and rank; collectives behave as if
/// every member passed the same buffer as this one (an all-reduce sum multiplies by
/// the size, a maximum returns the input, an all-gather repeats it); recv leaves its
/// buffer as it is. Groups of one member are fakes too (self()), so their operations
/// count as well.
class FakeCommunicator final : public Communicator {
 public:
  /// Member @p member .rank of a communicator of @p member .size members, held by world
  /// rank @p member .caller of @p world.
  /// @throws ConfigError if @p world is null, the size is below 1 or a rank is out of range.
  FakeCommunicator(std::shared_ptr<FakeWorld> world, FakeMember member);
  /// World rank @p rank of @p world.
  FakeCommunicator(std::shared_ptr<FakeWorld> world, int rank);
  FakeCommunicator(const FakeCommunicator&) = delete;
  FakeCommunicator& operator=(const FakeCommunicator&) = delete;
  /// Counts itself out of FakeWorld::live_communicators().
  ~FakeCommunicator() override;

  [[nodiscard]] int size() const noexcept override { return size_; }
  [[nodiscard]] int rank() const noexcept override { return rank_; }
  /// "fake".
  [[nodiscard]] std::string_view backend() const noexcept override { return "fake"; }
  /// A fake of one member made by the same caller.
  [[nodiscard]] std::unique_ptr<Communicator> self() const override;

 private:
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
  /// The world's nodes (FakeWorld::set_nodes) for a communicator of the whole world, else
  /// unknown (empty).
  [[nodiscard]] std::vector<int> do_nodes() const override;

  std::shared_ptr<FakeWorld> world_;
  int size_;
  int rank_;
  int caller_;
};

}  // namespace pcx::testing
