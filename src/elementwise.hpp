#pragma once
// Reductions on host buffers, for the backends that compute them themselves (the fake
// and threaded test worlds, MPI's 16-bit floating-point types).

#include <cstddef>

#include "pcx/communicator.hpp"

namespace pcx::detail {

/// Calls f(T{}) with T the element type of @p type, which must be a DataType.
template <class F>
decltype(auto) visit_type(DataType type, F&& f) {
  switch (type) {
    case DataType::int8: return f(std::int8_t{});
    case DataType::uint8: return f(std::uint8_t{});
    case DataType::int32: return f(std::int32_t{});
    case DataType::uint32: return f(std::uint32_t{});
    case DataType::int64: return f(std::int64_t{});
    case DataType::uint64: return f(std::uint64_t{});
    case DataType::float16: return f(float16{});
    case DataType::bfloat16: return f(bfloat16{});
    case DataType::float32: return f(float{});
    case DataType::float64: break;
  }
  return f(double{});
}

/// accumulator[i] = accumulator[i] op operand[i] for @p count elements; avg accumulates
/// the sum (finish_average() divides). 16-bit floats are combined in float and rounded
/// back at each step, as a device kernel does.
void accumulate(void* accumulator, const void* operand, std::size_t count, DataType type, ReduceOp op) noexcept;

/// Divides a sum of @p members contributions by @p members, for avg (integers
/// truncate).
void finish_average(void* sum, std::size_t count, DataType type, int members) noexcept;

}  // namespace pcx::detail
