// SPDX-License-Identifier: MIT
// Sampled speculative decoding keeps the output distribution: on a 16-token-vocabulary, 3-layer
// synthetic model with an MTP block, the joint distribution of the first two generated tokens is computed
// exactly from the main model (p(t1) from the prompt's logits, p(t2 | t1) from one step per t1),
// and a Pearson chi-square test compares it with many seeded speculative runs (draft depth 1 and
// 2). Pass: p-value > 1e-3. The same test must reject a deliberately wrong acceptance rule
// (resampling from p instead of norm(max(0, p - q)) after a rejection) and must accept plain
// non-speculative Sampler runs.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/speculative.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::model {
namespace {

constexpr double kPValue = 1e-3;
constexpr int kRuns = 2000;
constexpr double kTemperature = 1.0;
constexpr double kTopP = 1.0;

class MtpSampling : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // The first 3 layers of tiny (window, CSA, HCA) keep the many runs fast.
    lm_ = new testing::LoadedModel(slice_layers(testing::tiny_mtp_config(/*vocab_size=*/16), 3), /*seed=*/5);
    Model& m = *lm_->model;
    const int64_t v = m.config().vocab_size;
    auto seq = m.new_sequence();
    const std::vector<double> p1 =
        sampling_distribution(testing::step_logits(m, *seq, prompt()), kTemperature, kTopP);
    exact_ = new std::vector<double>(size_t(v * v), 0.0);
    for (int64_t t1 = 0; t1 < v; ++t1) {
      if (p1[size_t(t1)] == 0.0) continue;
      auto s = seq->clone();
      const std::vector<double> p2 =
          sampling_distribution(testing::step_logits(m, *s, {int32_t(t1)}), kTemperature, kTopP);
      for (int64_t t2 = 0; t2 < v; ++t2) (*exact_)[size_t(t1 * v + t2)] = p1[size_t(t1)] * p2[size_t(t2)];
    }
  }
  static void TearDownTestSuite() {
    delete exact_;
    delete lm_;
  }
  static std::vector<int32_t> prompt() { return {3, 9, 4}; }

  // Counts of (t1, t2) over kRuns speculative runs with seeds 1..kRuns.
  std::vector<int64_t> speculative_counts(int depth, SpeculativeOptions::Rule rule, double* acceptance) {
    const int64_t v = lm_->model->config().vocab_size;
    std::vector<int64_t> counts(size_t(v * v), 0);
    int64_t drafted = 0, accepted = 0;
    for (int r = 1; r <= kRuns; ++r) {
      SpeculativeOptions so;
      so.depth = depth;
      so.sampler = {kTemperature, kTopP, uint64_t(r)};
      so.rule = rule;
      SpeculativeDecoder dec(*lm_->model, *lm_->mtp, so);
      const std::vector<int32_t> out = dec.generate(prompt(), 2);
      counts[size_t(out[0] * v + out[1])] += 1;
      drafted += dec.stats().drafted;
      accepted += dec.stats().accepted;
    }
    *acceptance = drafted ? double(accepted) / double(drafted) : 0.0;
    return counts;
  }

  static testing::LoadedModel* lm_;
  static std::vector<double>* exact_;
};
testing::LoadedModel* MtpSampling::lm_ = nullptr;
std::vector<double>* MtpSampling::exact_ = nullptr;

TEST_F(MtpSampling, PlainSamplerMatchesExactDistribution) {
  Model& m = *lm_->model;
  const int64_t v = m.config().vocab_size;
  std::vector<int64_t> counts(size_t(v * v), 0);
  for (int r = 1; r <= kRuns; ++r) {
    Sampler s({kTemperature, kTopP, uint64_t(r)});
    auto seq = m.new_sequence();
    const int32_t t1 = s.sample(testing::step_logits(m, *seq, prompt()));
    const int32_t t2 = s.sample(testing::step_logits(m, *seq, {t1}));
    counts[size_t(t1 * v + t2)] += 1;
  }
  int df = 0;
  const double p = testing::chi_square_p(counts, *exact_, &df);
  std::printf("plain sampling: chi-square p = %.4g (df %d, %d runs)\n", p, df, kRuns);
  EXPECT_GT(p, kPValue);
}

TEST_F(MtpSampling, SpeculativeMatchesExactDistribution) {
  for (int depth : {1, 2}) {
    double acceptance = 0;
    const std::vector<int64_t> counts = speculative_counts(depth, SpeculativeOptions::Rule::kExact, &acceptance);
    int df = 0;
    const double p = testing::chi_square_p(counts, *exact_, &df);
    std::printf("speculative depth %d: chi-square p = %.4g (df %d, %d runs), acceptance rate %.3f\n", depth, p, df,
                kRuns, acceptance);
    EXPECT_GT(p, kPValue) << "depth " << depth;
    EXPECT_GT(acceptance, 0.0);
  }
}

// Greedy on the same small-vocabulary model, where the untrained draft agrees with the main model
// often enough that accepted drafts occur naturally: output equal to plain greedy.
TEST_F(MtpSampling, GreedyEqualsPlainWithNaturalAcceptance) {
  Model& m = *lm_->model;
  int64_t accepted = 0;
  for (int depth : {1, 2, 3}) {
    for (uint32_t p = 0; p < 2; ++p) {
      const std::vector<int32_t> pr = testing::test_prompt(m.config().vocab_size, 4 + int(p) * 9, 60 + p);
      SpeculativeOptions so;
      so.depth = depth;
      SpeculativeDecoder dec(m, *lm_->mtp, so);
      EXPECT_EQ(dec.generate(pr, 40), testing::plain_greedy(m, pr, 40)) << "depth " << depth << ", prompt " << p;
      std::printf("greedy depth %d prompt %u: acceptance rate %.3f, tokens per verify step %.3f\n", depth, p,
                  dec.stats().acceptance_rate(), dec.stats().tokens_per_step());
      accepted += dec.stats().accepted;
    }
  }
  EXPECT_GT(accepted, 0);
}

TEST_F(MtpSampling, WrongAcceptanceRuleIsDetected) {
  double acceptance = 0;
  const std::vector<int64_t> counts =
      speculative_counts(1, SpeculativeOptions::Rule::kResampleFromTarget, &acceptance);
  int df = 0;
  const double p = testing::chi_square_p(counts, *exact_, &df);
  std::printf("wrong rule (resample from p): chi-square p = %.4g (df %d), acceptance rate %.3f\n", p, df, acceptance);
  EXPECT_LT(p, kPValue);
}

}  // namespace
}  // namespace v4rt::model
