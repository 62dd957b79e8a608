// SPDX-License-Identifier: MIT
// FP8 block-scaled GEMM (spec §2.2 fp8_gemm) through cuBLASLt, and the act_quant kernel feeding it.
//   out[m, n] = bf16( sum over 128-blocks kb of (sum_k x8[m,k] w8[n,k]) * x_scale[m,kb] * w_scale[n/128,kb] )
// cuBLASLt settings (DEVICE.md, verified on an H200): A = W as column-major [K, N] (ld K) with
// scale mode BLK128x128_32F, B = X as column-major [K, M] (ld K) with scale mode VEC128_32F,
// TRANSA = T, TRANSB = N, D = bf16 column-major [N, M] (ld N), i.e. row-major out[M, N]; compute 32F.
// Scale layouts are described by Fp8ScaleLayout; checkpoint ue8m0 weight scales are converted to
// that fp32 layout once at load (e8m0_to_f32_weight_scales).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kernels/cuda/device.h"

namespace v4rt::kernels::cuda {

// Layouts cuBLASLt reads the fp32 scales in. Activation scales: [K/128][act_ld(M)], M contiguous.
// Weight scales: [ceil(N/128)][weight_ld(K)], K-blocks contiguous. `*_align` pads the contiguous
// dimension to a multiple (1 = packed). Measured on an H200 with cuBLASLt 13.1 (2026-11-29): the
// K-block dimension of the weight scales must be padded to a multiple of 4 (packed scales give
// wrong results for K/128 = 3 or 5); cuBLASLt offers block-scaled algorithms only for M % 4 == 0.
struct Fp8ScaleLayout {
  int act_m_align = 4;
  int weight_kb_align = 4;
  int64_t act_ld(int64_t m) const { return (m + act_m_align - 1) / act_m_align * act_m_align; }
  int64_t weight_ld(int64_t k) const {
    int64_t kb = (k + 127) / 128;
    return (kb + weight_kb_align - 1) / weight_kb_align * weight_kb_align;
  }
};
Fp8ScaleLayout& fp8_scale_layout();  // process-wide; tests may switch it to probe cuBLASLt

struct ActQuantParams {
  const void* x;          // [num_tokens, k] bf16 (or f32 when !x_bf16), row stride x_stride elements
  int64_t x_stride = 0;
  bool x_bf16 = true;
  uint8_t* x8;            // [num_tokens, k] e4m3, contiguous
  float* scale;           // scale of (token m, block kb) at scale[m * scale_m_stride + kb * scale_kb_stride]
  int64_t scale_m_stride = 0, scale_kb_stride = 0;
  int64_t num_tokens = 0, k = 0;  // k % 128 == 0
  cudaStream_t stream = nullptr;
};
// Per token, per 128-block: s = 2^ceil(log2(max(amax,1e-4)/448)), x8 = e4m3_satfinite(x / s).
void act_quant_fp8(const ActQuantParams& p);

// ue8m0 [rows, cols] -> fp32 [rows, ld] (2^(s-127)); padding columns are set to 1.
void e8m0_to_f32_scales(const uint8_t* src, int64_t rows, int64_t cols, float* dst, int64_t ld,
                        cudaStream_t stream);

// W[r, c] = e4m3(w8[r, c]) * 2^(S[r/128, c/128] - 127) written as bf16 (exact). For weights the
// spec dequantizes at load (attn.wo_a).
void dequant_fp8_to_bf16(const uint8_t* w8, const uint8_t* scale, int64_t rows, int64_t cols, uint16_t* out,
                         cudaStream_t stream);

struct Fp8GemmParams {
  const uint8_t* x8;      // [m, k] e4m3 row-major
  const float* x_scale;   // [k/128][act_ld(m)]  (Fp8ScaleLayout)
  const uint8_t* w8;      // [n, k] e4m3 row-major (checkpoint layout)
  const float* w_scale;   // [ceil(n/128)][weight_ld(k)]  (Fp8ScaleLayout)
  uint16_t* out;          // [m, out_ld] bf16 row-major; out_ld >= n (0 means n)
  int64_t out_ld = 0;
  int64_t m = 0, n = 0, k = 0;  // k % 128 == 0, n % 16 == 0
  cudaStream_t stream = nullptr;
};

// CUDA-core FP8 block-scaled GEMM with the same semantics and scale layouts: weights are decoded
// in registers (16 e4m3 per 16-byte load), activations staged in shared memory. Used where
// cuBLASLt offers no algorithm for a shape. Up to gemv_max_tokens(k) tokens take the decode GEMV
// (gemv.h: no padding of m, the same bits as the tiled kernel).
void fp8_gemm_simt(const Fp8GemmParams& p);

// Owns the cuBLASLt handle, a workspace and a plan cache keyed by shape, alignment and layout.
// run() uses cuBLASLt when its heuristic offers an algorithm for the shape, else fp8_gemm_simt.
class Fp8Gemm {
 public:
  enum class Path : uint8_t { kAuto, kCublasLt, kSimt };
  Fp8Gemm();
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;
  // Returns the path taken. kCublasLt fails fast when cuBLASLt has no algorithm.
  Path run(const Fp8GemmParams& p, Path path = Path::kAuto);
  // Whether cuBLASLt offers an algorithm for this shape (builds and caches the plan).
  bool cublas_supports(const Fp8GemmParams& p);

 private:
  struct Plan;
  Plan* plan_for(const Fp8GemmParams& p, int64_t out_ld);  // nullptr: no algorithm
  void* handle_ = nullptr;  // cublasLtHandle_t
  DeviceBuffer workspace_;
  std::map<std::vector<int64_t>, std::unique_ptr<Plan>> plans_;
};

}  // namespace v4rt::kernels::cuda
