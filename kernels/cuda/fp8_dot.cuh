// SPDX-License-Identifier: MIT
// The CUDA-core FP8 inner step shared by the block-scaled GEMM (fp8_simt.cu) and the decode GEMV
// (gemv.cu): sixteen e4m3 weights of one 16-byte load decoded to fp32 (exact) and their dot with
// sixteen bf16 activations in input order, so both kernels give the same bits.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/device_math.cuh"

namespace v4rt::kernels::cuda {

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

}  // namespace v4rt::kernels::cuda
