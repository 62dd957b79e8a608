// SPDX-License-Identifier: MIT
// Warp-specialized variant of the grouped W4A8 expert GEMM on FP8 wgmma (sm_90a), in the pattern
// of DeepGEMM's sm90 FP8 GEMM; fp4_grouped_gemm_tc dispatches here when
// Fp4GroupedGemmParams::wgmma_ws is set and the mean rows per group take the 128-row tile (bf16
// outputs). Same inputs, output, numerics, grid mapping and epilogue as fp4_gemm_wgmma.cu (read its
// header for the numerics: each channel's four 32-blocks of a 128-k step re-expressed as e4m3
// bytes times Sw = 2^(emax - 133), one fp32 promotion acc += tmp * s_x * Sw per step); the kernel
// there stays as the validated fallback, this one moves the work between warps.
//
// Roles. Block = 128 rows of one expert x 128 output channels, four warpgroups (512 threads):
// warpgroups 0 and 1 produce, 2 and 3 consume (rows 0-63 and 64-127). setmaxnreg moves registers
// from the producers (88) to the consumers (168): 256 x 88 + 256 x 168 = 512 x 128, the launch's
// allocation. Per step the producers issue by cp.async (straight from global memory, no registers
// in between) the e4m3 activations in 128-byte swizzled rows (rows past the group zero-filled),
// the rows' activation scales, the raw packed weights (rows padded to 80 B so that 8 consecutive
// channels' 16-byte reads hit disjoint banks) and each channel's four scale bytes. Producer warp w
// copies the weights and scales of channels 16 w .. 16 w + 15 and decodes them: lane l takes channel
// 16 w + l % 16, 32-blocks 2 (l / 16) and 2 (l / 16) + 1, so a warp needs no other warp's copies
// and the producers never wait for each other. kLookahead steps after its copies a warp waits for
// them (cp.async.wait_group, __syncwarp), decodes into the stage's B tile with the byte-permute
// tables of the block's binade gap (computed once per block into shared memory: kDecodeTables
// entries), fences its generic-proxy stores (and the landed cp.async data) for the async proxy, and
// arrives on the stage's full mbarrier. Consumers wait full, run four m64n128k32 into a fresh fp32
// product, promote it, and each warp arrives on the stage's empty mbarrier, which the producers
// wait for before they copy into a stage again. kStages stages of (A, raw weights, decoded B,
// scales): copies run up to kStages steps and decode up to kStages - kLookahead steps ahead of the
// MMAs. The two consumer warpgroups drift apart (as in DeepGEMM), one's promotion under the other's
// MMAs; a warpgroup whose 64 rows all lie past the group's skips its MMAs.
//
// Persistent: one block per SM walks the (row tile, channel tile) items lin = blockIdx.x + i x
// gridDim.x, channels fastest (the blocks of a wave share their row tiles' activations in L2). The
// stage ring runs on across items: the producers copy and decode the next item's first steps
// while the consumers finish this one and store its outputs, so no block pays a pipeline fill and
// an epilogue with the tensor cores idle (a non-persistent grid did, once per 32-step item).
//
// Other forms (Fp4GroupedGemmParams::ws_a_copy, ws_weight_ring; the same operands in shared memory,
// the same bits): the activation tile by one thread's tensor-map copy (TMA, two 64-row boxes in the
// same swizzle) whose bytes the stage's full barrier expects; the same in clusters of two blocks on
// adjacent channel tiles of one row tile, each block's box multicast into both (every consumer warp
// releases a stage on both blocks' empty barriers); and the raw weights through a ring of their own
// (produce_ring), each producer warp's copies running kWSlots - 1 steps ahead of its decode.
#include <cuda.h>  // CUtensorMap
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_fp8.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/warp_specialize.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kBM = kFp4WgmmaRowsPerTile;  // rows of one expert per block
constexpr int kBN = 128;                   // output channels per block (wgmma N)
constexpr int kBK = 128;                   // k per step: one activation scale block, 4 weight blocks
constexpr int kThreads = 512;              // two producer warpgroups + two consumer warpgroups
constexpr int kProducerThreads = 256;
constexpr int kProducerWarps = kProducerThreads / 32;
constexpr int kConsumerWarps = 8;
// Producer: the copies' fixed offsets and two blocks' decode (at 48 ptxas packs predicates into a
// register and recomputes addresses every step); consumer: 64 accumulators + 64 products +
// addressing (no spills down to 160).
constexpr int kProducerRegs = 88, kConsumerRegs = 168;
static_assert(kProducerThreads * kProducerRegs + 256 * kConsumerRegs <= 65536,
              "setmaxnreg moves registers within the launch's 128 per thread");
constexpr int kStages = 5;
constexpr int kLookahead = 3;  // steps of copies in flight while the producer decodes
static_assert(kLookahead < kStages, "copies of a step go ahead of its decode in the same stage");
constexpr int kLdW = kBK / 2 + 16;  // raw packed weight row stride in bytes (80)
static_assert(kBM == 128 && kBN == 16 * kProducerWarps, "16 channels per producer warp; two consumer warpgroups of 64 rows");
static_assert(kDecodeTables <= kProducerThreads, "one producer thread per decode table");

struct WsStage {
  uint8_t a[kBM * kBK];  // activations e4m3, 128-byte rows, 128-byte swizzle (sw128_offset)
  uint8_t b[kBN * kBK];  // decoded weights e4m3, 128-byte rows, 128-byte swizzle
  uint8_t w[kBN][kLdW];  // weights, packed e2m1 [channel][k/2]
  uint32_t ws[kBN];      // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[kBM];         // activation scale of each row
  float sw[kBN];         // Sw = 2^(emax - 133) of each channel
  uint8_t pad[512];      // to a multiple of 1024 bytes
};
struct WsSmem {
  WsStage st[kStages];
  uint2 table[kDecodeTables];  // decode_table(d) of d = 0 .. kDecodeTables - 1
  uint64_t full[kStages];   // producer -> consumers: stage's A, B and scales ready (kProducerThreads / 32 arrivals)
  uint64_t empty[kStages];  // consumers -> producer: stage read (kConsumerWarps arrivals)
};
// The operand tiles sit at 1024-byte boundaries (the 128-byte swizzle repeats every 8 rows of 128
// bytes, matched against address bits 7-9): the block aligns its dynamic shared memory by hand.
constexpr size_t kSmemBytes = sizeof(WsSmem) + 1024;
static_assert(sizeof(WsStage) == 45056, "16,384 + 16,384 + 10,240 + 3 x 512 B + 512 B of padding");
static_assert(sizeof(WsStage) % 1024 == 0, "operand tiles stay 1024-byte aligned");
static_assert(kDecodeTables > kDecodeZeroFrom, "the last table stands for every larger gap");
static_assert(kSmemBytes <= 227 * 1024, "dynamic shared memory of one block per SM");

// With the weight ring (Fp4GroupedGemmParams::ws_weight_ring; the activations by TMA): the raw
// weights leave the stage for a ring of their own, each producer warp's copies running kWSlots - 1
// steps ahead of its decode without waiting on the consumers (a warp copies and decodes only its own
// channels, so a slot is free once the warp decoded it); the stages keep the activation and decoded
// weight tiles, the activations kRingLookahead steps ahead of the decode.
constexpr int kRingStages = 4;
constexpr int kWSlots = 8;
constexpr int kRingLookahead = 2;
static_assert(kRingLookahead < kRingStages, "the activations of a step go ahead of its decode in the same stage");
struct RingStage {
  uint8_t a[kBM * kBK];  // activations e4m3, 128-byte rows, 128-byte swizzle (sw128_offset)
  uint8_t b[kBN * kBK];  // decoded weights e4m3, 128-byte rows, 128-byte swizzle
  float xs[kBM];         // activation scale of each row (from the step's weight slot)
  float sw[kBN];         // Sw = 2^(emax - 133) of each channel
};
struct WSlot {
  uint8_t w[kBN][kLdW];  // weights, packed e2m1 [channel][k/2]
  uint32_t ws[kBN];      // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[kBM];         // activation scale of each row
};
struct RingSmem {
  RingStage st[kRingStages];
  WSlot wr[kWSlots];
  uint2 table[kDecodeTables];
  uint64_t full[kRingStages];
  uint64_t empty[kRingStages];
};
static_assert(sizeof(RingStage) % 1024 == 0, "operand tiles stay 1024-byte aligned");
static_assert(sizeof(WSlot) % 16 == 0, "16-byte copies into the slots");
constexpr size_t kRingSmemBytes = sizeof(RingSmem) + 1024;
static_assert(kRingSmemBytes <= 227 * 1024, "dynamic shared memory of one block per SM");

// Named barrier 1 of the producer warpgroups alone (0 is __syncthreads').
__device__ __forceinline__ void producer_sync() { named_sync<1, kProducerThreads>(); }

// A consumer warp's release of a stage: on its own block's empty barrier, in a cluster on every
// block's (the other block's copies write into this block's stage too).
template <int kCluster>
__device__ __forceinline__ void release_stage(uint64_t* empty) {
  if constexpr (kCluster == 1) {
    mbar_arrive(empty);
  } else {
#pragma unroll
    for (int q = 0; q < kCluster; ++q) mbar_arrive_cluster(empty, uint32_t(q));
  }
}

// One work item: rows [row_begin, row_begin + rows) of group g (a 128-row tile) times output
// channels [n0, n0 + 128).
struct WsItem {
  int g;
  int rows;
  int64_t row_begin, n0;
};

__device__ __forceinline__ WsItem ws_item(const Fp4GroupedGemmParams& p, const int32_t* tile_start, int64_t n_tiles,
                                          int64_t lin) {
  WsItem it;
  const int32_t tile = int32_t(lin / n_tiles);
  // The group of this tile: the last g with tile_start[g] <= tile.
  it.g = part_holding(p.num_groups, tile, [&](int k) { return int64_t(tile_start[k]); });
  it.row_begin = int64_t(p.row_offsets[it.g]) + int64_t(tile - tile_start[it.g]) * kBM;
  it.rows = int(min(int64_t(kBM), int64_t(p.row_offsets[it.g + 1]) - it.row_begin));
  it.n0 = (lin % n_tiles) * kBN;
  return it;
}

// A producer thread's weight-side copies of a step: two 16-byte pieces of its warp's 16 channels'
// raw weights (chunk j = lane + 32 i of the warp's 16 x 64 bytes: channel 16 warp + j / 4, bytes
// 16 (j % 4) of the step), channel ch's four scale bytes (half-0 lanes) and, below kBM, row tid's
// activation scale. Planned once per item: sources at or past the tile's rows or channels copy 0
// bytes (zero fill) from a clamped, valid address.
struct WeightCopies {
  const uint8_t* w_src = nullptr;
  const uint8_t* ws_src = nullptr;
  const float* xs_src = nullptr;
  uint32_t w_off[2] = {0, 0}, w_bytes[2] = {0, 0}, ws_bytes = 0, xs_bytes = 0;
  bool ws_aligned = true;

  __device__ __forceinline__ void plan(const Fp4GroupedGemmParams& p, const WsItem& it, int tid, int ch, int w_ch,
                                       int w_chunk) {
    const int64_t k = p.k;
    const int64_t n_left = p.n - it.n0;  // channels of this tile that exist (>= 1)
    w_src = p.w[it.g] + it.n0 * (k / 2) + w_chunk * 16;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int c = w_ch + 8 * j;
      w_off[j] = uint32_t(min(int64_t(c), n_left - 1)) * uint32_t(k / 2);
      w_bytes[j] = c < n_left ? 16 : 0;
    }
    const uint8_t* wsc = p.w_scale[it.g];
    ws_aligned = (reinterpret_cast<uintptr_t>(wsc) & 3) == 0;
    ws_src = wsc + (it.n0 + min(int64_t(ch), n_left - 1)) * (k / 32);
    ws_bytes = ch < n_left ? 4 : 0;
    xs_src = p.x_scale + (it.row_begin + min(tid, it.rows - 1)) * (k / kBK);
    xs_bytes = tid < it.rows ? 4 : 0;
  }
  // Step kb's copies to shared addresses: the weight pieces at w_dst and w_dst + 8 kLdW, the scale
  // bytes at ws_dst, the activation scale at xs_dst.
  __device__ __forceinline__ void copy(int kb, uint32_t w_dst, uint32_t ws_dst, uint32_t xs_dst, int tid,
                                       int half) const {
    const uint8_t* w = w_src + kb * (kBK / 2);
#pragma unroll
    for (int j = 0; j < 2; ++j) cp_async16_n(w_dst + 8 * kLdW * j, w + w_off[j], w_bytes[j]);
    if (half == 0) {
      if (ws_aligned) {
        cp_async4_n(ws_dst, ws_src + 4 * kb, ws_bytes);
      } else {  // scale rows not word aligned: plain loads (read after the __syncwarp)
        uint32_t v = 0;
        if (ws_bytes != 0) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(ws_src + 4 * kb + j)) << (8 * j);
        }
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(ws_dst), "r"(v) : "memory");
      }
    }
    if (tid < kBM) cp_async4_n(xs_dst, xs_src + kb, xs_bytes);
  }
};

// Blocks 2 half, 2 half + 1 of channel ch (raw rows w, its scale bytes e4) into the B tile b (8
// consecutive channels per 16-byte phase: disjoint banks for the 80-byte raw rows and for the
// swizzled stores), and the channel's Sw into sw (half-0 lane).
__device__ __forceinline__ void decode_channel(const uint8_t (*w)[kLdW], uint32_t e4, const uint2* table, uint8_t* b,
                                               float* sw, int ch, int half) {
  const int e0 = int(e4 & 0xff), e1 = int((e4 >> 8) & 0xff), e2 = int((e4 >> 16) & 0xff), e3 = int(e4 >> 24);
  const int emax = max(max(e0, e1), max(e2, e3));
  if (half == 0) sw[ch] = exp2_exact(emax - 133);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int blk = 2 * half + j;
    const int eb = int((e4 >> (8 * blk)) & 0xff);
    uint32_t out[8];
    decode_block_table(*reinterpret_cast<const uint4*>(&w[ch][16 * blk]), table[min(emax - eb, kDecodeTables - 1)],
                       out);
    *reinterpret_cast<uint4*>(b + sw128_offset(ch, 2 * blk)) = make_uint4(out[0], out[1], out[2], out[3]);
    *reinterpret_cast<uint4*>(b + sw128_offset(ch, 2 * blk + 1)) = make_uint4(out[4], out[5], out[6], out[7]);
  }
}

// Thread 0's tensor-map copies of step kb's activations of a tile of `rows` rows from row a_row0
// into a stage's A tile `a`: box b = rows a_row0 + 64 b into rows 64 b.. (two boxes, or one for a
// tile of at most 64 rows, whose second consumer warpgroup skips its MMAs); in a cluster of two,
// block `rank` sends box `rank` into both blocks. The stage's full barrier expects every box.
template <int kCluster>
__device__ __forceinline__ void send_a_boxes(uint8_t* a, uint64_t* full, const CUtensorMap& map, int kb, int a_row0,
                                             int rows, uint32_t rank) {
  const int boxes = rows > 64 ? 2 : 1;
  mbar_arrive_expect_tx(full, uint32_t(boxes * 64 * kBK));
  if constexpr (kCluster == 1) {
    for (int b = 0; b < boxes; ++b) tma_load_2d(a + 64 * kBK * b, &map, kb * kBK, a_row0 + 64 * b, full);
  } else if (int(rank) < boxes) {
    tma_load_2d_multicast(a + 64 * kBK * rank, &map, kb * kBK, a_row0 + 64 * int(rank), full, 3);
  }
}

// In a cluster, a producer thread's last wait: until both blocks' consumers have released the
// block's last kS stages of its `total` steps, so no arrival of the other block's consumers comes
// to a block that has left.
template <int kS>
__device__ __forceinline__ void await_last_releases(uint64_t* empty, int total) {
  for (int q = max(0, total - kS); q < total; ++q) mbar_wait(&empty[q % kS], uint32_t((q / kS) & 1));
}

// The producer warpgroups with the weight ring (thread tid of 256): per step q, warp w copies its
// 16 channels' raw weights and scale bytes (and warps 0-3 the rows' activation scales) of step
// q + kWSlots - 1 into that step's slot, thread 0 sends the activation boxes of step
// q + kRingLookahead into its stage once the consumers have released the stage, then the warp
// waits for its copies of step q, decodes them into stage q's B tile (the activation scales moved
// beside it), fences them for the async proxy and arrives on the stage's full barrier.
template <int kCluster>
__device__ __forceinline__ void produce_ring(const Fp4GroupedGemmParams& p, const CUtensorMap& a_map,
                                             const int32_t* tile_start, int64_t n_tiles, RingSmem& sm, int my_items,
                                             int64_t unit, int64_t units, uint32_t rank) {
  constexpr int kLw = kWSlots - 1;  // steps of weight copies in flight while the warp decodes
  regs_dec<kProducerRegs>();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid < kDecodeTables) sm.table[tid] = decode_table(tid);
  const int64_t k = p.k;
  const int steps = int(k / kBK), total = my_items * steps;
  const auto item_lin = [&](int i) { return (unit + int64_t(i) * units) * kCluster + rank; };
  const int ch = 16 * warp + (lane & 15), half = lane >> 4;
  const int w_ch = 16 * warp + (lane >> 2), w_chunk = lane & 3;  // see WeightCopies
  const uint32_t wr0 = smem_u32(&sm.wr[0]);
  const uint32_t w_dst = uint32_t(offsetof(WSlot, w)) + uint32_t(w_ch * kLdW + w_chunk * 16);
  WeightCopies wc;
  int w_item = -1, a_item = -1, a_row0 = 0, a_rows = 0;
  // Step q's weights, scale bytes and activation scales into slot `slot`.
  auto load_w = [&](int q, int slot) {
    const int i = q / steps, kb = q - i * steps;
    if (i != w_item) {
      wc.plan(p, ws_item(p, tile_start, n_tiles, item_lin(i)), tid, ch, w_ch, w_chunk);
      w_item = i;
    }
    const uint32_t sl = wr0 + uint32_t(slot) * uint32_t(sizeof(WSlot));
    wc.copy(kb, sl + w_dst, sl + uint32_t(offsetof(WSlot, ws)) + 4 * ch, sl + uint32_t(offsetof(WSlot, xs)) + 4 * tid,
            tid, half);
  };
  // Thread 0: step q's activation boxes into stage s.
  auto load_a = [&](int q, int s) {
    const int i = q / steps, kb = q - i * steps;
    if (i != a_item) {
      const WsItem it = ws_item(p, tile_start, n_tiles, item_lin(i));
      a_row0 = int(it.row_begin);
      a_rows = it.rows;
      a_item = i;
    }
    send_a_boxes<kCluster>(sm.st[s].a, &sm.full[s], a_map, kb, a_row0, a_rows, rank);
  };
  // Slot `slot` into stage s: the B tile, the channels' Sw and the rows' activation scales.
  auto decode = [&](int slot, int s) {
    const WSlot& w = sm.wr[slot];
    RingStage& st = sm.st[s];
    decode_channel(w.w, w.ws[ch], sm.table, st.b, st.sw, ch, half);
    if (tid < kBM) st.xs[tid] = w.xs[tid];
  };

  // One commit group per step (empty past the last): step q's group is complete when at most kLw
  // newer ones are pending. Slot of step q: q % kWSlots (counters wq, wn); stage: q % kRingStages.
#pragma unroll 1
  for (int q = 0; q < kLw; ++q) {
    if (q < total) load_w(q, q);
    cp_async_commit();
  }
  if (tid == 0) {
    for (int q = 0; q < kRingLookahead && q < total; ++q) load_a(q, q);  // fresh stages
  }
  producer_sync();  // the decode tables written
  int wq = 0, wn = kLw % kWSlots;
  for (int q = 0; q < total; ++q) {
    if (q + kLw < total) load_w(q + kLw, wn);
    if (++wn == kWSlots) wn = 0;
    cp_async_commit();
    const int na = q + kRingLookahead;
    if (na < total) {
      // Stage na % kRingStages's previous step (na - kRingStages) released: every producer thread
      // waits, as all of them write the stage's B tile kRingLookahead steps later.
      if (na >= kRingStages) mbar_wait(&sm.empty[na % kRingStages], uint32_t((na / kRingStages - 1) & 1));
      if (tid == 0) load_a(na, na % kRingStages);
    }
    cp_async_wait<kLw>();  // this thread's copies of step q landed ...
    __syncwarp();          // ... and its lane-mates'
    decode(wq, q % kRingStages);
    if (++wq == kWSlots) wq = 0;
    fence_async_smem();  // this thread's decoded bytes, for the wgmma
    __syncwarp();
    if (lane == 0) mbar_arrive(&sm.full[q % kRingStages]);
  }
  cp_async_wait<0>();  // no copy outstanding at exit (the last commits are empty)
  if constexpr (kCluster > 1) await_last_releases<kRingStages>(sm.empty, total);
}

// kACopy: how the activation tile arrives (ws_a_copy): 0 by the producers' cp.async, 1 by one
// tensor-map copy (two boxes of 64 rows) a step, 2 the same in clusters of two blocks that take
// adjacent channel tiles of the same row tile, each block's box multicast into both.
// kRing: the weights through their own ring (kACopy 1 or 2).
template <int kACopy, bool kRing>
__device__ __forceinline__ void wgmma_ws_body(const Fp4GroupedGemmParams& p, const CUtensorMap& a_map,
                                              const int32_t* tile_start, int64_t n_tiles) {
  static_assert(!kRing || kACopy > 0, "the weight ring takes the activations by TMA");
  constexpr int kCluster = kACopy == 2 ? 2 : 1;
  constexpr int S = kRing ? kRingStages : kStages;  // stages of the consumers' ring
  using Smem = std::conditional_t<kRing, RingSmem, WsSmem>;
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023));

  // This block's items: lin = blockIdx.x + i * gridDim.x below the launch's real items. In clusters
  // (n_tiles even), cluster c walks the item pairs c + i * clusters, block `rank` item 2 pair + rank:
  // the same row tile, adjacent channel tiles.
  const int64_t items = int64_t(tile_start[p.num_groups]) * n_tiles;
  const uint32_t rank = kCluster > 1 ? cluster_rank() : 0;
  const int64_t unit = int64_t(blockIdx.x) / kCluster, units = gridDim.x / kCluster, unit_items = items / kCluster;
  if (unit >= unit_items) return;  // the whole cluster alike
  const int my_items = int((unit_items - 1 - unit) / units + 1);
  const auto item_lin = [&](int i) { return (unit + int64_t(i) * units) * kCluster + rank; };
  const int64_t k = p.k, kb_count = k / kBK;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2;

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&sm.full[s], kProducerWarps + (kACopy > 0 ? 1 : 0));  // + the tensor-map copy's arrival
      mbar_init(&sm.empty[s], kConsumerWarps * kCluster);
    }
    if (kCluster > 1) fence_mbar_init();
  }
  // Barriers initialized; the last block-wide barrier (in clusters: every block's, before a remote
  // arrival or multicast).
  if (kCluster > 1) cluster_sync();
  else __syncthreads();

  if constexpr (kRing) {
    if (wg < 2) {
      produce_ring<kCluster>(p, a_map, tile_start, n_tiles, sm, my_items, unit, units, rank);
      return;
    }
  } else if (wg < 2) {
    // ---- producers: copies, then the decode of this warp's 16 channels ----
    regs_dec<kProducerRegs>();
    if (tid < kDecodeTables) sm.table[tid] = decode_table(tid);
    const int steps = int(kb_count), total = my_items * steps;  // this block's steps over its items
    const uint32_t st0 = smem_u32(&sm.st[0]);
    // Decode: channel ch, 32-blocks 2 half and 2 half + 1; the half-0 lane also copies the
    // channel's scale bytes and writes its Sw.
    const int ch = 16 * warp + (lane & 15), half = lane >> 4;
    // Every copy is fixed per item but for the step's offset: a source at or past the tile's rows
    // or channels copies 0 bytes (zero fill) from a clamped, valid address.
    // Activations: chunk (tid / 8) % 8 of rows tid % 8 + 8 (tid / 64) + 32 i (8 lanes = 8 rows at
    // the same chunk: eight bank quads under the swizzle).
    const int a_row = (tid & 7) + 8 * (tid >> 6), a_chunk = (tid >> 3) & 7;
    const uint32_t a_dst = uint32_t(offsetof(WsStage, a)) + uint32_t(sw128_offset(a_row, a_chunk));
    const int w_ch = 16 * warp + (lane >> 2), w_chunk = lane & 3;  // see WeightCopies
    const uint32_t w_dst = uint32_t(offsetof(WsStage, w)) + uint32_t(w_ch * kLdW + w_chunk * 16);
    // The copy plan of the item whose steps are being copied (plan_item): the activations' sources,
    // offsets and zero-fill sizes (cp.async) or first row and rows (TMA), and the weight side's
    // (WeightCopies).
    const uint8_t* a_src = nullptr;
    uint32_t a_off[kBM / 32], a_bytes[kBM / 32];
    WeightCopies wc;
    int plan_item = -1, a_row0 = 0, a_rows = 0;
    const auto plan = [&](int i) {
      const WsItem it = ws_item(p, tile_start, n_tiles, item_lin(i));
      if constexpr (kACopy == 0) {
        a_src = p.x8 + it.row_begin * k + a_chunk * 16;
#pragma unroll
        for (int j = 0; j < kBM / 32; ++j) {
          const int r = a_row + 32 * j;
          a_off[j] = uint32_t(min(r, it.rows - 1)) * uint32_t(k);
          a_bytes[j] = r < it.rows ? 16 : 0;
        }
      } else {
        a_row0 = int(it.row_begin);
        a_rows = it.rows;
      }
      wc.plan(p, it, tid, ch, w_ch, w_chunk);
      plan_item = i;
    };

    // Copies of this block's step q (item q / steps, its 128-k step q % steps) into stage s; the
    // steps come in order, so each item is planned once.
    auto load = [&](int q, int s) {
      const int i = q / steps, kb = q - i * steps;
      if (i != plan_item) plan(i);
      const uint32_t st = st0 + uint32_t(s) * uint32_t(sizeof(WsStage));
      if constexpr (kACopy == 0) {
        const uint8_t* a = a_src + kb * kBK;
#pragma unroll
        for (int i = 0; i < kBM / 32; ++i) cp_async16_n(st + a_dst + 4096 * i, a + a_off[i], a_bytes[i]);
      } else if (tid == 0) {
        send_a_boxes<kCluster>(sm.st[s].a, &sm.full[s], a_map, kb, a_row0, a_rows, rank);
      }
      wc.copy(kb, st + w_dst, st + uint32_t(offsetof(WsStage, ws)) + 4 * ch,
              st + uint32_t(offsetof(WsStage, xs)) + 4 * tid, tid, half);
    };

    auto decode = [&](int s) {
      WsStage& st = sm.st[s];
      decode_channel(st.w, st.ws[ch], sm.table, st.b, st.sw, ch, half);
    };

    // One commit group per step (empty past the last), so step kb's group is complete when at
    // most kLookahead newer ones are pending. Stage and phase bookkeeping without divisions:
    // step nx's copies go to stage ls = nx % kStages, whose previous use (step nx - kStages, when
    // nx >= kStages) completed empty phase nx / kStages - 1.
#pragma unroll
    for (int s = 0; s < kLookahead; ++s) {
      if (s < total) load(s, s);
      cp_async_commit();
    }
    producer_sync();  // the decode tables written
    int ls = kLookahead, lround = 0, ds = 0;
    for (int q = 0; q < total; ++q) {
      const int nx = q + kLookahead;
      if (nx < total) {
        if (nx >= kStages) mbar_wait(&sm.empty[ls], uint32_t((lround - 1) & 1));
        load(nx, ls);
      }
      if (++ls == kStages) {
        ls = 0;
        ++lround;
      }
      cp_async_commit();
      cp_async_wait<kLookahead>();  // this thread's copies of step q landed ...
      __syncwarp();                 // ... and its lane-mates' (the warp's channels came by 4 lanes each)
      decode(ds);
      fence_async_smem();  // this thread's decoded bytes and landed cp.async data, for the wgmma
      __syncwarp();
      if (lane == 0) mbar_arrive(&sm.full[ds]);
      if (++ds == kStages) ds = 0;
    }
    cp_async_wait<0>();  // no copy outstanding at exit (the last commits are empty)
    if constexpr (kCluster > 1) await_last_releases<kStages>(sm.empty, total);
    return;
  }

  // ---- consumers: warpgroup 2 rows 0-63, warpgroup 3 rows 64-127 ----
  regs_inc<kConsumerRegs>();
  const int cw = wg - 2, wi = warp & 3;
  float acc[64], tmp[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = tmp[i] = 0.f;

  // This thread's rows (within the block) and the column base of its accumulator pairs.
  const int r0 = cw * 64 + wi * 16 + (lane >> 2), c0 = 2 * (lane & 3);
  const int steps = int(kb_count);  // >= 1: k is a positive multiple of 128
  int q = 0;                        // this block's step: stage q % S, phase (q / S) & 1
  for (int item = 0; item < my_items; ++item) {
    const WsItem it = ws_item(p, tile_start, n_tiles, item_lin(item));
    if (item > 0) {
#pragma unroll
      for (int j = 0; j < 64; ++j) acc[j] = 0.f;
    }
    if (cw * 64 < it.rows) {
      for (int kb = 0; kb < steps; ++kb, ++q) {
        const int s = q % S;
        const auto& st = sm.st[s];
        // Step kb's MMAs into tmp (after its stage is full). The descriptors of k32 slice kk: start
        // address + 32 kk bytes (the swizzle applies to the address the hardware forms), in the
        // 16-byte units of the low field (no carry out of it: shared addresses stay below 256 KB).
        mbar_wait(&sm.full[s], uint32_t((q / S) & 1));
        const uint64_t da = smem_desc_sw128(st.a + cw * 64 * kBK), db = smem_desc_sw128(st.b);
        fence_acc(tmp);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 32; ++kk) wgmma_m64n128k32(tmp, da + 2 * kk, db + 2 * kk, kk);
        wgmma_commit();
        wgmma_wait0();
        // Its promotion.
        fence_acc(tmp);
        const float x0 = st.xs[r0], x1 = st.xs[r0 + 8];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const float2 sw = *reinterpret_cast<const float2*>(&st.sw[8 * i + c0]);
          acc[4 * i + 0] = fmaf(tmp[4 * i + 0], x0 * sw.x, acc[4 * i + 0]);
          acc[4 * i + 1] = fmaf(tmp[4 * i + 1], x0 * sw.y, acc[4 * i + 1]);
          acc[4 * i + 2] = fmaf(tmp[4 * i + 2], x1 * sw.x, acc[4 * i + 2]);
          acc[4 * i + 3] = fmaf(tmp[4 * i + 3], x1 * sw.y, acc[4 * i + 3]);
        }
        __syncwarp();  // the warp's reads of stage s done (the MMAs' at the wait before the promotion)
        if (lane == 0) release_stage<kCluster>(&sm.empty[s]);
      }
    } else {
      // Warpgroup-uniform: the second warpgroup of a tile of at most 64 rows has only zero rows; it
      // skips the MMAs and the promotions, keeping its part in the barriers.
      for (int kb = 0; kb < steps; ++kb, ++q) {
        mbar_wait(&sm.full[q % S], uint32_t((q / S) & 1));
        __syncwarp();
        if (lane == 0) release_stage<kCluster>(&sm.empty[q % S]);
      }
    }
    store_acc_m64n128(p, acc, it.row_begin, it.rows, it.n0, r0, c0);
  }
}

// One block per SM walking its items (kACopy 0 or 1), or a cluster of two (kACopy 2).
template <int kACopy, bool kRing>
__global__ void __launch_bounds__(kThreads, 1)
    fp4_grouped_gemm_wgmma_ws_kernel(const __grid_constant__ Fp4GroupedGemmParams p,
                                     const __grid_constant__ CUtensorMap a_map, const int32_t* tile_start,
                                     int64_t n_tiles) {
  wgmma_ws_body<kACopy, kRing>(p, a_map, tile_start, n_tiles);
}
template <bool kRing>
__global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(kThreads, 1)
    fp4_grouped_gemm_wgmma_ws_pair_kernel(const __grid_constant__ Fp4GroupedGemmParams p,
                                          const __grid_constant__ CUtensorMap a_map, const int32_t* tile_start,
                                          int64_t n_tiles) {
  wgmma_ws_body<2, kRing>(p, a_map, tile_start, n_tiles);
}

// The activations [max_rows, k] e4m3 as a tensor map: boxes of 64 rows x 128 bytes in the 128-byte
// swizzle (the stage's A layout); rows at or past max_rows read as zeros.
CUtensorMap activation_map(const Fp4GroupedGemmParams& p) {
  using Encode = PFN_cuTensorMapEncodeTiled_v12000;
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    CHECK(found == cudaDriverEntryPointSuccess && fn) << "fp4 grouped gemm (wgmma ws): no cuTensorMapEncodeTiled";
    return reinterpret_cast<Encode>(fn);
  }();
  CHECK_EQ(reinterpret_cast<uintptr_t>(p.x8) % 16, 0u)
      << "fp4 grouped gemm (wgmma ws): activations not 16-byte aligned";
  CHECK_LE(p.max_rows, int64_t(INT32_MAX)) << "fp4 grouped gemm (wgmma ws): max_rows";
  CUtensorMap map;
  const cuuint64_t dims[2] = {cuuint64_t(p.k), cuuint64_t(p.max_rows)};
  const cuuint64_t strides[1] = {cuuint64_t(p.k)};
  const cuuint32_t box[2] = {uint32_t(kBK), 64}, elem_strides[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(p.x8), dims, strides, box,
                            elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  CHECK_EQ(int(r), int(CUDA_SUCCESS)) << "fp4 grouped gemm (wgmma ws): cuTensorMapEncodeTiled failed (k=" << p.k
                                      << ", max_rows=" << p.max_rows << ")";
  return map;
}

}  // namespace

void fp4_grouped_gemm_wgmma_ws(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemm (wgmma ws): FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemm (wgmma ws): no output";
  CHECK_EQ(p.k % kBK, 0) << "fp4 grouped gemm (wgmma ws): k=" << p.k << " must be a multiple of " << kBK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemm (wgmma ws): max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  CHECK(p.ws_a_copy >= 0 && p.ws_a_copy <= 2) << "fp4 grouped gemm (wgmma ws): ws_a_copy=" << p.ws_a_copy;
  const int64_t n_tiles = ceil_div(p.n, kBN);
  // Clusters take channel tiles in pairs: an odd count runs without them. The weight ring takes
  // the activations by TMA.
  int a_copy = p.ws_a_copy == 2 && n_tiles % 2 != 0 ? 1 : p.ws_a_copy;
  if (p.ws_weight_ring && a_copy == 0) a_copy = 1;
  const int form = p.ws_weight_ring ? a_copy + 2 : a_copy;  // 0-2 without the ring, 3-4 with it
  using Kernel = void(Fp4GroupedGemmParams, CUtensorMap, const int32_t*, int64_t);
  static Kernel* const kernels[5] = {
      fp4_grouped_gemm_wgmma_ws_kernel<0, false>, fp4_grouped_gemm_wgmma_ws_kernel<1, false>,
      fp4_grouped_gemm_wgmma_ws_pair_kernel<false>, fp4_grouped_gemm_wgmma_ws_kernel<1, true>,
      fp4_grouped_gemm_wgmma_ws_pair_kernel<true>};
  Kernel* const kernel = kernels[form];
  const size_t smem = p.ws_weight_ring ? kRingSmemBytes : kSmemBytes;
  // Once per device and kernel: above 48 KB of dynamic shared memory.
  static std::atomic<uint64_t> attr_set[5];
  set_smem_once(kernel, smem, false, &attr_set[form]);
  CUtensorMap a_map{};  // unread by the cp.async kernel
  if (a_copy > 0) a_map = activation_map(p);
  int32_t* tile_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  launch(fp4_tile_map_kernel<kBM>, 1, kMapThreads, 0, p.stream)(p.row_offsets, p.w, p.num_groups, tile_start);
  launch_check("fp4_grouped_gemm_wgmma_ws tile map", p.stream);
  // Persistent: at most one block per SM (the kernel holds an SM's shared memory), never more
  // blocks than the launch's bound on items; else one block per item of that bound.
  const int64_t bound = grouped_tile_bound(p.max_rows, p.num_groups, kBM) * n_tiles;
  int64_t blocks = p.ws_persistent ? std::min<int64_t>(bound, num_sms()) : bound;
  if (a_copy == 2) blocks = std::max<int64_t>(2, blocks / 2 * 2);  // whole clusters (bound is even)
  const unsigned grid = grid_x(blocks, "fp4_grouped_gemm_wgmma_ws");
  launch(kernel, grid, kThreads, smem, p.stream)(p, a_map, tile_start, n_tiles);
  launch_check("fp4_grouped_gemm_wgmma_ws", p.stream);
  stream_free(tile_start, p.stream);
}

}  // namespace v4rt::kernels::cuda
