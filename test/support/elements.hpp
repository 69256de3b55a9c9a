#pragma once
// Element values in the tests of collectives, for every element type, 16-bit floats
// included (which convert through float only).

#include <array>
#include <type_traits>

#include "pcx/communicator.hpp"
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

/// One reduction of the two values {r + 1, 1 + r % 2} that member r of n contributes, and
/// its two results, from closed forms.
struct ReductionCase {
  ReduceOp op;
  double first;
  double second;
};

/// Every ReduceOp over n members in element type T. Every partial result of every order is
/// exact in every type, except the product of 1..n in bfloat16 (315 = 3 * 5 * 3 * 7 needs
/// 9 significant bits, bfloat16 has 8): see first_is_exact().
template <class T>
std::array<ReductionCase, 5> reduction_cases(int n) {
  double factorial = 1;
  double ones_and_twos = 0;
  for (int q = 0; q < n; ++q) {
    factorial *= q + 1;
    ones_and_twos += 1 + q % 2;
  }
  const double triangle = n * (n + 1) / 2.0;
  // avg is the sum divided by n; integer sums truncate.
  const auto average = [n](double sum) {
    return std::is_integral_v<T> ? static_cast<double>(static_cast<long long>(sum) / n) : sum / n;
  };
  return {{
      {ReduceOp::sum, triangle, ones_and_twos},
      {ReduceOp::prod, factorial, static_cast<double>(1LL << (n / 2))},
      {ReduceOp::min, 1, 1},
      {ReduceOp::max, static_cast<double>(n), n > 1 ? 2.0 : 1.0},
      {ReduceOp::avg, average(triangle), average(ones_and_twos)},
  }};
}

/// Whether the first result of @p c is exact in T (see reduction_cases()).
template <class T>
bool first_is_exact(const ReductionCase& c) {
  return c.op != ReduceOp::prod || !std::is_same_v<T, bfloat16>;
}

}  // namespace pcx::test
