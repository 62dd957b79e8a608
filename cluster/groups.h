// SPDX-License-Identifier: MIT
// Process groups of a parallel layout. World rank order is
//   world_rank = (dp_idx * sp + sp_idx) * tp + tp_idx
// so a TP group is tp consecutive ranks and a TP x SP block is tp*sp consecutive ranks: with
// mpirun's default by-slot placement they stay inside one node (NVLink). EP groups are blocks of
// ep consecutive ranks (normally the whole world); DP groups take one rank from each replica.
// The pure functions here need no MPI, so sharding plans and tests can use them anywhere.
#pragma once

#include <array>
#include <memory>
#include <string_view>
#include <vector>

#include "cluster/comm.h"
#include "cluster/comm_select.h"

namespace v4rt::cluster {

struct GroupShape {
  int tp = 1;
  int sp = 1;
  int ep = 1;
  int dp = 1;
  int world() const { return dp * sp * tp; }
};

enum class GroupKind : uint8_t { kWorld, kTP, kSP, kEP, kDP };
std::string_view group_name(GroupKind kind);  // "world", "tp", "sp", "ep", "dp"

struct GroupCoords {
  int tp_idx = 0;
  int sp_idx = 0;
  int dp_idx = 0;
  int ep_idx = 0;    // rank inside its EP group
  int ep_group = 0;  // which EP group
};
GroupCoords group_coords(int world_rank, const GroupShape& shape);
// World ranks of the `kind` group that holds `world_rank`, in group-rank order.
std::vector<int> group_members(GroupKind kind, int world_rank, const GroupShape& shape);

struct ProcessGroups {
  GroupShape shape;
  // The Comm of each group for this rank's compute backend (comm_select.h): MpiComm on CPU ranks,
  // NcclComm or StagedComm on CUDA ranks. Buffers passed to them live on that backend's device.
  std::unique_ptr<Comm> world, tp, sp, ep, dp;
  // Host-memory MpiComms of the same groups, made only where the backend's Comm is a device one:
  // for host-side metadata (routing counts, plans). get_host() falls back to the Comm above.
  std::unique_ptr<Comm> host_world, host_tp, host_sp, host_ep, host_dp;
  std::array<CommBackend, 5> backends{};  // by GroupKind
  Comm& get(GroupKind kind) const;
  Comm& get_host(GroupKind kind) const;
  CommBackend backend(GroupKind kind) const { return backends[size_t(kind)]; }
};

// How make_groups builds the Comms of this rank.
struct GroupOptions {
  double timeout_s = 60.0;        // deadline of every collective
  int device = -1;                // this rank's CUDA device; -1: a CPU rank (MpiComm everywhere)
  StreamHandle stream = nullptr;  // device Comms order their collectives on it (the backend's stream)
};

// Builds every group's Comm for this rank's backend (collective over MPI_COMM_WORLD): gathers each
// rank's (host, device), applies choose_comm per group, and logs the choice once per group kind on
// world rank 0 (a WARNING when ranks share a GPU and the staged Comm stands in for NCCL). Throws
// v4rt::Error when a group mixes CPU and CUDA ranks, or a device Comm is needed in a build without
// CUDA.
ProcessGroups make_groups(const GroupShape& shape, const GroupOptions& options);

// Builds MPI sub-communicators for `shape` over MPI_COMM_WORLD (collective over the world).
// CHECK-fails when shape.world() != world size or ep does not divide it (parallel::validate gives
// the user-facing errors first). Warns when a TP or SP group spans nodes.
ProcessGroups make_mpi_groups(const GroupShape& shape, double timeout_s = 60.0);
// A communicator over every rank of the MPI world (collective over the world), e.g. the plan link.
std::unique_ptr<Comm> make_world_comm(const CommOptions& options);

}  // namespace v4rt::cluster
