// SPDX-License-Identifier: MIT
// act_quant (spec §2.2): bf16 activations -> e4m3 + power-of-two fp32 scale per token per 128
// channels, in whatever scale layout the consumer needs (cuBLASLt's [K/128][M] or the FP4 expert
// GEMM's [M][K/128]); and the one-time ue8m0 -> fp32 conversion of checkpoint weight scales.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"

namespace v4rt::kernels::cuda {

Fp8ScaleLayout& fp8_scale_layout() {
  static Fp8ScaleLayout layout;
  return layout;
}

namespace {

// One warp per (token, 128-block); each lane owns 4 consecutive channels.
__global__ void act_quant_fp8_kernel(ActQuantParams p) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t num_kb = p.k / 128;
  const int64_t warp_id = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp_id >= p.num_tokens * num_kb) return;
  const int64_t m = warp_id / num_kb, kb = warp_id % num_kb;
  const int64_t off = m * p.x_stride + kb * 128 + lane * 4;
  float v[4];
  if (p.x_bf16) {
    const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.x) + off);
    v[0] = bf16_to_f32(uint16_t(raw.x & 0xffff));
    v[1] = bf16_to_f32(uint16_t(raw.x >> 16));
    v[2] = bf16_to_f32(uint16_t(raw.y & 0xffff));
    v[3] = bf16_to_f32(uint16_t(raw.y >> 16));
  } else {
    const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(p.x) + off);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  }
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  amax = warp_max(amax);
  const float s = act_quant_scale(amax, 448.f);
  const float inv = 1.0f / s;  // exact: s is a power of two
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) packed |= uint32_t(f32_to_e4m3(v[i] * inv)) << (8 * i);
  *reinterpret_cast<uint32_t*>(p.x8 + m * p.k + kb * 128 + lane * 4) = packed;
  if (lane == 0) p.scale[m * p.scale_m_stride + kb * p.scale_kb_stride] = s;
}

__global__ void e8m0_to_f32_kernel(const uint8_t* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * ld) return;
  const int64_t r = i / ld, c = i % ld;
  dst[i] = c < cols ? e8m0_to_f32(src[r * cols + c]) : 1.0f;
}

__global__ void dequant_fp8_kernel(const uint8_t* w8, const uint8_t* scale, int64_t rows, int64_t cols,
                                   uint16_t* out) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  out[i] = f32_to_bf16(e4m3_to_f32(w8[i]) * e8m0_to_f32(scale[(r / 128) * ceil_div(cols, 128) + c / 128]));
}

}  // namespace

void dequant_fp8_to_bf16(const uint8_t* w8, const uint8_t* scale, int64_t rows, int64_t cols, uint16_t* out,
                         cudaStream_t stream) {
  if (rows * cols == 0) return;
  launch(dequant_fp8_kernel, grid_x_for(rows * cols, 256, "dequant_fp8"), 256, 0, stream)(w8, scale, rows, cols, out);
  launch_check("dequant_fp8_to_bf16", stream);
}

void act_quant_fp8(const ActQuantParams& p) {
  CHECK_EQ(p.k % 128, 0) << "act_quant_fp8: k=" << p.k << " is not a multiple of 128";
  CHECK_EQ(p.x_stride % 4, 0) << "act_quant_fp8: row stride must keep 8/16-byte alignment";
  if (p.num_tokens == 0) return;
  const int64_t warps = p.num_tokens * (p.k / 128);
  const int threads = 256;
  const int64_t blocks = ceil_div(warps * 32, threads);
  launch(act_quant_fp8_kernel, grid_x(blocks, "act_quant_fp8"), threads, 0, p.stream)(p);
  launch_check("act_quant_fp8", p.stream);
}

void e8m0_to_f32_scales(const uint8_t* src, int64_t rows, int64_t cols, float* dst, int64_t ld,
                        cudaStream_t stream) {
  CHECK_GE(ld, cols);
  if (rows * ld == 0) return;
  launch(e8m0_to_f32_kernel, grid_x_for(rows * ld, 256, "e8m0_to_f32"), 256, 0, stream)(src, rows, cols, dst, ld);
  launch_check("e8m0_to_f32_scales", stream);
}

}  // namespace v4rt::kernels::cuda
