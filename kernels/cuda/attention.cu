// SPDX-License-Identifier: MIT
// Sparse attention with a per-head sink over window + compressed candidates (spec §5.6).
// K = V = one shared latent row per candidate (MQA-like), so a block serves 8 heads of one token
// (one warp per head) and stages each 64-candidate tile of latent rows in shared memory once for
// all of them. The online softmax walks the candidate list in the reference's blocks of 64,
// window first, with the running max updated per block (which fixes where bf16 P is rounded).
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kTile = 64;
constexpr int kHeadsPerBlock = 8;
constexpr int kMaxPerLane = 16;  // head_dim <= 512
constexpr int kMaxSmem = kTile * 512 * 4;

struct AttnArgs {
  Act q, win, comp, out;
  const int32_t* comp_idx;
  int64_t idx_stride, num_list;
  const float* sink;
  float* lse;
  int64_t lse_stride;
  int h_begin, h_end, dim;
  int64_t num_window_rows, num_comp, pos_begin, window_pos0;
  int window, comp_ratio;
  float scale;
  bool include_sink, bf16_probs, out_round, has_list;
};

__global__ void __launch_bounds__(kHeadsPerBlock * 32) sparse_attention_kernel(AttnArgs a) {
  extern __shared__ float kv[];  // [kTile][dim]
  __shared__ int64_t codes[kTile];  // >= 0: window row; <= -2: compressed entry -code-2; -1: none
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = blockIdx.x;
  const int h = a.h_begin + int(blockIdx.y) * kHeadsPerBlock + warp;
  const bool active = h < a.h_end;
  const int dim = a.dim, per_lane = dim / 32;
  const int64_t pos = a.pos_begin + t;
  const int64_t first = pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
  const int64_t nwin = pos - first + 1;
  int64_t ncomp = 0;
  if (a.has_list) ncomp = a.num_list;
  else if (a.comp_ratio > 0) ncomp = min(a.num_comp, (pos + 1) / a.comp_ratio);
  const int64_t ncand = nwin + ncomp;

  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    qv[k] = (active && k < per_lane) ? a.q.ld(t, int64_t(h) * dim + lane + 32 * k) : 0.f;
    acc[k] = 0.f;
  }
  float m = -INFINITY, den = 0.f;

  for (int64_t tile0 = 0; tile0 < ncand; tile0 += kTile) {
    const int cnt = int(min(int64_t(kTile), ncand - tile0));
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int64_t c = tile0 + threadIdx.x;
      int64_t code = -1;
      if (int(threadIdx.x) < cnt) {
        if (c < nwin) {
          const int64_t row = first + c - a.window_pos0;
          code = (row >= 0 && row < a.num_window_rows) ? row : -1;
        } else {
          const int64_t j = a.has_list ? a.comp_idx[t * a.idx_stride + (c - nwin)] : c - nwin;
          code = (j >= 0 && j < a.num_comp) ? -(j + 2) : -1;
        }
      }
      codes[threadIdx.x] = code;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < cnt * dim; e += blockDim.x) {
      const int i = e / dim, d = e % dim;
      const int64_t code = codes[i];
      kv[e] = code >= 0 ? a.win.ld(code, d) : (code <= -2 ? a.comp.ld(-code - 2, d) : 0.f);
    }
    __syncthreads();
    if (!active) continue;
    float z0 = -INFINITY, z1 = -INFINITY;
    for (int i = 0; i < cnt; ++i) {
      float part = 0.f;
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k)
        if (k < per_lane) part = fmaf(qv[k], kv[i * dim + lane + 32 * k], part);
      float z = warp_sum(part) * a.scale;
      if (codes[i] == -1) z = -INFINITY;
      if ((i & 31) == lane) {
        if (i < 32) z0 = z;
        else z1 = z;
      }
    }
    const float mb = fmaxf(m, warp_max(fmaxf(z0, z1)));
    if (mb == -INFINITY) continue;  // a tile of absent candidates before any valid one
    const float rescale = m == -INFINITY ? 0.f : expf(m - mb);
    den *= rescale;
#pragma unroll
    for (int k = 0; k < kMaxPerLane; ++k) acc[k] *= rescale;
    const float p0 = z0 == -INFINITY ? 0.f : expf(z0 - mb);
    const float p1 = z1 == -INFINITY ? 0.f : expf(z1 - mb);
    den += warp_sum(p0 + p1);
    const float pv0 = a.bf16_probs ? round_bf16(p0) : p0;
    const float pv1 = a.bf16_probs ? round_bf16(p1) : p1;
    for (int i = 0; i < cnt; ++i) {
      const float b0 = __shfl_sync(0xffffffffu, pv0, i & 31);
      const float b1 = __shfl_sync(0xffffffffu, pv1, i & 31);
      const float pv = i < 32 ? b0 : b1;
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k)
        if (k < per_lane) acc[k] = fmaf(pv, kv[i * dim + lane + 32 * k], acc[k]);
    }
    m = mb;
  }
  if (!active) return;
  if (a.include_sink) den += expf(a.sink[h] - m);
  const float inv = 1.0f / den;
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k)
    if (k < per_lane) a.out.st(t, int64_t(h) * dim + lane + 32 * k, acc[k] * inv, a.out_round);
  if (a.lse && lane == 0) a.lse[t * a.lse_stride + h] = m + logf(den);
}

}  // namespace

void launch_sparse_attention(const SparseAttentionParams& p, cudaStream_t s) {
  const int64_t n = p.q.shape[0], heads = p.q.shape[1], dim = p.q.shape[2];
  CHECK(dim % 32 == 0 && dim <= 32 * kMaxPerLane) << "attention head_dim " << dim;
  CHECK_EQ(act_row_width(p.out), heads * dim);
  CHECK_EQ(act_row_width(p.window_kv), dim);
  AttnArgs a{};
  a.q = make_act(p.q, "attention q");
  a.win = make_act(p.window_kv, "attention window_kv");
  a.out = make_act(p.out, "attention out");
  a.num_comp = p.comp_kv.data ? p.comp_kv.shape[0] : 0;
  if (a.num_comp > 0) {
    CHECK_EQ(act_row_width(p.comp_kv), dim);
    a.comp = make_act(p.comp_kv, "attention comp_kv");
  }
  a.has_list = p.comp_idx.data != nullptr;
  if (a.has_list) {
    CHECK(p.comp_idx.dtype == DType::kI32 && p.comp_idx.device == Device::kCuda) << "attention comp_idx";
    a.comp_idx = static_cast<const int32_t*>(p.comp_idx.data);
    a.idx_stride = p.comp_idx.stride[0];
    a.num_list = p.comp_idx.shape[1];
  }
  CHECK(p.sink.dtype == DType::kF32 && p.sink.data) << "attention sink: F32 weight";
  a.sink = static_cast<const float*>(p.sink.data);
  if (p.lse.data) {
    CHECK(p.lse.dtype == DType::kF32);
    a.lse = static_cast<float*>(p.lse.data);
    a.lse_stride = p.lse.stride[0];
  }
  a.h_begin = p.h_begin;
  a.h_end = p.h_end < 0 ? int(heads) : p.h_end;
  a.dim = int(dim);
  a.num_window_rows = p.window_kv.shape[0];
  a.pos_begin = p.pos_begin;
  a.window_pos0 = p.window_pos0;
  a.window = p.window;
  a.comp_ratio = p.comp_ratio;
  a.scale = p.softmax_scale;
  a.include_sink = p.include_sink;
  a.bf16_probs = p.bf16_probs;
  a.out_round = p.out_bf16;
  const int nh = a.h_end - a.h_begin;
  if (n == 0 || nh <= 0) return;
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(sparse_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
    attr_set = true;
  }
  const dim3 grid(unsigned(n), unsigned(ceil_div(nh, kHeadsPerBlock)));
  sparse_attention_kernel<<<grid, kHeadsPerBlock * 32, size_t(kTile) * size_t(dim) * 4, s>>>(a);
  launch_check("sparse_attention", s);
}

}  // namespace v4rt::kernels::cuda
