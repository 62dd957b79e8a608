// SPDX-License-Identifier: MIT
// cluster::Comm: the one communicator interface of v4rt. parallel/ and model/ talk to other ranks
// only through it. Two implementations exist: MpiComm (cluster/mpi_comm.h) on host memory, used by
// CI and CPU nodes, and NcclComm (cluster/nccl_comm.h, built with V4RT_ENABLE_NCCL) on device
// memory, enqueued on the communicator's stream. The interface is device-agnostic: pointers are
// raw, counts are in elements of `dtype`, and device() says which memory the pointers live in.
//
// Completion: MpiComm returns when the collective is complete. NcclComm returns once the work is
// enqueued; synchronize() waits for it. Code written against Comm calls synchronize() before it
// reads results on the host.
//
// Timeouts: every collective has a deadline (CommOptions::timeout_s). A collective that does not
// complete in time is a fatal error naming the collective, the group and, when known, the ranks
// that did not arrive; the failure function installed by cluster::init_world then aborts the job.
//
// Byte counters: every Comm counts the bytes this rank sends to *other* ranks per collective kind,
// by the logical formulas below (independent of the algorithm MPI/NCCL picks), so a test can check
// "bytes sent per step per rank == analytic count". n = size(), e = dtype_size(dtype):
//   all_reduce      2 * (n-1) * count * e / n      (reduce-scatter + all-gather, integer division)
//   all_gather      (n-1) * count * e
//   all_gatherv     (n-1) * send_count * e
//   reduce_scatter  (n-1) * recv_count * e
//   all_to_all      (n-1) * count * e              (count = elements per peer)
//   all_to_allv     sum over peers p != rank() of send_counts[p] * e
//   broadcast       root: (n-1) * count * e; others 0
//   barrier         0 (calls are still counted)
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "common/tensor.h"

namespace v4rt::cluster {

enum class ReduceOp : uint8_t { kSum, kMax };

// A stream as cluster/ sees it: a cudaStream_t on CUDA ranks, nullptr on host ranks (and for "the
// Comm's own stream"). Opaque so that this interface needs no CUDA header.
using StreamHandle = void*;

enum class CollectiveKind : uint8_t {
  kAllReduce, kAllGather, kAllGatherV, kReduceScatter, kAllToAll, kAllToAllV, kBroadcast, kBarrier,
};
constexpr int kNumCollectiveKinds = 8;
std::string_view collective_name(CollectiveKind kind);  // "all_reduce", "all_to_allv", ...

// Bytes this rank sent to other ranks and number of calls, per collective kind.
struct ByteCounters {
  std::array<uint64_t, kNumCollectiveKinds> bytes{};
  std::array<uint64_t, kNumCollectiveKinds> calls{};
  uint64_t bytes_of(CollectiveKind kind) const { return bytes[size_t(kind)]; }
  uint64_t calls_of(CollectiveKind kind) const { return calls[size_t(kind)]; }
  uint64_t total_bytes() const;
};

struct CommOptions {
  std::string name = "world";  // group name used in messages: "world", "tp", "sp", "ep", "dp"
  double timeout_s = 60.0;     // deadline of every collective; <= 0 disables it
};

class Comm {
 public:
  virtual ~Comm() = default;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  virtual int rank() const = 0;               // rank inside this group
  virtual int size() const = 0;               // number of ranks in this group
  virtual Device device() const = 0;          // where the buffers passed in must live
  const std::string& name() const { return options_.name; }
  const CommOptions& options() const { return options_; }
  // World ranks of the members of this group, in group-rank order (for messages and plans).
  const std::vector<int>& world_ranks() const { return world_ranks_; }

  // recv[i] = op over ranks of send[i], i < count. send == recv is allowed (in place).
  virtual void all_reduce(const void* send, void* recv, int64_t count, DType dtype,
                          ReduceOp op = ReduceOp::kSum) = 0;
  // recv = [size()][count], block r from rank r. send: [count].
  virtual void all_gather(const void* send, void* recv, int64_t count, DType dtype) = 0;
  // recv block r = recv + recv_displs[r] elements, recv_counts[r] elements; send: [send_count].
  // recv_counts[rank()] must equal send_count. Spans have size() entries.
  virtual void all_gatherv(const void* send, int64_t send_count, void* recv,
                           std::span<const int64_t> recv_counts,
                           std::span<const int64_t> recv_displs, DType dtype) = 0;
  // send = [size()][recv_count]; recv = op over ranks of block rank(). recv: [recv_count].
  virtual void reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                              ReduceOp op = ReduceOp::kSum) = 0;
  // send = [size()][count], block p goes to rank p; recv = [size()][count], block p came from p.
  virtual void all_to_all(const void* send, void* recv, int64_t count, DType dtype) = 0;
  // Block p of send (send_displs[p], send_counts[p] elements) goes to rank p; block p of recv
  // (recv_displs[p], recv_counts[p]) comes from rank p. Zero counts are allowed. Spans: size().
  virtual void all_to_allv(const void* send, std::span<const int64_t> send_counts,
                           std::span<const int64_t> send_displs, void* recv,
                           std::span<const int64_t> recv_counts,
                           std::span<const int64_t> recv_displs, DType dtype) = 0;
  // buf: [count]; root's data ends up on every rank.
  virtual void broadcast(void* buf, int64_t count, DType dtype, int root) = 0;
  virtual void barrier() = 0;
  // A barrier that reports instead of aborting: true once every rank has arrived within
  // `timeout_s`; false past it, with the world ranks that did not arrive in *absent (may be
  // nullptr). NOTE: after false the communicator is unusable (the barrier stays pending), so the
  // caller ends the job. The default waits under the communicator's own deadline.
  virtual bool barrier_within(double timeout_s, std::vector<int>* absent);
  // Waits for enqueued work (no-op for host backends).
  virtual void synchronize() {}
  // Device Comms order their collectives on this stream (the compute backend's, so a collective
  // runs after the kernel that wrote its input, and the next kernel after it); nullptr selects the
  // Comm's own stream. Host Comms ignore it.
  virtual void set_stream(StreamHandle stream) { (void)stream; }
  virtual StreamHandle stream() const { return nullptr; }

  const ByteCounters& counters() const { return counters_; }
  void reset_counters() { counters_ = ByteCounters{}; }

 protected:
  Comm(CommOptions options, std::vector<int> world_ranks)
      : options_(std::move(options)), world_ranks_(std::move(world_ranks)) {}
  // Records one call of `kind` with the logical byte count from the table above.
  void count_bytes(CollectiveKind kind, uint64_t bytes) {
    counters_.bytes[size_t(kind)] += bytes;
    counters_.calls[size_t(kind)] += 1;
  }

 private:
  CommOptions options_;
  std::vector<int> world_ranks_;
  ByteCounters counters_;
};

// Logical byte counts of the table above, shared by every backend.
uint64_t all_reduce_bytes(int size, int64_t count, DType dtype);
uint64_t all_to_allv_bytes(int rank, std::span<const int64_t> send_counts, DType dtype);

}  // namespace v4rt::cluster
