#pragma once
// Overflow-checked arithmetic shared by the pure layers.

#include <optional>

namespace pcx::detail {

/// a * b, or nothing if the product does not fit in an int.
[[nodiscard]] inline std::optional<int> checked_mul(int a, int b) noexcept {
  int product = 0;
  if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
  return product;
}

}  // namespace pcx::detail
