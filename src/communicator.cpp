#include "pcx/communicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "host.hpp"
#include "pcx/error.hpp"
#include "pcx/flight_recorder.hpp"

namespace pcx {
namespace {

void check_buffer(const void* buffer, std::size_t count, std::string_view what) {
  if (buffer == nullptr && count > 0) {
    throw ConfigError(fmt::format("{} is null but {} elements were asked for", what, count));
  }
}

// Checked here once, so that every backend switches over valid values only.
void check_op(ReduceOp op) {
  if (to_string(op) == "unknown") {
    throw ConfigError(fmt::format("reduce operation {} is not a pcx::ReduceOp", static_cast<int>(op)));
  }
}

// A valid type, and a buffer of `blocks` blocks of `count` elements whose byte count
// fits in a size_t (backends multiply without checking).
void check_elements(std::string_view operation, std::size_t count, DataType type, std::size_t blocks) {
  if (size_of(type) == 0) {
    throw ConfigError(fmt::format("data type {} is not a pcx::DataType", static_cast<int>(type)));
  }
  std::size_t bytes = 0;
  if (__builtin_mul_overflow(count, size_of(type), &bytes) || __builtin_mul_overflow(bytes, blocks, &bytes)) {
    throw ConfigError(fmt::format("{} of {} {} elements{} overflows a byte count", operation, count, to_string(type),
                                  blocks > 1 ? fmt::format(" per member, {} members,", blocks) : ""));
  }
}

}  // namespace

std::size_t size_of(DataType type) noexcept {
  switch (type) {
    case DataType::int8:
    case DataType::uint8: return 1;
    case DataType::float16:
    case DataType::bfloat16: return 2;
    case DataType::int32:
    case DataType::uint32:
    case DataType::float32: return 4;
    case DataType::int64:
    case DataType::uint64:
    case DataType::float64: return 8;
  }
  return 0;
}

std::string_view to_string(DataType type) noexcept {
  switch (type) {
    case DataType::int8: return "int8";
    case DataType::uint8: return "uint8";
    case DataType::int32: return "int32";
    case DataType::uint32: return "uint32";
    case DataType::int64: return "int64";
    case DataType::uint64: return "uint64";
    case DataType::float16: return "float16";
    case DataType::bfloat16: return "bfloat16";
    case DataType::float32: return "float32";
    case DataType::float64: return "float64";
  }
  return "unknown";
}

std::string_view to_string(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::prod: return "prod";
    case ReduceOp::min: return "min";
    case ReduceOp::max: return "max";
    case ReduceOp::avg: return "avg";
  }
  return "unknown";
}

namespace {

void check_colour(int colour) {
  if (colour < 0 && colour != Communicator::kNoColour) {
    throw ConfigError(fmt::format("split colour {} is negative (use kNoColour, {}, to join no group)", colour,
                                  Communicator::kNoColour));
  }
}

}  // namespace

template <class Call>
auto Communicator::recorded(std::string_view operation, std::size_t count, Call&& call) const {
  if (!recorder_) return call();
  FlightRecorder& recorder = *recorder_;
  const std::uint64_t sequence = recorder.begin(operation, count);
  try {
    if constexpr (std::is_void_v<decltype(call())>) {
      call();
      recorder.end(sequence, OperationRecord::State::completed);
    } else {
      auto result = call();
      recorder.end(sequence, OperationRecord::State::completed);
      return result;
    }
  } catch (const Timeout&) {
    recorder.end(sequence, OperationRecord::State::timed_out);
    throw;
  } catch (...) {
    recorder.end(sequence, OperationRecord::State::failed);
    throw;
  }
}

std::unique_ptr<Communicator> Communicator::split(int colour, int key, const CommOptions& options) const {
  check_usable("split");
  check_colour(colour);
  return recorded("split", 0, [&] { return do_split(colour, colour == kNoColour ? 0 : key, 0, options); });
}

std::unique_ptr<Communicator> Communicator::split_checked(int colour, int rank, int size,
                                                          const CommOptions& options) const {
  check_usable("split");
  check_colour(colour);
  if (colour == kNoColour) return recorded("split", 0, [&] { return do_split(colour, 0, 0, options); });
  if (size < 1 || size > this->size()) {
    throw ConfigError(fmt::format("split size {} is outside [1, {}]", size, this->size()));
  }
  if (rank < 0 || rank >= size) {
    throw ConfigError(fmt::format("split rank {} is outside [0, {}), the ranks of a child of {}", rank, size, size));
  }
  auto child = recorded("split", 0, [&] { return do_split(colour, rank, size, options); });
  if (child && (child->size() != size || child->rank() != rank)) {
    throw CommError(fmt::format("split colour {} gave a child of {} members in which this process is rank {}, "
                                "not {} and {}: ranks disagree on the colours",
                                colour, child->size(), child->rank(), size, rank),
                    -1);
  }
  return child;
}

std::unique_ptr<Communicator> Communicator::create_group(std::span<const int> members,
                                                         const CommOptions& options) const {
  check_usable("create_group");
  if (members.empty()) throw ConfigError("create_group: the list of members is empty");
  std::vector<bool> seen(static_cast<std::size_t>(size()));
  for (const int member : members) {
    if (member < 0 || member >= size()) {
      throw ConfigError(fmt::format("create_group: member {} is outside [0, {}), the ranks here", member, size()));
    }
    if (seen[static_cast<std::size_t>(member)]) {
      throw ConfigError(fmt::format("create_group: member {} is listed twice", member));
    }
    seen[static_cast<std::size_t>(member)] = true;
  }
  const auto caller = std::ranges::find(members, rank());
  if (caller == members.end()) {
    throw ConfigError(fmt::format("create_group: the caller, rank {}, is not among the members", rank()));
  }
  return recorded("create_group", 0,
                  [&] { return do_create_group(members, static_cast<int>(caller - members.begin()), options); });
}

std::unique_ptr<Communicator> Communicator::do_create_group(std::span<const int>, int, const CommOptions&) const {
  throw ConfigError(fmt::format("create_group: the {} backend cannot create a group of its members alone (split)",
                                backend()));
}

std::unique_ptr<Communicator> Communicator::shrink(std::span<const int> excluded, const CommOptions& options) const {
  check_usable("shrink");
  std::vector<int> sorted(excluded.begin(), excluded.end());
  std::ranges::sort(sorted);
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    const int member = sorted[i];
    if (member < 0 || member >= size()) {
      throw ConfigError(fmt::format("shrink: excluded rank {} is outside [0, {}), the ranks here", member, size()));
    }
    if (i > 0 && sorted[i - 1] == member) throw ConfigError(fmt::format("shrink: rank {} is excluded twice", member));
    if (member == rank()) {
      throw ConfigError(fmt::format("shrink: the caller, rank {}, is excluded: only the survivors call it", member));
    }
  }
  std::vector<int> survivors;
  for (int r = 0; r < size(); ++r) {
    if (!std::ranges::binary_search(sorted, r)) survivors.push_back(r);
  }
  return recorded("shrink", 0, [&] { return do_shrink(sorted, survivors, options); });
}

std::unique_ptr<Communicator> Communicator::do_shrink(std::span<const int>, std::span<const int> survivors,
                                                      const CommOptions& options) const {
  return create_group(survivors, options);
}

std::unique_ptr<Communicator> Communicator::dup(const CommOptions& options) const {
  check_usable("dup");
  return recorded("dup", 0, [&] { return do_dup(options); });
}

void Communicator::all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const {
  check_usable("all_reduce");
  check_op(op);
  check_elements("all_reduce", count, type, 1);
  check_buffer(send, count, "all_reduce send buffer");
  check_buffer(recv, count, "all_reduce receive buffer");
  recorded("all_reduce", count, [&] { do_all_reduce(send, recv, count, type, op); });
}

void Communicator::all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  check_usable("all_to_all");
  check_elements("all_to_all", count, type, member_count());
  check_buffer(send, count, "all_to_all send buffer");
  check_buffer(recv, count, "all_to_all receive buffer");
  recorded("all_to_all", count, [&] { do_all_to_all(send, recv, count, type); });
}

void Communicator::all_to_all_v(const void* send, std::span<const std::size_t> send_counts, void* recv,
                                std::span<const std::size_t> recv_counts, DataType type) const {
  check_usable("all_to_all_v");
  const std::size_t send_total = total(send_counts, "all_to_all_v send counts");
  const std::size_t recv_total = total(recv_counts, "all_to_all_v receive counts");
  const auto offsets = [](std::span<const std::size_t> counts) {
    std::vector<std::size_t> prefix;
    prefix.reserve(counts.size());
    std::size_t sum = 0;
    for (const std::size_t count : counts) {
      prefix.push_back(sum);
      sum += count;
    }
    return prefix;
  };
  const std::vector<std::size_t> send_offsets = offsets(send_counts);
  const std::vector<std::size_t> recv_offsets = offsets(recv_counts);
  check_elements("all_to_all_v send buffer", send_total, type, 1);
  check_elements("all_to_all_v receive buffer", recv_total, type, 1);
  check_buffer(send, send_total, "all_to_all_v send buffer");
  check_buffer(recv, recv_total, "all_to_all_v receive buffer");
  recorded("all_to_all_v", send_total,
           [&] { do_all_to_all_v(send, send_counts, send_offsets, recv, recv_counts, recv_offsets, type); });
}

void Communicator::all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  check_usable("all_gather");
  check_elements("all_gather", count, type, member_count());
  check_buffer(send, count, "all_gather send buffer");
  check_buffer(recv, count, "all_gather receive buffer");
  recorded("all_gather", count, [&] { do_all_gather(send, recv, count, type); });
}

void Communicator::reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const {
  check_usable("reduce_scatter");
  check_op(op);
  check_elements("reduce_scatter", count, type, member_count());
  check_buffer(send, count, "reduce_scatter send buffer");
  check_buffer(recv, count, "reduce_scatter receive buffer");
  recorded("reduce_scatter", count, [&] { do_reduce_scatter(send, recv, count, type, op); });
}

void Communicator::broadcast(void* buffer, std::size_t count, DataType type, int root) const {
  check_usable("broadcast");
  if (root < 0 || root >= size()) {
    throw ConfigError(fmt::format("broadcast root {} is outside [0, {})", root, size()));
  }
  check_elements("broadcast", count, type, 1);
  check_buffer(buffer, count, "broadcast buffer");
  recorded("broadcast", count, [&] { do_broadcast(buffer, count, type, root); });
}

void Communicator::send(const void* buffer, std::size_t count, DataType type, int peer) const {
  check_usable("send");
  check_peer("send", peer);
  check_elements("send", count, type, 1);
  check_buffer(buffer, count, "send buffer");
  recorded("send", count, [&] { do_send(buffer, count, type, peer); });
}

void Communicator::recv(void* buffer, std::size_t count, DataType type, int peer) const {
  check_usable("recv");
  check_peer("recv", peer);
  check_elements("recv", count, type, 1);
  check_buffer(buffer, count, "receive buffer");
  recorded("recv", count, [&] { do_recv(buffer, count, type, peer); });
}

void Communicator::barrier() const {
  check_usable("barrier");
  recorded("barrier", 0, [&] { do_barrier(); });
}

std::vector<int> Communicator::nodes() const {
  check_usable("nodes");
  return recorded("nodes", 0, [&] { return do_nodes(); });
}

std::vector<int> Communicator::do_nodes() const { return detail::nodes_by_host(*this); }

void Communicator::abort() const noexcept {
  if (!aborted_.exchange(true)) do_abort();
}

void Communicator::check_usable(std::string_view operation) const {
  // Size 0 is the state a backend leaves a moved-from object in; a real group has a member.
  if (size() == 0) {
    throw ConfigError(fmt::format("{} on a moved-from {} communicator", operation, backend()));
  }
  if (aborted()) {
    throw CommError(
        fmt::format("{} on an aborted {} communicator (rank {} of {})", operation, backend(), rank(), size()), -1);
  }
}

void Communicator::check_length(std::size_t expected, std::size_t actual, std::string_view what) {
  if (expected != actual) {
    throw ConfigError(fmt::format("{} holds {} elements but {} are needed", what, actual, expected));
  }
}

std::size_t Communicator::total(std::span<const std::size_t> counts, std::string_view what) const {
  if (counts.size() != member_count()) {
    throw ConfigError(fmt::format("{} has {} entries, not one per member ({})", what, counts.size(), size()));
  }
  std::size_t sum = 0;
  for (const std::size_t count : counts) {
    if (__builtin_add_overflow(sum, count, &sum)) throw ConfigError(fmt::format("{} overflow a size_t", what));
  }
  return sum;
}

void Communicator::check_peer(std::string_view operation, int peer) const {
  if (peer < 0 || peer >= size()) {
    throw ConfigError(fmt::format("{} peer {} is outside [0, {})", operation, peer, size()));
  }
  if (peer == rank()) {
    throw ConfigError(fmt::format("{} peer {} is the caller itself: a member cannot {} to itself", operation, peer,
                                  operation == "send" ? "send" : "receive from"));
  }
}

std::size_t Communicator::block(std::size_t total, std::string_view what) const {
  if (total % member_count() != 0) {
    throw ConfigError(fmt::format("{} buffer of {} elements does not split into {} equal blocks", what, total, size()));
  }
  return total / member_count();
}

}  // namespace pcx
