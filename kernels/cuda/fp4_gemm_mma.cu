// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMM on tensor cores (see fp4_gemm.h, fp4_grouped_gemm_tc): FP8 e4m3
// activations with 1x128 power-of-two scales times FP4 e2m1 weights (packed two per byte, ue8m0
// scale per 32 inputs, the checkpoint layout read in place). Each e2m1 value times 2^-6 is exactly
// an e4m3 value (sign to bit 7, the three magnitude bits to bits 4..2: exponent 1..3 -> 2^(e-7),
// exponent 0 -> the e4m3 subnormal m * 2^-7), so the weights become e4m3 bytes with two shifts and
// masks per four codes. mma.sync with e4m3 operands is not native on sm_90 (per NVIDIA in CUTLASS
// issue #1986, ptxas converts both operands to f16 on every MMA and runs f16 MMAs; this form,
// together with the 128-row tile, took an H100's 8K prefill from 34.1 to 33.2 ms, see
// docs/PERFORMANCE.md), so the kernel converts once per fragment: e4m3 -> f16 (exact) by cvt.rn.f16x2.e4m3x2, each A fragment converted once for the
// warp's four n8 tiles and each B fragment once for its row tiles, and one 32-block is two chained
// mma.sync m16n8k16 f16 x f16 -> f32. Each 32-block product starts from zero and is promoted into
// the fp32 accumulator times s_x[row, k/128] * 2^(S[n, k/32] - 127) (here s_x * 2^(S - 121), taking
// back the 2^-6: exact, powers of two), so the scaled sum is that of the CUDA-core kernel up to the
// order of the fp32 additions inside the 32-block. Inside a 32-block the MMAs' k index is a fixed
// permutation of the input index, the same for both operands: thread t's 8-byte activation load
// (inputs 8t..8t+7) gives its A fragments without permutes (inputs 8t+0,1 | 8t+2,3 -> a0 | a2 of
// the first k16 MMA, 8t+4,5 | 8t+6,7 of the second), and its one 32-bit word of packed weights,
// re-encoded to e4m3 and put in input order by two byte permutes, the matching B fragments. The
// products and their 32-block sums are unchanged.
//
// Pipeline: raw operands go to shared memory by cp.async, no registers in between: per k step of
// 128 (one activation scale block) the e4m3 activations [BM][128], the packed weights [128][64
// bytes], the ue8m0 bytes of the four 32-blocks of each channel and the activation scales; kStages
// steps in flight (kStages - 1 copies outstanding while one step is multiplied). Rows are padded to
// 160 bytes (A: 8-byte fragment loads, 4 rows of a half warp in disjoint banks) and 80 bytes (B:
// the 8 channels of a fragment in disjoint banks). Fragments are built from shared memory, the
// weight re-encode included, so threads store nothing to shared memory themselves (but for scale
// rows that are not word aligned, which take plain loads).
//
// Tiles: a block computes BM rows of one expert x 128 output channels with kWarpsM x 4 warps (4 side
// by side along the channels), each BM/kWarpsM rows x 32 channels (BM/kWarpsM/16 x 4 MMA tiles);
// four shapes, chosen by the host from the mean rows per group (max_rows / num_groups; the
// per-group counts are known only on the device):
//   BM   warps  warp tile  stages  smem/block  registers (ptxas, cap)  blocks/SM  for
//   128  2 x 4   64 x 32     4     126,976 B       242 (255)              1      prefill (mean >= 96 rows per group)
//    64  1 x 4   64 x 32     4      84,992 B       245 (255)              2      mean 41..95
//    32  1 x 4   32 x 32     4      64,000 B       165 (168)              3      mean 17..40
//    16  1 x 4   16 x 32     4      53,504 B       124 (128)              4      decode (mean <= 16)
// no spills. The 64-row warp tile is the widest that fits the registers (each B fragment converted
// once for four row tiles, each A fragment used for four n8 tiles). The 128-row shape puts two of
// them on top of each other in one block of 8 warps: each 128-channel slice of weights (and its
// scales) crosses L2 -> shared memory once per 128 rows instead of per 64, 24 KB of operands per k
// step for 4 MFLOP instead of 16 KB for 2, and each activation tile serves 4 warps; the registers
// allow one such block per SM (8 warps, 3 steps = 93 KB of operands in flight), against two blocks
// of the 64-row shape, which overlap one block's pipeline fill and epilogue with the other's math.
// Smaller row tiles waste fewer MMAs on short groups, but the point of the 16-row shape is memory
// parallelism: 4 blocks x 3 steps x 8 KB of weights in flight per SM, each weight byte read once.
// Blocks map to (expert, BM-row tile) through a prefix sum of the tiles per expert computed on the
// device. The grid is (tile bound, channel tiles) but blocks take their work in linear order with
// the channel tile fastest, so the blocks of one row tile run together and share its activations in
// L2 and consecutive row tiles of an expert share its weights; surplus blocks (the tile bound is an
// upper bound) come last and retire.
#include <algorithm>
#include <atomic>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kBN = 128;              // output channels per block
constexpr int kBK = 128;              // k per step = one activation scale block = 4 weight scale blocks
constexpr int kLdA = kBK + 32;        // activation row stride in bytes (40 words)
constexpr int kLdB = kBK / 2 + 16;    // packed weight row stride in bytes (20 words)
constexpr int kWarpsN = 4;  // warps side by side along the channels
constexpr int kWarpN = kBN / kWarpsN;  // 32 channels per warp
constexpr int kNI = kWarpN / 8;
constexpr int kPrefillRows = 128;  // the largest row tile
static_assert(kFp4WgmmaRowsPerTile == kPrefillRows, "the wgmma kernel serves the 128-row tile case");
static_assert(kFp4TcRowsPerTile == 64, "the 64-row tile below is the one fp4_gemm.h names");

// One pipeline stage in shared memory; BM rows.
template <int BM>
struct TcStage {
  uint8_t a[BM][kLdA];      // activations, e4m3 [row][k]
  uint8_t b[kBN][kLdB];     // weights, packed e2m1 [channel][k/2]
  uint32_t ws[kBN];         // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[BM];             // activation scale of each row
};

// kWarpsM warps along the rows (each BM / kWarpsM rows) times kWarpsN along the channels.
template <int BM>
struct TcShape;
template <>
struct TcShape<128> {
  static constexpr int kWarpsM = 2, kStages = 4, kMinBlocks = 1;
};
template <>
struct TcShape<64> {
  static constexpr int kWarpsM = 1, kStages = 4, kMinBlocks = 2;
};
template <>
struct TcShape<32> {
  static constexpr int kWarpsM = 1, kStages = 4, kMinBlocks = 3;
};
template <>
struct TcShape<16> {
  static constexpr int kWarpsM = 1, kStages = 4, kMinBlocks = 4;
};
template <int BM>
constexpr int tc_threads() {
  return TcShape<BM>::kWarpsM * kWarpsN * 32;
}
template <int BM>
constexpr size_t tc_smem_bytes() {
  return size_t(TcShape<BM>::kStages) * sizeof(TcStage<BM>);
}
static_assert(tc_smem_bytes<128>() == 126976 && tc_smem_bytes<64>() == 84992 && tc_smem_bytes<32>() == 64000 &&
                  tc_smem_bytes<16>() == 53504,
              "the header comment lists these sizes");

template <int BM>
__global__ void __launch_bounds__(tc_threads<BM>(), TcShape<BM>::kMinBlocks)
    fp4_grouped_gemm_tc_kernel(Fp4GroupedGemmParams p, const int32_t* tile_start) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  constexpr int kStages = TcShape<BM>::kStages;
  constexpr int kThreads = tc_threads<BM>();
  constexpr int kWarpM = BM / TcShape<BM>::kWarpsM;  // rows per warp
  constexpr int kMI = kWarpM / 16;
  static_assert(kThreads >= kBN && kThreads >= BM, "one thread per channel scale word and per row scale");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TcStage<BM>* stages = reinterpret_cast<TcStage<BM>*>(smem_raw);

  const int64_t n_tiles = gridDim.y;
  const int64_t lin = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
  const int32_t num_tiles = tile_start[p.num_groups];
  if (lin / n_tiles >= num_tiles) return;
  const int32_t tile = int32_t(lin / n_tiles);
  // The group of this tile: the last g with tile_start[g] <= tile (groups with no tiles share
  // their start with the next group that has some, which comes later).
  const int g = part_holding(p.num_groups, tile, [&](int k) { return int64_t(tile_start[k]); });
  const int64_t row_begin = int64_t(p.row_offsets[g]) + int64_t(tile - tile_start[g]) * BM;
  const int rows = int(min(int64_t(BM), int64_t(p.row_offsets[g + 1]) - row_begin));
  const int64_t n0 = (lin % n_tiles) * kBN;
  const int64_t k = p.k, kb_count = k / kBK;
  const uint8_t* w = p.w[g];
  const uint8_t* wsc = p.w_scale[g];
  const bool ws_aligned = (reinterpret_cast<uintptr_t>(wsc) & 3) == 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int wm = (warp / kWarpsN) * kWarpM, wn = (warp % kWarpsN) * kWarpN;

  // Copies of k step kb into stage s: 16-byte chunks of activations (BM x 8; this thread's are
  // rows tid / 8 + (kThreads / 8) i) and of weights (128 x 4; channels tid / 4 + (kThreads / 4) i),
  // one word of scale bytes per channel (threads < 128), one activation scale per row (threads <
  // BM). Rows past the tile and channels past n are zero.
  constexpr int kRowsPerPass = kThreads / 8, kChPerPass = kThreads / 4;
  const int a_row = tid >> 3, b_ch = tid >> 2;
  const uint8_t* a_src = p.x8 + (row_begin + a_row) * k + (tid & 7) * 16;
  const uint8_t* b_src = w + (n0 + b_ch) * (k / 2) + (tid & 3) * 16;
  const uint8_t* ws_src = wsc + (n0 + tid) * (k / 32);
  const float* xs_src = p.x_scale + (row_begin + tid) * kb_count;
  const bool ws_ok = tid < kBN && n0 + tid < p.n, xs_ok = tid < rows;
  const int64_t b_left = p.n - n0 - b_ch;  // this thread's weight chunks i with kChPerPass i < b_left exist
  auto load = [&](int64_t kb, int s) {
    TcStage<BM>& st = stages[s];
#pragma unroll
    for (int i = 0; i < BM / kRowsPerPass; ++i) {
      const bool ok = a_row + kRowsPerPass * i < rows;
      cp_async16(&st.a[a_row + kRowsPerPass * i][(tid & 7) * 16],
                 ok ? a_src + int64_t(kRowsPerPass * i) * k + kb * kBK : p.x8, ok);
    }
#pragma unroll
    for (int i = 0; i < kBN / kChPerPass; ++i) {
      const bool ok = kChPerPass * i < b_left;
      cp_async16(&st.b[b_ch + kChPerPass * i][(tid & 3) * 16],
                 ok ? b_src + int64_t(kChPerPass * i) * (k / 2) + kb * (kBK / 2) : w, ok);
    }
    if (tid < kBN) {
      if (ws_aligned) {
        cp_async4(&st.ws[tid], ws_ok ? ws_src + kb * 4 : wsc, ws_ok);
      } else {  // scale rows not word aligned: plain loads (seen by the compute after its barrier)
        uint32_t v = 0;
        if (ws_ok) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(ws_src + kb * 4 + j)) << (8 * j);
        }
        st.ws[tid] = v;
      }
    }
    if (tid < BM) cp_async4(&st.xs[tid], xs_ok ? xs_src + kb : p.x_scale, xs_ok);
  };

  float acc[kMI][kNI][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < kb_count) load(s, s);
    cp_async_commit();
  }
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    cp_async_wait<kStages - 2>();  // step kb has landed (this thread's copies) ...
    __syncthreads();               // ... everyone's, and step kb - 1's stage is free again
    if (kb + kStages - 1 < kb_count) load(kb + kStages - 1, int((kb + kStages - 1) % kStages));
    cp_async_commit();
    // A warp whose rows all lie past the tile's (the upper half of a 128-row tile that ends within
    // 64 rows) only copies: its MMAs would multiply zeros, and skipping them leaves the SM's issue
    // slots and tensor cores to the warps with rows.
    if (TcShape<BM>::kWarpsM > 1 && wm >= rows) continue;
    const TcStage<BM>& st = stages[kb % kStages];

    float xr[kMI][2];
#pragma unroll
    for (int mi = 0; mi < kMI; ++mi) {
      xr[mi][0] = st.xs[wm + mi * 16 + gid];
      xr[mi][1] = st.xs[wm + mi * 16 + gid + 8];
    }
    // Scale bytes of channels c and c + 1 of each n8 tile, plus 6 per byte: byte kk << 23 is then
    // the float 2^(S - 121) = 2^(S - 127) * 2^6, S = 0 included (valid for S <= 248, scales up to
    // 2^121; real ue8m0 weight scales are far below).
    uint32_t sw[kNI][2];
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni) {
      const uint2 v = *reinterpret_cast<const uint2*>(&st.ws[wn + ni * 8 + tig * 2]);
      sw[ni][0] = __vadd4(v.x, 0x06060606u);
      sw[ni][1] = __vadd4(v.y, 0x06060606u);
    }
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      // B fragments of the warp's kNI n8 tiles, converted once and used by all kMI row tiles:
      // inputs 8t + 0..3 -> bf[ni][0] (k16 MMA 0), 8t + 4..7 -> bf[ni][1] (MMA 1), two per f16x2.
      uint32_t bf[kNI][2][2];
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        const uint32_t packed = *reinterpret_cast<const uint32_t*>(&st.b[wn + ni * 8 + gid][kk * 16 + tig * 4]);
        const uint32_t ev = e2m1_lo_to_e4m3(packed), od = e2m1_hi_to_e4m3(packed);  // inputs 8t + 2i, 8t + 2i + 1
        e4m3x4_to_f16x2(__byte_perm(ev, od, 0x5140), bf[ni][0][0], bf[ni][0][1]);  // inputs 8t + 0, 1 | 2, 3
        e4m3x4_to_f16x2(__byte_perm(ev, od, 0x7362), bf[ni][1][0], bf[ni][1][1]);  // inputs 8t + 4, 5 | 6, 7
      }
      float s0[kNI], s1[kNI];
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        s0[ni] = __uint_as_float(((sw[ni][0] >> (8 * kk)) & 0xffu) << 23);
        s1[ni] = __uint_as_float(((sw[ni][1] >> (8 * kk)) & 0xffu) << 23);
      }
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi) {
        // A fragments of rows r, r + 8 in input order: 8t + 0, 1 | 2, 3 (MMA 0), 4, 5 | 6, 7 (MMA 1).
        const int r = wm + mi * 16 + gid;
        const uint2 lo = *reinterpret_cast<const uint2*>(&st.a[r][kk * 32 + tig * 8]);
        const uint2 hi = *reinterpret_cast<const uint2*>(&st.a[r + 8][kk * 32 + tig * 8]);
        uint32_t a0[4], a1[4];
        e4m3x4_to_f16x2(lo.x, a0[0], a0[2]);
        e4m3x4_to_f16x2(hi.x, a0[1], a0[3]);
        e4m3x4_to_f16x2(lo.y, a1[0], a1[2]);
        e4m3x4_to_f16x2(hi.y, a1[1], a1[3]);
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) {
          const uint32_t b0[2] = {bf[ni][0][0], bf[ni][0][1]}, b1[2] = {bf[ni][1][0], bf[ni][1][1]};
          float d[4];  // one 32-block: promoted below with its scales
          mma_f16_k32(d, a0, b0, a1, b1);
          acc[mi][ni][0] = fmaf(d[0], xr[mi][0] * s0[ni], acc[mi][ni][0]);
          acc[mi][ni][1] = fmaf(d[1], xr[mi][0] * s1[ni], acc[mi][ni][1]);
          acc[mi][ni][2] = fmaf(d[2], xr[mi][1] * s0[ni], acc[mi][ni][2]);
          acc[mi][ni][3] = fmaf(d[3], xr[mi][1] * s1[ni], acc[mi][ni][3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy outstanding at exit (the last commits are empty)

  // Epilogue: rows gid / gid + 8 of each m16 tile, channels 2 * tig, 2 * tig + 1 of each n8 tile.
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm + mi * 16 + gid + half * 8;
      if (r >= rows) continue;
      const int64_t row = row_begin + r;
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        const int64_t n = n0 + wn + ni * 8 + tig * 2;
        store_pair(p, row, n, acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
      }
    }
  }
}

template <int BM>
void launch_tc(const Fp4GroupedGemmParams& p) {
  constexpr size_t smem = tc_smem_bytes<BM>();
  // Once per device: above 48 KB of dynamic shared memory, and the whole carveout as shared memory
  // so kMinBlocks blocks fit.
  static std::atomic<uint64_t> attr_set{0};
  set_smem_once(fp4_grouped_gemm_tc_kernel<BM>, smem, true, &attr_set);
  int32_t* tile_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  launch(fp4_tile_map_kernel<BM>, 1, kMapThreads, 0, p.stream)(p.row_offsets, p.w, p.num_groups, tile_start);
  launch_check("fp4_grouped_gemm_tc tile map", p.stream);
  const int64_t n_tiles = ceil_div(p.n, kBN);
  CHECK_LE(n_tiles, kMaxGridYZ) << "fp4 grouped gemm (tensor cores): n=" << p.n;
  const dim3 grid(grid_x(grouped_tile_bound(p.max_rows, p.num_groups, BM), "fp4_grouped_gemm_tc"), unsigned(n_tiles));
  launch(fp4_grouped_gemm_tc_kernel<BM>, grid, tc_threads<BM>(), smem, p.stream)(p, tile_start);
  launch_check("fp4_grouped_gemm_tc", p.stream);
  stream_free(tile_start, p.stream);
}

}  // namespace

int fp4_tc_rows_per_tile(int64_t max_rows, int64_t num_groups) {
  // With skipped groups the mean reads low (fp4_mean_rows) and a smaller tile is taken.
  const int64_t mean = fp4_mean_rows(max_rows, num_groups);
  return mean <= 16 ? 16 : mean <= 40 ? 32 : mean < 96 ? kFp4TcRowsPerTile : kPrefillRows;
}

void fp4_grouped_gemm_tc(const Fp4GroupedGemmParams& p) {
  if (fp4_tc_use_gemv(p.max_rows, p.num_groups, p.n, p.k, p.gemv_rows)) {
    fp4_grouped_gemv(p);  // decode sizes: bound by the weight bytes, see fp4_gemv.cu
  } else if (p.wgmma_ws && !p.out_f32 && fp4_tc_rows_per_tile(p.max_rows, p.num_groups) == kFp4WgmmaRowsPerTile) {
    fp4_grouped_gemm_wgmma_ws(p);  // prefill sizes, warp-specialized, see fp4_gemm_wgmma_ws.cu
  } else if (p.wgmma && !p.out_f32 && fp4_tc_rows_per_tile(p.max_rows, p.num_groups) == kFp4WgmmaRowsPerTile) {
    fp4_grouped_gemm_wgmma(p);  // prefill sizes on FP8 wgmma, see fp4_gemm_wgmma.cu
  } else {
    fp4_grouped_gemm_mma(p);
  }
}

void fp4_grouped_gemm_mma(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemm (tensor cores): FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemm (tensor cores): no output";
  CHECK_EQ(p.k % kBK, 0) << "fp4 grouped gemm (tensor cores): k=" << p.k << " must be a multiple of " << kBK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemm (tensor cores): max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  switch (fp4_tc_rows_per_tile(p.max_rows, p.num_groups)) {
    case 16:
      launch_tc<16>(p);
      break;
    case 32:
      launch_tc<32>(p);
      break;
    case kFp4TcRowsPerTile:
      launch_tc<kFp4TcRowsPerTile>(p);
      break;
    default:
      launch_tc<kPrefillRows>(p);
      break;
  }
}

}  // namespace v4rt::kernels::cuda
