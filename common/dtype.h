// SPDX-License-Identifier: MIT
// Element types of checkpoints and activations, and exact codecs for the low-precision ones.
// Every codec here is bit-exact: bf16 and FP8 e4m3 round to nearest even (e4m3 saturates at
// +-448, as the reference's clamp-then-cast does), ue8m0 is a pure power of two, and FP4 e2m1 is
// packed two codes per byte, low nibble = even element (spec/v4-model.md §2.1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace v4rt {

enum class DType : uint8_t {
  kF32, kF16, kBF16, kF8E4M3, kF8E8M0, kI8, kU8, kI32, kI64, kF64, kBool,
  kFP4,  // packed e2m1, two per byte; only as a view type (checkpoints store it as I8)
};

// Bytes per element; kFP4 reports 1 (one byte holds two elements: size shapes in bytes).
size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);            // "F32", "BF16", "F8_E4M3", ... (safetensors names)
bool dtype_from_name(std::string_view name, DType* out);  // false when unknown

// --- bf16 -------------------------------------------------------------------------------------
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// --- FP8 e4m3 (fn: no inf, 0x7f/0xff = NaN, max 448) ------------------------------------------
float e4m3_to_f32(uint8_t code);
uint8_t f32_to_e4m3(float f);  // RNE, saturating to +-448; NaN -> 0x7f
inline float round_e4m3(float f) { return e4m3_to_f32(f32_to_e4m3(f)); }

// --- ue8m0 scale: 2^(s - 127); 0xff is NaN --------------------------------------------------------
float e8m0_to_f32(uint8_t code);
uint8_t f32_to_e8m0(float pow2);  // exact for powers of two in [2^-127, 2^127]

// --- FP4 e2m1: codes 0..7 = 0,0.5,1,1.5,2,3,4,6; bit 3 = sign -------------------------------------
float fp4_to_f32(uint8_t code);        // code in 0..15
uint8_t f32_to_fp4(float f);           // RNE on the e2m1 grid, saturating to +-6
inline float round_fp4(float f) { return fp4_to_f32(f32_to_fp4(f)); }
inline uint8_t fp4_unpack(const uint8_t* packed, int64_t i) {  // element i of a packed row
  uint8_t b = packed[i >> 1];
  return (i & 1) ? uint8_t(b >> 4) : uint8_t(b & 0xf);
}

}  // namespace v4rt
