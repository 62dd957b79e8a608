// SPDX-License-Identifier: MIT
// DeviceStaging over the CUDA runtime (see staged_comm.h). Built with V4RT_ENABLE_CUDA.
#include <cuda_runtime.h>

#include "cluster/check.h"
#include "cluster/staged_comm.h"

#define V4RT_CLUSTER_CUDA_CHECK(call) \
  V4RT_CHECK_GEN(call, cudaSuccess, cudaGetErrorString, ::v4rt::cluster::check_context)

namespace v4rt::cluster {
namespace {

class CudaStaging final : public DeviceStaging {
 public:
  Device device() const override { return Device::kCuda; }
  void to_host(void* dst, const void* src, size_t bytes, StreamHandle stream) override {
    auto s = static_cast<cudaStream_t>(stream);
    V4RT_CLUSTER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
    V4RT_CLUSTER_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  void to_device(void* dst, const void* src, size_t bytes, StreamHandle stream) override {
    auto s = static_cast<cudaStream_t>(stream);
    V4RT_CLUSTER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    V4RT_CLUSTER_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  void synchronize(StreamHandle stream) override {
    V4RT_CLUSTER_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  }
};

}  // namespace

std::unique_ptr<DeviceStaging> make_cuda_staging() { return std::make_unique<CudaStaging>(); }

}  // namespace v4rt::cluster
