// SPDX-License-Identifier: MIT
// The Engine: the Scheduler and the Leader on one thread (rank 0). The thread asks the scheduler
// for a StepPlan, runs it through the Leader (every rank applies it) and gives the logits back to
// the scheduler; while idle it keeps the followers alive (heartbeats). `serve`, `batch` and
// `generate` submit their requests to it. A failed step or a follower that stops answering ends
// every request with an error and marks the engine failed (serve's /health turns 503, naming why).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "model/speculative.h"
#include "runtime/leader.h"
#include "runtime/metrics.h"
#include "runtime/scheduler.h"

namespace v4rt::runtime {

class Engine {
 public:
  // With options.mtp_depth > 0 the leader's executor needs the MTP block.
  Engine(Leader& leader, const SchedulerOptions& options, Metrics* metrics);
  ~Engine();

  void start();
  // Ends all requests, releases every state (the shutdown plan stops the followers), joins.
  void stop();

  SubmitResult submit(std::shared_ptr<Request> request) { return scheduler_.submit(std::move(request)); }
  Scheduler& scheduler() { return scheduler_; }
  bool failed() const { return failed_; }
  std::string failure() const;
  // Speculative totals so far (zero without drafting). Thread-safe.
  model::SpeculativeStats speculative_stats() const { return runtime::speculative_stats(*metrics_); }

 private:
  void loop();
  void fail(const std::string& why);

  Leader& leader_;
  Metrics* metrics_;
  Scheduler scheduler_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex mu_;  // guards failure_
  std::string failure_;
};

}  // namespace v4rt::runtime
