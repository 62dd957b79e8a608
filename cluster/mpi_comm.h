// SPDX-License-Identifier: MIT
// MpiComm: cluster::Comm on host memory over MPI. Every collective is the non-blocking MPI_I*
// form, completed by polling MPI_Test against a deadline (CommOptions::timeout_s). While waiting, a
// rank also answers "where are you?" probes from peers on a private duplicate communicator, so a
// rank that times out can name the ranks that never arrived. Counts travel as MPI ints: a single
// block is limited to INT_MAX elements (checked).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cluster/comm.h"

namespace v4rt::cluster {

class MpiComm final : public Comm {
 public:
  // Duplicates `comm` (the caller keeps ownership of its handle). `world_ranks` lists the world rank
  // of each member (empty: computed from MPI groups).
  MpiComm(MPI_Comm comm, CommOptions options, std::vector<int> world_ranks = {});
  ~MpiComm() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::kHost; }
  // The duplicated communicator (for bootstrapping other backends, e.g. the NCCL unique id).
  MPI_Comm raw() const { return comm_; }

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
  bool barrier_within(double timeout_s, std::vector<int>* absent) override;

  // Number of collectives started on this communicator (the sequence number in timeout messages).
  uint64_t sequence() const { return seq_; }

 private:
  // Polls `request` until complete or the deadline passes (then LOG(FATAL) with diagnostics).
  void wait(MPI_Request* request, CollectiveKind kind);
  void answer_probes();
  [[noreturn]] void fail_timeout(CollectiveKind kind, double waited_s);
  // After a deadline passed: asks every peer where it is. answers[p] = {seq, kind} of peer p's
  // collective, or kNoAnswer when it did not answer within a grace period.
  std::vector<uint64_t> probe_peers(CollectiveKind kind);

  MPI_Comm comm_ = MPI_COMM_NULL;   // collectives
  MPI_Comm diag_ = MPI_COMM_NULL;   // timeout probes and their answers
  int rank_ = 0;
  int size_ = 1;
  uint64_t seq_ = 0;                // collectives started so far
  int in_kind_ = -1;                // kind of the collective being waited on, -1 when idle
  std::vector<uint64_t> answer_buf_;  // [size_][2]: answers sent to each peer (seq, kind)
};

// World rank of every member of `comm`, in group-rank order.
std::vector<int> world_ranks_of(MPI_Comm comm);

// MPI datatype and reduce op for a v4rt dtype (CHECK-fails for unsupported combinations).
MPI_Datatype mpi_datatype(DType dtype);
MPI_Op mpi_op(ReduceOp op, DType dtype);

}  // namespace v4rt::cluster
