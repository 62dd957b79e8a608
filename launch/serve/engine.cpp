// SPDX-License-Identifier: MIT
// Engine thread: plan -> (hook) -> Executor::run -> Scheduler::complete, until stopped or failed.
#include "launch/serve/engine.h"

#include <glog/logging.h>

#include <chrono>

namespace v4rt::launch::serve {

Engine::Engine(model::Model& model, const SchedulerOptions& options, Metrics* metrics, model::Mtp* mtp)
    : metrics_(metrics), scheduler_(options, model.config(), metrics), executor_(model, mtp) {
  CHECK(options.mtp_depth == 0 || mtp) << "speculative decoding needs the MTP block";
}

Engine::~Engine() { stop(); }

void Engine::start() {
  CHECK(!thread_.joinable());
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
  if (!failed_) {
    const StepPlan plan = scheduler_.shutdown_plan();
    if (plan_hook_) plan_hook_(plan);
    executor_.run(plan, nullptr);
  }
}

std::string Engine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Engine::loop() {
  std::vector<std::vector<float>> logits, draft_logits;
  while (!stop_) {
    StepPlan plan;
    if (!scheduler_.next_plan(&plan, std::chrono::milliseconds(100))) {
      if (idle_hook_) idle_hook_();
      continue;
    }
    try {
      if (plan_hook_) plan_hook_(plan);
      const auto t0 = std::chrono::steady_clock::now();
      executor_.run(plan, &logits, &draft_logits);
      record_plan_time(plan, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), metrics_);
      scheduler_.complete(plan, logits, draft_logits);
    } catch (const std::exception& e) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        failure_ = std::string("model step ") + std::to_string(plan.step_idx) + " failed: " + e.what();
      }
      LOG(ERROR) << failure();
      failed_ = true;
      scheduler_.fail_all(failure());
      return;
    }
  }
}

}  // namespace v4rt::launch::serve
