// SPDX-License-Identifier: MIT
// Sampler: greedy ties to the lower id, seeded determinism, top-p truncation, and the sampling
// frequencies of a two-token distribution against its softmax probabilities. The exposed pieces
// (weights, nucleus, distribution, uniform draw, draw_index) and the seeded draws of Sampler
// compared with a self-contained copy of the original sampling loop.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "model/sampler.h"

namespace v4rt::model {
namespace {

TEST(Sampler, GreedyFirstMaximum) {
  Sampler s({0.0, 1.0, 1});
  const std::vector<float> logits = {1, 5, 5, -2};
  EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, SeededDeterministic) {
  const std::vector<float> logits = {0.1f, 0.5f, 0.2f, 0.9f, -0.3f};
  Sampler a({1.0, 1.0, 42}), b({1.0, 1.0, 42}), c({1.0, 1.0, 43});
  std::vector<int32_t> ra, rb, rc;
  for (int i = 0; i < 64; ++i) {
    ra.push_back(a.sample(logits));
    rb.push_back(b.sample(logits));
    rc.push_back(c.sample(logits));
  }
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
}

TEST(Sampler, TopPKeepsTheNucleus) {
  // p = softmax([ln 6, ln 3, ln 1]) = 0.6, 0.3, 0.1: top_p 0.5 keeps token 0 only, 0.85 keeps 0 and 1.
  const std::vector<float> logits = {float(std::log(6.0)), float(std::log(3.0)), 0.0f};
  Sampler only({1.0, 0.5, 7});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(only.sample(logits), 0);
  Sampler two({1.0, 0.85, 7});
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 3000; ++i) ++counts[two.sample(logits)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 3000.0, 2.0 / 3.0, 0.04);  // renormalised 0.6 / 0.9
}

TEST(Sampler, TemperatureFrequencies) {
  // logits {ln 3, 0} at temperature 1: p0 = 0.75; at temperature 2: p0 = sqrt 3 / (sqrt 3 + 1).
  const std::vector<float> logits = {float(std::log(3.0)), 0.0f};
  for (double temp : {1.0, 2.0}) {
    Sampler s({temp, 1.0, 11});
    int zero = 0;
    const int n = 4000;
    for (int i = 0; i < n; ++i) zero += s.sample(logits) == 0;
    const double p0 = std::pow(3.0, 1.0 / temp) / (std::pow(3.0, 1.0 / temp) + 1.0);
    EXPECT_NEAR(double(zero) / n, p0, 0.03) << "temperature " << temp;
  }
}

// logprobs / top_logprobs of a decided token: log-softmax values, best first, ties by lower id.
TEST(Sampler, TokenLogprobs) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  double z = 0;
  for (float v : logits) z += std::exp(double(v));
  const double log_z = std::log(z);
  const TokenLogprobs lp = token_logprobs(logits, 2, 3);
  EXPECT_NEAR(lp.logprob, 2.0 - log_z, 1e-6);
  ASSERT_EQ(lp.top.size(), 3u);
  EXPECT_EQ(lp.top[0].first, 1);  // the tie 1 / 3 goes to the lower id
  EXPECT_EQ(lp.top[1].first, 3);
  EXPECT_EQ(lp.top[2].first, 2);
  EXPECT_NEAR(lp.top[0].second, 3.0 - log_z, 1e-6);
  EXPECT_TRUE(token_logprobs(logits, 4, 0).top.empty());
  EXPECT_EQ(token_logprobs(logits, 0, 10).top.size(), logits.size());
}

TEST(Sampler, RejectsBadTopP) { EXPECT_THROW(Sampler({1.0, 0.0, 1}), std::exception); }

// The sampling loop as it was written before its pieces became public, kept here verbatim in
// substance: seeded draws must stay token for token what they were.
int32_t reference_sample(std::span<const float> logits, double temperature, double top_p, std::mt19937_64& rng) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  if (temperature <= 0.0) return best;
  const double mx = logits[size_t(best)];
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((double(logits[i]) - mx) / temperature);
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  size_t keep = 0;
  double mass = 0.0;
  while (keep < order.size()) {
    mass += p[size_t(order[keep])];
    ++keep;
    if (mass >= top_p * total) break;
  }
  double r = double(rng() >> 11) * (1.0 / 9007199254740992.0) * mass;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[size_t(order[i])];
    if (r < 0.0) return order[i];
  }
  return order[keep - 1];
}

TEST(Sampler, SeededDrawsUnchanged) {
  std::mt19937_64 gen(99);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  int64_t compared = 0;
  for (double temp : {0.0, 0.3, 1.0, 1.7}) {
    for (double top_p : {1.0, 0.9, 0.5, 0.05}) {
      for (uint64_t seed : {0ull, 1ull, 12345ull}) {
        Sampler s({temp, top_p, seed});
        std::mt19937_64 rng(seed);
        for (int i = 0; i < 50; ++i) {
          std::vector<float> logits(size_t(3 + i % 40));
          for (float& v : logits) v = normal(gen);
          if (i % 7 == 0) logits[1] = logits[0];  // ties
          ASSERT_EQ(s.sample(logits), reference_sample(logits, temp, top_p, rng))
              << "temperature " << temp << ", top_p " << top_p << ", seed " << seed << ", draw " << i;
          ++compared;
        }
      }
    }
  }
  EXPECT_EQ(compared, 4 * 4 * 3 * 50);
}

// Vocabulary-sized logits take the radix-sort path of the nucleus order: the draws and the order
// must equal the comparison-sort reference exactly, with ties (repeated logits) and with weights
// that underflow to 0 (temperature 0.02 over logits of spread 2: many equal zero keys).
TEST(Sampler, VocabularySizedDrawsUnchanged) {
  std::mt19937_64 gen(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(129280);
  for (float& v : logits) v = normal(gen);
  for (size_t i = 0; i < logits.size(); i += 97) logits[i + 1 < logits.size() ? i + 1 : i] = logits[i];  // ties
  double sort_s = 0.0;
  int draws = 0;
  for (double temp : {1.0, 0.7, 0.02}) {
    for (double top_p : {1.0, 0.9}) {
      Sampler s({temp, top_p, 42});
      std::mt19937_64 rng(42);
      for (int i = 0; i < 4; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        const int32_t got = s.sample(logits);
        sort_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ++draws;
        ASSERT_EQ(got, reference_sample(logits, temp, top_p, rng)) << "temperature " << temp << ", top_p " << top_p;
      }
      const std::vector<double> w = sampling_weights(logits, temp);
      std::vector<int32_t> want(w.size());
      std::iota(want.begin(), want.end(), 0);
      std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return w[size_t(a)] > w[size_t(b)]; });
      ASSERT_EQ(nucleus_of(w, top_p).order, want) << "temperature " << temp;
    }
  }
  std::printf("Sampler::sample over %zu logits: %.2f ms per draw\n", logits.size(), 1e3 * sort_s / draws);
}

TEST(SamplerPieces, DistributionAndNucleus) {
  // weights 3, 6, 1, 3 of 13 (logits ln 3, ln 6, 0, ln 3 at temperature 1); ties keep the lower id first.
  const std::vector<float> logits = {float(std::log(3.0)), float(std::log(6.0)), 0.0f, float(std::log(3.0))};
  const std::vector<double> w = sampling_weights(logits, 1.0);
  EXPECT_NEAR(w[1], 1.0, 1e-12);
  EXPECT_NEAR(w[0], 0.5, 1e-6);
  const Nucleus n = nucleus_of(w, 0.65);  // 6 / 13 < 0.65 <= 9 / 13
  ASSERT_EQ(n.keep, 2u);
  EXPECT_EQ(n.order[0], 1);
  EXPECT_EQ(n.order[1], 0);  // tie with id 3: the lower id first
  EXPECT_EQ(n.order[2], 3);
  const std::vector<double> d = sampling_distribution(logits, 1.0, 0.65);
  EXPECT_NEAR(d[1], 2.0 / 3.0, 1e-6);
  EXPECT_NEAR(d[0], 1.0 / 3.0, 1e-6);
  EXPECT_EQ(d[2] + d[3], 0.0);
  const std::vector<double> all = sampling_distribution(logits, 2.0, 1.0);
  EXPECT_NEAR(std::accumulate(all.begin(), all.end(), 0.0), 1.0, 1e-12);
  EXPECT_NEAR(all[1] / all[2], std::sqrt(6.0), 1e-5);
  const std::vector<double> greedy = sampling_distribution(logits, 0.0, 1.0);
  EXPECT_EQ(greedy[1], 1.0);
}

TEST(SamplerPieces, DrawIndexAndUniform) {
  const std::vector<double> w = {0.0, 2.0, 0.0, 1.0, 1.0};  // cumulative 0 | 2 | 3 | 4 of 4
  EXPECT_EQ(draw_index(w, 0.0), 1);
  EXPECT_EQ(draw_index(w, 0.49), 1);
  EXPECT_EQ(draw_index(w, 0.5), 3);
  EXPECT_EQ(draw_index(w, 0.74), 3);
  EXPECT_EQ(draw_index(w, 0.75), 4);
  EXPECT_EQ(draw_index(w, 0.999999), 4);
  std::mt19937_64 a(5), b(5);
  for (int i = 0; i < 100; ++i) {
    const double u = uniform_draw(a);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    EXPECT_EQ(u, double(b() >> 11) / 9007199254740992.0);
  }
}

}  // namespace
}  // namespace v4rt::model
