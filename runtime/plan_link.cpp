// SPDX-License-Identifier: MIT
// PlanLink: plan broadcast under a deadline, heartbeats and their answers (see plan_link.h).
#include "runtime/plan_link.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "common/check.h"

namespace v4rt::runtime {

namespace {

using SteadyClock = std::chrono::steady_clock;

// How long the leader waits for the answers to a heartbeat: 0.3 x the plan deadline, so a frozen
// follower is named well within the deadline: heartbeat period (<= 0.2) + answer wait (0.3) +
// the probe's grace (0.2, cluster::MpiComm) + the engine's idle poll (100 ms).
double answer_timeout_s(const LinkOptions& o) { return 0.3 * o.plan_timeout_s; }

}  // namespace

PlanLink::PlanLink(std::unique_ptr<cluster::Comm> comm, const LinkOptions& options)
    : comm_(comm && comm->size() > 1 ? std::move(comm) : nullptr), options_(options), last_send_(SteadyClock::now()) {
  V4RT_REQUIRE(options_.plan_timeout_s > 0, "plan link: the plan deadline must be > 0 s, got " << options_.plan_timeout_s);
  options_.heartbeat_s = std::min(options_.heartbeat_s, options_.plan_timeout_s / 5);
}

void PlanLink::send(const StepPlan& plan) {
  CHECK(leader()) << "only the leader sends plans";
  last_send_ = SteadyClock::now();
  if (!comm_) return;
  std::vector<uint8_t> bytes = serialize_plan(plan);
  int64_t size = int64_t(bytes.size());
  comm_->broadcast(&size, 1, DType::kI64, 0);
  comm_->broadcast(bytes.data(), size, DType::kU8, 0);
}

StepPlan PlanLink::receive() {
  CHECK(!leader() && comm_) << "the leader sends plans, it does not receive them";
  for (;;) {
    int64_t size = 0;
    comm_->broadcast(&size, 1, DType::kI64, 0);
    V4RT_REQUIRE(size > 0 && size < (int64_t(1) << 34), "plan link: a plan of " << size << " bytes");
    std::vector<uint8_t> bytes(static_cast<size_t>(size));
    comm_->broadcast(bytes.data(), size, DType::kU8, 0);
    StepPlan plan = deserialize_plan(bytes);
    if (!plan.empty()) return plan;
    comm_->barrier();  // the heartbeat's answer
  }
}

bool PlanLink::keep_alive(std::string* why) {
  CHECK(leader());
  const auto period = std::chrono::duration<double>(options_.heartbeat_s);
  if (!comm_ || SteadyClock::now() - last_send_ < period) return true;
  send(StepPlan{});
  std::vector<int> absent;
  if (comm_->barrier_within(answer_timeout_s(options_), &absent)) {
    last_send_ = SteadyClock::now();
    return true;
  }
  std::ostringstream os;
  os << (absent.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < absent.size(); ++i) os << (i ? ", " : "") << absent[i];
  if (absent.empty()) os << "a rank";
  os << " did not answer the heartbeat within " << answer_timeout_s(options_)
     << " s (stopped, stuck or gone); the job cannot run steps";
  *why = os.str();
  return false;
}

}  // namespace v4rt::runtime
