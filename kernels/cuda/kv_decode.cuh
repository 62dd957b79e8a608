// SPDX-License-Identifier: MIT
// Device decoding of compact KV rows (common/kv_format.h) as the attention and indexer kernels load
// them: the bytes come from global memory once, the values exist only in registers / shared memory
// (never an F32 copy of the table). Each decoder gives bit for bit what kv_unpack_row gives on the
// host: e4m3 and e2m1 codes times a power-of-two e8m0 scale are exact in fp32 (and in bf16).
// A table is contiguous or paged (KvBlocks): kernels find a row's bytes through row(), the one
// place that knows where rows lie, and hand them to the decoders. Included only by .cu files of
// this folder.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/check.h"
#include "common/kv_format.h"
#include "common/tensor.h"
#include "kernels/cuda/device_math.cuh"

namespace v4rt::kernels::cuda {

// e2m1 code (bit 3 = sign) -> 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives, by bits (no local table).
__device__ __forceinline__ float fp4_to_f32(uint32_t code) {
  const uint32_t e = (code >> 1) & 3u, m = code & 1u;
  const uint32_t mag = e ? ((e + 126u) << 23) | (m << 22) : (m ? 0x3f000000u : 0u);
  return __uint_as_float(mag | ((code & 8u) << 28));
}

// The e4m3 codes in bits 0-7 and 8-15 of `two` times the power of two `s`, as a bf16 pair (the
// first in the low half): exact, so the conversions in hardware (e4m3x2 -> f16x2, fp32 products,
// f32x2 -> bf16x2) give kv_unpack_row's values bit for bit; six instructions a pair.
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t two, float s) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(two & 0xffffu), __NV_E4M3);
  const float2 f = __half22float2(__half2(h));
  return bf16x2_rn(f.x * s, f.y * s);
}

// Column c (c % 8 == 0) of kFp8Rope rows, its offsets in a row resolved once for many rows: the
// 8 e4m3 codes and their scale, or 8 bf16 RoPE dims. `p`: a row's bytes (global memory, or a
// shared-memory copy).
struct Fp8Chunk {
  int data_off = 0, scale_off = 0;
  bool rope = false;
  __device__ __forceinline__ uint4 ld8_bf16(const uint8_t* p) const {
    if (!rope) return decode(*reinterpret_cast<const uint2*>(p + data_off), p[scale_off]);
    const uint2* h = reinterpret_cast<const uint2*>(p + data_off);
    const uint2 a = h[0], b = h[1];
    return make_uint4(a.x, a.y, b.x, b.y);
  }
  // A non-RoPE chunk's 8 e4m3 codes (u) times its e8m0 scale byte, as bf16 pairs.
  __device__ static __forceinline__ uint4 decode(uint2 u, uint8_t scale) {
    const float s = e8m0_to_f32(scale);
    return make_uint4(e4m3x2_to_bf16x2(u.x, s), e4m3x2_to_bf16x2(u.x >> 16, s), e4m3x2_to_bf16x2(u.y, s),
                      e4m3x2_to_bf16x2(u.y >> 16, s));
  }
};

// A table of compact KV rows on the device; empty (data == nullptr) for plain rows.
struct KvRowsDev {
  const uint8_t* data = nullptr;           // contiguous: row r at data + r * row_bytes; paged: the first block
  const uint8_t* const* blocks = nullptr;  // paged: [ceil(rows / 2^block_shift)] block addresses (device memory)
  int64_t row_bytes = 0;
  int quant_dim = 0;                       // kFp8Rope: non-RoPE dims; kFp4: all dims
  int block = 0;                           // quantized elements per scale
  int block_log2 = 0;                      // log2(block): the decoders' scale index c >> block_log2
  int rope_offset = 0;                     // kFp8Rope: byte offset of the bf16 dims
  int scale_offset = 0;                    // byte offset of the e8m0 scales
  int block_shift = 0;                     // paged: log2(rows per block)

  // Paged: row r is row r mod 2^block_shift of block r >> block_shift (one table load, L1-cached).
  __device__ __forceinline__ const uint8_t* row(int64_t r) const {
    if (blocks) return blocks[r >> block_shift] + (r & ((int64_t(1) << block_shift) - 1)) * row_bytes;
    return data + r * row_bytes;
  }

  // The decoders read the bytes `p` of a row (row()), so a kernel reading a row often finds it once.
  // kFp8Rope element c.
  __device__ __forceinline__ float fp8_ld(const uint8_t* p, int c) const {
    if (c < quant_dim) return e4m3_to_f32(p[c]) * e8m0_to_f32(p[scale_offset + (c >> block_log2)]);
    const uint8_t* h = p + rope_offset + 2 * (c - quant_dim);
    return bf16_to_f32(bf16_t(h[0] | (h[1] << 8)));
  }
  // kFp8Rope elements c..c+3 (c % 4 == 0; needs vec4_ok()).
  __device__ __forceinline__ float4 fp8_ld4(const uint8_t* p, int c) const {
    if (c < quant_dim) {
      const uint32_t u = *reinterpret_cast<const uint32_t*>(p + c);
      const float s = e8m0_to_f32(p[scale_offset + (c >> block_log2)]);
      return make_float4(e4m3_to_f32(uint8_t(u)) * s, e4m3_to_f32(uint8_t(u >> 8)) * s,
                         e4m3_to_f32(uint8_t(u >> 16)) * s, e4m3_to_f32(uint8_t(u >> 24)) * s);
    }
    const uint2 u = *reinterpret_cast<const uint2*>(p + rope_offset + 2 * (c - quant_dim));
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                       __uint_as_float(u.y & 0xffff0000u));
  }
  // kFp8Rope elements c..c+7 as bf16 pairs (c % 8 == 0; needs vec8_ok()): exact, an e4m3 code
  // times a power of two has at most 4 significant bits. `p` may be a shared-memory copy of the row.
  __device__ __forceinline__ uint4 fp8_ld8_bf16(const uint8_t* p, int c) const { return fp8_chunk(c).ld8_bf16(p); }
  // Column c of every row (fp8_ld8_bf16 without resolving the offsets per row).
  __device__ __forceinline__ Fp8Chunk fp8_chunk(int c) const {
    Fp8Chunk k;
    k.rope = c >= quant_dim;
    k.data_off = k.rope ? rope_offset + 2 * (c - quant_dim) : c;
    k.scale_off = scale_offset + (c >> block_log2);
    return k;
  }

  // kFp4 elements c..c+31 (c % 32 == 0: one scale block, 16 code bytes; rows 4-byte aligned).
  __device__ __forceinline__ void fp4_ld32(const uint8_t* p, int c, float (&out)[32]) const {
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(p + c / 2);
    const float s = e8m0_to_f32(p[scale_offset + (c >> block_log2)]);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint32_t u = codes[w];
#pragma unroll
      for (int i = 0; i < 8; ++i) out[8 * w + i] = fp4_to_f32((u >> (4 * i)) & 0xfu) * s;
    }
  }
  // kFp4 element c.
  __device__ __forceinline__ float fp4_ld(const uint8_t* p, int c) const {
    return fp4_to_f32((p[c >> 1] >> ((c & 1) * 4)) & 0xfu) * e8m0_to_f32(p[scale_offset + (c >> block_log2)]);
  }

  // Whether fp8_ld4 / fp8_ld8_bf16 may be used: vector groups never straddle the two parts and
  // every row and part starts 8-byte aligned. Paged rows start at a 256-byte aligned block plus a
  // multiple of row_bytes, so the checks on row_bytes and the first block hold for every row.
  bool vec4_ok() const {
    return quant_dim % 4 == 0 && rope_offset % 8 == 0 && row_bytes % 8 == 0 && reinterpret_cast<uintptr_t>(data) % 8 == 0;
  }
  bool vec8_ok() const { return vec4_ok() && quant_dim % 8 == 0; }
};

// Whether the kernels can read `p`: device (or managed) memory of this process.
inline bool device_readable(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();  // a pointer the runtime does not know: not an error of the next launch
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

// Only compact rows are paged: a plain table with a block table is refused (before make_kv_rows,
// which sees compact tables only).
inline void check_kv_paging(const KvRowLayout& layout, const KvBlocks& blocks, const char* what) {
  CHECK(!blocks.paged() || layout.compact()) << what << ": paged rows need a compact layout, the rows are plain";
}

// The device view of a compact table (`view` U8 [rows, layout.row_bytes], data = the first block
// when `blocks` pages it); `what` names it in errors. Plain layouts give an empty KvRowsDev.
// NOTE: that the block table is in device memory is checked in debug builds only (a pointer query
// per part and launch is too dear on the decode path); a host table faults in the kernel.
inline KvRowsDev make_kv_rows(const TensorView& view, const KvRowLayout& layout, const KvBlocks& blocks, int64_t dim,
                              const char* what) {
  KvRowsDev k;
  if (!layout.compact() || !view.data) return k;
  CHECK(view.dtype == DType::kU8 && view.device == Device::kCuda) << what << ": compact rows are U8 on the device";
  CHECK_EQ(layout.dim, dim) << what << ": " << kv_format_name(layout.format) << " rows of " << layout.dim
                            << " dims, the op needs " << dim;
  CHECK(view.ndim == 2 && view.shape[1] == layout.row_bytes && view.stride[0] == layout.row_bytes && view.stride[1] == 1)
      << what << " " << view.shape_str() << ": contiguous rows of " << layout.row_bytes << " bytes";
  k.data = static_cast<const uint8_t*>(view.data);
  k.row_bytes = layout.row_bytes;
  k.quant_dim = int(layout.quant_dim);
  k.block = layout.block;
  CHECK(layout.block > 0 && (layout.block & (layout.block - 1)) == 0)
      << what << ": " << layout.block << " elements per scale, the decoders need a power of two";
  while ((1 << k.block_log2) < k.block) ++k.block_log2;
  k.rope_offset = int(layout.rope_offset);
  k.scale_offset = int(layout.scale_offset);
  if (blocks.paged()) {
    CHECK(blocks.block_shift >= 0 && blocks.block_shift < 31) << what << ": block_shift " << blocks.block_shift;
    CHECK(reinterpret_cast<uintptr_t>(view.data) % 256 == 0)
        << what << ": paged rows: blocks start 256-byte aligned, the first at " << view.data;
    DCHECK(device_readable(blocks.blocks)) << what << ": the block table must be in device memory";
    k.blocks = blocks.blocks;
    k.block_shift = blocks.block_shift;
  }
  return k;
}

}  // namespace v4rt::kernels::cuda
