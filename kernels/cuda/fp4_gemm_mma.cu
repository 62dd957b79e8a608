// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMM on tensor cores (see fp4_gemm.h, fp4_grouped_gemm_tc): FP8 e4m3
// activations with 1x128 power-of-two scales times FP4 e2m1 weights (packed two per byte, ue8m0
// scale per 32 inputs, the checkpoint layout read in place). Each e2m1 value times 2^-6 is exactly
// an e4m3 value (sign to bit 7, the three magnitude bits to bits 4..2: exponent 1..3 -> 2^(e-7),
// exponent 0 -> the e4m3 subnormal m * 2^-7), so the weights become e4m3 bytes with two shifts and
// masks per four codes and both operands enter mma.sync m16n8k32 e4m3 x e4m3 -> f32. A k32 step of
// the MMA is exactly one ue8m0 block: each k32 product starts from zero and is promoted into the
// fp32 accumulator times s_x[row, k/128] * 2^(S[n, k/32] - 127) (here s_x * 2^(S - 121), taking
// back the 2^-6: exact, powers of two), so the scaled sum is that of the CUDA-core kernel up to the
// order of the fp32 additions inside the 32-block. Inside a 32-block the MMA's k index is a fixed
// permutation of the input index (MMA k 4t+i <- input 8t+2i, MMA k 16+4t+i <- input 8t+2i+1), the
// same for both operands: one 32-bit word of packed weights is then a thread's whole B fragment
// (low nibbles -> b0, high nibbles -> b1) and one 8-byte activation load, split by two byte
// permutes, its a0/a2 (a1/a3). The products and their 32-block sums are unchanged.
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
// Tiles: a block computes BM rows of one expert x 128 output channels with 4 warps side by side
// along the channels, each BM x 32 (BM/16 x 4 MMA tiles); three shapes, chosen by the host from the
// mean rows per group (max_rows / num_groups; the per-group counts are known only on the device):
//   BM  warp tile  stages  smem/block  registers (ptxas, cap)  blocks/SM  for
//   64   64 x 32     4      84,992 B       244 (255)              2      prefill (mean > 40 rows per group)
//   32   32 x 32     4      64,000 B       160 (168)              3      mean 17..40
//   16   16 x 32     4      53,504 B       123 (128)              4      decode (mean <= 16: a few rows of many experts)
// no spills. The 64-row shape takes the widest warp tile (each B fragment converted once for four
// MMAs, each A fragment used for four) at two blocks per SM: 8 warps, 6 steps (96 KB) of operands
// in flight. Smaller row tiles waste fewer MMAs on short groups, but the point of the 16-row shape
// is memory parallelism: 4 blocks x 3 steps x 8 KB of weights in flight per SM, each weight byte
// read once.
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
#include "kernels/cuda/launch_geometry.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kBN = 128;              // output channels per block
constexpr int kBK = 128;              // k per step = one activation scale block = 4 weight scale blocks
constexpr int kLdA = kBK + 32;        // activation row stride in bytes (40 words)
constexpr int kLdB = kBK / 2 + 16;    // packed weight row stride in bytes (20 words)
constexpr int kWarpsN = 4;
constexpr int kThreads = kWarpsN * 32;
constexpr int kWarpN = kBN / kWarpsN;  // 32 channels per warp
constexpr int kNI = kWarpN / 8;
constexpr int kMapThreads = 1024;
static_assert(kFp4TcRowsPerTile == 64, "the prefill tile below has 64 rows");

// One pipeline stage in shared memory; BM rows.
template <int BM>
struct TcStage {
  uint8_t a[BM][kLdA];      // activations, e4m3 [row][k]
  uint8_t b[kBN][kLdB];     // weights, packed e2m1 [channel][k/2]
  uint32_t ws[kBN];         // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[BM];             // activation scale of each row
};

template <int BM>
struct TcShape;
template <>
struct TcShape<64> {
  static constexpr int kStages = 4, kMinBlocks = 2;
};
template <>
struct TcShape<32> {
  static constexpr int kStages = 4, kMinBlocks = 3;
};
template <>
struct TcShape<16> {
  static constexpr int kStages = 4, kMinBlocks = 4;
};
template <int BM>
constexpr size_t tc_smem_bytes() {
  return size_t(TcShape<BM>::kStages) * sizeof(TcStage<BM>);
}
static_assert(tc_smem_bytes<64>() == 84992 && tc_smem_bytes<32>() == 64000 && tc_smem_bytes<16>() == 53504,
              "the header comment lists these sizes");

// Eight e2m1 codes (one 32-bit word, code j in bits 4j..4j+3) -> e4m3 bytes of value code * 2^-6:
// lo = the even codes (low nibbles), hi = the odd ones (high nibbles), byte i of each from byte i.
__device__ __forceinline__ uint32_t e2m1_lo_to_e4m3(uint32_t w) {
  return ((w << 4) & 0x80808080u) | ((w << 2) & 0x1c1c1c1cu);
}
__device__ __forceinline__ uint32_t e2m1_hi_to_e4m3(uint32_t w) {
  return (w & 0x80808080u) | ((w >> 2) & 0x1c1c1c1cu);
}

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// cp.async of 16 / 4 bytes; !full writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool full) {
  const uint32_t s = uint32_t(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(full ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool full) {
  const uint32_t s = uint32_t(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(src), "r"(full ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// tile_start[g] = BM-row tiles of the groups before g (groups without weights have none);
// tile_start[num_groups] = all tiles. One block, chunks of kMapThreads groups.
template <int BM>
__global__ void __launch_bounds__(kMapThreads) fp4_tc_tile_map_kernel(const int32_t* row_offsets,
                                                                      const uint8_t* const* w, int num_groups,
                                                                      int32_t* tile_start) {
  __shared__ int32_t scan[kMapThreads];
  __shared__ int32_t carry;
  const int tid = threadIdx.x;
  if (tid == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < num_groups; base += kMapThreads) {
    const int g = base + tid;
    int32_t tiles = 0;
    if (g < num_groups && w[g] != nullptr) {
      const int32_t rows = row_offsets[g + 1] - row_offsets[g];
      tiles = rows > 0 ? (rows + BM - 1) / BM : 0;
    }
    scan[tid] = tiles;
    __syncthreads();
    for (int o = 1; o < kMapThreads; o <<= 1) {  // inclusive scan
      const int32_t v = tid >= o ? scan[tid - o] : 0;
      __syncthreads();
      scan[tid] += v;
      __syncthreads();
    }
    if (g < num_groups) tile_start[g] = carry + scan[tid] - tiles;
    __syncthreads();
    if (tid == kMapThreads - 1) carry += scan[kMapThreads - 1];
    __syncthreads();
  }
  if (tid == 0) tile_start[num_groups] = carry;
}

template <int BM>
__global__ void __launch_bounds__(kThreads, TcShape<BM>::kMinBlocks)
    fp4_grouped_gemm_tc_kernel(Fp4GroupedGemmParams p, const int32_t* tile_start) {
  constexpr int kStages = TcShape<BM>::kStages;
  constexpr int kMI = BM / 16;
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
  const int wn = warp * kWarpN;

  // Copies of k step kb into stage s: 16-byte chunks of activations (BM x 8; this thread's are
  // rows tid / 8 + 16 i) and of weights (128 x 4; channels tid / 4 + 32 i), one word of scale bytes
  // per channel, one activation scale per row. Rows past the tile and channels past n are zero.
  const int a_row = tid >> 3, b_ch = tid >> 2;
  const uint8_t* a_src = p.x8 + (row_begin + a_row) * k + (tid & 7) * 16;
  const uint8_t* b_src = w + (n0 + b_ch) * (k / 2) + (tid & 3) * 16;
  const uint8_t* ws_src = wsc + (n0 + tid) * (k / 32);
  const float* xs_src = p.x_scale + (row_begin + tid) * kb_count;
  const bool ws_ok = n0 + tid < p.n, xs_ok = tid < rows;
  const int64_t b_left = p.n - n0 - b_ch;  // this thread's weight chunks i with 32 i < b_left exist
  auto load = [&](int64_t kb, int s) {
    TcStage<BM>& st = stages[s];
#pragma unroll
    for (int i = 0; i < BM * 8 / kThreads; ++i) {
      const bool ok = a_row + 16 * i < rows;
      cp_async16(&st.a[a_row + 16 * i][(tid & 7) * 16], ok ? a_src + int64_t(16 * i) * k + kb * kBK : p.x8, ok);
    }
#pragma unroll
    for (int i = 0; i < kBN * 4 / kThreads; ++i) {
      const bool ok = 32 * i < b_left;
      cp_async16(&st.b[b_ch + 32 * i][(tid & 3) * 16], ok ? b_src + int64_t(32 * i) * (k / 2) + kb * (kBK / 2) : w,
                 ok);
    }
    static_assert(kBN == kThreads, "one channel's scale word per thread");
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
    const TcStage<BM>& st = stages[kb % kStages];

    float xr[kMI][2];
#pragma unroll
    for (int mi = 0; mi < kMI; ++mi) {
      xr[mi][0] = st.xs[mi * 16 + gid];
      xr[mi][1] = st.xs[mi * 16 + gid + 8];
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
      uint32_t af[kMI][4];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi) {
        const int r = mi * 16 + gid;
        const uint2 lo = *reinterpret_cast<const uint2*>(&st.a[r][kk * 32 + tig * 8]);
        const uint2 hi = *reinterpret_cast<const uint2*>(&st.a[r + 8][kk * 32 + tig * 8]);
        af[mi][0] = __byte_perm(lo.x, lo.y, 0x6420);  // inputs 8t + 0, 2, 4, 6
        af[mi][1] = __byte_perm(hi.x, hi.y, 0x6420);
        af[mi][2] = __byte_perm(lo.x, lo.y, 0x7531);  // inputs 8t + 1, 3, 5, 7
        af[mi][3] = __byte_perm(hi.x, hi.y, 0x7531);
      }
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        const uint32_t packed = *reinterpret_cast<const uint32_t*>(&st.b[wn + ni * 8 + gid][kk * 16 + tig * 4]);
        const uint32_t bfr[2] = {e2m1_lo_to_e4m3(packed), e2m1_hi_to_e4m3(packed)};
        const float s0 = __uint_as_float(((sw[ni][0] >> (8 * kk)) & 0xffu) << 23);
        const float s1 = __uint_as_float(((sw[ni][1] >> (8 * kk)) & 0xffu) << 23);
#pragma unroll
        for (int mi = 0; mi < kMI; ++mi) {
          float d[4] = {0.f, 0.f, 0.f, 0.f};  // one 32-block: promoted below with its scales
          mma_e4m3(d, af[mi], bfr);
          acc[mi][ni][0] = fmaf(d[0], xr[mi][0] * s0, acc[mi][ni][0]);
          acc[mi][ni][1] = fmaf(d[1], xr[mi][0] * s1, acc[mi][ni][1]);
          acc[mi][ni][2] = fmaf(d[2], xr[mi][1] * s0, acc[mi][ni][2]);
          acc[mi][ni][3] = fmaf(d[3], xr[mi][1] * s1, acc[mi][ni][3]);
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
      const int r = mi * 16 + gid + half * 8;
      if (r >= rows) continue;
      const int64_t row = row_begin + r;
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        const int64_t n = n0 + wn + ni * 8 + tig * 2;
        const float v0 = acc[mi][ni][2 * half], v1 = acc[mi][ni][2 * half + 1];
        if (p.out_f32) {
          if (n < p.n) p.out_f32[row * p.n + n] = v0;
          if (n + 1 < p.n) p.out_f32[row * p.n + n + 1] = v1;
        } else if (n + 1 < p.n && p.n % 2 == 0) {
          const uint32_t packed = uint32_t(f32_to_bf16(v0)) | (uint32_t(f32_to_bf16(v1)) << 16);
          *reinterpret_cast<uint32_t*>(p.out + row * p.n + n) = packed;
        } else {
          if (n < p.n) p.out[row * p.n + n] = f32_to_bf16(v0);
          if (n + 1 < p.n) p.out[row * p.n + n + 1] = f32_to_bf16(v1);
        }
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
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit == 0 || !(attr_set.load() & bit)) {
    CUDA_CHECK(cudaFuncSetAttribute(fp4_grouped_gemm_tc_kernel<BM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(smem)));
    CUDA_CHECK(cudaFuncSetAttribute(fp4_grouped_gemm_tc_kernel<BM>,
                                    cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared)));
    attr_set.fetch_or(bit);
  }
  int32_t* tile_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  fp4_tc_tile_map_kernel<BM><<<1, kMapThreads, 0, p.stream>>>(p.row_offsets, p.w, p.num_groups, tile_start);
  launch_check("fp4_grouped_gemm_tc tile map", p.stream);
  const int64_t n_tiles = ceil_div(p.n, kBN);
  CHECK_LE(n_tiles, kMaxGridYZ) << "fp4 grouped gemm (tensor cores): n=" << p.n;
  const dim3 grid(grid_x(grouped_tile_bound(p.max_rows, p.num_groups, BM), "fp4_grouped_gemm_tc"), unsigned(n_tiles));
  fp4_grouped_gemm_tc_kernel<BM><<<grid, kThreads, smem, p.stream>>>(p, tile_start);
  launch_check("fp4_grouped_gemm_tc", p.stream);
  stream_free(tile_start, p.stream);
}

}  // namespace

int fp4_tc_rows_per_tile(int64_t max_rows, int64_t num_groups) {
  // Mean rows per group, rounded up: all groups count (which have weights is known only on the
  // device), so with skipped groups the mean reads low and a smaller tile is taken.
  const int64_t mean = num_groups > 0 ? (max_rows + num_groups - 1) / num_groups : max_rows;
  return mean <= 16 ? 16 : mean <= 40 ? 32 : kFp4TcRowsPerTile;
}

void fp4_grouped_gemm_tc(const Fp4GroupedGemmParams& p) {
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
    default:
      launch_tc<kFp4TcRowsPerTile>(p);
      break;
  }
}

}  // namespace v4rt::kernels::cuda
