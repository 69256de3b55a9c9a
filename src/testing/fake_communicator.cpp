#include "pcx/testing/fake_communicator.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#include "../elementwise.hpp"
#include "pcx/error.hpp"

namespace pcx::testing {
namespace {

// The result of reducing `members` copies of send[0, count) into recv, one member at a
// time as a real reduction would.
void reduce_copies(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op, int members) {
  const auto* first = static_cast<const std::byte*>(send);
  const std::vector<std::byte> input(first, first + count * size_of(type));
  if (!input.empty()) std::memmove(recv, input.data(), input.size());
  if (op == ReduceOp::min || op == ReduceOp::max) return;
  for (int member = 1; member < members; ++member) detail::accumulate(recv, input.data(), count, type, op);
  if (op == ReduceOp::avg) detail::finish_average(recv, count, type, members);
}

}  // namespace

FakeWorld::FakeWorld(int size)
    : size_(size), split_counts_(static_cast<std::size_t>(std::max(size, 0))), dup_counts_(split_counts_.size()) {
  if (size < 1) throw ConfigError(fmt::format("a fake world of {} ranks: the size must be at least 1", size));
}

std::vector<FakeWorld::Split> FakeWorld::splits() const {
  const std::lock_guard lock(mutex_);
  return splits_;
}

int FakeWorld::split_count(int caller) const {
  const std::lock_guard lock(mutex_);
  return split_counts_.at(static_cast<std::size_t>(caller));
}

int FakeWorld::dup_count(int caller) const {
  const std::lock_guard lock(mutex_);
  return dup_counts_.at(static_cast<std::size_t>(caller));
}

void FakeWorld::set_nodes(std::vector<int> nodes) {
  if (std::cmp_not_equal(nodes.size(), size_)) {
    throw ConfigError(fmt::format("FakeWorld::set_nodes: {} nodes for a world of {} ranks", nodes.size(), size_));
  }
  for (std::size_t r = 0; r < nodes.size(); ++r) {
    const int lowest = nodes[r];
    if (lowest < 0 || std::cmp_greater(lowest, r) || nodes[static_cast<std::size_t>(lowest)] != lowest) {
      throw ConfigError(
          fmt::format("FakeWorld::set_nodes: rank {} is on the node of rank {}, which is not that "
                      "node's lowest rank",
                      r, lowest));
    }
  }
  const std::lock_guard lock(mutex_);
  nodes_ = std::move(nodes);
}

void FakeWorld::fail_operation(std::optional<int> n) {
  const std::lock_guard lock(mutex_);
  fail_at_ = n;
}

int FakeWorld::operation_count() const {
  const std::lock_guard lock(mutex_);
  return operations_;
}

int FakeWorld::live_communicators() const {
  const std::lock_guard lock(mutex_);
  return live_;
}

void FakeWorld::record_operation(const char* what) {
  const std::lock_guard lock(mutex_);
  const int operation = operations_++;
  if (fail_at_ && *fail_at_ == operation) {
    throw CommError(fmt::format("{} failed: injected fault at operation {}", what, *fail_at_), -1);
  }
}

void FakeWorld::record_split(int caller, int colour, int key, int size) {
  record_operation("split");
  const std::lock_guard lock(mutex_);
  const auto index = static_cast<std::size_t>(caller);
  splits_.push_back({caller, split_counts_[index]++, colour, key, size});
}

void FakeWorld::record_dup(int caller) {
  record_operation("dup");
  const std::lock_guard lock(mutex_);
  ++dup_counts_[static_cast<std::size_t>(caller)];
}

void FakeWorld::verify() const {
  const std::lock_guard lock(mutex_);
  // (sequence, colour) -> the splits of that child
  std::map<std::pair<int, int>, std::vector<const Split*>> children;
  for (const Split& split : splits_) {
    if (split.colour != Communicator::kNoColour) children[{split.sequence, split.colour}].push_back(&split);
  }
  for (const auto& [id, calls] : children) {
    for (const Split* call : calls) {
      if (static_cast<std::size_t>(call->size) != calls.size()) {
        throw Error(fmt::format("split {} colour {}: caller {} expected {} members but {} callers chose the colour",
                                id.first, id.second, call->caller, call->size, calls.size()));
      }
      if (std::ranges::count(calls, call->key, &Split::key) != 1) {
        throw Error(fmt::format("split {} colour {}: key {} passed twice", id.first, id.second, call->key));
      }
    }
  }
}

FakeCommunicator::FakeCommunicator(std::shared_ptr<FakeWorld> world, FakeMember member)
    : world_(std::move(world)), size_(member.size), rank_(member.rank), caller_(member.caller) {
  if (!world_) throw ConfigError("a fake communicator needs a fake world");
  if (size_ < 1) {
    throw ConfigError(fmt::format("a fake communicator of size {}: the size must be at least 1", size_));
  }
  if (rank_ < 0 || rank_ >= size_) {
    throw ConfigError(fmt::format("fake communicator rank {} of size {}: the rank must be in [0, size)", rank_, size_));
  }
  if (caller_ < 0 || caller_ >= world_->size()) {
    throw ConfigError(fmt::format("fake caller {} is outside the world [0, {})", caller_, world_->size()));
  }
  const std::lock_guard lock(world_->mutex_);
  ++world_->live_;
}

FakeCommunicator::~FakeCommunicator() {
  const std::lock_guard lock(world_->mutex_);
  --world_->live_;
}

FakeCommunicator::FakeCommunicator(std::shared_ptr<FakeWorld> world, int rank)
    : FakeCommunicator(world, {.size = world ? world->size() : 1, .rank = rank, .caller = rank}) {}

std::unique_ptr<Communicator> FakeCommunicator::do_split(int colour, int key, int size, const CommOptions&) const {
  if (colour != kNoColour && size == 0) {
    throw ConfigError("a FakeCommunicator cannot know the size of a split's child: use split_checked");
  }
  world_->record_split(caller_, colour, key, size);
  if (colour == kNoColour) return nullptr;
  return std::make_unique<FakeCommunicator>(world_, FakeMember{.size = size, .rank = key, .caller = caller_});
}

std::unique_ptr<Communicator> FakeCommunicator::do_dup(const CommOptions&) const {
  world_->record_dup(caller_);
  return std::make_unique<FakeCommunicator>(world_, FakeMember{.size = size_, .rank = rank_, .caller = caller_});
}

void FakeCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                                     ReduceOp op) const {
  world_->record_operation("all_reduce");
  reduce_copies(send, recv, count, type, op, size_);
}

void FakeCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  world_->record_operation("all_to_all");
  // Every member sends the same blocks, so block i from member i is always our block.
  const std::size_t bytes = count * size_of(type);
  std::vector<std::byte> mine(static_cast<const std::byte*>(send) + bytes * static_cast<std::size_t>(rank_),
                              static_cast<const std::byte*>(send) + bytes * static_cast<std::size_t>(rank_ + 1));
  for (int i = 0; i < size_; ++i) {
    if (bytes > 0) std::memcpy(static_cast<std::byte*>(recv) + bytes * static_cast<std::size_t>(i), mine.data(), bytes);
  }
}

void FakeCommunicator::do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                                       std::span<const std::size_t> send_offsets, void* recv,
                                       std::span<const std::size_t> recv_counts,
                                       std::span<const std::size_t> recv_offsets, DataType type) const {
  world_->record_operation("all_to_all_v");
  // Every member sends the same blocks with the same counts, so each block received is
  // our own block.
  const auto me = static_cast<std::size_t>(rank_);
  const std::size_t element = size_of(type);
  const auto* source = static_cast<const std::byte*>(send) + send_offsets[me] * element;
  const std::vector<std::byte> mine(source, source + send_counts[me] * element);
  for (std::size_t i = 0; i < recv_counts.size(); ++i) {
    if (recv_counts[i] != send_counts[me]) {
      throw CommError(fmt::format("fake all_to_all_v: member {} sends {} elements (every member sends what this one "
                                  "does) but {} are expected",
                                  i, send_counts[me], recv_counts[i]),
                      -1);
    }
    if (!mine.empty()) std::memcpy(static_cast<std::byte*>(recv) + recv_offsets[i] * element, mine.data(), mine.size());
  }
}

void FakeCommunicator::do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  world_->record_operation("all_gather");
  const std::size_t bytes = count * size_of(type);
  for (int i = 0; i < size_; ++i) {
    if (bytes > 0) std::memmove(static_cast<std::byte*>(recv) + bytes * static_cast<std::size_t>(i), send, bytes);
  }
}

void FakeCommunicator::do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                         ReduceOp op) const {
  world_->record_operation("reduce_scatter");
  const auto* block = static_cast<const std::byte*>(send) + count * size_of(type) * static_cast<std::size_t>(rank_);
  reduce_copies(block, recv, count, type, op, size_);
}

void FakeCommunicator::do_broadcast(void*, std::size_t, DataType, int) const { world_->record_operation("broadcast"); }

void FakeCommunicator::do_send(const void*, std::size_t, DataType, int) const { world_->record_operation("send"); }

void FakeCommunicator::do_recv(void*, std::size_t, DataType, int) const { world_->record_operation("recv"); }

std::unique_ptr<Communicator> FakeCommunicator::self() const {
  return std::make_unique<FakeCommunicator>(world_, FakeMember{.size = 1, .rank = 0, .caller = caller_});
}

void FakeCommunicator::do_barrier() const { world_->record_operation("barrier"); }

std::vector<int> FakeCommunicator::do_nodes() const {
  world_->record_operation("nodes");
  const std::lock_guard lock(world_->mutex_);
  return size() == world_->size_ ? world_->nodes_ : std::vector<int>{};
}

}  // namespace pcx::testing
