// SPDX-License-Identifier: MIT
// Launchers of the SP kernels (parallel/cuda/sp_kernels.cu) for CudaSpOps (cuda_sp_ops.cpp).
// Plain C++17 so nvcc compiles the .cu without the C++20 headers of parallel/. Semantics:
// parallel/sp_ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v4rt::parallel::cuda {

// The partition of sp.h's SpPartition, as plain numbers.
struct SpShape {
  int sp_size = 1;
  int sp_idx = 0;
  int64_t block = 64;
};

void launch_sp_mask_invisible(float* scores, int64_t rows, int64_t num_local, SpShape part, int64_t pos_begin,
                              int ratio, cudaStream_t stream);
void launch_sp_visible_list(int32_t* list, int64_t rows, int64_t num_local, SpShape part, int64_t pos_begin, int ratio,
                            cudaStream_t stream);
void launch_sp_merge_topk(const float* values, const int32_t* local_idx, int64_t rows, int k, SpShape part,
                          int32_t* sel, cudaStream_t stream);
void launch_sp_merge_attention(const float* o, const float* lse, const float* sink, int num_parts, int64_t rows,
                               int64_t heads, int64_t head_dim, bool round_bf16, float* out, cudaStream_t stream);

}  // namespace v4rt::parallel::cuda
