// SPDX-License-Identifier: MIT
// EP dispatch/combine under mpirun against a single-rank computation. Routing and activations are
// deterministic functions of (source rank, token), so every rank can compute what every other rank
// sends. Synthetic experts: expert e maps a row x to x * (e + 1) (times the routing weight inside
// the expert, as V4 does before w2). Activations are not dyadic, so fp32 sums depend on their
// order: the combined output must equal (==) the reference that adds in ascending expert id.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cluster/mpi_comm.h"
#include "parallel/ep.h"
#include "tests/cluster/mpi_test.h"

namespace v4rt::parallel {
namespace {

constexpr int kTopk = 3;
constexpr int64_t kHidden = 24;

int64_t tokens_of(int rank) { return rank == 1 ? 0 : 5 + 3 * rank; }  // rank 1 sends nothing

float x_of(int rank, int64_t t, int64_t c) {
  return float(int((rank * 31 + t * 7 + c) % 17) - 8) * 0.25f + float(c + 1) / 3.f;
}

// Distinct experts per token; every fifth token leaves its last slot empty (-1).
void route_of(int rank, int64_t t, int num_experts, int32_t* ids, float* weights) {
  uint32_t s = uint32_t(rank * 1000003 + t * 7919 + 17);
  int n = 0;
  while (n < kTopk) {
    s = s * 1664525u + 1013904223u;
    const int32_t e = int32_t((s >> 8) % uint32_t(num_experts));
    if (std::find(ids, ids + n, e) == ids + n) ids[n++] = e;
  }
  if (t % 5 == 4) ids[kTopk - 1] = -1;
  for (int k = 0; k < kTopk; ++k) weights[k] = 0.125f * float(k + 1 + (t % 3));
}

struct RankInput {
  std::vector<float> x;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

RankInput input_of(int rank, int num_experts) {
  RankInput in;
  const int64_t n = tokens_of(rank);
  in.x.resize(size_t(n * kHidden));
  in.ids.resize(size_t(n * kTopk));
  in.weights.resize(size_t(n * kTopk));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < kHidden; ++c) in.x[size_t(t * kHidden + c)] = x_of(rank, t, c);
    route_of(rank, t, num_experts, &in.ids[size_t(t * kTopk)], &in.weights[size_t(t * kTopk)]);
  }
  return in;
}

std::unique_ptr<cluster::MpiComm> make_ep() {
  cluster::CommOptions options;
  options.name = "ep";
  options.timeout_s = v4rt::testing::kTestTimeoutS;
  return std::make_unique<cluster::MpiComm>(MPI_COMM_WORLD, options);
}

TEST(ExpertParallel, DispatchCombineEqualsSingleRank) {
  auto comm = make_ep();
  const int n = comm->size(), me = comm->rank();
  const int num_experts = 4 * n;
  ExpertParallel ep(*comm, {.num_experts = num_experts, .hidden = kHidden, .topk = kTopk,
                            .dtype = DType::kF32});
  const RankInput in = input_of(me, num_experts);
  const int64_t num_tokens = tokens_of(me);

  comm->reset_counters();
  DispatchLayout layout;
  DispatchedRows rows = ep.dispatch(in.x.data(), in.ids.data(), in.weights.data(), num_tokens, &layout);

  // Expected rows for each local expert: (source rank ascending, token ascending).
  const int epr = ep.experts_per_rank();
  std::vector<int64_t> rows_to(static_cast<size_t>(n), 0);  // pairs this rank sends to each peer
  for (int32_t e : in.ids) {
    if (e >= 0) rows_to[size_t(e / epr)]++;
  }
  int64_t k = 0;
  ASSERT_EQ(int64_t(rows.expert_offsets.size()), epr + 1);
  for (int le = 0; le < epr; ++le) {
    const int e = me * epr + le;
    ASSERT_EQ(rows.expert_offsets[size_t(le)], k);
    for (int src = 0; src < n; ++src) {
      const RankInput other = input_of(src, num_experts);
      for (int64_t t = 0; t < tokens_of(src); ++t) {
        for (int s = 0; s < kTopk; ++s) {
          if (other.ids[size_t(t * kTopk + s)] != e) continue;
          ASSERT_LT(k, rows.num_rows());
          ASSERT_EQ(rows.experts[size_t(k)], e);
          ASSERT_EQ(rows.weights[size_t(k)], other.weights[size_t(t * kTopk + s)]);
          const float* row = reinterpret_cast<const float*>(rows.rows.data()) + k * kHidden;
          for (int64_t c = 0; c < kHidden; ++c) {
            ASSERT_EQ(row[c], x_of(src, t, c)) << "expert " << e << " src " << src << " t " << t;
          }
          ++k;
        }
      }
    }
  }
  ASSERT_EQ(k, rows.num_rows());

  // Byte counters: counts exchange + payload rows of hidden*4 + 8 bytes to every other peer.
  uint64_t payload = 0;
  for (int p = 0; p < n; ++p) payload += p == me ? 0 : uint64_t(rows_to[size_t(p)]) * (kHidden * 4 + 8);
  EXPECT_EQ(comm->counters().bytes_of(cluster::CollectiveKind::kAllToAll), uint64_t(n - 1) * epr * 8);
  EXPECT_EQ(comm->counters().bytes_of(cluster::CollectiveKind::kAllToAllV), payload);
  EXPECT_EQ(comm->counters().total_bytes(), uint64_t(n - 1) * epr * 8 + payload);

  // Experts: y = (x * (e+1)) * w.
  std::vector<float> y(size_t(rows.num_rows() * kHidden));
  const float* xr = reinterpret_cast<const float*>(rows.rows.data());
  for (int64_t r = 0; r < rows.num_rows(); ++r) {
    for (int64_t c = 0; c < kHidden; ++c) {
      y[size_t(r * kHidden + c)] = (xr[r * kHidden + c] * float(rows.experts[size_t(r)] + 1)) *
                                   rows.weights[size_t(r)];
    }
  }
  comm->reset_counters();
  std::vector<float> out(size_t(num_tokens * kHidden), -1.f);
  ep.combine(y.data(), DType::kF32, layout, in.ids.data(), in.weights.data(), false, out.data());
  uint64_t back = 0;
  for (int p = 0; p < n; ++p) {
    int64_t rows_from = 0;
    const RankInput other = input_of(p, num_experts);
    for (int32_t e : other.ids) rows_from += (e >= 0 && e / epr == me) ? 1 : 0;
    back += p == me ? 0 : uint64_t(rows_from) * kHidden * 4;
  }
  EXPECT_EQ(comm->counters().bytes_of(cluster::CollectiveKind::kAllToAllV), back);

  // Single-rank reference: ascending expert id, fp32 accumulation (spec §6).
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::vector<int> slots;
    for (int s = 0; s < kTopk; ++s) {
      if (in.ids[size_t(t * kTopk + s)] >= 0) slots.push_back(s);
    }
    std::sort(slots.begin(), slots.end(), [&](int a, int b) {
      return in.ids[size_t(t * kTopk + a)] < in.ids[size_t(t * kTopk + b)];
    });
    for (int64_t c = 0; c < kHidden; ++c) {
      float acc = 0.f;
      for (int s : slots) {
        const int32_t e = in.ids[size_t(t * kTopk + s)];
        acc += (x_of(me, t, c) * float(e + 1)) * in.weights[size_t(t * kTopk + s)];
      }
      ASSERT_EQ(out[size_t(t * kHidden + c)], acc) << "token " << t << " channel " << c;
    }
  }
}

// BF16 payload and BF16 expert outputs, routing weight applied by combine().
TEST(ExpertParallel, Bf16WithWeightsInCombine) {
  auto comm = make_ep();
  const int n = comm->size(), me = comm->rank();
  const int num_experts = 2 * n;
  ExpertParallel ep(*comm, {.num_experts = num_experts, .hidden = kHidden, .topk = kTopk,
                            .dtype = DType::kBF16});
  const RankInput in = input_of(me, num_experts);
  const int64_t num_tokens = tokens_of(me);
  std::vector<uint16_t> xb(in.x.size());
  for (size_t i = 0; i < xb.size(); ++i) xb[i] = f32_to_bf16(in.x[i]);
  DispatchLayout layout;
  DispatchedRows rows = ep.dispatch(xb.data(), in.ids.data(), in.weights.data(), num_tokens, &layout);
  const auto* xr = reinterpret_cast<const uint16_t*>(rows.rows.data());
  std::vector<uint16_t> y(size_t(rows.num_rows() * kHidden));
  for (int64_t r = 0; r < rows.num_rows(); ++r) {
    for (int64_t c = 0; c < kHidden; ++c) {
      y[size_t(r * kHidden + c)] =
          f32_to_bf16(bf16_to_f32(xr[r * kHidden + c]) * float(rows.experts[size_t(r)] + 1));
    }
  }
  std::vector<float> out(size_t(num_tokens * kHidden));
  ep.combine(y.data(), DType::kBF16, layout, in.ids.data(), in.weights.data(), true, out.data());
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::vector<std::pair<int32_t, float>> experts;
    for (int s = 0; s < kTopk; ++s) {
      const int32_t e = in.ids[size_t(t * kTopk + s)];
      if (e >= 0) experts.push_back({e, in.weights[size_t(t * kTopk + s)]});
    }
    std::sort(experts.begin(), experts.end());
    for (int64_t c = 0; c < kHidden; ++c) {
      float acc = 0.f;
      for (auto [e, w] : experts) acc += round_bf16(round_bf16(x_of(me, t, c)) * float(e + 1)) * w;
      ASSERT_EQ(out[size_t(t * kHidden + c)], acc) << "token " << t << " channel " << c;
    }
  }
}

// FP8 wire: the rows arrive as the act_quant of the sender's rows (e4m3, one power-of-two scale per
// token per 128 channels), dequantized to the activation dtype; the payload shrinks to
// hidden + hidden/32 + 8 bytes per row. Channels span six orders of magnitude per block.
TEST(ExpertParallel, Fp8WireCarriesActQuantRows) {
  auto comm = make_ep();
  const int n = comm->size(), me = comm->rank();
  const int num_experts = 2 * n;
  constexpr int64_t kWide = 256;
  ExpertParallel ep(*comm, {.num_experts = num_experts, .hidden = kWide, .topk = kTopk, .dtype = DType::kF32,
                            .fp8_wire = true});
  EXPECT_EQ(ep.dispatch_row_bytes(), kWide + kWide / 128 * 4 + 8);
  auto x_wide = [](int rank, int64_t t, int64_t c) {
    return x_of(rank, t, c % kHidden) * std::ldexp(1.f, int((c * 5 + t + rank) % 21) - 10);
  };
  const RankInput in = input_of(me, num_experts);
  const int64_t num_tokens = tokens_of(me);
  std::vector<float> x(size_t(num_tokens * kWide));
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t c = 0; c < kWide; ++c) x[size_t(t * kWide + c)] = x_wide(me, t, c);
  }
  // Reference act_quant: s = 2^ceil(log2(amax / 448)), q = e4m3(x / s).
  auto quantized = [&](int rank, int64_t t, int64_t c) {
    const int64_t b = c / 128;
    float amax = 0.f;
    for (int64_t i = b * 128; i < b * 128 + 128; ++i) amax = std::max(amax, std::fabs(x_wide(rank, t, i)));
    int e = 0;
    const float m = std::frexp(amax / 448.f, &e);
    const float s = std::ldexp(1.f, m == 0.5f ? e - 1 : e);
    return round_e4m3(x_wide(rank, t, c) / s) * s;
  };
  comm->reset_counters();
  DispatchLayout layout;
  DispatchedRows rows = ep.dispatch(x.data(), in.ids.data(), in.weights.data(), num_tokens, &layout);
  const int epr = ep.experts_per_rank();
  int64_t k = 0;
  for (int le = 0; le < epr; ++le) {
    const int e = me * epr + le;
    for (int src = 0; src < n; ++src) {
      const RankInput other = input_of(src, num_experts);
      for (int64_t t = 0; t < tokens_of(src); ++t) {
        for (int s = 0; s < kTopk; ++s) {
          if (other.ids[size_t(t * kTopk + s)] != e) continue;
          ASSERT_EQ(rows.experts[size_t(k)], e);
          const float* row = reinterpret_cast<const float*>(rows.rows.data()) + k * kWide;
          for (int64_t c = 0; c < kWide; ++c) {
            ASSERT_EQ(row[c], quantized(src, t, c)) << "expert " << e << " src " << src << " t " << t << " c " << c;
          }
          ++k;
        }
      }
    }
  }
  ASSERT_EQ(k, rows.num_rows());
  uint64_t payload = 0;
  for (int32_t e : in.ids) payload += (e >= 0 && e / epr != me) ? uint64_t(ep.dispatch_row_bytes()) : 0;
  EXPECT_EQ(comm->counters().bytes_of(cluster::CollectiveKind::kAllToAllV), payload);
}

}  // namespace
}  // namespace v4rt::parallel
