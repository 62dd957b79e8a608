// SPDX-License-Identifier: MIT
// cuBLASLt plans for the dense GEMMs (see dense_gemm.h). Row-major y = x w^T is the column-major
// product D[n, m] = op(A)[n, k] . B[k, m] with A = w as [k, n] (ld ldw, TRANSA = T), B = x as
// [k, m] (ld ldx), D = y as [n, m] (ld ldy).
#include "kernels/cuda/dense_gemm.h"

#include <cublasLt.h>

#include <cstddef>

#include "kernels/cuda/cublaslt_plan.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_log.h"

namespace v4rt::kernels::cuda {

int pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 1;
  while (al < 256 && (a % uintptr_t(al * 2)) == 0) al *= 2;
  return al;
}

struct DenseGemm::Plan : LtPlan {};

DenseGemm::DenseGemm() : workspace_(kLtWorkspaceBytes) { handle_ = lt_create_handle(); }

DenseGemm::~DenseGemm() {
  plans_.clear();
  lt_destroy_handle(handle_);
}

void DenseGemm::run(const DenseGemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  CHECK(p.ab_type == CUDA_R_16BF || p.ab_type == CUDA_R_32F);
  CHECK(p.d_type == CUDA_R_16BF || p.d_type == CUDA_R_32F);
  CHECK(!(p.ab_type == CUDA_R_32F && p.d_type == CUDA_R_16BF)) << "fp32 GEMM writes fp32";
  const int al_w = pointer_alignment(p.w), al_x = pointer_alignment(p.x), al_y = pointer_alignment(p.y);
  std::vector<int64_t> key = {int64_t(p.ab_type), int64_t(p.d_type), p.ldw, p.ldx, p.ldy, p.m, p.n, p.k,
                              p.batch, p.stride_w, p.stride_x, p.stride_y, al_w, al_x, al_y, p.beta != 0.f};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    auto plan = std::make_unique<Plan>();
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, p.ab_type, uint64_t(p.k), uint64_t(p.n), p.ldw));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, p.ab_type, uint64_t(p.k), uint64_t(p.m), p.ldx));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, p.d_type, uint64_t(p.n), uint64_t(p.m), p.ldy));
    if (p.batch > 1) {
      const int32_t bc = p.batch;
      for (auto [layout, stride] : {std::pair{plan->a, p.stride_w}, std::pair{plan->b, p.stride_x},
                                    std::pair{plan->d, p.stride_y}}) {
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc)));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                      sizeof(stride)));
      }
    }
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    const bool found = plan->choose_algo(static_cast<cublasLtHandle_t>(handle_), al_w, al_x, al_y, &st);
    CHECK(found) << "cuBLASLt has no algorithm for dense m=" << p.m << " n=" << p.n << " k=" << p.k << " ("
                 << cublasLtGetStatusString(st) << ")";
    it = plans_.emplace(key, std::move(plan)).first;
  }
  struct CallKey {  // the plan and beta fix the kernels (launch_log.h); then addresses
    const Plan* plan;
    float beta, unused = 0.f;  // no padding: the bytes are a key
    const void *w, *x;
    void* y;
  } call{it->second.get(), p.beta, 0.f, p.w, p.x, p.y};
  const auto handle = static_cast<cublasLtHandle_t>(handle_);
  void* workspace = workspace_.data();
  run_async(&call, sizeof(call), offsetof(CallKey, w), p.stream, [call, handle, workspace](cudaStream_t s) {
    const Plan& plan = *call.plan;
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, &alpha, call.w, plan.a, call.x, plan.b, &call.beta, call.y, plan.d,
                                call.y, plan.d, &plan.algo, workspace, kLtWorkspaceBytes, s));
  });
}

}  // namespace v4rt::kernels::cuda
