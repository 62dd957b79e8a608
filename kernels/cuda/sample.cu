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
// row of 129,280 F32 logits (517 KB) stays in L2 between passes for moderate batches.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
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
__device__ Selection radix_select(const Logits& row, int64_t vocab, bool has_lo, uint32_t lo, bool by_mass, u64 want,
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
__device__ uint32_t tie_rank_base(const Logits& row, int64_t vocab, uint32_t k, Shared& sm) {
  int64_t b, e;
  segment(vocab, &b, &e);
  uint32_t n = 0;
  for (int64_t i = b; i < e; ++i) n += order_key(row.ld(i)) == k;
  uint32_t total;
  return block_exclusive_scan<uint32_t>(n, &total, sm);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const void* logits, bool bf16, int64_t stride, int64_t vocab,
                                                          const SampleRow* rows, int32_t* out_ids, float* out_logprob,
                                                          int32_t* top_ids, float* top_logprobs, int64_t top_stride,
                                                          int max_n) {
  __shared__ Shared sm;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t r = blockIdx.x;
  const SampleRow s = rows[r];
  const Logits row{static_cast<const char*>(logits) + r * stride * (bf16 ? 2 : 4), bf16};

  // 1. first maximum and the temperature-1 log-sum-exp
  u64 best = 0;
  float om = -INFINITY, os = 0.0f;
  for (int64_t i = tid; i < vocab; i += kThreads) {
    const float v = row.ld(i);
    const u64 packed = (u64(order_key(v)) << 32) | u64(0xffffffffu - uint32_t(i));
    best = packed > best ? packed : best;
    if (!(v > -INFINITY)) continue;  // -inf and NaN add nothing
    if (v > om) {
      os = os * expf(om - v) + 1.0f;
      om = v;
    } else {
      os += expf(v - om);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const u64 b2 = __shfl_xor_sync(0xffffffffu, best, o);
    best = b2 > best ? b2 : best;
    const float m2 = __shfl_xor_sync(0xffffffffu, om, o), s2 = __shfl_xor_sync(0xffffffffu, os, o);
    const float m = fmaxf(om, m2);
    os = (om > -INFINITY ? os * expf(om - m) : 0.0f) + (m2 > -INFINITY ? s2 * expf(m2 - m) : 0.0f);
    om = m;
  }
  if (lane == 0) {
    sm.best[warp] = best;
    sm.om[warp] = om;
    sm.os[warp] = os;
  }
  __syncthreads();
  best = 0;
  om = -INFINITY;
  os = 0.0f;
  for (int w = 0; w < kWarps; ++w) {  // every thread, same order: a uniform result
    best = sm.best[w] > best ? sm.best[w] : best;
    const float m = fmaxf(om, sm.om[w]);
    os = (om > -INFINITY ? os * expf(om - m) : 0.0f) + (sm.om[w] > -INFINITY ? sm.os[w] * expf(sm.om[w] - m) : 0.0f);
    om = m;
  }
  __syncthreads();
  const int32_t argmax = int32_t(0xffffffffu - uint32_t(best & 0xffffffffu));
  const float mx = key_float(uint32_t(best >> 32));
  const float log_z = om + logf(os);

  int32_t id = argmax;
  if (s.temperature > 0.0f) {
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
      sk = radix_select(row, vocab, false, 0, false, u64(s.top_k), true, mx, temp, sm);
      kkey = sk.key;
      eq = sk.eq_count;
      take = u64(s.top_k) - sk.above_count;
      above_mass = sk.above_mass;
      prefix_mass = above_mass + take * fixed_weight(key_float(kkey), mx, temp);
    } else {
      u64 part = 0;
      for (int64_t i = tid; i < vocab; i += kThreads) part += fixed_weight(row.ld(i), mx, temp);
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
        const Selection sp = radix_select(row, vocab, use_k, kkey, true, want, true, mx, temp, sm);
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
    uint32_t rank = partial ? tie_rank_base(row, vocab, kkey, sm) : 0u;
    int64_t b, e;
    segment(vocab, &b, &e);
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
          sm.chosen = int32_t(i);
          break;
        }
      }
    }
    __syncthreads();
    id = sm.chosen;
    __syncthreads();
  }
  if (tid == 0) {
    out_ids[r] = id;
    if (out_logprob) out_logprob[r] = row.ld(id) - log_z;
  }

  // 5. top-n logprobs
  if (max_n <= 0) return;
  const int n = int(min(int64_t(min(max(s.n_logprobs, 0), min(max_n, kMaxTopLogprobs))), vocab));
  if (n > 0) {
    const Selection sn = radix_select(row, vocab, false, 0, false, u64(n), false, mx, 1.0f, sm);
    const uint32_t take = uint32_t(n) - sn.above_count;
    const bool partial = take < sn.eq_count;
    uint32_t rank = partial ? tie_rank_base(row, vocab, sn.key, sm) : 0u;
    if (tid == 0) sm.top_count = 0;
    __syncthreads();
    int64_t b, e;
    segment(vocab, &b, &e);
    for (int64_t i = b; i < e; ++i) {
      const uint32_t k = order_key(row.ld(i));
      if (k > sn.key || (k == sn.key && (!partial || rank++ < take))) {
        const int at = atomicAdd(&sm.top_count, 1);
        if (at < kMaxTopLogprobs) sm.top[at] = (u64(k) << 32) | u64(0xffffffffu - uint32_t(i));
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
  for (int j = tid; j < max_n; j += kThreads) {
    const bool valid = j < n;
    const int32_t tid_j = valid ? int32_t(0xffffffffu - uint32_t(sm.top[j] & 0xffffffffu)) : -1;
    top_ids[r * top_stride + j] = tid_j;
    top_logprobs[r * top_stride + j] = valid ? row.ld(tid_j) - log_z : -INFINITY;
  }
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
  sample_kernel<<<unsigned(rows), kThreads, 0, s>>>(p.logits.data, p.logits.dtype == DType::kBF16, p.logits.stride[0], vocab,
                                                    p.rows, static_cast<int32_t*>(p.out_ids.data), logprob, top_ids,
                                                    top_lp, top_stride, max_n);
  launch_check("sample", s);
}

}  // namespace v4rt::kernels::cuda
