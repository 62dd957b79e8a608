// SPDX-License-Identifier: MIT
// What the tensor-core FP4 expert kernels share (fp4_gemm_mma.cu, fp4_gemv.cu, fp4_gemm_wgmma.cu,
// fp4_gemm_wgmma_ws.cu): the e2m1 -> e4m3 re-encodes (code * 2^-6 by bit
// moves for the f16 MMAs; code * 2^(6 - d) by a byte-permute table for the e4m3 wgmma), the f16
// 32-block MMA, the device map of row tiles per expert, and the once-per-device kernel attributes.
// Included only by .cu files.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/launch.cuh"

namespace v4rt::kernels::cuda::fp4tc {

// Eight e2m1 codes (one 32-bit word, code j in bits 4j..4j+3) -> e4m3 bytes of value code * 2^-6:
// lo = the even codes (low nibbles), hi = the odd ones (high nibbles), byte i of each from byte i.
__device__ __forceinline__ uint32_t e2m1_lo_to_e4m3(uint32_t w) {
  return ((w << 4) & 0x80808080u) | ((w << 2) & 0x1c1c1c1cu);
}
__device__ __forceinline__ uint32_t e2m1_hi_to_e4m3(uint32_t w) {
  return (w & 0x80808080u) | ((w >> 2) & 0x1c1c1c1cu);
}

// Four e4m3 bytes -> two f16x2 (exact): lo = bytes 0 (low half), 1; hi = bytes 2, 3.
__device__ __forceinline__ void e4m3x4_to_f16x2(uint32_t v, uint32_t& lo, uint32_t& hi) {
  asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(v));
}

// d = a0 b0 + a1 b1 (m16n8k16 f16 x f16 -> f32 twice, from zero): one 32-block.
__device__ __forceinline__ void mma_f16_k32(float (&d)[4], const uint32_t (&a0)[4], const uint32_t (&b0)[2],
                                            const uint32_t (&a1)[4], const uint32_t (&b1)[2]) {
  const float z = 0.f;
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0[0]), "r"(a0[1]), "r"(a0[2]), "r"(a0[3]), "r"(b0[0]), "r"(b0[1]), "f"(z));
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a1[0]), "r"(a1[1]), "r"(a1[2]), "r"(a1[3]), "r"(b1[0]), "r"(b1[1]));
}

// Two e4m3 bytes (low byte = a) of a, b, rounded to nearest (exact for the values used here).
__device__ __forceinline__ uint32_t e4m3x2(float a, float b) {
  return uint32_t(__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3));
}

// 2^e for e in [-149, 127], exact (a subnormal below -126): ldexpf(1, e) by its bits.
__device__ __forceinline__ float exp2_exact(int e) {
  return e >= -126 ? __int_as_float((e + 127) << 23) : __int_as_float(1 << (e + 149));
}

// The byte-permute table of decode_block for a block d binades below its step's largest scale: the
// e4m3 bytes of magnitudes 0, 0.5, 1, 1.5 (tlo) and 2, 3, 4, 6 (thi) times 2^(6 - d). From d =
// kDecodeZeroFrom on every entry is zero (6 x 2^(6 - d) <= 0.375 x 2^-10 rounds to 0 in e4m3), so a
// table of kDecodeTables entries indexed by min(d, kDecodeTables - 1) holds every case.
inline constexpr int kDecodeZeroFrom = 20;
inline constexpr int kDecodeTables = 32;
__device__ __forceinline__ uint2 decode_table(int d) {
  const float f = ldexpf(1.f, max(6 - d, -30));
  return make_uint2(e4m3x2(0.f, 0.5f * f) | (e4m3x2(f, 1.5f * f) << 16),        // magnitudes 0..3
                    e4m3x2(2.f * f, 3.f * f) | (e4m3x2(4.f * f, 6.f * f) << 16));  // magnitudes 4..7
}

// Decodes one channel's 32-block (16 bytes of packed codes, even element in the low nibble) to 32
// e4m3 bytes in input order with table t (decode_table): the 8 magnitudes as e4m3 in two registers,
// indexed by prmt with the codes' three magnitude bits (four codes per prmt), sign bits or-ed in.
__device__ __forceinline__ void decode_block_table(uint4 codes, uint2 t, uint32_t (&out)[8]) {
  const uint32_t u[4] = {codes.x, codes.y, codes.z, codes.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // Sign bits of the even codes (elements 8i + 0, 2, 4, 6) and of the odd ones to bit 7 of
    // bytes 0..3, interleaved to input order as e2m1_lo/hi_to_e4m3's users do.
    const uint32_t ev = (u[i] << 4) & 0x80808080u, od = u[i] & 0x80808080u;
    const uint32_t s0 = __byte_perm(ev, od, 0x5140), s1 = __byte_perm(ev, od, 0x7362);
    // Selector nibble j = code j's magnitude (bit 3 clear: plain byte select).
    const uint32_t m0 = __byte_perm(t.x, t.y, u[i] & 0x7777u);
    const uint32_t m1 = __byte_perm(t.x, t.y, (u[i] >> 16) & 0x7777u);
    out[2 * i] = m0 | s0;
    out[2 * i + 1] = m1 | s1;
  }
}

// decode_block_table with the table of code * 2^(6 - d) computed here.
__device__ __forceinline__ void decode_block(uint4 codes, int d, uint32_t (&out)[8]) {
  decode_block_table(codes, decode_table(d), out);
}

// Output channels n, n + 1 of `row` (n even): bf16 (one 32-bit store when p.n is even and both
// channels fit) or fp32; channels at or past p.n skipped.
__device__ __forceinline__ void store_pair(const Fp4GroupedGemmParams& p, int64_t row, int64_t n, float v0, float v1) {
  if (p.out_f32) {
    if (n < p.n) p.out_f32[row * p.n + n] = v0;
    if (n + 1 < p.n) p.out_f32[row * p.n + n + 1] = v1;
  } else if (n + 1 < p.n && p.n % 2 == 0) {
    const uint32_t packed = uint32_t(f32_to_bf16(v0)) | (uint32_t(f32_to_bf16(v1)) << 16);
    *reinterpret_cast<uint32_t*>(p.out + row * p.n + n) = packed;
  } else {
    if (n < p.n) p.out[row * p.n + n] = f32_to_bf16(v0);
    if (n + 1 < p.n) p.out[row * p.n + n + 1] = f32_to_bf16(v1);
  }
}

// Stores a warpgroup's m64n128 fp32 accumulator (wgmma layout: this thread's rows r0, r0 + 8 of
// the tile, channels n0 + 8 i + c0, + 1) to the output rows from row_begin: bf16 (two per 32-bit
// store where n is even) or fp32; tile rows at or past `rows` and channels at or past n skipped.
__device__ __forceinline__ void store_acc_m64n128(const Fp4GroupedGemmParams& p, const float (&acc)[64],
                                                  int64_t row_begin, int rows, int64_t n0, int r0, int c0) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r0 + 8 * half;
    if (r >= rows) continue;
    const int64_t row = row_begin + r;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int64_t n = n0 + 8 * i + c0;
      store_pair(p, row, n, acc[4 * i + 2 * half], acc[4 * i + 2 * half + 1]);
    }
  }
}

constexpr int kMapThreads = 1024;

// tile_start[g] = BM-row tiles of the groups before g (groups without weights have none);
// tile_start[num_groups] = all tiles. One block, chunks of kMapThreads groups.
template <int BM>
__global__ void __launch_bounds__(kMapThreads) fp4_tile_map_kernel(const int32_t* row_offsets, const uint8_t* const* w,
                                                                   int num_groups, int32_t* tile_start) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ int32_t scan[kMapThreads];
  __shared__ int32_t carry;
  const int tid = threadIdx.x;
  if (tid == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < num_groups; base += kMapThreads) {
    const int g = base + tid;
    int32_t tiles = 0;
    if (g < num_groups && w[g] != nullptr) {
      const int32_t rows = row_offsets[g + 1] - row_offsets[g];
      tiles = rows > 0 ? (rows + BM - 1) / BM : 0;
    }
    scan[tid] = tiles;
    __syncthreads();
    for (int o = 1; o < kMapThreads; o <<= 1) {  // inclusive scan
      const int32_t v = tid >= o ? scan[tid - o] : 0;
      __syncthreads();
      scan[tid] += v;
      __syncthreads();
    }
    if (g < num_groups) tile_start[g] = carry + scan[tid] - tiles;
    __syncthreads();
    if (tid == kMapThreads - 1) carry += scan[kMapThreads - 1];
    __syncthreads();
  }
  if (tid == 0) tile_start[num_groups] = carry;
}

using cuda::set_smem_once;  // launch.cuh

}  // namespace v4rt::kernels::cuda::fp4tc
