// SPDX-License-Identifier: MIT
// Backend-independent parts of cluster::Comm: names and the logical byte-count formulas.
#include "cluster/comm.h"

#include <glog/logging.h>

namespace v4rt::cluster {

bool Comm::barrier_within(double /*timeout_s*/, std::vector<int>* absent) {
  barrier();
  if (absent) absent->clear();
  return true;
}

std::string_view collective_name(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllReduce: return "all_reduce";
    case CollectiveKind::kAllGather: return "all_gather";
    case CollectiveKind::kAllGatherV: return "all_gatherv";
    case CollectiveKind::kReduceScatter: return "reduce_scatter";
    case CollectiveKind::kAllToAll: return "all_to_all";
    case CollectiveKind::kAllToAllV: return "all_to_allv";
    case CollectiveKind::kBroadcast: return "broadcast";
    case CollectiveKind::kBarrier: return "barrier";
  }
  return "unknown";
}

uint64_t ByteCounters::total_bytes() const {
  uint64_t total = 0;
  for (uint64_t b : bytes) total += b;
  return total;
}

uint64_t all_reduce_bytes(int size, int64_t count, DType dtype) {
  CHECK_GT(size, 0);
  return 2ull * uint64_t(size - 1) * uint64_t(count) * dtype_size(dtype) / uint64_t(size);
}

uint64_t all_to_allv_bytes(int rank, std::span<const int64_t> send_counts, DType dtype) {
  uint64_t elems = 0;
  for (size_t p = 0; p < send_counts.size(); ++p) {
    if (int(p) != rank) elems += uint64_t(send_counts[p]);
  }
  return elems * dtype_size(dtype);
}

}  // namespace v4rt::cluster
