#pragma once
// Element values in the tests of collectives, for every element type, 16-bit floats
// included (which convert through float only).

#include <type_traits>

#include "pcx/half.hpp"

namespace pcx::test {

template <class T>
inline constexpr bool kHalf = std::is_same_v<T, float16> || std::is_same_v<T, bfloat16>;

/// @p value as a double, which holds every value of every element type here exactly.
template <class T>
double as_double(T value) {
  if constexpr (kHalf<T>) {
    return static_cast<double>(static_cast<float>(value));
  } else {
    return static_cast<double>(value);
  }
}

/// The element of type T nearest to @p value.
template <class T>
T make(double value) {
  if constexpr (kHalf<T>) {
    return T(static_cast<float>(value));
  } else {
    return static_cast<T>(value);
  }
}

}  // namespace pcx::test
