// pcx::float16 and pcx::bfloat16 against CUDA's host-side conversions, the reference for
// buffers that devices read: every encoding decoded, and floats encoded over a sample of
// all bit patterns plus every tie and near-tie between neighbouring encodings. A NaN need
// only stay a NaN (CUDA returns one canonical NaN, pcx keeps the sign).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <bit>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>

#include "pcx/half.hpp"

namespace {

std::uint16_t cuda_half_bits(float value) { return std::bit_cast<std::uint16_t>(__float2half_rn(value)); }

std::uint16_t cuda_bfloat16_bits(float value) {
  return std::bit_cast<std::uint16_t>(__float2bfloat16_rn(value));
}

float cuda_half_value(std::uint16_t bits) { return __half2float(std::bit_cast<__half>(bits)); }

float cuda_bfloat16_value(std::uint16_t bits) { return __bfloat162float(std::bit_cast<__nv_bfloat16>(bits)); }

// Whether float16(value) encodes as CUDA does; reports the first few differences.
bool half_matches(float value, int& reported) {
  const std::uint16_t ours = pcx::float16(value).bits;
  const std::uint16_t theirs = cuda_half_bits(value);
  const bool ok = std::isnan(value) ? std::isnan(static_cast<float>(pcx::float16::from_bits(ours))) : ours == theirs;
  if (!ok && ++reported <= 10) {
    BOOST_ERROR("float16 of float bits " << std::hex << std::bit_cast<std::uint32_t>(value) << ": " << ours
                                         << ", CUDA " << theirs);
  }
  return ok;
}

bool bfloat16_matches(float value, int& reported) {
  const std::uint16_t ours = pcx::bfloat16(value).bits;
  const std::uint16_t theirs = cuda_bfloat16_bits(value);
  const bool ok = std::isnan(value) ? std::isnan(static_cast<float>(pcx::bfloat16::from_bits(ours))) : ours == theirs;
  if (!ok && ++reported <= 10) {
    BOOST_ERROR("bfloat16 of float bits " << std::hex << std::bit_cast<std::uint32_t>(value) << ": " << ours
                                          << ", CUDA " << theirs);
  }
  return ok;
}

// Both NaN, or the same bits (so that -0 and +0 differ).
bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b);
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_encoding_decodes_as_cuda_decodes_it) {
  int mismatches = 0;
  for (std::uint32_t code = 0; code <= 0xFFFFU; ++code) {
    const auto bits = static_cast<std::uint16_t>(code);
    const float ours = static_cast<float>(pcx::float16::from_bits(bits));
    const float bf = static_cast<float>(pcx::bfloat16::from_bits(bits));
    if (!same_float(ours, cuda_half_value(bits)) && ++mismatches <= 10) {
      BOOST_ERROR("float16 " << std::hex << code << " decodes to " << ours << ", CUDA " << cuda_half_value(bits));
    }
    if (!same_float(bf, cuda_bfloat16_value(bits)) && ++mismatches <= 10) {
      BOOST_ERROR("bfloat16 " << std::hex << code << " decodes to " << bf << ", CUDA " << cuda_bfloat16_value(bits));
    }
  }
  BOOST_TEST(mismatches == 0);
}

BOOST_AUTO_TEST_CASE(a_stride_sample_of_all_float_bit_patterns_encodes_as_cuda_encodes_it) {
  // An odd stride reaches every exponent and both signs, and about a million patterns.
  constexpr std::uint64_t kStride = 4093;
  int mismatches = 0;
  for (std::uint64_t pattern = 0; pattern <= 0xFFFFFFFFULL; pattern += kStride) {
    const auto value = std::bit_cast<float>(static_cast<std::uint32_t>(pattern));
    half_matches(value, mismatches);
    bfloat16_matches(value, mismatches);
  }
  BOOST_TEST(mismatches == 0);
}

BOOST_AUTO_TEST_CASE(ties_and_near_ties_between_neighbours_encode_as_cuda_encodes_them) {
  int mismatches = 0;
  // Every midpoint of two neighbouring float16 values is exact in float; one float step
  // either side of it must round away from the tie.
  for (std::uint32_t code = 0; code < 0x7C00U; ++code) {
    const float low = static_cast<float>(pcx::float16::from_bits(static_cast<std::uint16_t>(code)));
    const float high = static_cast<float>(pcx::float16::from_bits(static_cast<std::uint16_t>(code + 1)));
    const float middle = low + (high - low) / 2;
    for (const float value : {middle, std::nextafter(middle, 0.0F), std::nextafter(middle, high), -middle}) {
      half_matches(value, mismatches);
    }
  }
  // bfloat16 keeps the upper 16 bits of a float: the tie is low half 0x8000.
  for (std::uint32_t code = 0; code < 0x7F80U; ++code) {
    for (const std::uint32_t low : {0x7FFFU, 0x8000U, 0x8001U}) {
      const std::uint32_t pattern = (code << 16) | low;
      bfloat16_matches(std::bit_cast<float>(pattern), mismatches);
      bfloat16_matches(std::bit_cast<float>(pattern | 0x80000000U), mismatches);
    }
  }
  BOOST_TEST(mismatches == 0);
}
