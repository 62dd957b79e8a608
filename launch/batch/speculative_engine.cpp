// SPDX-License-Identifier: MIT
// SpeculativeEngine: admission, the speculative step loop over the Driver, token delivery (see
// speculative_engine.h).
#include "launch/batch/speculative_engine.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/check.h"

namespace v4rt::launch::batch {

SpeculativeEngine::SpeculativeEngine(model::Model& model, Driver& driver, const SpeculativeEngineOptions& options)
    : model_(model), driver_(driver), options_(options) {
  CHECK(driver.mtp()) << "speculative batches need the MTP block";
  V4RT_REQUIRE(options.depth >= 1 && options.depth <= model::max_draft_depth(model.config()),
               "--mtp " << options.depth << " must be in [1, " << model::max_draft_depth(model.config()) << "]");
  V4RT_REQUIRE(options.max_batch_tokens >= options.depth + 1,
               "server.max_batch_tokens " << options.max_batch_tokens << " is below one verify chunk of "
                                          << options.depth + 1 << " tokens");
  CHECK_GT(options.max_running, 0);
}

SpeculativeEngine::~SpeculativeEngine() { stop(); }

serve::SubmitResult SpeculativeEngine::submit(std::shared_ptr<serve::Request> request) {
  const int64_t need =
      serve::kv_bytes_estimate(model_.config(), int64_t(request->prompt.size()) + request->sampling.max_tokens);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return {503, "the engine is not running: " + failure_};
    if (need > options_.kv_budget_bytes)
      return {413, "the request needs " + std::to_string(need) + " bytes of KV state (prompt " +
                       std::to_string(request->prompt.size()) + " + max_tokens " +
                       std::to_string(request->sampling.max_tokens) + " tokens), more than the budget of " +
                       std::to_string(options_.kv_budget_bytes)};
    if (num_waiting_ >= size_t(options_.max_queue))
      return {429, "the request queue is full (" + std::to_string(options_.max_queue) + " waiting)"};
    waiting_[request->priority].push_back(std::move(request));
    ++num_waiting_;
  }
  cv_.notify_all();
  return {};
}

std::string SpeculativeEngine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

model::SpeculativeStats SpeculativeEngine::speculative_stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void SpeculativeEngine::start() {
  thread_ = std::thread([this] { loop(); });
}

void SpeculativeEngine::stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  cv_.notify_all();
  thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    if (failure_.empty()) failure_ = "shutting down";
    for (auto& [prio, queue] : waiting_)
      for (auto& req : queue) req->stream->finish(serve::FinishReason::kError, failure_);
    waiting_.clear();
    num_waiting_ = 0;
  }
  for (auto& r : running_) {
    if (!r->done) r->req->stream->finish(serve::FinishReason::kError, "shutting down");
    pending_release_.push_back(r->id);
  }
  running_.clear();
  if (!failed_ && !pending_release_.empty()) {
    ForwardPlan plan;
    plan.release = std::move(pending_release_);
    driver_.step(plan, nullptr);
  }
  pending_release_.clear();
}

void SpeculativeEngine::loop() {
  while (!stop_) {
    try {
      if (step_once()) continue;
    } catch (const std::exception& e) {
      fail_all(std::string("speculative step failed: ") + e.what());
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return stop_ || num_waiting_ > 0; });
  }
}

void SpeculativeEngine::fail_all(const std::string& why) {
  LOG(ERROR) << why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    failure_ = why;
    for (auto& [prio, queue] : waiting_)
      for (auto& req : queue) req->stream->finish(serve::FinishReason::kError, why);
    waiting_.clear();
    num_waiting_ = 0;
  }
  for (auto& r : running_)
    if (!r->done) r->req->stream->finish(serve::FinishReason::kError, why);
  running_.clear();
  failed_ = true;
}

void SpeculativeEngine::admit() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [prio, queue] : waiting_) {
    while (!queue.empty() && int(running_.size()) < options_.max_running) {
      const std::shared_ptr<serve::Request>& req = queue.front();
      const int64_t need = serve::kv_bytes_estimate(model_.config(), int64_t(req->prompt.size()) + req->sampling.max_tokens);
      if (kv_used_ + need > options_.kv_budget_bytes) return;  // head of line waits for memory
      auto r = std::make_unique<Running>();
      r->req = req;
      r->id = next_id_++;
      r->reserved = need;
      r->sampler = std::make_unique<model::SpeculativeSampler>(
          model::SamplerOptions{req->sampling.temperature, req->sampling.top_p, req->sampling.seed});
      kv_used_ += need;
      req->stream->prompt_tokens = int64_t(req->prompt.size());
      req->stream->cached_tokens = 0;
      running_.push_back(std::move(r));
      queue.pop_front();
      --num_waiting_;
    }
    if (!queue.empty()) return;  // a lower priority never overtakes a waiting higher one
  }
}

void SpeculativeEngine::finish(Running& r, serve::FinishReason reason, const std::string& message) {
  r.req->stream->finish(reason, message);
  r.done = true;
  kv_used_ -= r.reserved;
  r.reserved = 0;
  pending_release_.push_back(r.id);
}

void SpeculativeEngine::sweep() {
  const serve::Clock::time_point now = serve::Clock::now();
  for (auto& r : running_) {
    if (r->req->stream->cancelled()) {
      finish(*r, serve::FinishReason::kCancelled);
    } else if (now > r->req->deadline) {
      finish(*r, serve::FinishReason::kTimeout, "request timeout");
    }
  }
  std::erase_if(running_, [](const auto& r) { return r->done; });
}

bool SpeculativeEngine::emit(Running& r, int32_t token, std::span<const float> logits) {
  const serve::SamplingParams& sp = r.req->sampling;
  ++r.generated;
  if (token == options_.eos_token_id) {
    finish(r, serve::FinishReason::kEos);
    return false;
  }
  serve::TokenEvent ev;
  ev.token = token;
  if (sp.logprobs) serve::fill_logprobs(logits, token, sp.top_logprobs, &ev);
  r.req->stream->push(std::move(ev));
  if (r.generated >= sp.max_tokens) {
    finish(r, serve::FinishReason::kLength);
    return false;
  }
  r.next = token;
  return true;
}

bool SpeculativeEngine::step_once() {
  admit();
  sweep();
  std::vector<SpeculativeTurn> turns;
  std::vector<Running*> turn_of;
  for (auto& r : running_) {
    if (!r->decoding) continue;
    SpeculativeTurn t;
    t.sequence = r->id;
    t.next = r->next;
    t.sampler = r->sampler.get();
    turns.push_back(std::move(t));
    turn_of.push_back(r.get());
  }
  // Prompt chunks in admission order under what the verify chunks leave of the token budget.
  int64_t budget = options_.max_batch_tokens - int64_t(turns.size()) * (options_.depth + 1);
  if (turns.empty()) budget = std::max<int64_t>(budget, 1);
  ForwardPlan extra;
  std::vector<Running*> chunk_of;
  for (auto& r : running_) {
    if (r->decoding || budget <= 0) continue;
    const int64_t left = int64_t(r->req->prompt.size()) - r->fed;
    const int64_t take = std::min(left, budget);
    ForwardChunk c;
    c.sequence = r->id;
    c.hidden = true;
    c.tokens.assign(r->req->prompt.begin() + r->fed, r->req->prompt.begin() + r->fed + take);
    extra.chunks.push_back(std::move(c));
    chunk_of.push_back(r.get());
    budget -= take;
  }
  extra.release = std::move(pending_release_);
  pending_release_.clear();
  if (turns.empty() && extra.chunks.empty()) {
    if (extra.release.empty()) return false;
    driver_.step(extra, nullptr);
    return true;
  }

  std::vector<std::vector<float>> logits;
  if (turns.empty()) {
    driver_.step(extra, &logits);
  } else {
    const model::SpeculativeStats before = driver_.speculative_stats();
    driver_.speculate(options_.depth, turns, extra, &logits);
    model::SpeculativeStats delta = driver_.speculative_stats();
    delta.steps -= before.steps;
    delta.drafted -= before.drafted;
    delta.accepted -= before.accepted;
    delta.emitted -= before.emitted;
    delta.draft_s -= before.draft_s;
    delta.verify_s -= before.verify_s;
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.add(delta);
  }
  const int64_t vocab = model_.config().vocab_size;
  for (size_t i = 0; i < turns.size(); ++i) {
    Running& r = *turn_of[i];
    const std::vector<int32_t> tokens = turns[i].emitted();
    for (size_t j = 0; j < tokens.size(); ++j) {
      const std::span<const float> row(turns[i].logits.data() + j * size_t(vocab), size_t(vocab));
      if (!emit(r, tokens[j], row)) break;
    }
  }
  for (size_t i = 0; i < chunk_of.size(); ++i) {
    Running& r = *chunk_of[i];
    r.fed += int64_t(extra.chunks[i].tokens.size());
    if (r.fed < int64_t(r.req->prompt.size())) continue;
    const serve::SamplingParams& sp = r.req->sampling;
    if (sp.forced) {  // test hook: the forced tokens, then EOS (as the scheduler emits them)
      bool going = true;
      for (size_t k = 0; going && k < sp.forced_tokens.size(); ++k) going = emit(r, sp.forced_tokens[k], logits[i]);
      if (going) emit(r, options_.eos_token_id, logits[i]);
      continue;
    }
    r.decoding = emit(r, r.sampler->sample(logits[i]), logits[i]);
  }
  std::erase_if(running_, [](const auto& r) { return r->done; });
  return true;
}

}  // namespace v4rt::launch::batch
