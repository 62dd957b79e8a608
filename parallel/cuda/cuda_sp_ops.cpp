// SPDX-License-Identifier: MIT
// SpOps on a CUDA device (see parallel/sp_ops.h): the kernels of sp_kernels.cu on the compute
// stream, where the SP Comm orders its collectives too.
#include <cuda_runtime.h>

#include "cluster/check.h"
#include "parallel/cuda/sp_kernels.h"
#include "parallel/sp.h"
#include "parallel/sp_ops.h"

#define SP_CUDA_CHECK(call) V4RT_CHECK_GEN(call, cudaSuccess, cudaGetErrorString, ::v4rt::cluster::check_context)

namespace v4rt::parallel {
namespace {

cuda::SpShape shape_of(const SpPartition& part) { return {part.sp_size, part.sp_idx, part.block}; }

class CudaSpOps final : public SpOps {
 public:
  explicit CudaSpOps(cudaStream_t stream) : stream_(stream) {}
  Device device() const override { return Device::kCuda; }

  void mask_invisible(float* scores, int64_t rows, int64_t num_local, const SpPartition& part, int64_t pos_begin,
                      int ratio) override {
    cuda::launch_sp_mask_invisible(scores, rows, num_local, shape_of(part), pos_begin, ratio, stream_);
    SP_CUDA_CHECK(cudaGetLastError());
  }
  void visible_list(int32_t* list, int64_t rows, int64_t num_local, const SpPartition& part, int64_t pos_begin,
                    int ratio) override {
    cuda::launch_sp_visible_list(list, rows, num_local, shape_of(part), pos_begin, ratio, stream_);
    SP_CUDA_CHECK(cudaGetLastError());
  }
  void merge_topk(const float* values, const int32_t* local_idx, int64_t rows, int k, const SpPartition& part,
                  int32_t* sel) override {
    cuda::launch_sp_merge_topk(values, local_idx, rows, k, shape_of(part), sel, stream_);
    SP_CUDA_CHECK(cudaGetLastError());
  }
  void merge_attention(const float* o, const float* lse, const float* sink, int num_parts, int64_t rows, int64_t heads,
                       int64_t head_dim, bool round_bf16, float* out) override {
    cuda::launch_sp_merge_attention(o, lse, sink, num_parts, rows, heads, head_dim, round_bf16, out, stream_);
    SP_CUDA_CHECK(cudaGetLastError());
  }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<SpOps> make_cuda_sp_ops(cluster::StreamHandle stream) {
  return std::make_unique<CudaSpOps>(static_cast<cudaStream_t>(stream));
}

}  // namespace v4rt::parallel
