// SPDX-License-Identifier: MIT
// The engine loop (rank 0): one thread that asks the Scheduler for a StepPlan, hands it to the
// plan hook (where a distributed driver broadcasts it to the other ranks), runs it on the local
// Executor and gives the logits back to the Scheduler. A failure in the forward pass ends every
// request with an error and marks the engine failed (health turns 503).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "launch/serve/scheduler.h"
#include "launch/serve/step_plan.h"
#include "model/mtp.h"

namespace v4rt::launch::serve {

class Engine {
 public:
  // `mtp`: the MTP block when options.mtp_depth > 0 (speculative decoding), else nullptr.
  Engine(model::Model& model, const SchedulerOptions& options, Metrics* metrics, model::Mtp* mtp = nullptr);
  ~Engine();

  // Called with every plan before it runs locally (e.g. broadcast to follower ranks).
  void set_plan_hook(std::function<void(const StepPlan&)> hook) { plan_hook_ = std::move(hook); }
  // Called on the engine thread whenever a wait for work ends empty (about every 100 ms while
  // idle; e.g. a heartbeat to the follower ranks).
  void set_idle_hook(std::function<void()> hook) { idle_hook_ = std::move(hook); }
  void start();
  // Ends all requests, releases every state (the shutdown plan goes through the hook too), joins.
  void stop();

  Scheduler& scheduler() { return scheduler_; }
  bool failed() const { return failed_; }
  std::string failure() const;

 private:
  void loop();

  Metrics* metrics_;
  Scheduler scheduler_;
  Executor executor_;
  std::function<void(const StepPlan&)> plan_hook_;
  std::function<void()> idle_hook_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex mu_;
  std::string failure_;
};

}  // namespace v4rt::launch::serve
