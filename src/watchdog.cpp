#include "watchdog.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <utility>

#include "pcx/flight_recorder.hpp"

namespace pcx::detail {

Watchdog::Watchdog(std::chrono::milliseconds limit, std::vector<const Communicator*> watched,
                   std::vector<const Communicator*> context, std::shared_ptr<spdlog::logger> logger, int rank)
    : limit_(limit),
      watched_(std::move(watched)),
      context_(std::move(context)),
      logger_(std::move(logger)),
      rank_(rank),
      thread_([this](const std::stop_token& stop) { watch(stop); }) {}

Watchdog::~Watchdog() {
  thread_.request_stop();
  wake_.notify_all();
}  // thread_ joins

void Watchdog::watch(const std::stop_token& stop) {
  // A quarter of the limit between looks: a trip comes at most 25 % late.
  const auto period = std::clamp(limit_ / 4, std::chrono::milliseconds(1), std::chrono::milliseconds(1000));
  std::unique_lock lock(mutex_);
  while (!stop.stop_requested()) {
    wake_.wait_for(lock, stop, period, [] { return false; });
    if (stop.stop_requested() || check()) return;
  }
}

bool Watchdog::check() const {
  const auto now = std::chrono::steady_clock::now();
  for (const Communicator* comm : watched_) {
    const FlightRecorder* recorder = comm->flight_recorder();
    if (recorder == nullptr || comm->aborted()) continue;
    for (const OperationRecord& record : recorder->records()) {
      if (record.state != OperationRecord::State::running || now - record.start < limit_) continue;
      if (logger_) {
        logger_->error(
            "pcx: watchdog on rank {}: {} on {} (operation {}, {} elements) has run {} ms, past the watchdog's {} ms; "
            "members [{}]; aborting the context",
            rank_, record.operation, recorder->name(), record.sequence, record.count,
            std::chrono::duration_cast<std::chrono::milliseconds>(now - record.start).count(), limit_.count(),
            fmt::join(recorder->members(), ","));
        logger_->error("pcx: flight record: {}", recorder->json());
      }
      for (const Communicator* held : context_) held->abort();
      return true;
    }
  }
  return false;
}

}  // namespace pcx::detail
