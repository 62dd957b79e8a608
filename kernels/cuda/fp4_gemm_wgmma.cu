// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMM on FP8 wgmma (sm_90a) for prefill-sized groups (see fp4_gemm.h;
// fp4_grouped_gemm_tc dispatches here when Fp4GroupedGemmParams::wgmma is set and the mean rows
// per group take the 128-row tile). Same inputs and output as the mma.sync tile kernel
// (fp4_gemm_mma.cu): e4m3 activations with 1x128 power-of-two scales, packed e2m1 weights with a
// ue8m0 scale per 32 inputs, read in place.
//
// Numerics. wgmma multiplies e4m3 by e4m3 natively, but promotes only once per 128-k step (one
// activation scale block): per step, four m64n128k32 MMAs into a fresh fp32 accumulator, then
// acc += tmp * s_x[row, kb] * Sw[n, kb]. So each channel's four 32-blocks of a step are
// re-expressed as e4m3 bytes times one power of two (as indexer_fp8.cu's keys): block b's codes
// times 2^(6 - (emax - e_b)), Sw = 2^(emax - 133), emax the largest of the four ue8m0 bytes; code
// * 2^(6-d) * 2^(emax-133) = code * 2^(e_b - 127), the reference's value. Exact while the four
// blocks span d = emax - e_b <= 14 binades (an e2m1 code needs one mantissa bit; e4m3 keeps three
// down to its subnormal 2^-9; the largest, 6 * 2^6 = 384, is below 448). A wider span rounds the
// small block's codes to nearest e4m3 (relative to the step's largest weight scale: below
// 2^-14; beyond 2^(6-30) they vanish). The result then differs from the mma.sync kernel's in the
// order and precision of the fp32 sums inside a 128-k step (the tensor cores' FP8 accumulation:
// nmse ~4e-8 against fp64 on an H100, against ~1e-14 for the mma.sync kernel's exact 32-blocks),
// so the dispatch gives it bf16 outputs only, where that is far below the output's rounding.
// Measured (H100, 2026-12-05, Flash 8K prefill): 33.2 -> 26.5 ms, 149 -> 186 TFLOP/s.
//
// Decode. A code's e4m3 byte is a table lookup: the 8 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} *
// 2^(6-d) as e4m3 (4 cvt per channel block) in two registers, indexed by prmt with the codes'
// three magnitude bits as selectors (four codes per prmt), their sign bits or-ed to bit 7.
//
// Tiles and pipeline. Block = 128 rows of one expert x 128 output channels, two warpgroups (rows
// 0-63 and 64-127) sharing the weight tile; per thread 64 fp32 accumulators plus 64 for the step's
// product. Per k step, by cp.async straight from global memory, no registers in between: the e4m3
// activations (128 x 128 B) into the core-matrix layout wgmma reads (rows past the group zero-
// filled), the raw packed weights (128 x 64 B, rows padded to 80 B so the decode's 16-byte reads
// of 8 channels hit disjoint banks), each channel's four scale bytes and each row's activation
// scale; kStages steps in flight. The weights of step kb + 1 are decoded by all 256 threads into
// the second of two e4m3 B tiles while the MMAs of step kb run (issue, decode, wait), then step kb
// is promoted. Both warpgroups multiply whatever the tile's rows (zeros past the group's): a
// branch around the wgmma, uniform or not, makes ptxas serialize them (C7518). Blocks map to (expert, 128-row tile, channel tile) as in the mma.sync kernel: a
// device prefix of the tiles per expert, the channel tile fastest in the linear block order.
#include <cuda_fp8.h>

#include <atomic>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kBM = kFp4WgmmaRowsPerTile;  // rows of one expert per block
constexpr int kBN = 128;                   // output channels per block (wgmma N)
constexpr int kBK = 128;                   // k per step: one activation scale block, 4 weight blocks
constexpr int kThreads = 256;              // two warpgroups, 64 rows each
constexpr int kStages = 4;
constexpr int kLdW = kBK / 2 + 16;         // raw packed weight row stride in bytes (80)
static_assert(kBM == 128, "two warpgroups of 64 rows");

struct WgStage {
  uint8_t a[kBM * kBK];     // activations e4m3, core-matrix layout (dim 128)
  uint8_t w[kBN][kLdW];     // weights, packed e2m1 [channel][k/2]
  uint32_t ws[kBN];         // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[kBM];            // activation scale of each row
};
struct WgSmem {
  WgStage st[kStages];
  uint8_t b[2][kBN * kBK];  // decoded weights e4m3, core-matrix layout (dim 128)
  float sw[2][kBN];         // Sw = 2^(emax - 133) of each channel
};
constexpr size_t kSmemBytes = sizeof(WgSmem);
static_assert(kSmemBytes == 144384, "4 x 27,648 B of stages + 2 x 16,896 B of decoded weights");
static_assert(sizeof(WgStage) % 128 == 0, "operand tiles stay 128-byte aligned");

__global__ void __launch_bounds__(kThreads, 1)
    fp4_grouped_gemm_wgmma_kernel(const __grid_constant__ Fp4GroupedGemmParams p, const int32_t* tile_start) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(128) unsigned char smem_raw[];
  WgSmem& sm = *reinterpret_cast<WgSmem*>(smem_raw);

  const int64_t n_tiles = gridDim.y;
  const int64_t lin = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
  const int32_t num_tiles = tile_start[p.num_groups];
  if (lin / n_tiles >= num_tiles) return;
  const int32_t tile = int32_t(lin / n_tiles);
  // The group of this tile: the last g with tile_start[g] <= tile.
  const int g = part_holding(p.num_groups, tile, [&](int k) { return int64_t(tile_start[k]); });
  const int64_t row_begin = int64_t(p.row_offsets[g]) + int64_t(tile - tile_start[g]) * kBM;
  const int rows = int(min(int64_t(kBM), int64_t(p.row_offsets[g + 1]) - row_begin));
  const int64_t n0 = (lin % n_tiles) * kBN;
  const int64_t k = p.k, kb_count = k / kBK;
  const uint8_t* w = p.w[g];
  const uint8_t* wsc = p.w_scale[g];
  const bool ws_aligned = (reinterpret_cast<uintptr_t>(wsc) & 3) == 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wi = warp & 3;

  // Copies of step kb into stage s. Activations: 16-byte chunk tid % 8 of rows tid / 8 + 32 i;
  // weights: chunk tid % 4 of channels tid / 4 + 64 i; scale words: threads < 128 (channel tid);
  // activation scales: threads >= 128 (row tid - 128). Rows past the tile and channels past n: zeros.
  const int a_row = tid >> 3, a_chunk = tid & 7, w_ch = tid >> 2, w_chunk = tid & 3;
  const uint8_t* a_src = p.x8 + (row_begin + a_row) * k + a_chunk * 16;
  const uint8_t* w_src = w + (n0 + w_ch) * (k / 2) + w_chunk * 16;
  const int sc = tid & 127;
  const uint8_t* ws_src = wsc + (n0 + sc) * (k / 32);
  const float* xs_src = p.x_scale + (row_begin + sc) * kb_count;
  const bool ws_ok = n0 + sc < p.n, xs_ok = sc < rows;
  const int64_t w_left = p.n - n0 - w_ch;  // weight chunks i with 64 i < w_left exist
  auto load = [&](int64_t kb, int s) {
    WgStage& st = sm.st[s];
#pragma unroll
    for (int i = 0; i < kBM / 32; ++i) {
      const int r = a_row + 32 * i;
      const bool ok = r < rows;
      cp_async16(st.a + core_offset(r, a_chunk * 16, kBK), ok ? a_src + int64_t(32 * i) * k + kb * kBK : p.x8, ok);
    }
#pragma unroll
    for (int i = 0; i < kBN / 64; ++i) {
      const bool ok = 64 * i < w_left;
      cp_async16(&st.w[w_ch + 64 * i][w_chunk * 16], ok ? w_src + int64_t(64 * i) * (k / 2) + kb * (kBK / 2) : w, ok);
    }
    if (tid < kBN) {
      if (ws_aligned) {
        cp_async4(&st.ws[sc], ws_ok ? ws_src + kb * 4 : wsc, ws_ok);
      } else {  // scale rows not word aligned: plain loads (seen by the decode after its barrier)
        uint32_t v = 0;
        if (ws_ok) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(ws_src + kb * 4 + j)) << (8 * j);
        }
        st.ws[sc] = v;
      }
    } else {
      cp_async4(&st.xs[sc], xs_ok ? xs_src + kb : p.x_scale, xs_ok);
    }
  };

  // Decodes the weights of stage s into B tile t: thread tid owns channel tid % 128, blocks
  // tid / 128 and tid / 128 + 2 (8 consecutive channels per 16-byte phase: disjoint banks for
  // the 80-byte raw rows and for the core-matrix stores).
  auto decode = [&](int s, int t) {
    const WgStage& st = sm.st[s];
    const uint32_t e4 = st.ws[sc];
    const int e0 = int(e4 & 0xff), e1 = int((e4 >> 8) & 0xff), e2 = int((e4 >> 16) & 0xff), e3 = int(e4 >> 24);
    const int emax = max(max(e0, e1), max(e2, e3));
    if (tid < kBN) sm.sw[t][sc] = ldexpf(1.f, emax - 133);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = (tid >> 7) + 2 * j;
      const int eb = int((e4 >> (8 * b)) & 0xff);
      uint32_t out[8];
      decode_block(*reinterpret_cast<const uint4*>(&st.w[sc][16 * b]), emax - eb, out);
      uint8_t* dst = sm.b[t];
      *reinterpret_cast<uint4*>(dst + core_offset(sc, 32 * b, kBK)) = make_uint4(out[0], out[1], out[2], out[3]);
      *reinterpret_cast<uint4*>(dst + core_offset(sc, 32 * b + 16, kBK)) = make_uint4(out[4], out[5], out[6], out[7]);
    }
  };

  float acc[64], tmp[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = tmp[i] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < kb_count) load(s, s);
    cp_async_commit();
  }
  cp_async_wait<kStages - 2>();  // step 0 landed (this thread's copies) ...
  __syncthreads();         // ... everyone's
  decode(0, 0);
  fence_async_smem();  // this thread's decoded bytes and landed cp.async data, for the wgmma
  __syncthreads();

  // This thread's rows (within the block) and the column base of its accumulator pairs.
  const int r0 = wg * 64 + wi * 16 + (lane >> 2), c0 = 2 * (lane & 3);
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    const int s = int(kb % kStages), t = int(kb & 1);
    // Stage (kb - 1) % kStages was last read before the barrier that ended step kb - 1.
    if (kb + kStages - 1 < kb_count) load(kb + kStages - 1, int((kb + kStages - 1) % kStages));
    cp_async_commit();
    {
      const uint8_t* a_tile = sm.st[s].a + wg * 64 * kBK;
      const uint8_t* b_tile = sm.b[t];
      fence_acc(tmp);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 32; ++kk)
        wgmma_m64n128k32(tmp, smem_desc(a_tile + 32 * kk * 8, kBK), smem_desc(b_tile + 32 * kk * 8, kBK), kk);
      wgmma_commit();
    }
    // Under the MMAs: step kb + 1's copies land (this thread's, then everyone's) and its weights
    // are decoded into the other B tile (read by step kb - 1's MMAs, done before the last barrier).
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (kb + 1 < kb_count) decode(int((kb + 1) % kStages), t ^ 1);
    fence_async_smem();
    {
      wgmma_wait0();
      fence_acc(tmp);
      const float x0 = sm.st[s].xs[r0], x1 = sm.st[s].xs[r0 + 8];
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const float2 sw = *reinterpret_cast<const float2*>(&sm.sw[t][8 * i + c0]);
        acc[4 * i + 0] = fmaf(tmp[4 * i + 0], x0 * sw.x, acc[4 * i + 0]);
        acc[4 * i + 1] = fmaf(tmp[4 * i + 1], x0 * sw.y, acc[4 * i + 1]);
        acc[4 * i + 2] = fmaf(tmp[4 * i + 2], x1 * sw.x, acc[4 * i + 2]);
        acc[4 * i + 3] = fmaf(tmp[4 * i + 3], x1 * sw.y, acc[4 * i + 3]);
      }
    }
    __syncthreads();  // step kb + 1's B tile complete; stage s and B tile t free again
  }
  cp_async_wait<0>();  // no copy outstanding at exit (the last commits are empty)

  store_acc_m64n128(p, acc, row_begin, rows, n0, r0, c0);
}

}  // namespace

void fp4_grouped_gemm_wgmma(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemm (wgmma): FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemm (wgmma): no output";
  CHECK_EQ(p.k % kBK, 0) << "fp4 grouped gemm (wgmma): k=" << p.k << " must be a multiple of " << kBK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemm (wgmma): max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  // Once per device: above 48 KB of dynamic shared memory.
  static std::atomic<uint64_t> attr_set{0};
  set_smem_once(fp4_grouped_gemm_wgmma_kernel, kSmemBytes, false, &attr_set);
  int32_t* tile_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  launch(fp4_tile_map_kernel<kBM>, 1, kMapThreads, 0, p.stream)(p.row_offsets, p.w, p.num_groups, tile_start);
  launch_check("fp4_grouped_gemm_wgmma tile map", p.stream);
  const int64_t n_tiles = ceil_div(p.n, kBN);
  CHECK_LE(n_tiles, kMaxGridYZ) << "fp4 grouped gemm (wgmma): n=" << p.n;
  const dim3 grid(grid_x(grouped_tile_bound(p.max_rows, p.num_groups, kBM), "fp4_grouped_gemm_wgmma"),
                  unsigned(n_tiles));
  launch(fp4_grouped_gemm_wgmma_kernel, grid, kThreads, kSmemBytes, p.stream)(p, tile_start);
  launch_check("fp4_grouped_gemm_wgmma", p.stream);
  stream_free(tile_start, p.stream);
}

}  // namespace v4rt::kernels::cuda
