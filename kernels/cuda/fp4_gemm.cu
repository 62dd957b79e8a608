// SPDX-License-Identifier: MIT
// Grouped FP4 expert GEMM (see fp4_gemm.h). Each warp owns kRowsPerWarp output channels; each lane
// walks 32-input chunks (one 16-byte load = 32 e2m1 codes = exactly one ue8m0 scale block), decodes
// them through a 16-entry shared table (conflict-free: 16 distinct banks) and multiplies them with
// the dequantized activation tile held in shared memory as bf16 (exact: e4m3 times a power of two).
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kTokTile = 8;
constexpr int kAhead = 1;  // 32-input chunks per row loaded ahead (2 measured slower: 80 vs 46 us)
constexpr int kMaxSmemBytes = 200 * 1024;

__global__ void __launch_bounds__(kWarps * 32) fp4_grouped_gemm_kernel(Fp4GroupedGemmParams p) {
  extern __shared__ uint16_t act[];  // [kTokTile][k] bf16
  __shared__ float lut[16];
  const int g = blockIdx.y;
  const int row0 = p.row_offsets[g], row1 = p.row_offsets[g + 1];
  if (row0 >= row1 || p.w[g] == nullptr) return;
  if (threadIdx.x < 16) {
    const float mag[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
    lut[threadIdx.x] = (threadIdx.x & 8) ? -mag[threadIdx.x & 7] : mag[threadIdx.x & 7];
  }
  const uint8_t* w = p.w[g];
  const uint8_t* ws = p.w_scale[g];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n_base = int64_t(blockIdx.x) * kRowsPerBlock + warp * kRowsPerWarp;
  const int64_t k = p.k, kc = k / 32, kq = k / 4;

  for (int t0 = row0; t0 < row1; t0 += kTokTile) {
    const int cnt = min(kTokTile, row1 - t0);
    __syncthreads();
    if (p.x_bf16) {
      for (int64_t i = threadIdx.x; i < cnt * kq; i += blockDim.x) {
        const int64_t t = i / kq, kk = (i % kq) * 4;
        *reinterpret_cast<uint2*>(act + t * k + kk) = *reinterpret_cast<const uint2*>(p.x_bf16 + (t0 + t) * k + kk);
      }
    } else {
      for (int64_t i = threadIdx.x; i < cnt * kq; i += blockDim.x) {
        const int64_t t = i / kq, kk = (i % kq) * 4;
        const uint32_t q = *reinterpret_cast<const uint32_t*>(p.x8 + (t0 + t) * k + kk);
        const float s = p.x_scale[(t0 + t) * (k / 128) + kk / 128];
        uint16_t* dst = act + t * k + kk;
#pragma unroll
        for (int j = 0; j < 4; ++j) dst[j] = f32_to_bf16(e4m3_to_f32(uint8_t(q >> (8 * j))) * s);
      }
    }
    __syncthreads();

    float acc[kRowsPerWarp][kTokTile];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < kTokTile; ++t) acc[r][t] = 0.f;

    // Chunks c = lane + 32 * j; kAhead of them per row are loaded before any is used.
    for (int64_t c0 = lane; c0 < kc; c0 += 32 * kAhead) {
      uint4 wv[kAhead][kRowsPerWarp];
      float sc[kAhead][kRowsPerWarp];
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        const int64_t c = c0 + 32 * j;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const int64_t n = n_base + r;
          if (n < p.n && c < kc) {
            wv[j][r] = __ldg(reinterpret_cast<const uint4*>(w + n * (k / 2) + c * 16));
            sc[j][r] = e8m0_to_f32(__ldg(ws + n * kc + c));
          } else {
            wv[j][r] = make_uint4(0, 0, 0, 0);
            sc[j][r] = 0.f;
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        const int64_t c = c0 + 32 * j;
        if (c >= kc) break;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          float wf[32];
          const uint32_t words[4] = {wv[j][r].x, wv[j][r].y, wv[j][r].z, wv[j][r].w};
#pragma unroll
          for (int q = 0; q < 4; ++q)
#pragma unroll
            for (int i = 0; i < 8; ++i) wf[q * 8 + i] = lut[(words[q] >> (4 * i)) & 0xf];
#pragma unroll
          for (int t = 0; t < kTokTile; ++t) {
            if (t < cnt) {
              const uint4* a4 = reinterpret_cast<const uint4*>(act + t * k + c * 32);
              float dot = 0.f;
#pragma unroll
              for (int v = 0; v < 4; ++v) {
                const uint4 a = a4[v];
                const uint32_t aw[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                  dot = fmaf(wf[v * 8 + 2 * q], __uint_as_float(aw[q] << 16), dot);
                  dot = fmaf(wf[v * 8 + 2 * q + 1], __uint_as_float(aw[q] & 0xffff0000u), dot);
                }
              }
              acc[r][t] = fmaf(dot, sc[j][r], acc[r][t]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
      for (int t = 0; t < kTokTile; ++t) {
        if (t < cnt) {
          const float v = warp_sum(acc[r][t]);
          const int64_t n = n_base + r;
          if (lane == 0 && n < p.n) p.out[(t0 + t) * p.n + n] = f32_to_bf16(v);
        }
      }
    }
  }
}

}  // namespace

void fp4_grouped_gemm(const Fp4GroupedGemmParams& p) {
  CHECK(p.x_bf16 || (p.x8 && p.x_scale)) << "fp4 grouped gemm: no activations";
  CHECK_EQ(p.k % 128, 0) << "fp4 grouped gemm: k=" << p.k << " must be a multiple of 128";
  if (p.num_groups == 0 || p.n == 0) return;
  const size_t smem = size_t(kTokTile) * size_t(p.k) * 2;
  CHECK_LE(smem, size_t(kMaxSmemBytes)) << "fp4 grouped gemm: k=" << p.k << " too large for the activation tile";
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(fp4_grouped_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmemBytes));
    attr_set = true;
  }
  const dim3 grid(unsigned(ceil_div(p.n, kRowsPerBlock)), unsigned(p.num_groups));
  fp4_grouped_gemm_kernel<<<grid, kWarps * 32, smem, p.stream>>>(p);
  launch_check("fp4_grouped_gemm", p.stream);
}

}  // namespace v4rt::kernels::cuda
