// SPDX-License-Identifier: MIT
// Codecs of dtype.h. Written for exactness, not speed: hot paths dequantize once at load or use
// lookup tables built from these functions.
#include "common/dtype.h"

#include <cmath>

namespace v4rt {

namespace {
struct NameEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr NameEntry kNames[] = {
    {DType::kF32, "F32", 4},         {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},
    {DType::kF8E4M3, "F8_E4M3", 1},  {DType::kF8E8M0, "F8_E8M0", 1}, {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},           {DType::kI32, "I32", 4},        {DType::kI64, "I64", 8},
    {DType::kF64, "F64", 8},         {DType::kBool, "BOOL", 1},      {DType::kFP4, "FP4", 1},
};
}  // namespace

size_t dtype_size(DType dtype) {
  for (const auto& e : kNames)
    if (e.dtype == dtype) return e.size;
  return 0;
}

std::string_view dtype_name(DType dtype) {
  for (const auto& e : kNames)
    if (e.dtype == dtype) return e.name;
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  for (const auto& e : kNames) {
    if (e.name == name && e.dtype != DType::kFP4) {
      *out = e.dtype;
      return true;
    }
  }
  return false;
}

float e4m3_to_f32(uint8_t code) {
  const int sign = code >> 7, exp = (code >> 3) & 0xf, man = code & 0x7;
  if (exp == 0xf && man == 0x7) return NAN;
  float v = exp == 0 ? std::ldexp(float(man), -9)                    // subnormal: m/8 * 2^-6
                     : std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
  return sign ? -v : v;
}

uint8_t f32_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;  // saturate (max finite 1.75 * 2^8)
  if (a < std::ldexp(1.0f, -10)) {      // below half the smallest subnormal 2^-9 (or a tie at it)
    return a > std::ldexp(1.0f, -10) ? (sign | 1) : sign;
  }
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): unbiased exponent of the leading bit = e - 1
  int unb = e - 1;
  if (unb < -6) unb = -6;  // subnormal range shares the 2^-6 exponent with 3 fraction bits
  const float quantum = std::ldexp(1.0f, unb - 3);
  float q = std::nearbyint(a / quantum);  // default rounding mode is to nearest even
  float r = q * quantum;
  if (r >= 448.0f) return sign | 0x7e;
  // Re-encode r exactly.
  if (r < std::ldexp(1.0f, -6)) return sign | uint8_t(std::lround(r / std::ldexp(1.0f, -9)));
  int e2;
  float m2 = std::frexp(r, &e2);  // r = m2 * 2^e2
  int exp_field = (e2 - 1) + 7;
  int man_field = int(std::lround((m2 * 2.0f - 1.0f) * 8.0f));
  return sign | uint8_t(exp_field << 3) | uint8_t(man_field);
}

float e8m0_to_f32(uint8_t code) {
  if (code == 0xff) return NAN;
  return std::ldexp(1.0f, int(code) - 127);
}

uint8_t f32_to_e8m0(float pow2) {
  int e;
  std::frexp(pow2, &e);
  int code = (e - 1) + 127;
  if (code < 0) code = 0;
  if (code > 254) code = 254;
  return uint8_t(code);
}

namespace {
constexpr float kFp4Grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
}

float fp4_to_f32(uint8_t code) {
  float v = kFp4Grid[code & 7];
  return (code & 8) ? -v : v;
}

uint8_t f32_to_fp4(float f) {
  if (std::isnan(f)) return 0;
  const uint8_t sign = std::signbit(f) ? 8 : 0;
  float a = std::fabs(f);
  if (a >= 6.0f) return sign | 7;
  // Find the nearest grid point; on a tie pick the even code (codes 0,2,4,6 have even mantissa).
  uint8_t best = 0;
  for (uint8_t c = 1; c < 8; ++c) {
    float d_best = std::fabs(a - kFp4Grid[best]), d = std::fabs(a - kFp4Grid[c]);
    if (d < d_best || (d == d_best && (c & 1) == 0)) best = c;
  }
  if (best == 0) return 0;  // -0 encodes as +0, as the reference's sign rule does
  return sign | best;
}

}  // namespace v4rt
