// SPDX-License-Identifier: MIT
// Lightning-indexer scores of a prefill chunk on FP8 tensor cores (wgmma), for compact FP4 keys
// under the official numerics (spec §5.5); indexer.cu keeps the bf16 mma.sync kernel, which gives
// the reference's scores bit for bit, and dispatches here unless debug.cuda_indexer_fp8 is off.
//
// Operands. q and the keys hold FP4-quantized values (e2m1 codes times a power of two per block of
// 32). Each (query, head) row of q and each key row is re-expressed as e4m3 bytes times one power of
// two per row: q / Sq with Sq = 2^(E - 7), E the exponent of the row's largest magnitude, and key
// codes times 2^(6 - (emax - e_b)) with Sk = 2^(emax - 133), emax the largest of the row's ue8m0
// block exponents. Both are exact while the row's block exponents span at most 13 (q) or 14 (keys)
// binades: an e2m1 code needs one mantissa bit and e4m3 keeps three down to its subnormal 2^-9.
// After the Hadamard rotation the blocks of a row have like magnitudes; a wider span rounds the
// small block's codes (relative to the row's largest value: below 2^-13).
//
// Arithmetic. dot = Sq Sk acc with acc the e4m3 product on the tensor cores. Powers of two commute
// with every bf16 rounding and with relu, so the reference's term bf16(relu(bf16(dot)) * w) is
// Sk * bf16(relu(bf16(acc)) * w'), with w' = bf16(w * scale) * Sq (a bf16, exact), and the score
// bf16(sum over heads) is bf16(Sk * sum over heads of bf16(relu(bf16(acc)) * w')). Per pair of
// heads: one cvt to bf16x2, a bf16x2 max with zero, a bf16x2 multiply (a correctly rounded product
// of two bf16, as the reference's fp32 product rounded to bf16), two fp32 adds. Two differences
// from the reference, both at the last bit of a bf16 score: acc comes from the tensor cores' FP8
// accumulation (exact for the small integer multiples these operands make unless a dot needs
// more bits than it keeps), and the heads are summed in fp32 per thread in head order over its 16
// heads, then across its 4-lane quad (the reference adds heads 0..63 in order).
//
// Layout. Block = 4 query tokens (heaviest last tokens first) x a span of keys (x, y as the bf16
// kernel), two warpgroups; warpgroup g owns queries 2g, 2g + 1: B = their 2 x 64 (query, head)
// rows of q as e4m3 (N = 128), staged once. Keys stream in tiles of 64 (A, M = 64): raw FP4 rows
// of tile i + 2 by 4-byte cp.async while tile i + 1 is decoded to e4m3 under tile i's wgmma
// (m64n128k32, dim / 32 of them, fp32 accumulators: 64 registers per thread). Shared memory
// operands in the no-swizzle K-major core-matrix layout: 8 rows x 16 bytes contiguous (128 B);
// along K the next core matrix at +128 B (leading byte offset), the next 8 rows at +8 dim B
// (stride byte offset). Accumulator (wgmma m64nN): thread (warp w of the warpgroup, lane l) holds
// rows 16 w + l / 4 and + 8, columns 8 i + 2 (l % 4) + {0, 1}, i < 16: key rows, (query, head)
// columns: query i / 8, head 8 (i % 8) + 2 (l % 4) + {0, 1}.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/indexer_args.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kQueries = 4;                 // query tokens per block
constexpr int kHeads = 64;                  // heads padded to 64 (absent heads: q = 0, w' = 0)
constexpr int kRows = kQueries * kHeads;    // B rows of the block
constexpr int kKeys = 64;                   // keys per tile (wgmma M)
constexpr int kThreads = 256;               // two warpgroups
constexpr int kMaxDim = 128;
constexpr int kRawLd = 68;                  // bytes per raw FP4 key row (dim 128: 64 code bytes + 4 scales)
constexpr int kQBytes = kRows * kMaxDim;                  // 32,768
constexpr int kKeyBytes = kKeys * kMaxDim;                // 8,192 per tile
constexpr int kRawBytes = kKeys * kRawLd;                 // 4,352 per tile
constexpr size_t kSmemBytes = size_t(kQBytes) + 2 * kKeyBytes + 2 * kRawBytes + 2 * kKeys * 4 + kRows * 2;
static_assert(4 * kKeys == kThreads, "four threads per raw FP4 key row");

__device__ __forceinline__ float pow2f(int e) { return ldexpf(1.0f, e); }

// Stages B: the block's (query, head) rows of q as e4m3 times Sq, and w' = bf16(w * scale) * Sq
// per row (0 for absent rows). One warp per row, dim / 32 elements per lane.
__device__ __forceinline__ void stage_q(const IdxArgs& a, const IdxPart& p, int64_t t0, uint8_t* qs, uint16_t* ws) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, dim = a.dim, per = dim >> 5;
  for (int row = warp; row < kRows; row += kThreads / 32) {
    const int hl = row % kHeads;
    const int64_t t = t0 + row / kHeads;
    const bool valid = t < a.n && hl < a.nh;
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (valid) {
      const int64_t col = int64_t(a.h_begin + hl) * dim + lane * per;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i < per) v[i] = p.q.ld(t, col + i);
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    // E: the exponent of amax (normal floats; q rows of subnormals only are taken as 2^-126).
    const int e = amax > 0.f ? max(int((__float_as_uint(amax) >> 23) & 0xff) - 127, -126) : 0;
    const float inv = pow2f(7 - e);
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; i += 2) {
      const __nv_fp8x2_storage_t b2 =
          __nv_cvt_float2_to_fp8x2(make_float2(v[i] * inv, v[i + 1] * inv), __NV_SATFINITE, __NV_E4M3);
      packed |= uint32_t(b2) << (8 * i);
    }
    uint8_t* dst = qs + core_offset(row, lane * per, dim);
    if (per == 4) *reinterpret_cast<uint32_t*>(dst) = packed;
    else *reinterpret_cast<uint16_t*>(dst) = uint16_t(packed);
    if (lane == 0) {
      const float w = valid ? round_bf16(round_bf16(p.w.ld(t, a.h_begin + hl) * a.weight_scale) * pow2f(e - 7)) : 0.f;
      ws[row] = f32_to_bf16(w);
    }
  }
}

// Issues the raw compact rows of keys [j0, j0 + kKeys) below jend into `raw` (four threads per
// row, 4-byte cp.async, one commit group per thread).
__device__ __forceinline__ void fetch_raw(const KvRowsDev& ck, int64_t j0, int64_t jend, uint8_t* raw) {
  const int fr = threadIdx.x >> 2, fq = threadIdx.x & 3;
  const int64_t j = j0 + fr;
  if (j < jend) {
    const uint8_t* src = ck.row(j);
    const int words = int(ck.row_bytes >> 2);
    for (int w = fq; w < words; w += 4) cp_async4(raw + fr * kRawLd + 4 * w, src + 4 * w);
  }
  cp_async_commit();
}

// Decodes the landed raw rows of keys [j0, j0 + kKeys) to the e4m3 tile `kt` and their Sk to `ks`
// (keys at or past jend: zeros). One thread per (key, 32-code block).
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
      const int eb = row[ck.scale_offset + b];
      const float f = pow2f(max(6 - (emax - eb), -30));
      if (b == 0) ks[r] = pow2f(emax - 133);
      const uint32_t* codes = reinterpret_cast<const uint32_t*>(row + b * 16);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const uint32_t u = codes[w];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t word = 0;
#pragma unroll
          for (int k = 0; k < 4; k += 2) {
            const int s = 16 * h + 4 * k;
            const __nv_fp8x2_storage_t b2 = __nv_cvt_float2_to_fp8x2(
                make_float2(fp4_to_f32((u >> s) & 0xfu) * f, fp4_to_f32((u >> (s + 4)) & 0xfu) * f), __NV_SATFINITE,
                __NV_E4M3);
            word |= uint32_t(b2) << (8 * k);
          }
          out[2 * w + h] = word;
        }
      }
    } else if (b == 0) {
      ks[r] = 0.f;
    }
    // 32 bytes: two 16-byte core-matrix rows along K.
    *reinterpret_cast<uint4*>(kt + core_offset(r, 32 * b, dim)) = make_uint4(out[0], out[1], out[2], out[3]);
    *reinterpret_cast<uint4*>(kt + core_offset(r, 32 * b + 16, dim)) = make_uint4(out[4], out[5], out[6], out[7]);
  }
}

// kDim: the head dim (64 or 128), a constant so that the wgmma of a tile are one unrolled,
// non-divergent sequence (ptxas serializes them otherwise).
template <int kDim>
__global__ void __launch_bounds__(kThreads, 2) indexer_scores_fp8_kernel(const __grid_constant__ IdxArgs a) {
  const IdxPart& p = a.parts[0];
  const int64_t n = a.n;
  constexpr int dim = kDim;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const qs = smem;                                 // B: [kRows] x dim, core-matrix layout
  uint8_t* const kbuf = qs + kQBytes;                       // A: [2][kKeys] x dim
  uint8_t* const raw = kbuf + 2 * kKeyBytes;                // [2][kKeys][kRawLd]
  float* const ks = reinterpret_cast<float*>(raw + 2 * kRawBytes);  // [2][kKeys] Sk
  uint16_t* const ws = reinterpret_cast<uint16_t*>(ks + 2 * kKeys);  // [kRows] w' (bf16)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wi = warp & 3, gid = lane >> 2, tig = lane & 3;
  const int64_t t0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kQueries;
  KeySpan span;
  if (!block_key_span<kQueries>(a, p, t0, &span)) return;
  const int64_t key_begin = p.key_begin, lo = span.lo, cend = span.cend;  // computed keys: [lo, cend)
  float* const scores = p.scores;
  const int64_t score_stride = p.score_stride;

  const int64_t ntiles = (cend - lo + kKeys - 1) / kKeys;
  fetch_raw(p.ckeys, lo, cend, raw);
  stage_q(a, p, t0, qs, ws);
  cp_async_wait_all();
  __syncthreads();
  decode_keys(p.ckeys, dim, lo, cend, raw, kbuf, ks);
  if (ntiles > 1) fetch_raw(p.ckeys, lo + kKeys, cend, raw + kRawBytes);
  // This thread's w' pairs: columns 8 i + 2 tig + {0, 1} of warpgroup wg's B rows.
  uint32_t wp[16];
#pragma unroll
  for (int i = 0; i < 16; ++i)
    wp[i] = *reinterpret_cast<const uint32_t*>(ws + wg * 128 + 8 * i + 2 * tig);
  // The (key row, query) this lane stores after the quad reduction, and its query's visible keys.
  const int my_row = 16 * wi + gid + 8 * (tig >> 1), my_q = 2 * wg + (tig & 1);
  const int64_t ts = t0 + my_q;
  const int64_t visible = (p.pos_begin + ts + 1) / a.ratio;
  cp_async_wait_all();
  fence_async_smem();
  __syncthreads();

  constexpr int ksteps = dim >> 5;
  const uint8_t* const bq = qs + wg * 128 * dim;
  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  for (int64_t it = 0; it < ntiles; ++it) {
    const int64_t j0 = lo + it * kKeys;
    const uint8_t* kt = kbuf + (it & 1) * kKeyBytes;
    fence_acc(d);
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < ksteps; ++s) wgmma_m64n128k32(d, smem_desc(kt + 256 * s, dim), smem_desc(bq + 256 * s, dim), s);
    wgmma_commit();
    // Under the MMAs: decode tile it + 1 (landed), fetch the raw rows of tile it + 2.
    if (it + 1 < ntiles) {
      decode_keys(p.ckeys, dim, j0 + kKeys, cend, raw + ((it + 1) & 1) * kRawBytes, kbuf + ((it + 1) & 1) * kKeyBytes,
                  ks + ((it + 1) & 1) * kKeys);
      if (it + 2 < ntiles) fetch_raw(p.ckeys, j0 + 2 * kKeys, cend, raw + (it & 1) * kRawBytes);
    }
    fence_async_smem();
    wgmma_wait0();
    fence_acc(d);
    // sums[half][q]: key row 16 wi + gid + 8 half, query 2 wg + q, over this thread's 16 heads.
    float sums[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    const __nv_bfloat162 zero = __float2bfloat162_rn(0.f);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
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
      for (int q = 0; q < 2; ++q) {
        sums[half][q] += __shfl_xor_sync(0xffffffffu, sums[half][q], 1);
        sums[half][q] += __shfl_xor_sync(0xffffffffu, sums[half][q], 2);
      }
    const float sum = (tig >> 1) ? ((tig & 1) ? sums[1][1] : sums[1][0]) : ((tig & 1) ? sums[0][1] : sums[0][0]);
    const int64_t j = j0 + my_row;
    if (ts < n && j < cend) {
      float* out = scores + ts * score_stride + (j - key_begin);
      const float v = round_bf16(sum * ks[(it & 1) * kKeys + my_row]);
      *out = j >= visible ? -INFINITY : (a.accumulate ? *out + v : v);
    }
    cp_async_wait_all();
    __syncthreads();  // tile it + 1 decoded and fenced, the raw rows of tile it + 2 landed
  }
}

}  // namespace

bool indexer_fp8_serves(const IdxArgs& a) {
  const IdxPart& p = a.parts[0];
  return a.num_parts == 1 && a.bf16_arith && a.n >= 16 && a.nh <= kHeads && (a.dim == 64 || a.dim == 128) &&
         p.ckeys.data && p.ckeys.row_bytes <= kRawLd && p.ckeys.block == 32 && p.ckeys.scale_offset == a.dim / 2;
}

void launch_indexer_fp8(IdxArgs& a, int64_t max_keys, cudaStream_t s) {
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(indexer_scores_fp8_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(kSmemBytes)));
    CUDA_CHECK(cudaFuncSetAttribute(indexer_scores_fp8_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(kSmemBytes)));
    attr_set = true;
  }
  const dim3 grid = indexer_tc_grid(a, max_keys, kQueries, kKeys, "indexer_scores (fp8 wgmma)");
  if (a.dim == 64)
    indexer_scores_fp8_kernel<64><<<grid, kThreads, kSmemBytes, s>>>(a);
  else
    indexer_scores_fp8_kernel<128><<<grid, kThreads, kSmemBytes, s>>>(a);
  launch_check("indexer_scores (fp8 wgmma)", s);
}

}  // namespace v4rt::kernels::cuda
