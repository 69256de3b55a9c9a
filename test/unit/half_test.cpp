// pcx::float16 and pcx::bfloat16 on values worked out by hand from the formats: binary16
// is 1 sign, 5 exponent (bias 15) and 10 fraction bits; bfloat16 the upper half of a float.
// Where CUDA's headers are present, half_cuda_test.cpp also compares every encoding with
// CUDA's own conversions.
#define BOOST_TEST_MODULE half
#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "pcx/half.hpp"

using pcx::bfloat16;
using pcx::float16;

namespace {

std::uint16_t bits_of(float value) { return float16(value).bits; }
std::uint16_t bf_bits_of(float value) { return bfloat16(value).bits; }

}  // namespace

BOOST_AUTO_TEST_CASE(float16_encodes_landmark_values) {
  BOOST_TEST(bits_of(1.0F) == 0x3C00U);
  BOOST_TEST(bits_of(-2.0F) == 0xC000U);
  BOOST_TEST(bits_of(0.5F) == 0x3800U);
  BOOST_TEST(bits_of(0.0F) == 0x0000U);
  BOOST_TEST(bits_of(-0.0F) == 0x8000U);
  BOOST_TEST(bits_of(65504.0F) == 0x7BFFU);                  // the largest finite
  BOOST_TEST(bits_of(std::ldexp(1.0F, -14)) == 0x0400U);     // the smallest normal
  BOOST_TEST(bits_of(std::ldexp(1.0F, -24)) == 0x0001U);     // the smallest subnormal
  BOOST_TEST(bits_of(std::ldexp(1023.0F, -24)) == 0x03FFU);  // the largest subnormal
  BOOST_TEST(bits_of(std::numeric_limits<float>::infinity()) == 0x7C00U);
  BOOST_TEST(bits_of(-std::numeric_limits<float>::infinity()) == 0xFC00U);
}

BOOST_AUTO_TEST_CASE(float16_rounds_to_nearest_ties_to_even) {
  // 65504 + 16 lies halfway to 65536, which is beyond the format: the tie goes to the
  // even neighbour, 2^16, which is infinity; anything below stays at the largest finite.
  BOOST_TEST(bits_of(65520.0F) == 0x7C00U);
  BOOST_TEST(bits_of(65519.0F) == 0x7BFFU);
  // Above 1 the step is 2^-10: 1 + 2^-11 is a tie that goes down to the even 1.0, and
  // 1 + 3 * 2^-11 a tie that goes up to the even 1 + 2^-9.
  BOOST_TEST(bits_of(1.0F + std::ldexp(1.0F, -11)) == 0x3C00U);
  BOOST_TEST(bits_of(1.0F + 3 * std::ldexp(1.0F, -11)) == 0x3C02U);
  BOOST_TEST(bits_of(1.0F + std::ldexp(1.0F, -11) + std::ldexp(1.0F, -20)) == 0x3C01U);
  // Half the smallest subnormal is a tie with zero (even); a little more rounds up.
  BOOST_TEST(bits_of(std::ldexp(1.0F, -25)) == 0x0000U);
  BOOST_TEST(bits_of(std::ldexp(1.0F, -25) * 1.0001F) == 0x0001U);
  BOOST_TEST(bits_of(std::ldexp(3.0F, -25)) == 0x0002U);
  // The largest subnormal plus half a step carries into the smallest normal.
  BOOST_TEST(bits_of(std::ldexp(1023.5F, -24)) == 0x0400U);
}

BOOST_AUTO_TEST_CASE(float16_decodes_landmark_encodings) {
  BOOST_TEST(static_cast<float>(float16::from_bits(0x3C00)) == 1.0F);
  BOOST_TEST(static_cast<float>(float16::from_bits(0x7BFF)) == 65504.0F);
  BOOST_TEST(static_cast<float>(float16::from_bits(0x0001)) == std::ldexp(1.0F, -24));
  BOOST_TEST(static_cast<float>(float16::from_bits(0x8001)) == -std::ldexp(1.0F, -24));
  BOOST_TEST(static_cast<float>(float16::from_bits(0x3555)) == 1365.0F / 4096.0F);
  BOOST_TEST(std::isinf(static_cast<float>(float16::from_bits(0xFC00))));
  BOOST_TEST(std::isnan(static_cast<float>(float16::from_bits(0x7E00))));
  BOOST_TEST(std::isnan(static_cast<float>(float16::from_bits(0x7C01))));
  BOOST_TEST(std::signbit(static_cast<float>(float16::from_bits(0x8000))));
}

BOOST_AUTO_TEST_CASE(nan_stays_nan_in_both_formats) {
  const float quiet = std::numeric_limits<float>::quiet_NaN();
  const float payload_in_low_bits = std::bit_cast<float>(0x7F800001U);  // lost by a plain shift
  for (const float nan : {quiet, -quiet, payload_in_low_bits}) {
    BOOST_TEST(std::isnan(static_cast<float>(float16(nan))));
    BOOST_TEST(std::isnan(static_cast<float>(bfloat16(nan))));
  }
}

BOOST_AUTO_TEST_CASE(bfloat16_encodes_and_rounds_to_nearest_ties_to_even) {
  BOOST_TEST(bf_bits_of(1.0F) == 0x3F80U);
  BOOST_TEST(bf_bits_of(-2.0F) == 0xC000U);
  BOOST_TEST(bf_bits_of(std::numeric_limits<float>::infinity()) == 0x7F80U);
  // The step above 1 is 2^-7: a tie at 1 + 2^-8 goes down to even, at 1 + 3 * 2^-8 up.
  BOOST_TEST(bf_bits_of(1.0F + std::ldexp(1.0F, -8)) == 0x3F80U);
  BOOST_TEST(bf_bits_of(1.0F + 3 * std::ldexp(1.0F, -8)) == 0x3F82U);
  BOOST_TEST(bf_bits_of(1.0F + std::ldexp(1.0F, -8) + std::ldexp(1.0F, -20)) == 0x3F81U);
  // The largest finite float rounds past the largest finite bfloat16 to infinity.
  BOOST_TEST(bf_bits_of(std::numeric_limits<float>::max()) == 0x7F80U);
  BOOST_TEST(static_cast<float>(bfloat16::from_bits(0x4049)) == 3.140625F);
}

BOOST_AUTO_TEST_CASE(every_finite_encoding_survives_a_round_trip_through_float) {
  for (std::uint32_t code = 0; code <= 0xFFFFU; ++code) {
    const auto bits = static_cast<std::uint16_t>(code);
    const bool half_nan = (bits & 0x7C00U) == 0x7C00U && (bits & 0x03FFU) != 0;
    const bool bf_nan = (bits & 0x7F80U) == 0x7F80U && (bits & 0x007FU) != 0;
    if (!half_nan && float16(static_cast<float>(float16::from_bits(bits))).bits != bits) {
      BOOST_ERROR("float16 " << std::hex << code << " does not survive a round trip");
    }
    if (!bf_nan && bfloat16(static_cast<float>(bfloat16::from_bits(bits))).bits != bits) {
      BOOST_ERROR("bfloat16 " << std::hex << code << " does not survive a round trip");
    }
  }
}
