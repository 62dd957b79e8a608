// SPDX-License-Identifier: MIT
// The Comm selection rule (see comm_select.h).
#include "cluster/comm_select.h"

#include <glog/logging.h>

#include <sstream>

#include "common/check.h"

namespace v4rt::cluster {

std::string_view comm_backend_name(CommBackend backend) {
  switch (backend) {
    case CommBackend::kMpi: return "mpi";
    case CommBackend::kNccl: return "nccl";
    case CommBackend::kStaged: return "staged";
  }
  return "unknown";
}

CommChoice choose_comm(std::span<const RankPlacement> members, bool nccl_built) {
  CHECK(!members.empty()) << "choose_comm: a group has at least one member";
  int cpu = 0;
  for (const RankPlacement& m : members) cpu += m.device < 0 ? 1 : 0;
  if (cpu == int(members.size())) return {CommBackend::kMpi, "CPU ranks: MPI on host memory"};
  if (cpu > 0) {
    std::ostringstream os;
    os << "a process group mixes CPU and CUDA ranks:";
    for (const RankPlacement& m : members) {
      os << " world rank " << m.world_rank << (m.device < 0 ? " (cpu)" : " (cuda)");
    }
    os << "; run every rank with the same --backend";
    throw Error(os.str());
  }
  for (size_t i = 0; i < members.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (members[i].host == members[j].host && members[i].device == members[j].device) {
        std::ostringstream os;
        os << "world ranks " << members[j].world_rank << " and " << members[i].world_rank << " share GPU "
           << members[i].device << " on host " << members[i].host
           << ": NCCL needs one GPU per rank, collectives are staged through host memory and MPI";
        return {CommBackend::kStaged, os.str()};
      }
    }
  }
  if (!nccl_built) {
    return {CommBackend::kStaged, "this build has no NCCL (V4RT_ENABLE_NCCL=OFF): collectives are staged "
                                  "through host memory and MPI"};
  }
  return {CommBackend::kNccl, "one GPU per rank: NCCL on device memory"};
}

}  // namespace v4rt::cluster
