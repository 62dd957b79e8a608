// SPDX-License-Identifier: MIT
// Sparse attention with a per-head sink over window + compressed candidates (spec §5.6).
// K = V = one shared latent row per candidate (MQA-like), so a block serves 8 heads of one token
// (one warp per head) and stages each 64-candidate tile of latent rows in shared memory once for
// all of them. The online softmax walks the candidate list in the reference's blocks of 64,
// window first, with the running max updated per block (which fixes where bf16 P is rounded).
// Decode (few query tokens) splits the candidate list across blocks, flash-decoding style: each
// split of whole 64-candidate tiles keeps its own (max, denominator, unnormalized output) and a
// second kernel merges the splits and adds the sink. With bf16 P the rounding then happens against
// the split's running max instead of the global one (a bf16-level difference). Under the official
// numerics (bf16 q / kv, bf16 P, head_dim % 128 == 0) prefill shapes take sparse_attention_tc_kernel
// (attention_tc.cu): 64 heads of a query on bf16 mma.sync per staged tile, the next tile's compact
// entries fetched under the MMAs (CudaBackendOptions::attention_tensor_cores,
// debug.cuda_attention_tc), or for head_dim 512 sparse_attention_wgmma_kernel (attention_wgmma.cu,
// the same numerics on bf16 wgmma; CudaBackendOptions::attention_wgmma, debug.cuda_attention_wgmma);
// with CudaBackendOptions::decode_tensor_cores (debug.cuda_decode_tc, on by default) decode shapes
// take it too, split over the candidates when the tokens do not fill the SMs (tc_splits). Otherwise
// decode-sized calls (few tokens x heads, or a decode batch) take sparse_attention_mqa_kernel: 32
// heads per block share each staged tile (CudaBackendOptions::attention_per_warp,
// debug.cuda_attention_per_warp in the runtime YAML, forces the per-warp kernel there instead, for
// comparison).
// Compressed entries in the compact kFp8Rope rows (official numerics, common/kv_format.h) are
// decoded as each tile is staged (kv_decode.cuh): 584 bytes read per Flash entry instead of 2048.
// One launch serves many independent calls (sparse_attention_batch: a decode batch, one part per
// sequence): every block resolves its token's part (views, positions, lists) from the descriptors
// in the kernel parameters; a single call is the batch of one.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_decode.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

using namespace attn;

constexpr int kHeadsPerBlock = 8;
constexpr int kMaxPerLane = 16;  // head_dim <= 512
constexpr int kMaxSmem = kTile * 512 * 4;
constexpr int kMqaMaxSmem = (32 * 512 + kTile * (512 + 4) + 32 * kTile) * 4;  // sparse_attention_mqa_kernel

// Element d of compressed entry j, from whichever storage holds the entries.
__device__ __forceinline__ float comp_ld(const AttnPart& p, int64_t j, int d) {
  return p.ckv.data ? p.ckv.fp8_ld(p.ckv.row(j), d) : p.comp.ld(j, d);
}

// Bounds (256, 2): ptxas then allocates 87 registers and spills nothing (without the hint it picked
// 80 with a 4-byte spill); the 128 KB tile of head_dim 512 holds one block per SM either way.
__global__ void __launch_bounds__(kHeadsPerBlock * 32, 2) sparse_attention_kernel(const __grid_constant__ AttnArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ float kv[];  // [kTile][dim]
  __shared__ int64_t codes[kTile];  // >= 0: window row; <= -2: compressed entry -code-2; -1: none
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t tg = blockIdx.x;
  const TokArgs ta = token_args(a, tg);
  const AttnPart& part = ta.p;
  const int64_t t = ta.t;
  const int h = a.h_begin + int(blockIdx.y) * kHeadsPerBlock + warp;
  const bool active = h < a.h_end;
  const int dim = a.dim, per_lane = dim / 32;
  const CandRange r = candidate_range(a, part, t, blockIdx.z);

  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    qv[k] = (active && k < per_lane) ? part.q.ld(t, int64_t(h) * dim + lane + 32 * k) : 0.f;
    acc[k] = 0.f;
  }
  float m = -INFINITY, den = 0.f;

  for (int64_t tile0 = r.cand0; tile0 < r.ncand; tile0 += kTile) {
    const int cnt = int(min(int64_t(kTile), r.ncand - tile0));
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int64_t c = tile0 + threadIdx.x;
      int64_t code = -1;
      if (int(threadIdx.x) < cnt) code = candidate_code(part, r, t, c);
      codes[threadIdx.x] = code;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < cnt * dim; e += blockDim.x) {
      const int i = e / dim, d = e % dim;
      const int64_t code = codes[i];
      kv[e] = code >= 0 ? part.win.ld(code, d) : (code <= -2 ? comp_ld(part, -code - 2, d) : 0.f);
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
  if (a.num_splits > 1) {
    const int nh = a.h_end - a.h_begin;
    const int64_t slot = (tg * nh + (h - a.h_begin)) * a.num_splits + blockIdx.z;
#pragma unroll
    for (int k = 0; k < kMaxPerLane; ++k)
      if (k < per_lane) a.part_acc[slot * dim + lane + 32 * k] = acc[k];
    if (lane == 0) {
      a.part_ml[2 * slot] = m;
      a.part_ml[2 * slot + 1] = den;
    }
    return;
  }
  den = den_with_sink(a, h, m, den);
  const float inv = 1.0f / den;
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k)
    if (k < per_lane) part.out.st(t, int64_t(h) * dim + lane + 32 * k, acc[k] * inv, a.out_round);
  if (part.lse && lane == 0) part.lse[t * part.lse_stride + h] = m + logf(den);
}

// --- decode: all heads of a block share each latent row (MQA) ----------------------------------

constexpr int kMqaHeads = 32;  // heads per block
constexpr int kMqaMaxJ = 4;    // head_dim / 128 <= 4

// Decode shapes (few tokens, long candidate lists): block (split z, head block hb, token t) loads
// each 64-candidate latent tile once into shared memory for 32 heads (the per-warp kernel above
// loads it once per 8 heads), computes S = Q K^T with a 2 heads x 4 candidates register tile per
// thread, the online softmax of the tile per head (one warp per 4 heads), then O += P V with a
// 4 heads x 16 dims register tile per thread. Writes the split's partial state for the merge
// kernel. head_dim % 128 == 0, <= 512; rows read as float4 (Act::ld4).
// Bounds (256, 1): 151 registers, no spill (ptxas capped itself at 128 with a 4-byte spill
// otherwise); the ~205 KB of shared memory at head_dim 512 holds one block per SM either way.
__global__ void __launch_bounds__(256, 1) sparse_attention_mqa_kernel(const __grid_constant__ AttnArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) float smem[];
  const int dim = a.dim, ds = dim + 4;  // padded tile row: conflict-free float4 reads across rows
  float* qs = smem;                     // [kMqaHeads][dim]
  float* kv = qs + kMqaHeads * dim;     // [kTile][ds]
  float* ps = kv + kTile * ds;          // [kMqaHeads][kTile] scores, then probabilities
  __shared__ int64_t codes[kTile];
  __shared__ float m_s[kMqaHeads], den_s[kMqaHeads], resc_s[kMqaHeads];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t tg = blockIdx.z;
  const TokArgs ta = token_args(a, tg);
  const AttnPart& part = ta.p;
  const int64_t t = ta.t;
  const int hb0 = a.h_begin + int(blockIdx.y) * kMqaHeads;  // first head of the block
  const CandRange r = candidate_range(a, part, t, blockIdx.x);
  const int d4 = dim / 4, nj = dim / 128;

  for (int i = tid; i < kMqaHeads * d4; i += blockDim.x) {
    const int hl = i / d4, c = (i % d4) * 4, h = hb0 + hl;
    const float4 v = h < a.h_end ? part.q.ld4(t, int64_t(h) * dim + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    *reinterpret_cast<float4*>(qs + hl * dim + c) = v;
  }
  if (tid < kMqaHeads) {
    m_s[tid] = -INFINITY;
    den_s[tid] = 0.f;
  }
  const int hg = tid >> 5, dg = tid & 31;  // P.V: heads hg*4 + [0,4), dims dg*4 + 128*j + [0,4)
  float acc[4][kMqaMaxJ][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < kMqaMaxJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  for (int64_t tile0 = r.cand0; tile0 < r.ncand; tile0 += kTile) {
    const int cnt = int(min(int64_t(kTile), r.ncand - tile0));
    __syncthreads();
    if (tid < kTile) {
      const int64_t c = tile0 + tid;
      int64_t code = -1;
      if (tid < cnt) code = candidate_code(part, r, t, c);
      codes[tid] = code;
    }
    __syncthreads();
    for (int i = tid; i < kTile * d4; i += blockDim.x) {
      const int row = i / d4, c = (i % d4) * 4;
      const int64_t code = codes[row];
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (code >= 0) v = part.win.ld4(code, c);
      else if (code <= -2 && part.ckv.data) v = part.ckv.fp8_ld4(part.ckv.row(-code - 2), c);
      else if (code <= -2) v = part.comp.ld4(-code - 2, c);
      *reinterpret_cast<float4*>(kv + row * ds + c) = v;
    }
    __syncthreads();
    {  // S: heads th*2 + [0,2), candidates tc + 16*j
      const int th = tid >> 4, tc = tid & 15;
      float sacc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      for (int c = 0; c < dim; c += 4) {
        float4 qv[2], kk[4];
#pragma unroll
        for (int i = 0; i < 2; ++i) qv[i] = *reinterpret_cast<const float4*>(qs + (th * 2 + i) * dim + c);
#pragma unroll
        for (int j = 0; j < 4; ++j) kk[j] = *reinterpret_cast<const float4*>(kv + (tc + 16 * j) * ds + c);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            sacc[i][j] = fmaf(qv[i].x, kk[j].x, fmaf(qv[i].y, kk[j].y, fmaf(qv[i].z, kk[j].z, fmaf(qv[i].w, kk[j].w, sacc[i][j]))));
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) ps[(th * 2 + i) * kTile + tc + 16 * j] = sacc[i][j] * a.scale;
    }
    __syncthreads();
    for (int hl = warp * 4; hl < warp * 4 + 4; ++hl) {  // online softmax, a warp per 4 heads
      float z0 = codes[lane] == -1 ? -INFINITY : ps[hl * kTile + lane];
      float z1 = codes[lane + 32] == -1 ? -INFINITY : ps[hl * kTile + lane + 32];
      const float m_old = m_s[hl];
      const float mb = fmaxf(m_old, warp_max(fmaxf(z0, z1)));
      float resc = 1.f, p0 = 0.f, p1 = 0.f;
      if (mb != -INFINITY) {
        resc = m_old == -INFINITY ? 0.f : expf(m_old - mb);
        p0 = z0 == -INFINITY ? 0.f : expf(z0 - mb);
        p1 = z1 == -INFINITY ? 0.f : expf(z1 - mb);
      }
      const float sum = warp_sum(p0 + p1);
      ps[hl * kTile + lane] = a.bf16_probs ? round_bf16(p0) : p0;
      ps[hl * kTile + lane + 32] = a.bf16_probs ? round_bf16(p1) : p1;
      if (lane == 0) {
        den_s[hl] = den_s[hl] * resc + sum;
        m_s[hl] = mb;
        resc_s[hl] = resc;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float r = resc_s[hg * 4 + i];
#pragma unroll
      for (int j = 0; j < kMqaMaxJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] *= r;
    }
    for (int c = 0; c < cnt; ++c) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = ps[(hg * 4 + i) * kTile + c];
#pragma unroll
      for (int j = 0; j < kMqaMaxJ; ++j) {
        if (j < nj) {
          const float4 v = *reinterpret_cast<const float4*>(kv + c * ds + dg * 4 + 128 * j);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            acc[i][j][0] = fmaf(p[i], v.x, acc[i][j][0]);
            acc[i][j][1] = fmaf(p[i], v.y, acc[i][j][1]);
            acc[i][j][2] = fmaf(p[i], v.z, acc[i][j][2]);
            acc[i][j][3] = fmaf(p[i], v.w, acc[i][j][3]);
          }
        }
      }
    }
  }
  __syncthreads();
  const int nh = a.h_end - a.h_begin;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int h = hb0 + hg * 4 + i;
    if (h >= a.h_end) continue;
    const int64_t slot = (tg * nh + (h - a.h_begin)) * a.num_splits + blockIdx.x;
#pragma unroll
    for (int j = 0; j < kMqaMaxJ; ++j)
      if (j < nj)
        *reinterpret_cast<float4*>(a.part_acc + slot * dim + dg * 4 + 128 * j) =
            make_float4(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]);
  }
  if (tid < kMqaHeads && hb0 + tid < a.h_end) {
    const int64_t slot = (tg * nh + (hb0 + tid - a.h_begin)) * a.num_splits + blockIdx.x;
    a.part_ml[2 * slot] = m_s[tid];
    a.part_ml[2 * slot + 1] = den_s[tid];
  }
}

// Merges the splits of one (token, head): block (t, h), dim / 4 threads of four consecutive dims.
// Latency-bound at decode (a few splits, 64 heads): each thread issues its float4 loads of the first
// kCombineChunk splits before the splits' (max, denominator) arrive, and the split weights
// exp(m_z - m) are computed once per block (shared memory: 3 floats per split). The sums run over
// the splits in ascending order with the expressions of the per-dim loop they replace: bit-identical.
constexpr int kCombineChunk = 8;

__global__ void __launch_bounds__(kMaxPerLane * 32 / 4) attention_combine_kernel(const __grid_constant__ AttnArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ float comb_smem[];  // [num_splits] each: m_z, denominator_z, exp(m_z - m)
  float* m_s = comb_smem;
  float* l_s = comb_smem + a.num_splits;
  float* w_s = comb_smem + 2 * a.num_splits;
  const int64_t tg = blockIdx.x;
  const TokArgs ta = token_args(a, tg);
  const int64_t t = ta.t;
  const int nh = a.h_end - a.h_begin, ns = a.num_splits;
  const int h = a.h_begin + int(blockIdx.y);
  const int64_t slot0 = (tg * nh + (h - a.h_begin)) * ns;
  const int d = 4 * int(threadIdx.x);
  const float4* acc = reinterpret_cast<const float4*>(a.part_acc + slot0 * a.dim + d);
  const int64_t zstep = a.dim / 4;  // float4s from one split's row to the next
  float4 v[kCombineChunk];
#pragma unroll
  for (int j = 0; j < kCombineChunk; ++j)
    if (j < ns) v[j] = acc[j * zstep];
  for (int z = int(threadIdx.x); z < ns; z += int(blockDim.x)) {
    m_s[z] = a.part_ml[2 * (slot0 + z)];
    l_s[z] = a.part_ml[2 * (slot0 + z) + 1];
  }
  __syncthreads();
  float m = -INFINITY;
  for (int z = 0; z < ns; ++z) m = fmaxf(m, m_s[z]);
  for (int z = int(threadIdx.x); z < ns; z += int(blockDim.x)) w_s[z] = m_s[z] != -INFINITY ? expf(m_s[z] - m) : 0.f;
  __syncthreads();
  float den = 0.f;
  for (int z = 0; z < ns; ++z)
    if (m_s[z] != -INFINITY) den += l_s[z] * w_s[z];
  den = den_with_sink(a, h, m, den);
  const float inv = 1.0f / den;
  float o[4] = {0.f, 0.f, 0.f, 0.f};
  for (int z0 = 0; z0 < ns; z0 += kCombineChunk) {
    if (z0 > 0) {
#pragma unroll
      for (int j = 0; j < kCombineChunk; ++j)
        if (z0 + j < ns) v[j] = acc[(z0 + j) * zstep];
    }
#pragma unroll
    for (int j = 0; j < kCombineChunk; ++j) {
      const int z = z0 + j;
      if (z < ns && m_s[z] != -INFINITY) {
        const float w = w_s[z];
        o[0] = fmaf(v[j].x, w, o[0]);
        o[1] = fmaf(v[j].y, w, o[1]);
        o[2] = fmaf(v[j].z, w, o[2]);
        o[3] = fmaf(v[j].w, w, o[3]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) ta.p.out.st(t, int64_t(h) * a.dim + d + i, o[i] * inv, a.out_round);
  if (ta.p.lse && threadIdx.x == 0) ta.p.lse[t * ta.p.lse_stride + h] = m + logf(den);
}

// One part's descriptor (tokens from row0) and what its views allow.
struct PartPlan {
  AttnPart d;
  int64_t rows = 0, max_tiles = 0;  // tokens; 64-candidate tiles of its longest candidate list
  bool vec4 = false;                // every row read 4 elements at a time (Act::ld4, fp8_ld4)
  bool tc = false;                  // rows the tensor-core kernel can load (bf16 or F32, 16-byte aligned)
};

PartPlan plan_part(const SparseAttentionParams& p, int64_t heads, int64_t dim, int64_t row0) {
  CHECK(p.q.shape[1] == heads && p.q.shape[2] == dim) << "attention batch: parts of " << heads << " heads x " << dim
                                                      << " dims, a part has q " << p.q.shape_str();
  CHECK_EQ(act_row_width(p.out), heads * dim);
  CHECK_EQ(act_row_width(p.window_kv), dim);
  PartPlan pl;
  AttnPart& d = pl.d;
  d = AttnPart{};
  pl.rows = p.q.shape[0];
  d.q = make_act(p.q, "attention q");
  d.win = make_act(p.window_kv, "attention window_kv");
  d.out = make_act(p.out, "attention out");
  d.num_comp = p.comp_kv.data ? p.comp_kv.shape[0] : 0;
  const bool compact = p.comp_layout.compact();
  CHECK(!compact || p.comp_layout.format == KvFormat::kFp8Rope)
      << "attention comp_kv: " << kv_format_name(p.comp_layout.format) << " rows are not entry rows";
  check_kv_paging(p.comp_layout, p.comp_blocks, "attention comp_kv");
  if (d.num_comp > 0 && compact) {
    d.ckv = make_kv_rows(p.comp_kv, p.comp_layout, p.comp_blocks, dim, "attention comp_kv");
  } else if (d.num_comp > 0) {
    CHECK_EQ(act_row_width(p.comp_kv), dim);
    d.comp = make_act(p.comp_kv, "attention comp_kv");
  }
  d.has_list = p.comp_idx.data != nullptr;
  if (d.has_list) {
    CHECK(p.comp_idx.dtype == DType::kI32 && p.comp_idx.device == Device::kCuda) << "attention comp_idx";
    d.comp_idx = static_cast<const int32_t*>(p.comp_idx.data);
    d.idx_stride = p.comp_idx.stride[0];
    d.num_list = p.comp_idx.shape[1];
  }
  if (p.lse.data) {
    CHECK(p.lse.dtype == DType::kF32);
    d.lse = static_cast<float*>(p.lse.data);
    d.lse_stride = p.lse.stride[0];
  }
  d.num_window_rows = p.window_kv.shape[0];
  d.pos_begin = p.pos_begin;
  d.window_pos0 = p.window_pos0;
  d.row0 = row0;
  d.window = p.window;
  d.comp_ratio = p.comp_ratio;
  const int64_t pos_last = p.pos_begin + pl.rows - 1;
  int64_t max_comp = 0;
  if (d.has_list) max_comp = d.num_list;
  else if (d.comp_ratio > 0) max_comp = std::min<int64_t>(d.num_comp, (pos_last + 1) / d.comp_ratio);
  pl.max_tiles = ceil_div(std::min<int64_t>(pos_last + 1, p.window) + max_comp, kTile);
  // Whether the compressed entries can be read 4 (and 8) elements at a time.
  const bool comp_vec4 = d.num_comp == 0 || (compact ? d.ckv.vec4_ok() : d.comp.vec_ok());
  // The tensor-core kernel loads rows 8 elements at a time (ld8_as_bf16): bf16 rows, or F32 rows
  // (the model's q and window rows) rounded to bf16 as they load.
  const auto tc_rows_ok = [](const Act& x) { return x.stride % 8 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0; };
  const bool comp_tc = d.num_comp == 0 || (compact ? d.ckv.vec8_ok() : tc_rows_ok(d.comp));
  pl.vec4 = d.q.vec_ok() && d.win.vec_ok() && comp_vec4;
  pl.tc = comp_tc && tc_rows_ok(d.q) && tc_rows_ok(d.win);
  return pl;
}

// Scratch for the partial states of the a.num_splits splits of the n tokens in `a`: a.part_acc and
// a.part_ml point into it. merge_splits frees it.
void* alloc_split_state(AttnArgs& a, int64_t n, cudaStream_t s) {
  const size_t slots = size_t(n) * size_t(a.h_end - a.h_begin) * size_t(a.num_splits);
  void* part = stream_alloc(slots * (size_t(a.dim) + 2) * 4, s);
  a.part_acc = static_cast<float*>(part);
  a.part_ml = a.part_acc + slots * size_t(a.dim);
  return part;
}

// Merges the splits' partial states into the outputs (attention_combine_kernel, which adds the
// sink) and frees their scratch.
void merge_splits(const AttnArgs& a, int64_t n, void* part, cudaStream_t s) {
  // dim % 32 == 0 (launch_sparse_attention_batch): float4 rows, 16-byte aligned in the scratch.
  const size_t smem = size_t(a.num_splits) * 3 * sizeof(float);
  CHECK_LE(smem, size_t(48) << 10) << "sparse_attention combine: " << a.num_splits << " splits";
  launch(attention_combine_kernel, dim3(grid_x(n, "sparse_attention combine"), unsigned(a.h_end - a.h_begin)),
                             unsigned(a.dim / 4), smem, s)(a);
  launch_check("sparse_attention combine", s);
  stream_free(part, s);
}

// Candidate splits of the tensor-core kernel for `blocks` blocks (tokens x head blocks) over at most
// `max_tiles` 64-candidate tiles: the count that minimizes waves x tiles per split (one block per
// SM at head_dim 512), a split costing half a tile more for the combine; none when the blocks fill
// the SMs (prefill). Decode: batch 1 spreads its tiles over as many blocks, batch 64 takes 2.
int64_t tc_splits(int64_t blocks, int64_t max_tiles, int64_t sms) {
  if (blocks >= sms) return 1;
  int64_t best = 1;
  double best_cost = double(max_tiles);
  for (int64_t sp = 2; sp <= max_tiles; ++sp) {
    const double cost = double(ceil_div(blocks * sp, sms) * ceil_div(max_tiles, sp)) + 0.5;
    if (cost < best_cost) {
      best = sp;
      best_cost = cost;
    }
  }
  return ceil_div(max_tiles, ceil_div(max_tiles, best));  // no empty split
}

// Launches the parts gathered in `a` (n tokens in all) on the kernel their shapes call for.
void launch_attention_group(AttnArgs& a, int64_t n, int64_t max_tiles, bool vec4, bool tc_rows, cudaStream_t s,
                            const AttentionKernels& k) {
  const bool per_warp = k.per_warp, tensor_cores = k.tensor_cores, decode_tc = k.decode_tc;
  const int nh = a.h_end - a.h_begin, dim = a.dim;
  // No part has a candidate (a sequence-parallel rank holding none of these tokens' window or
  // entries): one tile of absent candidates, so every row ends as the CPU op's does (no
  // probability mass, lse -inf) for the merge to skip, and no split count divides by zero.
  max_tiles = std::max<int64_t>(1, max_tiles);
  static std::atomic<uint64_t> attr_set[2];
  set_smem_once(sparse_attention_kernel, kMaxSmem, false, &attr_set[0]);
  set_smem_once(sparse_attention_mqa_kernel, kMqaMaxSmem, false, &attr_set[1]);
  const int64_t mqa_blocks = n * ceil_div(nh, kMqaHeads);
  // The multi-query kernel (32 heads of a query share each staged candidate tile) for few query
  // rows, split over the candidates to fill the SMs, and for a decode batch (one row per part)
  // of any size up to the grid's z limit, where the rows alone fill them: the per-head kernels
  // below stage and decode every candidate tile once per 8 heads.
  const bool decode_batch = int64_t(a.num_parts) == n && n <= 65535;
  const bool mqa = dim % 128 == 0 && dim <= 128 * kMqaMaxJ && (2 * mqa_blocks <= num_sms() || decode_batch) &&
                   vec4 && !per_warp;
  // Official numerics (bf16 q / kv, bf16 P; head_dim % 128 == 0) on the tensor-core kernels, unless
  // `tensor_cores` is off: prefill shapes (enough tokens to fill the SMs, not a decode batch), and
  // with `decode_tc` every shape, decode split over the candidates (not under `per_warp`).
  const int64_t head_groups = ceil_div(nh, kHeadsPerBlock);
  const int64_t base_blocks = n * head_groups;
  const bool tc_numerics = tensor_cores && a.bf16_probs && dim % 128 == 0 && dim <= kTcMaxDim && tc_rows;
  const bool tc = tc_numerics && (decode_tc ? !per_warp : !mqa && base_blocks >= num_sms());
  // The one-split 64-head kernels below take shapes whose blocks fill the SMs (prefill, decode
  // batches of 132 and more on an H100); fewer blocks are split over the candidates instead.
  const bool fills = n * ceil_div(nh, kTcHeads) >= num_sms();
  // Consumers on wgmma (attention_wgmma.cu) for long candidate lists, on mma.sync (attention_ws.cu)
  // for short ones: H100, 8K prefill (10 and 3 tiles) 8.56 against 7.16 ms, 1M prefill (the HCA
  // layer up to 130 tiles) 3.41 against 3.57 s (docs/PERFORMANCE.md, twelfth run). In clusters
  // (`wgmma_cluster`) its entries are tiled by the views.
  const bool wgmma = tc && fills && dim == kWgmmaDim && k.wgmma && max_tiles >= k.wgmma_min_tiles;
  const bool tiled = wgmma && k.wgmma_cluster && k.bf16_view;
  // Prefill shapes: the rows as bf16 views first (attention_bf16_view.cu), when they pay.
  void* views = tc && fills && k.bf16_view ? make_bf16_views(a, n * max_tiles * kTile, tiled, s) : nullptr;
  const auto free_views = [&] {
    if (views) stream_free(views, s);
  };
  // The warp-specialized kernels when their producer only copies (every row bf16): with rows to
  // decode one producer warpgroup cannot keep up with the two that multiply (docs/PERFORMANCE.md).
  const bool copy_only = tc && dim == kWgmmaDim && fills && parts_bf16(a);
  CHECK(!(tiled && views) || copy_only) << "attention: tiled entries are read by the wgmma kernel only";
  if (copy_only && wgmma) {
    a.tiles_per_split = int(std::max<int64_t>(1, max_tiles));
    launch_sparse_attention_wgmma(a, n, tiled && views, s);
    free_views();
    return;
  }
  if (copy_only && k.ws) {  // consumers on mma.sync (attention_ws.cu)
    a.tiles_per_split = int(std::max<int64_t>(1, max_tiles));
    launch_sparse_attention_ws(a, n, s);
    free_views();
    return;
  }
  if (tc) {
    // Candidate splits only for decode shapes (decode_tc): prefill shapes keep one split each.
    const int64_t blocks = n * ceil_div(nh, kTcHeads);
    a.num_splits = decode_tc ? int(tc_splits(blocks, max_tiles, num_sms())) : 1;
    a.tiles_per_split = int(ceil_div(max_tiles, a.num_splits));
    void* part = a.num_splits > 1 ? alloc_split_state(a, n, s) : nullptr;
    launch_sparse_attention_tc(a, n, s);
    if (a.num_splits > 1) merge_splits(a, n, part, s);
    free_views();
    return;
  }
  if (mqa) {
    // One wave: splits of whole tiles so that the blocks about fill the SMs once (none when the
    // rows fill them).
    const int64_t want = std::max<int64_t>(1, num_sms() / mqa_blocks);
    a.tiles_per_split = int(ceil_div(max_tiles, std::min(want, max_tiles)));
    a.num_splits = int(std::max<int64_t>(1, ceil_div(max_tiles, a.tiles_per_split)));
    void* part = alloc_split_state(a, n, s);
    const size_t smem = size_t(kMqaHeads * dim + kTile * (dim + 4) + kMqaHeads * kTile) * 4;
    // Tokens on z: at most 65,535 of them take this path (mqa above).
    const dim3 grid{unsigned(a.num_splits), unsigned(ceil_div(nh, kMqaHeads)), unsigned(n)};
    launch(sparse_attention_mqa_kernel, grid, 256, smem, s)(a);
    launch_check("sparse_attention (mqa decode)", s);
    merge_splits(a, n, part, s);
    return;
  }
  // Splits: enough blocks for two waves over the SMs, in whole tiles of the longest list.
  int64_t splits = 1;
  if (base_blocks < num_sms()) splits = std::min<int64_t>(ceil_div(2 * num_sms(), base_blocks), max_tiles);
  a.tiles_per_split = int(ceil_div(max_tiles, splits));
  splits = std::max<int64_t>(1, ceil_div(max_tiles, a.tiles_per_split));
  a.num_splits = int(splits);
  void* part = splits > 1 ? alloc_split_state(a, n, s) : nullptr;
  // Tokens on x; splits (> 1 only when the n x head_groups blocks do not fill the SMs) on z.
  const dim3 grid{grid_x(n, "sparse_attention"), unsigned(head_groups), unsigned(splits)};
  launch(sparse_attention_kernel, grid, kHeadsPerBlock * 32, size_t(kTile) * size_t(dim) * 4, s)(a);
  launch_check("sparse_attention", s);
  if (splits > 1) merge_splits(a, n, part, s);
}

}  // namespace

void launch_sparse_attention(const SparseAttentionParams& p, cudaStream_t s, const AttentionKernels& k) {
  launch_sparse_attention_batch(SparseAttentionBatchParams{&p, 1}, s, k);
}

void launch_sparse_attention_batch(const SparseAttentionBatchParams& batch, cudaStream_t s, const AttentionKernels& k) {
  if (batch.num_parts == 0) return;
  const SparseAttentionParams* parts_end = batch.parts + batch.num_parts;
  const SparseAttentionParams& p0 = batch.parts[0];
  const int64_t heads = p0.q.shape[1], dim = p0.q.shape[2];
  CHECK(dim % 32 == 0 && dim <= 32 * kMaxPerLane) << "attention head_dim " << dim;
  CHECK(p0.sink.dtype == DType::kF32 && p0.sink.data) << "attention sink: F32 weight";
  auto args = std::make_unique<AttnArgs>();  // ~32 KB: not on the stack
  AttnArgs& a = *args;
  a.sink = static_cast<const float*>(p0.sink.data);
  a.h_begin = p0.h_begin;
  a.h_end = p0.h_end < 0 ? int(heads) : p0.h_end;
  a.dim = int(dim);
  a.scale = p0.softmax_scale;
  a.include_sink = p0.include_sink;
  a.bf16_probs = p0.bf16_probs;
  a.out_round = p0.out_bf16;
  for (const SparseAttentionParams* p = batch.parts; p != parts_end; ++p)
    CHECK(p->h_begin == p0.h_begin && p->h_end == p0.h_end && p->sink.data == p0.sink.data &&
          p->softmax_scale == p0.softmax_scale && p->include_sink == p0.include_sink &&
          p->bf16_probs == p0.bf16_probs && p->out_bf16 == p0.out_bf16)
        << "attention batch: the parts must share heads, sink, scale and numerics";
  if (a.h_end - a.h_begin <= 0) return;
  // Groups of up to kMaxAttnParts parts with tokens, one launch each.
  int64_t n = 0, max_tiles = 0;
  bool vec4 = true, tc_rows = true;
  auto flush = [&] {
    if (a.num_parts > 0)
      launch_attention_group(a, n, max_tiles, vec4, tc_rows, s, k);
    a.num_parts = 0;
    n = max_tiles = 0;
    vec4 = tc_rows = true;
  };
  for (const SparseAttentionParams* p = batch.parts; p != parts_end; ++p) {
    const PartPlan pl = plan_part(*p, heads, dim, n);
    if (pl.rows == 0) continue;
    a.parts[a.num_parts++] = pl.d;
    n += pl.rows;
    max_tiles = std::max(max_tiles, pl.max_tiles);
    vec4 = vec4 && pl.vec4;
    tc_rows = tc_rows && pl.tc;
    if (a.num_parts == kMaxAttnParts) flush();
  }
  flush();
}

}  // namespace v4rt::kernels::cuda
