// SPDX-License-Identifier: MIT
// Leader and Follower (see leader.h).
#include "runtime/leader.h"

#include <glog/logging.h>

#include <exception>

namespace v4rt::runtime {

Leader::Leader(Executor& executor, PlanLink& link) : executor_(executor), link_(link) {
  CHECK(link_.leader()) << "the Leader runs on the leading rank";
}

Leader::~Leader() {
  if (!stopped_ && !link_failed_) stop();
}

void Leader::run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
                 std::vector<std::vector<float>>* draft_logits, std::vector<model::SampledToken>* sampled) {
  CHECK(!stopped_) << "step " << plan.step_idx << " after the shutdown plan";
  CHECK(!link_failed_) << "step " << plan.step_idx << " after the plan link failed";
  link_.send(plan);
  if (plan.shutdown) stopped_ = true;
  executor_.run(plan, logits, draft_logits, sampled);
  ++steps_;
}

bool Leader::keep_alive(std::string* why) {
  if (stopped_ || link_failed_) return !link_failed_;
  link_failed_ = !link_.keep_alive(why);
  return !link_failed_;
}

void Leader::stop() {
  if (stopped_ || link_failed_) return;
  StepPlan plan;
  plan.shutdown = 1;
  run(plan, nullptr);
}

int64_t Follower::run() {
  for (;;) {
    StepPlan plan;
    try {
      plan = link_.receive();
      executor_.run(plan, nullptr);  // the logits are the leader's
    } catch (const std::exception& e) {
      LOG(FATAL) << "step plan " << plan.step_idx << " failed on this rank: " << e.what();
    }
    ++steps_;
    if (plan.shutdown) break;
  }
  LOG(INFO) << "ran " << steps_ << " step plans; " << executor_.num_sequences() << " states left";
  return steps_;
}

}  // namespace v4rt::runtime
