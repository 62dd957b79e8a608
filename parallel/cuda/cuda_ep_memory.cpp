// SPDX-License-Identifier: MIT
// EpMemory on a CUDA device (see parallel/ep_memory.h): the kernels of ep_kernels.cu on the
// exchange's own stream, joined to the compute stream by events.
#include <cuda_runtime.h>

#include <glog/logging.h>

#include <climits>

#include "cluster/check.h"
#include "parallel/cuda/ep_kernels.h"
#include "parallel/ep_memory.h"

#define EP_CUDA_CHECK(call) V4RT_CHECK_GEN(call, cudaSuccess, cudaGetErrorString, ::v4rt::cluster::check_context)

namespace v4rt::parallel {
namespace {

class CudaEpMemory final : public EpMemory {
 public:
  explicit CudaEpMemory(cudaStream_t compute) : compute_(compute) {
    EP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    EP_CUDA_CHECK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
    EP_CUDA_CHECK(cudaEventCreateWithFlags(&exchange_done_, cudaEventDisableTiming));
  }
  ~CudaEpMemory() override {
    (void)cudaStreamSynchronize(stream_);
    (void)cudaEventDestroy(compute_done_);
    (void)cudaEventDestroy(exchange_done_);
    (void)cudaStreamDestroy(stream_);
  }
  Device device() const override { return Device::kCuda; }
  cluster::StreamHandle stream() const override { return stream_; }
  // The device allocator is stream-ordered on the compute stream (cudaMallocAsync): the exchange
  // stream waits for the allocation before it touches the memory, and every buffer made here is
  // freed after release_compute() (so after the exchange, in the compute stream's order).
  Buffer alloc(size_t bytes) override {
    Buffer b(bytes, Device::kCuda);
    wait_compute();
    return b;
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    EP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    EP_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `src` may be reused on return
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    EP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    EP_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void gather_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride, const int64_t* idx,
                   int64_t n, int64_t bytes) override {
    if (n == 0 || bytes == 0) return;
    CHECK_LE(n, int64_t(INT32_MAX)) << "gather_rows: too many rows";
    cuda::launch_gather_rows(dst, dst_stride, src, src_stride, idx, n, bytes, stream_);
    EP_CUDA_CHECK(cudaGetLastError());
  }
  void sum_rows(float* out, const void* rows, DType dtype, const int64_t* pos, const float* scale,
                int64_t num_tokens, int topk, int64_t hidden) override {
    CHECK(dtype == DType::kF32 || dtype == DType::kBF16) << "EP rows are F32 or BF16";
    if (num_tokens == 0) return;
    cuda::launch_sum_rows(out, rows, dtype == DType::kBF16, pos, scale, num_tokens, topk, hidden, stream_);
    EP_CUDA_CHECK(cudaGetLastError());
  }
  void quant_fp8(void* dst, int64_t dst_stride, const void* x, DType x_dtype, int64_t n, int64_t hidden) override {
    CHECK(x_dtype == DType::kF32 || x_dtype == DType::kBF16) << "FP8 dispatch quantizes F32 or BF16 rows";
    CHECK_EQ(hidden % 128, 0) << "FP8 dispatch needs hidden % 128 == 0";
    if (n == 0) return;
    cuda::launch_quant_fp8(dst, dst_stride, x, x_dtype == DType::kBF16, n, hidden, stream_);
    EP_CUDA_CHECK(cudaGetLastError());
  }
  void dequant_fp8(void* out, DType out_dtype, const void* src, int64_t src_stride, int64_t n,
                   int64_t hidden) override {
    if (n == 0) return;
    cuda::launch_dequant_fp8(out, out_dtype == DType::kBF16, src, src_stride, n, hidden, stream_);
    EP_CUDA_CHECK(cudaGetLastError());
  }
  void wait_compute() override {
    EP_CUDA_CHECK(cudaEventRecord(compute_done_, compute_));
    EP_CUDA_CHECK(cudaStreamWaitEvent(stream_, compute_done_, 0));
  }
  void release_compute() override {
    EP_CUDA_CHECK(cudaEventRecord(exchange_done_, stream_));
    EP_CUDA_CHECK(cudaStreamWaitEvent(compute_, exchange_done_, 0));
  }
  void synchronize() override { EP_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t compute_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t compute_done_ = nullptr, exchange_done_ = nullptr;
};

}  // namespace

std::unique_ptr<EpMemory> make_cuda_ep_memory(cluster::StreamHandle compute) {
  return std::make_unique<CudaEpMemory>(static_cast<cudaStream_t>(compute));
}

}  // namespace v4rt::parallel
