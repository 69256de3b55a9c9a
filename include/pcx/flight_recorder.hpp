#pragma once
/// @file flight_recorder.hpp
/// @brief The last operations of a communicator, for finding where a job hangs.

#include <spdlog/logger.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace pcx {

/// One operation of a communicator, as a FlightRecorder keeps it.
struct OperationRecord {
  /// Where the operation is.
  enum class State {
    running,    ///< Called, not returned.
    completed,  ///< Returned.
    failed,     ///< Threw CommError, ConfigError or another error.
    timed_out,  ///< Threw Timeout: a peer did not come within the deadline.
  };
  std::uint64_t sequence = 0;                   ///< 1 for the communicator's first recorded operation.
  std::string_view operation;                   ///< "all_reduce", "split", ...
  std::size_t count = 0;                        ///< Elements of the caller's buffer (0 for management operations).
  State state = State::running;                 ///< Where it is now.
  std::chrono::steady_clock::time_point start;  ///< When it was called.
  std::chrono::steady_clock::time_point end;    ///< When it returned or threw; start while running.
};

/// "running", "completed", "failed", "timed_out".
[[nodiscard]] std::string_view to_string(OperationRecord::State state) noexcept;

/// The last operations of one communicator, in a ring buffer: what every rank was doing
/// when a job hangs (PyTorch calls it a flight recorder). Communicator::record_operations()
/// attaches one; ParallelContext does for each communicator it owns when
/// ContextOptions::flight_records is above 0. Recording costs a lock and two clock reads
/// per operation; a communicator without a recorder pays one pointer test.
///
/// Thread-safe: records() and json() may be called from any thread while operations run.
class FlightRecorder {
 public:
  /// @param name the communicator's name, e.g. "pcx:expert_parallel/4"
  /// @param members the global ranks of its members, in its rank order
  /// @param capacity how many operations to keep, at least 1
  /// @param logger where a Timeout's record goes (error level); null: nowhere
  /// @throws ConfigError if @p capacity is 0.
  FlightRecorder(std::string name, std::vector<int> members, std::size_t capacity,
                 std::shared_ptr<spdlog::logger> logger = nullptr);

  /// Records the start of @p operation on @p count elements; returns its sequence number.
  std::uint64_t begin(std::string_view operation, std::size_t count);
  /// Records the end of operation @p sequence; a Timeout also logs json().
  void end(std::uint64_t sequence, OperationRecord::State state) noexcept;

  /// The kept operations, oldest first.
  [[nodiscard]] std::vector<OperationRecord> records() const;
  /// The communicator's name.
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// The communicator's members (global ranks).
  [[nodiscard]] const std::vector<int>& members() const noexcept { return members_; }
  /// The record as one JSON object: {"communicator": name, "members": [...],
  /// "operations": [{"sequence", "operation", "count", "state", "start_us", "duration_us"}]},
  /// times in microseconds of the steady clock (a duration while running is the time so far).
  [[nodiscard]] std::string json() const;

 private:
  const std::string name_;
  const std::vector<int> members_;
  const std::shared_ptr<spdlog::logger> logger_;
  mutable std::mutex mutex_;
  std::vector<OperationRecord> ring_;  // slot (sequence - 1) % capacity
  std::uint64_t next_ = 1;
};

}  // namespace pcx
