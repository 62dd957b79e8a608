// SPDX-License-Identifier: MIT
// MpiComm collectives against values each rank computes independently: every element encodes its
// source rank and index (small integers, exact in f32/bf16), so a misplaced or missing block shows
// up as a wrong value. Byte counters are checked against the formulas of cluster/comm.h, written
// out again here.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "cluster/groups.h"
#include "cluster/mpi_comm.h"
#include "common/dtype.h"
#include "tests/cluster/mpi_test.h"

namespace v4rt::cluster {
namespace {

using v4rt::testing::kTestTimeoutS;

std::unique_ptr<MpiComm> make_world() {
  CommOptions options;
  options.name = "world";
  options.timeout_s = kTestTimeoutS;
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, options);
}

TEST(MpiComm, AllReduceSumAndMax) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  const int64_t count = 1000;
  std::vector<float> send(count), recv(count, -1.f);
  for (int64_t i = 0; i < count; ++i) send[size_t(i)] = float(r * 1000 + i);
  comm->all_reduce(send.data(), recv.data(), count, DType::kF32);
  for (int64_t i = 0; i < count; ++i) {
    ASSERT_EQ(recv[size_t(i)], float(1000 * n * (n - 1) / 2 + n * i)) << "i=" << i;
  }
  // In place, max.
  comm->all_reduce(send.data(), send.data(), count, DType::kF32, ReduceOp::kMax);
  for (int64_t i = 0; i < count; ++i) ASSERT_EQ(send[size_t(i)], float((n - 1) * 1000 + i));
  EXPECT_EQ(comm->counters().calls_of(CollectiveKind::kAllReduce), 2u);
  EXPECT_EQ(comm->counters().bytes_of(CollectiveKind::kAllReduce),
            2 * (2ull * (n - 1) * count * 4 / n));
}

TEST(MpiComm, AllGather) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  const int64_t count = 37;
  std::vector<int32_t> send(count), recv(size_t(n * count), -1);
  for (int64_t i = 0; i < count; ++i) send[size_t(i)] = r * 100 + int32_t(i);
  comm->all_gather(send.data(), recv.data(), count, DType::kI32);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(recv[size_t(p * count + i)], p * 100 + i);
  }
  EXPECT_EQ(comm->counters().bytes_of(CollectiveKind::kAllGather), uint64_t(n - 1) * count * 4);
}

TEST(MpiComm, AllGatherVUnevenWithZeros) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  auto count_of = [](int p) { return int64_t((p * 3) % 4); };  // rank 0 sends nothing
  std::vector<int64_t> counts(static_cast<size_t>(n)), displs(static_cast<size_t>(n));
  int64_t total = 0;
  for (int p = 0; p < n; ++p) {
    counts[size_t(p)] = count_of(p);
    displs[size_t(p)] = total + 1;  // a one-element gap before each block stays untouched
    total += count_of(p) + 1;
  }
  std::vector<int64_t> send(size_t(count_of(r)));
  for (size_t i = 0; i < send.size(); ++i) send[i] = r * 1000 + int64_t(i);
  std::vector<int64_t> recv(size_t(total), -7);
  comm->all_gatherv(send.data(), count_of(r), recv.data(), counts, displs, DType::kI64);
  for (int p = 0; p < n; ++p) {
    ASSERT_EQ(recv[size_t(displs[size_t(p)] - 1)], -7) << "gap before block " << p;
    for (int64_t i = 0; i < count_of(p); ++i) {
      ASSERT_EQ(recv[size_t(displs[size_t(p)] + i)], p * 1000 + i) << "block " << p;
    }
  }
  EXPECT_EQ(comm->counters().bytes_of(CollectiveKind::kAllGatherV),
            uint64_t(n - 1) * count_of(r) * 8);
}

TEST(MpiComm, ReduceScatter) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  const int64_t count = 16;
  std::vector<float> send(size_t(n * count)), recv(count);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < count; ++i) send[size_t(p * count + i)] = float(r + 10 * p + 100 * i);
  }
  comm->reduce_scatter(send.data(), recv.data(), count, DType::kF32);
  for (int64_t i = 0; i < count; ++i) {
    ASSERT_EQ(recv[size_t(i)], float(n * (n - 1) / 2 + n * (10 * r + 100 * i)));
  }
  EXPECT_EQ(comm->counters().bytes_of(CollectiveKind::kReduceScatter), uint64_t(n - 1) * count * 4);
}

TEST(MpiComm, AllToAll) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  const int64_t count = 5;
  std::vector<float> send(size_t(n * count)), recv(size_t(n * count), -1.f);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < count; ++i) send[size_t(p * count + i)] = float(r * 10000 + p * 100 + i);
  }
  comm->all_to_all(send.data(), recv.data(), count, DType::kF32);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(recv[size_t(p * count + i)], float(p * 10000 + r * 100 + i));
    }
  }
  EXPECT_EQ(comm->counters().bytes_of(CollectiveKind::kAllToAll), uint64_t(n - 1) * count * 4);
}

// Uneven all_to_allv in bf16 (exact small integers), with zero-sized blocks in both directions.
TEST(MpiComm, AllToAllVUnevenWithZeros) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  auto count_of = [](int src, int dst) { return int64_t((src + 2 * dst) % 3) * 3; };
  auto value_of = [](int src, int dst, int64_t i) { return float(src * 64 + dst * 8 + i); };
  std::vector<int64_t> sc(static_cast<size_t>(n)), sd(static_cast<size_t>(n)), rc(static_cast<size_t>(n)), rd(static_cast<size_t>(n));
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < n; ++p) {
    sc[size_t(p)] = count_of(r, p);
    sd[size_t(p)] = send_total;
    send_total += sc[size_t(p)];
    rc[size_t(p)] = count_of(p, r);
    rd[size_t(p)] = recv_total;
    recv_total += rc[size_t(p)];
  }
  std::vector<uint16_t> send(static_cast<size_t>(send_total));
  std::vector<uint16_t> recv(static_cast<size_t>(recv_total), 0xffff);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < sc[size_t(p)]; ++i) {
      send[size_t(sd[size_t(p)] + i)] = f32_to_bf16(value_of(r, p, i));
    }
  }
  comm->all_to_allv(send.data(), sc, sd, recv.data(), rc, rd, DType::kBF16);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < rc[size_t(p)]; ++i) {
      ASSERT_EQ(bf16_to_f32(recv[size_t(rd[size_t(p)] + i)]), value_of(p, r, i)) << "from " << p;
    }
  }
  uint64_t expect = 0;
  for (int p = 0; p < n; ++p) expect += p == r ? 0 : uint64_t(count_of(r, p)) * 2;
  EXPECT_EQ(comm->counters().bytes_of(CollectiveKind::kAllToAllV), expect);
}

TEST(MpiComm, BroadcastAndBarrier) {
  auto comm = make_world();
  const int n = comm->size(), r = comm->rank();
  const int root = n - 1;
  std::vector<uint8_t> buf(300);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = uint8_t(r == root ? i * 7 : 0);
  comm->broadcast(buf.data(), int64_t(buf.size()), DType::kU8, root);
  for (size_t i = 0; i < buf.size(); ++i) ASSERT_EQ(buf[i], uint8_t(i * 7));
  comm->barrier();
  const auto& c = comm->counters();
  EXPECT_EQ(c.bytes_of(CollectiveKind::kBroadcast), r == root ? uint64_t(n - 1) * 300 : 0u);
  EXPECT_EQ(c.calls_of(CollectiveKind::kBarrier), 1u);
  EXPECT_EQ(c.total_bytes(), c.bytes_of(CollectiveKind::kBroadcast));
  comm->reset_counters();
  EXPECT_EQ(comm->counters().total_bytes(), 0u);
  EXPECT_EQ(comm->counters().calls_of(CollectiveKind::kBroadcast), 0u);
}

// ---- process groups ---------------------------------------------------------------------------------

TEST(Groups, RankArithmetic) {
  const GroupShape shape{.tp = 2, .sp = 2, .ep = 4, .dp = 2};  // world 8
  EXPECT_EQ(group_members(GroupKind::kTP, 5, shape), (std::vector<int>{4, 5}));
  EXPECT_EQ(group_members(GroupKind::kSP, 5, shape), (std::vector<int>{5, 7}));
  EXPECT_EQ(group_members(GroupKind::kDP, 5, shape), (std::vector<int>{1, 5}));
  EXPECT_EQ(group_members(GroupKind::kEP, 5, shape), (std::vector<int>{4, 5, 6, 7}));
  const GroupCoords c = group_coords(6, shape);
  EXPECT_EQ(c.tp_idx, 0);
  EXPECT_EQ(c.sp_idx, 1);
  EXPECT_EQ(c.dp_idx, 1);
  EXPECT_EQ(c.ep_idx, 2);
  EXPECT_EQ(c.ep_group, 1);
}

// Every group's all_reduce of the world rank equals the sum of its members' world ranks.
TEST(Groups, SubCommunicatorsMatchArithmetic) {
  const int n = v4rt::testing::world_size(), r = v4rt::testing::world_rank();
  std::vector<GroupShape> shapes = {{.tp = n, .sp = 1, .ep = n, .dp = 1},
                                    {.tp = 1, .sp = n, .ep = n, .dp = 1}};
  if (n % 2 == 0) shapes.push_back({.tp = 2, .sp = n / 2, .ep = 2, .dp = 1});
  if (n % 4 == 0) shapes.push_back({.tp = 2, .sp = 1, .ep = n / 2, .dp = n / 2});
  for (const GroupShape& shape : shapes) {
    ProcessGroups groups = make_mpi_groups(shape, kTestTimeoutS);
    for (GroupKind kind : {GroupKind::kWorld, GroupKind::kTP, GroupKind::kSP, GroupKind::kEP,
                           GroupKind::kDP}) {
      const std::vector<int> members = group_members(kind, r, shape);
      Comm& comm = groups.get(kind);
      ASSERT_EQ(comm.size(), int(members.size())) << group_name(kind);
      ASSERT_EQ(comm.world_ranks(), members) << group_name(kind);
      ASSERT_EQ(members[size_t(comm.rank())], r) << group_name(kind);
      int32_t value = r, sum = 0;
      comm.all_reduce(&value, &sum, 1, DType::kI32);
      EXPECT_EQ(sum, std::accumulate(members.begin(), members.end(), 0)) << group_name(kind);
    }
  }
}

}  // namespace
}  // namespace v4rt::cluster
