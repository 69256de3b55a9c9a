#include "pcx/flight_recorder.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <utility>

#include "pcx/error.hpp"

namespace pcx {

namespace {

// A JSON string: quotes, backslashes and control characters escaped.
std::string quoted(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + '"';
}

std::int64_t microseconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

std::string_view to_string(OperationRecord::State state) noexcept {
  switch (state) {
    case OperationRecord::State::running: return "running";
    case OperationRecord::State::completed: return "completed";
    case OperationRecord::State::failed: return "failed";
    case OperationRecord::State::timed_out: return "timed_out";
  }
  return "unknown";
}

FlightRecorder::FlightRecorder(std::string name, std::vector<int> members, std::size_t capacity,
                               std::shared_ptr<spdlog::logger> logger)
    : name_(std::move(name)), members_(std::move(members)), logger_(std::move(logger)) {
  if (capacity == 0) throw ConfigError("a flight recorder keeps at least 1 operation, not 0");
  ring_.resize(capacity);
}

std::uint64_t FlightRecorder::begin(std::string_view operation, std::size_t count) {
  const auto now = std::chrono::steady_clock::now();
  const std::lock_guard lock(mutex_);
  const std::uint64_t sequence = next_++;
  ring_[(sequence - 1) % ring_.size()] = {sequence, operation, count, OperationRecord::State::running, now, now};
  return sequence;
}

void FlightRecorder::end(std::uint64_t sequence, OperationRecord::State state) noexcept {
  const auto now = std::chrono::steady_clock::now();
  {
    const std::lock_guard lock(mutex_);
    OperationRecord& record = ring_[(sequence - 1) % ring_.size()];
    if (record.sequence != sequence) return;  // overwritten by later operations
    record.state = state;
    record.end = now;
  }
  if (state == OperationRecord::State::timed_out && logger_) {
    try {
      logger_->error("pcx: flight record: {}", json());
    } catch (...) {  // logging must not replace the Timeout being thrown
    }
  }
}

std::vector<OperationRecord> FlightRecorder::records() const {
  const std::lock_guard lock(mutex_);
  std::vector<OperationRecord> kept;
  const std::uint64_t first = next_ > ring_.size() ? next_ - ring_.size() : 1;
  for (std::uint64_t sequence = first; sequence < next_; ++sequence)
    kept.push_back(ring_[(sequence - 1) % ring_.size()]);
  return kept;
}

std::string FlightRecorder::json() const {
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::string> operations;
  for (const OperationRecord& r : records()) {
    const auto until = r.state == OperationRecord::State::running ? now : r.end;
    operations.push_back(fmt::format(
        R"({{"sequence": {}, "operation": {}, "count": {}, "state": "{}", "start_us": {}, "duration_us": {}}})",
        r.sequence, quoted(r.operation), r.count, to_string(r.state), microseconds(r.start.time_since_epoch()),
        microseconds(until - r.start)));
  }
  return fmt::format(R"({{"communicator": {}, "members": [{}], "operations": [{}]}})", quoted(name_),
                     fmt::join(members_, ", "), fmt::join(operations, ", "));
}

}  // namespace pcx
