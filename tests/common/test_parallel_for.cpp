// SPDX-License-Identifier: MIT
// parallel_for: every index exactly once for any item and thread count, the caller's thread takes
// part, and the first exception reaches the caller after every thread has stopped.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/parallel_for.h"

namespace v4rt {
namespace {

TEST(ParallelFor, EveryIndexOnce) {
  for (size_t n : {size_t(0), size_t(1), size_t(2), size_t(7), size_t(1000)}) {
    for (unsigned threads : {0u, 1u, 3u, 16u}) {
      std::vector<std::atomic<int>> hits(n);
      parallel_for(n, [&](size_t i) { ++hits[i]; }, threads);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << ", threads " << threads << ", i " << i;
    }
  }
}

TEST(ParallelFor, UsesSeveralThreadsIncludingTheCaller) {
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> on_caller{0}, elsewhere{0};
  std::atomic<int> arrived{0};
  // Each of the 4 items waits until 4 threads have arrived, so 4 threads must run them.
  parallel_for(4, [&](size_t) {
    (std::this_thread::get_id() == caller ? on_caller : elsewhere)++;
    ++arrived;
    while (arrived < 4) std::this_thread::yield();
  }, 4);
  EXPECT_EQ(on_caller.load(), 1);
  EXPECT_EQ(elsewhere.load(), 3);
}

TEST(ParallelFor, RethrowsTheFirstError) {
  std::atomic<int> ran{0};
  EXPECT_THROW(parallel_for(100, [&](size_t i) {
                 ++ran;
                 if (i == 5) throw std::runtime_error("item 5");
               }, 4),
               std::runtime_error);
  EXPECT_GE(ran.load(), 6);
}

}  // namespace
}  // namespace v4rt
