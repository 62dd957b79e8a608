// SPDX-License-Identifier: MIT
// The engine a batch job submits its requests to: serve::Engine's loop (the same serve::Scheduler:
// continuous batching, admission by KV memory, EOS / token limit / cancellation / deadline) with the
// Driver as the executor, so every plan reaches every rank of the job. With SchedulerOptions::
// mtp_depth N > 0 the scheduler decodes speculatively (N draft plans, then one verify plan that
// also carries the prompt chunks of newly admitted sequences); greedy requests give the tokens of
// plain decoding, sampled ones the same distribution (model/speculative.h).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "launch/driver.h"
#include "launch/serve/metrics.h"
#include "launch/serve/scheduler.h"
#include "model/speculative.h"

namespace v4rt::launch::batch {

// The scheduler's StepPlan as the Driver's ForwardPlan (sequence ids below 2^31; prefix reuse is
// off in batch jobs, so a plan has no copies).
ForwardPlan to_forward_plan(const serve::StepPlan& plan);

class DriverEngine {
 public:
  DriverEngine(model::Model& model, Driver& driver, const serve::SchedulerOptions& options);
  ~DriverEngine();

  serve::SubmitResult submit(std::shared_ptr<serve::Request> request) { return scheduler_.submit(std::move(request)); }
  void start();
  // Ends the running requests and frees every state on every rank.
  void stop();
  bool failed() const { return failed_; }
  std::string failure() const;  // after failed() is true
  // Speculative totals so far (zero without drafting). Thread-safe.
  model::SpeculativeStats speculative_stats() const { return serve::speculative_stats(metrics_); }

 private:
  void loop();

  Driver& driver_;
  serve::Metrics metrics_;
  serve::Scheduler scheduler_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex mu_;  // guards failure_
  std::string failure_;
};

}  // namespace v4rt::launch::batch
