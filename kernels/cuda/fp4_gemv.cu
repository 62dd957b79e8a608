// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMV on tensor cores for decode (see fp4_gemm.h, fp4_grouped_gemv): few rows
// per expert, so the time is the weight bytes crossing HBM once and the kernel is written to keep
// enough of them in flight. Same operands and promotion as the tile kernel (fp4_gemm_mma.cu), roles
// swapped: the weights are the m16 side of mma.sync m16n8k16 (16 output channels) and at most 8 rows
// of one expert are its n8 side, so 1 to 8 rows cost the same and no row tile of 16 sits mostly empty.
//
// Work: a block owns 8 rows of one expert (one "row pass"; an expert with more rows has several)
// times 32 output channels; its 4 warps split k into 4 contiguous ranges of 128-steps and each
// computes both m16 channel tiles over its range (the activation fragments, converted once, serve
// both). Other launch shapes (Fp4GemvShape, fp4_gemv_shape picks): 16 rows a pass, where each
// decoded weight fragment feeds two n8 MMAs (rows gid and gid + 8 of the pass), for a mean above 4
// rows an expert; and a k split of 2, where warps 2w and 2w + 1 take the two halves of k for
// channel group w of a 64-channel block (longer pipelines, two partial sums an output), or of 1,
// where each warp runs the whole k for its 32 of a 128-channel block. Each warp runs its own
// cp.async pipeline (kStages steps of 128 in flight, __syncwarp only): per step 32 channels x 64
// bytes of packed weights, 8 (or 16) rows x 128 e4m3 activations, the four ue8m0 bytes of each
// channel and the activation scale of each row. The warps' sums meet in shared memory,
// added in warp (= k) order, and are stored as bf16 or fp32. The pair form (kMats = 2,
// fp4_grouped_gemv_pair: the experts' gate and up) stages 32 channels of each projection beside
// the same activations, so each warp runs four m16 tiles per step; each output's sums are the
// single form's (two blocks of 107,008 B per SM instead of three of 64,000 B).
//
// Fragments: ldmatrix.x4 on the weight rows (8 channels x 16 bytes = one 32-block per 8x8 matrix)
// hands thread (gid, tig) word tig of that block for channel gid (and gid + 8), i.e. codes 8 tig ..
// 8 tig + 7, the words the tile kernel reads. They become e4m3 bytes as there (value x 2^-6, exact),
// even codes in one word and odd codes in the other, then f16x2 by cvt (exact): (c0, c2) | (c4, c6)
// and (c1, c3) | (c5, c7). One 32-block is two k16 MMAs whose k slots take inputs 8 tig + {0, 2 | 1,
// 3} and 8 tig + {4, 6 | 5, 7}; the activations, read as 8 bytes at row gid, get the same order by
// one byte permute. The products are those of the tile kernel, each 32-block summed by the same
// MMAs (its inputs in other k slots).
//
// Numerics: e4m3 (4 significant bits) x e2m1 (2) products are exact in f16 x f16 -> fp32. Each
// product is a multiple of 2^-10 (2^-9 x 0.5) of magnitude <= 448 x 6 = 2,688, so a 32-block sum is
// a multiple of 2^-10 below 86,016 < 2^17: exact in fp32 (24 bits) while it stays below 2^14, above
// that rounded as by any fp32 adder (the tile and CUDA-core kernels alike; the tensor core's adder
// keeps fewer alignment bits, which the tests' tolerance covers). Each block sum is promoted in
// ascending block order within a warp's k range, acc += sum x s_x x 2^(S - 121) (powers of two:
// exact), and the 4 (or 2) ranges are added in k order.
//
// Weights are read 64 bytes of a channel a step, the channel's next 64 bytes one step later; with
// Fp4GroupedGemmParams::gemv_l2_prefetch each copy asks the L2 to fetch the aligned 128 or 256
// bytes around it, so DRAM serves each channel's range in longer bursts.
//
// Grid: one block per (row pass, 32 or 64 channels), channels fastest, over the row-pass bound of
// grouped_tile_bound. The expert of a row pass is found by each block itself (a block-wide prefix
// sum of row passes over the groups in shared memory: one round of loads, two barriers), so there is
// one launch and no scratch; blocks past the last row pass retire after it.
#include <atomic>
#include <climits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/mma_sync.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kWarps = 4;                     // warps per block
constexpr int kThreads = kWarps * 32;
constexpr int kTilesM = 2;                    // m16 channel tiles per warp
constexpr int kChannels = 16 * kTilesM;       // output channels per warp
constexpr int kStepK = 128;                   // k per pipeline step = one activation scale block
constexpr int kLdW = kStepK / 2 + 16;         // weight row stride, bytes: ldmatrix rows in distinct banks
constexpr int kLdA = kStepK + 32;             // activation row stride, bytes: 8-byte reads conflict-free
constexpr int kScanPerThread = 4;             // groups per thread per prefix-sum pass

// One pipeline step of one warp in shared memory; kMats weight matrices (2: a pair of projections
// of the same rows, the second's channels after the first's), kRows activation rows.
template <int kMats, int kRows>
struct GemvStage {
  uint8_t w[kMats * kChannels][kLdW];  // packed e2m1 [channel][64 bytes of this step]
  uint8_t a[kRows][kLdA];              // e4m3 [row][128]
  uint32_t ws[kMats * kChannels];      // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[kRows];                     // activation scale of each row
};
// The shape of a launch: kMats matrices; kRows rows a pass (8: one n8 MMA, 16: two sharing each
// decoded weight fragment); the 4 warps split k into kKSplit ranges and the channels into
// 4 / kKSplit groups of 32 (a block computes kBlockCh = 32 x 4 / kKSplit channels of each matrix).
template <int kMats, int kRows, int kKSplit>
struct Gemv {
  static_assert(kRows == 8 || kRows == 16, "a pass is one or two n8 MMAs");
  static_assert(kKSplit == 1 || kKSplit == 2 || kKSplit == 4, "the warps split k evenly");
  static constexpr int kChSplit = kWarps / kKSplit;
  static constexpr int kBlockCh = kChannels * kChSplit;
  static constexpr int kHalves = kRows / 8;
  static constexpr int kStages = kMats == 2 && kRows == 16 ? 3 : 4;  // steps per warp in shared memory
  static constexpr size_t kSmemBytes = size_t(kWarps) * kStages * sizeof(GemvStage<kMats, kRows>);
  // Blocks per SM by shared memory (228 KB, 1 KB reserved a block), at most 3 (then by registers).
  static constexpr int kMinBlocks = int(228 * 1024 / (kSmemBytes + 1024)) < 3 ? int(228 * 1024 / (kSmemBytes + 1024)) : 3;
  static constexpr int kRedLd = kMats * kBlockCh + 4;  // reduction row stride, floats
  static_assert(sizeof(GemvStage<kMats, kRows>) % 16 == 0, "stages keep 16-byte alignment");
  static_assert(kMinBlocks >= 1, "a block fits an SM");
  static_assert(size_t(kKSplit) * kRows * kRedLd * 4 <= kSmemBytes, "the reduction reuses the stages");
};
static_assert(Gemv<1, 8, 4>::kSmemBytes == 64000 && Gemv<1, 8, 4>::kMinBlocks == 3, "3 blocks per SM");
static_assert(Gemv<2, 8, 4>::kSmemBytes == 107008 && Gemv<2, 8, 4>::kMinBlocks == 2, "2 blocks per SM");
static_assert(Gemv<2, 16, 4>::kMinBlocks == 2 && Gemv<1, 16, 4>::kMinBlocks == 2, "2 blocks per SM");

// The second projection of a pair: its weights per group (present exactly where the first's are)
// and its output.
struct GemvSecond {
  const uint8_t* const* w = nullptr;
  const uint8_t* const* ws = nullptr;
  uint16_t* out = nullptr;
  float* out_f32 = nullptr;
};

// What a block serves: rows [row_begin, row_begin + rows) of the group with weights w / ws.
struct GemvWork {
  const uint8_t* w;
  const uint8_t* ws;
  int64_t row_begin;
  int rows;  // 0: no such row pass (surplus block)
  int group;
};

// --- row pass lookup -----------------------------------------------------------------------------
// The row pass `pass` of the launch (row passes numbered over the groups in order, a group with
// weights and r rows having ceil(r / kRows), one without weights none): block-wide prefix sum over
// the groups, kThreads * kScanPerThread per round (one round for up to 512 groups). All threads call
// it; all return the same work. NOTE: p.num_groups >= 1 (the launcher returns before), so the loop
// runs and its barriers publish found.rows = 0.
template <int kRows>
__device__ GemvWork gemv_find_pass(const Fp4GroupedGemmParams& p, int pass) {
  __shared__ int32_t warp_sum_s[kWarps];
  __shared__ GemvWork found;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid == 0) found.rows = 0;
  int32_t carry = 0;  // row passes of the groups before this round (the same in every thread)
  for (int base = 0; base < p.num_groups; base += kThreads * kScanPerThread) {
    const int g0 = base + tid * kScanPerThread;
    int32_t r0[kScanPerThread], r1[kScanPerThread], passes[kScanPerThread];
    const uint8_t* w[kScanPerThread];
    const uint8_t* ws[kScanPerThread];
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i) {  // independent loads: one round trip
      const bool ok = g0 + i < p.num_groups;
      r0[i] = ok ? p.row_offsets[g0 + i] : 0;
      r1[i] = ok ? p.row_offsets[g0 + i + 1] : 0;
      w[i] = ok ? p.w[g0 + i] : nullptr;
      ws[i] = ok ? p.w_scale[g0 + i] : nullptr;
    }
    int32_t mine = 0;
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i) {
      const int32_t rows = r1[i] - r0[i];
      passes[i] = w[i] != nullptr && rows > 0 ? (rows + kRows - 1) / kRows : 0;
      mine += passes[i];
    }
    int32_t incl = mine;  // inclusive scan over the warp
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane == 31) warp_sum_s[warp] = incl;
    __syncthreads();
    int32_t start = carry + incl - mine, round = 0;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) {
      const int32_t s = warp_sum_s[v];
      if (v < warp) start += s;
      round += s;
    }
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i) {
      if (pass >= start && pass < start + passes[i]) {  // exactly one thread of the launch's groups
        found.w = w[i];
        found.ws = ws[i];
        found.group = g0 + i;
        found.row_begin = int64_t(r0[i]) + int64_t(pass - start) * kRows;
        found.rows = min(kRows, int(r1[i] - found.row_begin));
      }
      start += passes[i];
    }
    carry += round;
    __syncthreads();  // found is visible; warp_sum_s may be rewritten
    if (found.rows > 0 || carry > pass) break;  // uniform: every thread reads the same values
    // (carry > pass without a find cannot happen; it only ends the search early)
  }
  return found;
}

// --- the kernel ----------------------------------------------------------------------------------
template <int kMats, int kRows, int kKSplit>
__global__ void __launch_bounds__(kThreads, (Gemv<kMats, kRows, kKSplit>::kMinBlocks))
    fp4_grouped_gemv_kernel(Fp4GroupedGemmParams p, GemvSecond second, int64_t n_blocks) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  using G = Gemv<kMats, kRows, kKSplit>;
  using Stage = GemvStage<kMats, kRows>;
  constexpr int kTiles = kMats * kTilesM, kRedLd = G::kRedLd, kStages = G::kStages, kHalves = G::kHalves;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int pass = int(blockIdx.x / n_blocks);
  const int64_t n_block = int64_t(blockIdx.x % n_blocks) * G::kBlockCh;
  const GemvWork work = gemv_find_pass<kRows>(p, pass);
  if (work.rows == 0) return;  // the bound counts more row passes than there are

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int kr = warp % kKSplit, kc = warp / kKSplit;  // this warp's k range and channel group
  const int64_t n0 = n_block + int64_t(kc) * kChannels;
  const int64_t k = p.k, steps = k / kStepK;
  const int64_t s_begin = steps * kr / kKSplit, s_end = steps * (kr + 1) / kKSplit;
  const int nsteps = int(s_end - s_begin);
  Stage* stages = reinterpret_cast<Stage*>(smem_raw) + warp * kStages;
  const int rows = work.rows;
  const uint8_t* w[kMats];  // matrix m's weights and scales for this group
  const uint8_t* wsc[kMats];
  w[0] = work.w, wsc[0] = work.ws;
  if constexpr (kMats == 2) w[1] = second.w[work.group], wsc[1] = second.ws[work.group];

  // Copies of step s into stage st: weight chunks (channel lane / 4 + 8 i of each matrix, bytes
  // 16 (lane % 4)), activation chunks (row lane / 8 + 4 i, bytes 16 (lane % 8)), the scale word of
  // channel `lane` of each matrix, the activation scale of row `lane` (< kRows). Channels past n
  // and rows past the pass are zeros.
  const int64_t w_off = (n0 + (lane >> 2)) * (k / 2) + (lane & 3) * 16, ws_off = (n0 + lane) * (k / 32);
  const uint8_t* a_src = p.x8 + (work.row_begin + (lane >> 3)) * k + (lane & 7) * 16;
  const float* xs_src = p.x_scale + (work.row_begin + lane) * steps;
  const int64_t w_left = p.n - n0 - (lane >> 2);  // this lane's weight chunk i exists if 8 i < w_left
  const bool ws_ok = n0 + lane < p.n, xs_ok = lane < rows;
  auto load = [&](int64_t s, int st_idx) {
    Stage& st = stages[st_idx];
#pragma unroll
    for (int m = 0; m < kMats; ++m) {
#pragma unroll
      for (int i = 0; i < kChannels / 8; ++i) {
        const bool ok = 8 * i < w_left;
        cp_async16_prefetch(&st.w[m * kChannels + (lane >> 2) + 8 * i][(lane & 3) * 16],
                            ok ? w[m] + w_off + int64_t(8 * i) * (k / 2) + s * 64 : w[m], ok, p.gemv_l2_prefetch);
      }
    }
#pragma unroll
    for (int i = 0; i < kRows / 4; ++i) {
      const bool ok = (lane >> 3) + 4 * i < rows;
      cp_async16(&st.a[(lane >> 3) + 4 * i][(lane & 7) * 16], ok ? a_src + int64_t(4 * i) * k + s * kStepK : p.x8, ok);
    }
#pragma unroll
    for (int m = 0; m < kMats; ++m) {
      if ((reinterpret_cast<uintptr_t>(wsc[m]) & 3) == 0) {
        cp_async4(&st.ws[m * kChannels + lane], ws_ok ? wsc[m] + ws_off + s * 4 : wsc[m], ws_ok);
      } else {  // scale rows not word aligned: plain loads (read after a later __syncwarp)
        uint32_t v = 0;
        if (ws_ok) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(wsc[m] + ws_off + s * 4 + j)) << (8 * j);
        }
        st.ws[m * kChannels + lane] = v;
      }
    }
    if (lane < kRows) cp_async4(&st.xs[lane], xs_ok ? xs_src + s : p.x_scale, xs_ok);
  };

  float acc[kTiles][kHalves][4];
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int h = 0; h < kHalves; ++h)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[t][h][j] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nsteps) load(s_begin + s, s);
    cp_async_commit();
  }
  for (int i = 0; i < nsteps; ++i) {
    cp_async_wait<kStages - 2>();  // step i has landed (this lane's copies) ...
    __syncwarp();                  // ... every lane's, and step i - 1's stage is free again
    if (i + kStages - 1 < nsteps) load(s_begin + i + kStages - 1, (i + kStages - 1) % kStages);
    cp_async_commit();
    const Stage& st = stages[i % kStages];

    // Activation fragments of the four 32-blocks (n8 column gid = row gid + 8 h of the pass): inputs
    // 8 tig + {0, 2 | 1, 3} for the first k16 MMA, 8 tig + {4, 6 | 5, 7} for the second.
    uint32_t bf[kHalves][4][2][2];
    float xr[kHalves][2];  // scales of rows 2 tig, 2 tig + 1 (+ 8 h): accumulators 0, 2 | 1, 3
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint2 a = *reinterpret_cast<const uint2*>(&st.a[8 * h + gid][j * 32 + tig * 8]);
        e4m3x4_to_f16x2(__byte_perm(a.x, 0, 0x3120), bf[h][j][0][0], bf[h][j][0][1]);
        e4m3x4_to_f16x2(__byte_perm(a.y, 0, 0x3120), bf[h][j][1][0], bf[h][j][1][1]);
      }
      xr[h][0] = st.xs[8 * h + 2 * tig], xr[h][1] = st.xs[8 * h + 2 * tig + 1];
    }
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {  // tiles of matrix 0, then of matrix 1
      // Words of channels gid (lo) and gid + 8 (hi) of the tile, blocks 0..3: lanes 0-7 address
      // channels 0-7, lanes 8-15 channels 8-15, lanes 16-31 the same for the next block.
      uint32_t wl[4], wh[4];
      {
        const int ch = 16 * t + (lane & 7) + ((lane >> 3) & 1) * 8;
        uint32_t r[4];
        ldmatrix_x4(r, &st.w[ch][(lane >> 4) * 16]);
        wl[0] = r[0], wh[0] = r[1], wl[1] = r[2], wh[1] = r[3];
        ldmatrix_x4(r, &st.w[ch][(2 + (lane >> 4)) * 16]);
        wl[2] = r[0], wh[2] = r[1], wl[3] = r[2], wh[3] = r[3];
      }
      // Scale bytes plus 6: byte j << 23 is the float 2^(S - 121) = 2^(S - 127) * 2^6, taking back the
      // 2^-6 of the re-encoded weights (valid for S <= 248, as in the tile kernel).
      const uint32_t swl = __vadd4(st.ws[16 * t + gid], 0x06060606u);
      const uint32_t swh = __vadd4(st.ws[16 * t + gid + 8], 0x06060606u);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t a0[4], a1[4];  // A rows gid (regs 0, 2) and gid + 8 (regs 1, 3)
        e4m3x4_to_f16x2(e2m1_lo_to_e4m3(wl[j]), a0[0], a1[0]);  // (c0, c2) | (c4, c6)
        e4m3x4_to_f16x2(e2m1_hi_to_e4m3(wl[j]), a0[2], a1[2]);  // (c1, c3) | (c5, c7)
        e4m3x4_to_f16x2(e2m1_lo_to_e4m3(wh[j]), a0[1], a1[1]);
        e4m3x4_to_f16x2(e2m1_hi_to_e4m3(wh[j]), a0[3], a1[3]);
        const float sl = __uint_as_float(((swl >> (8 * j)) & 0xffu) << 23);
        const float sh = __uint_as_float(((swh >> (8 * j)) & 0xffu) << 23);
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {  // the decoded fragments serve every n8 of the pass
          float d[4];  // channels gid | gid + 8 x rows 2 tig, 2 tig + 1 (+ 8 h): one 32-block
          mma_f16_k32(d, a0, bf[h][j][0], a1, bf[h][j][1]);
          acc[t][h][0] = fmaf(d[0], xr[h][0] * sl, acc[t][h][0]);
          acc[t][h][1] = fmaf(d[1], xr[h][1] * sl, acc[t][h][1]);
          acc[t][h][2] = fmaf(d[2], xr[h][0] * sh, acc[t][h][2]);
          acc[t][h][3] = fmaf(d[3], xr[h][1] * sh, acc[t][h][3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy outstanding (the last commits are empty)
  __syncthreads();     // every warp is done with its stages: they become the reduction buffer

  // red[k range][row][matrix, channel of the block]; then each output is the ranges' sums added in
  // k order.
  float* red = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
    const int col = (t / kTilesM) * G::kBlockCh + kc * kChannels + 16 * (t % kTilesM) + gid;
#pragma unroll
    for (int h = 0; h < kHalves; ++h)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        red[(kr * kRows + 8 * h + 2 * tig + (j & 1)) * kRedLd + col + 8 * (j >> 1)] = acc[t][h][j];
  }
  __syncthreads();
  for (int i = tid; i < kRows * kMats * G::kBlockCh; i += kThreads) {
    const int r = i / (kMats * G::kBlockCh), c = i % (kMats * G::kBlockCh), m = c / G::kBlockCh;
    const int64_t n = n_block + c % G::kBlockCh;
    if (r >= rows || n >= p.n) continue;
    float v = red[r * kRedLd + c];
#pragma unroll
    for (int v_k = 1; v_k < kKSplit; ++v_k) v += red[(v_k * kRows + r) * kRedLd + c];
    const int64_t o = (work.row_begin + r) * p.n + n;
    float* out_f32 = m == 0 ? p.out_f32 : second.out_f32;
    if (out_f32) {
      out_f32[o] = v;
    } else {
      (m == 0 ? p.out : second.out)[o] = f32_to_bf16(v);
    }
  }
}

template <int kMats, int kRows, int kKSplit>
void launch_gemv(const Fp4GroupedGemmParams& p, const GemvSecond& second) {
  using G = Gemv<kMats, kRows, kKSplit>;
  // Once per device and shape: above 48 KB of dynamic shared memory, and the whole carveout as
  // shared memory so kMinBlocks blocks fit.
  static std::atomic<uint64_t> attr_set{0};
  constexpr size_t smem = G::kSmemBytes;
  set_smem_once(fp4_grouped_gemv_kernel<kMats, kRows, kKSplit>, smem, true, &attr_set);
  const int64_t n_blocks = ceil_div(p.n, int64_t(G::kBlockCh));
  const int64_t passes = grouped_tile_bound(p.max_rows, p.num_groups, kRows);
  CHECK_LE(passes, int64_t(INT_MAX)) << "fp4 grouped gemv: max_rows=" << p.max_rows;
  const unsigned grid = grid_x(passes * n_blocks, "fp4_grouped_gemv");
  launch(fp4_grouped_gemv_kernel<kMats, kRows, kKSplit>, grid, kThreads, smem, p.stream)(p, second, n_blocks);
  launch_check("fp4_grouped_gemv", p.stream);
}

// The launch for a shape: rows a pass and k split (Fp4GemvShape; rows 0 picks by the mean rows).
template <int kMats>
void launch_gemv_shape(const Fp4GroupedGemmParams& p, const GemvSecond& second, Fp4GemvShape shape) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemv: FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemv: no output";
  CHECK_EQ(p.k % kStepK, 0) << "fp4 grouped gemv: k=" << p.k << " must be a multiple of " << kStepK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemv: max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  if (shape.rows == 0) shape = fp4_gemv_shape(p.max_rows, p.num_groups, p.k, p.gemv_rows, p.gemv_k_split);
  if (shape.rows == 8 && shape.k_split == 4) return launch_gemv<kMats, 8, 4>(p, second);
  if (shape.rows == 16 && shape.k_split == 4) return launch_gemv<kMats, 16, 4>(p, second);
  if (shape.rows == 16 && shape.k_split == 2) return launch_gemv<kMats, 16, 2>(p, second);
  if (shape.rows == 8 && shape.k_split == 2) return launch_gemv<kMats, 8, 2>(p, second);
  if (shape.rows == 16 && shape.k_split == 1) return launch_gemv<kMats, 16, 1>(p, second);
  if (shape.rows == 8 && shape.k_split == 1) return launch_gemv<kMats, 8, 1>(p, second);
  LOG(FATAL) << "fp4 grouped gemv: no kernel for " << shape.rows << " rows a pass and k split " << shape.k_split;
}

}  // namespace

// --- dispatch and launch -------------------------------------------------------------------------
bool fp4_tc_use_gemv(int64_t max_rows, int64_t num_groups, int64_t n, int64_t k, int gemv_rows) {
  // The rounded-up mean of fp4_tc_rows_per_tile. Up to 8 rows a group is one row pass of the GEMV,
  // which costs the same for 1 row as for 8 (the MMA's n8 is filled for free) and reads each weight
  // byte once; the 16-row tile kernel also reads them once but ran far from the bandwidth at
  // these sizes (moe_experts about 140 us per layer at batch 1 on an H100, against about 24 us of
  // weight bytes). With routing close to uniform the rows per expert are about Poisson(mean): at a
  // mean of 8 some 40% of the experts need a second pass (its weights mostly from L2: the passes of
  // an expert run side by side), at 6 (the 256-sequence decode batch) 15%, at 4 2%. Measured on an
  // H100 (2026-12-05, docs/PERFORMANCE.md): at batch 1 and 64 (means 1 and 2) the GEMV took
  // moe_experts from 0.281 to 0.198 ms and the step from 5.23 to 4.88 ms; at batch 256 (mean 6)
  // the step was 11.65 ms with it against 11.42 ms with the 16-row tile, and one expert of 128
  // rows took 52 us against the tile's 49. So the GEMV up to a mean of 4, where second passes
  // are still rare.
  // The gate/up shape (k >= 2n: 2048 channels of 4096 inputs) keeps the GEMV up to a mean of 6:
  // `bench_cuda fp4` on an H100 (2026-12-06, L2-cold, 256 experts at a mean of 6 rows) gave the
  // GEMV 554 us against the tile kernel's 644 for it, and 627 against 553 for the down shape.
  // Passes of 16 rows (gemv_rows 0) take every shape up to a mean of kFp4GemvMaxMeanRows16: one
  // pass for nearly every expert (at a mean of 8, under 1% have more than 16 rows), each weight
  // fragment decoded once for two n8 MMAs.
  const int64_t mean = fp4_mean_rows(max_rows, num_groups);
  if (gemv_rows == 0 && mean <= kFp4GemvMaxMeanRows16) return true;
  return mean <= kFp4GemvMaxMeanRows || (n > 0 && k >= 2 * n && mean <= kFp4GemvMaxMeanRowsWide);
}

Fp4GemvShape fp4_gemv_shape(int64_t max_rows, int64_t num_groups, int64_t k, int gemv_rows, int gemv_k_split) {
  // Rows a pass (gemv_rows 0): up to a mean of 4 rows a group, 8; above, 16 (each weight fragment
  // decoded once for two n8 MMAs, no second passes). Measured on an H100 (`bench_cuda - fp4`,
  // L2-cold, 2026-12-07, docs/PERFORMANCE.md) the 16-row passes were slower at every decode size
  // (gate/up pair at 256 tokens 1,173 against 1,090 us; down 834 against 647), so the backend asks
  // for 8 (CudaBackendOptions::fp4_gemv_rows).
  // The k split: the largest of 4, 2, 1 that gives each warp kFp4GemvMinSteps steps. The same
  // measurement: the down shape (k 2048) at k split 2 (8 steps a warp) took 385 / 458 / 562 us at
  // 64 / 128 / 256 tokens against 438 / 514 / 647 at 4 (4 steps), 16.1 against 17.6 us at 1
  // token; the gate/up shape (k 4096) was fastest at 4 (8 steps) at every size.
  const int64_t mean = fp4_mean_rows(max_rows, num_groups);
  int k_split = gemv_k_split;
  if (k_split <= 0) {
    k_split = 4;
    while (k_split > 1 && k / (128 * k_split) < kFp4GemvMinSteps) k_split /= 2;
  }
  return gemv_rows == 8 || mean <= kFp4GemvMaxMeanRows ? Fp4GemvShape{8, k_split} : Fp4GemvShape{16, k_split};
}

void fp4_grouped_gemv(const Fp4GroupedGemmParams& p, Fp4GemvShape shape) {
  launch_gemv_shape<1>(p, GemvSecond{}, shape);
}

void fp4_grouped_gemv_pair(const Fp4GroupedGemmParams& p, const Fp4GroupedGemmParams& q, Fp4GemvShape shape) {
  CHECK(q.x8 == p.x8 && q.x_scale == p.x_scale && q.row_offsets == p.row_offsets && q.num_groups == p.num_groups &&
        q.n == p.n && q.k == p.k && q.max_rows == p.max_rows && q.stream == p.stream)
      << "fp4 grouped gemv pair: the two projections must share rows, activations, n, k and stream";
  CHECK(q.w && q.w_scale && (q.out || q.out_f32)) << "fp4 grouped gemv pair: second projection incomplete";
  launch_gemv_shape<2>(p, GemvSecond{q.w, q.w_scale, q.out, q.out_f32}, shape);
}

}  // namespace v4rt::kernels::cuda
