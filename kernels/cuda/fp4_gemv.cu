// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMV on tensor cores for decode (see fp4_gemm.h, fp4_grouped_gemv): few rows
// per expert, so the time is the weight bytes crossing HBM once and the kernel is written to keep
// enough of them in flight. Same operands and promotion as the tile kernel (fp4_gemm_mma.cu), roles
// swapped: the weights are the m16 side of mma.sync m16n8k16 (16 output channels) and at most 8 rows
// of one expert are its n8 side, so 1 to 8 rows cost the same and no row tile of 16 sits mostly empty.
//
// Work: a unit is 8 rows of one expert (one "row pass"; an expert with more rows has several) times
// 32 output channels; the 4 warps of a block split k into 4 contiguous ranges of 128-steps and each
// computes both m16 channel tiles over its range (the activation fragments, converted once, serve
// both). Each warp runs its own cp.async pipeline (kStages steps of 128 in flight, __syncwarp only):
// per step 32 channels x 64 bytes of packed weights, 8 rows x 128 e4m3 activations, the four ue8m0
// bytes of each channel and the activation scale of each row. At the end of a unit the warps' sums
// meet in shared memory (double-buffered, one barrier a unit), added in warp (= k) order, and are
// stored as bf16 or fp32.
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
// exact), and the 4 ranges are added in k order.
//
// Grid: persistent. As many blocks as fit on the GPU at once (or fewer when there are fewer units)
// each take a contiguous range of the units (pass-major, channels fastest), and each warp's pipeline
// runs through the steps of its range without draining between units: a unit is a few steps a warp
// (8 at 4096 inputs), so a block per unit spent a third of its short life on the row-pass lookup
// and the pipeline's fill, with fewer bytes in flight. The units are counted on the device: every
// block first builds the groups' first row pass in shared memory (a block-wide prefix sum, one
// round of loads per 512 groups), so there is one launch, no scratch, and no block idles on the
// surplus the host's bound counts; a unit's expert is then a binary search in that table.
#include <atomic>
#include <climits>
#include <map>
#include <mutex>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/mma_sync.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kRows = 8;                      // rows per pass: the n8 of the MMA
constexpr int kWarps = 4;                     // warps per block, each a quarter of k
constexpr int kThreads = kWarps * 32;
constexpr int kTilesM = 2;                    // m16 channel tiles per warp
constexpr int kChannels = 16 * kTilesM;       // output channels per block
constexpr int kStepK = 128;                   // k per pipeline step = one activation scale block
constexpr int kStages = 4;                    // steps per warp in shared memory (kStages - 1 in flight)
constexpr int kLdW = kStepK / 2 + 16;         // weight row stride, bytes: ldmatrix rows in distinct banks
constexpr int kLdA = kStepK + 32;             // activation row stride, bytes: 8-byte reads conflict-free
constexpr int kRedLd = kChannels + 4;         // reduction row stride, floats: the stores conflict-free
constexpr int kScanPerThread = 4;             // groups per thread per prefix-sum pass
constexpr int kMinBlocks = 3;                 // blocks per SM (shared memory: 3 x 74 KB)
constexpr int kMaxGroups = 2048;              // groups the shared-memory pass table holds

// One pipeline step of one warp in shared memory.
struct GemvStage {
  uint8_t w[kChannels][kLdW];  // packed e2m1 [channel][64 bytes of this step]
  uint8_t a[kRows][kLdA];      // e4m3 [row][128]
  uint32_t ws[kChannels];      // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[kRows];             // activation scale of each row
};
constexpr size_t kStageBytes = size_t(kWarps) * kStages * sizeof(GemvStage);
constexpr size_t kRedBytes = size_t(2) * kWarps * kRows * kRedLd * 4;  // two units' partial sums
static_assert(sizeof(GemvStage) % 16 == 0, "stages keep 16-byte alignment");
static_assert(kStageBytes == 64000 && kRedBytes % 16 == 0, "3 blocks per SM fit in 228 KB");
// Dynamic shared memory of a launch over num_groups groups: stages, partial sums, pass table.
constexpr size_t smem_bytes(int64_t num_groups) {
  return kStageBytes + kRedBytes + (size_t(num_groups + 1) * 4 + 15) / 16 * 16;
}

// What a unit serves: rows [row_begin, row_begin + rows) of the group with weights w / ws.
struct GemvWork {
  const uint8_t* w;
  const uint8_t* ws;
  int64_t row_begin;
  int rows;
};

// --- row pass table ------------------------------------------------------------------------------
// first[g] = the row passes of groups 0 .. g-1 (a group with weights and r rows has ceil(r / kRows),
// one without weights none), for g in [0, num_groups]: a block-wide prefix sum,
// kThreads * kScanPerThread groups a round. All threads call it; it ends with a barrier.
__device__ void gemv_pass_table(const Fp4GroupedGemmParams& p, int32_t* first) {
  __shared__ int32_t warp_sum_s[kWarps];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int32_t carry = 0;  // row passes of the groups before this round (the same in every thread)
  for (int base = 0; base < p.num_groups; base += kThreads * kScanPerThread) {
    const int g0 = base + tid * kScanPerThread;
    int32_t passes[kScanPerThread];
    int32_t mine = 0;
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i) {  // independent loads: one round trip
      const bool ok = g0 + i < p.num_groups;
      const int32_t rows = ok ? p.row_offsets[g0 + i + 1] - p.row_offsets[g0 + i] : 0;
      passes[i] = ok && p.w[g0 + i] != nullptr && rows > 0 ? (rows + kRows - 1) / kRows : 0;
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
      if (g0 + i < p.num_groups) first[g0 + i] = start;
      start += passes[i];
    }
    carry += round;
    __syncthreads();  // warp_sum_s may be rewritten
  }
  if (tid == 0) first[p.num_groups] = carry;
  __syncthreads();
}

// The rows and weights of row pass `pass` (< first[num_groups]): its group is the last g with
// first[g] <= pass (groups without passes share their successor's first pass).
__device__ __forceinline__ GemvWork gemv_pass(const Fp4GroupedGemmParams& p, const int32_t* first, int pass) {
  int lo = 0, hi = p.num_groups - 1;  // first[lo] <= pass; the answer is in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (first[mid] <= pass) lo = mid; else hi = mid - 1;
  }
  GemvWork work;
  work.w = p.w[lo];
  work.ws = p.w_scale[lo];
  work.row_begin = int64_t(p.row_offsets[lo]) + int64_t(pass - first[lo]) * kRows;
  work.rows = min(kRows, int(p.row_offsets[lo + 1] - work.row_begin));
  return work;
}

// --- the kernel ----------------------------------------------------------------------------------
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    fp4_grouped_gemv_kernel(Fp4GroupedGemmParams p, int64_t n_blocks) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  GemvStage* const all_stages = reinterpret_cast<GemvStage*>(smem_raw);
  float* const red_all = reinterpret_cast<float*>(smem_raw + kStageBytes);
  int32_t* const first = reinterpret_cast<int32_t*>(smem_raw + kStageBytes + kRedBytes);
  gemv_pass_table(p, first);
  // This block's units [u_begin, u_end): unit u is row pass u / n_blocks, channels 32 (u % n_blocks).
  const int64_t units = int64_t(first[p.num_groups]) * n_blocks;
  const int64_t u_begin = units * blockIdx.x / gridDim.x, u_end = units * (blockIdx.x + 1) / gridDim.x;
  if (u_begin >= u_end) return;  // uniform

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t k = p.k, steps = k / kStepK;
  const int64_t s_begin = steps * warp / kWarps, s_end = steps * (warp + 1) / kWarps;
  const int nsteps = int(s_end - s_begin);  // the same for every unit; 0 for some warps when k is small
  GemvStage* stages = all_stages + warp * kStages;

  // The load side runs kStages - 1 steps ahead of the compute side, through the same sequence of
  // (unit, step); its copies of step s of unit u into stage st: weight chunks (channel lane / 4 + 8 i,
  // bytes 16 (lane % 4)), activation chunks (row lane / 8 + 4 i, bytes 16 (lane % 8)), the scale word
  // of channel `lane`, the activation scale of row `lane` (< 8). Channels past n and rows past the
  // pass are zeros.
  int64_t lu = u_begin;  // unit and step of the next load
  int ls = 0;
  GemvWork lw = gemv_pass(p, first, int(lu / n_blocks));
  auto load_next = [&](int st_idx) {
    GemvStage& st = stages[st_idx];
    const int64_t n0 = (lu % n_blocks) * kChannels, s = s_begin + ls;
    const int64_t w_left = p.n - n0 - (lane >> 2);  // this lane's weight chunk i exists if 8 i < w_left
    const uint8_t* w_src = lw.w + (n0 + (lane >> 2)) * (k / 2) + (lane & 3) * 16 + s * 64;
#pragma unroll
    for (int i = 0; i < kChannels / 8; ++i) {
      const bool ok = 8 * i < w_left;
      cp_async16(&st.w[(lane >> 2) + 8 * i][(lane & 3) * 16], ok ? w_src + int64_t(8 * i) * (k / 2) : lw.w, ok);
    }
    const uint8_t* a_src = p.x8 + (lw.row_begin + (lane >> 3)) * k + (lane & 7) * 16 + s * kStepK;
#pragma unroll
    for (int i = 0; i < kRows / 4; ++i) {
      const bool ok = (lane >> 3) + 4 * i < lw.rows;
      cp_async16(&st.a[(lane >> 3) + 4 * i][(lane & 7) * 16], ok ? a_src + int64_t(4 * i) * k : p.x8, ok);
    }
    const bool ws_ok = n0 + lane < p.n;
    const uint8_t* ws_src = lw.ws + (n0 + lane) * (k / 32) + s * 4;
    if ((reinterpret_cast<uintptr_t>(lw.ws) & 3) == 0) {
      cp_async4(&st.ws[lane], ws_ok ? ws_src : lw.ws, ws_ok);
    } else {  // scale rows not word aligned: plain loads (read after a later __syncwarp)
      uint32_t v = 0;
      if (ws_ok) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(ws_src + j)) << (8 * j);
      }
      st.ws[lane] = v;
    }
    const bool xs_ok = lane < lw.rows;
    if (lane < kRows) cp_async4(&st.xs[lane], xs_ok ? p.x_scale + (lw.row_begin + lane) * steps + s : p.x_scale, xs_ok);
    if (++ls == nsteps) {  // on to the next unit; its pass is looked up only when it changes
      ls = 0;
      const int pass = int(lu / n_blocks);
      if (++lu < u_end && int(lu / n_blocks) != pass) lw = gemv_pass(p, first, int(lu / n_blocks));
    }
  };
  const int64_t total = (u_end - u_begin) * nsteps;  // this warp's steps
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < total) load_next(s);
    cp_async_commit();
  }

  float acc[kTilesM][4];
#pragma unroll
  for (int t = 0; t < kTilesM; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[t][j] = 0.f;

  int64_t i = 0;  // this warp's steps computed so far
  for (int64_t u = u_begin; u < u_end; ++u) {
    for (int su = 0; su < nsteps; ++su, ++i) {
      cp_async_wait<kStages - 2>();  // step i has landed (this lane's copies) ...
      __syncwarp();                  // ... every lane's, and step i - 1's stage is free again
      if (i + kStages - 1 < total) load_next(int((i + kStages - 1) % kStages));
      cp_async_commit();
      const GemvStage& st = stages[i % kStages];

      // Activation fragments of the four 32-blocks (n8 column gid = row gid of the pass): inputs
      // 8 tig + {0, 2 | 1, 3} for the first k16 MMA, 8 tig + {4, 6 | 5, 7} for the second.
      uint32_t bf[4][2][2];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint2 a = *reinterpret_cast<const uint2*>(&st.a[gid][j * 32 + tig * 8]);
        e4m3x4_to_f16x2(__byte_perm(a.x, 0, 0x3120), bf[j][0][0], bf[j][0][1]);
        e4m3x4_to_f16x2(__byte_perm(a.y, 0, 0x3120), bf[j][1][0], bf[j][1][1]);
      }
      const float xr0 = st.xs[2 * tig], xr1 = st.xs[2 * tig + 1];  // rows of accumulators 0, 2 | 1, 3
#pragma unroll
      for (int t = 0; t < kTilesM; ++t) {
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
        // Scale bytes plus 6: byte j << 23 is the float 2^(S - 121) = 2^(S - 127) * 2^6, taking back
        // the 2^-6 of the re-encoded weights (valid for S <= 248, as in the tile kernel).
        const uint32_t swl = __vadd4(st.ws[16 * t + gid], 0x06060606u);
        const uint32_t swh = __vadd4(st.ws[16 * t + gid + 8], 0x06060606u);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t a0[4], a1[4];  // A rows gid (regs 0, 2) and gid + 8 (regs 1, 3)
          e4m3x4_to_f16x2(e2m1_lo_to_e4m3(wl[j]), a0[0], a1[0]);  // (c0, c2) | (c4, c6)
          e4m3x4_to_f16x2(e2m1_hi_to_e4m3(wl[j]), a0[2], a1[2]);  // (c1, c3) | (c5, c7)
          e4m3x4_to_f16x2(e2m1_lo_to_e4m3(wh[j]), a0[1], a1[1]);
          e4m3x4_to_f16x2(e2m1_hi_to_e4m3(wh[j]), a0[3], a1[3]);
          float d[4];  // channels gid | gid + 8 x rows 2 tig, 2 tig + 1: one 32-block
          mma_f16_k32(d, a0, bf[j][0], a1, bf[j][1]);
          const float sl = __uint_as_float(((swl >> (8 * j)) & 0xffu) << 23);
          const float sh = __uint_as_float(((swh >> (8 * j)) & 0xffu) << 23);
          acc[t][0] = fmaf(d[0], xr0 * sl, acc[t][0]);
          acc[t][1] = fmaf(d[1], xr1 * sl, acc[t][1]);
          acc[t][2] = fmaf(d[2], xr0 * sh, acc[t][2]);
          acc[t][3] = fmaf(d[3], xr1 * sh, acc[t][3]);
        }
      }
    }
    // The unit's end: red[warp][row][channel] of this unit's buffer, one barrier, then each output
    // is the warps' sums added in k order. The other buffer takes the next unit's sums, so the
    // reads here are done before any warp writes this buffer again (after the next barrier).
    float* red = red_all + ((u - u_begin) & 1) * (kWarps * kRows * kRedLd);
#pragma unroll
    for (int t = 0; t < kTilesM; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        red[(warp * kRows + 2 * tig + (j & 1)) * kRedLd + 16 * t + gid + 8 * (j >> 1)] = acc[t][j];
        acc[t][j] = 0.f;
      }
    __syncthreads();
    const GemvWork work = gemv_pass(p, first, int(u / n_blocks));
    const int64_t n0 = (u % n_blocks) * kChannels;
    for (int o = tid; o < kRows * kChannels; o += kThreads) {
      const int r = o / kChannels, c = o % kChannels;
      const int64_t n = n0 + c;
      if (r >= work.rows || n >= p.n) continue;
      float v = red[r * kRedLd + c];
#pragma unroll
      for (int v_w = 1; v_w < kWarps; ++v_w) v += red[(v_w * kRows + r) * kRedLd + c];
      const int64_t off = (work.row_begin + r) * p.n + n;
      if (p.out_f32) {
        p.out_f32[off] = v;
      } else {
        p.out[off] = f32_to_bf16(v);
      }
    }
  }
  cp_async_wait<0>();  // no copy outstanding when the block exits (the last commits are empty)
}

// Blocks of the GEMV that fit on the device at once with `smem` bytes each (cached per device and
// size: the launch path asks every call).
int64_t gemv_resident_blocks(size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<int, size_t>, int64_t> cache;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({device, smem});
  if (it != cache.end()) return it->second;
  int per_sm = 0, sms = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fp4_grouped_gemv_kernel, kThreads, smem));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t blocks = std::max<int64_t>(1, int64_t(per_sm) * sms);
  cache.emplace(std::make_pair(device, smem), blocks);
  return blocks;
}

}  // namespace

// --- dispatch and launch -------------------------------------------------------------------------
bool fp4_tc_use_gemv(int64_t max_rows, int64_t num_groups, int64_t n, int64_t k) {
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
  const int64_t mean = num_groups > 0 ? (max_rows + num_groups - 1) / num_groups : max_rows;
  return mean <= kFp4GemvMaxMeanRows || (n > 0 && k >= 2 * n && mean <= kFp4GemvMaxMeanRowsWide);
}

void fp4_grouped_gemv(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemv: FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemv: no output";
  CHECK_EQ(p.k % kStepK, 0) << "fp4 grouped gemv: k=" << p.k << " must be a multiple of " << kStepK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemv: max_rows";
  CHECK_LE(p.num_groups, kMaxGroups) << "fp4 grouped gemv: more groups than its pass table holds";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  // Once per device: room for the largest pass table, and the whole carveout as shared memory so
  // kMinBlocks blocks fit.
  static std::atomic<uint64_t> attr_set{0};
  set_smem_once(fp4_grouped_gemv_kernel, smem_bytes(kMaxGroups), true, &attr_set);
  const size_t smem = smem_bytes(p.num_groups);
  const int64_t n_blocks = ceil_div(p.n, kChannels);
  const int64_t passes = grouped_tile_bound(p.max_rows, p.num_groups, kRows);
  CHECK_LE(passes, int64_t(INT_MAX)) << "fp4 grouped gemv: max_rows=" << p.max_rows;
  const int64_t blocks = std::min(passes * n_blocks, gemv_resident_blocks(smem));
  fp4_grouped_gemv_kernel<<<grid_x(blocks, "fp4_grouped_gemv"), kThreads, smem, p.stream>>>(p, n_blocks);
  launch_check("fp4_grouped_gemv", p.stream);
}

}  // namespace v4rt::kernels::cuda
