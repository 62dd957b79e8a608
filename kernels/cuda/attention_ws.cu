// SPDX-License-Identifier: MIT
// Prefill sparse attention, warp-specialized (CudaBackendOptions::attention_ws,
// debug.cuda_attention_ws): the numerics of sparse_attention_tc_kernel (attention_tc.cu) for
// head_dim 512, its outputs bit for bit, for launches whose rows are all bf16 (parts_bf16: the
// bf16 views of a prefill launch, attention_bf16_view.cu). Block (token t, head block y), 384
// threads:
//   - warpgroup 2 produces: for tile it it waits until the consumers released the tile's buffer
//     (empty[it % 2], the tile two back), writes the 64 candidate codes (read while the tile before
//     was copied) and copies the 64 bf16 rows by 16-byte cp.async into kv[it % 2], each thread's
//     copies arriving on full[it % 2] as they land (.noinc arrivals: full counts them beside the
//     warps' own), so it never waits on a load;
//   - warpgroups 0 and 1 consume (168 registers a thread, no spill): wait full, S = Q K^T (warp w:
//     heads (w % 4) * 16, candidates (w / 4) * 32, m16n8k16 bf16 by ldmatrix), the online softmax
//     of the tile (sparse_attention_tc_kernel's code), O += P V (warp w: heads (w % 2) * 32, dims
//     (w / 2) * 128: 128 fp32 accumulators a thread), then arrive on empty.
// S and P are single buffers between the consumers' named barriers; KV is double-buffered, so the
// producer copies tile it + 1 while the consumers multiply tile it. Rows left to decode (no views)
// take the mma.sync kernel instead, whose 16 warps share the decode: one producer warpgroup
// decoding them was slower (docs/PERFORMANCE.md, eleventh run). Shared memory: Q 65 KB, KV 2 x
// 65 KB, S 17 KB, P 9 KB. One split: shapes whose blocks fill the SMs; head_dim 512.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/warp_specialize.cuh"

namespace v4rt::kernels::cuda::attn {

namespace {

constexpr int kDim = kWgmmaDim;                // 512
constexpr int kLd = kDim + 8;                  // bf16 row stride of Q and KV: conflict-free ldmatrix rows
constexpr int kSld = kTile + 4, kPld = kTile + 8;
constexpr int kConsumerThreads = 256;          // warpgroups 0 and 1
constexpr int kProducerThreads = 128;          // warpgroup 2
static_assert(kProducerThreads == 128, "attention ws: produce_tiles_bf16 is one warpgroup");
constexpr int kThreads = kConsumerThreads + kProducerThreads;
constexpr int kOTiles = kDim / 4 / 8;          // n8 tiles of O a consumer warp keeps per m16 head tile (128 dims)

struct WsSmem {
  uint16_t q[kTcHeads * kLd];
  uint16_t kv[2][kTile * kLd];
  float s[kTcHeads * kSld];
  uint16_t p[kTcHeads * kPld];
  int32_t codes[2][kTile];
  float m[kTcHeads], den[kTcHeads], resc[kTcHeads];
  uint64_t full[2], empty[2];
};
constexpr size_t kSmemBytes = sizeof(WsSmem);
static_assert(kSmemBytes <= 227 * 1024, "attention ws: one block per SM");

__device__ __forceinline__ void consumer_sync() { named_sync<1, kConsumerThreads>(); }

__global__ void __launch_bounds__(kThreads, 1) sparse_attention_ws_kernel(const __grid_constant__ AttnArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) unsigned char ws_smem[];
  WsSmem& sm = *reinterpret_cast<WsSmem*>(ws_smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const TokArgs ta = token_args(a, blockIdx.x);
  const AttnPart& part = ta.p;
  const int64_t t = ta.t;
  const int hb0 = a.h_begin + int(blockIdx.y) * kTcHeads;
  const CandRange r = candidate_range(a, part, t, 0);
  const int ntiles = r.ncand > r.cand0 ? int((r.ncand - r.cand0 + kTile - 1) / kTile) : 0;
  if (tid == 0) {
    for (int b = 0; b < 2; ++b) {
      mbar_init(&sm.full[b], kProducerThreads / 32 + kProducerThreads);
      mbar_init(&sm.empty[b], kConsumerThreads / 32);
    }
  }
  if (tid < kTcHeads) {
    sm.m[tid] = -INFINITY;
    sm.den[tid] = 0.f;
  }
  // q of the block's heads (all threads)
  stage_q_heads<kThreads, kDim>(a, part, t, hb0, [&](int h, int c) { return sm.q + h * kLd + c; });
  __syncthreads();  // the last barrier of all 384 threads

  if (warp >= kConsumerThreads / 32) {  // --- producer -------------------------------------------
    produce_tiles_bf16(part, r, t, ntiles, tid - kConsumerThreads, sm.codes, sm.full, sm.empty,
                       [&](int b, int row, int c) { return sm.kv[b] + row * kLd + c; });
    return;
  }

  // --- consumers -----------------------------------------------------------------------------------
  const int gid = lane >> 2, tig = lane & 3;
  const int mt = (warp & 3) * 16, cq = (warp >> 2) * 32;    // S: heads [mt, +16) x candidates [cq, +32)
  const uint32_t qa = smem_u32(frag_a_row(sm.q + mt * kLd, kLd, lane));
  OAcc<kOTiles> o((warp & 1) * 32, (warp >> 1) * (kDim / 4), kOTiles);  // O: 32 heads x 128 dims

  for (int it = 0; it < ntiles; ++it) {
    const int b = it & 1;
    const uint16_t* kv = sm.kv[b];
    mbar_wait(&sm.full[b], uint32_t((it >> 1) & 1));
    {  // S = Q K^T * scale
      float sacc[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) sacc[j][e] = 0.f;
      const uint32_t kb0 = smem_u32(frag_b_rows(kv + cq * kLd, kLd, lane));
      const uint32_t kb1 = kb0 + 2 * 16 * kLd;
#pragma unroll 4
      for (int k0 = 0; k0 < kDim; k0 += 16) {
        uint32_t af[4], b0[4], b1[4];
        ldmatrix_x4(af, qa + 2 * k0);
        ldmatrix_x4(b0, kb0 + 2 * k0);
        ldmatrix_x4(b1, kb1 + 2 * k0);
        mma_bf16_16816(sacc[0], af, b0[0], b0[1]);
        mma_bf16_16816(sacc[1], af, b0[2], b0[3]);
        mma_bf16_16816(sacc[2], af, b1[0], b1[1]);
        mma_bf16_16816(sacc[3], af, b1[2], b1[3]);
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int c = cq + nt * 8 + tig * 2;
        *reinterpret_cast<float2*>(sm.s + (mt + gid) * kSld + c) =
            make_float2(sacc[nt][0] * a.scale, sacc[nt][1] * a.scale);
        *reinterpret_cast<float2*>(sm.s + (mt + gid + 8) * kSld + c) =
            make_float2(sacc[nt][2] * a.scale, sacc[nt][3] * a.scale);
      }
    }
    consumer_sync();  // S written; every consumer is past the previous tile's P V (P and resc free)
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {  // online softmax: 8 threads per head row, 8 candidates each
      const int row = (tid >> 3) + 32 * pass, c0 = (tid & 7) * 8;
      *reinterpret_cast<uint4*>(sm.p + row * kPld + c0) =
          online_softmax_row8(sm.codes[b], sm.s + row * kSld, c0, row, sm.m, sm.den, sm.resc);
    }
    consumer_sync();  // P and the rescales written
    o.add_pv(sm.resc, sm.p, kPld, kv, kLd);  // O = O * resc + P V
    __syncwarp();
    if (lane == 0) mbar_arrive(&sm.empty[b]);  // this warp is done with kv[b] and the codes
  }
  consumer_sync();  // the last softmax's m and den
  o.store(a, part, t, hb0, kDim, sm.m, sm.den);
}

}  // namespace

void launch_sparse_attention_ws(AttnArgs& a, int64_t n, cudaStream_t s) {
  CHECK_EQ(a.dim, kDim) << "attention ws: head_dim";
  CHECK(parts_bf16(a)) << "attention ws: rows must all be bf16 (the bf16 views)";
  static std::atomic<uint64_t> attr_set;
  set_smem_once(sparse_attention_ws_kernel, kSmemBytes, false, &attr_set);
  a.num_splits = 1;
  a.raw_ld = 0;
  const dim3 grid{grid_x(n, "sparse_attention (ws)"), unsigned(ceil_div(a.h_end - a.h_begin, kTcHeads))};
  launch(sparse_attention_ws_kernel, grid, kThreads, kSmemBytes, s)(a);
  launch_check("sparse_attention (ws)", s);
}

}  // namespace v4rt::kernels::cuda::attn
