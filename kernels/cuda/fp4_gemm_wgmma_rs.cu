// SPDX-License-Identifier: MIT
// The grouped W4A8 expert GEMM on FP8 wgmma with the weights as the register operand (sm_90a):
// the roles of fp4_gemm_wgmma_ws.cu swapped, in the pattern of mixed-input Hopper GEMMs (the
// narrow operand converted in registers, the wide one read by the tensor cores from shared
// memory). fp4_grouped_gemm_tc dispatches here when Fp4GroupedGemmParams::wgmma_rs is set and the
// mean rows per group take the 128-row tile (bf16 outputs). Same inputs, outputs, numerics and
// grid mapping as fp4_gemm_wgmma.cu (read its header for the numerics: each channel's four
// 32-blocks of a 128-k step re-expressed as e4m3 bytes times Sw = 2^(emax - 133), one fp32
// promotion acc += tmp * (s_x * Sw) per step).
//
// Why. In the warp-specialized kernel the producers decode every weight byte into a shared B
// tile, fence it for the async proxy and hand it over by barrier; the consumers wait on them. Here
// the MMA computes out^T = W x^T: the weights are wgmma's A operand, taken from registers, so each
// consumer thread decodes only its own fragment (two channels x 16 codes per 32-block) while its
// previous MMAs run, and nothing decoded goes through shared memory. The producers only copy.
// Measured (H100, docs/PERFORMANCE.md, eleventh run): the same bits as the wgmma kernel, 0.91x /
// 0.98x the warp-specialized kernel at the Flash gate / down shapes: the decode now shares the
// consumers' issue slots with the promotion. Off by default (debug.cuda_expert_wgmma_rs).
//
// Roles. Block = 128 rows of one expert (wgmma N) x 128 output channels, three warpgroups (384
// threads): warpgroup 0 copies by cp.async (activations in 128-byte swizzled rows, rows past the
// group zero-filled; raw packed weights in 80-byte rows; the channels' scale bytes; the rows'
// activation scales) kLookahead steps ahead, waits for a step's copies, fences them for the async
// proxy and arrives on the stage's full mbarrier. Warpgroups 1 and 2 take channels 0-63 and 64-127:
// each thread decodes its A fragment of step kb + 1 (prmt tables, kept in shared memory, as the
// other kernels) under step kb's four m64nNk32, then promotes step kb and arrives on the stage's
// empty mbarrier. N is 128, or 64 for a tile of at most 64 rows. setmaxnreg: 56 producer / 224
// consumer registers.
#include <cuda_fp8.h>

#include <atomic>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/warp_specialize.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kBM = kFp4WgmmaRowsPerTile;  // rows of one expert per block (the MMA's N)
constexpr int kBN = 128;                   // output channels per block (two m64 warpgroups)
constexpr int kBK = 128;                   // k per step: one activation scale block, 4 weight blocks
constexpr int kThreads = 384;              // one producer warpgroup + two consumer warpgroups
constexpr int kProducerWarps = 4;
constexpr int kConsumerWarps = 8;
constexpr int kProducerRegs = 56, kConsumerRegs = 224;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 65536, "setmaxnreg within the launch's registers");
constexpr int kStages = 6;
constexpr int kLookahead = 4;  // steps of copies in flight
static_assert(kLookahead < kStages, "a stage's copies wait for its release");
// Raw packed weight row stride in bytes (80: 8 consecutive channels' 16-byte reads on disjoint banks).
constexpr int kLdW = kBK / 2 + 16;
static_assert(kBM == 128 && kBN == 128, "one producer thread per row, per channel");

struct RsStage {
  uint8_t x[kBM * kBK];  // activations e4m3, 128-byte rows, 128-byte swizzle (sw128_offset)
  uint8_t w[kBN][kLdW];  // weights, packed e2m1 [channel][k/2]
  uint32_t ws[kBN];      // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[kBM];         // activation scale of each row
};
struct RsSmem {
  RsStage st[kStages];
  uint2 table[kDecodeTables];  // decode_table(d) of d = 0 .. kDecodeTables - 1
  uint64_t full[kStages];      // producer -> consumers (kProducerWarps arrivals)
  uint64_t empty[kStages];     // consumers -> producer (kConsumerWarps arrivals)
};
static_assert(sizeof(RsStage) % 1024 == 0, "activation tiles stay 1024-byte aligned (the swizzle's period)");
constexpr size_t kSmemBytes = sizeof(RsSmem) + 1024;
static_assert(kSmemBytes <= 227 * 1024, "dynamic shared memory of one block per SM");

// This thread's A fragment of one 128-k step (four k32 slices x 4 registers) and its channels' Sw.
struct Frag {
  uint32_t a[4][4];
  float sw[2];
};

// Decodes the fragment of step stage `st` for channels ch (rows v1 = 0) and ch + 8 (v1 = 1) of
// the block, quad position q: register a[kk][v1 + 2 v2] = codes 4 q + 16 v2 .. + 3 of 32-block kk,
// which are bytes 2 q, 2 q + 1 (v2 = 0) and 8 + 2 q, 9 + 2 q (v2 = 1) of the block's 16.
__device__ __forceinline__ void decode_frag(const RsStage& st, const uint2* table, int ch, int q, Frag& f) {
#pragma unroll
  for (int v1 = 0; v1 < 2; ++v1) {
    const int c = ch + 8 * v1;
    const uint32_t e4 = st.ws[c];
    const int e0 = int(e4 & 0xff), e1 = int((e4 >> 8) & 0xff), e2 = int((e4 >> 16) & 0xff), e3 = int(e4 >> 24);
    const int emax = max(max(e0, e1), max(e2, e3));
    f.sw[v1] = exp2_exact(emax - 133);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const int eb = int((e4 >> (8 * kk)) & 0xff);
      const uint4 blk = *reinterpret_cast<const uint4*>(&st.w[c][16 * kk]);
      // Words q / 2 (bytes 2 q, 2 q + 1 in its half q % 2) and 2 + q / 2 (bytes 8 + 2 q, 9 + 2 q).
      const uint32_t w0 = (q & 2) ? blk.y : blk.x, w1 = (q & 2) ? blk.w : blk.z;
      const uint32_t u = __byte_perm(w0, w1, (q & 1) ? 0x7632 : 0x5410);
      decode_word_table(u, table[min(emax - eb, kDecodeTables - 1)], f.a[kk][v1], f.a[kk][v1 + 2]);
    }
  }
}

// One consumer warpgroup's main loop and epilogue for N = kN rows: channels cw * 64 .. + 63 of the
// block, rows 0 .. kN - 1.
template <int kN>
__device__ __forceinline__ void consume(const Fp4GroupedGemmParams& p, RsSmem& sm, int steps, int cw, int64_t row_begin,
                                        int rows, int64_t n0) {
  constexpr int kAcc = kN / 2;
  const int lane = threadIdx.x & 31, wi = (threadIdx.x >> 5) & 3;
  const int g = lane >> 2, q = lane & 3;
  const int ch = cw * 64 + wi * 16 + g;  // this thread's channels ch, ch + 8 within the block
  float acc[kAcc], tmp[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = tmp[i] = 0.f;
  Frag f0, f1;

  // Step kb from fragment fc (decoded), with the decode of step kb + 1 into fn under its MMAs.
  auto step = [&](int kb, Frag& fc, Frag& fn) {
    const int s = kb % kStages;
    const RsStage& st = sm.st[s];
    const uint64_t db = smem_desc_sw128(st.x);
    fence_acc(tmp);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if constexpr (kN == 128) wgmma_rs_m64n128k32(tmp, fc.a[kk], db + 2 * kk, kk);
      else wgmma_rs_m64n64k32(tmp, fc.a[kk], db + 2 * kk, kk);
    }
    wgmma_commit();
    if (kb + 1 < steps) {
      const int sn = (kb + 1) % kStages;
      mbar_wait(&sm.full[sn], uint32_t(((kb + 1) / kStages) & 1));
      decode_frag(sm.st[sn], sm.table, ch, q, fn);
    }
    wgmma_wait0();
    fence_acc(tmp);
    // The promotion: element (channel ch + 8 v1, row 8 i + 2 q + c) is tmp[4 i + 2 v1 + c].
#pragma unroll
    for (int i = 0; i < kN / 8; ++i) {
      const float2 x = *reinterpret_cast<const float2*>(&st.xs[8 * i + 2 * q]);
      acc[4 * i + 0] = fmaf(tmp[4 * i + 0], x.x * fc.sw[0], acc[4 * i + 0]);
      acc[4 * i + 1] = fmaf(tmp[4 * i + 1], x.y * fc.sw[0], acc[4 * i + 1]);
      acc[4 * i + 2] = fmaf(tmp[4 * i + 2], x.x * fc.sw[1], acc[4 * i + 2]);
      acc[4 * i + 3] = fmaf(tmp[4 * i + 3], x.y * fc.sw[1], acc[4 * i + 3]);
    }
    __syncwarp();  // the warp's reads of stage s done (the MMAs' at the wait above)
    if (lane == 0) mbar_arrive(&sm.empty[s]);
  };

  mbar_wait(&sm.full[0], 0);
  decode_frag(sm.st[0], sm.table, ch, q, f0);
  for (int kb = 0; kb < steps; kb += 2) {
    step(kb, f0, f1);
    if (kb + 1 < steps) step(kb + 1, f1, f0);
  }

  // Epilogue: lanes g and g ^ 1 (same rows, channels ch and ch ^ 1) trade one value per pair so
  // each stores two adjacent channels of one row: even g row 2 q, odd g row 2 q + 1.
  const bool odd = g & 1;
#pragma unroll
  for (int i = 0; i < kN / 8; ++i) {
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) {
      const float v0 = acc[4 * i + 2 * v1], v1v = acc[4 * i + 2 * v1 + 1];
      const float y = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1v, 4);
      const int r = 8 * i + 2 * q + (odd ? 1 : 0);
      const int64_t c = n0 + ch + 8 * v1 - (odd ? 1 : 0);
      if (r < rows) store_pair(p, row_begin + r, c, odd ? y : v0, odd ? v1v : y);
    }
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    fp4_grouped_gemm_wgmma_rs_kernel(const __grid_constant__ Fp4GroupedGemmParams p, const int32_t* tile_start) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  RsSmem& sm = *reinterpret_cast<RsSmem*>(smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023));

  const int64_t n_tiles = gridDim.y;
  const int64_t lin = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
  const int32_t num_tiles = tile_start[p.num_groups];
  if (lin / n_tiles >= num_tiles) return;
  const int32_t tile = int32_t(lin / n_tiles);
  const int g = part_holding(p.num_groups, tile, [&](int k) { return int64_t(tile_start[k]); });
  const int64_t row_begin = int64_t(p.row_offsets[g]) + int64_t(tile - tile_start[g]) * kBM;
  const int rows = int(min(int64_t(kBM), int64_t(p.row_offsets[g + 1]) - row_begin));
  const int64_t n0 = (lin % n_tiles) * kBN;
  const int64_t k = p.k;
  const int steps = int(k / kBK);  // >= 1

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&sm.full[s], kProducerWarps);
      mbar_init(&sm.empty[s], kConsumerWarps);
    }
  }
  if (tid < kDecodeTables) sm.table[tid] = decode_table(tid);
  __syncthreads();  // barriers and tables ready; the last block-wide barrier

  if (wg == 0) {
    // ---- producer: copies only ----
    regs_dec<kProducerRegs>();
    const uint32_t st0 = smem_u32(&sm.st[0]);
    // Activations: chunk (tid / 8) % 8 of rows tid % 8 + 8 (tid / 64) + 16 i (8 lanes = 8 rows at
    // the same chunk: eight bank quads under the swizzle). A source row at or past the tile's
    // copies 0 bytes (zero fill) from a clamped, valid address.
    const int a_row = (tid & 7) + 8 * (tid >> 6), a_chunk = (tid >> 3) & 7;
    const uint8_t* a_src = p.x8 + row_begin * k + a_chunk * 16;
    uint32_t a_off[kBM / 16], a_bytes[kBM / 16];
#pragma unroll
    for (int i = 0; i < kBM / 16; ++i) {
      const int r = a_row + 16 * i;
      a_off[i] = uint32_t(min(r, rows - 1)) * uint32_t(k);
      a_bytes[i] = r < rows ? 16 : 0;
    }
    const uint32_t a_dst = uint32_t(offsetof(RsStage, x)) + uint32_t(sw128_offset(a_row, a_chunk));
    // Weights: 16-byte piece tid % 4 of channels tid / 4 + 32 i.
    const int w_ch = tid >> 2, w_piece = tid & 3;
    const int64_t n_left = p.n - n0;  // channels of this tile that exist (>= 1)
    const uint8_t* w_src = p.w[g] + n0 * (k / 2) + w_piece * 16;
    uint32_t w_off[kBN / 32], w_bytes[kBN / 32];
#pragma unroll
    for (int i = 0; i < kBN / 32; ++i) {
      const int c = w_ch + 32 * i;
      w_off[i] = uint32_t(min(int64_t(c), n_left - 1)) * uint32_t(k / 2);
      w_bytes[i] = c < n_left ? 16 : 0;
    }
    const uint32_t w_dst = uint32_t(offsetof(RsStage, w)) + uint32_t(w_ch * kLdW + w_piece * 16);
    // Scales: channel tid's four bytes of the step, row tid's activation scale.
    const uint8_t* wsc = p.w_scale[g];
    const bool ws_aligned = (reinterpret_cast<uintptr_t>(wsc) & 3) == 0;
    const uint8_t* ws_src = wsc + (n0 + min(int64_t(tid), n_left - 1)) * (k / 32);
    const uint32_t ws_bytes = tid < n_left ? 4 : 0;
    const float* xs_src = p.x_scale + (row_begin + min(tid, rows - 1)) * (k / kBK);
    const uint32_t xs_bytes = tid < rows ? 4 : 0;

    auto load = [&](int kb, int s) {
      const uint32_t st = st0 + uint32_t(s) * uint32_t(sizeof(RsStage));
      const uint8_t* a = a_src + kb * kBK;
#pragma unroll
      for (int i = 0; i < kBM / 16; ++i) cp_async16_n(st + a_dst + 2048 * i, a + a_off[i], a_bytes[i]);
      const uint8_t* w = w_src + kb * (kBK / 2);
#pragma unroll
      for (int i = 0; i < kBN / 32; ++i) cp_async16_n(st + w_dst + 32 * kLdW * i, w + w_off[i], w_bytes[i]);
      const uint32_t dst = st + uint32_t(offsetof(RsStage, ws)) + 4 * tid;
      if (ws_aligned) {
        cp_async4_n(dst, ws_src + 4 * kb, ws_bytes);
      } else {  // scale rows not word aligned: plain loads (visible after the __syncwarp below)
        uint32_t v = 0;
        if (ws_bytes != 0) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(ws_src + 4 * kb + j)) << (8 * j);
        }
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(dst), "r"(v) : "memory");
      }
      cp_async4_n(st + uint32_t(offsetof(RsStage, xs)) + 4 * tid, xs_src + kb, xs_bytes);
    };

    // One commit group per step (empty past the last): step kb's group is complete when at most
    // kLookahead newer ones are pending. Step nx's copies go to stage nx % kStages, whose previous
    // use (step nx - kStages) completed empty phase nx / kStages - 1.
#pragma unroll
    for (int s = 0; s < kLookahead; ++s) {
      if (s < steps) load(s, s);
      cp_async_commit();
    }
    int ls = kLookahead, lround = 0, fs = 0;
    for (int kb = 0; kb < steps; ++kb) {
      const int nx = kb + kLookahead;
      if (nx < steps) {
        if (nx >= kStages) mbar_wait(&sm.empty[ls], uint32_t((lround - 1) & 1));
        load(nx, ls);
      }
      if (++ls == kStages) {
        ls = 0;
        ++lround;
      }
      cp_async_commit();
      cp_async_wait<kLookahead>();  // this thread's copies of step kb landed
      fence_async_smem();           // ... and are visible to the async proxy (the wgmma's reads)
      __syncwarp();
      if (lane == 0) mbar_arrive(&sm.full[fs]);
      if (++fs == kStages) fs = 0;
    }
    cp_async_wait<0>();
    return;
  }

  // ---- consumers: warpgroup 1 channels 0-63, warpgroup 2 channels 64-127 ----
  regs_inc<kConsumerRegs>();
  if (rows <= 64) consume<64>(p, sm, steps, wg - 1, row_begin, rows, n0);
  else consume<128>(p, sm, steps, wg - 1, row_begin, rows, n0);
}

}  // namespace

void fp4_grouped_gemm_wgmma_rs(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemm (wgmma rs): FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemm (wgmma rs): no output";
  CHECK_EQ(p.k % kBK, 0) << "fp4 grouped gemm (wgmma rs): k=" << p.k << " must be a multiple of " << kBK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemm (wgmma rs): max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  static std::atomic<uint64_t> attr_set;
  set_smem_once(fp4_grouped_gemm_wgmma_rs_kernel, kSmemBytes, false, &attr_set);
  int32_t* tile_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  fp4_tile_map_kernel<kBM><<<1, kMapThreads, 0, p.stream>>>(p.row_offsets, p.w, p.num_groups, tile_start);
  launch_check("fp4_grouped_gemm_wgmma_rs tile map", p.stream);
  const int64_t n_tiles = ceil_div(p.n, kBN);
  CHECK_LE(n_tiles, kMaxGridYZ) << "fp4 grouped gemm (wgmma rs): n=" << p.n;
  const dim3 grid(grid_x(grouped_tile_bound(p.max_rows, p.num_groups, kBM), "fp4_grouped_gemm_wgmma_rs"),
                  unsigned(n_tiles));
  fp4_grouped_gemm_wgmma_rs_kernel<<<grid, kThreads, kSmemBytes, p.stream>>>(p, tile_start);
  launch_check("fp4_grouped_gemm_wgmma_rs", p.stream);
  stream_free(tile_start, p.stream);
}

}  // namespace v4rt::kernels::cuda
