// SPDX-License-Identifier: MIT
// NcclComm under mpirun, one GPU per rank: every collective on self-describing data (values encode
// source rank and index, small integers exact in F32/BF16), checked exactly on the host, plus the
// logical byte counters of cluster/comm.h. Skips without a GPU, or with fewer GPUs than ranks
// (NCCL refuses two ranks on one device).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "cluster/nccl_comm.h"
#include "cluster/world.h"
#include "common/dtype.h"

namespace v4rt::cluster {
namespace {

int g_rank = 0, g_size = 1;
bool g_usable = false;
std::unique_ptr<NcclComm> g_comm;

#define V4RT_REQUIRE_NCCL() \
  if (!g_usable) GTEST_SKIP() << "needs one GPU per rank"

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  void put(const std::vector<T>& v) { cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> get() const {
    std::vector<T> v(n);
    cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
};

TEST(NcclComm, AllReduceSumMaxF32Bf16) {
  V4RT_REQUIRE_NCCL();
  const int64_t count = 1031;
  std::vector<float> h(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) h[size_t(i)] = float((g_rank + 1) * (i % 7));
  Dev<float> a{size_t(count)};
  a.put(h);
  g_comm->reset_counters();
  g_comm->all_reduce(a.p, a.p, count, DType::kF32);
  g_comm->synchronize();
  const auto got = a.get();
  const int tri = g_size * (g_size + 1) / 2;
  for (int64_t i = 0; i < count; ++i) ASSERT_EQ(got[size_t(i)], float(tri * (i % 7))) << i;
  EXPECT_EQ(g_comm->counters().bytes_of(CollectiveKind::kAllReduce), all_reduce_bytes(g_size, count, DType::kF32));

  std::vector<uint16_t> hb(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) hb[size_t(i)] = f32_to_bf16(float(g_rank * 3 + (i % 5)));
  Dev<uint16_t> b{size_t(count)};
  b.put(hb);
  g_comm->all_reduce(b.p, b.p, count, DType::kBF16, ReduceOp::kMax);
  g_comm->synchronize();
  const auto gb = b.get();
  for (int64_t i = 0; i < count; ++i) ASSERT_EQ(bf16_to_f32(gb[size_t(i)]), float((g_size - 1) * 3 + (i % 5))) << i;
}

TEST(NcclComm, AllGatherAndGatherV) {
  V4RT_REQUIRE_NCCL();
  const int64_t count = 333;
  Dev<int32_t> s{size_t(count)}, r{size_t(count * g_size)};
  std::vector<int32_t> h(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) h[size_t(i)] = int32_t(g_rank * 100000 + i);
  s.put(h);
  g_comm->all_gather(s.p, r.p, count, DType::kI32);
  g_comm->synchronize();
  const auto got = r.get();
  for (int p = 0; p < g_size; ++p)
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(got[size_t(p * count + i)], p * 100000 + i);

  std::vector<int64_t> counts(static_cast<size_t>(g_size)), displs(static_cast<size_t>(g_size));
  for (int p = 0; p < g_size; ++p) counts[size_t(p)] = 5 + 3 * p;
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), int64_t(0));
  const int64_t total = displs.back() + counts.back();
  Dev<int32_t> vs{size_t(counts[size_t(g_rank)])}, vr{size_t(total)};
  std::vector<int32_t> hv(static_cast<size_t>(counts[size_t(g_rank)]));
  for (size_t i = 0; i < hv.size(); ++i) hv[i] = int32_t(g_rank * 1000 + int(i));
  vs.put(hv);
  g_comm->all_gatherv(vs.p, counts[size_t(g_rank)], vr.p, counts, displs, DType::kI32);
  g_comm->synchronize();
  const auto gv = vr.get();
  for (int p = 0; p < g_size; ++p)
    for (int64_t i = 0; i < counts[size_t(p)]; ++i) ASSERT_EQ(gv[size_t(displs[size_t(p)] + i)], p * 1000 + i);
}

TEST(NcclComm, ReduceScatterBroadcast) {
  V4RT_REQUIRE_NCCL();
  const int64_t rc = 100;
  Dev<float> s{size_t(rc * g_size)}, r{size_t(rc)};
  std::vector<float> h(static_cast<size_t>(rc * g_size));
  for (int64_t i = 0; i < rc * g_size; ++i) h[size_t(i)] = float(g_rank + i);
  s.put(h);
  g_comm->reduce_scatter(s.p, r.p, rc, DType::kF32);
  g_comm->synchronize();
  const auto got = r.get();
  for (int64_t i = 0; i < rc; ++i) {
    float want = 0;
    for (int p = 0; p < g_size; ++p) want += float(p + g_rank * rc + i);
    ASSERT_EQ(got[size_t(i)], want);
  }
  Dev<uint8_t> b(77);
  std::vector<uint8_t> hb(77, uint8_t(g_rank));
  b.put(hb);
  const int root = g_size - 1;
  g_comm->broadcast(b.p, 77, DType::kF8E4M3, root);
  g_comm->synchronize();
  for (uint8_t v : b.get()) ASSERT_EQ(v, uint8_t(root));
}

TEST(NcclComm, AllToAllVSelfDescribing) {
  V4RT_REQUIRE_NCCL();
  // Rank r sends (r + 1) * (p + 2) elements to rank p, valued r * 1e6 + p * 1e3 + i.
  std::vector<int64_t> sc(static_cast<size_t>(g_size)), sd(static_cast<size_t>(g_size)),
      rcnt(static_cast<size_t>(g_size)), rd(static_cast<size_t>(g_size));
  for (int p = 0; p < g_size; ++p) {
    sc[size_t(p)] = (g_rank + 1) * (p + 2);
    rcnt[size_t(p)] = (p + 1) * (g_rank + 2);
  }
  std::exclusive_scan(sc.begin(), sc.end(), sd.begin(), int64_t(0));
  std::exclusive_scan(rcnt.begin(), rcnt.end(), rd.begin(), int64_t(0));
  std::vector<int32_t> h(static_cast<size_t>(sd.back() + sc.back()));
  for (int p = 0; p < g_size; ++p)
    for (int64_t i = 0; i < sc[size_t(p)]; ++i) h[size_t(sd[size_t(p)] + i)] = int32_t(g_rank * 1000000 + p * 1000 + i);
  Dev<int32_t> s{h.size()}, r{size_t(rd.back() + rcnt.back())};
  s.put(h);
  g_comm->reset_counters();
  g_comm->all_to_allv(s.p, sc, sd, r.p, rcnt, rd, DType::kI32);
  g_comm->synchronize();
  const auto got = r.get();
  for (int p = 0; p < g_size; ++p)
    for (int64_t i = 0; i < rcnt[size_t(p)]; ++i)
      ASSERT_EQ(got[size_t(rd[size_t(p)] + i)], p * 1000000 + g_rank * 1000 + i) << "from " << p;
  EXPECT_EQ(g_comm->counters().bytes_of(CollectiveKind::kAllToAllV), all_to_allv_bytes(g_rank, sc, DType::kI32));
  g_comm->barrier();
}

}  // namespace
}  // namespace v4rt::cluster

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  using namespace v4rt::cluster;
  install_fault_handlers();
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  // Local rank by shared-memory domain; usable only when every rank of the node has its own GPU.
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &local);
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &local_size);
  MPI_Comm_free(&local);
  int ok = devices >= local_size ? 1 : 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  g_usable = all_ok == 1;
  if (g_usable) {
    bind_local_device(local_rank);
    CommOptions opt;
    opt.name = "world";
    opt.timeout_s = 60;
    g_comm = std::make_unique<NcclComm>(MPI_COMM_WORLD, opt);
  }
  if (g_rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  g_comm.reset();
  MPI_Finalize();
  return any;
}
