#pragma once
/// @file self_communicator.hpp
/// @brief The communicator of a group of one process: collectives are local copies.

#include <functional>

#include "pcx/communicator.hpp"

namespace pcx {

/// A communicator whose only member is this process. It holds no backend
/// resources, so size-1 groups cost nothing on any backend.
class SelfCommunicator final : public Communicator {
 public:
  /// Copies @p bytes from @p source to @p target; the two may be the same.
  using Copy = std::function<void(void* target, const void* source, std::size_t bytes)>;

  /// A communicator for host buffers (collectives copy with memmove).
  SelfCommunicator();
  /// A communicator whose collectives copy with @p copy, for buffers that a plain
  /// memmove cannot reach (device memory).
  explicit SelfCommunicator(Copy copy) : copy_(std::move(copy)) {}

  /// Always 1.
  [[nodiscard]] int size() const noexcept override { return 1; }
  /// Always 0.
  [[nodiscard]] int rank() const noexcept override { return 0; }
  /// "self".
  [[nodiscard]] std::string_view backend() const noexcept override { return "self"; }
  /// A copy of this communicator (same copy function).
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
  // A group of one has no peer, so Communicator::send and recv never get here.
  void do_send(const void*, std::size_t, DataType, int) const override {}
  void do_recv(void*, std::size_t, DataType, int) const override {}
  void do_barrier() const override {}
  void copy(const void* send, void* recv, std::size_t count, DataType type) const;

  Copy copy_;
};

}  // namespace pcx
