#pragma once
/// @file thread_world.hpp
/// @brief A world of ranks on threads of this process whose collectives really exchange
///        data: model code runs on several ranks in one test, with no MPI launch.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "pcx/communicator.hpp"

namespace pcx::testing {

/// @cond
namespace detail {
struct ThreadWorldState;
}
/// @endcond

/// Settings of a ThreadWorld.
struct ThreadWorldOptions {
  /// How long a rank waits in an operation for the other members before it throws
  /// Timeout. Keep it short in tests that expect a timeout.
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};
};

/// A world of ranks that are threads of this process. run() starts one thread per rank,
/// each with its world communicator (backend() "thread"), whose operations exchange the
/// members' buffers: every operation of pcx::Communicator works as on a real backend
/// (splits with MPI's meaning, reductions in rank order so that every member gets the
/// same bits, send/recv in order per pair of members, self()).
///
/// Nothing waits forever: an operation whose members do not all arrive within the
/// timeout throws Timeout on the ranks that wait; members that call different
/// operations (or the same with other counts, types, reductions or roots) at the same
/// point all throw ConfigMismatch naming both calls; abort() of one member wakes every
/// member waiting on that communicator with CommError; and when a rank's body throws,
/// the operations its peers wait in end with CommError.
///
/// Boost.Test's assertions are not thread-safe: let each rank write what it saw into a
/// vector indexed by its rank and check the vector after run().
class ThreadWorld {
 public:
  /// A world of @p ranks ranks.
  /// @throws ConfigError if @p ranks < 1 or the timeout is not positive.
  explicit ThreadWorld(int ranks, ThreadWorldOptions options = {});
  ThreadWorld(const ThreadWorld&) = delete;
  ThreadWorld& operator=(const ThreadWorld&) = delete;
  /// Releases the world; communicators still alive keep what they use.
  ~ThreadWorld();

  /// Number of ranks.
  [[nodiscard]] int size() const noexcept { return size_; }

  /// Runs @p body on size() threads, each with the world communicator of its rank, and
  /// returns once every thread ended. Each run has a fresh world communicator.
  /// @throws the first exception a body threw (first in time, so the cause rather than
  ///         the errors of the peers it left waiting), with "rank r: " before its
  ///         message: pcx's exceptions, std::invalid_argument, std::out_of_range,
  ///         std::logic_error and std::runtime_error keep their type; any other
  ///         std::exception becomes std::runtime_error, and anything else is rethrown
  ///         as it is.
  void run(const std::function<void(const Communicator& world)>& body);

  /// Makes the @p n-th operation (counting from 0, over splits, dups, collectives and
  /// point-to-point calls of every rank and every communicator of this world, groups of
  /// one member included) throw CommError on the rank that makes it, to test error
  /// paths. std::nullopt disarms it.
  void fail_operation(std::optional<int> n);
  /// Number of operations so far, over every run.
  [[nodiscard]] int operation_count() const;
  /// Number of communicators of this world alive now (world communicators, children,
  /// dups and self()): 0 after run() unless a body kept one.
  [[nodiscard]] int live_communicators() const;

 private:
  int size_;
  std::shared_ptr<detail::ThreadWorldState> state_;
};

}  // namespace pcx::testing
