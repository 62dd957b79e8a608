// SPDX-License-Identifier: MIT
// Backend::sample on the CPU backend against the host sampler (model/sampler.h) and the server's
// logprobs (model::token_logprobs): Philox4x32-10 known answers; greedy identical to argmax;
// the sampled frequencies over many seeds against the host sampler's exact distribution (Pearson
// chi-square, as the MTP sampling tests) for temperature, top-k and top-p on a small vocabulary and
// on the 129,280-token vocabulary with a peaked distribution; the same (seed, position) giving the
// same id in any row of any batch; logprobs and top-n alternatives equal to the server's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/philox.h"
#include "model/sampler.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::kernels {
namespace {

Backend& cpu() {
  static std::unique_ptr<Backend> b = make_cpu_backend();
  return *b;
}

struct Outputs {
  std::vector<int32_t> ids;
  std::vector<float> logprob;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

// Samples rows of `logits` ([rows.size(), vocab]) with `max_n` top-logprob columns.
Outputs run_sample(const std::vector<float>& logits, int64_t vocab, const std::vector<SampleRow>& rows, int max_n = 0) {
  const int64_t n = int64_t(rows.size());
  Outputs o;
  o.ids.assign(size_t(n), -7);
  o.logprob.assign(size_t(n), 0.0f);
  o.top_ids.assign(size_t(n * max_n), -7);
  o.top_logprobs.assign(size_t(n * max_n), 0.0f);
  SampleParams p;
  p.logits = TensorView(const_cast<float*>(logits.data()), DType::kF32, {n, vocab});
  p.rows = rows.data();
  p.out_ids = TensorView(o.ids.data(), DType::kI32, {n});
  p.out_logprob = TensorView(o.logprob.data(), DType::kF32, {n});
  if (max_n > 0) {
    p.out_top_ids = TensorView(o.top_ids.data(), DType::kI32, {n, max_n});
    p.out_top_logprobs = TensorView(o.top_logprobs.data(), DType::kF32, {n, max_n});
  }
  cpu().sample(p);
  return o;
}

// The host sampler's distribution with top-k applied first (ids outside the k best logits, ties
// to the lower id, masked to -inf), then temperature and the nucleus (model::sampling_distribution).
std::vector<double> host_distribution(const std::vector<float>& logits, double temperature, double top_p, int top_k) {
  std::vector<float> masked = logits;
  if (top_k > 0 && size_t(top_k) < logits.size()) {
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    for (size_t j = size_t(top_k); j < order.size(); ++j) masked[size_t(order[j])] = -INFINITY;
  }
  return model::sampling_distribution(masked, temperature, top_p);
}

// Counts of the ids drawn by Backend::sample with seeds 1..runs (one row per seed, 64 rows a call).
std::vector<int64_t> backend_counts(const std::vector<float>& logits, const SampleRow& base, int runs) {
  const int64_t vocab = int64_t(logits.size());
  std::vector<int64_t> counts(logits.size(), 0);
  for (int first = 1; first <= runs; first += 64) {
    std::vector<float> batch;
    std::vector<SampleRow> rows;
    for (int r = first; r < first + 64 && r <= runs; ++r) {
      batch.insert(batch.end(), logits.begin(), logits.end());
      SampleRow s = base;
      s.seed = uint64_t(r) * 0x9E3779B97F4A7C15ull;
      rows.push_back(s);
    }
    for (int32_t id : run_sample(batch, vocab, rows).ids) ++counts[size_t(id)];
  }
  return counts;
}

TEST(Philox, KnownAnswers) {
  // Random123's kat_vectors for philox4x32_10.
  const Philox4x32 zero = philox4x32_10(Philox4x32{{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  const Philox4x32 ones = philox4x32_10(Philox4x32{{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  const Philox4x32 pi = philox4x32_10(Philox4x32{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(Philox, UniformInRangeAndSpread) {
  double sum = 0.0;
  for (int64_t pos = 0; pos < 10000; ++pos) {
    const double u = sample_uniform(42, pos, 0);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000.0, 0.5, 0.01);
  EXPECT_NE(sample_uniform(42, 5, 0), sample_uniform(43, 5, 0));
  EXPECT_NE(sample_uniform(42, 5, 0), sample_uniform(42, 6, 0));
  EXPECT_NE(sample_uniform(42, 5, 0), sample_uniform(42, 5, 1));
  EXPECT_NE(sample_uniform(1, 0, 0), sample_uniform(uint64_t(1) << 32, 0, 0));  // both seed halves are key
}

TEST(BackendSample, GreedyEqualsHostArgmax) {
  std::mt19937_64 rng(5);
  const int64_t vocab = 1000;
  std::vector<float> logits;
  std::vector<SampleRow> rows(64);
  std::vector<int32_t> want;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::vector<float> l(static_cast<size_t>(vocab));
    std::uniform_int_distribution<int> small(-20, 20);  // many equal maxima: ties to the lower id
    for (float& v : l) v = r % 2 ? float(small(rng)) : std::normal_distribution<float>(0.f, 3.f)(rng);
    want.push_back(model::argmax(l));
    model::Sampler host({0.0, 1.0, 9});
    ASSERT_EQ(host.sample(l), want.back());
    logits.insert(logits.end(), l.begin(), l.end());
    rows[r].seed = r;
    rows[r].top_k = int(r % 3);  // ignored when greedy
  }
  EXPECT_EQ(run_sample(logits, vocab, rows).ids, want);
}

struct DistCase {
  float temperature;
  float top_p;
  int top_k;
};

TEST(BackendSample, SmallVocabularyDistributionsMatchHostSampler) {
  // 12 tokens, some equal logits (ties at the top-k and nucleus boundaries).
  const std::vector<float> logits = {1.2f, 0.3f, 2.0f, -0.5f, 0.3f, 1.7f, -1.0f, 0.9f, 0.3f, 2.0f, -2.5f, 0.0f};
  const int runs = 40000;
  for (const DistCase c : {DistCase{1.0f, 1.0f, 0}, DistCase{0.6f, 1.0f, 0}, DistCase{1.5f, 0.8f, 0},
                           DistCase{1.0f, 1.0f, 5}, DistCase{0.8f, 0.7f, 6}, DistCase{1.0f, 0.3f, 0},
                           DistCase{2.0f, 0.95f, 1}, DistCase{1.0f, 1.0f, 2}}) {
    SampleRow base;
    base.temperature = c.temperature;
    base.top_p = c.top_p;
    base.top_k = c.top_k;
    base.position = 17;
    const std::vector<int64_t> counts = backend_counts(logits, base, runs);
    const std::vector<double> exact = host_distribution(logits, c.temperature, c.top_p, c.top_k);
    for (size_t i = 0; i < exact.size(); ++i)
      if (exact[i] == 0.0) {
        EXPECT_EQ(counts[i], 0) << "token " << i << " outside the kept set drawn";
      }
    int df = 0;
    const double p = model::testing::chi_square_p(counts, exact, &df);
    std::printf("T %.2f top_p %.2f top_k %d: chi-square p = %.4g (df %d, %d draws)\n", c.temperature, c.top_p, c.top_k, p, df, runs);
    EXPECT_GT(p, 1e-3) << "T " << c.temperature << " top_p " << c.top_p << " top_k " << c.top_k;
  }
}

TEST(BackendSample, KeptSetIsTheHostSamplersSupport) {
  // The kept set of the CPU op equals the support of the host sampler's distribution, including
  // nuclei longer than the op's first partial sort (1024 ids) and ties at the boundaries.
  std::mt19937_64 rng(8);
  for (const int64_t vocab : {int64_t(40), int64_t(3000), int64_t(129280)}) {
    std::vector<float> logits(static_cast<size_t>(vocab));
    for (float& v : logits) v = round_bf16(std::normal_distribution<float>(0.f, vocab > 1000 ? 0.3f : 1.f)(rng));
    for (const DistCase c : {DistCase{1.0f, 0.9f, 0}, DistCase{0.7f, 0.5f, 0}, DistCase{1.0f, 0.95f, 2000},
                             DistCase{1.2f, 1.0f, 17}, DistCase{1.0f, 0.99f, 0}}) {
      SampleRow row;
      row.temperature = c.temperature;
      row.top_p = c.top_p;
      row.top_k = c.top_k;
      const cpu::SampleKept kept = cpu::sample_kept_set(logits.data(), vocab, row);
      const std::vector<double> exact = host_distribution(logits, c.temperature, c.top_p, c.top_k);
      std::vector<int32_t> support;
      for (size_t i = 0; i < exact.size(); ++i)
        if (exact[i] > 0.0) support.push_back(int32_t(i));
      EXPECT_EQ(kept.ids, support) << "vocab " << vocab << " T " << c.temperature << " top_p " << c.top_p << " top_k "
                                   << c.top_k;
    }
  }
}

TEST(BackendSample, ChiSquareDetectsAWrongDistribution) {
  // The draws with top_p 0.7 held against the full softmax: the test above would catch a sampler
  // that ignored top_p.
  const std::vector<float> logits = {1.2f, 0.3f, 2.0f, -0.5f, 0.3f, 1.7f, -1.0f, 0.9f};
  SampleRow base;
  base.temperature = 1.0f;
  base.top_p = 0.7f;
  const std::vector<int64_t> counts = backend_counts(logits, base, 20000);
  const double p = model::testing::chi_square_p(counts, host_distribution(logits, 1.0, 1.0, 0));
  EXPECT_LT(p, 1e-6);
}

TEST(BackendSample, FullVocabularyPeakedDistributionsMatchHostSampler) {
  const int64_t vocab = 129280;
  std::mt19937_64 rng(11);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& v : logits) v = std::normal_distribution<float>(0.f, 1.f)(rng);
  // A peaked head: 6 tokens spread over the vocabulary carry most of the mass.
  const int32_t head[] = {17, 4096, 65536, 100003, 129279, 77};
  const float head_logit[] = {14.0f, 13.5f, 13.5f, 12.8f, 12.0f, 11.0f};
  for (int i = 0; i < 6; ++i) logits[size_t(head[i])] = head_logit[i];
  const int runs = 1500;
  for (const DistCase c : {DistCase{1.0f, 1.0f, 0}, DistCase{0.8f, 0.9f, 0}, DistCase{1.0f, 1.0f, 4}}) {
    SampleRow base;
    base.temperature = c.temperature;
    base.top_p = c.top_p;
    base.top_k = c.top_k;
    base.position = 1000000;
    const std::vector<int64_t> counts = backend_counts(logits, base, runs);
    const std::vector<double> exact = host_distribution(logits, c.temperature, c.top_p, c.top_k);
    int df = 0;
    const double p = model::testing::chi_square_p(counts, exact, &df);
    std::printf("vocab %lld, T %.2f top_p %.2f top_k %d: chi-square p = %.4g (df %d, %d draws)\n", (long long)vocab,
                c.temperature, c.top_p, c.top_k, p, df, runs);
    EXPECT_GT(p, 1e-3) << "T " << c.temperature << " top_p " << c.top_p << " top_k " << c.top_k;
    for (size_t i = 0; i < exact.size(); ++i)
      if (exact[i] == 0.0) {
        EXPECT_EQ(counts[i], 0) << "token " << i << " outside the kept set drawn";
      }
  }
}

TEST(BackendSample, DrawsIndependentOfBatchComposition) {
  // Eight requests (own seeds, positions, parameters) sampled alone, then together in shuffled
  // batches with unrelated rows around them: every request draws the same id everywhere.
  const int64_t vocab = 300;
  std::mt19937_64 rng(3);
  auto random_logits = [&] {
    std::vector<float> l(static_cast<size_t>(vocab));
    for (float& v : l) v = std::normal_distribution<float>(0.f, 1.5f)(rng);
    return l;
  };
  std::vector<std::vector<float>> req_logits;
  std::vector<SampleRow> req_rows;
  std::vector<int32_t> alone;
  for (int i = 0; i < 8; ++i) {
    req_logits.push_back(random_logits());
    SampleRow s;
    s.seed = 1000 + uint64_t(i);
    s.position = 5 + 37 * i;
    s.temperature = 0.7f + 0.1f * float(i);
    s.top_p = i % 2 ? 0.9f : 1.0f;
    s.top_k = i % 3 == 0 ? 50 : 0;
    s.draw = uint32_t(i % 2);
    req_rows.push_back(s);
    alone.push_back(run_sample(req_logits.back(), vocab, {s}).ids[0]);
  }
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<int> perm(8);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<float> batch;
    std::vector<SampleRow> rows;
    std::vector<int> where(8);
    for (int i : perm) {
      for (int f = 0; f < trial; ++f) {  // filler rows
        const std::vector<float> l = random_logits();
        batch.insert(batch.end(), l.begin(), l.end());
        SampleRow s;
        s.seed = 7;
        s.position = f;
        s.temperature = 1.0f;
        rows.push_back(s);
      }
      where[size_t(i)] = int(rows.size());
      batch.insert(batch.end(), req_logits[size_t(i)].begin(), req_logits[size_t(i)].end());
      rows.push_back(req_rows[size_t(i)]);
    }
    const Outputs o = run_sample(batch, vocab, rows);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(o.ids[size_t(where[size_t(i)])], alone[size_t(i)]) << "request " << i << ", trial " << trial;
  }
  // The stream moves with the position: one request's ids over 64 positions are not all equal.
  std::vector<SampleRow> steps(64, req_rows[0]);
  std::vector<float> batch;
  for (int t = 0; t < 64; ++t) {
    steps[size_t(t)].position = t;
    batch.insert(batch.end(), req_logits[0].begin(), req_logits[0].end());
  }
  const Outputs o = run_sample(batch, vocab, steps);
  EXPECT_GT(std::set<int32_t>(o.ids.begin(), o.ids.end()).size(), 5u);
}

TEST(BackendSample, LogprobsEqualTheServers) {
  const int64_t vocab = 129280;
  const int max_n = 5;
  std::mt19937_64 rng(21);
  std::vector<float> logits;
  std::vector<SampleRow> rows;
  for (int r = 0; r < 6; ++r) {
    for (int64_t i = 0; i < vocab; ++i) logits.push_back(std::normal_distribution<float>(0.f, 2.f)(rng));
    logits[size_t(r * vocab + 3)] = logits[size_t(r * vocab + 9)] = 11.0f;  // a tie in the top-n
    SampleRow s;
    s.seed = uint64_t(r);
    s.temperature = r % 2 ? 0.9f : 0.0f;
    s.top_p = 0.95f;
    s.n_logprobs = r % (max_n + 1);
    rows.push_back(s);
  }
  const Outputs o = run_sample(logits, vocab, rows, max_n);
  for (size_t r = 0; r < rows.size(); ++r) {
    const std::span<const float> l(logits.data() + r * size_t(vocab), size_t(vocab));
    const model::TokenLogprobs ev = model::token_logprobs(l, o.ids[r], rows[r].n_logprobs);
    EXPECT_NEAR(o.logprob[r], ev.logprob, 1e-5) << "row " << r;
    ASSERT_EQ(ev.top.size(), size_t(rows[r].n_logprobs));
    for (int j = 0; j < max_n; ++j) {
      const size_t at = r * max_n + size_t(j);
      if (size_t(j) < ev.top.size()) {
        EXPECT_EQ(o.top_ids[at], ev.top[size_t(j)].first) << "row " << r << " rank " << j;
        EXPECT_NEAR(o.top_logprobs[at], ev.top[size_t(j)].second, 1e-5) << "row " << r << " rank " << j;
      } else {
        EXPECT_EQ(o.top_ids[at], -1);
        EXPECT_EQ(o.top_logprobs[at], -INFINITY);
      }
    }
  }
}

TEST(BackendSample, RejectsBadParameters) {
  const std::vector<float> logits = {0.f, 1.f, 2.f};
  SampleRow s;
  s.temperature = 1.0f;
  s.top_p = 0.0f;
  EXPECT_THROW(run_sample(logits, 3, {s}), std::exception);
  s.top_p = 1.0f;
  s.n_logprobs = 2;  // no top-logprob columns
  EXPECT_THROW(run_sample(logits, 3, {s}), std::exception);
}

}  // namespace
}  // namespace v4rt::kernels
