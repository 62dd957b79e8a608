// SPDX-License-Identifier: MIT
// cuBLASLt plans for the dense GEMMs (see dense_gemm.h). Row-major y = x w^T is the column-major
// product D[n, m] = op(A)[n, k] . B[k, m] with A = w as [k, n] (ld ldw, TRANSA = T), B = x as
// [k, m] (ld ldx), D = y as [n, m] (ld ldy).
#include "kernels/cuda/dense_gemm.h"

#include <cublasLt.h>

#include "kernels/cuda/cuda_check.h"

namespace v4rt::kernels::cuda {

namespace {
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
}

int pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 1;
  while (al < 256 && (a % uintptr_t(al * 2)) == 0) al *= 2;
  return al;
}

struct DenseGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

DenseGemm::DenseGemm() : workspace_(kWorkspaceBytes) {
  cublasLtHandle_t h = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&h));
  handle_ = h;
}

DenseGemm::~DenseGemm() {
  plans_.clear();
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
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
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
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
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const uint32_t aw = uint32_t(al_w), ax = uint32_t(al_x), ay = uint32_t(al_y);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof(aw)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax, sizeof(ax)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay, sizeof(ay)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay, sizeof(ay)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_), plan->desc, plan->a, plan->b,
                                                plan->d, plan->d, pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    CHECK_GT(found, 0) << "cuBLASLt has no algorithm for dense m=" << p.m << " n=" << p.n << " k=" << p.k;
    plan->algo = result.algo;
    it = plans_.emplace(key, std::move(plan)).first;
  }
  Plan& plan = *it->second;
  const float alpha = 1.0f;
  CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), plan.desc, &alpha, p.w, plan.a, p.x, plan.b,
                              &p.beta, p.y, plan.d, p.y, plan.d, &plan.algo, workspace_.data(), kWorkspaceBytes,
                              p.stream));
}

}  // namespace v4rt::kernels::cuda
