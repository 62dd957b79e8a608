// SPDX-License-Identifier: MIT
// The two roles of a rank in a job. The Leader (world rank 0) sends every plan over the PlanLink
// and then applies it to its own Executor; a Follower (every other rank) runs the one follower
// loop: receive a plan, apply it, until the shutdown plan. Every command (serve, batch, generate,
// logits) runs its steps through the Leader, directly (`logits`) or through the Engine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/executor.h"
#include "runtime/plan_link.h"
#include "runtime/step_plan.h"

namespace v4rt::runtime {

class Leader {
 public:
  Leader(Executor& executor, PlanLink& link);
  ~Leader();  // stop() unless the followers were stopped (or the link failed)

  // Broadcasts `plan` and applies it here; logits / draft_logits / sampled as Executor::run.
  void run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
           std::vector<std::vector<float>>* draft_logits = nullptr,
           std::vector<model::SampledToken>* sampled = nullptr);
  // While idle: keeps the followers waiting (PlanLink::keep_alive). False, with *why naming the
  // ranks, when a follower no longer answers; no plan may follow.
  bool keep_alive(std::string* why);
  // Sends the shutdown plan (once): the followers leave their loop. Idempotent.
  void stop();

  Executor& executor() { return executor_; }
  int num_ranks() const { return link_.size(); }
  int64_t steps() const { return steps_; }
  bool link_failed() const { return link_failed_; }  // a follower stopped answering

 private:
  Executor& executor_;
  PlanLink& link_;
  int64_t steps_ = 0;
  bool stopped_ = false;
  bool link_failed_ = false;
};

class Follower {
 public:
  Follower(Executor& executor, PlanLink& link) : executor_(executor), link_(link) {}
  // The follower loop: the leader's plans until the shutdown plan. A malformed plan or a failed
  // step ends the job (fatal error naming the step). Returns the number of plans run.
  int64_t run();
  int64_t steps() const { return steps_; }

 private:
  Executor& executor_;
  PlanLink& link_;
  int64_t steps_ = 0;
};

// A job of one rank (in-process tests and tools): an Executor and its Leader, no link.
struct SoloRank {
  explicit SoloRank(model::Model& model, model::Mtp* mtp = nullptr)
      : executor(model, mtp), link(nullptr, LinkOptions{}), leader(executor, link) {}
  Executor executor;
  PlanLink link;
  Leader leader;
};

}  // namespace v4rt::runtime
