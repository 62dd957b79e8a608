// SPDX-License-Identifier: MIT
// What the cuBLASLt plan caches of dense_gemm.cpp and fp8_gemm.cpp share: the library handle, the
// matmul descriptor of y = x w^T in column-major terms (TRANSA = T, TRANSB = N, compute 32F), the
// owned matrix layouts, and the heuristic call with the workspace limit and operand alignments.
// Included only by those two files.
#pragma once

#include <cublasLt.h>

#include <cstddef>

namespace v4rt::kernels::cuda {

constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

cublasLtHandle_t lt_create_handle();
void lt_destroy_handle(void* handle);

// One cached GEMM: descriptor, A/B/D layouts (C = D) and the chosen algorithm.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  LtPlan();  // creates desc: compute 32F, scale 32F, TRANSA = T, TRANSB = N
  ~LtPlan();
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  // Asks the heuristic for one algorithm within kLtWorkspaceBytes for operands aligned to al_a,
  // al_b, al_d bytes (C as D). False when none is offered; *status holds cuBLASLt's answer.
  bool choose_algo(cublasLtHandle_t handle, int al_a, int al_b, int al_d, cublasStatus_t* status);
};

}  // namespace v4rt::kernels::cuda
