// SPDX-License-Identifier: MIT
// CommWatchdog: the fault path of a device Comm whose collectives return before they complete
// (NcclComm). A thread polls, every period_s:
//   - the communicator's asynchronous error (ncclCommGetAsyncError): any error fails at once;
//   - the outstanding work (an event recorded after the last enqueued collective): work still
//     pending timeout_s after it was enqueued fails with "did not complete within".
// on_fail runs on the watchdog thread, once; NcclComm's aborts the communicator (ncclCommAbort) and
// LOG(FATAL)s a message naming the world rank, which ends the whole job through the failure
// function of cluster::init_world (MPI_Abort), as a timed-out MPI collective does. A rank whose
// peer died therefore fails within timeout_s + period_s even if it never calls synchronize().
// Host-only (the probes are callbacks), so the logic is tested without a GPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace v4rt::cluster {

class CommWatchdog {
 public:
  struct Probe {
    std::function<std::string()> async_error;  // "" while healthy
    std::function<bool()> work_done;           // true once the last marked work has completed
  };
  using OnFail = std::function<void(const std::string& why)>;

  // timeout_s <= 0: no deadline (asynchronous errors are still polled).
  CommWatchdog(std::string what, double timeout_s, Probe probe, OnFail on_fail, double period_s = 0.05);
  ~CommWatchdog();
  CommWatchdog(const CommWatchdog&) = delete;
  CommWatchdog& operator=(const CommWatchdog&) = delete;

  // Marks work as enqueued: `record` (e.g. cudaEventRecord) runs under the watchdog's lock, so the
  // thread never sees a half-updated state. The deadline runs from the oldest outstanding mark.
  void enqueued(const std::function<void()>& record = {});
  // Number of polls done (for tests).
  uint64_t polls() const { return polls_.load(); }
  bool failed() const { return failed_.load(); }

 private:
  void run();

  std::string what_;
  double timeout_s_;
  Probe probe_;
  OnFail on_fail_;
  double period_s_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  double pending_since_ = 0;  // steady-clock seconds of the oldest outstanding mark; 0: none
  std::atomic<uint64_t> polls_{0};
  std::atomic<bool> failed_{false};
  std::thread thread_;
};

}  // namespace v4rt::cluster
