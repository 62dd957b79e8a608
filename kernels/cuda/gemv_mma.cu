// SPDX-License-Identifier: MIT
// The decode GEMV of FP8 weights on FP8 tensor cores (gemv.h, GemvParams::tensor_cores): the same
// operands and output as gemv.cu's FP8 path, with the e4m3 products summed by mma.sync m16n8k32
// (e4m3 x e4m3 -> fp32) instead of being decoded and multiplied on the CUDA cores, which at one
// token spend more issue slots per weight byte than the loads leave them.
//
// Operands. The weights are the MMA's A side: a warp owns 16 output channels (rows g*16 + gid and
// g*16 + gid + 8 of the fragment) and loads, per 64-k chunk, 16 contiguous bytes of each of its two
// rows (k = tig*16 .. tig*16 + 15), which it hands to the two k32 MMAs of the chunk as bytes
// [0,4) | [4,8) and [8,12) | [12,16) of the A registers. The token rows (at most 8, the n8 side)
// are staged once per block as e4m3 codes with their act_quant scales; thread (gid, tig) reads token
// gid's 16 codes at the same k, so both sides see the same permutation of k inside a chunk (a dot
// product does not depend on the order of its terms; the MMA's own summation order is unspecified
// anyway). Each 128-k block's two chunks go into a fresh fp32 product, promoted once:
// acc += product * (s_w * s_x), the block scales of the weights (one per 128 x 128) and of the token
// (one per 128), both powers of two.
//
// Work. A 16-channel group is split over `slices` warps along k (so that a projection of few
// channels still spreads over the SMs); a block's 8 warps take 8 / slices groups per round, the
// rounds strided over a grid of at most two blocks per SM. Each warp streams its k range in steps
// of two 128-k blocks (8 16-byte loads a thread, 4 KB a warp), the next step's loads in flight
// while it multiplies the current one. The slices' sums meet in shared memory and are added in
// slice (= k) order, then written as gemv.cu writes them.
//
// Numerics: the products are exact; the sums of a 128-k block keep the tensor core's accumulator
// bits (fewer than a sequential fp32 sum's: the tests hold the outputs to an fp64 reference, not to
// the CUDA-core kernel's bits).
#include <atomic>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemv_args.cuh"
#include "kernels/cuda/launch.cuh"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTok = 8;                 // the MMA's n8
constexpr int kBlocksPerStep = 2;          // 128-k blocks per pipeline step
constexpr int kLoads = 2 * 2 * kBlocksPerStep;  // 16-byte loads a thread per step: 2 rows x 2 chunks x blocks
constexpr int kSmemBytes = 160 * 1024;

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The token rows as e4m3 codes [m][k + 16] (rows 16 bytes apart in the banks: the B reads of the
// 8 token rows do not conflict) and their scales [m][k/128] in shared memory: copied
// (kCodes) or quantized here (kQuant: act_quant_fp8_kernel's amax, scale and codes), 16 inputs a
// thread, 8 threads a 128-block.
__device__ __forceinline__ void stage_codes(const GemvArgs& a, uint8_t* codes, float* xs) {
  const int kc = a.k / 16, kb = a.k / 128, total = a.m * kc;
  for (int base = 0; base < total; base += kThreads) {  // the same trip count for every lane
    const int q = base + int(threadIdx.x);
    const bool ok = q < total;
    const int t = ok ? q / kc : 0, c = ok ? q % kc : 0;
    uint4 out;
    if (a.input == GemvParams::Input::kCodes) {
      out = ok ? __ldg(reinterpret_cast<const uint4*>(a.x8 + int64_t(t) * a.k + c * 16)) : make_uint4(0, 0, 0, 0);
      if (ok && c % 8 == 0) xs[t * kb + c / 8] = a.x_scale[(c / 8) * a.act_ld + t];
    } else {
      float v[16];
#pragma unroll
      for (int j = 0; j < 16; j += 4) {
        const float4 f = !ok        ? make_float4(0.f, 0.f, 0.f, 0.f)
                         : a.x_vec ? a.x.ld4(t, c * 16 + j)
                                   : make_float4(a.x.ld(t, c * 16 + j), a.x.ld(t, c * 16 + j + 1),
                                                 a.x.ld(t, c * 16 + j + 2), a.x.ld(t, c * 16 + j + 3));
        v[j] = f.x, v[j + 1] = f.y, v[j + 2] = f.z, v[j + 3] = f.w;
      }
      float amax = 0.f;
#pragma unroll
      for (int j = 0; j < 16; ++j) amax = fmaxf(amax, fabsf(v[j]));
      // The 8 threads of a 128-block are 8 consecutive lanes (kThreads and kc are multiples of 8).
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
      const float s = act_quant_scale(amax, 448.f);
      const float inv = 1.0f / s;
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        w[j] = uint32_t(f32_to_e4m3(v[4 * j] * inv)) | uint32_t(f32_to_e4m3(v[4 * j + 1] * inv)) << 8 |
               uint32_t(f32_to_e4m3(v[4 * j + 2] * inv)) << 16 | uint32_t(f32_to_e4m3(v[4 * j + 3] * inv)) << 24;
      out = make_uint4(w[0], w[1], w[2], w[3]);
      if (ok && c % 8 == 0) xs[t * kb + c / 8] = s;
    }
    if (ok) *reinterpret_cast<uint4*>(codes + t * (a.k + 16) + c * 16) = out;
  }
}

__global__ void __launch_bounds__(kThreads, 2) gemv_mma_kernel(const __grid_constant__ GemvArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) unsigned char smem[];
  uint8_t* codes = smem;                                             // [m][k + 16]
  float* xs = reinterpret_cast<float*>(smem + a.m * (a.k + 16));  // [m][k/128]
  float* red = xs + ((a.m * (a.k / 128) + 3) / 4) * 4;                      // [kWarps][4][32]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int k = a.k, kb_total = k / 128;
  const int groups = (a.n + 15) / 16, per_round = kWarps / a.slices;
  const int rounds = (groups + per_round - 1) / per_round;
  const int slice = warp % a.slices, blocks_per_slice = kb_total / a.slices;
  const int steps = (blocks_per_slice + kBlocksPerStep - 1) / kBlocksPerStep;
  // Step s of this warp's task in round `round`: 128-k blocks [kb0, kb0 + kBlocksPerStep) of its
  // slice, rows g*16 + gid and + 8 (zeros past n).
  auto load = [&](int round, int s, uint4 (&buf)[kLoads]) {
    const int g = round * per_round + warp / a.slices;
    const int r0 = g * 16 + gid, r1 = r0 + 8;
#pragma unroll
    for (int b = 0; b < kBlocksPerStep; ++b) {
      const int kblock = slice * blocks_per_slice + s * kBlocksPerStep + b;
      const bool kin = g < groups && s * kBlocksPerStep + b < blocks_per_slice;
#pragma unroll
      for (int ch = 0; ch < 2; ++ch) {
        const int64_t off = int64_t(kblock) * 128 + ch * 64 + tig * 16;
        buf[4 * b + 2 * ch] = kin && r0 < a.n ? __ldg(reinterpret_cast<const uint4*>(a.w + int64_t(r0) * k + off))
                                              : make_uint4(0, 0, 0, 0);
        buf[4 * b + 2 * ch + 1] = kin && r1 < a.n ? __ldg(reinterpret_cast<const uint4*>(a.w + int64_t(r1) * k + off))
                                                  : make_uint4(0, 0, 0, 0);
      }
    }
  };
  uint4 cur[kLoads], nxt[kLoads];
  int round = int(blockIdx.x);
  if (round < rounds) load(round, 0, cur);
  stage_codes(a, codes, xs);
  __syncthreads();
  for (; round < rounds; round += int(gridDim.x)) {
    const int g = round * per_round + warp / a.slices;
    const float sw_row = g < groups ? 1.f : 0.f;
    const float* sw = a.w_scale + int64_t(min(g, groups - 1) * 16 / 128) * a.w_ld;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int s = 0; s < steps; ++s) {
      // The next loads: this task's next step, or the first step of this warp's next round.
      if (s + 1 < steps) load(round, s + 1, nxt);
      else if (round + int(gridDim.x) < rounds) load(round + int(gridDim.x), 0, nxt);
#pragma unroll
      for (int b = 0; b < kBlocksPerStep; ++b) {
        const int kblock = slice * blocks_per_slice + s * kBlocksPerStep + b;
        if (s * kBlocksPerStep + b >= blocks_per_slice) break;
        float prod[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
          const uint4 r0 = cur[4 * b + 2 * ch], r1 = cur[4 * b + 2 * ch + 1];
          uint4 bx = make_uint4(0, 0, 0, 0);
          if (gid < a.m)
            bx = *reinterpret_cast<const uint4*>(codes + gid * (k + 16) + kblock * 128 + ch * 64 + tig * 16);
          const uint32_t a_lo[4] = {r0.x, r1.x, r0.y, r1.y}, a_hi[4] = {r0.z, r1.z, r0.w, r1.w};
          mma_e4m3(prod, a_lo, bx.x, bx.y);
          mma_e4m3(prod, a_hi, bx.z, bx.w);
        }
        // prod[0..1]: channel gid, tokens 2tig and 2tig + 1; prod[2..3]: channel gid + 8.
        const float s_w = sw[kblock] * sw_row;
        const float sx0 = 2 * tig < a.m ? xs[(2 * tig) * kb_total + kblock] : 0.f;
        const float sx1 = 2 * tig + 1 < a.m ? xs[(2 * tig + 1) * kb_total + kblock] : 0.f;
        acc[0] = fmaf(prod[0], s_w * sx0, acc[0]);
        acc[1] = fmaf(prod[1], s_w * sx1, acc[1]);
        acc[2] = fmaf(prod[2], s_w * sx0, acc[2]);
        acc[3] = fmaf(prod[3], s_w * sx1, acc[3]);
      }
#pragma unroll
      for (int i = 0; i < kLoads; ++i) cur[i] = nxt[i];
    }
    // The slices' sums, added in slice order by one thread per (channel, token).
#pragma unroll
    for (int e = 0; e < 4; ++e) red[(warp * 4 + e) * 32 + lane] = acc[e];
    __syncthreads();
    for (int o = int(threadIdx.x); o < per_round * 128; o += kThreads) {
      const int gi = o / 128, row = (o % 128) / 8, tok = o % 8;
      const int gg = round * per_round + gi, n = gg * 16 + row;
      if (tok >= a.m || n >= a.n) continue;
      // Fragment position of (row, tok): lane (row % 8) * 4 + tok / 2, element (row / 8) * 2 + tok % 2.
      const int l = (row % 8) * 4 + tok / 2, e = (row / 8) * 2 + tok % 2;
      float v = 0.f;
      for (int sl = 0; sl < a.slices; ++sl) v += red[((gi * a.slices + sl) * 4 + e) * 32 + l];
      if (a.round_product) v = round_bf16(v);
      a.y.st(tok, n, a.accumulate ? a.y.ld(tok, n) + v : v, a.round);
    }
    __syncthreads();
  }
}

}  // namespace

bool gemv_mma_serves(const GemvParams& p) {
  return p.w_scale && p.out_group == 0 && p.k % 128 == 0 && p.k == p.k_act && p.m <= kMaxTok &&
         (p.input == GemvParams::Input::kQuant || p.input == GemvParams::Input::kCodes) &&
         size_t(p.m) * size_t(p.k + 16) + size_t(p.m) * size_t(p.k / 32) + size_t(kWarps) * 128 * 4 + 16 <=
             size_t(kSmemBytes);
}

void gemv_mma(const GemvParams& p) {
  CHECK(gemv_mma_serves(p)) << "gemv_mma: m=" << p.m << " n=" << p.n << " k=" << p.k;
  if (p.m == 0 || p.n == 0) return;
  GemvArgs a = gemv_args(p);
  // Slices of k per 16-channel group: enough warps for one wave of two blocks per SM, a power of
  // two up to 8 that divides the 128-k blocks.
  const int64_t groups = ceil_div(p.n, 16), want = int64_t(num_sms()) * 2 * kWarps;
  int slices = 1;
  while (slices < kWarps && groups * slices < want && (p.k / 128) % (2 * slices) == 0) slices *= 2;
  a.slices = slices;
  const int64_t rounds = ceil_div(groups, kWarps / slices);
  const unsigned blocks = unsigned(std::min<int64_t>(rounds, 2 * int64_t(num_sms())));
  const size_t codes_bytes = size_t(a.m) * size_t(a.k + 16);
  const size_t xs_bytes = size_t((a.m * (a.k / 128) + 3) / 4) * 4 * 4;
  const size_t smem = codes_bytes + xs_bytes + size_t(kWarps) * 4 * 32 * 4;
  static std::atomic<uint64_t> attr_set;
  set_smem_once(gemv_mma_kernel, kSmemBytes, false, &attr_set);
  launch(gemv_mma_kernel, blocks, kThreads, smem, p.stream)(a);
  launch_check("gemv_mma", p.stream);
}

}  // namespace v4rt::kernels::cuda
