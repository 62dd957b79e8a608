// SPDX-License-Identifier: MIT
// The per-row sampling steps shared by the one-block kernel (sample.cu) and the split-row path
// (sample_split.cu): the order key, fixed-point weights, the radix select, and steps 2-5 over a
// row or a candidate list (sample_finish). The method is in sample.cu's header comment.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/ops.h"
#include "kernels/philox.h"

namespace v4rt::kernels::cuda::sample_detail {

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
// Row r of logits [rows, stride] (bf16 or fp32 elements).
__device__ __forceinline__ Logits logits_row(const void* logits, bool bf16, int64_t stride, int64_t r) {
  return Logits{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};
}

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

// Few rows (decode at small batch) over many blocks each (sample_split.cu): true when it took
// the call, false when `rows` or `vocab` is for sample_kernel.
bool launch_sample_split(const void* logits, bool bf16, int64_t stride, int64_t rows, int64_t vocab,
                         const SampleRow* sample_rows, int max_n, const SampleOut& out, cudaStream_t s);

}  // namespace v4rt::kernels::cuda::sample_detail
