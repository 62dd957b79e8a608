// SPDX-License-Identifier: MIT
// The O accumulator the mma.sync attention kernels share (attention_tc.cu, attention_ws.cu): a warp
// keeps heads [oh, oh + 32) (two m16 tiles) x n n8 tiles of dims from od, rescales them per head
// row by each 64-candidate tile's running max, adds the tile's P V on m16n8k16, and at the end
// writes the outputs (the sink added) or its split's partial state. Included only by those files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/mma_sync.cuh"

namespace v4rt::kernels::cuda::attn {

// kTiles: the n8 tiles a warp can hold per m16 tile; n (even, <= kTiles) of them in use.
template <int kTiles>
struct OAcc {
  float o[2][kTiles][4];
  int oh, od, n;

  __device__ __forceinline__ OAcc(int oh_, int od_, int n_) : oh(oh_), od(od_), n(n_) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mi][j][e] = 0.f;
  }

  // O = O * resc (per head row) + P V over one 64-candidate tile. P: [head][candidate] bf16 rows of
  // pld elements at p; V: [candidate][dim] bf16 rows of ld elements at kv (shared memory).
  __device__ __forceinline__ void add_pv(const float* resc, const uint16_t* p, int pld, const uint16_t* kv, int ld) {
    const int lane = threadIdx.x & 31, gid = lane >> 2;
    const uint32_t pa = smem_u32(frag_a_row(p + oh * pld, pld, lane));  // this lane's ldmatrix rows at k = 0
    const uint32_t vrow = smem_u32(kv + ((lane >> 3 & 1) * 8 + (lane & 7)) * ld + od + (lane >> 4) * 8);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const float r0 = resc[oh + mi * 16 + gid], r1 = resc[oh + mi * 16 + gid + 8];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        o[mi][j][0] *= r0;
        o[mi][j][1] *= r0;
        o[mi][j][2] *= r1;
        o[mi][j][3] *= r1;
      }
    }
#pragma unroll 1  // unrolled, ptxas spills the 128-register kernel
    for (int k0 = 0; k0 < kTile; k0 += 16) {
      uint32_t af[2][4];
      ldmatrix_x4(af[0], pa + 2 * k0);
      ldmatrix_x4(af[1], pa + 2 * (16 * pld + k0));
#pragma unroll
      for (int j = 0; j < kTiles; j += 2) {
        if (j < n) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vrow + 2 * (k0 * ld + j * 8));
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma_bf16_16816(o[mi][j], af[mi], b[0], b[1]);
            mma_bf16_16816(o[mi][j + 1], af[mi], b[2], b[3]);
          }
        }
      }
    }
  }

  // Rows oh + gid + 8 r of the warp, r < 4: m16 tile r / 2, accumulator half r % 2; f(head row
  // hl, tile mi, half) for each row of a head the launch computes (hb0 + hl < a.h_end).
  template <class F>
  __device__ __forceinline__ void for_rows(const AttnArgs& a, int hb0, F&& f) const {
    const int gid = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int hl = oh + gid + 8 * r;
      if (hb0 + hl < a.h_end) f(hl, r >> 1, r & 1);
    }
  }

  // The outputs of token t (and its lse): O / the denominator with the sink.
  __device__ __forceinline__ void store(const AttnArgs& a, const AttnPart& part, int64_t t, int hb0, int dim,
                                        const float* m_s, const float* den_s) const {
    const int tig = threadIdx.x & 3;
    for_rows(a, hb0, [&](int hl, int mi, int half) {
      const int h = hb0 + hl;
      const float m = m_s[hl], den = den_with_sink(a, h, m, den_s[hl]);
      const float inv = 1.0f / den;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        if (j < n) {
          const int64_t d = int64_t(h) * dim + od + j * 8 + tig * 2;
          part.out.st(t, d, o[mi][j][2 * half] * inv, a.out_round);
          part.out.st(t, d + 1, o[mi][j][2 * half + 1] * inv, a.out_round);
        }
      }
      if (part.lse && od == 0 && tig == 0) part.lse[t * part.lse_stride + h] = m + logf(den);
    });
  }

  // Split blockIdx.z's partial state of launch token blockIdx.x, for attention_combine_kernel.
  __device__ __forceinline__ void store_split(const AttnArgs& a, int hb0, int dim, const float* m_s,
                                              const float* den_s) const {
    const int tig = threadIdx.x & 3, nh = a.h_end - a.h_begin;
    for_rows(a, hb0, [&](int hl, int mi, int half) {
      const int h = hb0 + hl;
      const int64_t slot = (int64_t(blockIdx.x) * nh + (h - a.h_begin)) * a.num_splits + blockIdx.z;
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        if (j < n)
          *reinterpret_cast<float2*>(a.part_acc + slot * dim + od + j * 8 + tig * 2) =
              make_float2(o[mi][j][2 * half], o[mi][j][2 * half + 1]);
      if (od == 0 && tig == 0) {
        a.part_ml[2 * slot] = m_s[hl];
        a.part_ml[2 * slot + 1] = den_s[hl];
      }
    });
  }
};

}  // namespace v4rt::kernels::cuda::attn
