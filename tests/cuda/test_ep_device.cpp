// SPDX-License-Identifier: MIT
// The device path of the distributed MoE and TP under mpirun on CUDA ranks: groups built by
// cluster::make_groups for the CUDA backend (StagedComm when the ranks share a GPU, as on a
// one-GPU machine; NcclComm with one GPU per rank), and
//   - EP dispatch/combine on device buffers (CudaEpMemory kernels, exchange stream) equal to the
//     host path (MpiComm, host loops) on the same inputs, bit for bit: received rows, expert ids,
//     weights, combined sums (fp32, ascending expert id); also with the FP8 wire format;
//   - the TP all-reduce and a variable all-to-allv with gaps on device buffers.
// Labels gpu and mpi: every rank skips without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cluster/groups.h"
#include "cluster/mpi_comm.h"
#include "kernels/backend_factory.h"
#include "parallel/ep.h"
#include "parallel/tp.h"
#include "tests/cluster/mpi_test.h"

namespace v4rt::parallel {
namespace {

using v4rt::testing::kTestTimeoutS;

bool every_rank_has_a_gpu() {
  int ok = kernels::cuda_device_count() > 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return ok == 1;
}

#define V4RT_REQUIRE_GPU() \
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << "needs a CUDA device on every rank"

struct DeviceRank {
  std::unique_ptr<kernels::Backend> backend;
  cluster::ProcessGroups groups;
};

DeviceRank make_device_rank(const cluster::GroupShape& shape) {
  int local_rank = 0;
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, v4rt::testing::world_rank(), MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);
  DeviceRank r;
  r.backend = kernels::make_backend("cuda", local_rank % kernels::cuda_device_count());
  cluster::GroupOptions go;
  go.timeout_s = kTestTimeoutS;
  go.device = r.backend->device_index();
  go.stream = r.backend->stream_handle();
  r.groups = cluster::make_groups(shape, go);
  return r;
}

template <typename T>
std::vector<T> download(kernels::Backend& be, const Buffer& b, int64_t n) {
  std::vector<T> v(static_cast<size_t>(n));
  if (n > 0) be.copy_to_host(v.data(), b.data(), size_t(n) * sizeof(T));
  return v;
}

constexpr int kTopk = 3;

void route(int rank, int64_t t, int num_experts, int32_t* ids, float* w) {
  uint32_t s = uint32_t(rank * 1000003 + t * 7919 + 17);
  int n = 0;
  while (n < kTopk) {
    s = s * 1664525u + 1013904223u;
    const int32_t e = int32_t((s >> 8) % uint32_t(num_experts));
    if (std::find(ids, ids + n, e) == ids + n) ids[n++] = e;
  }
  if (t % 5 == 4) ids[kTopk - 1] = -1;
  for (int k = 0; k < kTopk; ++k) w[k] = 0.125f * float(k + 1 + (t % 3));
}

void check_ep_device_equals_host(bool fp8_wire) {
  const int n = v4rt::testing::world_size(), me = v4rt::testing::world_rank();
  DeviceRank dr = make_device_rank({.tp = 1, .sp = 1, .ep = n, .dp = n});
  kernels::Backend& be = *dr.backend;
  cluster::Comm& dev_comm = dr.groups.get(cluster::GroupKind::kEP);
  ASSERT_EQ(dev_comm.device(), Device::kCuda);
  cluster::CommOptions co;
  co.name = "ep-host";
  co.timeout_s = kTestTimeoutS;
  cluster::MpiComm host_comm(MPI_COMM_WORLD, co);

  const int64_t hidden = 256;
  const EpConfig ec{.num_experts = 4 * n, .hidden = hidden, .topk = kTopk, .dtype = DType::kF32, .fp8_wire = fp8_wire};
  ExpertParallel host_ep(host_comm, ec);
  ExpertParallel dev_ep(dev_comm, ec, be.stream_handle());
  const int64_t T = 7 + 3 * me;
  std::vector<float> x(size_t(T * hidden));
  for (int64_t i = 0; i < T * hidden; ++i) x[size_t(i)] = float(int((me * 31 + i * 7) % 17) - 8) * 0.37f + 0.01f * float(i % 5);
  std::vector<int32_t> ids(size_t(T * kTopk));
  std::vector<float> w(size_t(T * kTopk));
  for (int64_t t = 0; t < T; ++t) route(me, t, ec.num_experts, &ids[size_t(t * kTopk)], &w[size_t(t * kTopk)]);

  DispatchLayout host_layout, dev_layout;
  const DispatchedRows want = host_ep.dispatch(x.data(), ids.data(), w.data(), T, &host_layout);
  Buffer xd = be.alloc(x.size() * 4);
  be.copy_to_device(xd.data(), x.data(), x.size() * 4);
  DispatchedBuffers got = dev_ep.dispatch_buffers(xd.data(), ids.data(), w.data(), T, &dev_layout);
  dev_ep.wait_dispatch();
  ASSERT_EQ(got.num_rows, want.num_rows());
  EXPECT_EQ(got.expert_offsets, want.expert_offsets);
  const int64_t rows = got.num_rows;
  const std::vector<float> got_rows = download<float>(be, got.rows, rows * hidden);
  const std::vector<int32_t> got_experts = download<int32_t>(be, got.experts, rows);
  const std::vector<float> got_weights = download<float>(be, got.weights, rows);
  ASSERT_EQ(std::memcmp(got_rows.data(), want.rows.data(), got_rows.size() * 4), 0) << "received rows differ";
  ASSERT_EQ(got_experts, want.experts);
  ASSERT_EQ(got_weights, want.weights);

  // Experts: y = x * (e + 1); combine applies the weights.
  std::vector<float> y(size_t(rows * hidden));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < hidden; ++c) y[size_t(r * hidden + c)] = got_rows[size_t(r * hidden + c)] * float(got_experts[size_t(r)] + 1);
  }
  std::vector<float> want_out(size_t(T * hidden), -1.f);
  host_ep.combine(y.data(), DType::kF32, host_layout, ids.data(), w.data(), true, want_out.data());
  Buffer yd = be.alloc(std::max<size_t>(1, y.size() * 4));
  if (!y.empty()) be.copy_to_device(yd.data(), y.data(), y.size() * 4);
  Buffer outd = be.alloc(want_out.size() * 4);
  dev_ep.combine_buffers(yd.data(), DType::kF32, dev_layout, ids.data(), w.data(), true, static_cast<float*>(outd.data()));
  be.synchronize();
  const std::vector<float> got_out = download<float>(be, outd, T * hidden);
  ASSERT_EQ(std::memcmp(got_out.data(), want_out.data(), got_out.size() * 4), 0) << "combined sums differ";
}

TEST(EpDevice, DispatchCombineEqualsHostPath) {
  V4RT_REQUIRE_GPU();
  check_ep_device_equals_host(false);
}

TEST(EpDevice, Fp8WireEqualsHostPath) {
  V4RT_REQUIRE_GPU();
  check_ep_device_equals_host(true);
}

TEST(EpDevice, GroupsPickTheRuleAndTpReducesOnTheDevice) {
  V4RT_REQUIRE_GPU();
  const int n = v4rt::testing::world_size(), me = v4rt::testing::world_rank();
  DeviceRank dr = make_device_rank({.tp = n, .sp = 1, .ep = n, .dp = 1});
  kernels::Backend& be = *dr.backend;
  // Ranks on one GPU get the staged Comm; one GPU per rank gets NCCL (in an NCCL build).
  int device = be.device_index(), shared = 0;
  std::vector<int> devices(static_cast<size_t>(n));
  MPI_Allgather(&device, 1, MPI_INT, devices.data(), 1, MPI_INT, MPI_COMM_WORLD);
  for (int p = 0; p < n; ++p) shared += (p != me && devices[size_t(p)] == device) ? 1 : 0;
#if defined(V4RT_HAVE_NCCL)
  const bool nccl = true;
#else
  const bool nccl = false;
#endif
  int any_shared = shared;
  MPI_Allreduce(MPI_IN_PLACE, &any_shared, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(dr.groups.backend(cluster::GroupKind::kTP),
            any_shared || !nccl ? cluster::CommBackend::kStaged : cluster::CommBackend::kNccl);
  EXPECT_EQ(dr.groups.get_host(cluster::GroupKind::kTP).device(), Device::kHost);

  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(me * 1000 + int(i));
  Buffer d = be.alloc(v.size() * 4);
  be.copy_to_device(d.data(), v.data(), v.size() * 4);
  cluster::Comm& tp = dr.groups.get(cluster::GroupKind::kTP);
  tp_reduce_sum(tp, TensorView(d.data(), DType::kF32, {int64_t(v.size())}, Device::kCuda));
  be.synchronize();
  std::vector<float> got = download<float>(be, d, int64_t(v.size()));
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(got[i], float(1000 * n * (n - 1) / 2 + n * int(i))) << i;

  // all_to_allv with gaps between the receive blocks: the gaps keep their contents.
  const int64_t stride = 8;
  std::vector<int64_t> sc(static_cast<size_t>(n)), sd(static_cast<size_t>(n)), rc(static_cast<size_t>(n)),
      rd(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) {
    sc[size_t(p)] = (me + 2 * p) % 3 + 1;
    rc[size_t(p)] = (p + 2 * me) % 3 + 1;
    sd[size_t(p)] = rd[size_t(p)] = p * stride;
  }
  std::vector<int32_t> send(size_t(n * stride), 0), recv(size_t(n * stride), -5);
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < sc[size_t(p)]; ++i) send[size_t(p * stride + i)] = me * 100 + p * 10 + int(i);
  }
  Buffer sdv = be.alloc(send.size() * 4), rdv = be.alloc(recv.size() * 4);
  be.copy_to_device(sdv.data(), send.data(), send.size() * 4);
  be.copy_to_device(rdv.data(), recv.data(), recv.size() * 4);
  cluster::Comm& world = dr.groups.get(cluster::GroupKind::kWorld);
  world.all_to_allv(sdv.data(), sc, sd, rdv.data(), rc, rd, DType::kI32);
  world.synchronize();
  be.synchronize();
  const std::vector<int32_t> out = download<int32_t>(be, rdv, int64_t(recv.size()));
  for (int p = 0; p < n; ++p) {
    for (int64_t i = 0; i < stride; ++i) {
      ASSERT_EQ(out[size_t(p * stride + i)], i < rc[size_t(p)] ? p * 100 + me * 10 + int(i) : -5) << p << "," << i;
    }
  }
}

}  // namespace
}  // namespace v4rt::parallel
