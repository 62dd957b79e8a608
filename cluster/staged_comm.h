// SPDX-License-Identifier: MIT
// StagedComm: cluster::Comm on device memory for ranks that share a GPU (comm_select.h). Each
// collective waits for the work already on the stream, copies the device input to host memory,
// runs the collective on a host Comm (an MpiComm, with its deadline and its diagnosis of absent
// ranks) and copies the result back to the device. The copies live inside the Comm: callers pass
// device buffers exactly as they would to NcclComm. It returns with the result on the device.
//
// The device's copies go through DeviceStaging, so the staging logic runs (and is tested) on CPU
// ranks with a host stand-in; make_cuda_staging() (built with V4RT_ENABLE_CUDA) is the real one.
// Byte counters count the collective's logical bytes (comm.h), as every Comm does; the staging
// copies are counted separately (staged_bytes()).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cluster/comm.h"

namespace v4rt::cluster {

// Copies between a device's memory and the host, ordered on a stream.
class DeviceStaging {
 public:
  virtual ~DeviceStaging() = default;
  virtual Device device() const = 0;
  // Waits for the work on `stream`, then copies `bytes` from device `src` to host `dst`.
  virtual void to_host(void* dst, const void* src, size_t bytes, StreamHandle stream) = 0;
  // Copies `bytes` from host `src` to device `dst` on `stream` and waits for the copy (the host
  // buffer is reused by the next collective).
  virtual void to_device(void* dst, const void* src, size_t bytes, StreamHandle stream) = 0;
  virtual void synchronize(StreamHandle stream) = 0;
};

#if defined(V4RT_HAVE_CUDA)
// cudaMemcpyAsync on the stream, then cudaStreamSynchronize (cluster/cuda_staging.cpp).
std::unique_ptr<DeviceStaging> make_cuda_staging();
#endif

class StagedComm final : public Comm {
 public:
  // `host` runs the collectives (its name and world ranks are taken over); `staging` moves the data.
  StagedComm(std::unique_ptr<Comm> host, std::unique_ptr<DeviceStaging> staging, StreamHandle stream = nullptr);

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  Device device() const override { return staging_->device(); }

  void all_reduce(const void* send, void* recv, int64_t count, DType dtype,
                  ReduceOp op = ReduceOp::kSum) override;
  void all_gather(const void* send, void* recv, int64_t count, DType dtype) override;
  void all_gatherv(const void* send, int64_t send_count, void* recv,
                   std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                   DType dtype) override;
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                      ReduceOp op = ReduceOp::kSum) override;
  void all_to_all(const void* send, void* recv, int64_t count, DType dtype) override;
  void all_to_allv(const void* send, std::span<const int64_t> send_counts,
                   std::span<const int64_t> send_displs, void* recv,
                   std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                   DType dtype) override;
  void broadcast(void* buf, int64_t count, DType dtype, int root) override;
  void barrier() override;
  void synchronize() override { staging_->synchronize(stream_); }
  void set_stream(StreamHandle stream) override { stream_ = stream; }
  StreamHandle stream() const override { return stream_; }

  // Bytes copied device -> host and host -> device so far.
  uint64_t staged_bytes() const { return staged_bytes_; }

 private:
  // Host copies of blocks [displs[p], displs[p] + counts[p]) of a device buffer (elements of es).
  void blocks_to_host(uint8_t* host, const void* dev, std::span<const int64_t> counts,
                      std::span<const int64_t> displs, size_t es);
  void blocks_to_device(void* dev, const uint8_t* host, std::span<const int64_t> counts,
                        std::span<const int64_t> displs, size_t es);
  void down(void* host, const void* dev, size_t bytes);
  void up(void* dev, const void* host, size_t bytes);
  // Counts the host Comm's bytes of the call just made as this Comm's.
  void count_from_host(CollectiveKind kind, uint64_t before);

  std::unique_ptr<Comm> host_;
  std::unique_ptr<DeviceStaging> staging_;
  StreamHandle stream_ = nullptr;
  std::vector<uint8_t> send_, recv_;  // host staging buffers, grown on demand
  uint64_t staged_bytes_ = 0;
};

}  // namespace v4rt::cluster
