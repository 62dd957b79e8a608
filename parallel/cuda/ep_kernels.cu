// SPDX-License-Identifier: MIT
// EP row kernels (see ep_kernels.h): row gathers, the per-token sum in the reference's order and the
// FP8 wire codec (act_quant's rule, as kernels/cuda/act_quant.cu). Host loops of
// parallel/ep_memory.cpp are the reference.
#include "parallel/cuda/ep_kernels.h"

#include "kernels/cuda/device_math.cuh"

namespace v4rt::parallel::cuda {
namespace {

using kernels::cuda::act_quant_scale;
using kernels::cuda::bf16_to_f32;
using kernels::cuda::e4m3_to_f32;
using kernels::cuda::f32_to_bf16;
using kernels::cuda::f32_to_e4m3;

// One block per row; bytes moved in 16-byte words when every address allows it, else bytes.
__global__ void gather_rows_kernel(uint8_t* dst, int64_t dst_stride, const uint8_t* src, int64_t src_stride,
                                   const int64_t* idx, int64_t bytes, bool wide) {
  const int64_t i = blockIdx.x;
  uint8_t* d = dst + i * dst_stride;
  const uint8_t* s = src + (idx ? idx[i] : i) * src_stride;
  if (wide) {
    for (int64_t w = threadIdx.x; w < bytes / 16; w += blockDim.x) {
      reinterpret_cast<uint4*>(d)[w] = reinterpret_cast<const uint4*>(s)[w];
    }
  } else {
    for (int64_t b = threadIdx.x; b < bytes; b += blockDim.x) d[b] = s[b];
  }
}

__device__ __forceinline__ float load_row(const void* rows, bool bf16, int64_t off) {
  return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(rows)[off]) : static_cast<const float*>(rows)[off];
}

// Thread per (token, channel); the slots in j order, as the host loop, and with its roundings: the
// product is rounded before the add (__fmul_rn: nvcc would otherwise fuse them into one fma, which
// the host's ISO C++ build does not).
__global__ void sum_rows_kernel(float* out, const void* rows, bool bf16, const int64_t* pos, const float* scale,
                                int64_t num_tokens, int topk, int64_t hidden) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens * hidden) return;
  const int64_t t = i / hidden, c = i % hidden;
  float acc = 0.f;
  for (int j = 0; j < topk; ++j) {
    const int64_t p = pos[t * topk + j];
    if (p < 0) continue;
    const float v = load_row(rows, bf16, p * hidden + c);
    acc += scale ? __fmul_rn(v, scale[t * topk + j]) : v;
  }
  out[i] = acc;
}

// One warp per (row, 128-block), 4 channels per lane (as act_quant_fp8_kernel).
__global__ void quant_fp8_kernel(uint8_t* dst, int64_t dst_stride, const void* x, bool bf16, int64_t n,
                                 int64_t hidden) {
  const int64_t nb = hidden / 128;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= n * nb) return;
  const int64_t r = warp / nb, b = warp % nb;
  float v[4], amax = 0.f;
  for (int k = 0; k < 4; ++k) {
    v[k] = load_row(x, bf16, r * hidden + b * 128 + lane * 4 + k);
    amax = fmaxf(amax, fabsf(v[k]));
  }
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = act_quant_scale(amax, 448.f);
  const float inv = 1.0f / s;
  uint8_t* row = dst + r * dst_stride;
  for (int k = 0; k < 4; ++k) row[b * 128 + lane * 4 + k] = f32_to_e4m3(fminf(fmaxf(v[k] * inv, -448.f), 448.f));
  if (lane == 0) memcpy(row + hidden + b * 4, &s, 4);
}

__global__ void dequant_fp8_kernel(void* out, bool bf16, const uint8_t* src, int64_t src_stride, int64_t n,
                                   int64_t hidden) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * hidden) return;
  const int64_t r = i / hidden, c = i % hidden;
  const uint8_t* row = src + r * src_stride;
  float s;
  memcpy(&s, row + hidden + (c / 128) * 4, 4);
  const float v = e4m3_to_f32(row[c]) * s;
  if (bf16) {
    static_cast<uint16_t*>(out)[i] = f32_to_bf16(v);
  } else {
    static_cast<float*>(out)[i] = v;
  }
}

unsigned blocks_for(int64_t threads, int per_block) { return unsigned((threads + per_block - 1) / per_block); }

}  // namespace

void launch_gather_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride, const int64_t* idx,
                        int64_t n, int64_t bytes, cudaStream_t stream) {
  if (n == 0 || bytes == 0) return;
  const bool wide = bytes % 16 == 0 && dst_stride % 16 == 0 && src_stride % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dst) % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  gather_rows_kernel<<<unsigned(n), 128, 0, stream>>>(static_cast<uint8_t*>(dst), dst_stride,
                                                      static_cast<const uint8_t*>(src), src_stride, idx, bytes, wide);
}

void launch_sum_rows(float* out, const void* rows, bool bf16, const int64_t* pos, const float* scale,
                     int64_t num_tokens, int topk, int64_t hidden, cudaStream_t stream) {
  if (num_tokens == 0) return;
  sum_rows_kernel<<<blocks_for(num_tokens * hidden, 256), 256, 0, stream>>>(out, rows, bf16, pos, scale, num_tokens,
                                                                            topk, hidden);
}

void launch_quant_fp8(void* dst, int64_t dst_stride, const void* x, bool bf16, int64_t n, int64_t hidden,
                      cudaStream_t stream) {
  if (n == 0) return;
  quant_fp8_kernel<<<blocks_for(n * (hidden / 128) * 32, 256), 256, 0, stream>>>(static_cast<uint8_t*>(dst),
                                                                                 dst_stride, x, bf16, n, hidden);
}

void launch_dequant_fp8(void* out, bool bf16, const void* src, int64_t src_stride, int64_t n, int64_t hidden,
                        cudaStream_t stream) {
  if (n == 0) return;
  dequant_fp8_kernel<<<blocks_for(n * hidden, 256), 256, 0, stream>>>(out, bf16, static_cast<const uint8_t*>(src),
                                                                      src_stride, n, hidden);
}

}  // namespace v4rt::parallel::cuda
