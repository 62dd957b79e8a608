// SPDX-License-Identifier: MIT
// Agent prefix reuse on the tiny model: a request whose prompt extends a finished one continues
// from a copy of its state and must give the same logits as a full recompute from an empty state
// (tolerance 0: the CPU reference computes each row the same way whatever the chunking); the
// prefill saving is measured, and so is the time to first token with and without reuse on a long
// transcript (printed; docs/SERVING.md quotes it).
#include <gtest/gtest.h>

#include <span>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "model/state.h"
#include "runtime/executor.h"
#include "runtime/scheduler.h"
#include "runtime/step_plan.h"
#include "serve_test_util.h"

namespace v4rt::launch::serve {
namespace {

using namespace v4rt::runtime;  // the scheduler, engine and step plans under test

using namespace std::chrono_literals;

class PrefixReuseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tiny_ = new testing::LoadedModel(testing::load_tiny("tiny_prefix_reuse")); }
  static void TearDownTestSuite() {
    delete tiny_;
    tiny_ = nullptr;
  }
  static testing::LoadedModel* tiny_;

  static std::vector<int32_t> random_tokens(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(int32_t(1000 + rng() % 60000));
    return t;
  }
};
testing::LoadedModel* PrefixReuseTest::tiny_ = nullptr;

// Scheduler + Executor driven step by step (what the engine thread does), with a spy on logits.
struct Stepper {
  Stepper(model::Model& m, const SchedulerOptions& o) : scheduler(o, m.config(), &metrics), executor(m) {}
  // Runs until idle; returns the logits row of the first sampling step of `req`.
  std::vector<float> run(const std::shared_ptr<Request>& req, double* ttft_s = nullptr) {
    const auto t0 = Clock::now();
    EXPECT_EQ(scheduler.submit(req).status, 200);
    std::vector<float> first;
    StepPlan plan;
    std::vector<std::vector<float>> logits;
    while (scheduler.next_plan(&plan, 0ms)) {
      executor.run(plan, &logits);
      for (size_t i = 0; i < plan.chunks.size(); ++i) {
        const PlanChunk& c = plan.chunks[i];
        if (first.empty() && c.want_logits && c.start_pos + c.num_tokens == int64_t(req->prompt.size())) {
          first = logits[i];
          if (ttft_s) *ttft_s = std::chrono::duration<double>(Clock::now() - t0).count();
        }
      }
      scheduler.complete(plan, logits);
    }
    return first;
  }
  Metrics metrics;
  Scheduler scheduler;
  Executor executor;
};

std::shared_ptr<Request> greedy_request(std::vector<int32_t> prompt, int max_tokens) {
  auto r = std::make_shared<Request>();
  r->prompt = std::move(prompt);
  r->sampling.temperature = 0;
  r->sampling.max_tokens = max_tokens;
  return r;
}

std::vector<int32_t> generated(const std::shared_ptr<Request>& r) {
  std::vector<TokenEvent> ev;
  r->stream->wait(&ev, 0ms);
  std::vector<int32_t> out;
  for (const TokenEvent& e : ev) out.push_back(e.token);
  return out;
}

// The Executor returns logits only where a chunk asks for them (none for inner prefill chunks,
// the last row or every row), and a chunk whose start_pos is not its sequence's position stops
// the rank (the ranks of a job would otherwise diverge).
TEST_F(PrefixReuseTest, ExecutorLogitsAsAskedAndStartPosChecked) {
  model::Model& m = *tiny_->model;
  const int64_t vocab = m.config().vocab_size;
  const std::vector<int32_t> tokens = random_tokens(9, 5);
  Executor executor(m);
  StepPlan p;
  p.step_idx = 1;
  p.add_chunk(1, 0, std::span<const int32_t>(tokens).first(4), kLogitsNone);
  p.add_chunk(2, 0, std::span<const int32_t>(tokens).first(3), kLogitsAll);
  p.add_chunk(3, 0, std::span<const int32_t>(tokens).first(2), kLogitsLast);
  std::vector<std::vector<float>> logits;
  executor.run(p, &logits);
  ASSERT_EQ(logits.size(), 3u);
  EXPECT_TRUE(logits[0].empty());
  EXPECT_EQ(int64_t(logits[1].size()), 3 * vocab);
  EXPECT_EQ(int64_t(logits[2].size()), vocab);
  EXPECT_EQ(executor.position(1), 4);

  StepPlan q;
  q.step_idx = 2;
  q.add_chunk(1, 4, std::span<const int32_t>(tokens).subspan(4, 5), kLogitsLast);
  executor.run(q, &logits);
  EXPECT_EQ(executor.position(1), 9);
  // The same last logits as one chunk of all 9 tokens.
  StepPlan whole;
  whole.add_chunk(4, 0, tokens, kLogitsLast);
  std::vector<std::vector<float>> whole_logits;
  executor.run(whole, &whole_logits);
  ASSERT_EQ(whole_logits[0].size(), logits[0].size());
  for (size_t k = 0; k < logits[0].size(); ++k) ASSERT_NEAR(logits[0][k], whole_logits[0][k], 1e-5f) << k;

  StepPlan stale;
  stale.step_idx = 3;
  stale.add_chunk(1, 4, std::span<const int32_t>(tokens).first(1), kLogitsLast);  // the state holds 9
  EXPECT_DEATH(executor.run(stale, nullptr), "step 3: sequence 1");
}

TEST_F(PrefixReuseTest, SameLogitsAsFullRecomputeAndOnlyNewTokensPrefilled) {
  model::Model& m = *tiny_->model;
  SchedulerOptions o;
  o.max_batch_tokens = 64;  // the first turn is prefilled in chunks, the reuse path differently
  Stepper d(m, o);
  // Turn 1: system + user (300 tokens) -> 6 generated tokens.
  const std::vector<int32_t> turn1 = random_tokens(300, 1);
  auto r1 = greedy_request(turn1, 6);
  d.run(r1);
  const std::vector<int32_t> gen1 = generated(r1);
  ASSERT_EQ(gen1.size(), 6u);
  // Turn 2: the agent resends everything plus the answer, EOS and a tool result.
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), gen1.begin(), gen1.end());
  turn2.push_back(1);
  const std::vector<int32_t> tool_result = random_tokens(45, 2);
  turn2.insert(turn2.end(), tool_result.begin(), tool_result.end());
  const uint64_t prefill_before = d.metrics.prefill_tokens;
  auto r2 = greedy_request(turn2, 2);
  const std::vector<float> reused = d.run(r2);
  const int64_t cached = r2->stream->cached_tokens;
  EXPECT_EQ(cached, 300 + 5);  // the last sampled token of turn 1 was never fed
  EXPECT_EQ(d.metrics.prefill_tokens - prefill_before, uint64_t(int64_t(turn2.size()) - cached));
  EXPECT_EQ(d.metrics.prefix_reused_tokens, uint64_t(cached));

  // Full recompute from an empty state, one chunk.
  auto seq = m.new_sequence();
  model::StepChunk chunk{seq.get(), std::span<const int32_t>(turn2), false};
  std::vector<std::vector<float>> full;
  m.step(std::span<const model::StepChunk>(&chunk, 1), &full);
  ASSERT_EQ(reused.size(), full[0].size());
  double max_diff = 0;
  for (size_t i = 0; i < reused.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(reused[i] - full[0][i])));
  std::printf("prefix reuse: %lld of %zu prompt tokens reused, max |logit diff| vs full recompute = %g\n",
              (long long)cached, turn2.size(), max_diff);
  EXPECT_EQ(max_diff, 0.0);
  // And the generations agree: the first sampled token is the argmax of either.
  EXPECT_EQ(generated(r2).at(0), model::argmax(full[0]));
}

TEST_F(PrefixReuseTest, TimeToFirstTokenOnALongAgentTranscript) {
  model::Model& m = *tiny_->model;
  const std::vector<int32_t> transcript = random_tokens(1500, 3);
  double ttft[2] = {0, 0};
  uint64_t prefilled[2] = {0, 0};
  for (int reuse = 0; reuse < 2; ++reuse) {
    SchedulerOptions o;
    o.max_batch_tokens = 512;
    o.prefix_cache = reuse == 1;
    Stepper d(m, o);
    auto r1 = greedy_request(transcript, 4);
    d.run(r1);
    std::vector<int32_t> next = transcript;
    for (int32_t t : generated(r1)) next.push_back(t);
    next.push_back(1);
    const std::vector<int32_t> tool = random_tokens(60, 4);
    next.insert(next.end(), tool.begin(), tool.end());
    const uint64_t before = d.metrics.prefill_tokens;
    d.run(greedy_request(next, 1), &ttft[reuse]);
    prefilled[reuse] = d.metrics.prefill_tokens - before;
  }
  std::printf("agent turn after a 1500-token transcript: TTFT %.1f ms with reuse (%llu tokens prefilled) vs "
              "%.1f ms without (%llu tokens prefilled)\n",
              ttft[1] * 1e3, (unsigned long long)prefilled[1], ttft[0] * 1e3, (unsigned long long)prefilled[0]);
  EXPECT_EQ(prefilled[0], 1500u + 4u + 1u + 60u);
  EXPECT_EQ(prefilled[1], 1u + 1u + 60u);  // last generated token + EOS + tool result
  EXPECT_LT(ttft[1], ttft[0]);
}

TEST_F(PrefixReuseTest, EvictedUnderMemoryPressure) {
  model::Model& m = *tiny_->model;
  SchedulerOptions o;
  o.kv_budget_bytes = model::state_bytes(m.config(), 200);
  Stepper d(m, o);
  auto a = greedy_request(random_tokens(100, 5), 2);
  d.run(a);
  EXPECT_EQ(d.metrics.gauges().prefix_cache_entries, 1);
  // A different 150-token request needs the memory the cached entry holds.
  auto b = greedy_request(random_tokens(150, 6), 2);
  d.run(b);
  EXPECT_EQ(generated(b).size(), 2u);
  EXPECT_EQ(d.metrics.gauges().prefix_cache_entries, 1);  // a evicted, b kept
  EXPECT_EQ(d.executor.num_sequences(), 1u);
  EXPECT_LE(d.metrics.gauges().kv_bytes_used, o.kv_budget_bytes);
}

}  // namespace
}  // namespace v4rt::launch::serve
