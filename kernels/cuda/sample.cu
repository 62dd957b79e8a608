// SPDX-License-Identifier: MIT
// Token sampling (SampleParams, kernels/backend.h): one launch for the whole batch, one 1024-thread
// block per row, nothing but the ids and the requested logprobs written.
//
// Method (per row). Logits are ordered by a 32-bit key that sorts like the float (NaN lowest, -0
// as +0); ties between equal keys go to the lower id, as in the CPU op.
//  1. One pass: the first maximum (key desc, id asc), and the online max / Σ exp of log_softmax at
//     temperature 1 (the logprobs). Greedy rows stop here.
//  2. Weights w = exp((l - max) / temperature) in fp32 (the CPU op's expression), held as fixed
//     point with 46 fractional bits, so every mass is an exact, order-independent integer sum
//     (deterministic under shared-memory atomics; at most 2^-46 per weight away from the CPU op's
//     fp64 sums, weights below 2^-47 count as 0).
//  3. top-k and top-p select a prefix of the key order without sorting: a radix select over the
//     key in three digits (11, 11, 10 bits; a 2048-bin histogram of counts and masses per pass,
//     the crossing bin found by a warp scan) finds the key K at which the prefix count reaches k
//     (or the prefix mass reaches ceil(top_p * mass of the top-k prefix)), the count and mass above
//     it, and how many of the ties at K the prefix takes (the lowest ids; for top-p the number
//     follows from the tie weight arithmetically). The nucleus is searched among keys above the
//     top-k key, or inside its ties.
//  4. The draw: target = floor(u * kept mass), u = sample_uniform(seed, position, draw); every
//     thread owns a contiguous segment of ids, sums its kept weights (and tie ranks, when only part
//     of the ties at K are kept), a block scan gives each segment its start, and the one segment
//     holding the target walks to the first id whose cumulative weight exceeds it.
//  5. top-n logprobs: a radix select by count for the n-th key, the n ids collected (ties by
//     rank as in 4) and ordered in shared memory.
// Reads of the row: 1 (greedy) up to 1 + 3 (top-k) + 3 (top-p) + 2..3 (draw) + 3..5 (top-n); a
// row of 129,280 F32 logits (517 KB) stays in L2 between passes for moderate batches. A few rows
// (decode at small batch) are instead spread over many blocks ("Split rows" below): three reads
// of the row by all SMs, then the passes above over a short candidate list.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "kernels/philox.h"

namespace v4rt::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 2048;                 // the widest radix digit (11 bits)
constexpr int kMaxTopLogprobs = 64;         // top-n columns the kernel collects (the API allows 20)
constexpr double kFixedOne = 70368744177664.0;  // 2^46: fixed-point weight 1.0

using u64 = unsigned long long;

__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0u;  // NaN below everything
  uint32_t u = __float_as_uint(f);
  if (f == 0.0f) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Fixed-point weight of logit v: exp((v - mx) / temperature) * 2^46, rounded to nearest.
__device__ __forceinline__ u64 fixed_weight(float v, float mx, float temperature) {
  const float w = expf((v - mx) / temperature);
  return w > 0.0f ? __double2ull_rn(double(w) * kFixedOne) : 0ull;  // NaN: 0
}

struct Logits {
  const void* data;
  bool bf16;
  __device__ __forceinline__ float ld(int64_t i) const {
    return bf16 ? __uint_as_float(uint32_t(static_cast<const uint16_t*>(data)[i]) << 16) : static_cast<const float*>(data)[i];
  }
};

// What the selection passes walk: a row's whole vocabulary (element j is id j), or the candidates
// of a split row (every id above a key bound, in id order, in shared memory).
struct FullRow {
  Logits l;
  int64_t n;
  __device__ __forceinline__ float ld(int64_t j) const { return l.ld(j); }
  __device__ __forceinline__ int32_t id(int64_t j) const { return int32_t(j); }
};
struct CandRow {
  const float* v;
  const int32_t* ids;
  int64_t n;
  __device__ __forceinline__ float ld(int64_t j) const { return v[j]; }
  __device__ __forceinline__ int32_t id(int64_t j) const { return ids[j]; }
};

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
  const int lane = int(threadIdx.x & 31);
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

struct Shared {
  uint32_t count[kBins];
  u64 mass[kBins];
  u64 scan[kWarps + 1];
  u64 best[kWarps];
  float om[kWarps], os[kWarps];
  // radix-select result of one pass (written by warp 0)
  uint32_t sel_bin, sel_above_count, sel_eq_count;
  u64 sel_above_mass;
  int32_t chosen;
  int32_t top_count;
  u64 top[kMaxTopLogprobs];  // (key << 32) | (0xffffffff - id): larger = earlier in the order
};

// Block-wide exclusive scan of v (all threads call); *total = the block's sum.
template <typename T>
__device__ T block_exclusive_scan(T v, T* total, Shared& sm) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  const T incl = warp_inclusive_scan(v);
  if (lane == 31) sm.scan[warp] = u64(incl);
  __syncthreads();
  if (warp == 0) {
    const T w = lane < kWarps ? T(sm.scan[lane]) : T(0);
    const T wi = warp_inclusive_scan(w);
    if (lane < kWarps) sm.scan[lane] = u64(wi - w);
    if (lane == kWarps - 1) sm.scan[kWarps] = u64(wi);
  }
  __syncthreads();
  const T out = T(sm.scan[warp]) + incl - v;
  *total = T(sm.scan[kWarps]);
  __syncthreads();
  return out;
}

struct Selection {
  uint32_t key = 0;          // the boundary key K
  uint32_t above_count = 0;  // set elements with key > K
  u64 above_mass = 0;
  uint32_t eq_count = 0;     // set elements with key == K
};

// Radix select over the set {i : key_i > lo} (has_lo) or every id: the key K at which the
// cumulative count (by_mass false) or fixed-point mass (by_mass true), taken from the largest key
// down, first reaches `want` (1 <= want <= the set's total). Masses are accumulated when
// need_mass. All threads call; the result is uniform.
template <class Row>
__device__ Selection radix_select(const Row& row, int64_t vocab, bool has_lo, uint32_t lo, bool by_mass, u64 want,
                                  bool need_mass, float mx, float temperature, Shared& sm) {
  const int tid = int(threadIdx.x), lane = tid & 31;
  uint32_t prefix = 0, mask = 0;
  Selection s;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const int nbins = pass == 2 ? 1024 : 2048;
    // What the bins of this pass must still supply: `want` less what lies above the prefix.
    const u64 rest = want - (by_mass ? s.above_mass : u64(s.above_count));
    for (int b = tid; b < nbins; b += kThreads) {
      sm.count[b] = 0;
      sm.mass[b] = 0;
    }
    __syncthreads();
    for (int64_t i = tid; i < vocab; i += kThreads) {
      const float v = row.ld(i);
      const uint32_t k = order_key(v);
      if ((has_lo && k <= lo) || (k & mask) != prefix) continue;
      const uint32_t b = (k >> shift) & uint32_t(nbins - 1);
      atomicAdd(&sm.count[b], 1u);
      if (need_mass) {
        const u64 w = fixed_weight(v, mx, temperature);
        if (w) atomicAdd(&sm.mass[b], w);
      }
    }
    __syncthreads();
    if (tid < 32) {
      // Lane L owns the bins of descending rank [L * per, (L + 1) * per), bin = nbins - 1 - rank.
      const int per = nbins / 32;
      u64 lane_c = 0, lane_m = 0;
      for (int j = 0; j < per; ++j) {
        const int b = nbins - 1 - (lane * per + j);
        lane_c += sm.count[b];
        lane_m += sm.mass[b];
      }
      const u64 incl_c = warp_inclusive_scan(lane_c), incl_m = warp_inclusive_scan(lane_m);
      const u64 metric = by_mass ? incl_m : incl_c;
      const unsigned hit = __ballot_sync(0xffffffffu, metric >= rest);
      const unsigned nonempty = __ballot_sync(0xffffffffu, lane_c > 0);
      // The first lane reaching `want`; failing that (rounding), the last lane holding any id, whose
      // walk then ends on its last nonempty bin: the whole set is taken.
      const int first = hit ? __ffs(int(hit)) - 1 : (nonempty ? 31 - __clz(int(nonempty)) : 0);
      if (lane == first) {
        u64 c = incl_c - lane_c, m = incl_m - lane_m;  // what lies above this lane's bins, in this pass
        int pick = -1;
        u64 pick_c = 0, pick_m = 0;
        for (int j = 0; j < per; ++j) {
          const int b = nbins - 1 - (lane * per + j);
          if (sm.count[b] == 0) continue;
          pick = b;
          pick_c = c;
          pick_m = m;
          c += sm.count[b];
          m += sm.mass[b];
          if ((by_mass ? m : c) >= rest) break;
        }
        sm.sel_bin = uint32_t(pick < 0 ? 0 : pick);
        sm.sel_above_count = uint32_t(pick_c);
        sm.sel_above_mass = pick_m;
        sm.sel_eq_count = pick < 0 ? 0u : sm.count[pick];
      }
    }
    __syncthreads();
    prefix |= sm.sel_bin << shift;
    mask |= uint32_t(nbins - 1) << shift;
    s.above_count += sm.sel_above_count;
    s.above_mass += sm.sel_above_mass;
    s.eq_count = sm.sel_eq_count;
    __syncthreads();
  }
  s.key = prefix;
  return s;
}

// Per-thread contiguous segment [*begin, *end) of the row (the draw and collection passes).
__device__ __forceinline__ void segment(int64_t vocab, int64_t* begin, int64_t* end) {
  const int64_t per = (vocab + kThreads - 1) / kThreads;
  *begin = min(vocab, int64_t(threadIdx.x) * per);
  *end = min(vocab, *begin + per);
}

// Tie ranks: how many ids with key == k precede this thread's segment (all threads call).
template <class Row>
__device__ uint32_t tie_rank_base(const Row& row, int64_t vocab, uint32_t k, Shared& sm) {
  int64_t b, e;
  segment(vocab, &b, &e);
  uint32_t n = 0;
  for (int64_t i = b; i < e; ++i) n += order_key(row.ld(i)) == k;
  uint32_t total;
  return block_exclusive_scan<uint32_t>(n, &total, sm);
}

// Step 1 per thread: element i (value v) into the first maximum and the online max / sum.
__device__ __forceinline__ void stats_add(float v, int64_t i, u64& best, float& om, float& os) {
  const u64 packed = (u64(order_key(v)) << 32) | u64(0xffffffffu - uint32_t(i));
  best = packed > best ? packed : best;
  if (!(v > -INFINITY)) return;  // -inf and NaN add nothing
  if (v > om) {
    os = os * expf(om - v) + 1.0f;
    om = v;
  } else {
    os += expf(v - om);
  }
}

// Step 1 across a warp (all lanes end with the warp's result).
__device__ __forceinline__ void stats_warp_reduce(u64& best, float& om, float& os) {
  for (int o = 16; o > 0; o >>= 1) {
    const u64 b2 = __shfl_xor_sync(0xffffffffu, best, o);
    best = b2 > best ? b2 : best;
    const float m2 = __shfl_xor_sync(0xffffffffu, om, o), s2 = __shfl_xor_sync(0xffffffffu, os, o);
    const float m = fmaxf(om, m2);
    os = (om > -INFINITY ? os * expf(om - m) : 0.0f) + (m2 > -INFINITY ? s2 * expf(m2 - m) : 0.0f);
    om = m;
  }
}

// Step 1 across the kWarps warps' results, in warp order: the first maximum and log-sum-exp.
struct RowStats {
  int32_t argmax;
  float mx, log_z;
};
__device__ __forceinline__ RowStats stats_combine(const u64* wbest, const float* wom, const float* wos) {
  u64 best = 0;
  float om = -INFINITY, os = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    best = wbest[w] > best ? wbest[w] : best;
    const float m = fmaxf(om, wom[w]);
    os = (om > -INFINITY ? os * expf(om - m) : 0.0f) + (wom[w] > -INFINITY ? wos[w] * expf(wom[w] - m) : 0.0f);
    om = m;
  }
  return RowStats{int32_t(0xffffffffu - uint32_t(best & 0xffffffffu)), key_float(uint32_t(best >> 32)), om + logf(os)};
}

struct SampleOut {
  int32_t* ids;           // [rows]
  float* logprob;         // [rows], may be nullptr
  int32_t* top_ids;       // [rows, top_stride], may be nullptr (max_n 0)
  float* top_logprobs;    // [rows, top_stride]
  int64_t top_stride;
  int max_n;
};

constexpr u64 kUnknownTotal = ~0ull;
constexpr int32_t kDrawHere = -2;

// Steps 2-5 of row r (the file comment) over `row`: its whole vocabulary, or the candidates of a
// split row. vocab: the vocabulary size; full: the row's logits (the logprobs of ids); known_total:
// the fixed-point mass of the whole vocabulary, or kUnknownTotal; drawn: the id already drawn over
// the whole vocabulary (split rows without top-k / top-p), else kDrawHere. All threads call.
template <class Row>
__device__ void sample_finish(const Row& row, const Logits& full, int64_t vocab, const SampleRow& s, int64_t r,
                              int32_t argmax, float mx, float log_z, u64 known_total, int32_t drawn, const SampleOut& o,
                              Shared& sm) {
  const int tid = int(threadIdx.x);
  int32_t id = argmax;
  if (s.temperature > 0.0f && drawn != kDrawHere) {
    id = drawn;
  } else if (s.temperature > 0.0f) {
    const float temp = s.temperature;
    const bool use_k = s.top_k > 0 && int64_t(s.top_k) < vocab;
    const bool use_p = s.top_p < 1.0f;
    // The kept set: keys > kkey, plus the first `take` ids (id order) with key == kkey; or all.
    bool all = !use_k;
    uint32_t kkey = 0, eq = 0;
    u64 take = 0, above_mass = 0, kept_mass = 0;
    u64 prefix_mass = 0;  // mass of the top-k prefix (the vocabulary without top-k)
    Selection sk;
    if (use_k) {
      sk = radix_select(row, row.n, false, 0, false, u64(s.top_k), true, mx, temp, sm);
      kkey = sk.key;
      eq = sk.eq_count;
      take = u64(s.top_k) - sk.above_count;
      above_mass = sk.above_mass;
      prefix_mass = above_mass + take * fixed_weight(key_float(kkey), mx, temp);
    } else if (known_total != kUnknownTotal) {
      prefix_mass = known_total;
    } else {
      u64 part = 0;
      for (int64_t i = tid; i < row.n; i += kThreads) part += fixed_weight(row.ld(i), mx, temp);
      u64 total;
      block_exclusive_scan<u64>(part, &total, sm);
      prefix_mass = total;
    }
    if (use_p) {
      const double t = ceil(double(max(s.top_p, 0.0f)) * double(prefix_mass));
      const u64 want = u64(fmin(fmax(t, 1.0), double(prefix_mass)));
      if (use_k && above_mass < want) {  // the nucleus ends inside the ties at the top-k key
        const u64 wk = fixed_weight(key_float(kkey), mx, temp);
        const u64 need = wk ? (want - above_mass + wk - 1) / wk : take;
        take = min(take, max(need, u64(1)));
      } else {
        const Selection sp = radix_select(row, row.n, use_k, kkey, true, want, true, mx, temp, sm);
        const u64 wk = fixed_weight(key_float(sp.key), mx, temp);
        const u64 need = wk ? (want - sp.above_mass + wk - 1) / wk : u64(sp.eq_count);
        kkey = sp.key;
        eq = sp.eq_count;
        above_mass = sp.above_mass;
        take = min(u64(sp.eq_count), max(need, u64(1)));
        all = false;
      }
    }
    kept_mass = all ? prefix_mass : above_mass + take * fixed_weight(key_float(kkey), mx, temp);
    // 4. the draw, over contiguous segments in id order
    const double u = sample_uniform(s.seed, s.position, s.draw);
    const u64 target = min(u64(floor(u * double(kept_mass))), kept_mass - 1);
    const bool partial = !all && take < eq;
    uint32_t rank = partial ? tie_rank_base(row, row.n, kkey, sm) : 0u;
    int64_t b, e;
    segment(row.n, &b, &e);
    const uint32_t rank0 = rank;
    u64 part = 0;
    for (int64_t i = b; i < e; ++i) {
      const float v = row.ld(i);
      const uint32_t k = order_key(v);
      const bool kept = all || k > kkey || (k == kkey && (!partial || rank++ < take));
      if (kept) part += fixed_weight(v, mx, temp);
    }
    if (tid == 0) sm.chosen = argmax;  // only if the draw found nothing (kept mass rounded)
    u64 total;
    const u64 start = block_exclusive_scan<u64>(part, &total, sm);
    if (start <= target && target < start + part) {
      u64 cum = start;
      rank = rank0;
      for (int64_t i = b; i < e; ++i) {
        const float v = row.ld(i);
        const uint32_t k = order_key(v);
        const bool kept = all || k > kkey || (k == kkey && (!partial || rank++ < take));
        if (!kept) continue;
        cum += fixed_weight(v, mx, temp);
        if (cum > target) {
          sm.chosen = row.id(i);
          break;
        }
      }
    }
    __syncthreads();
    id = sm.chosen;
    __syncthreads();
  }
  if (tid == 0) {
    o.ids[r] = id;
    if (o.logprob) o.logprob[r] = full.ld(id) - log_z;
  }

  // 5. top-n logprobs
  if (o.max_n <= 0) return;
  const int n = int(min(int64_t(min(max(s.n_logprobs, 0), min(o.max_n, kMaxTopLogprobs))), vocab));
  if (n > 0) {
    const Selection sn = radix_select(row, row.n, false, 0, false, u64(n), false, mx, 1.0f, sm);
    const uint32_t take = uint32_t(n) - sn.above_count;
    const bool partial = take < sn.eq_count;
    uint32_t rank = partial ? tie_rank_base(row, row.n, sn.key, sm) : 0u;
    if (tid == 0) sm.top_count = 0;
    __syncthreads();
    int64_t b, e;
    segment(row.n, &b, &e);
    for (int64_t i = b; i < e; ++i) {
      const uint32_t k = order_key(row.ld(i));
      if (k > sn.key || (k == sn.key && (!partial || rank++ < take))) {
        const int at = atomicAdd(&sm.top_count, 1);
        if (at < kMaxTopLogprobs) sm.top[at] = (u64(k) << 32) | u64(0xffffffffu - uint32_t(row.id(i)));
      }
    }
    __syncthreads();
    if (tid == 0) {  // at most 64 entries: insertion sort, descending
      const int m = min(sm.top_count, kMaxTopLogprobs);
      for (int i = 1; i < m; ++i) {
        const u64 x = sm.top[i];
        int j = i - 1;
        for (; j >= 0 && sm.top[j] < x; --j) sm.top[j + 1] = sm.top[j];
        sm.top[j + 1] = x;
      }
    }
    __syncthreads();
  }
  for (int j = tid; j < o.max_n; j += kThreads) {
    const bool valid = j < n;
    const int32_t tid_j = valid ? int32_t(0xffffffffu - uint32_t(sm.top[j] & 0xffffffffu)) : -1;
    o.top_ids[r * o.top_stride + j] = tid_j;
    o.top_logprobs[r * o.top_stride + j] = valid ? full.ld(tid_j) - log_z : -INFINITY;
  }
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const void* logits, bool bf16, int64_t stride, int64_t vocab,
                                                          const SampleRow* rows, SampleOut o) {
  __shared__ Shared sm;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t r = blockIdx.x;
  const SampleRow s = rows[r];
  const Logits row{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};

  // 1. first maximum and the temperature-1 log-sum-exp
  u64 best = 0;
  float om = -INFINITY, os = 0.0f;
  for (int64_t i = tid; i < vocab; i += kThreads) stats_add(row.ld(i), i, best, om, os);
  stats_warp_reduce(best, om, os);
  if (lane == 0) {
    sm.best[warp] = best;
    sm.om[warp] = om;
    sm.os[warp] = os;
  }
  __syncthreads();
  const RowStats st = stats_combine(sm.best, sm.om, sm.os);  // every thread, same order: uniform
  __syncthreads();
  sample_finish(FullRow{row, vocab}, row, vocab, s, r, st.argmax, st.mx, st.log_z, kUnknownTotal, kDrawHere, o, sm);
}

// ------------------------------------------------------------------------------------------------
// Split rows (few rows, a long vocabulary: decode at small batch)
// ------------------------------------------------------------------------------------------------
// One block per row reads the row up to ten times from one SM. Few rows are instead spread over
// many blocks, in four launches:
//  a. sample_stats_kernel, block (w, r): warp w of step 1 as sample_kernel runs it (the same ids
//     in the same order per lane, the same warp reduction), loads batched; results to scratch.
//  b. sample_hist_kernel, block (g, r): slice g of the row: a 2048-bin histogram of the top 11 key
//     bits (counts, and fixed-point masses at the row's temperature) added to the row's, and the
//     slice's mass. The row's last block (an arrival counter) picks the bin bound B such that every
//     key the row's top-k, nucleus and top-n selections can reach lies in bins >= B, counts the
//     candidates there, and for a row drawing over the whole vocabulary finds the target's slice.
//  c. sample_collect_kernel, block (g, r): slice g's candidates, in id order, to a range of the
//     row's candidate list; the block holding the draw target walks its slice to the drawn id.
//  d. sample_split_finish_kernel, block r: steps 2-5 (sample_finish) over the <= kMaxCand
//     candidates gathered in id order in shared memory, or over the whole row when they overflow.
// Every key outside the candidates is below every key inside, and the masses are exact integers,
// so each selection, the draw and the top-n find what sample_kernel finds: the same ids (and,
// step 1 unchanged, the same logprobs).
constexpr int kSplitMaxRows = 8;       // more rows: sample_kernel (one block a row fills the SMs)
constexpr int64_t kSplitMinVocab = 16384;
constexpr int kSliceThreads = 256;
constexpr int kMaxSlices = 128;
constexpr int kMaxCand = 2048;         // candidates sample_split_finish_kernel holds
constexpr int kStatsBatch = 32;        // loads in flight per lane in sample_stats_kernel
constexpr int kTopBin = 2047;

enum SplitMode : int32_t { kModeNone = 0, kModeCand = 1, kModeFull = 2 };

struct SplitCtrl {
  u64 total;          // fixed-point mass of the row at its temperature
  u64 draw_target;    // the draw's target inside slice draw_slice
  uint32_t bound;     // candidate bin bound B (top 11 bits of the key)
  int32_t mode;       // SplitMode
  int32_t draw_slice; // slice holding the draw target, or -1 (no whole-vocabulary draw, or none found)
  int32_t drawn;      // the id drawn there, or -1
};

// Scratch of the split path (stream_alloc, zeroed in front of the first two fields).
struct SplitScratch {
  uint32_t* hist_count;  // [rows, kBins]  zeroed
  u64* hist_mass;        // [rows, kBins]  zeroed
  uint32_t* arrived;     // [rows]         zeroed
  uint32_t* cand_used;   // [rows]         zeroed
  u64* stat_best;        // [rows, kWarps]
  float* stat_om;        // [rows, kWarps]
  float* stat_os;        // [rows, kWarps]
  u64* slice_mass;       // [rows, slices]
  uint32_t* slice_base;  // [rows, slices] first candidate of the slice in the row's list
  uint32_t* slice_count; // [rows, slices]
  SplitCtrl* ctrl;       // [rows]
  float* cand_v;         // [rows, kMaxCand]
  int32_t* cand_id;      // [rows, kMaxCand]
  int slices;
  int64_t slice_len;     // ids per slice
};

__device__ __forceinline__ bool split_row_busy(const SampleRow& s, int max_n) {
  return s.temperature > 0.0f || (max_n > 0 && s.n_logprobs > 0);
}

__global__ void __launch_bounds__(32) sample_stats_kernel(const void* logits, bool bf16, int64_t stride, int64_t vocab,
                                                          SplitScratch sc) {
  const int64_t r = blockIdx.y;
  const int w = int(blockIdx.x), lane = int(threadIdx.x);
  const Logits row{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};
  u64 best = 0;
  float om = -INFINITY, os = 0.0f;
  for (int64_t i0 = int64_t(w) * 32 + lane; i0 < vocab; i0 += int64_t(kThreads) * kStatsBatch) {
    float v[kStatsBatch];
#pragma unroll
    for (int u = 0; u < kStatsBatch; ++u) {
      const int64_t i = i0 + int64_t(u) * kThreads;
      v[u] = i < vocab ? row.ld(i) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kStatsBatch; ++u) {
      const int64_t i = i0 + int64_t(u) * kThreads;
      if (i < vocab) stats_add(v[u], i, best, om, os);
    }
  }
  stats_warp_reduce(best, om, os);
  if (lane == 0) {
    sc.stat_best[r * kWarps + w] = best;
    sc.stat_om[r * kWarps + w] = om;
    sc.stat_os[r * kWarps + w] = os;
  }
}

// Exclusive scan of v over a kSliceThreads block (all threads call); *total = the block's sum.
template <typename T>
__device__ T slice_block_scan(T v, T* total, T* warp_sums) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  const T incl = warp_inclusive_scan(v);
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  T before = 0, all = 0;
  for (int i = 0; i < kSliceThreads / 32; ++i) {
    if (i < warp) before += warp_sums[i];
    all += warp_sums[i];
  }
  *total = all;
  __syncthreads();
  return before + incl - v;
}

// The highest bin (scanning down from kTopBin) at which the cumulative count (by_mass false) or
// mass reaches want; 0 when none does. Warp 0 calls; lane L owns bins of descending rank
// [64 L, 64 L + 64). The result is the warp's.
__device__ uint32_t split_cross_bin(const uint32_t* count, const u64* mass, bool by_mass, u64 want) {
  const int lane = int(threadIdx.x & 31);
  constexpr int per = kBins / 32;
  u64 lane_m = 0;
#pragma unroll 4
  for (int j = 0; j < per; ++j) {
    const int b = kTopBin - (lane * per + j);
    lane_m += by_mass ? mass[b] : u64(count[b]);
  }
  const u64 incl = warp_inclusive_scan(lane_m);
  const unsigned hit = __ballot_sync(0xffffffffu, incl >= want);
  uint32_t bin = 0;
  if (hit) {
    const int first = __ffs(int(hit)) - 1;
    if (lane == first) {
      u64 c = incl - lane_m;
#pragma unroll 1
      for (int j = 0; j < per; ++j) {
        const int b = kTopBin - (lane * per + j);
        c += by_mass ? mass[b] : u64(count[b]);
        if (c >= want) {
          bin = uint32_t(b);
          break;
        }
      }
    }
    bin = __shfl_sync(0xffffffffu, bin, first);
  }
  return bin;
}

__global__ void __launch_bounds__(kSliceThreads, 2) sample_hist_kernel(const void* logits, bool bf16, int64_t stride,
                                                                    int64_t vocab, const SampleRow* rows, int max_n,
                                                                    SplitScratch sc) {
  __shared__ uint32_t count[kBins];
  __shared__ u64 mass[kBins];
  __shared__ u64 warp_sums[kSliceThreads / 32];
  __shared__ float s_mx;
  __shared__ bool s_last;
  const int64_t r = blockIdx.y;
  const int g = int(blockIdx.x), tid = int(threadIdx.x);
  const SampleRow s = rows[r];
  if (!split_row_busy(s, max_n)) return;
  const Logits row{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};
  const bool need_mass = s.temperature > 0.0f;
  const float temp = need_mass ? s.temperature : 1.0f;
  if (tid < 32) {  // the row's maximum: the largest warp result
    u64 b = sc.stat_best[r * kWarps + tid];
    for (int o = 16; o > 0; o >>= 1) {
      const u64 b2 = __shfl_xor_sync(0xffffffffu, b, o);
      b = b2 > b ? b2 : b;
    }
    if (tid == 0) s_mx = key_float(uint32_t(b >> 32));
  }
  for (int b = tid; b < kBins; b += kSliceThreads) {
    count[b] = 0;
    mass[b] = 0;
  }
  __syncthreads();
  const float mx = s_mx;
  const int64_t i0 = int64_t(g) * sc.slice_len, i1 = min(vocab, i0 + sc.slice_len);
  u64 part = 0;
  for (int64_t i = i0 + tid; i < i1; i += kSliceThreads) {
    const float v = row.ld(i);
    const uint32_t b = order_key(v) >> 21;
    atomicAdd(&count[b], 1u);
    if (need_mass) {
      const u64 w = fixed_weight(v, mx, temp);
      if (w) {
        atomicAdd(&mass[b], w);
        part += w;
      }
    }
  }
  u64 slice_total;
  slice_block_scan<u64>(part, &slice_total, warp_sums);  // also orders the histogram updates
  if (tid == 0) sc.slice_mass[r * sc.slices + g] = slice_total;
  uint32_t* hc = sc.hist_count + r * kBins;
  u64* hm = sc.hist_mass + r * kBins;
  for (int b = tid; b < kBins; b += kSliceThreads) {
    if (count[b]) atomicAdd(&hc[b], count[b]);
    if (mass[b]) atomicAdd(&hm[b], mass[b]);
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(&sc.arrived[r], 1u) == uint32_t(sc.slices - 1);
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // The row's last block: its histogram and slice masses are complete.
  for (int b = tid; b < kBins; b += kSliceThreads) {
    count[b] = __ldcg(hc + b);
    mass[b] = __ldcg(hm + b);
  }
  __syncthreads();
  if (tid >= 32) return;
  const int lane = tid;
  u64 lane_m = 0;
  for (int b = lane; b < kBins; b += 32) lane_m += mass[b];
  for (int o = 16; o > 0; o >>= 1) lane_m += __shfl_xor_sync(0xffffffffu, lane_m, o);
  const u64 total = lane_m;
  const bool use_k = need_mass && s.top_k > 0 && int64_t(s.top_k) < vocab;
  const bool use_p = need_mass && s.top_p < 1.0f;
  const int n = max_n > 0 ? int(min(int64_t(min(max(s.n_logprobs, 0), min(max_n, kMaxTopLogprobs))), vocab)) : 0;
  uint32_t bound = kTopBin;
  bool need = false;
  if (use_k) {
    bound = min(bound, split_cross_bin(count, mass, false, u64(s.top_k)));
    need = true;
  } else if (use_p) {  // want as sample_finish computes it with the mass of the whole vocabulary
    const double t = ceil(double(max(s.top_p, 0.0f)) * double(total));
    const u64 want = u64(fmin(fmax(t, 1.0), double(total)));
    bound = min(bound, split_cross_bin(count, mass, true, want));
    need = true;
  }
  if (n > 0) {
    bound = min(bound, split_cross_bin(count, mass, false, u64(n)));
    need = true;
  }
  u64 cand = 0;
  for (int b = lane; b < kBins; b += 32)
    if (uint32_t(b) >= bound) cand += count[b];
  for (int o = 16; o > 0; o >>= 1) cand += __shfl_xor_sync(0xffffffffu, cand, o);
  // A draw over the whole vocabulary: the slice holding the target (slices in id order).
  int32_t draw_slice = -1;
  u64 draw_target = 0;
  if (need_mass && !use_k && !use_p && total > 0) {
    const double u = sample_uniform(s.seed, s.position, s.draw);
    const u64 target = min(u64(floor(u * double(total))), total - 1);
    u64 before = 0;
    for (int g0 = 0; g0 < sc.slices; g0 += 32) {
      const int gi = g0 + lane;
      const u64 m = gi < sc.slices ? __ldcg(sc.slice_mass + r * sc.slices + gi) : 0ull;
      const u64 incl = warp_inclusive_scan(m);
      const unsigned hit = __ballot_sync(0xffffffffu, before + incl > target);
      if (hit) {
        const int first = __ffs(int(hit)) - 1;
        draw_slice = g0 + first;
        draw_target = target - (before + __shfl_sync(0xffffffffu, incl - m, first));
        break;
      }
      before += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  if (lane == 0) {
    SplitCtrl c;
    c.total = total;
    c.draw_target = draw_target;
    c.bound = bound;
    c.mode = need ? (cand <= u64(kMaxCand) ? kModeCand : kModeFull) : kModeNone;
    c.draw_slice = draw_slice;
    c.drawn = -1;
    sc.ctrl[r] = c;
  }
}

__global__ void __launch_bounds__(kSliceThreads, 2) sample_collect_kernel(const void* logits, bool bf16, int64_t stride,
                                                                       int64_t vocab, const SampleRow* rows, int max_n,
                                                                       SplitScratch sc) {
  __shared__ u64 warp_sums[kSliceThreads / 32];
  __shared__ uint32_t s_base;
  __shared__ float s_mx;
  const int64_t r = blockIdx.y;
  const int g = int(blockIdx.x), tid = int(threadIdx.x);
  const SampleRow s = rows[r];
  if (!split_row_busy(s, max_n)) return;
  const SplitCtrl c = sc.ctrl[r];
  const bool collect = c.mode == kModeCand, draw = c.draw_slice == g;
  if (!collect && !draw) return;
  const Logits row{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};
  // Per-thread contiguous segments of the slice, in id order.
  const int64_t i0 = int64_t(g) * sc.slice_len, i1 = min(vocab, i0 + sc.slice_len);
  const int64_t per = (i1 - i0 + kSliceThreads - 1) / kSliceThreads;
  const int64_t b = min(i1, i0 + int64_t(tid) * per), e = min(i1, b + per);
  if (collect) {
    uint32_t mine = 0;
    for (int64_t i = b; i < e; ++i) mine += (order_key(row.ld(i)) >> 21) >= c.bound;
    u64 block_total;
    const uint32_t at = uint32_t(slice_block_scan<u64>(u64(mine), &block_total, warp_sums));
    if (tid == 0) {
      s_base = atomicAdd(&sc.cand_used[r], uint32_t(block_total));
      sc.slice_base[r * sc.slices + g] = s_base;
      sc.slice_count[r * sc.slices + g] = uint32_t(block_total);
    }
    __syncthreads();
    uint32_t k = s_base + at;
    for (int64_t i = b; i < e && mine > 0; ++i) {
      const float v = row.ld(i);
      if ((order_key(v) >> 21) < c.bound) continue;
      sc.cand_v[r * kMaxCand + k] = v;
      sc.cand_id[r * kMaxCand + k] = int32_t(i);
      ++k;
      --mine;
    }
  }
  if (draw) {  // sample_finish's draw with every id kept, inside this slice
    if (tid < 32) {
      u64 bb = sc.stat_best[r * kWarps + tid];
      for (int o = 16; o > 0; o >>= 1) {
        const u64 b2 = __shfl_xor_sync(0xffffffffu, bb, o);
        bb = b2 > bb ? b2 : bb;
      }
      if (tid == 0) s_mx = key_float(uint32_t(bb >> 32));
    }
    __syncthreads();
    const float mx = s_mx, temp = s.temperature;
    u64 part = 0;
    for (int64_t i = b; i < e; ++i) part += fixed_weight(row.ld(i), mx, temp);
    u64 slice_total;
    const u64 start = slice_block_scan<u64>(part, &slice_total, warp_sums);
    const u64 target = c.draw_target;
    if (start <= target && target < start + part) {
      u64 cum = start;
      for (int64_t i = b; i < e; ++i) {
        cum += fixed_weight(row.ld(i), mx, temp);
        if (cum > target) {
          sc.ctrl[r].drawn = int32_t(i);
          break;
        }
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads) sample_split_finish_kernel(const void* logits, bool bf16, int64_t stride,
                                                                       int64_t vocab, const SampleRow* rows, SampleOut o,
                                                                       SplitScratch sc) {
  __shared__ Shared sm;
  __shared__ float cand_v[kMaxCand];
  __shared__ int32_t cand_id[kMaxCand];
  __shared__ uint32_t slice_first[kMaxSlices], slice_base[kMaxSlices];
  const int tid = int(threadIdx.x);
  const int64_t r = blockIdx.x;
  const SampleRow s = rows[r];
  const Logits row{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};
  if (tid < kWarps) {
    sm.best[tid] = sc.stat_best[r * kWarps + tid];
    sm.om[tid] = sc.stat_om[r * kWarps + tid];
    sm.os[tid] = sc.stat_os[r * kWarps + tid];
  }
  __syncthreads();
  const RowStats st = stats_combine(sm.best, sm.om, sm.os);
  __syncthreads();
  if (!split_row_busy(s, o.max_n)) {  // greedy, no top-n: no pass over the row
    sample_finish(FullRow{row, vocab}, row, vocab, s, r, st.argmax, st.mx, st.log_z, kUnknownTotal, kDrawHere, o, sm);
    return;
  }
  const SplitCtrl c = sc.ctrl[r];
  const bool all_draw = s.temperature > 0.0f && !(s.top_k > 0 && int64_t(s.top_k) < vocab) && !(s.top_p < 1.0f);
  const int32_t drawn = all_draw ? (c.drawn >= 0 ? c.drawn : st.argmax) : kDrawHere;
  if (c.mode != kModeCand) {
    sample_finish(FullRow{row, vocab}, row, vocab, s, r, st.argmax, st.mx, st.log_z, c.total, drawn, o, sm);
    return;
  }
  // The candidates in id order: the slices' ranges of the list, in slice order.
  const uint32_t cnt = tid < sc.slices ? sc.slice_count[r * sc.slices + tid] : 0u;
  uint32_t ncand;
  const uint32_t first = block_exclusive_scan<uint32_t>(cnt, &ncand, sm);
  if (tid < sc.slices) {
    slice_first[tid] = first;
    slice_base[tid] = sc.slice_base[r * sc.slices + tid];
  }
  __syncthreads();
  for (int j = tid; j < int(ncand); j += kThreads) {
    int lo = 0, hi = sc.slices;  // the last slice whose first candidate is <= j
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (slice_first[mid] <= uint32_t(j)) lo = mid;
      else hi = mid;
    }
    const int64_t at = r * kMaxCand + slice_base[lo] + (uint32_t(j) - slice_first[lo]);
    cand_v[j] = sc.cand_v[at];
    cand_id[j] = sc.cand_id[at];
  }
  __syncthreads();
  sample_finish(CandRow{cand_v, cand_id, int64_t(ncand)}, row, vocab, s, r, st.argmax, st.mx, st.log_z, c.total, drawn,
                o, sm);
}

}  // namespace

void launch_sample(const SampleParams& p, cudaStream_t s) {
  const int64_t rows = p.logits.shape[0];
  const int64_t vocab = p.logits.ndim == 2 ? p.logits.shape[1] : 0;
  V4RT_REQUIRE(p.logits.ndim == 2 && vocab > 0 && vocab < (int64_t(1) << 31),
               "sample logits: expected [rows, vocab], got " << p.logits.shape_str());
  V4RT_REQUIRE((p.logits.dtype == DType::kF32 || p.logits.dtype == DType::kBF16) && p.logits.device == Device::kCuda &&
                   p.logits.stride[1] == 1,
               "sample logits: an F32 or BF16 device view with contiguous rows");
  V4RT_REQUIRE(rows == 0 || p.rows != nullptr, "sample: no SampleRow array for " << rows << " rows");
  V4RT_REQUIRE(p.out_ids.dtype == DType::kI32 && p.out_ids.numel() == rows,
               "sample out_ids: expected I32 [" << rows << "], got " << p.out_ids.shape_str());
  float* logprob = nullptr;
  if (p.out_logprob.data) {
    V4RT_REQUIRE(p.out_logprob.dtype == DType::kF32 && p.out_logprob.numel() == rows,
                 "sample out_logprob: expected F32 [" << rows << "], got " << p.out_logprob.shape_str());
    logprob = static_cast<float*>(p.out_logprob.data);
  }
  int max_n = 0;
  int32_t* top_ids = nullptr;
  float* top_lp = nullptr;
  int64_t top_stride = 0;
  if (p.out_top_ids.data) {
    V4RT_REQUIRE(p.out_top_ids.dtype == DType::kI32 && p.out_top_ids.ndim == 2 && p.out_top_ids.shape[0] == rows &&
                     p.out_top_ids.stride[1] == 1,
                 "sample out_top_ids: expected I32 [" << rows << ", n], got " << p.out_top_ids.shape_str());
    V4RT_REQUIRE(p.out_top_logprobs.data && p.out_top_logprobs.dtype == DType::kF32 &&
                     p.out_top_logprobs.ndim == 2 && p.out_top_logprobs.shape[0] == rows &&
                     p.out_top_logprobs.shape[1] == p.out_top_ids.shape[1] &&
                     p.out_top_logprobs.stride[0] == p.out_top_ids.stride[0] && p.out_top_logprobs.stride[1] == 1,
                 "sample out_top_logprobs: expected F32 " << p.out_top_ids.shape_str() << " with the stride of out_top_ids");
    V4RT_REQUIRE(p.out_top_ids.shape[1] <= kMaxTopLogprobs,
                 "sample: " << p.out_top_ids.shape[1] << " top-logprob columns (at most " << kMaxTopLogprobs << ")");
    max_n = int(p.out_top_ids.shape[1]);
    top_ids = static_cast<int32_t*>(p.out_top_ids.data);
    top_lp = static_cast<float*>(p.out_top_logprobs.data);
    top_stride = p.out_top_ids.stride[0];
  }
  if (rows == 0) return;
  const SampleOut out{static_cast<int32_t*>(p.out_ids.data), logprob, top_ids, top_lp, top_stride, max_n};
  const bool bf16 = p.logits.dtype == DType::kBF16;
  const int64_t stride = p.logits.stride[0];
  if (rows > kSplitMaxRows || vocab < kSplitMinVocab) {
    sample_kernel<<<unsigned(rows), kThreads, 0, s>>>(p.logits.data, bf16, stride, vocab, p.rows, out);
    launch_check("sample", s);
    return;
  }
  // Few rows: each over about two blocks per SM in all (see "Split rows").
  SplitScratch sc{};
  sc.slices = int(std::clamp<int64_t>(2 * int64_t(num_sms()) / rows, 1, kMaxSlices));
  sc.slice_len = ceil_div(vocab, int64_t(sc.slices));
  sc.slices = int(ceil_div(vocab, sc.slice_len));  // no empty slice
  const size_t nr = size_t(rows), ns = nr * size_t(sc.slices);
  size_t bytes = 0;
  const auto take = [&](size_t n) {
    const size_t at = bytes;
    bytes += (n + 15) & ~size_t(15);
    return at;
  };
  const size_t o_hm = take(nr * kBins * 8), o_hc = take(nr * kBins * 4), o_arr = take(nr * 4), o_used = take(nr * 4);
  const size_t zeroed = bytes;
  const size_t o_best = take(nr * kWarps * 8), o_om = take(nr * kWarps * 4), o_os = take(nr * kWarps * 4);
  const size_t o_sm = take(ns * 8), o_sb = take(ns * 4), o_scnt = take(ns * 4), o_ctrl = take(nr * sizeof(SplitCtrl));
  const size_t o_cv = take(nr * kMaxCand * 4), o_ci = take(nr * kMaxCand * 4);
  char* work = static_cast<char*>(stream_alloc(bytes, s));
  sc.hist_mass = reinterpret_cast<u64*>(work + o_hm);
  sc.hist_count = reinterpret_cast<uint32_t*>(work + o_hc);
  sc.arrived = reinterpret_cast<uint32_t*>(work + o_arr);
  sc.cand_used = reinterpret_cast<uint32_t*>(work + o_used);
  sc.stat_best = reinterpret_cast<u64*>(work + o_best);
  sc.stat_om = reinterpret_cast<float*>(work + o_om);
  sc.stat_os = reinterpret_cast<float*>(work + o_os);
  sc.slice_mass = reinterpret_cast<u64*>(work + o_sm);
  sc.slice_base = reinterpret_cast<uint32_t*>(work + o_sb);
  sc.slice_count = reinterpret_cast<uint32_t*>(work + o_scnt);
  sc.ctrl = reinterpret_cast<SplitCtrl*>(work + o_ctrl);
  sc.cand_v = reinterpret_cast<float*>(work + o_cv);
  sc.cand_id = reinterpret_cast<int32_t*>(work + o_ci);
  CUDA_CHECK(cudaMemsetAsync(work, 0, zeroed, s));
  const dim3 grid{unsigned(sc.slices), unsigned(rows)};
  sample_stats_kernel<<<dim3(kWarps, unsigned(rows)), 32, 0, s>>>(p.logits.data, bf16, stride, vocab, sc);
  sample_hist_kernel<<<grid, kSliceThreads, 0, s>>>(p.logits.data, bf16, stride, vocab, p.rows, max_n, sc);
  sample_collect_kernel<<<grid, kSliceThreads, 0, s>>>(p.logits.data, bf16, stride, vocab, p.rows, max_n, sc);
  sample_split_finish_kernel<<<unsigned(rows), kThreads, 0, s>>>(p.logits.data, bf16, stride, vocab, p.rows, out, sc);
  launch_check("sample (split rows)", s);
  stream_free(work, s);
}

}  // namespace v4rt::kernels::cuda
