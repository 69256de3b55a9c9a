#include "pcx/self_communicator.hpp"

#include <cstring>

namespace pcx {
namespace {

// With one member every collective's result is its own input.
void copy(const void* send, void* recv, std::size_t count, DataType type) {
  if (send != recv && count > 0) std::memmove(recv, send, count * size_of(type));
}

}  // namespace

std::unique_ptr<Communicator> SelfCommunicator::do_split(int colour, int, std::span<const int>,
                                                         const CommOptions&) const {
  if (colour == kNoColour) return nullptr;
  return std::make_unique<SelfCommunicator>();
}

std::unique_ptr<Communicator> SelfCommunicator::do_dup(const CommOptions&) const { return std::make_unique<SelfCommunicator>(); }

void SelfCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                                     ReduceOp) const {
  copy(send, recv, count, type);
}

void SelfCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  copy(send, recv, count, type);
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
