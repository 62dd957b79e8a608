// SPDX-License-Identifier: MIT
// Mixture of experts on the device (spec §6): the router (sqrt-softplus scores; hash table or top-k
// of score + bias, ties to the lower expert; ids sorted ascending), and the pieces of the routed
// expert pipeline that surround the grouped FP4 GEMMs: a deterministic routing layout (rows grouped
// by expert, tokens ascending inside an expert), gather + FP8 act_quant, SwiGLU + routing weight +
// act_quant fused, and the combine that adds expert outputs in ascending expert id (fp32).
#include "kernels/cuda/cuda_check.h"
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

__global__ void __launch_bounds__(256) moe_gate_kernel(GateArgs a) {
  __shared__ float sc[kMaxExperts];
  __shared__ bool taken[kMaxExperts];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int64_t e = warp; e < a.num_experts; e += nwarps) {
    float part = 0.f;
    for (int64_t i = lane; i < a.hidden; i += 32) part = fmaf(a.gate.ld(e, i), a.x.ld(t, i), part);
    part = warp_sum(part);
    if (lane == 0) {
      sc[e] = sqrtf(softplus(part));
      taken[e] = false;
    }
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  int idx[kMaxTopk];
  if (a.tid2eid) {
    const int32_t tok = a.token_ids[t];
    for (int k = 0; k < a.topk; ++k) idx[k] = (tok >= 0 && tok < a.vocab) ? a.tid2eid[int64_t(tok) * a.topk + k] : 0;
  } else {
    for (int k = 0; k < a.topk; ++k) {
      int best = -1;
      float best_v = 0.f;
      for (int e = 0; e < int(a.num_experts); ++e) {
        if (taken[e]) continue;
        const float v = sc[e] + (a.bias ? a.bias[e] : 0.f);
        if (best < 0 || v > best_v) {
          best = e;
          best_v = v;
        }
      }
      taken[best] = true;
      idx[k] = best;
    }
  }
  for (int i = 1; i < a.topk; ++i) {  // ascending expert id
    const int v = idx[i];
    int j = i - 1;
    while (j >= 0 && idx[j] > v) {
      idx[j + 1] = idx[j];
      --j;
    }
    idx[j + 1] = v;
  }
  float sum = 0.f;
  for (int k = 0; k < a.topk; ++k) sum += sc[idx[k]];
  for (int k = 0; k < a.topk; ++k) {
    a.out_idx[t * a.idx_stride + k] = idx[k];
    a.out_weight[t * a.weight_stride + k] = sc[idx[k]] / (sum + 1e-20f) * a.route_scale;
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
  __shared__ float scratch[32];
  const int e = a.e_begin + blockIdx.x;
  float c = 0.f;
  for (int64_t i = threadIdx.x; i < a.num_tokens * a.topk; i += blockDim.x)
    c += a.idx[(i / a.topk) * a.idx_stride + i % a.topk] == e ? 1.f : 0.f;
  c = block_sum(c, scratch);
  if (threadIdx.x == 0) counts[blockIdx.x] = int32_t(c);
}

__global__ void moe_offsets_kernel(const int32_t* counts, int num_local, int32_t* offsets) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int32_t run = 0;
  for (int i = 0; i < num_local; ++i) {
    offsets[i] = run;
    run += counts[i];
  }
  offsets[num_local] = run;
}

// Rows of expert e in token order: an ordered compaction over (t, k) entries in chunks.
__global__ void moe_fill_kernel(RouteArgs a, MoeRouting r) {
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

// --- around the grouped GEMMs ---------------------------------------------------------------------

// One warp per (grouped row, 128-block), as act_quant_fp8_kernel, reading x row row_token[r].
__global__ void moe_gather_quant_kernel(Act x, int64_t hidden, const int32_t* row_token, const int32_t* total_rows,
                                        int64_t max_rows, uint8_t* x8, float* scale) {
  const int64_t nkb = hidden / 128;
  const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (wid >= max_rows * nkb) return;
  const int64_t r = wid / nkb, kb = wid % nkb;
  if (r >= *total_rows) return;
  const int64_t t = row_token[r];
  float v[4];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[i] = x.ld(t, kb * 128 + lane * 4 + i);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  amax = warp_max(amax);
  const float s = act_quant_scale(amax, 448.f), inv = 1.0f / s;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) packed |= uint32_t(f32_to_e4m3(v[i] * inv)) << (8 * i);
  *reinterpret_cast<uint32_t*>(x8 + r * hidden + kb * 128 + lane * 4) = packed;
  if (lane == 0) scale[r * nkb + kb] = s;
}

__global__ void moe_gather_bf16_kernel(Act x, int64_t hidden, const int32_t* row_token, const int32_t* total_rows,
                                       int64_t max_rows, uint16_t* xb) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= max_rows * hidden) return;
  const int64_t r = i / hidden, c = i % hidden;
  if (r >= *total_rows) return;
  xb[i] = f32_to_bf16(x.ld(row_token[r], c));
}

__global__ void moe_swiglu_quant_kernel(const uint16_t* g, const uint16_t* u, int64_t inter, float limit,
                                        const float* row_weight, const int32_t* total_rows, int64_t max_rows,
                                        uint8_t* h8, float* scale, bool bf16_out) {
  const int64_t nkb = inter / 128;
  const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (wid >= max_rows * nkb) return;
  const int64_t r = wid / nkb, kb = wid % nkb;
  if (r >= *total_rows) return;
  const float rw = row_weight[r];
  float v[4];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t c = r * inter + kb * 128 + lane * 4 + i;
    const float gv = bf16_to_f32(g[c]), uv = bf16_to_f32(u[c]);
    v[i] = round_bf16(silu(fminf(gv, limit)) * fminf(fmaxf(uv, -limit), limit) * rw);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  if (bf16_out) {
    uint16_t* hb = reinterpret_cast<uint16_t*>(h8) + r * inter + kb * 128 + lane * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) hb[i] = f32_to_bf16(v[i]);
    return;
  }
  amax = warp_max(amax);
  const float s = act_quant_scale(amax, 448.f), inv = 1.0f / s;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) packed |= uint32_t(f32_to_e4m3(v[i] * inv)) << (8 * i);
  *reinterpret_cast<uint32_t*>(h8 + r * inter + kb * 128 + lane * 4) = packed;
  if (lane == 0) scale[r * nkb + kb] = s;
}

__global__ void moe_combine_kernel(const uint16_t* y, int64_t hidden, const int32_t* idx, int64_t idx_stride,
                                   const int32_t* slot_row, Act out, int64_t num_tokens, int topk) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens * hidden) return;
  const int64_t t = i / hidden, d = i % hidden;
  float o = out.ld(t, d);
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
    if (row >= 0) o += bf16_to_f32(y[int64_t(row) * hidden + d]);
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

void launch_moe_gate(const MoeGateParams& p, cudaStream_t s) {
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
  moe_gate_kernel<<<unsigned(n), 256, 0, s>>>(a);
  launch_check("moe_gate", s);
}

void launch_moe_route(const TensorView& idx, const TensorView& weight, int e_begin, int e_end, const MoeRouting& r,
                      cudaStream_t s) {
  const RouteArgs a = route_args(idx, weight, e_begin, e_end);
  CHECK_LE(a.topk, kMaxTopk);
  CUDA_CHECK(cudaMemsetAsync(r.slot_row, 0xff, size_t(a.num_tokens * a.topk) * 4, s));
  if (a.num_local <= 0) return;
  moe_count_kernel<<<unsigned(a.num_local), 256, 0, s>>>(a, r.counts);
  launch_check("moe_count", s);
  moe_offsets_kernel<<<1, 32, 0, s>>>(r.counts, a.num_local, r.row_offsets);
  launch_check("moe_offsets", s);
  moe_fill_kernel<<<unsigned(a.num_local), 256, 0, s>>>(a, r);
  launch_check("moe_fill", s);
}

void launch_moe_gather_quant(const Act& x, int64_t hidden, const MoeRouting& r, int num_local, int64_t max_rows,
                             uint8_t* x8, float* scale, cudaStream_t s) {
  CHECK_EQ(hidden % 128, 0) << "moe hidden " << hidden;
  const int64_t threads = max_rows * (hidden / 128) * 32;
  if (threads == 0) return;
  moe_gather_quant_kernel<<<unsigned(ceil_div(threads, 256)), 256, 0, s>>>(x, hidden, r.row_token,
                                                                           r.row_offsets + num_local, max_rows, x8, scale);
  launch_check("moe_gather_quant", s);
}

void launch_moe_gather_bf16(const Act& x, int64_t hidden, const MoeRouting& r, int num_local, int64_t max_rows,
                            uint16_t* xb, cudaStream_t s) {
  const int64_t n = max_rows * hidden;
  if (n == 0) return;
  moe_gather_bf16_kernel<<<unsigned(ceil_div(n, 256)), 256, 0, s>>>(x, hidden, r.row_token, r.row_offsets + num_local,
                                                                    max_rows, xb);
  launch_check("moe_gather_bf16", s);
}

void launch_moe_swiglu_quant(const uint16_t* g, const uint16_t* u, int64_t inter, float limit, const MoeRouting& r,
                             int num_local, int64_t max_rows, uint8_t* h8, float* scale, bool bf16_out,
                             cudaStream_t s) {
  CHECK_EQ(inter % 128, 0) << "moe inter " << inter;
  const int64_t threads = max_rows * (inter / 128) * 32;
  if (threads == 0) return;
  moe_swiglu_quant_kernel<<<unsigned(ceil_div(threads, 256)), 256, 0, s>>>(
      g, u, inter, limit, r.row_weight, r.row_offsets + num_local, max_rows, h8, scale, bf16_out);
  launch_check("moe_swiglu_quant", s);
}

void launch_moe_combine(const uint16_t* y, int64_t hidden, const TensorView& idx, const MoeRouting& r, const Act& out,
                        int64_t num_tokens, int topk, cudaStream_t s) {
  if (num_tokens * hidden == 0) return;
  moe_combine_kernel<<<unsigned(ceil_div(num_tokens * hidden, 256)), 256, 0, s>>>(
      y, hidden, static_cast<const int32_t*>(idx.data), idx.stride[0], r.slot_row, out, num_tokens, topk);
  launch_check("moe_combine", s);
}

}  // namespace v4rt::kernels::cuda
