// SPDX-License-Identifier: MIT
// CUDA-core FP8 block-scaled GEMM (see fp8_gemm.h). A block owns 32 output channels (8 warps x 4)
// and walks the token rows in tiles of up to 8; each lane decodes 16 e4m3 weights per 16-byte
// load (one 128x128 scale per load) and multiplies them with the dequantized activation tile in
// shared memory (bf16: e4m3 times a power of two is exact). Memory-bound for few tokens; up to
// gemv_max_tokens(k) tokens take the decode GEMV (gemv.cu), with the same bits.
#include <atomic>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp8_dot.cuh"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/launch.cuh"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxTokTile = 8;
constexpr int kSmemBytes = 160 * 1024;

// Tokens [t0, t0 + cnt) of the e4m3 activations, dequantized to bf16 (exact) into act [cnt][k].
// Every thread of the block calls it; the caller synchronizes before reading.
__device__ __forceinline__ void stage_act_bf16(const Fp8GemmParams& p, int64_t act_ld, int64_t t0, int cnt,
                                               uint16_t* act) {
  const int64_t k = p.k, kq = k / 4;
  for (int64_t i = threadIdx.x; i < cnt * kq; i += blockDim.x) {
    const int64_t t = i / kq, kk = (i % kq) * 4;
    const uint32_t q = *reinterpret_cast<const uint32_t*>(p.x8 + (t0 + t) * k + kk);
    const float s = p.x_scale[(kk / 128) * act_ld + t0 + t];
    uint16_t* dst = act + t * k + kk;
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[j] = f32_to_bf16(e4m3_to_f32(uint8_t(q >> (8 * j))) * s);
  }
}

__global__ void __launch_bounds__(kWarps * 32) fp8_simt_kernel(Fp8GemmParams p, int64_t act_ld, int64_t w_ld,
                                                              int tok_tile) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ uint16_t act[];  // [tok_tile][k] bf16
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n_base = int64_t(blockIdx.x) * kRowsPerBlock + warp * kRowsPerWarp;
  const int64_t k = p.k, kc = k / 16;
  const int64_t out_ld = p.out_ld ? p.out_ld : p.n;
  for (int64_t t0 = 0; t0 < p.m; t0 += tok_tile) {
    const int cnt = int(min(int64_t(tok_tile), p.m - t0));
    __syncthreads();
    stage_act_bf16(p, act_ld, t0, cnt, act);
    __syncthreads();
    float acc[kRowsPerWarp][kMaxTokTile];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < kMaxTokTile; ++t) acc[r][t] = 0.f;
    for (int64_t c = lane; c < kc; c += 32) {
      uint4 wv[kRowsPerWarp];
      float sc[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int64_t n = n_base + r;
        if (n < p.n) {
          wv[r] = *reinterpret_cast<const uint4*>(p.w8 + n * k + c * 16);
          sc[r] = p.w_scale[(n / 128) * w_ld + (c * 16) / 128];
        } else {
          wv[r] = make_uint4(0, 0, 0, 0);
          sc[r] = 0.f;
        }
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        float wf[16];
        decode_e4m3x16(wv[r], wf);
#pragma unroll
        for (int t = 0; t < kMaxTokTile; ++t)
          if (t < cnt) acc[r][t] = fmaf(dot16_bf16(wf, act + t * k + c * 16), sc[r], acc[r][t]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < kMaxTokTile; ++t)
        if (t < cnt) {
          const float v = warp_sum(acc[r][t]);
          const int64_t n = n_base + r;
          if (lane == 0 && n < p.n) p.out[(t0 + t) * out_ld + n] = f32_to_bf16(v);
        }
  }
}

}  // namespace

void fp8_gemm_simt(const Fp8GemmParams& p) {
  CHECK_EQ(p.k % 128, 0);
  if (p.m == 0 || p.n == 0) return;
  const Fp8ScaleLayout& layout = fp8_scale_layout();
  if (p.m <= gemv_max_tokens(p.k)) {
    GemvParams g;
    g.input = GemvParams::Input::kCodes;
    g.x8 = p.x8;
    g.x_scale = p.x_scale;
    g.act_ld = layout.act_ld(p.m);
    g.w = p.w8;
    g.w_scale = p.w_scale;
    g.w_ld = layout.weight_ld(p.k);
    g.y = p.out;
    g.y_stride = p.out_ld ? p.out_ld : p.n;
    g.y_bf16 = true;
    g.round_product = true;
    g.m = p.m;
    g.n = p.n;
    g.k = g.k_act = p.k;
    g.stream = p.stream;
    gemv(g);
    return;
  }
  const int tok_tile = int(std::max<int64_t>(1, std::min<int64_t>(kMaxTokTile, kSmemBytes / (2 * p.k))));
  const size_t smem = size_t(tok_tile) * size_t(p.k) * 2;
  static std::atomic<uint64_t> attr_set;
  set_smem_once(fp8_simt_kernel, kSmemBytes, false, &attr_set);
  CHECK_LE(smem, size_t(kSmemBytes)) << "fp8_gemm_simt: k=" << p.k << " too large";
  launch(fp8_simt_kernel, unsigned(ceil_div(p.n, kRowsPerBlock)), kWarps * 32, smem, p.stream)(
      p, layout.act_ld(p.m), layout.weight_ld(p.k), tok_tile);
  launch_check("fp8_gemm_simt", p.stream);
}

}  // namespace v4rt::kernels::cuda
