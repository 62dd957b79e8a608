// SPDX-License-Identifier: MIT
// Process groups of a layout: rank arithmetic (pure) and MPI sub-communicators (see groups.h).
#include "cluster/groups.h"

#include <glog/logging.h>
#include <mpi.h>

#include <unistd.h>

#include <sstream>

#include "cluster/check.h"
#include "cluster/mpi_comm.h"
#include "cluster/staged_comm.h"
#include "cluster/world.h"
#include "common/check.h"
#if defined(V4RT_HAVE_NCCL)
#include "cluster/nccl_comm.h"
#endif

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

Comm& ProcessGroups::get_host(GroupKind kind) const {
  const std::unique_ptr<Comm>* host = nullptr;
  switch (kind) {
    case GroupKind::kWorld: host = &host_world; break;
    case GroupKind::kTP: host = &host_tp; break;
    case GroupKind::kSP: host = &host_sp; break;
    case GroupKind::kEP: host = &host_ep; break;
    case GroupKind::kDP: host = &host_dp; break;
  }
  if (host && *host) return **host;
  Comm& comm = get(kind);
  CHECK(comm.device() == Device::kHost) << "process group " << group_name(kind) << " has no host Comm";
  return comm;
}

namespace {

constexpr int kHostNameBytes = 128;

// One MPI sub-communicator: colour = the group's first world rank, key = position in the group.
MPI_Comm split_group(const std::vector<int>& members, int world_rank) {
  int key = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == world_rank) key = int(i);
  }
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, members.front(), key, &sub));
  return sub;
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

// Every world rank's (host, device), in world-rank order.
std::vector<RankPlacement> gather_placements(int world_rank, int world_size, int device) {
  char host[kHostNameBytes] = {0};
  gethostname(host, sizeof host - 1);
  std::vector<char> hosts(size_t(world_size) * kHostNameBytes);
  std::vector<int> devices(static_cast<size_t>(world_size));
  MPI_CHECK(MPI_Allgather(host, kHostNameBytes, MPI_CHAR, hosts.data(), kHostNameBytes, MPI_CHAR, MPI_COMM_WORLD));
  MPI_CHECK(MPI_Allgather(&device, 1, MPI_INT, devices.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::vector<RankPlacement> out(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) {
    out[size_t(r)].host = std::string(&hosts[size_t(r) * kHostNameBytes]);
    out[size_t(r)].device = devices[size_t(r)];
    out[size_t(r)].world_rank = r;
  }
  (void)world_rank;
  return out;
}

bool nccl_built() {
#if defined(V4RT_HAVE_NCCL)
  return true;
#else
  return false;
#endif
}

struct GroupComms {
  std::unique_ptr<Comm> comm, host;
  CommBackend backend = CommBackend::kMpi;
};

GroupComms make_group(GroupKind kind, int world_rank, const GroupShape& shape,
                      const std::vector<RankPlacement>& placements, const GroupOptions& options) {
  const std::vector<int> members = group_members(kind, world_rank, shape);
  std::vector<RankPlacement> mine;
  for (int m : members) mine.push_back(placements[size_t(m)]);
  const CommChoice choice = choose_comm(mine, nccl_built());
  CommOptions co;
  co.name = std::string(group_name(kind));
  co.timeout_s = options.timeout_s;
  MPI_Comm sub = split_group(members, world_rank);
  GroupComms out;
  out.backend = choice.backend;
  switch (choice.backend) {
    case CommBackend::kMpi:
      out.comm = std::make_unique<MpiComm>(sub, co, members);
      break;
    case CommBackend::kStaged:
#if defined(V4RT_HAVE_CUDA)
      out.comm = std::make_unique<StagedComm>(std::make_unique<MpiComm>(sub, co, members), make_cuda_staging(),
                                              options.stream);
      out.host = std::make_unique<MpiComm>(sub, co, members);
      break;
#else
      MPI_CHECK(MPI_Comm_free(&sub));
      throw Error("process group '" + co.name + "' has CUDA ranks but this build has no CUDA");
#endif
    case CommBackend::kNccl:
#if defined(V4RT_HAVE_NCCL)
      out.comm = std::make_unique<NcclComm>(sub, co, members, static_cast<cudaStream_t>(options.stream));
      out.host = std::make_unique<MpiComm>(sub, co, members);
      break;
#else
      LOG(FATAL) << "choose_comm picked NCCL in a build without it";
#endif
  }
  MPI_CHECK(MPI_Comm_free(&sub));
  const Comm& host = out.host ? *out.host : *out.comm;
  if (host.rank() == 0 && (world_rank == 0 || choice.backend == CommBackend::kStaged)) {
    std::ostringstream os;
    os << "process group '" << co.name << "' (world ranks";
    for (int m : members) os << " " << m;
    os << "): " << comm_backend_name(choice.backend) << " Comm; " << choice.reason;
    if (choice.backend == CommBackend::kStaged) {
      LOG(WARNING) << os.str() << " (for testing several ranks on one GPU; slower than NCCL)";
    } else {
      LOG(INFO) << os.str();
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<Comm> make_world_comm(const CommOptions& options) {
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, options);
}

ProcessGroups make_groups(const GroupShape& shape, const GroupOptions& options) {
  int world_rank = 0, world_size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  CHECK_EQ(shape.world(), world_size) << "dp*sp*tp = " << shape.world() << " != world size";
  CHECK_EQ(world_size % shape.ep, 0) << "ep " << shape.ep << " must divide world " << world_size;
  const std::vector<RankPlacement> placements = gather_placements(world_rank, world_size, options.device);
  ProcessGroups groups;
  groups.shape = shape;
  // The world first: a group mixing CPU and CUDA ranks then fails on every rank alike.
  const std::pair<GroupKind, std::pair<std::unique_ptr<Comm>*, std::unique_ptr<Comm>*>> order[] = {
      {GroupKind::kWorld, {&groups.world, &groups.host_world}}, {GroupKind::kTP, {&groups.tp, &groups.host_tp}},
      {GroupKind::kSP, {&groups.sp, &groups.host_sp}},          {GroupKind::kEP, {&groups.ep, &groups.host_ep}},
      {GroupKind::kDP, {&groups.dp, &groups.host_dp}}};
  for (const auto& [kind, slots] : order) {
    GroupComms g = make_group(kind, world_rank, shape, placements, options);
    *slots.first = std::move(g.comm);
    *slots.second = std::move(g.host);
    groups.backends[size_t(kind)] = g.backend;
  }
  if (world_initialised()) {
    warn_if_spans_nodes(groups.get_host(GroupKind::kTP), world().node_idx);
    warn_if_spans_nodes(groups.get_host(GroupKind::kSP), world().node_idx);
  }
  return groups;
}

ProcessGroups make_mpi_groups(const GroupShape& shape, double timeout_s) {
  GroupOptions options;
  options.timeout_s = timeout_s;
  return make_groups(shape, options);
}

}  // namespace v4rt::cluster
