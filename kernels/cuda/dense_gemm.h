// SPDX-License-Identifier: MIT
// Dense bf16/fp32 GEMMs through cuBLASLt for the projections that are not FP8/FP4 in the spec
// (compressor, gate, indexer weights_proj, head, wo_a): y[m, n] = x[m, k] . w[n, k]^T (+ beta y),
// fp32 accumulate (compute 32F, no TF32), optionally strided-batched (grouped output projection).
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "kernels/cuda/device.h"

namespace v4rt::kernels::cuda {

struct DenseGemmParams {
  cudaDataType_t ab_type = CUDA_R_16BF;  // type of w and x: CUDA_R_16BF or CUDA_R_32F
  cudaDataType_t d_type = CUDA_R_16BF;   // type of y: CUDA_R_16BF or CUDA_R_32F (32F when ab is 32F)
  const void* w = nullptr;   // [n, ldw] row-major
  int64_t ldw = 0;
  const void* x = nullptr;   // [m, ldx] row-major
  int64_t ldx = 0;
  void* y = nullptr;         // [m, ldy] row-major
  int64_t ldy = 0;
  int64_t m = 0, n = 0, k = 0;
  int batch = 1;             // batch b uses w + b*stride_w, x + b*stride_x, y + b*stride_y (elements)
  int64_t stride_w = 0, stride_x = 0, stride_y = 0;
  float beta = 0.f;          // 1: accumulate into y
  cudaStream_t stream = nullptr;
};

// Largest power of two (<= 256) dividing the address: cuBLASLt picks algorithms by alignment.
int pointer_alignment(const void* p);

class DenseGemm {
 public:
  DenseGemm();
  ~DenseGemm();
  DenseGemm(const DenseGemm&) = delete;
  DenseGemm& operator=(const DenseGemm&) = delete;
  void run(const DenseGemmParams& p);

 private:
  struct Plan;
  void* handle_ = nullptr;
  DeviceBuffer workspace_;
  std::map<std::vector<int64_t>, std::unique_ptr<Plan>> plans_;
};

}  // namespace v4rt::kernels::cuda
