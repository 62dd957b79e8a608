// SPDX-License-Identifier: MIT
// The process side of `v4rt serve` under mpirun. The plans themselves travel through the runtime
// core (runtime/plan_link.h: broadcast with deadline and heartbeat; runtime/leader.h: the one
// follower loop); this file holds what only a long-running server needs:
//
//   StopWatch     SIGINT/SIGTERM: a flag for the main loop, and a watchdog that ends the process
//                 (the whole job under mpirun) when the clean shutdown does not finish in time.
//   Fault path    on the leader, a fatal error (a collective past its deadline, a peer gone)
//                 first ends every request with 503 and then aborts the job.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "runtime/scheduler.h"

namespace v4rt::launch::serve {

// Leader: a fatal error anywhere in this process (a collective past its deadline, a peer gone)
// first ends the scheduler's requests with 503, then aborts the job. Installed until the
// returned guard is destroyed.
class FaultPath {
 public:
  explicit FaultPath(runtime::Scheduler& scheduler);
  ~FaultPath();
  FaultPath(const FaultPath&) = delete;
  FaultPath& operator=(const FaultPath&) = delete;
};

// Installs SIGINT/SIGTERM handlers that only record the signal; SIGPIPE is ignored.
void install_stop_signals();
// The signal received (0: none).
int stop_signal();

// Once a stop signal has arrived, gives the clean shutdown `grace` to call done(); past that the
// process ends: the job is aborted under MPI (naming `what`), a single process exits with code 2.
class StopWatch {
 public:
  StopWatch(std::chrono::milliseconds grace, std::string what);
  ~StopWatch();
  void done();

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Ends the job from this rank: under MPI every rank (MPI_Abort), else this process. `why` is logged.
[[noreturn]] void abort_job(const std::string& why, int code);

}  // namespace v4rt::launch::serve
