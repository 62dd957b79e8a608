// SPDX-License-Identifier: MIT
// The prefix cache through the scheduler and the executor on the tiny model: a request resumed from
// every kind of prefix point (the end of a finished sequence, a message boundary, the resent
// prompt's last token but one, an every-N point; inside and on the end of compression blocks)
// must give the same logits as a full recompute from an empty state (tolerance 0: the CPU
// reference computes each row the same way whatever the chunking); requests arriving together
// compute a shared prefix once; the tree's bytes equal the payload bytes the executor holds,
// through evictions. The time to first token with and without reuse on a long transcript is
// printed (docs/SERVING.md quotes it).
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
  // Submits all of `reqs` at once and runs until idle; returns each one's first logits row (the
  // chunk that ends its prompt; the requests' prompts differ in their last tokens).
  std::vector<std::vector<float>> run_all(const std::vector<std::shared_ptr<Request>>& reqs) {
    for (const auto& r : reqs) EXPECT_EQ(scheduler.submit(r).status, 200);
    std::vector<std::vector<float>> first(reqs.size());
    StepPlan plan;
    std::vector<std::vector<float>> logits;
    while (scheduler.next_plan(&plan, 0ms)) {
      executor.run(plan, &logits);
      size_t offset = 0;
      for (size_t i = 0; i < plan.chunks.size(); ++i) {
        const PlanChunk& c = plan.chunks[i];
        const std::span<const int32_t> toks(plan.tokens.data() + offset, size_t(c.num_tokens));
        offset += size_t(c.num_tokens);
        for (size_t k = 0; k < reqs.size(); ++k) {
          const std::vector<int32_t>& p = reqs[k]->prompt;
          if (!c.want_logits || c.start_pos + c.num_tokens != int64_t(p.size()) || !first[k].empty()) continue;
          if (std::equal(toks.begin(), toks.end(), p.begin() + c.start_pos)) first[k] = logits[i];
        }
      }
      scheduler.complete(plan, logits);
    }
    return first;
  }
  // Tree bytes (the leader's accounting) == payload bytes this rank holds.
  void expect_tree_matches_store() {
    const int64_t tree = metrics.gauges().prefix.bytes;
    const int64_t store = executor.prefix_store() ? executor.prefix_store()->bytes() : 0;
    EXPECT_EQ(tree, store);
    EXPECT_EQ(executor.num_kept_points(), 0u);
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

// Logits of the last token of `prompt` computed from an empty state in one chunk.
std::vector<float> full_recompute(model::Model& m, const std::vector<int32_t>& prompt) {
  auto seq = m.new_sequence();
  model::StepChunk chunk{seq.get(), std::span<const int32_t>(prompt), false};
  std::vector<std::vector<float>> full;
  m.step(std::span<const model::StepChunk>(&chunk, 1), &full);
  return full.at(0);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
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
    o.prefix_cache.enabled = reuse == 1;
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
  o.prefix_cache.budget_fraction = 1.0;
  Stepper d(m, o);
  auto a = greedy_request(random_tokens(100, 5), 2);
  d.run(a);
  // The prompt point 99 and the end 101; while a ran, the tree had only what a's state left of
  // the budget, so it may have given up the first already.
  EXPECT_GE(d.metrics.gauges().prefix.points, 1);
  EXPECT_LE(d.metrics.gauges().kv_bytes_used, o.kv_budget_bytes);
  d.expect_tree_matches_store();
  // A different 150-token request needs memory the tree holds.
  auto b = greedy_request(random_tokens(150, 6), 2);
  d.run(b);
  EXPECT_EQ(generated(b).size(), 2u);
  EXPECT_GT(d.metrics.gauges().prefix.evicted_points, 0);
  d.expect_tree_matches_store();
  EXPECT_EQ(d.executor.num_sequences(), 0u);  // every state released; the points hold no sequence
  EXPECT_LE(d.metrics.gauges().kv_bytes_used, o.kv_budget_bytes);
}

// Every kind of point, each checked against a full recompute of the new prompt. Points inside a
// compression block (CSA ratio 4, HCA ratio 128) carry the compressors' partial rows: 150
// (150 % 4 = 2, 150 % 128 = 22) and 209 (209 % 4 = 1); the every-N point 128 ends an HCA block.
TEST_F(PrefixReuseTest, EveryKindOfPointResumesExactly) {
  model::Model& m = *tiny_->model;
  SchedulerOptions o;
  o.max_batch_tokens = 64;  // the first prompt is cut into chunks, the resumed ones differently
  o.prefix_cache.every_n = 128;
  Stepper d(m, o);
  const std::vector<int32_t> system = random_tokens(150, 7), user1 = random_tokens(60, 8);
  auto r1 = greedy_request(concat(system, user1), 1);
  r1->boundaries = {150};
  d.run(r1);
  d.expect_tree_matches_store();

  struct Case {
    const char* kind;
    std::vector<int32_t> prompt;
    std::vector<int64_t> boundaries;
    int64_t cached;
  };
  std::vector<int32_t> fork = concat(system, user1);
  fork.resize(140);  // diverges after the every-N point 128, before the boundary
  const std::vector<Case> cases = {
      {"message boundary (another user, same system prompt)", concat(system, random_tokens(50, 9)), {150}, 150},
      {"prompt point (the same prompt again)", concat(system, user1), {150}, 209},
      {"every-N point (a fork inside the system prompt)", concat(fork, random_tokens(40, 10)), {}, 128},
  };
  for (const Case& c : cases) {
    auto r = greedy_request(c.prompt, 1);
    r->boundaries = c.boundaries;
    const std::vector<float> resumed = d.run(r);
    EXPECT_EQ(r->stream->cached_tokens, c.cached) << c.kind;
    const double diff = max_abs_diff(resumed, full_recompute(m, c.prompt));
    std::printf("%s: %lld of %zu prompt tokens cached, max |logit diff| vs full recompute = %g\n", c.kind,
                (long long)r->stream->cached_tokens, c.prompt.size(), diff);
    EXPECT_EQ(diff, 0.0) << c.kind;
    d.expect_tree_matches_store();
  }
}

// A batch arriving at once with a shared 200-token prefix: one request computes it, the others
// wait for its point and resume there (each prefix token computed once), and every request's
// logits equal a full recompute.
TEST_F(PrefixReuseTest, BatchArrivingTogetherComputesTheSharedPrefixOnce) {
  model::Model& m = *tiny_->model;
  SchedulerOptions o;
  o.max_batch_tokens = 128;
  Stepper d(m, o);
  const std::vector<int32_t> shared = random_tokens(200, 11);
  std::vector<std::shared_ptr<Request>> reqs;
  for (int i = 0; i < 6; ++i) {
    reqs.push_back(greedy_request(concat(shared, random_tokens(16, 20 + uint32_t(i))), 1));
    reqs.back()->boundaries = {200};
  }
  const std::vector<std::vector<float>> first = d.run_all(reqs);
  EXPECT_EQ(uint64_t(d.metrics.prefill_tokens), 200u + 6u * 16u);
  EXPECT_EQ(d.metrics.gauges().prefix.hits, 5);
  for (size_t k = 0; k < reqs.size(); ++k) {
    EXPECT_EQ(reqs[k]->stream->cached_tokens, k == 0 ? 0 : 200) << "request " << k;
    EXPECT_EQ(max_abs_diff(first[k], full_recompute(m, reqs[k]->prompt)), 0.0) << "request " << k;
  }
  d.expect_tree_matches_store();
}

}  // namespace
}  // namespace v4rt::launch::serve
