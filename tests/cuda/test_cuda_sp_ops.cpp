// SPDX-License-Identifier: MIT
// The CUDA SpOps (parallel/cuda/sp_kernels.cu) against the host SpOps, the reference the mpirun
// tests check against the single-rank model: visibility mask and candidate lists identical; the
// top-k merge identical for every SP rank (lists full of ties, invalid tails, 2 to 8 ranks, k up
// to 2048); the attention merge within 2e-6 relative of the host loop (expf on the device against
// std::exp), and after bf16 rounding within one bf16 ulp.
#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel/sp.h"
#include "parallel/sp_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

using parallel::SpPartition;

// A device copy of `host` and the way back.
template <typename T>
struct DeviceArray {
  Buffer buf;
  DeviceArray(const std::vector<T>& host) : buf(gpu_backend().alloc(std::max<size_t>(host.size(), 1) * sizeof(T))) {
    if (!host.empty()) gpu_backend().copy_to_device(buf.data(), host.data(), host.size() * sizeof(T));
  }
  T* data() const { return static_cast<T*>(buf.data()); }
  std::vector<T> read(size_t n) const {
    std::vector<T> out(n);
    if (n) gpu_backend().copy_to_host(out.data(), buf.data(), n * sizeof(T));
    return out;
  }
};

TEST(CudaSpOps, MaskAndVisibleListEqualTheHost) {
  V4RT_REQUIRE_GPU();
  auto host = parallel::make_host_sp_ops();
  auto dev = parallel::make_cuda_sp_ops(gpu_backend().stream_handle());
  Rng rng(3);
  for (const SpPartition part : {SpPartition{2, 1, 64}, SpPartition{4, 0, 16}, SpPartition{8, 5, 1}}) {
    const int64_t rows = 70, num_local = 333, pos_begin = 2000;
    std::vector<float> scores = rng.normals(rows * num_local);
    std::vector<float> want = scores;
    host->mask_invisible(want.data(), rows, num_local, part, pos_begin, 4);
    DeviceArray<float> d(scores);
    dev->mask_invisible(d.data(), rows, num_local, part, pos_begin, 4);
    EXPECT_EQ(d.read(scores.size()), want);
    std::vector<int32_t> list(size_t(rows * num_local), 7);
    host->visible_list(list.data(), rows, num_local, part, pos_begin, 128);
    DeviceArray<int32_t> dl(std::vector<int32_t>(list.size(), 7));
    dev->visible_list(dl.data(), rows, num_local, part, pos_begin, 128);
    EXPECT_EQ(dl.read(list.size()), list);
  }
}

TEST(CudaSpOps, TopkMergeEqualsTheHostOnEveryRank) {
  V4RT_REQUIRE_GPU();
  auto host = parallel::make_host_sp_ops();
  auto dev = parallel::make_cuda_sp_ops(gpu_backend().stream_handle());
  Rng rng(5);
  for (const int n : {2, 4, 8}) {
    for (const int k : {1, 37, 512, 2048}) {
      const int64_t rows = 6;
      const int block = 16;
      // Each rank's local top-k list: scores from 9 distinct values (ties), sorted by (value desc,
      // local index asc), a random number of valid slots, then -1 / -inf.
      std::vector<float> values(size_t(n * rows * k));
      std::vector<int32_t> local(values.size());
      for (int p = 0; p < n; ++p) {
        for (int64_t t = 0; t < rows; ++t) {
          const int valid = int(rng.integer(0, k));
          std::vector<std::pair<float, int32_t>> slots;
          for (int i = 0; i < valid; ++i) slots.push_back({float(rng.integer(0, 8)), int32_t(i * 3 + int(rng.integer(0, 2)))});
          std::sort(slots.begin(), slots.end(),
                    [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
          for (int i = 0; i < k; ++i) {
            const size_t at = size_t((int64_t(p) * rows + t) * k + i);
            values[at] = i < valid ? slots[size_t(i)].first : -INFINITY;
            local[at] = i < valid ? slots[size_t(i)].second : -1;
          }
        }
      }
      DeviceArray<float> dv(values);
      DeviceArray<int32_t> di(local);
      for (int me = 0; me < n; ++me) {
        const SpPartition part{n, me, block};
        std::vector<int32_t> want(size_t(rows * k), 9);
        host->merge_topk(values.data(), local.data(), rows, k, part, want.data());
        DeviceArray<int32_t> got(std::vector<int32_t>(want.size(), 9));
        dev->merge_topk(dv.data(), di.data(), rows, k, part, got.data());
        ASSERT_EQ(got.read(want.size()), want) << n << " ranks, k " << k << ", rank " << me;
      }
    }
  }
}

TEST(CudaSpOps, AttentionMergeMatchesTheHost) {
  V4RT_REQUIRE_GPU();
  auto host = parallel::make_host_sp_ops();
  auto dev = parallel::make_cuda_sp_ops(gpu_backend().stream_handle());
  Rng rng(7);
  const int n = 4;
  const int64_t heads = 8, rows = 3 * heads, hd = 512;
  const std::vector<float> o = rng.normals(n * rows * hd, 1.f, false);
  std::vector<float> lse = rng.normals(n * rows, 3.f, false);
  for (size_t i = 0; i < lse.size(); i += 5) lse[i] = -INFINITY;  // ranks that attended nothing
  const std::vector<float> sink = rng.normals(heads, 1.f, false);
  DeviceArray<float> d_o(o), d_lse(lse), d_sink(sink);
  for (const bool round : {false, true}) {
    std::vector<float> want(size_t(rows * hd));
    host->merge_attention(o.data(), lse.data(), sink.data(), n, rows, heads, hd, round, want.data());
    DeviceArray<float> got(std::vector<float>(want.size(), 0.f));
    dev->merge_attention(d_o.data(), d_lse.data(), d_sink.data(), n, rows, heads, hd, round, got.data());
    const std::vector<float> g = got.read(want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const float tol = round ? std::fabs(want[i]) * 0x1p-7f : 2e-6f * std::max(1.f, std::fabs(want[i]));
      ASSERT_NEAR(g[i], want[i], tol) << i << (round ? " (bf16)" : "");
    }
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
