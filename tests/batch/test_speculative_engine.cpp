// SPDX-License-Identifier: MIT
// The speculative scheduler (runtime::Scheduler with mtp_depth > 0) in process, through the one
// runtime::Engine that `v4rt serve --mtp N`, `v4rt batch --mtp N` and `v4rt generate --mtp N`
// run. Many requests decode speculatively together on 3-layer
// synthetic models with an MTP block and a 6- or 4-token vocabulary, where the untrained draft is
// accepted often enough that steps emit several tokens (accepted drafts cut by max_tokens and EOS
// included). Every request's tokens equal plain greedy decoding of its prompt (Model::step, one
// token per step, no MTP) up to max_tokens or EOS, and the logprobs equal the log-softmax of the
// plain logits (1e-5). Prompts longer than the token budget are chunked and run inside the verify
// plans of the sequences already decoding. The prefix-reuse case resumes requests from prefix points of
// finished speculative sequences (state and MTP state) and must still equal plain greedy.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <utility>

#include "runtime/engine.h"
#include "runtime/leader.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::launch {
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

// Waits (at most 60 s) for the end of `req`; its token events in *events, its tokens returned.
std::vector<int32_t> wait_tokens(const runtime::Request& req, std::vector<runtime::TokenEvent>* events,
                                 runtime::FinishReason* reason) {
  *reason = runtime::FinishReason::kNone;
  for (int w = 0; w < 600 && *reason == runtime::FinishReason::kNone; ++w)
    *reason = req.stream->wait(events, std::chrono::milliseconds(100));
  std::vector<int32_t> tokens;
  for (const runtime::TokenEvent& e : *events) tokens.push_back(e.token);
  return tokens;
}

// Waits for the end of `req` and checks its tokens (and logprobs) against plain greedy decoding.
// Returns the tokens.
std::vector<int32_t> expect_plain_greedy(model::Model& m, const runtime::Request& req, int32_t eos, const std::string& what) {
  std::vector<runtime::TokenEvent> events;
  runtime::FinishReason reason;
  const std::vector<int32_t> got = wait_tokens(req, &events, &reason);
  std::vector<int32_t> want;
  std::vector<double> want_lp;
  plain_reference(m, req.prompt, req.sampling.max_tokens, eos, &want, &want_lp);
  EXPECT_EQ(reason, int(want.size()) == req.sampling.max_tokens ? runtime::FinishReason::kLength : runtime::FinishReason::kEos)
      << what;
  EXPECT_EQ(got, want) << what;
  if (req.sampling.logprobs && got == want) {
    for (size_t t = 0; t < events.size(); ++t) EXPECT_NEAR(events[t].logprob, want_lp[t], 1e-5) << what << ", token " << t;
  }
  return got;
}

std::shared_ptr<runtime::Request> greedy_request(uint64_t id, std::vector<int32_t> prompt, int max_tokens, bool logprobs) {
  auto r = std::make_shared<runtime::Request>();
  r->id = id;
  r->prompt = std::move(prompt);
  r->sampling.temperature = 0.0;
  r->sampling.max_tokens = max_tokens;
  r->sampling.logprobs = logprobs;
  return r;
}

runtime::SchedulerOptions speculative_options(int depth, int32_t eos, bool prefix_cache) {
  runtime::SchedulerOptions o;
  o.mtp_depth = depth;
  o.max_batch_tokens = 12;  // 3 verify chunks of depth 3 leave no room: prompts wait or are chunked
  o.max_running = 3;
  o.max_queue = 16;
  o.kv_budget_bytes = int64_t(1) << 30;
  o.eos_token_id = eos;
  o.prefix_cache.enabled = prefix_cache;
  return o;
}

class SpeculativeSchedulerTest : public ::testing::TestWithParam<std::tuple<int, uint64_t>> {};

TEST_P(SpeculativeSchedulerTest, ManyRequestsEqualPlainGreedy) {
  const auto [vocab, seed] = GetParam();
  LoadedModel lm(model::slice_layers(model::testing::tiny_mtp_config(vocab), 3), seed);
  model::Model& m = *lm.model;
  const int32_t eos = int32_t(m.config().eos_token_id);
  for (int depth : {1, 2, 3}) {
    const runtime::SchedulerOptions o = speculative_options(depth, eos, /*prefix_cache=*/false);
    runtime::SoloRank rank(m, lm.mtp.get());
    runtime::Metrics metrics;
    runtime::Engine engine(rank.leader, o, &metrics);
    engine.start();
    std::vector<std::shared_ptr<runtime::Request>> reqs;
    for (int i = 0; i < 7; ++i) {
      reqs.push_back(greedy_request(uint64_t(i + 1), model::testing::test_prompt(m.config().vocab_size, 3 + 4 * i, 70 + uint32_t(i)),
                                    5 + 3 * i, i % 2 == 0));
      ASSERT_EQ(engine.submit(reqs.back()).status, 200);
    }
    int64_t total_tokens = 0;
    for (size_t i = 0; i < reqs.size(); ++i)
      total_tokens += int64_t(expect_plain_greedy(m, *reqs[i], eos, "depth " + std::to_string(depth) + ", request " +
                                                                        std::to_string(i)).size());
    engine.stop();
    const model::SpeculativeStats st = engine.speculative_stats();
    std::printf("vocab %d seed %llu depth %d: %lld tokens, acceptance rate %.3f, %.2f tokens per verify step (%lld verify steps)\n",
                vocab, static_cast<unsigned long long>(seed), depth,
                static_cast<long long>(total_tokens), st.acceptance_rate(), st.tokens_per_step(),
                static_cast<long long>(st.steps));
    EXPECT_GT(st.accepted, 0) << "no draft accepted: the multi-token path did not run";
    EXPECT_LT(st.accepted, st.drafted);
    EXPECT_EQ(st.drafted, st.steps * depth);
    EXPECT_EQ(engine.failed() ? engine.failure() : std::string(), "");
  }
}

// Vocabularies of 6 and 4 tokens, with model seeds where drafts are accepted (up to 3 in a step).
INSTANTIATE_TEST_SUITE_P(SmallVocabularies, SpeculativeSchedulerTest,
                         ::testing::Values(std::make_tuple(6, uint64_t(1)), std::make_tuple(4, uint64_t(5))));

// Agent turns under `serve --mtp 2`: each turn's prompt extends the previous prompt and its
// answer, so it resumes from the prefix point at the end of the finished sequence (main tail,
// entry blocks and the MTP tail). The answers
// equal plain greedy decoding of the full prompts, and the prefix cache was hit.
TEST(SpeculativeServe, PrefixReuseEqualsPlainGreedy) {
  LoadedModel lm(model::slice_layers(model::testing::tiny_mtp_config(6), 3), 1);
  model::Model& m = *lm.model;
  const int32_t eos = int32_t(m.config().eos_token_id);
  runtime::Metrics metrics;
  runtime::SoloRank rank(m, lm.mtp.get());
  runtime::Engine engine(rank.leader, speculative_options(2, eos, /*prefix_cache=*/true), &metrics);
  engine.start();
  std::vector<int32_t> prompt = model::testing::test_prompt(m.config().vocab_size, 9, 11);
  int64_t cached = 0;
  for (int turn = 0; turn < 4; ++turn) {
    // One token: the finished state holds exactly the prompt. Longer turns: the state may hold
    // accepted drafts past the last streamed token, and the next turn reuses what matches.
    const int max_tokens = turn % 2 == 0 ? 1 : 7;
    auto req = greedy_request(uint64_t(turn + 1), prompt, max_tokens, false);
    ASSERT_EQ(engine.scheduler().submit(req).status, 200);
    const std::vector<int32_t> got = expect_plain_greedy(m, *req, eos, "turn " + std::to_string(turn));
    cached += req->stream->cached_tokens;
    std::printf("turn %d: prompt %zu tokens, %lld from the prefix cache, %zu generated\n", turn, req->prompt.size(),
                static_cast<long long>(req->stream->cached_tokens), got.size());
    prompt.insert(prompt.end(), got.begin(), got.end());
    for (int32_t t : model::testing::test_prompt(m.config().vocab_size, 3, 20 + uint32_t(turn))) prompt.push_back(t);
  }
  engine.stop();
  EXPECT_GT(cached, 0) << "no turn reused a cached speculative sequence";
  EXPECT_GT(int64_t(metrics.prefix_reused_tokens), 0);
  EXPECT_GT(int64_t(metrics.spec_steps), 0);
  EXPECT_FALSE(engine.failed()) << engine.failure();
}

// Seeded sampled requests decoded together (no drafting): the scheduler samples the sequences of
// a step in parallel, and each request's tokens must still be those of its own Sampler over its
// own plain decode (the CPU step is bit-identical for any batch composition).
TEST(SpeculativeServe, ParallelSamplingKeepsEachSequencesDraws) {
  LoadedModel lm(model::slice_layers(model::testing::tiny_mtp_config(6), 3), 1);
  model::Model& m = *lm.model;
  const int32_t eos = int32_t(m.config().eos_token_id);
  for (int depth : {0, 2}) {
    runtime::Metrics metrics;
    runtime::SchedulerOptions o = speculative_options(depth, eos, /*prefix_cache=*/false);
    o.max_running = 6;
    o.max_batch_tokens = 64;
    runtime::SoloRank rank(m, depth ? lm.mtp.get() : nullptr);
    runtime::Engine engine(rank.leader, o, &metrics);
    engine.start();
    std::vector<std::shared_ptr<runtime::Request>> reqs;
    for (int i = 0; i < 6; ++i) {
      auto r = greedy_request(uint64_t(i + 1), model::testing::test_prompt(m.config().vocab_size, 4 + i, 90 + uint32_t(i)), 12, false);
      r->sampling.temperature = 1.0;
      r->sampling.seed = uint64_t(1000 + i);
      ASSERT_EQ(engine.scheduler().submit(r).status, 200);
      reqs.push_back(r);
    }
    for (const auto& r : reqs) {
      std::vector<runtime::TokenEvent> events;
      runtime::FinishReason reason;
      const std::vector<int32_t> got = wait_tokens(*r, &events, &reason);
      if (depth > 0) {  // speculative draws differ from Sampler's by design: the request completes
        EXPECT_TRUE(reason == runtime::FinishReason::kEos || reason == runtime::FinishReason::kLength);
        continue;
      }
      // Reference: this request alone, plain decode, its own Sampler.
      model::Sampler sampler({1.0, 1.0, r->sampling.seed});
      auto seq = m.new_sequence();
      std::vector<float> lg = model::testing::step_logits(m, *seq, r->prompt);
      std::vector<int32_t> want;
      for (int i = 0; i < r->sampling.max_tokens; ++i) {
        const int32_t t = sampler.sample(lg);
        if (t == eos) break;
        want.push_back(t);
        lg = model::testing::step_logits(m, *seq, {t});
      }
      EXPECT_EQ(got, want) << "request " << r->id;
    }
    engine.stop();
    EXPECT_FALSE(engine.failed()) << engine.failure();
  }
}

// Forced output (the server's test hook) under `--mtp 2`, next to a greedy request: the forced
// sequence decodes with ordinary chunks that still feed its MTP block, the greedy one speculatively.
TEST(SpeculativeServe, ForcedOutputBesideSpeculativeRequests) {
  LoadedModel lm(model::slice_layers(model::testing::tiny_mtp_config(6), 3), 1);
  model::Model& m = *lm.model;
  const int32_t eos = int32_t(m.config().eos_token_id);
  runtime::Metrics metrics;
  runtime::SoloRank rank(m, lm.mtp.get());
  runtime::Engine engine(rank.leader, speculative_options(2, eos, /*prefix_cache=*/false), &metrics);
  engine.start();
  auto forced = greedy_request(1, model::testing::test_prompt(m.config().vocab_size, 5, 3), 10, false);
  forced->sampling.forced = true;
  forced->sampling.forced_tokens = {3, 4, 5, 2};
  auto greedy = greedy_request(2, model::testing::test_prompt(m.config().vocab_size, 7, 4), 12, true);
  ASSERT_EQ(engine.scheduler().submit(forced).status, 200);
  ASSERT_EQ(engine.scheduler().submit(greedy).status, 200);
  std::vector<runtime::TokenEvent> events;
  runtime::FinishReason reason;
  const std::vector<int32_t> got = wait_tokens(*forced, &events, &reason);
  EXPECT_EQ(got, forced->sampling.forced_tokens);
  EXPECT_EQ(reason, runtime::FinishReason::kEos);
  expect_plain_greedy(m, *greedy, eos, "greedy beside forced");
  engine.stop();
  EXPECT_GT(int64_t(metrics.spec_steps), 0);
  EXPECT_FALSE(engine.failed()) << engine.failure();
}

}  // namespace
}  // namespace v4rt::launch
