// SPDX-License-Identifier: MIT
// Prefill sparse attention on bf16 wgmma (sm_90a): the numerics of sparse_attention_tc_kernel
// (attention.cu) for head_dim 512, 64 heads of a query per block (CudaBackendOptions::
// attention_wgmma, debug.cuda_attention_wgmma). Two warpgroups; each 64-candidate tile of latent
// rows is staged once in shared memory in two K-major no-swizzle layouts (wgmma.cuh): [cand][dim]
// for S = Q K^T and its transpose [dim][cand] for O += P V (only the K-major layout is used, so no
// transpose flag). Warpgroup g computes S of candidates [32 g, +32) over all 512 dims
// (m64n32k16); the online softmax of the tile, per head in fp32, is sparse_attention_tc_kernel's
// code line for line (running max per tile, denominator from unrounded p, P rounded to bf16),
// P goes to shared memory in the K-major layout, then warpgroup g keeps O of dims [256 g, +256)
// (m64n256k16, 128 fp32 registers a thread), rescaled per head before each tile's P V. One
// buffer per operand (Q 64 KB + KV 64 KB + KV^T 64 KB + S 17 KB + P 8 KB): staging does not
// overlap the MMAs yet.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda::attn {

namespace {

constexpr int kHeads = 64;                       // heads per block: the wgmma M
constexpr int kThreads = 256;                    // two warpgroups
constexpr int kDim = kWgmmaDim;                  // head_dim
constexpr int kRowB = kDim * 2;                  // bytes of a Q / KV row (bf16)
constexpr int kTileRowB = kTile * 2;             // bytes of a KV^T / P row (64 candidates, bf16)
constexpr int kSld = kTile + 4;                  // S row stride (fp32), conflict-free stores
constexpr int kQBytes = kHeads * kRowB;          // Q [head][dim]
constexpr int kKvBytes = kTile * kRowB;          // KV [cand][dim]
constexpr int kKvtBytes = kDim * kTileRowB;      // KV^T [dim][cand]
constexpr int kSBytes = kHeads * kSld * 4;       // S [head][cand] fp32
constexpr int kPBytes = kHeads * kTileRowB;      // P [head][cand] bf16
constexpr int kSmemBytes = kQBytes + kKvBytes + kKvtBytes + kSBytes + kPBytes;
static_assert(kSmemBytes + 2048 <= 227 * 1024, "attention wgmma: shared memory");

// Eight bf16 rotated by r elements: element j of the result is element (j + r) & 7 of v.
__device__ __forceinline__ uint4 rotate_halves(uint4 v, int r) {
  if (r & 4) v = make_uint4(v.z, v.w, v.x, v.y);
  if (r & 2) v = make_uint4(v.y, v.z, v.w, v.x);
  if (r & 1)
    v = make_uint4(__byte_perm(v.x, v.y, 0x5432), __byte_perm(v.y, v.z, 0x5432), __byte_perm(v.z, v.w, 0x5432),
                   __byte_perm(v.w, v.x, 0x5432));
  return v;
}

// Block (token t, head block y). Rows 16-byte aligned with strides of multiples of 8 elements
// (PartPlan::tc), as for sparse_attention_tc_kernel.
__global__ void __launch_bounds__(kThreads, 1) sparse_attention_wgmma_kernel(const __grid_constant__ AttnArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* qs = smem;
  unsigned char* kv = qs + kQBytes;
  unsigned char* kvt = kv + kKvBytes;
  float* ss = reinterpret_cast<float*>(kvt + kKvtBytes);
  unsigned char* ps = reinterpret_cast<unsigned char*>(ss) + kSBytes;
  __shared__ int64_t codes[kTile];
  __shared__ float m_s[kHeads], den_s[kHeads], resc_s[kHeads];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2;                          // warpgroup
  const int row0 = (warp & 3) * 16 + (lane >> 2);    // accumulator rows row0, row0 + 8 (heads)
  const int tig = lane & 3;
  const TokArgs ta = token_args(a, blockIdx.x);
  const AttnPart& part = ta.p;
  const int64_t t = ta.t;
  const int hb0 = a.h_begin + int(blockIdx.y) * kHeads;
  const CandRange r = candidate_range(a, part, t, 0);
  constexpr int d8 = kDim / 8;
  for (int i = tid; i < kHeads * d8; i += kThreads) {
    const int hl = i / d8, c = (i % d8) * 8, h = hb0 + hl;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h < a.h_end) v = ld8_as_bf16(part.q, t, int64_t(h) * kDim + c);
    *reinterpret_cast<uint4*>(qs + core_offset(hl, c * 2, kRowB)) = v;
  }
  if (tid < kHeads) {
    m_s[tid] = -INFINITY;
    den_s[tid] = 0.f;
  }
  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;

  for (int64_t tile0 = r.cand0; tile0 < r.ncand; tile0 += kTile) {
    const int cnt = int(min(int64_t(kTile), r.ncand - tile0));
    __syncthreads();  // the previous tile's KV, KV^T and P are no longer read
    if (tid < kTile) codes[tid] = tid < cnt ? candidate_code(part, r, t, tile0 + tid) : int64_t(-1);
    __syncthreads();
    // Staging: 32 candidate pairs x 64 chunks of 8 dims = 2048 items, 8 per thread, loaded 4 at a
    // time before they are stored. Item bits 0-1 are the pair inside 8 candidates and bits 2-4 the
    // low chunk bits (the lane), bits 5-7 the pair's high bits and 8-10 the chunk's; the KV^T
    // stores of a lane start at dim (chunk & 7) of its 8, so a warp's 32-bit stores hit 32 banks.
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      uint4 v[4][2];
      int pr[4], ch[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int item = (b * 4 + k) * kThreads + tid;  // warp-contiguous groups of 32 items
        pr[k] = (item & 3) + 4 * ((item >> 5) & 7);     // pair: 2 pr, 2 pr + 1
        ch[k] = ((item >> 2) & 7) + 8 * (item >> 8);    // 8-dim chunk
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t code = codes[2 * pr[k] + e];
          const int c = ch[k] * 8;
          uint4 x = make_uint4(0, 0, 0, 0);
          if (code >= 0) x = ld8_as_bf16(part.win, code, c);
          else if (code <= -2 && part.ckv.data) x = part.ckv.fp8_ld8_bf16(part.ckv.row(-code - 2), c);
          else if (code <= -2) x = ld8_as_bf16(part.comp, -code - 2, c);
          v[k][e] = x;
        }
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int cand = 2 * pr[k], c = ch[k] * 8;
        *reinterpret_cast<uint4*>(kv + core_offset(cand, c * 2, kRowB)) = v[k][0];
        *reinterpret_cast<uint4*>(kv + core_offset(cand + 1, c * 2, kRowB)) = v[k][1];
        const int rot = ch[k] & 7;
        const uint4 w0 = rotate_halves(v[k][0], rot), w1 = rotate_halves(v[k][1], rot);
        const uint32_t x0[4] = {w0.x, w0.y, w0.z, w0.w}, x1[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) {  // dim c + ((j + rot) & 7) of candidates cand, cand + 1
          const uint32_t pair = __byte_perm(x0[j >> 1], x1[j >> 1], (j & 1) ? 0x7632 : 0x5410);
          *reinterpret_cast<uint32_t*>(kvt + core_offset(c + ((j + rot) & 7), cand * 2, kTileRowB)) = pair;
        }
      }
    }
    fence_async_smem();
    __syncthreads();
    {  // S = Q K^T * scale: heads [0, 64) x candidates [32 wg, +32)
      float sacc[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) sacc[i] = 0.f;
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < kDim / 16; ++s)
        wgmma_bf16_m64n32k16(sacc, smem_desc(qs + 256 * s, kRowB),
                             smem_desc(kv + core_offset(32 * wg, 0, kRowB) + 256 * s, kRowB), s);
      wgmma_commit();
      wgmma_wait0();
      fence_acc(sacc);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int c = 32 * wg + 8 * i + 2 * tig;
        *reinterpret_cast<float2*>(ss + row0 * kSld + c) = make_float2(sacc[4 * i] * a.scale, sacc[4 * i + 1] * a.scale);
        *reinterpret_cast<float2*>(ss + (row0 + 8) * kSld + c) =
            make_float2(sacc[4 * i + 2] * a.scale, sacc[4 * i + 3] * a.scale);
      }
    }
    __syncthreads();
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {  // online softmax: 8 threads per head row, 8 candidates each
      const int row = (tid >> 3) + 32 * pass, c0 = (tid & 7) * 8;
      *reinterpret_cast<uint4*>(ps + core_offset(row, c0 * 2, kTileRowB)) =
          online_softmax_row8(codes, ss + row * kSld, c0, row, m_s, den_s, resc_s);
    }
    fence_async_smem();
    __syncthreads();
    {  // O = O * resc + P V: heads [0, 64) x dims [256 wg, +256)
      const float r0 = resc_s[row0], r1 = resc_s[row0 + 8];
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        o[4 * i] *= r0;
        o[4 * i + 1] *= r0;
        o[4 * i + 2] *= r1;
        o[4 * i + 3] *= r1;
      }
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < kTile / 16; ++s)
        wgmma_bf16_m64n256k16(o, smem_desc(ps + 256 * s, kTileRowB),
                              smem_desc(kvt + core_offset(256 * wg, 0, kTileRowB) + 256 * s, kTileRowB), 1);
      wgmma_commit();
      wgmma_wait0();
      fence_acc(o);
    }
  }
  __syncthreads();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int hl = row0 + half * 8, h = hb0 + hl;
    if (h >= a.h_end) continue;
    const float m = m_s[hl], den = den_with_sink(a, h, m, den_s[hl]);
    const float inv = 1.0f / den;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int64_t d = int64_t(h) * kDim + 256 * wg + 8 * i + 2 * tig;
      part.out.st(t, d, o[4 * i + 2 * half] * inv, a.out_round);
      part.out.st(t, d + 1, o[4 * i + 2 * half + 1] * inv, a.out_round);
    }
    if (part.lse && wg == 0 && tig == 0) part.lse[t * part.lse_stride + h] = m + logf(den);
  }
}

}  // namespace

void launch_sparse_attention_wgmma(AttnArgs& a, int64_t n, cudaStream_t s) {
  CHECK_EQ(a.dim, kDim) << "attention wgmma: head_dim";
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(sparse_attention_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    kSmemBytes));
    attr_set = true;
  }
  a.num_splits = 1;
  const dim3 grid{grid_x(n, "sparse_attention (wgmma)"), unsigned(ceil_div(a.h_end - a.h_begin, kHeads))};
  sparse_attention_wgmma_kernel<<<grid, kThreads, kSmemBytes, s>>>(a);
  launch_check("sparse_attention (wgmma)", s);
}

}  // namespace v4rt::kernels::cuda::attn
