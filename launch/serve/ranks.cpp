// SPDX-License-Identifier: MIT
// The stop signals and their watchdog, and the leader's fault path (see ranks.h). A rank killed
// outright is noticed by mpirun, which ends the others (SIGTERM, then SIGKILL a second later): the
// leader answers its in-flight requests first.
#include "launch/serve/ranks.h"

#include <glog/logging.h>

#include <csignal>
#include <cstdio>

#include "cluster/world.h"

namespace v4rt::launch::serve {

namespace {

using SteadyClock = std::chrono::steady_clock;

std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal = sig; }

// The leader's engine scheduler, for the fault path.
std::atomic<runtime::Scheduler*> g_fault_scheduler{nullptr};
std::atomic<bool> g_fault_requests_failed{false};

// glog failure function on the leader (replaces cluster's, which it ends with): every request
// still open gets its 503 before the job is aborted. fail_all runs on its own thread so a fatal
// error raised under the scheduler's lock cannot deadlock the abort.
[[noreturn]] void on_leader_fatal() {
  if (runtime::Scheduler* s = g_fault_scheduler.exchange(nullptr)) {
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
  if (cluster::mpi_running()) cluster::abort_world(why, code);
  std::fprintf(stderr, "v4rt: serve: %s; exiting\n", why.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

FaultPath::FaultPath(runtime::Scheduler& scheduler) {
  g_fault_scheduler = &scheduler;
  // glog's pointer type carries __attribute__((noreturn)); clang does not convert to it implicitly.
  google::InstallFailureFunction(reinterpret_cast<google::logging_fail_func_t>(&on_leader_fatal));
}

FaultPath::~FaultPath() { g_fault_scheduler = nullptr; }

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
