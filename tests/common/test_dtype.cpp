// SPDX-License-Identifier: MIT
// Codec tests against values computed independently here (bit patterns worked out by hand from
// the format definitions), plus exhaustive round trips.
#include <gtest/gtest.h>

#include <cmath>

#include "common/dtype.h"

namespace v4rt {

TEST(Dtype, Bf16RoundToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly half-way between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is half-way between 1.0078125 (odd mantissa) and 1.015625: rounds up to even.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(bf16_to_f32(0xc040), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(Dtype, E4m3KnownCodes) {
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));    // smallest subnormal
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));    // smallest normal
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_f32(0xb8), -1.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7f)));
  EXPECT_EQ(f32_to_e4m3(1000.0f), 0x7e);                  // saturates
  EXPECT_EQ(f32_to_e4m3(-1000.0f), 0xfe);
  // 1.0625 lies half-way between 1.0 (man 0) and 1.125 (man 1): even mantissa wins.
  EXPECT_EQ(f32_to_e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_e4m3(1.1875f), 0x3a);                  // half-way 1.125/1.25 -> 1.25 (man 2)
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.0f, -10)), 0x00);    // tie with 0 -> 0
  EXPECT_EQ(f32_to_e4m3(std::ldexp(3.0f, -10)), 0x02);    // 1.5 subnormal quanta -> 2
}

TEST(Dtype, E4m3RoundTripEveryCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    float v = e4m3_to_f32(uint8_t(c));
    uint8_t back = f32_to_e4m3(v);
    if (c == 0x80) {
      EXPECT_EQ(back, 0x80);
    }
    else EXPECT_EQ(back, c) << "code " << c << " value " << v;
  }
}

TEST(Dtype, E4m3NearestOnRandomValues) {
  // Brute force: the encoder must pick the nearest finite code (ties: even code).
  uint32_t s = 12345;
  for (int i = 0; i < 20000; ++i) {
    s = s * 1664525u + 1013904223u;
    float x = std::ldexp(float(s >> 8) / float(1 << 24) * 2 - 1, int(s % 24) - 14);
    float best = 0;
    float best_d = INFINITY;
    for (int c = 0; c < 256; ++c) {
      if ((c & 0x7f) == 0x7f) continue;
      float v = e4m3_to_f32(uint8_t(c));
      float d = std::fabs(v - x);
      if (d < best_d || (d == best_d && (c & 1) == 0)) { best_d = d; best = v; }
    }
    if (std::fabs(x) >= 448) best = std::copysign(448.0f, x);
    EXPECT_EQ(round_e4m3(x), best) << x;
  }
}

TEST(Dtype, E8m0) {
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(120), std::ldexp(1.0f, -7));
  EXPECT_EQ(f32_to_e8m0(std::ldexp(1.0f, 5)), 132);
  EXPECT_TRUE(std::isnan(e8m0_to_f32(255)));
}

TEST(Dtype, Fp4TableAndTies) {
  const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) EXPECT_EQ(fp4_to_f32(uint8_t(c)), (c & 8 ? -1 : 1) * grid[c & 7]);
  // Ties to even code (spec §2.3): 2.5->2, 5->4, 0.25->0, 0.75->1, 1.25->1, 3.5->4.
  EXPECT_EQ(round_fp4(2.5f), 2.0f);
  EXPECT_EQ(round_fp4(5.0f), 4.0f);
  EXPECT_EQ(round_fp4(0.25f), 0.0f);
  EXPECT_EQ(round_fp4(0.75f), 1.0f);
  EXPECT_EQ(round_fp4(1.25f), 1.0f);
  EXPECT_EQ(round_fp4(3.5f), 4.0f);
  EXPECT_EQ(round_fp4(-7.0f), -6.0f);
  EXPECT_EQ(f32_to_fp4(-0.1f), 0);  // negative values that round to zero encode +0
  const uint8_t packed[1] = {0xa3};  // low nibble 3 (1.5) = element 0, high nibble 0xa (-1) = element 1
  EXPECT_EQ(fp4_to_f32(fp4_unpack(packed, 0)), 1.5f);
  EXPECT_EQ(fp4_to_f32(fp4_unpack(packed, 1)), -1.0f);
}

TEST(Dtype, Names) {
  DType d;
  ASSERT_TRUE(dtype_from_name("F8_E4M3", &d));
  EXPECT_EQ(d, DType::kF8E4M3);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_FALSE(dtype_from_name("F8_E5M2X", &d));
}

}  // namespace v4rt
