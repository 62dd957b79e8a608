// SPDX-License-Identifier: MIT
// parallel_for: independent iterations on a few short-lived threads (the caller's included), for
// host work that is per item and heavy enough to amortise a thread start (e.g. sampling one
// sequence's token from 129K logits). Iterations are handed out one at a time; the first
// exception thrown by any iteration is rethrown on the caller's thread after all have stopped.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace v4rt {

// At most `max_threads` threads (0: the hardware's count, capped at 16).
template <typename Fn>
void parallel_for(size_t n, Fn&& fn, unsigned max_threads = 0) {
  unsigned hw = max_threads ? max_threads : std::min(16u, std::max(1u, std::thread::hardware_concurrency()));
  const size_t threads = std::min<size_t>(n, hw);
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto work = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        next = n;  // the others stop at their next iteration
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace v4rt
