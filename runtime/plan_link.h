// SPDX-License-Identifier: MIT
// The plan link: how StepPlans travel from the leader (world rank 0) to the follower ranks.
//
// Wire: one I64 broadcast of the plan's byte size, then the bytes (serialize_plan) as U8; bytes
// sent by the leader per plan = (world-1) * (8 + size). Every broadcast has a deadline
// (plan_timeout_s): a follower whose leader is gone or stuck stops waiting and the job ends
// naming the missing rank (cluster::MpiComm). The idle leader sends a heartbeat (an empty plan)
// every heartbeat_s and waits for every follower's answer (a barrier) for at most 0.3 x the plan
// deadline, so a frozen follower is noticed within plan_timeout_s even when no step runs.
// With no communicator (one rank) nothing is sent.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "cluster/comm.h"
#include "runtime/step_plan.h"

namespace v4rt::runtime {

struct LinkOptions {
  double plan_timeout_s = 60.0;  // deadline of one plan broadcast (followers wait at most this long)
  double heartbeat_s = 1.0;      // the idle leader sends a heartbeat this often (capped at plan_timeout_s / 5)
};

class PlanLink {
 public:
  // `comm`: a communicator over every rank of the job whose rank 0 leads (nullptr or one rank: no
  // communication). Its own deadline is replaced by options.plan_timeout_s.
  PlanLink(std::unique_ptr<cluster::Comm> comm, const LinkOptions& options);

  bool leader() const { return !comm_ || comm_->rank() == 0; }
  int size() const { return comm_ ? comm_->size() : 1; }
  const cluster::Comm* comm() const { return comm_.get(); }
  cluster::Comm* comm() { return comm_.get(); }
  const LinkOptions& options() const { return options_; }

  // Leader: broadcasts `plan`.
  void send(const StepPlan& plan);
  // Followers: the next plan that is not a heartbeat (heartbeats are answered here). Throws
  // v4rt::Error on malformed bytes.
  StepPlan receive();
  // Leader, while idle: a heartbeat when the last plan went out heartbeat_s ago or more. False
  // when a follower did not answer in time; *why names the ranks (the link is then unusable).
  bool keep_alive(std::string* why);

 private:
  std::unique_ptr<cluster::Comm> comm_;
  LinkOptions options_;
  std::chrono::steady_clock::time_point last_send_;
};

}  // namespace v4rt::runtime
