// Element arithmetic of NCCL's reductions for every ncclDataType_t. Integers wrap as on a
// GPU; the 16- and 8-bit floating-point types are computed in float and rounded back to
// nearest even, the 8-bit ones saturating to their largest finite value as CUDA's
// __nv_fp8 conversions do by default (__NV_SATFINITE).
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "emulator.hpp"

namespace pcxemu {
namespace {

// A small floating-point format: exponent and mantissa bits, bias, and whether the
// all-ones exponent means infinity and NaN (IEEE) or only NaN with an all-ones mantissa.
struct Format {
  int exponent_bits;
  int mantissa_bits;
  int bias;
  bool ieee;
  bool saturate;

  [[nodiscard]] std::uint32_t max_exponent() const { return (1U << exponent_bits) - 1; }
  [[nodiscard]] std::uint32_t mantissa_mask() const { return (1U << mantissa_bits) - 1; }
  [[nodiscard]] std::uint32_t largest_finite() const {
    return ieee ? ((max_exponent() - 1) << mantissa_bits) | mantissa_mask()
                : (max_exponent() << mantissa_bits) | (mantissa_mask() - 1);
  }
  [[nodiscard]] std::uint32_t sign_bit() const { return 1U << (exponent_bits + mantissa_bits); }
};

constexpr Format kHalf{5, 10, 15, true, false};
constexpr Format kBfloat16{8, 7, 127, true, false};
constexpr Format kE4m3{4, 3, 7, false, true};
constexpr Format kE5m2{5, 2, 15, true, true};

double decode(std::uint32_t code, const Format& f) {
  const bool negative = (code & f.sign_bit()) != 0;
  const std::uint32_t exponent = (code >> f.mantissa_bits) & f.max_exponent();
  const std::uint32_t mantissa = code & f.mantissa_mask();
  double value = 0;
  if (f.ieee && exponent == f.max_exponent()) {
    value = mantissa != 0 ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (!f.ieee && exponent == f.max_exponent() && mantissa == f.mantissa_mask()) {
    value = std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    value = std::ldexp(mantissa, 1 - f.bias - f.mantissa_bits);
  } else {
    value = std::ldexp(mantissa + (1U << f.mantissa_bits), static_cast<int>(exponent) - f.bias - f.mantissa_bits);
  }
  return negative ? -value : value;
}

std::uint32_t encode(double x, const Format& f) {
  const std::uint32_t sign = std::signbit(x) ? f.sign_bit() : 0;
  if (std::isnan(x)) return (f.max_exponent() << f.mantissa_bits) | f.mantissa_mask();
  const double a = std::fabs(x);
  const std::uint32_t overflow = f.saturate ? f.largest_finite() : f.max_exponent() << f.mantissa_bits;
  if (std::isinf(a)) return sign | overflow;
  if (a == 0) return sign;
  int e = 0;
  std::frexp(a, &e);
  --e;  // a = m * 2^e with m in [1, 2)
  std::uint32_t code = 0;
  if (e < 1 - f.bias) {  // subnormal; rounding up to the smallest normal carries into the exponent
    code = static_cast<std::uint32_t>(std::nearbyint(std::ldexp(a, f.bias - 1 + f.mantissa_bits)));
  } else {
    const auto scaled = static_cast<std::uint32_t>(std::nearbyint(std::ldexp(a, f.mantissa_bits - e)));
    const double biased = e + f.bias;
    if (biased > f.max_exponent()) return sign | overflow;
    code = (static_cast<std::uint32_t>(biased) << f.mantissa_bits) + (scaled - (1U << f.mantissa_bits));
  }
  return sign | (code > f.largest_finite() ? overflow : code);
}

template <class T>
T combine(T a, T b, ncclRedOp_t op) {
  if constexpr (std::is_integral_v<T>) {
    // Signed overflow wraps on a GPU; computed unsigned here to stay defined.
    using U = std::make_unsigned_t<T>;
    switch (op) {
      case ncclProd: return static_cast<T>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b)));
      case ncclMax: return a > b ? a : b;
      case ncclMin: return a < b ? a : b;
      default: return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
    }
  } else {
    switch (op) {
      case ncclProd: return a * b;
      case ncclMax: return std::fmax(a, b);
      case ncclMin: return std::fmin(a, b);
      default: return a + b;
    }
  }
}

template <class T>
void reduce_as(void* accumulator, const void* operand, std::size_t count, ncclRedOp_t op) {
  for (std::size_t i = 0; i < count; ++i) {
    T a;
    T b;
    std::memcpy(&a, static_cast<const std::byte*>(accumulator) + i * sizeof(T), sizeof(T));
    std::memcpy(&b, static_cast<const std::byte*>(operand) + i * sizeof(T), sizeof(T));
    const T c = combine(a, b, op);
    std::memcpy(static_cast<std::byte*>(accumulator) + i * sizeof(T), &c, sizeof(T));
  }
}

template <class Code>
void reduce_small(void* accumulator, const void* operand, std::size_t count, ncclRedOp_t op, const Format& f) {
  for (std::size_t i = 0; i < count; ++i) {
    Code a;
    Code b;
    std::memcpy(&a, static_cast<const std::byte*>(accumulator) + i * sizeof(Code), sizeof(Code));
    std::memcpy(&b, static_cast<const std::byte*>(operand) + i * sizeof(Code), sizeof(Code));
    const auto c = static_cast<Code>(encode(combine(static_cast<float>(decode(a, f)), static_cast<float>(decode(b, f)), op), f));
    std::memcpy(static_cast<std::byte*>(accumulator) + i * sizeof(Code), &c, sizeof(Code));
  }
}

template <class T>
void divide_as(void* values, std::size_t count, int n) {
  for (std::size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, static_cast<const std::byte*>(values) + i * sizeof(T), sizeof(T));
    if constexpr (std::is_signed_v<T>) {
      v = static_cast<T>(static_cast<long long>(v) / n);
    } else {
      v = static_cast<T>(static_cast<unsigned long long>(v) / static_cast<unsigned long long>(n));
    }
    std::memcpy(static_cast<std::byte*>(values) + i * sizeof(T), &v, sizeof(T));
  }
}

template <class T>
void premultiply_as(void* values, std::size_t count, int n) {
  const T scale = static_cast<T>(1.0 / n);
  for (std::size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, static_cast<const std::byte*>(values) + i * sizeof(T), sizeof(T));
    v = v * scale;
    std::memcpy(static_cast<std::byte*>(values) + i * sizeof(T), &v, sizeof(T));
  }
}

template <class Code>
void premultiply_small(void* values, std::size_t count, int n, const Format& f) {
  const auto scale = static_cast<float>(decode(encode(1.0 / n, f), f));
  for (std::size_t i = 0; i < count; ++i) {
    Code v;
    std::memcpy(&v, static_cast<const std::byte*>(values) + i * sizeof(Code), sizeof(Code));
    v = static_cast<Code>(encode(static_cast<float>(decode(v, f)) * scale, f));
    std::memcpy(static_cast<std::byte*>(values) + i * sizeof(Code), &v, sizeof(Code));
  }
}

// Calls `visit` with a value of the C++ type of `type` (for the native types) or with the
// code type and format (for the small floating-point types).
template <class Native, class Small>
void dispatch(ncclDataType_t type, Native&& native, Small&& small) {
  switch (type) {
    case ncclInt8: return native(std::int8_t{});
    case ncclUint8: return native(std::uint8_t{});
    case ncclInt32: return native(std::int32_t{});
    case ncclUint32: return native(std::uint32_t{});
    case ncclInt64: return native(std::int64_t{});
    case ncclUint64: return native(std::uint64_t{});
    case ncclFloat32: return native(float{});
    case ncclFloat64: return native(double{});
    case ncclFloat16: return small(std::uint16_t{}, kHalf);
    case ncclBfloat16: return small(std::uint16_t{}, kBfloat16);
    case ncclFloat8e4m3: return small(std::uint8_t{}, kE4m3);
    case ncclFloat8e5m2: return small(std::uint8_t{}, kE5m2);
    default: return;
  }
}

}  // namespace

std::size_t type_size(ncclDataType_t type) {
  std::size_t size = 0;
  dispatch(
      type, [&](auto value) { size = sizeof(value); }, [&](auto code, const Format&) { size = sizeof(code); });
  return size;
}

void reduce(void* accumulator, const void* operand, std::size_t count, ncclDataType_t type, ncclRedOp_t op) {
  dispatch(
      type, [&](auto value) { reduce_as<decltype(value)>(accumulator, operand, count, op); },
      [&](auto code, const Format& f) { reduce_small<decltype(code)>(accumulator, operand, count, op, f); });
}

bool is_floating(ncclDataType_t type) {
  bool floating = false;
  dispatch(
      type, [&](auto value) { floating = std::is_floating_point_v<decltype(value)>; },
      [&](auto, const Format&) { floating = true; });
  return floating;
}

void premultiply(void* values, std::size_t count, ncclDataType_t type, int n) {
  dispatch(
      type,
      [&](auto value) {
        if constexpr (std::is_floating_point_v<decltype(value)>) premultiply_as<decltype(value)>(values, count, n);
      },
      [&](auto code, const Format& f) { premultiply_small<decltype(code)>(values, count, n, f); });
}

void divide(void* values, std::size_t count, ncclDataType_t type, int n) {
  dispatch(
      type,
      [&](auto value) {
        if constexpr (std::is_integral_v<decltype(value)>) divide_as<decltype(value)>(values, count, n);
      },
      [](auto, const Format&) {});
}

}  // namespace pcxemu
