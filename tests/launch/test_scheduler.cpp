// SPDX-License-Identifier: MIT
// Scheduler behaviour with synthetic logits (no model): token budget per step with decode first,
// priority then FIFO admission, admission by KV memory (413 when it can never fit, waiting when it
// could later), 429 on a full queue, cancellation, timeout, fail_all (every request ends with an
// error; the states of the running ones are released by the next plan, which every rank applies),
// and the prefix cache's plan ops: chunks ending at prefix points, the stores that follow them,
// resumes from the longest point (end of a finished sequence, message boundary, the resent
// prompt's last token but one), requests waiting for a point another one computes, and eviction
// that never frees a pinned point.
#include <gtest/gtest.h>

#include <thread>

#include "model/prefix_state.h"
#include "model/presets.h"
#include "model/state.h"
#include "runtime/scheduler.h"

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
  // The scheduler without the prefix cache (tests of chunking and admission alone).
  static SchedulerOptions no_cache() {
    SchedulerOptions o;
    o.prefix_cache.enabled = false;
    return o;
  }
  // Runs plans until idle with logits whose argmax is `token`; returns them.
  std::vector<StepPlan> drain(Scheduler& s, int32_t token) {
    std::vector<StepPlan> plans;
    StepPlan p;
    while (s.next_plan(&p, 0ms)) {
      s.complete(p, logits_for(p, token));
      plans.push_back(p);
    }
    return plans;
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
  SchedulerOptions o = no_cache();
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
  Scheduler s(no_cache(), config, &metrics);
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
  SchedulerOptions o = no_cache();
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
  o.prefix_cache.enabled = false;
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

// Admission charges the state in the format the model keeps it: compact entries (official
// numerics) let a request in that F32 rows would not fit.
TEST_F(SchedulerTest, AdmissionChargesTheModelsKvFormat) {
  const int64_t compact = model::state_bytes(config, 20000, model::KvStorage::kCompact);
  ASSERT_LT(compact, model::state_bytes(config, 20000, model::KvStorage::kF32));
  SchedulerOptions o;
  o.kv_budget_bytes = compact;
  o.prefix_cache.enabled = false;
  o.kv_storage = model::KvStorage::kCompact;
  Scheduler fits(o, config, &metrics);
  EXPECT_EQ(fits.submit(make_request(19000, 1000)).status, 200);
  o.kv_storage = model::KvStorage::kF32;
  Scheduler f32(o, config, &metrics);
  EXPECT_EQ(f32.submit(make_request(19000, 1000)).status, 413);
}

TEST_F(SchedulerTest, QueueFullGives429) {
  SchedulerOptions o = no_cache();
  o.max_queue = 2;
  Scheduler s(o, config, &metrics);
  EXPECT_EQ(s.submit(make_request(4, 4)).status, 200);
  EXPECT_EQ(s.submit(make_request(4, 4)).status, 200);
  EXPECT_EQ(s.submit(make_request(4, 4)).status, 429);
}

TEST_F(SchedulerTest, CancellationAndTimeoutReleaseState) {
  SchedulerOptions o = no_cache();
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

// A prompt's prefill chunks end at its prefix points (message boundary, the last prompt token but
// one); the next plan stores each point; a finished sequence adds the point at its end, stored
// before its state is released; a request extending it resumes there.
TEST_F(SchedulerTest, ChunksEndAtPrefixPointsAndStoresFollow) {
  SchedulerOptions o;
  o.max_batch_tokens = 64;
  Scheduler s(o, config, &metrics);
  auto a = make_request(10, 3);
  a->boundaries = {4};
  ASSERT_EQ(s.submit(a).status, 200);
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.chunks.size(), 1u);
  const SeqId a_seq = p.chunks[0].seq;
  EXPECT_EQ(p.chunks[0].num_tokens, 4);  // up to the boundary
  EXPECT_EQ(p.chunks[0].take_point, 1);
  EXPECT_TRUE(p.stores.empty());
  s.complete(p, logits_for(p, 77));
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.stores.size(), 1u);
  EXPECT_EQ(p.stores[0].seq, a_seq);
  EXPECT_EQ(p.stores[0].upto, 4);
  ASSERT_EQ(p.stores[0].points.size(), 1u);
  EXPECT_EQ(p.stores[0].points[0].position, 4);
  ASSERT_EQ(p.stores[0].blocks.size(), 1u);  // the point's partial block [0, 4)
  EXPECT_EQ(p.stores[0].blocks[0].index, 0);
  EXPECT_EQ(p.stores[0].blocks[0].end, 4);
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].start_pos, 4);
  EXPECT_EQ(p.chunks[0].num_tokens, 5);  // up to the prompt point 9
  EXPECT_EQ(p.chunks[0].take_point, 1);
  s.complete(p, logits_for(p, 77));
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.stores.size(), 1u);
  EXPECT_EQ(p.stores[0].points.at(0).position, 9);
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].num_tokens, 1);  // the last prompt token, alone, gives the logits
  EXPECT_EQ(p.chunks[0].want_logits, kLogitsLast);
  EXPECT_EQ(p.chunks[0].take_point, 0);
  s.complete(p, logits_for(p, 77));
  for (int i = 0; i < 2; ++i) {  // two decode steps; the third token ends the request
    ASSERT_TRUE(s.next_plan(&p, 0ms));
    EXPECT_TRUE(p.stores.empty());
    s.complete(p, logits_for(p, 77));
  }
  std::vector<TokenEvent> ev;
  ASSERT_EQ(a->stream->wait(&ev, 0ms), FinishReason::kLength);
  ASSERT_TRUE(s.next_plan(&p, 0ms));  // the end point (prompt + 2 fed tokens), then the release
  ASSERT_EQ(p.stores.size(), 1u);
  EXPECT_EQ(p.stores[0].seq, a_seq);
  ASSERT_EQ(p.stores[0].points.size(), 1u);
  const uint64_t end_point = p.stores[0].points[0].id;
  EXPECT_EQ(p.stores[0].points[0].position, 12);
  EXPECT_EQ(p.releases, std::vector<SeqId>{a_seq});
  EXPECT_FALSE(s.next_plan(&p, 0ms));

  auto b = make_request(10, 2);
  b->prompt.insert(b->prompt.end(), {77, 77, 77, 1, 500, 501});
  ASSERT_EQ(s.submit(b).status, 200);
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.resumes.size(), 1u);
  EXPECT_EQ(p.resumes[0].point, end_point);
  EXPECT_EQ(p.resumes[0].position, 12);
  EXPECT_EQ(p.resumes[0].blocks.size(), 1u);  // [0, 12) in one partial block
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].seq, p.resumes[0].dst);
  EXPECT_EQ(p.chunks[0].start_pos, 12);
  EXPECT_EQ(p.chunks[0].num_tokens, 3);  // up to b's own prompt point 15
  EXPECT_EQ(b->stream->cached_tokens, 12);
  const PrefixTreeStats st = s.gauges().prefix;
  EXPECT_EQ(st.lookups, 2);
  EXPECT_EQ(st.hits, 1);
  EXPECT_EQ(st.reused_tokens, 12);
  EXPECT_EQ(st.points, 3);  // 4, 9 and 12
}

// Another user with the same system prompt resumes at its end; the same prompt sent again
// resumes at its last token but one.
TEST_F(SchedulerTest, SharedSystemPromptAndResentPrompt) {
  Scheduler s(SchedulerOptions{}, config, &metrics);
  auto a = make_request(12, 2);
  a->boundaries = {8};
  ASSERT_EQ(s.submit(a).status, 200);
  drain(s, 1);
  auto b = make_request(12, 2);
  for (int i = 8; i < 12; ++i) b->prompt[size_t(i)] = 5000 + i;
  b->boundaries = {8};
  ASSERT_EQ(s.submit(b).status, 200);
  const std::vector<StepPlan> plans = drain(s, 1);
  ASSERT_FALSE(plans.empty());
  ASSERT_EQ(plans[0].resumes.size(), 1u);
  EXPECT_EQ(plans[0].resumes[0].position, 8);
  EXPECT_EQ(b->stream->cached_tokens, 8);
  auto c = make_request(12, 2);
  ASSERT_EQ(s.submit(c).status, 200);
  drain(s, 1);
  EXPECT_EQ(c->stream->cached_tokens, 11);
  EXPECT_EQ(s.gauges().prefix.hits, 2);
}

// Requests that arrive together and share a prefix: the first computes it, the others wait for
// its point and resume there, so each prefix token is computed once.
TEST_F(SchedulerTest, RequestsArrivingTogetherComputeASharedPrefixOnce) {
  SchedulerOptions o;
  o.max_batch_tokens = 256;
  Scheduler s(o, config, &metrics);
  std::vector<std::shared_ptr<Request>> reqs;
  for (int i = 0; i < 5; ++i) {
    auto r = make_request(46, 1);
    for (int k = 40; k < 46; ++k) r->prompt[size_t(k)] = 6000 + 10 * i + k;
    r->boundaries = {40};
    ASSERT_EQ(s.submit(r).status, 200);
    reqs.push_back(r);
  }
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.chunks.size(), 1u);  // the others wait for the point at 40
  EXPECT_EQ(p.chunks[0].num_tokens, 40);
  EXPECT_EQ(s.gauges().num_waiting, 4);
  s.complete(p, logits_for(p, 1));
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  EXPECT_EQ(p.stores.size(), 1u);
  EXPECT_EQ(p.resumes.size(), 4u);
  for (const PlanResume& r : p.resumes) EXPECT_EQ(r.position, 40);
  s.complete(p, logits_for(p, 1));
  drain(s, 1);
  for (const auto& r : reqs) {
    std::vector<TokenEvent> ev;
    EXPECT_EQ(r->stream->wait(&ev, 0ms), FinishReason::kEos);
  }
  EXPECT_EQ(uint64_t(metrics.prefill_tokens), 40u + 5u * 6u);
}

// Under memory pressure the tree gives up unpinned points (PlanFree), never the point a running
// request resumed from, and the KV budget holds at every step.
TEST_F(SchedulerTest, EvictionNeverFreesAPinnedPoint) {
  const int64_t need_b = model::state_bytes(config, 20 + 40), need_c = model::state_bytes(config, 30 + 1);
  const int64_t pinned_bytes = model::tail_snapshot_bytes(config, 10) +
                               model::entry_block_bytes(config, model::EntryOwnership{}, 0, 10);
  SchedulerOptions o;
  o.kv_budget_bytes = need_b + need_c + pinned_bytes + model::tail_snapshot_bytes(config, 19) / 2;
  o.prefix_cache.budget_fraction = 1.0;
  Scheduler s(o, config, &metrics);
  auto a = make_request(20, 2);
  a->boundaries = {10};
  ASSERT_EQ(s.submit(a).status, 200);
  drain(s, 5);
  auto b = make_request(20, 40);  // resumes from a's point at 10 and runs on
  for (int i = 10; i < 20; ++i) b->prompt[size_t(i)] = 7000 + i;
  ASSERT_EQ(s.submit(b).status, 200);
  StepPlan p;
  ASSERT_TRUE(s.next_plan(&p, 0ms));
  ASSERT_EQ(p.resumes.size(), 1u);
  const uint64_t pinned = p.resumes[0].point;
  EXPECT_EQ(p.resumes[0].position, 10);
  s.complete(p, logits_for(p, 5));
  auto c = make_request(30, 1, 30000);  // needs memory the tree holds
  ASSERT_EQ(s.submit(c).status, 200);
  std::vector<uint64_t> freed;
  bool b_running = true;
  while (s.next_plan(&p, 0ms)) {
    for (uint64_t id : p.frees) {
      freed.push_back(id);
      if (b_running) {
        EXPECT_NE(id, pinned) << "the pinned point was freed while its request ran";
      }
    }
    EXPECT_LE(s.gauges().kv_bytes_used, o.kv_budget_bytes);
    s.complete(p, logits_for(p, 5));
    std::vector<TokenEvent> ev;
    if (b->stream->wait(&ev, 0ms) != FinishReason::kNone) b_running = false;
  }
  std::vector<TokenEvent> ev;
  EXPECT_EQ(c->stream->wait(&ev, 0ms), FinishReason::kLength);
  EXPECT_FALSE(freed.empty());
  EXPECT_GT(s.gauges().prefix.evicted_points, 0);
}

// ignore_eos (the benchmarks' fixed output length): EOS is emitted as an ordinary token and the
// generation runs to max_tokens; without it the same logits end the request at once.
TEST_F(SchedulerTest, IgnoreEosRunsToMaxTokens) {
  Scheduler s(no_cache(), config, &metrics);
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
