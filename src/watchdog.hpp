#pragma once
// The watchdog thread of a ParallelContext (ContextOptions::watchdog).

#include <spdlog/logger.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include "pcx/communicator.hpp"

namespace pcx::detail {

/// Watches the flight records of some communicators: once an operation has run longer
/// than the limit, logs which communicator, operation and members, with the record, and
/// aborts every communicator of the context. Trips once. The communicators must outlive it.
class Watchdog {
 public:
  Watchdog(std::chrono::milliseconds limit, std::vector<const Communicator*> watched,
           std::vector<const Communicator*> context, std::shared_ptr<spdlog::logger> logger, int rank);
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  /// Stops the thread and waits for it.
  ~Watchdog();

 private:
  void watch(const std::stop_token& stop);
  // Whether an operation ran past the limit; then logs it and aborts the context.
  bool check() const;

  const std::chrono::milliseconds limit_;
  const std::vector<const Communicator*> watched_;
  const std::vector<const Communicator*> context_;  // aborted on a trip, newest first
  const std::shared_ptr<spdlog::logger> logger_;
  const int rank_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  std::jthread thread_;  // last: starts once everything it uses is set
};

}  // namespace pcx::detail
