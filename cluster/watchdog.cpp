// SPDX-License-Identifier: MIT
// CommWatchdog (see watchdog.h).
#include "cluster/watchdog.h"

#include <chrono>
#include <sstream>

namespace v4rt::cluster {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

CommWatchdog::CommWatchdog(std::string what, double timeout_s, Probe probe, OnFail on_fail, double period_s)
    : what_(std::move(what)), timeout_s_(timeout_s), probe_(std::move(probe)), on_fail_(std::move(on_fail)),
      period_s_(period_s) {
  thread_ = std::thread([this] { run(); });
}

CommWatchdog::~CommWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void CommWatchdog::enqueued(const std::function<void()>& record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (record) record();
  if (pending_since_ == 0) pending_since_ = now_s();
}

void CommWatchdog::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait_for(lock, std::chrono::duration<double>(period_s_), [this] { return stop_; });
    if (stop_) return;
    polls_.fetch_add(1);
    std::string why;
    const std::string error = probe_.async_error ? probe_.async_error() : std::string();
    if (!error.empty()) {
      why = what_ + ": asynchronous error: " + error;
    } else if (pending_since_ > 0) {
      if (probe_.work_done && probe_.work_done()) {
        pending_since_ = 0;
      } else if (timeout_s_ > 0 && now_s() - pending_since_ > timeout_s_) {
        std::ostringstream os;
        os << what_ << ": collective did not complete within " << timeout_s_ << " s";
        why = os.str();
      }
    }
    if (!why.empty()) {
      failed_ = true;
      lock.unlock();
      on_fail_(why);
      return;
    }
  }
}

}  // namespace v4rt::cluster
