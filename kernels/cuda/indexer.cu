// SPDX-License-Identifier: MIT
// Lightning-indexer scores (spec §5.5) and top-k selection (radix select on order-preserving keys,
// then an index-ordered compaction so ties go to the lower index, then a bitonic sort of the k
// survivors; never a full sort of the row). Long rows of few-row calls (decode: one row of up to
// 256K keys) are first narrowed by many blocks: a 16-bit histogram of the order keys, the bin
// holding the k-th largest, and a compaction of every element at or above that bin; one block then
// sorts the <= 2048 candidates (the full single-block select remains the fallback).
// Keys in the compact kFp4 rows (official numerics, common/kv_format.h) are decoded as they load
// (kv_decode.cuh): 68 bytes read per Flash key instead of 512.
// The scores of many independent calls (indexer_scores_batch: a decode batch, one part per
// sequence) take one launch: every block resolves its query's part from the descriptors in the
// kernel parameters; a single call is the batch of one.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_decode.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kMaxIndexHeads = 64;
constexpr int kKeysPerBlock = 128;
constexpr int kTopkThreads = 512;
constexpr int kMaxTopk = 2048;

// One part of a launch (a sequence of a batch, or the whole call): its views and positions. The
// parts are passed by value in the kernel parameters (no copy to the device, capturable in a CUDA
// graph); the launch's query tokens are numbered across the parts, part i holding [row0, row0 + rows).
struct IdxPart {
  Act q, keys, w;
  KvRowsDev ckeys;  // compact keys (ckeys.data set): read instead of keys
  float* scores;
  int64_t score_stride, key_begin, key_end, pos_begin, row0;
  bool vec;  // plain keys read 16 bytes at a time
};

// The parts that fit in the kernel parameters beside the shared fields (< 64 bytes): 185 parts
// of 176 bytes (204 before a compact table could be paged: KvRowsDev's block table and shift).
constexpr int kMaxIdxParts = int((kMaxKernelParamBytes - 64) / sizeof(IdxPart));

struct IdxArgs {
  int64_t n;  // query tokens of the launch
  int h_begin, nh, dim, ratio;
  float weight_scale;
  bool accumulate, bf16_arith;
  int num_parts;
  IdxPart parts[kMaxIdxParts];
};
static_assert(sizeof(IdxArgs) <= kMaxKernelParamBytes, "indexer kernel parameters");
static_assert(offsetof(IdxArgs, parts) <= 64, "indexer shared fields: kMaxIdxParts assumes < 64 bytes");

// The part holding launch token tg (binary search over the parts' first tokens).
__device__ __forceinline__ const IdxPart& idx_part_of(const IdxArgs& a, int64_t tg) {
  return a.parts[part_holding(a.num_parts, tg, [&](int k) { return a.parts[k].row0; })];
}

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
  float* out = p.scores + t * p.score_stride + (j - key_begin);
  const int64_t visible = (p.pos_begin + t + 1) / a.ratio;
  if (j >= visible) {
    *out = -INFINITY;
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
  *out = a.accumulate ? *out + sum : sum;
}

// Blocks (key block x over the longest part's keys, token row y); the tokens are walked with a
// grid-stride loop over y, so any number of query tokens fits the 65,535-block limit of gridDim.y.
__global__ void __launch_bounds__(kKeysPerBlock) indexer_scores_kernel(const __grid_constant__ IdxArgs a) {
  extern __shared__ __align__(16) float qs[];
  for (int64_t tg = blockIdx.y; tg < a.n; tg += gridDim.y) {
    const IdxPart& p = idx_part_of(a, tg);
    if (p.key_begin + int64_t(blockIdx.x) * kKeysPerBlock >= p.key_end) continue;  // past this part's keys (whole block)
    __syncthreads();  // the previous token's q is no longer read
    indexer_scores_token(a, p, tg - p.row0, qs);
  }
}

// Order-preserving key of a finite score (0 marks a non-finite one); -0 counts as +0.
__device__ __forceinline__ uint32_t order_key(float v) {
  if (!isfinite(v)) return 0u;
  if (v == 0.f) v = 0.f;
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix count of `flag` over the block (in thread order) and the block total.
__device__ __forceinline__ int block_prefix(bool flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  __syncthreads();
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < nwarps; ++w) {
    const int c = warp_counts[w];
    if (w < warp) before += c;
    all += c;
  }
  *total = all;
  return before + in_warp;
}

// Sorts sel[0, pow2) descending (key, then lower index first) and writes the first k.
__device__ void topk_sort_emit(unsigned long long* sel, int nsel, int pow2, int k, const float* s, int64_t row,
                               int32_t* out_idx, int64_t idx_stride, float* out_val, int64_t val_stride,
                               int64_t index_offset) {
  const int tid = threadIdx.x;
  for (int size = 2; size <= pow2; size <<= 1) {
    for (int stride2 = size >> 1; stride2 > 0; stride2 >>= 1) {
      for (int i = tid; i < pow2; i += blockDim.x) {
        const int j = i ^ stride2;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const unsigned long long a = sel[i], b = sel[j];
          if (desc ? a < b : a > b) {
            sel[i] = b;
            sel[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += blockDim.x) {
    if (i < nsel) {
      const int64_t col = int64_t(0xffffffffu - uint32_t(sel[i] & 0xffffffffull));
      out_idx[row * idx_stride + i] = int32_t(col + index_offset);
      if (out_val) out_val[row * val_stride + i] = s[col];
    } else {
      out_idx[row * idx_stride + i] = -1;
      if (out_val) out_val[row * val_stride + i] = -INFINITY;
    }
  }
}

// cand / cand_count (may be nullptr): the row's candidates from topk_collect_kernel; when they all
// fit, only they are sorted, else the whole row is selected here.
__global__ void __launch_bounds__(kTopkThreads) topk_kernel(const float* scores, int64_t stride, int64_t cols, int k,
                                                             int32_t* out_idx, int64_t idx_stride, float* out_val,
                                                             int64_t val_stride, int64_t index_offset,
                                                             const unsigned long long* cand, const uint32_t* cand_count) {
  __shared__ uint32_t hist[256];
  __shared__ unsigned long long sel[kMaxTopk];
  __shared__ int warp_counts[kTopkThreads / 32];
  __shared__ uint32_t s_bin, s_kk, s_valid;
  __shared__ int s_nsel;
  const int64_t row = blockIdx.x;
  const float* s = scores + row * stride;
  const int tid = threadIdx.x;
  if (cand && cand_count[row] <= uint32_t(kMaxTopk)) {
    const int nsel = int(cand_count[row]);
    int pow2 = 1;
    while (pow2 < nsel) pow2 <<= 1;
    for (int i = tid; i < pow2; i += blockDim.x) sel[i] = i < nsel ? cand[row * kMaxTopk + i] : 0ull;
    __syncthreads();
    topk_sort_emit(sel, nsel, pow2, k, s, row, out_idx, idx_stride, out_val, val_stride, index_offset);
    return;
  }

  if (tid == 0) {
    s_valid = 0;
    s_nsel = 0;
  }
  __syncthreads();
  uint32_t local_valid = 0;
  for (int64_t i = tid; i < cols; i += blockDim.x) local_valid += order_key(s[i]) != 0u;
  atomicAdd(&s_valid, local_valid);
  __syncthreads();
  const uint32_t valid = s_valid;
  const bool take_all = valid <= uint32_t(k);

  uint32_t thr = 0, kk = 0;
  if (!take_all) {
    uint32_t desired = 0, mask = 0;
    uint32_t remaining = uint32_t(k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      for (int64_t i = tid; i < cols; i += blockDim.x) {
        const uint32_t key = order_key(s[i]);
        if (key != 0u && (key & mask) == desired) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        uint32_t cum = 0;
        for (int b = 255; b >= 0; --b) {
          if (cum + hist[b] >= remaining) {
            s_bin = uint32_t(b);
            s_kk = remaining - cum;
            break;
          }
          cum += hist[b];
        }
      }
      __syncthreads();
      desired |= s_bin << shift;
      mask |= 255u << shift;
      remaining = s_kk;
      __syncthreads();
    }
    thr = desired;  // the k-th largest key; take `remaining` of the keys equal to it, lowest index first
    kk = remaining;
  }

  uint32_t eq_taken = 0;
  for (int64_t base = 0; base < cols; base += blockDim.x) {
    const int64_t i = base + tid;
    const uint32_t key = i < cols ? order_key(s[i]) : 0u;
    const bool gt = take_all ? key != 0u : key > thr;
    const bool eq = !take_all && key != 0u && key == thr;
    int total_eq = 0;
    const int rank = block_prefix(eq, warp_counts, &total_eq);
    const unsigned long long packed = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(i));
    if (gt || (eq && eq_taken + uint32_t(rank) < kk)) sel[atomicAdd(&s_nsel, 1)] = packed;
    eq_taken += uint32_t(total_eq);
  }
  __syncthreads();
  const int nsel = s_nsel;
  int pow2 = 1;
  while (pow2 < nsel) pow2 <<= 1;
  for (int i = nsel + tid; i < pow2; i += blockDim.x) sel[i] = 0ull;
  __syncthreads();
  topk_sort_emit(sel, nsel, pow2, k, s, row, out_idx, idx_stride, out_val, val_stride, index_offset);
}

constexpr int kBins = 65536;          // top 16 bits of the order key
constexpr int kChunkBlock = 256;       // threads of the histogram / collect kernels
constexpr int kChunkElems = 4096;      // row elements per block of those kernels

__global__ void __launch_bounds__(kChunkBlock) topk_hist_kernel(const float* scores, int64_t stride, int64_t cols,
                                                                uint32_t* hist) {
  const int64_t row = blockIdx.y;
  const float* s = scores + row * stride;
  uint32_t* h = hist + row * kBins;
  const int64_t end = min(cols, int64_t(blockIdx.x + 1) * kChunkElems);
  for (int64_t i = int64_t(blockIdx.x) * kChunkElems + threadIdx.x; i < end; i += kChunkBlock) {
    const uint32_t key = order_key(s[i]);
    if (key != 0u) atomicAdd(&h[key >> 16], 1u);
  }
}

// Per row: the bin b* holding the k-th largest valid key (0 when the row has <= k valid keys, so
// every valid key is collected). One block of 1024 threads, 64 bins each, scanned from the top.
__global__ void __launch_bounds__(1024) topk_threshold_kernel(const uint32_t* hist, int k, uint32_t* thr_bin) {
  __shared__ uint32_t sums[1024];
  const uint32_t* h = hist + int64_t(blockIdx.x) * kBins;
  const int tid = threadIdx.x;
  const int first = kBins - 64 * (tid + 1);  // thread 0 owns the top 64 bins
  uint32_t sum = 0;
  for (int b = 0; b < 64; ++b) sum += h[first + b];
  sums[tid] = sum;
  __syncthreads();
  for (int off = 1; off < 1024; off <<= 1) {  // inclusive scan, top bins first
    const uint32_t v = tid >= off ? sums[tid - off] : 0u;
    __syncthreads();
    sums[tid] += v;
    __syncthreads();
  }
  const uint32_t before = tid > 0 ? sums[tid - 1] : 0u;
  if (tid == 1023 && sums[1023] <= uint32_t(k)) thr_bin[blockIdx.x] = 0u;
  if (before < uint32_t(k) && sums[tid] >= uint32_t(k) && sums[1023] > uint32_t(k)) {
    uint32_t cum = before;
    for (int b = 63; b >= 0; --b) {
      cum += h[first + b];
      if (cum >= uint32_t(k)) {
        thr_bin[blockIdx.x] = uint32_t(first + b);
        break;
      }
    }
  }
}

__global__ void __launch_bounds__(kChunkBlock) topk_collect_kernel(const float* scores, int64_t stride, int64_t cols,
                                                                   const uint32_t* thr_bin, unsigned long long* cand,
                                                                   uint32_t* cand_count) {
  const int64_t row = blockIdx.y;
  const float* s = scores + row * stride;
  const uint32_t thr = thr_bin[row];
  const int64_t end = min(cols, int64_t(blockIdx.x + 1) * kChunkElems);
  for (int64_t i = int64_t(blockIdx.x) * kChunkElems + threadIdx.x; i < end; i += kChunkBlock) {
    const uint32_t key = order_key(s[i]);
    if (key != 0u && (key >> 16) >= thr) {
      const uint32_t slot = atomicAdd(&cand_count[row], 1u);
      if (slot < uint32_t(kMaxTopk))
        cand[row * kMaxTopk + slot] = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(i));
    }
  }
}

// --- prefill, official numerics: bf16 tensor cores --------------------------------------------

constexpr int kTcKeys = 128;     // keys per block (8 warps x m16)
constexpr int kTcQueries = 2;    // query tokens per pass: N = 2 x 64 heads
constexpr int kTcHeadsPad = 64;  // heads padded to 64 (absent heads: q = 0, w = 0)
constexpr int kTcMaxDim = 128;
constexpr int kTcLd = kTcMaxDim + 8;  // bf16 row stride: conflict-free fragment loads

size_t indexer_tc_smem_bytes() {
  return (size_t(kTcKeys) + size_t(kTcQueries) * kTcHeadsPad) * kTcLd * 2 + size_t(kTcQueries) * kTcHeadsPad * 4;
}

__device__ __forceinline__ uint32_t lds32_bf16(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Official numerics (bf16_arith), where q and the keys hold FP4-quantized values (Hadamard, then
// e2m1 x ue8m0 per 32: exact in bf16, so staging them as bf16 is exact whatever their storage):
// block x stages 128 keys once, then walks query pairs (grid-stride over y); per pair the
// 128 keys x (2 x 64 heads) dot products run on mma.sync m16n8k16 bf16 with fp32 accumulation
// (keys as A, q as B: warp w owns keys [16w, 16w + 16), each thread 2 keys x 2 heads of each n8
// tile), then per (query, key) the reference's sum over heads of bf16(max(bf16(dot), 0) *
// bf16(w * scale)), in fp32 and in head order, rounded to bf16. Heads past nh add +0 at the end.
// One part only (prefill): a block's staged keys serve all of its queries.
// Bounds (256, 3): 80 registers, no spill, three blocks (~70 KB of shared memory each) per SM;
// without the hint ptxas took 99 once rows could be paged (two blocks per SM).
__global__ void __launch_bounds__(256, 3) indexer_scores_tc_kernel(const __grid_constant__ IdxArgs a) {
  const IdxPart& p = a.parts[0];
  const int64_t n = a.n;
  const Act q = p.q, keys = p.keys, w = p.w;
  const KvRowsDev ckeys = p.ckeys;
  float* scores = p.scores;
  const int64_t score_stride = p.score_stride, key_begin = p.key_begin, key_end = p.key_end, pos_begin = p.pos_begin;
  const int h_begin = a.h_begin, nh = a.nh, dim = a.dim, ratio = a.ratio;
  const float weight_scale = a.weight_scale;
  const bool accumulate = a.accumulate;
  extern __shared__ __align__(16) unsigned char idx_smem[];
  uint16_t* ks = reinterpret_cast<uint16_t*>(idx_smem);      // [kTcKeys][kTcLd]
  uint16_t* qs = ks + kTcKeys * kTcLd;                         // [kTcQueries * 64][kTcLd]
  float* ws = reinterpret_cast<float*>(qs + kTcQueries * kTcHeadsPad * kTcLd);  // [kTcQueries * 64]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t j0 = key_begin + int64_t(blockIdx.x) * kTcKeys;
  __shared__ const uint8_t* krows[kTcKeys];  // compact: the staged keys' bytes, found once per key
  if (ckeys.data && tid < kTcKeys && j0 + tid < key_end) krows[tid] = ckeys.row(j0 + tid);
  __syncthreads();
  for (int i = tid; i < kTcKeys * dim; i += blockDim.x) {
    const int r = i / dim, c = i % dim;
    const int64_t j = j0 + r;
    const float v = j >= key_end ? 0.f : (ckeys.data ? ckeys.fp4_ld(krows[r], c) : keys.ld(j, c));
    ks[r * kTcLd + c] = f32_to_bf16(v);
  }
  for (int64_t t0 = int64_t(blockIdx.y) * kTcQueries; t0 < n; t0 += int64_t(gridDim.y) * kTcQueries) {
    __syncthreads();  // the previous pair's q and w are no longer read
    for (int i = tid; i < kTcQueries * kTcHeadsPad * dim; i += blockDim.x) {
      const int row = i / dim, c = i % dim, qi = row / kTcHeadsPad, hl = row % kTcHeadsPad;
      const int64_t t = t0 + qi;
      qs[row * kTcLd + c] =
          (t < n && hl < nh) ? f32_to_bf16(q.ld(t, int64_t(h_begin + hl) * dim + c)) : uint16_t(0);
    }
    if (tid < kTcQueries * kTcHeadsPad) {
      const int qi = tid / kTcHeadsPad, hl = tid % kTcHeadsPad;
      const int64_t t = t0 + qi;
      ws[tid] = (t < n && hl < nh) ? round_bf16(w.ld(t, h_begin + hl) * weight_scale) : 0.f;
    }
    __syncthreads();
    float acc[kTcQueries * kTcHeadsPad / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTcQueries * kTcHeadsPad / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    const uint16_t* ka = ks + (warp * 16 + gid) * kTcLd + tig * 2;
    for (int k0 = 0; k0 < dim; k0 += 16) {
      const uint32_t a0 = lds32_bf16(ka + k0), a1 = lds32_bf16(ka + 8 * kTcLd + k0);
      const uint32_t a2 = lds32_bf16(ka + k0 + 8), a3 = lds32_bf16(ka + 8 * kTcLd + k0 + 8);
#pragma unroll
      for (int nt = 0; nt < kTcQueries * kTcHeadsPad / 8; ++nt) {
        const uint16_t* b = qs + (nt * 8 + gid) * kTcLd + tig * 2 + k0;
        mma_bf16_16816(acc[nt], a0, a1, a2, a3, lds32_bf16(b), lds32_bf16(b + 8));
      }
    }
    // acc[nt][0..1]: key gid, heads nt * 8 + 2 tig + {0, 1}; acc[nt][2..3]: key gid + 8. Each
    // becomes its head's term; the 64 terms of a (query, key) are then added in head order, as the
    // reference does (every lane of the row's four gathers them by shuffles), so the fp32 sum and its
    // bf16 rounding are the reference's bit for bit.
#pragma unroll
    for (int nt = 0; nt < kTcQueries * kTcHeadsPad / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float wv = ws[nt * 8 + tig * 2 + e];
        acc[nt][e] = round_bf16(fmaxf(round_bf16(acc[nt][e]), 0.f) * wv);
        acc[nt][2 + e] = round_bf16(fmaxf(round_bf16(acc[nt][2 + e]), 0.f) * wv);
      }
    }
#pragma unroll
    for (int qi = 0; qi < kTcQueries; ++qi) {
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int nt = qi * 8; nt < qi * 8 + 8; ++nt) {
#pragma unroll
        for (int src = 0; src < 4; ++src) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            sum0 += __shfl_sync(0xffffffffu, acc[nt][e], gid * 4 + src);
            sum1 += __shfl_sync(0xffffffffu, acc[nt][2 + e], gid * 4 + src);
          }
        }
      }
      const int64_t t = t0 + qi;
      if (tig != 0 || t >= n) continue;
      const int64_t visible = (pos_begin + t + 1) / ratio;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t j = j0 + warp * 16 + gid + half * 8;
        if (j >= key_end) continue;
        float* out = scores + t * score_stride + (j - key_begin);
        const float v = round_bf16(half ? sum1 : sum0);
        *out = j >= visible ? -INFINITY : (accumulate ? *out + v : v);
      }
    }
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
  CHECK(p.scores.dtype == DType::kF32 && p.scores.device == Device::kCuda) << "indexer scores: F32 device view";
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
  d.scores = static_cast<float*>(p.scores.data);
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

void launch_indexer_scores(const IndexerScoresParams& p, cudaStream_t s, bool tensor_cores) {
  launch_indexer_scores_batch(IndexerScoresBatchParams{&p, 1}, s, tensor_cores);
}

void launch_indexer_scores_batch(const IndexerScoresBatchParams& batch, cudaStream_t s, bool tensor_cores) {
  if (batch.num_parts == 0) return;
  const IndexerScoresParams& p0 = batch.parts[0];
  const int64_t heads = p0.q.shape[1], dim = p0.q.shape[2];
  const int h_end = p0.h_end < 0 ? int(heads) : p0.h_end;
  const int nh = h_end - p0.h_begin;
  CHECK(nh >= 1 && nh <= kMaxIndexHeads) << "indexer heads " << nh << " (at most " << kMaxIndexHeads << ")";
  CHECK(dim % 32 == 0 && dim <= 512) << "indexer head dim " << dim;
  const size_t smem = size_t(nh * dim + nh) * 4;
  CHECK_LE(smem, size_t(160 * 1024));
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(indexer_scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024));
    attr_set = true;
  }
  auto args = std::make_unique<IdxArgs>();  // ~32 KB: not on the stack
  IdxArgs& a = *args;
  a.h_begin = p0.h_begin;
  a.nh = nh;
  a.dim = int(dim);
  a.ratio = p0.ratio;
  a.weight_scale = p0.weight_scale;
  a.accumulate = p0.accumulate;
  a.bf16_arith = p0.bf16_arith;
  int64_t max_keys = 0;
  bool has_keys = false;
  // A single part of prefill size under the official numerics: the tensor-core kernel, unless
  // `tensor_cores` is off.
  auto launch = [&] {
    if (a.num_parts == 0 || max_keys == 0) return;
    if (a.num_parts == 1 && a.bf16_arith && tensor_cores && a.n >= 16 && dim % 16 == 0 && dim <= kTcMaxDim && has_keys) {
      static bool tc_attr_set = false;
      if (!tc_attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(indexer_scores_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(indexer_tc_smem_bytes())));
        tc_attr_set = true;
      }
      // Query pairs per block: about four waves of blocks in all, each block's keys staged once.
      int sms = 0, dev = 0;
      CUDA_CHECK(cudaGetDevice(&dev));
      CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      const int64_t key_tiles = ceil_div(max_keys, kTcKeys), pairs = ceil_div(a.n, kTcQueries);
      const int64_t y = std::min(pairs, std::max<int64_t>(1, ceil_div(4 * int64_t(sms), key_tiles)));
      const dim3 tc_grid(grid_x(key_tiles, "indexer_scores (tensor cores)"), grid_yz(y));
      indexer_scores_tc_kernel<<<tc_grid, 256, indexer_tc_smem_bytes(), s>>>(a);
      launch_check("indexer_scores (tensor cores)", s);
      return;
    }
    const dim3 grid(grid_x_for(max_keys, kKeysPerBlock, "indexer_scores"), grid_yz(a.n));
    indexer_scores_kernel<<<grid, kKeysPerBlock, smem, s>>>(a);
    launch_check("indexer_scores", s);
  };
  auto flush = [&] {
    launch();
    a.num_parts = 0;
    a.n = max_keys = 0;
    has_keys = false;
  };
  for (int64_t i = 0; i < batch.num_parts; ++i) {
    const IndexerScoresParams& p = batch.parts[i];
    CHECK(p.h_begin == p0.h_begin && p.h_end == p0.h_end && p.weight_scale == p0.weight_scale && p.ratio == p0.ratio &&
          p.accumulate == p0.accumulate && p.bf16_arith == p0.bf16_arith)
        << "indexer batch: the parts must share heads, scale, ratio and numerics";
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

void launch_topk(const TopkParams& p, cudaStream_t s) {
  const int64_t rows = p.scores.shape[0], cols = p.scores.shape[1];
  CHECK(p.scores.dtype == DType::kF32 && p.scores.device == Device::kCuda) << "topk scores: F32 device view";
  CHECK_EQ(p.scores.stride[1], 1);
  CHECK(p.out_idx.dtype == DType::kI32) << "topk out_idx: I32";
  CHECK_EQ(act_row_width(p.out_idx), p.k);
  CHECK(p.k >= 1 && p.k <= kMaxTopk) << "topk k=" << p.k << " (at most " << kMaxTopk << ")";
  CHECK_LT(cols, int64_t(1) << 31);
  float* vals = nullptr;
  int64_t val_stride = 0;
  if (p.out_values.data) {
    CHECK(p.out_values.dtype == DType::kF32);
    vals = static_cast<float*>(p.out_values.data);
    val_stride = p.out_values.stride[0];
  }
  if (rows == 0) return;
  const float* scores = static_cast<const float*>(p.scores.data);
  const int64_t stride = p.scores.stride[0];
  // Few long rows (decode): narrow each row with many blocks first (see the file comment).
  const bool narrow = rows <= 16 && cols >= 4 * kChunkElems;  // rows on gridDim.y: few by construction
  void* work = nullptr;
  unsigned long long* cand = nullptr;
  uint32_t* cand_count = nullptr;
  if (narrow) {
    const size_t hist_bytes = size_t(rows) * kBins * 4, cand_bytes = size_t(rows) * kMaxTopk * 8;
    const size_t small_bytes = size_t(rows) * 8;
    work = stream_alloc(hist_bytes + cand_bytes + small_bytes, s);
    auto* hist = static_cast<uint32_t*>(work);
    cand = reinterpret_cast<unsigned long long*>(static_cast<char*>(work) + hist_bytes);
    cand_count = reinterpret_cast<uint32_t*>(static_cast<char*>(work) + hist_bytes + cand_bytes);
    uint32_t* thr_bin = cand_count + rows;
    CUDA_CHECK(cudaMemsetAsync(hist, 0, hist_bytes, s));
    CUDA_CHECK(cudaMemsetAsync(cand_count, 0, size_t(rows) * 4, s));
    const dim3 grid{unsigned(ceil_div(cols, kChunkElems)), unsigned(rows)};
    topk_hist_kernel<<<grid, kChunkBlock, 0, s>>>(scores, stride, cols, hist);
    topk_threshold_kernel<<<unsigned(rows), 1024, 0, s>>>(hist, p.k, thr_bin);
    topk_collect_kernel<<<grid, kChunkBlock, 0, s>>>(scores, stride, cols, thr_bin, cand, cand_count);
    launch_check("topk narrow", s);
  }
  topk_kernel<<<grid_x(rows, "topk"), kTopkThreads, 0, s>>>(scores, stride, cols, p.k, static_cast<int32_t*>(p.out_idx.data),
                                                      p.out_idx.stride[0], vals, val_stride, p.index_offset, cand,
                                                      cand_count);
  launch_check("topk", s);
  if (work) stream_free(work, s);
}

}  // namespace v4rt::kernels::cuda
