#pragma once
/// @file agreement.hpp
/// @brief The agreement protocol: how ranks check, in one collective, that they are at the
///        same step with the same values, and leave it together with the same error.

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <string_view>

#include "pcx/communicator.hpp"

namespace pcx {

/// The step of a program an agreement checks. Ranks at different steps (one building a
/// GridMpu, another a ParallelContext) are told apart and named.
enum class AgreementStage : std::int64_t {
  context = 1,  ///< ParallelContext's construction: its configuration and MPU sizes.
  grid_mpu,     ///< GridMpu's construction: its sizes.
  nccl_world,   ///< NcclCommunicator::create_world: every rank's device and options.
  flags,        ///< A program's command line, before any other communication.
  rebuild,      ///< pcx::rebuild: the ranks the survivors left out.
};

/// "context", "grid_mpu", "nccl_world", "flags", "rebuild"; "unknown" for another value.
[[nodiscard]] std::string_view to_string(AgreementStage stage) noexcept;

/// One value every rank must hold alike, with the name a disagreement is reported by.
struct AgreedValue {
  /// @param what what the value is, e.g. "tensor parallel size"
  /// @param mine this rank's value, or nullopt where this rank cannot tell (an MPU that
  ///        threw): then it is left out of the comparison
  /// @param is_digest whether the value is a digest of a list: a disagreement then reads
  ///        "differ" rather than a meaningless range
  AgreedValue(std::string_view what, std::optional<std::int64_t> mine, bool is_digest = false)
      : name(what), value(mine), digest(is_digest) {}
  std::string_view name;              ///< What the value is.
  std::optional<std::int64_t> value;  ///< This rank's value, if it has one.
  bool digest;                        ///< Whether a disagreement reads "differs".
};

/// A digest of @p text for an AgreedValue of a list or a string (64-bit FNV-1a with its
/// top bit cleared, so never INT64_MIN): the same text gives the same digest on every rank.
[[nodiscard]] std::int64_t digest_of(std::string_view text) noexcept;

/// How many values one agreement compares at most.
inline constexpr std::size_t kMaxAgreedValues = 48;

/// The int64 elements of every agreement message: 4 header slots and kMaxAgreedValues
/// values, each with its complement. An unrelated all-reduce of another size never
/// reaches the check: the backend itself fails on it (MPI) or waits past its deadline.
inline constexpr std::size_t kAgreementMessageSize = 2 * (4 + kMaxAgreedValues);

/// Checks, in one all-reduce over @p comm, that every rank is at @p stage with the same
/// @p values, and that no rank failed before it.
///
/// Every agreement sends the same fixed-size message, which starts with a protocol tag
/// and the stage: two different checks that meet, or a check that meets an unrelated
/// collective of the same size, are reported rather than misread, and never truncate.
/// Whatever can fail on one rank must happen before the call and be passed as
/// @p failure (any exception type), so that the ranks leave together: then the first
/// failing rank's message is broadcast (one more collective, which every rank joins)
/// and every rank throws the same error.
///
/// Checked in this order, each the same on every rank:
/// @throws ConfigMismatch if a rank is at another stage or is not in an agreement at
///         all (naming what each side was doing), or compares another number of values;
///         ConfigMismatch naming every value whose known values differ (and, when a rank
///         also failed, that rank and its message); ConfigError, CommError, Timeout or
///         Error, the kind of the first failing rank's exception (GroupNotFound counts
///         as ConfigError, anything not from pcx as Error), with the text
///         "rank R: <its message>", when a rank passed a failure; CommError or Timeout
///         from @p comm itself; ConfigError, before any communication, if @p values has
///         more than kMaxAgreedValues entries or a value is INT64_MIN.
void agree(const Communicator& comm, AgreementStage stage, std::span<const AgreedValue> values,
           std::exception_ptr failure = nullptr);

}  // namespace pcx
