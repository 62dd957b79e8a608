// SPDX-License-Identifier: MIT
// The decode GEMV (gemv.cu): y = x W^T for a few token rows (m <= gemv_max_tokens), CUDA cores,
// bound by the bytes of W. Weights are the checkpoint's e4m3 with 128x128 fp32 block scales
// (Fp8ScaleLayout) or bf16. The activations arrive as e4m3 codes with scales (fp8_gemm_simt's
// operands), as bf16/f32 rows that the kernel quantizes itself (act_quant, spec §2.2), or as rows
// taken as bf16. The output is written as launch_add_into writes it, so one launch replaces
// act_quant, the GEMM and the add. With the FP8 weights and quantized activations the arithmetic
// is fp8_gemm_simt's tiled kernel's, bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v4rt::kernels::cuda {

struct GemvParams {
  enum class Input : uint8_t {
    kCodes,  // x8 [m][k_act] e4m3 and x_scale [k_act/128][act_ld]
    kQuant,  // x rows, quantized here per 128-block (k_act % 128 == 0)
    kBf16,   // x rows as bf16 (f32 rounded to nearest even: exact for the official numerics' rows)
  };
  Input input = Input::kQuant;
  const uint8_t* x8 = nullptr;
  const float* x_scale = nullptr;
  int64_t act_ld = 0;
  const void* x = nullptr;  // [m, k_act] rows, row stride x_stride elements
  int64_t x_stride = 0;
  bool x_bf16 = true;
  // W [n, k]: e4m3 when w_scale is set (scales [ceil(n/128)][w_ld]), else bf16.
  const void* w = nullptr;
  const float* w_scale = nullptr;
  int64_t w_ld = 0;
  // Grouped projections (spec §5.7): output channel c reads activation columns
  // [(c / out_group) * k, + k) of the row; 0: one group (k_act == k).
  int64_t out_group = 0;
  // y[t, c] = (accumulate ? y[t, c] : 0) + v, v the fp32 sum, rounded to bf16 first when
  // round_product (the FP8 GEMM's bf16 output); an F32 y is rounded to bf16 when `round`.
  void* y = nullptr;
  int64_t y_stride = 0;
  bool y_bf16 = true, accumulate = false, round = false, round_product = false;
  int64_t m = 0, n = 0, k = 0, k_act = 0;  // k % 16 == 0
  // FP8 weights with FP8 activations (kQuant, kCodes; one group): the products on FP8 tensor
  // cores (gemv_mma.cu) where gemv_mma_serves; the outputs then match an fp64 reference within
  // the tensor cores' summation, not the CUDA-core kernel's bits.
  bool tensor_cores = false;
  cudaStream_t stream = nullptr;
};

void gemv(const GemvParams& p);
// The tensor-core kernel alone, and whether it takes a call (FP8 weights and activations, one
// group, k % 128 == 0, the token rows' codes in shared memory).
void gemv_mma(const GemvParams& p);
bool gemv_mma_serves(const GemvParams& p);
// The most token rows gemv takes for staged activation rows of k_act (shared memory): up to 8.
int64_t gemv_max_tokens(int64_t k_act);

}  // namespace v4rt::kernels::cuda
