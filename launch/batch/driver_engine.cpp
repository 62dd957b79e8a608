// SPDX-License-Identifier: MIT
// DriverEngine: the scheduler's plans through the Driver (see driver_engine.h).
#include "launch/batch/driver_engine.h"

#include <glog/logging.h>

#include <climits>

namespace v4rt::launch::batch {

ForwardPlan to_forward_plan(const serve::StepPlan& plan) {
  CHECK(plan.copies.empty()) << "batch jobs run without the prefix cache";
  auto id = [](serve::SeqId s) {
    CHECK_LT(s, uint64_t(INT32_MAX));
    return int32_t(s);
  };
  ForwardPlan fp;
  for (const serve::PlanResolve& r : plan.resolves) fp.resolve.push_back({id(r.seq), r.accepted});
  for (const serve::PlanDraft& d : plan.drafts) fp.drafts.push_back({id(d.seq), d.level, d.depth, d.token});
  size_t off = 0;
  for (const serve::PlanChunk& c : plan.chunks) {
    ForwardChunk fc;
    fc.sequence = id(c.seq);
    fc.verify = c.kind == ChunkKind::kVerify;
    fc.hidden = c.kind == ChunkKind::kHidden;
    fc.all_logits = fc.verify;
    fc.tokens.assign(plan.tokens.begin() + ptrdiff_t(off), plan.tokens.begin() + ptrdiff_t(off) + c.num_tokens);
    off += size_t(c.num_tokens);
    fp.chunks.push_back(std::move(fc));
  }
  for (serve::SeqId s : plan.releases) fp.release.push_back(id(s));
  return fp;
}

DriverEngine::DriverEngine(model::Model& model, Driver& driver, const serve::SchedulerOptions& options)
    : driver_(driver), scheduler_(options, model.config(), &metrics_) {
  CHECK(options.mtp_depth == 0 || driver.mtp()) << "speculative batches need the MTP block";
}

DriverEngine::~DriverEngine() { stop(); }

void DriverEngine::start() {
  thread_ = std::thread([this] { loop(); });
}

void DriverEngine::stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
  const serve::StepPlan plan = scheduler_.shutdown_plan();
  if (!failed_ && !plan.releases.empty()) driver_.step(to_forward_plan(plan), nullptr);
}

std::string DriverEngine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void DriverEngine::loop() {
  std::vector<std::vector<float>> logits, draft_logits;
  while (!stop_) {
    serve::StepPlan plan;
    if (!scheduler_.next_plan(&plan, std::chrono::milliseconds(50))) continue;
    try {
      const auto t0 = std::chrono::steady_clock::now();
      driver_.step(to_forward_plan(plan), &logits, &draft_logits);
      serve::record_plan_time(plan, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                              &metrics_);
      scheduler_.complete(plan, logits, draft_logits);
    } catch (const std::exception& e) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        failure_ = "model step " + std::to_string(plan.step_idx) + " failed: " + e.what();
      }
      LOG(ERROR) << failure();
      failed_ = true;
      scheduler_.fail_all(failure());
      return;
    }
  }
}

}  // namespace v4rt::launch::batch
