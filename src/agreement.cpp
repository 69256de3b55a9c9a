#include "pcx/agreement.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "pcx/error.hpp"

namespace pcx {
namespace {

// "pcx-agr1": the first value of every agreement message.
constexpr std::int64_t kTag = 0x7063782d61677231;

// What a failing rank threw, as every rank will throw it.
enum class Failure : std::int64_t { error = 1, config, comm, timeout };

// The message: a header, then the values, padded with zeros to a fixed size. It is sent
// with the complement of every slot after it, so that one MAX reduction gives each slot's
// range: the maximum of ~v is the complement of the minimum of v. A value a rank does
// not know is INT64_MIN in both halves, which no maximum notices.
// The failure slot holds -8 r + kind for a rank r that failed, so that its maximum is the
// first failing rank with the kind of its failure in the low three bits.
enum Slot : std::size_t { kTagSlot, kStageSlot, kCountSlot, kFailureSlot, kHeader };
constexpr std::size_t kSlots = kHeader + kMaxAgreedValues;
static_assert(2 * kSlots == kAgreementMessageSize);

// The longest failure text carried to the other ranks.
constexpr std::size_t kTextBytes = 1024;

Failure kind_of(const std::exception_ptr& failure) noexcept {
  try {
    std::rethrow_exception(failure);
  } catch (const ConfigError&) {
    return Failure::config;
  } catch (const GroupNotFound&) {
    return Failure::config;
  } catch (const Timeout&) {
    return Failure::timeout;
  } catch (const CommError&) {
    return Failure::comm;
  } catch (...) {
    return Failure::error;
  }
}

std::string text_of(const std::exception_ptr& failure) {
  try {
    std::rethrow_exception(failure);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that does not derive from std::exception";
  }
}

[[noreturn]] void throw_failure(Failure kind, const std::string& text) {
  switch (kind) {
    case Failure::config: throw ConfigError(text);
    case Failure::comm: throw CommError(text, -1);
    case Failure::timeout: throw Timeout(text);
    case Failure::error: break;
  }
  throw Error(text);
}

// What the ranks compare at a stage, for messages.
std::string_view subject(AgreementStage stage) noexcept {
  switch (stage) {
    case AgreementStage::context: return "configuration";
    case AgreementStage::grid_mpu: return "GridMpu sizes";
    case AgreementStage::nccl_world: return "NCCL world";
    case AgreementStage::flags: return "command line";
    case AgreementStage::rebuild: return "survivors";
  }
  return "values";
}

std::string stage_name(std::int64_t stage) {
  const std::string_view name = to_string(static_cast<AgreementStage>(stage));
  return name == "unknown" ? fmt::format("stage {}", stage) : fmt::format("{}", name);
}

// The first failing rank's text, on every rank: it is known to all from the reduction, so
// every rank joins this broadcast.
std::string shared_text(const Communicator& comm, int failing_rank, const std::exception_ptr& failure) {
  std::array<char, kTextBytes> text{};
  if (comm.rank() == failing_rank) {
    const std::string mine = text_of(failure);
    std::copy_n(mine.begin(), std::min(mine.size(), text.size() - 1), text.begin());
  }
  comm.broadcast(text.data(), text.size(), DataType::int8, failing_rank);
  text.back() = '\0';
  return text.data();
}

}  // namespace

std::int64_t digest_of(std::string_view text) noexcept {
  std::uint64_t hash = 1469598103934665603ULL;  // wraps by design
  for (const char c : text) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return static_cast<std::int64_t>(hash >> 1);
}

std::string_view to_string(AgreementStage stage) noexcept {
  switch (stage) {
    case AgreementStage::context: return "context";
    case AgreementStage::grid_mpu: return "grid_mpu";
    case AgreementStage::nccl_world: return "nccl_world";
    case AgreementStage::flags: return "flags";
    case AgreementStage::rebuild: return "rebuild";
  }
  return "unknown";
}

void agree(const Communicator& comm, AgreementStage stage, std::span<const AgreedValue> values,
           std::exception_ptr failure) {
  if (values.size() > kMaxAgreedValues) {
    throw ConfigError(fmt::format("an agreement compares at most {} values, not {}", kMaxAgreedValues, values.size()));
  }
  std::array<std::int64_t, 2 * kSlots> message{};
  message[kTagSlot] = kTag;
  message[kStageSlot] = static_cast<std::int64_t>(stage);
  message[kCountSlot] = static_cast<std::int64_t>(values.size());
  for (std::size_t i = 0; i < kSlots; ++i) message[kSlots + i] = ~message[i];
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::optional<std::int64_t> value = values[i].value;
    if (value == INT64_MIN) {
      throw ConfigError(
          fmt::format("agreed value \"{}\" is INT64_MIN, which stands for an unknown value", values[i].name));
    }
    message[kHeader + i] = value.value_or(INT64_MIN);
    message[kSlots + kHeader + i] = value ? ~*value : INT64_MIN;
  }
  message[kFailureSlot] =
      failure ? -8 * std::int64_t{comm.rank()} + static_cast<std::int64_t>(kind_of(failure)) : INT64_MIN;
  message[kSlots + kFailureSlot] = INT64_MIN;  // only its maximum is read
  comm.all_reduce(message.data(), message.data(), message.size(), DataType::int64, ReduceOp::max);

  const auto high = [&](std::size_t slot) { return message[slot]; };
  const auto low = [&](std::size_t slot) { return ~message[kSlots + slot]; };
  const auto alike = [&](std::size_t slot) { return high(slot) == low(slot); };

  if (!alike(kTagSlot) || high(kTagSlot) != kTag) {
    throw ConfigMismatch(fmt::format(
        "ranks are not all in a pcx agreement: this rank checks its {} against the others, but the collective it "
        "met carries {:#x} to {:#x} where every agreement carries {:#x} (ranks call collectives in different orders, "
        "or run different programs)",
        subject(stage), low(kTagSlot), high(kTagSlot), kTag));
  }
  if (!alike(kStageSlot)) {
    throw ConfigMismatch(fmt::format("ranks are at different steps: some check their {}, others their {}",
                                     stage_name(low(kStageSlot)), stage_name(high(kStageSlot))));
  }
  if (!alike(kCountSlot)) {
    throw ConfigMismatch(fmt::format("ranks compare {} to {} values in their {} agreement (different versions?)",
                                     low(kCountSlot), high(kCountSlot), to_string(stage)));
  }
  // Known values first: a rank that failed because it disagrees is reported as a
  // disagreement, which is the cause.
  std::vector<std::string> disagreements;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::size_t slot = kHeader + i;
    if (high(slot) == INT64_MIN || alike(slot)) continue;  // nobody knew it, or all agree
    disagreements.push_back(values[i].digest
                                ? fmt::format("the {} differ", values[i].name)
                                : fmt::format("{} ranges from {} to {}", values[i].name, low(slot), high(slot)));
  }
  const bool failed = high(kFailureSlot) != INT64_MIN;
  const std::int64_t kind = failed ? high(kFailureSlot) & 7 : 0;
  const auto failing_rank = failed ? static_cast<int>((kind - high(kFailureSlot)) / 8) : -1;
  const std::string text = failed ? shared_text(comm, failing_rank, failure) : std::string();
  if (!disagreements.empty()) {
    throw ConfigMismatch(fmt::format("ranks disagree on the {}: {}{}", subject(stage), fmt::join(disagreements, "; "),
                                     failed ? fmt::format(" (and rank {} failed: {})", failing_rank, text) : ""));
  }
  if (failed) throw_failure(static_cast<Failure>(kind), fmt::format("rank {}: {}", failing_rank, text));
}

}  // namespace pcx
