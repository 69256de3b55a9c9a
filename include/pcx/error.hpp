#pragma once
/// @file error.hpp
/// @brief The exceptions pcx throws. Every one derives from pcx::Error.

#include <stdexcept>
#include <string>

namespace pcx {

/// Base of every exception pcx throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A configuration breaks a rule (a size out of range, a divisibility rule, an
/// overflow). The message names the values and the rule.
class ConfigError : public Error {
 public:
  using Error::Error;
};

/// Ranks disagree on their configuration; every rank throws the same one.
class ConfigMismatch : public Error {
 public:
  using Error::Error;
};

/// A group that this context or topology does not have was asked for.
class GroupNotFound : public Error {
 public:
  using Error::Error;
};

/// A communication library (MPI, NCCL, CUDA) returned an error.
class CommError : public Error {
 public:
  /// @param message text naming the call and the library's own error text
  /// @param code the library's return code
  CommError(const std::string& message, int code) : Error(message), code_(code) {}
  /// The library's return code.
  [[nodiscard]] int code() const noexcept { return code_; }

 private:
  int code_;
};

/// An operation did not finish before its deadline.
class Timeout : public Error {
 public:
  using Error::Error;
};

}  // namespace pcx
