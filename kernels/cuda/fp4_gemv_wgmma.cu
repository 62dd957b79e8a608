// SPDX-License-Identifier: MIT
// Grouped W4A8 expert GEMV on FP8 wgmma for decode (sm_90a; see fp4_gemm.h,
// fp4_grouped_gemv_wgmma): a few rows per expert, so the time should be the weight bytes crossing
// HBM once. The mma.sync kernels (fp4_gemv.cu, the 16-row tile of fp4_gemm_mma.cu) take both
// operands to f16 on chip, since mma.sync with e4m3 operands is not native on sm_90; here the
// e4m3 bytes go to the tensor cores as they are, with the roles swapped so that the weights fill
// the MMA's M = 64 side and the rows of one expert its N = 8 or 16 side.
//
// Work: a block (one warpgroup) owns 64 output channels x one row pass (N rows of one expert; an
// expert with more rows has several passes, each reading its weights again). Per k step of 128 (one
// activation scale block, four weight scale blocks), by cp.async: the packed weights 64 x 64 B
// (rows padded to 80 B), the activations N x 128 e4m3 in wgmma's no-swizzle K-major layout, each
// channel's four ue8m0 bytes and each row's activation scale; kStages steps in flight.
//
// A from registers: thread (warp w, lane l) takes, per 32-block, word l % 4 of the block's 16 bytes
// for channels 16 w + l / 4 and + 8, i.e. codes 8 t .. 8 t + 7 (t = l % 4), re-encoded to e4m3 bytes
// of code * 2^-6 (exact) in input order: codes 8t..8t+3 fill the fragment's k slots 4t..4t+3 and
// codes 8t+4..8t+7 its slots 16+4t..16+4t+3. The same permutation of k within each 32-block is
// applied to the activations as they are staged (4-byte copies: input word u of a block to slot
// word u / 2, odd u to 4 + u / 2), so each slot meets its own input and the dot product is
// unchanged.
//
// Numerics: each 32-block is one m64nNk32 wgmma from zero, promoted into the fp32 accumulator as
// the tile kernel does: acc += d * s_x[row, kb] * 2^(S[channel, block] - 121). The tensor cores sum
// the block's 32 FP8 products with fewer bits than fp32 (see fp4_gemm_wgmma.cu), so the result can
// differ from the mma.sync kernels' in the last bits of a block sum: bf16 outputs only, as the
// wgmma prefill kernel (the official numerics' expert outputs are bf16).
//
// Blocks map to (row pass, channel tile) through fp4_tile_map_kernel's prefix of passes per expert,
// the channel tile fastest, so the blocks of one pass run together and share its activations.
#include <atomic>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace fp4tc;

constexpr int kBN = 64;         // output channels per block: the wgmma's M
constexpr int kBK = 128;        // k per step
constexpr int kThreads = 128;   // one warpgroup
constexpr int kStages = 4;
constexpr int kLdW = kBK / 2 + 16;  // packed weight row stride in bytes: the fragment reads hit distinct banks

template <int N>
struct GvStage {
  uint8_t w[kBN][kLdW];  // packed e2m1 [channel][64 bytes of this step]
  uint8_t a[N * kBK];    // e4m3 [row][128], core-matrix layout, k permuted per 32-block
  uint32_t ws[kBN];      // ue8m0 of each channel's four 32-blocks, byte j = block j
  float xs[N];           // activation scale of each row
};

template <int N>
constexpr size_t gv_smem_bytes() {
  return ((sizeof(GvStage<N>) + 127) / 128 * 128) * kStages;
}

template <int N>
__global__ void __launch_bounds__(kThreads, 4)
    fp4_grouped_gemv_wgmma_kernel(const __grid_constant__ Fp4GroupedGemmParams p, const int32_t* pass_start) {
  constexpr size_t kStageBytes = (sizeof(GvStage<N>) + 127) / 128 * 128;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto stage = [&](int s) -> GvStage<N>& { return *reinterpret_cast<GvStage<N>*>(smem_raw + s * kStageBytes); };

  const int64_t n_tiles = gridDim.y;
  const int64_t lin = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
  const int32_t num_passes = pass_start[p.num_groups];
  if (lin / n_tiles >= num_passes) return;
  const int32_t pass = int32_t(lin / n_tiles);
  const int g = part_holding(p.num_groups, pass, [&](int k) { return int64_t(pass_start[k]); });
  const int64_t row_begin = int64_t(p.row_offsets[g]) + int64_t(pass - pass_start[g]) * N;
  const int rows = int(min(int64_t(N), int64_t(p.row_offsets[g + 1]) - row_begin));
  const int64_t n0 = (lin % n_tiles) * kBN;
  const int64_t k = p.k, kb_count = k / kBK;
  const uint8_t* w = p.w[g];
  const uint8_t* wsc = p.w_scale[g];
  const bool ws_aligned = (reinterpret_cast<uintptr_t>(wsc) & 3) == 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;

  // Copies of step kb into stage s. Weights: 16-byte chunk tid % 4 of channels tid / 4 and + 32;
  // activations: 4-byte words tid % 32 of rows tid / 32 + 4 i (permuted into their k slots);
  // scale words: threads < 64 (channel tid); activation scales: threads 64.. (row tid - 64).
  const int w_ch = tid >> 2, w_chunk = tid & 3;
  const int a_word = tid & 31, a_row0 = tid >> 5;
  const int a_blk = a_word >> 3, a_u = a_word & 7;
  const int a_dst_kb = 32 * a_blk + 4 * ((a_u & 1) ? 4 + (a_u >> 1) : (a_u >> 1));
  const int64_t w_left = p.n - n0 - w_ch;  // this thread's weight chunks i with 32 i < w_left exist
  auto load = [&](int64_t kb, int s) {
    GvStage<N>& st = stage(s);
#pragma unroll
    for (int i = 0; i < kBN / 32; ++i) {
      const bool ok = 32 * i < w_left;
      cp_async16(&st.w[w_ch + 32 * i][w_chunk * 16],
                 ok ? w + (n0 + w_ch + 32 * i) * (k / 2) + kb * (kBK / 2) + w_chunk * 16 : w, ok);
    }
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const int r = a_row0 + 4 * i;
      const bool ok = r < rows;
      cp_async4(st.a + core_offset(r, a_dst_kb, kBK), ok ? p.x8 + (row_begin + r) * k + kb * kBK + 4 * a_word : p.x8,
                ok);
    }
    if (tid < kBN) {
      const bool ok = n0 + tid < p.n;
      const uint8_t* src = wsc + (n0 + tid) * (k / 32) + kb * 4;
      if (ws_aligned) {
        cp_async4(&st.ws[tid], ok ? src : wsc, ok);
      } else {  // scale rows not word aligned: plain loads (seen by the compute after its barrier)
        uint32_t v = 0;
        if (ok) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v |= uint32_t(__ldg(src + j)) << (8 * j);
        }
        st.ws[tid] = v;
      }
    } else if (tid < kBN + N) {
      const int r = tid - kBN;
      cp_async4(&st.xs[r], r < rows ? p.x_scale + (row_begin + r) * kb_count + kb : p.x_scale, r < rows);
    }
  };

  // This thread's channels (within the block) and accumulator columns (rows of the pass).
  const int c0 = 16 * warp + gid, c1 = c0 + 8;
  float acc[N / 2], d[4][N / 2];  // d: each 32-block's product (written from zero by its wgmma)
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    acc[i] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) d[j][i] = 0.f;
  }

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < kb_count) load(s, s);
    cp_async_commit();
  }
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    cp_async_wait<kStages - 2>();  // step kb has landed (this thread's copies) ...
    fence_async_smem();            // ... visible to the wgmma's reads ...
    __syncthreads();               // ... everyone's, and step kb - 1's stage is free again
    if (kb + kStages - 1 < kb_count) load(kb + kStages - 1, int((kb + kStages - 1) % kStages));
    cp_async_commit();
    const GvStage<N>& st = stage(int(kb % kStages));

    uint32_t a[4][4];  // A fragments of the four 32-blocks
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t p0 = *reinterpret_cast<const uint32_t*>(&st.w[c0][16 * j + 4 * tig]);
      const uint32_t p1 = *reinterpret_cast<const uint32_t*>(&st.w[c1][16 * j + 4 * tig]);
      const uint32_t e0 = e2m1_lo_to_e4m3(p0), o0 = e2m1_hi_to_e4m3(p0);
      const uint32_t e1 = e2m1_lo_to_e4m3(p1), o1 = e2m1_hi_to_e4m3(p1);
      a[j][0] = __byte_perm(e0, o0, 0x5140);  // channel c0, codes 8t + 0..3
      a[j][1] = __byte_perm(e1, o1, 0x5140);  // channel c1
      a[j][2] = __byte_perm(e0, o0, 0x7362);  // channel c0, codes 8t + 4..7
      a[j][3] = __byte_perm(e1, o1, 0x7362);
    }
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) wgmma_m64nNk32_rs<N>(d[j], a[j], smem_desc(st.a + 256 * j, kBK), 0);
    wgmma_commit();
    wgmma_wait0();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      fence_acc(d[j]);
      fence_regs(a[j]);
    }
    // Promotion: scale bytes + 6 per byte, shifted to a float's exponent: 2^(S - 121) (the 2^-6
    // of the re-encode taken back; valid for S <= 248).
    const uint32_t sw0 = __vadd4(st.ws[c0], 0x06060606u), sw1 = __vadd4(st.ws[c1], 0x06060606u);
#pragma unroll
    for (int i = 0; i < N / 8; ++i) {
      const int r = 8 * i + 2 * tig;
      const float x0 = st.xs[r], x1 = st.xs[r + 1];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float s0 = __uint_as_float(((sw0 >> (8 * j)) & 0xffu) << 23);
        const float s1 = __uint_as_float(((sw1 >> (8 * j)) & 0xffu) << 23);
        acc[4 * i + 0] = fmaf(d[j][4 * i + 0], x0 * s0, acc[4 * i + 0]);
        acc[4 * i + 1] = fmaf(d[j][4 * i + 1], x1 * s0, acc[4 * i + 1]);
        acc[4 * i + 2] = fmaf(d[j][4 * i + 2], x0 * s1, acc[4 * i + 2]);
        acc[4 * i + 3] = fmaf(d[j][4 * i + 3], x1 * s1, acc[4 * i + 3]);
      }
    }
  }
  cp_async_wait<0>();  // no copy outstanding at exit (the last commits are empty)

  // Epilogue: channels c0 / c1 of rows 8 i + 2 t, + 1 of the pass, bf16.
#pragma unroll
  for (int i = 0; i < N / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = 8 * i + 2 * tig + (e & 1);
      const int64_t ch = n0 + ((e & 2) ? c1 : c0);
      if (r < rows && ch < p.n) p.out[(row_begin + r) * p.n + ch] = f32_to_bf16(acc[4 * i + e]);
    }
  }
}

template <int N>
void launch_gv(const Fp4GroupedGemmParams& p) {
  constexpr size_t smem = gv_smem_bytes<N>();
  static std::atomic<uint64_t> attr_set{0};
  set_smem_once(fp4_grouped_gemv_wgmma_kernel<N>, smem, true, &attr_set);
  int32_t* pass_start = static_cast<int32_t*>(stream_alloc(size_t(p.num_groups + 1) * 4, p.stream));
  fp4_tile_map_kernel<N><<<1, kMapThreads, 0, p.stream>>>(p.row_offsets, p.w, p.num_groups, pass_start);
  launch_check("fp4_grouped_gemv_wgmma pass map", p.stream);
  const int64_t n_tiles = ceil_div(p.n, kBN);
  CHECK_LE(n_tiles, kMaxGridYZ) << "fp4 grouped gemv (wgmma): n=" << p.n;
  const dim3 grid(grid_x(grouped_tile_bound(p.max_rows, p.num_groups, N), "fp4_grouped_gemv_wgmma"),
                  unsigned(n_tiles));
  fp4_grouped_gemv_wgmma_kernel<N><<<grid, kThreads, smem, p.stream>>>(p, pass_start);
  launch_check("fp4_grouped_gemv_wgmma", p.stream);
  stream_free(pass_start, p.stream);
}

}  // namespace

int fp4_gemv_wgmma_rows_per_pass(int64_t max_rows, int64_t num_groups) {
  const int64_t mean = num_groups > 0 ? (max_rows + num_groups - 1) / num_groups : max_rows;
  return mean <= 4 ? 8 : 16;
}

void fp4_grouped_gemv_wgmma(const Fp4GroupedGemmParams& p) {
  CHECK(p.x8 && p.x_scale) << "fp4 grouped gemv (wgmma): FP8 activations required";
  CHECK(p.out && !p.out_f32) << "fp4 grouped gemv (wgmma): bf16 output only";
  CHECK_EQ(p.k % kBK, 0) << "fp4 grouped gemv (wgmma): k=" << p.k << " must be a multiple of " << kBK;
  CHECK_GE(p.max_rows, 0) << "fp4 grouped gemv (wgmma): max_rows";
  if (p.num_groups == 0 || p.n == 0 || p.max_rows == 0) return;
  if (fp4_gemv_wgmma_rows_per_pass(p.max_rows, p.num_groups) == 8)
    launch_gv<8>(p);
  else
    launch_gv<16>(p);
}

}  // namespace v4rt::kernels::cuda
