// SPDX-License-Identifier: MIT
// StagedComm under mpirun with a host stand-in for the device copies: every collective equals the
// MpiComm result, the gaps of a variable-size receive buffer keep their contents (as with NCCL),
// byte counters are the logical counts of cluster/comm.h, and every byte crosses the staging copies
// (device -> host before, host -> device after). make_groups on CPU ranks picks MpiComm everywhere.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "cluster/groups.h"
#include "cluster/mpi_comm.h"
#include "cluster/staged_comm.h"
#include "common/dtype.h"
#include "tests/cluster/mpi_test.h"

namespace v4rt::cluster {
namespace {

using v4rt::testing::kTestTimeoutS;

// "Device" memory is host memory; the copies are counted and checked to stay on the given stream.
class HostStaging final : public DeviceStaging {
 public:
  explicit HostStaging(StreamHandle expect) : expect_(expect) {}
  Device device() const override { return Device::kHost; }
  void to_host(void* dst, const void* src, size_t bytes, StreamHandle stream) override {
    EXPECT_EQ(stream, expect_);
    std::memcpy(dst, src, bytes);
    *down_ += bytes;
  }
  void to_device(void* dst, const void* src, size_t bytes, StreamHandle stream) override {
    EXPECT_EQ(stream, expect_);
    std::memcpy(dst, src, bytes);
    *up_ += bytes;
  }
  void synchronize(StreamHandle stream) override { EXPECT_EQ(stream, expect_); }
  std::shared_ptr<uint64_t> down_ = std::make_shared<uint64_t>(0), up_ = std::make_shared<uint64_t>(0);

 private:
  StreamHandle expect_;
};

struct Staged {
  std::unique_ptr<StagedComm> comm;
  std::shared_ptr<uint64_t> down, up;
};

Staged make_staged() {
  CommOptions options;
  options.name = "tp";
  options.timeout_s = kTestTimeoutS;
  static int stream_tag = 0;
  auto staging = std::make_unique<HostStaging>(&stream_tag);
  Staged s{nullptr, staging->down_, staging->up_};
  s.comm = std::make_unique<StagedComm>(std::make_unique<MpiComm>(MPI_COMM_WORLD, options), std::move(staging),
                                        &stream_tag);
  return s;
}

TEST(StagedComm, AllReduceInPlaceAndOutOfPlace) {
  Staged s = make_staged();
  const int n = s.comm->size(), r = s.comm->rank();
  EXPECT_EQ(s.comm->name(), "tp");
  std::vector<float> x(37), y(37, -1.f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(r * 100 + int(i));
  s.comm->all_reduce(x.data(), y.data(), 37, DType::kF32);
  s.comm->all_reduce(x.data(), x.data(), 37, DType::kF32, ReduceOp::kMax);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(y[i], float(100 * n * (n - 1) / 2 + n * int(i)));
    ASSERT_EQ(x[i], float((n - 1) * 100 + int(i)));
  }
  EXPECT_EQ(s.comm->counters().bytes_of(CollectiveKind::kAllReduce), 2 * all_reduce_bytes(n, 37, DType::kF32));
  EXPECT_EQ(*s.down, 2u * 37 * 4);
  EXPECT_EQ(*s.up, 2u * 37 * 4);
  EXPECT_EQ(s.comm->staged_bytes(), 4u * 37 * 4);
}

TEST(StagedComm, AllGatherAndReduceScatter) {
  Staged s = make_staged();
  const int n = s.comm->size(), r = s.comm->rank();
  std::vector<int32_t> mine(5), all(size_t(5 * n), -1);
  for (int i = 0; i < 5; ++i) mine[size_t(i)] = r * 10 + i;
  s.comm->all_gather(mine.data(), all.data(), 5, DType::kI32);
  for (int p = 0; p < n; ++p) {
    for (int i = 0; i < 5; ++i) ASSERT_EQ(all[size_t(p * 5 + i)], p * 10 + i);
  }
  std::vector<float> blocks(size_t(3 * n)), out(3, -1.f);
  for (int p = 0; p < n; ++p) {
    for (int i = 0; i < 3; ++i) blocks[size_t(p * 3 + i)] = float(r + p * 3 + i);
  }
  s.comm->reduce_scatter(blocks.data(), out.data(), 3, DType::kF32);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(out[size_t(i)], float(n * (n - 1) / 2 + n * (r * 3 + i)));
  EXPECT_EQ(s.comm->counters().bytes_of(CollectiveKind::kAllGather), uint64_t(n - 1) * 20);
  EXPECT_EQ(s.comm->counters().bytes_of(CollectiveKind::kReduceScatter), uint64_t(n - 1) * 12);
}

// Variable blocks with gaps between them: the gaps keep their poison.
TEST(StagedComm, AllToAllVAndGatherVKeepGaps) {
  Staged s = make_staged();
  const int n = s.comm->size(), r = s.comm->rank();
  auto count_of = [](int src, int dst) { return int64_t((src + 2 * dst) % 3) * 2; };
  const int64_t stride = 8;  // block p at p * stride: gaps after each block
  std::vector<int64_t> sc(static_cast<size_t>(n)), sd(static_cast<size_t>(n)), rc(static_cast<size_t>(n)),
      rd(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) {
    sc[size_t(p)] = count_of(r, p);
    sd[size_t(p)] = p * stride;
    rc[size_t(p)] = count_of(p, r);
    rd[size_t(p)] = p * stride;
  }
  std::vector<int32_t> send(size_t(n * stride), 7777), recv(size_t(n * stride), -5);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < sc[size_t(p)]; ++i) send[size_t(p * stride + i)] = r * 1000 + p * 10 + int(i);
  }
  s.comm->all_to_allv(send.data(), sc, sd, recv.data(), rc, rd, DType::kI32);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < stride; ++i) {
      const int32_t want = i < rc[size_t(p)] ? p * 1000 + r * 10 + int(i) : -5;
      ASSERT_EQ(recv[size_t(p * stride + i)], want) << "block " << p << " element " << i;
    }
  }
  EXPECT_EQ(s.comm->counters().bytes_of(CollectiveKind::kAllToAllV), all_to_allv_bytes(r, sc, DType::kI32));

  std::vector<int64_t> gc(static_cast<size_t>(n)), gd(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) {
    gc[size_t(p)] = p + 1;
    gd[size_t(p)] = p * stride;
  }
  std::vector<float> part(size_t(r + 1)), gathered(size_t(n * stride), -2.f);
  for (int i = 0; i <= r; ++i) part[size_t(i)] = float(r * 10 + i);
  s.comm->all_gatherv(part.data(), r + 1, gathered.data(), gc, gd, DType::kF32);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < stride; ++i) {
      ASSERT_EQ(gathered[size_t(p * stride + i)], i <= p ? float(p * 10 + i) : -2.f) << p << "," << i;
    }
  }
}

TEST(StagedComm, AllToAllBroadcastBarrier) {
  Staged s = make_staged();
  const int n = s.comm->size(), r = s.comm->rank();
  std::vector<int64_t> send(size_t(2 * n)), recv(size_t(2 * n), -1);
  for (int p = 0; p < n; ++p) {
    send[size_t(2 * p)] = r * 100 + p;
    send[size_t(2 * p + 1)] = -(r * 100 + p);
  }
  s.comm->all_to_all(send.data(), recv.data(), 2, DType::kI64);
  for (int p = 0; p < n; ++p) {
    ASSERT_EQ(recv[size_t(2 * p)], p * 100 + r);
    ASSERT_EQ(recv[size_t(2 * p + 1)], -(p * 100 + r));
  }
  const uint64_t up_before = *s.up, down_before = *s.down;
  std::vector<uint8_t> buf(100, uint8_t(r == 0 ? 9 : 0));
  s.comm->broadcast(buf.data(), 100, DType::kU8, 0);
  for (uint8_t b : buf) ASSERT_EQ(b, 9);
  // The root only copies down, the others only up.
  EXPECT_EQ(*s.down - down_before, r == 0 ? 100u : 0u);
  EXPECT_EQ(*s.up - up_before, r == 0 ? 0u : 100u);
  s.comm->barrier();
  EXPECT_EQ(s.comm->counters().calls_of(CollectiveKind::kBarrier), 1u);
}

// CPU ranks: every group is an MpiComm on host memory, with no separate host Comm.
TEST(MakeGroups, CpuRanksGetMpiComms) {
  const int n = v4rt::testing::world_size();
  GroupOptions options;
  options.timeout_s = kTestTimeoutS;
  ProcessGroups groups = make_groups({.tp = n, .sp = 1, .ep = n, .dp = 1}, options);
  for (GroupKind kind : {GroupKind::kWorld, GroupKind::kTP, GroupKind::kSP, GroupKind::kEP, GroupKind::kDP}) {
    EXPECT_EQ(groups.backend(kind), CommBackend::kMpi) << group_name(kind);
    EXPECT_EQ(groups.get(kind).device(), Device::kHost);
    EXPECT_EQ(&groups.get_host(kind), &groups.get(kind)) << group_name(kind);
  }
  float x = 1.f;
  groups.get(GroupKind::kTP).all_reduce(&x, &x, 1, DType::kF32);
  EXPECT_EQ(x, float(n));
}

}  // namespace
}  // namespace v4rt::cluster
