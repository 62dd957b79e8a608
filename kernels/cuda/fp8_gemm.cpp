// SPDX-License-Identifier: MIT
// cuBLASLt plan cache for the FP8 block-scaled GEMM (settings in fp8_gemm.h). One plan per
// (m, n, k, out_ld, scale layout): descriptors, layouts and the heuristic's algorithm are built
// once; the scale pointers are set per call (cheap attribute writes on the cached descriptor).
#include "kernels/cuda/fp8_gemm.h"

#include <cublasLt.h>

#include <cstddef>

#include "kernels/cuda/cublaslt_plan.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/launch_log.h"

namespace v4rt::kernels::cuda {

struct Fp8Gemm::Plan : LtPlan {};

Fp8Gemm::Fp8Gemm() : workspace_(kLtWorkspaceBytes) { handle_ = lt_create_handle(); }

Fp8Gemm::~Fp8Gemm() {
  plans_.clear();
  lt_destroy_handle(handle_);
}

Fp8Gemm::Plan* Fp8Gemm::plan_for(const Fp8GemmParams& p, int64_t out_ld) {
  const int64_t m = p.m, n = p.n, k = p.k;
  const Fp8ScaleLayout& layout = fp8_scale_layout();
  const int al_w = pointer_alignment(p.w8), al_x = pointer_alignment(p.x8), al_out = pointer_alignment(p.out);
  const std::vector<int64_t> key = {m, n, k, out_ld, layout.act_m_align, layout.weight_kb_align, al_w, al_x, al_out};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();

  auto plan = std::make_unique<Plan>();
  const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)));
  // Dummy pointers for the heuristic; real ones are set per call.
  const void* dummy = workspace_.data();
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dummy, sizeof(dummy)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dummy, sizeof(dummy)));

  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, CUDA_R_16BF, uint64_t(n), uint64_t(m), out_ld));

  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  const bool found = plan->choose_algo(static_cast<cublasLtHandle_t>(handle_), al_w, al_x, al_out, &st);
  if (!found) {
    VLOG(1) << "cuBLASLt: no FP8 block-scaled algorithm for m=" << m << " n=" << n << " k=" << k << " ("
            << cublasLtGetStatusString(st) << ")";
    plan.reset();  // cached as unsupported
  }
  Plan* ptr = plan.get();
  plans_.emplace(key, std::move(plan));
  return ptr;
}

bool Fp8Gemm::cublas_supports(const Fp8GemmParams& p) { return plan_for(p, p.out_ld ? p.out_ld : p.n) != nullptr; }

Fp8Gemm::Path Fp8Gemm::run(const Fp8GemmParams& p, Path path) {
  CHECK_EQ(p.k % 128, 0) << "fp8 gemm: k=" << p.k << " must be a multiple of 128";
  if (p.m == 0) return Path::kAuto;
  const int64_t out_ld = p.out_ld ? p.out_ld : p.n;
  Plan* found = (path == Path::kSimt || p.n % 16 != 0) ? nullptr : plan_for(p, out_ld);
  if (!found) {
    CHECK(path != Path::kCublasLt) << "cuBLASLt has no FP8 block-scaled algorithm for m=" << p.m << " n=" << p.n
                                   << " k=" << p.k;
    fp8_gemm_simt(p);
    return Path::kSimt;
  }
  // The scale pointers are set on the plan's descriptor right before its call, which a launch log
  // (launch_log.h) may defer past later calls of the same plan. The plan fixes the kernels; the
  // rest of the key is addresses.
  struct Key {
    const Plan* plan;
    const void *w8, *x8, *w_scale, *x_scale;
    void* out;
  } key{found, p.w8, p.x8, p.w_scale, p.x_scale, p.out};
  const auto handle = static_cast<cublasLtHandle_t>(handle_);
  void* workspace = workspace_.data();
  run_async(&key, sizeof(key), offsetof(Key, w8), p.stream, [key, handle, workspace](cudaStream_t s) {
    const Plan& plan = *key.plan;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &key.w_scale,
                                                sizeof(key.w_scale)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &key.x_scale,
                                                sizeof(key.x_scale)));
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, &alpha, key.w8, plan.a, key.x8, plan.b, &beta, key.out, plan.d,
                                key.out, plan.d, &plan.algo, workspace, kLtWorkspaceBytes, s));
  });
  return Path::kCublasLt;
}

}  // namespace v4rt::kernels::cuda
