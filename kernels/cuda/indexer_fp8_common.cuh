// SPDX-License-Identifier: MIT
// What the FP8 wgmma indexer kernels share (indexer_fp8.cu: a prefill chunk, 4 queries per block;
// indexer_fp8_decode.cu: a decode batch, one query per block): the operands they accept, the
// staging of q rows and compact FP4 key rows as e4m3 bytes times a power of two per row, and the
// per-head terms of the accumulator. indexer_fp8.cu's header explains the re-expression and the
// arithmetic; wgmma.cuh the shared-memory operand and accumulator layouts. Included only by .cu
// files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/indexer_args.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda::idxfp8 {

constexpr int kHeads = 64;                  // heads padded to 64 (absent heads: q = 0, w' = 0)
constexpr int kKeys = 64;                   // keys per tile (wgmma M)
constexpr int kMaxDim = 128;
constexpr int kRawLd = 68;                  // bytes per raw FP4 key row (dim 128: 64 code bytes + 4 scales)
constexpr int kKeyBytes = kKeys * kMaxDim;  // 8,192 per e4m3 tile
constexpr int kRawBytes = kKeys * kRawLd;   // 4,352 per raw tile

// Whether the FP8 kernels take part p of `a`: official numerics, head dim 64 or 128, at most 64
// heads, compact FP4 rows of 32-code blocks with the scales after the codes.
inline bool operands_ok(const IdxArgs& a, const IdxPart& p) {
  return a.bf16_arith && a.nh <= kHeads && (a.dim == 64 || a.dim == 128) && p.ckeys.data &&
         p.ckeys.row_bytes <= kRawLd && p.ckeys.block == 32 && p.ckeys.scale_offset == a.dim / 2;
}

__device__ __forceinline__ float pow2f(int e) { return ldexpf(1.0f, e); }

// Stages B: kRows (query, head) rows of q, query t0 + row / kHeads (rows of queries at or past
// t_end, and heads past nh, zero), as e4m3 times Sq, and w' = bf16(w * scale) * Sq per row (0 for
// absent rows). One warp per row, dim / 32 elements per lane; the loads of a warp's next kUnroll
// rows are issued together (a decode block, 16 rows per warp, waits on 4 load latencies, not 16).
template <int kThreads, int kRows, int kUnroll = 1>
__device__ __forceinline__ void stage_q(const IdxArgs& a, const IdxPart& p, int64_t t0, int64_t t_end, uint8_t* qs,
                                        uint16_t* ws) {
  constexpr int kWarps = kThreads / 32;
  static_assert(kRows % (kWarps * kUnroll) == 0, "whole steps of kUnroll rows per warp");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, dim = a.dim, per = dim >> 5;
  for (int row0 = warp; row0 < kRows; row0 += kWarps * kUnroll) {
    float v[kUnroll][4], wv[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int row = row0 + u * kWarps, hl = row % kHeads;
      const int64_t t = t0 + row / kHeads;
      valid[u] = t < t_end && hl < a.nh;
      wv[u] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) v[u][i] = 0.f;
      if (valid[u]) {
        const int64_t col = int64_t(a.h_begin + hl) * dim + lane * per;
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (i < per) v[u][i] = p.q.ld(t, col + i);
        if (lane == 0) wv[u] = p.w.ld(t, a.h_begin + hl);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int row = row0 + u * kWarps;
      float amax = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[u][i]));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      // E: the exponent of amax (normal floats; q rows of subnormals only are taken as 2^-126).
      const int e = amax > 0.f ? max(int((__float_as_uint(amax) >> 23) & 0xff) - 127, -126) : 0;
      const float inv = pow2f(7 - e);
      uint32_t packed = 0;
#pragma unroll
      for (int i = 0; i < 4; i += 2) {
        const __nv_fp8x2_storage_t b2 =
            __nv_cvt_float2_to_fp8x2(make_float2(v[u][i] * inv, v[u][i + 1] * inv), __NV_SATFINITE, __NV_E4M3);
        packed |= uint32_t(b2) << (8 * i);
      }
      uint8_t* dst = qs + core_offset(row, lane * per, dim);
      if (per == 4) *reinterpret_cast<uint32_t*>(dst) = packed;
      else *reinterpret_cast<uint16_t*>(dst) = uint16_t(packed);
      if (lane == 0)
        ws[row] = f32_to_bf16(valid[u] ? round_bf16(round_bf16(wv[u] * a.weight_scale) * pow2f(e - 7)) : 0.f);
    }
  }
}

// Issues the raw compact rows of keys [j0, j0 + kKeys) below jend into `raw` (four threads per
// row, 4-byte cp.async, one commit group per thread).
template <int kThreads>
__device__ __forceinline__ void fetch_raw(const KvRowsDev& ck, int64_t j0, int64_t jend, uint8_t* raw) {
  static_assert((4 * kKeys) % kThreads == 0, "whole rows per pass");
  const int fq = threadIdx.x & 3;
#pragma unroll
  for (int u = 0; u < 4 * kKeys / kThreads; ++u) {
    const int fr = (threadIdx.x >> 2) + u * (kThreads / 4);
    const int64_t j = j0 + fr;
    if (j < jend) {
      const uint8_t* src = ck.row(j);
      const int words = int(ck.row_bytes >> 2);
      for (int w = fq; w < words; w += 4) cp_async4(raw + fr * kRawLd + 4 * w, src + 4 * w);
    }
  }
  cp_async_commit();
}

// Decodes the landed raw rows of keys [j0, j0 + kKeys) to the e4m3 tile `kt` and their Sk to `ks`
// (keys at or past jend: zeros). One thread per (key, 32-code block): block b's codes times
// 2^(6 - (emax - e_b)) by fp4tc::decode_block's byte-permute table (the e4m3 of each magnitude
// times that power of two, the sign or-ed in: the bytes of converting each code's value).
template <int kThreads>
__device__ __forceinline__ void decode_keys(const KvRowsDev& ck, int dim, int64_t j0, int64_t jend, const uint8_t* raw,
                                            uint8_t* kt, float* ks) {
  const int blocks = dim >> 5;
  for (int i = threadIdx.x; i < kKeys * blocks; i += kThreads) {
    const int r = i / blocks, b = i - r * blocks;
    uint32_t out[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
    if (j0 + r < jend) {
      const uint8_t* row = raw + r * kRawLd;
      int emax = 0;
      for (int c = 0; c < blocks; ++c) emax = max(emax, int(row[ck.scale_offset + c]));
      if (b == 0) ks[r] = pow2f(emax - 133);
      const uint32_t* codes = reinterpret_cast<const uint32_t*>(row + b * 16);  // rows are 4-byte aligned
      fp4tc::decode_block(make_uint4(codes[0], codes[1], codes[2], codes[3]), emax - row[ck.scale_offset + b], out);
    } else if (b == 0) {
      ks[r] = 0.f;
    }
    // 32 bytes: two 16-byte core-matrix rows along K.
    *reinterpret_cast<uint4*>(kt + core_offset(r, 32 * b, dim)) = make_uint4(out[0], out[1], out[2], out[3]);
    *reinterpret_cast<uint4*>(kt + core_offset(r, 32 * b + 16, dim)) = make_uint4(out[4], out[5], out[6], out[7]);
  }
}

// The head sums of a warpgroup's m64nN accumulator d (N = 64 kQ: kQ queries of 64 heads) with
// w' pairs wp (this thread's columns 8 i + 2 (l % 4) + {0, 1}): sums[half][q] = the sum over
// query q's heads of bf16(relu(bf16(acc)) * w') for key row 16 w + l / 4 + 8 half, in fp32,
// over the thread's 16 heads in head order, then across its 4-lane quad (every lane of the quad
// holds the quad's sums).
template <int kQ>
__device__ __forceinline__ void head_sums(const float (&d)[32 * kQ], const uint32_t (&wp)[8 * kQ],
                                          float (&sums)[2][kQ]) {
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int q = 0; q < kQ; ++q) sums[half][q] = 0.f;
  const __nv_bfloat162 zero = __float2bfloat162_rn(0.f);
#pragma unroll
  for (int i = 0; i < 8 * kQ; ++i) {
    const __nv_bfloat162 w2 = *reinterpret_cast<const __nv_bfloat162*>(&wp[i]);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      __nv_bfloat162 t2 = __floats2bfloat162_rn(d[4 * i + 2 * half], d[4 * i + 2 * half + 1]);
      t2 = __hmul2(__hmax2(t2, zero), w2);
      const uint32_t u = *reinterpret_cast<const uint32_t*>(&t2);
      sums[half][i >> 3] += __uint_as_float(u << 16);
      sums[half][i >> 3] += __uint_as_float(u & 0xffff0000u);
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      sums[half][q] += __shfl_xor_sync(0xffffffffu, sums[half][q], 1);
      sums[half][q] += __shfl_xor_sync(0xffffffffu, sums[half][q], 2);
    }
}

// head_sums with the sums on the tensor cores: the bf16 terms (the same cvt, relu and product per
// pair of heads) form the A fragments of mma.sync m16n8k16 against a column of bf16 ones, one MMA
// per 16 heads, chained per query in the fp32 accumulator. The wgmma accumulator layout is that
// of the A fragments: rows l / 4 and + 8 of the warp's 16 key rows, columns (heads) 8 i + 2 (l %
// 4) + {0, 1}, so heads 16 c .. 16 c + 15 of query q are accumulator pairs i = 8 q + 2 c and + 1.
// A term times 1 is exact; the tensor cores add the products of an MMA and the running sum in
// fp32 at their own alignment (as the FP8 products above), in place of three fp32 adds per pair and
// the quad's shuffles: some 3 instructions per pair of heads instead of 7, and the epilogue was
// the kernel's issue slots (docs/PERFORMANCE.md, eighteenth run). Every lane of the quad gets the
// sums (the D columns all equal).
template <int kQ>
__device__ __forceinline__ void head_sums_mma(const float (&d)[32 * kQ], const uint32_t (&wp)[8 * kQ],
                                              float (&sums)[2][kQ]) {
  const __nv_bfloat162 zero = __float2bfloat162_rn(0.f);
  constexpr uint32_t kOnes = 0x3f803f80u;  // bf16x2 (1, 1)
  auto term = [&](int i, int half) {
    __nv_bfloat162 t2 = __floats2bfloat162_rn(d[4 * i + 2 * half], d[4 * i + 2 * half + 1]);
    t2 = __hmul2(__hmax2(t2, zero), *reinterpret_cast<const __nv_bfloat162*>(&wp[i]));
    return *reinterpret_cast<const uint32_t*>(&t2);
  };
#pragma unroll
  for (int q = 0; q < kQ; ++q) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int i = 8 * q + 2 * c;
      const uint32_t a[4] = {term(i, 0), term(i, 1), term(i + 1, 0), term(i + 1, 1)};
      mma_bf16_16816(acc, a, kOnes, kOnes);
    }
    sums[0][q] = acc[0];  // row l / 4
    sums[1][q] = acc[2];  // row l / 4 + 8
  }
}

// The key pipeline of both kernels over the block's keys [lo, cend) in tiles of kKeys, with the
// e4m3 tiles double-buffered in kbuf (Sk in ks) and the raw FP4 rows in raw: the raw rows of tiles
// 0 and 1 are fetched around stage() (the kernel's q staging) and tile 0 decoded, then setup()
// (after the block barrier: it may read what stage() wrote); per tile `it`, mma(kt) issues the
// tile's wgmma (committed by the caller's mma) while tile it + 1 is decoded from its landed raw
// rows and the raw rows of tile it + 2 are fetched, then, the MMAs waited on, epilogue(j0, ks_tile)
// reads the accumulators. Every thread of the block calls it.
template <int kThreads, typename Stage, typename Setup, typename Mma, typename Epilogue>
__device__ __forceinline__ void key_tiles(const KvRowsDev& ck, int dim, int64_t lo, int64_t cend, uint8_t* raw,
                                          uint8_t* kbuf, float* ks, Stage stage, Setup setup, Mma mma,
                                          Epilogue epilogue) {
  const int64_t ntiles = (cend - lo + kKeys - 1) / kKeys;
  fetch_raw<kThreads>(ck, lo, cend, raw);
  stage();
  cp_async_wait_all();
  __syncthreads();
  decode_keys<kThreads>(ck, dim, lo, cend, raw, kbuf, ks);
  if (ntiles > 1) fetch_raw<kThreads>(ck, lo + kKeys, cend, raw + kRawBytes);
  setup();
  cp_async_wait_all();
  fence_async_smem();
  __syncthreads();
  for (int64_t it = 0; it < ntiles; ++it) {
    const int64_t j0 = lo + it * kKeys;
    mma(kbuf + (it & 1) * kKeyBytes);
    // Under the MMAs: decode tile it + 1 (landed), fetch the raw rows of tile it + 2.
    if (it + 1 < ntiles) {
      decode_keys<kThreads>(ck, dim, j0 + kKeys, cend, raw + ((it + 1) & 1) * kRawBytes,
                            kbuf + ((it + 1) & 1) * kKeyBytes, ks + ((it + 1) & 1) * kKeys);
      if (it + 2 < ntiles) fetch_raw<kThreads>(ck, j0 + 2 * kKeys, cend, raw + (it & 1) * kRawBytes);
    }
    fence_async_smem();
    wgmma_wait0();
    epilogue(j0, ks + (it & 1) * kKeys);
    cp_async_wait_all();
    __syncthreads();  // tile it + 1 decoded and fenced, the raw rows of tile it + 2 landed
  }
}

}  // namespace v4rt::kernels::cuda::idxfp8
