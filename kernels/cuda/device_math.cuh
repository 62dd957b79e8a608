// SPDX-License-Identifier: MIT
// Device helpers shared by the CUDA kernels: bf16 <-> fp32 with round-to-nearest-even (bit-equal to
// common/dtype.h), ue8m0 / e4m3 / e2m1 decoding, the power-of-two act_quant scale of spec §2.2, and
// warp/block reductions. Included only by .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace v4rt::kernels::cuda {

using bf16_t = uint16_t;  // raw bf16 bits in every Params struct

// The shared-memory address of a generic pointer into shared memory (PTX's 32-bit .shared space).
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ float bf16_to_f32(bf16_t h) { return __uint_as_float(uint32_t(h) << 16); }
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {  // RNE; NaN stays NaN (as common/dtype.h)
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return bf16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t(u >> 16);
}
__device__ __forceinline__ float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }
// lo and hi as a bf16 pair (lo in the low half) by one conversion instruction (cvt.rn.bf16x2.f32):
// RNE, the bits of f32_to_bf16 for every input but NaN (a NaN stays a NaN, its payload may differ).
__device__ __forceinline__ uint32_t bf16x2_rn(float lo, float hi) {
  const __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&b);
}

// ue8m0 byte s -> 2^(s-127); 0xff is NaN.
__device__ __forceinline__ float e8m0_to_f32(uint8_t s) {
  if (s == 0xff) return __uint_as_float(0x7fc00000u);
  if (s == 0) return __uint_as_float(0x00400000u);  // 2^-127 (subnormal)
  return __uint_as_float(uint32_t(s) << 23);
}

__device__ __forceinline__ float e4m3_to_f32(uint8_t code) {
  __nv_fp8_e4m3 v;
  v.__x = code;
  return float(v);
}
// RNE, saturating to +-448 (the reference clamps then casts); NaN -> NaN.
__device__ __forceinline__ uint8_t f32_to_e4m3(float f) {
  return uint8_t(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
}

// act_quant scale (spec §2.2): s = 2^ceil(log2(max(amax,1e-4) / 448)) by exponent bit tricks.
__device__ __forceinline__ float act_quant_scale(float amax, float qmax) {
  amax = fmaxf(amax, 1e-4f);
  float v = amax * (1.0f / qmax);
  uint32_t u = __float_as_uint(v);
  int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
  return __uint_as_float(uint32_t(e + 127) << 23);  // e >= -22 since amax >= 1e-4
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x multiple of 32, <= 1024). `scratch` holds >= 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : 0.f;
  r = warp_sum(r);
  return r;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -INFINITY;
  r = warp_max(r);
  return r;
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace v4rt::kernels::cuda
