// SPDX-License-Identifier: MIT
// ServeRanks (plan broadcast, heartbeats, load barrier, follower loop), the stop signals and their
// watchdog, and the leader's fault path (see ranks.h).
//
// Deadlines: a follower waits at most plan_timeout_s for the next plan (the leader sends a
// heartbeat every heartbeat_s while idle); past it MpiComm names the missing rank and aborts the
// job. The leader's plan sends have the same deadline; its model collectives have their own
// (RunOptions::timeout_s). A rank killed outright is noticed by mpirun, which ends the others
// (SIGTERM, then SIGKILL a second later): the leader answers its in-flight requests first.
#include "launch/serve/ranks.h"

#include <glog/logging.h>
#include <mpi.h>

#include <csignal>
#include <cstdio>

#include "cluster/mpi_comm.h"
#include "cluster/world.h"
#include "launch/driver.h"

namespace v4rt::launch::serve {

namespace {

using SteadyClock = std::chrono::steady_clock;

std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal = sig; }

bool mpi_running() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  return initialised && !finalised;
}

// The leader's engine scheduler, for the fault path.
std::atomic<Scheduler*> g_fault_scheduler{nullptr};
std::atomic<bool> g_fault_requests_failed{false};

// glog failure function on the leader (replaces cluster's, which it ends with): every request
// still open gets its 503 before the job is aborted. fail_all runs on its own thread so a fatal
// error raised under the scheduler's lock cannot deadlock the abort.
[[noreturn]] void on_leader_fatal() {
  if (Scheduler* s = g_fault_scheduler.exchange(nullptr)) {
    std::thread([s] {
      s->fail_all("a rank of the job failed; the job is ending");
      g_fault_requests_failed = true;
    }).detach();
    const auto until = SteadyClock::now() + std::chrono::milliseconds(250);
    while (!g_fault_requests_failed && SteadyClock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the request threads write their 503s
  }
  abort_job("failed (fatal error above)", 1);
}

}  // namespace

[[noreturn]] void abort_job(const std::string& why, int code) {
  if (mpi_running()) cluster::abort_world(why, code);
  std::fprintf(stderr, "v4rt: serve: %s; exiting\n", why.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

// ------------------------------------------------------------------------------------------------
// ServeRanks
// ------------------------------------------------------------------------------------------------

ServeRanks::ServeRanks(bool mpi, const RankOptions& options) : options_(options), last_send_(SteadyClock::now()) {
  if (!mpi) return;
  CHECK(mpi_running()) << "ServeRanks: MPI is not initialised";
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  if (size_ == 1) return;
  cluster::CommOptions po;
  po.name = "serve-plan";
  po.timeout_s = options_.plan_timeout_s;
  plan_comm_ = std::make_unique<cluster::MpiComm>(MPI_COMM_WORLD, po);
  cluster::CommOptions lo;
  lo.name = "serve-load";
  lo.timeout_s = options_.load_timeout_s;
  load_comm_ = std::make_unique<cluster::MpiComm>(MPI_COMM_WORLD, lo);
}

ServeRanks::~ServeRanks() {
  if (leader()) g_fault_scheduler = nullptr;
}

void ServeRanks::wait_all_loaded() {
  if (load_comm_) load_comm_->barrier();
}

void ServeRanks::send(const StepPlan& plan) {
  PlanChannel channel(plan_comm_.get());
  channel.send(serialize_plan(plan));
  last_send_ = SteadyClock::now();
}

void ServeRanks::attach(Engine& engine) {
  CHECK(leader());
  if (!plan_comm_) return;
  engine.set_plan_hook([this](const StepPlan& plan) { send(plan); });
  const auto heartbeat = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(options_.heartbeat_s));
  engine.set_idle_hook([this, heartbeat] {
    if (SteadyClock::now() - last_send_ >= heartbeat) send(StepPlan{});
  });
  g_fault_scheduler = &engine.scheduler();
  // glog's pointer type carries __attribute__((noreturn)); clang does not convert to it implicitly.
  google::InstallFailureFunction(reinterpret_cast<google::logging_fail_func_t>(&on_leader_fatal));
}

int64_t ServeRanks::follow(model::Model& model, model::Mtp* mtp) {
  CHECK(!leader());
  if (!plan_comm_) return 0;
  PlanChannel channel(plan_comm_.get());
  Executor executor(model, mtp);
  int64_t plans = 0;
  for (;;) {
    const std::vector<uint8_t> bytes = channel.receive();
    StepPlan plan;
    try {
      plan = deserialize_plan(bytes);
      if (plan.empty()) continue;  // heartbeat
      executor.run(plan, nullptr);
    } catch (const std::exception& e) {
      abort_job(std::string("serve: step plan ") + std::to_string(plan.step_idx) + ": " + e.what(), 1);
    }
    ++plans;
    if (plan.shutdown) break;
  }
  LOG(INFO) << "rank " << rank_ << ": ran " << plans << " step plans; " << executor.num_sequences() << " states left";
  return plans;
}

// ------------------------------------------------------------------------------------------------
// Stop signals and the watchdog
// ------------------------------------------------------------------------------------------------

void install_stop_signals() {
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

int stop_signal() { return g_stop_signal.load(); }

StopWatch::StopWatch(std::chrono::milliseconds grace, std::string what) {
  thread_ = std::thread([this, grace, what = std::move(what)] {
    const auto tick = std::chrono::milliseconds(20);
    while (!done_ && !stop_signal()) std::this_thread::sleep_for(tick);
    const auto until = SteadyClock::now() + grace;
    while (!done_) {
      if (SteadyClock::now() > until)
        abort_job(what + " did not finish within " + std::to_string(grace.count()) + " ms of signal " +
                      std::to_string(stop_signal()),
                  2);
      std::this_thread::sleep_for(tick);
    }
  });
}

StopWatch::~StopWatch() { done(); }

void StopWatch::done() {
  done_ = true;
  if (thread_.joinable()) thread_.join();
}

}  // namespace v4rt::launch::serve
