// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMM on tensor cores (see fp4_gemm.h, fp4_grouped_gemm_tc): FP8 e4m3
// activations with 1x128 power-of-two scales times FP4 e2m1 weights (packed two per byte, ue8m0
// scale per 32 inputs, the checkpoint layout read in place). Each e2m1 value is exactly an e4m3
// value, so the weights are re-encoded to e4m3 bytes on chip (a byte permute of an 8-entry table
// and a sign move) and both operands enter mma.sync m16n8k32 e4m3 x e4m3 -> f32. A k32 step of the
// MMA is exactly one ue8m0 block: each k32 product starts from zero and is promoted into the fp32
// accumulator times s_x[row, k/128] * 2^(S[n, k/32] - 127), both powers of two, so the scaled sum
// is that of the CUDA-core kernel up to the order of the fp32 additions inside the 32-block.
//
// Tiles: a block computes 64 rows of one expert x 128 output channels, walking k in steps of 128
// (one activation scale block); 8 warps as 2 (rows) x 4 (channels), each 32 x 32 = 2 x 4 MMA
// tiles. The next k step's global loads are issued into registers before the MMAs of the current
// one. Registers: ~170 per thread, one block (8 warps) per SM; capping at 128 for two blocks per SM
// spills ~120 bytes (ptxas), so the cap is not set. Blocks map to (expert, 64-row tile) through a prefix sum of the tiles per expert computed
// on the device (the rows per expert are known only there): the tile index runs on gridDim.x, the
// channel tiles on gridDim.y, so no grid dimension depends on the number of tokens beyond x.
#include <algorithm>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/launch_geometry.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kBM = kFp4TcRowsPerTile;  // rows (tokens of one expert) per block
constexpr int kBN = 128;                // output channels per block
constexpr int kBK = 128;                // k per step = one activation scale block = 4 weight scale blocks
constexpr int kLd = kBK + 16;           // smem row stride in bytes: 36 words, conflict-free fragment loads
constexpr int kThreads = 256;
constexpr int kMapThreads = 1024;

struct TcSmem {
  uint8_t a[kBM][kLd];      // activations, e4m3 [row][k]
  uint8_t b[kBN][kLd];      // weights re-encoded to e4m3 [channel][k]
  float xs[kBM];            // activation scale of each row for this k step
  float ws[kBN][kBK / 32];  // 2^(S - 127) of each channel's four 32-blocks
};

// Eight e2m1 codes (element j in bits 4j..4j+3) -> eight e4m3 bytes (element j in byte j of the
// pair). Magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} are the e4m3 bytes below; the sign moves from bit 3
// of the nibble to bit 7 of the byte.
__device__ __forceinline__ uint32_t spread_nibbles(uint32_t v) {  // 4 nibbles -> low nibbles of 4 bytes
  v = (v | (v << 8)) & 0x00ff00ffu;
  return (v | (v << 4)) & 0x0f0f0f0fu;
}
__device__ __forceinline__ uint2 e2m1x8_to_e4m3x8(uint32_t w) {
  constexpr uint32_t kLutLo = 0x3c383000u;  // codes 0..3: 0, 0.5, 1, 1.5
  constexpr uint32_t kLutHi = 0x4c484440u;  // codes 4..7: 2, 3, 4, 6
  const uint32_t lo = spread_nibbles(w & 0xffffu), hi = spread_nibbles(w >> 16);
  // Selector nibble i = magnitude code of element i (bit 3 clear: plain byte select).
  const uint32_t mag_lo = __byte_perm(kLutLo, kLutHi, (w & 0x7777u));
  const uint32_t mag_hi = __byte_perm(kLutLo, kLutHi, ((w >> 16) & 0x7777u));
  return make_uint2(mag_lo | ((lo & 0x08080808u) << 4), mag_hi | ((hi & 0x08080808u) << 4));
}

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// tile_start[g] = 64-row tiles of the groups before g (groups without weights have none);
// tile_start[num_groups] = all tiles. One block, chunks of kMapThreads groups.
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
      tiles = rows > 0 ? (rows + kBM - 1) / kBM : 0;
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

// Global operands of one k step of one block, held in registers until stored to shared memory.
struct TcStage {
  uint4 a[2];      // activation chunks (16 codes each)
  uint4 b[2];      // weight chunks (32 packed codes each)
  float xs;        // threads < kBM: scale of row tid
  uint32_t ws;     // threads < kBN: ue8m0 of channel tid's four 32-blocks, byte j = block j
};

__global__ void __launch_bounds__(kThreads) fp4_grouped_gemm_tc_kernel(Fp4GroupedGemmParams p,
                                                                       const int32_t* tile_start) {
  __shared__ __align__(16) TcSmem sm;
  const int32_t num_tiles = tile_start[p.num_groups];
  const int32_t tile = int32_t(blockIdx.x);
  if (tile >= num_tiles) return;
  // The group of this tile: the last g with tile_start[g] <= tile (groups with no tiles share
  // their start with the next group that has some, which comes later).
  const int g = part_holding(p.num_groups, tile, [&](int k) { return int64_t(tile_start[k]); });
  const int64_t row_begin = int64_t(p.row_offsets[g]) + int64_t(tile - tile_start[g]) * kBM;
  const int rows = int(min(int64_t(kBM), int64_t(p.row_offsets[g + 1]) - row_begin));
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  const int64_t k = p.k, kb_count = k / kBK;
  const uint8_t* w = p.w[g];
  const uint8_t* wsc = p.w_scale[g];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;

  auto load = [&](int64_t kb, TcStage& st) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * kThreads;  // activation chunk: row c / 8, 16 bytes (c % 8)
      const int r = c >> 3;
      st.a[i] = r < rows ? __ldg(reinterpret_cast<const uint4*>(p.x8 + (row_begin + r) * k + kb * kBK + (c & 7) * 16))
                         : make_uint4(0, 0, 0, 0);
      const int64_t n = n0 + (c >> 2);  // weight chunk: channel c / 4, 32 codes (c % 4)
      st.b[i] = n < p.n ? __ldg(reinterpret_cast<const uint4*>(w + n * (k / 2) + kb * (kBK / 2) + (c & 3) * 16))
                        : make_uint4(0, 0, 0, 0);
    }
    if (tid < kBM) st.xs = tid < rows ? p.x_scale[(row_begin + tid) * kb_count + kb] : 0.f;
    if (tid < kBN) {
      const int64_t n = n0 + tid;
      st.ws = 0;
      if (n < p.n) {
#pragma unroll
        for (int j = 0; j < 4; ++j) st.ws |= uint32_t(__ldg(wsc + n * (k / 32) + kb * 4 + j)) << (8 * j);
      }
    }
  };
  auto store = [&](const TcStage& st) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * kThreads;
      *reinterpret_cast<uint4*>(&sm.a[c >> 3][(c & 7) * 16]) = st.a[i];
      const uint32_t words[4] = {st.b[i].x, st.b[i].y, st.b[i].z, st.b[i].w};
      uint32_t out[8];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint2 e = e2m1x8_to_e4m3x8(words[q]);
        out[2 * q] = e.x;
        out[2 * q + 1] = e.y;
      }
      uint4* dst = reinterpret_cast<uint4*>(&sm.b[c >> 2][(c & 3) * 32]);
      dst[0] = make_uint4(out[0], out[1], out[2], out[3]);
      dst[1] = make_uint4(out[4], out[5], out[6], out[7]);
    }
    if (tid < kBM) sm.xs[tid] = st.xs;
    if (tid < kBN) {
#pragma unroll
      for (int j = 0; j < 4; ++j) sm.ws[tid][j] = n0 + tid < p.n ? e8m0_to_f32(uint8_t(st.ws >> (8 * j))) : 0.f;
    }
  };

  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0.f;

  TcStage st;
  load(0, st);
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    __syncthreads();  // the previous step's fragments are read
    store(st);
    __syncthreads();
    if (kb + 1 < kb_count) load(kb + 1, st);  // in flight during the MMAs below
    float xr[2][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      xr[mi][0] = sm.xs[wm + mi * 16 + gid];
      xr[mi][1] = sm.xs[wm + mi * 16 + gid + 8];
    }
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      const int kc = kk * 32 + tig * 4;
      uint32_t af[2][4], bfr[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int r = wm + mi * 16 + gid;
        af[mi][0] = lds32(&sm.a[r][kc]);
        af[mi][1] = lds32(&sm.a[r + 8][kc]);
        af[mi][2] = lds32(&sm.a[r][kc + 16]);
        af[mi][3] = lds32(&sm.a[r + 8][kc + 16]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int c = wn + ni * 8 + gid;
        bfr[ni][0] = lds32(&sm.b[c][kc]);
        bfr[ni][1] = lds32(&sm.b[c][kc + 16]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int c = wn + ni * 8 + tig * 2;
        const float s0 = sm.ws[c][kk], s1 = sm.ws[c + 1][kk];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          float d[4] = {0.f, 0.f, 0.f, 0.f};  // one 32-block: promoted below with its scales
          mma_e4m3(d, af[mi], bfr[ni]);
          acc[mi][ni][0] = fmaf(d[0], xr[mi][0] * s0, acc[mi][ni][0]);
          acc[mi][ni][1] = fmaf(d[1], xr[mi][0] * s1, acc[mi][ni][1]);
          acc[mi][ni][2] = fmaf(d[2], xr[mi][1] * s0, acc[mi][ni][2]);
          acc[mi][ni][3] = fmaf(d[3], xr[mi][1] * s1, acc[mi][ni][3]);
        }
      }
    }
  }

  // Epilogue: rows gid / gid + 8 of each m16 tile, channels 2 * tig, 2 * tig + 1 of each n8 tile.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm + mi * 16 + gid + half * 8;
      if (r >= rows) continue;
      const int64_t row = row_begin + r;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
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

}  // namespace

void fp4_grouped_gemm_tc(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemm (tensor cores): FP8 activations required";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemm (tensor cores): no output";
  CHECK_EQ(p.k % kBK, 0) << "fp4 grouped gemm (tensor cores): k=" << p.k << " must be a multiple of " << kBK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemm (tensor cores): max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  int32_t* tile_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  fp4_tc_tile_map_kernel<<<1, kMapThreads, 0, p.stream>>>(p.row_offsets, p.w, p.num_groups, tile_start);
  launch_check("fp4_grouped_gemm_tc tile map", p.stream);
  const int64_t n_tiles = ceil_div(p.n, kBN);
  CHECK_LE(n_tiles, kMaxGridYZ) << "fp4 grouped gemm (tensor cores): n=" << p.n;
  const dim3 grid(grid_x(grouped_tile_bound(p.max_rows, p.num_groups, kBM), "fp4_grouped_gemm_tc"), unsigned(n_tiles));
  fp4_grouped_gemm_tc_kernel<<<grid, kThreads, 0, p.stream>>>(p, tile_start);
  launch_check("fp4_grouped_gemm_tc", p.stream);
  stream_free(tile_start, p.stream);
}

}  // namespace v4rt::kernels::cuda
