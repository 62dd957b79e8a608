// SPDX-License-Identifier: MIT
// Prefill sparse attention on bf16 wgmma (sm_90a), warp-specialized: the numerics of
// sparse_attention_tc_kernel (attention_tc.cu) for head_dim 512, its outputs bit for bit
// (CudaBackendOptions::attention_wgmma, debug.cuda_attention_wgmma), for launches whose rows are all
// bf16 (parts_bf16: the bf16 views of a prefill launch, attention_bf16_view.cu). Block (token t,
// 64 heads), 384 threads:
//   - warpgroup 2 produces: for tile it it waits until the consumers released the tile's buffer
//     (empty[it % 2]), writes the 64 candidate codes, copies the 64 bf16 rows by 16-byte cp.async
//     into kv[it % 2] in the no-swizzle K-major core-matrix layout (wgmma.cuh, 1,024-byte rows),
//     each thread's copies arriving on full[it % 2] as they land (.noinc arrivals);
//   - warpgroups 0 and 1 consume: wait full; warpgroup g computes S of candidates [32 g, +32) over
//     the 512 dims (m64n32k16, Q and K from shared memory); the online softmax of the tile over
//     both warpgroups (sparse_attention_tc_kernel's code: running max per tile, denominator from
//     unrounded p, P rounded to bf16) into P in shared memory; warpgroup g keeps O of dims [256 g,
//     +256) (m64n256k16, 128 fp32 registers a thread), rescaled per head, += P V with V read from
//     the same KV tile MN-major (the transpose flag: no second copy); then arrive on empty.
// Q 64 KB + KV 2 x 64 KB + S 17 KB + P 8 KB. The producer gives up registers to the consumers
// (setmaxnreg 56 / 224).
//
// In clusters of two (sparse_attention_wgmma_pair_kernel): the blocks of adjacent tokens walk the
// same tiles where both tokens' candidates past the window are one part's entries in the same
// places (no lists, the same whole-tile window; the HCA layer's queries but the first 127 of a
// sequence), and those compressed tiles, stored whole in the kernel's layout (tiled entries,
// attention_bf16_view.cu), are read from L2 once for both: each block's producer copies half of
// the tile by one bulk copy multicast into both blocks' kv buffer (one 64 KB complete_tx on each
// block's full barrier). A buffer is free once the consumers of both blocks released it: every
// consumer warp arrives on the empty barrier of each block, and a producer waits for its last two
// tiles' releases before it exits (its block's shared memory must outlive the other's arrivals).
// A block past its own candidates walks the other's last tile with every candidate absent (p = 0,
// its state unchanged). A 1M-token prefill reads 64 KB per tile and query from L2, which the
// single-block kernel found at 82% of its throughput; in pairs, 24%. With cluster-scope fences on
// the tile barriers the pairs were no faster (twenty-first run); with the barriers' default (CTA)
// semantics the 1M prefill attention took 2.934 s against 3.347 s (docs/PERFORMANCE.md,
// twenty-second run). On by default (debug.cuda_attention_wgmma_cluster).
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/warp_specialize.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda::attn {

namespace {

constexpr int kHeads = 64;                       // heads per block: the wgmma M
constexpr int kDim = kWgmmaDim;                  // head_dim
constexpr int kConsumerThreads = 256;            // warpgroups 0 and 1
constexpr int kProducerThreads = 128;            // warpgroup 2
static_assert(kProducerThreads == 128, "attention wgmma: produce_tiles_bf16 is one warpgroup");
constexpr int kThreads = kConsumerThreads + kProducerThreads;
constexpr int kRowB = kDim * 2;                  // bytes of a Q / KV row (bf16)
constexpr int kTileRowB = kTile * 2;             // bytes of a P row (64 candidates, bf16)
constexpr int kSld = kTile + 4;                  // S row stride (fp32), conflict-free stores
// Registers a thread after setmaxnreg: the producer gives its share to the consumers (O alone is
// 128 fp32 a thread), 128 x 56 + 256 x 224 <= 64K.
constexpr int kProducerRegs = 56, kConsumerRegs = 224;

struct WgSmem {
  alignas(128) unsigned char q[kHeads * kRowB];      // Q [head][dim], core-matrix layout
  alignas(128) unsigned char kv[2][kTile * kRowB];   // KV [cand][dim], core-matrix layout
  alignas(128) unsigned char p[kHeads * kTileRowB];  // P [head][cand] bf16, core-matrix layout
  float s[kHeads * kSld];                            // S [head][cand] fp32
  int32_t codes[2][kTile];
  float m[kHeads], den[kHeads], resc[kHeads];
  uint64_t full[2], empty[2];
};
constexpr size_t kSmemBytes = sizeof(WgSmem) + 128;  // + alignment of the dynamic base
static_assert(kSmemBytes <= 227 * 1024, "attention wgmma: one block per SM");
constexpr uint32_t kTileBytes = kTile * kRowB;

__device__ __forceinline__ void consumer_sync() { named_sync<1, kConsumerThreads>(); }

__device__ __forceinline__ int tile_count(const CandRange& r) {
  return r.ncand > r.cand0 ? int((r.ncand - r.cand0 + kTile - 1) / kTile) : 0;
}

// The tiles a block walks: its own (ntiles), or, `coupled`, those of every block of its cluster of
// kCluster adjacent tokens (the launch's last token standing in past its end), tiles from `first`
// on copied whole from the part's tiled entries (tile it = entry tile it - first).
struct ClusterTiles {
  bool coupled;
  int first, ntiles;
};

template <int kCluster>
__device__ __forceinline__ ClusterTiles cluster_tiles(const AttnArgs& a, int64_t base, int own_part,
                                                      const CandRange& r) {
  const AttnPart& p = a.parts[own_part];
  ClusterTiles c{false, 0, tile_count(r)};
  if (kCluster == 1 || !p.comp_tiled || p.has_list || r.nwin % kTile != 0) return c;
  int most = 0;
  for (int q = 0; q < kCluster; ++q) {
    const int64_t tg = min(base + q, a.num_tokens - 1);
    if (part_index(a, tg) != own_part) return c;
    const CandRange rq = candidate_range(a, p, tg - p.row0, 0);
    if (rq.nwin != r.nwin) return c;
    most = max(most, tile_count(rq));
  }
  return ClusterTiles{true, int(r.nwin / kTile), most};
}

// The producer warpgroup (thread p of 128) of a block of a cluster: produce_tiles_bf16 over
// ct.ntiles tiles, the coupled tiles from `first` on whole, as this block's slice of the tile
// (1 / kCluster of it) multicast to every block of the cluster. Coupled, it then waits for its
// last two tiles' releases: the other blocks' consumers arrive on its empty barriers until then.
template <int kCluster>
__device__ __forceinline__ void produce_tiles_cluster(const AttnPart& part, const CandRange& r, int64_t t,
                                                      const ClusterTiles& ct, int p, WgSmem& sm) {
  constexpr uint32_t kSlice = kTileBytes / kCluster;
  const uint32_t rank = kCluster > 1 ? cluster_rank() : 0;
  const unsigned char* tiles = static_cast<const unsigned char*>(part.comp.data);
  const auto multicast = [&](int it, int b, int q) {
    if (!ct.coupled || it < ct.first) return false;
    if (q == 0) {
      mbar_arrive_expect_tx(&sm.full[b], kTileBytes);
      bulk_copy_multicast(sm.kv[b] + rank * kSlice, tiles + int64_t(it - ct.first) * kTileBytes + rank * kSlice,
                          kSlice, &sm.full[b], uint16_t((1u << kCluster) - 1));
    } else {
      mbar_arrive(&sm.full[b]);
    }
    return true;
  };
  produce_tiles_bf16(
      part, r, t, ct.ntiles, p, sm.codes, sm.full, sm.empty,
      [&](int b, int row, int c) { return sm.kv[b] + core_offset(row, c * 2, kRowB); }, multicast);
  if (!ct.coupled) return;
  for (int it = max(0, ct.ntiles - 2); it < ct.ntiles; ++it) mbar_wait(&sm.empty[it & 1], uint32_t((it >> 1) & 1));
}

template <int kCluster>
__device__ __forceinline__ void attention_wgmma(const AttnArgs& a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ unsigned char wg_smem_raw[];
  WgSmem& sm = *reinterpret_cast<WgSmem*>((reinterpret_cast<uintptr_t>(wg_smem_raw) + 127) & ~uintptr_t(127));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Blocks past the launch's tokens (a cluster's rounding) stand in for its last token, unstored.
  const bool store = int64_t(blockIdx.x) < a.num_tokens;
  const int64_t tg = store ? int64_t(blockIdx.x) : a.num_tokens - 1;
  const int own_part = part_index(a, tg);
  const AttnPart& part = a.parts[own_part];
  const int64_t t = tg - part.row0;
  const int hb0 = a.h_begin + int(blockIdx.y) * kHeads;
  const CandRange r = candidate_range(a, part, t, 0);
  const ClusterTiles ct = cluster_tiles<kCluster>(a, int64_t(blockIdx.x) - (kCluster > 1 ? cluster_rank() : 0),
                                                  own_part, r);
  if (tid == 0) {
    for (int b = 0; b < 2; ++b) {
      mbar_init(&sm.full[b], kProducerThreads / 32 + kProducerThreads);
      mbar_init(&sm.empty[b], kConsumerThreads / 32 * kCluster);
    }
    if (kCluster > 1) fence_mbar_init();
  }
  if (tid < kHeads) {
    sm.m[tid] = -INFINITY;
    sm.den[tid] = 0.f;
  }
  // q of the block's heads (all threads), in the core-matrix layout
  stage_q_heads<kThreads, kDim>(a, part, t, hb0,
                                [&](int h, int c) { return sm.q + core_offset(h, c * 2, kRowB); });
  fence_async_smem();  // q's generic stores before the wgmma reads
  __syncthreads();     // the last barrier of all 384 threads
  if (kCluster > 1) cluster_sync();  // every block's barriers initialized before a remote arrival or copy

  if (warp >= kConsumerThreads / 32) {  // --- producer -------------------------------------------
    regs_dec<kProducerRegs>();
    produce_tiles_cluster<kCluster>(part, r, t, ct, tid - kConsumerThreads, sm);
    return;
  }

  // --- consumers -----------------------------------------------------------------------------------
  regs_inc<kConsumerRegs>();
  const int wg = warp >> 2;                          // consumer warpgroup
  const int row0 = (warp & 3) * 16 + (lane >> 2);    // accumulator rows row0, row0 + 8 (heads)
  const int tig = lane & 3;
  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;

  for (int it = 0; it < ct.ntiles; ++it) {
    const int b = it & 1;
    const unsigned char* kv = sm.kv[b];
    mbar_wait(&sm.full[b], uint32_t((it >> 1) & 1));
    {  // S = Q K^T * scale: heads [0, 64) x candidates [32 wg, +32)
      float sacc[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) sacc[i] = 0.f;
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < kDim / 16; ++s)
        wgmma_bf16_m64n32k16(sacc, smem_desc(sm.q + 256 * s, kRowB),
                             smem_desc(kv + core_offset(32 * wg, 0, kRowB) + 256 * s, kRowB), s);
      wgmma_commit();
      wgmma_wait0();
      fence_acc(sacc);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int c = 32 * wg + 8 * i + 2 * tig;
        *reinterpret_cast<float2*>(sm.s + row0 * kSld + c) = make_float2(sacc[4 * i] * a.scale, sacc[4 * i + 1] * a.scale);
        *reinterpret_cast<float2*>(sm.s + (row0 + 8) * kSld + c) =
            make_float2(sacc[4 * i + 2] * a.scale, sacc[4 * i + 3] * a.scale);
      }
    }
    consumer_sync();  // S written; every consumer is past the previous tile's P V (P and resc free)
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {  // online softmax: 8 threads per head row, 8 candidates each
      const int row = (tid >> 3) + 32 * pass, c0 = (tid & 7) * 8;
      *reinterpret_cast<uint4*>(sm.p + core_offset(row, c0 * 2, kTileRowB)) =
          online_softmax_row8(sm.codes[b], sm.s + row * kSld, c0, row, sm.m, sm.den, sm.resc);
    }
    fence_async_smem();  // P's generic stores before the wgmma reads
    consumer_sync();     // P and the rescales written
    {  // O = O * resc + P V: heads [0, 64) x dims [256 wg, +256), V = the KV tile read MN-major
      const float r0 = sm.resc[row0], r1 = sm.resc[row0 + 8];
      // A tile that moved none of the warp's 16 row maxima rescales by 1: skipped (the same bits;
      // on long lists the maxima settle, so most tiles skip).
      if (!__all_sync(0xffffffffu, r0 == 1.f && r1 == 1.f)) {
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          o[4 * i] *= r0;
          o[4 * i + 1] *= r0;
          o[4 * i + 2] *= r1;
          o[4 * i + 3] *= r1;
        }
      }
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < kTile / 16; ++s)
        wgmma_bf16_m64n256k16<1>(o, smem_desc(sm.p + 256 * s, kTileRowB),
                                 smem_desc_mn(kv + core_offset(16 * s, 2 * 256 * wg, kRowB), kRowB), 1);
      wgmma_commit();
      wgmma_wait0();
      fence_acc(o);
    }
    __syncwarp();
    if (lane == 0) {  // this warp is done with kv[b] and the codes: released to every writer of kv[b]
      if (ct.coupled) {
#pragma unroll
        for (int q = 0; q < kCluster; ++q) mbar_arrive_cluster(&sm.empty[b], uint32_t(q));
      } else {
        mbar_arrive_count(&sm.empty[b], kCluster);
      }
    }
  }
  consumer_sync();  // the last softmax's m and den
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int hl = row0 + half * 8, h = hb0 + hl;
    if (h >= a.h_end || !store) continue;
    const float m = sm.m[hl], den = den_with_sink(a, h, m, sm.den[hl]);
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

__global__ void __launch_bounds__(kThreads, 1) sparse_attention_wgmma_kernel(const __grid_constant__ AttnArgs a) {
  attention_wgmma<1>(a);
}
__global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(kThreads, 1)
    sparse_attention_wgmma_pair_kernel(const __grid_constant__ AttnArgs a) {
  attention_wgmma<2>(a);
}

}  // namespace

void launch_sparse_attention_wgmma(AttnArgs& a, int64_t n, bool cluster, cudaStream_t s) {
  CHECK_EQ(a.dim, kDim) << "attention wgmma: head_dim";
  CHECK(parts_bf16(a)) << "attention wgmma: rows must all be bf16 (the bf16 views)";
  auto* kernel = cluster ? sparse_attention_wgmma_pair_kernel : sparse_attention_wgmma_kernel;
  static std::atomic<uint64_t> attr_set[2];
  set_smem_once(kernel, kSmemBytes, false, &attr_set[cluster]);
  a.num_splits = 1;
  a.raw_ld = 0;
  a.num_tokens = n;
  const int64_t blocks = cluster ? ceil_div(n, 2) * 2 : n;
  const dim3 grid{grid_x(blocks, "sparse_attention (wgmma)"), unsigned(ceil_div(a.h_end - a.h_begin, kHeads))};
  launch(kernel, grid, kThreads, kSmemBytes, s)(a);
  launch_check("sparse_attention (wgmma)", s);
}

}  // namespace v4rt::kernels::cuda::attn
