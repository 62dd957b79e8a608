// SPDX-License-Identifier: MIT
// The engines a batch job submits its requests to. DriverEngine-like continuous batching lives in
// batch_job.cpp over serve::Scheduler; SpeculativeEngine here runs `v4rt batch --mtp N`: every
// engine step drafts N tokens for every decoding sequence with the MTP block (N plans, one draft
// level of all sequences each) and then verifies all of them, together with the prompt chunks of
// newly admitted sequences, in one Model::step (Driver::speculate). Requests are admitted in
// priority then arrival order while their KV estimate fits the budget; a request ends at EOS, its
// token limit, cancellation or its deadline, exactly as under the scheduler, and its tokens reach
// the same serve::TokenStream. Greedy requests give the scheduler's tokens; sampled ones the same
// distribution (rejection sampling, model/speculative.h) with different draws.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "launch/driver.h"
#include "launch/serve/scheduler.h"
#include "model/speculative.h"

namespace v4rt::launch::batch {

// What BatchJob needs of an engine; run on its own thread between start() and stop().
class BatchEngine {
 public:
  virtual ~BatchEngine() = default;
  virtual serve::SubmitResult submit(std::shared_ptr<serve::Request> request) = 0;
  virtual void start() = 0;
  virtual void stop() = 0;  // ends the running requests and frees every state on every rank
  virtual bool failed() const = 0;
  virtual std::string failure() const = 0;  // after failed() is true
  // Speculative totals so far (zero without drafting). Thread-safe.
  virtual model::SpeculativeStats speculative_stats() const { return {}; }
};

struct SpeculativeEngineOptions {
  int depth = 1;                  // draft tokens per verify step
  int max_batch_tokens = 256;     // verify chunks (depth + 1 each) + prompt chunks per step
  int max_running = 32;
  int max_queue = 64;
  int64_t kv_budget_bytes = int64_t(1) << 30;
  int32_t eos_token_id = 1;
};

class SpeculativeEngine : public BatchEngine {
 public:
  SpeculativeEngine(model::Model& model, Driver& driver, const SpeculativeEngineOptions& options);
  ~SpeculativeEngine() override;

  serve::SubmitResult submit(std::shared_ptr<serve::Request> request) override;
  void start() override;
  void stop() override;
  bool failed() const override { return failed_; }
  std::string failure() const override;
  model::SpeculativeStats speculative_stats() const override;

 private:
  struct Running {
    std::shared_ptr<serve::Request> req;
    int32_t id = 0;
    int64_t fed = 0;          // prompt tokens in the state
    int generated = 0;
    int64_t reserved = 0;     // KV bytes charged
    std::unique_ptr<model::SpeculativeSampler> sampler;
    int32_t next = -1;        // decided, not yet processed (decoding)
    bool decoding = false;
    bool done = false;
  };

  void loop();
  bool step_once();                      // false: nothing to run
  void admit();
  void sweep();
  // One decided token of `r` with the logits it was decided from; false once `r` has finished.
  bool emit(Running& r, int32_t token, std::span<const float> logits);
  void finish(Running& r, serve::FinishReason reason, const std::string& message = "");
  void fail_all(const std::string& why);

  model::Model& model_;
  Driver& driver_;
  SpeculativeEngineOptions options_;

  mutable std::mutex mu_;                // guards the queue, stopped_ and failure_
  std::condition_variable cv_;
  std::map<int, std::deque<std::shared_ptr<serve::Request>>, std::greater<int>> waiting_;
  size_t num_waiting_ = 0;
  bool stopped_ = false;
  std::string failure_;

  // Engine thread only.
  std::vector<std::unique_ptr<Running>> running_;
  std::vector<int32_t> pending_release_;
  int64_t kv_used_ = 0;
  int32_t next_id_ = 1;

  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex stats_mu_;
  model::SpeculativeStats stats_;
};

}  // namespace v4rt::launch::batch
