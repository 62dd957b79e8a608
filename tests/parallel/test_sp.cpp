// SPDX-License-Identifier: MIT
// SP under mpirun, through the path the model runs (sp_select, sp_attention_merge: SpOps on the
// group's memory, here the host ops and the CPU backend): the distributed top-k equals the
// single-rank top-k (scores full of ties and -inf, keys not yet visible masked by position), and
// the log-sum-exp merge of per-rank attention outputs equals one softmax with sink over the union
// of candidates (window on SP rank 0 only, sink added once). The CUDA ops are checked against the
// host ops in tests/cuda (test_cuda_sp_ops).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cluster/mpi_comm.h"
#include "kernels/backend.h"
#include "parallel/sp.h"
#include "tests/parallel/sp_reference.h"
#include "parallel/sp_ops.h"
#include "tests/cluster/mpi_test.h"

namespace v4rt::parallel {
namespace {

using namespace v4rt::parallel::testing;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::unique_ptr<cluster::MpiComm> make_sp() {
  cluster::CommOptions options;
  options.name = "sp";
  options.timeout_s = v4rt::testing::kTestTimeoutS;
  return std::make_unique<cluster::MpiComm>(MPI_COMM_WORLD, options);
}

// Few distinct values (many ties); every 13th entry invisible.
float score_of(int64_t q, int64_t j) {
  if (j % 13 == 5) return kNegInf;
  return float((j * 7 + q * 3) % 11) * 0.5f;
}

TEST(SpTopk, DistributedEqualsSingleRank) {
  auto comm = make_sp();
  auto be = kernels::make_cpu_backend();
  auto ops = make_host_sp_ops();
  for (int block : {1, 16, 64}) {
    for (int64_t num_entries : {0, 7, 300, 1000}) {
      for (int k : {1, 20, 64, 1100}) {
        // Rows at positions where every key is visible, and earlier ones that see about half.
        for (const int64_t pos_begin : {num_entries * 4, num_entries * 2}) {
          const SpPartition part{.sp_size = comm->size(), .sp_idx = comm->rank(), .block = block};
          const int64_t num_queries = 3, num_local = part.num_local(num_entries);
          std::vector<float> local(size_t(num_queries * num_local));
          for (int64_t q = 0; q < num_queries; ++q) {
            for (int64_t l = 0; l < num_local; ++l) local[size_t(q * num_local + l)] = score_of(q, part.to_global(l));
          }
          const TensorView scores(local.data(), DType::kF32, {num_queries, num_local}, Device::kHost);
          std::vector<int32_t> got(size_t(num_queries * k));
          sp_select(*comm, *ops, *be, part, num_local > 0 ? scores : TensorView(), num_queries, pos_begin, 4, k,
                    TensorView(got.data(), DType::kI32, {num_queries, k}, Device::kHost));
          for (int64_t q = 0; q < num_queries; ++q) {
            const int64_t visible = (pos_begin + q + 1) / 4;
            std::vector<float> all(static_cast<size_t>(num_entries));
            for (int64_t j = 0; j < num_entries; ++j) all[size_t(j)] = j < visible ? score_of(q, j) : kNegInf;
            std::vector<int64_t> want(static_cast<size_t>(k));
            topk_reference(all, k, want.data());
            for (int i = 0; i < k; ++i) {
              const int64_t g = want[size_t(i)];
              const int32_t mine = g >= 0 && part.owns(g) ? int32_t(part.to_local(g)) : -1;
              ASSERT_EQ(got[size_t(q * k + i)], mine) << "block " << block << " entries " << num_entries << " k " << k
                                                      << " pos " << pos_begin << " q " << q << " i " << i;
            }
          }
        }
      }
    }
  }
}

// Deterministic pseudo-random values in [lo, lo + span).
float value(uint32_t i, float lo, float span) {
  uint32_t s = i * 2654435761u + 12345u;
  s ^= s >> 13;
  s *= 1274126177u;
  s ^= s >> 16;
  return lo + span * float(s % 100000u) / 100000.f;
}

TEST(SpAttention, MergeEqualsSingleSoftmaxWithSink) {
  auto comm = make_sp();
  const int n = comm->size(), me = comm->rank();
  const int64_t num_tokens = 2, num_heads = 4, head_dim = 32, num_rows = num_tokens * num_heads;
  const int64_t num_window = 10, num_entries = 200, num_sel = 48;
  const SpPartition part{.sp_size = n, .sp_idx = me, .block = 8};
  const float scale = 1.f / std::sqrt(float(head_dim));
  // kv rows: [window (num_window); compressed entries (num_entries)], K = V.
  std::vector<float> kv(size_t((num_window + num_entries) * head_dim));
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = value(uint32_t(i), -1.f, 2.f);
  std::vector<float> q(size_t(num_rows * head_dim)), sink(static_cast<size_t>(num_heads));
  for (size_t i = 0; i < q.size(); ++i) q[i] = value(uint32_t(i + 99991), -2.f, 4.f);
  for (int64_t h = 0; h < num_heads; ++h) sink[size_t(h)] = value(uint32_t(h + 7), -1.f, 3.f);
  // Selected entries per row: a strided pattern, different per row.
  auto selected = [&](int64_t r, int64_t i) { return (r * 17 + i * 4) % num_entries; };

  // This rank's candidates: the window (SP rank 0 only) and the selected entries it owns.
  const int64_t width = num_window + num_sel;
  std::vector<int64_t> cand(size_t(num_rows * width), -1), all_cand(size_t(num_rows * width));
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t w = 0; w < num_window; ++w) {
      all_cand[size_t(r * width + w)] = w;
      if (me == SpPartition::window_rank()) cand[size_t(r * width + w)] = w;
    }
    for (int64_t i = 0; i < num_sel; ++i) {
      const int64_t e = selected(r, i);
      all_cand[size_t(r * width + num_window + i)] = num_window + e;
      if (part.owns(e)) cand[size_t(r * width + num_window + i)] = num_window + e;
    }
  }
  std::vector<float> partial(size_t(num_rows * partial_width(head_dim)));
  attention_partial(q.data(), kv.data(), cand.data(), num_rows, width, head_dim, scale, partial.data());
  // What the attention kernel gives each rank: its output normalised over its own candidates and
  // their log-sum-exp (-inf where it attended nothing).
  std::vector<float> out(size_t(num_rows * head_dim)), lse(static_cast<size_t>(num_rows));
  const int64_t pw = partial_width(head_dim);
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* p = &partial[size_t(r * pw)];
    lse[size_t(r)] = p[0] == kNegInf ? kNegInf : p[0] + std::log(p[1]);
    for (int64_t d = 0; d < head_dim; ++d) out[size_t(r * head_dim + d)] = p[0] == kNegInf ? 0.f : p[2 + d] / p[1];
  }
  auto be = kernels::make_cpu_backend();
  auto ops = make_host_sp_ops();
  comm->reset_counters();
  sp_attention_merge(*comm, *ops, *be, TensorView(out.data(), DType::kF32, {num_tokens, num_heads, head_dim}, Device::kHost),
                     TensorView(lse.data(), DType::kF32, {num_tokens, num_heads}, Device::kHost), sink.data(), false);
  EXPECT_EQ(comm->counters().bytes_of(cluster::CollectiveKind::kAllGather),
            uint64_t(n - 1) * num_rows * (head_dim + 1) * 4);

  // Single-rank fp32 path over the union: rel err <= 1e-6 (summation order only differs).
  std::vector<float> whole(partial.size()), single(out.size());
  attention_partial(q.data(), kv.data(), all_cand.data(), num_rows, width, head_dim, scale, whole.data());
  merge_partials(whole.data(), 1, sink.data(), num_rows, num_heads, head_dim, single.data());
  // Independent double-precision softmax with sink, written from spec §5.6.
  double max_rel_single = 0, max_rel_double = 0;
  for (int64_t r = 0; r < num_rows; ++r) {
    std::vector<double> z(static_cast<size_t>(width));
    double m = -INFINITY;
    for (int64_t i = 0; i < width; ++i) {
      double dot = 0;
      for (int64_t d = 0; d < head_dim; ++d) {
        dot += double(q[size_t(r * head_dim + d)]) * kv[size_t(all_cand[size_t(r * width + i)] * head_dim + d)];
      }
      z[size_t(i)] = dot * scale;
      m = std::max(m, z[size_t(i)]);  // the sink is not in the max
    }
    double den = std::exp(double(sink[size_t(r % num_heads)]) - m);
    std::vector<double> o(static_cast<size_t>(head_dim), 0.0);
    for (int64_t i = 0; i < width; ++i) {
      const double p = std::exp(z[size_t(i)] - m);
      den += p;
      for (int64_t d = 0; d < head_dim; ++d) o[size_t(d)] += p * kv[size_t(all_cand[size_t(r * width + i)] * head_dim + d)];
    }
    double norm = 0;
    for (int64_t d = 0; d < head_dim; ++d) norm = std::max(norm, std::fabs(o[size_t(d)] / den));
    for (int64_t d = 0; d < head_dim; ++d) {
      const double got = out[size_t(r * head_dim + d)];
      max_rel_single = std::max(max_rel_single, std::fabs(got - single[size_t(r * head_dim + d)]) / norm);
      max_rel_double = std::max(max_rel_double, std::fabs(got - o[size_t(d)] / den) / norm);
    }
  }
  EXPECT_LE(max_rel_single, 1e-6) << "merged vs single-rank fp32";
  EXPECT_LE(max_rel_double, 1e-6) << "merged vs double reference";
  if (me == 0) {
    std::printf("SP merge over %d ranks: max rel err %.3g vs single-rank fp32, %.3g vs double\n", n,
                max_rel_single, max_rel_double);
  }
}

}  // namespace
}  // namespace v4rt::parallel
