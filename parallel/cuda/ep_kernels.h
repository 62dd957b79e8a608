// SPDX-License-Identifier: MIT
// Launchers of the EP row kernels (parallel/cuda/ep_kernels.cu) for CudaEpMemory
// (parallel/cuda/cuda_ep_memory.cpp). Plain C++17 so nvcc compiles the .cu without the C++20
// headers of parallel/. Semantics: parallel/ep_memory.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v4rt::parallel::cuda {

void launch_gather_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride, const int64_t* idx,
                        int64_t n, int64_t bytes, cudaStream_t stream);
void launch_sum_rows(float* out, const void* rows, bool bf16, const int64_t* pos, const float* scale,
                     int64_t num_tokens, int topk, int64_t hidden, cudaStream_t stream);
void launch_quant_fp8(void* dst, int64_t dst_stride, const void* x, bool bf16, int64_t n, int64_t hidden,
                      cudaStream_t stream);
void launch_dequant_fp8(void* out, bool bf16, const void* src, int64_t src_stride, int64_t n, int64_t hidden,
                        cudaStream_t stream);

}  // namespace v4rt::parallel::cuda
