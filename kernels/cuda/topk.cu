// SPDX-License-Identifier: MIT
// Top-k selection of the lightning indexer's scores (spec §5.5): radix select on order-preserving
// keys, then an index-ordered compaction so ties go to the lower index, then a bitonic sort of the
// k survivors; never a full sort of the row. Long rows of few-row calls (decode: one row of up to
// 256K keys) are first narrowed by many blocks: a 16-bit histogram of the order keys, the bin
// holding the k-th largest, and a compaction of every element at or above that bin; one block then
// sorts the <= 2048 candidates (the full single-block select remains the fallback). Many long rows
// (prefill: 8,192 rows of up to 256K keys) take one block per row with 12-bit digits in a shared
// histogram and a 4,096-candidate buffer: two reads of a row where the full select takes six.
// Scores come as F32 or as bf16 (the official numerics' indexer scores are bf16 values; half the
// bytes to read): every kernel reads them through score_at, so both select the same columns.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kTopkThreads = 512;
constexpr int kMaxTopk = 2048;

// Score i of a row, F32 or bf16.
__device__ __forceinline__ float score_at(const float* s, int64_t i) { return s[i]; }
__device__ __forceinline__ float score_at(const uint16_t* s, int64_t i) { return bf16_to_f32(s[i]); }

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
template <class T>
__device__ void topk_sort_emit(unsigned long long* sel, int nsel, int pow2, int k, const T* s, int64_t row,
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
      if (out_val) out_val[row * val_stride + i] = score_at(s, col);
    } else {
      out_idx[row * idx_stride + i] = -1;
      if (out_val) out_val[row * val_stride + i] = -INFINITY;
    }
  }
}

// The bin of hist[256] holding the remaining-th largest key, counted from the top bin: *bin, and
// *rest, how many of the bin's keys the selection takes; *total: the sum of all bins. Warp 0 calls
// it (lane L owns bins 255 - 8L down to 248 - 8L; a warp scan finds the owner): the serial scan of
// 256 bins by one thread it replaces was most of a decode call's time.
__device__ __forceinline__ void topk_select_bin256(const uint32_t* hist, uint32_t remaining, uint32_t* bin,
                                                   uint32_t* rest, uint32_t* total) {
  const int lane = threadIdx.x & 31;
  const int top = 255 - 8 * lane;
  uint32_t c[8], sum = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    c[j] = hist[top - j];
    sum += c[j];
  }
  uint32_t incl = sum;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  const uint32_t all = __shfl_sync(0xffffffffu, incl, 31);
  if (lane == 0) *total = all;
  uint32_t cum = incl - sum;
  if (cum < remaining && incl >= remaining) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (cum + c[j] >= remaining) {
        *bin = uint32_t(top - j);
        *rest = remaining - cum;
        break;
      }
      cum += c[j];
    }
  }
}

// cand / cand_count (may be nullptr): the row's candidates from topk_collect_kernel; when they all
// fit, only they are sorted, else the whole row is selected here.
template <class T>
__global__ void __launch_bounds__(kTopkThreads) topk_kernel(const T* scores, int64_t stride, int64_t cols, int k,
                                                             int32_t* out_idx, int64_t idx_stride, float* out_val,
                                                             int64_t val_stride, int64_t index_offset,
                                                             const unsigned long long* cand, const uint32_t* cand_count) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ uint32_t hist[256];
  __shared__ unsigned long long sel[kMaxTopk];
  __shared__ int warp_counts[kTopkThreads / 32];
  __shared__ uint32_t s_bin, s_kk, s_valid;
  __shared__ int s_nsel;
  const int64_t row = blockIdx.x;
  const T* s = scores + row * stride;
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

  if (tid == 0) s_nsel = 0;
  // Radix select over 8-bit digits. The first digit's histogram also counts the valid keys: a row
  // of <= k of them takes them all.
  uint32_t thr = 0, kk = 0;
  bool take_all = false;
  {
    uint32_t desired = 0, mask = 0;
    uint32_t remaining = uint32_t(k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      for (int64_t i = tid; i < cols; i += blockDim.x) {
        const uint32_t key = order_key(score_at(s, i));
        if (key != 0u && (key & mask) == desired) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid < 32) topk_select_bin256(hist, remaining, &s_bin, &s_kk, &s_valid);
      __syncthreads();
      if (shift == 24 && s_valid <= uint32_t(k)) {
        take_all = true;
        break;
      }
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
    const uint32_t key = i < cols ? order_key(score_at(s, i)) : 0u;
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

template <class T>
__global__ void __launch_bounds__(kChunkBlock) topk_hist_kernel(const T* scores, int64_t stride, int64_t cols,
                                                                uint32_t* hist) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t row = blockIdx.y;
  const T* s = scores + row * stride;
  uint32_t* h = hist + row * kBins;
  const int64_t end = min(cols, int64_t(blockIdx.x + 1) * kChunkElems);
  for (int64_t i = int64_t(blockIdx.x) * kChunkElems + threadIdx.x; i < end; i += kChunkBlock) {
    const uint32_t key = order_key(score_at(s, i));
    if (key != 0u) atomicAdd(&h[key >> 16], 1u);
  }
}

// Per row: the bin b* holding the k-th largest valid key (0 when the row has <= k valid keys, so
// every valid key is collected). One block of 1024 threads, 64 bins each, scanned from the top.
__global__ void __launch_bounds__(1024) topk_threshold_kernel(const uint32_t* hist, int k, uint32_t* thr_bin) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
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

template <class T>
__global__ void __launch_bounds__(kChunkBlock) topk_collect_kernel(const T* scores, int64_t stride, int64_t cols,
                                                                   const uint32_t* thr_bin, unsigned long long* cand,
                                                                   uint32_t* cand_count) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t row = blockIdx.y;
  const T* s = scores + row * stride;
  const uint32_t thr = thr_bin[row];
  const int64_t end = min(cols, int64_t(blockIdx.x + 1) * kChunkElems);
  for (int64_t i = int64_t(blockIdx.x) * kChunkElems + threadIdx.x; i < end; i += kChunkBlock) {
    const uint32_t key = order_key(score_at(s, i));
    if (key != 0u && (key >> 16) >= thr) {
      const uint32_t slot = atomicAdd(&cand_count[row], 1u);
      if (slot < uint32_t(kMaxTopk))
        cand[row * kMaxTopk + slot] = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(i));
    }
  }
}

// --- top-k of many long rows (prefill) ----------------------------------------------------------

constexpr int kRowTopkThreads = 512;
constexpr int kRowTopkCap = 4096;          // candidates held (and sorted) in shared memory
constexpr int kRowTopkBins = 4096;         // 12-bit digits
constexpr int64_t kRowTopkMinCols = 16384;  // shorter rows: topk_kernel
constexpr size_t kRowTopkSmem = size_t(kRowTopkCap) * 8 + size_t(kRowTopkBins) * 4;  // 49,152 B
static_assert(kRowTopkCap >= kMaxTopk, "every selected key fits the candidates");

// f(value, column) of the scores in one 16-byte load at column c: four F32 or eight bf16.
template <class T, class F>
__device__ __forceinline__ void each_of16(const uint4& v, int64_t c, F& f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (sizeof(T) == 4) {
      f(__uint_as_float(u[j]), c + j);
    } else {
      f(__uint_as_float(u[j] << 16), c + 2 * j);
      f(__uint_as_float(u[j] & 0xffff0000u), c + 2 * j + 1);
    }
  }
}

// f(value, column) over the row, 16-byte loads (rows 16-byte aligned), four in flight per thread,
// then the scalar tail.
template <class T, class F>
__device__ __forceinline__ void row_for_each(const T* s, int64_t cols, F f) {
  constexpr int kPer = 16 / int(sizeof(T));  // scores a load
  const uint4* s16 = reinterpret_cast<const uint4*>(s);
  const int64_t n16 = cols / kPer;
  int64_t i = threadIdx.x;
  for (; i + 3 * kRowTopkThreads < n16; i += 4 * kRowTopkThreads) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = __ldcs(s16 + i + u * kRowTopkThreads);
#pragma unroll
    for (int u = 0; u < 4; ++u) each_of16<T>(v[u], kPer * (i + u * kRowTopkThreads), f);
  }
  for (; i < n16; i += kRowTopkThreads) each_of16<T>(__ldcs(s16 + i), kPer * i, f);
  for (int64_t c = kPer * n16 + threadIdx.x; c < cols; c += kRowTopkThreads) f(score_at(s, c), c);
}

// The bin of hist[nbins] (nbins a power of two, 256 .. 4096) holding the remaining-th largest key,
// counted from the top bin: *bin, the count of the bins above it (*above) and its own (*inbin);
// *total: the sum of all bins. Needs total >= remaining >= 1 (else only *total is meaningful).
// Every thread calls it; thread t owns nbins / 512 (or one) bins from the top, a block scan finds
// the owner.
__device__ void row_topk_select_bin(const uint32_t* hist, int nbins, uint32_t remaining, uint32_t* warp_sums,
                                    uint32_t* bin, uint32_t* above, uint32_t* inbin, uint32_t* total) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int per = nbins >= kRowTopkThreads ? nbins / kRowTopkThreads : 1, owners = nbins / per;
  const int first = nbins - per * (tid + 1);
  uint32_t sum = 0;
  if (tid < owners)
    for (int b = 0; b < per; ++b) sum += hist[first + b];
  uint32_t x = sum;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  uint32_t before = 0, all = 0;
  for (int w = 0; w < kRowTopkThreads / 32; ++w) {
    if (w < warp) before += warp_sums[w];
    all += warp_sums[w];
  }
  const uint32_t incl = before + x, excl = incl - sum;
  if (tid == 0) *total = all;
  if (tid < owners && excl < remaining && incl >= remaining) {
    uint32_t cum = excl;
    for (int b = per - 1; b >= 0; --b) {
      const uint32_t c = hist[first + b];
      if (cum + c >= remaining) {
        *bin = uint32_t(first + b);
        *above = cum;
        *inbin = c;
        break;
      }
      cum += c;
    }
  }
  __syncthreads();
}

// One block per row, for many rows of >= kRowTopkMinCols scores (prefill: 8,192 rows of up to
// 256K keys), selecting exactly what topk_kernel selects. The selection is the top k of the packed
// (order key << 32 | ~column) values, all distinct (ties to the lower column), so the first k of
// any sorted superset of it are the result: a radix select over 12 / 12 / 8-bit digits of the
// order key narrows the row until the keys above the current bin plus the bin itself fit the
// candidate buffer (4,096), which is then sorted (topk_sort_emit, as topk_kernel). Pass 1
// histograms the top 12 bits; pass 2 appends the keys above the k-th's bin and, when they fit,
// the bin's own keys (else it histograms their next digit, and pass 3 goes on likewise). Scores
// are bf16 values (16 significant bits), so two reads of the row are the rule: a third and fourth
// only for a bin of > 4,096 near the k-th key (at 24 bits that is one value: a tie); then the tie
// is cut in column order as topk_kernel does (block-ordered compaction, a fifth read).
// topk_kernel reads a row six times (valid count, four 8-bit digits, compaction; the last with
// two block barriers per 512 scores); here 16-byte streaming loads, 4 in flight per thread.
// Shared memory: 32 KB of candidates + 16 KB of histogram (dynamic, 49,152 B); 512 threads,
// __launch_bounds__(512, 3): 40 registers, three blocks (1,536 threads, 148 KB) per SM.
template <class T>
__global__ void __launch_bounds__(kRowTopkThreads, 3)
    topk_rows_kernel(const T* scores, int64_t stride, int64_t cols, int k, int32_t* out_idx, int64_t idx_stride,
                     float* out_val, int64_t val_stride, int64_t index_offset) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) unsigned long long rt_smem[];
  unsigned long long* sel = rt_smem;                                // [kRowTopkCap]
  uint32_t* hist = reinterpret_cast<uint32_t*>(sel + kRowTopkCap);  // [kRowTopkBins]
  __shared__ uint32_t warp_sums[kRowTopkThreads / 32];
  __shared__ int warp_counts[kRowTopkThreads / 32];
  __shared__ uint32_t s_bin, s_above, s_inbin, s_total;
  __shared__ int s_nsel;
  const int64_t row = blockIdx.x;
  const T* s = scores + row * stride;
  const int tid = threadIdx.x;
  auto pack = [](uint32_t key, int64_t c) {
    return (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(c));
  };

  for (int b = tid; b < kRowTopkBins; b += kRowTopkThreads) hist[b] = 0;
  if (tid == 0) s_nsel = 0;
  __syncthreads();
  row_for_each(s, cols, [&](float v, int64_t) {
    const uint32_t key = order_key(v);
    if (key != 0u) atomicAdd(&hist[key >> 20], 1u);
  });
  __syncthreads();
  row_topk_select_bin(hist, kRowTopkBins, uint32_t(k), warp_sums, &s_bin, &s_above, &s_inbin, &s_total);
  if (s_total <= uint32_t(k)) {  // every valid key is selected
    row_for_each(s, cols, [&](float v, int64_t c) {
      const uint32_t key = order_key(v);
      if (key != 0u) sel[atomicAdd(&s_nsel, 1)] = pack(key, c);
    });
  } else {
    uint32_t desired = 0, mask = 0, remaining = uint32_t(k);
    for (int level = 0; level < 3; ++level) {
      const int shift = level == 0 ? 20 : level == 1 ? 8 : 0;
      const uint32_t dmask = level == 2 ? 255u : 4095u;
      const int next_shift = level == 0 ? 8 : 0;
      const uint32_t next_dmask = level == 0 ? 4095u : 255u;
      const uint32_t b = s_bin, above = s_above, inbin = s_inbin;
      const bool fits = uint32_t(s_nsel) + above + inbin <= uint32_t(kRowTopkCap);
      const bool last = level == 2;
      __syncthreads();  // s_* read; the histogram is read no more
      if (!fits && !last)
        for (int i = tid; i < kRowTopkBins; i += kRowTopkThreads) hist[i] = 0;
      __syncthreads();
      row_for_each(s, cols, [&](float v, int64_t c) {
        const uint32_t key = order_key(v);
        if (key == 0u || (key & mask) != desired) return;
        const uint32_t d = (key >> shift) & dmask;
        if (d > b || (d == b && fits)) sel[atomicAdd(&s_nsel, 1)] = pack(key, c);
        else if (d == b && !last) atomicAdd(&hist[(key >> next_shift) & next_dmask], 1u);
      });
      __syncthreads();
      if (fits) break;
      desired |= b << shift;
      mask |= dmask << shift;
      remaining -= above;
      if (last) {
        // The k-th key is `desired`, tied more than the buffer holds: take the `remaining` lowest
        // columns holding it, in column order (as topk_kernel).
        uint32_t eq_taken = 0;
        for (int64_t base = 0; base < cols && eq_taken < remaining; base += kRowTopkThreads) {
          const int64_t i = base + tid;
          const bool eq = i < cols && order_key(score_at(s, i)) == desired;
          int total_eq = 0;
          const int rank = block_prefix(eq, warp_counts, &total_eq);
          if (eq && eq_taken + uint32_t(rank) < remaining) sel[atomicAdd(&s_nsel, 1)] = pack(desired, i);
          eq_taken += uint32_t(total_eq);
        }
        __syncthreads();
        break;
      }
      row_topk_select_bin(hist, level == 0 ? 4096 : 256, remaining, warp_sums, &s_bin, &s_above, &s_inbin, &s_total);
    }
  }
  __syncthreads();
  const int nsel = s_nsel;
  int pow2 = 1;
  while (pow2 < nsel) pow2 <<= 1;
  for (int i = nsel + tid; i < pow2; i += kRowTopkThreads) sel[i] = 0ull;
  __syncthreads();
  topk_sort_emit(sel, nsel, pow2, k, s, row, out_idx, idx_stride, out_val, val_stride, index_offset);
}

// The launches of one top-k call over scores of type T (float, or uint16_t bf16 codes).
template <class T>
void run_topk(const TopkParams& p, const T* scores, float* vals, int64_t val_stride, cudaStream_t s) {
  const int64_t rows = p.scores.shape[0], cols = p.scores.shape[1];
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
    memset_async(hist, 0, hist_bytes, s);
    memset_async(cand_count, 0, size_t(rows) * 4, s);
    const dim3 grid{unsigned(ceil_div(cols, kChunkElems)), unsigned(rows)};
    launch(topk_hist_kernel<T>, grid, kChunkBlock, 0, s)(scores, stride, cols, hist);
    launch(topk_threshold_kernel, unsigned(rows), 1024, 0, s)(hist, p.k, thr_bin);
    launch(topk_collect_kernel<T>, grid, kChunkBlock, 0, s)(scores, stride, cols, thr_bin, cand, cand_count);
    launch_check("topk narrow", s);
  }
  // Many long rows (prefill), rows 16-byte aligned: the row-per-block radix select with shared
  // histograms.
  if (!narrow && cols >= kRowTopkMinCols && (reinterpret_cast<uintptr_t>(scores) & 15) == 0 &&
      (stride * int64_t(sizeof(T))) % 16 == 0) {
    static std::atomic<uint64_t> rows_attr_set;
    set_smem_once(topk_rows_kernel<T>, kRowTopkSmem, false, &rows_attr_set);
    launch(topk_rows_kernel<T>, grid_x(rows, "topk"), kRowTopkThreads, kRowTopkSmem, s)(
        scores, stride, cols, p.k, static_cast<int32_t*>(p.out_idx.data), p.out_idx.stride[0], vals, val_stride,
        p.index_offset);
    launch_check("topk rows", s);
    return;
  }
  launch(topk_kernel<T>, grid_x(rows, "topk"), kTopkThreads, 0, s)(scores, stride, cols, p.k,
                                                                    static_cast<int32_t*>(p.out_idx.data),
                                                                    p.out_idx.stride[0], vals, val_stride,
                                                                    p.index_offset, cand, cand_count);
  launch_check("topk", s);
  if (work) stream_free(work, s);
}

}  // namespace

void launch_topk(const TopkParams& p, cudaStream_t s) {
  const int64_t rows = p.scores.shape[0], cols = p.scores.shape[1];
  CHECK((p.scores.dtype == DType::kF32 || p.scores.dtype == DType::kBF16) && p.scores.device == Device::kCuda)
      << "topk scores: F32 or BF16 device view";
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
  if (p.scores.dtype == DType::kBF16) run_topk(p, static_cast<const uint16_t*>(p.scores.data), vals, val_stride, s);
  else run_topk(p, static_cast<const float*>(p.scores.data), vals, val_stride, s);
}

}  // namespace v4rt::kernels::cuda
