// SPDX-License-Identifier: MIT
// Which Comm a process group gets (docs/COMM.md). Pure: no MPI, no CUDA, so the rule is unit-tested
// on any machine. Every member of a group evaluates it on the same gathered placements, so all
// members agree without another exchange:
//   - CPU ranks (device -1)                      -> MpiComm: host buffers, MPI collectives.
//   - CUDA ranks, each on its own GPU            -> NcclComm: device buffers, NCCL on the stream.
//   - CUDA ranks, two or more on one GPU         -> StagedComm: device buffers copied to the host,
//     exchanged over MPI and copied back (NCCL refuses two ranks of a communicator on one GPU; the
//     staged Comm exists for exactly this, e.g. testing a 4-rank layout on one H200).
//   - CUDA ranks in a build without NCCL         -> StagedComm as well.
// A group that mixes CPU and CUDA ranks is a configuration error (v4rt::Error naming the ranks).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace v4rt::cluster {

enum class CommBackend : uint8_t { kMpi, kNccl, kStaged };
std::string_view comm_backend_name(CommBackend backend);  // "mpi", "nccl", "staged"

// Where one rank runs: its host name and CUDA device ordinal (-1: a CPU rank).
struct RankPlacement {
  std::string host;
  int device = -1;
  int world_rank = 0;  // for messages
};

struct CommChoice {
  CommBackend backend = CommBackend::kMpi;
  std::string reason;  // one line for the start-up log ("world ranks 0 and 1 share GPU 0 on h1")
};

// members: the placements of one group's members, in group-rank order (non-empty).
CommChoice choose_comm(std::span<const RankPlacement> members, bool nccl_built);

}  // namespace v4rt::cluster
