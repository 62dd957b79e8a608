// SPDX-License-Identifier: MIT
// Compact KV row formats: layouts and the host codecs (kv_format.h).
#include "common/kv_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "common/dtype.h"

namespace v4rt {

namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// 2^ceil(log2(v)) for a positive normal fp32 v, by exponent bits (exact).
float pow2_ceil(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffffu) != 0 ? 1 : 0);
  return std::ldexp(1.0f, e);
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Scales and codes of the quantized dims [0, quant_dim): the smallest scale of the official rule
// (spec §2.3: amax floor, power of two) that holds the block's largest value.
bool pack_scaled(const KvRowLayout& l, const float* x, uint8_t* row) {
  const bool fp8 = l.format == KvFormat::kFp8Rope;
  const float qmax = fp8 ? 448.0f : 6.0f;
  const float floor = fp8 ? 1e-4f : 6.0f * std::ldexp(1.0f, -126);
  bool exact = true;
  for (int64_t b = 0; b < l.num_scales(); ++b) {
    const int64_t begin = b * l.block, end = std::min<int64_t>(l.quant_dim, begin + l.block);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = pow2_ceil(std::max(amax, floor) / qmax);
    row[l.scale_offset + b] = f32_to_e8m0(s);
    for (int64_t i = begin; i < end; ++i) {
      const float v = std::clamp(x[i] / s, -qmax, qmax);
      if (fp8) {
        const uint8_t code = f32_to_e4m3(v);
        row[i] = code;
        exact = exact && same_bits(e4m3_to_f32(code) * s, x[i]);
      } else {
        const uint8_t code = f32_to_fp4(v);
        row[i >> 1] = uint8_t((i & 1) ? (row[i >> 1] & 0x0f) | (code << 4) : (row[i >> 1] & 0xf0) | code);
        exact = exact && same_bits(fp4_to_f32(code) * s, x[i]);
      }
    }
  }
  return exact;
}

}  // namespace

const char* kv_format_name(KvFormat format) {
  switch (format) {
    case KvFormat::kPlain: return "plain";
    case KvFormat::kFp8Rope: return "fp8_rope";
    case KvFormat::kFp4: return "fp4";
  }
  return "?";
}

KvRowLayout plain_kv_layout(int64_t dim) {
  KvRowLayout l;
  l.dim = dim;
  return l;
}

KvRowLayout fp8_rope_kv_layout(int64_t dim, int64_t rope_dim) {
  V4RT_REQUIRE(rope_dim >= 0 && rope_dim < dim, "fp8 KV layout: rope dims " << rope_dim << " of " << dim);
  KvRowLayout l;
  l.format = KvFormat::kFp8Rope;
  l.dim = dim;
  l.quant_dim = dim - rope_dim;
  l.block = 64;
  l.rope_offset = l.quant_dim;
  l.scale_offset = l.rope_offset + 2 * rope_dim;
  l.row_bytes = round_up(l.scale_offset + l.num_scales(), 8);
  return l;
}

KvRowLayout fp4_kv_layout(int64_t dim) {
  V4RT_REQUIRE(dim > 0 && dim % 32 == 0, "fp4 KV layout: dim " << dim << " is not a multiple of 32");
  KvRowLayout l;
  l.format = KvFormat::kFp4;
  l.dim = dim;
  l.quant_dim = dim;
  l.block = 32;
  l.scale_offset = dim / 2;
  l.row_bytes = round_up(l.scale_offset + l.num_scales(), 4);
  return l;
}

bool kv_pack_row(const KvRowLayout& l, const float* x, uint8_t* row) {
  CHECK(l.compact()) << "kv_pack_row of a plain layout";
  std::memset(row, 0, size_t(l.row_bytes));
  bool exact = pack_scaled(l, x, row);
  for (int64_t i = l.quant_dim; i < l.dim; ++i) {  // kFp8Rope: the bf16 RoPE dims
    const uint16_t h = f32_to_bf16(x[i]);
    std::memcpy(row + l.rope_offset + 2 * (i - l.quant_dim), &h, 2);
    exact = exact && same_bits(bf16_to_f32(h), x[i]);
  }
  return exact;
}

namespace {

// Code -> value tables of the two codecs (the decode runs per element on the CPU ops' hot path).
struct CodeTables {
  float e4m3[256];
  float fp4[16];
  CodeTables() {
    for (int c = 0; c < 256; ++c) e4m3[c] = e4m3_to_f32(uint8_t(c));
    for (int c = 0; c < 16; ++c) fp4[c] = fp4_to_f32(uint8_t(c));
  }
};
const CodeTables& code_tables() {
  static const CodeTables tables;
  return tables;
}

}  // namespace

void kv_unpack_row(const KvRowLayout& l, const uint8_t* row, float* x) {
  CHECK(l.compact()) << "kv_unpack_row of a plain layout";
  const CodeTables& t = code_tables();
  for (int64_t b = 0; b < l.num_scales(); ++b) {
    const float s = e8m0_to_f32(row[l.scale_offset + b]);
    const int64_t end = std::min<int64_t>(l.quant_dim, (b + 1) * l.block);
    if (l.format == KvFormat::kFp8Rope) {
      for (int64_t i = b * l.block; i < end; ++i) x[i] = t.e4m3[row[i]] * s;
    } else {
      for (int64_t i = b * l.block; i < end; ++i) x[i] = t.fp4[fp4_unpack(row, i)] * s;
    }
  }
  for (int64_t i = l.quant_dim; i < l.dim; ++i) {
    uint16_t h;
    std::memcpy(&h, row + l.rope_offset + 2 * (i - l.quant_dim), 2);
    x[i] = bf16_to_f32(h);
  }
}

}  // namespace v4rt
