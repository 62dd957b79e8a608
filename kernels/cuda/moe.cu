// SPDX-License-Identifier: MIT
// Mixture of experts on the device (spec §6): the router (sqrt-softplus scores; hash table or top-k
// of score + bias, ties to the lower expert; ids sorted ascending), and the pieces of the routed
// expert pipeline that surround the grouped FP4 GEMMs: a deterministic routing layout (rows grouped
// by expert, tokens ascending inside an expert), gather (+ FP8 act_quant), SwiGLU + routing weight
// (+ act_quant) fused, and the combine that adds expert outputs in ascending expert id (fp32). The
// router computes the scores in fp32 (a warp per expert row over a tile of tokens; from 32 tokens a
// cuBLASLt GEMM in CudaBackend::moe_gate, activated in place) and selects in a second kernel (a
// warp per token).
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kMaxExperts = 1024;
constexpr int kMaxTopk = 16;

__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// --- router --------------------------------------------------------------------------------------

struct GateArgs {
  Act x, gate;
  const float* bias;
  const int32_t* tid2eid;
  int64_t vocab;
  const int32_t* token_ids;
  int32_t* out_idx;
  int64_t idx_stride;
  float* out_weight;
  int64_t weight_stride;
  int64_t num_experts, hidden;
  int topk;
  float route_scale;
};

constexpr int kGateWarps = 8;  // experts per scores block (one warp each)
constexpr int kGateTok = 8;    // tokens per scores block

// scores[t, e] = sqrt(softplus(gate[e] . x[t])) in fp32: a warp per expert row, kGateTok tokens per
// block (the gate row is read once per token tile, the x rows stay in L1/L2). This: the scores of
// tokens [t0, t0 + kGateTok) against expert row e (one warp).
__device__ __forceinline__ void gate_scores_tile(const GateArgs& a, int64_t n, bool vec, int64_t e, int64_t t0,
                                                 int lane, float* scores) {
  const int cnt = int(min(int64_t(kGateTok), n - t0));
  float acc[kGateTok];
#pragma unroll
  for (int t = 0; t < kGateTok; ++t) acc[t] = 0.f;
  if (vec) {
    for (int64_t i = int64_t(lane) * 4; i < a.hidden; i += 128) {
      const float4 g = a.gate.ld4(e, i);
#pragma unroll
      for (int t = 0; t < kGateTok; ++t) {
        if (t < cnt) {
          const float4 x = a.x.ld4(t0 + t, i);
          acc[t] = fmaf(g.x, x.x, fmaf(g.y, x.y, fmaf(g.z, x.z, fmaf(g.w, x.w, acc[t]))));
        }
      }
    }
  } else {
    for (int64_t i = lane; i < a.hidden; i += 32) {
      const float g = a.gate.ld(e, i);
#pragma unroll
      for (int t = 0; t < kGateTok; ++t)
        if (t < cnt) acc[t] = fmaf(g, a.x.ld(t0 + t, i), acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kGateTok; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0 && t < cnt) scores[(t0 + t) * a.num_experts + e] = sqrtf(softplus(v));
  }
}

// Token tiles on y are walked with a grid-stride loop (any number of tokens).
__global__ void __launch_bounds__(kGateWarps * 32) moe_gate_scores_kernel(GateArgs a, int64_t n, bool vec,
                                                                           float* scores) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t e = int64_t(blockIdx.x) * kGateWarps + warp;
  if (e >= a.num_experts) return;
  for (int64_t t0 = int64_t(blockIdx.y) * kGateTok; t0 < n; t0 += int64_t(gridDim.y) * kGateTok)
    gate_scores_tile(a, n, vec, e, t0, lane, scores);
}

// Decode-sized batches (n <= kGateTok): one block per expert row, the row split over all threads
// (every thread's loads in flight at once), a block reduction per token.
__global__ void __launch_bounds__(256) moe_gate_scores_row_kernel(GateArgs a, int64_t n, bool vec, float* scores) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ float red[kGateTok][8];
  const int64_t e = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int cnt = int(min(int64_t(kGateTok), n));
  float acc[kGateTok];
#pragma unroll
  for (int t = 0; t < kGateTok; ++t) acc[t] = 0.f;
  if (vec) {
#pragma unroll 4
    for (int64_t i = int64_t(threadIdx.x) * 4; i < a.hidden; i += 4 * blockDim.x) {
      const float4 g = a.gate.ld4(e, i);
#pragma unroll
      for (int t = 0; t < kGateTok; ++t) {
        if (t < cnt) {
          const float4 x = a.x.ld4(t, i);
          acc[t] = fmaf(g.x, x.x, fmaf(g.y, x.y, fmaf(g.z, x.z, fmaf(g.w, x.w, acc[t]))));
        }
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < a.hidden; i += blockDim.x) {
      const float g = a.gate.ld(e, i);
#pragma unroll
      for (int t = 0; t < kGateTok; ++t)
        if (t < cnt) acc[t] = fmaf(g, a.x.ld(t, i), acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kGateTok; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) red[t][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < cnt) {
    float v = 0.f;
    for (int w = 0; w < 8; ++w) v += red[threadIdx.x][w];
    scores[int64_t(threadIdx.x) * a.num_experts + e] = sqrtf(softplus(v));
  }
}

// Logits of a GEMM (prefill-sized calls, CudaBackend::moe_gate) to scores, in place.
__global__ void moe_gate_activate_kernel(float* scores, int64_t count) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    scores[i] = sqrtf(softplus(scores[i]));
}

// One warp per token: top-k of score + bias (ties to the lower expert) or the hash table, ids
// sorted ascending, weights = score / sum of the chosen scores * route_scale. Lane l loads the
// scores of experts l + 32 j (j < kSlots) once, all at once, and keeps them in registers for the
// topk rounds (bit j of `taken`: expert l + 32 j chosen). Lane k < topk then holds the k-th pick
// and writes it at its rank among the picks; the sum adds the picks in ascending id.
template <int kSlots>
__global__ void __launch_bounds__(kGateWarps * 32) moe_gate_select_kernel(GateArgs a, int64_t n, const float* scores) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  static_assert(kSlots * 32 <= kMaxExperts && kSlots <= 32, "taken is a 32-bit mask");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = int64_t(blockIdx.x) * kGateWarps + warp;
  if (t >= n) return;
  const float* sc = scores + t * a.num_experts;
  const int ne = int(a.num_experts);
  int my_idx = 0;      // lanes k < topk: the k-th pick
  float my_s = 0.f;    // its score
  if (a.tid2eid) {
    if (lane < a.topk) {
      const int32_t tok = a.token_ids[t];
      my_idx = (tok >= 0 && tok < a.vocab) ? a.tid2eid[int64_t(tok) * a.topk + lane] : 0;
      my_s = sc[my_idx];
    }
  } else {
    float s[kSlots], v[kSlots];
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      const int e = lane + 32 * j;
      s[j] = e < ne ? sc[e] : 0.f;
      v[j] = e < ne ? s[j] + (a.bias ? a.bias[e] : 0.f) : 0.f;
    }
    uint32_t taken = 0;
    for (int k = 0; k < a.topk; ++k) {
      int best = -1;
      float best_v = 0.f, best_s = 0.f;
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {  // ascending e: strict > keeps the lower id on ties
        const int e = lane + 32 * j;
        if (e >= ne || ((taken >> j) & 1u)) continue;
        if (best < 0 || v[j] > best_v) {
          best = e;
          best_v = v[j];
          best_s = s[j];
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const int ob = __shfl_xor_sync(0xffffffffu, best, o);
        const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
        const float os = __shfl_xor_sync(0xffffffffu, best_s, o);
        if (ob >= 0 && (best < 0 || ov > best_v || (ov == best_v && ob < best))) {
          best = ob;
          best_v = ov;
          best_s = os;
        }
      }
      best = __shfl_sync(0xffffffffu, best, 0);  // lane 0's pick (the lanes differ only when scores are NaN)
      best_s = __shfl_sync(0xffffffffu, best_s, 0);
      if (lane == k) {
        my_idx = best;
        my_s = best_s;
      }
      if ((best & 31) == lane) taken |= 1u << (best >> 5);
    }
  }
  // Rank of lane k's pick: picks with a lower id, or the same id at a lower k (a stable sort).
  int rank = 0;
  for (int i = 0; i < a.topk; ++i) {
    const int other = __shfl_sync(0xffffffffu, my_idx, i);
    rank += (other < my_idx || (other == my_idx && i < lane)) ? 1 : 0;
  }
  float sum = 0.f;
  for (int p = 0; p < a.topk; ++p) {  // the score of the pick of rank p
    const uint32_t holder = __ballot_sync(0xffffffffu, lane < a.topk && rank == p);
    sum += __shfl_sync(0xffffffffu, my_s, __ffs(int(holder)) - 1);
  }
  if (lane < a.topk) {
    a.out_idx[t * a.idx_stride + rank] = my_idx;
    a.out_weight[t * a.weight_stride + rank] = my_s / (sum + 1e-20f) * a.route_scale;
  }
}

// --- routing layout ------------------------------------------------------------------------------

struct RouteArgs {
  const int32_t* idx;
  int64_t idx_stride;
  const float* weight;
  int64_t weight_stride;
  int64_t num_tokens;
  int topk;
  int e_begin, num_local;
};

__global__ void moe_count_kernel(RouteArgs a, int32_t* counts) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ float scratch[32];
  const int e = a.e_begin + blockIdx.x;
  float c = 0.f;
  for (int64_t i = threadIdx.x; i < a.num_tokens * a.topk; i += blockDim.x)
    c += a.idx[(i / a.topk) * a.idx_stride + i % a.topk] == e ? 1.f : 0.f;
  c = block_sum(c, scratch);
  if (threadIdx.x == 0) counts[blockIdx.x] = int32_t(c);
}

// Thread i (of kMaxExperts) holds count c of local expert i (0 past num_local): the exclusive
// offsets (offsets[num_local] = the total) and the ascending list of experts with rows, then -1,
// by Hillis-Steele scans in sc / sa (a one-thread loop over 256 counts cost ~60 us of dependent
// L2 loads per call). Leaves sc[i] = the inclusive prefix. All threads call.
__device__ __forceinline__ void route_offsets(int32_t c, int num_local, int32_t* sc, int32_t* sa, int32_t* offsets,
                                              int32_t* active) {
  const int i = threadIdx.x;
  sc[i] = c;
  sa[i] = c > 0 ? 1 : 0;
  __syncthreads();
  for (int o = 1; o < kMaxExperts; o <<= 1) {  // inclusive scans
    const int32_t vc = i >= o ? sc[i - o] : 0, va = i >= o ? sa[i - o] : 0;
    __syncthreads();
    sc[i] += vc;
    sa[i] += va;
    __syncthreads();
  }
  const int na = sa[kMaxExperts - 1];
  if (i < num_local) {
    offsets[i] = sc[i] - c;
    if (c > 0) active[sa[i] - 1] = i;
    if (i >= na) active[i] = -1;
  }
  if (i == 0) offsets[num_local] = sc[kMaxExperts - 1];
}

// The offsets and active list of the counts: one block of kMaxExperts threads.
__global__ void __launch_bounds__(kMaxExperts) moe_offsets_kernel(const int32_t* counts, int num_local,
                                                                  int32_t* offsets, int32_t* active) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ int32_t sc[kMaxExperts], sa[kMaxExperts];
  const int i = threadIdx.x;
  route_offsets(i < num_local ? counts[i] : 0, num_local, sc, sa, offsets, active);
}

// Rows of expert e in token order: an ordered compaction over (t, k) entries in chunks.
__global__ void moe_fill_kernel(RouteArgs a, MoeRouting r) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ int warp_counts[32];
  const int e = a.e_begin + blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  int32_t next = r.row_offsets[blockIdx.x];
  const int64_t total = a.num_tokens * a.topk;
  for (int64_t base = 0; base < total; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const int64_t t = i / a.topk;
    const int k = int(i % a.topk);
    const bool hit = i < total && a.idx[t * a.idx_stride + k] == e;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    __syncthreads();
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < nwarps; ++w) {
      if (w < warp) before += warp_counts[w];
      all += warp_counts[w];
    }
    if (hit) {
      const int32_t row = next + before + __popc(ballot & ((1u << lane) - 1u));
      r.row_token[row] = int32_t(t);
      r.row_weight[row] = a.weight[t * a.weight_stride + k];
      r.slot_row[t * a.topk + k] = row;
    }
    next += all;
  }
}

// The three kernels above in one block for decode-sized batches (at most kRouteSmallEntries (t, k)
// entries): the entries' local experts in shared memory, the counts by shared-memory atomics
// (integers: order-free), route_offsets as moe_offsets_kernel, then each local entry's row: its
// expert's offset plus the number of earlier entries of that expert, i.e. moe_fill_kernel's rows
// (token order within an expert). Also writes slot_row of every entry (-1 where not local).
constexpr int kRouteSmallEntries = 1024;

__global__ void __launch_bounds__(kMaxExperts) moe_route_small_kernel(RouteArgs a, MoeRouting r) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ int32_t ent[kRouteSmallEntries];
  __shared__ int32_t sc[kMaxExperts], sa[kMaxExperts];
  const int i = threadIdx.x;
  const int n = int(a.num_tokens) * a.topk;
  for (int j = i; j < n; j += blockDim.x) {
    const int e = a.idx[(j / a.topk) * a.idx_stride + j % a.topk] - a.e_begin;
    ent[j] = e >= 0 && e < a.num_local ? e : -1;
  }
  sc[i] = 0;
  __syncthreads();
  for (int j = i; j < n; j += blockDim.x)
    if (ent[j] >= 0) atomicAdd(&sc[ent[j]], 1);
  __syncthreads();
  const int32_t c = i < a.num_local ? sc[i] : 0;
  if (i < a.num_local) r.counts[i] = c;
  route_offsets(c, a.num_local, sc, sa, r.row_offsets, r.active);
  __syncthreads();
  sa[i] = sc[i] - c;  // exclusive offsets (route_offsets has read sa)
  __syncthreads();
  for (int j = i; j < n; j += blockDim.x) {
    const int e = ent[j];
    int32_t row = -1;
    if (e >= 0) {
      row = sa[e];
      for (int q = 0; q < j; ++q) row += ent[q] == e ? 1 : 0;
      const int64_t t = j / a.topk;
      r.row_token[row] = int32_t(t);
      r.row_weight[row] = a.weight[t * a.weight_stride + j % a.topk];
    }
    r.slot_row[j] = row;
  }
}

// --- around the grouped GEMMs ---------------------------------------------------------------------

// FP8 act_quant (spec §2.2) of one 128-block held by a warp, 4 values per lane: codes at dst (the
// block's first byte), the block's scale at *scale.
__device__ __forceinline__ void quant_block_store(const float (&v)[4], uint8_t* dst, float* scale) {
  const int lane = threadIdx.x & 31;
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i]));
  amax = warp_max(amax);
  const float s = act_quant_scale(amax, 448.f), inv = 1.0f / s;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) packed |= uint32_t(f32_to_e4m3(v[i] * inv)) << (8 * i);
  *reinterpret_cast<uint32_t*>(dst + lane * 4) = packed;
  if (lane == 0) *scale = s;
}

// The grouped row and 128-block of this warp (one warp per (row, block) of [max_rows, width]), or
// false when the warp has no live row.
__device__ __forceinline__ bool warp_row_block(int64_t width, const int32_t* total_rows, int64_t max_rows,
                                               int64_t* r, int64_t* kb) {
  const int64_t nkb = width / 128;
  const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (wid >= max_rows * nkb) return false;
  *r = wid / nkb;
  *kb = wid % nkb;
  return *r < *total_rows;
}

// x row row_token[r] -> FP8 codes + scales of grouped row r.
__global__ void moe_gather_quant_kernel(Act x, int64_t hidden, const int32_t* row_token, const int32_t* total_rows,
                                        int64_t max_rows, uint8_t* x8, float* scale) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  int64_t r, kb;
  if (!warp_row_block(hidden, total_rows, max_rows, &r, &kb)) return;
  const int lane = threadIdx.x & 31;
  const int64_t t = row_token[r];
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = x.ld(t, kb * 128 + lane * 4 + i);
  quant_block_store(v, x8 + r * hidden + kb * 128, scale + r * (hidden / 128) + kb);
}

// x row row_token[r] -> grouped row r as bf16 (dst_bf16) or fp32.
__global__ void moe_gather_kernel(Act x, int64_t hidden, const int32_t* row_token, const int32_t* total_rows,
                                  int64_t max_rows, uint16_t* dst_bf16, float* dst_f32) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= max_rows * hidden) return;
  const int64_t r = i / hidden, c = i % hidden;
  if (r >= *total_rows) return;
  const float v = x.ld(row_token[r], c);
  if (dst_bf16) {
    dst_bf16[i] = f32_to_bf16(v);
  } else {
    dst_f32[i] = v;
  }
}

// h = swiglu(g, u) * row weight: official (bf16 g/u, h rounded to bf16 then FP8 act_quant), bf16
// (h stored as bf16) or fp32 (f32 g/u/h, no rounding).
struct SwigluArgs {
  const uint16_t* g = nullptr;
  const uint16_t* u = nullptr;
  const float* g32 = nullptr;
  const float* u32 = nullptr;
  int64_t inter = 0;
  float limit = 0;
  const float* row_weight = nullptr;
  const int32_t* total_rows = nullptr;
  int64_t max_rows = 0;
  uint8_t* h8 = nullptr;
  float* scale = nullptr;
  uint16_t* h_bf16 = nullptr;
  float* h_f32 = nullptr;
};

__global__ void moe_swiglu_kernel(SwigluArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  int64_t r, kb;
  if (!warp_row_block(a.inter, a.total_rows, a.max_rows, &r, &kb)) return;
  const int lane = threadIdx.x & 31;
  const float rw = a.row_weight[r];
  const int64_t c0 = r * a.inter + kb * 128 + lane * 4;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float gv = a.g32 ? a.g32[c0 + i] : bf16_to_f32(a.g[c0 + i]);
    const float uv = a.u32 ? a.u32[c0 + i] : bf16_to_f32(a.u[c0 + i]);
    v[i] = silu(fminf(gv, a.limit)) * fminf(fmaxf(uv, -a.limit), a.limit) * rw;
  }
  if (a.h_f32) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a.h_f32[c0 + i] = v[i];
  } else if (a.h_bf16) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a.h_bf16[c0 + i] = f32_to_bf16(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = round_bf16(v[i]);
    quant_block_store(v, a.h8 + r * a.inter + kb * 128, a.scale + r * (a.inter / 128) + kb);
  }
}

__global__ void moe_combine_kernel(const uint16_t* y, const float* y32, int64_t hidden, const int32_t* idx,
                                   int64_t idx_stride, const int32_t* slot_row, Act out, int64_t num_tokens,
                                   int topk, bool accumulate) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens * hidden) return;
  const int64_t t = i / hidden, d = i % hidden;
  float o = accumulate ? out.ld(t, d) : 0.0f;
  int prev = -1;
  for (int n = 0; n < topk; ++n) {  // slots in ascending expert id
    int best = -1, best_e = 0;
    for (int k = 0; k < topk; ++k) {
      const int e = idx[t * idx_stride + k];
      if (e > prev && (best < 0 || e < best_e)) {
        best = k;
        best_e = e;
      }
    }
    if (best < 0) break;
    prev = best_e;
    const int32_t row = slot_row[t * topk + best];
    if (row >= 0) o += y32 ? y32[int64_t(row) * hidden + d] : bf16_to_f32(y[int64_t(row) * hidden + d]);
  }
  out.st(t, d, o);
}

RouteArgs route_args(const TensorView& idx, const TensorView& weight, int e_begin, int e_end) {
  CHECK(idx.dtype == DType::kI32 && idx.device == Device::kCuda) << "moe idx: I32 device view";
  CHECK(weight.dtype == DType::kF32 && weight.device == Device::kCuda) << "moe weight: F32 device view";
  RouteArgs a{};
  a.idx = static_cast<const int32_t*>(idx.data);
  a.idx_stride = idx.stride[0];
  a.weight = static_cast<const float*>(weight.data);
  a.weight_stride = weight.stride[0];
  a.num_tokens = idx.shape[0];
  a.topk = int(idx.shape[1]);
  a.e_begin = e_begin;
  a.num_local = e_end - e_begin;
  return a;
}

}  // namespace

// --- launchers -----------------------------------------------------------------------------------

void launch_moe_gate(const MoeGateParams& p, cudaStream_t s, float* logits) {
  const int64_t n = p.x.shape[0];
  GateArgs a{};
  a.x = make_act(p.x, "moe_gate x");
  a.gate = make_weight_act(p.gate, "moe_gate gate");
  a.num_experts = p.gate.rows;
  a.hidden = p.gate.cols;
  CHECK_EQ(act_row_width(p.x), a.hidden);
  CHECK_LE(a.num_experts, kMaxExperts);
  CHECK(p.topk >= 1 && p.topk <= kMaxTopk && p.topk <= a.num_experts) << "moe_gate topk " << p.topk;
  if (!p.bias.empty()) {
    CHECK(p.bias.dtype == DType::kF32);
    a.bias = static_cast<const float*>(p.bias.data);
  }
  if (!p.tid2eid.empty()) {
    CHECK(p.tid2eid.dtype == DType::kI32) << "moe_gate tid2eid: I32";
    CHECK_EQ(p.tid2eid.cols, p.topk);
    CHECK(p.token_ids.dtype == DType::kI32 && p.token_ids.device == Device::kCuda) << "moe_gate token_ids";
    a.tid2eid = static_cast<const int32_t*>(p.tid2eid.data);
    a.vocab = p.tid2eid.rows;
    a.token_ids = static_cast<const int32_t*>(p.token_ids.data);
  }
  CHECK(p.out_idx.dtype == DType::kI32 && p.out_weight.dtype == DType::kF32) << "moe_gate outputs";
  a.out_idx = static_cast<int32_t*>(p.out_idx.data);
  a.idx_stride = p.out_idx.stride[0];
  a.out_weight = static_cast<float*>(p.out_weight.data);
  a.weight_stride = p.out_weight.stride[0];
  a.topk = p.topk;
  a.route_scale = p.route_scale;
  if (n == 0) return;
  float* scores = logits;
  if (logits) {  // gate . x already computed [n, experts]: activate in place
    launch(moe_gate_activate_kernel, grid_x_for(std::min<int64_t>(n * a.num_experts, int64_t(1) << 24), 256,
                                           "moe_gate_activate"),
                               256, 0, s)(logits, n * a.num_experts);
    launch_check("moe_gate_activate", s);
  } else {
    const bool vec = a.hidden % 4 == 0 && a.x.vec_ok() && a.gate.vec_ok();
    scores = static_cast<float*>(stream_alloc(size_t(n * a.num_experts) * 4, s));
    if (n <= kGateTok) {
      launch(moe_gate_scores_row_kernel, unsigned(a.num_experts), 256, 0, s)(a, n, vec, scores);
    } else {
      const dim3 grid(unsigned(ceil_div(a.num_experts, kGateWarps)), grid_yz(ceil_div(n, kGateTok)));
      launch(moe_gate_scores_kernel, grid, kGateWarps * 32, 0, s)(a, n, vec, scores);
    }
    launch_check("moe_gate_scores", s);
  }
  const unsigned select_grid = grid_x_for(n, kGateWarps, "moe_gate_select");
  if (a.num_experts <= 256)
    launch(moe_gate_select_kernel<8>, select_grid, kGateWarps * 32, 0, s)(a, n, scores);
  else
    launch(moe_gate_select_kernel<kMaxExperts / 32>, select_grid, kGateWarps * 32, 0, s)(a, n, scores);
  launch_check("moe_gate_select", s);
  if (!logits) stream_free(scores, s);
}

void launch_moe_route(const TensorView& idx, const TensorView& weight, int e_begin, int e_end, const MoeRouting& r,
                      cudaStream_t s, bool small_ok) {
  const RouteArgs a = route_args(idx, weight, e_begin, e_end);
  CHECK_LE(a.topk, kMaxTopk);
  CHECK_LE(a.num_local, kMaxExperts) << "moe_route: local experts";
  V4RT_REQUIRE(a.num_tokens * a.topk < (int64_t(1) << 31),
               "moe_route: " << a.num_tokens << " tokens x top-" << a.topk << " rows exceed the int32 row index");
  if (a.num_local > 0 && small_ok && a.num_tokens * a.topk <= kRouteSmallEntries) {
    launch(moe_route_small_kernel, 1, kMaxExperts, 0, s)(a, r);
    launch_check("moe_route_small", s);
    return;
  }
  memset_async(r.slot_row, 0xff, size_t(a.num_tokens * a.topk) * 4, s);
  if (a.num_local <= 0) return;
  launch(moe_count_kernel, unsigned(a.num_local), 256, 0, s)(a, r.counts);
  launch_check("moe_count", s);
  launch(moe_offsets_kernel, 1, kMaxExperts, 0, s)(r.counts, a.num_local, r.row_offsets, r.active);
  launch_check("moe_offsets", s);
  launch(moe_fill_kernel, unsigned(a.num_local), 256, 0, s)(a, r);
  launch_check("moe_fill", s);
}

void launch_moe_gather_quant(const Act& x, int64_t hidden, const MoeRouting& r, int num_local, int64_t max_rows,
                             uint8_t* x8, float* scale, cudaStream_t s) {
  CHECK_EQ(hidden % 128, 0) << "moe hidden " << hidden;
  const int64_t threads = max_rows * (hidden / 128) * 32;
  if (threads == 0) return;
  launch(moe_gather_quant_kernel, grid_x_for(threads, 256, "moe_gather_quant"), 256, 0, s)(x, hidden, r.row_token,
                                                                           r.row_offsets + num_local, max_rows, x8, scale);
  launch_check("moe_gather_quant", s);
}

void launch_moe_gather(const Act& x, int64_t hidden, const MoeRouting& r, int num_local, int64_t max_rows,
                       uint16_t* x_bf16, float* x_f32, cudaStream_t s) {
  CHECK((x_bf16 != nullptr) != (x_f32 != nullptr)) << "moe_gather: one destination";
  const int64_t n = max_rows * hidden;
  if (n == 0) return;
  launch(moe_gather_kernel, grid_x_for(n, 256, "moe_gather"), 256, 0, s)(x, hidden, r.row_token, r.row_offsets + num_local,
                                                               max_rows, x_bf16, x_f32);
  launch_check("moe_gather", s);
}

void launch_moe_swiglu(const MoeSwigluIo& io, int64_t inter, float limit, const MoeRouting& r, int num_local,
                       int64_t max_rows, cudaStream_t s) {
  CHECK_EQ(inter % 128, 0) << "moe inter " << inter;
  SwigluArgs a;
  a.g = io.g;
  a.u = io.u;
  a.g32 = io.g32;
  a.u32 = io.u32;
  a.inter = inter;
  a.limit = limit;
  a.row_weight = r.row_weight;
  a.total_rows = r.row_offsets + num_local;
  a.max_rows = max_rows;
  a.h8 = io.h8;
  a.scale = io.h_scale;
  a.h_bf16 = io.h_bf16;
  a.h_f32 = io.h_f32;
  CHECK((a.g && a.u) || (a.g32 && a.u32)) << "moe_swiglu: no inputs";
  CHECK(a.h_f32 || a.h_bf16 || (a.h8 && a.scale)) << "moe_swiglu: no output";
  const int64_t threads = max_rows * (inter / 128) * 32;
  if (threads == 0) return;
  launch(moe_swiglu_kernel, grid_x_for(threads, 256, "moe_swiglu"), 256, 0, s)(a);
  launch_check("moe_swiglu", s);
}

void launch_moe_combine(const uint16_t* y, const float* y_f32, int64_t hidden, const TensorView& idx,
                        const MoeRouting& r, const Act& out, int64_t num_tokens, int topk, bool accumulate,
                        cudaStream_t s) {
  if (num_tokens * hidden == 0) return;
  launch(moe_combine_kernel, grid_x_for(num_tokens * hidden, 256, "moe_combine"), 256, 0, s)(
      y, y_f32, hidden, static_cast<const int32_t*>(idx.data), idx.stride[0], r.slot_row, out, num_tokens, topk,
      accumulate);
  launch_check("moe_combine", s);
}

}  // namespace v4rt::kernels::cuda
