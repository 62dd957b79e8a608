// SPDX-License-Identifier: MIT
// The CUDA Backend::sample against the CPU op on the same Philox streams: greedy ids identical
// (F32 and BF16 logits); sampled ids identical except where the uniform falls within 1e-6 of the
// kept mass from a boundary of the cumulative distribution (fp32 exp on both sides, fixed-point
// masses on the GPU against fp64 on the CPU: a draw that close to a boundary may land on the
// neighbouring id), checked for every differing row; top-n ids identical (ties to the lower id) and
// logprobs within 1e-4; ids independent of the row and batch a request is sampled in.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/philox.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

constexpr double kBoundaryTol = 1e-6;  // of the kept mass
constexpr double kLogprobTol = 1e-4;

struct SampleRun {
  std::vector<int32_t> ids;
  std::vector<float> logprob;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

// Samples `logits` [rows.size(), vocab] on `backend` (GPU logits as `gpu_dtype`).
SampleRun run(bool gpu, const std::vector<float>& logits, int64_t vocab, const std::vector<SampleRow>& rows, int max_n,
        DType gpu_dtype = DType::kF32) {
  const int64_t n = int64_t(rows.size());
  Dual l = make_dual({n, vocab}, logits, gpu_dtype);
  Dual ids = make_dual_i32({n}, std::vector<int32_t>(size_t(n), -7));
  Dual lp = make_dual({n}, std::vector<float>(size_t(n), 0.f), DType::kF32);
  const int64_t cols = std::max(max_n, 1);
  Dual tid = make_dual_i32({n, cols}, std::vector<int32_t>(size_t(n * cols), -7));
  Dual tlp = make_dual({n, cols}, std::vector<float>(size_t(n * cols), 0.f), DType::kF32);
  Backend& b = gpu ? gpu_backend() : cpu_backend();
  Buffer row_buf = b.alloc(rows.size() * sizeof(SampleRow));
  b.copy_to_device(row_buf.data(), rows.data(), rows.size() * sizeof(SampleRow));
  SampleParams p;
  p.logits = gpu ? l.gpu : l.cpu;
  p.rows = static_cast<const SampleRow*>(row_buf.data());
  p.out_ids = gpu ? ids.gpu : ids.cpu;
  p.out_logprob = gpu ? lp.gpu : lp.cpu;
  if (max_n > 0) {
    p.out_top_ids = gpu ? tid.gpu : tid.cpu;
    p.out_top_logprobs = gpu ? tlp.gpu : tlp.cpu;
  }
  b.sample(p);
  b.synchronize();
  SampleRun r;
  r.ids = gpu ? gpu_i32(ids) : cpu_i32(ids);
  r.logprob = gpu ? lp.gpu_values() : lp.cpu_values();
  if (max_n > 0) {
    r.top_ids = gpu ? gpu_i32(tid) : cpu_i32(tid);
    r.top_logprobs = gpu ? tlp.gpu_values() : tlp.cpu_values();
  }
  return r;
}

// Whether GPU id `g` differing from CPU id `c` is a draw within kBoundaryTol of the boundary
// between the two neighbouring kept ids.
bool near_boundary(const float* logits, int64_t vocab, const SampleRow& s, int32_t c, int32_t g) {
  const cpu::SampleKept kept = cpu::sample_kept_set(logits, vocab, s);
  const auto ic = std::find(kept.ids.begin(), kept.ids.end(), c) - kept.ids.begin();
  const auto ig = std::find(kept.ids.begin(), kept.ids.end(), g) - kept.ids.begin();
  if (ig == int64_t(kept.ids.size()) || std::abs(ic - ig) != 1) return false;
  double cum = 0.0;
  for (int64_t i = 0; i <= std::min(ic, ig); ++i) cum += kept.weights[size_t(i)];
  const double target = sample_uniform(s.seed, s.position, s.draw) * kept.mass;
  return std::abs(target - cum) <= kBoundaryTol * kept.mass;
}

void expect_same_ids(const std::string& what, const std::vector<float>& logits, int64_t vocab,
                     const std::vector<SampleRow>& rows, const SampleRun& cpu, const SampleRun& gpu) {
  int near = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (cpu.ids[r] == gpu.ids[r]) continue;
    const bool ok = rows[r].temperature > 0.0f &&
                    near_boundary(logits.data() + r * size_t(vocab), vocab, rows[r], cpu.ids[r], gpu.ids[r]);
    EXPECT_TRUE(ok) << what << " row " << r << ": cpu " << cpu.ids[r] << ", gpu " << gpu.ids[r] << " (T "
                    << rows[r].temperature << " top_p " << rows[r].top_p << " top_k " << rows[r].top_k << ")";
    near += ok;
  }
  std::printf("%s: %zu rows, %d draws within %.0e of a boundary\n", what.c_str(), rows.size(), near, kBoundaryTol);
}

std::vector<float> random_logits(Rng& rng, int64_t rows, int64_t vocab, float sd, bool ties) {
  std::vector<float> v(size_t(rows * vocab));
  for (float& x : v) x = ties ? round_bf16(std::round(rng.normal(sd))) : round_bf16(rng.normal(sd));
  return v;
}

TEST(CudaSample, GreedyIdenticalF32AndBf16) {
  V4RT_REQUIRE_GPU();
  Rng rng(1);
  for (auto [rows, vocab, ties] : {std::tuple{1, int64_t(129280), false}, {64, int64_t(129280), true}, {33, int64_t(1000), true},
                                   {256, int64_t(4097), false}}) {
    const std::vector<float> logits = random_logits(rng, rows, vocab, 3.f, ties);
    std::vector<SampleRow> srows(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) srows[size_t(r)].seed = uint64_t(r);
    const SampleRun c = run(false, logits, vocab, srows, 0);
    EXPECT_EQ(run(true, logits, vocab, srows, 0, DType::kF32).ids, c.ids) << rows << "x" << vocab << " F32";
    EXPECT_EQ(run(true, logits, vocab, srows, 0, DType::kBF16).ids, c.ids) << rows << "x" << vocab << " BF16";
  }
}

TEST(CudaSample, SampledIdsMatchCpuOnTheSameStreams) {
  V4RT_REQUIRE_GPU();
  Rng rng(2);
  const float temps[] = {0.5f, 1.0f, 1.3f};
  const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.999f};
  const int top_ks[] = {0, 1, 7, 50, 4000};
  for (auto [rows, vocab, ties] : {std::tuple{256, int64_t(129280), false}, {96, int64_t(129280), true},
                                   {512, int64_t(1000), true}, {200, int64_t(33), false}}) {
    const std::vector<float> logits = random_logits(rng, rows, vocab, 2.f, ties);
    std::vector<SampleRow> srows(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) {
      SampleRow& s = srows[size_t(r)];
      s.seed = 0x1234567890ull * uint64_t(r + 1);
      s.position = int64_t(r) * 1001;
      s.draw = uint32_t(r % 3);
      s.temperature = r % 17 == 0 ? 0.0f : temps[r % 3];
      s.top_p = top_ps[(r / 3) % 4];
      s.top_k = top_ks[(r / 12) % 5];
    }
    const std::string what = std::to_string(rows) + "x" + std::to_string(vocab) + (ties ? " with ties" : "");
    const SampleRun c = run(false, logits, vocab, srows, 0);
    expect_same_ids(what + " F32", logits, vocab, srows, c, run(true, logits, vocab, srows, 0, DType::kF32));
    expect_same_ids(what + " BF16", logits, vocab, srows, c, run(true, logits, vocab, srows, 0, DType::kBF16));
  }
}

TEST(CudaSample, TopLogprobsMatchCpu) {
  V4RT_REQUIRE_GPU();
  Rng rng(3);
  const int64_t vocab = 129280;
  const int rows = 24, max_n = 20;
  std::vector<float> logits = random_logits(rng, rows, vocab, 2.f, false);
  for (int r = 0; r < rows; ++r)  // a run of equal logits at the top: ties to the lower id
    for (int64_t i : {int64_t(5), int64_t(700), int64_t(129279), int64_t(64)}) logits[size_t(r * vocab + i)] = 12.0f;
  std::vector<SampleRow> srows(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    srows[size_t(r)].seed = uint64_t(r);
    srows[size_t(r)].temperature = r % 2 ? 0.8f : 0.0f;
    srows[size_t(r)].n_logprobs = r % (max_n + 1);
  }
  const SampleRun c = run(false, logits, vocab, srows, max_n);
  const SampleRun g = run(true, logits, vocab, srows, max_n);
  expect_same_ids("top logprobs rows", logits, vocab, srows, c, g);
  EXPECT_EQ(g.top_ids, c.top_ids);
  for (size_t i = 0; i < c.top_logprobs.size(); ++i) {
    if (std::isinf(c.top_logprobs[i])) {
      EXPECT_EQ(g.top_logprobs[i], c.top_logprobs[i]) << "column " << i;
    } else {
      EXPECT_NEAR(g.top_logprobs[i], c.top_logprobs[i], kLogprobTol) << "entry " << i;
    }
  }
  for (int r = 0; r < rows; ++r)
    if (g.ids[size_t(r)] == c.ids[size_t(r)]) {
      EXPECT_NEAR(g.logprob[size_t(r)], c.logprob[size_t(r)], kLogprobTol) << "row " << r;
    }
}

TEST(CudaSample, IdsIndependentOfBatchRow) {
  V4RT_REQUIRE_GPU();
  Rng rng(4);
  const int64_t vocab = 129280;
  const int rows = 16;
  const std::vector<float> logits = random_logits(rng, rows, vocab, 2.f, false);
  std::vector<SampleRow> srows(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    srows[size_t(r)].seed = 99 + uint64_t(r);
    srows[size_t(r)].position = 7 * r;
    srows[size_t(r)].temperature = 1.0f;
    srows[size_t(r)].top_p = r % 2 ? 0.95f : 1.0f;
  }
  const SampleRun together = run(true, logits, vocab, srows, 0);
  std::vector<float> reversed;
  std::vector<SampleRow> rrows(srows.rbegin(), srows.rend());
  for (int r = rows - 1; r >= 0; --r)
    reversed.insert(reversed.end(), logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
  const SampleRun back = run(true, reversed, vocab, rrows, 0);
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(back.ids[size_t(rows - 1 - r)], together.ids[size_t(r)]) << "row " << r;
    const std::vector<float> one(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    EXPECT_EQ(run(true, one, vocab, {srows[size_t(r)]}, 0).ids[0], together.ids[size_t(r)]) << "row " << r << " alone";
  }
}

// A few rows are split over many blocks (kernels/cuda/sample.cu, "Split rows"): the same ids, top-n
// ids and logprobs as the one-block-per-row kernel of a larger batch, for top-k, top-p (candidate
// lists that fit and that overflow), whole-vocabulary draws, greedy and top-n rows.
TEST(CudaSample, SplitRowsMatchOneBlockRows) {
  V4RT_REQUIRE_GPU();
  Rng rng(5);
  const int64_t vocab = 129280;
  const int rows = 24, max_n = 20;
  std::vector<float> logits = random_logits(rng, rows, vocab, 2.f, false);
  for (int r = 0; r < rows; ++r)  // peaked rows: a short nucleus
    if (r % 2)
      for (int64_t i = 0; i < 40; ++i) logits[size_t(r * vocab + (i * 3217 + r) % vocab)] = 14.0f + float(i % 5);
  const float top_ps[] = {1.0f, 0.9f, 0.5f};
  const int top_ks[] = {0, 1, 50, 4000};
  std::vector<SampleRow> srows(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    SampleRow& s = srows[size_t(r)];
    s.seed = 7 + uint64_t(r);
    s.position = 13 * r;
    s.temperature = r % 7 == 0 ? 0.0f : 0.8f;
    s.top_p = top_ps[r % 3];
    s.top_k = top_ks[(r / 3) % 4];
    s.n_logprobs = (r * 7) % (max_n + 1);
  }
  const SampleRun together = run(true, logits, vocab, srows, max_n);
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> one(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    const SampleRun alone = run(true, one, vocab, {srows[size_t(r)]}, max_n);
    EXPECT_EQ(alone.ids[0], together.ids[size_t(r)]) << "row " << r;
    EXPECT_EQ(alone.logprob[0], together.logprob[size_t(r)]) << "row " << r;
    for (int j = 0; j < max_n; ++j) {
      EXPECT_EQ(alone.top_ids[size_t(j)], together.top_ids[size_t(r * max_n + j)]) << "row " << r << " column " << j;
      EXPECT_EQ(alone.top_logprobs[size_t(j)], together.top_logprobs[size_t(r * max_n + j)])
          << "row " << r << " column " << j;
    }
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
