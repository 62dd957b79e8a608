// SPDX-License-Identifier: MIT
// Lightning-indexer scores (spec §5.5; their top-k: topk.cu). Keys in the compact kFp4 rows (official numerics, common/kv_format.h) are decoded as they load
// (kv_decode.cuh): 68 bytes read per Flash key instead of 512.
// The scores of many independent calls (indexer_scores_batch: a decode batch, one part per
// sequence) take one launch: every block resolves its query's part from the descriptors in the
// kernel parameters; a single call is the batch of one.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/indexer_args.cuh"
#include "kernels/cuda/kv_decode.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kMaxIndexHeads = 64;
constexpr int kKeysPerBlock = 128;

// The scores of query token t of part p against this block's keys (one thread per key); q of the
// token's heads in shared memory (qs [nh][dim], then w [nh]). Every thread of the block calls it.
__device__ __forceinline__ void indexer_scores_token(const IdxArgs& a, const IdxPart& p, int64_t t, float* qs) {
  const Act q = p.q, keys = p.keys, w = p.w;
  const KvRowsDev ckeys = p.ckeys;
  const int h_begin = a.h_begin, nh = a.nh, dim = a.dim;
  const int64_t key_begin = p.key_begin, key_end = p.key_end;
  const float weight_scale = a.weight_scale;
  const bool bf16_arith = a.bf16_arith;
  float* ws = qs + nh * dim;
  for (int i = threadIdx.x; i < nh * dim; i += blockDim.x) qs[i] = q.ld(t, int64_t(h_begin) * dim + i);
  for (int i = threadIdx.x; i < nh; i += blockDim.x)
    ws[i] = bf16_arith ? round_bf16(w.ld(t, h_begin + i) * weight_scale) : w.ld(t, h_begin + i) * weight_scale;
  __syncthreads();
  const int64_t j = key_begin + int64_t(blockIdx.x) * kKeysPerBlock + threadIdx.x;
  if (j >= key_end) return;
  const int64_t out = t * p.score_stride + (j - key_begin);  // this score's element
  const int64_t visible = (p.pos_begin + t + 1) / a.ratio;
  if (j >= visible) {
    mask_score(a, p, out);
    return;
  }
  float acc[kMaxIndexHeads];
#pragma unroll
  for (int h = 0; h < kMaxIndexHeads; ++h) acc[h] = 0.f;
  const uint8_t* krow = ckeys.data ? ckeys.row(j) : nullptr;
  for (int c = 0; c < dim; c += 32) {
    float kr[32];
    if (krow) {  // compact: one scale block of 32 codes per step
      ckeys.fp4_ld32(krow, c, kr);
    } else if (p.vec) {  // 16-byte key loads, 16-byte (broadcast) q loads: a quarter of the load instructions
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float4 v = keys.ld4(j, c + 4 * i);
        kr[4 * i] = v.x;
        kr[4 * i + 1] = v.y;
        kr[4 * i + 2] = v.z;
        kr[4 * i + 3] = v.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 32; ++i) kr[i] = keys.ld(j, c + i);
    }
#pragma unroll
    for (int h = 0; h < kMaxIndexHeads; ++h) {
      if (h < nh) {
        const float4* q4 = reinterpret_cast<const float4*>(qs + h * dim + c);
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float4 qv = q4[i];
          d = fmaf(qv.x, kr[4 * i], d);
          d = fmaf(qv.y, kr[4 * i + 1], d);
          d = fmaf(qv.z, kr[4 * i + 2], d);
          d = fmaf(qv.w, kr[4 * i + 3], d);
        }
        acc[h] += d;
      }
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int h = 0; h < kMaxIndexHeads; ++h) {
    if (h < nh) {
      if (bf16_arith) {
        sum += round_bf16(fmaxf(round_bf16(acc[h]), 0.f) * ws[h]);
      } else {
        sum += fmaxf(acc[h], 0.f) * ws[h];
      }
    }
  }
  if (bf16_arith) sum = round_bf16(sum);
  store_score(a, p, out, sum);
}

// Blocks (key block x over the longest part's keys, token row y); the tokens are walked with a
// grid-stride loop over y, so any number of query tokens fits the 65,535-block limit of gridDim.y.
__global__ void __launch_bounds__(kKeysPerBlock) indexer_scores_kernel(const __grid_constant__ IdxArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) float qs[];
  for (int64_t tg = blockIdx.y; tg < a.n; tg += gridDim.y) {
    const IdxPart& p = idx_part_of(a, tg);
    if (p.key_begin + int64_t(blockIdx.x) * kKeysPerBlock >= p.key_end) continue;  // past this part's keys (whole block)
    __syncthreads();  // the previous token's q is no longer read
    indexer_scores_token(a, p, tg - p.row0, qs);
  }
}

// --- prefill, official numerics: bf16 tensor cores --------------------------------------------

constexpr int kTcQueries = 4;                        // query tokens per block, stationary
constexpr int kTcHeadsPad = 64;                      // heads padded to 64 (absent heads: q = 0, w = 0)
constexpr int kTcRows = kTcQueries * kTcHeadsPad;    // (query, head) rows of a block: 8 warps x 32
constexpr int kTcKeys = 64;                          // keys per streamed tile
constexpr int kTcThreads = 256;
constexpr int kTcMaxDim = 128;
constexpr int kTcLd = kTcMaxDim + 8;                 // bf16 row stride (272 B): ldmatrix rows on distinct banks
constexpr int kTcTermLd = kTcHeadsPad + 8;           // bf16 terms per (query, key): conflict-free stores and 16-byte reads
constexpr size_t kTcKeyBytes = size_t(2) * kTcKeys * kTcLd * 2;                   // 34,816: two key tiles
constexpr size_t kTcTermBytes = size_t(kTcQueries) * kTcKeys * kTcTermLd * 2;     // 36,864: per-head terms
constexpr int kTcRawLd = 68;                         // bytes per raw compact FP4 key row (row_bytes <= 68 at dim <= 128);
                                                     // 17 words: rows start on distinct banks
constexpr size_t kTcRawBytes = size_t(2) * kTcKeys * kTcRawLd;                    // 8,704: two raw FP4 tiles
static_assert(size_t(kTcRows) * kTcLd * 2 <= kTcKeyBytes + kTcTermBytes, "the q staging fits the shared memory");
static_assert(kTcQueries * kTcKeys == kTcThreads, "one thread per (query, key) of a tile sums its heads");
static_assert(4 * kTcKeys == kTcThreads, "four threads per raw FP4 key row");

size_t indexer_tc_smem_bytes() { return kTcKeyBytes + kTcTermBytes + kTcRawBytes; }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void cp_async16(uint16_t* dst, const void* src) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(f32_to_bf16(lo)) | (uint32_t(f32_to_bf16(hi)) << 16);
}

// One 32-code scale block (dims [c, c + 32)) of a compact FP4 key row as 32 bf16 values at d (four
// 16-byte stores; zeros when !valid: a key past the range).
__device__ __forceinline__ void fp4_block_to_bf16(const KvRowsDev& ck, const uint8_t* row, int c, bool valid, uint4* d) {
  if (valid) {
    float v[32];
    ck.fp4_ld32(row, c, v);
#pragma unroll
    for (int g = 0; g < 4; ++g)
      d[g] = make_uint4(pack_bf16x2(v[8 * g], v[8 * g + 1]), pack_bf16x2(v[8 * g + 2], v[8 * g + 3]),
                        pack_bf16x2(v[8 * g + 4], v[8 * g + 5]), pack_bf16x2(v[8 * g + 6], v[8 * g + 7]));
  } else {
#pragma unroll
    for (int g = 0; g < 4; ++g) d[g] = make_uint4(0u, 0u, 0u, 0u);
  }
}

// Keys [j0, j0 + kTcKeys) of part p as bf16 rows of `dst` ([kTcKeys][kTcLd], dims [0, dim)); keys
// at or past `jend` are zeros. Every thread of the block calls it. bf16 rows 16-byte aligned go by
// cp.async (the caller waits); F32 rows by 16-byte loads, all of a thread's issued before its
// stores; compact FP4 rows decode one 32-code scale block per thread and step (synchronously;
// unused since tc_fp4_step stages them, but kept: without it ptxas spills 8 bytes in the plain
// instance of the tensor-core kernel).
__device__ __forceinline__ void tc_stage_keys(const IdxPart& p, int dim, int64_t j0, int64_t jend, uint16_t* dst,
                                              bool async16) {
  const int tid = threadIdx.x;
  if (p.ckeys.data) {
    const int blocks = dim >> 5;
    for (int i = tid; i < kTcKeys * blocks; i += kTcThreads) {
      const int r = i / blocks, c = (i - r * blocks) * 32;
      const int64_t j = j0 + r;
      const bool valid = j < jend;
      fp4_block_to_bf16(p.ckeys, valid ? p.ckeys.row(j) : nullptr, c, valid,
                        reinterpret_cast<uint4*>(dst + r * kTcLd + c));
    }
  } else if (async16) {
    const int chunks = dim >> 3;
    const uint16_t* src = static_cast<const uint16_t*>(p.keys.data);
    for (int i = tid; i < kTcKeys * chunks; i += kTcThreads) {
      const int r = i / chunks, c = (i - r * chunks) * 8;
      const int64_t j = j0 + r;
      uint16_t* d = dst + r * kTcLd + c;
      if (j < jend) cp_async16(d, src + j * p.keys.stride + c);
      else *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
    cp_async_commit();
  } else {
    // 4 dims per item, at most 8 items per thread (kTcKeys * kTcMaxDim / 4 / kTcThreads).
    const int chunks = dim >> 2, items = kTcKeys * chunks;
    float4 v[kTcKeys * kTcMaxDim / 4 / kTcThreads];
#pragma unroll
    for (int u = 0; u < kTcKeys * kTcMaxDim / 4 / kTcThreads; ++u) {
      const int i = tid + u * kTcThreads;
      v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (i < items) {
        const int r = i / chunks, c = (i - r * chunks) * 4;
        const int64_t j = j0 + r;
        if (j < jend)
          v[u] = p.vec ? p.keys.ld4(j, c)
                       : make_float4(p.keys.ld(j, c), p.keys.ld(j, c + 1), p.keys.ld(j, c + 2), p.keys.ld(j, c + 3));
      }
    }
#pragma unroll
    for (int u = 0; u < kTcKeys * kTcMaxDim / 4 / kTcThreads; ++u) {
      const int i = tid + u * kTcThreads;
      if (i < items) {
        const int r = i / chunks, c = (i - r * chunks) * 4;
        *reinterpret_cast<uint2*>(dst + r * kTcLd + c) =
            make_uint2(pack_bf16x2(v[u].x, v[u].y), pack_bf16x2(v[u].z, v[u].w));
      }
    }
  }
}

// Compact FP4 keys, asynchronously: one step decodes the raw rows of keys [dec_j0, dec_j0 +
// kTcKeys) from `raw_dec` (landed: the caller waited and synchronized) into the bf16 tile `dst`,
// and, when `fetch` (block-uniform), issues the raw rows of keys [fetch_j0, fetch_j0 + kTcKeys)
// into `raw_fetch` ([kTcKeys][kTcRawLd] bytes) by 4-byte cp.async, one commit group per thread
// (the caller waits). Four threads per fetched row, one row() lookup each (an L1-resident block
// table), issued before the decode so that the copies fly during it and the mma. Keys at or past
// `jend` are neither fetched nor decoded (zeros in `dst`). The decode is fp4_ld32 on the same
// bytes as the synchronous staging: the tile is bit-identical.
__device__ __forceinline__ void tc_fp4_step(const KvRowsDev& ck, int dim, int64_t jend, int64_t dec_j0,
                                            const uint8_t* raw_dec, uint16_t* dst, bool fetch, int64_t fetch_j0,
                                            uint8_t* raw_fetch) {
  const int tid = threadIdx.x;
  if (fetch) {
    const int fr = tid >> 2, fq = tid & 3;
    const int64_t jf = fetch_j0 + fr;
    if (jf < jend) {
      const uint8_t* src = ck.row(jf);
      const int words = int(ck.row_bytes >> 2);
      for (int w = fq; w < words; w += 4) cp_async4(raw_fetch + fr * kTcRawLd + 4 * w, src + 4 * w);
    }
    cp_async_commit();
  }
  if (raw_dec) {
    const int blocks = dim >> 5;
    for (int i = tid; i < kTcKeys * blocks; i += kTcThreads) {
      const int r = i / blocks, c = (i - r * blocks) * 32;
      fp4_block_to_bf16(ck, raw_dec + r * kTcRawLd, c, dec_j0 + r < jend, reinterpret_cast<uint4*>(dst + r * kTcLd + c));
    }
  }
}

// Official numerics (bf16_arith), where q and the keys hold FP4-quantized values (Hadamard, then
// e2m1 x ue8m0 per 32: exact in bf16, so staging them as bf16 is exact whatever their storage).
// Queries stationary, keys streamed. Block (x: 4 query tokens, heaviest last tokens first; y: a
// span of key_span keys) holds its 4 x 64 (query, head) rows of q as mma A fragments in registers
// (warp w: query w / 2, heads 32 (w % 2) .. + 32, two m16 tiles, 64 registers at dim 128), loaded
// once by ldmatrix from a bf16 staging of q (16-byte loads) over all of the shared memory. Keys flow through in
// tiles of 64, double-buffered in shared memory: tile i + 1 is staged (cp.async for 16-byte aligned
// bf16 rows; through registers, converted, for F32 rows) while tile i is computed. Compact FP4
// rows go one tile further ahead: the raw 68-byte rows of tile i + 2 are fetched by 4-byte cp.async
// into a raw double buffer (8,704 B) and fly during tile i's mma, while tile i + 1 is decoded from
// its raw rows (landed during tile i - 1) into bf16 (tc_fp4_step): of the staging's global
// reads only the block-table lookup (L1-resident) is waited on. Per tile every warp runs its 32 rows x 64 keys on mma.sync m16n8k16 bf16 with fp32
// accumulation (16 keys at a time: B fragments by ldmatrix.x4, 4 mma per fragment load), turns
// each dot into its head's term bf16(max(bf16(dot), 0) * bf16(w * scale)) (w in registers) and
// stores it, a bf16 value, as bf16 to the term buffer [query][key][head] (half the bytes of fp32,
// exact); then one thread per (query, key) adds its terms in head order (16-byte reads, 8 terms
// each), in fp32 as the reference does, rounds the sum to bf16 and
// writes the score (-inf past the query's visible keys; added into the score under accumulate).
// The result is the reference's bit for bit. Heads past nh: m16 tiles wholly past nh are skipped
// and not summed; within a tile they add +0, as in the reference's padded sum.
// Key tiles no query of the block sees (causal) are not computed: their scores are -inf at once.
// Shared memory: 34,816 B of key tiles + 36,864 B of terms + 8,704 B of raw FP4 rows = 80,384 B
// (two blocks: 160,768 B of the SM's 228 KB); __launch_bounds__(256, 2)
// holds registers to 128 (64 of them q), so two blocks (16 warps) share an SM and one computes
// while the other sums or waits on its key loads. Per tile and block: 1024 mma, 128 KB of
// fragment loads, 64 KB of term stores and loads, 16 KB of key stores: ~1,600 cycles of shared
// memory bandwidth against ~1,500 of mma issue. One part only (prefill).
// kFp4: the part's keys are compact FP4 rows (one instance per key staging, so that neither carries
// the other's registers: 128 without spills).
template <bool kFp4>
__global__ void __launch_bounds__(kTcThreads, 2) indexer_scores_tc_kernel(const __grid_constant__ IdxArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const IdxPart& p = a.parts[0];
  const int64_t n = a.n;
  const int h_begin = a.h_begin, nh = a.nh, dim = a.dim;
  extern __shared__ __align__(16) unsigned char idx_smem[];
  uint16_t* kbuf = reinterpret_cast<uint16_t*>(idx_smem);  // [2][kTcKeys][kTcLd]
  uint16_t* terms = kbuf + kTcKeyBytes / 2;                // [kTcQueries][kTcKeys][kTcTermLd]
  uint16_t* qs = kbuf;                                     // [kTcRows][kTcLd], before the first tile
  uint8_t* const raw = idx_smem + kTcKeyBytes + kTcTermBytes;  // [2][kTcKeys][kTcRawLd]: raw FP4 rows
  constexpr int kRawTile = kTcKeys * kTcRawLd;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t t0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kTcQueries;
  KeySpan span;
  if (!block_key_span<kTcQueries>(a, p, t0, &span)) return;
  const int64_t key_begin = p.key_begin, lo = span.lo, cend = span.cend;  // computed keys: [lo, cend)
  const int64_t score_stride = p.score_stride;

  // q of the block's rows as bf16 (zeros past n and nh), 16-byte loads where aligned; 8 in flight.
  const Act q = p.q;
  const bool qvec = (reinterpret_cast<uintptr_t>(q.data) & 15) == 0 && (q.stride & 3) == 0;
  const int c4n = dim >> 2, qitems = kTcRows * c4n;
  for (int base = 0; base < qitems; base += 8 * kTcThreads) {
    float4 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int i = base + u * kTcThreads + tid;
      v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      const int row = i / c4n, c = (i - row * c4n) * 4, hl = row % kTcHeadsPad;
      const int64_t t = t0 + row / kTcHeadsPad;
      if (i < qitems && t < n && hl < nh) {
        const int64_t col = int64_t(h_begin + hl) * dim + c;
        v[u] = qvec ? q.ld4(t, col) : make_float4(q.ld(t, col), q.ld(t, col + 1), q.ld(t, col + 2), q.ld(t, col + 3));
      }
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int i = base + u * kTcThreads + tid;
      const int row = i / c4n, c = (i - row * c4n) * 4;
      if (i < qitems)
        *reinterpret_cast<uint2*>(qs + row * kTcLd + c) = make_uint2(pack_bf16x2(v[u].x, v[u].y), pack_bf16x2(v[u].z, v[u].w));
    }
  }
  // This warp's rows: query wq, heads hw + [0, 32); w of the rows this thread's accumulators hold.
  const int wq = warp >> 1, hw = (warp & 1) * 32;
  const int64_t tw = t0 + wq;
  float wv[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int hl = hw + mt * 16 + half * 8 + gid;
      wv[mt][half] = (tw < n && hl < nh) ? round_bf16(p.w.ld(tw, h_begin + hl) * a.weight_scale) : 0.f;
    }
  const bool active0 = hw < nh, active1 = hw + 16 < nh;  // m16 tiles holding a head below nh (warp-uniform)
  const int nh16 = (nh + 15) & ~15;                       // heads summed: whole computed m16 tiles
  const bool async16 = !p.ckeys.data && p.keys.bf16 && (p.keys.stride & 7) == 0 &&
                       (reinterpret_cast<uintptr_t>(p.keys.data) & 15) == 0;
  __syncthreads();
  const int ksteps = dim >> 4;
  uint32_t qa[2][kTcMaxDim / 16][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int ks = 0; ks < kTcMaxDim / 16; ++ks) {
      if (ks < ksteps) {
        ldsm_x4(qa[mt][ks], qs + (warp * 32 + mt * 16 + (lane & 15)) * kTcLd + ks * 16 + (lane >> 4) * 8);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) qa[mt][ks][e] = 0u;
      }
    }
  __syncthreads();  // q is in registers: the keys and terms may overwrite its staging
  const int64_t ntiles = (cend - lo + kTcKeys - 1) / kTcKeys;
  if constexpr (kFp4) {  // tile 0 raw, then tile 0 decoded while tile 1 raw is fetched
    tc_fp4_step(p.ckeys, dim, cend, 0, nullptr, nullptr, true, lo, raw);
    cp_async_wait_all();
    __syncthreads();
    tc_fp4_step(p.ckeys, dim, cend, lo, raw, kbuf, ntiles > 1, lo + kTcKeys, raw + kRawTile);
  } else {
    tc_stage_keys(p, dim, lo, cend, kbuf, async16);
  }
  cp_async_wait_all();  // FP4: tile 1's raw rows too, decoded at the top of the first iteration
  __syncthreads();

  // ldmatrix.x4 of 16 keys x 16 dims: lanes 0-7 / 8-15 / 16-23 / 24-31 address keys 0-7 dims 0-7,
  // keys 0-7 dims 8-15, keys 8-15 dims 0-7, keys 8-15 dims 8-15: B fragments of two n8 tiles.
  const int b_off = ((lane & 7) + ((lane >> 4) << 3)) * kTcLd + ((lane >> 3) & 1) * 8;
  uint16_t* const term_w = terms + wq * kTcKeys * kTcTermLd + hw + gid;  // this thread's (key 0, head row) term
  const int sq = tid >> 6, skey = tid & 63;                              // the (query, key) this thread sums
  const int64_t ts = t0 + sq;
  const int64_t visible = (p.pos_begin + ts + 1) / a.ratio;
  const uint4* term_r = reinterpret_cast<const uint4*>(terms + (sq * kTcKeys + skey) * kTcTermLd);
  for (int64_t it = 0; it < ntiles; ++it) {
    const int64_t j0 = lo + it * kTcKeys;
    const uint16_t* kt = kbuf + (it & 1) * (kTcKeys * kTcLd);
    // Tile t's raw FP4 rows live in raw[t & 1]: tile it + 2 reuses tile it's, decoded last iteration.
    if (it + 1 < ntiles) {
      uint16_t* next = kbuf + ((it + 1) & 1) * (kTcKeys * kTcLd);
      if constexpr (kFp4)
        tc_fp4_step(p.ckeys, dim, cend, j0 + kTcKeys, raw + ((it + 1) & 1) * kRawTile, next, it + 2 < ntiles,
                    j0 + 2 * kTcKeys, raw + (it & 1) * kRawTile);
      else
        tc_stage_keys(p, dim, j0 + kTcKeys, cend, next, async16);
    }
#pragma unroll 1
    for (int c = 0; c < kTcKeys; c += 16) {
      float acc[2][2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
      const uint16_t* kb = kt + c * kTcLd + b_off;
#pragma unroll
      for (int ks = 0; ks < kTcMaxDim / 16; ++ks) {
        if (ks < ksteps) {
          uint32_t b[4];
          ldsm_x4(b, kb + ks * 16);
          if (active0) {
            mma_bf16_16816(acc[0][0], qa[0][ks], b[0], b[1]);
            mma_bf16_16816(acc[0][1], qa[0][ks], b[2], b[3]);
          }
          if (active1) {
            mma_bf16_16816(acc[1][0], qa[1][ks], b[0], b[1]);
            mma_bf16_16816(acc[1][1], qa[1][ks], b[2], b[3]);
          }
        }
      }
      // acc[mt][nt][half * 2 + e]: head hw + 16 mt + 8 half + gid, key c + 8 nt + 2 tig + e.
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (mt == 0 ? !active0 : !active1) continue;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int half = 0; half < 2; ++half)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              term_w[(c + nt * 8 + 2 * tig + e) * kTcTermLd + mt * 16 + half * 8] =
                  f32_to_bf16(fmaxf(round_bf16(acc[mt][nt][half * 2 + e]), 0.f) * wv[mt][half]);
      }
    }
    __syncthreads();  // the tile's terms are stored
    const int64_t j = j0 + skey;
    if (ts < n && j < cend) {
      float sum = 0.f;
#pragma unroll
      for (int h8 = 0; h8 < kTcHeadsPad / 8; ++h8) {
        if (8 * h8 < nh16) {
          const uint4 t8 = term_r[h8];
          const uint32_t u[4] = {t8.x, t8.y, t8.z, t8.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            sum += __uint_as_float(u[i] << 16);
            sum += __uint_as_float(u[i] & 0xffff0000u);
          }
        }
      }
      const int64_t out = ts * score_stride + (j - key_begin);
      if (j >= visible) mask_score(a, p, out);
      else store_score(a, p, out, round_bf16(sum));
    }
    cp_async_wait_all();
    __syncthreads();  // the next tile's keys (FP4: the raw rows of the one after) are staged; the terms are read
  }
}

}  // namespace

namespace {

// One part's descriptor (tokens from row0); its key count in *nkeys.
IdxPart plan_part(const IndexerScoresParams& p, int64_t heads, int64_t dim, int64_t row0, int64_t* nkeys) {
  CHECK(p.q.shape[1] == heads && p.q.shape[2] == dim) << "indexer batch: parts of " << heads << " heads x " << dim
                                                      << " dims, a part has q " << p.q.shape_str();
  const int64_t num_keys = p.keys.data ? p.keys.shape[0] : 0;
  const int64_t key_end = p.key_end < 0 ? num_keys : p.key_end;
  CHECK((p.scores.dtype == DType::kF32 || p.scores.dtype == DType::kBF16) && p.scores.device == Device::kCuda)
      << "indexer scores: F32 or BF16 device view";
  CHECK(p.scores.dtype == DType::kF32 || (p.bf16_arith && !p.accumulate))
      << "indexer scores: BF16 holds the official numerics' scores (bf16 values), never accumulated ones";
  CHECK_EQ(act_row_width(p.scores), key_end - p.key_begin) << "indexer scores " << p.scores.shape_str();
  IdxPart d{};
  const bool compact = p.key_layout.compact();
  CHECK(!compact || p.key_layout.format == KvFormat::kFp4)
      << "indexer keys: " << kv_format_name(p.key_layout.format) << " rows are not indexer key rows";
  check_kv_paging(p.key_layout, p.key_blocks, "indexer keys");
  if (num_keys > 0 && compact) {
    d.ckeys = make_kv_rows(p.keys, p.key_layout, p.key_blocks, dim, "indexer keys");
    CHECK(d.ckeys.row_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(d.ckeys.data) % 4 == 0)
        << "indexer keys: compact rows must start 4-byte aligned (32-bit code loads)";
  } else if (num_keys > 0) {
    d.keys = make_act(p.keys, "indexer keys");
  }
  d.q = make_act(p.q, "indexer q");
  d.w = make_act(p.w, "indexer w");
  d.scores = p.scores.data;
  d.score_stride = p.scores.stride[0];
  d.key_begin = p.key_begin;
  d.key_end = key_end;
  d.pos_begin = p.pos_begin;
  d.row0 = row0;
  d.vec = num_keys > 0 && !compact && d.keys.vec_ok();
  *nkeys = key_end - p.key_begin;
  return d;
}

}  // namespace

dim3 indexer_tc_grid(IdxArgs& a, int64_t max_keys, int queries, int tile_keys, const char* what) {
  const int64_t sms = num_sms();
  const int64_t qblocks = ceil_div(a.n, queries), key_tiles = ceil_div(max_keys, tile_keys);
  const int64_t splits = std::clamp<int64_t>(ceil_div(8 * sms, qblocks), 1, std::min<int64_t>(key_tiles, kMaxGridYZ));
  a.key_span = ceil_div(key_tiles, splits) * tile_keys;
  return dim3(grid_x(qblocks, what), grid_yz(ceil_div(max_keys, a.key_span)));
}

void launch_indexer_scores(const IndexerScoresParams& p, cudaStream_t s, const IndexerKernels& k) {
  launch_indexer_scores_batch(IndexerScoresBatchParams{&p, 1}, s, k);
}

void launch_indexer_scores_batch(const IndexerScoresBatchParams& batch, cudaStream_t s, const IndexerKernels& k) {
  if (batch.num_parts == 0) return;
  const IndexerScoresParams& p0 = batch.parts[0];
  const int64_t heads = p0.q.shape[1], dim = p0.q.shape[2];
  const int h_end = p0.h_end < 0 ? int(heads) : p0.h_end;
  const int nh = h_end - p0.h_begin;
  CHECK(nh >= 1 && nh <= kMaxIndexHeads) << "indexer heads " << nh << " (at most " << kMaxIndexHeads << ")";
  CHECK(dim % 32 == 0 && dim <= 512) << "indexer head dim " << dim;
  const size_t smem = size_t(nh * dim + nh) * 4;
  CHECK_LE(smem, size_t(160 * 1024));
  static std::atomic<uint64_t> attr_set;
  set_smem_once(indexer_scores_kernel, 160 * 1024, false, &attr_set);
  auto args = std::make_unique<IdxArgs>();  // ~32 KB: not on the stack
  IdxArgs& a = *args;
  a.h_begin = p0.h_begin;
  a.nh = nh;
  a.dim = int(dim);
  a.ratio = p0.ratio;
  a.weight_scale = p0.weight_scale;
  a.accumulate = p0.accumulate;
  a.bf16_arith = p0.bf16_arith;
  a.scores_bf16 = p0.scores.dtype == DType::kBF16;
  int64_t max_keys = 0;
  bool has_keys = false;
  // A single part of prefill size under the official numerics: the tensor-core kernel, unless
  // k.tensor_cores is off; FP8 wgmma for compact FP4 keys unless k.fp8 is off, and with k.decode_tc
  // for a decode batch (every part's keys compact FP4) too.
  auto issue = [&] {
    if (a.num_parts == 0 || max_keys == 0) return;
    if (k.tensor_cores && k.fp8 && has_keys && indexer_fp8_serves(a)) {
      launch_indexer_fp8(a, max_keys, s, k.predecode, k.head_sum_mma);
      return;
    }
    if (k.tensor_cores && k.fp8 && k.decode_tc && has_keys && indexer_fp8_decode_serves(a)) {
      launch_indexer_fp8_decode(a, max_keys, s, k.head_sum_mma);
      return;
    }
    if (a.num_parts == 1 && a.bf16_arith && k.tensor_cores && a.n >= 16 && dim % 16 == 0 && dim <= kTcMaxDim &&
        has_keys && (!a.parts[0].ckeys.data || a.parts[0].ckeys.row_bytes <= kTcRawLd)) {
      static std::atomic<uint64_t> tc_attr_set[2];
      set_smem_once(indexer_scores_tc_kernel<false>, indexer_tc_smem_bytes(), false, &tc_attr_set[0]);
      set_smem_once(indexer_scores_tc_kernel<true>, indexer_tc_smem_bytes(), false, &tc_attr_set[1]);
      const dim3 tc_grid = indexer_tc_grid(a, max_keys, kTcQueries, kTcKeys, "indexer_scores (tensor cores)");
      if (a.parts[0].ckeys.data)
        launch(indexer_scores_tc_kernel<true>, tc_grid, kTcThreads, indexer_tc_smem_bytes(), s)(a);
      else
        launch(indexer_scores_tc_kernel<false>, tc_grid, kTcThreads, indexer_tc_smem_bytes(), s)(a);
      launch_check("indexer_scores (tensor cores)", s);
      return;
    }
    const dim3 grid(grid_x_for(max_keys, kKeysPerBlock, "indexer_scores"), grid_yz(a.n));
    launch(indexer_scores_kernel, grid, kKeysPerBlock, smem, s)(a);
    launch_check("indexer_scores", s);
  };
  auto flush = [&] {
    issue();
    a.num_parts = 0;
    a.n = max_keys = 0;
    has_keys = false;
  };
  for (int64_t i = 0; i < batch.num_parts; ++i) {
    const IndexerScoresParams& p = batch.parts[i];
    CHECK(p.h_begin == p0.h_begin && p.h_end == p0.h_end && p.weight_scale == p0.weight_scale && p.ratio == p0.ratio &&
          p.accumulate == p0.accumulate && p.bf16_arith == p0.bf16_arith && p.scores.dtype == p0.scores.dtype)
        << "indexer batch: the parts must share heads, scale, ratio, numerics and score dtype";
    int64_t nkeys = 0;
    const IdxPart d = plan_part(p, heads, dim, a.n, &nkeys);
    if (p.q.shape[0] == 0 || nkeys == 0) continue;
    a.parts[a.num_parts++] = d;
    a.n += p.q.shape[0];
    max_keys = std::max(max_keys, nkeys);
    has_keys = has_keys || p.keys.data != nullptr;
    if (a.num_parts == kMaxIdxParts) flush();
  }
  flush();
}

}  // namespace v4rt::kernels::cuda
