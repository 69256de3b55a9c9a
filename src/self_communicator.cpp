#include "pcx/self_communicator.hpp"

#include <fmt/format.h>

#include <cstring>

#include "pcx/error.hpp"

namespace pcx {
SelfCommunicator::SelfCommunicator()
    : copy_([](void* target, const void* source, std::size_t bytes) { std::memmove(target, source, bytes); }) {}

// With one member every collective's result is its own input.
void SelfCommunicator::copy(const void* send, void* recv, std::size_t count, DataType type) const {
  if (send != recv && count > 0) copy_(recv, send, count * size_of(type));
}

std::unique_ptr<Communicator> SelfCommunicator::do_split(int colour, int, int, const CommOptions&) const {
  if (colour == kNoColour) return nullptr;
  return self();
}

std::unique_ptr<Communicator> SelfCommunicator::do_dup(const CommOptions&) const { return self(); }

std::unique_ptr<Communicator> SelfCommunicator::self() const { return std::make_unique<SelfCommunicator>(copy_); }

void SelfCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp) const {
  copy(send, recv, count, type);  // every reduction of one value, avg included, is the value
}

void SelfCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  copy(send, recv, count, type);
}

void SelfCommunicator::do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                                       std::span<const std::size_t>, void* recv,
                                       std::span<const std::size_t> recv_counts, std::span<const std::size_t>,
                                       DataType type) const {
  // The one member receives what it sends, so the counts must agree.
  if (send_counts[0] != recv_counts[0]) {
    throw ConfigError(fmt::format("all_to_all_v of one member sends {} elements to itself but receives {}",
                                  send_counts[0], recv_counts[0]));
  }
  copy(send, recv, send_counts[0], type);
}

void SelfCommunicator::do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  copy(send, recv, count, type);
}

void SelfCommunicator::do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                         ReduceOp) const {
  copy(send, recv, count, type);
}

void SelfCommunicator::do_broadcast(void*, std::size_t, DataType, int) const {}

}  // namespace pcx
