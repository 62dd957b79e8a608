// SPDX-License-Identifier: MIT
// Sampler: greedy ties to the lower id, seeded determinism, top-p truncation, and the sampling
// frequencies of a two-token distribution against its softmax probabilities.
#include <gtest/gtest.h>

#include <cmath>
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

TEST(Sampler, RejectsBadTopP) { EXPECT_THROW(Sampler({1.0, 0.0, 1}), std::exception); }

}  // namespace
}  // namespace v4rt::model
