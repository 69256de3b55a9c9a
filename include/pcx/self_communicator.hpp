#pragma once
/// @file self_communicator.hpp
/// @brief The communicator of a group of one process: collectives are local copies.

#include "pcx/communicator.hpp"

namespace pcx {

/// A communicator whose only member is this process. It holds no backend
/// resources, so size-1 groups cost nothing on any backend.
class SelfCommunicator final : public Communicator {
 public:
  /// Always 1.
  [[nodiscard]] int size() const noexcept override { return 1; }
  /// Always 0.
  [[nodiscard]] int rank() const noexcept override { return 0; }
  /// "self".
  [[nodiscard]] std::string_view backend() const noexcept override { return "self"; }

 private:
  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, std::span<const int> members,
                                                       const CommOptions& options) const override;
  [[nodiscard]] std::unique_ptr<Communicator> do_dup(const CommOptions& options) const override;
  void do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override;
  void do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const override;
  void do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const override;
  void do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                         ReduceOp op) const override;
  void do_broadcast(void* buffer, std::size_t count, DataType type, int root) const override;
  void do_barrier() const override {}
};

}  // namespace pcx
