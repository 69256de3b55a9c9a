#include "elementwise.hpp"

#include <algorithm>
#include <type_traits>

namespace pcx::detail {
namespace {

template <class T>
constexpr bool kHalf = std::is_same_v<T, float16> || std::is_same_v<T, bfloat16>;

template <class T>
T combine(T a, T b, ReduceOp op) noexcept {
  if constexpr (kHalf<T>) {
    return T(combine(static_cast<float>(a), static_cast<float>(b), op));
  } else {
    switch (op) {
      case ReduceOp::prod: return static_cast<T>(a * b);
      case ReduceOp::min: return std::min(a, b);
      case ReduceOp::max: return std::max(a, b);
      case ReduceOp::sum:
      case ReduceOp::avg: break;
    }
    return static_cast<T>(a + b);
  }
}

}  // namespace

void accumulate(void* accumulator, const void* operand, std::size_t count, DataType type, ReduceOp op) noexcept {
  visit_type(type, [&](auto zero) {
    using T = decltype(zero);
    auto* out = static_cast<T*>(accumulator);
    const auto* in = static_cast<const T*>(operand);
    for (std::size_t i = 0; i < count; ++i) out[i] = combine(out[i], in[i], op);
  });
}

void finish_average(void* sum, std::size_t count, DataType type, int members) noexcept {
  visit_type(type, [&](auto zero) {
    using T = decltype(zero);
    auto* values = static_cast<T*>(sum);
    for (std::size_t i = 0; i < count; ++i) {
      if constexpr (kHalf<T>) {
        values[i] = T(static_cast<float>(values[i]) / static_cast<float>(members));
      } else {
        values[i] = static_cast<T>(values[i] / static_cast<T>(members));
      }
    }
  });
}

}  // namespace pcx::detail
