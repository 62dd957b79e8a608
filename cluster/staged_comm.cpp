// SPDX-License-Identifier: MIT
// StagedComm: device -> host -> host Comm -> device, inside the Comm (see staged_comm.h).
#include "cluster/staged_comm.h"

#include <glog/logging.h>

#include <algorithm>

namespace v4rt::cluster {
namespace {

// Elements spanned by blocks [displs[p], displs[p] + counts[p]).
int64_t extent(std::span<const int64_t> counts, std::span<const int64_t> displs) {
  CHECK_EQ(counts.size(), displs.size());
  int64_t end = 0;
  for (size_t p = 0; p < counts.size(); ++p) {
    if (counts[p] > 0) end = std::max(end, displs[p] + counts[p]);
  }
  return end;
}

}  // namespace

StagedComm::StagedComm(std::unique_ptr<Comm> host, std::unique_ptr<DeviceStaging> staging, StreamHandle stream)
    : Comm(host->options(), host->world_ranks()), host_(std::move(host)), staging_(std::move(staging)),
      stream_(stream) {
  CHECK(host_->device() == Device::kHost) << "StagedComm '" << name() << "' needs a host Comm to stage through";
}

void StagedComm::down(void* host, const void* dev, size_t bytes) {
  if (bytes == 0) return;
  staging_->to_host(host, dev, bytes, stream_);
  staged_bytes_ += bytes;
}

void StagedComm::up(void* dev, const void* host, size_t bytes) {
  if (bytes == 0) return;
  staging_->to_device(dev, host, bytes, stream_);
  staged_bytes_ += bytes;
}

void StagedComm::blocks_to_host(uint8_t* host, const void* dev, std::span<const int64_t> counts,
                                std::span<const int64_t> displs, size_t es) {
  for (size_t p = 0; p < counts.size(); ++p) {
    if (counts[p] > 0) {
      down(host + size_t(displs[p]) * es, static_cast<const uint8_t*>(dev) + size_t(displs[p]) * es,
           size_t(counts[p]) * es);
    }
  }
}

void StagedComm::blocks_to_device(void* dev, const uint8_t* host, std::span<const int64_t> counts,
                                  std::span<const int64_t> displs, size_t es) {
  // Only the blocks: the gaps between them in `dev` keep their contents, as with NCCL.
  for (size_t p = 0; p < counts.size(); ++p) {
    if (counts[p] > 0) {
      up(static_cast<uint8_t*>(dev) + size_t(displs[p]) * es, host + size_t(displs[p]) * es,
         size_t(counts[p]) * es);
    }
  }
}

void StagedComm::count_from_host(CollectiveKind kind, uint64_t before) {
  count_bytes(kind, host_->counters().bytes_of(kind) - before);
}

void StagedComm::all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kAllReduce);
  const size_t bytes = size_t(count) * dtype_size(dtype);
  recv_.resize(std::max(recv_.size(), bytes));
  down(recv_.data(), send, bytes);
  host_->all_reduce(recv_.data(), recv_.data(), count, dtype, op);
  up(recv, recv_.data(), bytes);
  count_from_host(CollectiveKind::kAllReduce, before);
}

void StagedComm::all_gather(const void* send, void* recv, int64_t count, DType dtype) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kAllGather);
  const size_t bytes = size_t(count) * dtype_size(dtype);
  send_.resize(std::max(send_.size(), bytes));
  recv_.resize(std::max(recv_.size(), bytes * size_t(size())));
  down(send_.data(), send, bytes);
  host_->all_gather(send_.data(), recv_.data(), count, dtype);
  up(recv, recv_.data(), bytes * size_t(size()));
  count_from_host(CollectiveKind::kAllGather, before);
}

void StagedComm::all_gatherv(const void* send, int64_t send_count, void* recv,
                             std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                             DType dtype) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kAllGatherV);
  const size_t es = dtype_size(dtype);
  send_.resize(std::max(send_.size(), size_t(send_count) * es));
  recv_.resize(std::max(recv_.size(), size_t(extent(recv_counts, recv_displs)) * es));
  down(send_.data(), send, size_t(send_count) * es);
  host_->all_gatherv(send_.data(), send_count, recv_.data(), recv_counts, recv_displs, dtype);
  blocks_to_device(recv, recv_.data(), recv_counts, recv_displs, es);
  count_from_host(CollectiveKind::kAllGatherV, before);
}

void StagedComm::reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype, ReduceOp op) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kReduceScatter);
  const size_t bytes = size_t(recv_count) * dtype_size(dtype);
  send_.resize(std::max(send_.size(), bytes * size_t(size())));
  recv_.resize(std::max(recv_.size(), bytes));
  down(send_.data(), send, bytes * size_t(size()));
  host_->reduce_scatter(send_.data(), recv_.data(), recv_count, dtype, op);
  up(recv, recv_.data(), bytes);
  count_from_host(CollectiveKind::kReduceScatter, before);
}

void StagedComm::all_to_all(const void* send, void* recv, int64_t count, DType dtype) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kAllToAll);
  const size_t bytes = size_t(count) * dtype_size(dtype) * size_t(size());
  send_.resize(std::max(send_.size(), bytes));
  recv_.resize(std::max(recv_.size(), bytes));
  down(send_.data(), send, bytes);
  host_->all_to_all(send_.data(), recv_.data(), count, dtype);
  up(recv, recv_.data(), bytes);
  count_from_host(CollectiveKind::kAllToAll, before);
}

void StagedComm::all_to_allv(const void* send, std::span<const int64_t> send_counts,
                             std::span<const int64_t> send_displs, void* recv,
                             std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                             DType dtype) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kAllToAllV);
  const size_t es = dtype_size(dtype);
  send_.resize(std::max(send_.size(), size_t(extent(send_counts, send_displs)) * es));
  recv_.resize(std::max(recv_.size(), size_t(extent(recv_counts, recv_displs)) * es));
  blocks_to_host(send_.data(), send, send_counts, send_displs, es);
  host_->all_to_allv(send_.data(), send_counts, send_displs, recv_.data(), recv_counts, recv_displs, dtype);
  blocks_to_device(recv, recv_.data(), recv_counts, recv_displs, es);
  count_from_host(CollectiveKind::kAllToAllV, before);
}

void StagedComm::broadcast(void* buf, int64_t count, DType dtype, int root) {
  const uint64_t before = host_->counters().bytes_of(CollectiveKind::kBroadcast);
  const size_t bytes = size_t(count) * dtype_size(dtype);
  recv_.resize(std::max(recv_.size(), bytes));
  if (rank() == root) down(recv_.data(), buf, bytes);
  host_->broadcast(recv_.data(), count, dtype, root);
  if (rank() != root) up(buf, recv_.data(), bytes);
  count_from_host(CollectiveKind::kBroadcast, before);
}

void StagedComm::barrier() {
  staging_->synchronize(stream_);
  host_->barrier();
  count_bytes(CollectiveKind::kBarrier, 0);
}

}  // namespace v4rt::cluster
