#pragma once
/// @file half.hpp
/// @brief 16-bit floating-point elements: IEEE 754 binary16 (`float16`, CUDA's `__half`) and
///        bfloat16 (CUDA's `__nv_bfloat16`), as storage types of the collectives.
///
/// C++20 has no 16-bit floating-point type, so these are bit containers with
/// conversions to and from float (round to nearest, ties to even; NaN stays NaN). Their
/// layout is the device types', so a buffer of them is a buffer of `__half` or
/// `__nv_bfloat16`. Reductions over them are computed in float, one step at a time.

#include <bit>
#include <cstdint>

namespace pcx {

/// IEEE 754 binary16: 1 sign, 5 exponent, 10 fraction bits.
struct float16 {
  std::uint16_t bits = 0;  ///< The encoding.

  /// +0.
  constexpr float16() = default;
  /// The binary16 nearest to @p value (ties to even); beyond the range, infinity.
  constexpr explicit float16(float value) noexcept : bits(encode(value)) {}
  /// The value as a float (exact: every binary16 is a float).
  constexpr explicit operator float() const noexcept { return decode(bits); }
  /// The float16 of encoding @p bits.
  [[nodiscard]] static constexpr float16 from_bits(std::uint16_t bits) noexcept {
    float16 h;
    h.bits = bits;
    return h;
  }
  /// Same encoding (so +0 and -0 differ, and a NaN equals itself).
  friend constexpr bool operator==(float16, float16) = default;

 private:
  static constexpr std::uint16_t encode(float value) noexcept {
    const auto f = std::bit_cast<std::uint32_t>(value);
    const auto sign = static_cast<std::uint16_t>((f >> 16) & 0x8000U);
    const std::uint32_t magnitude = f & 0x7FFFFFFFU;
    if (magnitude > 0x7F800000U) return static_cast<std::uint16_t>(sign | 0x7E00U);  // NaN, kept quiet
    if (magnitude >= 0x47800000U) return static_cast<std::uint16_t>(sign | 0x7C00U);  // >= 65536: infinity
    if (magnitude < 0x38800000U) {
      // Below 2^-14: a subnormal (or zero) in units of 2^-24, rounded to nearest even.
      if (magnitude < 0x33000000U) return sign;  // below 2^-25: rounds to zero
      const std::uint32_t mantissa = (magnitude & 0x7FFFFFU) | 0x800000U;
      // The value is mantissa × 2^(exponent - 150), that is mantissa >> (126 - exponent) units.
      return static_cast<std::uint16_t>(sign | round_shift(mantissa, static_cast<int>(126 - (magnitude >> 23))));
    }
    // Normal: rebias the exponent (127 -> 15) and round 23 fraction bits to 10; a carry
    // out of the fraction correctly bumps the exponent, up to infinity.
    return static_cast<std::uint16_t>(sign | round_shift(magnitude - 0x38000000U, 13));
  }
  // value >> shift, rounded to nearest, ties to even.
  static constexpr std::uint32_t round_shift(std::uint32_t value, int shift) noexcept {
    const std::uint32_t half = 1U << (shift - 1);
    const std::uint32_t rest = value & ((1U << shift) - 1);
    std::uint32_t result = value >> shift;
    if (rest > half || (rest == half && (result & 1U))) ++result;
    return result;
  }
  static constexpr float decode(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000U) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1FU;
    const std::uint32_t fraction = h & 0x3FFU;
    if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000U | (fraction << 13));
    if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (fraction << 13));
    // Subnormal: fraction × 2^-24, exact in float.
    const float magnitude = static_cast<float>(fraction) * 5.9604644775390625e-8F;
    return sign ? -magnitude : magnitude;
  }
};

/// bfloat16: the upper half of a float (1 sign, 8 exponent, 7 fraction bits).
struct bfloat16 {
  std::uint16_t bits = 0;  ///< The encoding.

  /// +0.
  constexpr bfloat16() = default;
  /// The bfloat16 nearest to @p value (ties to even).
  constexpr explicit bfloat16(float value) noexcept : bits(encode(value)) {}
  /// The value as a float (exact).
  constexpr explicit operator float() const noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
  }
  /// The bfloat16 of encoding @p bits.
  [[nodiscard]] static constexpr bfloat16 from_bits(std::uint16_t bits) noexcept {
    bfloat16 b;
    b.bits = bits;
    return b;
  }
  /// Same encoding.
  friend constexpr bool operator==(bfloat16, bfloat16) = default;

 private:
  static constexpr std::uint16_t encode(float value) noexcept {
    const auto f = std::bit_cast<std::uint32_t>(value);
    if ((f & 0x7FFFFFFFU) > 0x7F800000U) return static_cast<std::uint16_t>((f >> 16) | 0x40U);  // NaN, kept quiet
    const std::uint32_t rounding = 0x7FFFU + ((f >> 16) & 1U);
    return static_cast<std::uint16_t>((f + rounding) >> 16);
  }
};

}  // namespace pcx
