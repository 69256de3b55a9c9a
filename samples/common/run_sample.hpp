#pragma once
// The main() of the MPI samples: MPI around the sample, its flags agreed over the world
// before anything else is communicated, and one rule for errors that keeps every rank of
// the job in step.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <exception>
#include <iostream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"

namespace pcx::samples {

/// Exit status for bad flags and configurations that break a rule.
inline constexpr int kUsageError = 2;

/// Thrown by a sample's parse() when the command line asks for help: rank 0 prints
/// the text, once every rank has agreed that help was asked for.
class HelpRequested : public std::exception {
 public:
  explicit HelpRequested(std::string text) : text_(std::move(text)) {}
  [[nodiscard]] const char* what() const noexcept override { return "help requested"; }
  [[nodiscard]] const std::string& text() const noexcept { return text_; }

 private:
  std::string text_;
};

/// A digest of @p text for an AgreedValue with digest=true (pcx::digest_of).
inline std::int64_t digest(std::string_view text) noexcept { return pcx::digest_of(text); }

/// A digest of a list of numbers, as digest(std::string_view) of their decimal text.
inline std::int64_t digest(std::span<const int> numbers) { return digest(fmt::format("{}", fmt::join(numbers, ","))); }

/// An MPI sample in three steps.
template <class Options>
struct Sample {
  /// The program's name, which starts its error lines.
  const char* program;
  /// Parses and validates the arguments after the program name; it must not
  /// communicate, and may use the world size. Throws ConfigError for a bad flag,
  /// HelpRequested for --help.
  Options (*parse)(const std::vector<std::string>& args, int world_size);
  /// The options every rank must hold alike. The same number of values for any options:
  /// a rank whose flags failed passes those of default options, marked unknown.
  std::vector<AgreedValue> (*values)(const Options& options);
  /// The sample's body, once every rank holds the same options; returns the exit status.
  int (*run)(const Options& options, const MpiCommunicator& world);
};

/// Runs @p sample on every rank between MPI's initialization and its finalization.
///
/// The flags are parsed on every rank and their outcome agreed (pcx::agree at
/// AgreementStage::flags) before any other communication, so that a bad flag, a flag
/// that differs or --help on some ranks only ends every rank alike instead of leaving
/// the others waiting in a collective. ConfigError and ConfigMismatch, from that
/// agreement or from the sample (a context compares its configuration over the world
/// before it builds anything), arrive on every rank alike: rank 0 prints one line and
/// every rank exits with kUsageError. Any other error may concern this rank only, while
/// the others wait in a collective: it is printed with the rank and the job is aborted.
template <class Options>
int run_sample(int argc, char** argv, const Sample<Options>& sample) {
  std::optional<MpiEnvironment> environment;
  try {
    environment.emplace(&argc, &argv);
  } catch (const Error& e) {
    fmt::print(stderr, "{}: error: {}\n", sample.program, e.what());
    return 1;
  }
  // Declared after `environment`, so released before MPI is finalized.
  std::optional<MpiCommunicator> world;
  int rank = 0;
  try {
    world.emplace(MpiCommunicator::world());
    rank = world->rank();

    std::optional<Options> options;
    std::optional<std::string> help;
    std::exception_ptr failure;
    try {
      options = sample.parse(std::vector<std::string>(argv + 1, argv + argc), world->size());
    } catch (const HelpRequested& request) {
      help = request.text();
    } catch (...) {
      failure = std::current_exception();
    }
    std::vector<AgreedValue> values = sample.values(options.value_or(Options{}));
    if (!options) {
      for (AgreedValue& value : values) value.value = std::nullopt;
    }
    values.emplace_back("whether --help is given", failure ? std::nullopt : std::optional<std::int64_t>(help ? 1 : 0));
    agree(*world, AgreementStage::flags, values, failure);

    if (help) {
      if (rank == 0) std::cout << *help << std::flush;
      return 0;
    }
    return sample.run(*options, *world);
  } catch (const ConfigError& e) {
    if (rank == 0) fmt::print(stderr, "{}: error: {}\n", sample.program, e.what());
    return kUsageError;
  } catch (const ConfigMismatch& e) {
    if (rank == 0) fmt::print(stderr, "{}: error: {}\n", sample.program, e.what());
    return kUsageError;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: error on rank {}: {}\n", sample.program, rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

}  // namespace pcx::samples
