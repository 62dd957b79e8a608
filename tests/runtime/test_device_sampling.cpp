// SPDX-License-Identifier: MIT
// Tokens drawn on the device (kSampleLast chunks -> Model::step -> Backend::sample) on the tiny
// model and the CPU backend, against the host sampler that stays the reference:
//  - a greedy draw is the argmax of the logits the host would have received, with the same
//    logprobs (tolerance 1e-5: the CPU op and model::token_logprobs sum in different orders);
//  - a drawn chunk sends no logits row to the host, in a batch mixed with chunks that do;
//  - through the scheduler, greedy requests generate the same tokens with either sampler;
//  - seeded draws do not depend on which other requests share the step;
//  - forced output (the test hook) and speculative decoding keep the host sampler.
// The draw's distribution against the host sampler's is tested on the op itself
// (tests/model/test_backend_sample.cpp: chi-square over temperature, top-p and top-k).
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <span>
#include <vector>

#include "model/sampler.h"
#include "runtime/executor.h"
#include "runtime/scheduler.h"
#include "runtime/step_plan.h"
#include "tests/launch/serve_test_util.h"

namespace v4rt::runtime {
namespace {

using namespace std::chrono_literals;
using launch::serve::testing::LoadedModel;

class DeviceSamplingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tiny_ = new LoadedModel(launch::serve::testing::load_tiny("tiny_device_sampling")); }
  static void TearDownTestSuite() {
    delete tiny_;
    tiny_ = nullptr;
  }
  static LoadedModel* tiny_;
};
LoadedModel* DeviceSamplingTest::tiny_ = nullptr;

std::vector<int32_t> random_tokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t(1000 + rng() % 60000));
  return t;
}

// A kSampleLast chunk of `tokens` for `seq`, greedy unless `temperature` > 0.
void add_draw(StepPlan* plan, SeqId seq, std::span<const int32_t> tokens, int n_logprobs, float temperature = 0,
              uint64_t seed = 0) {
  plan->add_chunk(seq, 0, tokens, kSampleLast);
  plan->chunks.back().sample = {seed, temperature, 1.0f, 0, n_logprobs};
}

TEST_F(DeviceSamplingTest, GreedyDrawIsTheHostArgmaxWithItsLogprobs) {
  model::Model& m = *tiny_->model;
  Executor executor(m);
  const std::vector<int32_t> a = random_tokens(37, 1), b = random_tokens(20, 2);
  // One step mixing host logits (seq 1, 3) and device draws (seq 2, 4) of the same prompts.
  StepPlan plan;
  plan.add_chunk(1, 0, a, kLogitsLast);
  add_draw(&plan, 2, a, 5);
  plan.add_chunk(3, 0, b, kLogitsLast);
  add_draw(&plan, 4, b, 0);
  std::vector<std::vector<float>> logits;
  std::vector<model::SampledToken> sampled;
  executor.run(plan, &logits, nullptr, &sampled);
  ASSERT_EQ(logits.size(), 4u);
  ASSERT_EQ(sampled.size(), 4u);
  EXPECT_TRUE(logits[1].empty()) << "a drawn chunk's logits stay on the device";
  EXPECT_TRUE(logits[3].empty());
  EXPECT_EQ(sampled[0].id, -1);
  EXPECT_EQ(sampled[2].id, -1);
  for (const auto& [host, drawn] : {std::pair{0, 1}, std::pair{2, 3}}) {
    const std::vector<float>& row = logits[size_t(host)];
    ASSERT_EQ(int64_t(row.size()), m.config().vocab_size);
    const model::SampledToken& t = sampled[size_t(drawn)];
    EXPECT_EQ(t.id, model::argmax(row));
    const model::TokenLogprobs ref = model::token_logprobs(row, t.id, 5);
    EXPECT_NEAR(t.logprob, ref.logprob, 1e-5f);
    if (drawn == 1) {
      ASSERT_EQ(t.top.size(), ref.top.size());
      for (size_t j = 0; j < ref.top.size(); ++j) {
        EXPECT_EQ(t.top[j].first, ref.top[j].first) << j;
        EXPECT_NEAR(t.top[j].second, ref.top[j].second, 1e-5f) << j;
      }
    } else {
      EXPECT_TRUE(t.top.empty());
    }
  }
  // Followers run the plan without `sampled`: the drawn chunks advance their states all the same.
  Executor follower(m);
  follower.run(plan, nullptr);
  EXPECT_EQ(follower.position(2), 37);
  EXPECT_EQ(follower.position(4), 20);
}

// Scheduler + Executor driven step by step, as the engine thread does.
std::vector<TokenEvent> run_requests(model::Model& m, const SchedulerOptions& o,
                                     const std::vector<std::shared_ptr<Request>>& requests, bool* any_draw = nullptr,
                                     bool* any_host_row = nullptr) {
  Metrics metrics;
  Scheduler scheduler(o, m.config(), &metrics);
  Executor executor(m);
  for (const auto& r : requests) EXPECT_EQ(scheduler.submit(r).status, 200);
  StepPlan plan;
  std::vector<std::vector<float>> logits, draft_logits;
  std::vector<model::SampledToken> sampled;
  while (scheduler.next_plan(&plan, 0ms)) {
    for (const PlanChunk& c : plan.chunks) {
      if (any_draw && c.want_logits == kSampleLast) *any_draw = true;
      if (any_host_row && (c.want_logits == kLogitsLast || c.want_logits == kLogitsAll)) *any_host_row = true;
    }
    executor.run(plan, &logits, &draft_logits, &sampled);
    scheduler.complete(plan, logits, draft_logits, sampled);
  }
  std::vector<TokenEvent> first;
  requests.front()->stream->wait(&first, 0ms);
  return first;
}

std::shared_ptr<Request> request(std::vector<int32_t> prompt, double temperature, uint64_t seed, int max_tokens) {
  auto r = std::make_shared<Request>();
  r->prompt = std::move(prompt);
  r->sampling.temperature = temperature;
  r->sampling.seed = seed;
  r->sampling.max_tokens = max_tokens;
  r->sampling.ignore_eos = true;
  r->sampling.logprobs = true;
  r->sampling.top_logprobs = 3;
  return r;
}

TEST_F(DeviceSamplingTest, GreedyRequestsGenerateTheSameTokensWithEitherSampler) {
  model::Model& m = *tiny_->model;
  const std::vector<int32_t> prompt = random_tokens(50, 3);
  SchedulerOptions host, device;
  device.device_sampling = true;
  bool drew = false, host_rows = false;
  const std::vector<TokenEvent> on_device = run_requests(m, device, {request(prompt, 0, 0, 8)}, &drew, &host_rows);
  EXPECT_TRUE(drew);
  EXPECT_FALSE(host_rows) << "no logits row reaches the host when every request draws on the device";
  const std::vector<TokenEvent> on_host = run_requests(m, host, {request(prompt, 0, 0, 8)});
  ASSERT_EQ(on_device.size(), 8u);
  ASSERT_EQ(on_host.size(), 8u);
  for (size_t i = 0; i < on_host.size(); ++i) {
    EXPECT_EQ(on_device[i].token, on_host[i].token) << i;
    EXPECT_NEAR(on_device[i].logprob, on_host[i].logprob, 1e-5f) << i;
    ASSERT_EQ(on_device[i].top.size(), 3u);
    for (size_t j = 0; j < 3; ++j) EXPECT_EQ(on_device[i].top[j].first, on_host[i].top[j].first) << i << "," << j;
  }
}

TEST_F(DeviceSamplingTest, SeededDrawsDoNotDependOnTheOtherRequestsOfTheStep) {
  model::Model& m = *tiny_->model;
  SchedulerOptions o;
  o.device_sampling = true;
  const std::vector<int32_t> prompt = random_tokens(40, 4);
  const std::vector<TokenEvent> alone = run_requests(m, o, {request(prompt, 1.0, 7, 10)});
  std::vector<std::shared_ptr<Request>> crowd = {request(prompt, 1.0, 7, 10)};
  for (int k = 0; k < 3; ++k) crowd.push_back(request(random_tokens(30 + 9 * k, 10 + k), 0.9, 100 + k, 12));
  const std::vector<TokenEvent> among = run_requests(m, o, crowd);
  ASSERT_EQ(alone.size(), 10u);
  ASSERT_EQ(among.size(), 10u);
  for (size_t i = 0; i < alone.size(); ++i) EXPECT_EQ(alone[i].token, among[i].token) << i;
  // Another seed draws another sequence (the test can fail: 10 draws at temperature 1).
  const std::vector<TokenEvent> other = run_requests(m, o, {request(prompt, 1.0, 8, 10)});
  bool differs = false;
  for (size_t i = 0; i < other.size(); ++i) differs |= other[i].token != alone[i].token;
  EXPECT_TRUE(differs);
}

TEST_F(DeviceSamplingTest, ForcedOutputKeepsTheHostSampler) {
  model::Model& m = *tiny_->model;
  SchedulerOptions o;
  o.device_sampling = true;
  auto r = request(random_tokens(12, 5), 0, 0, 3);
  r->sampling.forced = true;
  r->sampling.forced_tokens = {5, 6, 7};
  bool drew = false, host_rows = false;
  const std::vector<TokenEvent> ev = run_requests(m, o, {r}, &drew, &host_rows);
  EXPECT_FALSE(drew);
  EXPECT_TRUE(host_rows);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].token, 5);
  EXPECT_EQ(ev[2].token, 7);
}

}  // namespace
}  // namespace v4rt::runtime
