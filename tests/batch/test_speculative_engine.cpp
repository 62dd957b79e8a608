// SPDX-License-Identifier: MIT
// SpeculativeEngine in process (one rank): many requests decoded speculatively together on 3-layer
// synthetic models with an MTP block and a 6- or 4-token vocabulary, where the untrained draft is
// accepted often enough that steps emit several tokens (accepted drafts cut by max_tokens and EOS
// included).
// Every request's tokens equal plain greedy decoding of its prompt (Model::step, one token per
// step, no MTP) up to max_tokens or EOS, and the logprobs equal the log-softmax of the plain logits
// (1e-5). Prompts longer than the token budget are chunked and run inside the verify steps of the
// sequences already decoding.
#include <gtest/gtest.h>

#include <cmath>
#include <utility>

#include "launch/batch/speculative_engine.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::launch::batch {
namespace {

using model::testing::LoadedModel;

// Plain greedy tokens and each one's log-probability, stopping after EOS.
void plain_reference(model::Model& m, const std::vector<int32_t>& prompt, int max_tokens, int32_t eos,
                     std::vector<int32_t>* tokens, std::vector<double>* logprobs) {
  auto seq = m.new_sequence();
  std::vector<float> lg = model::testing::step_logits(m, *seq, prompt);
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t t = model::argmax(lg);
    double mx = -INFINITY, sum = 0.0;
    for (float v : lg) mx = std::max(mx, double(v));
    for (float v : lg) sum += std::exp(double(v) - mx);
    if (t == eos) return;  // EOS ends the stream without an event
    tokens->push_back(t);
    logprobs->push_back(double(lg[size_t(t)]) - mx - std::log(sum));
    lg = model::testing::step_logits(m, *seq, {t});
  }
}

class SpeculativeEngineTest : public ::testing::TestWithParam<std::pair<int, uint64_t>> {};

TEST_P(SpeculativeEngineTest, ManyRequestsEqualPlainGreedy) {
  const auto [vocab, seed] = GetParam();
  LoadedModel lm(model::slice_layers(model::testing::tiny_mtp_config(vocab), 3), seed);
  model::Model& m = *lm.model;
  const int32_t eos = int32_t(m.config().eos_token_id);
  for (int depth : {1, 2, 3}) {
    PlanChannel channel(nullptr);
    Driver driver(m, channel);
    driver.set_mtp(lm.mtp.get());
    SpeculativeEngineOptions o;
    o.depth = depth;
    o.max_batch_tokens = 12;  // 3 verify chunks of depth 3 leave no room: prompts wait or are chunked
    o.max_running = 3;
    o.max_queue = 16;
    o.kv_budget_bytes = int64_t(1) << 30;
    o.eos_token_id = eos;
    SpeculativeEngine engine(m, driver, o);
    engine.start();
    std::vector<std::shared_ptr<serve::Request>> reqs;
    for (int i = 0; i < 7; ++i) {
      auto r = std::make_shared<serve::Request>();
      r->id = uint64_t(i + 1);
      r->prompt = model::testing::test_prompt(m.config().vocab_size, 3 + 4 * i, 70 + uint32_t(i));
      r->sampling.temperature = 0.0;
      r->sampling.max_tokens = 5 + 3 * i;
      r->sampling.logprobs = i % 2 == 0;
      ASSERT_EQ(engine.submit(r).status, 200);
      reqs.push_back(r);
    }
    int64_t total_tokens = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      std::vector<serve::TokenEvent> events;
      serve::FinishReason reason = serve::FinishReason::kNone;
      for (int w = 0; w < 600 && reason == serve::FinishReason::kNone; ++w)
        reason = reqs[i]->stream->wait(&events, std::chrono::milliseconds(100));
      std::vector<int32_t> want;
      std::vector<double> want_lp;
      plain_reference(m, reqs[i]->prompt, reqs[i]->sampling.max_tokens, eos, &want, &want_lp);
      EXPECT_EQ(reason, int(want.size()) == reqs[i]->sampling.max_tokens ? serve::FinishReason::kLength
                                                                            : serve::FinishReason::kEos)
          << "depth " << depth << ", request " << i;
      std::vector<int32_t> got;
      for (const serve::TokenEvent& e : events) got.push_back(e.token);
      EXPECT_EQ(got, want) << "depth " << depth << ", request " << i;
      if (reqs[i]->sampling.logprobs && got == want) {
        for (size_t t = 0; t < events.size(); ++t)
          EXPECT_NEAR(events[t].logprob, want_lp[t], 1e-5) << "depth " << depth << ", request " << i << ", token " << t;
      }
      total_tokens += int64_t(got.size());
    }
    engine.stop();
    const model::SpeculativeStats st = engine.speculative_stats();
    std::printf("vocab %d seed %llu depth %d: %lld tokens, acceptance rate %.3f, %.2f tokens per verify step (%lld verify steps)\n",
                vocab, static_cast<unsigned long long>(seed), depth, static_cast<long long>(total_tokens), st.acceptance_rate(), st.tokens_per_step(),
                static_cast<long long>(st.steps));
    EXPECT_GT(st.accepted, 0) << "no draft accepted: the multi-token path did not run";
    EXPECT_LT(st.accepted, st.drafted);
    EXPECT_FALSE(engine.failed()) << engine.failure();
  }
}

// Vocabularies of 6 and 4 tokens, with model seeds where drafts are accepted (up to 3 in a step).
INSTANTIATE_TEST_SUITE_P(SmallVocabularies, SpeculativeEngineTest,
                         ::testing::Values(std::make_pair(6, uint64_t(1)), std::make_pair(4, uint64_t(5))));

}  // namespace
}  // namespace v4rt::launch::batch
