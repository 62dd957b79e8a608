// SPDX-License-Identifier: MIT
// Grouped FP4 expert GEMM (see fp4_gemm.h). Each warp owns kRowsPerWarp output channels; each lane
// walks 32-input chunks (one 16-byte load = 32 e2m1 codes = exactly one ue8m0 scale block), decodes
// them through a 16-entry shared table (conflict-free: 16 distinct banks) and multiplies them with
// the activation tile held in shared memory as bf16 (FP8 input: exact, e4m3 times a power of two)
// or, for fp32 inputs, as fp32 (tokens per tile halved when the tile would not fit).
#include <algorithm>
#include <atomic>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/launch.cuh"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kTokTile = 8;  // tokens per activation tile (4 for fp32 tiles of k > 6144)
constexpr int kAhead = 1;  // 32-input chunks per row loaded ahead (2 measured slower: 80 vs 46 us)
constexpr int kMaxSmemBytes = 200 * 1024;

// The dot of 32 decoded weights with 32 activations of the tile (bf16 bits or fp32).
__device__ __forceinline__ float dot32(const float* wf, const uint16_t* a32) {
  const uint4* a4 = reinterpret_cast<const uint4*>(a32);
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
  return dot;
}
__device__ __forceinline__ float dot32(const float* wf, const float* a32) {
  const float4* a4 = reinterpret_cast<const float4*>(a32);
  float dot = 0.f;
#pragma unroll
  for (int v = 0; v < 8; ++v) {
    const float4 a = a4[v];
    dot = fmaf(wf[v * 4], a.x, dot);
    dot = fmaf(wf[v * 4 + 1], a.y, dot);
    dot = fmaf(wf[v * 4 + 2], a.z, dot);
    dot = fmaf(wf[v * 4 + 3], a.w, dot);
  }
  return dot;
}

template <typename T, int kTok>
__global__ void __launch_bounds__(kWarps * 32) fp4_grouped_gemm_kernel(Fp4GroupedGemmParams p) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* act = reinterpret_cast<T*>(smem_raw);  // [kTok][k]
  __shared__ float lut[16];
  const int g = p.group_list ? p.group_list[blockIdx.y] : int(blockIdx.y);
  if (g < 0) return;
  const int row0 = p.row_offsets[g], row1 = p.row_offsets[g + 1];
  if (row0 >= row1 || p.w[g] == nullptr) return;
  if (threadIdx.x < 16) {  // e2m1 code c: 0, 0.5, then (2 + mantissa) * 2^(exponent - 2) (no local array)
    const int c = threadIdx.x & 7;
    const float mag = c < 2 ? 0.5f * float(c) : float(2 + (c & 1)) * float(1 << ((c >> 1) - 1)) * 0.5f;
    lut[threadIdx.x] = (threadIdx.x & 8) ? -mag : mag;
  }
  const uint8_t* w = p.w[g];
  const uint8_t* ws = p.w_scale[g];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n_base = int64_t(blockIdx.x) * kRowsPerBlock + warp * kRowsPerWarp;
  const int64_t k = p.k, kc = k / 32, kq = k / 4;

  for (int t0 = row0; t0 < row1; t0 += kTok) {
    const int cnt = min(kTok, row1 - t0);
    __syncthreads();
    if constexpr (sizeof(T) == 4) {
      for (int64_t i = threadIdx.x; i < cnt * kq; i += blockDim.x) {
        const int64_t t = i / kq, kk = (i % kq) * 4;
        *reinterpret_cast<float4*>(act + t * k + kk) = *reinterpret_cast<const float4*>(p.x_f32 + (t0 + t) * k + kk);
      }
    } else if (p.x_bf16) {
      for (int64_t i = threadIdx.x; i < cnt * kq; i += blockDim.x) {
        const int64_t t = i / kq, kk = (i % kq) * 4;
        *reinterpret_cast<uint2*>(act + t * k + kk) = *reinterpret_cast<const uint2*>(p.x_bf16 + (t0 + t) * k + kk);
      }
    } else {
      for (int64_t i = threadIdx.x; i < cnt * kq; i += blockDim.x) {
        const int64_t t = i / kq, kk = (i % kq) * 4;
        const uint32_t q = *reinterpret_cast<const uint32_t*>(p.x8 + (t0 + t) * k + kk);
        const float s = p.x_scale[(t0 + t) * (k / 128) + kk / 128];
        uint16_t* dst = reinterpret_cast<uint16_t*>(act) + t * k + kk;
#pragma unroll
        for (int j = 0; j < 4; ++j) dst[j] = f32_to_bf16(e4m3_to_f32(uint8_t(q >> (8 * j))) * s);
      }
    }
    __syncthreads();

    float acc[kRowsPerWarp][kTok];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < kTok; ++t) acc[r][t] = 0.f;

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
          for (int t = 0; t < kTok; ++t)
            if (t < cnt) acc[r][t] = fmaf(dot32(wf, act + t * k + c * 32), sc[j][r], acc[r][t]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
      for (int t = 0; t < kTok; ++t) {
        if (t < cnt) {
          const float v = warp_sum(acc[r][t]);
          const int64_t n = n_base + r;
          if (lane == 0 && n < p.n) {
            if (p.out_f32) {
              p.out_f32[(t0 + t) * p.n + n] = v;
            } else {
              p.out[(t0 + t) * p.n + n] = f32_to_bf16(v);
            }
          }
        }
      }
    }
  }
}

template <typename T, int kTok>
void launch_simt(const Fp4GroupedGemmParams& p, size_t smem) {
  static std::atomic<uint64_t> attr_set;
  set_smem_once(fp4_grouped_gemm_kernel<T, kTok>, kMaxSmemBytes, false, &attr_set);
  const int rows_y = p.group_list ? std::min(p.list_len, p.num_groups) : p.num_groups;
  const dim3 grid(unsigned(ceil_div(p.n, kRowsPerBlock)), unsigned(rows_y));
  launch(fp4_grouped_gemm_kernel<T, kTok>, grid, kWarps * 32, smem, p.stream)(p);
}

}  // namespace

void fp4_grouped_gemm(const Fp4GroupedGemmParams& p) {
  if (p.tensor_cores) {
    fp4_grouped_gemm_tc(p);
    return;
  }
  CHECK(p.x_f32 || p.x_bf16 || (p.x8 && p.x_scale)) << "fp4 grouped gemm: no activations";
  CHECK(p.out || p.out_f32) << "fp4 grouped gemm: no output";
  CHECK_EQ(p.k % 128, 0) << "fp4 grouped gemm: k=" << p.k << " must be a multiple of 128";
  if (p.num_groups == 0 || p.n == 0 || (p.group_list && p.list_len <= 0)) return;
  if (p.x_f32) {
    const size_t smem8 = size_t(kTokTile) * size_t(p.k) * 4, smem4 = smem8 / 2;
    CHECK_LE(smem4, size_t(kMaxSmemBytes)) << "fp4 grouped gemm: k=" << p.k << " too large for the fp32 tile";
    if (smem8 <= size_t(kMaxSmemBytes)) {
      launch_simt<float, kTokTile>(p, smem8);
    } else {
      launch_simt<float, kTokTile / 2>(p, smem4);
    }
  } else {
    const size_t smem = size_t(kTokTile) * size_t(p.k) * 2;
    CHECK_LE(smem, size_t(kMaxSmemBytes)) << "fp4 grouped gemm: k=" << p.k << " too large for the activation tile";
    launch_simt<uint16_t, kTokTile>(p, smem);
  }
  launch_check("fp4_grouped_gemm", p.stream);
}

void fp4_grouped_gemm_pair(const Fp4GroupedGemmParams& p, const Fp4GroupedGemmParams& q) {
  if (p.tensor_cores && q.tensor_cores && fp4_tc_use_gemv(p.max_rows, p.num_groups, p.n, p.k, p.gemv_rows)) {
    fp4_grouped_gemv_pair(p, q);
    return;
  }
  fp4_grouped_gemm(p);
  fp4_grouped_gemm(q);
}

}  // namespace v4rt::kernels::cuda
