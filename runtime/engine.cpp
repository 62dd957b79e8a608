// SPDX-License-Identifier: MIT
// Engine thread: plan -> Leader::run -> Scheduler::complete, heartbeats while idle, until stopped
// or failed (see engine.h).
#include "runtime/engine.h"

#include <glog/logging.h>

#include "model/distributed.h"

namespace v4rt::runtime {

namespace {
constexpr auto kIdleWait = std::chrono::milliseconds(100);  // wait for work between heartbeats

// The scheduler charges states in the format the model keeps them in.
SchedulerOptions for_model(SchedulerOptions options, const model::Model& model) {
  options.kv_storage = model.kv_storage();
  return options;
}
}  // namespace

Engine::Engine(Leader& leader, const SchedulerOptions& options, Metrics* metrics)
    : leader_(leader), metrics_(metrics),
      scheduler_(for_model(options, leader.executor().model()), leader.executor().model().config(), metrics,
                 model::ownership_of(leader.executor().model().parallel())) {
  CHECK(options.mtp_depth == 0 || leader.executor().mtp()) << "speculative decoding needs the MTP block";
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
  if (!failed_) leader_.run(scheduler_.shutdown_plan(), nullptr);
}

std::string Engine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Engine::fail(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = why;
  }
  LOG(ERROR) << why;
  failed_ = true;
  scheduler_.fail_all(why);
}

void Engine::loop() {
  std::vector<std::vector<float>> logits, draft_logits;
  std::vector<model::SampledToken> sampled;
  while (!stop_) {
    StepPlan plan;
    if (!scheduler_.next_plan(&plan, kIdleWait)) {
      std::string why;
      if (!leader_.keep_alive(&why)) return fail(why);
      continue;
    }
    try {
      const auto t0 = std::chrono::steady_clock::now();
      leader_.run(plan, &logits, &draft_logits, &sampled);
      record_plan_time(plan, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), metrics_);
      if (const model::KvPool* pool = leader_.executor().model().kv_pool(); pool && metrics_) {
        metrics_->kv_pool_reserved_bytes = pool->reserved_bytes();
        metrics_->kv_pool_used_bytes = pool->used_bytes();
      }
      scheduler_.complete(plan, logits, draft_logits, sampled);
    } catch (const std::exception& e) {
      return fail("model step " + std::to_string(plan.step_idx) + " failed: " + e.what());
    }
  }
}

}  // namespace v4rt::runtime
