// SPDX-License-Identifier: MIT
// Process groups of a layout: rank arithmetic (pure) and MPI sub-communicators (see groups.h).
#include "cluster/groups.h"

#include <glog/logging.h>
#include <mpi.h>

#include "cluster/check.h"
#include "cluster/mpi_comm.h"
#include "cluster/world.h"

namespace v4rt::cluster {

std::string_view group_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::kWorld: return "world";
    case GroupKind::kTP: return "tp";
    case GroupKind::kSP: return "sp";
    case GroupKind::kEP: return "ep";
    case GroupKind::kDP: return "dp";
  }
  return "unknown";
}

GroupCoords group_coords(int world_rank, const GroupShape& shape) {
  CHECK(shape.tp > 0 && shape.sp > 0 && shape.dp > 0 && shape.ep > 0) << "bad group shape";
  CHECK(world_rank >= 0 && world_rank < shape.world()) << "world rank " << world_rank;
  GroupCoords c;
  c.tp_idx = world_rank % shape.tp;
  c.sp_idx = (world_rank / shape.tp) % shape.sp;
  c.dp_idx = world_rank / (shape.tp * shape.sp);
  c.ep_idx = world_rank % shape.ep;
  c.ep_group = world_rank / shape.ep;
  return c;
}

std::vector<int> group_members(GroupKind kind, int world_rank, const GroupShape& shape) {
  const GroupCoords c = group_coords(world_rank, shape);
  auto rank_of = [&](int dp_idx, int sp_idx, int tp_idx) {
    return (dp_idx * shape.sp + sp_idx) * shape.tp + tp_idx;
  };
  std::vector<int> out;
  switch (kind) {
    case GroupKind::kWorld:
      for (int r = 0; r < shape.world(); ++r) out.push_back(r);
      break;
    case GroupKind::kTP:
      for (int t = 0; t < shape.tp; ++t) out.push_back(rank_of(c.dp_idx, c.sp_idx, t));
      break;
    case GroupKind::kSP:
      for (int s = 0; s < shape.sp; ++s) out.push_back(rank_of(c.dp_idx, s, c.tp_idx));
      break;
    case GroupKind::kDP:
      for (int d = 0; d < shape.dp; ++d) out.push_back(rank_of(d, c.sp_idx, c.tp_idx));
      break;
    case GroupKind::kEP:
      CHECK_EQ(shape.world() % shape.ep, 0) << "ep " << shape.ep << " must divide the world";
      for (int e = 0; e < shape.ep; ++e) out.push_back(c.ep_group * shape.ep + e);
      break;
  }
  return out;
}

Comm& ProcessGroups::get(GroupKind kind) const {
  Comm* comm = nullptr;
  switch (kind) {
    case GroupKind::kWorld: comm = world.get(); break;
    case GroupKind::kTP: comm = tp.get(); break;
    case GroupKind::kSP: comm = sp.get(); break;
    case GroupKind::kEP: comm = ep.get(); break;
    case GroupKind::kDP: comm = dp.get(); break;
  }
  CHECK(comm != nullptr) << "process group " << group_name(kind) << " was not created";
  return *comm;
}

namespace {

// One sub-communicator: colour = the group's first world rank, key = position in the group.
std::unique_ptr<Comm> split_group(GroupKind kind, int world_rank, const GroupShape& shape,
                                  double timeout_s) {
  std::vector<int> members = group_members(kind, world_rank, shape);
  int key = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == world_rank) key = int(i);
  }
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, members.front(), key, &sub));
  CommOptions options;
  options.name = std::string(group_name(kind));
  options.timeout_s = timeout_s;
  auto comm = std::make_unique<MpiComm>(sub, options, members);
  MPI_CHECK(MPI_Comm_free(&sub));
  return comm;
}

// Warns when the members of a group live on more than one node.
void warn_if_spans_nodes(const Comm& comm, int node_idx) {
  int lo = node_idx, hi = node_idx;
  // Collective over the group; cheap, start-up only.
  auto& mpi = static_cast<const MpiComm&>(comm);
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT, MPI_MIN, mpi.raw()));
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT, MPI_MAX, mpi.raw()));
  if (lo != hi && comm.rank() == 0) {
    LOG(WARNING) << "process group '" << comm.name() << "' spans nodes " << lo << ".." << hi
                 << ": its collectives leave NVLink (place ranks by slot or shrink the group)";
  }
}

}  // namespace

std::unique_ptr<Comm> make_world_comm(const CommOptions& options) {
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, options);
}

ProcessGroups make_mpi_groups(const GroupShape& shape, double timeout_s) {
  int world_rank = 0, world_size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  CHECK_EQ(shape.world(), world_size) << "dp*sp*tp = " << shape.world() << " != world size";
  CHECK_EQ(world_size % shape.ep, 0) << "ep " << shape.ep << " must divide world " << world_size;
  ProcessGroups groups;
  groups.shape = shape;
  groups.world = split_group(GroupKind::kWorld, world_rank, shape, timeout_s);
  groups.tp = split_group(GroupKind::kTP, world_rank, shape, timeout_s);
  groups.sp = split_group(GroupKind::kSP, world_rank, shape, timeout_s);
  groups.ep = split_group(GroupKind::kEP, world_rank, shape, timeout_s);
  groups.dp = split_group(GroupKind::kDP, world_rank, shape, timeout_s);
  if (world_initialised()) {
    warn_if_spans_nodes(*groups.tp, world().node_idx);
    warn_if_spans_nodes(*groups.sp, world().node_idx);
  }
  return groups;
}

}  // namespace v4rt::cluster
