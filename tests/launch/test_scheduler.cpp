// SPDX-License-Identifier: MIT
// Scheduler behaviour with synthetic logits (no model): token budget per step with decode first,
// priority then FIFO admission, admission by KV memory (413 when it can never fit, waiting when it
// could later), 429 on a full queue, cancellation, timeout, the prefix-reuse copy in the plan, and
// fail_all (every request ends with an error; the states of the running ones are released by the
// next plan, which every rank applies).
#include <gtest/gtest.h>

#include <thread>

#include "model/state.h"
#include "runtime/scheduler.h"
#include "model/presets.h"

namespace v4rt::launch::serve {
namespace {

using namespace v4rt::runtime;  // the scheduler, engine and step plans under test

using namespace std::chrono_literals;

class SchedulerTest : public ::testing::Test {
 protected:
  model::ModelConfig config = model::preset_config("tiny");
  Metrics metrics;

  std::shared_ptr<Request> make_request(int prompt_len, int max_tokens, int32_t first = 1000, int priority = 0) {
    auto r = std::make_shared<Request>();
    for (int i = 0; i < prompt_len; ++i) r->prompt.push_back(first + i);
    r->sampling.temperature = 0;  // greedy over the synthetic logits
    r->sampling.max_tokens = max_tokens;
    r->priority = priority;
    return r;
  }
  // Logits whose argmax is `token`, one row per chunk that wants logits.
  std::vector<std::vector<float>> logits_for(const StepPlan& plan, int32_t token) {
    std::vector<std::vector<float>> out(plan.chunks.size());
    for (size_t i = 0; i < plan.chunks.size(); ++i) {
      if (!plan.chunks[i].want_logits) continue;
      out[i].assign(size_t(config.vocab_size), 0.0f);
      out[i][size_t(token)] = 10.0f;
    }
    return out;
  }
};

TEST_F(SchedulerTest, TokenBudgetDecodeFirstThenPrefillChunks) {
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  Scheduler s(o, config, &metrics);
  auto a = make_request(3, 4), b = make_request(20, 4);
  ASSERT_EQ(s.submit(a).status, 200);
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.chunks.size(), 1u);  // a's whole prompt
  EXPECT_EQ(p.chunks[0].num_tokens, 3);
  EXPECT_TRUE(p.chunks[0].want_logits);
  s.complete(p, logits_for(p, 7));
  ASSERT_EQ(s.submit(b).status, 200);
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.chunks.size(), 2u);
  EXPECT_EQ(p.chunks[0].num_tokens, 1);  // a's decode token comes first
  EXPECT_EQ(p.tokens[0], 7);
  EXPECT_EQ(p.chunks[1].num_tokens, 7);  // b's first prefill chunk fills the budget
  EXPECT_FALSE(p.chunks[1].want_logits);
  EXPECT_LE(p.num_tokens(), 8);
  s.complete(p, logits_for(p, 8));
  int b_chunks = 1;
  while (s.next_plan(&p, 0ms)) {
    EXPECT_LE(p.num_tokens(), 8);
    for (const PlanChunk& c : p.chunks) b_chunks += c.num_tokens > 1;
    s.complete(p, logits_for(p, 9));
  }
  EXPECT_GE(b_chunks, 3);  // 20 tokens in chunks of at most 7
  std::vector<TokenEvent> ev;
  EXPECT_EQ(a->stream->wait(&ev, 0ms), FinishReason::kLength);
  EXPECT_EQ(ev.size(), 4u);
  ev.clear();
  EXPECT_EQ(b->stream->wait(&ev, 0ms), FinishReason::kLength);
  EXPECT_EQ(ev.size(), 4u);
}

TEST_F(SchedulerTest, FailAllEndsRequestsAndReleasesRunningStates) {
  Scheduler s(SchedulerOptions{}, config, &metrics);
  auto a = make_request(3, 8), b = make_request(4, 8, 2000);
  ASSERT_EQ(s.submit(a).status, 200);
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.chunks.size(), 1u);
  const SeqId a_seq = p.chunks[0].seq;
  s.complete(p, logits_for(p, 7));
  ASSERT_EQ(s.submit(b).status, 200);  // waits until the next plan
  s.fail_all("a rank failed");
  std::vector<TokenEvent> ev;
  std::string message;
  EXPECT_EQ(a->stream->wait(&ev, 0ms, &message), FinishReason::kError);
  EXPECT_EQ(message, "a rank failed");
  EXPECT_EQ(ev.size(), 1u);  // the token sampled before the failure
  EXPECT_EQ(b->stream->wait(&ev, 0ms), FinishReason::kError);
  ASSERT_TRUE(s.next_plan(&p, 0ms));  // releases only: nothing is admitted or decoded any more
  EXPECT_TRUE(p.chunks.empty());
  EXPECT_EQ(p.releases, std::vector<SeqId>{a_seq});
  EXPECT_FALSE(s.next_plan(&p, 0ms));
  EXPECT_EQ(s.submit(make_request(2, 2)).status, 503);
}

TEST_F(SchedulerTest, PriorityThenFifo) {
  SchedulerOptions o;
  o.max_running = 1;
  Scheduler s(o, config, &metrics);
  auto low1 = make_request(2, 1, 100), low2 = make_request(2, 1, 200), high = make_request(2, 1, 300, 5);
  ASSERT_EQ(s.submit(low1).status, 200);
  ASSERT_EQ(s.submit(low2).status, 200);
  ASSERT_EQ(s.submit(high).status, 200);
  std::vector<int32_t> order;
  StepPlan p;
  while (s.next_plan(&p, 0ms)) {
    if (!p.chunks.empty()) order.push_back(p.tokens[0]);
    s.complete(p, logits_for(p, 1 /* EOS */));
  }
  EXPECT_EQ(order, (std::vector<int32_t>{300, 100, 200}));
}

TEST_F(SchedulerTest, AdmissionByKvMemory) {
  SchedulerOptions o;
  o.kv_budget_bytes = model::state_bytes(config, 150);
  o.prefix_cache = false;
  Scheduler s(o, config, &metrics);
  EXPECT_EQ(s.submit(make_request(100, 200)).status, 413);  // can never fit
  auto a = make_request(60, 40), b = make_request(60, 40);
  ASSERT_EQ(s.submit(a).status, 200);
  ASSERT_EQ(s.submit(b).status, 200);
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.chunks.size(), 1u);  // b waits for a's memory
  EXPECT_EQ(s.gauges().num_waiting, 1);
  s.complete(p, logits_for(p, 1));  // a ends at EOS
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.releases.size(), 1u);  // a's state
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].num_tokens, 60);  // b admitted
}

TEST_F(SchedulerTest, QueueFullGives429) {
  SchedulerOptions o;
  o.max_queue = 2;
  Scheduler s(o, config, &metrics);
  EXPECT_EQ(s.submit(make_request(4, 4)).status, 200);
  EXPECT_EQ(s.submit(make_request(4, 4)).status, 200);
  EXPECT_EQ(s.submit(make_request(4, 4)).status, 429);
}

TEST_F(SchedulerTest, CancellationAndTimeoutReleaseState) {
  SchedulerOptions o;
  Scheduler s(o, config, &metrics);
  auto a = make_request(4, 100), b = make_request(4, 100);
  b->deadline = Clock::now() + 50ms;
  ASSERT_EQ(s.submit(a).status, 200);
  ASSERT_EQ(s.submit(b).status, 200);
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  s.complete(p, logits_for(p, 5));
  a->stream->cancel();
  std::this_thread::sleep_for(60ms);
  ASSERT_TRUE(s.next_plan(&p, 0ms));  // only releases are left
  EXPECT_TRUE(p.chunks.empty());
  EXPECT_EQ(p.releases.size(), 2u);
  std::vector<TokenEvent> ev;
  EXPECT_EQ(a->stream->wait(&ev, 0ms), FinishReason::kCancelled);
  EXPECT_EQ(b->stream->wait(&ev, 0ms), FinishReason::kTimeout);
  EXPECT_EQ(s.gauges().kv_bytes_used, 0);
  EXPECT_FALSE(s.next_plan(&p, 0ms));
}

TEST_F(SchedulerTest, PrefixReusePlansACopyAndPrefillsOnlyNewTokens) {
  SchedulerOptions o;
  Scheduler s(o, config, &metrics);
  auto a = make_request(10, 3);
  ASSERT_EQ(s.submit(a).status, 200);
  StepPlan p;
  SeqId a_seq = 0;
  while (s.next_plan(&p, 0ms)) {
    for (const PlanChunk& c : p.chunks) a_seq = c.seq;
    s.complete(p, logits_for(p, 77));
  }
  // a holds its prompt + 2 fed tokens (the third was sampled, never fed).
  std::vector<TokenEvent> ev;
  ASSERT_EQ(a->stream->wait(&ev, 0ms), FinishReason::kLength);
  auto b = make_request(10, 2);
  b->prompt.insert(b->prompt.end(), {77, 77, 77, 1, 500, 501});
  ASSERT_EQ(s.submit(b).status, 200);
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.copies.size(), 1u);
  EXPECT_EQ(p.copies[0].src, a_seq);
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].start_pos, 12);
  EXPECT_EQ(p.chunks[0].num_tokens, 4);
  EXPECT_EQ(b->stream->cached_tokens, 12);
}

// ignore_eos (the benchmarks' fixed output length): EOS is emitted as an ordinary token and the
// generation runs to max_tokens; without it the same logits end the request at once.
TEST_F(SchedulerTest, IgnoreEosRunsToMaxTokens) {
  Scheduler s(SchedulerOptions{}, config, &metrics);
  auto plain = make_request(3, 5), ignoring = make_request(3, 5, 2000);
  ignoring->sampling.ignore_eos = true;
  ASSERT_EQ(s.submit(plain).status, 200);
  ASSERT_EQ(s.submit(ignoring).status, 200);
  StepPlan p;
  for (int steps = 0; steps < 20 && s.next_plan(&p, 0ms); ++steps) s.complete(p, logits_for(p, 1 /* EOS */));
  std::vector<TokenEvent> ev;
  EXPECT_EQ(plain->stream->wait(&ev, 0ms), FinishReason::kEos);
  EXPECT_TRUE(ev.empty());
  EXPECT_EQ(ignoring->stream->wait(&ev, 0ms), FinishReason::kLength);
  ASSERT_EQ(ev.size(), 5u);
  for (const TokenEvent& e : ev) EXPECT_EQ(e.token, 1);
}

}  // namespace
}  // namespace v4rt::launch::serve
