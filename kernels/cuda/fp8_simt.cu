// SPDX-License-Identifier: MIT
// CUDA-core FP8 block-scaled GEMM (see fp8_gemm.h). A block owns 32 output channels (8 warps x 4)
// and walks the token rows in tiles of up to 8; each lane decodes 16 e4m3 weights per 16-byte
// load (one 128x128 scale per load) and multiplies them with the dequantized activation tile in
// shared memory (bf16: e4m3 times a power of two is exact). Memory-bound for few tokens; up to 8
// tokens take fp8_gemv_kernel (a warp per channel, more blocks in flight), with the same bits.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp8_gemm.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxTokTile = 8;
constexpr int kSmemBytes = 160 * 1024;

// Sixteen e4m3 weights of one 16-byte load as fp32 (exact).
__device__ __forceinline__ void decode_e4m3x16(const uint4& v, float (&wf)[16]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(words[j] & 0xffff), __NV_E4M3);
    const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(words[j] >> 16), __NV_E4M3);
    const float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
    wf[4 * j] = a.x;
    wf[4 * j + 1] = a.y;
    wf[4 * j + 2] = b.x;
    wf[4 * j + 3] = b.y;
  }
}

// The dot of 16 decoded weights with 16 bf16 activations (shared memory), in input order.
__device__ __forceinline__ float dot16_bf16(const float (&wf)[16], const uint16_t* act16) {
  const uint4* a4 = reinterpret_cast<const uint4*>(act16);
  float dot = 0.f;
#pragma unroll
  for (int v = 0; v < 2; ++v) {
    const uint4 a = a4[v];
    const uint32_t aw[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      dot = fmaf(wf[v * 8 + 2 * j], __uint_as_float(aw[j] << 16), dot);
      dot = fmaf(wf[v * 8 + 2 * j + 1], __uint_as_float(aw[j] & 0xffff0000u), dot);
    }
  }
  return dot;
}

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

// Decode-sized calls (m <= kGemvMaxTok tokens): a warp per output channel, four per block, so a
// projection of 512-1024 channels spreads over 128-256 blocks instead of 16-32, and each lane
// issues all of its 16-byte weight loads (up to kGemvAhead) before the first is used. The
// arithmetic is fp8_simt_kernel's: lane l takes 16-input chunks l, l + 32, ... in that order,
// each chunk's dot with the bf16 activations times its 128x128 block scale added into an fp32
// accumulator, then the warp sum; so the two kernels give the same bits.
constexpr int kGemvWarps = 4;
constexpr int kGemvMaxTok = 8;
constexpr int kGemvAhead = 8;

__global__ void __launch_bounds__(kGemvWarps * 32) fp8_gemv_kernel(Fp8GemmParams p, int64_t act_ld, int64_t w_ld) {
  extern __shared__ uint16_t act[];  // [m][k] bf16
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t k = p.k, kc = k / 16;
  const int m = int(p.m);
  const int64_t out_ld = p.out_ld ? p.out_ld : p.n;
  stage_act_bf16(p, act_ld, 0, m, act);
  __syncthreads();
  const int64_t n = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (n >= p.n) return;
  const uint8_t* wrow = p.w8 + n * k;
  const float* srow = p.w_scale + (n / 128) * w_ld;
  float acc[kGemvMaxTok];
#pragma unroll
  for (int t = 0; t < kGemvMaxTok; ++t) acc[t] = 0.f;
  for (int64_t c0 = lane; c0 < kc; c0 += 32 * kGemvAhead) {
    uint4 wv[kGemvAhead];
#pragma unroll
    for (int j = 0; j < kGemvAhead; ++j) {
      const int64_t c = c0 + 32 * j;
      wv[j] = c < kc ? __ldg(reinterpret_cast<const uint4*>(wrow + c * 16)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kGemvAhead; ++j) {
      const int64_t c = c0 + 32 * j;
      if (c >= kc) break;
      const float sc = srow[(c * 16) / 128];
      float wf[16];
      decode_e4m3x16(wv[j], wf);
#pragma unroll
      for (int t = 0; t < kGemvMaxTok; ++t)
        if (t < m) acc[t] = fmaf(dot16_bf16(wf, act + t * k + c * 16), sc, acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTok; ++t) {
    if (t < m) {
      const float v = warp_sum(acc[t]);
      if (lane == 0) p.out[t * out_ld + n] = f32_to_bf16(v);
    }
  }
}

}  // namespace

int64_t fp8_gemv_max_tokens(int64_t k) {
  return size_t(kGemvMaxTok) * size_t(k) * 2 <= size_t(kSmemBytes) ? kGemvMaxTok : 0;
}

void fp8_gemm_simt(const Fp8GemmParams& p) {
  CHECK_EQ(p.k % 128, 0);
  if (p.m == 0 || p.n == 0) return;
  const Fp8ScaleLayout& layout = fp8_scale_layout();
  if (p.m <= fp8_gemv_max_tokens(p.k)) {
    static bool gemv_attr_set = false;
    if (!gemv_attr_set) {
      CUDA_CHECK(cudaFuncSetAttribute(fp8_gemv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
      gemv_attr_set = true;
    }
    fp8_gemv_kernel<<<unsigned(ceil_div(p.n, kGemvWarps)), kGemvWarps * 32, size_t(p.m * p.k) * 2, p.stream>>>(
        p, layout.act_ld(p.m), layout.weight_ld(p.k));
    launch_check("fp8_gemv", p.stream);
    return;
  }
  const int tok_tile = int(std::max<int64_t>(1, std::min<int64_t>(kMaxTokTile, kSmemBytes / (2 * p.k))));
  const size_t smem = size_t(tok_tile) * size_t(p.k) * 2;
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(fp8_simt_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    attr_set = true;
  }
  CHECK_LE(smem, size_t(kSmemBytes)) << "fp8_gemm_simt: k=" << p.k << " too large";
  fp8_simt_kernel<<<unsigned(ceil_div(p.n, kRowsPerBlock)), kWarps * 32, smem, p.stream>>>(
      p, layout.act_ld(p.m), layout.weight_ld(p.k), tok_tile);
  launch_check("fp8_gemm_simt", p.stream);
}

}  // namespace v4rt::kernels::cuda
