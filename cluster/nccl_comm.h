// SPDX-License-Identifier: MIT
// NcclComm: cluster::Comm on device memory over NCCL. Bootstrapped through MPI: group rank 0 makes
// the unique id, MPI_Bcast shares it. The communicator is created non-blocking, so start-up and
// every collective can be bounded by CommOptions::timeout_s: while waiting, ncclCommGetAsyncError
// is polled, and a communicator that errors or runs past its deadline is aborted
// (ncclCommAbort) before the fatal error that names the group and the collective.
// Collectives are enqueued on the communicator's stream and return at once; synchronize() waits.
// One GPU per rank: call bind_local_device(local_rank) before constructing.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cluster/comm.h"
#include "cluster/watchdog.h"

namespace v4rt::cluster {

// Selects GPU local_rank % device_count for this process; returns it. Fails when there is no GPU.
int bind_local_device(int local_rank);

class NcclComm final : public Comm {
 public:
  // `comm` is not kept (only used to bootstrap). `stream` nullptr: the communicator owns a stream.
  NcclComm(MPI_Comm comm, CommOptions options, std::vector<int> world_ranks = {}, cudaStream_t stream = nullptr);
  ~NcclComm() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::kCuda; }
  cudaStream_t cuda_stream() const { return stream_; }
  // Later collectives are enqueued on `stream` (nullptr: the communicator's own stream).
  void set_stream(StreamHandle stream) override;
  StreamHandle stream() const override { return stream_; }

  void all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op = ReduceOp::kSum) override;
  void all_gather(const void* send, void* recv, int64_t count, DType dtype) override;
  void all_gatherv(const void* send, int64_t send_count, void* recv, std::span<const int64_t> recv_counts,
                   std::span<const int64_t> recv_displs, DType dtype) override;
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                      ReduceOp op = ReduceOp::kSum) override;
  void all_to_all(const void* send, void* recv, int64_t count, DType dtype) override;
  void all_to_allv(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_displs,
                   void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                   DType dtype) override;
  void broadcast(void* buf, int64_t count, DType dtype, int root) override;
  void barrier() override;
  // Waits for the enqueued work, polling async errors against the deadline.
  void synchronize() override;

 private:
  // Handles a call's result: errors are fatal; with `poll`, ncclInProgress is polled to completion
  // (calls inside ncclGroupStart/End only enqueue and are not polled).
  void check(ncclResult_t result, const char* what, bool poll = true);
  void wait_ready(const char* what);
  [[noreturn]] void fail(const std::string& why);
  void copy_local(void* dst, const void* src, size_t bytes);
  // Records the completion event of the work just enqueued, for the watchdog's deadline.
  void mark_enqueued();
  std::string who() const;  // "NCCL communicator 'tp' (world rank 3, rank 1 of 2, device 1, host h)"

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaStream_t own_stream_ = nullptr;  // the communicator's own stream, when it made one
  cudaEvent_t done_ = nullptr;         // recorded after each enqueued collective
  std::unique_ptr<CommWatchdog> watchdog_;  // async errors and deadlines without synchronize()
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  void* barrier_buf_ = nullptr;  // one float on the device
  std::string last_op_ = "init";
};

}  // namespace v4rt::cluster
