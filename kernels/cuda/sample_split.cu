// SPDX-License-Identifier: MIT
// Token sampling of a few rows over many blocks each (sample.cu's "Split rows"): the row read by
// all SMs three times, then the steps of sample_kernel over a short candidate list, with the same
// ids and logprobs as sample_kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/sample_common.cuh"

namespace v4rt::kernels::cuda::sample_detail {
namespace {

// Split rows (few rows, a long vocabulary: decode at small batch).
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
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t r = blockIdx.y;
  const int w = int(blockIdx.x), lane = int(threadIdx.x);
  const Logits row = logits_row(logits, bf16, stride, r);
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
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ uint32_t count[kBins];
  __shared__ u64 mass[kBins];
  __shared__ u64 warp_sums[kSliceThreads / 32];
  __shared__ float s_mx;
  __shared__ bool s_last;
  const int64_t r = blockIdx.y;
  const int g = int(blockIdx.x), tid = int(threadIdx.x);
  const SampleRow s = rows[r];
  if (!split_row_busy(s, max_n)) return;
  const Logits row = logits_row(logits, bf16, stride, r);
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
  pdl_enter();  // launch.cuh: programmatic dependent launch
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
  const Logits row = logits_row(logits, bf16, stride, r);
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
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ Shared sm;
  __shared__ float cand_v[kMaxCand];
  __shared__ int32_t cand_id[kMaxCand];
  __shared__ uint32_t slice_first[kMaxSlices], slice_base[kMaxSlices];
  const int tid = int(threadIdx.x);
  const int64_t r = blockIdx.x;
  const SampleRow s = rows[r];
  const Logits row = logits_row(logits, bf16, stride, r);
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

bool launch_sample_split(const void* logits, bool bf16, int64_t stride, int64_t rows, int64_t vocab,
                         const SampleRow* sample_rows, int max_n, const SampleOut& out, cudaStream_t s) {
  if (rows > kSplitMaxRows || vocab < kSplitMinVocab) return false;
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
  memset_async(work, 0, zeroed, s);
  const dim3 grid{unsigned(sc.slices), unsigned(rows)};
  launch(sample_stats_kernel, dim3(kWarps, unsigned(rows)), 32, 0, s)(logits, bf16, stride, vocab, sc);
  launch(sample_hist_kernel, grid, kSliceThreads, 0, s)(logits, bf16, stride, vocab, sample_rows, max_n, sc);
  launch(sample_collect_kernel, grid, kSliceThreads, 0, s)(logits, bf16, stride, vocab, sample_rows, max_n, sc);
  launch(sample_split_finish_kernel, unsigned(rows), kThreads, 0, s)(logits, bf16, stride, vocab, sample_rows, out, sc);
  launch_check("sample (split rows)", s);
  stream_free(work, s);
  return true;
}

}  // namespace v4rt::kernels::cuda::sample_detail
