#pragma once
// The command line of the samples that use CLI11.

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "pcx/error.hpp"
#include "run_sample.hpp"

namespace pcx::samples {

/// Parses @p args (the arguments after the program's name) with @p app.
/// @throws HelpRequested for --help; ConfigError with CLI11's text for a bad flag.
inline void parse_flags(CLI::App& app, const std::vector<std::string>& args) {
  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // as CLI11 takes them
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    throw HelpRequested(app.help());
  } catch (const CLI::ParseError& e) {
    throw ConfigError(e.what());
  }
}

}  // namespace pcx::samples
