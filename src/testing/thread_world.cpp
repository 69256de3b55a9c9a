#include "pcx/testing/thread_world.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../elementwise.hpp"
#include "pcx/error.hpp"

namespace pcx::testing {
namespace detail {

// One communicator as all its members share it: the operations they meet in and the
// messages between them, all under one mutex and one condition variable.
struct Group {
  // What one member brings to an operation.
  struct Part {
    std::string call;                    // the operation and every argument members must agree on
    std::vector<std::byte> data{};       // a copy of the send buffer, so in-place calls are safe
    std::vector<std::size_t> counts{};   // all_to_all_v: elements for each member
    std::vector<std::size_t> offsets{};  // all_to_all_v: where they start in data
    int colour = 0;                      // split
    int key = 0;                         // split
  };
  // The n-th operation of the communicator; erased once every member has left it.
  struct Meeting {
    std::vector<std::optional<Part>> parts;
    int arrived = 0;
    int left = 0;
    // split and dup: each member's child (null for kNoColour) and its rank there, made
    // once by the first member to leave so that all members share the same child.
    std::vector<std::shared_ptr<Group>> children;
    std::vector<int> child_ranks;
  };
  struct Message {
    DataType type;
    std::size_t count;
    std::vector<std::byte> data;
  };

  explicit Group(int members) : size(members) {}

  const int size;
  std::mutex mutex;
  std::condition_variable changed;
  std::map<std::uint64_t, Meeting> meetings;
  std::map<std::pair<int, int>, std::deque<Message>> mail;  // by (sender, receiver)
  std::string broken;  // why no operation can succeed any more; empty while one can
};

struct ThreadWorldState {
  ThreadWorldState(int ranks, std::chrono::milliseconds wait) : size(ranks), timeout(wait) {}

  std::shared_ptr<Group> make_group(int members) {
    auto group = std::make_shared<Group>(members);
    const std::lock_guard lock(mutex);
    std::erase_if(groups, [](const std::weak_ptr<Group>& known) { return known.expired(); });
    groups.push_back(group);
    return group;
  }

  void record_operation(std::string_view what) {
    const std::lock_guard lock(mutex);
    const int operation = operations++;
    if (fail_at && *fail_at == operation) {
      throw CommError(fmt::format("{} failed: injected fault at operation {}", what, operation), -1);
    }
  }

  // Ends every operation that waits, and every later one, with CommError saying why.
  void break_every_group(const std::string& why) {
    std::vector<std::weak_ptr<Group>> known;
    {
      // A group's lock is taken with the world's held when a split makes children, so
      // the world's is released before any group's is taken here.
      const std::lock_guard lock(mutex);
      known = groups;
    }
    for (const auto& weak : known) {
      if (const auto group = weak.lock()) {
        const std::lock_guard lock(group->mutex);
        if (group->broken.empty()) group->broken = why;
        group->changed.notify_all();
      }
    }
  }

  const int size;
  const std::chrono::milliseconds timeout;
  std::mutex mutex;
  std::vector<std::weak_ptr<Group>> groups;
  int operations = 0;
  int live = 0;
  std::optional<int> fail_at;
};

}  // namespace detail

namespace {

using detail::Group;
using detail::ThreadWorldState;

std::vector<std::byte> copy_of(const void* buffer, std::size_t bytes) {
  const auto* first = static_cast<const std::byte*>(buffer);
  return bytes == 0 ? std::vector<std::byte>{} : std::vector<std::byte>(first, first + bytes);
}

void copy_bytes(void* to, const std::byte* from, std::size_t bytes) {
  if (bytes > 0) std::memcpy(to, from, bytes);
}

// Reduces the members' data at byte `offset` into `out`, in rank order, so that every
// member computes the same bits.
void reduce_parts(const Group::Meeting& meeting, std::size_t offset, std::size_t count, DataType type, ReduceOp op,
                  void* out) {
  if (count == 0) return;
  copy_bytes(out, meeting.parts[0]->data.data() + offset, count * size_of(type));
  for (std::size_t member = 1; member < meeting.parts.size(); ++member) {
    pcx::detail::accumulate(out, meeting.parts[member]->data.data() + offset, count, type, op);
  }
  if (op == ReduceOp::avg) pcx::detail::finish_average(out, count, type, static_cast<int>(meeting.parts.size()));
}

std::string what_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

[[noreturn]] void rethrow_on_rank(const std::exception_ptr& error, int rank) {
  const auto tagged = [rank](const std::exception& e) { return fmt::format("rank {}: {}", rank, e.what()); };
  try {
    std::rethrow_exception(error);
  } catch (const Timeout& e) {
    throw Timeout(tagged(e));
  } catch (const ConfigMismatch& e) {
    throw ConfigMismatch(tagged(e));
  } catch (const ConfigError& e) {
    throw ConfigError(tagged(e));
  } catch (const GroupNotFound& e) {
    throw GroupNotFound(tagged(e));
  } catch (const CommError& e) {
    throw CommError(tagged(e), e.code());
  } catch (const Error& e) {
    throw Error(tagged(e));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(tagged(e));
  } catch (const std::out_of_range& e) {
    throw std::out_of_range(tagged(e));
  } catch (const std::logic_error& e) {
    throw std::logic_error(tagged(e));
  } catch (const std::exception& e) {
    throw std::runtime_error(tagged(e));
  }
}

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadWorldState> world, std::shared_ptr<Group> group, int rank)
      : world_(std::move(world)), group_(std::move(group)), rank_(rank) {
    const std::lock_guard lock(world_->mutex);
    ++world_->live;
  }
  ThreadCommunicator(const ThreadCommunicator&) = delete;
  ThreadCommunicator& operator=(const ThreadCommunicator&) = delete;
  ~ThreadCommunicator() override {
    const std::lock_guard lock(world_->mutex);
    --world_->live;
  }

  [[nodiscard]] int size() const noexcept override { return group_->size; }
  [[nodiscard]] int rank() const noexcept override { return rank_; }
  [[nodiscard]] std::string_view backend() const noexcept override { return "thread"; }
  [[nodiscard]] std::unique_ptr<Communicator> self() const override {
    return std::make_unique<ThreadCommunicator>(world_, world_->make_group(1), 0);
  }

 private:
  [[nodiscard]] std::unique_ptr<Communicator> do_split(int colour, int key, int size,
                                                       const CommOptions&) const override {
    std::shared_ptr<Group> child;
    int child_rank = -1;
    meet({.call = "split", .colour = colour, .key = key}, [&](Group::Meeting& meeting) {
      if (meeting.children.empty()) form_children(meeting);
      child = meeting.children[static_cast<std::size_t>(rank_)];
      child_rank = meeting.child_ranks[static_cast<std::size_t>(rank_)];
    });
    if (!child) return nullptr;
    if (size > 0 && (child->size != size || child_rank != key)) {
      throw CommError(fmt::format("split_checked on rank {}: colour {} gave a child of {} members with this rank at "
                                  "{}, but {} members with it at {} were expected (ranks disagree on the colours)",
                                  rank_, colour, child->size, child_rank, size, key),
                      -1);
    }
    return std::make_unique<ThreadCommunicator>(world_, std::move(child), child_rank);
  }

  [[nodiscard]] std::unique_ptr<Communicator> do_dup(const CommOptions&) const override {
    std::shared_ptr<Group> copy;
    meet({.call = "dup"}, [&](Group::Meeting& meeting) {
      if (meeting.children.empty()) {
        meeting.children.assign(meeting.parts.size(), world_->make_group(size()));
      }
      copy = meeting.children[static_cast<std::size_t>(rank_)];
    });
    return std::make_unique<ThreadCommunicator>(world_, std::move(copy), rank_);
  }

  void do_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override {
    meet({.call = fmt::format("all_reduce({} x {}, {})", count, to_string(type), to_string(op)),
          .data = copy_of(send, count * size_of(type))},
         [&](Group::Meeting& meeting) { reduce_parts(meeting, 0, count, type, op, recv); });
  }

  void do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const override {
    const std::size_t bytes = count * size_of(type);
    meet({.call = fmt::format("all_to_all({} x {})", count, to_string(type)),
          .data = copy_of(send, bytes * static_cast<std::size_t>(size()))},
         [&](Group::Meeting& meeting) {
           for (std::size_t i = 0; i < meeting.parts.size(); ++i) {
             copy_bytes(static_cast<std::byte*>(recv) + i * bytes, meeting.parts[i]->data.data() + mine() * bytes,
                        bytes);
           }
         });
  }

  void do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                       std::span<const std::size_t> send_offsets, void* recv, std::span<const std::size_t> recv_counts,
                       std::span<const std::size_t> recv_offsets, DataType type) const override {
    const std::size_t element = size_of(type);
    const std::size_t total = send_offsets.back() + send_counts.back();
    meet({.call = fmt::format("all_to_all_v({})", to_string(type)),
          .data = copy_of(send, total * element),
          .counts = {send_counts.begin(), send_counts.end()},
          .offsets = {send_offsets.begin(), send_offsets.end()}},
         [&](Group::Meeting& meeting) {
           for (std::size_t i = 0; i < meeting.parts.size(); ++i) {
             const Group::Part& sender = *meeting.parts[i];
             if (sender.counts[mine()] != recv_counts[i]) {
               throw CommError(fmt::format("all_to_all_v on rank {}: rank {} sends {} elements but {} are expected",
                                           rank_, i, sender.counts[mine()], recv_counts[i]),
                               -1);
             }
             copy_bytes(static_cast<std::byte*>(recv) + recv_offsets[i] * element,
                        sender.data.data() + sender.offsets[mine()] * element, recv_counts[i] * element);
           }
         });
  }

  void do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const override {
    const std::size_t bytes = count * size_of(type);
    meet({.call = fmt::format("all_gather({} x {})", count, to_string(type)), .data = copy_of(send, bytes)},
         [&](Group::Meeting& meeting) {
           for (std::size_t i = 0; i < meeting.parts.size(); ++i) {
             copy_bytes(static_cast<std::byte*>(recv) + i * bytes, meeting.parts[i]->data.data(), bytes);
           }
         });
  }

  void do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op) const override {
    const std::size_t bytes = count * size_of(type);
    meet({.call = fmt::format("reduce_scatter({} x {}, {})", count, to_string(type), to_string(op)),
          .data = copy_of(send, bytes * static_cast<std::size_t>(size()))},
         [&](Group::Meeting& meeting) { reduce_parts(meeting, mine() * bytes, count, type, op, recv); });
  }

  void do_broadcast(void* buffer, std::size_t count, DataType type, int root) const override {
    const std::size_t bytes = count * size_of(type);
    meet({.call = fmt::format("broadcast({} x {}, root {})", count, to_string(type), root),
          .data = rank_ == root ? copy_of(buffer, bytes) : std::vector<std::byte>{}},
         [&](Group::Meeting& meeting) {
           if (rank_ != root) copy_bytes(buffer, meeting.parts[static_cast<std::size_t>(root)]->data.data(), bytes);
         });
  }

  void do_send(const void* buffer, std::size_t count, DataType type, int peer) const override {
    world_->record_operation("send");
    const std::lock_guard lock(group_->mutex);
    throw_if_broken("send");
    // Buffered: the message is copied, so a send never waits and the buffer is free at once.
    group_->mail[{rank_, peer}].push_back({type, count, copy_of(buffer, count * size_of(type))});
    group_->changed.notify_all();
  }

  void do_recv(void* buffer, std::size_t count, DataType type, int peer) const override {
    world_->record_operation("recv");
    std::unique_lock lock(group_->mutex);
    const std::string call = fmt::format("recv from rank {}", peer);
    throw_if_broken(call);
    auto& queue = group_->mail[{peer, rank_}];
    if (!group_->changed.wait_until(lock, deadline(), [&] { return !queue.empty() || !group_->broken.empty(); })) {
      time_out(lock, call, fmt::format("rank {}", peer));
    }
    if (queue.empty()) throw_if_broken(call);
    const Group::Message message = std::move(queue.front());
    queue.pop_front();
    if (message.type != type || message.count != count) {
      throw CommError(fmt::format("recv on rank {}: {} x {} expected from rank {}, which sent {} x {}", rank_, count,
                                  to_string(type), peer, message.count, to_string(message.type)),
                      -1);
    }
    copy_bytes(buffer, message.data.data(), message.data.size());
  }

  void do_barrier() const override {
    meet({.call = "barrier()"}, [](Group::Meeting&) {});
  }

  // Threads simulate ranks of any machines: nodes unknown (empty).
  [[nodiscard]] std::vector<int> do_nodes() const override { return {}; }

  void do_abort() const noexcept override {
    const std::lock_guard lock(group_->mutex);
    if (group_->broken.empty()) group_->broken = fmt::format("rank {} aborted the communicator", rank_);
    group_->changed.notify_all();
  }

  // Posts the caller's part of its next operation on this communicator, waits until
  // every member posted theirs, checks that they all called the same, and calls
  // finish(meeting) under the group's lock.
  template <class Finish>
  void meet(Group::Part part, Finish finish) const {
    const std::string call = part.call;
    world_->record_operation(call);
    std::unique_lock lock(group_->mutex);
    throw_if_broken(call);
    const std::uint64_t id = next_++;
    Group::Meeting& meeting = group_->meetings[id];
    meeting.parts.resize(static_cast<std::size_t>(size()));
    meeting.parts[mine()] = std::move(part);
    if (++meeting.arrived == size()) group_->changed.notify_all();
    const bool complete = group_->changed.wait_until(
        lock, deadline(), [&] { return meeting.arrived == size() || !group_->broken.empty(); });
    if (meeting.arrived != size()) {
      if (!complete) time_out(lock, call, missing(meeting));
      throw_if_broken(call);
    }
    const auto leave = [&] {
      if (++meeting.left == size()) group_->meetings.erase(id);
    };
    try {
      for (std::size_t i = 1; i < meeting.parts.size(); ++i) {
        if (meeting.parts[i]->call != meeting.parts[0]->call) {
          throw ConfigMismatch(
              fmt::format("operation {} of a thread communicator of {} ranks: rank 0 called {} but rank {} called {}",
                          id, size(), meeting.parts[0]->call, i, meeting.parts[i]->call));
        }
      }
      finish(meeting);
    } catch (...) {
      leave();
      throw;
    }
    leave();
  }

  // The children of a split, members of one colour ordered by key, ties by rank here.
  void form_children(Group::Meeting& meeting) const {
    std::map<int, std::vector<std::size_t>> members;  // by colour, in rank order
    for (std::size_t i = 0; i < meeting.parts.size(); ++i) {
      if (meeting.parts[i]->colour != kNoColour) members[meeting.parts[i]->colour].push_back(i);
    }
    meeting.children.resize(meeting.parts.size());
    meeting.child_ranks.assign(meeting.parts.size(), -1);
    for (auto& [colour, ranks] : members) {
      std::ranges::stable_sort(ranks, {}, [&](std::size_t i) { return meeting.parts[i]->key; });
      const auto child = world_->make_group(static_cast<int>(ranks.size()));
      for (std::size_t position = 0; position < ranks.size(); ++position) {
        meeting.children[ranks[position]] = child;
        meeting.child_ranks[ranks[position]] = static_cast<int>(position);
      }
    }
  }

  void throw_if_broken(std::string_view call) const {
    if (!group_->broken.empty()) {
      throw CommError(
          fmt::format("{} on rank {} of a thread communicator of {} ranks: {}", call, rank_, size(), group_->broken),
          -1);
    }
  }

  // The operation cannot complete any more: every member's later operations fail too,
  // as after an NCCL timeout.
  [[noreturn]] void time_out(std::unique_lock<std::mutex>& lock, std::string_view call,
                             std::string_view waited_for) const {
    const std::string why = fmt::format(
        "{} timed out after {} ms on a thread communicator of {} ranks: rank {} waited "
        "for {}",
        call, world_->timeout.count(), size(), rank_, waited_for);
    if (group_->broken.empty()) group_->broken = why;
    group_->changed.notify_all();
    lock.unlock();
    abort();
    throw Timeout(why);
  }

  [[nodiscard]] static std::string missing(const Group::Meeting& meeting) {
    std::string ranks;
    for (std::size_t i = 0; i < meeting.parts.size(); ++i) {
      if (!meeting.parts[i]) ranks += fmt::format("{}{}", ranks.empty() ? "rank " : ", ", i);
    }
    return ranks;
  }

  [[nodiscard]] std::size_t mine() const noexcept { return static_cast<std::size_t>(rank_); }
  [[nodiscard]] std::chrono::steady_clock::time_point deadline() const {
    return std::chrono::steady_clock::now() + world_->timeout;
  }

  std::shared_ptr<ThreadWorldState> world_;
  std::shared_ptr<Group> group_;
  int rank_;
  // Operations of one communicator never run concurrently, so only its thread uses it.
  mutable std::uint64_t next_ = 0;
};

}  // namespace

ThreadWorld::ThreadWorld(int ranks, ThreadWorldOptions options) : size_(ranks) {
  if (ranks < 1) throw ConfigError(fmt::format("a thread world of {} ranks: the size must be at least 1", ranks));
  if (options.timeout.count() <= 0) {
    throw ConfigError(
        fmt::format("a thread world with a timeout of {} ms: the timeout must be positive", options.timeout.count()));
  }
  state_ = std::make_shared<ThreadWorldState>(ranks, options.timeout);
}

ThreadWorld::~ThreadWorld() = default;

void ThreadWorld::run(const std::function<void(const Communicator& world)>& body) {
  const auto world = state_->make_group(size_);
  std::mutex mutex;
  std::exception_ptr first;
  int first_rank = -1;
  {
    std::vector<std::jthread> threads;
    threads.reserve(static_cast<std::size_t>(size_));
    for (int rank = 0; rank < size_; ++rank) {
      threads.emplace_back([&, rank] {
        try {
          const ThreadCommunicator communicator(state_, world, rank);
          body(communicator);
        } catch (...) {
          const std::exception_ptr error = std::current_exception();
          {
            const std::lock_guard lock(mutex);
            if (!first) {
              first = error;
              first_rank = rank;
            }
          }
          state_->break_every_group(fmt::format("rank {} ended with an exception: {}", rank, what_of(error)));
        }
      });
    }
  }
  if (first) rethrow_on_rank(first, first_rank);
}

void ThreadWorld::fail_operation(std::optional<int> n) {
  const std::lock_guard lock(state_->mutex);
  state_->fail_at = n;
}

int ThreadWorld::operation_count() const {
  const std::lock_guard lock(state_->mutex);
  return state_->operations;
}

int ThreadWorld::live_communicators() const {
  const std::lock_guard lock(state_->mutex);
  return state_->live;
}

}  // namespace pcx::testing
